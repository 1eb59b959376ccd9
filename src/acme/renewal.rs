//! When to renew a certificate: a third of its lifetime before expiry with
//! a stable per-host jitter, or earlier when the CA's renewal information
//! (RFC 9773, ARI) suggests a window.

use std::collections::HashMap;
use std::time::Duration;

use instant_acme::Account;
use tokio::time::Instant;

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
pub(super) fn renew_due(host: &str, e: &CertEntry, ari: Option<&AriAdvice>) -> i64 {
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
