//! A real HAProxy (TCP mode) in front of the gateway, stopped by pid when
//! dropped. Each `(listen port, server address, option)` is one frontend:
//! `send-proxy` (v1) or `send-proxy-v2`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct Haproxy {
    child: Child,
    _dir: TempDir,
}

impl Haproxy {
    pub fn start(fronts: &[(u16, SocketAddr, &str)]) -> Haproxy {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-haproxy-")
            .tempdir()
            .expect("temp dir");
        let mut cfg = String::from(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
        );
        for (i, (port, to, opt)) in fronts.iter().enumerate() {
            cfg.push_str(&format!(
                "listen f{i}\n  bind 127.0.0.1:{port}\n  server gw {to} {opt}\n"
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = match Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`haproxy` not found: install the Debian package `haproxy` (scripts/test.sh does)"
            ),
            Err(e) => panic!("cannot start haproxy: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for (port, _, _) in fronts {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "haproxy did not listen on {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Haproxy { child, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
