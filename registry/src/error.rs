//! [`RegistryError`]: everything that can go wrong in this crate.

use std::io;
use std::path::PathBuf;

/// An error from opening or writing a registry.
///
/// A refused add ([`crate::Outcome::Departed`]) and the removal of a missing
/// Pod are outcomes, not errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A registry file exists but is not what this crate writes. The file
    /// was left untouched.
    #[error(
        "{path}: cannot parse registry file at line {line}, column {column}: {message}; \
         the file was left untouched: repair or move it away, then open again"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the parse error (0 if the file could not be
        /// decoded at all).
        line: usize,
        /// The 1-based column of the parse error.
        column: usize,
        /// What the parser expected or found.
        message: String,
    },
    /// Reading, writing or syncing a file failed. After a failed write the
    /// mutation stays applied in memory and is written by the next write
    /// (see the crate documentation's failure policy).
    #[error("{path}: {source}; check the state directory's permissions and free space")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The registry's committer thread is gone (it could not be started or
    /// it stopped); nothing can be made durable any more. Open the registry
    /// again.
    #[error("the registry's committer thread is not running; open the registry again")]
    Closed,
    /// A write failure injected by a test (see
    /// [`crate::testing::MemoryRegistry::fail_next_writes`]).
    #[error("injected write failure (testing)")]
    Injected,
}

impl RegistryError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        RegistryError::Io {
            path: path.into(),
            source,
        }
    }
}

/// A copy of `error` for one more waiter of a failed write (`io::Error` is
/// not `Clone`): keeps the OS error code, or else the kind and message.
pub(crate) fn copy_io_error(error: &io::Error) -> io::Error {
    match error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(error.kind(), error.to_string()),
    }
}
