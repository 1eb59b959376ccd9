//! The access log: one line per request, target `portcullis::access`.
//!
//! Whether a line is written is still decided by the `RUST_LOG` filter
//! (the caller asks `tracing::enabled!` for the target). With JSON logs the
//! line is then formatted here, by hand, into a reused per-thread buffer
//! and handed to the batched stdout writer in one piece: tracing's generic
//! JSON formatter (a `serde_json` map, a `String` per timestamp, a
//! `Debug`/`Display` detour per field) cost about 11 % of the gateway's
//! CPU per request, this costs about a fifth of that. The line has the
//! same shape as tracing's: `timestamp` (RFC 3339, microseconds, UTC),
//! `level`, `message`, the fields, `target`; `bytes_in` only when the
//! request declared a length, `bytes_out` only when the response's is
//! known. With the pretty format (or before logging is set up, as in unit
//! tests) the same fields go through `tracing::info!`.
//!
//! `[server] access_log_format = "combined"` writes Apache/nginx's combined
//! format instead (what fail2ban and GoAccess read), straight to stdout
//! whatever `--log-format` says; the other log lines keep their format.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::writer::BufferedStdout;

/// Where access lines go, set once by `init_logging`, and whether the
/// logs are JSON.
static SINK: OnceLock<(BufferedStdout, bool)> = OnceLock::new();

/// Sends access lines straight to `out` (from then on): as JSON when
/// `json`, else through tracing's pretty format (combined lines always go
/// straight to `out`).
pub fn install(out: BufferedStdout, json: bool) {
    let _ = SINK.set((out, json));
}

/// The shape of an access-log line (`server.access_log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// The log's own format: a JSON line, or pretty fields.
    #[default]
    Default,
    /// Apache/nginx combined: `addr - user [time] "request" status bytes
    /// "referer" "user-agent"`.
    Combined,
}

/// One request's access-log fields. Never a header value, cookie or query.
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub client_ip: IpAddr,
    /// `client_ip` already as text (the connection's peer), if at hand.
    pub client_text: Option<&'a str>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub duration: Duration,
    pub route: &'a str,
    pub upstream: &'a str,
    pub user: &'a str,
    pub error: &'a str,
    /// `User-Agent` and `Referer` as sent (`""`: none).
    pub user_agent: &'a str,
    pub referer: &'a str,
    /// `HTTP/1.1`, `HTTP/2`, …
    pub protocol: &'a str,
    /// `TLSv1.3`, … on https.
    pub tls_version: Option<&'a str>,
}

thread_local! {
    static LINE: RefCell<LineBuf> = RefCell::new(LineBuf::default());
}

#[derive(Default)]
struct LineBuf {
    out: String,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`: recomputed once a second.
    second: u64,
    prefix: String,
}

impl AccessLine<'_> {
    /// Writes the line: JSON or combined straight to the log buffer, or
    /// through tracing.
    pub fn emit(&self, format: Format) {
        let sink = SINK.get();
        let direct = match (sink, format) {
            (Some((sink, _)), Format::Combined) => Some((sink, true)),
            (Some((sink, true)), Format::Default) => Some((sink, false)),
            _ => None,
        };
        if let Some((sink, combined)) = direct {
            LINE.with(|b| {
                let mut b = b.borrow_mut();
                let b = &mut *b;
                b.out.clear();
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                if combined {
                    self.write_combined(&mut b.out, now.as_secs());
                } else {
                    self.write_json(&mut b.out, now, &mut b.second, &mut b.prefix);
                }
                sink.write_line(b.out.as_bytes());
            });
            return;
        }
        if format == Format::Combined {
            let mut line = String::new();
            self.write_combined(&mut line, 0);
            tracing::info!(target: "portcullis::access", "{}", line.trim_end());
            return;
        }
        tracing::info!(
            target: "portcullis::access",
            request_id = self.request_id,
            client_ip = %self.client_ip,
            method = self.method,
            host = self.host,
            path = self.path,
            protocol = self.protocol,
            status = self.status,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            duration_ms = self.duration.as_secs_f64() * 1000.0,
            route = self.route,
            upstream = self.upstream,
            user = self.user,
            user_agent = self.user_agent,
            referer = self.referer,
            tls_version = self.tls_version,
            error = self.error,
            "request"
        );
    }

    /// The combined-format line, newline-terminated: `addr - user
    /// [02/Dec/2026:18:30:00 +0000] "GET /path HTTP/1.1" 200 1234
    /// "referer" "user-agent"`. Quotes, backslashes, control and non-ASCII
    /// bytes inside the quoted parts are written `\xHH`, as nginx does.
    fn write_combined(&self, out: &mut String, secs: u64) {
        let _ = write!(out, "{} - ", self.client_ip);
        push_escaped_or_dash(out, self.user);
        out.push_str(" [");
        push_clf_time(out, secs);
        out.push_str("] \"");
        push_escaped(out, self.method);
        out.push(' ');
        push_escaped(out, self.path);
        out.push(' ');
        push_escaped(out, self.protocol);
        let _ = write!(out, "\" {} ", self.status);
        match self.bytes_out {
            Some(n) => push_padded(out, n, 1),
            None => out.push('-'),
        }
        out.push_str(" \"");
        push_escaped_or_dash(out, self.referer);
        out.push_str("\" \"");
        push_escaped_or_dash(out, self.user_agent);
        out.push_str("\"\n");
    }

    /// The JSON line, newline-terminated, appended to `out`. `second` and
    /// `prefix` cache the formatted date and time of the last second.
    fn write_json(&self, out: &mut String, now: Duration, second: &mut u64, prefix: &mut String) {
        let secs = now.as_secs();
        if *second != secs || prefix.is_empty() {
            prefix.clear();
            push_datetime(prefix, secs);
            *second = secs;
        }
        out.push_str("{\"timestamp\":\"");
        out.push_str(prefix);
        out.push('.');
        push_padded(out, u64::from(now.subsec_micros()), 6);
        out.push('Z');
        out.push_str("\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
        push_str(out, self.request_id);
        out.push_str(",\"client_ip\":\"");
        match self.client_text {
            Some(text) => out.push_str(text),
            None => {
                let _ = write!(out, "{}", self.client_ip);
            }
        }
        out.push_str("\",\"method\":");
        push_str(out, self.method);
        out.push_str(",\"host\":");
        push_str(out, self.host);
        out.push_str(",\"path\":");
        push_str(out, self.path);
        out.push_str(",\"protocol\":");
        push_str(out, self.protocol);
        if let Some(v) = self.tls_version {
            out.push_str(",\"tls_version\":");
            push_str(out, v);
        }
        out.push_str(",\"status\":");
        push_padded(out, u64::from(self.status), 1);
        if let Some(n) = self.bytes_in {
            out.push_str(",\"bytes_in\":");
            push_padded(out, n, 1);
        }
        if let Some(n) = self.bytes_out {
            out.push_str(",\"bytes_out\":");
            push_padded(out, n, 1);
        }
        // Milliseconds with microsecond precision: a JSON number, always.
        let micros = u64::try_from(self.duration.as_micros()).unwrap_or(u64::MAX);
        out.push_str(",\"duration_ms\":");
        push_padded(out, micros / 1000, 1);
        out.push('.');
        push_padded(out, micros % 1000, 3);
        out.push_str(",\"route\":");
        push_str(out, self.route);
        out.push_str(",\"upstream\":");
        push_str(out, self.upstream);
        out.push_str(",\"user\":");
        push_str(out, self.user);
        out.push_str(",\"user_agent\":");
        push_str(out, self.user_agent);
        out.push_str(",\"referer\":");
        push_str(out, self.referer);
        out.push_str(",\"error\":");
        push_str(out, self.error);
        out.push_str(",\"target\":\"portcullis::access\"}\n");
    }
}

/// `n` in decimal, zero-padded to at least `width` digits.
fn push_padded(out: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    while n > 0 || digits.len() - i < width.max(1) {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// A JSON string: quotes, backslashes and control characters escaped;
/// other UTF-8 as is.
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    // Nearly every value needs no escaping: one scan, one copy. The scan
    // has no early exit so the compiler can run it many bytes at a time.
    if !s.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\') | (b == 0x7f)
    }) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// `s` with `"`, `\\`, control and non-ASCII bytes as `\xHH` (nginx's
/// escaping in its text logs), so a value cannot end its quotes or line.
fn push_escaped(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
}

/// [`push_escaped`], or `-` for an empty value.
fn push_escaped_or_dash(out: &mut String, s: &str) {
    if s.is_empty() {
        out.push('-');
    } else {
        push_escaped(out, s);
    }
}

/// `02/Dec/2026:18:30:00 +0000`: the common log format's time, in UTC.
fn push_clf_time(out: &mut String, secs: u64) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[m as usize - 1],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time.
fn push_datetime(out: &mut String, secs: u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (the
/// well-known era-based conversion: 400-year eras of 146,097 days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(user: &'a str, path: &'a str) -> AccessLine<'a> {
        AccessLine {
            request_id: "req-1",
            client_ip: "2001:db8::1".parse().unwrap(),
            client_text: None,
            method: "GET",
            host: "app.example.com",
            path,
            status: 200,
            bytes_in: None,
            bytes_out: Some(100),
            duration: Duration::from_micros(1_234_567),
            route: "app",
            upstream: "http://10.0.0.2:8080",
            user,
            error: "",
            user_agent: "curl/8.5.0",
            referer: "",
            protocol: "HTTP/1.1",
            tls_version: Some("TLSv1.3"),
        }
    }

    fn json(l: &AccessLine<'_>, now: Duration) -> String {
        let (mut out, mut second, mut prefix) = (String::new(), 0, String::new());
        l.write_json(&mut out, now, &mut second, &mut prefix);
        out
    }

    #[test]
    fn the_line_is_json_with_every_field() {
        let now = Duration::new(1_795_755_243, 123_456_789); // 2026-11-27T04:54:03
        let out = json(&line("Zoë \"the\" admin\\\u{1}\n", "/a/b"), now);
        assert!(out.ends_with("}\n"), "{out}");
        assert_eq!(out.matches('\n').count(), 1, "one line: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
        assert_eq!(v["timestamp"], "2026-11-27T04:54:03.123456Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "portcullis::access");
        assert_eq!(v["message"], "request");
        assert_eq!(v["client_ip"], "2001:db8::1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_out"], 100);
        assert!(v.get("bytes_in").is_none(), "no length declared: {out}");
        assert_eq!(v["duration_ms"].as_f64(), Some(1234.567));
        assert_eq!(v["user"], "Zoë \"the\" admin\\\u{1}\n");
        assert_eq!(v["route"], "app");
        assert_eq!(v["upstream"], "http://10.0.0.2:8080");
        assert_eq!(v["error"], "");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["tls_version"], "TLSv1.3");
        assert_eq!(v["user_agent"], "curl/8.5.0");
        assert_eq!(v["referer"], "");
    }

    #[test]
    fn combined_lines_read_like_nginx_and_cannot_be_forged() {
        let mut l = line("alice", "/a b/\u{e9}");
        l.client_ip = "192.0.2.7".parse().unwrap();
        l.referer = "https://x.test/\"evil";
        l.user_agent = "agent\n1.2.3.4 - - [forged]";
        let mut out = String::new();
        l.write_combined(&mut out, 1_795_755_243);
        assert_eq!(
            out,
            "192.0.2.7 - alice [27/Nov/2026:04:54:03 +0000] \"GET /a b/\\xC3\\xA9 HTTP/1.1\" 200 100 \"https://x.test/\\x22evil\" \"agent\\x0A1.2.3.4 - - [forged]\"\n"
        );
        let mut anon = line("", "/");
        anon.client_ip = "192.0.2.7".parse().unwrap();
        anon.bytes_out = None;
        anon.user_agent = "";
        let mut out = String::new();
        anon.write_combined(&mut out, 0);
        assert_eq!(
            out,
            "192.0.2.7 - - [01/Jan/1970:00:00:00 +0000] \"GET / HTTP/1.1\" 200 - \"-\" \"-\"\n"
        );
    }

    #[test]
    fn short_durations_keep_their_leading_zeros() {
        let mut l = line("", "/");
        l.duration = Duration::from_micros(42);
        let v: serde_json::Value = serde_json::from_str(&json(&l, Duration::ZERO)).unwrap();
        assert_eq!(v["duration_ms"].as_f64(), Some(0.042));
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn numbers_are_plain_decimals() {
        for (n, width, want) in [
            (0, 1, "0"),
            (7, 3, "007"),
            (1234, 3, "1234"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            let mut s = String::new();
            push_padded(&mut s, n, width);
            assert_eq!(s, want);
        }
        let mut l = line("", "/");
        l.client_text = Some("192.0.2.7");
        let v: serde_json::Value = serde_json::from_str(&json(&l, Duration::ZERO)).unwrap();
        assert_eq!(v["client_ip"], "192.0.2.7");
    }

    #[test]
    fn dates_match_the_calendar() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_709_251_199, "2024-02-29T23:59:59"),
            (4_102_444_800, "2100-01-01T00:00:00"),
            (1_795_755_243, "2026-11-27T04:54:03"),
        ] {
            let mut s = String::new();
            push_datetime(&mut s, secs);
            assert_eq!(s, want, "{secs}");
        }
    }

    #[test]
    fn the_cached_second_moves_on() {
        let l = line("", "/");
        let (mut out, mut second, mut prefix) = (String::new(), 0, String::new());
        l.write_json(&mut out, Duration::from_secs(59), &mut second, &mut prefix);
        out.clear();
        l.write_json(&mut out, Duration::from_secs(60), &mut second, &mut prefix);
        assert!(out.contains("1970-01-01T00:01:00.000000Z"), "{out}");
    }
}
