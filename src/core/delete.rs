//! The initiator side of the delete subprotocol: DELETE sent several times and the file
//! forgotten. Enhanced (DELETE 2.0): the enhanced peers that held the file's chunks must
//! confirm with DELETED; until they all have, the deletion stays pending (persisted) and is
//! sent again when one of them announces itself (UP) and every few seconds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::metadata::Metadata;
use super::{Action, Channel, CommandError, Core, OpEvent, OpId, TimerEvent};
use crate::protocol::{FileId, Message, MessageKind, PeerId, Version};

/// Pending deletions re-sent per retry round at most.
const RETRY_BATCH: usize = 64;

impl Core {
    /// Starts DELETE for the file backed up from `path` (every version of it).
    pub fn start_delete(
        &self,
        op: OpId,
        path: &Path,
        enhanced: bool,
    ) -> Result<Vec<Action>, CommandError> {
        self.start_delete_many(op, &[path.to_path_buf()], enhanced)
    }

    /// Starts DELETE for every version of every path in `paths`, as one operation: each file's
    /// DELETE is sent now and repeated on one shared schedule, and `op` hears
    /// [`OpEvent::DeleteDone`] after the last round. Refused, with nothing deleted, if a path
    /// was not backed up here or a backup or restore of one is running.
    pub fn start_delete_many(
        &self,
        op: OpId,
        paths: &[PathBuf],
        enhanced: bool,
    ) -> Result<Vec<Action>, CommandError> {
        let mut deleted: Vec<(FileId, Version, bool, Vec<String>)> = Vec::new();
        {
            let mut meta = self.meta.lock();
            let mut files = Vec::new();
            for path in paths {
                let versions = meta.versions_of(path);
                if versions.is_empty() {
                    return Err(CommandError::NotBackedUp(path.clone()));
                }
                for (file, f) in versions {
                    if self.backups.iter().any(|b| b.file == file) {
                        return Err(CommandError::BackupRunning(path.clone()));
                    }
                    if self.restores.iter().any(|r| r.file == file) {
                        return Err(CommandError::RestoreRunning(path.clone()));
                    }
                    files.push((file, f.is_link()));
                }
            }
            for (file, link) in files {
                if link {
                    // Nothing of a link is stored anywhere: no tombstone, no DELETE.
                    meta.forget_file(&file);
                    deleted.push((file, Version::V1_0, true, Vec::new()));
                } else {
                    let proof = self.proof_lines(&meta, &file);
                    let version = self.forget_file(&mut meta, file, enhanced);
                    deleted.push((file, version, false, proof));
                }
            }
        }
        let messages: Vec<Message> = deleted
            .iter()
            .filter(|(_, _, link, _)| !link)
            .map(|(file, version, _, proof)| {
                let mut m =
                    Message::new(*version, self.cfg.id, MessageKind::Delete { file: *file });
                m.extra_lines = proof.clone();
                m
            })
            .collect();
        let files = deleted.into_iter().map(|(file, ..)| file).collect();
        let mut actions = self.send_repeated(
            messages,
            self.cfg.delete_sends - 1,
            Some((op, OpEvent::DeleteDone { files })),
        );
        actions.extend(self.catalog_changed());
        Ok(actions)
    }

    /// Forgets a file backed up here. An enhanced delete remembers which enhanced peers must
    /// confirm it: every enhanced peer known, not only the holders whose STOREDs arrived (a
    /// holder whose STORED was lost on the way here would otherwise keep its copy for good if
    /// it missed the DELETEs). Returns the version the DELETEs go out with.
    pub(super) fn forget_file(&self, meta: &mut Metadata, file: FileId, enhanced: bool) -> Version {
        let owner = meta.backed_up().get(&file).and_then(|f| f.attrs.owner);
        meta.add_tombstone(file, self.cfg.id, owner);
        if meta.forget_file(&file).is_some() && enhanced {
            let peers: BTreeSet<PeerId> = meta.enhanced_peers().clone();
            meta.set_pending_delete(file, peers);
        }
        if enhanced {
            Version::V2_0
        } else {
            Version::V1_0
        }
    }

    /// The `PROOF` line a DELETE of `file` carries (none without a data key, or for a file
    /// named without one), from its record or, once it is forgotten, its tombstone.
    pub(super) fn proof_lines(&self, meta: &Metadata, file: &FileId) -> Vec<String> {
        let Some(key) = &self.cfg.data_key else {
            return Vec::new();
        };
        let owner = meta.backed_up().get(file).and_then(|f| f.attrs.owner);
        owner
            .or_else(|| meta.tombstone_owner(file))
            .map(|o| {
                vec![crate::secure::ownership::proof_line(
                    key,
                    &o.base,
                    o.salt.as_ref(),
                )]
            })
            .unwrap_or_default()
    }

    /// Sends DELETE for `file` (with its `proof` lines) now and `delete_sends - 1` times more;
    /// then reports to `op`.
    pub(super) fn delete_sends(
        &self,
        file: FileId,
        version: Version,
        proof: Vec<String>,
        op: Option<OpId>,
    ) -> Vec<Action> {
        let mut message = Message::new(version, self.cfg.id, MessageKind::Delete { file });
        message.extra_lines = proof;
        let then = op.map(|op| (op, OpEvent::DeleteDone { files: vec![file] }));
        self.send_repeated(vec![message], self.cfg.delete_sends - 1, then)
    }

    /// Notes that `peer` speaks the enhanced protocol. A peer heard of for the first time may
    /// hold chunks of files this peer deleted before it knew the peer (its STOREDs lost): it
    /// must confirm those recent deletions too (sent by the retry rounds).
    pub(super) fn note_enhanced_peer(&self, peer: PeerId) {
        let mut meta = self.meta.lock();
        if !meta.add_enhanced_peer(peer) {
            return;
        }
        for file in meta.deleted_by(self.cfg.id) {
            let mut peers = meta
                .pending_deletes()
                .get(&file)
                .cloned()
                .unwrap_or_default();
            peers.insert(peer);
            meta.set_pending_delete(file, peers);
        }
    }

    /// Enhanced: `peer` confirmed it removed `file`.
    pub(super) fn on_deleted(&self, peer: PeerId, file: FileId) -> Vec<Action> {
        let mut meta = self.meta.lock();
        if let Some(mut peers) = meta.pending_deletes().get(&file).cloned()
            && peers.remove(&peer)
        {
            meta.set_pending_delete(file, peers);
        }
        Vec::new()
    }

    /// Enhanced: `peer` (re)started; forget what it held (its HOLDS follow) and send it the
    /// deletions it missed.
    pub(super) fn on_up(&self, peer: PeerId, instance: Option<u64>) -> Vec<Action> {
        self.new_instance(peer, instance);
        let files: Vec<FileId> = self
            .meta
            .lock()
            .pending_deletes()
            .iter()
            .filter(|(_, peers)| peers.contains(&peer))
            .map(|(file, _)| *file)
            .collect();
        files.into_iter().map(|file| self.delete_v2(file)).collect()
    }

    pub(super) fn delete_v2(&self, file: FileId) -> Action {
        let proof = self.proof_lines(&self.meta.lock(), &file);
        self.send_v(
            Channel::Mc,
            Version::V2_0,
            MessageKind::Delete { file },
            proof,
        )
    }

    /// Enhanced: re-send pending deletions (for peers that were cut off rather than down).
    pub(super) fn retry_deletes(&self) -> Vec<Action> {
        let files: Vec<FileId> = self
            .meta
            .lock()
            .pending_deletes()
            .keys()
            .take(RETRY_BATCH)
            .copied()
            .collect();
        let mut actions: Vec<Action> = files.into_iter().map(|file| self.delete_v2(file)).collect();
        actions.push(Action::Schedule {
            delay: self.cfg.delete_retry_interval,
            event: TimerEvent::RetryDeletes,
        });
        actions
    }
}
