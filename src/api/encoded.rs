//! The Get and List methods answered from the stored bytes.
//!
//! The generated services take and return messages, so a Get decodes the
//! stored record and tonic encodes it again, a fifth of a whole call's
//! instructions for a typical agreement (`benches/callgrind.sh` counts them).
//! [`EncodedReads`] sits in front of a generated service and hands its Get and
//! List to tonic's own unary handler ([`Grpc`]) with `EncodedCodec`, which
//! decodes the request with prost and writes the response message the
//! registry encoded ([`Registry::get_encoded`], [`Registry::list_encoded`]:
//! the stored bytes with the derived fields appended) as it is. Framing,
//! compression, message size limits and status are tonic's, as for every
//! other method, which goes to the generated service.
//!
//! [`Registry::get_encoded`]: crate::registry::Registry::get_encoded
//! [`Registry::list_encoded`]: crate::registry::Registry::list_encoded

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BufMut;
use prost::Message;
use tonic::body::Body;
use tonic::codec::{Codec, CompressionEncoding, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::server::{Grpc, NamedService, UnaryService};

use super::{Api, AsOf, ListRequest};
use crate::pb::cooperation::v1 as pb;
use crate::registry::{EncodedPage, Resource};
use crate::server::observe::Deadline;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A response message, already encoded.
struct Encoded(Vec<u8>);

/// Decodes a request `Q` with prost, as the generated code does, and writes an
/// [`Encoded`] response as it is.
struct EncodedCodec<Q>(PhantomData<fn() -> Q>);

impl<Q> Default for EncodedCodec<Q> {
    fn default() -> Self {
        EncodedCodec(PhantomData)
    }
}

impl<Q: Message + Default + Send + 'static> Codec for EncodedCodec<Q> {
    type Encode = Encoded;
    type Decode = Q;
    type Encoder = EncodedWriter;
    type Decoder = tonic_prost::ProstDecoder<Q>;

    fn encoder(&mut self) -> EncodedWriter {
        EncodedWriter
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// Copies an [`Encoded`] message into tonic's buffer.
struct EncodedWriter;

/// The pieces [`EncodedWriter`] copies a message in. glibc copies a larger
/// block with `rep movsb`, which on AMD EPYC runs several times slower when
/// destination and source are aligned differently, as a message behind
/// tonic's 5-byte header is: the copy of a List page would cost a large share
/// of the call's CPU time (and callgrind counts a `rep movsb` byte by byte).
const COPY_PIECE: usize = 2048;

impl Encoder for EncodedWriter {
    type Item = Encoded;
    type Error = tonic::Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.reserve(item.0.len());
        for piece in item.0.chunks(COPY_PIECE) {
            dst.put_slice(piece);
        }
        Ok(())
    }
}

/// The compression and message size limits tonic applies to every call,
/// the generated services' as well (`server::serve` configures both).
#[derive(Clone, Copy, Debug)]
pub struct Wire {
    /// Accepted in requests and offered for responses.
    pub compression: &'static [CompressionEncoding],
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--max-response-bytes`.
    pub max_response_bytes: usize,
}

/// What a Get or List needs besides its request.
#[derive(Clone)]
struct Reads {
    api: Api,
    max_response_bytes: usize,
}

impl Reads {
    /// `message` as the response, unless it is over `--max-response-bytes`:
    /// RESOURCE_EXHAUSTED, gRPC's code for a message over a limit (tonic's
    /// own check, on the message as sent, would answer OUT_OF_RANGE).
    fn respond(&self, message: Vec<u8>) -> Result<tonic::Response<Encoded>, tonic::Status> {
        if message.len() > self.max_response_bytes {
            return Err(tonic::Status::resource_exhausted(format!(
                "the response message is {} bytes; the limit is {} bytes (--max-response-bytes)",
                message.len(),
                self.max_response_bytes
            )));
        }
        Ok(tonic::Response::new(Encoded(message)))
    }
}

/// How a method answers its decoded request.
type Answer<Q> = fn(Reads, tonic::Request<Q>) -> BoxFuture<Result<tonic::Response<Encoded>, tonic::Status>>;

/// One method's [`Answer`], as tonic's unary handler calls it.
struct Method<Q> {
    reads: Reads,
    answer: Answer<Q>,
}

impl<Q> UnaryService<Q> for Method<Q> {
    type Response = Encoded;
    type Future = BoxFuture<Result<tonic::Response<Encoded>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<Q>) -> Self::Future {
        (self.answer)(self.reads.clone(), request)
    }
}

fn get<R, Q>(reads: Reads, request: tonic::Request<Q>) -> BoxFuture<Result<tonic::Response<Encoded>, tonic::Status>>
where
    R: Resource,
    Q: AsOf + GetRequest + Send + 'static,
{
    Box::pin(async move {
        let request = request.into_inner();
        let message = reads.api.registry.get_encoded::<R>(request.name(), request.as_of()).await?;
        reads.respond(message)
    })
}

fn list<R, Q>(reads: Reads, request: tonic::Request<Q>) -> BoxFuture<Result<tonic::Response<Encoded>, tonic::Status>>
where
    R: Resource,
    Q: ListRequest + Send + 'static,
{
    Box::pin(async move {
        let deadline = Deadline::of(&request);
        let query = request.into_inner().into_query(deadline);
        // A page that takes little work is answered here, as a Get is:
        // handing it to the blocking pool would cost more than it does.
        let page = match reads.api.registry.list_encoded_quick::<R>(&query).await? {
            Some(page) => page,
            None => {
                let registry = reads.api.registry.clone();
                reads.api.scan(deadline, async move { registry.list_encoded::<R>(&query).await }).await?
            }
        };
        reads.respond(list_response(page))
    })
}

/// Every `List…Response`: its records (field 1, already encoded), then
/// `next_page_token` (2) and `revision` (3), each left out when it has its
/// default value, as prost leaves them out.
fn list_response(page: EncodedPage) -> Vec<u8> {
    let mut response = page.items;
    if !page.next_page_token.is_empty() {
        prost::encoding::string::encode(2, &page.next_page_token, &mut response);
    }
    let revision = page.revision as i64;
    if revision != 0 {
        prost::encoding::int64::encode(3, &revision, &mut response);
    }
    response
}

/// The name a Get request asks for.
pub trait GetRequest {
    fn name(&self) -> &str;
}

macro_rules! get_request {
    ($($request:ty),*) => {$(
        impl GetRequest for $request {
            fn name(&self) -> &str {
                &self.name
            }
        }
    )*};
}
get_request!(pb::GetAgreementRequest, pb::GetPartyRequest, pb::GetPartnershipDomainRequest, pb::GetEngagementRequest);

/// A generated service with its Get and List answered from the stored bytes.
#[derive(Clone)]
pub struct EncodedReads<S> {
    inner: S,
    reads: Reads,
    wire: Wire,
}

impl<S> EncodedReads<S> {
    /// `inner` with its Get and List answered here, under `wire`: the limits
    /// and compression `inner` was configured with.
    pub fn new(inner: S, api: Api, wire: Wire) -> EncodedReads<S> {
        EncodedReads { inner, reads: Reads { api, max_response_bytes: wire.max_response_bytes }, wire }
    }

    /// `request` answered by tonic's unary handler with `answer`.
    fn unary<Q>(
        &self,
        answer: Answer<Q>,
        request: http::Request<Body>,
    ) -> BoxFuture<Result<http::Response<Body>, Infallible>>
    where
        Q: Message + Default + Send + 'static,
    {
        let mut grpc = Grpc::new(EncodedCodec::<Q>::default())
            .max_decoding_message_size(self.wire.max_request_bytes)
            .max_encoding_message_size(self.wire.max_response_bytes);
        for &encoding in self.wire.compression {
            grpc = grpc.accept_compressed(encoding).send_compressed(encoding);
        }
        let method = Method { reads: self.reads.clone(), answer };
        Box::pin(async move { Ok(grpc.unary(method, request).await) })
    }
}

impl<S: NamedService> NamedService for EncodedReads<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for EncodedReads<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match request.uri().path() {
            "/cooperation.v1.AgreementService/GetAgreement" => {
                self.unary(get::<pb::Agreement, pb::GetAgreementRequest>, request)
            }
            "/cooperation.v1.AgreementService/ListAgreements" => {
                self.unary(list::<pb::Agreement, pb::ListAgreementsRequest>, request)
            }
            "/cooperation.v1.PartyService/GetParty" => self.unary(get::<pb::Party, pb::GetPartyRequest>, request),
            "/cooperation.v1.PartyService/ListParties" => {
                self.unary(list::<pb::Party, pb::ListPartiesRequest>, request)
            }
            "/cooperation.v1.PartnershipDomainService/GetPartnershipDomain" => {
                self.unary(get::<pb::PartnershipDomain, pb::GetPartnershipDomainRequest>, request)
            }
            "/cooperation.v1.PartnershipDomainService/ListPartnershipDomains" => {
                self.unary(list::<pb::PartnershipDomain, pb::ListPartnershipDomainsRequest>, request)
            }
            "/cooperation.v1.EngagementService/GetEngagement" => {
                self.unary(get::<pb::Engagement, pb::GetEngagementRequest>, request)
            }
            "/cooperation.v1.EngagementService/ListEngagements" => {
                self.unary(list::<pb::Engagement, pb::ListEngagementsRequest>, request)
            }
            _ => Box::pin(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_list_is_every_list_response_on_the_wire() {
        let agreement = pb::Agreement { name: "agreements/a".into(), title: "A".into(), ..Default::default() };
        let party = pb::Party { name: "parties/ind".into(), ..Default::default() };
        let encoded = |records: Vec<Vec<u8>>| {
            let mut items = Vec::new();
            for record in &records {
                prost::encoding::bytes::encode(1, record, &mut items);
            }
            list_response(EncodedPage { items, next_page_token: "next".into(), revision: 7 })
        };
        let agreements = pb::ListAgreementsResponse {
            agreements: vec![agreement.clone(), agreement.clone()],
            next_page_token: "next".into(),
            revision: 7,
        };
        assert_eq!(encoded(vec![agreement.encode_to_vec(); 2]), agreements.encode_to_vec());
        let parties =
            pb::ListPartiesResponse { parties: vec![party.clone()], next_page_token: "next".into(), revision: 7 };
        assert_eq!(encoded(vec![party.encode_to_vec()]), parties.encode_to_vec());
        let domains =
            pb::ListPartnershipDomainsResponse { next_page_token: "next".into(), revision: 7, ..Default::default() };
        assert_eq!(encoded(Vec::new()), domains.encode_to_vec());
        let engagements =
            pb::ListEngagementsResponse { next_page_token: "next".into(), revision: 7, ..Default::default() };
        assert_eq!(encoded(Vec::new()), engagements.encode_to_vec());
        // The last page: no token; a revision of 0 left out as prost leaves it.
        let last = EncodedPage { items: Vec::new(), next_page_token: String::new(), revision: 0 };
        assert_eq!(list_response(last), pb::ListAgreementsResponse::default().encode_to_vec());
    }
}
