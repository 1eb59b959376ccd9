//! Wildcard certificates by ACME DNS-01 against real peers: a BIND 9
//! `named` on loopback is the authoritative server (shared by the tests of
//! this file) and Pebble resolves through it, so the CA validates records
//! the gateway really wrote. Providers: rfc2136 (TSIG), exec (a script
//! calling nsupdate) and cloudflare (against a local stand-in of its API,
//! which applies changes to the same BIND).

mod support;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use support::gateway::Gateway;
use support::named::{KEY_NAME, Named};
use support::pebble::{Pebble, PebbleOptions};
use support::tls::{free_port, get, handshake, roots_from_pem};
use support::wait_for;

static NAMED: Mutex<Weak<Named>> = Mutex::new(Weak::new());

/// The shared named, started if no running test holds it.
fn named() -> Arc<Named> {
    let mut slot = NAMED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = slot.upgrade() {
        return n;
    }
    let n = Arc::new(Named::start());
    *slot = Arc::downgrade(&n);
    n
}

async fn pebble_on(named: &Named, validity: Option<u64>) -> Pebble {
    let mut o = PebbleOptions::new(free_port(), free_port()).dns_server(named.addr());
    if let Some(v) = validity {
        o = o.validity_secs(v);
    }
    Pebble::start(o).await
}

/// `[server]` + `[acme]` with the given `dns = {...}` line and extra
/// `[acme]` keys, then the routes.
fn config(pebble: &Pebble, dns: &str, acme_extra: &str, routes: &[&str]) -> String {
    let mut s = format!(
        r#"
[server]
http = "{{{{HTTP}}}}"
https = "{{{{HTTPS}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"

[acme]
directory = "{dir}"
ca_file = "{ca}"
retry_min = "1s"
retry_max = "4s"
dns = {dns}
{acme_extra}
"#,
        dir = pebble.directory_url(),
        ca = pebble.ca_file().display(),
    );
    for h in routes {
        s.push_str(&format!(
            "\n[[route]]\nhost = \"{h}\"\nrespond = {{ body = \"hello from {h}\" }}\n"
        ));
    }
    s
}

fn rfc2136(named: &Named, zone: &str) -> String {
    format!(
        r#"{{ provider = "rfc2136", server = "{}", zone = "{zone}.", tsig_key_name = "{KEY_NAME}", tsig_algorithm = "hmac-sha256", tsig_secret_file = "tsig.key" }}"#,
        named.addr()
    )
}

async fn certificates_view(gw: &Gateway) -> serde_json::Value {
    support::client::TestClient::to(gw.admin_addr())
        .get(&gw.admin_url("/certificates"))
        .await
        .json()
}

fn status_of(view: &serde_json::Value, host: &str) -> Option<serde_json::Value> {
    view["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["host"] == host)
        .cloned()
}

/// Waits for a served certificate for `sni` chaining to Pebble's root;
/// returns its serial.
async fn wait_served(gw: &Gateway, sni: &str, pebble: &Pebble, secs: u64) -> String {
    let root = pebble.issuing_root_pem().await;
    let addr = gw.https_addr();
    let hs = wait_for(
        &format!("a certificate for {sni} from Pebble"),
        Duration::from_secs(secs),
        || {
            let root = root.clone();
            async move { handshake(addr, sni, roots_from_pem(&root), &[]).await.ok() }
        },
    )
    .await;
    let serial = hs.leaf_serial();
    let r = get(hs, sni, "/").await;
    assert_eq!(r.status, 200);
    serial
}

/// Waits until `/certificates` shows an error for `host`; returns it.
async fn wait_error(gw: &Gateway, host: &str) -> (String, serde_json::Value) {
    wait_for(
        &format!("an ACME error for {host}"),
        Duration::from_secs(60),
        || async move {
            let view = certificates_view(gw).await;
            let s = status_of(&view, host)?;
            Some((s["last_error"].as_str()?.to_string(), s))
        },
    )
    .await
}

#[tokio::test]
async fn wildcard_and_apex_issued_by_rfc2136_served_records_removed_and_renewed() {
    let named = named();
    let pebble = pebble_on(&named, Some(40)).await;
    let toml = config(
        &pebble,
        &rfc2136(&named, "example.test"),
        r#"propagation_timeout = "20s""#,
        &["*.example.test", "example.test"],
    );
    let gw = Gateway::builder(&toml)
        .file("tsig.key", named.key_file_text())
        .start()
        .await;

    // One certificate, *.example.test + example.test, serves both.
    let a = wait_served(&gw, "a.example.test", &pebble, 90).await;
    let apex = wait_served(&gw, "example.test", &pebble, 5).await;
    assert_eq!(a, apex, "the apex is served by the wildcard's certificate");
    let view = certificates_view(&gw).await;
    let w = status_of(&view, "*.example.test").expect("the wildcard in /certificates");
    assert!(w["last_error"].is_null(), "{w}");
    let names = w["names"].to_string();
    assert!(
        names.contains("*.example.test") && names.contains("\"example.test\""),
        "{names}"
    );
    // Stored under a glob-free file name.
    let certs = std::fs::read_dir(gw.dir().join("state/acme"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("certs");
    assert!(certs.join("_wildcard_.example.test.crt").is_file());

    // The challenge records are gone.
    wait_for(
        "the _acme-challenge TXT records to be removed",
        Duration::from_secs(10),
        || async {
            named
                .txt("_acme-challenge.example.test")
                .is_empty()
                .then_some(())
        },
    )
    .await;

    // Renewal of the short-lived certificate takes the same path.
    let root = pebble.issuing_root_pem().await;
    let addr = gw.https_addr();
    let renewed = wait_for(
        "a renewed wildcard certificate",
        Duration::from_secs(60),
        || {
            let root = root.clone();
            let a = a.clone();
            async move {
                let hs = handshake(addr, "b.example.test", roots_from_pem(&root), &[])
                    .await
                    .ok()?;
                (hs.leaf_serial() != a).then(|| hs.leaf_serial())
            }
        },
    )
    .await;
    assert_ne!(renewed, a);
    assert!(named.txt("_acme-challenge.example.test").is_empty());
}

#[tokio::test]
async fn dns_failures_read_differently_and_back_off() {
    let named = named();
    let pebble = pebble_on(&named, None).await;

    // Wrong TSIG secret.
    let toml = config(
        &pebble,
        &rfc2136(&named, "example.test"),
        "",
        &["*.example.test"],
    );
    let gw = Gateway::builder(&toml)
        .file(
            "tsig.key",
            "c2VjcmV0LXRoYXQtaXMtd3Jvbmctc2VjcmV0LXRoYXQtaXMtd3Jvbmc=\n",
        )
        .start()
        .await;
    let (err, st) = wait_error(&gw, "*.example.test").await;
    assert!(
        err.contains("wrong TSIG key") && err.contains("BADSIG"),
        "{err}"
    );
    assert!(
        err.contains("*.example.test") && err.contains("rfc2136"),
        "{err}"
    );
    assert!(err.contains("writing the TXT record"), "{err}");
    assert!(
        !err.contains("c2VjcmV0"),
        "the secret is never shown: {err}"
    );
    assert!(st["not_after"].is_null(), "no certificate: {st}");
    assert!(
        st["next_attempt"].as_i64().is_some(),
        "a retry is planned: {st}"
    );
    let addr = gw.https_addr();
    let root = pebble.issuing_root_pem().await;
    assert!(
        handshake(addr, "a.example.test", roots_from_pem(&root), &[])
            .await
            .is_err()
    );
    drop(gw);

    // Refused by the server's update policy.
    let gw = Gateway::builder(&config(
        &pebble,
        &rfc2136(&named, "refused.test"),
        "",
        &["*.refused.test"],
    ))
    .file("tsig.key", named.key_file_text())
    .start()
    .await;
    let (err, _) = wait_error(&gw, "*.refused.test").await;
    assert!(
        err.contains("update refused") && err.contains("REFUSED"),
        "{err}"
    );
    drop(gw);

    // A zone the server does not serve.
    let gw = Gateway::builder(&config(
        &pebble,
        &rfc2136(&named, "nothere.test"),
        "",
        &["*.nothere.test"],
    ))
    .file("tsig.key", named.key_file_text())
    .start()
    .await;
    let (err, _) = wait_error(&gw, "*.nothere.test").await;
    assert!(
        err.contains("zone not found") && err.contains("NOTAUTH"),
        "{err}"
    );
    drop(gw);

    // A hook that says it wrote the record but did not: propagation timeout.
    let gw = Gateway::builder(&config(
        &pebble,
        r#"{ provider = "exec", command = ["/bin/true"] }"#,
        &format!(
            "propagation_timeout = \"3s\"\nresolvers = [\"{}\"]",
            named.addr()
        ),
        &["*.hook.test"],
    ))
    .start()
    .await;
    let (err, _) = wait_error(&gw, "*.hook.test").await;
    assert!(err.contains("propagation timeout"), "{err}");
    assert!(err.contains("_acme-challenge.hook.test"), "{err}");
    // Backoff: the next attempt is after the first failure, not at once.
    let view = certificates_view(&gw).await;
    let st = status_of(&view, "*.hook.test").unwrap();
    assert!(st["next_attempt"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn exec_provider_with_an_nsupdate_script() {
    let named = named();
    let pebble = pebble_on(&named, None).await;
    let script = format!(
        r#"#!/bin/sh
# present|cleanup FQDN VALUE
set -e
case "$1" in present) op=add ;; cleanup) op=delete ;; *) echo "bad action $1" >&2; exit 2 ;; esac
printf 'server 127.0.0.1 {port}\nzone hook.test.\nupdate %s %s. 60 TXT "%s"\nsend\n' "$op" "$2" "$3" \
  | nsupdate -v -k "$(dirname "$0")/tsig.key"
"#,
        port = named.port
    );
    let toml = config(
        &pebble,
        r#"{ provider = "exec", command = ["/bin/sh", "{{DIR}}/hook.sh"] }"#,
        &format!(
            "propagation_timeout = \"20s\"\nresolvers = [\"{}\"]",
            named.addr()
        ),
        &["*.hook.test", "hook.test"],
    );
    let gw = Gateway::builder(&toml)
        .file("hook.sh", script)
        .file("tsig.key", named.key_file_text())
        .start()
        .await;
    wait_served(&gw, "x.hook.test", &pebble, 90).await;
    wait_served(&gw, "hook.test", &pebble, 5).await;
    wait_for(
        "the hook's records removed",
        Duration::from_secs(10),
        || async {
            named
                .txt("_acme-challenge.hook.test")
                .is_empty()
                .then_some(())
        },
    )
    .await;
}
