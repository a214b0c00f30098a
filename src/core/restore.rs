//! The initiator side of the restore subprotocol: GETCHUNK for every chunk within a window,
//! each resent with a doubling wait; bodies verified against the hashes recorded at backup,
//! written at their offsets into a temporary file that is renamed into place only when
//! every chunk is there.
//!
//! The window is a congestion window per restore ([`FlowControl`]), clocked by the CHUNKs
//! that come back: it grows while chunks arrive on their first GETCHUNK and halves when a
//! GETCHUNK wait runs out (replies lost or late because a holder or this peer falls behind)
//! or when a CHUNK finds this peer's receive queue filling up ([`Core::restore_backlogged`]).

use bytes::Bytes;
use std::path::PathBuf;

use super::backup::wait_after_send;
use super::flow::FlowControl;
use super::metadata::chunk_count;
use super::{
    Action, Channel, CommandError, Core, Counters, OpEvent, OpId, TimerEvent, enhanced, progress,
};
use crate::protocol::{
    CatalogTag, ChunkHash, ChunkKey, ChunkNo, FileId, MessageKind, PeerId, Version,
};

/// A client's request to restore a file this peer backed up.
#[derive(Clone, Debug)]
pub struct RestoreRequest {
    /// The path the file was backed up from.
    pub path: PathBuf,
    /// Temporary file to assemble it in.
    pub tmp: PathBuf,
    /// Final name of the restored file.
    pub dest: PathBuf,
    /// Run the enhanced subprotocol: the first GETCHUNK of each chunk is 2.0 and asks enhanced
    /// holders for the body over TCP; later ones are plain 1.0 (any holder answers on MDR).
    pub enhanced: bool,
    /// The version to restore (see [`Metadata::file_for_path`]); `None`: the newest whole one.
    ///
    /// [`Metadata::file_for_path`]: super::Metadata::file_for_path
    pub version: Option<u32>,
    /// Replace a file already at `dest` (else the restore fails rather than overwrite it).
    pub overwrite: bool,
    /// Only read every chunk back and check it (VERIFY --read-data): nothing is written,
    /// `tmp` and `dest` are unused.
    pub read_only: bool,
}

/// How a restored file is put in place: the mode and mtime it had when backed up (0: unknown,
/// left as created), and whether it may replace a file already there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Unix permission bits, or 0.
    pub mode: u32,
    /// Modification time in nanoseconds since the epoch, or 0.
    pub mtime_ns: i64,
    /// Replace an existing file.
    pub overwrite: bool,
}

/// One restore in progress.
#[derive(Debug)]
pub struct RestoreOp {
    /// The file.
    pub file: FileId,
    size: u64,
    chunks: u64,
    /// Encrypted with this home's data key (each chunk `payload` bytes of the file).
    sealed: bool,
    payload: usize,
    /// Expected hash of each chunk (absent for metadata written before hashes were kept).
    hashes: Vec<Option<ChunkHash>>,
    tmp: PathBuf,
    dest: PathBuf,
    placement: Placement,
    read_only: bool,
    /// RECOVER's catalog: loaded when it is restored.
    catalog: Option<(CatalogTag, Vec<PeerId>)>,
    enhanced: bool,
    /// Next chunk to ask for.
    next: u64,
    /// Chunks answered with a valid body or given up.
    resolved: u64,
    /// Chunks written to the temporary file.
    written: u64,
    /// Chunks given up on.
    missing: Vec<ChunkNo>,
    /// GETCHUNKs in flight.
    pub(super) flow: FlowControl,
}

impl RestoreOp {
    /// Bytes of the file chunk `no` carries.
    fn len_of(&self, no: ChunkNo) -> usize {
        let offset = u64::from(no) * self.payload as u64;
        (self.size - offset).min(self.payload as u64) as usize
    }

    /// Bytes of chunk `no`'s body on the wire.
    fn wire_len_of(&self, no: ChunkNo) -> usize {
        self.len_of(no)
            + if self.sealed {
                crate::secure::chunks::OVERHEAD
            } else {
                0
            }
    }
}

/// A chunk awaiting CHUNK on the initiator side.
#[derive(Debug)]
pub struct PendingGet {
    op: OpId,
    /// GETCHUNK sends so far.
    sends: u8,
    /// Bodies that failed verification.
    bad: u8,
    /// Its launch number in the restore's window.
    launch: u64,
    /// Enhanced: GETCHUNKs sent after the last of the fixed budget, while a live holder was
    /// known (see [`PERSIST_WAIT`]).
    persisted: u32,
}

/// Enhanced: after its fixed number of GETCHUNKs, a chunk is asked for again every this long
/// while the membership view knows a live holder of it, for at most [`persist_budget`].
pub const PERSIST_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Enhanced: how long past its fixed number of GETCHUNKs a chunk of a restore of `chunks`
/// chunks is asked for at most: 30 s, plus 0.2 s per chunk of the file, at most 10 minutes.
pub fn persist_budget(chunks: u64) -> std::time::Duration {
    let grows = std::time::Duration::from_millis(200).saturating_mul(chunks.min(1 << 20) as u32);
    (std::time::Duration::from_secs(30) + grows).min(std::time::Duration::from_secs(600))
}

/// GETCHUNKs in flight when a restore starts, at most (its window grows from there). As large
/// as the default bound: what a peer's socket buffer and worker backlog hold if it stalls, so
/// the first round trip needs no slow start (measured: 4 % faster 256 MB restores than from
/// 256).
pub(super) const INITIAL_RESTORE_WINDOW: usize = super::DEFAULT_WINDOW;
/// A restore's window never shrinks below this many chunks.
const MIN_RESTORE_WINDOW: usize = 8;

impl Core {
    /// Starts restoring the file backed up from `req.path`.
    pub fn start_restore(
        &self,
        op: OpId,
        req: RestoreRequest,
    ) -> Result<Vec<Action>, CommandError> {
        // Checking for a running restore and registering this one happen under the metadata
        // lock, so that two requests for the same file cannot both start.
        let file = self
            .meta
            .lock()
            .file_for_path(&req.path, req.version)
            .ok_or_else(|| match req.version {
                Some(k) => CommandError::NoSuchVersion(req.path.clone(), k),
                None => CommandError::NotBackedUp(req.path.clone()),
            })?;
        self.start_restore_of(op, file, req, None)
    }

    /// Starts restoring `file` (RECOVER's catalog: `catalog` is what its holders said it is,
    /// and the restored document is loaded instead of reported).
    pub(super) fn start_restore_of(
        &self,
        op: OpId,
        file: FileId,
        req: RestoreRequest,
        catalog: Option<(CatalogTag, Vec<PeerId>)>,
    ) -> Result<Vec<Action>, CommandError> {
        let meta = self.meta.lock();
        if !meta.backed_up().contains_key(&file) {
            return Err(CommandError::NotBackedUp(req.path));
        }
        if self.restores.iter().any(|r| r.file == file) {
            return Err(CommandError::RestoreRunning(req.path));
        }
        let f = &meta.backed_up()[&file];
        let size = f.size;
        let (sealed, payload) = (f.attrs.sealed, f.attrs.payload());
        if sealed && self.cfg.data_key.is_none() {
            return Err(CommandError::NoDataKey(req.path));
        }
        let hashes = f.chunks.iter().map(|c| c.hash).collect::<Vec<_>>();
        let placement = Placement {
            mode: f.attrs.mode,
            mtime_ns: f.attrs.mtime_ns,
            overwrite: req.overwrite,
        };
        self.restores.insert(
            op,
            RestoreOp {
                file,
                size,
                chunks: chunk_count(size, payload),
                sealed,
                payload,
                hashes,
                tmp: req.tmp.clone(),
                dest: req.dest,
                placement,
                read_only: req.read_only,
                catalog,
                enhanced: req.enhanced,
                next: 0,
                resolved: 0,
                written: 0,
                missing: Vec::new(),
                flow: FlowControl::new(
                    INITIAL_RESTORE_WINDOW,
                    MIN_RESTORE_WINDOW,
                    self.cfg.restore_window,
                ),
            },
        );
        drop(meta);
        let mut actions = Vec::new();
        if !req.read_only {
            actions.push(Action::CreateRestoreFile {
                op,
                path: req.tmp,
                size,
            });
        }
        actions.extend(self.fill_restore_window(op));
        Ok(actions)
    }

    /// A GETCHUNK of `chunk`: for an enhanced restore, asking for the body over TCP.
    fn getchunk(&self, chunk: ChunkKey, enhanced: bool) -> Action {
        match self.cfg.restore_tcp.filter(|_| enhanced) {
            Some(addr) => self.send_v(
                Channel::Mc,
                Version::V2_0,
                MessageKind::Getchunk { chunk },
                vec![enhanced::tcp_reply_line(addr)],
            ),
            None => self.send(Channel::Mc, MessageKind::Getchunk { chunk }),
        }
    }

    /// A GETCHUNK of `chunk` asked again for restore `op`: over TCP still if the restore is
    /// enhanced, every holder known of the chunk speaks 2.0 (a holder that held a body back
    /// for a busy connection answers it then; one whose TCP failed answers on MDR anyway) and
    /// `plain` is false; as 1.0 otherwise, which 1.0 holders answer too. (`plain` on the last
    /// fixed send and every other persisting one: a holder may speak 1.0 unknown to us, its
    /// STORED lost, or another implementation under a known id.)
    fn getchunk_again(&self, op: OpId, chunk: ChunkKey, plain: bool) -> Action {
        let enhanced = !plain && self.restores.get(&op).is_some_and(|r| r.enhanced) && {
            let meta = self.meta.lock();
            meta.own_chunk(&chunk).is_some_and(|c| {
                !c.holders.is_empty() && c.holders.iter().all(|p| meta.enhanced_peers().contains(p))
            })
        };
        self.getchunk(chunk, enhanced)
    }

    /// Whether a restore is in progress here (CHUNK bodies on MDR may be for it).
    pub fn restoring(&self) -> bool {
        !self.restores.is_empty()
    }

    /// Whether a restore here waits for `chunk`.
    pub fn awaits_chunk(&self, chunk: ChunkKey) -> bool {
        self.getting.contains_key(&chunk)
    }

    fn fill_restore_window(&self, op: OpId) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(mut r) = self.restores.get_mut(&op) else {
            return actions;
        };
        while r.next < r.chunks && r.flow.can_launch() {
            let chunk = ChunkKey {
                file: r.file,
                no: r.next as ChunkNo,
            };
            r.next += 1;
            let launch = r.flow.launch();
            self.getting.insert(
                chunk,
                PendingGet {
                    op,
                    sends: 1,
                    bad: 0,
                    launch,
                    persisted: 0,
                },
            );
            actions.push(self.getchunk(chunk, r.enhanced));
            actions.push(Action::Schedule {
                delay: wait_after_send(self.cfg.getchunk_wait, 1),
                event: TimerEvent::GetchunkWait { chunk, send: 1 },
            });
        }
        if r.resolved == r.chunks && !r.missing.is_empty() {
            drop(r);
            if let Some((_, r)) = self.restores.remove(&op) {
                if !r.read_only {
                    actions.push(Action::AbortRestore { tmp: r.tmp });
                }
                let missing = super::backup::sorted(r.missing);
                if r.catalog.is_some() {
                    // RECOVER tries the next generation.
                    let why = format!("no peer delivered chunk(s) {missing:?}");
                    actions.extend(self.catalog_not_restored(op, r.file, why));
                } else {
                    actions.push(Action::Report {
                        op,
                        event: OpEvent::RestoreIncomplete {
                            file: r.file,
                            missing,
                        },
                    });
                }
            }
        }
        actions
    }

    /// A CHUNK body arrived for `chunk`: if a restore waits for it and it verifies, write it.
    pub(super) fn restore_body(&self, chunk: ChunkKey, body: Bytes) -> Vec<Action> {
        let Some(op) = self.getting.get(&chunk).map(|p| p.op) else {
            return Vec::new();
        };
        let Some(r) = self.restores.get(&op) else {
            return Vec::new();
        };
        let valid = body.len() == r.wire_len_of(chunk.no)
            && r.hashes
                .get(chunk.no as usize)
                .copied()
                .flatten()
                .is_none_or(|h| h == ChunkHash::of(&body));
        if !valid {
            drop(r);
            return self.bad_body(chunk);
        }
        let (tmp, offset) = (r.tmp.clone(), u64::from(chunk.no) * r.payload as u64);
        let (read_only, sealed) = (r.read_only, r.sealed);
        drop(r);
        // A sealed chunk is decrypted (and so authenticated) before it is written.
        let body = match (&self.cfg.data_key, sealed) {
            (Some(key), true) => match crate::secure::chunks::decrypt(key, &chunk, &body) {
                Some(plain) => Bytes::from(plain),
                None => return self.bad_body(chunk),
            },
            _ => body,
        };
        let Some((_, p)) = self.getting.remove(&chunk) else {
            return Vec::new(); // a duplicate CHUNK: the first one won
        };
        let mut actions = Vec::new();
        if !read_only {
            actions.push(Action::WriteRestored {
                op,
                path: tmp.clone(),
                offset,
                body,
            });
        }
        if let Some(mut r) = self.restores.get_mut(&op) {
            r.resolved += 1;
            r.flow.finish(p.sends == 1);
        }
        actions.extend(self.fill_restore_window(op));
        if read_only {
            // Nothing to write: the chunk counts as written now.
            actions.extend(self.restored_chunk_written(op, &tmp, true));
        }
        actions
    }

    /// A CHUNK for `chunk` found this peer's receive queue filling up: if a restore waits for
    /// it, that restore's window shrinks (once per window), before the queue overflows.
    pub fn restore_backlogged(&self, chunk: ChunkKey) {
        let Some((op, launch)) = self.getting.get(&chunk).map(|p| (p.op, p.launch)) else {
            return;
        };
        if let Some(mut r) = self.restores.get_mut(&op) {
            r.flow.congestion(launch);
            Counters::bump(&self.counters.restore_slowdowns);
        }
    }

    /// A body failed verification: ask again at once (another holder may answer), up to a bound.
    fn bad_body(&self, chunk: ChunkKey) -> Vec<Action> {
        let Some(mut p) = self.getting.get_mut(&chunk) else {
            return Vec::new();
        };
        p.bad += 1;
        Counters::bump(&self.counters.bad_bodies);
        if p.bad > self.cfg.max_bad_bodies {
            return Vec::new(); // leave it to the timer, which gives up after its sends
        }
        vec![self.send(Channel::Mc, MessageKind::Getchunk { chunk })]
    }

    /// The restore and launch number of `chunk` if it still waits for a CHUNK after its
    /// GETCHUNK send number `send` (else that send's wait has nothing left to do).
    pub(super) fn getchunk_waiting(&self, chunk: ChunkKey, send: u8) -> Option<(OpId, u64)> {
        self.getting
            .get(&chunk)
            .filter(|p| p.sends == send)
            .map(|p| (p.op, p.launch))
    }

    pub(super) fn getchunk_wait_over(&self, chunk: ChunkKey, send: u8) -> Vec<Action> {
        let Some((op, launch)) = self.getchunk_waiting(chunk, send) else {
            return Vec::new();
        };
        // (A chunk asked for again past its fixed budget says nothing more of congestion.)
        let persisting = self.getting.get(&chunk).is_some_and(|p| p.persisted > 0);
        if !persisting && let Some(mut r) = self.restores.get_mut(&op) {
            r.flow.congestion(launch);
        }
        if send >= self.cfg.max_getchunk_sends {
            if let Some(actions) = self.persist(op, chunk, send) {
                return actions;
            }
            if self.getting.remove(&chunk).is_none() {
                return Vec::new();
            }
            if let Some(mut r) = self.restores.get_mut(&op) {
                r.resolved += 1;
                r.missing.push(chunk.no);
                r.flow.finish(false);
            }
            return self.fill_restore_window(op);
        }
        if let Some(mut p) = self.getting.get_mut(&chunk) {
            p.sends = send + 1;
        }
        Counters::bump(&self.counters.getchunk_resends);
        tracing::debug!("no CHUNK for {chunk} after GETCHUNK {send}: asking again");
        vec![
            self.getchunk_again(op, chunk, send + 1 >= self.cfg.max_getchunk_sends),
            Action::Schedule {
                delay: wait_after_send(self.cfg.getchunk_wait, send + 1),
                event: TimerEvent::GetchunkWait {
                    chunk,
                    send: send + 1,
                },
            },
        ]
    }

    /// Enhanced: a chunk that had all its GETCHUNKs is asked for again (after
    /// [`PERSIST_WAIT`]) while a holder of it is alive and the restore's budget lasts.
    fn persist(&self, op: OpId, chunk: ChunkKey, send: u8) -> Option<Vec<Action>> {
        if !self.cfg.enhanced() {
            return None;
        }
        let (chunks, written) = self.restores.get(&op).map(|r| (r.chunks, r.written))?;
        let allowed = persist_budget(chunks).as_millis() / PERSIST_WAIT.as_millis();
        let live_holder = {
            let meta = self.meta.lock();
            let view = self.members.lock();
            meta.own_chunk(&chunk)
                .is_some_and(|c| c.holders.iter().any(|&p| view.is_alive(p)))
        };
        let mut p = self.getting.get_mut(&chunk)?;
        if !live_holder || u128::from(p.persisted) >= allowed {
            return None;
        }
        p.persisted += 1;
        let persisted = p.persisted;
        drop(p);
        Counters::bump(&self.counters.getchunk_persisted);
        tracing::debug!("no CHUNK for {chunk} yet, a holder is alive: asking again");
        Some(vec![
            self.getchunk_again(op, chunk, persisted % 2 == 0),
            Action::Schedule {
                delay: PERSIST_WAIT,
                event: TimerEvent::GetchunkWait { chunk, send },
            },
            Action::Report {
                op,
                event: OpEvent::Progress {
                    done: written,
                    total: chunks,
                },
            },
        ])
    }

    /// The runtime wrote a restored chunk into `tmp` (`ok`) or failed to. A write into
    /// another file than the restore's own (an earlier attempt of a RECOVER, under the same
    /// operation) is ignored.
    pub fn restored_chunk_written(&self, op: OpId, tmp: &std::path::Path, ok: bool) -> Vec<Action> {
        if self.restores.get(&op).is_none_or(|r| r.tmp != tmp) {
            return Vec::new();
        }
        if !ok {
            return self.restore_failed(op, "cannot write the restored file".into());
        }
        let Some(mut r) = self.restores.get_mut(&op) else {
            return Vec::new();
        };
        r.written += 1;
        let mut actions: Vec<Action> = progress(op, r.written, r.chunks).into_iter().collect();
        if r.written == r.chunks && r.read_only {
            drop(r);
            if let Some((_, r)) = self.restores.remove(&op) {
                actions.push(Action::Report {
                    op,
                    event: OpEvent::RestoreDone {
                        file: r.file,
                        dest: PathBuf::new(),
                        chunks: r.chunks,
                    },
                });
            }
        } else if r.written == r.chunks {
            actions.push(Action::CommitRestore {
                op,
                tmp: r.tmp.clone(),
                dest: r.dest.clone(),
                placement: r.placement,
            });
        }
        actions
    }

    /// The runtime made the restored file durable and renamed it into place (or failed to).
    pub fn restore_committed(&self, op: OpId, result: Result<(), String>) -> Vec<Action> {
        let Some((_, r)) = self.restores.remove(&op) else {
            return Vec::new();
        };
        match (r.catalog.clone(), &result) {
            (Some((tag, holders)), Ok(())) => {
                return vec![Action::LoadCatalog {
                    op,
                    path: r.dest,
                    tag,
                    holders,
                }];
            }
            (Some(_), Err(e)) => return self.catalog_not_restored(op, r.file, e.clone()),
            (None, _) => {}
        }
        let event = match result {
            Ok(()) => OpEvent::RestoreDone {
                file: r.file,
                dest: r.dest,
                chunks: r.chunks,
            },
            Err(e) => OpEvent::Failed(format!(
                "cannot put the restored file at {}: {e}",
                r.dest.display()
            )),
        };
        vec![Action::Report { op, event }]
    }

    /// A restore cannot go on (its temporary file cannot be created or written).
    pub fn restore_failed(&self, op: OpId, reason: String) -> Vec<Action> {
        let Some((_, r)) = self.restores.remove(&op) else {
            return Vec::new();
        };
        self.getting.retain(|_, p| p.op != op);
        let mut actions = Vec::new();
        if !r.read_only {
            actions.push(Action::AbortRestore { tmp: r.tmp });
        }
        match r.catalog {
            Some(_) => actions.extend(self.catalog_not_restored(op, r.file, reason)),
            None => actions.push(Action::Report {
                op,
                event: OpEvent::Failed(format!("restore failed: {reason}")),
            }),
        }
        actions
    }
}
