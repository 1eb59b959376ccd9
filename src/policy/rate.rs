//! Rate limits (`rate_limit`): GCRA from governor, keyed by client address
//! or user, shared by every worker thread (the limiter lives in the
//! snapshot). Memory is bounded: every [`SWEEP_EVERY`] checks keys whose
//! buckets are full again are dropped (`retain_recent`), and if more than
//! [`MAX_KEYS`] are still active the limiter starts over empty (logged),
//! so a flood of distinct addresses cannot grow it without bound.
//!
//! The buckets are governor's own `DashMap` store, with two changes made
//! for the cost of a check that lets the request through (measured with
//! `benches/load/profile.sh callgrind`, `ROUTE_EXTRA` a rate limit that
//! never triggers: 530 → 244 instructions per check, the route's request
//! +2.2 % → +1.4 % over the plain route): foldhash instead of SipHash for
//! the keys (seeded per process, as hashbrown's default; the map holds at
//! most [`MAX_KEYS`] keys between sweeps anyway), an address hashed as one
//! integer, and starting over clears the map in place instead of swapping
//! a new limiter in through an `ArcSwap` whose load cost about 150
//! instructions on every check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, StateStore};
use governor::{Quota, RateLimiter};
use http::{HeaderValue, Response, StatusCode, header};

use crate::config::{RateBy, RateLimit};
use crate::http::body::Body;

/// Most keys one limiter holds between sweeps.
pub const MAX_KEYS: usize = 65_536;
/// Checks between sweeps.
pub const SWEEP_EVERY: u64 = 4096;

/// What a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Ip(IpAddr),
    User(Arc<str>),
}

/// An address is one integer for the hasher (the derived hash feeds it
/// two discriminants and the octets as a slice: 59 instructions per
/// check, about a fifth of it). Keys that differ may hash alike; `Eq`
/// tells them apart.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        match self {
            Key::Ip(IpAddr::V4(a)) => h.write_u32(a.to_bits()),
            Key::Ip(IpAddr::V6(a)) => h.write_u128(a.to_bits()),
            Key::User(u) => u.hash(h),
        }
    }
}

type Map = DashMap<Key, InMemoryState, foldhash::fast::RandomState>;

/// governor's `DashMap` store, behind an `Arc` the limiter keeps a
/// handle to, so that starting over is a `clear`.
struct Buckets(Arc<Map>);

impl StateStore for Buckets {
    type Key = Key;

    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        <Map as StateStore>::measure_and_replace(&self.0, key, f)
    }
}

impl ShrinkableKeyedStateStore<Key> for Buckets {
    fn retain_recent(&self, drop_below: Nanos) {
        <Map as ShrinkableKeyedStateStore<Key>>::retain_recent(&self.0, drop_below);
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One limiter: a quota and its buckets.
pub struct Limiter {
    limiter: RateLimiter<Key, Buckets, DefaultClock>,
    buckets: Arc<Map>,
    checks: AtomicU64,
    clock: DefaultClock,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        let period = (limit.per / limit.requests).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("period is not zero")
            .allow_burst(NonZeroU32::new(limit.burst.max(1)).expect("at least 1"));
        let buckets = Arc::new(Map::default());
        let clock = DefaultClock::default();
        Limiter {
            limiter: RateLimiter::new(quota, Buckets(buckets.clone()), clock.clone()),
            buckets,
            checks: AtomicU64::new(0),
            clock,
        }
    }

    /// Takes one request from `key`'s bucket, or says how long until one
    /// is available.
    pub fn check(&self, key: Key) -> Result<(), Duration> {
        let r = self
            .limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()));
        if self.checks.fetch_add(1, Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        r
    }

    #[cold]
    fn sweep(&self) {
        if self.buckets.len() <= MAX_KEYS / 2 {
            return;
        }
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        if self.buckets.len() > MAX_KEYS {
            tracing::warn!(
                keys = self.buckets.len(),
                "rate limiter holds too many active keys; starting over"
            );
            self.buckets.clear();
            self.buckets.shrink_to_fit();
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Limiters of one snapshot: `by = "ip"` routes with the same limit share
/// one (a client's requests to all of them count together).
#[derive(Default)]
pub struct Shared {
    by_ip: HashMap<RateLimit, Arc<Limiter>>,
}

impl Shared {
    pub fn get(&mut self, limit: RateLimit) -> Arc<Limiter> {
        if limit.by == RateBy::Ip {
            self.by_ip
                .entry(limit)
                .or_insert_with(|| Arc::new(Limiter::new(limit)))
                .clone()
        } else {
            Arc::new(Limiter::new(limit))
        }
    }
}

/// 429 with `Retry-After` in whole seconds (at least 1).
pub fn too_many(wait: Duration, request_id: &HeaderValue) -> Response<Body> {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    let body = format!(
        "429 Too Many Requests\n\nSlow down and try again in {secs} s.\nRequest id: {}\n",
        request_id.to_str().unwrap_or("")
    );
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    r.extensions_mut().insert(crate::http::error::GatewayPage);
    let h = r.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused_with_a_wait() {
        let l = Limiter::new(RateLimit {
            requests: 60,
            per: Duration::from_secs(60),
            burst: 3,
            by: RateBy::Ip,
        });
        let a = Key::Ip("10.0.0.1".parse().unwrap());
        for _ in 0..3 {
            assert!(l.check(a.clone()).is_ok());
        }
        let wait = l.check(a.clone()).unwrap_err();
        assert!(
            wait <= Duration::from_secs(1) && !wait.is_zero(),
            "{wait:?}"
        );
        // Another key has its own bucket.
        assert!(l.check(Key::Ip("10.0.0.2".parse().unwrap())).is_ok());
    }

    #[test]
    fn memory_is_bounded_under_many_addresses() {
        let l = Limiter::new(RateLimit {
            requests: 1,
            per: Duration::from_secs(3600),
            burst: 1,
            by: RateBy::Ip,
        });
        for i in 0..100_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = l.check(Key::Ip(ip));
            assert!(
                l.len() <= MAX_KEYS + SWEEP_EVERY as usize,
                "at {i}: {}",
                l.len()
            );
        }
    }
}
