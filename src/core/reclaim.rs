//! Keeping the degree: RECLAIM lowers the capacity and evicts chunks (surplus copies first),
//! announcing each with REMOVED; a REMOVED that leaves a chunk held here below its degree
//! starts a re-backup after a random delay, unless someone else's PUTCHUNK for it is seen
//! first. An enhanced peer also watches such chunks until they are back at their degree and
//! re-backs them up itself, a bounded number of times, if whoever was doing it died.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use super::budget::quota;
use super::metadata::footprint;
use super::{Action, Core, Counters, TimerEvent};
use crate::protocol::{ChunkKey, Message, MessageKind, PeerId, Version};

/// What a RECLAIM did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclaimed {
    /// Chunks evicted.
    pub evicted: Vec<ChunkKey>,
    /// Bytes used afterwards.
    pub used: u64,
    /// The new capacity in bytes.
    pub capacity: u64,
}

/// A stored chunk RECLAIM may evict.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    /// Copies beyond the desired degree (0 at most for a copy others rely on).
    surplus: i64,
    /// Its size.
    size: u32,
    /// Which chunk.
    key: ChunkKey,
    /// The home whose share it counts against.
    owner: Option<PeerId>,
}

/// The chunks to evict to free `free` bytes of footprint, in order, with their sizes:
/// `candidates` sorted best last; `over` the homes over their share, with their excess
/// bytes. While some home is over its share, the best candidate of the home most over goes;
/// then the best candidate of all.
fn eviction_order(
    candidates: Vec<Candidate>,
    mut over: BTreeMap<PeerId, u64>,
    mut free: u64,
) -> Vec<(ChunkKey, u32)> {
    let mut theirs: BTreeMap<PeerId, Vec<usize>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        if let Some(o) = c.owner.filter(|o| over.contains_key(o)) {
            theirs.entry(o).or_default().push(i);
        }
    }
    // The homes over their share, most over first (lower ids first among equals).
    let mut heap: BinaryHeap<(u64, Reverse<PeerId>)> = over
        .iter()
        .map(|(&o, &excess)| (excess, Reverse(o)))
        .collect();
    let mut gone = vec![false; candidates.len()];
    let mut next = candidates.len();
    let mut order = Vec::new();
    while free > 0 {
        let pick = match heap.pop() {
            Some((_, Reverse(owner))) => theirs.get_mut(&owner).and_then(Vec::pop),
            None => loop {
                if next == 0 {
                    break None;
                }
                next -= 1;
                if !gone[next] {
                    break Some(next);
                }
            },
        };
        let Some(i) = pick else {
            if heap.is_empty() && next == 0 {
                break;
            }
            continue; // that home has no candidate left
        };
        let c = candidates[i];
        gone[i] = true;
        let print = footprint(c.size);
        free = free.saturating_sub(print);
        if let Some(o) = c.owner
            && let Some(excess) = over.get_mut(&o)
        {
            *excess = excess.saturating_sub(print);
            if *excess > 0 {
                heap.push((*excess, Reverse(o)));
            }
        }
        order.push((c.key, c.size));
    }
    order
}

/// A chunk held here below its degree.
#[derive(Debug)]
pub struct Watch {
    /// A PUTCHUNK for it was seen since the last check.
    pub(super) putchunk_seen: bool,
    /// Keep watching after the first check (enhanced), not only the 1.0 one-shot check.
    enhanced: bool,
    /// Re-backups this peer started for it.
    rebackups: u8,
    /// The sender of the REMOVED that started the watch: its re-backups are drawn from that
    /// sender's budget ([`super::budget::REBACKUPS_PER_SECOND`]).
    charged: Option<PeerId>,
}

impl Core {
    /// Sets the capacity for stored chunks to `bytes` and evicts chunks until the use fits:
    /// first those of homes over their share of the new capacity ([`Config::max_share`]),
    /// until they are within it (the home most over first), then those with more copies than
    /// desired (largest surplus first), then the others (larger chunks first); among a home's
    /// chunks the same order. A copy this peer holds as one of the `desired` lowest ids does not
    /// count as surplus: the enhanced trim rule has the higher holders drop theirs relying on
    /// it, so evicting it too could leave none. `enhanced` announces the evictions with REMOVED 2.0, which asks
    /// enhanced holders to see the degree restored even if the re-backup's initiator dies.
    ///
    /// [`Config::max_share`]: super::Config::max_share
    pub fn reclaim(&self, bytes: u64, enhanced: bool) -> (Reclaimed, Vec<Action>) {
        let mut meta = self.meta.lock();
        meta.set_capacity(bytes);
        let mut used = meta.used();
        let mut candidates: Vec<Candidate> = meta
            .stored()
            .iter()
            .flat_map(|(file, m)| {
                m.iter().map(|(no, c)| {
                    let lower = c.holders.iter().filter(|&&p| p < self.cfg.id).count();
                    let relied_on = lower < usize::from(c.desired);
                    let surplus = if relied_on {
                        0.min(c.holders.len() as i64 - i64::from(c.desired))
                    } else {
                        c.holders.len() as i64 - i64::from(c.desired)
                    };
                    Candidate {
                        surplus,
                        size: c.size,
                        key: ChunkKey {
                            file: *file,
                            no: *no,
                        },
                        owner: c.owner(),
                    }
                })
            })
            .collect();
        // Best eviction candidates last, for pop().
        candidates.sort_by_key(|c| (c.surplus, c.size, std::cmp::Reverse(c.key)));
        let over = quota(bytes, self.cfg.max_share).map_or_else(BTreeMap::new, |q| {
            meta.owner_footprints()
                .iter()
                .filter(|&(_, &b)| b > q)
                .map(|(&owner, &b)| (owner, b - q))
                .collect()
        });
        // Evict by footprint (an empty chunk counts as one byte), so RECLAIM 0 frees all.
        let order = eviction_order(candidates, over, meta.footprint().saturating_sub(bytes));
        let mut evicted = Vec::new();
        for (key, size) in order {
            meta.remove_stored(&key);
            used -= u64::from(size);
            evicted.push(key);
        }
        drop(meta);
        let version = if enhanced {
            Version::V2_0
        } else {
            Version::V1_0
        };
        // Trimmed copies kept for their grace time go first: the space is wanted now.
        let mut actions = self.empty_trash(None);
        actions.push(Action::SyncMetadata);
        for &chunk in &evicted {
            actions.push(Action::RemoveChunk { chunk });
            actions.extend(self.removed_sends(chunk, version));
        }
        (
            Reclaimed {
                evicted,
                used,
                capacity: bytes,
            },
            actions,
        )
    }

    /// Sends REMOVED for `chunk` now and `removed_sends - 1` times more.
    pub(super) fn removed_sends(&self, chunk: ChunkKey, version: Version) -> Vec<Action> {
        let message = Message::new(version, self.cfg.id, MessageKind::Removed { chunk });
        self.send_repeated(vec![message], self.cfg.removed_sends - 1, None)
    }

    pub(super) fn on_removed(
        &self,
        sender: PeerId,
        chunk: ChunkKey,
        enhanced: bool,
    ) -> Vec<Action> {
        let untrimmed = self.untrim(sender, chunk);
        if let Some(mut t) = self.trash.get_mut(&chunk) {
            t.chunk.holders.remove(&sender); // in case it is taken back later
        }
        // A HOLDS it sent earlier no longer confirms its copy.
        if let Some(mut heard) = self.holds_heard.get_mut(&chunk) {
            heard.remove(&sender);
        }
        let below = {
            let mut meta = self.meta.lock();
            meta.remove_holder(&chunk, sender);
            self.below_degree(&meta, &chunk).is_some()
        };
        let mut actions = untrimmed;
        if below {
            actions.extend(self.watch(chunk, enhanced, self.reply_delay(), Some(sender)));
        }
        actions
    }

    /// The desired degree of `chunk` if it is stored here and below it.
    fn below_degree(&self, meta: &super::Metadata, chunk: &ChunkKey) -> Option<u8> {
        meta.stored_chunk(chunk)
            .filter(|c| {
                self.live_count(meta, chunk.file, &c.holders, true) < usize::from(c.desired)
            })
            .map(|c| c.desired)
    }

    /// Starts watching a chunk held here below its degree (unless already watched): a check
    /// after `first_check`, then (enhanced) more checks until it is back at its degree. A
    /// watch a REMOVED started is `charged` to its sender.
    pub(super) fn watch(
        &self,
        chunk: ChunkKey,
        enhanced: bool,
        first_check: Duration,
        charged: Option<PeerId>,
    ) -> Vec<Action> {
        let first = Watch {
            putchunk_seen: false,
            enhanced,
            rebackups: 0,
            charged,
        };
        if let Some(mut w) = self.watches.get_mut(&chunk) {
            w.enhanced |= enhanced;
            return Vec::new();
        }
        self.watches.insert(chunk, first);
        vec![Action::Schedule {
            delay: first_check,
            event: TimerEvent::CheckDegree { chunk },
        }]
    }

    /// A watched chunk's delay is over: re-back it up unless it is back at its degree or
    /// someone else is at it; an enhanced watch then looks again later. A re-backup charged
    /// to a REMOVED's sender whose budget is spent waits its turn (the watch stays; the
    /// budgets' period checks it again).
    pub(super) fn check_degree(&self, chunk: ChunkKey) -> Vec<Action> {
        let desired = self.below_degree(&self.meta.lock(), &chunk);
        let Some(mut w) = self.watches.get_mut(&chunk) else {
            self.budgets.lock().rebackup_not_needed(chunk);
            return Vec::new();
        };
        let mut actions = Vec::new();
        tracing::debug!(
            "degree check of {chunk}: desired {desired:?} if below, putchunk seen {}, own re-backup running {}, re-backups {}",
            w.putchunk_seen,
            self.pending.contains_key(&chunk),
            w.rebackups
        );
        let keep_watching = match desired {
            None => false, // back at its degree, or no longer held here
            // Someone else's PUTCHUNK was seen, or our own re-backup is still running.
            Some(_) if w.putchunk_seen || self.pending.contains_key(&chunk) => w.enhanced,
            Some(_) if w.rebackups >= self.cfg.max_rebackups => {
                tracing::warn!(
                    "chunk {chunk} stays below its degree after {} re-backups",
                    w.rebackups
                );
                false
            }
            Some(_)
                if w.charged
                    .is_some_and(|sender| !self.budgets.lock().draw_rebackup(sender, chunk)) =>
            {
                Counters::bump(&self.counters.rebackups_over_budget);
                drop(w);
                return self.budget_timer().into_iter().collect();
            }
            Some(degree) => {
                w.rebackups += 1;
                let version = if w.enhanced {
                    Version::V2_0
                } else {
                    Version::V1_0
                };
                actions.extend(self.start_rebackup(chunk, degree, version));
                w.enhanced
            }
        };
        // Released from waiting for its sender's budget, but no re-backup was due after all.
        self.budgets.lock().rebackup_not_needed(chunk);
        if keep_watching {
            w.putchunk_seen = false;
            actions.push(Action::Schedule {
                delay: self.audit_delay(),
                event: TimerEvent::CheckDegree { chunk },
            });
        } else {
            drop(w);
            self.watches.remove(&chunk);
        }
        actions
    }
}
