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
use tonic::codec::{BufferSettings, Codec, CompressionEncoding, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::server::{Grpc, NamedService, UnaryService};

use super::{Api, AsOf, ListRequest};
use crate::pb::cooperation::v1 as pb;
use crate::registry::{EncodedPage, EncodedRecord, Resource};
use crate::server::observe::Deadline;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A Get's or a List's response, its records still encoded as the registry
/// read them: [`EncodedWriter`] writes it into tonic's buffer.
enum Encoded {
    /// A Get's: the record is the whole message.
    Record(EncodedRecord),
    /// A List's: the records (field 1 of every `List…Response`), then
    /// `next_page_token` (2) and `revision` (3), each left out when it has
    /// its default value, as prost leaves them out.
    Page(EncodedPage),
}

/// The field number of the records in every `List…Response`.
const ITEMS_FIELD: u32 = 1;

impl Encoded {
    /// The bytes of the message.
    fn len(&self) -> usize {
        use prost::encoding::{encoded_len_varint, key_len};
        match self {
            Encoded::Record(record) => record.len(),
            Encoded::Page(page) => {
                let items: usize = page
                    .items
                    .iter()
                    .map(|record| key_len(ITEMS_FIELD) + encoded_len_varint(record.len() as u64) + record.len())
                    .sum();
                let token = match page.next_page_token.is_empty() {
                    true => 0,
                    false => prost::encoding::string::encoded_len(2, &page.next_page_token),
                };
                let revision = match page.revision {
                    0 => 0,
                    revision => prost::encoding::int64::encoded_len(3, &(revision as i64)),
                };
                items + token + revision
            }
        }
    }

    /// Writes the message to `out`.
    fn write(&self, out: &mut impl BufMut) {
        use prost::encoding::{WireType, encode_key, encode_varint};
        match self {
            Encoded::Record(record) => write_record(record, out),
            Encoded::Page(page) => {
                for record in &page.items {
                    encode_key(ITEMS_FIELD, WireType::LengthDelimited, out);
                    encode_varint(record.len() as u64, out);
                    write_record(record, out);
                }
                if !page.next_page_token.is_empty() {
                    prost::encoding::string::encode(2, &page.next_page_token, out);
                }
                if page.revision != 0 {
                    prost::encoding::int64::encode(3, &(page.revision as i64), out);
                }
            }
        }
    }
}

/// The pieces a record's bytes are copied in. glibc copies a larger block
/// with `rep movsb`, which on AMD EPYC runs several times slower when
/// destination and source are aligned differently, as bytes behind tonic's
/// 5-byte header are (and callgrind counts a `rep movsb` byte by byte).
const COPY_PIECE: usize = 2048;

fn write_record(record: &EncodedRecord, out: &mut impl BufMut) {
    for piece in record.stored.chunks(COPY_PIECE).chain(record.appended.chunks(COPY_PIECE)) {
        out.put_slice(piece);
    }
}

/// Decodes a request `Q` with prost, as the generated code does, and writes an
/// [`Encoded`] response as it is.
struct EncodedCodec<Q>(PhantomData<fn() -> Q>);

impl<Q> Default for EncodedCodec<Q> {
    fn default() -> Self {
        EncodedCodec(PhantomData)
    }
}

/// The buffers tonic starts a Get's or List's request and response with (it
/// grows them as needed): a request is some tens of bytes and a Get's
/// response a kilobyte or two, so tonic's default of 8 KiB for each would
/// be mostly unused memory to allocate on every call.
fn buffer_settings() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
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
        tonic_prost::ProstDecoder::new(buffer_settings())
    }
}

/// Writes an [`Encoded`] message into tonic's buffer, in one pass.
struct EncodedWriter;

impl Encoder for EncodedWriter {
    type Item = Encoded;
    type Error = tonic::Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.reserve(item.len());
        item.write(dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
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
    fn respond(&self, message: Encoded) -> Result<tonic::Response<Encoded>, tonic::Status> {
        if message.len() > self.max_response_bytes {
            return Err(tonic::Status::resource_exhausted(format!(
                "the response message is {} bytes; the limit is {} bytes (--max-response-bytes)",
                message.len(),
                self.max_response_bytes
            )));
        }
        Ok(tonic::Response::new(message))
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
        let record = reads.api.registry.get_encoded::<R>(request.name(), request.as_of()).await?;
        reads.respond(Encoded::Record(record))
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
        reads.respond(Encoded::Page(page))
    })
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
        // Each record's bytes split where the registry splits them: the
        // stored bytes, then what it appends.
        let written = |message: Encoded| {
            let mut out = Vec::new();
            message.write(&mut out);
            assert_eq!(out.len(), message.len(), "the length it reserves is what it writes");
            out
        };
        let encoded = |records: Vec<Vec<u8>>| {
            let items = records
                .into_iter()
                .map(|mut stored| {
                    let appended = stored.split_off(stored.len() / 2);
                    EncodedRecord { stored: stored.into(), appended: appended.into() }
                })
                .collect();
            written(Encoded::Page(EncodedPage { items, next_page_token: "next".into(), revision: 7 }))
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
        assert_eq!(written(Encoded::Page(last)), pb::ListAgreementsResponse::default().encode_to_vec());
        // A Get's response is the record.
        let record = EncodedRecord { stored: agreement.encode_to_vec().into(), appended: [18, 1, b'B'].into() };
        let got = pb::Agreement::decode(written(Encoded::Record(record)).as_slice()).unwrap();
        assert_eq!(got.title, "B", "the appended field wins");
    }
}
