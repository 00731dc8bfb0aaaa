//! Tidy checks: the workspace conventions of CONVENTIONS.md, as tests.

use std::fs;
use std::path::{Path, PathBuf};

const CRATES: &[(&str, &str)] = &[
    ("protocol", "pod-protocol"),
    ("transport", "pod-transport"),
    ("registry", "pod-registry"),
    ("scope-lock", "pod-scope-lock"),
    ("pod-events", "pod-events"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("target") || name == "corpus" || name == "artifacts" {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    for dir in [
        "protocol",
        "transport",
        "registry",
        "scope-lock",
        "pod-events",
        "xtask",
        "fuzz",
    ] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 10, "found only {files:?}");
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| {
            !fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "files without a leading `//!` doc: {offenders:?}"
    );
}

#[test]
fn every_library_crate_is_packageable_on_its_own() {
    let workspace = fs::read_to_string(root().join("Cargo.toml")).unwrap();
    for (dir, package) in CRATES {
        let manifest = fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("name = \"{package}\"")),
            "{dir}: package name"
        );
        for key in ["description", "license.workspace", "rust-version.workspace"] {
            assert!(manifest.contains(key), "{dir}/Cargo.toml lacks {key}");
        }
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{dir}: [lints] workspace = true"
        );
        assert!(
            root().join(dir).join("README.md").exists(),
            "{dir}: README.md"
        );
        let lib = fs::read_to_string(root().join(dir).join("src/lib.rs")).unwrap();
        assert!(lib.starts_with("//!"), "{dir}/src/lib.rs: crate doc first");
        // Internal path dependencies carry a version, so `cargo package -p` works.
        let line = workspace
            .lines()
            .find(|l| l.starts_with(&format!("{package} = ")))
            .unwrap_or_else(|| panic!("{package} missing from [workspace.dependencies]"));
        assert!(
            line.contains("path =") && line.contains("version ="),
            "{line}"
        );
    }
    assert!(workspace.contains("rust-version = \"1.89\""));
    assert!(workspace.contains("unsafe_code = \"forbid\""));
}

#[test]
fn lower_crates_never_reach_up_or_across() {
    let deps_of = |dir: &str| fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
    assert!(
        !deps_of("protocol").contains("tokio ="),
        "protocol must not depend on tokio by default"
    );
    for dir in ["transport", "registry", "scope-lock"] {
        let manifest = deps_of(dir);
        for other in [
            "pod-transport",
            "pod-registry",
            "pod-scope-lock",
            "pod-events",
        ] {
            let own = CRATES.iter().any(|(d, p)| *d == dir && *p == other);
            assert!(
                own || !manifest.contains(&format!("{other}."))
                    && !manifest.contains(&format!("{other} =")),
                "{dir} depends on {other}"
            );
        }
    }
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let commands: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("cargo xtask"))
        .collect();
    assert_eq!(
        commands.get(..2),
        Some(&["cargo xtask demo", "cargo xtask test"][..]),
        "README's first two commands"
    );
    let ci = fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(ci.lines().any(|l| l.trim() == "cargo xtask test"));
}
