//! Files deleted recently, and by whom: a peer that deleted a file's chunks on a DELETE (or,
//! at the home, deleted its own file) refuses PUTCHUNKs for that file from any peer but the
//! one that sent the DELETE. Without this, a holder that missed the DELETE and re-backs up one
//! of the file's chunks (after a REMOVED, or its own audit) makes peers that already deleted
//! it, and confirmed with DELETED, store it again, for good.
//!
//! Bounded: the most recent [`KEPT`] deletions are remembered (in memory; a restart forgets
//! them).

use std::collections::{BTreeMap, VecDeque};

use crate::protocol::{FileId, PeerId};

/// Deletions remembered at most.
pub const KEPT: usize = 4096;

/// Recently deleted files with the peer whose DELETE removed them.
#[derive(Debug, Default)]
pub struct Tombstones {
    by_file: BTreeMap<FileId, PeerId>,
    order: VecDeque<FileId>,
}

impl Tombstones {
    /// `file` was deleted on `home`'s word.
    pub fn insert(&mut self, file: FileId, home: PeerId) {
        if self.by_file.insert(file, home).is_none() {
            self.order.push_back(file);
            if self.order.len() > KEPT
                && let Some(old) = self.order.pop_front()
            {
                self.by_file.remove(&old);
            }
        }
    }

    /// Whether a PUTCHUNK of `file` from `sender` is refused: the file was deleted on another
    /// peer's word. The home backing it up again ends the tombstone.
    pub fn refuses(&mut self, file: FileId, sender: PeerId) -> bool {
        match self.by_file.get(&file) {
            Some(&home) if home == sender => {
                self.by_file.remove(&file);
                self.order.retain(|f| *f != file);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Whether `file` was deleted recently.
    pub fn contains(&self, file: &FileId) -> bool {
        self.by_file.contains_key(file)
    }

    /// Deletions remembered.
    pub fn len(&self) -> usize {
        self.by_file.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_file.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u8) -> FileId {
        FileId([n; 32])
    }

    #[test]
    fn only_the_deleting_peer_may_put_the_file_back_and_the_list_is_bounded() {
        let mut t = Tombstones::default();
        t.insert(file(1), 7);
        assert!(t.refuses(file(1), 3));
        assert!(!t.refuses(file(1), 7), "the home backs it up again");
        assert!(!t.refuses(file(1), 3), "and the tombstone is gone");
        for n in 0..=KEPT as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&n.to_be_bytes());
            id[31] = 9;
            t.insert(FileId(id), 1);
        }
        assert_eq!(t.len(), KEPT);
    }
}
