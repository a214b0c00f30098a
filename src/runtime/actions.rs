//! Executing the core's actions: sends (bodies read when the sender gets to them), disk work
//! (staged chunk writes made durable by the group commit, restored files), timers and reports.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::node::{Shared, StagedWrite};
use super::tcp;
use crate::core::enhanced::header_only_chunk;
use crate::core::{Action, Channel, ChunkSource, OpId, TimerEvent};
use crate::protocol::{ChunkHash, ChunkKey, MAX_CHUNK_SIZE, Message, MessageKind, Version};
use crate::storage::{StorageError, start_writeback};

/// A restore starts the writeback of its file once every this many chunks (by chunk number).
const WRITEBACK_EVERY: u64 = 64;

impl Shared {
    /// Executes the core's actions in order.
    pub(super) fn run(&self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let _ = self.save_signal.0.try_send(());
        let mut actions = actions.into_iter();
        while let Some(action) = actions.next() {
            match action {
                Action::Send { channel, message } => self.senders.send(channel, message.encode()),
                Action::SendPutchunk {
                    version,
                    chunk,
                    degree,
                    source,
                    op,
                    send,
                    wait,
                    late,
                } => {
                    let s = self.this();
                    self.senders.send_built(Channel::Mdb, move || {
                        let datagram = s.putchunk_datagram(op, version, chunk, degree, source)?;
                        s.timers
                            .schedule(wait, TimerEvent::PutchunkWait { chunk, send });
                        if let Some((delay, event)) = late {
                            s.timers.schedule(delay, event);
                        }
                        Some(datagram)
                    });
                }
                Action::RecordHash { op, chunk, source } => {
                    let ChunkSource::File { path, offset, len } = source else {
                        continue;
                    };
                    let recorded = match read_at(&path, offset, len) {
                        Ok(body) => self.core.putchunk_read(op, chunk, ChunkHash::of(&body)),
                        Err(e) => Err(self.core.backup_source_failed(op, e.to_string())),
                    };
                    if let Err(actions) = recorded {
                        self.run(actions);
                    }
                }
                Action::SendChunk { chunk, hash, tcp } => {
                    let s = self.this();
                    self.senders.send_built(Channel::Mdr, move || {
                        // Another holder's CHUNK may have gone out while this one waited.
                        s.core
                            .chunk_reply_due(chunk)
                            .then(|| s.chunk_datagram(chunk, hash, tcp))
                            .flatten()
                    });
                }
                Action::WriteChunk {
                    chunk,
                    desired,
                    body,
                } => match self.files.stage(chunk, &body) {
                    Ok(staged) => {
                        let write = StagedWrite {
                            staged,
                            desired,
                            size: body.len() as u32,
                            hash: ChunkHash::of(&body),
                        };
                        self.commits.lock().staged.push(write);
                        let _ = self.save_signal.0.try_send(());
                    }
                    Err(e) => {
                        self.stats
                            .disk_error(format_args!("storing chunk {chunk}: {e}"));
                        let failed =
                            self.core
                                .chunk_written(chunk, desired, body.len() as u32, None);
                        self.run(failed);
                    }
                },
                Action::RemoveChunk { chunk } => {
                    tracing::debug!("removing the copy of {chunk}");
                    if let Err(e) = self.files.remove(&chunk) {
                        self.stats
                            .disk_error(format_args!("removing chunk {chunk}: {e}"));
                    }
                }
                Action::CreateRestoreFile { op, path, size } => {
                    if let Err(e) = std::fs::File::create(&path).and_then(|f| f.set_len(size)) {
                        self.run(
                            self.core.restore_failed(
                                op,
                                format!("cannot create {}: {e}", path.display()),
                            ),
                        );
                    }
                }
                Action::WriteRestored {
                    op,
                    path,
                    offset,
                    body,
                } => {
                    let written = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| {
                            f.write_all_at(&body, offset)?;
                            // Start writing the file out every few MB, so that the final
                            // fsync has little left (once per chunk costs more CPU).
                            if (offset / MAX_CHUNK_SIZE as u64).is_multiple_of(WRITEBACK_EVERY) {
                                start_writeback(&f);
                            }
                            Ok(())
                        });
                    if let Err(e) = &written {
                        tracing::error!("writing {}: {e}", path.display());
                    }
                    self.run(self.core.restored_chunk_written(op, written.is_ok()));
                }
                Action::CommitRestore { op, tmp, dest } => {
                    let started = std::time::Instant::now();
                    let result = commit_restore(&tmp, &dest).map_err(|e| e.to_string());
                    tracing::debug!(
                        "restored file {} made durable in {:?}",
                        dest.display(),
                        started.elapsed()
                    );
                    self.run(self.core.restore_committed(op, result));
                }
                Action::AbortRestore { tmp } => {
                    let _ = std::fs::remove_file(tmp);
                }
                Action::SyncMetadata => {
                    // What follows waits for the next commit (which saves the metadata).
                    self.commits.lock().after.push(actions.collect());
                    let _ = self.save_signal.0.try_send(());
                    return;
                }
                Action::Schedule { delay, event } => {
                    self.timers.schedule(delay, event);
                }
                Action::Report { op, event } => self.report(op, event),
            }
        }
    }

    pub(super) fn message(&self, version: Version, kind: MessageKind) -> Message {
        Message::new(version, self.core.config().id, kind)
    }

    /// This peer, shared (for work handed to other threads).
    pub(super) fn this(&self) -> Arc<Shared> {
        self.this.upgrade().expect("a running peer is alive")
    }

    /// Builds a CHUNK reply when its turn to be sent comes: reads the stored copy and checks
    /// it (a corrupt or unreadable copy is dropped and announced instead). Enhanced: the whole
    /// CHUNK goes over TCP to the initiator and only its header on MDR (the body goes on MDR
    /// if TCP fails).
    pub(super) fn chunk_datagram(
        &self,
        chunk: ChunkKey,
        hash: Option<ChunkHash>,
        tcp: Option<SocketAddrV4>,
    ) -> Option<Vec<u8>> {
        let body = match self.files.read(&chunk) {
            Ok(body) if hash.is_none_or(|h| h == ChunkHash::of(&body)) => body,
            Ok(_) => {
                tracing::error!(
                    "stored chunk {chunk} is corrupt: dropping it and announcing REMOVED"
                );
                self.run(self.core.stored_chunk_lost(chunk));
                return None;
            }
            Err(e) => {
                tracing::error!("{e}: dropping chunk {chunk} and announcing REMOVED");
                self.run(self.core.stored_chunk_lost(chunk));
                return None;
            }
        };
        let body = match tcp {
            None => body,
            Some(addr) => {
                let whole = self.message(Version::V2_0, MessageKind::Chunk { chunk, body });
                match self.tcp_pool.send(addr, &tcp::frame(&whole)) {
                    Ok(()) => {
                        let id = self.core.config().id;
                        return Some(header_only_chunk(id, chunk).encode());
                    }
                    Err(e) => {
                        tracing::warn!(
                            "sending chunk {chunk} over TCP to {addr}: {e}; sending it on MDR"
                        );
                        let MessageKind::Chunk { body, .. } = whole.kind else {
                            return None;
                        };
                        body
                    }
                }
            }
        };
        Some(
            self.message(Version::V1_0, MessageKind::Chunk { chunk, body })
                .encode(),
        )
    }

    /// Builds a PUTCHUNK when its turn to be sent comes: reads the chunk from the home's file
    /// (checking it did not change) or from our stored copy (re-backup).
    pub(super) fn putchunk_datagram(
        &self,
        op: OpId,
        version: Version,
        chunk: ChunkKey,
        degree: u8,
        source: ChunkSource,
    ) -> Option<Vec<u8>> {
        let body = match source {
            ChunkSource::File { path, offset, len } => match read_at(&path, offset, len) {
                Ok(body) => {
                    if let Err(actions) = self.core.putchunk_read(op, chunk, ChunkHash::of(&body)) {
                        self.run(actions);
                        return None;
                    }
                    body
                }
                Err(e) => {
                    self.run(self.core.backup_source_failed(op, e.to_string()));
                    return None;
                }
            },
            ChunkSource::Stored => match self.files.read(&chunk) {
                Ok(body) => body,
                Err(e) => {
                    let mut actions = self.core.stored_chunk_lost(chunk);
                    actions.extend(self.core.backup_source_failed(op, e.to_string()));
                    self.run(actions);
                    return None;
                }
            },
        };
        let putchunk = MessageKind::Putchunk {
            chunk,
            degree,
            body,
        };
        Some(self.message(version, putchunk).encode())
    }

    /// Group commit, on the commit thread: makes the staged chunks durable and records them,
    /// saves the metadata, then runs the actions that waited for it (STOREDs, REMOVEDs).
    pub(super) fn commit(&self) {
        let staged = std::mem::take(&mut self.commits.lock().staged);
        if !staged.is_empty() {
            let mut info: HashMap<ChunkKey, (u8, u32, ChunkHash)> = staged
                .iter()
                .map(|w| (w.staged.key, (w.desired, w.size, w.hash)))
                .collect();
            let results = self
                .files
                .commit(staged.into_iter().map(|w| w.staged).collect());
            for (chunk, result) in results {
                let (desired, size, hash) = info.remove(&chunk).expect("staged chunk");
                let written = match result {
                    Ok(()) => Some(hash),
                    Err(e) => {
                        self.stats
                            .disk_error(format_args!("storing chunk {chunk}: {e}"));
                        None
                    }
                };
                self.run(self.core.chunk_written(chunk, desired, size, written));
            }
        }
        let after = std::mem::take(&mut self.commits.lock().after);
        self.save_metadata();
        for actions in after {
            self.run(actions);
        }
    }

    pub(super) fn save_metadata(&self) {
        if let Err(e) = self.save_to_disk() {
            self.stats.disk_error(format_args!("saving metadata: {e}"));
        }
    }

    pub(super) fn save_to_disk(&self) -> Result<(), StorageError> {
        self.meta_file
            .save(false, |snapshot| self.core.drain_changes(snapshot))
    }
}

/// Reads `len` bytes at `offset` of the file at `path`.
fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut body = vec![0u8; len];
    file.read_exact_at(&mut body, offset)?;
    Ok(body)
}

/// Makes a restored file durable and renames it into place.
fn commit_restore(tmp: &Path, dest: &Path) -> Result<(), StorageError> {
    std::fs::File::open(tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(tmp, dest))
        .map_err(|source| StorageError::Io {
            what: "move the restored file to",
            path: dest.to_path_buf(),
            source,
        })?;
    crate::storage::sync_dir(dest.parent().unwrap_or(Path::new(".")))
}
