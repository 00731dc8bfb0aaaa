//! Existing Pods and ours on one table: processes following the protocol
//! of existing Pods (a blocking exclusive flock on the data file, read,
//! decide, truncate, write in place, fdatasync; legacy allocations without
//! start time or incarnation; a pretty-printed table without `version`)
//! race processes using this crate. No grant is lost, none is doubled
//! (every snapshot satisfies the invariant: no two pods outside each
//! other's lineage hold overlapping write scope), and the final file
//! parses for both.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use pod_scope_lock::{Allocation, FileStore, ScopeError, ScopeTable, Table, TableStore};

use crate::multiprocess::{role, spawn_role, target_of, Children, XorShift, CONTESTED};
use crate::{name, spec};

const EACH: usize = 3;
const ROUNDS: usize = 10;

/// One read-modify-write the way existing Pods do it. `change` returns
/// whether it changed the table.
fn their_transaction(path: &Path, change: impl FnOnce(&mut Table) -> bool) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    file.lock().unwrap();
    let mut text = String::new();
    (&file).read_to_string(&mut text).unwrap();
    let allocations: Vec<Allocation> = if text.trim().is_empty() {
        Vec::new()
    } else {
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        serde_json::from_value(json["allocations"].clone()).unwrap()
    };
    let mut table: Table = allocations.into_iter().collect();
    if !change(&mut table) {
        return;
    }
    let allocations: Vec<&Allocation> = table.allocations().collect();
    let out =
        serde_json::to_vec_pretty(&serde_json::json!({ "allocations": allocations })).unwrap();
    file.set_len(0).unwrap();
    file.write_all_at(&out, 0).unwrap();
    file.sync_data().unwrap();
}

/// A legacy allocation for this process, if the table's rules allow it
/// (existing Pods apply the same rules).
fn their_register(table: &mut Table, pod: &str, rule: &str) -> bool {
    let mut probe = table.clone();
    if probe
        .register(spec(pod, std::process::id(), &[rule]), 0, String::new())
        .is_err()
    {
        return false;
    }
    let mut legacy: Vec<Allocation> = table.allocations().cloned().collect();
    let mut new = probe.get(pod).unwrap().clone();
    new.start_time = None;
    new.incarnation = None;
    legacy.push(new);
    *table = legacy.into_iter().collect();
    true
}

/// A racer: `INDEX` below `EACH` uses this crate, the others the protocol
/// of existing Pods. Prints `RACE ok|released <pod>` per success, `RACE
/// done`, then waits for end of input (so its pid stays alive).
#[test]
fn legacy_child() {
    let Some((path, index)) = role("legacy") else {
        return;
    };
    let me = std::process::id();
    let ours = index < EACH;
    let table = ScopeTable::with_proc_liveness(FileStore::new(&path));
    let mut rng = XorShift(0xA076_1D64_78BD_642F ^ ((index as u64 + 1) * 0x9E37_79B9));
    let report = |what: &str, pod: &str| println!("RACE {what} {pod}");
    let register = |pod: &str, rule: &str| -> bool {
        if ours {
            match table.register(spec(pod, me, &[rule])) {
                Ok(_) => true,
                Err(ScopeError::WriteConflict { .. }) => false,
                Err(e) => {
                    println!("RACE bad register {pod}: {e}");
                    false
                }
            }
        } else {
            let mut granted = false;
            their_transaction(&path, |t| {
                granted = their_register(t, pod, rule);
                granted
            });
            granted
        }
    };
    let release = |pod: &str| -> bool {
        if ours {
            table.release(&name(pod), None).is_ok()
        } else {
            let mut released = false;
            their_transaction(&path, |t| {
                released = t.release(&name(pod), None).is_ok();
                released
            });
            released
        }
    };
    for round in 0..ROUNDS {
        let unique = format!("u{index}-{round}");
        if register(&unique, &format!("w:/home/{index}/{round}/**")) {
            report("ok", &unique);
        } else {
            println!("RACE bad unique {unique} refused");
        }
        let contested = CONTESTED[rng.below(CONTESTED.len())];
        let pod = format!("c{index}-{round}");
        if register(&pod, contested) {
            report("ok", &pod);
            match table.owner_of(&target_of(contested)) {
                Ok(Some(a)) if a.pod_name.as_str() == pod => {}
                other => println!("RACE bad owner of {contested} is {other:?}, not {pod}"),
            }
            if rng.below(3) != 0 {
                if release(&pod) {
                    report("released", &pod);
                } else {
                    println!("RACE bad release {pod}");
                }
            }
        }
    }
    println!("RACE done");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

#[test]
fn existing_pods_and_ours_exclude_each_other_on_one_table() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("scope.lock");
    let store = FileStore::new(&path);
    let mut children = Children(
        (0..2 * EACH)
            .map(|i| spawn_role("legacy", "legacy_race::legacy_child", &path, i))
            .collect(),
    );
    let (sender, receiver) = mpsc::channel();
    for child in &mut children.0 {
        let stdout = child.stdout.take().unwrap();
        let sender = sender.clone();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut done = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some(at) = line.find("RACE ") else {
                    continue;
                };
                if done {
                    continue;
                }
                if &line[at..] == "RACE done" {
                    done = true;
                    let _ = sender.send(Ok(std::mem::take(&mut lines)));
                } else {
                    lines.push(line[at..].to_owned());
                }
            }
            if !done {
                let _ = sender.send(Err(lines));
            }
        });
    }
    drop(sender);

    // Every snapshot read while they race parses and satisfies the
    // invariant (the load checks it): no double grant at any instant.
    let (mut reports, mut snapshots) = (Vec::new(), 0);
    while reports.len() < 2 * EACH {
        match receiver.recv_timeout(Duration::from_millis(5)) {
            Ok(report) => reports.push(report.expect("a racer exited before finishing")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                store.load().unwrap();
                snapshots += 1;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("a racer's output ended"),
        }
    }
    let mut expected = BTreeSet::new();
    for line in reports.iter().flatten() {
        let mut words = line.split_whitespace().skip(1);
        match (words.next(), words.next()) {
            (Some("ok"), Some(pod)) => assert!(expected.insert(pod.to_owned()), "{pod} twice"),
            (Some("released"), Some(pod)) => assert!(expected.remove(pod), "{pod} released twice"),
            _ => panic!("racer reported: {line}"),
        }
    }
    // No grant lost: the table holds exactly what the racers were told
    // they hold, theirs legacy, ours not.
    let table = store.load().unwrap();
    table.check_invariant().unwrap();
    let actual: BTreeSet<String> = table
        .allocations()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(actual, expected);
    for a in table.allocations() {
        let index: usize = a.pod_name.as_str()[1..]
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(a.is_legacy(), index >= EACH, "{a:?}");
    }
    // The final file parses for them too.
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(json["allocations"].is_array());
    eprintln!(
        "legacy race: {EACH} of ours and {EACH} existing-Pod processes, {} held at the end, {snapshots} snapshots checked",
        actual.len()
    );
    for mut child in children.0.drain(..) {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }
}
