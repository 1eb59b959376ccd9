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
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::acme::AcmePlan;

use crate::config::{Config, RouteConfig, ServerConfig};
use crate::proxy::forward::UpstreamClient;
use crate::proxy::request_id::RequestIds;
use crate::routing::RouteTable;
use crate::telemetry::metrics::{Metrics, RouteMetrics};
use crate::tls::CertStore;

/// Milliseconds on a monotonic clock, for ejection deadlines.
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Health of one upstream of a route: passive (consecutive failures eject
/// it for a while) and active (a failing health check marks it down).
#[derive(Debug, Default)]
pub struct UpstreamHealth {
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    down: AtomicBool,
}

impl UpstreamHealth {
    /// `now_ms` is read on first need: only an upstream that was ejected
    /// at some point needs the clock, so the usual pick reads none.
    fn usable(&self, now_ms: &mut Option<u64>) -> bool {
        if self.down.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= *now_ms.get_or_insert_with(mono_ms)
    }
}

/// One route as the request path uses it.
#[derive(Debug)]
pub struct Route {
    pub config: RouteConfig,
    /// This route's counters, looked up once when the snapshot is built.
    pub metrics: Arc<RouteMetrics>,
    next_upstream: AtomicUsize,
    /// Parallel to the upstream list.
    health: Vec<UpstreamHealth>,
    /// The route's name and its upstreams' URLs as shared strings, made
    /// once here: an access-log record takes a reference count, not a copy.
    pub log_name: Arc<str>,
    pub log_upstreams: Vec<Arc<str>>,
    /// When panic mode was last logged ([`mono_ms`]; 0 = never).
    panic_logged_ms: AtomicU64,
}

/// Panic mode is logged at most this often per route.
const PANIC_LOG_EVERY_MS: u64 = 10_000;

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
            next_upstream: AtomicUsize::new(0),
            health: (0..n).map(|_| UpstreamHealth::default()).collect(),
            panic_logged_ms: AtomicU64::new(0),
        }
    }

    /// Round robin over the route's upstreams, skipping those in `tried`.
    /// Usable ones (neither ejected nor failing their health check) come
    /// first. When none is usable the route does not go dark ("panic
    /// mode", as Envoy calls it; nginx never ejects a sole server): the
    /// pick is among those that pass their health check, ignoring
    /// ejection, and failing that among all of them. Passive ejection
    /// alone can be caused by a few requests that time out, so it must
    /// not be able to take a whole route down; an upstream failing its
    /// health check stays out as long as any other passes. `None` only
    /// when every upstream has been tried (or there are none).
    pub fn pick_upstream(&self, tried: &[usize]) -> Option<usize> {
        let n = self.health.len();
        if n == 0 {
            return None;
        }
        let mut now = None;
        let start = self.next_upstream.fetch_add(1, Ordering::Relaxed);
        let mut order = (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| !tried.contains(i));
        if let Some(i) = order.clone().find(|&i| self.health[i].usable(&mut now)) {
            return Some(i);
        }
        let i = order
            .clone()
            .find(|&i| !self.health[i].down.load(Ordering::Relaxed))
            .or_else(|| order.next())?;
        self.panicked();
        Some(i)
    }

    /// Counts a pick made with no usable upstream, and says so in the log
    /// at most every [`PANIC_LOG_EVERY_MS`] per route (not per request).
    fn panicked(&self) {
        self.metrics.upstream_panic();
        let now = mono_ms();
        let last = self.panic_logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= PANIC_LOG_EVERY_MS)
            && self
                .panic_logged_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                route = %self.config.name,
                upstreams = self.health.len(),
                "every upstream of the route is ejected or failing its health check; \
                 sending requests to them anyway (panic mode)"
            );
        }
    }

    /// Records the outcome of a request to upstream `i`. After
    /// `eject_after` consecutive failures it is skipped for `eject_for`.
    pub fn report(&self, i: usize, ok: bool, eject_after: u32, eject_for: std::time::Duration) {
        let Some(h) = self.health.get(i) else { return };
        if ok {
            if h.failures.load(Ordering::Relaxed) != 0 {
                h.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let f = h.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if eject_after > 0 && f >= eject_after {
            h.failures.store(0, Ordering::Relaxed);
            h.ejected_until_ms
                .store(mono_ms() + eject_for.as_millis() as u64, Ordering::Relaxed);
            tracing::warn!(
                route = %self.config.name,
                upstream = %self.config.upstreams()[i].url,
                failures = f,
                eject_ms = eject_for.as_millis() as u64,
                "upstream ejected after consecutive failures"
            );
        }
    }

    /// Active health check result for upstream `i`; logs transitions.
    pub fn set_down(&self, i: usize, down: bool) {
        let Some(h) = self.health.get(i) else { return };
        if h.down.swap(down, Ordering::Relaxed) != down {
            let upstream = &self.config.upstreams()[i].url;
            if down {
                tracing::warn!(route = %self.config.name, %upstream, "upstream failed its health check; taken out of rotation");
            } else {
                tracing::info!(route = %self.config.name, %upstream, "upstream healthy again");
            }
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
        let client = UpstreamClient::new(&config.server);
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
            client,
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
