//! What a peer persists: chunks it stores for others, files it backed up, its capacity.
//!
//! Plain data with the operations the protocol core needs; no I/O. The runtime saves it
//! (see [`crate::storage::meta_file`]) whenever its generation moved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::protocol::{ChunkHash, ChunkKey, ChunkNo, FileId, PeerId};

/// Default capacity for stored chunks: 100 GB (in bytes).
pub const DEFAULT_CAPACITY: u64 = 100_000_000_000;

/// A chunk this peer stores for another peer's file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredChunk {
    /// Body size in bytes.
    pub size: u32,
    /// Desired replication degree (from the PUTCHUNK).
    pub desired: u8,
    /// Distinct peers known to hold a copy, this peer included.
    pub holders: BTreeSet<PeerId>,
    /// SHA-256 of the body as written; checked before the chunk is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<ChunkHash>,
}

/// What the home peer knows of one chunk of a file it backed up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Distinct peers that confirmed (STORED) and have not announced REMOVED since.
    pub holders: BTreeSet<PeerId>,
    /// SHA-256 of the chunk as first sent; restores accept only bodies with this hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<ChunkHash>,
}

/// A file this peer backed up (it is the file's home).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackedUpFile {
    /// Canonical path of the source file.
    pub path: PathBuf,
    /// Size in bytes when backed up.
    pub size: u64,
    /// Desired replication degree.
    pub desired: u8,
    /// One record per chunk, indexed by chunk number.
    pub chunks: Vec<ChunkRecord>,
}

/// Everything a peer persists.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Metadata {
    /// Maximum bytes of stored chunks.
    pub capacity: u64,
    /// Chunks stored here, by file then chunk number.
    pub stored: BTreeMap<FileId, BTreeMap<ChunkNo, StoredChunk>>,
    /// Files this peer backed up.
    pub backed_up: BTreeMap<FileId, BackedUpFile>,
    /// Enhanced deletions not yet confirmed: for each deleted file, the enhanced peers that
    /// held its chunks and have not answered DELETED yet.
    #[serde(default)]
    pub pending_deletes: BTreeMap<FileId, BTreeSet<PeerId>>,
    /// Peers known to speak the enhanced protocol (they sent a 2.0 message).
    #[serde(default)]
    pub enhanced_peers: BTreeSet<PeerId>,
    /// Bumped on every change; the persister saves when it moved.
    #[serde(skip)]
    pub generation: u64,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            capacity: DEFAULT_CAPACITY,
            stored: BTreeMap::new(),
            backed_up: BTreeMap::new(),
            pending_deletes: BTreeMap::new(),
            enhanced_peers: BTreeSet::new(),
            generation: 0,
        }
    }
}

/// Space a chunk of `size` bytes takes for capacity purposes (an empty chunk counts as 1).
pub fn footprint(size: u32) -> u64 {
    u64::from(size.max(1))
}

/// Number of chunks of a file of `size` bytes: every chunk full but a strictly shorter last one.
pub fn chunk_count(size: u64) -> u64 {
    size / crate::protocol::MAX_CHUNK_SIZE as u64 + 1
}

impl Metadata {
    /// Marks a change so that it gets saved.
    pub fn touch(&mut self) {
        self.generation += 1;
    }

    /// Bytes used by stored chunks.
    pub fn used(&self) -> u64 {
        self.stored
            .values()
            .flat_map(|m| m.values())
            .map(|c| u64::from(c.size))
            .sum()
    }

    /// Space stored chunks take for capacity purposes: their sizes, an empty chunk counting as
    /// one byte (so a peer with capacity 0 holds nothing, not even empty chunks).
    pub fn footprint(&self) -> u64 {
        self.stored
            .values()
            .flat_map(|m| m.values())
            .map(|c| footprint(c.size))
            .sum()
    }

    /// The stored chunk for `key`, if held here.
    pub fn stored_chunk(&self, key: &ChunkKey) -> Option<&StoredChunk> {
        self.stored.get(&key.file).and_then(|m| m.get(&key.no))
    }

    /// Mutable access to the stored chunk for `key`.
    pub fn stored_chunk_mut(&mut self, key: &ChunkKey) -> Option<&mut StoredChunk> {
        self.stored
            .get_mut(&key.file)
            .and_then(|m| m.get_mut(&key.no))
    }

    /// Records a stored chunk.
    pub fn insert_stored(&mut self, key: ChunkKey, chunk: StoredChunk) {
        self.stored
            .entry(key.file)
            .or_default()
            .insert(key.no, chunk);
        self.touch();
    }

    /// Forgets every stored chunk of `file`; returns their numbers.
    pub fn remove_stored_file(&mut self, file: &FileId) -> Vec<ChunkNo> {
        match self.stored.remove(file) {
            Some(m) => {
                self.touch();
                m.into_keys().collect()
            }
            None => Vec::new(),
        }
    }

    /// Forgets one stored chunk; true if it was held.
    pub fn remove_stored(&mut self, key: &ChunkKey) -> bool {
        let Some(m) = self.stored.get_mut(&key.file) else {
            return false;
        };
        let removed = m.remove(&key.no).is_some();
        if m.is_empty() {
            self.stored.remove(&key.file);
        }
        if removed {
            self.touch();
        }
        removed
    }

    /// The record of chunk `key` of a file backed up here.
    pub fn own_chunk_mut(&mut self, key: &ChunkKey) -> Option<&mut ChunkRecord> {
        self.backed_up
            .get_mut(&key.file)
            .and_then(|f| f.chunks.get_mut(key.no as usize))
    }

    /// Perceived degree of `key`: confirmations if it is a chunk of our own file, else the
    /// holders of our stored copy.
    pub fn perceived(&self, key: &ChunkKey) -> Option<usize> {
        if let Some(f) = self.backed_up.get(&key.file) {
            return f.chunks.get(key.no as usize).map(|c| c.holders.len());
        }
        self.stored_chunk(key).map(|c| c.holders.len())
    }

    /// The file id under which `path` is backed up, if any.
    pub fn file_for_path(&self, path: &std::path::Path) -> Option<FileId> {
        self.backed_up
            .iter()
            .find(|(_, f)| f.path == path)
            .map(|(id, _)| *id)
    }

    /// Notes that `peer` holds `key`, wherever this peer tracks that chunk. True if anything changed.
    pub fn add_holder(&mut self, key: &ChunkKey, peer: PeerId) -> bool {
        let mut changed = false;
        if let Some(c) = self.stored_chunk_mut(key) {
            changed |= c.holders.insert(peer);
        }
        if let Some(c) = self.own_chunk_mut(key) {
            changed |= c.holders.insert(peer);
        }
        if changed {
            self.touch();
        }
        changed
    }

    /// Notes that `peer` dropped `key`. True if anything changed.
    pub fn remove_holder(&mut self, key: &ChunkKey, peer: PeerId) -> bool {
        let mut changed = false;
        if let Some(c) = self.stored_chunk_mut(key) {
            changed |= c.holders.remove(&peer);
        }
        if let Some(c) = self.own_chunk_mut(key) {
            changed |= c.holders.remove(&peer);
        }
        if changed {
            self.touch();
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_counts_follow_the_spec() {
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(63_999), 1);
        assert_eq!(chunk_count(64_000), 2);
        assert_eq!(chunk_count(128_000), 3);
    }

    #[test]
    fn json_round_trip_keeps_everything() {
        let mut m = Metadata::default();
        let key = ChunkKey {
            file: FileId([7; 32]),
            no: 3,
        };
        m.insert_stored(
            key,
            StoredChunk {
                size: 10,
                desired: 2,
                holders: [1, 4].into(),
                hash: Some(ChunkHash::of(b"x")),
            },
        );
        m.backed_up.insert(
            FileId([9; 32]),
            BackedUpFile {
                path: "/x".into(),
                size: 5,
                desired: 1,
                chunks: vec![ChunkRecord {
                    holders: [2].into(),
                    hash: None,
                }],
            },
        );
        let text = serde_json::to_string(&m).unwrap();
        let back: Metadata = serde_json::from_str(&text).unwrap();
        assert_eq!(back.stored, m.stored);
        assert_eq!(back.backed_up, m.backed_up);
        assert_eq!(back.used(), 10);
    }
}
