//! Fuzz targets for the receive path, as plain functions.
//!
//! Everything that arrives from another process, whatever its bytes, must
//! never make a parent panic, hang, grow without bound or break an
//! invariant. Each target here is a function that feeds one input through
//! the real code and panics on a violated check:
//!
//! - [`frames`]: bytes through the frame splitter, the tokio codec the
//!   listener uses, `Method` decoding, validation and re-encoding;
//! - [`receive_path`] (and [`receive_path_bytes`]): a byte stream framed by
//!   `MethodCodec` and applied through `Parent::apply` against an in-memory
//!   registry and scope table holding a small fixed tree of pods;
//! - [`files`]: bytes as `scope.lock`, `spawned_pods.json` and
//!   `departed_pods.json`, opened through the real file implementations;
//! - [`handoff`]: bytes as a child's environment, read as the handoff
//!   variables and adopted against a table holding one reservation.
//!
//! The libFuzzer binaries in `fuzz_targets/` are thin wrappers (feature
//! `libfuzzer`; run them with `cargo xtask fuzz`), and `tests/replay.rs`
//! feeds every committed corpus and regression input through the same
//! functions on stable, so `cargo xtask test` runs them too. This crate
//! owns no production code: what it checks belongs to `pod-protocol`,
//! `pod-registry`, `pod-scope-lock` and `pod-events`.

mod files;
mod frames;
mod handoff;
mod receive;

pub use files::files;
pub use frames::frames;
pub use handoff::handoff;
pub use receive::{
    receive_path, receive_path_bytes, Chunk, EventSpec, Inc, Name, OtherMethod, PathChoice,
    ReceiveInput, ReceiveStats, RuleSpec, Scope, Script, Text,
};

use pod_events::MAX_LINE_LEN;

/// Panics unless `line` is what a parent may put in its LLM's context: one
/// line of at most [`MAX_LINE_LEN`] bytes, with no control character and
/// nothing that breaks, hides or reorders text (separators, bidi controls,
/// zero-width and other invisible characters: issue 13's list).
pub fn check_rendered_line(line: &str) {
    assert!(
        line.len() <= MAX_LINE_LEN,
        "rendered line is {} bytes, over {MAX_LINE_LEN}: {line:?}",
        line.len()
    );
    if let Some(c) = line.chars().find(|&c| breaks_a_line(c)) {
        panic!("rendered line holds {c:?}: {line:?}");
    }
}

fn breaks_a_line(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}'
            | '\u{17b4}' | '\u{17b5}' | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}' | '\u{ffa0}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0000}'..='\u{e007f}'
            | '\u{e0100}'..='\u{e01ef}')
}

/// The current-thread runtime of this thread, created once and reused by
/// every input (creating one per input would dominate the cost of an
/// execution).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds");
    }
    RUNTIME.with(|runtime| runtime.block_on(future))
}
