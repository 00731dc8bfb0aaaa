//! Measures `RegistryState` alone: the memory it holds (as resident
//! growth) with 10,000 records
//! (one per name, as a parent's children) and 4,096 tombstones, and the
//! time of the mutations and lookups the receive path makes.
//!
//! ```text
//! cargo run --release -p pod-registry --example state_size [RECORDS]
//! ```

use std::hint::black_box;
use std::time::Instant;

use pod_registry::{Mutation, PodName, Record, RegistryState, ScopeRule};

/// The process's resident memory, in bytes (Linux).
fn resident() -> isize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| {
            kb.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<isize>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn record(i: usize) -> Record {
    Record {
        pod_name: PodName::new(format!("worker-{i}")).expect("valid name"),
        socket_path: format!("/run/pods/worker-{i}.sock"),
        scope_delegated: vec![ScopeRule::write(format!("/srv/repo/worker-{i}"))],
        callback_address: "/run/pods/parent.sock".into(),
        incarnation: Some(format!("{i:016x}")),
    }
}

fn departure(i: usize) -> Mutation {
    Mutation::Depart {
        pod_name: PodName::new(format!("gone-{i}")).expect("valid name"),
        incarnation: Some(format!("{i:016x}")),
    }
}

fn main() {
    let pods: usize = std::env::args()
        .nth(1)
        .map_or(10_000, |n| n.parse().expect("RECORDS is a number"));
    let adds: Vec<Mutation> = (0..pods).map(|i| Mutation::Add(record(i))).collect();
    let departures: Vec<Mutation> = (0..4096).map(departure).collect();

    let before = resident();
    let mut state = RegistryState::default();
    let start = Instant::now();
    for add in &adds {
        state.apply(add);
    }
    let add_time = start.elapsed();
    let records_bytes = resident() - before;
    // The record contents themselves (what the input holds too).
    let content: usize = adds
        .iter()
        .map(|m| match m {
            Mutation::Add(r) => {
                r.pod_name.as_str().len()
                    + r.socket_path.len()
                    + r.callback_address.len()
                    + r.incarnation.as_ref().map_or(0, String::len)
                    + r.scope_delegated.capacity() * std::mem::size_of::<ScopeRule>()
                    + r.scope_delegated
                        .iter()
                        .map(|s| s.target.len())
                        .sum::<usize>()
            }
            _ => 0,
        })
        .sum();
    for departure in &departures {
        state.apply(departure);
    }
    let total_bytes = resident() - before;

    // Lookups as the receive path makes them: is_departed + get by &str.
    let rounds = 50;
    let start = Instant::now();
    for _ in 0..rounds {
        for add in &adds {
            if let Mutation::Add(r) = add {
                black_box(state.is_departed(r.pod_name.as_str(), r.incarnation.as_deref()));
                black_box(state.get(r.pod_name.as_str(), r.incarnation.as_deref()));
            }
        }
    }
    let lookup_time = start.elapsed() / (rounds * pods as u32);

    // Churn: depart then re-add a fresh incarnation of every record.
    let start = Instant::now();
    for (i, add) in adds.iter().enumerate() {
        if let Mutation::Add(r) = add {
            black_box(state.apply(&Mutation::Depart {
                pod_name: r.pod_name.clone(),
                incarnation: r.incarnation.clone(),
            }));
            let mut again = r.clone();
            again.incarnation = Some(format!("{:016x}", i + pods));
            black_box(state.apply(&Mutation::Add(again)));
        }
    }
    let churn_time = start.elapsed() / pods as u32;

    println!("{pods} records: {records_bytes} B resident growth building the state ({} B/record; record contents {} B/record)", records_bytes / pods as isize, content / pods);
    println!(
        "+ 4096 tombstones: {total_bytes} B total ({} B/tombstone)",
        (total_bytes - records_bytes) / 4096
    );
    println!("add (incl. clone): {:?}/record", add_time / pods as u32);
    println!("is_departed + get: {lookup_time:?}/record");
    println!("depart + add a new incarnation: {churn_time:?}/record");
    assert_eq!(state.len(), pods);
}
