//! Sessions and token marks in Redis (`[cluster]`), shared by every
//! instance.
//!
//! The cookie's 32 bytes are a 16-byte id and a 16-byte secret. A record
//! is stored under `session:` + HMAC(id), sealed with a key derived from
//! the secret (HKDF, salt: the cluster key) and bound to its Redis key:
//! a dump of Redis alone names no cookie and opens no record, so it cannot
//! ride a session nor read its tokens. Expiry is Redis's (`EXAT` at the
//! session's end). Back-channel logout finds sessions through
//! `subject:` + HMAC(provider, sub|sid) sets of record digests; marks are
//! `mark:` + HMAC(mark key) with their own expiry. Every removal is
//! published so each instance drops its cached copy.

use std::sync::Arc;

use redis::Script;
use tokio::sync::broadcast;

use super::store::{
    SessionId, SessionRecord, SessionStore, StoreError, StoreFuture, SubjectKey, index_keys,
};
use crate::cluster::{Cluster, Invalidation};

const SESSION_INFO: &[u8] = b"portcullis session v1";

pub struct RedisStore {
    cluster: Arc<Cluster>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl RedisStore {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        RedisStore { cluster }
    }

    /// The digest naming the record of a cookie value (its id half only).
    pub fn id_digest(&self, id: &SessionId) -> [u8; 32] {
        self.cluster.digest(&[b"session", &id[..16]])
    }

    fn record_key(&self, id: &SessionId) -> String {
        self.cluster.key("session", &self.id_digest(id))
    }

    fn subject_key(&self, index_key: &str) -> String {
        self.cluster.key(
            "subject",
            &self.cluster.digest(&[b"subject", index_key.as_bytes()]),
        )
    }

    fn seal(&self, id: &SessionId, key: &str, r: &SessionRecord) -> Result<Vec<u8>, StoreError> {
        let plain = serde_json::to_vec(r).map_err(err)?;
        let k = self.cluster.derive(&id[16..], SESSION_INFO);
        Ok(Cluster::seal(&k, key.as_bytes(), &plain))
    }

    fn open(&self, id: &SessionId, key: &str, sealed: &[u8]) -> Option<SessionRecord> {
        let k = self.cluster.derive(&id[16..], SESSION_INFO);
        let plain = Cluster::open(&k, key.as_bytes(), sealed)?;
        serde_json::from_slice(&plain).ok()
    }

    async fn unindex(&self, member: &str, r: &SessionRecord) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for k in index_keys(r) {
            pipe.cmd("SREM")
                .arg(self.subject_key(&k))
                .arg(member)
                .ignore();
        }
        self.cluster.run_pipe::<()>(&pipe).await.map_err(err)
    }
}

fn member_of(key: &str) -> &str {
    key.rsplit(':').next().unwrap_or(key)
}

impl SessionStore for RedisStore {
    fn load(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>> {
        Box::pin(async move {
            let key = self.record_key(&id);
            let v: Option<Vec<u8>> = self
                .cluster
                .run(redis::cmd("GET").arg(&key))
                .await
                .map_err(err)?;
            Ok(v.and_then(|v| self.open(&id, &key, &v)))
        })
    }

    fn save(&self, id: SessionId, record: SessionRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let key = self.record_key(&id);
            let member = member_of(&key).to_string();
            // A replaced record's index entries go (its sid may change).
            let old: Option<Vec<u8>> = self
                .cluster
                .run(redis::cmd("GET").arg(&key))
                .await
                .map_err(err)?;
            if let Some(old) = old.and_then(|v| self.open(&id, &key, &v)) {
                self.unindex(&member, &old).await?;
            }
            let sealed = self.seal(&id, &key, &record)?;
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("SET")
                .arg(&key)
                .arg(sealed)
                .arg("EXAT")
                .arg(record.expires.max(1))
                .ignore();
            for k in index_keys(&record) {
                let sk = self.subject_key(&k);
                pipe.cmd("SADD").arg(&sk).arg(&member).ignore();
                // A set lives as long as its longest session.
                pipe.cmd("EXPIREAT")
                    .arg(&sk)
                    .arg(record.expires)
                    .arg("NX")
                    .ignore();
                pipe.cmd("EXPIREAT")
                    .arg(&sk)
                    .arg(record.expires)
                    .arg("GT")
                    .ignore();
            }
            self.cluster.run_pipe::<()>(&pipe).await.map_err(err)
        })
    }

    fn remove(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>> {
        Box::pin(async move {
            let key = self.record_key(&id);
            let v: Option<Vec<u8>> = self
                .cluster
                .run(redis::cmd("GETDEL").arg(&key))
                .await
                .map_err(err)?;
            let _ = self
                .cluster
                .invalidate(Invalidation::Key(self.id_digest(&id)))
                .await;
            let rec = v.and_then(|v| self.open(&id, &key, &v));
            if let Some(r) = &rec {
                self.unindex(member_of(&key), r).await?;
            }
            Ok(rec)
        })
    }

    fn find(&self, _provider: String, _key: SubjectKey) -> StoreFuture<'_, Vec<SessionId>> {
        // Redis knows digests, never ids: see `remove_matching`.
        Box::pin(async { Ok(Vec::new()) })
    }

    fn remove_matching(&self, provider: String, key: SubjectKey) -> StoreFuture<'_, Option<usize>> {
        Box::pin(async move {
            let sk = self.subject_key(&key.index_key(&provider));
            let members: Vec<String> = self
                .cluster
                .run(redis::cmd("SMEMBERS").arg(&sk))
                .await
                .map_err(err)?;
            let mut ended = 0usize;
            for m in &members {
                let Some(d) = crate::cluster::unhex_digest(m) else {
                    continue;
                };
                let n: i64 = self
                    .cluster
                    .run(redis::cmd("DEL").arg(self.cluster.key("session", &d)))
                    .await
                    .map_err(err)?;
                ended += n as usize;
                let _ = self.cluster.invalidate(Invalidation::Key(d)).await;
            }
            let _: i64 = self
                .cluster
                .run(redis::cmd("DEL").arg(&sk))
                .await
                .map_err(err)?;
            Ok(Some(ended))
        })
    }

    fn purge_expired(&self, _now: u64) -> StoreFuture<'_, Vec<SessionId>> {
        // Redis expires records itself.
        Box::pin(async { Ok(Vec::new()) })
    }

    fn mark(&self, key: String, until: u64, _now: u64) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            static MARK: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
                Script::new(
                    r"local old = redis.call('GET', KEYS[1])
local u = tonumber(ARGV[1])
if old and tonumber(old) > u then u = tonumber(old) end
redis.call('SET', KEYS[1], u, 'EXAT', u)
if old then return 1 else return 0 end",
                )
            });
            let k = self
                .cluster
                .key("mark", &self.cluster.digest(&[b"mark", key.as_bytes()]));
            let mut inv = MARK.key(k);
            inv.arg(until.max(1));
            let was: i64 = self.cluster.run_script(inv).await.map_err(err)?;
            Ok(was == 1)
        })
    }

    fn is_marked(&self, key: String, _now: u64) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let k = self
                .cluster
                .key("mark", &self.cluster.digest(&[b"mark", key.as_bytes()]));
            let n: i64 = self
                .cluster
                .run(redis::cmd("EXISTS").arg(k))
                .await
                .map_err(err)?;
            Ok(n > 0)
        })
    }

    fn lock_refresh(&self, id: SessionId, ttl_ms: u64) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let k = self.cluster.key("refresh", &self.id_digest(&id));
            let r: Option<String> = self
                .cluster
                .run(
                    redis::cmd("SET")
                        .arg(k)
                        .arg(&self.cluster.instance)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms),
                )
                .await
                .map_err(err)?;
            Ok(r.is_some())
        })
    }

    fn unlock_refresh(&self, id: SessionId) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let k = self.cluster.key("refresh", &self.id_digest(&id));
            self.cluster
                .run::<i64>(redis::cmd("DEL").arg(k))
                .await
                .map(|_| ())
                .map_err(err)
        })
    }

    fn cache_lifetime(&self) -> Option<u64> {
        Some(self.cluster.cache_lifetime.as_secs())
    }

    fn invalidations(&self) -> Option<broadcast::Receiver<Invalidation>> {
        Some(self.cluster.subscribe())
    }

    fn is_invalidated(&self, id: &SessionId, inv: &Invalidation) -> bool {
        match inv {
            Invalidation::All => true,
            Invalidation::Key(d) => self.id_digest(id) == *d,
        }
    }
}
