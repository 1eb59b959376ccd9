//! The per-request session check on a protected route with a hot cache
//! (goal < 2 µs): find our cookie among a browser's
//! cookies, decode the id, one cache lookup, expiry / refresh / provider
//! checks, the route policy; then the header work a signed-in request adds
//! (our cookie stripped from `Cookie`, identity headers set).
//!
//! Before timing, a counting allocator proves the check itself allocates
//! nothing, and prints what the header work allocates.
//!
//! Run: `cargo bench --bench session -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use portcullis::auth::identity::UserClaims;
use portcullis::auth::session::{Found, Session, Sessions, encode_id, new_id, unix_now};
use portcullis::auth::store::{MemoryStore, SessionRecord};
use portcullis::auth::{policy, strip_session_cookie};
use portcullis::config::{IdentityHeaders, OidcPolicy};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

// ---------------------------------------------------------------------------

const PROVIDER: &str = "authentik";
const ISSUER: &str = "https://auth.example.com/application/o/portcullis/";
const COOKIE: &str = "__Host-portcullis";

struct Fixture {
    sessions: Sessions,
    policy: OidcPolicy,
    headers: HeaderMap,
}

fn record(user: &str, groups: &[&str]) -> SessionRecord {
    let now = unix_now();
    SessionRecord {
        provider: PROVIDER.into(),
        issuer: ISSUER.into(),
        user: UserClaims {
            sub: "9f522ec4a85d3ded47934ef692ea7b5412035a2c771a970a59893c65f3a6e409".into(),
            username: user.into(),
            email: Some(format!("{user}@example.com")),
            email_verified: Some(true),
            name: Some("Alice Admin".into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        },
        sid: Some("a-provider-session".into()),
        created: now,
        expires: now + 12 * 3600,
        id_token: Some("x".repeat(900)),
        access_token: Some("y".repeat(40)),
        access_expires: Some(now + 3600),
        refresh_token: Some("z".repeat(40)),
    }
}

/// A hot cache of 10,000 sessions and a browser request carrying one.
fn fixture() -> Fixture {
    let sessions = Sessions::new(Arc::new(MemoryStore::new()));
    let mut mine = None;
    for i in 0..10_000 {
        let id = new_id();
        let groups: &[&str] = if i % 2 == 0 {
            &["users", "admins"]
        } else {
            &["users"]
        };
        sessions.insert_cached(Arc::new(Session::new(id, record("alice", groups))));
        if i == 5_000 {
            mine = Some(id);
        }
    }
    let cookie = format!(
        "_ga=GA1.2.123456789.1700000000; theme=dark; {COOKIE}={}; lang=en-GB",
        encode_id(&mine.unwrap())
    );
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "grafana.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("cookie", &cookie),
        ("sec-fetch-mode", "navigate"),
    ] {
        headers.insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    Fixture {
        sessions,
        policy: OidcPolicy {
            provider: PROVIDER.into(),
            provider_index: 0,
            groups: vec!["admins".into()],
            emails: vec![],
            email_domains: vec![],
            identity_headers: IdentityHeaders::Authentik,
        },
        headers,
    }
}

/// What the gate does for a signed-in request on a cache hit.
#[inline]
fn check(f: &Fixture) -> Option<Arc<Session>> {
    let now = unix_now();
    let s = match f
        .sessions
        .find_cached(&f.headers, COOKIE, PROVIDER, ISSUER, now)
    {
        Found::Hit(s) => s,
        _ => return None,
    };
    if s.needs_refresh(now) {
        return None;
    }
    policy::allows(&f.policy, &s.identity).then_some(s)
}

/// The header work of a signed-in request being forwarded.
fn forward_headers(headers: &mut HeaderMap, s: &Session) {
    strip_session_cookie(headers);
    s.identity.apply(headers, IdentityHeaders::Authentik);
}

fn allocation_report(f: &Fixture) {
    for _ in 0..100 {
        black_box(check(f));
    }
    let before = allocations();
    for _ in 0..10_000 {
        black_box(check(f));
    }
    let n = allocations() - before;
    assert_eq!(
        n, 0,
        "the session check allocated {n} times in 10,000 calls"
    );
    eprintln!("session check: 0 allocations per request");

    let s = check(f).expect("the session is found and allowed");
    let mut h = f.headers.clone();
    h.reserve(16);
    let before = allocations();
    strip_session_cookie(&mut h);
    let strip = allocations() - before;
    let before = allocations();
    s.identity.apply(&mut h, IdentityHeaders::Authentik);
    let first = allocations() - before;
    // The first clone of each value turns its buffer into a shared one;
    // from then on a clone is a reference count.
    let mut h2 = f.headers.clone();
    h2.reserve(16);
    let before = allocations();
    s.identity.apply(&mut h2, IdentityHeaders::Authentik);
    let steady = allocations() - before;
    eprintln!(
        "cookie strip: {strip} allocation(s); identity headers: {steady} ({first} on the session's first request)"
    );
    assert_eq!(steady, 0);
    assert_eq!(
        h["cookie"],
        "_ga=GA1.2.123456789.1700000000; theme=dark; lang=en-GB"
    );
    assert_eq!(h["x-authentik-username"], "alice");
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    allocation_report(&f);
    let mut g = c.benchmark_group("session");
    g.bench_function("check (hot cache, 10k sessions)", |b| {
        b.iter(|| black_box(check(black_box(&f))))
    });
    let s = check(&f).unwrap();
    g.bench_function("check + strip cookie + identity headers", |b| {
        b.iter_batched_ref(
            || f.headers.clone(),
            |h| {
                let s = check(&f).unwrap();
                forward_headers(h, &s);
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("no cookie (public-style miss)", |b| {
        let empty = HeaderMap::new();
        b.iter(|| {
            black_box(f.sessions.find_cached(
                black_box(&empty),
                COOKIE,
                PROVIDER,
                ISSUER,
                unix_now(),
            ))
        })
    });
    drop(s);
    g.finish();
}

criterion_group!(session, benches);

fn main() {
    session();
    Criterion::default().configure_from_args().final_summary();
}
