//! The keys the registry state is indexed by: a `(pod_name, incarnation)`
//! pair, borrowed as `dyn Key`, so records and tombstones are looked up
//! without building an owned key, and the set wrappers ordered by it.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Bound;

use crate::record::{Record, Tombstone};

/// A `(pod_name, incarnation)` key, borrowed: what the records and the
/// departed set are looked up by without building an owned key.
///
/// Ordered by name, then incarnation (`None` first); hashed and compared
/// as the pair. Every type that borrows as `dyn Key` orders, compares and
/// hashes exactly as its `dyn Key` form, as [`Borrow`] requires.
pub(crate) trait Key {
    fn name(&self) -> &str;
    fn incarnation(&self) -> Option<&str>;
}

impl Key for (&str, Option<&str>) {
    fn name(&self) -> &str {
        self.0
    }

    fn incarnation(&self) -> Option<&str> {
        self.1
    }
}

impl PartialEq for dyn Key + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name() && self.incarnation() == other.incarnation()
    }
}

impl Eq for dyn Key + '_ {}

impl PartialOrd for dyn Key + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn Key + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.name()
            .cmp(other.name())
            .then_with(|| self.incarnation().cmp(&other.incarnation()))
    }
}

impl Hash for dyn Key + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state);
        self.incarnation().hash(state);
    }
}

/// The borrowed key of a tombstone.
pub(crate) fn tombstone_key(tombstone: &Tombstone) -> (&str, Option<&str>) {
    (
        tombstone.pod_name.as_str(),
        tombstone.incarnation.as_deref(),
    )
}

/// Implements [`Key`], `Borrow<dyn Key>`, equality, order and hashing for a
/// newtype over a value with `pod_name` and `incarnation` fields, all as its
/// `dyn Key` form.
macro_rules! keyed_by_pod {
    ($wrapper:ident) => {
        impl Key for $wrapper {
            fn name(&self) -> &str {
                self.0.pod_name.as_str()
            }

            fn incarnation(&self) -> Option<&str> {
                self.0.incarnation.as_deref()
            }
        }

        impl<'a> Borrow<dyn Key + 'a> for $wrapper {
            fn borrow(&self) -> &(dyn Key + 'a) {
                self
            }
        }

        impl PartialEq for $wrapper {
            fn eq(&self, other: &Self) -> bool {
                (self as &dyn Key) == (other as &dyn Key)
            }
        }

        impl Eq for $wrapper {}

        impl PartialOrd for $wrapper {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $wrapper {
            fn cmp(&self, other: &Self) -> Ordering {
                (self as &dyn Key).cmp(other as &dyn Key)
            }
        }

        impl Hash for $wrapper {
            fn hash<H: Hasher>(&self, state: &mut H) {
                (self as &dyn Key).hash(state);
            }
        }
    };
}

/// A record in the record set: ordered and compared by its key alone.
#[derive(Debug, Clone)]
pub(crate) struct Entry(pub(crate) Record);

keyed_by_pod!(Entry);

/// The records, one flat set sorted by `(pod_name, incarnation)`: no
/// per-name allocation, and the key is the record's own fields.
///
/// Two sets are equal when their records are, field by field (an
/// [`Entry`] alone compares only its key).
#[derive(Clone, Default)]
pub(crate) struct Records(pub(crate) BTreeSet<Entry>);

impl Records {
    /// The records from the first one named `name` (or the first after
    /// where it would be) to the end.
    pub(crate) fn starting_at(&self, name: &str) -> std::collections::btree_set::Range<'_, Entry> {
        let start: &dyn Key = &(name, None);
        self.0
            .range::<dyn Key, _>((Bound::Included(start), Bound::Unbounded))
    }

    pub(crate) fn get(&self, name: &str, incarnation: Option<&str>) -> Option<&Record> {
        self.0
            .get(&(name, incarnation) as &dyn Key)
            .map(|entry| &entry.0)
    }

    pub(crate) fn take(&mut self, name: &str, incarnation: Option<&str>) -> Option<Record> {
        self.0
            .take(&(name, incarnation) as &dyn Key)
            .map(|entry| entry.0)
    }
}

impl PartialEq for Records {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| a.0 == b.0)
    }
}

impl Eq for Records {}

impl fmt::Debug for Records {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|entry| &entry.0))
            .finish()
    }
}

/// A tombstone in the departed set's index: compared and hashed by its
/// key, as its `dyn Key` form.
#[derive(Debug, Clone)]
pub(crate) struct TombstoneKey(pub(crate) Tombstone);

keyed_by_pod!(TombstoneKey);
