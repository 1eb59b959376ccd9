//! When to renew a certificate: a third of its lifetime before expiry with
//! a stable per-host jitter, or earlier when the CA's renewal information
//! (RFC 9773, ARI) suggests a window; and when to try a host again after a
//! failure (`retry_min` doubling up to `retry_max`) or while another
//! instance orders it ([`Schedule`]).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use instant_acme::Account;
use tokio::time::Instant;

use crate::config::AcmeConfig;
use crate::tls::CertStore;
use crate::tls::store::CertEntry;

/// What the CA's renewal-info endpoint said about one certificate.
pub(super) struct AriAdvice {
    /// Which certificate the advice is for.
    not_after: i64,
    /// A time in the suggested window (Unix seconds); None if the CA has
    /// no renewal info.
    renew_at: Option<i64>,
    /// When to ask again.
    next_query: Instant,
}

/// Asks the CA's renewal-info endpoint (RFC 9773) when the cached advice
/// is missing, stale, or for an older certificate. CAs without it are
/// asked once per certificate.
pub(super) async fn refresh_ari(
    account: &Account,
    host: &str,
    entry: &CertEntry,
    cache: &mut HashMap<String, AriAdvice>,
) {
    let Some(not_after) = entry.facts.as_ref().map(|f| f.not_after) else {
        return;
    };
    if cache
        .get(host)
        .is_some_and(|a| a.not_after == not_after && a.next_query > Instant::now())
    {
        return;
    }
    let Some(der) = entry.key.cert.first() else {
        return;
    };
    let Ok(id) = instant_acme::CertificateIdentifier::try_from(der) else {
        return;
    };
    let advice = match account.renewal_info(&id).await {
        Ok((info, retry_after)) => {
            let start = info.suggested_window.start.unix_timestamp();
            let end = info.suggested_window.end.unix_timestamp().max(start);
            // A stable point in the window, so many hosts spread out.
            let seed = ring::digest::digest(&ring::digest::SHA256, host.as_bytes());
            let r = u32::from_le_bytes(seed.as_ref()[..4].try_into().unwrap_or_default()) as i64;
            let at = start + r % (end - start + 1);
            tracing::debug!(host, renew_at = at, "ACME renewal info received");
            AriAdvice {
                not_after,
                renew_at: Some(at),
                next_query: Instant::now()
                    + retry_after.clamp(Duration::from_secs(60), Duration::from_secs(86_400)),
            }
        }
        Err(instant_acme::Error::Unsupported(_)) => AriAdvice {
            not_after,
            renew_at: None,
            next_query: Instant::now() + Duration::from_secs(365 * 86_400),
        },
        Err(e) => {
            tracing::debug!(host, error = %e, "ACME renewal info unavailable");
            AriAdvice {
                not_after,
                renew_at: None,
                next_query: Instant::now() + Duration::from_secs(6 * 3600),
            }
        }
    };
    cache.insert(host.to_string(), advice);
}

/// When to renew: a third of the lifetime before expiry, minus a stable
/// per-host jitter of up to 1/30 of the lifetime so many hosts don't renew
/// at the same second.
pub(super) fn renew_at(host: &str, e: &CertEntry) -> i64 {
    let Some(f) = &e.facts else { return 0 };
    let lifetime = (f.not_after - f.not_before).max(1);
    let seed = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{host}{}", f.not_after).as_bytes(),
    );
    let r = u32::from_le_bytes(seed.as_ref()[..4].try_into().unwrap_or_default()) as i64;
    let jitter = r % (lifetime / 30).max(1);
    f.not_after - lifetime / 3 - jitter
}

/// When `host`'s certificate is due (Unix seconds): [`renew_at`], or the
/// CA's suggested time when it is earlier and about this certificate.
fn renew_due(host: &str, e: &CertEntry, ari: Option<&AriAdvice>) -> i64 {
    let at = renew_at(host, e);
    match ari {
        Some(a)
            if Some(a.not_after) == e.facts.as_ref().map(|f| f.not_after)
                && let Some(t) = a.renew_at =>
        {
            at.min(t)
        }
        _ => at,
    }
}

/// A host not to be ordered before `not_before`; `delay` is what the next
/// failure doubles.
struct HostRetry {
    not_before: Instant,
    delay: Duration,
}

/// Which hosts wait before their next order, and why not sooner.
#[derive(Default)]
pub(super) struct Schedule {
    retry: HashMap<String, HostRetry>,
}

impl Schedule {
    /// The hosts of `keys` due now (no certificate, or past its renewal
    /// time, and not waiting after a failure), and when the next one will
    /// be; the admin view's `next_attempt` of the others is set.
    pub(super) fn due(
        &self,
        keys: &BTreeSet<String>,
        store: &CertStore,
        ari: &HashMap<String, AriAdvice>,
        now: Instant,
        wall: i64,
    ) -> (Vec<String>, Instant) {
        let mut due = Vec::new();
        let mut wake = now + Duration::from_secs(3600);
        for host in keys {
            let renew_in = match store.acme_entry(host) {
                None => 0,
                Some(e) => renew_due(host, &e, ari.get(host))
                    .saturating_sub(wall)
                    .max(0),
            };
            let mut at = now + Duration::from_secs(renew_in as u64);
            if let Some(r) = self.retry.get(host) {
                at = at.max(r.not_before);
            }
            if at <= now {
                due.push(host.clone());
            } else {
                wake = wake.min(at);
                let mut st = store.acme_status.entry(host.clone()).or_default();
                st.next_attempt = Some(wall + (at - now).as_secs() as i64);
            }
        }
        (due, wake)
    }

    /// Nothing to wait for (issued, adopted from another instance, or no
    /// longer routed).
    pub(super) fn forget(&mut self, host: &str) {
        self.retry.remove(host);
    }

    /// Look at `host` again after `wait`, not as a failure (another
    /// instance holds its order); a later failure starts from `retry_min`.
    pub(super) fn look_again(&mut self, host: &str, wait: Duration, cfg: &AcmeConfig) {
        self.retry.insert(
            host.to_string(),
            HostRetry {
                not_before: Instant::now() + wait,
                delay: cfg.retry_min,
            },
        );
    }

    /// An order failed: back off (`retry_min`, doubling up to
    /// `retry_max`), say so in the admin view and the log.
    pub(super) fn failed(&mut self, store: &CertStore, cfg: &AcmeConfig, host: &str, msg: &str) {
        let delay = match self.retry.get(host) {
            Some(r) => (r.delay * 2).min(cfg.retry_max),
            None => cfg.retry_min,
        };
        self.retry.insert(
            host.to_string(),
            HostRetry {
                not_before: Instant::now() + delay,
                delay,
            },
        );
        let mut st = store.acme_status.entry(host.to_string()).or_default();
        st.last_error = Some(msg.to_string());
        st.next_attempt = Some(super::now_secs() + delay.as_secs() as i64);
        let keeps = if store.acme_entry(host).is_some() {
            "the current certificate keeps serving"
        } else {
            "no certificate yet"
        };
        tracing::error!(host, retry_in_s = delay.as_secs(), "{msg}; {keeps}");
    }
}
