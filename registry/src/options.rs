//! [`RegistryOptions`] of [`crate::FileRegistry::open_with`], and the
//! test-only [`FaultInjector`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[cfg(doc)]
use crate::{FileRegistry, RegistryState};
use crate::{RegistryLimits, DEFAULT_DEPARTED_CAPACITY};

/// Options of [`FileRegistry::open_with`].
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    pub(crate) departed_capacity: usize,
    pub(crate) limits: RegistryLimits,
    pub(crate) faults: Option<FaultInjector>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            departed_capacity: DEFAULT_DEPARTED_CAPACITY,
            limits: RegistryLimits::default(),
            faults: None,
        }
    }
}

impl RegistryOptions {
    /// The defaults: [`DEFAULT_DEPARTED_CAPACITY`] departures, the default
    /// [`RegistryLimits`], no fault injection.
    pub fn new() -> Self {
        RegistryOptions::default()
    }

    /// The caps on records, record size and file size (see
    /// [`RegistryLimits`]).
    pub fn limits(mut self, limits: RegistryLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The caps in effect.
    pub fn current_limits(&self) -> RegistryLimits {
        self.limits
    }

    /// How many departures to remember (see [`RegistryState::new`]). When
    /// the departed file holds more, the oldest are dropped at open.
    pub fn departed_capacity(mut self, departed_capacity: usize) -> Self {
        self.departed_capacity = departed_capacity;
        self
    }

    /// **For tests only**: makes file writes fail on demand (see
    /// [`FaultInjector`]). Production code never sets this.
    pub fn fault_injector(mut self, faults: FaultInjector) -> Self {
        self.faults = Some(faults);
        self
    }
}

/// **For tests only**: a shared plan of file writes to fail.
///
/// Each write of one file (the departed file or the records file) consumes
/// one step of the plan: first the writes to let through, then the writes
/// to fail. A failing write fails as an I/O error would: after the
/// temporary file was written and before it is synced and renamed over the
/// real file, so the real file is unchanged. Clones share the plan, so a
/// test keeps one and passes a clone to [`RegistryOptions::fault_injector`].
///
/// When both files changed, one commit writes the departed file then the
/// records file: `fail_file_writes(1, 1)` fails the records file after the
/// departed file was written, as a crash between the two would.
#[derive(Debug, Clone, Default)]
pub struct FaultInjector {
    plan: Arc<Mutex<FaultPlan>>,
}

#[derive(Debug, Default)]
struct FaultPlan {
    pass: usize,
    fail: usize,
}

impl FaultInjector {
    /// An injector with nothing planned: every write goes through.
    pub fn new() -> Self {
        FaultInjector::default()
    }

    /// Makes the next `n` file writes fail (replacing any plan pending).
    pub fn fail_next_file_writes(&self, n: usize) {
        self.fail_file_writes(0, n);
    }

    /// Lets the next `pass` file writes through, then makes the `fail`
    /// after them fail (replacing any plan pending).
    pub fn fail_file_writes(&self, pass: usize, fail: usize) {
        *self.plan() = FaultPlan { pass, fail };
    }

    /// How many injected failures are still pending.
    pub fn remaining(&self) -> usize {
        self.plan().fail
    }

    /// Consumes one step of the plan: whether this write must fail.
    pub(crate) fn take(&self) -> bool {
        let mut plan = self.plan();
        if plan.pass > 0 {
            plan.pass -= 1;
            false
        } else if plan.fail > 0 {
            plan.fail -= 1;
            true
        } else {
            false
        }
    }

    fn plan(&self) -> MutexGuard<'_, FaultPlan> {
        self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
