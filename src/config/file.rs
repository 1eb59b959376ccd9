//! Raw serde types: the config file exactly as written, with spans so every
//! error can name its line. Nothing here is trusted; `validate` turns these
//! into the checked [`Config`](super::Config).

use serde::Deserialize;
use toml::Spanned;

/// A value the user may write as one string or as a list of strings.
#[derive(Debug)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Plain HTTP listener: ACME HTTP-01 and (with TLS) the redirect to https.
    pub http: Option<Spanned<String>>,
    /// HTTPS listener (TLS termination).
    pub https: Option<Spanned<String>>,
    /// Admin listener: health, metrics, reload.
    pub admin: Option<Spanned<String>>,
    /// File holding the bearer token the admin API requires for its
    /// non-health endpoints.
    pub admin_token_file: Option<Spanned<String>>,
    /// CIDRs whose `X-Forwarded-*` headers are believed. Default: none.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// Where ACME state, certificates and sessions live.
    pub state_dir: Option<Spanned<String>>,
    /// How long in-flight requests may take to finish on shutdown.
    pub grace_period: Option<Spanned<String>>,
    /// Time allowed for a TCP connect to an upstream.
    pub upstream_connect_timeout: Option<Spanned<String>>,
    /// Default time allowed for an upstream's response headers.
    pub upstream_timeout: Option<Spanned<String>>,
    /// Time allowed for a client to send the request head.
    pub header_read_timeout: Option<Spanned<String>>,
    /// How long an idle upstream keep-alive connection is kept in the pool.
    pub upstream_idle_timeout: Option<Spanned<String>>,
    /// Runtime worker threads; default: one per core.
    pub workers: Option<Spanned<i64>>,
}

/// `redirect = "URL"` or `redirect = { to = "URL", status = 301, keep_path = false }`
#[derive(Debug)]
pub enum FileRedirect {
    To(String),
    Full(FileRedirectTable),
}

impl<'de> Deserialize<'de> for FileRedirect {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FileRedirect;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a URL, or a table { to = \"URL\", status = 308, keep_path = true }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileRedirect, E> {
                Ok(FileRedirect::To(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FileRedirect, A::Error> {
                FileRedirectTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(FileRedirect::Full)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRedirectTable {
    /// Target URL (scheme and host, optionally a path), or a path on this host.
    pub to: String,
    /// 301, 302, 303, 307 or 308 (default 308).
    pub status: Option<i64>,
    /// Append the request path and query to `to` (default true).
    pub keep_path: Option<bool>,
}

/// `respond = { status = 200, body = "...", content_type = "text/plain" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRespond {
    /// HTTP status (default 200).
    pub status: Option<Spanned<i64>>,
    /// Response body (default empty).
    pub body: Option<String>,
    /// Content-Type (default `text/plain; charset=utf-8`).
    pub content_type: Option<Spanned<String>>,
}

/// `[[route]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// Name used in logs and metrics; derived from host and path if absent.
    pub name: Option<Spanned<String>>,
    /// `example.com`, `*.example.com` (any subdomain) or `*` (any host).
    pub host: Spanned<String>,
    /// Segment-aware path prefix; default `/`.
    pub path: Option<Spanned<String>>,
    /// Backend URL(s), round robin.
    pub upstream: Option<Spanned<OneOrMany>>,
    /// Redirect instead of proxying.
    pub redirect: Option<Spanned<FileRedirect>>,
    /// Answer directly instead of proxying.
    pub respond: Option<Spanned<FileRespond>>,
    /// Remove the route's path prefix before forwarding (default false).
    pub strip_prefix: Option<bool>,
    /// Forward the client's Host header (default true); false sends the
    /// upstream's own host.
    pub preserve_host: Option<bool>,
    /// Time allowed for the upstream's response headers on this route.
    pub timeout: Option<Spanned<String>>,
}

/// The whole file, section by section. Each section is deserialised on its
/// own (see `validate`) so one broken route does not hide errors in others.
pub const TOP_LEVEL_KEYS: &[&str] = &["server", "route"];
