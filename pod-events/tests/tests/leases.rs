//! Leases as liveness (feature `etcd`, a real single-member etcd started
//! by [`EtcdCluster`]): an endpoint on a scope table on etcd, watching its
//! registered children's leases with [`LeaseWatch`], presumes a child
//! whose lease is revoked, or expires, crashed at once (the reconcile
//! interval is a minute), releases its scope and moves its children up.

use std::sync::Arc;
use std::time::Duration;

use pod_events::{spawn_endpoint, CollectingSink, EndpointConfig, FakeReachability, LeaseWatch};
use pod_events::{Origin, Parent};
use pod_protocol::ScopeRule;
use pod_registry::testing::MemoryRegistry;
use pod_registry::{Record, Registry};
use pod_scope_lock::testing::etcd::EtcdCluster;
use pod_scope_lock::{EtcdStore, LeaseHolder, LeaseLiveness, PodSpec, ScopeTable};

use super::endpoint::{crashed, pod, reached};

/// A liveness bound for waits, not a performance assertion; well under
/// [`RARE`].
const DEADLINE: Duration = Duration::from_secs(20);
/// A reconcile interval no test waits for.
const RARE: Duration = Duration::from_secs(60);

fn spec(name: &str, holder: &LeaseHolder, target: &str) -> PodSpec {
    PodSpec {
        pod_name: pod(name),
        pid: holder.holder_id(),
        socket: format!("/s/{name}"),
        scope: vec![ScopeRule::write(target)],
    }
}

/// Polls `f` until it is true; fails after [`DEADLINE`].
async fn until(what: &str, f: impl FnMut() -> bool) {
    reached(what, DEADLINE, f).await;
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_whose_lease_is_revoked_or_expires_is_presumed_crashed_and_its_scope_reclaimed() {
    let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
        .await
        .unwrap();
    let (store, scopes): (EtcdStore, ScopeTable<EtcdStore, LeaseLiveness>) = blocking(|| {
        let store = cluster.store("endpoint/leases");
        let scopes = ScopeTable::new(store.clone(), LeaseLiveness::new(&store));
        (store, scopes)
    });
    let lease = |ttl| blocking(|| LeaseHolder::acquire(&store, ttl).unwrap());
    let (root, kid, grandkid, stays, cut_off) = (lease(5), lease(5), lease(5), lease(5), lease(2));
    let registry = MemoryRegistry::new();
    blocking(|| scopes.register(spec("root", &root, "/srv")).unwrap());
    for (name, holder) in [("kid", &kid), ("stays", &stays), ("cut-off", &cut_off)] {
        let target = format!("/srv/{name}");
        let allocation = blocking(|| {
            scopes
                .delegate(&pod("root"), spec(name, holder, &target))
                .unwrap()
        });
        assert_eq!(allocation.start_time, u64::try_from(holder.lease_id()).ok());
        registry
            .add(Record {
                pod_name: pod(name),
                socket_path: format!("/s/{name}"),
                scope_delegated: allocation.scope_allow.clone(),
                callback_address: "/s/root".into(),
                incarnation: allocation.incarnation.clone(),
            })
            .await
            .unwrap();
    }
    // The kid's own child, which its death moves up to the root (known to
    // the root as its relayed announcement made it).
    let allocation = blocking(|| {
        scopes
            .delegate(&pod("kid"), spec("grandkid", &grandkid, "/srv/kid/g"))
            .unwrap()
    });
    registry
        .add(Record {
            pod_name: pod("grandkid"),
            socket_path: "/s/grandkid".into(),
            scope_delegated: allocation.scope_allow.clone(),
            callback_address: "/s/kid".into(),
            incarnation: allocation.incarnation.clone(),
        })
        .await
        .unwrap();

    let parent = Arc::new(Parent::new(
        pod("root"),
        registry.clone(),
        scopes.clone(),
        FakeReachability::new(),
    ));
    let net = pod_transport::testing::MemoryNetwork::new();
    let sink = CollectingSink::new();
    let config = EndpointConfig::default()
        .reconcile_every(Some(RARE))
        .exit_watch(Some(Arc::new(LeaseWatch::new(scopes.liveness().clone()))));
    let endpoint = spawn_endpoint(parent, net.bind("/s/root"), sink.clone(), config);
    // The reconcile at start watches every live registered descendant.
    until("the four descendants are watched", || {
        endpoint.stats().watching == 4
    })
    .await;

    blocking(|| kid.revoke().unwrap());
    until("kid is presumed crashed", || {
        sink.lines().contains(&crashed("kid"))
    })
    .await;
    // Cut off (it stops renewing): presumed crashed once the lease expires.
    cut_off.abandon();
    until("cut-off is presumed crashed", || {
        sink.lines().contains(&crashed("cut-off"))
    })
    .await;
    let stats = endpoint.stop().await;

    let notes = sink.notifications();
    assert_eq!(notes.len(), 2, "{:?}", sink.lines());
    assert!(notes.iter().all(|n| n.origin == Origin::Inferred));
    assert_eq!((stats.exits_presumed, stats.reconciles), (2, 1));
    let names: Vec<_> = registry.list().into_iter().map(|r| r.pod_name).collect();
    assert_eq!(names, [pod("grandkid"), pod("stays")]);
    blocking(|| {
        for gone in ["kid", "cut-off"] {
            assert!(scopes.find(&pod(gone)).unwrap().is_none(), "{gone}");
        }
        let moved = scopes.find(&pod("grandkid")).unwrap().expect("kept");
        assert_eq!(moved.delegated_from, Some(pod("root")), "reparented");
        assert!(scopes.find(&pod("stays")).unwrap().is_some());
    });
    drop((root, grandkid, stays, scopes, store));
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
