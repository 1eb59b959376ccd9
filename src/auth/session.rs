//! Sessions: the random id in the cookie, the hot cache in front of the
//! store, and refresh with one call per session however many requests
//! arrive at once.
//!
//! The per-request check is: find our cookie (borrowed bytes), decode the
//! id onto the stack, one cache lookup, compare a few integers. Nothing is
//! allocated on a cache hit.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use http::header::{self, HeaderMap};
use openidconnect::OAuth2TokenResponse as _;
use openidconnect::TokenResponse as _;

use super::claims::user_claims;
use super::identity::{Identity, UserClaims};
use super::provider::{FlowError, Provider};
use super::store::{SessionId, SessionRecord, SessionStore, StoreError, SubjectKey};

/// How long a request waits for a refresh before going on with the
/// identity it has (the refresh itself continues).
const REFRESH_WAIT: Duration = Duration::from_secs(5);
/// After a refresh failed for a passing reason, when to try again.
const REFRESH_RETRY: u64 = 30;
/// How long one instance may hold a session's refresh lock (shared store).
const REFRESH_LOCK_MS: u64 = 10_000;

/// Seconds since the Unix epoch.
#[inline]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh random session id.
pub fn new_id() -> SessionId {
    let mut id = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .expect("the OS random number generator failed");
    id
}

/// The cookie value for an id (43 characters of base64url).
pub fn encode_id(id: &SessionId) -> String {
    URL_SAFE_NO_PAD.encode(id)
}

/// Decodes a cookie value; anything but 43 canonical base64url characters
/// is not a session id.
#[inline]
pub fn decode_id(v: &str) -> Option<SessionId> {
    if v.len() != 43 {
        return None;
    }
    let mut buf = [0u8; 36];
    match URL_SAFE_NO_PAD.decode_slice(v, &mut buf) {
        Ok(32) => {
            let mut id = [0u8; 32];
            id.copy_from_slice(&buf[..32]);
            Some(id)
        }
        _ => None,
    }
}

/// Calls `f` with the value of every cookie called `name` (in every
/// `Cookie` header) until it returns true.
#[inline]
pub fn for_each_cookie(headers: &HeaderMap, name: &str, mut f: impl FnMut(&str) -> bool) {
    for v in headers.get_all(header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for pair in s.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == name
                && f(v.trim_matches('"'))
            {
                return;
            }
        }
    }
}

/// Session ids are uniformly random, so their first bytes are already a
/// good hash: no need to run SipHash over 32 bytes on every request. (Only
/// ids we generated are ever inserted, so this cannot be flooded.)
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<V> = DashMap<SessionId, V, BuildHasherDefault<IdHasher>>;

/// A session as the request path sees it.
#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub record: SessionRecord,
    pub identity: Identity,
    /// No refresh before this (Unix seconds), after a failed attempt.
    retry_refresh_at: AtomicU64,
    /// Used from the cache until then (Unix seconds); then the store is
    /// asked again. `u64::MAX` unless the store is shared.
    fresh_until: u64,
}

impl Session {
    pub fn new(id: SessionId, record: SessionRecord) -> Self {
        Session {
            id,
            identity: Identity::new(record.user.clone()),
            record,
            retry_refresh_at: AtomicU64::new(0),
            fresh_until: u64::MAX,
        }
    }

    /// Made by this provider (same name and issuer) and not expired.
    #[inline]
    pub fn usable_for(&self, provider: &str, issuer: &str, now: u64) -> bool {
        now < self.record.expires
            && self.record.provider == provider
            && self.record.issuer == issuer
    }

    /// The access token has expired and a refresh is possible.
    #[inline]
    pub fn needs_refresh(&self, now: u64) -> bool {
        self.record.refresh_token.is_some()
            && self.record.access_expires.is_some_and(|e| e <= now)
            && now >= self.retry_refresh_at.load(Ordering::Relaxed)
    }

    fn defer_refresh(&self, until: u64) {
        self.retry_refresh_at.store(until, Ordering::Relaxed);
    }
}

/// What the cookie check found.
pub enum Found {
    Hit(Arc<Session>),
    /// A well-formed id that is not in the cache: ask the store.
    Miss(SessionId),
    None,
}

/// The session manager: store, hot cache, refreshes in flight.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    /// Seconds a cached session is used without asking a shared store.
    lifetime: Option<u64>,
    listening: std::sync::atomic::AtomicBool,
    cache: IdMap<Arc<Session>>,
    refreshing: IdMap<Shared<BoxFuture<'static, Arc<Session>>>>,
    /// Refresh outcomes, for `portcullis_auth_events_total`.
    pub refresh_ok: std::sync::atomic::AtomicU64,
    pub refresh_failed: std::sync::atomic::AtomicU64,
}

impl Sessions {
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Sessions {
            lifetime: store.cache_lifetime(),
            listening: Default::default(),
            store,
            cache: IdMap::default(),
            refreshing: IdMap::default(),
            refresh_ok: Default::default(),
            refresh_failed: Default::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// A session for the cache, with its cache lifetime.
    fn cacheable(&self, id: SessionId, record: SessionRecord, now: u64) -> Arc<Session> {
        let mut s = Session::new(id, record);
        if let Some(l) = self.lifetime {
            s.fresh_until = now.saturating_add(l);
        }
        Arc::new(s)
    }

    /// With a shared store: drops cached sessions other instances ended
    /// (pub/sub), until `self` is dropped.
    pub fn spawn_invalidations(self: &Arc<Self>) {
        if self.listening.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(mut rx) = self.store.invalidations() else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let inv = match rx.recv().await {
                    Ok(inv) => inv,
                    Err(RecvError::Lagged(_)) => crate::cluster::Invalidation::All,
                    Err(RecvError::Closed) => return,
                };
                let Some(me) = weak.upgrade() else { return };
                // Rare (a logout somewhere): a scan of the cache is fine.
                me.cache.retain(|id, _| !me.store.is_invalidated(id, &inv));
            }
        });
    }

    /// Sessions in the hot cache.
    pub fn cached_len(&self) -> usize {
        self.cache.len()
    }

    /// The per-request check: a usable session of this provider from the
    /// cookie `cookie_name`, from the cache only.
    #[inline]
    pub fn find_cached(
        &self,
        headers: &HeaderMap,
        cookie_name: &str,
        provider: &str,
        issuer: &str,
        now: u64,
    ) -> Found {
        let mut found = Found::None;
        for_each_cookie(headers, cookie_name, |v| {
            let Some(id) = decode_id(v) else { return false };
            match self.cache.get(&id) {
                Some(s) if now >= s.fresh_until => {
                    if matches!(found, Found::None) {
                        found = Found::Miss(id);
                    }
                    false
                }
                Some(s) if s.usable_for(provider, issuer, now) => {
                    found = Found::Hit(s.clone());
                    true
                }
                Some(_) => false,
                None => {
                    if matches!(found, Found::None) {
                        found = Found::Miss(id);
                    }
                    false
                }
            }
        });
        found
    }

    /// A session by id from the cache or the store (which fills the
    /// cache). An error: the store cannot be reached (and the cached copy,
    /// if any, is past its cache lifetime).
    pub async fn get(&self, id: SessionId) -> Result<Option<Arc<Session>>, StoreError> {
        let now = unix_now();
        if let Some(s) = self.cache.get(&id)
            && now < s.fresh_until
        {
            return Ok(Some(s.clone()));
        }
        match self.store.load(id).await {
            Ok(Some(rec)) if rec.expires > now => {
                let s = self.cacheable(id, rec, now);
                self.cache.insert(id, s.clone());
                Ok(Some(s))
            }
            Ok(_) => {
                self.cache.remove(&id);
                Ok(None)
            }
            Err(e) if self.lifetime.is_some() => {
                tracing::debug!(error = %e, "cannot read a session from the shared store");
                Err(e)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read a session; treating the request as signed out");
                Ok(None)
            }
        }
    }

    /// Stores a new session and caches it.
    pub async fn create(&self, record: SessionRecord) -> Result<Arc<Session>, StoreError> {
        let id = new_id();
        self.store.save(id, record.clone()).await?;
        let s = self.cacheable(id, record, unix_now());
        self.cache.insert(id, s.clone());
        Ok(s)
    }

    /// Ends a session (logout).
    pub async fn end(&self, id: SessionId) -> Option<SessionRecord> {
        let cached = self.cache.remove(&id).map(|(_, s)| s.record.clone());
        let stored = match self.store.remove(id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot delete a session from the store");
                None
            }
        };
        // A concurrent load may have re-cached it between the two steps.
        self.cache.remove(&id);
        stored.or(cached)
    }

    /// Ends every session of `provider` with this `sub` or `sid`
    /// (back-channel logout). Returns how many.
    pub async fn end_matching(&self, provider: &str, key: SubjectKey) -> usize {
        let mut shared = 0;
        match self
            .store
            .remove_matching(provider.to_string(), key.clone())
            .await
        {
            Ok(Some(n)) => shared = n,
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot end sessions in the shared store"),
        }
        let mut ids = match self.store.find(provider.to_string(), key.clone()).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "cannot search the session store");
                Vec::new()
            }
        };
        // Also anything cached but not (yet) found in the store.
        for e in self.cache.iter() {
            let r = &e.value().record;
            let hit = r.provider == provider
                && match &key {
                    SubjectKey::Sub(s) => &r.user.sub == s,
                    SubjectKey::Sid(s) => r.sid.as_ref() == Some(s),
                };
            if hit && !ids.contains(e.key()) {
                ids.push(*e.key());
            }
        }
        for id in &ids {
            self.end(*id).await;
        }
        ids.len().max(shared)
    }

    /// Drops expired sessions from the store and the cache.
    pub async fn purge(&self, now: u64) {
        match self.store.purge_expired(now).await {
            Ok(ids) => {
                for id in &ids {
                    self.cache.remove(id);
                }
                if !ids.is_empty() {
                    tracing::debug!(count = ids.len(), "purged expired sessions");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot purge expired sessions"),
        }
        self.cache.retain(|_, s| s.record.expires > now);
    }

    /// Evicts a session from the cache (after it was found expired).
    pub fn forget(&self, id: &SessionId) {
        self.cache.remove(id);
    }

    /// Refreshes `s` with its refresh token, one call per session however
    /// many requests ask at once. Waits at most [`REFRESH_WAIT`]; on any
    /// failure the session stays as it is, with its own expiry.
    pub async fn refresh(
        self: &Arc<Self>,
        s: Arc<Session>,
        provider: Arc<Provider>,
    ) -> Arc<Session> {
        let fut = match self.refreshing.entry(s.id) {
            dashmap::Entry::Occupied(e) => e.get().clone(),
            dashmap::Entry::Vacant(v) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let fallback = s.clone();
                let fut = async move { rx.await.unwrap_or(fallback) }.boxed().shared();
                v.insert(fut.clone());
                let me = self.clone();
                let s2 = s.clone();
                tokio::spawn(async move {
                    let id = s2.id;
                    let result = me.refresh_now(s2, provider).await;
                    // Remove before answering: a later request then sees the
                    // refreshed (or deferred) session, never a stale flight.
                    me.refreshing.remove(&id);
                    let _ = tx.send(result);
                });
                fut
            }
        };
        match tokio::time::timeout(REFRESH_WAIT, fut).await {
            Ok(fresh) => fresh,
            Err(_) => s,
        }
    }

    /// With a shared store, one instance refreshes a session at a time
    /// (a short lock in the store); the others wait for its result there.
    async fn refresh_now(&self, s: Arc<Session>, provider: Arc<Provider>) -> Arc<Session> {
        if self.lifetime.is_none() {
            return self.refresh_here(s, provider).await;
        }
        let now = unix_now();
        match self.store.lock_refresh(s.id, REFRESH_LOCK_MS).await {
            Ok(true) => {
                let fresh = self.refresh_here(s.clone(), provider).await;
                let _ = self.store.unlock_refresh(s.id).await;
                fresh
            }
            Ok(false) => {
                // Another instance is refreshing: its record lands in the store.
                let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
                while tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    match self.store.load(s.id).await {
                        Ok(Some(rec)) if rec.access_expires != s.record.access_expires => {
                            let fresh = self.cacheable(s.id, rec, unix_now());
                            if let Some(mut slot) = self.cache.get_mut(&s.id) {
                                *slot = fresh.clone();
                            }
                            return fresh;
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => return s,
                        Err(_) => break,
                    }
                }
                s.defer_refresh(now + 5);
                s
            }
            Err(_) => {
                // The store is down: a refresh could not be kept anyway.
                s.defer_refresh(now + 5);
                s
            }
        }
    }

    async fn refresh_here(&self, s: Arc<Session>, provider: Arc<Provider>) -> Arc<Session> {
        let now = unix_now();
        if let Some(cur) = self.cache.get(&s.id).map(|e| e.clone())
            && !Arc::ptr_eq(&cur, &s)
            && !cur.needs_refresh(now)
        {
            return cur;
        }
        let Some(d) = provider.ensure(Duration::from_secs(3)).await else {
            s.defer_refresh(now + REFRESH_RETRY);
            return s;
        };
        let Some(rt) = s.record.refresh_token.as_deref() else {
            return s;
        };
        let mut rec = s.record.clone();
        match provider.refresh(&d, rt).await {
            Ok(tokens) => {
                if let Some(idt) = tokens.id_token() {
                    match provider.verify_id_token(d.clone(), idt, None).await {
                        Ok(c) if c.subject().as_str() == rec.user.sub => {
                            let mut fresh = user_claims(&c);
                            if c.additional_claims().groups.is_none() {
                                fresh.groups = rec.user.groups.clone();
                            }
                            rec.user = merge_claims(&rec.user, fresh);
                            rec.sid = c.additional_claims().sid.clone().or(rec.sid);
                            rec.id_token = Some(idt.to_string());
                        }
                        Ok(_) => {
                            self.refresh_failed
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(provider = %provider.name, "refreshed ID token names another user; not refreshing this session again");
                            s.defer_refresh(u64::MAX);
                            return s;
                        }
                        Err(e) => {
                            self.refresh_failed
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(provider = %provider.name, error = %e, "refreshed ID token does not verify");
                            s.defer_refresh(now + REFRESH_RETRY);
                            return s;
                        }
                    }
                }
                rec.access_token = Some(tokens.access_token().secret().clone());
                rec.access_expires = tokens.expires_in().map(|d| now + d.as_secs());
                if let Some(rt) = tokens.refresh_token() {
                    rec.refresh_token = Some(rt.secret().clone());
                }
                self.refresh_ok
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(provider = %provider.name, user = %rec.user.username, "session refreshed");
            }
            Err(FlowError::Rejected(e)) => {
                self.refresh_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    provider = %provider.name,
                    user = %rec.user.username,
                    error = %e,
                    "refresh refused; the session stays valid until it expires"
                );
                rec.refresh_token = None;
            }
            Err(e) => {
                self.refresh_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if matches!(e, FlowError::Unavailable(_)) {
                    provider.note_unreachable();
                }
                tracing::warn!(provider = %provider.name, error = %e, "session refresh failed; retrying later");
                s.defer_refresh(now + REFRESH_RETRY);
                return s;
            }
        }
        // The expiry is never extended.
        rec.expires = s.record.expires;
        let fresh = self.cacheable(s.id, rec.clone(), unix_now());
        if let Err(e) = self.store.save(s.id, rec).await {
            tracing::error!(error = %e, "cannot store a refreshed session; keeping it in memory");
        }
        match self.cache.get_mut(&s.id) {
            Some(mut slot) => *slot = fresh.clone(),
            None => {
                // Ended (logout) while we refreshed: do not bring it back.
                let _ = self.store.remove(s.id).await;
                return s;
            }
        }
        fresh
    }

    /// Puts a session into the cache (benchmarks, tests).
    pub fn insert_cached(&self, s: Arc<Session>) {
        self.cache.insert(s.id, s);
    }
}

/// Claims from a refreshed token: new values win, missing ones keep the old.
fn merge_claims(old: &UserClaims, new: UserClaims) -> UserClaims {
    UserClaims {
        email: new.email.or_else(|| old.email.clone()),
        email_verified: new.email_verified.or(old.email_verified),
        name: new.name.or_else(|| old.name.clone()),
        ..new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = new_id();
        let v = encode_id(&id);
        assert_eq!(v.len(), 43);
        assert_eq!(decode_id(&v), Some(id));
        for bad in [
            "",
            "short",
            &"A".repeat(44),
            &format!("{}=", &v[..42]),
            &v.replace(|_| true, "+")[..43],
        ] {
            assert_eq!(decode_id(bad), None, "{bad}");
        }
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn finds_cookies_in_every_header() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-portcullis=x"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-portcullis=\"y\";b=2"),
        );
        let mut seen = Vec::new();
        for_each_cookie(&h, "__Host-portcullis", |v| {
            seen.push(v.to_string());
            false
        });
        assert_eq!(seen, ["x", "y"]);
    }
}
