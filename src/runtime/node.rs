//! A running peer: wires the protocol core to sockets, worker pool, timer wheel, disk and the
//! client interface.
//!
//! Path of a datagram: receiver thread (`recv`, copy) → bounded worker pool → parse → core →
//! actions, executed on that worker: chunk writes to disk, sends queued to the paced sender
//! threads, timers into the wheel, reports to the client's connection thread.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use dashmap::DashMap;
use parking_lot::Mutex;
use serde_json::json;

use super::pool::BoundedPool;
use super::sender::Senders;
use super::tcp::{self, ConnectionPool};
use super::timer::TimerService;
use crate::client::server::Handler;
use crate::client::{Reply, Request};
use crate::core::enhanced::BODY_BY_TCP;
use crate::core::{
    Action, BackupRequest, Channel, ChunkSource, Config, Core, INTERNAL_OPS, OpEvent, OpId,
    RestoreRequest, TimerEvent,
};
use crate::net::{ChannelAddrs, open_receiver};
use crate::protocol::file_id::file_id;
use crate::protocol::{ChunkHash, ChunkKey, Message, MessageKind, Version, peek_sender};
use crate::storage::chunk_files::Staged;
use crate::storage::meta_file::MetaFile;
use crate::storage::reconcile::reconcile;
use crate::storage::{ChunkFiles, StorageError};

/// How a peer runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Protocol parameters.
    pub core: Config,
    /// Multicast channels.
    pub channels: ChannelAddrs,
    /// Interface every multicast socket is pinned to.
    pub iface: Ipv4Addr,
    /// This peer's directory tree.
    pub dir: PathBuf,
    /// Capacity for stored chunks in KBytes; `None` keeps the persisted one.
    pub capacity_kb: Option<u64>,
    /// Send rate limit, bytes per second (0 = unpaced).
    pub send_rate: u64,
    /// Worker threads.
    pub workers: usize,
    /// Received datagrams queued for the workers at most.
    pub backlog: usize,
}

/// Why a peer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Its tree or metadata cannot be used.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The TCP listener of enhanced restores cannot be opened.
    #[error("cannot listen for TCP chunk bodies on {iface}: {source}")]
    Tcp {
        /// The interface.
        iface: Ipv4Addr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A channel socket cannot be opened.
    #[error("cannot open {channel} channel {addr} on interface {iface}: {source}")]
    Socket {
        /// Which channel.
        channel: &'static str,
        /// Its address.
        addr: String,
        /// The interface.
        iface: Ipv4Addr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Counters a peer keeps about what it received.
#[derive(Default, Debug)]
pub struct Stats {
    /// Datagrams received, all channels.
    pub received: AtomicU64,
    /// Datagrams dropped as malformed (or on the wrong channel).
    pub malformed: AtomicU64,
    /// Disk operations that failed (writing, syncing, removing chunks; saving metadata).
    pub disk_errors: AtomicU64,
    /// The last disk error, for STATE.
    pub last_disk_error: parking_lot::Mutex<Option<String>>,
}

impl Stats {
    /// Logs and counts a disk error; the peer keeps running.
    fn disk_error(&self, what: std::fmt::Arguments<'_>) {
        let text = what.to_string();
        tracing::error!("{text}");
        self.disk_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_disk_error.lock() = Some(text);
    }
}

struct OpSink {
    tx: Sender<Reply>,
    path: PathBuf,
}

struct Shared {
    /// Itself, for work handed to other threads.
    this: Weak<Shared>,
    core: Core,
    files: ChunkFiles,
    meta_file: MetaFile,
    pool: BoundedPool,
    timers: TimerService<TimerEvent>,
    senders: Senders,
    /// Enhanced: connections to initiators that take chunk bodies over TCP.
    tcp_pool: ConnectionPool,
    ops: DashMap<OpId, OpSink>,
    next_op: AtomicU64,
    stats: Stats,
    stop: AtomicBool,
    /// Wakes the commit thread after actions that may have changed the metadata.
    save_signal: (Sender<()>, Receiver<()>),
    /// What the next group commit makes durable, and what waits for it.
    commits: Mutex<Commits>,
}

/// Work for the next group commit.
#[derive(Default)]
struct Commits {
    /// Chunks written to temporary files, to make durable and record.
    staged: Vec<StagedWrite>,
    /// Action sequences that follow a `SyncMetadata`, to run once the metadata is saved.
    after: Vec<Vec<Action>>,
}

/// A staged chunk with what the core needs to record it.
struct StagedWrite {
    staged: Staged,
    desired: u8,
    size: u32,
    hash: ChunkHash,
}

/// A running peer.
pub struct Node {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

const RECV_POLL: Duration = Duration::from_millis(200);
/// Connections to initiators a holder keeps open at most.
const TCP_CONNECTIONS: usize = 8;
/// The commit thread wakes at least this often, and commits at once when signalled...
const METADATA_SAVE_EVERY: Duration = Duration::from_millis(100);
/// ...but not more often than this (a group commit of whatever changed meanwhile).
const COMMIT_MIN_GAP: Duration = Duration::from_millis(5);

impl Node {
    /// Opens the tree, reconciles it, opens the channels and starts every thread.
    pub fn start(mut cfg: NodeConfig) -> Result<Node, NodeError> {
        let files = ChunkFiles::open(&cfg.dir)?;
        let meta_file = MetaFile::new(&cfg.dir, files.tmp_dir());
        let mut meta = meta_file.load()?;
        let fixed = reconcile(&mut meta, &files, cfg.core.id)?;
        if fixed != Default::default() {
            tracing::warn!(
                "reconciled {}: dropped {} chunk records without files, adopted {} chunk files, removed {}",
                cfg.dir.display(),
                fixed.dropped.len(),
                fixed.adopted.len(),
                fixed.removed.len()
            );
        }
        if let Some(kb) = cfg.capacity_kb {
            meta.set_capacity(kb.saturating_mul(1000));
        }
        // Start from a fresh snapshot (folding in the journal and reconciliation).
        meta_file.save(true, |_| {
            Some((meta.generation(), meta.drain_changes(true)))
        })?;
        let socket_err = |channel: Channel, e| NodeError::Socket {
            channel: channel.name(),
            addr: cfg.channels.get(channel).to_string(),
            iface: cfg.iface,
            source: e,
        };
        let sockets = Channel::ALL
            .iter()
            .map(|&c| {
                open_receiver(cfg.channels.get(c), cfg.iface, RECV_POLL)
                    .map_err(|e| socket_err(c, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let senders = Senders::start(cfg.channels, cfg.iface, cfg.send_rate)
            .map_err(|e| socket_err(Channel::Mc, e))?;
        // Enhanced restores take chunk bodies over TCP on the multicast interface.
        let body_listener = if cfg.core.enhanced() {
            let (listener, addr) = tcp::bind(cfg.iface).map_err(|source| NodeError::Tcp {
                iface: cfg.iface,
                source,
            })?;
            cfg.core.restore_tcp = Some(addr);
            Some(listener)
        } else {
            None
        };
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            let this = weak.clone();
            let weak = weak.clone();
            Shared {
                this,
                core: Core::new(cfg.core.clone(), meta),
                files,
                meta_file,
                pool: BoundedPool::new(cfg.workers, cfg.backlog),
                timers: TimerService::start(Duration::from_millis(5), 1024, move |event| {
                    if let Some(s) = weak.upgrade() {
                        let s2 = s.clone();
                        s.pool.execute(move || s2.run(s2.core.on_timer(event)));
                    }
                }),
                senders,
                tcp_pool: ConnectionPool::new(TCP_CONNECTIONS),
                ops: DashMap::new(),
                next_op: AtomicU64::new(1),
                stats: Stats::default(),
                stop: AtomicBool::new(false),
                save_signal: crossbeam_channel::bounded(1),
                commits: Mutex::default(),
            }
        });
        shared.save_metadata();
        let mut threads = Vec::new();
        for (channel, socket) in Channel::ALL.into_iter().zip(sockets) {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("recv-{}", channel.name()))
                    .spawn(move || s.receive(channel, socket))
                    .expect("spawn receiver"),
            );
        }
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("commit".into())
                .spawn(move || {
                    while !s.stop.load(Ordering::Relaxed) {
                        let _ = s.save_signal.1.recv_timeout(METADATA_SAVE_EVERY);
                        s.commit();
                        std::thread::sleep(COMMIT_MIN_GAP);
                    }
                })
                .expect("spawn metadata saver"),
        );
        if let Some(listener) = body_listener {
            let s = shared.clone();
            tcp::serve(listener, move |msg: Message| {
                if matches!(msg.kind, MessageKind::Chunk { .. }) {
                    s.run(s.core.on_message(msg));
                }
            });
        }
        shared.run(shared.core.startup(fixed.dropped));
        Ok(Node { shared, threads })
    }

    /// The client-request handler of this peer.
    pub fn handler(&self) -> Arc<dyn Handler> {
        Arc::new(ClientHandler(self.shared.clone()))
    }

    /// The protocol core (for inspection).
    pub fn core(&self) -> &Core {
        &self.shared.core
    }

    /// Stops receiving, lets queued work finish, saves the metadata.
    pub fn shutdown(self) -> Result<(), StorageError> {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.shared.pool.join();
        self.shared.commit();
        self.shared.save_to_disk()
    }
}

impl Shared {
    fn receive(self: Arc<Self>, channel: Channel, socket: std::net::UdpSocket) {
        let mut buf = vec![0u8; 65_536];
        let me = self.core.config().id;
        while !self.stop.load(Ordering::Relaxed) {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if peek_sender(&buf[..n]) == Some(me) {
                        continue; // our own multicast: not worth a copy
                    }
                    let datagram = buf[..n].to_vec();
                    let s = self.clone();
                    if !self
                        .pool
                        .try_execute(move || s.on_datagram(channel, &datagram))
                    {
                        tracing::debug!("backlog full: dropped a datagram on {}", channel.name());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    tracing::warn!("receive on {}: {e}", channel.name());
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn on_datagram(&self, channel: Channel, datagram: &[u8]) {
        let msg = match Message::parse(datagram) {
            Ok(msg) if channel_of(&msg.kind) == channel => msg,
            Ok(msg) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("dropped {} received on {}", msg.kind.name(), channel.name());
                return;
            }
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("dropped malformed datagram on {}: {e}", channel.name());
                return;
            }
        };
        self.run(self.core.on_message(msg));
    }

    /// Executes the core's actions in order.
    fn run(&self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let _ = self.save_signal.0.try_send(());
        let mut actions = actions.into_iter();
        while let Some(action) = actions.next() {
            match action {
                Action::Send { channel, message } => self.senders.send(channel, message.encode()),
                Action::SendPutchunk {
                    version,
                    chunk,
                    degree,
                    source,
                    op,
                    send,
                    wait,
                } => {
                    let s = self.this();
                    self.senders.send_built(Channel::Mdb, move || {
                        let datagram = s.putchunk_datagram(op, version, chunk, degree, source)?;
                        s.timers
                            .schedule(wait, TimerEvent::PutchunkWait { chunk, send });
                        Some(datagram)
                    });
                }
                Action::RecordHash { op, chunk, source } => {
                    let ChunkSource::File { path, offset, len } = source else {
                        continue;
                    };
                    let recorded = match read_at(&path, offset, len) {
                        Ok(body) => self.core.putchunk_read(op, chunk, ChunkHash::of(&body)),
                        Err(e) => Err(self.core.backup_source_failed(op, e.to_string())),
                    };
                    if let Err(actions) = recorded {
                        self.run(actions);
                    }
                }
                Action::SendChunk { chunk, hash, tcp } => {
                    let s = self.this();
                    self.senders
                        .send_built(Channel::Mdr, move || s.chunk_datagram(chunk, hash, tcp));
                }
                Action::WriteChunk {
                    chunk,
                    desired,
                    body,
                } => match self.files.stage(chunk, &body) {
                    Ok(staged) => {
                        let write = StagedWrite {
                            staged,
                            desired,
                            size: body.len() as u32,
                            hash: ChunkHash::of(&body),
                        };
                        self.commits.lock().staged.push(write);
                        let _ = self.save_signal.0.try_send(());
                    }
                    Err(e) => {
                        self.stats
                            .disk_error(format_args!("storing chunk {chunk}: {e}"));
                        let failed =
                            self.core
                                .chunk_written(chunk, desired, body.len() as u32, None);
                        self.run(failed);
                    }
                },
                Action::RemoveChunk { chunk } => {
                    if let Err(e) = self.files.remove(&chunk) {
                        self.stats
                            .disk_error(format_args!("removing chunk {chunk}: {e}"));
                    }
                }
                Action::CreateRestoreFile { op, path, size } => {
                    if let Err(e) = std::fs::File::create(&path).and_then(|f| f.set_len(size)) {
                        self.run(
                            self.core.restore_failed(
                                op,
                                format!("cannot create {}: {e}", path.display()),
                            ),
                        );
                    }
                }
                Action::WriteRestored {
                    op,
                    path,
                    offset,
                    body,
                } => {
                    let written = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.write_all_at(&body, offset));
                    if let Err(e) = &written {
                        tracing::error!("writing {}: {e}", path.display());
                    }
                    self.run(self.core.restored_chunk_written(op, written.is_ok()));
                }
                Action::CommitRestore { op, tmp, dest } => {
                    let result = commit_restore(&tmp, &dest).map_err(|e| e.to_string());
                    self.run(self.core.restore_committed(op, result));
                }
                Action::AbortRestore { tmp } => {
                    let _ = std::fs::remove_file(tmp);
                }
                Action::SyncMetadata => {
                    // What follows waits for the next commit (which saves the metadata).
                    self.commits.lock().after.push(actions.collect());
                    let _ = self.save_signal.0.try_send(());
                    return;
                }
                Action::Schedule { delay, event } => {
                    self.timers.schedule(delay, event);
                }
                Action::Report { op, event } => self.report(op, event),
            }
        }
    }

    fn message(&self, version: Version, kind: MessageKind) -> Message {
        Message::new(version, self.core.config().id, kind)
    }

    /// This peer, shared (for work handed to other threads).
    fn this(&self) -> Arc<Shared> {
        self.this.upgrade().expect("a running peer is alive")
    }

    /// Builds a CHUNK reply when its turn to be sent comes: reads the stored copy and checks
    /// it (a corrupt or unreadable copy is dropped and announced instead). Enhanced: the whole
    /// CHUNK goes over TCP to the initiator and only its header on MDR (the body goes on MDR
    /// if TCP fails).
    fn chunk_datagram(
        &self,
        chunk: ChunkKey,
        hash: Option<ChunkHash>,
        tcp: Option<SocketAddrV4>,
    ) -> Option<Vec<u8>> {
        let body = match self.files.read(&chunk) {
            Ok(body) if hash.is_none_or(|h| h == ChunkHash::of(&body)) => body,
            Ok(_) => {
                tracing::error!(
                    "stored chunk {chunk} is corrupt: dropping it and announcing REMOVED"
                );
                self.run(self.core.stored_chunk_lost(chunk));
                return None;
            }
            Err(e) => {
                tracing::error!("{e}: dropping chunk {chunk} and announcing REMOVED");
                self.run(self.core.stored_chunk_lost(chunk));
                return None;
            }
        };
        let body = match tcp {
            None => body,
            Some(addr) => {
                let whole = self.message(Version::V2_0, MessageKind::Chunk { chunk, body });
                match self.tcp_pool.send(addr, &tcp::frame(&whole)) {
                    Ok(()) => {
                        let empty = MessageKind::Chunk {
                            chunk,
                            body: Vec::new(),
                        };
                        let mut header = self.message(Version::V2_0, empty);
                        header.extra_lines.push(BODY_BY_TCP.to_string());
                        return Some(header.encode());
                    }
                    Err(e) => {
                        tracing::warn!(
                            "sending chunk {chunk} over TCP to {addr}: {e}; sending it on MDR"
                        );
                        let MessageKind::Chunk { body, .. } = whole.kind else {
                            return None;
                        };
                        body
                    }
                }
            }
        };
        Some(
            self.message(Version::V1_0, MessageKind::Chunk { chunk, body })
                .encode(),
        )
    }

    /// Builds a PUTCHUNK when its turn to be sent comes: reads the chunk from the home's file
    /// (checking it did not change) or from our stored copy (re-backup).
    fn putchunk_datagram(
        &self,
        op: OpId,
        version: Version,
        chunk: ChunkKey,
        degree: u8,
        source: ChunkSource,
    ) -> Option<Vec<u8>> {
        let body = match source {
            ChunkSource::File { path, offset, len } => match read_at(&path, offset, len) {
                Ok(body) => {
                    if let Err(actions) = self.core.putchunk_read(op, chunk, ChunkHash::of(&body)) {
                        self.run(actions);
                        return None;
                    }
                    body
                }
                Err(e) => {
                    self.run(self.core.backup_source_failed(op, e.to_string()));
                    return None;
                }
            },
            ChunkSource::Stored => match self.files.read(&chunk) {
                Ok(body) => body,
                Err(e) => {
                    let mut actions = self.core.stored_chunk_lost(chunk);
                    actions.extend(self.core.backup_source_failed(op, e.to_string()));
                    self.run(actions);
                    return None;
                }
            },
        };
        let putchunk = MessageKind::Putchunk {
            chunk,
            degree,
            body,
        };
        Some(self.message(version, putchunk).encode())
    }

    fn report(&self, op: OpId, event: OpEvent) {
        let Some(path) = self.ops.get(&op).map(|s| s.path.display().to_string()) else {
            if op >= INTERNAL_OPS {
                tracing::info!("re-backup: {event:?}");
            }
            return;
        };
        let reply = match event {
            OpEvent::Progress { done, total } => Reply::Progress { done, total },
            OpEvent::BackupDone {
                file,
                chunks,
                short,
            } => Reply::Done {
                ok: short.is_empty(),
                message: if short.is_empty() {
                    format!("backed up {path}: {chunks} chunks at the desired degree")
                } else {
                    format!(
                        "backup of {path} incomplete: {} of {chunks} chunks below the desired degree after 5 tries: {}",
                        short.len(),
                        list_chunks(&short)
                    )
                },
                result: json!({"path": path, "file_id": file, "chunks": chunks, "short": short}),
            },
            OpEvent::RestoreDone { file, dest, chunks } => Reply::Done {
                ok: true,
                message: format!("restored {path} to {}", dest.display()),
                result: json!({"path": path, "file_id": file, "chunks": chunks, "restored_to": dest}),
            },
            OpEvent::RestoreIncomplete { file, missing } => Reply::Done {
                ok: false,
                message: format!(
                    "restore of {path} failed: no peer delivered a valid copy of chunk(s) {}",
                    list_chunks(&missing)
                ),
                result: json!({"path": path, "file_id": file, "missing": missing}),
            },
            OpEvent::DeleteDone { file } => Reply::Done {
                ok: true,
                message: format!("deleted the backup of {path}"),
                result: json!({"path": path, "file_id": file}),
            },
            OpEvent::Failed(message) => Reply::Error { message },
        };
        let last = !matches!(reply, Reply::Progress { .. });
        if let Some(sink) = self.ops.get(&op) {
            let _ = sink.tx.send(reply);
        }
        if last {
            self.ops.remove(&op);
        }
    }

    /// STATE with the peer's counters (`counters`): what was received, dropped, resent.
    fn state_json(&self) -> serde_json::Value {
        let mut state = serde_json::to_value(self.core.state()).expect("state serialises");
        let sent = &self.senders.stats;
        let mut counters = serde_json::to_value(&self.core.counters).expect("counters serialise");
        let extra = json!({
            "received": self.stats.received.load(Ordering::Relaxed),
            "malformed": self.stats.malformed.load(Ordering::Relaxed),
            "backlog_dropped": self.pool.dropped(),
            "sent": sent.datagrams.load(Ordering::Relaxed),
            "send_errors": sent.errors.load(Ordering::Relaxed),
            "instances": self.core.instances(),
            "disk_errors": self.stats.disk_errors.load(Ordering::Relaxed),
            "metadata_saved": self.meta_file.saved() == self.core.with_metadata(|m| m.generation())
                && { let c = self.commits.lock(); c.staged.is_empty() && c.after.is_empty() },
            "timers": self.timers.len(),
        });
        if let (Some(c), Some(e)) = (counters.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        state["counters"] = counters;
        state["last_disk_error"] = json!(*self.stats.last_disk_error.lock());
        state
    }

    /// Group commit, on the commit thread: makes the staged chunks durable and records them,
    /// saves the metadata, then runs the actions that waited for it (STOREDs, REMOVEDs).
    fn commit(&self) {
        let staged = std::mem::take(&mut self.commits.lock().staged);
        if !staged.is_empty() {
            let mut info: HashMap<ChunkKey, (u8, u32, ChunkHash)> = staged
                .iter()
                .map(|w| (w.staged.key, (w.desired, w.size, w.hash)))
                .collect();
            let results = self
                .files
                .commit(staged.into_iter().map(|w| w.staged).collect());
            for (chunk, result) in results {
                let (desired, size, hash) = info.remove(&chunk).expect("staged chunk");
                let written = match result {
                    Ok(()) => Some(hash),
                    Err(e) => {
                        self.stats
                            .disk_error(format_args!("storing chunk {chunk}: {e}"));
                        None
                    }
                };
                self.run(self.core.chunk_written(chunk, desired, size, written));
            }
        }
        let after = std::mem::take(&mut self.commits.lock().after);
        self.save_metadata();
        for actions in after {
            self.run(actions);
        }
    }

    fn save_metadata(&self) {
        if let Err(e) = self.save_to_disk() {
            self.stats.disk_error(format_args!("saving metadata: {e}"));
        }
    }

    fn save_to_disk(&self) -> Result<(), StorageError> {
        self.meta_file
            .save(false, |snapshot| self.core.drain_changes(snapshot))
    }

    fn new_op(&self, path: &Path) -> (OpId, Receiver<Reply>) {
        let op = self.next_op.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        self.ops.insert(
            op,
            OpSink {
                tx,
                path: path.to_path_buf(),
            },
        );
        (op, rx)
    }

    fn backup(&self, path: &Path, degree: u8, enhanced: bool) -> Result<Receiver<Reply>, String> {
        let path = std::fs::canonicalize(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let meta =
            std::fs::metadata(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", path.display()));
        }
        let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        let file = file_id(&path, meta.len(), mtime, self.core.config().id);
        let (op, rx) = self.new_op(&path);
        let req = BackupRequest {
            path,
            file,
            size: meta.len(),
            degree,
            enhanced,
        };
        self.start(op, rx, self.core.start_backup(op, req))
    }

    fn delete(&self, path: &Path, enhanced: bool) -> Result<Receiver<Reply>, String> {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let (op, rx) = self.new_op(&path);
        self.start(op, rx, self.core.start_delete(op, &path, enhanced))
    }

    fn restore(&self, path: &Path, enhanced: bool) -> Result<Receiver<Reply>, String> {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let name = path
            .file_name()
            .ok_or_else(|| format!("{} does not name a file", path.display()))?;
        let dest = self.files.root().join("restored").join(name);
        if std::fs::canonicalize(&dest).is_ok_and(|d| d == path) {
            return Err(format!(
                "restoring {} would overwrite the original: move it out of {} first",
                path.display(),
                self.files.root().join("restored").display()
            ));
        }
        let (op, rx) = self.new_op(&path);
        let tmp = self.files.tmp_dir().join(format!("restore-{op}.part"));
        let req = RestoreRequest {
            path,
            tmp,
            dest,
            enhanced,
        };
        self.start(op, rx, self.core.start_restore(op, req))
    }

    fn reclaim(&self, max_kb: u64, enhanced: bool) -> Receiver<Reply> {
        let (done, actions) = self.core.reclaim(max_kb.saturating_mul(1000), enhanced);
        self.run(actions);
        let message = format!(
            "capacity set to {} KB: {:.3} KB used, {} chunk(s) evicted",
            max_kb,
            done.used as f64 / 1000.0,
            done.evicted.len()
        );
        let result = json!({
            "capacity_kb": max_kb,
            "used_kb": done.used as f64 / 1000.0,
            "evicted": done.evicted.len(),
        });
        reply_done(message, result)
    }

    /// Runs a started command's first actions, or forgets the operation if it was refused.
    fn start(
        &self,
        op: OpId,
        rx: Receiver<Reply>,
        started: Result<Vec<Action>, crate::core::CommandError>,
    ) -> Result<Receiver<Reply>, String> {
        match started {
            Ok(actions) => {
                self.run(actions);
                Ok(rx)
            }
            Err(e) => {
                self.ops.remove(&op);
                Err(e.to_string())
            }
        }
    }
}

/// Reads `len` bytes at `offset` of the file at `path`.
fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut body = vec![0u8; len];
    file.read_exact_at(&mut body, offset)?;
    Ok(body)
}

/// Makes a restored file durable and renames it into place.
fn commit_restore(tmp: &Path, dest: &Path) -> Result<(), StorageError> {
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(tmp, dest))
        .map_err(|source| StorageError::Io {
            what: "move the restored file to",
            path: dest.to_path_buf(),
            source,
        })?;
    crate::storage::sync_dir(dest.parent().unwrap_or(Path::new(".")))
}

/// The channel a message type travels on.
fn channel_of(kind: &MessageKind) -> Channel {
    match kind {
        MessageKind::Putchunk { .. } => Channel::Mdb,
        MessageKind::Chunk { .. } => Channel::Mdr,
        _ => Channel::Mc,
    }
}

/// "0, 3, 7" (at most 20, then "…").
fn list_chunks(chunks: &[u32]) -> String {
    let mut s: Vec<String> = chunks.iter().take(20).map(u32::to_string).collect();
    if chunks.len() > 20 {
        s.push(format!("… ({} more)", chunks.len() - 20));
    }
    s.join(", ")
}

struct ClientHandler(Arc<Shared>);

impl Handler for ClientHandler {
    fn handle(&self, request: Request) -> Receiver<Reply> {
        let s = &self.0;
        let version = s.core.config().version;
        let result = if request.enhanced() && version == crate::protocol::Version::V1_0 {
            Err(format!(
                "{}ENH needs a peer started with an enhanced protocol version; this peer runs {version}",
                request.name()
            ))
        } else {
            match &request {
                Request::Backup {
                    path,
                    degree,
                    enhanced,
                } => s.backup(path, *degree, *enhanced),
                Request::Delete { path, enhanced } => s.delete(path, *enhanced),
                Request::State => Ok(reply_done(String::new(), s.state_json())),
                Request::Restore { path, enhanced } => s.restore(path, *enhanced),
                Request::Reclaim { max_kb, enhanced } => Ok(s.reclaim(*max_kb, *enhanced)),
            }
        };
        result.unwrap_or_else(|message| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let _ = tx.send(Reply::Error { message });
            rx
        })
    }
}

fn reply_done(message: String, result: serde_json::Value) -> Receiver<Reply> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let _ = tx.send(Reply::Done {
        ok: true,
        message,
        result,
    });
    rx
}
