//! Single sign-on through the real gateway, the real OIDC test provider
//! (tests/peers/oidc, shaped like Authentik) and a real echo backend: the
//! browser flow, policies, identity headers, spoofing, cookies, callback
//! attacks and logout. Tokens (bearer, back-channel logout) and
//! forward-auth are in `sso_tokens.rs`; restarts, refresh and failures in
//! `sso_resilience.rs` (which also checks the HTTPS cookie flags).
//!
//! Plain HTTP with `insecure_cookies = true` (cookie `portcullis_session`).

mod support;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use support::backend::Echo;
use support::client::raw;
use support::gateway::Gateway;
use support::idp::{
    CLIENT_SECRET as SECRET, PLAIN_COOKIE as COOKIE, SsoEnv as Env, SsoOpts as Opts, Step,
    query_of, with_query_param,
};

#[tokio::test]
async fn login_reaches_the_backend_with_identity_headers() {
    let env = Env::start(Opts::default()).await;
    let mut b = env.browser();

    let r = b.get(&env.url("app.localtest", "/some/page?x=1&y=2")).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    let to_idp = r.header("location").unwrap().to_string();
    assert!(
        to_idp.starts_with(&format!("{}auth?", env.idp.issuer())),
        "{to_idp}"
    );
    let q: std::collections::HashMap<String, String> = query_of(&to_idp).into_iter().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "portcullis");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(q["state"].len() >= 20 && q["nonce"].len() >= 20, "{q:?}");
    assert_eq!(
        q["redirect_uri"],
        env.url("app.localtest", "/.portcullis/callback")
    );
    for s in ["openid", "email", "profile", "offline_access"] {
        assert!(q["scope"].split(' ').any(|x| x == s), "{q:?}");
    }
    assert!(!to_idp.contains("some/page"), "return-to stays server-side");

    let r = b.login(&to_idp, "alice").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let echo = Echo(r.json());
    assert_eq!(echo.uri(), "/some/page?x=1&y=2");
    assert_eq!(
        echo.header("x-authentik-username").as_deref(),
        Some("alice")
    );
    assert_eq!(
        echo.header("x-authentik-groups").as_deref(),
        Some("admins|users")
    );
    assert_eq!(
        echo.header("x-authentik-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        echo.header("x-authentik-name").as_deref(),
        Some("Alice Admin")
    );
    let uid = echo.header("x-authentik-uid").unwrap();
    assert_eq!(uid.len(), 64, "Authentik-style hashed id: {uid}");
    for c in echo.header_all("cookie") {
        assert!(!c.contains("portcullis"), "our cookie leaked: {c}");
    }
    assert!(b.cookie("app.localtest", COOKIE).is_some());

    // The session carries the next requests; the provider is not asked again.
    assert_eq!(env.idp.grant_count("authorization_code").await, 1);
    let r = b.get(&env.url("app.localtest", "/again")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(Echo(r.json()).uri(), "/again");
    assert_eq!(env.idp.grant_count("authorization_code").await, 1);

    // The other header styles.
    let r = b.login(&env.url("fwd.localtest", "/"), "alice").await;
    let echo = Echo(r.json());
    assert_eq!(echo.header("x-forwarded-user").as_deref(), Some("alice"));
    assert_eq!(
        echo.header("x-forwarded-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        echo.header("x-forwarded-preferred-username").as_deref(),
        Some("alice")
    );
    assert_eq!(
        echo.header("x-forwarded-groups").as_deref(),
        Some("admins,users")
    );
    assert_eq!(echo.header("x-authentik-username"), None);

    let r = b.login(&env.url("none.localtest", "/"), "alice").await;
    let echo = Echo(r.json());
    for name in echo.header_names() {
        assert!(
            !name.starts_with("x-authentik") && !name.starts_with("x-forwarded-user"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn policies_allow_and_deny_by_group_email_and_domain() {
    let env = Env::start(Opts::default()).await;
    let cases = [
        ("admins.localtest", "alice", true),
        ("admins.localtest", "bob", false),
        ("bob.localtest", "bob", true),
        ("bob.localtest", "alice", false),
        ("domain.localtest", "alice", true),
        ("domain.localtest", "bob", false),
    ];
    for (host, user, allowed) in cases {
        let mut b = env.browser();
        let r = b.login(&env.url(host, "/x"), user).await;
        if allowed {
            assert_eq!(r.status, StatusCode::OK, "{user}@{host}: {}", r.text());
            assert_eq!(
                Echo(r.json()).header("x-authentik-username").as_deref(),
                Some(user)
            );
        } else {
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{user}@{host}");
            let page = r.text();
            assert!(page.contains(&format!("signed in as {user}")), "{page}");
            assert!(!page.contains("eyJ"), "no token on the page: {page}");
            assert!(!page.contains(SECRET));
            assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        }
    }
    // JSON clients get JSON.
    // (A browser would not send this host-only cookie to another host, but
    // the gateway judges whatever it receives.)
    let (b, _) = env.signed_in("bob", "app.localtest").await;
    let session = b.cookie("app.localtest", COOKIE).unwrap();
    let r = env.with_session("admins.localtest", "/", &session).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("bob"));
    assert_eq!(env.backend.served(), 4);

    // The outcomes show up in the metrics.
    let text = support::client::TestClient::to(env.gw.admin_addr())
        .get(&env.gw.admin_url("/metrics"))
        .await
        .text();
    let value = |event: &str| -> u64 {
        let key = format!("portcullis_auth_events_total{{event=\"{event}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("{key} missing:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(value("login_ok") >= 7, "every sign-in counts:\n{text}");
    assert_eq!(
        value("denied"),
        4,
        "three denied sign-ins and one JSON request"
    );
    assert_eq!(value("login_failed"), 0);
}

/// Every spelling of every identity header a client could send.
const SPOOFED: &[&str] = &[
    "X-authentik-username: mallory",
    "x_authentik_username: mallory",
    "X.Authentik.Groups: admins",
    "X-Authentik-Email: mallory@example.com",
    "x-authentik-name: Mallory",
    "X-AUTHENTIK-UID: 0",
    "x-authentik-jwt: forged",
    "X-Forwarded-User: mallory",
    "x_forwarded_email: mallory@example.com",
    "X-Forwarded-Preferred-Username: mallory",
    "x.forwarded.groups: admins",
    "Remote-User: mallory",
    "X-Auth-Request-User: mallory",
    "X-Webauth-User: mallory",
];

fn normalized(name: &str) -> String {
    name.to_ascii_lowercase().replace(['_', '.'], "-")
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_backend() {
    let env = Env::start(Opts::default()).await;
    let (b, _) = env.signed_in("bob", "app.localtest").await;
    let session = b.cookie("app.localtest", COOKIE).unwrap();
    let addr = env.gw.http_addr();

    for (host, cookie) in [
        ("public.localtest", None),
        ("app.localtest", Some(session.as_str())),
        ("none.localtest", Some(session.as_str())),
    ] {
        let host_line = format!("Host: {host}");
        let cookie_line = cookie.map(|c| format!("Cookie: {COOKIE}={c}"));
        let mut lines = vec![
            "GET /spoof HTTP/1.1",
            host_line.as_str(),
            "Connection: close",
        ];
        lines.extend_from_slice(SPOOFED);
        if let Some(c) = &cookie_line {
            lines.push(c);
        }
        let r = raw(addr, &lines, b"").await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        let echo = Echo(r.json());
        for (name, values) in echo.headers() {
            let n = normalized(&name);
            for v in &values {
                assert!(
                    !v.contains("mallory") && v != "forged",
                    "{host}: {name}: {v}"
                );
            }
            if n.starts_with("x-authentik-") {
                assert_eq!(host, "app.localtest", "{host}: {name} reached the backend");
                assert_eq!(values.len(), 1, "{name}: {values:?}");
            }
            assert!(
                !(n == "x-forwarded-user" || n == "remote-user" || n.starts_with("x-auth-request")),
                "{host}: {name}"
            );
        }
        if host == "app.localtest" {
            assert_eq!(echo.header("x-authentik-username").as_deref(), Some("bob"));
            assert_eq!(echo.header("x-authentik-groups").as_deref(), Some("users"));
            assert_eq!(echo.header("x-authentik-jwt"), None);
        }
    }
}

#[tokio::test]
async fn the_session_cookie_never_reaches_the_backend() {
    let env = Env::start(Opts::default()).await;
    let (b, _) = env.signed_in("alice", "app.localtest").await;
    let session = b.cookie("app.localtest", COOKIE).unwrap();
    let cookie = format!("theme=dark; {COOKIE}={session}; portcullis_login=x; lang=en");
    for host in ["app.localtest", "public.localtest"] {
        let r = env
            .gw
            .client()
            .get_with(
                &env.url(host, "/c"),
                &[("accept", "application/json"), ("cookie", &cookie)],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{host}: {}", r.text());
        let echo = Echo(r.json());
        assert_eq!(echo.header_all("cookie"), ["theme=dark; lang=en"], "{host}");
        assert!(!r.text().contains(&session), "{host}: session id leaked");
    }
    // Only our cookie: no Cookie header at all.
    let r = env.with_session("app.localtest", "/c", &session).await;
    assert_eq!(Echo(r.json()).header("cookie"), None);
}

#[tokio::test]
async fn callback_refuses_unknown_state_replays_other_browsers_and_wrong_nonce() {
    let env = Env::start(Opts::default()).await;
    let callback = env.url("app.localtest", "/.portcullis/callback");

    // A state we never issued.
    let mut b = env.browser();
    let r = b.get(&format!("{callback}?code=abc&state=forged")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(
        r.text().contains("expired or was already used"),
        "{}",
        r.text()
    );

    // Replaying a callback (code and state) that already signed in.
    let mut b = env.browser();
    let Step::Stopped(cb, _) = b
        .follow_until(&env.url("app.localtest", "/r"), "alice", |u| {
            u.starts_with(&callback)
        })
        .await
    else {
        panic!("no callback")
    };
    let r = b.get(&cb).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(env.url("app.localtest", "/r").as_str())
    );
    let r = b.get(&cb).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "replayed callback: {}",
        r.text()
    );
    assert_eq!(env.idp.grant_count("authorization_code").await, 1);

    // A callback captured from someone else's sign-in (login CSRF).
    let mut attacker = env.browser();
    let Step::Stopped(cb, _) = attacker
        .follow_until(&env.url("app.localtest", "/"), "bob", |u| {
            u.starts_with(&callback)
        })
        .await
    else {
        panic!("no callback")
    };
    let mut victim = env.browser();
    let r = victim.get(&cb).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("another browser"), "{}", r.text());
    assert_eq!(victim.cookie("app.localtest", COOKIE), None);

    // An ID token with another nonce than the one we sent.
    let mut b = env.browser();
    let r = b.get(&env.url("app.localtest", "/n")).await;
    let to_idp = with_query_param(r.header("location").unwrap(), "nonce", "not-our-nonce");
    let Step::Done(last, r) = b.follow_until(&to_idp, "alice", |_| false).await else {
        unreachable!()
    };
    assert!(last.starts_with(&callback), "{last}");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("could not be verified"), "{}", r.text());
    assert_eq!(b.cookie("app.localtest", COOKIE), None);
    assert_eq!(
        env.idp.grant_count("authorization_code").await,
        2,
        "the code was exchanged, then the token refused"
    );
    assert_eq!(env.backend.served(), 0);
}

#[tokio::test]
async fn return_to_never_leaves_the_host() {
    let env = Env::start(Opts::default()).await;
    let addr = env.gw.http_addr();
    let port = addr.port();
    let host = format!("app.localtest:{port}");
    let callback = env.url("app.localtest", "/.portcullis/callback");
    let targets = [
        "//evil.example/x",
        "///evil.example",
        "/\\evil.example",
        "/%2F%2Fevil.example",
        "/%5C%5Cevil.example",
        "/?rd=https://evil.example/&next=//evil.example",
        "/.//evil.example/",
        "http://evil.example/",
    ];
    for target in targets {
        let line = format!("GET {target} HTTP/1.1");
        let host_line = format!("Host: {host}");
        let r = raw(
            addr,
            &[&line, &host_line, "Accept: text/html", "Connection: close"],
            b"",
        )
        .await;
        if r.status == 400 {
            // Refused outright is fine: nothing redirected anywhere.
            continue;
        }
        assert_eq!(r.status, 302, "{target}: {}", r.text());
        let to_idp = r.header("location").unwrap().to_string();
        assert!(to_idp.starts_with(env.idp.issuer()), "{target}: {to_idp}");
        let mut b = env.browser();
        let mut h = HeaderMap::new();
        for (k, v) in &r.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
                h.append(k, v);
            }
        }
        b.store_cookies(&format!("http://{host}/"), &h);
        let Step::Stopped(back, _) = b
            .follow_until(&to_idp, "alice", |u| {
                !u.starts_with("http://127.0.0.1") && !u.starts_with(&callback)
            })
            .await
        else {
            panic!("{target}: no redirect back")
        };
        assert!(
            back.starts_with(&format!("http://{host}/")),
            "{target} sent the browser to {back}"
        );
        let path = back[7..].split('?').next().unwrap();
        assert!(!path.contains("//"), "{target} -> {back}");
    }
}

#[tokio::test]
async fn non_browsers_get_401_with_www_authenticate() {
    let env = Env::start(Opts::default()).await;
    let c = env.gw.client();
    let url = env.url("app.localtest", "/api");
    let cases: [(Method, &[(&str, &str)]); 4] = [
        (Method::GET, &[("accept", "application/json")]),
        (Method::GET, &[]),
        (
            Method::GET,
            &[
                ("accept", "text/html"),
                ("x-requested-with", "XMLHttpRequest"),
            ],
        ),
        (Method::POST, &[("accept", "text/html")]),
    ];
    for (method, headers) in cases {
        let r = c.request(method.clone(), &url, headers, ()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {headers:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"portcullis\"")
        );
        assert_eq!(r.header("location"), None);
    }
    // An expired or foreign session id is just no session.
    let r = env
        .with_session(
            "app.localtest",
            "/",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(env.backend.served(), 0);
}

#[tokio::test]
async fn the_reserved_prefix_is_never_forwarded() {
    let env = Env::start(Opts::default()).await;
    let (b, _) = env.signed_in("alice", "app.localtest").await;
    let session = b.cookie("app.localtest", COOKIE).unwrap();
    let served = env.backend.served();
    for path in [
        "/.portcullis/",
        "/.portcullis/nope",
        "/.portcullis/callback",
        "/.portcullis",
        "/x/../.portcullis/nope",
    ] {
        for host in ["app.localtest", "public.localtest", "unrouted.localtest"] {
            let r = env.with_session(host, path, &session).await;
            assert!(
                matches!(r.status.as_u16(), 400 | 404),
                "{host}{path}: {} {}",
                r.status,
                r.text()
            );
        }
    }
    let r = env
        .gw
        .client()
        .get(&env.url("app.localtest", "/.portcullis/logged-out"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("Signed out"));
    assert_eq!(
        env.backend.served(),
        served,
        "nothing under /.portcullis/ was forwarded"
    );
}

#[tokio::test]
async fn logout_ends_the_session_and_redirects_to_end_session() {
    let env = Env::start(Opts::default()).await;
    let (mut b, _) = env.signed_in("alice", "app.localtest").await;
    let session = b.cookie("app.localtest", COOKIE).unwrap();
    assert_eq!(
        env.with_session("app.localtest", "/", &session)
            .await
            .status,
        StatusCode::OK
    );

    let r = b
        .get(&env.url("app.localtest", "/.portcullis/logout"))
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    let loc = r.header("location").unwrap().to_string();
    assert!(
        loc.starts_with(&format!("{}session/end?", env.idp.issuer())),
        "{loc}"
    );
    let q: std::collections::HashMap<String, String> = query_of(&loc).into_iter().collect();
    assert_eq!(q["id_token_hint"].split('.').count(), 3, "{q:?}");
    assert_eq!(
        q["post_logout_redirect_uri"],
        env.url("app.localtest", "/.portcullis/logged-out")
    );
    assert_eq!(b.cookie("app.localtest", COOKIE), None, "cookie cleared");
    let cleared = r
        .headers
        .get_all("set-cookie")
        .iter()
        .any(|v| v.to_str().unwrap().starts_with(&format!("{COOKIE}=;")));
    assert!(cleared, "{:?}", r.headers);

    // The old cookie no longer works.
    assert_eq!(
        env.with_session("app.localtest", "/", &session)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // The provider ends its session and sends the browser to our page.
    let Step::Done(last, r) = b.follow_until(&loc, "alice", |_| false).await else {
        unreachable!()
    };
    assert_eq!(last, env.url("app.localtest", "/.portcullis/logged-out"));
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("signed out"), "{}", r.text());
    assert!(
        env.idp.stats().await["end_session_confirm"]
            .as_u64()
            .unwrap()
            >= 1
    );

    // Signing in again needs the password again.
    let logins = env.idp.stats().await["logins"].as_u64().unwrap();
    let r = b.login(&env.url("app.localtest", "/"), "alice").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        env.idp.stats().await["logins"].as_u64().unwrap(),
        logins + 1
    );
}

/// An HS256 token signed with `secret` (logout tokens are signed like ID
/// tokens, and the provider advertises HS256).
#[tokio::test]
async fn config_errors_name_the_provider_and_line() {
    let toml = "[[route]]\nhost = \"a.localtest\"\nupstream = \"http://127.0.0.1:1\"\nauth = { oidc = \"missing\" }\n";
    let err = match Gateway::builder(toml).try_start().await {
        Ok(_) => panic!("accepted a route naming an unknown provider"),
        Err(e) => e,
    };
    // The harness puts a 5-line [server] table first: `auth` is on line 9.
    assert!(err.contains(":9:"), "{err}");
    assert!(err.contains("route[1].auth"), "{err}");
    assert!(err.contains("unknown provider `missing`"), "{err}");
}
