//! Hardening through the real gateway: request normalisation and framing
//! tricks, client-address rules, body limits, slow clients, upstream
//! health, retries and mid-response failures.

mod support;

use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::backend::Backend;
use support::client::{TestBody, TestClient, raw};
use support::gateway::gateway_with;
use support::{wait_for, within};

#[tokio::test]
async fn path_tricks_are_normalised_once_or_refused() {
    let backend = Backend::echo().await;
    let gw = gateway_with(
        &format!(
            r#"
[[route]]
host = "a.test"
path = "/admin"
respond = {{ status = 403, body = "admin area" }}

[[route]]
host = "a.test"
upstream = "{}"
"#,
            backend.url()
        ),
        "",
    )
    .await;
    let addr = gw.http_addr();

    // Spellings of /admin that must reach the /admin route, not "/".
    for path in [
        "/%61dmin",
        "//admin",
        "/x/../admin",
        "/./admin/",
        "/%2e/admin",
        "/x/%2e%2e/admin",
    ] {
        let r = raw(
            addr,
            &[
                &format!("GET {path} HTTP/1.1"),
                "Host: a.test",
                "Connection: close",
            ],
            b"",
        )
        .await;
        assert_eq!(
            r.status,
            403,
            "{path} must be routed as /admin: {}",
            r.text()
        );
        assert_eq!(r.text(), "admin area", "{path}");
    }
    // The backend gets exactly the normalised path.
    let r = raw(
        addr,
        &[
            "GET /pub/./x/../y//z?q=%2F HTTP/1.1",
            "Host: a.test",
            "Connection: close",
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uri"], "/pub/y/z?q=%2F", "query is left alone");

    // Refused outright.
    for path in [
        "/admin%2fx",
        "/a%2Fadmin",
        "/a%5cadmin",
        "/a\\admin",
        "/a%00b",
        "/a%zz",
    ] {
        let r = raw(
            addr,
            &[
                &format!("GET {path} HTTP/1.1"),
                "Host: a.test",
                "Connection: close",
            ],
            b"",
        )
        .await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }
    assert_eq!(
        backend.served(),
        1,
        "refused requests never reach the backend"
    );
}

#[tokio::test]
async fn framing_tricks_are_refused() {
    let backend = Backend::echo().await;
    let gw = gateway_with(
        &format!(
            "[[route]]\nhost = \"a.test\"\nupstream = \"{}\"\n",
            backend.url()
        ),
        "",
    )
    .await;
    let addr = gw.http_addr();

    // Content-Length + Transfer-Encoding: chunked wins, Content-Length
    // never reaches the backend, and the bytes a front end reading by
    // Content-Length would have treated as a second request are not
    // processed (the connection is closed after the response).
    let smuggle = b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(smuggle).await.unwrap();
    let mut all = Vec::new();
    within(
        "the connection to close",
        Duration::from_secs(10),
        s.read_to_end(&mut all),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "one response only: {text}"
    );
    assert!(!text.contains("/smuggled"), "{text}");
    // The client's length never reaches the backend (a buffered body
    // goes with the length actually read: 0 here).
    assert!(
        !text.to_lowercase().contains("[\"content-length\",\"44\"]"),
        "{text}"
    );
    assert_eq!(backend.served(), 1);

    let r = raw(
        addr,
        &[
            "POST / HTTP/1.1",
            "Host: a.test",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Content-Length: 5",
        ],
        b"hello",
    )
    .await;
    assert_eq!(r.status, 400, "upgrade with a body: {}", r.text());

    let r = raw(
        addr,
        &[
            "GET http://a.test/ HTTP/1.1",
            "Host: b.test",
            "Connection: close",
        ],
        b"",
    )
    .await;
    assert_eq!(
        r.status,
        400,
        "absolute-form host differs from Host: {}",
        r.text()
    );
    assert_eq!(backend.served(), 1);

    // h2c upgrade is not relayed: plain HTTP/1.1 reaches the backend.
    let r = raw(
        addr,
        &[
            "GET / HTTP/1.1",
            "Host: a.test",
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let headers = r.json()["headers"].to_string().to_lowercase();
    assert!(!headers.contains("upgrade"), "{headers}");
    assert!(!headers.contains("http2-settings"), "{headers}");
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let gw = gateway_with(
        "[[route]]\nhost = \"*\"\nrespond = { body = \"ok\" }\n",
        "max_header_bytes = \"16KiB\"",
    )
    .await;
    let big = format!("X-Big: {}", "a".repeat(32 * 1024));
    let r = raw(
        gw.http_addr(),
        &["GET / HTTP/1.1", "Host: a.test", &big],
        b"",
    )
    .await;
    assert_eq!(r.status, 431);
    let r = raw(
        gw.http_addr(),
        &["GET / HTTP/1.1", "Host: a.test", "Connection: close"],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn client_address_rules() {
    let gw = gateway_with(
        r#"
[[route]]
host = "office.test"
allow_ips = ["10.0.0.0/8"]
respond = { body = "office" }

[[route]]
host = "blocked.test"
deny_ips = ["127.0.0.1"]
respond = { body = "blocked" }

[[route]]
host = "open.test"
respond = { body = "open" }
"#,
        "trusted_proxies = [\"127.0.0.1/32\"]",
    )
    .await;
    let c = gw.client();
    let get = |host: &'static str, xff: Option<&'static str>| {
        let url = format!("http://{host}/");
        async move {
            let mut h = vec![];
            if let Some(x) = xff {
                h.push(("x-forwarded-for", x));
            }
            c.get_with(&url, &h).await
        }
    };
    // Peer 127.0.0.1 is a trusted proxy: the client is the XFF address.
    assert_eq!(get("office.test", Some("10.1.2.3")).await.status, 200);
    assert_eq!(get("office.test", Some("192.0.2.7")).await.status, 403);
    assert_eq!(
        get("office.test", None).await.status,
        403,
        "127.0.0.1 itself is not in 10/8"
    );
    let denied = get("blocked.test", None).await;
    assert_eq!(denied.status, 403);
    assert!(denied.text().contains("not allowed"), "{}", denied.text());
    assert_eq!(get("blocked.test", Some("10.1.2.3")).await.status, 200);
    assert_eq!(get("open.test", None).await.status, 200);
}

#[tokio::test]
async fn body_limits_and_stalled_bodies() {
    let backend = Backend::echo().await;
    let gw = gateway_with(
        &format!(
            "[[route]]\nhost = \"a.test\"\nmax_body = \"1KiB\"\nupstream = \"{}\"\n",
            backend.url()
        ),
        "request_body_timeout = \"300ms\"",
    )
    .await;
    let c = TestClient::to(gw.http_addr());

    // Declared too large: refused before anything is sent upstream.
    let r = c
        .request(http::Method::POST, "http://a.test/", &[], vec![b'x'; 2048])
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(backend.served(), 0);

    // Chunked and too large: stopped mid-stream.
    let chunk = format!("800\r\n{}\r\n", "y".repeat(0x800));
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}0\r\n\r\n"
    );
    let r = support::client::raw_bytes(gw.http_addr(), req.as_bytes()).await;
    assert_eq!(r.status, 413, "{}", r.text());

    // Within the limit: fine.
    let r = c
        .request(http::Method::POST, "http://a.test/", &[], vec![b'z'; 512])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 512);

    // A client that stops sending its body gets 408.
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within(
        "408 for a stalled body",
        Duration::from_secs(10),
        s.read(&mut buf),
    )
    .await
    .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
}

#[tokio::test]
async fn slowloris_is_cut_off_while_others_are_served() {
    let gw = gateway_with(
        "[[route]]\nhost = \"*\"\nrespond = { body = \"ok\" }\n",
        "header_read_timeout = \"500ms\"",
    )
    .await;
    let addr = gw.http_addr();
    let trickler = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: ";
        let mut sent = 0usize;
        for b in head.iter().chain(std::iter::repeat(&b'a')) {
            if s.write_all(&[*b]).await.is_err() {
                return sent;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if sent > 400 {
                break;
            }
        }
        // Still open after 20 s of trickling would be a failure.
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => sent,
            _ => usize::MAX,
        }
    });
    // Normal clients keep being served meanwhile.
    let c = TestClient::to_fresh_connections(addr);
    for _ in 0..10 {
        assert_eq!(c.get("http://a.test/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = within(
        "the trickling connection to be closed",
        Duration::from_secs(30),
        trickler,
    )
    .await
    .unwrap();
    assert!(
        sent < 400,
        "the slow client was not cut off (sent {sent} bytes)"
    );
}

#[tokio::test]
async fn retries_idempotent_requests_and_ejects_dead_upstreams() {
    let dead = Backend::refusing().await;
    let live = Backend::echo().await;
    let gw = gateway_with(
        &format!(
            "[[route]]\nhost = \"a.test\"\nupstream = [\"{}\", \"{}\"]\n",
            dead.url(),
            live.url()
        ),
        "upstream_eject_after = 1\nupstream_eject_for = \"60s\"",
    )
    .await;
    let c = TestClient::to(gw.http_addr());
    // GETs never fail: a refused connect is retried on the next upstream.
    for _ in 0..6 {
        assert_eq!(c.get("http://a.test/").await.status, 200);
    }
    // The dead one is ejected after its failure, so POSTs (never retried)
    // only go to the live one now.
    for _ in 0..6 {
        let r = c
            .request(http::Method::POST, "http://a.test/", &[], "x")
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(live.served(), 12);
}

#[tokio::test]
async fn all_upstreams_down_gives_a_clear_502() {
    let a = Backend::refusing().await;
    let b = Backend::refusing().await;
    let gw = gateway_with(
        &format!(
            "[[route]]\nhost = \"a.test\"\nupstream = [\"{}\", \"{}\"]\n",
            a.url(),
            b.url()
        ),
        "",
    )
    .await;
    let r = gw
        .client()
        .get_with(&gw.url("/"), &[("host", "a.test")])
        .await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("not reachable"), "{}", r.text());
    assert!(
        !r.text().contains("127.0.0.1"),
        "no internal addresses in pages"
    );
}

#[tokio::test]
async fn active_health_checks_take_a_failing_upstream_out() {
    let a = Backend::echo().await;
    let b = Backend::echo().await;
    let b_url = b.url();
    let gw = gateway_with(
        &format!(
            r#"
[[route]]
host = "a.test"
upstream = ["{}", "{}"]
health_check = {{ path = "/healthz", interval = "100ms", timeout = "1s" }}
"#,
            a.url(),
            b_url
        ),
        "upstream_eject_after = 0",
    )
    .await;
    drop(b); // b is now refusing; only the health check can notice (no ejection, POSTs are not retried)
    let c = TestClient::to(gw.http_addr());
    wait_for(
        "the dead upstream to leave the rotation",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            async move {
                for _ in 0..4 {
                    let r = c
                        .request(http::Method::POST, "http://a.test/", &[], "x")
                        .await;
                    if r.status != 200 {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    for _ in 0..10 {
        let r = c
            .request(http::Method::POST, "http://a.test/", &[], "x")
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["backend"], a.addr().to_string());
    }
}

/// A backend that answers every request with `response` and then closes.
async fn scripted_backend(
    response: &'static [u8],
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn an_upstream_reset_mid_body_is_a_visibly_failed_response() {
    let (short_cl, t1) =
        scripted_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b").await;
    let (short_chunked, t2) = scripted_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten b\r\n",
    )
    .await;
    let gw = gateway_with(
        &format!(
            "[[route]]\nhost = \"cl.test\"\nupstream = \"http://{short_cl}\"\n\n[[route]]\nhost = \"chunked.test\"\nupstream = \"http://{short_chunked}\"\n"
        ),
        "",
    )
    .await;
    for host in ["cl.test", "chunked.test"] {
        let c = TestClient::to(gw.http_addr());
        let r = c
            .try_request(
                http::Method::GET,
                &format!("http://{host}/"),
                &[],
                TestBody::empty(),
            )
            .await;
        assert!(
            r.is_err(),
            "{host}: a truncated upstream body must not look complete to the client: {:?}",
            r.map(|r| (r.status, r.body.len()))
        );
    }
    t1.abort();
    t2.abort();
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_request() {
    // A backend that reads a request and then waits: we watch for EOF.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let backend = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 8192];
        let _ = s.read(&mut buf).await.unwrap();
        // Now wait for the gateway to close its side.
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = tx.send(());
    });
    let gw = gateway_with(
        &format!("[[route]]\nhost = \"a.test\"\nupstream = \"http://{addr}\"\n"),
        "",
    )
    .await;
    let mut client = TcpStream::connect(gw.http_addr()).await.unwrap();
    client
        .write_all(b"GET /wait HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(client);
    within(
        "the upstream connection to be closed after the client left",
        Duration::from_secs(10),
        rx,
    )
    .await
    .unwrap();
    backend.abort();
}

#[tokio::test]
async fn an_upstream_name_that_does_not_resolve_fails_only_its_route() {
    let gw = gateway_with(
        r#"
[[route]]
host = "broken.test"
upstream = "http://no-such-host.invalid:8080"

[[route]]
host = "fine.test"
respond = { body = "fine" }
"#,
        "",
    )
    .await;
    let c = gw.client();
    let r = c.get_with(&gw.url("/"), &[("host", "broken.test")]).await;
    assert_eq!(r.status, 502);
    assert!(
        !r.text().contains("no-such-host"),
        "no internal names in pages"
    );
    let r = c.get_with(&gw.url("/"), &[("host", "fine.test")]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn at_max_connections_accepting_pauses_instead_of_failing() {
    let gw = gateway_with(
        "[[route]]\nhost = \"*\"\nrespond = { body = \"ok\" }\n",
        "max_connections = 2",
    )
    .await;
    let addr = gw.http_addr();
    // Two idle keep-alive connections take both slots.
    let mut a = TcpStream::connect(addr).await.unwrap();
    let b = TcpStream::connect(addr).await.unwrap();
    a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = a.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // A third client waits (connect succeeds via the backlog, no answer)...
    let third = tokio::spawn(async move {
        raw(
            addr,
            &["GET / HTTP/1.1", "Host: x", "Connection: close"],
            b"",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "the third connection must wait for a slot"
    );
    // ...and is served as soon as a slot frees up.
    drop(a);
    let r = within(
        "the waiting client to be served",
        Duration::from_secs(10),
        third,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    drop(b);
}

#[tokio::test]
async fn the_route_timeout_starts_after_the_upload_not_before() {
    let backend = Backend::echo().await;
    let gw = gateway_with(
        &format!(
            "[[route]]\nhost = \"a.test\"\ntimeout = \"1s\"\nupstream = \"{}\"\n",
            backend.url()
        ),
        "request_body_timeout = \"2s\"",
    )
    .await;
    // A 2.5 s upload in steady chunks: slower than the route timeout, but
    // never stalled, so it must succeed.
    let mut s = TcpStream::connect(gw.http_addr()).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        s.write_all(b"5\r\nhello\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut all = Vec::new();
    within(
        "the response",
        Duration::from_secs(20),
        s.read_to_end(&mut all),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"body_len\":50"), "{text}");
}

#[tokio::test]
async fn two_host_headers_are_refused() {
    let backend = Backend::echo().await;
    let gw = gateway_with(
        &format!(
            "[[route]]\nhost = \"a.test\"\nupstream = \"{}\"\n\n[[route]]\nhost = \"b.test\"\nupstream = \"{}\"\n",
            backend.url(),
            backend.url()
        ),
        "",
    )
    .await;
    for (first, second) in [("a.test", "b.test"), ("b.test", "a.test")] {
        let r = raw(
            gw.http_addr(),
            &[
                "GET / HTTP/1.1",
                &format!("Host: {first}"),
                &format!("Host: {second}"),
                "Connection: close",
            ],
            b"",
        )
        .await;
        assert_eq!(r.status, 400, "Host: {first} + Host: {second}");
    }
    assert_eq!(backend.served(), 0);
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A backend that counts the TCP connections it accepts.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let seen = conns.clone();
    let backend = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"pooled")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let gw = gateway_with(
        &format!("[[route]]\nhost = \"a.test\"\nupstream = \"http://{addr}\"\n"),
        "",
    )
    .await;
    // Sequential requests from fresh client connections share one
    // upstream connection.
    let c = TestClient::to_fresh_connections(gw.http_addr());
    for _ in 0..20 {
        let r = c.get("http://a.test/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "pooled");
    }
    assert!(
        conns.load(Ordering::SeqCst) <= 2,
        "20 sequential requests opened {} upstream connections",
        conns.load(Ordering::SeqCst)
    );
    backend.abort();
}
