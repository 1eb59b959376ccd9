//! The property checks behind every fuzz target, shared word for word with
//! `tests/fuzz_regressions.rs` (both include this file with `#[path]`), so
//! an input kept in `fuzz/regressions/<target>/` is replayed in CI through
//! exactly the checks that found it.
//!
//! Each `pub fn <target>(data: &[u8])` decodes the raw fuzz bytes itself
//! (no `arbitrary`: the main crate's tests must build on stable without
//! extra dependencies) and panics when a property does not hold.
//!
//! Depends only on `portcullis` and `http`.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use portcullis::config::{HostPattern, parse, parse_host_pattern};
use portcullis::http::normalize::normalize_path;
use portcullis::proxy::headers::{
    is_forwarding_header, is_identity_header, remove_hop_by_hop, strip_spoofable,
};
use portcullis::routing::{HOST_BUF_LEN, RouteTable, normalize_host, prefix_matches};

/// One target's checks: panics when a property does not hold.
pub type Check = fn(&[u8]);

/// The targets, by the directory name their regressions live under.
pub const TARGETS: &[(&str, Check)] = &[
    ("config_text", config_text),
    ("config_structured", config_structured),
    ("path_route", path_route),
    ("headers", headers),
];

// ---------------------------------------------------------------------------
// Byte source: turns fuzz bytes into choices. Reads past the end as zeros so
// every input decodes to something.

pub struct Src<'a> {
    data: &'a [u8],
}

impl<'a> Src<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Src { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        let v = if n > 256 {
            u16::from_le_bytes([self.byte(), self.byte()]) as usize
        } else {
            self.byte() as usize
        };
        v % n
    }
    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    /// Up to `max` raw bytes.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = self.below(max + 1).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    pub fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(self.bytes(max)).into_owned()
    }
    pub fn i64(&mut self) -> i64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        i64::from_le_bytes(b)
    }
}

// ---------------------------------------------------------------------------
// 1. Config parser.

const CONFIG_FILE: &str = "fuzz.toml";

/// Config text that makes the parser read from a device or a pseudo file
/// (`/dev/zero` never ends): not a parser bug, so not fuzzed.
fn reads_special_files(text: &str) -> bool {
    ["/dev", "/proc", "/sys", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
}

/// Any UTF-8 text: `parse` never panics, and its errors are located.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_config(text);
}

/// A duration the config accepts is used as `Instant::now() + d` (request
/// and body timeouts, ACME retries), as milliseconds in a `u64` added to a
/// monotonic clock (upstream ejection), and as `i64` seconds (ACME state):
/// none of that may overflow.
pub fn check_duration_usable(d: std::time::Duration, what: &str) {
    assert!(
        std::time::Instant::now().checked_add(d).is_some(),
        "{what}: duration {d:?} overflows Instant::now() + d"
    );
    assert!(
        d.as_millis() < (u64::MAX / 2) as u128 && i64::try_from(d.as_secs()).is_ok(),
        "{what}: duration {d:?} overflows as u64 milliseconds / i64 seconds"
    );
}

/// Every quoted string in config text that `parse_duration` accepts.
fn check_durations_in(text: &str) {
    for (i, piece) in text.split('"').enumerate() {
        if i % 2 == 1
            && piece.len() < 64
            && let Ok(d) = portcullis::config::parse_duration(piece)
        {
            check_duration_usable(d, &format!("parse_duration({piece:?})"));
        }
    }
}

/// Parses `text` and checks what comes back.
pub fn check_config(text: &str) {
    if reads_special_files(text) {
        return;
    }
    check_durations_in(text);
    portcullis::install_crypto_provider();
    let n_lines = text.split('\n').count();
    match parse(Path::new(CONFIG_FILE), text) {
        Err(errors) => {
            assert!(!errors.0.is_empty(), "Err with no errors for {text:?}");
            let mut last = 0;
            for e in &errors.0 {
                let shown = e.to_string();
                assert!(
                    shown.starts_with(CONFIG_FILE),
                    "error does not name the file: {shown}"
                );
                assert!(!e.message.is_empty(), "error without a message: {e:?}");
                if e.line == 0 {
                    // Not tied to a place: then it must not pretend to be
                    // about a key, or it must say which file it is about.
                    // The one whole-file error the validator reports is the
                    // missing listener (key `server`).
                    let whole_file = e.key == "server" && e.message.starts_with("no listener");
                    assert!(
                        e.key.is_empty() || e.message.contains(CONFIG_FILE) || whole_file,
                        "error with a key but no line: {e:?}\n--- input ---\n{text}"
                    );
                } else {
                    assert!(
                        e.line <= n_lines,
                        "line {} past the end ({n_lines} lines): {e:?}",
                        e.line
                    );
                    assert!(e.column >= 1, "line without a column: {e:?}");
                }
                assert!(e.line >= last, "errors not sorted by line: {:?}", errors.0);
                last = e.line;
            }
            let _ = errors.to_string();
        }
        Ok(config) => {
            let _ = config.summary();
            let _ = format!("{config:?}");
            let mut names = BTreeSet::new();
            let mut seen = BTreeSet::new();
            for r in &config.routes {
                assert!(r.path.starts_with('/'), "route path {:?}", r.path);
                assert!(
                    r.path == "/" || !r.path.ends_with('/'),
                    "route path {:?} has a trailing /",
                    r.path
                );
                assert!(r.line >= 1 && r.line <= n_lines, "route line {}", r.line);
                check_duration_usable(r.timeout, &format!("route {} timeout", r.name));
                assert!(names.insert(r.name.clone()), "duplicate name {}", r.name);
                assert!(
                    seen.insert((r.host.to_string(), r.path.clone())),
                    "duplicate host+path {} {}",
                    r.host,
                    r.path
                );
                // The host pattern round-trips through its own parser.
                assert_eq!(
                    parse_host_pattern(&r.host.to_string()).as_ref(),
                    Ok(&r.host),
                    "host pattern does not round-trip"
                );
            }
            // Every route of a valid config is reachable through the table:
            // its own host and its own path find it (an exact host always;
            // a wildcard or `*` unless a more specific host covers the
            // probe name, which the brute-force reference decides).
            let list: Vec<(HostPattern, String)> = config
                .routes
                .iter()
                .map(|r| (r.host.clone(), r.path.clone()))
                .collect();
            let table = RouteTable::build(
                list.iter()
                    .enumerate()
                    .map(|(i, (h, p))| (h.clone(), p.clone(), i)),
            );
            for (i, r) in config.routes.iter().enumerate() {
                let host = match &r.host {
                    HostPattern::Exact(h) => h.clone(),
                    HostPattern::Wildcard(s) => format!("zz-fuzz.{s}"),
                    HostPattern::Any => "zz-fuzz.invalid".to_string(),
                };
                let got = table.lookup(&host, &r.path).copied();
                assert_eq!(
                    got,
                    reference_lookup(&list, &host, &r.path),
                    "lookup({host:?}, {:?})",
                    r.path
                );
                if matches!(r.host, HostPattern::Exact(_)) {
                    assert_eq!(got, Some(i), "route {i} ({}{}) not found", r.host, r.path);
                }
                assert!(got.is_some(), "route {i} ({}{}) not found", r.host, r.path);
            }
        }
    }
}

/// Keys the config knows, by section, for structure-aware edits.
const SECTIONS: &[&str] = &[
    "[server]",
    "[acme]",
    "[[certificate]]",
    "[[route]]",
    "[oidc.authentik]",
    "[oidc.other]",
    "[oidc]",
    "[route]",
    "[server.hsts]",
    "[[route.auth]]",
    "[limits]",
    "[sever]",
];
const KEYS: &[&str] = &[
    // server
    "http",
    "https",
    "admin",
    "admin_token_file",
    "trusted_proxies",
    "state_dir",
    "grace_period",
    "upstream_connect_timeout",
    "upstream_timeout",
    "header_read_timeout",
    "upstream_idle_timeout",
    "workers",
    "tls_handshake_timeout",
    "hsts",
    // acme
    "email",
    "directory",
    "challenge",
    "ca_file",
    "max_concurrent_orders",
    "retry_min",
    "retry_max",
    // certificate
    "hosts",
    "cert_file",
    "key_file",
    "self_signed",
    // route
    "name",
    "host",
    "path",
    "upstream",
    "redirect",
    "respond",
    "strip_prefix",
    "preserve_host",
    "timeout",
    "https_redirect",
    "auth",
    "identity_headers",
    // oidc
    "issuer",
    "client_id",
    "client_secret_file",
    "scopes",
    "cookie_domain",
    "session_ttl",
    "audiences",
    "insecure_cookies",
    // inline-table keys
    "to",
    "status",
    "keep_path",
    "body",
    "content_type",
    "max_age",
    "include_subdomains",
    "preload",
    "oidc",
    "groups",
    "emails",
    "email_domains",
    "route",
    "server",
    // hardening (limits, health, client IP)
    "allow_ips",
    "deny_ips",
    "max_body",
    "health_check",
    "interval",
    "max_connections",
    "max_header_bytes",
    "request_body_timeout",
    "upstream_eject_after",
    "upstream_eject_for",
    // route path matching
    "matrix_params",
    "case_insensitive_path",
];
const STRINGS: &[&str] = &[
    "",
    "127.0.0.1:0",
    "0.0.0.0:443",
    "[::1]:8443",
    "[::]:80",
    "off",
    "localhost:80",
    "*",
    "*.example.com",
    "a.example.com",
    "A.Example.COM.",
    "*.*.com",
    "xn--bcher-kva.example",
    "a_b.example",
    "/",
    "/api",
    "/api/",
    "/a//b",
    "/a/../b",
    "/.portcullis/x",
    "/%2e",
    "http://127.0.0.1:1",
    "http://127.0.0.1:1/base/",
    "http://u:p@h",
    "https://x.example.com",
    "https://x.example.com/path?q",
    "//evil.example",
    "0",
    "30s",
    "500ms",
    "1h30m",
    "12h",
    "365d",
    "18446744073709551615s",
    "99999999999999999999d",
    "1x",
    "public",
    "authentik",
    "forwarded",
    "none",
    "openid",
    "letsencrypt",
    "letsencrypt-staging",
    "http-01",
    "tls-alpn-01",
    "dns-01",
    "ops@example.com",
    "10.0.0.0/8",
    "::1/128",
    "10.0.0.0/33",
    "text/html; charset=utf-8",
    "bad\nvalue",
    "secret",
    "fuzz.toml",
    SECRET,
    "64KiB",
    "10MB",
    "1GiB",
    "18446744073709551615GiB",
    "/healthz",
    "0.0.0.0/0",
    "::/0",
    "1.2.3.4",
];
const INTS: &[i64] = &[
    0,
    1,
    -1,
    200,
    301,
    308,
    399,
    404,
    599,
    600,
    64,
    65,
    1024,
    1025,
    i64::MAX,
    i64::MIN,
    u16::MAX as i64,
    u16::MAX as i64 + 200,
];

fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn value(src: &mut Src<'_>, depth: u8) -> String {
    let kinds = if depth >= 2 { 6 } else { 9 };
    match src.below(kinds) {
        0 | 1 => toml_string(src.pick(STRINGS)),
        2 => toml_string(&src.text(40)),
        3 => src.pick(INTS).to_string(),
        4 => src.i64().to_string(),
        5 => if src.bool() { "true" } else { "false" }.to_string(),
        6 => {
            let n = src.below(4);
            let items: Vec<String> = (0..n).map(|_| value(src, depth + 1)).collect();
            format!("[{}]", items.join(", "))
        }
        7 => {
            let n = src.below(4);
            let items: Vec<String> = (0..n)
                .map(|_| format!("{} = {}", src.pick(KEYS), value(src, depth + 1)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        // raw text, most likely a syntax error: keeps the recovery path busy
        _ => src.text(24),
    }
}

/// Stands for the path of a readable secret file (see [`secret_file`]).
const SECRET: &str = "@SECRET@";

/// A secret file the config can name, so `[oidc.NAME]` and
/// `admin_token_file` validate and routes with `auth = { oidc }` are
/// reached. Written once under the temp dir.
fn secret_file() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join("portcullis-fuzz");
        let file = dir.join("secret");
        if std::fs::read_to_string(&file).ok().as_deref() != Some("s3cret\n") {
            let _ = std::fs::create_dir_all(&dir);
            let tmp = dir.join(format!("secret.{}", std::process::id()));
            let _ = std::fs::write(&tmp, "s3cret\n");
            let _ = std::fs::rename(&tmp, &file);
        }
        file.to_string_lossy().into_owned()
    })
}

/// A config using most of the file format: https with a self-signed
/// certificate, an OIDC provider, protected routes, health checks, limits.
const RICH_BASE: &str = r#"[server]
http = "127.0.0.1:0"
https = "127.0.0.1:0"
admin = "127.0.0.1:0"
admin_token_file = "@SECRET@"
trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]
grace_period = "5s"
hsts = { max_age = "365d", include_subdomains = true, preload = true }
[[certificate]]
hosts = ["*.example.com", "example.com"]
self_signed = true
[oidc.authentik]
issuer = "https://auth.example.com/application/o/portcullis/"
client_id = "portcullis"
client_secret_file = "@SECRET@"
cookie_domain = "example.com"
session_ttl = "12h"
[[route]]
host = "app.example.com"
upstream = ["http://10.0.0.3:3000", "http://10.0.0.4:3000/base/"]
auth = { oidc = "authentik", groups = ["admins"], emails = ["a@example.com"], email_domains = ["example.com"] }
identity_headers = "forwarded"
health_check = { path = "/healthz", interval = "10s", timeout = "2s" }
allow_ips = ["10.0.0.0/8"]
max_body = "10MB"
[[route]]
host = "*.example.com"
path = "/api/"
upstream = "http://10.0.0.5:8080"
strip_prefix = true
timeout = "120s"
[[route]]
host = "example.com"
redirect = { to = "https://app.example.com/", status = 301, keep_path = false }
[[route]]
host = "*"
respond = { status = 404, body = "nothing here" }
"#;

/// [`RICH_BASE`] with the secret file filled in.
pub fn rich_base() -> String {
    RICH_BASE.replace(SECRET, secret_file())
}

/// Starts from `config/quickstart.toml` or a richer built-in config and
/// applies edits chosen by the input: replace a value, add a key, delete or
/// duplicate a line, add a section. Most results are syntactically valid
/// TOML, so the fuzzer spends its time in the validator rather than in the
/// TOML tokenizer. `@SECRET@` is replaced by a readable secret file.
pub fn config_structured(data: &[u8]) {
    const QUICKSTART: &str = include_str!("../config/quickstart.toml");
    let mut src = Src::new(data);
    let base = if src.bool() { RICH_BASE } else { QUICKSTART };
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    let edits = src.below(16);
    for _ in 0..edits {
        if lines.is_empty() {
            lines.push("[server]".into());
        }
        let at = src.below(lines.len());
        match src.below(6) {
            0 | 1 => {
                // Replace the value of a `key = value` line.
                if let Some(eq) = lines[at].find(" = ") {
                    let key = lines[at][..eq].to_string();
                    lines[at] = format!("{key} = {}", value(&mut src, 0));
                } else {
                    lines[at] = format!("{} = {}", src.pick(KEYS), value(&mut src, 0));
                }
            }
            2 => {
                let l = format!("{} = {}", src.pick(KEYS), value(&mut src, 0));
                lines.insert(at + 1, l);
            }
            3 => {
                lines.remove(at);
            }
            4 => {
                let l = lines[at].clone();
                lines.insert(at + 1, l);
            }
            _ => {
                let s = src.pick(SECTIONS).to_string();
                lines.insert(at, s);
            }
        }
    }
    let text = lines.join("\n").replace(SECRET, secret_file());
    check_config(&text);
}

// ---------------------------------------------------------------------------
// 2. Path normaliser, host normaliser and route matcher.

const LABELS: &[&str] = &["a", "b", "example", "com", "x-y", "A", "_s", "xn--d", "0"];
const ROUTE_SEGMENTS: &[&str] = &[
    "api",
    "v1",
    "v2",
    "a",
    "b",
    "foo",
    "foobar",
    "fo",
    ".portcullis",
    "x.y",
    "",
];
const PATH_PIECES: &[&str] = &[
    "/",
    "//",
    "/.",
    "/..",
    ".",
    "..",
    "api",
    "v1",
    "a",
    "b",
    "foo",
    "foobar",
    "%2e",
    "%2E%2e",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "%00",
    "%0a",
    "%7f",
    "%41",
    "%61",
    "%7e",
    "%25",
    "%252f",
    "%",
    "%4",
    "%zz",
    "%c3%a9",
    "é",
    ";",
    "?",
    "#",
    "%3f",
    "\t",
    "\u{7f}",
    "%2e%2e%2f",
];

/// A route prefix the validator would accept (mirrors
/// `config::validate::normalize_route_path`, which is private).
fn valid_route_path(p: &str) -> Option<String> {
    if !p.starts_with('/')
        || p.contains(['?', '#', '\\', '%'])
        || p.bytes().any(|b| b <= b' ' || b == 0x7f)
    {
        return None;
    }
    let t = if p.len() > 1 {
        p.trim_end_matches('/')
    } else {
        p
    };
    if t.is_empty() {
        return Some("/".into());
    }
    if t != "/"
        && t[1..]
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return None;
    }
    Some(t.to_string())
}

fn host_name(src: &mut Src<'_>) -> String {
    let n = 1 + src.below(4);
    (0..n)
        .map(|_| src.pick(LABELS))
        .collect::<Vec<_>>()
        .join(".")
}

fn host_pattern_text(src: &mut Src<'_>) -> String {
    match src.below(6) {
        0 => "*".into(),
        1 | 2 => host_name(src),
        3 | 4 => format!("*.{}", host_name(src)),
        _ => src.text(16),
    }
}

fn request_host(src: &mut Src<'_>) -> String {
    let mut h = match src.below(8) {
        0 => src.text(24),
        1 => format!(
            "[{}]",
            src.pick(&["::1", "2001:DB8::1", "", "::ffff:1.2.3.4", "z"])
        ),
        2 => src
            .pick(&[
                "127.0.0.1",
                "1.2.3.4",
                "",
                ".",
                "..",
                ":",
                "[",
                "]",
                "a..",
                "a.:",
            ])
            .into(),
        _ => host_name(src),
    };
    if src.below(4) == 0 {
        h.push('.');
    }
    if src.below(4) == 0 {
        h.push_str(src.pick(&[":80", ":", ":443", ":65536", ":123456", ":x", "::1"]));
    }
    if src.below(3) == 0 {
        h = h.to_ascii_uppercase();
    }
    h
}

fn request_path(src: &mut Src<'_>) -> String {
    if src.below(8) == 0 {
        return src.text(48);
    }
    let mut p = String::from("/");
    for _ in 0..src.below(10) {
        if src.below(6) == 0 {
            p.push_str(&src.text(4));
        } else {
            p.push_str(src.pick(PATH_PIECES));
        }
        if src.bool() {
            p.push('/');
        }
    }
    p
}

/// Independent re-implementation of the normaliser (see its module docs),
/// written for clarity, not speed: decode, then resolve segments with a stack.
pub fn reference_normalize(path: &str) -> Option<String> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return None;
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' || c < 0x20 || c == 0x7f {
            return None;
        }
        if c == b'%' {
            let hi = b.get(i + 1).and_then(|&c| hex(c))?;
            let lo = b.get(i + 2).and_then(|&c| hex(c))?;
            let v = hi * 16 + lo;
            if v == b'/' || v == b'\\' || v < 0x20 || v == 0x7f {
                return None;
            }
            if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                decoded.push(v);
            } else {
                decoded.extend(format!("%{v:02X}").bytes());
            }
            i += 3;
        } else {
            decoded.push(c);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).ok()?;
    let segs: Vec<&str> = decoded[1..].split('/').collect();
    let mut stack: Vec<&str> = Vec::new();
    for s in &segs {
        match *s {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            s => stack.push(s),
        }
    }
    let mut out = format!("/{}", stack.join("/"));
    let last = *segs.last().unwrap_or(&"");
    if !stack.is_empty() && matches!(last, "" | "." | "..") {
        out.push('/');
    }
    Some(out)
}

/// Properties of one normalised path.
pub fn check_normalized_path(raw: &str) -> Option<String> {
    let got = normalize_path(raw);
    let want = reference_normalize(raw);
    match (&got, &want) {
        (Ok(g), Some(w)) => assert_eq!(g.as_ref(), w.as_str(), "normalize_path({raw:?})"),
        (Err(_), None) => {}
        _ => panic!("normalize_path({raw:?}) = {got:?}, reference says {want:?}"),
    }
    let p = got.ok()?.into_owned();
    assert!(p.starts_with('/'), "{raw:?} -> {p:?}: not absolute");
    assert!(!p.contains("//"), "{raw:?} -> {p:?}: empty segment");
    assert!(
        !p.contains("/./") && !p.contains("/../") && !p.ends_with("/.") && !p.ends_with("/.."),
        "{raw:?} -> {p:?}: dot segment"
    );
    let upper = p.to_ascii_uppercase();
    assert!(
        !upper.contains("%2F") && !upper.contains("%5C") && !p.contains('\\'),
        "{raw:?} -> {p:?}: separator survives"
    );
    assert!(
        !p.bytes().any(|b| b < 0x20 || b == 0x7f),
        "{raw:?} -> {p:?}: control byte"
    );
    // Every escape left is well formed, uppercase and not for an unreserved byte.
    let pb = p.as_bytes();
    for (i, _) in p.match_indices('%') {
        let h = &pb[i + 1..(i + 3).min(pb.len())];
        assert!(
            h.len() == 2
                && h.iter()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)),
            "{raw:?} -> {p:?}: bad escape left"
        );
    }
    let again = normalize_path(&p);
    assert_eq!(
        again.as_deref(),
        Ok(p.as_str()),
        "not idempotent: {raw:?} -> {p:?}"
    );
    assert!(
        matches!(again, Ok(Cow::Borrowed(_))) || p.contains("/.") || p.contains('%'),
        "a normalised path is copied again: {p:?}"
    );
    Some(p)
}

/// Properties of one normalised host.
pub fn check_normalized_host(raw: &str) -> Option<String> {
    let mut buf = [0u8; HOST_BUF_LEN];
    let h = normalize_host(raw, &mut buf)?.to_string();
    assert!(!h.is_empty(), "{raw:?} -> empty host");
    assert_eq!(h, h.to_ascii_lowercase(), "{raw:?} -> {h:?}: not lowercase");
    assert!(!h.ends_with('.'), "{raw:?} -> {h:?}: trailing dot");
    if h.starts_with('[') {
        assert!(
            h.ends_with(']'),
            "{raw:?} -> {h:?}: port after IPv6 literal"
        );
        assert_eq!(h.matches(']').count(), 1, "{raw:?} -> {h:?}");
    } else {
        assert!(!h.contains(':'), "{raw:?} -> {h:?}: port left");
    }
    assert!(h.len() <= HOST_BUF_LEN);
    let mut buf2 = [0u8; HOST_BUF_LEN];
    assert_eq!(
        normalize_host(&h, &mut buf2),
        Some(h.as_str()),
        "not idempotent: {raw:?} -> {h:?}"
    );
    Some(h)
}

/// A normalised path as the most lenient backend reads it, written
/// independently of `routing::lenient_segment`: every segment cut at `;`
/// or `%3B`, trailing `.` and `%20` removed, segments left empty dropped.
fn reference_lenient(path: &str) -> String {
    let mut out = String::new();
    for seg in path.split('/').skip(1) {
        let lower = seg.to_ascii_lowercase();
        let cut = [lower.find(';'), lower.find("%3b")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(seg.len());
        let mut s = &seg[..cut];
        while let Some(rest) = s.strip_suffix('.').or_else(|| s.strip_suffix("%20")) {
            s = rest;
        }
        if !s.is_empty() {
            out.push('/');
            out.push_str(s);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn reference_prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/" || path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// Brute force over the route list: the first host tier (exact, then
/// wildcards from the longest suffix, then `*`) with any matching prefix,
/// and within it the longest matching prefix.
fn reference_lookup(routes: &[(HostPattern, String)], host: &str, path: &str) -> Option<usize> {
    let mut tiers: Vec<(usize, Vec<usize>)> = Vec::new(); // (rank, route ids); higher rank first
    let mut by_rank: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, (pat, _)) in routes.iter().enumerate() {
        let rank = match pat {
            HostPattern::Exact(h) if h == host => usize::MAX,
            HostPattern::Wildcard(s) if host.ends_with(&format!(".{s}")) => 1 + s.len(),
            HostPattern::Any => 0,
            _ => continue,
        };
        by_rank.entry(rank).or_default().push(i);
    }
    tiers.extend(by_rank.into_iter().rev());
    for (_, ids) in tiers {
        let best = ids
            .into_iter()
            .filter(|&i| reference_prefix_matches(&routes[i].1, path))
            .max_by_key(|&i| routes[i].1.len());
        if best.is_some() {
            return best;
        }
    }
    None
}

pub fn path_route(data: &[u8]) {
    let mut src = Src::new(data);

    // The route set, as validation would leave it.
    let mut routes: Vec<(HostPattern, String)> = Vec::new();
    for _ in 0..src.below(12) {
        let pat_text = host_pattern_text(&mut src);
        let path = if src.below(8) == 0 {
            src.text(12)
        } else {
            let mut p = String::new();
            for _ in 0..src.below(4) {
                p.push('/');
                p.push_str(src.pick(ROUTE_SEGMENTS));
            }
            if p.is_empty() || src.below(4) == 0 {
                p.push('/');
            }
            p
        };
        let Ok(pat) = parse_host_pattern(&pat_text) else {
            continue;
        };
        let Some(path) = valid_route_path(&path) else {
            continue;
        };
        if !routes.iter().any(|(h, p)| *h == pat && *p == path) {
            routes.push((pat, path));
        }
    }
    let table = RouteTable::build(
        routes
            .iter()
            .enumerate()
            .map(|(i, (h, p))| (h.clone(), p.clone(), i)),
    );

    // A few requests against it.
    for _ in 0..1 + src.below(4) {
        let raw_host = request_host(&mut src);
        let raw_path = request_path(&mut src);
        // Raw, unnormalised input must not panic either.
        let _ = table.lookup(&raw_host, &raw_path);

        let host = check_normalized_host(&raw_host);
        let path = check_normalized_path(&raw_path);
        let (Some(host), Some(path)) = (host, path) else {
            continue;
        };
        for (_, prefix) in &routes {
            assert_eq!(
                prefix_matches(prefix, &path),
                reference_prefix_matches(prefix, &path),
                "prefix_matches({prefix:?}, {path:?})"
            );
        }
        let got = table.lookup(&host, &path).copied();
        let want = reference_lookup(&routes, &host, &path);
        if let Some(i) = got {
            assert!(
                prefix_matches(&routes[i].1, &path),
                "chosen route {i} {:?} does not match {path:?}",
                routes[i]
            );
        }
        assert_eq!(got, want, "lookup({host:?}, {path:?}) over {routes:?}");

        // The lookup every entry point uses: the path's route when its
        // lenient reading agrees, refused when it does not.
        let lenient = reference_lenient(&path);
        let lenient_want = reference_lookup(&routes, &host, &lenient);
        match table.route(&host, &path) {
            Ok(r) => {
                assert_eq!(r.copied(), got, "route({host:?}, {path:?})");
                assert_eq!(
                    lenient_want, got,
                    "route({host:?}, {path:?}) allowed, but {lenient:?} routes elsewhere over {routes:?}"
                );
            }
            Err(_) => assert_ne!(
                lenient_want, got,
                "route({host:?}, {path:?}) refused, but {lenient:?} routes the same over {routes:?}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// 3. Header sanitiser.

const HEADER_NAMES: &[&str] = &[
    "connection",
    "Connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "close",
    "host",
    "accept",
    "cookie",
    "x-secret",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x_forwarded_for",
    "x.forwarded.host",
    "forwarded",
    "x-real-ip",
    "x_real_ip",
    "x-forwarded-user",
    "X_Forwarded_Email",
    "x.forwarded.preferred_username",
    "x-forwarded-groups",
    "x-authentik-username",
    "X_AUTHENTIK_GROUPS",
    "x.authentik.email",
    "x-authentik-",
    "x-authentik",
    "x-auth-request-user",
    "remote-user",
    "remote_user",
    "x-webauth-user",
];

fn header_name_bytes(src: &mut Src<'_>) -> Vec<u8> {
    match src.below(8) {
        0 => src.bytes(12).to_vec(),
        1 => {
            // A known name with its separators and case scrambled.
            let base = src.pick(HEADER_NAMES);
            base.bytes()
                .map(|b| match (b, src.below(4)) {
                    (b'-' | b'_' | b'.', 0) => b'_',
                    (b'-' | b'_' | b'.', 1) => b'.',
                    (b'-' | b'_' | b'.', 2) => b'-',
                    (b, 3) => b.to_ascii_uppercase(),
                    (b, _) => b,
                })
                .collect()
        }
        _ => src.pick(HEADER_NAMES).as_bytes().to_vec(),
    }
}

fn connection_value(src: &mut Src<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..1 + src.below(5) {
        if i > 0 {
            v.extend_from_slice(src.pick(&[&b","[..], b", ", b" ,", b",,", b"\t,"]));
        }
        match src.below(6) {
            0 => v.extend_from_slice(src.bytes(8)),
            1 => {
                v.extend_from_slice(src.pick(&[&b"close"[..], b"keep-alive", b"Upgrade", b"\xff"]))
            }
            _ => v.extend_from_slice(&header_name_bytes(src)),
        }
    }
    v
}

fn lower_token(t: &[u8]) -> Vec<u8> {
    let t = t.trim_ascii();
    t.to_ascii_lowercase()
}

/// Names a Connection header lists (lowercased), read byte-wise as a
/// backend or the next proxy would.
fn connection_named(h: &HeaderMap) -> BTreeSet<Vec<u8>> {
    h.get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(lower_token)
        .filter(|t| !t.is_empty())
        .collect()
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// The header names DESIGN.md says a client may never send to a backend,
/// in normalised form (lowercase, `_` and `.` read as `-`).
fn design_says_identity(norm: &str) -> bool {
    norm.starts_with("x-authentik-")
        || matches!(
            norm,
            "x-forwarded-user"
                | "x-forwarded-email"
                | "x-forwarded-preferred-username"
                | "x-forwarded-groups"
        )
}

fn design_says_forwarding(norm: &str) -> bool {
    norm.starts_with("x-forwarded-") || norm == "forwarded" || norm == "x-real-ip"
}

fn norm_name(n: &str) -> String {
    n.bytes()
        .map(|b| match b {
            b'_' | b'.' => '-',
            b => b.to_ascii_lowercase() as char,
        })
        .collect()
}

fn values(h: &HeaderMap, n: &HeaderName) -> Vec<HeaderValue> {
    h.get_all(n).iter().cloned().collect()
}

pub fn headers(data: &[u8]) {
    let mut src = Src::new(data);
    let flags = src.byte();
    let trusted = flags & 1 == 1;
    let keep_upgrade = flags & 2 == 2;
    let mut original = HeaderMap::new();
    for _ in 0..src.below(24) {
        let name = header_name_bytes(&mut src);
        let Ok(name) = HeaderName::from_bytes(&name) else {
            continue;
        };
        let value = if name == http::header::CONNECTION || src.below(8) == 0 {
            connection_value(&mut src)
        } else {
            src.bytes(16).to_vec()
        };
        let Ok(value) = HeaderValue::from_bytes(&value) else {
            continue;
        };
        original.append(name, value);
    }

    // strip_spoofable: removes exactly the spoofable names, nothing else.
    let mut stripped = original.clone();
    strip_spoofable(&mut stripped, trusted);
    for name in original.keys() {
        let s = name.as_str();
        let norm = norm_name(s);
        if design_says_identity(&norm) {
            assert!(is_identity_header(s), "{s:?} is an identity header");
        }
        if design_says_forwarding(&norm) {
            assert!(is_forwarding_header(s), "{s:?} is a forwarding header");
        }
        let doomed = is_identity_header(s) || (!trusted && is_forwarding_header(s));
        if doomed {
            assert!(
                !stripped.contains_key(name),
                "{s:?} survived strip_spoofable(trusted={trusted})"
            );
        } else {
            assert_eq!(
                values(&stripped, name),
                values(&original, name),
                "strip_spoofable(trusted={trusted}) touched {s:?}"
            );
        }
    }
    for name in stripped.keys() {
        assert!(!is_identity_header(name.as_str()), "{name} left");
        if !trusted {
            assert!(!is_forwarding_header(name.as_str()), "{name} left");
        }
    }
    assert!(stripped.len() <= original.len());

    // remove_hop_by_hop, on the raw request and after stripping.
    for before in [&original, &stripped] {
        let named = connection_named(before);
        let mut after = before.clone();
        remove_hop_by_hop(&mut after, keep_upgrade);
        let exempt = |n: &str| keep_upgrade && (n == "upgrade" || n == "connection");
        for name in after.keys() {
            let s = name.as_str();
            if exempt(s) {
                continue;
            }
            assert!(
                !named.contains(s.as_bytes()),
                "{s:?} is named in Connection {:?} but survived (keep_upgrade={keep_upgrade})",
                values(before, &http::header::CONNECTION)
            );
            assert!(!HOP_BY_HOP.contains(&s), "hop-by-hop {s:?} survived");
        }
        if keep_upgrade {
            // An upgrade being relayed carries exactly `Connection: upgrade`;
            // a map with no Upgrade and no hop-by-hop header at all may be
            // left as it is (the fast path).
            let conn = values(&after, &http::header::CONNECTION);
            if before.contains_key(http::header::UPGRADE) {
                assert_eq!(conn, vec![HeaderValue::from_static("upgrade")]);
            } else {
                assert!(
                    conn.is_empty() || conn == vec![HeaderValue::from_static("upgrade")],
                    "Connection {conn:?} left with keep_upgrade"
                );
            }
            assert_eq!(
                values(&after, &http::header::UPGRADE),
                values(before, &http::header::UPGRADE),
                "Upgrade not kept"
            );
        } else {
            assert!(!after.contains_key(http::header::UPGRADE), "Upgrade left");
        }
        // Nothing else is touched.
        for name in before.keys() {
            let s = name.as_str();
            if named.contains(s.as_bytes()) || HOP_BY_HOP.contains(&s) || s == "upgrade" {
                continue;
            }
            assert_eq!(
                values(&after, name),
                values(before, name),
                "remove_hop_by_hop touched {s:?}"
            );
        }
    }
}
