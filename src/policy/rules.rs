//! Header rules (`request_headers`, `response_headers`): remove, then set
//! (replacing), then add (appending), with `{placeholders}` filled in.
//! Names the gateway manages itself were refused by `config`.
//!
//! Names and literal values are resolved once, when the config is checked
//! (`HeaderName`, and `Template::fixed` a `HeaderValue` whose clone is a
//! reference count). Only a value with a placeholder is rendered per
//! request, so a route whose rules have none builds no placeholders at
//! all ([`uses_placeholders`]). A `remove` looks the name up by a scan of
//! the few names a request or response carries before it hashes it: most
//! requests do not have the header. Request values without placeholders
//! are not put in the map at all: [`literal_lines`] are written into the
//! upstream request's head by the forwarding step.
//!
//! Measured with `benches/load/profile.sh callgrind` and `ROUTE_EXTRA` a
//! rate limit that never triggers plus `set` + `remove` on the request and
//! `remove` on the response, minus the same with the rate limit alone:
//! the three rules cost 2,282 instructions per proxied request through
//! the map with placeholders always built (a `String` copy of the host, a
//! boxed pair, a map insert), 232 now (the README has the whole row).

use http::{HeaderMap, HeaderName, HeaderValue};

use super::Placeholders;
use crate::config::{HeaderRules, Piece, Template};

/// Up to this many distinct names, `remove` scans the names before it
/// hashes one: on the benchmark's request (3 names) and response (5) a
/// scan cost 47 and 67 instructions where `HeaderMap::remove` of an
/// absent name cost about 150 (it hashes the name first).
const SCAN_NAMES: usize = 16;

/// Whether any value of `rules` has a placeholder (else [`apply`] needs
/// none).
pub fn uses_placeholders(rules: &HeaderRules) -> bool {
    rules
        .set
        .iter()
        .chain(&rules.add)
        .any(|(_, t)| template_uses_placeholders(t))
}

fn template_uses_placeholders(t: &Template) -> bool {
    t.fixed.is_none() && t.pieces.iter().any(|p| !matches!(p, Piece::Text(_)))
}

/// Request rules whose values are all literal, as the header lines
/// `set` then `add` would leave in the request: the forwarding step writes
/// them straight into the upstream request's head (after the client's
/// headers, so an added value still follows the client's), and
/// [`remove_for_lines`] is all the header map sees. `None` when a value
/// has a placeholder, has whitespace at an end (HTTP/2 upstreams read the
/// lines back trimmed), or the name is one forwarding reads from the map
/// (`grpc-timeout`, the response deadline): those go through [`apply`].
pub fn literal_lines(rules: &HeaderRules) -> Option<Box<[u8]>> {
    let mut out = Vec::new();
    for (name, t) in rules.set.iter().chain(&rules.add) {
        let v = t.fixed.as_ref()?;
        if name == "grpc-timeout" || v.as_bytes().trim_ascii().len() != v.len() {
            return None;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Some(out.into_boxed_slice())
}

/// The header-map part of `rules` when their values are written as
/// [`literal_lines`]: `remove`, and the names `set` replaces.
pub fn remove_for_lines(rules: &HeaderRules, headers: &mut HeaderMap) {
    for name in rules.remove.iter().chain(rules.set.iter().map(|(n, _)| n)) {
        remove(headers, name);
    }
}

/// Applies `rules` to `headers`. `p` may be `None` only when
/// [`uses_placeholders`] is false for `rules`; a placeholder value without
/// them is left out (as a value that cannot be a header value is).
pub fn apply(rules: &HeaderRules, headers: &mut HeaderMap, p: Option<&Placeholders>) {
    for name in &rules.remove {
        remove(headers, name);
    }
    for (name, t) in &rules.set {
        if let Some(v) = render(t, p) {
            headers.insert(name.clone(), v);
        }
    }
    for (name, t) in &rules.add {
        if let Some(v) = render(t, p) {
            headers.append(name.clone(), v);
        }
    }
}

/// Removes every value of `name`, without hashing it when a scan of a
/// small map shows it is not there.
fn remove(headers: &mut HeaderMap, name: &HeaderName) {
    if headers.keys_len() <= SCAN_NAMES && !headers.keys().any(|k| k == name) {
        return;
    }
    headers.remove(name);
}

/// A template's value for this request; `None` if a placeholder's value
/// cannot be a header value (the header is then left out).
fn render(t: &Template, p: Option<&Placeholders>) -> Option<HeaderValue> {
    if let Some(v) = &t.fixed {
        return Some(v.clone());
    }
    let Some(p) = p else {
        debug_assert!(false, "a placeholder value rendered without placeholders");
        return None;
    };
    let mut out = String::with_capacity(t.source.len() + 32);
    for piece in &t.pieces {
        match piece {
            Piece::Text(s) => out.push_str(s),
            Piece::ClientIp => {
                use std::fmt::Write as _;
                let _ = write!(out, "{}", p.client_ip);
            }
            Piece::Host => out.push_str(p.host.as_str()),
            Piece::RequestId => out.push_str(p.request_id.to_str().unwrap_or("")),
            Piece::User => out.push_str(p.user.as_deref().unwrap_or("")),
            Piece::Scheme => out.push_str(p.scheme.as_str()),
        }
    }
    HeaderValue::from_str(&out).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::http::Scheme;
    use crate::policy::RequestHost;

    fn name(n: &str) -> HeaderName {
        HeaderName::from_bytes(n.as_bytes()).unwrap()
    }

    fn lit(v: &str) -> Template {
        Template {
            pieces: vec![Piece::Text(v.into())],
            fixed: Some(HeaderValue::from_str(v).unwrap()),
            source: v.into(),
        }
    }

    fn with_host(before: &str) -> Template {
        Template {
            pieces: vec![Piece::Text(before.into()), Piece::Host],
            fixed: None,
            source: format!("{before}{{host}}"),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(name(k), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// What a backend reads: the map's fields, then the written lines,
    /// each name's values in order.
    fn fields(h: &HeaderMap, lines: &[u8]) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (n, v) in h {
            out.entry(n.as_str().into())
                .or_default()
                .push(v.to_str().unwrap().into());
        }
        for line in std::str::from_utf8(lines).unwrap().split_terminator("\r\n") {
            let (n, v) = line.split_once(": ").unwrap();
            out.entry(n.into()).or_default().push(v.into());
        }
        out
    }

    fn placeholders(host: RequestHost) -> Placeholders {
        Placeholders {
            client_ip: "192.0.2.7".parse().unwrap(),
            host,
            request_id: HeaderValue::from_static("req-1"),
            user: None,
            scheme: Scheme::Https,
        }
    }

    fn literal_rules() -> HeaderRules {
        HeaderRules {
            set: vec![(name("x-env"), lit("prod")), (name("x-both"), lit("s"))],
            add: vec![(name("x-tag"), lit("fixed")), (name("x-both"), lit("a"))],
            remove: vec![name("x-debug"), name("x-tag-gone")],
        }
    }

    #[test]
    fn literal_lines_give_the_backend_what_the_map_path_gives() {
        let rules = literal_rules();
        let client = map(&[
            ("x-debug", "1"),
            ("x-env", "dev"),
            ("x-env", "dev2"),
            ("x-tag", "mine"),
            ("x-both", "client"),
            ("x-tag-gone", "1"),
            ("accept", "*/*"),
        ]);
        let mut by_map = client.clone();
        apply(&rules, &mut by_map, None);
        let lines = literal_lines(&rules).expect("all values are literal");
        let mut by_lines = client.clone();
        remove_for_lines(&rules, &mut by_lines);
        let want = fields(&by_map, b"");
        assert_eq!(fields(&by_lines, &lines), want);
        assert_eq!(want["x-env"], ["prod"]);
        assert_eq!(want["x-tag"], ["mine", "fixed"]);
        assert_eq!(want["x-both"], ["s", "a"]);
        assert!(!want.contains_key("x-debug") && !want.contains_key("x-tag-gone"));
        assert_eq!(want["accept"], ["*/*"]);
    }

    #[test]
    fn literal_lines_only_for_values_written_as_they_are() {
        assert_eq!(
            literal_lines(&HeaderRules::default()).as_deref(),
            Some(&b""[..])
        );
        let placeholder = HeaderRules {
            add: vec![(name("x-h"), with_host("to "))],
            ..literal_rules()
        };
        assert!(literal_lines(&placeholder).is_none());
        let padded = HeaderRules {
            set: vec![(name("x-pad"), lit(" padded"))],
            ..Default::default()
        };
        assert!(literal_lines(&padded).is_none());
        // Read from the map by forwarding (the response deadline).
        let grpc = HeaderRules {
            set: vec![(name("grpc-timeout"), lit("1S"))],
            ..Default::default()
        };
        assert!(literal_lines(&grpc).is_none());
    }

    #[test]
    fn placeholders_needed_only_by_values_that_use_them() {
        let rules = literal_rules();
        assert!(!uses_placeholders(&rules));
        // Literal values come out the same with or without placeholders.
        let mut with = map(&[("x-env", "dev")]);
        let mut without = with.clone();
        apply(
            &rules,
            &mut with,
            Some(&placeholders(RequestHost::Header(
                HeaderValue::from_static("a.test"),
            ))),
        );
        apply(&rules, &mut without, None);
        assert_eq!(with, without);

        let rules = HeaderRules {
            set: vec![(name("x-h"), with_host("to "))],
            ..Default::default()
        };
        assert!(uses_placeholders(&rules));
        for (host, want) in [
            (
                RequestHost::Header(HeaderValue::from_static("a.test:8080")),
                "to a.test:8080",
            ),
            (
                RequestHost::Authority("b.test".parse().unwrap()),
                "to b.test",
            ),
        ] {
            let mut h = HeaderMap::new();
            apply(&rules, &mut h, Some(&placeholders(host)));
            assert_eq!(h["x-h"], want);
        }
    }

    #[test]
    fn remove_takes_every_value_in_small_and_large_maps() {
        let mut small = map(&[("x-a", "1"), ("x-debug", "1"), ("x-debug", "2")]);
        remove(&mut small, &name("x-absent"));
        assert_eq!(small.len(), 3);
        remove(&mut small, &name("x-debug"));
        assert_eq!(small.len(), 1);
        assert!(small.contains_key("x-a"));

        // Past the scan's size: the map's own lookup.
        let mut large = HeaderMap::new();
        for i in 0..(SCAN_NAMES + 8) {
            large.append(name(&format!("x-h{i}")), HeaderValue::from_static("v"));
        }
        large.append(name("x-h3"), HeaderValue::from_static("w"));
        remove(&mut large, &name("x-absent"));
        assert_eq!(large.keys_len(), SCAN_NAMES + 8);
        remove(&mut large, &name("x-h3"));
        assert!(!large.contains_key("x-h3"));
        assert_eq!(large.keys_len(), SCAN_NAMES + 7);
    }
}
