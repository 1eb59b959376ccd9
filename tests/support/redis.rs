//! A real `redis-server` on a free loopback port with its own temp dir,
//! stopped (by pid) when dropped. Nothing is persisted.
//!
//! [`Redis`] is the plain data node most cluster tests share; [`Process`]
//! and [`node_args`] start any other shape (TLS ports, replicas,
//! sentinels).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// One Redis for the tests of a file that do not stop it.
pub fn shared() -> &'static Redis {
    static R: OnceLock<Redis> = OnceLock::new();
    R.get_or_init(Redis::start)
}

/// The arguments of a throwaway data node: loopback, `port`, `dir`,
/// nothing saved, in the foreground.
pub fn node_args(dir: &Path, port: u16) -> Vec<String> {
    let port = port.to_string();
    let dir = dir.display().to_string();
    [
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
        "--dir",
        &dir,
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One `redis-server ARGS` process, killed (by pid) when dropped, or when
/// the test process ends: a shared Redis lives in a static, which is never
/// dropped, so it runs under a small shell that holds our pipe on its
/// stdin and kills it (by pid) as soon as that pipe closes.
pub struct Process {
    child: Option<Child>,
    stdin: Option<std::process::ChildStdin>,
    pub port: u16,
    /// `requirepass`, if any.
    password: Option<&'static str>,
}

/// Runs `redis-server "$@"` until stdin closes, then kills it by pid.
const WATCHDOG: &str = r#"redis-server "$@" & p=$!; read -r _; kill -9 "$p"; wait "$p""#;

impl Process {
    /// Starts it and waits until `port` accepts connections; panics
    /// naming the package if `redis-server` is not installed.
    pub fn spawn(args: &[String], port: u16) -> Process {
        match Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`redis-server` not found: install the Debian package `redis-server` (scripts/test.sh does)"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        }
        let mut child = Command::new("sh")
            .args(["-c", WATCHDOG, "sh"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sh for redis-server");
        let stdin = child.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Process {
            child: Some(child),
            stdin,
            port,
            password: None,
        }
    }

    /// Connections made by [`Process::connection`] authenticate with `p`.
    pub fn with_password(mut self, p: &'static str) -> Process {
        self.password = Some(p);
        self
    }

    /// Stops it now (SIGKILL, by pid) and waits until it is gone.
    pub fn stop(&mut self) {
        // Closing the pipe makes the shell kill redis-server and wait.
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    pub fn connection(&self) -> redis::Connection {
        let auth = self.password.map(|p| format!(":{p}@")).unwrap_or_default();
        redis::Client::open(format!("redis://{auth}127.0.0.1:{}/", self.port))
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to a test redis")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Redis {
    process: Option<Process>,
    port: u16,
    dir: TempDir,
}

impl Redis {
    /// Starts a server; panics (naming the package) if `redis-server` is
    /// not installed.
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-redis-")
            .tempdir()
            .expect("temp dir");
        let mut r = Redis {
            process: None,
            port: super::idp::free_port(),
            dir,
        };
        r.restart();
        r
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it again (after [`Redis::stop`]) on the same port.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "already running");
        self.process = Some(Process::spawn(
            &node_args(self.dir.path(), self.port),
            self.port,
        ));
    }

    /// Stops it now (SIGKILL, by pid) and waits.
    pub fn stop(&mut self) {
        self.process = None;
    }

    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// Every key with every value it holds (strings, set members), raw.
    pub fn dump(&self) -> Vec<(String, Vec<Vec<u8>>)> {
        let mut c = self.connection().expect("connect to redis");
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
        keys.into_iter()
            .map(|k| {
                let t: String = redis::cmd("TYPE").arg(&k).query(&mut c).unwrap();
                let vals: Vec<Vec<u8>> = match t.as_str() {
                    "string" => vec![redis::cmd("GET").arg(&k).query(&mut c).unwrap()],
                    "set" => redis::cmd("SMEMBERS").arg(&k).query(&mut c).unwrap(),
                    other => panic!("unexpected Redis type {other} for {k}"),
                };
                (k, vals)
            })
            .collect()
    }
}

/// A gateway of a cluster: `[cluster]` with the shared key file
/// `cluster.key` and the `cluster` lines (redis, name, prefix...), the
/// OIDC provider at `issuer`, `app.localtest` behind SSO and
/// `public.localtest` open, both to `up`.
pub fn sso_config(http: &str, issuer: &str, up: &str, cluster: &str) -> String {
    format!(
        r#"
[server]
http = "{http}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"

[cluster]
encryption_key_file = "cluster.key"
{cluster}

[oidc.authentik]
issuer = "{issuer}"
client_id = "portcullis"
client_secret_file = "secret"
insecure_cookies = true

[[route]]
host = "app.localtest"
upstream = "{up}"
auth = {{ oidc = "authentik" }}

[[route]]
host = "public.localtest"
upstream = "{up}"
"#
    )
}
