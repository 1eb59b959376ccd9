//! The Docker engine's running containers, kept current from its events
//! stream (bollard client). Publishes the container list (names, labels,
//! addresses, ports, health) on a watch channel whenever it changes; the
//! reload task turns labels into routes (`config::labels`).
//!
//! Events are debounced: after the first one we wait for a quiet
//! [`QUIET`] (at most [`MAX_WAIT`]) and list once, so a `compose up` of
//! 20 containers is one list and one swap. If the engine cannot be
//! reached the last list stays published (its routes keep serving), the
//! status says why, and we reconnect with backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::config::DockerConfig;
use crate::config::labels::Container;
use crate::telemetry::metrics::Metrics;

/// Quiet time after an event before the containers are listed.
pub const QUIET: Duration = Duration::from_millis(300);
/// Longest wait from the first event of a burst to the list.
pub const MAX_WAIT: Duration = Duration::from_millis(1200);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// Time allowed for one API call (not the events stream).
const CALL_TIMEOUT_SECS: u64 = 10;

/// Whether the engine answers, for `/readyz` and `GET /routes`.
#[derive(Debug, Default)]
pub struct Status {
    up: AtomicBool,
    message: Mutex<String>,
}

impl Status {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
    /// A line for people: connected, or why not.
    pub fn message(&self) -> String {
        self.message.lock().map(|m| m.clone()).unwrap_or_default()
    }
    fn set(&self, metrics: &Metrics, up: bool, message: String) {
        self.up.store(up, Ordering::Release);
        metrics
            .docker_up
            .store(up as i64, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut m) = self.message.lock() {
            *m = message;
        }
    }
}

/// Starts watching the engine of `config`; the receiver holds the latest
/// container list (`None` until the first list succeeds).
pub fn spawn(
    config: &DockerConfig,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
) -> watch::Receiver<Option<Arc<Vec<Container>>>> {
    let (tx, rx) = watch::channel(None);
    metrics.docker_configured.store(true, Ordering::Relaxed);
    status.set(&metrics, false, "connecting".into());
    let config = config.clone();
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            let reason = match connect(&config).await {
                Ok(docker) => match session(&docker, &tx, &status, &metrics, &mut backoff).await {
                    Err(e) => e,
                    Ok(()) => return, // every receiver is gone
                },
                Err(e) => e,
            };
            let kept = tx.borrow().as_ref().map_or(0, |list| {
                list.iter().filter(|c| !c.labels.is_empty()).count()
            });
            let was_up = status.is_up();
            status.set(
                &metrics,
                false,
                format!(
                    "unreachable at {}: {reason}; keeping the last known routes of {kept} containers",
                    config.endpoint
                ),
            );
            if was_up {
                tracing::warn!(endpoint = %config.endpoint, error = %reason, kept, "Docker engine unreachable; container routes kept, reconnecting");
            } else {
                tracing::debug!(endpoint = %config.endpoint, error = %reason, "Docker engine still unreachable");
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    });
    rx
}

async fn connect(config: &DockerConfig) -> Result<Docker, String> {
    let e = &config.endpoint;
    let v = bollard::API_DEFAULT_VERSION;
    let docker = if let Some(path) = e.strip_prefix("unix://") {
        Docker::connect_with_unix(path, CALL_TIMEOUT_SECS, v)
    } else if e.starts_with("https://") {
        match (&config.ca_file, &config.cert_file, &config.key_file) {
            (Some(ca), Some(cert), Some(key)) => {
                Docker::connect_with_ssl(e, key, cert, ca, CALL_TIMEOUT_SECS, v)
            }
            _ => {
                return Err(
                    "an https:// endpoint needs ca_file, cert_file and key_file in [docker]".into(),
                );
            }
        }
    } else {
        Docker::connect_with_http(e, CALL_TIMEOUT_SECS, v)
    }
    .map_err(|e| e.to_string())?;
    // Speak the engine's API version (older engines refuse newer clients).
    docker.negotiate_version().await.map_err(|e| e.to_string())
}

/// Lists, then follows events until the stream fails (Err) or nobody
/// listens any more (Ok).
async fn session(
    docker: &Docker,
    tx: &watch::Sender<Option<Arc<Vec<Container>>>>,
    status: &Status,
    metrics: &Metrics,
    backoff: &mut Duration,
) -> Result<(), String> {
    // Events from a second before the list: nothing between the list and
    // the subscription is missed (a replayed one only lists again).
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().saturating_sub(1));
    let filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
    let mut events = docker.events(Some(EventsOptions {
        since: Some(since.to_string()),
        until: None,
        filters: Some(filters),
    }));
    publish(tx, list(docker).await?);
    let was_down = !status.is_up();
    status.set(metrics, true, "connected".into());
    if was_down {
        tracing::info!("Docker engine connected; container routes in sync");
    }
    *backoff = BACKOFF_MIN;
    loop {
        if tx.is_closed() {
            return Ok(());
        }
        match events.next().await {
            None => return Err("the events stream ended".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(ev)) if !relevant(ev.action.as_deref()) => continue,
            Some(Ok(_)) => {}
        }
        // Debounce: wait for a quiet moment, bounded.
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            let quiet = tokio::time::Instant::now() + QUIET;
            match tokio::time::timeout_at(quiet.min(deadline), events.next()).await {
                Err(_) => break, // quiet, or waited long enough
                Ok(None) => return Err("the events stream ended".into()),
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(Some(Ok(_))) => {
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        publish(tx, list(docker).await?);
    }
}

/// Container events that can change routes.
fn relevant(action: Option<&str>) -> bool {
    let a = action.unwrap_or("");
    [
        "start", "die", "stop", "kill", "destroy", "rename", "pause", "unpause",
    ]
    .contains(&a)
        || a.starts_with("health_status")
}

fn publish(tx: &watch::Sender<Option<Arc<Vec<Container>>>>, list: Vec<Container>) {
    tx.send_if_modified(|cur| {
        if cur.as_deref() == Some(&list) {
            return false;
        }
        *cur = Some(Arc::new(list));
        true
    });
}

/// The running containers, sorted by name.
async fn list(docker: &Docker) -> Result<Vec<Container>, String> {
    let summaries = docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            ..Default::default()
        }))
        .await
        .map_err(|e| e.to_string())?;
    let mut out: Vec<Container> = summaries
        .into_iter()
        .map(|s| {
            let name = s
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .or_else(|| s.id.clone().map(|id| id.chars().take(12).collect()))
                .unwrap_or_default();
            let status = s.status.clone().unwrap_or_default();
            let healthy = !status.contains("(unhealthy)") && !status.contains("(health: starting)");
            let mut ports: Vec<u16> = s
                .ports
                .unwrap_or_default()
                .iter()
                .filter(|p| {
                    p.typ
                        .as_ref()
                        .is_none_or(|t| t.to_string().eq_ignore_ascii_case("tcp"))
                })
                .map(|p| p.private_port)
                .collect();
            ports.sort_unstable();
            ports.dedup();
            let networks: BTreeMap<String, String> = s
                .network_settings
                .and_then(|n| n.networks)
                .unwrap_or_default()
                .into_iter()
                .map(|(name, ep)| (name, ep.ip_address.unwrap_or_default()))
                .collect();
            let host_network = s
                .host_config
                .and_then(|h| h.network_mode)
                .is_some_and(|m| m == "host");
            Container {
                name,
                labels: s.labels.unwrap_or_default().into_iter().collect(),
                networks,
                host_network,
                ports,
                healthy,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
