//! The exporter's HTTP endpoint: `/metrics` (OpenMetrics text), `/healthz`
//! (the event loop answers), `/readyz` (the programs are attached).
use std::{
    convert::Infallible,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ACCEPT, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{prometheus_text, text},
    registry::Registry,
};
use thiserror::Error;
use tokio::net::TcpListener;

/// OpenMetrics 1.0, which `prometheus_client::encoding::text` writes, for
/// scrapers that ask for it (Prometheus does); the Prometheus text format
/// for the others (`promtool`, `curl`).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A client that sends no complete request head in this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("--metrics: cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
}

/// Where `--metrics` listens: `PORT` (every IPv4 address) or `ADDR:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint(pub SocketAddr);

/// Parses `--metrics`: `9431`, `127.0.0.1:9431`, `[::]:9431`.
pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(Endpoint(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port,
        )));
    }
    text.parse()
        .map(Endpoint)
        .map_err(|_| format!("{text:?} is not PORT or ADDR:PORT (an IPv6 address in brackets)"))
}

/// What the server answers from.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
    ready: AtomicBool,
}

impl Exporter {
    pub fn new(registry: Registry) -> Arc<Self> {
        Arc::new(Self {
            registry,
            ready: AtomicBool::new(false),
        })
    }

    /// From now on `/readyz` says ready: the programs are attached.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
            response
                .headers_mut()
                .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match request.uri().path() {
            "/metrics" => {
                let openmetrics = request
                    .headers()
                    .get_all(ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                let mut body = String::new();
                let (encoded, content_type) = if openmetrics {
                    (text::encode(&mut body, &self.registry), OPENMETRICS)
                } else {
                    (
                        prometheus_text::encode(&mut body, &self.registry),
                        prometheus_text::CONTENT_TYPE,
                    )
                };
                match encoded {
                    Ok(()) => reply(StatusCode::OK, content_type, body),
                    Err(_) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        "encoding the metrics failed\n",
                    ),
                }
            }
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" if self.ready.load(Ordering::Relaxed) => {
                reply(StatusCode::OK, "text/plain", "ready\n")
            }
            "/readyz" => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "loading the programs\n",
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "see /metrics, /healthz, /readyz\n",
            ),
        }
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Listens on `endpoint`: before the programs load, so that a port in use
/// is said at once.
pub async fn bind(endpoint: Endpoint) -> Result<TcpListener, ServeError> {
    TcpListener::bind(endpoint.0)
        .await
        .map_err(|source| ServeError::Bind {
            address: endpoint.0,
            source,
        })
}

/// Serves scrapes until the runtime ends. A connection that fails is that
/// client's problem: it is closed, and the server goes on.
pub async fn serve(listener: TcpListener, exporter: Arc<Exporter>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or the like: try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let exporter = Arc::clone(&exporter);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = exporter.respond(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _closed = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            parse_endpoint("9431").unwrap().0,
            "0.0.0.0:9431".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("127.0.0.1:1").unwrap().0,
            "127.0.0.1:1".parse().unwrap()
        );
        assert_eq!(
            parse_endpoint("[::1]:9431").unwrap().0,
            "[::1]:9431".parse().unwrap()
        );
        for bad in ["", "70000", "localhost:9431", "::1:9431", "1.2.3.4"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
