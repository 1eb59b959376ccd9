//! TLS termination through the real gateway: certificates from files, SNI,
//! ALPN, redirects from HTTP, HSTS, misdirected requests, and config checks
//! of certificate files.

mod support;

use std::time::Duration;

use support::backend::Backend;
use support::gateway::Gateway;
use support::tls::{TestCa, get, handshake, roots_from_pem};

struct Setup {
    gw: Gateway,
    ca: TestCa,
    _backend: Backend,
}

async fn setup(extra_routes: &str) -> Setup {
    let ca = TestCa::new();
    let app = ca.leaf(&["app.test"]);
    let other = ca.leaf(&["other.test", "alias.test"]);
    let backend = Backend::echo().await;
    let toml = format!(
        r#"
[server]
http = "{{{{HTTP}}}}"
https = "{{{{HTTPS}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"

[[certificate]]
hosts = ["app.test"]
cert_file = "app.pem"
key_file = "app.key"

[[certificate]]
hosts = ["other.test", "alias.test"]
cert_file = "other.pem"
key_file = "other.key"

[[route]]
host = "app.test"
upstream = "{up}"

[[route]]
host = "other.test"
respond = {{ body = "other" }}

[[route]]
host = "alias.test"
respond = {{ body = "alias" }}
{extra_routes}
"#,
        up = backend.url()
    );
    let gw = Gateway::builder(&toml)
        .file("app.pem", &app.cert_pem)
        .file("app.key", &app.key_pem)
        .file("other.pem", &other.cert_pem)
        .file("other.key", &other.key_pem)
        .start()
        .await;
    Setup {
        gw,
        ca,
        _backend: backend,
    }
}

#[tokio::test]
async fn serves_the_certificate_for_each_sni_and_negotiates_h2() {
    let s = setup("").await;
    let roots = || roots_from_pem(&s.ca.pem());

    let hs = handshake(
        s.gw.https_addr(),
        "app.test",
        roots(),
        &[b"h2", b"http/1.1"],
    )
    .await
    .expect("handshake for app.test verifies against the test CA");
    assert_eq!(hs.alpn.as_deref(), Some(&b"h2"[..]), "h2 chosen by ALPN");
    // The client lists AES-256-GCM first; the server's order (Mozilla
    // intermediate) wins.
    assert_eq!(
        hs.suite,
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
        "server cipher preference"
    );
    let r = get(hs, "app.test", "/hello").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    let echo: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let headers = echo["headers"].to_string();
    assert!(
        headers.contains("\"x-forwarded-proto\",\"https\""),
        "{headers}"
    );

    let hs = handshake(s.gw.https_addr(), "other.test", roots(), &[b"http/1.1"])
        .await
        .expect("handshake for other.test");
    assert_eq!(hs.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let r = get(hs, "other.test", "/").await;
    assert_eq!(&r.body[..], b"other");
    assert_eq!(r.version, http::Version::HTTP_11);
}

#[tokio::test]
async fn unknown_sni_is_refused_with_unrecognized_name() {
    let s = setup("").await;
    let err = handshake(
        s.gw.https_addr(),
        "nobody.test",
        roots_from_pem(&s.ca.pem()),
        &[],
    )
    .await
    .expect_err("no certificate may be served for an unknown name");
    assert!(
        err.to_lowercase().contains("unrecognisedname")
            || err.to_lowercase().contains("unrecognized"),
        "expected an unrecognized_name alert, got: {err}"
    );
}

#[tokio::test]
async fn http_redirects_to_https_except_for_opted_out_routes() {
    let s = setup(
        r#"
[[route]]
host = "plain.test"
https_redirect = false
respond = { body = "plain ok" }

[[route]]
host = "alias.test"
path = "/denied"
deny_ips = ["127.0.0.1"]
respond = { body = "never" }
"#,
    )
    .await;
    // Address rules come before the redirect: a denied client learns
    // nothing more over plain HTTP than over HTTPS.
    let r =
        s.gw.client()
            .get_with(&s.gw.url("/denied"), &[("host", "alias.test")])
            .await;
    assert_eq!(r.status, 403, "{:?}", r.header("location"));
    let port = s.gw.https_addr().port();
    let r =
        s.gw.client()
            .get_with(&s.gw.url("/a/b?c=d"), &[("host", "app.test")])
            .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://app.test:{port}/a/b?c=d").as_str())
    );
    assert!(
        r.header("strict-transport-security").is_none(),
        "HSTS is never sent over plain HTTP"
    );

    // Logout needs the Secure session cookie: it goes to HTTPS first.
    let r =
        s.gw.client()
            .get_with(&s.gw.url("/.portcullis/logout"), &[("host", "app.test")])
            .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://app.test:{port}/.portcullis/logout").as_str())
    );

    let r =
        s.gw.client()
            .get_with(&s.gw.url("/"), &[("host", "plain.test")])
            .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "plain ok");
}

#[tokio::test]
async fn hsts_on_https_by_default_and_per_route() {
    let s = setup(
        r#"
[[route]]
host = "app.test"
path = "/nohsts"
hsts = false
respond = { body = "x" }

[[route]]
host = "app.test"
path = "/strict"
hsts = { max_age = "730d", include_subdomains = true, preload = true }
respond = { body = "x" }
"#,
    )
    .await;
    let cases = [
        ("/", Some("max-age=31536000")),
        ("/nohsts", None),
        (
            "/strict",
            Some("max-age=63072000; includeSubDomains; preload"),
        ),
    ];
    for (path, want) in cases {
        let hs = handshake(
            s.gw.https_addr(),
            "app.test",
            roots_from_pem(&s.ca.pem()),
            &[],
        )
        .await
        .unwrap();
        let r = get(hs, "app.test", path).await;
        let got = r
            .headers
            .get("strict-transport-security")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(got.as_deref(), want, "{path}");
    }
}

#[tokio::test]
async fn a_host_the_connection_certificate_does_not_cover_gets_421() {
    let s = setup("").await;
    // Connection made for app.test, request for other.test: misdirected.
    let hs = handshake(
        s.gw.https_addr(),
        "app.test",
        roots_from_pem(&s.ca.pem()),
        &[],
    )
    .await
    .unwrap();
    let r = get(hs, "other.test", "/").await;
    assert_eq!(r.status, 421);

    // Same certificate covers both names: connection reuse is fine.
    let hs = handshake(
        s.gw.https_addr(),
        "other.test",
        roots_from_pem(&s.ca.pem()),
        &[],
    )
    .await
    .unwrap();
    let r = get(hs, "alias.test", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"alias");
}

#[tokio::test]
async fn certificate_problems_are_config_errors_with_locations() {
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["b.test"]);
    let toml = r#"
[server]
http = "{{HTTP}}"
https = "{{HTTPS}}"

[[certificate]]
hosts = ["a.test"]
cert_file = "a.pem"
key_file = "b.key"

[[certificate]]
hosts = ["c.test"]
cert_file = "missing.pem"
key_file = "missing.key"

[[route]]
host = "a.test"
respond = {}

[[route]]
host = "*.wild.test"
respond = {}
"#;
    let err = Gateway::builder(toml)
        .file("a.pem", &a.cert_pem)
        .file("b.key", &b.key_pem)
        .try_start()
        .await
        .err()
        .expect("bad certificates must be refused");
    assert!(err.contains("does not match"), "{err}");
    assert!(err.contains("missing.pem"), "{err}");
    assert!(
        err.contains("certificate[1]") && err.contains("certificate[2]"),
        "{err}"
    );
    assert!(
        err.contains("DNS-01"),
        "wildcard without a certificate explains why: {err}"
    );
    // Every error carries a line number.
    for line in err.lines().filter(|l| l.contains("portcullis.toml:")) {
        let after = line.split("portcullis.toml:").nth(1).unwrap();
        assert!(after.chars().next().unwrap().is_ascii_digit(), "{line}");
    }
}

#[tokio::test]
async fn self_signed_certificates_are_generated_for_local_use() {
    let gw = Gateway::start(
        r#"
[server]
http = "{{HTTP}}"
https = "{{HTTPS}}"

[[certificate]]
hosts = ["local.test"]
self_signed = true

[[route]]
host = "local.test"
respond = { body = "local" }
"#,
    )
    .await;
    // Not trusted by our roots, but it is served for the name.
    let err = handshake(
        gw.https_addr(),
        "local.test",
        roots_from_pem(&TestCa::new().pem()),
        &[],
    )
    .await
    .expect_err("a self-signed certificate is not trusted");
    assert!(
        err.contains("UnknownIssuer") || err.to_lowercase().contains("unknown"),
        "{err}"
    );
    let _ = Duration::ZERO;
}
