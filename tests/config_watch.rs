//! Route files in a folder (`include`) and `[server] watch = true`: edits
//! are served without a reload request, a broken edit keeps the running
//! table (and is counted as a rejected reload), a fixed edit applies, a
//! file caught half-written gives no error, new files in the folder and
//! changed secret files are picked up.

mod support;

use std::io::Write as _;
use std::time::{Duration, Instant};

use support::gateway::Gateway;
use support::wait_for;

/// Generous bound for polling; the debounce is 300 ms.
const WAIT: Duration = Duration::from_secs(10);

const MAIN: &str = r#"include = ["routes.d/*.toml"]

[server]
http = "{{HTTP}}"
admin = "{{ADMIN}}"
state_dir = "{{DIR}}/state"
watch = true

[[route]]
host = "main.test"
respond = { body = "main v1" }
"#;

fn route(host: &str, body: &str) -> String {
    format!("[[route]]\nhost = \"{host}\"\nrespond = {{ body = \"{body}\" }}\n")
}

async fn body(gw: &Gateway, host: &str) -> String {
    let r = gw.client().get(&format!("http://{host}/")).await;
    format!("{} {}", r.status.as_u16(), r.text())
}

async fn serves(gw: &Gateway, host: &str, want: &str) -> Duration {
    let start = Instant::now();
    wait_for(&format!("{host} → {want}"), WAIT, || async {
        (body(gw, host).await == want).then_some(())
    })
    .await;
    start.elapsed()
}

async fn failures(gw: &Gateway) -> u64 {
    let text = gw.client().get(&gw.admin_url("/metrics")).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("portcullis_config_reloads_total{result=\"failure\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("reload failure counter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn included_files_are_routed_and_their_errors_name_file_and_line() {
    let gw = Gateway::builder(MAIN)
        .file("routes.d/a.toml", route("a.test", "a"))
        .file("routes.d/b.toml", route("b.test", "b"))
        .start()
        .await;
    assert_eq!(body(&gw, "a.test").await, "200 a");
    assert_eq!(body(&gw, "b.test").await, "200 b");
    let v = gw.client().get(&gw.admin_url("/routes")).await.json();
    let a = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == "a.test")
        .unwrap();
    assert!(
        a["source"].as_str().unwrap().ends_with("routes.d/a.toml:1"),
        "{v}"
    );

    // The same host in two files: rejected, both places named.
    gw.write_file("routes.d/c.toml", &format!("\n{}", route("A.test", "dup")));
    let (status, v) = gw.reload().await;
    assert_eq!(status.as_u16(), 422, "{v}");
    let e = &v["errors"][0];
    assert!(
        e["file"].as_str().unwrap().ends_with("routes.d/c.toml"),
        "{v}"
    );
    assert_eq!(e["line"], 2, "{v}");
    assert!(
        e["message"].as_str().unwrap().contains("routes.d/a.toml:1"),
        "{v}"
    );
    assert_eq!(body(&gw, "a.test").await, "200 a", "old table kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_edits_apply_broken_ones_keep_the_table() {
    let gw = Gateway::builder(MAIN)
        .file("routes.d/a.toml", route("a.test", "a"))
        .start()
        .await;
    assert_eq!(body(&gw, "main.test").await, "200 main v1");

    // An edit of the main file (written via rename) is served.
    gw.rewrite_config(&MAIN.replace("main v1", "main v2"));
    let took = serves(&gw, "main.test", "200 main v2").await;
    println!("main file edit served after {took:?}");

    // A new file in the included folder.
    gw.write_file("routes.d/new.toml", &route("new.test", "new"));
    let took = serves(&gw, "new.test", "200 new").await;
    println!("new included file served after {took:?}");

    // A broken edit: rejected and counted, the running table stays.
    assert_eq!(failures(&gw).await, 0);
    gw.write_file(
        "routes.d/a.toml",
        "[[route]]\nhost = \"a.test\"\nupstream = \"ftp://x\"\n",
    );
    wait_for("the broken edit is rejected", WAIT, || async {
        (failures(&gw).await >= 1).then_some(())
    })
    .await;
    assert_eq!(body(&gw, "a.test").await, "200 a");
    assert_eq!(body(&gw, "main.test").await, "200 main v2");

    // Fixed: applied.
    gw.write_file("routes.d/a.toml", &route("a.test", "a fixed"));
    serves(&gw, "a.test", "200 a fixed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_caught_half_written_is_not_an_error() {
    let gw = Gateway::builder(MAIN).start().await;
    let path = gw.dir().join("routes.d/slow.toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let text = route("slow.test", "complete");
    let (first, rest) = text.split_at(text.len() / 2);
    // Written in place, in two parts, like a slow copy: the first reload
    // (after the 300 ms debounce) sees half a file and tries again.
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(first.as_bytes()).unwrap();
    f.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    f.write_all(rest.as_bytes()).unwrap();
    drop(f);
    serves(&gw, "slow.test", "200 complete").await;
    assert_eq!(failures(&gw).await, 0, "no spurious rejection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secret_file_reloads() {
    let text = MAIN.replace(
        "watch = true\n",
        "watch = true\nadmin_token_file = \"token\"\n",
    );
    let gw = Gateway::builder(&text)
        .file("token", "first-token")
        .start()
        .await;
    let routes = |token: &'static str| {
        let url = gw.admin_url("/routes");
        async move { TestClientGet::get(&url, token).await }
    };
    assert_eq!(routes("first-token").await, 200);
    gw.write_file("token", "second-token");
    wait_for("the new admin token is in force", WAIT, || async {
        (routes("second-token").await == 200).then_some(())
    })
    .await;
    assert_eq!(routes("first-token").await, 401);
}

async fn reloads(gw: &Gateway, result: &str) -> u64 {
    let text = gw.client().get(&gw.admin_url("/metrics")).await.text();
    let prefix = format!("portcullis_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .expect("reload counter")
}

/// `[cluster]`'s key file is watched like the other secret files: a
/// changed file is reloaded (the running Redis link is kept until a
/// restart, as with any change to `[cluster]`), a broken one is refused.
/// Redis itself is not needed: the link connects lazily.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_cluster_key_file_reloads() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let text = MAIN.replace(
        "watch = true\n",
        &format!(
            "watch = true\n\n[cluster]\nredis = \"redis://127.0.0.1:{port}\"\nencryption_key_file = \"cluster.key\"\ninstance_name = \"gw1\"\n"
        ),
    );
    let gw = Gateway::builder(&text)
        .file("cluster.key", "ab".repeat(32))
        .start()
        .await;
    assert_eq!(reloads(&gw, "success").await, 1);
    gw.write_file("cluster.key", &"cd".repeat(32));
    wait_for("a reload after the key file changed", WAIT, || async {
        (reloads(&gw, "success").await == 2).then_some(())
    })
    .await;
    gw.write_file("cluster.key", "not a key");
    wait_for("the broken key file refused", WAIT, || async {
        (reloads(&gw, "failure").await == 1).then_some(())
    })
    .await;
    assert_eq!(body(&gw, "main.test").await, "200 main v1");
}

struct TestClientGet;

impl TestClientGet {
    async fn get(url: &str, token: &str) -> u16 {
        support::client::TestClient::new()
            .get_with(url, &[("authorization", &format!("Bearer {token}"))])
            .await
            .status
            .as_u16()
    }
}
