//! The handoff variables (DESIGN section 11): how a spawner tells the
//! child it starts who it is, where to report and where the scope table
//! is, in the style of systemd's `NOTIFY_SOCKET` / `LISTEN_FDS`.
//!
//! Parsing is a pure function of a variable lookup
//! ([`Handoff::from_lookup`]), so every bad value is unit-tested without
//! touching the process environment; only [`Handoff::from_env`] reads it.

use std::ffi::OsString;
use std::path::PathBuf;

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
/// The scope table as a networked store (`etcd://...`): not supported by
/// this build, named so that a child handed one says so clearly.
pub const POD_SCOPE_STORE: &str = "POD_SCOPE_STORE";

/// Every variable a spawner sets, in the order they are checked.
pub const HANDOFF_VARIABLES: [&str; 6] = [
    POD_NAME,
    POD_INCARNATION,
    POD_PARENT,
    POD_PARENT_SOCKET,
    POD_SOCKET,
    POD_SCOPE_LOCK,
];

/// The longest incarnation id accepted: minted ids are far shorter; the
/// bound keeps a hostile environment from making us carry megabytes into
/// every event.
const MAX_INCARNATION_LEN: usize = 128;

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
    /// The Unix socket to report to (`POD_PARENT_SOCKET`).
    pub parent_socket: String,
    /// The Unix socket the child listens on (`POD_SOCKET`).
    pub socket: String,
    /// The scope table file (`POD_SCOPE_LOCK`).
    pub scope_lock: PathBuf,
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
    /// as absolute lexically normal Unix socket addresses (bare or with
    /// `unix:`), the scope table as an absolute path. The first problem
    /// found is the error.
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
        let socket = |variable| -> Result<String, HandoffError> {
            let value = text(variable)?;
            match value.parse::<Address>() {
                Ok(Address::Unix(path)) => Ok(path),
                Ok(_) => Err(invalid(
                    variable,
                    &value,
                    "this build reports over Unix sockets only; `tls://` needs the TLS variables, which PodContext does not read yet".into(),
                )),
                Err(e) => Err(invalid(variable, &value, e.to_string())),
            }
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
        let parent_socket = socket(POD_PARENT_SOCKET)?;
        let own_socket = socket(POD_SOCKET)?;
        if own_socket == parent_socket {
            return Err(invalid(
                POD_SOCKET,
                &own_socket,
                format!("it is also {POD_PARENT_SOCKET}: a pod listens on its own socket"),
            ));
        }
        let scope_lock = match (lookup(POD_SCOPE_LOCK), lookup(POD_SCOPE_STORE)) {
            (None, Some(store)) => {
                return Err(invalid(
                    POD_SCOPE_STORE,
                    &store.to_string_lossy(),
                    format!("this build has no networked scope store; set {POD_SCOPE_LOCK} to the table file instead"),
                ))
            }
            _ => {
                let value = text(POD_SCOPE_LOCK)?;
                validate_path(POD_SCOPE_LOCK, &value)
                    .map_err(|e| invalid(POD_SCOPE_LOCK, &value, e.to_string()))?;
                PathBuf::from(value)
            }
        };
        Ok(Handoff {
            name: name_value,
            incarnation,
            parent,
            parent_socket,
            socket: own_socket,
            scope_lock,
        })
    }

    /// The variables as `(name, value)` pairs, for a spawner to set on the
    /// child's command.
    pub fn vars(&self) -> [(&'static str, String); 6] {
        [
            (POD_NAME, self.name.to_string()),
            (POD_INCARNATION, self.incarnation.clone()),
            (POD_PARENT, self.parent.to_string()),
            (POD_PARENT_SOCKET, self.parent_socket.clone()),
            (POD_SOCKET, self.socket.clone()),
            (POD_SCOPE_LOCK, self.scope_lock.display().to_string()),
        ]
    }

    /// Sets the variables on `command`, and removes `POD_SCOPE_STORE` so a
    /// value inherited from this process cannot contradict them.
    pub fn apply_to(&self, command: &mut tokio::process::Command) {
        command.env_remove(POD_SCOPE_STORE);
        for (name, value) in self.vars() {
            command.env(name, value);
        }
    }

    /// A handoff built from its parts, as a spawner does.
    pub fn new(
        name: PodName,
        incarnation: String,
        parent: PodName,
        parent_socket: String,
        socket: String,
        scope_lock: PathBuf,
    ) -> Handoff {
        Handoff {
            name,
            incarnation,
            parent,
            parent_socket,
            socket,
            scope_lock,
        }
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
            | HandoffError::Invalid { variable, .. } => variable,
        }
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
        let vars: HashMap<&'static str, OsString> = handoff
            .vars()
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect();
        assert_eq!(parse(&vars).unwrap(), handoff);
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
    fn a_networked_store_without_a_file_is_refused() {
        let mut vars = good();
        vars.remove(POD_SCOPE_LOCK);
        vars.insert(POD_SCOPE_STORE, "etcd://127.0.0.1:2379/pods".into());
        assert_eq!(blamed(parse(&vars).unwrap_err()), POD_SCOPE_STORE);
    }
}
