//! Certificates shared by several instances through a real `redis-server`,
//! against a real ACME server (Pebble): two instances configured for the
//! same new host make one order and both serve its certificate, the
//! HTTP-01 validation is answered by the instance that did not order, an
//! instance killed mid-order is taken over after the lease, a holder whose
//! lease was taken over cannot publish, Redis holds no private key or PEM
//! in clear, a Redis outage keeps certificates served while the renewal
//! waits, then resumes by itself, and the certificates of an instance that
//! ran alone are shared when it joins a cluster.
//!
//! Pebble's HTTP-01 validations go through a small TCP gate the test
//! steers, so it decides which instance answers them (and when).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use support::client::TestClient;
use support::gateway::Gateway;
use support::pebble::{Pebble, PebbleOptions, acme_dir, mode};
use support::redis::Redis;
use support::tls::{Handshake, free_port, handshake, roots_from_pem};
use support::wait_for;

/// 32 bytes, hex: the key the instances share.
const KEY: &str = "5a1c2e9a4b7d6f30112233445566778899aabbccddeeff00a1b2c3d4e5f60718";
const HOST: &str = "shared.example.com";

/// A TCP gate in front of the instances for Pebble's validations: each
/// connection waits until the test names a target, then is relayed to it.
struct Gate {
    port: u16,
    target: watch::Sender<Option<SocketAddr>>,
    relayed: Arc<AtomicUsize>,
    /// Connections accepted (waiting or relayed).
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn start() -> Gate {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (target, rx) = watch::channel(None::<SocketAddr>);
        let relayed = Arc::new(AtomicUsize::new(0));
        let count = relayed.clone();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                let mut rx = rx.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let Ok(to) = rx.wait_for(Option::is_some).await.map(|t| t.unwrap()) else {
                        return;
                    };
                    if let Ok(mut out) = TcpStream::connect(to).await {
                        count.fetch_add(1, Ordering::SeqCst);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Gate {
            port,
            target,
            relayed,
            accepted,
            task,
        }
    }

    fn send_to(&self, addr: SocketAddr) {
        self.target.send_replace(Some(addr));
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The instances of one test: the same Pebble, Redis, key prefix,
/// challenge and `[cluster]` extras, each with its own name.
struct Instances<'a> {
    pebble: &'a Pebble,
    redis: String,
    prefix: &'a str,
    cluster_extra: &'a str,
    challenge: &'a str,
}

fn instances<'a>(
    pebble: &'a Pebble,
    redis: &Redis,
    prefix: &'a str,
    cluster_extra: &'a str,
) -> Instances<'a> {
    Instances {
        pebble,
        redis: redis.url(),
        prefix,
        cluster_extra,
        challenge: "http-01",
    }
}

impl Instances<'_> {
    /// Instance `name`'s config, its HTTP listener on `http`.
    fn config_on(&self, http: &str, name: &str) -> String {
        format!(
            r#"
[server]
http = "{http}"
https = "{{{{HTTPS}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"

[cluster]
redis = "{redis}"
encryption_key_file = "cluster.key"
instance_name = "{name}"
key_prefix = "{prefix}"
{extra}

[acme]
email = "ops@example.com"
directory = "{dir}"
challenge = "{challenge}"
ca_file = "{ca}"
retry_min = "1s"
retry_max = "2s"

[[route]]
host = "{HOST}"
respond = {{ body = "hello" }}
"#,
            redis = self.redis,
            prefix = self.prefix,
            extra = self.cluster_extra,
            challenge = self.challenge,
            dir = self.pebble.directory_url(),
            ca = self.pebble.ca_file().display(),
        )
    }

    /// Instance `name`'s config, its HTTP listener on a free port.
    fn config(&self, name: &str) -> String {
        self.config_on("{{HTTP}}", name)
    }

    /// Instance `name`, started with a free HTTP port.
    async fn start(&self, name: &str) -> Gateway {
        start(&self.config(name)).await
    }
}

async fn start(toml: &str) -> Gateway {
    Gateway::builder(toml)
        .file("cluster.key", KEY)
        .start()
        .await
}

async fn view(admin: SocketAddr) -> serde_json::Value {
    TestClient::to(admin)
        .get(&format!("http://{admin}/certificates"))
        .await
        .json()
}

fn entry(v: &serde_json::Value) -> Option<&serde_json::Value> {
    v["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["host"] == HOST)
}

/// The instance holding the host's order lock, as an admin view shows it.
async fn lock_holder(admin: SocketAddr) -> Option<serde_json::Value> {
    let v = view(admin).await;
    let l = entry(&v)?["order_lock"].clone();
    (!l.is_null()).then_some(l)
}

async fn wait_for_cert(addr: SocketAddr, pebble: &Pebble, what: &str) -> Handshake {
    let root = pebble.issuing_root_pem().await;
    wait_for(what, Duration::from_secs(60), || {
        let root = root.clone();
        async move { handshake(addr, HOST, roots_from_pem(&root), &[]).await.ok() }
    })
    .await
}

fn orders_at(pebble: &Pebble) -> usize {
    pebble.logs().matches("Added order").count()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The body of a PEM block (base64 of the DER), joined.
fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

#[tokio::test]
async fn one_order_for_two_instances_answered_by_the_other_and_nothing_in_clear() {
    let redis = support::redis::shared();
    let gate = Gate::start().await;
    let pebble =
        Pebble::start(PebbleOptions::new(gate.port, free_port()).authz_reuse_percent(0)).await;
    let prefix = "ca1:";
    let gws = instances(&pebble, redis, prefix, "lock_lease = \"3s\"");
    let a = gws.start("gw-a").await;
    let b = gws.start("gw-b").await;

    // Whoever took the lock is shown on both; Pebble's validation waits at
    // the gate until it is sent to the other instance.
    let holder = wait_for("an order lock", Duration::from_secs(30), || async {
        lock_holder(a.admin_addr()).await
    })
    .await;
    let on_b = wait_for("B to show the lock", Duration::from_secs(10), || async {
        lock_holder(b.admin_addr()).await
    })
    .await;
    assert_eq!(
        (&on_b["instance"], &on_b["fencing_token"]),
        (&holder["instance"], &holder["fencing_token"]),
        "both instances show the same holder"
    );
    assert!(holder["fencing_token"].as_u64().unwrap() >= 1, "{holder}");
    assert!(holder["lease_expires_ms"].as_i64().unwrap() > 0, "{holder}");
    let (orderer, other) = match holder["instance"].as_str().unwrap() {
        "gw-a" => (&a, &b),
        "gw-b" => (&b, &a),
        h => panic!("unknown holder {h}"),
    };
    gate.send_to(other.http_addr());

    let from_orderer =
        wait_for_cert(orderer.https_addr(), &pebble, "the orderer's certificate").await;
    let from_other =
        wait_for_cert(other.https_addr(), &pebble, "the certificate on the other").await;
    assert_eq!(
        from_orderer.leaf_serial(),
        from_other.leaf_serial(),
        "one certificate served by both"
    );
    assert!(
        gate.relayed.load(Ordering::SeqCst) > 0,
        "the validation reached the instance that did not order"
    );
    // The waiting instance looks again within the lease: still one order.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(orders_at(&pebble), 1, "{}", pebble.logs());
    let v = view(other.admin_addr()).await;
    let e = entry(&v).unwrap();
    assert!(e["last_error"].is_null(), "{e}");
    assert!(e["order_lock"].is_null(), "released: {e}");

    // Mirrored into the other's state_dir with safe modes.
    let dir = acme_dir(&other.dir().join("state"));
    let key_file = dir.join(format!("certs/{HOST}.key"));
    assert_eq!(mode(&key_file), 0o600);
    assert_eq!(mode(&dir.join("account.json")), 0o600);
    assert_eq!(
        std::fs::read(dir.join("account.json")).unwrap(),
        std::fs::read(acme_dir(&orderer.dir().join("state")).join("account.json")).unwrap(),
        "one account for the cluster"
    );

    // Redis holds no private key, PEM or host name in clear.
    let key_pem = std::fs::read_to_string(&key_file).unwrap();
    let account = std::fs::read_to_string(dir.join("account.json")).unwrap();
    let account: serde_json::Value = serde_json::from_str(&account).unwrap();
    let pkcs8 = account["key_pkcs8"]
        .as_str()
        .expect("the account key")
        .to_string();
    let body = pem_body(&key_pem);
    let der = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&body)
            .unwrap()
    };
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("PEM", b"-----BEGIN".to_vec()),
        ("PRIVATE KEY", b"PRIVATE KEY".to_vec()),
        ("certificate key (base64)", body.as_bytes()[..48].to_vec()),
        ("certificate key (DER)", der[der.len() - 40..].to_vec()),
        ("account key", pkcs8.as_bytes()[..40].to_vec()),
        ("account key field", b"key_pkcs8".to_vec()),
        ("host name", HOST.as_bytes().to_vec()),
    ];
    let dump: Vec<_> = redis
        .dump()
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect();
    for kind in ["acme-cert:", "acme-account:", "fence:"] {
        assert!(
            dump.iter()
                .any(|(k, _)| k.starts_with(&format!("{prefix}{kind}"))),
            "no {kind} key in {:?}",
            dump.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
    }
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
async fn an_instance_killed_mid_order_is_taken_over_after_the_lease() {
    let redis = support::redis::shared();
    let gate = Gate::start().await;
    let pebble =
        Pebble::start(PebbleOptions::new(gate.port, free_port()).authz_reuse_percent(0)).await;
    let gws = instances(&pebble, redis, "ca2:", "lock_lease = \"2s\"");
    let mut a = Gateway::builder(&gws.config("gw-a"))
        .file("cluster.key", KEY)
        .spawn_binary()
        .await;
    // A takes the lock; its validation waits at the gate.
    let holder = wait_for("A's order lock", Duration::from_secs(30), || async {
        lock_holder(a.admin_addr()).await
    })
    .await;
    assert_eq!(holder["instance"], "gw-a", "{holder}");
    let b = gws.start("gw-b").await;
    let seen_by_b = wait_for("B to show A's lock", Duration::from_secs(10), || async {
        lock_holder(b.admin_addr()).await
    })
    .await;
    assert_eq!(seen_by_b["instance"], "gw-a", "{seen_by_b}");

    // A dies mid-order, its validation pending (SIGKILL: no release).
    wait_for(
        "Pebble to validate A's order",
        Duration::from_secs(30),
        || async { (gate.accepted.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10)).await;
    gate.send_to(b.http_addr());

    // B takes over once A's lease ends, and orders itself.
    let hs = wait_for_cert(
        b.https_addr(),
        &pebble,
        "B's certificate after the takeover",
    )
    .await;
    assert!(!hs.leaf_serial().is_empty());
    let v = view(b.admin_addr()).await;
    let e = entry(&v).unwrap();
    assert!(e["last_issued"].as_i64().is_some(), "B ordered it: {e}");
    assert!(orders_at(&pebble) >= 2, "{}", pebble.logs());
}

#[tokio::test]
async fn a_holder_whose_lease_was_taken_over_cannot_publish() {
    use portcullis::cluster::Cluster;
    use portcullis::config::{ClusterConfig, ClusterKey};
    let redis = support::redis::shared();
    let cfg = |name: &str| ClusterConfig {
        redis: redis.url(),
        sentinel: None,
        ca_file: None,
        ca_pem: None,
        user: None,
        password: None,
        key_prefix: "ca3:".into(),
        encryption_key: ClusterKey([7; 32]),
        instance_name: name.into(),
        cache_lifetime: Duration::from_secs(60),
        lock_lease: Duration::from_secs(60),
    };
    let a = Cluster::new(&cfg("gw-a")).unwrap();
    let b = Cluster::new(&cfg("gw-b")).unwrap();
    let name = a.digest(&[b"some host"]);
    let lease = Duration::from_millis(300);
    let la = a.try_lock(&name, lease).await.unwrap().expect("A takes it");
    let busy = b
        .try_lock(&name, lease)
        .await
        .unwrap()
        .expect_err("held by A");
    assert_eq!(busy.instance, "gw-a");
    assert_eq!(busy.fence, la.fence);
    assert!(a.renew(&la).await.unwrap(), "A renews its own lease");

    // A stalls past its lease; B takes over with a larger fencing token.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let lb = b
        .try_lock(&name, lease)
        .await
        .unwrap()
        .expect("B takes over");
    assert!(lb.fence > la.fence);
    let key = "ca3:result";
    assert!(
        !a.set_fenced(&la, key, b"from A").await.unwrap(),
        "A's token is superseded"
    );
    assert!(!a.renew(&la).await.unwrap(), "A cannot renew B's lock");
    assert!(!a.unlock(&la).await.unwrap(), "A cannot release B's lock");
    assert_eq!(
        b.lock_holder(&name).await.unwrap().map(|h| h.instance),
        Some("gw-b".to_string())
    );
    assert!(b.set_fenced(&lb, key, b"from B").await.unwrap());
    let mut c = redis.connection().unwrap();
    let v: Vec<u8> = redis::cmd("GET").arg(key).query(&mut c).unwrap();
    assert_eq!(v, b"from B");
    assert!(b.unlock(&lb).await.unwrap());
    assert_eq!(b.lock_holder(&name).await.unwrap(), None);
}

#[tokio::test]
async fn redis_outage_keeps_certificates_served_and_renewal_resumes() {
    let mut redis = Redis::start();
    // Certificates valid 40 s: renewal is due about 27 s after issuance.
    let http = free_port();
    let pebble = Pebble::start(PebbleOptions::new(http, free_port()).validity_secs(40)).await;
    let prefix = "ca4:";
    let gws = instances(&pebble, &redis, prefix, "");
    let a = start(&gws.config_on(&format!("127.0.0.1:{http}"), "gw-a")).await;
    let b = gws.start("gw-b").await;
    let first = wait_for_cert(a.https_addr(), &pebble, "A's first certificate").await;
    let serial = first.leaf_serial();
    let on_b = wait_for_cert(b.https_addr(), &pebble, "B's certificate").await;
    assert_eq!(on_b.leaf_serial(), serial, "one certificate for both");

    redis.stop();
    // The renewal comes due and waits for Redis, saying so.
    let err = wait_for(
        "the renewal to wait for Redis",
        Duration::from_secs(45),
        || async {
            for gw in [&a, &b] {
                let v = view(gw.admin_addr()).await;
                if let Some(e) = entry(&v).and_then(|e| e["last_error"].as_str())
                    && e.contains("Redis")
                {
                    return Some(e.to_string());
                }
            }
            None
        },
    )
    .await;
    assert!(err.contains("renewal waits for Redis"), "{err}");
    for gw in [&a, &b] {
        let hs = wait_for_cert(gw.https_addr(), &pebble, "the old certificate").await;
        assert_eq!(
            hs.leaf_serial(),
            serial,
            "the old certificate keeps serving"
        );
    }

    // Redis back: the renewal happens by itself and reaches both.
    redis.restart();
    for gw in [&a, &b] {
        let root = pebble.issuing_root_pem().await;
        let addr = gw.https_addr();
        wait_for("the renewed certificate", Duration::from_secs(30), || {
            let (root, serial) = (root.clone(), serial.clone());
            async move {
                let hs = handshake(addr, HOST, roots_from_pem(&root), &[])
                    .await
                    .ok()?;
                (hs.leaf_serial() != serial).then_some(())
            }
        })
        .await;
    }
}

#[tokio::test]
async fn tls_alpn01_validation_answered_by_the_instance_that_did_not_order() {
    let redis = support::redis::shared();
    let gate = Gate::start().await;
    let pebble =
        Pebble::start(PebbleOptions::new(free_port(), gate.port).authz_reuse_percent(0)).await;
    let gws = Instances {
        challenge: "tls-alpn-01",
        ..instances(&pebble, redis, "ca5:", "lock_lease = \"3s\"")
    };
    let a = gws.start("gw-a").await;
    let b = gws.start("gw-b").await;
    let holder = wait_for("an order lock", Duration::from_secs(30), || async {
        lock_holder(a.admin_addr()).await
    })
    .await;
    let (orderer, other) = match holder["instance"].as_str().unwrap() {
        "gw-a" => (&a, &b),
        _ => (&b, &a),
    };
    gate.send_to(other.https_addr());
    let x = wait_for_cert(orderer.https_addr(), &pebble, "the orderer's certificate").await;
    let y = wait_for_cert(other.https_addr(), &pebble, "the certificate on the other").await;
    assert_eq!(x.leaf_serial(), y.leaf_serial());
    assert!(gate.relayed.load(Ordering::SeqCst) > 0);
    assert_eq!(orders_at(&pebble), 1, "{}", pebble.logs());
}

#[test]
fn lock_lease_is_checked_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(dir.path().join("cluster.key"), KEY).unwrap();
    let write = |lease: &str| {
        std::fs::write(
            &cfg,
            format!("[server]\nhttp = \"127.0.0.1:0\"\n\n[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\nencryption_key_file = \"cluster.key\"\nlock_lease = \"{lease}\"\n"),
        )
        .unwrap();
    };
    write("200ms");
    let e = portcullis::config::load(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("p.toml:7") && e.contains("cluster.lock_lease") && e.contains("at least 1s"),
        "{e}"
    );
    write("soon");
    let e = portcullis::config::load(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("p.toml:7") && e.contains("cluster.lock_lease"),
        "{e}"
    );
    write("90s");
    let c = portcullis::config::load(&cfg).unwrap();
    assert_eq!(c.cluster.unwrap().lock_lease, Duration::from_secs(90));
}

#[tokio::test]
async fn certificates_of_an_instance_that_ran_alone_are_shared_without_a_new_order() {
    let redis = support::redis::shared();
    let http = free_port();
    let pebble = Pebble::start(PebbleOptions::new(http, free_port())).await;
    let state = tempfile::tempdir().unwrap();
    let prefix = "ca6:";
    let with_state = |t: String| t.replace("{{DIR}}/state", &state.path().display().to_string());
    let gws = instances(&pebble, redis, prefix, "");
    let clustered = with_state(gws.config_on(&format!("127.0.0.1:{http}"), "gw-a"));
    let (head, rest) = clustered.split_once("[cluster]").unwrap();
    let alone = format!("{head}{}", &rest[rest.find("[acme]").unwrap()..]);

    let mut a = start(&alone).await;
    let serial = wait_for_cert(a.https_addr(), &pebble, "the certificate ordered alone")
        .await
        .leaf_serial();
    support::within("graceful shutdown", Duration::from_secs(30), a.shutdown())
        .await
        .unwrap();
    drop(a);

    // The same instance with [cluster]: serves from disk, shares it.
    let a = start(&clustered).await;
    let hs = wait_for_cert(a.https_addr(), &pebble, "the stored certificate").await;
    assert_eq!(hs.leaf_serial(), serial);
    wait_for(
        "the certificate in Redis",
        Duration::from_secs(10),
        || async {
            redis
                .dump()
                .iter()
                .any(|(k, _)| k.starts_with(&format!("{prefix}acme-cert:")))
                .then_some(())
        },
    )
    .await;
    let b = gws.start("gw-b").await;
    let hs = wait_for_cert(b.https_addr(), &pebble, "B's certificate").await;
    assert_eq!(hs.leaf_serial(), serial, "B serves the shared certificate");
    assert_eq!(orders_at(&pebble), 1, "{}", pebble.logs());
}
