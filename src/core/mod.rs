//! The protocol core, free of sockets, threads and clocks.
//!
//! Inputs are received messages ([`Core::on_message`]), fired timers ([`Core::on_timer`]),
//! results of disk actions ([`Core::chunk_written`], [`Core::restored_chunk_written`], ...) and
//! client commands ([`Core::start_backup`], [`Core::start_restore`], [`Core::start_delete`],
//! [`Core::reclaim`], [`Core::state`]). Outputs are [`Action`]s:
//! sends, disk writes and removals, timers to schedule and reports to clients. Randomness comes
//! from a seeded generator, so a run is reproducible; time only as the delays of timers.
//!
//! Concurrency: the persisted [`Metadata`] sits behind one mutex held only for in-memory
//! updates; per-instance state (each backup in progress, each chunk awaiting STORED) lives in
//! concurrent maps and is removed when the instance ends.

pub mod backup;
pub mod budget;
pub mod catalog;
pub mod delete;
pub mod enhanced;
pub mod flow;
pub mod maps;
pub mod membership;
pub mod metadata;
pub mod reclaim;
pub mod recover;
pub mod repair;
pub mod restore;
pub mod state;
pub mod storer;
pub mod verify;

use bytes::Bytes;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::secure::{DataKey, GroupKey};

use parking_lot::Mutex;

use crate::protocol::{
    ChunkHash, ChunkKey, ChunkNo, FileId, Message, MessageKind, PeerId, Version,
};
pub use backup::{BackupOp, BackupRequest, PendingPut};
use maps::{Map, Seeded};
pub use metadata::Metadata;
pub use metadata::{FileAttrs, Ownership};
pub use restore::{PendingGet, Placement, RestoreOp, RestoreRequest};
pub use state::StateReport;

/// The three multicast channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Control channel: STORED, GETCHUNK, DELETE, REMOVED.
    Mc,
    /// Backup data channel: PUTCHUNK.
    Mdb,
    /// Restore data channel: CHUNK.
    Mdr,
}

impl Channel {
    /// All channels, in a fixed order.
    pub const ALL: [Channel; 3] = [Channel::Mc, Channel::Mdb, Channel::Mdr];

    /// Position in [`Channel::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Short upper-case name.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Mc => "MC",
            Channel::Mdb => "MDB",
            Channel::Mdr => "MDR",
        }
    }
}

/// Identifies one client operation (a backup, a delete, ...) for its reports.
pub type OpId = u64;

/// Tunable protocol parameters.
#[derive(Clone, Debug)]
pub struct Config {
    /// This peer's id.
    pub id: PeerId,
    /// Protocol version this peer was started with.
    pub version: Version,
    /// PUTCHUNKs in flight at most (all backups together; the congestion window adapts below
    /// it).
    pub window: usize,
    /// GETCHUNKs of one restore in flight at most (the restore's congestion window adapts
    /// below it).
    pub restore_window: usize,
    /// PUTCHUNK sends per chunk at most.
    pub max_putchunk_sends: u8,
    /// Wait after the first PUTCHUNK; doubled after each resend.
    pub first_wait: Duration,
    /// A chunk with fewer STOREDs than expected this long after its first PUTCHUNK (STOREDs
    /// come at most 400 ms after a storer has the chunk, so the rest is queueing at a storer)
    /// shrinks the congestion window a little, before that storer's queue overflows.
    pub late_after: Duration,
    /// Upper bound of the random delay before STORED, CHUNK and a re-backup after REMOVED.
    pub reply_delay_max: Duration,
    /// GETCHUNK sends per chunk at most.
    pub max_getchunk_sends: u8,
    /// Wait after the first GETCHUNK; doubled after each resend.
    pub getchunk_wait: Duration,
    /// Bodies that fail verification tolerated per chunk of a restore (each asks again).
    pub max_bad_bodies: u8,
    /// Times DELETE is sent (no one confirms it in 1.0: a receiver that lost them all keeps
    /// the file's chunks).
    pub delete_sends: u8,
    /// Times REMOVED is sent (no one confirms it: a holder that lost them all never restores
    /// the chunk's degree). With 25 % loss at the sender and 25 % at the receiver, one send
    /// is lost with probability 0.44: all of 5 sends for 1.6 % of the chunks, all of 10 for
    /// 0.03 %.
    pub removed_sends: u8,
    /// Interval between those sends.
    pub repeat_interval: Duration,
    /// Seed of the random generator.
    pub seed: u64,
    /// Enhanced: where this peer takes restored chunk bodies over TCP.
    pub restore_tcp: Option<SocketAddrV4>,
    /// Enhanced: chunk bodies held at most while deciding whether to store them.
    pub max_deferred: usize,
    /// Enhanced: a chunk held here below its degree is checked again after this long (plus a
    /// random part as long), and re-backed up if nobody else is doing it.
    pub audit_delay: Duration,
    /// Enhanced: re-backups one holder starts for one chunk at most.
    pub max_rebackups: u8,
    /// Enhanced: how long after storing a chunk a peer checks whether more peers than desired
    /// stored it too (then the copies of the higher peer ids are dropped).
    pub trim_delay: Duration,
    /// Enhanced: how long a trimmed copy stays on disk, to be taken back if a lower holder it
    /// was trimmed for says REMOVED meanwhile (longer than REMOVED's repeats).
    pub trim_grace: Duration,
    /// Enhanced: pending deletions are re-announced this often.
    pub delete_retry_interval: Duration,
    /// Enhanced: the catalog is published at most this often, after a change (zero: never).
    pub catalog_interval: Duration,
    /// Enhanced: where the home writes its catalog document to back it up.
    pub catalog_path: PathBuf,
    /// Enhanced: ALIVE is sent this often (jittered by a fifth either way); the membership
    /// view and the repair scan advance at the same pace (zero: neither runs).
    pub announce_interval: Duration,
    /// Enhanced: a 2.0 peer not heard this long is suspected (its copies no longer count).
    pub suspect_after: Duration,
    /// Enhanced: a chunk whose live holders stay fewer than its desired degree this long is
    /// re-replicated by its repairer.
    pub repair_after: Duration,
    /// Enhanced: chunks this peer repairs at once, at most.
    pub repair_concurrency: usize,
    /// Secure groups: the group key (every message sealed and checked; a DELETE obeyed only
    /// with its proof). `None`: a plain peer.
    pub group_key: Option<Arc<GroupKey>>,
    /// This home's data key: its new backups are encrypted and named so that only it can
    /// delete them (`crate::secure::ownership`). `None`: chunks in clear.
    pub data_key: Option<Arc<DataKey>>,
    /// Share of the capacity the chunks of one home may fill here, above 0 and at most 1 (1:
    /// no limit); a PUTCHUNK past it is not stored. See [`budget::quota`].
    pub max_share: f64,
    /// CHUNK replies one requester gets from this peer, bytes per second (0: no limit). See
    /// [`budget`].
    pub reply_budget: u64,
    /// Enhanced: the path MTU in bytes. A PUTCHUNK 2.0 or CHUNK 2.0 datagram larger than one
    /// frame travels as pieces (`crate::exec::pieces`) when every peer heard of speaks 2.0.
    /// `None`: always whole.
    pub mtu: Option<usize>,
}

impl Config {
    /// The protocol's values (protocol.md §5) for peer `id`.
    pub fn new(id: PeerId, version: Version) -> Self {
        Config {
            id,
            version,
            window: DEFAULT_WINDOW,
            restore_window: DEFAULT_WINDOW,
            max_putchunk_sends: 5,
            first_wait: Duration::from_secs(1),
            late_after: Duration::from_millis(700),
            reply_delay_max: Duration::from_millis(400),
            max_getchunk_sends: 5,
            getchunk_wait: Duration::from_millis(600),
            max_bad_bodies: 20,
            delete_sends: 3,
            removed_sends: 10,
            repeat_interval: Duration::from_millis(500),
            seed: fastrand::u64(..),
            restore_tcp: None,
            max_deferred: 256,
            audit_delay: Duration::from_secs(5),
            max_rebackups: 3,
            trim_delay: Duration::from_secs(1),
            trim_grace: Duration::from_secs(10),
            delete_retry_interval: Duration::from_secs(10),
            catalog_interval: Duration::from_secs(10),
            catalog_path: PathBuf::from(format!("/dbs-catalog-{id}.json")),
            announce_interval: Duration::from_secs(2),
            suspect_after: Duration::from_secs(8),
            repair_after: Duration::from_secs(60),
            repair_concurrency: 64,
            group_key: None,
            data_key: None,
            max_share: budget::DEFAULT_MAX_SHARE,
            reply_budget: budget::DEFAULT_REPLY_BUDGET,
            mtu: None,
        }
    }

    /// Whether this peer is a member of a secure group.
    pub fn secure(&self) -> bool {
        self.group_key.is_some()
    }

    /// Whether this peer runs the enhanced protocol (any version but 1.0).
    pub fn enhanced(&self) -> bool {
        self.version != Version::V1_0
    }
}

/// Where the bytes of a chunk to PUTCHUNK come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkSource {
    /// A slice of the home's source file.
    File {
        /// Source file.
        path: PathBuf,
        /// Byte offset of the chunk.
        offset: u64,
        /// Chunk length in bytes.
        len: usize,
    },
    /// The copy this peer stores (re-backup after REMOVED).
    Stored,
}

/// What the runtime must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Multicast `message` on `channel`.
    Send {
        /// Where.
        channel: Channel,
        /// What.
        message: Message,
    },
    /// Read a chunk from `source` and multicast it as PUTCHUNK on MDB (for a file source,
    /// calling [`Core::putchunk_read`] with the body's hash first); once it is sent, deliver
    /// [`TimerEvent::PutchunkWait`] `{ chunk, send }` after `wait`, and the `late` event
    /// after its delay if set. (The waits start at the actual send, not while the datagram
    /// waits for the pacer.)
    SendPutchunk {
        /// Version of the PUTCHUNK (2.0 for an enhanced backup).
        version: Version,
        /// Which chunk.
        chunk: ChunkKey,
        /// Desired degree for the header.
        degree: u8,
        /// Where its bytes are.
        source: ChunkSource,
        /// The backup it belongs to.
        op: OpId,
        /// Which send of this chunk it is (1-based).
        send: u8,
        /// How long to wait for STOREDs after it.
        wait: Duration,
        /// First sends only: a timer to start when it is sent (its late check, see
        /// [`Config::late_after`]).
        late: Option<(Duration, TimerEvent)>,
        /// Header lines after the first (a catalog chunk's `CATALOG` line).
        extra_lines: Vec<String>,
    },
    /// Read a chunk of a home file and pass its hash to [`Core::putchunk_read`] without
    /// sending it (a resumed backup: the chunk is confirmed, its hash was lost in a crash).
    RecordHash {
        /// The backup.
        op: OpId,
        /// Which chunk.
        chunk: ChunkKey,
        /// Where its bytes are.
        source: ChunkSource,
    },
    /// Read a stored chunk, check it against `hash`, and multicast it as CHUNK on MDR; if it
    /// is unreadable or corrupt call [`Core::stored_chunk_lost`] instead.
    SendChunk {
        /// Which chunk.
        chunk: ChunkKey,
        /// Its hash when written.
        hash: Option<ChunkHash>,
        /// Enhanced: deliver the body over TCP to this address and send only the header on
        /// MDR (falling back to the body on MDR if TCP fails).
        tcp: Option<SocketAddrV4>,
    },
    /// Write a chunk durably, then call [`Core::chunk_written`].
    WriteChunk {
        /// Which chunk.
        chunk: ChunkKey,
        /// Desired degree to record.
        desired: u8,
        /// Its bytes.
        body: Bytes,
    },
    /// Remove a stored chunk's file.
    RemoveChunk {
        /// Which chunk.
        chunk: ChunkKey,
    },
    /// Create the temporary file of a restore with its final size; on failure call
    /// [`Core::restore_failed`].
    CreateRestoreFile {
        /// The restore.
        op: OpId,
        /// Temporary file.
        path: PathBuf,
        /// Size of the restored file.
        size: u64,
    },
    /// Write a restored chunk at `offset` of the temporary file, then call
    /// [`Core::restored_chunk_written`].
    WriteRestored {
        /// The restore.
        op: OpId,
        /// Temporary file.
        path: PathBuf,
        /// Where the chunk goes.
        offset: u64,
        /// Its bytes (already verified).
        body: Bytes,
    },
    /// Make the temporary file durable and rename it to `dest`, then call
    /// [`Core::restore_committed`].
    CommitRestore {
        /// The restore.
        op: OpId,
        /// Temporary file.
        tmp: PathBuf,
        /// Final name.
        dest: PathBuf,
        /// Mode, mtime, and whether an existing file may be replaced.
        placement: Placement,
    },
    /// Enhanced: read the stored copy of `chunk` (checking it against `hash`, as before serving
    /// it) and multicast CHECKED with its proof (`verify::proof` of the nonce and the body) on
    /// MC.
    SendProof {
        /// Which chunk.
        chunk: ChunkKey,
        /// The CHECK's nonce.
        nonce: [u8; 32],
        /// Its recorded hash.
        hash: Option<ChunkHash>,
    },
    /// Enhanced: write the catalog document `bytes` (generation `tag`) to `path`, then call
    /// [`Core::catalog_written`].
    WriteCatalog {
        /// Where.
        path: PathBuf,
        /// The document.
        bytes: Vec<u8>,
        /// What it is.
        tag: crate::protocol::CatalogTag,
    },
    /// Enhanced: read the catalog RECOVER `op` restored to `path` (`tag.size` bytes), remove
    /// the file, and call [`Core::catalog_loaded`].
    LoadCatalog {
        /// The RECOVER.
        op: OpId,
        /// Where it was restored.
        path: PathBuf,
        /// What its holders said it is.
        tag: crate::protocol::CatalogTag,
        /// Who said so.
        holders: Vec<PeerId>,
    },
    /// Check that the source of a backup whose chunks are all done still has the size and
    /// mtime it had when opened, then call [`Core::source_checked`].
    CheckSource {
        /// The backup.
        op: OpId,
        /// Its source file.
        path: PathBuf,
        /// Its size when opened.
        size: u64,
        /// Its mtime when opened, nanoseconds since the epoch.
        mtime_ns: i64,
    },
    /// Remove a failed restore's temporary file.
    AbortRestore {
        /// Temporary file.
        tmp: PathBuf,
    },
    /// Make the metadata durable before the actions that follow.
    SyncMetadata,
    /// Call [`Core::on_timer`] with `event` after `delay`.
    Schedule {
        /// How long from now.
        delay: Duration,
        /// What to deliver.
        event: TimerEvent,
    },
    /// Tell the client running `op`.
    Report {
        /// Which operation.
        op: OpId,
        /// What happened.
        event: OpEvent,
    },
}

/// Timer events the core schedules for itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimerEvent {
    /// Enhanced: look at an incomplete message sent as pieces (handled by the executor, see
    /// `crate::exec::pieces`).
    PieceCheck {
        /// Its sender.
        origin: PeerId,
        /// The sender's number of the message.
        seq: u64,
        /// Its chunk.
        chunk: ChunkKey,
        /// Its channel.
        channel: Channel,
    },
    /// The wait after PUTCHUNK send number `send` of `chunk` is over.
    PutchunkWait {
        /// Which chunk.
        chunk: ChunkKey,
        /// Which send it followed (1-based).
        send: u8,
    },
    /// Answer STORED for a chunk held here.
    SendStored {
        /// Which chunk.
        chunk: ChunkKey,
        /// 2.0 when answering an enhanced PUTCHUNK (it tells the initiator this peer speaks
        /// 2.0), else 1.0.
        version: Version,
    },
    /// [`Config::late_after`] has passed since the first PUTCHUNK of a chunk.
    PutchunkLate {
        /// Which chunk.
        chunk: ChunkKey,
        /// The backup it belongs to.
        op: OpId,
        /// Its launch number in the congestion window.
        launch: u64,
    },
    /// Send CHUNK for a chunk held here, unless another peer's CHUNK was seen meanwhile.
    SendChunk {
        /// Which chunk.
        chunk: ChunkKey,
    },
    /// The wait after GETCHUNK send number `send` of `chunk` is over.
    GetchunkWait {
        /// Which chunk.
        chunk: ChunkKey,
        /// Which send it followed (1-based).
        send: u8,
    },
    /// A chunk held here is below its degree (after a REMOVED, or stored on an enhanced
    /// PUTCHUNK): re-back it up unless a PUTCHUNK for it was seen meanwhile.
    CheckDegree {
        /// Which chunk.
        chunk: ChunkKey,
    },
    /// Enhanced: decide whether to store a deferred chunk.
    StoreDecision {
        /// Which chunk.
        chunk: ChunkKey,
    },
    /// Enhanced: re-announce pending deletions.
    RetryDeletes,
    /// Enhanced: drop our copy of a chunk if `desired` peers with lower ids hold it.
    TrimCheck {
        /// Which chunk.
        chunk: ChunkKey,
    },
    /// Enhanced: [`TimerEvent::TrimCheck`] after HOLDS, counting only the lower holders whose
    /// HOLDS named the chunk since.
    TrimConfirmed {
        /// Which chunk.
        chunk: ChunkKey,
    },
    /// Enhanced: the grace time of a trimmed copy is over; its file goes.
    TrashExpired {
        /// Which chunk.
        chunk: ChunkKey,
        /// Which trimming of it (a copy taken back and trimmed again has a grace of its own).
        generation: u64,
    },
    /// Enhanced: publish the catalog if it changed.
    PublishCatalog,
    /// A period of the per-sender budgets is over ([`budget::PERIOD`]): they refill.
    BudgetPeriod,
    /// Enhanced: one announcement period is over (ALIVE, membership, repair scan).
    Tick,
    /// Enhanced: the wait after FINDCATALOG send `send` of RECOVER `op` is over.
    FindWait {
        /// The RECOVER.
        op: OpId,
        /// Which send.
        send: u8,
    },
    /// Enhanced: the wait after CHECK send `send` of VERIFY `op` is over.
    CheckWait {
        /// The VERIFY.
        op: OpId,
        /// Which send.
        send: u8,
    },
    /// Send unconfirmed messages (DELETE, REMOVED) again; `remaining` sends are left after
    /// this one, and `then` is reported after the last. A batch (the DELETEs of a tree) shares
    /// one schedule.
    SendAgain {
        /// The messages.
        messages: Vec<Message>,
        /// Sends left after this one.
        remaining: u8,
        /// The report to make after the last send, if a client waits.
        then: Option<(OpId, OpEvent)>,
    },
}

/// What a client operation learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpEvent {
    /// `done` of `total` units finished.
    Progress {
        /// Units done.
        done: u64,
        /// Units in all.
        total: u64,
    },
    /// A backup ended; `short` lists the chunks that did not reach the desired degree.
    BackupDone {
        /// The file's id.
        file: FileId,
        /// Chunks in the file.
        chunks: u64,
        /// Chunks below the desired degree after the last try.
        short: Vec<ChunkNo>,
        /// No peer stored any chunk: the backup gave up after this many chunks had each been
        /// sent in vain, without sending the others (all of them are in `short`).
        gave_up_after: Option<u64>,
    },
    /// A restore wrote every chunk and renamed the file into place.
    RestoreDone {
        /// The file's id.
        file: FileId,
        /// Where the restored file is.
        dest: PathBuf,
        /// Chunks in the file.
        chunks: u64,
    },
    /// RECOVER installed a catalog.
    Recovered(recover::Recovered),
    /// A VERIFY ended.
    VerifyDone {
        /// The file's id.
        file: FileId,
        /// What it found.
        report: verify::VerifyReport,
    },
    /// A restore could not get every chunk.
    RestoreIncomplete {
        /// The file's id.
        file: FileId,
        /// Chunks no peer delivered (with a valid body) after every try.
        missing: Vec<ChunkNo>,
    },
    /// A delete finished its sends.
    DeleteDone {
        /// The files deleted (every version of each path).
        files: Vec<FileId>,
    },
    /// The operation failed.
    Failed(String),
}

/// A client command the core refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The replication degree is outside 1..=9.
    #[error("replication degree must be 1 to 9, got {0}")]
    BadDegree(u8),
    /// The file has more chunks than chunk numbers allow.
    #[error("file of {0} bytes is too large: chunk numbers stop at 999999 (about 64 GB)")]
    TooLarge(u64),
    /// A backup of the same file is running.
    #[error("a backup of {0} is already running")]
    BackupRunning(PathBuf),
    /// The path was never backed up by this peer.
    #[error("{0} was not backed up by this peer")]
    NotBackedUp(PathBuf),
    /// A restore of the same file is running.
    #[error("a restore of {0} is already running")]
    RestoreRunning(PathBuf),
    /// The file was backed up encrypted, and this peer was started without its data key.
    #[error(
        "{0} was backed up encrypted: start the peer with its --data-key (or --data-passphrase) to restore it"
    )]
    NoDataKey(PathBuf),
    /// A VERIFY of the same file is running.
    #[error("a verify of {0} is already running")]
    VerifyRunning(PathBuf),
    /// RECOVER on a peer that has a catalog.
    #[error(
        "this peer's catalog lists {0} file(s) already: RECOVER is for a peer started with an \
         empty tree after its disk was lost"
    )]
    CatalogNotEmpty(usize),
    /// A RECOVER is running.
    #[error("a RECOVER is already running")]
    RecoverRunning,
    /// The path was backed up, but not in that version.
    #[error("{0} has no version {1} backed up by this peer")]
    NoSuchVersion(PathBuf, u32),
}

/// Protocol events counted since start (reported in STATE and by benchmarks).
#[derive(Debug, Default, serde::Serialize)]
pub struct Counters {
    /// Chunks whose backup started here (first PUTCHUNK sends).
    pub putchunk_launches: AtomicU64,
    /// PUTCHUNK sends after the first, all chunks.
    pub putchunk_resends: AtomicU64,
    /// Chunks with fewer STOREDs than expected `late_after` their first PUTCHUNK (each may
    /// shrink the congestion window, once per window).
    pub putchunk_late: AtomicU64,
    /// GETCHUNK sends after the first, all chunks.
    pub getchunk_resends: AtomicU64,
    /// CHUNKs that found this peer's receive queue filling up during one of its restores
    /// (each may shrink that restore's window).
    pub restore_slowdowns: AtomicU64,
    /// CHUNK bodies refused by a restore (wrong size or hash).
    pub bad_bodies: AtomicU64,
    /// Chunks stored here.
    pub chunks_stored: AtomicU64,
    /// Enhanced: surplus copies this peer dropped after an enhanced backup.
    pub chunks_trimmed: AtomicU64,
    /// Enhanced: repairs this peer started (as a chunk's home: a REPAIR sent; as its
    /// repairing holder: a re-backup started).
    pub repairs_started: AtomicU64,
    /// Enhanced: chunks this peer repaired that are back at their degree among live peers.
    pub repairs_done: AtomicU64,
    /// Enhanced: repair attempts that did not bring the chunk back in time (tried again), or
    /// found no live copy to repair from.
    pub repairs_failed: AtomicU64,
    /// Enhanced: times a peer became suspected.
    pub peers_suspected: AtomicU64,
    /// Enhanced: times a peer was declared gone.
    pub peers_gone: AtomicU64,
    /// Chunks of a backup sent again because a holder that had stored them died before it
    /// ended.
    pub chunks_relaunched: AtomicU64,
    /// GETCHUNK sends beyond the fixed budget, while a live holder was known.
    pub getchunk_persisted: AtomicU64,
    /// Secure groups: DELETEs ignored for want of their home's proof.
    pub deletes_unproven: AtomicU64,
    /// PUTCHUNKs not stored because their home's chunks would fill more than its share of the
    /// capacity ([`Config::max_share`]).
    pub putchunks_over_quota: AtomicU64,
    /// GETCHUNKs not answered because their requester's reply budget was spent
    /// ([`Config::reply_budget`]).
    pub getchunks_over_budget: AtomicU64,
    /// GETCHUNKs not answered because this peer answered the same requester the same chunk
    /// just before ([`budget::REPEAT_PERIODS`]).
    pub getchunks_repeated: AtomicU64,
    /// Re-backups after REMOVED held back because the REMOVED's sender's budget was spent
    /// ([`budget::REBACKUPS_PER_SECOND`]; each waits its turn).
    pub rebackups_over_budget: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The protocol state machine of one peer.
pub struct Core {
    cfg: Config,
    /// Events counted since start.
    pub counters: Counters,
    meta: Mutex<Metadata>,
    rng: Mutex<fastrand::Rng>,
    next_internal_op: AtomicU64,
    /// Backups in progress (client backups and re-backups), by operation.
    backups: Map<OpId, BackupOp>,
    /// Chunks awaiting STORED, initiator side.
    pending: Map<ChunkKey, PendingPut>,
    /// The congestion window over `pending`.
    flow: Mutex<flow::FlowControl>,
    /// Chunks being written here (their sizes are reserved against capacity).
    writing: Map<ChunkKey, storer::Writing>,
    /// Enhanced: chunk bodies held while deciding whether to store them.
    deferred: Map<ChunkKey, storer::Deferred>,
    /// Chunks held here with a CHUNK reply scheduled (removed when another CHUNK is seen),
    /// with the TCP address of an enhanced initiator and what it drew from its requester's
    /// budget.
    replying: Map<ChunkKey, storer::Reply>,
    /// Restores in progress, by operation.
    restores: Map<OpId, RestoreOp>,
    /// Chunks awaiting CHUNK, initiator side.
    getting: Map<ChunkKey, PendingGet>,
    /// Chunks held here below their degree, watched until they are back at it.
    watches: Map<ChunkKey, reclaim::Watch>,
    /// Enhanced: copies trimmed here, kept on disk for a grace time in case a lower holder
    /// they were trimmed for evicts its own meanwhile.
    trash: Map<ChunkKey, storer::Trimmed>,
    /// Enhanced: each VERIFY in progress.
    verifying: Map<OpId, verify::VerifyOp>,
    /// Enhanced: the RECOVER in progress.
    recovering: Map<OpId, recover::RecoverOp>,
    /// Enhanced: the catalog changed since the last generation.
    catalog_dirty: AtomicBool,
    /// Enhanced: a publication is scheduled.
    catalog_timer: AtomicBool,
    /// Enhanced: the start-up hint that the group holds this peer's catalog was logged.
    catalog_hinted: AtomicBool,
    /// Enhanced: another live process uses this peer's id.
    id_conflict: AtomicBool,
    /// Enhanced: the highest generation of this peer's catalog the group said it holds.
    catalog_heard: AtomicU64,
    /// This process's random instance (in its UP).
    instance: u64,
    /// Enhanced: who is alive.
    members: Mutex<membership::View>,
    /// Enhanced: the process instance of each peer, from its UP or HOLDS.
    peer_instances: Mutex<std::collections::BTreeMap<PeerId, u64>>,
    /// Enhanced: trimmings so far (each trimmed copy's grace is told apart).
    trims: AtomicU64,
    /// Enhanced: lower peers whose HOLDS named a chunk held here, until its trim check.
    holds_heard: Map<ChunkKey, std::collections::BTreeSet<PeerId>>,
    /// Enhanced: chunks below their degree among live peers that this peer is to repair.
    repairs: Mutex<std::collections::BTreeMap<ChunkKey, repair::Repair>>,
    /// The per-sender budgets.
    budgets: Mutex<budget::Budgets>,
}

/// Default bound of both windows, in chunks (48 MiB of bodies). A peer that stalls (descheduled
/// on a busy machine) while that much is in flight to it still holds all of it: 32 MiB in its
/// worker backlog and 32 MiB in its socket's receive buffer (which needs CAP_NET_ADMIN or
/// `net.core.rmem_max` ≥ 16 MiB; the peer warns at start otherwise). Larger windows did not make
/// backups or restores faster on the benchmark machine, where they are bound by CPU.
pub const DEFAULT_WINDOW: usize = 768;

/// Progress reports an operation sends at most (about): one per chunk cost the initiator of a
/// 1 GB restore a tenth of its CPU in its client's connection thread.
const PROGRESS_REPORTS: u64 = 200;

/// A progress report for `done` of `total` chunks of `op`, if this one is due: at the start,
/// at the end, and every `total / PROGRESS_REPORTS` chunks.
fn progress(op: OpId, done: u64, total: u64) -> Option<Action> {
    let step = (total / PROGRESS_REPORTS).max(1);
    (done == total || done.is_multiple_of(step)).then_some(Action::Report {
        op,
        event: OpEvent::Progress { done, total },
    })
}

/// Chunks in flight when a peer starts (the congestion window grows from there).
const INITIAL_WINDOW: usize = 32;
/// The congestion window never shrinks below this many chunks.
const MIN_WINDOW: usize = 4;

/// Operation ids the core gives its own operations (re-backups) start here; clients' ids are
/// below.
pub const INTERNAL_OPS: OpId = 1 << 62;

impl Core {
    /// A core with the given persisted metadata.
    pub fn new(cfg: Config, meta: Metadata) -> Self {
        let rng = fastrand::Rng::with_seed(cfg.seed);
        let flow = flow::FlowControl::new(INITIAL_WINDOW.min(cfg.window), MIN_WINDOW, cfg.window);
        Core {
            counters: Counters::default(),
            meta: Mutex::new(meta),
            rng: Mutex::new(rng),
            next_internal_op: AtomicU64::new(INTERNAL_OPS),
            backups: Map::seeded(cfg.seed),
            pending: Map::seeded(cfg.seed),
            flow: Mutex::new(flow),
            writing: Map::seeded(cfg.seed),
            deferred: Map::seeded(cfg.seed),
            replying: Map::seeded(cfg.seed),
            restores: Map::seeded(cfg.seed),
            getting: Map::seeded(cfg.seed),
            watches: Map::seeded(cfg.seed),
            trash: Map::seeded(cfg.seed),
            verifying: Map::seeded(cfg.seed),
            recovering: Map::seeded(cfg.seed),
            catalog_dirty: AtomicBool::new(false),
            catalog_timer: AtomicBool::new(false),
            catalog_hinted: AtomicBool::new(false),
            id_conflict: AtomicBool::new(false),
            catalog_heard: AtomicU64::new(0),
            instance: fastrand::Rng::with_seed(cfg.seed ^ 0x1d5e_ed00).u64(..),
            members: Mutex::new(repair::view_for(&cfg)),
            repairs: Mutex::new(Default::default()),
            holds_heard: Map::seeded(cfg.seed),
            trims: AtomicU64::new(0),
            peer_instances: Mutex::new(Default::default()),
            budgets: Mutex::new(budget::Budgets::new(cfg.reply_budget)),
            cfg,
        }
    }

    /// This peer's configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Runs `f` on the metadata (for inspection).
    pub fn with_metadata<R>(&self, f: impl FnOnce(&Metadata) -> R) -> R {
        f(&self.meta.lock())
    }

    /// Whether the metadata changed since it was last drained for saving.
    pub fn metadata_changed(&self) -> bool {
        self.meta.lock().has_changes()
    }

    /// For the persister: what changed in the metadata since the last call (or, with
    /// `snapshot`, all of it) and the generation that brings it to; `None` if nothing changed.
    pub fn drain_changes(&self, snapshot: bool) -> Option<(u64, metadata::Changes)> {
        let mut meta = self.meta.lock();
        if !snapshot && !meta.has_changes() {
            return None;
        }
        Some((meta.generation(), meta.drain_changes(snapshot)))
    }

    /// Number of protocol instances in progress (backups, restores, chunks awaiting answers,
    /// writes, scheduled replies); zero when the peer is idle.
    pub fn instances(&self) -> usize {
        self.instances_by_kind().iter().map(|(_, n)| n).sum()
    }

    /// [`Core::instances`] by kind.
    pub fn instances_by_kind(&self) -> [(&'static str, usize); 12] {
        [
            ("backups", self.backups.len()),
            ("awaiting_stored", self.pending.len()),
            ("writing", self.writing.len()),
            ("replying", self.replying.len()),
            ("restores", self.restores.len()),
            ("awaiting_chunk", self.getting.len()),
            ("watches", self.watches.len()),
            ("deferred", self.deferred.len()),
            ("trimmed", self.trash.len()),
            ("verifies", self.verifying.len()),
            ("recovers", self.recovering.len()),
            ("repairs", self.repairs_pending()),
        ]
    }

    fn message(&self, kind: MessageKind) -> Message {
        Message::new(Version::V1_0, self.cfg.id, kind)
    }

    /// Sends an unchanged 1.0 message (every peer, 1.0 or 2.0, sends these as 1.0).
    fn send(&self, channel: Channel, kind: MessageKind) -> Action {
        Action::Send {
            channel,
            message: self.message(kind),
        }
    }

    /// Sends a message of `version` with extra header lines.
    fn send_v(
        &self,
        channel: Channel,
        version: Version,
        kind: MessageKind,
        extra: Vec<String>,
    ) -> Action {
        let mut message = Message::new(version, self.cfg.id, kind);
        message.extra_lines = extra;
        Action::Send { channel, message }
    }

    /// Sends `message` on MC now and schedules `remaining` repeats, `repeat_interval` apart,
    /// then reports `then` (DELETE and REMOVED: nobody confirms them in 1.0).
    fn send_repeated(
        &self,
        mut messages: Vec<Message>,
        remaining: u8,
        then: Option<(OpId, OpEvent)>,
    ) -> Vec<Action> {
        // A REMOVED repeated after this peer stored the chunk again (a re-backup asked it to)
        // would make the others drop it from the holders it is again one of.
        // Nor is one for a chunk of a file deleted since (it would start re-backups of it).
        messages.retain(|message| {
            let MessageKind::Removed { chunk } = &message.kind else {
                return true;
            };
            !(self.writing.contains_key(chunk) || {
                let meta = self.meta.lock();
                meta.stored_chunk(chunk).is_some() || meta.tombstone(&chunk.file).is_some()
            })
        });
        let mut actions: Vec<Action> = messages
            .iter()
            .map(|message| Action::Send {
                channel: Channel::Mc,
                message: message.clone(),
            })
            .collect();
        if remaining > 0 && !messages.is_empty() {
            actions.push(Action::Schedule {
                delay: self.cfg.repeat_interval,
                event: TimerEvent::SendAgain {
                    messages,
                    remaining: remaining - 1,
                    then,
                },
            });
        } else if let Some((op, event)) = then {
            actions.push(Action::Report { op, event });
        }
        actions
    }

    fn reply_delay(&self) -> Duration {
        let max = self.cfg.reply_delay_max.as_millis() as u64;
        Duration::from_millis(self.rng.lock().u64(0..=max))
    }

    /// Enhanced: the wait before looking again at a chunk below its degree: `audit_delay` plus
    /// a random part as long.
    fn audit_delay(&self) -> Duration {
        let extra = self.cfg.audit_delay.as_millis() as u64;
        self.cfg.audit_delay + Duration::from_millis(self.rng.lock().u64(0..=extra))
    }

    fn internal_op(&self) -> OpId {
        self.next_internal_op.fetch_add(1, Ordering::Relaxed)
    }

    /// What the peer does when it starts: it announces REMOVED for the chunks its disk lost
    /// (`lost`, found by reconciliation); an enhanced peer also announces itself (UP) and
    /// starts re-sending its pending deletions.
    pub fn startup(&self, lost: Vec<ChunkKey>) -> Vec<Action> {
        let mut actions: Vec<Action> = lost
            .into_iter()
            .flat_map(|chunk| self.removed_sends(chunk, Version::V1_0))
            .collect();
        if self.cfg.enhanced() {
            actions.extend(self.announce_at_start());
            actions.push(Action::Schedule {
                delay: self.cfg.delete_retry_interval,
                event: TimerEvent::RetryDeletes,
            });
            actions.extend(self.announce_holdings());
            actions.extend(self.next_tick());
        }
        actions
    }

    /// Handles a received message.
    pub fn on_message(&self, msg: Message) -> Vec<Action> {
        if msg.sender == self.cfg.id {
            // Our own multicast, or another process with our id.
            return match msg.kind {
                MessageKind::Up if self.cfg.enhanced() => self.own_id_up(&msg),
                _ => Vec::new(),
            };
        }
        // A secure peer obeys a DELETE only from the file's home, who alone can prove it; an
        // unproven one is ignored before it tells anything of its (claimed) sender.
        if let MessageKind::Delete { file } = &msg.kind
            && self.cfg.secure()
            && !crate::secure::ownership::proves(file, &msg.extra_lines)
        {
            Counters::bump(&self.counters.deletes_unproven);
            tracing::debug!(
                "ignored a DELETE of {file} from {} without its proof",
                msg.sender
            );
            return Vec::new();
        }
        let enhanced = self.cfg.enhanced() && msg.version != Version::V1_0;
        if enhanced {
            self.note_enhanced_peer(msg.sender);
        }
        // Any message tells that its sender is alive.
        if self.cfg.enhanced() {
            self.heard(msg.sender);
        }
        self.dispatch(msg, enhanced)
    }

    fn dispatch(&self, msg: Message, enhanced: bool) -> Vec<Action> {
        match msg.kind {
            MessageKind::Putchunk {
                chunk,
                degree,
                body,
            } => {
                let lines = enhanced.then_some(msg.extra_lines.as_slice());
                self.on_putchunk(msg.sender, chunk, degree, body, lines)
            }
            MessageKind::Stored { chunk } => self.on_stored(msg.sender, chunk),
            MessageKind::Getchunk { chunk } => {
                let tcp = enhanced
                    .then(|| enhanced::tcp_reply_address(&msg.extra_lines))
                    .flatten();
                self.on_getchunk(msg.sender, chunk, tcp)
            }
            MessageKind::Chunk { chunk, body } => {
                let header_only = body.is_empty() && enhanced::body_by_tcp(&msg.extra_lines);
                self.on_chunk(chunk, body, header_only)
            }
            MessageKind::Delete { file } => self.on_delete(msg.sender, file, enhanced),
            MessageKind::Removed { chunk } => self.on_removed(msg.sender, chunk, enhanced),
            MessageKind::Up if enhanced => {
                self.on_up(msg.sender, recover::instance_in(&msg.extra_lines))
            }
            MessageKind::Deleted { file } if enhanced => self.on_deleted(msg.sender, file),
            MessageKind::Check { chunk, nonce } if enhanced => self.on_check(chunk, nonce),
            MessageKind::FindCatalog { home } if enhanced => self.on_find_catalog(home),
            MessageKind::CatalogHeld { file, tag } if enhanced => {
                self.on_catalog_held(msg.sender, file, tag);
                Vec::new()
            }
            MessageKind::Checked {
                chunk,
                nonce,
                proof,
            } if enhanced => self.on_checked(msg.sender, chunk, nonce, proof),
            MessageKind::Alive => Vec::new(), // heard: that is all
            MessageKind::Holds { file, chunks } if enhanced => {
                let ask = msg.extra_lines.iter().any(|l| l.trim() == repair::ASK);
                if let Some(i) = recover::instance_in(&msg.extra_lines) {
                    // Its UP may be handled after this (on another worker).
                    self.new_instance(msg.sender, Some(i));
                }
                self.on_holds(msg.sender, file, &chunks, ask)
            }
            MessageKind::Repair { chunk, degree, by } if enhanced => {
                self.on_repair(msg.sender, chunk, degree, by)
            }
            MessageKind::Up
            | MessageKind::Deleted { .. }
            | MessageKind::FindCatalog { .. }
            | MessageKind::CatalogHeld { .. }
            | MessageKind::Check { .. }
            | MessageKind::Checked { .. }
            | MessageKind::Holds { .. }
            | MessageKind::Repair { .. } => Vec::new(),
        }
    }

    /// Handles a fired timer.
    pub fn on_timer(&self, event: TimerEvent) -> Vec<Action> {
        match event {
            TimerEvent::SendStored { chunk, version } => self.send_stored(chunk, version),
            TimerEvent::PutchunkWait { chunk, send } => self.putchunk_wait_over(chunk, send),
            TimerEvent::PutchunkLate { chunk, op, launch } => {
                self.putchunk_late(chunk, op, launch);
                Vec::new()
            }
            TimerEvent::SendChunk { chunk } => self.send_chunk(chunk),
            TimerEvent::GetchunkWait { chunk, send } => self.getchunk_wait_over(chunk, send),
            TimerEvent::CheckDegree { chunk } => self.check_degree(chunk),
            TimerEvent::StoreDecision { chunk } => self.store_decision(chunk),
            TimerEvent::RetryDeletes => self.retry_deletes(),
            TimerEvent::TrimCheck { chunk } => self.trim_check(chunk, None),
            TimerEvent::TrimConfirmed { chunk } => {
                let confirmed = self.holds_heard.remove(&chunk).map(|(_, c)| c);
                self.trim_check(chunk, Some(confirmed.unwrap_or_default()))
            }
            TimerEvent::TrashExpired { chunk, generation } => self.trash_expired(chunk, generation),
            TimerEvent::CheckWait { op, send } => self.check_wait_over(op, send),
            TimerEvent::PublishCatalog => self.publish_catalog(),
            TimerEvent::Tick => self.tick(),
            TimerEvent::PieceCheck { .. } => Vec::new(), // the executor's
            TimerEvent::BudgetPeriod => self.budget_period(),
            TimerEvent::FindWait { op, send } => self.find_wait_over(op, send),
            TimerEvent::SendAgain {
                messages,
                remaining,
                then,
            } => self.send_repeated(messages, remaining, then),
        }
    }

    /// Whether a fired timer has nothing left to do: the wait after a PUTCHUNK or GETCHUNK
    /// whose chunk was answered meanwhile (most of them). A cheap look, so that the runtime
    /// need not hand such an event to a worker.
    pub fn timer_is_stale(&self, event: &TimerEvent) -> bool {
        match event {
            TimerEvent::PutchunkWait { chunk, send } => {
                self.putchunk_waiting(*chunk, *send).is_none()
            }
            TimerEvent::GetchunkWait { chunk, send } => {
                self.getchunk_waiting(*chunk, *send).is_none()
            }
            _ => false,
        }
    }

    /// This peer's STATE report.
    pub fn state(&self) -> StateReport {
        StateReport::from_metadata(&self.cfg, &self.meta.lock(), &self.members.lock())
    }

    /// The LIST report of the paths equal to `under` or below it (all without it).
    pub fn list(&self, under: Option<&std::path::Path>) -> catalog::ListReport {
        let running: std::collections::BTreeSet<FileId> =
            self.backups.iter().map(|b| b.file).collect();
        let meta = self.meta.lock();
        catalog::ListReport::from_metadata(&meta, under, |file| running.contains(file))
    }
}

#[cfg(test)]
mod tests;
