//! The Get and List methods answered from the stored bytes.
//!
//! The generated services take and return messages, so a Get decodes the
//! stored record and tonic encodes it again, a fifth of a whole call's
//! instructions for a typical agreement (`benches/callgrind.sh` counts them). [`EncodedReads`]
//! sits in front of a generated service and answers its Get itself with
//! [`Registry::get_encoded`]: the stored bytes with the etag and the derived
//! fields appended. Everything else, and any Get it cannot answer exactly as
//! tonic would (a compressed request, or a client that accepts compressed
//! responses, which tonic would compress; a malformed or oversized frame),
//! goes to the generated service unchanged.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

use super::{Api, AsOf, ListRequest};
use crate::pb::cooperation::v1 as pb;
use crate::registry::Resource;

/// Largest Get request read here; anything longer goes to the generated
/// service with what was read, which applies its own limit.
const MAX_GET_REQUEST: usize = 64 * 1024;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A request's bytes (and the caller's deadline) to the response message's bytes.
type Answer = fn(Api, Bytes, Option<Instant>) -> BoxFuture<Result<Vec<u8>, tonic::Status>>;

fn decode_request<Q: Message + Default>(request: Bytes) -> Result<Q, tonic::Status> {
    Q::decode(request).map_err(|e| tonic::Status::internal(format!("failed to decode Protobuf message: {e}")))
}

fn get<R, Q>(api: Api, request: Bytes, _: Option<Instant>) -> BoxFuture<Result<Vec<u8>, tonic::Status>>
where
    R: Resource,
    Q: Message + Default + AsOf + GetRequest + Send + 'static,
{
    Box::pin(async move {
        let request = decode_request::<Q>(request)?;
        Ok(api.registry.get_encoded::<R>(request.name(), request.as_of()).await?)
    })
}

fn list<R, Q>(api: Api, request: Bytes, deadline: Option<Instant>) -> BoxFuture<Result<Vec<u8>, tonic::Status>>
where
    R: Resource,
    Q: Message + Default + ListRequest + Send + 'static,
{
    Box::pin(async move {
        let query = decode_request::<Q>(request)?.into_query(deadline);
        // A page that takes little work is answered here, as a Get is:
        // handing it to the blocking pool would cost more than it does.
        if let Some(page) = api.registry.list_encoded_quick::<R>(&query).await? {
            return Ok(list_response(page));
        }
        let registry = api.registry.clone();
        let page = api.scan(deadline, async move { registry.list_encoded::<R>(&query).await }).await?;
        Ok(list_response(page))
    })
}

/// Every `List…Response`: its records (field 1, already encoded), then
/// `next_page_token` (2) and `revision` (3), each left out when it has its
/// default value, as prost leaves them out.
fn list_response(page: crate::registry::EncodedPage) -> Vec<u8> {
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

/// The Get this layer answers at `path`, if any.
fn route(path: &str) -> Option<Answer> {
    Some(match path {
        "/cooperation.v1.AgreementService/GetAgreement" => get::<pb::Agreement, pb::GetAgreementRequest>,
        "/cooperation.v1.AgreementService/ListAgreements" => list::<pb::Agreement, pb::ListAgreementsRequest>,
        "/cooperation.v1.PartyService/GetParty" => get::<pb::Party, pb::GetPartyRequest>,
        "/cooperation.v1.PartyService/ListParties" => list::<pb::Party, pb::ListPartiesRequest>,
        "/cooperation.v1.PartnershipDomainService/GetPartnershipDomain" => {
            get::<pb::PartnershipDomain, pb::GetPartnershipDomainRequest>
        }
        "/cooperation.v1.PartnershipDomainService/ListPartnershipDomains" => {
            list::<pb::PartnershipDomain, pb::ListPartnershipDomainsRequest>
        }
        "/cooperation.v1.EngagementService/GetEngagement" => get::<pb::Engagement, pb::GetEngagementRequest>,
        "/cooperation.v1.EngagementService/ListEngagements" => list::<pb::Engagement, pb::ListEngagementsRequest>,
        _ => return None,
    })
}

/// Whether tonic would read this request and write its response without
/// compression: then the bytes here are exactly what it would send.
fn uncompressed(headers: &http::HeaderMap) -> bool {
    let identity = |name| headers.get(name).is_none_or(|v| v.as_bytes() == b"identity");
    identity("grpc-encoding")
        && headers
            .get_all("grpc-accept-encoding")
            .iter()
            .all(|v| v.to_str().is_ok_and(|v| v.split(',').all(|e| !matches!(e.trim(), "gzip" | "zstd"))))
}

/// A generated service with its Get and List answered from the stored bytes.
#[derive(Clone)]
pub struct EncodedReads<S> {
    inner: S,
    api: Api,
    /// The generated service's limit (`--max-response-bytes`): a larger
    /// answer goes to it, to be refused as it refuses one.
    max_response_bytes: usize,
}

impl<S> EncodedReads<S> {
    pub fn new(inner: S, api: Api, max_response_bytes: usize) -> EncodedReads<S> {
        EncodedReads { inner, api, max_response_bytes }
    }
}

impl<S: NamedService> NamedService for EncodedReads<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for EncodedReads<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let answer = route(request.uri().path()).filter(|_| uncompressed(request.headers()));
        let Some(answer) = answer else {
            return Box::pin(self.inner.call(request));
        };
        // The ready service answers the fallback; a clone waits for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (api, max_response_bytes) = (self.api.clone(), self.max_response_bytes);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let deadline = parts.extensions.get::<crate::server::observe::Deadline>().map(|d| d.0);
            let unread = match read_message(body).await {
                Ok(framed) => match answer(api, framed.slice(5..), deadline).await {
                    Ok(message) if message.len() > max_response_bytes => Unread { read: framed, rest: None },
                    outcome => return Ok(respond(outcome)),
                },
                Err(unread) => unread,
            };
            let body = Body::new(Prepended { read: Some(unread.read), rest: unread.rest });
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

/// A request body this layer does not answer: what was read of it, and the rest.
struct Unread {
    read: Bytes,
    rest: Option<Body>,
}

/// The one uncompressed message of a unary request, framed (its 5 header
/// bytes first), or the body back.
async fn read_message(mut body: Body) -> Result<Bytes, Unread> {
    let mut read = BytesMut::new();
    let give_back = |read: BytesMut, rest| Err(Unread { read: read.freeze(), rest });
    loop {
        let wanted = if read.len() >= 5 {
            (read[0] == 0).then(|| u32::from_be_bytes([read[1], read[2], read[3], read[4]]) as usize)
        } else {
            Some(0)
        };
        match wanted {
            Some(length) if length <= MAX_GET_REQUEST => {}
            _ => return give_back(read, Some(body)),
        }
        // Trailers, or the error of a body the client gave up on, are given
        // back as they came: the generated service answers them as it would.
        let rest = |frame| Some(Body::new(http_body_util::StreamBody::new(tokio_stream::once(frame))));
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => read.extend_from_slice(&data),
                Err(frame) => return give_back(read, rest(Ok(frame))),
            },
            Some(Err(status)) => return give_back(read, rest(Err(status))),
            None => break,
        }
    }
    if read.len() < 5 || read.len() != 5 + u32::from_be_bytes([read[1], read[2], read[3], read[4]]) as usize {
        return give_back(read, None);
    }
    Ok(read.freeze())
}

/// The response tonic sends for a unary call: the message in gRPC framing and
/// `grpc-status: 0`, or the error as a trailers-only response.
fn respond(outcome: Result<Vec<u8>, tonic::Status>) -> http::Response<Body> {
    let message = match outcome {
        Ok(message) => message,
        Err(status) => return status.into_http(),
    };
    let header = |len: usize| {
        let mut header = [0; 5];
        header[1..].copy_from_slice(&(len as u32).to_be_bytes());
        header
    };
    // A large message (a List page) goes as it is, after its own header,
    // rather than copied behind it: two DATA frames, which gRPC allows.
    let frames = if message.len() >= OWN_FRAME_MIN {
        [Some(Bytes::copy_from_slice(&header(message.len()))), Some(Bytes::from(message))]
    } else {
        let mut framed = BytesMut::with_capacity(5 + message.len());
        framed.extend_from_slice(&header(message.len()));
        framed.extend_from_slice(&message);
        [Some(framed.freeze()), None]
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut response = http::Response::new(Body::new(Unary { frames, trailers: Some(trailers) }));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}

/// From this size on, [`respond`] sends a message in a DATA frame of its
/// own; a smaller one is copied behind its header into one frame.
const OWN_FRAME_MIN: usize = 4096;

/// The message's DATA frames, then the trailers.
struct Unary {
    frames: [Option<Bytes>; 2],
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for Unary {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let next = self.frames.iter_mut().find_map(Option::take);
        Poll::Ready(match next {
            Some(data) => Some(Ok(Frame::data(data))),
            None => self.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.frames.iter().all(Option::is_none) && self.trailers.is_none()
    }
}

/// A request body with its first bytes already read: those, then the rest.
struct Prepended {
    read: Option<Bytes>,
    rest: Option<Body>,
}

impl http_body::Body for Prepended {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(read) = self.read.take().filter(|r| !r.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(read))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(chunks: Vec<&'static [u8]>) -> Body {
        let stream =
            tokio_stream::iter(chunks.into_iter().map(|c| Ok::<_, tonic::Status>(Frame::data(Bytes::from(c)))));
        Body::new(http_body_util::StreamBody::new(stream))
    }

    async fn all_of(body: impl http_body::Body<Data = Bytes, Error = tonic::Status>) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_framed_message_in_pieces_is_read_whole() {
        let body = body_of(vec![&[0, 0, 0], &[0, 3, b'a'], b"bc"]);
        assert_eq!(read_message(body).await.ok().unwrap(), Bytes::from_static(&[0, 0, 0, 0, 3, b'a', b'b', b'c']));
    }

    #[tokio::test]
    async fn what_is_not_answered_here_is_given_back_whole() {
        // Compressed (flag 1), longer than the limit, two messages, cut short.
        let too_long = (MAX_GET_REQUEST as u32 + 1).to_be_bytes();
        let cases: Vec<Vec<&'static [u8]>> = vec![
            vec![&[1, 0, 0, 0, 1], b"x"],
            vec![&[0], Box::leak(Box::new(too_long)), b"rest"],
            vec![&[0, 0, 0, 0, 1, b'a', 0, 0, 0, 0, 1, b'b']],
            vec![&[0, 0, 0, 0, 9, b'a']],
        ];
        for chunks in cases {
            let whole: Vec<u8> = chunks.concat();
            let Err(unread) = read_message(body_of(chunks)).await else { panic!("answered {whole:?}") };
            let again = Prepended { read: Some(unread.read), rest: unread.rest };
            assert_eq!(all_of(again).await, whole);
        }
    }

    #[tokio::test]
    async fn a_body_that_fails_is_given_back_with_its_error() {
        let frames = vec![Ok(Frame::data(Bytes::from_static(&[0, 0, 0]))), Err(tonic::Status::unknown("reset"))];
        let body = Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)));
        let Err(unread) = read_message(body).await else { panic!("answered") };
        let mut again = Prepended { read: Some(unread.read), rest: unread.rest };
        let first = again.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(&[0, 0, 0]));
        let failed = again.frame().await.unwrap().unwrap_err();
        assert_eq!((failed.code(), failed.message()), (tonic::Code::Unknown, "reset"));
    }

    #[test]
    fn only_uncompressed_exchanges_are_answered_here() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = http::HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, http::HeaderValue::from_static(value));
            }
            map
        };
        assert!(uncompressed(&headers(&[])));
        assert!(uncompressed(&headers(&[("grpc-encoding", "identity"), ("grpc-accept-encoding", "identity")])));
        assert!(!uncompressed(&headers(&[("grpc-encoding", "gzip")])));
        assert!(!uncompressed(&headers(&[("grpc-accept-encoding", "identity, zstd")])));
        assert!(!uncompressed(&headers(&[("grpc-accept-encoding", "gzip")])));
    }

    #[test]
    fn an_encoded_list_is_every_list_response_on_the_wire() {
        let agreement = pb::Agreement { name: "agreements/a".into(), title: "A".into(), ..Default::default() };
        let party = pb::Party { name: "parties/ind".into(), ..Default::default() };
        let encoded = |records: Vec<Vec<u8>>| {
            let mut items = Vec::new();
            for record in &records {
                prost::encoding::bytes::encode(1, record, &mut items);
            }
            list_response(crate::registry::EncodedPage { items, next_page_token: "next".into(), revision: 7 })
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
        let last = crate::registry::EncodedPage { items: Vec::new(), next_page_token: String::new(), revision: 0 };
        assert_eq!(list_response(last), pb::ListAgreementsResponse::default().encode_to_vec());
    }

    #[tokio::test]
    async fn the_response_is_the_framed_message_then_status_ok() {
        let response = respond(Ok(b"abc".to_vec()));
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes().as_ref(), &[0, 0, 0, 0, 3, b'a', b'b', b'c']);
        let refused = respond(Err(tonic::Status::not_found("agreements/x")));
        assert_eq!(refused.headers()["grpc-status"], "5");
    }
}
