//! [`FileRegistry`]: the registry persisted as two JSON files, written by a
//! group-committing thread.

use std::fs::{self, DirBuilder, File};
use std::future::Future;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::copy_io_error;
use crate::fsio::{check_private_dir, create_temp, remove_leftover_temps, write_synced};
use crate::limits::{encoded_len, file_bytes_after, file_bytes_of};
use crate::load::{load_files, InvalidRecord};
use crate::lock::OwnerLock;
use crate::state::Changed;
use crate::{
    FaultInjector, Mutation, Outcome, Record, Registry, RegistryError, RegistryLimits,
    RegistryOptions, RegistryState,
};

/// The records file's name in the state directory.
pub const RECORDS_FILE: &str = "spawned_pods.json";
/// The departed set's file name in the state directory.
pub const DEPARTED_FILE: &str = "departed_pods.json";

/// The registry persisted in a state directory: `spawned_pods.json` (the
/// records) and `departed_pods.json` (the departed set).
///
/// [`Registry::apply`] applies the mutation to memory under a short lock,
/// wakes a dedicated committer thread and waits (asynchronously, holding no
/// lock) for it. The committer takes everything applied since its last
/// write, writes each changed file once (temporary file, fsync, rename,
/// fsync of the directory), then wakes every waiter of that write with its
/// result. So a burst of mutations costs a few writes, not one each, and no
/// blocking file I/O runs on the caller's executor.
///
/// A mutation that changes nothing (a duplicate add, removing a missing
/// Pod) resolves at once when everything applied before it is durable, and
/// otherwise with the next write, so its outcome never rests on state that
/// could still be lost.
///
/// One registry owns a state directory at a time: it holds an exclusive
/// lock on `<state dir>/registry.lock` for its whole life, and a second
/// `FileRegistry` on the same directory (in any process) is refused at
/// once with [`RegistryError::Locked`], naming the holder's pid. Others
/// read the registry with [`crate::RegistrySnapshot`], which takes no lock
/// (each file is replaced atomically).
///
/// Elements of the records file that are not valid records (written by
/// other tools) are kept verbatim and reported, never acted on: see
/// [`FileRegistry::invalid_records`].
///
/// Dropping the registry stops the committer thread after it has served the
/// writes already requested, and blocks until then: only a write whose
/// future was dropped can still be in flight, so this is normally
/// immediate.
/// State left dirty by a failed write that no later write retried is not
/// written on drop: call [`FileRegistry::flush`] first.
pub struct FileRegistry {
    shared: Arc<Shared>,
    committer: Option<JoinHandle<()>>,
}

struct Shared {
    dir: PathBuf,
    records_path: PathBuf,
    departed_path: PathBuf,
    faults: Option<FaultInjector>,
    limits: RegistryLimits,
    /// Never changes after open: invalid records are never acted on.
    invalid: Vec<InvalidRecord>,
    /// The owner lock, held for the registry's life: dropped with the last
    /// `Arc<Shared>`, after the committer thread's last write.
    _lock: OwnerLock,
    durable_writes: AtomicU64,
    refused: AtomicU64,
    inner: Mutex<Inner>,
    /// Signals the committer: a waiter arrived, or the registry is closing.
    wake: Condvar,
}

struct Inner {
    state: RegistryState,
    /// The files that differ from memory and are not being written.
    dirty: Changed,
    /// Sequence number of the last mutation that changed the state.
    applied: u64,
    /// Sequence number covered by the last successful write.
    durable: u64,
    /// The records file's size as the next write would write it.
    file_bytes: u64,
    /// Callers waiting for the next write.
    waiters: Vec<oneshot::Sender<Result<(), WriteFailure>>>,
    closing: bool,
    /// The committer thread has exited; nothing can be written any more.
    stopped: bool,
}

impl Inner {
    /// Whether memory equals disk and no write is in flight.
    fn is_clean(&self) -> bool {
        !self.dirty.any() && self.durable == self.applied
    }
}

/// The failure of one write, shared by all its waiters.
#[derive(Debug, Clone)]
struct WriteFailure {
    path: PathBuf,
    error: Arc<io::Error>,
}

impl WriteFailure {
    fn new(path: &Path, error: io::Error) -> Self {
        WriteFailure {
            path: path.to_path_buf(),
            error: Arc::new(error),
        }
    }

    fn to_error(&self) -> RegistryError {
        RegistryError::io(self.path.clone(), copy_io_error(&self.error))
    }
}

/// What [`FileRegistry::submit`] decided.
enum Submitted {
    Done(Result<Outcome, RegistryError>),
    Wait(Outcome, oneshot::Receiver<Result<(), WriteFailure>>),
}

impl Submitted {
    async fn wait(self) -> Result<Outcome, RegistryError> {
        match self {
            Submitted::Done(result) => result,
            Submitted::Wait(outcome, receiver) => match receiver.await {
                Ok(Ok(())) => Ok(outcome),
                Ok(Err(failure)) => Err(failure.to_error()),
                Err(_) => Err(RegistryError::Closed),
            },
        }
    }
}

impl FileRegistry {
    /// Opens the registry in `state_dir` with the default options.
    ///
    /// See [`FileRegistry::open_with`].
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Self, RegistryError> {
        FileRegistry::open_with(state_dir, RegistryOptions::default())
    }

    /// Opens the registry in `state_dir`: creates the directory (mode 0700)
    /// if missing and checks that it is private, takes the directory's
    /// owner lock, removes temporary files a crash left, loads
    /// `spawned_pods.json` and `departed_pods.json`, creates each missing
    /// one as an empty array (mode 0600), and starts the committer thread.
    ///
    /// Records matched by a tombstone (what a crash between the writes of
    /// the two files leaves) are dropped from memory; the records file is
    /// rewritten by the next write. Elements of the records file that are
    /// not valid records are kept (see [`FileRegistry::invalid_records`]).
    /// Blocking: call it from a synchronous context or `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// - [`RegistryError::InsecureDir`] if the directory is not owned by
    ///   this user or is group- or world-writable;
    /// - [`RegistryError::Locked`] if another registry owns the directory;
    /// - [`RegistryError::Corrupt`] if a file is not a JSON array (it is
    ///   left untouched, and no data file is created);
    /// - [`RegistryError::NotRegularFile`] if a file is a link, FIFO,
    ///   device or directory, [`RegistryError::TooLarge`] if it is over
    ///   [`RegistryLimits::max_file_bytes`] (neither is read);
    /// - [`RegistryError::Io`] if the directory or a file cannot be created
    ///   or read.
    pub fn open_with(
        state_dir: impl AsRef<Path>,
        options: RegistryOptions,
    ) -> Result<Self, RegistryError> {
        let dir = state_dir.as_ref().to_path_buf();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| RegistryError::io(&dir, e))?;
        check_private_dir(&dir)?;
        // Before reading: the previous owner is gone, so what we read is
        // its last word, and no write of another owner can follow.
        let lock = OwnerLock::acquire(&dir)?;
        remove_leftover_temps(&dir);
        let records_path = dir.join(RECORDS_FILE);
        let departed_path = dir.join(DEPARTED_FILE);
        // Parse both before creating either, so an error leaves the
        // data files exactly as they were.
        let loaded = load_files(&records_path, &departed_path, &options.limits)?;
        for (path, missing) in [
            (&departed_path, loaded.departed.is_none()),
            (&records_path, loaded.records.is_none()),
        ] {
            if missing {
                write_durably(&dir, path, b"[]\n", None).map_err(|f| f.to_error())?;
            }
        }
        let records = loaded.records.unwrap_or_default();
        // The owner reports them (a snapshot's reader shows them itself).
        for invalid in &records.invalid {
            tracing::warn!(
                file = %records_path.display(),
                index = invalid.index(),
                reason = invalid.reason(),
                "kept an invalid registry record as it is; it is never matched or acted on"
            );
        }
        let (state, dirty) = RegistryState::from_parts(
            options.departed_capacity,
            options.limits.file_bytes(),
            records.records,
            loaded.departed.unwrap_or_default(),
        );
        let file_bytes = file_bytes_of(
            state
                .records()
                .map(encoded_len)
                .chain(records.invalid.iter().map(|r| r.raw().len() as u64)),
        );
        let shared = Arc::new(Shared {
            dir,
            records_path,
            departed_path,
            faults: options.faults,
            limits: options.limits,
            invalid: records.invalid,
            _lock: lock,
            durable_writes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                state,
                dirty,
                applied: 0,
                durable: 0,
                file_bytes,
                waiters: Vec::new(),
                closing: false,
                stopped: false,
            }),
            wake: Condvar::new(),
        });
        let committer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("pod-registry-commit".into())
                .spawn(move || commit_loop(&shared))
        }
        .map_err(|e| RegistryError::io(&shared.dir, e))?;
        Ok(FileRegistry {
            shared,
            committer: Some(committer),
        })
    }

    /// The records file, `<state dir>/spawned_pods.json`.
    pub fn path(&self) -> &Path {
        &self.shared.records_path
    }

    /// The departed set's file, `<state dir>/departed_pods.json`.
    pub fn departed_path(&self) -> &Path {
        &self.shared.departed_path
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The number of successful durable writes (commits) since open; one
    /// commit writes one or both files. Creating missing files at open is
    /// not counted.
    pub fn durable_writes(&self) -> u64 {
        self.shared.durable_writes.load(Ordering::SeqCst)
    }

    /// The elements of the records file that are not valid records (a
    /// name or path this crate refuses, or not a record at all), each with
    /// its exact JSON text and the reason. They are never matched, removed
    /// or acted on, and every write keeps them, byte for byte, after the
    /// valid records. Each was also logged at warn level at open.
    pub fn invalid_records(&self) -> &[InvalidRecord] {
        &self.shared.invalid
    }

    /// The caps in effect.
    pub fn limits(&self) -> RegistryLimits {
        self.shared.limits
    }

    /// How many mutations were refused for exceeding a cap (see
    /// [`RegistryLimits`]) since open.
    pub fn refused_mutations(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Resolves once memory is durable: at once when it already is,
    /// otherwise with the next write, which retries whatever a failed write
    /// left dirty.
    ///
    /// # Errors
    ///
    /// The error of that write ([`RegistryError::Io`]), or
    /// [`RegistryError::Closed`].
    pub async fn flush(&self) -> Result<(), RegistryError> {
        self.submit(None).wait().await.map(drop)
    }

    /// Applies `mutation` (if any) under the lock and registers a waiter
    /// unless memory is already durable.
    fn submit(&self, mutation: Option<&Mutation>) -> Submitted {
        let mut inner = self.shared.lock();
        if inner.stopped {
            return Submitted::Done(Err(RegistryError::Closed));
        }
        let outcome = match mutation {
            Some(mutation) => {
                let added = match self
                    .shared
                    .limits
                    .admit(&inner.state, mutation, inner.file_bytes)
                {
                    Ok(added) => added,
                    Err(refused) => {
                        self.shared.refused.fetch_add(1, Ordering::SeqCst);
                        tracing::warn!(error = %refused, "refused a registry mutation over a cap");
                        return Submitted::Done(Err(refused));
                    }
                };
                let (outcome, changed) = inner.state.apply_tracked(mutation);
                inner.file_bytes = file_bytes_after(inner.file_bytes, added, &outcome);
                if changed.any() {
                    inner.applied += 1;
                    inner.dirty.records |= changed.records;
                    inner.dirty.departed |= changed.departed;
                }
                outcome
            }
            // `flush` reports no outcome; any value does.
            None => Outcome::AlreadyPresent,
        };
        if inner.is_clean() {
            return Submitted::Done(Ok(outcome));
        }
        let (sender, receiver) = oneshot::channel();
        inner.waiters.push(sender);
        if inner.waiters.len() == 1 {
            self.shared.wake.notify_one();
        }
        Submitted::Wait(outcome, receiver)
    }
}

impl Registry for FileRegistry {
    fn apply(
        &self,
        mutation: Mutation,
    ) -> impl Future<Output = Result<Outcome, RegistryError>> + Send {
        // Applied now, in call order, not when first polled.
        self.submit(Some(&mutation)).wait()
    }

    fn read<R>(&self, f: impl FnOnce(&RegistryState) -> R) -> R {
        f(&self.shared.lock().state)
    }
}

impl std::fmt::Debug for FileRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileRegistry")
            .field("path", &self.shared.records_path)
            .field("records", &self.read(RegistryState::len))
            .field("durable_writes", &self.durable_writes())
            .finish_non_exhaustive()
    }
}

impl Drop for FileRegistry {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(committer) = self.committer.take() {
            // A panic of the committer was already reported to its waiters
            // as `Closed`; there is nothing more to do with it here.
            let _ = committer.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock with the state half
        // updated, so a poisoned lock still guards a consistent state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the registry stopped when the committer exits, even by a panic,
/// so later mutations fail with `Closed` instead of waiting forever.
struct StopGuard<'a>(&'a Shared);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.stopped = true;
        // Dropping the senders resolves their waiters with `Closed`.
        inner.waiters.clear();
    }
}

/// The committer thread: one write per round, covering every mutation
/// applied before the round started.
fn commit_loop(shared: &Shared) {
    let _guard = StopGuard(shared);
    let mut inner = shared.lock();
    loop {
        while inner.waiters.is_empty() && !inner.closing {
            inner = shared
                .wake
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if inner.waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut inner.waiters);
        let target = inner.applied;
        let dirty = std::mem::take(&mut inner.dirty);
        let departed = dirty.departed.then(|| encode_array(inner.state.departed()));
        let records = dirty
            .records
            .then(|| encode_records(inner.state.records(), &shared.invalid));
        drop(inner);

        // The departed file first: a crash between the two writes then
        // leaves a records file with a record the departed file matches,
        // which open drops. The other order could leave a removed record
        // with its tombstone lost, and a late add would resurrect it.
        let faults = shared.faults.as_ref();
        let departed_result = write_encoded(&shared.dir, &shared.departed_path, departed, faults);
        let records_result = match departed_result {
            Ok(()) => write_encoded(&shared.dir, &shared.records_path, records, faults),
            Err(_) => Ok(()),
        };

        inner = shared.lock();
        let result = match (departed_result, records_result) {
            (Ok(()), Ok(())) => {
                inner.durable = target;
                if dirty.any() {
                    shared.durable_writes.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
            (Err(failure), _) => {
                inner.dirty.departed = true;
                inner.dirty.records |= dirty.records;
                Err(failure)
            }
            (Ok(()), Err(failure)) => {
                inner.dirty.records = true;
                Err(failure)
            }
        };
        drop(inner);
        for waiter in waiters {
            // A waiter whose future was dropped no longer listens.
            let _ = waiter.send(result.clone());
        }
        inner = shared.lock();
    }
}

/// `[`, one compact JSON value per line, `]`: valid JSON that existing
/// tools parse, and readable and diffable by people.
fn encode_array<'a, T: Serialize + 'a>(items: impl Iterator<Item = &'a T>) -> io::Result<Vec<u8>> {
    let mut out = b"[".to_vec();
    let mut empty = true;
    for item in items {
        out.extend_from_slice(if empty { b"\n" } else { b",\n" });
        serde_json::to_writer(&mut out, item).map_err(io::Error::other)?;
        empty = false;
    }
    out.extend_from_slice(if empty { b"]\n" } else { b"\n]\n" });
    Ok(out)
}

/// The records file: the valid records (one per line, as
/// [`encode_array`]), then each invalid record's exact text, in file order.
fn encode_records<'a>(
    records: impl Iterator<Item = &'a Record>,
    invalid: &[InvalidRecord],
) -> io::Result<Vec<u8>> {
    let mut out = encode_array(records)?;
    if invalid.is_empty() {
        return Ok(out);
    }
    // Reopen the array: drop `]\n` (and the `\n` before it unless empty).
    let keep = if out.len() == 3 { 1 } else { out.len() - 3 };
    out.truncate(keep);
    for (i, element) in invalid.iter().enumerate() {
        let separator: &[u8] = if i == 0 && keep == 1 { b"\n" } else { b",\n" };
        out.extend_from_slice(separator);
        out.extend_from_slice(element.raw().as_bytes());
    }
    out.extend_from_slice(b"\n]\n");
    Ok(out)
}

/// Writes `encoded` (if the file changed) to `path` with [`write_durably`].
fn write_encoded(
    dir: &Path,
    path: &Path,
    encoded: Option<io::Result<Vec<u8>>>,
    faults: Option<&FaultInjector>,
) -> Result<(), WriteFailure> {
    match encoded {
        None => Ok(()),
        Some(Ok(bytes)) => write_durably(dir, path, &bytes, faults),
        Some(Err(error)) => Err(WriteFailure::new(path, error)),
    }
}

/// Replaces `path` with `bytes` atomically and durably: write a new
/// temporary file (exclusive, unpredictable name, never through a link),
/// fsync it, rename it over `path` (which replaces a link planted there
/// rather than following it), fsync the directory.
fn write_durably(
    dir: &Path,
    path: &Path,
    bytes: &[u8],
    faults: Option<&FaultInjector>,
) -> Result<(), WriteFailure> {
    let fail = WriteFailure::new;
    let (temp, file) = create_temp(path).map_err(|e| fail(path, e))?;
    let inject = faults.is_some_and(FaultInjector::take);
    let result = write_synced(&file, bytes, inject).map_err(|e| fail(&temp, e));
    drop(file);
    if result.is_err() {
        // Best effort: a leftover temporary file is never read, and the
        // next owner's open removes it.
        let _ = fs::remove_file(&temp);
        return result;
    }
    fs::rename(&temp, path).map_err(|e| fail(path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail(dir, e))
}
