//! Replays every input kept in `fuzz/regressions/<target>/` (and the
//! minimised corpus kept in `fuzz/seeds/<target>/`) through the
//! same property checks the fuzz targets run (`fuzz/checks.rs`), on the
//! stable toolchain, so a bug the fuzzer once found stays fixed.
//!
//! To keep a new input: copy the crash or interesting file from
//! `fuzz/artifacts/<target>/` into `fuzz/regressions/<target>/` (see
//! `fuzz/README.md`).

#[path = "../fuzz/checks.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

fn regressions_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions")
}

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

#[test]
fn every_kept_fuzz_input_passes_its_checks() {
    let mut ran = 0;
    let mut failures = Vec::new();
    for ((target, check), root) in checks::TARGETS
        .iter()
        .flat_map(|t| [(t, regressions_dir()), (t, seeds_dir())])
    {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.expect("read regressions dir").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
            ran += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {msg}", f.display()));
            }
        }
    }
    assert!(ran > 0, "no inputs under {}", regressions_dir().display());
    assert!(
        failures.is_empty(),
        "{} of {ran} kept fuzz inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every regressions folder belongs to a target, so a misspelt folder does
/// not silently stop being replayed.
#[test]
fn regression_folders_name_real_targets() {
    for e in std::fs::read_dir(regressions_dir())
        .expect("fuzz/regressions exists")
        .chain(std::fs::read_dir(seeds_dir()).expect("fuzz/seeds exists"))
    {
        let e = e.unwrap();
        if !e.path().is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            checks::TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/regressions|seeds/{name} is not a fuzz target ({:?})",
            checks::TARGETS.iter().map(|(t, _)| *t).collect::<Vec<_>>()
        );
    }
}

/// The checks themselves catch what they claim to: a few hand-made inputs
/// that must pass (seeds), replayed even before any fuzz run.
#[test]
fn seeds_pass() {
    checks::check_config(include_str!("../config/quickstart.toml"));
    checks::check_config("");
    checks::check_config("[server\nhttp = 1\n");
    checks::config_structured(&[]);
    checks::config_structured(&[1]);
    // The structure-aware target starts from this config; if the format
    // moves on, update `RICH_BASE` in fuzz/checks.rs so fuzzing stays deep.
    portcullis::install_crypto_provider();
    let rich = checks::rich_base();
    if let Err(e) = portcullis::config::parse(std::path::Path::new("fuzz.toml"), &rich) {
        panic!("fuzz/checks.rs RICH_BASE no longer validates:\n{e}");
    }
    checks::path_route(&[]);
    checks::headers(&[]);
    for p in [
        "/",
        "/a/../b",
        "//x/./y/",
        "/%2e%2e/",
        "/a%2fb",
        "/%41%7e%25",
    ] {
        checks::check_normalized_path(p);
    }
    for h in ["Example.COM.", "[::1]:80", "a:80"] {
        checks::check_normalized_host(h);
    }
}

/// The codec checks, on hand-made streams: a plain pipelined pair, a
/// chunked upload, the smuggling shapes, and answers a backend sends.
#[test]
fn codec_seeds_pass() {
    let raw = |s: &[u8]| [&[1u8][..], s].concat();
    for head in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"get / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a",
    ] {
        checks::request_head(&raw(head));
    }
    for resp in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        checks::response_head(&raw(resp));
    }
    for body in [
        &b"5;a=b\r\nhello\r\n0\r\nx-t: 1\r\n\r\nNEXT"[..],
        b"5\nhello\r\n0\r\n\r\n",
        b"\r\n",
        b"0\r\n\r\n",
        b"3\r\nab",
    ] {
        checks::chunked(&raw(body));
    }
    for data in [&[][..], &[0u8; 64], &[7u8; 300], &[0x35; 200]] {
        checks::request_head(data);
        checks::response_head(data);
        checks::chunked(data);
        checks::h1_conn(data);
    }
}

/// Both servers of the `h1_conn` comparison really serve: a pipelined
/// pair reaches each handler with its body.
#[test]
fn both_connection_servers_dispatch_a_pipelined_pair() {
    let stream = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
    let pieces: Vec<Vec<u8>> = stream.chunks(5).map(<[u8]>::to_vec).collect();
    let (ours, out) = checks::block_on(portcullis::probe::serve_script(
        pieces.clone(),
        checks::MAX_HEAD,
        std::time::Duration::from_secs(60),
    ))
    .expect("our connection ends");
    let (hyper, _) = checks::block_on(checks::hyper_serve(pieces));
    let summary = |v: Vec<(String, String, Option<Vec<u8>>)>| v;
    let want = vec![
        ("POST".to_string(), "/a".to_string(), Some(b"abc".to_vec())),
        ("GET".to_string(), "/b".to_string(), Some(vec![])),
    ];
    assert_eq!(
        summary(
            ours.into_iter()
                .map(|d| (d.method, d.target, d.body))
                .collect()
        ),
        want
    );
    assert_eq!(
        summary(
            hyper
                .into_iter()
                .map(|h| (h.req.method, h.req.target, h.req.body))
                .collect()
        ),
        want
    );
    assert_eq!(
        String::from_utf8_lossy(&out)
            .matches("HTTP/1.1 404")
            .count(),
        2
    );
}

/// Hyper's server refuses `Content-Length: 5, 5`, which ours reads as 5
/// (RFC 9110 8.6): the comparison lets that difference through, and only
/// that one; a list of different lengths, or ours reading another
/// length, is still a disagreement.
#[test]
fn hyper_strictness_covers_only_identical_length_lists() {
    let post = |cl: &str| format!("POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\n\r\n");
    let ours = |n| {
        [(
            "POST".to_string(),
            "/u".to_string(),
            true,
            Some(checks_framing(n)),
        )]
    };
    let head = portcullis::probe::parse_request(post("5, 5").as_bytes(), checks::MAX_HEAD)
        .expect("ours accepts an identical list")
        .expect("whole head");
    assert_eq!(head.framing, checks_framing(5));
    assert!(checks::hyper_is_stricter(post("5, 5").as_bytes(), &ours(5)));
    assert!(checks::hyper_is_stricter(
        post("5,5,5").as_bytes(),
        &ours(5)
    ));
    assert!(!checks::hyper_is_stricter(
        post("5, 5").as_bytes(),
        &ours(6)
    ));
    assert!(!checks::hyper_is_stricter(
        post("5, 6").as_bytes(),
        &ours(5)
    ));
    assert!(!checks::hyper_is_stricter(post("5").as_bytes(), &ours(5)));
    assert!(!checks::hyper_is_stricter(
        post("+5, +5").as_bytes(),
        &ours(5)
    ));
}

fn checks_framing(n: u64) -> portcullis::probe::Framing {
    portcullis::probe::Framing::Length(n)
}
