//! One sender thread per channel, fed through a bounded queue, all paced by one shared byte
//! rate so that receivers' socket buffers are not overrun by bursts.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, unbounded};

use crate::core::Channel;
use crate::exec::Outgoing;
use crate::exec::pacer::Pacer;
use crate::log_limit::LogLimit;
use crate::net::gso::BatchSender;
use crate::net::{ChannelAddrs, open_sender};

/// Counters of what was sent.
#[derive(Default, Debug)]
pub struct SendStats {
    /// Datagrams sent.
    pub datagrams: AtomicU64,
    /// Bytes sent.
    pub bytes: AtomicU64,
    /// Send errors.
    pub errors: AtomicU64,
    /// System calls that sent them (fewer than datagrams when runs of pieces go by GSO).
    pub calls: AtomicU64,
}

/// The sender threads of one peer.
pub struct Senders {
    /// Per channel: the queue, and the repairs' queue (served first).
    queues: Vec<(Sender<Outgoing>, Sender<Outgoing>)>,
    /// What was sent.
    pub stats: Arc<SendStats>,
    pacer: Arc<Pacer>,
    epoch: Instant,
}

impl Senders {
    /// Starts one sender thread per channel, each with its own socket on `iface`. Queues are
    /// unbounded: what waits in them is bounded by the protocol's windows, and a chunk waits
    /// as an [`Outgoing::Build`], not as its body.
    /// With `gso`, a run of equal-sized datagrams (a chunk message's pieces) goes out in one
    /// system call where the kernel allows (`crate::net::gso`).
    pub fn start(
        addrs: ChannelAddrs,
        iface: Ipv4Addr,
        rate: u64,
        gso: bool,
    ) -> std::io::Result<Self> {
        let pacer = Arc::new(Pacer::new(rate));
        // The pacer's timeline, one for all channels.
        let epoch = Instant::now();
        let stats = Arc::new(SendStats::default());
        let mut queues = Vec::new();
        for channel in Channel::ALL {
            let socket: UdpSocket = open_sender(iface)?;
            let (tx, rx) = unbounded::<Outgoing>();
            let (urgent_tx, urgent_rx) = unbounded::<Outgoing>();
            let dest = addrs.get(channel);
            let pacer = pacer.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name(format!("send-{}", channel.name()))
                .spawn(move || {
                    let batch = BatchSender::new(&socket, gso);
                    let dest = std::net::SocketAddr::V4(dest);
                    // Repairs first (see `Outgoing::Repair`); both queues end together.
                    let next = || {
                        urgent_rx.try_recv().or_else(|_| {
                            crossbeam_channel::select_biased! {
                                recv(urgent_rx) -> out => out,
                                recv(rx) -> out => out,
                            }
                        })
                    };
                    while let Ok(out) = next() {
                        let datagrams = out.into_datagrams();
                        let bytes = datagrams.iter().map(Vec::len).sum();
                        let wait = pacer.reserve(bytes, epoch.elapsed());
                        if !wait.is_zero() {
                            std::thread::sleep(wait);
                        }
                        let (sent, error) = batch.send(&socket, dest, &datagrams);
                        stats
                            .datagrams
                            .fetch_add(sent.datagrams as u64, Ordering::Relaxed);
                        stats.bytes.fetch_add(sent.bytes as u64, Ordering::Relaxed);
                        stats.calls.fetch_add(sent.calls as u64, Ordering::Relaxed);
                        if let Some(e) = error {
                            static LIMIT: LogLimit = LogLimit::new(Duration::from_secs(1));
                            stats
                                .errors
                                .fetch_add(sent.failed as u64, Ordering::Relaxed);
                            crate::log_limited!(
                                LIMIT,
                                warn,
                                "send on {} to {dest}: {e}",
                                channel.name()
                            );
                        }
                    }
                })?;
            queues.push((tx, urgent_tx));
        }
        Ok(Senders {
            queues,
            stats,
            pacer,
            epoch,
        })
    }

    /// A loss signal: the send rate goes down for a while (see [`Pacer::slow_down`]).
    pub fn slow_down(&self) {
        self.pacer.slow_down(self.epoch.elapsed());
    }

    /// The send rate now, bytes per second.
    pub fn rate(&self) -> f64 {
        self.pacer.rate()
    }

    /// Queues a datagram on `channel` (built when its turn comes, if it is to be); a repair
    /// ahead of the rest.
    pub fn send(&self, channel: Channel, out: Outgoing) {
        let (queue, repairs) = &self.queues[channel.index()];
        let _ = if out.is_repair() { repairs } else { queue }.send(out);
    }
}
