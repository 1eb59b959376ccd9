//! Upstreams for tests, each on its own `127.0.0.1:0` socket and stopped
//! (with all its connections) when dropped.
//!
//! [`Backend::echo`] answers every request with JSON describing what it
//! received:
//!
//! ```json
//! { "backend": "127.0.0.1:PORT", "method": "POST", "uri": "/path?q",
//!   "version": "HTTP/1.1", "headers": [["host", "a.test"], ...],
//!   "body_len": 123, "body_sha256": "hex" }
//! ```
//!
//! The body is hashed as it streams in, never held whole. Special paths
//! (matched on the last path segment, so they work behind any prefix):
//! - `.../slow?ms=N`: sleeps N ms before answering.
//! - `.../hold`: waits until [`Backend::release`] is called.
//! - `.../bytes?n=N`: streams N bytes of the test pattern (see
//!   [`super::pattern_sha256`]) with a Content-Length, without allocating N.
//! - `.../status?code=N`: answers with status N (body: the echo JSON).
//! - any path, `?h=name:value` (repeatable): adds that response header.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::client::TestBody;

/// What kind of backend this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Echo,
    WebSocketEcho,
    Refusing,
    Hanging,
}

struct State {
    addr: SocketAddr,
    /// Requests (or, for WebSocket/hanging backends, connections) seen.
    served: AtomicUsize,
    /// Requests currently waiting in `/hold`.
    holding: AtomicUsize,
    release: watch::Sender<bool>,
}

/// A test upstream. Dropping it stops the listener and every connection.
pub struct Backend {
    kind: Kind,
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// An HTTP/1.1 echo server (see the module docs).
    pub async fn echo() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo backend");
        Self::echo_on(listener)
    }

    /// An echo server on `addr` again: a stopped backend coming back on
    /// its address (the port is free once the old one is dropped).
    /// Retries for a while: the old listener closes when its aborted task
    /// is dropped, which the runtime does soon, not at once.
    pub async fn echo_at(addr: SocketAddr) -> Backend {
        let listener = super::wait_for(
            &format!("{addr} to be free for the echo backend again"),
            Duration::from_secs(10),
            || async move { TcpListener::bind(addr).await.ok() },
        )
        .await;
        Self::echo_on(listener)
    }

    fn echo_on(listener: TcpListener) -> Backend {
        let state = State::new(listener.local_addr().unwrap());
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let _ = stream.set_nodelay(true);
                let st = st.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| echo(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            kind: Kind::Echo,
            state,
            task: Some(task),
        }
    }

    /// A WebSocket server that echoes every text and binary message.
    pub async fn websocket_echo() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind websocket backend");
        let state = State::new(listener.local_addr().unwrap());
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                st.served.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Backend {
            kind: Kind::WebSocketEcho,
            state,
            task: Some(task),
        }
    }

    /// An address nothing listens on: connections are refused.
    pub async fn refusing() -> Backend {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().unwrap();
        drop(l);
        Backend {
            kind: Kind::Refusing,
            state: State::new(addr),
            task: None,
        }
    }

    /// Accepts TCP connections and never answers (nor closes them).
    pub async fn hanging() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hanging backend");
        let state = State::new(listener.local_addr().unwrap());
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                st.served.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        Backend {
            kind: Kind::Hanging,
            state,
            task: Some(task),
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    /// Requests received so far (connections, for WebSocket and hanging
    /// backends).
    pub fn served(&self) -> usize {
        self.state.served.load(Ordering::SeqCst)
    }

    /// Requests currently waiting in `/hold`.
    pub fn holding(&self) -> usize {
        self.state.holding.load(Ordering::SeqCst)
    }

    /// Lets every current and future `/hold` request answer.
    pub fn release(&self) {
        let _ = self.state.release.send(true);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            // Dropping the accept task drops its JoinSet, which aborts
            // every connection task.
            t.abort();
        }
    }
}

impl State {
    fn new(addr: SocketAddr) -> Arc<State> {
        Arc::new(State {
            addr,
            served: AtomicUsize::new(0),
            holding: AtomicUsize::new(0),
            release: watch::channel(false).0,
        })
    }
}

fn query_params(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

async fn echo(st: Arc<State>, req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    st.served.fetch_add(1, Ordering::SeqCst);
    let params = query_params(req.uri().query());
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let last_segment = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();

    let mut status = StatusCode::OK;
    match last_segment.as_str() {
        "slow" => {
            let ms: u64 = param("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        "hold" => {
            st.holding.fetch_add(1, Ordering::SeqCst);
            let mut rx = st.release.subscribe();
            let _ = rx.wait_for(|released| *released).await;
            st.holding.fetch_sub(1, Ordering::SeqCst);
        }
        "status" => {
            status = param("code")
                .and_then(|c| c.parse().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
        }
        _ => {}
    }

    let extra_headers: Vec<(HeaderName, HeaderValue)> = params
        .iter()
        .filter(|(k, _)| k == "h")
        .filter_map(|(_, v)| {
            let (n, v) = v.split_once(':')?;
            Some((
                HeaderName::from_bytes(n.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        })
        .collect();

    let mut resp = if last_segment == "bytes" {
        let n: u64 = param("n").and_then(|v| v.parse().ok()).unwrap_or(0);
        // Drain (and ignore) any request body first.
        let mut body = req.into_body();
        while let Some(Ok(_)) = body.frame().await {}
        let mut r = Response::new(TestBody::pattern(n));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        r
    } else {
        let (parts, mut body) = req.into_parts();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut len = 0u64;
        let mut body_error = None;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        len += d.len() as u64;
                        ctx.update(&d);
                    }
                }
                Err(e) => {
                    body_error = Some(e.to_string());
                    break;
                }
            }
        }
        let headers: Vec<[String; 2]> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                [
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ]
            })
            .collect();
        let v = serde_json::json!({
            "backend": st.addr.to_string(),
            "method": parts.method.as_str(),
            "uri": parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/"),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body_len": len,
            "body_sha256": super::hex(ctx.finish().as_ref()),
            "body_error": body_error,
        });
        let mut r = Response::new(TestBody::Full(Some(Bytes::from(v.to_string()))));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    *resp.status_mut() = status;
    for (k, v) in extra_headers {
        resp.headers_mut().append(k, v);
    }
    Ok(resp)
}

/// The echo JSON, made easy to query.
pub struct Echo(pub serde_json::Value);

impl Echo {
    pub fn from_json(v: serde_json::Value) -> Echo {
        Echo(v)
    }

    /// Every value of a header the backend received (name compared exactly,
    /// lowercase; hyper lowercases names).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .expect("echo headers")
            .iter()
            .filter(|p| p[0].as_str() == Some(name))
            .map(|p| p[1].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The single value of a header; panics if it was sent more than once.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "header {name} received {} times: {all:?}",
            all.len()
        );
        all.into_iter().next()
    }

    /// Header names received, lowercase, in order.
    pub fn header_names(&self) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .expect("echo headers")
            .iter()
            .map(|p| p[0].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Headers as a map of name → values.
    pub fn headers(&self) -> HashMap<String, Vec<String>> {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for p in self.0["headers"].as_array().expect("echo headers") {
            m.entry(p[0].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(p[1].as_str().unwrap_or_default().to_string());
        }
        m
    }

    pub fn uri(&self) -> &str {
        self.0["uri"].as_str().expect("echo uri")
    }

    pub fn method(&self) -> &str {
        self.0["method"].as_str().expect("echo method")
    }

    pub fn backend(&self) -> &str {
        self.0["backend"].as_str().expect("echo backend")
    }

    pub fn body_len(&self) -> u64 {
        self.0["body_len"].as_u64().expect("echo body_len")
    }

    pub fn body_sha256(&self) -> &str {
        self.0["body_sha256"].as_str().expect("echo body_sha256")
    }
}
