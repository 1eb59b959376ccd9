//! The admin API's JSON views: `GET /routes` and `GET /certificates`.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::config::Action;
use crate::snapshot::Shared;
use crate::tls::store::{AcmeStatus, CertEntry, OrderLock};

/// Header rules as `GET /routes` shows them (values as written).
fn header_rules(r: &crate::config::HeaderRules) -> Value {
    if r.is_empty() {
        return Value::Null;
    }
    let map = |l: &[(http::HeaderName, crate::config::Template)]| {
        l.iter()
            .map(|(n, t)| (n.to_string(), json!(t.source)))
            .collect::<serde_json::Map<_, _>>()
    };
    json!({
        "set": map(&r.set),
        "add": map(&r.add),
        "remove": r.remove.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
    })
}

/// `GET /routes`: every route as checked, the default route, and with
/// `[docker]` the discovery state.
pub(super) fn routes(shared: &Shared) -> Value {
    let snap = shared.current();
    let routes: Vec<_> = snap
        .table
        .routes()
        .iter()
        .map(|r| {
            let c = &r.config;
            let (kind, target) = match &c.action {
                Action::Upstream(list) => (
                    "upstream",
                    json!(list.iter().map(|u| u.url.as_str()).collect::<Vec<_>>()),
                ),
                Action::Redirect(r) => ("redirect", json!(r.to)),
                Action::Respond(r) => ("respond", json!(r.status.as_u16())),
            };
            json!({
                "name": c.name,
                "host": c.host.to_string(),
                "path": c.path,
                "matrix_params": c.path_match.matrix_params,
                "case_insensitive_path": c.path_match.ignore_case,
                "action": kind,
                "target": target,
                "strip_prefix": c.strip_prefix,
                "preserve_host": c.preserve_host,
                "timeout_ms": c.timeout.as_millis() as u64,
                "request_buffering": c.limits.request_buffer.is_some(),
                "request_buffer_bytes": c.limits.request_buffer,
                "source": c.source.to_string(),
                "upstream_protocol": c.upstream_protocol.as_str(),
                "upstream_tls": c.upstream_tls.as_ref().map(|t| json!({
                    "ca_file": t.ca_file,
                    "server_name": t.server_name,
                    "client_cert_file": t.client_cert_file,
                    "pin_sha256": t.pin_sha256,
                    "insecure_skip_verify": t.insecure_skip_verify,
                })),
                "access": c.options.access.as_ref().map(|a| json!({
                    "name": a.name,
                    "users": a.users.len(),
                    "allow": a.allow.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                    "deny": a.deny.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                    "satisfy": match a.satisfy { crate::config::Satisfy::Any => "any", crate::config::Satisfy::All => "all" },
                    "pass_auth": a.pass_auth,
                    "realm": a.realm,
                })),
                "request_headers": header_rules(&c.options.request_headers),
                "response_headers": header_rules(&c.options.response_headers),
                "security_headers": c.options.security_headers,
                "compress": c.options.compress.map(|z| json!({
                    "level": z.level.as_str(),
                    "min_size": z.min_size,
                })),
                "rate_limit": c.options.rate_limit.map(|l| json!({
                    "requests": l.requests,
                    "per_ms": l.per.as_millis() as u64,
                    "burst": l.burst,
                    "by": l.by.as_str(),
                })),
                "error_pages": c.options.error_pages.pages.iter().map(|(m, _, path)| {
                    let status = match m {
                        crate::config::StatusMatch::Exact(s) => s.to_string(),
                        crate::config::StatusMatch::Class(c) => format!("{c}xx"),
                    };
                    (status, json!(path.display().to_string()))
                }).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    let mut body = json!({
        "generation": snap.generation,
        "default_route": match &snap.server.options.default_route {
            crate::config::DefaultRoute::NotFound => json!("404"),
            crate::config::DefaultRoute::Redirect(to) => json!({ "redirect": to }),
            crate::config::DefaultRoute::Drop => json!("drop"),
        },
        "routes": routes,
    });
    if let Some(d) = &shared.docker {
        let shadowed: Vec<_> = snap
            .discovery
            .shadowed
            .iter()
            .map(|s| {
                json!({
                    "host": s.host,
                    "path": s.path,
                    "source": s.source.to_string(),
                    "shadowed_by": s.by.to_string(),
                })
            })
            .collect();
        let errors: Vec<_> = snap
            .discovery
            .errors
            .iter()
            .map(|e| {
                json!({
                    "container": e.container,
                    "label": e.label,
                    "message": e.message,
                    "text": e.to_string(),
                })
            })
            .collect();
        body["docker"] = json!({
            "up": d.is_up(),
            "status": d.message(),
            "shadowed": shadowed,
            "label_errors": errors,
        });
    }
    body
}

/// `GET /certificates`: every served certificate (names, source, issuer,
/// validity), for ACME hosts the last issuance and the last error in plain
/// words, hosts still waiting for their first certificate, and with
/// `[cluster]` which instance holds each host's order lock.
pub(super) async fn certificates(shared: &Shared) -> Value {
    let locks: HashMap<String, OrderLock> = match shared.certs.shared.get() {
        Some(s) => s.order_locks().await.into_iter().collect(),
        None => Default::default(),
    };
    let mut list = Vec::new();
    let mut seen = HashSet::new();
    for (name, entry) in shared.certs.entries() {
        let status = shared.certs.acme_status.get(&name).map(|s| s.clone());
        list.push(certificate(
            &name,
            json!(entry.source),
            Some(&entry),
            status.as_ref(),
            locks.get(&name),
        ));
        seen.insert(name);
    }
    // ACME hosts that have no certificate yet still show their state.
    for s in shared.certs.acme_status.iter() {
        if seen.insert(s.key().clone()) {
            list.push(certificate(
                s.key(),
                json!("acme"),
                None,
                Some(&s),
                locks.get(s.key()),
            ));
        }
    }
    // A first order in progress (on any instance) shows its lock.
    for (host, l) in &locks {
        if !seen.contains(host) {
            list.push(certificate(host, json!("acme"), None, None, Some(l)));
        }
    }
    json!({ "certificates": list })
}

/// One row of `GET /certificates`; what is not known is null.
fn certificate(
    host: &str,
    source: Value,
    entry: Option<&CertEntry>,
    status: Option<&AcmeStatus>,
    lock: Option<&OrderLock>,
) -> Value {
    let f = entry.and_then(|e| e.facts.as_ref());
    json!({
        "host": host,
        "source": source,
        "issuer": f.map(|f| f.issuer.clone()),
        "names": f.map(|f| f.names.clone()),
        "not_before": f.map(|f| f.not_before),
        "not_after": f.map(|f| f.not_after),
        "last_issued": status.and_then(|s| s.last_issued),
        "last_error": status.and_then(|s| s.last_error.clone()),
        "next_attempt": status.and_then(|s| s.next_attempt),
        "order_lock": lock,
    })
}
