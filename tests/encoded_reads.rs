//! Get and List answered from the stored bytes (`src/api/encoded.rs`) through
//! tonic's own framing: compressed requests and responses, the response size
//! limit and malformed frames are answered as tonic answers them.

mod common;

use bytes::{Buf, BufMut, Bytes};
use common::{client::violated_fields, records::*, server::*};
use cooperation_registry::cli::import::{import, parse_dataset};
use cooperation_registry::pb::cooperation::v1::party_service_client::PartyServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1};
use cooperation_registry::server::ServerOptions;
use prost::Message;
use tonic::Code;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::transport::Channel;

const GET_AGREEMENT: &str = "/cooperation.v1.AgreementService/GetAgreement";
const LIST_AGREEMENTS: &str = "/cooperation.v1.AgreementService/ListAgreements";
const GET_PARTY: &str = "/cooperation.v1.PartyService/GetParty";
const LIST_PARTIES: &str = "/cooperation.v1.PartyService/ListParties";
/// A method the generated code answers with prost's codec.
const GET_RELATIONSHIP: &str = "/cooperation.v1.RelationshipService/GetRelationship";

/// A client codec that sends and receives a message's bytes as they are, so
/// that a test sees the response message exactly as the server encoded it.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A unary call of `path` with `message`, sent compressed with `send` and
/// accepting responses compressed with `accept`: the response message's bytes
/// and the `grpc-encoding` it came with.
async fn raw_call(
    channel: &Channel,
    path: &'static str,
    message: Vec<u8>,
    send: Option<CompressionEncoding>,
    accept: Option<CompressionEncoding>,
) -> Result<(Vec<u8>, Option<String>), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    if let Some(encoding) = send {
        grpc = grpc.send_compressed(encoding);
    }
    if let Some(encoding) = accept {
        grpc = grpc.accept_compressed(encoding);
    }
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = tonic::Request::new(message);
    let response = grpc.unary(request, http::uri::PathAndQuery::from_static(path), RawCodec).await?;
    let encoding = response.metadata().get("grpc-encoding").map(|v| v.to_str().unwrap().to_string());
    Ok((response.into_inner(), encoding))
}

async fn loaded_server(options: ServerOptions) -> TestServer {
    let server = TestServer::start_in(tempfile::tempdir().unwrap(), options).await;
    let dataset = parse_dataset(include_str!("../examples/india-japan-2020.json")).unwrap();
    import(server.channel.clone(), dataset, false).await.unwrap();
    server
}

/// Whatever the client sends or accepts, a Get or List answers the message
/// the registry encoded, byte for byte: compressed when the client accepts
/// it, and a compressed request is read.
#[tokio::test]
async fn compressed_reads_answer_the_stored_bytes() {
    let server = loaded_server(ServerOptions::default()).await;
    let channel = &server.channel;
    let get = v1::GetAgreementRequest { name: "agreements/india-japan-rpss-2020".into(), ..Default::default() };
    let list = v1::ListAgreementsRequest { page_size: 1, ..Default::default() };
    let get_party = v1::GetPartyRequest { name: "parties/asean".into() };
    let list_parties = v1::ListPartiesRequest { page_size: 20, ..Default::default() };

    let plain = [
        raw_call(channel, GET_AGREEMENT, get.encode_to_vec(), None, None).await.unwrap(),
        raw_call(channel, LIST_AGREEMENTS, list.encode_to_vec(), None, None).await.unwrap(),
        raw_call(channel, GET_PARTY, get_party.encode_to_vec(), None, None).await.unwrap(),
        raw_call(channel, LIST_PARTIES, list_parties.encode_to_vec(), None, None).await.unwrap(),
    ];
    for (message, encoding) in &plain {
        assert_eq!(encoding.as_deref(), None);
        assert!(!message.is_empty());
    }
    let agreement = v1::Agreement::decode(plain[0].0.as_slice()).unwrap();
    assert_eq!(agreement.name, get.name);
    let page = v1::ListAgreementsResponse::decode(plain[1].0.as_slice()).unwrap();
    assert_eq!(page.agreements.len(), 1);
    assert!(!page.next_page_token.is_empty() && page.revision > 0, "{page:?}");

    use CompressionEncoding::{Gzip, Zstd};
    for (send, accept) in [(Some(Gzip), None), (None, Some(Gzip)), (Some(Gzip), Some(Gzip)), (Some(Zstd), Some(Zstd))] {
        let answers = [
            raw_call(channel, GET_AGREEMENT, get.encode_to_vec(), send, accept).await.unwrap(),
            raw_call(channel, LIST_AGREEMENTS, list.encode_to_vec(), send, accept).await.unwrap(),
            raw_call(channel, GET_PARTY, get_party.encode_to_vec(), send, accept).await.unwrap(),
            raw_call(channel, LIST_PARTIES, list_parties.encode_to_vec(), send, accept).await.unwrap(),
        ];
        let expected_encoding = accept.map(|e| e.to_string());
        for ((message, encoding), (plain, _)) in answers.iter().zip(&plain) {
            assert_eq!(encoding, &expected_encoding, "send {send:?}, accept {accept:?}");
            // (Not assert_eq: the bytes would fill the screen.)
            assert!(
                message == plain,
                "send {send:?}, accept {accept:?}: {} bytes, not the {} sent uncompressed",
                message.len(),
                plain.len()
            );
        }
    }
    server.stop().await;
}

/// The generated clients, asking for gzip both ways, get the same records,
/// pages and tokens as without.
#[tokio::test]
async fn gzip_clients_get_the_same_records_and_pages() {
    use CompressionEncoding::Gzip;
    let server = loaded_server(ServerOptions::default()).await;
    let mut plain = server.agreements();
    let mut gzip = server.agreements().send_compressed(Gzip).accept_compressed(Gzip);
    let mut request = v1::ListAgreementsRequest { page_size: 1, ..Default::default() };
    let mut names = Vec::new();
    loop {
        let expected = plain.list_agreements(request.clone()).await.unwrap().into_inner();
        let response = gzip.list_agreements(request.clone()).await.unwrap();
        assert_eq!(response.metadata().get("grpc-encoding").unwrap(), "gzip");
        let page = response.into_inner();
        assert_eq!(page, expected);
        names.extend(page.agreements.iter().map(|a| a.name.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(names.len(), 2, "{names:?}");
    for name in names {
        let request = v1::GetAgreementRequest { name, as_of: date(2025, 1, 1) };
        let expected = plain.get_agreement(request.clone()).await.unwrap().into_inner();
        let response = gzip.get_agreement(request).await.unwrap();
        assert_eq!(response.metadata().get("grpc-encoding").unwrap(), "gzip");
        assert_eq!(response.into_inner(), expected);
    }
    let mut parties = PartyServiceClient::new(server.channel.clone()).send_compressed(Gzip).accept_compressed(Gzip);
    let missing = parties.get_party(v1::GetPartyRequest { name: "parties/nowhere".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    // Errors keep their details.
    let negative = v1::ListAgreementsRequest { page_size: -1, ..Default::default() };
    let refused = gzip.list_agreements(negative).await.unwrap_err();
    assert_eq!((refused.code(), violated_fields(&refused)), (Code::InvalidArgument, vec!["page_size".to_string()]));
    server.stop().await;
}

/// A response message over --max-response-bytes is refused with
/// RESOURCE_EXHAUSTED, compressed or not; the limit leaves smaller ones be.
#[tokio::test]
async fn a_response_over_the_limit_is_resource_exhausted() {
    let limit = 4096;
    let server = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        ServerOptions { max_response_bytes: limit, ..Default::default() },
    )
    .await;
    let mut client = server.agreements();
    let mut long = agreement("Long");
    long.description = "x".repeat(limit);
    // Its Create's answer is over the limit too; the record is stored all the same.
    let _ = client.create_agreement(create_agreement("long", long)).await;
    // Fifty of about a hundred bytes: their page is over the limit.
    for i in 0..50 {
        client.create_agreement(create_agreement(&format!("small-{i}"), agreement("Small"))).await.unwrap();
    }
    let small = v1::GetAgreementRequest { name: "agreements/small-0".into(), ..Default::default() };
    let get = v1::GetAgreementRequest { name: "agreements/long".into(), ..Default::default() };
    let page = v1::ListAgreementsRequest { page_size: 1000, filter: "title:\"Small\"".into(), ..Default::default() };
    let quick_page = v1::ListAgreementsRequest { page_size: 1000, ..Default::default() };
    use CompressionEncoding::Gzip;
    for accept in [None, Some(Gzip)] {
        raw_call(&server.channel, GET_AGREEMENT, small.encode_to_vec(), None, accept).await.unwrap();
        for (path, request) in [
            (GET_AGREEMENT, get.encode_to_vec()),
            (LIST_AGREEMENTS, page.encode_to_vec()),
            (LIST_AGREEMENTS, quick_page.encode_to_vec()),
        ] {
            let answer = raw_call(&server.channel, path, request, None, accept).await;
            let refused = answer.map(|(message, _)| message.len()).unwrap_err();
            assert_eq!(refused.code(), Code::ResourceExhausted, "{path} accepting {accept:?}: {refused:?}");
            assert!(refused.message().ends_with("the limit is 4096 bytes (--max-response-bytes)"), "{refused:?}");
        }
    }
    server.stop().await;
}

/// The `grpc-status` and `grpc-message` of a call of `path` whose request
/// body is `body`, sent on a raw HTTP/2 stream.
async fn raw_frames(server: &TestServer, path: &str, body: &'static [u8]) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{}{path}", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    stream.send_data(Bytes::from_static(body), true).unwrap();
    let response = response.await.unwrap();
    let status = |headers: &http::HeaderMap| {
        let text = |name| headers.get(name).map(|v: &http::HeaderValue| v.to_str().unwrap().to_string());
        text("grpc-status").map(|code| (code, text("grpc-message").unwrap_or_default()))
    };
    let answer = match status(response.headers()) {
        Some(answer) => answer,
        None => {
            let mut body = response.into_body();
            while let Some(data) = body.data().await {
                data.unwrap();
            }
            status(&body.trailers().await.unwrap().unwrap()).unwrap()
        }
    };
    connection.abort();
    answer
}

/// A malformed request frame is answered as the generated code (prost's codec)
/// answers it.
#[tokio::test]
async fn malformed_frames_are_answered_as_tonic_answers_them() {
    let server = TestServer::start_in(
        tempfile::tempdir().unwrap(),
        ServerOptions { max_request_bytes: 1024, ..Default::default() },
    )
    .await;
    let bodies: [&'static [u8]; 6] = [
        // Cut short: the header promises 9 bytes.
        &[0, 0, 0, 0, 9, b'a'],
        // Compressed, without a grpc-encoding.
        &[1, 0, 0, 0, 1, b'x'],
        // Not protobuf (a field number of 0).
        &[0, 0, 0, 0, 2, 0, 0],
        // No message at all.
        &[],
        // Over --max-request-bytes.
        &[0, 0, 0, 8, 0, 0],
        // Half a header.
        &[0, 0, 0],
    ];
    for body in bodies {
        let generated = raw_frames(&server, GET_RELATIONSHIP, body).await;
        assert_ne!(generated.0, "0", "{body:?}: {generated:?}");
        for path in [GET_AGREEMENT, LIST_AGREEMENTS, GET_PARTY, LIST_PARTIES] {
            let answered = raw_frames(&server, path, body).await;
            assert_eq!(answered, generated, "{path}, {body:?}");
        }
    }
    server.stop().await;
}
