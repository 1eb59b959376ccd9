//! Access lists (`[access.NAME]`): address rules and htpasswd users,
//! combined by `satisfy`. Passwords are verified off the serving thread
//! (`spawn_blocking`: bcrypt at cost 10 takes tens of milliseconds). A
//! success is cached for [`CACHE_FOR`], keyed by the SHA-256 of the
//! `Authorization` value, so a browser sending it on every request pays
//! once; after [`MAX_FAILURES`] failures in [`FAILURE_WINDOW`] an address
//! gets 429 without its password being checked. The cache belongs to the
//! snapshot: a reload (which re-reads the htpasswd file) starts it empty.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use dashmap::DashMap;
use http::{HeaderMap, HeaderValue, header};

use super::Refusal;
use crate::config::{AccessList, HashKind, Satisfy};
use crate::http::error::ProxyError;

/// How long a verified `Authorization` value is believed.
pub const CACHE_FOR: Duration = Duration::from_secs(60);
/// Failed password attempts an address may make per window.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Entries kept in each of the two maps before stale ones are dropped.
const MAX_ENTRIES: usize = 10_000;

pub struct Gate {
    list: Arc<AccessList>,
    verified: DashMap<[u8; 32], (Arc<str>, Instant)>,
    failures: DashMap<IpAddr, (u32, Instant)>,
    challenge: HeaderValue,
}

impl Gate {
    pub fn new(list: Arc<AccessList>) -> Gate {
        let challenge = HeaderValue::from_str(&format!(
            "Basic realm=\"{}\", charset=\"UTF-8\"",
            list.realm
        ))
        .unwrap_or(HeaderValue::from_static("Basic"));
        Gate {
            list,
            verified: DashMap::new(),
            failures: DashMap::new(),
            challenge,
        }
    }

    pub async fn admit(
        &self,
        ip: IpAddr,
        headers: &HeaderMap,
        request_id: &HeaderValue,
    ) -> Result<Option<Arc<str>>, Refusal> {
        let l = &self.list;
        match l.satisfy {
            Satisfy::Any => {
                if l.address_suffices(ip) {
                    return Ok(None);
                }
                if l.users.is_empty() {
                    return Err(Refusal::Error(ProxyError::AddressDenied));
                }
            }
            Satisfy::All => {
                if !l.address_allowed(ip) {
                    return Err(Refusal::Error(ProxyError::AddressDenied));
                }
                if l.users.is_empty() {
                    return Ok(None);
                }
            }
        }
        self.password(ip, headers, request_id).await.map(Some)
    }

    async fn password(
        &self,
        ip: IpAddr,
        headers: &HeaderMap,
        request_id: &HeaderValue,
    ) -> Result<Arc<str>, Refusal> {
        let Some((user, pass, raw)) = basic_credentials(headers) else {
            return Err(self.unauthorized(request_id, headers));
        };
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, raw)
            .as_ref()
            .try_into()
            .expect("32 bytes");
        if let Some(hit) = self.verified.get(&key)
            && hit.1.elapsed() < CACHE_FOR
        {
            return Ok(hit.0.clone());
        }
        if let Some(f) = self.failures.get(&ip)
            && f.0 >= MAX_FAILURES
            && f.1.elapsed() < FAILURE_WINDOW
        {
            let wait = FAILURE_WINDOW.saturating_sub(f.1.elapsed());
            return Err(Refusal::Respond(Box::new(super::rate::too_many(
                wait, request_id,
            ))));
        }
        // An unknown user costs a verification too (against the first
        // user's hash, whose answer is ignored), so timing does not tell
        // which names exist.
        let known = self.list.users.iter().find(|u| u.user == user);
        let exists = known.is_some();
        let u = known.unwrap_or(&self.list.users[0]).clone();
        let ok = tokio::task::spawn_blocking(move || verify(u.kind, &pass, &u.hash))
            .await
            .unwrap_or(false)
            && exists;
        if ok {
            bound(&self.verified, |v| v.1.elapsed() < CACHE_FOR);
            let name: Arc<str> = user.into();
            self.verified.insert(key, (name.clone(), Instant::now()));
            Ok(name)
        } else {
            bound(&self.failures, |v| v.1.elapsed() < FAILURE_WINDOW);
            let mut f = self.failures.entry(ip).or_insert((0, Instant::now()));
            if f.1.elapsed() >= FAILURE_WINDOW {
                *f = (0, Instant::now());
            }
            f.0 += 1;
            tracing::info!(client = %ip, access = %self.list.name, "basic auth failed");
            Err(self.unauthorized(request_id, headers))
        }
    }

    fn unauthorized(&self, request_id: &HeaderValue, headers: &HeaderMap) -> Refusal {
        let mut r = ProxyError::Unauthorized.response(request_id, headers.get(header::ACCEPT));
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, self.challenge.clone());
        Refusal::Respond(Box::new(r))
    }
}

/// Keeps a map under [`MAX_ENTRIES`]: drops stale entries, then all.
fn bound<K: Eq + std::hash::Hash, V>(map: &DashMap<K, V>, fresh: impl Fn(&V) -> bool) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, v| fresh(v));
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
    }
}

/// `Authorization: Basic base64(user:pass)` → (user, pass, the raw value).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String, &[u8])> {
    let raw = headers.get(header::AUTHORIZATION)?.as_bytes();
    let b64 = raw
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case(b"basic "))
        .map(|_| raw[6..].trim_ascii())?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string(), raw))
}

/// Checks a password against one htpasswd hash (slow on purpose).
pub fn verify(kind: HashKind, password: &str, hash: &str) -> bool {
    match kind {
        HashKind::Bcrypt => bcrypt::verify(password, hash).unwrap_or(false),
        HashKind::ShaCrypt => {
            use sha_crypt::PasswordVerifier as _;
            sha_crypt::ShaCrypt::default()
                .verify_password(password.as_bytes(), hash)
                .is_ok()
        }
        HashKind::Argon2id => {
            use argon2::PasswordVerifier as _;
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), hash)
                .is_ok()
        }
    }
}
