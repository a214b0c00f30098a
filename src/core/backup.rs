//! The initiator side of the backup subprotocol: a window of chunks in flight per file, each
//! PUTCHUNK resent with a doubling wait until enough distinct peers answered STORED.

use std::path::PathBuf;
use std::time::Duration;

use super::metadata::{BackedUpFile, ChunkRecord, chunk_count};
use super::{Action, ChunkSource, CommandError, Core, OpEvent, OpId, TimerEvent};
use crate::protocol::ids::MAX_CHUNK_NO;
use crate::protocol::{ChunkKey, ChunkNo, FileId, MAX_CHUNK_SIZE};

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
}

/// One backup in progress.
#[derive(Debug)]
pub struct BackupOp {
    /// The file.
    pub file: FileId,
    path: PathBuf,
    size: u64,
    degree: u8,
    chunks: u64,
    /// Next chunk number to launch.
    next: u64,
    /// Chunks finished (reached the degree or ran out of sends).
    finished: u64,
    /// Chunks that ran out of sends below the degree.
    short: Vec<ChunkNo>,
}

/// A chunk awaiting STORED on the initiator side.
#[derive(Debug)]
pub struct PendingPut {
    op: OpId,
    /// PUTCHUNK sends so far.
    sends: u8,
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
                .any(|b| b.file == req.file || b.path == req.path)
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
                meta.backed_up.remove(&file);
                actions.extend(self.delete_send(file, self.cfg.delete_sends - 1, None));
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
                if c.holders.len() >= usize::from(req.degree) {
                    already_done.push(no as ChunkNo);
                }
            }
            meta.touch();
        }
        self.backups.insert(
            op,
            BackupOp {
                file: req.file,
                path: req.path,
                size: req.size,
                degree: req.degree,
                chunks,
                next: 0,
                finished: 0,
                short: Vec::new(),
            },
        );
        actions.extend(self.fill_window(op, &already_done));
        Ok(actions)
    }

    /// Launches chunks until the window is full; chunks in `skip` count as finished at once.
    fn fill_window(&self, op: OpId, skip: &[ChunkNo]) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(mut b) = self.backups.get_mut(&op) else {
            return actions;
        };
        while b.next < b.chunks && (b.next - b.finished) < self.cfg.window as u64 {
            let no = b.next as ChunkNo;
            b.next += 1;
            if skip.binary_search(&no).is_ok() {
                b.finished += 1;
                continue;
            }
            let chunk = ChunkKey { file: b.file, no };
            self.pending.insert(chunk, PendingPut { op, sends: 1 });
            actions.push(self.putchunk_action(op, &b, chunk));
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
                        short: b.short,
                    },
                });
            }
        }
        actions
    }

    fn putchunk_action(&self, op: OpId, b: &BackupOp, chunk: ChunkKey) -> Action {
        let offset = u64::from(chunk.no) * MAX_CHUNK_SIZE as u64;
        Action::SendPutchunk {
            chunk,
            degree: b.degree,
            source: ChunkSource {
                path: b.path.clone(),
                offset,
                len: (b.size - offset).min(MAX_CHUNK_SIZE as u64) as usize,
            },
            op,
        }
    }

    /// A STORED raised the perceived degree of one of our chunks to `perceived`.
    pub(super) fn chunk_progress(&self, chunk: ChunkKey, perceived: usize) -> Vec<Action> {
        let Some(entry) = self.pending.get(&chunk) else {
            return Vec::new();
        };
        let op = entry.op;
        drop(entry);
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
        let perceived = self
            .meta
            .lock()
            .own_chunk_mut(&chunk)
            .map_or(0, |c| c.holders.len());
        let Some(b) = self.backups.get(&op) else {
            self.pending.remove(&chunk);
            return Vec::new();
        };
        if perceived >= usize::from(b.degree) || send >= self.cfg.max_putchunk_sends {
            let reached = perceived >= usize::from(b.degree);
            drop(b);
            if self.pending.remove(&chunk).is_none() {
                return Vec::new(); // a STORED finished it meanwhile
            }
            return self.finish_chunk(op, chunk.no, reached);
        }
        let send_action = self.putchunk_action(op, &b, chunk);
        drop(b);
        if let Some(mut p) = self.pending.get_mut(&chunk) {
            p.sends = send + 1;
        }
        vec![
            send_action,
            Action::Schedule {
                delay: wait_after_send(self.cfg.first_wait, send + 1),
                event: TimerEvent::PutchunkWait {
                    chunk,
                    send: send + 1,
                },
            },
        ]
    }

    /// The source of a backup could not be read: the backup fails.
    pub fn backup_source_failed(&self, op: OpId, reason: String) -> Vec<Action> {
        let Some((_, b)) = self.backups.remove(&op) else {
            return Vec::new();
        };
        self.pending
            .retain(|k, p| !(p.op == op && k.file == b.file));
        vec![Action::Report {
            op,
            event: OpEvent::Failed(format!("cannot read {}: {reason}", b.path.display())),
        }]
    }
}

/// Wait after PUTCHUNK send number `send` (1-based): 1, 2, 4, 8, 16 s with the defaults.
pub fn wait_after_send(first: Duration, send: u8) -> Duration {
    first * (1u32 << (send - 1))
}
