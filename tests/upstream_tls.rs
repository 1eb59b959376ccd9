//! HTTPS backends: a real nginx serving TLS (a CA made here with rcgen;
//! one port also requires a client certificate), the gateway binary in
//! front of it (its log tells why a handshake failed). One nginx and one
//! gateway are shared by the tests of this file.

mod support;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http::StatusCode;
use support::backend::Backend;
use support::browser::spki_pin;
use support::client::TestClient;
use support::gateway::{Gateway, GatewayProcess};
use support::nginx::Nginx;
use support::tls::TestCa;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

struct Env {
    gw: Option<GatewayProcess>,
    nginx: Option<Nginx>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

static ENV: Mutex<Weak<Env>> = Mutex::new(Weak::new());

/// The shared setup, started if no running test holds it.
fn env() -> Arc<Env> {
    let mut slot = ENV.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = slot.upgrade() {
        return e;
    }
    let e = Arc::new(Env::start());
    *slot = Arc::downgrade(&e);
    e
}

impl Drop for Env {
    fn drop(&mut self) {
        self.gw.take();
        self.nginx.take();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Env {
    fn gw(&self) -> &GatewayProcess {
        self.gw.as_ref().unwrap()
    }
    fn nginx(&self) -> &Nginx {
        self.nginx.as_ref().unwrap()
    }
    fn client(&self) -> TestClient {
        TestClient::to(self.gw().http_addr())
    }

    fn start() -> Env {
        let ca = TestCa::new();
        let leaf = ca.leaf(&["backend.test"]);
        let client_ca = TestCa::new();
        let client = client_ca.leaf(&["portcullis-client"]);
        let pin = spki_pin(&leaf.cert_pem);
        let other_pin = spki_pin(&ca.leaf(&["backend.test"]).cert_pem);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime for the shared peers");
            rt.block_on(async move {
                let ws = Backend::websocket_echo().await;
                let files = [
                    ("backend.pem", leaf.cert_pem.as_str()),
                    ("backend.key", leaf.key_pem.as_str()),
                    ("client-ca.pem", &client_ca.pem()),
                ];
                let ws_addr = ws.addr();
                let nginx = Nginx::custom(5, &files, |d, p| {
                    let d = d.display();
                    format!(
                        r#"
    ssl_certificate {d}/backend.pem;
    ssl_certificate_key {d}/backend.key;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{p0} ssl http2;
        location / {{ return 200 "backend $ssl_server_name $server_protocol\n"; }}
        location /ws {{
            proxy_pass http://{ws_addr};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
        }}
    }}
    server {{
        listen 127.0.0.1:{p1} ssl;
        ssl_client_certificate {d}/client-ca.pem;
        ssl_verify_client on;
        location / {{ return 200 "mtls $ssl_client_s_dn\n"; }}
    }}
    server {{
        listen 127.0.0.1:{p2} ssl http2;
        keepalive_requests 5;
        location / {{ return 200 "goaway\n"; }}
    }}
    server {{
        listen 127.0.0.1:{p3} ssl;
        keepalive_requests 1;
        location / {{ return 200 "reused=$ssl_session_reused\n"; }}
    }}
    server {{
        listen 127.0.0.1:{p4} ssl http2;
        location / {{ return 200 "cold\n"; }}
    }}
"#,
                        p0 = p[0],
                        p1 = p[1],
                        p2 = p[2],
                        p3 = p[3],
                        p4 = p[4],
                    )
                })
                .await;
                let (p0, p1, p2, p3, p4) = (
                    nginx.addr_n(0),
                    nginx.addr_n(1),
                    nginx.addr_n(2),
                    nginx.addr_n(3),
                    nginx.addr_n(4),
                );
                let tls = r#"ca_file = "ca.pem", server_name = "backend.test""#;
                let config = format!(
                    r#"
[server]
http = "{{{{HTTP}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"

[[route]]
host = "ok.test"
upstream = "https://{p0}"
upstream_tls = {{ {tls} }}

[[route]]
host = "coldh2.test"
upstream = "https://{p4}"
upstream_tls = {{ {tls} }}
upstream_protocol = "h2"

[[route]]
host = "h1.test"
upstream = "https://{p0}"
upstream_tls = {{ {tls} }}
upstream_protocol = "http1"

[[route]]
host = "wrongname.test"
upstream = "https://{p0}"
upstream_tls = {{ ca_file = "ca.pem", server_name = "other.test" }}

[[route]]
host = "unknownca.test"
upstream = "https://{p0}"
upstream_tls = {{ server_name = "backend.test" }}

[[route]]
host = "pin.test"
upstream = "https://{p0}"
upstream_tls = {{ pin_sha256 = ["{pin}"] }}

[[route]]
host = "pinbad.test"
upstream = "https://{p0}"
upstream_tls = {{ pin_sha256 = ["{other_pin}"] }}

[[route]]
host = "mtls.test"
upstream = "https://{p1}"
upstream_tls = {{ {tls}, client_cert_file = "client.pem", client_key_file = "client.key" }}

[[route]]
host = "goaway.test"
upstream = "https://{p2}"
upstream_tls = {{ {tls} }}
upstream_protocol = "h2"

[[route]]
host = "resume.test"
upstream = "https://{p3}"
upstream_tls = {{ {tls} }}

[[route]]
host = "noh2.test"
upstream = "https://{p3}"
upstream_tls = {{ {tls} }}
upstream_protocol = "h2"

[[route]]
host = "hc.test"
upstream = "https://{p0}"
upstream_tls = {{ {tls} }}
health_check = {{ path = "/hc-probe", interval = "200ms", timeout = "2s" }}

[[route]]
host = "insecure.test"
upstream = "https://{p0}"
upstream_tls = {{ insecure_skip_verify = true }}

[[route]]
host = "nocert.test"
upstream = "https://{p1}"
upstream_tls = {{ {tls} }}
"#
                );
                let gw = Gateway::builder(&config)
                    .file("ca.pem", ca.pem())
                    .file("client.pem", &client.cert_pem)
                    .file("client.key", &client.key_pem)
                    .spawn_binary()
                    .await;
                ready_tx.send((gw, nginx)).unwrap();
                let _ = stop_rx.await;
                drop(ws);
            });
        });
        let (gw, nginx) = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("peers started");
        Env {
            gw: Some(gw),
            nginx: Some(nginx),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Waits until the gateway's log has a line with all of `words`.
    async fn logged(&self, words: &[&str]) -> String {
        support::wait_for(
            &format!("a log line with {words:?}"),
            Duration::from_secs(10),
            || async {
                self.gw()
                    .logs()
                    .lines()
                    .find(|l| words.iter().all(|w| l.contains(w)))
                    .map(str::to_string)
            },
        )
        .await
    }
}

#[tokio::test]
async fn a_verified_https_backend_answers() {
    let env = env();
    let r = env.client().get("http://ok.test/x").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // SNI carried server_name; auto settled on h2 with this nginx.
    assert_eq!(r.text(), "backend backend.test HTTP/2.0\n");
    let r = env.client().get("http://h1.test/x").await;
    assert_eq!(r.text(), "backend backend.test HTTP/1.1\n");
}

#[tokio::test]
async fn a_wrong_server_name_is_a_502_with_the_reason_in_the_log_only() {
    let env = env();
    let r = env.client().get("http://wrongname.test/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(!r.text().contains("not valid"), "{}", r.text());
    env.logged(&["certificate for 127.0.0.1 is not valid for name other.test"])
        .await;
}

#[tokio::test]
async fn an_unknown_ca_is_a_502() {
    let env = env();
    let r = env.client().get("http://unknownca.test/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    env.logged(&["unknown issuer (set upstream_tls.ca_file or pin_sha256)"])
        .await;
}

#[tokio::test]
async fn a_pinned_key_is_trusted_without_a_ca_and_another_is_not() {
    let env = env();
    let r = env.client().get("http://pin.test/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = env.client().get("http://pinbad.test/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    env.logged(&["pin mismatch"]).await;
}

#[tokio::test]
async fn a_backend_requiring_a_client_certificate_gets_ours_or_we_say_why_not() {
    let env = env();
    let r = env.client().get("http://mtls.test/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().starts_with("mtls CN="), "{}", r.text());
    let r = env.client().get("http://nocert.test/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    env.logged(&["asked for a client certificate and none is configured"])
        .await;
}

#[tokio::test]
async fn h2_required_from_a_backend_offering_only_http1_is_a_502_saying_so() {
    let env = env();
    // nginx's fourth server has `ssl` without `http2`: ALPN offers
    // http/1.1 only, and this route insists on h2.
    let r = env.client().get("http://noh2.test/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(!r.text().contains("did not offer"), "{}", r.text());
    let upstream = format!("https://{}", env.nginx().addr_n(3));
    let line = env
        .logged(&["backend did not offer h2", upstream.as_str()])
        .await;
    assert!(line.contains("TLS to the backend failed"), "{line}");
}

#[tokio::test]
async fn https_connections_are_reused() {
    let env = env();
    let client = env.client();
    const N: usize = 60;
    for i in 0..N {
        let r = client.get(&format!("http://h1.test/reuse-{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let log = env.nginx().access_log();
    let conns: std::collections::HashSet<&str> = log
        .lines()
        .filter(|l| l.contains("/reuse-"))
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(log.matches("/reuse-").count(), N);
    // One pool per worker thread: a handful of connections at most.
    assert!(
        conns.len() <= 4,
        "{} connections for {N} requests",
        conns.len()
    );
}

#[tokio::test]
async fn websocket_to_an_https_backend() {
    let env = env();
    let stream = tokio::net::TcpStream::connect(env.gw().http_addr())
        .await
        .unwrap();
    let req = "ws://ok.test/ws".into_client_request().unwrap();
    let (mut ws, resp) = support::within(
        "websocket handshake",
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .expect("websocket handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..5 {
        let text = format!("over tls {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let got = support::within("echo", Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text(text));
    }
}

/// Connections (nginx's `$connection`) that served the requests whose
/// path contains `mark`, and how many such requests there were.
fn connections_for(log: &str, mark: &str) -> (usize, usize) {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(mark)).collect();
    let conns: std::collections::HashSet<&str> =
        lines.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
    (conns.len(), lines.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_requests_share_one_connection_and_goaway_opens_another() {
    let env = env();
    // Warm up: the first request settles the protocol (ALPN h2).
    assert_eq!(
        env.client().get("http://ok.test/warm").await.status,
        StatusCode::OK
    );
    let mut tasks = Vec::new();
    for i in 0..40 {
        // Many client connections at once.
        let client = TestClient::to_fresh_connections(env.gw().http_addr());
        tasks.push(tokio::spawn(async move {
            client.get(&format!("http://ok.test/mux-{i}")).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let (conns, reqs) = connections_for(&env.nginx().access_log(), "/mux-");
    assert_eq!(reqs, 40);
    assert_eq!(conns, 1, "40 requests over {conns} upstream connections");

    // This server says GOAWAY after 5 requests on a connection.
    let client = env.client();
    for i in 0..20 {
        let r = client.get(&format!("http://goaway.test/ga-{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
    }
    let (conns, reqs) = connections_for(&env.nginx().access_log(), "/ga-");
    assert_eq!(reqs, 20);
    assert!(
        conns >= 4,
        "GOAWAY after 5 requests, yet {conns} connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_to_an_h2_backend_open_one_connection() {
    let env = env();
    // No request has gone to this backend yet: all 30 find no connection
    // open, and wait for the one being opened instead of opening their own.
    let mut tasks = Vec::new();
    for i in 0..30 {
        let client = TestClient::to_fresh_connections(env.gw().http_addr());
        tasks.push(tokio::spawn(async move {
            client
                .get(&format!("http://coldh2.test/cold-{i}"))
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let (conns, reqs) = connections_for(&env.nginx().access_log(), "/cold-");
    assert_eq!(reqs, 30);
    assert_eq!(
        conns, 1,
        "30 concurrent first requests over {conns} upstream connections"
    );
}

#[tokio::test]
async fn insecure_skip_verify_works_and_is_never_quiet() {
    let env = env();
    // Unknown CA and a name that is not the certificate's: accepted.
    let r = env.client().get("http://insecure.test/").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    env.logged(&["insecure.test", "NOT verified"]).await;
    let admin = env.gw().admin_addr();
    let routes = TestClient::new()
        .get(&format!("http://{admin}/routes"))
        .await
        .json();
    let list = routes["routes"].as_array().unwrap();
    let find = |host: &str| list.iter().find(|r| r["host"] == host).unwrap().clone();
    assert_eq!(
        find("insecure.test")["upstream_tls"]["insecure_skip_verify"],
        true
    );
    let ok = find("ok.test");
    assert_eq!(ok["upstream_tls"]["insecure_skip_verify"], false);
    assert_eq!(ok["upstream_tls"]["server_name"], "backend.test");
    assert_eq!(find("h1.test")["upstream_protocol"], "http1");
}

#[tokio::test]
async fn health_checks_reach_https_backends_over_verified_tls() {
    let env = env();
    support::wait_for(
        "a health check on nginx",
        Duration::from_secs(10),
        || async {
            env.nginx()
                .access_log()
                .contains("/hc-probe 200")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn new_tls_connections_resume_the_session() {
    let env = env();
    let client = env.client();
    // This server closes every connection after one request: each request
    // needs a new handshake.
    let mut answers = Vec::new();
    for _ in 0..6 {
        let r = client.get("http://resume.test/").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        answers.push(r.text());
    }
    assert!(
        answers.iter().skip(2).any(|a| a == "reused=r\n"),
        "no resumed session: {answers:?}"
    );
}
