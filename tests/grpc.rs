//! gRPC through the gateway with a real gRPC server and client (Debian's
//! `python3-grpcio`, driven by `tests/peers/grpc/peer.py`: no code
//! generation, no PyPI download, raw-bytes messages): unary, server
//! streaming and bidirectional streaming over TLS (client → gateway →
//! backend) and over h2c; error statuses unchanged; deadlines; a backend
//! that is down.

mod support;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::backend::Backend;
use support::client::TestClient;
use support::gateway::Gateway;
use support::tls::TestCa;

const PYTHON: &str = "/usr/bin/python3";

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/grpc/peer.py")
}

fn check_python() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "Python grpcio missing: apt-get install -y python3-grpcio"
    );
}

/// A gRPC server (test.Echo); stopped on drop.
struct GrpcServer {
    child: Child,
    addr: SocketAddr,
}

impl GrpcServer {
    fn start(tls: Option<(&std::path::Path, &std::path::Path)>) -> GrpcServer {
        check_python();
        let mut cmd = Command::new(PYTHON);
        cmd.arg(peer_script()).arg("serve");
        if let Some((cert, key)) = tls {
            cmd.arg("--tls").arg(cert).arg(key);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the gRPC peer");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("gRPC peer output");
        let port: u16 = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("gRPC peer said {line:?}"));
        GrpcServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the gRPC client peer once; its JSON answer.
async fn call(
    target: SocketAddr,
    authority: &str,
    tls_ca: Option<PathBuf>,
    args: &[&str],
) -> Value {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(peer_script())
        .arg("call")
        .arg(target.to_string())
        .arg(authority);
    if let Some(ca) = tls_ca {
        cmd.arg("--tls").arg(ca);
    }
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run the gRPC client"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "gRPC client said {text:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

struct Setup {
    gw: Gateway,
    _h2c: GrpcServer,
    _tls: GrpcServer,
    _down: Backend,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let backend_leaf = ca.leaf(&["grpc-backend.test"]);
    let (cert, key) = (dir.path().join("b.pem"), dir.path().join("b.key"));
    std::fs::write(&cert, &backend_leaf.cert_pem).unwrap();
    std::fs::write(&key, &backend_leaf.key_pem).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let h2c = GrpcServer::start(None);
    let tls = GrpcServer::start(Some((&cert, &key)));
    let down = Backend::refusing().await;
    let site = ca.leaf(&["grpc-tls.test"]);
    let config = format!(
        r#"
[server]
http = "{{{{HTTP}}}}"
https = "{{{{HTTPS}}}}"
admin = "{{{{ADMIN}}}}"
state_dir = "{{{{DIR}}}}/state"
upstream_read_timeout = "1s"

[[certificate]]
hosts = ["grpc-tls.test"]
cert_file = "site.pem"
key_file = "site.key"

[[route]]
host = "grpc-tls.test"
upstream = "https://{tls}"
upstream_protocol = "h2"
upstream_tls = {{ ca_file = "ca.pem", server_name = "grpc-backend.test" }}

[[route]]
host = "grpc-h2c.test"
upstream = "h2c://{h2c}"
https_redirect = false

[[route]]
host = "grpc-down.test"
upstream = "h2c://{down}"
https_redirect = false
"#,
        tls = tls.addr,
        h2c = h2c.addr,
        down = down.addr(),
    );
    let gw = Gateway::builder(&config)
        .file("site.pem", &site.cert_pem)
        .file("site.key", &site.key_pem)
        .file("ca.pem", ca.pem())
        .start()
        .await;
    Setup {
        gw,
        _h2c: h2c,
        _tls: tls,
        _down: down,
        ca_file,
        _dir: dir,
    }
}

fn all_ok() -> Value {
    json!({
        "unary": "echo:hi",
        "stream": ["s-0", "s-1", "s-2"],
        "bidi": ["A", "B", "C"],
        "fail": ["PERMISSION_DENIED", "not for you"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_and_failures_pass_through_the_gateway() {
    let s = setup().await;
    let https = s.gw.https_addr();
    let http = s.gw.http_addr();

    // TLS all the way: client → gateway (h2 over TLS) → backend (h2 over
    // TLS, verified).
    let tls = call(https, "grpc-tls.test", Some(s.ca_file.clone()), &["all"]).await;
    assert_eq!(tls, all_ok());
    // Cleartext: h2c to the gateway, h2c to the backend.
    let h2c = call(http, "grpc-h2c.test", None, &["all"]).await;
    assert_eq!(h2c, all_ok());

    // A deadline shorter than the server's delay.
    let slow = call(http, "grpc-h2c.test", None, &["slow", "0.5"]).await;
    assert_eq!(slow["status"], "DEADLINE_EXCEEDED", "{slow}");
    // A backend that goes quiet in the middle of a stream is cut off after
    // upstream_read_timeout (1 s here), not waited for.
    let stall = call(http, "grpc-h2c.test", None, &["stall"]).await;
    assert_eq!(stall["got"], json!(["first"]), "{stall}");
    assert_ne!(stall["status"], "OK", "{stall}");
    // The backend is down: UNAVAILABLE, not an HTML page.
    let down = call(http, "grpc-down.test", None, &["unary"]).await;
    assert_eq!(down["status"], "UNAVAILABLE", "{down}");
}

/// The gateway itself answers for the deadline (the client library would
/// also give up on its own): `grpc-timeout` is the response timeout, and
/// the answer is a gRPC status with HTTP 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_honours_grpc_timeout_and_answers_in_grpc() {
    let s = setup().await;
    let client = TestClient::h2c_to(s.gw.http_addr());
    let frame = vec![0u8, 0, 0, 0, 1, b'x'];
    let headers = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "300m"),
    ];
    let r = client
        .request(
            Method::POST,
            "http://grpc-h2c.test/test.Echo/Slow",
            &headers,
            frame.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("grpc-status"), Some("4"), "{:?}", r.headers);
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert!(r.body.is_empty());

    let r = client
        .request(
            Method::POST,
            "http://grpc-down.test/test.Echo/Unary",
            &headers[..2],
            frame,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("grpc-status"), Some("14"), "{:?}", r.headers);
    // HTTP/1.1 clients reach an h2 upstream too.
    let r = TestClient::to(s.gw.http_addr())
        .request(
            Method::POST,
            "http://grpc-h2c.test/test.Echo/Unary",
            &[("content-type", "application/grpc"), ("te", "trailers")],
            vec![0u8, 0, 0, 0, 2, b'h', b'i'],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[5..], b"echo:hi");
}
