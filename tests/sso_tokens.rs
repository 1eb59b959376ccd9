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
    // The provider rotates its keys under the same key ids: tokens signed
    // with the new ones verify without a reload.
    env.idp.rotate_keys(true).await;
    let rotated = env.idp.mint(json!({"user": "bob"})).await;
    assert_eq!(header_of(&rotated)["kid"], header_of(&t)["kid"]);
    let r = env
        .gw
        .client()
        .get_with(
            &env.url("app.localtest", "/"),
            &[("authorization", &format!("Bearer {rotated}"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "after rotation: {}", r.text());
}

/// What a proxy's forward-auth check sends at the least: the URI it asks about.
const URI_ROOT: &[(&str, &str)] = &[("x-forwarded-uri", "/")];

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
    let r = c.get_with(&auth("app.localtest"), URI_ROOT).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("www-authenticate").is_some());
    // Public route → 200.
    assert_eq!(
        c.get_with(&auth("public.localtest"), URI_ROOT).await.status,
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
            &[
                ("cookie", &format!("{COOKIE}={session}")),
                ("x-forwarded-uri", "/"),
            ],
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
                ("x-forwarded-uri", "/"),
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
                ("x-forwarded-uri", "/"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-forwarded-user"), Some("bob"));
}

#[tokio::test]
async fn forward_auth_refuses_forwarded_uris_from_untrusted_peers() {
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
    // A URI from a peer outside trusted_proxies is refused, not ignored:
    // ignoring it would judge `/`, and a misconfigured proxy would let
    // every protected path through.
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.header("location").is_none());
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

fn payload_of(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let p = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn signing_key_rotated_under_the_same_kid_is_refetched() {
    let env = Env::start(Opts::default()).await;
    // The gateway knows the provider's keys: a login and a bearer work.
    let _ = env.signed_in("alice", "app.localtest").await;
    let bearer = |t: String| {
        let url = env.url("app.localtest", "/api");
        let c = env.gw.client();
        async move {
            c.get_with(&url, &[("authorization", &format!("Bearer {t}"))])
                .await
        }
    };
    let before = env.idp.mint(json!({"user": "alice"})).await;
    assert_eq!(bearer(before.clone()).await.status, StatusCode::OK);

    // New key material, same key id.
    env.idp.rotate_keys(true).await;
    let after = env.idp.mint(json!({"user": "alice"})).await;
    assert_eq!(header_of(&after)["kid"], header_of(&before)["kid"]);

    // A new login (ID token signed with the new key) works without a reload.
    let mut b = env.browser();
    let r = b.login(&env.url("app.localtest", "/"), "bob").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "login after rotation: {}",
        r.text()
    );
    assert_eq!(
        Echo(r.json()).header("x-authentik-username").as_deref(),
        Some("bob")
    );
    // And so do bearer tokens signed with it.
    let r = bearer(after).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "bearer after rotation: {}",
        r.text()
    );
    // A token signed with the retired key is refused now.
    assert_eq!(bearer(before).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn only_access_tokens_are_bearer_tokens_and_logout_revokes_their_sid() {
    let env = Env::start(Opts::default()).await;
    let c = env.gw.client();
    let call = |token: String| {
        let url = env.url("app.localtest", "/api");
        let c = &c;
        async move {
            c.get_with(&url, &[("authorization", &format!("Bearer {token}"))])
                .await
        }
    };
    let (mut b, _) = env.signed_in("alice", "app.localtest").await;
    // Signing out sends the browser to the provider with our ID token as
    // `id_token_hint`: it is in the browser's history from now on.
    let r = b
        .get(&env.url("app.localtest", "/.portcullis/logout"))
        .await;
    assert_eq!(r.status, StatusCode::FOUND);
    let to_idp = r.header("location").unwrap().to_string();
    let id_token = support::idp::query_of(&to_idp)
        .into_iter()
        .find(|(k, _)| k == "id_token_hint")
        .map(|(_, v)| v)
        .expect("id_token_hint");
    let claims = payload_of(&id_token);
    let sid = claims["sid"]
        .as_str()
        .expect("sid in the ID token")
        .to_string();
    assert!(claims["nonce"].is_string());
    assert!(claims["exp"].as_u64().unwrap() > now() + 60, "still valid");

    // The ID token is not an access token: neither this one, nor one just
    // like it of a provider session that is still signed in.
    let r = call(id_token.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "ID token as bearer");
    let mut live = claims.clone();
    live["sid"] = json!("still-signed-in");
    let typ = header_of(&id_token)["typ"].clone();
    let t = env.idp.mint(json!({"typ": typ, "claims": live})).await;
    let r = call(t).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "live ID token as bearer"
    );
    // Nor is a logout token (explicitly typed, or by its `events` claim),
    // nor anything carrying a nonce.
    let events = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
    for (what, body) in [
        (
            "logout+jwt",
            json!({"typ": "logout+jwt", "claims": {"events": events, "sid": "other"}}),
        ),
        ("JWT with events", json!({"claims": {"events": events}})),
        ("JWT with a nonce", json!({"claims": {"nonce": "n"}})),
        ("id_token+jwt", json!({"typ": "id_token+jwt"})),
    ] {
        let r = call(env.idp.mint(body).await).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
    }
    // Access tokens (RFC 9068 `at+jwt`, or plain `JWT`) of another
    // provider session still work...
    for typ in ["at+jwt", "JWT"] {
        let t = env
            .idp
            .mint(json!({"typ": typ, "claims": {"sid": "another-session"}}))
            .await;
        let r = call(t).await;
        assert_eq!(r.status, StatusCode::OK, "{typ}: {}", r.text());
    }
    // ...but not those of the session that was signed out.
    let t = env
        .idp
        .mint(json!({"typ": "at+jwt", "claims": {"sid": sid}}))
        .await;
    let r = call(t).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "logged-out sid");
    assert_eq!(
        env.backend.served(),
        3,
        "the login and the two access tokens"
    );
}

#[tokio::test]
async fn logout_tokens_need_exp_and_fresh_iat_and_are_used_once() {
    let port = free_port();
    let env = Env::start(Opts {
        port: Some(port),
        idp: Some(Idp::builder().backchannel_logout_uri(&format!(
            "http://127.0.0.1:{port}/.portcullis/backchannel-logout"
        ))),
        ..Opts::default()
    })
    .await;
    let url = env.url("app.localtest", "/.portcullis/backchannel-logout");
    let c = env.gw.client();
    let post = |t: String| {
        let c = &c;
        let url = &url;
        async move {
            c.request(
                Method::POST,
                url,
                &[("content-type", "application/x-www-form-urlencoded")],
                format!("logout_token={t}"),
            )
            .await
        }
    };
    let (bob, echo) = env.signed_in("bob", "app.localtest").await;
    let sub = echo.header("x-authentik-uid").unwrap();
    let session = bob.cookie("app.localtest", COOKIE).unwrap();
    let alive = |s: String| {
        let env = &env;
        async move { env.with_session("app.localtest", "/", &s).await.status == StatusCode::OK }
    };
    let token = |jti: &str, iat: u64, exp: Option<u64>| {
        let mut c = json!({
            "iss": env.idp.issuer(), "aud": "portcullis", "iat": iat, "jti": jti, "sub": sub,
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}
        });
        if let Some(exp) = exp {
            c["exp"] = json!(exp);
        }
        hs256(c, SECRET)
    };

    // No `exp`: a token that would work forever.
    let r = post(token("no-exp", now(), None)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "no exp: {}", r.text());
    // Issued long ago, however far its `exp`.
    let r = post(token("old", now() - 3600, Some(now() + 3600))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "old iat: {}", r.text());
    // No `jti`.
    let mut no_jti = payload_of(&token("x", now(), Some(now() + 60)));
    no_jti.as_object_mut().unwrap().remove("jti");
    let r = post(hs256(no_jti, SECRET)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "no jti: {}", r.text());
    assert!(alive(session.clone()).await, "refused tokens end nothing");

    // A good one ends the session, once.
    let good = token("once", now(), Some(now() + 120));
    let r = post(good.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(!alive(session).await);
    // Bob signs in again; the captured token does not end the new session.
    let (bob, _) = env.signed_in("bob", "app.localtest").await;
    let session = bob.cookie("app.localtest", COOKIE).unwrap();
    let r = post(good).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "replayed: {}", r.text());
    assert!(
        alive(session.clone()).await,
        "the replay ended a new session"
    );
    // Logout tokens the provider sends itself still work, also once it
    // has rotated its signing key under the same key id.
    env.idp.rotate_keys(true).await;
    let r = env
        .idp
        .backchannel_logout(json!({"client_id": "portcullis", "user": "bob"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text(), env.idp.logs());
    assert!(!alive(session).await);
}

fn without_query_param(url: &str, key: &str) -> String {
    let (base, q) = url.split_once('?').unwrap_or((url, ""));
    let kept: Vec<&str> = q
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(key))
        .collect();
    format!("{base}?{}", kept.join("&"))
}

#[tokio::test]
async fn callback_without_iss_is_refused_when_the_provider_sends_iss() {
    let env = Env::start(Opts::default()).await;
    let callback = env.url("app.localtest", "/.portcullis/callback");
    let mut b = env.browser();
    let Step::Stopped(cb, _) = b
        .follow_until(&env.url("app.localtest", "/"), "alice", |u| {
            u.starts_with(&callback)
        })
        .await
    else {
        panic!("no callback")
    };
    assert!(
        cb.contains("iss="),
        "the provider sends iss (RFC 9207): {cb}"
    );
    let r = b.get(&without_query_param(&cb, "iss")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(b.cookie("app.localtest", COOKIE), None);
    assert_eq!(env.idp.grant_count("authorization_code").await, 0);
}

#[tokio::test]
async fn a_callback_from_another_browser_does_not_cancel_the_sign_in() {
    let env = Env::start(Opts::default()).await;
    let callback = env.url("app.localtest", "/.portcullis/callback");
    let mut user = env.browser();
    let Step::Stopped(cb, _) = user
        .follow_until(&env.url("app.localtest", "/x"), "alice", |u| {
            u.starts_with(&callback)
        })
        .await
    else {
        panic!("no callback")
    };
    // Someone who learned the state (it is in the authorization URL) sends
    // a callback with it from their own browser.
    let state = support::idp::query_of(&cb)
        .into_iter()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1;
    let mut other = env.browser();
    let r = other
        .get(&format!("{callback}?state={state}&error=access_denied"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // The user's own sign-in still completes.
    let r = user.get(&cb).await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(env.url("app.localtest", "/x").as_str())
    );
    assert!(user.cookie("app.localtest", COOKIE).is_some());
}
