//! Validation of `[[route]]` tables: host patterns, paths, the action
//! (upstreams, redirect or fixed response) with its options, and the route
//! set as a whole (no two routes for one host and path, unique names).

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;

use super::cx::Cx;
use super::file::{FileRedirect, FileRespond, FileRoute};
use super::{Action, HostPattern, Redirect, Respond, RouteConfig, ServerConfig, UpstreamTarget};

impl Cx<'_> {
    pub(super) fn route(
        &mut self,
        index: usize,
        span: Range<usize>,
        raw: FileRoute,
        server: &ServerConfig,
        oidc: &super::oidc_section::OidcSet,
        access: &super::access_section::AccessSet,
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

        let path_match = self.path_match(
            &key,
            raw.matrix_params,
            raw.case_insensitive_path,
            path.as_deref(),
            raw.strip_prefix.unwrap_or(false),
        );

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
        let has_tls_key = raw.upstream_tls.is_some();
        let before_tls = self.errors.len();
        let upstream_tls = match raw.upstream_tls {
            Some(t) => self.upstream_tls(
                &format!("{key}.upstream_tls"),
                t,
                &server.upstream_tls,
                true,
            ),
            None => server.upstream_tls.clone(),
        };
        let tls_ok = self.errors.len() == before_tls;
        let upstream_protocol =
            self.upstream_protocol(&format!("{key}.upstream_protocol"), raw.upstream_protocol);
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
            self.finish_targets(
                &key,
                up_span,
                &mut targets,
                &upstream_tls,
                upstream_protocol,
                tls_ok,
            );
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
                request_buffering: raw.request_buffering,
                request_buffer: raw.request_buffer,
            },
            server,
        );
        let auth = self.route_auth(&key, raw.auth, raw.identity_headers, oidc);
        let options = self.route_options(
            &key,
            super::options_section::RawRouteOptions {
                access: raw.access,
                request_headers: raw.request_headers,
                response_headers: raw.response_headers,
                security_headers: raw.security_headers,
                compress: raw.compress,
                rate_limit: raw.rate_limit,
                error_pages: raw.error_pages,
            },
            &server.options,
            access,
        );

        if self.errors.len() != errors_before {
            return None;
        }
        let (host, path, action) = (host?, path?, action?);
        let has_https = action_has_https(&action);
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
            path_match,
            action,
            strip_prefix: raw.strip_prefix.unwrap_or(false),
            preserve_host: raw.preserve_host.unwrap_or(true),
            timeout,
            hsts,
            https_redirect: raw.https_redirect.unwrap_or(true),
            limits,
            auth: auth?,
            upstream_tls: (has_tls_key || has_https).then_some(upstream_tls),
            upstream_protocol,
            options,
            line: self.line_of(span.start),
            source: super::RouteSource::File {
                file: self.file.clone(),
                line: self.line_of(span.start),
            },
        })
    }

    /// `matrix_params` and `case_insensitive_path`: both only mean
    /// something for a route with a path prefix.
    fn path_match(
        &mut self,
        key: &str,
        matrix: Option<Spanned<bool>>,
        nocase: Option<Spanned<bool>>,
        path: Option<&str>,
        strip_prefix: bool,
    ) -> super::PathMatch {
        let mut m = super::PathMatch::default();
        for (name, v) in [
            ("matrix_params", &matrix),
            ("case_insensitive_path", &nocase),
        ] {
            if let Some(v) = v
                && *v.get_ref()
                && path == Some("/")
            {
                self.err(
                    Some(v.span()),
                    &format!("{key}.{name}"),
                    "only applies to a route with a path prefix (`path` is `/`)".into(),
                );
            }
        }
        if let Some(v) = &matrix
            && *v.get_ref()
        {
            if strip_prefix {
                self.err(
                    Some(v.span()),
                    &format!("{key}.matrix_params"),
                    "cannot be combined with `strip_prefix = true` (the prefix to remove may carry ;parameters)".into(),
                );
            }
            m.matrix_params = true;
        }
        m.ignore_case = nocase.is_some_and(|v| *v.get_ref());
        m
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

    fn redirect(&mut self, key: &str, r: Spanned<FileRedirect>) -> Option<Redirect> {
        let span = r.span();
        let (to, status, keep_path) = match r.into_inner() {
            FileRedirect::Scalar(to) => (to, None, true),
            FileRedirect::Table(t) => (t.to, t.status, t.keep_path.unwrap_or(true)),
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

    /// An error about route `r`, at its own file and line (the route set
    /// spans several files).
    pub(super) fn err_route(&mut self, r: &RouteConfig, key: &str, message: String) {
        let (file, line) = r.source.place();
        self.err_at(&file, line, key, message);
    }

    /// No two routes for one host and path, no two with one name, across
    /// every file; each message names both places.
    pub(super) fn check_route_set(&mut self, routes: &[RouteConfig]) {
        let mut seen: HashMap<(&HostPattern, &str), &RouteConfig> = HashMap::new();
        let mut names: HashMap<&str, &RouteConfig> = HashMap::new();
        let mut dups: Vec<(&RouteConfig, &str, String)> = Vec::new();
        for r in routes {
            let same_place = seen.insert((&r.host, r.path.as_str()), r);
            if let Some(first) = same_place {
                dups.push((
                    r,
                    "route",
                    format!(
                        "host `{}` path `{}` is already routed at {}",
                        r.host,
                        r.path,
                        place(r, first)
                    ),
                ));
            }
            // A duplicate host and path usually repeats the name too: one
            // report is enough.
            if let Some(first) = names.insert(r.name.as_str(), r)
                && same_place.is_none()
            {
                dups.push((
                    r,
                    "route.name",
                    format!("name `{}` is already used at {}", r.name, place(r, first)),
                ));
            }
        }
        // A case-insensitive prefix must not tie with another route's.
        if routes.iter().any(|r| r.path_match.ignore_case) {
            let mut folded: HashMap<(&HostPattern, String), &RouteConfig> = HashMap::new();
            for r in routes {
                match folded.entry((&r.host, r.path.to_ascii_lowercase())) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(r);
                    }
                    std::collections::hash_map::Entry::Occupied(o) => {
                        let o = *o.get();
                        if o.path != r.path
                            && (o.path_match.ignore_case || r.path_match.ignore_case)
                        {
                            dups.push((
                                r,
                                "route.case_insensitive_path",
                                format!(
                                    "host `{}` path `{}` is the same prefix as `{}` at {} when case is ignored",
                                    r.host,
                                    r.path,
                                    o.path,
                                    place(r, o)
                                ),
                            ));
                        }
                    }
                }
            }
        }
        for (r, key, msg) in dups {
            self.err_route(r, key, msg);
        }
    }
}

/// Where `other` is, as seen from `here`: `line N` in the same file,
/// `FILE:N` in another.
fn place(here: &RouteConfig, other: &RouteConfig) -> String {
    match (&here.source, &other.source) {
        (super::RouteSource::File { file: a, .. }, super::RouteSource::File { file: b, line })
            if a == b =>
        {
            format!("line {line}")
        }
        (_, s) => s.to_string(),
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

fn action_has_https(a: &Action) -> bool {
    matches!(a, Action::Upstream(list) if list.iter().any(|t| t.tls.is_some()))
}

/// `http://`, `https://` or `h2c://` `host[:port][/base]`. An `https://`
/// target gets its TLS client from the route (`finish_targets`).
pub fn parse_upstream(text: &str) -> Result<UpstreamTarget, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("`{text}` needs a scheme, e.g. http://{text}"))?;
    if !matches!(scheme.as_str(), "http" | "https" | "h2c") {
        return Err(format!(
            "`{text}`: an upstream is http://, https:// or h2c:// (cleartext HTTP/2)"
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
        tls: None,
        protocol: super::UpstreamProtocol::Http1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// (line, column, key, message)
    type Located = (usize, usize, String, String);

    fn check(routes: &str) -> Result<Vec<RouteConfig>, Vec<Located>> {
        let src = format!("[server]\nhttp = \"127.0.0.1:0\"\n{routes}");
        super::super::parse(std::path::Path::new("t.toml"), &src)
            .map(|c| c.routes)
            .map_err(|e| {
                e.0.into_iter()
                    .map(|e| (e.line, e.column, e.key, e.message))
                    .collect()
            })
    }

    #[test]
    fn path_match_options() {
        let ok = check(
            "[[route]]\nhost = \"a.test\"\npath = \"/shop\"\nmatrix_params = true\nrespond = {}\n\
             [[route]]\nhost = \"a.test\"\npath = \"/admin\"\ncase_insensitive_path = true\nrespond = {}\n\
             [[route]]\nhost = \"a.test\"\nrespond = {}\n",
        )
        .unwrap();
        let m: Vec<_> = ok
            .iter()
            .map(|r| (r.path_match.matrix_params, r.path_match.ignore_case))
            .collect();
        assert_eq!(m, [(true, false), (false, true), (false, false)]);

        // (routes, line, column, key, words in the message)
        let bad = [
            (
                "[[route]]\nhost = \"a.test\"\nmatrix_params = true\nrespond = {}\n",
                5,
                17,
                "route[1].matrix_params",
                "path prefix",
            ),
            (
                "[[route]]\nhost = \"a.test\"\ncase_insensitive_path = true\nrespond = {}\n",
                5,
                25,
                "route[1].case_insensitive_path",
                "path prefix",
            ),
            (
                "[[route]]\nhost = \"a.test\"\npath = \"/x\"\nstrip_prefix = true\nmatrix_params = true\nupstream = \"http://127.0.0.1:1\"\n",
                7,
                17,
                "route[1].matrix_params",
                "strip_prefix",
            ),
            (
                "[[route]]\nhost = \"a.test\"\npath = \"/x\"\nmatrix_params = \"yes\"\nrespond = {}\n",
                6,
                17,
                "",
                "bool",
            ),
            (
                "[[route]]\nhost = \"a.test\"\npath = \"/Admin\"\nrespond = {}\n\
                 [[route]]\nhost = \"a.test\"\npath = \"/admin\"\ncase_insensitive_path = true\nrespond = {}\n",
                7,
                1,
                "route.case_insensitive_path",
                "line 3",
            ),
        ];
        for (routes, line, col, key, words) in bad {
            let e = check(routes).unwrap_err();
            assert_eq!(e.len(), 1, "{routes}: {e:?}");
            let (l, c, k, msg) = &e[0];
            assert_eq!((*l, *c), (line, col), "{routes}: {e:?}");
            assert!(k.contains(key), "{routes}: {e:?}");
            assert!(msg.contains(words), "{routes}: {e:?}");
        }
        // Case differences are fine when neither route ignores case.
        assert!(
            check(
                "[[route]]\nhost = \"a.test\"\npath = \"/Admin\"\nrespond = {}\n\
                 [[route]]\nhost = \"a.test\"\npath = \"/admin\"\nrespond = {}\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn upstreams() {
        let t = parse_upstream("http://10.0.0.3:3000/base/").unwrap();
        assert_eq!(t.authority.as_str(), "10.0.0.3:3000");
        assert_eq!(t.base_path, "/base");
        for bad in ["10.0.0.3:3000", "ftp://x", "http://u:p@x", "http://x/?q=1"] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }
}
