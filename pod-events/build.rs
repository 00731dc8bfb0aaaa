//! Records the git commit podctl is built from, for `podctl --version`
//! (`PODCTL_GIT_COMMIT`; `unknown` when not built from a checkout, e.g.
//! from a published crate, or without git).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rustc-env=PODCTL_GIT_COMMIT={}", commit());
}

fn commit() -> String {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    // Only our own checkout: a published crate unpacked inside someone
    // else's repository must not report that repository's commit.
    let Some(root) = Path::new(&manifest).parent() else {
        return "unknown".into();
    };
    let git = root.join(".git");
    if !git.exists() {
        return "unknown".into();
    }
    // Rebuild when HEAD moves: HEAD itself for a detached head or a
    // branch switch, the branch's ref for a commit on it.
    let head = git.join("HEAD");
    println!("cargo:rerun-if-changed={}", head.display());
    if let Ok(text) = std::fs::read_to_string(&head) {
        if let Some(reference) = text.strip_prefix("ref: ") {
            let reference = git.join(reference.trim());
            if reference.exists() {
                println!("cargo:rerun-if-changed={}", reference.display());
            }
        }
    }
    let output = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                "unknown".into()
            } else {
                hash
            }
        }
        _ => "unknown".into(),
    }
}
