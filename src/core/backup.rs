//! The initiator side of the backup subprotocol: a window of chunks in flight per file, each
//! PUTCHUNK resent with a doubling wait until enough distinct peers answered STORED. Also runs
//! the one-chunk re-backup a holder starts after a REMOVED.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use super::metadata::{FileAttrs, Ownership, chunk_count, payload};
use super::verify::recorded_proofs;
use super::{
    Action, ChunkSource, CommandError, Config, Core, Counters, OpEvent, OpId, TimerEvent, progress,
};
use crate::protocol::ids::MAX_CHUNK_NO;
use crate::protocol::{CatalogTag, ChunkHash, ChunkKey, ChunkNo, FileId, PeerId, Version};

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
    /// What the catalog keeps besides the chunks (the version number is the core's to set).
    pub attrs: FileAttrs,
    /// Versions of the path kept once this one reached its degree, this one included (at
    /// least 1); older ones are deleted then. Until then every earlier version stays.
    pub keep: u8,
}

/// What a backup sends.
#[derive(Debug)]
enum Source {
    /// Every chunk of a file of the home, which had this size and mtime when it was opened,
    /// `payload` bytes of it a chunk.
    File {
        path: PathBuf,
        size: u64,
        mtime_ns: i64,
        payload: usize,
    },
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
    /// Storers of the latest chunks, counted at their late checks (most recent last).
    recent_storers: VecDeque<usize>,
    /// Whether some peer stored one of its chunks.
    answered: bool,
    /// Chunks that ran out of sends without a single STORED, while none was answered.
    silent: u64,
    /// Every chunk finished; waiting to hear whether the source changed meanwhile.
    checking: bool,
    /// This backup registered its file's entry (rather than resuming one already there).
    fresh: bool,
    /// Versions of the path kept when this backup reaches its degree (0 for a re-backup).
    keep: u8,
    /// A chunk of a catalog generation: its PUTCHUNKs say so.
    catalog: Option<CatalogTag>,
    /// A re-backup: the chunk's home if known (its PUTCHUNKs 2.0 name it, `HOME`, with 0 for
    /// unknown).
    home: Option<crate::protocol::PeerId>,
    /// Chunks finished earlier to send again first (a holder that stored them went down).
    relaunch: Vec<ChunkNo>,
    /// Chunks that reached the degree (or were confirmed before it started): one bit each.
    done: Vec<u64>,
}

/// A backup that no peer answers gives up after this many chunks each ran out of sends
/// without one STORED (instead of trying every chunk for 31 s, a few at a time: hours for a
/// large file).
const SILENT_CHUNKS_GIVE_UP: u64 = 4;

/// Late checks remembered per backup to know how many peers store its chunks.
const RECENT_CHECKS: usize = 32;

impl BackupOp {
    /// A new backup of `chunks` chunks of `file` from `source`.
    fn new(file: FileId, source: Source, degree: u8, version: Version, chunks: u64) -> Self {
        BackupOp {
            file,
            source,
            degree,
            version,
            chunks,
            next: 0,
            finished: 0,
            short: Vec::new(),
            recent_storers: VecDeque::with_capacity(RECENT_CHECKS),
            answered: false,
            silent: 0,
            checking: false,
            fresh: false,
            keep: 0,
            catalog: None,
            home: None,
            relaunch: Vec::new(),
            done: Vec::new(),
        }
    }

    /// Notes that chunk `no` reached the degree.
    fn mark_done(&mut self, no: ChunkNo) {
        let (word, bit) = (no as usize / 64, no % 64);
        if self.done.len() <= word {
            self.done.resize(word + 1, 0);
        }
        self.done[word] |= 1 << bit;
    }

    /// The chunks that reached the degree, ascending.
    fn done_chunks(&self) -> impl Iterator<Item = ChunkNo> + '_ {
        self.done.iter().enumerate().flat_map(|(word, &bits)| {
            (0..64)
                .filter(move |bit| bits & (1 << bit) != 0)
                .map(move |bit| (word * 64 + bit) as ChunkNo)
        })
    }

    /// Chunk `no` is to be sent again: no longer done.
    fn undo(&mut self, no: ChunkNo) {
        self.done[no as usize / 64] &= !(1 << (no % 64));
    }

    /// A chunk has `storers` STOREDs at its late check; returns whether that is fewer than
    /// expected. A 1.0 storer stores every chunk it hears, so fewer STOREDs than the latest
    /// chunks had means one of those storers is behind (though the degree may be reached);
    /// an enhanced backup only expects its degree.
    fn late_check(&mut self, storers: usize) -> bool {
        let degree = usize::from(self.degree);
        let expected = if self.version == Version::V2_0 {
            degree
        } else {
            self.recent_storers
                .iter()
                .copied()
                .max()
                .unwrap_or(0)
                .max(degree)
        };
        if self.recent_storers.len() == RECENT_CHECKS {
            self.recent_storers.pop_front();
        }
        self.recent_storers.push_back(storers);
        storers < expected
    }

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
    /// Its launch number in the congestion window.
    launch: u64,
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
        let req = self.owned_request(req);
        let payload = req.attrs.payload();
        let chunks = chunk_count(req.size, payload);
        if chunks - 1 > u64::from(MAX_CHUNK_NO) {
            return Err(CommandError::TooLarge(req.size));
        }
        let version = if req.enhanced {
            Version::V2_0
        } else {
            Version::V1_0
        };
        let mut actions = Vec::new();
        let mut already_done = Vec::new();
        {
            // Checking for a running backup and registering this one happen under the
            // metadata lock, so that two requests for the same file cannot both start.
            let mut meta = self.meta.lock();
            if self
                .backups
                .iter()
                .any(|b| b.file == req.file || b.path() == Some(&req.path))
            {
                return Err(CommandError::BackupRunning(req.path));
            }
            // Earlier versions of the path stay until this one reaches its degree.
            let number = meta.version_number(&req.path, req.file);
            // The same file again keeps its VERIFY key: its recorded proofs were made with it.
            let known = meta.backed_up().get(&req.file).map(|f| f.attrs.clone());
            let fresh = known.is_none();
            meta.register_file(req.file, req.path.clone(), req.size, req.degree, payload);
            let mut attrs = FileAttrs {
                version: number,
                link: None,
                ..req.attrs
            };
            if let Some(known) = known {
                attrs.verify_key = known.verify_key;
                attrs.verifies = known.verifies;
            }
            meta.set_file_attrs(req.file, attrs);
            let entry = &meta.backed_up()[&req.file];
            // Resumable: chunks already confirmed by enough peers are not sent again.
            // (A confirmed chunk whose hash was not saved before a crash gets it from the file.)
            for (no, c) in entry.chunks.iter().enumerate() {
                // (Among live holders: one that is down does not make a chunk done.)
                if self.live_count(&meta, req.file, &c.holders, false) >= usize::from(req.degree) {
                    already_done.push(no as ChunkNo);
                    if c.hash.is_none() {
                        let chunk = ChunkKey {
                            file: req.file,
                            no: no as ChunkNo,
                        };
                        let source = file_source(&req.path, req.size, chunk.no, payload);
                        actions.push(Action::RecordHash { op, chunk, source });
                    }
                }
            }
            let source = Source::File {
                path: req.path,
                size: req.size,
                mtime_ns: req.attrs.mtime_ns,
                payload,
            };
            let mut backup = BackupOp::new(req.file, source, req.degree, version, chunks);
            backup.keep = req.keep.max(1);
            backup.fresh = fresh;
            backup.catalog = req.attrs.catalog;
            self.backups.insert(op, backup);
        }
        actions.extend(self.fill_window(op, &already_done));
        Ok(actions)
    }

    /// Records a symbolic link met in a tree being backed up: its target (in `attrs.link`),
    /// not what it points to; it has no chunks and sends nothing. The versions of its path
    /// older than the `keep - 1` before it are deleted.
    pub fn record_link(
        &self,
        file: FileId,
        path: PathBuf,
        attrs: FileAttrs,
        keep: u8,
        enhanced: bool,
    ) -> Vec<Action> {
        {
            let mut meta = self.meta.lock();
            let number = meta.version_number(&path, file);
            meta.register_file(file, path.clone(), 0, 0, payload(false));
            meta.set_file_attrs(
                file,
                FileAttrs {
                    version: number,
                    verify_key: None,
                    ..attrs
                },
            );
        }
        let version = if enhanced {
            Version::V2_0
        } else {
            Version::V1_0
        };
        let mut actions = self.prune_versions(&path, file, keep.max(1), version);
        actions.extend(self.catalog_changed());
        actions
    }

    /// Starts re-backing up one chunk stored here (after a REMOVED left it below `degree`).
    pub(super) fn start_rebackup(
        &self,
        chunk: ChunkKey,
        degree: u8,
        version: Version,
    ) -> Vec<Action> {
        // Already being backed up from here: in flight, or waiting for room in the window (a
        // second backup of the chunk would launch it again, and the window would count it
        // twice while one of the two never finished).
        let queued = || {
            self.backups.iter().any(|b| {
                b.file == chunk.file && matches!(b.source, Source::Stored { no } if no == chunk.no)
            })
        };
        if self.pending.contains_key(&chunk) || queued() {
            return Vec::new();
        }
        let op = self.internal_op();
        let source = Source::Stored { no: chunk.no };
        self.backups.insert(op, {
            let mut b = BackupOp::new(chunk.file, source, degree, version, 1);
            let meta = self.meta.lock();
            b.catalog = meta.catalog_tag(&chunk.file);
            b.home = meta.stored_chunk(&chunk).and_then(|c| c.home);
            b
        });
        self.fill_window(op, &[])
    }

    /// Peers went down: the chunks of running backups of files that have fewer live holders
    /// than their degree, finished before, are sent again (first, before the chunks not yet
    /// sent), so that a backup reports success only with its degree among live peers.
    pub(super) fn relaunch_below_degree(&self) -> Vec<Action> {
        let ops: Vec<OpId> = self
            .backups
            .iter()
            .filter(|b| matches!(b.source, Source::File { .. }) && !b.checking)
            .map(|b| *b.key())
            .collect();
        let mut actions = Vec::new();
        for op in ops {
            {
                // (The metadata lock before the backup's entry: the documented order.)
                let meta = self.meta.lock();
                let Some(mut b) = self.backups.get_mut(&op) else {
                    continue;
                };
                // (It may have ended its chunks meanwhile: its source check decides then.)
                if b.checking || b.finished == b.chunks {
                    continue;
                }
                let file = b.file;
                let again: Vec<ChunkNo> = b
                    .done_chunks()
                    .filter(|&no| {
                        let c = ChunkKey { file, no };
                        self.live_perceived(&meta, &c).unwrap_or(0) < usize::from(b.degree)
                    })
                    .collect();
                drop(meta);
                if again.is_empty() {
                    continue;
                }
                for &no in &again {
                    b.undo(no);
                }
                tracing::info!(
                    "backup of {}: {} chunk(s) lost a holder that went down; sending them again",
                    b.file,
                    again.len()
                );
                self.counters
                    .chunks_relaunched
                    .fetch_add(again.len() as u64, std::sync::atomic::Ordering::Relaxed);
                b.finished -= again.len() as u64;
                b.relaunch.extend(again.into_iter().rev());
            }
            actions.extend(self.fill_window(op, &[]));
        }
        actions
    }

    /// Launches chunks of backup `op` while the congestion window allows; chunks in `skip`
    /// count as finished at once. Reports progress, and the end of the backup.
    fn fill_window(&self, op: OpId, skip: &[ChunkNo]) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(mut b) = self.backups.get_mut(&op) else {
            return actions;
        };
        actions.extend(self.launch(op, &mut b, skip));
        actions.extend(progress(op, b.finished, b.chunks));
        if b.finished == b.chunks && !b.checking {
            // A file's chunks were read one by one: before the backup counts, its source must
            // still be what was opened (else the chunks may mix two contents). Without a known
            // mtime there is nothing to compare.
            if let Source::File {
                path,
                size,
                mtime_ns,
                ..
            } = &b.source
                && *mtime_ns != 0
            {
                actions.push(Action::CheckSource {
                    op,
                    path: path.clone(),
                    size: *size,
                    mtime_ns: *mtime_ns,
                });
                b.checking = true;
                return actions;
            }
            drop(b);
            actions.extend(self.backup_over(op));
        }
        actions
    }

    /// The source of backup `op` was checked after its last chunk: `unchanged`, the backup
    /// ends (earlier versions beyond those kept go, if every chunk reached its degree);
    /// changed, it fails and this version is deleted, so that no mix of two contents is ever
    /// restored (the earlier versions stay).
    pub fn source_checked(&self, op: OpId, unchanged: bool) -> Vec<Action> {
        if unchanged {
            return self.backup_over(op);
        }
        let Some((_, b)) = self.backups.remove(&op) else {
            return Vec::new();
        };
        let what = b
            .path()
            .map_or_else(String::new, |p| p.display().to_string());
        // A version this backup registered goes; one it resumed (the same file id, backed up
        // before) was whole before this backup changed nothing of it, and stays.
        let mut actions = Vec::new();
        if b.fresh {
            let enhanced = b.version == Version::V2_0;
            let (version, proof) = {
                let mut meta = self.meta.lock();
                let proof = self.proof_lines(&meta, &b.file);
                (self.forget_file(&mut meta, b.file, enhanced), proof)
            };
            actions.extend(self.delete_sends(b.file, version, proof, None));
            actions.extend(self.catalog_changed());
        }
        actions.push(Action::Report {
            op,
            event: OpEvent::Failed(format!(
                "backup of {what} failed: the file changed while it was read (its size or \
                 modification time is not what it was when the backup started); {}",
                if b.fresh {
                    "this version was deleted, earlier ones are kept"
                } else {
                    "the version backed up before with this size and mtime is kept"
                }
            )),
        });
        actions
    }

    /// Backup `op` is over: its report, after pruning the versions no longer kept.
    fn backup_over(&self, op: OpId) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some((_, b)) = self.backups.remove(&op) {
            // A catalog generation replaces the previous one as soon as a RECOVER could get it
            // whole (an enhanced holder of every chunk): its degree may stay short while the
            // peers known include some that left for good.
            let whole = b.short.is_empty()
                || (b.catalog.is_some() && {
                    let meta = self.meta.lock();
                    let chunks = meta.backed_up().get(&b.file).map_or(0, |f| f.chunks.len());
                    chunks > 0
                        && (0..chunks).all(|no| {
                            let key = ChunkKey {
                                file: b.file,
                                no: no as ChunkNo,
                            };
                            meta.perceived(&key).unwrap_or(0) > 0
                        })
                });
            if whole && let Source::File { path, .. } = &b.source {
                actions.extend(self.prune_versions(path, b.file, b.keep, b.version));
            }
            if matches!(b.source, Source::File { .. }) && b.catalog.is_none() {
                actions.extend(self.catalog_changed());
            }
            actions.push(Action::Report {
                op,
                event: OpEvent::BackupDone {
                    file: b.file,
                    chunks: b.chunks,
                    short: sorted(b.short),
                    gave_up_after: (b.silent >= SILENT_CHUNKS_GIVE_UP).then_some(b.silent),
                },
            });
        }
        actions
    }

    /// `file`, backed up from `path`, reached its degree: the versions of the path older than
    /// the `keep - 1` before it are deleted (with DELETEs of `version`).
    fn prune_versions(
        &self,
        path: &std::path::Path,
        file: FileId,
        keep: u8,
        version: Version,
    ) -> Vec<Action> {
        let old: Vec<(FileId, Version, Vec<String>)> = {
            let mut meta = self.meta.lock();
            // Oldest first; the `keep - 1` newest of those a restore can use stay.
            let older: Vec<(FileId, bool, bool, bool)> = meta
                .versions_of(path)
                .into_iter()
                .filter(|(id, _)| *id != file)
                .map(|(id, f)| {
                    (
                        id,
                        f.is_link(),
                        f.is_link() || f.restorable(),
                        f.is_catalog(),
                    )
                })
                .collect();
            let mut kept = usize::from(keep - 1);
            let mut going = Vec::new();
            for (id, link, usable, catalog) in older.into_iter().rev() {
                if usable && kept > 0 {
                    kept -= 1;
                } else {
                    going.push((id, link, catalog));
                }
            }
            let mut sends = Vec::new();
            for (id, link, catalog) in going {
                if link {
                    // Nothing of a link is stored anywhere: no tombstone, no DELETE.
                    meta.forget_file(&id);
                } else if catalog {
                    let proof = self.proof_lines(&meta, &id);
                    // An old catalog generation goes with unconfirmed DELETEs and leaves no
                    // tombstone: a confirmed deletion would stay pending for every peer that
                    // left for good, one per generation, and tombstones would push users'
                    // files out of the bounded set. A holder that misses all three DELETEs
                    // drops it when it stores a generation two newer.
                    meta.forget_file(&id);
                    sends.push((id, Version::V1_0, proof));
                } else {
                    let confirmed = version == Version::V2_0;
                    let proof = self.proof_lines(&meta, &id);
                    sends.push((id, self.forget_file(&mut meta, id, confirmed), proof));
                }
            }
            sends
        };
        old.into_iter()
            .flat_map(|(id, v, proof)| self.delete_sends(id, v, proof, None))
            .collect()
    }

    fn launch(&self, op: OpId, b: &mut BackupOp, skip: &[ChunkNo]) -> Vec<Action> {
        let mut actions = Vec::new();
        loop {
            let again = b.relaunch.last().map(|&no| ChunkKey { file: b.file, no });
            let chunk = match again {
                Some(chunk) => chunk,
                None if b.next < b.chunks => b.chunk(b.next),
                None => break,
            };
            if again.is_none() && skip.binary_search(&chunk.no).is_ok() {
                b.next += 1;
                b.finished += 1;
                b.mark_done(chunk.no);
                continue;
            }
            let mut flow = self.flow.lock();
            if !flow.can_launch() {
                break;
            }
            let launch = flow.launch();
            drop(flow);
            Counters::bump(&self.counters.putchunk_launches);
            if again.is_some() {
                b.relaunch.pop();
            } else {
                b.next += 1;
            }
            let previous = self.pending.insert(
                chunk,
                PendingPut {
                    op,
                    sends: 1,
                    launch,
                },
            );
            debug_assert!(previous.is_none(), "{chunk} launched by two backups");
            actions.push(putchunk_action(op, b, chunk, 1, launch, &self.cfg));
        }
        actions
    }

    /// A chunk left the window: the backups that wait for room get it, this one first.
    fn refill(&self, op: OpId) -> Vec<Action> {
        let mut actions = self.fill_window(op, &[]);
        let mut others: Vec<OpId> = self
            .backups
            .iter()
            .map(|b| *b.key())
            .filter(|o| *o != op)
            .collect();
        // Clients' backups before the core's own re-backups and repairs (their ids are above
        // INTERNAL_OPS), in the map's order otherwise.
        others.sort_by_key(|&o| o >= super::INTERNAL_OPS);
        for other in others {
            if !self.flow.lock().can_launch() {
                break;
            }
            if let Some(mut b) = self.backups.get_mut(&other) {
                actions.extend(self.launch(other, &mut b, &[]));
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
        if !enough {
            return Vec::new();
        }
        match self.pending.remove(&chunk) {
            Some((_, p)) => self.finish_chunk(chunk, p, true),
            None => Vec::new(), // another STORED finished it meanwhile
        }
    }

    /// A chunk is done: it reached its degree, or ran out of sends.
    fn finish_chunk(&self, chunk: ChunkKey, p: PendingPut, reached: bool) -> Vec<Action> {
        self.flow.lock().finish(reached && p.sends == 1);
        let stored_somewhere =
            reached || self.live_perceived(&self.meta.lock(), &chunk).unwrap_or(0) > 0;
        let give_up = match self.backups.get_mut(&p.op) {
            Some(mut b) => {
                b.finished += 1;
                if reached && matches!(b.source, Source::File { .. }) {
                    b.mark_done(chunk.no);
                } else if !reached {
                    b.short.push(chunk.no);
                }
                b.answered |= stored_somewhere;
                if !b.answered {
                    b.silent += 1;
                }
                !b.answered && b.silent == SILENT_CHUNKS_GIVE_UP
            }
            None => false,
        };
        if give_up {
            self.give_up_backup(p.op);
        }
        self.refill(p.op)
    }

    /// No peer stored any chunk of backup `op`: every chunk not yet done counts as short,
    /// those in flight leave the window, and the rest are not sent.
    fn give_up_backup(&self, op: OpId) {
        let in_flight: Vec<ChunkKey> = self
            .pending
            .iter()
            .filter(|p| p.op == op)
            .map(|p| *p.key())
            .collect();
        let mut flow = self.flow.lock();
        let mut dropped = Vec::new();
        for chunk in in_flight {
            if self.pending.remove(&chunk).is_some() {
                flow.finish(false);
                dropped.push(chunk.no);
            }
        }
        drop(flow);
        if let Some(mut b) = self.backups.get_mut(&op) {
            let unsent: Vec<ChunkNo> = (b.next..b.chunks).map(|i| b.chunk(i).no).collect();
            let relaunched: Vec<ChunkNo> = b.relaunch.drain(..).collect();
            b.finished += (dropped.len() + unsent.len() + relaunched.len()) as u64;
            b.next = b.chunks;
            b.short.extend(dropped);
            b.short.extend(unsent);
            b.short.extend(relaunched);
        }
    }

    /// `late_after` the first PUTCHUNK of `chunk` (launched as number `launch` by backup
    /// `op`): if fewer peers stored it than expected (see [`BackupOp::late_check`]), a storer
    /// is queueing, and the window shrinks a little (once per window of launches) before its
    /// queue overflows.
    pub(super) fn putchunk_late(&self, chunk: ChunkKey, op: OpId, launch: u64) {
        let storers = self.live_perceived(&self.meta.lock(), &chunk).unwrap_or(0);
        let late = match self.backups.get_mut(&op) {
            Some(mut b) => b.late_check(storers),
            None => return, // the backup is over
        };
        if late {
            Counters::bump(&self.counters.putchunk_late);
            self.flow.lock().late(launch);
        }
    }

    /// Whether `chunk`'s PUTCHUNK still waits for STOREDs here.
    pub fn putchunk_pending(&self, chunk: ChunkKey) -> bool {
        self.pending.contains_key(&chunk)
    }

    /// Whether every peer heard of speaks 2.0 (then chunk messages may travel as pieces,
    /// which a 1.0 peer would not understand).
    pub fn pieces_ok(&self) -> bool {
        // (One lock at a time.) Until someone is heard, nobody is known to understand pieces.
        let heard: Vec<PeerId> = self.members.lock().heard_peers().collect();
        let meta = self.meta.lock();
        !heard.is_empty() && heard.iter().all(|p| meta.enhanced_peers().contains(p))
    }

    /// The backup and launch number of `chunk` if it still waits for STOREDs after its PUTCHUNK
    /// send number `send` (else that send's wait has nothing left to do).
    pub(super) fn putchunk_waiting(&self, chunk: ChunkKey, send: u8) -> Option<(OpId, u64)> {
        self.pending
            .get(&chunk)
            .filter(|p| p.sends == send)
            .map(|p| (p.op, p.launch))
    }

    /// The wait after PUTCHUNK send number `send` is over: done, resend, or give up.
    pub(super) fn putchunk_wait_over(&self, chunk: ChunkKey, send: u8) -> Vec<Action> {
        let Some((op, launch)) = self.putchunk_waiting(chunk, send) else {
            return Vec::new(); // finished, or a stale timer
        };
        let perceived = self.live_perceived(&self.meta.lock(), &chunk).unwrap_or(0);
        let degree = self.backups.get(&op).map(|b| b.degree);
        let reached = degree.is_some_and(|d| perceived >= usize::from(d));
        if !reached {
            self.flow.lock().congestion(launch);
        }
        if reached || degree.is_none() || send >= self.cfg.max_putchunk_sends {
            return match self.pending.remove(&chunk) {
                Some((_, p)) => self.finish_chunk(chunk, p, reached),
                None => Vec::new(), // a STORED finished it meanwhile
            };
        }
        let resend = self
            .backups
            .get(&op)
            .map(|b| putchunk_action(op, &b, chunk, send + 1, launch, &self.cfg));
        let Some(resend) = resend else {
            return Vec::new();
        };
        if let Some(mut p) = self.pending.get_mut(&chunk) {
            p.sends = send + 1;
        }
        Counters::bump(&self.counters.putchunk_resends);
        vec![resend]
    }

    /// The runtime read a chunk of a home file for PUTCHUNK: the first read records its hash;
    /// a later read with another hash means the file changed under the backup, which then
    /// fails (`Err` holds the actions that end it; the body must not be sent).
    /// The first read also records VERIFY's proofs (computed outside the metadata lock).
    /// Returns the body to send (encrypted, for a sealed file); hashes and proofs are of it.
    pub fn putchunk_read(
        &self,
        op: OpId,
        chunk: ChunkKey,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, Vec<Action>> {
        let body = match self.wire_body(chunk, body) {
            Ok(body) => body,
            Err(e) => return Err(self.backup_source_failed(op, e)),
        };
        let hash = ChunkHash::of(&body);
        let key = self.meta.lock().key_to_record(&chunk);
        let proofs = key.map_or_else(String::new, |k| recorded_proofs(&k, chunk, &body));
        let recorded = self.meta.lock().record_own_hash(&chunk, hash, proofs);
        let changed = recorded.is_some_and(|h| h != hash);
        if changed {
            Err(self
                .backup_source_failed(op, format!("chunk {} changed during the backup", chunk.no)))
        } else {
            Ok(body)
        }
    }

    /// Chunk `chunk` of a file of this home as it goes on the wire: encrypted if the file is
    /// sealed (see [`crate::secure::chunks`]). `Err` for a sealed file without the data key.
    fn wire_body(&self, chunk: ChunkKey, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let sealed = self
            .meta
            .lock()
            .backed_up()
            .get(&chunk.file)
            .is_some_and(|f| f.attrs.sealed);
        match (&self.cfg.data_key, sealed) {
            (Some(key), true) => Ok(crate::secure::chunks::encrypt(key, &chunk, &body)),
            (None, true) => Err("the file is sealed and this peer has no data key".into()),
            (_, false) => Ok(body),
        }
    }

    /// The hash chunk `no` of `file` has on the wire if the file's bytes there are `plain`
    /// (for a sealed file, of their ciphertext).
    pub fn wire_hash(&self, file: FileId, no: ChunkNo, plain: Vec<u8>) -> Option<ChunkHash> {
        let body = self.wire_body(ChunkKey { file, no }, plain).ok()?;
        Some(ChunkHash::of(&body))
    }

    /// A backup request as this home carries it out: with a data key, the file is sealed and
    /// named by its delete secret's commitment (see [`crate::secure::ownership`]); an
    /// unchanged file keeps the registration it has (a resumed backup), a new one gets a salt
    /// of its own.
    fn owned_request(&self, mut req: BackupRequest) -> BackupRequest {
        let Some(key) = &self.cfg.data_key else {
            return req;
        };
        let base = req.file;
        let owner = if req.attrs.catalog.is_some() {
            Ownership { base, salt: None }
        } else if let Some((_, owner)) = self.meta.lock().own_by_base(&req.path, &base) {
            owner
        } else {
            let mut salt = [0u8; 32];
            self.rng.lock().fill(&mut salt);
            Ownership {
                base,
                salt: Some(FileId(salt)),
            }
        };
        req.file = crate::secure::ownership::owned_file_id(key, &base, owner.salt.as_ref());
        req.attrs.owner = Some(owner);
        req.attrs.sealed = true;
        req
    }

    /// The id of the file backed up here from `path` whose plain id is `base`: `base` itself
    /// without a data key; with one, the id of its registration, if it has one.
    pub fn file_of_base(&self, path: &std::path::Path, base: FileId) -> Option<FileId> {
        match &self.cfg.data_key {
            Some(_) => self.meta.lock().own_by_base(path, &base).map(|(id, _)| id),
            None => Some(base),
        }
    }

    /// The file id of catalog generation `tag` of this home (named by its delete secret with a
    /// data key).
    pub fn catalog_id(&self, tag: &CatalogTag) -> FileId {
        let base = super::recover::catalog_file_id(tag);
        match &self.cfg.data_key {
            Some(key) => crate::secure::ownership::owned_file_id(key, &base, None),
            None => base,
        }
    }

    /// The source of a backup could not be read (or changed): the backup fails.
    pub fn backup_source_failed(&self, op: OpId, reason: String) -> Vec<Action> {
        let Some((_, b)) = self.backups.remove(&op) else {
            return Vec::new();
        };
        let mut flow = self.flow.lock();
        self.pending.retain(|_, p| {
            if p.op == op {
                flow.finish(false);
            }
            p.op != op
        });
        drop(flow);
        let what = b
            .path()
            .map_or_else(|| b.chunk(0).to_string(), |p| p.display().to_string());
        let mut actions = vec![Action::Report {
            op,
            event: OpEvent::Failed(format!("backup of {what} failed: {reason}")),
        }];
        // Its chunks left the window: the backups waiting for room get it.
        actions.extend(self.refill(op));
        actions
    }
}

/// Where chunk `no` of the file at `path` (`size` bytes, `payload` bytes a chunk) is.
fn file_source(path: &std::path::Path, size: u64, no: ChunkNo, payload: usize) -> ChunkSource {
    let offset = u64::from(no) * payload as u64;
    ChunkSource::File {
        path: path.to_path_buf(),
        offset,
        len: (size - offset).min(payload as u64) as usize,
    }
}

/// Send number `send` of `chunk`'s PUTCHUNK, its wait starting when it is actually sent.
fn putchunk_action(
    op: OpId,
    b: &BackupOp,
    chunk: ChunkKey,
    send: u8,
    launch: u64,
    cfg: &Config,
) -> Action {
    let source = match &b.source {
        Source::File {
            path,
            size,
            payload,
            ..
        } => file_source(path, *size, chunk.no, *payload),
        Source::Stored { .. } => ChunkSource::Stored,
    };
    Action::SendPutchunk {
        version: b.version,
        chunk,
        degree: b.degree,
        source,
        op,
        send,
        wait: wait_after_send(cfg.first_wait, send),
        late: (send == 1).then_some((
            cfg.late_after,
            TimerEvent::PutchunkLate { chunk, op, launch },
        )),
        extra_lines: match b.version {
            Version::V2_0 => b
                .catalog
                .iter()
                .map(crate::protocol::message::catalog_line)
                .chain(matches!(b.source, Source::Stored { .. }).then(|| {
                    super::repair::home_line(b.home.unwrap_or(super::repair::UNKNOWN_HOME))
                }))
                .collect(),
            _ => Vec::new(),
        },
    }
}
