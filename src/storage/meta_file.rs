//! The metadata file `metadata.json`: loaded at start, saved atomically when it changed.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::{StorageError, io_err, write_atomic};
use crate::core::Metadata;

/// Saves a peer's metadata; serialises concurrent saves and skips saves with nothing new.
#[derive(Debug)]
pub struct MetaFile {
    path: PathBuf,
    tmp_dir: PathBuf,
    saved_generation: Mutex<u64>,
}

impl MetaFile {
    /// The metadata file of the tree at `root` (temporary files go to `tmp_dir`).
    pub fn new(root: &Path, tmp_dir: &Path) -> Self {
        MetaFile {
            path: root.join("metadata.json"),
            tmp_dir: tmp_dir.to_path_buf(),
            saved_generation: Mutex::new(0),
        }
    }

    /// Loads the metadata; a missing file means a new peer.
    pub fn load(&self) -> Result<Metadata, StorageError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StorageError::CorruptMetadata {
                    path: self.path.clone(),
                    source,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Metadata::default()),
            Err(e) => Err(io_err("read", &self.path)(e)),
        }
    }

    /// Generation of the metadata last saved.
    pub fn saved(&self) -> u64 {
        *self.saved_generation.lock()
    }

    /// Saves the metadata if its generation moved since the last save. `snapshot` returns the
    /// current generation and, only when it differs from `saved`, the serialised document.
    pub fn save_if_changed(
        &self,
        snapshot: impl FnOnce(u64) -> (u64, Option<Vec<u8>>),
    ) -> Result<(), StorageError> {
        let mut saved = self.saved_generation.lock();
        let (generation, bytes) = snapshot(*saved);
        if let Some(bytes) = bytes {
            write_atomic(&self.tmp_dir, &self.path, &bytes)?;
            *saved = generation;
        }
        Ok(())
    }
}

/// Serialises `meta` unless its generation equals `saved`.
pub fn snapshot(meta: &Metadata, saved: u64) -> (u64, Option<Vec<u8>>) {
    if meta.generation == saved {
        (saved, None)
    } else {
        let bytes = serde_json::to_vec(meta).expect("metadata serialises");
        (meta.generation, Some(bytes))
    }
}
