//! Several instances as one gateway: the Redis link they share state
//! through (`[cluster]`), with the crypto every shared value goes through.
//!
//! - One multiplexed connection (`redis::aio::ConnectionManager`, created
//!   lazily so an instance starts while Redis is down) with short
//!   connect/response timeouts; every operation is bounded by
//!   [`OP_TIMEOUT`].
//! - A health task pings every [`PING_EVERY`]: it drives
//!   `portcullis_cluster_up` and, while Redis is down, operations fail at
//!   once (no request waits for a timeout); it logs each change once.
//! - A pub/sub task carries cache invalidations (logout, back-channel
//!   logout) between instances; after any reconnect it tells listeners to
//!   drop everything they cached, since messages may have been missed.
//! - Keys are `key_prefix` + kind + `:` + an HMAC (keyed with
//!   `encryption_key_file`) of what they name, so no key shows an id,
//!   a subject or a state. Values are AES-256-GCM with keys from HKDF
//!   (salt: the cluster key), bound to their Redis key as associated data.
//!
//! Nothing here knows sessions or sign-ins: `auth` builds on it.
//! `connect` is how Redis is reached (URL, TLS, Sentinel).

mod connect;

pub mod lock;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::ConnectionManager;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use tokio::sync::broadcast;

use crate::config::ClusterConfig;
pub(crate) use connect::link_changed;

/// The longest any one Redis operation may take.
pub const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the health task pings Redis.
pub const PING_EVERY: Duration = Duration::from_millis(500);

/// A cache entry to drop on every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// The entry whose key digest is this.
    Key([u8; 32]),
    /// Everything (after a reconnect: messages may have been missed).
    All,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    #[error("Redis is unreachable")]
    Down,
    #[error("Redis: {0}")]
    Redis(String),
}

/// The Redis link and the shared key.
pub struct Cluster {
    link: connect::Link,
    /// Why the last health check failed (for `/readyz`).
    last_error: Mutex<String>,
    prefix: String,
    pub instance: String,
    hmac: ring::hmac::Key,
    salt: ring::hkdf::Salt,
    pub cache_lifetime: Duration,
    up: AtomicBool,
    errors: AtomicU64,
    invalidations: broadcast::Sender<Invalidation>,
    started: AtomicBool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("instance", &self.instance)
            .field("prefix", &self.prefix)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Builds the link (no connection yet: call [`Cluster::spawn`] inside
    /// the runtime).
    pub fn new(cfg: &ClusterConfig) -> Result<Arc<Cluster>, String> {
        let link = connect::Link::new(cfg)?;
        let (tx, _) = broadcast::channel(1024);
        Ok(Arc::new(Cluster {
            link,
            last_error: Mutex::new(String::new()),
            prefix: cfg.key_prefix.clone(),
            instance: cfg.instance_name.clone(),
            hmac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &cfg.encryption_key.0),
            salt: ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &cfg.encryption_key.0),
            cache_lifetime: cfg.cache_lifetime,
            up: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            invalidations: tx,
            started: AtomicBool::new(false),
        }))
    }

    /// Reaches Redis as `cfg` says from now on (a reload changed the URL,
    /// the credentials or the CA); the health task reports the outcome.
    pub fn relink(&self, cfg: &ClusterConfig) -> Result<(), String> {
        self.link.relink(cfg)
    }

    /// The connection to the data node in use.
    fn conn(&self) -> Result<ConnectionManager, ClusterError> {
        self.link
            .conn()
            .ok_or_else(|| self.failed("no Redis master known yet (Sentinel)"))
    }

    /// Redis answered the last ping (or operation).
    #[inline]
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Redis operations that failed since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// One line for `/readyz`.
    pub fn status_line(&self) -> String {
        format!(
            "cluster: {} (instance {}, redis {})\n",
            if self.is_up() { "up" } else { "down" },
            self.instance,
            if self.is_up() {
                "reachable".to_string()
            } else {
                let why = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
                format!("unreachable: {why}; sessions served from cache, new sign-ins refused")
            }
        )
    }

    /// HMAC-SHA256 of `data` under the cluster key: what keys are named by.
    pub fn digest(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.hmac);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// The Redis key of `kind` for a digest.
    pub fn key(&self, kind: &str, digest: &[u8; 32]) -> String {
        let mut s = String::with_capacity(self.prefix.len() + kind.len() + 65);
        s.push_str(&self.prefix);
        s.push_str(kind);
        s.push(':');
        s.push_str(&hex(digest));
        s
    }

    /// The pub/sub channel of invalidations.
    fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// An AEAD key from `secret` (HKDF-SHA256, salt: the cluster key).
    pub fn derive(&self, secret: &[u8], info: &[u8]) -> LessSafeKey {
        let prk = self.salt.extract(secret);
        let info = [info];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .expect("HKDF output of the AEAD key length");
        LessSafeKey::new(UnboundKey::from(okm))
    }

    /// nonce ‖ AES-256-GCM(plain), bound to `aad` (the Redis key).
    pub fn seal(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the OS random number generator failed");
        let mut buf = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .expect("AES-GCM sealing");
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        out
    }

    /// The plaintext of [`Cluster::seal`]'s output; `None` when it does
    /// not open with this key (a wrong secret, or tampering).
    pub fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (n, c) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).ok()?;
        let mut buf = c.to_vec();
        let plain = key.open_in_place(nonce, Aad::from(aad), &mut buf).ok()?;
        Some(plain.to_vec())
    }

    fn failed(&self, e: impl std::fmt::Display) -> ClusterError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(instance = %self.instance, error = %e, "Redis is unreachable: cached sessions keep working for the cache lifetime, new sign-ins are refused until it is back");
        }
        ClusterError::Redis(e.to_string())
    }

    /// Runs one command. Fails at once while Redis is known to be down.
    pub async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, ClusterError> {
        if !self.is_up() {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(ClusterError::Down);
        }
        let mut c = self.conn()?;
        match tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<T>(&mut c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(e)),
            Err(_) => Err(self.failed("timed out")),
        }
    }

    /// Runs a pipeline (atomically when built with `.atomic()`).
    pub async fn run_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, ClusterError> {
        if !self.is_up() {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(ClusterError::Down);
        }
        let mut c = self.conn()?;
        match tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<T>(&mut c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(e)),
            Err(_) => Err(self.failed("timed out")),
        }
    }

    /// Runs a Lua script.
    pub async fn run_script<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, ClusterError> {
        if !self.is_up() {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(ClusterError::Down);
        }
        let mut c = self.conn()?;
        match tokio::time::timeout(OP_TIMEOUT, inv.invoke_async::<T>(&mut c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(e)),
            Err(_) => Err(self.failed("timed out")),
        }
    }

    /// Tells every instance (this one included) to drop a cache entry.
    pub async fn invalidate(&self, inv: Invalidation) -> Result<(), ClusterError> {
        let payload = match inv {
            Invalidation::Key(d) => hex(&d),
            Invalidation::All => "*".to_string(),
        };
        // Also locally at once, whatever Redis says.
        let _ = self.invalidations.send(inv);
        self.run::<i64>(redis::cmd("PUBLISH").arg(self.channel()).arg(payload))
            .await
            .map(|_| ())
    }

    /// Invalidations from every instance.
    pub fn subscribe(&self) -> broadcast::Receiver<Invalidation> {
        self.invalidations.subscribe()
    }

    /// Starts the health and pub/sub tasks (once; they end when the
    /// cluster is dropped).
    pub fn spawn(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(health(Arc::downgrade(self)));
        tokio::spawn(listen(Arc::downgrade(self)));
    }
}

async fn health(weak: Weak<Cluster>) {
    loop {
        {
            let Some(c) = weak.upgrade() else { return };
            let checked = c.link.check().await;
            let ok = checked.is_ok();
            if let Err(e) = &checked {
                e.clone_into(&mut c.last_error.lock().unwrap_or_else(|e| e.into_inner()));
            }
            let was = c.up.swap(ok, Ordering::Relaxed);
            match (was, ok) {
                (false, true) => {
                    tracing::info!(instance = %c.instance, "Redis is reachable again");
                    // Whatever was published while down was missed.
                    let _ = c.invalidations.send(Invalidation::All);
                }
                (true, false) => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    let error = checked.err().unwrap_or_default();
                    tracing::warn!(instance = %c.instance, %error, "Redis is unreachable: cached sessions keep working for the cache lifetime, new sign-ins are refused until it is back");
                }
                _ => {}
            }
        }
        tokio::time::sleep(PING_EVERY).await;
    }
}

async fn listen(weak: Weak<Cluster>) {
    loop {
        let (client, channel, epoch) = match weak.upgrade() {
            Some(c) => (c.link.client(), c.channel(), c.link.epoch()),
            None => return,
        };
        let Some(client) = client else {
            tokio::time::sleep(PING_EVERY).await;
            continue;
        };
        let sub = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        if let Ok(Ok(ps)) = tokio::time::timeout(OP_TIMEOUT, sub).await {
            if let Some(c) = weak.upgrade() {
                // Subscribed anew: anything published before was missed.
                let _ = c.invalidations.send(Invalidation::All);
            }
            let mut stream = ps.into_on_message();
            loop {
                let next = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
                let Some(c) = weak.upgrade() else { return };
                if c.link.epoch() != epoch {
                    // Another data node now (failover or reload).
                    break;
                }
                match next {
                    Err(_) => continue,
                    Ok(None) => break,
                    Ok(Some(msg)) => {
                        let inv = match msg.get_payload_bytes() {
                            b"*" => Some(Invalidation::All),
                            h => unhex(h).map(Invalidation::Key),
                        };
                        if let Some(inv) = inv {
                            let _ = c.invalidations.send(inv);
                        }
                    }
                }
            }
        }
        tokio::time::sleep(PING_EVERY).await;
    }
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// The digest a key or message names in hex.
pub fn unhex_digest(h: &str) -> Option<[u8; 32]> {
    unhex(h.as_bytes())
}

fn unhex(h: &[u8]) -> Option<[u8; 32]> {
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in h.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d = [0xabu8; 32];
        assert_eq!(unhex(hex(&d).as_bytes()), Some(d));
        assert_eq!(unhex(b"zz"), None);
    }
}
