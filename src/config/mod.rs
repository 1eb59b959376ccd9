//! The config file: raw serde types (`file`), checked types (this module)
//! and the validator (`validate`, with one file per part: `route_section`,
//! `route_auth`, `tls_section`, `limits_section`, `oidc_section`) that turns one into the
//! other, reporting every error at once with file, line and key.
//!
//! This module reads files (the config, secret files) but never opens
//! sockets or touches shared state, so a reload can call it off the hot
//! path and throw the result away when it fails.

mod access_section;
mod acme_section;
mod cluster_section;
mod cx;
mod dns_section;
mod docker_section;
mod duration;
mod file;
mod headers_section;
pub mod labels;
mod limits_section;
mod oidc_section;
mod options_section;
mod route_auth;
mod route_section;
mod secret;
mod server_section;
mod starter;
mod tls_section;
mod upstream_tls_section;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use access_section::{AccessList, HashKind, HtpasswdUser, Satisfy, read_htpasswd};
pub use acme_section::{AcmeCertificateConfig, AcmeConfig, ChallengeKind};
pub use cluster_section::{ClusterConfig, ClusterKey, SentinelUrl};
pub use dns_section::{DnsConfig, TsigAlgorithm};
pub use docker_section::{DefaultAuth, DockerConfig};
pub use duration::parse_duration;
pub use headers_section::{HeaderRules, Piece, Template, reserved_header};
pub use limits_section::{HealthCheck, RouteLimits, parse_size};
pub use oidc_section::OidcConfig;
pub use options_section::{
    Compress, CompressLevel, DefaultRoute, ErrorPages, RateBy, RateLimit, RouteOptions,
    ServerOptions, StatusMatch,
};
pub use route_auth::{IdentityHeaders, OidcPolicy, RouteAuth};
pub use route_section::{parse_host_pattern, parse_upstream};
pub use secret::{MAX_SECRET_FILE_BYTES, Secret, SecretBytes};
pub use starter::starter;
pub use tls_section::pattern_covers;
pub use validate::{load, load_without_files, parse};

/// A validated config. The hot path never sees an `Option` that stands for
/// "the user did not say": defaults are filled in here.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from; reloads read it again.
    pub source: PathBuf,
    /// The main file and the files `include` named, in the order read.
    pub files: Vec<PathBuf>,
    /// `include` patterns as full paths (a new file matching one is a
    /// change worth a reload).
    pub include_patterns: Vec<PathBuf>,
    pub server: ServerConfig,
    /// `[docker]`: routes from container labels.
    pub docker: Option<DockerConfig>,
    /// `[acme]`: certificates for routed hosts from an ACME CA.
    pub acme: Option<AcmeConfig>,
    /// `[[certificate]]`: certificates from files or self-signed.
    pub certificates: Vec<CertificateConfig>,
    /// `[[acme_certificate]]`: explicit ACME certificates (SAN sets).
    pub acme_certificates: Vec<AcmeCertificateConfig>,
    /// `[oidc.NAME]` identity providers, sorted by name (routes refer to
    /// them by index).
    pub oidc: Vec<OidcConfig>,
    /// `[access.NAME]` lists, by name (routes hold them too).
    pub access: Vec<std::sync::Arc<AccessList>>,
    pub routes: Vec<RouteConfig>,
    /// What label discovery left out or refused (empty without `[docker]`).
    pub discovery: std::sync::Arc<labels::Discovery>,
    /// `[cluster]`: state shared with other instances through Redis.
    pub cluster: Option<ClusterConfig>,
    /// Files holding secrets that the checked sections keep only the
    /// contents of (`[cluster]`'s, the DNS-01 provider's): watched.
    pub secret_files: Vec<PathBuf>,
}

/// `[[certificate]]`, checked and loaded.
#[derive(Debug, Clone)]
pub struct CertificateConfig {
    pub hosts: Vec<HostPattern>,
    pub source: CertSource,
    /// The loaded chain and key (checked to match).
    pub key: std::sync::Arc<rustls::sign::CertifiedKey>,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned,
}

/// `server.access_log_format`: the shape of an access-log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// The log's own format (`--log-format`): a JSON line or pretty fields.
    #[default]
    Default,
    /// Apache/nginx combined, for fail2ban and GoAccess.
    Combined,
}

#[derive(Clone)]
pub struct ServerConfig {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The admin bearer token, read from `admin_token_file`.
    pub admin_token: Option<Secret>,
    pub admin_token_file: Option<PathBuf>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The access log's line shape.
    pub access_log_format: AccessLogFormat,
    pub state_dir: PathBuf,
    pub grace_period: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub header_read_timeout: Duration,
    /// Runtime worker threads; 0 = one per core.
    pub workers: usize,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub request_body_timeout: Duration,
    /// Longest pause while a backend sends a response body (then the
    /// response is cut off).
    pub upstream_read_timeout: Duration,
    /// Longest a client may leave a response unread (then the connection
    /// is closed).
    pub send_timeout: Duration,
    /// Consecutive upstream failures before it is skipped; 0 = never.
    pub upstream_eject_after: u32,
    pub upstream_eject_for: Duration,
    pub h2_max_concurrent_streams: u32,
    /// Routes' default for request buffering.
    pub request_buffering: bool,
    /// Most request body bytes held before the upstream is contacted.
    pub request_buffer: u64,
    /// The `Strict-Transport-Security` value for HTTPS responses; None = off.
    pub hsts: Option<http::HeaderValue>,
    /// Reload when a file the config reads changes.
    pub watch: bool,
    /// `[server] upstream_tls`: the default for `https://` upstreams.
    pub upstream_tls: crate::trust::Settings,
    /// Routes' compression default, error pages, `default_route`.
    pub options: ServerOptions,
    /// Read a PROXY protocol (v1/v2) header from `trusted_proxies` on the
    /// http and https listeners.
    pub proxy_protocol: bool,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("http", &self.http)
            .field("https", &self.https)
            .field("admin", &self.admin)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("trusted_proxies", &self.trusted_proxies)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// Which hosts a route answers for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `example.com` (stored lowercase, no trailing dot).
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com`; stores `example.com`.
    Wildcard(String),
    /// `*`: any host, used when nothing more specific matches.
    Any,
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// How a route's prefix is compared with request paths (route options
/// `matrix_params` and `case_insensitive_path`; see `routing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PathMatch {
    /// `;params` in a request segment are ignored: `/shop` matches
    /// `/shop;region=eu/items`.
    pub matrix_params: bool,
    /// ASCII letters compare ignoring case: `/admin` matches `/ADMIN/x`.
    pub ignore_case: bool,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub host: HostPattern,
    /// Normalised prefix: starts with `/`, no trailing `/` unless it is `/`.
    pub path: String,
    /// How `path` is matched: `matrix_params`, `case_insensitive_path`.
    pub path_match: PathMatch,
    pub action: Action,
    pub strip_prefix: bool,
    pub preserve_host: bool,
    /// Time allowed for the upstream's response headers.
    pub timeout: Duration,
    /// `Strict-Transport-Security` for this route over HTTPS (None = off).
    pub hsts: Option<http::HeaderValue>,
    /// On the plain listener, redirect to HTTPS (only when https is configured).
    pub https_redirect: bool,
    /// Client-address rules, body limit, health checks.
    pub limits: RouteLimits,
    /// Who may use this route: public, or signed in through an OIDC provider.
    pub auth: RouteAuth,
    /// `upstream_tls` with `[server] upstream_tls` filled in (what
    /// `https://` upstreams use); None when the route has none.
    pub upstream_tls: Option<crate::trust::Settings>,
    pub upstream_protocol: UpstreamProtocol,
    /// Access list, header rules, compression, rate limit, error pages.
    pub options: RouteOptions,
    /// 1-based line of the `[[route]]` in the file, for messages.
    pub line: usize,
    /// Where the route was written: a config file and line, or a
    /// container's labels. Shown in `GET /routes` and in messages.
    pub source: RouteSource,
}

/// Where a route comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSource {
    /// A `[[route]]` table: the file (main or included) and its line.
    File {
        file: std::sync::Arc<Path>,
        line: usize,
    },
    /// The labels of these containers (replicas share one route).
    Docker { containers: Vec<String> },
}

impl Default for RouteSource {
    fn default() -> Self {
        RouteSource::File {
            file: std::sync::Arc::from(Path::new("")),
            line: 0,
        }
    }
}

impl RouteSource {
    pub fn is_file(&self) -> bool {
        matches!(self, RouteSource::File { .. })
    }
    /// The file (or `docker:NAME` pseudo file) and line for a message.
    pub(crate) fn place(&self) -> (PathBuf, usize) {
        match self {
            RouteSource::File { file, line } => (file.to_path_buf(), *line),
            RouteSource::Docker { containers } => {
                (PathBuf::from(format!("docker:{}", containers.join(","))), 0)
            }
        }
    }
}

impl fmt::Display for RouteSource {
    /// `FILE:LINE` or `docker:CONTAINER[,CONTAINER...]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteSource::File { file, line } => write!(f, "{}:{line}", file.display()),
            RouteSource::Docker { containers } => write!(f, "docker:{}", containers.join(",")),
        }
    }
}

impl RouteConfig {
    /// The route's upstreams (empty for redirect and respond routes).
    pub fn upstreams(&self) -> &[UpstreamTarget] {
        match &self.action {
            Action::Upstream(list) => list,
            _ => &[],
        }
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    Upstream(Vec<UpstreamTarget>),
    Redirect(Redirect),
    Respond(Respond),
}

/// One backend of a route: `http://host:port[/base]`.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    /// As written, for logs and the admin view.
    pub url: String,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Path prefix to put in front of the forwarded path; "" for none.
    pub base_path: String,
    /// The authority as the upstream connection pool's key, hashed once
    /// here rather than byte by byte on every request. Scheme and TLS
    /// settings are part of it: connections made under other settings are
    /// not reused.
    pub pool_key: PoolKey,
    /// `https://`: how to talk TLS to it; None for `http://` and `h2c://`.
    pub tls: Option<std::sync::Arc<UpstreamTls>>,
    /// HTTP/1.1, HTTP/2, or what ALPN picks (`https://` only).
    pub protocol: UpstreamProtocol,
}

/// `upstream_protocol`: which HTTP version is spoken to a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// `https://`: ALPN offers h2 and http/1.1; `http://`: HTTP/1.1.
    #[default]
    Auto,
    Http1,
    /// `https://`: ALPN h2 only; `h2c://`: cleartext HTTP/2.
    H2,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Auto => "auto",
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

/// An `https://` upstream's TLS: the checked settings, the name sent and
/// verified, and the client configs built from them.
#[derive(Debug)]
pub struct UpstreamTls {
    pub settings: crate::trust::Settings,
    pub server_name: rustls_pki_types::ServerName<'static>,
    pub clients: std::sync::Arc<crate::trust::Clients>,
}

/// An upstream address (lowercased `host:port`) with its hash computed
/// once. Equal addresses in different config generations are equal keys,
/// so pooled connections survive reloads.
#[derive(Debug, Clone)]
pub struct PoolKey {
    hash: u64,
    name: std::sync::Arc<str>,
}

impl PoolKey {
    pub fn new(authority: &http::uri::Authority) -> Self {
        Self::named(authority.as_str().to_ascii_lowercase())
    }

    /// A key for anything but a plain `http://` upstream: the scheme and
    /// what else tells its connections apart come before the address.
    pub fn with_prefix(prefix: &str, authority: &http::uri::Authority) -> Self {
        Self::named(format!(
            "{prefix}{}",
            authority.as_str().to_ascii_lowercase()
        ))
    }

    fn named(name: String) -> Self {
        use std::hash::{Hash, Hasher};
        let name: std::sync::Arc<str> = name.into();
        // Fixed keys: the names come from the config file, not from clients.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut h);
        PoolKey {
            hash: h.finish(),
            name,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl PartialEq for PoolKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && (std::sync::Arc::ptr_eq(&self.name, &other.name) || self.name == other.name)
    }
}

impl Eq for PoolKey {}

impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

#[derive(Debug, Clone)]
pub struct Redirect {
    pub to: String,
    pub status: http::StatusCode,
    pub keep_path: bool,
}

#[derive(Debug, Clone)]
pub struct Respond {
    pub status: http::StatusCode,
    pub body: bytes::Bytes,
    pub content_type: http::HeaderValue,
}

/// One problem in a config file, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not tied to a place (e.g. unreadable file).
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `route[2].upstream`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} error{} in config:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// A one-line summary for `portcullis check` and the reload log.
    pub fn summary(&self) -> String {
        let mut hosts: Vec<String> = self.routes.iter().map(|r| r.host.to_string()).collect();
        hosts.sort();
        hosts.dedup();
        let mut listeners = Vec::new();
        if let Some(a) = self.server.http {
            listeners.push(format!("http {a}"));
        }
        if let Some(a) = self.server.https {
            listeners.push(format!("https {a}"));
        }
        if let Some(a) = self.server.admin {
            listeners.push(format!("admin {a}"));
        }
        format!(
            "{}: ok: {} route{}, {} host{}, listeners: {}",
            self.source.display(),
            self.routes.len(),
            if self.routes.len() == 1 { "" } else { "s" },
            hosts.len(),
            if hosts.len() == 1 { "" } else { "s" },
            if listeners.is_empty() {
                "none".to_string()
            } else {
                listeners.join(", ")
            }
        )
    }

    /// The files whose change should reload this config: the config and
    /// included files, certificate, key, secret and CA files it names
    /// (`[cluster]`'s and the DNS-01 provider's too), and access lists'
    /// htpasswd files.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut out = self.files.clone();
        out.extend(self.secret_files.iter().cloned());
        for c in &self.certificates {
            if let CertSource::Files { cert, key } = &c.source {
                out.push(cert.clone());
                out.push(key.clone());
            }
        }
        out.extend(self.server.admin_token_file.clone());
        for o in &self.oidc {
            out.push(o.client_secret_file.clone());
            out.extend(o.ca_file.clone());
        }
        if let Some(a) = &self.acme {
            out.extend(a.ca_file.clone());
        }
        // Access lists' htpasswd files and backends' TLS files.
        let tls = |t: &crate::trust::Settings, out: &mut Vec<PathBuf>| {
            out.extend(t.ca_file.clone());
            out.extend(t.client_cert_file.clone());
            out.extend(t.client_key_file.clone());
        };
        tls(&self.server.upstream_tls, &mut out);
        for r in &self.routes {
            if let Some(a) = &r.options.access {
                out.extend(a.basic_auth_file.clone());
            }
            if let Some(t) = &r.upstream_tls {
                tls(t, &mut out);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Resolves a path written in the config relative to the config's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        validate::resolve_relative(&self.source, p)
    }
}

#[cfg(test)]
mod watched_tests {
    /// `[cluster]`'s secret files and the DNS-01 provider's key file are
    /// watched too (their contents are all the checked config keeps).
    #[test]
    fn cluster_and_dns01_secret_files_are_watched() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("redis.pass"), "pw\n").unwrap();
        std::fs::write(d.join("redis.user"), "gw\n").unwrap();
        std::fs::write(d.join("cluster.key"), format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::write(d.join("tsig.key"), "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\n").unwrap();
        let src = "[server]\nhttps = \"127.0.0.1:0\"\n\n\
                   [acme]\nemail = \"a@example.com\"\nchallenge = \"dns-01\"\n\
                   dns = { provider = \"rfc2136\", server = \"127.0.0.1:53\", zone = \"example.com\", tsig_key_name = \"gw\", tsig_secret_file = \"tsig.key\" }\n\n\
                   [cluster]\nredis = \"redis://127.0.0.1:6379\"\npassword_file = \"redis.pass\"\nuser_file = \"redis.user\"\nencryption_key_file = \"cluster.key\"\n\n\
                   [[route]]\nhost = \"a.example.com\"\nrespond = { body = \"a\" }\n";
        let c = super::parse(&d.join("portcullis.toml"), src).unwrap_or_else(|e| panic!("{e}"));
        let watched = c.watched_files();
        for f in ["redis.pass", "redis.user", "cluster.key", "tsig.key"] {
            assert!(watched.contains(&d.join(f)), "{f} in {watched:?}");
        }
    }

    /// `watch = true` reloads when an access list's htpasswd file changes,
    /// as it does for certificates and secrets.
    #[test]
    fn htpasswd_files_are_watched() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(dir.path().join("users"), format!("ann:{hash}\n")).unwrap();
        let path = dir.path().join("portcullis.toml");
        let src = "[server]\nhttp = \"127.0.0.1:0\"\n\n[access.family]\nbasic_auth_file = \"users\"\n\n[[route]]\nhost = \"a.test\"\nrespond = { body = \"a\" }\naccess = \"family\"\n";
        let c = super::parse(&path, src).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            c.watched_files().contains(&dir.path().join("users")),
            "{:?}",
            c.watched_files()
        );
    }
}
