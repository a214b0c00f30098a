//! The catalog replicated in the group (enhanced), and RECOVER.
//!
//! A home's catalog (every file it backed up, every version, with what a restore needs) is
//! itself backed up into the group: after a change, coalesced to one generation per
//! [`Config::catalog_interval`](super::Config), the home writes the document
//! ([`Metadata::catalog_document`]) and backs it up as a file whose id is derived from its id
//! and generation, at degree 3 (or every other enhanced peer known, if fewer), with PUTCHUNK
//! 2.0 carrying a `CATALOG <home> <generation> <size> <files> <hash>` line so that holders know
//! what it is. Generations are versions of one path: the previous one is deleted once the new
//! one has its degree.
//!
//! RECOVER, on a peer whose tree is empty: `FINDCATALOG 2.0 <id> <home>` (three times, a second
//! apart); every enhanced holder of a generation of that home answers `CATALOG 2.0 <id>
//! <fileid> <home> <generation> <size> <files> <hash>`; the newest generation wins (of its
//! answers, the most common); it is restored like a file, checked against its hash, and its
//! entries installed. A peer that starts with an empty tree asks the same question and, if the
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
const INSTANCE: &str = "INSTANCE";

/// The file id of generation `generation` of `home`'s catalog.
pub fn catalog_file_id(home: PeerId, generation: u64) -> FileId {
    let mut h = sha2::Sha256::new();
    h.update(b"dbs-catalog-v1\0");
    h.update(home.to_string());
    h.update(b"\0");
    h.update(generation.to_string());
    FileId(h.finalize().into())
}

/// One RECOVER in progress: the generations heard of, and who holds each.
#[derive(Debug)]
pub struct RecoverOp {
    tmp: PathBuf,
    heard: BTreeMap<FileId, Vec<(PeerId, CatalogTag)>>,
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
    /// Peers that said they hold it.
    pub holders: Vec<PeerId>,
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
        let enhanced_peers = meta.enhanced_peers().len();
        if running || enhanced_peers == 0 {
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
            + 1;
        let (bytes, files) = meta.catalog_document(self.cfg.id, generation);
        drop(meta);
        tracing::debug!(
            "publishing catalog generation {generation}: {files} file(s), {} bytes",
            bytes.len()
        );
        let tag = CatalogTag {
            home: self.cfg.id,
            generation,
            size: bytes.len() as u64,
            files,
            hash: ChunkHash::of(&bytes),
        };
        vec![Action::WriteCatalog {
            path: self.cfg.catalog_path.clone(),
            bytes,
            tag,
        }]
    }

    /// The runtime wrote generation `tag` of the catalog to its path: back it up.
    pub fn catalog_written(&self, tag: CatalogTag) -> Vec<Action> {
        let degree = {
            let meta = self.meta.lock();
            meta.enhanced_peers()
                .len()
                .clamp(1, usize::from(CATALOG_DEGREE)) as u8
        };
        let req = BackupRequest {
            path: self.cfg.catalog_path.clone(),
            file: catalog_file_id(self.cfg.id, tag.generation),
            size: tag.size,
            degree,
            enhanced: true,
            attrs: FileAttrs {
                catalog: Some(tag),
                ..FileAttrs::default()
            },
            keep: 1,
        };
        self.start_backup(self.internal_op(), req)
            .unwrap_or_default()
    }

    /// A holder is asked which catalog generations of `home` it holds.
    pub(super) fn on_find_catalog(&self, from: PeerId, home: PeerId) -> Vec<Action> {
        if from == self.cfg.id {
            return Vec::new();
        }
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
        if tag.home != self.cfg.id || file != catalog_file_id(tag.home, tag.generation) {
            return;
        }
        let mut heard = false;
        for mut r in self.recovering.iter_mut() {
            let answers = r.heard.entry(file).or_default();
            if !answers.iter().any(|(p, _)| *p == from) {
                answers.push((from, tag));
            }
            heard = true;
        }
        let empty = !self.meta.lock().backed_up().values().any(|f| f.is_users());
        if !heard && empty && !self.catalog_hinted.swap(true, Ordering::Relaxed) {
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
        let files = self
            .meta
            .lock()
            .backed_up()
            .values()
            .filter(|f| f.is_users())
            .count();
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
            },
        );
        Ok(self.find_round(op, 1))
    }

    fn find_round(&self, op: OpId, send: u8) -> Vec<Action> {
        vec![
            self.send_v(
                Channel::Mc,
                Version::V2_0,
                MessageKind::FindCatalog { home: self.cfg.id },
                Vec::new(),
            ),
            Action::Schedule {
                delay: FIND_WAIT,
                event: TimerEvent::FindWait { op, send },
            },
        ]
    }

    /// The wait after FINDCATALOG send `send` of RECOVER `op` is over.
    pub(super) fn find_wait_over(&self, op: OpId, send: u8) -> Vec<Action> {
        if !self.recovering.contains_key(&op) {
            return Vec::new();
        }
        if send < FIND_SENDS {
            return self.find_round(op, send + 1);
        }
        let Some((_, r)) = self.recovering.remove(&op) else {
            return Vec::new();
        };
        // The newest generation; of its answers, the tag most holders gave.
        let Some((file, answers)) = r
            .heard
            .into_iter()
            .max_by_key(|(_, a)| a.first().map(|(_, t)| t.generation))
        else {
            return vec![Action::Report {
                op,
                event: OpEvent::Failed(format!(
                    "no catalog of peer {} in the group: nobody answered FINDCATALOG in {} s \
                     (its holders are down, run protocol 1.0, or it was never published)",
                    self.cfg.id,
                    FIND_SENDS as u64 * FIND_WAIT.as_secs()
                )),
            }];
        };
        let mut votes: BTreeMap<(u64, u64, [u8; 32]), Vec<PeerId>> = BTreeMap::new();
        for (peer, t) in &answers {
            votes
                .entry((t.size, t.files, t.hash.0))
                .or_default()
                .push(*peer);
        }
        let (_, holders) = votes
            .iter()
            .max_by_key(|(_, peers)| peers.len())
            .expect("answers");
        let tag = answers
            .iter()
            .find(|(p, _)| *p == holders[0])
            .map(|(_, t)| *t)
            .expect("a holder's tag");
        let holders = holders.clone();
        {
            let mut meta = self.meta.lock();
            meta.register_file(file, self.cfg.catalog_path.clone(), tag.size, 1);
            meta.set_file_attrs(
                file,
                FileAttrs {
                    catalog: Some(tag),
                    version: tag.generation as u32,
                    ..FileAttrs::default()
                },
            );
        }
        let req = RestoreRequest {
            path: self.cfg.catalog_path.clone(),
            tmp: r.tmp.clone(),
            dest: r.tmp.with_extension("json"),
            enhanced: true,
            version: None,
            overwrite: true,
            read_only: false,
        };
        match self.start_restore_of(op, file, req, Some((tag, holders))) {
            Ok(actions) => actions,
            Err(e) => vec![Action::Report {
                op,
                event: OpEvent::Failed(e.to_string()),
            }],
        }
    }

    /// The recovered catalog of RECOVER `op` was read back from disk (`Err`: it could not be).
    pub fn catalog_loaded(
        &self,
        op: OpId,
        tag: CatalogTag,
        holders: Vec<PeerId>,
        bytes: Result<Vec<u8>, String>,
    ) -> Vec<Action> {
        let installed = bytes.and_then(|bytes| {
            if ChunkHash::of(&bytes) != tag.hash {
                return Err(format!(
                    "the recovered catalog (generation {}) does not have the hash its holders \
                     announced: not installed",
                    tag.generation
                ));
            }
            let doc: CatalogDocument = serde_json::from_slice(&bytes)
                .map_err(|e| format!("the recovered catalog is unreadable: {e}"))?;
            if doc.home != self.cfg.id {
                return Err(format!(
                    "the recovered catalog is peer {}'s, not this peer's",
                    doc.home
                ));
            }
            Ok(self.meta.lock().install_catalog(doc))
        });
        let event = match installed {
            Ok((paths, entries)) => OpEvent::Recovered(Recovered {
                generation: tag.generation,
                paths,
                entries,
                holders,
            }),
            Err(e) => OpEvent::Failed(e),
        };
        vec![Action::SyncMetadata, Action::Report { op, event }]
    }

    /// This process's UP: it names the process, so that another one with the same id is found.
    pub(super) fn up_message(&self) -> Action {
        self.send_v(
            Channel::Mc,
            Version::V2_0,
            MessageKind::Up,
            vec![format!("{INSTANCE} {:016x}", self.instance)],
        )
    }

    /// An UP with this peer's own id: another process, if it names another instance. The
    /// first time, this one answers with its own UP so that the other learns it too.
    pub(super) fn own_id_up(&self, msg: &Message) -> Vec<Action> {
        let theirs = msg.extra_lines.iter().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == INSTANCE).then(|| u64::from_str_radix(v.trim(), 16).ok())?
        });
        match theirs {
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
