//! The route options Nginx Proxy Manager users set per host (access lists
//! are `access_section`'s, header rules `headers_section`'s): security
//! headers, compression, rate limits, custom error pages, and `[server]`'s
//! `default_route`. Raw types and their checks live together here; what
//! the request path does with them is `policy`'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::access_section::{AccessList, AccessSet};
use super::cx::Cx;
use super::file::{FileSize, ScalarOr, TableForm};
use super::headers_section::{FileHeaderRules, HeaderRules};
use super::validate::resolve_relative;

// --- raw ---------------------------------------------------------------------

/// `compress = true | false | { level = "fastest", min_size = 1024 }`
pub type FileCompress = ScalarOr<bool, FileCompressTable>;

impl TableForm for FileCompressTable {
    const EXPECTING: &'static str =
        "true, false, or a table { level = \"fastest\", min_size = 1024 }";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCompressTable {
    /// "fastest" (default), "default" or "best".
    pub level: Option<Spanned<String>>,
    /// Smallest body compressed (default 1 KiB).
    pub min_size: Option<Spanned<FileSize>>,
}

/// `rate_limit = { requests = 100, per = "1m", burst = 20, by = "ip" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    pub requests: Spanned<i64>,
    pub per: Spanned<String>,
    pub burst: Option<Spanned<i64>>,
    pub by: Option<Spanned<String>>,
}

/// `default_route = "404" | "drop" | { redirect = "https://…" }`
pub type FileDefaultRoute = ScalarOr<String, FileDefaultRouteTable>;

impl TableForm for FileDefaultRouteTable {
    const EXPECTING: &'static str = "\"404\", \"drop\", or a table { redirect = \"https://…\" }";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDefaultRouteTable {
    pub redirect: String,
}

/// The option keys of one `[[route]]`, as written.
#[derive(Debug, Default)]
pub struct RawRouteOptions {
    pub access: Option<Spanned<String>>,
    pub request_headers: Option<Spanned<FileHeaderRules>>,
    pub response_headers: Option<Spanned<FileHeaderRules>>,
    pub security_headers: Option<Spanned<bool>>,
    pub compress: Option<Spanned<FileCompress>>,
    pub rate_limit: Option<Spanned<FileRateLimit>>,
    pub error_pages: Option<Spanned<BTreeMap<String, String>>>,
}

// --- checked -----------------------------------------------------------------

/// How hard to compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressLevel {
    Fastest,
    Default,
    Best,
}

impl CompressLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            CompressLevel::Fastest => "fastest",
            CompressLevel::Default => "default",
            CompressLevel::Best => "best",
        }
    }
}

/// `compress`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compress {
    pub level: CompressLevel,
    pub min_size: u64,
}

pub const DEFAULT_COMPRESS_MIN_SIZE: u64 = 1024;

/// What a rate limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateBy {
    /// One bucket per client address, shared by every route with the same
    /// limit.
    Ip,
    /// One bucket per signed-in (or basic-auth) user on this route; the
    /// address for anonymous requests.
    User,
    /// One bucket per client address on this route.
    IpRoute,
}

impl RateBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RateBy::Ip => "ip",
            RateBy::User => "user",
            RateBy::IpRoute => "ip+route",
        }
    }
}

/// `rate_limit`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
    pub by: RateBy,
}

/// Which statuses an error page is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Exact(u16),
    /// `"4xx"`, `"5xx"`: the hundreds digit.
    Class(u16),
}

/// `error_pages`, checked: the page files are read here.
#[derive(Debug, Clone, Default)]
pub struct ErrorPages {
    pub pages: Vec<(StatusMatch, Arc<str>, PathBuf)>,
}

impl ErrorPages {
    /// The page for a status: an exact entry first, then its class.
    pub fn find(&self, status: u16) -> Option<&Arc<str>> {
        self.pages
            .iter()
            .find(|(m, _, _)| *m == StatusMatch::Exact(status))
            .or_else(|| {
                self.pages
                    .iter()
                    .find(|(m, _, _)| *m == StatusMatch::Class(status / 100))
            })
            .map(|(_, p, _)| p)
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

/// The route options of this module, checked. All empty for a route that
/// sets none, which then pays nothing for them.
#[derive(Debug, Clone, Default)]
pub struct RouteOptions {
    pub access: Option<Arc<AccessList>>,
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    pub security_headers: bool,
    pub compress: Option<Compress>,
    pub rate_limit: Option<RateLimit>,
    /// The route's pages, falling back to `[server] error_pages`.
    pub error_pages: ErrorPages,
}

impl RouteOptions {
    pub fn is_empty(&self) -> bool {
        self.access.is_none()
            && self.request_headers.is_empty()
            && self.response_headers.is_empty()
            && !self.security_headers
            && self.compress.is_none()
            && self.rate_limit.is_none()
            && self.error_pages.is_empty()
    }
}

/// `[server] default_route`: what a request for a host no route serves gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DefaultRoute {
    /// The 404 page (custom when `error_pages` has one).
    #[default]
    NotFound,
    /// A 302 to this URL (the request's path kept).
    Redirect(String),
    /// Close the connection without an answer, like nginx's `return 444`.
    Drop,
}

/// The `[server]` keys of this module.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    pub compress: Option<Compress>,
    pub error_pages: ErrorPages,
    pub default_route: DefaultRoute,
}

// --- checks ------------------------------------------------------------------

impl Cx<'_> {
    pub(super) fn compress(
        &mut self,
        key: &str,
        raw: Option<Spanned<FileCompress>>,
        default: Option<Compress>,
    ) -> Option<Compress> {
        let Some(raw) = raw else { return default };
        match raw.into_inner() {
            FileCompress::Scalar(false) => None,
            FileCompress::Scalar(true) => Some(Compress {
                level: CompressLevel::Fastest,
                min_size: DEFAULT_COMPRESS_MIN_SIZE,
            }),
            FileCompress::Table(t) => {
                let level = match t.level {
                    None => CompressLevel::Fastest,
                    Some(l) => match l.get_ref().as_str() {
                        "fastest" => CompressLevel::Fastest,
                        "default" => CompressLevel::Default,
                        "best" => CompressLevel::Best,
                        other => {
                            self.err(
                                Some(l.span()),
                                &format!("{key}.level"),
                                format!("`{other}`: use \"fastest\", \"default\" or \"best\""),
                            );
                            CompressLevel::Fastest
                        }
                    },
                };
                let min_size = self
                    .size(&format!("{key}.min_size"), t.min_size, 0)
                    .unwrap_or(DEFAULT_COMPRESS_MIN_SIZE);
                Some(Compress { level, min_size })
            }
        }
    }

    fn rate_limit(&mut self, key: &str, raw: Option<Spanned<FileRateLimit>>) -> Option<RateLimit> {
        let raw = raw?.into_inner();
        let before = self.errors.len();
        let requests = self.int_in(
            &format!("{key}.requests"),
            Some(raw.requests),
            1..=1_000_000,
            1,
        );
        let per_span = raw.per.span();
        let per = self.duration(&format!("{key}.per"), Some(raw.per), Duration::from_secs(1));
        if per.is_zero() || per > Duration::from_secs(86400) {
            self.err(
                Some(per_span),
                &format!("{key}.per"),
                "must be between 1ms and 1d".into(),
            );
        }
        let burst = self.int_in(&format!("{key}.burst"), raw.burst, 0..=1_000_000, 0);
        let by = match raw.by {
            None => RateBy::Ip,
            Some(b) => match b.get_ref().as_str() {
                "ip" => RateBy::Ip,
                "user" => RateBy::User,
                "ip+route" => RateBy::IpRoute,
                other => {
                    self.err(
                        Some(b.span()),
                        &format!("{key}.by"),
                        format!("`{other}`: use \"ip\", \"user\" or \"ip+route\""),
                    );
                    RateBy::Ip
                }
            },
        };
        (self.errors.len() == before).then_some(RateLimit {
            requests: requests as u32,
            per,
            burst: burst as u32,
            by,
        })
    }

    pub(super) fn error_pages(
        &mut self,
        key: &str,
        raw: Option<Spanned<BTreeMap<String, String>>>,
        fallback: &ErrorPages,
    ) -> ErrorPages {
        let Some(raw) = raw else {
            return fallback.clone();
        };
        let span = raw.span();
        let mut out = ErrorPages::default();
        for (status, file) in raw.into_inner() {
            let k = format!("{key}.{status}");
            let m = match status.as_bytes() {
                [c @ b'4'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                    StatusMatch::Class((c - b'0') as u16)
                }
                _ => match status.parse::<u16>() {
                    Ok(s) if (400..=599).contains(&s) => StatusMatch::Exact(s),
                    _ => {
                        self.err(
                            Some(span.clone()),
                            &k,
                            format!("`{status}`: use a status 400-599, \"4xx\" or \"5xx\""),
                        );
                        continue;
                    }
                },
            };
            let path = resolve_relative(&self.file, Path::new(&file));
            match std::fs::read(&path) {
                Ok(b) if b.len() <= 256 * 1024 => match String::from_utf8(b) {
                    Ok(s) => out.pages.push((m, s.into(), path)),
                    Err(_) => self.err(
                        Some(span.clone()),
                        &k,
                        format!("{} is not UTF-8 text", path.display()),
                    ),
                },
                Ok(_) => self.err(
                    Some(span.clone()),
                    &k,
                    format!("{} is larger than 256 KiB", path.display()),
                ),
                Err(e) => self.err(
                    Some(span.clone()),
                    &k,
                    format!("cannot read {}: {e}", path.display()),
                ),
            }
        }
        // Fall back to the server's pages for statuses the route leaves out.
        for (m, p, path) in &fallback.pages {
            if !out.pages.iter().any(|(o, _, _)| o == m) {
                out.pages.push((*m, p.clone(), path.clone()));
            }
        }
        out
    }

    pub(super) fn default_route(&mut self, raw: Option<Spanned<FileDefaultRoute>>) -> DefaultRoute {
        let Some(raw) = raw else {
            return DefaultRoute::NotFound;
        };
        let span = raw.span();
        match raw.into_inner() {
            FileDefaultRoute::Scalar(k) if k == "404" => DefaultRoute::NotFound,
            FileDefaultRoute::Scalar(k) if k == "drop" || k == "444" => DefaultRoute::Drop,
            FileDefaultRoute::Scalar(k) => {
                self.err(
                    Some(span),
                    "server.default_route",
                    format!("`{k}`: use \"404\", \"drop\" or {{ redirect = \"https://…\" }}"),
                );
                DefaultRoute::NotFound
            }
            FileDefaultRoute::Table(t) => {
                let ok = t.redirect.parse::<http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
                });
                if !ok {
                    self.err(
                        Some(span),
                        "server.default_route.redirect",
                        format!("`{}` is not an absolute http(s) URL", t.redirect),
                    );
                }
                DefaultRoute::Redirect(t.redirect)
            }
        }
    }

    /// A route's option keys.
    pub(super) fn route_options(
        &mut self,
        key: &str,
        raw: RawRouteOptions,
        server: &ServerOptions,
        access: &AccessSet,
    ) -> RouteOptions {
        let access_list = match raw.access {
            None => None,
            Some(a) => match access.list.get(a.get_ref()) {
                Some(l) => Some(l.clone()),
                None => {
                    if !access.broken.contains(a.get_ref()) {
                        let known: Vec<&str> = access.list.keys().map(|s| s.as_str()).collect();
                        self.err(
                            Some(a.span()),
                            &format!("{key}.access"),
                            format!(
                                "no [access.{}] list; defined: {}",
                                a.get_ref(),
                                if known.is_empty() {
                                    "none".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        );
                    }
                    None
                }
            },
        };
        RouteOptions {
            access: access_list,
            request_headers: self
                .header_rules(&format!("{key}.request_headers"), raw.request_headers),
            response_headers: self
                .header_rules(&format!("{key}.response_headers"), raw.response_headers),
            security_headers: raw.security_headers.is_some_and(|s| *s.get_ref()),
            compress: self.compress(&format!("{key}.compress"), raw.compress, server.compress),
            rate_limit: self.rate_limit(&format!("{key}.rate_limit"), raw.rate_limit),
            error_pages: self.error_pages(
                &format!("{key}.error_pages"),
                raw.error_pages,
                &server.error_pages,
            ),
        }
    }
}
