//! Enhanced: self-healing. Each announcement period (a *tick*) a 2.0 peer sends ALIVE, advances
//! its membership view, and scans the chunks it is responsible for: a chunk whose live holders
//! stay fewer than its desired degree for `repair_after` is re-replicated from a live copy.
//!
//! The repairer of a chunk is its home while the home is alive (the home holds no copy: it
//! sends REPAIR naming one live holder, which re-backs the chunk up), otherwise the live holder
//! with the lowest id (it re-backs it up itself). Repairs run at most `repair_concurrency` at a
//! time, the chunks with the fewest live copies first; an attempt that has not brought the chunk
//! back after [`RETRY_AFTER`] is counted as failed and tried again (by the home, naming the next
//! live holder).
//!
//! A peer that starts announces what it holds with HOLDS (one message per file, a bitmap of
//! chunk numbers) and the line `ASK`; holders of the same files answer with their own HOLDS,
//! so that both sides recount the holders and trim surplus copies (the trim rule of the
//! enhanced backup: a copy goes if `desired` lower live ids hold the chunk).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::membership::{Heard, View};
use super::metadata::Metadata;
use super::{Action, Channel, Config, Core, Counters, TimerEvent};
use crate::protocol::message::HOLDS_SPAN;
use crate::protocol::{ChunkKey, ChunkNo, FileId, MessageKind, PeerId, Version};

/// The HOLDS line asking the holders of the same file to answer with theirs.
pub const ASK: &str = "ASK";

/// A repair attempt that has not brought its chunk back this long is tried again (a re-backup
/// sends PUTCHUNK at most 5 times over 31 s).
pub const RETRY_AFTER: Duration = Duration::from_secs(40);

/// Attempts to repair one chunk before this peer waits for the membership to change (a peer
/// coming back or a new one) to try again: a degree the group cannot give (more copies than
/// peers that can hold them) must not keep it busy forever.
pub const MAX_ATTEMPTS: u32 = 5;

/// A home's REPAIR after which no PUTCHUNK of the chunk was seen this long (the REPAIR or the
/// holder was lost) is tried again at once, naming the next live holder.
pub const QUICK_RETRY: Duration = Duration::from_secs(5);

/// The holder a REPAIR names when its home knows of no live one: whichever holder is the
/// lowest live one it knows of (peer ids are positive).
pub const ANY_HOLDER: PeerId = 0;

/// The home a re-backup's `HOME` line names when its initiator does not know it.
pub const UNKNOWN_HOME: PeerId = 0;

/// The `HOME <id>` line of a re-backup's PUTCHUNK 2.0.
pub fn home_line(home: PeerId) -> String {
    format!("HOME {home}")
}

/// The home named by a PUTCHUNK's `HOME` line, if any.
pub fn home_in(lines: &[String]) -> Option<PeerId> {
    lines.iter().find_map(|l| {
        let mut words = l.split_ascii_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("HOME"), Some(id), None) if id.len() <= 10 => id.parse().ok(),
            _ => None,
        }
    })
}

/// Ticks in `d` (at least 1).
fn ticks(cfg: &Config, d: Duration) -> u64 {
    let period = cfg.announce_interval.as_millis().max(1);
    (d.as_millis().div_ceil(period) as u64).max(1)
}

/// The membership view `cfg` asks for: suspected after `suspect_after`, gone once its chunks
/// were due for repair (`suspect_after + repair_after`).
pub(super) fn view_for(cfg: &Config) -> View {
    View::new(
        ticks(cfg, cfg.suspect_after),
        ticks(cfg, cfg.suspect_after + cfg.repair_after),
    )
}

/// A chunk below its degree that this peer is responsible for.
#[derive(Debug)]
pub struct Repair {
    /// Tick at which it was first seen below its degree.
    below_since: u64,
    /// Tick of the latest attempt, if one was made.
    started: Option<u64>,
    /// Attempts so far.
    attempts: u32,
    /// A PUTCHUNK of it was seen since the latest attempt (a holder is re-backing it up).
    progress: bool,
    /// The last allowed attempt was counted as failed.
    gave_up: bool,
}

/// Who repairs a chunk found below its degree here.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// This peer is its home: it asks a holder.
    Home,
    /// This peer holds a copy and is its lowest live holder, its home being down or unknown.
    Holder,
    /// The same, with the home alive, for the chunk's last live copy: this peer repairs only
    /// if the home has not (see [`HOME_PATIENCE`]).
    HolderAfterHome,
}

/// A holder repairs a chunk its live home has left below its degree for this many times
/// `repair_after` (the home may not know of a holder whose STOREDs it missed).
const HOME_PATIENCE: u64 = 3;

impl Core {
    /// How many of `holders` of a chunk of `file` count toward its degree (see
    /// [`Metadata::counted`]) among the peers the membership view counts as alive.
    pub(super) fn live_count(
        &self,
        meta: &Metadata,
        file: FileId,
        holders: &BTreeSet<PeerId>,
        stored: bool,
    ) -> usize {
        let view = self.members.lock();
        if view.down().is_empty() {
            return meta.counted(file, holders, stored);
        }
        let live: BTreeSet<PeerId> = holders
            .iter()
            .copied()
            .filter(|&p| view.is_alive(p))
            .collect();
        drop(view);
        meta.counted(file, &live, stored)
    }

    /// [`Metadata::perceived`] among live peers.
    pub(super) fn live_perceived(&self, meta: &Metadata, key: &ChunkKey) -> Option<usize> {
        meta.holders_of(key)
            .map(|(holders, stored)| self.live_count(meta, key.file, holders, stored))
    }

    /// A message from `peer` arrived. If it is new, or back after being gone, repairs of
    /// chunks it does not hold that gave up may succeed now.
    pub(super) fn heard(&self, peer: PeerId) {
        let heard = self.members.lock().heard(peer);
        match heard {
            Heard::Known => return,
            Heard::Back { was_gone } => {
                tracing::info!("peer {peer} is back");
                // A peer only suspected for a while (lost ALIVEs) changes nothing: under heavy
                // loss that happens all the time.
                if !was_gone {
                    return;
                }
            }
            Heard::New => {}
        }
        let meta = self.meta.lock();
        // (One of its holders coming back does not help: a degree the group cannot give is not
        // tried again each time a holder flaps.)
        for (key, r) in self.repairs.lock().iter_mut() {
            let holder = meta.holders_of(key).is_some_and(|(h, _)| h.contains(&peer));
            if !holder {
                r.attempts = r.attempts.min(MAX_ATTEMPTS - 1);
                r.gave_up = false;
            }
        }
    }

    /// UP (or HOLDS with `ASK`) from `instance` of `peer`: if that is a new process of it (or
    /// unknown), it (re)started, perhaps on an empty disk: what it held is forgotten until its
    /// HOLDS say it again. (Its UP and its first HOLDS may be handled in either order.)
    pub(super) fn new_instance(&self, peer: PeerId, instance: Option<u64>) {
        // Under the metadata lock: a HOLDS recorded meanwhile must not be forgotten.
        let mut meta = self.meta.lock();
        if let Some(i) = instance
            && self.peer_instances.lock().insert(peer, i) == Some(i)
        {
            return;
        }
        let keys: Vec<ChunkKey> = meta
            .stored()
            .iter()
            .flat_map(|(file, chunks)| {
                chunks
                    .iter()
                    .filter(|(_, c)| c.holders.contains(&peer))
                    .map(|(no, _)| ChunkKey {
                        file: *file,
                        no: *no,
                    })
            })
            .chain(meta.backed_up().iter().flat_map(|(file, f)| {
                f.chunks
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.holders.contains(&peer))
                    .map(|(no, _)| ChunkKey {
                        file: *file,
                        no: no as ChunkNo,
                    })
            }))
            .collect();
        for key in keys {
            meta.remove_holder(&key, peer);
        }
        // Nor do trimmed copies kept for their grace time, or earlier HOLDS, count on it.
        for mut t in self.trash.iter_mut() {
            t.chunk.holders.remove(&peer);
        }
        for mut heard in self.holds_heard.iter_mut() {
            heard.remove(&peer);
        }
    }

    /// The next tick, a fifth of a period early or late at random (so that peers started
    /// together do not announce together).
    pub(super) fn next_tick(&self) -> Vec<Action> {
        let period = self.cfg.announce_interval;
        if period.is_zero() {
            return Vec::new();
        }
        let ms = period.as_millis() as u64;
        let jitter = self.rng.lock().u64(0..=ms / 5 * 2);
        vec![Action::Schedule {
            delay: Duration::from_millis(ms - ms / 5 + jitter),
            event: TimerEvent::Tick,
        }]
    }

    /// One announcement period is over: ALIVE, the membership view, the repair scan.
    pub(super) fn tick(&self) -> Vec<Action> {
        let mut actions =
            vec![self.send_v(Channel::Mc, Version::V2_0, MessageKind::Alive, Vec::new())];
        actions.extend(self.next_tick());
        let enhanced = self.meta.lock().enhanced_peers().clone();
        let t = self.members.lock().advance(&enhanced);
        let period = self.cfg.suspect_after.as_secs_f64();
        for peer in &t.suspected {
            Counters::bump(&self.counters.peers_suspected);
            tracing::warn!(
                "peer {peer} suspected: not heard for {period:.0} s; its copies no longer count"
            );
        }
        for peer in &t.gone {
            Counters::bump(&self.counters.peers_gone);
            tracing::warn!("peer {peer} gone: not heard since its chunks were due for repair");
        }
        if !t.suspected.is_empty() {
            actions.extend(self.relaunch_below_degree());
        }
        // The scan reads every chunk record: about ten times per `repair_after` is enough.
        let every = (ticks(&self.cfg, self.cfg.repair_after) / 10).max(1);
        if t.tick.is_multiple_of(every) {
            actions.extend(self.repair_scan());
        }
        actions
    }

    /// Finds the chunks this peer is to repair, and starts the due ones.
    fn repair_scan(&self) -> Vec<Action> {
        let (now, below) = self.chunks_to_repair();
        let repair_ticks = ticks(&self.cfg, self.cfg.repair_after);
        let retry_ticks = ticks(&self.cfg, RETRY_AFTER);
        let quick_ticks = ticks(&self.cfg, QUICK_RETRY);
        // A chunk given up on stays given up while it is out of this peer's list for another
        // reason than being back at its degree (another holder became its repairer for a
        // while, its lower holder's suspicion came and went): repeated episodes must not
        // restart the attempts.
        let given_up: Vec<ChunkKey> = self
            .repairs
            .lock()
            .iter()
            .filter(|(key, r)| r.gave_up && !below.contains_key(key))
            .map(|(key, _)| *key)
            .collect();
        let healed: BTreeSet<ChunkKey> = {
            let meta = self.meta.lock();
            given_up
                .into_iter()
                .filter(|key| {
                    let desired = meta
                        .backed_up()
                        .get(&key.file)
                        .map(|f| f.desired)
                        .or_else(|| meta.stored_chunk(key).map(|c| c.desired));
                    desired.is_none_or(|d| {
                        self.live_perceived(&meta, key).unwrap_or(0) >= usize::from(d)
                    })
                })
                .collect()
        };
        let mut repairs = self.repairs.lock();
        // Chunks back at their degree: repaired (if this peer tried), or no longer short.
        repairs.retain(|key, r| {
            let still = below.contains_key(key) || (r.gave_up && !healed.contains(key));
            if !still && r.started.is_some() {
                Counters::bump(&self.counters.repairs_done);
            }
            still
        });
        for key in below.keys() {
            repairs.entry(*key).or_insert(Repair {
                below_since: now,
                started: None,
                attempts: 0,
                progress: false,
                gave_up: false,
            });
        }
        for (key, r) in repairs.iter_mut() {
            let over = r.started.is_some_and(|s| now - s >= retry_ticks);
            if r.attempts >= MAX_ATTEMPTS && over && !r.gave_up {
                r.gave_up = true;
                Counters::bump(&self.counters.repairs_failed);
                tracing::warn!(
                    "{key} stays below its degree among live peers after {} repair attempts; \
                     trying again when a peer joins or comes back",
                    r.attempts
                );
            }
        }
        // Running: started, and not stalled (a home's REPAIR that no PUTCHUNK followed).
        let running = |r: &Repair| {
            r.started
                .is_some_and(|s| now - s < retry_ticks && (r.progress || now - s < quick_ticks))
        };
        let in_flight = repairs.values().filter(|r| running(r)).count();
        let room = self.cfg.repair_concurrency.saturating_sub(in_flight);
        let mut due: Vec<(usize, ChunkKey)> = repairs
            .iter()
            .filter(|(key, r)| {
                let Some(&(_, _, role, _)) = below.get(*key).as_ref() else {
                    return false; // given up, not in the list now
                };
                let again =
                    |s: u64| now - s >= retry_ticks || (!r.progress && now - s >= quick_ticks);
                let patience = match role {
                    Role::HolderAfterHome => HOME_PATIENCE,
                    Role::Home | Role::Holder => 1,
                };
                now - r.below_since >= repair_ticks * patience
                    && r.started.is_none_or(again)
                    && r.attempts < MAX_ATTEMPTS
            })
            .map(|(key, _)| (below[key].0, *key))
            .collect();
        // The fewest live copies first.
        due.sort();
        due.truncate(room);
        let mut starts = Vec::new();
        for (_, key) in due {
            let r = repairs.get_mut(&key).expect("listed above");
            if r.started.is_some() {
                Counters::bump(&self.counters.repairs_failed);
            }
            r.started = Some(now);
            r.attempts += 1;
            // A holder's own re-backup is under way at once; a home waits to see a PUTCHUNK.
            r.progress = matches!(below[&key].2, Role::Holder | Role::HolderAfterHome);
            starts.push((key, r.attempts));
        }
        drop(repairs);
        let mut actions = Vec::new();
        for (key, attempt) in starts {
            let (_, degree, role, ref live) = below[&key];
            actions.extend(self.start_repair(key, degree, role, live, attempt));
        }
        actions
    }

    /// The chunks below their degree among live peers that this peer is the repairer of, with
    /// their live copies, degree, role and live holders; and the current tick.
    #[allow(clippy::type_complexity)]
    fn chunks_to_repair(&self) -> (u64, BTreeMap<ChunkKey, (usize, u8, Role, Vec<PeerId>)>) {
        let meta = self.meta.lock();
        let view = self.members.lock();
        let now = view.tick();
        let me = self.cfg.id;
        let mut below = BTreeMap::new();
        let live_of = |holders: &BTreeSet<PeerId>| -> Vec<PeerId> {
            holders
                .iter()
                .copied()
                .filter(|&p| view.is_alive(p))
                .collect()
        };
        // Live holders that count (of a catalog generation, the enhanced ones; `me` counts).
        let counted = |file: &FileId, holders: &BTreeSet<PeerId>| {
            let catalog = meta.is_catalog_file(file);
            holders
                .iter()
                .filter(|&&p| {
                    view.is_alive(p) && (!catalog || p == me || meta.enhanced_peers().contains(&p))
                })
                .count()
        };
        let running: BTreeSet<FileId> = self.backups.iter().map(|b| b.file).collect();
        for (file, f) in meta.backed_up() {
            for (no, c) in f.chunks.iter().enumerate() {
                let n = counted(file, &c.holders);
                // A chunk of a running backup is that backup's business. (One whose holders'
                // STOREDs were all lost is known to no holder: REPAIR asks any holder.)
                if n < usize::from(f.desired) && !running.contains(file) {
                    let key = ChunkKey {
                        file: *file,
                        no: no as ChunkNo,
                    };
                    below.insert(key, (n, f.desired, Role::Home, live_of(&c.holders)));
                }
            }
        }
        for (file, chunks) in meta.stored() {
            for (no, c) in chunks {
                // While an enhanced home is alive, it repairs.
                // (A home holds no copy of its own chunks: a "home" among the holders is a
                // holder that re-backed it up with a 1.0 PUTCHUNK before homes were named.)
                let home_alive = c.home.is_some_and(|h| {
                    h != me
                        && !c.holders.contains(&h)
                        && meta.enhanced_peers().contains(&h)
                        && view.is_alive(h)
                });
                let n = counted(file, &c.holders);
                if n >= usize::from(c.desired) {
                    continue;
                }
                let live = live_of(&c.holders);
                // The lowest live enhanced holder repairs (1.0 holders do not run this).
                let lowest = live
                    .iter()
                    .copied()
                    .filter(|&p| p == me || meta.enhanced_peers().contains(&p))
                    .min();
                if lowest == Some(me) {
                    let key = ChunkKey {
                        file: *file,
                        no: *no,
                    };
                    // While the home is alive, it repairs; if it has left this, the last live
                    // copy, below for three times `repair_after` (it may not know of it: its
                    // STOREDs lost), this holder does.
                    let role = match (home_alive, n) {
                        (false, _) => Role::Holder,
                        (true, 1) => Role::HolderAfterHome,
                        (true, _) => continue,
                    };
                    below.insert(key, (n, c.desired, role, live));
                }
            }
        }
        (now, below)
    }

    /// Attempt number `attempt` to repair `chunk`.
    fn start_repair(
        &self,
        chunk: ChunkKey,
        degree: u8,
        role: Role,
        live: &[PeerId],
        attempt: u32,
    ) -> Vec<Action> {
        Counters::bump(&self.counters.repairs_started);
        match role {
            Role::Holder | Role::HolderAfterHome => {
                tracing::info!("repairing {chunk}: live holders {live:?}, desired {degree}");
                self.start_rebackup(chunk, degree, Version::V2_0)
            }
            Role::Home => {
                let candidates: Vec<PeerId> = {
                    let meta = self.meta.lock();
                    live.iter()
                        .copied()
                        .filter(|p| meta.enhanced_peers().contains(p))
                        .collect()
                };
                // Each attempt asks the next live holder; with none known (their STOREDs may
                // have been lost), any holder.
                let by = if candidates.is_empty() {
                    ANY_HOLDER
                } else {
                    candidates[(attempt as usize - 1) % candidates.len()]
                };
                tracing::info!(
                    "repairing {chunk}: live holders {live:?}, desired {degree}; asking {by}"
                );
                vec![self.send_v(
                    Channel::Mc,
                    Version::V2_0,
                    MessageKind::Repair { chunk, degree, by },
                    Vec::new(),
                )]
            }
        }
    }

    /// REPAIR from a file's home: if it names this peer (or [`ANY_HOLDER`], and this peer is
    /// the lowest live holder it knows of) and the chunk is held here, re-back it up (recording
    /// the home).
    pub(super) fn on_repair(
        &self,
        home: PeerId,
        chunk: ChunkKey,
        degree: u8,
        by: PeerId,
    ) -> Vec<Action> {
        if by != self.cfg.id && by != ANY_HOLDER {
            return Vec::new();
        }
        {
            let mut meta = self.meta.lock();
            let Some(c) = meta.stored_chunk(&chunk) else {
                return Vec::new();
            };
            if by == ANY_HOLDER {
                // The lowest live 2.0 holder this peer knows of answers.
                let view = self.members.lock();
                let lowest = c
                    .holders
                    .iter()
                    .copied()
                    .filter(|&p| {
                        p == self.cfg.id || (view.is_alive(p) && meta.enhanced_peers().contains(&p))
                    })
                    .min();
                if lowest != Some(self.cfg.id) {
                    return Vec::new();
                }
            }
            if c.home != Some(home) {
                let mut c = c.clone();
                c.home = Some(home);
                meta.insert_stored(chunk, c);
            }
        }
        self.start_rebackup(chunk, degree, Version::V2_0)
    }

    /// HOLDS from `peer`: it holds these chunks of `file`. Its copies are recorded; a chunk it
    /// names that is held here by this higher peer gets a trim check counting the lower holders
    /// confirmed by HOLDS meanwhile; with `ask`, this peer answers with what it holds of the
    /// file.
    pub(super) fn on_holds(
        &self,
        peer: PeerId,
        file: FileId,
        chunks: &[ChunkNo],
        ask: bool,
    ) -> Vec<Action> {
        let (checks, mine) = {
            let mut meta = self.meta.lock();
            for &no in chunks {
                let key = ChunkKey { file, no };
                meta.add_holder(&key, peer);
                if let Some(mut t) = self.trash.get_mut(&key) {
                    t.chunk.holders.insert(peer); // in case it is taken back
                }
            }
            let empty = BTreeMap::new();
            let held = meta.stored().get(&file).unwrap_or(&empty);
            let mut checks = Vec::new();
            if peer < self.cfg.id {
                // (A copy trimmed and kept for its grace time may be taken back meanwhile.)
                let here = |no: &&ChunkNo| {
                    held.contains_key(no) || self.trash.contains_key(&ChunkKey { file, no: **no })
                };
                for &no in chunks.iter().filter(here) {
                    let key = ChunkKey { file, no };
                    let mut heard = self.holds_heard.entry(key).or_default();
                    if heard.is_empty() {
                        checks.push(key);
                    }
                    heard.insert(peer);
                }
            }
            (checks, held.keys().copied().collect::<Vec<_>>())
        };
        let mut actions: Vec<Action> = checks
            .into_iter()
            .map(|chunk| Action::Schedule {
                // (Time for the other holders' answers to arrive.)
                delay: self.cfg.trim_delay * 2 + self.reply_delay(),
                event: TimerEvent::TrimConfirmed { chunk },
            })
            .collect();
        if ask {
            actions.extend(self.holds_messages(file, &mine, false));
        }
        actions
    }

    /// The HOLDS messages saying this peer holds `chunks` (ascending) of `file`.
    fn holds_messages(&self, file: FileId, chunks: &[ChunkNo], ask: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut rest = chunks;
        while let Some(&first) = rest.first() {
            let n = rest.partition_point(|&no| no - first < HOLDS_SPAN);
            // Only the file's first HOLDS asks (each answer covers the whole file); each names
            // the process (it may be handled before the UP).
            let extra = match (ask, actions.is_empty()) {
                (true, true) => vec![ASK.to_string(), self.instance_line()],
                (true, false) => vec![self.instance_line()],
                (false, _) => Vec::new(),
            };
            actions.push(self.send_v(
                Channel::Mc,
                Version::V2_0,
                MessageKind::Holds {
                    file,
                    chunks: rest[..n].to_vec(),
                },
                extra,
            ));
            rest = &rest[n..];
        }
        actions
    }

    /// At start: HOLDS (asking for answers) for every file with chunks held here.
    pub(super) fn announce_holdings(&self) -> Vec<Action> {
        let held: Vec<(FileId, Vec<ChunkNo>)> = self
            .meta
            .lock()
            .stored()
            .iter()
            .map(|(file, chunks)| (*file, chunks.keys().copied().collect()))
            .collect();
        held.into_iter()
            .flat_map(|(file, chunks)| self.holds_messages(file, &chunks, true))
            .collect()
    }

    /// A PUTCHUNK of `chunk` was seen: if this peer repairs it, a holder is at it.
    pub(super) fn repair_progress(&self, chunk: ChunkKey) {
        if let Some(r) = self.repairs.lock().get_mut(&chunk) {
            r.progress = true;
        }
    }

    /// Repairs this peer started that have not ended (chunks that are only waiting out
    /// `repair_after`, and those given up on until the membership changes, are not counted: a
    /// chunk whose holders flicker in and out of suspicion under heavy loss is no work yet).
    pub fn repairs_pending(&self) -> usize {
        self.repairs
            .lock()
            .values()
            .filter(|r| r.started.is_some() && !r.gave_up)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_lines_round_trip() {
        assert_eq!(home_in(&[home_line(42)]), Some(42));
        assert_eq!(home_in(&["HOME x".into()]), None);
        assert_eq!(home_in(&["HOME 1 2".into()]), None);
        assert_eq!(home_in(&[]), None);
    }
}
