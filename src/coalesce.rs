//! Fewer, larger socket writes for HTTP/2 connections.
//!
//! h2 flushes its write buffer whenever it queues a DATA frame of more than
//! 256 bytes (it hands the payload to `writev` instead of copying it), so with
//! many calls in flight on a connection every response of a realistic record
//! became a `writev` of its own and a loopback round through the kernel:
//! GetAgreement made 1.2 writes per call where Health/Check made 0.4.
//! [`Coalesced`] keeps written bytes in a buffer and, at the first flush of a
//! batch, lets the connection task run once more before writing (it wakes
//! itself), so the responses that complete meanwhile go out in the same write.
//! A response waits for at most one more turn of the runtime's queue: the
//! next read or flush on the connection writes it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Buffered bytes beyond which writes go out before more are accepted, and
/// the size from which a write bypasses the buffer.
const WRITE_THROUGH: usize = 64 * 1024;

/// The most buffer capacity a connection keeps between writes.
const RETAINED_CAPACITY: usize = 16 * 1024;

/// A connection whose writes are gathered and sent at a deferred flush.
pub struct Coalesced<T> {
    io: T,
    pending: Vec<u8>,
    /// How much of `pending` the socket has taken.
    sent: usize,
    /// A flush was answered without writing; the next one writes.
    deferred: bool,
}

impl<T> Coalesced<T> {
    pub fn new(io: T) -> Self {
        Coalesced { io, pending: Vec::new(), sent: 0, deferred: false }
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
        self.deferred = false;
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
        if this.pending.len() + total > WRITE_THROUGH {
            ready!(this.poll_drain(cx))?;
            if total >= WRITE_THROUGH {
                return Pin::new(&mut this.io).poll_write_vectored(cx, slices);
            }
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
            this.deferred = false;
            return Pin::new(&mut this.io).poll_flush(cx);
        }
        if !this.deferred {
            // Run once more before writing: responses finishing meanwhile join
            // this write. The wake guarantees the next flush comes.
            this.deferred = true;
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
        if this.deferred
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
        let mut flushes = 0;
        // A caller that flushes whenever it is woken, as an h2 connection does.
        std::future::poll_fn(|cx| {
            flushes += 1;
            match Pin::new(&mut conn).poll_flush(cx) {
                Poll::Ready(Ok(())) if conn.pending.is_empty() => Poll::Ready(()),
                Poll::Ready(Ok(())) => Poll::Pending,
                other => panic!("{other:?}"),
            }
        })
        .await;
        assert_eq!(flushes, 2, "woken once, written at the second flush");
        let mut buf = [0u8; 5];
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
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
