//! Who may call what: bearer tokens and client-certificate subjects with roles,
//! checked by a tower layer before any service runs, so a refused caller learns
//! nothing about what exists. The caller's identity travels to the services in
//! the request extensions and is recorded in every change.
//!
//! The access file (named by `--access-file`, reloaded when it changes) holds:
//! ```text
//! # token NAME ROLE SHA256-OF-THE-TOKEN-IN-HEX
//! token ci-bot writer 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! # subject ROLE CERTIFICATE-SUBJECT (as RFC 4514 prints it)
//! subject admin CN=ops.example.org,O=Example
//! ```
//! Roles: `reader` (Get, List, Watch, history, relationships, ExportDataset), `writer` (also
//! Create, BatchCreate, Update, Delete, Undelete), `admin` (everything,
//! including calls not listed here). Tokens are kept only as hashes and compared in constant time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tonic::codegen::http;

/// A caller's role; each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

impl Role {
    fn parse(text: &str) -> Option<Role> {
        match text {
            "reader" => Some(Role::Reader),
            "writer" => Some(Role::Writer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

/// Who is calling, as recorded in changes: `token:NAME`, `cert:SUBJECT`, or
/// `anonymous` when access control is off and no certificate was shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub identity: String,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller { identity: crate::registry::ANONYMOUS.to_string() }
    }
}

/// SHA-256 of a token, in hex: what the access file stores.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

struct TokenEntry {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The parsed access file.
#[derive(Default)]
pub struct AccessList {
    tokens: Vec<TokenEntry>,
    subjects: Vec<(String, Role)>,
}

impl AccessList {
    /// Parses an access file; errors name the line, never a secret.
    pub fn parse(text: &str) -> Result<AccessList, String> {
        let mut list = AccessList::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = number + 1;
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first().copied() {
                Some("token") => {
                    let [_, name, role, hash] = words.as_slice() else {
                        return Err(format!("line {at}: expected `token NAME ROLE SHA256-HEX`"));
                    };
                    let role =
                        Role::parse(role).ok_or_else(|| format!("line {at}: role must be reader, writer or admin"))?;
                    let hash = decode_hash(hash)
                        .ok_or_else(|| format!("line {at}: the hash must be 64 hex digits (SHA-256 of the token)"))?;
                    list.tokens.push(TokenEntry { name: name.to_string(), role, hash });
                }
                Some("subject") => {
                    if words.len() < 3 {
                        return Err(format!("line {at}: expected `subject ROLE SUBJECT`"));
                    }
                    let role = Role::parse(words[1])
                        .ok_or_else(|| format!("line {at}: role must be reader, writer or admin"))?;
                    let subject = line.splitn(3, char::is_whitespace).nth(2).unwrap_or_default().trim().to_string();
                    list.subjects.push((subject, role));
                }
                _ => return Err(format!("line {at}: lines start with `token` or `subject`")),
            }
        }
        Ok(list)
    }

    /// The name and role of a presented token. Every entry is compared, in
    /// constant time, whatever matches.
    fn token(&self, token: &str) -> Option<(&str, Role)> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.tokens {
            let difference = entry.hash.iter().zip(presented.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = Some((entry.name.as_str(), entry.role));
            }
        }
        found
    }

    fn subject(&self, subject: &str) -> Option<Role> {
        self.subjects.iter().find(|(s, _)| s == subject).map(|(_, role)| *role)
    }
}

fn decode_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The access policy of a server: off (everyone is admin), or an access list
/// reloaded from its file when the file changes.
#[derive(Clone)]
pub struct Access {
    list: Option<Arc<RwLock<Arc<AccessList>>>>,
    /// Whether reflection needs a reader (otherwise it is open, like health).
    reflection_needs_role: bool,
}

impl Access {
    /// No access control: calls are allowed; identities come from client
    /// certificates when there are any.
    pub fn open() -> Access {
        Access { list: None, reflection_needs_role: false }
    }

    /// Loads `path` and watches it: a changed file is loaded again within about
    /// a second (a bad new file is logged and the old list kept).
    pub fn from_file(path: &Path, reflection_needs_role: bool) -> Result<Access, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the access file {}: {e}", path.display()))?;
        let list = AccessList::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        tracing::info!(tokens = list.tokens.len(), subjects = list.subjects.len(), "access control on");
        let shared = Arc::new(RwLock::new(Arc::new(list)));
        spawn_reloader(path.to_path_buf(), shared.clone());
        Ok(Access { list: Some(shared), reflection_needs_role })
    }

    /// The caller of a request and whether it may make the call, as a status to
    /// answer with when not.
    fn admit(&self, path: &str, headers: &http::HeaderMap, subject: Option<&str>) -> Result<Caller, tonic::Status> {
        let cert_caller = subject.map(|s| Caller { identity: format!("cert:{s}") });
        let Some(shared) = &self.list else {
            return Ok(cert_caller.unwrap_or_else(Caller::anonymous));
        };
        let needed = required_role(path, self.reflection_needs_role);
        let list = shared.read().expect("access list lock").clone();
        let bearer = headers.get(http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or_default());
        let (caller, role) = match bearer {
            Some(value) => {
                let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).unwrap_or("");
                match list.token(token.trim()) {
                    Some((name, role)) => (Caller { identity: format!("token:{name}") }, Some(role)),
                    // Open calls (health) answer whatever token comes with them.
                    None if needed.is_none() => (Caller::anonymous(), None),
                    None => {
                        return Err(tonic::Status::unauthenticated(
                            "the bearer token is not valid (expected `authorization: Bearer TOKEN` with a token of the access file)",
                        ));
                    }
                }
            }
            None => match (cert_caller, subject.and_then(|s| list.subject(s))) {
                (Some(caller), role) => (caller, role),
                (None, _) => (Caller::anonymous(), None),
            },
        };
        let Some(needed) = needed else { return Ok(caller) };
        match role {
            None if caller.identity == crate::registry::ANONYMOUS => Err(tonic::Status::unauthenticated(format!(
                "{path} needs the {} role: send `authorization: Bearer TOKEN` or a client certificate",
                needed.name()
            ))),
            None => Err(tonic::Status::permission_denied(format!(
                "{} has no role; {path} needs the {} role",
                caller.identity,
                needed.name()
            ))),
            Some(role) if role < needed => Err(tonic::Status::permission_denied(format!(
                "{} has the {} role; {path} needs the {} role",
                caller.identity,
                role.name(),
                needed.name()
            ))),
            Some(_) => Ok(caller),
        }
    }
}

/// The role a method needs; `None` for calls open to everyone (health, and
/// reflection unless configured otherwise).
pub fn required_role(path: &str, reflection_needs_role: bool) -> Option<Role> {
    if path.starts_with("/grpc.health.v1.Health/") {
        return None;
    }
    if path.starts_with("/grpc.reflection.") {
        return reflection_needs_role.then_some(Role::Reader);
    }
    let method = path.rsplit('/').next().unwrap_or_default();
    let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    let known = service.starts_with("cooperation.v1.");
    if !known {
        return Some(Role::Admin);
    }
    if service.ends_with("ChangeService") || service.ends_with("RelationshipService") {
        return Some(Role::Reader);
    }
    // An export reads what List reads, at one revision.
    if method.starts_with("Get") || method.starts_with("List") || method.starts_with("Export") {
        return Some(Role::Reader);
    }
    if ["Create", "BatchCreate", "Update", "Delete", "Undelete"].iter().any(|verb| method.starts_with(verb)) {
        return Some(Role::Writer);
    }
    Some(Role::Admin)
}

fn spawn_reloader(path: PathBuf, shared: Arc<RwLock<Arc<AccessList>>>) {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = modified(&path);
    let mut last_text = std::fs::read_to_string(&path).ok();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let now = modified(&path);
            let text = std::fs::read_to_string(&path).ok();
            if now == seen && text == last_text {
                continue;
            }
            seen = now;
            last_text = text.clone();
            match text.as_deref().map(AccessList::parse) {
                Some(Ok(list)) => {
                    tracing::info!(tokens = list.tokens.len(), subjects = list.subjects.len(), "access file reloaded");
                    *shared.write().expect("access list lock") = Arc::new(list);
                }
                Some(Err(e)) => tracing::error!(error = %e, "access file not reloaded; keeping the previous one"),
                None => tracing::error!(path = %path.display(), "access file unreadable; keeping the previous one"),
            }
        }
    });
}

/// The subject of the first client certificate of a TLS connection.
fn peer_subject<B>(request: &http::Request<B>) -> Option<String> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let info = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    let first = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(first.as_ref()).ok()?;
    Some(cert.subject().to_string())
}

/// The tower layer that admits or refuses every call.
#[derive(Clone)]
pub struct AccessLayer {
    access: Access,
}

impl AccessLayer {
    pub fn new(access: Access) -> AccessLayer {
        AccessLayer { access }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = AccessService<S>;
    fn layer(&self, inner: S) -> AccessService<S> {
        AccessService { inner, access: self.access.clone() }
    }
}

#[derive(Clone)]
pub struct AccessService<S> {
    inner: S,
    access: Access,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for AccessService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let subject = peer_subject(&request);
        match self.access.admit(request.uri().path(), request.headers(), subject.as_deref()) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_need_the_documented_roles() {
        let r = |p| required_role(p, false);
        assert_eq!(r("/grpc.health.v1.Health/Check"), None);
        assert_eq!(r("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"), None);
        assert_eq!(
            required_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", true),
            Some(Role::Reader)
        );
        assert_eq!(r("/cooperation.v1.AgreementService/GetAgreement"), Some(Role::Reader));
        assert_eq!(r("/cooperation.v1.PartyService/ListParties"), Some(Role::Reader));
        assert_eq!(r("/cooperation.v1.ChangeService/WatchChanges"), Some(Role::Reader));
        assert_eq!(r("/cooperation.v1.RelationshipService/GetRelationship"), Some(Role::Reader));
        assert_eq!(r("/cooperation.v1.DatasetService/ExportDataset"), Some(Role::Reader));
        assert_eq!(r("/cooperation.v1.AgreementService/CreateAgreement"), Some(Role::Writer));
        assert_eq!(r("/cooperation.v1.PartyService/BatchCreateParties"), Some(Role::Writer));
        assert_eq!(r("/cooperation.v1.EngagementService/UndeleteEngagement"), Some(Role::Writer));
        assert_eq!(r("/cooperation.v1.AdminService/Backup"), Some(Role::Admin));
        assert_eq!(r("/other.Service/Anything"), Some(Role::Admin));
    }

    #[test]
    fn access_files_parse_and_tokens_match_by_hash() {
        let text =
            format!("# comment\n\ntoken ci writer {}\nsubject admin CN=ops,O=Example Org\n", hash_token("s3cret"));
        let list = AccessList::parse(&text).unwrap();
        assert_eq!(list.token("s3cret"), Some(("ci", Role::Writer)));
        assert_eq!(list.token("s3cret "), None);
        assert_eq!(list.token(""), None);
        assert_eq!(list.subject("CN=ops,O=Example Org"), Some(Role::Admin));
        for (bad, message) in [
            ("token ci writer abc", "64 hex"),
            ("token ci boss 00", "role"),
            ("user x", "start with"),
            ("subject admin", "expected"),
        ] {
            let err = AccessList::parse(bad).err().unwrap();
            assert!(err.contains("line 1") && err.contains(message), "{bad}: {err}");
        }
    }
}
