//! ACME state shared by the instances of a cluster (`[cluster]`), on
//! `cluster`'s Redis link.
//!
//! - The account and every certificate live in Redis, sealed (AES-256-GCM,
//!   key derived from the cluster key, bound to their Redis key): a dump of
//!   Redis shows no private key and no PEM. Each instance mirrors them into
//!   its `state_dir` (atomic writes, 0600), so it starts serving from disk
//!   while Redis is down.
//! - One order per host cluster-wide: the order lock (`cluster::lock`, a
//!   lease with a fencing token, renewed while the order runs); a
//!   certificate is published only while its fencing token is the latest,
//!   then announced on pub/sub. Every instance loads it from Redis on the
//!   announcement, on a reconnect, and every [`POLL_EVERY`] as a safety net.
//!   A certificate Redis lacks (an instance that ran alone before, a Redis
//!   that lost its data) is offered from `state_dir`, never replacing one.
//! - Challenges: HTTP-01 key authorizations and TLS-ALPN-01 digests go to
//!   Redis for [`CHALLENGE_TTL`], so whichever instance the CA reaches
//!   answers (its own store first, Redis second; a TLS-ALPN-01 certificate
//!   is made on the spot from the published digest, so no challenge key
//!   leaves the instance that made it).
//!
//! Keys: `key_prefix` + kind + `:` + HMAC of the ACME directory and host
//! (or token); no host name shows in a key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::LessSafeKey;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::storage::Storage;
use super::{AcmeOrder, AcmePlan};
use crate::cluster::lock::{Holder, Lease};
use crate::cluster::{Cluster, ClusterError, Invalidation};
use crate::tls::CertStore;
use crate::tls::store::{CertEntry, Lookup, OrderLock, SharedAcme, Source};

/// How long published challenge material lives in Redis at most.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// How often every certificate is compared with Redis's, in case an
/// announcement was missed.
pub const POLL_EVERY: Duration = Duration::from_secs(30);

const SEAL_INFO: &[u8] = b"portcullis acme v1";

#[derive(Serialize, Deserialize)]
struct CertRecord {
    chain: String,
    key: String,
}

/// The ACME side of the cluster.
pub struct AcmeShared {
    pub cluster: Arc<Cluster>,
    lease: Duration,
    seal: LessSafeKey,
    /// The ACME directory and hosts of the current plan (for the admin view).
    plan: Mutex<Option<(String, Vec<String>)>>,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl AcmeShared {
    pub fn new(cluster: Arc<Cluster>, lease: Duration) -> Arc<AcmeShared> {
        let seal = cluster.derive(b"acme", SEAL_INFO);
        Arc::new(AcmeShared {
            cluster,
            lease,
            seal,
            plan: Mutex::new(None),
        })
    }

    fn cert_digest(&self, dir: &str, host: &str) -> [u8; 32] {
        self.cluster
            .digest(&[b"acme-cert", dir.as_bytes(), host.as_bytes()])
    }

    fn lock_digest(&self, dir: &str, host: &str) -> [u8; 32] {
        self.cluster
            .digest(&[b"acme-order", dir.as_bytes(), host.as_bytes()])
    }

    fn account_key(&self, dir: &str) -> String {
        self.cluster.key(
            "acme-account",
            &self.cluster.digest(&[b"acme-account", dir.as_bytes()]),
        )
    }

    fn http_key(&self, token: &str) -> String {
        self.cluster.key(
            "acme-http-01",
            &self.cluster.digest(&[b"acme-http-01", token.as_bytes()]),
        )
    }

    fn alpn_key(&self, host: &str) -> String {
        self.cluster.key(
            "acme-tls-alpn-01",
            &self.cluster.digest(&[b"acme-tls-alpn-01", host.as_bytes()]),
        )
    }

    fn seal(&self, key: &str, plain: &[u8]) -> Vec<u8> {
        Cluster::seal(&self.seal, key.as_bytes(), plain)
    }

    fn open(&self, key: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let p = Cluster::open(&self.seal, key.as_bytes(), sealed);
        if p.is_none() {
            tracing::warn!(
                key,
                "a shared ACME value does not open with this instance's encryption_key_file; ignored"
            );
        }
        p
    }

    async fn get_sealed(&self, key: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        let v: Option<Vec<u8>> = self.cluster.run(redis::cmd("GET").arg(key)).await?;
        Ok(v.and_then(|v| self.open(key, &v)))
    }

    /// Remembers the plan's directory and hosts for the admin view.
    pub fn set_plan(&self, plan: Option<&AcmePlan>) {
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = plan.map(|p| {
            (
                p.config.directory.clone(),
                p.orders.keys().cloned().collect(),
            )
        });
    }

    // ---- the account ------------------------------------------------------

    pub async fn load_account(&self, dir: &str) -> Result<Option<Vec<u8>>, ClusterError> {
        self.get_sealed(&self.account_key(dir)).await
    }

    /// Stores `json` as the cluster's account unless one exists; returns
    /// the account in Redis afterwards (ours or the one that was first).
    pub async fn offer_account(&self, dir: &str, json: &[u8]) -> Result<Vec<u8>, ClusterError> {
        let key = self.account_key(dir);
        let set: Option<String> = self
            .cluster
            .run(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(self.seal(&key, json))
                    .arg("NX"),
            )
            .await?;
        if set.is_some() {
            return Ok(json.to_vec());
        }
        Ok(self
            .get_sealed(&key)
            .await?
            .unwrap_or_else(|| json.to_vec()))
    }

    pub async fn forget_account(&self, dir: &str) {
        let _ = self
            .cluster
            .run::<i64>(redis::cmd("DEL").arg(self.account_key(dir)))
            .await;
    }

    // ---- certificates -----------------------------------------------------

    /// The certificate Redis holds for a host: (chain PEM, key PEM).
    pub async fn load_cert(
        &self,
        dir: &str,
        host: &str,
    ) -> Result<Option<(String, String)>, ClusterError> {
        let key = self.cluster.key("acme-cert", &self.cert_digest(dir, host));
        let plain = self.get_sealed(&key).await?;
        Ok(plain
            .and_then(|p| serde_json::from_slice::<CertRecord>(&p).ok())
            .map(|r| (r.chain, r.key)))
    }

    /// Publishes a certificate ordered under `lease`, then announces it;
    /// `Ok(false)` when another instance has taken the lock since.
    pub async fn publish_cert(
        &self,
        lease: &Lease,
        dir: &str,
        host: &str,
        chain: &str,
        key_pem: &str,
    ) -> Result<bool, ClusterError> {
        let digest = self.cert_digest(dir, host);
        let key = self.cluster.key("acme-cert", &digest);
        let plain = serde_json::to_vec(&CertRecord {
            chain: chain.to_string(),
            key: key_pem.to_string(),
        })
        .map_err(|e| ClusterError::Redis(e.to_string()))?;
        if !self
            .cluster
            .set_fenced(lease, &key, &self.seal(&key, &plain))
            .await?
        {
            return Ok(false);
        }
        let _ = self.cluster.invalidate(Invalidation::Key(digest)).await;
        Ok(true)
    }

    /// Stores a certificate this instance has on disk when Redis has none
    /// for the host (an instance that ran alone before, or a Redis that
    /// lost its data); never replaces one. Announced when stored.
    pub async fn offer_cert(
        &self,
        dir: &str,
        host: &str,
        chain: &[u8],
        key_pem: &[u8],
    ) -> Result<bool, ClusterError> {
        let digest = self.cert_digest(dir, host);
        let key = self.cluster.key("acme-cert", &digest);
        let plain = serde_json::to_vec(&CertRecord {
            chain: String::from_utf8_lossy(chain).into_owned(),
            key: String::from_utf8_lossy(key_pem).into_owned(),
        })
        .map_err(|e| ClusterError::Redis(e.to_string()))?;
        let set: Option<String> = self
            .cluster
            .run(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(self.seal(&key, &plain))
                    .arg("NX"),
            )
            .await?;
        if set.is_some() {
            let _ = self.cluster.invalidate(Invalidation::Key(digest)).await;
        }
        Ok(set.is_some())
    }

    // ---- the order lock ---------------------------------------------------

    pub async fn try_lock(
        &self,
        dir: &str,
        host: &str,
    ) -> Result<Result<Lease, Holder>, ClusterError> {
        self.cluster
            .try_lock(&self.lock_digest(dir, host), self.lease)
            .await
    }

    // ---- challenges -------------------------------------------------------

    /// Publishes an HTTP-01 key authorization; returns the Redis key.
    pub async fn publish_http(&self, token: &str, key_auth: &str) -> Result<String, ClusterError> {
        let key = self.http_key(token);
        self.set_challenge(&key, key_auth.as_bytes()).await?;
        Ok(key)
    }

    /// Publishes a TLS-ALPN-01 digest; returns the Redis key.
    pub async fn publish_alpn(&self, host: &str, digest: &[u8]) -> Result<String, ClusterError> {
        let key = self.alpn_key(host);
        self.set_challenge(&key, digest).await?;
        Ok(key)
    }

    async fn set_challenge(&self, key: &str, plain: &[u8]) -> Result<(), ClusterError> {
        self.cluster
            .run::<()>(
                redis::cmd("SET")
                    .arg(key)
                    .arg(self.seal(key, plain))
                    .arg("PX")
                    .arg(CHALLENGE_TTL.as_millis() as u64),
            )
            .await
    }

    /// Removes published challenge material (its TTL is the safety net).
    pub async fn remove(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let _ = self.cluster.run::<i64>(redis::cmd("DEL").arg(keys)).await;
    }
}

/// A token as a CA sends it (base64url); anything else is not looked up.
fn plausible_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl SharedAcme for AcmeShared {
    fn http_token<'a>(&'a self, token: &'a str) -> Lookup<'a, Option<String>> {
        Box::pin(async move {
            if !plausible_token(token) {
                return None;
            }
            let plain = self.get_sealed(&self.http_key(token)).await.ok()??;
            let v = String::from_utf8(plain).ok()?;
            tracing::debug!("answered an HTTP-01 challenge published by another instance");
            Some(v)
        })
    }

    fn alpn_challenge<'a>(&'a self, host: &'a str) -> Lookup<'a, Option<Arc<CertifiedKey>>> {
        Box::pin(async move {
            let digest = self.get_sealed(&self.alpn_key(host)).await.ok()??;
            super::order::alpn_certificate(host, &digest).ok()
        })
    }

    fn order_locks(&self) -> Lookup<'_, Vec<(String, OrderLock)>> {
        Box::pin(async move {
            let plan = self.plan.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let Some((dir, hosts)) = plan else {
                return Vec::new();
            };
            let digests: Vec<[u8; 32]> = hosts.iter().map(|h| self.lock_digest(&dir, h)).collect();
            let Ok(holders) = self.cluster.lock_holders(&digests).await else {
                return Vec::new();
            };
            let now = unix_ms();
            hosts
                .into_iter()
                .zip(holders)
                .filter_map(|(h, holder)| {
                    let holder = holder?;
                    Some((
                        h,
                        OrderLock {
                            instance: holder.instance,
                            fencing_token: holder.fence,
                            lease_expires_ms: now + holder.expires_in_ms,
                        },
                    ))
                })
                .collect()
        })
    }
}

/// Installs a certificate from Redis if it is newer than the one served
/// (and valid for the order's names), mirroring it to disk. `Ok(true)`
/// when it installed one.
pub async fn adopt(
    shared: &AcmeShared,
    store: &CertStore,
    storage: &Storage,
    dir: &str,
    host: &str,
    order: &AcmeOrder,
) -> Result<bool, ClusterError> {
    let Some((chain, key)) = shared.load_cert(dir, host).await? else {
        // Redis has none: share the one served from disk, if any.
        if store.acme_entry(host).is_some()
            && let Some((chain, key)) = storage.load_cert(host)
            && crate::pki::certified_key_from_pem(&chain, &key).is_ok()
            && shared.offer_cert(dir, host, &chain, &key).await?
        {
            tracing::info!(host, "shared the certificate from state_dir through Redis");
        }
        return Ok(false);
    };
    let ck = match crate::pki::certified_key_from_pem(chain.as_bytes(), key.as_bytes()) {
        Ok(ck) => ck,
        Err(e) => {
            tracing::warn!(host, error = %e, "the certificate in Redis is unusable; ignored");
            return Ok(false);
        }
    };
    let entry = CertEntry::new(Arc::new(ck), Source::Acme);
    let Some(f) = entry.facts.as_ref() else {
        return Ok(false);
    };
    if f.not_after <= super::now_secs()
        || !order.names.iter().all(|n| f.names.iter().any(|m| m == n))
    {
        return Ok(false);
    }
    if let Some(cur) = store.acme_entry(host) {
        let same = cur.key.cert.first() == entry.key.cert.first();
        let older = cur
            .facts
            .as_ref()
            .is_some_and(|c| c.not_after >= f.not_after);
        if same || older {
            return Ok(false);
        }
    }
    if let Err(e) = storage.save_cert(host, chain.as_bytes(), key.as_bytes()) {
        tracing::error!(host, error = %e, "could not mirror the shared certificate into state_dir");
    }
    let not_after = f.not_after;
    store.set_acme(host, Arc::new(entry));
    let mut st = store.acme_status.entry(host.to_string()).or_default();
    st.last_error = None;
    tracing::info!(
        host,
        not_after,
        "installed the certificate shared through Redis"
    );
    Ok(true)
}

/// Follows the certificates other instances publish, for the hosts of the
/// current plan, until the plan sender is dropped.
pub fn spawn_watcher(
    shared: Arc<AcmeShared>,
    store: Arc<CertStore>,
    plans: watch::Receiver<Option<Arc<AcmePlan>>>,
) {
    tokio::spawn(watch_certs(shared, store, plans));
}

async fn sync_all(shared: &AcmeShared, store: &CertStore, plan: &AcmePlan) {
    let storage = Storage::new(&plan.state_dir, &plan.config.directory);
    for (host, order) in &plan.orders {
        if adopt(shared, store, &storage, &plan.config.directory, host, order)
            .await
            .is_err()
        {
            // Redis is down: the next announcement or poll catches up.
            return;
        }
    }
}

async fn watch_certs(
    shared: Arc<AcmeShared>,
    store: Arc<CertStore>,
    mut plans: watch::Receiver<Option<Arc<AcmePlan>>>,
) {
    let mut inv = shared.cluster.subscribe();
    loop {
        let plan = plans.borrow_and_update().clone();
        shared.set_plan(plan.as_deref());
        let Some(plan) = plan else {
            if plans.changed().await.is_err() {
                return;
            }
            continue;
        };
        let dir = plan.config.directory.clone();
        let by_digest: HashMap<[u8; 32], String> = plan
            .orders
            .keys()
            .map(|h| (shared.cert_digest(&dir, h), h.clone()))
            .collect();
        let storage = Storage::new(&plan.state_dir, &dir);
        sync_all(&shared, &store, &plan).await;
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.tick().await;
        loop {
            tokio::select! {
                r = inv.recv() => match r {
                    Ok(Invalidation::Key(d)) => {
                        if let Some(host) = by_digest.get(&d)
                            && let Some(order) = plan.orders.get(host)
                        {
                            let _ = adopt(&shared, &store, &storage, &dir, host, order).await;
                        }
                    }
                    Ok(Invalidation::All) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        sync_all(&shared, &store, &plan).await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = poll.tick() => sync_all(&shared, &store, &plan).await,
                r = plans.changed() => {
                    if r.is_err() {
                        return;
                    }
                    break;
                }
            }
        }
    }
}
