//! Sign-in behaviour as a real browser sees it: headless Chromium over
//! WebDriver (tests/support/browser.rs), HTTPS with HTTP/2 to the gateway,
//! the Node OIDC provider for signing in.
//!
//! One provider, echo backend, gateway and chromedriver serve every test in
//! this file (started by the first test that needs them, on a thread of
//! their own, stopped when the last test is done); each test has its own
//! browser, so cookies and caches never leak between tests.

mod support;

use std::sync::{Arc, Mutex, Weak};

use serde_json::{Value, json};
use support::backend::Backend;
use support::browser::{Driver, Session, spki_pin};
use support::gateway::Gateway;
use support::idp::{CLIENT_SECRET, Idp};
use support::tls::TestCa;

/// Everything the browser tests share.
struct Env {
    https_port: u16,
    idp_url: String,
    pin: String,
    driver: Driver,
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

impl Env {
    fn start() -> Env {
        let driver = Driver::start();
        let ca = TestCa::new();
        let leaf = ca.leaf(&["app.test", "bob.test", "public.test", "other.test"]);
        let pin = spki_pin(&leaf.cert_pem);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime for the shared peers");
            rt.block_on(async move {
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
hosts = ["app.test", "bob.test", "public.test", "other.test"]
cert_file = "site.pem"
key_file = "site.key"

[oidc.authentik]
issuer = "{issuer}"
client_id = "portcullis"
client_secret_file = "secret"

[[route]]
host = "app.test"
upstream = "{up}"
auth = {{ oidc = "authentik" }}

[[route]]
host = "bob.test"
upstream = "{up}"
auth = {{ oidc = "authentik", emails = ["bob@example.org"] }}

[[route]]
host = "public.test"
upstream = "{up}"

[[route]]
host = "other.test"
respond = {{ status = 200, content_type = "text/html", body = "<!doctype html><title>Another site</title><p>Another site</p>" }}
"#,
                    issuer = idp.issuer(),
                    up = backend.url(),
                );
                let gw = Gateway::builder(&toml)
                    .file("secret", CLIENT_SECRET)
                    .file("site.pem", &leaf.cert_pem)
                    .file("site.key", &leaf.key_pem)
                    .start()
                    .await;
                let _ = ready_tx.send((gw.https_addr().port(), idp.url("")));
                let _ = stop_rx.await;
                drop(gw);
                drop(backend);
                drop(idp);
            });
        });
        let (https_port, idp_url) = ready_rx
            .recv()
            .expect("the shared peers did not start (see the panic above)");
        Env {
            https_port,
            idp_url,
            pin,
            driver,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `https://HOST:PORT{path}` on the gateway.
    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https_port)
    }

    async fn browser(&self) -> Session {
        self.driver.session(&self.pin).await
    }

    /// Signs `b` in as `user` at `url` (a protected page): the gateway
    /// sends the browser to the provider, whose login form is filled in.
    async fn sign_in(&self, b: &Session, url: &str, user: &str) {
        b.goto(url).await;
        b.wait_for_url(&self.idp_url).await;
        b.wait_for(
            "the provider's login form",
            "return document.querySelector('form#login input[name=password]');",
        )
        .await;
        b.exec(
            "const f = document.forms.login;\
             f.login.value = arguments[0]; f.password.value = arguments[0] + '-pw';\
             f.submit(); return true;",
            json!([user]),
        )
        .await;
        b.wait_for_url(url).await;
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The echo backend's answer shown in the browser (Chromium shows JSON as
/// text).
async fn echo(b: &Session) -> Value {
    let text = b.text().await;
    let at = b.url().await;
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("not the backend's echo at {at} ({e}):\n{text}"))
}

/// The values of one request header in an echo, in order.
fn header_all(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h[0].as_str() == Some(name))
        .filter_map(|h| h[1].as_str().map(String::from))
        .collect()
}

/// Puts a link to `href` on the current page and clicks it, the way a user
/// follows a link (`Referer`, `Sec-Fetch-Site` as for a real link).
async fn click_link_to(b: &Session, href: &str) {
    b.exec(
        "const a = document.createElement('a'); a.id = 'test-link'; a.href = arguments[0];\
         a.textContent = 'go';\
         a.style.cssText = 'position:fixed;top:0;left:0;z-index:2147483647;background:#fff;padding:8px';\
         document.body.append(a); return true;",
        json!([href]),
    )
    .await;
    let a = b.find("#test-link").await.expect("the link just added");
    b.click(&a).await;
}

#[tokio::test]
async fn http2_cookie_crumbs_reach_the_backend_as_one_line() {
    let env = env();
    let b = env.browser().await;
    // A public route: the application's own cookies, no sign-in.
    b.goto(&env.url("public.test", "/")).await;
    b.exec(
        "document.cookie = 'app_a=1; path=/'; document.cookie = 'app_b=2; path=/'; return true;",
        json!([]),
    )
    .await;
    b.goto(&env.url("public.test", "/page")).await;
    let proto = b
        .exec(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol;",
            json!([]),
        )
        .await;
    assert_eq!(
        proto, "h2",
        "the browser must reach the gateway over HTTP/2"
    );
    let seen = echo(&b).await;
    let lines = header_all(&seen, "cookie");
    assert_eq!(
        lines.len(),
        1,
        "one Cookie line on the HTTP/1.1 hop: {lines:?}"
    );
    let pairs: Vec<&str> = lines[0].split("; ").collect();
    assert!(
        pairs.contains(&"app_a=1") && pairs.contains(&"app_b=2"),
        "{lines:?}"
    );

    // A protected route: the session cookie is sent too, and removed.
    let app = env.url("app.test", "/");
    env.sign_in(&b, &app, "alice").await;
    b.exec(
        "document.cookie = 'app_a=1; path=/'; document.cookie = 'app_b=2; path=/'; return true;",
        json!([]),
    )
    .await;
    b.goto(&env.url("app.test", "/page")).await;
    let lines = header_all(&echo(&b).await, "cookie");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let pairs: Vec<&str> = lines[0].split("; ").collect();
    assert!(
        pairs.contains(&"app_a=1") && pairs.contains(&"app_b=2"),
        "{lines:?}"
    );
    assert!(!lines[0].contains("portcullis"), "{lines:?}");
}

#[tokio::test]
async fn back_after_logout_does_not_show_the_signed_in_page() {
    let env = env();
    let b = env.browser().await;
    let page = env.url("app.test", "/account?tab=1");
    env.sign_in(&b, &page, "alice").await;
    let first = echo(&b).await;
    let first_id = header_all(&first, "x-request-id");
    assert_eq!(first_id.len(), 1, "{first}");

    // Sign out with a link on the page, then press Back.
    click_link_to(&b, "/.portcullis/logout").await;
    b.wait_for_url(&env.url("app.test", "/.portcullis/logged-out"))
        .await;
    b.back().await;
    // Either a fresh request (which, signed out, goes to the provider) or
    // the page again: never the page as it was before signing out.
    let at = b
        .wait_for(
            "the page after Back",
            "return document.readyState === 'complete' ? location.href : null;",
        )
        .await;
    let at = at.as_str().unwrap_or_default().to_string();
    if at.starts_with(&page) {
        // The same document kept in memory still has the link added above;
        // one from the HTTP cache has the old request id.
        let kept = b.find("#test-link").await.is_some();
        let again = b.text().await;
        let cached = serde_json::from_str::<Value>(again.lines().next().unwrap_or(""))
            .map(|v| header_all(&v, "x-request-id") == first_id)
            .unwrap_or(false);
        assert!(
            !kept && !cached,
            "Back showed the signed-in page from the browser's cache:\n{again}"
        );
    }
    b.wait_for_url(&env.idp_url).await;
}

#[tokio::test]
async fn signed_in_pages_are_private_to_the_browser() {
    let env = env();
    let b = env.browser().await;
    env.sign_in(&b, &env.url("app.test", "/"), "alice").await;
    let cache_control = |path: &'static str| {
        let b = &b;
        async move {
            b.exec_async(
                "const done = arguments[arguments.length - 1];\
                 fetch(arguments[0]).then(r => done(r.headers.get('cache-control')));",
                json!([path]),
            )
            .await
        }
    };
    // No Cache-Control from the backend: the gateway adds `private`.
    assert_eq!(cache_control("/plain").await, "private");
    // The backend's own is left alone.
    assert_eq!(
        cache_control("/own?h=cache-control:no-store").await,
        "no-store"
    );
    // Public routes are not the gateway's business.
    b.goto(&env.url("public.test", "/")).await;
    assert_eq!(cache_control("/plain").await, Value::Null);
}

#[tokio::test]
async fn signed_out_page_links_back_to_where_the_user_was() {
    let env = env();
    let b = env.browser().await;
    let page = env.url("app.test", "/reports/7?view=full");
    env.sign_in(&b, &page, "bob").await;
    click_link_to(&b, "/.portcullis/logout").await;
    b.wait_for_url(&env.url("app.test", "/.portcullis/logged-out"))
        .await;
    let link = b
        .find("a[href]")
        .await
        .expect("the signed-out page links back to the site");
    assert_eq!(
        b.attribute(&link, "href").await.as_deref(),
        Some("/reports/7?view=full")
    );

    // A link back never leaves the host, whatever the query says.
    b.goto(&env.url(
        "app.test",
        "/.portcullis/logged-out?state=%2F%2Fevil.example%2Fx",
    ))
    .await;
    let link = b.find("a[href]").await.expect("a link back");
    assert_eq!(
        b.attribute(&link, "href").await.as_deref(),
        Some("/evil.example/x")
    );
}

#[tokio::test]
async fn cross_site_logout_link_asks_before_signing_out() {
    let env = env();
    let b = env.browser().await;
    let app = env.url("app.test", "/");
    env.sign_in(&b, &app, "alice").await;

    // Another site links to our logout: the click shows a confirmation,
    // and the session goes on.
    b.goto(&env.url("other.test", "/")).await;
    click_link_to(&b, &env.url("app.test", "/.portcullis/logout")).await;
    b.wait_for_url(&env.url("app.test", "/.portcullis/logout"))
        .await;
    if b.find("form[method=post] button").await.is_none() {
        panic!("no confirmation page; it shows:\n{}", b.text().await);
    }
    b.goto(&env.url("app.test", "/still")).await;
    b.wait_for_url(&env.url("app.test", "/still")).await;
    assert_eq!(echo(&b).await["uri"], "/still", "still signed in");

    // Confirming on our page signs out.
    b.goto(&env.url("other.test", "/")).await;
    click_link_to(&b, &env.url("app.test", "/.portcullis/logout")).await;
    b.wait_for_url(&env.url("app.test", "/.portcullis/logout"))
        .await;
    let button = b
        .find("form[method=post] button")
        .await
        .expect("the confirmation page again");
    b.click(&button).await;
    b.wait_for_url(&env.url("app.test", "/.portcullis/logged-out"))
        .await;
    b.goto(&app).await;
    b.wait_for_url(&env.idp_url).await;
}

#[tokio::test]
async fn login_cookie_is_gone_after_the_callback() {
    let env = env();
    let b = env.browser().await;
    let app = env.url("app.test", "/");
    env.sign_in(&b, &app, "alice").await;
    let names: Vec<String> = b.cookies().await.into_iter().map(|c| c.name).collect();
    assert!(
        names.iter().any(|n| n == "__Host-portcullis"),
        "signed in: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "__Host-portcullis-login"),
        "the sign-in binding cookie outlived the sign-in: {names:?}"
    );

    // A logout typed into the address bar (no Sec-Fetch-Site from a site)
    // still signs out.
    b.goto(&env.url("app.test", "/.portcullis/logout")).await;
    b.wait_for_url(&env.url("app.test", "/.portcullis/logged-out"))
        .await;
    let names: Vec<String> = b.cookies().await.into_iter().map(|c| c.name).collect();
    assert!(
        !names.iter().any(|n| n.starts_with("__Host-portcullis")),
        "{names:?}"
    );
}

#[tokio::test]
async fn forbidden_page_links_to_sign_out() {
    let env = env();
    let b = env.browser().await;
    // bob.test lets only bob in; alice gets the 403 page.
    let page = env.url("bob.test", "/");
    b.goto(&page).await;
    b.wait_for_url(&env.idp_url).await;
    b.wait_for(
        "the provider's login form",
        "return document.querySelector('form#login input[name=password]');",
    )
    .await;
    b.exec(
        "const f = document.forms.login; f.login.value = 'alice';\
         f.password.value = 'alice-pw'; f.submit(); return true;",
        json!([]),
    )
    .await;
    b.wait_for_url(&page).await;
    assert!(b.title().await.starts_with("403"), "{}", b.text().await);
    let link = b
        .find("a[href='/.portcullis/logout']")
        .await
        .unwrap_or_else(|| panic!("no sign-out link on the 403 page"));
    b.click(&link).await;
    b.wait_for_url(&env.url("bob.test", "/.portcullis/logged-out"))
        .await;
}

/// A gateway (plain HTTP, insecure cookies) whose provider cannot be
/// reached, with one protected route `app.localtest`.
async fn gateway_with_dead_provider() -> Gateway {
    let dead = support::idp::free_port();
    Gateway::builder(&format!(
        r#"
[server]
http = "{{{{HTTP}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"

[oidc.authentik]
issuer = "http://127.0.0.1:{dead}/application/o/portcullis/"
client_id = "portcullis"
client_secret_file = "secret"
insecure_cookies = true

[[route]]
host = "app.localtest"
respond = {{ status = 200, body = "app" }}
auth = {{ oidc = "authentik" }}
"#
    ))
    .file("secret", CLIENT_SECRET)
    .start()
    .await
}

/// `portcullis_auth_events_total{event="logout"}` from the admin listener.
async fn logouts(gw: &Gateway) -> u64 {
    let text = gw.client().get(&gw.admin_url("/metrics")).await.text();
    text.lines()
        .find(|l| l.starts_with("portcullis_auth_events_total{event=\"logout\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Plain HTTP: the confirm page for a cross-site logout ended nothing, so
/// it is not counted as a logout; a logout from the site itself is.
#[tokio::test]
async fn cross_site_logout_confirm_page_is_not_counted_as_a_logout() {
    let gw = gateway_with_dead_provider().await;
    let url = "http://app.localtest/.portcullis/logout";
    let r = gw
        .client()
        .get_with(
            url,
            &[("sec-fetch-site", "cross-site"), ("accept", "text/html")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("<form method=\"post\""), "{}", r.text());
    assert!(r.header("set-cookie").is_none(), "nothing ended");
    assert_eq!(logouts(&gw).await, 0);
    let r = gw
        .client()
        .get_with(url, &[("sec-fetch-site", "same-origin")])
        .await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(logouts(&gw).await, 1);
}

/// Plain HTTP: a provider that cannot be reached makes sign-in unavailable;
/// the 503 says when to try again.
#[tokio::test]
async fn sign_in_unavailable_says_when_to_retry() {
    let gw = gateway_with_dead_provider().await;
    let r = gw
        .client()
        .get_with(
            "http://app.localtest/",
            &[("accept", "text/html,application/xhtml+xml")],
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let retry: u64 = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on the 503"))
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry > 0);
}
