//! Faults the gateway must ride out: certificate files deleted under it, a
//! full disk while writing state, and thousands of idle connections close
//! to the file-descriptor limit.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::gateway::Gateway;
use support::tls::{TestCa, get, handshake, roots_from_pem};
use support::within;

#[tokio::test]
async fn a_deleted_certificate_file_keeps_serving_and_a_reload_keeps_the_old_config() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["app.test"]);
    let gw = Gateway::builder(
        r#"
[server]
http = "{{HTTP}}"
https = "{{HTTPS}}"
admin = "{{ADMIN}}"

[[certificate]]
hosts = ["app.test"]
cert_file = "app.pem"
key_file = "app.key"

[[route]]
host = "app.test"
respond = { body = "still here" }
"#,
    )
    .file("app.pem", &leaf.cert_pem)
    .file("app.key", &leaf.key_pem)
    .start()
    .await;
    std::fs::remove_file(gw.dir().join("app.pem")).unwrap();
    std::fs::remove_file(gw.dir().join("app.key")).unwrap();

    let hs = handshake(gw.https_addr(), "app.test", roots_from_pem(&ca.pem()), &[])
        .await
        .expect("the in-memory certificate keeps serving");
    assert_eq!(&get(hs, "app.test", "/").await.body[..], b"still here");

    // A reload now fails (files gone) and changes nothing.
    let (status, body) = gw.reload().await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("app.pem"), "{body}");
    let hs = handshake(gw.https_addr(), "app.test", roots_from_pem(&ca.pem()), &[])
        .await
        .expect("still serving after the rejected reload");
    assert_eq!(&get(hs, "app.test", "/").await.body[..], b"still here");
}

/// Mounts a tiny tmpfs (needs root, which CI has) and fills it.
#[test]
fn a_full_disk_leaves_the_old_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
        .arg(mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        mounted,
        "this test mounts a 64 KiB tmpfs to simulate a full disk and needs root \
         (CI runs as root); run the suite as root"
    );
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt);

    let certs = mnt.join("certs");
    portcullis::fsutil::private_dir(&certs).unwrap();
    let key = certs.join("app.key");
    portcullis::fsutil::write_atomic(&key, b"the old key", 0o600).unwrap();

    // Fill most of the disk, then try to write something that cannot fit.
    std::fs::write(mnt.join("ballast"), vec![0u8; 40 * 1024]).unwrap();
    let err = portcullis::fsutil::write_atomic(&key, &vec![b'n'; 60 * 1024], 0o600)
        .expect_err("writing past the disk's end must fail");
    assert_eq!(err.raw_os_error(), Some(28), "ENOSPC, got {err}");
    assert_eq!(
        std::fs::read(&key).unwrap(),
        b"the old key",
        "old file whole"
    );
    let names: Vec<_> = std::fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("app.key")],
        "no temp file left behind"
    );
}

#[tokio::test]
async fn ten_thousand_idle_connections_near_the_fd_limit_and_a_new_request_is_answered() {
    const IDLE: usize = 10_000;
    // Our own side needs the descriptors too: raise the soft limit to the
    // hard one.
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        hard >= (IDLE as u64) + 1000,
        "this test opens {IDLE} connections and needs a hard NOFILE limit above {}; it is {hard}",
        IDLE + 1000
    );
    let _ = Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={hard}:{hard}"),
        ])
        .stderr(Stdio::null())
        .status();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhttp = \"127.0.0.1:0\"\nadmin = \"off\"\nstate_dir = \"{}\"\nheader_read_timeout = \"120s\"\n\n[[route]]\nhost = \"*\"\nrespond = {{ body = \"ok\" }}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    // The gateway gets a descriptor limit just above what the idle
    // connections take.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {} && exec \"$0\" --log-format json run --config \"$1\"",
            IDLE + 200
        ))
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .arg(&config)
        .env("RUST_LOG", "info,portcullis::access=off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let child = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "listening (http)" {
                let _ = tx.send(v["address"].as_str().unwrap().to_string());
            }
        }
    });
    let addr: std::net::SocketAddr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the gateway to start listening")
        .parse()
        .unwrap();

    // Open the idle keep-alive connections, each having served one request.
    let mut idle = Vec::with_capacity(IDLE);
    let mut buf = vec![0u8; 512];
    within(
        "opening the idle connections",
        Duration::from_secs(240),
        async {
            for _ in 0..IDLE {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let n = s.read(&mut buf).await.unwrap();
                assert!(
                    buf[..n].starts_with(b"HTTP/1.1 200"),
                    "{}",
                    String::from_utf8_lossy(&buf[..n])
                );
                idle.push(s);
            }
        },
    )
    .await;

    // A new client still gets an answer.
    let r = within(
        "a new request next to 10,000 idle connections",
        Duration::from_secs(30),
        support::client::raw(
            addr,
            &["GET / HTTP/1.1", "Host: x", "Connection: close"],
            b"",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");

    // And every idle connection is still usable.
    for s in idle.iter_mut().step_by(997) {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    drop(idle);
    drop(child);
}
