//! Keeping the degree: RECLAIM lowers the capacity and evicts chunks (surplus copies first),
//! announcing each with REMOVED; a REMOVED that leaves a chunk held here below its degree
//! starts a re-backup after a random delay, unless someone else's PUTCHUNK for it is seen
//! first. An enhanced peer also watches such chunks until they are back at their degree and
//! re-backs them up itself, a bounded number of times, if whoever was doing it died.

use std::time::Duration;

use super::metadata::footprint;
use super::{Action, Core, TimerEvent};
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

/// A chunk held here below its degree.
#[derive(Debug)]
pub struct Watch {
    /// A PUTCHUNK for it was seen since the last check.
    pub(super) putchunk_seen: bool,
    /// Keep watching after the first check (enhanced), not only the 1.0 one-shot check.
    enhanced: bool,
    /// Re-backups this peer started for it.
    rebackups: u8,
}

impl Core {
    /// Sets the capacity for stored chunks to `bytes` and evicts chunks until the use fits:
    /// first those with more copies than desired (largest surplus first), then the others
    /// (larger chunks first). A copy this peer holds as one of the `desired` lowest ids does not
    /// count as surplus: the enhanced trim rule has the higher holders drop theirs relying on
    /// it, so evicting it too could leave none. `enhanced` announces the evictions with REMOVED 2.0, which asks
    /// enhanced holders to see the degree restored even if the re-backup's initiator dies.
    pub fn reclaim(&self, bytes: u64, enhanced: bool) -> (Reclaimed, Vec<Action>) {
        let mut meta = self.meta.lock();
        meta.set_capacity(bytes);
        let mut used = meta.used();
        let mut candidates: Vec<(i64, u32, ChunkKey)> = meta
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
                    (
                        surplus,
                        c.size,
                        ChunkKey {
                            file: *file,
                            no: *no,
                        },
                    )
                })
            })
            .collect();
        // Best eviction candidates last, for pop().
        candidates.sort_by_key(|&(surplus, size, key)| (surplus, size, std::cmp::Reverse(key)));
        let mut evicted = Vec::new();
        // Evict by footprint (an empty chunk counts as one byte), so RECLAIM 0 frees all.
        let mut taken = meta.footprint();
        while taken > bytes {
            let Some((_, size, key)) = candidates.pop() else {
                break;
            };
            meta.remove_stored(&key);
            taken -= footprint(size);
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
            actions.extend(self.watch(chunk, enhanced, self.reply_delay()));
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
    /// after `first_check`, then (enhanced) more checks until it is back at its degree.
    pub(super) fn watch(
        &self,
        chunk: ChunkKey,
        enhanced: bool,
        first_check: Duration,
    ) -> Vec<Action> {
        let first = Watch {
            putchunk_seen: false,
            enhanced,
            rebackups: 0,
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
    /// someone else is at it; an enhanced watch then looks again later.
    pub(super) fn check_degree(&self, chunk: ChunkKey) -> Vec<Action> {
        let desired = self.below_degree(&self.meta.lock(), &chunk);
        let Some(mut w) = self.watches.get_mut(&chunk) else {
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
