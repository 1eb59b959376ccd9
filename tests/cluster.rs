//! Several instances as one gateway through a real `redis-server`: two
//! gateways, the OIDC test provider and an echo backend. A session made on
//! one works on the other, a sign-in started on one completes on the
//! other, a logout on one is refused by the other within a second, Redis
//! holds nothing usable in clear, and a Redis outage degrades to clear
//! 503s (public routes untouched) and recovers by itself.

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use support::backend::Backend;
use support::gateway::Gateway;
use support::idp::{Browser, CLIENT_SECRET, Idp, PLAIN_COOKIE as COOKIE, Step, free_port};
use support::redis::{Redis, sso_config};

/// 32 bytes, hex: the key both instances share.
const KEY: &str = "8f1c2e9a4b7d6f30112233445566778899aabbccddeeff00a1b2c3d4e5f60718";

struct Pair {
    idp: Idp,
    _backend: Backend,
    a: Gateway,
    b: Gateway,
}

fn config(http: &str, issuer: &str, up: &str, redis: &str, name: &str, extra: &str) -> String {
    sso_config(
        http,
        issuer,
        up,
        &format!("redis = \"{redis}\"\ninstance_name = \"{name}\"\n{extra}"),
    )
}

impl Pair {
    /// Two instances on one Redis; B's http port is fixed so the provider
    /// can send back-channel logouts to it.
    async fn start(redis: &str, prefix: &str, extra: &str) -> Pair {
        let b_port = free_port();
        let idp = Idp::builder()
            .backchannel_logout_uri(&format!(
                "http://127.0.0.1:{b_port}/.portcullis/backchannel-logout"
            ))
            .start()
            .await;
        let backend = Backend::echo().await;
        let extra = format!("key_prefix = \"{prefix}\"\n{extra}");
        let start = |http: String, name: &'static str| {
            let toml = config(&http, idp.issuer(), &backend.url(), redis, name, &extra);
            Gateway::builder(&toml)
                .file("secret", CLIENT_SECRET)
                .file("cluster.key", KEY)
                .start()
        };
        let a = start("{{HTTP}}".into(), "gw-a").await;
        let b = start(format!("127.0.0.1:{b_port}"), "gw-b").await;
        Pair {
            idp,
            _backend: backend,
            a,
            b,
        }
    }

    fn url(gw: &Gateway, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", gw.http_addr().port())
    }

    /// The status of a non-browser request to `gw` with this session.
    async fn status(gw: &Gateway, session: &str) -> StatusCode {
        gw.client()
            .get_with(
                &Self::url(gw, "app.localtest", "/"),
                &[
                    ("accept", "application/json"),
                    ("cookie", &format!("{COOKIE}={session}")),
                ],
            )
            .await
            .status
    }

    async fn sign_in(&self, gw: &Gateway, user: &str) -> String {
        let mut br = Browser::new(gw.http_addr());
        let r = br.login(&Self::url(gw, "app.localtest", "/"), user).await;
        assert_eq!(r.status, StatusCode::OK, "login as {user}: {}", r.text());
        br.cookie("app.localtest", COOKIE).expect("session cookie")
    }
}

#[tokio::test]
async fn sessions_sign_ins_and_logouts_cross_instances() {
    let redis = support::redis::shared();
    let p = Pair::start(&redis.url(), "t1:", "").await;

    // A session made on A works on B.
    let s = p.sign_in(&p.a, "alice").await;
    assert_eq!(Pair::status(&p.a, &s).await, StatusCode::OK);
    assert_eq!(Pair::status(&p.b, &s).await, StatusCode::OK);

    // A sign-in started on A whose callback lands on B.
    let mut on_a = Browser::new(p.a.http_addr());
    let start = Pair::url(&p.a, "app.localtest", "/from-a");
    let Step::Stopped(callback, _) = on_a
        .follow_until(&start, "bob", |u| u.contains("/.portcullis/callback"))
        .await
    else {
        panic!("no callback");
    };
    let mut on_b = Browser::new(p.b.http_addr());
    let binding = on_a
        .cookie("app.localtest", "portcullis_login")
        .expect("the sign-in binding cookie");
    on_b.set_cookie("app.localtest", "portcullis_login", &binding);
    let r = on_b.login(&callback, "bob").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["uri"], "/from-a", "{}", r.text());
    let sb = on_b
        .cookie("app.localtest", COOKIE)
        .expect("session from B");
    assert_eq!(Pair::status(&p.a, &sb).await, StatusCode::OK);

    // A logout on B: A (which has the session cached) refuses it within 1 s.
    let mut out = Browser::new(p.b.http_addr());
    out.set_cookie("app.localtest", COOKIE, &s);
    let r = out
        .get(&Pair::url(&p.b, "app.localtest", "/.portcullis/logout"))
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    support::wait_for(
        "A to refuse the ended session",
        Duration::from_secs(1),
        || async { (Pair::status(&p.a, &s).await == StatusCode::UNAUTHORIZED).then_some(()) },
    )
    .await;
    assert_eq!(Pair::status(&p.b, &s).await, StatusCode::UNAUTHORIZED);

    // Back-channel logout reaching B ends alice's new session made (and
    // cached) on A.
    let sc = p.sign_in(&p.a, "alice").await;
    assert_eq!(Pair::status(&p.a, &sc).await, StatusCode::OK);
    let r = p
        .idp
        .backchannel_logout(json!({"client_id": "portcullis", "user": "alice"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text(), p.idp.logs());
    support::wait_for(
        "A to refuse alice's new session",
        Duration::from_secs(1),
        || async { (Pair::status(&p.a, &sc).await == StatusCode::UNAUTHORIZED).then_some(()) },
    )
    .await;
    // bob was not signed out.
    assert_eq!(Pair::status(&p.a, &sb).await, StatusCode::OK);

    // A forged cookie (bob's id, another secret) opens nothing.
    let mut forged = decode_b64(&sb);
    forged[31] ^= 1;
    let forged = encode_b64(&forged);
    assert_eq!(Pair::status(&p.b, &forged).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn redis_holds_no_session_id_token_or_user_in_clear() {
    let redis = support::redis::shared();
    let p = Pair::start(&redis.url(), "t2:", "").await;
    let s = p.sign_in(&p.a, "bob").await;
    // A sign-in left pending, too.
    let mut pending = Browser::new(p.b.http_addr());
    let r = pending.get(&Pair::url(&p.b, "app.localtest", "/")).await;
    assert_eq!(r.status, StatusCode::FOUND);

    let id = decode_b64(&s);
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("cookie value", s.as_bytes().to_vec()),
        ("session id (raw)", id[..16].to_vec()),
        ("session id (hex)", hex(&id[..16]).into_bytes()),
        ("session secret (raw)", id[16..].to_vec()),
        ("user's email", b"bob@example.org".to_vec()),
        ("user's name", b"Bob User".to_vec()),
        ("token field", b"refresh_token".to_vec()),
        ("token field", b"id_token".to_vec()),
        ("PKCE verifier field", b"pkce_verifier".to_vec()),
        ("JWT header", b"eyJ".to_vec()),
    ];
    let dump: Vec<_> = redis
        .dump()
        .into_iter()
        .filter(|(k, _)| k.starts_with("t2:"))
        .collect();
    assert!(
        dump.iter().any(|(k, _)| k.starts_with("t2:session:")),
        "{dump:?}"
    );
    assert!(
        dump.iter().any(|(k, _)| k.starts_with("t2:login:")),
        "{dump:?}"
    );
    for (k, vals) in &dump {
        for (what, n) in &needles {
            assert!(!contains(k.as_bytes(), n), "{what} in key {k}");
            for v in vals {
                assert!(!contains(v, n), "{what} in the value of {k}");
            }
        }
    }
}

#[tokio::test]
async fn redis_outage_degrades_to_503_and_recovers() {
    let mut redis = Redis::start();
    let p = Pair::start(&redis.url(), "t3:", "cache_lifetime = \"2s\"").await;
    let s = p.sign_in(&p.a, "alice").await;
    assert_eq!(Pair::status(&p.a, &s).await, StatusCode::OK);

    redis.stop();
    let public = Pair::url(&p.a, "public.localtest", "/");
    // Cached on A: keeps working for the cache lifetime.
    assert_eq!(Pair::status(&p.a, &s).await, StatusCode::OK);
    assert_eq!(p.a.client().get(&public).await.status, StatusCode::OK);

    // After the cache lifetime: a clear 503 (not a redirect, not a 500),
    // for the session and for a new sign-in; public routes still 200.
    support::wait_for(
        "the cached session to need Redis",
        Duration::from_secs(10),
        || async {
            (Pair::status(&p.a, &s).await == StatusCode::SERVICE_UNAVAILABLE).then_some(())
        },
    )
    .await;
    let mut br = Browser::new(p.b.http_addr());
    let r = br.get(&Pair::url(&p.b, "app.localtest", "/")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.text().contains("session store"), "{}", r.text());
    assert_eq!(
        p.b.client()
            .get(&Pair::url(&p.b, "public.localtest", "/"))
            .await
            .status,
        StatusCode::OK
    );

    let ready = p.a.client().get(&p.a.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(ready.text().contains("cluster: down"), "{}", ready.text());
    let metrics = p.a.client().get(&p.a.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("portcullis_cluster_up{instance=\"gw-a\"} 0"),
        "{metrics}"
    );
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_cluster_redis_errors_total "))
        .expect("the error counter")
        .parse()
        .unwrap();
    assert!(errors > 0);

    // Back without a restart of either instance.
    redis.restart();
    support::wait_for("A to see Redis again", Duration::from_secs(10), || async {
        let r = p.a.client().get(&p.a.admin_url("/readyz")).await;
        r.text().contains("cluster: up").then_some(())
    })
    .await;
    support::wait_for("B to see Redis again", Duration::from_secs(10), || async {
        let r = p.b.client().get(&p.b.admin_url("/readyz")).await;
        r.text().contains("cluster: up").then_some(())
    })
    .await;
    let s2 = p.sign_in(&p.b, "alice").await;
    assert_eq!(Pair::status(&p.a, &s2).await, StatusCode::OK);
    let metrics = p.a.client().get(&p.a.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("portcullis_cluster_up{instance=\"gw-a\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn cluster_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(dir.path().join("short.key"), "abcd").unwrap();
    std::fs::write(
        &cfg,
        "[server]\nhttp = \"127.0.0.1:0\"\n\n[cluster]\nredis = \"http://x\"\nencryption_key_file = \"short.key\"\nbogus = 1\n",
    )
    .unwrap();
    let e = portcullis::config::load(&cfg).unwrap_err().to_string();
    assert!(e.contains("p.toml:"), "{e}");
    assert!(e.contains("bogus"), "{e}");
    std::fs::write(
        &cfg,
        "[server]\nhttp = \"127.0.0.1:0\"\n\n[cluster]\nredis = \"http://x\"\nencryption_key_file = \"short.key\"\n",
    )
    .unwrap();
    let e = portcullis::config::load(&cfg).unwrap_err().to_string();
    assert!(e.contains(":5:") && e.contains("cluster.redis"), "{e}");
    assert!(
        e.contains(":6:")
            && e.contains("cluster.encryption_key_file")
            && e.contains("32 random bytes"),
        "{e}"
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn decode_b64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("a base64url cookie")
}

fn encode_b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test]
async fn one_refresh_per_session_across_instances() {
    let redis = support::redis::shared();
    let idp = Idp::builder().access_token_ttl(2).start().await;
    let backend = Backend::echo().await;
    let start = |name: &'static str| {
        let toml = config(
            "{{HTTP}}",
            idp.issuer(),
            &backend.url(),
            &redis.url(),
            name,
            "key_prefix = \"t4:\"",
        );
        Gateway::builder(&toml)
            .file("secret", CLIENT_SECRET)
            .file("cluster.key", KEY)
            .start()
    };
    let (a, b) = (start("gw-a").await, start("gw-b").await);
    let mut br = Browser::new(a.http_addr());
    let r = br
        .login(&Pair::url(&a, "app.localtest", "/"), "alice")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let s = br.cookie("app.localtest", COOKIE).unwrap();
    // Cached on both.
    assert_eq!(Pair::status(&a, &s).await, StatusCode::OK);
    assert_eq!(Pair::status(&b, &s).await, StatusCode::OK);
    assert_eq!(idp.grant_count("refresh_token").await, 0);

    // Both find the access token expired at once: one refresh in all.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let results = futures_util::future::join_all((0..8).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        Pair::status(gw, &s)
    }))
    .await;
    assert!(
        results.iter().all(|st| *st == StatusCode::OK),
        "{results:?}"
    );
    assert_eq!(
        idp.grant_count("refresh_token").await,
        1,
        "one refresh for both instances"
    );
}
