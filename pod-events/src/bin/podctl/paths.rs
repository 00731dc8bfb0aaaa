//! Default paths and validation of the paths and names given on the
//! command line.
//!
//! Defaults are used only when a flag is omitted. They live in the runtime
//! directory that `pod_scope_lock::default_table_path` derives from the
//! environment (`$PODS_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/pods`, else
//! `/tmp/pods-<uid>`), which is created with mode 0700 and must be private
//! to this user before anything is put in it.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pod_protocol::{validate_path, validate_socket, Address, PodName, ScopeRule};

/// The runtime directory, created (mode 0700) if missing, and checked to
/// be a directory owned by this user that nobody else can enter.
pub(crate) fn runtime_dir() -> Result<PathBuf> {
    let dir = pod_scope_lock::default_table_path()
        .parent()
        .map(Path::to_path_buf)
        .context("the default scope table path has no directory")?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create the runtime directory {}", dir.display()))?;
    let meta = std::fs::symlink_metadata(&dir)
        .with_context(|| format!("cannot inspect the runtime directory {}", dir.display()))?;
    let uid = rustix::process::getuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        bail!(
            "the runtime directory {} is not a private directory of uid {uid} (owner {}, mode {:o}): \
             fix it, or set PODS_RUNTIME_DIR, or pass every path flag",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    Ok(dir)
}

/// `flag`, or the scope table in the runtime directory.
pub(crate) fn scope_lock(flag: Option<PathBuf>) -> Result<PathBuf> {
    match flag {
        Some(path) => Ok(path),
        None => Ok(runtime_dir()?.join("scope.lock")),
    }
}

/// `flag`, or pod `name`'s directory in the runtime directory.
pub(crate) fn state_dir(flag: Option<PathBuf>, name: &PodName) -> Result<PathBuf> {
    match flag {
        Some(path) => Ok(path),
        None => Ok(runtime_dir()?.join(name.as_str())),
    }
}

/// `flag`, or pod `name`'s socket in the runtime directory; validated
/// either way (absolute and lexically normal, as on the wire).
pub(crate) fn socket(flag: Option<String>, name: &PodName) -> Result<String> {
    let socket = match flag {
        Some(socket) => socket,
        None => path_string(&runtime_dir()?.join(name.as_str()).join("sock"))?,
    };
    checked("--socket", socket)
}

/// `--parent-socket`, validated when given.
pub(crate) fn parent_socket(flag: Option<String>) -> Result<Option<String>> {
    flag.map(|socket| checked("--parent-socket", socket))
        .transpose()
}

/// `--parent-socket` of `listen`, validated when given: a Unix socket
/// path, `unix:` + path, or `tls://host:port`.
pub(crate) fn parent_address(flag: Option<String>) -> Result<Option<String>> {
    flag.map(|socket| address("--parent-socket", socket))
        .transpose()
}

/// `path`, if it is absolute and lexically normal (no `.` or `..`).
pub(crate) fn checked(flag: &'static str, path: String) -> Result<String> {
    validate_path(flag, &path)?;
    Ok(path)
}

/// An address a command sends to (`send --socket`, `--parent-socket`): a
/// Unix socket path, `unix:` + path, or `tls://host:port`.
pub(crate) fn address(flag: &'static str, address: String) -> Result<String> {
    validate_socket(flag, &address)?;
    Ok(address)
}

/// `--listen tls://HOST:PORT`: the `HOST:PORT` to bind (an IP address, or
/// a name that resolves to one of this host's).
pub(crate) fn listen_address(address: &str) -> Result<String> {
    match address.parse::<Address>() {
        Ok(Address::Tls { host, port }) => Ok(format!("{host}:{port}")),
        Ok(_) => bail!(
            "--listen {address:?} is not a tls:// address: give tls://HOST:PORT \
             (a Unix socket is --socket)"
        ),
        Err(err) => {
            Err(err).with_context(|| format!("--listen {address:?} is not a tls:// address"))
        }
    }
}

/// Refuses a Unix address whose path exists and is not a socket (a
/// regular file, a directory): sending there could only fail, and the
/// transport would call it a stale socket. A missing path, or a `tls://`
/// address, is left to the send.
pub(crate) fn refuse_non_socket(flag: &'static str, address: &str) -> Result<()> {
    let path = address.strip_prefix("unix:").unwrap_or(address);
    if !path.starts_with('/') {
        return Ok(());
    }
    // Follows a link on purpose: what matters is what a connect reaches.
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if meta.file_type().is_socket() {
        return Ok(());
    }
    let what = if meta.is_dir() {
        "a directory"
    } else if meta.is_file() {
        "a regular file"
    } else {
        "not a socket"
    };
    bail!(
        "{flag} {path} is {what}, not a socket: check the path (a pod's socket is \
         RUNTIME_DIR/NAME/sock, or what its `podctl listen --socket` says)"
    )
}

/// The rules of `--write PATH` and `--read PATH` flags (each recursive),
/// writes first. The library validates the paths.
pub(crate) fn scope_rules(writes: Vec<String>, reads: Vec<String>) -> Vec<ScopeRule> {
    writes
        .into_iter()
        .map(ScopeRule::write)
        .chain(reads.into_iter().map(ScopeRule::read))
        .collect()
}

/// A validated pod name.
pub(crate) fn pod_name(name: &str) -> Result<PodName> {
    Ok(PodName::new(name)?)
}

fn path_string(path: &Path) -> Result<String> {
    match path.to_str() {
        Some(text) => Ok(text.to_owned()),
        None => bail!(
            "the default path {} is not UTF-8: pass the path flag",
            path.display()
        ),
    }
}
