//! Rate limits (`rate_limit`): GCRA from governor, keyed by client address
//! or user, shared by every worker thread (the limiter lives in the
//! snapshot). Memory is bounded: every [`SWEEP_EVERY`] checks keys whose
//! buckets are full again are dropped (`retain_recent`), and if more than
//! [`MAX_KEYS`] are still active the limiter starts over empty (logged),
//! so a flood of distinct addresses cannot grow it without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, Response, StatusCode, header};

use crate::config::{RateBy, RateLimit};
use crate::http::body::Body;

/// Most keys one limiter holds between sweeps.
pub const MAX_KEYS: usize = 65_536;
/// Checks between sweeps.
pub const SWEEP_EVERY: u64 = 4096;

/// What a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Ip(IpAddr),
    User(Arc<str>),
}

/// One limiter: a quota and its buckets.
pub struct Limiter {
    quota: Quota,
    buckets: ArcSwap<DefaultKeyedRateLimiter<Key>>,
    checks: AtomicU64,
    clock: DefaultClock,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        let period = (limit.per / limit.requests).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("period is not zero")
            .allow_burst(NonZeroU32::new(limit.burst.max(1)).expect("at least 1"));
        Limiter {
            quota,
            buckets: ArcSwap::from_pointee(RateLimiter::keyed(quota)),
            checks: AtomicU64::new(0),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from `key`'s bucket, or says how long until one
    /// is available.
    pub fn check(&self, key: Key) -> Result<(), Duration> {
        let buckets = self.buckets.load();
        let r = buckets
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()));
        if self.checks.fetch_add(1, Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep(&buckets);
        }
        r
    }

    fn sweep(&self, buckets: &DefaultKeyedRateLimiter<Key>) {
        if buckets.len() <= MAX_KEYS / 2 {
            return;
        }
        buckets.retain_recent();
        buckets.shrink_to_fit();
        if buckets.len() > MAX_KEYS {
            tracing::warn!(
                keys = buckets.len(),
                "rate limiter holds too many active keys; starting over"
            );
            self.buckets.store(Arc::new(RateLimiter::keyed(self.quota)));
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.buckets.load().len()
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
