//! The simulation loop: a virtual clock and a queue of events (datagrams arriving, timers,
//! sender turns, group commits, crashes and restarts, client operations), a simulated
//! multicast network (loss, duplication, delay and reordering, partitions, a bounded receive
//! queue per peer) and the peers, each a real [`Core`](crate::core::Core) with the real
//! [`Executor`]. One seed decides everything; nothing sleeps.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::copies::Copies;
use super::disk::SimDisk;
use super::effects::{Outbox, Reachable, SimEffects};
use super::ops::Ledger;
use super::scenario::Scenario;
use crate::core::{Channel, Config, TimerEvent};
use crate::exec::pacer::Pacer;
use crate::exec::{Executor, Outgoing, boot};
use crate::protocol::{FileId, PeerId, Version};
use crate::secure::{DataKey, GroupKey};
use crate::storage::ChunkStore;

/// A simulated peer's executor.
pub type SimPeer = Executor<SimEffects>;

/// First TCP port of the peers' (simulated) body listeners: peer `i` listens on this plus `i`.
const TCP_PORT_BASE: u16 = 20_000;

/// The wall clock's reading at virtual time zero (2026-01-01).
const SIM_EPOCH_MS: u64 = 1_767_225_600_000;

/// The shared secret of a secure simulated group.
const SIM_GROUP_SECRET: &[u8] = b"the simulated group's secret, 32+ bytes";

/// The data key of simulated peer `id` (what its user keeps: it comes back on a new disk).
fn sim_data_key(id: PeerId) -> DataKey {
    DataKey::from_secret(format!("simulated data key of peer {id}").as_bytes(), id)
}

/// Events on the virtual clock.
pub(super) enum Event {
    /// A datagram reaches a peer's socket.
    Deliver {
        to: u32,
        channel: Channel,
        data: Bytes,
    },
    /// A peer takes the next datagram from its receive queue.
    Process { peer: u32, life: u64 },
    /// A peer's sender for a channel takes its next datagram.
    SenderTurn {
        peer: u32,
        life: u64,
        channel: Channel,
    },
    /// A timer of a peer is due.
    Timer {
        peer: u32,
        life: u64,
        event: TimerEvent,
    },
    /// A peer's group commit.
    Commit { peer: u32, life: u64 },
    /// A message over TCP reaches a peer.
    Tcp { to: u32, life: u64, msg: Bytes },
    /// A peer crashes (and restarts after `down`).
    Crash { peer: u32, down: Duration },
    /// A crashed peer starts again from its disk.
    Restart { peer: u32 },
    /// A peer crashes and never comes back (its disk is gone with it).
    Leave { peer: u32 },
    /// A peer's disk dies: it crashes and comes back, under its id, on an empty disk.
    LoseDisk { peer: u32 },
    /// RECOVER on a peer.
    Recover { peer: u32 },
    /// RECLAIM on a peer: to half of what it uses, or (`back`) to the default capacity.
    Reclaim { peer: u32, back: bool },
    /// A client operation is due (see [`Ledger`]).
    Client { file: usize },
    /// A partition starts (`groups[i]` is peer i's side) or ends (`None`).
    Partition { groups: Option<Vec<u32>> },
    /// Once per simulated second: measurements and invariant checks.
    Tick,
}

struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Who is up and on which side of a partition: what the TCP "connections" see.
pub(super) struct NetState {
    up: Vec<AtomicBool>,
    groups: Mutex<Option<Vec<u32>>>,
    /// [`Scenario::tcp_busy`], and the seeded draws for it (in event order).
    tcp_busy: f64,
    busy_rng: Mutex<fastrand::Rng>,
}

impl NetState {
    pub(super) fn connected(&self, a: u32, b: u32) -> bool {
        match &*self.groups.lock() {
            Some(g) => g[a as usize] == g[b as usize],
            None => true,
        }
    }

    pub(super) fn is_up(&self, peer: u32) -> bool {
        self.up[peer as usize].load(Ordering::Relaxed)
    }
}

impl Reachable for NetState {
    fn accepts(&self, from: u32, addr: SocketAddrV4) -> bool {
        let to = u32::from(addr.port().wrapping_sub(TCP_PORT_BASE));
        (to as usize) < self.up.len() && self.is_up(to) && self.connected(from, to)
    }

    fn queue_full(&self) -> bool {
        self.tcp_busy > 0.0 && self.busy_rng.lock().f64() < self.tcp_busy
    }
}

/// Per-channel counts.
#[derive(Default, Clone, Copy, Debug, serde::Serialize)]
pub struct ChannelCounts {
    /// Datagrams sent.
    pub datagrams: u64,
    /// Bytes sent.
    pub bytes: u64,
}

/// What the network did.
#[derive(Default, Clone, Debug, serde::Serialize)]
pub struct NetCounts {
    /// Sent, per channel (MC, MDB, MDR).
    pub sent: [ChannelCounts; 3],
    /// Deliveries to peers (after loss and duplication).
    pub delivered: u64,
    /// Deliveries lost on the way.
    pub lost: u64,
    /// Deliveries duplicated.
    pub duplicated: u64,
    /// Deliveries dropped because the receiver's queue was full.
    pub queue_full: u64,
    /// Deliveries to a peer that was down, or across a partition.
    pub unreachable: u64,
}

/// One simulated peer and what the world keeps for it.
pub(super) struct Slot {
    pub(super) id: PeerId,
    pub(super) version: Version,
    pub(super) disk: Arc<SimDisk>,
    pub(super) exec: Option<Arc<SimPeer>>,
    /// Counts lives: events for an earlier life are ignored.
    pub(super) life: u64,
    rx: VecDeque<(Channel, Bytes)>,
    rx_bytes: usize,
    /// A `Process` event is scheduled.
    processing: bool,
    /// Until when the peer is busy with the datagram it took last.
    busy_until: Duration,
    sends: [VecDeque<Outgoing>; 3],
    sending: [bool; 3],
    pacer: Pacer,
    commit_pending: bool,
    /// Left the group for good.
    pub(super) gone: bool,
}

/// The simulated group and its clock.
pub struct World {
    pub(super) sc: Scenario,
    pub(super) now: Duration,
    /// `now` as the peers' wall clock (milliseconds since the epoch).
    clock: Arc<AtomicU64>,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    pub(super) rng: fastrand::Rng,
    pub(super) slots: Vec<Slot>,
    pub(super) net: Arc<NetState>,
    pub(super) copies: Arc<Copies>,
    pub(super) counts: NetCounts,
    pub(super) ledger: Ledger,
    pub(super) violations: Vec<String>,
    trace: Sha256,
    /// Events processed.
    pub(super) events: u64,
    /// Where the measurement lines go.
    pub(super) measure: Option<Box<dyn std::io::Write>>,
    /// The network counts at the last measurement.
    pub(super) measured: NetCounts,
    /// Where the trace's lines go, as text, if anywhere.
    pub(super) trace_out: Option<Box<dyn std::io::Write>>,
    /// The latest peer that left for good, and when; MDB bytes sent by then (the first).
    pub(super) left: Option<(Duration, u64)>,
    /// When, after the latest departure, every acknowledged chunk was back at its degree among
    /// the peers that did not leave.
    pub(super) healed_at: Option<Duration>,
    /// Acknowledged chunks none of whose copies was on a peer that stayed when one left (they
    /// cannot be repaired).
    pub(super) unrepairable: std::collections::BTreeSet<crate::protocol::ChunkKey>,
}

impl World {
    /// A group of `sc.peers` peers, started, with the scenario's workload planned.
    pub fn new(sc: Scenario) -> World {
        let n = sc.peers;
        let copies = Arc::new(Copies::default());
        let net = Arc::new(NetState {
            up: (0..n).map(|_| AtomicBool::new(false)).collect(),
            groups: Mutex::new(None),
            tcp_busy: sc.tcp_busy,
            busy_rng: Mutex::new(fastrand::Rng::with_seed(sc.seed ^ 0x7c9_b05e)),
        });
        let slots = (0..n)
            .map(|i| Slot {
                id: i + 1,
                version: sc.version_of(i),
                disk: Arc::new(SimDisk::new(i, sc.disk_bytes, copies.clone())),
                exec: None,
                life: 0,
                rx: VecDeque::new(),
                rx_bytes: 0,
                processing: false,
                busy_until: Duration::ZERO,
                sends: Default::default(),
                sending: [false; 3],
                pacer: Pacer::new(sc.rate),
                commit_pending: false,
                gone: false,
            })
            .collect();
        let mut w = World {
            rng: fastrand::Rng::with_seed(sc.seed),
            sc,
            now: Duration::ZERO,
            clock: Arc::new(AtomicU64::new(SIM_EPOCH_MS)),
            seq: 0,
            queue: BinaryHeap::new(),
            slots,
            net,
            copies,
            counts: NetCounts::default(),
            ledger: Ledger::default(),
            violations: Vec::new(),
            trace: Sha256::new(),
            events: 0,
            measure: None,
            measured: NetCounts::default(),
            left: None,
            healed_at: None,
            unrepairable: Default::default(),
            trace_out: None,
        };
        for i in 0..n {
            w.start_peer(i);
        }
        w.plan();
        w.at(Duration::from_secs(1), Event::Tick);
        w
    }

    /// Schedules `event` at virtual time `at`.
    pub(super) fn at(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            event,
        }));
    }

    /// Schedules `event` after `delay`.
    pub(super) fn after(&mut self, delay: Duration, event: Event) {
        self.at(self.now + delay, event);
    }

    /// Adds a line to the trace whose digest identifies the run.
    pub(super) fn trace(&mut self, line: std::fmt::Arguments<'_>) {
        let text = format!("{:>12} {line}\n", self.now.as_micros());
        self.trace.update(text.as_bytes());
        if let Some(out) = &mut self.trace_out {
            let _ = out.write_all(text.as_bytes());
        }
    }

    /// SHA-256 of the trace so far.
    pub fn trace_digest(&self) -> String {
        let d = self.trace.clone().finalize();
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Runs events until the queue is empty, `until` is reached, or `done` says so; returns
    /// whether `done` said so.
    pub(super) fn run_until(
        &mut self,
        until: Duration,
        mut done: impl FnMut(&World) -> bool,
    ) -> bool {
        while let Some(Reverse(next)) = self.queue.peek() {
            if done(self) {
                return true;
            }
            if next.at > until {
                break;
            }
            let Reverse(s) = self.queue.pop().expect("peeked");
            self.now = s.at;
            self.clock.store(
                SIM_EPOCH_MS + self.now.as_millis() as u64,
                Ordering::Relaxed,
            );
            self.events += 1;
            self.handle(s.event);
        }
        if until != Duration::MAX {
            self.now = self.now.max(until);
            self.clock.store(
                SIM_EPOCH_MS + self.now.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        done(self)
    }

    fn live(&self, peer: u32, life: u64) -> Option<Arc<SimPeer>> {
        let slot = &self.slots[peer as usize];
        (slot.life == life).then(|| slot.exec.clone()).flatten()
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { to, channel, data } => self.deliver(to, channel, data),
            Event::Process { peer, life } => self.process(peer, life),
            Event::SenderTurn {
                peer,
                life,
                channel,
            } => self.sender_turn(peer, life, channel),
            Event::Timer { peer, life, event } => {
                if let Some(p) = self.live(peer, life)
                    && !p.timer_is_stale(&event)
                {
                    p.on_timer(event);
                    self.drain(peer);
                }
            }
            Event::Commit { peer, life } => {
                if let Some(p) = self.live(peer, life) {
                    self.slots[peer as usize].commit_pending = false;
                    p.commit();
                    self.drain(peer);
                }
            }
            Event::Tcp { to, life, msg } => {
                if let Some(p) = self.live(to, life) {
                    p.on_tcp_message(msg);
                    self.drain(to);
                }
            }
            Event::Crash { peer, down } => {
                if self.slots[peer as usize].exec.is_some() && !self.ledger.over {
                    self.crash(peer);
                    self.after(down, Event::Restart { peer });
                }
            }
            Event::Leave { peer } => {
                if self.slots[peer as usize].exec.is_some() {
                    self.crash(peer);
                    self.slots[peer as usize].gone = true;
                    self.ledger_left(peer);
                    let mdb = self.left.map_or(self.counts.sent[1].bytes, |(_, b)| b);
                    self.left = Some((self.now, mdb));
                    self.healed_at = None;
                    let lost: Vec<_> = self
                        .ledger
                        .acked
                        .keys()
                        .filter(|k| !self.slots.iter().any(|s| !s.gone && s.disk.holds(k)))
                        .copied()
                        .collect();
                    self.unrepairable.extend(lost);
                }
            }
            Event::LoseDisk { peer } => {
                if self.slots[peer as usize].exec.is_some() {
                    self.crash(peer);
                    self.lose_disk(peer);
                    self.after(Duration::from_secs(2), Event::Restart { peer });
                    self.after(Duration::from_secs(5), Event::Recover { peer });
                }
            }
            Event::Recover { peer } => self.recover(peer),
            Event::Restart { peer } => {
                if self.slots[peer as usize].exec.is_none() && !self.slots[peer as usize].gone {
                    self.start_peer(peer);
                    self.ledger_restarted(peer);
                }
            }
            Event::Client { file } => self.client_step(file),
            Event::Reclaim { peer, back } => self.reclaim(peer, back),
            Event::Partition { groups } => {
                self.trace(format_args!("partition {groups:?}"));
                *self.net.groups.lock() = groups;
            }
            Event::Tick => self.tick(),
        }
        self.check_lost_copies();
    }

    /// Starts (or restarts) peer `i` from its disk.
    fn start_peer(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        slot.life += 1;
        let mut cfg = Config::new(slot.id, slot.version);
        cfg.seed = self.rng.u64(..);
        cfg.mtu = self.sc.mtu;
        if self.sc.secure {
            cfg.group_key = Some(Arc::new(GroupKey::from_secret(SIM_GROUP_SECRET)));
            cfg.data_key = Some(Arc::new(sim_data_key(slot.id)));
        }
        if cfg.enhanced() {
            cfg.restore_tcp = Some(SocketAddrV4::new(
                Ipv4Addr::LOCALHOST,
                TCP_PORT_BASE + i as u16,
            ));
        }
        let disk = slot.disk.clone();
        let booted = match boot(&*disk, slot.id, None) {
            Ok(b) => b,
            Err(e) => {
                self.violations
                    .push(format!("peer {} cannot start: {e}", slot.id));
                return;
            }
        };
        let net = self.net.clone();
        let exec = Executor::new(cfg, booted.meta, |_| SimEffects {
            index: i,
            disk,
            outbox: Mutex::new(Outbox::default()),
            net,
            clock: self.clock.clone(),
        });
        slot.exec = Some(exec.clone());
        self.net.up[i as usize].store(true, Ordering::Relaxed);
        let life = slot.life;
        self.trace(format_args!("start {} life {life}", i + 1));
        exec.start(booted.reconciled);
        self.drain(i);
    }

    /// Peer `i` crashes: its process state is gone, its disk keeps what was durable.
    pub(super) fn crash(&mut self, i: u32) {
        self.trace(format_args!("crash {}", i + 1));
        let slot = &mut self.slots[i as usize];
        slot.exec = None;
        slot.life += 1;
        slot.rx.clear();
        slot.rx_bytes = 0;
        slot.processing = false;
        slot.sends = Default::default();
        slot.sending = [false; 3];
        slot.commit_pending = false;
        slot.disk.crash();
        self.net.up[i as usize].store(false, Ordering::Relaxed);
        self.ledger_crashed(i);
    }

    /// Peer `i`'s disk is replaced by an empty one: every copy it held is gone (a copy it
    /// held last is given up, as by a RECLAIM: the disk took it).
    fn lose_disk(&mut self, i: u32) {
        self.trace(format_args!("lose disk {}", i + 1));
        let old = self.slots[i as usize].disk.clone();
        for chunk in old.chunk_keys() {
            self.ledger.excused.insert((chunk, i));
            old.remove_chunk(&chunk).ok();
        }
        self.slots[i as usize].disk =
            Arc::new(SimDisk::new(i, self.sc.disk_bytes, self.copies.clone()));
        self.ledger_lost_disk(i);
    }

    /// Turns what peer `i` asked for into events.
    pub(super) fn drain(&mut self, i: u32) {
        loop {
            let Some(exec) = self.slots[i as usize].exec.clone() else {
                return;
            };
            let out = std::mem::take(&mut *exec.effects.outbox.lock());
            let empty = out.sends.is_empty()
                && out.timers.is_empty()
                && out.reports.is_empty()
                && out.tcp.is_empty()
                && !out.commit;
            if empty {
                return;
            }
            let life = self.slots[i as usize].life;
            for (delay, event) in out.timers {
                self.after(
                    delay,
                    Event::Timer {
                        peer: i,
                        life,
                        event,
                    },
                );
            }
            for (channel, o) in out.sends {
                let slot = &mut self.slots[i as usize];
                o.enqueue(&mut slot.sends[channel.index()]);
                if !slot.sending[channel.index()] {
                    slot.sending[channel.index()] = true;
                    self.after(
                        Duration::ZERO,
                        Event::SenderTurn {
                            peer: i,
                            life,
                            channel,
                        },
                    );
                }
            }
            for (addr, msg) in out.tcp {
                let msg = Bytes::from(msg);
                let to = u32::from(addr.port() - TCP_PORT_BASE);
                let life = self.slots[to as usize].life;
                self.after(self.sc.tcp_delay, Event::Tcp { to, life, msg });
            }
            for _ in 0..out.slow_downs {
                self.slots[i as usize].pacer.slow_down(self.now);
            }
            if out.commit && !self.slots[i as usize].commit_pending {
                self.slots[i as usize].commit_pending = true;
                self.after(self.sc.commit_delay, Event::Commit { peer: i, life });
            }
            for (op, event) in out.reports {
                self.on_report(i, op, event);
            }
        }
    }

    fn sender_turn(&mut self, i: u32, life: u64, channel: Channel) {
        let Some(_) = self.live(i, life) else { return };
        let Some(out) = self.slots[i as usize].sends[channel.index()].pop_front() else {
            self.slots[i as usize].sending[channel.index()] = false;
            return;
        };
        let datagrams = out.into_datagrams();
        self.drain(i);
        let mut next = self.now;
        for d in datagrams {
            if self.slots[i as usize].life != life {
                break;
            }
            // Back to back, each when the pacer lets it go.
            let wait = self.slots[i as usize].pacer.reserve(d.len(), next);
            next += wait;
            self.transmit(i, channel, d, next);
        }
        if self.slots[i as usize].life == life {
            self.at(
                next,
                Event::SenderTurn {
                    peer: i,
                    life,
                    channel,
                },
            );
        }
    }

    /// Multicasts `data` from peer `from` on `channel`, leaving at `at`: each other peer gets
    /// it, or not, after its own delay.
    fn transmit(&mut self, from: u32, channel: Channel, data: Vec<u8>, at: Duration) {
        let c = &mut self.counts.sent[channel.index()];
        c.datagrams += 1;
        c.bytes += data.len() as u64;
        // The trace names the datagram by its first header line and the hash of all of it.
        let head = data.split(|&b| b == b'\r').next().unwrap_or_default();
        let text = format!(
            "{:>12} send {} {} {} {} {:016x}\n",
            at.as_micros(),
            from + 1,
            channel.name(),
            data.len(),
            String::from_utf8_lossy(&head[..head.len().min(120)]),
            u64::from_be_bytes(Sha256::digest(&data)[..8].try_into().expect("8 bytes"))
        );
        self.trace.update(text.as_bytes());
        if let Some(out) = &mut self.trace_out {
            let _ = out.write_all(text.as_bytes());
        }
        let data = Bytes::from(data);
        for to in 0..self.slots.len() as u32 {
            if to == from {
                continue;
            }
            if !self.net.connected(from, to) {
                self.counts.unreachable += 1;
                continue;
            }
            if self.rng.f64() < self.sc.loss {
                self.counts.lost += 1;
                continue;
            }
            let copies = if self.rng.f64() < self.sc.dup { 2 } else { 1 };
            if copies == 2 {
                self.counts.duplicated += 1;
            }
            for _ in 0..copies {
                let jitter = self.sc.jitter.mul_f64(self.rng.f64());
                self.at(
                    at + self.sc.delay + jitter,
                    Event::Deliver {
                        to,
                        channel,
                        data: data.clone(),
                    },
                );
            }
        }
    }

    /// Every peer receives forged DELETEs of `file` in `home`'s name (see
    /// [`Scenario::forge_deletes`]).
    pub(super) fn forge_deletes(&mut self, home: PeerId, file: FileId) {
        let forged = crate::protocol::Message::new(
            Version::V2_0,
            home,
            crate::protocol::MessageKind::Delete { file },
        )
        .encode();
        let mut datagrams = vec![Bytes::from(forged.clone())];
        if self.sc.secure {
            let member = crate::secure::Sealer::new(
                Arc::new(GroupKey::from_secret(SIM_GROUP_SECRET)),
                self.clock.load(Ordering::Relaxed) * 1000 + 1,
            );
            let sealed = member.seal(&forged, self.clock.load(Ordering::Relaxed));
            datagrams.push(Bytes::from(sealed));
        }
        self.trace(format_args!("forged DELETE of {file} as {home}"));
        for to in 0..self.slots.len() as u32 {
            for d in &datagrams {
                self.deliver(to, Channel::Mc, d.clone());
            }
        }
    }

    fn deliver(&mut self, to: u32, channel: Channel, data: Bytes) {
        let limit = self.sc.rx_queue_bytes;
        let now = self.now;
        let slot = &mut self.slots[to as usize];
        if slot.exec.is_none() {
            self.counts.unreachable += 1;
            return;
        }
        if slot.rx_bytes + data.len() > limit {
            self.counts.queue_full += 1;
            return;
        }
        self.counts.delivered += 1;
        if !slot.processing && slot.busy_until <= now {
            // An idle peer takes it at once (one event fewer per delivery).
            let life = slot.life;
            self.take(to, life, channel, data);
            return;
        }
        slot.rx_bytes += data.len();
        slot.rx.push_back((channel, data));
        if !slot.processing {
            slot.processing = true;
            let (life, at) = (slot.life, slot.busy_until);
            self.at(at, Event::Process { peer: to, life });
        }
    }

    /// Peer `i` takes the next datagram from its receive queue.
    fn process(&mut self, i: u32, life: u64) {
        if self.live(i, life).is_none() {
            return;
        }
        let slot = &mut self.slots[i as usize];
        let Some((channel, data)) = slot.rx.pop_front() else {
            slot.processing = false;
            return;
        };
        slot.rx_bytes -= data.len();
        self.take(i, life, channel, data);
        let slot = &mut self.slots[i as usize];
        if slot.life != life {
            return;
        }
        if slot.rx.is_empty() {
            slot.processing = false;
        } else {
            let at = slot.busy_until;
            self.at(at, Event::Process { peer: i, life });
        }
    }

    /// Peer `i` handles one datagram now; it is busy for the datagram's processing cost.
    fn take(&mut self, i: u32, life: u64, channel: Channel, data: Bytes) {
        let Some(p) = self.live(i, life) else { return };
        let filling = self.slots[i as usize].rx_bytes > self.sc.rx_queue_bytes / 8;
        let len = data.len();
        let cost = self.sc.proc_per_datagram
            + Duration::from_secs_f64(len as f64 / self.sc.proc_bytes_per_sec);
        self.slots[i as usize].busy_until = self.now + cost;
        // Every simulated peer's address is loopback, as their TCP listeners are.
        p.on_datagram(
            channel,
            data,
            len,
            filling,
            Some(Ipv4Addr::LOCALHOST.into()),
        );
        self.drain(i);
    }

    /// Brings every peer that is down back up.
    pub(super) fn restart_all(&mut self) {
        for peer in 0..self.slots.len() as u32 {
            if !self.is_up(peer) && !self.slots[peer as usize].gone {
                self.after(Duration::ZERO, Event::Restart { peer });
            }
        }
    }

    /// Whether peer `i` is up.
    pub(super) fn is_up(&self, i: u32) -> bool {
        self.slots[i as usize].exec.is_some()
    }

    /// Whether every peer's send queues, receive queues and commits are empty.
    pub(super) fn network_idle(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.rx.is_empty() && s.sends.iter().all(VecDeque::is_empty) && !s.commit_pending)
    }
}
