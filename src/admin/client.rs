//! The command line's side of the admin API: `portcullis health` and
//! `portcullis reload` talk to a running gateway through these. Each call
//! runs on a runtime of its own (the CLI has none) and returns what the
//! gateway said; printing it is the CLI's job.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::config::Secret;

/// What `portcullis health` probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTarget {
    /// `GET /healthz` (or `/readyz`) on the admin listener.
    Admin(SocketAddr),
    /// The admin listener is off: a TCP connect to a public listener.
    Listener(SocketAddr),
}

/// The admin address when the config does not name one (as `check` has it).
const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9180);

impl HealthTarget {
    /// Reads only `[server]`'s `admin`, `http` and `https` from the config
    /// file, so the probe agrees with the gateway without an environment
    /// variable that could say otherwise. A file that cannot be read or
    /// parsed (being edited, say) falls back to the default admin address,
    /// with a note on stderr: the running gateway still has its old config.
    pub fn from_config(path: &std::path::Path) -> HealthTarget {
        match Self::read(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!(
                    "portcullis health: {e:#}; probing the default admin address {DEFAULT_ADMIN}"
                );
                HealthTarget::Admin(DEFAULT_ADMIN)
            }
        }
    }

    fn read(path: &std::path::Path) -> anyhow::Result<HealthTarget> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let doc: toml::Table = text
            .parse()
            .with_context(|| format!("cannot parse {}", path.display()))?;
        let server = doc.get("server").and_then(|s| s.as_table());
        let key = |k: &str| server.and_then(|s| s.get(k)).and_then(|v| v.as_str());
        let addr = |k: &str, v: &str| -> anyhow::Result<SocketAddr> {
            let a: SocketAddr = v.parse().with_context(|| {
                format!("{}: server.{k} = {v:?} is not an address", path.display())
            })?;
            Ok(reachable(a))
        };
        match key("admin") {
            None => Ok(HealthTarget::Admin(DEFAULT_ADMIN)),
            Some("" | "off") => {
                let (k, v) = ["http", "https"]
                    .into_iter()
                    .find_map(|k| key(k).map(|v| (k, v)))
                    .with_context(|| {
                        format!(
                            "{}: server.admin is off and no listener is set",
                            path.display()
                        )
                    })?;
                Ok(HealthTarget::Listener(addr(k, v)?))
            }
            Some(v) => Ok(HealthTarget::Admin(addr("admin", v)?)),
        }
    }
}

/// A wildcard listen address is reached on loopback.
fn reachable(a: SocketAddr) -> SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match a.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        IpAddr::V6(v6) if v6.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        _ => a,
    }
}

/// Probes `target`: the admin endpoint's text, or `listening on ADDR`.
pub fn probe(target: &HealthTarget, ready: bool, timeout: Duration) -> anyhow::Result<String> {
    let path = if ready { "/readyz" } else { "/healthz" };
    match *target {
        HealthTarget::Admin(addr) => health(addr, path, timeout),
        HealthTarget::Listener(addr) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => Ok(format!("listening on {addr} (admin listener off)")),
                    Ok(Err(e)) => Err(anyhow::anyhow!(
                        "cannot reach the gateway's listener at {addr} (admin listener off): {e}"
                    )),
                    Err(_) => anyhow::bail!("no connection to {addr} within {timeout:?}"),
                }
            })
        }
    }
}

/// `GET path` on the admin listener; the body's text when it answers 200.
pub fn health(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let probe = async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("cannot reach the admin listener at {addr}"))?;
            let (status, body) = send(stream, Request::get(path), addr).await?;
            let text = String::from_utf8_lossy(&body).trim().to_string();
            anyhow::ensure!(
                status == StatusCode::OK,
                "GET {path} on {addr}: HTTP {status}: {text}"
            );
            Ok(text)
        };
        match tokio::time::timeout(timeout, probe).await {
            Ok(r) => r,
            Err(_) => anyhow::bail!("GET {path} on {addr}: no answer within {timeout:?}"),
        }
    })
}

/// What `POST /reload` answered.
#[derive(Debug)]
pub enum ReloadReply {
    /// The new config is live.
    Reloaded {
        generation: serde_json::Value,
        routes: serde_json::Value,
        warnings: Vec<String>,
    },
    /// The config was refused; the gateway keeps its current one.
    Rejected(Vec<String>),
    /// Any other answer.
    Failed(StatusCode, serde_json::Value),
}

/// `POST /reload` on the admin listener, with the admin token if one is set.
pub fn reload(addr: SocketAddr, token: Option<&Secret>) -> anyhow::Result<ReloadReply> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| {
                format!("cannot reach the admin listener at {addr}; is portcullis running?")
            })?;
        let mut req = Request::post(format!("http://{addr}/reload"));
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", t.expose()));
        }
        let (status, body) = send(stream, req, addr).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
        });
        let texts = |v: &serde_json::Value, field: Option<&str>| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            field
                                .map_or(x, |f| &x[f])
                                .as_str()
                                .unwrap_or_default()
                                .to_string()
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(if status.is_success() {
            ReloadReply::Reloaded {
                generation: v["generation"].clone(),
                routes: v["routes"].clone(),
                warnings: texts(&v["warnings"], None),
            }
        } else if v["errors"].is_array() {
            ReloadReply::Rejected(texts(&v["errors"], Some("text")))
        } else {
            ReloadReply::Failed(status, v)
        })
    })
}

/// Sends one HTTP/1.1 request with an empty body on `stream`; the status
/// and the whole body.
async fn send(
    stream: tokio::net::TcpStream,
    req: http::request::Builder,
    addr: SocketAddr,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = req
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
