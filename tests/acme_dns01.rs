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
    let state = tempfile::tempdir().unwrap();
    let toml = config(
        &pebble,
        &rfc2136(&named, "example.test"),
        r#"propagation_timeout = "20s""#,
        &["*.example.test", "example.test"],
    )
    .replace("{{DIR}}/state", &state.path().display().to_string());
    let mut gw = Gateway::builder(&toml)
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
    let certs = std::fs::read_dir(state.path().join("acme"))
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
    wait_for(
        "the renewal's records removed",
        Duration::from_secs(10),
        || async {
            named
                .txt("_acme-challenge.example.test")
                .is_empty()
                .then_some(())
        },
    )
    .await;

    // After a restart the stored wildcard certificate is served at once.
    support::within("graceful shutdown", Duration::from_secs(30), gw.shutdown())
        .await
        .unwrap();
    drop(gw);
    let gw = Gateway::builder(&toml)
        .file("tsig.key", named.key_file_text())
        .start()
        .await;
    let hs = handshake(
        gw.https_addr(),
        "c.example.test",
        roots_from_pem(&root),
        &[],
    )
    .await
    .expect("the stored wildcard certificate is served right after a restart");
    assert_eq!(hs.leaf_serial(), renewed);
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

/// A stand-in for Cloudflare's API v4 (the real one cannot be reached
/// from tests): it checks the documented request shapes (zone lookup,
/// create TXT, delete TXT), answers in Cloudflare's envelope, errors
/// included, and applies changes to the test BIND with nsupdate so Pebble
/// can validate them.
mod cloudflare_stand_in {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use serde_json::{Value, json};

    pub const TOKEN: &str = "cf-test-token-0123456789";
    pub const ZONE_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";

    #[derive(Default)]
    pub struct State {
        /// "METHOD path" of every request, in order.
        pub log: Vec<String>,
        /// Requests that did not match the documented shapes.
        pub bad: Vec<String>,
        records: HashMap<String, (String, String)>,
        next: u32,
    }

    pub struct StandIn {
        pub addr: SocketAddr,
        pub state: Arc<Mutex<State>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for StandIn {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn answer(status: u16, v: Value) -> Response<String> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(v.to_string())
            .unwrap()
    }

    fn error(status: u16, code: i64, message: &str) -> Response<String> {
        answer(
            status,
            json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null}),
        )
    }

    async fn nsupdate(named_port: u16, key_file: &str, op: &str, name: &str, value: &str) {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("nsupdate")
            .args(["-k", key_file])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nsupdate (apt-get install -y bind9-dnsutils)");
        let script = format!(
            "server 127.0.0.1 {named_port}\nzone cf.test.\nupdate {op} {name}. 60 TXT \"{value}\"\nsend\n"
        );
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(script.as_bytes()).await.unwrap();
        drop(stdin);
        assert!(
            child.wait().await.unwrap().success(),
            "nsupdate {op} failed"
        );
    }

    pub async fn start(named_port: u16, key_file: String) -> StandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                let key_file = key_file.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        let key_file = key_file.clone();
                        async move { Ok::<_, Infallible>(handle(req, st, named_port, &key_file).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        StandIn { addr, state, task }
    }

    async fn handle(
        req: Request<Incoming>,
        st: Arc<Mutex<State>>,
        named_port: u16,
        key_file: &str,
    ) -> Response<String> {
        let method = req.method().clone();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let line = format!("{method} {path}");
        st.lock().unwrap().log.push(line.clone());
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let ctype = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        if auth != format!("Bearer {TOKEN}") {
            return error(403, 10000, "Authentication error");
        }
        let records_prefix = format!("/client/v4/zones/{ZONE_ID}/dns_records");
        if method == "GET" && path.starts_with("/client/v4/zones?name=") {
            let name = path.trim_start_matches("/client/v4/zones?name=");
            let result = if name == "cf.test" {
                json!([{"id": ZONE_ID, "name": "cf.test", "status": "active"}])
            } else {
                json!([])
            };
            return answer(
                200,
                json!({"success": true, "errors": [], "messages": [], "result": result}),
            );
        }
        if method == "POST" && path == records_prefix {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let name = v["name"].as_str().unwrap_or_default().to_string();
            let content = v["content"].as_str().unwrap_or_default().to_string();
            let shaped = ctype == "application/json"
                && v["type"] == "TXT"
                && name.ends_with("cf.test")
                && !content.is_empty()
                && v["ttl"].is_u64();
            if !shaped {
                st.lock().unwrap().bad.push(format!("{line} {v}"));
                return error(400, 9005, "Content for TXT record is invalid");
            }
            nsupdate(named_port, key_file, "add", &name, &content).await;
            let id = {
                let mut s = st.lock().unwrap();
                s.next += 1;
                let id = format!("rec{}", s.next);
                s.records
                    .insert(id.clone(), (name.clone(), content.clone()));
                id
            };
            return answer(
                200,
                json!({"success": true, "errors": [], "messages": [], "result": {"id": id, "type": "TXT", "name": name, "content": content, "ttl": 60}}),
            );
        }
        if method == "DELETE"
            && let Some(id) = path.strip_prefix(&format!("{records_prefix}/"))
        {
            let rec = st.lock().unwrap().records.remove(id);
            return match rec {
                Some((name, content)) => {
                    nsupdate(named_port, key_file, "delete", &name, &content).await;
                    answer(
                        200,
                        json!({"success": true, "errors": [], "messages": [], "result": {"id": id}}),
                    )
                }
                None => error(404, 81044, "Record does not exist."),
            };
        }
        st.lock().unwrap().bad.push(line);
        error(400, 7003, "Could not route to this path")
    }
}

#[tokio::test]
async fn cloudflare_provider_against_a_stand_in_api() {
    let named = named();
    let pebble = pebble_on(&named, None).await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("tsig.key");
    std::fs::write(&key_file, named.key_file_text()).unwrap();
    let api = cloudflare_stand_in::start(named.port, key_file.display().to_string()).await;
    let dns = format!(
        r#"{{ provider = "cloudflare", api_token_file = "cf-token", api_url = "http://{}/client/v4" }}"#,
        api.addr
    );
    let toml = config(
        &pebble,
        &dns,
        &format!(
            "propagation_timeout = \"20s\"\nresolvers = [\"{}\"]",
            named.addr()
        ),
        &["*.cf.test", "cf.test"],
    );
    let gw = Gateway::builder(&toml)
        .file("cf-token", format!("{}\n", cloudflare_stand_in::TOKEN))
        .start()
        .await;
    wait_served(&gw, "www.cf.test", &pebble, 90).await;
    wait_served(&gw, "cf.test", &pebble, 5).await;
    wait_for(
        "the records deleted through the API",
        Duration::from_secs(10),
        || async {
            named
                .txt("_acme-challenge.cf.test")
                .is_empty()
                .then_some(())
        },
    )
    .await;
    {
        let s = api.state.lock().unwrap();
        assert!(
            s.bad.is_empty(),
            "requests not in the documented shape: {:?}",
            s.bad
        );
        let count = |p: &str| s.log.iter().filter(|l| l.starts_with(p)).count();
        assert!(
            count("GET /client/v4/zones?name=cf.test") >= 1,
            "{:?}",
            s.log
        );
        assert_eq!(
            count("POST "),
            count("DELETE "),
            "every record created is deleted: {:?}",
            s.log
        );
        assert!(count("POST ") >= 1, "{:?}", s.log);
    }
    drop(gw);

    // A token the API refuses: Cloudflare's own error, in words.
    let gw = Gateway::builder(&toml)
        .file("cf-token", "not-the-token\n")
        .start()
        .await;
    let (err, st) = wait_error(&gw, "*.cf.test").await;
    assert!(
        err.contains("Cloudflare answered HTTP 403")
            && err.contains("Authentication error (code 10000)"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-token"),
        "the token is never shown: {err}"
    );
    assert!(st["next_attempt"].as_i64().is_some(), "{st}");
}

#[test]
fn dns_config_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short.key"), "c2hvcnQ=\n").unwrap();
    std::fs::write(dir.path().join("good.key"), "key \"k.\" { algorithm hmac-sha256; secret \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"; };\n").unwrap();
    let path = dir.path().join("portcullis.toml");
    let check = |toml: &str| -> String {
        match portcullis::config::parse(&path, toml) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let head = "[server]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[acme]\n";
    let route = "\n[[route]]\nhost = \"*.example.com\"\nrespond = {}\n";

    let e = check(&format!("{head}challenge = \"dns-01\"\n"));
    assert!(
        e.contains("portcullis.toml:4")
            && e.contains("acme.dns")
            && e.contains("needs a DNS provider"),
        "{e}"
    );

    let e = check(&format!("{head}dns = {{ provider = \"route53\" }}\n"));
    assert!(
        e.contains(":5:") && e.contains("acme.dns.provider") && e.contains("route53"),
        "{e}"
    );

    let e = check(&format!(
        "{head}dns = {{ provider = \"rfc2136\", server = \"10.0.0.2:53\", zone = \"example.com.\", tsig_key_name = \"k.\", tsig_secret_file = \"short.key\" }}\n"
    ));
    assert!(
        e.contains("acme.dns.tsig_secret_file") && e.contains("shorter than 16 bytes"),
        "{e}"
    );
    assert!(!e.contains("c2hvcnQ"), "the secret is never shown: {e}");

    let e = check(&format!(
        "{head}dns = {{ provider = \"rfc2136\", server = \"10.0.0.2:53\", zone = \"example.com.\", tsig_key_name = \"k.\", tsig_secret_file = \"good.key\", api_token_file = \"x\" }}\n"
    ));
    assert!(
        e.contains("acme.dns.api_token_file")
            && e.contains("not a setting of the rfc2136 provider"),
        "{e}"
    );

    let e = check(&format!(
        "{head}dns = {{ provider = \"rfc2136\", zone = \"example.com.\", tsig_key_name = \"k.\", tsig_algorithm = \"hmac-md5\", tsig_secret_file = \"good.key\" }}\n"
    ));
    assert!(
        e.contains("acme.dns.server") && e.contains("acme.dns.tsig_algorithm"),
        "{e}"
    );

    let e = check(&format!(
        "{head}dns = {{ provider = \"cloudflare\", api_token_file = \"missing-token\" }}\n"
    ));
    assert!(
        e.contains("acme.dns.api_token_file") && e.contains("missing-token"),
        "{e}"
    );

    let e = check(&format!(
        "{head}\n[[acme_certificate]]\nnames = [\"*.example.com\"]\n"
    ));
    assert!(
        e.contains("acme_certificate[1].names") && e.contains("dns-01"),
        "{e}"
    );

    // A wildcard route without DNS-01 says how to get one.
    let e = check(&format!("{head}{route}"));
    assert!(e.contains("route.host") && e.contains("DNS-01"), "{e}");

    // With a provider, the same config is valid; so is an explicit set.
    let ok = format!(
        "{head}dns = {{ provider = \"rfc2136\", server = \"10.0.0.2:53\", zone = \"example.com.\", tsig_key_name = \"k.\", tsig_secret_file = \"good.key\" }}\n{route}\n[[acme_certificate]]\nnames = [\"example.org\", \"*.example.org\"]\nchallenge = \"dns-01\"\n"
    );
    assert_eq!(check(&ok), "");
    let exec = format!("{head}dns = {{ provider = \"exec\", command = [\"/bin/true\"] }}\n{route}");
    assert_eq!(check(&exec), "");
}
