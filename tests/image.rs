//! The container image, built from the repository's Dockerfile and run for
//! real on our own dockerd (tests/support/docker.rs): the base image is a
//! Debian bookworm made here with `debootstrap --variant=minbase` and
//! `docker import` (no registry is reachable), the binary is the one this
//! test run built, handed to the Dockerfile's `prebuilt` stage (the build
//! stage itself is what users run and is not exercised here).
//!
//! Needs `debootstrap` (Debian package; scripts/test.sh installs it) and
//! network access to the Debian package mirror, which the image's own
//! `apt-get install ca-certificates` needs anyway. The debootstrapped base
//! is kept under the target dir, so it is made once per build tree.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::docker::{Engine, free_port};

const BASE: &str = "docker.io/library/debian:bookworm-slim";
const TAG: &str = "portcullis-test/image:1";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `docker` against our engine, with the classic builder.
fn docker(engine: &Engine, args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .arg("-H")
        .arg(engine.endpoint())
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "docker {}:\n{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A Debian bookworm minbase root as a tarball, made once per target dir.
fn base_tarball() -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-test");
    let tar = cache.join("bookworm-minbase.tar");
    if tar.exists() {
        return tar;
    }
    let debootstrap = ["/usr/sbin/debootstrap", "/sbin/debootstrap"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("`debootstrap` not found: install the Debian package `debootstrap` (scripts/test.sh does)")
        });
    std::fs::create_dir_all(&cache).unwrap();
    let dir = tempfile::tempdir_in(&cache).unwrap();
    let rootfs = dir.path().join("root");
    let out = Command::new(debootstrap)
        .args(["--variant=minbase", "bookworm"])
        .arg(&rootfs)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("run debootstrap");
    assert!(
        out.status.success(),
        "debootstrap failed (it needs the Debian mirror):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let partial = cache.join("bookworm-minbase.tar.partial");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&partial)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success(), "tar of the debootstrapped root failed");
    std::fs::rename(&partial, &tar).unwrap();
    tar
}

/// The build context: what the Dockerfile copies, with this run's binary
/// at dist/portcullis.
fn context() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    for f in ["Dockerfile", ".dockerignore", "config/portcullis.toml"] {
        let to = ctx.path().join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root().join(f), &to).unwrap();
    }
    std::fs::create_dir_all(ctx.path().join("dist")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_portcullis"),
        ctx.path().join("dist/portcullis"),
    )
    .unwrap();
    ctx
}

fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_unprivileged_turns_healthy_serves_and_stops_cleanly() {
    let engine = Engine::shared(1).await;
    let tar = base_tarball();
    docker(&engine, &["import", tar.to_str().unwrap(), BASE]).unwrap();
    let ctx = context();
    docker(
        &engine,
        &[
            "build",
            "--network",
            "host",
            "--target",
            "prebuilt",
            "-t",
            TAG,
            ctx.path().to_str().unwrap(),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let (http, admin) = (free_port(), free_port());
    let conf = tempfile::tempdir().unwrap();
    let config = conf.path().join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
http = "127.0.0.1:{http}"
admin = "127.0.0.1:{admin}"
state_dir = "/var/lib/portcullis"
grace_period = "5s"

[[route]]
host = "*"
respond = {{ body = "served from the image" }}
"#
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let volume = format!("portcullis-test-state-{}", std::process::id());
    let name = format!("portcullis-image-{}", std::process::id());
    let mount = format!("{}:/etc/portcullis/portcullis.toml:ro", config.display());
    let state = format!("{volume}:/var/lib/portcullis");
    docker(
        &engine,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "host",
            // The image's HEALTHCHECK command, probed every second here.
            "--health-interval",
            "1s",
            "--health-start-period",
            "0s",
            "-v",
            &mount,
            "-v",
            &state,
            TAG,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // It runs as the unprivileged user, not root.
    let uid = docker(&engine, &["exec", &name, "id", "-u"]).unwrap();
    assert_eq!(uid.trim(), "10001");
    let status = docker(&engine, &["exec", &name, "cat", "/proc/1/status"]).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "10001"),
        "{uid_line}"
    );

    // The healthcheck (`portcullis health`, reading server.admin from the
    // mounted config) turns healthy.
    wait_for(
        "the container to be healthy",
        Duration::from_secs(60),
        || {
            let h = docker(
                &engine,
                &["inspect", "-f", "{{.State.Health.Status}}", &name],
            )
            .ok()?;
            (h.trim() == "healthy").then_some(())
        },
    );

    // It serves the config.
    let body = wait_for(
        "an answer on the http listener",
        Duration::from_secs(10),
        || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut resp = String::new();
            s.read_to_string(&mut resp).ok()?;
            let (head, body) = resp.split_once("\r\n\r\n")?;
            head.starts_with("HTTP/1.1 200").then(|| body.to_string())
        },
    );
    assert_eq!(body, "served from the image");

    // The named volume on the state dir is the gateway's to write.
    docker(
        &engine,
        &[
            "exec",
            &name,
            "sh",
            "-c",
            "echo ok > /var/lib/portcullis/probe && cat /var/lib/portcullis/probe",
        ],
    )
    .unwrap_or_else(|e| panic!("state dir not writable: {e}"));
    let mode = docker(
        &engine,
        &["exec", &name, "stat", "-c", "%u %a", "/var/lib/portcullis"],
    )
    .unwrap();
    assert_eq!(mode.trim(), "10001 700");

    // docker stop: SIGTERM, and the gateway exits 0 within its grace
    // period (a kill after docker's timeout would be 137).
    docker(&engine, &["stop", "-t", "30", &name]).unwrap();
    let code = docker(&engine, &["inspect", "-f", "{{.State.ExitCode}}", &name]).unwrap();
    assert_eq!(
        code.trim(),
        "0",
        "{}",
        docker(&engine, &["logs", &name]).unwrap_or_default()
    );
    let logs = docker(&engine, &["logs", &name]).unwrap_or_default();
    assert!(logs.contains("SIGTERM"), "{logs}");

    let _ = docker(&engine, &["rm", "-f", &name]);
    let _ = docker(&engine, &["volume", "rm", "-f", &volume]);
}
