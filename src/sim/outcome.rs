//! What a simulated run ended with, for its summary: each file's copies and each peer's state.

use super::world::World;
use crate::protocol::{ChunkKey, ChunkNo};

impl World {
    /// Each file at the end of the run.
    pub(super) fn outcomes(&self) -> Vec<super::scenario::FileOutcome> {
        self.ledger
            .files
            .iter()
            .map(|f| {
                let payload = crate::core::metadata::payload(self.sc.secure);
                let chunks =
                    crate::core::metadata::chunk_count(f.data.len() as u64, payload) as ChunkNo;
                let keys: Vec<ChunkKey> = (0..chunks)
                    .map(|no| ChunkKey { file: f.file, no })
                    .collect();
                let live = |k: &ChunkKey| {
                    self.slots
                        .iter()
                        .filter(|s| s.exec.is_some() && s.disk.holds(k))
                        .count()
                };
                let perceived = self.slots[f.home as usize].exec.as_ref().and_then(|e| {
                    e.core.with_metadata(|m| {
                        m.backed_up()
                            .get(&f.file)
                            .map(|b| b.chunks.iter().map(|c| c.holders.len()).collect())
                    })
                });
                super::scenario::FileOutcome {
                    home: f.home,
                    deleted: self.ledger.deleted.contains_key(&f.file),
                    copies: keys.iter().map(|k| self.copies.count(k)).collect(),
                    live_copies: keys.iter().map(live).collect(),
                    perceived,
                }
            })
            .collect()
    }
}

impl World {
    /// What each peer keeps at the end of the run.
    pub(super) fn peer_states(&self) -> Vec<Option<super::scenario::PeerState>> {
        self.slots
            .iter()
            .map(|s| {
                let e = s.exec.as_ref()?;
                Some(e.core.with_metadata(|m| {
                    super::scenario::PeerState {
                        stored_chunks: m.stored().values().map(|c| c.len()).sum(),
                        catalog_chunks: m
                            .stored()
                            .iter()
                            .filter(|(f, _)| m.catalog_tag(f).is_some())
                            .map(|(_, c)| c.len())
                            .sum(),
                        files: m.backed_up().values().filter(|f| f.is_users()).count(),
                        catalogs: m.backed_up().values().filter(|f| f.is_catalog()).count(),
                        pending_deletes: m.pending_deletes().len(),
                        tombstones: m.tombstone_count(),
                        enhanced_peers: m.enhanced_peers().len(),
                        instances: e.core.instances(),
                        chunk_files: s.disk.chunk_keys().len(),
                    }
                }))
            })
            .collect()
    }
}
