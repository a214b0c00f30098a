//! Multi-host harness: every peer runs in a network namespace of its own, like a host on a LAN.
//!
//! ```text
//!   peer 1 ns            bridge ns             peer 2 ns
//!  10.99.0.1 eth0 ==veth== p1 ─┐          ┌─ p2 ==veth== eth0 10.99.0.2
//!                              br0 (no IGMP snooping)
//!                      ...  p3 ─┘          └─ ...
//! ```
//!
//! - A namespace is held by a `unshare -n -- sleep` process ([`Holder`]); commands run in it
//!   through `nsenter -t <pid> -n`, and peers are started as `nsenter -t <pid> -n -- peer …`
//!   (nsenter execs, so the child *is* the peer). Nothing needs `/run/netns`.
//! - The bridge lives in its own namespace. Each veth pair is created directly inside its two
//!   namespaces (`ip link add eth0 netns <host> type veth peer name p<ID> netns <bridge>`), so
//!   no interface ever appears in the namespace running the tests, let alone on a real NIC:
//!   nothing created here can reach another machine. MTU 65535 (like `lo`), so a 64,000-byte
//!   chunk is one unfragmented frame and every fault rule acts on whole datagrams; a LAN made
//!   with [`Net::with_mtu`] has another MTU (at 1,500 a chunk is 44 IP fragments, as on
//!   Ethernet), and can be given per-host rate limits ([`Net::set_rate`], `tc tbf`) and loss of
//!   single frames on the bridge ([`Net::set_frame_loss`], a `bridge` nftables table).
//! - Peers run with `--iface 10.99.0.<ID>`; multicast works across the bridge because IGMP
//!   snooping is off (every frame is flooded to every port).
//! - Faults ([`Faults`]) are nftables rules in the peer's own namespace, on UDP only (TCP of
//!   RESTOREENH is reliable by itself): `inet dbsfault` drops incoming / outgoing datagrams with
//!   `numgen random`, `netdev dbsdup` duplicates outgoing datagrams with `dup to "eth0"` on the
//!   egress hook (the copy is marked so that it is not duplicated again). Every rule has a
//!   counter ([`Net::fault_counts`]) so a test can check the faults really happened.
//! - [`Net::cut`] sets the bridge side of a peer's veth down: the peer's `eth0` loses its
//!   carrier (a pulled cable); [`Net::reconnect`] sets it up again. [`Net::iface_down`] /
//!   [`Net::iface_up`] set the peer's own `eth0` down / up instead (its sends then fail).
//! - Peers can be stopped (SIGTERM), killed and started again in the same namespace.
//! - Drop kills the peers, deletes the veth pairs and the bridge, and kills the holders (which
//!   destroys the namespaces), also when the test failed. A failed test prints the tail of every
//!   peer log and keeps the logs (only) in a directory it names.
//!
//! Anything that cannot be set up (no `nft`, no permission to create namespaces, …) panics
//! with a message saying so: these tests fail, they never pass without running.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Run, bin, chunk_files_in, copies_on_disk, random_bytes, wait_until};

/// The peer's interface inside its namespace.
pub const IFACE: &str = "eth0";
const BRIDGE: &str = "br0";
/// The links' MTU unless a LAN says otherwise.
const MTU: u32 = 65_535;
/// Mark of duplicated datagrams, so that a copy is not duplicated again.
const DUP_MARK: &str = "0x00d0b1e5";
/// A namespace holder lives at most this long, even if the test process dies without Drop.
const HOLDER_LIFETIME_S: &str = "600";

/// Path of a system tool, also looking in the sbin directories.
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "netns harness: `{name}` not found; the multi-host fault tests need ip \
                 (iproute2), nft (nftables), nsenter and unshare (util-linux). \
                 scripts/run-tests.sh installs them."
            )
        })
}

/// Runs `cmd` (feeding it `stdin`); its stdout, or its command line and stderr.
fn try_run(mut cmd: Command, stdin: Option<&str>) -> Result<String, String> {
    let line = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {line}: {e}"))?;
    if let Some(text) = stdin {
        let written = child.stdin.take().unwrap().write_all(text.as_bytes());
        if let Err(e) = written {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("writing to {line}: {e}"));
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {line}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{line} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdin.map(|s| format!("\ninput:\n{s}")).unwrap_or_default()
        ))
    }
}

/// Runs `cmd`, panicking with its command line and stderr when it fails.
fn run(cmd: Command, stdin: Option<&str>, what: &str) -> String {
    try_run(cmd, stdin).unwrap_or_else(|e| panic!("netns harness: cannot {what}: {e}"))
}

fn net_ns_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// How `tc` prints a rate of `mbit` Mbit/s ("1Gbit", "100Mbit").
fn tc_rate(mbit: u32) -> String {
    if mbit.is_multiple_of(1000) {
        format!("{}Gbit", mbit / 1000)
    } else {
        format!("{mbit}Mbit")
    }
}

/// A process holding a fresh network namespace: `unshare -n -- sleep`.
pub struct Holder {
    child: Child,
    what: String,
}

impl Holder {
    /// Creates a network namespace (for `what`, in messages) and waits until it exists.
    pub fn new(what: &str) -> Holder {
        let mut child = Command::new(tool("unshare"))
            .args(["-n", "--", "sleep", HOLDER_LIFETIME_S])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("netns harness: cannot run unshare for {what}: {e}"));
        let ours = net_ns_of(std::process::id());
        let pid = child.id();
        let mut exited = None;
        let ok = wait_until(Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            // After unshare(2) and exec: a namespace of its own, and the process is sleep.
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            comm.trim() == "sleep" && net_ns_of(pid).is_some() && net_ns_of(pid) != ours
        });
        if let Some(status) = exited {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!(
                "netns harness: cannot create a network namespace for {what} \
                 (`unshare -n` exited with {status}: {}). The multi-host fault tests need \
                 root (CAP_SYS_ADMIN and CAP_NET_ADMIN); run them through scripts/run-tests.sh \
                 as root.",
                err.trim()
            );
        }
        if !ok {
            let _ = child.kill();
            let _ = child.wait();
            panic!("netns harness: the namespace for {what} did not appear within 10 s");
        }
        Holder {
            child,
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A command run inside this namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(tool("nsenter"));
        cmd.arg("-t")
            .arg(self.pid().to_string())
            .arg("-n")
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `ip ARGS` in this namespace.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut cmd = self.command(&tool("ip"));
        cmd.args(args);
        run(
            cmd,
            None,
            &format!("configure the namespace of {}", self.what),
        )
    }

    /// Loads an nftables script (`nft -f -`) in this namespace.
    pub fn nft(&self, script: &str) {
        let mut cmd = self.command(&tool("nft"));
        cmd.args(["-f", "-"]);
        run(
            cmd,
            Some(script),
            &format!("load nftables rules in the namespace of {}", self.what),
        );
    }

    /// `nft -j ARGS` in this namespace, parsed.
    pub fn nft_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut cmd = self.command(&tool("nft"));
        cmd.arg("-j").args(args);
        let out = try_run(cmd, None)?;
        serde_json::from_str(&out).map_err(|e| format!("nft -j output is not JSON: {e}"))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Faults injected at one peer, in percent of UDP datagrams (0–100).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Incoming datagrams dropped.
    pub loss_in: u8,
    /// Outgoing datagrams dropped.
    pub loss_out: u8,
    /// Outgoing datagrams sent twice.
    pub dup_out: u8,
}

impl Faults {
    /// `pct` % of the incoming datagrams lost.
    pub fn loss(pct: u8) -> Faults {
        Faults {
            loss_in: pct,
            ..Faults::default()
        }
    }
}

/// What the fault rules of one peer did so far (packets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub dropped_in: u64,
    pub dropped_out: u64,
    pub duplicated: u64,
}

/// A LAN of peers, one namespace each, joined by a bridge.
pub struct Net {
    pub dir: tempfile::TempDir,
    pub runtime: PathBuf,
    pub channels: [SocketAddrV4; 3],
    name: String,
    /// Holders of the hosts' namespaces, by peer id (dropped before the bridge).
    hosts: BTreeMap<u32, Holder>,
    bridge: Holder,
    peers: BTreeMap<u32, Child>,
    versions: BTreeMap<u32, String>,
    /// MTU of the bridge and of both ends of every veth pair.
    mtu: String,
}

impl Net {
    /// A LAN with no host yet; `name` labels messages and kept logs.
    pub fn new(name: &str) -> Net {
        Net::with_mtu(name, MTU)
    }

    /// A LAN whose links have MTU `mtu` (1,500: Ethernet; 9,000: jumbo frames).
    pub fn with_mtu(name: &str, mtu: u32) -> Net {
        let mtu = mtu.to_string();
        for t in ["ip", "nft", "nsenter", "unshare"] {
            tool(t);
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("dbs-netns-{name}-"))
            .tempdir()
            .expect("temp dir");
        let runtime = dir.path().join("run");
        std::fs::create_dir(&runtime).unwrap();
        let bridge = Holder::new(&format!("{name}: the bridge"));
        bridge.ip(&["link", "set", "lo", "up"]);
        bridge.ip(&[
            "link",
            "add",
            BRIDGE,
            "mtu",
            &mtu,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
            "stp_state",
            "0",
        ]);
        bridge.ip(&["link", "set", BRIDGE, "up"]);
        // Every LAN is its own broadcast domain: the same groups and addresses in each.
        let channels =
            [1, 2, 3].map(|k| SocketAddrV4::new(Ipv4Addr::new(239, 99, 0, k), 9000 + u16::from(k)));
        Net {
            dir,
            runtime,
            channels,
            name: name.to_string(),
            hosts: BTreeMap::new(),
            bridge,
            peers: BTreeMap::new(),
            versions: BTreeMap::new(),
            mtu,
        }
    }

    /// Address of peer `id` on the LAN.
    pub fn addr(id: u32) -> Ipv4Addr {
        assert!((1..=250).contains(&id), "peer ids 1..=250 on this LAN");
        Ipv4Addr::new(10, 99, 0, id as u8)
    }

    fn port(id: u32) -> String {
        format!("p{id}")
    }

    /// Creates the namespace of host `id` and plugs it into the bridge (once).
    fn host(&mut self, id: u32) -> &Holder {
        if !self.hosts.contains_key(&id) {
            let h = Holder::new(&format!("{}: peer {id}", self.name));
            let port = Net::port(id);
            let (hp, bp) = (h.pid().to_string(), self.bridge.pid().to_string());
            let mtu = &self.mtu;
            // Both ends are created directly in their namespaces.
            h.ip(&[
                "link", "add", IFACE, "netns", &hp, "mtu", mtu, "type", "veth", "peer", "name",
                &port, "netns", &bp, "mtu", mtu,
            ]);
            self.bridge
                .ip(&["link", "set", &port, "master", BRIDGE, "up"]);
            let cidr = format!("{}/24", Net::addr(id));
            h.ip(&["link", "set", "lo", "up"]);
            h.ip(&["link", "set", IFACE, "addrgenmode", "none"]);
            h.ip(&["addr", "add", &cidr, "dev", IFACE]);
            h.ip(&["link", "set", IFACE, "up"]);
            let link = h.ip(&["-o", "link", "show", IFACE]);
            assert!(
                link.contains(&format!(" mtu {mtu} ")),
                "netns harness: {IFACE} of peer {id} lacks MTU {mtu}: {link}"
            );
            let shown = h.ip(&["-o", "-4", "addr", "show", "dev", IFACE]);
            assert!(
                shown.contains(&cidr),
                "netns harness: {IFACE} of peer {id} has no {cidr}: {shown}"
            );
            let link = self.bridge.ip(&["-o", "link", "show", &port]);
            assert!(
                link.contains(&format!("master {BRIDGE}")),
                "netns harness: {port} is not on {BRIDGE}: {link}"
            );
            self.hosts.insert(id, h);
        }
        &self.hosts[&id]
    }

    /// Field `field` of the `Ip:` line of host `id`'s `/proc/net/snmp` (e.g. `ReasmOKs`:
    /// datagrams reassembled from IP fragments).
    pub fn ip_stat(&mut self, id: u32, field: &str) -> u64 {
        self.snmp_stat(id, "Ip:", field)
    }

    /// A counter of the UDP line of `/proc/net/snmp` in peer `id`'s namespace (e.g.
    /// `RcvbufErrors`).
    pub fn udp_stat(&mut self, id: u32, field: &str) -> u64 {
        self.snmp_stat(id, "Udp:", field)
    }

    fn snmp_stat(&mut self, id: u32, line: &str, field: &str) -> u64 {
        let mut cmd = self.host(id).command(&tool("cat"));
        cmd.arg("/proc/net/snmp");
        let snmp = run(cmd, None, &format!("read /proc/net/snmp of peer {id}"));
        let mut rows = snmp.lines().filter(|l| l.starts_with(line));
        let (names, values) = (rows.next().unwrap_or(""), rows.next().unwrap_or(""));
        let at = names.split_whitespace().position(|n| n == field);
        at.and_then(|i| values.split_whitespace().nth(i)?.parse().ok())
            .unwrap_or_else(|| panic!("no {line} {field} in /proc/net/snmp of peer {id}:\n{snmp}"))
    }

    /// CPU seconds (user + system, all threads) and peak resident memory in KiB (`VmHWM`) of
    /// peer `id`'s process so far.
    pub fn usage(&self, id: u32) -> (f64, u64) {
        let pid = self.peers[&id].id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("peer's stat");
        // Fields after the command name (which may hold spaces): utime and stime are the 12th
        // and 13th of them, in clock ticks (100 a second on Linux).
        let after = stat.rsplit_once(')').expect("stat fields").1;
        let ticks: Vec<u64> = after
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().expect("tick count"))
            .collect();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        (ticks.iter().sum::<u64>() as f64 / 100.0, hwm)
    }

    /// Access point of peer `id`.
    pub fn ap(&self, id: u32) -> String {
        format!("peer{id}")
    }

    /// Tree of peer `id`.
    pub fn peer_dir(&self, id: u32) -> PathBuf {
        self.dir.path().join(format!("peer{id}"))
    }

    fn log_path(&self, id: u32) -> PathBuf {
        self.dir.path().join(format!("peer{id}.log"))
    }

    /// Peer `id`'s log so far.
    pub fn log(&self, id: u32) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Starts peer `id` (protocol `version`, kept across restarts when `None`) in its namespace
    /// and waits until it answers STATE.
    pub fn spawn(&mut self, id: u32, version: Option<&str>, extra: &[&str]) {
        if let Some(v) = version {
            self.versions.insert(id, v.to_string());
        }
        let version = self
            .versions
            .get(&id)
            .cloned()
            .expect("a version for a new peer");
        let mut args = vec![version, id.to_string(), self.ap(id)];
        for ch in self.channels {
            args.push(ch.ip().to_string());
            args.push(ch.port().to_string());
        }
        args.extend(
            [
                "--iface".into(),
                Net::addr(id).to_string(),
                "--dir".into(),
                self.peer_dir(id).display().to_string(),
                "--log-level".into(),
                "debug".into(),
            ]
            .into_iter()
            .chain(extra.iter().map(|s| s.to_string())),
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .unwrap();
        let peer = bin("peer");
        let runtime = self.runtime.clone();
        let mut cmd = self.host(id).command(&peer);
        cmd.args(&args)
            .env("DBS_RUNTIME_DIR", runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("start nsenter peer");
        assert!(
            self.peers.insert(id, child).is_none(),
            "peer {id} already running"
        );
        let ap = self.ap(id);
        assert!(
            wait_until(Duration::from_secs(20), || {
                !self.alive(id) || self.testapp(&[&ap, "STATE"]).code == 0
            }) && self.alive(id),
            "peer {id} did not come up in its namespace; log:\n{}",
            self.log(id)
        );
    }

    /// Whether peer `id` is running.
    pub fn alive(&mut self, id: u32) -> bool {
        self.peers
            .get_mut(&id)
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGTERMs peer `id` and returns its exit code.
    pub fn stop(&mut self, id: u32) -> Option<i32> {
        let mut child = self.peers.remove(&id).expect("peer running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().expect("wait peer").code()
    }

    /// SIGKILLs peer `id`.
    pub fn kill(&mut self, id: u32) {
        let mut child = self.peers.remove(&id).expect("peer running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Replaces the fault rules of peer `id`'s namespace.
    pub fn set_faults(&mut self, id: u32, f: Faults) {
        for pct in [f.loss_in, f.loss_out, f.dup_out] {
            assert!(pct <= 100, "fault percentages are 0..=100");
        }
        // `< 0` matches nothing: the rule is there (with its counter) whatever the percentage.
        let rule = |pct: u8| format!("meta l4proto udp numgen random mod 100 < {pct}");
        // Declaring then deleting the tables makes the script work whether they exist or not;
        // nft applies it as one transaction.
        let script = format!(
            r#"table inet dbsfault {{}}
delete table inet dbsfault
table netdev dbsdup {{}}
delete table netdev dbsdup
table inet dbsfault {{
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname "{IFACE}" {} counter drop comment "loss-in"
    }}
    chain output {{
        type filter hook output priority 0; policy accept;
        oifname "{IFACE}" {} counter drop comment "loss-out"
    }}
}}
table netdev dbsdup {{
    chain egress {{
        type filter hook egress device "{IFACE}" priority 0; policy accept;
        meta mark != {DUP_MARK} {} meta mark set {DUP_MARK} counter dup to "{IFACE}" comment "dup-out"
    }}
}}
"#,
            rule(f.loss_in),
            rule(f.loss_out),
            rule(f.dup_out),
        );
        self.host(id).nft(&script);
    }

    /// Sets the same faults at every peer in `ids`.
    pub fn set_faults_all(&mut self, ids: &[u32], f: Faults) {
        for &id in ids {
            self.set_faults(id, f);
        }
    }

    /// Packets the fault rules of peer `id` dropped / duplicated so far.
    pub fn fault_counts(&self, id: u32) -> FaultCounts {
        self.try_fault_counts(id).unwrap_or_else(|e| {
            panic!("netns harness: reading the fault counters of peer {id}: {e}")
        })
    }

    fn try_fault_counts(&self, id: u32) -> Result<FaultCounts, String> {
        let h = self.hosts.get(&id).ok_or("no such host")?;
        let mut c = FaultCounts::default();
        for table in [["inet", "dbsfault"], ["netdev", "dbsdup"]] {
            let doc = h.nft_json(&["list", "table", table[0], table[1]])?;
            for item in doc["nftables"].as_array().into_iter().flatten() {
                let rule = &item["rule"];
                let Some(exprs) = rule["expr"].as_array() else {
                    continue;
                };
                let packets: u64 = exprs
                    .iter()
                    .filter_map(|e| e["counter"]["packets"].as_u64())
                    .sum();
                match rule["comment"].as_str() {
                    Some("loss-in") => c.dropped_in += packets,
                    Some("loss-out") => c.dropped_out += packets,
                    Some("dup-out") => c.duplicated += packets,
                    _ => {}
                }
            }
        }
        Ok(c)
    }

    /// Drops `per_mille` of the UDP frames the bridge forwards, one frame at a time (a
    /// `bridge` family nftables table in the bridge's namespace): on a LAN with a small MTU a
    /// datagram loses one fragment, as on Ethernet, not all of them. 0 removes no rule but
    /// drops nothing.
    pub fn set_frame_loss(&self, per_mille: u32) {
        assert!(per_mille <= 1000, "frame loss is in per mille");
        self.bridge.nft(&format!(
            "table bridge dbsframes {{}}\n\
             flush table bridge dbsframes\n\
             table bridge dbsframes {{\n\
                 chain drop_frames {{\n\
                     type filter hook forward priority 0;\n\
                     ip protocol udp numgen random mod 1000 < {per_mille} counter drop \
                         comment \"frame-loss\"\n\
                 }}\n\
             }}\n"
        ));
    }

    /// Frames the bridge dropped by [`Net::set_frame_loss`] so far.
    pub fn frames_dropped(&self) -> u64 {
        let doc = self
            .bridge
            .nft_json(&["list", "table", "bridge", "dbsframes"])
            .unwrap_or_else(|e| panic!("netns harness: reading the frame-loss counter: {e}"));
        doc["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|item| item["rule"]["comment"] == "frame-loss")
            .flat_map(|item| item["rule"]["expr"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["counter"]["packets"].as_u64())
            .sum()
    }

    /// Sets the sysctl `key` (e.g. `net.ipv4.ipfrag_time`) to `value` in host `id`'s namespace
    /// (the network sysctls are per namespace).
    pub fn sysctl(&mut self, id: u32, key: &str, value: &str) {
        let mut cmd = self.host(id).command(&tool("sysctl"));
        cmd.args(["-q", "-w", &format!("{key}={value}")]);
        run(cmd, None, &format!("set {key} for peer {id}"));
    }

    /// Shapes host `id`'s link to `mbit` Mbit/s each way, as a switch port of that speed
    /// would: `tc tbf` on its `eth0` (what it sends) and on the bridge's side of its veth
    /// (what the bridge forwards to it, several senders together).
    pub fn set_rate(&mut self, id: u32, mbit: u32) {
        let rate = format!("{mbit}mbit");
        let port = Net::port(id);
        self.host(id);
        for (holder, dev) in [(&self.hosts[&id], IFACE), (&self.bridge, port.as_str())] {
            let mut cmd = holder.command(&tool("tc"));
            cmd.args(["qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate])
                .args(["burst", "256kb", "latency", "50ms"]);
            run(cmd, None, &format!("shape {dev} of peer {id}"));
            let mut show = holder.command(&tool("tc"));
            show.args(["qdisc", "show", "dev", dev]);
            let shown = run(show, None, &format!("show the qdisc of {dev}"));
            assert!(
                shown.contains("tbf") && shown.contains(&format!("rate {}", tc_rate(mbit))),
                "netns harness: {dev} of peer {id} is not shaped to {rate}: {shown}"
            );
        }
    }

    /// A command running `program` in host `id`'s namespace (e.g. a raw sender or receiver to
    /// measure the LAN itself).
    pub fn command_in(&mut self, id: u32, program: &Path) -> Command {
        self.host(id).command(program)
    }

    /// Cuts peer `id` off the LAN: the bridge side of its veth goes down, so its `eth0` loses
    /// its carrier. The peer keeps running.
    pub fn cut(&mut self, id: u32) {
        self.host(id);
        self.bridge.ip(&["link", "set", &Net::port(id), "down"]);
    }

    /// Plugs peer `id` back in.
    pub fn reconnect(&mut self, id: u32) {
        self.host(id);
        self.bridge.ip(&["link", "set", &Net::port(id), "up"]);
    }

    /// Names of the links in peer `id`'s namespace.
    pub fn links(&mut self, id: u32) -> Vec<String> {
        self.host(id)
            .ip(&["-o", "link", "show"])
            .lines()
            .map(|l| {
                let name = l.split(':').nth(1).unwrap_or("").trim();
                name.split('@').next().unwrap_or("").to_string()
            })
            .collect()
    }

    /// Process ids of the peers and of the namespace holders (bridge included).
    pub fn pids(&self) -> Vec<u32> {
        self.peers
            .values()
            .map(Child::id)
            .chain(self.hosts.values().map(Holder::pid))
            .chain([self.bridge.pid()])
            .collect()
    }

    /// Sets peer `id`'s own interface administratively down (`ip link set eth0 down` in its
    /// namespace): unlike [`Net::cut`], its sends fail (no route) until [`Net::iface_up`].
    pub fn iface_down(&mut self, id: u32) {
        self.host(id).ip(&["link", "set", IFACE, "down"]);
    }

    /// Sets peer `id`'s interface up again (its address and multicast memberships stay).
    pub fn iface_up(&mut self, id: u32) {
        self.host(id).ip(&["link", "set", IFACE, "up"]);
    }

    /// Runs testapp (in the test's own namespace: the access point is a Unix socket, which
    /// every namespace sees).
    pub fn testapp(&self, args: &[&str]) -> Run {
        self.testapp_in_background(args)
            .join()
            .expect("testapp thread")
    }

    /// [`Net::testapp`] on a thread; join it for its [`Run`].
    pub fn testapp_in_background(&self, args: &[&str]) -> std::thread::JoinHandle<Run> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let runtime = self.runtime.clone();
        std::thread::spawn(move || {
            let out = Command::new(bin("testapp"))
                .args(args)
                .env("DBS_RUNTIME_DIR", runtime)
                .output()
                .expect("run testapp");
            Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
    }

    /// `testapp --json <ap of id> ARGS`, which must succeed; its JSON document.
    pub fn run_ok(&self, id: u32, args: &[&str]) -> Value {
        let ap = self.ap(id);
        let mut all = vec!["--json", ap.as_str()];
        all.extend_from_slice(args);
        self.testapp(&all).ok().json()
    }

    /// Runs restore operation `op` of `path` on peer `home`, checks that the restored file
    /// equals `path`, and removes it.
    pub fn restore_identical(&self, home: u32, op: &str, path: &Path) {
        let doc = self.run_ok(home, &[op, path.to_str().unwrap()]);
        let dest = doc["restored_to"].as_str().expect("restored_to");
        assert!(
            std::fs::read(dest).unwrap() == std::fs::read(path).unwrap(),
            "{op}: {dest} differs from {}",
            path.display()
        );
        std::fs::remove_file(dest).unwrap();
    }

    /// Peer `id`'s STATE document (counters included).
    pub fn state(&self, id: u32) -> Value {
        self.run_ok(id, &["STATE"])
    }

    /// Waits until every peer in `ids` has no protocol instance in progress.
    pub fn wait_idle(&self, ids: &[u32], timeout: Duration) {
        assert!(
            wait_until(timeout, || ids
                .iter()
                .all(|&id| self.state(id)["counters"]["instances"] == 0)),
            "instances left: {:?}",
            ids.iter()
                .map(|&id| self.state(id)["counters"].clone())
                .collect::<Vec<_>>()
        );
    }

    /// Writes `len` pseudo-random bytes to a new file.
    pub fn make_file(&self, name: &str, len: usize) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, random_bytes(len, len as u64 ^ 0xfa17)).unwrap();
        path
    }

    /// Chunk files of `file_id` on disk at peer `id`.
    pub fn chunk_files(&self, id: u32, file_id: &str) -> Vec<PathBuf> {
        chunk_files_in(&self.peer_dir(id), file_id)
    }

    /// For each chunk of `file_id`, the peers among `ids` with its file on disk.
    pub fn copies_on_disk(&self, ids: &[u32], file_id: &str) -> BTreeMap<u32, Vec<u32>> {
        copies_on_disk(ids, |id| self.peer_dir(id), file_id)
    }

    /// For each chunk of `file_id`, the peers among `ids` whose STATE lists it as stored.
    pub fn holders_by_state(&self, ids: &[u32], file_id: &str) -> BTreeMap<u32, Vec<u32>> {
        let mut holders = BTreeMap::<u32, Vec<u32>>::new();
        for &id in ids {
            let st = self.state(id);
            for c in st["stored"].as_array().unwrap() {
                if c["file_id"] == file_id {
                    holders
                        .entry(c["no"].as_u64().unwrap() as u32)
                        .or_default()
                        .push(id);
                }
            }
        }
        holders
    }

    /// How long the test has taken, for messages.
    pub fn since(start: Instant) -> String {
        format!("{:.1} s", start.elapsed().as_secs_f64())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in self.peers.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let ids: Vec<u32> = self.hosts.keys().copied().collect();
            for &id in &ids {
                if let Ok(c) = self.try_fault_counts(id) {
                    eprintln!("---- {}: peer {id} fault counters: {c:?} ----", self.name);
                }
                eprintln!("---- {}: peer {id} log (tail) ----", self.name);
                let log = self.log(id);
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
            // Keep the logs (not the chunks) for a closer look.
            if let Ok(keep) = tempfile::Builder::new()
                .prefix(&format!("dbs-netns-{}-logs-", self.name))
                .tempdir()
            {
                let keep = keep.keep();
                for &id in &ids {
                    let _ = std::fs::copy(self.log_path(id), keep.join(format!("peer{id}.log")));
                }
                eprintln!(
                    "---- {}: peer logs kept in {} ----",
                    self.name,
                    keep.display()
                );
            }
        }
        // The veth pairs and the bridge, then the namespaces themselves (killing a holder
        // destroys its namespace and whatever is left in it).
        for &id in self.hosts.keys() {
            let mut cmd = self.bridge.command(&tool("ip"));
            cmd.args(["link", "del", &Net::port(id)])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = cmd.status();
        }
        let mut cmd = self.bridge.command(&tool("ip"));
        cmd.args(["link", "del", BRIDGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
        self.hosts.clear();
    }
}
