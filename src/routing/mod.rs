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

mod host;

use std::collections::HashMap;

pub use host::{HOST_BUF_LEN, normalize_host};

use crate::config::HostPattern;

/// Paths of one host, longest prefix first.
#[derive(Debug, Default)]
struct PathTable {
    entries: Vec<(Box<str>, u32)>,
}

impl PathTable {
    fn insert(&mut self, prefix: &str, id: u32) {
        self.entries.push((prefix.into(), id));
    }

    fn finish(&mut self) {
        // Longest first; ties cannot happen (validation rejects duplicates).
        self.entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
    }

    #[inline]
    fn find(&self, path: &str) -> Option<u32> {
        self.entries
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(_, id)| *id)
    }
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
    /// Builds the table. Duplicate (host, path) pairs are a config error
    /// caught earlier; here the later one would simply never be chosen.
    pub fn build(items: impl IntoIterator<Item = (HostPattern, String, T)>) -> Self {
        let mut routes = Vec::new();
        let mut exact: HashMap<Box<str>, PathTable> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, PathTable> = HashMap::new();
        let mut any: Option<PathTable> = None;
        for (host, path, value) in items {
            let id = routes.len() as u32;
            routes.push(value);
            let table = match host {
                HostPattern::Exact(h) => exact.entry(h.into_boxed_str()).or_default(),
                HostPattern::Wildcard(s) => wildcard.entry(s.into_boxed_str()).or_default(),
                HostPattern::Any => any.get_or_insert_with(PathTable::default),
            };
            table.insert(&path, id);
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
    #[inline]
    pub fn lookup(&self, host: &str, path: &str) -> Option<&T> {
        self.lookup_id(host, path)
            .map(|id| &self.routes[id as usize])
    }

    fn lookup_id(&self, host: &str, path: &str) -> Option<u32> {
        if let Some(id) = self.exact.get(host).and_then(|t| t.find(path)) {
            return Some(id);
        }
        if !self.wildcard.is_empty() {
            // `*.example.com` matches any name that ends in `.example.com`.
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(id) = self.wildcard.get(rest).and_then(|t| t.find(path)) {
                    return Some(id);
                }
            }
        }
        self.any.as_ref().and_then(|t| t.find(path))
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

    #[test]
    fn no_match_is_none() {
        let t = table(&[("a.com", "/app")]);
        assert!(t.lookup("a.com", "/").is_none());
        assert!(t.lookup("b.com", "/app").is_none());
        assert!(t.lookup("x.a.com", "/app").is_none());
    }
}
