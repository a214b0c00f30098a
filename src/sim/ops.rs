//! The simulated clients: each file's life (backup from its home, restore and compare, maybe
//! delete), RECLAIMs, and what was promised to them, checked as the invariants: a chunk
//! acknowledged to a client is never lost while a copy survives; a restore is byte-identical
//! or fails naming chunks; after an enhanced DELETE and quiescence no enhanced peer holds the
//! file; no peer stores its own file's chunks; capacity is never exceeded; per-instance state
//! returns to zero when idle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::world::{Event, World};
use crate::core::metadata::DEFAULT_CAPACITY;
use crate::core::{BackupRequest, OpEvent, OpId, RestoreRequest};
use crate::protocol::file_id::file_id;
use crate::protocol::{ChunkKey, ChunkNo, FileId, Version};

/// Where a file is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Backup,
    Restore,
    Delete,
    Done,
}

/// One file of the workload.
pub(super) struct FileJob {
    pub(super) home: u32,
    path: PathBuf,
    data: Arc<Vec<u8>>,
    pub(super) file: FileId,
    degree: u8,
    enhanced: bool,
    /// Whether its life ends with DELETE.
    delete: bool,
    pub(super) step: Step,
    /// The operation in progress, if any.
    op: Option<OpId>,
    /// Its home crashed during the step: it is run again when the home is back.
    interrupted: bool,
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
    /// Copies evicted by RECLAIM (a copy a user chose to give up).
    excused: BTreeSet<(ChunkKey, u32)>,
    /// Chunks whose last copy a RECLAIM evicted (at degree 1, say): not counted as lost, even
    /// if their backup is acknowledged afterwards (the home does not repair its chunks).
    given_up: BTreeSet<ChunkKey>,
    /// Operations started, and ended.
    pub(super) ops: u64,
    pub(super) ops_done: u64,
    /// Operations that ended in failure (chunks short, restore incomplete, refused).
    pub(super) ops_failed: u64,
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
        self.files.iter().all(|f| f.step == Step::Done)
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
            let file = file_id(&path, size, i as i128, id);
            let delete = self.rng.f64() < self.sc.delete_share;
            self.ledger.files.push(FileJob {
                home,
                path,
                data: Arc::new(data),
                file,
                degree: self.sc.degree,
                enhanced,
                delete,
                step: Step::Backup,
                op: None,
                interrupted: false,
            });
            let start = self.sc.spread.mul_f64(self.rng.f64());
            self.at(start, Event::Client { file: i });
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
                    file: f.file,
                    size: f.data.len() as u64,
                    degree: f.degree,
                    enhanced: f.enhanced,
                },
            ),
            Step::Restore => exec.core.start_restore(
                op,
                RestoreRequest {
                    path: f.path.clone(),
                    tmp: PathBuf::from(format!("/tmp/restore-{op}")),
                    dest: PathBuf::from(format!("/restored/file{i}-{op}")),
                    enhanced: f.enhanced,
                },
            ),
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
                if short.is_empty() {
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
            OpEvent::DeleteDone { file } => {
                let enhanced = f.enhanced;
                self.ledger.deleted.insert(file, enhanced);
                self.next_step(i, Step::Done);
            }
            OpEvent::Failed(reason) => {
                let step = f.step;
                self.fail(format!("file {i}: {step:?} failed: {reason}"));
                let next = match step {
                    Step::Backup | Step::Restore => after_restore,
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

    /// After every event: an acknowledged chunk whose last copy went is a violation (unless a
    /// RECLAIM evicted it).
    pub(super) fn check_lost_copies(&mut self) {
        for (chunk, who) in self.copies.take_lost() {
            if self.ledger.excused.contains(&(chunk, who)) {
                self.ledger.acked.remove(&chunk); // its user gave it up
                self.ledger.given_up.insert(chunk);
                continue;
            }
            if let Some(&i) = self.ledger.acked.get(&chunk) {
                self.violations.push(format!(
                    "{:.3}s: chunk {chunk} of file {i}, acknowledged to its client, lost its last copy (peer {})",
                    self.now.as_secs_f64(),
                    who + 1
                ));
            }
        }
    }

    /// Once per simulated second: measurements, and the invariants that hold at any time.
    pub(super) fn tick(&mut self) {
        let secs = self.now.as_secs();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(exec) = &slot.exec else { continue };
            let (used, capacity) = exec.core.with_metadata(|m| (m.footprint(), m.capacity()));
            if used > capacity {
                self.violations.push(format!(
                    "{secs}s: peer {} holds {used} bytes over its capacity of {capacity}",
                    i + 1
                ));
            }
            if secs.is_multiple_of(10) {
                let own: BTreeSet<FileId> = exec
                    .core
                    .with_metadata(|m| m.backed_up().keys().copied().collect());
                if let Some(k) = slot
                    .disk
                    .chunk_keys()
                    .into_iter()
                    .find(|k| own.contains(&k.file))
                {
                    self.violations.push(format!(
                        "{secs}s: peer {} stores chunk {k} of its own file",
                        i + 1
                    ));
                }
            }
        }
        self.measure();
        self.after(Duration::from_secs(1), Event::Tick);
    }

    /// Acknowledged chunks with fewer copies than their file's degree.
    pub(super) fn chunks_below_degree(&self) -> usize {
        self.ledger
            .acked
            .iter()
            .filter(|(k, i)| self.copies.count(k) < usize::from(self.ledger.files[**i].degree))
            .count()
    }

    /// Whether the group is quiescent: the network idle, no protocol instance in progress
    /// on any live peer, no enhanced deletion pending.
    pub(super) fn quiescent(&self) -> bool {
        self.network_idle()
            && self.slots.iter().all(|s| {
                s.exec.as_ref().is_none_or(|e| {
                    e.core.instances() == 0
                        && e.core.with_metadata(|m| m.pending_deletes().is_empty())
                        && e.commit_idle()
                })
            })
    }

    /// The invariants checked once the group is quiescent.
    pub(super) fn final_checks(&mut self, quiet: bool) {
        let t = self.now.as_secs_f64();
        if !self.ledger.all_done() {
            let left = self
                .ledger
                .files
                .iter()
                .filter(|f| f.step != Step::Done)
                .count();
            self.violations
                .push(format!("{t:.3}s: {left} files' operations never finished"));
        }
        if !quiet {
            for (i, s) in self.slots.iter().enumerate() {
                if let Some(e) = &s.exec {
                    let pending = e.core.with_metadata(|m| m.pending_deletes().len());
                    if e.core.instances() > 0 || pending > 0 {
                        let kinds: Vec<String> = e
                            .core
                            .instances_by_kind()
                            .iter()
                            .filter(|(_, n)| *n > 0)
                            .map(|(k, n)| format!("{n} {k}"))
                            .collect();
                        self.violations.push(format!(
                            "{t:.3}s: peer {} not idle after the settle time: {}, {pending} pending deletions",
                            i + 1,
                            kinds.join(", ")
                        ));
                    }
                }
            }
        }
        // After an enhanced DELETE, no enhanced peer that its home knew keeps the file (the
        // DELETE is confirmed by the peers the home knows to speak 2.0; one it never heard from
        // is counted apart).
        let known = |file: &FileId, peer: u32| {
            self.ledger
                .files
                .iter()
                .find(|f| f.file == *file)
                .is_some_and(|f| {
                    self.slots[f.home as usize]
                        .exec
                        .as_ref()
                        .is_none_or(|home| {
                            home.core.with_metadata(|m| {
                                m.enhanced_peers().contains(&self.slots[peer as usize].id)
                            })
                        })
                })
        };
        let mut unknown = 0;
        let mut broken = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            let Some(exec) = &s.exec else { continue };
            if s.version == Version::V1_0 {
                continue;
            }
            let held: BTreeSet<FileId> = s
                .disk
                .chunk_keys()
                .into_iter()
                .map(|k| k.file)
                .chain(
                    exec.core
                        .with_metadata(|m| m.stored().keys().copied().collect::<Vec<_>>()),
                )
                .collect();
            for file in held {
                if self.ledger.deleted.get(&file) != Some(&true) {
                    continue;
                }
                if known(&file, i as u32) {
                    broken.push(format!(
                        "{t:.3}s: peer {} still holds chunks of file {file}, deleted (enhanced) and quiescent",
                        i + 1
                    ));
                } else {
                    unknown += 1;
                }
            }
        }
        self.violations.extend(broken);
        self.ledger.unknown_stale_copies = unknown;
        // Every acknowledged chunk of a file not deleted still has a copy on a disk that did
        // not leave (unless every disk that held it left).
        for (chunk, i) in &self.ledger.acked {
            let surviving = self
                .slots
                .iter()
                .filter(|s| !s.gone && s.disk.holds(chunk))
                .count();
            if surviving == 0 && self.copies.count(chunk) == 0 {
                self.violations.push(format!(
                    "{t:.3}s: chunk {chunk} of file {i}, acknowledged, has no copy at the end"
                ));
            }
        }
    }
}

impl World {
    /// Each file at the end of the run.
    pub(super) fn outcomes(&self) -> Vec<super::scenario::FileOutcome> {
        self.ledger
            .files
            .iter()
            .map(|f| {
                let chunks = crate::core::metadata::chunk_count(f.data.len() as u64) as ChunkNo;
                let keys: Vec<ChunkKey> = (0..chunks)
                    .map(|no| ChunkKey { file: f.file, no })
                    .collect();
                let live = |k: &ChunkKey| {
                    self.slots
                        .iter()
                        .filter(|s| s.exec.is_some() && s.disk.holds(k))
                        .count()
                };
                let perceived = self.slots[f.home as usize].exec.as_ref().and_then(|e| {
                    e.core.with_metadata(|m| {
                        m.backed_up()
                            .get(&f.file)
                            .map(|b| b.chunks.iter().map(|c| c.holders.len()).collect())
                    })
                });
                super::scenario::FileOutcome {
                    home: f.home,
                    deleted: self.ledger.deleted.contains_key(&f.file),
                    copies: keys.iter().map(|k| self.copies.count(k)).collect(),
                    live_copies: keys.iter().map(live).collect(),
                    perceived,
                }
            })
            .collect()
    }
}

impl World {
    /// What each peer keeps at the end of the run.
    pub(super) fn peer_states(&self) -> Vec<Option<super::scenario::PeerState>> {
        self.slots
            .iter()
            .map(|s| {
                let e = s.exec.as_ref()?;
                Some(e.core.with_metadata(|m| super::scenario::PeerState {
                    stored_chunks: m.stored().values().map(|c| c.len()).sum(),
                    files: m.backed_up().len(),
                    pending_deletes: m.pending_deletes().len(),
                    tombstones: m.tombstone_count(),
                    enhanced_peers: m.enhanced_peers().len(),
                    instances: e.core.instances(),
                    chunk_files: s.disk.chunk_keys().len(),
                }))
            })
            .collect()
    }
}
