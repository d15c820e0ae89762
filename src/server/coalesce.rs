//! Fewer, larger socket writes for HTTP/2 connections.
//!
//! h2 flushes its write buffer whenever it queues a DATA frame of more than
//! 256 bytes (it hands the payload to `writev` instead of copying it), so with
//! many calls in flight on a connection every response of a realistic record
//! became a `writev` of its own and a round through the kernel.
//! [`Coalesced`] keeps written bytes in a buffer and answers a flush without
//! writing while the connection task is still producing: it wakes the task,
//! which runs again after the tasks queued behind it, so the responses that
//! complete meanwhile join the same write. It writes at the first flush that
//! found nothing new, after MAX_DEFERRALS turns, at 64 KiB, or at the next
//! read. Under many calls per connection this makes a few responses share
//! each socket write; the server CPU a call that `cargo bench --bench service`
//! reports for GetAgreement shows its effect.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Buffered bytes beyond which writes go out before more are accepted, and
/// the size from which a write bypasses the buffer.
const WRITE_THROUGH: usize = 64 * 1024;

/// The most turns a write waits for while responses keep arriving.
const MAX_DEFERRALS: u32 = 4;

/// The most buffer capacity a connection keeps between writes.
const RETAINED_CAPACITY: usize = 16 * 1024;

/// Bytes a large buffer leaves unused before its data: half a page. mimalloc
/// gives a large block at the same offset in its page as the response copied
/// into it, and a long copy between two such addresses stalls (4K aliasing),
/// which shows in the CPU a List page costs in `cargo bench --bench service`.
const LARGE_BUFFER_SKEW: usize = 2048;

/// A buffer with room for WRITE_THROUGH bytes after LARGE_BUFFER_SKEW bytes
/// that are never sent, holding `unsent` after them.
fn large_buffer(unsent: &[u8]) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(LARGE_BUFFER_SKEW + WRITE_THROUGH);
    buffer.resize(LARGE_BUFFER_SKEW, 0);
    buffer.extend_from_slice(unsent);
    buffer
}

/// A connection whose writes are gathered and sent at a deferred flush.
pub struct Coalesced<T> {
    io: T,
    pending: Vec<u8>,
    /// How much of `pending` is not to be written (again): what the socket
    /// has taken, and a large buffer's skew.
    sent: usize,
    /// Flushes answered without writing since the last write (a later flush
    /// or read writes), and how much was buffered at the last of them.
    deferrals: u32,
    deferred_len: usize,
}

impl<T> Coalesced<T> {
    pub fn new(io: T) -> Self {
        Coalesced { io, pending: Vec::new(), sent: 0, deferrals: 0, deferred_len: 0 }
    }

    /// Bytes buffered and not yet written.
    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        self.deferrals = 0;
        if self.pending.capacity() > RETAINED_CAPACITY {
            // A burst's buffer is not kept by an idle connection.
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = slices.iter().map(|s| s.len()).sum();
        if this.unsent() + total > WRITE_THROUGH {
            ready!(this.poll_drain(cx))?;
            if total >= WRITE_THROUGH {
                return Pin::new(&mut this.io).poll_write_vectored(cx, slices);
            }
        }
        if this.pending.len() + total > this.pending.capacity() && this.unsent() + total > RETAINED_CAPACITY {
            // A large response (a List page): room for all that may gather
            // before the next write at once, rather than doubling the buffer
            // (each doubling copies it) and starting over after every write.
            this.pending = large_buffer(&this.pending[this.sent..]);
            this.sent = LARGE_BUFFER_SKEW;
        }
        for slice in slices {
            this.pending.extend_from_slice(slice);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            this.deferrals = 0;
            return Pin::new(&mut this.io).poll_flush(cx);
        }
        // Run once more before writing, and again while each turn adds
        // responses (up to MAX_DEFERRALS turns): responses finishing meanwhile
        // join this write. The wake guarantees the next flush comes.
        let grew = this.deferrals == 0 || this.pending.len() > this.deferred_len;
        if grew && this.deferrals < MAX_DEFERRALS {
            this.deferrals += 1;
            this.deferred_len = this.pending.len();
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A deferred flush completes at the next read too: a TLS
        // handshake, woken after it, reads rather than flushes again. (If the
        // socket is full, its readiness wakes the task to try again.)
        if this.deferrals > 0
            && let Poll::Ready(Err(e)) = this.poll_drain(cx)
        {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: Connected> Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Flushes whenever woken, as an h2 connection does, calling `each_turn`
    /// first, until everything is written; returns the number of flushes.
    async fn flush_until_written(
        conn: &mut Coalesced<tokio::io::DuplexStream>,
        mut each_turn: impl FnMut(&mut Coalesced<tokio::io::DuplexStream>, &mut Context<'_>, u32),
    ) -> u32 {
        let mut flushes = 0;
        std::future::poll_fn(|cx| {
            flushes += 1;
            each_turn(conn, cx, flushes);
            match Pin::new(&mut *conn).poll_flush(cx) {
                Poll::Ready(Ok(())) if conn.pending.is_empty() => Poll::Ready(()),
                Poll::Ready(Ok(())) => Poll::Pending,
                other => panic!("{other:?}"),
            }
        })
        .await;
        flushes
    }

    #[tokio::test]
    async fn a_flush_writes_everything_by_the_second_call() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut conn = Coalesced::new(near);
        conn.write_all(b"first ").await.unwrap();
        conn.write_all(b"second").await.unwrap();
        // The first flush is deferred, nothing is on the wire yet.
        conn.flush().await.unwrap();
        let mut buf = [0u8; 12];
        assert!(tokio::time::timeout(std::time::Duration::from_millis(20), far.read(&mut buf)).await.is_err());
        conn.flush().await.unwrap();
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"first second");
    }

    #[tokio::test]
    async fn a_deferred_flush_wakes_its_task_so_the_bytes_are_not_stranded() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut conn = Coalesced::new(near);
        conn.write_all(b"hello").await.unwrap();
        let flushes = flush_until_written(&mut conn, |_, _, _| {}).await;
        assert_eq!(flushes, 2, "woken once, written at the second flush");
        let mut buf = [0u8; 5];
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[tokio::test]
    async fn responses_arriving_at_every_turn_wait_at_most_max_deferrals_turns() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut conn = Coalesced::new(near);
        // Every turn adds a response before flushing, as a busy connection does.
        let flushes = flush_until_written(&mut conn, |conn, cx, turn| {
            let mut chunk = [0u8; 10];
            chunk[0] = turn as u8;
            assert!(matches!(Pin::new(conn).poll_write(cx, &chunk), Poll::Ready(Ok(10))));
        })
        .await;
        assert_eq!(flushes, MAX_DEFERRALS + 1, "deferred while growing, then written");
        let mut all = vec![0u8; 10 * flushes as usize];
        far.read_exact(&mut all).await.unwrap();
        let firsts: Vec<u8> = all.chunks(10).map(|c| c[0]).collect();
        assert_eq!(firsts, (1..=flushes as u8).collect::<Vec<_>>(), "in order, in one write");
    }

    #[tokio::test]
    async fn a_read_after_a_deferred_flush_sends_the_bytes_first() {
        // As in a TLS handshake: write, flush, then wait for the answer.
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let peer = tokio::spawn(async move {
            let mut ping = [0u8; 4];
            far.read_exact(&mut ping).await.unwrap();
            assert_eq!(&ping, b"ping");
            far.write_all(b"pong").await.unwrap();
            far
        });
        let mut conn = Coalesced::new(near);
        conn.write_all(b"ping").await.unwrap();
        conn.flush().await.unwrap();
        let mut pong = [0u8; 4];
        tokio::time::timeout(std::time::Duration::from_secs(5), conn.read_exact(&mut pong))
            .await
            .expect("the ping was sent, so the pong came")
            .unwrap();
        assert_eq!(&pong, b"pong");
        peer.await.unwrap();
    }

    #[tokio::test]
    async fn a_large_response_is_gathered_after_the_skew_and_sent_without_it() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut conn = Coalesced::new(near);
        conn.write_all(b"small").await.unwrap();
        let page: Vec<u8> = (0..35_000u32).map(|i| i as u8).collect();
        conn.write_all(&page).await.unwrap();
        assert_eq!(conn.sent, LARGE_BUFFER_SKEW, "the data starts half a page in");
        assert!(conn.pending.capacity() >= LARGE_BUFFER_SKEW + WRITE_THROUGH);
        flush_until_written(&mut conn, |_, _, _| {}).await;
        let mut all = vec![0u8; 5 + page.len()];
        far.read_exact(&mut all).await.unwrap();
        assert_eq!(&all[..5], b"small");
        assert_eq!(&all[5..], &page[..]);
    }

    #[tokio::test]
    async fn large_writes_and_shutdown_deliver_every_byte_in_order() {
        let (near, mut far) = tokio::io::duplex(4096);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut conn = Coalesced::new(near);
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let chunk = vec![i as u8; (i as usize * 977) % 70_000 + 1];
            conn.write_all(&chunk).await.unwrap();
            expected.extend_from_slice(&chunk);
            if i % 7 == 0 {
                conn.flush().await.unwrap();
            }
        }
        conn.shutdown().await.unwrap();
        drop(conn);
        assert_eq!(reader.await.unwrap(), expected);
    }
}
