//! The two dialects Pods speak, and the encoding of [`Method`] and
//! [`PodEvent`] in each.
//!
//! Later versions of existing Pods renamed the event method and three
//! fields. Decoding accepts both dialects everywhere (the renamed names
//! are aliases), so only encoding needs to know which one a peer speaks:
//! a relay writes upward in the dialect configured for its upward link.

use std::fmt;
use std::str::FromStr;

use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;

use crate::{Method, PodEvent};

/// The names a peer uses on the wire.
///
/// | original (`Original`) | later (`Worker`) |
/// | --- | --- |
/// | `pod_event` (method) | `worker_event` |
/// | `pod_name` | `worker_name` |
/// | `parent_pod` | `parent_worker` |
/// | `sub_pod` | `sub_worker` |
///
/// Everything else is the same in both, including `notify`'s `auto_run`
/// (written only when `false`; peers that predate it ignore it).
///
/// ```
/// use pod_protocol::{decode, Dialect, Method, PodEvent};
///
/// let event = Method::PodEvent(PodEvent::TurnEnded { pod_name: "w".into(), incarnation: None });
/// let line = Dialect::Worker.encode(&event);
/// assert_eq!(line, b"{\"method\":\"worker_event\",\"params\":{\"kind\":\"turn_ended\",\"worker_name\":\"w\"}}\n");
/// assert_eq!(decode(&line[..line.len() - 1]).unwrap(), event);
/// assert_eq!("worker".parse::<Dialect>().unwrap(), Dialect::Worker);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Dialect {
    /// The names of existing Pods (DESIGN.md section 3); the default.
    #[default]
    Original,
    /// The names of their later versions.
    Worker,
}

/// The names that differ between dialects.
struct Names {
    pod_event: &'static str,
    pod_name: &'static str,
    parent_pod: &'static str,
    sub_pod: &'static str,
}

const ORIGINAL: Names = Names {
    pod_event: "pod_event",
    pod_name: "pod_name",
    parent_pod: "parent_pod",
    sub_pod: "sub_pod",
};

const WORKER: Names = Names {
    pod_event: "worker_event",
    pod_name: "worker_name",
    parent_pod: "parent_worker",
    sub_pod: "sub_worker",
};

impl Dialect {
    /// Every dialect, in declaration order.
    pub const ALL: &'static [Dialect] = &[Dialect::Original, Dialect::Worker];

    fn names(self) -> &'static Names {
        match self {
            Dialect::Original => &ORIGINAL,
            Dialect::Worker => &WORKER,
        }
    }

    /// The configuration name of this dialect: `"original"` or `"worker"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Original => "original",
            Dialect::Worker => "worker",
        }
    }

    /// The wire name of `method` in this dialect.
    pub fn method_name(self, method: &Method) -> &'static str {
        match method {
            Method::PodEvent(_) => self.names().pod_event,
            other => other.name(),
        }
    }

    /// Encodes `method` in this dialect as one compact JSON line with a
    /// trailing `\n` (see [`crate::encode`]).
    pub fn encode(self, method: &Method) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode_into(method, &mut out);
        out
    }

    /// Appends the frame of `method` in this dialect to `out`.
    pub fn encode_into(self, method: &Method, out: &mut Vec<u8>) {
        // Serializing these types into memory cannot fail: every map key is
        // a string and no Serialize impl of ours returns an error.
        serde_json::to_writer(&mut *out, &InDialect(method, self))
            .expect("Method serializes infallibly");
        out.push(b'\n');
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dialect name that is neither `original` nor `worker`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dialect {name:?}; expected \"original\" or \"worker\"")]
pub struct UnknownDialect {
    /// The name given.
    pub name: String,
}

impl FromStr for Dialect {
    type Err = UnknownDialect;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Dialect::ALL
            .iter()
            .copied()
            .find(|d| d.as_str() == name)
            .ok_or_else(|| UnknownDialect {
                name: name.to_owned(),
            })
    }
}

/// `T` serialized in a dialect.
struct InDialect<'a, T>(&'a T, Dialect);

impl Serialize for Method {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        InDialect(self, Dialect::Original).serialize(serializer)
    }
}

impl Serialize for PodEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        InDialect(self, Dialect::Original).serialize(serializer)
    }
}

impl Serialize for InDialect<'_, Method> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let InDialect(method, dialect) = *self;
        let name = dialect.method_name(method);
        match method {
            Method::PodEvent(event) => with_params(serializer, name, &InDialect(event, dialect)),
            Method::Notify { message, auto_run } => with_params(
                serializer,
                name,
                &NotifyParams {
                    message,
                    auto_run: *auto_run,
                },
            ),
            Method::Run(Some(params))
            | Method::Resume(Some(params))
            | Method::GetHistory(Some(params)) => with_params(serializer, name, params),
            Method::Reparent(notice) => with_params(serializer, name, notice),
            // No `"params":null`: existing Pods write these methods bare,
            // and a relay must pass their lines on byte for byte.
            Method::Run(None)
            | Method::Resume(None)
            | Method::GetHistory(None)
            | Method::Shutdown
            | Method::Cancel
            | Method::Pause => {
                let mut s = serializer.serialize_struct("Method", 1)?;
                s.serialize_field("method", name)?;
                s.end()
            }
        }
    }
}

fn with_params<S: Serializer, P: Serialize>(
    serializer: S,
    name: &'static str,
    params: &P,
) -> Result<S::Ok, S::Error> {
    let mut s = serializer.serialize_struct("Method", 2)?;
    s.serialize_field("method", name)?;
    s.serialize_field("params", params)?;
    s.end()
}

struct NotifyParams<'a> {
    message: &'a str,
    auto_run: bool,
}

impl Serialize for NotifyParams<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Notify", 1 + usize::from(!self.auto_run))?;
        s.serialize_field("message", self.message)?;
        if !self.auto_run {
            s.serialize_field("auto_run", &false)?;
        }
        s.end()
    }
}

/// Writes `name: value` only when `value` is present.
fn optional<S: SerializeStruct>(
    s: &mut S,
    name: &'static str,
    value: &Option<String>,
) -> Result<(), S::Error> {
    match value {
        Some(value) => s.serialize_field(name, value),
        None => s.skip_field(name),
    }
}

impl Serialize for InDialect<'_, PodEvent> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let InDialect(event, dialect) = *self;
        let names = dialect.names();
        let count = |fields: &[&Option<String>]| fields.iter().filter(|f| f.is_some()).count();
        match event {
            PodEvent::TurnEnded {
                pod_name,
                incarnation,
            }
            | PodEvent::ShutDown {
                pod_name,
                incarnation,
            } => {
                let mut s = serializer.serialize_struct("PodEvent", 2 + count(&[incarnation]))?;
                s.serialize_field("kind", event.kind())?;
                s.serialize_field(names.pod_name, pod_name)?;
                optional(&mut s, "incarnation", incarnation)?;
                s.end()
            }
            PodEvent::Errored {
                pod_name,
                message,
                incarnation,
            } => {
                let mut s = serializer.serialize_struct("PodEvent", 3 + count(&[incarnation]))?;
                s.serialize_field("kind", event.kind())?;
                s.serialize_field(names.pod_name, pod_name)?;
                s.serialize_field("message", message)?;
                optional(&mut s, "incarnation", incarnation)?;
                s.end()
            }
            PodEvent::ScopeSubDelegated {
                parent_pod,
                sub_pod,
                sub_socket,
                scope,
                sub_incarnation,
                spawner_socket,
            } => {
                let len = 5 + count(&[sub_incarnation, spawner_socket]);
                let mut s = serializer.serialize_struct("PodEvent", len)?;
                s.serialize_field("kind", event.kind())?;
                s.serialize_field(names.parent_pod, parent_pod)?;
                s.serialize_field(names.sub_pod, sub_pod)?;
                s.serialize_field("sub_socket", sub_socket)?;
                s.serialize_field("scope", scope)?;
                optional(&mut s, "sub_incarnation", sub_incarnation)?;
                optional(&mut s, "spawner_socket", spawner_socket)?;
                s.end()
            }
        }
    }
}
