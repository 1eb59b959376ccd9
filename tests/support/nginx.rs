//! A real nginx in front of the gateway, the way the README documents
//! forward-auth: `auth_request` asks `/.portcullis/auth` about every
//! request and proxies the allowed ones to a backend.
//!
//! nginx runs in the foreground (`daemon off;`) with a generated
//! `nginx.conf` in a temp dir used as its prefix (`-p`), its pid file and
//! logs there too, on a free `127.0.0.1` port; it is stopped by pid when
//! the handle is dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

const NGINX: &str = "/usr/sbin/nginx";
const START_BOUND: Duration = Duration::from_secs(20);

/// Where nginx sends what.
pub struct NginxBuilder {
    gateway: SocketAddr,
    backend: SocketAddr,
}

/// nginx with `auth_request` to the gateway; killed on drop.
pub struct Nginx {
    dir: TempDir,
    child: Child,
    addr: SocketAddr,
    /// Every port it listens on (`addr` is the first).
    addrs: Vec<SocketAddr>,
}

impl Nginx {
    /// `location /` asks the gateway's `/.portcullis/auth` (with
    /// `X-Original-URI: $request_uri`, `X-Forwarded-Host: $http_host`,
    /// `X-Forwarded-Method`) and, when it answers 2xx, proxies the request
    /// as the client sent it to `backend`.
    pub fn auth_request(gateway: SocketAddr, backend: SocketAddr) -> NginxBuilder {
        NginxBuilder { gateway, backend }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `n`th listening address of [`Nginx::custom`].
    pub fn addr_n(&self, n: usize) -> SocketAddr {
        self.addrs[n]
    }

    /// The directory nginx runs in (files written for its config are here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// nginx's access log (format as the config says).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/access.log")).unwrap_or_default()
    }

    /// nginx with `ports` listening ports and the `http {}` block's servers
    /// from `servers(dir, ports)`; `files` (name, contents) are written to
    /// its directory first (certificates and keys). The access log is
    /// `logs/access.log` with the format `conn`: `$server_port $connection
    /// $request_uri $status`.
    pub async fn custom(
        ports: usize,
        files: &[(&str, &str)],
        servers: impl FnOnce(&Path, &[u16]) -> String,
    ) -> Nginx {
        let dir = new_dir();
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).expect("write nginx file");
        }
        let ports: Vec<u16> = (0..ports).map(|_| free_port()).collect();
        let d = dir.path().display().to_string();
        let conf = format!(
            r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format conn '$server_port $connection $request_uri $status';
    access_log {d}/logs/access.log conn;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
{}
}}
"#,
            servers(dir.path(), &ports)
        );
        run(dir, &conf, &ports).await
    }

    /// nginx's error log (for failure messages).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        // SIGTERM makes the master stop its worker first; SIGKILL if not.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

fn nginx_binary() -> String {
    if Path::new(NGINX).exists() {
        return NGINX.to_string();
    }
    match Command::new("sh").args(["-c", "command -v nginx"]).output() {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        }
        _ => panic!("nginx not found: apt-get install -y nginx"),
    }
}

use super::tls::free_port;

impl NginxBuilder {
    fn config(&self, dir: &Path, port: u16) -> String {
        let d = dir.display();
        format!(
            r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/logs/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            auth_request /_portcullis_auth;
            proxy_pass http://{backend};
        }}
        location = /_portcullis_auth {{
            internal;
            proxy_pass http://{gateway}/.portcullis/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Method $request_method;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#,
            backend = self.backend,
            gateway = self.gateway,
        )
    }

    /// Starts nginx and waits until it accepts connections.
    pub async fn start(self) -> Nginx {
        let dir = new_dir();
        let port = free_port();
        let conf = self.config(dir.path(), port);
        run(dir, &conf, &[port]).await
    }
}

fn new_dir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("portcullis-nginx-")
        .tempdir()
        .expect("create temp dir");
    for sub in ["logs", "tmp"] {
        std::fs::create_dir_all(dir.path().join(sub)).expect("create nginx dirs");
    }
    dir
}

/// Starts nginx with `conf` and waits until every port accepts.
async fn run(dir: TempDir, conf_text: &str, ports: &[u16]) -> Nginx {
    let bin = nginx_binary();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, conf_text).expect("write nginx.conf");
    let child = Command::new(&bin)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.path().join("logs/error.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e} (apt-get install -y nginx)"));
    let addrs: Vec<SocketAddr> = ports
        .iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
        .collect();
    let mut nginx = Nginx {
        dir,
        child,
        addr: addrs[0],
        addrs: addrs.clone(),
    };
    let deadline = tokio::time::Instant::now() + START_BOUND;
    for addr in addrs {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = nginx.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!(
                    "nginx exited during start ({status}): {err}\n{}",
                    nginx.error_log()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "nginx did not listen on {addr} within {START_BOUND:?}\n{}",
                    nginx.error_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    nginx
}
