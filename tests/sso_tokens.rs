//! Single sign-on with tokens through the real gateway and the real OIDC
//! test provider: back-channel logout tokens (delivered by the provider,
//! and forged ones), bearer JWTs for API clients, and the forward-auth
//! endpoint other proxies call.

mod support;

use http::{Method, StatusCode};
use serde_json::json;

use support::backend::Echo;
use support::idp::{
    Browser, CLIENT_SECRET as SECRET, Idp, PLAIN_COOKIE as COOKIE, SsoEnv as Env, SsoOpts as Opts,
    Step, free_port,
};

fn hs256(claims: serde_json::Value, secret: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let h = b64(&json!({"alg": "HS256", "typ": "logout+jwt"}));
    let p = b64(&claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let sig = ring::hmac::sign(&key, format!("{h}.{p}").as_bytes());
    format!(
        "{h}.{p}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref())
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn backchannel_logout_ends_the_users_sessions() {
    let port = free_port();
    let env = Env::start(Opts {
        port: Some(port),
        idp: Some(Idp::builder().backchannel_logout_uri(&format!(
            "http://127.0.0.1:{port}/.portcullis/backchannel-logout"
        ))),
        ..Opts::default()
    })
    .await;
    let (a1, _) = env.signed_in("alice", "app.localtest").await;
    let (a2, _) = env.signed_in("alice", "app.localtest").await;
    let (bob, bob_echo) = env.signed_in("bob", "app.localtest").await;
    let s = |b: &Browser| b.cookie("app.localtest", COOKIE).unwrap();
    let (s1, s2, sb) = (s(&a1), s(&a2), s(&bob));

    // The provider tells us alice is gone (by `sub`): both her sessions end.
    let r = env
        .idp
        .backchannel_logout(json!({"client_id": "portcullis", "user": "alice"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text(), env.idp.logs());
    for (who, sess, want) in [
        ("alice 1", &s1, StatusCode::UNAUTHORIZED),
        ("alice 2", &s2, StatusCode::UNAUTHORIZED),
        ("bob", &sb, StatusCode::OK),
    ] {
        let r = env.with_session("app.localtest", "/", sess).await;
        assert_eq!(r.status, want, "{who}");
    }

    // A user signing out at the provider ends our session of theirs (`sid`).
    let (mut a3, _) = env.signed_in("alice", "app.localtest").await;
    let s3 = s(&a3);
    let end = format!("{}session/end?client_id=portcullis", env.idp.issuer());
    let _ = a3.follow_until(&end, "alice", |_| false).await;
    support::wait_for(
        "the back-channel logout",
        std::time::Duration::from_secs(10),
        || async {
            (env.with_session("app.localtest", "/", &s3).await.status == StatusCode::UNAUTHORIZED)
                .then_some(())
        },
    )
    .await;
    assert!(
        env.idp.stats().await["backchannel_logout"]["ok"]
            .as_u64()
            .unwrap()
            >= 2
    );

    // Tokens we must refuse.
    let url = env.url("app.localtest", "/.portcullis/backchannel-logout");
    let bob_sub = bob_echo.header("x-authentik-uid").unwrap();
    let good = json!({
        "iss": env.idp.issuer(), "aud": "portcullis", "iat": now(), "exp": now() + 60,
        "jti": "j1", "sub": bob_sub,
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}}
    });
    let mut no_event = good.clone();
    no_event.as_object_mut().unwrap().remove("events");
    let mut with_nonce = good.clone();
    with_nonce["nonce"] = json!("n");
    let mut other_aud = good.clone();
    other_aud["aud"] = json!("someone-else");
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 3600);
    let bad = [
        hs256(good.clone(), "wrong-secret"),
        hs256(no_event, SECRET),
        hs256(with_nonce, SECRET),
        hs256(other_aud, SECRET),
        hs256(expired, SECRET),
        "not.a.jwt".to_string(),
    ];
    let c = env.gw.client();
    for t in &bad {
        let r = c
            .request(
                Method::POST,
                &url,
                &[("content-type", "application/x-www-form-urlencoded")],
                format!("logout_token={t}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{t}: {}", r.text());
    }
    assert_eq!(c.get(&url).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        env.with_session("app.localtest", "/", &sb).await.status,
        StatusCode::OK,
        "refused tokens end nothing"
    );
    // A valid one (HS256 with the client secret, as Authentik signs without a key).
    let r = c
        .request(
            Method::POST,
            &url,
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("logout_token={}", hs256(good, SECRET)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        env.with_session("app.localtest", "/", &sb).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn bearer_tokens_are_accepted_and_rejected_correctly() {
    let env = Env::start(Opts {
        provider: "audiences = [\"api://portcullis\"]",
        ..Opts::default()
    })
    .await;
    let c = env.gw.client();
    let call = |host: &'static str, token: String| {
        let url = env.url(host, "/api");
        async move {
            c.get_with(
                &url,
                &[
                    ("authorization", &format!("Bearer {token}")),
                    ("accept", "text/html"),
                ],
            )
            .await
        }
    };

    // Accepted: RS256 from the provider's key, for a user and for a client.
    let r = call(
        "app.localtest",
        env.idp.mint(json!({"user": "alice"})).await,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let echo = Echo(r.json());
    assert_eq!(
        echo.header("x-authentik-username").as_deref(),
        Some("alice")
    );
    assert_eq!(
        echo.header("x-authentik-groups").as_deref(),
        Some("admins|users")
    );
    assert!(
        echo.header("authorization").is_some(),
        "the backend may want the token"
    );
    let r = call("app.localtest", env.idp.client_credentials().await).await;
    assert_eq!(r.status, StatusCode::OK, "client_credentials: {}", r.text());
    assert_eq!(
        Echo(r.json()).header("x-authentik-username").as_deref(),
        Some("portcullis")
    );
    // An extra configured audience.
    let t = env
        .idp
        .mint(json!({"user": "alice", "aud": ["api://portcullis"]}))
        .await;
    assert_eq!(call("app.localtest", t).await.status, StatusCode::OK);
    // Policies apply to tokens too.
    let t = env.idp.mint(json!({"user": "bob"})).await;
    let r = call("admins.localtest", t).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("signed in as bob"));

    // Refused, never redirected.
    let now = now();
    let refused = [
        ("expired", json!({"claims": {"exp": now - 600}})),
        ("not yet valid", json!({"claims": {"nbf": now + 600}})),
        (
            "wrong issuer",
            json!({"claims": {"iss": "http://127.0.0.1:1/application/o/other/"}}),
        ),
        (
            "issuer without slash",
            json!({"claims": {"iss": env.idp.issuer().trim_end_matches('/')}}),
        ),
        ("wrong audience", json!({"aud": "someone-else"})),
        ("unknown key", json!({"foreign_key": true})),
        (
            "foreign key, our kid",
            json!({"foreign_key": true, "kid": null}),
        ),
        ("HS256 with the client secret", json!({"alg": "HS256"})),
        ("no sub", json!({"sub": "", "claims": {"sub": ""}})),
    ];
    for (what, body) in refused {
        let mut body = body;
        if what == "foreign key, our kid" {
            // Sign with an unpublished key but claim the published key id.
            let real = env.idp.mint(json!({})).await;
            let kid = header_of(&real)["kid"].clone();
            body["kid"] = kid;
        }
        let t = env.idp.mint(body).await;
        let r = call("app.localtest", t).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"portcullis\", error=\"invalid_token\""),
            "{what}"
        );
        assert_eq!(r.header("location"), None, "{what}");
    }
    // Tampered payload, and `alg: none`.
    let t = env.idp.mint(json!({"user": "bob"})).await;
    let parts: Vec<&str> = t.split('.').collect();
    let alice = env.idp.mint(json!({"user": "alice"})).await;
    let alice_payload = alice.split('.').nth(1).unwrap();
    let tampered = format!("{}.{}.{}", parts[0], alice_payload, parts[2]);
    let none = format!(
        "{}.{}.",
        base64_json(&json!({"alg": "none", "typ": "JWT"})),
        alice_payload
    );
    for (what, t) in [
        ("tampered", tampered),
        ("alg none", none),
        ("garbage", "x.y.z".into()),
    ] {
        let r = call("app.localtest", t).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
    }
    assert_eq!(env.backend.served(), 3);
}

fn base64_json(v: &serde_json::Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn header_of(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let h = jwt.split('.').next().unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn es256_bearer_tokens_verify_against_the_jwks() {
    let env = Env::start(Opts {
        idp: Some(Idp::builder().access_token_alg("ES256")),
        ..Opts::default()
    })
    .await;
    let t = env.idp.mint(json!({"user": "alice"})).await;
    assert_eq!(header_of(&t)["alg"], "ES256");
    let r = env
        .gw
        .client()
        .get_with(
            &env.url("admins.localtest", "/"),
            &[("authorization", &format!("Bearer {t}"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        Echo(r.json()).header("x-authentik-username").as_deref(),
        Some("alice")
    );
}

#[tokio::test]
async fn forward_auth_answers_other_proxies() {
    let env = Env::start(Opts {
        server: "trusted_proxies = [\"127.0.0.1/32\"]",
        ..Opts::default()
    })
    .await;
    let c = env.gw.client();
    let auth = |host: &str| env.url(host, "/.portcullis/auth");

    // nginx auth_request: no session → 401.
    let r = c.get(&auth("app.localtest")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").is_some());
    // Public route → 200.
    assert_eq!(
        c.get(&auth("public.localtest")).await.status,
        StatusCode::OK
    );

    // Traefik/Caddy: X-Forwarded-Host/-Uri from a trusted proxy → login.
    let mut b = env.browser();
    // (The proxy relays our answer to the browser on the original host, so
    // the browser keeps our cookies for that host.)
    let r = b
        .request(
            Method::GET,
            &auth("app.localtest"),
            &[
                (
                    "x-forwarded-host",
                    &format!("app.localtest:{}", env.gw.http_addr().port()),
                ),
                ("x-forwarded-uri", "/dash?tab=1"),
                ("x-forwarded-proto", "http"),
            ],
            (),
        )
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    let to_idp = r.header("location").unwrap().to_string();
    assert!(to_idp.starts_with(env.idp.issuer()));
    // The browser signs in (the callback lives on the original host) and
    // comes back to the original URL.
    let Step::Stopped(back, _) = b
        .follow_until(&to_idp, "alice", |u| {
            u.starts_with(&env.url("app.localtest", "/dash"))
        })
        .await
    else {
        panic!("not sent back")
    };
    assert_eq!(back, env.url("app.localtest", "/dash?tab=1"));
    let session = b.cookie("app.localtest", COOKIE).unwrap();

    // With the session: 200 and the identity headers on the answer.
    let r = c
        .get_with(
            &auth("app.localtest"),
            &[("cookie", &format!("{COOKIE}={session}"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-authentik-username"), Some("alice"));
    assert_eq!(r.header("x-authentik-groups"), Some("admins|users"));
    // The route of the forwarded host decides the policy.
    let bob = env.idp.mint(json!({"user": "bob"})).await;
    let r = c
        .get_with(
            &auth("portcullis.internal"),
            &[
                ("x-forwarded-host", "admins.localtest"),
                ("authorization", &format!("Bearer {bob}")),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = c
        .get_with(
            &auth("portcullis.internal"),
            &[
                ("x-forwarded-host", "fwd.localtest"),
                ("authorization", &format!("Bearer {bob}")),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-forwarded-user"), Some("bob"));
}

#[tokio::test]
async fn forward_auth_ignores_forwarded_headers_from_untrusted_peers() {
    let env = Env::start(Opts::default()).await;
    let mut b = env.browser();
    let r = b
        .request(
            Method::GET,
            &env.url("public.localtest", "/.portcullis/auth"),
            &[
                ("x-forwarded-host", "app.localtest"),
                ("x-forwarded-uri", "/"),
            ],
            (),
        )
        .await;
    // Judged as public.localtest: public, no redirect anywhere.
    assert_eq!(r.status, StatusCode::OK);
    let r = b
        .request(
            Method::GET,
            &env.url("app.localtest", "/.portcullis/auth"),
            &[("x-forwarded-host", "public.localtest")],
            (),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "no redirect without a trusted proxy"
    );
}
