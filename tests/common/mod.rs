//! Test harness: real `peer` processes on loopback multicast driven by the real `testapp`.
//!
//! Each cluster gets its own multicast groups and ports, its own runtime directory (access
//! points) and its own temporary tree, so tests run in parallel. Run the suite with
//! `scripts/run-tests.sh`, which builds the binaries first and isolates the network.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// Where cargo put the binaries of this build.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace, or scripts/run-tests.sh)",
        path.display()
    );
    let built = mtime(&path);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The crate of `dbs-sim` is `sim/`, of `dbs-bench` `bench/`.
    let crate_dir = name.strip_prefix("dbs-").unwrap_or(name);
    for src in ["src", &format!("{crate_dir}/src")] {
        let newest = newest_mtime(&root.join(src));
        assert!(
            newest <= built,
            "{} is older than the sources in {src}: run cargo build --workspace (or scripts/run-tests.sh)",
            path.display()
        );
    }
    path
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .expect("mtime")
}

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for e in std::fs::read_dir(dir).expect("read source dir").flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            mtime(&p)
        };
        newest = newest.max(t);
    }
    newest
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

static NEXT_CLUSTER: AtomicU16 = AtomicU16::new(0);

/// A group of peers with their own channels and directories.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub runtime: PathBuf,
    pub channels: [SocketAddrV4; 3],
    pub version: String,
    peers: Vec<(u32, Child)>,
    /// Access points that are not the default `peer<ID>`.
    aps: std::collections::HashMap<u32, String>,
    /// Protocol versions that are not the cluster's default.
    versions: std::collections::HashMap<u32, String>,
    /// Shell wrappers peers are started under (see [`Cluster::spawn_wrapped`]).
    wrappers: std::collections::HashMap<u32, String>,
}

/// A finished TestApp run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The stdout JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {:?}", self.stdout))
    }

    /// Asserts exit code 0.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "testapp failed: stdout {:?} stderr {:?}",
            self.stdout, self.stderr
        );
        self
    }
}

impl Cluster {
    /// A cluster with no peers running yet.
    pub fn empty() -> Cluster {
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() as u16;
        let port = 20_000 + (pid % 400) * 100 + (n % 33) * 3;
        let group = |k: u8| Ipv4Addr::new(239, 77, (pid % 250) as u8, (n as u8 % 80) * 3 + k);
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = dir.path().join("run");
        std::fs::create_dir(&runtime).unwrap();
        Cluster {
            channels: [0, 1, 2].map(|k| SocketAddrV4::new(group(k as u8 + 1), port + k)),
            dir,
            runtime,
            version: "1.0".into(),
            peers: Vec::new(),
            aps: Default::default(),
            versions: Default::default(),
            wrappers: Default::default(),
        }
    }

    /// A cluster with peers 1..=n running.
    pub fn start(n: u32) -> Cluster {
        let mut c = Cluster::empty();
        for id in 1..=n {
            c.spawn(id, &[]);
        }
        c
    }

    /// Access point name of peer `id`.
    pub fn ap(&self, id: u32) -> String {
        self.aps
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("peer{id}"))
    }

    /// Starts peer `id` speaking protocol `version` (it keeps it across restarts).
    pub fn spawn_version(&mut self, id: u32, version: &str, extra: &[&str]) {
        self.versions.insert(id, version.to_string());
        self.spawn(id, extra);
    }

    /// Starts peer `id` on access point `ap` instead of `peer<ID>`.
    pub fn spawn_at(&mut self, id: u32, ap: &str, extra: &[&str]) {
        self.aps.insert(id, ap.to_string());
        self.spawn(id, extra);
    }

    /// A TCP port for an access point, unique to this cluster.
    pub fn tcp_port(&self) -> u16 {
        self.channels[2].port() + 40
    }

    /// Tree of peer `id`.
    pub fn peer_dir(&self, id: u32) -> PathBuf {
        self.dir.path().join(format!("peer{id}"))
    }

    /// The 9 positional peer arguments for `id`.
    pub fn peer_args(&self, id: u32) -> Vec<String> {
        let version = self.versions.get(&id).unwrap_or(&self.version).clone();
        let mut args = vec![version, id.to_string(), self.ap(id)];
        for ch in self.channels {
            args.push(ch.ip().to_string());
            args.push(ch.port().to_string());
        }
        args
    }

    /// Starts peer `id` with extra options and waits until it answers STATE.
    pub fn spawn(&mut self, id: u32, extra: &[&str]) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("peer{id}.log")))
            .unwrap();
        let mut command = match self.wrappers.get(&id) {
            Some(wrapper) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(wrapper)
                    .arg("peer-wrapper")
                    .arg(bin("peer"));
                c
            }
            None => Command::new(bin("peer")),
        };
        let child = command
            .args(self.peer_args(id))
            .arg("--dir")
            .arg(self.peer_dir(id))
            .arg("--log-level")
            .arg("debug")
            .args(extra)
            .env("DBS_RUNTIME_DIR", &self.runtime)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start peer");
        self.peers.push((id, child));
        let ap = self.ap(id);
        assert!(
            wait_until(Duration::from_secs(20), || {
                !self.alive(id) || self.testapp(&[&ap, "STATE"]).code == 0
            }) && self.alive(id),
            "peer {id} did not come up; log:\n{}",
            self.log(id)
        );
    }

    /// Peer `id`'s log so far.
    pub fn log(&self, id: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("peer{id}.log"))).unwrap_or_default()
    }

    /// Runs testapp with `args` (access point first).
    pub fn testapp(&self, args: &[&str]) -> Run {
        self.testapp_in_background(args)
            .join()
            .expect("testapp thread")
    }

    /// Starts testapp with `args` (access point first) on a thread; join it for its [`Run`].
    pub fn testapp_in_background(&self, args: &[&str]) -> std::thread::JoinHandle<Run> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let runtime = self.runtime.clone();
        std::thread::spawn(move || {
            Run::from(
                Command::new(bin("testapp"))
                    .args(args)
                    .env("DBS_RUNTIME_DIR", runtime)
                    .output()
                    .expect("run testapp"),
            )
        })
    }

    /// `STATE --json` of peer `id`, without its counters (what the peer persists).
    pub fn state(&self, id: u32) -> Value {
        let mut st = self.testapp(&["--json", &self.ap(id), "STATE"]).ok().json();
        let obj = st.as_object_mut().unwrap();
        obj.remove("counters");
        obj.remove("last_disk_error");
        st
    }

    /// The counters in peer `id`'s STATE.
    pub fn counters(&self, id: u32) -> Value {
        self.testapp(&["--json", &self.ap(id), "STATE"]).ok().json()["counters"].clone()
    }

    /// Waits until every peer in `ids` has no protocol instance in progress.
    pub fn assert_idle(&self, ids: &[u32]) {
        assert!(
            wait_until(Duration::from_secs(40), || ids
                .iter()
                .all(|&id| self.counters(id)["instances"] == 0)),
            "instances left: {:?}",
            ids.iter().map(|&id| self.counters(id)).collect::<Vec<_>>()
        );
    }

    fn take(&mut self, id: u32) -> Child {
        let i = self
            .peers
            .iter()
            .position(|(p, _)| *p == id)
            .expect("peer running");
        self.peers.remove(i).1
    }

    /// Waits until peer `id` has saved every metadata change (then a SIGKILL loses nothing).
    pub fn wait_saved(&self, id: u32) {
        assert!(
            wait_until(
                Duration::from_secs(10),
                || self.counters(id)["metadata_saved"] == true
            ),
            "peer {id} did not save its metadata"
        );
    }

    /// SIGKILLs peer `id`.
    pub fn kill(&mut self, id: u32) {
        let mut child = self.take(id);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERMs peer `id` and returns its exit code.
    pub fn stop(&mut self, id: u32) -> Option<i32> {
        let mut child = self.take(id);
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let status = child.wait().expect("wait peer");
        status.code()
    }

    /// Process id of peer `id`.
    pub fn pid(&self, id: u32) -> u32 {
        self.peers
            .iter()
            .find(|(p, _)| *p == id)
            .expect("peer running")
            .1
            .id()
    }

    /// Resident memory of peer `id` in KiB (VmRSS).
    pub fn rss_kb(&self, id: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(id))).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Starts peer `id` under a shell `wrapper` that gets the peer command line as "$@" (e.g.
    /// to run it in its own mount namespace).
    pub fn spawn_wrapped(&mut self, id: u32, wrapper: &str, extra: &[&str]) {
        self.wrappers.insert(id, wrapper.to_string());
        self.spawn(id, extra);
    }

    /// Whether peer `id` is still running.
    pub fn alive(&mut self, id: u32) -> bool {
        self.peers
            .iter_mut()
            .find(|(p, _)| *p == id)
            .is_some_and(|(_, c)| c.try_wait().ok().flatten().is_none())
    }

    /// Writes `len` pseudo-random bytes to a new file in the cluster directory.
    pub fn make_file(&self, name: &str, len: usize) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, random_bytes(len, len as u64 ^ 0x5eed)).unwrap();
        path
    }

    /// Multicasts raw bytes to channel `k` (0 MC, 1 MDB, 2 MDR) from loopback.
    pub fn inject(&self, k: usize, datagram: &[u8]) {
        let s = sender();
        s.send_to(datagram, self.channels[k])
            .expect("inject datagram");
    }

    /// (peer, chunk no) pairs stored for `file_id`, per every running peer's STATE.
    pub fn holders(&self, ids: &[u32], file_id: &str) -> Vec<Vec<u32>> {
        let mut per_chunk: Vec<Vec<u32>> = Vec::new();
        for &id in ids {
            let st = self.state(id);
            for c in st["stored"].as_array().unwrap() {
                if c["file_id"] == file_id {
                    let no = c["no"].as_u64().unwrap() as usize;
                    if per_chunk.len() <= no {
                        per_chunk.resize(no + 1, Vec::new());
                    }
                    per_chunk[no].push(id);
                }
            }
        }
        per_chunk
    }

    /// For each chunk of `file_id`, the peers among `ids` with its file on disk (running or
    /// not).
    pub fn copies_on_disk(&self, ids: &[u32], file_id: &str) -> BTreeMap<u32, Vec<u32>> {
        copies_on_disk(ids, |id| self.peer_dir(id), file_id)
    }

    /// Chunk files of `file_id` on disk at peer `id`.
    pub fn chunk_files(&self, id: u32, file_id: &str) -> Vec<PathBuf> {
        chunk_files_in(&self.peer_dir(id), file_id)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.peers {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            if std::env::var_os("DBS_KEEP_FAILED").is_some() {
                self.dir.disable_cleanup(true);
                eprintln!(
                    "---- kept {} (DBS_KEEP_FAILED) ----",
                    self.dir.path().display()
                );
            }
            for (id, _) in &self.peers {
                eprintln!("---- peer {id} log (tail) ----");
                let log = self.log(*id);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// The entry of `file_id` among the files a STATE document says its peer backed up.
pub fn backed_up_entry(state: &Value, file_id: &str) -> Value {
    state["backed_up"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file_id"] == file_id)
        .unwrap_or_else(|| panic!("{file_id} not backed up per {state}"))
        .clone()
}

/// Chunk files of `file_id` in the peer tree `tree`, sorted.
pub fn chunk_files_in(tree: &Path, file_id: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(tree.join("chunks").join(file_id))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// For each chunk of `file_id`, the peers among `ids` (trees given by `tree`) with its file on
/// disk. Temporary files are under tmp/, so every name found is a chunk number.
pub fn copies_on_disk(
    ids: &[u32],
    tree: impl Fn(u32) -> PathBuf,
    file_id: &str,
) -> BTreeMap<u32, Vec<u32>> {
    let mut copies = BTreeMap::<u32, Vec<u32>>::new();
    for &id in ids {
        for f in chunk_files_in(&tree(id), file_id) {
            let name = f.file_name().unwrap().to_str().unwrap();
            let no = name.parse().unwrap_or_else(|_| panic!("chunk file {f:?}"));
            copies.entry(no).or_default().push(id);
        }
    }
    copies
}

/// A UDP socket that multicasts out of loopback only.
pub fn sender() -> UdpSocket {
    dbs::net::open_sender(Ipv4Addr::LOCALHOST).expect("loopback multicast sender")
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}
