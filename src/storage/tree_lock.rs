//! The exclusive lock a peer holds on its tree while it runs, so that two processes never
//! write one tree at once (a second peer started on the same `--dir` is refused).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::{StorageError, io_err};

/// The lock file's name in the tree; it holds the pid of the process that has the lock.
pub const LOCK_FILE: &str = "peer.lock";

/// An exclusive `flock` on a tree's lock file, released when dropped (or when the process
/// ends, however it ends: the kernel drops the lock with the last descriptor).
#[derive(Debug)]
pub struct TreeLock {
    _file: File,
}

impl TreeLock {
    /// Takes the lock of the tree under `root` (creating `root` if needed), or fails with
    /// [`StorageError::TreeInUse`] naming the process that holds it.
    pub fn acquire(root: &Path) -> Result<TreeLock, StorageError> {
        std::fs::create_dir_all(root).map_err(io_err("create directory", root))?;
        let path = root.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open lock file", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut held_by = String::new();
                // Best effort: the holder may be writing its pid right now.
                let _ = file.read_to_string(&mut held_by);
                return Err(StorageError::TreeInUse {
                    path: PathBuf::from(root),
                    pid: held_by.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io_err("write lock file", &path))?;
        Ok(TreeLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_tree_fails_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("peer1");
        let first = TreeLock::acquire(&tree).unwrap();
        match TreeLock::acquire(&tree) {
            Err(StorageError::TreeInUse { path, pid }) => {
                assert_eq!(path, tree);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("second lock: {other:?}"),
        }
        drop(first);
        TreeLock::acquire(&tree).expect("the lock is free again");
    }
}
