//! Push liveness on etcd: [`LeaseLiveness::watch_gone`] resolves when a
//! holder's lease is revoked or expires, at once for one already gone,
//! never for one kept alive; and a holder cut off from the cluster learns
//! that its lease may be gone within its TTL.

use std::future::Future;
use std::time::Duration;

use pod_scope_lock::{EtcdError, LeaseHolder, LeaseLiveness};

use super::{wait_until, Single};

/// A liveness bound for waits, not a performance assertion.
const DEADLINE: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Whether `gone` resolves within `wait`.
fn resolves(runtime: &tokio::runtime::Runtime, gone: impl Future, wait: Duration) -> bool {
    runtime.block_on(async { tokio::time::timeout(wait, gone).await.is_ok() })
}

#[test]
fn a_watch_resolves_when_the_lease_goes_and_never_while_it_is_kept() {
    let single = Single::start();
    let store = single.cluster.store("watch");
    let liveness = LeaseLiveness::new(&store);
    let runtime = runtime();
    let kept = LeaseHolder::acquire(&store, 2).unwrap();
    let revoked = LeaseHolder::acquire(&store, 2).unwrap();
    let expiring = LeaseHolder::acquire(&store, 2).unwrap();
    let lease = |h: &LeaseHolder| u64::try_from(h.lease_id()).ok();

    let kept_gone = liveness.watch_gone(kept.holder_id(), lease(&kept));
    let revoked_gone = liveness.watch_gone(revoked.holder_id(), lease(&revoked));
    let expiring_gone = liveness.watch_gone(expiring.holder_id(), lease(&expiring));
    // Without a lease to compare, the key alone counts.
    let revoked_any = liveness.watch_gone(revoked.holder_id(), None);

    revoked.revoke().unwrap();
    assert!(resolves(&runtime, revoked_gone, DEADLINE), "revoked");
    assert!(
        resolves(&runtime, revoked_any, DEADLINE),
        "revoked, any lease"
    );
    // Abandoned: expires after its TTL (2 s), and the watch sees it.
    expiring.abandon();
    assert!(resolves(&runtime, expiring_gone, DEADLINE), "expired");
    // Kept alive past several TTLs: still pending.
    let mut kept_gone = Box::pin(kept_gone);
    assert!(!resolves(
        &runtime,
        kept_gone.as_mut(),
        Duration::from_secs(5)
    ));
    assert!(!kept.is_lost());
    drop(kept);
    assert!(resolves(&runtime, kept_gone, DEADLINE), "dropped (revoked)");
}

#[test]
fn a_holder_already_gone_or_holding_another_lease_resolves_at_once() {
    let single = Single::start();
    let store = single.cluster.store("watch-now");
    let liveness = LeaseLiveness::new(&store);
    let runtime = runtime();
    let holder = LeaseHolder::acquire(&store, 5).unwrap();
    let id = holder.holder_id();
    let lease = u64::try_from(holder.lease_id()).unwrap();
    // Another lease than the one the key holds: the recorded holder is
    // gone, as a reused pid with another start time is.
    assert!(resolves(
        &runtime,
        liveness.watch_gone(id, Some(lease + 1)),
        DEADLINE
    ));
    // No key at all (an id no holder took).
    let unused = if id == 1 { 2 } else { id - 1 };
    assert!(resolves(
        &runtime,
        liveness.watch_gone(unused, None),
        DEADLINE
    ));
    // Watches stopped by a drop leave the others working.
    for _ in 0..3 {
        drop(liveness.watch_gone(id, Some(lease)));
    }
    let gone = liveness.watch_gone(id, Some(lease));
    holder.revoke().unwrap();
    assert!(resolves(&runtime, gone, DEADLINE));
    assert!(resolves(
        &runtime,
        liveness.watch_gone(id, Some(lease)),
        DEADLINE
    ));
}

#[test]
fn many_holders_share_one_watch_and_each_resolves_alone() {
    let single = Single::start();
    let store = single.cluster.store("watch-many");
    let liveness = LeaseLiveness::new(&store);
    let runtime = runtime();
    // More than one transaction of point reads takes: read by a range.
    let holders: Vec<LeaseHolder> = (0..80)
        .map(|_| LeaseHolder::acquire(&store, 5).unwrap())
        .collect();
    let mut watches: Vec<_> = holders
        .iter()
        .map(|h| Box::pin(liveness.watch_gone(h.holder_id(), u64::try_from(h.lease_id()).ok())))
        .collect();
    let mut holders = holders.into_iter();
    let first = holders.next().unwrap();
    first.revoke().unwrap();
    assert!(resolves(&runtime, watches.remove(0), DEADLINE));
    for watch in watches.iter_mut().take(5) {
        assert!(!resolves(
            &runtime,
            watch.as_mut(),
            Duration::from_millis(200)
        ));
    }
    for holder in holders {
        holder.revoke().unwrap();
    }
    for watch in watches {
        assert!(resolves(&runtime, watch, DEADLINE));
    }
}

/// A member that stops answering (SIGSTOP: its sockets stay open, as a
/// partition leaves them) cannot renew the lease; the holder says it may
/// be gone once its TTL passed since the last renewal etcd answered.
#[test]
fn a_holder_cut_off_from_the_cluster_learns_its_lease_is_lost() {
    let mut single = Single::start();
    let store = single.cluster.store("partition");
    let holder = LeaseHolder::acquire(&store, 2).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        holder.check().is_ok(),
        "kept alive while the member answers"
    );
    single.cluster.pause(0);
    wait_until("the cut-off holder sees its lease lost", || {
        holder.is_lost()
    });
    assert!(matches!(holder.check(), Err(EtcdError::LeaseLost { .. })));
    single.cluster.resume(0);
}
