//! The handoff variables (DESIGN section 11): how a spawner tells the
//! child it starts who it is, where to report and where the scope table
//! is, in the style of systemd's `NOTIFY_SOCKET` / `LISTEN_FDS`.
//!
//! Parsing is a pure function of a variable lookup
//! ([`Handoff::from_lookup`]), so every bad value is unit-tested without
//! touching the process environment; only [`Handoff::from_env`] reads it.
//!
//! An address may be `tls://host:port` (DESIGN section 13); the child then
//! needs its TLS identity, which the spawner hands over as three file
//! paths ([`TlsFiles`]: `POD_TLS_CERT`, `POD_TLS_KEY`, `POD_TLS_CA`).
//! Parsing only checks the paths; loading the files is the sender's
//! business (`AddressSender::for_handoff`, feature `tls`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use pod_protocol::{validate_path, Address, PodName};

/// The child's pod name.
pub const POD_NAME: &str = "POD_NAME";
/// The child's incarnation id, minted by the spawner's reservation.
pub const POD_INCARNATION: &str = "POD_INCARNATION";
/// The parent's pod name.
pub const POD_PARENT: &str = "POD_PARENT";
/// The address the child reports to.
pub const POD_PARENT_SOCKET: &str = "POD_PARENT_SOCKET";
/// The address the child itself listens on.
pub const POD_SOCKET: &str = "POD_SOCKET";
/// The scope table file.
pub const POD_SCOPE_LOCK: &str = "POD_SCOPE_LOCK";
/// The scope table as a networked store (`etcd://HOST:PORT[,...]/PREFIX`),
/// set instead of [`POD_SCOPE_LOCK`].
pub const POD_SCOPE_STORE: &str = "POD_SCOPE_STORE";

/// This pod's certificate chain (PEM, leaf first), naming it as
/// `pod://<name>`: set with [`POD_TLS_KEY`] and [`POD_TLS_CA`] when an
/// address is `tls://`.
pub const POD_TLS_CERT: &str = "POD_TLS_CERT";
/// The private key of [`POD_TLS_CERT`] (PEM).
pub const POD_TLS_KEY: &str = "POD_TLS_KEY";
/// The CA certificates (PEM) a `tls://` peer's certificate must be signed
/// by.
pub const POD_TLS_CA: &str = "POD_TLS_CA";

/// The TLS variables, all set or none.
pub const TLS_VARIABLES: [&str; 3] = [POD_TLS_CERT, POD_TLS_KEY, POD_TLS_CA];

/// The longest `POD_SCOPE_STORE` accepted: a few dozen endpoints.
const MAX_STORE_LEN: usize = 4096;

/// Every variable a spawner sets, in the order they are checked
/// ([`POD_SCOPE_STORE`] stands for [`POD_SCOPE_LOCK`] when the table is
/// on a networked store). The [`TLS_VARIABLES`] come after them, set only
/// when the child has a TLS identity; [`ALL_VARIABLES`] lists them all.
pub const HANDOFF_VARIABLES: [&str; 6] = [
    POD_NAME,
    POD_INCARNATION,
    POD_PARENT,
    POD_PARENT_SOCKET,
    POD_SOCKET,
    POD_SCOPE_LOCK,
];

/// Every variable a handoff may set: the [`HANDOFF_VARIABLES`],
/// [`POD_SCOPE_STORE`] and the [`TLS_VARIABLES`]. Remove these from a
/// command's environment to start a process that is no pod, whatever this
/// process inherited.
pub const ALL_VARIABLES: [&str; 10] = [
    POD_NAME,
    POD_INCARNATION,
    POD_PARENT,
    POD_PARENT_SOCKET,
    POD_SOCKET,
    POD_SCOPE_LOCK,
    POD_SCOPE_STORE,
    POD_TLS_CERT,
    POD_TLS_KEY,
    POD_TLS_CA,
];

/// The longest incarnation id accepted: minted ids are far shorter; the
/// bound keeps a hostile environment from making us carry megabytes into
/// every event.
const MAX_INCARNATION_LEN: usize = 128;

/// Where the scope table is: the one of `POD_SCOPE_LOCK` and
/// `POD_SCOPE_STORE` that is set.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableLocation {
    /// The table file (`POD_SCOPE_LOCK`), an absolute path.
    File(PathBuf),
    /// The table on etcd (`POD_SCOPE_STORE`): its
    /// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX` address as text, checked
    /// for its scheme and characters here and parsed in full by the store
    /// that opens it (pod-scope-lock's `EtcdAddress`, feature `etcd`).
    Store(String),
}

impl TableLocation {
    /// The variable that carries it.
    pub fn variable(&self) -> &'static str {
        match self {
            TableLocation::File(_) => POD_SCOPE_LOCK,
            TableLocation::Store(_) => POD_SCOPE_STORE,
        }
    }

    /// The variable's value.
    pub fn value(&self) -> String {
        match self {
            TableLocation::File(path) => path.display().to_string(),
            TableLocation::Store(address) => address.clone(),
        }
    }

    /// The file, or the refusal of a networked table by `what`, which
    /// opens files only.
    pub(crate) fn file_only(&self, what: &str) -> Result<&Path, HandoffError> {
        match self {
            TableLocation::File(path) => Ok(path),
            TableLocation::Store(address) => Err(HandoffError::Invalid {
                variable: POD_SCOPE_STORE,
                value: address.clone(),
                reason: format!(
                    "{what} opens scope table files only: on an etcd table a child adopts \
                     with PodContext::from_env_etcd (pod-events, feature `etcd`)"
                ),
            }),
        }
    }

    /// The file, if the table is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            TableLocation::File(path) => Some(path),
            TableLocation::Store(_) => None,
        }
    }
}

impl From<PathBuf> for TableLocation {
    fn from(path: PathBuf) -> Self {
        TableLocation::File(path)
    }
}

/// The child's TLS identity, as file paths (`POD_TLS_CERT`,
/// `POD_TLS_KEY`, `POD_TLS_CA`): each absolute and lexically normal.
/// Parsing the handoff does not read them; the sender that uses them does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// This pod's certificate chain (PEM, leaf first), naming it with the
    /// URI `pod://<name>`.
    pub cert: PathBuf,
    /// The private key of `cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates (PEM) a peer's certificate must be signed by.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The three files. [`Handoff::from_lookup`] checks the paths a child
    /// receives; a spawner should give absolute, lexically normal ones.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>, ca: impl Into<PathBuf>) -> Self {
        TlsFiles {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }
    }

    /// The variables and their paths, in [`TLS_VARIABLES`] order.
    fn entries(&self) -> [(&'static str, &Path); 3] {
        [
            (POD_TLS_CERT, self.cert.as_path()),
            (POD_TLS_KEY, self.key.as_path()),
            (POD_TLS_CA, self.ca.as_path()),
        ]
    }
}

/// What a spawner hands its child: the values of the handoff variables,
/// each validated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Handoff {
    /// The child's pod name (`POD_NAME`).
    pub name: PodName,
    /// Its incarnation id (`POD_INCARNATION`).
    pub incarnation: String,
    /// The parent's pod name (`POD_PARENT`).
    pub parent: PodName,
    /// The address to report to (`POD_PARENT_SOCKET`): a Unix socket
    /// path (without `unix:`), or `tls://host:port`.
    pub parent_socket: String,
    /// The address the child listens on (`POD_SOCKET`), in the same forms.
    pub socket: String,
    /// The scope table (`POD_SCOPE_LOCK` or `POD_SCOPE_STORE`).
    pub scope: TableLocation,
    /// The child's TLS identity (`POD_TLS_CERT`, `POD_TLS_KEY`,
    /// `POD_TLS_CA`): always present when an address is `tls://`, and
    /// possibly without one (a pod may listen over TLS, or send to a
    /// `tls://` child, while reporting to a Unix socket).
    pub tls: Option<TlsFiles>,
}

/// Why the handoff variables cannot be used. Each names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    /// A required variable is not set.
    #[error("{variable} is not set: this process was not started as a pod; start it through a Spawner or `podctl run`, which set the handoff variables")]
    Missing {
        /// The variable.
        variable: &'static str,
    },
    /// A variable is not valid UTF-8.
    #[error("{variable} is not valid UTF-8: the spawner must set it to text")]
    NotUnicode {
        /// The variable.
        variable: &'static str,
    },
    /// A variable of a set that goes together is missing while another
    /// of the set is given: the TLS files are all three or none.
    #[error("{variable} is not set, but {given} is: the TLS files go together; a spawner sets all of POD_TLS_CERT, POD_TLS_KEY and POD_TLS_CA, or none")]
    Incomplete {
        /// The missing variable.
        variable: &'static str,
        /// A variable of the set that is set.
        given: &'static str,
    },
    /// A variable's value is unacceptable.
    #[error("{variable}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable.
        variable: &'static str,
        /// The value found (as text).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Handoff {
    /// The table file, or the refusal of a handoff to a networked table
    /// by a constructor that opens files only (`what` names it).
    pub(crate) fn table_file(&self, what: &str) -> Result<&Path, HandoffError> {
        self.scope.file_only(what)
    }

    /// Reads the handoff variables from this process's environment.
    ///
    /// Only binaries and examples should call this (DESIGN section 2: no
    /// library layer finds its collaborators through the environment).
    pub fn from_env() -> Result<Handoff, HandoffError> {
        Handoff::from_lookup(|name| std::env::var_os(name))
    }

    /// Whether this process looks like it was started with handoff
    /// variables (`POD_INCARNATION` is set), so a program that also runs
    /// on its own can decide which way to start.
    pub fn present_in_env() -> bool {
        std::env::var_os(POD_INCARNATION).is_some()
    }

    /// Reads the handoff variables through `lookup` (a variable's value,
    /// or `None` when unset), validating each: names as pod names, sockets
    /// as addresses (an absolute lexically normal Unix socket path, bare or
    /// with `unix:`, or `tls://host:port`), the scope table as an absolute
    /// path (`POD_SCOPE_LOCK`) or an `etcd://` address (`POD_SCOPE_STORE`;
    /// exactly one of the two is set), the TLS files as absolute paths, all
    /// three or none; a `tls://` address without them is refused, naming
    /// its variable. The first problem found is the error.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Handoff, HandoffError> {
        let text = |variable: &'static str| -> Result<String, HandoffError> {
            let value = lookup(variable).ok_or(HandoffError::Missing { variable })?;
            value
                .into_string()
                .map_err(|_| HandoffError::NotUnicode { variable })
        };
        let invalid = |variable, value: &str, reason: String| HandoffError::Invalid {
            variable,
            value: value.to_owned(),
            reason,
        };
        let name = |variable| -> Result<PodName, HandoffError> {
            let value = text(variable)?;
            PodName::new(value.as_str()).map_err(|e| invalid(variable, &value, e.to_string()))
        };
        // Kept as the address's canonical text: a Unix path without
        // `unix:`, or `tls://host:port`.
        let socket = |variable| -> Result<(String, bool), HandoffError> {
            let value = text(variable)?;
            match value.parse::<Address>() {
                Ok(Address::Unix(path)) => Ok((path, false)),
                Ok(address) => Ok((address.to_string(), true)),
                Err(e) => Err(invalid(variable, &value, e.to_string())),
            }
        };
        let path = |variable| -> Result<PathBuf, HandoffError> {
            let value = text(variable)?;
            validate_path(variable, &value)
                .map_err(|e| invalid(variable, &value, e.to_string()))?;
            Ok(PathBuf::from(value))
        };

        let name_value = name(POD_NAME)?;
        let incarnation = text(POD_INCARNATION)?;
        if incarnation.is_empty()
            || incarnation.len() > MAX_INCARNATION_LEN
            || !incarnation
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                POD_INCARNATION,
                &incarnation,
                format!("an incarnation id is 1 to {MAX_INCARNATION_LEN} ASCII letters, digits, `-` or `_`, as the spawner's reservation minted it"),
            ));
        }
        let parent = name(POD_PARENT)?;
        if parent == name_value {
            return Err(invalid(
                POD_PARENT,
                parent.as_str(),
                format!("a pod cannot be its own parent ({POD_NAME} has the same value)"),
            ));
        }
        let (parent_socket, parent_tls) = socket(POD_PARENT_SOCKET)?;
        let (own_socket, own_tls) = socket(POD_SOCKET)?;
        if own_socket == parent_socket {
            return Err(invalid(
                POD_SOCKET,
                &own_socket,
                format!("it is also {POD_PARENT_SOCKET}: a pod listens on its own socket"),
            ));
        }
        let scope = match (lookup(POD_SCOPE_LOCK), lookup(POD_SCOPE_STORE)) {
            (Some(_), Some(store)) => {
                return Err(invalid(
                    POD_SCOPE_STORE,
                    &store.to_string_lossy(),
                    format!("{POD_SCOPE_LOCK} is set too: a spawner sets exactly one of them"),
                ))
            }
            (None, Some(_)) => {
                let value = text(POD_SCOPE_STORE)?;
                check_store(&value).map_err(|reason| invalid(POD_SCOPE_STORE, &value, reason))?;
                TableLocation::Store(value)
            }
            _ => TableLocation::File(path(POD_SCOPE_LOCK)?),
        };
        let tls = match TLS_VARIABLES.iter().find(|v| lookup(v).is_some()) {
            None => None,
            Some(&given) => {
                let part = |variable| match lookup(variable) {
                    None => Err(HandoffError::Incomplete { variable, given }),
                    Some(_) => path(variable),
                };
                Some(TlsFiles {
                    cert: part(POD_TLS_CERT)?,
                    key: part(POD_TLS_KEY)?,
                    ca: part(POD_TLS_CA)?,
                })
            }
        };
        if tls.is_none() {
            for (variable, value, is_tls) in [
                (POD_PARENT_SOCKET, &parent_socket, parent_tls),
                (POD_SOCKET, &own_socket, own_tls),
            ] {
                if is_tls {
                    return Err(invalid(
                        variable,
                        value,
                        format!(
                            "a tls:// address needs the pod's TLS identity, and none of \
                             {POD_TLS_CERT}, {POD_TLS_KEY}, {POD_TLS_CA} is set"
                        ),
                    ));
                }
            }
        }
        Ok(Handoff {
            name: name_value,
            incarnation,
            parent,
            parent_socket,
            socket: own_socket,
            scope,
            tls,
        })
    }

    /// The variables as `(name, value)` pairs, for a spawner to set on the
    /// child's command: the six of [`HANDOFF_VARIABLES`] (with
    /// `POD_SCOPE_STORE` for a networked table), then the
    /// [`TLS_VARIABLES`] when the handoff has TLS files.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            (POD_NAME, self.name.to_string()),
            (POD_INCARNATION, self.incarnation.clone()),
            (POD_PARENT, self.parent.to_string()),
            (POD_PARENT_SOCKET, self.parent_socket.clone()),
            (POD_SOCKET, self.socket.clone()),
            (self.scope.variable(), self.scope.value()),
        ];
        if let Some(files) = &self.tls {
            vars.extend(
                files
                    .entries()
                    .map(|(variable, path)| (variable, path.display().to_string())),
            );
        }
        vars
    }

    /// Sets the variables on `command`, and removes those it does not
    /// set (the one of `POD_SCOPE_LOCK` and `POD_SCOPE_STORE` not used,
    /// the TLS variables without TLS files), so a value inherited from this
    /// process cannot contradict them.
    pub fn apply_to(&self, command: &mut tokio::process::Command) {
        let vars = self.vars();
        for variable in ALL_VARIABLES {
            if !vars.iter().any(|(set, _)| *set == variable) {
                command.env_remove(variable);
            }
        }
        for (name, value) in vars {
            command.env(name, value);
        }
    }

    /// A handoff built from its parts, as a spawner does; `scope` is the
    /// table file (a `PathBuf`) or a [`TableLocation`]. It has no TLS
    /// files: add them with [`with_tls`](Handoff::with_tls).
    pub fn new(
        name: PodName,
        incarnation: String,
        parent: PodName,
        parent_socket: String,
        socket: String,
        scope: impl Into<TableLocation>,
    ) -> Handoff {
        Handoff {
            name,
            incarnation,
            parent,
            parent_socket,
            socket,
            scope: scope.into(),
            tls: None,
        }
    }

    /// The same handoff with the child's TLS identity (or without one,
    /// for `None`): needed when an address is `tls://`.
    pub fn with_tls(self, tls: impl Into<Option<TlsFiles>>) -> Handoff {
        Handoff {
            tls: tls.into(),
            ..self
        }
    }

    /// Whether the address to report to is `tls://`.
    pub fn reports_over_tls(&self) -> bool {
        self.parent_socket.starts_with(TLS_SCHEME)
    }

    /// Refuses a handoff whose `POD_PARENT_SOCKET` is `tls://`, for
    /// `what`, which reports over Unix sockets only.
    pub(crate) fn unix_parent(&self, what: &str) -> Result<(), HandoffError> {
        if !self.reports_over_tls() {
            return Ok(());
        }
        Err(HandoffError::Invalid {
            variable: POD_PARENT_SOCKET,
            value: self.parent_socket.clone(),
            reason: format!(
                "{what} reports over Unix sockets only: a child reporting to a tls:// parent \
                 sends through AddressSender::for_handoff (pod-events, feature `tls`), as \
                 PodContext::from_env_tls does"
            ),
        })
    }

    /// Refuses a handoff whose `POD_SOCKET` is `tls://`, for `what`,
    /// which listens on Unix sockets only.
    pub(crate) fn unix_socket(&self, what: &str) -> Result<(), HandoffError> {
        if !self.socket.starts_with(TLS_SCHEME) {
            return Ok(());
        }
        Err(HandoffError::Invalid {
            variable: POD_SOCKET,
            value: self.socket.clone(),
            reason: format!("{what} listens on Unix sockets only"),
        })
    }
}

/// The scheme of a TLS address.
const TLS_SCHEME: &str = "tls://";

/// What `POD_SCOPE_STORE` must look like before a store parses it: an
/// `etcd://` address with hosts and a prefix, bounded, printable, without
/// spaces.
fn check_store(value: &str) -> Result<(), String> {
    let Some(rest) = value.strip_prefix("etcd://") else {
        return Err(
            "a networked scope table is an etcd://HOST:PORT[,HOST:PORT...]/PREFIX address".into(),
        );
    };
    if value.len() > MAX_STORE_LEN {
        return Err(format!("an address is at most {MAX_STORE_LEN} bytes"));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("an address has no spaces or control characters".into());
    }
    match rest.split_once('/') {
        Some((hosts, prefix)) if !hosts.is_empty() && !prefix.trim_matches('/').is_empty() => {
            Ok(())
        }
        _ => Err(
            "an etcd address is etcd://HOST:PORT[,HOST:PORT...]/PREFIX, with hosts and a prefix"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    fn good() -> HashMap<&'static str, OsString> {
        [
            (POD_NAME, "child"),
            (POD_INCARNATION, "0123abcd-ef"),
            (POD_PARENT, "root"),
            (POD_PARENT_SOCKET, "/run/pods/root/sock"),
            (POD_SOCKET, "unix:/run/pods/child/sock"),
            (POD_SCOPE_LOCK, "/run/pods/scope.lock"),
        ]
        .into_iter()
        .map(|(k, v)| (k, OsString::from(v)))
        .collect()
    }

    fn parse(vars: &HashMap<&'static str, OsString>) -> Result<Handoff, HandoffError> {
        Handoff::from_lookup(|name| vars.get(name).cloned())
    }

    /// The variable a bad value is blamed on.
    fn blamed(error: HandoffError) -> &'static str {
        match error {
            HandoffError::Missing { variable }
            | HandoffError::NotUnicode { variable }
            | HandoffError::Incomplete { variable, .. }
            | HandoffError::Invalid { variable, .. } => variable,
        }
    }

    /// [`good`] with TLS files and `tls://` addresses.
    fn good_tls() -> HashMap<&'static str, OsString> {
        let mut vars = good();
        for (variable, value) in [
            (POD_PARENT_SOCKET, "tls://pods.example:7443"),
            (POD_TLS_CERT, "/etc/pods/child.pem"),
            (POD_TLS_KEY, "/etc/pods/child.key"),
            (POD_TLS_CA, "/etc/pods/ca.pem"),
        ] {
            vars.insert(variable, value.into());
        }
        vars
    }

    /// The variables `handoff` sets, as a lookup table.
    fn as_vars(handoff: &Handoff) -> HashMap<&'static str, OsString> {
        handoff
            .vars()
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect()
    }

    fn check(variable: &'static str, value: &str, blame: &'static str) {
        let mut vars = good();
        vars.insert(variable, value.into());
        let error = parse(&vars).expect_err(&format!("{variable}={value:?} must be refused"));
        assert!(error.to_string().contains(blame), "{error}");
        assert_eq!(blamed(error), blame, "{variable}={value:?}");
    }

    #[test]
    fn good_values_parse_and_round_trip() {
        let handoff = parse(&good()).unwrap();
        assert_eq!(handoff.name.as_str(), "child");
        assert_eq!(handoff.socket, "/run/pods/child/sock", "unix: is stripped");
        assert_eq!(handoff.tls, None);
        assert!(!handoff.reports_over_tls());
        let vars = as_vars(&handoff);
        assert!(TLS_VARIABLES.iter().all(|v| !vars.contains_key(v)));
        assert_eq!(parse(&vars).unwrap(), handoff);
    }

    #[test]
    fn tls_addresses_with_the_tls_files_parse_and_round_trip() {
        let handoff = parse(&good_tls()).unwrap();
        assert_eq!(handoff.parent_socket, "tls://pods.example:7443");
        assert!(handoff.reports_over_tls());
        assert_eq!(
            handoff.tls,
            Some(TlsFiles::new(
                "/etc/pods/child.pem",
                "/etc/pods/child.key",
                "/etc/pods/ca.pem"
            ))
        );
        assert_eq!(parse(&as_vars(&handoff)).unwrap(), handoff);

        // The child's own address may be tls:// too, and is kept in its
        // canonical form.
        let mut vars = good_tls();
        vars.insert(POD_PARENT_SOCKET, "unix:/run/pods/root/sock".into());
        vars.insert(POD_SOCKET, "tls://[::1]:7444".into());
        let handoff = parse(&vars).unwrap();
        assert_eq!(
            (handoff.parent_socket.as_str(), handoff.socket.as_str()),
            ("/run/pods/root/sock", "tls://[::1]:7444")
        );
        assert!(!handoff.reports_over_tls());
        assert_eq!(parse(&as_vars(&handoff)).unwrap(), handoff);
        assert_eq!(
            handoff.unix_parent("x"),
            Ok(()),
            "a Unix parent is reachable without TLS"
        );
    }

    #[test]
    fn tls_files_without_a_tls_address_are_kept() {
        let mut vars = good_tls();
        vars.insert(POD_PARENT_SOCKET, "/run/pods/root/sock".into());
        let handoff = parse(&vars).unwrap();
        assert!(handoff.tls.is_some());
        assert_eq!(parse(&as_vars(&handoff)).unwrap(), handoff);
    }

    #[test]
    fn a_tls_address_without_the_tls_files_is_refused_naming_it() {
        for variable in [POD_PARENT_SOCKET, POD_SOCKET] {
            let mut vars = good();
            vars.insert(variable, "tls://127.0.0.1:7443".into());
            let error = parse(&vars).unwrap_err();
            assert_eq!(blamed(error.clone()), variable, "{error}");
            assert!(error.to_string().contains(POD_TLS_CERT), "{error}");
        }
    }

    #[test]
    fn a_partial_set_of_tls_files_is_refused_naming_the_missing_one() {
        // Every non-empty proper subset of the three variables.
        for kept in 1..7u8 {
            let mut vars = good_tls();
            for (bit, variable) in TLS_VARIABLES.iter().enumerate() {
                if kept & (1 << bit) == 0 {
                    vars.remove(variable);
                }
            }
            let given = TLS_VARIABLES
                .iter()
                .enumerate()
                .find(|(bit, _)| kept & (1 << bit) != 0)
                .map(|(_, v)| *v)
                .unwrap();
            let missing = TLS_VARIABLES
                .iter()
                .enumerate()
                .find(|(bit, _)| kept & (1 << bit) == 0)
                .map(|(_, v)| *v)
                .unwrap();
            let error = parse(&vars).unwrap_err();
            assert_eq!(
                error,
                HandoffError::Incomplete {
                    variable: missing,
                    given
                },
                "kept {kept:03b}"
            );
            assert!(error.to_string().starts_with(missing), "{error}");
            assert!(error.to_string().contains(given), "{error}");
        }
    }

    #[test]
    fn bad_tls_paths_are_refused_naming_their_variable() {
        for variable in TLS_VARIABLES {
            for bad in ["", "child.pem", "/etc/pods/../child.pem", "/etc/./x"] {
                let mut vars = good_tls();
                vars.insert(variable, bad.into());
                let error = parse(&vars).unwrap_err();
                assert_eq!(blamed(error.clone()), variable, "{variable}={bad:?}");
                assert!(matches!(error, HandoffError::Invalid { .. }), "{error}");
            }
            let mut vars = good_tls();
            vars.insert(variable, OsString::from_vec(vec![b'/', 0xff]));
            assert_eq!(
                parse(&vars).unwrap_err(),
                HandoffError::NotUnicode { variable }
            );
        }
    }

    #[test]
    fn a_unix_only_reporter_refuses_a_tls_parent_naming_it() {
        let handoff = parse(&good_tls()).unwrap();
        let error = handoff.unix_parent("PodContext::from_env").unwrap_err();
        assert_eq!(blamed(error.clone()), POD_PARENT_SOCKET);
        assert!(error.to_string().contains("from_env_tls"), "{error}");
    }

    /// What `apply_to` does to `command`'s environment: a value set, or
    /// `None` for a variable removed.
    fn applied(handoff: &Handoff) -> HashMap<String, Option<String>> {
        let mut command = tokio::process::Command::new("true");
        handoff.apply_to(&mut command);
        command
            .as_std()
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn apply_to_sets_the_tls_files_or_removes_inherited_ones() {
        let plain = parse(&good()).unwrap();
        let env = applied(&plain);
        for variable in TLS_VARIABLES.into_iter().chain([POD_SCOPE_STORE]) {
            assert_eq!(env.get(variable), Some(&None), "{variable} is removed");
        }
        assert_eq!(
            env.get(POD_SCOPE_LOCK),
            Some(&Some("/run/pods/scope.lock".into()))
        );

        let files = TlsFiles::new("/c.pem", "/c.key", "/ca.pem");
        let with = plain.clone().with_tls(files.clone());
        assert_eq!(with.tls.as_ref(), Some(&files));
        let env = applied(&with);
        for (variable, path) in [
            (POD_TLS_CERT, "/c.pem"),
            (POD_TLS_KEY, "/c.key"),
            (POD_TLS_CA, "/ca.pem"),
        ] {
            assert_eq!(env.get(variable), Some(&Some(path.into())), "{variable}");
        }
        assert_eq!(with.with_tls(None), plain);
    }

    #[test]
    fn each_missing_variable_is_named() {
        for variable in HANDOFF_VARIABLES {
            let mut vars = good();
            vars.remove(variable);
            let error = parse(&vars).unwrap_err();
            assert_eq!(error, HandoffError::Missing { variable });
            assert!(error.to_string().starts_with(variable), "{error}");
        }
    }

    #[test]
    fn bad_values_are_refused_naming_their_variable() {
        check(POD_NAME, "", POD_NAME);
        check(POD_NAME, "-dash", POD_NAME);
        check(POD_NAME, "a/b", POD_NAME);
        check(POD_NAME, &"x".repeat(129), POD_NAME);
        check(POD_INCARNATION, "", POD_INCARNATION);
        check(POD_INCARNATION, "has space", POD_INCARNATION);
        check(POD_INCARNATION, "new\nline", POD_INCARNATION);
        check(POD_INCARNATION, &"a".repeat(129), POD_INCARNATION);
        check(POD_PARENT, "bad name", POD_PARENT);
        check(POD_PARENT, "child", POD_PARENT);
        check(POD_PARENT_SOCKET, "relative/sock", POD_PARENT_SOCKET);
        check(POD_PARENT_SOCKET, "/run/../sock", POD_PARENT_SOCKET);
        check(
            POD_PARENT_SOCKET,
            "tls://pods.example:7443",
            POD_PARENT_SOCKET,
        );
        check(POD_PARENT_SOCKET, "http://x", POD_PARENT_SOCKET);
        check(POD_SOCKET, "", POD_SOCKET);
        check(POD_SOCKET, "/run/pods/root/sock", POD_SOCKET);
        check(POD_SCOPE_LOCK, "scope.lock", POD_SCOPE_LOCK);
        check(POD_SCOPE_LOCK, "/run/./scope.lock", POD_SCOPE_LOCK);
    }

    #[test]
    fn non_unicode_values_are_named() {
        let mut vars = good();
        vars.insert(POD_SOCKET, OsString::from_vec(vec![b'/', 0xff]));
        assert_eq!(
            parse(&vars).unwrap_err(),
            HandoffError::NotUnicode {
                variable: POD_SOCKET
            }
        );
    }

    #[test]
    fn a_networked_store_stands_for_the_file_and_round_trips() {
        let mut vars = good();
        vars.remove(POD_SCOPE_LOCK);
        vars.insert(POD_SCOPE_STORE, "etcd://127.0.0.1:2379,h:1/pods".into());
        let handoff = parse(&vars).unwrap();
        assert_eq!(
            handoff.scope,
            TableLocation::Store("etcd://127.0.0.1:2379,h:1/pods".into())
        );
        assert_eq!(handoff.scope.file(), None);
        let again = as_vars(&handoff);
        assert!(!again.contains_key(POD_SCOPE_LOCK));
        assert_eq!(parse(&again).unwrap(), handoff);
    }

    #[test]
    fn a_bad_or_doubled_store_is_refused_naming_it() {
        let mut vars = good();
        vars.insert(POD_SCOPE_STORE, "etcd://127.0.0.1:2379/pods".into());
        let error = parse(&vars).unwrap_err();
        assert_eq!(blamed(error.clone()), POD_SCOPE_STORE);
        assert!(error.to_string().contains("exactly one"), "{error}");
        vars.remove(POD_SCOPE_LOCK);
        for bad in [
            "",
            "http://h:1/p",
            "etcd://",
            "etcd://h:1",
            "etcd://h:1/",
            "etcd:///p",
            "etcd://h:1/a b",
            "etcd://h:1/a\nb",
        ] {
            vars.insert(POD_SCOPE_STORE, bad.into());
            assert_eq!(
                blamed(parse(&vars).unwrap_err()),
                POD_SCOPE_STORE,
                "{bad:?}"
            );
        }
        vars.insert(
            POD_SCOPE_STORE,
            format!("etcd://h:1/{}", "p".repeat(MAX_STORE_LEN)).into(),
        );
        assert_eq!(blamed(parse(&vars).unwrap_err()), POD_SCOPE_STORE);
    }
}
