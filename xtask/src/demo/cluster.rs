//! `cargo xtask demo --cluster`: a tree that spans two "hosts", its scope
//! table on etcd, and one host lost.
//!
//! One etcd member (on loopback ports, its data under `$DEMO/etcd`) holds
//! the scope table. Host A (`$DEMO/a`, a process group of its own) runs
//! the root: a `podctl listen` on a Unix socket and on `tls://`, which
//! registers its own scope held by an etcd lease it keeps alive. Host B
//! (`$DEMO/b`, another process group) runs `worker`, spawned from the
//! root with `podctl run` and reporting to it over `tls://` (certified as
//! `worker`), and `worker`'s own child `w2`. Each `podctl run` on host B
//! holds a lease for its child. Then the whole of host B is SIGKILLed: no
//! process there reports anything, and nothing on host A can see a pid
//! of host B. The leases, no longer renewed, end within their TTL; the
//! root's lease watch sees it, presumes both pods crashed and releases
//! their scope; the root stops, releasing its own, and the table is
//! empty. Each step is awaited with a deadline, as in the one-machine
//! demo, and the time from the SIGKILL to each presumed crash is printed.

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rustix::process::{kill_process_group, Pid, Signal};

use super::{free_ports, wait_with_deadline, Demo, Host, ROOT_RECONCILE_MS, STEP_DEADLINE};

/// The TTL of the lease `podctl run` holds for a child (podctl's
/// `store::LEASE_TTL_SECS`): how long after host B dies its pods may
/// still look alive.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// Where each pod runs: the root on host A, the rest on host B.
const PLACEMENT: [(&str, usize); 3] = [("root", 0), ("worker", 1), ("w2", 1)];

impl Demo {
    /// Two hosts, `$DEMO/a` and `$DEMO/b`, each its own process group.
    pub(super) fn use_hosts(&mut self) -> Result<()> {
        let mut hosts = Vec::new();
        for name in ["a", "b"] {
            let dir = self.dir.join(name);
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            hosts.push(Host {
                dir,
                group: None,
                isolated: true,
            });
        }
        println!("   host A: PODS_RUNTIME_DIR=$DEMO/a; host B: PODS_RUNTIME_DIR=$DEMO/b (a process group each)");
        self.hosts = hosts;
        self.placement = PLACEMENT.to_vec();
        Ok(())
    }

    /// Starts one etcd member on free loopback ports; the scope table is
    /// `etcd://127.0.0.1:PORT/demo` from now on. Returns once it answers.
    pub(super) fn use_etcd(&mut self, etcd: &Path) -> Result<()> {
        let [client, peer] = free_ports()?;
        let data = self.path("etcd");
        let log = self.path("etcd.log");
        let args = [
            "--name".to_owned(),
            "demo".to_owned(),
            "--data-dir".to_owned(),
            data,
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=demo=http://127.0.0.1:{peer}"),
            "--log-level=warn".to_owned(),
        ];
        println!(
            "   $ etcd {} 2>$DEMO/etcd.log &",
            self.short(&args.join(" "))
        );
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("cannot create {log}"))?;
        let child = Command::new(etcd)
            .args(&args)
            // Its own group: host B's SIGKILL must not reach it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("could not start {}", etcd.display()))?;
        self.etcd = Some(child);
        let url = format!("etcd://127.0.0.1:{client}/demo");
        self.table = ["--scope-store".to_owned(), url];
        let deadline = Instant::now() + STEP_DEADLINE;
        let [flag, table] = self.table.clone();
        while let Err(error) = self.podctl(&["scopes", &flag, &table]) {
            if let Some(status) = self.etcd.as_mut().and_then(|e| e.try_wait().transpose()) {
                bail!(
                    "etcd exited ({}); its log is {log}",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                );
            }
            ensure!(
                Instant::now() < deadline,
                "etcd did not answer within {STEP_DEADLINE:?}: {error:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    pub(super) fn cluster_story(&mut self) -> Result<()> {
        let repo = self.path("repo");
        let on_b = self.path("repo/b");
        let on_b2 = self.path("repo/b/w2");

        self.begin("host A: the root listens (Unix socket and tls://) and registers its scope, held by a lease");
        let mut own = self.table.to_vec();
        own.extend(["--write".to_owned(), repo]);
        self.listen("root", ROOT_RECONCILE_MS, &own)?;
        let root = self.allocation("root")?;
        ensure!(
            root["lease"]["state"] == "alive",
            "the root's allocation is not held by a live lease: {root}"
        );

        self.begin("host B: the root's `podctl run` spawns `worker`, which reports over tls://");
        let up = self
            .tls_args("worker", Some("root"))
            .context("the cluster demo runs with TLS")?;
        self.run("worker", "root", &on_b, "250", &up)?;
        // Certified as `worker`, podctl run does not announce the spawn:
        // the root registers it from the table at its next reconcile.
        self.expect("root", "that it found `worker` in the table", |l| {
            l.starts_with("pod `root` spawned `worker`")
        })?;

        self.begin("host B: `worker` spawns `w2`; the root hears of it over tls://");
        self.run_program("w2", "worker", &on_b2, &[], &["sleep", "600"])?;
        self.expect("worker", "that `worker` spawned `w2`", |l| {
            l.starts_with("pod `worker` spawned `w2`")
        })?;
        self.expect(
            "root",
            "the relayed report that `worker` spawned `w2`",
            |l| l.starts_with("pod `worker` spawned `w2`"),
        )?;
        self.show_tables()?;
        self.check_registry(&["w2", "worker"])?;

        self.begin("host B is lost: every process on it is SIGKILLed at once");
        let group = self.hosts[1].group.context("host B runs no process")?;
        println!("   $ kill -KILL -{group}   # host B's process group");
        let killed = Instant::now();
        kill_process_group(
            Pid::from_raw(group as i32).context("no group")?,
            Signal::KILL,
        )
        .context("could not kill host B")?;
        for pod in ["worker", "w2"] {
            let status = wait_with_deadline(&mut self.pod(pod)?.child)?;
            println!("   {pod}'s podctl run ended: {status}");
        }
        println!(
            "   (no one reports: the leases host B's podctl runs kept alive end within their TTL, {} s)",
            LEASE_TTL.as_secs()
        );
        for pod in ["worker", "w2"] {
            let prefix = format!("`{pod}` is gone without reporting: presumed crashed");
            let at = self.expect("root", &format!("that `{pod}` is presumed crashed"), |l| {
                l.starts_with(&prefix)
            })?;
            let after = at.saturating_duration_since(killed);
            println!(
                "   (`{pod}` presumed crashed {:.1} s after the SIGKILL)",
                after.as_secs_f64()
            );
        }
        self.show_tables()?;
        self.check_registry(&[])?;
        let left: Vec<_> = self
            .allocations()?
            .iter()
            .filter_map(|a| a["pod_name"].as_str().map(str::to_owned))
            .collect();
        ensure!(
            left == ["root"],
            "host B's scope did not return to the root: the table holds {left:?}"
        );

        self.begin("host A winds down: the root stops and releases its own scope");
        self.stop("root")?;
        self.show_tables()?;
        let left = self.allocations()?;
        ensure!(left.is_empty(), "the scope table is not empty: {left:?}");
        Ok(())
    }
}
