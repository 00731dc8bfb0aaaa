//! Black-box tests of podctl on a scope table on etcd (`--scope-store`,
//! feature `etcd`), against a real single-member etcd
//! ([`EtcdCluster`], shared with pod-scope-lock's tests: without an etcd
//! binary they fail, saying how to get one).
//!
//! A pod on such a table is held by a lease: the test process takes the
//! leases ([`LeaseHolder`]) and gives their holder ids as `--pid`, as a
//! pod on another host would; the table is checked both through podctl
//! and through the store itself.

use pod_scope_lock::testing::etcd::EtcdCluster;
use pod_scope_lock::{LeaseHolder, LeaseLiveness, ScopeTable};
use serde_json::Value;

use rustix::process::Signal;

use super::support::{eventually, text, Env, Running, PODCTL};

/// A table prefix on `cluster` and podctl's `--scope-store` for it.
struct Table<'a> {
    cluster: &'a EtcdCluster,
    prefix: &'static str,
}

impl Table<'_> {
    fn url(&self) -> String {
        self.cluster.url(self.prefix)
    }

    /// The table as the store reads it, with lease liveness.
    fn scopes(&self) -> ScopeTable<pod_scope_lock::EtcdStore, LeaseLiveness> {
        let store = self.cluster.store(self.prefix);
        let liveness = LeaseLiveness::new(&store);
        ScopeTable::new(store, liveness)
    }

    /// A lease kept alive by this test process, as a pod's would be.
    fn holder(&self) -> LeaseHolder {
        LeaseHolder::acquire(&self.cluster.store(self.prefix), 5).unwrap()
    }
}

impl Env {
    /// `scope register` / `scope delegate --from` on the etcd table at
    /// `url`, held by lease holder `holder`; it must succeed.
    fn allocate_on(
        &self,
        url: &str,
        from: Option<&str>,
        name: &str,
        holder: u32,
        write: &str,
    ) -> Value {
        let (holder, socket) = (holder.to_string(), self.socket(name));
        let mut args = vec!["scope"];
        match from {
            Some(from) => args.extend(["delegate", "--from", from]),
            None => args.push("register"),
        }
        args.extend([
            "--scope-store",
            url,
            "--name",
            name,
            "--pid",
            &holder,
            "--socket",
            &socket,
            "--write",
            write,
        ]);
        self.json(&args)
    }

    /// `podctl -o json scopes --scope-store url`: the allocations by name.
    fn allocations_on(&self, url: &str) -> Vec<Value> {
        let table = self.json(&["scopes", "--scope-store", url]);
        table["allocations"].as_array().unwrap().clone()
    }
}

fn find<'a>(allocations: &'a [Value], name: &str) -> &'a Value {
    allocations
        .iter()
        .find(|a| a["pod_name"] == name)
        .unwrap_or_else(|| panic!("no allocation of {name} in {allocations:?}"))
}

#[test]
fn register_delegate_show_and_release_on_an_etcd_table_with_lease_state() {
    let cluster = EtcdCluster::start(1);
    let table = Table {
        cluster: &cluster,
        prefix: "podctl/scopes",
    };
    let url = table.url();
    let env = Env::new();
    let (root, kid) = (table.holder(), table.holder());

    let granted = env.allocate_on(&url, None, "root", root.holder_id(), "/srv/repo");
    assert_eq!(granted["pid"], root.holder_id());
    assert_eq!(granted["start_time"], root.lease_id());
    env.allocate_on(&url, Some("root"), "kid", kid.holder_id(), "/srv/repo/docs");
    // Refused by the same rules as on a file: outside the spawner's scope.
    env.check(
        &[
            "scope",
            "delegate",
            "--scope-store",
            &url,
            "--from",
            "root",
            "--name",
            "stray",
            "--pid",
            &kid.holder_id().to_string(),
            "--socket",
            &env.socket("stray"),
            "--write",
            "/elsewhere",
        ],
        1,
        "/elsewhere",
    );

    // The store itself holds what podctl said.
    let stored = table.scopes().list().unwrap();
    let names: Vec<&str> = stored.iter().map(|a| a.pod_name.as_str()).collect();
    assert_eq!(names, ["kid", "root"]);
    assert_eq!(stored[0].delegated_from.as_ref().unwrap().as_str(), "root");

    // Lease state: the holder, the lease in hex, alive.
    let shown = env.check(&["scopes", "--scope-store", &url], 0, "HOLDER");
    let kid_lease = format!("{:x}", kid.lease_id());
    let kid_row = shown.lines().find(|l| l.contains("kid")).unwrap();
    assert!(kid_row.contains(&format!("{kid_lease} (alive)")), "{shown}");
    let listed = env.allocations_on(&url);
    let kid_json = find(&listed, "kid");
    assert_eq!(kid_json["alive"], true);
    assert_eq!(kid_json["lease"]["id"], kid_lease.as_str());
    assert_eq!(kid_json["lease"]["state"], "alive");
    assert_eq!(find(&listed, "root")["delegated_from"], Value::Null);

    // The kid's lease is revoked (its pod is gone): expired, not alive.
    kid.revoke().unwrap();
    let listed = env.allocations_on(&url);
    assert_eq!(find(&listed, "kid")["lease"]["state"], "expired");
    assert_eq!(find(&listed, "kid")["alive"], false);
    assert_eq!(find(&listed, "root")["lease"]["state"], "alive");
    let shown = env.check(&["scopes", "--scope-store", &url], 0, "(expired)");
    assert!(
        shown
            .lines()
            .any(|l| l.contains("kid") && l.contains(" no ")),
        "{shown}"
    );

    let released = env.check(
        &["scope", "release", "--scope-store", &url, "--name", "kid"],
        0,
        "released the allocation of `kid`",
    );
    assert!(released.contains("lease holder"), "{released}");
    assert!(
        released.contains("its children now descend from `root`"),
        "{released}"
    );
    let names: Vec<String> = table
        .scopes()
        .list()
        .unwrap()
        .iter()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(names, ["root"]);
    env.check(
        &["scope", "release", "--scope-store", &url, "--name", "kid"],
        1,
        "no scope allocation for pod `kid`",
    );
    drop(root);
}

#[test]
fn podctl_run_holds_the_childs_allocation_by_a_lease_and_hands_the_store_over() {
    let cluster = EtcdCluster::start(1);
    let table = Table {
        cluster: &cluster,
        prefix: "podctl/run",
    };
    let url = table.url();
    let env = Env::new();
    let root = table.holder();
    env.allocate_on(&url, None, "root", root.holder_id(), "/srv/repo");

    // The child looks at the table it was handed while it runs.
    let script = r#""$PODCTL" -o json scopes --scope-store "$POD_SCOPE_STORE"; echo "lock=${POD_SCOPE_LOCK:-unset}""#;
    let out = run_kid(&env, &url, &["sh", "-c", script])
        .env("PODCTL", PODCTL)
        // Inherited by `run`, which must not pass it on: the table is
        // POD_SCOPE_STORE.
        .env("POD_SCOPE_LOCK", env.lock())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    let context = format!("stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{context}");
    assert!(stdout.contains("lock=unset"), "{context}");
    let json_start = stdout.find('{').expect("the child printed the table");
    let json_end = stdout.rfind('}').unwrap();
    let seen: Value = serde_json::from_str(&stdout[json_start..=json_end]).unwrap();
    let kid = find(seen["allocations"].as_array().unwrap(), "kid");
    assert_eq!(kid["alive"], true, "{context}");
    assert_eq!(kid["lease"]["state"], "alive", "{context}");
    assert_eq!(kid["pending_until"], Value::Null, "adopted: {context}");
    assert_ne!(kid["pid"], root.holder_id(), "its own lease: {context}");
    assert!(
        stdout.contains("released its scope"),
        "it did not report, so run released it: {context}"
    );

    // Released; the lease run held for it is revoked.
    let holder = kid["pid"].as_u64().unwrap() as u32;
    let liveness = table.scopes();
    eventually("the child's lease is revoked", || {
        !pod_scope_lock::Liveness::is_alive(liveness.liveness(), holder)
    });
    let names: Vec<String> = liveness
        .list()
        .unwrap()
        .iter()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(names, ["root"]);
}

/// `podctl run -- podctl listen` on an etcd table: the listen takes the
/// table from POD_SCOPE_STORE, adopts (or accepts run's adoption under
/// run's lease), and on SIGTERM departs, releasing its allocation.
#[test]
fn podctl_listen_started_by_podctl_run_adopts_and_departs_on_an_etcd_table() {
    let cluster = EtcdCluster::start(1);
    let table = Table {
        cluster: &cluster,
        prefix: "podctl/listen",
    };
    let url = table.url();
    let env = Env::new();
    let root = table.holder();
    env.allocate_on(&url, None, "root", root.holder_id(), "/srv/repo");

    let kid_dir = env.path("kid");
    let listen = [
        PODCTL,
        "listen",
        "--state-dir",
        &kid_dir,
        "--reconcile-interval-ms",
        "0",
    ];
    let mut run = Running::start(&mut run_kid(&env, &url, &listen));
    run.expect("kid pid ");
    let control = format!("{}.control", env.path("run/kid/sock"));
    run.wait_for_path(std::path::Path::new(&control));
    let scopes = table.scopes();
    let kid = scopes
        .find(&pod_scope_lock::PodName::new("kid").unwrap())
        .unwrap()
        .expect("kid holds an allocation");
    assert_eq!(kid.pending_until, None, "adopted: {kid:?}");
    assert!(scopes.is_live(&kid), "its lease is alive: {kid:?}");
    assert_eq!(kid.delegated_from.as_ref().unwrap().as_str(), "root");

    assert!(run.signal(Signal::TERM).success());
    run.expect("kid exited with status 0");
    assert!(
        !run.seen.iter().any(|l| l.contains("without reporting")),
        "the listen released its own allocation: {:?}",
        run.seen
    );
    let names: Vec<String> = scopes
        .list()
        .unwrap()
        .iter()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(names, ["root"]);
    eventually("the kid's lease is revoked", || {
        !pod_scope_lock::Liveness::is_alive(scopes.liveness(), kid.pid)
    });
}

/// `podctl listen --scope-store`: its sender checks match a Unix peer
/// by pid, which a lease-held allocation does not record, so a claim
/// checked against the table about a live lease-held pod from a Unix peer
/// is refused; once the pod's lease is gone anyone may report its
/// shutdown, and the endpoint releases its scope on the etcd table.
#[test]
fn an_endpoint_on_an_etcd_table_refuses_a_live_leased_pods_shutdown_and_applies_a_dead_ones() {
    let cluster = EtcdCluster::start(1);
    let table = Table {
        cluster: &cluster,
        prefix: "podctl/endpoint",
    };
    let url = table.url();
    let env = Env::new();
    let socket = env.socket("root");
    let mut root = listen_root(&env, &url, "0");
    let w9 = table.holder();
    env.allocate_on(&url, None, "w9", w9.holder_id(), "/srv/w9");

    // While w9's lease lives, this process is not w9 as far as a pid can
    // tell: its claim that w9 shut down is refused.
    let shut_down = serde_json::json!({"kind": "shut_down", "pod_name": "w9"});
    env.send(&socket, shut_down.clone());
    let refused = root.expect_log("refused an event its sender may not send");
    assert!(refused.contains("w9"), "{refused}");
    assert_eq!(table.scopes().list().unwrap().len(), 1);
    // Once the lease is gone, anyone may report the death.
    w9.revoke().unwrap();
    env.send(&socket, shut_down);
    root.expect("pod `w9` shut down; its scope is released");
    assert!(table.scopes().list().unwrap().is_empty());
    assert!(root.signal(Signal::TERM).success());
}

/// `podctl listen --scope-store` watches its descendants' leases: with
/// the reconcile interval at a minute (past the tests' 30 s patience), a
/// child whose lease is revoked is presumed crashed at once and its
/// allocation released, its own child moved up.
#[test]
fn podctl_listen_on_an_etcd_table_presumes_a_child_whose_lease_is_revoked_crashed() {
    let cluster = EtcdCluster::start(1);
    let table = Table {
        cluster: &cluster,
        prefix: "podctl/lease-watch",
    };
    let url = table.url();
    let env = Env::new();
    let (root, kid, grandkid) = (table.holder(), table.holder(), table.holder());
    env.allocate_on(&url, None, "root", root.holder_id(), "/srv/repo");
    env.allocate_on(&url, Some("root"), "kid", kid.holder_id(), "/srv/repo/kid");
    env.allocate_on(
        &url,
        Some("kid"),
        "gk",
        grandkid.holder_id(),
        "/srv/repo/kid/g",
    );
    // The reconcile at start finds both descendants in the table and
    // watches their leases.
    let mut listen = listen_root(&env, &url, "60000");
    listen.expect("gk");

    kid.revoke().unwrap();
    listen.expect("`kid` is gone without reporting: presumed crashed; scope released");
    let scopes = table.scopes();
    let names: Vec<String> = scopes
        .list()
        .unwrap()
        .iter()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(names, ["gk", "root"]);
    let moved = scopes
        .find(&pod_scope_lock::PodName::new("gk").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(moved.delegated_from.unwrap().as_str(), "root");
    assert!(listen.signal(Signal::TERM).success());
    drop((root, grandkid));
}

/// `podctl run` on an etcd table stops its child with SIGTERM once the
/// lease it holds for it is lost: here etcd stops answering (SIGSTOP, as a
/// partition looks) for longer than the lease's TTL (10 s), so the child's
/// parent may presume it crashed and its scope is no longer the child's.
#[test]
fn podctl_run_stops_its_child_once_the_lease_it_holds_for_it_is_lost() {
    let mut cluster = EtcdCluster::start(1);
    let prefix = "podctl/run-lost";
    let url = cluster.url(prefix);
    let env = Env::new();
    let root = LeaseHolder::acquire(&cluster.store(prefix), 30).unwrap();
    env.allocate_on(&url, None, "root", root.holder_id(), "/srv/repo");
    let mut run = Running::start(&mut run_kid(&env, &url, &["sleep", "600"]));
    run.expect("kid pid ");
    cluster.pause(0);
    run.expect_log("the lease holding the child's allocation is lost");
    cluster.resume(0);
    run.expect("kid was killed by signal 15");
    assert_eq!(run.wait().code(), Some(128 + 15));
    drop(root);
}

#[test]
fn bad_addresses_conflicting_flags_and_an_unreachable_cluster_are_refused() {
    let env = Env::new();
    env.check(
        &[
            "scopes",
            "--scope-lock",
            &env.lock(),
            "--scope-store",
            "etcd://127.0.0.1:1/p",
        ],
        2,
        "cannot be used with",
    );
    env.check(
        &["scopes", "--scope-store", "etcd://127.0.0.1:2379"],
        1,
        "no /PREFIX",
    );
    env.check(
        &[
            "scope",
            "reclaim",
            "--scope-store",
            "http://127.0.0.1:2379/p",
        ],
        1,
        "etcd://",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("etcd://127.0.0.1:{port}/p");
    env.check(&["scopes", "--scope-store", &address], 1, "unreachable");
}

/// A child's context on an etcd table: adopted under a lease of its own,
/// kept alive past several TTLs, released by `shut_down`, the lease
/// revoked with the context; a reservation its spawner adopted already
/// with a lease of its own is accepted, holding none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_context_holds_its_allocation_by_a_lease_it_keeps_alive() {
    use pod_events::{Handoff, PodContext, TableLocation};
    use pod_scope_lock::{Liveness, PodName, PodSpec, ScopeRule};
    use pod_transport::UnixSender;

    let cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(1))
        .await
        .unwrap();
    let table = Table {
        cluster: &cluster,
        prefix: "podctl/context",
    };
    let url = table.url();
    let (scopes, root) = tokio::task::block_in_place(|| (table.scopes(), table.holder()));
    let name = |n: &str| PodName::new(n).unwrap();
    let spec = |pod: &str, pid, write: &str| PodSpec {
        pod_name: name(pod),
        pid,
        socket: format!("/run/pods/{pod}/sock"),
        scope: vec![ScopeRule::write(write)],
    };
    let handoff = |pod: &str, incarnation: String| {
        Handoff::new(
            name(pod),
            incarnation,
            name("root"),
            "/run/pods/root/sock".into(),
            format!("/run/pods/{pod}/sock"),
            TableLocation::Store(url.clone()),
        )
    };
    let reserve = |pod: &str, write: &str| {
        tokio::task::block_in_place(|| {
            scopes
                .reserve(&name("root"), spec(pod, 0, write))
                .unwrap()
                .incarnation
                .unwrap()
        })
    };
    tokio::task::block_in_place(|| {
        scopes
            .register(spec("root", root.holder_id(), "/srv"))
            .unwrap()
    });

    let incarnation = reserve("kid", "/srv/kid");
    let context = PodContext::adopt_leased(
        handoff("kid", incarnation),
        scopes.clone(),
        UnixSender::default(),
        2,
    )
    .await
    .unwrap();
    let lease = context.lease().expect("it took a lease");
    let allocation = context.allocation().clone();
    assert_eq!(allocation.pid, lease.holder_id());
    assert_eq!(allocation.start_time, u64::try_from(lease.lease_id()).ok());
    assert_eq!(allocation.pending_until, None);
    // Kept alive past several TTLs.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let holder = lease.holder_id();
    tokio::task::block_in_place(|| {
        assert!(lease.check().is_ok());
        assert!(scopes.is_live(&allocation));
        assert!(scopes.reclaim_stale().unwrap().is_empty());
    });
    let departure = context.shut_down().await;
    assert_eq!(
        departure.released.map(|a| a.pod_name.to_string()),
        Some("kid".into())
    );
    drop(context);
    tokio::task::block_in_place(|| {
        eventually("the context's lease is revoked", || {
            !scopes.liveness().is_alive(holder)
        });
    });

    // Adopted already by its spawner's lease: accepted, no lease taken.
    let incarnation = reserve("sup", "/srv/sup");
    let supervisor = tokio::task::block_in_place(|| {
        let supervisor = table.holder();
        scopes
            .adopt(&name("sup"), &incarnation, supervisor.holder_id())
            .unwrap();
        supervisor
    });
    let context = PodContext::adopt_leased(
        handoff("sup", incarnation),
        scopes.clone(),
        UnixSender::default(),
        2,
    )
    .await
    .unwrap();
    assert!(context.lease().is_none());
    assert_eq!(context.allocation().pid, supervisor.holder_id());
    // A foreign incarnation is refused, taking nothing.
    let error = PodContext::adopt_leased(
        handoff("sup", "0000".into()),
        scopes.clone(),
        UnixSender::default(),
        2,
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("sup"), "{error}");
    context.shut_down().await;
    drop((context, supervisor, root));
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

/// `podctl listen` as the top-level `root` on the etcd table at `url`,
/// reconciling every `reconcile_ms` (0: never), once it listens.
fn listen_root(env: &Env, url: &str, reconcile_ms: &str) -> Running {
    let socket = env.socket("root");
    let mut root = Running::start(env.command().args([
        "listen",
        "--name",
        "root",
        "--socket",
        &socket,
        "--state-dir",
        &env.path("root"),
        "--scope-store",
        url,
        "--reconcile-interval-ms",
        reconcile_ms,
    ]));
    root.wait_for_path(std::path::Path::new(&format!("{socket}.control")));
    root
}

/// `podctl run --scope-store URL --from root --name kid --write
/// /srv/repo/kid -- CMD...`.
fn run_kid(env: &Env, url: &str, cmd: &[&str]) -> std::process::Command {
    let mut command = env.command();
    command
        .args([
            "run",
            "--scope-store",
            url,
            "--from",
            "root",
            "--name",
            "kid",
        ])
        .args(["--write", "/srv/repo/kid", "--"])
        .args(cmd);
    command
}
