//! Raw serde types: the config file exactly as written, with spans so every
//! error can name its line. Nothing here is trusted; `validate` turns these
//! into the checked [`Config`](super::Config).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::headers_section::FileHeaderRules;
use super::options_section::{FileCompress, FileDefaultRoute, FileRateLimit};

pub use super::limits_section::{FileHealthCheck, FileSize};

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

/// A key written as a word or a switch (`auth = "public"`, `compress =
/// true`) or as a table (`auth = { oidc = "NAME" }`). The table's type
/// says what the key accepts, for the error when it is neither.
#[derive(Debug)]
pub enum ScalarOr<S, T> {
    Scalar(S),
    Table(T),
}

/// The table form of a [`ScalarOr`] key.
pub trait TableForm: for<'de> Deserialize<'de> {
    /// Every form the key accepts, as the error shows it.
    const EXPECTING: &'static str;
}

/// The scalar forms of a [`ScalarOr`] key: a string or a bool.
pub trait ScalarForm: Sized {
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
}

impl ScalarForm for String {
    fn from_str(v: &str) -> Option<Self> {
        Some(v.to_string())
    }
}

impl ScalarForm for bool {
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

impl<'de, S: ScalarForm, T: TableForm> Deserialize<'de> for ScalarOr<S, T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected};
        struct V<S, T>(std::marker::PhantomData<(S, T)>);
        impl<'de, S: ScalarForm, T: TableForm> serde::de::Visitor<'de> for V<S, T> {
            type Value = ScalarOr<S, T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(T::EXPECTING)
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
                S::from_str(v)
                    .map(ScalarOr::Scalar)
                    .ok_or_else(|| E::invalid_type(Unexpected::Str(v), &self))
            }
            fn visit_bool<E: Error>(self, v: bool) -> Result<Self::Value, E> {
                S::from_bool(v)
                    .map(ScalarOr::Scalar)
                    .ok_or_else(|| E::invalid_type(Unexpected::Bool(v), &self))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ScalarOr::Table)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
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
    /// Access-log line shape: `"default"` (the log format's own) or
    /// `"combined"` (Apache/nginx combined).
    pub access_log_format: Option<Spanned<String>>,
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
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Option<Spanned<String>>,
    /// `Strict-Transport-Security` on HTTPS responses: `false`, `true`, or a
    /// table `{ max_age = "365d", include_subdomains = false, preload = false }`.
    pub hsts: Option<Spanned<FileHsts>>,
    /// Most client connections served at once (past it, accepting pauses).
    pub max_connections: Option<Spanned<i64>>,
    /// Largest request head (request line + headers) accepted.
    pub max_header_bytes: Option<Spanned<FileSize>>,
    /// Longest pause allowed while a client sends a request body.
    pub request_body_timeout: Option<Spanned<String>>,
    /// Longest pause allowed while a backend sends a response body.
    pub upstream_read_timeout: Option<Spanned<String>>,
    /// Longest a client may leave a response unread (writes blocked).
    pub send_timeout: Option<Spanned<String>>,
    /// Consecutive failures after which an upstream is skipped (0 = never).
    pub upstream_eject_after: Option<Spanned<i64>>,
    /// How long an ejected upstream is skipped.
    pub upstream_eject_for: Option<Spanned<String>>,
    /// HTTP/2 streams a client may have open at once on one connection.
    pub h2_max_concurrent_streams: Option<Spanned<i64>>,
    /// Routes' default: read request bodies (up to `request_buffer`)
    /// before contacting the upstream.
    pub request_buffering: Option<Spanned<bool>>,
    /// How much of a request body is held in memory before the upstream
    /// is contacted.
    pub request_buffer: Option<Spanned<FileSize>>,
    /// Reload by itself when the config, an included file or a certificate
    /// or secret file it names changes (default false).
    pub watch: Option<Spanned<bool>>,
    /// Default TLS settings for `https://` upstreams.
    pub upstream_tls: Option<Spanned<FileUpstreamTls>>,
    // --- route option defaults (checked in `options_section`) ---
    /// Routes' default for `compress`.
    pub compress: Option<Spanned<FileCompress>>,
    /// Error pages for every route (routes may override statuses).
    pub error_pages: Option<Spanned<BTreeMap<String, String>>>,
    /// What requests for a host no route serves get.
    pub default_route: Option<Spanned<FileDefaultRoute>>,
    /// PROXY protocol (v1/v2) from `trusted_proxies` on the http/https
    /// listeners.
    pub proxy_protocol: Option<Spanned<bool>>,
}

/// `upstream_tls = { ca_file, server_name, client_cert_file,
/// client_key_file, pin_sha256, insecure_skip_verify }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamTls {
    /// PEM CA certificates trusted besides the system roots.
    pub ca_file: Option<Spanned<String>>,
    /// SNI and the name verified; default: the upstream's host.
    pub server_name: Option<Spanned<String>>,
    /// mTLS: the client certificate chain and its key (PEM).
    pub client_cert_file: Option<Spanned<String>>,
    pub client_key_file: Option<Spanned<String>>,
    /// Base64 SHA-256 of the leaf's SubjectPublicKeyInfo; replaces CA
    /// verification.
    pub pin_sha256: Option<Vec<Spanned<String>>>,
    /// Accept any certificate (route only).
    pub insecure_skip_verify: Option<Spanned<bool>>,
}

/// `hsts = false | true | { max_age, include_subdomains, preload }`
pub type FileHsts = ScalarOr<bool, FileHstsTable>;

impl TableForm for FileHstsTable {
    const EXPECTING: &'static str = "true, false, or a table { max_age = \"365d\", include_subdomains = false, preload = false }";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHstsTable {
    /// How long browsers remember to use HTTPS only (default "365d").
    pub max_age: Option<String>,
    /// Also cover every subdomain (default false).
    pub include_subdomains: Option<bool>,
    /// Ask to be preloaded into browsers (default false; needs include_subdomains).
    pub preload: Option<bool>,
}

/// `[acme]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAcme {
    /// Contact address for the ACME account (expiry warnings from the CA).
    pub email: Option<Spanned<String>>,
    /// "letsencrypt" (default), "letsencrypt-staging", or a directory URL.
    pub directory: Option<Spanned<String>>,
    /// "http-01" (default), "tls-alpn-01" or "dns-01".
    pub challenge: Option<Spanned<String>>,
    /// The DNS provider for dns-01: `{ provider = "rfc2136" | "cloudflare" | "exec", ... }`.
    pub dns: Option<Spanned<FileDns>>,
    /// Longest wait for a dns-01 TXT record to be visible (default "2m").
    pub propagation_timeout: Option<Spanned<String>>,
    /// Where to check dns-01 propagation (IP:PORT); default: the zone's
    /// authoritative servers.
    pub resolvers: Option<Spanned<Vec<String>>>,
    /// Exact hosts under a wildcard that ACME orders reuse the wildcard's
    /// certificate instead of ordering their own (default true).
    pub reuse_wildcard: Option<bool>,
    /// PEM file with the CA certificate(s) to trust for the ACME server, in
    /// addition to the system roots (test CAs such as Pebble's).
    pub ca_file: Option<Spanned<String>>,
    /// How many orders may run at once (default 2).
    pub max_concurrent_orders: Option<Spanned<i64>>,
    /// First retry delay after a failed order (default "1m"); doubles each time.
    pub retry_min: Option<Spanned<String>>,
    /// Longest retry delay (default "1d").
    pub retry_max: Option<Spanned<String>>,
}

/// `[acme] dns = { ... }`: where dns-01 TXT records are written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDns {
    /// "rfc2136", "cloudflare" or "exec".
    pub provider: Spanned<String>,
    /// rfc2136: the primary server, IP:PORT.
    pub server: Option<Spanned<String>>,
    /// rfc2136: the zone to update, e.g. "example.com.".
    pub zone: Option<Spanned<String>>,
    /// rfc2136: the TSIG key's name.
    pub tsig_key_name: Option<Spanned<String>>,
    /// rfc2136: hmac-sha256 (default), hmac-sha384 or hmac-sha512.
    pub tsig_algorithm: Option<Spanned<String>>,
    /// rfc2136: file with the base64 TSIG secret (or a BIND key file).
    pub tsig_secret_file: Option<Spanned<String>>,
    /// cloudflare: file with an API token (Zone:DNS:Edit).
    pub api_token_file: Option<Spanned<String>>,
    /// cloudflare: API base URL, only for tests against a local stand-in.
    pub api_url: Option<Spanned<String>>,
    /// exec: program and arguments, called with `present|cleanup FQDN VALUE`.
    pub command: Option<Spanned<Vec<String>>>,
}

/// `[[acme_certificate]]`: one explicit ACME certificate (a SAN set).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAcmeCertificate {
    /// The names on the certificate (exact or `*.example.com`).
    pub names: Spanned<Vec<String>>,
    /// The challenge for this certificate (default: `[acme] challenge`).
    pub challenge: Option<Spanned<String>>,
}

/// `[[certificate]]`: a certificate from files (or self-signed) for hosts
/// that do not use ACME.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertificate {
    /// Names this certificate is served for (exact or `*.example.com`).
    pub hosts: Spanned<Vec<String>>,
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<Spanned<String>>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<Spanned<String>>,
    /// Generate a self-signed certificate at start instead (local use only).
    pub self_signed: Option<bool>,
}

/// `redirect = "URL"` or `redirect = { to = "URL", status = 301, keep_path = false }`
pub type FileRedirect = ScalarOr<String, FileRedirectTable>;

impl TableForm for FileRedirectTable {
    const EXPECTING: &'static str =
        "a URL, or a table { to = \"URL\", status = 308, keep_path = true }";
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
    /// `;params` in a request segment do not keep a request out of this
    /// route's prefix (default false: such a path is refused when its
    /// parameters would change the route).
    pub matrix_params: Option<Spanned<bool>>,
    /// Match the path prefix ignoring ASCII letter case (default false).
    pub case_insensitive_path: Option<Spanned<bool>>,
    /// Remove the route's path prefix before forwarding (default false).
    pub strip_prefix: Option<bool>,
    /// Forward the client's Host header (default true); false sends the
    /// upstream's own host.
    pub preserve_host: Option<bool>,
    /// Time allowed for the upstream's response headers on this route.
    pub timeout: Option<Spanned<String>>,
    /// Only clients in these networks may use the route.
    pub allow_ips: Option<Vec<Spanned<String>>>,
    /// Clients in these networks get 403.
    pub deny_ips: Option<Vec<Spanned<String>>>,
    /// Largest request body accepted (413 beyond it).
    pub max_body: Option<Spanned<FileSize>>,
    /// Active health checks of the upstreams.
    pub health_check: Option<Spanned<FileHealthCheck>>,
    /// Override `[server] request_buffering` / `request_buffer`.
    pub request_buffering: Option<Spanned<bool>>,
    pub request_buffer: Option<Spanned<FileSize>>,
    /// Override `[server] hsts` for this route.
    pub hsts: Option<Spanned<FileHsts>>,
    /// On the plain HTTP listener, redirect to HTTPS (default true when an
    /// https listener is configured); false serves this route over HTTP too.
    pub https_redirect: Option<bool>,
    // --- single sign-on (checked in `oidc_section`) ---
    /// `"public"` (default) or `{ oidc = "NAME", groups = [..], emails = [..],
    /// email_domains = [..] }`.
    pub auth: Option<Spanned<FileAuth>>,
    /// Which identity headers the backend gets: `"authentik"` (default with
    /// oidc auth), `"forwarded"` or `"none"`.
    pub identity_headers: Option<Spanned<String>>,
    /// TLS to `https://` upstreams (over `[server] upstream_tls`).
    pub upstream_tls: Option<Spanned<FileUpstreamTls>>,
    /// `"auto"` (default), `"http1"` or `"h2"`.
    pub upstream_protocol: Option<Spanned<String>>,
    // --- access lists, header rules, compression, rate limits, error pages
    // (checked in `options_section`) ---
    /// The `[access.NAME]` list guarding this route.
    pub access: Option<Spanned<String>>,
    pub request_headers: Option<Spanned<FileHeaderRules>>,
    pub response_headers: Option<Spanned<FileHeaderRules>>,
    pub security_headers: Option<Spanned<bool>>,
    pub compress: Option<Spanned<FileCompress>>,
    pub rate_limit: Option<Spanned<FileRateLimit>>,
    pub error_pages: Option<Spanned<BTreeMap<String, String>>>,
}

// --- single sign-on -----------------------------------------------------------

/// `[oidc.NAME]`: one OpenID Connect provider (Authentik or any other).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOidc {
    /// The issuer exactly as the provider publishes it (Authentik:
    /// `https://auth.example.com/application/o/<slug>/`, trailing slash kept).
    pub issuer: Spanned<String>,
    /// The client id of the provider's application for the gateway.
    pub client_id: Spanned<String>,
    /// File holding the client secret.
    pub client_secret_file: Spanned<String>,
    /// Scopes to ask for (default openid, email, profile, offline_access).
    pub scopes: Option<Spanned<Vec<String>>>,
    /// Share sessions across every subdomain of this domain (optional).
    pub cookie_domain: Option<Spanned<String>>,
    /// How long a session lasts after login (default "12h").
    pub session_ttl: Option<Spanned<String>>,
    /// PEM file with extra CA certificates to trust for the provider.
    pub ca_file: Option<Spanned<String>>,
    /// Audiences accepted on bearer tokens besides the client id.
    pub audiences: Option<Spanned<Vec<String>>>,
    /// Development only: session cookies without `Secure`, for plain-HTTP setups.
    pub insecure_cookies: Option<Spanned<bool>>,
}

/// `auth = { oidc = "NAME", groups = [..], emails = [..], email_domains = [..] }`
/// Route `auth = "public"` or `auth = { oidc = "NAME", ... }`.
pub type FileAuth = ScalarOr<String, FileAuthOidc>;

impl TableForm for FileAuthOidc {
    const EXPECTING: &'static str = "\"public\" or a table { oidc = \"NAME\", groups = [..] }";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuthOidc {
    /// The `[oidc.NAME]` provider users sign in with.
    pub oidc: String,
    /// Allow members of any of these groups.
    pub groups: Option<Vec<String>>,
    /// Allow these email addresses.
    pub emails: Option<Vec<String>>,
    /// Allow any email address in these domains.
    pub email_domains: Option<Vec<String>>,
}

/// The whole file, section by section. Each section is deserialised on its
/// own (see `validate`) so one broken route does not hide errors in others.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "include",
    "server",
    "acme",
    "acme_certificate",
    "docker",
    "certificate",
    "oidc",
    "access",
    "cluster",
    "route",
];
