//! Graceful shutdown, in-process and of the real binary on SIGTERM:
//! in-flight requests finish, new connections are refused, the process
//! exits 0, and the grace period bounds the wait.

mod support;

use std::time::Duration;

use support::backend::{Backend, Echo};
use support::client::TestClient;
use support::gateway::{Gateway, GatewayProcess};
use support::{wait_for, within};

const WAIT: Duration = Duration::from_secs(15);

fn proxy_all(upstream: &str) -> String {
    format!("[[route]]\nhost = \"*\"\nupstream = \"{upstream}\"\n")
}

/// Waits until a TCP connect to `addr` is refused.
async fn wait_refused(addr: std::net::SocketAddr) {
    wait_for("the listener to stop accepting", WAIT, || async move {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_and_refuses_new_ones() {
    let be = Backend::echo().await;
    let mut gw = Gateway::start(&proxy_all(&be.url())).await;

    // An idle keep-alive connection must not hold shutdown up.
    let idle = TestClient::to(gw.http_addr());
    assert_eq!(idle.get(&gw.url("/warm")).await.status, 200);

    let busy = TestClient::to(gw.http_addr());
    let url = gw.url("/slow/hold");
    let in_flight = tokio::spawn(async move { busy.get(&url).await });
    wait_for("the request to reach the backend", WAIT, || {
        std::future::ready((be.holding() == 1).then_some(()))
    })
    .await;

    gw.begin_shutdown();
    wait_refused(gw.http_addr()).await;
    wait_refused(gw.admin_addr()).await;
    assert!(
        !in_flight.is_finished(),
        "the in-flight request was cut off"
    );
    assert!(!gw.is_stopped(), "serve returned with a request in flight");

    be.release();
    let r = within("the in-flight request", WAIT, in_flight)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(Echo(r.json()).uri(), "/slow/hold");
    gw.shutdown().await.expect("serve returned an error");
    assert!(gw.is_stopped());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_binary_finish_in_flight_requests_and_exit_0() {
    let be = Backend::echo().await;
    let mut gw = GatewayProcess::start(&proxy_all(&be.url())).await;
    let client = gw.client();
    assert_eq!(client.get(&gw.url("/warm")).await.status, 200);

    let url = gw.url("/hold?id=7");
    let c = client.clone();
    let in_flight = tokio::spawn(async move { c.get(&url).await });
    wait_for("the request to reach the backend", WAIT, || {
        std::future::ready((be.holding() == 1).then_some(()))
    })
    .await;

    gw.signal("TERM");
    wait_refused(gw.http_addr()).await;
    assert!(!gw.has_exited(), "exited with a request in flight");

    be.release();
    let r = within("the in-flight request", WAIT, in_flight)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(Echo(r.json()).uri(), "/hold?id=7");

    let status = gw.wait_exit(WAIT).await;
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        gw.logs()
    );
    assert!(gw.logs().contains("SIGTERM received"), "{}", gw.logs());
}

/// Names of the process's threads (Linux: /proc/PID/task/*/comm).
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_workers_sigterm_waits_for_the_connections_of_every_thread() {
    let be = Backend::echo().await;
    let toml = format!(
        "[server]\nhttp = \"{{{{HTTP}}}}\"\nadmin = \"{{{{ADMIN}}}}\"\nworkers = 2\n\n{}",
        proxy_all(&be.url())
    );
    let mut gw = GatewayProcess::start(&toml).await;
    // The second worker is a thread with a runtime of its own.
    let names = thread_names(gw.pid());
    assert!(
        names.iter().any(|n| n.starts_with("portcullis-work")),
        "no worker thread: {names:?}"
    );

    // Sixteen connections of their own, each with a request held by the
    // backend: they land on whichever thread accepted them first.
    const N: usize = 16;
    let mut in_flight = Vec::new();
    for i in 0..N {
        let c = TestClient::to(gw.http_addr());
        let url = gw.url(&format!("/hold?id={i}"));
        in_flight.push(tokio::spawn(async move { c.get(&url).await }));
    }
    wait_for("every request to reach the backend", WAIT, || {
        std::future::ready((be.holding() == N).then_some(()))
    })
    .await;

    gw.signal("TERM");
    wait_refused(gw.http_addr()).await;
    assert!(!gw.has_exited(), "exited with requests in flight");
    be.release();
    for (i, t) in in_flight.into_iter().enumerate() {
        let r = within("an in-flight request", WAIT, t).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(Echo(r.json()).uri(), format!("/hold?id={i}"));
    }
    let status = gw.wait_exit(WAIT).await;
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_shutdown() {
    let be = Backend::echo().await;
    let toml = format!(
        "[server]\nhttp = \"{{{{HTTP}}}}\"\nadmin = \"{{{{ADMIN}}}}\"\ngrace_period = \"500ms\"\n\n{}",
        proxy_all(&be.url())
    );
    let mut gw = GatewayProcess::start(&toml).await;
    let client = gw.client();
    let url = gw.url("/hold");
    let stuck =
        tokio::spawn(async move { client.try_request(http::Method::GET, &url, &[], ()).await });
    wait_for("the request to reach the backend", WAIT, || {
        std::future::ready((be.holding() == 1).then_some(()))
    })
    .await;

    // The backend never answers; the gateway must still exit, and cleanly.
    gw.signal("TERM");
    let status = gw.wait_exit(WAIT).await;
    assert!(
        status.success(),
        "exit status {status}; output:\n{}",
        gw.logs()
    );
    assert!(gw.logs().contains("grace period over"), "{}", gw.logs());
    let r = within("the cut-off request to fail", WAIT, stuck)
        .await
        .unwrap();
    assert!(
        r.is_err(),
        "a request past the grace period got {:?}",
        r.map(|r| r.status)
    );
}
