//! Every example config shipped in `config/` is valid, by the real loader
//! and validator (`portcullis::config::load`).
//!
//! Real deployments name files that only exist on a real host: secrets
//! (`/run/secrets/...`, `/etc/portcullis/secrets/...`), certificates, CA
//! bundles, and a `state_dir` under `/var/lib`. So each example is copied into
//! a temp dir with exactly these values rewritten, line by line, to stand-ins
//! made there — a secret file with text in it, a certificate and key (signed
//! by a test CA) for the `[[certificate]]`'s own hosts, a CA PEM — and
//! `state_dir` inside the temp dir. Every other byte of the example is loaded
//! as written, so every check of the validator applies to it.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use support::tls::TestCa;

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.toml files in {}", dir.display());
    files
}

/// An example, rewritten into a temp dir.
struct Prepared {
    _dir: tempfile::TempDir,
    config: PathBuf,
    /// (key as written in the example, the stand-in file made for it).
    stand_ins: Vec<(String, PathBuf)>,
}

/// `key = "value"  # comment` on one line: (indent, key, value, rest).
fn simple_string_assignment(line: &str) -> Option<(&str, &str, &str, &str)> {
    let indent_len = line.len() - line.trim_start().len();
    let (indent, body) = line.split_at(indent_len);
    let (key, rest) = body.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let rest = rest.trim_start().strip_prefix('"')?;
    let (value, after) = rest.split_once('"')?;
    if value.contains('\\') {
        return None;
    }
    Some((indent, key, value, after))
}

/// Every `*_file` key anywhere in a TOML value, with its string value.
fn file_keys(v: &toml::Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let here = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                if k.ends_with("_file") {
                    out.push((here.clone(), v.as_str().unwrap_or("<not a string>").into()));
                }
                file_keys(v, &here, out);
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                file_keys(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn prepare(example: &Path, ca: &TestCa) -> Prepared {
    let name = example.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(example).unwrap();
    let parsed: toml::Value =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{name} is not TOML: {e}"));
    let cert_hosts: Vec<Vec<String>> = parsed
        .get("certificate")
        .and_then(|c| c.as_array())
        .map(|list| {
            list.iter()
                .map(|c| {
                    c.get("hosts")
                        .and_then(|h| h.as_array())
                        .map(|h| {
                            h.iter()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();

    let dir = tempfile::Builder::new()
        .prefix("portcullis-example-")
        .tempdir()
        .unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();

    let mut out = String::with_capacity(text.len() + 1024);
    let mut table = String::new();
    let mut cert_index: Option<usize> = None;
    let mut stand_ins = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(h) = trimmed.strip_prefix("[[") {
            table = h.split("]]").next().unwrap_or("").trim().to_string();
            if table == "certificate" {
                cert_index = Some(cert_index.map_or(0, |i| i + 1));
            }
        } else if let Some(h) = trimmed.strip_prefix('[') {
            table = h.split(']').next().unwrap_or("").trim().to_string();
        }
        let Some((indent, key, value, after)) = simple_string_assignment(line) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let n = stand_ins.len();
        let replacement: Option<PathBuf> = match key {
            "state_dir" => Some(dir.path().join("state")),
            "cert_file" | "key_file" if table == "certificate" => {
                let i = cert_index.expect("[[certificate]] index");
                let hosts: Vec<&str> = cert_hosts[i].iter().map(String::as_str).collect();
                assert!(!hosts.is_empty(), "{name}: certificate[{i}] has no hosts");
                let cert = files.join(format!("certificate-{i}.pem"));
                let key_path = files.join(format!("certificate-{i}.key"));
                if !cert.exists() {
                    let leaf = ca.leaf(&hosts);
                    std::fs::write(&cert, leaf.cert_pem).unwrap();
                    std::fs::write(&key_path, leaf.key_pem).unwrap();
                }
                Some(if key == "cert_file" { cert } else { key_path })
            }
            "ca_file" => {
                let p = files.join(format!("ca-{n}.pem"));
                std::fs::write(&p, ca.pem()).unwrap();
                Some(p)
            }
            "encryption_key_file" => {
                // 32 bytes, as `openssl rand -hex 32` writes them.
                let p = files.join(format!("key-{n}"));
                std::fs::write(&p, format!("{:064x}\n", n + 1)).unwrap();
                Some(p)
            }
            k if k.ends_with("_file") => {
                let p = files.join(format!("secret-{n}"));
                std::fs::write(&p, format!("example-secret-{n}-0123456789abcdef\n")).unwrap();
                Some(p)
            }
            _ => None,
        };
        match replacement {
            Some(p) => {
                if key.ends_with("_file") {
                    stand_ins.push((format!("{table}.{key} = \"{value}\""), p.clone()));
                }
                out.push_str(&format!("{indent}{key} = \"{}\"{after}\n", p.display()));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }

    // Every `*_file` in the example must have been pointed at a stand-in: a
    // key the line rewrite missed (an inline table, say) fails here, not
    // later as a confusing "cannot read /run/secrets/..." from the loader.
    let rewritten: toml::Value = toml::from_str(&out).unwrap();
    let mut keys = Vec::new();
    file_keys(&rewritten, "", &mut keys);
    for (k, v) in &keys {
        assert!(
            Path::new(v).starts_with(dir.path()),
            "{name}: `{k} = \"{v}\"` was not rewritten to a stand-in file; write it as `{} = \"...\"` on its own line",
            k.rsplit('.').next().unwrap()
        );
    }
    let mut original_keys = Vec::new();
    file_keys(&parsed, "", &mut original_keys);
    assert_eq!(keys.len(), original_keys.len());

    let config = dir.path().join(&name);
    std::fs::write(&config, out).unwrap();
    Prepared {
        _dir: dir,
        config,
        stand_ins,
    }
}

#[test]
fn every_example_config_validates() {
    let ca = TestCa::new();
    let files = examples();
    let mut failures = Vec::new();
    for f in &files {
        let p = prepare(f, &ca);
        match portcullis::config::load(&p.config) {
            Ok(c) => {
                assert!(c.summary().contains(": ok: "), "{}", c.summary());
                // Nothing was dropped on the way: every [[route]] is there.
                let text = std::fs::read_to_string(f).unwrap();
                let v: toml::Value = toml::from_str(&text).unwrap();
                let routes = v
                    .get("route")
                    .and_then(|r| r.as_array())
                    .map_or(0, |r| r.len());
                assert_eq!(c.routes.len(), routes, "{}", f.display());
            }
            Err(e) => failures.push(format!("{}:\n{e}", f.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} example configs are invalid:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// The stand-ins do not make the check lenient: take any one of them away
/// and the same example fails, naming the key.
#[test]
fn a_missing_stand_in_file_still_fails_validation() {
    let ca = TestCa::new();
    let mut checked = BTreeMap::new();
    for f in examples() {
        let p = prepare(&f, &ca);
        for (what, file) in &p.stand_ins {
            let saved = std::fs::read(file).unwrap();
            std::fs::remove_file(file).unwrap();
            let r = portcullis::config::load(&p.config);
            std::fs::write(file, &saved).unwrap();
            let err = match r {
                Ok(_) => panic!("{}: still valid without the file for {what}", f.display()),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains(&file.display().to_string()),
                "{}: the error for {what} does not name the file:\n{err}",
                f.display()
            );
            *checked.entry(f.display().to_string()).or_insert(0) += 1;
        }
        portcullis::config::load(&p.config)
            .unwrap_or_else(|e| panic!("{} after restoring: {e}", f.display()));
    }
    // The deployment examples do name secret and certificate files.
    let deployment = checked
        .keys()
        .filter(|k| k.ends_with("portcullis.toml") || k.ends_with("compose.toml"))
        .count();
    assert_eq!(deployment, 2, "stand-ins checked: {checked:?}");
}
