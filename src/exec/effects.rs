//! What the executor needs from a world: a disk ([`crate::storage::Disk`]), a network, timers
//! and clients. The real runtime implements [`Effects`] with sockets, the timer wheel and the
//! access point; the simulator with a simulated network and clock.

use std::io;
use std::net::SocketAddrV4;
use std::time::Duration;

use crate::core::{Channel, OpEvent, OpId, TimerEvent};
use crate::storage::Disk;

/// A datagram to send: ready, or built when the sender gets to it.
pub enum Outgoing {
    /// A datagram.
    Ready(Vec<u8>),
    /// Builds the datagram (or nothing, if it is no longer wanted or cannot be) just before it
    /// is sent, so that a chunk body is read at send time and a reply is checked again then.
    Build(Box<dyn FnOnce() -> Option<Vec<u8>> + Send>),
    /// Builds the datagrams, sent back to back, just before they are sent (a message sealed,
    /// or cut into pieces).
    Many(Box<dyn FnOnce() -> Vec<Vec<u8>> + Send>),
    /// Pieces asked for by a NACK, built just before they are sent. A repair goes ahead of
    /// everything else queued on its channel (after earlier repairs): behind a window of
    /// PUTCHUNKs it would come after the chunk's wait ran out.
    Repair(Box<dyn FnOnce() -> Vec<Vec<u8>> + Send>),
}

impl Outgoing {
    /// The datagrams to send now, in order.
    pub fn into_datagrams(self) -> Vec<Vec<u8>> {
        match self {
            Outgoing::Ready(d) => vec![d],
            Outgoing::Build(build) => build().into_iter().collect(),
            Outgoing::Many(build) | Outgoing::Repair(build) => build(),
        }
    }

    /// Whether it goes ahead of what is queued (see [`Outgoing::Repair`]).
    pub fn is_repair(&self) -> bool {
        matches!(self, Outgoing::Repair(_))
    }

    /// Puts `self` in `queue` where it belongs: at the back, or a repair after the repairs
    /// at its front.
    pub fn enqueue(self, queue: &mut std::collections::VecDeque<Outgoing>) {
        let at = if self.is_repair() {
            queue
                .iter()
                .position(|o| !o.is_repair())
                .unwrap_or(queue.len())
        } else {
            queue.len()
        };
        queue.insert(at, self);
    }
}

/// The world a peer's executor acts on.
pub trait Effects: Send + Sync + 'static {
    /// The peer's disk.
    type Disk: Disk;

    /// The peer's disk.
    fn disk(&self) -> &Self::Disk;
    /// Queues a datagram on a channel; it goes out in order, when the pacer allows.
    fn send(&self, channel: Channel, out: Outgoing);
    /// Delivers `event` to [`crate::exec::Executor::on_timer`] after `delay`.
    fn schedule(&self, delay: Duration, event: TimerEvent);
    /// Tells the client running `op`.
    fn report(&self, op: OpId, event: OpEvent);
    /// Enhanced: sends a whole message (a CHUNK, encoded and sealed if the group is secure)
    /// over TCP to an initiator, without waiting: `Ok` when it is on its way (it may still be
    /// lost if the connection fails later; the initiator asks again); `WouldBlock` when the
    /// connection has too much queued already (the caller sends nothing: the initiator reads
    /// slower than it asks); another error when it cannot go by TCP now (the caller sends it
    /// on MDR).
    fn send_tcp(&self, addr: SocketAddrV4, message: Vec<u8>) -> io::Result<()>;
    /// The wall clock, milliseconds since the epoch (secure groups seal messages with it).
    fn unix_ms(&self) -> u64;
    /// A loss signal (a NACK for pieces this peer sent): the send rate goes down for a while
    /// (`crate::exec::pacer::Pacer::slow_down`).
    fn slow_down(&self);
    /// Asks for a group commit ([`crate::exec::Executor::commit`]) soon.
    fn wake_commit(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(o: Outgoing) -> u8 {
        o.into_datagrams()[0][0]
    }

    #[test]
    fn repairs_go_ahead_of_queued_sends_in_their_own_order() {
        let mut q = std::collections::VecDeque::new();
        Outgoing::Ready(vec![1]).enqueue(&mut q);
        Outgoing::Many(Box::new(|| vec![vec![2]])).enqueue(&mut q);
        Outgoing::Repair(Box::new(|| vec![vec![3]])).enqueue(&mut q);
        Outgoing::Ready(vec![4]).enqueue(&mut q);
        Outgoing::Repair(Box::new(|| vec![vec![5]])).enqueue(&mut q);
        let order: Vec<u8> = q.into_iter().map(label).collect();
        assert_eq!(order, [3, 5, 1, 2, 4]);
    }
}
