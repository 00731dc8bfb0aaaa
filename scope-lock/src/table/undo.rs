//! The undo journal of [`MemoryStore`](crate::testing::MemoryStore)'s
//! transactions: what a transaction changed, so a failed one is undone in
//! O(changes). (Unrelated to the file store's journal file.)

use std::sync::{Arc, Mutex};

use pod_protocol::PodName;

use super::{fresh_stamp, Allocation, Table};

impl Table {
    /// Starts recording every change into `journal`, replacing any journal
    /// in progress. For [`MemoryStore`](crate::testing::MemoryStore)'s
    /// transactions.
    pub(crate) fn begin_journal(&mut self, journal: Journal) {
        self.journal = Some(journal);
    }

    /// Stops recording and returns the journal, if the one in progress is
    /// the one with `token` (a table the closure put in place of the
    /// journaled one has none, or another).
    pub(crate) fn take_journal(&mut self, token: u64) -> Option<Journal> {
        if self.journal.as_ref()?.token != token {
            return None;
        }
        self.journal.take()
    }

    /// Undoes every change recorded in `journal` (taken from this table by
    /// [`take_journal`](Self::take_journal)), newest first.
    pub(crate) fn undo(&mut self, journal: Journal) {
        undo_into(&mut self.allocations, journal.undo);
    }

    /// The table a journaled table was when its journal began, rebuilt
    /// from what it left behind when it was dropped; its stamp is `stamp`.
    pub(crate) fn from_orphan(orphan: Orphan, stamp: u64) -> Table {
        let mut allocations = orphan.allocations;
        undo_into(&mut allocations, orphan.undo);
        Table {
            allocations,
            stamp,
            journal: None,
        }
    }

    /// Whether a journal is recording (only inside a transaction of the
    /// in-memory store).
    #[cfg(test)]
    pub(crate) fn is_journaling(&self) -> bool {
        self.journal.is_some()
    }

    /// Sets the stamp back to `stamp`, the one the table had when it held
    /// the same content (after a rollback).
    pub(crate) fn restore_stamp(&mut self, stamp: u64) {
        self.stamp = stamp;
    }
}

/// An undo journal: what a transaction of the in-memory store changed, in
/// order, so that a transaction that fails (the closure returns `Err`, a
/// write failure is injected, or the closure panics) can be undone in
/// O(changes) instead of running on a clone of the whole table.
///
/// Every change to a [`Table`] goes through one of its mutation points
/// (`insert`, `release`, `remove_dead`, which record here), except
/// replacing the whole table (`*table = other`): then the journaled table
/// is dropped, and its [`Drop`] leaves its allocations and this journal in
/// the `orphan` slot, from which the store rebuilds the table it had
/// ([`Table::from_orphan`]).
pub(crate) struct Journal {
    /// Unique to one transaction.
    token: u64,
    /// The changes so far, oldest first.
    undo: Vec<Undo>,
    /// Where a dropped journaled table leaves its content.
    orphan: Arc<Mutex<Option<Orphan>>>,
}

/// What a journaled table left behind when it was dropped.
#[derive(Debug)]
pub(crate) struct Orphan {
    /// The transaction's token.
    pub(crate) token: u64,
    allocations: Vec<Allocation>,
    undo: Vec<Undo>,
}

impl Journal {
    /// An empty journal with a fresh token; a journaled table dropped
    /// while recording leaves its content in `orphan`.
    pub(crate) fn new(orphan: Arc<Mutex<Option<Orphan>>>) -> Self {
        Journal {
            token: fresh_stamp(),
            undo: Vec::new(),
            orphan,
        }
    }

    /// This journal's token.
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    pub(super) fn record(&mut self, undo: Undo) {
        self.undo.push(undo);
    }

    /// Leaves `allocations` (the dropped table's) and the changes that led
    /// to them in the orphan slot, unless a newer transaction's table is
    /// already there (an older journaled table that had escaped its
    /// transaction and is dropped later must not hide it).
    pub(super) fn orphan(self, allocations: Vec<Allocation>) {
        let mut slot = self
            .orphan
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.as_ref().is_none_or(|o| o.token < self.token) {
            *slot = Some(Orphan {
                token: self.token,
                allocations,
                undo: self.undo,
            });
        }
    }
}

/// One change to the allocation vector, as what undoes it. Indices are
/// positions at the time of the change, so replaying newest first restores
/// every position exactly.
#[derive(Debug)]
pub(super) enum Undo {
    /// An allocation was inserted at this index.
    Inserted(usize),
    /// The allocation at this index replaced this one.
    Replaced(usize, Allocation),
    /// These allocations were removed, with their indices before the
    /// removal, ascending.
    Removed(Vec<(usize, Allocation)>),
    /// The allocation at this index had this `delegated_from` and this
    /// `reparented` count.
    Reparented(usize, Option<PodName>, u64),
}

/// Undoes `undo` (oldest first) on `allocations`, newest first.
fn undo_into(allocations: &mut Vec<Allocation>, undo: Vec<Undo>) {
    for step in undo.into_iter().rev() {
        match step {
            Undo::Inserted(i) => {
                allocations.remove(i);
            }
            Undo::Replaced(i, old) => allocations[i] = old,
            Undo::Reparented(i, from, count) => {
                allocations[i].delegated_from = from;
                allocations[i].reparented = count;
            }
            Undo::Removed(mut removed) => {
                if removed.len() == 1 {
                    if let Some((i, a)) = removed.pop() {
                        allocations.insert(i, a);
                    }
                    continue;
                }
                // Merge: each removed allocation goes back to its old
                // index, the others fill the gaps in order.
                let kept = std::mem::take(allocations);
                let total = kept.len() + removed.len();
                let mut kept = kept.into_iter();
                let mut removed = removed.into_iter().peekable();
                for position in 0..total {
                    let next = match removed.next_if(|(i, _)| *i == position) {
                        Some((_, a)) => Some(a),
                        None => kept.next(),
                    };
                    allocations.extend(next);
                }
            }
        }
    }
}
