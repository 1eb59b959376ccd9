//! Observability through the real gateway: `/metrics` parsed as the
//! Prometheus text exposition format (families, types, labels, histogram
//! invariants, exact counts after known traffic); the Grafana dashboard only
//! queries metrics the binary exports; access-log lines from the real binary
//! are JSON with every documented field and never carry credentials; the
//! admin API's token rules; `portcullis health`; and the README's metric list.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{Method, StatusCode};
use support::backend::Backend;
use support::client::{TestBody, TestClient};
use support::gateway::Gateway;
use support::tls::{TestCa, get, handshake, roots_from_pem};

// --- the metrics contract ---------------------------------------------------

/// Every family `/metrics` exports: name, type, and the label names of its
/// samples (histograms: of `_sum`/`_count`; `_bucket` adds `le`). This is
/// what the README's "Observability" section and the dashboard rely on.
const FAMILIES: &[(&str, &str, &[&str])] = &[
    ("portcullis_build_info", "gauge", &["version"]),
    (
        "portcullis_requests_total",
        "counter",
        &["route", "method", "code", "status_class"],
    ),
    (
        "portcullis_request_duration_seconds",
        "histogram",
        &["route"],
    ),
    (
        "portcullis_upstream_errors_total",
        "counter",
        &["route", "kind"],
    ),
    ("portcullis_upstream_panic_total", "counter", &["route"]),
    ("portcullis_upstream_up", "gauge", &["route", "upstream"]),
    (
        "portcullis_upstream_ejections_total",
        "counter",
        &["route", "upstream", "reason"],
    ),
    ("portcullis_rate_limited_total", "counter", &["route"]),
    ("portcullis_requests_in_flight", "gauge", &["listener"]),
    ("portcullis_connections_open", "gauge", &["listener"]),
    ("portcullis_connections_total", "counter", &["listener"]),
    ("portcullis_tls_handshakes_total", "counter", &["result"]),
    (
        "portcullis_certificate_not_after_seconds",
        "gauge",
        &["host", "source"],
    ),
    ("portcullis_acme_orders_total", "counter", &["result"]),
    ("portcullis_auth_events_total", "counter", &["event"]),
    ("portcullis_sessions_active", "gauge", &[]),
    ("portcullis_config_reloads_total", "counter", &["result"]),
    (
        "portcullis_config_last_reload_success_timestamp_seconds",
        "gauge",
        &[],
    ),
    ("portcullis_routes_loaded", "gauge", &[]),
    ("process_cpu_seconds_total", "counter", &[]),
    ("process_resident_memory_bytes", "gauge", &[]),
    ("process_open_fds", "gauge", &[]),
    ("process_max_fds", "gauge", &[]),
    ("process_start_time_seconds", "gauge", &[]),
];

// --- a small parser for the text exposition format --------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: Option<String>,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Exposition {
    families: BTreeMap<String, Family>,
}

fn valid_metric_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

fn valid_label_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s
            .parse()
            .map_err(|_| format!("`{s}` is not a sample value")),
    }
}

/// `{a="x",b="y\"z"}` (the leading `{` already consumed); returns the
/// labels and the rest of the line after `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("label without `=`")?;
        let name = s[..eq].trim();
        if !valid_label_name(name) {
            return Err(format!("invalid label name `{name}`"));
        }
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape in label value: {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label `{name}` twice"));
        }
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected `,` or `}` after a label".into());
        }
    }
}

/// Parses the exposition and checks the rules a Prometheus server relies on:
/// each family's `# TYPE` comes before its samples and is declared once,
/// every sample belongs to a typed family (histograms through `_bucket`,
/// `_sum`, `_count`), a family's samples are contiguous, no series repeats,
/// and every histogram series has cumulative buckets in increasing `le`
/// ending in `+Inf`, equal to its `_count`, plus a `_sum`.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut seen_series = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, tail) = (parts.next(), parts.next(), parts.next());
            match (kw, name) {
                (Some("HELP"), Some(name)) => {
                    if !valid_metric_name(name) {
                        return Err(at(format!("invalid metric name `{name}`")));
                    }
                    let f = families.entry(name.to_string()).or_default();
                    if f.help.replace(tail.unwrap_or("").to_string()).is_some() {
                        return Err(at("second HELP".into()));
                    }
                }
                (Some("TYPE"), Some(name)) => {
                    let kind = tail.unwrap_or("").trim();
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type `{kind}`")));
                    }
                    let f = families.entry(name.to_string()).or_default();
                    if !f.kind.is_empty() {
                        return Err(at("second TYPE".into()));
                    }
                    if !f.samples.is_empty() {
                        return Err(at("TYPE after samples".into()));
                    }
                    f.kind = kind.to_string();
                }
                _ => {} // a comment
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| at("sample without a value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(at(format!("invalid metric name `{name}`")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| at(format!("bad timestamp `{ts}`")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing text".into()));
        }
        // Which family: the name itself, or a histogram/summary's part.
        let family = if families.get(name).is_some_and(|f| !f.kind.is_empty()) {
            name.to_string()
        } else {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| {
                    families.get(*b).is_some_and(|f| {
                        f.kind == "histogram" || (f.kind == "summary" && !name.ends_with("_bucket"))
                    })
                })
                .ok_or_else(|| at(format!("sample `{name}` has no # TYPE before it")))?;
            base.to_string()
        };
        if current.as_deref() != Some(family.as_str()) {
            if let Some(prev) = current.take() {
                finished.insert(prev);
            }
            if finished.contains(&family) {
                return Err(at(format!("samples of `{family}` are not contiguous")));
            }
            current = Some(family.clone());
        }
        if !seen_series.insert((name.to_string(), labels.clone())) {
            return Err(at("the same series twice".into()));
        }
        families.get_mut(&family).unwrap().samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (name, f) in &families {
        if f.kind.is_empty() {
            return Err(format!("`{name}` has HELP but no TYPE"));
        }
        if f.kind == "counter" {
            for s in &f.samples {
                if s.value < 0.0 || s.value.is_nan() {
                    return Err(format!("counter {name} {:?} = {}", s.labels, s.value));
                }
            }
        }
        if f.kind == "histogram" {
            check_histogram(name, f)?;
        }
    }
    Ok(Exposition { families })
}

fn check_histogram(name: &str, f: &Family) -> Result<(), String> {
    let bucket = format!("{name}_bucket");
    let sum = format!("{name}_sum");
    let count = format!("{name}_count");
    // Series key: labels without `le`.
    let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    let mut sums = BTreeSet::new();
    for s in &f.samples {
        if s.name == bucket {
            let mut key = s.labels.clone();
            let le = key
                .remove("le")
                .ok_or_else(|| format!("{bucket} without le: {:?}", s.labels))?;
            let le = parse_value(&le)?;
            series.entry(key).or_default().push((le, s.value));
        } else if s.name == count {
            counts.insert(s.labels.clone(), s.value);
        } else if s.name == sum {
            sums.insert(s.labels.clone());
        } else {
            return Err(format!("`{}` in histogram {name}", s.name));
        }
    }
    if series.len() != counts.len() || series.len() != sums.len() {
        return Err(format!(
            "{name}: {} bucket series, {} _count, {} _sum",
            series.len(),
            counts.len(),
            sums.len()
        ));
    }
    for (labels, buckets) in &series {
        for w in buckets.windows(2) {
            if w[1].0 <= w[0].0 {
                return Err(format!("{name}{labels:?}: le not increasing: {buckets:?}"));
            }
            if w[1].1 < w[0].1 {
                return Err(format!(
                    "{name}{labels:?}: buckets not cumulative: {buckets:?}"
                ));
            }
        }
        let last = buckets.last().unwrap();
        if last.0 != f64::INFINITY {
            return Err(format!("{name}{labels:?}: last bucket is not +Inf"));
        }
        let c = counts
            .get(labels)
            .ok_or_else(|| format!("{name}{labels:?}: no _count"))?;
        if last.1 != *c {
            return Err(format!(
                "{name}{labels:?}: +Inf bucket {} != _count {c}",
                last.1
            ));
        }
        if !sums.contains(labels) {
            return Err(format!("{name}{labels:?}: no _sum"));
        }
    }
    Ok(())
}

impl Exposition {
    fn family(&self, name: &str) -> &Family {
        self.families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in /metrics"))
    }

    /// The value of the one sample named `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.families
            .values()
            .flat_map(|f| &f.samples)
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("no sample {name}{want:?}"))
    }

    /// Sum over every sample named `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.families
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .fold(0.0, |a, b| a + b)
    }
}

async fn scrape(admin: SocketAddr) -> Exposition {
    let r = TestClient::new()
        .get(&format!("http://{admin}/metrics"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "content-type {ct}"
    );
    parse_exposition(&r.text()).unwrap_or_else(|e| panic!("{e}\n--- /metrics ---\n{}", r.text()))
}

/// Every documented family is there with its type, and every sample has
/// exactly the documented label names.
fn check_contract(m: &Exposition) {
    for (name, kind, labels) in FAMILIES {
        let f = m.family(name);
        assert_eq!(f.kind, *kind, "type of {name}");
        assert!(
            f.help.as_deref().is_some_and(|h| !h.is_empty()),
            "HELP of {name}"
        );
        for s in &f.samples {
            let mut want: BTreeSet<&str> = labels.iter().copied().collect();
            if s.name.ends_with("_bucket") {
                want.insert("le");
            }
            let got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
            assert_eq!(got, want, "labels of {} {:?}", s.name, s.labels);
        }
    }
    let documented: BTreeSet<&str> = FAMILIES.iter().map(|f| f.0).collect();
    for name in m.families.keys() {
        assert!(
            documented.contains(name.as_str()),
            "{name} is exported but not in this test's contract (nor, probably, the README)"
        );
    }
}

// --- /metrics after traffic -------------------------------------------------

#[tokio::test]
async fn metrics_after_traffic_have_the_documented_families_labels_and_counts() {
    let echo = Backend::echo().await;
    let refusing = Backend::refusing().await;
    let hanging = Backend::hanging().await;
    let routes = format!(
        r#"
[[route]]
name = "app"
host = "app.test"
upstream = "{echo}"

[[route]]
name = "dead"
host = "dead.test"
upstream = "{refusing}"

[[route]]
name = "slow"
host = "slow.test"
upstream = "{hanging}"
timeout = "200ms"

[[route]]
name = "hello"
host = "hello.test"
respond = {{ body = "hi" }}

[[route]]
name = "old"
host = "old.test"
redirect = "https://new.test"
"#,
        echo = echo.url(),
        refusing = refusing.url(),
        hanging = hanging.url(),
    );
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let gw = Gateway::start(&routes).await;

    // Before any traffic: the whole contract, every counter at zero.
    let m = scrape(gw.admin_addr()).await;
    check_contract(&m);
    assert_eq!(m.sum("portcullis_requests_total", &[]), 0.0);
    assert_eq!(m.value("portcullis_routes_loaded", &[]), 5.0);
    assert_eq!(
        m.value("portcullis_config_reloads_total", &[("result", "success")]),
        1.0,
        "the initial load counts as a successful load"
    );

    let c = gw.client();
    let mut sent = 0;
    for _ in 0..3 {
        assert_eq!(c.get("http://app.test/a").await.status, StatusCode::OK);
        sent += 1;
    }
    let r = c
        .request(Method::POST, "http://app.test/form", &[], "x=1")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = c.get("http://app.test/status?code=404").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let propfind = Method::from_bytes(b"PROPFIND").unwrap();
    let r = c
        .request(propfind, "http://app.test/dav", &[], TestBody::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(
            c.get("http://dead.test/").await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    assert_eq!(
        c.get("http://slow.test/").await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(c.get("http://hello.test/").await.status, StatusCode::OK);
    assert_eq!(
        c.get("http://old.test/x").await.status,
        StatusCode::PERMANENT_REDIRECT
    );
    for _ in 0..2 {
        assert_eq!(
            c.get("http://nobody.test/").await.status,
            StatusCode::NOT_FOUND
        );
    }
    sent += 3 + 2 + 1 + 1 + 1 + 2;

    let m = scrape(gw.admin_addr()).await;
    check_contract(&m);
    let req = |route: &str, method: &str, class: &str| {
        m.sum(
            "portcullis_requests_total",
            &[
                ("route", route),
                ("method", method),
                ("status_class", class),
            ],
        )
    };
    assert_eq!(req("app", "GET", "2xx"), 3.0);
    assert_eq!(req("app", "POST", "2xx"), 1.0);
    assert_eq!(req("app", "GET", "4xx"), 1.0);
    assert_eq!(req("app", "other", "2xx"), 1.0);
    assert_eq!(req("dead", "GET", "5xx"), 2.0);
    assert_eq!(req("slow", "GET", "5xx"), 1.0);
    assert_eq!(req("hello", "GET", "2xx"), 1.0);
    assert_eq!(req("old", "GET", "3xx"), 1.0);
    assert_eq!(req("", "GET", "4xx"), 2.0, "unrouted requests: route=\"\"");
    // The exact code too, for alerts on 429 or 503 alone.
    let code = |route: &str, code: &str| {
        m.sum(
            "portcullis_requests_total",
            &[("route", route), ("code", code)],
        )
    };
    assert_eq!(code("dead", "502"), 2.0);
    assert_eq!(code("slow", "504"), 1.0);
    assert_eq!(code("", "404"), 2.0);
    // The process's own figures, under their standard names.
    assert!(m.value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(m.value("process_open_fds", &[]) >= 3.0);
    assert!(m.value("process_start_time_seconds", &[]) > 1.7e9);
    assert_eq!(m.sum("portcullis_requests_total", &[]), sent as f64);

    // One histogram observation per request, per route.
    let count = |route: &str| {
        m.value(
            "portcullis_request_duration_seconds_count",
            &[("route", route)],
        )
    };
    assert_eq!(count("app"), 6.0);
    assert_eq!(count("dead"), 2.0);
    assert_eq!(count("slow"), 1.0);
    assert_eq!(count(""), 2.0);
    assert_eq!(
        m.sum("portcullis_request_duration_seconds_count", &[]),
        sent as f64
    );
    // The timed-out request took at least its 200 ms timeout.
    assert_eq!(
        m.value(
            "portcullis_request_duration_seconds_bucket",
            &[("route", "slow"), ("le", "0.1")]
        ),
        0.0
    );
    assert!(
        m.value(
            "portcullis_request_duration_seconds_sum",
            &[("route", "slow")]
        ) >= 0.2
    );

    // Upstream errors: every route has every kind, counted where it happened.
    let up = |route: &str, kind: &str| {
        m.value(
            "portcullis_upstream_errors_total",
            &[("route", route), ("kind", kind)],
        )
    };
    for route in ["app", "dead", "slow", "hello", "old", ""] {
        for kind in ["refused", "timeout", "reset"] {
            let want = match (route, kind) {
                ("dead", "refused") => 2.0,
                ("slow", "timeout") => 1.0,
                _ => 0.0,
            };
            assert_eq!(up(route, kind), want, "upstream errors {route} {kind}");
        }
    }

    // Connections and in-flight requests, per listener.
    for l in ["http", "https"] {
        assert_eq!(
            m.value("portcullis_requests_in_flight", &[("listener", l)]),
            0.0
        );
    }
    assert!(m.value("portcullis_connections_total", &[("listener", "http")]) >= 1.0);
    assert_eq!(
        m.value("portcullis_connections_total", &[("listener", "https")]),
        0.0
    );

    // Process-wide families, present with zero values.
    assert_eq!(
        m.value(
            "portcullis_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    for r in ["ok", "failed", "unknown_sni"] {
        assert_eq!(
            m.value("portcullis_tls_handshakes_total", &[("result", r)]),
            0.0
        );
    }
    for r in ["success", "failure"] {
        assert_eq!(
            m.value("portcullis_acme_orders_total", &[("result", r)]),
            0.0
        );
    }
    for e in [
        "login_ok",
        "login_failed",
        "denied",
        "refresh_ok",
        "refresh_failed",
        "logout",
        "bearer_ok",
        "bearer_rejected",
    ] {
        assert_eq!(
            m.value("portcullis_auth_events_total", &[("event", e)]),
            0.0
        );
    }
    assert_eq!(m.value("portcullis_sessions_active", &[]), 0.0);
    assert!(
        m.family("portcullis_certificate_not_after_seconds")
            .samples
            .is_empty(),
        "no TLS, no certificates"
    );
    let last = m.value(
        "portcullis_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(
        last >= started.floor() - 1.0 && last <= started + 120.0,
        "last reload {last}, test started {started}"
    );

    // Reloads: a good one, then a broken one. Per-route counters survive.
    let generation = gw.reload_with(&format!("{routes}\n[[route]]\nname = \"new\"\nhost = \"new.test\"\nrespond = {{ body = \"new\" }}\n")).await;
    assert!(generation >= 2);
    gw.rewrite_config("[[route]]\nhost = \"broken.test\"\nupstream = \"not a url\"\n");
    let (status, v) = gw.reload().await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let m = scrape(gw.admin_addr()).await;
    check_contract(&m);
    assert_eq!(
        m.value("portcullis_config_reloads_total", &[("result", "success")]),
        2.0
    );
    assert_eq!(
        m.value("portcullis_config_reloads_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(m.value("portcullis_routes_loaded", &[]), 6.0);
    assert_eq!(
        m.sum(
            "portcullis_requests_total",
            &[("route", "app"), ("method", "GET"), ("status_class", "2xx")]
        ),
        3.0,
        "per-route counters survive a reload"
    );
}

#[tokio::test]
async fn tls_handshakes_and_certificate_expiry_are_exported() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["app.test"]);
    let gw = Gateway::builder(
        r#"
[server]
http = "{{HTTP}}"
https = "{{HTTPS}}"
admin = "{{ADMIN}}"
state_dir = "{{DIR}}/state"

[[certificate]]
hosts = ["app.test"]
cert_file = "app.pem"
key_file = "app.key"

[[route]]
name = "app"
host = "app.test"
respond = { body = "secure" }
"#,
    )
    .file("app.pem", &leaf.cert_pem)
    .file("app.key", &leaf.key_pem)
    .start()
    .await;

    let hs = handshake(
        gw.https_addr(),
        "app.test",
        roots_from_pem(&ca.pem()),
        &[b"http/1.1"],
    )
    .await
    .expect("handshake");
    let r = get(hs, "app.test", "/").await;
    assert_eq!(r.status, StatusCode::OK);
    let refused = handshake(
        gw.https_addr(),
        "unknown.test",
        roots_from_pem(&ca.pem()),
        &[b"http/1.1"],
    )
    .await;
    assert!(refused.is_err());

    let admin = gw.admin_addr();
    let m = support::wait_for(
        "TLS counters",
        Duration::from_secs(10),
        move || async move {
            let m = scrape(admin).await;
            (m.value(
                "portcullis_tls_handshakes_total",
                &[("result", "unknown_sni")],
            ) >= 1.0)
                .then_some(m)
        },
    )
    .await;
    check_contract(&m);
    assert_eq!(
        m.value("portcullis_tls_handshakes_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        m.value(
            "portcullis_tls_handshakes_total",
            &[("result", "unknown_sni")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "portcullis_requests_total",
            &[("route", "app"), ("method", "GET"), ("status_class", "2xx")]
        ),
        1.0
    );
    assert!(m.value("portcullis_connections_total", &[("listener", "https")]) >= 1.0);

    let (_, pem) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let not_after = cert.validity().not_after.timestamp() as f64;
    assert_eq!(
        m.value(
            "portcullis_certificate_not_after_seconds",
            &[("host", "app.test"), ("source", "file")]
        ),
        not_after
    );
}

// --- the dashboard queries only what the binary exports ---------------------

/// Every Prometheus query in the dashboard: panel targets (rows included)
/// and `label_values(...)` variables.
fn dashboard_promql(d: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, loki: bool, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                let here_loki = match o.get("datasource") {
                    Some(ds) => ds["type"] == "loki" || ds["uid"] == "loki",
                    None => loki,
                };
                if let Some(serde_json::Value::String(e)) = o.get("expr")
                    && !here_loki
                {
                    out.push(e.clone());
                }
                for v in o.values() {
                    walk(v, here_loki, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, loki, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], false, &mut out);
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        // A datasource variable's query is a plugin type, not PromQL.
        if var["type"] == "datasource" {
            continue;
        }
        let q = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap_or("");
        if let Some(args) = q
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
        {
            // label_values(selector, label) or label_values(label)
            if let Some((selector, _label)) = args.rsplit_once(',') {
                out.push(selector.to_string());
            }
        } else if !q.is_empty() {
            out.push(q.to_string());
        }
    }
    out
}

fn dashboard() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/grafana/portcullis.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn promql_metric_name_extraction() {
    let cases: &[(&str, &[&str])] = &[
        ("up", &["up"]),
        (
            r#"sum by (route) (rate(portcullis_requests_total{route=~"$route", x="a{b}"}[$__rate_interval]))"#,
            &["portcullis_requests_total"],
        ),
        (
            "histogram_quantile(0.99, sum by (le, route) (rate(a_bucket[5m])))",
            &["a_bucket"],
        ),
        (
            r#"label_replace(x, "route", "(no route)", "route", "^$") / on(route) group_left(kind) y offset 5m"#,
            &["x", "y"],
        ),
        ("min by (host) ((a - time()) / 86400) > bool 1e3", &["a"]),
        ("sum(rate(b[1m])) without (instance) unless c", &["b", "c"]),
    ];
    for (expr, want) in cases {
        assert_eq!(support::promql::uses(expr).metric_names(), *want, "{expr}");
    }
}

#[test]
fn the_exposition_parser_rejects_what_prometheus_would() {
    let ok = "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n# TYPE c counter\nc{a=\"q\\\"\"} 1\n";
    let e = parse_exposition(ok).unwrap();
    assert_eq!(e.value("c", &[("a", "q\"")]), 1.0);
    for bad in [
        "c 1\n",                                                    // no TYPE
        "# TYPE c counter\nc 1\nc 2\n",                             // same series twice
        "# TYPE c counter\n# TYPE c counter\nc 1\n",                // two TYPEs
        "# TYPE c counter\nc{a=\"x} 1\n",                           // unterminated
        "# TYPE c counter\nc -1\n",                                 // negative counter
        "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x=\"1\"} 2\n", // not contiguous
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", // +Inf != count
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",       // no _sum
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted:\n{bad}");
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    // With `[cluster]` (its Redis need not answer), so the metrics served
    // only then are exported too.
    let unreachable = support::tls::free_port();
    let gw = Gateway::builder(&format!(
        "[cluster]\nredis = \"redis://127.0.0.1:{unreachable}/0\"\nencryption_key_file = \"cluster.key\"\n\n\
         [[route]]\nhost = \"a.test\"\nrespond = {{ body = \"a\" }}\n"
    ))
    .file("cluster.key", "8f1c2e9a4b7d6f30112233445566778899aabbccddeeff00a1b2c3d4e5f60718")
    .start()
    .await;
    assert_eq!(
        gw.client().get("http://a.test/").await.status,
        StatusCode::OK
    );
    let m = scrape(gw.admin_addr()).await;

    let d = dashboard();
    let queries = dashboard_promql(&d);
    assert!(queries.len() >= 15, "{} PromQL queries", queries.len());
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = support::promql::uses(q).metric_names();
        assert!(!names.is_empty(), "no metric in `{q}`");
        for n in names {
            let family = match m.families.get(&n) {
                Some(f) => {
                    assert_ne!(
                        f.kind, "histogram",
                        "`{q}` queries histogram {n} without _bucket/_sum/_count"
                    );
                    n.clone()
                }
                None => {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| n.strip_suffix(s))
                        .filter(|b| m.families.get(*b).is_some_and(|f| f.kind == "histogram"))
                        .unwrap_or_else(|| {
                            panic!(
                                "the dashboard queries `{n}` (in `{q}`), which portcullis does not export; it exports: {:?}",
                                m.families.keys().collect::<Vec<_>>()
                            )
                        });
                    base.to_string()
                }
            };
            used.insert(family);
        }
    }
    // The dashboard covers every topic the issue asks for.
    for want in [
        "portcullis_requests_total",
        "portcullis_request_duration_seconds",
        "portcullis_upstream_errors_total",
        "portcullis_upstream_up",
        "portcullis_upstream_ejections_total",
        "portcullis_upstream_panic_total",
        "portcullis_cluster_up",
        "portcullis_requests_in_flight",
        "portcullis_connections_open",
        "portcullis_tls_handshakes_total",
        "portcullis_certificate_not_after_seconds",
        "portcullis_acme_orders_total",
        "portcullis_auth_events_total",
        "portcullis_sessions_active",
        "portcullis_config_reloads_total",
    ] {
        assert!(used.contains(want), "no dashboard panel queries {want}");
    }
    // And a Loki logs panel.
    let panels = d["panels"].as_array().unwrap();
    assert!(
        panels
            .iter()
            .any(|p| p["type"] == "logs" && p["datasource"]["type"] == "loki"),
        "no Loki logs panel"
    );
}

// --- access log from the real binary ----------------------------------------

const BEARER: &str = "secret-token-123";
const COOKIE_SECRET: &str = "sessionsecret456";
const QUERY_SECRET: &str = "querysecret789";
const ADMIN_TOKEN: &str = "admintoken-0b5e7d";

/// `2026-01-02T03:04:05.678Z`-style (RFC 3339, UTC).
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s[19..].contains('+') || s[19..].contains('-'))
}

/// Fields `{{.name}}` that the dashboard's Loki queries format lines with.
fn dashboard_loki_fields(d: &serde_json::Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        if p["datasource"]["type"] != "loki" {
            continue;
        }
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            for part in e.split("{{.").skip(1) {
                out.insert(part.split("}}").next().unwrap().trim().to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn access_log_lines_are_json_with_every_field_and_no_secrets() {
    let echo = Backend::echo().await;
    let refusing = Backend::refusing().await;
    let toml = format!(
        r#"
[server]
http = "{{{{HTTP}}}}"
admin = "{{{{ADMIN}}}}"
admin_token_file = "{{{{DIR}}}}/admin_token"
state_dir = "{{{{DIR}}}}/state"

[[route]]
name = "app"
host = "app.test"
upstream = "{}"

[[route]]
name = "dead"
host = "dead.test"
upstream = "{}"
"#,
        echo.url(),
        refusing.url()
    );
    let proc = Gateway::builder(&toml)
        .file("admin_token", ADMIN_TOKEN)
        .spawn_binary()
        .await;
    let c = proc.client();
    let auth = format!("Bearer {BEARER}");
    let cookie = format!("__Host-portcullis={COOKIE_SECRET}; theme=dark");
    let secrets = |id: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("authorization", auth.clone()),
            ("cookie", cookie.clone()),
            ("x-request-id", id.to_string()),
            ("user-agent", "obs-agent/1.0".to_string()),
            (
                "referer",
                format!("https://ref.test/page?code={QUERY_SECRET}"),
            ),
        ]
    };
    let send = |method: Method, url: String, id: &'static str, body: &'static str| {
        let headers = secrets(id);
        let c = c.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.request(method, &url, &h, body).await
        }
    };
    let q = format!("token={QUERY_SECRET}&page=2");
    let ok = send(
        Method::GET,
        format!("http://app.test/app/path?{q}"),
        "obs-1",
        "",
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let post = send(
        Method::POST,
        format!("http://app.test/upload?{q}"),
        "obs-2",
        "hello world",
    )
    .await;
    assert_eq!(post.status, StatusCode::OK);
    let bad = send(Method::GET, format!("http://dead.test/x?{q}"), "obs-3", "").await;
    assert_eq!(bad.status, StatusCode::BAD_GATEWAY);
    let none = send(Method::GET, format!("http://nobody.test/?{q}"), "obs-4", "").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    // The wrong token on the admin API is refused, and not logged either.
    let r = TestClient::new()
        .get_with(
            &format!("http://{}/routes?{q}", proc.admin_addr()),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let access: BTreeMap<String, serde_json::Value> =
        support::wait_for("four access-log lines", Duration::from_secs(15), || {
            let logs = proc.logs();
            async move {
                let lines: BTreeMap<String, serde_json::Value> = logs
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter(|v| v["target"] == "portcullis::access")
                    .filter_map(|v| Some((v["request_id"].as_str()?.to_string(), v)))
                    .collect();
                (lines.len() >= 4).then_some(lines)
            }
        })
        .await;
    let logs = proc.logs();

    // Every line the process printed is one JSON object.
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        assert!(v["timestamp"].as_str().is_some_and(is_rfc3339), "{line}");
        assert!(v["level"].is_string() && v["target"].is_string(), "{line}");
    }
    // No credential anywhere in the output.
    for secret in [BEARER, COOKIE_SECRET, QUERY_SECRET, ADMIN_TOKEN] {
        assert!(
            !logs.contains(secret),
            "`{secret}` leaked into the logs:\n{logs}"
        );
    }

    const FIELDS: &[&str] = &[
        "timestamp",
        "level",
        "target",
        "request_id",
        "client_ip",
        "host",
        "method",
        "path",
        "status",
        "bytes_out",
        "duration_ms",
        "route",
        "upstream",
        "user",
        "protocol",
        "user_agent",
        "referer",
    ];
    let line = |id: &str| {
        let v = access
            .get(id)
            .unwrap_or_else(|| panic!("no access-log line for {id}:\n{logs}"));
        for f in FIELDS {
            assert!(v.get(*f).is_some(), "access line {id} lacks `{f}`: {v}");
        }
        assert_eq!(v["level"], "INFO", "{v}");
        assert_eq!(v["client_ip"], "127.0.0.1", "{v}");
        assert!(v["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{v}");
        assert_eq!(v["user"], "", "nobody signed in: {v}");
        v
    };
    let a = line("obs-1");
    assert_eq!(a["host"], "app.test");
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/app/path", "the query is dropped");
    assert_eq!(a["status"], 200);
    assert_eq!(a["route"], "app");
    assert_eq!(a["upstream"], echo.url());
    assert_eq!(a["bytes_out"], ok.body.len() as u64);
    assert_eq!(a["error"], "");
    assert_eq!(a["protocol"], "HTTP/1.1");
    assert_eq!(a["user_agent"], "obs-agent/1.0");
    assert_eq!(a["referer"], "https://ref.test/page");
    assert!(a.get("tls_version").is_none(), "plain http: {a}");

    let b = line("obs-2");
    assert_eq!(b["method"], "POST");
    assert_eq!(b["path"], "/upload");
    assert_eq!(b["bytes_in"], 11);
    assert_eq!(b["bytes_out"], post.body.len() as u64);

    let e = line("obs-3");
    assert_eq!(e["status"], 502);
    assert_eq!(e["route"], "dead");
    assert_eq!(e["upstream"], refusing.url());
    assert!(e["error"].as_str().is_some_and(|s| !s.is_empty()), "{e}");

    let n = line("obs-4");
    assert_eq!(n["status"], 404);
    assert_eq!(n["route"], "");
    assert_eq!(n["host"], "nobody.test");

    // The dashboard's Loki panels format lines from fields that exist.
    for f in dashboard_loki_fields(&dashboard()) {
        assert!(
            a.get(&f).is_some(),
            "the dashboard's Loki query uses `{f}`, which access-log lines lack"
        );
    }
}

/// `access_log_format = "combined"`: Apache/nginx combined lines on
/// stdout (for fail2ban and GoAccess), the host's port never in the way,
/// no query string.
#[tokio::test]
async fn access_log_can_be_written_in_the_combined_format() {
    let echo = Backend::echo().await;
    let toml = format!(
        r#"
[server]
http = "{{{{HTTP}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"
access_log_format = "combined"

[[route]]
host = "app.test"
upstream = "{}"
"#,
        echo.url()
    );
    let proc = Gateway::builder(&toml).spawn_binary().await;
    let r = proc
        .client()
        .get_with(
            &format!("http://app.test/combined?secret={QUERY_SECRET}"),
            &[
                ("user-agent", "Mozilla/5.0 \"quoted\""),
                ("referer", "https://ref.test/"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let line = support::wait_for("a combined access line", Duration::from_secs(15), || {
        let logs = proc.logs();
        async move {
            logs.lines()
                .find(|l| l.contains("\"GET /combined HTTP/1.1\""))
                .map(String::from)
        }
    })
    .await;
    let want_start = "127.0.0.1 - - [";
    assert!(line.starts_with(want_start), "{line}");
    let tail = format!(
        "] \"GET /combined HTTP/1.1\" 200 {} \"https://ref.test/\" \"Mozilla/5.0 \\x22quoted\\x22\"",
        r.body.len()
    );
    assert!(line.ends_with(&tail), "{line}\nwant …{tail}");
    assert!(!proc.logs().contains(QUERY_SECRET));
}

/// Access-log lines of `logs` by request id.
fn access_lines(logs: &str) -> BTreeMap<String, serde_json::Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "portcullis::access")
        .filter_map(|v| Some((v["request_id"].as_str()?.to_string(), v)))
        .collect()
}

/// Sends a raw HTTP/1.1 request on a new connection.
async fn raw_request(addr: SocketAddr, path: &str, id: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: {id}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn access_log_lines_are_written_when_the_response_ends_or_the_client_leaves() {
    let echo = Backend::echo().await;
    let toml = format!(
        r#"
[server]
http = "{{{{HTTP}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"

[[route]]
name = "app"
host = "app.test"
upstream = "{}"

[[route]]
name = "fixed"
host = "fixed.test"
respond = {{ status = 200, body = "hello" }}
"#,
        echo.url()
    );
    let proc = Gateway::builder(&toml).spawn_binary().await;
    let addr = proc.http_addr();

    // A whole download: the bytes that went out, counted at the end.
    const BIG: u64 = 4_000_000;
    let full = proc
        .client()
        .get_with(
            &format!("http://app.test/bytes?n={BIG}"),
            &[("x-request-id", "whole")],
        )
        .await;
    assert_eq!(full.status, StatusCode::OK);
    assert_eq!(full.body.len() as u64, BIG);

    // HEAD: the body is never sent, and that is not the client leaving.
    let head = proc
        .client()
        .request(
            Method::HEAD,
            "http://fixed.test/",
            &[("x-request-id", "head")],
            "",
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);

    // A client that leaves before the backend answers: 499.
    let s = raw_request(addr, "/hold", "gone-early").await;
    support::wait_for(
        "the backend to hold the request",
        Duration::from_secs(10),
        || {
            let n = echo.holding();
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
    drop(s);

    // A client that leaves in the middle of a large body.
    const HUGE: u64 = 500_000_000;
    let mut s = raw_request(addr, &format!("/bytes?n={HUGE}"), "gone-midway").await;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 256 * 1024 {
        use tokio::io::AsyncReadExt;
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the gateway closed first");
        got += n;
    }
    drop(s);

    let lines = support::wait_for("four access-log lines", Duration::from_secs(15), || {
        let logs = proc.logs();
        async move {
            let l = access_lines(&logs);
            ["whole", "head", "gone-early", "gone-midway"]
                .iter()
                .all(|id| l.contains_key(*id))
                .then_some(l)
        }
    })
    .await;
    echo.release();

    let whole = &lines["whole"];
    assert_eq!(whole["status"], 200, "{whole}");
    assert_eq!(whole["bytes_out"], BIG, "{whole}");
    assert_eq!(whole["error"], "", "{whole}");

    let head = &lines["head"];
    assert_eq!(head["status"], 200, "{head}");
    assert_eq!(head["method"], "HEAD", "{head}");
    assert_eq!(head["error"], "", "{head}");

    let early = &lines["gone-early"];
    assert_eq!(early["status"], 499, "{early}");
    assert_eq!(early["error"], "client_closed", "{early}");
    assert_eq!(early["path"], "/hold", "{early}");

    let midway = &lines["gone-midway"];
    assert_eq!(midway["status"], 200, "{midway}");
    assert_eq!(midway["error"], "client_closed", "{midway}");
    assert_eq!(midway["route"], "app", "{midway}");
    let out = midway["bytes_out"].as_u64().expect("bytes_out");
    assert!(
        out > 0 && out < HUGE,
        "only what was sent is counted: {midway}"
    );
}

// --- admin API ----------------------------------------------------------------

#[tokio::test]
async fn admin_endpoints_need_the_token_and_work_with_it() {
    let gw = Gateway::builder(
        r#"
[server]
http = "{{HTTP}}"
admin = "{{ADMIN}}"
admin_token_file = "admin_token"
state_dir = "{{DIR}}/state"

[[route]]
name = "hello"
host = "hello.test"
respond = { body = "hi" }
"#,
    )
    .file("admin_token", format!("{ADMIN_TOKEN}\n"))
    .start()
    .await;
    assert_eq!(gw.admin_token(), Some(ADMIN_TOKEN), "token file trimmed");
    let c = TestClient::new();
    let url = |p: &str| gw.admin_url(p);
    let good = format!("Bearer {ADMIN_TOKEN}");
    let bad_headers: Vec<Option<String>> = vec![
        None,
        Some("Bearer wrong".into()),
        Some("Bearer ".into()),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(ADMIN_TOKEN.into()),
    ];
    for (method, path) in [
        (Method::GET, "/routes"),
        (Method::GET, "/certificates"),
        (Method::POST, "/reload"),
    ] {
        for h in &bad_headers {
            let headers: Vec<(&str, &str)> = h
                .as_deref()
                .map(|v| vec![("authorization", v)])
                .unwrap_or_default();
            let r = c
                .request(method.clone(), &url(path), &headers, TestBody::empty())
                .await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {h:?}"
            );
            assert!(
                r.header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{method} {path}: no WWW-Authenticate"
            );
            assert!(!r.text().contains(ADMIN_TOKEN));
        }
    }

    // With the token; the scheme is case-insensitive.
    for scheme in ["bearer", "BEARER"] {
        let r = c
            .get_with(
                &url("/routes"),
                &[("authorization", &format!("{scheme} {ADMIN_TOKEN}"))],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "scheme {scheme}");
    }
    let auth = [("authorization", good.as_str())];
    let r = c.get_with(&url("/routes"), &auth).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    let routes = v["routes"].as_array().expect("routes array");
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0]["name"], "hello");
    assert_eq!(routes[0]["host"], "hello.test");
    assert_eq!(routes[0]["action"], "respond");

    let r = c.get_with(&url("/certificates"), &auth).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json()["certificates"].is_array());

    let r = c
        .request(Method::POST, &url("/reload"), &auth, TestBody::empty())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["status"], "reloaded");

    // Health, readiness and metrics need no token.
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let r = c.get(&url(path)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text().trim(), body);
    }
    assert_eq!(c.get(&url("/metrics")).await.status, StatusCode::OK);

    // Wrong method, unknown path.
    let r = c
        .request(Method::POST, &url("/metrics"), &[], TestBody::empty())
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = c.get_with(&url("/reload"), &auth).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(c.get(&url("/nope")).await.status, StatusCode::NOT_FOUND);

    // The admin listener never serves public routes, nor the public one admin.
    let r = c.get_with(&url("/"), &[("host", "hello.test")]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = gw.client().get("http://hello.test/metrics").await;
    assert_eq!(r.text(), "hi");
}

#[test]
fn a_non_loopback_admin_without_a_token_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
    let load = |admin: &str, token: bool| {
        let text = format!(
            "[server]\nhttp = \"127.0.0.1:0\"\nadmin = \"{admin}\"\n{}state_dir = \"state\"\n\n[[route]]\nhost = \"a.test\"\nrespond = {{ body = \"a\" }}\n",
            if token {
                "admin_token_file = \"token\"\n"
            } else {
                ""
            }
        );
        let p = dir.path().join("portcullis.toml");
        std::fs::write(&p, text).unwrap();
        portcullis::config::load(&p).map_err(|e| e.to_string())
    };
    for admin in ["0.0.0.0:9180", "[::]:9180", "192.168.1.10:9180"] {
        let err = load(admin, false).expect_err(admin);
        assert!(
            err.contains("server.admin")
                && err.contains("loopback")
                && err.contains("admin_token_file"),
            "{admin}: {err}"
        );
        assert!(err.contains(":3:"), "the error names the line: {err}");
        load(admin, true).unwrap_or_else(|e| panic!("{admin} with a token: {e}"));
    }
    for admin in ["127.0.0.1:9180", "[::1]:9180", "off"] {
        load(admin, false).unwrap_or_else(|e| panic!("{admin} without a token: {e}"));
    }
}

// --- portcullis health -----------------------------------------------------------

fn run_health(args: Vec<String>) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("health")
        .args(args)
        .env_remove("PORTCULLIS_ADMIN")
        .output()
        .expect("run portcullis health")
}

#[tokio::test]
async fn health_command_probes_the_admin_listener() {
    let gw = Gateway::start("[[route]]\nhost = \"a.test\"\nrespond = { body = \"a\" }\n").await;
    let admin = gw.admin_addr().to_string();

    let out = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || run_health(vec!["--admin".into(), admin])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    let out = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || run_health(vec!["--admin".into(), admin, "--ready".into()])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ready");

    // Nothing listening: exit 1, saying where it looked.
    let closed = Backend::refusing().await.addr().to_string();
    let out = tokio::task::spawn_blocking({
        let closed = closed.clone();
        move || {
            run_health(vec![
                "--admin".into(),
                closed,
                "--timeout".into(),
                "2".into(),
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&closed));

    // No --admin: the address is the config's server.admin, whatever the
    // environment says.
    // (The test gateway's own file says port 0: it binds a free one.)
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, format!("[server]\nadmin = \"{admin}\"\n")).unwrap();
    let config = config.to_string_lossy().into_owned();
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args(["health", "--ready", "--config", &config])
                .env("PORTCULLIS_ADMIN", "127.0.0.1:1")
                .output()
                .expect("run portcullis health")
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ready");

    // An HTTP server that is not healthy (the public listener answers 404
    // for /healthz): exit 1 with the status.
    let public = gw.http_addr().to_string();
    let out = tokio::task::spawn_blocking(move || run_health(vec!["--admin".into(), public]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}

/// With the admin listener off, `portcullis health` checks that the
/// config's http listener accepts connections, and says which it tried.
#[tokio::test]
async fn health_command_without_an_admin_listener_probes_the_public_one() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!("[server]\nhttp = \"{addr}\"\nadmin = \"off\"\n"),
    )
    .unwrap();
    let health = move |config: std::path::PathBuf| {
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["health", "--timeout", "2", "--config"])
            .arg(config)
            .output()
            .expect("run portcullis health")
    };
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        move || health(config)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&addr.to_string()));

    drop(listener);
    let out = tokio::task::spawn_blocking(move || health(config))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&addr.to_string()) && err.contains("admin listener off"),
        "{err}"
    );
}

// --- upstream health ----------------------------------------------------------------

/// `portcullis_upstream_up` and `portcullis_upstream_ejections_total`
/// follow a real backend that stops and comes back: its health check
/// failing (route `hc`), and passive ejection after a failed request
/// (route `passive`, no health check, ejected for 1 s).
#[tokio::test]
async fn upstream_up_and_ejections_follow_a_backend_that_stops_and_comes_back() {
    let a = Backend::echo().await;
    let b = Backend::echo().await;
    let b_addr = b.addr();
    let (a_url, b_url) = (a.url(), b.url());
    let gw = support::gateway::gateway_with(
        &format!(
            r#"
[[route]]
name = "hc"
host = "hc.test"
upstream = ["{a_url}", "{b_url}"]
health_check = {{ path = "/healthz", interval = "100ms", timeout = "1s" }}

[[route]]
name = "passive"
host = "passive.test"
upstream = ["{a_url}", "{b_url}"]
"#
        ),
        "upstream_eject_after = 1\nupstream_eject_for = \"1s\"",
    )
    .await;
    let admin = gw.admin_addr();
    let up = |m: &Exposition, route: &str, u: &str| {
        m.value(
            "portcullis_upstream_up",
            &[("route", route), ("upstream", u)],
        )
    };
    let ejections = |m: &Exposition, route: &str, u: &str, reason: &str| {
        m.value(
            "portcullis_upstream_ejections_total",
            &[("route", route), ("upstream", u), ("reason", reason)],
        )
    };

    let m = scrape(admin).await;
    check_contract(&m);
    for route in ["hc", "passive"] {
        for u in [&a_url, &b_url] {
            assert_eq!(up(&m, route, u), 1.0, "{route} {u} starts up");
            for reason in ["failures", "health_check"] {
                assert_eq!(ejections(&m, route, u, reason), 0.0);
            }
        }
    }

    drop(b);
    // The health check notices by itself.
    let m = support::wait_for(
        "portcullis_upstream_up of the stopped upstream to be 0",
        Duration::from_secs(10),
        || async {
            let m = scrape(admin).await;
            (up(&m, "hc", &b_url) == 0.0).then_some(m)
        },
    )
    .await;
    assert_eq!(ejections(&m, "hc", &b_url, "health_check"), 1.0);
    assert_eq!(up(&m, "hc", &a_url), 1.0);
    assert_eq!(ejections(&m, "hc", &a_url, "health_check"), 0.0);
    // No request has failed on `passive` yet: nothing tells it.
    assert_eq!(up(&m, "passive", &b_url), 1.0);

    // Requests to `passive` until one meets the stopped upstream: it
    // fails, is retried on the other (a GET) and the failed one ejected.
    let c = gw.client();
    for _ in 0..4 {
        assert_eq!(c.get("http://passive.test/").await.status, StatusCode::OK);
    }
    let m = scrape(admin).await;
    assert_eq!(up(&m, "passive", &b_url), 0.0);
    assert_eq!(ejections(&m, "passive", &b_url, "failures"), 1.0);
    assert_eq!(up(&m, "passive", &a_url), 1.0);

    // Back on its address: the health check brings it back, and the
    // passive ejection ends when its second is over.
    let _b = Backend::echo_at(b_addr).await;
    let m = support::wait_for(
        "both routes to show the upstream up again",
        Duration::from_secs(10),
        || async {
            let m = scrape(admin).await;
            (up(&m, "hc", &b_url) == 1.0 && up(&m, "passive", &b_url) == 1.0).then_some(m)
        },
    )
    .await;
    // Counters do not go back.
    assert_eq!(ejections(&m, "hc", &b_url, "health_check"), 1.0);
    assert_eq!(ejections(&m, "passive", &b_url, "failures"), 1.0);
    // And requests reach it again.
    support::wait_for(
        "a request to reach the upstream that came back",
        Duration::from_secs(10),
        || async {
            let r = c.get("http://passive.test/").await;
            (r.json()["backend"] == b_addr.to_string()).then_some(())
        },
    )
    .await;
}

// --- README -----------------------------------------------------------------------

/// The README's "Observability" section lists every family the binary
/// exports, each with its labels, before "Benchmarks".
#[tokio::test]
async fn readme_lists_every_exported_metric_with_its_labels() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let start = readme
        .find("\n## Observability\n")
        .expect("README has a \"## Observability\" section");
    let bench = readme
        .find("\n## Benchmarks")
        .expect("README has Benchmarks");
    assert!(start < bench, "Observability comes before Benchmarks");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    assert!(
        readme
            .find("\n## Deploy with Docker Compose\n")
            .is_some_and(|d| d < bench),
        "README has \"## Deploy with Docker Compose\" before Benchmarks"
    );

    let gw = Gateway::start("[[route]]\nhost = \"a.test\"\nrespond = { body = \"a\" }\n").await;
    let m = scrape(gw.admin_addr()).await;
    let contract: BTreeMap<&str, &[&str]> = FAMILIES.iter().map(|f| (f.0, f.2)).collect();
    for name in m.families.keys() {
        let row = section
            .lines()
            .find(|l| l.contains(&format!("`{name}`")))
            .unwrap_or_else(|| panic!("README's Observability section does not list `{name}`"));
        for label in contract.get(name.as_str()).copied().unwrap_or(&[]) {
            assert!(
                row.contains(&format!("`{label}`")),
                "README's row for {name} does not name its label `{label}`: {row}"
            );
        }
    }
    for field in [
        "request_id",
        "client_ip",
        "host",
        "method",
        "path",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "route",
        "upstream",
        "user",
        "error",
    ] {
        assert!(
            section.contains(&format!("`{field}`")),
            "README's Observability section does not describe the access-log field `{field}`"
        );
    }
}

/// A client that gives up mid-request (hyper then drops the handler) must not
/// leave a request "in flight" forever: Grafana's in-flight panel would climb
/// with every abandoned request.
#[tokio::test]
async fn an_abandoned_request_does_not_stay_in_flight() {
    let hanging = Backend::hanging().await;
    let gw = Gateway::start(&format!(
        "[[route]]\nname = \"slow\"\nhost = \"slow.test\"\nupstream = \"{}\"\ntimeout = \"30s\"\n",
        hanging.url()
    ))
    .await;
    let admin = gw.admin_addr();
    let c = TestClient::to(gw.http_addr()).with_timeout(Duration::from_millis(300));
    let r = c
        .try_request(Method::GET, "http://slow.test/", &[], TestBody::empty())
        .await;
    assert!(r.is_err(), "the upstream hangs, so the client gives up");
    drop(c);
    support::wait_for(
        "the connection to close",
        Duration::from_secs(10),
        || async move {
            let m = scrape(admin).await;
            (m.value("portcullis_connections_open", &[("listener", "http")]) == 0.0).then_some(())
        },
    )
    .await;
    support::wait_for(
        "the abandoned request to leave the in-flight gauge",
        Duration::from_secs(10),
        || async move {
            let m = scrape(admin).await;
            (m.value("portcullis_requests_in_flight", &[("listener", "http")]) == 0.0).then_some(())
        },
    )
    .await;
}
