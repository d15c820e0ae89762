//! The real binary in a child process: `serve` on a free loopback port over a
//! data dir, its address read from its log, and a guard that kills it when a
//! failing test or bench drops it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The registry's binary, built by cargo for the tests and benches.
pub const BINARY: &str = env!("CARGO_BIN_EXE_cooperation-registry");

/// How long a server may take to log its address: a start replays what was
/// logged since the previous one, which takes a while on a large data dir.
const START_LIMIT: Duration = Duration::from_secs(120);

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cooperation-registry serve` over a data dir on a free loopback port, to be
/// started with `start`.
pub struct Serve {
    data_dir: PathBuf,
    durability: Option<String>,
    flags: Vec<String>,
    log_filter: String,
    cores: Option<String>,
    metrics: bool,
}

impl Serve {
    /// `serve --listen 127.0.0.1:0 --data-dir <data_dir> --durability none`
    /// with `RUST_LOG=info`: nothing waits for the disk unless a test asks for
    /// it with `durability` or `default_durability`.
    pub fn new(data_dir: &Path) -> Serve {
        Serve {
            data_dir: data_dir.to_path_buf(),
            durability: Some("none".into()),
            flags: Vec::new(),
            log_filter: "info".into(),
            cores: None,
            metrics: false,
        }
    }

    /// `--durability <mode>`.
    pub fn durability(mut self, mode: &str) -> Serve {
        self.durability = Some(mode.into());
        self
    }

    /// No `--durability` flag: the server's default (fsync), for what must
    /// survive a crash and for measurements of what a user gets.
    pub fn default_durability(mut self) -> Serve {
        self.durability = None;
        self
    }

    /// More flags after the data dir.
    pub fn flags<S: AsRef<str>>(mut self, flags: impl IntoIterator<Item = S>) -> Serve {
        self.flags.extend(flags.into_iter().map(|f| f.as_ref().to_string()));
        self
    }

    /// `RUST_LOG` for the server (`info` unless set).
    pub fn log_filter(mut self, filter: &str) -> Serve {
        self.log_filter = filter.into();
        self
    }

    /// Runs the server on `cores` only (a `taskset -c` list, e.g. `0` or `0,1`).
    pub fn pinned(mut self, cores: &str) -> Serve {
        self.cores = Some(cores.into());
        self
    }

    /// Serves Prometheus metrics on a free loopback port too
    /// (`--metrics-listen`), and `start` waits for that address as well.
    pub fn metrics(mut self) -> Serve {
        self.metrics = true;
        self
    }

    /// The command, its output not redirected.
    pub fn command(&self) -> Command {
        let mut command = match &self.cores {
            Some(cores) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", cores, BINARY]);
                taskset
            }
            None => Command::new(BINARY),
        };
        command.args(["serve", "--listen", "127.0.0.1:0"]);
        if self.metrics {
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        command.arg("--data-dir").arg(&self.data_dir);
        if let Some(mode) = &self.durability {
            command.args(["--durability", mode]);
        }
        command.args(&self.flags).env("RUST_LOG", &self.log_filter);
        command
    }

    /// Starts the server and returns once it has logged its address(es).
    pub fn start(self) -> Served {
        spawn_server(&mut self.command(), self.metrics)
    }

    /// Runs the server expecting it to refuse to start: its output once it
    /// has stopped by itself within `limit` (it is killed, and this panics,
    /// if it has not).
    pub fn refused(self, limit: Duration) -> Output {
        let mut child =
            KillOnDrop(self.command().stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("the binary starts"));
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut text);
            text
        });
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "serve on {} still runs after {limit:?}: it should have refused to start",
                self.data_dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = reader.join().unwrap();
        Output { status, stdout: Vec::new(), stderr: text }
    }
}

/// A server in a child process: its addresses, and every line it logs.
pub struct Served {
    pub child: KillOnDrop,
    pub addr: SocketAddr,
    /// The Prometheus endpoint, when the server serves one.
    pub metrics: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

/// Spawns `command` (a server that logs `address=<addr>` in a line with
/// `serving`, and its metrics endpoint in a line with `Prometheus`) with its
/// standard error read into its log, and returns once it has logged its
/// address, and its metrics address if `metrics`.
pub fn spawn_server(command: &mut Command, metrics: bool) -> Served {
    let mut child =
        KillOnDrop(command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("the server starts"));
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (addresses, logged) = std::sync::mpsc::channel();
    let lines = log.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("address=") {
                let _ = addresses.send(line.clone());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let address = |line: &str| -> Option<SocketAddr> {
        let at = line.find("address=")?;
        line[at + 8..].chars().take_while(|c| !c.is_whitespace()).collect::<String>().parse().ok()
    };
    let deadline = Instant::now() + START_LIMIT;
    let (mut addr, mut metrics_addr) = (None, None);
    while addr.is_none() || (metrics && metrics_addr.is_none()) {
        let line = logged.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| {
            panic!("the server logged no address (it stopped, or took over {START_LIMIT:?}): {:?}", log.lock().unwrap())
        });
        if line.contains("Prometheus") {
            metrics_addr = address(&line);
        } else if line.contains("serving ") {
            addr = address(&line);
        }
    }
    Served { child, addr: addr.unwrap(), metrics: metrics_addr, log, reader: Some(reader) }
}

impl Served {
    /// A server whose log is not read (it is sent elsewhere).
    pub fn unlogged(child: Child, addr: SocketAddr, metrics: Option<SocketAddr>) -> Served {
        Served { child: KillOnDrop(child), addr, metrics, log: Default::default(), reader: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many lines logged so far contain `text`.
    pub fn logged(&self, text: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(text)).count()
    }

    /// Sends SIGTERM: the server drains its calls, flushes and exits.
    pub fn sigterm(&self) {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    /// Waits for the process to exit by itself within `limit` (panics with
    /// its log if it does not), then for the rest of its log.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the server did not exit within {limit:?}: {:?}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        };
        self.read_to_end();
        status
    }

    /// SIGTERM, and waits for the exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let _ = self.child.wait();
        self.read_to_end();
    }

    /// SIGKILL (a crash), and waits for the exit.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.read_to_end();
    }

    /// Waits until the exited process's last lines are in the log.
    fn read_to_end(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
