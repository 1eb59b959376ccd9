//! `upstream_tls` (route and `[server]`) and `upstream_protocol`: the
//! files are loaded and the pins decoded here, so `portcullis check`
//! reports a missing CA file, a key that does not match its certificate
//! or a malformed pin at its line.

use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use super::cx::Cx;
use super::file::FileUpstreamTls;
use super::validate::resolve_relative;
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
        // (path, readable)
        let file = |cx: &mut Self, name: &str, v: Option<Spanned<String>>| {
            let v = v?;
            let path = resolve_relative(&cx.file, Path::new(v.get_ref()));
            if !cx.read_files {
                return Some((path, true));
            }
            let ok = match crate::trust::readable(&path) {
                Ok(()) => true,
                Err(e) => {
                    cx.err(Some(v.span()), &format!("{key}.{name}"), e);
                    false
                }
            };
            Some((path, ok))
        };
        if let Some((p, ok)) = file(self, "ca_file", raw.ca_file) {
            if ok && let Err(e) = crate::pki::client_roots(Some(&p)) {
                self.err(Some(span.clone()), &format!("{key}.ca_file"), e);
            }
            s.ca_file = Some(p);
        }
        let cert = file(self, "client_cert_file", raw.client_cert_file);
        let keyf = file(self, "client_key_file", raw.client_key_file);
        let files_ok = cert.as_ref().is_none_or(|c| c.1) && keyf.as_ref().is_none_or(|k| k.1);
        if cert.is_some() || keyf.is_some() {
            s.client_cert_file = cert.map(|c| c.0).or(s.client_cert_file);
            s.client_key_file = keyf.map(|k| k.0).or(s.client_key_file);
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
            (Some(c), Some(k)) if files_ok && self.read_files => {
                if let Err(e) = crate::pki::load_pair(c, k) {
                    self.err(Some(span), &format!("{key}.client_cert_file"), e);
                }
            }
            (None, None) => {}
            (Some(_), Some(_)) => {}
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
        tls_ok: bool,
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
                _ if !tls_ok => {}
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

#[cfg(test)]
mod tests {
    /// (line, key, message) of each error.
    fn errors(text: &str, dir: &std::path::Path) -> Vec<(usize, String, String)> {
        let src = format!("[server]\nhttp = \"127.0.0.1:0\"\n{text}");
        match super::super::parse(&dir.join("t.toml"), &src) {
            Ok(_) => vec![],
            Err(e) => {
                e.0.into_iter()
                    .map(|e| (e.line, e.key, e.message))
                    .collect()
            }
        }
    }

    #[test]
    fn files_pins_and_insecure_are_checked_where_written() {
        let dir = tempfile::tempdir().unwrap();
        let route = |tls: &str| {
            format!(
                "[[route]]\nhost = \"a.test\"\nupstream = \"https://10.0.0.7:8006\"\nupstream_tls = {{ {tls} }}\n"
            )
        };
        let e = errors(&route("ca_file = \"missing.pem\""), dir.path());
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, 6);
        assert_eq!(e[0].1, "route[1].upstream_tls.ca_file");
        assert!(e[0].2.contains("missing.pem"), "{e:?}");

        std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
        let e = errors(&route("ca_file = \"junk.pem\""), dir.path());
        assert!(e[0].2.contains("no PEM certificate"), "{e:?}");

        let e = errors(&route("pin_sha256 = [\"YWJj\"]"), dir.path());
        assert_eq!(e[0].1, "route[1].upstream_tls.pin_sha256");
        assert!(e[0].2.contains("32 bytes"), "{e:?}");
        let e = errors(&route("pin_sha256 = [\"!!\"]"), dir.path());
        assert!(e[0].2.contains("not base64"), "{e:?}");

        let e = errors(&route("client_cert_file = \"missing.pem\""), dir.path());
        assert!(e.iter().any(|e| e.2.contains("go together")), "{e:?}");

        // insecure_skip_verify is a route's decision, never the default.
        let e = errors(
            "[server.upstream_tls]\ninsecure_skip_verify = true\n",
            dir.path(),
        );
        assert_eq!(e[0].1, "server.upstream_tls.insecure_skip_verify");
        assert!(errors(&route("insecure_skip_verify = true"), dir.path()).is_empty());

        let e = errors(
            "[[route]]\nhost = \"a.test\"\nupstream = \"http://10.0.0.7\"\nupstream_protocol = \"h2\"\n",
            dir.path(),
        );
        assert!(e[0].2.contains("h2c://"), "{e:?}");
        let e = errors(
            "[[route]]\nhost = \"a.test\"\nupstream = \"https://10.0.0.7\"\nupstream_protocol = \"h3\"\n",
            dir.path(),
        );
        assert_eq!(e[0].1, "route[1].upstream_protocol");
    }

    #[test]
    fn server_defaults_fill_what_a_route_leaves_out() {
        let dir = tempfile::tempdir().unwrap();
        let src = "[server]\nhttp = \"127.0.0.1:0\"\nupstream_tls = { server_name = \"pve.lan\", pin_sha256 = [\"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\"] }\n\
                   [[route]]\nhost = \"a.test\"\nupstream = \"https://10.0.0.7:8006\"\nupstream_tls = { server_name = \"a.lan\" }\n\
                   [[route]]\nhost = \"b.test\"\nupstream = [\"https://10.0.0.8\", \"h2c://10.0.0.9:50051\"]\n";
        let c = super::super::parse(&dir.path().join("t.toml"), src).unwrap();
        let a = c.routes[0].upstreams()[0].tls.as_ref().unwrap();
        assert_eq!(a.server_name.to_str(), "a.lan");
        assert_eq!(a.settings.pin_sha256.len(), 1);
        let b = c.routes[1].upstreams();
        assert_eq!(b[0].tls.as_ref().unwrap().server_name.to_str(), "pve.lan");
        assert!(b[1].tls.is_none());
        assert_eq!(b[1].protocol, super::UpstreamProtocol::H2);
        assert_ne!(b[0].pool_key, a_key(&c));
        fn a_key(c: &super::super::Config) -> super::PoolKey {
            c.routes[0].upstreams()[0].pool_key.clone()
        }
    }
}
