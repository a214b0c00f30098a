//! The simulated world of one peer's executor: what it asks for (sends, timers, reports, TCP
//! messages, commits) is collected in an outbox that the simulation loop drains after every
//! step, turning each into events on the virtual clock.

use std::io;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::disk::SimDisk;
use crate::core::{Channel, OpEvent, OpId, TimerEvent};
use crate::exec::{Effects, Outgoing};
use std::sync::atomic::{AtomicU64, Ordering};

/// What a peer asked of the world during one step.
#[derive(Default)]
pub struct Outbox {
    /// Datagrams queued per channel.
    pub sends: Vec<(Channel, Outgoing)>,
    /// Timers to deliver after a delay.
    pub timers: Vec<(Duration, TimerEvent)>,
    /// Reports to clients.
    pub reports: Vec<(OpId, OpEvent)>,
    /// Whole messages over TCP, to the peer at an address.
    pub tcp: Vec<(SocketAddrV4, Vec<u8>)>,
    /// A group commit was asked for.
    pub commit: bool,
    /// Loss signals for the pacer.
    pub slow_downs: u32,
}

/// Which TCP addresses accept connections now (peers up and reachable from this one).
pub trait Reachable: Send + Sync {
    /// Whether a connection from peer `from` to `addr` would be accepted.
    fn accepts(&self, from: u32, addr: SocketAddrV4) -> bool;
    /// Whether the connection's queue is full for this send (see
    /// [`super::Scenario::tcp_busy`]).
    fn queue_full(&self) -> bool;
}

/// One simulated peer's world.
pub struct SimEffects {
    /// The peer's index in the group.
    pub index: u32,
    /// Its disk (which outlives a crash).
    pub disk: Arc<SimDisk>,
    /// What it asked for since the last drain.
    pub outbox: Mutex<Outbox>,
    /// Who accepts TCP connections.
    pub net: Arc<dyn Reachable>,
    /// The virtual clock, milliseconds since the epoch.
    pub clock: Arc<AtomicU64>,
}

impl Effects for SimEffects {
    type Disk = SimDisk;

    fn disk(&self) -> &SimDisk {
        &self.disk
    }

    fn send(&self, channel: Channel, out: Outgoing) {
        self.outbox.lock().sends.push((channel, out));
    }

    fn schedule(&self, delay: Duration, event: TimerEvent) {
        self.outbox.lock().timers.push((delay, event));
    }

    fn report(&self, op: OpId, event: OpEvent) {
        self.outbox.lock().reports.push((op, event));
    }

    fn send_tcp(&self, addr: SocketAddrV4, message: Vec<u8>) -> io::Result<()> {
        if !self.net.accepts(self.index, addr) {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        if self.net.queue_full() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.outbox.lock().tcp.push((addr, message));
        Ok(())
    }

    fn slow_down(&self) {
        self.outbox.lock().slow_downs += 1;
    }

    fn unix_ms(&self) -> u64 {
        self.clock.load(Ordering::Relaxed)
    }

    fn wake_commit(&self) {
        self.outbox.lock().commit = true;
    }
}
