//! The HTTP/1 codec against an outside conformance tool: every
//! `tests/vtc/*.vtc` script (varnishtest's VTC language, as in Varnish's
//! and HAProxy's own test suites) runs a raw client and a raw backend
//! through one gateway, covering RFC 9112's message-framing rules (see
//! tests/vtc/README.md).
//!
//! Needs `varnishtest` (Debian: `apt-get install varnish`); scripts/test.sh
//! installs it.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::gateway::Gateway;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// One worker thread: the backend connection pool is per thread, and each
// script's backend serves its requests on one connection, in order.
#[tokio::test(flavor = "current_thread")]
async fn vtc_scripts_pass_through_the_gateway() {
    let found = Command::new("varnishtest").arg("-h").output();
    assert!(
        found.is_ok(),
        "varnishtest is missing: install it with `apt-get install varnish` (scripts/test.sh does)"
    );
    let be_port = free_port();
    let gw = Gateway::start(&format!(
        "[[route]]\nhost = \"vtc.test\"\nupstream = \"http://127.0.0.1:{be_port}\"\ntimeout = \"5s\"\n"
    ))
    .await;
    let gw_port = gw.http_addr().port();

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vtc");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "vtc"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 5, "no scripts under {}", dir.display());

    let mut failures = Vec::new();
    for script in scripts {
        // One at a time: they share the backend port.
        let out = tokio::task::spawn_blocking({
            let script = script.clone();
            move || {
                Command::new("varnishtest")
                    .args(["-t", "30", "-j", "1"])
                    .arg("-D")
                    .arg(format!("gw_port={gw_port}"))
                    .arg("-D")
                    .arg(format!("be_port={be_port}"))
                    .arg(&script)
                    .output()
                    .expect("run varnishtest")
            }
        })
        .await
        .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{}:\n{}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
