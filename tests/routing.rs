//! Routing through the live gateway: host precedence and normalisation,
//! segment-aware longest prefix, strip_prefix, redirect and respond routes,
//! the 404 page, the reserved prefix, and invalid Host headers.

mod support;

use http::Method;
use support::backend::{Backend, Echo};
use support::client::{TestBody, raw};
use support::gateway::Gateway;

/// A `respond` route answering with its own name.
fn respond_route(host: &str, path: &str, name: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\nhost = \"{host}\"\npath = \"{path}\"\nrespond = {{ body = \"{name}\" }}\n\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_host_beats_wildcard_beats_any() {
    let mut toml = String::new();
    toml += &respond_route("*", "/", "any");
    toml += &respond_route("*.example.com", "/", "wild");
    toml += &respond_route("*.b.example.com", "/", "wild-b");
    toml += &respond_route("a.example.com", "/", "exact-a");
    toml += &respond_route("x.example.com", "/only", "exact-x-only");
    let gw = Gateway::start(&toml).await;

    let cases = [
        ("a.example.com", "/", "exact-a"),
        ("z.example.com", "/", "wild"),
        ("deep.z.example.com", "/", "wild"),
        ("c.b.example.com", "/", "wild-b"),
        ("b.example.com", "/", "wild"),
        ("example.com", "/", "any"),
        ("other.org", "/", "any"),
        ("127.0.0.1", "/", "any"),
        // The exact host routes only /only: other paths fall through to the wildcard.
        ("x.example.com", "/else", "wild"),
        ("x.example.com", "/only/y", "exact-x-only"),
        // Host matching ignores case, a trailing dot and the port.
        ("A.Example.COM", "/", "exact-a"),
        ("a.example.com.", "/", "exact-a"),
        ("a.example.com:8080", "/", "exact-a"),
        ("A.EXAMPLE.COM.:443", "/", "exact-a"),
        ("Z.EXAMPLE.com:1", "/", "wild"),
    ];
    for (host, path, want) in cases {
        let r = gw.client().get_with(&gw.url(path), &[("host", host)]).await;
        assert_eq!(r.status, 200, "{host}{path}: {}", r.text());
        assert_eq!(r.text(), want, "Host: {host}, path {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_segment_aware_prefix_wins() {
    let mut toml = String::new();
    toml += &respond_route("p.test", "/", "root");
    toml += &respond_route("p.test", "/foo", "foo");
    toml += &respond_route("p.test", "/foo/bar", "foo-bar");
    toml += &respond_route("p.test", "/api/", "api");
    toml += &respond_route("q.test", "/foo", "q-foo");
    let gw = Gateway::start(&toml).await;

    let cases = [
        ("p.test", "/", Some("root")),
        ("p.test", "/foo", Some("foo")),
        ("p.test", "/foo/", Some("foo")),
        ("p.test", "/foo/x", Some("foo")),
        ("p.test", "/foo?x=1", Some("foo")),
        ("p.test", "/foobar", Some("root")),
        ("p.test", "/fo", Some("root")),
        ("p.test", "/foo/bar", Some("foo-bar")),
        ("p.test", "/foo/bar/baz", Some("foo-bar")),
        ("p.test", "/foo/barn", Some("foo")),
        ("p.test", "/api", Some("api")),
        ("p.test", "/api/v1", Some("api")),
        ("p.test", "/apix", Some("root")),
        ("q.test", "/foo/1", Some("q-foo")),
        ("q.test", "/foobar", None),
        ("q.test", "/", None),
    ];
    for (host, path, want) in cases {
        let r = gw.client().get_with(&gw.url(path), &[("host", host)]).await;
        match want {
            Some(body) => {
                assert_eq!(r.status, 200, "{host}{path}: {}", r.text());
                assert_eq!(r.text(), body, "{host}{path}");
            }
            None => assert_eq!(r.status, 404, "{host}{path}: {}", r.text()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_and_upstream_base_path() {
    let be = Backend::echo().await;
    let u = be.url();
    let toml = format!(
        r#"
[[route]]
host = "s.test"
path = "/app"
upstream = "{u}"
strip_prefix = true

[[route]]
host = "s.test"
path = "/keep"
upstream = "{u}"

[[route]]
host = "s.test"
path = "/based"
upstream = "{u}/base/"
strip_prefix = true

[[route]]
host = "s.test"
path = "/nostrip"
upstream = "{u}/base"
"#
    );
    let gw = Gateway::start(&toml).await;
    let cases = [
        ("/app/x?q=1", "/x?q=1"),
        ("/app/a/b/", "/a/b/"),
        ("/app", "/"),
        ("/app?q", "/?q"),
        ("/app/", "/"),
        ("/keep/x?y=2", "/keep/x?y=2"),
        ("/keep", "/keep"),
        ("/based/y", "/base/y"),
        ("/based", "/base/"),
        ("/nostrip/z?k=v", "/base/nostrip/z?k=v"),
    ];
    for (path, want) in cases {
        let r = gw
            .client()
            .get_with(&gw.url(path), &[("host", "s.test")])
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(Echo(r.json()).uri(), want, "request {path}");
    }
    assert_eq!(be.served(), cases.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_routes() {
    let toml = r#"
[[route]]
host = "r.test"
path = "/old"
redirect = "https://new.test"

[[route]]
host = "r.test"
path = "/fixed"
redirect = { to = "https://new.test/landing", keep_path = false }

[[route]]
host = "r.test"
path = "/temp"
redirect = { to = "https://t.test/base/", status = 302 }

[[route]]
host = "r.test"
path = "/moved"
redirect = { to = "/elsewhere", status = 301, keep_path = false }

[[route]]
host = "r.test"
path = "/see"
redirect = { to = "https://s.test", status = 303 }

[[route]]
host = "r.test"
path = "/tmp7"
redirect = { to = "https://s.test", status = 307 }
"#;
    let gw = Gateway::start(toml).await;
    let cases = [
        (
            "/old/page?x=1&y=2",
            308,
            "https://new.test/old/page?x=1&y=2",
        ),
        ("/old", 308, "https://new.test/old"),
        ("/fixed/deep/path?q=1", 308, "https://new.test/landing"),
        ("/temp/a?b", 302, "https://t.test/base/temp/a?b"),
        ("/moved/x", 301, "/elsewhere"),
        ("/see", 303, "https://s.test/see"),
        ("/tmp7/x", 307, "https://s.test/tmp7/x"),
    ];
    for (path, status, location) in cases {
        // POST too: a redirect route answers every method the same way.
        for method in [Method::GET, Method::POST] {
            let r = gw
                .client()
                .request(
                    method.clone(),
                    &gw.url(path),
                    &[("host", "r.test")],
                    TestBody::from("ignored"),
                )
                .await;
            assert_eq!(r.status, status, "{method} {path}");
            assert_eq!(r.header("location"), Some(location), "{method} {path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_routes() {
    let toml = r#"
[[route]]
host = "t.test"
path = "/teapot"
respond = { status = 418, body = "short and stout", content_type = "text/x-teapot" }

[[route]]
host = "t.test"
path = "/empty"
respond = {}

[[route]]
host = "t.test"
path = "/json"
respond = { status = 503, body = '{"maintenance":true}', content_type = "application/json" }
"#;
    let gw = Gateway::start(toml).await;
    let c = gw.client();

    let r = c
        .get_with(&gw.url("/teapot/x"), &[("host", "t.test")])
        .await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "short and stout");
    assert_eq!(r.header("content-type"), Some("text/x-teapot"));
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));

    let r = c.get_with(&gw.url("/empty"), &[("host", "t.test")]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "{:?}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));

    let r = c.get_with(&gw.url("/json"), &[("host", "t.test")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["maintenance"], true);
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_a_404_page_with_the_request_id() {
    let gw = Gateway::start(&respond_route("a.test", "/app", "app")).await;
    let c = gw.client();

    // HTML by default, with the request id from the response header.
    for (host, path) in [("b.test", "/"), ("a.test", "/"), ("a.test", "/application")] {
        let r = c.get_with(&gw.url(path), &[("host", host)]).await;
        assert_eq!(r.status, 404, "{host}{path}");
        assert!(
            r.header("content-type").unwrap().starts_with("text/html"),
            "{:?}",
            r.headers
        );
        let id = r.header("x-request-id").expect("x-request-id").to_string();
        assert_eq!(id.len(), 32, "generated id {id}");
        let page = r.text();
        assert!(page.contains("404"), "{page}");
        assert!(page.contains(&id), "page lacks request id {id}: {page}");
    }

    // A client-chosen sane id is the one shown.
    let r = c
        .get_with(
            &gw.url("/nowhere"),
            &[("host", "b.test"), ("x-request-id", "trace-42.a_b:c")],
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-request-id"), Some("trace-42.a_b:c"));
    assert!(r.text().contains("trace-42.a_b:c"));

    // JSON when asked for.
    let r = c
        .get_with(
            &gw.url("/nowhere"),
            &[("host", "b.test"), ("accept", "application/json")],
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["status"], 404);
    assert_eq!(v["request_id"].as_str(), r.header("x-request-id"), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_prefix_is_never_forwarded() {
    let be = Backend::echo().await;
    let gw = Gateway::start(&format!(
        "[[route]]\nhost = \"*\"\nupstream = \"{}\"\n",
        be.url()
    ))
    .await;
    // Spellings that mean the reserved prefix once the path is normalised
    // (merged slashes, dot segments, decoded unreserved escapes).
    let reserved = [
        "/.portcullis",
        "/.portcullis/",
        "/.portcullis/callback?code=x",
        "/.portcullis/logout",
        "//.portcullis/x",
        "/a/../.portcullis/x",
        "/./.portcullis/x",
        "/%2Eportcullis/x",
        "/%2eportcullis",
    ];
    for path in reserved {
        for host in ["any.test", "other.example.com"] {
            let r = raw(
                gw.http_addr(),
                &[
                    &format!("GET {path} HTTP/1.1"),
                    &format!("Host: {host}"),
                    "Connection: close",
                ],
                b"",
            )
            .await;
            assert_eq!(r.status, 404, "{host}{path}: {}", r.text());
        }
    }
    // Any method, with a body.
    let r = raw(
        gw.http_addr(),
        &[
            "POST /.portcullis/forward-auth HTTP/1.1",
            "Host: any.test",
            "Connection: close",
        ],
        b"x=1",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(be.served(), 0, "a reserved path reached the backend");

    // The prefix is segment-aware: a look-alike path is an ordinary one.
    let r = gw.client().get(&gw.url("/.portcullisx/y")).await;
    assert_eq!(r.status, 200);
    assert_eq!(Echo(r.json()).uri(), "/.portcullisx/y");
    assert_eq!(be.served(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_routing_and_forwarding() {
    let be = Backend::echo().await;
    let gw = Gateway::start(&format!(
        "[[route]]\nhost = \"*\"\nupstream = \"{}\"\n\n{}",
        be.url(),
        respond_route("*", "/admin", "admin-only")
    ))
    .await;
    // (request path, Ok(what the backend sees) | Err(body of the admin route) )
    let routed: [(&str, Result<&str, &str>); 12] = [
        ("/x/../admin", Err("admin-only")),
        ("//admin", Err("admin-only")),
        ("/%61dmin", Err("admin-only")),
        ("/./admin/", Err("admin-only")),
        ("/%2e%2e/admin", Err("admin-only")),
        ("/../admin/x", Err("admin-only")),
        ("/admin/../x", Ok("/x")),
        ("/a//b/./c/../d?q=1", Ok("/a/b/d?q=1")),
        ("/%7euser", Ok("/~user")),
        ("/caf%c3%a9", Ok("/caf%C3%A9")),
        ("/a%20b", Ok("/a%20b")),
        ("/plain/path?x=../y", Ok("/plain/path?x=../y")),
    ];
    for (path, want) in routed {
        let r = raw(
            gw.http_addr(),
            &[
                &format!("GET {path} HTTP/1.1"),
                "Host: n.test",
                "Connection: close",
            ],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        match want {
            Ok(uri) => assert_eq!(Echo(r.json()).uri(), uri, "{path}"),
            Err(body) => assert_eq!(r.text(), body, "{path}"),
        }
    }
    let served = be.served();
    // Encodings a backend could read as a separator are refused.
    for path in [
        "/%2fadmin",
        "/admin%2Fx",
        "/a%5Cadmin",
        "/%00",
        "/%zz",
        "/a%2",
    ] {
        let r = raw(
            gw.http_addr(),
            &[
                &format!("GET {path} HTTP/1.1"),
                "Host: n.test",
                "Connection: close",
            ],
            b"",
        )
        .await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }
    assert_eq!(be.served(), served, "a refused path reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_params_dots_and_case_never_leave_a_prefix() {
    let mut toml = String::new();
    toml += &respond_route("*", "/", "root");
    toml += &respond_route("*", "/private", "private");
    toml += &respond_route("*", "/admin", "admin");
    toml += "case_insensitive_path = true\n\n";
    toml += &respond_route("*", "/shop", "shop");
    toml += "matrix_params = true\n\n";
    let gw = Gateway::start(&toml).await;
    // (path, Some(route that answers) | None for 400)
    let cases = [
        ("/private/x", Some("private")),
        ("/private/x;jsessionid=1", Some("private")),
        ("/private/a./b%20", Some("private")),
        ("/root;x/y.", Some("root")),
        ("/private;x/y", None),
        ("/private%3bx/y", None),
        ("/private./y", None),
        ("/private%2E/y", None),
        ("/private%20/y", None),
        ("/private.%20./y", None),
        ("/;x/private/y", None),
        // Letter case counts unless the route says otherwise.
        ("/PRIVATE/y", Some("root")),
        ("/ADMIN/y", Some("admin")),
        ("/aDmin", Some("admin")),
        ("/%41dmin/y", Some("admin")),
        ("/ADMIN;x/y", None),
        // A route using matrix parameters keeps them.
        ("/shop;region=eu/items", Some("shop")),
        ("/shop%3Bregion=eu", Some("shop")),
        ("/shop./items", None),
    ];
    for (path, want) in cases {
        let r = raw(
            gw.http_addr(),
            &[
                &format!("GET {path} HTTP/1.1"),
                "Host: s.test",
                "Connection: close",
            ],
            b"",
        )
        .await;
        match want {
            Some(body) => {
                assert_eq!(r.status, 200, "{path}: {}", r.text());
                assert_eq!(r.text(), body, "{path}");
            }
            None => assert_eq!(r.status, 400, "{path}: {}", r.text()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_host_is_a_400() {
    let be = Backend::echo().await;
    let gw = Gateway::start(&format!(
        "[[route]]\nhost = \"*\"\nupstream = \"{}\"\n",
        be.url()
    ))
    .await;
    let bad_hosts = [
        "Host: bad host",
        "Host: a/b",
        "Host: example.com:http",
        "Host: exa<mple>.com",
        "Host: [::1",
    ];
    for host in bad_hosts {
        let r = raw(
            gw.http_addr(),
            &["GET / HTTP/1.1", host, "Connection: close"],
            b"",
        )
        .await;
        assert_eq!(r.status, 400, "{host}: {}", r.text());
        let id = r.header("x-request-id").expect("x-request-id").to_string();
        assert!(r.text().contains(&id), "{host}: page lacks request id");
    }
    // No Host at all, and two different hosts in one request.
    let r = raw(
        gw.http_addr(),
        &["GET / HTTP/1.1", "Connection: close"],
        b"",
    )
    .await;
    assert_eq!(r.status, 400, "missing Host: {}", r.text());
    let r = raw(
        gw.http_addr(),
        &[
            "GET http://a.test/ HTTP/1.1",
            "Host: b.test",
            "Connection: close",
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 400, "conflicting hosts: {}", r.text());
    // JSON error when asked for.
    let r = raw(
        gw.http_addr(),
        &[
            "GET / HTTP/1.1",
            "Host: bad host",
            "Accept: application/json",
            "Connection: close",
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["status"], 400);
    assert_eq!(be.served(), 0, "a bad request reached the backend");
}
