//! Portcullis: the HTTPS front door of a self-hosted stack.
//!
//! [`Gateway`] (or [`run`]) starts the whole gateway on listeners the caller
//! has bound, so tests run the real thing on `127.0.0.1:0`. `main.rs` only
//! parses the command line and wires signals.
//!
//! Modules sit on floors and import only from floors below them; the map,
//! the request and reload paths and where changes go are in
//! `docs/ARCHITECTURE.md`.
#![forbid(unsafe_code)]

pub(crate) mod acme;
pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub(crate) mod discovery;
pub mod fsutil;
pub(crate) mod h1;
pub mod http;
pub(crate) mod pki;
pub mod policy;
#[doc(hidden)]
pub mod probe;
pub mod proxy;
pub(crate) mod reload;
pub mod routing;
pub mod snapshot;
pub mod telemetry;
pub(crate) mod tls;
pub(crate) mod trust;
pub(crate) mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use tokio::net::TcpListener;

pub use config::Config;
pub use reload::{ReloadHandle, ReloadOutcome};

use proxy::server::{self, Drain};
use snapshot::Shared;

/// Installs ring as the process's one rustls crypto provider. Safe to call
/// more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The sockets the gateway serves on, bound before it starts (so a caller
/// can bind port 0 and learn the address, or inherit sockets).
#[derive(Debug, Default)]
pub struct Listeners {
    pub http: Option<std::net::TcpListener>,
    pub https: Option<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
}

impl Listeners {
    /// `http ADDR, https ADDR, admin ADDR`: what is bound (the real ports).
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("http", &self.http),
            ("https", &self.https),
            ("admin", &self.admin),
        ]
        .into_iter()
        .filter_map(|(name, l)| Some(format!("{name} {}", l.as_ref()?.local_addr().ok()?)))
        .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }

    /// Binds every listener the config names.
    pub fn bind(config: &Config) -> anyhow::Result<Self> {
        let bind = |addr: Option<SocketAddr>, what: &str| -> anyhow::Result<_> {
            addr.map(|a| {
                let l = std::net::TcpListener::bind(a)
                    .with_context(|| format!("cannot listen on {a} ({what})"))?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .transpose()
        };
        Ok(Listeners {
            http: bind(config.server.http, "server.http")?,
            https: bind(config.server.https, "server.https")?,
            admin: bind(config.server.admin, "server.admin")?,
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|l| l.local_addr().ok())
    }
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// A gateway ready to serve.
pub struct Gateway {
    shared: Arc<Shared>,
    listeners: Listeners,
    reload: ReloadHandle,
}

impl Gateway {
    /// Builds the first snapshot from `config`. Must be called inside a
    /// tokio runtime (it starts the reload task).
    pub fn new(config: Config, listeners: Listeners) -> anyhow::Result<Self> {
        install_crypto_provider();
        // Session store and identity providers (discovered in the
        // background, so a provider that is down does not stop the start).
        let auth = auth::AuthShared::new();
        let auth_snapshot = auth
            .prepare(&config)
            .map_err(|e| anyhow::anyhow!("single sign-on: {e}"))?;
        // The same steps as a reload (see `reload`): certificates, then
        // the snapshot, then ACME is asked for what is missing.
        let certs = Arc::new(tls::CertStore::new());
        let plan = reload::install_certificates(&config, &certs);
        let metrics = Arc::new(telemetry::metrics::Metrics::new());
        let config_path = config.source.clone();
        // Label routes come with Docker's first container list, a moment
        // after start, through the reload task.
        let files_config = config.clone();
        let mut config = config;
        config::labels::apply(&mut config, &[]);
        let docker_status = config
            .docker
            .as_ref()
            .map(|_| Arc::new(discovery::docker::Status::default()));
        let first = snapshot::assemble(config, None, &metrics, auth_snapshot.clone());
        let mut shared = Shared::new(first, config_path, certs, metrics, auth.clone());
        if let Some(s) = &docker_status {
            Arc::get_mut(&mut shared).expect("not shared yet").docker = Some(s.clone());
        }
        let containers = match (&files_config.docker, &docker_status) {
            (Some(d), Some(status)) => Some(discovery::docker::spawn(
                d,
                shared.metrics.clone(),
                status.clone(),
            )),
            _ => None,
        };
        auth::spawn_background(&auth, &auth_snapshot);
        let acme_plans = tokio::sync::watch::channel(plan).0;
        let acme_cluster = auth
            .cluster()
            .cloned()
            .zip(files_config.cluster.as_ref().map(|c| c.lock_lease));
        acme::spawn(
            shared.certs.clone(),
            shared.metrics.clone(),
            acme_plans.subscribe(),
            acme_cluster,
        );
        let watch = files_config
            .server
            .watch
            .then(|| discovery::files::WatchSet {
                files: files_config.watched_files(),
                patterns: files_config.include_patterns.clone(),
            });
        let reload = reload::spawn(shared.clone(), acme_plans, files_config, containers);
        if let Some(set) = watch {
            let handle = reload.clone();
            discovery::files::spawn(
                set,
                Box::new(move |quiet| {
                    let handle = handle.clone();
                    Box::pin(async move {
                        match handle.reload_with(quiet).await? {
                            ReloadOutcome::Reloaded { watch, .. } => Some((true, watch)),
                            ReloadOutcome::Rejected { .. } => Some((false, Default::default())),
                        }
                    })
                }),
            )
            .context("watching the config files")?;
        }
        Ok(Gateway {
            shared,
            listeners,
            reload,
        })
    }

    /// A handle to trigger reloads (SIGHUP wiring, tests).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets
    /// in-flight requests finish within the grace period, and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.serve_with_workers(shutdown, 0).await
    }

    /// [`serve`](Self::serve), with `extra` more threads accepting and
    /// serving proxy connections, each with a single-threaded runtime of
    /// its own (as nginx runs worker processes): a connection stays on the
    /// thread that accepted it, with that thread's upstream pool, and no
    /// task is ever handed between threads. Everything else (admin API,
    /// reloads, certificates, health checks) runs on the calling runtime,
    /// which serves connections too.
    pub async fn serve_with_workers(
        self,
        shutdown: impl Future<Output = ()>,
        extra: usize,
    ) -> anyhow::Result<()> {
        let Gateway {
            shared,
            listeners,
            reload,
        } = self;
        let snap = shared.current();
        let drain = Drain::new();
        let builder = Arc::new(server::http_builder(&snap.server));
        let slots = Arc::new(tokio::sync::Semaphore::new(snap.server.max_connections));
        let mut tls_ctx = None;
        let clones = |l: &Option<std::net::TcpListener>| -> std::io::Result<Vec<_>> {
            match l {
                Some(l) => (0..extra).map(|_| l.try_clone().map(Some)).collect(),
                None => Ok((0..extra).map(|_| None).collect()),
            }
        };
        let (http_clones, https_clones) = (clones(&listeners.http)?, clones(&listeners.https)?);
        let _ = shared.listening.set(listeners.describe());

        if let Some(l) = listeners.http {
            let l = TcpListener::from_std(l)?;
            tracing::info!(address = %l.local_addr()?, "listening (http)");
            tokio::spawn(server::accept_loop(
                l,
                http::Scheme::Http,
                shared.clone(),
                builder.clone(),
                slots.clone(),
                drain.watcher(),
            ));
        }
        if let Some(l) = listeners.https {
            let l = TcpListener::from_std(l)?;
            let addr = l.local_addr()?;
            shared.https_port.store(addr.port(), Ordering::Release);
            let ctx = Arc::new(tls::TlsContext {
                store: shared.certs.clone(),
                config: tls::server_config(shared.certs.clone())?,
                handshake_timeout: snap.server.tls_handshake_timeout,
            });
            tls_ctx = Some(ctx.clone());
            tracing::info!(address = %addr, "listening (https)");
            tokio::spawn(server::accept_tls_loop(
                l,
                ctx,
                shared.clone(),
                builder.clone(),
                slots.clone(),
                drain.watcher(),
            ));
        }
        if let Some(l) = listeners.admin {
            let l = TcpListener::from_std(l)?;
            tracing::info!(address = %l.local_addr()?, "listening (admin)");
            tokio::spawn(admin::serve(
                l,
                shared.clone(),
                reload.clone(),
                drain.watcher(),
            ));
        }
        // Each worker's runtime is built and its listeners registered here,
        // so a worker that cannot start fails the start instead of leaving
        // the gateway quietly short of a thread. Dropping `stops` (when
        // this returns) lets the worker threads end.
        let mut stops = Vec::with_capacity(extra);
        for (i, (http, https)) in http_clones.into_iter().zip(https_clones).enumerate() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a worker runtime")?;
            let (http, https) = {
                let _in_rt = rt.enter();
                (
                    http.map(TcpListener::from_std).transpose()?,
                    https.map(TcpListener::from_std).transpose()?,
                )
            };
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            let worker = Worker {
                rt,
                http,
                https: https.zip(tls_ctx.clone()),
                shared: shared.clone(),
                builder: builder.clone(),
                slots: slots.clone(),
                drain: drain.watcher(),
                stopped,
            };
            std::thread::Builder::new()
                .name(format!("portcullis-worker-{}", i + 1))
                .spawn(move || worker.run())
                .context("starting a worker thread")?;
        }
        snapshot::spawn_health_checks(&shared, &snap);
        shared.ready.store(true, Ordering::Release);
        tracing::info!(
            routes = snap.table.len(),
            version = env!("CARGO_PKG_VERSION"),
            "portcullis started"
        );
        drop(snap);

        shutdown.await;
        shared.ready.store(false, Ordering::Release);
        let grace = shared.current().server.grace_period;
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutting down: draining connections"
        );
        let left = drain.drain(grace).await;
        if left > 0 {
            tracing::warn!(connections = left, "grace period over; closing the rest");
        } else {
            tracing::info!("all connections finished");
        }
        Ok(())
    }
}

/// One extra serving thread: its own single-threaded runtime accepting
/// from clones of the proxy listeners (registered with that runtime).
struct Worker {
    rt: tokio::runtime::Runtime,
    http: Option<TcpListener>,
    https: Option<(TcpListener, Arc<tls::TlsContext>)>,
    shared: Arc<Shared>,
    builder: Arc<server::HttpBuilder>,
    slots: Arc<tokio::sync::Semaphore>,
    drain: tokio::sync::watch::Receiver<server::DrainState>,
    /// Resolves (closed) when `serve_with_workers` returns.
    stopped: tokio::sync::oneshot::Receiver<()>,
}

impl Worker {
    /// Accepts until shutdown, then keeps serving the connections it has
    /// (the drain the main runtime waits on counts them too) until the
    /// gateway has stopped.
    fn run(self) {
        let Worker {
            rt,
            http,
            https,
            shared,
            builder,
            slots,
            drain,
            stopped,
        } = self;
        rt.block_on(async move {
            if let Some(l) = http {
                tokio::spawn(server::accept_loop(
                    l,
                    http::Scheme::Http,
                    shared.clone(),
                    builder.clone(),
                    slots.clone(),
                    drain.clone(),
                ));
            }
            if let Some((l, ctx)) = https {
                tokio::spawn(server::accept_tls_loop(
                    l,
                    ctx,
                    shared,
                    builder,
                    slots,
                    drain.clone(),
                ));
            }
            // Not held past here: the drain counts live receivers.
            drop(drain);
            let _ = stopped.await;
        });
    }
}

/// Runs the gateway until `shutdown` completes.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Gateway::new(config, listeners)?.serve(shutdown).await
}
