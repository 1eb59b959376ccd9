//! The immutable route table: host (exact, `*.wildcard`, `*`) then
//! segment-aware longest path prefix. Built once per config snapshot; the
//! request path only reads it, with no allocation and no locks.
//!
//! Precedence: the exact host is tried first, then wildcard suffixes from
//! the most specific (`*.a.example.com` before `*.example.com`), then `*`.
//! Within a host the longest matching path prefix wins. If a host matches
//! but none of its paths do, the next, less specific host is tried, so a
//! `*.example.com` catch-all still serves `/` for a host that only routes
//! `/api` explicitly.
//!
//! Backends do not all read a path the same way: servlet containers drop
//! `;params` from every segment, Windows-based servers drop trailing dots
//! and spaces. [`RouteTable::route`] therefore also looks the path up the
//! way the most lenient backend would read it (see [`lenient_segment`]) and
//! refuses it when the two readings pick different routes, so the gate is
//! never less strict than the backend. Per route, [`PathMatch`] makes the
//! prefix ignore `;params` (apps that use matrix parameters) or letter case
//! (case-insensitive backends).

mod host;

use std::collections::HashMap;

pub use host::{HOST_BUF_LEN, normalize_authority, normalize_host};

use crate::config::HostPattern;
pub use crate::config::PathMatch;

impl PathMatch {
    fn is_plain(self) -> bool {
        !self.matrix_params && !self.ignore_case
    }
}

/// Which reading of a request path a lookup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// The normalised path as it is.
    Exact,
    /// As the most lenient backend reads it (see [`lenient_segment`]).
    Lenient,
}

/// Paths of one host, longest prefix first.
#[derive(Debug, Default)]
struct PathTable {
    entries: Vec<(Box<str>, PathMatch, u32)>,
}

impl PathTable {
    fn insert(&mut self, prefix: &str, m: PathMatch, id: u32) {
        self.entries.push((prefix.into(), m, id));
    }

    fn finish(&mut self) {
        // Longest first; ties cannot happen (validation rejects duplicates).
        self.entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
    }

    #[inline]
    fn find(&self, path: &str, reading: Reading) -> Option<u32> {
        let found = match reading {
            Reading::Exact => self.entries.iter().find(|(prefix, m, _)| {
                if m.is_plain() {
                    prefix_matches(prefix, path)
                } else {
                    segments_match(prefix, *m, path, Reading::Exact)
                }
            }),
            Reading::Lenient => self
                .entries
                .iter()
                .find(|(prefix, m, _)| segments_match(prefix, *m, path, Reading::Lenient)),
        };
        found.map(|(_, _, id)| *id)
    }
}

/// Does `path` need a second, lenient lookup? True when a segment carries
/// `;` (raw or `%3B`) or ends in a dot or an encoded space: the only ways
/// the lenient reading can differ from the path itself. One byte scan, no
/// allocation.
#[inline]
pub fn has_lenient_reading(path: &str) -> bool {
    let b = path.as_bytes();
    // A first pass without early exit, which the compiler vectorises: most
    // paths have none of these bytes at all.
    let mut any = false;
    for &c in b {
        any |= (c == b';') | (c == b'.') | (c == b'%');
    }
    if !any {
        return false;
    }
    let seg_end = |i: usize| matches!(b.get(i), None | Some(b'/'));
    for (i, &c) in b.iter().enumerate() {
        let lenient = match c {
            b';' => true,
            b'.' => seg_end(i + 1),
            b'%' => match b.get(i + 1..i + 3) {
                Some(b"3B" | b"3b") => true,
                Some(b"20") => seg_end(i + 3),
                _ => false,
            },
            _ => false,
        };
        if lenient {
            return true;
        }
    }
    false
}

/// A request segment as the most lenient backend reads it: cut at the
/// first `;` or `%3B` (servlet path parameters), then trailing `.` and
/// `%20` removed (Windows file names). An empty result means the segment
/// disappears (like an empty segment between `//`).
pub fn lenient_segment(seg: &str) -> &str {
    let seg = strip_params(seg);
    let mut s = seg.as_bytes();
    loop {
        if let Some(rest) = s.strip_suffix(b".") {
            s = rest;
        } else if let Some(rest) = s.strip_suffix(b"%20") {
            s = rest;
        } else {
            break;
        }
    }
    &seg[..s.len()]
}

/// A segment without its `;params` (raw `;` or `%3B`).
fn strip_params(seg: &str) -> &str {
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let param = match b[i] {
            b';' => true,
            b'%' => b
                .get(i + 1..i + 3)
                .is_some_and(|e| e.eq_ignore_ascii_case(b"3B")),
            _ => false,
        };
        if param {
            return &seg[..i];
        }
        i += 1;
    }
    seg
}

/// The general, segment-by-segment prefix match, with a route's options
/// and a reading of the request path.
fn segments_match(prefix: &str, m: PathMatch, path: &str, reading: Reading) -> bool {
    if prefix == "/" {
        return true;
    }
    let mut path_segs = path.split('/').skip(1).filter_map(|seg| match reading {
        Reading::Exact if m.matrix_params => Some(strip_params(seg)),
        Reading::Exact => Some(seg),
        Reading::Lenient => Some(lenient_segment(seg)).filter(|s| !s.is_empty()),
    });
    prefix.split('/').skip(1).all(|want| {
        path_segs.next().is_some_and(|got| {
            if m.ignore_case {
                got.eq_ignore_ascii_case(want)
            } else {
                got == want
            }
        })
    })
}

/// Segment-aware prefix match: `/foo` matches `/foo` and `/foo/x`, never
/// `/foobar`. `/` matches everything.
#[inline]
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.as_bytes().get(prefix.len()) {
        None => path == prefix,
        Some(b'/') => path.starts_with(prefix),
        Some(_) => false,
    }
}

/// A path whose lenient reading (see [`lenient_segment`]) picks another
/// route than the path itself: the caller answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousPath;

impl AmbiguousPath {
    pub fn reason(self) -> &'static str {
        "The request path is ambiguous: a segment's ;parameters, trailing dots or spaces would change its route."
    }
}

/// The route table, generic over what a route carries so this module stays
/// free of proxy concerns.
#[derive(Debug)]
pub struct RouteTable<T> {
    routes: Vec<T>,
    exact: HashMap<Box<str>, PathTable>,
    wildcard: HashMap<Box<str>, PathTable>,
    any: Option<PathTable>,
}

impl<T> RouteTable<T> {
    /// Builds the table with plain prefix matching for every route.
    pub fn build(items: impl IntoIterator<Item = (HostPattern, String, T)>) -> Self {
        Self::build_with(
            items
                .into_iter()
                .map(|(h, p, v)| (h, p, PathMatch::default(), v)),
        )
    }

    /// Builds the table. Duplicate (host, path) pairs are a config error
    /// caught earlier; here the later one would simply never be chosen.
    pub fn build_with(
        items: impl IntoIterator<Item = (HostPattern, String, PathMatch, T)>,
    ) -> Self {
        let mut routes = Vec::new();
        let mut exact: HashMap<Box<str>, PathTable> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, PathTable> = HashMap::new();
        let mut any: Option<PathTable> = None;
        for (host, path, m, value) in items {
            let id = routes.len() as u32;
            routes.push(value);
            let table = match host {
                HostPattern::Exact(h) => exact.entry(h.into_boxed_str()).or_default(),
                HostPattern::Wildcard(s) => wildcard.entry(s.into_boxed_str()).or_default(),
                HostPattern::Any => any.get_or_insert_with(PathTable::default),
            };
            table.insert(&path, m, id);
        }
        for t in exact.values_mut().chain(wildcard.values_mut()) {
            t.finish();
        }
        if let Some(t) = any.as_mut() {
            t.finish();
        }
        RouteTable {
            routes,
            exact,
            wildcard,
            any,
        }
    }

    /// Finds the route for an already normalised host (lowercase, no port,
    /// no trailing dot; see [`normalize_host`]) and a request path (no query).
    /// The path itself decides; see [`RouteTable::route`] for the request
    /// path's lookup.
    #[inline]
    pub fn lookup(&self, host: &str, path: &str) -> Option<&T> {
        self.lookup_id(host, path, Reading::Exact)
            .map(|id| &self.routes[id as usize])
    }

    /// The lookup every entry point uses (requests and forward-auth): the
    /// route for a normalised host and path, refused when the path's
    /// lenient reading would pick a different route (or none). Allocates
    /// nothing; the second lookup runs only for paths with `;`, `%3B`, or
    /// a segment ending in `.` or `%20`.
    #[inline]
    pub fn route(&self, host: &str, path: &str) -> Result<Option<&T>, AmbiguousPath> {
        let id = self.lookup_id(host, path, Reading::Exact);
        if has_lenient_reading(path) && self.lookup_id(host, path, Reading::Lenient) != id {
            return Err(AmbiguousPath);
        }
        Ok(id.map(|id| &self.routes[id as usize]))
    }

    fn lookup_id(&self, host: &str, path: &str, reading: Reading) -> Option<u32> {
        if let Some(id) = self.exact.get(host).and_then(|t| t.find(path, reading)) {
            return Some(id);
        }
        if !self.wildcard.is_empty() {
            // `*.example.com` matches any name that ends in `.example.com`.
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(id) = self.wildcard.get(rest).and_then(|t| t.find(path, reading)) {
                    return Some(id);
                }
            }
        }
        self.any.as_ref().and_then(|t| t.find(path, reading))
    }

    /// All routes in config order.
    pub fn routes(&self) -> &[T] {
        &self.routes
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(items: &[(&str, &str)]) -> RouteTable<String> {
        RouteTable::build(items.iter().map(|(h, p)| {
            (
                crate::config::parse_host_pattern(h).unwrap(),
                p.to_string(),
                format!("{h}{p}"),
            )
        }))
    }

    #[test]
    fn segment_aware_prefixes() {
        let cases = [
            ("/", "/", true),
            ("/", "/anything/at/all", true),
            ("/foo", "/foo", true),
            ("/foo", "/foo/", true),
            ("/foo", "/foo/bar", true),
            ("/foo", "/foobar", false),
            ("/foo", "/fo", false),
            ("/foo/bar", "/foo", false),
            ("/foo/bar", "/foo/bar/baz", true),
            ("/foo/bar", "/foo/barn", false),
        ];
        for (prefix, path, want) in cases {
            assert_eq!(prefix_matches(prefix, path), want, "{prefix} vs {path}");
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table(&[("a.com", "/"), ("a.com", "/api"), ("a.com", "/api/v2")]);
        let cases = [
            ("/", "a.com/"),
            ("/apix", "a.com/"),
            ("/api", "a.com/api"),
            ("/api/v1", "a.com/api"),
            ("/api/v2/users", "a.com/api/v2"),
        ];
        for (path, want) in cases {
            assert_eq!(t.lookup("a.com", path).unwrap(), want, "{path}");
        }
    }

    #[test]
    fn exact_beats_wildcard_beats_any() {
        let t = table(&[
            ("*", "/"),
            ("*.example.com", "/"),
            ("*.b.example.com", "/"),
            ("a.example.com", "/"),
            ("x.example.com", "/only"),
        ]);
        let cases = [
            ("a.example.com", "/", "a.example.com/"),
            ("z.example.com", "/", "*.example.com/"),
            ("deep.z.example.com", "/", "*.example.com/"),
            ("c.b.example.com", "/", "*.b.example.com/"),
            ("example.com", "/", "*/"),
            ("other.org", "/", "*/"),
            // exact host has no matching path: falls through to the wildcard
            ("x.example.com", "/else", "*.example.com/"),
            ("x.example.com", "/only/y", "x.example.com/only"),
        ];
        for (host, path, want) in cases {
            assert_eq!(t.lookup(host, path).unwrap(), want, "{host}{path}");
        }
    }

    fn table_with(items: &[(&str, PathMatch)]) -> RouteTable<String> {
        RouteTable::build_with(
            items
                .iter()
                .map(|(p, m)| (HostPattern::Any, p.to_string(), *m, p.to_string())),
        )
    }

    const PLAIN: PathMatch = PathMatch {
        matrix_params: false,
        ignore_case: false,
    };
    const MATRIX: PathMatch = PathMatch {
        matrix_params: true,
        ignore_case: false,
    };
    const NOCASE: PathMatch = PathMatch {
        matrix_params: false,
        ignore_case: true,
    };

    #[test]
    fn lenient_segments() {
        let cases = [
            ("private", "private"),
            ("private;x", "private"),
            ("private;x=1;y", "private"),
            ("private%3Bx", "private"),
            ("private%3bx", "private"),
            ("private.", "private"),
            ("private..", "private"),
            ("private%20", "private"),
            ("private.%20.", "private"),
            ("private;x.", "private"),
            ("a.b", "a.b"),
            ("a%20b", "a%20b"),
            (";x", ""),
            ("...", ""),
            ("", ""),
        ];
        for (seg, want) in cases {
            assert_eq!(lenient_segment(seg), want, "{seg}");
        }
    }

    #[test]
    fn which_paths_get_a_second_lookup() {
        let cases = [
            ("/", false),
            ("/api/v1/users", false),
            ("/static/app.js", false),
            ("/a%20b/c", false),
            ("/a%3Cb", false),
            ("/private;x/secret", true),
            ("/private/secret;jsessionid=1", true),
            ("/private%3Bx/secret", true),
            ("/private%3bx", true),
            ("/private./secret", true),
            ("/private.", true),
            ("/private%20/secret", true),
            ("/private%20", true),
            ("/...", true),
        ];
        for (path, want) in cases {
            assert_eq!(has_lenient_reading(path), want, "{path}");
        }
    }

    #[test]
    fn a_lenient_reading_that_changes_the_route_is_refused() {
        let t = table_with(&[("/", PLAIN), ("/private", PLAIN), ("/files", PLAIN)]);
        // (path, Ok(route) | Err(ambiguous))
        let cases: [(&str, Result<&str, AmbiguousPath>); 16] = [
            ("/private/secret", Ok("/private")),
            ("/public/x", Ok("/")),
            ("/private;x/secret", Err(AmbiguousPath)),
            ("/private;jsessionid=1", Err(AmbiguousPath)),
            ("/private%3Bx/secret", Err(AmbiguousPath)),
            ("/private./secret", Err(AmbiguousPath)),
            ("/private%20/secret", Err(AmbiguousPath)),
            ("/private.%20", Err(AmbiguousPath)),
            ("/;x/private/secret", Err(AmbiguousPath)),
            ("/.../private", Err(AmbiguousPath)),
            // Parameters that leave the route as it is are fine.
            ("/private/secret;jsessionid=1", Ok("/private")),
            ("/private/a./b", Ok("/private")),
            ("/public;x/y", Ok("/")),
            ("/files/report.", Ok("/files")),
            ("/filesx;y", Ok("/")),
            ("/privatex./y", Ok("/")),
        ];
        for (path, want) in cases {
            let got = t.route("h", path).map(|r| r.unwrap().as_str());
            assert_eq!(got, want, "{path}");
        }
        // No route either way is no ambiguity; none one way is.
        let t = table_with(&[("/private", PLAIN)]);
        assert_eq!(t.route("h", "/other;x"), Ok(None));
        assert_eq!(t.route("h", "/private;x/secret"), Err(AmbiguousPath));
    }

    #[test]
    fn route_options() {
        let t = table_with(&[
            ("/", PLAIN),
            ("/shop", MATRIX),
            ("/admin", NOCASE),
            ("/private", PLAIN),
        ]);
        let cases: [(&str, Result<&str, AmbiguousPath>); 14] = [
            ("/shop;region=eu/items", Ok("/shop")),
            ("/shop%3Bregion=eu", Ok("/shop")),
            ("/shop/items;page=2", Ok("/shop")),
            ("/SHOP/items", Ok("/")),
            // matrix_params is about `;` only: a trailing dot is still refused.
            ("/shop./items", Err(AmbiguousPath)),
            ("/admin/x", Ok("/admin")),
            ("/ADMIN/x", Ok("/admin")),
            ("/Admin", Ok("/admin")),
            ("/aDmIn;x/y", Err(AmbiguousPath)),
            ("/ADMIN./x", Err(AmbiguousPath)),
            ("/adminx", Ok("/")),
            ("/PRIVATE/x", Ok("/")),
            ("/private;x", Err(AmbiguousPath)),
            ("/private/x", Ok("/private")),
        ];
        for (path, want) in cases {
            let got = t.route("h", path).map(|r| r.unwrap().as_str());
            assert_eq!(got, want, "{path}");
        }
        // The option of the route that would take the lenient reading is
        // what counts, not the one the path happens to land on.
        let t = table_with(&[("/", MATRIX), ("/private", PLAIN)]);
        assert_eq!(t.route("h", "/private;x/y"), Err(AmbiguousPath));
    }

    #[test]
    fn no_match_is_none() {
        let t = table(&[("a.com", "/app")]);
        assert!(t.lookup("a.com", "/").is_none());
        assert!(t.lookup("b.com", "/app").is_none());
        assert!(t.lookup("x.a.com", "/app").is_none());
    }
}
