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
    child: Option<Child>,
    name: String,
    /// Its data dir, removed when it is dropped.
    dir: std::path::PathBuf,
    pub url: String,
    peer_url: String,
    initial_cluster: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Member {
    /// A member of the cluster `initial_cluster` (`name=peer_url,…`), not started.
    fn new(name: &str, client: u16, peer: u16, initial_cluster: &str) -> Member {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        Member {
            child: None,
            name: name.into(),
            dir: base.join(format!("cooperation-registry-etcd-{}-{client}", std::process::id())),
            url: format!("http://127.0.0.1:{client}"),
            peer_url: format!("http://127.0.0.1:{peer}"),
            initial_cluster: initial_cluster.into(),
        }
    }

    /// Starts it: `state` is `new` the first time, `existing` after a kill.
    fn spawn(&mut self, state: &str) {
        let child = Command::new("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.join(&self.name))
            .args(["--listen-client-urls", &self.url, "--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &self.peer_url, "--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", "cooperation-registry-tests"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (Debian's etcd-server; .ci/run installs it)");
        self.child = Some(child);
    }

    /// SIGKILL, keeping its data dir for [`Member::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on its data dir: it catches up with the cluster.
    pub fn restart(&mut self) {
        self.spawn("existing");
    }

    /// Whether it leads the cluster (false if it does not answer).
    pub async fn leads(&self) -> bool {
        use crate::pb::etcd::etcdserverpb::{StatusRequest, maintenance_client::MaintenanceClient};
        let Ok(channel) = tonic::transport::Channel::from_shared(self.url.clone()).unwrap().connect().await else {
            return false;
        };
        match MaintenanceClient::new(channel).status(StatusRequest {}).await {
            Ok(status) => {
                let status = status.into_inner();
                status.header.is_some_and(|header| header.member_id == status.leader)
            }
            Err(_) => false,
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a one-member cluster and waits until it answers.
pub async fn start_member() -> Member {
    start_cluster(1).await.pop().expect("one member")
}

/// Starts a cluster of `size` members and waits until it answers.
pub async fn start_cluster(size: usize) -> Vec<Member> {
    let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<Member> = ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| Member::new(&format!("n{i}"), *client, *peer, &initial_cluster))
        .collect();
    for member in &mut members {
        member.spawn("new");
    }
    let store = open_cluster(&members, b"ready/");
    let started = Instant::now();
    while store.current_revision().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "etcd answered within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    members
}

/// A store on every member of `members` under `prefix`.
pub fn open_cluster(members: &[Member], prefix: &[u8]) -> EtcdStore {
    let endpoints = members.iter().map(|member| member.url.clone()).collect();
    EtcdStore::connect(EtcdOptions { endpoints, prefix: prefix.to_vec(), limits: DEFAULT_LIMITS }).unwrap()
}

/// A store on `member` under `prefix`.
pub fn open(member: &Member, prefix: &[u8]) -> EtcdStore {
    open_cluster(std::slice::from_ref(member), prefix)
}
