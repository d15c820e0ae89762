//! A real etcd for tests (Debian's `etcd-server`): members on loopback
//! ports, over data dirs on tmpfs, killed when dropped. Public test code, as
//! `testkit` is, for the engine's tests and the server's.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{DEFAULT_LIMITS, EtcdOptions, EtcdStore};
use crate::store::Store;

/// An etcd member on loopback, killed when dropped.
pub struct Member {
    child: Child,
    /// Its data dir, removed when it is dropped.
    dir: std::path::PathBuf,
    pub url: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a one-member cluster and waits until it answers.
pub async fn start_member() -> Member {
    let (client, peer) = (free_port(), free_port());
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let dir = base.join(format!("cooperation-registry-etcd-{}-{client}", std::process::id()));
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "n1", "--data-dir"])
        .arg(dir.join("n1"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("n1={peer_url}"), "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd runs (Debian's etcd-server; .ci/run installs it)");
    let member = Member { child, dir, url };
    let store = open(&member, b"ready/");
    let started = Instant::now();
    while store.current_revision().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "etcd answered within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    member
}

/// A store on `member` under `prefix`.
pub fn open(member: &Member, prefix: &[u8]) -> EtcdStore {
    let options = EtcdOptions { endpoints: vec![member.url.clone()], prefix: prefix.to_vec(), limits: DEFAULT_LIMITS };
    EtcdStore::connect(options).unwrap()
}
