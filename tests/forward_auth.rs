//! The forward-auth endpoint behind a real nginx `auth_request`, and the
//! same path decisions on every entry point: what the gateway would
//! refuse or protect on the request path, forward-auth must not allow.

mod support;

use http::{Method, StatusCode};
use serde_json::json;

use support::backend::{Backend, Echo};
use support::client::{RawResponse, raw};
use support::gateway::Gateway;
use support::idp::{CLIENT_SECRET, Idp, query_of};
use support::nginx::Nginx;

/// A provider, a recording backend, the gateway (trusting 127.0.0.1 as a
/// proxy) with a public `/` and a protected `/private` plus `extra`
/// routes (`{up}` in them is the backend), and nginx asking the gateway
/// about every request.
struct Env {
    idp: Idp,
    backend: Backend,
    gw: Gateway,
    nginx: Nginx,
}

impl Env {
    async fn start(extra: &str) -> Env {
        let idp = Idp::start().await;
        let backend = Backend::echo().await;
        let toml = format!(
            r#"
[server]
http = "{{{{HTTP}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"
trusted_proxies = ["127.0.0.1/32"]

[oidc.authentik]
issuer = "{issuer}"
client_id = "portcullis"
client_secret_file = "secret"
insecure_cookies = true

[[route]]
host = "*"
upstream = "{up}"

[[route]]
host = "*"
path = "/private"
upstream = "{up}"
auth = {{ oidc = "authentik" }}
{extra}
"#,
            issuer = idp.issuer(),
            up = backend.url(),
            extra = extra.replace("{up}", &backend.url()),
        );
        let gw = Gateway::builder(&toml)
            .file("secret", CLIENT_SECRET)
            .start()
            .await;
        let nginx = Nginx::auth_request(gw.http_addr(), backend.addr())
            .start()
            .await;
        Env {
            idp,
            backend,
            gw,
            nginx,
        }
    }

    /// `GET {path}` through nginx, written on the wire exactly as given.
    async fn via_nginx(&self, path: &str, extra: &[&str]) -> RawResponse {
        let line = format!("GET {path} HTTP/1.1");
        let mut head = vec![line.as_str(), "Host: app.test", "Connection: close"];
        head.extend_from_slice(extra);
        raw(self.nginx.addr(), &head, b"").await
    }

    /// `GET {path}` straight to the gateway (the request path).
    async fn direct(&self, path: &str) -> RawResponse {
        raw(
            self.gw.http_addr(),
            &[
                &format!("GET {path} HTTP/1.1"),
                "Host: app.test",
                "Connection: close",
            ],
            b"",
        )
        .await
    }

    /// `/.portcullis/auth` called the way nginx calls it for `{path}`.
    async fn forward_auth(&self, path: &str) -> RawResponse {
        raw(
            self.gw.http_addr(),
            &[
                "GET /.portcullis/auth HTTP/1.1",
                "Host: app.test",
                &format!("X-Original-URI: {path}"),
                "X-Forwarded-Host: app.test",
                "Connection: close",
            ],
            b"",
        )
        .await
    }

    /// Asserts `path` sent through nginx does not reach the backend, and
    /// answers `want`.
    async fn refused(&self, path: &str, want: u16) {
        let before = self.backend.served();
        let r = self.via_nginx(path, &[]).await;
        assert_eq!(
            r.status,
            want,
            "{path} through nginx: {}\n{}",
            r.text(),
            self.nginx.error_log()
        );
        assert_eq!(
            self.backend.served(),
            before,
            "{path} reached the backend without a login"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_judges_the_path_the_backend_gets() {
    let env = Env::start("").await;

    // Controls: nginx, the check and the backend work together.
    let r = env.via_nginx("/public/x", &[]).await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), env.nginx.error_log());
    assert_eq!(Echo(r.json()).uri(), "/public/x");
    env.refused("/private/secret", 401).await;
    let token = env.idp.mint(json!({"user": "alice"})).await;
    let bearer = format!("Authorization: Bearer {token}");
    let r = env.via_nginx("/private/secret", &[&bearer]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(Echo(r.json()).uri(), "/private/secret");

    // Spellings of /private/secret once normalised: judged as /private
    // (401), never as the public / route.
    for path in [
        "/public/../private/secret",
        "/public/%2e%2e/private/secret",
        "//private/secret",
        "/./private/secret",
        "/%70rivate/secret",
        "/priv%61te/secret",
    ] {
        env.refused(path, 401).await;
    }
    // Refused by the gateway with 400, which nginx's auth_request turns
    // into a 500: an encoded separator, and segments a lenient backend
    // reads as /private (servlet ;params, Windows trailing dots/spaces).
    for path in [
        "/public%2F..%2Fprivate/secret",
        "/private;x/secret",
        "/private;jsessionid=1/secret",
        "/private%3Bx/secret",
        "/private./secret",
        "/private%20/secret",
    ] {
        env.refused(path, 500).await;
    }
    // Raw non-ASCII (not visible ASCII in a header value) is read as the
    // request line would be, never taken for `/`.
    env.refused("/private/caf\u{e9}", 401).await;
    // Ordinary parameters and dots further down stay allowed.
    let r = env.via_nginx("/public/a;b/c.", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(Echo(r.json()).uri(), "/public/a;b/c.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_decides_like_the_request_path() {
    let env = Env::start("").await;
    // (path, the request path's answer for a non-browser client)
    let cases = [
        ("/public/x", 200),
        ("/private/secret", 401),
        ("/public/../private/secret", 401),
        ("//private/secret", 401),
        ("/%70rivate/secret", 401),
        ("/private;x/secret", 400),
        ("/private%3bx/secret", 400),
        ("/private./secret", 400),
        ("/private%20/secret", 400),
        ("/public%2Fx", 400),
        ("/a%5Cb", 400),
        ("/a%00b", 400),
        ("/a%zz", 400),
        ("/public/x;y", 200),
        ("/private/caf\u{e9}", 401),
        ("/public/caf\u{e9}", 200),
    ];
    for (path, want) in cases {
        let direct = env.direct(path).await;
        assert_eq!(
            direct.status,
            want,
            "request path {path}: {}",
            direct.text()
        );
        let fa = env.forward_auth(path).await;
        assert_eq!(fa.status, want, "forward-auth {path}: {}", fa.text());
    }
    // A forwarded URI the request line could not carry is refused too.
    for bad in ["not a path", "/private secret", "*"] {
        let r = env.forward_auth(bad).await;
        assert_eq!(r.status, 400, "forward-auth {bad:?}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_honours_per_route_path_options() {
    let env = Env::start(
        r#"
[[route]]
host = "*"
path = "/admin"
case_insensitive_path = true
upstream = "{up}"
auth = { oidc = "authentik" }

[[route]]
host = "*"
path = "/shop"
matrix_params = true
upstream = "{up}"
auth = { oidc = "authentik" }
"#,
    )
    .await;
    // Case-insensitive backends serve /ADMIN/x as /admin/x: so does the gate.
    for path in ["/ADMIN/x", "/Admin", "/aDmIn/x?y=1", "/%41DMIN/x"] {
        env.refused(path, 401).await;
    }
    // Apps using matrix parameters: the route keeps its requests.
    for path in ["/shop;region=eu/items", "/shop%3Bregion=eu"] {
        env.refused(path, 401).await;
    }
    // Without the option, case still matters (the documented default).
    let r = env.via_nginx("/PRIVATE/secret", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The options are shown in GET /routes.
    let routes = env
        .gw
        .client()
        .get(&env.gw.admin_url("/routes"))
        .await
        .json();
    let by_path = |p: &str| {
        routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"] == p)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_path("/admin")["case_insensitive_path"], true);
    assert_eq!(by_path("/admin")["matrix_params"], false);
    assert_eq!(by_path("/shop")["matrix_params"], true);
    assert_eq!(by_path("/private")["case_insensitive_path"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_reads_the_proxied_request() {
    let env = Env::start("").await;
    let port = env.gw.http_addr().port();
    let ask = |headers: Vec<(&'static str, String)>| {
        let c = env.gw.client();
        let url = format!("http://portcullis.internal:{port}/.portcullis/auth");
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.request(Method::GET, &url, &h, ()).await
        }
    };
    let browser = |extra: &[(&'static str, &str)]| {
        let mut h = vec![
            ("accept", "text/html".to_string()),
            ("x-forwarded-host", format!("app.test:{port}")),
            ("x-forwarded-uri", "/private/form?step=2".to_string()),
        ];
        h.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        h
    };

    // A browser's GET is sent to the login...
    let r = ask(browser(&[("x-forwarded-method", "GET")])).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    // ...a proxied POST gets 401, so the form body is not lost in a redirect.
    for m in [("x-forwarded-method", "POST"), ("x-original-method", "PUT")] {
        let r = ask(browser(&[m])).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{m:?}: {}", r.text());
        assert!(r.header("location").is_none());
    }

    // `X-Forwarded-Proto` from chained proxies: the leftmost entry counts.
    let redirect_uri = |r: &support::client::Resp| {
        let loc = r.header("location").expect("a login redirect").to_string();
        query_of(&loc)
            .into_iter()
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v)
            .expect("redirect_uri in the login URL")
    };
    let r = ask(browser(&[("x-forwarded-proto", "https, http")])).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    assert_eq!(
        redirect_uri(&r),
        format!("https://app.test:{port}/.portcullis/callback")
    );
    let r = ask(browser(&[("x-forwarded-proto", "http,https")])).await;
    assert_eq!(
        redirect_uri(&r),
        format!("http://app.test:{port}/.portcullis/callback")
    );

    // `X-Forwarded-Host` is normalised before it goes into redirect_uri.
    let mut h = browser(&[]);
    h[1].1 = format!("App.TEST.:{port}");
    let r = ask(h).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    assert_eq!(
        redirect_uri(&r),
        format!("http://app.test:{port}/.portcullis/callback")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_fails_closed_when_the_proxy_does_not_say_what_it_asks() {
    let env = Env::start("").await;
    let ask = |lines: &[&str]| {
        let mut head = vec!["GET /.portcullis/auth HTTP/1.1", "Host: app.test"];
        head.extend_from_slice(lines);
        head.push("Connection: close");
        let head: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        let addr = env.gw.http_addr();
        async move {
            let h: Vec<&str> = head.iter().map(String::as_str).collect();
            raw(addr, &h, b"").await
        }
    };
    // A trusted proxy that names no URI (an nginx snippet without
    // X-Original-URI) would have every path judged as `/`, which is public
    // here: refused instead, and the reason says what is missing.
    let r = ask(&["X-Forwarded-Host: app.test"]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("X-Forwarded-Uri"), "{}", r.text());

    // Authentik's own nginx snippets send the whole URL as X-Original-URL:
    // its path (and host) decide like X-Original-URI's.
    let r = ask(&["X-Original-URL: http://app.test/private/secret"]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = ask(&["X-Original-URL: http://app.test/public/../private/secret"]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = ask(&["X-Original-URL: http://app.test/public/page"]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A browser asking through such a proxy is sent to the login and comes
    // back to the URL's host.
    let r = ask(&[
        "X-Original-URL: http://app.test/private/secret",
        "Accept: text/html",
    ])
    .await;
    assert_eq!(r.status, 302, "{}", r.text());
    let loc = r.header("location").expect("a login redirect");
    assert!(loc.starts_with(env.idp.issuer()), "{loc}");
    let redirect_uri = query_of(loc)
        .into_iter()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v)
        .expect("redirect_uri");
    assert!(
        redirect_uri.starts_with("http://app.test/"),
        "{redirect_uri}"
    );
}

/// A route's `allow_ips` and `deny_ips` hold for the requests another
/// proxy asks about, as for the ones we proxy: the client it names in
/// `X-Forwarded-For` is judged (the right-most untrusted address), and a
/// proxy that names none is judged itself, so a route open only to client
/// addresses refuses rather than trusting the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_applies_the_routes_address_rules() {
    let env = Env::start(
        "[[route]]\nhost = \"*\"\npath = \"/office\"\nupstream = \"{up}\"\nallow_ips = [\"10.20.0.0/16\"]\n\n\
         [[route]]\nhost = \"*\"\npath = \"/open\"\nupstream = \"{up}\"\ndeny_ips = [\"127.0.0.1/32\"]\n",
    )
    .await;
    // Through nginx, whose client is 127.0.0.1: outside the office range,
    // and denied on /open; the backend sees neither.
    env.refused("/office", 403).await;
    env.refused("/open", 403).await;
    assert_eq!(env.via_nginx("/", &[]).await.status, 200);

    let ask = |path: &'static str, forwarded_for: Option<&'static str>| {
        let addr = env.gw.http_addr();
        async move {
            let uri = format!("X-Original-URI: {path}");
            let xff = forwarded_for.map(|f| format!("X-Forwarded-For: {f}"));
            let mut head = vec!["GET /.portcullis/auth HTTP/1.1", "Host: app.test"];
            head.push(&uri);
            head.push("X-Forwarded-Host: app.test");
            if let Some(x) = &xff {
                head.push(x);
            }
            head.push("Connection: close");
            raw(addr, &head, b"").await.status
        }
    };
    assert_eq!(ask("/office", Some("10.20.3.4")).await, 200);
    assert_eq!(ask("/office", Some("192.0.2.1")).await, 403);
    // An office address claimed behind an untrusted hop is not believed.
    assert_eq!(ask("/office", Some("10.20.3.4, 192.0.2.1")).await, 403);
    assert_eq!(
        ask("/office", None).await,
        403,
        "the proxy itself is judged"
    );
    assert_eq!(ask("/open", Some("192.0.2.1")).await, 200);
    assert_eq!(ask("/open", None).await, 403);
}
