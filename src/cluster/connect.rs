//! How `[cluster]` reaches Redis: a `redis://` or `rediss://` URL names
//! the server; a `redis+sentinel://` URL names sentinels that say which
//! server is the master.
//!
//! - `rediss://` is TLS on the process's rustls provider (ring); the
//!   server's certificate is checked against the system roots plus
//!   `ca_file`, as `upstream_tls.ca_file` does for backends.
//! - With Sentinel (the `redis` crate's `sentinel` module) the master is
//!   asked for when the health ping fails (a dead or demoted master) and
//!   every [`REASK_EVERY`] pings otherwise (a master demoted behind our
//!   back answers pings but refuses writes). A new master gets a new lazy
//!   connection manager and [`Link::epoch`] moves, so the pub/sub listener
//!   subscribes again on it.
//! - A reload that changes how Redis is reached (URL, credentials,
//!   `ca_file` or its contents) swaps the whole route ([`Link::relink`]):
//!   a wrong CA fixed in place comes back without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use base64::Engine as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use rustls_pki_types::CertificateDer;

use super::OP_TIMEOUT;
use crate::config::ClusterConfig;

/// With Sentinel, ask for the master every this many healthy pings.
pub(crate) const REASK_EVERY: u32 = 10;

/// The current way to Redis; swapped whole on a reload.
pub(crate) struct Link {
    route: ArcSwap<Route>,
    epoch: AtomicU64,
}

struct Route {
    kind: Kind,
    /// The data node in use (`None` until Sentinel has named a master).
    target: ArcSwapOption<Target>,
    pings: AtomicU32,
}

enum Kind {
    Direct,
    Sentinel(Box<Sentinels>),
}

struct Sentinels {
    sentinels: tokio::sync::Mutex<Sentinel>,
    service: String,
    node: SentinelNodeConnectionInfo,
}

struct Target {
    client: redis::Client,
    conn: ConnectionManager,
    /// `host:port`, for logs and to notice a new master.
    addr: String,
}

impl Target {
    fn new(client: redis::Client) -> Result<Target, String> {
        let mc = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = client
            .get_connection_manager_lazy(mc)
            .map_err(|e| format!("cluster.redis: {e}"))?;
        let addr = client.get_connection_info().addr().to_string();
        Ok(Target { client, conn, addr })
    }
}

/// True when `a` and `b` reach Redis differently (what a reload applies).
pub(crate) fn link_changed(a: &ClusterConfig, b: &ClusterConfig) -> bool {
    a.redis != b.redis
        || a.ca_file != b.ca_file
        || a.ca_pem != b.ca_pem
        || a.user != b.user
        || a.password.as_ref().map(|p| p.expose()) != b.password.as_ref().map(|p| p.expose())
}

fn redis_settings(cfg: &ClusterConfig, db: i64) -> redis::RedisConnectionInfo {
    let mut s = redis::RedisConnectionInfo::default().set_db(db);
    if let Some(u) = &cfg.user {
        s = s.set_username(u);
    }
    if let Some(p) = &cfg.password {
        s = s.set_password(p.expose());
    }
    s
}

/// The system roots (once per process) as PEM, each one rustls accepts.
fn system_roots_pem() -> &'static str {
    static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PEM.get_or_init(|| {
        let mut out = String::new();
        let mut check = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            if check.add(c.clone()).is_ok() {
                out.push_str(&pem_of(&c));
            }
        }
        out
    })
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut s = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    s.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

fn direct_client(cfg: &ClusterConfig) -> Result<redis::Client, String> {
    use redis::IntoConnectionInfo as _;
    let info = cfg
        .redis
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("cluster.redis: {e}"))?;
    let db = info.redis_settings().db();
    let mut settings = redis_settings(cfg, db);
    // Credentials in the URL still count when no file is given.
    if cfg.user.is_none()
        && let Some(u) = info.redis_settings().username()
    {
        settings = settings.set_username(u);
    }
    if cfg.password.is_none()
        && let Some(p) = info.redis_settings().password()
    {
        settings = settings.set_password(p);
    }
    let info = info.set_redis_settings(settings);
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    if !tls {
        return redis::Client::open(info).map_err(|e| format!("cluster.redis: {e}"));
    }
    let mut roots = system_roots_pem().as_bytes().to_vec();
    if let Some(pem) = &cfg.ca_pem {
        roots.push(b'\n');
        roots.extend_from_slice(pem);
    }
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(roots),
        },
    )
    .map_err(|e| format!("cluster.redis: {e}"))
}

impl Route {
    fn new(cfg: &ClusterConfig) -> Result<Route, String> {
        let (kind, target) = match &cfg.sentinel {
            None => (
                Kind::Direct,
                Some(Arc::new(Target::new(direct_client(cfg)?)?)),
            ),
            Some(s) => {
                let nodes: Vec<redis::ConnectionInfo> = s
                    .nodes
                    .iter()
                    .map(|(h, p)| {
                        use redis::IntoConnectionInfo as _;
                        redis::ConnectionAddr::Tcp(h.clone(), *p).into_connection_info()
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("cluster.redis: {e}"))?;
                let sentinels =
                    Sentinel::build(nodes).map_err(|e| format!("cluster.redis: {e}"))?;
                let node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(redis_settings(cfg, s.db));
                (
                    Kind::Sentinel(Box::new(Sentinels {
                        sentinels: tokio::sync::Mutex::new(sentinels),
                        service: s.service.clone(),
                        node,
                    })),
                    None,
                )
            }
        };
        Ok(Route {
            kind,
            target: ArcSwapOption::new(target),
            pings: AtomicU32::new(0),
        })
    }
}

async fn ping(conn: &ConnectionManager) -> Result<(), String> {
    let mut c = conn.clone();
    match tokio::time::timeout(OP_TIMEOUT, redis::cmd("PING").query_async::<String>(&mut c)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let e = e.to_string();
            if e.contains("certificate") {
                Err(format!(
                    "{e} (is `cluster.ca_file` the CA that signed Redis's certificate?)"
                ))
            } else {
                Err(e)
            }
        }
        Err(_) => Err("no answer within 1 s".into()),
    }
}

impl Link {
    /// The way to Redis `cfg` names (nothing is connected yet).
    pub(crate) fn new(cfg: &ClusterConfig) -> Result<Link, String> {
        Ok(Link {
            route: ArcSwap::from_pointee(Route::new(cfg)?),
            epoch: AtomicU64::new(0),
        })
    }

    /// Replaces the way to Redis (a reload changed it).
    pub(crate) fn relink(&self, cfg: &ClusterConfig) -> Result<(), String> {
        let route = Route::new(cfg)?;
        self.route.store(Arc::new(route));
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Moves whenever the data node in use changes.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The connection to the data node in use.
    pub(crate) fn conn(&self) -> Option<ConnectionManager> {
        self.route
            .load()
            .target
            .load()
            .as_ref()
            .map(|t| t.conn.clone())
    }

    /// A client for the data node in use (pub/sub).
    pub(crate) fn client(&self) -> Option<redis::Client> {
        self.route
            .load()
            .target
            .load()
            .as_ref()
            .map(|t| t.client.clone())
    }

    /// The health check: a ping of the data node; with Sentinel, the
    /// master is asked for (and switched to) when the ping fails and every
    /// [`REASK_EVERY`] pings. The error says why, for the log.
    pub(crate) async fn check(&self) -> Result<(), String> {
        let route = self.route.load_full();
        let target = route.target.load_full();
        let pinged = match &target {
            Some(t) => ping(&t.conn).await.map_err(|e| format!("{}: {e}", t.addr)),
            None => Err("no master known yet".to_string()),
        };
        let Kind::Sentinel(s) = &route.kind else {
            return pinged;
        };
        let Sentinels {
            sentinels,
            service,
            node,
        } = &**s;
        let n = route.pings.fetch_add(1, Ordering::Relaxed);
        if pinged.is_ok() && !n.is_multiple_of(REASK_EVERY) {
            return Ok(());
        }
        let ask = async {
            let mut s = sentinels.lock().await;
            s.async_master_for(service, Some(node)).await
        };
        match tokio::time::timeout(OP_TIMEOUT * 2, ask).await {
            Ok(Ok(client)) => {
                let addr = client.get_connection_info().addr().to_string();
                if target.as_ref().is_some_and(|t| t.addr == addr) {
                    return pinged;
                }
                let t = Arc::new(Target::new(client)?);
                match &target {
                    None => {
                        tracing::info!(master = %addr, service = %service, "Redis master found through Sentinel")
                    }
                    Some(old) => {
                        tracing::warn!(master = %addr, previous = %old.addr, service = %service, "Sentinel names a new Redis master: switching to it")
                    }
                }
                route.target.store(Some(t.clone()));
                self.epoch.fetch_add(1, Ordering::AcqRel);
                ping(&t.conn).await.map_err(|e| format!("{addr}: {e}"))
            }
            Ok(Err(e)) => pinged.map_err(|p| format!("{p}; Sentinel: {e}")),
            Err(_) => pinged.map_err(|p| format!("{p}; no sentinel answered within 2 s")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject as _;

    fn cfg() -> ClusterConfig {
        ClusterConfig {
            redis: "rediss://r:6380/0".into(),
            sentinel: None,
            ca_file: Some("/ca.pem".into()),
            ca_pem: Some(b"one".to_vec()),
            user: None,
            password: None,
            key_prefix: "p:".into(),
            encryption_key: crate::config::ClusterKey([7; 32]),
            instance_name: "a".into(),
            cache_lifetime: Duration::from_secs(60),
            lock_lease: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_reload_relinks_only_for_how_redis_is_reached() {
        let a = cfg();
        let mut b = cfg();
        b.key_prefix = "q:".into();
        b.instance_name = "b".into();
        assert!(!link_changed(&a, &b));
        let mut b = cfg();
        b.ca_pem = Some(b"two".to_vec());
        assert!(link_changed(&a, &b), "the CA file fixed in place");
        let mut b = cfg();
        b.user = Some("u".into());
        assert!(link_changed(&a, &b));
        let mut b = cfg();
        b.redis = "redis+sentinel://s:26379/m/0".into();
        assert!(link_changed(&a, &b));
    }

    #[test]
    fn system_roots_round_trip_through_pem() {
        let pem = system_roots_pem();
        let back: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("every root parses back");
        let mut store = rustls::RootCertStore::empty();
        let accepted = rustls_native_certs::load_native_certs()
            .certs
            .into_iter()
            .filter(|c| store.add(c.clone()).is_ok())
            .count();
        assert_eq!(back.len(), accepted);
    }
}
