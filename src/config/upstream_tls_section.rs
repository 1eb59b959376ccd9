//! `upstream_tls` (route and `[server]`) and `upstream_protocol`: the
//! files are loaded and the pins decoded here, so `portcullis check`
//! reports a missing CA file, a key that does not match its certificate
//! or a malformed pin at its line.

use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use super::file::FileUpstreamTls;
use super::validate::{Cx, resolve_relative};
use super::{PoolKey, UpstreamProtocol, UpstreamTarget, UpstreamTls};
use crate::trust::Settings;

impl Cx<'_> {
    /// One `upstream_tls` table over `base` (the server's, for a route):
    /// each key given replaces the base's.
    pub(super) fn upstream_tls(
        &mut self,
        key: &str,
        raw: Spanned<FileUpstreamTls>,
        base: &Settings,
        in_route: bool,
    ) -> Settings {
        let span = raw.span();
        let raw = raw.into_inner();
        let mut s = base.clone();
        let file = |cx: &mut Self, name: &str, v: Option<Spanned<String>>| {
            let v = v?;
            let path = resolve_relative(cx.file, Path::new(v.get_ref()));
            if let Err(e) = crate::trust::readable(&path) {
                cx.err(Some(v.span()), &format!("{key}.{name}"), e);
            }
            Some(path)
        };
        if let Some(p) = file(self, "ca_file", raw.ca_file) {
            if let Err(e) = crate::pki::client_roots(Some(&p)) {
                self.err(Some(span.clone()), &format!("{key}.ca_file"), e);
            }
            s.ca_file = Some(p);
        }
        let cert = file(self, "client_cert_file", raw.client_cert_file);
        let keyf = file(self, "client_key_file", raw.client_key_file);
        if cert.is_some() || keyf.is_some() {
            s.client_cert_file = cert.or(s.client_cert_file);
            s.client_key_file = keyf.or(s.client_key_file);
        }
        if let Some(n) = raw.server_name {
            if rustls_pki_types::ServerName::try_from(n.get_ref().as_str()).is_err() {
                self.err(
                    Some(n.span()),
                    &format!("{key}.server_name"),
                    format!("`{}` is not a DNS name or IP address", n.get_ref()),
                );
            }
            s.server_name = Some(n.into_inner());
        }
        if let Some(pins) = raw.pin_sha256 {
            s.pin_sha256.clear();
            for p in pins {
                if let Err(e) = crate::trust::parse_pin(p.get_ref()) {
                    self.err(Some(p.span()), &format!("{key}.pin_sha256"), e);
                }
                s.pin_sha256.push(p.into_inner());
            }
        }
        if let Some(v) = raw.insecure_skip_verify {
            if !in_route && *v.get_ref() {
                self.err(
                    Some(v.span()),
                    &format!("{key}.insecure_skip_verify"),
                    "allowed per route only (set it on the route that needs it)".into(),
                );
            }
            s.insecure_skip_verify = *v.get_ref();
        }
        match (&s.client_cert_file, &s.client_key_file) {
            (Some(c), Some(k)) => {
                if let Err(e) = crate::pki::load_pair(c, k) {
                    self.err(Some(span), &format!("{key}.client_cert_file"), e);
                }
            }
            (None, None) => {}
            _ => self.err(
                Some(span),
                key,
                "client_cert_file and client_key_file go together".into(),
            ),
        }
        s
    }

    pub(super) fn upstream_protocol(
        &mut self,
        key: &str,
        raw: Option<Spanned<String>>,
    ) -> UpstreamProtocol {
        let Some(v) = raw else {
            return UpstreamProtocol::Auto;
        };
        match v.get_ref().as_str() {
            "auto" => UpstreamProtocol::Auto,
            "http1" => UpstreamProtocol::Http1,
            "h2" => UpstreamProtocol::H2,
            other => {
                self.err(
                    Some(v.span()),
                    key,
                    format!("`{other}`: use \"auto\", \"http1\" or \"h2\""),
                );
                UpstreamProtocol::Auto
            }
        }
    }

    /// Gives each target its protocol and, for `https://`, its TLS client
    /// (one set of client configs per route, so one session cache).
    pub(super) fn finish_targets(
        &mut self,
        key: &str,
        span: std::ops::Range<usize>,
        targets: &mut [UpstreamTarget],
        tls: &Settings,
        protocol: UpstreamProtocol,
    ) {
        let mut clients: Option<Arc<crate::trust::Clients>> = None;
        for t in targets {
            match t.scheme.as_str() {
                "http" if protocol == UpstreamProtocol::H2 => {
                    self.err(
                        Some(span.clone()),
                        &format!("{key}.upstream_protocol"),
                        format!("`{}`: cleartext HTTP/2 is written h2c://", t.url),
                    );
                }
                "http" => t.protocol = UpstreamProtocol::Http1,
                "h2c" if protocol == UpstreamProtocol::Http1 => {
                    self.err(
                        Some(span.clone()),
                        &format!("{key}.upstream_protocol"),
                        format!("`{}` is HTTP/2 (h2c://); \"http1\" contradicts it", t.url),
                    );
                }
                "h2c" => t.protocol = UpstreamProtocol::H2,
                _ => {
                    t.protocol = protocol;
                    let built = match &clients {
                        Some(c) => c.clone(),
                        None => match crate::trust::clients(tls) {
                            Ok(c) => clients.insert(Arc::new(c)).clone(),
                            Err(e) => {
                                self.err(Some(span.clone()), &format!("{key}.upstream_tls"), e);
                                return;
                            }
                        },
                    };
                    let host = t
                        .authority
                        .host()
                        .trim_start_matches('[')
                        .trim_end_matches(']');
                    let name = tls.server_name.as_deref().unwrap_or(host);
                    let Ok(server_name) = rustls_pki_types::ServerName::try_from(name.to_string())
                    else {
                        self.err(
                            Some(span.clone()),
                            &format!("{key}.upstream"),
                            format!("`{name}` cannot be verified: set upstream_tls.server_name"),
                        );
                        continue;
                    };
                    // Connections made under other TLS settings are not
                    // reused for this target.
                    let prefix = format!("https|{protocol:?}|{:x}|", settings_hash(tls));
                    t.pool_key = PoolKey::with_prefix(&prefix, &t.authority);
                    t.tls = Some(Arc::new(UpstreamTls {
                        settings: tls.clone(),
                        server_name,
                        clients: built,
                    }));
                }
            }
            if t.scheme.as_str() == "h2c" {
                t.pool_key = PoolKey::with_prefix("h2c|", &t.authority);
            }
        }
    }
}

fn settings_hash(s: &Settings) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}
