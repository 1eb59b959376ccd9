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
