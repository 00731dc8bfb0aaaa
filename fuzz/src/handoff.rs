//! The `handoff` target: bytes as a child's environment, read as the
//! handoff variables (DESIGN section 11), then adopted against a table
//! holding one reservation.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use pod_events::handoff::{ALL_VARIABLES, POD_SCOPE_LOCK, POD_SCOPE_STORE, TLS_VARIABLES};
use pod_events::{Handoff, HandoffError, TableLocation};
use pod_protocol::{PodName, ScopeRule};
use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{PodSpec, ScopeTable, TableStore};

/// Reads `data` as lines `NAME=VALUE` (values are arbitrary bytes), then
/// through [`Handoff::from_lookup`].
///
/// Checks: a refusal names one of the handoff variables; an accepted
/// handoff holds a valid name, parent and addresses (absolute, lexically
/// normal socket paths, or `tls://` addresses that parse), its table in
/// exactly one of `POD_SCOPE_LOCK` (a valid path) and `POD_SCOPE_STORE`
/// (an `etcd://` address without spaces), TLS files exactly when the
/// input sets all three `POD_TLS_*` (each a valid path), always when an
/// address is `tls://`, and survives [`Handoff::vars`] and a second parse
/// unchanged;
/// adopting it against a table where `child` is reserved (incarnation
/// `0123abcd`) succeeds only for that name and incarnation, and a
/// refused adoption leaves the table as it was.
pub fn handoff(data: &[u8]) {
    let mut vars: HashMap<Vec<u8>, OsString> = HashMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            vars.insert(
                line[..eq].to_vec(),
                OsString::from_vec(line[eq + 1..].to_vec()),
            );
        }
    }
    let lookup = |name: &str| vars.get(name.as_bytes()).cloned();
    let handoff = match Handoff::from_lookup(lookup) {
        Ok(handoff) => handoff,
        Err(error) => {
            let variable = match &error {
                HandoffError::Missing { variable }
                | HandoffError::NotUnicode { variable }
                | HandoffError::Invalid { variable, .. } => *variable,
                HandoffError::Incomplete { variable, given } => {
                    assert!(TLS_VARIABLES.contains(variable), "{error}");
                    assert!(TLS_VARIABLES.contains(given), "{error}");
                    assert!(!vars.contains_key(variable.as_bytes()), "{error}");
                    assert!(vars.contains_key(given.as_bytes()), "{error}");
                    *variable
                }
                _ => panic!("an unknown handoff error: {error}"),
            };
            assert!(
                ALL_VARIABLES.contains(&variable),
                "{error} names no handoff variable"
            );
            assert!(error.to_string().contains(variable), "{error}");
            return;
        }
    };
    for address in [&handoff.parent_socket, &handoff.socket] {
        match address.parse::<pod_protocol::Address>() {
            Ok(pod_protocol::Address::Unix(path)) => {
                assert_eq!(&path, address, "a Unix address is kept as its bare path");
            }
            Ok(tls) => {
                assert_eq!(&tls.to_string(), address, "a tls:// address is canonical");
                assert!(handoff.tls.is_some(), "a tls:// address without TLS files");
            }
            Err(error) => panic!("an accepted address {address:?} does not parse: {error}"),
        }
    }
    let all_set = TLS_VARIABLES
        .iter()
        .all(|v| vars.contains_key(v.as_bytes()));
    assert_eq!(
        handoff.tls.is_some(),
        all_set,
        "TLS files iff all three are set"
    );
    if let Some(files) = &handoff.tls {
        for path in [&files.cert, &files.key, &files.ca] {
            let path = path.to_str().expect("an accepted TLS path is text");
            pod_protocol::validate_path("tls", path).expect("an accepted TLS path is valid");
        }
    }
    match &handoff.scope {
        TableLocation::File(path) => {
            let path = path.to_str().expect("an accepted table path is text");
            pod_protocol::validate_path("table", path).expect("an accepted table path is valid");
            assert!(!vars.contains_key(POD_SCOPE_STORE.as_bytes()));
        }
        TableLocation::Store(address) => {
            assert!(address.starts_with("etcd://"), "{address}");
            assert!(!address.chars().any(char::is_whitespace), "{address:?}");
            assert!(!vars.contains_key(POD_SCOPE_LOCK.as_bytes()));
        }
        other => panic!("an unknown table location: {other:?}"),
    }
    assert_ne!(handoff.name, handoff.parent);
    let again: HashMap<&str, OsString> = handoff
        .vars()
        .into_iter()
        .map(|(k, v)| (k, v.into()))
        .collect();
    assert_eq!(
        Handoff::from_lookup(|k| again.get(k).cloned()).as_ref(),
        Ok(&handoff),
        "the variables a spawner sets parse back to the same handoff"
    );
    adopt(&handoff);
}

const INCARNATION: &str = "0123abcd";

fn adopt(handoff: &Handoff) {
    let liveness = FakeLiveness::new();
    liveness.spawn(100);
    liveness.spawn(200);
    let table = ScopeTable::new(MemoryStore::new(), liveness);
    let name = |n: &str| PodName::new(n).expect("a valid name");
    table
        .register(PodSpec {
            pod_name: name("root"),
            pid: 100,
            socket: "/run/pods/root/sock".into(),
            scope: vec![ScopeRule::write("/srv")],
        })
        .expect("root registers");
    // The incarnation the fuzzer can guess is planted in the reservation.
    table
        .store()
        .transact(|t| {
            t.reserve_reclaiming(
                &name("root"),
                PodSpec {
                    pod_name: name("child"),
                    pid: 0,
                    socket: "/run/pods/child/sock".into(),
                    scope: vec![ScopeRule::write("/srv/a")],
                },
                INCARNATION.into(),
                u64::MAX,
                |_| true,
            )
        })
        .expect("child is reserved");
    let before = table.list().expect("the table reads");
    match table.adopt(&handoff.name, &handoff.incarnation, 200) {
        Ok(adopted) => {
            assert_eq!(adopted.pod_name.as_str(), "child");
            assert_eq!(handoff.incarnation, INCARNATION);
            assert_eq!((adopted.pid, adopted.pending_until), (200, None));
        }
        Err(_) => assert_eq!(table.list().expect("the table reads"), before),
    }
}
