//! The other ways `[cluster]` reaches Redis, against real peers on
//! loopback: `rediss://` to a `redis-server` with a TLS port and a test CA
//! (`ca_file`), and `redis+sentinel://` to a master, a replica and a
//! sentinel (`redis-server --sentinel`) that fails over while two gateways
//! run; the data nodes want a password (`password_file`), the sentinel not.

mod support;

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::StatusCode;

use support::backend::Backend;
use support::client::TestClient;
use support::gateway::Gateway;
use support::idp::{Browser, CLIENT_SECRET, Idp, PLAIN_COOKIE as COOKIE, free_port};
use support::redis::{Process, node_args, sso_config as config};
use support::tls::TestCa;

/// 32 bytes, hex: the key the instances share.
const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

/// A `redis-server` that speaks TLS only, with a certificate from its own
/// test CA (shared by the TLS tests of this file).
struct TlsRedis {
    _peer: Process,
    _dir: tempfile::TempDir,
    port: u16,
    ca_pem: String,
}

fn tls_redis() -> &'static TlsRedis {
    static R: OnceLock<TlsRedis> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-redis-tls-")
            .tempdir()
            .unwrap();
        let ca = TestCa::new();
        let leaf = ca.leaf(&["127.0.0.1"]);
        let cert = dir.path().join("redis.crt");
        let key = dir.path().join("redis.key");
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let port = free_port();
        let mut args = node_args(dir.path(), 0);
        args.extend([
            "--tls-port".to_string(),
            port.to_string(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            ca_file.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ]);
        let peer = Process::spawn(&args, port);
        TlsRedis {
            _peer: peer,
            _dir: dir,
            port,
            ca_pem: ca.pem(),
        }
    })
}

fn url(addr: std::net::SocketAddr, host: &str, path: &str) -> String {
    format!("http://{host}:{}{path}", addr.port())
}

/// The status of a non-browser request with this session.
async fn status(addr: std::net::SocketAddr, session: &str) -> StatusCode {
    TestClient::to(addr)
        .get_with(
            &url(addr, "app.localtest", "/"),
            &[
                ("accept", "application/json"),
                ("cookie", &format!("{COOKIE}={session}")),
            ],
        )
        .await
        .status
}

async fn sign_in(addr: std::net::SocketAddr, user: &str) -> String {
    let mut br = Browser::new(addr);
    let r = br.login(&url(addr, "app.localtest", "/"), user).await;
    assert_eq!(r.status, StatusCode::OK, "login as {user}: {}", r.text());
    br.cookie("app.localtest", COOKIE).expect("session cookie")
}

/// Signs `session` out on `on`; `other` (which has it cached) must refuse
/// it within a second: the invalidation went through Redis pub/sub.
async fn logout_reaches(on: std::net::SocketAddr, other: std::net::SocketAddr, session: &str) {
    assert_eq!(status(other, session).await, StatusCode::OK);
    let mut out = Browser::new(on);
    out.set_cookie("app.localtest", COOKIE, session);
    let r = out
        .get(&url(on, "app.localtest", "/.portcullis/logout"))
        .await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    support::wait_for(
        "the other instance to refuse the ended session",
        Duration::from_secs(1),
        || async { (status(other, session).await == StatusCode::UNAUTHORIZED).then_some(()) },
    )
    .await;
}

async fn readyz(admin: std::net::SocketAddr) -> String {
    TestClient::new()
        .get(&format!("http://{admin}/readyz"))
        .await
        .text()
}

#[tokio::test]
async fn sessions_shared_over_rediss_with_a_private_ca() {
    let redis = tls_redis();
    let idp = Idp::builder().start().await;
    let backend = Backend::echo().await;
    let cluster = format!(
        "redis = \"rediss://127.0.0.1:{}/0\"\nca_file = \"redis-ca.pem\"\nkey_prefix = \"tls1:\"",
        redis.port
    );
    let start = |name: &str| {
        let toml = config(
            "{{HTTP}}",
            idp.issuer(),
            &backend.url(),
            &format!("{cluster}\ninstance_name = \"{name}\""),
        );
        Gateway::builder(&toml)
            .file("secret", CLIENT_SECRET)
            .file("cluster.key", KEY)
            .file("redis-ca.pem", &redis.ca_pem)
            .start()
    };
    let a = start("tls-a").await;
    let b = start("tls-b").await;
    let s = sign_in(a.http_addr(), "alice").await;
    assert_eq!(status(b.http_addr(), &s).await, StatusCode::OK);
    assert!(readyz(a.admin_addr()).await.contains("cluster: up"));
    logout_reaches(b.http_addr(), a.http_addr(), &s).await;

    // Every cluster metric the alert rules use is on this instance's
    // scrape (it is only served with [cluster]).
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus/alerts.yml"),
    )
    .unwrap();
    let scrape = TestClient::new()
        .get(&format!("http://{}/metrics", a.admin_addr()))
        .await
        .text();
    let mut used = 0;
    for (i, _) in rules.match_indices("portcullis_cluster_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        used += 1;
        assert!(
            scrape
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "alerts.yml uses {name}, which a [cluster] instance does not serve:\n{scrape}"
        );
    }
    assert!(used > 0, "alerts.yml has a cluster alert");
}

#[tokio::test]
async fn a_wrong_redis_ca_is_reported_and_fixed_by_a_reload() {
    let redis = tls_redis();
    let idp = Idp::builder().start().await;
    let backend = Backend::echo().await;
    let other_ca = TestCa::new();
    let toml = config(
        "{{HTTP}}",
        idp.issuer(),
        &backend.url(),
        &format!(
            "redis = \"rediss://127.0.0.1:{}/0\"\nca_file = \"redis-ca.pem\"\nkey_prefix = \"tls2:\"\ninstance_name = \"tls-c\"",
            redis.port
        ),
    );
    let gw = Gateway::builder(&toml)
        .file("secret", CLIENT_SECRET)
        .file("cluster.key", KEY)
        .file("redis-ca.pem", other_ca.pem())
        .spawn_binary()
        .await;
    let admin = gw.admin_addr();

    // The certificate problem is said in the log and in /readyz; the
    // metric is 0; a sign-in is a clear 503; public routes answer.
    let line = support::wait_for(
        "the certificate error in the log",
        Duration::from_secs(10),
        || async {
            gw.logs()
                .lines()
                .find(|l| l.contains("Redis is unreachable"))
                .map(str::to_string)
        },
    )
    .await;
    assert!(
        line.contains("invalid peer certificate") && line.contains("cluster.ca_file"),
        "the log line says why: {line}"
    );
    let ready = readyz(admin).await;
    assert!(
        ready.contains("cluster: down") && ready.to_lowercase().contains("certificate"),
        "{ready}"
    );
    let metrics = TestClient::new()
        .get(&format!("http://{admin}/metrics"))
        .await
        .text();
    assert!(
        metrics.contains("portcullis_cluster_up{instance=\"tls-c\"} 0"),
        "{metrics}"
    );
    let mut br = Browser::new(gw.http_addr());
    let r = br.get(&url(gw.http_addr(), "app.localtest", "/")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let public = gw
        .client()
        .get(&url(gw.http_addr(), "public.localtest", "/"))
        .await;
    assert_eq!(public.status, StatusCode::OK);

    // The right CA in the same file, then a reload: back, no restart.
    support::gateway::write_atomic(&gw.dir().join("redis-ca.pem"), &redis.ca_pem);
    let (st, v) = gw.reload().await;
    assert_eq!(st, StatusCode::OK, "{v}");
    support::wait_for("Redis to be up again", Duration::from_secs(10), || async {
        readyz(admin).await.contains("cluster: up").then_some(())
    })
    .await;
    let s = sign_in(gw.http_addr(), "bob").await;
    assert_eq!(status(gw.http_addr(), &s).await, StatusCode::OK);
    let metrics = TestClient::new()
        .get(&format!("http://{admin}/metrics"))
        .await
        .text();
    assert!(
        metrics.contains("portcullis_cluster_up{instance=\"tls-c\"} 1"),
        "{metrics}"
    );
}

const DATA_PASSWORD: &str = "data-node-secret";

/// A master, its replica and one sentinel (quorum 1, short timeouts).
struct SentinelGroup {
    master: Process,
    replica: Process,
    sentinel: Process,
    _dir: tempfile::TempDir,
}

impl SentinelGroup {
    fn start() -> SentinelGroup {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-sentinel-")
            .tempdir()
            .unwrap();
        let (m, r, s) = (free_port(), free_port(), free_port());
        let md = dir.path().join("master");
        let rd = dir.path().join("replica");
        let sd = dir.path().join("sentinel");
        for d in [&md, &rd, &sd] {
            std::fs::create_dir(d).unwrap();
        }
        // The data nodes want a password (the sentinel is reached without).
        let auth = [
            "--requirepass".to_string(),
            DATA_PASSWORD.into(),
            "--masterauth".into(),
            DATA_PASSWORD.into(),
        ];
        let mut args = node_args(&md, m);
        args.extend(auth.clone());
        let master = Process::spawn(&args, m).with_password(DATA_PASSWORD);
        let mut args = node_args(&rd, r);
        args.extend(auth);
        args.extend(["--replicaof".into(), "127.0.0.1".into(), m.to_string()]);
        let replica = Process::spawn(&args, r).with_password(DATA_PASSWORD);
        // Sentinel rewrites its config file: it must be its own, writable.
        let conf = sd.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {s}\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {m} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n\
                 sentinel auth-pass mymaster {DATA_PASSWORD}\n",
                sd.display()
            ),
        )
        .unwrap();
        let sentinel = Process::spawn(&[conf.display().to_string(), "--sentinel".to_string()], s);
        let g = SentinelGroup {
            master,
            replica,
            sentinel,
            _dir: dir,
        };
        // The replica in sync, and known to the sentinel, before any test
        // relies on a failover.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut g.replica.connection())
                .unwrap_or_default();
            let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg("mymaster")
                .query(&mut g.sentinel.connection())
                .unwrap_or_default();
            if info.contains("master_link_status:up")
                && replicas
                    .iter()
                    .any(|x| x.get("port").map(String::as_str) == Some(&r.to_string()))
            {
                return g;
            }
            assert!(
                Instant::now() < deadline,
                "the replica did not sync or the sentinel did not see it: {info}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test]
async fn sentinel_finds_the_master_and_follows_a_failover() {
    let mut g = SentinelGroup::start();
    let idp = Idp::builder().start().await;
    let backend = Backend::echo().await;
    // The first sentinel listed is not running: the next one is asked.
    let dead = free_port();
    let cluster = format!(
        "redis = \"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{}/mymaster/0\"\nkey_prefix = \"st:\"\npassword_file = \"redis-password\"",
        g.sentinel.port
    );
    let start = |name: &str| {
        let toml = config(
            "{{HTTP}}",
            idp.issuer(),
            &backend.url(),
            &format!("{cluster}\ninstance_name = \"{name}\""),
        );
        Gateway::builder(&toml)
            .file("secret", CLIENT_SECRET)
            .file("cluster.key", KEY)
            .file("redis-password", DATA_PASSWORD)
            .start()
    };
    let a = start("st-a").await;
    let b = start("st-b").await;
    support::wait_for(
        "the master found through Sentinel",
        Duration::from_secs(10),
        || async {
            (readyz(a.admin_addr()).await.contains("cluster: up")
                && readyz(b.admin_addr()).await.contains("cluster: up"))
            .then_some(())
        },
    )
    .await;
    // Signed in on A (so written to the master), not yet seen by B.
    let s = sign_in(a.http_addr(), "alice").await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("st:session:*")
        .query(&mut g.master.connection())
        .unwrap();
    assert!(!keys.is_empty(), "the session is on the master");
    // Replicated before the master dies (replication is asynchronous).
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut g.master.connection())
        .unwrap();
    assert_eq!(acked, 1);

    g.master.stop();
    // The replica is promoted; both gateways follow without a restart.
    support::wait_for(
        "B to read the session from the new master",
        Duration::from_secs(30),
        || async { (status(b.http_addr(), &s).await == StatusCode::OK).then_some(()) },
    )
    .await;
    let role: redis::Value = redis::cmd("ROLE")
        .query(&mut g.replica.connection())
        .unwrap();
    assert!(
        format!("{role:?}").contains("master"),
        "the replica was promoted: {role:?}"
    );
    support::wait_for(
        "A to use the new master",
        Duration::from_secs(30),
        || async {
            readyz(a.admin_addr())
                .await
                .contains("cluster: up")
                .then_some(())
        },
    )
    .await;
    let s2 = sign_in(a.http_addr(), "bob").await;
    assert_eq!(status(b.http_addr(), &s2).await, StatusCode::OK);
    // Invalidations flow on the new master too.
    logout_reaches(b.http_addr(), a.http_addr(), &s2).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("st:session:*")
        .query(&mut g.replica.connection())
        .unwrap();
    assert!(!keys.is_empty(), "sessions on the new master: {keys:?}");
}

#[tokio::test]
async fn cluster_link_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(dir.path().join("c.key"), KEY).unwrap();
    std::fs::write(dir.path().join("notpem"), "hello").unwrap();
    let load = |cluster: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[server]\nhttp = \"127.0.0.1:0\"\n\n[cluster]\nencryption_key_file = \"c.key\"\n{cluster}\n"
            ),
        )
        .unwrap();
        portcullis::config::load(&cfg)
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
    };
    let e = load("redis = \"redis+sentinel://h1:26379\"").unwrap();
    assert!(
        e.contains(":6:") && e.contains("cluster.redis") && e.contains("master's name"),
        "{e}"
    );
    let e = load("redis = \"redis://h:6379\"\nca_file = \"notpem\"").unwrap();
    assert!(
        e.contains(":7:") && e.contains("cluster.ca_file") && e.contains("rediss://"),
        "{e}"
    );
    let e = load("redis = \"rediss://h:6379\"\nca_file = \"notpem\"").unwrap();
    assert!(
        e.contains(":7:") && e.contains("cluster.ca_file") && e.contains("notpem"),
        "{e}"
    );
    let e = load("redis = \"rediss://h:6379\"\nca_file = \"missing.pem\"").unwrap();
    assert!(e.contains(":7:") && e.contains("missing.pem"), "{e}");
    let e = load("redis = \"rediss+sentinel://h1:26379/m/0\"").unwrap();
    assert!(e.contains(":6:") && e.contains("not supported"), "{e}");
    assert_eq!(
        load("redis = \"redis+sentinel://h1:26379,h2/mymaster/0\""),
        None
    );
}
