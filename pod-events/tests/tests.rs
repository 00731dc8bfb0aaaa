//! Integration tests of pod-events, built as one binary.

mod tests {
    pub(crate) mod endpoint;
    #[cfg(all(feature = "cli", feature = "etcd"))]
    pub(crate) mod etcd;
    pub(crate) mod exhaustive;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) mod exits;
    #[cfg(feature = "etcd")]
    pub(crate) mod leases;
    pub(crate) mod lifecycle;
    pub(crate) mod model;
    #[cfg(feature = "cli")]
    pub(crate) mod operator;
    pub(crate) mod orphans;
    #[cfg(feature = "cli")]
    pub(crate) mod podctl;
    pub(crate) mod processes;
    #[cfg(feature = "cli")]
    pub(crate) mod reparent;
    #[cfg(feature = "cli")]
    pub(crate) mod run;
    pub(crate) mod sockets;
    #[cfg(feature = "cli")]
    pub(crate) mod support;
    #[cfg(feature = "cli")]
    pub(crate) mod tls;
}
