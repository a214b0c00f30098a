//! The initiator side of the backup subprotocol: a window of chunks in flight per file, each
//! PUTCHUNK resent with a doubling wait until enough distinct peers answered STORED. Also runs
//! the one-chunk re-backup a holder starts after a REMOVED.

use std::path::PathBuf;
use std::time::Duration;

use super::metadata::{BackedUpFile, ChunkRecord, chunk_count};
use super::{Action, ChunkSource, CommandError, Core, Counters, OpEvent, OpId, TimerEvent};
use crate::protocol::ids::MAX_CHUNK_NO;
use crate::protocol::{ChunkHash, ChunkKey, ChunkNo, FileId, MAX_CHUNK_SIZE, Version};

/// A client's request to back up one file (the runtime has read the file's identity).
#[derive(Clone, Debug)]
pub struct BackupRequest {
    /// Canonical path of the file.
    pub path: PathBuf,
    /// Its file id.
    pub file: FileId,
    /// Its size in bytes.
    pub size: u64,
    /// Desired replication degree.
    pub degree: u8,
    /// Run the enhanced subprotocol (PUTCHUNK 2.0: enhanced peers store only while the degree
    /// is short).
    pub enhanced: bool,
}

/// What a backup sends.
#[derive(Debug)]
enum Source {
    /// Every chunk of a file of the home.
    File { path: PathBuf, size: u64 },
    /// One chunk this peer stores (re-backup).
    Stored { no: ChunkNo },
}

/// One backup in progress.
#[derive(Debug)]
pub struct BackupOp {
    /// The file.
    pub file: FileId,
    source: Source,
    degree: u8,
    /// Version of its PUTCHUNKs.
    version: Version,
    /// Chunks to send in all.
    chunks: u64,
    /// Index of the next chunk to launch.
    next: u64,
    /// Chunks finished (reached the degree or ran out of sends).
    finished: u64,
    /// Chunks that ran out of sends below the degree.
    short: Vec<ChunkNo>,
}

impl BackupOp {
    fn chunk(&self, index: u64) -> ChunkKey {
        let no = match self.source {
            Source::File { .. } => index as ChunkNo,
            Source::Stored { no } => no,
        };
        ChunkKey {
            file: self.file,
            no,
        }
    }

    fn path(&self) -> Option<&PathBuf> {
        match &self.source {
            Source::File { path, .. } => Some(path),
            Source::Stored { .. } => None,
        }
    }
}

/// A chunk awaiting STORED on the initiator side.
#[derive(Debug)]
pub struct PendingPut {
    op: OpId,
    /// PUTCHUNK sends so far.
    sends: u8,
}

/// `v` in ascending order.
pub(super) fn sorted(mut v: Vec<ChunkNo>) -> Vec<ChunkNo> {
    v.sort_unstable();
    v
}

/// Wait after PUTCHUNK send number `send` (1-based): 1, 2, 4, 8, 16 s with the defaults.
pub fn wait_after_send(first: Duration, send: u8) -> Duration {
    first * (1u32 << (send - 1))
}

impl Core {
    /// Starts backing up a file. Returns the first sends and timers.
    pub fn start_backup(&self, op: OpId, req: BackupRequest) -> Result<Vec<Action>, CommandError> {
        if !(1..=9).contains(&req.degree) {
            return Err(CommandError::BadDegree(req.degree));
        }
        let chunks = chunk_count(req.size);
        if chunks - 1 > u64::from(MAX_CHUNK_NO) {
            return Err(CommandError::TooLarge(req.size));
        }
        let mut actions = Vec::new();
        let mut already_done = Vec::new();
        {
            let mut meta = self.meta.lock();
            if self
                .backups
                .iter()
                .any(|b| b.file == req.file || b.path() == Some(&req.path))
            {
                return Err(CommandError::BackupRunning(req.path));
            }
            // An earlier version of the same path: its chunks are no longer wanted.
            let old: Vec<FileId> = meta
                .backed_up
                .iter()
                .filter(|(id, f)| f.path == req.path && **id != req.file)
                .map(|(id, _)| *id)
                .collect();
            for file in old {
                let version = self.forget_file(&mut meta, file, req.enhanced);
                actions.extend(self.delete_send(file, version, self.cfg.delete_sends - 1, None));
            }
            let entry = meta
                .backed_up
                .entry(req.file)
                .or_insert_with(|| BackedUpFile {
                    path: req.path.clone(),
                    size: req.size,
                    desired: req.degree,
                    chunks: vec![ChunkRecord::default(); chunks as usize],
                });
            entry.desired = req.degree;
            // Resumable: chunks already confirmed by enough peers are not sent again.
            for (no, c) in entry.chunks.iter().enumerate() {
                if c.holders.len() >= usize::from(req.degree) && c.hash.is_some() {
                    already_done.push(no as ChunkNo);
                }
            }
            meta.touch();
        }
        self.backups.insert(
            op,
            BackupOp {
                file: req.file,
                source: Source::File {
                    path: req.path,
                    size: req.size,
                },
                degree: req.degree,
                version: if req.enhanced {
                    Version::V2_0
                } else {
                    Version::V1_0
                },
                chunks,
                next: 0,
                finished: 0,
                short: Vec::new(),
            },
        );
        actions.extend(self.fill_window(op, &already_done));
        Ok(actions)
    }

    /// Starts re-backing up one chunk stored here (after a REMOVED left it below `degree`).
    pub(super) fn start_rebackup(
        &self,
        chunk: ChunkKey,
        degree: u8,
        version: Version,
    ) -> Vec<Action> {
        if self.pending.contains_key(&chunk) {
            return Vec::new(); // already being backed up from here
        }
        let op = self.internal_op();
        self.backups.insert(
            op,
            BackupOp {
                file: chunk.file,
                source: Source::Stored { no: chunk.no },
                degree,
                version,
                chunks: 1,
                next: 0,
                finished: 0,
                short: Vec::new(),
            },
        );
        self.fill_window(op, &[])
    }

    /// Launches chunks until the window is full; chunks in `skip` count as finished at once.
    fn fill_window(&self, op: OpId, skip: &[ChunkNo]) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(mut b) = self.backups.get_mut(&op) else {
            return actions;
        };
        while b.next < b.chunks && (b.next - b.finished) < self.cfg.window as u64 {
            let chunk = b.chunk(b.next);
            b.next += 1;
            if skip.binary_search(&chunk.no).is_ok() {
                b.finished += 1;
                continue;
            }
            self.pending.insert(chunk, PendingPut { op, sends: 1 });
            actions.push(putchunk_action(op, &b, chunk));
            actions.push(Action::Schedule {
                delay: wait_after_send(self.cfg.first_wait, 1),
                event: TimerEvent::PutchunkWait { chunk, send: 1 },
            });
        }
        actions.push(Action::Report {
            op,
            event: OpEvent::Progress {
                done: b.finished,
                total: b.chunks,
            },
        });
        if b.finished == b.chunks {
            drop(b);
            if let Some((_, b)) = self.backups.remove(&op) {
                actions.push(Action::Report {
                    op,
                    event: OpEvent::BackupDone {
                        file: b.file,
                        chunks: b.chunks,
                        short: sorted(b.short),
                    },
                });
            }
        }
        actions
    }

    /// A STORED raised the perceived degree of a chunk to `perceived`.
    pub(super) fn chunk_progress(&self, chunk: ChunkKey, perceived: usize) -> Vec<Action> {
        let Some(op) = self.pending.get(&chunk).map(|p| p.op) else {
            return Vec::new();
        };
        let enough = self
            .backups
            .get(&op)
            .is_some_and(|b| perceived >= usize::from(b.degree));
        if enough && self.pending.remove(&chunk).is_some() {
            self.finish_chunk(op, chunk.no, true)
        } else {
            Vec::new()
        }
    }

    fn finish_chunk(&self, op: OpId, no: ChunkNo, reached: bool) -> Vec<Action> {
        if let Some(mut b) = self.backups.get_mut(&op) {
            b.finished += 1;
            if !reached {
                b.short.push(no);
            }
        }
        self.fill_window(op, &[])
    }

    /// The wait after PUTCHUNK send number `send` is over: done, resend, or give up.
    pub(super) fn putchunk_wait_over(&self, chunk: ChunkKey, send: u8) -> Vec<Action> {
        let op = match self.pending.get(&chunk) {
            Some(p) if p.sends == send => p.op,
            _ => return Vec::new(), // finished, or a stale timer
        };
        let perceived = self.meta.lock().perceived(&chunk).unwrap_or(0);
        let Some(b) = self.backups.get(&op) else {
            self.pending.remove(&chunk);
            return Vec::new();
        };
        let reached = perceived >= usize::from(b.degree);
        if reached || send >= self.cfg.max_putchunk_sends {
            drop(b);
            if self.pending.remove(&chunk).is_none() {
                return Vec::new(); // a STORED finished it meanwhile
            }
            return self.finish_chunk(op, chunk.no, reached);
        }
        let resend = putchunk_action(op, &b, chunk);
        drop(b);
        if let Some(mut p) = self.pending.get_mut(&chunk) {
            p.sends = send + 1;
        }
        Counters::bump(&self.counters.putchunk_resends);
        vec![
            resend,
            Action::Schedule {
                delay: wait_after_send(self.cfg.first_wait, send + 1),
                event: TimerEvent::PutchunkWait {
                    chunk,
                    send: send + 1,
                },
            },
        ]
    }

    /// The runtime read a chunk of a home file for PUTCHUNK: the first read records its hash;
    /// a later read with another hash means the file changed under the backup, which then
    /// fails (`Err` holds the actions that end it; the body must not be sent).
    pub fn putchunk_read(
        &self,
        op: OpId,
        chunk: ChunkKey,
        hash: ChunkHash,
    ) -> Result<(), Vec<Action>> {
        let changed = {
            let mut meta = self.meta.lock();
            match meta.own_chunk_mut(&chunk) {
                Some(record) => match record.hash {
                    Some(h) => h != hash,
                    None => {
                        record.hash = Some(hash);
                        meta.touch();
                        false
                    }
                },
                None => false,
            }
        };
        if changed {
            Err(self
                .backup_source_failed(op, format!("chunk {} changed during the backup", chunk.no)))
        } else {
            Ok(())
        }
    }

    /// The source of a backup could not be read (or changed): the backup fails.
    pub fn backup_source_failed(&self, op: OpId, reason: String) -> Vec<Action> {
        let Some((_, b)) = self.backups.remove(&op) else {
            return Vec::new();
        };
        self.pending.retain(|_, p| p.op != op);
        let what = b
            .path()
            .map_or_else(|| b.chunk(0).to_string(), |p| p.display().to_string());
        vec![Action::Report {
            op,
            event: OpEvent::Failed(format!("backup of {what} failed: {reason}")),
        }]
    }
}

fn putchunk_action(op: OpId, b: &BackupOp, chunk: ChunkKey) -> Action {
    let source = match &b.source {
        Source::File { path, size } => {
            let offset = u64::from(chunk.no) * MAX_CHUNK_SIZE as u64;
            ChunkSource::File {
                path: path.clone(),
                offset,
                len: (size - offset).min(MAX_CHUNK_SIZE as u64) as usize,
            }
        }
        Source::Stored { .. } => ChunkSource::Stored,
    };
    Action::SendPutchunk {
        version: b.version,
        chunk,
        degree: b.degree,
        source,
        op,
    }
}
