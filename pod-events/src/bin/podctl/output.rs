//! What goes to stdout: aligned tables for people, JSON for scripts.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use pod_protocol::ScopeRule;

/// A table with a header row; every column but the last is padded.
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row. Cells are escaped: names and paths come from pods'
    /// events, and a control character must not forge a row or move the
    /// terminal's cursor.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.iter().map(|cell| escape(cell)).collect());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn render(&self) -> String {
        let width = |cell: &str| cell.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(width(cell));
                }
            }
        }
        let mut out = String::new();
        let header = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i < last {
                    let pad = widths.get(i).copied().unwrap_or(0) - width(cell);
                    line.extend(std::iter::repeat_n(' ', pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

pub(crate) fn escape(cell: &str) -> String {
    let mut out = String::with_capacity(cell.len());
    for c in cell.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// How results are printed (`-o`; `--json` is `-o json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns for people; long ids shortened.
    #[default]
    Table,
    /// The table with every id whole and the columns a narrow terminal
    /// would not fit.
    Wide,
    /// JSON for scripts (for `listen` and `watch`: one object per line).
    Json,
}

impl Format {
    pub(crate) fn is_json(self) -> bool {
        self == Format::Json
    }

    pub(crate) fn is_wide(self) -> bool {
        self == Format::Wide
    }

    /// An incarnation id as this format shows it: whole when wide,
    /// shortened in a table.
    pub(crate) fn id(self, id: &str) -> String {
        if self.is_wide() {
            or_dash(id)
        } else {
            short_id(id)
        }
    }
}

/// Set by `-q`: results are not printed, only the exit status (and the one
/// line on stderr of a failure) says how a command ended.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Makes every later [`print()`] a no-op (`-q`). Called once, by `main`,
/// before any command runs.
pub(crate) fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `-q` was given.
pub(crate) fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Writes `text` to stdout and flushes it (nothing under `-q`).
pub(crate) fn print(text: &str) -> Result<()> {
    if is_quiet() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// Prints `table`, or `empty` when it has no rows.
pub(crate) fn print_table(table: &Table, empty: &str) -> Result<()> {
    if table.is_empty() {
        print(&format!("{empty}\n"))
    } else {
        print(&table.render())
    }
}

/// Prints `value` as pretty JSON.
pub(crate) fn print_json(value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    let mut text = escape_line_breaks(text);
    text.push('\n');
    print(&text)
}

/// `value` as one line of compact JSON (no trailing newline), for JSON
/// lines output.
pub(crate) fn json_line(value: &serde_json::Value) -> String {
    escape_line_breaks(value.to_string())
}

/// Writes U+0085, U+2028 and U+2029 as `\u0085`, `\u2028`, `\u2029`.
///
/// serde_json leaves them raw, which is valid JSON, but JavaScript before
/// ES2019 and many JSON-lines readers split lines on them, so a pod name
/// holding one would cut a record in two. In serde_json's output they can
/// only be inside strings (everything else is ASCII), where the escape
/// means the same character.
pub(crate) fn escape_line_breaks(json: String) -> String {
    if !json.contains(['\u{85}', '\u{2028}', '\u{2029}']) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '\u{85}' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `write /srv/a/**, read /srv/b/*`: the rules as the rendered event
/// lines show them (`/**` recursive, `/*` direct children only).
pub(crate) fn rules(scope: &[ScopeRule]) -> String {
    if scope.is_empty() {
        return "-".into();
    }
    // The form of the rendered lines, so a table and a line agree.
    pod_events::render_scope(scope)
}

/// The display order and labels of a forest: `nodes[i]` is (name,
/// parent's name); each node is shown under its parent with box-drawing
/// prefixes, siblings in the order given. A node whose parent is not
/// among them is shown at the top, and so is any node a cycle or a
/// duplicate name would otherwise hide, once: every node appears exactly
/// once, whatever a hostile file says.
pub(crate) fn tree_order(nodes: &[(&str, Option<&str>)]) -> Vec<(usize, String)> {
    let exists = |name: &str| nodes.iter().any(|(n, _)| *n == name);
    let mut children: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
    for (i, (_, parent)) in nodes.iter().enumerate() {
        let parent = parent.filter(|p| exists(p));
        children.entry(parent).or_default().push(i);
    }
    let mut order = Vec::with_capacity(nodes.len());
    let mut seen = vec![false; nodes.len()];
    // (node, prefix of its label, prefix of its children's labels)
    let mut stack: Vec<(usize, String, String)> = Vec::new();
    let push_children = |stack: &mut Vec<_>, of: Option<&str>, indent: &str| {
        let list = children.get(&of).map(Vec::as_slice).unwrap_or_default();
        for (i, &child) in list.iter().enumerate().rev() {
            let (label, next) = match (of, i + 1 == list.len()) {
                (None, _) => (String::new(), String::new()),
                (Some(_), true) => (format!("{indent}└─ "), format!("{indent}   ")),
                (Some(_), false) => (format!("{indent}├─ "), format!("{indent}│  ")),
            };
            stack.push((child, label, next));
        }
    };
    push_children(&mut stack, None, "");
    loop {
        while let Some((node, label, indent)) = stack.pop() {
            if std::mem::replace(&mut seen[node], true) {
                continue;
            }
            let (name, _) = nodes[node];
            order.push((node, format!("{label}{name}")));
            push_children(&mut stack, Some(name), &indent);
        }
        match seen.iter().position(|s| !s) {
            Some(hidden) => stack.push((hidden, String::new(), String::new())),
            None => return order,
        }
    }
}

/// The first 8 characters of an incarnation id, enough to tell pods
/// apart in a table (`--json` shows ids whole).
pub(crate) fn short_id(id: &str) -> String {
    match id.char_indices().nth(8) {
        Some((end, _)) => format!("{}…", &id[..end]),
        None => or_dash(id),
    }
}

/// `text`, or `-` when empty.
pub(crate) fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_and_lines_not_padded_at_the_end() {
        let mut table = Table::new(&["POD", "SCOPE"]);
        table.row(vec!["root".into(), "write /a/**".into()]);
        table.row(vec!["└─ child".into(), "-".into()]);
        assert_eq!(
            table.render(),
            "POD       SCOPE\nroot      write /a/**\n└─ child  -\n"
        );
    }

    #[test]
    fn rules_show_their_reach() {
        let mut direct = ScopeRule::read("/b");
        direct.recursive = false;
        assert_eq!(
            rules(&[ScopeRule::write("/a"), direct]),
            "write /a/**, read /b/*"
        );
        assert_eq!(rules(&[ScopeRule::write("/")]), "write /**");
    }

    #[test]
    fn a_forest_is_drawn_under_its_parents_and_every_node_once() {
        let labels = |nodes: &[(&str, Option<&str>)]| -> Vec<String> {
            tree_order(nodes).into_iter().map(|(_, l)| l).collect()
        };
        assert_eq!(
            labels(&[
                ("root", None),
                ("a", Some("root")),
                ("gc", Some("a")),
                ("b", Some("root")),
                ("orphan", Some("gone")),
            ]),
            ["root", "├─ a", "│  └─ gc", "└─ b", "orphan"]
        );
        // A cycle has no top: shown from its first node, each node once.
        assert_eq!(labels(&[("x", Some("y")), ("y", Some("x"))]), ["x", "└─ y"]);
        // A duplicate name under its own descendant cannot loop.
        let dup = labels(&[("n", Some("x")), ("x", Some("n")), ("x", None)]);
        assert_eq!(dup.len(), 3, "{dup:?}");
    }

    proptest::proptest! {
        /// Whatever a hostile table or registry says (cycles, duplicate
        /// names, missing parents), every node is shown exactly once, and
        /// a node drawn under its parent comes after it.
        #[test]
        fn every_node_is_shown_once(
            nodes in proptest::collection::vec((0u8..6, proptest::option::of(0u8..7)), 0..12)
        ) {
            let names: Vec<(String, Option<String>)> = nodes
                .iter()
                .map(|(n, p)| (format!("p{n}"), p.map(|p| format!("p{p}"))))
                .collect();
            let forest: Vec<(&str, Option<&str>)> = names
                .iter()
                .map(|(n, p)| (n.as_str(), p.as_deref()))
                .collect();
            let order = tree_order(&forest);
            let mut shown: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
            shown.sort_unstable();
            proptest::prop_assert_eq!(shown, (0..forest.len()).collect::<Vec<_>>());
            for (at, (i, label)) in order.iter().enumerate() {
                proptest::prop_assert!(label.ends_with(forest[*i].0));
                // A nested label's parent appears earlier.
                if label.len() > forest[*i].0.len() {
                    let parent = forest[*i].1.unwrap();
                    let before = order[..at].iter().any(|(j, _)| forest[*j].0 == parent);
                    proptest::prop_assert!(before, "{label} before its parent {parent}");
                }
            }
        }
    }

    #[test]
    fn ids_are_shortened() {
        assert_eq!(short_id("0123456789abcdef"), "01234567…");
        assert_eq!(short_id("0123"), "0123");
        assert_eq!(short_id(""), "-");
    }

    #[test]
    fn json_output_escapes_the_characters_line_readers_split_on() {
        let name = "a\u{85}b\u{2028}c\u{2029}d\ne";
        let value = serde_json::json!({ "pod_name": name });
        let line = json_line(&value);
        assert_eq!(line, r#"{"pod_name":"a\u0085b\u2028c\u2029d\ne"}"#);
        assert!(!line.contains(['\u{85}', '\u{2028}', '\u{2029}', '\n']));
        // Still the same JSON.
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back, value);
        let pretty = escape_line_breaks(serde_json::to_string_pretty(&value).unwrap());
        assert!(
            !pretty.contains(['\u{85}', '\u{2028}', '\u{2029}']),
            "{pretty}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&pretty).unwrap(),
            value
        );
        // Nothing else changes.
        let plain = serde_json::json!({ "pod_name": "é—✓" }).to_string();
        assert_eq!(escape_line_breaks(plain.clone()), plain);
    }

    #[test]
    fn control_characters_cannot_forge_rows() {
        let mut table = Table::new(&["POD"]);
        table.row(vec!["a\nb\u{1b}[2J".into()]);
        assert_eq!(table.render(), "POD\na\\nb\\u{1b}[2J\n");
    }
}
