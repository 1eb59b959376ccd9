//! `[cluster]`: several instances sharing sessions and sign-ins through
//! Redis. Absent, nothing is shared (the embedded store).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use toml::Spanned;

use super::Secret;
use super::cx::Cx;
use super::validate::resolve_relative;

/// The prefix of every key when `key_prefix` is not set.
pub const DEFAULT_KEY_PREFIX: &str = "portcullis:";
/// How long an instance trusts a session it has cached without asking Redis.
pub const DEFAULT_CACHE_LIFETIME: Duration = Duration::from_secs(60);
/// How long an instance holds a host's order lock without renewing it.
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(60);

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    pub redis: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub user_file: Option<Spanned<String>>,
    pub key_prefix: Option<Spanned<String>>,
    pub encryption_key_file: Option<Spanned<String>>,
    pub instance_name: Option<Spanned<String>>,
    pub cache_lifetime: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub lock_lease: Option<Spanned<String>>,
}

/// The 32-byte key the instances share (never shown).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(pub [u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// `redis+sentinel://H1:P1,H2:P2/SERVICE/DB`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// The sentinels, as `(host, port)`; the port defaults to 26379.
    pub nodes: Vec<(String, u16)>,
    /// The master's name as the sentinels monitor it.
    pub service: String,
    /// The database on the data nodes.
    pub db: i64,
}

/// `[cluster]`, checked.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://`, `rediss://` or `redis+sentinel://` URL (a password
    /// belongs in `password_file`).
    pub redis: String,
    /// Set for a `redis+sentinel://` URL.
    pub sentinel: Option<SentinelUrl>,
    /// `ca_file`: trusted for `rediss://` besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// The PEM text of `ca_file` when it was checked (a reload with a
    /// fixed file reconnects).
    pub ca_pem: Option<Vec<u8>>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub key_prefix: String,
    pub encryption_key: ClusterKey,
    pub instance_name: String,
    pub cache_lifetime: Duration,
    /// The lease of a host's ACME order lock: another instance takes the
    /// order over this long after its holder stopped renewing it.
    pub lock_lease: Duration,
}

impl PartialEq for ClusterConfig {
    fn eq(&self, o: &Self) -> bool {
        self.redis == o.redis
            && self.ca_file == o.ca_file
            && self.ca_pem == o.ca_pem
            && self.user == o.user
            && self.password.as_ref().map(Secret::expose) == o.password.as_ref().map(Secret::expose)
            && self.key_prefix == o.key_prefix
            && self.encryption_key == o.encryption_key
            && self.instance_name == o.instance_name
            && self.cache_lifetime == o.cache_lifetime
            && self.lock_lease == o.lock_lease
    }
}

/// 32 bytes written as 64 hex digits or base64 (padded or not).
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect::<Vec<u8>>()
    } else {
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines
            .iter()
            .find_map(|e| e.decode(t).ok())
            .ok_or("is neither 64 hex digits nor base64")?
    };
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "holds {} bytes; it must hold 32 random bytes (e.g. `openssl rand -hex 32`)",
            bytes.len()
        )
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "portcullis".to_string())
}

impl Cx<'_> {
    pub(super) fn cluster(
        &mut self,
        span: std::ops::Range<usize>,
        raw: FileCluster,
    ) -> Option<ClusterConfig> {
        let before = self.errors.len();
        let mut sentinel = None;
        let redis = match raw.redis {
            None => {
                self.err(
                    Some(span.clone()),
                    "cluster.redis",
                    "`redis` is required in [cluster], e.g. redis = \"redis://10.0.0.5:6379/0\""
                        .into(),
                );
                None
            }
            Some(r) => {
                let url = r.get_ref().trim().to_string();
                if url.starts_with("rediss+sentinel://") {
                    self.err(
                        Some(r.span()),
                        "cluster.redis",
                        "TLS through Sentinel is not supported; use redis+sentinel:// on a trusted network, or rediss:// to the master".into(),
                    );
                    None
                } else if url.starts_with("redis+sentinel://") {
                    match parse_sentinel_url(&url) {
                        Ok(s) => {
                            sentinel = Some(s);
                            Some(url)
                        }
                        Err(m) => {
                            self.err(Some(r.span()), "cluster.redis", format!("`{url}`: {m}"));
                            None
                        }
                    }
                } else if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    self.err(
                        Some(r.span()),
                        "cluster.redis",
                        format!("`{url}` is not a redis://, rediss:// or redis+sentinel:// URL"),
                    );
                    None
                } else if redis_url_ok(&url).is_err() {
                    self.err(
                        Some(r.span()),
                        "cluster.redis",
                        format!("`{url}` is not a valid Redis URL (redis://HOST:PORT/DB)"),
                    );
                    None
                } else {
                    Some(url)
                }
            }
        };
        let secret = |cx: &mut Self, key: &str, v: Option<Spanned<String>>| {
            let v = v?;
            let path = resolve_relative(&cx.file, Path::new(v.get_ref()));
            cx.secret_files.push(path.clone());
            match cx.secret(&path) {
                Ok(s) => Some(s),
                Err(m) => {
                    cx.err(Some(v.span()), key, m);
                    None
                }
            }
        };
        let password = secret(self, "cluster.password_file", raw.password_file);
        let user = secret(self, "cluster.user_file", raw.user_file).map(|s| s.expose().to_string());
        let encryption_key = match raw.encryption_key_file {
            None => {
                self.err(
                    Some(span.clone()),
                    "cluster.encryption_key_file",
                    "`encryption_key_file` is required in [cluster]: a file with 32 random bytes (hex or base64) shared by the instances".into(),
                );
                None
            }
            Some(f) => {
                let path = resolve_relative(&self.file, Path::new(f.get_ref()));
                self.secret_files.push(path.clone());
                // Without the files (`check --no-files`) a stand-in key:
                // the section is checked, nothing is read.
                let key = if self.read_files {
                    Secret::read_file(&path).and_then(|s| {
                        parse_key(s.expose()).map_err(|m| format!("{}: {m}", path.display()))
                    })
                } else {
                    Ok([0; 32])
                };
                match key {
                    Ok(k) => Some(ClusterKey(k)),
                    Err(m) => {
                        self.err(Some(f.span()), "cluster.encryption_key_file", m);
                        None
                    }
                }
            }
        };
        let key_prefix = match raw.key_prefix {
            None => DEFAULT_KEY_PREFIX.to_string(),
            Some(p) if p.get_ref().is_empty() || p.get_ref().chars().any(char::is_whitespace) => {
                self.err(
                    Some(p.span()),
                    "cluster.key_prefix",
                    "must be non-empty, without spaces (e.g. \"portcullis:\")".into(),
                );
                String::new()
            }
            Some(p) => p.into_inner(),
        };
        let instance_name = match raw.instance_name {
            None => hostname(),
            Some(n)
                if n.get_ref().is_empty()
                    || !n
                        .get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                self.err(
                    Some(n.span()),
                    "cluster.instance_name",
                    "must be letters, digits, `-`, `_` or `.`".into(),
                );
                String::new()
            }
            Some(n) => n.into_inner(),
        };
        let mut ca_file = None;
        let mut ca_pem = None;
        if let Some(f) = raw.ca_file {
            let path = resolve_relative(&self.file, Path::new(f.get_ref()));
            if redis
                .as_deref()
                .is_some_and(|u| !u.starts_with("rediss://"))
            {
                self.err(
                    Some(f.span()),
                    "cluster.ca_file",
                    "applies to rediss:// (TLS) only; `redis` is not a rediss:// URL".into(),
                );
            } else if self.read_files {
                match std::fs::read(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))
                    .and_then(|pem| crate::pki::client_roots(Some(&path)).map(|_| pem))
                {
                    Ok(pem) => ca_pem = Some(pem),
                    Err(m) => self.err(Some(f.span()), "cluster.ca_file", m),
                }
            }
            ca_file = Some(path);
        }
        let cache_lifetime = self.duration(
            "cluster.cache_lifetime",
            raw.cache_lifetime,
            DEFAULT_CACHE_LIFETIME,
        );
        let lease_span = raw.lock_lease.as_ref().map(|l| l.span());
        let lock_lease = self.duration("cluster.lock_lease", raw.lock_lease, DEFAULT_LOCK_LEASE);
        if lock_lease < Duration::from_secs(1) {
            self.err(
                lease_span,
                "cluster.lock_lease",
                "must be at least 1s (the lock is renewed every third of it)".into(),
            );
        }
        if self.errors.len() > before {
            return None;
        }
        Some(ClusterConfig {
            redis: redis?,
            sentinel,
            ca_file,
            ca_pem,
            user,
            password,
            key_prefix,
            encryption_key: encryption_key?,
            instance_name,
            cache_lifetime,
            lock_lease,
        })
    }
}

/// `redis+sentinel://H1[:P1],H2[:P2]/SERVICE[/DB]` (ports default to
/// 26379; `[v6]:port` for IPv6).
pub fn parse_sentinel_url(url: &str) -> Result<SentinelUrl, String> {
    let rest = url
        .strip_prefix("redis+sentinel://")
        .ok_or("not a redis+sentinel:// URL")?;
    let mut parts = rest.splitn(3, '/');
    let hosts = parts.next().unwrap_or("");
    let service = parts.next().unwrap_or("").trim();
    let db = parts.next().unwrap_or("").trim_end_matches('/');
    if hosts.contains('@') {
        return Err("credentials do not go in the URL (sentinels are reached without a password; `password_file` and `user_file` apply to the data nodes)".into());
    }
    let mut nodes = Vec::new();
    for h in hosts.split(',') {
        let h = h.trim();
        let (host, port) = if let Some(v6) = h.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(format!("`{h}`: missing `]`"))?;
            (host, after.strip_prefix(':'))
        } else {
            match h.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (h, None),
            }
        };
        if host.is_empty() {
            return Err("a sentinel's host is empty (write h1:26379,h2:26379)".into());
        }
        let port = match port {
            None => 26379,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(format!("`{h}`: the port is not a number"))?,
        };
        nodes.push((host.to_string(), port));
    }
    if service.is_empty() {
        return Err(
            "the master's name is missing (redis+sentinel://h1:26379,h2:26379/mymaster/0)".into(),
        );
    }
    let db = if db.is_empty() {
        0
    } else {
        db.parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or(format!("`{db}` is not a database number"))?
    };
    Ok(SentinelUrl {
        nodes,
        service: service.to_string(),
        db,
    })
}

fn redis_url_ok(url: &str) -> Result<(), ()> {
    let rest = url
        .strip_prefix("rediss://")
        .or_else(|| url.strip_prefix("redis://"))
        .ok_or(())?;
    let hostport = rest.split('/').next().unwrap_or("");
    let hostport = hostport.rsplit('@').next().unwrap_or("");
    if hostport.is_empty() {
        return Err(());
    }
    if let Some(db) = rest.split_once('/').map(|(_, d)| d)
        && !db.is_empty()
        && db.parse::<u32>().is_err()
    {
        return Err(());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_hex_or_base64() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(parse_key(&hex).unwrap()[31], 0xff);
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(parse_key(&b64).unwrap(), [7u8; 32]);
        assert!(parse_key("abcd").unwrap_err().contains("32 random bytes"));
        assert!(parse_key("not a key!").is_err());
    }

    #[test]
    fn redis_urls() {
        assert!(redis_url_ok("redis://10.0.0.5:6379/0").is_ok());
        assert!(redis_url_ok("rediss://h:6380").is_ok());
        assert!(redis_url_ok("redis://").is_err());
        assert!(redis_url_ok("redis://h/x").is_err());
    }

    #[test]
    fn sentinel_urls() {
        let s = parse_sentinel_url("redis+sentinel://h1:26379,h2/mymaster/3").unwrap();
        assert_eq!(
            s.nodes,
            vec![("h1".to_string(), 26379), ("h2".to_string(), 26379)]
        );
        assert_eq!((s.service.as_str(), s.db), ("mymaster", 3));
        let s = parse_sentinel_url("redis+sentinel://[::1]:5000/m").unwrap();
        assert_eq!(s.nodes, vec![("::1".to_string(), 5000)]);
        assert_eq!(s.db, 0);
        assert!(
            parse_sentinel_url("redis+sentinel://h1:26379")
                .unwrap_err()
                .contains("master's name")
        );
        assert!(parse_sentinel_url("redis+sentinel://h1:x/m").is_err());
        assert!(parse_sentinel_url("redis+sentinel://,h/m").is_err());
        assert!(parse_sentinel_url("redis+sentinel://h/m/x").is_err());
        assert!(
            parse_sentinel_url("redis+sentinel://u:p@h/m")
                .unwrap_err()
                .contains("password_file")
        );
    }
}
