//! Chunk bodies as files `chunks/<file id>/<chunk no>` in a peer's tree, written atomically.
//!
//! A write is two steps so that many chunks become durable together (group commit): the body
//! goes to a temporary file ([`ChunkFiles::stage`]), then [`ChunkFiles::commit`] fsyncs a batch
//! of staged files, renames them into place and fsyncs their directories. A chunk is only ever
//! visible under its final name complete and durable.

use std::fs;
use std::path::{Path, PathBuf};

use super::{StorageError, io_err, start_writeback};
use crate::protocol::ids::MAX_CHUNK_NO;
use crate::protocol::{ChunkKey, ChunkNo, FileId};

/// A chunk written to a temporary file, waiting for [`ChunkFiles::commit`].
#[derive(Debug)]
pub struct Staged {
    /// Which chunk.
    pub key: ChunkKey,
    file: fs::File,
    path: PathBuf,
}

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

    /// Writes a chunk atomically and durably (stage and commit it alone).
    pub fn write(&self, key: &ChunkKey, body: &[u8]) -> Result<(), StorageError> {
        let staged = self.stage(*key, body)?;
        self.commit(vec![staged]).pop().expect("one result").1
    }

    /// Writes a chunk's body to a temporary file, not yet durable nor visible.
    pub fn stage(&self, key: ChunkKey, body: &[u8]) -> Result<Staged, StorageError> {
        use std::io::Write;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.tmp)
            .map_err(io_err("create temporary file in", &self.tmp))?;
        tmp.write_all(body).map_err(io_err("write", tmp.path()))?;
        let (file, path) = tmp.keep().map_err(|e| StorageError::Io {
            what: "keep temporary file",
            path: self.tmp.clone(),
            source: e.error,
        })?;
        Ok(Staged { key, file, path })
    }

    /// Makes staged chunks durable and visible: fsync each, rename it into place, fsync the
    /// directories. Returns each chunk's outcome; a failed one's temporary file is removed.
    pub fn commit(&self, staged: Vec<Staged>) -> Vec<(ChunkKey, Result<(), StorageError>)> {
        // Start writing every file of the batch, then wait for each: the device gets the batch
        // at once instead of one file per fsync.
        for s in &staged {
            start_writeback(&s.file);
        }
        let mut dirs = std::collections::BTreeSet::new();
        let mut new_dirs = false;
        let mut out: Vec<(ChunkKey, Result<(), StorageError>)> = staged
            .into_iter()
            .map(|s| {
                let result = self.place(&s, &mut new_dirs);
                if result.is_err() {
                    let _ = fs::remove_file(&s.path);
                } else {
                    dirs.insert(self.file_dir(&s.key.file));
                }
                (s.key, result)
            })
            .collect();
        if new_dirs {
            dirs.insert(self.chunks.clone());
        }
        for dir in dirs {
            if let Err(e) = super::sync_dir(&dir) {
                tracing::error!("{e}");
                let file = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<FileId>().ok());
                for (key, result) in &mut out {
                    if result.is_ok() && (file.is_none() || file == Some(key.file)) {
                        *result = Err(io_err("sync directory", &dir)(std::io::Error::other(
                            "directory sync failed",
                        )));
                    }
                }
            }
        }
        out
    }

    fn place(&self, s: &Staged, new_dirs: &mut bool) -> Result<(), StorageError> {
        s.file.sync_data().map_err(io_err("sync", &s.path))?;
        let dir = self.file_dir(&s.key.file);
        let dest = self.path(&s.key);
        // A concurrent removal of the file's last chunk may remove its directory: retry once.
        for attempt in 0..2 {
            if !dir.exists() {
                fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
                *new_dirs = true;
            }
            match fs::rename(&s.path, &dest) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt == 0 => continue,
                Err(e) => return Err(io_err("rename into", &dest)(e)),
            }
        }
        unreachable!("the loop returns")
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
