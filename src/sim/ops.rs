//! The simulated clients: each file's life (backup from its home, restore and compare with the
//! original, VERIFY when its home is enhanced, maybe delete), RECLAIMs, and the ledger of what they were told (the chunks
//! acknowledged, the files deleted), which `invariants` checks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::world::{Event, World};
use crate::core::metadata::DEFAULT_CAPACITY;
use crate::core::verify::VerifyKey;
use crate::core::{BackupRequest, OpEvent, OpId, RestoreRequest};
use crate::protocol::file_id::file_id;
use crate::protocol::{ChunkKey, ChunkNo, FileId, Version};

/// Where a file is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Backup,
    Restore,
    Verify,
    Delete,
    Done,
}

/// One file of the workload.
pub(super) struct FileJob {
    pub(super) home: u32,
    path: PathBuf,
    pub(super) data: Arc<Vec<u8>>,
    /// Its id on the wire (the plain id until its home registers it: a home with a data key
    /// names it after a delete secret).
    pub(super) file: FileId,
    /// Its plain id (what a backup request names).
    base: FileId,
    pub(super) degree: u8,
    enhanced: bool,
    /// Its VERIFY key (the runtime draws one from the system; here from the seed).
    verify_key: [u8; 32],
    /// Whether its life ends with DELETE.
    delete: bool,
    pub(super) step: Step,
    /// The operation in progress, if any.
    op: Option<OpId>,
    /// Its home crashed during the step: it is run again when the home is back.
    interrupted: bool,
    /// Its backup completed with every chunk at its degree.
    whole: bool,
    /// Its home lost its disk after that: RECOVER must bring it back.
    to_recover: bool,
    /// Its content changes once backed up whole: the new data and file id, backed up next.
    next_version: Option<(Arc<Vec<u8>>, FileId, FileId)>,
    /// While the new content is backed up: the previous version's file id, which must keep
    /// every acknowledged chunk until the new one is whole.
    previous: Option<FileId>,
}

/// What the clients asked for and were told.
#[derive(Default)]
pub(super) struct Ledger {
    pub(super) files: Vec<FileJob>,
    by_op: BTreeMap<(u32, OpId), usize>,
    next_op: OpId,
    /// Chunks acknowledged to a client (backup done, chunk not short), by file index.
    pub(super) acked: BTreeMap<ChunkKey, usize>,
    /// Files deleted, and whether by an enhanced DELETE.
    pub(super) deleted: BTreeMap<FileId, bool>,
    /// Versions replaced by a newer one of their file, and that file's index.
    pub(super) replaced: BTreeMap<FileId, usize>,
    /// Copies evicted by RECLAIM (a copy a user chose to give up).
    pub(super) excused: BTreeSet<(ChunkKey, u32)>,
    /// Chunks whose last copy a RECLAIM evicted (at degree 1, say): not counted as lost, even
    /// if their backup is acknowledged afterwards (the home does not repair its chunks).
    pub(super) given_up: BTreeSet<ChunkKey>,
    /// Operations started, and ended.
    pub(super) ops: u64,
    pub(super) ops_done: u64,
    /// Operations that ended in failure (chunks short, restore incomplete, refused).
    pub(super) ops_failed: u64,
    /// Chunks VERIFY checked, and of them those it proved at their degree.
    pub(super) verified_chunks: (u64, u64),
    /// RECOVERs in progress, by (peer, op).
    recovers: BTreeSet<(u32, OpId)>,
    /// A disk loss is planned and its RECOVER has not ended yet.
    awaiting_recovery: bool,
    /// Files a RECOVER got back into their home's catalog.
    pub(super) recovered_files: usize,
    /// The first failures, for the summary.
    pub(super) failures: Vec<String>,
    /// Set once the workload is over: no more crashes.
    pub(super) over: bool,
    /// Files deleted (enhanced) still held at the end by an enhanced peer their home never
    /// heard from (every STORED and UP of it lost): the DELETE's confirmations cannot cover it.
    pub(super) unknown_stale_copies: usize,
}

impl Ledger {
    /// Whether every file's life is over.
    pub(super) fn all_done(&self) -> bool {
        !self.awaiting_recovery && self.files.iter().all(|f| f.step == Step::Done)
    }

    /// Operations in progress.
    pub(super) fn in_flight(&self) -> usize {
        self.files.iter().filter(|f| f.op.is_some()).count()
    }
}

impl World {
    /// Plans the workload: files with their homes and start times, crashes, partitions and
    /// reclaims.
    pub(super) fn plan(&mut self) {
        let n = self.sc.peers;
        for i in 0..self.sc.files {
            let home = self.rng.u32(0..n);
            let home = self.sc.home.unwrap_or(home);
            let id = self.slots[home as usize].id;
            let lo = self
                .sc
                .min_size
                .unwrap_or(self.sc.size / 2)
                .min(self.sc.size);
            let size = self.rng.u64(lo..=self.sc.size);
            let mut data = vec![0u8; size as usize];
            self.rng.fill(&mut data);
            let path = PathBuf::from(format!("/home/peer{id}/file{i}"));
            self.slots[home as usize].disk.put_file(&path, data.clone());
            let enhanced = self.slots[home as usize].version != Version::V1_0;
            let base = file_id(&path, size, i as i128, id);
            let file = base;
            let delete = self.rng.f64() < self.sc.delete_share;
            let mut verify_key = [0u8; 32];
            self.rng.fill(&mut verify_key);
            let next_version =
                (self.sc.new_versions > 0.0 && self.rng.f64() < self.sc.new_versions).then(|| {
                    let mut changed = data.clone();
                    self.rng.fill(&mut changed[..]);
                    let base = file_id(&path, size, 1_000_000 + i as i128, id);
                    (Arc::new(changed), base, base)
                });
            self.ledger.files.push(FileJob {
                home,
                path,
                data: Arc::new(data),
                file,
                base,
                degree: self.sc.degree,
                enhanced,
                verify_key,
                delete,
                step: Step::Backup,
                op: None,
                interrupted: false,
                whole: false,
                to_recover: false,
                next_version,
                previous: None,
            });
            let start = self.sc.spread.mul_f64(self.rng.f64());
            self.at(start, Event::Client { file: i });
        }
        if let Some((at, peer)) = self.sc.lose_disk {
            self.ledger.awaiting_recovery = true;
            self.at(at, Event::LoseDisk { peer });
        }
        let horizon = self.sc.horizon();
        if self.sc.crash_rate > 0.0 {
            // Crashes per peer per simulated minute, over the horizon, each peer down 1-10 s.
            let count = (self.sc.crash_rate * f64::from(n) * horizon.as_secs_f64() / 60.0) as u64;
            for _ in 0..count {
                let peer = self.rng.u32(0..n);
                let at = horizon.mul_f64(self.rng.f64());
                let down = Duration::from_millis(self.rng.u64(1_000..=10_000));
                self.at(at, Event::Crash { peer, down });
            }
        }
        for (at, peer, down) in self.sc.crashes.clone() {
            match down {
                Some(down) => self.at(at, Event::Crash { peer, down }),
                None => self.at(at, Event::Leave { peer }),
            }
        }
        if let Some(p) = self.sc.partition {
            let groups: Vec<u32> = (0..n)
                .map(|i| u32::from(f64::from(i) >= p.split * f64::from(n)))
                .collect();
            self.at(
                p.at,
                Event::Partition {
                    groups: Some(groups),
                },
            );
            self.at(p.at + p.length, Event::Partition { groups: None });
        }
        for _ in 0..self.sc.reclaims {
            let peer = self.rng.u32(0..n);
            let at = horizon.mul_f64(self.rng.f64());
            self.at(at, Event::Reclaim { peer, back: false });
        }
    }

    fn new_op(&mut self, home: u32, file: usize) -> OpId {
        self.ledger.next_op += 1;
        self.ledger.ops += 1;
        let op = self.ledger.next_op;
        self.ledger.by_op.insert((home, op), file);
        op
    }

    fn fail(&mut self, what: String) {
        self.ledger.ops_failed += 1;
        if self.ledger.failures.len() < 20 {
            self.ledger
                .failures
                .push(format!("{:.3}s {what}", self.now.as_secs_f64()));
        }
    }

    /// The next step of file `i` is due.
    pub(super) fn client_step(&mut self, i: usize) {
        let (home, step) = {
            let f = &self.ledger.files[i];
            (f.home, f.step)
        };
        if step == Step::Done || self.ledger.files[i].op.is_some() {
            return;
        }
        let Some(exec) = self.slots[home as usize].exec.clone() else {
            // The home is down: the user tries again later.
            self.after(Duration::from_secs(1), Event::Client { file: i });
            return;
        };
        let op = self.new_op(home, i);
        self.trace(format_args!(
            "client {:?} file {i} op {op} at {}",
            step,
            home + 1
        ));
        let f = &self.ledger.files[i];
        let started = match step {
            Step::Backup => exec.core.start_backup(
                op,
                BackupRequest {
                    path: f.path.clone(),
                    file: f.base,
                    size: f.data.len() as u64,
                    degree: f.degree,
                    enhanced: f.enhanced,
                    // A known mtime: the backup checks its source before it counts.
                    attrs: crate::core::FileAttrs {
                        mtime_ns: 1,
                        verify_key: Some(VerifyKey(f.verify_key)),
                        ..Default::default()
                    },
                    keep: 1,
                },
            ),
            Step::Restore => exec.core.start_restore(
                op,
                RestoreRequest {
                    path: f.path.clone(),
                    tmp: PathBuf::from(format!("/tmp/restore-{op}")),
                    dest: PathBuf::from(format!("/restored/file{i}-{op}")),
                    enhanced: f.enhanced,
                    version: None,
                    overwrite: false,
                    read_only: false,
                },
            ),
            Step::Verify => exec.core.start_verify(op, &f.path.clone()),
            Step::Delete => {
                let file = f.file;
                self.ledger.acked.retain(|_, idx| *idx != i);
                let enhanced = f.enhanced;
                let started = exec.core.start_delete(op, &f.path.clone(), enhanced);
                if started.is_err() {
                    // Deleted before a crash interrupted it: its deletion was recorded.
                    self.ledger.deleted.insert(file, enhanced);
                    self.ledger.files[i].step = Step::Done;
                    self.ledger.ops_done += 1;
                    return;
                }
                started
            }
            Step::Done => unreachable!("checked above"),
        };
        match started {
            Ok(actions) => {
                let f = &mut self.ledger.files[i];
                f.op = Some(op);
                if step == Step::Backup {
                    // The id the home gave it (with a data key, its registration's).
                    f.file = exec.core.file_of_base(&f.path, f.base).unwrap_or(f.base);
                }
                exec.run(actions);
                self.drain(home);
            }
            Err(e) => {
                self.ledger.ops_done += 1;
                self.fail(format!("file {i}: {step:?} refused: {e}"));
                self.next_step(i, Step::Done);
            }
        }
    }

    fn next_step(&mut self, i: usize, step: Step) {
        let f = &mut self.ledger.files[i];
        f.op = None;
        f.step = step;
        if step != Step::Done {
            let think = Duration::from_millis(self.rng.u64(0..=2_000));
            self.after(think, Event::Client { file: i });
        }
    }

    /// A peer reported on an operation.
    pub(super) fn on_report(&mut self, peer: u32, op: OpId, event: OpEvent) {
        if matches!(event, OpEvent::Progress { .. }) {
            return;
        }
        if self.ledger.recovers.remove(&(peer, op)) {
            self.recover_done(peer, op, event);
            return;
        }
        let Some(i) = self.ledger.by_op.remove(&(peer, op)) else {
            return; // a re-backup, or an operation of an earlier life
        };
        if self.ledger.files[i].op != Some(op) {
            return;
        }
        self.ledger.ops_done += 1;
        self.trace(format_args!("report {} op {op}: {event:?}", peer + 1));
        let f = &self.ledger.files[i];
        let after_restore = if f.delete { Step::Delete } else { Step::Done };
        match event {
            OpEvent::BackupDone {
                file,
                chunks,
                short,
                ..
            } => {
                for no in 0..chunks as ChunkNo {
                    let chunk = ChunkKey { file, no };
                    let given_up =
                        self.ledger.given_up.contains(&chunk) && self.copies.count(&chunk) == 0;
                    if short.binary_search(&no).is_err() && !given_up {
                        self.ledger.acked.insert(chunk, i);
                    }
                }
                if short.is_empty() && self.ledger.files[i].next_version.is_some() {
                    // The file changes: its new content is backed up, the old version kept
                    // (its chunks stay acknowledged) until the new one is whole.
                    let f = &mut self.ledger.files[i];
                    let (data, base, file) = f.next_version.take().expect("checked");
                    f.previous = Some(f.file);
                    f.file = file;
                    f.base = base;
                    f.data = data.clone();
                    let (home, path) = (f.home, f.path.clone());
                    self.slots[home as usize]
                        .disk
                        .put_file(&path, data.to_vec());
                    self.next_step(i, Step::Backup);
                } else if short.is_empty() {
                    if self.sc.forge_deletes {
                        let home = self.slots[self.ledger.files[i].home as usize].id;
                        self.forge_deletes(home, file);
                    }
                    let f = &mut self.ledger.files[i];
                    f.whole = true;
                    // The version it replaces went with this backup's end (--keep 1).
                    if let Some(previous) = f.previous.take() {
                        let enhanced = f.enhanced;
                        self.ledger.acked.retain(|k, _| k.file != previous);
                        self.ledger.deleted.insert(previous, enhanced);
                        self.ledger.replaced.insert(previous, i);
                    }
                    self.next_step(i, Step::Restore);
                } else {
                    self.fail(format!("file {i}: backup short of chunks {short:?}"));
                    self.next_step(i, after_restore);
                }
            }
            OpEvent::RestoreDone { dest, .. } => {
                let disk = self.slots[peer as usize].disk.clone();
                let got = disk.file(&dest);
                if got.as_deref() != Some(&f.data[..]) {
                    self.violations.push(format!(
                        "{:.3}s: restore of file {i} at peer {} reported done but {} differs from the original",
                        self.now.as_secs_f64(),
                        peer + 1,
                        dest.display()
                    ));
                }
                disk.remove_file(&dest);
                let next = if f.enhanced {
                    Step::Verify
                } else {
                    after_restore
                };
                self.next_step(i, next);
            }
            OpEvent::Recovered(_) => {}
            OpEvent::VerifyDone { file, report } => {
                // A chunk VERIFY vouches for has its desired degree in durable copies, unless
                // a RECLAIM gave one up meanwhile.
                let unsure: BTreeSet<ChunkNo> = report
                    .unconfirmed
                    .iter()
                    .chain(&report.below)
                    .map(|c| c.no)
                    .collect();
                for no in (0..report.chunks as ChunkNo).filter(|no| !unsure.contains(no)) {
                    let chunk = ChunkKey { file, no };
                    let copies = self.copies.count(&chunk);
                    let excused = self
                        .ledger
                        .excused
                        .range((chunk, 0)..=(chunk, u32::MAX))
                        .next()
                        .is_some();
                    if copies < usize::from(report.desired) && !excused {
                        self.violations.push(format!(
                            "{:.3}s: VERIFY of file {i} vouched for chunk {no} with {copies} durable copies (desired {})",
                            self.now.as_secs_f64(),
                            report.desired
                        ));
                    }
                }
                self.ledger.verified_chunks.0 += report.chunks;
                self.ledger.verified_chunks.1 += report.verified;
                if !report.ok() {
                    self.fail(format!(
                        "file {i}: verify found chunks below their degree: {:?}",
                        report.below.iter().map(|c| c.no).collect::<Vec<_>>()
                    ));
                }
                self.next_step(i, after_restore);
            }
            OpEvent::RestoreIncomplete { missing, .. } => {
                if missing.is_empty() {
                    self.violations.push(format!(
                        "{:.3}s: restore of file {i} failed without naming a chunk",
                        self.now.as_secs_f64()
                    ));
                }
                self.fail(format!("file {i}: restore missing chunks {missing:?}"));
                self.next_step(i, after_restore);
            }
            OpEvent::DeleteDone { files } => {
                let enhanced = f.enhanced;
                for file in files {
                    self.ledger.deleted.insert(file, enhanced);
                }
                self.next_step(i, Step::Done);
            }
            OpEvent::Failed(reason) => {
                let step = f.step;
                self.fail(format!("file {i}: {step:?} failed: {reason}"));
                let next = match step {
                    Step::Backup | Step::Restore | Step::Verify => after_restore,
                    _ => Step::Done,
                };
                self.next_step(i, next);
            }
            OpEvent::Progress { .. } => {}
        }
    }

    /// Peer `i` crashed: its clients' operations were interrupted.
    pub(super) fn ledger_crashed(&mut self, i: u32) {
        for f in self.ledger.files.iter_mut().filter(|f| f.home == i) {
            f.interrupted |= f.op.take().is_some();
        }
        self.ledger.by_op.retain(|(peer, _), _| *peer != i);
    }

    /// Peer `i` left for good: its clients' files are abandoned (their chunks stay promised).
    pub(super) fn ledger_left(&mut self, i: u32) {
        for f in self.ledger.files.iter_mut().filter(|f| f.home == i) {
            f.step = Step::Done;
        }
    }

    /// Peer `i` lost its disk: its files' operations in progress are abandoned (their sources
    /// went with it); the files backed up whole and not deleted are to come back by RECOVER.
    pub(super) fn ledger_lost_disk(&mut self, i: u32) {
        let deleted = &self.ledger.deleted;
        for f in self.ledger.files.iter_mut().filter(|f| f.home == i) {
            f.to_recover = f.whole && !deleted.contains_key(&f.file) && f.step != Step::Delete;
            f.step = Step::Done;
            f.op = None;
            f.interrupted = false;
        }
    }

    /// RECOVER on peer `i`.
    pub(super) fn recover(&mut self, i: u32) {
        let Some(exec) = self.slots[i as usize].exec.clone() else {
            return;
        };
        self.ledger.next_op += 1;
        let op = self.ledger.next_op;
        self.trace(format_args!("recover {} op {op}", i + 1));
        match exec
            .core
            .start_recover(op, PathBuf::from(format!("/tmp/recover-{op}")))
        {
            Ok(actions) => {
                self.ledger.recovers.insert((i, op));
                exec.run(actions);
                self.drain(i);
            }
            Err(e) => self
                .violations
                .push(format!("peer {}: RECOVER refused: {e}", i + 1)),
        }
    }

    /// RECOVER `op` on peer `i` ended: every file to recover must be in the catalog again,
    /// and is then restored and compared.
    fn recover_done(&mut self, i: u32, op: OpId, event: OpEvent) {
        self.ledger.awaiting_recovery = false;
        let Some(exec) = self.slots[i as usize].exec.clone() else {
            return;
        };
        let due: Vec<usize> = (0..self.ledger.files.len())
            .filter(|&f| self.ledger.files[f].home == i && self.ledger.files[f].to_recover)
            .collect();
        if let OpEvent::Failed(reason) = &event {
            if !due.is_empty() {
                self.violations.push(format!(
                    "{:.3}s: RECOVER op {op} at peer {} failed with {} file(s) to bring back: {reason}",
                    self.now.as_secs_f64(),
                    i + 1,
                    due.len()
                ));
            }
            return;
        }
        for f in due {
            let (path, file) = (self.ledger.files[f].path.clone(), self.ledger.files[f].file);
            if exec.core.with_metadata(|m| m.file_for_path(&path, None)) != Some(file) {
                self.violations.push(format!(
                    "{:.3}s: RECOVER at peer {} did not bring back file {f}",
                    self.now.as_secs_f64(),
                    i + 1
                ));
                continue;
            }
            self.ledger.recovered_files += 1;
            let job = &mut self.ledger.files[f];
            job.to_recover = false;
            job.delete = false;
            self.next_step(f, Step::Restore);
        }
    }

    /// Peer `i` restarted: its clients run their interrupted steps again (a backup resumes).
    pub(super) fn ledger_restarted(&mut self, i: u32) {
        let due: Vec<usize> = (0..self.ledger.files.len())
            .filter(|&f| {
                let f = &mut self.ledger.files[f];
                f.home == i && std::mem::take(&mut f.interrupted) && f.step != Step::Done
            })
            .collect();
        for file in due {
            self.after(Duration::from_millis(500), Event::Client { file });
        }
    }

    /// RECLAIM on peer `i`.
    pub(super) fn reclaim(&mut self, i: u32, back: bool) {
        let Some(exec) = self.slots[i as usize].exec.clone() else {
            return;
        };
        let enhanced = self.slots[i as usize].version != Version::V1_0;
        let bytes = if back {
            DEFAULT_CAPACITY
        } else {
            exec.core.with_metadata(|m| m.used()) / 2
        };
        self.trace(format_args!("reclaim {} to {bytes}", i + 1));
        // Copies this peer knows to be the only ones: evicting them gives the chunk up (the
        // user chose to; the protocol has no one left to re-back it up).
        let last: BTreeSet<ChunkKey> = exec.core.with_metadata(|m| {
            m.stored()
                .iter()
                .flat_map(|(file, chunks)| {
                    chunks
                        .iter()
                        .filter(|(_, c)| c.holders.len() <= 1)
                        .map(|(no, _)| ChunkKey {
                            file: *file,
                            no: *no,
                        })
                })
                .collect()
        });
        let (done, actions) = exec.core.reclaim(bytes, enhanced);
        for chunk in done.evicted {
            self.ledger.excused.insert((chunk, i));
            if last.contains(&chunk) {
                self.ledger.acked.remove(&chunk);
                self.ledger.given_up.insert(chunk);
            }
        }
        exec.run(actions);
        self.drain(i);
        if !back {
            self.after(
                Duration::from_secs(30),
                Event::Reclaim {
                    peer: i,
                    back: true,
                },
            );
        }
    }
}
