//! Prometheus metrics. Handles are plain atomics looked up when a snapshot
//! is built (per route) or at start (per listener), so the request path
//! only increments; `/metrics` renders the text exposition format.
//!
//! Per-route series live in a registry keyed by route name that survives
//! reloads, so counters never reset because the config changed.
//!
//! Hand-written rather than the maintained `prometheus-client` crate,
//! because of what counting one finished request costs
//! (`benches/metrics.rs`; callgrind, instructions per request, the
//! `dist` build): ours 84; prometheus-client with handles taken per route
//! as ours are (a `Counter` per method × status slot, the route's
//! `Histogram`) 129, and its `Histogram::observe` takes a mutex, so every
//! worker serialises on a busy route; prometheus-client used as intended
//! (the label set looked up in a `Family` per request) 988, +904 per
//! request, 3.3 % of a whole proxied request (27,274, README). Criterion
//! (single thread, uncontended): 22 ns, 19 ns and 99 ns. The cheap way to
//! use the crate is this design with its types, and the scrape-time
//! series (certificates, upstream health, `/proc`) would need custom
//! collectors all the same.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

/// `process_*` from `/proc`.
mod process;
/// The text exposition (`/metrics`).
mod render;

/// Upper bounds of the request duration histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Status codes counted in fixed slots (the ones a gateway sees; 499 is
/// nginx's "client closed request"). Any other code is counted exactly too,
/// in a small map only it touches.
const CODES: [u16; 36] = [
    101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 406, 408,
    409, 410, 411, 413, 414, 415, 416, 421, 422, 426, 429, 431, 499, 500, 502, 503, 504,
];

/// The slot of `code` in [`CODES`].
#[inline]
fn code_index(code: u16) -> Option<usize> {
    CODES.binary_search(&code).ok()
}
/// Why an upstream left the rotation (`reason` of
/// `portcullis_upstream_ejections_total`); the value of an [`Ejection`] is
/// the index of its name here.
pub const EJECTION_REASONS: [&str; 2] = ["failures", "health_check"];

/// What took an upstream out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// `upstream_eject_after` consecutive failed requests (passive).
    Failures = 0,
    /// Its active health check started failing.
    HealthCheck = 1,
}

/// The counters of one upstream of a route, kept across reloads (by the
/// upstream's URL, as the route's are by its name). Only touched when an
/// upstream leaves the rotation, never per request.
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    ejections: [AtomicU64; EJECTION_REASONS.len()],
}

impl UpstreamCounters {
    /// Counts the upstream leaving the rotation.
    pub fn ejected(&self, why: Ejection) {
        self.ejections[why as usize].fetch_add(1, Relaxed);
    }
}

/// One upstream's health at scrape time (`portcullis_upstream_up`), read
/// from the live snapshot's balancers by the caller of [`Metrics::render`]:
/// usable = neither ejected nor failing its health check.
pub struct UpstreamGauge {
    pub route: String,
    pub upstream: String,
    pub up: bool,
}

/// Upstream failure kinds, as labelled.
pub const UPSTREAM_KINDS: [&str; 3] = ["refused", "timeout", "reset"];

/// The `kind` label of `portcullis_upstream_errors_total`; the value is the
/// index of its name in [`UPSTREAM_KINDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Could not connect.
    Refused = 0,
    /// The upstream, or the connect, took too long.
    Timeout = 1,
    /// The upstream hung up or answered with something that is not HTTP.
    Reset = 2,
}

fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::PATCH => 5,
        http::Method::OPTIONS => 6,
        _ => 7,
    }
}

/// A fixed-bucket histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    /// Sum in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Requests by method and status slot.
#[derive(Debug)]
struct RequestCounts([[AtomicU64; CODES.len()]; METHODS.len()]);

impl Default for RequestCounts {
    fn default() -> Self {
        RequestCounts(std::array::from_fn(|_| {
            std::array::from_fn(|_| AtomicU64::new(0))
        }))
    }
}

/// Everything counted per route.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    requests: RequestCounts,
    /// Requests whose status is not in [`CODES`]: (method, code) → count.
    rare_codes: std::sync::Mutex<std::collections::BTreeMap<(u8, u16), u64>>,
    pub duration: Histogram,
    upstream_errors: [AtomicU64; UPSTREAM_KINDS.len()],
    /// Upstream picks made with every upstream ejected or failing its
    /// health check (panic mode).
    upstream_panic: AtomicU64,
    /// Requests refused by the route's `rate_limit` (429).
    rate_limited: AtomicU64,
    /// Per upstream URL; looked up when a snapshot is built.
    upstreams: std::sync::Mutex<std::collections::BTreeMap<String, Arc<UpstreamCounters>>>,
}

impl RouteMetrics {
    /// Counts one finished request.
    #[inline]
    pub fn request(&self, method: &http::Method, status: http::StatusCode, took: Duration) {
        let m = method_index(method);
        match code_index(status.as_u16()) {
            Some(c) => {
                self.requests.0[m][c].fetch_add(1, Relaxed);
            }
            None => self.rare_code(m, status.as_u16()),
        }
        self.duration.observe(took);
    }

    #[cold]
    fn rare_code(&self, method: usize, code: u16) {
        let mut rare = self.rare_codes.lock().unwrap_or_else(|e| e.into_inner());
        *rare.entry((method as u8, code)).or_default() += 1;
    }

    /// `(method, code, count)` of every status seen, in order.
    fn request_counts(&self) -> Vec<(usize, u16, u64)> {
        let mut out: Vec<(usize, u16, u64)> = Vec::new();
        for (mi, row) in self.requests.0.iter().enumerate() {
            for (ci, v) in row.iter().enumerate() {
                let v = v.load(Relaxed);
                if v > 0 {
                    out.push((mi, CODES[ci], v));
                }
            }
        }
        let rare = self.rare_codes.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(rare.iter().map(|(&(m, c), &v)| (usize::from(m), c, v)));
        out.sort_unstable();
        out
    }

    /// Counts an upstream failure.
    #[inline]
    pub fn upstream_error(&self, kind: UpstreamFailure) {
        self.upstream_errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// Counts a request sent to an upstream although none was usable.
    #[inline]
    pub fn upstream_panic(&self) {
        self.upstream_panic.fetch_add(1, Relaxed);
    }

    /// The counters of the route's upstream `url`, created on first use;
    /// called when a snapshot is built, never per request.
    pub fn upstream(&self, url: &str) -> Arc<UpstreamCounters> {
        let mut map = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(url.to_string()).or_default().clone()
    }

    /// `(upstream, reason, count)` for every upstream the route has had.
    fn ejection_counts(&self) -> Vec<(String, &'static str, u64)> {
        let map = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .flat_map(|(url, c)| {
                EJECTION_REASONS
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (url.clone(), *r, c.ejections[i].load(Relaxed)))
            })
            .collect()
    }

    /// Counts a request refused by the route's rate limit.
    #[inline]
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
    }
}

/// Per listener (`http`, `https`).
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    pub in_flight: AtomicI64,
    pub open_connections: AtomicI64,
    pub connections: AtomicU64,
}

/// One request counted in a listener's in-flight gauge until this is
/// dropped. The servers (our HTTP/1 codec, hyper's HTTP/2) drop a
/// request's handler future when the client goes away mid-request, so a plain increment/decrement pair around the await
/// leaks one in-flight request per abandoned request; a guard cannot.
#[must_use = "the request stops counting as in flight when this is dropped"]
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicI64);

impl<'a> InFlight<'a> {
    #[inline]
    pub fn enter(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Relaxed);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// All process metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: DashMap<String, Arc<RouteMetrics>>,
    /// Requests that matched no route.
    pub unrouted: Arc<RouteMetrics>,
    pub http: ListenerMetrics,
    pub https: ListenerMetrics,
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub tls_unknown_sni: AtomicU64,
    pub acme_success: AtomicU64,
    pub acme_failure: AtomicU64,
    pub reload_success: AtomicU64,
    pub reload_failure: AtomicU64,
    /// Unix seconds of the last successful (re)load.
    pub last_reload_success: AtomicI64,
    pub routes_loaded: AtomicI64,
    pub auth: AuthMetrics,
    /// Docker discovery: 1 connected, 0 unreachable; rendered only once
    /// discovery has started (`docker_configured`).
    pub docker_up: AtomicI64,
    pub docker_configured: std::sync::atomic::AtomicBool,
    /// Containers whose labels were refused in the running table.
    pub docker_label_errors: AtomicI64,
    pub cluster: ClusterMetrics,
}

/// `[cluster]`: the Redis link (copied in at scrape time).
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    /// `[cluster]` is configured (otherwise nothing is rendered).
    pub configured: std::sync::atomic::AtomicBool,
    /// `[cluster] instance_name`, the label of the series.
    pub instance: std::sync::OnceLock<String>,
    /// 1 while Redis answers.
    pub up: AtomicI64,
    pub errors: AtomicU64,
}

/// Single sign-on outcomes.
#[derive(Debug, Default)]
pub struct AuthMetrics {
    pub login_ok: AtomicU64,
    pub login_failed: AtomicU64,
    pub denied: AtomicU64,
    pub refresh_ok: AtomicU64,
    pub refresh_failed: AtomicU64,
    pub logout: AtomicU64,
    pub bearer_ok: AtomicU64,
    pub bearer_rejected: AtomicU64,
    pub sessions_active: AtomicI64,
}

/// One sample of something the store knows at scrape time.
pub struct CertGauge {
    pub host: String,
    pub source: &'static str,
    pub not_after: i64,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle for a route, created on first use; called when a
    /// snapshot is built, never per request.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        self.routes
            .entry(name.to_string())
            .or_default()
            .value()
            .clone()
    }

    pub fn listener(&self, https: bool) -> &ListenerMetrics {
        if https { &self.https } else { &self.http }
    }

    pub fn reload_succeeded(&self, routes: usize) {
        self.reload_success.fetch_add(1, Relaxed);
        self.routes_loaded.store(routes as i64, Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.last_reload_success.store(now, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        let r = m.route("app");
        r.request(
            &http::Method::GET,
            http::StatusCode::OK,
            Duration::from_millis(3),
        );
        r.request(
            &http::Method::POST,
            http::StatusCode::BAD_GATEWAY,
            Duration::from_secs(2),
        );
        r.upstream_error(UpstreamFailure::Timeout);
        let text = m.render(&[], &[]);
        assert!(text.contains(
            "portcullis_requests_total{route=\"app\",method=\"GET\",code=\"200\",status_class=\"2xx\"} 1"
        ));
        assert!(text.contains(
            "portcullis_requests_total{route=\"app\",method=\"POST\",code=\"502\",status_class=\"5xx\"} 1"
        ));
        assert!(
            text.contains(
                "portcullis_request_duration_seconds_bucket{route=\"app\",le=\"0.005\"} 1"
            )
        );
        assert!(
            text.contains(
                "portcullis_request_duration_seconds_bucket{route=\"app\",le=\"+Inf\"} 2"
            )
        );
        assert!(
            text.contains("portcullis_upstream_errors_total{route=\"app\",kind=\"timeout\"} 1")
        );
        // The same handle after a "reload".
        assert!(Arc::ptr_eq(&r, &m.route("app")));
    }

    #[test]
    fn in_flight_guard_leaves_the_gauge_when_dropped() {
        let l = ListenerMetrics::default();
        let a = InFlight::enter(&l.in_flight);
        let b = InFlight::enter(&l.in_flight);
        assert_eq!(l.in_flight.load(Relaxed), 2);
        drop(a);
        assert_eq!(l.in_flight.load(Relaxed), 1);
        // A future holding the guard that is dropped before it finishes
        // (what the servers do when the client goes away) leaves the gauge too.
        let fut = async move {
            let _b = b;
            std::future::pending::<()>().await;
        };
        drop(fut);
        assert_eq!(l.in_flight.load(Relaxed), 0);
    }
}
