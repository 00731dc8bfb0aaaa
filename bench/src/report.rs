//! The results: one [`Row`] per figure, printed as a table and written as
//! `results.json` (and `results.md`, the table BENCHMARKS.md quotes).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// A bound a figure must respect.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Bound {
    /// At least this much (rates, fractions).
    AtLeast(f64),
    /// At most this much (times, counts).
    AtMost(f64),
}

impl Bound {
    fn holds(self, value: f64) -> bool {
        match self {
            Bound::AtLeast(min) => value >= min,
            Bound::AtMost(max) => value <= max,
        }
    }

    fn value(self) -> f64 {
        match self {
            Bound::AtLeast(v) | Bound::AtMost(v) => v,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Bound::AtLeast(_) => ">=",
            Bound::AtMost(_) => "<=",
        }
    }
}

/// What DESIGN.md section 8 asks of one figure: a bound on the ratio
/// (the only one that goes into `results.json`'s `goal`), on our absolute
/// figure, or both.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Goal {
    ratio: Option<Bound>,
    ours: Option<Bound>,
}

impl Goal {
    /// No goal: the figure is reported for information.
    pub(crate) fn none() -> Self {
        Goal::default()
    }

    /// `ours / baseline` must respect `bound`.
    pub(crate) fn ratio(bound: Bound) -> Self {
        Goal {
            ratio: Some(bound),
            ours: None,
        }
    }

    /// `ours` itself must respect `bound` as well.
    pub(crate) fn and_ours(mut self, bound: Bound) -> Self {
        self.ours = Some(bound);
        self
    }

    /// Only `ours` is bounded (an absolute target, no ratio).
    pub(crate) fn ours(bound: Bound) -> Self {
        Goal {
            ratio: None,
            ours: Some(bound),
        }
    }

    fn is_set(&self) -> bool {
        self.ratio.is_some() || self.ours.is_some()
    }
}

/// One figure next to its baseline.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    name: String,
    unit: &'static str,
    ours: f64,
    baseline: f64,
    /// `ours / baseline`.
    ratio: f64,
    /// The bound on `ratio` that DESIGN.md section 8 asks for, if any.
    goal: Option<f64>,
    #[serde(skip)]
    bounds: Goal,
}

impl Row {
    /// A row; the ratio is computed here.
    pub(crate) fn new(
        name: impl Into<String>,
        unit: &'static str,
        ours: f64,
        baseline: f64,
        goal: Goal,
    ) -> Self {
        Row {
            name: name.into(),
            unit,
            ours,
            baseline,
            ratio: ours / baseline,
            goal: goal.ratio.map(Bound::value),
            bounds: goal,
        }
    }

    /// `Some(true)` when every bound holds, `None` without a goal.
    pub(crate) fn met(&self) -> Option<bool> {
        if !self.bounds.is_set() {
            return None;
        }
        let ratio_ok = self.bounds.ratio.is_none_or(|b| b.holds(self.ratio));
        let ours_ok = self.bounds.ours.is_none_or(|b| b.holds(self.ours));
        Some(ratio_ok && ours_ok)
    }

    fn goal_text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(bound) = self.bounds.ratio {
            parts.push(format!("{} {}x", bound.symbol(), number(bound.value())));
        }
        if let Some(bound) = self.bounds.ours {
            parts.push(format!(
                "ours {} {}",
                bound.symbol(),
                value(bound.value(), self.unit)
            ));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    }

    fn cells(&self) -> [String; 7] {
        [
            self.name.clone(),
            self.unit.to_owned(),
            value(self.ours, self.unit),
            value(self.baseline, self.unit),
            ratio(self.ratio),
            self.goal_text(),
            match self.met() {
                None => "-".into(),
                Some(true) => "met".into(),
                Some(false) => "MISSED".into(),
            },
        ]
    }
}

const HEADERS: [&str; 7] = ["name", "unit", "ours", "baseline", "ratio", "goal", "met"];

/// A number with sensible precision: integers with thousands separators
/// from 1,000 up, three significant digits below.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v.abs() >= 1000.0 {
        let digits = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A ratio: three decimals below 10, so a figure just past its goal
/// (1.205 against 1.2) does not print as the goal itself.
fn ratio(v: f64) -> String {
    if v.abs() < 10.0 {
        format!("{v:.3}x")
    } else {
        format!("{}x", number(v))
    }
}

/// A figure in its unit (fractions as percentages).
fn value(v: f64, unit: &str) -> String {
    if unit == "fraction" {
        format!("{:.1}%", v * 100.0)
    } else {
        number(v)
    }
}

/// The rows as an aligned plain-text table.
pub(crate) fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 7]> = rows.iter().map(Row::cells).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: &[String]| {
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            // Text columns left-aligned, figures right-aligned.
            if i == 0 || i == 1 || i >= 5 {
                let _ = write!(out, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "{}{cell}", " ".repeat(pad));
            }
            out.push_str(if i + 1 < row.len() { "  " } else { "\n" });
        }
    };
    line(&mut out, &HEADERS.map(String::from));
    line(&mut out, &widths.map(|w| "-".repeat(w)));
    for row in &cells {
        line(&mut out, row);
    }
    out
}

/// The rows as a Markdown table.
pub(crate) fn markdown(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n", HEADERS.join(" | "));
    out.push_str("| --- | --- | ---: | ---: | ---: | --- | --- |\n");
    for row in rows {
        let _ = writeln!(out, "| {} |", row.cells().join(" | "));
    }
    out
}

/// Writes `results.json` and `results.md` into `dir`.
pub(crate) fn write(dir: &Path, rows: &[Row]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(rows)?;
    let path = dir.join("results.json");
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    let path = dir.join("results.md");
    std::fs::write(&path, markdown(rows)).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `d` in milliseconds.
pub(crate) fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median of `samples` (the upper one of an even count).
pub(crate) fn median(mut samples: Vec<f64>) -> f64 {
    assert!(!samples.is_empty(), "median of no samples");
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(1_234_567.8), "1,234,568");
        assert_eq!(number(999.4), "999");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(0.714), "0.71");
        assert_eq!(value(0.8215, "fraction"), "82.2%");
        assert_eq!(ratio(1.2047), "1.205x");
        assert_eq!(ratio(1225.4), "1,225x");
    }

    #[test]
    fn goals_check_ratio_and_absolute_bounds() {
        let goal = Goal::ratio(Bound::AtLeast(0.5)).and_ours(Bound::AtLeast(1e6));
        assert_eq!(Row::new("a", "events/s", 2e6, 3e6, goal).met(), Some(true));
        assert_eq!(Row::new("b", "events/s", 9e5, 1e6, goal).met(), Some(false));
        let row = Row::new("c", "ms", 10.0, 1.0, Goal::ratio(Bound::AtMost(50.0)));
        assert_eq!(row.met(), Some(true));
        assert_eq!(Row::new("d", "MiB", 1.0, 1.0, Goal::none()).met(), None);
    }

    #[test]
    fn json_has_exactly_the_documented_keys() {
        let row = Row::new("a", "ms", 2.0, 1.0, Goal::ratio(Bound::AtMost(50.0)));
        let json = serde_json::to_value(vec![row]).unwrap();
        let mut keys: Vec<&str> = json[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["baseline", "goal", "name", "ours", "ratio", "unit"]);
        assert_eq!(json[0]["goal"], 50.0);
    }

    #[test]
    fn median_takes_the_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
