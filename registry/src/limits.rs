//! [`RegistryLimits`]: caps on records, record size and file size, and the
//! admission check both registries run before applying an add.
//!
//! The caps bound what one parent's registry can cost (memory, write time,
//! read time) whatever its children send. The file cap is the same at read
//! and at write: a file this crate wrote is never too large for it to read
//! back under the same limits.

use pod_protocol::Permission;

use crate::{Mutation, Outcome, Record, RegistryError, RegistryState, Tombstone};

/// Caps of a registry: how many records, how large one record, how large a
/// registry file. See [`crate::RegistryOptions::limits`] and
/// [`crate::testing::MemoryRegistry::with_limits`].
///
/// A [`Mutation::Add`] over a cap is refused with a typed error
/// ([`RegistryError::Full`], [`RegistryError::RecordTooLarge`],
/// [`RegistryError::FileFull`]) and changes nothing; it returns at once,
/// neither waiting for nor causing a write (so it does not retry a failed
/// one either: use [`crate::FileRegistry::flush`]). Removals and
/// departures are never refused. A file over
/// [`RegistryLimits::max_file_bytes`] is refused at load
/// ([`RegistryError::TooLarge`]) before it is read.
///
/// ```
/// use pod_registry::RegistryLimits;
/// let limits = RegistryLimits::new().max_records(10).max_record_bytes(4096);
/// assert_eq!(limits.records(), 10);
/// assert_eq!(limits.file_bytes(), RegistryLimits::DEFAULT_MAX_FILE_BYTES);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryLimits {
    max_records: usize,
    max_record_bytes: u64,
    max_file_bytes: u64,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            max_records: Self::DEFAULT_MAX_RECORDS,
            max_record_bytes: Self::DEFAULT_MAX_RECORD_BYTES,
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
        }
    }
}

impl RegistryLimits {
    /// Default cap on records: 100,000 (ten times the largest registry the
    /// benchmarks use).
    pub const DEFAULT_MAX_RECORDS: usize = 100_000;
    /// Default cap on one record's encoded JSON: 64 KiB, the default frame
    /// cap, so any record an event can carry fits.
    pub const DEFAULT_MAX_RECORD_BYTES: u64 = 64 * 1024;
    /// Default cap on a registry file: 64 MiB (10,000 typical records take
    /// about 2 MiB).
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

    /// The defaults.
    pub fn new() -> Self {
        RegistryLimits::default()
    }

    /// The most records the registry holds; an add beyond is refused with
    /// [`RegistryError::Full`].
    pub fn max_records(mut self, max_records: usize) -> Self {
        self.max_records = max_records;
        self
    }

    /// The largest record, as encoded JSON bytes; a larger add is refused
    /// with [`RegistryError::RecordTooLarge`].
    pub fn max_record_bytes(mut self, max_record_bytes: u64) -> Self {
        self.max_record_bytes = max_record_bytes;
        self
    }

    /// The largest registry file, in bytes: a larger file is not read
    /// ([`RegistryError::TooLarge`]), and an add that would make the
    /// records file larger is refused ([`RegistryError::FileFull`]).
    pub fn max_file_bytes(mut self, max_file_bytes: u64) -> Self {
        self.max_file_bytes = max_file_bytes;
        self
    }

    /// The cap on records.
    pub fn records(&self) -> usize {
        self.max_records
    }

    /// The cap on one record's encoded size.
    pub fn record_bytes(&self) -> u64 {
        self.max_record_bytes
    }

    /// The cap on a file's size.
    pub fn file_bytes(&self) -> u64 {
        self.max_file_bytes
    }

    /// Checks `mutation` against the caps before it is applied to `state`,
    /// whose records file encodes to `file_bytes` bytes. Returns the
    /// encoded size of an added record, for [`file_bytes_after`].
    pub(crate) fn admit(
        &self,
        state: &RegistryState,
        mutation: &Mutation,
        file_bytes: u64,
    ) -> Result<Option<u64>, RegistryError> {
        let Mutation::Add(record) = mutation else {
            return Ok(None);
        };
        let bytes = encoded_len(record);
        let pod_name = || record.pod_name.clone();
        if bytes > self.max_record_bytes {
            return Err(RegistryError::RecordTooLarge {
                pod_name: pod_name(),
                bytes,
                limit: self.max_record_bytes,
            });
        }
        // Only an add that would insert can overflow; a duplicate or a
        // refused add changes nothing and is answered as usual.
        let inserts = !state.is_departed(record.pod_name.as_str(), record.incarnation.as_deref())
            && !state
                .records_named(record.pod_name.as_str())
                .any(|held| held.incarnation == record.incarnation);
        if inserts {
            if state.len() >= self.max_records {
                return Err(RegistryError::Full {
                    pod_name: pod_name(),
                    limit: self.max_records,
                });
            }
            let after = file_bytes + bytes + LINE_OVERHEAD;
            if after > self.max_file_bytes {
                return Err(RegistryError::FileFull {
                    pod_name: pod_name(),
                    bytes: after,
                    limit: self.max_file_bytes,
                });
            }
        }
        Ok(Some(bytes))
    }
}

/// What one element adds to the records file besides its own text: the
/// `,\n` (or the first element's `\n` plus the closing `\n`).
const LINE_OVERHEAD: u64 = 2;
/// The records file with no element: `[]\n`.
pub(crate) const EMPTY_FILE_BYTES: u64 = 3;

/// The size of a registry file holding elements of these encoded sizes,
/// as [`crate::file`] writes it.
pub(crate) fn file_bytes_of(element_sizes: impl Iterator<Item = u64>) -> u64 {
    EMPTY_FILE_BYTES + element_sizes.map(element_bytes).sum::<u64>()
}

/// What one element of `size` bytes adds to a registry file.
pub(crate) fn element_bytes(size: u64) -> u64 {
    size + LINE_OVERHEAD
}

/// The records file's size after `outcome`, given its size before and the
/// size of the added record (from [`RegistryLimits::admit`]).
pub(crate) fn file_bytes_after(before: u64, added: Option<u64>, outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Added => before + added.unwrap_or(0) + LINE_OVERHEAD,
        Outcome::Removed { records, .. } => records.iter().fold(before, |bytes, record| {
            bytes.saturating_sub(encoded_len(record) + LINE_OVERHEAD)
        }),
        _ => before,
    }
}

/// The length of `record`'s compact JSON (what `serde_json::to_vec`
/// gives), computed from its fields without encoding it: the caps are
/// checked on every add and removal, on the receive path, where a full
/// encoding would cost several times more. The unit test below pins it to
/// serde_json's output for arbitrary text, so a change of the record's
/// (or the scope rule's) serialized form fails that test rather than
/// skewing the file cap.
pub(crate) fn encoded_len(record: &Record) -> u64 {
    let mut len = r#"{"pod_name":"#.len() as u64
        + string_len(record.pod_name.as_str())
        + r#","socket_path":"#.len() as u64
        + string_len(&record.socket_path)
        + r#","scope_delegated":["#.len() as u64
        + r#"],"callback_address":"#.len() as u64
        + string_len(&record.callback_address)
        + "}".len() as u64;
    for (i, rule) in record.scope_delegated.iter().enumerate() {
        let permission = match rule.permission {
            Permission::Read => "read",
            Permission::Write => "write",
        };
        let recursive = if rule.recursive { "true" } else { "false" };
        len += u64::from(i > 0)
            + r#"{"target":"#.len() as u64
            + string_len(&rule.target)
            + r#","permission":""#.len() as u64
            + permission.len() as u64
            + r#"","recursive":"#.len() as u64
            + recursive.len() as u64
            + "}".len() as u64;
    }
    if let Some(incarnation) = &record.incarnation {
        len += r#","incarnation":"#.len() as u64 + string_len(incarnation);
    }
    len
}

/// The length of `tombstone`'s compact JSON, as [`encoded_len`].
pub(crate) fn tombstone_len(tombstone: &Tombstone) -> u64 {
    let mut len = r#"{"pod_name":"#.len() as u64 + string_len(tombstone.pod_name.as_str()) + 1;
    if let Some(incarnation) = &tombstone.incarnation {
        len += r#","incarnation":"#.len() as u64 + string_len(incarnation);
    }
    len
}

/// The length of `text` as a JSON string the way serde_json writes it:
/// quoted; `"` and `\` and the short control escapes (`\b \t \n \f \r`)
/// take two bytes, other control characters six (`\u00XX`), every other
/// byte one (non-ASCII text is written as UTF-8).
fn string_len(text: &str) -> u64 {
    let escapes: u64 = text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | 0x08 | b'\t' | b'\n' | 0x0c | b'\r' => 1,
            0x00..=0x1f => 5,
            _ => 0,
        })
        .sum();
    2 + text.len() as u64 + escapes
}

#[cfg(test)]
mod tests {
    use pod_protocol::{PodName, ScopeRule};
    use proptest::prelude::*;

    use super::*;

    fn rule() -> impl Strategy<Value = ScopeRule> {
        (any::<String>(), any::<bool>(), any::<bool>()).prop_map(|(target, write, recursive)| {
            let mut rule = if write {
                ScopeRule::write(target)
            } else {
                ScopeRule::read(target)
            };
            rule.recursive = recursive;
            rule
        })
    }

    proptest! {
        #[test]
        fn encoded_len_is_the_length_serde_json_writes(
            name in "[A-Za-z0-9][A-Za-z0-9._-]{0,40}",
            socket_path in any::<String>(),
            callback_address in any::<String>(),
            incarnation in proptest::option::of(any::<String>()),
            scope_delegated in prop::collection::vec(rule(), 0..4),
        ) {
            let record = Record {
                pod_name: PodName::new(name).unwrap(),
                socket_path,
                scope_delegated,
                callback_address,
                incarnation,
            };
            let encoded = serde_json::to_vec(&record).unwrap();
            prop_assert_eq!(encoded_len(&record), encoded.len() as u64);
        }

        #[test]
        fn tombstone_len_is_the_length_serde_json_writes(
            name in "[A-Za-z0-9][A-Za-z0-9._-]{0,40}",
            incarnation in proptest::option::of(any::<String>()),
        ) {
            let tombstone = Tombstone { pod_name: PodName::new(name).unwrap(), incarnation };
            let encoded = serde_json::to_vec(&tombstone).unwrap();
            prop_assert_eq!(tombstone_len(&tombstone), encoded.len() as u64);
        }

        #[test]
        fn string_len_counts_every_escape(text in "[\\x00-\\x7f\"\\\\\u{80}-\u{10ffff}]{0,20}") {
            let encoded = serde_json::to_string(&text).unwrap();
            prop_assert_eq!(string_len(&text), encoded.len() as u64);
        }
    }
}
