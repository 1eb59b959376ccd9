//! Lease locks with fencing tokens, for work that one instance at a time
//! may do (an ACME order per host).
//!
//! - Taking: one Lua script does `SET key value NX PX lease` and, when it
//!   wins, `INCR` on the lock's fence counter, so every holder gets a
//!   larger fencing token than any before it. The value is
//!   `random-token fence instance`; a refusal returns the holder's.
//! - Renewing and releasing compare the whole value first (a lease that
//!   expired and was taken by another instance is never extended or
//!   deleted by its old holder).
//! - Writing a result ([`Cluster::set_fenced`]) succeeds only while the
//!   fence counter still equals the writer's token: a holder whose lease
//!   ran out and was taken over cannot publish over the newer holder.
//!
//! Redis restarted without persistence forgets the counters; tokens then
//! start again at 1 (a holder from before the restart holds a lock that
//! is gone too, so its renewal fails and it stops).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use ring::rand::{SecureRandom as _, SystemRandom};

use super::{Cluster, ClusterError, hex};

/// A lock this instance holds.
#[derive(Debug, Clone)]
pub struct Lease {
    key: String,
    fence_key: String,
    value: String,
    /// The fencing token: larger than every earlier holder's.
    pub fence: u64,
    pub lease: Duration,
}

/// Who holds a lock (another instance, or this one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub instance: String,
    pub fence: u64,
    /// Milliseconds until the lease ends unless renewed.
    pub expires_in_ms: i64,
}

fn parse_value(v: &str, ttl: i64) -> Option<Holder> {
    let mut it = v.splitn(3, ' ');
    let _token = it.next()?;
    let fence = it.next()?.parse().ok()?;
    let instance = it.next()?.to_string();
    Some(Holder {
        instance,
        fence,
        expires_in_ms: ttl.max(0),
    })
}

static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur, redis.call('PTTL', KEYS[1])} end
local fence = redis.call('INCR', KEYS[2])
local v = ARGV[1] .. ' ' .. fence .. ' ' .. ARGV[3]
redis.call('SET', KEYS[1], v, 'NX', 'PX', ARGV[2])
return {1, v, tonumber(ARGV[2])}",
    )
});

static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0",
    )
});

static SET_FENCED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1",
    )
});

impl Cluster {
    fn lock_keys(&self, digest: &[u8; 32]) -> (String, String) {
        (self.key("lock", digest), self.key("fence", digest))
    }

    /// Takes the lock named by `digest` for `lease`, or says who holds it.
    pub async fn try_lock(
        &self,
        digest: &[u8; 32],
        lease: Duration,
    ) -> Result<Result<Lease, Holder>, ClusterError> {
        let (key, fence_key) = self.lock_keys(digest);
        let mut token = [0u8; 16];
        SystemRandom::new()
            .fill(&mut token)
            .expect("the OS random number generator failed");
        let ms = lease.as_millis().max(1) as u64;
        let mut inv = TAKE.key(&key);
        inv.key(&fence_key)
            .arg(hex(&token))
            .arg(ms)
            .arg(&self.instance);
        let (won, value, ttl): (i64, String, i64) = self.run_script(inv).await?;
        let holder = parse_value(&value, ttl)
            .ok_or_else(|| ClusterError::Redis(format!("unexpected lock value in {key}")))?;
        if won == 1 {
            Ok(Ok(Lease {
                key,
                fence_key,
                value,
                fence: holder.fence,
                lease,
            }))
        } else {
            Ok(Err(holder))
        }
    }

    /// Extends the lease; `false` when the lock is no longer ours.
    pub async fn renew(&self, l: &Lease) -> Result<bool, ClusterError> {
        let mut inv = RENEW.key(&l.key);
        inv.arg(&l.value).arg(l.lease.as_millis().max(1) as u64);
        let n: i64 = self.run_script(inv).await?;
        Ok(n == 1)
    }

    /// Releases the lock if it is still ours.
    pub async fn unlock(&self, l: &Lease) -> Result<bool, ClusterError> {
        let mut inv = RELEASE.key(&l.key);
        inv.arg(&l.value);
        let n: i64 = self.run_script(inv).await?;
        Ok(n == 1)
    }

    /// Who holds the lock named by `digest`, if anyone.
    pub async fn lock_holder(&self, digest: &[u8; 32]) -> Result<Option<Holder>, ClusterError> {
        Ok(self.lock_holders(&[*digest]).await?.pop().flatten())
    }

    /// Who holds each of these locks, in one round trip.
    pub async fn lock_holders(
        &self,
        digests: &[[u8; 32]],
    ) -> Result<Vec<Option<Holder>>, ClusterError> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for d in digests {
            let (key, _) = self.lock_keys(d);
            pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        }
        let flat: Vec<redis::Value> = self.run_pipe(&pipe).await?;
        Ok(flat
            .chunks(2)
            .map(|pair| {
                let v: Option<String> = redis::from_redis_value(pair.first()?.clone()).ok()?;
                let ttl: i64 = redis::from_redis_value(pair.get(1)?.clone()).ok()?;
                parse_value(&v?, ttl)
            })
            .collect())
    }

    /// Sets `key` to `value` only while `l` is the latest holder of its
    /// lock (no later instance has taken it); `false` when superseded.
    pub async fn set_fenced(
        &self,
        l: &Lease,
        key: &str,
        value: &[u8],
    ) -> Result<bool, ClusterError> {
        let mut inv = SET_FENCED.key(&l.fence_key);
        inv.key(key).arg(l.fence).arg(value);
        let n: i64 = self.run_script(inv).await?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_values() {
        assert_eq!(
            parse_value("ab12 7 gw-a", 1500),
            Some(Holder {
                instance: "gw-a".into(),
                fence: 7,
                expires_in_ms: 1500
            })
        );
        assert_eq!(parse_value("ab12 x gw-a", 1), None);
        assert_eq!(parse_value("ab12", 1), None);
    }
}
