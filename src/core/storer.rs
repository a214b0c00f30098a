//! The holder's side: storing chunks on PUTCHUNK and answering STORED (at once, or after
//! deciding whether the degree is still short for an enhanced PUTCHUNK), serving CHUNK on
//! GETCHUNK (with the suppression rule, over TCP for an enhanced initiator), dropping chunks
//! on DELETE, and counting STOREDs.

use bytes::Bytes;
use std::collections::BTreeSet;
use std::net::SocketAddrV4;

use super::budget::{Drawn, quota};
use super::metadata::{StoredChunk, footprint};
use super::{Action, Channel, Core, Counters, TimerEvent};
use crate::protocol::{ChunkHash, ChunkKey, FileId, MessageKind, PeerId, Version};

/// A chunk being written here.
#[derive(Debug)]
pub struct Writing {
    /// Its size, reserved against capacity.
    size: u32,
    /// Other peers known to hold it already.
    holders: BTreeSet<PeerId>,
    /// Enhanced store: the random delay was taken before deciding to store.
    enhanced: bool,
    /// Who sent it, and whose it is as far as the PUTCHUNK tells.
    origin: Origin,
    /// The STORED to send once the write is durable (its delay is over, or it is enhanced).
    stored_due: Option<Version>,
    /// DELETE arrived while it was written: the chunk is removed once the write ends. The
    /// entry stays until then, so that a PUTCHUNK meanwhile starts no second write of the
    /// same chunk (two writes of one chunk in flight could land in one group commit, and the
    /// later one would find its reservation taken by the earlier).
    cancelled: bool,
}

/// Enhanced: a chunk body held while this peer waits to see whether others store it.
#[derive(Debug)]
pub struct Deferred {
    body: Bytes,
    desired: u8,
    origin: Origin,
    /// Distinct peers whose STORED for it was seen meanwhile.
    holders: BTreeSet<PeerId>,
}

/// Where a PUTCHUNK came from.
#[derive(Clone, Copy, Debug)]
struct Origin {
    /// The file's home, as far as the PUTCHUNK tells.
    home: Option<PeerId>,
    /// Its sender.
    sender: PeerId,
}

impl Origin {
    /// Whose share of the capacity the copy counts against (see [`StoredChunk::owner`]).
    fn owner(self) -> PeerId {
        self.home.unwrap_or(self.sender)
    }
}

/// A CHUNK reply scheduled here.
#[derive(Debug)]
pub struct Reply {
    /// Enhanced: the TCP address of the initiator.
    tcp: Option<SocketAddrV4>,
    /// What it drew from its requester's budget.
    drawn: Drawn,
}

/// Enhanced: a copy trimmed as surplus, kept on disk for a grace time.
#[derive(Debug)]
pub struct Trimmed {
    /// Its record when it was trimmed (its holders kept current by STORED and REMOVED).
    pub(super) chunk: StoredChunk,
    /// The `desired` lowest holders it was trimmed for: a REMOVED from one of them takes it
    /// back.
    relied_on: BTreeSet<PeerId>,
    /// Which trimming this is (its expiry names it).
    generation: u64,
}

/// 2.0 for an answer to an enhanced message, else 1.0.
fn version_of(enhanced: bool) -> Version {
    if enhanced {
        Version::V2_0
    } else {
        Version::V1_0
    }
}

impl Core {
    pub(super) fn on_putchunk(
        &self,
        sender: PeerId,
        chunk: ChunkKey,
        degree: u8,
        body: Bytes,
        enhanced_lines: Option<&[String]>,
    ) -> Vec<Action> {
        // An enhanced PUTCHUNK's extra lines may say it is a chunk of a catalog generation,
        // and name the file's home (a re-backup's initiator is a holder).
        let enhanced = enhanced_lines.is_some();
        let lines = enhanced_lines.unwrap_or_default();
        let catalog = crate::protocol::message::catalog_in(lines);
        // The home: the one a re-backup names (`HOME 0`: unknown), else the sender of a 2.0
        // PUTCHUNK; a 1.0 PUTCHUNK may be a re-backup from a holder: unknown.
        let named_home = super::repair::home_in(lines);
        let home = match named_home {
            Some(super::repair::UNKNOWN_HOME) => None,
            Some(h) => Some(h),
            None => enhanced.then_some(sender),
        };
        let origin = Origin { home, sender };
        // A re-backup's initiator is a holder (it sends no STORED for its own PUTCHUNK): its
        // copy counts when deciding whether to store.
        let initiator_holds: BTreeSet<PeerId> = named_home
            .filter(|&h| h != sender)
            .map(|_| sender)
            .into_iter()
            .collect();
        if let Some(mut w) = self.watches.get_mut(&chunk) {
            w.putchunk_seen = true; // someone is backing it up
        }
        let mut meta = self.meta.lock();
        match meta.tombstone(&chunk.file) {
            // Deleted on another peer's word: a stale re-backup.
            Some(home) if home != sender => return Vec::new(),
            // Its home backs it up again.
            Some(_) => meta.remove_tombstone(&chunk.file),
            None => {}
        }
        if meta.backed_up().contains_key(&chunk.file) {
            self.repair_progress(chunk); // a holder re-backs it up
            return Vec::new(); // never store chunks of our own files
        }
        if meta.pending_deletes().contains_key(&chunk.file) {
            return Vec::new(); // nor of our deleted ones
        }
        // A chunk of another peer's catalog: remember whose (the tag must name this file).
        // A home with a data key names a generation by its delete secret, which a holder
        // cannot check: then the tag is believed from the home itself, or from any member of
        // a secure group (a holder's re-backup) if the file has none yet: a member cannot
        // relabel a generation already stored.
        if let Some(tag) = catalog.filter(|t| {
            super::recover::catalog_file_id(t) == chunk.file
                || (t.home == sender && !self.cfg.secure())
                || (self.cfg.secure() && !meta.has_catalog_tag(&chunk.file))
        }) {
            meta.set_catalog_tag(chunk.file, tag);
        }
        if meta.stored_chunk(&chunk).is_some() {
            drop(meta);
            return vec![self.stored_timer(chunk, version_of(enhanced))];
        }
        if self.writing.contains_key(&chunk) || self.deferred.contains_key(&chunk) {
            return Vec::new(); // already being written or decided; that will answer
        }
        if !self.fits(&meta, body.len() as u32) {
            return Vec::new();
        }
        // In a secure group the sender is charged too: a member naming another home in its
        // PUTCHUNKs cannot spend that home's share alone.
        if !self.within_quota(&meta, origin.owner(), body.len() as u32)
            || (self.cfg.secure()
                && origin.owner() != sender
                && !self.within_quota(&meta, sender, body.len() as u32))
        {
            return Vec::new();
        }
        drop(meta);
        if enhanced && self.deferred.len() < self.cfg.max_deferred {
            // Store only if, after our random delay, fewer than `degree` peers have.
            self.deferred.insert(
                chunk,
                Deferred {
                    body,
                    desired: degree,
                    origin,
                    holders: initiator_holds,
                },
            );
            return vec![Action::Schedule {
                delay: self.reply_delay(),
                event: TimerEvent::StoreDecision { chunk },
            }];
        }
        // The STORED delay runs while the chunk is written (and made durable with others).
        let mut actions = self.write(chunk, degree, body, BTreeSet::new(), false, origin);
        actions.push(self.stored_timer(chunk, Version::V1_0));
        actions
    }

    fn write(
        &self,
        chunk: ChunkKey,
        desired: u8,
        body: Bytes,
        holders: BTreeSet<PeerId>,
        enhanced: bool,
        origin: Origin,
    ) -> Vec<Action> {
        let size = body.len() as u32;
        let writing = Writing {
            size,
            holders,
            enhanced,
            origin,
            stored_due: enhanced.then_some(Version::V2_0),
            cancelled: false,
        };
        if self.writing.insert(chunk, writing).is_some() {
            return Vec::new();
        }
        // A copy trimmed here and kept for its grace time is replaced by this write: its
        // expiry must not remove the new file.
        self.trash.remove(&chunk);
        vec![Action::WriteChunk {
            chunk,
            desired,
            body,
        }]
    }

    /// Enhanced: the random delay of a deferred chunk is over.
    pub(super) fn store_decision(&self, chunk: ChunkKey) -> Vec<Action> {
        let Some((_, d)) = self.deferred.remove(&chunk) else {
            return Vec::new();
        };
        tracing::debug!(
            "store decision for {chunk}: seen holders {:?}, desired {}",
            d.holders,
            d.desired
        );
        let seen = self.meta.lock().counted(chunk.file, &d.holders, false);
        if seen >= usize::from(d.desired) {
            return Vec::new(); // enough peers stored it: keep our disk free
        }
        let fits = {
            let meta = self.meta.lock();
            let size = d.body.len() as u32;
            self.fits(&meta, size) && self.within_quota(&meta, d.origin.owner(), size)
        };
        if !fits {
            return Vec::new();
        }
        self.write(chunk, d.desired, d.body, d.holders, true, d.origin)
    }

    /// Whether a chunk of `size` bytes fits next to what is stored and being written (see
    /// [`footprint`]: a full peer, capacity 0 included, stores nothing).
    fn fits(&self, meta: &super::Metadata, size: u32) -> bool {
        let reserved: u64 = self.writing.iter().map(|e| footprint(e.size)).sum();
        meta.footprint() + reserved + footprint(size) <= meta.capacity()
    }

    /// Whether `owner` may have a chunk of `size` bytes more stored here: its chunks stored
    /// and being written, and this one, within its share of the capacity
    /// ([`super::Config::max_share`]). Counts a refusal.
    fn within_quota(&self, meta: &super::Metadata, owner: PeerId, size: u32) -> bool {
        let Some(quota) = quota(meta.capacity(), self.cfg.max_share) else {
            return true;
        };
        let reserved: u64 = self
            .writing
            .iter()
            .filter(|w| w.origin.owner() == owner)
            .map(|w| footprint(w.size))
            .sum();
        let within = meta.owner_footprint(owner) + reserved + footprint(size) <= quota;
        if !within {
            Counters::bump(&self.counters.putchunks_over_quota);
            tracing::debug!("PUTCHUNK refused: the chunks of {owner} would fill over its share");
        }
        within
    }

    fn stored_timer(&self, chunk: ChunkKey, version: Version) -> Action {
        Action::Schedule {
            delay: self.reply_delay(),
            event: TimerEvent::SendStored { chunk, version },
        }
    }

    /// A chunk asked for by [`Action::WriteChunk`] is durable under its final name (`written`
    /// is the hash of its body), or its write failed (`None`).
    pub fn chunk_written(
        &self,
        chunk: ChunkKey,
        desired: u8,
        size: u32,
        written: Option<ChunkHash>,
    ) -> Vec<Action> {
        // The metadata lock is held across taking the reservation and recording the chunk, so
        // that a STORED timer sees the chunk either being written or stored.
        let mut meta = self.meta.lock();
        let reservation = self.writing.remove(&chunk).map(|(_, w)| w);
        let Some(hash) = written else {
            return Vec::new();
        };
        // DELETE arrived, or RECLAIM lowered the capacity (and with it the home's share), while
        // the chunk was written.
        let Some(w) = reservation.filter(|w| {
            let share = quota(meta.capacity(), self.cfg.max_share).unwrap_or(u64::MAX);
            !w.cancelled
                && meta.footprint() + footprint(size) <= meta.capacity()
                && meta.owner_footprint(w.origin.owner()) + footprint(size) <= share
        }) else {
            return vec![Action::RemoveChunk { chunk }];
        };
        let mut holders = w.holders;
        holders.insert(self.cfg.id);
        let below = self.live_count(&meta, chunk.file, &holders, true) < usize::from(desired);
        meta.insert_stored(
            chunk,
            StoredChunk {
                size,
                desired,
                holders,
                hash: Some(hash),
                home: w.origin.home,
                sender: Some(w.origin.sender),
            },
        );
        // (A secure peer cannot check a tag, so it drops nothing on one: the home's proven
        // DELETEs remove old generations.)
        let stale = if self.cfg.secure() {
            Vec::new()
        } else {
            meta.drop_stale_catalogs(&chunk.file)
        };
        drop(meta);
        Counters::bump(&self.counters.chunks_stored);
        let mut actions: Vec<Action> = stale
            .into_iter()
            .map(|chunk| Action::RemoveChunk { chunk })
            .collect();
        actions.extend(match w.stored_due {
            Some(version) => self.send_stored(chunk, version),
            None => Vec::new(), // its STORED timer will find it stored
        });
        if w.enhanced {
            // Stored on an enhanced PUTCHUNK: drop the copy later if others stored it too, and
            // make sure the degree is reached even if the initiator dies.
            actions.push(Action::Schedule {
                delay: self.cfg.trim_delay,
                event: TimerEvent::TrimCheck { chunk },
            });
            if below {
                // Give the other storers' STOREDs time to arrive before checking.
                actions.extend(self.watch(chunk, true, self.audit_delay(), None));
            }
        }
        actions
    }

    pub(super) fn send_stored(&self, chunk: ChunkKey, version: Version) -> Vec<Action> {
        let meta = self.meta.lock();
        if meta.stored_chunk(&chunk).is_none() {
            if let Some(mut w) = self.writing.get_mut(&chunk) {
                w.stored_due = Some(version); // sent as soon as the write is durable
            }
            return Vec::new(); // still being written, or deleted or evicted meanwhile
        }
        drop(meta);
        // STORED promises durability: the metadata naming the chunk goes to disk first.
        vec![
            Action::SyncMetadata,
            self.send_v(
                Channel::Mc,
                version,
                MessageKind::Stored { chunk },
                Vec::new(),
            ),
        ]
    }

    pub(super) fn on_stored(&self, sender: PeerId, chunk: ChunkKey) -> Vec<Action> {
        if let Some(mut d) = self.deferred.get_mut(&chunk) {
            d.holders.insert(sender);
        }
        if let Some(mut w) = self.writing.get_mut(&chunk) {
            w.holders.insert(sender);
        }
        let (perceived, stored_again) = {
            let mut meta = self.meta.lock();
            meta.add_holder(&chunk, sender);
            if let Some(mut t) = self.trash.get_mut(&chunk) {
                t.chunk.holders.insert(sender); // in case it is taken back
            }
            // A peer storing a chunk of a file whose enhanced deletion is pending (a stale
            // re-backup reached it) must delete it again and confirm.
            let stored_again = match meta.pending_deletes().get(&chunk.file) {
                Some(peers)
                    if !peers.contains(&sender) && meta.enhanced_peers().contains(&sender) =>
                {
                    let mut peers = peers.clone();
                    peers.insert(sender);
                    meta.set_pending_delete(chunk.file, peers);
                    true
                }
                _ => false,
            };
            (self.live_perceived(&meta, &chunk), stored_again)
        };
        if stored_again {
            return vec![self.delete_v2(chunk.file)];
        }
        match perceived {
            Some(n) => self.chunk_progress(chunk, n),
            None => Vec::new(),
        }
    }

    pub(super) fn on_delete(&self, sender: PeerId, file: FileId, enhanced: bool) -> Vec<Action> {
        let removed = {
            let mut meta = self.meta.lock();
            // A catalog generation needs no tombstone (an old one coming back is dropped when
            // a newer one is stored), and would push users' files out of the bounded set.
            if meta.catalog_tag(&file).is_none() {
                meta.add_tombstone(file, sender, None);
            }
            meta.remove_stored_file(&file)
        };
        for mut w in self.writing.iter_mut().filter(|w| w.key().file == file) {
            w.cancelled = true;
        }
        self.deferred.retain(|k, _| k.file != file);
        let mut actions: Vec<Action> = self.empty_trash(Some(file));
        actions.extend(removed.into_iter().map(|no| Action::RemoveChunk {
            chunk: ChunkKey { file, no },
        }));
        if enhanced {
            // Confirm, so that the initiator can stop tracking this peer for the file.
            actions.push(self.send_v(
                Channel::Mc,
                Version::V2_0,
                MessageKind::Deleted { file },
                Vec::new(),
            ));
        }
        actions
    }

    /// GETCHUNK from `requester`: a reply is scheduled if the chunk is held here, none is
    /// scheduled already, this peer did not answer the same requester the same chunk just
    /// before, and the requester's reply budget has room for it (see [`super::budget`]).
    pub(super) fn on_getchunk(
        &self,
        requester: PeerId,
        chunk: ChunkKey,
        tcp: Option<SocketAddrV4>,
    ) -> Vec<Action> {
        let Some(size) = self.meta.lock().stored_chunk(&chunk).map(|c| c.size) else {
            return Vec::new();
        };
        match self.replying.entry(chunk) {
            dashmap::Entry::Occupied(_) => return Vec::new(), // a reply is already scheduled
            dashmap::Entry::Vacant(slot) => {
                let mut budgets = self.budgets.lock();
                if budgets.repeated(requester, chunk) {
                    Counters::bump(&self.counters.getchunks_repeated);
                    return Vec::new();
                }
                let Some(drawn) = budgets.draw_reply(requester, footprint(size)) else {
                    Counters::bump(&self.counters.getchunks_over_budget);
                    return Vec::new();
                };
                slot.insert(Reply { tcp, drawn });
            }
        }
        let mut actions = vec![Action::Schedule {
            delay: self.reply_delay(),
            event: TimerEvent::SendChunk { chunk },
        }];
        actions.extend(self.budget_timer());
        actions
    }

    /// A scheduled reply is not sent after all: what it drew goes back to its requester.
    fn reply_dropped(&self, chunk: &ChunkKey) {
        if let Some((_, reply)) = self.replying.remove(chunk) {
            self.budgets.lock().reply_dropped(reply.drawn);
        }
    }

    pub(super) fn send_chunk(&self, chunk: ChunkKey) -> Vec<Action> {
        // The reply stays pending until it is actually sent (see `chunk_reply_due`), so that a
        // CHUNK seen while it waits for the sender still silences it.
        let Some(tcp) = self.replying.get(&chunk).map(|r| r.tcp) else {
            return Vec::new(); // another holder's CHUNK was seen during the delay
        };
        match self.meta.lock().stored_chunk(&chunk) {
            Some(c) => vec![Action::SendChunk {
                chunk,
                hash: c.hash,
                tcp,
            }],
            None => {
                self.reply_dropped(&chunk);
                Vec::new()
            }
        }
    }

    /// Right before a CHUNK reply goes out: whether it is still wanted (no other holder's
    /// CHUNK for it was seen since its delay began). Ends the pending reply either way.
    pub fn chunk_reply_due(&self, chunk: ChunkKey) -> bool {
        let Some((_, reply)) = self.replying.remove(&chunk) else {
            return false;
        };
        self.budgets.lock().reply_sent(reply.drawn, chunk);
        true
    }

    /// A CHUNK for `chunk` was seen but its body not read (this peer restores nothing): a
    /// reply of ours for the same chunk is no longer needed.
    pub fn chunk_seen(&self, chunk: ChunkKey) {
        self.reply_dropped(&chunk);
    }

    /// A CHUNK was seen (on MDR, or over TCP): a reply of ours for the same chunk is no longer
    /// needed, and if we are restoring that chunk, a body is a candidate. A header-only
    /// enhanced CHUNK (its body goes over TCP to its initiator) only silences us.
    pub(super) fn on_chunk(&self, chunk: ChunkKey, body: Bytes, header_only: bool) -> Vec<Action> {
        self.chunk_seen(chunk);
        if header_only {
            return Vec::new();
        }
        self.restore_body(chunk, body)
    }

    /// Enhanced: peers that decide to store at nearly the same time may all store. Once their
    /// STOREDs are known, the holder whose id is above those of `desired` other holders drops
    /// its copy (and says REMOVED). Every holder applies the same rule, so the `desired`
    /// lowest ids always keep theirs: the degree never drops below the desired one.
    ///
    /// The trimmed copy stays on disk for `trim_grace` (see [`Trimmed`]): a lower holder may be
    /// evicting its own copy at the same moment (RECLAIM), and if its REMOVED arrives meanwhile
    /// this peer takes its copy back. (Dropping it at once lost chunks whose lower holder
    /// reclaimed its copy at the same moment; found by the simulator.)
    /// With `confirmed`, only those lower holders count (a trim after HOLDS: the holders
    /// recorded before may be stale, say a copy evicted while this peer was down).
    pub(super) fn trim_check(
        &self,
        chunk: ChunkKey,
        confirmed: Option<BTreeSet<PeerId>>,
    ) -> Vec<Action> {
        let mut meta = self.meta.lock();
        let Some(c) = meta.stored_chunk(&chunk).cloned() else {
            return Vec::new();
        };
        // The holders this copy is trimmed for: the `desired` lowest ids, which keep theirs
        // (holders between them and this peer trim too, and their REMOVEDs change nothing).
        // (Of a catalog generation, only the enhanced holders count.)
        // Only live holders count: a copy is never trimmed for one on a peer that is down.
        let catalog = meta.is_catalog_file(&chunk.file);
        let view = self.members.lock();
        let lower: BTreeSet<PeerId> = confirmed
            .as_ref()
            .unwrap_or(&c.holders)
            .iter()
            .copied()
            .filter(|&p| {
                p < self.cfg.id
                    && view.is_alive(p)
                    // (A confirmed holder whose REMOVED came since no longer counts.)
                    && c.holders.contains(&p)
                    && (!catalog || meta.enhanced_peers().contains(&p))
            })
            .take(usize::from(c.desired))
            .collect();
        drop(view);
        tracing::debug!(
            "trim check of {chunk}: holders {:?}, desired {}",
            c.holders,
            c.desired
        );
        if lower.len() < usize::from(c.desired) {
            return Vec::new();
        }
        meta.remove_stored(&chunk);
        let generation = self
            .trims
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.trash.insert(
            chunk,
            Trimmed {
                chunk: c,
                relied_on: lower,
                generation,
            },
        );
        drop(meta);
        Counters::bump(&self.counters.chunks_trimmed);
        let mut actions = vec![
            Action::SyncMetadata,
            Action::Schedule {
                delay: self.cfg.trim_grace,
                event: TimerEvent::TrashExpired { chunk, generation },
            },
        ];
        actions.extend(self.removed_sends(chunk, Version::V2_0));
        actions
    }

    /// The grace time of a trimmed copy is over: its file goes.
    /// (The expiry of an earlier trimming of a copy taken back and trimmed again does nothing:
    /// the new trimming has its own grace time.)
    pub(super) fn trash_expired(&self, chunk: ChunkKey, generation: u64) -> Vec<Action> {
        let meta = self.meta.lock();
        let in_use = meta.stored_chunk(&chunk).is_some() || self.writing.contains_key(&chunk);
        match self
            .trash
            .remove_if(&chunk, |_, t| t.generation == generation)
        {
            Some(_) if !in_use => vec![Action::RemoveChunk { chunk }],
            _ => Vec::new(),
        }
    }

    /// A REMOVED from `sender`: if it is a lower holder one of our trimmed copies was dropped
    /// for, that copy is taken back (recorded again, and announced with STORED).
    pub(super) fn untrim(&self, sender: PeerId, chunk: ChunkKey) -> Vec<Action> {
        let Some((_, t)) = self
            .trash
            .remove_if(&chunk, |_, t| t.relied_on.contains(&sender))
        else {
            return Vec::new();
        };
        let mut c = t.chunk;
        c.holders.remove(&sender);
        {
            let mut meta = self.meta.lock();
            if meta.stored_chunk(&chunk).is_some() || self.writing.contains_key(&chunk) {
                return Vec::new(); // stored here again meanwhile: that copy is the one
            }
            if !self.fits(&meta, c.size) {
                // No room for it: gone, and said so again (its REMOVEDs may have been heard
                // before some holder recorded it again).
                drop(meta);
                let mut actions = vec![Action::RemoveChunk { chunk }];
                actions.extend(self.removed_sends(chunk, Version::V2_0));
                return actions;
            }
            meta.insert_stored(chunk, c);
        }
        tracing::debug!("took back trimmed copy of {chunk}: {sender} removed its own");
        vec![
            // The other lower holders may keep theirs: look again (the record kept with the
            // trimmed copy followed STOREDs and REMOVEDs meanwhile).
            Action::Schedule {
                delay: self.cfg.trim_delay + self.reply_delay(),
                event: TimerEvent::TrimCheck { chunk },
            },
            Action::SyncMetadata,
            self.send_v(
                Channel::Mc,
                Version::V2_0,
                MessageKind::Stored { chunk },
                Vec::new(),
            ),
        ]
    }

    /// Drops every trimmed copy still kept (RECLAIM wants the space; DELETE the file).
    pub(super) fn empty_trash(&self, only: Option<FileId>) -> Vec<Action> {
        let keys: Vec<ChunkKey> = self
            .trash
            .iter()
            .map(|t| *t.key())
            .filter(|k| only.is_none_or(|f| k.file == f))
            .collect();
        keys.into_iter()
            .filter(|k| self.trash.remove(k).is_some())
            .map(|chunk| Action::RemoveChunk { chunk })
            .collect()
    }

    /// A stored chunk turned out unreadable or corrupt when it was to be served: forget it and
    /// tell the others (REMOVED), so that they restore its degree.
    pub fn stored_chunk_lost(&self, chunk: ChunkKey) -> Vec<Action> {
        if !self.meta.lock().remove_stored(&chunk) {
            return Vec::new();
        }
        let mut actions = vec![Action::RemoveChunk { chunk }];
        actions.extend(self.removed_sends(chunk, Version::V1_0));
        actions
    }
}
