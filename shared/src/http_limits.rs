//! Connection limits for the HTTP/1.1 servers built on axum (the REST API and the console):
//! at most `max_connections` open at once (beyond, a newcomer waits in the listen backlog), a
//! connection that sends nothing within `opening` of being accepted is closed, and so is one
//! idle — nothing read or written — for `idle`. axum's own server has neither a cap nor a header
//! timeout, so without these a client that opens connections and sends nothing holds them (and
//! their tasks) for ever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// Time for a new connection to send its first byte.
    pub opening: Duration,
    /// Time an open connection may go without reading or writing a byte.
    pub idle: Duration,
}

/// A listener whose connections keep to [`ConnectionLimits`].
pub struct Limited<L> {
    inner: L,
    permits: Arc<Semaphore>,
    limits: ConnectionLimits,
}

impl<L> Limited<L> {
    pub fn new(inner: L, limits: ConnectionLimits) -> Self {
        Limited {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
        }
    }
}

impl<L> axum::serve::Listener for Limited<L>
where
    L: axum::serve::Listener,
{
    type Io = LimitedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (io, addr) = self.inner.accept().await;
        (
            LimitedIo {
                inner: io,
                _permit: permit,
                timer: Box::pin(tokio::time::sleep(self.limits.opening)),
                idle: self.limits.idle,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection holding its place under the cap, closed when it stays silent too long.
pub struct LimitedIo<T> {
    inner: T,
    _permit: OwnedSemaphorePermit,
    /// When the connection is closed unless a byte moves first.
    timer: Pin<Box<Sleep>>,
    idle: Duration,
}

impl<T> LimitedIo<T> {
    fn moved(&mut self) {
        self.timer.as_mut().reset(Instant::now() + self.idle);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LimitedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection was silent too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LimitedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            if n > 0 {
                this.moved();
            }
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(limits: ConnectionLimits) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move {
            axum::serve(Limited::new(listener, limits), app)
                .await
                .unwrap();
        });
        addr
    }

    async fn get(stream: &mut tokio::net::TcpStream) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn silent_connections_are_closed_and_free_their_place() {
        let addr = server(ConnectionLimits {
            max_connections: 2,
            opening: Duration::from_millis(300),
            idle: Duration::from_secs(30),
        })
        .await;
        // Two connections that never send a byte take every place.
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let answer = get(&mut third).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // It was answered only once a silent one was closed at its opening deadline.
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        for mut s in silent {
            let mut buf = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("closed by the server")
                .unwrap_or(0);
            assert_eq!(n, 0, "a silent connection was left open");
        }
    }

    #[tokio::test]
    async fn a_connection_idle_after_its_request_is_closed() {
        let addr = server(ConnectionLimits {
            max_connections: 8,
            opening: Duration::from_secs(5),
            idle: Duration::from_millis(300),
        })
        .await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Keep-alive: the answer, then nothing; the server closes it once idle.
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the idle connection was not closed");
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    }
}
