//! The gateway under test: in-process through the library ([`Gateway`]), or
//! the built `portcullis` binary as a child process for signal tests
//! ([`GatewayProcess`]).
//!
//! # Config text
//!
//! Tests pass TOML; the harness writes it to `portcullis.toml` in a fresh
//! temp dir after these substitutions, so tests never pick ports:
//!
//! - No `[server]` table in the text: the harness puts this one first
//!   (listeners on port 0, state in the temp dir):
//!   ```toml
//!   [server]
//!   http = "127.0.0.1:0"
//!   admin = "127.0.0.1:0"
//!   state_dir = "<DIR>/state"
//!   ```
//! - With a `[server]` table, write the listeners as `http = "{{HTTP}}"`,
//!   `https = "{{HTTPS}}"`, `admin = "{{ADMIN}}"`: each becomes
//!   `127.0.0.1:0`.
//! - `{{DIR}}` becomes the temp dir's absolute path (for `*_file` keys;
//!   relative paths in the config resolve against that dir too). Put files
//!   there with [`GatewayBuilder::file`] before the gateway starts.
//!
//! The same substitution applies to [`Gateway::rewrite_config`], so a
//! reloaded config keeps the listeners it started with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::client::{TestBody, TestClient};

/// How long a graceful shutdown may take before the harness gives up.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(60);
/// How long the binary may take to start listening.
const PROCESS_START_BOUND: Duration = Duration::from_secs(30);

/// Files and config for a gateway, before it starts.
pub struct GatewayBuilder {
    toml: String,
    files: Vec<(String, Vec<u8>)>,
}

impl GatewayBuilder {
    /// Writes `contents` to `name` (relative to the temp dir) before start.
    pub fn file(mut self, name: &str, contents: impl AsRef<[u8]>) -> Self {
        self.files
            .push((name.to_string(), contents.as_ref().to_vec()));
        self
    }

    fn prepare(&self) -> (TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-test-")
            .tempdir()
            .expect("create temp dir");
        for (name, contents) in &self.files {
            let p = dir.path().join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("create dir for test file");
            }
            std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        }
        let config_path = dir.path().join("portcullis.toml");
        write_atomic(&config_path, &expand(&self.toml, dir.path()));
        (dir, config_path)
    }

    /// Starts the gateway in-process; panics if the config is invalid or a
    /// listener cannot be bound.
    pub async fn start(self) -> Gateway {
        match self.try_start().await {
            Ok(g) => g,
            Err(e) => panic!("gateway did not start: {e}"),
        }
    }

    /// Starts the gateway in-process, returning config errors as text.
    pub async fn try_start(self) -> Result<Gateway, String> {
        let (dir, config_path) = self.prepare();
        let config = portcullis::config::load(&config_path).map_err(|e| {
            format!(
                "{e}\n--- config ---\n{}",
                std::fs::read_to_string(&config_path).unwrap_or_default()
            )
        })?;
        let admin_token = config
            .server
            .admin_token
            .as_ref()
            .map(|t| t.expose().to_string());
        let listeners = portcullis::Listeners::bind(&config).map_err(|e| format!("{e:#}"))?;
        let http = listeners.http_addr();
        let https = listeners.https_addr();
        let admin = listeners.admin_addr();
        let gateway = portcullis::Gateway::new(config, listeners).map_err(|e| format!("{e:#}"))?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(async move {
            let _ = rx.await;
        }));
        Ok(Gateway {
            dir,
            config_path,
            http,
            https,
            admin,
            admin_token,
            shutdown: Some(tx),
            task: Some(task),
            client: http.map(TestClient::to),
        })
    }

    /// Starts the built binary (`portcullis run`) as a child process and
    /// waits until it listens. Panics if it does not start.
    pub async fn spawn_binary(self) -> GatewayProcess {
        let (dir, config_path) = self.prepare();
        let config = portcullis::config::load(&config_path)
            .unwrap_or_else(|e| panic!("invalid test config: {e}"));
        let admin_token = config
            .server
            .admin_token
            .as_ref()
            .map(|t| t.expose().to_string());
        let want_http = config.server.http.is_some();
        let want_admin = config.server.admin.is_some();

        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env_remove("PORTCULLIS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the portcullis binary");
        let logs = Arc::new(Mutex::new(Vec::<String>::new()));
        let addrs = Arc::new(Mutex::new(ProcessAddrs::default()));
        {
            let stdout = child.stdout.take().unwrap();
            let (logs, addrs) = (logs.clone(), addrs.clone());
            std::thread::spawn(move || read_log_lines(stdout, logs, Some(addrs)));
        }
        {
            let stderr = child.stderr.take().unwrap();
            let logs = logs.clone();
            std::thread::spawn(move || read_log_lines(stderr, logs, None));
        }

        let mut proc = GatewayProcess {
            dir,
            config_path,
            child,
            http: None,
            admin: None,
            admin_token,
            logs,
            exited: None,
        };
        let deadline = tokio::time::Instant::now() + PROCESS_START_BOUND;
        loop {
            let a = addrs.lock().unwrap().clone();
            if a.started && (!want_http || a.http.is_some()) && (!want_admin || a.admin.is_some()) {
                proc.http = a.http;
                proc.admin = a.admin;
                return proc;
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!(
                    "portcullis exited during start ({status}); output:\n{}",
                    proc.logs()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "portcullis did not report its listeners within {PROCESS_START_BOUND:?}; output:\n{}",
                    proc.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The gateway running in-process on `127.0.0.1:0`.
pub struct Gateway {
    dir: TempDir,
    config_path: PathBuf,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    admin_token: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    client: Option<TestClient>,
}

impl Gateway {
    /// Starts a gateway with `toml` (see the module docs for placeholders).
    pub async fn start(toml: &str) -> Gateway {
        Gateway::builder(toml).start().await
    }

    /// A builder, to add files (tokens, secrets) before start.
    pub fn builder(toml: &str) -> GatewayBuilder {
        GatewayBuilder {
            toml: toml.to_string(),
            files: Vec::new(),
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.expect("this gateway has no http listener")
    }

    pub fn https_addr(&self) -> SocketAddr {
        self.https.expect("this gateway has no https listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("this gateway has no admin listener")
    }

    /// `http://127.0.0.1:PORT{path}` on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr())
    }

    /// `http://127.0.0.1:PORT{path}` on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// A pooled HTTP/1.1 client pinned to the public listener: a URL naming
    /// a host goes there (`gw.client().get("http://app.test/x")`), a URL
    /// naming an IP address (`gw.url(..)`, `gw.admin_url(..)`) goes to it.
    pub fn client(&self) -> &TestClient {
        self.client
            .as_ref()
            .expect("this gateway has no http listener")
    }

    /// The temp dir holding the config and test files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The admin token the gateway started with, if any.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// Atomically replaces the config file (same substitutions as start).
    /// Does not reload.
    pub fn rewrite_config(&self, toml: &str) {
        write_atomic(&self.config_path, &expand(toml, self.dir.path()));
    }

    /// Writes `contents` to `name` in the temp dir (atomically).
    pub fn write_file(&self, name: &str, contents: &str) {
        write_atomic(&self.dir.path().join(name), contents);
    }

    /// `POST /reload` on the admin listener with the configured token.
    pub async fn reload(&self) -> (StatusCode, serde_json::Value) {
        let token = self.admin_token.clone();
        self.reload_with_token(token.as_deref()).await
    }

    /// `POST /reload` with the given bearer token (or none).
    pub async fn reload_with_token(&self, token: Option<&str>) -> (StatusCode, serde_json::Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let r = TestClient::new()
            .request(
                Method::POST,
                &self.admin_url("/reload"),
                &headers,
                TestBody::empty(),
            )
            .await;
        let v =
            serde_json::from_slice(&r.body).unwrap_or_else(|_| serde_json::Value::String(r.text()));
        (r.status, v)
    }

    /// Rewrites the config and reloads; panics unless the reload succeeds.
    /// Returns the new generation.
    pub async fn reload_with(&self, toml: &str) -> u64 {
        self.rewrite_config(toml);
        let (status, v) = self.reload().await;
        assert_eq!(status, StatusCode::OK, "reload failed: {v}");
        v["generation"]
            .as_u64()
            .expect("generation in reload reply")
    }

    /// Asks the gateway to stop (stop accepting, drain) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Graceful shutdown: returns when `serve` returns (bounded).
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        let task = self.task.take().expect("gateway already stopped");
        match tokio::time::timeout(SHUTDOWN_BOUND, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("gateway task failed: {e}"),
            Err(_) => panic!("gateway did not finish shutting down within {SHUTDOWN_BOUND:?}"),
        }
    }

    /// True once `serve` has returned.
    pub fn is_stopped(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(t) = self.task.take() {
            // Aborting `serve` drops its drain signal, which ends the accept
            // loops and asks open connections to close.
            t.abort();
        }
    }
}

/// The built binary running as a child process; killed on drop.
pub struct GatewayProcess {
    dir: TempDir,
    config_path: PathBuf,
    child: Child,
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    admin_token: Option<String>,
    logs: Arc<Mutex<Vec<String>>>,
    exited: Option<ExitStatus>,
}

#[derive(Debug, Default, Clone)]
struct ProcessAddrs {
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    started: bool,
}

fn read_log_lines(
    r: impl std::io::Read,
    logs: Arc<Mutex<Vec<String>>>,
    addrs: Option<Arc<Mutex<ProcessAddrs>>>,
) {
    use std::io::BufRead as _;
    for line in std::io::BufReader::new(r).lines() {
        let Ok(line) = line else { break };
        if let Some(addrs) = &addrs
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
        {
            let msg = v["message"].as_str().unwrap_or("");
            let addr = v["address"].as_str().and_then(|a| a.parse().ok());
            let mut a = addrs.lock().unwrap();
            match msg {
                "listening (http)" => a.http = addr,
                "listening (admin)" => a.admin = addr,
                "portcullis started" => a.started = true,
                _ => {}
            }
        }
        logs.lock().unwrap().push(line);
    }
}

impl GatewayProcess {
    /// Starts the binary with `toml` (see the module docs for placeholders).
    pub async fn start(toml: &str) -> GatewayProcess {
        Gateway::builder(toml).spawn_binary().await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.expect("this gateway has no http listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("this gateway has no admin listener")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr())
    }

    /// A client pinned to the public listener.
    pub fn client(&self) -> TestClient {
        TestClient::to(self.http_addr())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// Atomically replaces the config file (same substitutions as start).
    pub fn rewrite_config(&self, toml: &str) {
        write_atomic(&self.config_path, &expand(toml, self.dir.path()));
    }

    /// `POST /reload` on the admin listener with the configured token.
    pub async fn reload(&self) -> (StatusCode, serde_json::Value) {
        let auth = self.admin_token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let url = format!("http://{}/reload", self.admin_addr());
        let r = TestClient::new()
            .request(Method::POST, &url, &headers, TestBody::empty())
            .await;
        let v =
            serde_json::from_slice(&r.body).unwrap_or_else(|_| serde_json::Value::String(r.text()));
        (r.status, v)
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`) with the `kill` command.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Everything the process printed so far (stdout and stderr lines).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits for the process to exit, panicking after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.exited {
            return s;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.exited = Some(s);
                return s;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "portcullis did not exit within {timeout:?}; output:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True if the process has exited.
    pub fn has_exited(&mut self) -> bool {
        if self.exited.is_some() {
            return true;
        }
        match self.child.try_wait() {
            Ok(Some(s)) => {
                self.exited = Some(s);
                true
            }
            _ => false,
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Applies the placeholder rules in the module docs.
pub fn expand(toml: &str, dir: &Path) -> String {
    let dir_s = dir.display().to_string();
    let has_server = toml.lines().any(|l| l.trim_start().starts_with("[server]"));
    let mut out = String::new();
    if !has_server {
        out.push_str(
            "[server]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nstate_dir = \"{{DIR}}/state\"\n\n",
        );
    }
    out.push_str(toml);
    out.replace("{{HTTP}}", "127.0.0.1:0")
        .replace("{{HTTPS}}", "127.0.0.1:0")
        .replace("{{ADMIN}}", "127.0.0.1:0")
        .replace("{{DIR}}", &dir_s)
}

/// Writes a file by temp file + rename, so a reader never sees half of it.
pub fn write_atomic(path: &Path, contents: &str) {
    let dir = path.parent().expect("file has a parent dir");
    let mut tmp = tempfile::NamedTempFile::new_in(dir).expect("temp file");
    std::io::Write::write_all(&mut tmp, contents.as_bytes()).expect("write temp file");
    tmp.persist(path)
        .unwrap_or_else(|e| panic!("rename onto {}: {e}", path.display()));
}

/// A gateway with `routes` and extra `[server]` keys.
pub async fn gateway_with(routes: &str, server_extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[server]
http = "{{{{HTTP}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"
{server_extra}

{routes}
"#
    ))
    .await
}
