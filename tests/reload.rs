//! Hot reload through the real admin listener and SIGHUP: routes swap, a
//! bad config changes nothing and reports every error, the admin token is
//! enforced, nothing fails under load, open WebSockets and in-flight
//! requests survive, and bursts are coalesced.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http::{Method, StatusCode};
use support::backend::{Backend, Echo};
use support::client::{TestBody, TestClient, exchange};
use support::gateway::{Gateway, GatewayProcess};
use support::{wait_for, within};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const WAIT: Duration = Duration::from_secs(15);

fn respond_all(body: &str) -> String {
    format!("[[route]]\nname = \"main\"\nhost = \"*\"\nrespond = {{ body = \"{body}\" }}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_swaps_routes() {
    let gw = Gateway::start(&respond_all("v1")).await;
    let c = gw.client();
    assert_eq!(c.get(&gw.url("/")).await.text(), "v1");
    assert_eq!(c.get(&gw.url("/new")).await.text(), "v1");

    gw.rewrite_config(&format!(
        "{}\n[[route]]\nhost = \"*\"\npath = \"/new\"\nrespond = {{ status = 201, body = \"added\" }}\n",
        respond_all("v2")
    ));
    // The file alone changes nothing until a reload.
    assert_eq!(c.get(&gw.url("/")).await.text(), "v1");

    let (status, v) = gw.reload().await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "reloaded", "{v}");
    assert_eq!(v["generation"], 2, "{v}");
    assert_eq!(v["routes"], 2, "{v}");

    assert_eq!(c.get(&gw.url("/")).await.text(), "v2");
    let r = c.get(&gw.url("/new/x")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (201, "added"));

    // And back: a route can be removed.
    assert_eq!(gw.reload_with(&respond_all("v3")).await, 3);
    assert_eq!(c.get(&gw.url("/new/x")).await.text(), "v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_reports_every_error_and_keeps_the_old_table() {
    let gw = Gateway::start(&respond_all("v1")).await;
    let bad = r#"[server]
http = "{{HTTP}}"
admin = "{{ADMIN}}"
grace_period = "soon"

[[route]]
host = "a.test"
upstream = "10.0.0.1"

[[route]]
host = "b.test"
hots = "typo"
respond = {}

[[route]]
host = "https://c.test"
respond = {}
"#;
    gw.rewrite_config(bad);
    let (status, v) = gw.reload().await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["status"], "rejected", "{v}");
    let errors = v["errors"].as_array().expect("errors list");
    let config_path = gw.config_path().display().to_string();
    let got: Vec<(u64, String)> = errors
        .iter()
        .map(|e| {
            assert_eq!(e["file"], config_path.as_str(), "{e}");
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            let text = e["text"].as_str().unwrap();
            assert!(text.starts_with(&format!("{config_path}:")), "{text}");
            (
                e["line"].as_u64().unwrap(),
                e["key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = vec![
        (4, "server.grace_period".into()),
        (8, "route[1].upstream".into()),
        (12, "route[2].hots".into()),
        (16, "route[3].host".into()),
    ];
    assert_eq!(got, want, "all errors, in file order: {v}");

    // Nothing changed: the old table serves, the generation did not move.
    let r = gw.client().get(&gw.url("/")).await;
    assert_eq!(r.text(), "v1");
    assert_eq!(gw.reload_with(&respond_all("v2")).await, 2);
    assert_eq!(gw.client().get(&gw.url("/")).await.text(), "v2");

    // A config that is not even TOML is rejected the same way.
    gw.rewrite_config("[[route]\nhost = ");
    let (status, v) = gw.reload().await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["errors"][0]["line"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(gw.client().get(&gw.url("/")).await.text(), "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_is_required_when_configured() {
    let server = "[server]\nhttp = \"{{HTTP}}\"\nadmin = \"{{ADMIN}}\"\nadmin_token_file = \"admin.token\"\n\n";
    let gw = Gateway::builder(&format!("{server}{}", respond_all("v1")))
        .file("admin.token", "s3cret-token\n")
        .start()
        .await;
    assert_eq!(gw.admin_token(), Some("s3cret-token"));
    gw.rewrite_config(&format!("{server}{}", respond_all("v2")));

    for token in [None, Some("wrong"), Some("s3cret-token-and-more"), Some("")] {
        let (status, v) = gw.reload_with_token(token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}: {v}");
        assert_eq!(gw.client().get(&gw.url("/")).await.text(), "v1");
    }
    // Another scheme with the right token is refused too.
    let r = TestClient::new()
        .request(
            Method::POST,
            &gw.admin_url("/reload"),
            &[("authorization", "Basic s3cret-token")],
            TestBody::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").is_some());

    let (status, v) = gw.reload_with_token(Some("s3cret-token")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(gw.client().get(&gw.url("/")).await.text(), "v2");

    // Health needs no token; reload is POST only.
    let r = TestClient::new().get(&gw.admin_url("/healthz")).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = TestClient::new().get(&gw.admin_url("/reload")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failed_requests_across_100_reloads_under_load() {
    const RELOADS: u64 = 100;
    const CLIENTS: usize = 8;
    let a = Backend::echo().await;
    let b = Backend::echo().await;
    // Two tables that differ in every route, so each reload really swaps.
    let config_a = format!(
        "[[route]]\nname = \"a\"\nhost = \"*\"\nupstream = \"{}\"\n\n[[route]]\nname = \"a-static\"\nhost = \"*\"\npath = \"/static\"\nrespond = {{ body = \"a\" }}\n",
        a.url()
    );
    let config_b = format!(
        "[[route]]\nname = \"b\"\nhost = \"*\"\nupstream = [\"{}\", \"{}\"]\n\n[[route]]\nname = \"b-static\"\nhost = \"*\"\npath = \"/static\"\nrespond = {{ body = \"b\" }}\n\n[[route]]\nname = \"b-extra\"\nhost = \"extra.test\"\nrespond = {{ body = \"extra\" }}\n",
        b.url(),
        a.url()
    );
    let gw = Gateway::start(&config_a).await;

    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        // Half keep their connections alive across reloads, half open a
        // new connection per request.
        let client = if i % 2 == 0 {
            TestClient::to(gw.http_addr())
        } else {
            TestClient::to_fresh_connections(gw.http_addr())
        }
        .with_timeout(Duration::from_secs(10));
        let (ok, failed, errors, stop) = (ok.clone(), failed.clone(), errors.clone(), stop.clone());
        let url = gw.url("");
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (method, path, body) = match n % 3 {
                    0 => (Method::GET, format!("/static/{i}"), TestBody::empty()),
                    1 => (
                        Method::GET,
                        format!("/load/{i}/{n}?q={n}"),
                        TestBody::empty(),
                    ),
                    _ => (
                        Method::POST,
                        format!("/post/{i}"),
                        TestBody::pattern(1000 + n),
                    ),
                };
                let outcome = client
                    .try_request(method, &format!("{url}{path}"), &[], body)
                    .await;
                let good = match &outcome {
                    Ok(r) if r.status.is_success() => {
                        // Static answers come from one table or the other;
                        // proxied ones echo exactly what was sent.
                        if path.starts_with("/static") {
                            r.text() == "a" || r.text() == "b"
                        } else {
                            let e = Echo(r.json());
                            e.uri() == path && (n % 3 != 2 || e.body_len() == 1000 + n)
                        }
                    }
                    _ => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let mut errs = errors.lock().unwrap();
                    if errs.len() < 20 {
                        errs.push(match outcome {
                            Ok(r) => format!("{path}: HTTP {}: {}", r.status, r.text()),
                            Err(e) => format!("{path}: {e}"),
                        });
                    }
                }
            }
        }));
    }

    for i in 0..RELOADS {
        // Let traffic run between reloads: at least one request per client.
        let before = ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
        wait_for("requests between reloads", WAIT, || {
            let done = ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
            std::future::ready((done >= before + CLIENTS).then_some(()))
        })
        .await;
        let next = if i % 2 == 0 { &config_b } else { &config_a };
        assert_eq!(gw.reload_with(next).await, i + 2, "reload {i}");
    }
    // Some traffic on the final table too.
    let before = ok.load(Ordering::Relaxed);
    wait_for("requests after the last reload", WAIT, || {
        std::future::ready((ok.load(Ordering::Relaxed) >= before + CLIENTS).then_some(()))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        within("client task to stop", WAIT, t).await.unwrap();
    }

    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    eprintln!("DEBUG ok {ok} a {} b {}", a.served(), b.served());
    assert_eq!(
        failed,
        0,
        "{failed} failed requests ({ok} ok) across {RELOADS} reloads; first errors:\n{}",
        errors.lock().unwrap().join("\n")
    );
    assert!(
        ok >= (RELOADS as usize + 1) * CLIENTS,
        "only {ok} requests ran during {RELOADS} reloads"
    );
    assert!(
        a.served() > 0 && b.served() > 0,
        "both tables served traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_opened_before_reloads_keeps_working() {
    let ws_backend = Backend::websocket_echo().await;
    let with_ws = format!(
        "[[route]]\nname = \"ws\"\nhost = \"ws.test\"\nupstream = \"{}\"\n\n{}",
        ws_backend.url(),
        respond_all("v1")
    );
    let gw = Gateway::start(&with_ws).await;

    let connect = || async {
        let stream = tokio::net::TcpStream::connect(gw.http_addr())
            .await
            .unwrap();
        let req = "ws://ws.test/live".into_client_request().unwrap();
        within(
            "websocket handshake",
            WAIT,
            tokio_tungstenite::client_async(req, stream),
        )
        .await
    };
    let (mut ws, _) = connect().await.expect("websocket handshake");
    let roundtrip = async |ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
                           text: String| {
        ws.send(Message::text(text.clone())).await.expect("send");
        let got = within("websocket echo", WAIT, ws.next())
            .await
            .expect("websocket closed")
            .expect("websocket error");
        assert_eq!(got, Message::text(text));
    };
    roundtrip(&mut ws, "before".into()).await;

    // Reloads that keep the route, change everything else, and finally
    // remove the route altogether.
    for i in 0..4 {
        let v = format!("v{}", i + 2);
        gw.reload_with(&format!(
            "[[route]]\nname = \"ws-{i}\"\nhost = \"ws.test\"\nupstream = \"{}\"\n\n{}",
            ws_backend.url(),
            respond_all(&v)
        ))
        .await;
        roundtrip(&mut ws, format!("after reload {i}")).await;
    }
    gw.reload_with(&respond_all("no-ws")).await;
    roundtrip(&mut ws, "after the route is gone".into()).await;
    // New upgrades follow the new table.
    assert!(
        connect().await.is_err(),
        "a new websocket should find no route"
    );
    roundtrip(&mut ws, "still here".into()).await;
    ws.close(None).await.unwrap();
    assert_eq!(ws_backend.served(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_finishes_on_the_route_it_started_on() {
    let old = Backend::echo().await;
    let gw = Gateway::start(&format!(
        "[[route]]\nname = \"old\"\nhost = \"*\"\nupstream = \"{}\"\n",
        old.url()
    ))
    .await;
    let client = gw.client().clone();
    let url = gw.url("/hold?x=1");
    let in_flight = tokio::spawn(async move { client.get(&url).await });
    wait_for("the request to reach the old backend", WAIT, || {
        std::future::ready((old.holding() == 1).then_some(()))
    })
    .await;

    gw.reload_with(&respond_all("new")).await;
    assert_eq!(gw.client().get(&gw.url("/hold")).await.text(), "new");
    assert!(!in_flight.is_finished());

    old.release();
    let r = within("the in-flight request", WAIT, in_flight)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = Echo(r.json());
    assert_eq!(echo.backend(), old.addr().to_string());
    assert_eq!(echo.uri(), "/hold?x=1");
    assert_eq!(old.served(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_burst_is_coalesced() {
    // A big table makes each reload take a while, so a burst overlaps it.
    let mut big = respond_all("v1");
    for i in 0..2000 {
        big +=
            &format!("[[route]]\nhost = \"h{i}.example.com\"\npath = \"/p{i}\"\nrespond = {{}}\n");
    }
    let gw = Gateway::start(&big).await;
    gw.rewrite_config(&big.replace("\"v1\"", "\"v2\""));

    const BURST: usize = 20;
    // Connect first, then fire every request at once.
    let mut conns = Vec::new();
    for _ in 0..BURST {
        conns.push(
            tokio::net::TcpStream::connect(gw.admin_addr())
                .await
                .unwrap(),
        );
    }
    let req =
        b"POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let mut tasks = Vec::new();
    for mut c in conns {
        tasks.push(tokio::spawn(async move { exchange(&mut c, req).await }));
    }
    let mut generations = BTreeSet::new();
    for t in tasks {
        let r = within("a reload answer", WAIT, t).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["status"], "reloaded", "{v}");
        generations.insert(v["generation"].as_u64().unwrap());
    }
    // Every request was answered, by far fewer reloads than requests, and
    // the generations are consecutive (each answer is a real reload).
    assert!(
        generations.len() <= BURST / 2,
        "{BURST} reload requests ran {} reloads: {generations:?}",
        generations.len()
    );
    eprintln!("DEBUG gens {generations:?}");
    let want: BTreeSet<u64> = (2..2 + generations.len() as u64).collect();
    assert_eq!(generations, want);
    assert_eq!(gw.client().get(&gw.url("/")).await.text(), "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_binary() {
    let mut gw = GatewayProcess::start(&respond_all("v1")).await;
    let c = gw.client();
    assert_eq!(c.get(&gw.url("/")).await.text(), "v1");

    gw.rewrite_config(&respond_all("v2"));
    gw.signal("HUP");
    wait_for("SIGHUP to swap the route", WAIT, || async {
        (c.get(&gw.url("/")).await.text() == "v2").then_some(())
    })
    .await;

    // A bad config on SIGHUP is logged and changes nothing.
    gw.rewrite_config("[[route]]\nhost = \"*\"\nrespond = { status = 99 }\n");
    gw.signal("HUP");
    wait_for("the rejected reload to be logged", WAIT, || {
        std::future::ready(gw.logs().contains("reload rejected").then_some(()))
    })
    .await;
    assert!(gw.logs().contains("route[1].respond"), "{}", gw.logs());
    assert_eq!(c.get(&gw.url("/")).await.text(), "v2");
    assert!(!gw.has_exited());
}

/// A reload that moves a listener cannot move it: the reload line names
/// the listeners really in effect (not the file's new address), and a
/// warning says the change waits for a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_log_names_the_listeners_in_effect() {
    let gw = GatewayProcess::start(&respond_all("v1")).await;
    let c = gw.client();
    gw.rewrite_config(&format!(
        "[server]\nhttp = \"127.0.0.1:1\"\nadmin = \"{{{{ADMIN}}}}\"\nstate_dir = \"{{{{DIR}}}}/state\"\n\n{}",
        respond_all("v2")
    ));
    gw.signal("HUP");
    wait_for("the reload to be logged", WAIT, || {
        std::future::ready(gw.logs().contains("config reloaded").then_some(()))
    })
    .await;
    assert_eq!(c.get(&gw.url("/")).await.text(), "v2");
    let logs = gw.logs();
    let in_effect = format!("listeners in effect: http {}", gw.http_addr());
    assert!(logs.contains(&in_effect), "want `{in_effect}` in:\n{logs}");
    assert!(
        logs.contains("server.http changed; it takes effect after a restart"),
        "{logs}"
    );
    assert!(!logs.contains("http 127.0.0.1:1"), "{logs}");
}
