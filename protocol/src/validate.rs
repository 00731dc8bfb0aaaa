//! Content validation: names and paths, checked after decoding.
//!
//! Decoding answers "is this a well-formed line?"; validation answers "is
//! what it says acceptable?". Keeping the steps apart lets a receiver count
//! the two failures separately and log the right one.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::address::validate_socket;
use crate::{Method, PodEvent, ScopeRule};

/// Longest accepted pod name, in bytes.
pub const MAX_POD_NAME_LEN: usize = 128;

/// Longest accepted socket or scope path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Why a name, path or event was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// The pod name is empty, too long, or uses a character outside
    /// `[A-Za-z0-9._-]` (or starts with `.`, `_` or `-`).
    #[error("invalid pod name {name:?}: names match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$")]
    PodName {
        /// The rejected name.
        name: String,
    },
    /// The path is not absolute, has `.`/`..` or empty components, a NUL
    /// byte, or is too long.
    #[error("invalid path {path:?} in `{field}`: {reason}")]
    Path {
        /// The field that held the path.
        field: &'static str,
        /// The rejected path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A socket field that names a `unix:` or `tls://` address is not a
    /// valid [`Address`](crate::Address).
    #[error("invalid address {address:?} in `{field}`: {source}")]
    Address {
        /// The field that held the address.
        field: &'static str,
        /// The rejected address.
        address: String,
        /// What is wrong with it.
        source: crate::AddressError,
    },
    /// A scope with no rules.
    #[error("empty scope: at least one rule is required")]
    EmptyScope,
}

/// A validated pod name: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`.
///
/// ```
/// use pod_protocol::PodName;
/// assert!(PodName::new("worker-1").is_ok());
/// assert!(PodName::new("../etc").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodName(String);

impl PodName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        if is_valid_pod_name(&name) {
            Ok(PodName(name))
        } else {
            Err(ValidationError::PodName { name })
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

fn is_valid_pod_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_POD_NAME_LEN
                && first.is_ascii_alphanumeric()
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        None => false,
    }
}

impl TryFrom<String> for PodName {
    type Error = ValidationError;
    fn try_from(name: String) -> Result<Self, Self::Error> {
        PodName::new(name)
    }
}

impl From<PodName> for String {
    fn from(name: PodName) -> Self {
        name.0
    }
}

impl AsRef<str> for PodName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for PodName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for PodName {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PodName::new(s)
    }
}

/// Checks that `path` is absolute and lexically normal: it starts with `/`,
/// has no `.`, `..` or empty components (`//`), no trailing `/` (except the
/// root itself), no NUL byte, and is at most [`MAX_PATH_LEN`] bytes.
///
/// Lexical normality is what makes prefix checks on paths sound: `/a/../b`
/// is rejected here, so it can never pass as "inside `/a`".
///
/// `field` names the field being checked, for the error message.
///
/// ```
/// use pod_protocol::validate_path;
/// assert!(validate_path("scope", "/srv/repo").is_ok());
/// assert!(validate_path("scope", "/srv/../etc").is_err());
/// assert!(validate_path("scope", "relative").is_err());
/// ```
pub fn validate_path<'a>(field: &'static str, path: &'a str) -> Result<&'a Path, ValidationError> {
    let fail = |reason| ValidationError::Path {
        field,
        path: path.to_owned(),
        reason,
    };
    if !path.starts_with('/') {
        return Err(fail("must be absolute"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(fail("longer than 4096 bytes"));
    }
    if path.len() == 1 {
        return Ok(Path::new(path));
    }
    // One pass over the components (this runs for every path of every
    // event received); the reasons keep their order of precedence below.
    // The raw text, not `Path::components`, which silently drops interior
    // `.` components.
    let (mut nul, mut empty, mut dot_dot, mut dot) = (false, false, false, false);
    for component in path[1..].split('/') {
        match component.as_bytes() {
            b"" => empty = true,
            b".." => dot_dot = true,
            b"." => dot = true,
            bytes => nul |= bytes.contains(&0),
        }
    }
    if nul {
        return Err(fail("contains a NUL byte"));
    }
    if path.ends_with('/') {
        return Err(fail("has a trailing `/`"));
    }
    if empty {
        return Err(fail("has an empty component (`//`)"));
    }
    if dot_dot {
        return Err(fail("has a `..` component"));
    }
    if dot {
        return Err(fail("has a `.` component"));
    }
    Ok(Path::new(path))
}

/// Validates every rule of a scope: at least one rule, each target a valid
/// path.
pub fn validate_scope(scope: &[ScopeRule]) -> Result<(), ValidationError> {
    if scope.is_empty() {
        return Err(ValidationError::EmptyScope);
    }
    for rule in scope {
        validate_path("scope.target", &rule.target)?;
    }
    Ok(())
}

impl PodEvent {
    /// Checks names and paths: every pod name is a valid [`PodName`], every
    /// scope path passes [`validate_path`], a socket field is such a path
    /// or a `unix:` / `tls://` [`Address`](crate::Address), a
    /// sub-delegated scope is non-empty.
    /// Message text and incarnation ids are free-form (the renderer escapes
    /// them).
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            PodEvent::TurnEnded { pod_name, .. }
            | PodEvent::Errored { pod_name, .. }
            | PodEvent::ShutDown { pod_name, .. } => check_name(pod_name),
            PodEvent::ScopeSubDelegated {
                parent_pod,
                sub_pod,
                sub_socket,
                scope,
                spawner_socket,
                ..
            } => {
                check_name(parent_pod)?;
                check_name(sub_pod)?;
                validate_socket("sub_socket", sub_socket)?;
                if let Some(socket) = spawner_socket {
                    validate_socket("spawner_socket", socket)?;
                }
                validate_scope(scope)
            }
        }
    }
}

impl Method {
    /// Validates the content of a [`Method::PodEvent`] or a
    /// [`Method::Reparent`]; other methods carry nothing this crate can
    /// check and always pass.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Method::PodEvent(event) => event.validate(),
            Method::Reparent(notice) => notice.validate(),
            _ => Ok(()),
        }
    }
}

impl crate::Reparent {
    /// Checks the names and the address: both pod names valid, the
    /// socket an absolute, normal path or a valid address.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_name(&self.pod_name)?;
        check_name(&self.parent_pod)?;
        validate_socket("parent_socket", &self.parent_socket)
    }
}

fn check_name(name: &str) -> Result<(), ValidationError> {
    if is_valid_pod_name(name) {
        Ok(())
    } else {
        Err(ValidationError::PodName {
            name: name.to_owned(),
        })
    }
}
