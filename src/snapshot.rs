//! What the request path reads: one immutable [`Snapshot`] of the routing
//! state behind one `ArcSwap`, and the process-wide [`Shared`] parts that
//! outlive reloads (certificate store, sessions, counters, request ids).
//!
//! Start-up and reload make a snapshot the same way ([`assemble`]);
//! reload publishes it with one atomic store ([`Shared::publish`]).
//! Requests load it once and keep it until they finish, so an in-flight
//! request completes on the route it started on.
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::{Config, RouteConfig, ServerConfig};
use crate::http::request_id::RequestIds;
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
    /// Which upstream gets the next request; told how each one did.
    pub balancer: Balancer,
    /// The route's name and its upstreams' URLs as shared strings, made
    /// once here: an access-log record takes a reference count, not a copy.
    pub log_name: Arc<str>,
    pub log_upstreams: Vec<Arc<str>>,
    /// The route's options (access list, rate limit, header rules,
    /// compression), built once here; `None` for a route with none.
    pub policy: Option<Box<crate::policy::Policy>>,
}

impl Route {
    pub fn new(config: RouteConfig, metrics: Arc<RouteMetrics>) -> Self {
        let balancer = Balancer::new(&config, &metrics);
        Route {
            log_name: config.name.as_str().into(),
            log_upstreams: config
                .upstreams()
                .iter()
                .map(|u| u.url.as_str().into())
                .collect(),
            config,
            metrics,
            balancer,
            policy: None,
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
    /// Identity providers of this config.
    pub auth: Arc<crate::auth::AuthSnapshot>,
    /// Label routes left out (hidden by a file route, or bad labels).
    pub discovery: Arc<crate::config::labels::Discovery>,
}

/// Builds the snapshot for `config`, at start-up (`previous` is `None`)
/// and on reload (the live snapshot, whose generation this one follows):
/// routes with their counters and upstream balancers, and the identity
/// providers the gateway prepared (`AuthShared::prepare`, so discovery
/// survives reloads). Nothing is published or started here; the caller
/// installs certificates before and asks ACME for missing ones after
/// [`Shared::publish`].
pub fn assemble(
    config: Config,
    previous: Option<&Snapshot>,
    metrics: &Metrics,
    auth: Arc<crate::auth::AuthSnapshot>,
) -> Snapshot {
    let generation = previous.map_or(1, |p| p.generation + 1);
    Snapshot::build_parts(config, generation, metrics, auth)
}

impl Snapshot {
    /// A snapshot of `config` without a running gateway (identity
    /// providers detached), for benchmarks and tests.
    pub fn build(config: Config, generation: u64, metrics: &Metrics) -> Snapshot {
        let auth = Arc::new(crate::auth::AuthSnapshot::detached(&config.oidc));
        Self::build_parts(config, generation, metrics, auth)
    }

    fn build_parts(
        config: Config,
        generation: u64,
        metrics: &Metrics,
        auth: Arc<crate::auth::AuthSnapshot>,
    ) -> Snapshot {
        let discovery = config.discovery.clone();
        let mut limiters = crate::policy::rate::Shared::default();
        let table = RouteTable::build_with(config.routes.into_iter().map(|r| {
            let m = metrics.route(&r.name);
            let policy = crate::policy::Policy::build(&r.options, &mut limiters, m.clone());
            let mut route = Route::new(r, m);
            route.policy = policy.map(Box::new);
            (
                route.config.host.clone(),
                route.config.path.clone(),
                route.config.path_match,
                route,
            )
        }));
        Snapshot {
            generation,
            loaded_at: SystemTime::now(),
            server: config.server,
            table,
            auth,
            discovery,
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
    /// The listeners in effect (`http ADDR, https ADDR, admin ADDR`), set
    /// when serving starts; a reload cannot move them.
    pub listening: std::sync::OnceLock<String>,
    pub metrics: Arc<Metrics>,
    /// Sessions, sign-ins in progress, identity providers.
    pub auth: Arc<crate::auth::AuthShared>,
    /// Docker discovery's connection state (with `[docker]`).
    pub docker: Option<Arc<crate::discovery::docker::Status>>,
}

impl Shared {
    /// The process-wide parts of a starting gateway, with its first
    /// snapshot (from [`assemble`], counted in `metrics`); `certs` already
    /// holds that snapshot's certificates. Its health checks start with
    /// the listeners.
    pub fn new(
        first: Snapshot,
        config_path: PathBuf,
        certs: Arc<CertStore>,
        metrics: Arc<Metrics>,
        auth: Arc<crate::auth::AuthShared>,
    ) -> Arc<Shared> {
        metrics.reload_succeeded(first.table.len());
        Arc::new(Shared {
            health_client: HealthClient::new(&first.server),
            snapshot: ArcSwap::from_pointee(first),
            metrics,
            request_ids: RequestIds::new(),
            ready: AtomicBool::new(false),
            config_path,
            certs,
            https_port: AtomicU16::new(0),
            listening: std::sync::OnceLock::new(),
            auth,
            docker: None,
        })
    }

    /// Makes a reloaded `snapshot` the live one: requests that start from
    /// now on use it; its health checks start (the old one's stop).
    pub fn publish(self: &Arc<Self>, snapshot: Snapshot) -> Arc<Snapshot> {
        let routes = snapshot.table.len();
        let snapshot = Arc::new(snapshot);
        self.snapshot.store(snapshot.clone());
        spawn_health_checks(self, &snapshot);
        self.metrics.reload_succeeded(routes);
        snapshot
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
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
                        route.balancer.set_down(i, !healthy, &route.config);
                    }
                }
            }
        });
    }
}
