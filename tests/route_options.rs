//! The route options Nginx Proxy Manager users set per host, through the
//! live gateway against real backends: access lists (htpasswd files made
//! by Apache's `htpasswd`, argon2id by the argon2 crate), header rules and
//! security headers, rate limits, compression (decoded by curl and
//! Python; nginx serves the files), custom error pages and
//! `default_route`. Client addresses other than 127.0.0.1 come through a
//! trusted proxy's `X-Forwarded-For`.

mod support;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::backend::{Backend, Echo};
use support::client::TestClient;
use support::gateway::Gateway;

// --- helpers -------------------------------------------------------------------

/// One `user:hash` line from Apache's `htpasswd` (`flag`: B, 5, 2, m, s, p).
fn htpasswd(flag: &str, user: &str, pass: &str) -> String {
    let out = Command::new("htpasswd")
        .args([&format!("-nb{flag}"), user, pass])
        .output()
        .unwrap_or_else(|e| panic!("htpasswd not found ({e}): apt-get install -y apache2-utils"));
    assert!(out.status.success(), "htpasswd -{flag}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn argon2id_line(user: &str, pass: &str) -> String {
    use argon2::PasswordHasher as _;
    let h = argon2::Argon2::default()
        .hash_password_with_salt(pass.as_bytes(), b"portcullis-salt!")
        .unwrap();
    format!("{user}:{h}")
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

const SERVER: &str = r#"[server]
http = "{{HTTP}}"
admin = "{{ADMIN}}"
state_dir = "{{DIR}}/state"
trusted_proxies = ["127.0.0.1/32"]
"#;

fn route(host: &str, upstream: &str, extra: &str) -> String {
    format!("[[route]]\nhost = \"{host}\"\nupstream = \"{upstream}\"\n{extra}\n\n")
}

async fn get(
    c: &TestClient,
    gw: &Gateway,
    host: &str,
    path: &str,
    h: &[(&str, &str)],
) -> support::client::Resp {
    let mut headers = vec![("host", host)];
    headers.extend_from_slice(h);
    c.get_with(&gw.url(path), &headers).await
}

// --- access lists ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_accepts_each_hash_kind_and_challenges_without_one() {
    let be = Backend::echo().await;
    let file = [
        htpasswd("B", "bcrypt", "pw-bcrypt"),
        htpasswd("5", "sha512", "pw-sha512"),
        htpasswd("2", "sha256", "pw-sha256"),
        argon2id_line("argon", "pw-argon"),
    ]
    .join("\n");
    let toml = format!(
        "{SERVER}\n[access.family]\nbasic_auth_file = \"family.htpasswd\"\nrealm = \"Family\"\n\n\
         [access.passing]\nbasic_auth_file = \"family.htpasswd\"\npass_auth = true\n\n{}{}",
        route("fam.test", &be.url(), "access = \"family\""),
        route("pass.test", &be.url(), "access = \"passing\""),
    );
    let gw = Gateway::builder(&toml)
        .file("family.htpasswd", format!("{file}\n"))
        .start()
        .await;
    let c = gw.client();

    let r = get(c, &gw, "fam.test", "/", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"Family\", charset=\"UTF-8\"")
    );
    assert_eq!(be.served(), 0);

    for (user, pass) in [
        ("bcrypt", "pw-bcrypt"),
        ("sha512", "pw-sha512"),
        ("sha256", "pw-sha256"),
        ("argon", "pw-argon"),
    ] {
        let auth = basic(user, pass);
        let r = get(c, &gw, "fam.test", "/", &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{user}: {}", r.text());
        // pass_auth = false (default): the backend never sees the password.
        assert_eq!(Echo(r.json()).header("authorization"), None, "{user}");
        let wrong = basic(user, "nope");
        let r = get(c, &gw, "fam.test", "/", &[("authorization", &wrong)]).await;
        assert_eq!(r.status, 401, "{user} with a wrong password");
    }
    let auth = basic("bcrypt", "pw-bcrypt");
    let r = get(c, &gw, "pass.test", "/", &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(Echo(r.json()).header("authorization"), Some(auth.clone()));

    // The access log and GET /routes show the list.
    let routes = c.get_with(&gw.admin_url("/routes"), &[]).await.json();
    let fam = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == "fam.test")
        .unwrap()
        .clone();
    assert_eq!(fam["access"]["name"], "family");
    assert_eq!(fam["access"]["users"], 4);
    assert_eq!(fam["access"]["satisfy"], "any");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn satisfy_any_and_all_with_allow_and_deny() {
    let be = Backend::echo().await;
    let file = htpasswd("B", "alice", "secret");
    let lists = "[access.any]\nbasic_auth_file = \"p.htpasswd\"\nallow = [\"192.168.1.0/24\"]\ndeny = [\"192.168.1.13\"]\nsatisfy = \"any\"\n\n\
                 [access.all]\nbasic_auth_file = \"p.htpasswd\"\nallow = [\"192.168.1.0/24\"]\ndeny = [\"192.168.1.13\"]\nsatisfy = \"all\"\n\n\
                 [access.ips]\nallow = [\"10.0.0.0/8\"]\n\n";
    let toml = format!(
        "{SERVER}\n{lists}{}{}{}",
        route("any.test", &be.url(), "access = \"any\""),
        route("all.test", &be.url(), "access = \"all\""),
        route("ips.test", &be.url(), "access = \"ips\""),
    );
    let gw = Gateway::builder(&toml)
        .file("p.htpasswd", file)
        .start()
        .await;
    let c = gw.client();
    let good = basic("alice", "secret");
    let bad = basic("alice", "wrong");
    // (host, client address, credentials, expected status)
    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("any.test", "192.168.1.5", None, 200),  // address suffices
        ("any.test", "192.168.1.13", None, 401), // denied address: password needed
        ("any.test", "192.168.1.13", Some(&good), 200),
        ("any.test", "203.0.113.9", None, 401),
        ("any.test", "203.0.113.9", Some(&good), 200),
        ("any.test", "203.0.113.9", Some(&bad), 401),
        ("all.test", "192.168.1.5", None, 401), // both needed
        ("all.test", "192.168.1.5", Some(&good), 200),
        ("all.test", "192.168.1.13", Some(&good), 403), // denied address
        ("all.test", "203.0.113.9", Some(&good), 403),  // not allowed
        ("ips.test", "10.1.2.3", None, 200),            // address list only
        ("ips.test", "203.0.113.9", None, 403),
    ];
    for (host, ip, cred, want) in cases {
        let mut h = vec![("x-forwarded-for", *ip)];
        if let Some(c) = cred {
            h.push(("authorization", c));
        }
        let r = get(c, &gw, host, "/", &h).await;
        assert_eq!(r.status.as_u16(), *want, "{host} from {ip} with {cred:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_passwords_are_rate_limited_per_address_and_reload_rereads_the_file() {
    let be = Backend::echo().await;
    let toml = format!(
        "{SERVER}\n[access.a]\nbasic_auth_file = \"p.htpasswd\"\n\n{}",
        route("a.test", &be.url(), "access = \"a\"")
    );
    let gw = Gateway::builder(&toml)
        .file("p.htpasswd", htpasswd("B", "alice", "old"))
        .start()
        .await;
    let c = gw.client();
    let bad = basic("alice", "guess");
    for i in 0..10 {
        let r = get(
            c,
            &gw,
            "a.test",
            "/",
            &[("x-forwarded-for", "198.51.100.7"), ("authorization", &bad)],
        )
        .await;
        assert_eq!(r.status, 401, "attempt {i}");
    }
    let r = get(
        c,
        &gw,
        "a.test",
        "/",
        &[("x-forwarded-for", "198.51.100.7"), ("authorization", &bad)],
    )
    .await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Even the right password waits; another address does not.
    let good = basic("alice", "old");
    let r = get(
        c,
        &gw,
        "a.test",
        "/",
        &[
            ("x-forwarded-for", "198.51.100.7"),
            ("authorization", &good),
        ],
    )
    .await;
    assert_eq!(r.status, 429);
    let r = get(
        c,
        &gw,
        "a.test",
        "/",
        &[
            ("x-forwarded-for", "198.51.100.8"),
            ("authorization", &good),
        ],
    )
    .await;
    assert_eq!(r.status, 200);

    // A changed htpasswd file is read on reload (and the cache starts over).
    gw.write_file("p.htpasswd", &htpasswd("B", "alice", "new"));
    let (status, body) = gw.reload().await;
    assert_eq!(status, 200, "{body}");
    let r = get(
        c,
        &gw,
        "a.test",
        "/",
        &[
            ("x-forwarded-for", "198.51.100.9"),
            ("authorization", &good),
        ],
    )
    .await;
    assert_eq!(r.status, 401, "the old password after reload");
    let new = basic("alice", "new");
    let r = get(
        c,
        &gw,
        "a.test",
        "/",
        &[("x-forwarded-for", "198.51.100.9"), ("authorization", &new)],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[test]
fn check_refuses_weak_hashes_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, words) in [
        ("m", "MD5"),
        ("s", "SHA-1"),
        ("p", "plain-text"),
        ("d", "plain-text or DES"),
    ] {
        let file = format!(
            "{}\n{}\n",
            htpasswd("B", "ok", "pw"),
            htpasswd(flag, "weak", "pw")
        );
        let hp = dir.path().join("p.htpasswd");
        std::fs::write(&hp, file).unwrap();
        let cfg = dir.path().join("c.toml");
        let src = "[server]\nhttp = \"127.0.0.1:0\"\n\n[access.a]\nbasic_auth_file = \"p.htpasswd\"\n\n[[route]]\nhost = \"a.test\"\nrespond = {}\naccess = \"a\"\n";
        std::fs::write(&cfg, src).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "-{flag} accepted");
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("c.toml:5:"), "-{flag}: {text}");
        assert!(text.contains("access.a.basic_auth_file"), "-{flag}: {text}");
        assert!(
            text.contains("p.htpasswd:2: user `weak`"),
            "-{flag}: {text}"
        );
        assert!(text.contains(words), "-{flag}: {text}");
    }
    // A route naming a list that does not exist.
    let src = "[server]\nhttp = \"127.0.0.1:0\"\n\n[[route]]\nhost = \"a.test\"\nrespond = {}\naccess = \"nope\"\n";
    let e = portcullis::config::parse(std::path::Path::new("c.toml"), src).unwrap_err();
    assert_eq!(e.0[0].line, 7, "{e}");
    assert!(e.0[0].message.contains("no [access.nope]"), "{e}");
}

// --- header rules --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_both_ways_with_placeholders_and_security_headers() {
    let be = Backend::echo().await;
    let extra = r#"request_headers = { set = { "X-Env" = "prod", "X-Client" = "{client_ip} via {scheme} to {host}" }, add = { "X-Tag" = "{request_id}" }, remove = ["X-Debug"] }
response_headers = { set = { "Cache-Control" = "no-store" }, add = { "X-Served-For" = "{client_ip}" }, remove = ["Server", "X-Powered-By"] }
security_headers = true"#;
    let toml = format!("{SERVER}\n{}", route("h.test", &be.url(), extra));
    let gw = Gateway::builder(&toml).start().await;
    let c = gw.client();
    let path = "/x?h=x-powered-by:php&h=server:apache&h=x-frame-options:DENY";
    let r = get(
        c,
        &gw,
        "h.test",
        path,
        &[
            ("x-debug", "1"),
            ("x-env", "dev"),
            ("x-tag", "mine"),
            ("x-request-id", "req-42"),
            ("x-forwarded-for", "192.0.2.1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let e = Echo(r.json());
    assert_eq!(e.header("x-debug"), None);
    assert_eq!(e.header("x-env").as_deref(), Some("prod"));
    assert_eq!(
        e.header("x-client").as_deref(),
        Some("192.0.2.1 via http to h.test")
    );
    assert_eq!(e.header_all("x-tag"), ["mine", "req-42"]);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-served-for"), Some("192.0.2.1"));
    assert!(r.header("x-powered-by").is_none());
    assert!(r.header("server").is_none());
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.header("referrer-policy"),
        Some("strict-origin-when-cross-origin")
    );
    // The backend's own X-Frame-Options is kept.
    assert_eq!(r.header("x-frame-options"), Some("DENY"));

    let routes = c.get_with(&gw.admin_url("/routes"), &[]).await.json();
    let rt = &routes["routes"][0];
    assert_eq!(rt["request_headers"]["set"]["x-env"], "prod");
    assert_eq!(rt["response_headers"]["remove"][0], "server");
    assert_eq!(rt["security_headers"], true);
}

/// Rules whose values have no placeholder are written as header lines
/// after the client's headers instead of through the header map: the
/// backend must see exactly what the map would have given it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literal_header_rules_replace_append_and_remove_like_any_rule() {
    let be = Backend::echo().await;
    let extra = r#"request_headers = { set = { "X-Env" = "prod", "X-Both" = "set" }, add = { "X-Tag" = "fixed", "X-Both" = "added" }, remove = ["X-Debug"] }
response_headers = { set = { "Cache-Control" = "no-store" }, remove = ["X-Powered-By"] }"#;
    let toml = format!("{SERVER}\n{}", route("lit.test", &be.url(), extra));
    let gw = Gateway::builder(&toml).start().await;
    let c = gw.client();
    let r = get(
        c,
        &gw,
        "lit.test",
        "/x?h=x-powered-by:php&h=cache-control:max-age=60",
        &[
            ("x-debug", "1"),
            ("x-env", "dev"),
            ("x-tag", "mine"),
            ("x-both", "client"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let e = Echo(r.json());
    assert_eq!(e.header("x-debug"), None);
    assert_eq!(e.header_all("x-env"), ["prod"]);
    assert_eq!(e.header_all("x-tag"), ["mine", "fixed"]);
    assert_eq!(e.header_all("x-both"), ["set", "added"]);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r.header("x-powered-by").is_none());
}

#[test]
fn rules_may_not_touch_headers_the_gateway_manages() {
    for name in [
        "X-authentik-username",
        "X_Forwarded_User",
        "Remote-User",
        "X-Forwarded-For",
        "X-Real-IP",
        "Connection",
        "Transfer-Encoding",
        "X-Auth-Request-Email",
    ] {
        let src = format!(
            "[server]\nhttp = \"127.0.0.1:0\"\n\n[[route]]\nhost = \"a.test\"\nrespond = {{}}\nrequest_headers = {{ set = {{ \"{name}\" = \"x\" }} }}\n"
        );
        let e = portcullis::config::parse(std::path::Path::new("c.toml"), &src).unwrap_err();
        assert_eq!(e.0.len(), 1, "{name}: {e}");
        assert_eq!(e.0[0].line, 7, "{name}: {e}");
        assert!(e.0[0].key.contains("request_headers.set"), "{name}: {e}");
        assert!(e.0[0].message.contains("cannot be used"), "{name}: {e}");
    }
    // Everything the pipeline strips as an identity or forwarding header
    // is refused by the config check too.
    for name in [
        "x-forwarded-user",
        "x-forwarded-email",
        "x-forwarded-preferred-username",
        "x-forwarded-groups",
        "x-forwarded-access-token",
        "x-forwarded-uid",
        "remote-user",
        "remote-email",
        "remote-name",
        "remote-groups",
        "x-remote-user",
        "x-webauth-user",
        "x-webauth-email",
        "x-webauth-name",
        "x-webauth-groups",
        "x-authentik-uid",
        "x-auth-request-user",
        "forwarded",
        "x-real-ip",
    ] {
        assert!(
            portcullis::proxy::headers::is_identity_header(name)
                || portcullis::proxy::headers::is_forwarding_header(name),
            "{name}"
        );
        assert!(
            portcullis::config::reserved_header(name).is_some(),
            "{name}"
        );
    }
    let src = "[server]\nhttp = \"127.0.0.1:0\"\n\n[[route]]\nhost = \"a.test\"\nrespond = {}\nresponse_headers = { set = { \"X-A\" = \"{nope}\" } }\n";
    let e = portcullis::config::parse(std::path::Path::new("c.toml"), src).unwrap_err();
    assert!(e.0[0].message.contains("not a placeholder"), "{e}");
}

// --- rate limits ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_after_the_burst_per_key() {
    let be = Backend::echo().await;
    let toml = format!(
        "{SERVER}\n{}{}",
        route(
            "r.test",
            &be.url(),
            "rate_limit = { requests = 60, per = \"1m\", burst = 3, by = \"ip+route\" }"
        ),
        route(
            "u.test",
            &be.url(),
            "rate_limit = { requests = 1, per = \"1h\", burst = 2 }"
        ),
    );
    let gw = Gateway::builder(&toml).start().await;
    let c = gw.client();
    for i in 0..3 {
        let r = get(c, &gw, "r.test", "/", &[("x-forwarded-for", "192.0.2.10")]).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    let r = get(c, &gw, "r.test", "/", &[("x-forwarded-for", "192.0.2.10")]).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "one request a second: {retry}");
    // Another address has its own bucket; so does another route.
    let r = get(c, &gw, "r.test", "/", &[("x-forwarded-for", "192.0.2.11")]).await;
    assert_eq!(r.status, 200);
    for _ in 0..2 {
        assert_eq!(
            get(c, &gw, "u.test", "/", &[("x-forwarded-for", "192.0.2.10")])
                .await
                .status,
            200
        );
    }
    let r = get(c, &gw, "u.test", "/", &[("x-forwarded-for", "192.0.2.10")]).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1700..=3600).contains(&retry), "{retry}");

    let m = c.get_with(&gw.admin_url("/metrics"), &[]).await.text();
    assert!(
        m.contains("portcullis_rate_limited_total{route=\"r.test/\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_rate_limited_total{route=\"u.test/\"} 1"),
        "{m}"
    );
    let routes = c.get_with(&gw.admin_url("/routes"), &[]).await.json();
    assert_eq!(routes["routes"][0]["rate_limit"]["by"], "ip+route");
}

// --- compression ----------------------------------------------------------------

/// nginx serving a folder (with Range support and types by extension).
struct StaticNginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl StaticNginx {
    fn start(files: &[(&str, Vec<u8>)]) -> StaticNginx {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("www");
        std::fs::create_dir_all(&root).unwrap();
        for (n, b) in files {
            std::fs::write(root.join(n), b).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  include /etc/nginx/mime.types;\n  types {{ application/json json; }}\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n  server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n    location /nt/ {{ add_header Cache-Control no-transform; alias {d}/www/; }}\n  }}\n}}\n",
            d = dir.path().display()
        );
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let bin = if std::path::Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start nginx: {e} (apt-get install -y nginx)"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        StaticNginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for StaticNginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn json_body(n: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item number {i}\",\"ok\":true}}"
        ));
        i += 1;
    }
    s.push(']');
    s.into_bytes()
}

/// curl through the gateway: (status line headers, decoded body).
fn curl(addr: SocketAddr, host: &str, path: &str, extra: &[&str]) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("h");
    let out = Command::new("curl")
        .args(["-sS", "-D"])
        .arg(&hdr)
        .args(["-H", &format!("Host: {host}")])
        .args(extra)
        .arg(format!("http://{addr}{path}"))
        .output()
        .unwrap_or_else(|e| panic!("curl not found ({e}): apt-get install -y curl"));
    assert!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(hdr).unwrap().to_ascii_lowercase(),
        out.stdout,
    )
}

fn python_decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    let code = match encoding {
        "gzip" => {
            "import sys,gzip; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))"
        }
        "br" => {
            "import sys,brotli; sys.stdout.buffer.write(brotli.decompress(sys.stdin.buffer.read()))"
        }
        "zstd" => {
            "import sys,zstandard; sys.stdout.buffer.write(zstandard.ZstdDecompressor().decompressobj().decompress(sys.stdin.buffer.read()))"
        }
        other => panic!("{other}"),
    };
    // Debian's python3, where apt installs python3-brotli and python3-zstandard.
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let st = child.wait_with_output().unwrap();
    assert!(
        st.status.success(),
        "python3 cannot decode {encoding}: {} (apt-get install -y python3-brotli python3-zstandard)",
        String::from_utf8_lossy(&st.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_by_accept_encoding_decoded_by_real_clients() {
    let json = json_body(10 * 1024);
    let ng = StaticNginx::start(&[
        ("data.json", json.clone()),
        ("small.json", b"{\"a\":1}".to_vec()),
        ("pic.png", vec![0x89; 8192]),
        ("pre.json", json.clone()),
    ]);
    let toml = format!(
        "{SERVER}\n{}",
        route("z.test", &format!("http://{}", ng.addr), "compress = true")
    );
    let gw = Gateway::builder(&toml).start().await;
    let addr = gw.http_addr();
    let (json2, addr2) = (json.clone(), addr);
    tokio::task::spawn_blocking(move || {
        let json = json2;
        let addr = addr2;
        // curl --compressed asks for what it can decode and decodes it.
        let (h, body) = curl(addr, "z.test", "/data.json", &["--compressed"]);
        assert!(h.contains("content-encoding: "), "{h}");
        assert!(h.contains("vary: accept-encoding"), "{h}");
        assert!(!h.contains("content-length"), "{h}");
        assert_eq!(body, json);
        // Each encoding on its own, decoded by Python.
        for enc in ["gzip", "br", "zstd"] {
            let (h, raw) = curl(
                addr,
                "z.test",
                "/data.json",
                &["-H", &format!("Accept-Encoding: {enc}")],
            );
            assert!(
                h.contains(&format!("content-encoding: {enc}")),
                "{enc}: {h}"
            );
            assert!(raw.len() < json.len() / 3, "{enc}: {} bytes", raw.len());
            assert_eq!(python_decode(enc, &raw), json, "{enc}");
        }
        // q-values: the client's preference wins; q=0 refuses.
        let (h, _) = curl(
            addr,
            "z.test",
            "/data.json",
            &["-H", "Accept-Encoding: gzip;q=0.5, br;q=1.0"],
        );
        assert!(h.contains("content-encoding: br"), "{h}");
        let (h, raw) = curl(
            addr,
            "z.test",
            "/data.json",
            &["-H", "Accept-Encoding: gzip;q=0"],
        );
        assert!(!h.contains("content-encoding"), "{h}");
        assert_eq!(raw, json);
        // Not compressed: images, small bodies, ranges, no-transform.
        for (path, extra) in [
            ("/pic.png", vec![]),
            ("/small.json", vec![]),
            ("/data.json", vec!["-H", "Range: bytes=0-99"]),
            ("/nt/data.json", vec![]),
        ] {
            let mut args = vec!["-H", "Accept-Encoding: gzip, br, zstd"];
            args.extend(extra);
            let (h, _) = curl(addr, "z.test", path, &args);
            assert!(!h.contains("content-encoding"), "{path}: {h}");
        }
    })
    .await
    .unwrap();
}

/// A backend that sends 256 KiB of text, then waits, then the rest.
async fn slow_backend(release: tokio::sync::oneshot::Receiver<()>) -> SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let chunk: String = (0..4096)
            .map(|i| format!("line {i} of a log that compresses\n"))
            .collect();
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
        s.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..2 {
            s.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
                .await
                .unwrap();
        }
        let _ = release.await;
        s.write_all(b"5\r\nlast\n\r\n0\r\n\r\n").await.unwrap();
        let _ = s.shutdown().await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_streams_before_the_backend_finishes() {
    use http_body_util::BodyExt as _;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let be = slow_backend(rx).await;
    let toml = format!(
        "{SERVER}\n{}",
        route("s.test", &format!("http://{be}"), "compress = true")
    );
    let gw = Gateway::builder(&toml).start().await;
    let resp = gw
        .client()
        .send(
            http::Method::GET,
            &gw.url("/"),
            &[("host", "s.test"), ("accept-encoding", "gzip")],
            support::client::TestBody::empty(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let mut body = resp.into_body();
    // The first compressed bytes arrive while the backend still holds the end.
    let first = support::within("first compressed bytes", Duration::from_secs(10), async {
        loop {
            let f = body.frame().await.expect("a frame").expect("no error");
            if let Ok(d) = f.into_data()
                && !d.is_empty()
            {
                return d;
            }
        }
    })
    .await;
    assert_eq!(&first[..2], &[0x1f, 0x8b], "a gzip stream");
    tx.send(()).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    let text = python_decode("gzip", &all);
    assert!(text.ends_with(b"last\n"));
}

// --- error pages and default_route ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_error_pages_with_status_and_request_id() {
    let down = Backend::refusing().await;
    let toml = format!(
        "[server]\nhttp = \"{{{{HTTP}}}}\"\nadmin = \"{{{{ADMIN}}}}\"\nstate_dir = \"{{{{DIR}}}}/state\"\nerror_pages = {{ 404 = \"pages/404.html\" }}\ndefault_route = {{ redirect = \"https://www.example.com\" }}\n\n{}",
        route(
            "p.test",
            &down.url(),
            "error_pages = { \"5xx\" = \"pages/5xx.html\" }"
        )
    );
    let gw = Gateway::builder(&toml)
        .file("pages/404.html", "<h1>Lost {status}</h1> id={request_id}")
        .file("pages/5xx.html", "<h1>Down {status}</h1> id={request_id}")
        .start()
        .await;
    let c = gw.client();
    let r = get(c, &gw, "p.test", "/", &[("x-request-id", "abc-123")]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "<h1>Down 502</h1> id=abc-123");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    // The JSON variant stays for clients that prefer it.
    let r = get(c, &gw, "p.test", "/", &[("accept", "application/json")]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["status"], 502);
    // An unknown host: the default route's redirect, path kept.
    let r = get(c, &gw, "nowhere.test", "/a?b=1", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://www.example.com/a?b=1"));
    let routes = c.get_with(&gw.admin_url("/routes"), &[]).await.json();
    assert_eq!(
        routes["default_route"]["redirect"],
        "https://www.example.com"
    );
    assert_eq!(
        routes["routes"][0]["error_pages"]["5xx"]
            .as_str()
            .map(|p| p.ends_with("pages/5xx.html")),
        Some(true)
    );
    assert_eq!(
        routes["routes"][0]["error_pages"]["404"]
            .as_str()
            .map(|p| p.ends_with("pages/404.html")),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_page_for_unknown_hosts() {
    let toml = "[server]\nhttp = \"{{HTTP}}\"\nadmin = \"{{ADMIN}}\"\nstate_dir = \"{{DIR}}/state\"\nerror_pages = { 404 = \"404.html\" }\n\n[[route]]\nhost = \"a.test\"\nrespond = {}\n";
    let gw = Gateway::builder(toml)
        .file("404.html", "nothing here ({status}, {request_id})")
        .start()
        .await;
    let r = get(gw.client(), &gw, "b.test", "/", &[("x-request-id", "r-9")]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "nothing here (404, r-9)");
}

/// `default_route = "drop"`: an unknown host gets no answer at all (nginx's
/// `return 444`): over HTTP/1 the connection closes before a byte is sent,
/// over HTTP/2 the stream is reset and the connection serves on; the
/// access log says 444 with error `no_route`; `portcullis check` accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_route_drop_closes_without_answering() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let toml = "[server]\nhttp = \"{{HTTP}}\"\nadmin = \"{{ADMIN}}\"\nstate_dir = \"{{DIR}}/state\"\ndefault_route = \"drop\"\n\n[[route]]\nhost = \"a.test\"\nrespond = { body = \"here\" }\n";
    let gw = Gateway::builder(toml).spawn_binary().await;
    let check = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(gw.config_path())
        .output()
        .unwrap();
    assert!(check.status.success(), "check refused drop: {check:?}");

    // HTTP/1: a known host answered, then an unknown one on the same
    // connection: the connection ends with nothing more.
    let mut s = tokio::net::TcpStream::connect(gw.http_addr())
        .await
        .unwrap();
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: a.test\r\n\r\nGET /two HTTP/1.1\r\nHost: nowhere.test\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the connection closed")
        .expect("a clean close (FIN), not a reset");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("here"), "only the first answer: {text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    // Alone on a connection: not one byte.
    let mut s = tokio::net::TcpStream::connect(gw.http_addr())
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the connection closed")
        .expect("a clean close");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

    // HTTP/2 (h2c): the stream is reset, the connection stays usable.
    let h2 = TestClient::h2c_to(gw.http_addr());
    let e = h2
        .try_request(
            http::Method::GET,
            "http://nowhere.test/x",
            &[],
            support::client::TestBody::empty(),
        )
        .await
        .expect_err("no answer for an unknown host over h2");
    assert!(
        e.contains("INTERNAL_ERROR") || e.contains("internal error"),
        "{e}"
    );
    let r = h2.get("http://a.test/").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "here"));

    let line = support::wait_for(
        "the access log line of a drop",
        Duration::from_secs(10),
        || async {
            gw.logs()
                .lines()
                .find(|l| l.contains("nowhere.test") && l.contains("444") && l.contains("no_route"))
                .map(str::to_string)
        },
    )
    .await;
    assert!(line.contains("\"status\":444"), "{line}");
    let routes = TestClient::new()
        .get(&format!("http://{}/routes", gw.admin_addr()))
        .await
        .json();
    assert_eq!(routes["default_route"], "drop");
}

/// Every status the gateway answers with itself takes the configured
/// page: an access list's 401 (its challenge kept), a rate limit's 429
/// (`Retry-After` kept), single sign-on's 401 and 503 (provider
/// unreachable), 502 and 504 from backends that refuse or hang. A
/// backend's own 503 passes through untouched; JSON clients keep JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_pages_for_401_429_and_backend_failures() {
    let echo = Backend::echo().await;
    let down = Backend::refusing().await;
    let hanging = Backend::hanging().await;
    let nobody = Backend::refusing().await;
    let toml = format!(
        "{SERVER}error_pages = {{ \"4xx\" = \"pages/4xx.html\", \"5xx\" = \"pages/5xx.html\" }}\n\n\
         [oidc.idp]\nissuer = \"{}/application/o/x/\"\nclient_id = \"x\"\nclient_secret_file = \"secret\"\ninsecure_cookies = true\n\n\
         [access.family]\nbasic_auth_file = \"family.htpasswd\"\nrealm = \"Family\"\n\n{}{}{}{}{}{}",
        nobody.url(),
        route(
            "pw.test",
            &echo.url(),
            "access = \"family\"\nerror_pages = { 401 = \"pages/401.html\" }"
        ),
        route(
            "limited.test",
            &echo.url(),
            "rate_limit = { requests = 1, per = \"1h\", burst = 1 }"
        ),
        route("sso.test", &echo.url(), "auth = { oidc = \"idp\" }"),
        route("dead.test", &down.url(), ""),
        route("slow.test", &hanging.url(), "timeout = \"200ms\""),
        route("app.test", &echo.url(), ""),
    );
    let gw = Gateway::builder(&toml)
        .file(
            "family.htpasswd",
            format!("{}\n", htpasswd("B", "ann", "pw")),
        )
        .file("secret", "s3cret")
        .file(
            "pages/401.html",
            "<h1>Family only ({status})</h1> id={request_id}",
        )
        .file("pages/4xx.html", "<h1>Client {status}</h1> id={request_id}")
        .file("pages/5xx.html", "<h1>Down {status}</h1> id={request_id}")
        .start()
        .await;
    let c = gw.client();
    let id = [("x-request-id", "req-7")];
    let html = [("x-request-id", "req-7"), ("accept", "text/html")];

    // An access list's 401: the route's own page, the challenge kept.
    let r = get(c, &gw, "pw.test", "/", &id).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), "<h1>Family only (401)</h1> id=req-7");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"Family\", charset=\"UTF-8\"")
    );
    let r = get(c, &gw, "pw.test", "/", &[("accept", "application/json")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["status"], 401, "JSON clients keep JSON");
    let r = get(
        c,
        &gw,
        "pw.test",
        "/",
        &[("authorization", &basic("ann", "pw"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A rate limit's 429: the server's 4xx page, Retry-After kept.
    assert_eq!(get(c, &gw, "limited.test", "/", &id).await.status, 200);
    let r = get(c, &gw, "limited.test", "/", &id).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.text(), "<h1>Client 429</h1> id=req-7");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");

    // Single sign-on with the provider unreachable: 503 for a browser
    // (Retry-After kept), 401 for an API client (its challenge kept).
    let r = get(c, &gw, "sso.test", "/", &html).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.text(), "<h1>Down 503</h1> id=req-7");
    assert!(r.header("retry-after").is_some());
    let r = get(c, &gw, "sso.test", "/", &id).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), "<h1>Client 401</h1> id=req-7");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));

    // Backend failures: 502 (refused) and 504 (no answer in time).
    let r = get(c, &gw, "dead.test", "/", &id).await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (502, "<h1>Down 502</h1> id=req-7".into())
    );
    let r = get(c, &gw, "slow.test", "/", &id).await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (504, "<h1>Down 504</h1> id=req-7".into())
    );

    // A backend's own error answer is its own.
    let r = get(c, &gw, "app.test", "/status?code=503", &id).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["uri"], "/status?code=503", "the backend's body");
}

/// The gateway's own endpoints under `/.portcullis/` on a host with an
/// access list: forward-auth (other proxies asking whether to serve a
/// request) refuses a route with an access list, which only requests
/// proxied here can pass, rather than answer 200 for it; a route without
/// one is answered as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_refuses_routes_with_an_access_list() {
    let echo = Backend::echo().await;
    let nobody = Backend::refusing().await;
    // The endpoints exist once a provider is configured (here one that
    // cannot be reached: the public routes asked about never need it).
    let toml = format!(
        "{SERVER}\n[oidc.idp]\nissuer = \"{}/application/o/x/\"\nclient_id = \"x\"\nclient_secret_file = \"secret\"\n\n\
         [access.office]\nallow = [\"127.0.0.0/8\"]\n\n{}{}",
        nobody.url(),
        route("listed.test", &echo.url(), "access = \"office\""),
        route("open.test", &echo.url(), ""),
    );
    let gw = Gateway::builder(&toml)
        .file("secret", "s3cret")
        .start()
        .await;
    let c = gw.client();
    let ask = |host: &'static str| {
        let c = c.clone();
        let url = gw.url("/.portcullis/auth");
        async move {
            c.get_with(
                &url,
                &[
                    ("host", "gw.test"),
                    ("x-forwarded-host", host),
                    ("x-forwarded-uri", "/page"),
                ],
            )
            .await
        }
    };
    assert_eq!(ask("open.test").await.status, 200);
    assert_eq!(ask("listed.test").await.status, 403);
    // Proxied here, the same client passes the list.
    assert_eq!(get(c, &gw, "listed.test", "/page", &[]).await.status, 200);
}

// --- access lists with single sign-on ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_list_and_sso_must_both_pass() {
    use support::idp::{SsoEnv, SsoOpts};
    let dir = tempfile::tempdir().unwrap();
    let hp = dir.path().join("p.htpasswd");
    std::fs::write(&hp, htpasswd("B", "family", "letmein")).unwrap();
    let routes = format!(
        "[access.pw]\nbasic_auth_file = \"{}\"\n\n[access.office]\nallow = [\"10.0.0.0/8\"]\n\n\
         [[route]]\nhost = \"pw.localtest\"\nupstream = \"{{UP}}\"\nauth = {{ oidc = \"authentik\" }}\naccess = \"pw\"\n\n\
         [[route]]\nhost = \"office.localtest\"\nupstream = \"{{UP}}\"\nauth = {{ oidc = \"authentik\" }}\naccess = \"office\"\n",
        hp.display()
    );
    // The echo backend's URL is only known inside SsoEnv: any backend will do.
    let be = Backend::echo().await;
    let env = SsoEnv::start(SsoOpts {
        provider: "cookie_domain = \"localtest\"",
        routes: routes.replace("{UP}", &be.url()),
        ..SsoOpts::default()
    })
    .await;
    let good = basic("family", "letmein");

    // Neither: the access list asks first.
    let r = env
        .gw
        .client()
        .get_with(&env.url("pw.localtest", "/"), &[])
        .await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic "));
    // The password alone: single sign-on still applies.
    let r = env
        .gw
        .client()
        .get_with(
            &env.url("pw.localtest", "/"),
            &[("authorization", &good), ("accept", "text/html")],
        )
        .await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(r.header("location").unwrap().starts_with(env.idp.issuer()));

    let (mut b, _) = env.signed_in("alice", "app.localtest").await;
    // Signed in, no password: 401.
    let r = b
        .request(
            http::Method::GET,
            &env.url("pw.localtest", "/"),
            &[],
            support::client::TestBody::empty(),
        )
        .await;
    assert_eq!(r.status, 401);
    // Both: through, as alice, without the password.
    let r = b
        .request(
            http::Method::GET,
            &env.url("pw.localtest", "/"),
            &[("authorization", &good)],
            support::client::TestBody::empty(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = Echo(r.json());
    assert_eq!(e.header("x-authentik-username").as_deref(), Some("alice"));
    assert_eq!(e.header("authorization"), None);
    // Signed in, but the address is not on the list.
    let r = b.get(&env.url("office.localtest", "/")).await;
    assert_eq!(r.status, 403);
    assert_eq!(be.served(), 1);
}
