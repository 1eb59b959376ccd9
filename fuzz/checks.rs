//! The property checks behind every fuzz target, shared word for word with
//! `tests/fuzz_regressions.rs` (both include this file with `#[path]`), so
//! an input kept in `fuzz/regressions/<target>/` is replayed in CI through
//! exactly the checks that found it.
//!
//! Each `pub fn <target>(data: &[u8])` decodes the raw fuzz bytes itself
//! (no `arbitrary`: the main crate's tests must build on stable without
//! extra dependencies) and panics when a property does not hold.
//!
//! Depends on `portcullis`, `http`, and for the codec targets on the
//! crates the gateway itself uses: `httparse`, `hyper`, `hyper-util`,
//! `http-body(-util)`, `bytes`, `tokio` (with paused time).
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
    ("request_head", request_head),
    ("response_head", response_head),
    ("chunked", chunked),
    ("h1_conn", h1_conn),
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

// ---------------------------------------------------------------------------
// 4. The HTTP/1 codec: request and response heads, the chunked decoder,
// whole server connections. Differential: against references written from
// RFC 9112 on top of httparse, and against hyper (HTTP/1 server and
// client) reading the same bytes over an in-memory pipe.
//
// Ours may refuse what a reference or hyper accepts (a refusal is a 400 or
// a 502, never a second reading of the bytes); when both accept, the
// framing must be the same.

use portcullis::probe::{self, Dechunker, Dispatched, Framing, MAX_CHUNK_EXTENSION, Step};

/// Largest request head the codec checks use (a config's `max_head`).
pub const MAX_HEAD: usize = 8 * 1024;
/// Trailer bound the chunked checks give the decoder.
const TRAILERS: usize = 256;

thread_local! {
    /// One runtime per thread, with paused time: the scripted client's
    /// waits and the connections' timers cost nothing, and a connection
    /// that does not end shows up as a timeout, not a hang.
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RT.with(|rt| rt.block_on(f))
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH", "CONNECT", "PROPFIND", "M-SEARCH",
    "get", "Post", "G@T", "", "GET ",
];
const REQUEST_TARGETS: &[&str] = &[
    "/",
    "/a?b=1",
    "*",
    "http://a.test/x",
    "http://a.test",
    "a.test:443",
    "//x/../y",
    "/%2e%2E/",
    "/a b",
    "/\x7f",
    "/\u{e9}",
    "",
];
const VERSIONS: &[&str] = &[
    "HTTP/1.1",
    "HTTP/1.1",
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/1.2",
    "HTTP/2.0",
    "http/1.1",
    "HTTP/1.",
    "HTTP/1.1 ",
    "HTTP/0.9",
];
const NAMES: &[&str] = &[
    "Host",
    "Content-Length",
    "Content-Length",
    "Transfer-Encoding",
    "Transfer-Encoding",
    "Connection",
    "Expect",
    "Upgrade",
    "content-length",
    "TRANSFER-ENCODING",
    "Content-Length ",
    "Transfer-Encoding ",
    "Transfer_Encoding",
    " Content-Length",
    "Keep-Alive",
    "TE",
    "Trailer",
    "X-A",
    "",
    "Con\x00tent-Length",
];
const LENGTHS: &[&str] = &[
    "0",
    "1",
    "5",
    "05",
    "5, 5",
    "5,5",
    "5, 6",
    "5,",
    ",5",
    "+5",
    "-1",
    " 5 ",
    "5 5",
    "0x5",
    "",
    "18446744073709551615",
    "9999999999999999999",
    "99999999999999999999",
    "00000000000000000005",
    "1e3",
    "\u{0660}",
];
const CODINGS: &[&str] = &[
    "chunked",
    "chunked",
    "Chunked",
    "CHUNKED",
    "chunked ",
    "\tchunked",
    "gzip, chunked",
    "chunked, gzip",
    "chunked, chunked",
    "chunked,",
    ",chunked",
    ", chunked",
    "identity",
    "identity, chunked",
    "gzip",
    "chunked;q=1",
    "chunk",
    "xchunked",
    "",
    ",",
];
const CONNECTIONS: &[&str] = &[
    "close",
    "keep-alive",
    "Keep-Alive",
    "upgrade",
    "Upgrade, close",
    "close, upgrade",
    "x-a, close",
    "closed",
    "close ",
    ",close",
    "",
];
const OTHER_VALUES: &[&str] = &[
    "a.test",
    "100-continue",
    "100-Continue",
    "websocket",
    "h2c",
    "trailers",
    "x",
    "",
    " v ",
    "\x7f",
    "\u{e9}",
    "a\tb",
];
const EOLS: &[&str] = &["\r\n", "\r\n", "\r\n", "\r\n", "\n", "\r", "\r\r\n", "\n\r"];
const SEPARATORS: &[&str] = &[": ", ": ", ":", ":\t", " : ", ":  "];

fn pick_text(src: &mut Src<'_>, list: &[&str]) -> Vec<u8> {
    if src.below(16) == 0 {
        src.bytes(8).to_vec()
    } else {
        src.pick(list).as_bytes().to_vec()
    }
}

/// A request head built from the pieces that decide framing, with the
/// separators and line ends varied (or raw bytes now and then).
pub fn gen_request_head(src: &mut Src<'_>) -> Vec<u8> {
    let mut h = Vec::new();
    let eol = |src: &mut Src<'_>| -> &'static str {
        if src.below(8) == 0 {
            src.pick(EOLS)
        } else {
            "\r\n"
        }
    };
    h.extend(pick_text(src, METHODS));
    h.push(b' ');
    h.extend(pick_text(src, REQUEST_TARGETS));
    h.push(b' ');
    h.extend(pick_text(src, VERSIONS));
    h.extend(eol(src).as_bytes());
    for _ in 0..src.below(7) {
        let name = pick_text(src, NAMES);
        let value = {
            let lower = String::from_utf8_lossy(&name).trim().to_ascii_lowercase();
            match lower.as_str() {
                "content-length" => pick_text(src, LENGTHS),
                "transfer-encoding" | "transfer_encoding" => pick_text(src, CODINGS),
                "connection" => pick_text(src, CONNECTIONS),
                _ => pick_text(src, OTHER_VALUES),
            }
        };
        h.extend(name);
        h.extend(src.pick(SEPARATORS).as_bytes());
        h.extend(value);
        if src.below(32) == 0 {
            // Obsolete line folding.
            h.extend(b"\r\n folded");
        }
        h.extend(eol(src).as_bytes());
    }
    h.extend(eol(src).as_bytes());
    h
}

/// A body for a head: what its framing asks for (a length, a chunked body
/// with extensions and trailers), or something that is not.
fn gen_body(src: &mut Src<'_>, framing: Option<Framing>) -> Vec<u8> {
    let mut b = Vec::new();
    match (framing, src.below(8)) {
        (_, 0) => b.extend(src.bytes(24)),
        (Some(Framing::Length(n)), _) if n <= 4096 => {
            b.extend((0..n).map(|i| b'a' + (i % 26) as u8));
        }
        (Some(Framing::Chunked), _) => b.extend(gen_chunked(src)),
        _ => {}
    }
    b
}

/// A chunked body: sizes in varied spellings, extensions, data, trailers,
/// with an occasional mistake.
pub fn gen_chunked(src: &mut Src<'_>) -> Vec<u8> {
    let mut b = Vec::new();
    for _ in 0..src.below(5) {
        let n = src.below(40);
        match src.below(6) {
            0 => b.extend(format!("{n:X}").bytes()),
            1 => b.extend(format!("00{n:x}").bytes()),
            _ => b.extend(format!("{n:x}").bytes()),
        }
        match src.below(8) {
            0 => b.extend(b";name=value"),
            1 => b.extend(b" ;x"),
            2 => b.extend(b"\t "),
            3 => b.extend(src.bytes(6)),
            _ => {}
        }
        b.extend(if src.below(16) == 0 {
            src.pick(EOLS).as_bytes()
        } else {
            b"\r\n"
        });
        b.extend((0..n).map(|i| b'A' + (i % 26) as u8));
        b.extend(if src.below(16) == 0 {
            src.pick(EOLS).as_bytes()
        } else {
            b"\r\n"
        });
    }
    if src.below(8) != 0 {
        b.extend(src.pick(&[&b"0"[..], b"000", b"0;ext=1", b"0 "]));
        b.extend(b"\r\n");
        for _ in 0..src.below(3) {
            b.extend(src.pick(&[&b"x-t: 1"[..], b"x", b"", b"a:\rb"]));
            b.extend(src.pick(EOLS).as_bytes());
        }
        b.extend(b"\r\n");
    }
    b
}

/// Cuts `data` into pieces at random points (every byte on its own, now
/// and then).
fn split_points(src: &mut Src<'_>, data: &[u8]) -> Vec<Vec<u8>> {
    if data.len() <= 64 && src.below(4) == 0 {
        return data.chunks(1).map(<[u8]>::to_vec).collect();
    }
    let mut pieces = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = if src.is_empty() {
            rest.len()
        } else {
            1 + src.below(rest.len().min(300))
        };
        let (a, b) = rest.split_at(n.min(rest.len()));
        pieces.push(a.to_vec());
        rest = b;
    }
    pieces
}

// --- references -------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefHead {
    Partial,
    Refused(&'static str),
    Accepted {
        framing: Framing,
        keep_alive: bool,
        len: usize,
    },
}

/// List elements of a field (RFC 9110 5.6.1: empty ones are ignored).
fn list(values: &[&[u8]]) -> Vec<Vec<u8>> {
    values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| t.trim_ascii().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// `Content-Length` by RFC 9112 6.3 (a list of identical values is one
/// value; anything else but digits is invalid); more than 19 digits is
/// refused as too large.
fn reference_length(values: &[&[u8]]) -> Result<Option<u64>, &'static str> {
    let mut out: Option<u64> = None;
    for v in values {
        let parts: Vec<&[u8]> = v.split(|&b| b == b',').map(<[u8]>::trim_ascii).collect();
        for p in parts {
            if p.is_empty() || p.len() > 19 || !p.iter().all(u8::is_ascii_digit) {
                return Err("invalid length");
            }
            let n: u64 = std::str::from_utf8(p).unwrap().parse().unwrap();
            if out.is_some_and(|o| o != n) {
                return Err("conflicting lengths");
            }
            out = Some(n);
        }
    }
    Ok(out)
}

/// The request head rules, from RFC 9112 and the codec's documented
/// policy (uppercase methods; only `chunked`; Host with absolute form),
/// on httparse's tokenising.
pub fn reference_request(buf: &[u8], max_head: usize) -> RefHead {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max_head => return RefHead::Refused("too large"),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            return RefHead::Refused("too large");
        }
        Ok(httparse::Status::Partial) => return RefHead::Partial,
        Err(_) => return RefHead::Refused("httparse"),
    };
    let method = req.method.unwrap();
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return RefHead::Refused("lowercase method");
    }
    if http::Method::from_bytes(method.as_bytes()).is_err() {
        return RefHead::Refused("method");
    }
    let Ok(uri) = req.path.unwrap().parse::<http::Uri>() else {
        return RefHead::Refused("target");
    };
    // RFC 9112 3.2.3: CONNECT takes the authority form only.
    let authority_form =
        uri.scheme().is_none() && uri.path_and_query().is_none() && uri.authority().is_some();
    if (method == "CONNECT") != authority_form {
        return RefHead::Refused("CONNECT target");
    }
    let http11 = req.version == Some(1);
    let mut by_name: BTreeMap<String, Vec<&[u8]>> = BTreeMap::new();
    for h in req.headers.iter() {
        if HeaderName::from_bytes(h.name.as_bytes()).is_err()
            || HeaderValue::from_bytes(h.value).is_err()
        {
            return RefHead::Refused("field");
        }
        by_name
            .entry(h.name.to_ascii_lowercase())
            .or_default()
            .push(h.value);
    }
    let get = |n: &str| by_name.get(n).cloned().unwrap_or_default();
    let length = match reference_length(&get("content-length")) {
        Ok(l) => l,
        Err(e) => return RefHead::Refused(e),
    };
    let te = get("transfer-encoding");
    let codings = list(&te);
    let conn = list(&get("connection"));
    if http11 && uri.authority().is_some() && get("host").is_empty() {
        return RefHead::Refused("no host");
    }
    let mut keep_alive =
        !conn.iter().any(|t| t == b"close") && (http11 || conn.iter().any(|t| t == b"keep-alive"));
    let framing = if !te.is_empty() {
        if !http11 {
            return RefHead::Refused("transfer-encoding on HTTP/1.0");
        }
        if codings.last().map(Vec::as_slice) != Some(b"chunked") {
            return RefHead::Refused("not chunked");
        }
        if codings.len() > 1 {
            return RefHead::Refused("501");
        }
        if length.is_some() {
            keep_alive = false;
        }
        Framing::Chunked
    } else {
        match length {
            None | Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    RefHead::Accepted {
        framing,
        keep_alive,
        len,
    }
}

/// The response head rules (RFC 9112 6.3), for an answer to GET or HEAD.
pub fn reference_response(buf: &[u8], head_request: bool) -> RefHead {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > 64 * 1024 => return RefHead::Refused("large"),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return RefHead::Partial,
        Err(_) => return RefHead::Refused("httparse"),
    };
    let Ok(status) = http::StatusCode::from_u16(resp.code.unwrap()) else {
        return RefHead::Refused("status");
    };
    let http11 = resp.version == Some(1);
    let mut by_name: BTreeMap<String, Vec<&[u8]>> = BTreeMap::new();
    for h in resp.headers.iter() {
        if HeaderName::from_bytes(h.name.as_bytes()).is_err()
            || HeaderValue::from_bytes(h.value).is_err()
        {
            return RefHead::Refused("field");
        }
        by_name
            .entry(h.name.to_ascii_lowercase())
            .or_default()
            .push(h.value);
    }
    let get = |n: &str| by_name.get(n).cloned().unwrap_or_default();
    let length = match reference_length(&get("content-length")) {
        Ok(l) => l,
        Err(e) => return RefHead::Refused(e),
    };
    let te = get("transfer-encoding");
    let codings = list(&te);
    let conn = list(&get("connection"));
    let mut keep_alive =
        !conn.iter().any(|t| t == b"close") && (http11 || conn.iter().any(|t| t == b"keep-alive"));
    let bodiless = head_request
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::None
    } else if !te.is_empty() {
        if !http11 {
            return RefHead::Refused("transfer-encoding on HTTP/1.0");
        }
        if codings.last().map(Vec::as_slice) != Some(b"chunked") || codings.len() > 1 {
            return RefHead::Refused("coding");
        }
        if length.is_some() {
            keep_alive = false;
        }
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    RefHead::Accepted {
        framing,
        keep_alive,
        len,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefChunked {
    /// Data so far; more input needed.
    Incomplete(Vec<u8>),
    /// Data before the error.
    Error(Vec<u8>, &'static str),
    /// The body and the bytes it took.
    Complete(Vec<u8>, usize),
}

/// Checks one size line's bytes by RFC 9112 7.1 where httparse is lenient
/// (it takes an empty size, a bare LF inside an extension); `complete`
/// when the line's CRLF is there. Also the decoder's bound on extension
/// bytes (see `Dechunker`).
fn strict_size_line(line: &[u8], complete: bool) -> Result<(), &'static str> {
    let body = if complete {
        &line[..line.len() - 2]
    } else {
        line
    };
    let digits = body.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 && (!body.is_empty() || complete) {
        return Err("no size");
    }
    if body.contains(&b'\n') {
        return Err("bare LF");
    }
    if let Some(cr) = body.iter().position(|&b| b == b'\r') {
        let _ = cr;
        return Err("bare CR");
    }
    // Bytes counted against the extension bound: after the size, the
    // first blank or `;` is free, so is the first `;` after the blanks.
    let rest = &body[digits..];
    let ws = rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    let mut counted = rest.len();
    if !rest.is_empty() {
        counted -= 1;
    }
    if ws > 0 && rest.len() > ws && rest[ws] == b';' {
        counted -= 1;
    }
    if counted > MAX_CHUNK_EXTENSION {
        return Err("extension too large");
    }
    Ok(())
}

/// A whole chunked body read the plain way: size lines by
/// `httparse::parse_chunk_size` (plus [`strict_size_line`]), data and
/// CRLF, then trailer lines (any bytes but CR and LF, at most
/// `max_trailers` of them in all) up to an empty line.
pub fn reference_dechunk(input: &[u8], max_trailers: usize) -> RefChunked {
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        let rest = &input[at..];
        let line_end = rest.windows(2).position(|w| w == b"\r\n");
        let line = match line_end {
            Some(e) => &rest[..e + 2],
            None => rest,
        };
        if let Err(e) = strict_size_line(line, line_end.is_some()) {
            // A lone CR at the very end may still become CRLF.
            if !(line_end.is_none()
                && e == "bare CR"
                && line.ends_with(b"\r")
                && strict_size_line(&line[..line.len() - 1], false).is_ok())
            {
                return RefChunked::Error(data, e);
            }
        }
        if line_end.is_none() {
            return RefChunked::Incomplete(data);
        }
        let size = match httparse::parse_chunk_size(line) {
            Ok(httparse::Status::Complete((n, size))) => {
                assert_eq!(n, line.len(), "parse_chunk_size stopped inside {line:?}");
                size
            }
            Ok(httparse::Status::Partial) => unreachable!("a whole line"),
            Err(_) => return RefChunked::Error(data, "parse_chunk_size"),
        };
        at += line.len();
        if size == 0 {
            break;
        }
        let rest = &input[at..];
        if (rest.len() as u64) < size {
            data.extend_from_slice(rest);
            return RefChunked::Incomplete(data);
        }
        let size = size as usize;
        data.extend_from_slice(&rest[..size]);
        at += size;
        match &input[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [] | [b'\r'] => return RefChunked::Incomplete(data),
            _ => return RefChunked::Error(data, "no CRLF after data"),
        }
    }
    // Trailer section.
    let mut used = 0;
    loop {
        let rest = &input[at..];
        let end = rest.iter().position(|&b| b == b'\r' || b == b'\n');
        let Some(e) = end else {
            if used + rest.len() > max_trailers {
                return RefChunked::Error(data, "trailers too large");
            }
            return RefChunked::Incomplete(data);
        };
        if rest[e] == b'\n' {
            return RefChunked::Error(data, "bare LF in trailers");
        }
        used += e;
        if used > max_trailers {
            return RefChunked::Error(data, "trailers too large");
        }
        match rest.get(e + 1) {
            None => return RefChunked::Incomplete(data),
            Some(b'\n') => {}
            Some(_) => return RefChunked::Error(data, "bare CR in trailers"),
        }
        // A field line (RFC 9112 7.1.2, RFC 9110 5.1, 5.5): a token, a
        // colon, visible bytes (obs-text included), SP and HTAB.
        let line = &rest[..e];
        if e > 0 {
            let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
            let ok = line.iter().position(|&b| b == b':').is_some_and(|c| {
                c > 0
                    && line[..c].iter().all(tchar)
                    && line[c + 1..]
                        .iter()
                        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
            });
            if !ok {
                return RefChunked::Error(data, "trailer is not a field line");
            }
        }
        at += e + 2;
        if e == 0 {
            return RefChunked::Complete(data, at);
        }
    }
}

// --- hyper, the other implementation -----------------------------------------

/// A request hyper's server handed to its service, with hyper's reading
/// of its framing (from the body's size hint).
#[derive(Debug, Clone)]
pub struct HyperSeen {
    pub req: Dispatched,
    pub framing: Framing,
}

/// Runs hyper's HTTP/1 server over an in-memory pipe fed with `pieces`
/// (same client as ours); what its service saw and the bytes it wrote.
pub async fn hyper_serve(pieces: Vec<Vec<u8>>) -> (Vec<HyperSeen>, Vec<u8>) {
    use http_body_util::BodyExt as _;
    use std::sync::{Arc, Mutex};
    let (client, server) = tokio::io::duplex(64 * 1024);
    let seen: Arc<Mutex<Vec<HyperSeen>>> = Arc::default();
    let svc = {
        let seen = seen.clone();
        hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let seen = seen.clone();
            async move {
                use http_body::Body as _;
                let hint = req.body().size_hint();
                let framing = match hint.exact() {
                    Some(0) => Framing::None,
                    Some(n) => Framing::Length(n),
                    None => Framing::Chunked,
                };
                let (parts, body) = req.into_parts();
                let at = {
                    let mut s = seen.lock().unwrap();
                    s.push(HyperSeen {
                        req: Dispatched {
                            method: parts.method.as_str().to_owned(),
                            target: parts.uri.to_string(),
                            http11: parts.version == http::Version::HTTP_11,
                            body: None,
                        },
                        framing,
                    });
                    s.len() - 1
                };
                if let Ok(b) = body.collect().await {
                    seen.lock().unwrap()[at].req.body = Some(b.to_bytes().to_vec());
                }
                let mut resp = http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"no"),
                ));
                *resp.status_mut() = http::StatusCode::NOT_FOUND;
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None)
        .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
    let (out, _) = tokio::join!(
        probe::script_client(client, pieces, std::time::Duration::from_secs(10)),
        tokio::time::timeout(std::time::Duration::from_secs(60), conn)
    );
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (seen, out)
}

/// Hyper's client reading `response` as the answer to a GET (or HEAD):
/// its reading of the framing, or `None` if it refused the head.
pub async fn hyper_response(response: Vec<u8>, head: bool) -> Option<(u16, Framing)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let backend = async move {
        // Read the request head, answer, keep the pipe open a while.
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match server.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = server.write_all(&response).await;
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    };
    let client = async move {
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
                .await
                .ok()?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(if head { "HEAD" } else { "GET" })
            .uri("/")
            .header("host", "a.test")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.ok()?;
        use http_body::Body as _;
        let framing = match resp.body().size_hint().exact() {
            Some(0) if resp.body().is_end_stream() => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        };
        Some((resp.status().as_u16(), framing))
    };
    let (r, ()) = tokio::join!(client, backend);
    r
}

// --- the targets ---------------------------------------------------------------

/// The head a fuzz input stands for: raw bytes (first byte odd) or a
/// generated one.
fn head_input(data: &[u8]) -> (Vec<u8>, Src<'_>) {
    let mut src = Src::new(data);
    if src.byte() & 1 == 1 {
        (data[1..].to_vec(), Src::new(&[]))
    } else {
        let h = gen_request_head(&mut src);
        let body = src.bytes(16).to_vec();
        ([h, body].concat(), src)
    }
}

/// Request head: our parser against the RFC reference and hyper's server.
pub fn request_head(data: &[u8]) {
    let (buf, _) = head_input(data);
    let ours = probe::parse_request(&buf, MAX_HEAD);
    let reference = reference_request(&buf, MAX_HEAD);
    match (&ours, &reference) {
        (Ok(None), RefHead::Partial) | (Err(_), RefHead::Refused(_)) => {}
        // Ours may refuse more; a refusal is never a second reading.
        (Err(_), RefHead::Accepted { .. }) => {}
        (
            Ok(Some(h)),
            RefHead::Accepted {
                framing,
                keep_alive,
                len,
            },
        ) => {
            assert_eq!(
                (h.framing, h.keep_alive, h.len),
                (*framing, *keep_alive, *len),
                "framing, keep-alive, head length of {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        _ => panic!(
            "ours {ours:?}, reference {reference:?} for {:?}",
            String::from_utf8_lossy(&buf)
        ),
    }
    // Against hyper: a head both accept is framed the same.
    let Ok(Some(h)) = ours else { return };
    let head = buf[..h.len].to_vec();
    let (seen, _) = block_on(hyper_serve(vec![head.clone()]));
    let Some(first) = seen.first() else {
        if hyper_is_stricter(
            &head,
            &[(
                h.method.clone(),
                h.target.clone(),
                h.http11,
                Some(h.framing),
            )],
        ) {
            return;
        }
        panic!(
            "ours accepted, hyper refused {:?} (ours: {h:?})",
            String::from_utf8_lossy(&head)
        );
    };
    assert_eq!(
        (
            &first.req.method,
            &first.req.target,
            first.req.http11,
            first.framing
        ),
        (&h.method, &h.target, h.http11, h.framing),
        "hyper reads {:?} differently",
        String::from_utf8_lossy(&head)
    );
}

/// Whether hyper's server refused (or stopped early on) `stream` only by
/// a rule where ours follows the RFC and hyper is stricter (see
/// fuzz/README.md): with that difference written out of the stream, hyper
/// must read each request ours dispatched (`ours`: method, target,
/// HTTP/1.1, framing when known) the same way.
///
/// The one such rule: a `Content-Length` field whose value is a list
/// (`5, 5`). RFC 9110 8.6 lets a recipient take a list of identical
/// values as the one length, as ours does; hyper's server takes repeated
/// `Content-Length` lines whose values are the same number (`5` and `05`)
/// but refuses them as a list. So a list of elements that are all the
/// same number is written as its first element (same number of lines:
/// hyper counts header lines too) and hyper judges that; a list of
/// different lengths (`5, 6`) is left as it is, so if ours accepted it
/// that is still reported.
pub fn hyper_is_stricter(stream: &[u8], ours: &[(String, String, bool, Option<Framing>)]) -> bool {
    let Some(split) = split_length_lists(stream) else {
        return false;
    };
    let (seen, _) = block_on(hyper_serve(vec![split]));
    seen.len() >= ours.len()
        && ours.iter().zip(&seen).all(|((m, t, v11, f), h)| {
            (m, t, *v11) == (&h.req.method, &h.req.target, h.req.http11)
                && f.is_none_or(|f| f == h.framing)
        })
}

/// `stream` with every `Content-Length` line whose value is a list of
/// one number (`5, 5`, `5,05`) written as that list's first element;
/// `None` when there is no such line.
fn split_length_lists(stream: &[u8]) -> Option<Vec<u8>> {
    // The number a digit string stands for, as hyper reads it.
    let number = |d: &[u8]| {
        if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        d.iter().try_fold(0u64, |acc, &c| {
            acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        })
    };
    let mut out = Vec::with_capacity(stream.len());
    let mut changed = false;
    let name_len = b"content-length:".len();
    for line in stream.split_inclusive(|&b| b == b'\n') {
        if line.len() > name_len && line[..name_len].eq_ignore_ascii_case(b"content-length:") {
            let body = line[name_len..]
                .strip_suffix(b"\n")
                .unwrap_or(&line[name_len..]);
            let (value, eol) = match body.strip_suffix(b"\r") {
                Some(v) => (v, &b"\r\n"[..]),
                None if line.ends_with(b"\n") => (body, &b"\n"[..]),
                None => (body, &b""[..]),
            };
            let items: Vec<&[u8]> = value
                .split(|&b| b == b',')
                .map(|i| i.trim_ascii())
                .collect();
            let first = number(items[0]);
            if items.len() > 1 && first.is_some() && items.iter().all(|i| number(i) == first) {
                out.extend_from_slice(&line[..name_len]);
                out.push(b' ');
                out.extend_from_slice(items[0]);
                out.extend_from_slice(eol);
                changed = true;
                continue;
            }
        }
        out.extend_from_slice(line);
    }
    changed.then_some(out)
}

/// Response head: our upstream parser against the RFC reference and
/// hyper's client, as the answer to a GET or a HEAD.
pub fn response_head(data: &[u8]) {
    let mut src = Src::new(data);
    let flags = src.byte();
    let head_request = flags & 2 == 2;
    let buf = if flags & 1 == 1 {
        data[1..].to_vec()
    } else {
        let mut h = Vec::new();
        h.extend(pick_text(
            &mut src,
            &[
                "HTTP/1.1",
                "HTTP/1.1",
                "HTTP/1.0",
                "HTTP/2",
                "HTTP/1.1 ",
                "http/1.1",
            ],
        ));
        h.push(b' ');
        h.extend(pick_text(
            &mut src,
            &[
                "200", "204", "304", "101", "100", "404", "502", "999", "20", "0200",
            ],
        ));
        h.extend(pick_text(&mut src, &[" OK", "", " ", " \u{e9}"]));
        h.extend(b"\r\n");
        for _ in 0..src.below(6) {
            let name = pick_text(&mut src, NAMES);
            let lower = String::from_utf8_lossy(&name).trim().to_ascii_lowercase();
            let value = match lower.as_str() {
                "content-length" => pick_text(&mut src, LENGTHS),
                "transfer-encoding" => pick_text(&mut src, CODINGS),
                "connection" => pick_text(&mut src, CONNECTIONS),
                _ => pick_text(&mut src, OTHER_VALUES),
            };
            h.extend(name);
            h.extend(src.pick(SEPARATORS).as_bytes());
            h.extend(value);
            h.extend(
                if src.below(8) == 0 {
                    src.pick(EOLS)
                } else {
                    "\r\n"
                }
                .as_bytes(),
            );
        }
        h.extend(b"\r\n");
        h.extend(src.bytes(8));
        h
    };
    let ours = probe::parse_response(&buf, head_request);
    let reference = reference_response(&buf, head_request);
    match (&ours, &reference) {
        (Ok(None), RefHead::Partial) | (Err(_), RefHead::Refused(_)) => {}
        (Err(_), RefHead::Accepted { .. }) => {}
        (
            Ok(Some(h)),
            RefHead::Accepted {
                framing,
                keep_alive,
                len,
            },
        ) => assert_eq!(
            (h.framing, h.keep_alive, h.len),
            (*framing, *keep_alive, *len),
            "framing, keep-alive, head length of {:?}",
            String::from_utf8_lossy(&buf)
        ),
        _ => panic!(
            "ours {ours:?}, reference {reference:?} for {:?}",
            String::from_utf8_lossy(&buf)
        ),
    }
    let Ok(Some(h)) = ours else { return };
    if h.status < 200 {
        // Hyper's client skips 1xx answers and waits for the final one.
        return;
    }
    let Some((status, framing)) = block_on(hyper_response(buf[..h.len].to_vec(), head_request))
    else {
        panic!(
            "ours accepted, hyper's client refused {:?} (ours: {h:?})",
            String::from_utf8_lossy(&buf)
        );
    };
    let ours_hint = match h.framing {
        Framing::UntilClose => Framing::Chunked,
        Framing::Length(0) => Framing::None,
        f => f,
    };
    assert_eq!(
        (status, framing),
        (h.status, ours_hint),
        "hyper's client reads {:?} differently",
        String::from_utf8_lossy(&buf)
    );
}

/// Runs our decoder over `pieces` as a connection would: what it
/// delivered, and how it ended (bytes left after the end).
fn our_dechunk(pieces: &[Vec<u8>], max_trailers: usize) -> (Vec<u8>, Result<Option<Vec<u8>>, ()>) {
    let mut d = Dechunker::new(max_trailers);
    let mut buf = bytes::BytesMut::new();
    let mut out = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        buf.extend_from_slice(p);
        loop {
            match d.decode(&mut buf) {
                Ok(Step::Data(b)) => {
                    assert!(!b.is_empty(), "an empty data piece");
                    out.extend_from_slice(&b);
                }
                Ok(Step::More) => break,
                Ok(Step::End) => {
                    let mut left = buf.to_vec();
                    left.extend(pieces[i + 1..].concat());
                    return (out, Ok(Some(left)));
                }
                Err(_) => return (out, Err(())),
            }
        }
    }
    (out, Ok(None))
}

/// Chunked decoder: against [`reference_dechunk`], fed in random splits.
pub fn chunked(data: &[u8]) {
    let mut src = Src::new(data);
    let flags = src.byte();
    let input = if flags & 1 == 1 {
        data[1..].to_vec()
    } else {
        let mut b = gen_chunked(&mut src);
        b.extend(src.bytes(8));
        b
    };
    let reference = reference_dechunk(&input, TRAILERS);
    let splits = [
        vec![input.clone()],
        split_points(&mut src, &input),
        if input.len() <= 512 {
            input.chunks(1).map(<[u8]>::to_vec).collect()
        } else {
            input.chunks(7).map(<[u8]>::to_vec).collect()
        },
    ];
    for pieces in &splits {
        let (out, end) = our_dechunk(pieces, TRAILERS);
        let shown = String::from_utf8_lossy(&input);
        match (&reference, &end) {
            (RefChunked::Complete(body, used), Ok(Some(left))) => {
                assert_eq!(&out, body, "data of {shown:?}");
                assert_eq!(&input[*used..], &left[..], "bytes left after {shown:?}");
            }
            (RefChunked::Incomplete(body), Ok(None)) => {
                assert_eq!(&out, body, "data so far of {shown:?}")
            }
            // Ours may see that a line cannot become valid before it ends.
            (RefChunked::Incomplete(body), Err(())) => {
                assert!(body.starts_with(&out), "data before the error in {shown:?}")
            }
            (RefChunked::Error(body, _), Err(())) => assert!(
                body.starts_with(&out) || out.starts_with(body),
                "data before the error in {shown:?}: ours {out:?}, reference {body:?}"
            ),
            _ => panic!(
                "ours {end:?} (data {:?}), reference {reference:?} for {shown:?} in {} pieces",
                String::from_utf8_lossy(&out),
                pieces.len()
            ),
        }
    }
}

/// Response statuses in what a server wrote, with whether each closes
/// the connection; `methods` are the requests answered, in order (the
/// answer to a HEAD has a length but no body).
fn responses(out: &[u8], methods: &[&str]) -> Vec<(u16, bool)> {
    let mut v = Vec::new();
    let mut finals = 0;
    let mut rest = out;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = r.parse(rest) else {
            return v;
        };
        let code = r.code.unwrap();
        let mut close = r.version == Some(0);
        let mut len = 0usize;
        for h in r.headers.iter() {
            if h.name.eq_ignore_ascii_case("connection") {
                close = h.value.eq_ignore_ascii_case(b"close");
            } else if h.name.eq_ignore_ascii_case("content-length") {
                len = std::str::from_utf8(h.value).unwrap().parse().unwrap();
            }
        }
        v.push((code, close));
        if code < 200 {
            len = 0;
        } else {
            if methods.get(finals) == Some(&"HEAD") {
                len = 0;
            }
            finals += 1;
        }
        rest = &rest[(n + len).min(rest.len())..];
    }
}

/// A whole connection: a pipelined request stream cut at random points;
/// the requests our server dispatches (and their bodies) against hyper's.
pub fn h1_conn(data: &[u8]) {
    let mut src = Src::new(data);
    let mut stream = Vec::new();
    for _ in 0..1 + src.below(4) {
        let head = gen_request_head(&mut src);
        let framing = match probe::parse_request(&head, MAX_HEAD) {
            Ok(Some(h)) => Some(h.framing),
            _ => None,
        };
        stream.extend(head);
        stream.extend(gen_body(&mut src, framing));
    }
    let pieces = split_points(&mut src, &stream);
    let Some((ours, out)) = block_on(probe::serve_script(
        pieces.clone(),
        MAX_HEAD,
        std::time::Duration::from_secs(60),
    )) else {
        panic!(
            "our connection did not end after the client left: {:?}",
            String::from_utf8_lossy(&stream)
        );
    };
    let (hyper, _) = block_on(hyper_serve(pieces));
    let shown = String::from_utf8_lossy(&stream);
    let methods: Vec<&str> = ours.iter().map(|d| d.method.as_str()).collect();
    let answers = responses(&out, &methods);
    // A request whose body never arrived whole is cancelled when the
    // client leaves, unanswered.
    let finished = ours.iter().filter(|d| d.body.is_some()).count();
    assert!(
        answers.len() >= finished,
        "{finished} requests read whole, {} answers in {:?} for {shown:?}",
        answers.len(),
        String::from_utf8_lossy(&out)
    );
    for (i, (o, h)) in ours.iter().zip(&hyper).enumerate() {
        assert_eq!(
            (&o.method, &o.target, o.http11),
            (&h.req.method, &h.req.target, h.req.http11),
            "request {i} of {shown:?}"
        );
        let last = i + 1 == ours.len() || i + 1 == hyper.len();
        if !last || (o.body.is_some() && h.req.body.is_some()) {
            assert_eq!(o.body, h.req.body, "body of request {i} of {shown:?}");
        }
    }
    if ours.len() < hyper.len() {
        // Ours stopped first: it refused a head or closed on purpose.
        let stopped = answers
            .last()
            .is_some_and(|&(code, close)| close || matches!(code, 400 | 408 | 431 | 501));
        assert!(
            stopped,
            "ours dispatched {} requests, hyper {}, and ours neither refused nor closed: {:?} for {shown:?}",
            ours.len(),
            hyper.len(),
            String::from_utf8_lossy(&out)
        );
    } else if ours.len() > hyper.len()
        && !hyper_is_stricter(
            &stream,
            &ours
                .iter()
                .map(|o| (o.method.clone(), o.target.clone(), o.http11, None))
                .collect::<Vec<_>>(),
        )
    {
        panic!(
            "ours dispatched {} requests, hyper only {}: {ours:?} vs {hyper:?} for {shown:?}",
            ours.len(),
            hyper.len()
        );
    }
}
