//! A running peer: starts and stops the threads that drive its executor.
//!
//! Path of a datagram: receiver thread (`recv`, copy; see `receive.rs`) → bounded worker pool →
//! the executor (parse, core, actions: chunks staged for the commit thread, sends queued to the
//! paced sender threads, timers into the wheel, reports to the client's connection thread; see
//! `crate::exec`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::client_ops::ClientHandler;
use super::effects::{Peer, RealEffects};
use super::metrics::{MetricsError, MetricsServer};
use super::pool::BoundedPool;
use super::receive::receive;
use super::replies::Replies;
use super::sender::Senders;
use super::tcp::{self, ConnectionPool, PoolConfig};
use super::timer::TimerService;
use crate::client::server::Handler;
use crate::core::{Channel, Config};
use crate::exec::{Executor, boot};
use crate::net::{ChannelAddrs, RECV_BUFFER, open_receiver, recv_buffer_size};
use crate::storage::{PeerDisk, StorageError};

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
    /// Runs of pieces go out by UDP GSO where the kernel allows.
    pub gso: bool,
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
    /// The TCP listener of enhanced restores, or the TCP connection pool, cannot be opened
    /// (or its thread started).
    #[error("cannot set up TCP chunk bodies on {iface}: {source}")]
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

/// A running peer.
pub struct Node {
    peer: Arc<Peer>,
    threads: Vec<JoinHandle<()>>,
    /// Enhanced peers: the TCP body listener (its thread stops when it is dropped).
    bodies: Option<tcp::BodyListener>,
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
        let disk = PeerDisk::open(&cfg.dir)?;
        let booted = boot(
            &disk,
            cfg.core.id,
            cfg.capacity_kb.map(|kb| kb.saturating_mul(1000)),
        )?;
        let fixed = &booted.reconciled;
        if *fixed != Default::default() {
            tracing::warn!(
                "reconciled {}: dropped {} chunk records without files, adopted {} chunk files, removed {}",
                cfg.dir.display(),
                fixed.dropped.len(),
                fixed.adopted.len(),
                fixed.removed.len()
            );
        }
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
        let senders = Senders::start(cfg.channels, cfg.iface, cfg.send_rate, cfg.gso)
            .map_err(|e| socket_err(Channel::Mc, e))?;
        // The catalog document is written in the tree (and backed up from there).
        cfg.core.catalog_path = cfg.dir.join("catalog.json");
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
        let tcp_pool =
            ConnectionPool::with_config(PoolConfig::new(TCP_CONNECTIONS)).map_err(|source| {
                NodeError::Tcp {
                    iface: cfg.iface,
                    source,
                }
            })?;
        // Each frame goes to the worker pool while its backlog has room; past that it runs on
        // the listener's thread, which then reads nothing meanwhile: TCP slows the holders
        // down, no body is dropped. (The listener starts before the peer exists, so that a
        // failure leaves nothing running; no frame can come before the peer's first GETCHUNK.)
        let body_peer = Arc::new(OnceLock::<Weak<Peer>>::new());
        let bodies = match body_listener {
            Some(listener) => {
                let slot = body_peer.clone();
                let deliver = move |frame: bytes::Bytes| {
                    let Some(p) = slot.get().and_then(Weak::upgrade) else {
                        return;
                    };
                    let p2 = p.clone();
                    let len = frame.len();
                    if let Err(job) = p.effects.pool.offer(len, move || p2.on_tcp_message(frame)) {
                        job();
                    }
                };
                let bodies = tcp::serve(listener, deliver).map_err(|source| NodeError::Tcp {
                    iface: cfg.iface,
                    source,
                })?;
                Some(bodies)
            }
            None => None,
        };
        let peer = Executor::new(cfg.core.clone(), booted.meta, |weak: &Weak<Peer>| {
            let _ = body_peer.set(weak.clone());
            let weak = weak.clone();
            RealEffects {
                disk,
                pool: BoundedPool::new(cfg.workers, cfg.backlog_bytes),
                // Due events go to the worker pool, except those with nothing left to do.
                timers: TimerService::start(Duration::from_millis(5), 1024, move |event| {
                    if let Some(p) = weak.upgrade()
                        && !p.timer_is_stale(&event)
                    {
                        let p2 = p.clone();
                        p.effects.pool.execute(move || p2.on_timer(event));
                    }
                }),
                senders,
                tcp_pool,
                replies: Replies::new(),
                received: AtomicU64::new(0),
                recv_calls: AtomicU64::new(0),
                datagrams: Default::default(),
                stop: AtomicBool::new(false),
                commit_signal: crossbeam_channel::bounded(1),
            }
        });
        let mut threads = Vec::new();
        for (channel, socket) in Channel::ALL.into_iter().zip(sockets) {
            let p = peer.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("recv-{}", channel.name()))
                    .spawn(move || receive(p, channel, socket))
                    .expect("spawn receiver"),
            );
        }
        let p = peer.clone();
        threads.push(
            std::thread::Builder::new()
                .name("commit".into())
                .spawn(move || {
                    while !p.effects.stop.load(Ordering::Relaxed) {
                        let _ = p.effects.commit_signal.1.recv_timeout(METADATA_SAVE_EVERY);
                        p.commit();
                        std::thread::sleep(COMMIT_MIN_GAP);
                    }
                })
                .expect("spawn committer"),
        );
        peer.start(booted.reconciled);
        Ok(Node {
            peer,
            threads,
            bodies,
        })
    }

    /// The client-request handler of this peer.
    pub fn handler(&self) -> Arc<dyn Handler> {
        Arc::new(ClientHandler(self.peer.clone()))
    }

    /// Serves this peer's metrics (its STATE, see [`super::metrics`]) over HTTP on `addr`
    /// until the server returned is stopped or dropped.
    pub fn serve_metrics(&self, addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
        let peer = ClientHandler(self.peer.clone());
        MetricsServer::start(addr, move || peer.state_json())
    }

    /// Stops receiving, lets queued work finish, saves the metadata.
    pub fn shutdown(self) -> Result<(), StorageError> {
        let Node {
            peer,
            threads,
            bodies,
        } = self;
        peer.effects.stop.store(true, Ordering::Relaxed);
        drop(bodies);
        for t in threads {
            let _ = t.join();
        }
        peer.effects.pool.join();
        peer.commit();
        peer.save_to_disk()
    }
}
