//! Replays every input kept in `fuzz/regressions/<target>/` through the
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

#[test]
fn every_kept_fuzz_input_passes_its_checks() {
    let root = regressions_dir();
    let mut ran = 0;
    let mut failures = Vec::new();
    for (target, check) in checks::TARGETS {
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
    assert!(ran > 0, "no inputs under {}", root.display());
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
    let root = regressions_dir();
    for e in std::fs::read_dir(&root).expect("fuzz/regressions exists") {
        let e = e.unwrap();
        if !e.path().is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            checks::TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/regressions/{name} is not a fuzz target ({:?})",
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
