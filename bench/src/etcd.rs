//! Item 9 (feature `etcd`): the scope table on etcd. One delegate through
//! `EtcdStore` next to a raw etcd delegate doing the same work with the
//! bare client, and the throughput of 16 concurrent delegaters, each way,
//! on a single etcd member this item starts itself
//! ([`EtcdCluster`], which runs it with `--unsafe-no-fsync`: the figures
//! are network and etcd's own work, not a disk's).
//!
//! The raw delegate is what a cache-less, lock-less delegate needs: one
//! range over the table's allocations (the rules need them) and one txn
//! that writes the new allocation and raises a version key, on the
//! condition that the version is still the one the range saw (retried
//! from the range when it is not). Ours is `EtcdStore::transact` running
//! `Table::delegate`: the acquire txn (lock key + the version), the table
//! from the store's cache when the version is unchanged (else a range),
//! and the commit txn. Both sides write JSON allocations of the same
//! shape; neither probes liveness (`ScopeTable::delegate` on
//! `LeaseLiveness` adds the new holder's lease read and the spawner's
//! probe, a read each: row 9b).

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use pod_scope_lock::testing::etcd::EtcdCluster;
use pod_scope_lock::{
    Allocation, EtcdStore, LeaseHolder, LeaseLiveness, PodName, PodSpec, ScopeError, ScopeRule,
    ScopeTable, Table, TableStore,
};

use crate::report::{median, ms};
use crate::scopes::build_table;
use crate::Plan;

/// Allocations in the table every single delegate runs against.
pub(crate) const TABLE: usize = 10;
/// Concurrent delegaters of the throughput figures.
pub(crate) const DELEGATERS: usize = 16;

/// The figures of item 9.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    /// One delegate through `EtcdStore::transact`, ms (median).
    pub(crate) store_ms: f64,
    /// One `ScopeTable::delegate` with `LeaseLiveness`, ms (median).
    pub(crate) table_ms: f64,
    /// One raw delegate (range + txn), ms (median).
    pub(crate) raw_ms: f64,
    /// Delegates per second, [`DELEGATERS`] stores at once (median run).
    pub(crate) store_rate: f64,
    /// The same, raw clients.
    pub(crate) raw_rate: f64,
}

fn name(s: &str) -> Result<PodName> {
    PodName::new(s).map_err(|e| anyhow::anyhow!("{e}"))
}

fn spec(pod: &str, pid: u32, target: &str) -> Result<PodSpec> {
    Ok(PodSpec {
        pod_name: name(pod)?,
        pid,
        socket: format!("/run/pods/{pod}.sock"),
        scope: vec![ScopeRule::write(target)],
    })
}

const INCARNATION: &str = "0123456789abcdef0123456789abcdef";

/// The allocation a raw delegate writes: what `Table::delegate` would.
fn raw_allocation(pod: &str, from: &str, target: &str, pid: u32, start: u64) -> Result<Allocation> {
    let spec = spec(pod, pid, target)?;
    Ok(Allocation {
        socket: spec.socket,
        pod_name: spec.pod_name,
        pid,
        start_time: Some(start),
        scope_allow: spec.scope,
        delegated_from: Some(name(from)?),
        incarnation: Some(INCARNATION.into()),
        pending_until: None,
        reparented: 0,
    })
}

/// A raw table under `prefix`: a version key and one key per allocation.
struct Raw {
    client: Client,
    /// `P/`: the range of one delegate covers the version and the
    /// allocations.
    table: String,
    version: String,
    alloc: String,
}

impl Raw {
    async fn connect(cluster: &EtcdCluster, prefix: &str) -> Result<Raw> {
        let endpoints = cluster.address(prefix).endpoints;
        let client = Client::connect(endpoints, None).await?;
        Ok(Raw {
            client,
            table: format!("{prefix}/"),
            version: format!("{prefix}/version"),
            alloc: format!("{prefix}/a/"),
        })
    }

    /// Writes `table`'s allocations and the version, once.
    async fn fill(&mut self, table: &Table) -> Result<()> {
        let mut ops = vec![TxnOp::put(self.version.clone(), "0", None)];
        for a in table.allocations() {
            ops.push(TxnOp::put(
                format!("{}{}", self.alloc, a.pod_name),
                serde_json::to_vec(a)?,
                None,
            ));
        }
        self.client.txn(Txn::new().and_then(ops)).await?;
        Ok(())
    }

    /// One delegate: range over the allocations (and the version), then
    /// a txn conditional on the version, from the range again if it lost.
    async fn delegate(&mut self, allocation: &Allocation) -> Result<()> {
        let value = serde_json::to_vec(allocation)?;
        let key = format!("{}{}", self.alloc, allocation.pod_name);
        loop {
            let range = GetOptions::new().with_prefix();
            let table = self.client.get(self.table.clone(), Some(range)).await?;
            let mut seen = 0;
            let mut parent_found = false;
            for kv in table.kvs() {
                if kv.key() == self.version.as_bytes() {
                    seen = kv.mod_revision();
                    continue;
                }
                // Decoded, as the rules would need them.
                let a: Allocation = serde_json::from_slice(kv.value())?;
                parent_found |= Some(&a.pod_name) == allocation.delegated_from.as_ref();
            }
            if !parent_found {
                bail!("the raw table has no spawner for {}", allocation.pod_name);
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    self.version.clone(),
                    CompareOp::Equal,
                    seen,
                )])
                .and_then([
                    TxnOp::put(key.clone(), value.clone(), None),
                    TxnOp::put(self.version.clone(), "v", None),
                ]);
            if self.client.txn(txn).await?.succeeded() {
                return Ok(());
            }
        }
    }

    async fn delete(&mut self, pod: &str) -> Result<()> {
        self.client
            .delete(format!("{}{pod}", self.alloc), None)
            .await?;
        Ok(())
    }
}

/// One delegate through the store (timed), then its release (not timed).
fn store_delegate(
    store: &EtcdStore,
    pod: &str,
    target: &str,
    pid: u32,
    start: u64,
) -> Result<Duration> {
    let spec = spec(pod, pid, target)?;
    let top = name("top0")?;
    let started = Instant::now();
    store.transact(|t| t.delegate(&top, spec, start, INCARNATION.into()))?;
    let elapsed = started.elapsed();
    let pod = name(pod)?;
    store.transact(|t| t.release(&pod, None).map(drop))?;
    Ok(elapsed)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Measures item 9 on a member of its own.
pub(crate) fn measure(plan: &Plan) -> Result<Measured> {
    let cluster = EtcdCluster::start(1);
    let rt = runtime()?;
    let store = cluster.store("bench/single");
    let holder = LeaseHolder::acquire(&store, 30)?;
    let (pid, start) = (
        holder.holder_id(),
        u64::try_from(holder.lease_id()).context("a lease id is positive")?,
    );
    let table = build_table(TABLE, pid, start);
    store.transact(|t| {
        *t = table.clone();
        Ok::<_, ScopeError>(())
    })?;
    let scopes = ScopeTable::new(store.clone(), LeaseLiveness::new(&store));
    let mut raw = rt.block_on(Raw::connect(&cluster, "bench/raw"))?;
    rt.block_on(raw.fill(&table))?;

    let (mut ours, mut probed, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    // Round 0 is the warm-up; the three ways interleave.
    for round in 0..=plan.etcd_rounds {
        let pod = format!("bench{round}");
        let target = format!("/bench/t0/new{round}");
        let o = store_delegate(&store, &pod, &target, pid, start)?;
        let p = {
            let spec = spec(&pod, pid, &target)?;
            let started = Instant::now();
            scopes.delegate(&name("top0")?, spec)?;
            let elapsed = started.elapsed();
            scopes.release(&name(&pod)?, None)?;
            elapsed
        };
        let allocation = raw_allocation(&pod, "top0", &target, pid, start)?;
        let r = {
            let started = Instant::now();
            rt.block_on(raw.delegate(&allocation))?;
            let elapsed = started.elapsed();
            rt.block_on(raw.delete(&pod))?;
            elapsed
        };
        if round > 0 {
            ours.push(ms(o));
            probed.push(ms(p));
            plain.push(ms(r));
        }
    }

    let (mut store_rates, mut raw_rates) = (Vec::new(), Vec::new());
    for run in 0..=plan.etcd_runs {
        let s = concurrent_store(&cluster, plan, run, &table, pid, start)?;
        let r = concurrent_raw(&cluster, plan, run, &table, pid, start)?;
        if run > 0 {
            store_rates.push(s);
            raw_rates.push(r);
        }
    }
    drop((scopes, holder, store));
    Ok(Measured {
        store_ms: median(ours),
        table_ms: median(probed),
        raw_ms: median(plain),
        store_rate: median(store_rates),
        raw_rate: median(raw_rates),
    })
}

/// The pod delegater `d` writes in round `i`, under one of the table's
/// top-level pods.
fn concurrent_pod(d: usize, i: usize) -> (String, String, String) {
    let top = d % TABLE;
    (
        format!("d{d}-{i}"),
        format!("top{top}"),
        format!("/bench/t{top}/d{d}-{i}"),
    )
}

/// [`DELEGATERS`] stores (a connection, runtime and cache each, as many
/// processes would have) on one fresh table, each delegating its share:
/// delegates per second over the whole run.
fn concurrent_store(
    cluster: &EtcdCluster,
    plan: &Plan,
    run: usize,
    table: &Table,
    pid: u32,
    start: u64,
) -> Result<f64> {
    let prefix = format!("bench/store-{run}");
    let first = cluster.store(&prefix);
    first.transact(|t| {
        *t = table.clone();
        Ok::<_, ScopeError>(())
    })?;
    let stores: Vec<EtcdStore> = (0..DELEGATERS).map(|_| cluster.store(&prefix)).collect();
    let each = plan.etcd_delegates;
    let started = Instant::now();
    let results: Vec<Result<()>> = thread::scope(|scope| {
        let workers: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(d, store)| {
                scope.spawn(move || -> Result<()> {
                    for i in 0..each {
                        let (pod, from, target) = concurrent_pod(d, i);
                        let (spec, from) = (spec(&pod, pid, &target)?, name(&from)?);
                        store.transact(|t| t.delegate(&from, spec, start, INCARNATION.into()))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| bail!("a delegater panicked")))
            .collect()
    });
    let elapsed = started.elapsed();
    results.into_iter().collect::<Result<()>>()?;
    let held = first.load()?.allocations().count();
    if held != TABLE + DELEGATERS * each {
        bail!(
            "{held} allocations after the concurrent delegates, not {}",
            TABLE + DELEGATERS * each
        );
    }
    Ok((DELEGATERS * each) as f64 / elapsed.as_secs_f64())
}

/// The same with raw clients, one thread and connection each.
fn concurrent_raw(
    cluster: &EtcdCluster,
    plan: &Plan,
    run: usize,
    table: &Table,
    pid: u32,
    start: u64,
) -> Result<f64> {
    let prefix = format!("bench/raw-{run}");
    let rt = runtime()?;
    rt.block_on(async {
        let mut raw = Raw::connect(cluster, &prefix).await?;
        raw.fill(table).await
    })?;
    let each = plan.etcd_delegates;
    // Each client connects on its own thread's runtime (a client's
    // connection is driven by the runtime it was made on); the clock
    // starts once all are connected.
    let ready = Barrier::new(DELEGATERS + 1);
    let (ready, prefix) = (&ready, prefix.as_str());
    let (started, results): (Instant, Vec<Result<()>>) = thread::scope(|scope| {
        let workers: Vec<_> = (0..DELEGATERS)
            .map(|d| {
                scope.spawn(move || -> Result<()> {
                    let connected = runtime().and_then(|rt| {
                        let raw = rt.block_on(Raw::connect(cluster, prefix))?;
                        Ok((rt, raw))
                    });
                    ready.wait();
                    let (rt, mut raw) = connected?;
                    for i in 0..each {
                        let (pod, from, target) = concurrent_pod(d, i);
                        let allocation = raw_allocation(&pod, &from, &target, pid, start)?;
                        rt.block_on(raw.delegate(&allocation))?;
                    }
                    Ok(())
                })
            })
            .collect();
        ready.wait();
        let started = Instant::now();
        let results = workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| bail!("a raw delegater panicked"))
            })
            .collect();
        (started, results)
    });
    let elapsed = started.elapsed();
    results.into_iter().collect::<Result<()>>()?;
    let held = rt.block_on(async {
        let mut raw = Raw::connect(cluster, prefix).await?;
        let keys = GetOptions::new().with_prefix().with_count_only();
        let answer = raw.client.get(raw.alloc.clone(), Some(keys)).await?;
        Ok::<_, anyhow::Error>(answer.count())
    })?;
    if held != (TABLE + DELEGATERS * each) as i64 {
        bail!(
            "{held} raw allocations after the concurrent delegates, not {}",
            TABLE + DELEGATERS * each
        );
    }
    Ok((DELEGATERS * each) as f64 / elapsed.as_secs_f64())
}
