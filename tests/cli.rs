//! The `portcullis` command line: `check`, `reload` against a running
//! binary, and `--help` of every subcommand.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::gateway::expand;

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env_remove("PORTCULLIS_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run portcullis")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_config(dir: &Path, name: &str, toml: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, expand(toml, dir)).unwrap();
    p.display().to_string()
}

const VALID: &str = r#"[server]
http = "127.0.0.1:8080"
admin = "127.0.0.1:9180"

[[route]]
host = "app.example.com"
upstream = "http://127.0.0.1:3000"

[[route]]
host = "*.example.com"
redirect = "https://www.example.com"

[[route]]
host = "app.example.com"
path = "/status"
respond = { body = "ok" }
"#;

/// Four errors, each on a known line.
const BROKEN: &str = r#"[server]
http = "127.0.0.1:8080"
admin = "127.0.0.1:9180"
grace_period = "soon"

[[route]]
host = "a.test"
upstream = "10.0.0.1"

[[route]]
host = "b.test"
hots = "typo"
respond = {}

[[route]]
host = "https://c.test"
respond = {}
"#;

#[test]
fn check_prints_a_one_line_summary_for_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "ok.toml", VALID);
    let out = portcullis(&["check", "--config", &path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let line = lines[0];
    assert!(line.contains(&path), "{line}");
    assert!(line.contains("3 routes"), "{line}");
    assert!(line.contains("2 hosts"), "{line}");
    assert!(line.contains("http 127.0.0.1:8080"), "{line}");
    assert!(line.contains("admin 127.0.0.1:9180"), "{line}");

    // -c works as well as --config.
    let out = portcullis(&["check", "-c", &path]);
    assert!(out.status.success());
}

#[test]
fn check_prints_every_error_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "broken.toml", BROKEN);
    let out = portcullis(&["check", "--config", &path]);
    assert!(!out.status.success(), "a broken config passed check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for (line, key) in [
        (4, "server.grace_period"),
        (8, "route[1].upstream"),
        (12, "route[2].hots"),
        (16, "route[3].host"),
    ] {
        let prefix = format!("{path}:{line}:");
        assert!(
            stderr
                .lines()
                .any(|l| l.trim_start().starts_with(&prefix) && l.contains(&format!(": {key}: "))),
            "no error for {key} at line {line} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 errors"), "{stderr}");
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));

    // A missing file is an error too, naming the file.
    let missing = dir.path().join("nope.toml").display().to_string();
    let out = portcullis(&["check", "--config", &missing]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&missing),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_reloads_a_running_gateway_and_reports_rejection() {
    let server = "[server]\nhttp = \"{{HTTP}}\"\nadmin = \"{{ADMIN}}\"\nadmin_token_file = \"admin.token\"\n\n";
    let route =
        |body: &str| format!("[[route]]\nhost = \"*\"\nrespond = {{ body = \"{body}\" }}\n");
    let gw = support::gateway::Gateway::builder(&format!("{server}{}", route("v1")))
        .file("admin.token", "cli-token")
        .spawn_binary()
        .await;
    let c = gw.client();
    let config = gw.config_path().display().to_string();
    let admin = gw.admin_addr().to_string();
    assert_eq!(c.get(&gw.url("/")).await.text(), "v1");

    // Success: the token comes from admin_token_file in the config.
    gw.rewrite_config(&format!("{server}{}", route("v2")));
    let out = portcullis(&["reload", "--config", &config, "--admin", &admin]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("reloaded: generation 2"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(c.get(&gw.url("/")).await.text(), "v2");

    // A config that fails validation is not sent; every error is printed.
    gw.rewrite_config(&format!("{server}[[route]]\nhost = \"*\"\nupstream = \"nope\"\n\n[[route]]\nhost = \"b.test\"\nrespond = {{ status = 42 }}\n"));
    let out = portcullis(&["reload", "--config", &config, "--admin", &admin]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("route[1].upstream"), "{stderr}");
    assert!(stderr.contains("route[2].respond"), "{stderr}");
    assert!(stderr.contains("not reloading"), "{stderr}");
    assert_eq!(c.get(&gw.url("/")).await.text(), "v2");

    // The gateway itself rejects its (broken) file: the command says so
    // and lists the gateway's errors. (The command reads admin address and
    // token from a separate, valid file here.)
    let other_dir = tempfile::tempdir().unwrap();
    std::fs::write(other_dir.path().join("admin.token"), "cli-token").unwrap();
    let other = write_config(
        other_dir.path(),
        "cli.toml",
        &format!("{server}{}", route("x")),
    );
    let out = portcullis(&["reload", "--config", &other, "--admin", &admin]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("reload rejected"), "{stderr}");
    assert!(stderr.contains(&format!("{config}:")), "{stderr}");
    assert!(stderr.contains("route[1].upstream"), "{stderr}");
    assert_eq!(c.get(&gw.url("/")).await.text(), "v2");

    // A wrong token is refused.
    std::fs::write(other_dir.path().join("admin.token"), "wrong-token").unwrap();
    let out = portcullis(&["reload", "--config", &other, "--admin", &admin]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));

    // Nothing listening: a clear error.
    drop(gw);
    let out = portcullis(&["reload", "--config", &other, "--admin", &admin]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the admin listener"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_of_every_subcommand_is_complete() {
    let out = portcullis(&["--help"]);
    assert!(out.status.success());
    let top = text(&out.stdout);
    for word in ["run", "check", "reload", "--log-format", "--version"] {
        assert!(
            top.contains(word),
            "`portcullis --help` lacks {word}:\n{top}"
        );
    }
    let cases: [(&str, &[&str]); 3] = [
        (
            "run",
            &["--config", "PORTCULLIS_CONFIG", "SIGHUP", "SIGTERM"],
        ),
        ("check", &["--config", "PORTCULLIS_CONFIG"]),
        ("reload", &["--config", "--admin"]),
    ];
    for (sub, words) in cases {
        let out = portcullis(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help failed");
        let help = text(&out.stdout);
        for word in words {
            assert!(
                help.contains(word),
                "`portcullis {sub} --help` lacks {word}:\n{help}"
            );
        }
    }
    let out = portcullis(&["--version"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// `--log-format pretty` into a pipe (docker logs, journald, a file) writes
/// plain text: no terminal colour codes.
#[test]
fn pretty_logs_into_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = portcullis(&[
        "--log-format",
        "pretty",
        "run",
        "--config",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let logged = text(&out.stdout);
    assert!(
        logged.contains("missing.toml"),
        "the error is logged: {logged:?}"
    );
    assert!(!logged.contains('\u{1b}'), "no escape codes: {logged:?}");
}

/// One bad key neither hides the others nor invents new ones: a typo, a
/// wrong type and a bad value in one table are three errors, each with its
/// full key path and its own line; the table's good keys still count (no
/// "no listener" although `http` is set); a typo names the key meant.
#[test]
fn check_reports_each_bad_key_once_and_keeps_checking_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "typos.toml",
        r#"[server]
http = "127.0.0.1:0"
grace_perod = "5s"
upstream_timeout = 30
grace_period = "5 seconds"
admin = "off"

[[route]]
host = "a.test"
upstream = "http://127.0.0.1:9"

[[route]]
host = "a.test"
upstream = "http://127.0.0.1:9"
strip_prefx = true
"#,
    );
    let out = portcullis(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    for (line, key, says) in [
        (3, "server.grace_perod", "did you mean `grace_period`?"),
        (4, "server.upstream_timeout", "invalid type"),
        (
            5,
            "server.grace_period",
            "unknown unit `seconds` (use ms, s, m, h, d)",
        ),
        (12, "route", "already routed at line 8"),
        (15, "route[2].strip_prefx", "did you mean `strip_prefix`?"),
    ] {
        let prefix = format!("{path}:{line}:");
        assert!(
            stderr.lines().any(|l| l.trim_start().starts_with(&prefix)
                && l.contains(&format!(": {key}: "))
                && l.contains(says)),
            "no `{says}` for {key} at line {line} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("no listener"), "invented: {stderr}");
    assert_eq!(
        stderr.matches("line 8").count(),
        1,
        "the duplicate route is reported once: {stderr}"
    );
    assert!(stderr.contains("5 errors"), "{stderr}");
}

/// A `[[certificate]]` whose file is missing is that error alone: no hint
/// to add the certificate that is right there.
#[test]
fn check_does_not_suggest_adding_a_certificate_that_failed_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "cert.toml",
        r#"[server]
https = "127.0.0.1:0"
admin = "off"

[[certificate]]
hosts = ["a.test"]
cert_file = "missing.pem"
key_file = "missing.key"

[[route]]
host = "a.test"
upstream = "http://127.0.0.1:9"
"#,
    );
    let out = portcullis(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("missing.pem"), "{stderr}");
    assert!(!stderr.contains("add an [acme] section"), "{stderr}");
}

/// `check --no-files` checks a config on a machine without its secrets
/// and certificates (a CI job, a laptop), `[cluster]`'s Redis password and
/// shared key included, and still finds real mistakes.
#[test]
fn check_without_files_skips_secrets_and_certificates_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"[server]
https = "127.0.0.1:0"
admin = "127.0.0.1:0"
admin_token_file = "/run/secrets/nowhere/admin_token"

[oidc.authentik]
issuer = "https://auth.example.com/application/o/portcullis/"
client_id = "portcullis"
client_secret_file = "/run/secrets/nowhere/oidc"

[cluster]
redis = "redis://10.0.0.5:6379/0"
password_file = "/run/secrets/nowhere/redis"
encryption_key_file = "/run/secrets/nowhere/cluster.key"

[[certificate]]
hosts = ["app.example.com"]
cert_file = "/etc/nowhere/app.pem"
key_file = "/etc/nowhere/app.key"

[[route]]
host = "app.example.com"
upstream = "http://127.0.0.1:8080"
auth = { oidc = "authentik" }
"#;
    let path = write_config(dir.path(), "nofiles.toml", config);
    let out = portcullis(&["check", "--config", &path]);
    assert_eq!(out.status.code(), Some(1), "the files are missing");
    let out = portcullis(&["check", "--no-files", "--config", &path]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("not read"),
        "{}",
        text(&out.stdout)
    );

    let broken = config.replace(
        "upstream = \"http://127.0.0.1:8080\"",
        "upstream = \"127.0.0.1:8080\"",
    );
    let path = write_config(dir.path(), "broken.toml", &broken);
    let out = portcullis(&["check", "--no-files", "--config", &path]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("route[1].upstream"), "{stderr}");
    assert!(!stderr.contains("nowhere"), "files are not read: {stderr}");
}

/// `portcullis init` writes a starter config that `check` accepts as
/// written (with `--authentik`, once the client secret is in place), and
/// never overwrites a file by accident.
#[test]
fn init_writes_a_starter_config_that_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("portcullis.toml");
    let out_s = out_path.to_str().unwrap();
    let out = portcullis(&[
        "init",
        "--domain",
        "example.com",
        "--email",
        "me@example.com",
        "--output",
        out_s,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let check = portcullis(&["check", "--config", out_s]);
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(
        text(&check.stdout).contains("1 route"),
        "{}",
        text(&check.stdout)
    );

    // Not over an existing file without --force.
    let again = portcullis(&[
        "init",
        "--domain",
        "other.com",
        "--email",
        "me@example.com",
        "--output",
        out_s,
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    assert!(
        std::fs::read_to_string(&out_path)
            .unwrap()
            .contains("example.com")
    );

    let issuer = "https://auth.example.com/application/o/portcullis/";
    let out = portcullis(&[
        "init",
        "--domain",
        "app.example.com",
        "--email",
        "me@example.com",
        "--authentik",
        issuer,
        "--output",
        out_s,
        "--force",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("oidc_client_secret"),
        "{}",
        text(&out.stdout)
    );
    let check = portcullis(&["check", "--config", out_s]);
    assert_eq!(
        check.status.code(),
        Some(1),
        "the client secret is not there yet"
    );
    assert!(
        text(&check.stderr).contains("oidc_client_secret"),
        "{}",
        text(&check.stderr)
    );
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/oidc_client_secret"), "s3cret\n").unwrap();
    let check = portcullis(&["check", "--config", out_s]);
    assert!(check.status.success(), "{}", text(&check.stderr));

    let bad = portcullis(&[
        "init",
        "--domain",
        "https://x.com",
        "--email",
        "a@b.c",
        "--output",
        out_s,
        "--force",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("not a host name"),
        "{}",
        text(&bad.stderr)
    );
}
