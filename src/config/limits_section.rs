//! Validation of the hardening knobs: server limits and timeouts, and per
//! route client-address rules, body limits, request buffering and active
//! health checks.

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::cx::Cx;

/// A size: a number of bytes, or a string like `"64KiB"`, `"10MB"`, `"1GiB"`.
#[derive(Debug)]
pub struct FileSize(pub Result<u64, String>);

impl<'de> Deserialize<'de> for FileSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = FileSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of bytes or a size like \"64KiB\" or \"10MB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<FileSize, E> {
                Ok(FileSize(
                    u64::try_from(v).map_err(|_| "a size cannot be negative".to_string()),
                ))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<FileSize, E> {
                Ok(FileSize(Ok(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileSize, E> {
                Ok(FileSize(parse_size(v)))
            }
        }
        d.deserialize_any(V)
    }
}

/// `"512"`, `"64KiB"`, `"64KB"`, `"10MiB"`, `"1GB"` (KB/MB/GB are powers of
/// 1000, KiB/MiB/GiB of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size; write e.g. \"64KiB\" or \"10MB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "`{text}`: unknown size unit `{other}` (use B, KB, KiB, MB, MiB, GB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// `health_check = { path = "/healthz", interval = "10s", timeout = "2s" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    /// Path to GET on each upstream; 2xx and 3xx count as healthy.
    pub path: String,
    /// How often (default "10s").
    pub interval: Option<String>,
    /// How long a check may take (default "2s").
    pub timeout: Option<String>,
}

/// Per-route limits, checked.
#[derive(Debug, Clone, Default)]
pub struct RouteLimits {
    /// When not empty, only clients in these networks may use the route.
    pub allow_ips: Vec<ipnet::IpNet>,
    /// Clients in these networks get 403 (checked after `allow_ips`).
    pub deny_ips: Vec<ipnet::IpNet>,
    /// Largest request body accepted (413 beyond it).
    pub max_body: Option<u64>,
    pub health_check: Option<HealthCheck>,
    /// Request buffering: at most this many bytes of a request body are
    /// read before the upstream is contacted (all of it when it is not
    /// longer); `None` streams the body as it comes.
    pub request_buffer: Option<u64>,
}

/// `[server] request_buffer` when not set.
pub const DEFAULT_REQUEST_BUFFER: u64 = 64 * 1024;
/// Largest `request_buffer`: it is memory held per request.
const MAX_REQUEST_BUFFER: u64 = 16 * 1024 * 1024;

impl RouteLimits {
    /// May a client at `ip` use this route?
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        (self.allow_ips.is_empty() || self.allow_ips.iter().any(|n| n.contains(&ip)))
            && !self.deny_ips.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// The raw per-route limit keys, gathered by the route validator.
pub struct RawRouteLimits {
    pub allow_ips: Option<Vec<Spanned<String>>>,
    pub deny_ips: Option<Vec<Spanned<String>>>,
    pub max_body: Option<Spanned<FileSize>>,
    pub health_check: Option<Spanned<FileHealthCheck>>,
    pub request_buffering: Option<Spanned<bool>>,
    pub request_buffer: Option<Spanned<FileSize>>,
}

impl Cx<'_> {
    pub(super) fn cidrs(
        &mut self,
        key: &str,
        list: Option<Vec<Spanned<String>>>,
    ) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for c in list.unwrap_or_default() {
            let text = c.get_ref().trim();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => out.push(n.trunc()),
                Err(_) => self.err(
                    Some(c.span()),
                    key,
                    format!("`{text}` is not an IP address or CIDR (e.g. \"10.0.0.0/8\")"),
                ),
            }
        }
        out
    }

    pub(super) fn size(
        &mut self,
        key: &str,
        v: Option<Spanned<FileSize>>,
        min: u64,
    ) -> Option<u64> {
        let v = v?;
        let span: Range<usize> = v.span();
        match v.into_inner().0 {
            Ok(n) if n >= min => Some(n),
            Ok(_) => {
                self.err(Some(span), key, format!("must be at least {min} bytes"));
                None
            }
            Err(msg) => {
                self.err(Some(span), key, msg);
                None
            }
        }
    }

    /// A request buffer size: 1 byte to [`MAX_REQUEST_BUFFER`].
    pub(super) fn buffer_size(&mut self, key: &str, v: Option<Spanned<FileSize>>) -> Option<u64> {
        let span = v.as_ref().map(|v| v.span());
        let n = self.size(key, v, 1)?;
        if n > MAX_REQUEST_BUFFER {
            self.err(
                span,
                key,
                "at most 16MiB (it is held in memory for each request); turn request_buffering off to stream larger bodies".into(),
            );
            return None;
        }
        Some(n)
    }

    pub(super) fn route_limits(
        &mut self,
        key: &str,
        raw: RawRouteLimits,
        server: &super::ServerConfig,
    ) -> RouteLimits {
        let allow_ips = self.cidrs(&format!("{key}.allow_ips"), raw.allow_ips);
        let deny_ips = self.cidrs(&format!("{key}.deny_ips"), raw.deny_ips);
        let max_body = self.size(&format!("{key}.max_body"), raw.max_body, 0);
        let health_check = raw.health_check.and_then(|h| {
            let span = h.span();
            let h = h.into_inner();
            let k = format!("{key}.health_check");
            if !h.path.starts_with('/') {
                self.err(Some(span.clone()), &k, "path must start with /".into());
                return None;
            }
            let dur = |cx: &mut Self, v: Option<String>, d: u64| match v
                .as_deref()
                .map(super::parse_duration)
            {
                None => Some(Duration::from_secs(d)),
                Some(Ok(x)) if !x.is_zero() => Some(x),
                Some(Ok(_)) => {
                    cx.err(
                        Some(span.clone()),
                        &k,
                        "interval and timeout must be above zero".into(),
                    );
                    None
                }
                Some(Err(msg)) => {
                    cx.err(Some(span.clone()), &k, msg);
                    None
                }
            };
            let interval = dur(self, h.interval, 10)?;
            let timeout = dur(self, h.timeout, 2)?;
            Some(HealthCheck {
                path: h.path,
                interval,
                timeout,
            })
        });
        let buffering = raw
            .request_buffering
            .map_or(server.request_buffering, |b| b.into_inner());
        let buffer = self
            .buffer_size(&format!("{key}.request_buffer"), raw.request_buffer)
            .unwrap_or(server.request_buffer);
        RouteLimits {
            allow_ips,
            deny_ips,
            max_body,
            health_check,
            request_buffer: buffering.then_some(buffer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases = [
            ("512", 512),
            ("64KiB", 65536),
            ("64KB", 64000),
            ("10MiB", 10 * 1024 * 1024),
            ("1GB", 1_000_000_000),
        ];
        for (t, want) in cases {
            assert_eq!(parse_size(t).unwrap(), want, "{t}");
        }
        for bad in ["", "KiB", "10 parsecs", "-1", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_buffering_defaults_overrides_and_bounds() {
        let parse = |src: &str| super::super::parse(std::path::Path::new("t.toml"), src);
        let head = "[server]\nhttp = \"127.0.0.1:0\"\n";
        let route = "[[route]]\nhost = \"a.com\"\nupstream = \"http://127.0.0.1:1\"\n";
        // On by default, 64 KiB.
        let c = parse(&format!("{head}{route}")).unwrap();
        assert_eq!(c.routes[0].limits.request_buffer, Some(64 * 1024));
        // The server's default and size, and a route's overrides.
        let c = parse(&format!(
            "{head}request_buffering = false\nrequest_buffer = \"1MiB\"\n{route}{route_b}",
            route_b = "[[route]]\nhost = \"b.com\"\nupstream = \"http://127.0.0.1:1\"\nrequest_buffering = true\nrequest_buffer = \"8KiB\"\n"
        ))
        .unwrap();
        assert_eq!(c.routes[0].limits.request_buffer, None);
        assert_eq!(c.routes[1].limits.request_buffer, Some(8 * 1024));
        // Out of bounds and wrong types, each at its line.
        let e = parse(&format!(
            "{head}request_buffer = \"17MiB\"\n{route}request_buffer = 0\n[[route]]\nhost = \"b.com\"\nupstream = \"http://127.0.0.1:1\"\nrequest_buffering = \"yes\"\n"
        ))
        .unwrap_err()
        .0;
        let at: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert!(at.contains(&(3, "server.request_buffer")), "{e:?}");
        assert!(at.contains(&(7, "route[1].request_buffer")), "{e:?}");
        assert!(at.iter().any(|(l, _)| *l == 11), "{e:?}");
        assert!(e[0].message.contains("16MiB"), "{e:?}");
    }

    #[test]
    fn allow_then_deny() {
        let l = RouteLimits {
            allow_ips: vec!["10.0.0.0/8".parse().unwrap()],
            deny_ips: vec!["10.0.0.66/32".parse().unwrap()],
            ..Default::default()
        };
        assert!(l.allows("10.1.2.3".parse().unwrap()));
        assert!(!l.allows("10.0.0.66".parse().unwrap()));
        assert!(!l.allows("192.168.1.1".parse().unwrap()));
        assert!(RouteLimits::default().allows("1.2.3.4".parse().unwrap()));
    }
}
