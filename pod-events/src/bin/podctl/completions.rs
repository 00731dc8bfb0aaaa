//! `podctl completions SHELL` and `podctl manpage --dir DIR`: shell
//! completions and man pages generated from the same clap definitions
//! the binary parses, so they cannot drift from it. `cargo xtask dist`
//! runs both; an installed podctl can too (`podctl completions bash`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use clap_complete::Shell;

use crate::output;

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    shell: Shell,
}

#[derive(Debug, Args)]
pub(crate) struct ManpageArgs {
    /// Where to write podctl.1 and one podctl-COMMAND.1 per subcommand
    /// (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// Prints the completion script for `args.shell` to stdout.
pub(crate) fn completions(args: CompletionsArgs, mut command: clap::Command) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "podctl", &mut script);
    output::print(&String::from_utf8_lossy(&script))
}

/// Writes the man pages into `args.dir` and prints their paths.
pub(crate) fn manpages(args: ManpageArgs, mut command: clap::Command) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    command.build();
    let mut pages = vec![(String::from("podctl"), command.clone())];
    // clap's own `help` subcommand needs no page: `podctl(1)` lists
    // every command.
    let shown = |s: &&clap::Command| !s.is_hide_set() && s.get_name() != "help";
    for sub in command.get_subcommands().filter(shown) {
        let name = format!("podctl-{}", sub.get_name());
        let usage = format!("podctl {}", sub.get_name());
        pages.push((
            name,
            sub.clone().display_name(usage.clone()).bin_name(usage),
        ));
    }
    let mut written = String::new();
    for (name, page) in pages {
        let path = args.dir.join(format!("{name}.1"));
        let mut roff = Vec::new();
        clap_mangen::Man::new(page)
            .title(name.clone())
            .render(&mut roff)
            .with_context(|| format!("cannot render the man page {name}"))?;
        std::fs::write(&path, roff).with_context(|| format!("cannot write {}", path.display()))?;
        written.push_str(&format!("{}\n", path.display()));
    }
    output::print(&written)
}
