//! The real world of a peer's executor: its directory tree, the paced sender threads, the
//! timer wheel (due events go to the worker pool), TCP connections to initiators, and the
//! clients' reply channels.

use std::io;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use super::pool::BoundedPool;
use super::replies::Replies;
use super::sender::Senders;
use super::tcp::{self, ConnectionPool};
use super::timer::TimerService;
use crate::core::{Channel, OpEvent, OpId, TimerEvent};
use crate::exec::{Effects, Executor, Outgoing};
use crate::storage::PeerDisk;

/// A running peer: its core and the executor over the real world.
pub(super) type Peer = Executor<RealEffects>;

/// What the threads of a running peer share besides its core.
pub(super) struct RealEffects {
    pub(super) disk: PeerDisk,
    pub(super) pool: BoundedPool,
    pub(super) timers: TimerService<TimerEvent>,
    pub(super) senders: Senders,
    /// Enhanced: connections to initiators that take chunk bodies over TCP.
    pub(super) tcp_pool: ConnectionPool,
    pub(super) replies: Replies,
    /// Datagrams received, all channels.
    pub(super) received: AtomicU64,
    /// System calls that received datagrams, all channels (one `recvmmsg` may take many).
    pub(super) recv_calls: AtomicU64,
    /// What became of the datagrams received, by channel (in [`Channel::ALL`] order).
    pub(super) datagrams: [DatagramCounts; 3],
    /// Set when the peer stops.
    pub(super) stop: AtomicBool,
    /// Wakes the commit thread.
    pub(super) commit_signal: (Sender<()>, Receiver<()>),
}

/// What became of the datagrams received on one channel (STATE's `counters.datagrams`). Their
/// sum is what the channel received, less the datagrams still queued for the workers.
#[derive(Debug, Default, Serialize)]
pub(super) struct DatagramCounts {
    /// Handed to the core.
    pub(super) ok: AtomicU64,
    /// This peer's own multicast, looped back to it (skipped).
    pub(super) own: AtomicU64,
    /// Dropped as malformed (or sent on the wrong channel).
    pub(super) malformed: AtomicU64,
    /// Dropped because the workers' backlog was full.
    pub(super) dropped: AtomicU64,
}

impl Effects for RealEffects {
    type Disk = PeerDisk;

    fn disk(&self) -> &PeerDisk {
        &self.disk
    }

    fn send(&self, channel: Channel, out: Outgoing) {
        self.senders.send(channel, out);
    }

    fn schedule(&self, delay: Duration, event: TimerEvent) {
        self.timers.schedule(delay, event);
    }

    fn report(&self, op: OpId, event: OpEvent) {
        self.replies.report(op, event);
    }

    fn send_tcp(&self, addr: SocketAddrV4, message: Vec<u8>) -> io::Result<()> {
        self.tcp_pool
            .send(addr, tcp::frame(&message))
            .map_err(|e| match e {
                // The initiator's own queue is full: hold back (a pool busy with other
                // initiators is not this one's doing: that body goes on MDR).
                tcp::SendError::QueueFull { .. } => io::Error::new(io::ErrorKind::WouldBlock, e),
                e => io::Error::other(e),
            })
    }

    fn slow_down(&self) {
        self.senders.slow_down();
    }

    fn unix_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn wake_commit(&self) {
        let _ = self.commit_signal.0.try_send(());
    }
}
