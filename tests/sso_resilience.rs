//! Single sign-on over time and through failures: sessions surviving a
//! restart and a reload, refresh (once per session under concurrency, never
//! extending the session), the provider down (at start and later), session
//! expiry, the signing algorithms Authentik uses, and the cookie flags over
//! real HTTPS.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use http::StatusCode;
use serde_json::json;

use support::backend::{Backend, Echo};
use support::gateway::Gateway;
use support::idp::{Browser, Idp, free_port};
use support::wait_for;

const SECRET: &str = "portcullis-secret";
const COOKIE: &str = "portcullis_session";

/// Plain-HTTP config: one protected route `app.localtest`, one for admins.
fn config(issuer: &str, upstream: &str, provider_extra: &str, state_dir: &str) -> String {
    format!(
        r#"
[server]
http = "{{{{HTTP}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{state_dir}"

[oidc.authentik]
issuer = "{issuer}"
client_id = "portcullis"
client_secret_file = "secret"
insecure_cookies = true
{provider_extra}

[[route]]
host = "app.localtest"
upstream = "{upstream}"
auth = {{ oidc = "authentik" }}

[[route]]
host = "admins.localtest"
upstream = "{upstream}"
auth = {{ oidc = "authentik", groups = ["admins"] }}
"#
    )
}

async fn gateway(toml: &str) -> Gateway {
    Gateway::builder(toml).file("secret", SECRET).start().await
}

fn url(gw: &Gateway, host: &str, path: &str) -> String {
    format!("http://{host}:{}{path}", gw.http_addr().port())
}

/// A request with only the session cookie, as an API client.
async fn api(gw: &Gateway, host: &str, session: &str) -> support::client::Resp {
    gw.client()
        .get_with(
            &url(gw, host, "/"),
            &[
                ("accept", "application/json"),
                ("cookie", &format!("{COOKIE}={session}")),
            ],
        )
        .await
}

async fn sign_in(gw: &Gateway, user: &str) -> String {
    let mut b = Browser::new(gw.http_addr());
    let r = b.login(&url(gw, "app.localtest", "/"), user).await;
    assert_eq!(r.status, StatusCode::OK, "sign in as {user}: {}", r.text());
    b.cookie("app.localtest", COOKIE).expect("session cookie")
}

#[tokio::test]
async fn sessions_survive_a_gateway_restart() {
    let idp = Idp::start().await;
    let backend = Backend::echo().await;
    let state = tempfile::tempdir().unwrap();
    let toml = config(
        idp.issuer(),
        &backend.url(),
        "",
        &state.path().display().to_string(),
    );

    let mut gw = gateway(&toml).await;
    let session = sign_in(&gw, "alice").await;
    gw.shutdown().await.unwrap();
    drop(gw);
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&state.path().join("sessions")), 0o700);
    assert_eq!(mode(&state.path().join("sessions/sessions.redb")), 0o600);

    let gw = gateway(&toml).await;
    let r = api(&gw, "app.localtest", &session).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        Echo(r.json()).header("x-authentik-username").as_deref(),
        Some("alice")
    );
    assert_eq!(
        idp.grant_count("authorization_code").await,
        1,
        "no new sign-in"
    );
}

#[tokio::test]
async fn refresh_after_expiry_is_one_call_under_concurrency() {
    let idp = Idp::builder().access_token_ttl(2).start().await;
    let backend = Backend::echo().await;
    let gw = gateway(&config(idp.issuer(), &backend.url(), "", "{{DIR}}/state")).await;
    let session = sign_in(&gw, "alice").await;
    assert_eq!(idp.grant_count("refresh_token").await, 0);

    tokio::time::sleep(Duration::from_millis(3100)).await;
    let clients: Vec<_> = (0..12)
        .map(|_| support::client::TestClient::to_fresh_connections(gw.http_addr()))
        .collect();
    let cookie = format!("{COOKIE}={session}");
    let headers = [("accept", "application/json"), ("cookie", cookie.as_str())];
    let target = url(&gw, "app.localtest", "/");
    let results = join_all(clients.iter().map(|c| c.get_with(&target, &headers))).await;
    for r in &results {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            Echo(r.json()).header("x-authentik-username").as_deref(),
            Some("alice")
        );
    }
    assert_eq!(
        idp.grant_count("refresh_token").await,
        1,
        "one refresh for twelve concurrent requests"
    );
    // Fresh again: no refresh for the next request.
    assert_eq!(
        api(&gw, "app.localtest", &session).await.status,
        StatusCode::OK
    );
    assert_eq!(idp.grant_count("refresh_token").await, 1);
}

#[tokio::test]
async fn provider_down_keeps_sessions_and_answers_503_for_new_logins() {
    let mut idp = Idp::start().await;
    let port = idp.port();
    let backend = Backend::echo().await;
    let gw = gateway(&config(idp.issuer(), &backend.url(), "", "{{DIR}}/state")).await;
    let session = sign_in(&gw, "alice").await;
    let token = idp.mint(json!({"user": "alice"})).await;
    idp.stop();

    // Existing sessions and cached signing keys keep working.
    assert_eq!(
        api(&gw, "app.localtest", &session).await.status,
        StatusCode::OK
    );
    let r = gw
        .client()
        .get_with(
            &url(&gw, "admins.localtest", "/"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "bearer with cached keys: {}",
        r.text()
    );

    // A new login: a 503 page, never a redirect (loop). (The gateway trusts
    // a reachability probe for 2 s.)
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut b = Browser::new(gw.http_addr());
    for _ in 0..3 {
        let r = b.get(&url(&gw, "app.localtest", "/x")).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert_eq!(r.header("location"), None);
        assert!(
            r.text().contains("identity provider cannot be reached"),
            "{}",
            r.text()
        );
    }

    // The provider comes back (same address, new signing keys): logins
    // work again, verified with the refetched keys.
    let idp = Idp::builder().port(port).start().await;
    wait_for("logins to work again", Duration::from_secs(20), || async {
        let r = Browser::new(gw.http_addr())
            .get(&url(&gw, "app.localtest", "/"))
            .await;
        (r.status == StatusCode::FOUND).then_some(())
    })
    .await;
    let r = b.login(&url(&gw, "app.localtest", "/back"), "bob").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(Echo(r.json()).uri(), "/back");
    let new_token = idp.mint(json!({"user": "alice"})).await;
    let r = gw
        .client()
        .get_with(
            &url(&gw, "app.localtest", "/"),
            &[("authorization", &format!("Bearer {new_token}"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn provider_down_at_start_then_up() {
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}/application/o/portcullis/");
    let backend = Backend::echo().await;
    let gw = gateway(&config(&issuer, &backend.url(), "", "{{DIR}}/state")).await;

    let mut b = Browser::new(gw.http_addr());
    let r = b.get(&url(&gw, "app.localtest", "/")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let r = gw.client().get(&url(&gw, "app.localtest", "/")).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "API clients still get 401"
    );

    let _idp = Idp::builder().port(port).start().await;
    wait_for(
        "discovery after the provider came up",
        Duration::from_secs(20),
        || async {
            let r = Browser::new(gw.http_addr())
                .get(&url(&gw, "app.localtest", "/"))
                .await;
            (r.status == StatusCode::FOUND).then_some(())
        },
    )
    .await;
    let r = b.login(&url(&gw, "app.localtest", "/"), "alice").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn a_failed_refresh_never_extends_the_session() {
    let mut idp = Idp::builder().access_token_ttl(1).start().await;
    let backend = Backend::echo().await;
    let gw = gateway(&config(
        idp.issuer(),
        &backend.url(),
        "session_ttl = \"5s\"",
        "{{DIR}}/state",
    ))
    .await;
    let started = std::time::Instant::now();
    let session = sign_in(&gw, "alice").await;
    idp.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The access token expired and the refresh fails: still signed in.
    let r = api(&gw, "app.localtest", &session).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Until the session's own expiry, not a second later.
    let left = Duration::from_secs(5).saturating_sub(started.elapsed());
    tokio::time::sleep(left + Duration::from_millis(1100)).await;
    let r = api(&gw, "app.localtest", &session).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
}

#[tokio::test]
async fn sessions_expire_after_session_ttl() {
    let idp = Idp::start().await;
    let backend = Backend::echo().await;
    let gw = gateway(&config(
        idp.issuer(),
        &backend.url(),
        "session_ttl = \"2s\"",
        "{{DIR}}/state",
    ))
    .await;
    let session = sign_in(&gw, "alice").await;
    assert_eq!(
        api(&gw, "app.localtest", &session).await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(
        api(&gw, "app.localtest", &session).await.status,
        StatusCode::UNAUTHORIZED
    );
    let mut b = Browser::new(gw.http_addr());
    b.set_cookie("app.localtest", COOKIE, &session);
    let r = b.get(&url(&gw, "app.localtest", "/")).await;
    assert_eq!(r.status, StatusCode::FOUND, "expired: sign in again");
}

#[tokio::test]
async fn id_tokens_signed_hs256_and_es256_are_accepted() {
    for alg in ["HS256", "ES256"] {
        let idp = Idp::builder().id_token_alg(alg).start().await;
        let backend = Backend::echo().await;
        let gw = gateway(&config(idp.issuer(), &backend.url(), "", "{{DIR}}/state")).await;
        let mut b = Browser::new(gw.http_addr());
        let r = b.login(&url(&gw, "admins.localtest", "/"), "alice").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{alg}: {}\n{}",
            r.text(),
            idp.logs()
        );
        assert_eq!(
            Echo(r.json()).header("x-authentik-username").as_deref(),
            Some("alice"),
            "{alg}"
        );
    }
}

#[tokio::test]
async fn reload_keeps_sessions_and_applies_new_policies() {
    let idp = Idp::start().await;
    let backend = Backend::echo().await;
    let dir = "{{DIR}}/state";
    let gw = gateway(&config(idp.issuer(), &backend.url(), "", dir)).await;
    let alice = sign_in(&gw, "alice").await;
    let bob = sign_in(&gw, "bob").await;

    let changed = config(idp.issuer(), &backend.url(), "", dir).replace(
        "auth = { oidc = \"authentik\" }",
        "auth = { oidc = \"authentik\", groups = [\"users\"], emails = [\"alice@example.com\"] }\n\n[[route]]\nhost = \"new.localtest\"\nrespond = { status = 200, body = \"new\" }\nauth = { oidc = \"authentik\", groups = [\"admins\"] }",
    );
    gw.reload_with(&changed).await;
    assert_eq!(
        api(&gw, "app.localtest", &alice).await.status,
        StatusCode::OK
    );
    assert_eq!(api(&gw, "app.localtest", &bob).await.status, StatusCode::OK);
    assert_eq!(
        api(&gw, "new.localtest", &alice).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api(&gw, "new.localtest", &bob).await.status,
        StatusCode::FORBIDDEN
    );

    // A config naming an unknown provider is refused; nothing changes.
    let broken = changed.replace(
        "oidc = \"authentik\", groups = [\"admins\"] }",
        "oidc = \"gone\", groups = [\"admins\"] }",
    );
    gw.rewrite_config(&broken);
    let (status, v) = gw.reload().await;
    assert_ne!(status, StatusCode::OK, "{v}");
    assert_eq!(
        api(&gw, "new.localtest", &alice).await.status,
        StatusCode::OK
    );

    // Logins still work after the reload (the provider was kept).
    let mut b = Browser::new(gw.http_addr());
    let r = b.login(&url(&gw, "admins.localtest", "/"), "alice").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn https_cookies_are_secure_host_only_or_domain_scoped() {
    let idp = Idp::start().await;
    let backend = Backend::echo().await;
    let toml = format!(
        r#"
[server]
http = "{{{{HTTP}}}}"
https = "{{{{HTTPS}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"

[[certificate]]
hosts = ["app.test", "shared.example.test"]
self_signed = true

[oidc.authentik]
issuer = "{issuer}"
client_id = "portcullis"
client_secret_file = "secret"

[oidc.shared]
issuer = "{issuer}"
client_id = "portcullis"
client_secret_file = "secret"
cookie_domain = "example.test"
session_ttl = "1h"

[[route]]
host = "app.test"
upstream = "{up}"
auth = {{ oidc = "authentik" }}

[[route]]
host = "shared.example.test"
upstream = "{up}"
auth = {{ oidc = "shared" }}
"#,
        issuer = idp.issuer(),
        up = backend.url()
    );
    let gw = gateway(&toml).await;
    let https = gw.https_addr().port();

    // Plain HTTP goes to HTTPS before any sign-in.
    let r = gw
        .client()
        .get_with(
            &format!("http://app.test:{}/x", gw.http_addr().port()),
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.header("location"),
        Some(format!("https://app.test:{https}/x").as_str())
    );

    let mut b = Browser::tls(gw.https_addr());
    let first = b.get(&format!("https://app.test:{https}/x")).await;
    assert_eq!(first.status, StatusCode::FOUND);
    let login_cookie = first.header("set-cookie").unwrap();
    assert!(
        login_cookie.starts_with("__Host-portcullis-login=")
            && login_cookie.contains("; Secure")
            && login_cookie.contains("; HttpOnly")
            && login_cookie.contains("; Path=/")
            && !login_cookie.contains("Domain="),
        "{login_cookie}"
    );
    let loc = first.header("location").unwrap().to_string();
    assert!(
        loc.contains(&format!(
            "redirect_uri=https%3A%2F%2Fapp.test%3A{https}%2F.portcullis%2Fcallback"
        )),
        "{loc}"
    );
    let r = b.login(&loc, "alice").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(Echo(r.json()).uri(), "/x");
    let set = b
        .raw_cookie("__Host-portcullis")
        .expect("__Host- session cookie");
    let attrs: Vec<&str> = set.split("; ").skip(1).collect();
    for want in [
        "Path=/",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
        "Max-Age=43200",
    ] {
        assert!(attrs.contains(&want), "{want} missing: {set}");
    }
    assert!(!set.contains("Domain"), "{set}");
    assert_eq!(b.cookie("app.test", COOKIE), None);

    // cookie_domain: one cookie for every subdomain.
    let r = b
        .login(&format!("https://shared.example.test:{https}/"), "alice")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let set = b.raw_cookie(COOKIE).expect("domain session cookie");
    let attrs: Vec<&str> = set.split("; ").skip(1).collect();
    for want in [
        "Path=/",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
        "Domain=example.test",
        "Max-Age=3600",
    ] {
        assert!(attrs.contains(&want), "{want} missing: {set}");
    }
}

#[tokio::test]
async fn secure_cookies_over_plain_http_are_refused_not_looped() {
    let idp = Idp::start().await;
    let backend = Backend::echo().await;
    let toml = config(idp.issuer(), &backend.url(), "", "{{DIR}}/state")
        .replace("insecure_cookies = true", "");
    let gw = gateway(&toml).await;
    let mut b = Browser::new(gw.http_addr());
    let r = b.get(&url(&gw, "app.localtest", "/")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("needs HTTPS"), "{}", r.text());
}
