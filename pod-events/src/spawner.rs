//! The spawner's side of the lifecycle (DESIGN section 11): reserve the
//! child's allocation, start it with the handoff variables, register it.
//!
//! The order is what keeps the table honest whatever dies when: the
//! reservation exists before the child's process does (no child ever runs
//! with an unrecorded grant), it is held under the spawner's process
//! until the child adopts it (a spawner killed mid-spawn leaves a
//! reservation that reclaim removes, its holder being dead), and it
//! expires (a child that dies before adopting leaves one that reclaim
//! removes after the deadline). A spawn that fails releases it at once.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;

use pod_protocol::{PodEvent, PodName, ScopeRule};
use pod_registry::Registry;
use pod_scope_lock::{Liveness, PodSpec, ScopeError, TableStore};
use pod_transport::{MethodSender, UnixSender};

use crate::guard::on_table;
use crate::handoff::Handoff;
use crate::parent::{Effects, Parent};
use crate::probe::{Reachability, SocketProbe};

/// Why a child was not spawned. The reservation, if one was made, is
/// released again: the table is as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The scope table refused the reservation: a write conflict (naming
    /// the competitor, [`ScopeError::WriteConflict`]), scope the spawner
    /// does not hold ([`ScopeError::NotSubset`]), a duplicate name, an
    /// unknown spawner, or an unreadable table.
    #[error("cannot reserve scope for pod `{name}`: {source}")]
    Reserve {
        /// The child's name.
        name: PodName,
        /// The table's answer.
        #[source]
        source: ScopeError,
    },
    /// The child's socket would not be an absolute, lexically normal path.
    #[error(
        "pod `{name}` cannot listen on {socket:?}: {reason}; choose another sockets directory"
    )]
    Socket {
        /// The child's name.
        name: PodName,
        /// The socket path derived.
        socket: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The program could not be started; its reservation was released.
    #[error("cannot start {program:?} for pod `{name}`: {source}; its reservation was released")]
    Spawn {
        /// The child's name.
        name: PodName,
        /// The program.
        program: String,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
    },
}

/// A child started by [`Spawner::spawn`].
#[derive(Debug)]
#[non_exhaustive]
pub struct SpawnedChild {
    /// Its pod name.
    pub name: PodName,
    /// Its incarnation id.
    pub incarnation: String,
    /// Its process id.
    pub pid: u32,
    /// The socket it listens on.
    pub socket: String,
    /// Its scope, as reserved.
    pub scope: Vec<ScopeRule>,
    /// The process (kill it, or wait for it with [`Spawner::wait`], which
    /// also records its exit).
    pub process: tokio::process::Child,
}

/// Starts child pods of one parent: reserve, spawn, register.
///
/// Wraps the parent's [`Parent`] (whose registry learns of each child and
/// whose upward link relays the announcement), the socket the parent
/// listens on (children report there), and the scope table file the
/// children are told to use.
#[derive(Debug)]
pub struct Spawner<R, S, L, U = UnixSender, P = SocketProbe>
where
    S: TableStore,
    L: Liveness,
{
    parent: Arc<Parent<R, S, L, U, P>>,
    socket: String,
    scope_lock: PathBuf,
    sockets_dir: PathBuf,
}

impl<R, S, L, U, P> Clone for Spawner<R, S, L, U, P>
where
    S: TableStore,
    L: Liveness,
{
    fn clone(&self) -> Self {
        Spawner {
            parent: self.parent.clone(),
            socket: self.socket.clone(),
            scope_lock: self.scope_lock.clone(),
            sockets_dir: self.sockets_dir.clone(),
        }
    }
}

impl<R, S, L, U, P> Spawner<R, S, L, U, P>
where
    R: Registry,
    S: TableStore,
    L: Liveness,
    U: MethodSender + Clone,
    P: Reachability,
{
    /// A spawner for `parent`, which listens on `socket`; children are
    /// told the table is `scope_lock` (the file behind `parent`'s table).
    ///
    /// Children listen on `<sockets dir>/<name>/sock`, the sockets
    /// directory being the one above `socket`'s own (so
    /// `/run/pods/root/sock` spawns `/run/pods/child/sock`, the layout
    /// `podctl` uses); see [`with_sockets_dir`](Self::with_sockets_dir).
    pub fn new(
        parent: Arc<Parent<R, S, L, U, P>>,
        socket: impl Into<String>,
        scope_lock: impl Into<PathBuf>,
    ) -> Self {
        let socket = socket.into();
        let own_dir = Path::new(&socket).parent().unwrap_or(Path::new("/"));
        let sockets_dir = own_dir.parent().unwrap_or(own_dir).to_path_buf();
        Spawner {
            parent,
            socket,
            scope_lock: scope_lock.into(),
            sockets_dir,
        }
    }

    /// Children listen on `<dir>/<name>/sock`.
    pub fn with_sockets_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.sockets_dir = dir.into();
        self
    }

    /// The parent this spawner spawns for.
    pub fn parent(&self) -> &Arc<Parent<R, S, L, U, P>> {
        &self.parent
    }

    /// The socket the child `name` is told to listen on.
    pub fn child_socket(&self, name: &PodName) -> String {
        self.sockets_dir
            .join(name.as_str())
            .join("sock")
            .display()
            .to_string()
    }

    /// Spawns `command` as the child pod `name` with `scope`:
    ///
    /// 1. reserves the allocation, delegated from this parent (every rule
    ///    of delegation applies; a refusal is [`SpawnError::Reserve`]);
    /// 2. sets the handoff variables on `command` and starts it (a
    ///    failure releases the reservation: [`SpawnError::Spawn`]);
    /// 3. registers the child in this parent's registry and relays the
    ///    announcement upward, as a `ScopeSubDelegated` from itself would
    ///    be applied.
    ///
    /// The child adopts the reservation itself ([`crate::PodContext`]);
    /// until it does, the grant is held under this parent's process.
    pub async fn spawn(
        &self,
        command: &mut tokio::process::Command,
        name: PodName,
        scope: Vec<ScopeRule>,
    ) -> Result<SpawnedChild, SpawnError> {
        let socket = self.child_socket(&name);
        if let Err(error) = pod_protocol::validate_path("socket", &socket) {
            return Err(SpawnError::Socket {
                name,
                socket,
                reason: error.to_string(),
            });
        }
        let spec = PodSpec {
            pod_name: name.clone(),
            // Ignored by reserve: the spawner's process holds it.
            pid: std::process::id(),
            socket: socket.clone(),
            scope: scope.clone(),
        };
        let from = self.parent.name().clone();
        let reservation = on_table(self.parent.scopes(), move |scopes| {
            scopes.reserve(&from, spec)
        })
        .await
        .map_err(|source| SpawnError::Reserve {
            name: name.clone(),
            source,
        })?;
        let incarnation = reservation.incarnation.clone().unwrap_or_default();
        Handoff::new(
            name.clone(),
            incarnation.clone(),
            self.parent.name().clone(),
            self.socket.clone(),
            socket.clone(),
            self.scope_lock.clone(),
        )
        .apply_to(command);
        let process = match command.spawn() {
            Ok(process) => process,
            Err(source) => {
                self.release(&name, &incarnation).await;
                return Err(SpawnError::Spawn {
                    name,
                    program: command
                        .as_std()
                        .get_program()
                        .to_string_lossy()
                        .into_owned(),
                    source,
                });
            }
        };
        // A child that has already been reaped has no id; that cannot
        // happen before our own wait, which is the only one.
        let pid = process.id().unwrap_or_default();
        self.parent
            .apply(&PodEvent::ScopeSubDelegated {
                parent_pod: self.parent.name().to_string(),
                sub_pod: name.to_string(),
                sub_socket: socket.clone(),
                scope: scope.clone(),
                sub_incarnation: Some(incarnation.clone()),
                spawner_socket: Some(self.socket.clone()),
            })
            .await;
        Ok(SpawnedChild {
            name,
            incarnation,
            pid,
            socket,
            scope,
            process,
        })
    }

    /// Waits for `child` to exit, then applies its `ShutDown` here (a
    /// no-op when it reported one itself): its record leaves the
    /// registry, its allocation is released if still held, and the
    /// departure is relayed upward.
    pub async fn wait(&self, child: &mut SpawnedChild) -> std::io::Result<(ExitStatus, Effects)> {
        let status = child.process.wait().await?;
        let effects = self
            .parent
            .apply(&PodEvent::ShutDown {
                pod_name: child.name.to_string(),
                incarnation: Some(child.incarnation.clone()),
            })
            .await;
        Ok((status, effects))
    }

    async fn release(&self, name: &PodName, incarnation: &str) {
        let (name, incarnation) = (name.clone(), incarnation.to_owned());
        if let Err(error) = on_table(self.parent.scopes(), move |scopes| {
            scopes.release(&name, Some(&incarnation))
        })
        .await
        {
            tracing::warn!(%error, "could not release a failed spawn's reservation; it expires by itself");
        }
    }
}
