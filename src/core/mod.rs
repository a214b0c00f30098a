//! The protocol core, free of sockets, threads and clocks.
//!
//! Inputs are received messages ([`Core::on_message`]), fired timers ([`Core::on_timer`]),
//! results of disk actions ([`Core::chunk_written`]) and client commands
//! ([`Core::start_backup`], [`Core::start_delete`], [`Core::state`]). Outputs are [`Action`]s:
//! sends, disk writes and removals, timers to schedule and reports to clients. Randomness comes
//! from a seeded generator, so a run is reproducible; time only as the delays of timers.
//!
//! Concurrency: the persisted [`Metadata`] sits behind one mutex held only for in-memory
//! updates; per-instance state (each backup in progress, each chunk awaiting STORED) lives in
//! concurrent maps and is removed when the instance ends.

pub mod backup;
pub mod metadata;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::protocol::{ChunkKey, FileId, Message, MessageKind, PeerId, Version};
pub use backup::{BackupOp, PendingPut};
pub use metadata::Metadata;
pub use state::StateReport;

/// The three multicast channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Control channel: STORED, GETCHUNK, DELETE, REMOVED.
    Mc,
    /// Backup data channel: PUTCHUNK.
    Mdb,
    /// Restore data channel: CHUNK.
    Mdr,
}

impl Channel {
    /// All channels, in a fixed order.
    pub const ALL: [Channel; 3] = [Channel::Mc, Channel::Mdb, Channel::Mdr];

    /// Position in [`Channel::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Short upper-case name.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Mc => "MC",
            Channel::Mdb => "MDB",
            Channel::Mdr => "MDR",
        }
    }
}

/// Identifies one client operation (a backup, a delete, ...) for its reports.
pub type OpId = u64;

/// Tunable protocol parameters.
#[derive(Clone, Debug)]
pub struct Config {
    /// This peer's id.
    pub id: PeerId,
    /// Protocol version this peer was started with.
    pub version: Version,
    /// Chunks of one backup in flight at once.
    pub window: usize,
    /// PUTCHUNK sends per chunk at most.
    pub max_putchunk_sends: u8,
    /// Wait after the first PUTCHUNK; doubled after each resend.
    pub first_wait: Duration,
    /// Upper bound of the random delay before STORED (and later CHUNK).
    pub reply_delay_max: Duration,
    /// Times DELETE is sent.
    pub delete_sends: u8,
    /// Interval between DELETE sends.
    pub delete_interval: Duration,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Config {
    /// The protocol's values (protocol.md §5) for peer `id`.
    pub fn new(id: PeerId, version: Version) -> Self {
        Config {
            id,
            version,
            window: 128,
            max_putchunk_sends: 5,
            first_wait: Duration::from_secs(1),
            reply_delay_max: Duration::from_millis(400),
            delete_sends: 3,
            delete_interval: Duration::from_millis(500),
            seed: fastrand::u64(..),
        }
    }
}

/// Where the initiator reads a chunk's body when it sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkSource {
    /// Source file.
    pub path: PathBuf,
    /// Byte offset of the chunk.
    pub offset: u64,
    /// Chunk length in bytes.
    pub len: usize,
}

/// What the runtime must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Multicast `message` on `channel`.
    Send {
        /// Where.
        channel: Channel,
        /// What.
        message: Message,
    },
    /// Read a chunk from its source file and multicast it as PUTCHUNK on MDB.
    SendPutchunk {
        /// Which chunk.
        chunk: ChunkKey,
        /// Desired degree for the header.
        degree: u8,
        /// Where its bytes are.
        source: ChunkSource,
        /// Reports to this operation if the source cannot be read.
        op: OpId,
    },
    /// Write a chunk durably, then call [`Core::chunk_written`].
    WriteChunk {
        /// Which chunk.
        chunk: ChunkKey,
        /// Desired degree to record.
        desired: u8,
        /// Its bytes.
        body: Vec<u8>,
    },
    /// Remove a stored chunk's file.
    RemoveChunk {
        /// Which chunk.
        chunk: ChunkKey,
    },
    /// Make the metadata durable before the actions that follow.
    SyncMetadata,
    /// Call [`Core::on_timer`] with `event` after `delay`.
    Schedule {
        /// How long from now.
        delay: Duration,
        /// What to deliver.
        event: TimerEvent,
    },
    /// Tell the client running `op`.
    Report {
        /// Which operation.
        op: OpId,
        /// What happened.
        event: OpEvent,
    },
}

/// Timer events the core schedules for itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimerEvent {
    /// The wait after PUTCHUNK send number `send` of `chunk` is over.
    PutchunkWait {
        /// Which chunk.
        chunk: ChunkKey,
        /// Which send it followed (1-based).
        send: u8,
    },
    /// Answer STORED for a chunk held here.
    SendStored {
        /// Which chunk.
        chunk: ChunkKey,
    },
    /// Send DELETE again; `remaining` sends are left after this one.
    DeleteAgain {
        /// Which file.
        file: FileId,
        /// Sends left after this one.
        remaining: u8,
        /// Operation to finish after the last send, if a client waits.
        op: Option<OpId>,
    },
}

/// What a client operation learns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpEvent {
    /// `done` of `total` units finished.
    Progress {
        /// Units done.
        done: u64,
        /// Units in all.
        total: u64,
    },
    /// A backup ended; `short` lists the chunks that did not reach the desired degree.
    BackupDone {
        /// The file's id.
        file: FileId,
        /// Chunks in the file.
        chunks: u64,
        /// Chunks below the desired degree after the last try.
        short: Vec<u32>,
    },
    /// A delete finished its sends.
    DeleteDone {
        /// The file's id.
        file: FileId,
    },
    /// The operation failed.
    Failed(String),
}

/// A client command the core refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The replication degree is outside 1..=9.
    #[error("replication degree must be 1 to 9, got {0}")]
    BadDegree(u8),
    /// The file has more chunks than chunk numbers allow.
    #[error("file of {0} bytes is too large: chunk numbers stop at 999999 (about 64 GB)")]
    TooLarge(u64),
    /// A backup of the same file is running.
    #[error("a backup of {0} is already running")]
    BackupRunning(PathBuf),
    /// The path was never backed up by this peer.
    #[error("{0} was not backed up by this peer")]
    NotBackedUp(PathBuf),
}

/// The protocol state machine of one peer.
pub struct Core {
    cfg: Config,
    meta: Mutex<Metadata>,
    rng: Mutex<fastrand::Rng>,
    /// Backups in progress, by operation.
    backups: DashMap<OpId, BackupOp>,
    /// Chunks awaiting STORED, initiator side.
    pending: DashMap<ChunkKey, PendingPut>,
    /// Chunks being written here, with their sizes (reserved against capacity).
    writing: DashMap<ChunkKey, u32>,
}

impl Core {
    /// A core with the given persisted metadata.
    pub fn new(cfg: Config, meta: Metadata) -> Self {
        let rng = fastrand::Rng::with_seed(cfg.seed);
        Core {
            cfg,
            meta: Mutex::new(meta),
            rng: Mutex::new(rng),
            backups: DashMap::new(),
            pending: DashMap::new(),
            writing: DashMap::new(),
        }
    }

    /// This peer's configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Runs `f` on the metadata (for the persister and for inspection).
    pub fn with_metadata<R>(&self, f: impl FnOnce(&Metadata) -> R) -> R {
        f(&self.meta.lock())
    }

    /// Sets the capacity for stored chunks, in bytes.
    pub fn set_capacity(&self, bytes: u64) {
        let mut meta = self.meta.lock();
        if meta.capacity != bytes {
            meta.capacity = bytes;
            meta.touch();
        }
    }

    /// Number of instances in progress (backups, chunks awaiting STORED, writes).
    pub fn instances(&self) -> usize {
        self.backups.len() + self.pending.len() + self.writing.len()
    }

    fn message(&self, kind: MessageKind) -> Message {
        Message::new(self.cfg.version, self.cfg.id, kind)
    }

    fn reply_delay(&self) -> Duration {
        let max = self.cfg.reply_delay_max.as_millis() as u64;
        Duration::from_millis(self.rng.lock().u64(0..=max))
    }

    /// Handles a received message.
    pub fn on_message(&self, msg: Message) -> Vec<Action> {
        if msg.sender == self.cfg.id {
            return Vec::new();
        }
        match msg.kind {
            MessageKind::Putchunk {
                chunk,
                degree,
                body,
            } => self.on_putchunk(chunk, degree, body),
            MessageKind::Stored { chunk } => self.on_stored(msg.sender, chunk),
            MessageKind::Delete { file } => self.on_delete(file),
            MessageKind::Removed { chunk } => {
                self.meta.lock().remove_holder(&chunk, msg.sender);
                Vec::new()
            }
            MessageKind::Getchunk { .. } | MessageKind::Chunk { .. } => Vec::new(),
        }
    }

    fn on_putchunk(&self, chunk: ChunkKey, degree: u8, body: Vec<u8>) -> Vec<Action> {
        let meta = self.meta.lock();
        if meta.backed_up.contains_key(&chunk.file) {
            return Vec::new(); // never store chunks of our own files
        }
        if meta.stored_chunk(&chunk).is_some() {
            drop(meta);
            return vec![self.stored_timer(chunk)];
        }
        let size = body.len() as u32;
        let reserved: u64 = self.writing.iter().map(|e| u64::from(*e.value())).sum();
        // An empty chunk still counts as one byte: a full peer (capacity 0 included) stores nothing.
        if meta.used() + reserved + u64::from(size.max(1)) > meta.capacity {
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

    fn stored_timer(&self, chunk: ChunkKey) -> Action {
        Action::Schedule {
            delay: self.reply_delay(),
            event: TimerEvent::SendStored { chunk },
        }
    }

    /// The runtime finished (or failed) writing a chunk asked for by [`Action::WriteChunk`].
    pub fn chunk_written(&self, chunk: ChunkKey, desired: u8, size: u32, ok: bool) -> Vec<Action> {
        let Some((_, reserved)) = self.writing.remove(&chunk) else {
            // DELETE arrived while the chunk was written: it must not stay.
            return if ok {
                vec![Action::RemoveChunk { chunk }]
            } else {
                Vec::new()
            };
        };
        debug_assert_eq!(reserved, size);
        if !ok {
            return Vec::new();
        }
        self.meta.lock().insert_stored(
            chunk,
            metadata::StoredChunk {
                size,
                desired,
                holders: [self.cfg.id].into(),
            },
        );
        vec![self.stored_timer(chunk)]
    }

    fn on_stored(&self, sender: PeerId, chunk: ChunkKey) -> Vec<Action> {
        let perceived = {
            let mut meta = self.meta.lock();
            meta.add_holder(&chunk, sender);
            meta.own_chunk_mut(&chunk).map(|c| c.holders.len())
        };
        match perceived {
            Some(n) => self.chunk_progress(chunk, n),
            None => Vec::new(),
        }
    }

    fn on_delete(&self, file: FileId) -> Vec<Action> {
        let removed = self.meta.lock().remove_stored_file(&file);
        self.writing.retain(|k, _| k.file != file);
        removed
            .into_iter()
            .map(|no| Action::RemoveChunk {
                chunk: ChunkKey { file, no },
            })
            .collect()
    }

    /// Handles a fired timer.
    pub fn on_timer(&self, event: TimerEvent) -> Vec<Action> {
        match event {
            TimerEvent::SendStored { chunk } => {
                if self.meta.lock().stored_chunk(&chunk).is_none() {
                    return Vec::new(); // deleted meanwhile
                }
                vec![
                    Action::SyncMetadata,
                    Action::Send {
                        channel: Channel::Mc,
                        message: self.message(MessageKind::Stored { chunk }),
                    },
                ]
            }
            TimerEvent::PutchunkWait { chunk, send } => self.putchunk_wait_over(chunk, send),
            TimerEvent::DeleteAgain {
                file,
                remaining,
                op,
            } => self.delete_send(file, remaining, op),
        }
    }

    /// Starts DELETE for the file backed up from `path`.
    pub fn start_delete(
        &self,
        op: OpId,
        path: &std::path::Path,
    ) -> Result<Vec<Action>, CommandError> {
        let file = {
            let mut meta = self.meta.lock();
            let file = meta
                .file_for_path(path)
                .ok_or_else(|| CommandError::NotBackedUp(path.to_path_buf()))?;
            if self.backups.iter().any(|b| b.file == file) {
                return Err(CommandError::BackupRunning(path.to_path_buf()));
            }
            meta.backed_up.remove(&file);
            meta.touch();
            file
        };
        Ok(self.delete_send(file, self.cfg.delete_sends - 1, Some(op)))
    }

    /// Sends DELETE for `file` now and schedules the `remaining` repeats.
    fn delete_send(&self, file: FileId, remaining: u8, op: Option<OpId>) -> Vec<Action> {
        let mut actions = vec![Action::Send {
            channel: Channel::Mc,
            message: self.message(MessageKind::Delete { file }),
        }];
        if remaining > 0 {
            actions.push(Action::Schedule {
                delay: self.cfg.delete_interval,
                event: TimerEvent::DeleteAgain {
                    file,
                    remaining: remaining - 1,
                    op,
                },
            });
        } else if let Some(op) = op {
            actions.push(Action::Report {
                op,
                event: OpEvent::DeleteDone { file },
            });
        }
        actions
    }

    /// This peer's STATE report.
    pub fn state(&self) -> StateReport {
        StateReport::from_metadata(&self.cfg, &self.meta.lock())
    }
}

#[cfg(test)]
mod tests;
