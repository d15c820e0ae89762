//! TLS, mutual TLS, tokens with roles, permission before existence, access file
//! reload, and the caller's identity in the change log. Certificates are made
//! here with rcgen.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{client::*, records::*, server::*};
use cooperation_registry::pb::cooperation::v1::agreement_service_client::AgreementServiceClient;
use cooperation_registry::pb::cooperation::v1::change_service_client::ChangeServiceClient;
use cooperation_registry::pb::cooperation::v1::relationship_service_client::RelationshipServiceClient;
use cooperation_registry::pb::cooperation::v1::{self as v1};
use cooperation_registry::registry::Registry;
use cooperation_registry::server::auth::{Access, hash_token};
use cooperation_registry::server::{ServerOptions, serve};
use cooperation_registry::store::sled::SledStore;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "Registry Test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        Pki { ca_pem: ca.pem(), issuer: Issuer::new(params, key) }
    }

    /// A server configuration with a certificate for localhost that requires
    /// client certificates from this CA.
    fn mutual_tls(&self) -> ServerTlsConfig {
        let (cert, key) = self.issue("registry", &["localhost", "127.0.0.1"]);
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&cert, &key))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// A channel to localhost:`port` that trusts this CA and shows a client
    /// certificate with common name `cn`.
    async fn client(&self, port: u16, cn: &str) -> Channel {
        let (cert, key) = self.issue(cn, &[]);
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost")
            .identity(Identity::from_pem(&cert, &key));
        Channel::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A certificate and key for `names` (SANs) with common name `cn`.
    fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Secure {
    addr: std::net::SocketAddr,
    registry: Arc<Registry>,
    _dir: tempfile::TempDir,
}

async fn start(tls: Option<ServerTlsConfig>, access: Access) -> Secure {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("data"), fast_store()).unwrap();
    let registry = Arc::new(Registry::open(Arc::new(store)).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = ServerOptions { tls, access, ..Default::default() };
    tokio::spawn(serve(registry.clone(), listener, options, std::future::pending()));
    Secure { addr, registry, _dir: dir }
}

fn access_file(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("access");
    std::fs::write(&path, text).unwrap();
    path
}

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

async fn latest_actor(registry: &Registry, name: &str) -> String {
    let (revisions, _, _) = registry.list_revisions(name, 1, "").await.unwrap();
    revisions[0].actor.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_makes_the_certificate_subject_the_caller() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let access = Access::from_file(&access_file(dir.path(), "subject writer CN=treaty-importer\n"), false).unwrap();
    let server = start(Some(pki.mutual_tls()), access).await;

    let mut client = AgreementServiceClient::new(pki.client(server.addr.port(), "treaty-importer").await);
    client.create_agreement(create_agreement("over-mtls", agreement("Over mutual TLS"))).await.unwrap();
    assert_eq!(latest_actor(&server.registry, "agreements/over-mtls").await, "cert:CN=treaty-importer");

    // Without a client certificate, or without TLS, there is no call at all.
    let no_cert = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem)).domain_name("localhost");
    let refused = async {
        let channel = Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
            .unwrap()
            .tls_config(no_cert)
            .unwrap()
            .connect()
            .await?;
        AgreementServiceClient::new(channel)
            .list_agreements(v1::ListAgreementsRequest::default())
            .await
            .map_err(|e| e.into())
    };
    let result: Result<_, Box<dyn std::error::Error>> = refused.await;
    assert!(result.is_err(), "a client without a certificate was served");
    let plaintext = Channel::from_shared(format!("http://127.0.0.1:{}", server.addr.port())).unwrap().connect().await;
    if let Ok(channel) = plaintext {
        let err = AgreementServiceClient::new(channel)
            .list_agreements(v1::ListAgreementsRequest::default())
            .await
            .unwrap_err();
        assert_ne!(err.code(), Code::Ok);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_and_a_certificate_without_a_role_is_refused() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let text = format!("token reader-bot reader {}\n", hash_token("read-me"));
    let access = Access::from_file(&access_file(dir.path(), &text), false).unwrap();
    let server = start(Some(pki.mutual_tls()), access).await;
    let mut client = AgreementServiceClient::new(pki.client(server.addr.port(), "stranger").await);
    let err = client.list_agreements(v1::ListAgreementsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("cert:CN=stranger"), "{}", err.message());
    // The same connection with a token gets the token's role.
    client.list_agreements(with_token(v1::ListAgreementsRequest::default(), Some("read-me"))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_allowed_or_refused_by_role_before_anything_is_revealed() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "# test tokens\ntoken reader-bot reader {}\ntoken writer-bot writer {}\ntoken admin-bot admin {}\n",
        hash_token("tok-reader"),
        hash_token("tok-writer"),
        hash_token("tok-admin")
    );
    let server = start(None, Access::from_file(&access_file(dir.path(), &text), false).unwrap()).await;
    let channel = connect(server.addr).await;
    let mut agreements = AgreementServiceClient::new(channel.clone());
    agreements
        .create_agreement(with_token(create_agreement("existing", agreement("Existing")), Some("tok-admin")))
        .await
        .unwrap();

    use Code::*;
    // Per caller: no token, a wrong token, reader, writer, admin.
    let callers: [Option<&str>; 5] =
        [None, Some("tok-wrong"), Some("tok-reader"), Some("tok-writer"), Some("tok-admin")];
    type Row = (&'static str, [Code; 5]);
    let table: [Row; 9] = [
        ("GetAgreement (missing)", [Unauthenticated, Unauthenticated, NotFound, NotFound, NotFound]),
        ("ListAgreements", [Unauthenticated, Unauthenticated, Ok, Ok, Ok]),
        ("CreateAgreement", [Unauthenticated, Unauthenticated, PermissionDenied, Ok, Ok]),
        ("UpdateAgreement (missing)", [Unauthenticated, Unauthenticated, PermissionDenied, NotFound, NotFound]),
        ("DeleteAgreement (missing)", [Unauthenticated, Unauthenticated, PermissionDenied, NotFound, NotFound]),
        ("UndeleteAgreement (missing)", [Unauthenticated, Unauthenticated, PermissionDenied, NotFound, NotFound]),
        ("ListRevisions", [Unauthenticated, Unauthenticated, Ok, Ok, Ok]),
        ("GetRelationship", [Unauthenticated, Unauthenticated, Ok, Ok, Ok]),
        ("Health/Check", [Ok, Ok, Ok, Ok, Ok]),
    ];
    let mut changes = ChangeServiceClient::new(channel.clone());
    let mut relationships = RelationshipServiceClient::new(channel.clone());
    let mut health = HealthClient::new(channel.clone());
    for (call, expected) in table {
        for (i, token) in callers.iter().enumerate() {
            let code = match call {
                "GetAgreement (missing)" => agreements
                    .get_agreement(with_token(
                        v1::GetAgreementRequest { name: "agreements/missing".into(), ..Default::default() },
                        *token,
                    ))
                    .await
                    .map(|_| ()),
                "ListAgreements" => agreements
                    .list_agreements(with_token(v1::ListAgreementsRequest::default(), *token))
                    .await
                    .map(|_| ()),
                "CreateAgreement" => agreements
                    .create_agreement(with_token(create_agreement("", agreement("By role")), *token))
                    .await
                    .map(|_| ()),
                "UpdateAgreement (missing)" => agreements
                    .update_agreement(with_token(
                        v1::UpdateAgreementRequest {
                            agreement: Some(v1::Agreement {
                                name: "agreements/missing".into(),
                                title: "x".into(),
                                ..Default::default()
                            }),
                            update_mask: None,
                            request_id: String::new(),
                        },
                        *token,
                    ))
                    .await
                    .map(|_| ()),
                "DeleteAgreement (missing)" => agreements
                    .delete_agreement(with_token(
                        v1::DeleteAgreementRequest { name: "agreements/missing".into(), ..Default::default() },
                        *token,
                    ))
                    .await
                    .map(|_| ()),
                "UndeleteAgreement (missing)" => agreements
                    .undelete_agreement(with_token(
                        v1::UndeleteAgreementRequest { name: "agreements/missing".into(), ..Default::default() },
                        *token,
                    ))
                    .await
                    .map(|_| ()),
                "ListRevisions" => changes
                    .list_revisions(with_token(
                        v1::ListRevisionsRequest { name: "agreements/existing".into(), ..Default::default() },
                        *token,
                    ))
                    .await
                    .map(|_| ()),
                "GetRelationship" => relationships
                    .get_relationship(with_token(
                        v1::GetRelationshipRequest { parties: vec!["parties/ind".into()], ..Default::default() },
                        *token,
                    ))
                    .await
                    .map(|_| ()),
                _ => health.check(with_token(HealthCheckRequest { service: String::new() }, *token)).await.map(|_| ()),
            };
            let code = match code {
                std::result::Result::Ok(()) => Ok,
                Err(status) => {
                    for secret in ["tok-reader", "tok-writer", "tok-admin", "tok-wrong"] {
                        assert!(!status.message().contains(secret), "an error echoed a token: {}", status.message());
                    }
                    status.code()
                }
            };
            assert_eq!(code, expected[i], "{call} as {token:?}");
        }
    }
    // A watch needs a reader too.
    let err = changes.watch_changes(with_token(v1::WatchChangesRequest::default(), None)).await.unwrap_err();
    assert_eq!(err.code(), Unauthenticated);
    changes.watch_changes(with_token(v1::WatchChangesRequest::default(), Some("tok-reader"))).await.unwrap();

    // The change log names the caller.
    agreements
        .create_agreement(with_token(create_agreement("audited", agreement("Audited")), Some("tok-writer")))
        .await
        .unwrap();
    assert_eq!(latest_actor(&server.registry, "agreements/audited").await, "token:writer-bot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_file_is_reloaded_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = access_file(dir.path(), &format!("token old writer {}\n", hash_token("old-token")));
    let server = start(None, Access::from_file(&path, true).unwrap()).await;
    let mut client = AgreementServiceClient::new(connect(server.addr).await);
    client.list_agreements(with_token(v1::ListAgreementsRequest::default(), Some("old-token"))).await.unwrap();

    std::fs::write(&path, format!("token new reader {}\n", hash_token("new-token"))).unwrap();
    let mut swapped = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let old = client.list_agreements(with_token(v1::ListAgreementsRequest::default(), Some("old-token"))).await;
        let new = client.list_agreements(with_token(v1::ListAgreementsRequest::default(), Some("new-token"))).await;
        if old.is_err() && new.is_ok() {
            swapped = true;
            break;
        }
    }
    assert!(swapped, "the new access file was not taken within 4 s");
    // A broken file keeps the last good one.
    std::fs::write(&path, "token broken\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client.list_agreements(with_token(v1::ListAgreementsRequest::default(), Some("new-token"))).await.unwrap();
    // With reflection configured to need a role, it does.
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, server_reflection_request::MessageRequest};
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut reflection = ServerReflectionClient::new(connect(server.addr).await);
    let err = reflection.server_reflection_info(tokio_stream::iter(vec![ask.clone()])).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(tokio_stream::iter(vec![ask]));
    request.metadata_mut().insert("authorization", "Bearer new-token".parse().unwrap());
    reflection.server_reflection_info(request).await.unwrap();
}
