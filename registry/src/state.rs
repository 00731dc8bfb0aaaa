//! [`RegistryState`]: the registry's pure in-memory state machine, and the
//! [`Mutation`]s it applies.

use std::collections::{HashMap, HashSet, VecDeque};

use pod_protocol::PodName;

use crate::keys::{tombstone_key, Entry, Key, Records, TombstoneKey};
use crate::limits::{element_bytes, tombstone_len, EMPTY_FILE_BYTES};
#[cfg(doc)]
use crate::record::incarnations_match;
use crate::record::{Record, Tombstone};
use crate::RegistryLimits;

/// How many departures a registry remembers by default.
pub const DEFAULT_DEPARTED_CAPACITY: usize = 4096;

/// A change to a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mutation {
    /// Add a record unless a record with the same `(pod_name, incarnation)`
    /// exists (the existing one is never overwritten) or a tombstone in the
    /// departed set matches it.
    Add(Record),
    /// Remove the records of `pod_name` whose incarnation matches (see
    /// [`incarnations_match`]); leaves no tombstone. Removing nothing is not
    /// an error.
    Remove {
        /// The name of the records to remove.
        pod_name: PodName,
        /// The incarnation to remove; `None` removes every incarnation.
        incarnation: Option<String>,
    },
    /// What a `ShutDown` does: remove the matching records (as
    /// [`Mutation::Remove`]) and insert the tombstone
    /// `(pod_name, incarnation)` into the departed set, so a later add of a
    /// matching record is refused.
    Depart {
        /// The departed Pod's name.
        pod_name: PodName,
        /// The departed incarnation; `None` (a legacy `ShutDown`) matches
        /// every incarnation of the name.
        incarnation: Option<String>,
    },
    /// Points the record `(pod_name, incarnation)` (exactly that key) at
    /// the pod it reports to now: its `callback_address` becomes
    /// `callback_address`. What a parent does when a death moves the pod
    /// under a new manager (DESIGN section 12). No matching record is not
    /// an error.
    Redirect {
        /// The record's name.
        pod_name: PodName,
        /// The record's incarnation (`None`: the legacy record).
        incarnation: Option<String>,
        /// Where the pod reports from now on.
        callback_address: String,
    },
}

impl Mutation {
    /// The name of the Pod this mutation is about.
    pub fn pod_name(&self) -> &PodName {
        match self {
            Mutation::Add(record) => &record.pod_name,
            Mutation::Remove { pod_name, .. }
            | Mutation::Depart { pod_name, .. }
            | Mutation::Redirect { pod_name, .. } => pod_name,
        }
    }
}

/// What applying a [`Mutation`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// [`Mutation::Add`]: the record was added.
    Added,
    /// [`Mutation::Add`]: a record with the same `(pod_name, incarnation)`
    /// already exists; nothing changed.
    AlreadyPresent,
    /// [`Mutation::Add`]: a tombstone matches the record (the Pod already
    /// departed); nothing changed. A refusal, not an error.
    Departed,
    /// [`Mutation::Remove`] or [`Mutation::Depart`].
    Removed {
        /// The records removed, sorted by incarnation; empty when none
        /// matched.
        records: Vec<Record>,
        /// For [`Mutation::Depart`]: whether the tombstone was new, i.e. the
        /// first time this registry sees this exact departure (callers relay
        /// a `ShutDown` upward only then). Always `false` for
        /// [`Mutation::Remove`].
        first_departure: bool,
    },
    /// [`Mutation::Redirect`]: whether a record now says something new
    /// (`false` when none matched or it said so already).
    Redirected {
        /// A record's `callback_address` changed.
        changed: bool,
    },
}

/// Which parts of the state a mutation changed; decides which files the
/// file registry rewrites.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Changed {
    pub(crate) records: bool,
    pub(crate) departed: bool,
}

impl Changed {
    pub(crate) fn any(self) -> bool {
        self.records || self.departed
    }
}

/// The registry's state: the records and a bounded set of departures.
///
/// Pure and deterministic, with no I/O: both [`crate::FileRegistry`] and
/// [`crate::testing::MemoryRegistry`] wrap one.
///
/// Records are keyed by `(pod_name, incarnation)`. With the departed set
/// this makes the registry a two-phase set: after any delivery order of the
/// same adds and departures, the records are the adds that no departure
/// matches (as long as no tombstone was evicted from the bounded departed
/// set in between). Invariant: no record is matched by a tombstone of the
/// departed set.
///
/// The departed set keeps at most `departed_capacity` tombstones, and no
/// more than fit in a departed file of
/// [`RegistryLimits::max_file_bytes`](crate::RegistryLimits::max_file_bytes)
/// (the default cap unless a registry's limits say otherwise), so the file
/// is always readable back; when full, the oldest is dropped first.
/// Re-inserting a tombstone it already holds does not refresh its age.
///
/// ```
/// use pod_registry::{Mutation, Outcome, PodName, Record, RegistryState};
///
/// let mut state = RegistryState::default();
/// let record = Record {
///     pod_name: PodName::new("w1").unwrap(),
///     socket_path: "/run/pods/w1.sock".into(),
///     scope_delegated: vec![],
///     callback_address: String::new(),
///     incarnation: Some("i1".into()),
/// };
/// assert_eq!(state.apply(&Mutation::Add(record.clone())), Outcome::Added);
/// assert_eq!(state.apply(&Mutation::Add(record.clone())), Outcome::AlreadyPresent);
/// let departure = Mutation::Depart { pod_name: record.pod_name.clone(), incarnation: None };
/// assert_eq!(
///     state.apply(&departure),
///     Outcome::Removed { records: vec![record.clone()], first_departure: true }
/// );
/// // A late add of the departed Pod is refused.
/// assert_eq!(state.apply(&Mutation::Add(record)), Outcome::Departed);
/// assert!(state.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryState {
    records: Records,
    departed: VecDeque<Tombstone>,
    /// The departed set's exact `(pod_name, incarnation)` pairs.
    departed_keys: HashSet<TombstoneKey>,
    /// How many tombstones of the departed set each name has (never 0).
    departed_names: HashMap<PodName, usize>,
    departed_capacity: usize,
    /// The size of the departed file holding the departed set.
    departed_bytes: u64,
    /// The most `departed_bytes` may be.
    departed_max_bytes: u64,
}

impl Default for RegistryState {
    /// An empty state remembering [`DEFAULT_DEPARTED_CAPACITY`] departures.
    fn default() -> Self {
        RegistryState::new(DEFAULT_DEPARTED_CAPACITY)
    }
}

impl RegistryState {
    /// An empty state remembering at most `departed_capacity` departures
    /// (0 remembers none: departures still remove records, but a later add
    /// is not refused).
    pub fn new(departed_capacity: usize) -> Self {
        RegistryState {
            records: Records::default(),
            departed: VecDeque::new(),
            departed_keys: HashSet::new(),
            departed_names: HashMap::new(),
            departed_capacity,
            departed_bytes: EMPTY_FILE_BYTES,
            departed_max_bytes: RegistryLimits::DEFAULT_MAX_FILE_BYTES,
        }
    }

    /// Caps the departed file's size at `max_bytes`, dropping the oldest
    /// tombstones now if it is over.
    pub(crate) fn cap_departed_bytes(&mut self, max_bytes: u64) {
        self.departed_max_bytes = max_bytes;
        self.evict_departed();
    }

    /// Applies `mutation` and says what it did.
    pub fn apply(&mut self, mutation: &Mutation) -> Outcome {
        self.apply_tracked(mutation).0
    }

    /// [`RegistryState::apply`], also saying which parts changed.
    pub(crate) fn apply_tracked(&mut self, mutation: &Mutation) -> (Outcome, Changed) {
        match mutation {
            Mutation::Add(record) => {
                if self.is_departed(record.pod_name.as_str(), record.incarnation.as_deref()) {
                    return (Outcome::Departed, Changed::default());
                }
                if self.insert_record(record.clone()) {
                    let changed = Changed {
                        records: true,
                        departed: false,
                    };
                    (Outcome::Added, changed)
                } else {
                    (Outcome::AlreadyPresent, Changed::default())
                }
            }
            Mutation::Remove {
                pod_name,
                incarnation,
            } => {
                let records = self.remove_matching(pod_name.as_str(), incarnation.as_deref());
                let changed = Changed {
                    records: !records.is_empty(),
                    departed: false,
                };
                let outcome = Outcome::Removed {
                    records,
                    first_departure: false,
                };
                (outcome, changed)
            }
            Mutation::Redirect {
                pod_name,
                incarnation,
                callback_address,
            } => {
                let changed =
                    self.redirect(pod_name.as_str(), incarnation.as_deref(), callback_address);
                let changed_parts = Changed {
                    records: changed,
                    departed: false,
                };
                (Outcome::Redirected { changed }, changed_parts)
            }
            Mutation::Depart {
                pod_name,
                incarnation,
            } => {
                let records = self.remove_matching(pod_name.as_str(), incarnation.as_deref());
                let (first_departure, departed) = self.insert_tombstone(Tombstone {
                    pod_name: pod_name.clone(),
                    incarnation: incarnation.clone(),
                });
                let changed = Changed {
                    records: !records.is_empty(),
                    departed,
                };
                let outcome = Outcome::Removed {
                    records,
                    first_departure,
                };
                (outcome, changed)
            }
        }
    }

    /// Every record, sorted by `(pod_name, incarnation)` (a record without
    /// an incarnation first).
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.0.iter().map(|entry| &entry.0)
    }

    /// The records named `name` (several when incarnations differ), sorted
    /// by incarnation.
    pub fn records_named<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Record> {
        let mut named = self.records.starting_at(name).peekable();
        // The name as the set holds it, so the iterator does not borrow `name`.
        let held = named
            .peek()
            .map(|entry| entry.0.pod_name.as_str())
            .filter(|held| *held == name);
        named
            .take_while(move |entry| Some(entry.0.pod_name.as_str()) == held)
            .map(|entry| &entry.0)
    }

    /// The first record named `name` whose incarnation matches
    /// `incarnation` (see [`incarnations_match`]; `None` matches any).
    pub fn get(&self, name: &str, incarnation: Option<&str>) -> Option<&Record> {
        match incarnation {
            // Every record of the name matches; the first sorts first.
            None => self.records_named(name).next(),
            // A record without an incarnation matches and sorts first; else
            // only the equal one matches. One search finds the first record
            // of the name, usually the one wanted.
            Some(_) => {
                let first = self.records_named(name).next()?;
                if first.incarnation.is_none() || first.incarnation.as_deref() == incarnation {
                    Some(first)
                } else {
                    self.records.get(name, incarnation)
                }
            }
        }
    }

    /// The departed set, oldest first.
    pub fn departed(&self) -> impl Iterator<Item = &Tombstone> {
        self.departed.iter()
    }

    /// Whether any tombstone of the departed set matches `(name,
    /// incarnation)`.
    pub fn is_departed(&self, name: &str, incarnation: Option<&str>) -> bool {
        match incarnation {
            // Matches every tombstone of the name.
            None => self.departed_names.contains_key(name),
            // Matches the tombstone without an incarnation and the equal
            // one; a name with no tombstone (the usual case) needs no more.
            Some(_) => {
                self.departed_names.contains_key(name)
                    && (self.departed_keys.contains(&(name, None) as &dyn Key)
                        || self
                            .departed_keys
                            .contains(&(name, incarnation) as &dyn Key))
            }
        }
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.records.0.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.0.is_empty()
    }

    /// The number of tombstones in the departed set.
    pub fn departed_len(&self) -> usize {
        self.departed.len()
    }

    /// The most tombstones the departed set keeps.
    pub fn departed_capacity(&self) -> usize {
        self.departed_capacity
    }

    /// Rebuilds a state from loaded files, restoring the invariant.
    ///
    /// Tombstones are inserted first, oldest first (duplicates are skipped;
    /// beyond the capacity the oldest are dropped); then records, the first
    /// of several with the same `(pod_name, incarnation)` winning and any
    /// record matched by a tombstone dropped (a crash between writing the
    /// departed file and the records file leaves such records). The
    /// returned [`Changed`] says which loaded file differs from the state.
    pub(crate) fn from_parts(
        departed_capacity: usize,
        departed_max_bytes: u64,
        records: Vec<Record>,
        departed: Vec<Tombstone>,
    ) -> (Self, Changed) {
        let mut state = RegistryState::new(departed_capacity);
        state.departed_max_bytes = departed_max_bytes;
        let mut changed = Changed::default();
        let departed_loaded = departed.len();
        for tombstone in departed {
            state.insert_tombstone(tombstone);
        }
        changed.departed = state.departed.len() != departed_loaded;
        let records_loaded = records.len();
        for record in records {
            if !state.is_departed(record.pod_name.as_str(), record.incarnation.as_deref()) {
                state.insert_record(record);
            }
        }
        changed.records = state.len() != records_loaded;
        (state, changed)
    }

    /// Inserts `record` unless its `(pod_name, incarnation)` is present;
    /// returns whether it was inserted.
    fn insert_record(&mut self, record: Record) -> bool {
        // `BTreeSet::insert` keeps the existing element when one is equal.
        self.records.0.insert(Entry(record))
    }

    /// Sets the `callback_address` of the record `(name, incarnation)`;
    /// whether it changed.
    fn redirect(&mut self, name: &str, incarnation: Option<&str>, callback_address: &str) -> bool {
        let Some(mut record) = self.records.take(name, incarnation) else {
            return false;
        };
        let changed = record.callback_address != callback_address;
        callback_address.clone_into(&mut record.callback_address);
        self.insert_record(record);
        changed
    }

    /// Removes the records of `name` whose incarnation matches
    /// `incarnation`, sorted by incarnation.
    fn remove_matching(&mut self, name: &str, incarnation: Option<&str>) -> Vec<Record> {
        let mut removed = Vec::new();
        match incarnation {
            None => {
                // Every record of the name, first to last.
                // (The key is copied out so the set can be mutated.)
                loop {
                    let first = self.records_named(name).next();
                    let Some(key) = first.map(|first| first.incarnation.clone()) else {
                        break;
                    };
                    removed.extend(self.records.take(name, key.as_deref()));
                }
            }
            Some(_) => {
                removed.extend(self.records.take(name, None));
                removed.extend(self.records.take(name, incarnation));
            }
        }
        removed
    }

    /// Inserts `tombstone` into the departed set. Returns whether it was new
    /// and whether the set changed (a new tombstone does not change a set
    /// of capacity 0, nor one whose file could not hold it alone).
    fn insert_tombstone(&mut self, tombstone: Tombstone) -> (bool, bool) {
        if self
            .departed_keys
            .contains(&tombstone_key(&tombstone) as &dyn Key)
        {
            return (false, false);
        }
        let bytes = element_bytes(tombstone_len(&tombstone));
        if self.departed_capacity == 0 || EMPTY_FILE_BYTES + bytes > self.departed_max_bytes {
            return (true, false);
        }
        *self
            .departed_names
            .entry(tombstone.pod_name.clone())
            .or_default() += 1;
        self.departed_keys.insert(TombstoneKey(tombstone.clone()));
        self.departed.push_back(tombstone);
        self.departed_bytes += bytes;
        self.evict_departed();
        (true, true)
    }

    /// Drops the oldest tombstones while the set is over its capacity or
    /// its file over its cap. The newest always fits alone (see
    /// [`RegistryState::insert_tombstone`]).
    fn evict_departed(&mut self) {
        while self.departed.len() > self.departed_capacity
            || self.departed_bytes > self.departed_max_bytes
        {
            let Some(oldest) = self.departed.pop_front() else {
                break;
            };
            self.forget_tombstone(&oldest);
        }
    }

    fn forget_tombstone(&mut self, tombstone: &Tombstone) {
        self.departed_bytes -= element_bytes(tombstone_len(tombstone));
        self.departed_keys
            .remove(&tombstone_key(tombstone) as &dyn Key);
        if let Some(count) = self.departed_names.get_mut(tombstone.pod_name.as_str()) {
            *count -= 1;
            if *count == 0 {
                self.departed_names.remove(tombstone.pod_name.as_str());
            }
        }
    }
}
