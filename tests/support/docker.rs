//! A real Docker engine for the label-discovery tests: our own `dockerd`
//! (own `--data-root`, `--exec-root`, unix socket and pidfile under a temp
//! dir; no iptables, no bridge; `--live-restore` so containers outlive a
//! daemon restart), an image imported from a tarball holding
//! busybox-static (no registry is reachable), and containers on the host
//! network running `busybox httpd` on a free loopback port.
//!
//! One daemon is shared by the tests of a file: [`Engine::shared`] starts
//! it on first use; each test holds an [`EngineUse`] and the last of
//! [`Engine::shared`]'s `tests` to finish removes every container and
//! stops the daemon by its pid. A test that restarts the daemon takes
//! [`Engine::exclusive`] so no other test runs meanwhile.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const IMAGE: &str = "portcullis-test/busybox:1";

pub struct Engine {
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Mutex<Option<Child>>,
}

static ENGINE: OnceLock<Result<Arc<Engine>, String>> = OnceLock::new();
static FINISHED: AtomicUsize = AtomicUsize::new(0);
static LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A test's hold on the shared engine; the last one stops it.
pub struct EngineUse {
    pub engine: Arc<Engine>,
    tests: usize,
    _read: Option<tokio::sync::RwLockReadGuard<'static, ()>>,
    _write: Option<tokio::sync::RwLockWriteGuard<'static, ()>>,
}

impl std::ops::Deref for EngineUse {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for EngineUse {
    fn drop(&mut self) {
        if FINISHED.fetch_add(1, Ordering::SeqCst) + 1 == self.tests {
            self.engine.stop_all();
        }
    }
}

impl Engine {
    /// The file's engine, shared with the other tests (`tests` = how many
    /// tests of the file use it). Panics, saying why, if dockerd cannot
    /// start: these tests are never skipped.
    pub async fn shared(tests: usize) -> EngineUse {
        let read = LOCK.read().await;
        EngineUse {
            engine: Self::get(),
            tests,
            _read: Some(read),
            _write: None,
        }
    }

    /// Like [`Engine::shared`], with no other test running meanwhile.
    pub async fn exclusive(tests: usize) -> EngineUse {
        let write = LOCK.write().await;
        EngineUse {
            engine: Self::get(),
            tests,
            _read: None,
            _write: Some(write),
        }
    }

    fn get() -> Arc<Engine> {
        match ENGINE.get_or_init(|| Engine::start().map(Arc::new)) {
            Ok(e) => e.clone(),
            Err(e) => panic!("{e}"),
        }
    }

    fn start() -> Result<Engine, String> {
        for (bin, pkg) in [("dockerd", "docker.io"), ("busybox", "busybox-static")] {
            if which(bin).is_none() {
                return Err(format!(
                    "`{bin}` not found: install the Debian package `{pkg}` (scripts/test.sh does)"
                ));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("pc-dockerd-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let engine = Engine {
            socket: dir.path().join("docker.sock"),
            dir,
            child: Mutex::new(None),
        };
        engine.start_daemon()?;
        engine.spawn_reaper()?;
        engine.import_image()?;
        Ok(engine)
    }

    /// Starts dockerd (again, after [`Engine::stop_daemon`]) and waits
    /// until it answers.
    pub fn start_daemon(&self) -> Result<(), String> {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("dockerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--live-restore",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run dockerd: {e}"))?;
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "dockerd exited ({status}) before answering; it needs root and overlay or vfs storage. Its log:\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "dockerd did not answer within 60 s. Its log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// When the test process ends before the last test's cleanup ran
    /// (a filtered run, a crash), a watcher removes the containers and
    /// stops dockerd by the pid in its pidfile, then unmounts and removes
    /// the temp dir.
    fn spawn_reaper(&self) -> Result<(), String> {
        let script = r#"
while kill -0 "$1" 2>/dev/null; do sleep 0.5; done
[ -d "$2" ] || exit 0
ids=$(docker -H "unix://$2/docker.sock" ps -aq 2>/dev/null)
[ -n "$ids" ] && docker -H "unix://$2/docker.sock" rm -f $ids >/dev/null 2>&1
pid=$(cat "$2/dockerd.pid" 2>/dev/null)
if [ -n "$pid" ]; then
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
fi
grep " $2" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m"; done
rm -rf "$2"
"#;
        Command::new("sh")
            .args(["-c", script, "reaper"])
            .arg(std::process::id().to_string())
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|_| ())
            .map_err(|e| format!("cannot start the dockerd reaper: {e}"))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops dockerd by its pid (containers keep running: live restore).
    pub fn stop_daemon(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Removes every container, then stops the daemon.
    fn stop_all(&self) {
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        self.stop_daemon();
        // dockerd leaves its data root and network namespace mounted.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(&dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
        let _ = std::fs::remove_dir_all(self.dir.path());
    }

    fn import_image(&self) -> Result<(), String> {
        let root = self.dir.path().join("rootfs");
        let busybox = which("busybox").unwrap();
        std::fs::create_dir_all(root.join("bin")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(root.join("www/cgi-bin")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(root.join("tmp")).map_err(|e| e.to_string())?;
        std::fs::copy(&busybox, root.join("bin/busybox")).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).map_err(|e| e.to_string())?;
        // A CGI that shows the request headers the backend received.
        let cgi = root.join("www/cgi-bin/env");
        std::fs::write(
            &cgi,
            "#!/bin/sh\necho 'Content-Type: text/plain'\necho\n/bin/busybox env\n",
        )
        .map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let tar = self.dir.path().join("rootfs.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .map_err(|e| format!("tar: {e}"))?;
        if !ok.success() {
            return Err("tar failed".into());
        }
        self.docker(&["import", &tar.to_string_lossy(), IMAGE])
            .map(|_| ())
    }

    /// Runs the docker CLI against this engine; stdout, or stderr as error.
    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run docker: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "docker {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The `[docker]` endpoint for the gateway's config.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Starts a container `name` with `labels` on the host network,
    /// serving `/id` (its name) and `/cgi-bin/env` on `port`.
    pub fn run_httpd(&self, name: &str, port: u16, labels: &[(&str, String)]) {
        self.run_httpd_with(name, port, labels, &[]);
    }

    /// [`Engine::run_httpd`] with more `docker run` options.
    pub fn run_httpd_with(&self, name: &str, port: u16, labels: &[(&str, String)], opts: &[&str]) {
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--network".into(),
            "host".into(),
            "--name".into(),
            name.into(),
        ];
        args.extend(opts.iter().map(|o| o.to_string()));
        for (k, v) in labels {
            args.push("-l".into());
            args.push(format!("{k}={v}"));
        }
        args.push(IMAGE.into());
        args.extend(["/bin/sh".into(), "-c".into()]);
        args.push(format!(
            "echo {name} > /www/id; exec /bin/busybox httpd -f -p 127.0.0.1:{port} -h /www"
        ));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Err(e) = self.docker(&args) {
            panic!("{e}");
        }
    }

    /// Removes containers (stopping them).
    pub fn remove(&self, names: &[&str]) {
        let mut args = vec!["rm", "-f"];
        args.extend(names);
        if let Err(e) = self.docker(&args) {
            panic!("{e}");
        }
    }
}

/// A free loopback TCP port.
#[allow(unused_imports)] // not every test file that loads the harness uses it
pub use super::tls::free_port;

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}
