//! The invariants of a simulated run, checked as it runs and once the group is quiescent: a
//! chunk acknowledged to a client is never lost while a copy survives (unless a RECLAIM gave
//! up what its peer knew to be the last copy); after an enhanced DELETE and quiescence no
//! enhanced peer that the home knows holds the file; no peer stores its own file's chunks;
//! capacity is never exceeded; per-instance state returns to zero when idle. (That a restore
//! is byte-identical or fails naming chunks is checked where it reports, in `ops`.)

use std::collections::BTreeSet;
use std::time::Duration;

use super::ops::Step;
use super::world::{Event, World};
use crate::protocol::{FileId, Version};

impl World {
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
        if self.sc.heal
            && self.left.is_some()
            && self.healed_at.is_none()
            && self.chunks_below_degree_among_living().is_empty()
        {
            self.healed_at = Some(self.now);
        }
        self.measure();
        self.after(Duration::from_secs(1), Event::Tick);
    }

    /// Acknowledged chunks of files not deleted with fewer copies than their file's degree on
    /// the disks of peers that did not leave (when enough such peers, its home apart, exist),
    /// unless every copy left with the departing peers.
    pub(super) fn chunks_below_degree_among_living(&self) -> Vec<String> {
        let living = self.slots.iter().filter(|s| !s.gone).count();
        self.ledger
            .acked
            .iter()
            .filter(|(k, _)| !self.ledger.deleted.contains_key(&k.file))
            .filter_map(|(k, &i)| {
                let f = &self.ledger.files[i];
                let eligible = living - usize::from(!self.slots[f.home as usize].gone);
                let want = usize::from(f.degree).min(eligible);
                let have = self
                    .slots
                    .iter()
                    .filter(|s| !s.gone && s.disk.holds(k))
                    .count();
                // (A chunk all of whose copies left with departing peers cannot be repaired.)
                let gone_with_them = have == 0 && self.unrepairable.contains(k);
                (have < want && !gone_with_them)
                    .then(|| format!("chunk {k} of file {i}: {have} of {want} copies"))
            })
            .collect()
    }

    /// Acknowledged chunks with fewer copies than their file's degree.
    pub(super) fn chunks_below_degree(&self) -> usize {
        self.ledger
            .acked
            .iter()
            .filter(|(k, i)| self.copies.count(k) < usize::from(self.ledger.files[**i].degree))
            .count()
    }

    /// Whether the group is quiescent: every peer that did not leave is up, the network idle,
    /// no protocol instance in progress, no enhanced deletion pending.
    pub(super) fn quiescent(&self) -> bool {
        self.network_idle()
            && self.slots.iter().all(|s| {
                s.gone
                    || s.exec.as_ref().is_some_and(|e| {
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
                .or_else(|| {
                    self.ledger
                        .replaced
                        .get(file)
                        .map(|&i| &self.ledger.files[i])
                })
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
        // Healing: every acknowledged chunk back at its degree among the peers that stayed.
        if self.sc.heal {
            let below = self.chunks_below_degree_among_living();
            if !below.is_empty() {
                self.violations.push(format!(
                    "{t:.3}s: {} chunk(s) below their degree among the living peers at the end: {:?}",
                    below.len(),
                    &below[..below.len().min(5)]
                ));
            }
        }
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
