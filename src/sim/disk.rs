//! A simulated disk: chunks staged (lost in a crash) and committed (durable), the persisted
//! metadata (saved snapshots and journal records applied to a copy), files backed up and
//! restored, and a capacity after which writes fail as a full disk does.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::copies::Copies;
use crate::core::metadata::Changes;
use crate::core::{Metadata, Placement};
use crate::protocol::ChunkKey;
use crate::storage::{ChunkStore, Disk, StorageError};

/// A chunk staged on a simulated disk.
pub struct SimStaged {
    chunk: ChunkKey,
    body: Bytes,
    /// The crash count when it was staged: a crash in between loses it.
    epoch: u64,
}

#[derive(Default)]
struct State {
    chunks: BTreeMap<ChunkKey, Bytes>,
    /// The metadata as saved (what a restart loads).
    persisted: Option<Metadata>,
    saved: u64,
    /// Files by path: the sources of backups, restores' temporary and final files. `false`:
    /// not yet durable (a crash loses it).
    files: BTreeMap<PathBuf, (Vec<u8>, bool)>,
    /// Bytes of chunks (staged and committed) and files, against `capacity`.
    used: u64,
    crashes: u64,
}

/// One peer's simulated disk. It survives the peer's crashes (less what was not durable).
pub struct SimDisk {
    who: u32,
    capacity: u64,
    state: Mutex<State>,
    /// Durable copies of every chunk, over all disks (for the invariants).
    copies: Arc<Copies>,
}

fn full(what: &'static str, path: PathBuf) -> StorageError {
    StorageError::Io {
        what,
        path,
        source: io::Error::new(io::ErrorKind::StorageFull, "No space left on device"),
    }
}

fn chunk_path(chunk: &ChunkKey) -> PathBuf {
    PathBuf::from(format!("chunks/{}/{}", chunk.file.to_hex(), chunk.no))
}

impl SimDisk {
    /// An empty disk of `capacity` bytes for peer `who`, counting its chunks in `copies`.
    pub fn new(who: u32, capacity: u64, copies: Arc<Copies>) -> Self {
        SimDisk {
            who,
            capacity,
            state: Mutex::new(State::default()),
            copies,
        }
    }

    /// A crash: what was staged or not yet durable is lost.
    pub fn crash(&self) {
        let mut st = self.state.lock();
        st.crashes += 1;
        let lost: u64 = st
            .files
            .values()
            .filter(|(_, durable)| !durable)
            .map(|(d, _)| d.len() as u64)
            .sum();
        st.files.retain(|_, (_, durable)| *durable);
        st.used -= lost;
        st.saved = 0;
    }

    /// Puts a durable file (a source to back up).
    pub fn put_file(&self, path: &Path, data: Vec<u8>) {
        let mut st = self.state.lock();
        st.used += data.len() as u64;
        st.files.insert(path.to_path_buf(), (data, true));
    }

    /// A file's contents, if it exists.
    pub fn file(&self, path: &Path) -> Option<Vec<u8>> {
        self.state.lock().files.get(path).map(|(d, _)| d.clone())
    }

    /// Removes a file.
    pub fn remove_file(&self, path: &Path) {
        let mut st = self.state.lock();
        if let Some((d, _)) = st.files.remove(path) {
            st.used -= d.len() as u64;
        }
    }

    /// The chunks held durably.
    pub fn chunk_keys(&self) -> Vec<ChunkKey> {
        self.state.lock().chunks.keys().copied().collect()
    }

    /// Whether `chunk` is held durably.
    pub fn holds(&self, chunk: &ChunkKey) -> bool {
        self.state.lock().chunks.contains_key(chunk)
    }

    /// Bytes of chunks held durably.
    pub fn chunk_bytes(&self) -> u64 {
        self.state
            .lock()
            .chunks
            .values()
            .map(|b| b.len() as u64)
            .sum()
    }

    fn reserve(
        &self,
        st: &mut State,
        bytes: u64,
        what: &'static str,
        path: PathBuf,
    ) -> Result<(), StorageError> {
        if st.used + bytes > self.capacity {
            return Err(full(what, path));
        }
        st.used += bytes;
        Ok(())
    }
}

impl ChunkStore for SimDisk {
    type Staged = SimStaged;

    fn stage_chunk(&self, chunk: ChunkKey, body: &Bytes) -> Result<SimStaged, StorageError> {
        let mut st = self.state.lock();
        self.reserve(&mut st, body.len() as u64, "write", chunk_path(&chunk))?;
        Ok(SimStaged {
            chunk,
            body: body.clone(), // shared with the datagram (and the other storers)
            epoch: st.crashes,
        })
    }

    fn commit_chunks(&self, staged: Vec<SimStaged>) -> Vec<Result<(), StorageError>> {
        let mut st = self.state.lock();
        staged
            .into_iter()
            .map(|s| {
                if s.epoch != st.crashes {
                    return Err(full("sync", chunk_path(&s.chunk)));
                }
                match st.chunks.insert(s.chunk, s.body) {
                    Some(old) => st.used -= old.len() as u64,
                    None => self.copies.add(s.chunk, self.who),
                }
                Ok(())
            })
            .collect()
    }

    fn read_chunk(&self, chunk: &ChunkKey) -> Result<Vec<u8>, StorageError> {
        self.state
            .lock()
            .chunks
            .get(chunk)
            .map(|b| b.to_vec())
            .ok_or_else(|| StorageError::Io {
                what: "read",
                path: chunk_path(chunk),
                source: io::ErrorKind::NotFound.into(),
            })
    }

    fn remove_chunk(&self, chunk: &ChunkKey) -> Result<(), StorageError> {
        let mut st = self.state.lock();
        if let Some(old) = st.chunks.remove(chunk) {
            st.used -= old.len() as u64;
            self.copies.remove(*chunk, self.who);
        }
        Ok(())
    }

    fn list_chunks(&self) -> Result<Vec<(ChunkKey, u64)>, StorageError> {
        let st = self.state.lock();
        Ok(st
            .chunks
            .iter()
            .map(|(k, b)| (*k, b.len() as u64))
            .collect())
    }

    fn clear_staged(&self) {
        // Staged chunks of an earlier life fail their commit (see `commit_chunks`); their
        // space was given back by the crash... except the bytes they reserved:
        // recompute from what is durable.
        let mut st = self.state.lock();
        let chunks: u64 = st.chunks.values().map(|b| b.len() as u64).sum();
        let files: u64 = st.files.values().map(|(d, _)| d.len() as u64).sum();
        st.used = chunks + files;
    }
}

impl Disk for SimDisk {
    fn load_metadata(&self) -> Result<Metadata, StorageError> {
        Ok(self.state.lock().persisted.clone().unwrap_or_default())
    }

    fn save_metadata(
        &self,
        force_snapshot: bool,
        drain: impl FnOnce(bool) -> Option<(u64, Changes)>,
    ) -> Result<(), StorageError> {
        let Some((generation, changes)) = drain(force_snapshot) else {
            return Ok(());
        };
        let mut st = self.state.lock();
        match changes {
            Changes::Snapshot { bytes, .. } => {
                let meta = Metadata::from_json(&bytes).map_err(|source| {
                    StorageError::CorruptMetadata {
                        path: "metadata.json".into(),
                        source,
                    }
                })?;
                st.persisted = Some(meta);
            }
            Changes::Records(records) => {
                let meta = st.persisted.get_or_insert_with(Metadata::default);
                for r in records {
                    meta.apply(r);
                }
            }
        }
        st.saved = generation;
        Ok(())
    }

    fn saved_generation(&self) -> u64 {
        self.state.lock().saved
    }

    fn write_catalog(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.put_file(path, bytes.to_vec());
        Ok(())
    }

    fn source_unchanged(&self, path: &Path, size: u64, _mtime_ns: i64) -> bool {
        // Simulated sources never change; one that went away (or shrank) counts as changed.
        self.state
            .lock()
            .files
            .get(path)
            .is_some_and(|(data, _)| data.len() as u64 == size)
    }

    fn read_source(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let st = self.state.lock();
        let (data, _) = st.files.get(path).ok_or(io::ErrorKind::NotFound)?;
        let start = offset as usize;
        data.get(start..start + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }

    fn create_restore_file(&self, path: &Path, size: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        self.reserve(&mut st, size, "create", path.to_path_buf())
            .map_err(|_| io::Error::new(io::ErrorKind::StorageFull, "No space left on device"))?;
        if let Some((old, _)) = st
            .files
            .insert(path.to_path_buf(), (vec![0; size as usize], false))
        {
            st.used -= old.len() as u64;
        }
        Ok(())
    }

    fn write_restored(&self, path: &Path, offset: u64, body: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        let (data, _) = st.files.get_mut(path).ok_or(io::ErrorKind::NotFound)?;
        let start = offset as usize;
        data.get_mut(start..start + body.len())
            .ok_or(io::ErrorKind::InvalidInput)?
            .copy_from_slice(body);
        Ok(())
    }

    fn commit_restore(
        &self,
        tmp: &Path,
        dest: &Path,
        placement: Placement,
    ) -> Result<(), StorageError> {
        let mut st = self.state.lock();
        if !placement.overwrite && st.files.contains_key(dest) {
            return Err(StorageError::Io {
                what: "move the restored file to",
                path: dest.to_path_buf(),
                source: io::ErrorKind::AlreadyExists.into(),
            });
        }
        let (data, _) = st.files.remove(tmp).ok_or_else(|| StorageError::Io {
            what: "move the restored file to",
            path: dest.to_path_buf(),
            source: io::ErrorKind::NotFound.into(),
        })?;
        if let Some((old, _)) = st.files.insert(dest.to_path_buf(), (data, true)) {
            st.used -= old.len() as u64;
        }
        Ok(())
    }

    fn abort_restore(&self, tmp: &Path) {
        self.remove_file(tmp);
    }
}
