//! Item 3: the receive path in memory, on one thread. Ours: decode +
//! validate + `Parent::apply` against the in-memory registry and scope
//! table + render, per line. Baseline: `serde_json` decoding the same
//! lines into the same types, nothing else.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pod_events::{render, Origin};
use pod_protocol::Method;
use pod_registry::Registry;

use crate::mix::{self, MemoryParent, Scenario, SPAWNERS};
use crate::report::median;
use crate::Plan;

/// Lives generated (and, with allocations, delegated) between two timed
/// batches, so the scope table stays the size a busy parent sees.
const BATCH: usize = 100;

/// Events per second: (ours, baseline), medians over the plan's runs.
pub(crate) fn measure(plan: &Plan, allocate: bool) -> Result<(f64, f64)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for run in 0..=plan.runs {
        let (o, r) = one_run(&runtime, plan.receive_lives, allocate)?;
        // Run 0 is the warm-up.
        if run > 0 {
            ours.push(o);
            raw.push(r);
        }
    }
    Ok((median(ours), median(raw)))
}

fn one_run(runtime: &tokio::runtime::Runtime, lives: usize, allocate: bool) -> Result<(f64, f64)> {
    let mut scenario = runtime.block_on(Scenario::new(allocate));
    let parent = scenario.parent().clone();
    let (mut ours, mut raw) = (Duration::ZERO, Duration::ZERO);
    let (mut events, mut changes, mut failures) = (0, 0, 0);
    for _ in 0..lives.div_ceil(BATCH) {
        let lines: Vec<Vec<u8>> = scenario
            .lives(BATCH)
            .iter()
            .flatten()
            .map(mix::line)
            .collect();
        let started = Instant::now();
        for line in &lines {
            black_box(serde_json::from_slice::<Method>(line)?);
        }
        raw += started.elapsed();
        let started = Instant::now();
        let (c, f) = runtime.block_on(receive_all(&parent, &lines))?;
        ours += started.elapsed();
        events += lines.len();
        changes += c;
        failures += f;
    }
    // Sanity, not timing: every life registered and removed its pod.
    let lives = lives.div_ceil(BATCH) * BATCH;
    ensure!(failures == 0, "{failures} lower-layer failures");
    ensure!(
        changes == 2 * lives,
        "{changes} state changes, expected {}",
        2 * lives
    );
    let left = parent.registry().read(|state| state.len());
    ensure!(left == SPAWNERS, "{left} records left, expected {SPAWNERS}");
    let held = parent.scopes().list()?.len();
    let expected = if allocate { 1 + SPAWNERS } else { 1 };
    ensure!(
        held == expected,
        "{held} allocations left, expected {expected}"
    );
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    Ok((rate(ours), rate(raw)))
}

/// Receives every line; returns the state changes (registrations and
/// removals) and the failures seen.
async fn receive_all(parent: &MemoryParent, lines: &[Vec<u8>]) -> Result<(usize, usize)> {
    let (mut changes, mut failures) = (0, 0);
    for line in lines {
        let Method::PodEvent(event) = pod_protocol::decode(line).context("decoding")? else {
            anyhow::bail!("not a pod event");
        };
        // What the endpoint does before handing an event to its lane.
        event.validate()?;
        let effects = parent.apply(&event).await;
        let rendered = render(&event, Origin::Reported);
        changes += usize::from(effects.registered) + usize::from(!effects.removed.is_empty());
        failures += effects.failures;
        black_box(rendered);
    }
    Ok((changes, failures))
}
