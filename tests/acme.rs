//! Automatic certificates against a real ACME server (Pebble): issuance by
//! HTTP-01 and TLS-ALPN-01, storage and reuse across restarts, hosts added
//! and removed by reload, renewal before expiry, and a CA outage during
//! renewal that keeps the old certificate serving.

mod support;

use std::path::Path;
use std::time::Duration;

use support::gateway::Gateway;
use support::pebble::{Pebble, PebbleOptions, acme_dir, mode};
use support::tls::{Handshake, free_port, get, handshake, roots_from_pem};
use support::{wait_for, within};

struct Ports {
    http: u16,
    https: u16,
}

fn ports() -> Ports {
    Ports {
        http: free_port(),
        https: free_port(),
    }
}

fn config(p: &Ports, state: &Path, pebble: &Pebble, challenge: &str, hosts: &[&str]) -> String {
    let mut s = format!(
        r#"
[server]
http = "127.0.0.1:{http}"
https = "127.0.0.1:{https}"
admin = "{{{{ADMIN}}}}"
state_dir = "{state}"

[acme]
email = "ops@example.com"
directory = "{dir}"
challenge = "{challenge}"
ca_file = "{ca}"
retry_min = "1s"
retry_max = "3s"
"#,
        http = p.http,
        https = p.https,
        state = state.display(),
        dir = pebble.directory_url(),
        ca = pebble.ca_file().display(),
    );
    for h in hosts {
        s.push_str(&format!(
            "\n[[route]]\nhost = \"{h}\"\nrespond = {{ body = \"hello from {h}\" }}\n"
        ));
    }
    s
}

/// Waits until `host` is served with a certificate that verifies against
/// Pebble's current issuing root.
async fn wait_for_cert(addr: std::net::SocketAddr, host: &str, pebble: &Pebble) -> Handshake {
    let root = pebble.issuing_root_pem().await;
    wait_for(
        &format!("a certificate for {host} that chains to Pebble's root"),
        Duration::from_secs(60),
        || {
            let root = root.clone();
            async move { handshake(addr, host, roots_from_pem(&root), &[]).await.ok() }
        },
    )
    .await
}

async fn certificates_view(gw: &Gateway) -> serde_json::Value {
    support::client::TestClient::to(gw.admin_addr())
        .get(&gw.admin_url("/certificates"))
        .await
        .json()
}

fn status_of<'a>(view: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    view["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["host"] == host)
        .unwrap_or_else(|| panic!("{host} not in {view}"))
}

#[tokio::test]
async fn http01_issues_stores_with_safe_modes_and_reuses_after_restart() {
    let p = ports();
    let pebble = Pebble::start(PebbleOptions::new(p.http, p.https)).await;
    let state = tempfile::tempdir().unwrap();
    let toml = config(&p, state.path(), &pebble, "http-01", &["a.example.com"]);

    let mut gw = Gateway::start(&toml).await;
    let hs = wait_for_cert(gw.https_addr(), "a.example.com", &pebble).await;
    let serial = hs.leaf_serial();
    let r = get(hs, "a.example.com", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"hello from a.example.com");

    // Stored with safe modes.
    let dir = acme_dir(state.path());
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("account.json")), 0o600);
    assert_eq!(mode(&dir.join("certs")), 0o700);
    assert_eq!(mode(&dir.join("certs/a.example.com.key")), 0o600);
    assert_eq!(mode(&dir.join("certs/a.example.com.crt")), 0o600);
    let account = std::fs::read(dir.join("account.json")).unwrap();

    let view = certificates_view(&gw).await;
    let a = status_of(&view, "a.example.com");
    assert_eq!(a["source"], "acme");
    assert!(a["last_error"].is_null(), "{a}");
    assert!(a["not_after"].as_i64().unwrap() > 0);

    // Restart: the stored certificate is served at once, no new order.
    within("graceful shutdown", Duration::from_secs(30), gw.shutdown())
        .await
        .unwrap();
    drop(gw);
    let gw = Gateway::start(&toml).await;
    let root = pebble.issuing_root_pem().await;
    let hs = handshake(gw.https_addr(), "a.example.com", roots_from_pem(&root), &[])
        .await
        .expect("stored certificate served immediately after restart");
    assert_eq!(
        hs.leaf_serial(),
        serial,
        "same certificate as before the restart"
    );

    // A host added by reload gets a certificate with the same account.
    gw.rewrite_config(&config(
        &p,
        state.path(),
        &pebble,
        "http-01",
        &["a.example.com", "b.example.com"],
    ));
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    let hs = wait_for_cert(gw.https_addr(), "b.example.com", &pebble).await;
    assert_eq!(
        &get(hs, "b.example.com", "/").await.body[..],
        b"hello from b.example.com"
    );
    assert_eq!(
        std::fs::read(dir.join("account.json")).unwrap(),
        account,
        "the stored account is reused, never replaced"
    );
    assert_eq!(
        std::fs::read_dir(state.path().join("acme"))
            .unwrap()
            .count(),
        1,
        "one account folder"
    );

    // A host removed by reload is no longer served.
    gw.rewrite_config(&config(
        &p,
        state.path(),
        &pebble,
        "http-01",
        &["a.example.com"],
    ));
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    let err = wait_for(
        "b.example.com to stop being served",
        Duration::from_secs(10),
        || {
            let root = root.clone();
            let addr = gw.https_addr();
            async move {
                handshake(addr, "b.example.com", roots_from_pem(&root), &[])
                    .await
                    .err()
            }
        },
    )
    .await;
    assert!(
        err.to_lowercase().contains("unrecognised") || err.contains("Unrecognised"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_alpn01_issuance() {
    let p = ports();
    let pebble = Pebble::start(PebbleOptions::new(p.http, p.https)).await;
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(
        &p,
        state.path(),
        &pebble,
        "tls-alpn-01",
        &["alpn.example.com"],
    ))
    .await;
    let hs = wait_for_cert(gw.https_addr(), "alpn.example.com", &pebble).await;
    let r = get(hs, "alpn.example.com", "/").await;
    assert_eq!(&r.body[..], b"hello from alpn.example.com");
}

#[tokio::test]
async fn renews_before_expiry_and_keeps_the_old_certificate_while_the_ca_is_down() {
    let p = ports();
    let mut pebble = Pebble::start(PebbleOptions::new(p.http, p.https).validity_secs(24)).await;
    let state = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&config(
        &p,
        state.path(),
        &pebble,
        "http-01",
        &["r.example.com"],
    ))
    .await;
    let addr = gw.https_addr();

    let first = wait_for_cert(addr, "r.example.com", &pebble).await;
    let first_serial = first.leaf_serial();
    let first_not_after = x509_not_after(&first);

    // Renewal happens before the first certificate expires.
    let root = pebble.issuing_root_pem().await;
    let second = wait_for("a renewed certificate", Duration::from_secs(40), || {
        let root = root.clone();
        let first_serial = first_serial.clone();
        async move {
            let hs = handshake(addr, "r.example.com", roots_from_pem(&root), &[])
                .await
                .ok()?;
            (hs.leaf_serial() != first_serial).then_some(hs)
        }
    })
    .await;
    assert!(
        now() < first_not_after,
        "renewed while the old certificate was still valid"
    );
    let second_serial = second.leaf_serial();

    // CA down: the next renewal fails, the error is visible, and the
    // current certificate keeps being served.
    pebble.stop();
    let err = wait_for(
        "a renewal error in the admin view",
        Duration::from_secs(40),
        || {
            let gw = &gw;
            async move {
                let view = certificates_view(gw).await;
                status_of(&view, "r.example.com")["last_error"]
                    .as_str()
                    .map(str::to_string)
            }
        },
    )
    .await;
    assert!(err.contains("r.example.com"), "{err}");
    let hs = handshake_no_verify(addr, "r.example.com").await;
    assert_eq!(
        hs, second_serial,
        "the old certificate keeps serving while the CA is down"
    );

    // CA back (fresh state, new root, our account forgotten by it): the
    // gateway recovers on its own.
    pebble.restart().await;
    let third = wait_for_cert(addr, "r.example.com", &pebble).await;
    assert_ne!(third.leaf_serial(), second_serial);
    let view = certificates_view(&gw).await;
    assert!(
        status_of(&view, "r.example.com")["last_error"].is_null(),
        "{view}"
    );
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn x509_not_after(hs: &Handshake) -> i64 {
    let (_, c) = x509_parser::parse_x509_certificate(hs.chain[0].as_ref()).unwrap();
    c.validity().not_after.timestamp()
}

/// The serial of whatever certificate is served for `sni`, trusted or not.
async fn handshake_no_verify(addr: std::net::SocketAddr, sni: &str) -> String {
    portcullis::install_crypto_provider();
    let cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(support::tls::AnyCert(
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap(),
            tcp,
        )
        .await
        .expect("handshake");
    support::tls::serial_of(&s.get_ref().1.peer_certificates().unwrap()[0])
}
