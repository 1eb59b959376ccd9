//! Route lookup and snapshot build benchmarks.
//!
//! Goals: lookup on a 10,000-route table (mixed exact and `*.wildcard`
//! hosts, several paths each) has a median under 100 ns and allocates
//! nothing; parse → validate → build → swap of a 10,000-route snapshot
//! under 50 ms (the build + swap part alone is the figure).
//!
//! Before criterion runs, [`allocation_check`] counts heap allocations
//! across 1,000 lookups of every kind (path and host normalisation, then
//! the route lookup the request path uses) with a counting global allocator and
//! panics if there is even one, so `cargo bench --bench routing` fails
//! loudly if the hot path ever starts allocating.
//!
//! Run: `cargo bench --bench routing -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use criterion::{BatchSize, Criterion, SamplingMode, criterion_group};

use portcullis::config::{self, parse_host_pattern};
use portcullis::http::normalize::normalize_path;
use portcullis::routing::{HOST_BUF_LEN, RouteTable, normalize_host};
use portcullis::snapshot::Snapshot;
use portcullis::telemetry::metrics::Metrics;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

// ---------------------------------------------------------------------------
// The generated route set.

/// Number of routes in every table here.
const ROUTES: usize = 10_000;
/// Paths per host (some hosts have fewer, see [`route_set`]).
const PATHS: [&str; 5] = ["/", "/api", "/api/v1", "/api/v1/users", "/static"];

/// Host `i`: three of every four are exact (`app-17.example.com`), the
/// fourth a wildcard (`*.tenant-3.example.net`).
fn host_pattern(i: usize) -> String {
    if i % 4 == 3 {
        format!("*.tenant-{i}.example.net")
    } else {
        format!("app-{i}.example.com")
    }
}

/// Exactly [`ROUTES`] (host pattern, path prefix) pairs, in config order:
/// five paths per host, except that every seventh host has no `/` route, so
/// a request for an unrouted path on it misses (and falls through the
/// wildcards). About 2,060 hosts, a quarter of them wildcards.
fn route_set() -> Vec<(String, &'static str)> {
    let mut out = Vec::with_capacity(ROUTES);
    let mut i = 0;
    while out.len() < ROUTES {
        let host = host_pattern(i);
        for p in PATHS {
            if i % 7 == 0 && p == "/" {
                continue;
            }
            if out.len() < ROUTES {
                out.push((host.clone(), p));
            }
        }
        i += 1;
    }
    out
}

/// The table as `RouteTable::build` sees it, carrying the route's index.
fn route_table() -> RouteTable<u32> {
    RouteTable::build(
        route_set()
            .into_iter()
            .enumerate()
            .map(|(id, (host, path))| {
                (
                    parse_host_pattern(&host).unwrap(),
                    path.to_string(),
                    id as u32,
                )
            }),
    )
}

/// The same routes as a config file, as a reload reads it.
fn config_text() -> String {
    let mut s = String::with_capacity(ROUTES * 90);
    s.push_str("[server]\nhttp = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:9180\"\n\n");
    for (i, (host, path)) in route_set().iter().enumerate() {
        s.push_str(&format!(
            "[[route]]\nhost = \"{host}\"\npath = \"{path}\"\nupstream = \"http://127.0.0.1:{}\"\n\n",
            9000 + i % 50
        ));
    }
    s
}

/// One lookup case: (bench name, raw host as a client sends it, path,
/// expected route: Some(pattern + prefix) or None).
struct Case {
    name: &'static str,
    host: &'static str,
    path: &'static str,
    want: Option<(&'static str, &'static str)>,
}

const CASES: &[Case] = &[
    Case {
        name: "exact_hit",
        host: "app-1001.example.com",
        path: "/api",
        want: Some(("app-1001.example.com", "/api")),
    },
    Case {
        name: "exact_deep_path",
        host: "app-1001.example.com",
        path: "/api/v1/users/12345/profile/settings/notifications",
        want: Some(("app-1001.example.com", "/api/v1/users")),
    },
    Case {
        name: "wildcard_hit",
        host: "web.tenant-1003.example.net",
        path: "/static/app.js",
        want: Some(("*.tenant-1003.example.net", "/static")),
    },
    Case {
        name: "wildcard_deep_host",
        host: "a.b.c.d.tenant-1003.example.net",
        path: "/api/v1/users/42",
        want: Some(("*.tenant-1003.example.net", "/api/v1/users")),
    },
    Case {
        // A `;` parameter: the path is looked up a second time as a
        // servlet backend would read it (both readings agree here).
        name: "exact_segment_params",
        host: "app-1001.example.com",
        path: "/api/v1/users/42;jsessionid=0123456789abcdef",
        want: Some(("app-1001.example.com", "/api/v1/users")),
    },
    Case {
        name: "miss_unknown_host",
        host: "nobody.nowhere.example.org",
        path: "/",
        want: None,
    },
    Case {
        // An exact host with routes, none of which matches: falls through
        // every wildcard suffix, then misses.
        name: "miss_unrouted_path",
        host: "app-1001.example.com",
        path: "/nothing/here",
        want: None,
    },
];

fn check_cases(table: &RouteTable<u32>) {
    let set = route_set();
    assert_eq!(table.len(), ROUTES);
    for c in CASES {
        let mut buf = [0u8; HOST_BUF_LEN];
        let host = normalize_host(c.host, &mut buf).unwrap();
        let got = table
            .route(host, c.path)
            .expect("no case is ambiguous")
            .map(|&id| (set[id as usize].0.as_str(), set[id as usize].1));
        assert_eq!(got, c.want, "case {}", c.name);
    }
}

// ---------------------------------------------------------------------------
// Zero allocations per lookup, proved before any timing.

fn allocation_check(table: &RouteTable<u32>) {
    const N: u64 = 1_000;
    let mut total = 0u64;
    for c in CASES {
        // Same work as the request path: normalise the path (borrowed
        // when there is nothing to change) and the Host header into a
        // stack buffer, then look up.
        let before = allocations();
        for _ in 0..N {
            let path = normalize_path(black_box(c.path)).unwrap();
            let mut buf = [0u8; HOST_BUF_LEN];
            let host = normalize_host(black_box(c.host), &mut buf).unwrap();
            let _ = black_box(table.route(host, &path));
        }
        let n = allocations() - before;
        println!(
            "allocation check: {:<20} {n} allocations across {N} normalize_path + normalize_host + route",
            c.name
        );
        total += n;
    }
    assert_eq!(
        total, 0,
        "route lookup allocated on the hot path ({total} allocations)"
    );
    println!("allocation check: OK, 0 allocations per lookup\n");
}

// ---------------------------------------------------------------------------
// Benchmarks.

fn lookup(c: &mut Criterion) {
    let table = route_table();
    check_cases(&table);
    let mut g = c.benchmark_group("lookup_10k");
    for case in CASES {
        // Host already normalised: the table lookup alone.
        let mut buf = [0u8; HOST_BUF_LEN];
        let host = normalize_host(case.host, &mut buf).unwrap().to_string();
        g.bench_function(case.name, |b| {
            b.iter(|| black_box(table.route(black_box(&host), black_box(case.path))))
        });
    }
    g.finish();

    // What the request path does per request: normalise the raw Host
    // header (mixed case, port) and look up.
    let mut g = c.benchmark_group("normalize_and_lookup_10k");
    let raw = [
        ("exact_hit", "App-1001.Example.COM:8443", "/api/v1"),
        (
            "wildcard_hit",
            "Web.Tenant-1003.example.net.",
            "/static/x.css",
        ),
        ("miss_unknown_host", "nobody.nowhere.example.org:80", "/"),
    ];
    for (name, host, path) in raw {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = [0u8; HOST_BUF_LEN];
                let h = normalize_host(black_box(host), &mut buf).unwrap();
                black_box(table.route(h, black_box(path)).ok().flatten().copied())
            })
        });
    }
    g.finish();
}

fn normalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize_host");
    let cases = [
        ("short_lower", "example.com"),
        ("mixed_case_port", "App-1001.Example.COM:8443"),
        ("trailing_dot", "web.tenant-1003.example.net."),
        ("ipv6_port", "[2001:db8::1]:8080"),
        ("invalid", "exa mple.com"),
    ];
    for (name, raw) in cases {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = [0u8; HOST_BUF_LEN];
                black_box(normalize_host(black_box(raw), &mut buf).map(|h| h.len()))
            })
        });
    }
    g.finish();
}

fn snapshot(c: &mut Criterion) {
    let text = config_text();
    let path = Path::new("bench-10k.toml");
    let config = config::parse(path, &text).expect("the generated config is valid");
    assert_eq!(config.routes.len(), ROUTES);
    // Route metric handles live in a registry that survives reloads, as in
    // the gateway (`Shared::metrics`).
    let metrics = Metrics::new();
    let swap = ArcSwap::from_pointee(Snapshot::build(config.clone(), 1, &metrics));

    // One timed pass of the whole reload, printed so the goal can be read
    // off even from a quick `--test` run.
    let t = Instant::now();
    let cfg = config::parse(path, &text).unwrap();
    let parsed = t.elapsed();
    let snap = Snapshot::build(cfg, 2, &metrics);
    swap.store(Arc::new(snap));
    println!(
        "one reload of {} routes: parse+validate {:.1} ms, build+swap {:.1} ms, total {:.1} ms\n",
        ROUTES,
        parsed.as_secs_f64() * 1e3,
        (t.elapsed() - parsed).as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3,
    );

    let mut g = c.benchmark_group("snapshot_10k");
    // Milliseconds per iteration: few, equal-sized samples.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    let mut generation = 2u64;
    // The figure: build the table from a validated config and
    // publish it. The old snapshot is dropped inside `store` (as in a real
    // reload once the last in-flight request lets go of it).
    g.bench_function("build_and_swap", |b| {
        b.iter_batched(
            || config.clone(),
            |cfg| {
                generation += 1;
                swap.store(Arc::new(Snapshot::build(cfg, generation, &metrics)));
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("build_only", |b| {
        b.iter_batched(
            || config.clone(),
            |cfg| Snapshot::build(cfg, 0, &metrics),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("parse_and_validate", |b| {
        b.iter(|| config::parse(path, black_box(&text)).unwrap())
    });
    g.bench_function("parse_validate_build_swap", |b| {
        b.iter(|| {
            let cfg = config::parse(path, black_box(&text)).unwrap();
            generation += 1;
            swap.store(Arc::new(Snapshot::build(cfg, generation, &metrics)));
        })
    });
    g.finish();
}

criterion_group!(benches, lookup, normalize, snapshot);

fn main() {
    allocation_check(&route_table());
    benches();
    Criterion::default().configure_from_args().final_summary();
}
