//! A short run of every fuzz target (fuzz/fuzz_targets) under libFuzzer, through the same
//! script an operator uses for long runs (`scripts/fuzz.sh`), so the suite proves the targets
//! still build, start from the checked-in corpus and find nothing in a few seconds each.
//!
//! The corpus replay in tests/hostile.rs checks the known inputs on every build in
//! milliseconds; this is the part that searches for new ones. It builds the targets
//! unoptimized (`--dev`): the optimized instrumented build of podagent and its dependencies
//! took 16 of the suite's minutes, the unoptimized one takes about 6.5, and a few seconds of
//! search per target do not need the speed. It has its own test binary
//! because the instrumented build keeps both cores busy for minutes, which must not slow the
//! timing-sensitive tests that share a binary with it.

use std::path::Path;
use std::process::Command;

use testkit::prereq;

/// Seconds of fuzzing per target: enough for libFuzzer to get well past the seeds.
const SECONDS: &str = "8";
const TARGETS: [&str; 5] = [
    "annotation",
    "npwg_annotation",
    "cni_result",
    "verbose_info",
    "state_file",
];

#[test]
fn every_fuzz_target_runs_from_its_corpus_without_a_crash() {
    prereq::require_command("cargo", "the Rust toolchain (rustup)");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found: Vec<String> = std::fs::read_dir(repo.join("fuzz/fuzz_targets"))
        .expect("list fuzz/fuzz_targets")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    let mut expected = TARGETS.map(str::to_owned).to_vec();
    expected.sort();
    found.sort();
    assert_eq!(
        found, expected,
        "a fuzz target was added or removed: list it here"
    );

    let output = Command::new(repo.join("scripts/fuzz.sh"))
        .args(["--dev", "--seconds", SECONDS])
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run scripts/fuzz.sh");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "scripts/fuzz.sh failed ({}); the crashing inputs are in fuzz/artifacts/<target>/.\n{log}",
        output.status
    );
    // libFuzzer ends each run with "Done <n> runs in <s> second(s)"; one line per target, each
    // after its "== <target>" header, proves every target really ran.
    for target in TARGETS {
        let section = log
            .split(&format!("== {target}: {SECONDS}s"))
            .nth(1)
            .unwrap_or_else(|| panic!("no run of {target} in the log:\n{log}"));
        let runs: u64 = section
            .lines()
            .find_map(|line| line.strip_prefix("Done "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{target}: no libFuzzer summary in:\n{section}"));
        assert!(runs > 100, "{target}: only {runs} inputs tried");
    }
}
