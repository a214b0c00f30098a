//! Space reclaim: RECLAIM lowers the capacity and evicts chunks (surplus copies first),
//! announcing each with REMOVED; a REMOVED from another peer that leaves a chunk held here
//! below its degree starts a re-backup after a random delay, unless someone else's PUTCHUNK
//! for it is seen first.

use super::{Action, Channel, Core, TimerEvent};
use crate::protocol::{ChunkKey, MessageKind, PeerId};

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

impl Core {
    /// Sets the capacity for stored chunks to `bytes` and evicts chunks until the use fits:
    /// first those with more copies than desired (largest surplus first), then the others
    /// (lowest perceived degree last, larger chunks first).
    pub fn reclaim(&self, bytes: u64) -> (Reclaimed, Vec<Action>) {
        let mut meta = self.meta.lock();
        meta.capacity = bytes;
        meta.touch();
        let mut used = meta.used();
        let mut candidates: Vec<(i64, u32, ChunkKey)> = meta
            .stored
            .iter()
            .flat_map(|(file, m)| {
                m.iter().map(|(no, c)| {
                    let surplus = c.holders.len() as i64 - i64::from(c.desired);
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
        while used > bytes {
            let Some((_, size, key)) = candidates.pop() else {
                break;
            };
            meta.remove_stored(&key);
            used -= u64::from(size);
            evicted.push(key);
        }
        drop(meta);
        let mut actions = Vec::new();
        for &chunk in &evicted {
            actions.push(Action::RemoveChunk { chunk });
            actions.push(self.send(Channel::Mc, MessageKind::Removed { chunk }));
        }
        actions.insert(0, Action::SyncMetadata);
        (
            Reclaimed {
                evicted,
                used,
                capacity: bytes,
            },
            actions,
        )
    }

    pub(super) fn on_removed(&self, sender: PeerId, chunk: ChunkKey) -> Vec<Action> {
        let below = {
            let mut meta = self.meta.lock();
            meta.remove_holder(&chunk, sender);
            meta.stored_chunk(&chunk)
                .is_some_and(|c| c.holders.len() < usize::from(c.desired))
        };
        if !below || self.removed_watch.insert(chunk, false).is_some() {
            return Vec::new();
        }
        vec![Action::Schedule {
            delay: self.reply_delay(),
            event: TimerEvent::RemovedCheck { chunk },
        }]
    }

    pub(super) fn removed_check(&self, chunk: ChunkKey) -> Vec<Action> {
        let Some((_, seen_putchunk)) = self.removed_watch.remove(&chunk) else {
            return Vec::new();
        };
        if seen_putchunk {
            return Vec::new();
        }
        let desired = match self.meta.lock().stored_chunk(&chunk) {
            Some(c) if c.holders.len() < usize::from(c.desired) => c.desired,
            _ => return Vec::new(),
        };
        self.start_rebackup(chunk, desired)
    }
}
