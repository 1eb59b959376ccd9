//! Automatic certificates: one background task owns the ACME account and
//! keeps a certificate for every routed host that has no `[[certificate]]`.
//!
//! - Start: stored certificates are put into the store before listening
//!   ([`load_stored`]); missing or expiring ones are ordered in the
//!   background, so start-up never waits for the CA.
//! - Renewal: when a third of the lifetime is left (earlier if the CA's
//!   renewal info, RFC 9773, says so), with per-host jitter.
//! - Failure: the old certificate keeps serving, the CA's problem is logged
//!   in plain words and shown in the admin view, and the host is retried
//!   with exponential backoff (`retry_min` doubling up to `retry_max`).
//! - Reload: a new [`AcmePlan`] arrives on a watch channel; added hosts get
//!   certificates, removed hosts stop being served and renewed.

mod account;
pub(crate) mod dns;
pub mod order;
mod renewal;
pub mod shared;
pub mod storage;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use instant_acme::Account;
use tokio::sync::watch;
use tokio::time::Instant;

use self::account::get_account;
use self::renewal::{AriAdvice, Schedule, refresh_ari, renew_at};
use self::shared::AcmeShared;
use self::storage::Storage;
use crate::cluster::lock::Holder;
use crate::config::{AcmeConfig, ChallengeKind, Config, HostPattern};
use crate::telemetry::metrics::Metrics;
use crate::tls::CertStore;
use crate::tls::store::{CertEntry, Source};

/// One certificate the ACME task keeps: its names (the first is its key
/// in the store, on disk and in `GET /certificates`) and its challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeOrder {
    pub names: Vec<String>,
    pub challenge: ChallengeKind,
}

/// What the ACME task should do: which CA, which certificates, where to store.
#[derive(Debug, Clone)]
pub struct AcmePlan {
    pub config: AcmeConfig,
    /// Certificate key (its first name) → what to order.
    pub orders: BTreeMap<String, AcmeOrder>,
    pub state_dir: PathBuf,
}

impl AcmePlan {
    /// The plan for a config, when there is an https listener and an
    /// `[acme]`: every `[[acme_certificate]]`; with a DNS provider, one
    /// `*.domain` + `domain` certificate per wildcard route; one
    /// certificate per exact routed host, unless a `[[certificate]]` covers
    /// it or (with `reuse_wildcard`) an ACME wildcard does.
    pub fn from_config(config: &Config) -> Option<AcmePlan> {
        let acme = config.acme.clone()?;
        config.server.https?;
        let file_covers = |p: &HostPattern| {
            config.certificates.iter().any(|c| {
                c.hosts.contains(p)
                    || matches!(p, HostPattern::Exact(h) if c.hosts.iter().any(|cp| crate::config::pattern_covers(cp, h)))
            })
        };
        let mut orders: BTreeMap<String, AcmeOrder> = BTreeMap::new();
        for c in &config.acme_certificates {
            let names: Vec<String> = c.names.iter().map(|n| n.to_string()).collect();
            orders.insert(
                names[0].clone(),
                AcmeOrder {
                    names,
                    challenge: c.challenge,
                },
            );
        }
        let has_name = |orders: &BTreeMap<String, AcmeOrder>, n: &str| {
            orders.values().any(|o| o.names.iter().any(|x| x == n))
        };
        if acme.dns.is_some() {
            for r in &config.routes {
                if let HostPattern::Wildcard(base) = &r.host {
                    let name = r.host.to_string();
                    if file_covers(&r.host) || has_name(&orders, &name) {
                        continue;
                    }
                    orders.insert(
                        name.clone(),
                        AcmeOrder {
                            names: vec![name, base.clone()],
                            challenge: ChallengeKind::Dns01,
                        },
                    );
                }
            }
        }
        let wildcards: Vec<HostPattern> = orders
            .values()
            .flat_map(|o| o.names.iter())
            .filter_map(|n| crate::config::parse_host_pattern(n).ok())
            .filter(|p| matches!(p, HostPattern::Wildcard(_)))
            .collect();
        for r in &config.routes {
            let HostPattern::Exact(h) = &r.host else {
                continue;
            };
            if file_covers(&r.host) || has_name(&orders, h) {
                continue;
            }
            if acme.reuse_wildcard
                && wildcards
                    .iter()
                    .any(|w| crate::config::pattern_covers(w, h))
            {
                continue;
            }
            orders.insert(
                h.clone(),
                AcmeOrder {
                    names: vec![h.clone()],
                    challenge: acme.challenge,
                },
            );
        }
        Some(AcmePlan {
            config: acme,
            orders,
            state_dir: config.server.state_dir.clone(),
        })
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The ACME plan of `config`, with the stored, still-valid certificates of
/// its hosts already in the store (so hosts going live have what exists);
/// `None` without ACME. The caller hands the plan to the ACME task once the
/// new snapshot is live, which then orders what is missing.
pub fn prepare(config: &crate::config::Config, store: &CertStore) -> Option<Arc<AcmePlan>> {
    let plan = AcmePlan::from_config(config)?;
    load_stored(&plan, store);
    Some(Arc::new(plan))
}

/// Puts stored, still-valid certificates for the plan's hosts into the store.
pub fn load_stored(plan: &AcmePlan, store: &CertStore) {
    let storage = Storage::new(&plan.state_dir, &plan.config.directory);
    for (host, order) in &plan.orders {
        if store.acme_entry(host).is_some() {
            continue;
        }
        let Some((chain, key)) = storage.load_cert(host) else {
            continue;
        };
        match crate::pki::certified_key_from_pem(&chain, &key) {
            Ok(ck) => {
                let entry = CertEntry::new(Arc::new(ck), Source::Acme);
                let usable = entry.facts.as_ref().is_some_and(|f| {
                    f.not_after > now_secs()
                        && order.names.iter().all(|n| f.names.iter().any(|m| m == n))
                });
                if usable {
                    tracing::info!(host, "serving stored certificate");
                    store.set_acme(host, Arc::new(entry));
                } else {
                    tracing::info!(
                        host,
                        "stored certificate expired or for other names; ordering a new one"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(host, error = %e, "stored certificate unusable; ordering a new one")
            }
        }
    }
}

/// Starts the ACME task. It follows `plans` until the sender is dropped.
/// With `[cluster]` (`cluster`: the link and the order lock's lease), the
/// account, certificates, challenges and order locks are shared through
/// Redis ([`shared`]).
pub fn spawn(
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
    plans: watch::Receiver<Option<Arc<AcmePlan>>>,
    cluster: Option<(Arc<crate::cluster::Cluster>, Duration)>,
) {
    let shared = cluster.map(|(c, lease)| {
        let sh = AcmeShared::new(c, lease);
        sh.set_plan(plans.borrow().as_deref());
        let _ = store.shared.set(sh.clone());
        shared::spawn_watcher(sh.clone(), store.clone(), plans.clone());
        sh
    });
    tokio::spawn(run(store, metrics, plans, shared));
}

/// How one due host ended.
enum Outcome {
    /// Ordered here: (chain PEM, key PEM).
    Issued(String, String),
    /// Another instance's newer certificate was installed instead.
    Adopted,
    /// Another instance holds the order lock.
    Busy(Holder),
    /// Redis is unreachable: the order needs its lock, so it waits.
    Waiting(String),
    /// Our lease was taken over: nothing published, nothing installed.
    Superseded,
    Failed(order::OrderFailure),
}

/// Orders `host` when this instance may: alone, or holding the cluster's
/// order lock (renewed while the order runs; the certificate is published
/// only while our fencing token is the latest).
#[allow(clippy::too_many_arguments)]
async fn order_host(
    acct: &Account,
    host: &str,
    order: &AcmeOrder,
    store: &CertStore,
    storage: &Storage,
    dir: &str,
    solver: Option<&dns::Solver>,
    budget: Duration,
    shared: Option<&AcmeShared>,
) -> Outcome {
    let kind = order.challenge;
    let Some(sh) = shared else {
        tracing::info!(host, names = ?order.names, challenge = kind.as_str(), "ordering certificate");
        return match order::issue(acct, &order.names, kind, store, solver, budget, None).await {
            Ok((c, k)) => Outcome::Issued(c, k),
            Err(f) => Outcome::Failed(f),
        };
    };
    let still_due = |store: &CertStore| {
        store
            .acme_entry(host)
            .is_none_or(|e| renew_at(host, &e) <= now_secs())
    };
    let waiting = |e: crate::cluster::ClusterError| {
        let what = match store.acme_entry(host) {
            Some(_) => "renewal",
            None => "the first order",
        };
        Outcome::Waiting(format!(
            "{what} waits for Redis ({e}): ordering needs the cluster's order lock"
        ))
    };
    // Another instance may have renewed it already.
    match shared::adopt(sh, store, storage, dir, host, order).await {
        Ok(true) if !still_due(store) => return Outcome::Adopted,
        Ok(_) => {}
        Err(e) => return waiting(e),
    }
    let lease = match sh.try_lock(dir, host).await {
        Err(e) => return waiting(e),
        Ok(Err(holder)) => return Outcome::Busy(holder),
        Ok(Ok(l)) => l,
    };
    // Taken just after another holder finished?
    if let Ok(true) = shared::adopt(sh, store, storage, dir, host, order).await
        && !still_due(store)
    {
        let _ = sh.cluster.unlock(&lease).await;
        return Outcome::Adopted;
    }
    tracing::info!(host, names = ?order.names, challenge = kind.as_str(), fencing_token = lease.fence, instance = %sh.cluster.instance, "took the order lock; ordering certificate");
    let renew = async {
        loop {
            tokio::time::sleep(lease.lease / 3).await;
            match sh.cluster.renew(&lease).await {
                Ok(true) => {}
                Ok(false) => return,
                // Redis away: keep ordering; the fence decides at the end.
                Err(_) => {}
            }
        }
    };
    // Losing the lock does not cut the order short (its DNS records and
    // challenges are cleaned up at its end); the fence refuses its result.
    let issue = order::issue(acct, &order.names, kind, store, solver, budget, Some(sh));
    tokio::pin!(issue);
    tokio::pin!(renew);
    let mut lost = false;
    let issued = loop {
        tokio::select! {
            r = &mut issue => break r,
            () = &mut renew, if !lost => {
                lost = true;
                tracing::warn!(host, fencing_token = lease.fence, "lost this host's order lock while ordering");
            }
        }
    };
    let outcome = match issued {
        Err(f) => Outcome::Failed(f),
        Ok((chain, key)) => match sh.publish_cert(&lease, dir, host, &chain, &key).await {
            Ok(true) => Outcome::Issued(chain, key),
            Ok(false) => Outcome::Superseded,
            Err(e) => {
                tracing::warn!(host, error = %e, "the new certificate could not be shared through Redis; serving it here only");
                Outcome::Issued(chain, key)
            }
        },
    };
    if matches!(outcome, Outcome::Superseded) {
        tracing::warn!(
            host,
            fencing_token = lease.fence,
            "another instance took over this host's order lock; this order's certificate is discarded"
        );
    }
    let _ = sh.cluster.unlock(&lease).await;
    outcome
}

async fn run(
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
    mut plans: watch::Receiver<Option<Arc<AcmePlan>>>,
    shared: Option<Arc<AcmeShared>>,
) {
    let shared = shared.as_deref();
    let mut account: Option<(String, Account)> = None;
    let mut schedule = Schedule::default();
    let mut served: BTreeSet<String> = BTreeSet::new();
    let mut ari: HashMap<String, AriAdvice> = HashMap::new();
    loop {
        let plan = plans.borrow_and_update().clone();
        let Some(plan) = plan else {
            for h in std::mem::take(&mut served) {
                store.remove_acme(&h);
            }
            if plans.changed().await.is_err() {
                return;
            }
            continue;
        };
        let storage = Storage::new(&plan.state_dir, &plan.config.directory);
        if account
            .as_ref()
            .is_some_and(|(d, _)| *d != plan.config.directory)
        {
            account = None;
        }

        let keys: BTreeSet<String> = plan.orders.keys().cloned().collect();
        for gone in served.difference(&keys).cloned().collect::<Vec<_>>() {
            tracing::info!(host = %gone, "host no longer routed; its certificate is no longer served or renewed");
            store.remove_acme(&gone);
            schedule.forget(&gone);
            served.remove(&gone);
        }
        load_stored(&plan, &store);
        served.extend(keys.iter().cloned());

        let now = Instant::now();
        let wall = now_secs();
        // The CA's renewal advice (RFC 9773), where it offers any: needs the
        // account, which is otherwise only loaded when an order is due.
        if account.is_none()
            && storage.load_account().is_some()
            && keys.iter().any(|h| store.acme_entry(h).is_some())
            && let Ok(a) = get_account(&plan.config, &storage, shared).await
        {
            account = Some((plan.config.directory.clone(), a));
        }
        if let Some((_, acct)) = &account {
            for host in &keys {
                if let Some(e) = store.acme_entry(host) {
                    refresh_ari(acct, host, &e, &mut ari).await;
                }
            }
        }
        ari.retain(|h, _| keys.contains(h));

        let (due, wake) = schedule.due(&keys, &store, &ari, now, wall);

        if !due.is_empty() {
            if account.is_none() {
                match get_account(&plan.config, &storage, shared).await {
                    Ok(a) => account = Some((plan.config.directory.clone(), a)),
                    Err(e) => {
                        let msg = format!("ACME account at {}: {e}", plan.config.directory);
                        tracing::error!("{msg}; old certificates keep serving");
                        // Each due order failed as surely as one the CA
                        // refused: an unreachable CA must show on
                        // portcullis_acme_orders_total{result="failure"}.
                        metrics
                            .acme_failure
                            .fetch_add(due.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        for h in &due {
                            schedule.failed(&store, &plan.config, h, &msg);
                        }
                        continue;
                    }
                }
            }
            let acct = account
                .as_ref()
                .map(|(_, a)| a.clone())
                .expect("account set above");
            let solver = match dns::Solver::new(&plan.config) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("DNS provider unusable: {e}");
                    None
                }
            };
            let solver = solver.as_ref();
            let budget = Duration::from_secs(300) + plan.config.propagation_timeout;
            let dir = plan.config.directory.as_str();
            let storage_ref = &storage;
            let results: Vec<_> = futures_util::stream::iter(due)
                .map(|host| {
                    let acct = acct.clone();
                    let store = store.clone();
                    let order = plan.orders.get(&host).cloned();
                    async move {
                        let Some(order) = order else {
                            return (host, None);
                        };
                        let r = order_host(
                            &acct,
                            &host,
                            &order,
                            &store,
                            storage_ref,
                            dir,
                            solver,
                            budget,
                            shared,
                        )
                        .await;
                        (host, Some(r))
                    }
                })
                .buffer_unordered(plan.config.max_concurrent_orders)
                .collect()
                .await;
            for (host, r) in results {
                let Some(r) = r else { continue };
                let counter = match &r {
                    Outcome::Issued(..) => Some(&metrics.acme_success),
                    Outcome::Failed(_) => Some(&metrics.acme_failure),
                    _ => None,
                };
                if let Some(c) = counter {
                    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                match r {
                    Outcome::Issued(chain, key) => {
                        installed(&store, &storage, &host, chain, key);
                        schedule.forget(&host);
                    }
                    Outcome::Adopted => schedule.forget(&host),
                    Outcome::Busy(h) => {
                        // Its certificate arrives through Redis; look again
                        // soon in case its holder dies.
                        let wait = Duration::from_millis(h.expires_in_ms.max(0) as u64)
                            .clamp(Duration::from_secs(1), Duration::from_secs(5));
                        tracing::info!(host = %host, holder = %h.instance, fencing_token = h.fence, "another instance is ordering this certificate; waiting for it");
                        schedule.look_again(&host, wait, &plan.config);
                        let mut st = store.acme_status.entry(host.clone()).or_default();
                        st.next_attempt = Some(now_secs() + wait.as_secs() as i64);
                    }
                    Outcome::Waiting(msg) => schedule.failed(&store, &plan.config, &host, &msg),
                    Outcome::Superseded => {
                        schedule.look_again(&host, Duration::from_secs(1), &plan.config)
                    }
                    Outcome::Failed(f) => {
                        if f.account_missing {
                            tracing::warn!(
                                "the ACME server no longer knows our account; a new one will be created"
                            );
                            storage.forget_account();
                            if let Some(sh) = shared {
                                sh.forget_account(dir).await;
                            }
                            account = None;
                        }
                        schedule.failed(&store, &plan.config, &host, &f.to_string());
                    }
                }
            }
            continue;
        }

        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            r = plans.changed() => if r.is_err() { return },
        }
    }
}

fn installed(store: &CertStore, storage: &Storage, host: &str, chain: String, key: String) {
    match crate::pki::certified_key_from_pem(chain.as_bytes(), key.as_bytes()) {
        Ok(ck) => {
            if let Err(e) = storage.save_cert(host, chain.as_bytes(), key.as_bytes()) {
                // Still serve it; it will be ordered again after a restart.
                tracing::error!(host, error = %e, "could not store the new certificate");
            }
            let entry = Arc::new(CertEntry::new(Arc::new(ck), Source::Acme));
            let not_after = entry.facts.as_ref().map(|f| f.not_after);
            store.set_acme(host, entry);
            let mut st = store.acme_status.entry(host.to_string()).or_default();
            st.last_issued = Some(now_secs());
            st.last_error = None;
            tracing::info!(host, not_after, "certificate issued and installed");
        }
        Err(e) => tracing::error!(host, error = %e, "the CA returned an unusable certificate"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(acme_extra: &str, routes: &[&str]) -> AcmePlan {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = format!(
            "[server]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n[acme]\ndns = {{ provider = \"exec\", command = [\"/bin/true\"] }}\n{acme_extra}\n"
        );
        for r in routes {
            toml.push_str(&format!("[[route]]\nhost = \"{r}\"\nrespond = {{}}\n"));
        }
        let cfg = crate::config::parse(&dir.path().join("p.toml"), &toml).unwrap();
        AcmePlan::from_config(&cfg).unwrap()
    }

    fn names(p: &AcmePlan) -> Vec<(String, Vec<String>, &'static str)> {
        p.orders
            .iter()
            .map(|(k, o)| (k.clone(), o.names.clone(), o.challenge.as_str()))
            .collect()
    }

    #[test]
    fn wildcard_routes_order_wildcard_and_apex_and_cover_exact_hosts() {
        let p = plan(
            "",
            &["*.example.com", "example.com", "a.example.com", "other.org"],
        );
        assert_eq!(
            names(&p),
            vec![
                (
                    "*.example.com".into(),
                    vec!["*.example.com".into(), "example.com".into()],
                    "dns-01"
                ),
                ("other.org".into(), vec!["other.org".into()], "http-01"),
            ]
        );
        // Configurable: exact hosts under the wildcard order their own.
        let p = plan(
            "reuse_wildcard = false",
            &["*.example.com", "a.example.com"],
        );
        assert!(p.orders.contains_key("a.example.com"));
        assert!(p.orders.contains_key("*.example.com"));
        // Explicit SAN sets take precedence over the automatic ones.
        let p = plan(
            "[[acme_certificate]]\nnames = [\"example.com\", \"*.example.com\", \"x.example.org\"]\nchallenge = \"dns-01\"",
            &["*.example.com", "x.example.org"],
        );
        assert_eq!(p.orders.len(), 1, "{:?}", names(&p));
        assert_eq!(p.orders["example.com"].names.len(), 3);
    }
}
