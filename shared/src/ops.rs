//! The operations endpoint every long-running process exposes: Prometheus metrics at `/metrics`,
//! liveness at `/healthz` (the process is up) and readiness at `/readyz` (it can do its work: the
//! online server has a model, a nearline worker has a model and its consumer is running).
//!
//! It serves the process-wide default Prometheus registry; it must not hold any state of its own.
//! The same HTTP and HTTPS serving carries other routers too (the online tier's REST API).

use crate::http_limits::{ConnectionLimits, Limited};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown` resolves; returns the
/// bound address (`addr` may use port 0). `/readyz` answers 503 with `not_ready` while `ready` is
/// false.
pub async fn serve_http(
    addr: &str,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    serve_router_http(
        addr,
        router(ready, not_ready),
        "metrics endpoint",
        OPS_LIMITS,
        shutdown,
    )
    .await
}

/// The operations endpoint's connections: scrapers and probes, a handful at a time; a
/// scraper's keep-alive connection survives a minute between scrapes.
const OPS_LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 256,
    opening: std::time::Duration::from_secs(10),
    idle: std::time::Duration::from_secs(120),
};

/// [`serve_http`] over TLS (see [`serve_router_https`]).
pub async fn serve_https(
    addr: &str,
    tls: Arc<rustls::ServerConfig>,
    ready: Arc<AtomicBool>,
    not_ready: &'static str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    serve_router_https(
        addr,
        tls,
        router(ready, not_ready),
        "metrics endpoint",
        OPS_LIMITS,
        shutdown,
    )
    .await
}

/// Serves `app` over HTTP/1.1 on `addr` until `shutdown` resolves; returns the bound address.
/// `what` names it in the log if it stops on an error.
pub async fn serve_router_http(
    addr: &str,
    app: Router,
    what: &'static str,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(Limited::new(listener, limits), app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "{what} stopped");
        }
    });
    Ok(local)
}

/// [`serve_router_http`] over TLS: only connections that complete a handshake with `tls` are
/// served (each handshake runs on its own task with a 5 s limit, so a stalled client holds up no
/// one).
pub async fn serve_router_https(
    addr: &str,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    what: &'static str,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let tcp = TcpListener::bind(addr).await?;
    let local = tcp.local_addr()?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = tcp.accept() => accepted,
                _ = tx.closed() => return,
            };
            let Ok((stream, peer)) = accepted else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    acceptor.accept(stream),
                );
                if let Ok(Ok(stream)) = handshake.await {
                    let _ = tx.send((stream, peer)).await;
                }
            });
        }
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(Limited::new(TlsListener { rx, local }, limits), app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "{what} stopped");
        }
    });
    Ok(local)
}

/// Connections that completed their TLS handshake.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(connection) => connection,
            // The acceptor stopped: nothing more will arrive.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

fn router(ready: Arc<AtomicBool>, not_ready: &'static str) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Acquire);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, not_ready)
                    }
                }
            }),
        )
}

async fn metrics_text() -> (StatusCode, [(&'static str, String); 1], Vec<u8>) {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    let families = prometheus::gather();
    match encoder.encode(&families, &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [("content-type", encoder.format_type().to_string())],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain".into())],
            e.to_string().into_bytes(),
        ),
    }
}

/// The sum of the samples whose line starts with `prefix` (a metric name, optionally with its
/// labels) on the `/metrics` of `127.0.0.1:port`; 0 while the endpoint is unreachable. For
/// benches and tests watching a child process.
pub fn scrape(port: u16, prefix: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0.0;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |total, v| total + v)
}
