//! The wire types: what travels on a Pod's socket, one JSON object per line.
//!
//! `Method` derives `Deserialize`; `PodEvent`'s is hand-written (`crate::de`)
//! and both `Serialize` impls are hand-written (`crate::dialect`), because
//! the encoding depends on the peer's [`Dialect`](crate::Dialect).

use serde::{Deserialize, Serialize};

/// One request on a Pod's control socket.
///
/// Adjacently tagged: `{"method":"<name>","params":{...}}`, names in
/// snake_case. Only `pod_event` and `notify` are understood by the event
/// layer; the other variants exist so that every line an existing Pod sends
/// decodes, and a receiver that does not handle one can reject it by name
/// instead of failing to parse it.
///
/// Both dialects decode (`worker_event` is `pod_event`, see
/// [`Dialect`](crate::Dialect)); `Serialize` writes the original one. A
/// method without parameters is written without `params`
/// (`{"method":"resume"}`), as existing Pods write it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Method {
    /// A lifecycle event from a child Pod (`worker_event` in the later
    /// dialect).
    #[serde(alias = "worker_event")]
    PodEvent(PodEvent),
    /// A free-form message for the Pod's operator.
    Notify {
        /// The message text, untrusted.
        message: String,
        /// Whether the receiving Pod starts a turn on it (the later
        /// dialect's field; absent means `true`, and `true` is not
        /// written).
        #[serde(default = "default_true")]
        auto_run: bool,
    },
    /// Ask the Pod to shut down.
    Shutdown,
    /// Ask the Pod to start a turn; the parameters are passed through opaque.
    Run(Option<serde_json::Value>),
    /// Ask the Pod to resume; the parameters are passed through opaque.
    Resume(Option<serde_json::Value>),
    /// Ask the Pod to cancel its current turn.
    Cancel,
    /// Ask the Pod to pause.
    Pause,
    /// Ask the Pod for its history; the parameters are passed through opaque.
    GetHistory(Option<serde_json::Value>),
    /// A manager tells an orphan where to report from now on (DESIGN
    /// section 12). Existing Pods do not know it and reject it by name.
    Reparent(Reparent),
}

impl Method {
    /// A [`Method::Notify`] with `auto_run` at its default, `true`.
    pub fn notify(message: impl Into<String>) -> Self {
        Method::Notify {
            message: message.into(),
            auto_run: true,
        }
    }

    /// The wire name of this method in the original dialect
    /// (`"pod_event"`, `"notify"`, ...); see
    /// [`Dialect::method_name`](crate::Dialect::method_name) for others.
    pub fn name(&self) -> &'static str {
        match self {
            Method::PodEvent(_) => "pod_event",
            Method::Notify { .. } => "notify",
            Method::Shutdown => "shutdown",
            Method::Run(_) => "run",
            Method::Resume(_) => "resume",
            Method::Cancel => "cancel",
            Method::Pause => "pause",
            Method::GetHistory(_) => "get_history",
            Method::Reparent(_) => "reparent",
        }
    }
}

impl From<PodEvent> for Method {
    fn from(event: PodEvent) -> Self {
        Method::PodEvent(event)
    }
}

/// The parameters of [`Method::Reparent`]: the pod a notice is meant for,
/// the manager it reports to from now on, and the notice's order.
///
/// ```
/// use pod_protocol::{decode, Method, Reparent};
///
/// let line = br#"{"method":"reparent","params":{"pod_name":"gc","incarnation":"7f3a","parent_pod":"root","parent_socket":"/run/pods/root/sock","seq":3}}"#;
/// let Method::Reparent(notice) = decode(line).unwrap() else { panic!() };
/// assert_eq!((notice.parent_pod.as_str(), notice.seq), ("root", 3));
/// notice.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reparent {
    /// The orphan the notice is for; another pod ignores it.
    pub pod_name: String,
    /// The orphan's incarnation; another incarnation ignores it.
    pub incarnation: String,
    /// The pod to report to from now on.
    pub parent_pod: String,
    /// Where that pod listens (a socket path or a `tls://` address).
    pub parent_socket: String,
    /// How often the orphan's allocation was moved to a new manager: an
    /// orphan never applies a notice with a lower `seq` than one it
    /// applied.
    pub seq: u64,
}

/// A lifecycle event a child Pod reports to its parent.
///
/// Internally tagged by `kind` (snake_case), fields in any order, unknown
/// fields ignored; the later dialect's `worker_name`, `parent_worker` and
/// `sub_worker` decode as `pod_name`, `parent_pod` and `sub_pod`. Optional
/// fields are written only when present. Field values are exactly what the
/// sender wrote: decoding checks the shape, [`PodEvent::validate`] checks
/// the content (names and paths).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PodEvent {
    /// The pod finished one turn and is idle.
    TurnEnded {
        /// The pod the event is about.
        pod_name: String,
        /// Incarnation of that pod, when the sender knows it.
        incarnation: Option<String>,
    },
    /// The pod's worker hit a runtime error.
    Errored {
        /// The pod the event is about.
        pod_name: String,
        /// The error text, untrusted.
        message: String,
        /// Incarnation of that pod, when the sender knows it.
        incarnation: Option<String>,
    },
    /// The pod's controller loop is exiting.
    ShutDown {
        /// The pod the event is about.
        pod_name: String,
        /// Incarnation of that pod, when the sender knows it.
        incarnation: Option<String>,
    },
    /// `parent_pod` spawned `sub_pod` and delegated `scope` to it.
    ScopeSubDelegated {
        /// The pod that spawned `sub_pod` (rewritten to itself by each relay).
        parent_pod: String,
        /// The newly spawned pod.
        sub_pod: String,
        /// The control socket of `sub_pod`.
        sub_socket: String,
        /// The rules delegated to `sub_pod`.
        scope: Vec<ScopeRule>,
        /// Incarnation of `sub_pod`, when the sender knows it.
        sub_incarnation: Option<String>,
        /// The socket `sub_pod` reports to, set by the original sender and
        /// preserved by every relay.
        spawner_socket: Option<String>,
    },
}

impl PodEvent {
    /// The wire name of this event's kind (`"turn_ended"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            PodEvent::TurnEnded { .. } => "turn_ended",
            PodEvent::Errored { .. } => "errored",
            PodEvent::ShutDown { .. } => "shut_down",
            PodEvent::ScopeSubDelegated { .. } => "scope_sub_delegated",
        }
    }

    /// The pod this event is about: `pod_name`, or `sub_pod` for a
    /// sub-delegation. Receivers order events by this name.
    pub fn subject(&self) -> &str {
        match self {
            PodEvent::TurnEnded { pod_name, .. }
            | PodEvent::Errored { pod_name, .. }
            | PodEvent::ShutDown { pod_name, .. } => pod_name,
            PodEvent::ScopeSubDelegated { sub_pod, .. } => sub_pod,
        }
    }

    /// The incarnation of [`subject`](Self::subject), when the sender gave one.
    pub fn subject_incarnation(&self) -> Option<&str> {
        match self {
            PodEvent::TurnEnded { incarnation, .. }
            | PodEvent::Errored { incarnation, .. }
            | PodEvent::ShutDown { incarnation, .. } => incarnation.as_deref(),
            PodEvent::ScopeSubDelegated {
                sub_incarnation, ..
            } => sub_incarnation.as_deref(),
        }
    }
}

/// Read or write access; `Read < Write`, and write implies read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// May read under the target.
    Read,
    /// May read and write under the target.
    Write,
}

/// One rule of a scope: a permission over a path.
///
/// A recursive rule covers `target` and everything below it; a
/// non-recursive rule covers `target` and its direct children.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScopeRule {
    /// Absolute, lexically normal path (see [`crate::validate_path`]).
    pub target: String,
    /// What the rule allows.
    pub permission: Permission,
    /// Whether the rule reaches below the direct children of `target`.
    #[serde(default = "default_true")]
    pub recursive: bool,
}

fn default_true() -> bool {
    true
}

impl ScopeRule {
    /// A recursive write rule over `target`.
    pub fn write(target: impl Into<String>) -> Self {
        ScopeRule {
            target: target.into(),
            permission: Permission::Write,
            recursive: true,
        }
    }

    /// A recursive read rule over `target`.
    pub fn read(target: impl Into<String>) -> Self {
        ScopeRule {
            target: target.into(),
            permission: Permission::Read,
            recursive: true,
        }
    }
}
