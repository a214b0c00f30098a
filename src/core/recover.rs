//! The catalog replicated in the group (enhanced), and RECOVER.
//!
//! A home's catalog (every file it backed up, every version, with what a restore needs) is
//! itself backed up into the group: after a change, coalesced to one generation per
//! [`Config::catalog_interval`](super::Config), the home writes the document
//! ([`Metadata::catalog_document`](super::Metadata::catalog_document)) and backs it up as a
//! file whose id is derived from its id, generation and document hash, at degree 3 (or every
//! other enhanced peer known, if fewer; only enhanced holders count), with PUTCHUNK 2.0
//! carrying a `CATALOG <home> <generation> <size> <files> <hash>` line so that holders know
//! what it is. Generations are versions of one path: the previous one is deleted (unconfirmed,
//! no tombstone) once the new one is whole.
//!
//! RECOVER, on a peer whose tree is empty: `FINDCATALOG 2.0 <id> <home>` (three times, a second
//! apart); every enhanced holder of a generation of that home answers `CATALOG 2.0 <id>
//! <fileid> <home> <generation> <size> <files> <hash>`; the generations are tried newest first,
//! each restored like a file and checked against its hash, until one is whole; its entries are
//! installed. A peer that starts with an empty tree asks the same question and, if the
//! group holds a catalog for its id, says so in its log. Two live processes with one id: each
//! announces a random instance in its UP; one that hears its own id with another instance
//! stops publishing (it would replace the other's catalog).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sha2::Digest;

use super::metadata::{CatalogDocument, FileAttrs};
use super::restore::RestoreRequest;
use super::{Action, BackupRequest, Channel, CommandError, Core, OpEvent, OpId, TimerEvent};
use crate::protocol::{CatalogTag, ChunkHash, FileId, Message, MessageKind, PeerId, Version};

/// Catalog generations are backed up at this degree at most.
pub const CATALOG_DEGREE: u8 = 3;
/// FINDCATALOG sends of a RECOVER, a second apart.
const FIND_SENDS: u8 = 3;
/// Wait after each FINDCATALOG.
const FIND_WAIT: Duration = Duration::from_secs(1);
/// The UP line naming the process.
pub(super) const INSTANCE: &str = "INSTANCE";

/// The file id of the catalog generation `tag` describes: its home, its generation and its
/// document's hash, so that two documents never share an id (a generation number used twice,
/// say after a RECOVER of an older generation, names another file).
pub fn catalog_file_id(tag: &CatalogTag) -> FileId {
    let mut h = sha2::Sha256::new();
    h.update(b"dbs-catalog-v1\0");
    h.update(tag.home.to_string());
    h.update(b"\0");
    h.update(tag.generation.to_string());
    h.update(b"\0");
    h.update(tag.hash.0);
    FileId(h.finalize().into())
}

/// One RECOVER in progress: the generations heard of and who holds each, then those still to
/// try, newest first.
#[derive(Debug)]
pub struct RecoverOp {
    tmp: PathBuf,
    heard: BTreeMap<FileId, (CatalogTag, Vec<PeerId>)>,
    /// After the questions: the generations to try, newest (then most held) first.
    left: Vec<(FileId, CatalogTag, Vec<PeerId>)>,
    /// Why the generations tried so far failed.
    failures: Vec<String>,
}

/// What a RECOVER found and installed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recovered {
    /// The generation installed.
    pub generation: u64,
    /// Paths it lists.
    pub paths: usize,
    /// Entries (versions and links) it lists.
    pub entries: usize,
    /// Peers that said they hold that generation.
    pub holders: Vec<PeerId>,
    /// Newer generations announced that could not be restored whole.
    pub skipped: Vec<String>,
}

impl Core {
    /// The catalog changed (a backup ended, a delete, a link): a generation is published
    /// within the interval.
    pub(super) fn catalog_changed(&self) -> Vec<Action> {
        if !self.cfg.enhanced() || self.cfg.catalog_interval.is_zero() {
            return Vec::new();
        }
        self.catalog_dirty.store(true, Ordering::Relaxed);
        if self.catalog_timer.swap(true, Ordering::Relaxed) {
            return Vec::new();
        }
        vec![Action::Schedule {
            delay: self.cfg.catalog_interval,
            event: TimerEvent::PublishCatalog,
        }]
    }

    /// At start: if the newest generation published may not hold the catalog as it is (it
    /// lists another number of entries, or is not whole), publish again (a change made just
    /// before a crash, or a publication that failed, is not lost).
    pub(super) fn catalog_at_start(&self) -> Vec<Action> {
        let stale = {
            let meta = self.meta.lock();
            let entries = meta.backed_up().values().filter(|f| f.is_users()).count() as u64;
            let newest = meta
                .backed_up()
                .iter()
                .filter_map(|(id, f)| f.attrs.catalog.map(|t| (t.generation, *id, t)))
                .max_by_key(|(g, _, _)| *g);
            match newest {
                None => entries > 0,
                Some((_, id, tag)) => tag.files != entries || !meta.backed_up()[&id].restorable(),
            }
        };
        if stale {
            self.catalog_changed()
        } else {
            Vec::new()
        }
    }

    /// The interval is over: write the next generation, unless nothing changed, one is being
    /// backed up still, or another live process has this id.
    pub(super) fn publish_catalog(&self) -> Vec<Action> {
        self.catalog_timer.store(false, Ordering::Relaxed);
        if self.id_conflict.load(Ordering::Relaxed) {
            tracing::error!(
                "not publishing the catalog: another live peer process uses id {}",
                self.cfg.id
            );
            return Vec::new();
        }
        let meta = self.meta.lock();
        let running = self.backups.iter().any(|b| {
            meta.backed_up()
                .get(&b.file)
                .is_some_and(|f| f.is_catalog())
        });
        if running || meta.enhanced_peers().is_empty() {
            // Later (nobody could answer a FINDCATALOG without an enhanced holder).
            drop(meta);
            self.catalog_timer.store(true, Ordering::Relaxed);
            return vec![Action::Schedule {
                delay: self.cfg.catalog_interval,
                event: TimerEvent::PublishCatalog,
            }];
        }
        if !self.catalog_dirty.swap(false, Ordering::Relaxed) {
            return Vec::new();
        }
        let generation = meta
            .backed_up()
            .values()
            .filter_map(|f| f.attrs.catalog.map(|t| t.generation))
            .max()
            .unwrap_or(0)
            .max(self.catalog_heard.load(Ordering::Relaxed))
            .saturating_add(1);
        // Copied under the lock, serialised outside it.
        let doc = meta.catalog_document(self.cfg.id, generation);
        drop(meta);
        let files = doc.files.len() as u64;
        let bytes = serde_json::to_vec(&doc).expect("catalog serialises");
        let tag = CatalogTag {
            home: self.cfg.id,
            generation,
            size: bytes.len() as u64,
            files,
            hash: ChunkHash::of(&bytes),
        };
        tracing::debug!(
            "publishing catalog generation {generation} as file {}: {files} file(s), {} bytes",
            self.catalog_id(&tag),
            bytes.len()
        );
        vec![Action::WriteCatalog {
            path: self.cfg.catalog_path.clone(),
            bytes,
            tag,
        }]
    }

    /// The runtime wrote generation `tag` of the catalog to its path (`ok`), or could not:
    /// back it up, or try again later.
    pub fn catalog_written(&self, tag: CatalogTag, ok: bool) -> Vec<Action> {
        if !ok {
            return self.catalog_changed();
        }
        let degree = {
            let meta = self.meta.lock();
            meta.enhanced_peers()
                .len()
                .clamp(1, usize::from(CATALOG_DEGREE)) as u8
        };
        let req = BackupRequest {
            path: self.cfg.catalog_path.clone(),
            file: catalog_file_id(&tag),
            size: tag.size,
            degree,
            enhanced: true,
            attrs: FileAttrs {
                catalog: Some(tag),
                ..FileAttrs::default()
            },
            keep: 1,
        };
        match self.start_backup(self.internal_op(), req) {
            Ok(actions) => actions,
            Err(_) => self.catalog_changed(),
        }
    }

    /// A holder is asked which catalog generations of `home` it holds.
    pub(super) fn on_find_catalog(&self, home: PeerId) -> Vec<Action> {
        let held: Vec<(FileId, CatalogTag)> = self
            .meta
            .lock()
            .catalog_tags()
            .filter(|(_, t)| t.home == home)
            .map(|(f, t)| (*f, *t))
            .collect();
        held.into_iter()
            .map(|(file, tag)| {
                self.send_v(
                    Channel::Mc,
                    Version::V2_0,
                    MessageKind::CatalogHeld { file, tag },
                    Vec::new(),
                )
            })
            .collect()
    }

    /// A holder says it holds a generation of a catalog.
    pub(super) fn on_catalog_held(&self, from: PeerId, file: FileId, tag: CatalogTag) {
        if tag.home != self.cfg.id || file != self.catalog_id(&tag) {
            return;
        }
        // Numbering goes on above every generation the group holds.
        self.catalog_heard
            .fetch_max(tag.generation, Ordering::Relaxed);
        let mut heard = false;
        for mut r in self.recovering.iter_mut() {
            let (_, holders) = r.heard.entry(file).or_insert((tag, Vec::new()));
            if !holders.contains(&from) {
                holders.push(from);
            }
            heard = true;
        }
        let empty = !self.meta.lock().backed_up().values().any(|f| f.is_users());
        if !heard && empty && tag.files > 0 && !self.catalog_hinted.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "this peer's tree holds no catalog, but peer {from} holds generation {} of the \
                 catalog of peer id {} ({} files): run RECOVER (testapp <access point> RECOVER) \
                 to get them back",
                tag.generation,
                tag.home,
                tag.files
            );
        }
    }

    /// Starts RECOVER: asks the group for this peer's catalog. `tmp` is where the recovered
    /// document is assembled. Refused on a peer whose catalog is not empty.
    pub fn start_recover(&self, op: OpId, tmp: PathBuf) -> Result<Vec<Action>, CommandError> {
        // Checked and registered under the metadata lock: two RECOVERs cannot both start.
        let meta = self.meta.lock();
        let files = meta.backed_up().values().filter(|f| f.is_users()).count();
        if files > 0 {
            return Err(CommandError::CatalogNotEmpty(files));
        }
        if !self.recovering.is_empty() {
            return Err(CommandError::RecoverRunning);
        }
        self.recovering.insert(
            op,
            RecoverOp {
                tmp,
                heard: BTreeMap::new(),
                left: Vec::new(),
                failures: Vec::new(),
            },
        );
        drop(meta);
        Ok(self.find_round(op, 1))
    }

    /// FINDCATALOG for this peer's id.
    fn find_catalog(&self) -> Action {
        self.send_v(
            Channel::Mc,
            Version::V2_0,
            MessageKind::FindCatalog { home: self.cfg.id },
            Vec::new(),
        )
    }

    fn find_round(&self, op: OpId, send: u8) -> Vec<Action> {
        vec![
            self.find_catalog(),
            Action::Schedule {
                delay: FIND_WAIT,
                event: TimerEvent::FindWait { op, send },
            },
        ]
    }

    /// The wait after FINDCATALOG send `send` of RECOVER `op` is over.
    pub(super) fn find_wait_over(&self, op: OpId, send: u8) -> Vec<Action> {
        if send < FIND_SENDS {
            return if self.recovering.contains_key(&op) {
                self.find_round(op, send + 1)
            } else {
                Vec::new()
            };
        }
        let Some(mut r) = self.recovering.get_mut(&op) else {
            return Vec::new();
        };
        if r.heard.is_empty() {
            drop(r);
            self.recovering.remove(&op);
            return vec![Action::Report {
                op,
                event: OpEvent::Failed(format!(
                    "no catalog of peer {} in the group: nobody answered FINDCATALOG in {} s \
                     (its holders are down, run protocol 1.0, or it was never published)",
                    self.cfg.id,
                    u64::from(FIND_SENDS) * FIND_WAIT.as_secs()
                )),
            }];
        }
        // Newest first; of one generation (two documents may share a number), the one most
        // holders announced first.
        let mut left: Vec<(FileId, CatalogTag, Vec<PeerId>)> = std::mem::take(&mut r.heard)
            .into_iter()
            .map(|(file, (tag, holders))| (file, tag, holders))
            .collect();
        left.sort_by_key(|(_, t, h)| (t.generation, h.len()));
        r.left = left; // the last is tried first
        drop(r);
        self.try_next_generation(op, None)
    }

    /// Restores the next generation RECOVER `op` has left to try (the previous one failed
    /// for `failed`), or ends it.
    pub(super) fn try_next_generation(&self, op: OpId, failed: Option<String>) -> Vec<Action> {
        let Some(mut r) = self.recovering.get_mut(&op) else {
            return Vec::new();
        };
        r.failures.extend(failed);
        let Some((file, tag, holders)) = r.left.pop() else {
            let failures = std::mem::take(&mut r.failures);
            drop(r);
            self.recovering.remove(&op);
            return vec![Action::Report {
                op,
                event: OpEvent::Failed(format!(
                    "no catalog generation of peer {} could be restored whole: {}",
                    self.cfg.id,
                    failures.join("; ")
                )),
            }];
        };
        // Each attempt has its own files: a write of an earlier one still under way is not
        // counted for this one.
        let stem = format!("{}-{}", r.tmp.display(), &file.to_hex()[..16]);
        let tmp = PathBuf::from(format!("{stem}.part"));
        drop(r);
        {
            // A catalog entry left by a RECOVER that failed is replaced.
            let mut meta = self.meta.lock();
            meta.forget_file(&file);
            let sealed = self.cfg.data_key.is_some();
            let payload = super::metadata::payload(sealed);
            meta.register_file(file, self.cfg.catalog_path.clone(), tag.size, 1, payload);
            meta.set_file_attrs(
                file,
                FileAttrs {
                    catalog: Some(tag),
                    version: tag.generation as u32,
                    sealed,
                    owner: sealed.then(|| super::Ownership {
                        base: catalog_file_id(&tag),
                        salt: None,
                    }),
                    ..FileAttrs::default()
                },
            );
        }
        let req = RestoreRequest {
            path: self.cfg.catalog_path.clone(),
            tmp,
            dest: PathBuf::from(format!("{stem}.json")),
            enhanced: true,
            version: None,
            overwrite: true,
            read_only: false,
        };
        match self.start_restore_of(op, file, req, Some((tag, holders))) {
            Ok(actions) => actions,
            Err(e) => self.catalog_not_restored(op, file, e.to_string()),
        }
    }

    /// A catalog generation RECOVER `op` restored could not be had whole (`why`): forget it,
    /// try the next one.
    pub(super) fn catalog_not_restored(&self, op: OpId, file: FileId, why: String) -> Vec<Action> {
        let gone = self.meta.lock().forget_file(&file);
        let generation = gone.and_then(|f| f.attrs.catalog).map(|t| t.generation);
        let why = match generation {
            Some(g) => format!("generation {g}: {why}"),
            None => why,
        };
        self.try_next_generation(op, Some(why))
    }

    /// The recovered catalog of RECOVER `op` was read back from disk (`Err`: it could not be).
    pub fn catalog_loaded(
        &self,
        op: OpId,
        tag: CatalogTag,
        holders: Vec<PeerId>,
        bytes: Result<Vec<u8>, String>,
    ) -> Vec<Action> {
        let file = self.catalog_id(&tag);
        let doc = bytes.and_then(|bytes| {
            if ChunkHash::of(&bytes) != tag.hash {
                return Err("not the hash its holders announced".to_string());
            }
            let doc: CatalogDocument =
                serde_json::from_slice(&bytes).map_err(|e| format!("unreadable: {e}"))?;
            if doc.home != self.cfg.id {
                return Err(format!("peer {}'s catalog, not this peer's", doc.home));
            }
            Ok(doc)
        });
        let doc = match doc {
            Ok(doc) => doc,
            Err(e) => return self.catalog_not_restored(op, file, e),
        };
        let Some((_, r)) = self.recovering.remove(&op) else {
            return Vec::new();
        };
        let (paths, entries) = self.meta.lock().install_catalog(doc);
        let event = OpEvent::Recovered(Recovered {
            generation: tag.generation,
            paths,
            entries,
            holders,
            skipped: r.failures,
        });
        vec![Action::SyncMetadata, Action::Report { op, event }]
    }

    /// This process's UP: it names the process, so that another one with the same id is found.
    pub(super) fn up_message(&self) -> Action {
        self.send_v(
            Channel::Mc,
            Version::V2_0,
            MessageKind::Up,
            vec![self.instance_line()],
        )
    }

    /// The `INSTANCE <16 hex digits>` line of this process.
    pub(super) fn instance_line(&self) -> String {
        format!("{INSTANCE} {:016x}", self.instance)
    }

    /// At start: UP, and, with an empty catalog, whether the group holds one for this id (and
    /// a publication if the newest generation is stale).
    pub(super) fn announce_at_start(&self) -> Vec<Action> {
        let mut actions = vec![self.up_message()];
        if !self.meta.lock().backed_up().values().any(|f| f.is_users()) {
            actions.push(self.find_catalog());
        }
        actions.extend(self.catalog_at_start());
        actions
    }

    /// An UP with this peer's own id: another process, if it names another instance. The
    /// first time, this one answers with its own UP so that the other learns it too.
    pub(super) fn own_id_up(&self, msg: &Message) -> Vec<Action> {
        match instance_in(&msg.extra_lines) {
            Some(i) if i != self.instance => {
                let first = !self.id_conflict.swap(true, Ordering::Relaxed);
                tracing::error!(
                    "another live peer process uses id {} (instance {i:016x}; this one is \
                     {:016x}): this peer will not publish its catalog, which would replace the \
                     other's; give each peer its own id",
                    self.cfg.id,
                    self.instance
                );
                if first {
                    vec![self.up_message()]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }
}

/// The process instance an `INSTANCE` line names, if any.
pub(super) fn instance_in(lines: &[String]) -> Option<u64> {
    lines.iter().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == INSTANCE).then(|| u64::from_str_radix(v.trim(), 16).ok())?
    })
}
