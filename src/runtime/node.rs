//! A running peer: starts and stops the threads that drive the protocol core, and holds what
//! they share.
//!
//! Path of a datagram: receiver thread (`recv`, copy) → bounded worker pool → parse → core →
//! actions, executed on that worker (see `actions.rs`): chunks staged for the commit thread,
//! sends queued to the paced sender threads, timers into the wheel, reports to the client's
//! connection thread (see `commands.rs`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use dashmap::DashMap;
use parking_lot::Mutex;

use super::commands::{ClientHandler, OpSink};
use super::pool::BoundedPool;
use super::sender::Senders;
use super::tcp::{self, ConnectionPool};
use super::timer::TimerService;
use crate::client::server::Handler;
use crate::core::{Action, Channel, Config, Core, OpId, TimerEvent};
use crate::net::{ChannelAddrs, RECV_BUFFER, open_receiver, recv_buffer_size, recv_head};
use crate::protocol::{ChunkHash, MAX_CHUNK_SIZE, Message, MessageKind, peek_sender};
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
    /// Bytes of received datagrams queued for the workers at most (a full chunk is
    /// about 64 KB, a control message a few hundred bytes).
    pub backlog_bytes: usize,
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
    pub(super) fn disk_error(&self, what: std::fmt::Arguments<'_>) {
        let text = what.to_string();
        tracing::error!("{text}");
        self.disk_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_disk_error.lock() = Some(text);
    }
}

pub(super) struct Shared {
    /// Itself, for work handed to other threads.
    pub(super) this: Weak<Shared>,
    pub(super) core: Core,
    pub(super) files: ChunkFiles,
    pub(super) meta_file: MetaFile,
    pub(super) pool: BoundedPool,
    pub(super) timers: TimerService<TimerEvent>,
    pub(super) senders: Senders,
    /// Enhanced: connections to initiators that take chunk bodies over TCP.
    pub(super) tcp_pool: ConnectionPool,
    pub(super) ops: DashMap<OpId, OpSink>,
    pub(super) next_op: AtomicU64,
    pub(super) stats: Stats,
    pub(super) stop: AtomicBool,
    /// Wakes the commit thread after actions that may have changed the metadata.
    pub(super) save_signal: (Sender<()>, Receiver<()>),
    /// What the next group commit makes durable, and what waits for it.
    pub(super) commits: Mutex<Commits>,
}

/// Work for the next group commit.
#[derive(Default)]
pub(super) struct Commits {
    /// Chunks written to temporary files, to make durable and record.
    pub(super) staged: Vec<StagedWrite>,
    /// Action sequences that follow a `SyncMetadata`, to run once the metadata is saved.
    pub(super) after: Vec<Vec<Action>>,
}

/// A staged chunk with what the core needs to record it.
pub(super) struct StagedWrite {
    pub(super) staged: Staged,
    pub(super) desired: u8,
    pub(super) size: u32,
    pub(super) hash: ChunkHash,
}

/// A running peer.
pub struct Node {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

const RECV_POLL: Duration = Duration::from_millis(200);
/// Bytes of a CHUNK received by a peer that restores nothing: room for any header it sends.
const CHUNK_HEAD: usize = 1024;
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
        if let Ok(got) = recv_buffer_size(&sockets[0])
            && got < 2 * RECV_BUFFER
        {
            tracing::warn!(
                "receive buffers are {} KiB, not the {} KiB wanted: bursts of chunks may be \
                 dropped and resent. Raise net.core.rmem_max to {} (or give the peer \
                 CAP_NET_ADMIN)",
                got / 1024,
                2 * RECV_BUFFER / 1024,
                RECV_BUFFER
            );
        }
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
                pool: BoundedPool::new(cfg.workers, cfg.backlog_bytes),
                timers: TimerService::start(Duration::from_millis(5), 1024, move |event| {
                    if let Some(s) = weak.upgrade()
                        && !s.core.timer_is_stale(&event)
                    {
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
            // A peer that restores nothing needs only the header of a CHUNK (to silence its
            // own reply for the same chunk), not the body. It waits for the next datagram
            // without taking it, then decides: a restore may have started meanwhile.
            let received = if channel == Channel::Mdr && !self.core.restoring() {
                match recv_head(&socket, &mut buf[..CHUNK_HEAD], true) {
                    Ok(_) if self.core.restoring() => socket.recv(&mut buf).map(|n| (n, n)),
                    Ok(_) => recv_head(&socket, &mut buf[..CHUNK_HEAD], false),
                    Err(e) => Err(e),
                }
            } else {
                socket.recv(&mut buf).map(|n| (n, n))
            };
            match received {
                Ok((n, full)) => {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if peek_sender(&buf[..n]) == Some(me) {
                        continue; // our own multicast: not worth a copy
                    }
                    let datagram = buf[..n].to_vec();
                    let s = self.clone();
                    if !self
                        .pool
                        .try_execute(n, move || s.on_datagram(channel, &datagram, full))
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

    /// Handles one datagram of `full` bytes, of which only the beginning may have been
    /// received (see `receive`).
    fn on_datagram(&self, channel: Channel, datagram: &[u8], full: usize) {
        if full > datagram.len() {
            // Only a CHUNK's header is of use without its body (whose size is still checked).
            let header = header_of(datagram).filter(|h| full - h.len() <= MAX_CHUNK_SIZE);
            match header.map(Message::parse) {
                Some(Ok(Message {
                    kind: MessageKind::Chunk { chunk, .. },
                    ..
                })) => self.core.chunk_seen(chunk),
                _ => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("dropped a {full}-byte datagram on {}", channel.name());
                }
            }
            return;
        }
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
        if let MessageKind::Chunk { chunk, .. } = &msg.kind
            && self.pool.filling()
        {
            self.core.restore_backlogged(*chunk);
        }
        self.run(self.core.on_message(msg));
    }
}

/// The header of a datagram (up to and including its CRLF CRLF), if it is all there.
fn header_of(datagram: &[u8]) -> Option<&[u8]> {
    let end = datagram.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(&datagram[..end + 4])
}

/// The channel a message type travels on.
fn channel_of(kind: &MessageKind) -> Channel {
    match kind {
        MessageKind::Putchunk { .. } => Channel::Mdb,
        MessageKind::Chunk { .. } => Channel::Mdr,
        _ => Channel::Mc,
    }
}
