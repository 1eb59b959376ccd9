//! Where sessions live: the [`SessionStore`] trait (the seam for a shared
//! store such as Redis when several instances run), the embedded
//! persistent [`RedbStore`] used by default, and [`MemoryStore`] for tests
//! and benchmarks.
//!
//! Besides sessions, the store remembers short-lived facts about tokens
//! ("marks", each with an expiry and purged with the sessions): provider
//! sessions (`sid`) that were signed out, whose bearer tokens are refused,
//! and the `jti`s of logout tokens already used.
//!
//! The store is the source of truth; `session::Sessions` keeps a hot cache
//! in front of it. Records are JSON; the cookie only carries the 256-bit id.
//! With `[cluster]` the store is `store_redis::RedisStore` instead, shared
//! by every instance (and the cache then has a lifetime and is invalidated
//! by the others).

use std::collections::HashMap;
use std::fmt;
use std::fs::OpenOptions;
use std::future::Future;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{MultimapTableDefinition, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};

use super::identity::UserClaims;
use crate::cluster::Invalidation;

/// A session id: 256 random bits.
pub type SessionId = [u8; 32];

/// One session as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// `[oidc.NAME]` it was made through.
    pub provider: String,
    /// The provider's issuer at login; a changed issuer invalidates it.
    pub issuer: String,
    pub user: UserClaims,
    /// The provider's session id (`sid` claim), for back-channel logout.
    #[serde(default)]
    pub sid: Option<String>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; fixed at login, never extended.
    pub expires: u64,
    /// For `id_token_hint` at logout.
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    /// Unix seconds; when passed, the session is refreshed (with a refresh token).
    #[serde(default)]
    pub access_expires: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecord")
            .field("provider", &self.provider)
            .field("user", &self.user.username)
            .field("sid", &self.sid)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .field("access_expires", &self.access_expires)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// A secondary key sessions can be found by (back-channel logout).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubjectKey {
    Sub(String),
    Sid(String),
}

impl SubjectKey {
    pub(super) fn index_key(&self, provider: &str) -> String {
        match self {
            SubjectKey::Sub(s) => format!("{provider}\nsub\n{s}"),
            SubjectKey::Sid(s) => format!("{provider}\nsid\n{s}"),
        }
    }
}

pub(super) fn index_keys(r: &SessionRecord) -> Vec<String> {
    let mut keys = vec![SubjectKey::Sub(r.user.sub.clone()).index_key(&r.provider)];
    if let Some(sid) = &r.sid {
        keys.push(SubjectKey::Sid(sid.clone()).index_key(&r.provider));
    }
    keys
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("session store: {0}")]
pub struct StoreError(pub String);

fn err(e: impl fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The session store. Asynchronous so that a network store fits; the
/// embedded one runs its (short) disk work on the blocking pool.
pub trait SessionStore: Send + Sync + 'static {
    fn load(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>>;
    /// Inserts or replaces.
    fn save(&self, id: SessionId, record: SessionRecord) -> StoreFuture<'_, ()>;
    fn remove(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>>;
    /// Ids of the sessions of one provider with this `sub` or `sid`.
    fn find(&self, provider: String, key: SubjectKey) -> StoreFuture<'_, Vec<SessionId>>;
    /// Deletes sessions that expired before `now` (Unix seconds); returns
    /// their ids. Also drops marks that expired.
    fn purge_expired(&self, now: u64) -> StoreFuture<'_, Vec<SessionId>>;
    /// Remembers `key` until `until` (Unix seconds; an existing mark is
    /// only ever extended). Returns whether it was already marked and not
    /// expired at `now`.
    fn mark(&self, key: String, until: u64, now: u64) -> StoreFuture<'_, bool>;
    /// `key` is marked and the mark has not expired at `now`.
    fn is_marked(&self, key: String, now: u64) -> StoreFuture<'_, bool>;

    /// Ends every session of one provider with this `sub` or `sid`, for a
    /// store that cannot list ids (`find` then finds none). `None`: not
    /// supported, use `find`.
    fn remove_matching(
        &self,
        _provider: String,
        _key: SubjectKey,
    ) -> StoreFuture<'_, Option<usize>> {
        Box::pin(async { Ok(None) })
    }

    /// For a store shared with other instances: how long (seconds) a
    /// cached session may be used without asking the store again.
    fn cache_lifetime(&self) -> Option<u64> {
        None
    }

    /// For a store shared with other instances: cache entries they ended.
    fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<Invalidation>> {
        None
    }

    /// Takes the refresh lock of `id` for `ttl_ms` (one refresh per
    /// session at a time across instances); `Ok(false)`: someone holds it.
    /// A store of one instance has nothing to lock.
    fn lock_refresh(&self, _id: SessionId, _ttl_ms: u64) -> StoreFuture<'_, bool> {
        Box::pin(async { Ok(true) })
    }

    fn unlock_refresh(&self, _id: SessionId) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Whether `inv` names the cached session `id`.
    fn is_invalidated(&self, _id: &SessionId, _inv: &Invalidation) -> bool {
        false
    }
}

/// The mark key of a signed-out provider session.
pub fn revoked_sid_key(provider: &str, sid: &str) -> String {
    format!("sid\n{provider}\n{sid}")
}

/// The mark key of a used logout token.
pub fn used_jti_key(provider: &str, jti: &str) -> String {
    format!("jti\n{provider}\n{jti}")
}

// ---------------------------------------------------------------------------

const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
const EXPIRY: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("expiry");
const SUBJECTS: MultimapTableDefinition<&str, &[u8]> = MultimapTableDefinition::new("subjects");
/// Mark key → expiry, and (expiry, key) for purging.
const MARKS: TableDefinition<&str, u64> = TableDefinition::new("marks");
const MARK_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("mark_expiry");

/// Sessions in one redb file (`<state_dir>/sessions/sessions.redb`, 0600 in
/// a 0700 folder). redb commits are copy-on-write and fsynced, so a crash
/// leaves the last committed state whole.
pub struct RedbStore {
    db: Arc<redb::Database>,
    path: PathBuf,
}

impl RedbStore {
    /// Opens (or creates) the store under `state_dir`. If another gateway
    /// in this process is still closing the same file, waits briefly.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("sessions");
        crate::fsutil::private_dir(&dir)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("sessions.redb");
        let deadline = Instant::now() + Duration::from_secs(10);
        let db = loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
            // An existing file keeps its mode on open: tighten it.
            let mut perms = file.metadata().map_err(err)?.permissions();
            if perms.mode() & 0o777 != 0o600 {
                perms.set_mode(0o600);
                std::fs::set_permissions(&path, perms).map_err(err)?;
            }
            let backend = redb::backends::FileBackend::new(file)
                .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
            match redb::Database::builder()
                .set_cache_size(32 << 20)
                .create_with_backend(backend)
            {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(StoreError(format!("cannot open {}: {e}", path.display())));
                }
            }
        };
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(SESSIONS).map_err(err)?;
        txn.open_table(EXPIRY).map_err(err)?;
        txn.open_multimap_table(SUBJECTS).map_err(err)?;
        txn.open_table(MARKS).map_err(err)?;
        txn.open_table(MARK_EXPIRY).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(RedbStore {
            db: Arc::new(db),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::Database) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(err)?
        })
    }
}

fn decode(bytes: &[u8]) -> Option<SessionRecord> {
    serde_json::from_slice(bytes).ok()
}

/// Removes one session and its index entries inside a write transaction.
fn remove_in(
    txn: &redb::WriteTransaction,
    id: &SessionId,
) -> Result<Option<SessionRecord>, StoreError> {
    let mut sessions = txn.open_table(SESSIONS).map_err(err)?;
    let old = sessions
        .remove(&id[..])
        .map_err(err)?
        .map(|g| g.value().to_vec());
    let Some(old) = old else { return Ok(None) };
    let rec = decode(&old);
    if let Some(r) = &rec {
        let mut exp = txn.open_table(EXPIRY).map_err(err)?;
        exp.remove((r.expires, &id[..])).map_err(err)?;
        let mut subjects = txn.open_multimap_table(SUBJECTS).map_err(err)?;
        for k in index_keys(r) {
            subjects.remove(k.as_str(), &id[..]).map_err(err)?;
        }
    }
    Ok(rec)
}

impl SessionStore for RedbStore {
    fn load(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let t = txn.open_table(SESSIONS).map_err(err)?;
            Ok(t.get(&id[..]).map_err(err)?.and_then(|g| decode(g.value())))
        })
    }

    fn save(&self, id: SessionId, record: SessionRecord) -> StoreFuture<'_, ()> {
        self.blocking(move |db| {
            let bytes = serde_json::to_vec(&record).map_err(err)?;
            let txn = db.begin_write().map_err(err)?;
            remove_in(&txn, &id)?;
            {
                let mut sessions = txn.open_table(SESSIONS).map_err(err)?;
                sessions.insert(&id[..], bytes.as_slice()).map_err(err)?;
                let mut exp = txn.open_table(EXPIRY).map_err(err)?;
                exp.insert((record.expires, &id[..]), ()).map_err(err)?;
                let mut subjects = txn.open_multimap_table(SUBJECTS).map_err(err)?;
                for k in index_keys(&record) {
                    subjects.insert(k.as_str(), &id[..]).map_err(err)?;
                }
            }
            txn.commit().map_err(err)
        })
    }

    fn remove(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let old = remove_in(&txn, &id)?;
            txn.commit().map_err(err)?;
            Ok(old)
        })
    }

    fn find(&self, provider: String, key: SubjectKey) -> StoreFuture<'_, Vec<SessionId>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let subjects = txn.open_multimap_table(SUBJECTS).map_err(err)?;
            let mut out = Vec::new();
            for v in subjects
                .get(key.index_key(&provider).as_str())
                .map_err(err)?
            {
                if let Ok(id) = SessionId::try_from(v.map_err(err)?.value()) {
                    out.push(id);
                }
            }
            Ok(out)
        })
    }

    fn purge_expired(&self, now: u64) -> StoreFuture<'_, Vec<SessionId>> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let expired: Vec<SessionId> = {
                let exp = txn.open_table(EXPIRY).map_err(err)?;
                let lo: (u64, &[u8]) = (0, &[]);
                let hi: (u64, &[u8]) = (now, &[]);
                exp.range(lo..hi)
                    .map_err(err)?
                    .filter_map(|e| e.ok())
                    .filter_map(|(k, _)| SessionId::try_from(k.value().1).ok())
                    .collect()
            };
            for id in &expired {
                remove_in(&txn, id)?;
            }
            {
                let mut exp = txn.open_table(MARK_EXPIRY).map_err(err)?;
                let mut marks = txn.open_table(MARKS).map_err(err)?;
                let lo: (u64, &str) = (0, "");
                let hi: (u64, &str) = (now, "");
                let dead: Vec<(u64, String)> = exp
                    .range(lo..hi)
                    .map_err(err)?
                    .filter_map(|e| e.ok())
                    .map(|(k, _)| (k.value().0, k.value().1.to_string()))
                    .collect();
                for (until, key) in &dead {
                    exp.remove((*until, key.as_str())).map_err(err)?;
                    marks.remove(key.as_str()).map_err(err)?;
                }
            }
            txn.commit().map_err(err)?;
            Ok(expired)
        })
    }

    fn mark(&self, key: String, until: u64, now: u64) -> StoreFuture<'_, bool> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let was = {
                let mut marks = txn.open_table(MARKS).map_err(err)?;
                let mut exp = txn.open_table(MARK_EXPIRY).map_err(err)?;
                let old = marks.get(key.as_str()).map_err(err)?.map(|g| g.value());
                if let Some(old) = old {
                    exp.remove((old, key.as_str())).map_err(err)?;
                }
                let until = until.max(old.unwrap_or(0));
                marks.insert(key.as_str(), until).map_err(err)?;
                exp.insert((until, key.as_str()), ()).map_err(err)?;
                old.is_some_and(|o| o > now)
            };
            txn.commit().map_err(err)?;
            Ok(was)
        })
    }

    fn is_marked(&self, key: String, now: u64) -> StoreFuture<'_, bool> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let marks = txn.open_table(MARKS).map_err(err)?;
            Ok(marks
                .get(key.as_str())
                .map_err(err)?
                .is_some_and(|g| g.value() > now))
        })
    }
}

// ---------------------------------------------------------------------------

/// Sessions in memory only (tests, benchmarks).
#[derive(Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<SessionId, SessionRecord>>,
    marks: Mutex<HashMap<String, u64>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl SessionStore for MemoryStore {
    fn load(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>> {
        let r = self.map.lock().map_err(err).map(|m| m.get(&id).cloned());
        Box::pin(async move { r })
    }
    fn save(&self, id: SessionId, record: SessionRecord) -> StoreFuture<'_, ()> {
        let r = self.map.lock().map_err(err).map(|mut m| {
            m.insert(id, record);
        });
        Box::pin(async move { r })
    }
    fn remove(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>> {
        let r = self.map.lock().map_err(err).map(|mut m| m.remove(&id));
        Box::pin(async move { r })
    }
    fn find(&self, provider: String, key: SubjectKey) -> StoreFuture<'_, Vec<SessionId>> {
        let r = self.map.lock().map_err(err).map(|m| {
            m.iter()
                .filter(|(_, r)| {
                    r.provider == provider
                        && match &key {
                            SubjectKey::Sub(s) => &r.user.sub == s,
                            SubjectKey::Sid(s) => r.sid.as_ref() == Some(s),
                        }
                })
                .map(|(id, _)| *id)
                .collect()
        });
        Box::pin(async move { r })
    }
    fn purge_expired(&self, now: u64) -> StoreFuture<'_, Vec<SessionId>> {
        let r = self.map.lock().map_err(err).map(|mut m| {
            let dead: Vec<SessionId> = m
                .iter()
                .filter(|(_, r)| r.expires < now)
                .map(|(id, _)| *id)
                .collect();
            for id in &dead {
                m.remove(id);
            }
            dead
        });
        if let Ok(mut marks) = self.marks.lock() {
            marks.retain(|_, until| *until >= now);
        }
        Box::pin(async move { r })
    }
    fn mark(&self, key: String, until: u64, now: u64) -> StoreFuture<'_, bool> {
        let r = self.marks.lock().map_err(err).map(|mut m| {
            let old = m.get(&key).copied();
            m.insert(key, until.max(old.unwrap_or(0)));
            old.is_some_and(|o| o > now)
        });
        Box::pin(async move { r })
    }
    fn is_marked(&self, key: String, now: u64) -> StoreFuture<'_, bool> {
        let r = self
            .marks
            .lock()
            .map_err(err)
            .map(|m| m.get(&key).is_some_and(|u| *u > now));
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sub: &str, sid: Option<&str>, expires: u64) -> SessionRecord {
        SessionRecord {
            provider: "authentik".into(),
            issuer: "https://i/".into(),
            user: UserClaims {
                sub: sub.into(),
                username: sub.into(),
                email: None,
                email_verified: None,
                name: None,
                groups: vec![],
            },
            sid: sid.map(String::from),
            created: 1,
            expires,
            id_token: Some("secret-id-token".into()),
            access_token: None,
            access_expires: None,
            refresh_token: Some("secret-refresh".into()),
        }
    }

    async fn exercise(store: &dyn SessionStore) {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        store
            .save(a, record("alice", Some("s1"), 100))
            .await
            .unwrap();
        store
            .save(b, record("alice", Some("s2"), 200))
            .await
            .unwrap();
        store.save(c, record("bob", None, 50)).await.unwrap();
        assert_eq!(
            store.load(a).await.unwrap().unwrap().sid.as_deref(),
            Some("s1")
        );
        let mut by_sub = store
            .find("authentik".into(), SubjectKey::Sub("alice".into()))
            .await
            .unwrap();
        by_sub.sort();
        assert_eq!(by_sub, vec![a, b]);
        assert_eq!(
            store
                .find("authentik".into(), SubjectKey::Sid("s2".into()))
                .await
                .unwrap(),
            vec![b]
        );
        assert!(
            store
                .find("other".into(), SubjectKey::Sub("alice".into()))
                .await
                .unwrap()
                .is_empty()
        );
        // Replacing moves the index entries.
        store
            .save(b, record("alice", Some("s3"), 300))
            .await
            .unwrap();
        assert!(
            store
                .find("authentik".into(), SubjectKey::Sid("s2".into()))
                .await
                .unwrap()
                .is_empty()
        );
        let mut purged = store.purge_expired(150).await.unwrap();
        purged.sort();
        assert_eq!(purged, vec![a, c]);
        assert!(store.load(a).await.unwrap().is_none());
        assert!(store.remove(b).await.unwrap().is_some());
        assert!(store.load(b).await.unwrap().is_none());
        assert!(store.remove(b).await.unwrap().is_none());

        // Marks: first use, repeat, extension, expiry, purge.
        let k = used_jti_key("authentik", "j1");
        assert!(!store.mark(k.clone(), 500, 100).await.unwrap());
        assert!(store.mark(k.clone(), 400, 100).await.unwrap(), "seen");
        assert!(
            store.is_marked(k.clone(), 499).await.unwrap(),
            "not shortened"
        );
        assert!(!store.is_marked(k.clone(), 500).await.unwrap());
        assert!(!store.mark(k.clone(), 900, 600).await.unwrap(), "expired");
        let sid = revoked_sid_key("authentik", "s1");
        assert!(!store.is_marked(sid.clone(), 100).await.unwrap());
        store.mark(sid.clone(), 200, 100).await.unwrap();
        store.purge_expired(300).await.unwrap();
        assert!(!store.is_marked(sid.clone(), 150).await.unwrap(), "purged");
        assert!(store.is_marked(k, 800).await.unwrap(), "kept");
    }

    #[tokio::test]
    async fn memory_store() {
        exercise(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn redb_store_persists_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        {
            let s = RedbStore::open(&state).unwrap();
            exercise(&s).await;
            s.save([9; 32], record("carol", None, u64::MAX))
                .await
                .unwrap();
            let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let dmode = std::fs::metadata(state.join("sessions"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dmode & 0o777, 0o700);
        }
        let s = RedbStore::open(&state).unwrap();
        assert_eq!(s.load([9; 32]).await.unwrap().unwrap().user.sub, "carol");
    }

    #[test]
    fn debug_hides_tokens() {
        let shown = format!("{:?}", record("a", None, 1));
        assert!(!shown.contains("secret"), "{shown}");
    }
}
