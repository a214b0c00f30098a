//! The receiver threads: one per channel socket, each only receiving and handing datagrams to
//! the worker pool (dropped and counted when its backlog is full, so a receiver never blocks).

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::effects::Peer;
use crate::core::Channel;
use crate::log_limit::LogLimit;
use crate::net::recv_head;
use crate::protocol::peek_sender;
use crate::secure::envelope::unchecked_message;

/// Bytes of a CHUNK received by a peer that restores nothing: room for any header it sends.
const CHUNK_HEAD: usize = 1024;

/// Receives on `socket` (channel `channel`) until the peer stops.
pub(super) fn receive(peer: Arc<Peer>, channel: Channel, socket: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    let me = peer.core.config().id;
    let secure = peer.core.config().secure();
    let world = &peer.effects;
    while !world.stop.load(Ordering::Relaxed) {
        // A peer that restores nothing needs only the header of a CHUNK (to silence its own
        // reply for the same chunk), not the body. It waits for the next datagram without
        // taking it, then decides: a restore may have started meanwhile.
        // (A secure peer takes every datagram whole: a seal is checked over all of it.)
        let received = if channel == Channel::Mdr && !peer.core.restoring() && !secure {
            match recv_head(&socket, &mut buf[..CHUNK_HEAD], true) {
                Ok(_) if peer.core.restoring() => socket.recv(&mut buf).map(|n| (n, n, None)),
                Ok(_) => {
                    recv_head(&socket, &mut buf[..CHUNK_HEAD], false).map(|(n, f)| (n, f, None))
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
                world.received.fetch_add(1, Ordering::Relaxed);
                // Our own multicast is not worth a copy; but an UP with our id may be another
                // process that has it (the core tells them apart).
                let counts = &world.datagrams[channel.index()];
                let message = unchecked_message(&buf[..n]);
                if peek_sender(message) == Some(me) && !message.starts_with(b"UP ") {
                    counts.own.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let datagram = Bytes::copy_from_slice(&buf[..n]);
                let p = peer.clone();
                let queued = world.pool.try_execute(n, move || {
                    let filling = p.effects.pool.filling();
                    let counts = &p.effects.datagrams[channel.index()];
                    if p.on_datagram(channel, datagram, full, filling, from) {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counts.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                });
                if !queued {
                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("backlog full: dropped a datagram on {}", channel.name());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                static LIMIT: LogLimit = LogLimit::new(Duration::from_secs(1));
                crate::log_limited!(LIMIT, warn, "receive on {}: {e}", channel.name());
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
