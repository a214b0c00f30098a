//! What a peer's disk must do for the executor ([`ChunkStore`], [`Disk`]), and the real disk:
//! a peer's directory tree ([`PeerDisk`]).

use std::io;

use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::chunk_files::{ChunkFiles, Staged};
use super::meta_file::MetaFile;
use super::{StorageError, TreeLock, start_writeback};
use crate::core::metadata::Changes;
use crate::core::{Metadata, Placement};
use crate::protocol::{ChunkKey, MAX_CHUNK_SIZE};

/// Chunk bodies on a peer's disk, written in two steps so that many become durable together:
/// [`ChunkStore::stage_chunk`] (not yet durable nor visible), then
/// [`ChunkStore::commit_chunks`] for a batch. A chunk is only ever visible complete and durable.
pub trait ChunkStore {
    /// A staged chunk, waiting for its commit.
    type Staged: Send;

    /// Writes a chunk's body where a crash may lose it.
    fn stage_chunk(&self, chunk: ChunkKey, body: &Bytes) -> Result<Self::Staged, StorageError>;
    /// Makes staged chunks durable and visible; one outcome per chunk, in the order given.
    fn commit_chunks(&self, staged: Vec<Self::Staged>) -> Vec<Result<(), StorageError>>;
    /// Reads a durable chunk.
    fn read_chunk(&self, chunk: &ChunkKey) -> Result<Vec<u8>, StorageError>;
    /// Removes a chunk (absent is fine).
    fn remove_chunk(&self, chunk: &ChunkKey) -> Result<(), StorageError>;
    /// Every durable chunk with its size.
    fn list_chunks(&self) -> Result<Vec<(ChunkKey, u64)>, StorageError>;
    /// Forgets what was staged and never committed (at start, after a crash).
    fn clear_staged(&self);
}

/// A peer's disk: its chunks, its persisted metadata, the files it backs up and the files it
/// restores.
pub trait Disk: ChunkStore + Send + Sync + 'static {
    /// The persisted metadata (a new peer's if there is none).
    fn load_metadata(&self) -> Result<Metadata, StorageError>;
    /// Saves what changed: `drain(snapshot)` takes the changes from the core (everything when
    /// `snapshot`) with the generation they bring the metadata to. `force_snapshot` asks for
    /// a full snapshot.
    fn save_metadata(
        &self,
        force_snapshot: bool,
        drain: impl FnOnce(bool) -> Option<(u64, Changes)>,
    ) -> Result<(), StorageError>;
    /// Generation of the metadata last saved.
    fn saved_generation(&self) -> u64;
    /// Reads `len` bytes at `offset` of a file being backed up.
    fn read_source(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Writes this peer's catalog document (durably, replacing the last one).
    fn write_catalog(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Whether a file being backed up still has the size and mtime (nanoseconds since the
    /// epoch) it had when opened.
    fn source_unchanged(&self, path: &Path, size: u64, mtime_ns: i64) -> bool;
    /// Creates a restore's temporary file with its final size.
    fn create_restore_file(&self, path: &Path, size: u64) -> io::Result<()>;
    /// Writes a restored chunk into a restore's temporary file.
    fn write_restored(&self, path: &Path, offset: u64, body: &[u8]) -> io::Result<()>;
    /// Gives a restored file its mode and mtime, makes it durable and moves it into place
    /// (creating the directories above it); fails rather than replace a file already there
    /// unless `placement.overwrite`.
    fn commit_restore(
        &self,
        tmp: &Path,
        dest: &Path,
        placement: Placement,
    ) -> Result<(), StorageError>;
    /// Removes a failed restore's temporary file.
    fn abort_restore(&self, tmp: &Path);
}

/// A restore starts the writeback of its file once every this many chunks (by chunk number),
/// so that the final fsync has little left (once per chunk costs more CPU).
const WRITEBACK_EVERY: u64 = 64;

impl ChunkStore for ChunkFiles {
    type Staged = Staged;

    fn stage_chunk(&self, chunk: ChunkKey, body: &Bytes) -> Result<Staged, StorageError> {
        self.stage(chunk, body)
    }

    fn commit_chunks(&self, staged: Vec<Staged>) -> Vec<Result<(), StorageError>> {
        self.commit(staged).into_iter().map(|(_, r)| r).collect()
    }

    fn read_chunk(&self, chunk: &ChunkKey) -> Result<Vec<u8>, StorageError> {
        self.read(chunk)
    }

    fn remove_chunk(&self, chunk: &ChunkKey) -> Result<(), StorageError> {
        self.remove(chunk)
    }

    fn list_chunks(&self) -> Result<Vec<(ChunkKey, u64)>, StorageError> {
        self.list()
    }

    fn clear_staged(&self) {
        self.clear_tmp()
    }
}

/// A peer's directory tree as its disk: chunk files, the metadata files, and the files it
/// backs up and restores (anywhere in the file system).
pub struct PeerDisk {
    /// The chunk files.
    pub files: ChunkFiles,
    /// The metadata files.
    pub meta_file: MetaFile,
    /// Held as long as the disk is open.
    _lock: TreeLock,
}

impl PeerDisk {
    /// Opens (creating if needed) the tree under `root`, first taking its lock: fails with
    /// [`StorageError::TreeInUse`] while another process has it open.
    pub fn open(root: &Path) -> Result<Self, StorageError> {
        let lock = TreeLock::acquire(root)?;
        let files = ChunkFiles::open(root)?;
        // Chunks, metadata and restored files are nobody else's business.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| StorageError::Io {
                    what: "make private",
                    path: root.to_path_buf(),
                    source,
                },
            )?;
        }
        let meta_file = MetaFile::new(root, files.tmp_dir());
        Ok(PeerDisk {
            files,
            meta_file,
            _lock: lock,
        })
    }
}

impl ChunkStore for PeerDisk {
    type Staged = Staged;

    fn stage_chunk(&self, chunk: ChunkKey, body: &Bytes) -> Result<Staged, StorageError> {
        self.files.stage_chunk(chunk, body)
    }

    fn commit_chunks(&self, staged: Vec<Staged>) -> Vec<Result<(), StorageError>> {
        self.files.commit_chunks(staged)
    }

    fn read_chunk(&self, chunk: &ChunkKey) -> Result<Vec<u8>, StorageError> {
        self.files.read(chunk)
    }

    fn remove_chunk(&self, chunk: &ChunkKey) -> Result<(), StorageError> {
        self.files.remove(chunk)
    }

    fn list_chunks(&self) -> Result<Vec<(ChunkKey, u64)>, StorageError> {
        self.files.list()
    }

    fn clear_staged(&self) {
        self.files.clear_tmp()
    }
}

impl Disk for PeerDisk {
    fn load_metadata(&self) -> Result<Metadata, StorageError> {
        self.meta_file.load()
    }

    fn save_metadata(
        &self,
        force_snapshot: bool,
        drain: impl FnOnce(bool) -> Option<(u64, Changes)>,
    ) -> Result<(), StorageError> {
        self.meta_file.save(force_snapshot, drain)
    }

    fn saved_generation(&self) -> u64 {
        self.meta_file.saved()
    }

    fn read_source(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = std::fs::File::open(path)?;
        let mut body = vec![0u8; len];
        file.read_exact_at(&mut body, offset)?;
        Ok(body)
    }

    fn write_catalog(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        super::write_atomic(self.files.tmp_dir(), path, bytes).map_err(io::Error::other)
    }

    fn source_unchanged(&self, path: &Path, size: u64, mtime_ns: i64) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.len() == size && mtime_of(&m) == mtime_ns)
    }

    fn create_restore_file(&self, path: &Path, size: u64) -> io::Result<()> {
        std::fs::File::create(path).and_then(|f| f.set_len(size))
    }

    fn write_restored(&self, path: &Path, offset: u64, body: &[u8]) -> io::Result<()> {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all_at(body, offset)?;
        if (offset / MAX_CHUNK_SIZE as u64).is_multiple_of(WRITEBACK_EVERY) {
            start_writeback(&f);
        }
        Ok(())
    }

    fn commit_restore(
        &self,
        tmp: &Path,
        dest: &Path,
        placement: Placement,
    ) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let dir = dest.parent().unwrap_or(Path::new("."));
        let finish = |f: std::fs::File| -> io::Result<()> {
            // The mode it had, or private when that is unknown (a catalog from before modes).
            let mode = if placement.mode != 0 {
                placement.mode & 0o7777
            } else {
                0o600
            };
            {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            if placement.mtime_ns != 0 {
                f.set_modified(system_time(placement.mtime_ns))?;
            }
            f.sync_all()?;
            std::fs::create_dir_all(dir)?;
            if placement.overwrite {
                std::fs::rename(tmp, dest)
            } else {
                // A hard link fails if `dest` exists: no file there is ever replaced.
                std::fs::hard_link(tmp, dest)?;
                std::fs::remove_file(tmp)
            }
        };
        std::fs::OpenOptions::new()
            .write(true)
            .open(tmp)
            .and_then(finish)
            .map_err(|source| StorageError::Io {
                what: "move the restored file to",
                path: dest.to_path_buf(),
                source,
            })?;
        super::sync_dir(dir)?;
        tracing::debug!(
            "restored file {} made durable in {:?}",
            dest.display(),
            started.elapsed()
        );
        Ok(())
    }

    fn abort_restore(&self, tmp: &Path) {
        let _ = std::fs::remove_file(tmp);
    }
}

/// The time `ns` nanoseconds after (before, if negative) the Unix epoch.
fn system_time(ns: i64) -> std::time::SystemTime {
    let offset = std::time::Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        std::time::UNIX_EPOCH + offset
    } else {
        std::time::UNIX_EPOCH - offset
    }
}

/// A file's modification time in nanoseconds since the epoch.
pub fn mtime_of(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}
