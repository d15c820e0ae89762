//! Where log lines go: standard error, with the per-call access lines batched.
//!
//! One "call finished" line per call written straight to stderr is a `write`
//! system call per call, a large share of a cheap call's CPU (the server CPU a
//! call that `cargo bench --bench service` reports). Access lines (target [`ACCESS_TARGET`])
//! are therefore gathered in a buffer and written together, when it holds
//! [`BATCH_BYTES`] or at the latest [`BATCH_DELAY`] after the first of them; every
//! other line writes out what is gathered and then itself, at once, so that lines
//! keep their order and a warning is never held back. [`Logs::flush`] at exit
//! writes the rest; a process killed outright loses at most the last
//! [`BATCH_DELAY`] of access lines.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// The tracing target of the per-call "call finished" events.
pub const ACCESS_TARGET: &str = "cooperation_registry::access";
/// Access lines gathered before they are written without waiting.
const BATCH_BYTES: usize = 32 * 1024;
/// Longest an access line waits in the buffer.
const BATCH_DELAY: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Signalled when the buffer goes from empty to holding lines.
    filled: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Writes `bytes` to stderr; a log line that cannot be written has nowhere
/// else to go, so the error is dropped.
fn write_stderr(bytes: &[u8]) {
    let _ = std::io::stderr().lock().write_all(bytes);
}

fn write_out(pending: &mut Vec<u8>) {
    if !pending.is_empty() {
        write_stderr(pending);
        pending.clear();
    }
}

/// The writer factory handed to `tracing_subscriber::fmt().with_writer`.
#[derive(Clone)]
pub struct Logs {
    shared: Arc<Shared>,
}

impl Logs {
    /// Starts the thread that writes gathered access lines after [`BATCH_DELAY`].
    pub fn start() -> Logs {
        let shared = Arc::new(Shared::default());
        let flusher = shared.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let mut pending = flusher.lock();
                loop {
                    pending = flusher.filled.wait_while(pending, |p| p.is_empty()).unwrap_or_else(|e| e.into_inner());
                    drop(pending);
                    std::thread::sleep(BATCH_DELAY);
                    pending = flusher.lock();
                    write_out(&mut pending);
                }
            })
            .expect("the log writer thread starts");
        Logs { shared }
    }

    /// Writes every gathered line now.
    pub fn flush(&self) {
        write_out(&mut self.shared.lock());
    }
}

/// One formatted log line (tracing-subscriber writes each event whole).
pub struct Line<'a> {
    shared: &'a Shared,
    batched: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.shared.lock();
        if self.batched {
            let was_empty = pending.is_empty();
            pending.extend_from_slice(bytes);
            if pending.len() >= BATCH_BYTES {
                write_out(&mut pending);
            } else if was_empty {
                self.shared.filled.notify_one();
            }
        } else {
            // Under the lock, so that no access line slips in between.
            write_out(&mut pending);
            write_stderr(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line { shared: &self.shared, batched: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        Line { shared: &self.shared, batched: meta.target() == ACCESS_TARGET }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(logs: &Logs) -> Vec<u8> {
        logs.shared.lock().clone()
    }

    fn line(logs: &Logs, batched: bool, text: &str) {
        Line { shared: &logs.shared, batched }.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn access_lines_wait_and_other_lines_take_them_along() {
        let logs = Logs { shared: Arc::new(Shared::default()) };
        line(&logs, true, "call finished 1\n");
        line(&logs, true, "call finished 2\n");
        assert_eq!(pending(&logs), b"call finished 1\ncall finished 2\n");
        line(&logs, false, "store failed\n");
        assert!(pending(&logs).is_empty(), "a warning writes the access lines before it");
    }

    #[test]
    fn a_full_batch_is_written_without_waiting() {
        let logs = Logs { shared: Arc::new(Shared::default()) };
        let text = "x".repeat(1000) + "\n";
        for _ in 0..BATCH_BYTES / text.len() {
            line(&logs, true, &text);
        }
        assert!(pending(&logs).len() > BATCH_BYTES - text.len());
        line(&logs, true, &text);
        assert!(pending(&logs).is_empty(), "the line that filled the batch wrote it");
    }

    #[test]
    fn the_writer_thread_writes_gathered_lines_after_the_delay() {
        let logs = Logs::start();
        line(&logs, true, "call finished\n");
        let deadline = std::time::Instant::now() + BATCH_DELAY * 40;
        while !pending(&logs).is_empty() {
            assert!(std::time::Instant::now() < deadline, "still gathered after {:?}", BATCH_DELAY * 40);
            std::thread::sleep(BATCH_DELAY / 5);
        }
    }

    #[test]
    fn access_events_are_told_apart_by_target() {
        let logs = Logs { shared: Arc::new(Shared::default()) };
        let dispatch = tracing::Dispatch::new(tracing_subscriber::fmt().with_writer(logs.clone()).finish());
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(target: ACCESS_TARGET, code = "Ok", "call finished");
        });
        assert!(String::from_utf8(pending(&logs)).unwrap().contains("call finished"));
        tracing::dispatcher::with_default(&dispatch, || tracing::info!("serving"));
        assert!(pending(&logs).is_empty());
    }
}
