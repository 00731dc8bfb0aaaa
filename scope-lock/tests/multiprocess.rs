//! Tests across processes: this test binary re-executes itself
//! (`current_exe() --exact <test> --nocapture`) with a role in
//! `POD_SCOPE_LOCK_TEST_ROLE`; the role's test does nothing without it.
//!
//! - `race`: 8 processes race to register and delegate overlapping scopes on
//!   one file; every success is reported on stdout, and afterwards the table
//!   must hold exactly the successes not released, and satisfy the
//!   invariant (as must every snapshot read during the race).
//! - `crash`: a process saving in a loop is killed with SIGKILL at random
//!   moments; the table must always parse and satisfy the invariant, if
//!   need be through the journal.
//! - `legacy` (in `legacy`): processes following the protocol of existing
//!   Pods race ours on one table.
//! - `hold`: a process holding the lock is stopped with SIGSTOP; a writer
//!   gives up with an error naming its pid.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pod_scope_lock::{FileStore, ScopeError, ScopeTable, TableStore};

use crate::{name, spec};

const ROLE: &str = "POD_SCOPE_LOCK_TEST_ROLE";
const TABLE: &str = "POD_SCOPE_LOCK_TEST_TABLE";
const INDEX: &str = "POD_SCOPE_LOCK_TEST_INDEX";
/// Overrides the number of SIGKILLs of the crash test (default 200).
const CRASH_KILLS: &str = "POD_SCOPE_LOCK_CRASH_KILLS";

const RACERS: usize = 8;
const ROUNDS: usize = 12;

/// Kills the child processes if the test fails half-way.
pub(crate) struct Children(pub(crate) Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn spawn_role(role: &str, test: &str, table: &Path, index: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(ROLE, role)
        .env(TABLE, table)
        .env(INDEX, index.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The role's parameters, if this process was started for `role`.
pub(crate) fn role(role: &str) -> Option<(PathBuf, usize)> {
    if std::env::var(ROLE).ok()? != role {
        return None;
    }
    let table = PathBuf::from(std::env::var_os(TABLE)?);
    let index = std::env::var(INDEX).ok()?.parse().ok()?;
    Some((table, index))
}

/// A small deterministic generator, so each racer's choices differ.
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Contested top-level targets: nested, equal, recursive and not.
pub(crate) const CONTESTED: [&str; 6] = [
    "w:/srv/**",
    "w:/srv/a/**",
    "w:/srv/a/b/*",
    "w:/srv/*",
    "w:/srv/b/**",
    "w:/srv/a/b/c/**",
];
/// Contested sub-scopes of the shared root pod's `/shared`.
const SHARED: [&str; 5] = [
    "w:/shared/x/**",
    "w:/shared/x/y/*",
    "w:/shared/*",
    "w:/shared/y/**",
    "w:/shared/x/y/z/**",
];

pub(crate) fn target_of(rule: &str) -> String {
    let pattern = &rule[2..];
    let target = pattern.trim_end_matches("/**").trim_end_matches("/*");
    if target.is_empty() {
        "/".into()
    } else {
        target.into()
    }
}

/// One racer: register, delegate and release, printing `RACE ok <name>`
/// and `RACE released <name>` for every success and `RACE bad ...` for a
/// breach of exclusion or an unexpected error; then `RACE done`, and waits
/// for end of input so its pid stays alive until the parent has checked.
#[test]
fn race_child() {
    let Some((path, index)) = role("race") else {
        return;
    };
    let me = std::process::id();
    let table = ScopeTable::with_proc_liveness(FileStore::new(path));
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ ((index as u64 + 1) * 0x1234_5678_9ABC));
    let ok = |what: &str, pod: &str| println!("RACE {what} {pod}");
    let bad = |what: String| println!("RACE bad {what}");
    let expect_owner = |path: &str, owners: &[&str]| match table.owner_of(path) {
        Ok(Some(a)) if owners.contains(&a.pod_name.as_str()) => {}
        other => bad(format!(
            "owner of {path} is {other:?}, expected one of {owners:?}"
        )),
    };
    for round in 0..ROUNDS {
        let unique = format!("u{index}-{round}");
        match table.register(spec(&unique, me, &[&format!("w:/home/{index}/{round}/**")])) {
            Ok(_) => ok("ok", &unique),
            Err(e) => bad(format!("unique register {unique}: {e}")),
        }
        if round % 3 == 2 {
            match table.release(&name(&unique), None) {
                Ok(_) => ok("released", &unique),
                Err(e) => bad(format!("release {unique}: {e}")),
            }
        }

        let contested = CONTESTED[rng.below(CONTESTED.len())];
        let top = format!("c{index}-{round}");
        match table.register(spec(&top, me, &[contested])) {
            Ok(_) => {
                ok("ok", &top);
                let target = target_of(contested);
                expect_owner(&target, &[&top]);
                let sub = format!("d{index}-{round}");
                match table.delegate(&name(&top), spec(&sub, me, &[contested])) {
                    Ok(_) => ok("ok", &sub),
                    Err(e) => bad(format!("delegate {sub}: {e}")),
                }
                expect_owner(&target, &[&sub]);
                match table.release(&name(&top), None) {
                    Ok(_) => ok("released", &top),
                    Err(e) => bad(format!("release {top}: {e}")),
                }
                expect_owner(&target, &[&sub]);
                if rng.below(4) != 0 {
                    match table.release(&name(&sub), None) {
                        Ok(_) => ok("released", &sub),
                        Err(e) => bad(format!("release {sub}: {e}")),
                    }
                }
            }
            Err(ScopeError::WriteConflict { .. }) => {}
            Err(e) => bad(format!("register {top}: {e}")),
        }

        let shared = SHARED[rng.below(SHARED.len())];
        let child = format!("s{index}-{round}");
        match table.delegate(&name("root"), spec(&child, me, &[shared])) {
            Ok(_) => {
                ok("ok", &child);
                expect_owner(&target_of(shared), &[&child]);
                if rng.below(3) != 0 {
                    match table.release(&name(&child), None) {
                        Ok(_) => ok("released", &child),
                        Err(e) => bad(format!("release {child}: {e}")),
                    }
                }
            }
            Err(ScopeError::WriteConflict { .. }) => {}
            Err(e) => bad(format!("delegate {child}: {e}")),
        }
    }
    println!("RACE done");
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}

#[test]
fn racing_processes_lose_no_update_and_keep_the_invariant() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("scope.lock");
    let store = FileStore::new(&path);
    // The shared spawner lives as long as this (parent) process.
    let root = ScopeTable::with_proc_liveness(store.clone());
    root.register(spec("root", std::process::id(), &["w:/shared/**"]))
        .unwrap();

    let mut children = Children(
        (0..RACERS)
            .map(|i| spawn_role("race", "multiprocess::race_child", &path, i))
            .collect(),
    );
    let (sender, receiver) = mpsc::channel();
    for child in &mut children.0 {
        let stdout = child.stdout.take().unwrap();
        let sender = sender.clone();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut done = false;
            // Reads to the end, so the racer's final output never meets a
            // closed pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print `test <name> ... ` in front of the
                // first line of output.
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

    // While they race, every snapshot parses and satisfies the invariant
    // (loading checks it).
    let mut reports = Vec::new();
    let mut snapshots = 0;
    while reports.len() < RACERS {
        match receiver.recv_timeout(Duration::from_millis(5)) {
            Ok(report) => reports.push(report.expect("a racer exited before finishing")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                store.load().unwrap();
                snapshots += 1;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("a racer's output ended"),
        }
    }

    let mut expected = BTreeSet::from(["root".to_owned()]);
    let mut successes = 0;
    for line in reports.iter().flatten() {
        let mut words = line.split_whitespace().skip(1);
        match (words.next(), words.next()) {
            (Some("ok"), Some(pod)) => {
                successes += 1;
                assert!(expected.insert(pod.to_owned()), "{pod} allocated twice");
            }
            (Some("released"), Some(pod)) => assert!(expected.remove(pod), "{pod} released twice"),
            _ => panic!("racer reported: {line}"),
        }
    }
    // All racers are alive (waiting on stdin), so nothing was reclaimed:
    // the table must hold exactly what they were told they hold.
    let table = store.load().unwrap();
    table.check_invariant().unwrap();
    let actual: BTreeSet<String> = table
        .allocations()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(actual, expected);
    assert!(
        successes >= RACERS * ROUNDS,
        "every unique registration succeeds"
    );
    eprintln!(
        "race: {RACERS} processes, {successes} successful allocations, {} held at the end, {snapshots} snapshots checked",
        actual.len()
    );

    for mut child in children.0.drain(..) {
        drop(child.stdin.take());
        let status = child.wait().unwrap();
        assert!(status.success(), "racer failed: {status}");
    }
    // Now the racers are gone: their allocations are stale.
    let reclaimed = root.reclaim_stale().unwrap();
    assert_eq!(reclaimed.len(), expected.len() - 1);
    assert_eq!(root.list().unwrap().len(), 1);
}

/// Saves in a loop until killed: registers, delegates and releases pods of
/// its own, keeping up to 150 allocations so each save writes a sizeable
/// file. Prints `CRASH ready` once it starts and `CRASH saved` after each
/// registration.
#[test]
fn crash_child() {
    let Some((path, index)) = role("crash") else {
        return;
    };
    let me = std::process::id();
    let table = ScopeTable::with_proc_liveness(FileStore::new(path));
    println!("CRASH ready");
    let mut held = std::collections::VecDeque::new();
    for round in 0usize.. {
        let top = format!("k{index}-{round}");
        // Stale pods of killed predecessors in its way are reclaimed by this
        // register.
        if table
            .register(spec(&top, me, &[&format!("w:/crash/{round}/**")]))
            .is_ok()
        {
            println!("CRASH saved");
            let _ = table.delegate(
                &name(&top),
                spec(
                    &format!("g{index}-{round}"),
                    me,
                    &[&format!("w:/crash/{round}/sub/**")],
                ),
            );
            held.push_back(top);
        }
        if held.len() > 150 {
            if let Some(old) = held.pop_front() {
                let _ = table.release(&name(&old), None);
            }
        }
    }
}

#[test]
fn sigkill_during_saves_always_leaves_a_valid_table() {
    let kills: usize = std::env::var(CRASH_KILLS)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("scope.lock");
    let store = FileStore::new(&path);
    let journal = store.journal_path().to_owned();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = XorShift(seed | 1);
    let (mut sizes, mut mid_write, mut torn) = (BTreeSet::new(), 0, 0);
    let mut captured: Option<(Vec<u8>, Vec<u8>)> = None;
    for kill in 0..kills {
        let mut children = Children(vec![spawn_role(
            "crash",
            "multiprocess::crash_child",
            &path,
            kill,
        )]);
        let child = &mut children.0[0];
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("CRASH ready") {
            line.clear();
            assert!(stdout.read_line(&mut line).unwrap() > 0, "the saver died");
        }
        if kill % 10 == 0 {
            // Whatever the machine's load, some savers get to save.
            while !line.contains("CRASH saved") {
                line.clear();
                assert!(stdout.read_line(&mut line).unwrap() > 0, "the saver died");
            }
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 40_000));
        child.kill().unwrap();
        child.wait().unwrap();
        let mut expected_names = None;
        if let Ok(journal_bytes) = std::fs::read(&journal) {
            mid_write += 1;
            // The data file alone may be torn (killed mid-rewrite): then the
            // journal beside it is complete and the load recovers from it.
            let raw = std::fs::read(&path).unwrap_or_default();
            if serde_json::from_slice::<serde_json::Value>(&raw).is_err() {
                torn += 1;
            }
            // A kill lands in the in-place rewrite itself only now and
            // then (it is short beside the fsyncs), so a complete journal
            // also gets the data file torn as that rewrite would have left
            // it: a prefix of the journal's table over the old bytes.
            if let Some(body) = complete_journal_body(&journal_bytes) {
                // Killed before the rewrite began, the data file holds the
                // old bytes: keep a tear of them for the check at the end.
                if captured.is_none() && !torn_now(&raw) {
                    captured = a_tear(body, &raw).map(|tear| (journal_bytes.clone(), tear));
                }
                let cut = 1 + rng.below(body.len() - 1);
                let mut tear = body[..cut].to_vec();
                tear.extend_from_slice(raw.get(cut..).unwrap_or_default());
                if serde_json::from_slice::<serde_json::Value>(&tear).is_err() {
                    std::fs::write(&path, &tear).unwrap();
                    torn += 1;
                    expected_names = Some(pod_names_in(body));
                }
            }
        }
        let table = store
            .load()
            .unwrap_or_else(|e| panic!("after kill {kill} (seed {seed}): {e}"));
        table.check_invariant().unwrap();
        if let Some(names) = expected_names {
            let loaded: Vec<String> = table
                .allocations()
                .map(|a| a.pod_name.to_string())
                .collect();
            assert_eq!(
                loaded, names,
                "after kill {kill}: recovered from the journal"
            );
        }
        sizes.insert(table.len());
    }
    eprintln!(
        "crash: {kills} SIGKILLs, {mid_write} left a journal behind (killed mid-save), {torn} torn data files recovered from it, {} distinct table sizes seen",
        sizes.len()
    );
    // The saver made progress across kills: the table was not stuck.
    assert!(sizes.len() > 1);
    // Kills in the short in-place rewrite are rare, so recovery is also
    // checked once for certain: a complete journal a kill left (one lives
    // through two fsyncs, so kills leave many), beside a data file torn
    // half-way through its rewrite.
    if kills >= 100 {
        let (journal_bytes, tear) = captured.expect("no kill left a complete journal");
        let body = complete_journal_body(&journal_bytes).unwrap();
        std::fs::write(&path, &tear).unwrap();
        std::fs::write(&journal, &journal_bytes).unwrap();
        let table = store.load().unwrap();
        let loaded: Vec<String> = table
            .allocations()
            .map(|a| a.pod_name.to_string())
            .collect();
        assert_eq!(loaded, pod_names_in(body));
        store.transact(|_| Ok(())).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            body,
            "rewritten from the journal"
        );
        assert!(!journal.exists());
    }
}

/// The new table inside a journal file whose length is the one its header
/// announces (README: `pod-scope-lock journal 1 <new length> <old length>
/// <checksum>`, a newline, the new table, 8 bytes per 256-byte block of
/// the old one): complete, as a kill (unlike a power loss) leaves no
/// garbage in what was written.
fn complete_journal_body(journal: &[u8]) -> Option<&[u8]> {
    let newline = journal.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&journal[..newline]).ok()?;
    let mut lengths = header
        .strip_prefix("pod-scope-lock journal 1 ")?
        .split(' ')
        .map(|field| field.parse::<usize>().ok());
    let (new, old) = (lengths.next()??, lengths.next()??);
    let rest = &journal[newline + 1..];
    (rest.len() == new + 8 * old.div_ceil(256) && new > 1).then(|| &rest[..new])
}

/// The data file as the rewrite of `old` into `new` leaves it when cut
/// just past the first byte it changes (or later, until the mix no longer
/// parses); `None` if no cut tears it (the two are equal).
fn a_tear(new: &[u8], old: &[u8]) -> Option<Vec<u8>> {
    let changed = new.iter().zip(old).take_while(|(n, o)| n == o).count();
    (changed + 1..=new.len())
        .map(|cut| [&new[..cut], old.get(cut..).unwrap_or_default()].concat())
        .find(|tear| serde_json::from_slice::<serde_json::Value>(tear).is_err())
}

fn torn_now(data: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(data).is_err()
}

fn pod_names_in(table: &[u8]) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_slice(table).unwrap();
    json["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["pod_name"].as_str().unwrap().to_owned())
        .collect()
}

/// Takes the table's lock as existing Pods do (a blocking exclusive flock
/// on the data file), prints `HOLD locked`, and stops itself with SIGSTOP,
/// holding it.
#[test]
fn hold_child() {
    let Some((path, _)) = role("hold") else {
        return;
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    file.lock().unwrap();
    println!("HOLD locked");
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP)
        .unwrap();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(file);
}

#[test]
fn a_stopped_lock_holder_makes_operations_fail_naming_its_pid() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("scope.lock");
    let me = std::process::id();
    let table = ScopeTable::with_proc_liveness(FileStore::new(&path));
    table.register(spec("root", me, &["w:/srv/**"])).unwrap();

    let mut children = Children(vec![spawn_role(
        "hold",
        "multiprocess::hold_child",
        &path,
        0,
    )]);
    let holder = children.0[0].id();
    let mut stdout = BufReader::new(children.0[0].stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("HOLD locked") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the holder died");
    }
    let impatient = FileStore::new(&path).with_lock_timeout(Duration::from_millis(300));
    let table = ScopeTable::with_proc_liveness(impatient.clone());
    let errors = [
        table
            .delegate(&name("root"), spec("child", me, &["w:/srv/a/**"]))
            .unwrap_err(),
        table.list().unwrap_err(),
        impatient.transact(|_| Ok(())).unwrap_err(),
    ];
    for error in errors {
        match &error {
            ScopeError::LockTimeout {
                path: p,
                holder: h,
                waited,
            } => {
                assert_eq!(p, &path);
                assert_eq!(*h, Some(holder), "{error}");
                assert!(*waited >= Duration::from_millis(300));
                assert!(error.to_string().contains(&format!("process {holder}")));
            }
            other => panic!("expected LockTimeout, got {other}"),
        }
    }
    // Once the holder is gone, so is its lock.
    drop(children);
    table
        .delegate(&name("root"), spec("child", me, &["w:/srv/a/**"]))
        .unwrap();
}
