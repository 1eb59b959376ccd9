//! Header rules (`request_headers`, `response_headers`): set, add and
//! remove, with `{placeholders}` in values; headers the gateway removes or
//! writes itself cannot be touched (a config error). What the request path
//! does with them is `policy::rules`'.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use toml::Spanned;

use super::cx::Cx;

// --- raw ---------------------------------------------------------------------

/// `request_headers` / `response_headers = { set = {..}, add = {..}, remove = [..] }`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeaderRules {
    pub set: Option<BTreeMap<String, String>>,
    pub add: Option<BTreeMap<String, String>>,
    pub remove: Option<Vec<String>>,
}

// --- checked -----------------------------------------------------------------

/// One piece of a header value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    ClientIp,
    Host,
    RequestId,
    User,
    Scheme,
}

/// A header value with `{placeholders}`; `fixed` when it has none.
#[derive(Debug, Clone)]
pub struct Template {
    pub pieces: Vec<Piece>,
    pub fixed: Option<HeaderValue>,
    pub source: String,
}

/// `request_headers` / `response_headers`, checked.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub set: Vec<(HeaderName, Template)>,
    pub add: Vec<(HeaderName, Template)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

// --- checks ------------------------------------------------------------------

/// Headers the gateway removes or writes itself: a rule may not set, add
/// or remove them (framing, hop-by-hop, forwarding and identity headers).
/// Names compare as backends read them: any case, `_` and `.` as `-`. The
/// identity and forwarding names cover at least what the pipeline strips
/// (a test checks this against `proxy::headers`).
pub fn reserved_header(name: &str) -> Option<&'static str> {
    const FRAMING: &[&str] = &[
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "host",
    ];
    const IDENTITY_PREFIXES: &[&str] = &[
        "x-authentik-",
        "x-auth-request-",
        "x-webauth-",
        "remote-",
        "x-remote-",
    ];
    const FORWARDING: &[&str] = &["forwarded", "x-real-ip"];
    const OWN: &[&str] = &["x-request-id", "strict-transport-security"];
    let n: String = name
        .bytes()
        .map(|b| match b {
            b'_' | b'.' => '-',
            b => b.to_ascii_lowercase() as char,
        })
        .collect();
    if FRAMING.contains(&n.as_str()) {
        Some("it is a hop-by-hop or framing header the gateway manages")
    } else if IDENTITY_PREFIXES.iter().any(|p| n.starts_with(p)) {
        Some(
            "it is an identity header: the gateway strips these from every request and only writes them for signed-in users",
        )
    } else if n.starts_with("x-forwarded-") || FORWARDING.contains(&n.as_str()) {
        Some("it is a forwarding or identity header the gateway strips and writes itself")
    } else if OWN.contains(&n.as_str()) {
        Some("the gateway writes this header itself (`hsts`, request ids)")
    } else {
        None
    }
}

/// Splits a header value into text and `{placeholders}`.
fn parse_template(text: &str) -> Result<Template, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("`{text}`: `{{` without a closing `}}`"))?;
        pieces.push(match &after[..close] {
            "client_ip" => Piece::ClientIp,
            "host" => Piece::Host,
            "request_id" => Piece::RequestId,
            "user" => Piece::User,
            "scheme" => Piece::Scheme,
            other => {
                return Err(format!(
                    "`{{{other}}}` is not a placeholder; use {{client_ip}}, {{host}}, {{request_id}}, {{user}} or {{scheme}}"
                ));
            }
        });
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    let literal: String = pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t.as_str(),
            _ => "",
        })
        .collect();
    HeaderValue::from_str(&literal).map_err(|_| format!("`{text}` is not a valid header value"))?;
    let fixed = match pieces.as_slice() {
        [] => Some(HeaderValue::from_static("")),
        [Piece::Text(t)] => HeaderValue::from_str(t).ok(),
        _ => None,
    };
    Ok(Template {
        pieces,
        fixed,
        source: text.to_string(),
    })
}

impl Cx<'_> {
    pub(super) fn header_rules(
        &mut self,
        key: &str,
        raw: Option<Spanned<FileHeaderRules>>,
    ) -> HeaderRules {
        let Some(raw) = raw else {
            return HeaderRules::default();
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let mut out = HeaderRules::default();
        let name_of = |cx: &mut Self, which: &str, n: &str| -> Option<HeaderName> {
            let k = format!("{key}.{which}");
            let Ok(h) = HeaderName::from_bytes(n.as_bytes()) else {
                cx.err(
                    Some(span.clone()),
                    &k,
                    format!("`{n}` is not a header name"),
                );
                return None;
            };
            if let Some(why) = reserved_header(n) {
                cx.err(
                    Some(span.clone()),
                    &k,
                    format!("`{n}` cannot be used: {why}"),
                );
                return None;
            }
            Some(h)
        };
        for (which, map) in [("set", raw.set), ("add", raw.add)] {
            for (n, v) in map.unwrap_or_default() {
                let Some(h) = name_of(self, which, &n) else {
                    continue;
                };
                match parse_template(&v) {
                    Ok(t) => {
                        if which == "set" {
                            out.set.push((h, t))
                        } else {
                            out.add.push((h, t))
                        }
                    }
                    Err(msg) => self.err(Some(span.clone()), &format!("{key}.{which}.{n}"), msg),
                }
            }
        }
        for n in raw.remove.unwrap_or_default() {
            if let Some(h) = name_of(self, "remove", &n) {
                out.remove.push(h);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = parse_template("ip={client_ip}; id={request_id}").unwrap();
        assert_eq!(t.pieces.len(), 4);
        assert!(t.fixed.is_none());
        assert!(parse_template("prod").unwrap().fixed.is_some());
        assert!(
            parse_template("{nope}")
                .unwrap_err()
                .contains("placeholder")
        );
        assert!(parse_template("{host").is_err());
    }
}
