//! The holder's side: storing chunks on PUTCHUNK and answering STORED, serving CHUNK on
//! GETCHUNK (with the suppression rule), dropping chunks on DELETE, and counting STOREDs.

use super::metadata::StoredChunk;
use super::{Action, Channel, Core, Counters, TimerEvent};
use crate::protocol::{ChunkHash, ChunkKey, FileId, MessageKind, PeerId};

impl Core {
    pub(super) fn on_putchunk(&self, chunk: ChunkKey, degree: u8, body: Vec<u8>) -> Vec<Action> {
        if let Some(mut seen) = self.removed_watch.get_mut(&chunk) {
            *seen = true; // someone else is re-backing it up
        }
        let meta = self.meta.lock();
        if meta.backed_up.contains_key(&chunk.file) {
            return Vec::new(); // never store chunks of our own files
        }
        if meta.stored_chunk(&chunk).is_some() {
            drop(meta);
            return vec![self.stored_timer(chunk)];
        }
        let size = body.len() as u32;
        if !self.fits(&meta, size) {
            return Vec::new();
        }
        if self.writing.insert(chunk, size).is_some() {
            return Vec::new(); // a write of this chunk is under way; it will answer
        }
        vec![Action::WriteChunk {
            chunk,
            desired: degree,
            body,
        }]
    }

    /// Whether `size` more bytes fit next to what is stored and being written. An empty chunk
    /// still counts as one byte, so a full peer (capacity 0 included) stores nothing.
    fn fits(&self, meta: &super::Metadata, size: u32) -> bool {
        let reserved: u64 = self.writing.iter().map(|e| u64::from(*e.value())).sum();
        meta.used() + reserved + u64::from(size.max(1)) <= meta.capacity
    }

    fn stored_timer(&self, chunk: ChunkKey) -> Action {
        Action::Schedule {
            delay: self.reply_delay(),
            event: TimerEvent::SendStored { chunk },
        }
    }

    /// The runtime finished writing a chunk asked for by [`Action::WriteChunk`]: `written` is
    /// the hash of the durable body, or `None` if the write failed.
    pub fn chunk_written(
        &self,
        chunk: ChunkKey,
        desired: u8,
        size: u32,
        written: Option<ChunkHash>,
    ) -> Vec<Action> {
        let reservation = self.writing.remove(&chunk);
        let Some(hash) = written else {
            return Vec::new();
        };
        let mut meta = self.meta.lock();
        // DELETE arrived, or RECLAIM lowered the capacity, while the chunk was written.
        if reservation.is_none() || meta.used() + u64::from(size.max(1)) > meta.capacity {
            return vec![Action::RemoveChunk { chunk }];
        }
        meta.insert_stored(
            chunk,
            StoredChunk {
                size,
                desired,
                holders: [self.cfg.id].into(),
                hash: Some(hash),
            },
        );
        drop(meta);
        Counters::bump(&self.counters.chunks_stored);
        vec![self.stored_timer(chunk)]
    }

    pub(super) fn send_stored(&self, chunk: ChunkKey) -> Vec<Action> {
        if self.meta.lock().stored_chunk(&chunk).is_none() {
            return Vec::new(); // deleted or evicted meanwhile
        }
        // STORED promises durability: the metadata naming the chunk goes to disk first.
        vec![
            Action::SyncMetadata,
            self.send(Channel::Mc, MessageKind::Stored { chunk }),
        ]
    }

    pub(super) fn on_stored(&self, sender: PeerId, chunk: ChunkKey) -> Vec<Action> {
        let perceived = {
            let mut meta = self.meta.lock();
            meta.add_holder(&chunk, sender);
            meta.perceived(&chunk)
        };
        match perceived {
            Some(n) => self.chunk_progress(chunk, n),
            None => Vec::new(),
        }
    }

    pub(super) fn on_delete(&self, file: FileId) -> Vec<Action> {
        let removed = self.meta.lock().remove_stored_file(&file);
        self.writing.retain(|k, _| k.file != file);
        removed
            .into_iter()
            .map(|no| Action::RemoveChunk {
                chunk: ChunkKey { file, no },
            })
            .collect()
    }

    pub(super) fn on_getchunk(&self, chunk: ChunkKey) -> Vec<Action> {
        if self.meta.lock().stored_chunk(&chunk).is_none() {
            return Vec::new();
        }
        if self.replying.insert(chunk, ()).is_some() {
            return Vec::new(); // a reply is already scheduled
        }
        vec![Action::Schedule {
            delay: self.reply_delay(),
            event: TimerEvent::SendChunk { chunk },
        }]
    }

    pub(super) fn send_chunk(&self, chunk: ChunkKey) -> Vec<Action> {
        if self.replying.remove(&chunk).is_none() {
            return Vec::new(); // another holder's CHUNK was seen during the delay
        }
        match self.meta.lock().stored_chunk(&chunk) {
            Some(c) => vec![Action::SendChunk {
                chunk,
                hash: c.hash,
            }],
            None => Vec::new(),
        }
    }

    /// A CHUNK was seen on MDR: a reply of ours for the same chunk is no longer needed, and if
    /// we are restoring that chunk, the body is a candidate.
    pub(super) fn on_chunk(&self, chunk: ChunkKey, body: Vec<u8>) -> Vec<Action> {
        self.replying.remove(&chunk);
        self.restore_body(chunk, body)
    }

    /// A stored chunk turned out unreadable or corrupt when it was to be served: forget it and
    /// tell the others (REMOVED), so that they restore its degree.
    pub fn stored_chunk_lost(&self, chunk: ChunkKey) -> Vec<Action> {
        if !self.meta.lock().remove_stored(&chunk) {
            return Vec::new();
        }
        vec![
            Action::RemoveChunk { chunk },
            self.send(Channel::Mc, MessageKind::Removed { chunk }),
        ]
    }
}
