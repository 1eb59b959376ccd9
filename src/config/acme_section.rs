//! `[acme]` (the CA, contact, challenge, renewal retries) and
//! `[[acme_certificate]]` (certificates ordered by name, such as
//! wildcards); its DNS-01 provider is `dns_section`'s.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::HostPattern;
use super::cx::Cx;
use super::dns_section::DnsConfig;
use super::file::{FileAcme, FileAcmeCertificate};
use super::route_section::parse_host_pattern;
use super::validate::resolve_relative;

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
