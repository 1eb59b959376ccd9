//! Cloudflare's API v4, kept to the three calls DNS-01 needs, as
//! documented by Cloudflare:
//!
//! - zone lookup: `GET /zones?name=NAME` for each parent of the record
//!   name, closest first, until one zone is found;
//! - create: `POST /zones/ZONE_ID/dns_records` with
//!   `{"type":"TXT","name":FQDN,"content":VALUE,"ttl":60}`, answering the
//!   record's `id`;
//! - delete: `DELETE /zones/ZONE_ID/dns_records/RECORD_ID`.
//!
//! Every answer is `{"success":bool,"errors":[{"code":N,"message":"..."}],
//! "result":...}`; a failure is reported with its HTTP status and those
//! errors. The token (`Authorization: Bearer`) is never logged.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::Secret;

pub(crate) const API: &str = "https://api.cloudflare.com/client/v4";
const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BODY: usize = 1 << 20;

pub(crate) struct Cloudflare {
    base: String,
    token: Secret,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A created record: what cleanup needs.
#[derive(Debug, Clone)]
pub(crate) struct CfRecord {
    pub zone_id: String,
    pub record_id: String,
}

impl Cloudflare {
    pub fn new(token: Secret, api_url: Option<&str>) -> Result<Self, String> {
        let tls = crate::pki::client_config(None)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        // Plain http only for a test stand-in on loopback (config-checked).
        let b = if api_url.is_some_and(|u| u.starts_with("http://")) {
            b.https_or_http()
        } else {
            b.https_only()
        };
        let connector = b.enable_http1().wrap_connector(http);
        Ok(Cloudflare {
            base: api_url.unwrap_or(API).to_string(),
            token,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub async fn present(&self, fqdn: &str, value: &str) -> Result<CfRecord, String> {
        let zone_id = self.zone_for(fqdn).await?;
        let body = serde_json::json!({
            "type": "TXT",
            "name": fqdn,
            "content": value,
            "ttl": 60,
        });
        let r = self
            .call(
                http::Method::POST,
                &format!("/zones/{zone_id}/dns_records"),
                Some(body),
            )
            .await
            .map_err(|e| format!("creating TXT {fqdn}: {e}"))?;
        let record_id = r["id"]
            .as_str()
            .ok_or_else(|| format!("creating TXT {fqdn}: Cloudflare answered no record id"))?
            .to_string();
        Ok(CfRecord { zone_id, record_id })
    }

    pub async fn cleanup(&self, fqdn: &str, rec: &CfRecord) -> Result<(), String> {
        self.call(
            http::Method::DELETE,
            &format!("/zones/{}/dns_records/{}", rec.zone_id, rec.record_id),
            None,
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("deleting TXT {fqdn}: {e}"))
    }

    /// The id of the closest zone holding `fqdn`.
    async fn zone_for(&self, fqdn: &str) -> Result<String, String> {
        let mut name = fqdn.trim_end_matches('.');
        while let Some((_, parent)) = name.split_once('.') {
            name = parent;
            if !name.contains('.') {
                break;
            }
            let r = self
                .call(http::Method::GET, &format!("/zones?name={name}"), None)
                .await
                .map_err(|e| format!("looking up the zone of {fqdn}: {e}"))?;
            if let Some(id) = r
                .as_array()
                .and_then(|zs| zs.first())
                .and_then(|z| z["id"].as_str())
            {
                return Ok(id.to_string());
            }
        }
        Err(format!(
            "zone not found: no Cloudflare zone this token can see holds {fqdn}"
        ))
    }

    /// One API call; the `result` on success, the errors in words otherwise.
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token.expose()),
            );
        let body = match body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(b.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                format!(
                    "could not reach the Cloudflare API: {}",
                    crate::http::error::chain(&e)
                )
            })?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the Cloudflare answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| {
                format!(
                    "the Cloudflare API did not answer within {}s",
                    TIMEOUT.as_secs()
                )
            })??;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() && v["success"] == Value::Bool(true) {
            return Ok(v["result"].clone());
        }
        let errors: Vec<String> = v["errors"]
            .as_array()
            .map(|es| {
                es.iter()
                    .map(|e| match (e["code"].as_i64(), e["message"].as_str()) {
                        (Some(c), Some(m)) => format!("{m} (code {c})"),
                        (None, Some(m)) => m.to_string(),
                        _ => e.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Err(format!(
            "Cloudflare answered HTTP {}: {}",
            status.as_u16(),
            if errors.is_empty() {
                "no error details".to_string()
            } else {
                errors.join("; ")
            }
        ))
    }
}
