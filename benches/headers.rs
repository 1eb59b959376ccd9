//! Per-request header work (src/proxy/headers.rs) on a realistic browser
//! header set: what every proxied request pays before it reaches the
//! upstream client.
//!
//! Each function is timed on a fresh copy of the request headers (the copy
//! is made outside the timed part). Before timing, the allocations each
//! step makes are counted with a counting global allocator and printed, so
//! the allocation budget of the request path is visible next to its time.
//!
//! Run: `cargo bench --bench headers -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use criterion::{BatchSize, Criterion, criterion_group};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use portcullis::http::conn::client_ip;
use portcullis::http::request_id::{REQUEST_ID, RequestIds, request_id};
use portcullis::proxy::headers::{
    Origin, is_upgrade_request, remove_hop_by_hop, set_forwarded, strip_spoofable,
};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::ALLOCATIONS;

// ---------------------------------------------------------------------------
// Header sets.

/// A Chrome navigation request as it reaches the gateway (HTTP/1.1).
const BROWSER: &[(&str, &str)] = &[
    ("host", "app.example.com"),
    ("connection", "keep-alive"),
    ("cache-control", "max-age=0"),
    (
        "sec-ch-ua",
        "\"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"",
    ),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", "\"Linux\""),
    ("upgrade-insecure-requests", "1"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    ),
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    ),
    ("sec-fetch-site", "same-origin"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-user", "?1"),
    ("sec-fetch-dest", "document"),
    ("referer", "https://app.example.com/dashboard"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "en-GB,en-US;q=0.9,en;q=0.8"),
    (
        "cookie",
        "portcullis_session=Rk9PQkFSQkFaUVVYMTIzNDU2Nzg5MA.aGVsbG8td29ybGQ; _ga=GA1.1.123456789.1700000000; theme=dark",
    ),
    ("if-none-match", "W/\"5e15153d-120f\""),
];

/// The same request with every kind of header a client might spoof.
const SPOOFING: &[(&str, &str)] = &[
    ("x-forwarded-for", "1.2.3.4"),
    ("x-forwarded-proto", "https"),
    ("x_forwarded_host", "evil.example"),
    ("x-real-ip", "1.2.3.4"),
    ("forwarded", "for=1.2.3.4;proto=https"),
    ("x-authentik-username", "admin"),
    ("x_authentik_groups", "admins"),
    ("remote-user", "admin"),
    ("x-request-id", "client-supplied-id-0123456789"),
    ("connection", "x-secret"),
    ("x-secret", "1"),
];

/// An upstream's 100-byte-body response headers.
const RESPONSE: &[(&str, &str)] = &[
    ("server", "nginx"),
    ("date", "Mon, 01 Jan 2024 00:00:00 GMT"),
    ("content-type", "text/plain"),
    ("content-length", "100"),
    ("connection", "keep-alive"),
    ("keep-alive", "timeout=60"),
];

fn map(sets: &[&[(&str, &str)]]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for set in sets {
        for (k, v) in *set {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
    }
    h
}

/// The peer as the connection formats it once.
static PEER: std::sync::LazyLock<HeaderValue> =
    std::sync::LazyLock::new(|| HeaderValue::from_static("127.0.0.1"));

fn origin(host: &HeaderValue) -> Origin<'_> {
    Origin {
        peer: "127.0.0.1".parse().unwrap(),
        peer_value: &PEER,
        peer_trusted: false,
        scheme: portcullis::http::Scheme::Http,
        host,
    }
}

/// Everything `proxy::route_request` + `forward::forward` do to the request
/// headers of a proxied request, and to the response headers on the way
/// back, in the same order.
fn request_pipeline(req: &mut HeaderMap, ids: &RequestIds) -> HeaderValue {
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let id = request_id(req, ids);
    let cip = client_ip(req, peer, |_| false);
    let host = req
        .get(header::HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static(""));
    strip_spoofable(req, false);
    set_forwarded(req, &origin(&host), cip);
    req.insert(REQUEST_ID, id.clone());
    let upgrade = is_upgrade_request(req);
    remove_hop_by_hop(req, upgrade);
    req.insert(header::HOST, host);
    id
}

fn response_pipeline(resp: &mut HeaderMap, id: &HeaderValue) {
    remove_hop_by_hop(resp, false);
    resp.insert(REQUEST_ID, id.clone());
}

// ---------------------------------------------------------------------------

/// Allocations one call of `f` makes on a fresh copy of `input`.
fn count(input: &HeaderMap, mut f: impl FnMut(&mut HeaderMap)) -> u64 {
    // Average over a few runs; the first may warm a lazy static.
    const N: u64 = 100;
    let mut copies: Vec<HeaderMap> = (0..N).map(|_| input.clone()).collect();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for h in &mut copies {
        f(h);
    }
    let n = ALLOCATIONS.load(Ordering::Relaxed) - before;
    drop(copies);
    n / N
}

fn allocation_report() {
    let ids = RequestIds::new();
    let browser = map(&[BROWSER]);
    let spoof = map(&[BROWSER, SPOOFING]);
    let resp = map(&[RESPONSE]);
    let id = ids.next();
    let host = HeaderValue::from_static("app.example.com");
    let o = origin(&host);
    let peer = o.peer;
    let rows: Vec<(&str, u64)> = vec![
        (
            "strip_spoofable (browser)",
            count(&browser, |h| strip_spoofable(h, false)),
        ),
        (
            "strip_spoofable (spoofing)",
            count(&spoof, |h| strip_spoofable(h, false)),
        ),
        (
            "remove_hop_by_hop (browser)",
            count(&browser, |h| remove_hop_by_hop(h, false)),
        ),
        (
            "set_forwarded (browser)",
            count(&browser, |h| set_forwarded(h, &o, peer)),
        ),
        (
            "request_id generated",
            count(&browser, |h| {
                black_box(request_id(h, &ids));
            }),
        ),
        (
            "request_id kept (client's)",
            count(&spoof, |h| {
                black_box(request_id(h, &ids));
            }),
        ),
        (
            "request pipeline (browser)",
            count(&browser, |h| {
                black_box(request_pipeline(h, &ids));
            }),
        ),
        (
            "request pipeline (spoofing)",
            count(&spoof, |h| {
                black_box(request_pipeline(h, &ids));
            }),
        ),
        (
            "response pipeline",
            count(&resp, |h| response_pipeline(h, &id)),
        ),
    ];
    println!("allocations per call (header map copy excluded):");
    for (name, n) in rows {
        println!("  {name:<30} {n}");
    }
    println!();
}

fn bench(c: &mut Criterion) {
    let ids = RequestIds::new();
    let browser = map(&[BROWSER]);
    let spoof = map(&[BROWSER, SPOOFING]);
    let resp = map(&[RESPONSE]);
    let host = HeaderValue::from_static("app.example.com");
    let o = origin(&host);
    let peer = o.peer;

    let mut g = c.benchmark_group("headers");
    let cases: [(&str, &HeaderMap); 2] = [("browser", &browser), ("spoofing", &spoof)];
    for (set, input) in cases {
        g.bench_function(format!("strip_spoofable/{set}"), |b| {
            b.iter_batched_ref(
                || input.clone(),
                |h| strip_spoofable(h, false),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("remove_hop_by_hop/{set}"), |b| {
            b.iter_batched_ref(
                || input.clone(),
                |h| remove_hop_by_hop(h, false),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("set_forwarded/{set}"), |b| {
            b.iter_batched_ref(
                || input.clone(),
                |h| set_forwarded(h, &o, peer),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("request_id/{set}"), |b| {
            b.iter(|| black_box(request_id(black_box(input), &ids)))
        });
        g.bench_function(format!("request_pipeline/{set}"), |b| {
            b.iter_batched_ref(
                || input.clone(),
                |h| request_pipeline(h, &ids),
                BatchSize::SmallInput,
            )
        });
    }
    let id = ids.next();
    g.bench_function("response_pipeline", |b| {
        b.iter_batched_ref(
            || resp.clone(),
            |h| response_pipeline(h, &id),
            BatchSize::SmallInput,
        )
    });
    // The baseline the others are measured against: copying the map, which
    // is what `iter_batched_ref` does outside the timed part.
    g.bench_function("baseline_clone/browser", |b| {
        b.iter(|| black_box(browser.clone()))
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    allocation_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
