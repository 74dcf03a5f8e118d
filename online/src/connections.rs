//! A cap on open client connections, and a deadline for each connection's opening.
//!
//! At most `online.max_connections` are open at once. A connection must send its opening (the
//! HTTP/2 preface and a frame header; with TLS, its hello) within `online.opening_timeout_ms` of
//! being accepted, or it is closed: HTTP/2 keepalive only guards connections that have opened,
//! so without this a flood of sockets that never send a byte would hold every slot for good.
//! When every slot is taken, a new connection takes the place of the oldest one still opening
//! (that one is closed), so a real client gets in at once even during such a flood; with none
//! still opening the new connection is closed at once (and counted). Dead peers of opened
//! connections are found by HTTP/2 keepalive, and every connection is retired after
//! `online.max_connection_age_ms` (a GOAWAY, then a grace period).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use crate::metrics::{CONNECTIONS, CONNECTIONS_CLOSED, CONNECTIONS_REFUSED};

/// Bytes a client sends before its connection counts as opened: the 24-byte HTTP/2 preface and
/// the 9-byte header of its first frame (any TLS hello is longer).
const OPENING_BYTES: usize = 24 + 9;

/// How long a new connection waits for the slot of the opening connection it displaced.
const DISPLACE_WAIT: Duration = Duration::from_millis(250);

/// One connection that has not opened yet, as the accept loop sees it.
#[derive(Default)]
struct Opening {
    /// Opened, or closed: no longer one to displace.
    settled: AtomicBool,
    /// Chosen to make room; its next read fails.
    displaced: AtomicBool,
    /// Wakes the connection's reader, so a displaced connection closes now.
    reader: AtomicWaker,
}

impl Opening {
    fn settle(&self) {
        self.settled.store(true, Ordering::Release);
    }
}

/// Connections still opening, oldest first (settled ones are dropped as they reach the front).
#[derive(Default)]
struct Openings(Mutex<VecDeque<Arc<Opening>>>);

impl Openings {
    fn push(&self) -> Arc<Opening> {
        let opening = Arc::new(Opening::default());
        let mut queue = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while queue
            .front()
            .is_some_and(|o| o.settled.load(Ordering::Acquire))
        {
            queue.pop_front();
        }
        queue.push_back(opening.clone());
        opening
    }

    /// Closes the oldest connection still opening; false when there is none.
    fn displace_oldest(&self) -> bool {
        let mut queue = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(oldest) = queue.pop_front() {
            if !oldest.settled.load(Ordering::Acquire) {
                oldest.settle();
                oldest.displaced.store(true, Ordering::Release);
                oldest.reader.wake();
                return true;
            }
        }
        false
    }
}

/// A connection holding one of the slots until it closes.
pub struct Limited<IO> {
    inner: IO,
    _slot: OwnedSemaphorePermit,
    /// Until the connection has opened: its entry among the openings, its deadline and the bytes
    /// it has sent so far.
    opening: Option<(Arc<Opening>, Pin<Box<Sleep>>, usize)>,
}

impl<IO> Drop for Limited<IO> {
    fn drop(&mut self) {
        if let Some((opening, _, _)) = &self.opening {
            opening.settle();
        }
        CONNECTIONS.dec();
    }
}

/// `incoming` with at most `max` connections open at once, each closed unless it opens within
/// `opening_timeout`; see the module doc for what happens to a connection past `max`.
pub fn limit<S, IO, E>(
    incoming: S,
    max: usize,
    opening_timeout: Duration,
) -> impl Stream<Item = Result<Limited<IO>, E>>
where
    S: Stream<Item = Result<IO, E>>,
{
    let slots = Arc::new(Semaphore::new(max.max(1)));
    let openings = Arc::new(Openings::default());
    incoming.filter_map(move |accepted| {
        let slots = slots.clone();
        let openings = openings.clone();
        async move {
            let io = match accepted {
                Ok(io) => io,
                Err(e) => return Some(Err(e)),
            };
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) if openings.displace_oldest() => {
                    CONNECTIONS_CLOSED.with_label_values(&["displaced"]).inc();
                    match tokio::time::timeout(DISPLACE_WAIT, slots.acquire_owned()).await {
                        Ok(Ok(slot)) => slot,
                        _ => {
                            CONNECTIONS_REFUSED.inc();
                            return None;
                        }
                    }
                }
                Err(_) => {
                    CONNECTIONS_REFUSED.inc();
                    return None;
                }
            };
            CONNECTIONS.inc();
            let deadline = Box::pin(tokio::time::sleep(opening_timeout));
            Some(Ok(Limited {
                inner: io,
                _slot: slot,
                opening: Some((openings.push(), deadline, 0)),
            }))
        }
    })
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some((opening, deadline, _)) = &mut this.opening {
            opening.reader.register(cx.waker());
            if opening.displaced.load(Ordering::Acquire) {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "closed to make room: all connections were taken and this one had not opened",
                )));
            }
            if deadline.as_mut().poll(cx).is_ready() {
                CONNECTIONS_CLOSED
                    .with_label_values(&["opening_timeout"])
                    .inc();
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the connection did not open within online.opening_timeout_ms",
                )));
            }
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some((opening, _, sent))) = (&read, &mut this.opening) {
            *sent += buf.filled().len() - before;
            if *sent >= OPENING_BYTES {
                opening.settle();
                this.opening = None;
            }
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Accepted connections from a channel of in-memory pipes; the test keeps the client ends.
    fn accept(
        max: usize,
        timeout: Duration,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<DuplexStream>,
        impl Stream<Item = Result<Limited<DuplexStream>, std::io::Error>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok);
        (tx, limit(incoming, max, timeout))
    }

    async fn read_some(conn: &mut Limited<DuplexStream>) -> std::io::Result<usize> {
        let mut buf = [0u8; 64];
        conn.read(&mut buf).await
    }

    /// A connection accepted from `tx` whose client sent its whole opening (which the server
    /// side has read): the client end and the server end.
    async fn accept_opened(
        tx: &tokio::sync::mpsc::UnboundedSender<DuplexStream>,
        accepted: &mut (impl Stream<Item = Result<Limited<DuplexStream>, std::io::Error>> + Unpin),
    ) -> (DuplexStream, Limited<DuplexStream>) {
        let (mut client, server) = tokio::io::duplex(1024);
        tx.send(server).unwrap();
        let mut opened = accepted.next().await.unwrap().unwrap();
        client.write_all(&[b'x'; OPENING_BYTES]).await.unwrap();
        let mut got = 0;
        while got < OPENING_BYTES {
            got += read_some(&mut opened).await.unwrap();
        }
        (client, opened)
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_at_its_opening_deadline() {
        let (tx, accepted) = accept(4, Duration::from_millis(100));
        let mut accepted = Box::pin(accepted);
        let (_client, server) = tokio::io::duplex(1024);
        tx.send(server).unwrap();
        let mut silent = accepted.next().await.unwrap().unwrap();
        let started = tokio::time::Instant::now();
        let err = read_some(&mut silent).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(90));

        // One that sends its opening keeps reading past the deadline.
        let (mut client, mut opened) = accept_opened(&tx, &mut accepted).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(read_some(&mut opened).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn when_full_a_new_connection_displaces_the_oldest_one_still_opening() {
        let (tx, accepted) = accept(2, Duration::from_secs(60));
        let mut accepted = Box::pin(accepted);
        // Slot 1: opened. Slot 2: silent.
        let (mut c1, mut opened) = accept_opened(&tx, &mut accepted).await;
        let (_c2, s2) = tokio::io::duplex(1024);
        tx.send(s2).unwrap();
        let mut silent = accepted.next().await.unwrap().unwrap();
        // The silent one is waiting to read when the third arrives.
        let reader = tokio::spawn(async move {
            let result = read_some(&mut silent).await;
            drop(silent);
            result
        });
        tokio::task::yield_now().await;
        let (_c3, s3) = tokio::io::duplex(1024);
        tx.send(s3).unwrap();
        let third = accepted.next().await.unwrap().unwrap();
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
        // With its slot filled by a connection that opened, and the first one opened too, no
        // connection is left to displace: a newcomer is refused, and the opened ones stay.
        drop(third);
        let (_c4, _fourth) = accept_opened(&tx, &mut accepted).await;
        let (_c5, s5) = tokio::io::duplex(1024);
        tx.send(s5).unwrap();
        drop(tx);
        assert!(
            accepted.next().await.is_none(),
            "a connection past the cap was accepted with no opening one to displace"
        );
        c1.write_all(b"still").await.unwrap();
        assert_eq!(read_some(&mut opened).await.unwrap(), 5);
    }
}
