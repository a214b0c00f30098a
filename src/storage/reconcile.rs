//! Start-up reconciliation of the metadata with the chunk files on disk.
//!
//! A chunk in the metadata whose file is gone is dropped (the peer then announces REMOVED for
//! it, so that the other peers' perceived degrees stay true); a chunk file without metadata (a
//! crash between the durable write and the metadata save, or a trimmed copy kept for its grace
//! time) is adopted with desired degree 1 (unknown), this peer as its only known holder and the
//! hash of its contents, if it fits the capacity, else removed; a size that differs from the file's is corrected from the file;
//! files of chunks of our own files are removed; temporary files are deleted.

use std::collections::BTreeSet;

use super::ChunkStore;
use super::StorageError;
use crate::core::Metadata;
use crate::core::metadata::{StoredChunk, footprint};
use crate::protocol::{ChunkHash, ChunkKey, MAX_CHUNK_SIZE, PeerId};

/// What reconciliation changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Metadata entries dropped because their file is missing.
    pub dropped: Vec<ChunkKey>,
    /// Chunk files adopted into the metadata.
    pub adopted: Vec<ChunkKey>,
    /// Chunk files removed (oversized, or of a file this peer backed up itself).
    pub removed: Vec<ChunkKey>,
}

/// Brings `meta` and the chunk files into agreement.
pub fn reconcile<S: ChunkStore + ?Sized>(
    meta: &mut Metadata,
    files: &S,
    me: PeerId,
) -> Result<Reconciled, StorageError> {
    files.clear_staged();
    let mut out = Reconciled::default();
    let on_disk = files.list_chunks()?;
    let present: BTreeSet<ChunkKey> = on_disk.iter().map(|(k, _)| *k).collect();
    let known: Vec<ChunkKey> = meta
        .stored()
        .iter()
        .flat_map(|(file, m)| {
            m.keys().map(|no| ChunkKey {
                file: *file,
                no: *no,
            })
        })
        .collect();
    for key in known {
        if !present.contains(&key) {
            meta.remove_stored(&key);
            out.dropped.push(key);
        }
    }
    for (key, size) in on_disk {
        if size > MAX_CHUNK_SIZE as u64 || meta.backed_up().contains_key(&key.file) {
            files.remove_chunk(&key)?;
            meta.remove_stored(&key);
            out.removed.push(key);
            continue;
        }
        match meta.stored_chunk(&key).cloned() {
            Some(c) if u64::from(c.size) == size => {}
            Some(c) => meta.insert_stored(
                key,
                StoredChunk {
                    size: size as u32,
                    ..c
                },
            ),
            // Never answered with STORED (that waits for the metadata), so nobody counts on
            // it: adopted only if it fits the capacity.
            None if meta.footprint() + footprint(size as u32) > meta.capacity() => {
                files.remove_chunk(&key)?;
                out.removed.push(key);
            }
            None => {
                let hash = files.read_chunk(&key).ok().map(|body| ChunkHash::of(&body));
                meta.insert_stored(
                    key,
                    StoredChunk {
                        size: size as u32,
                        desired: 1,
                        holders: [me].into(),
                        hash,
                        home: None,
                        sender: None,
                    },
                );
                out.adopted.push(key);
            }
        }
    }
    Ok(out)
}
