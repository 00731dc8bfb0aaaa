//! Corpus replay without libFuzzer: every committed seed and regression
//! input of each target runs through the same function the fuzzer calls,
//! so `cargo xtask test` keeps them passing on stable.

use std::fs;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file of `corpus/<target>/` and `regressions/<target>/`.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        files.extend(entries.map(|e| e.expect("a directory entry").path()));
    }
    files.sort();
    files
}

/// Runs `target` on every input, naming the input that fails.
fn replay(name: &str, target: impl Fn(&[u8])) {
    let files = inputs(name);
    assert!(!files.is_empty(), "no corpus for {name}");
    for file in &files {
        let data = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&data)));
        if let Err(panic) = outcome {
            eprintln!("{name}: input {} fails", file.display());
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn frames_corpus() {
    replay("frames", pod_fuzz::frames);
}

#[test]
fn receive_path_corpus() {
    replay("receive_path", |data| {
        pod_fuzz::receive_path_bytes(data);
    });
}

#[test]
fn files_corpus() {
    replay("files", pod_fuzz::files);
}

#[test]
fn handoff_corpus() {
    replay("handoff", pod_fuzz::handoff);
}

fn golden_lines() -> Vec<String> {
    let path = fuzz_dir().join("../protocol/tests/golden/design-section-3.jsonl");
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| format!("{line}\n"))
        .collect()
}

fn corpus_holds(target: &str, content: &[u8]) -> bool {
    inputs(target)
        .iter()
        .any(|f| fs::read(f).is_ok_and(|data| data == content))
}

#[test]
fn every_golden_line_of_design_section_3_is_a_seed() {
    for line in golden_lines() {
        for target in ["frames", "receive_path"] {
            assert!(
                corpus_holds(target, line.as_bytes()),
                "corpus/{target} lacks the golden line {line:?}"
            );
        }
    }
}

/// A cheap deterministic generator, so the tests below need no new
/// dependency and fail the same way every time.
fn pseudo_random_inputs(count: usize, max_len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count).map(move |_| {
        let len = (next() as usize) % max_len;
        (0..len).map(|_| next() as u8).collect()
    })
}

#[test]
fn random_structured_inputs_mostly_apply_valid_events() {
    let mut total = pod_fuzz::ReceiveStats::default();
    for data in pseudo_random_inputs(300, 400) {
        // Structured part only: a leading 0xFF leaves the head empty.
        let stats = pod_fuzz::receive_path_bytes(&[&[0xFF][..], &data].concat());
        total.events += stats.events;
        total.valid += stats.valid;
        total.registered += stats.registered;
        total.released += stats.released;
    }
    assert!(total.events > 300, "too few events: {total:?}");
    assert!(
        total.valid * 3 > total.events,
        "valid events are not common: {total:?}"
    );
    assert!(total.registered > 0 && total.released > 0, "{total:?}");
}

#[test]
fn random_bytes_pass_every_target() {
    for data in pseudo_random_inputs(200, 300) {
        pod_fuzz::frames(&data);
        pod_fuzz::files(&data);
        pod_fuzz::handoff(&data);
    }
}

#[test]
fn seed_directories_hold_only_small_files() {
    for target in ["frames", "receive_path", "files", "handoff"] {
        for file in inputs(target) {
            let len = fs::metadata(&file).map_or(0, |m| m.len());
            assert!(len <= 8192, "{} is {len} bytes", display(&file));
        }
    }
}

fn display(path: &Path) -> String {
    path.strip_prefix(fuzz_dir())
        .unwrap_or(path)
        .display()
        .to_string()
}
