//! `cargo fuzz run h1_conn`: see fuzz/README.md. The checks live in
//! fuzz/checks.rs, shared with tests/fuzz_regressions.rs.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::h1_conn(data));
