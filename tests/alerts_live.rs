//! The alert rules (`config/prometheus/alerts.yml`) and the Grafana
//! dashboard (`config/grafana/portcullis.json`) evaluated by a real
//! Prometheus server scraping real gateways, not synthetic series.
//!
//! One Prometheus (Debian package `prometheus`; started on a free loopback
//! port with its own temp dir, killed by pid when the test ends) scrapes
//! four gateways every second with the `portcullis` job of
//! `deploy/monitoring/prometheus.yml`, and evaluates a copy of alerts.yml
//! every second. The copy differs from the file in one way only: every
//! non-zero `for:` is shortened to 2 s, so an alert fires within seconds;
//! the expressions, windows and labels are the shipped ones (their `[5m]`
//! and `[1h]` windows work on 1 s scrapes as they are).
//!
//! - `healthy`: routes with live backends and only 2xx traffic, a
//!   certificate valid for 90 days, `[cluster]` on a running Redis. No
//!   alert may fire or even be pending for it.
//! - `failing`: a route whose only backend is stopped (`dead`), one with a
//!   stopped and a live backend (`half`), one whose backend answers 500
//!   (`errors`), one healthy (`fine`); a certificate expiring in 10 days;
//!   `[acme]` pointing at a CA that is not there; a reload of a broken
//!   config. Each of these fires its alert with the labels an operator
//!   reads, and nothing fires for `fine`.
//! - `cluster`: `[cluster]` on a Redis that is then stopped.
//! - `down`: the built binary, killed.
//!
//! Besides: every rule loads and evaluates without error, every metric
//! selector of the rules matches series the gateways serve (so a renamed
//! metric or label cannot make an alert silently unable to fire), every
//! rule fires at least once, and every Prometheus query of the dashboard
//! returns series, with the labels its legend names.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

use support::backend::Backend;
use support::client::TestClient;
use support::gateway::{Gateway, GatewayProcess};
use support::promql;
use support::redis::Redis;

const PROMETHEUS_MISSING: &str = "install the Debian package `prometheus` (scripts/test.sh does): it provides the prometheus server and promtool";

/// How long Prometheus may take to start, and alerts to reach a state.
const BOUND: Duration = Duration::from_secs(60);

/// 32 bytes, hex: the `[cluster]` encryption key.
const KEY: &str = "8f1c2e9a4b7d6f30112233445566778899aabbccddeeff00a1b2c3d4e5f60718";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

// --- Prometheus --------------------------------------------------------------------

/// A real Prometheus server on a free loopback port; killed (by pid) on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    http: TestClient,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (admin addresses) with the
    /// shipped `portcullis` job, and evaluating `rules` (a rules file's text).
    async fn start(targets: &[SocketAddr], rules: &str) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-prometheus-")
            .tempdir()
            .expect("temp dir");
        let rules_path = dir.path().join("alerts.yml");
        std::fs::write(&rules_path, rules).unwrap();
        let config = prometheus_config(targets, &rules_path);
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = support::tls::free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = match Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("`prometheus` not found: {PROMETHEUS_MISSING}")
            }
            Err(e) => panic!("cannot start prometheus: {e}"),
        };
        let mut p = Prometheus {
            child,
            addr,
            dir,
            http: TestClient::new().with_timeout(Duration::from_secs(10)),
        };
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited during start ({status}):\n{}", p.log());
            }
            let ready = p
                .http
                .try_request(
                    http::Method::GET,
                    &format!("http://{addr}/-/ready"),
                    &[],
                    (),
                )
                .await;
            if ready.is_ok_and(|r| r.status == StatusCode::OK) {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready within {BOUND:?}:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/{path}`; panics unless Prometheus says `success`.
    async fn api(&self, path: &str) -> Json {
        let url = format!("http://{}/api/v1/{path}", self.addr);
        let r = self.http.get(&url).await;
        let v: Json = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {}", r.text()));
        assert_eq!(v["status"], "success", "{url}: {v}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    async fn query(&self, q: &str) -> Vec<Json> {
        let d = self.api(&format!("query?query={}", enc(q))).await;
        d["result"].as_array().cloned().unwrap_or_default()
    }

    /// Label sets of the series matching `selector` in the last `since`.
    async fn series(&self, selector: &str, since: u64) -> Vec<BTreeMap<String, String>> {
        let d = self
            .api(&format!("series?match[]={}&start={since}", enc(selector)))
            .await;
        d.as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                s.as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .collect()
    }

    async fn alerts(&self) -> Vec<Alert> {
        let d = self.api("alerts").await;
        d["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| Alert {
                labels: str_map(&a["labels"]),
                annotations: str_map(&a["annotations"]),
                state: a["state"].as_str().unwrap_or("").to_string(),
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
struct Alert {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    state: String,
}

impl Alert {
    fn name(&self) -> &str {
        &self.labels["alertname"]
    }
    fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

fn str_map(v: &Json) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect()
}

/// Percent-encodes a query parameter.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// prometheus.yml: the `portcullis` job as deploy/monitoring/prometheus.yml
/// has it (job name, path, scheme), its targets replaced, every second.
fn prometheus_config(targets: &[SocketAddr], rules: &Path) -> String {
    let shipped: Yaml = serde_norway::from_str(&read("deploy/monitoring/prometheus.yml")).unwrap();
    let mut job = shipped["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["job_name"].as_str() == Some("portcullis"))
        .expect("deploy/monitoring/prometheus.yml has a portcullis job")
        .clone();
    let targets: Vec<Yaml> = targets
        .iter()
        .map(|t| Yaml::String(t.to_string()))
        .collect();
    let mut sc = serde_norway::Mapping::new();
    sc.insert("targets".into(), Yaml::Sequence(targets));
    job["static_configs"] = Yaml::Sequence(vec![Yaml::Mapping(sc)]);
    let mut doc = serde_norway::Mapping::new();
    let mut global = serde_norway::Mapping::new();
    global.insert("scrape_interval".into(), "1s".into());
    global.insert("scrape_timeout".into(), "1s".into());
    global.insert("evaluation_interval".into(), "1s".into());
    doc.insert("global".into(), Yaml::Mapping(global));
    doc.insert(
        "rule_files".into(),
        Yaml::Sequence(vec![rules.display().to_string().into()]),
    );
    doc.insert("scrape_configs".into(), Yaml::Sequence(vec![job]));
    serde_norway::to_string(&Yaml::Mapping(doc)).unwrap()
}

/// alerts.yml with every non-zero `for:` shortened to 2 s (see the module
/// docs); nothing else changes.
fn rules_with_short_for(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        match t.strip_prefix("for:") {
            Some(d) if !matches!(d.trim(), "0" | "0s" | "0m") => {
                out.push_str(&line[..line.len() - t.len()]);
                out.push_str("for: 2s");
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

// --- PromQL, read just enough ------------------------------------------------------

/// `X` of every `$labels.X` in a template.
fn template_labels(text: &str) -> BTreeSet<String> {
    text.match_indices("$labels.")
        .map(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn promql_uses_extraction() {
    let u = promql::uses(
        r#"sum by (instance, route) (rate(a_total{status_class="5xx", x="}"}[5m])) / sum by (instance,route) (rate(a_total[5m])) > 0.05 and b == 0"#,
    );
    assert_eq!(
        u.selectors,
        ["a_total{status_class=\"5xx\", x=\"}\"}", "a_total", "b"]
    );
    assert_eq!(
        u.by,
        BTreeSet::from(["instance".to_string(), "route".to_string()])
    );
    let u = promql::uses("(c_seconds - time()) < 14 * 86400 unless on(host) d offset 5m");
    assert_eq!(u.selectors, ["c_seconds", "d"]);
    assert!(u.by.is_empty());
    assert_eq!(
        template_labels("{{ $labels.route }} and {{$labels.exported_instance}}"),
        BTreeSet::from(["route".to_string(), "exported_instance".to_string()])
    );
}

// --- the alert rules, as shipped -------------------------------------------------

struct Rule {
    name: String,
    expr: String,
    /// Labels its annotations print (`$labels.X`).
    printed: BTreeSet<String>,
}

fn shipped_rules() -> Vec<Rule> {
    let doc: Yaml = serde_norway::from_str(&read("config/prometheus/alerts.yml")).unwrap();
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let Some(name) = r["alert"].as_str() else {
                continue;
            };
            let mut printed = BTreeSet::new();
            if let Some(a) = r["annotations"].as_mapping() {
                for v in a.values() {
                    printed.extend(template_labels(v.as_str().unwrap_or("")));
                }
            }
            out.push(Rule {
                name: name.to_string(),
                expr: r["expr"].as_str().unwrap().to_string(),
                printed,
            });
        }
    }
    out
}

// --- gateways and their traffic ----------------------------------------------------

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A self-signed certificate for `host` valid until `days` from now, as
/// (cert PEM, key PEM).
fn certificate(host: &str, days: u64) -> (String, String) {
    portcullis::install_crypto_provider();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(now_secs() - 86400);
    params.not_after = epoch + Duration::from_secs(now_secs() + days * 86400);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Sends `GET url` for each of `urls` every 100 ms until dropped.
struct Traffic(tokio::task::JoinHandle<()>);

impl Traffic {
    fn start(client: TestClient, urls: Vec<String>) -> Traffic {
        Traffic(tokio::spawn(async move {
            loop {
                for u in &urls {
                    let _ = client.try_request(http::Method::GET, u, &[], ()).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `[server]` with plain, TLS and admin listeners (see support::gateway).
const SERVER: &str = "[server]
http = \"{{HTTP}}\"
https = \"{{HTTPS}}\"
admin = \"{{ADMIN}}\"
state_dir = \"{{DIR}}/state\"
";

// --- the test ---------------------------------------------------------------------------

/// See the module docs: a real Prometheus evaluates the shipped rules and
/// the dashboard's queries against what four real gateways serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboard_evaluated_against_live_gateways() {
    let since = now_secs();
    let rules = shipped_rules();

    // Backends: live ones, and one stopped (its port refuses).
    let live_a = Backend::echo().await;
    let live_b = Backend::echo().await;
    let stopped = Backend::echo().await;
    let stopped_url = stopped.url();
    drop(stopped);
    let (a, b) = (live_a.url(), live_b.url());
    let hc = r#"health_check = { path = "/healthz", interval = "200ms", timeout = "1s" }"#;

    // healthy: only 2xx, a certificate far from expiry, Redis up.
    let redis_ok = Redis::start();
    let (cert, key) = certificate("ok.test", 90);
    let healthy = Gateway::builder(&format!(
        r#"{server}
[cluster]
redis = "{redis}"
encryption_key_file = "cluster.key"
instance_name = "gw-healthy"

[[certificate]]
hosts = ["ok.test", "ok2.test"]
cert_file = "ok.crt"
key_file = "ok.key"

[[route]]
name = "ok"
host = "ok.test"
https_redirect = false
upstream = "{a}"
{hc}

[[route]]
name = "ok2"
host = "ok2.test"
https_redirect = false
upstream = ["{a}", "{b}"]
"#,
        server = SERVER,
        redis = redis_ok.url(),
    ))
    .file("cluster.key", KEY)
    .file("ok.crt", &cert)
    .file("ok.key", &key)
    .start()
    .await;

    // failing: a dead route, a half-dead one, a 500 one, a fine one; a
    // certificate expiring in 10 days; ACME against a CA that is not there.
    let no_ca = support::tls::free_port();
    let (cert, key) = certificate("expiring.test", 10);
    let failing_toml = format!(
        r#"{server}
[acme]
email = "ops@example.com"
directory = "https://127.0.0.1:{no_ca}/dir"
retry_min = "1s"
retry_max = "2s"

[[certificate]]
hosts = ["expiring.test"]
cert_file = "expiring.crt"
key_file = "expiring.key"

[[route]]
name = "fine"
host = "expiring.test"
https_redirect = false
upstream = "{a}"

[[route]]
name = "half"
host = "half.test"
https_redirect = false
upstream = ["{a}", "{stopped_url}"]
{hc}

[[route]]
name = "dead"
host = "dead.test"
https_redirect = false
upstream = "{stopped_url}"
{hc}

[[route]]
name = "errors"
host = "errors.test"
https_redirect = false
upstream = "{b}"
"#,
        server = SERVER,
    );
    let failing = Gateway::builder(&failing_toml)
        .file("expiring.crt", &cert)
        .file("expiring.key", &key)
        .start()
        .await;

    // cluster: [cluster] on a Redis that will stop.
    let mut redis_doomed = Redis::start();
    let cluster = Gateway::builder(&format!(
        r#"{server}
[cluster]
redis = "{redis}"
encryption_key_file = "cluster.key"
instance_name = "gw-cluster"

[[route]]
name = "c"
host = "c.test"
respond = {{ body = "c" }}
"#,
        server =
            "[server]\nhttp = \"{{HTTP}}\"\nadmin = \"{{ADMIN}}\"\nstate_dir = \"{{DIR}}/state\"\n",
        redis = redis_doomed.url(),
    ))
    .file("cluster.key", KEY)
    .start()
    .await;

    // down: the binary, to be killed.
    let mut down = GatewayProcess::start(
        "[[route]]\nname = \"d\"\nhost = \"d.test\"\nrespond = { body = \"d\" }\n",
    )
    .await;

    let inst = |a: SocketAddr| a.to_string();
    let (i_healthy, i_failing, i_cluster, i_down) = (
        inst(healthy.admin_addr()),
        inst(failing.admin_addr()),
        inst(cluster.admin_addr()),
        inst(down.admin_addr()),
    );

    let _traffic_healthy = Traffic::start(
        healthy.client().clone(),
        vec!["http://ok.test/".into(), "http://ok2.test/".into()],
    );
    let _traffic_failing = Traffic::start(
        failing.client().clone(),
        vec![
            "http://expiring.test/".into(),
            "http://half.test/".into(),
            "http://dead.test/".into(),
            "http://errors.test/status?code=500".into(),
        ],
    );

    let targets = [
        healthy.admin_addr(),
        failing.admin_addr(),
        cluster.admin_addr(),
        down.admin_addr(),
    ];
    let prom = Prometheus::start(
        &targets,
        &rules_with_short_for(&read("config/prometheus/alerts.yml")),
    )
    .await;

    // Every target scraped at least once, Redis seen up by `cluster`.
    support::wait_for("a first scrape of every gateway", BOUND, || async {
        let up = prom.query("up{job=\"portcullis\"} == 1").await;
        let c = prom.query("portcullis_cluster_up == 1").await;
        (up.len() == targets.len() && c.len() == 2).then_some(())
    })
    .await;

    // Now break things that must be seen changing.
    failing.rewrite_config("[server\nthis is not toml");
    let (status, reply) = failing.reload().await;
    assert_ne!(status, StatusCode::OK, "a broken config reloads: {reply}");
    redis_doomed.stop();
    down.signal("KILL");
    down.wait_exit(Duration::from_secs(10)).await;

    // Every rule loads and evaluates without error.
    let groups = support::wait_for("every rule evaluated", BOUND, || async {
        let d = prom.api("rules").await;
        let groups = d["groups"].as_array().cloned().unwrap_or_default();
        let all_evaluated = groups.iter().all(|g| {
            g["rules"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["health"] != "unknown")
        });
        (!groups.is_empty() && all_evaluated).then_some(groups)
    })
    .await;
    let loaded = healthy_rules(&groups);
    let shipped: BTreeSet<String> = rules.iter().map(|r| r.name.clone()).collect();
    assert_eq!(
        loaded, shipped,
        "Prometheus loaded every rule of alerts.yml"
    );

    // Every selector of every rule matches served series, carrying the
    // labels the rule aggregates by: a renamed metric or label fails here,
    // not as an alert that can never fire.
    for r in &rules {
        let uses = promql::uses(&r.expr);
        assert!(
            !uses.selectors.is_empty(),
            "{}: no selector in {}",
            r.name,
            r.expr
        );
        for sel in &uses.selectors {
            // Bounded wait: a 5xx or an upstream error is served once the
            // traffic has met the broken routes.
            let deadline = tokio::time::Instant::now() + BOUND;
            let series = loop {
                let series = prom.series(sel, since).await;
                if !series.is_empty() {
                    break series;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{}: `{sel}` matches nothing the gateways serve",
                    r.name
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            if sel.starts_with("portcullis_") {
                for l in &uses.by {
                    assert!(
                        // (`any`: requests no route matched are counted
                        // with route="", which Prometheus stores as no label)
                        series.iter().any(|s| s.contains_key(l)),
                        "{}: aggregates `{sel}` by {l}, which its series lack: {series:?}",
                        r.name
                    );
                }
            }
        }
    }

    // The alerts each failure must fire, with the labels an operator reads.
    let want: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("PortcullisDown", vec![("instance", &i_down)]),
        (
            "PortcullisCertificateExpiringSoon",
            vec![
                ("instance", &i_failing),
                ("host", "expiring.test"),
                ("source", "file"),
            ],
        ),
        (
            "PortcullisAcmeOrdersFailing",
            vec![("instance", &i_failing)],
        ),
        (
            "PortcullisRoute5xxRatioHigh",
            vec![("instance", &i_failing), ("route", "errors")],
        ),
        (
            "PortcullisRoute5xxRatioHigh",
            vec![("instance", &i_failing), ("route", "dead")],
        ),
        (
            "PortcullisUpstreamDown",
            vec![
                ("instance", &i_failing),
                ("route", "half"),
                ("upstream", &stopped_url),
            ],
        ),
        (
            "PortcullisUpstreamDown",
            vec![
                ("instance", &i_failing),
                ("route", "dead"),
                ("upstream", &stopped_url),
            ],
        ),
        (
            "PortcullisRouteNoHealthyUpstream",
            vec![("instance", &i_failing), ("route", "dead")],
        ),
        (
            "PortcullisUpstreamErrors",
            vec![
                ("instance", &i_failing),
                ("route", "dead"),
                ("kind", "refused"),
            ],
        ),
        (
            "PortcullisConfigReloadFailing",
            vec![("instance", &i_failing)],
        ),
        (
            "PortcullisClusterDown",
            vec![
                ("instance", &i_cluster),
                ("exported_instance", "gw-cluster"),
            ],
        ),
    ];
    let deadline = tokio::time::Instant::now() + BOUND;
    let alerts = loop {
        let alerts = prom.alerts().await;
        let missing: Vec<_> = want
            .iter()
            .filter(|(name, labels)| {
                !alerts
                    .iter()
                    .any(|a| a.state == "firing" && a.name() == *name && a.has(labels))
            })
            .collect();
        if missing.is_empty() {
            break alerts;
        }
        if tokio::time::Instant::now() >= deadline {
            let now: Vec<String> = alerts
                .iter()
                .map(|a| format!("{} {} {:?}", a.state, a.name(), a.labels))
                .collect();
            let mut seen = String::new();
            for q in [
                "portcullis_requests_total",
                "portcullis_upstream_errors_total",
                "portcullis_acme_orders_total",
            ] {
                for s in prom.query(q).await {
                    seen.push_str(&format!("{} {}\n", s["metric"], s["value"][1]));
                }
            }
            panic!(
                "not firing within {BOUND:?}: {missing:?}\nalerts now:\n{}\nseries now:\n{seen}",
                now.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // Every rule fired, printing only labels its alerts carry.
    for r in &rules {
        let fired: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.state == "firing" && a.name() == r.name)
            .collect();
        assert!(!fired.is_empty(), "{} never fired", r.name);
        for a in fired {
            for l in &r.printed {
                assert!(
                    a.labels.get(l).is_some_and(|v| !v.is_empty()),
                    "{}: its annotations print $labels.{l}, which the alert lacks: {:?} {:?}",
                    r.name,
                    a.labels,
                    a.annotations
                );
            }
        }
    }

    // Nothing for the healthy gateway, the fine route, or what a failure
    // does not mean: a backend answering 500 is not an upstream error nor
    // down; a route with one live upstream still has a healthy one.
    let wrong: Vec<&Alert> = alerts
        .iter()
        .filter(|a| {
            a.has(&[("instance", &i_healthy)])
                || a.has(&[("route", "fine")])
                || (a.has(&[("route", "errors")]) && a.name() != "PortcullisRoute5xxRatioHigh")
                || (a.has(&[("route", "half")])
                    && matches!(
                        a.name(),
                        "PortcullisRouteNoHealthyUpstream" | "PortcullisRoute5xxRatioHigh"
                    ))
                || (a.name() == "PortcullisDown" && !a.has(&[("instance", &i_down)]))
                || (a.name() == "PortcullisClusterDown" && !a.has(&[("instance", &i_cluster)]))
                || (a.name() == "PortcullisCertificateExpiringSoon"
                    && !a.has(&[("host", "expiring.test")]))
        })
        .collect();
    assert!(wrong.is_empty(), "alerts that must not be: {wrong:#?}");
    // Not vacuous: the healthy gateway's routes had the traffic the 5xx
    // rule needs, and its certificate and Redis were seen.
    for (q, n) in [
        (
            format!(
                "sum by (route) (rate(portcullis_requests_total{{instance=\"{i_healthy}\"}}[5m])) > 0.1"
            ),
            2,
        ),
        (
            format!("portcullis_certificate_not_after_seconds{{instance=\"{i_healthy}\"}}"),
            2,
        ),
        (
            format!("portcullis_cluster_up{{instance=\"{i_healthy}\"}} == 1"),
            1,
        ),
        (
            format!("portcullis_upstream_up{{instance=\"{i_healthy}\"}} == 1"),
            3,
        ),
    ] {
        let r = prom.query(&q).await;
        assert_eq!(r.len(), n, "{q}: {r:?}");
    }

    // The dashboard: every Prometheus query returns series from the live
    // gateways, with every label its legend prints.
    let dash: Json = serde_json::from_str(&read("config/grafana/portcullis.json")).unwrap();
    let targets = dashboard_targets(&dash);
    assert!(targets.len() >= 20, "{} dashboard queries", targets.len());
    for (title, expr, legend) in targets {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$__interval", "15s")
            .replace("$route", ".*");
        let result = prom.query(&q).await;
        assert!(
            !result.is_empty(),
            "dashboard panel `{title}`: `{expr}` returns nothing from live gateways"
        );
        for (i, _) in legend.match_indices("{{") {
            let l = legend[i + 2..].split("}}").next().unwrap().trim();
            for s in &result {
                assert!(
                    s["metric"][l].as_str().is_some_and(|v| !v.is_empty()),
                    "dashboard panel `{title}`: its legend prints {{{{{l}}}}}, missing from {}",
                    s["metric"]
                );
            }
        }
    }
    let variable = prom.series("portcullis_requests_total", since).await;
    assert!(variable.iter().any(|s| s.contains_key("route")));

    // Still healthy now that every failure is in the series (an
    // expression can start failing only when some series appear, e.g. a
    // division matching several series on one side).
    let d = prom.api("rules").await;
    let groups = d["groups"].as_array().cloned().unwrap_or_default();
    assert_eq!(healthy_rules(&groups), shipped);

    drop(prom);
    drop(live_a);
    drop(live_b);
}

/// The names of the rules in `/api/v1/rules` groups, asserting each is
/// healthy (evaluated without error).
fn healthy_rules(groups: &[Json]) -> BTreeSet<String> {
    let mut loaded = BTreeSet::new();
    for g in groups {
        for r in g["rules"].as_array().unwrap() {
            let name = r["name"].as_str().unwrap();
            assert_eq!(r["health"], "ok", "rule {name}: {r}");
            assert!(
                r["lastError"].as_str().is_none_or(str::is_empty),
                "rule {name}: {}",
                r["lastError"]
            );
            loaded.insert(name.to_string());
        }
    }
    loaded
}

/// (panel title, PromQL, legend format) of every Prometheus target.
fn dashboard_targets(d: &Json) -> Vec<(String, String, String)> {
    fn walk(v: &Json, out: &mut Vec<(String, String, String)>) {
        for p in v.as_array().into_iter().flatten() {
            walk(&p["panels"], out);
            if p["datasource"]["uid"] != "${DS_PROMETHEUS}" {
                continue;
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push((
                    p["title"].as_str().unwrap_or("").to_string(),
                    t["expr"].as_str().unwrap().to_string(),
                    t["legendFormat"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}
