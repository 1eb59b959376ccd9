//! Config reload: parse → validate → build a whole new [`Snapshot`] → one
//! atomic swap. A failing config changes nothing. Requests for a reload
//! (SIGHUP, `POST /reload`, `portcullis reload`) go through one task, and a
//! burst that arrives while a reload runs is answered by the next single
//! reload instead of being queued one by one.
//!
//! Container label routes (`discovery::docker`) take the same way: a new
//! container list is applied to the last good file config
//! (`config::labels::apply`) and swapped in like a reload; a file reload
//! keeps the last container list.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::acme::AcmePlan;
use crate::config::labels::{Container, Discovery};
use crate::config::{self, Config, ConfigError};
use crate::discovery::files::WatchSet;
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
        /// What the file watcher should watch from now on.
        #[serde(skip)]
        watch: WatchSet,
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

/// One reload request: who waits for the outcome, and whether a
/// rejection should be reported (the file watcher's first try is quiet).
struct Request {
    waiter: Option<oneshot::Sender<ReloadOutcome>>,
    quiet: bool,
}

/// A cheap handle to ask for reloads.
#[derive(Clone)]
pub struct ReloadHandle {
    tx: mpsc::UnboundedSender<Request>,
}

impl ReloadHandle {
    /// Requests a reload and waits for its outcome.
    pub async fn reload(&self) -> Option<ReloadOutcome> {
        self.reload_with(false).await
    }

    /// A reload whose rejection is not logged or counted when `quiet`.
    pub async fn reload_with(&self, quiet: bool) -> Option<ReloadOutcome> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request {
                waiter: Some(tx),
                quiet,
            })
            .ok()?;
        rx.await.ok()
    }

    /// Requests a reload without waiting (SIGHUP).
    pub fn trigger(&self) {
        let _ = self.tx.send(Request {
            waiter: None,
            quiet: false,
        });
    }
}

/// The latest container list from Docker discovery (`None` before the
/// first list, and without `[docker]`).
pub type Containers = watch::Receiver<Option<Arc<Vec<Container>>>>;

/// Starts the reload task; it ends when every handle is dropped. `files`
/// is the running config as read from its files (before label routes).
pub fn spawn(
    shared: Arc<Shared>,
    acme_plans: watch::Sender<Option<Arc<AcmePlan>>>,
    files: Config,
    containers: Option<Containers>,
) -> ReloadHandle {
    let (tx, mut rx) = mpsc::unbounded_channel::<Request>();
    tokio::spawn(async move {
        let mut state = State {
            files,
            containers: Arc::new(Vec::new()),
        };
        let mut docker = containers;
        loop {
            let changed = async {
                match docker.as_mut() {
                    Some(d) => d.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                first = rx.recv() => {
                    let Some(first) = first else { return };
                    let mut requests = vec![first];
                    while let Ok(r) = rx.try_recv() {
                        requests.push(r);
                    }
                    let quiet = requests.iter().all(|r| r.quiet);
                    let outcome = reload_once(&shared, &acme_plans, &mut state, Some(quiet)).await;
                    for r in requests {
                        if let Some(w) = r.waiter {
                            let _ = w.send(outcome.clone());
                        }
                    }
                }
                alive = changed => {
                    if !alive {
                        docker = None;
                        continue;
                    }
                    let list = docker.as_mut().and_then(|d| d.borrow_and_update().clone());
                    if let Some(list) = list {
                        state.containers = list;
                        reload_once(&shared, &acme_plans, &mut state, None).await;
                    }
                }
            }
        }
    });
    ReloadHandle { tx }
}

/// What the reload task keeps between reloads.
struct State {
    /// The last good config as read from its files.
    files: Config,
    /// The last container list.
    containers: Arc<Vec<Container>>,
}

impl State {
    fn watch_set(&self) -> WatchSet {
        WatchSet {
            files: self.files.watched_files(),
            patterns: self.files.include_patterns.clone(),
        }
    }
}

/// Installs `config`'s certificates in the store (configured ones, and the
/// stored ACME ones of its hosts) before its routes go live; returns its
/// ACME plan, for the ACME task once they are live. Start-up uses it too.
pub fn install_certificates(config: &Config, certs: &CertStore) -> Option<Arc<AcmePlan>> {
    certs.set_configured(&config.certificates);
    crate::acme::prepare(config, certs)
}

/// Loads the config files (`files`: `Some(quiet)`; `None` keeps the last
/// good ones and applies a new container list), and if they are valid:
/// label routes, identity providers, certificates, the new snapshot (built
/// off the runtime), publish, then ACME for the new hosts.
async fn reload_once(
    shared: &Arc<Shared>,
    acme_plans: &watch::Sender<Option<Arc<AcmePlan>>>,
    state: &mut State,
    files: Option<bool>,
) -> ReloadOutcome {
    let path = shared.config_path.clone();
    let loaded = match files {
        Some(_) => tokio::task::spawn_blocking(move || config::load(&path)).await,
        None => Ok(Ok(state.files.clone())),
    };
    let quiet = files == Some(true);
    let config = match loaded {
        Ok(Ok(c)) => c,
        Ok(Err(errs)) if quiet => {
            tracing::debug!("reload after a file change rejected; trying again:\n{errs}");
            return ReloadOutcome::Rejected {
                errors: errs.0.iter().map(ReportedError::from).collect(),
            };
        }
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
    let files_changed = files.is_some();
    let file_config = config.clone();
    let mut config = config;
    let mut warnings = Vec::new();
    if files_changed {
        warnings = restart_only_changes(&old.server, &config.server);
        if state.files.docker.as_ref().map(|d| &d.endpoint)
            != config.docker.as_ref().map(|d| &d.endpoint)
        {
            warnings.push("[docker] endpoint changed; it takes effect after a restart".into());
        }
        if state.files.server.watch != config.server.watch {
            warnings.push("server.watch changed; it takes effect after a restart".into());
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
    }
    crate::config::labels::apply(&mut config, &state.containers);
    report_discovery(&old.discovery, &config.discovery);
    shared.metrics.docker_label_errors.store(
        config.discovery.errors.len() as i64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let summary = format!(
        "{} route{}; listeners in effect: {}",
        config.routes.len(),
        if config.routes.len() == 1 { "" } else { "s" },
        shared.listening.get().map_or("not started", String::as_str)
    );
    if !files_changed {
        // Only containers changed: the identity providers are the same.
        let auth = old.auth.clone();
        let plan = install_certificates(&config, &shared.certs);
        return finish(
            shared, acme_plans, config, old, auth, plan, warnings, state, &summary,
        )
        .await;
    }
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
    state.files = file_config;
    finish(
        shared, acme_plans, config, old, auth, plan, warnings, state, &summary,
    )
    .await
}

/// Builds the snapshot off the runtime, publishes it, hands ACME its plan.
#[allow(clippy::too_many_arguments)]
async fn finish(
    shared: &Arc<Shared>,
    acme_plans: &watch::Sender<Option<Arc<AcmePlan>>>,
    config: Config,
    old: Arc<crate::snapshot::Snapshot>,
    auth: Arc<crate::auth::AuthSnapshot>,
    plan: Option<Arc<AcmePlan>>,
    warnings: Vec<String>,
    state: &State,
    summary: &str,
) -> ReloadOutcome {
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
        watch: state.watch_set(),
    }
}

/// Logs label problems and hidden label routes once, when they appear.
fn report_discovery(old: &Discovery, new: &Discovery) {
    for e in new.errors.iter().filter(|e| !old.errors.contains(e)) {
        tracing::error!(container = %e.container, label = %e.label, "bad container label, the container is not routed: {e}");
    }
    for s in new.shadowed.iter().filter(|s| !old.shadowed.contains(s)) {
        tracing::warn!(
            host = %s.host, path = %s.path, label_route = %s.source, file_route = %s.by,
            "a route in the config file takes precedence over a container's label route"
        );
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
