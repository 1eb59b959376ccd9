//! Validation of the TLS parts of the config other than `[acme]`
//! (`acme_section`): `[[certificate]]`, `hsts`, and whether every routed
//! host can get a certificate.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::cx::Cx;
use super::file::{FileCertificate, FileHsts};
use super::route_section::parse_host_pattern;
use super::validate::resolve_relative;
use super::{
    AcmeCertificateConfig, AcmeConfig, CertSource, CertificateConfig, HostPattern, RouteConfig,
    parse_duration,
};

/// One year, no subdomains, no preload: safe for any single host.
pub fn default_hsts() -> http::HeaderValue {
    http::HeaderValue::from_static("max-age=31536000")
}

impl Cx<'_> {
    pub(super) fn hsts(&mut self, key: &str, raw: Spanned<FileHsts>) -> Option<http::HeaderValue> {
        let span = raw.span();
        match raw.into_inner() {
            FileHsts::Scalar(false) => None,
            FileHsts::Scalar(true) => Some(default_hsts()),
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
                // Not reading files: a self-signed stand-in for its hosts.
                let loaded = if self.read_files {
                    crate::pki::load_pair(&cert, &keyf)
                } else {
                    crate::pki::self_signed(&names)
                };
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
        acme: Option<&AcmeConfig>,
        acme_certs: &[AcmeCertificateConfig],
    ) {
        let dns = acme.is_some_and(|a| a.dns.is_some());
        let acme = acme.is_some();
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
                    let has = certs.iter().any(|c| c.hosts.contains(&r.host))
                        || acme_certs.iter().any(|c| c.names.contains(&r.host))
                        || dns;
                    if !has && reported.insert(name.clone()) {
                        self.err_route(
                            r,
                            "route.host",
                            format!(
                                "`{name}` needs a wildcard certificate: ACME issues wildcards only by DNS-01; add dns = {{ provider = ... }} to [acme], or a [[certificate]] with hosts = [\"{name}\"]"
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
