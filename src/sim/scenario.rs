//! A simulated run: its settings ([`Scenario`]), running it to the end ([`run`]), and what it
//! found ([`Summary`]).

use std::io::Write;
use std::time::{Duration, Instant};

use super::world::World;
use crate::protocol::Version;

/// Which protocol versions the peers run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    /// Every peer 1.0.
    V1,
    /// Every peer 2.0.
    V2,
    /// Alternating 1.0 and 2.0 (peer 1 runs 1.0).
    Mixed,
}

/// A partition: from `at`, for `length`, the peers below `split` of the group (a fraction)
/// cannot reach the others.
#[derive(Clone, Copy, Debug)]
pub struct PartitionSpec {
    /// When it starts.
    pub at: Duration,
    /// How long it lasts.
    pub length: Duration,
    /// Fraction of the peers on the first side.
    pub split: f64,
}

/// Everything a simulated run depends on; the same scenario gives the same run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Seed of every random choice.
    pub seed: u64,
    /// Peers in the group.
    pub peers: u32,
    /// Files backed up (each from a random home).
    pub files: usize,
    /// The home of every file, instead of a random one.
    pub home: Option<u32>,
    /// Largest file size in bytes.
    pub size: u64,
    /// Smallest file size in bytes (sizes are drawn between it and `size`); `None`: half of
    /// `size`.
    pub min_size: Option<u64>,
    /// Replication degree asked for.
    pub degree: u8,
    /// Protocol versions.
    pub versions: Versions,
    /// Probability that one delivery of a datagram to one peer is lost.
    pub loss: f64,
    /// Probability that one delivery is duplicated.
    pub dup: f64,
    /// Crashes per peer per simulated minute, during the workload.
    pub crash_rate: f64,
    /// Crashes at given times: (when, peer index, how long it stays down; `None`: for good).
    pub crashes: Vec<(Duration, u32, Option<Duration>)>,
    /// A partition, if any.
    pub partition: Option<PartitionSpec>,
    /// RECLAIMs to half a random peer's space during the workload (given back 30 s later).
    pub reclaims: usize,
    /// Share of the files deleted after their restore.
    pub delete_share: f64,
    /// Files' first operations are spread over this long.
    pub spread: Duration,
    /// Send rate of every peer, bytes/s (the real default).
    pub rate: u64,
    /// Network delay of every delivery, plus a random part up to `jitter` (reordering).
    pub delay: Duration,
    /// See `delay`.
    pub jitter: Duration,
    /// Bytes a peer's receive queue holds (its socket buffer); a datagram past it is dropped.
    pub rx_queue_bytes: usize,
    /// Time a peer takes per datagram received...
    pub proc_per_datagram: Duration,
    /// ...plus its size at this rate (bytes/s).
    pub proc_bytes_per_sec: f64,
    /// Delay of a TCP message.
    pub tcp_delay: Duration,
    /// Delay of a group commit after it was asked for.
    pub commit_delay: Duration,
    /// Each peer's disk size in bytes.
    pub disk_bytes: u64,
    /// The workload must end by then (virtual time), or by an hour after its last planned
    /// start, whichever is later.
    pub max_time: Duration,
    /// After the workload, the group has this long to become quiescent.
    pub settle: Duration,
    /// At this time, this peer's disk dies; it comes back on an empty one 2 s later and runs
    /// RECOVER 3 s after that, then restores every file whose backup had completed.
    pub lose_disk: Option<(Duration, u32)>,
    /// Share of the files whose content changes once they are backed up whole: the new
    /// content is backed up as a new version (the previous one must stay until it is whole).
    pub new_versions: f64,
    /// Self-healing is checked: after the workload the group settles until every
    /// acknowledged chunk of a file not deleted is back at its degree among the peers that did
    /// not leave (a violation if not), and the summary tells how long after the latest
    /// departure that took and the MDB bytes sent since the first.
    pub heal: bool,
    /// Every peer is a member of one secure group and has a data key of its own: messages are
    /// sealed, chunks encrypted, deletions proved (`crate::secure`).
    pub secure: bool,
    /// Attackers: whenever a backup is reported whole, every peer receives forged DELETEs of
    /// its file in its home's name, one not sealed (anyone on the LAN) and, in a secure group,
    /// one sealed with the group key but without the home's proof (a rogue member). In a
    /// plain group the first is obeyed and acknowledged chunks are lost (violations); a
    /// secure group must lose nothing.
    pub forge_deletes: bool,
    /// The path MTU: enhanced peers send chunk messages larger than a frame as pieces, each a
    /// datagram lost (or not) on its own. `None`: every message whole.
    pub mtu: Option<usize>,
    /// Share of TCP sends of CHUNK bodies that find the initiator's connection queue full (it
    /// reads slower than its holders send): those holders send nothing.
    pub tcp_busy: f64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            seed: 1,
            peers: 4,
            files: 4,
            home: None,
            size: 200_000,
            min_size: None,
            degree: 2,
            versions: Versions::V2,
            loss: 0.0,
            dup: 0.0,
            crash_rate: 0.0,
            crashes: Vec::new(),
            partition: None,
            reclaims: 0,
            delete_share: 0.5,
            spread: Duration::from_secs(10),
            rate: 250_000_000,
            delay: Duration::from_micros(100),
            jitter: Duration::from_micros(400),
            rx_queue_bytes: 32 << 20,
            proc_per_datagram: Duration::from_micros(20),
            proc_bytes_per_sec: 1e9,
            tcp_delay: Duration::from_micros(300),
            commit_delay: Duration::from_millis(5),
            disk_bytes: u64::MAX / 4,
            max_time: Duration::from_secs(3_600),
            settle: Duration::from_secs(600),
            lose_disk: None,
            new_versions: 0.0,
            heal: false,
            secure: false,
            forge_deletes: false,
            mtu: None,
            tcp_busy: 0.0,
        }
    }
}

impl Scenario {
    /// The version peer `i` runs.
    pub fn version_of(&self, i: u32) -> Version {
        match self.versions {
            Versions::V1 => Version::V1_0,
            Versions::V2 => Version::V2_0,
            Versions::Mixed if i.is_multiple_of(2) => Version::V1_0,
            Versions::Mixed => Version::V2_0,
        }
    }

    /// How long the planned disturbances (crashes, reclaims) are spread over.
    pub fn horizon(&self) -> Duration {
        self.spread + Duration::from_secs(20)
    }
}

/// What a run found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// Peers.
    pub peers: u32,
    /// Client operations started.
    pub ops: u64,
    /// Operations that ended in failure (chunks short, restore incomplete, refused).
    pub ops_failed: u64,
    /// The first failures.
    pub failures: Vec<String>,
    /// Chunks VERIFY checked, and of them those it proved at their degree.
    pub verified_chunks: (u64, u64),
    /// Files a RECOVER got back into their home's catalog.
    pub recovered_files: usize,
    /// Virtual time at the end.
    pub virtual_secs: f64,
    /// Wall-clock time the run took.
    pub wall_secs: f64,
    /// Datagrams sent, all peers and channels.
    pub datagrams: u64,
    /// Events processed.
    pub events: u64,
    /// What the network did.
    pub net: super::world::NetCounts,
    /// Copies of deleted files left on enhanced peers their home never heard from.
    pub unknown_stale_copies: usize,
    /// Each file at the end.
    pub files: Vec<FileOutcome>,
    /// What each peer keeps at the end (`None`: down for good).
    pub peer_state: Vec<Option<PeerState>>,
    /// Broken invariants (empty when every invariant held).
    pub violations: Vec<String>,
    /// SHA-256 of the event trace: the same seed gives the same digest.
    pub trace_digest: String,
    /// With [`Scenario::heal`]: seconds from the latest departure until every acknowledged
    /// chunk was back at its degree among the living (`None`: never, or nobody left).
    pub healed_after: Option<f64>,
    /// With [`Scenario::heal`]: MDB bytes (PUTCHUNKs) sent from the first departure to the
    /// end.
    pub repair_mdb_bytes: u64,
}

impl Summary {
    /// A replay hint for a failing run.
    pub fn replay_hint(&self) -> String {
        format!(
            "replay with DBS_SIM_SEED={} (seed {})",
            self.seed, self.seed
        )
    }
}

/// What one peer keeps at the end of a run: the state that must not grow with time.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerState {
    /// Chunks it stores for others.
    pub stored_chunks: usize,
    /// Of those, chunks of other peers' catalog generations.
    pub catalog_chunks: usize,
    /// Files it backed up (its catalog's entries).
    pub files: usize,
    /// Generations of its own catalog it keeps (each backed up into the group).
    pub catalogs: usize,
    /// Enhanced deletions still pending.
    pub pending_deletes: usize,
    /// Deletions remembered.
    pub tombstones: usize,
    /// Enhanced peers known.
    pub enhanced_peers: usize,
    /// Protocol instances in progress.
    pub instances: usize,
    /// Chunk files on its disk.
    pub chunk_files: usize,
}

/// One file at the end of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileOutcome {
    /// Index of its home peer.
    pub home: u32,
    /// Whether it was deleted.
    pub deleted: bool,
    /// Durable copies of each of its chunks, over all disks.
    pub copies: Vec<usize>,
    /// Copies of each chunk on peers that are up at the end.
    pub live_copies: Vec<usize>,
    /// The home's count of each chunk's holders (its perceived degree), if the home is up and
    /// still has the file.
    pub perceived: Option<Vec<usize>>,
}

/// Runs a scenario to its end; `measure` gets one JSON line per simulated second.
pub fn run(sc: Scenario, measure: Option<Box<dyn Write>>) -> Summary {
    run_traced(sc, measure, None)
}

/// [`run`], also writing the event trace as text to `trace`.
pub fn run_traced(
    sc: Scenario,
    measure: Option<Box<dyn Write>>,
    trace: Option<Box<dyn Write>>,
) -> Summary {
    let wall = Instant::now();
    let max_time = sc.max_time.max(sc.horizon() + Duration::from_secs(3_600));
    let settle = sc.settle;
    let mut w = World::new(sc);
    w.measure = measure;
    w.trace_out = trace;
    w.run_until(max_time, |w| w.ledger.all_done());
    // The workload is over: no more crashes, and every peer down comes back.
    w.ledger.over = true;
    w.restart_all();
    let deadline = w.now + settle;
    let quiet = w.run_until(deadline, |w| {
        // (With `heal`, not before every planned departure happened.)
        let left = || {
            w.sc.crashes
                .iter()
                .all(|&(at, _, down)| down.is_some() || at <= w.now)
        };
        w.quiescent() && (!w.sc.heal || (left() && w.chunks_below_degree_among_living().is_empty()))
    });
    if w.sc.heal && w.healed_at.is_none() && w.chunks_below_degree_among_living().is_empty() {
        w.healed_at = Some(w.now);
    }
    w.final_checks(quiet);
    for out in [&mut w.measure, &mut w.trace_out].into_iter().flatten() {
        let _ = out.flush();
    }
    let sent = &w.counts.sent;
    Summary {
        seed: w.sc.seed,
        peers: w.sc.peers,
        ops: w.ledger.ops,
        ops_failed: w.ledger.ops_failed,
        verified_chunks: w.ledger.verified_chunks,
        recovered_files: w.ledger.recovered_files,
        failures: w.ledger.failures.clone(),
        virtual_secs: w.now.as_secs_f64(),
        wall_secs: wall.elapsed().as_secs_f64(),
        datagrams: sent.iter().map(|c| c.datagrams).sum(),
        events: w.events,
        net: w.counts.clone(),
        unknown_stale_copies: w.ledger.unknown_stale_copies,
        files: w.outcomes(),
        peer_state: w.peer_states(),
        violations: w.violations.clone(),
        trace_digest: w.trace_digest(),
        healed_after: w
            .healed_at
            .zip(w.left)
            .map(|(h, (l, _))| h.saturating_sub(l).as_secs_f64()),
        repair_mdb_bytes: w.left.map_or(0, |(_, b)| w.counts.sent[1].bytes - b),
    }
}
