//! A cap on open client connections: a connection accepted while `online.max_connections` are
//! open is closed at once (and counted), so a flood of idle connections cannot exhaust file
//! descriptors or memory. Dead peers are found by HTTP/2 keepalive, and every connection is
//! retired after `online.max_connection_age_ms` (a GOAWAY, then a grace period).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

use crate::metrics::{CONNECTIONS, CONNECTIONS_REFUSED};

/// A connection holding one of the slots until it closes.
pub struct Limited<IO> {
    inner: IO,
    _slot: OwnedSemaphorePermit,
}

impl<IO> Drop for Limited<IO> {
    fn drop(&mut self) {
        CONNECTIONS.dec();
    }
}

/// `incoming` with at most `max` connections open at once; the ones past it are dropped (closed).
pub fn limit<S, IO, E>(incoming: S, max: usize) -> impl Stream<Item = Result<Limited<IO>, E>>
where
    S: Stream<Item = Result<IO, E>>,
{
    let slots = Arc::new(Semaphore::new(max.max(1)));
    incoming.filter_map(move |accepted| {
        let slots = slots.clone();
        async move {
            match accepted {
                Ok(io) => match slots.try_acquire_owned() {
                    Ok(slot) => {
                        CONNECTIONS.inc();
                        Some(Ok(Limited {
                            inner: io,
                            _slot: slot,
                        }))
                    }
                    Err(_) => {
                        CONNECTIONS_REFUSED.inc();
                        None
                    }
                },
                Err(e) => Some(Err(e)),
            }
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
