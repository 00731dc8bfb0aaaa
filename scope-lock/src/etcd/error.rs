//! Why an operation on the etcd-backed table failed.

use std::time::Duration;

/// Why an [`EtcdStore`](crate::EtcdStore) or
/// [`LeaseLiveness`](crate::LeaseLiveness) operation failed. Every case
/// but [`OutcomeUnknown`](Self::OutcomeUnknown) means nothing was
/// written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// No endpoint answered: every member is down, or the address is wrong.
    #[error("etcd at {endpoints} is unreachable ({message}): check that the members run and listen on those client URLs; nothing was changed")]
    Unreachable {
        /// The configured endpoints, comma-separated.
        endpoints: String,
        /// What the client said.
        message: String,
    },
    /// A member answered but the cluster cannot commit: it has no leader
    /// (a majority of its members is down or partitioned away) or did not
    /// answer within the request timeout.
    #[error("etcd at {endpoints} has no quorum ({message}): bring a majority of its members back; nothing was granted")]
    NoQuorum {
        /// The configured endpoints, comma-separated.
        endpoints: String,
        /// What the member said.
        message: String,
    },
    /// Other stores held the table's transaction lock for every attempt,
    /// until the store stopped waiting.
    #[error("the scope table under `{prefix}` stayed busy for {attempts} attempts over {waited:?}: other writers hold it; retry later, or raise EtcdOptions::lock_wait")]
    ConflictRetriesExhausted {
        /// The table's key prefix.
        prefix: String,
        /// How many times the lock was tried.
        attempts: u32,
        /// How long the store waited.
        waited: Duration,
    },
    /// The commit's compare failed: the table changed under the
    /// transaction (its lock lease expired while it ran, or a writer that
    /// ignores the lock wrote). Nothing of this transaction was written.
    #[error("the scope table under `{prefix}` changed while the transaction ran (its lock lease expired, or another writer ignored the lock): nothing was granted; retry")]
    Conflict {
        /// The table's key prefix.
        prefix: String,
    },
    /// The commit was sent but its answer was lost (the leader died as it
    /// committed), and the cluster did not answer a read of the table's
    /// version within the lock wait either: it may or may not have landed.
    #[error("the outcome of a commit to the scope table under `{prefix}` is unknown ({message}): read the table (podctl scopes) before retrying")]
    OutcomeUnknown {
        /// The table's key prefix.
        prefix: String,
        /// Why the commit's answer was lost.
        message: String,
    },
    /// The stored table does not parse, or breaks the table's invariant.
    #[error("the scope table under `{prefix}` is invalid: {message}; it was left untouched: inspect it with `etcdctl get --prefix {prefix}/`, then repair or delete it")]
    InvalidTable {
        /// The table's key prefix.
        prefix: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The transaction changes more allocations than etcd takes in one
    /// transaction (its `--max-txn-ops`, 128 by default).
    #[error("the transaction changes {ops} keys, over the {limit} etcd takes in one transaction: raise etcd's --max-txn-ops and EtcdOptions::max_txn_ops together, or change fewer pods at once")]
    TooLarge {
        /// Keys the transaction would write or delete.
        ops: usize,
        /// The configured limit.
        limit: usize,
    },
    /// etcd refused the request for another reason (authentication,
    /// permission, a bad argument).
    #[error("etcd refused the request: {message}")]
    Refused {
        /// What etcd said.
        message: String,
    },
    /// A lease this process holds is gone (expired or revoked): the pod
    /// it proves alive is presumed dead by everyone else and must stop
    /// writing to its scope.
    #[error("lease {lease:x} is gone (expired or revoked): this pod is presumed dead and its scope reclaimed; stop writing to it and register again")]
    LeaseLost {
        /// The lease id.
        lease: i64,
    },
    /// An `etcd://` address does not parse.
    #[error("invalid etcd address `{address}`: {reason}; expected etcd://HOST:PORT[,HOST:PORT...]/PREFIX")]
    InvalidAddress {
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The store's own runtime thread could not be started.
    #[error("cannot start the etcd client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl EtcdError {
    /// Classifies a client error: `endpoints` is what the store was
    /// configured with, for the message.
    pub(crate) fn from_client(endpoints: &str, error: etcd_client::Error) -> Self {
        // gRPC status codes (tonic::Code as i32), so as not to depend on
        // tonic's version directly.
        const DEADLINE_EXCEEDED: i32 = 4;
        const UNAVAILABLE: i32 = 14;
        let endpoints = endpoints.to_owned();
        match error {
            etcd_client::Error::GRpcStatus(status) => {
                let code = i32::from(status.code());
                let message = status.message().to_owned();
                // etcd answers "etcdserver: no leader", "request timed
                // out", "leader changed" while it cannot commit; a
                // client-side deadline ("Timeout expired", from the
                // client's request timeout) means no member committed in
                // time.
                let lower = message.to_ascii_lowercase();
                let no_leader = [
                    "no leader",
                    "timed out",
                    "timeout expired",
                    "leader changed",
                    "not capable",
                ]
                .iter()
                .any(|m| lower.contains(m));
                if no_leader || code == DEADLINE_EXCEEDED {
                    EtcdError::NoQuorum { endpoints, message }
                } else if code == UNAVAILABLE {
                    EtcdError::Unreachable { endpoints, message }
                } else {
                    EtcdError::Refused { message }
                }
            }
            other @ (etcd_client::Error::TransportError(_)
            | etcd_client::Error::IoError(_)
            | etcd_client::Error::InvalidUri(_)
            | etcd_client::Error::EndpointError(_)) => EtcdError::Unreachable {
                endpoints,
                message: other.to_string(),
            },
            other => EtcdError::Refused {
                message: other.to_string(),
            },
        }
    }
}
