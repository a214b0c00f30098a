//! How a home peer names its files: SHA-256 over the canonical path, size, modification time
//! and the peer's id (protocol.md §2), so that a changed file gets a new id.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{FileId, PeerId};

/// The file id of the file at canonical `path` with `size` bytes, modified at `mtime_ns`
/// nanoseconds since the epoch, backed up by `peer`.
pub fn file_id(path: &Path, size: u64, mtime_ns: i128, peer: PeerId) -> FileId {
    use std::os::unix::ffi::OsStrExt;
    let mut h = Sha256::new();
    h.update(b"dbs-file-id-v1\0");
    h.update(path.as_os_str().as_bytes());
    h.update(format!("\0{size}\0{mtime_ns}\0{peer}").as_bytes());
    FileId(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_with_every_input() {
        let base = file_id(Path::new("/a"), 1, 2, 3);
        assert_eq!(base, file_id(Path::new("/a"), 1, 2, 3));
        for other in [
            file_id(Path::new("/b"), 1, 2, 3),
            file_id(Path::new("/a"), 9, 2, 3),
            file_id(Path::new("/a"), 1, 9, 3),
            file_id(Path::new("/a"), 1, 2, 9),
        ] {
            assert_ne!(base, other);
        }
    }
}
