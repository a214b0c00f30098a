//! Chunk bodies as files `chunks/<file id>/<chunk no>` in a peer's tree, written atomically.

use std::fs;
use std::path::{Path, PathBuf};

use super::{StorageError, io_err, write_atomic};
use crate::protocol::ids::MAX_CHUNK_NO;
use crate::protocol::{ChunkKey, ChunkNo, FileId};

/// The chunk files of one peer.
#[derive(Clone, Debug)]
pub struct ChunkFiles {
    root: PathBuf,
    chunks: PathBuf,
    tmp: PathBuf,
}

impl ChunkFiles {
    /// Opens (creating if needed) the tree under `root`.
    pub fn open(root: &Path) -> Result<Self, StorageError> {
        let store = ChunkFiles {
            root: root.to_path_buf(),
            chunks: root.join("chunks"),
            tmp: root.join("tmp"),
        };
        for dir in [
            &store.root,
            &store.chunks,
            &store.tmp,
            &store.root.join("restored"),
        ] {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        Ok(store)
    }

    /// The peer's tree.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory for temporary files (same filesystem as the chunks).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    fn file_dir(&self, file: &FileId) -> PathBuf {
        self.chunks.join(file.to_hex())
    }

    /// Path of a chunk's file.
    pub fn path(&self, key: &ChunkKey) -> PathBuf {
        self.file_dir(&key.file).join(key.no.to_string())
    }

    /// Writes a chunk atomically and durably.
    pub fn write(&self, key: &ChunkKey, body: &[u8]) -> Result<(), StorageError> {
        let dir = self.file_dir(&key.file);
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        write_atomic(&self.tmp, &self.path(key), body)
    }

    /// Reads a chunk.
    pub fn read(&self, key: &ChunkKey) -> Result<Vec<u8>, StorageError> {
        let path = self.path(key);
        fs::read(&path).map_err(io_err("read", &path))
    }

    /// Removes a chunk's file (absent is fine) and its file directory once empty.
    pub fn remove(&self, key: &ChunkKey) -> Result<(), StorageError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
        let _ = fs::remove_dir(self.file_dir(&key.file)); // fails while not empty: fine
        Ok(())
    }

    /// Every well-named chunk file on disk, with its size.
    pub fn list(&self) -> Result<Vec<(ChunkKey, u64)>, StorageError> {
        let mut out = Vec::new();
        for dir in fs::read_dir(&self.chunks).map_err(io_err("list", &self.chunks))? {
            let dir = dir.map_err(io_err("list", &self.chunks))?;
            // Only names this store writes: lower-case hex directories, canonical decimal files.
            let name = dir.file_name();
            let Some(file) = name
                .to_str()
                .and_then(|n| n.parse::<FileId>().ok().filter(|f| f.to_hex() == n))
            else {
                continue;
            };
            let Ok(entries) = fs::read_dir(dir.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(no) = name.to_str().and_then(|n| {
                    n.parse::<ChunkNo>()
                        .ok()
                        .filter(|no| *no <= MAX_CHUNK_NO && no.to_string() == n)
                }) else {
                    continue;
                };
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_file() {
                    out.push((ChunkKey { file, no }, meta.len()));
                }
            }
        }
        Ok(out)
    }

    /// Removes leftover temporary files (from writes a crash interrupted).
    pub fn clear_tmp(&self) {
        if let Ok(entries) = fs::read_dir(&self.tmp) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}
