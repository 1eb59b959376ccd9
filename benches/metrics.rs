//! What counting one finished request costs on the request path: our
//! registry (`telemetry::metrics`, per-route handles of plain atomics)
//! against the maintained crate `prometheus-client`, used two ways:
//!
//! - `ours`: `RouteMetrics::request` (the method × status slot, the
//!   duration histogram), exactly what `proxy::handle` calls;
//! - `pc_handles`: prometheus-client with handles held per route, as we
//!   hold ours: a `Counter` per (method, code) slot taken from a `Family`
//!   when the route is built, and the route's `Histogram` (whose
//!   `observe` takes a lock);
//! - `pc_family`: prometheus-client used the usual way: the label set
//!   (route, method, code, status_class) looked up in the `Family` per
//!   request, and the histogram by route.
//!
//! Times (criterion, noisy on a shared machine): `cargo bench --bench
//! metrics`. Instructions (what the README and the module doc quote):
//! `benches/metrics.rs` run as `metrics --ir VARIANT N` executes N requests
//! of one variant and nothing else, so under callgrind
//! `(Ir(N) - Ir(0)) / N` is the instructions per request:
//!
//! ```sh
//! B=$(ls -t target/release/deps/metrics-* | grep -v '\.d$' | head -1)
//! for v in ours pc_handles pc_family; do for n in 0 200000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null $B --ir $v $n 2>&1 | grep Collected
//! done; done
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use portcullis::telemetry::metrics::{DURATION_BUCKETS, Metrics, RouteMetrics};

/// The label set of `portcullis_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<String>,
    method: &'static str,
    code: u16,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Arc<String>,
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
/// The codes a route's handles are made for (a few; ours has 36 slots).
const CODES: [u16; 6] = [200, 304, 404, 429, 502, 504];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

fn class(code: u16) -> &'static str {
    ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from((code / 100).clamp(1, 5)) - 1]
}

/// prometheus-client's families, registered as a gateway would.
struct Pc {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabel, Histogram, fn() -> Histogram>,
    _registry: Registry,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Pc {
    fn new() -> Pc {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Family<RouteLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        let mut registry = Registry::default();
        // A family's clone shares its series: the registry renders what
        // the handles count.
        registry.register("portcullis_requests", "Requests", requests.clone());
        registry.register(
            "portcullis_request_duration_seconds",
            "Durations",
            durations.clone(),
        );
        Pc {
            requests,
            durations,
            _registry: registry,
        }
    }
}

/// A route's prometheus-client handles, taken once (as ours are).
struct PcRoute {
    counters: Vec<Vec<Counter>>,
    duration: Histogram,
}

impl PcRoute {
    fn new(pc: &Pc, route: &Arc<String>) -> PcRoute {
        PcRoute {
            counters: METHODS
                .iter()
                .map(|m| {
                    CODES
                        .iter()
                        .map(|&code| {
                            pc.requests
                                .get_or_create(&RequestLabels {
                                    route: route.clone(),
                                    method: m,
                                    code,
                                    status_class: class(code),
                                })
                                .clone()
                        })
                        .collect()
                })
                .collect(),
            duration: pc
                .durations
                .get_or_create(&RouteLabel {
                    route: route.clone(),
                })
                .clone(),
        }
    }
}

/// One finished request, each way. Not inlined, so each is one function.
#[inline(never)]
fn ours(r: &RouteMetrics, m: &Method, s: StatusCode, took: Duration) {
    r.request(m, s, took);
}

#[inline(never)]
fn pc_handles(r: &PcRoute, m: &Method, s: StatusCode, took: Duration) {
    let code = s.as_u16();
    if let Some(c) = CODES.iter().position(|&x| x == code) {
        r.counters[method_index(m)][c].inc();
    }
    r.duration.observe(took.as_secs_f64());
}

#[inline(never)]
fn pc_family(pc: &Pc, route: &Arc<String>, m: &Method, s: StatusCode, took: Duration) {
    let code = s.as_u16();
    pc.requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: METHODS[method_index(m)],
            code,
            status_class: class(code),
        })
        .inc();
    pc.durations
        .get_or_create(&RouteLabel {
            route: route.clone(),
        })
        .observe(took.as_secs_f64());
}

struct Setup {
    ours: Arc<RouteMetrics>,
    pc: Pc,
    pc_route: PcRoute,
    route: Arc<String>,
    _metrics: Metrics,
}

fn setup() -> Setup {
    let metrics = Metrics::new();
    // Other routes in both registries, as in a real table.
    for i in 0..20 {
        metrics.route(&format!("route-{i}"));
    }
    let pc = Pc::new();
    for i in 0..20 {
        let _ = PcRoute::new(&pc, &Arc::new(format!("route-{i}")));
    }
    let route = Arc::new("app".to_string());
    Setup {
        ours: metrics.route("app"),
        pc_route: PcRoute::new(&pc, &route),
        pc,
        route,
        _metrics: metrics,
    }
}

const TOOK: Duration = Duration::from_micros(1_700);

fn bench(c: &mut Criterion) {
    let s = setup();
    let mut g = c.benchmark_group("count_one_request");
    g.bench_function("ours", |b| {
        b.iter(|| ours(&s.ours, black_box(&Method::GET), StatusCode::OK, TOOK))
    });
    g.bench_function("pc_handles", |b| {
        b.iter(|| pc_handles(&s.pc_route, black_box(&Method::GET), StatusCode::OK, TOOK))
    });
    g.bench_function("pc_family", |b| {
        b.iter(|| {
            pc_family(
                &s.pc,
                &s.route,
                black_box(&Method::GET),
                StatusCode::OK,
                TOOK,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--ir") {
        let variant = args.get(i + 1).map(String::as_str).unwrap_or("");
        let n: u64 = args.get(i + 2).and_then(|n| n.parse().ok()).unwrap_or(0);
        let s = setup();
        let m = black_box(Method::GET);
        for _ in 0..n {
            match variant {
                "ours" => ours(&s.ours, &m, black_box(StatusCode::OK), TOOK),
                "pc_handles" => pc_handles(&s.pc_route, &m, black_box(StatusCode::OK), TOOK),
                "pc_family" => pc_family(&s.pc, &s.route, &m, black_box(StatusCode::OK), TOOK),
                other => panic!("unknown variant {other}: ours, pc_handles, pc_family"),
            }
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
