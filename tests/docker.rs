//! Routes that follow the containers, against a real Docker engine
//! (`support::docker`: our own dockerd, busybox httpd containers on the
//! host network): labelled containers routed and gone, replicas in round
//! robin, SSO on a label route, bad labels, file routes winning over
//! labels, the engine going away and coming back, and container churn
//! beside an unrelated route.
//!
//! Each test uses its own label prefix, so the containers of the other
//! tests (same engine) are not routed by its gateway.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::backend::Backend;
use support::client::{TestBody, TestClient};
use support::docker::{Engine, free_port};
use support::gateway::Gateway;
use support::wait_for;

/// Tests in this file sharing the engine (the last one stops it).
const TESTS: usize = 6;
/// Generous bound for a change to show; the debounce is 0.3-1.2 s.
const WAIT: Duration = Duration::from_secs(15);

fn config(engine: &Engine, prefix: &str, extra: &str) -> String {
    format!(
        "[server]\nhttp = \"{{{{HTTP}}}}\"\nadmin = \"{{{{ADMIN}}}}\"\nstate_dir = \"{{{{DIR}}}}/state\"\n\n[docker]\nendpoint = \"{}\"\nlabel_prefix = \"{prefix}\"\n{extra}",
        engine.endpoint()
    )
}

fn labels(prefix: &str, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (format!("{prefix}.{k}"), v.to_string()))
        .collect()
}

fn run(engine: &Engine, name: &str, port: u16, labels: Vec<(String, String)>) {
    let l: Vec<(&str, String)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    engine.run_httpd(name, port, &l);
}

async fn get(gw: &Gateway, host: &str, path: &str) -> (u16, String) {
    let r = gw
        .client()
        .try_request(
            Method::GET,
            &format!("http://{host}{path}"),
            &[],
            TestBody::empty(),
        )
        .await
        .expect("the gateway answers");
    (r.status.as_u16(), r.text())
}

async fn routes(gw: &Gateway) -> serde_json::Value {
    gw.client().get(&gw.admin_url("/routes")).await.json()
}

async fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    let text = gw.client().get(&gw.admin_url("/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits until `host` answers `/id` with `want`'s body (or `status`).
async fn wait_answer(gw: &Gateway, host: &str, status: u16, body: Option<&str>) -> Duration {
    let start = Instant::now();
    wait_for(&format!("{host}/id → {status} {body:?}"), WAIT, || async {
        let (s, b) = get(gw, host, "/id").await;
        (s == status && body.is_none_or(|w| b.trim() == w)).then_some(())
    })
    .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_containers_are_routed_scaled_and_gone() {
    let engine = Engine::shared(TESTS).await;
    let p = "ta";
    let gw = Gateway::start(&config(&engine, p, "")).await;
    let app = |port: u16| {
        labels(
            p,
            &[
                ("enable", "true"),
                ("host", "app.a.test"),
                ("port", &port.to_string()),
            ],
        )
    };
    // Not enabled: ignored (exposed_by_default is false).
    let quiet = free_port();
    run(
        &engine,
        "ta-off",
        quiet,
        labels(p, &[("host", "off.a.test"), ("port", &quiet.to_string())]),
    );

    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    run(&engine, "ta-1", ports[0], app(ports[0]));
    let took = wait_answer(&gw, "app.a.test", 200, Some("ta-1")).await;
    println!("routed {took:?} after docker run returned");
    assert_eq!(get(&gw, "off.a.test", "/id").await.0, 404);
    let v = routes(&gw).await;
    let r = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == "app.a.test")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(r["source"], "docker:ta-1", "{v}");
    assert_eq!(v["docker"]["up"], true, "{v}");

    // Scaled to 3: one route, round robin over the three.
    run(&engine, "ta-2", ports[1], app(ports[1]));
    run(&engine, "ta-3", ports[2], app(ports[2]));
    wait_for("three upstreams", WAIT, || async {
        let v = routes(&gw).await;
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| {
                r["source"] == "docker:ta-1,ta-2,ta-3" && r["target"].as_array().unwrap().len() == 3
            })
            .then_some(())
    })
    .await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..30 {
        let (s, b) = get(&gw, "app.a.test", "/id").await;
        assert_eq!(s, 200, "{b}");
        *seen.entry(b.trim().to_string()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n == 10), "round robin: {seen:?}");

    // Gone: the route follows.
    engine.remove(&["ta-1", "ta-2", "ta-3", "ta-off"]);
    let took = wait_answer(&gw, "app.a.test", 404, None).await;
    println!("unrouted {took:?} after docker rm returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_replica_leaves_the_rotation() {
    let engine = Engine::shared(TESTS).await;
    let p = "tf";
    let gw = Gateway::start(&config(&engine, p, "")).await;
    let (p1, p2) = (free_port(), free_port());
    let app = |port: u16| {
        labels(
            p,
            &[
                ("enable", "true"),
                ("host", "app.f.test"),
                ("port", &port.to_string()),
            ],
        )
    };
    let healthy = app(p1);
    let healthy: Vec<(&str, String)> = healthy
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    engine.run_httpd_with(
        "tf-ok",
        p1,
        &healthy,
        &["--health-cmd", "exit 0", "--health-interval", "1s"],
    );
    let sick = app(p2);
    let sick: Vec<(&str, String)> = sick.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    engine.run_httpd_with(
        "tf-sick",
        p2,
        &sick,
        &[
            "--health-cmd",
            "exit 1",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
        ],
    );
    // Once the checks have run: only the healthy one is in the route.
    wait_for("only tf-ok in rotation", WAIT, || async {
        let v = routes(&gw).await;
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| {
                r["source"] == "docker:tf-ok,tf-sick" && r["target"].as_array().unwrap().len() == 1
            })
            .then_some(())
    })
    .await;
    for _ in 0..6 {
        assert_eq!(get(&gw, "app.f.test", "/id").await, (200, "tf-ok\n".into()));
    }
    engine.remove(&["tf-ok", "tf-sick"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_routes_win_and_bad_labels_are_reported() {
    let engine = Engine::shared(TESTS).await;
    let p = "tb";
    let file_route =
        "\n[[route]]\nhost = \"same.b.test\"\nrespond = { body = \"from the file\" }\n";
    let gw = Gateway::start(&config(&engine, p, file_route)).await;
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    run(
        &engine,
        "tb-same",
        p1,
        labels(
            p,
            &[
                ("enable", "true"),
                ("host", "same.b.test"),
                ("port", &p1.to_string()),
            ],
        ),
    );
    run(
        &engine,
        "tb-bad",
        p2,
        labels(
            p,
            &[("enable", "true"), ("host", "bad.b.test"), ("port", "http")],
        ),
    );
    run(
        &engine,
        "tb-good",
        p3,
        labels(
            p,
            &[
                ("enable", "true"),
                ("host", "good.b.test"),
                ("port", &p3.to_string()),
            ],
        ),
    );
    wait_answer(&gw, "good.b.test", 200, Some("tb-good")).await;
    // The file's route answers; both are visible with their sources.
    assert_eq!(
        get(&gw, "same.b.test", "/id").await,
        (200, "from the file".into())
    );
    let v = routes(&gw).await;
    let file = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == "same.b.test")
        .unwrap_or_else(|| panic!("{v}"));
    let file_source = file["source"].as_str().unwrap();
    assert!(file_source.ends_with("portcullis.toml:10"), "{v}");
    let shadowed = &v["docker"]["shadowed"];
    assert_eq!(shadowed[0]["host"], "same.b.test", "{v}");
    assert_eq!(shadowed[0]["source"], "docker:tb-same", "{v}");
    assert_eq!(shadowed[0]["shadowed_by"], file_source, "{v}");
    // The bad label: named with its container, not routed, counted.
    let errors = v["docker"]["label_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v}");
    assert_eq!(errors[0]["container"], "tb-bad");
    assert_eq!(errors[0]["label"], "tb.port");
    assert!(
        errors[0]["message"].as_str().unwrap().contains("`http`"),
        "{v}"
    );
    assert_eq!(get(&gw, "bad.b.test", "/id").await.0, 404);
    assert_eq!(
        metric(&gw, "portcullis_docker_label_errors").await,
        Some(1.0)
    );
    engine.remove(&["tb-same", "tb-bad", "tb-good"]);
    wait_answer(&gw, "good.b.test", 404, None).await;
    assert_eq!(
        metric(&gw, "portcullis_docker_label_errors").await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_route_behind_sso_requires_login_and_gets_identity_headers() {
    let engine = Engine::shared(TESTS).await;
    let p = "tc";
    let idp = support::idp::Idp::start().await;
    let oidc = format!(
        "\n[oidc.authentik]\nissuer = \"{}\"\nclient_id = \"portcullis\"\nclient_secret_file = \"secret\"\ninsecure_cookies = true\n",
        idp.issuer()
    );
    let gw = Gateway::builder(&config(&engine, p, &oidc))
        .file("secret", support::idp::CLIENT_SECRET)
        .start()
        .await;
    let port = free_port();
    run(
        &engine,
        "tc-app",
        port,
        labels(
            p,
            &[
                ("enable", "true"),
                ("host", "sso.localtest"),
                ("port", &port.to_string()),
                ("auth", "authentik"),
                ("groups", "admins"),
            ],
        ),
    );
    // Signed out: sent to the provider.
    let url = format!("http://sso.localtest:{}/cgi-bin/env", gw.http_addr().port());
    wait_for("the label route", WAIT, || async {
        let v = routes(&gw).await;
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["host"] == "sso.localtest")
            .then_some(())
    })
    .await;
    let mut b = support::idp::Browser::new(gw.http_addr());
    let r = b.get(&url).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    assert!(
        r.header("location")
            .is_some_and(|l| l.starts_with(idp.issuer())),
        "{:?}",
        r.header("location")
    );
    let mut b = support::idp::Browser::new(gw.http_addr());
    let r = b.login(&url, "alice").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let env = r.text();
    assert!(env.contains("HTTP_X_AUTHENTIK_USERNAME=alice"), "{env}");
    assert!(
        env.contains("HTTP_X_AUTHENTIK_GROUPS=admins|users"),
        "{env}"
    );
    // Not in the group: refused.
    let mut b = support::idp::Browser::new(gw.http_addr());
    let r = b.login(&url, "bob").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    engine.remove(&["tc-app"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_restart_keeps_routes_then_resyncs() {
    let engine = Engine::exclusive(TESTS).await;
    let p = "td";
    let gw = Gateway::start(&config(&engine, p, "")).await;
    let (p1, p2) = (free_port(), free_port());
    let app = |port: u16| {
        labels(
            p,
            &[
                ("enable", "true"),
                ("host", "app.d.test"),
                ("port", &port.to_string()),
            ],
        )
    };
    run(&engine, "td-1", p1, app(p1));
    wait_answer(&gw, "app.d.test", 200, Some("td-1")).await;

    engine.stop_daemon();
    wait_for("docker down in the metric", WAIT, || async {
        (metric(&gw, "portcullis_docker_up").await == Some(0.0)).then_some(())
    })
    .await;
    let ready = gw.client().get(&gw.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(
        ready.text().contains("docker: unreachable"),
        "{}",
        ready.text()
    );
    // The container still runs (live restore) and its route stays.
    for _ in 0..5 {
        assert_eq!(get(&gw, "app.d.test", "/id").await, (200, "td-1\n".into()));
    }

    engine.start_daemon().expect("dockerd starts again");
    wait_for("docker up again", WAIT, || async {
        (metric(&gw, "portcullis_docker_up").await == Some(1.0)).then_some(())
    })
    .await;
    // In sync again: a new replica joins, a removed one leaves.
    run(&engine, "td-2", p2, app(p2));
    wait_for("td-2 joins", WAIT, || async {
        let v = routes(&gw).await;
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["source"] == "docker:td-1,td-2")
            .then_some(())
    })
    .await;
    engine.remove(&["td-1"]);
    wait_for("td-1 leaves", WAIT, || async {
        let v = routes(&gw).await;
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["source"] == "docker:td-2")
            .then_some(())
    })
    .await;
    assert_eq!(get(&gw, "app.d.test", "/id").await, (200, "td-2\n".into()));
    engine.remove(&["td-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_churn_never_fails_an_unrelated_route() {
    let engine = Engine::shared(TESTS).await;
    let p = "te";
    let backend = Backend::echo().await;
    let file_route = format!(
        "\n[[route]]\nhost = \"steady.e.test\"\nupstream = \"{}\"\n",
        backend.url()
    );
    let gw = Gateway::start(&config(&engine, p, &file_route)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let client = TestClient::to(gw.http_addr());
        tokio::spawn(async move {
            // Bounded: stops when told, or after 20,000 requests.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match client
                    .try_request(
                        Method::GET,
                        "http://steady.e.test/x",
                        &[],
                        TestBody::empty(),
                    )
                    .await
                {
                    Ok(r) if r.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("steady route answered {}", r.status);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("steady route failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    let names: Vec<String> = (0..30).map(|i| format!("te-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let port = free_port();
        let host = format!("c{}.e.test", i % 5);
        run(
            &engine,
            name,
            port,
            labels(
                p,
                &[
                    ("enable", "true"),
                    ("host", &host),
                    ("port", &port.to_string()),
                ],
            ),
        );
        if i % 10 == 9 {
            let batch: Vec<&str> = names[i - 9..=i].iter().map(String::as_str).collect();
            engine.remove(&batch);
        }
    }
    // Let the last swaps happen under load too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let generation = routes(&gw).await["generation"].as_u64().unwrap();
    println!("{ok} requests, {failed} failed, over {generation} route tables");
    assert_eq!(failed, 0);
    assert!(ok > 100, "the load ran: {ok}");
    assert!(
        generation > 3,
        "the table changed while it ran: {generation}"
    );
}
