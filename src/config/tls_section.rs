//! Validation of the TLS parts of the config: `[acme]`, `[[certificate]]`,
//! `hsts`, and whether every routed host can get a certificate.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::file::{FileAcme, FileCertificate, FileHsts};
use super::route_section::parse_host_pattern;
use super::validate::{Cx, resolve_relative};
use super::{
    AcmeConfig, CertSource, CertificateConfig, ChallengeKind, HostPattern, RouteConfig,
    parse_duration,
};

pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// One year, no subdomains, no preload: safe for any single host.
pub fn default_hsts() -> http::HeaderValue {
    http::HeaderValue::from_static("max-age=31536000")
}

impl Cx<'_> {
    pub(super) fn hsts(&mut self, key: &str, raw: Spanned<FileHsts>) -> Option<http::HeaderValue> {
        let span = raw.span();
        match raw.into_inner() {
            FileHsts::Enabled(false) => None,
            FileHsts::Enabled(true) => Some(default_hsts()),
            FileHsts::Table(t) => {
                let max_age = match t.max_age.as_deref().map(parse_duration) {
                    None => Duration::from_secs(31_536_000),
                    Some(Ok(d)) => d,
                    Some(Err(msg)) => {
                        self.err(Some(span), key, format!("max_age: {msg}"));
                        return None;
                    }
                };
                let sub = t.include_subdomains.unwrap_or(false);
                let preload = t.preload.unwrap_or(false);
                if preload && (!sub || max_age < Duration::from_secs(31_536_000)) {
                    self.err(
                        Some(span),
                        key,
                        "preload needs include_subdomains = true and max_age of at least 365d"
                            .into(),
                    );
                    return None;
                }
                let mut v = format!("max-age={}", max_age.as_secs());
                if sub {
                    v.push_str("; includeSubDomains");
                }
                if preload {
                    v.push_str("; preload");
                }
                http::HeaderValue::from_str(&v).ok()
            }
        }
    }

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
            Some(c) => match c.get_ref().as_str() {
                "http-01" => ChallengeKind::Http01,
                "tls-alpn-01" => ChallengeKind::TlsAlpn01,
                "dns-01" => {
                    self.err(
                        Some(c.span()),
                        "acme.challenge",
                        "dns-01 is not supported yet; use http-01 or tls-alpn-01".into(),
                    );
                    ChallengeKind::Http01
                }
                other => {
                    self.err(
                        Some(c.span()),
                        "acme.challenge",
                        format!("`{other}`: use \"http-01\" or \"tls-alpn-01\""),
                    );
                    ChallengeKind::Http01
                }
            },
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
                Some(span),
                "acme",
                "retry_min must be above zero and at most retry_max".into(),
            );
        }
        (self.errors.len() == before).then(|| AcmeConfig {
            email: raw.email.map(|e| e.into_inner()),
            directory,
            challenge,
            ca_file,
            max_concurrent_orders,
            retry_min,
            retry_max,
        })
    }

    pub(super) fn certificate(
        &mut self,
        index: usize,
        span: Range<usize>,
        raw: FileCertificate,
    ) -> Option<CertificateConfig> {
        let key = format!("certificate[{index}]");
        let hosts_span = raw.hosts.span();
        let mut hosts = Vec::new();
        let mut names = Vec::new();
        for h in raw.hosts.into_inner() {
            match parse_host_pattern(&h) {
                Ok(HostPattern::Any) | Err(_) => self.err(
                    Some(hosts_span.clone()),
                    &format!("{key}.hosts"),
                    format!("`{h}` is not a host name or `*.domain` wildcard"),
                ),
                Ok(p) => {
                    names.push(p.to_string());
                    hosts.push(p);
                }
            }
        }
        if hosts.is_empty() {
            self.err(
                Some(hosts_span),
                &format!("{key}.hosts"),
                "list at least one host".into(),
            );
            return None;
        }
        let self_signed = raw.self_signed.unwrap_or(false);
        let (source, loaded) = match (raw.cert_file, raw.key_file, self_signed) {
            (None, None, true) => (CertSource::SelfSigned, crate::pki::self_signed(&names)),
            (Some(c), Some(k), false) => {
                let cert = resolve_relative(&self.file, Path::new(c.get_ref()));
                let keyf = resolve_relative(&self.file, Path::new(k.get_ref()));
                let loaded = crate::pki::load_pair(&cert, &keyf);
                (CertSource::Files { cert, key: keyf }, loaded)
            }
            _ => {
                self.err(
                    Some(span),
                    &key,
                    "give either cert_file and key_file, or self_signed = true".into(),
                );
                return None;
            }
        };
        match loaded {
            Ok(ck) => Some(CertificateConfig {
                hosts,
                source,
                key: ck,
                line: self.line_of(span.start),
            }),
            Err(msg) => {
                self.err(Some(span), &key, msg);
                None
            }
        }
    }

    /// With an https listener, every routed host needs a certificate source
    /// (routes with `https_redirect = false` may be served over HTTP only).
    pub(super) fn check_tls_coverage(
        &mut self,
        routes: &[RouteConfig],
        certs: &[CertificateConfig],
        acme: bool,
    ) {
        let covered = |name: &str| {
            certs
                .iter()
                .any(|c| c.hosts.iter().any(|h| pattern_covers(h, name)))
        };
        let mut reported = std::collections::HashSet::new();
        // A route that opts out of the https redirect may be plain-HTTP only.
        for r in routes.iter().filter(|r| r.https_redirect) {
            match &r.host {
                HostPattern::Any => {}
                HostPattern::Exact(h) => {
                    if !acme && !covered(h) && reported.insert(h.clone()) {
                        self.err_route(
                            r,
                            "route.host",
                            format!(
                                "`{h}` has no certificate for the https listener: add an [acme] section or a [[certificate]] for it"
                            ),
                        );
                    }
                }
                HostPattern::Wildcard(s) => {
                    let name = format!("*.{s}");
                    let has = certs.iter().any(|c| c.hosts.contains(&r.host));
                    if !has && reported.insert(name.clone()) {
                        self.err_route(
                            r,
                            "route.host",
                            format!(
                                "`{name}` needs a wildcard certificate: ACME wildcard orders need DNS-01, which is not supported yet; add a [[certificate]] with hosts = [\"{name}\"]"
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Does a certificate name pattern cover a host? `*.example.com` covers
/// exactly one extra label, as TLS clients check it.
pub fn pattern_covers(pattern: &HostPattern, host: &str) -> bool {
    match pattern {
        HostPattern::Exact(h) => h == host,
        HostPattern::Wildcard(s) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == s),
        HostPattern::Any => false,
    }
}
