//! Which upstream of a route gets a request: round robin over those that
//! are usable, passive ejection after consecutive failures, active health
//! check results, and panic mode when none is usable. One [`Balancer`] per
//! route per snapshot; it reads only the route's config and counters, and
//! counts each upstream leaving the rotation (`portcullis_upstream_ejections_total`);
//! [`Balancer::is_up`] is what `portcullis_upstream_up` shows.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::config::RouteConfig;
use crate::telemetry::metrics::{Ejection, RouteMetrics, UpstreamCounters};

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

/// The upstream choice state of one route.
#[derive(Debug)]
pub struct Balancer {
    next_upstream: AtomicUsize,
    /// Parallel to the route's upstream list.
    health: Vec<UpstreamHealth>,
    /// Parallel too: each upstream's counters (they outlive the snapshot).
    counters: Vec<Arc<UpstreamCounters>>,
    /// When panic mode was last logged ([`mono_ms`]; 0 = never).
    panic_logged_ms: AtomicU64,
}

/// Panic mode is logged at most this often per route.
const PANIC_LOG_EVERY_MS: u64 = 10_000;

impl Balancer {
    /// For `config`'s upstreams, counted in `metrics`.
    pub fn new(config: &RouteConfig, metrics: &RouteMetrics) -> Self {
        let upstreams = config.upstreams();
        Balancer {
            next_upstream: AtomicUsize::new(0),
            health: upstreams
                .iter()
                .map(|_| UpstreamHealth::default())
                .collect(),
            counters: upstreams.iter().map(|u| metrics.upstream(&u.url)).collect(),
            panic_logged_ms: AtomicU64::new(0),
        }
    }

    /// Is upstream `i` in rotation now (neither ejected nor failing its
    /// health check)? For `portcullis_upstream_up`, at scrape time.
    pub fn is_up(&self, i: usize) -> bool {
        self.health.get(i).is_some_and(|h| h.usable(&mut None))
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
    pub fn pick(
        &self,
        tried: &[usize],
        config: &RouteConfig,
        metrics: &RouteMetrics,
    ) -> Option<usize> {
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
        self.panicked(config, metrics);
        Some(i)
    }

    /// Counts a pick made with no usable upstream, and says so in the log
    /// at most every [`PANIC_LOG_EVERY_MS`] per route (not per request).
    fn panicked(&self, config: &RouteConfig, metrics: &RouteMetrics) {
        metrics.upstream_panic();
        let now = mono_ms();
        let last = self.panic_logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= PANIC_LOG_EVERY_MS)
            && self
                .panic_logged_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                route = %config.name,
                upstreams = self.health.len(),
                "every upstream of the route is ejected or failing its health check; \
                 sending requests to them anyway (panic mode)"
            );
        }
    }

    /// Records the outcome of a request to upstream `i`. After
    /// `eject_after` consecutive failures it is skipped for `eject_for`.
    pub fn report(
        &self,
        i: usize,
        ok: bool,
        eject_after: u32,
        eject_for: std::time::Duration,
        config: &RouteConfig,
    ) {
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
            self.counters[i].ejected(Ejection::Failures);
            tracing::warn!(
                route = %config.name,
                upstream = %config.upstreams()[i].url,
                failures = f,
                eject_ms = eject_for.as_millis() as u64,
                "upstream ejected after consecutive failures"
            );
        }
    }

    /// Active health check result for upstream `i`; logs transitions.
    pub fn set_down(&self, i: usize, down: bool, config: &RouteConfig) {
        let Some(h) = self.health.get(i) else { return };
        if h.down.swap(down, Ordering::Relaxed) != down {
            let upstream = &config.upstreams()[i].url;
            if down {
                self.counters[i].ejected(Ejection::HealthCheck);
                tracing::warn!(route = %config.name, %upstream, "upstream failed its health check; taken out of rotation");
            } else {
                tracing::info!(route = %config.name, %upstream, "upstream healthy again");
            }
        }
    }
}
