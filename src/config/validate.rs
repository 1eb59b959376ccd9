//! Raw file → checked [`Config`]. Every problem is collected, none stops the
//! search for the next, and each names file, line, column and key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::file::{
    FileAcme, FileCertificate, FileRedirect, FileRespond, FileRoute, FileServer, TOP_LEVEL_KEYS,
};
use super::{
    Action, Config, ConfigError, ConfigErrors, HostPattern, Redirect, Respond, RouteConfig, Secret,
    ServerConfig, UpstreamTarget, parse_duration,
};

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
    let mut certificates = Vec::new();
    for (index, span, raw) in certs_raw {
        if let Some(c) = cx.certificate(index, span, raw) {
            certificates.push(c);
        }
    }
    // SSO providers before routes: routes refer to them (issue 4).
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
    line_starts: Vec<usize>,
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

    fn route(
        &mut self,
        index: usize,
        span: Range<usize>,
        raw: FileRoute,
        server: &ServerConfig,
        oidc: &super::oidc_section::OidcSet,
    ) -> Option<RouteConfig> {
        let key = format!("route[{index}]");
        let errors_before = self.errors.len();

        let host = match parse_host_pattern(raw.host.get_ref()) {
            Ok(h) => Some(h),
            Err(msg) => {
                self.err(Some(raw.host.span()), &format!("{key}.host"), msg);
                None
            }
        };
        let path = match raw.path {
            None => Some("/".to_string()),
            Some(p) => match normalize_route_path(p.get_ref()) {
                Ok(p) => Some(p),
                Err(msg) => {
                    self.err(Some(p.span()), &format!("{key}.path"), msg);
                    None
                }
            },
        };

        let n_actions = raw.upstream.is_some() as u8
            + raw.redirect.is_some() as u8
            + raw.respond.is_some() as u8;
        if n_actions != 1 {
            self.err(
                Some(span.clone()),
                &key,
                if n_actions == 0 {
                    "a route needs one of `upstream`, `redirect` or `respond`".to_string()
                } else {
                    "a route takes only one of `upstream`, `redirect` or `respond`".to_string()
                },
            );
        }
        let action = if let Some(up) = raw.upstream {
            let up_span = up.span();
            let list = up.into_inner().0;
            if list.is_empty() {
                self.err(
                    Some(up_span.clone()),
                    &format!("{key}.upstream"),
                    "empty list".into(),
                );
            }
            let mut targets = Vec::new();
            for u in list {
                match parse_upstream(&u) {
                    Ok(t) => targets.push(t),
                    Err(msg) => self.err(Some(up_span.clone()), &format!("{key}.upstream"), msg),
                }
            }
            Some(Action::Upstream(targets))
        } else if let Some(r) = raw.redirect {
            self.redirect(&key, r).map(Action::Redirect)
        } else if let Some(r) = raw.respond {
            self.respond(&key, r).map(Action::Respond)
        } else {
            None
        };

        let timeout = self.duration(
            &format!("{key}.timeout"),
            raw.timeout,
            server.upstream_timeout,
        );
        let hsts = match raw.hsts {
            None => server.hsts.clone(),
            Some(h) => self.hsts(&format!("{key}.hsts"), h),
        };
        let limits = self.route_limits(
            &key,
            super::limits_section::RawRouteLimits {
                allow_ips: raw.allow_ips,
                deny_ips: raw.deny_ips,
                max_body: raw.max_body,
                health_check: raw.health_check,
            },
        );
        let auth = self.route_auth(&key, raw.auth, raw.identity_headers, oidc);

        if self.errors.len() != errors_before {
            return None;
        }
        let (host, path, action) = (host?, path?, action?);
        let name = match raw.name {
            Some(n) => {
                let ok = !n.get_ref().is_empty()
                    && n.get_ref().len() <= 128
                    && n.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./*".contains(&b));
                if !ok {
                    self.err(
                        Some(n.span()),
                        &format!("{key}.name"),
                        "use 1-128 letters, digits or - _ . / *".into(),
                    );
                    return None;
                }
                n.into_inner()
            }
            None => format!("{host}{path}"),
        };
        Some(RouteConfig {
            name,
            host,
            path,
            action,
            strip_prefix: raw.strip_prefix.unwrap_or(false),
            preserve_host: raw.preserve_host.unwrap_or(true),
            timeout,
            hsts,
            https_redirect: raw.https_redirect.unwrap_or(true),
            limits,
            auth: auth?,
            line: self.line_of(span.start),
        })
    }

    /// An integer in `range`, or `default` when absent.
    pub(super) fn int_in(
        &mut self,
        key: &str,
        v: Option<Spanned<i64>>,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> i64 {
        match v {
            None => default,
            Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.err(
                    Some(v.span()),
                    key,
                    format!("must be between {} and {}", range.start(), range.end()),
                );
                default
            }
        }
    }

    pub(super) fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset)
    }

    /// A zero-width span at the start of a 1-based line.
    pub(super) fn line_span(&self, line: usize) -> Range<usize> {
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        start..start
    }

    fn redirect(&mut self, key: &str, r: Spanned<FileRedirect>) -> Option<Redirect> {
        let span = r.span();
        let (to, status, keep_path) = match r.into_inner() {
            FileRedirect::To(to) => (to, None, true),
            FileRedirect::Full(t) => (t.to, t.status, t.keep_path.unwrap_or(true)),
        };
        let k = format!("{key}.redirect");
        let target = to.as_str();
        let valid = if target.starts_with('/') {
            !target.starts_with("//") && !target.contains('\\')
        } else {
            match target.parse::<http::Uri>() {
                Ok(u) => {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
                }
                Err(_) => false,
            }
        };
        if !valid {
            self.err(
                Some(span),
                &k,
                format!("`{target}` is not an absolute http(s) URL or a path starting with /"),
            );
            return None;
        }
        let status = match status {
            None => http::StatusCode::PERMANENT_REDIRECT,
            Some(s) => match s {
                301 | 302 | 303 | 307 | 308 => http::StatusCode::from_u16(s as u16).ok()?,
                other => {
                    self.err(
                        Some(span),
                        &k,
                        format!("status {other} is not a redirect; use 301, 302, 303, 307 or 308"),
                    );
                    return None;
                }
            },
        };
        Some(Redirect {
            to,
            status,
            keep_path,
        })
    }

    fn respond(&mut self, key: &str, r: Spanned<FileRespond>) -> Option<Respond> {
        let r = r.into_inner();
        let k = format!("{key}.respond");
        let status = match r.status {
            None => http::StatusCode::OK,
            Some(s) => match u16::try_from(*s.get_ref())
                .ok()
                .filter(|c| (200..=599).contains(c))
                .and_then(|c| http::StatusCode::from_u16(c).ok())
            {
                Some(c) => c,
                None => {
                    self.err(Some(s.span()), &k, "status must be 200-599".into());
                    return None;
                }
            },
        };
        let content_type = match r.content_type {
            None => http::HeaderValue::from_static("text/plain; charset=utf-8"),
            Some(ct) => match http::HeaderValue::from_str(ct.get_ref()) {
                Ok(v) => v,
                Err(_) => {
                    self.err(
                        Some(ct.span()),
                        &k,
                        "content_type is not a valid header value".into(),
                    );
                    return None;
                }
            },
        };
        Some(Respond {
            status,
            body: bytes::Bytes::from(r.body.unwrap_or_default()),
            content_type,
        })
    }

    fn check_route_set(&mut self, routes: &[RouteConfig]) {
        let mut seen: HashMap<(&HostPattern, &str), usize> = HashMap::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut dups = Vec::new();
        for r in routes {
            if let Some(first) = seen.insert((&r.host, r.path.as_str()), r.line) {
                dups.push((
                    r.line,
                    "route",
                    format!(
                        "host `{}` path `{}` is already routed at line {first}",
                        r.host, r.path
                    ),
                ));
            }
            if let Some(first) = names.insert(r.name.as_str(), r.line) {
                dups.push((
                    r.line,
                    "route.name",
                    format!("name `{}` is already used at line {first}", r.name),
                ));
            }
        }
        for (line, key, msg) in dups {
            let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
            self.err(Some(start..start), key, msg);
        }
    }
}

/// `example.com`, `*.example.com` or `*`; case-insensitive, trailing dot ignored.
pub fn parse_host_pattern(text: &str) -> Result<HostPattern, String> {
    if text == "*" {
        return Ok(HostPattern::Any);
    }
    if text.contains("://") || text.contains('/') {
        return Err(format!(
            "`{text}` looks like a URL; `host` takes a name only (e.g. \"app.example.com\")"
        ));
    }
    let lower = text.trim_end_matches('.').to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, lower),
    };
    if !is_dns_name(&name) {
        return Err(format!(
            "`{text}` is not a host name (letters, digits, '-', dot-separated; `*.` only as the first label; no port)"
        ));
    }
    Ok(if wild {
        HostPattern::Wildcard(name)
    } else {
        HostPattern::Exact(name)
    })
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Route paths: must start with `/`, no query, no dot segments, no empty
/// segments; a trailing `/` is dropped (`/app/` and `/app` are the same prefix).
pub fn normalize_route_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!("`{text}` must start with /"));
    }
    if text.contains(['?', '#', '\\', '%']) || text.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "`{text}`: a route path may not contain ?, #, \\, %, spaces or control characters"
        ));
    }
    let trimmed = if text.len() > 1 {
        text.trim_end_matches('/')
    } else {
        text
    };
    if trimmed.is_empty() {
        return Ok("/".into());
    }
    if trimmed != "/" {
        for seg in trimmed[1..].split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(format!("`{text}` has an empty, `.` or `..` segment"));
            }
        }
    }
    Ok(trimmed.to_string())
}

/// `http://host:port[/base]`.
pub fn parse_upstream(text: &str) -> Result<UpstreamTarget, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("`{text}` needs a scheme, e.g. http://{text}"))?;
    if scheme != http::uri::Scheme::HTTP {
        return Err(format!(
            "`{text}`: only http:// upstreams are supported (TLS is terminated here; backends are on the private network)"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("`{text}` has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{text}`: credentials in upstream URLs are not supported"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("`{text}`: an upstream URL may not have a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(UpstreamTarget {
        url: text.to_string(),
        scheme,
        pool_key: super::PoolKey::new(&authority),
        authority,
        base_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(src: &str) -> Vec<ConfigError> {
        parse(Path::new("t.toml"), src).unwrap_err().0
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            parse_host_pattern("App.Example.COM.").unwrap(),
            HostPattern::Exact("app.example.com".into())
        );
        assert_eq!(
            parse_host_pattern("*.example.com").unwrap(),
            HostPattern::Wildcard("example.com".into())
        );
        assert_eq!(parse_host_pattern("*").unwrap(), HostPattern::Any);
        for bad in [
            "",
            "a..b",
            "https://x.com",
            "x.com:8080",
            "a.*.com",
            "-a.com",
            "x.com/y",
        ] {
            assert!(parse_host_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_paths() {
        let ok = [
            ("/", "/"),
            ("/app", "/app"),
            ("/app/", "/app"),
            ("/a/b", "/a/b"),
        ];
        for (i, want) in ok {
            assert_eq!(normalize_route_path(i).unwrap(), want);
        }
        for bad in ["app", "/a//b", "/a/../b", "/a?x", "/a b", "/%2e"] {
            assert!(normalize_route_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstreams() {
        let t = parse_upstream("http://10.0.0.3:3000/base/").unwrap();
        assert_eq!(t.authority.as_str(), "10.0.0.3:3000");
        assert_eq!(t.base_path, "/base");
        for bad in [
            "10.0.0.3:3000",
            "ftp://x",
            "https://x",
            "http://u:p@x",
            "http://x/?q=1",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
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
