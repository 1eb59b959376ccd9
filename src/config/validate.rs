//! Raw file → checked [`Config`]. Every problem is collected, none stops the
//! search for the next, and each names file, line, column and key.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::file::{FileAcme, FileCertificate, FileRoute, FileServer, TOP_LEVEL_KEYS};
use super::{Config, ConfigError, ConfigErrors, Secret, ServerConfig, parse_duration};

const DEFAULT_ADMIN: &str = "127.0.0.1:9180";
const DEFAULT_STATE_DIR: &str = "/var/lib/portcullis";

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(src) => parse(path, &src),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        }])),
    }
}

/// Validates config text; `path` is used for messages and for resolving
/// relative file names.
pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
    let mut cx = Cx::new(path, src);
    let (table, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        for e in syntax {
            cx.err(e.span(), "", e.message().to_string());
        }
        return Err(cx.finish_err());
    }
    let table = table.into_inner();

    let mut server_raw = None;
    let mut server_span = None;
    let mut acme_raw = None;
    let mut certs_raw = Vec::new();
    let mut routes_raw = Vec::new();
    let mut oidc_raw = None;
    let mut cluster_raw = None;
    for (key, value) in table {
        let span = key.span();
        match key.get_ref().as_ref() {
            "server" => {
                server_span = Some(span.clone());
                server_raw = cx.section::<FileServer>("server", value)
            }
            "route" => routes_raw = cx.array_of_tables::<FileRoute>("route", value),
            "acme" => acme_raw = cx.section::<FileAcme>("acme", value).map(|a| (span, a)),
            "certificate" => {
                certs_raw = cx.array_of_tables::<FileCertificate>("certificate", value)
            }
            "oidc" => oidc_raw = Some(value),
            "cluster" => {
                cluster_raw = cx
                    .section::<super::cluster_section::FileCluster>("cluster", value)
                    .map(|c| (span, c))
            }
            other => cx.err(
                Some(span),
                other,
                format!(
                    "unknown section `{other}`; known sections: {}",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            ),
        }
    }

    let server = cx.server(server_raw.unwrap_or_default());
    let acme = acme_raw.and_then(|(span, a)| cx.acme(span, a));
    let cluster = cluster_raw.and_then(|(span, c)| cx.cluster(span, c));
    let mut certificates = Vec::new();
    for (index, span, raw) in certs_raw {
        if let Some(c) = cx.certificate(index, span, raw) {
            certificates.push(c);
        }
    }
    // SSO providers before routes: routes refer to them.
    let oidc = oidc_raw.map(|v| cx.oidc(v)).unwrap_or_default();
    let mut routes = Vec::with_capacity(routes_raw.len());
    for (index, span, raw) in routes_raw {
        if let Some(r) = cx.route(index, span, raw, &server, &oidc) {
            routes.push(r);
        }
    }
    cx.check_route_set(&routes);
    cx.check_oidc_routes(&routes, &oidc);
    if server.https.is_some() {
        cx.check_tls_coverage(&routes, &certificates, acme.is_some());
    }

    if server.http.is_none() && server.https.is_none() {
        cx.err(
            server_span,
            "server",
            "no listener: set `http` and/or `https` in [server]".to_string(),
        );
    }

    if cx.errors.is_empty() {
        Ok(Config {
            source: path.to_path_buf(),
            server,
            acme,
            certificates,
            oidc: oidc.list,
            routes,
            cluster,
        })
    } else {
        Err(cx.finish_err())
    }
}

/// A path from the config, relative to the config file's folder.
pub fn resolve_relative(config_file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(p)
    }
}

pub(super) struct Cx<'a> {
    pub(super) file: &'a Path,
    pub(super) line_starts: Vec<usize>,
    pub(super) errors: Vec<ConfigError>,
}

impl<'a> Cx<'a> {
    fn new(file: &'a Path, src: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Cx {
            file,
            line_starts,
            errors: Vec::new(),
        }
    }

    pub(super) fn err(&mut self, span: Option<Range<usize>>, key: &str, message: String) {
        let (line, column) = match span {
            Some(r) => {
                let line_idx = self.line_starts.partition_point(|&s| s <= r.start) - 1;
                (line_idx + 1, r.start - self.line_starts[line_idx] + 1)
            }
            None => (0, 0),
        };
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        });
    }

    fn finish_err(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors(self.errors)
    }

    fn section<T: for<'de> Deserialize<'de>>(
        &mut self,
        key: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let span = value.span();
        if !matches!(value.get_ref(), DeValue::Table(_)) {
            self.err(Some(span), key, format!("`{key}` must be a table: [{key}]"));
            return None;
        }
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(e.span().or(Some(span)), key, e.message().to_string());
                None
            }
        }
    }

    fn array_of_tables<T: for<'de> Deserialize<'de>>(
        &mut self,
        key: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Vec<(usize, Range<usize>, T)> {
        let span = value.span();
        let DeValue::Array(items) = value.into_inner() else {
            self.err(
                Some(span),
                key,
                format!("`{key}` must be an array of tables: [[{key}]]"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let item_key = format!("{key}[{}]", i + 1);
            let item_span = item.span();
            if let Some(v) = self.section::<T>(&item_key, item) {
                out.push((i + 1, item_span, v));
            }
        }
        out
    }

    fn addr(&mut self, key: &str, v: Option<Spanned<String>>) -> Option<SocketAddr> {
        let v = v?;
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    Some(v.span()),
                    key,
                    format!(
                        "`{}` is not an address; write IP:PORT, e.g. \"0.0.0.0:443\" or \"[::]:443\"",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        v: Option<Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) => d,
            Err(msg) => {
                self.err(Some(v.span()), key, msg);
                default
            }
        }
    }

    fn server(&mut self, raw: FileServer) -> ServerConfig {
        let http = self.addr("server.http", raw.http);
        let https = self.addr("server.https", raw.https);
        let admin_span = raw.admin.as_ref().map(|a| a.span());
        let admin = match raw.admin {
            Some(a) if a.get_ref().is_empty() || a.get_ref() == "off" => None,
            Some(a) => self.addr("server.admin", Some(a)),
            None => DEFAULT_ADMIN.parse().ok(),
        };

        let mut admin_token = None;
        let mut admin_token_file = None;
        // A token file that is set but unreadable is its own error; don't
        // also claim the key is missing.
        let admin_token_key_given = raw.admin_token_file.is_some();
        if let Some(f) = raw.admin_token_file {
            let path = resolve_relative(self.file, Path::new(f.get_ref()));
            match Secret::read_file(&path) {
                Ok(secret) => {
                    admin_token = Some(secret);
                    admin_token_file = Some(path);
                }
                Err(message) => self.err(Some(f.span()), "server.admin_token_file", message),
            }
        }
        if let Some(a) = admin
            && !a.ip().is_loopback()
            && !admin_token_key_given
        {
            self.err(
                admin_span,
                "server.admin",
                format!(
                    "admin listener {a} is not on loopback; set `admin_token_file` so the admin API is not open to the network"
                ),
            );
        }

        let trusted_proxies = self.cidrs("server.trusted_proxies", raw.trusted_proxies);
        if let Some(pp) = &raw.proxy_protocol
            && *pp.get_ref()
            && trusted_proxies.is_empty()
        {
            self.err(
                Some(pp.span()),
                "server.proxy_protocol",
                "PROXY headers are accepted only from `trusted_proxies`, and none is set; list the load balancers' addresses there".into(),
            );
        }

        let workers = match raw.workers {
            None => 0,
            Some(w) if (0..=1024).contains(w.get_ref()) => *w.get_ref() as usize,
            Some(w) => {
                self.err(
                    Some(w.span()),
                    "server.workers",
                    "must be between 0 (one per core) and 1024".into(),
                );
                0
            }
        };

        ServerConfig {
            http,
            https,
            admin,
            admin_token,
            admin_token_file,
            trusted_proxies,
            state_dir: raw
                .state_dir
                .map(|s| resolve_relative(self.file, Path::new(s.get_ref())))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            grace_period: self.duration(
                "server.grace_period",
                raw.grace_period,
                Duration::from_secs(30),
            ),
            upstream_connect_timeout: self.duration(
                "server.upstream_connect_timeout",
                raw.upstream_connect_timeout,
                Duration::from_secs(5),
            ),
            upstream_timeout: self.duration(
                "server.upstream_timeout",
                raw.upstream_timeout,
                Duration::from_secs(60),
            ),
            upstream_idle_timeout: self.duration(
                "server.upstream_idle_timeout",
                raw.upstream_idle_timeout,
                Duration::from_secs(90),
            ),
            header_read_timeout: self.duration(
                "server.header_read_timeout",
                raw.header_read_timeout,
                Duration::from_secs(30),
            ),
            workers,
            max_connections: self.int_in(
                "server.max_connections",
                raw.max_connections,
                1..=1_000_000,
                16_384,
            ) as usize,
            max_header_bytes: self
                .size("server.max_header_bytes", raw.max_header_bytes, 8192)
                .unwrap_or(64 * 1024) as usize,
            request_body_timeout: self.duration(
                "server.request_body_timeout",
                raw.request_body_timeout,
                Duration::from_secs(60),
            ),
            upstream_read_timeout: self.duration(
                "server.upstream_read_timeout",
                raw.upstream_read_timeout,
                Duration::from_secs(60),
            ),
            send_timeout: self.duration(
                "server.send_timeout",
                raw.send_timeout,
                Duration::from_secs(60),
            ),
            upstream_eject_after: self.int_in(
                "server.upstream_eject_after",
                raw.upstream_eject_after,
                0..=1000,
                3,
            ) as u32,
            upstream_eject_for: self.duration(
                "server.upstream_eject_for",
                raw.upstream_eject_for,
                Duration::from_secs(10),
            ),
            h2_max_concurrent_streams: self.int_in(
                "server.h2_max_concurrent_streams",
                raw.h2_max_concurrent_streams,
                1..=10_000,
                256,
            ) as u32,
            request_buffering: raw.request_buffering.is_none_or(|b| b.into_inner()),
            proxy_protocol: raw.proxy_protocol.is_some_and(|b| b.into_inner()),
            request_buffer: self
                .buffer_size("server.request_buffer", raw.request_buffer)
                .unwrap_or(super::limits_section::DEFAULT_REQUEST_BUFFER),
            tls_handshake_timeout: self.duration(
                "server.tls_handshake_timeout",
                raw.tls_handshake_timeout,
                Duration::from_secs(10),
            ),
            hsts: match raw.hsts {
                None => Some(super::tls_section::default_hsts()),
                Some(h) => self.hsts("server.hsts", h),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(src: &str) -> Vec<ConfigError> {
        parse(Path::new("t.toml"), src).unwrap_err().0
    }

    #[test]
    fn reports_every_error_with_line_and_key() {
        let src = r#"
[server]
http = "127.0.0.1:0"
admin = "nope"

[[route]]
host = "a.example.com"
upstream = "10.0.0.1"

[[route]]
host = "b.example.com"
hots = "typo"

[[route]]
host = "c.example.com"
redirect = "https://x.example.com"
respond = { status = 200 }
"#;
        let e = errs(src);
        let lines: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert!(lines.contains(&(4, "server.admin")), "{e:?}");
        assert!(lines.contains(&(8, "route[1].upstream")), "{e:?}");
        assert!(
            lines.iter().any(|(l, k)| *l == 12 && *k == "route[2]"),
            "{e:?}"
        );
        assert!(
            lines.iter().any(|(l, k)| *l == 14 && *k == "route[3]"),
            "{e:?}"
        );
        assert_eq!(e.len(), 4, "{e:?}");
        let shown = e[0].to_string();
        assert!(shown.starts_with("t.toml:4:9: server.admin:"), "{shown}");
    }

    #[test]
    fn duplicate_routes_name_the_first_line() {
        let src = "[server]\nhttp = \"127.0.0.1:0\"\n[[route]]\nhost = \"a.com\"\nrespond = {}\n[[route]]\nhost = \"A.com.\"\npath = \"/\"\nrespond = {}\n";
        let e = errs(src);
        assert_eq!(e.len(), 2, "{e:?}"); // same host+path, and same derived name
        assert!(e[0].message.contains("line 3"), "{e:?}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = errs("[server\nhttp = 1\n");
        assert!(e[0].line >= 1, "{e:?}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let e = errs("[sever]\nhttp = \"127.0.0.1:1\"\n");
        assert!(e.iter().any(|e| e.key == "sever" && e.line == 1), "{e:?}");
    }

    #[test]
    fn defaults_are_filled() {
        let c = parse(
            Path::new("t.toml"),
            "[server]\nhttp = \"127.0.0.1:0\"\n[[route]]\nhost = \"a.com\"\nupstream = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        assert_eq!(c.server.admin, Some("127.0.0.1:9180".parse().unwrap()));
        assert!(c.server.trusted_proxies.is_empty());
        assert_eq!(c.routes[0].name, "a.com/");
        assert!(c.routes[0].preserve_host);
        assert!(!c.routes[0].strip_prefix);
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        let e = errs("[server]\nhttp = \"127.0.0.1:0\"\nadmin = \"0.0.0.0:9180\"\n");
        assert!(e.iter().any(|e| e.key == "server.admin"), "{e:?}");
    }
}
