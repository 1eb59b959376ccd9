//! Header rules (`request_headers`, `response_headers`): remove, then set
//! (replacing), then add (appending), with `{placeholders}` filled in.
//! Names the gateway manages itself were refused by `config`.

use http::{HeaderMap, HeaderValue};

use super::Placeholders;
use crate::config::{HeaderRules, Piece, Template};

/// Applies `rules` to `headers`.
pub fn apply(rules: &HeaderRules, headers: &mut HeaderMap, p: &Placeholders) {
    for name in &rules.remove {
        headers.remove(name);
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

/// A template's value for this request; `None` if a placeholder's value
/// cannot be a header value (the header is then left out).
fn render(t: &Template, p: &Placeholders) -> Option<HeaderValue> {
    if let Some(v) = &t.fixed {
        return Some(v.clone());
    }
    let mut out = String::with_capacity(t.source.len() + 32);
    for piece in &t.pieces {
        match piece {
            Piece::Text(s) => out.push_str(s),
            Piece::ClientIp => {
                use std::fmt::Write as _;
                let _ = write!(out, "{}", p.client_ip);
            }
            Piece::Host => out.push_str(&p.host),
            Piece::RequestId => out.push_str(p.request_id.to_str().unwrap_or("")),
            Piece::User => out.push_str(p.user.as_deref().unwrap_or("")),
            Piece::Scheme => out.push_str(p.scheme.as_str()),
        }
    }
    HeaderValue::from_str(&out).ok()
}
