//! Config reload: parse → validate → build a whole new [`Snapshot`] → one
//! atomic swap. A failing config changes nothing. Requests for a reload
//! (SIGHUP, `POST /reload`, `portcullis reload`) go through one task, and a
//! burst that arrives while a reload runs is answered by the next single
//! reload instead of being queued one by one.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::acme::AcmePlan;
use crate::config::{self, Config, ConfigError};
use crate::snapshot::Shared;
use crate::tls::CertStore;

/// The result of one reload, as reported to the admin API and the log.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReloadOutcome {
    Reloaded {
        generation: u64,
        routes: usize,
        /// Settings that changed but only take effect after a restart.
        warnings: Vec<String>,
    },
    Rejected {
        errors: Vec<ReportedError>,
    },
}

/// A config error in the JSON the admin API returns.
#[derive(Debug, Clone, Serialize)]
pub struct ReportedError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
    /// The same as one human-readable line.
    pub text: String,
}

impl From<&ConfigError> for ReportedError {
    fn from(e: &ConfigError) -> Self {
        ReportedError {
            file: e.file.display().to_string(),
            line: e.line,
            column: e.column,
            key: e.key.clone(),
            message: e.message.clone(),
            text: e.to_string(),
        }
    }
}

type Waiter = Option<oneshot::Sender<ReloadOutcome>>;

/// A cheap handle to ask for reloads.
#[derive(Clone)]
pub struct ReloadHandle {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl ReloadHandle {
    /// Requests a reload and waits for its outcome.
    pub async fn reload(&self) -> Option<ReloadOutcome> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Some(tx)).ok()?;
        rx.await.ok()
    }

    /// Requests a reload without waiting (SIGHUP).
    pub fn trigger(&self) {
        let _ = self.tx.send(None);
    }
}

/// Starts the reload task; it ends when every handle is dropped.
pub fn spawn(
    shared: Arc<Shared>,
    acme_plans: watch::Sender<Option<Arc<AcmePlan>>>,
) -> ReloadHandle {
    let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut waiters = vec![first];
            while let Ok(w) = rx.try_recv() {
                waiters.push(w);
            }
            let outcome = reload_once(&shared, &acme_plans).await;
            for w in waiters.into_iter().flatten() {
                let _ = w.send(outcome.clone());
            }
        }
    });
    ReloadHandle { tx }
}

/// Installs `config`'s certificates in the store (configured ones, and the
/// stored ACME ones of its hosts) before its routes go live; returns its
/// ACME plan, for the ACME task once they are live. Start-up uses it too.
pub fn install_certificates(config: &Config, certs: &CertStore) -> Option<Arc<AcmePlan>> {
    certs.set_configured(&config.certificates);
    crate::acme::prepare(config, certs)
}

/// Loads the config file, and if it is valid: identity providers,
/// certificates, the new snapshot (built off the runtime), publish, then
/// ACME for the new hosts.
async fn reload_once(
    shared: &Arc<Shared>,
    acme_plans: &watch::Sender<Option<Arc<AcmePlan>>>,
) -> ReloadOutcome {
    let path = shared.config_path.clone();
    let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
    let config = match loaded {
        Ok(Ok(c)) => c,
        Ok(Err(errs)) => {
            shared
                .metrics
                .reload_failure
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(
                config = %shared.config_path.display(),
                errors = errs.0.len(),
                "reload rejected; the running config keeps serving:\n{errs}"
            );
            return ReloadOutcome::Rejected {
                errors: errs.0.iter().map(ReportedError::from).collect(),
            };
        }
        Err(e) => {
            tracing::error!(error = %e, "reload task failed");
            return ReloadOutcome::Rejected { errors: vec![] };
        }
    };

    let old = shared.current();
    let warnings = restart_only_changes(&old.server, &config.server);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let summary = format!(
        "{} route{}; listeners in effect: {}",
        config.routes.len(),
        if config.routes.len() == 1 { "" } else { "s" },
        shared.listening.get().map_or("not started", String::as_str)
    );
    // Identity providers: running ones are kept while their config is
    // unchanged, then all are rediscovered (bounded) so keys are current.
    let auth = match shared.auth.prepare(&config) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "reload rejected: single sign-on setup failed");
            let file = shared.config_path.display().to_string();
            return ReloadOutcome::Rejected {
                errors: vec![ReportedError {
                    text: format!("{file}: oidc: {e}"),
                    file,
                    line: 0,
                    column: 0,
                    key: "oidc".into(),
                    message: e,
                }],
            };
        }
    };
    crate::auth::rediscover(&auth).await;
    crate::auth::spawn_background(&shared.auth, &auth);
    let plan = install_certificates(&config, &shared.certs);
    // Build off the hot path (spawn_blocking: a 10,000-route table is a few ms).
    let metrics = shared.metrics.clone();
    let previous = old.clone();
    let built = tokio::task::spawn_blocking(move || {
        crate::snapshot::assemble(config, Some(&previous), &metrics, auth)
    })
    .await;
    let snapshot = match built {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "building the new route table failed");
            return ReloadOutcome::Rejected { errors: vec![] };
        }
    };
    let (generation, routes) = (snapshot.generation, snapshot.table.len());
    shared.publish(snapshot);
    acme_plans.send_replace(plan);
    tracing::info!(generation, routes, "config reloaded: {summary}");
    ReloadOutcome::Reloaded {
        generation,
        routes,
        warnings,
    }
}

/// Listener and client settings are fixed at start; say so when a reload
/// changes them instead of silently ignoring the change.
fn restart_only_changes(old: &config::ServerConfig, new: &config::ServerConfig) -> Vec<String> {
    let mut w = Vec::new();
    let mut check = |name: &str, changed: bool| {
        if changed {
            w.push(format!(
                "server.{name} changed; it takes effect after a restart (until then the old value stays in effect)"
            ));
        }
    };
    check("http", old.http != new.http);
    check("https", old.https != new.https);
    check("admin", old.admin != new.admin);
    check(
        "upstream_connect_timeout",
        old.upstream_connect_timeout != new.upstream_connect_timeout,
    );
    check(
        "upstream_idle_timeout",
        old.upstream_idle_timeout != new.upstream_idle_timeout,
    );
    check(
        "header_read_timeout",
        old.header_read_timeout != new.header_read_timeout,
    );
    check("workers", old.workers != new.workers);
    w
}
