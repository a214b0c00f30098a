//! The receiver threads: one per channel socket, each receiving (many datagrams per system
//! call on MC and MDB), taking pieces and NACKs itself (cheap: a copy into the message they
//! belong to) and handing everything else, and each message the pieces complete, to the
//! worker pool (dropped and counted when its backlog is full, so a receiver never blocks).

use std::net::{IpAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::effects::Peer;
use crate::core::Channel;
use crate::exec::Intake;
use crate::exec::pieces::is_piece_or_nack;
use crate::log_limit::LogLimit;
use crate::net::batch_recv::BatchReceiver;
use crate::net::recv_head;
use crate::protocol::peek_sender;
use crate::secure::envelope::unchecked_message;

/// Bytes of a CHUNK received by a peer that restores nothing: room for any header it sends.
const CHUNK_HEAD: usize = 1024;
/// Bytes of the largest message pieces put together (a chunk message, sealed).
const MAX_MESSAGE: usize = 65_536;
/// How long a receiver waits for a datagram before looking whether the peer stops.
const WAKE: Duration = Duration::from_millis(100);

/// Receives on `socket` (channel `channel`) until the peer stops.
pub(super) fn receive(peer: Arc<Peer>, channel: Channel, socket: UdpSocket) {
    // MDR, where a peer that restores nothing reads only the headers of CHUNKs, takes one
    // datagram at a time; MC and MDB many (a PUTCHUNK's pieces arrive back to back).
    if channel == Channel::Mdr {
        return receive_one_by_one(&peer, channel, &socket);
    }
    let mut batch = match BatchReceiver::new(socket) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("receive on {}: cannot batch: {e}", channel.name());
            return;
        }
    };
    let world = &peer.effects;
    while !world.stop.load(Ordering::Relaxed) {
        let calls = batch.calls;
        let received = batch.receive(WAKE, |datagram, from| {
            hand_on(&peer, channel, datagram, datagram.len(), Some(from.ip()));
        });
        world
            .recv_calls
            .fetch_add(batch.calls - calls, Ordering::Relaxed);
        if let Err(e) = received {
            receive_failed(channel, &e);
        }
    }
}

/// The receive loop of MDR: one datagram per system call.
fn receive_one_by_one(peer: &Arc<Peer>, channel: Channel, socket: &UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    let secure = peer.core.config().secure();
    let world = &peer.effects;
    while !world.stop.load(Ordering::Relaxed) {
        // A peer that restores nothing needs only the header of a CHUNK (to silence its own
        // reply for the same chunk), not the body. It waits for the next datagram without
        // taking it, then decides: a restore may have started meanwhile.
        // (A secure peer takes every datagram whole: a seal is checked over all of it.)
        let received = if !peer.core.restoring() && !secure {
            match recv_head(socket, &mut buf[..CHUNK_HEAD], true) {
                Ok(_) if peer.core.restoring() => socket.recv(&mut buf).map(|n| (n, n, None)),
                Ok(_) => {
                    recv_head(socket, &mut buf[..CHUNK_HEAD], false).map(|(n, f)| (n, f, None))
                }
                Err(e) => Err(e),
            }
        } else {
            socket
                .recv_from(&mut buf)
                .map(|(n, from)| (n, n, Some(from.ip())))
        };
        match received {
            Ok((n, full, from)) => {
                world.recv_calls.fetch_add(1, Ordering::Relaxed);
                hand_on(peer, channel, &buf[..n], full, from);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => receive_failed(channel, &e),
        }
    }
}

/// A receive failed for another reason than a timeout: said (at most once a second), and the
/// receiver pauses, so that a lasting error does not spin.
fn receive_failed(channel: Channel, e: &std::io::Error) {
    static LIMIT: LogLimit = LogLimit::new(Duration::from_secs(1));
    crate::log_limited!(LIMIT, warn, "receive on {}: {e}", channel.name());
    std::thread::sleep(Duration::from_millis(10));
}

/// One datagram received on `channel` (`full` bytes long, of which `datagram` was read) from
/// `from`: our own are counted and dropped, pieces and NACKs taken here, the rest (and each
/// message the pieces complete) queued for the workers.
fn hand_on(peer: &Arc<Peer>, channel: Channel, datagram: &[u8], full: usize, from: Option<IpAddr>) {
    let world = &peer.effects;
    world.received.fetch_add(1, Ordering::Relaxed);
    let counts = &world.datagrams[channel.index()];
    // Our own multicast is not worth a copy; but an UP with our id may be another process
    // that has it (the core tells them apart).
    let message = unchecked_message(datagram);
    if peek_sender(message) == Some(peer.core.config().id) && !message.starts_with(b"UP ") {
        counts.own.fetch_add(1, Ordering::Relaxed);
        return;
    }
    // A piece may complete its message, which then needs a worker: the room for it is taken
    // first, or the piece is dropped (and repaired later) like any datagram the backlog has no
    // room for. (Dropping the completed message instead would lose it for good: its pieces
    // are forgotten once it is whole.)
    let piece = channel != Channel::Mc && is_piece_or_nack(message);
    let room = match piece.then(|| world.pool.room(MAX_MESSAGE)) {
        Some(None) => {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Some(room) => room,
        None => None,
    };
    let queued = match peer.intake_piece(channel, datagram, full) {
        Some(Intake::Done(ok)) => {
            let counter = if ok { &counts.ok } else { &counts.malformed };
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Some(Intake::Message(message)) => {
            let p = peer.clone();
            let job = move || {
                let counts = &p.effects.datagrams[channel.index()];
                let counter = if p.on_message(channel, message, from) {
                    &counts.ok
                } else {
                    &counts.malformed
                };
                counter.fetch_add(1, Ordering::Relaxed);
            };
            match room {
                Some(room) => {
                    world.pool.execute_in(room, job);
                    true
                }
                None => world.pool.try_execute(MAX_MESSAGE, job),
            }
        }
        None => {
            let datagram = Bytes::copy_from_slice(datagram);
            let p = peer.clone();
            world.pool.try_execute(datagram.len(), move || {
                let filling = p.effects.pool.filling();
                let counts = &p.effects.datagrams[channel.index()];
                if p.on_datagram(channel, datagram, full, filling, from) {
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.malformed.fetch_add(1, Ordering::Relaxed);
                }
            })
        }
    };
    if !queued {
        counts.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("backlog full: dropped a datagram on {}", channel.name());
    }
}
