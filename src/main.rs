//! The `portcullis` command: parses the command line, sets up logging and
//! the runtime, and wires signals. All logic lives in the library.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use portcullis::admin::{self, client::ReloadReply};
use portcullis::telemetry::{LogFormat, init_logging};
use portcullis::{Gateway, Listeners, config};

/// `--config FILE` (or `PORTCULLIS_CONFIG`), for every command that reads it.
#[derive(clap::Args)]
struct ConfigFile {
    /// The config file (TOML).
    #[arg(
        short,
        long,
        env = "PORTCULLIS_CONFIG",
        default_value = "/etc/portcullis/portcullis.toml"
    )]
    config: PathBuf,
}

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "The HTTPS front door of a self-hosted stack: TLS, single sign-on and routing in one binary."
)]
struct Cli {
    /// Log format: json (default when not on a terminal), pretty, or auto.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. SIGHUP reloads the config; SIGTERM/SIGINT stop it
    /// gracefully (in-flight requests finish within `server.grace_period`).
    Run {
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Validate a config file: prints every error with file, line and key
    /// and exits 1, or prints a one-line summary and exits 0.
    Check {
        #[command(flatten)]
        file: ConfigFile,
        /// Check syntax and semantics without reading the secret and
        /// certificate files the config names (on a machine without them).
        #[arg(long)]
        no_files: bool,
    },
    /// Write a commented starter config for a domain: https with Let's
    /// Encrypt, the admin listener on loopback, one route (behind Authentik
    /// with `--authentik`). Refuses to overwrite a file unless `--force`.
    Init {
        /// The domain the first route serves (e.g. example.com).
        #[arg(long)]
        domain: String,
        /// Contact address for Let's Encrypt (expiry and policy mail).
        #[arg(long)]
        email: String,
        /// Authentik's OpenID issuer URL for the portcullis provider, e.g.
        /// https://auth.example.com/application/o/portcullis/
        #[arg(long)]
        authentik: Option<String>,
        /// Where to write the config.
        #[arg(short, long, default_value = "portcullis.toml")]
        output: PathBuf,
        /// Overwrite the file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Ask a running gateway to reload its config, through its admin
    /// listener (address and token taken from the config file), and print
    /// the outcome. Exits 1 if the gateway rejected the new config.
    Reload {
        #[command(flatten)]
        file: ConfigFile,
        /// Admin address to use instead of `server.admin` from the config.
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// Probe a running gateway (`GET /healthz`, or `/readyz` with
    /// `--ready`) on the admin listener named by the config's
    /// `server.admin`: exits 0 when it answers 200, 1 otherwise. With
    /// `admin = "off"` it checks that the gateway's http (or https)
    /// listener accepts connections. Only `[server]`'s listener keys are
    /// read, so a config being edited elsewhere cannot fail it; this is the
    /// container image's HEALTHCHECK (no curl in the image).
    Health {
        #[command(flatten)]
        file: ConfigFile,
        /// Probe this admin address instead of the config's `server.admin`.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Check readiness (`/readyz`: config loaded, listeners up, not
        /// draining) instead of liveness (`/healthz`).
        #[arg(long)]
        ready: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file, no_files } => check(&file.config, no_files),
        Command::Init {
            domain,
            email,
            authentik,
            output,
            force,
        } => match init(&domain, &email, authentik.as_deref(), &output, force) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis init: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { file } => {
            let logs = init_logging(cli.log_format);
            let code = match run(&file.config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("portcullis: {e:#}");
                    ExitCode::FAILURE
                }
            };
            logs.flush();
            code
        }
        Command::Reload { file, admin } => match reload(&file.config, admin) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("portcullis reload: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Health {
            file,
            admin,
            ready,
            timeout,
        } => {
            let timeout = Duration::from_secs(timeout.max(1));
            let target = match admin {
                Some(addr) => admin::client::HealthTarget::Admin(addr),
                None => admin::client::HealthTarget::from_config(&file.config),
            };
            match admin::client::probe(&target, ready, timeout) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis health: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(path: &Path, no_files: bool) -> ExitCode {
    let loaded = if no_files {
        config::load_without_files(path)
    } else {
        config::load(path)
    };
    match loaded {
        Ok(c) => {
            println!("{}", c.summary());
            if no_files {
                println!("(secret and certificate files were not read: --no-files)");
            }
            ExitCode::SUCCESS
        }
        Err(errs) => {
            eprint!("{errs}");
            ExitCode::FAILURE
        }
    }
}

fn init(
    domain: &str,
    email: &str,
    authentik: Option<&str>,
    output: &Path,
    force: bool,
) -> anyhow::Result<()> {
    let text = portcullis::config::starter(domain, email, authentik)?;
    if output.exists() && !force {
        anyhow::bail!("{} exists; pass --force to overwrite it", output.display());
    }
    std::fs::write(output, text).with_context(|| format!("writing {}", output.display()))?;
    println!("wrote {}", output.display());
    if authentik.is_some() {
        let dir = output.parent().unwrap_or(Path::new("."));
        println!(
            "next: put the client secret of Authentik's \"portcullis\" provider in {} (mode 0600)",
            dir.join("secrets/oidc_client_secret").display()
        );
    }
    println!("then: portcullis check --config {}", output.display());
    Ok(())
}

fn run(path: &Path) -> anyhow::Result<()> {
    portcullis::install_crypto_provider();
    let config = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    // One single-threaded runtime per worker thread, nginx-style: no
    // work-stealing scheduler bookkeeping on every wake-up, no task handed
    // between threads, an upstream pool per thread. This thread's runtime
    // also runs the admin API, reloads, ACME and health checks.
    let workers = match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let listeners = Listeners::bind(&config)?;
        let gateway = Gateway::new(config, listeners)?;
        let reload = gateway.reload_handle();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading config");
                reload.trigger();
            }
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        };
        gateway.serve_with_workers(shutdown, workers - 1).await
    })
}

fn reload(path: &Path, admin: Option<SocketAddr>) -> anyhow::Result<ExitCode> {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(errs) => {
            eprint!("{errs}");
            eprintln!(
                "not reloading: the gateway would reject this config and keep its current one"
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let addr = admin
        .or(config.server.admin)
        .context("no admin listener: set server.admin or pass --admin")?;
    match admin::client::reload(addr, config.server.admin_token.as_ref())? {
        ReloadReply::Reloaded {
            generation,
            routes,
            warnings,
        } => {
            println!("reloaded: generation {generation}, {routes} routes");
            for w in warnings {
                println!("warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ReloadReply::Rejected(errors) => {
            eprintln!("reload rejected; the gateway keeps its current config:");
            for e in errors {
                eprintln!("  {e}");
            }
            Ok(ExitCode::FAILURE)
        }
        ReloadReply::Failed(status, v) => {
            eprintln!("reload failed: HTTP {status}: {v}");
            Ok(ExitCode::FAILURE)
        }
    }
}
