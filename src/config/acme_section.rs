//! `[acme]` (the CA, contact, challenge, renewal retries), its DNS-01
//! provider (`[acme.dns]`: RFC 2136 with TSIG, Cloudflare, a hook
//! program) and `[[acme_certificate]]` (certificates ordered by name, such
//! as wildcards).

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::cx::Cx;
use super::file::{FileAcme, FileAcmeCertificate, FileDns};
use super::route_section::parse_host_pattern;
use super::validate::resolve_relative;
use super::{HostPattern, Secret, SecretBytes};

pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

// --- checked ------------------------------------------------------------------

/// `[acme]`, checked.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub email: Option<String>,
    /// Directory URL.
    pub directory: String,
    pub challenge: ChallengeKind,
    pub ca_file: Option<PathBuf>,
    pub max_concurrent_orders: usize,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Where dns-01 records are written; None = dns-01 not configured.
    pub dns: Option<DnsConfig>,
    /// Longest wait for a dns-01 record to be visible.
    pub propagation_timeout: Duration,
    /// Where to check propagation; empty = the zone's authoritative servers.
    pub resolvers: Vec<SocketAddr>,
    /// Exact hosts covered by an ACME wildcard use it (no order of their own).
    pub reuse_wildcard: bool,
}

/// `[acme] dns`, checked, with its secret read.
#[derive(Debug, Clone)]
pub enum DnsConfig {
    /// RFC 2136 dynamic update signed with TSIG (BIND, Knot, PowerDNS...).
    Rfc2136 {
        server: SocketAddr,
        /// Fully qualified, lowercase, with the trailing dot.
        zone: String,
        tsig_key_name: String,
        tsig_algorithm: TsigAlgorithm,
        /// The decoded TSIG secret.
        tsig_secret: SecretBytes,
    },
    /// Cloudflare's API v4.
    Cloudflare {
        api_token: Secret,
        /// Only set by tests (a local stand-in); None = the real API.
        api_url: Option<String>,
    },
    /// A program called as `COMMAND... present|cleanup FQDN VALUE`.
    Exec { command: Vec<String> },
}

impl DnsConfig {
    pub fn provider(&self) -> &'static str {
        match self {
            DnsConfig::Rfc2136 { .. } => "rfc2136",
            DnsConfig::Cloudflare { .. } => "cloudflare",
            DnsConfig::Exec { .. } => "exec",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl TsigAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }
}

/// `[[acme_certificate]]`, checked.
#[derive(Debug, Clone)]
pub struct AcmeCertificateConfig {
    /// Lowercase names, the first one names the certificate.
    pub names: Vec<HostPattern>,
    pub challenge: ChallengeKind,
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    Http01,
    TlsAlpn01,
    Dns01,
}

impl ChallengeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        }
    }
}

// --- checks -------------------------------------------------------------------

impl Cx<'_> {
    pub(super) fn acme(&mut self, span: Range<usize>, raw: FileAcme) -> Option<AcmeConfig> {
        let before = self.errors.len();
        let directory = match raw.directory {
            None => LETSENCRYPT.to_string(),
            Some(d) => match d.get_ref().as_str() {
                "letsencrypt" => LETSENCRYPT.to_string(),
                "letsencrypt-staging" => LETSENCRYPT_STAGING.to_string(),
                url if url.starts_with("https://") && url.parse::<http::Uri>().is_ok() => {
                    url.to_string()
                }
                other => {
                    self.err(
                        Some(d.span()),
                        "acme.directory",
                        format!(
                            "`{other}`: use \"letsencrypt\", \"letsencrypt-staging\" or an https:// directory URL"
                        ),
                    );
                    String::new()
                }
            },
        };
        let challenge = match raw.challenge {
            None => ChallengeKind::Http01,
            Some(c) => self.challenge_kind("acme.challenge", &c),
        };
        if let Some(e) = &raw.email
            && !e.get_ref().contains('@')
        {
            self.err(
                Some(e.span()),
                "acme.email",
                format!("`{}` is not an email address", e.get_ref()),
            );
        }
        let ca_file = raw.ca_file.and_then(|f| {
            let p = resolve_relative(&self.file, Path::new(f.get_ref()));
            if p.is_file() {
                Some(p)
            } else {
                self.err(
                    Some(f.span()),
                    "acme.ca_file",
                    format!("{} does not exist", p.display()),
                );
                None
            }
        });
        let max_concurrent_orders = match raw.max_concurrent_orders {
            None => 2,
            Some(n) if (1..=64).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.err(
                    Some(n.span()),
                    "acme.max_concurrent_orders",
                    "must be 1-64".into(),
                );
                2
            }
        };
        let retry_min = self.duration("acme.retry_min", raw.retry_min, Duration::from_secs(60));
        let retry_max = self.duration("acme.retry_max", raw.retry_max, Duration::from_secs(86_400));
        if retry_min.is_zero() || retry_max < retry_min {
            self.err(
                Some(span.clone()),
                "acme",
                "retry_min must be above zero and at most retry_max".into(),
            );
        }
        let dns = raw.dns.and_then(|d| self.dns(d));
        if challenge == ChallengeKind::Dns01 && dns.is_none() && self.errors.len() == before {
            self.err(
                Some(span.clone()),
                "acme.dns",
                "challenge = \"dns-01\" needs a DNS provider: dns = { provider = \"rfc2136\" | \"cloudflare\" | \"exec\", ... }".into(),
            );
        }
        let propagation_timeout = self.duration(
            "acme.propagation_timeout",
            raw.propagation_timeout,
            Duration::from_secs(120),
        );
        if propagation_timeout.is_zero() {
            self.err(
                Some(span.clone()),
                "acme.propagation_timeout",
                "must be above zero".into(),
            );
        }
        let mut resolvers = Vec::new();
        if let Some(list) = raw.resolvers {
            let list_span = list.span();
            for r in list.into_inner() {
                match r.parse::<std::net::SocketAddr>() {
                    Ok(a) => resolvers.push(a),
                    Err(_) => self.err(
                        Some(list_span.clone()),
                        "acme.resolvers",
                        format!("`{r}` is not an address; write IP:PORT, e.g. \"1.1.1.1:53\""),
                    ),
                }
            }
        }
        (self.errors.len() == before).then(|| AcmeConfig {
            email: raw.email.map(|e| e.into_inner()),
            directory,
            challenge,
            ca_file,
            max_concurrent_orders,
            retry_min,
            retry_max,
            dns,
            propagation_timeout,
            resolvers,
            reuse_wildcard: raw.reuse_wildcard.unwrap_or(true),
        })
    }

    fn challenge_kind(&mut self, key: &str, c: &Spanned<String>) -> ChallengeKind {
        match c.get_ref().as_str() {
            "http-01" => ChallengeKind::Http01,
            "tls-alpn-01" => ChallengeKind::TlsAlpn01,
            "dns-01" => ChallengeKind::Dns01,
            other => {
                self.err(
                    Some(c.span()),
                    key,
                    format!("`{other}`: use \"http-01\", \"tls-alpn-01\" or \"dns-01\""),
                );
                ChallengeKind::Http01
            }
        }
    }

    /// `[acme] dns`: the provider's keys, its secret read from its file.
    fn dns(&mut self, raw: Spanned<FileDns>) -> Option<DnsConfig> {
        let span = raw.span();
        let raw = raw.into_inner();
        let before = self.errors.len();
        let provider = raw.provider.get_ref().clone();
        // Keys that belong to another provider are refused, so a typo in
        // the provider name does not silently drop the settings.
        let given: Vec<(&str, bool)> = vec![
            ("server", raw.server.is_some()),
            ("zone", raw.zone.is_some()),
            ("tsig_key_name", raw.tsig_key_name.is_some()),
            ("tsig_algorithm", raw.tsig_algorithm.is_some()),
            ("tsig_secret_file", raw.tsig_secret_file.is_some()),
            ("api_token_file", raw.api_token_file.is_some()),
            ("api_url", raw.api_url.is_some()),
            ("command", raw.command.is_some()),
        ];
        let allowed: &[&str] = match provider.as_str() {
            "rfc2136" => &[
                "server",
                "zone",
                "tsig_key_name",
                "tsig_algorithm",
                "tsig_secret_file",
            ],
            "cloudflare" => &["api_token_file", "api_url"],
            "exec" => &["command"],
            other => {
                self.err(
                    Some(raw.provider.span()),
                    "acme.dns.provider",
                    format!("`{other}`: use \"rfc2136\", \"cloudflare\" or \"exec\""),
                );
                return None;
            }
        };
        for (k, set) in &given {
            if *set && !allowed.contains(k) {
                self.err(
                    Some(span.clone()),
                    &format!("acme.dns.{k}"),
                    format!(
                        "`{k}` is not a setting of the {provider} provider; it takes {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
        let need = |cx: &mut Self, key: &str, v: Option<Spanned<String>>| {
            if v.is_none() {
                cx.err(
                    Some(span.clone()),
                    &format!("acme.dns.{key}"),
                    format!("the {provider} provider needs `{key}`"),
                );
            }
            v
        };
        let cfg = match provider.as_str() {
            "rfc2136" => {
                let server = need(self, "server", raw.server);
                let server = self.addr("acme.dns.server", server);
                let zone = need(self, "zone", raw.zone).and_then(|z| {
                    let name = z.get_ref().trim_end_matches('.').to_ascii_lowercase();
                    if name.is_empty() || parse_host_pattern(&name).is_err() {
                        self.err(
                            Some(z.span()),
                            "acme.dns.zone",
                            format!("`{}` is not a zone name", z.get_ref()),
                        );
                        None
                    } else {
                        Some(format!("{name}."))
                    }
                });
                let key_name = need(self, "tsig_key_name", raw.tsig_key_name).map(|k| {
                    let k = k.into_inner().to_ascii_lowercase();
                    if k.ends_with('.') { k } else { format!("{k}.") }
                });
                let algorithm = match raw.tsig_algorithm {
                    None => TsigAlgorithm::HmacSha256,
                    Some(a) => match a.get_ref().to_ascii_lowercase().trim_end_matches('.') {
                        "hmac-sha256" => TsigAlgorithm::HmacSha256,
                        "hmac-sha384" => TsigAlgorithm::HmacSha384,
                        "hmac-sha512" => TsigAlgorithm::HmacSha512,
                        other => {
                            self.err(
                                Some(a.span()),
                                "acme.dns.tsig_algorithm",
                                format!("`{other}`: use \"hmac-sha256\", \"hmac-sha384\" or \"hmac-sha512\""),
                            );
                            TsigAlgorithm::HmacSha256
                        }
                    },
                };
                let secret = need(self, "tsig_secret_file", raw.tsig_secret_file).and_then(|f| {
                    let p = resolve_relative(&self.file, Path::new(f.get_ref()));
                    self.secret_files.push(p.clone());
                    let read = if self.read_files {
                        read_tsig_secret(&p)
                    } else {
                        Ok(SecretBytes::new(vec![0; 32]))
                    };
                    match read {
                        Ok(s) => Some(s),
                        Err(msg) => {
                            self.err(Some(f.span()), "acme.dns.tsig_secret_file", msg);
                            None
                        }
                    }
                });
                match (server, zone, key_name, secret) {
                    (Some(server), Some(zone), Some(tsig_key_name), Some(tsig_secret)) => {
                        Some(DnsConfig::Rfc2136 {
                            server,
                            zone,
                            tsig_key_name,
                            tsig_algorithm: algorithm,
                            tsig_secret,
                        })
                    }
                    _ => None,
                }
            }
            "cloudflare" => {
                let token = need(self, "api_token_file", raw.api_token_file).and_then(|f| {
                    let p = resolve_relative(&self.file, Path::new(f.get_ref()));
                    self.secret_files.push(p.clone());
                    match self.secret(&p) {
                        Ok(s) => Some(s),
                        Err(msg) => {
                            self.err(Some(f.span()), "acme.dns.api_token_file", msg);
                            None
                        }
                    }
                });
                let api_url = raw.api_url.and_then(|u| {
                    let url = u.get_ref().trim_end_matches('/').to_string();
                    let ok = url.parse::<http::Uri>().is_ok()
                        && (url.starts_with("https://")
                            || url.starts_with("http://127.0.0.1:")
                            || url.starts_with("http://[::1]:"));
                    if ok {
                        Some(url)
                    } else {
                        self.err(
                            Some(u.span()),
                            "acme.dns.api_url",
                            "only for tests: an https:// URL or http://127.0.0.1:PORT".into(),
                        );
                        None
                    }
                });
                token.map(|api_token| DnsConfig::Cloudflare { api_token, api_url })
            }
            _ => match raw.command {
                Some(c) if !c.get_ref().is_empty() && !c.get_ref()[0].is_empty() => {
                    let command = c.get_ref().clone();
                    let prog = resolve_relative(&self.file, Path::new(&command[0]));
                    if command[0].contains('/') && !prog.is_file() {
                        self.err(
                            Some(c.span()),
                            "acme.dns.command",
                            format!("{} does not exist", prog.display()),
                        );
                        None
                    } else {
                        let mut command = command;
                        if command[0].contains('/') {
                            command[0] = prog.display().to_string();
                        }
                        Some(DnsConfig::Exec { command })
                    }
                }
                other => {
                    self.err(
                        other.map(|c| c.span()).or(Some(span.clone())),
                        "acme.dns.command",
                        "the exec provider needs `command`: [\"/path/to/hook\", \"args\"...]"
                            .into(),
                    );
                    None
                }
            },
        };
        if self.errors.len() == before {
            cfg
        } else {
            None
        }
    }

    pub(super) fn acme_certificate(
        &mut self,
        index: usize,
        span: Range<usize>,
        raw: FileAcmeCertificate,
        acme: Option<&AcmeConfig>,
    ) -> Option<AcmeCertificateConfig> {
        let key = format!("acme_certificate[{index}]");
        let before = self.errors.len();
        let Some(acme) = acme else {
            self.err(
                Some(span),
                &key,
                "[[acme_certificate]] needs an [acme] section".into(),
            );
            return None;
        };
        let challenge = match &raw.challenge {
            None => acme.challenge,
            Some(c) => self.challenge_kind(&format!("{key}.challenge"), c),
        };
        let names_span = raw.names.span();
        let mut names: Vec<HostPattern> = Vec::new();
        for n in raw.names.into_inner() {
            match parse_host_pattern(&n) {
                Ok(HostPattern::Any) | Err(_) => self.err(
                    Some(names_span.clone()),
                    &format!("{key}.names"),
                    format!("`{n}` is not a host name or `*.domain` wildcard"),
                ),
                Ok(p) => {
                    if !names.contains(&p) {
                        names.push(p)
                    }
                }
            }
        }
        if names.is_empty() && self.errors.len() == before {
            self.err(
                Some(names_span.clone()),
                &format!("{key}.names"),
                "list at least one name".into(),
            );
        }
        if challenge != ChallengeKind::Dns01
            && let Some(w) = names.iter().find(|n| matches!(n, HostPattern::Wildcard(_)))
        {
            self.err(
                Some(names_span.clone()),
                &format!("{key}.names"),
                format!(
                    "`{w}` is a wildcard: ACME CAs issue wildcards only with challenge = \"dns-01\""
                ),
            );
        }
        if challenge == ChallengeKind::Dns01 && acme.dns.is_none() {
            self.err(
                Some(span.clone()),
                &format!("{key}.challenge"),
                "dns-01 needs a DNS provider in [acme]: dns = { provider = ... }".into(),
            );
        }
        (self.errors.len() == before).then(|| AcmeCertificateConfig {
            names,
            challenge,
            line: self.line_of(span.start),
        })
    }
}

/// The TSIG secret: the base64 text of the file, or the `secret "..."` of
/// a BIND key file (as `tsig-keygen` writes it). The message names the
/// file, never the content.
fn read_tsig_secret(path: &Path) -> Result<SecretBytes, String> {
    use base64::Engine as _;
    let text = Secret::read_file(path)?;
    let text = text.expose();
    let b64 = match text.find("secret") {
        Some(i) => text[i + 6..]
            .split('"')
            .nth(1)
            .ok_or_else(|| format!("{}: a key file without a quoted secret", path.display()))?,
        None => text,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| {
            format!(
                "{} does not hold a base64 TSIG secret (or a BIND key file)",
                path.display()
            )
        })?;
    if bytes.len() < 16 {
        return Err(format!(
            "{}: the TSIG secret is shorter than 16 bytes",
            path.display()
        ));
    }
    Ok(SecretBytes::new(bytes))
}
