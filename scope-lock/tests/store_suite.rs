//! One behavioural suite of the `TableStore` contract, run against every
//! store: `MemoryStore`, `FileStore` and (feature `etcd`) `EtcdStore` on a
//! real single-member etcd. Each case is a generic fn over a [`Backing`]
//! (what makes handles on one stored table); `suite!` instantiates them
//! per store, so a store that passes here swaps in under `ScopeTable`.

use std::sync::{Arc, Barrier};

use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{FileStore, ScopeError, ScopeTable, TableStore};

use crate::{name, spec};

/// Makes handles on one stored table: every handle sees what another
/// committed.
pub(crate) trait Backing {
    type Store: TableStore + Clone;
    fn handle(&self) -> Self::Store;
}

pub(crate) struct Memory(MemoryStore);

impl Backing for Memory {
    type Store = MemoryStore;
    fn handle(&self) -> MemoryStore {
        self.0.clone()
    }
}

pub(crate) struct File(tempfile::TempDir);

impl Backing for File {
    type Store = FileStore;
    fn handle(&self) -> FileStore {
        FileStore::new(self.0.path().join("scope.lock"))
    }
}

fn live() -> FakeLiveness {
    let live = FakeLiveness::new();
    for pid in 1..=40 {
        live.spawn(pid);
    }
    live
}

/// Grants and refusals made through one handle are what another sees.
pub(crate) fn grants_are_seen_by_every_handle<B: Backing>(backing: &B) {
    let live = live();
    let a = ScopeTable::new(backing.handle(), live.clone());
    let b = ScopeTable::new(backing.handle(), live.clone());
    a.register(spec("root", 1, &["w:/srv/**"])).unwrap();
    let child = b
        .delegate(&name("root"), spec("child", 2, &["w:/srv/a/**"]))
        .unwrap();
    assert_eq!(a.find(&name("child")).unwrap().unwrap(), child);
    let err = a.register(spec("other", 3, &["w:/srv/b/**"])).unwrap_err();
    assert!(
        matches!(err, ScopeError::WriteConflict { ref competitor, .. } if competitor.as_str() == "root"),
        "{err}"
    );
    assert!(b.find(&name("other")).unwrap().is_none());
    assert_eq!(
        b.owner_of("/srv/a/x").unwrap().unwrap().pod_name.as_str(),
        "child"
    );
    a.release(&name("root"), None).unwrap();
    let orphan = b.find(&name("child")).unwrap().unwrap();
    assert_eq!(orphan.delegated_from, None, "release reparents the child");
    assert_eq!(b.list().unwrap().len(), 1);
}

/// A closure that fails after changing the table persists nothing.
pub(crate) fn a_failed_transaction_persists_nothing<B: Backing>(backing: &B) {
    let live = live();
    let table = ScopeTable::new(backing.handle(), live.clone());
    table.register(spec("root", 1, &["w:/srv/**"])).unwrap();
    let before = backing.handle().load().unwrap();
    let err = backing
        .handle()
        .transact(|t| {
            t.release(&name("root"), None)?;
            Err::<(), _>(ScopeError::UnknownPod { name: name("x") })
        })
        .unwrap_err();
    assert!(matches!(err, ScopeError::UnknownPod { .. }));
    assert_eq!(backing.handle().load().unwrap(), before);
    // The handle that ran it too (a store that caches must not keep the
    // closure's changes).
    assert!(table.find(&name("root")).unwrap().is_some());
}

/// Handles racing from threads for one write scope: exactly one wins,
/// the others are refused naming it, and the invariant holds.
pub(crate) fn racing_handles_grant_exactly_one<B: Backing>(backing: &B) {
    const RACERS: u32 = 8;
    let live = live();
    let barrier = Arc::new(Barrier::new(RACERS as usize));
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..=RACERS)
            .map(|i| {
                let table = ScopeTable::new(backing.handle(), live.clone());
                let barrier = Arc::clone(&barrier);
                scope.spawn(move || {
                    barrier.wait();
                    table.register(spec(&format!("r{i}"), i, &["w:/srv/shared/**"]))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, ScopeError::WriteConflict { competitor, .. } if *competitor == winners[0].pod_name),
                "{e}"
            );
        }
    }
    let table = backing.handle().load().unwrap();
    assert_eq!(table.len(), 1);
    table.check_invariant().unwrap();
}

/// A dead pod's scope is reclaimed, for every handle.
pub(crate) fn dead_pods_are_reclaimed<B: Backing>(backing: &B) {
    let live = live();
    let a = ScopeTable::new(backing.handle(), live.clone());
    a.register(spec("root", 1, &["w:/srv/**"])).unwrap();
    a.delegate(&name("root"), spec("child", 2, &["w:/srv/a/**"]))
        .unwrap();
    live.kill(2);
    let reclaimed = a.reclaim_stale().unwrap();
    assert_eq!(reclaimed.len(), 1);
    let b = ScopeTable::new(backing.handle(), live.clone());
    assert_eq!(
        b.owner_of("/srv/a/x").unwrap().unwrap().pod_name.as_str(),
        "root"
    );
    // A dead holder never blocks a new request.
    live.kill(1);
    b.register(spec("next", 3, &["w:/srv/**"])).unwrap();
    assert_eq!(a.list().unwrap().len(), 1);
}

/// Reservations are stored and adopted through the store like any change.
pub(crate) fn reservations_are_adopted_across_handles<B: Backing>(backing: &B) {
    let live = live();
    let a = ScopeTable::new(backing.handle(), live.clone());
    let b = ScopeTable::new(backing.handle(), live.clone());
    a.register(spec("root", 1, &["w:/srv/**"])).unwrap();
    let reserved = a
        .reserve(&name("root"), spec("kid", 1, &["w:/srv/k/**"]))
        .unwrap();
    assert!(reserved.pending_until.is_some());
    let adopted = b
        .adopt(&name("kid"), reserved.incarnation.as_deref().unwrap(), 5)
        .unwrap();
    assert_eq!(adopted.pid, 5);
    assert_eq!(a.find(&name("kid")).unwrap().unwrap().pending_until, None);
}

macro_rules! suite {
    ($module:ident, $backing:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn grants_are_seen_by_every_handle() {
                super::grants_are_seen_by_every_handle(&$backing);
            }

            #[test]
            fn a_failed_transaction_persists_nothing() {
                super::a_failed_transaction_persists_nothing(&$backing);
            }

            #[test]
            fn racing_handles_grant_exactly_one() {
                super::racing_handles_grant_exactly_one(&$backing);
            }

            #[test]
            fn dead_pods_are_reclaimed() {
                super::dead_pods_are_reclaimed(&$backing);
            }

            #[test]
            fn reservations_are_adopted_across_handles() {
                super::reservations_are_adopted_across_handles(&$backing);
            }
        }
    };
}

suite!(memory, Memory(MemoryStore::new()));
suite!(file, File(tempfile::tempdir().unwrap()));
#[cfg(feature = "etcd")]
suite!(etcd, crate::etcd::Single::start());
