//! A real BIND 9 `named` on loopback for DNS-01 tests: authoritative for a
//! few `.test` zones, dynamic updates allowed for one TSIG key, run in the
//! foreground (`named -g`) from a temp dir and killed by pid on drop.
//!
//! Zones (each `ns` + `@` + `*` A 127.0.0.1):
//! - `example.test`, `hook.test`, `cf.test`: `allow-update { key portcullis.; }`;
//! - `refused.test`: the key may only change `nothing.refused.test`, so an
//!   update of `_acme-challenge.*` is REFUSED.
//!
//! Needs `apt-get install -y bind9 bind9-dnsutils`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NOT_INSTALLED: &str =
    "BIND 9 not installed: run `apt-get install -y bind9 bind9-dnsutils` (named, nsupdate, dig)";

/// The TSIG key the zones accept updates from.
pub const KEY_NAME: &str = "portcullis.";
pub const ZONES: &[&str] = &["example.test", "hook.test", "cf.test", "refused.test"];

pub struct Named {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
    /// Base64 secret of [`KEY_NAME`] (hmac-sha256).
    pub secret: String,
}

fn find(bin: &str) -> PathBuf {
    for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(d).join(bin);
        if p.is_file() {
            return p;
        }
    }
    panic!("{bin} not found. {NOT_INSTALLED}");
}

fn free_port() -> u16 {
    // A port free for both TCP and UDP.
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Named {
    pub fn start() -> Named {
        let named = find("named");
        find("nsupdate");
        find("dig");
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = (std::process::id() as u8)
                .wrapping_mul(31)
                .wrapping_add(i as u8 * 7);
        }
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::STANDARD.encode(secret);
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("portcullis-named-")
                .tempdir()
                .unwrap();
            let port = free_port();
            let d = dir.path().display().to_string();
            let mut conf = format!(
                r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-transfer {{ none; }};
    notify no;
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{secret}"; }};
"#
            );
            for z in ZONES {
                let policy = if *z == "refused.test" {
                    format!("update-policy {{ grant {KEY_NAME} name nothing.refused.test. TXT; }};")
                } else {
                    format!("allow-update {{ key \"{KEY_NAME}\"; }};")
                };
                conf.push_str(&format!(
                    "zone \"{z}\" {{ type primary; file \"{d}/{z}.db\"; {policy} }};\n"
                ));
                std::fs::write(
                    dir.path().join(format!("{z}.db")),
                    format!(
                        "$TTL 60\n@ SOA ns.{z}. admin.{z}. 1 60 60 600 60\n@ NS ns.{z}.\nns A 127.0.0.1\n@ A 127.0.0.1\n* A 127.0.0.1\n"
                    ),
                )
                .unwrap();
            }
            std::fs::write(dir.path().join("named.conf"), conf).unwrap();
            let log = std::fs::File::create(dir.path().join("named.log")).unwrap();
            let child = Command::new(&named)
                .args(["-g", "-4", "-u", "root", "-c"])
                .arg(dir.path().join("named.conf"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn named: {e}. {NOT_INSTALLED}"));
            let mut n = Named {
                child,
                dir,
                port,
                secret: secret.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(st)) = n.child.try_wait() {
                    last = format!("named exited with {st}:\n{}", n.log());
                    break;
                }
                if n.log().contains("running")
                    && n.dig("example.test", "SOA").contains("ns.example.test.")
                {
                    return n;
                }
                if Instant::now() > deadline {
                    last = format!("named not ready after 15s:\n{}", n.log());
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("{last}");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// `dig +short` at this server.
    pub fn dig(&self, name: &str, rtype: &str) -> String {
        let out = Command::new(find("dig"))
            .args(["+short", "+tcp", "+time=2", "+tries=1", "-p"])
            .arg(self.port.to_string())
            .arg("@127.0.0.1")
            .arg(name)
            .arg(rtype)
            .output()
            .expect("run dig");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// TXT values at `name`, as dig shows them (quoted).
    pub fn txt(&self, name: &str) -> Vec<String> {
        self.dig(name, "TXT")
            .lines()
            .map(|l| l.trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// A BIND key file for [`KEY_NAME`] (what `tsig-keygen` writes), for
    /// `nsupdate -k` and for `tsig_secret_file`.
    pub fn key_file_text(&self) -> String {
        format!(
            "key \"{KEY_NAME}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{}\";\n}};\n",
            self.secret
        )
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
