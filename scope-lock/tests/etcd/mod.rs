//! `EtcdStore` and `LeaseLiveness` on real etcd members (feature `etcd`):
//! the store suite's backing, what only a networked store has (its key
//! layout, invalid tables, unreachable clusters, leases), and the fault
//! tests on three members (`faults`); push liveness (`watch`).

mod faults;
mod watch;

use std::time::{Duration, Instant};

use pod_scope_lock::testing::FakeLiveness;
use pod_scope_lock::{
    EtcdError, EtcdStore, LeaseHolder, LeaseLiveness, Liveness, ScopeError, ScopeTable, TableStore,
};

use crate::store_suite::Backing;
use crate::{name, spec};
pub(crate) use pod_scope_lock::testing::etcd::EtcdCluster as Cluster;

/// A single-member etcd; every handle is a store of its own (its own
/// connection, runtime and cache) on one prefix.
pub(crate) struct Single {
    pub(crate) cluster: Cluster,
}

impl Single {
    pub(crate) fn start() -> Single {
        Single {
            cluster: Cluster::start(1),
        }
    }
}

impl Backing for Single {
    type Store = EtcdStore;
    fn handle(&self) -> EtcdStore {
        self.cluster.store("suite/table")
    }
}

fn check_invalid(store: &EtcdStore, what: &str) {
    match store.load() {
        Err(ScopeError::Etcd(EtcdError::InvalidTable { message, .. })) => {
            assert!(message.contains(what), "{message}")
        }
        other => panic!("expected InvalidTable about {what}, got {other:?}"),
    }
}

/// Raw writes beside the store, as another tool (or an attacker with etcd
/// access) would make them.
fn raw_put(cluster: &Cluster, key: &str, value: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let endpoints = cluster.address("x").endpoints;
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect(endpoints, None).await.unwrap();
        client.put(key, value, None).await.unwrap();
    });
}

#[test]
fn an_invalid_stored_table_is_refused_on_every_load_and_left_untouched() {
    let single = Single::start();
    let c = &single.cluster;
    let live = FakeLiveness::new();
    live.spawn(1);
    let store = c.store("bad");
    ScopeTable::new(store.clone(), live.clone())
        .register(spec("root", 1, &["w:/srv/**"]))
        .unwrap();

    raw_put(c, "bad/a/junk", "{not json");
    check_invalid(&c.store("bad"), "bad/a/junk is not an allocation");
    // The handle that cached a valid table reads again: meta is unchanged,
    // so a raw write behind it is only seen once meta moves; make it move.
    raw_put(c, "bad/meta", "1:99:raw");
    check_invalid(&store, "bad/a/junk");

    let c2 = c.store("bad2");
    let overlapping = |pod: &str| {
        format!(
            r#"{{"pod_name":"{pod}","pid":1,"start_time":1,"socket":"/s","scope_allow":[{{"target":"/srv","permission":"write","recursive":true}}],"delegated_from":null,"incarnation":"i"}}"#
        )
    };
    raw_put(c, "bad2/a/p1", &overlapping("p1"));
    raw_put(c, "bad2/a/p2", &overlapping("p2"));
    check_invalid(&c2, "overlap");
    raw_put(c, "bad3/a/p1", &overlapping("p2"));
    check_invalid(&c.store("bad3"), "holds the allocation of pod `p2`");
    raw_put(c, "bad4/meta", "2:1:x");
    check_invalid(&c.store("bad4"), "format version 2");
    // A refused write wrote nothing.
    let err = ScopeTable::new(c2.clone(), live)
        .register(spec("late", 1, &["w:/other/**"]))
        .unwrap_err();
    assert!(matches!(
        err,
        ScopeError::Etcd(EtcdError::InvalidTable { .. })
    ));
}

#[test]
fn an_unreachable_cluster_is_a_typed_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address =
        pod_scope_lock::EtcdAddress::parse(&format!("etcd://127.0.0.1:{port}/p")).unwrap();
    let err = EtcdStore::connect(&address, Cluster::options()).unwrap_err();
    assert!(
        matches!(err, ScopeError::Etcd(EtcdError::Unreachable { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

/// 10,000 allocations: one key each, read back in pages at one revision;
/// a delegate into the full table writes one key, under every limit.
#[test]
fn ten_thousand_allocations_fit_and_a_delegate_writes_one_key() {
    let single = Single::start();
    let live = FakeLiveness::new();
    live.spawn(1);
    let store = single.cluster.store("big");
    let table = ScopeTable::new(store.clone(), live.clone());
    table
        .register(spec("root", 1, &["w:/srv/**", "r:/usr/**"]))
        .unwrap();
    // Built 100 per transaction (etcd takes 128 writes in one).
    for batch in 0..100 {
        store
            .transact(|t| {
                for i in 0..100 {
                    let n = batch * 100 + i;
                    let s = spec(&format!("pod{n:05}"), 1, &[&format!("w:/srv/p{n}/**")]);
                    t.delegate(&name("root"), s, 1, format!("inc{n}"))?;
                }
                Ok(())
            })
            .unwrap();
    }
    let mut options = Cluster::options();
    options.page_size = 700;
    let fresh = EtcdStore::connect(&single.cluster.address("big"), options).unwrap();
    let loaded = fresh.load().unwrap();
    assert_eq!(loaded.len(), 10_001);
    assert_eq!(loaded, store.load().unwrap());
    ScopeTable::new(fresh.clone(), live)
        .delegate(&name("root"), spec("last", 1, &["w:/srv/last/**"]))
        .unwrap();
    assert_eq!(store.load().unwrap().len(), 10_002);
    // Too many changes for one etcd transaction are refused whole.
    let err = fresh
        .transact(|t| t.release(&name("root"), None).map(drop))
        .unwrap_err();
    assert!(
        matches!(err, ScopeError::Etcd(EtcdError::TooLarge { .. })),
        "{err}"
    );
    assert_eq!(store.load().unwrap().len(), 10_002);
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_lease_is_alive_while_kept_and_its_pod_is_reclaimed_once_it_is_gone() {
    let single = Single::start();
    let store = single.cluster.store("leases");
    let liveness = LeaseLiveness::new(&store);
    let table = ScopeTable::new(store.clone(), liveness.clone());
    let root = LeaseHolder::acquire(&store, 2).unwrap();
    let kid = LeaseHolder::acquire(&store, 2).unwrap();
    assert_ne!(root.holder_id(), kid.holder_id());
    table
        .register(spec("root", root.holder_id(), &["w:/srv/**"]))
        .unwrap();
    let granted = table
        .delegate(
            &name("root"),
            spec("kid", kid.holder_id(), &["w:/srv/k/**"]),
        )
        .unwrap();
    assert_eq!(granted.start_time, u64::try_from(kid.lease_id()).ok());
    // Kept alive past several TTLs.
    std::thread::sleep(Duration::from_secs(5));
    assert!(!kid.is_lost());
    assert!(liveness.is_same_process(kid.holder_id(), granted.start_time.unwrap()));
    assert!(table.reclaim_stale().unwrap().is_empty());

    // Abandoned (a crash, a partition): the lease expires after its TTL,
    // and the next reclaim returns the scope to the parent.
    let kid_id = kid.holder_id();
    kid.abandon();
    wait_until("the abandoned lease expires", || !liveness.is_alive(kid_id));
    let reclaimed = table.reclaim_stale().unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(
        table
            .owner_of("/srv/k/x")
            .unwrap()
            .unwrap()
            .pod_name
            .as_str(),
        "root"
    );
    // Revoked: gone at once.
    let root_id = root.holder_id();
    root.revoke().unwrap();
    assert!(!liveness.is_alive(root_id));
    assert_eq!(table.reclaim_stale().unwrap().len(), 1);
    assert!(table.list().unwrap().is_empty());
}

#[test]
fn a_holder_learns_that_its_lease_was_revoked() {
    let single = Single::start();
    let store = single.cluster.store("lost");
    let holder = LeaseHolder::acquire(&store, 2).unwrap();
    let lease = holder.lease_id();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let endpoints = single.cluster.address("x").endpoints;
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect(endpoints, None).await.unwrap();
        client.lease_revoke(lease).await.unwrap();
    });
    wait_until("the holder sees its lease gone", || holder.is_lost());
    assert!(matches!(holder.check(), Err(EtcdError::LeaseLost { .. })));
}
