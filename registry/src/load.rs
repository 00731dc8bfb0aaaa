//! Loading the registry files: the records file with its
//! [`InvalidRecord`]s kept verbatim, the departed file, and the read-only
//! [`RegistrySnapshot`].
//!
//! Existing Pods write `spawned_pods.json` too, and their records may hold
//! names or paths this crate refuses (a name with a space, a relative
//! socket path). Refusing the whole file for one such record would stop the
//! parent from managing every other Pod, and dropping the record would
//! destroy another tool's data. So each array element is decoded on its
//! own: an element that is not a valid [`Record`] is kept as its exact JSON
//! text, reported, never matched, removed or acted on, and written back
//! unchanged (after the valid records) by every later write. Only a file
//! that is not a JSON array at all is [`RegistryError::Corrupt`].

use std::path::{Path, PathBuf};

use pod_protocol::validate_path;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::fsio::read_capped;
use crate::{
    Record, RegistryError, RegistryLimits, RegistryState, Tombstone, DEFAULT_DEPARTED_CAPACITY,
    DEPARTED_FILE, RECORDS_FILE,
};

/// An element of `spawned_pods.json` that is not a valid [`Record`], kept
/// byte for byte.
///
/// It is never matched by a mutation, never removed and never acted on
/// (it is not in the [`RegistryState`]); every write of the records file
/// writes it back, unchanged, after the valid records. See
/// [`crate::FileRegistry::invalid_records`] and
/// [`RegistrySnapshot::invalid_records`].
///
/// Serializes as `{"index": .., "reason": "..", "raw": <the element>}`.
#[derive(Debug, Clone)]
pub struct InvalidRecord {
    index: usize,
    raw: Box<RawValue>,
    reason: String,
}

impl InvalidRecord {
    /// The element's 0-based position in the file as it was loaded.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The element's exact JSON text, as it is in the file.
    pub fn raw(&self) -> &str {
        self.raw.get()
    }

    /// Why it is not a valid record, e.g. ``invalid pod name `worker 1` ``.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The element's `pod_name` when it has a string one (valid or not),
    /// for display.
    pub fn pod_name(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Named {
            pod_name: String,
        }
        serde_json::from_str::<Named>(self.raw.get())
            .ok()
            .map(|n| n.pod_name)
    }
}

impl PartialEq for InvalidRecord {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index
            && self.raw.get() == other.raw.get()
            && self.reason == other.reason
    }
}

impl Eq for InvalidRecord {}

impl Serialize for InvalidRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            index: usize,
            reason: &'a str,
            raw: &'a RawValue,
        }
        Shown {
            index: self.index,
            reason: &self.reason,
            raw: &self.raw,
        }
        .serialize(serializer)
    }
}

/// The records file as loaded: the valid records in file order and the
/// invalid ones.
#[derive(Debug, Default)]
pub(crate) struct LoadedRecords {
    pub(crate) records: Vec<Record>,
    pub(crate) invalid: Vec<InvalidRecord>,
}

/// Parses the records file's `bytes`.
pub(crate) fn parse_records(path: &Path, bytes: &[u8]) -> Result<LoadedRecords, RegistryError> {
    // Borrowed from `bytes`: only the invalid elements are copied out.
    let elements: Vec<&RawValue> = serde_json::from_slice(bytes).map_err(|e| corrupt(path, &e))?;
    let mut loaded = LoadedRecords::default();
    for (index, raw) in elements.into_iter().enumerate() {
        match decode_record(raw.get()) {
            Ok(record) => loaded.records.push(record),
            Err(reason) => {
                let raw = raw.to_owned();
                loaded.invalid.push(InvalidRecord { index, raw, reason });
            }
        }
    }
    Ok(loaded)
}

/// Decodes and validates one element: a [`Record`] whose name is a valid
/// pod name (checked by [`pod_protocol::PodName`]'s decoding), whose
/// socket is a valid address, whose callback address is empty or valid,
/// and whose scope targets are absolute, lexically normal paths.
fn decode_record(raw: &str) -> Result<Record, String> {
    let record: Record = serde_json::from_str(raw).map_err(|e| without_position(&e))?;
    check_address("socket_path", &record.socket_path)?;
    if !record.callback_address.is_empty() {
        check_address("callback_address", &record.callback_address)?;
    }
    for rule in &record.scope_delegated {
        validate_path("scope_delegated.target", &rule.target).map_err(|e| e.to_string())?;
    }
    Ok(record)
}

/// An address as section 13 of the design has them: an absolute, normal
/// path, optionally `unix:`-prefixed, or `tls://host:port` (checked here
/// only for a non-empty authority without whitespace or control
/// characters; the transport resolves it).
fn check_address(field: &'static str, address: &str) -> Result<(), String> {
    if let Some(authority) = address.strip_prefix("tls://") {
        if authority.is_empty()
            || authority
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(format!(
                "{field}: `{}` is not a valid tls:// address",
                address.escape_debug()
            ));
        }
        return Ok(());
    }
    let path = address.strip_prefix("unix:").unwrap_or(address);
    validate_path(field, path)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Parses a JSON array of `T` (the departed file).
pub(crate) fn parse_array<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<T>, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(path, &e))
}

/// serde_json's message without its trailing position (reported apart, or
/// meaningless inside one element).
fn without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    message.strip_suffix(&suffix).unwrap_or(&message).to_owned()
}

fn corrupt(path: &Path, error: &serde_json::Error) -> RegistryError {
    RegistryError::Corrupt {
        path: path.to_path_buf(),
        line: error.line(),
        column: error.column(),
        message: without_position(error),
    }
}

/// Both files of a state directory, read and parsed; `None` for a missing
/// one. Parses both before the caller creates either, so an error leaves
/// the directory as it was.
pub(crate) struct LoadedFiles {
    pub(crate) records: Option<LoadedRecords>,
    pub(crate) departed: Option<Vec<Tombstone>>,
}

pub(crate) fn load_files(
    records_path: &Path,
    departed_path: &Path,
    limits: &RegistryLimits,
) -> Result<LoadedFiles, RegistryError> {
    let cap = limits.file_bytes();
    let records = read_capped(records_path, cap)?
        .map(|bytes| parse_records(records_path, &bytes))
        .transpose()?;
    let departed = read_capped(departed_path, cap)?
        .map(|bytes| parse_array(departed_path, &bytes))
        .transpose()?;
    Ok(LoadedFiles { records, departed })
}

/// A read-only view of a state directory's registry, loaded once: takes no
/// lock, creates and writes nothing, and works while a
/// [`crate::FileRegistry`] (in any process) owns the directory, since each
/// file is replaced atomically.
///
/// A missing directory or file reads as empty. A file that is not a JSON
/// array is [`RegistryError::Corrupt`]; a file that is not a regular file
/// or is over the size cap is refused as [`crate::FileRegistry::open`]
/// refuses it. The directory's owner and mode are not checked: reading
/// another user's registry (as root, say) is allowed.
///
/// ```
/// use pod_registry::RegistrySnapshot;
///
/// let dir = tempfile::tempdir().unwrap();
/// let missing = dir.path().join("no-such-pod");
/// let snapshot = RegistrySnapshot::load(&missing).unwrap();
/// assert!(snapshot.state().is_empty());
/// assert!(!missing.exists()); // nothing was created
/// ```
#[derive(Debug, Clone)]
pub struct RegistrySnapshot {
    dir: PathBuf,
    state: RegistryState,
    invalid: Vec<InvalidRecord>,
}

impl RegistrySnapshot {
    /// Loads the registry of `state_dir` with the default caps and
    /// departed capacity.
    ///
    /// # Errors
    ///
    /// [`RegistryError::Corrupt`], [`RegistryError::NotRegularFile`],
    /// [`RegistryError::TooLarge`], or [`RegistryError::Io`] when a file
    /// exists but cannot be read.
    pub fn load(state_dir: impl AsRef<Path>) -> Result<Self, RegistryError> {
        RegistrySnapshot::load_with(
            state_dir,
            &RegistryLimits::default(),
            DEFAULT_DEPARTED_CAPACITY,
        )
    }

    /// Loads the registry of `state_dir` under `limits`, keeping at most
    /// `departed_capacity` departures (the newest).
    ///
    /// # Errors
    ///
    /// As [`RegistrySnapshot::load`].
    pub fn load_with(
        state_dir: impl AsRef<Path>,
        limits: &RegistryLimits,
        departed_capacity: usize,
    ) -> Result<Self, RegistryError> {
        let dir = state_dir.as_ref().to_path_buf();
        let files = load_files(&dir.join(RECORDS_FILE), &dir.join(DEPARTED_FILE), limits)?;
        let records = files.records.unwrap_or_default();
        let (state, _) = RegistryState::from_parts(
            departed_capacity,
            limits.file_bytes(),
            records.records,
            files.departed.unwrap_or_default(),
        );
        Ok(RegistrySnapshot {
            dir,
            state,
            invalid: records.invalid,
        })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The valid records and the departed set, as the owner would load
    /// them (records a tombstone matches are left out).
    pub fn state(&self) -> &RegistryState {
        &self.state
    }

    /// The records file's elements that are not valid records.
    pub fn invalid_records(&self) -> &[InvalidRecord] {
        &self.invalid
    }
}
