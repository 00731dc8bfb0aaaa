//! The scope table on etcd (feature `etcd`): [`EtcdStore`], a
//! [`TableStore`] whose transactions are etcd transactions, and
//! [`LeaseLiveness`], liveness by etcd leases for pods that span hosts.
//!
//! # How a transaction runs
//!
//! [`TableStore::transact`] takes an `FnOnce`: the closure runs exactly
//! once, so the store cannot run it optimistically and re-run it when a
//! compare fails. Instead each transaction takes the table's lock key in
//! the same request that reads the table's version, and commits with a
//! compare on both:
//!
//! 1. **acquire** (one etcd txn): if `P/lock` does not exist, put it with
//!    this store's token, attached to this store's lease, and read
//!    `P/meta`. If another store holds the lock, wait (backoff with
//!    jitter) and try again, up to [`EtcdOptions::lock_wait`], then
//!    [`EtcdError::ConflictRetriesExhausted`].
//! 2. **read at that revision**: if `P/meta` is unchanged since the table
//!    this store cached, reuse it; else read every `P/a/` key in pages at
//!    the acquire's revision (one consistent snapshot) and check the
//!    invariant ([`Table::check_invariant`]).
//! 3. run the pure [`Table`] logic, the same as every store.
//! 4. **commit** (one etcd txn): if `P/lock` still has the revision this
//!    store put it at and `P/meta` the revision read, put the changed
//!    allocations, delete the removed ones, raise `P/meta`'s generation
//!    and delete the lock. If the compare fails (the lease expired while
//!    the closure ran, or a writer ignored the lock), nothing was written:
//!    [`EtcdError::Conflict`].
//!
//! So the table is serializable (every commit compares the version it
//! read) and nothing is granted unless its commit landed. The lock is
//! what lets a closure run once; it is attached to a lease, so a store
//! that dies holding it blocks others for at most the lease's TTL. A
//! delegate costs two round trips, as a raw read-then-compare-and-swap
//! would. If the commit's answer is lost (the leader died as it
//! committed), the store reads `P/meta` again: its token says whether the
//! commit landed ([`EtcdError::OutcomeUnknown`] only if that read fails
//! too).
//!
//! # The runtime
//!
//! The etcd client is async; [`TableStore`] is synchronous. The store owns
//! a one-worker tokio runtime: requests run on it with `block_on`, and the
//! lease keep-alives run on its worker between requests. Called from
//! inside another runtime (where `block_on` is not allowed), a request
//! runs `block_on` on a scoped thread instead, so the store works from
//! any thread; async callers still should run it on a blocking thread
//! ([`TableStore::may_block`] is `true`), as for the file store.

mod error;
mod layout;
mod liveness;
mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use crate::error::ScopeError;
use crate::store::TableStore;
use crate::table::{Allocation, Table};
pub use error::EtcdError;
pub use layout::EtcdAddress;
use layout::{meta_value, parse_meta, range_end, Keys, Meta, META_VERSION};
pub use liveness::{LeaseHolder, LeaseLiveness};
pub use watch::HolderGone;

/// How an [`EtcdStore`] talks to etcd.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// How long one connection attempt may take. Default 2 s.
    pub connect_timeout: Duration,
    /// How long one request may take before it is a
    /// [`EtcdError::NoQuorum`]: a cluster without a leader does not
    /// answer writes. Default 5 s.
    pub request_timeout: Duration,
    /// How long a transaction waits for the table's lock. Default 10 s.
    pub lock_wait: Duration,
    /// TTL (seconds) of the lease the store's lock is attached to: how long
    /// a store that died holding the lock blocks the others. Default 5.
    pub lock_ttl_secs: i64,
    /// Keys one etcd transaction may write (etcd's `--max-txn-ops`,
    /// default 128). Default 128.
    pub max_txn_ops: usize,
    /// Allocations read per range request when the whole table is read.
    /// Default 1000 (about 300 KiB a page).
    pub page_size: i64,
    /// User name and password, for a cluster with authentication on.
    pub user: Option<(String, String)>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            lock_wait: Duration::from_secs(10),
            lock_ttl_secs: 5,
            max_txn_ops: 128,
            page_size: 1000,
            user: None,
        }
    }
}

/// A [`TableStore`] on etcd: one key per allocation under a prefix, every
/// transaction an etcd transaction with a compare on the table's version
/// (see the [module docs](self) of `etcd`). Clones share the connection,
/// the runtime and the cached table.
///
/// ```no_run
/// use pod_scope_lock::{EtcdAddress, EtcdStore, LeaseLiveness, ScopeTable};
///
/// let address = EtcdAddress::parse("etcd://127.0.0.1:2379/pods/scope")?;
/// let store = EtcdStore::connect(&address, Default::default())?;
/// let table = ScopeTable::new(store.clone(), LeaseLiveness::new(&store));
/// println!("{} allocations", table.list()?.len());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("prefix", &self.inner.keys.prefix)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    /// Always `Some` until dropped (see [`Drop`]).
    runtime: Option<tokio::runtime::Runtime>,
    pub(crate) client: Client,
    pub(crate) endpoints: String,
    pub(crate) keys: Keys,
    pub(crate) options: EtcdOptions,
    /// Serializes this store's transactions (they would only contend for
    /// the lock key) and holds what they share.
    state: Mutex<State>,
    /// Set when a lock could not be released: the next transaction takes
    /// a new lease and lets the old one (and the lock) go.
    abandon_session: AtomicBool,
    /// The watch of liveness keys, started by the first
    /// [`LeaseLiveness::watch_gone`].
    watcher: OnceLock<watch::LivenessWatcher>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime;
        // shutting it down in the background does not block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Default)]
struct State {
    cache: Option<Cached>,
    session: Option<Session>,
}

/// The last table this store read or committed, and the `P/meta` it had.
struct Cached {
    table: Table,
    meta_rev: i64,
    generation: u64,
}

/// The lease the store's lock is attached to, kept alive by a task.
struct Session {
    lease: i64,
    lost: Arc<AtomicBool>,
    keep_alive: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

/// A write of the commit.
enum Change<'a> {
    Put(&'a Allocation),
    Delete(&'a str),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing in State is left half-changed by a panic: the cache is
    // replaced whole.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A random hex token: tells this transaction's lock and commit from any
/// other's.
fn token() -> Result<String, ScopeError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(ScopeError::Entropy)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl EtcdStore {
    /// Connects to the cluster at `address` and checks that it answers
    /// (one read of the table's version key).
    pub fn connect(address: &EtcdAddress, options: EtcdOptions) -> Result<EtcdStore, ScopeError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pod-scope-etcd")
            .enable_all()
            .build()
            .map_err(EtcdError::Runtime)?;
        let endpoints = address.endpoints.join(",");
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            // Without a leader a member answers at once ("no leader")
            // instead of queueing the request until the deadline.
            .with_require_leader(true);
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        let client = {
            let _enter = runtime.enter();
            let connecting = Client::connect(address.endpoints.clone(), Some(connect));
            let timeout = options.connect_timeout;
            run_on(&runtime, async move {
                tokio::time::timeout(timeout, connecting).await
            })
        };
        let client = match client {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => return Err(EtcdError::from_client(&endpoints, error).into()),
            Err(_) => {
                return Err(EtcdError::Unreachable {
                    endpoints,
                    message: format!("no connection within {:?}", options.connect_timeout),
                }
                .into())
            }
        };
        let store = EtcdStore {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                client,
                endpoints,
                keys: Keys::new(&address.prefix),
                options,
                state: Mutex::new(State::default()),
                abandon_session: AtomicBool::new(false),
                watcher: OnceLock::new(),
            }),
        };
        let meta = store.inner.keys.meta.clone();
        store.request(|mut c| async move { c.get(meta, None).await })?;
        Ok(store)
    }

    /// The table's key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.keys.prefix
    }

    /// The client endpoints, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.inner.endpoints
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Runs `f`'s future with a fresh client handle on the store's runtime,
    /// within the request timeout, classifying its error.
    pub(crate) fn request<T, F, Fut>(&self, f: F) -> Result<T, EtcdError>
    where
        F: FnOnce(Client) -> Fut + Send,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
        T: Send,
    {
        self.inner.request(f)
    }

    /// As [`request`](Self::request), tried again while the connection is
    /// lost ([`EtcdError::Unreachable`]), for up to the request timeout:
    /// the client reconnects to a member that came back, or to another
    /// member, on the next try. Only for requests that are safe to repeat
    /// (reads, the acquire, which checks its token, the release); never for
    /// the commit, whose lost answer [`settle`](Self::settle) resolves.
    pub(crate) fn request_retrying<T, F, Fut>(&self, f: F) -> Result<T, EtcdError>
    where
        F: Fn(Client) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
        T: Send,
    {
        self.retrying(|e| matches!(e, EtcdError::Unreachable { .. }), f)
    }

    /// As [`request_retrying`](Self::request_retrying), but only while no
    /// connection could be made at all (so the request was never sent):
    /// what the commit may repeat.
    fn request_unsent_retrying<T, F, Fut>(&self, f: F) -> Result<T, EtcdError>
    where
        F: Fn(Client) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
        T: Send,
    {
        self.retrying(
            |e| matches!(e, EtcdError::Unreachable { message, .. } if message.contains("tcp connect error")),
            f,
        )
    }

    fn retrying<T, F, Fut>(&self, retry: impl Fn(&EtcdError) -> bool, f: F) -> Result<T, EtcdError>
    where
        F: Fn(Client) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
        T: Send,
    {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.request(&f) {
                Err(error)
                    if retry(&error) && started.elapsed() < self.inner.options.request_timeout =>
                {
                    std::thread::sleep(backoff(attempt + 3));
                }
                answer => return answer,
            }
        }
    }

    /// Grants this store's lease (if it has none, or it was lost) and
    /// starts its keep-alive.
    fn session(&self, state: &mut State) -> Result<i64, EtcdError> {
        if self.inner.abandon_session.swap(false, Ordering::AcqRel) {
            if let Some(old) = state.session.take() {
                let lease = old.lease;
                let mut client = self.inner.client.clone();
                // Revoked if etcd answers (the lock goes at once), else it
                // expires: its keep-alive stops as `old` drops.
                self.inner.runtime().spawn(async move {
                    let _ = client.lease_revoke(lease).await;
                });
            }
        }
        if let Some(session) = &state.session {
            if !session.lost.load(Ordering::Acquire) {
                return Ok(session.lease);
            }
        }
        state.session = None;
        let ttl = self.inner.options.lock_ttl_secs;
        // A lease granted twice (a lost answer) is harmless: it expires.
        let lease = self
            .request_retrying(|mut c| async move { c.lease_grant(ttl, None).await })?
            .id();
        let lost = Arc::new(AtomicBool::new(false));
        let keep_alive = self.inner.spawn_keep_alive(lease, ttl, Arc::clone(&lost));
        state.session = Some(Session {
            lease,
            lost,
            keep_alive,
        });
        Ok(lease)
    }

    /// Step 1: takes the lock; returns its revision and `P/meta` as of it.
    fn acquire(
        &self,
        state: &mut State,
        token: &str,
    ) -> Result<(i64, Option<(i64, Meta)>), ScopeError> {
        let keys = &self.inner.keys;
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let lease = self.session(state)?;
            let txn = Txn::new()
                .when([Compare::create_revision(
                    keys.lock.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([
                    TxnOp::put(
                        keys.lock.clone(),
                        token,
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    TxnOp::get(keys.meta.clone(), None),
                ])
                .or_else([
                    TxnOp::get(keys.lock.clone(), None),
                    TxnOp::get(keys.meta.clone(), None),
                ]);
            // Retried on a lost connection: if a lost answer hid a
            // success, the lock holds this transaction's token, which the
            // else branch reads back.
            let answer = self.request_retrying(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            });
            let response = match answer {
                Ok(response) => response,
                // The lease expired between its keep-alives (a long pause):
                // take a new one.
                Err(EtcdError::Refused { message }) if message.contains("lease not found") => {
                    state.session = None;
                    continue;
                }
                Err(error) => {
                    // The lock may have been put with the answer lost.
                    self.inner.abandon_session.store(true, Ordering::Release);
                    return Err(error.into());
                }
            };
            let responses = response.op_responses();
            let held = match responses.first() {
                Some(TxnOpResponse::Get(get)) if !response.succeeded() => get
                    .kvs()
                    .first()
                    .filter(|kv| kv.value() == token.as_bytes())
                    .map(|kv| kv.mod_revision()),
                _ => None,
            };
            if response.succeeded() || held.is_some() {
                let revision =
                    held.unwrap_or_else(|| response.header().map_or(0, |h| h.revision()));
                let meta = match responses.get(1) {
                    Some(TxnOpResponse::Get(get)) => match get.kvs().first() {
                        Some(kv) => Some((kv.mod_revision(), self.parse_meta(kv.value())?)),
                        None => None,
                    },
                    _ => None,
                };
                return Ok((revision, meta));
            }
            let waited = started.elapsed();
            if waited >= self.inner.options.lock_wait {
                return Err(EtcdError::ConflictRetriesExhausted {
                    prefix: keys.prefix.clone(),
                    attempts,
                    waited,
                }
                .into());
            }
            std::thread::sleep(backoff(attempts));
        }
    }

    fn parse_meta(&self, value: &[u8]) -> Result<Meta, EtcdError> {
        let invalid = |message: String| EtcdError::InvalidTable {
            prefix: self.inner.keys.prefix.clone(),
            message,
        };
        let meta = parse_meta(value).ok_or_else(|| {
            invalid(format!(
                "{} is {:?}, not VERSION:GENERATION:TOKEN",
                self.inner.keys.meta,
                String::from_utf8_lossy(value)
            ))
        })?;
        if meta.version != META_VERSION {
            return Err(invalid(format!(
                "{} has format version {}, but this build reads only version {META_VERSION}: use a newer pod-scope-lock",
                self.inner.keys.meta, meta.version
            )));
        }
        Ok(meta)
    }

    /// Step 2: every allocation at `revision`, in pages, checked.
    fn read_table(&self, revision: i64) -> Result<Table, EtcdError> {
        let keys = &self.inner.keys;
        let end = range_end(&keys.alloc);
        let mut start = keys.alloc.clone().into_bytes();
        let mut allocations = Vec::new();
        let page = self.inner.options.page_size.max(1);
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_revision(revision)
                .with_limit(page);
            let from = start.clone();
            let response = self.request_retrying(|mut c| {
                let (from, options) = (from.clone(), options.clone());
                async move { c.get(from, Some(options)).await }
            })?;
            for kv in response.kvs() {
                allocations.push(self.decode(kv.key(), kv.value())?);
            }
            match (response.more(), response.kvs().last()) {
                (true, Some(last)) => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        let table: Table = allocations.into_iter().collect();
        table
            .check_invariant()
            .map_err(|message| EtcdError::InvalidTable {
                prefix: keys.prefix.clone(),
                message,
            })?;
        Ok(table)
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Result<Allocation, EtcdError> {
        let keys = &self.inner.keys;
        let key = String::from_utf8_lossy(key);
        let invalid = |message| EtcdError::InvalidTable {
            prefix: keys.prefix.clone(),
            message,
        };
        let allocation: Allocation = serde_json::from_slice(value)
            .map_err(|e| invalid(format!("{key} is not an allocation: {e}")))?;
        if key.strip_prefix(keys.alloc.as_str()) != Some(allocation.pod_name.as_str()) {
            return Err(invalid(format!(
                "{key} holds the allocation of pod `{}`",
                allocation.pod_name
            )));
        }
        Ok(allocation)
    }

    /// The cached table if `P/meta` is still at `meta`, else the table
    /// read at `revision`.
    fn table_at(
        &self,
        state: &mut State,
        revision: i64,
        meta: &Option<(i64, Meta)>,
    ) -> Result<Cached, EtcdError> {
        let meta_rev = meta.as_ref().map_or(0, |(rev, _)| *rev);
        let generation = meta.as_ref().map_or(0, |(_, m)| m.generation);
        match state.cache.take() {
            Some(cached) if cached.meta_rev == meta_rev && meta_rev != 0 => Ok(cached),
            _ => Ok(Cached {
                table: self.read_table(revision)?,
                meta_rev,
                generation,
            }),
        }
    }

    /// Deletes the lock if it is still this transaction's. Waited for: a
    /// store dropped right after a refusal would otherwise leave its lock
    /// to block the others until its lease expired. A failure is left to
    /// the lease.
    fn release(&self, lock_rev: i64) {
        let key = self.inner.keys.lock.clone();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                lock_rev,
            )])
            .and_then([TxnOp::delete(key, None)]);
        let released = self.request_retrying(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        });
        if released.is_err() {
            // The lock may still exist, attached to this store's lease,
            // which its keep-alive would keep forever: give the lease up
            // at the next transaction, so the lock goes within its TTL.
            self.inner.abandon_session.store(true, Ordering::Release);
        }
    }

    /// Step 4: commits `changes`, or says why not.
    fn commit(
        &self,
        changes: &[Change<'_>],
        lock_rev: i64,
        cached: &Cached,
        token: &str,
    ) -> Result<i64, ScopeError> {
        let keys = &self.inner.keys;
        let limit = self.inner.options.max_txn_ops;
        if changes.len() + 2 > limit {
            self.release(lock_rev);
            return Err(EtcdError::TooLarge {
                ops: changes.len() + 2,
                limit,
            }
            .into());
        }
        let mut ops = Vec::with_capacity(changes.len() + 2);
        for change in changes {
            ops.push(match change {
                Change::Put(a) => TxnOp::put(
                    keys.allocation(a.pod_name.as_str()),
                    serde_json::to_vec(a).unwrap_or_default(),
                    None,
                ),
                Change::Delete(name) => TxnOp::delete(keys.allocation(name), None),
            });
        }
        let generation = cached.generation + 1;
        ops.push(TxnOp::put(
            keys.meta.clone(),
            meta_value(generation, token),
            None,
        ));
        ops.push(TxnOp::delete(keys.lock.clone(), None));
        let txn = Txn::new()
            .when([
                Compare::mod_revision(keys.lock.clone(), CompareOp::Equal, lock_rev),
                Compare::mod_revision(keys.meta.clone(), CompareOp::Equal, cached.meta_rev),
            ])
            .and_then(ops);
        let answer = self.request_unsent_retrying(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        });
        match answer {
            Ok(response) if response.succeeded() => {
                Ok(response.header().map_or(0, |h| h.revision()))
            }
            Ok(_) => {
                self.release(lock_rev);
                Err(EtcdError::Conflict {
                    prefix: keys.prefix.clone(),
                }
                .into())
            }
            Err(error @ (EtcdError::Unreachable { .. } | EtcdError::NoQuorum { .. })) => {
                self.settle(error, lock_rev, token)
            }
            Err(error) => {
                self.release(lock_rev);
                Err(error.into())
            }
        }
    }

    /// The commit's answer was lost: whether it landed is in `P/meta`'s
    /// token. Asks until the cluster answers or `lock_wait` passes.
    fn settle(&self, error: EtcdError, lock_rev: i64, token: &str) -> Result<i64, ScopeError> {
        let started = Instant::now();
        let mut attempts = 0;
        while started.elapsed() < self.inner.options.lock_wait {
            attempts += 1;
            let meta = self.inner.keys.meta.clone();
            if let Ok(response) = self.request(|mut c| async move { c.get(meta, None).await }) {
                return match response.kvs().first() {
                    Some(kv) if parse_meta(kv.value()).is_some_and(|m| m.token == token) => {
                        Ok(kv.mod_revision())
                    }
                    _ => {
                        self.release(lock_rev);
                        Err(error.into())
                    }
                };
            }
            std::thread::sleep(backoff(attempts));
        }
        self.inner.abandon_session.store(true, Ordering::Release);
        Err(EtcdError::OutcomeUnknown {
            prefix: self.inner.keys.prefix.clone(),
            message: error.to_string(),
        }
        .into())
    }
}

impl Inner {
    pub(crate) fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .unwrap_or_else(|| unreachable!("the runtime is taken only when the store is dropped"))
    }

    /// The store's watch of liveness keys, started now if it was not.
    pub(crate) fn watcher(&self) -> &watch::LivenessWatcher {
        self.watcher.get_or_init(|| {
            watch::LivenessWatcher::start(self.runtime(), self.client.clone(), self.keys.clone())
        })
    }

    pub(crate) fn request<T, F, Fut>(&self, f: F) -> Result<T, EtcdError>
    where
        F: FnOnce(Client) -> Fut + Send,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
        T: Send,
    {
        let client = self.client.clone();
        let timeout = self.options.request_timeout;
        let answer = run_on(self.runtime(), async move {
            tokio::time::timeout(timeout, f(client)).await
        });
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(EtcdError::from_client(&self.endpoints, error)),
            Err(_) => Err(EtcdError::NoQuorum {
                endpoints: self.endpoints.clone(),
                message: format!("no answer within {timeout:?}"),
            }),
        }
    }

    /// Keeps `lease` alive every third of its TTL until etcd says it is
    /// gone, or until it may have expired unseen; then sets `lost`.
    ///
    /// A lease expires `ttl` seconds after the last keep-alive etcd took,
    /// so the holder counts from the moment it *sent* the last keep-alive
    /// that was answered (etcd took it no earlier): past that deadline the
    /// lease may be gone, and the holder must say so even though no answer
    /// came. That is what makes a partitioned holder learn it: a member
    /// that stops answering (a partition, a paused process) leaves the
    /// keep-alive stream open but silent, and only the deadline ends the
    /// wait. Before it, a stream that fails (a member restarted, the
    /// leader changed) is opened again, since the lease may well live.
    pub(crate) fn spawn_keep_alive(
        &self,
        lease: i64,
        ttl: i64,
        lost: Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let ttl = Duration::from_secs(u64::try_from(ttl.max(1)).unwrap_or(1));
        self.runtime().spawn(async move {
            keep_alive(client, lease, ttl).await;
            lost.store(true, Ordering::Release);
        })
    }
}

/// The loop of [`Inner::spawn_keep_alive`]; returns once the lease is, or
/// may be, gone.
async fn keep_alive(mut client: Client, lease: i64, ttl: Duration) {
    let period = ttl / 3;
    // Granted just before: its TTL runs from about now.
    let mut expires = tokio::time::Instant::now() + ttl;
    let mut stream = None;
    loop {
        let next = tokio::time::Instant::now() + period;
        tokio::time::sleep_until(next.min(expires)).await;
        let sent = tokio::time::Instant::now();
        if sent >= expires {
            return;
        }
        let answered = tokio::time::timeout_at(expires, async {
            if stream.is_none() {
                stream = client.lease_keep_alive(lease).await.ok();
            }
            let (keeper, answers) = stream.as_mut()?;
            keeper.keep_alive().await.ok()?;
            answers.message().await.ok()?
        })
        .await;
        match answered {
            // etcd says the lease is gone (revoked, or expired already).
            Ok(Some(answer)) if answer.ttl() <= 0 => return,
            Ok(Some(answer)) => {
                let left = Duration::from_secs(u64::try_from(answer.ttl()).unwrap_or(0));
                expires = sent + left;
            }
            // The stream failed: open it again at the next round, while
            // the deadline allows.
            Ok(None) => stream = None,
            // No answer before the deadline: it may have expired.
            Err(_) => return,
        }
    }
}

/// Runs `future` to completion on `runtime` from any thread: inside
/// another runtime `block_on` would panic, so there it runs on a scoped
/// thread of its own.
fn run_on<F>(runtime: &tokio::runtime::Runtime, future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return runtime.block_on(future);
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(future))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// 1, 2, 4 .. 32 ms, plus up to as much again at random, so that racing
/// stores do not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base = 1u64 << attempt.min(5);
    let mut byte = [0u8; 1];
    let jitter = getrandom::fill(&mut byte).map_or(0, |()| u64::from(byte[0]) * base / 255);
    Duration::from_millis(base + jitter)
}

/// The allocations that differ between two tables, by a merge of the
/// two sorted lists.
fn diff<'a>(before: &'a Table, after: &'a Table) -> Vec<Change<'a>> {
    let mut changes = Vec::new();
    let mut old = before.allocations().peekable();
    let mut new = after.allocations().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(o), None) => {
                changes.push(Change::Delete(o.pod_name.as_str()));
                old.next();
            }
            (None, Some(n)) => {
                changes.push(Change::Put(n));
                new.next();
            }
            (Some(o), Some(n)) => match o.pod_name.cmp(&n.pod_name) {
                std::cmp::Ordering::Less => {
                    changes.push(Change::Delete(o.pod_name.as_str()));
                    old.next();
                }
                std::cmp::Ordering::Greater => {
                    changes.push(Change::Put(n));
                    new.next();
                }
                std::cmp::Ordering::Equal => {
                    if o != n {
                        changes.push(Change::Put(n));
                    }
                    old.next();
                    new.next();
                }
            },
        }
    }
    changes
}

impl TableStore for EtcdStore {
    fn transact<R>(
        &self,
        f: impl FnOnce(&mut Table) -> Result<R, ScopeError>,
    ) -> Result<R, ScopeError> {
        let mut state = lock(&self.inner.state);
        let token = token()?;
        let (lock_rev, meta) = self.acquire(&mut state, &token)?;
        let mut cached = match self.table_at(&mut state, lock_rev, &meta) {
            Ok(cached) => cached,
            Err(error) => {
                self.release(lock_rev);
                return Err(error.into());
            }
        };
        let before = cached.table.clone();
        let stamp = cached.table.stamp();
        let result = match f(&mut cached.table) {
            Ok(result) => result,
            Err(error) => {
                self.release(lock_rev);
                cached.table = before;
                state.cache = Some(cached);
                return Err(error);
            }
        };
        if cached.table.stamp() == stamp {
            self.release(lock_rev);
            state.cache = Some(cached);
            return Ok(result);
        }
        let changes = diff(&before, &cached.table);
        if changes.is_empty() {
            self.release(lock_rev);
            state.cache = Some(cached);
            return Ok(result);
        }
        let meta_rev = self.commit(&changes, lock_rev, &cached, &token)?;
        drop(changes);
        cached.meta_rev = meta_rev;
        cached.generation += 1;
        state.cache = Some(cached);
        Ok(result)
    }

    /// A copy of the table, without the lock (see [`read`](Self::read)).
    fn load(&self) -> Result<Table, ScopeError> {
        self.read(Table::clone)
    }

    /// Reads `P/meta` (one linearizable read); the table itself only if it
    /// changed since the cached one. No lock: a read-only look needs none.
    fn read<R>(&self, f: impl FnOnce(&Table) -> R) -> Result<R, ScopeError> {
        let mut state = lock(&self.inner.state);
        let key = self.inner.keys.meta.clone();
        let response = self.request_retrying(|mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })?;
        let revision = response.header().map_or(0, |h| h.revision());
        let meta = match response.kvs().first() {
            Some(kv) => Some((kv.mod_revision(), self.parse_meta(kv.value())?)),
            None => None,
        };
        let cached = self.table_at(&mut state, revision, &meta)?;
        let answer = f(&cached.table);
        state.cache = Some(cached);
        Ok(answer)
    }
}
