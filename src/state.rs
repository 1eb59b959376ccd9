//! What the request path reads: one immutable [`Snapshot`] of the routing
//! state behind one `ArcSwap`, and the process-wide [`Shared`] parts that
//! outlive reloads (upstream connection pool, request ids).
//!
//! Background tasks (reload) build a whole new snapshot and publish it with
//! one atomic store; requests load it once and keep it until they finish, so
//! an in-flight request completes on the route it started on.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::acme::AcmePlan;

use crate::config::{Action, Config, RouteConfig, ServerConfig, UpstreamTarget};
use crate::proxy::forward::UpstreamClient;
use crate::proxy::headers::RequestIds;
use crate::routing::RouteTable;
use crate::telemetry::metrics::{Metrics, RouteMetrics};
use crate::tls::CertStore;

/// One route as the request path uses it.
#[derive(Debug)]
pub struct Route {
    pub config: RouteConfig,
    /// This route's counters, looked up once when the snapshot is built.
    pub metrics: Arc<RouteMetrics>,
    next_upstream: AtomicUsize,
}

impl Route {
    pub fn new(config: RouteConfig, metrics: Arc<RouteMetrics>) -> Self {
        Route {
            config,
            metrics,
            next_upstream: AtomicUsize::new(0),
        }
    }

    /// Round robin over the route's upstreams.
    pub fn pick_upstream(&self) -> Option<&UpstreamTarget> {
        match &self.config.action {
            Action::Upstream(list) if !list.is_empty() => {
                let i = self.next_upstream.fetch_add(1, Ordering::Relaxed) % list.len();
                Some(&list[i])
            }
            _ => None,
        }
    }
}

/// Everything a request needs from the config, immutable once published.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every successful (re)load.
    pub generation: u64,
    pub loaded_at: SystemTime,
    pub server: ServerConfig,
    pub table: RouteTable<Route>,
}

impl Snapshot {
    pub fn build(config: Config, generation: u64, metrics: &Metrics) -> Snapshot {
        let table = RouteTable::build(config.routes.into_iter().map(|r| {
            let m = metrics.route(&r.name);
            (r.host.clone(), r.path.clone(), Route::new(r, m))
        }));
        Snapshot {
            generation,
            loaded_at: SystemTime::now(),
            server: config.server,
            table,
        }
    }

    /// Is this address one of the configured trusted proxies?
    #[inline]
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.server.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, seen on dual-stack
/// listeners) to plain IPv4 so CIDR rules written for IPv4 apply.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Process-wide state shared by every connection.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub client: UpstreamClient,
    pub request_ids: RequestIds,
    /// Set once the listeners are up and the first snapshot is published.
    pub ready: AtomicBool,
    /// The config file that reloads read.
    pub config_path: PathBuf,
    /// Certificates by SNI name, and ACME challenge material.
    pub certs: Arc<CertStore>,
    /// The https listener's port (0 = none), for redirects from http.
    pub https_port: AtomicU16,
    /// What the ACME task should keep certificates for; reloads publish here.
    pub acme_plans: watch::Sender<Option<Arc<AcmePlan>>>,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    pub fn new(config: Config) -> Arc<Shared> {
        let client = UpstreamClient::new(&config.server);
        let config_path = config.source.clone();
        let certs = Arc::new(CertStore::new());
        let plan = publish_certificates(&config, &certs);
        let acme_plans = watch::channel(plan).0;
        let metrics = Arc::new(Metrics::new());
        let snapshot = Snapshot::build(config, 1, &metrics);
        metrics.reload_succeeded(snapshot.table.len());
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            client,
            request_ids: RequestIds::new(),
            ready: AtomicBool::new(false),
            config_path,
            certs,
            https_port: AtomicU16::new(0),
            acme_plans,
        })
    }

    /// Publishes a new config's certificates and ACME plan (before its
    /// routes go live, so new hosts have what exists already).
    pub fn update_certificates(&self, config: &Config) {
        let plan = publish_certificates(config, &self.certs);
        self.acme_plans.send_replace(plan);
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}

/// Installs the configured certificates and stored ACME ones; returns the
/// ACME plan for the background task.
fn publish_certificates(config: &Config, certs: &CertStore) -> Option<Arc<AcmePlan>> {
    certs.set_configured(&config.certificates);
    let plan = AcmePlan::from_config(config)?;
    crate::acme::load_stored(&plan, certs);
    Some(Arc::new(plan))
}
