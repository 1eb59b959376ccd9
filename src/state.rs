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
use std::sync::atomic::{AtomicBool, AtomicU16};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::acme::AcmePlan;

use crate::config::{Config, RouteConfig, ServerConfig};
use crate::proxy::request_id::RequestIds;
use crate::routing::RouteTable;
use crate::telemetry::metrics::{Metrics, RouteMetrics};
use crate::tls::CertStore;
use crate::upstream::balance::Balancer;
use crate::upstream::health::{self, HealthClient};

/// One route as the request path uses it.
#[derive(Debug)]
pub struct Route {
    pub config: RouteConfig,
    /// This route's counters, looked up once when the snapshot is built.
    pub metrics: Arc<RouteMetrics>,
    /// Which upstream gets the next request.
    balancer: Balancer,
    /// The route's name and its upstreams' URLs as shared strings, made
    /// once here: an access-log record takes a reference count, not a copy.
    pub log_name: Arc<str>,
    pub log_upstreams: Vec<Arc<str>>,
}

impl Route {
    pub fn new(config: RouteConfig, metrics: Arc<RouteMetrics>) -> Self {
        let n = config.upstreams().len();
        Route {
            log_name: config.name.as_str().into(),
            log_upstreams: config
                .upstreams()
                .iter()
                .map(|u| u.url.as_str().into())
                .collect(),
            config,
            metrics,
            balancer: Balancer::new(n),
        }
    }

    /// The next upstream to try, skipping those in `tried` (see
    /// [`Balancer::pick`]).
    #[inline]
    pub fn pick_upstream(&self, tried: &[usize]) -> Option<usize> {
        self.balancer.pick(tried, &self.config, &self.metrics)
    }

    /// Records the outcome of a request to upstream `i` (see
    /// [`Balancer::report`]).
    #[inline]
    pub fn report(&self, i: usize, ok: bool, eject_after: u32, eject_for: std::time::Duration) {
        self.balancer
            .report(i, ok, eject_after, eject_for, &self.config);
    }

    /// Active health check result for upstream `i`.
    pub fn set_down(&self, i: usize, down: bool) {
        self.balancer.set_down(i, down, &self.config);
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
    /// Identity providers of this config (issue 4).
    pub auth: Arc<crate::auth::AuthSnapshot>,
}

impl Snapshot {
    pub fn build(config: Config, generation: u64, metrics: &Metrics) -> Snapshot {
        let auth = Arc::new(crate::auth::AuthSnapshot::detached(&config.oidc));
        Self::build_with_auth(config, generation, metrics, auth)
    }

    /// [`Snapshot::build`] with providers prepared by the running gateway
    /// (`AuthShared::prepare`), so discovery survives reloads.
    pub fn build_with_auth(
        config: Config,
        generation: u64,
        metrics: &Metrics,
        auth: Arc<crate::auth::AuthSnapshot>,
    ) -> Snapshot {
        let table = RouteTable::build_with(config.routes.into_iter().map(|r| {
            let m = metrics.route(&r.name);
            (
                r.host.clone(),
                r.path.clone(),
                r.path_match,
                Route::new(r, m),
            )
        }));
        Snapshot {
            generation,
            loaded_at: SystemTime::now(),
            server: config.server,
            table,
            auth,
        }
    }

    /// Is this address one of the configured trusted proxies?
    #[inline]
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.server.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

pub use crate::http::conn::canonical_ip;

/// Process-wide state shared by every connection.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// The client active health checks use.
    pub health_client: HealthClient,
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
    /// Sessions, sign-ins in progress, providers (issue 4).
    pub auth: Arc<crate::auth::AuthShared>,
}

impl Shared {
    pub fn new(config: Config) -> Arc<Shared> {
        let auth = Arc::new(crate::auth::AuthSnapshot::detached(&config.oidc));
        Self::with_auth(config, crate::auth::AuthShared::new(), auth)
    }

    /// [`Shared::new`] with the auth state the gateway prepared.
    pub fn with_auth(
        config: Config,
        auth: Arc<crate::auth::AuthShared>,
        auth_snapshot: Arc<crate::auth::AuthSnapshot>,
    ) -> Arc<Shared> {
        let health_client = HealthClient::new(&config.server);
        let config_path = config.source.clone();
        let certs = Arc::new(CertStore::new());
        let plan = publish_certificates(&config, &certs);
        let acme_plans = watch::channel(plan).0;
        let metrics = Arc::new(Metrics::new());
        let snapshot = Snapshot::build_with_auth(config, 1, &metrics, auth_snapshot);
        metrics.reload_succeeded(snapshot.table.len());
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            health_client,
            request_ids: RequestIds::new(),
            ready: AtomicBool::new(false),
            config_path,
            certs,
            https_port: AtomicU16::new(0),
            acme_plans,
            auth,
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

/// Starts the active health checks of `snap`'s routes: a task per route
/// with `health_check`, probing each upstream every `interval` and taking
/// failing ones out of rotation, until `snap` is no longer the live one.
pub fn spawn_health_checks(shared: &Arc<Shared>, snap: &Arc<Snapshot>) {
    for (idx, route) in snap.table.routes().iter().enumerate() {
        let Some(check) = route.config.limits.health_check.clone() else {
            continue;
        };
        if route.config.upstreams().is_empty() {
            continue;
        }
        let shared = shared.clone();
        let weak = Arc::downgrade(snap);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(check.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Stop once this snapshot is no longer the live one.
                let Some(snap) = weak.upgrade() else { return };
                if !Arc::ptr_eq(&snap, &shared.current()) {
                    return;
                }
                let route = &snap.table.routes()[idx];
                for (i, target) in route.config.upstreams().iter().enumerate() {
                    if let Some(healthy) =
                        health::probe(&shared.health_client, target, &check).await
                    {
                        route.set_down(i, !healthy);
                    }
                }
            }
        });
    }
}
