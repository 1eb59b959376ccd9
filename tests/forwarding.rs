//! Forwarding through the live gateway: streamed bodies, WebSocket, header
//! rules (hop-by-hop, X-Forwarded-*, identity headers, request ids, Host),
//! h2c clients, and the 502/504 pages.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http::{Method, StatusCode};
use support::backend::{Backend, Echo};
use support::client::{TestBody, TestClient, hash_body, raw};
use support::gateway::Gateway;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

fn proxy_route(host: &str, upstream: &str, extra: &str) -> String {
    format!("[[route]]\nhost = \"{host}\"\nupstream = \"{upstream}\"\n{extra}\n\n")
}

/// A header name as a backend framework might read it: lowercase, `_` and
/// `.` as `-`.
fn normalized(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_without_buffering() {
    const SIZE: u64 = 1024 * 1024 * 1024;
    let be = Backend::echo().await;
    let gw = Gateway::start(&proxy_route("*", &be.url(), "")).await;
    let client = TestClient::to(gw.http_addr()).with_timeout(Duration::from_secs(300));
    let expected = support::pattern_sha256(SIZE);

    // Warm up connections and allocator before the baseline.
    assert_eq!(client.get(&gw.url("/warmup")).await.status, 200);
    let baseline = support::rss_bytes();
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(support::rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Upload: the backend hashes what arrives.
    let r = client
        .request(
            Method::POST,
            &gw.url("/upload"),
            &[("content-type", "application/octet-stream")],
            TestBody::pattern(SIZE),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = Echo(r.json());
    assert_eq!(echo.body_len(), SIZE, "{}", echo.0);
    assert_eq!(echo.body_sha256(), expected, "upload corrupted");

    // Download: the backend streams the pattern, we hash it as it arrives.
    let resp = client
        .send(
            Method::GET,
            &gw.url(&format!("/bytes?n={SIZE}")),
            &[],
            TestBody::empty(),
        )
        .await
        .expect("download");
    assert_eq!(resp.status(), 200);
    let (len, sha) = support::within(
        "1 GiB download",
        Duration::from_secs(300),
        hash_body(resp.into_body()),
    )
    .await
    .expect("download body");
    assert_eq!(len, SIZE);
    assert_eq!(sha, expected, "download corrupted");

    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    peak.fetch_max(support::rss_bytes(), Ordering::Relaxed);
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    // Client, gateway and backend all run in this process: if any of them
    // buffered a body, RSS would grow by about SIZE.
    assert!(
        growth < SIZE / 16,
        "RSS grew by {} MiB while streaming {} MiB each way",
        growth >> 20,
        SIZE >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_gateway() {
    let ws_backend = Backend::websocket_echo().await;
    let gw = Gateway::start(&proxy_route("ws.test", &ws_backend.url(), "")).await;

    let stream = tokio::net::TcpStream::connect(gw.http_addr())
        .await
        .unwrap();
    let req = "ws://ws.test/socket?room=1".into_client_request().unwrap();
    let (mut ws, resp) = support::within(
        "websocket handshake through the gateway",
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .expect("websocket handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.headers().contains_key("x-request-id"));

    for i in 0..20 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let got = support::within("websocket echo", Duration::from_secs(10), ws.next())
            .await
            .expect("stream ended")
            .expect("websocket error");
        assert_eq!(got, Message::text(text));
    }
    let big: Vec<u8> = support::pattern_chunk_at(7, 200_000);
    ws.send(Message::binary(big.clone())).await.unwrap();
    let got = support::within("websocket echo", Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.into_data().as_ref(), &big[..]);
    ws.close(None).await.unwrap();
    assert_eq!(ws_backend.served(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_connection_named_headers_are_removed() {
    let be = Backend::echo().await;
    let gw = Gateway::start(&proxy_route("h.test", &be.url(), "")).await;

    let r = raw(
        gw.http_addr(),
        &[
            "GET /hop?h=connection:x-resp-secret&h=x-resp-secret:1&h=keep-alive:timeout=5&h=x-resp-keep:yes HTTP/1.1",
            "Host: h.test",
            "Connection: keep-alive, X-Secret, x-other",
            "Connection: X-Third",
            "Keep-Alive: timeout=5",
            "X-Secret: s3cret",
            "X-Other: o",
            "X-Third: t",
            "TE: trailers",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "Proxy-Connection: keep-alive",
            "Upgrade: h2c",
            "X-Keep: yes",
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = Echo(r.json());
    for gone in [
        "x-secret",
        "x-other",
        "x-third",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
        "trailer",
        "transfer-encoding",
    ] {
        assert!(
            echo.header_all(gone).is_empty(),
            "{gone} reached the backend: {:?}",
            echo.headers()
        );
    }
    for c in echo.header_all("connection") {
        assert!(
            !c.to_ascii_lowercase().contains("secret") && !c.to_ascii_lowercase().contains("third"),
            "client Connection header forwarded: {c}"
        );
    }
    assert_eq!(echo.header("x-keep").as_deref(), Some("yes"));

    // The same rules on the way back.
    assert_eq!(r.header("x-resp-keep"), Some("yes"), "{:?}", r.headers);
    assert!(r.header("x-resp-secret").is_none(), "{:?}", r.headers);
    assert!(r.header("keep-alive").is_none(), "{:?}", r.headers);
    for (k, v) in &r.headers {
        assert!(
            !(k == "connection" && v.contains("x-resp-secret")),
            "backend Connection header relayed: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_forwarding_headers_are_replaced_in_every_spelling() {
    let be = Backend::echo().await;
    let gw = Gateway::start(&proxy_route("f.test", &be.url(), "")).await;

    let r = raw(
        gw.http_addr(),
        &[
            "GET /xff HTTP/1.1",
            "Host: f.test",
            "Connection: close",
            "X-Forwarded-For: 6.6.6.6",
            "X-Forwarded-For: 6.6.6.7",
            "X_Forwarded_For: 7.7.7.7",
            "x.forwarded.for: 7.7.7.8",
            "X-Forwarded-Proto: https",
            "X_FORWARDED_PROTO: https",
            "X-Forwarded-Host: evil.test",
            "x.forwarded.host: evil2.test",
            "X-Forwarded-Port: 1",
            "X-Forwarded-Prefix: /evil",
            "Forwarded: for=6.6.6.6;proto=https;host=evil.test",
            "X-Real-IP: 6.6.6.6",
            "X_Real_IP: 6.6.6.6",
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = Echo(r.json());
    assert_eq!(echo.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echo.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(echo.header_all("x-forwarded-host"), ["f.test"]);
    assert_eq!(echo.header_all("x-real-ip"), ["127.0.0.1"]);
    for (name, values) in echo.headers() {
        let n = normalized(&name);
        if n.starts_with("x-forwarded-") || n == "forwarded" || n == "x-real-ip" {
            assert!(
                [
                    "x-forwarded-for",
                    "x-forwarded-proto",
                    "x-forwarded-host",
                    "x-real-ip"
                ]
                .contains(&name.as_str()),
                "client-sent {name}: {values:?} reached the backend"
            );
        }
        for v in values {
            assert!(
                !v.contains("6.6.6") && !v.contains("7.7.7") && !v.contains("evil"),
                "client-sent value reached the backend: {name}: {v}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_are_stripped_in_every_spelling() {
    let be = Backend::echo().await;
    let gw = Gateway::start(&proxy_route("i.test", &be.url(), "")).await;

    let spoofed = [
        "X-authentik-username: admin",
        "X-Authentik-Username: admin2",
        "X_Authentik_Username: admin3",
        "x.authentik.groups: admins",
        "X-authentik-email: admin@evil.test",
        "X-authentik-name: Admin",
        "X-AUTHENTIK-UID: 0",
        "X-authentik-jwt: evil",
        "X_authentik.meta_provider: evil",
        "X-Forwarded-User: admin",
        "x_forwarded_email: admin@evil.test",
        "X.Forwarded.Preferred-Username: admin",
        "X-Forwarded-Groups: admins",
        "X-Forwarded-Access-Token: evil",
        "X-Auth-Request-User: admin",
        "X_Auth_Request_Email: admin@evil.test",
        "Remote-User: admin",
        "Remote_Groups: admins",
        "X-Remote-User: admin",
        "X-Webauth-User: admin",
    ];
    let mut lines = vec!["GET /me HTTP/1.1", "Host: i.test", "Connection: close"];
    lines.extend(spoofed);
    lines.push("X-Keep: yes");
    let r = raw(gw.http_addr(), &lines, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = Echo(r.json());
    let identity_exact = [
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-preferred-username",
        "x-forwarded-groups",
        "x-forwarded-access-token",
        "remote-user",
        "remote-groups",
        "x-remote-user",
        "x-webauth-user",
    ];
    for (name, values) in echo.headers() {
        let n = normalized(&name);
        assert!(
            !n.starts_with("x-authentik-")
                && !n.starts_with("x-auth-request-")
                && !identity_exact.contains(&n.as_str()),
            "identity header {name}: {values:?} reached the backend"
        );
        for v in values {
            assert!(
                !v.contains("admin") && !v.contains("evil"),
                "spoofed value reached the backend: {name}: {v}"
            );
        }
    }
    assert_eq!(echo.header("x-keep").as_deref(), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_kept_when_sane_generated_otherwise_and_echoed() {
    let be = Backend::echo().await;
    let gw = Gateway::start(&proxy_route("*", &be.url(), "")).await;
    let c = gw.client();
    let is_generated = |id: &str| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());

    // Sane: kept, forwarded once, echoed.
    let sane = "abc-123.XYZ:9_z";
    let r = c.get_with(&gw.url("/"), &[("x-request-id", sane)]).await;
    assert_eq!(r.header("x-request-id"), Some(sane));
    assert_eq!(Echo(r.json()).header_all("x-request-id"), [sane]);

    // Absent, insane or too long: a fresh id, the same one upstream and back.
    let too_long = "a".repeat(129);
    let cases: [Option<&str>; 4] = [None, Some("<script>"), Some("has space"), Some(&too_long)];
    let mut seen = Vec::new();
    for sent in cases {
        let headers: Vec<(&str, &str)> =
            sent.map(|s| vec![("x-request-id", s)]).unwrap_or_default();
        let r = c.get_with(&gw.url("/"), &headers).await;
        let id = r.header("x-request-id").unwrap().to_string();
        assert!(is_generated(&id), "sent {sent:?}, got {id}");
        assert_eq!(Echo(r.json()).header_all("x-request-id"), vec![id.as_str()]);
        seen.push(id);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "generated ids repeat: {seen:?}");

    // Two ids from the client: the backend still sees exactly one.
    let r = raw(
        gw.http_addr(),
        &[
            "GET / HTTP/1.1",
            "Host: x.test",
            "X-Request-Id: first-id",
            "X-Request-Id: second-id",
            "Connection: close",
        ],
        b"",
    )
    .await;
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(Echo(r.json()).header_all("x-request-id"), [id]);

    // Error pages carry the id too (no route here).
    let gw2 = Gateway::start("[[route]]\nhost = \"only.test\"\nrespond = {}\n").await;
    let r = gw2
        .client()
        .get_with(&gw2.url("/"), &[("x-request-id", "err-id-1")])
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-request-id"), Some("err-id-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_host_true_and_false() {
    let be = Backend::echo().await;
    let mut toml = proxy_route("keep.test", &be.url(), "");
    toml += &proxy_route("own.test", &be.url(), "preserve_host = false");
    let gw = Gateway::start(&toml).await;
    let c = gw.client();

    let r = c
        .get_with(&gw.url("/"), &[("host", "Keep.Test:8443")])
        .await;
    assert_eq!(
        Echo(r.json()).header_all("host"),
        ["Keep.Test:8443"],
        "preserve_host = true (default) forwards the client's Host as sent"
    );

    let r = c.get_with(&gw.url("/"), &[("host", "own.test")]).await;
    let echo = Echo(r.json());
    assert_eq!(echo.header_all("host"), [be.addr().to_string()]);
    // The original host is still available to the backend.
    assert_eq!(echo.header_all("x-forwarded-host"), ["own.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_clients_are_served() {
    let be = Backend::echo().await;
    let gw = Gateway::start(&proxy_route("h2.test", &be.url(), "")).await;
    let h2 = TestClient::h2c_to(gw.http_addr());

    let r = h2.get("http://h2.test/x?y=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, http::Version::HTTP_2);
    let echo = Echo(r.json());
    assert_eq!(echo.uri(), "/x?y=1");
    assert_eq!(
        echo.0["version"], "HTTP/1.1",
        "upstreams are spoken to in HTTP/1.1"
    );
    assert_eq!(echo.header_all("host"), ["h2.test"]);
    assert!(r.header("x-request-id").is_some());

    // Bodies stream over h2 too; several streams on one connection.
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let h2 = h2.clone();
        tasks.push(tokio::spawn(async move {
            let n = 100_000 + i * 12_345;
            let r = h2
                .request(Method::PUT, "http://h2.test/put", &[], TestBody::pattern(n))
                .await;
            assert_eq!(r.status, 200);
            let echo = Echo(r.json());
            assert_eq!(echo.body_len(), n);
            assert_eq!(echo.body_sha256(), support::pattern_sha256(n));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Routing still applies: an unknown host is a 404.
    let r = h2.get("http://nope.test/").await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_statuses_and_bodies_pass_through() {
    let be = Backend::echo().await;
    let gw = Gateway::start(&proxy_route("*", &be.url(), "")).await;
    for code in [201u16, 204, 301, 404, 500, 503] {
        let r = gw
            .client()
            .get(&gw.url(&format!("/status?code={code}")))
            .await;
        assert_eq!(r.status.as_u16(), code);
        if code != 204 {
            // The backend's own body, not a gateway error page.
            assert_eq!(Echo(r.json()).uri(), format!("/status?code={code}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_a_502_page_without_internals() {
    let down = Backend::refusing().await;
    let gw = Gateway::start(&proxy_route("down.test", &down.url(), "")).await;
    let c = gw.client();
    let leaks = [
        down.addr().to_string(),
        format!(":{}", down.addr().port()),
        "127.0.0.1".to_string(),
    ];

    let r = c.get_with(&gw.url("/x"), &[("host", "down.test")]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let id = r.header("x-request-id").unwrap();
    let page = r.text();
    assert!(page.contains(id), "{page}");
    for l in &leaks {
        assert!(!page.contains(l.as_str()), "502 page leaks {l}: {page}");
    }

    let r = c
        .get_with(
            &gw.url("/x"),
            &[("host", "down.test"), ("accept", "application/json")],
        )
        .await;
    assert_eq!(r.status, 502);
    let v = r.json();
    assert_eq!(v["status"], 502);
    for l in &leaks {
        assert!(
            !v.to_string().contains(l.as_str()),
            "502 JSON leaks {l}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_upstream_is_a_504_after_the_route_timeout() {
    let hang = Backend::hanging().await;
    let gw = Gateway::start(&proxy_route(
        "hang.test",
        &hang.url(),
        "timeout = \"300ms\"",
    ))
    .await;
    let c = gw.client();
    let leaks = [
        hang.addr().to_string(),
        format!(":{}", hang.addr().port()),
        "127.0.0.1".to_string(),
    ];

    let r = c.get_with(&gw.url("/x"), &[("host", "hang.test")]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    let page = r.text();
    assert!(page.contains(r.header("x-request-id").unwrap()), "{page}");
    for l in &leaks {
        assert!(!page.contains(l.as_str()), "504 page leaks {l}: {page}");
    }
    assert!(hang.served() >= 1, "the gateway never reached the upstream");

    let r = c
        .get_with(
            &gw.url("/x"),
            &[("host", "hang.test"), ("accept", "application/json")],
        )
        .await;
    assert_eq!(r.status, 504);
    let v = r.json();
    assert_eq!(v["status"], 504);
    for l in &leaks {
        assert!(
            !v.to_string().contains(l.as_str()),
            "504 JSON leaks {l}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_uploads_go_through() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let be = Backend::echo().await;
    let gw = Gateway::start(&proxy_route("*", &be.url(), "")).await;
    let body = support::pattern_chunk_at(0, 300_000);

    // Like curl with a large upload: send the head, wait for 100 Continue,
    // then the body.
    let mut s = tokio::net::TcpStream::connect(gw.http_addr())
        .await
        .unwrap();
    let head = format!(
        "PUT /upload HTTP/1.1\r\nHost: e.test\r\nExpect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut interim = Vec::new();
    support::within("100 Continue", Duration::from_secs(10), async {
        let mut b = [0u8; 1];
        while !interim.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).await.unwrap(), 1, "connection closed");
            interim.push(b[0]);
        }
    })
    .await;
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    s.write_all(&body).await.unwrap();
    let r = support::client::read_response(&mut s).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = Echo(r.json());
    assert_eq!(echo.body_len(), body.len() as u64);
    assert_eq!(
        echo.body_sha256(),
        support::hex(ring::digest::digest(&ring::digest::SHA256, &body).as_ref())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_upstreams_are_used_round_robin() {
    let (a, b, c) = (
        Backend::echo().await,
        Backend::echo().await,
        Backend::echo().await,
    );
    let upstreams = format!("[\"{}\", \"{}\", \"{}\"]", a.url(), b.url(), c.url());
    let gw = Gateway::start(&format!(
        "[[route]]\nhost = \"*\"\nupstream = {upstreams}\n"
    ))
    .await;
    let mut order = Vec::new();
    for _ in 0..9 {
        let r = gw.client().get(&gw.url("/rr")).await;
        assert_eq!(r.status, 200);
        order.push(Echo(r.json()).backend().to_string());
    }
    assert_eq!((a.served(), b.served(), c.served()), (3, 3, 3), "{order:?}");
    // Strict rotation: each window of three hits every backend once.
    for w in order.chunks(3) {
        let mut w = w.to_vec();
        w.sort();
        w.dedup();
        assert_eq!(w.len(), 3, "{order:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_extend_the_chain_but_never_pass_identity() {
    let be = Backend::echo().await;
    let toml = format!(
        "[server]\nhttp = \"{{{{HTTP}}}}\"\nadmin = \"{{{{ADMIN}}}}\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n{}",
        proxy_route("*", &be.url(), "")
    );
    let gw = Gateway::start(&toml).await;
    let r = raw(
        gw.http_addr(),
        &[
            "GET /t HTTP/1.1",
            "Host: inner.test",
            "Connection: close",
            "X-Forwarded-For: 203.0.113.9",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: public.example.com",
            "X-Forwarded-User: admin",
            "X_Authentik_Username: admin",
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = Echo(r.json());
    assert_eq!(
        echo.header_all("x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(echo.header_all("x-forwarded-proto"), ["https"]);
    assert_eq!(echo.header_all("x-forwarded-host"), ["public.example.com"]);
    assert_eq!(echo.header_all("x-real-ip"), ["203.0.113.9"]);
    assert!(echo.header_all("x-forwarded-user").is_empty());
    assert!(echo.header_all("x_authentik_username").is_empty());
}

/// Backends get the request target in origin form (`/path?query`), as
/// nginx sends it, never `GET http://backend:port/path` (absolute form,
/// meant for proxies, which some frameworks mishandle).
#[tokio::test]
async fn backends_get_origin_form_request_targets() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let backend = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed before sending a request");
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        String::from_utf8(head).unwrap()
    });
    let gw = Gateway::start(&proxy_route("o.test", &upstream, "")).await;
    let r = gw.client().get("http://o.test/x/y?z=1").await;
    assert_eq!(r.status, StatusCode::OK);
    let head = backend.await.unwrap();
    let line = head.lines().next().unwrap();
    assert_eq!(line, "GET /x/y?z=1 HTTP/1.1", "request line sent: {head}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nhost: o.test\r\n"),
        "{head}"
    );
}
