//! The certificate store: SNI name → certificate, read lock-free on every
//! handshake, updated by background tasks (reload, ACME) with one atomic
//! swap. Certificates from `[[certificate]]` take precedence over ACME ones
//! for the same name. ACME challenge material lives here too, because the
//! listeners answer the challenges.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use rustls::sign::CertifiedKey;
use serde::Serialize;

use crate::config::{CertSource, CertificateConfig};
use crate::pki::{CertFacts, facts};

/// Where a served certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    File,
    SelfSigned,
    Acme,
}

/// One certificate as served.
#[derive(Debug)]
pub struct CertEntry {
    pub key: Arc<CertifiedKey>,
    pub source: Source,
    pub facts: Option<CertFacts>,
}

impl CertEntry {
    pub fn new(key: Arc<CertifiedKey>, source: Source) -> Self {
        let facts = key.cert.first().and_then(facts);
        CertEntry { key, source, facts }
    }
}

/// The ACME side of a host, for the admin view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AcmeStatus {
    /// Unix seconds of the last successful issuance.
    pub last_issued: Option<i64>,
    /// The last failure in plain words; cleared by a success.
    pub last_error: Option<String>,
    /// Unix seconds of the next planned attempt.
    pub next_attempt: Option<i64>,
}

/// An ACME host's order lock, held by one instance of a cluster.
#[derive(Debug, Clone, Serialize)]
pub struct OrderLock {
    /// `[cluster] instance_name` of the holder.
    pub instance: String,
    /// Larger than every earlier holder's.
    pub fencing_token: u64,
    /// Unix milliseconds when the lease ends unless renewed.
    pub lease_expires_ms: i64,
}

/// A lookup in the shared store.
pub type Lookup<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// ACME state other instances publish (`[cluster]`), asked when this
/// instance has no answer of its own.
pub trait SharedAcme: Send + Sync {
    /// The HTTP-01 key authorization of a token.
    fn http_token<'a>(&'a self, token: &'a str) -> Lookup<'a, Option<String>>;
    /// The TLS-ALPN-01 challenge certificate of a host.
    fn alpn_challenge<'a>(&'a self, host: &'a str) -> Lookup<'a, Option<Arc<CertifiedKey>>>;
    /// The order locks of this instance's ACME hosts, by host.
    fn order_locks(&self) -> Lookup<'_, Vec<(String, OrderLock)>>;
}

type Names = HashMap<String, Arc<CertEntry>>;

#[derive(Default)]
struct Sources {
    configured: Names,
    acme: Names,
}

#[derive(Default)]
pub struct CertStore {
    merged: ArcSwap<Names>,
    sources: Mutex<Sources>,
    /// TLS-ALPN-01: host → challenge certificate.
    pub alpn_challenges: DashMap<String, Arc<CertifiedKey>>,
    /// HTTP-01: token → key authorization.
    pub http_tokens: DashMap<String, String>,
    /// Per ACME host: last issuance and last error.
    pub acme_status: DashMap<String, AcmeStatus>,
    /// With `[cluster]`: challenges and order locks of every instance.
    pub shared: OnceLock<Arc<dyn SharedAcme>>,
}

impl CertStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The certificate for an SNI name (lowercase): exact, then the
    /// one-label wildcard `*.parent`.
    pub fn resolve(&self, name: &str) -> Option<Arc<CertEntry>> {
        let names = self.merged.load();
        if let Some(e) = names.get(name) {
            return Some(e.clone());
        }
        let (_, parent) = name.split_once('.')?;
        let mut wild = String::with_capacity(parent.len() + 2);
        wild.push_str("*.");
        wild.push_str(parent);
        names.get(&wild).cloned()
    }

    /// Replaces the certificates that come from the config file.
    pub fn set_configured(&self, certs: &[CertificateConfig]) {
        let mut configured = Names::new();
        for c in certs {
            let source = match c.source {
                CertSource::Files { .. } => Source::File,
                CertSource::SelfSigned => Source::SelfSigned,
            };
            let entry = Arc::new(CertEntry::new(c.key.clone(), source));
            for h in &c.hosts {
                configured.insert(h.to_string(), entry.clone());
            }
            if source == Source::SelfSigned {
                tracing::warn!(
                    hosts = ?c.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                    "serving a self-signed certificate (generated at start; browsers will not trust it)"
                );
            }
        }
        let mut s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        s.configured = configured;
        self.publish(&s);
    }

    /// Installs (or replaces) an ACME certificate for one host.
    pub fn set_acme(&self, host: &str, entry: Arc<CertEntry>) {
        let mut s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        s.acme.insert(host.to_string(), entry);
        self.publish(&s);
    }

    /// Stops serving the ACME certificate of a host that is no longer routed.
    pub fn remove_acme(&self, host: &str) {
        let mut s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if s.acme.remove(host).is_some() {
            self.publish(&s);
        }
        self.acme_status.remove(host);
    }

    /// The ACME certificate currently held for a host, if any.
    pub fn acme_entry(&self, host: &str) -> Option<Arc<CertEntry>> {
        let s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        s.acme.get(host).cloned()
    }

    /// ACME certificates are served for every name they carry (a wildcard
    /// certificate also for its apex), then under their own key; configured
    /// ones take precedence over both.
    fn publish(&self, s: &Sources) {
        let mut merged = Names::new();
        for e in s.acme.values() {
            for n in e.facts.iter().flat_map(|f| f.names.iter()) {
                merged
                    .entry(n.to_ascii_lowercase())
                    .or_insert_with(|| e.clone());
            }
        }
        for (k, v) in &s.acme {
            merged.insert(k.clone(), v.clone());
        }
        for (k, v) in &s.configured {
            merged.insert(k.clone(), v.clone());
        }
        self.merged.store(Arc::new(merged));
    }

    /// Every served name with its certificate, sorted by name.
    pub fn entries(&self) -> Vec<(String, Arc<CertEntry>)> {
        let mut v: Vec<_> = self
            .merged
            .load()
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostPattern;

    fn cfg(hosts: &[&str]) -> CertificateConfig {
        crate::install_crypto_provider();
        let names: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
        CertificateConfig {
            hosts: hosts
                .iter()
                .map(|h| crate::config::parse_host_pattern(h).unwrap())
                .collect::<Vec<HostPattern>>(),
            source: CertSource::SelfSigned,
            key: crate::pki::self_signed(&names).unwrap(),
            line: 1,
        }
    }

    #[test]
    fn exact_wildcard_and_precedence() {
        let store = CertStore::new();
        store.set_configured(&[cfg(&["a.example.com"]), cfg(&["*.example.com"])]);
        assert!(store.resolve("a.example.com").is_some());
        assert!(store.resolve("b.example.com").is_some());
        assert!(
            store.resolve("x.b.example.com").is_none(),
            "wildcards cover one label"
        );
        assert!(store.resolve("example.com").is_none());
        assert!(store.resolve("other.org").is_none());

        let acme = Arc::new(CertEntry::new(cfg(&["a.example.com"]).key, Source::Acme));
        store.set_acme("a.example.com", acme);
        assert_eq!(
            store.resolve("a.example.com").unwrap().source,
            Source::SelfSigned
        );
        store.set_configured(&[]);
        assert_eq!(store.resolve("a.example.com").unwrap().source, Source::Acme);
        store.remove_acme("a.example.com");
        assert!(store.resolve("a.example.com").is_none());
    }
}
