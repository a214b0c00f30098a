//! Key material: loading the group's shared secret and a home's data key from files (or a
//! passphrase, stretched with Argon2id), and deriving the keys each use takes with HKDF-SHA256.
//! Every key is zeroized when dropped and never printed.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::protocol::{FileId, PeerId};

/// A key file holds at least this many bytes (`head -c 32 /dev/urandom > FILE`).
pub const MIN_KEY_BYTES: usize = 32;

/// A passphrase has at least this many characters.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// Argon2id cost for a passphrase: 64 MiB, 3 passes, one lane (RFC 9106's second choice).
const ARGON2_M_KIB: u32 = 64 * 1024;
const ARGON2_T: u32 = 3;

/// Why a key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read the key file {path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Users other than its owner may read (or write) the file.
    #[error(
        "the key file {path} is accessible to other users (mode {mode:o}): run `chmod 600 {path}`"
    )]
    Exposed {
        /// Which file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is too short.
    #[error(
        "the key file {path} holds {len} bytes, fewer than {MIN_KEY_BYTES}: make one with \
         `head -c 32 /dev/urandom > {path}`"
    )]
    Short {
        /// Which file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The passphrase is too short.
    #[error("the passphrase in {path} has {chars} characters, fewer than {MIN_PASSPHRASE_CHARS}")]
    ShortPassphrase {
        /// Which file.
        path: PathBuf,
        /// Its length in characters.
        chars: usize,
    },
    /// Argon2id failed (never with the fixed parameters; kept typed).
    #[error("stretching the passphrase: {0}")]
    Stretch(String),
}

/// Reads a secret file, refusing one that other users can access.
fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let read = |source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(Zeroizing::new(std::fs::read(path).map_err(read)?))
}

/// HKDF-SHA256 of `ikm` (salt `salt`) expanded to 32 bytes for `info`.
fn derive(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

/// HMAC-SHA256 of `parts` under `key`.
pub(crate) fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The group's shared secret, as the key that authenticates messages.
pub struct GroupKey {
    mac: Zeroizing<[u8; 32]>,
}

impl GroupKey {
    /// The group key in `path` (at least [`MIN_KEY_BYTES`] bytes of any content, readable by
    /// its owner only).
    pub fn load(path: &Path) -> Result<GroupKey, KeyError> {
        let secret = read_secret(path)?;
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::Short {
                path: path.to_path_buf(),
                len: secret.len(),
            });
        }
        Ok(GroupKey::from_secret(&secret))
    }

    /// The group key of a secret (tests, the simulator).
    pub fn from_secret(secret: &[u8]) -> GroupKey {
        GroupKey {
            mac: derive(b"dbs-group-v1", secret, b"message authentication"),
        }
    }

    /// The key every message's MAC is made with.
    pub(crate) fn mac_key(&self) -> &[u8; 32] {
        &self.mac
    }
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GroupKey(..)")
    }
}

/// A home's data key: encrypts its chunks and makes its delete secrets. Derived from what the
/// user keeps (the key file or the passphrase) and the peer id, so that it comes back after
/// the home's disk is lost.
pub struct DataKey {
    chunks: Zeroizing<[u8; 32]>,
    delete: Zeroizing<[u8; 32]>,
}

impl DataKey {
    /// The data key of peer `me` from the key file `path` (like a group key file).
    pub fn load(path: &Path, me: PeerId) -> Result<DataKey, KeyError> {
        let secret = read_secret(path)?;
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::Short {
                path: path.to_path_buf(),
                len: secret.len(),
            });
        }
        Ok(DataKey::from_secret(&secret, me))
    }

    /// The data key of peer `me` from the passphrase in `path` (its first line), stretched
    /// with Argon2id (64 MiB, 3 passes; about a second), salted with the peer id.
    pub fn from_passphrase_file(path: &Path, me: PeerId) -> Result<DataKey, KeyError> {
        let text = read_secret(path)?;
        let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let chars = String::from_utf8_lossy(line).chars().count();
        if chars < MIN_PASSPHRASE_CHARS {
            return Err(KeyError::ShortPassphrase {
                path: path.to_path_buf(),
                chars,
            });
        }
        let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, 1, Some(32))
            .map_err(|e| KeyError::Stretch(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = format!("dbs-data-passphrase-v1 peer {me}");
        let mut stretched = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(line, salt.as_bytes(), stretched.as_mut())
            .map_err(|e| KeyError::Stretch(e.to_string()))?;
        Ok(DataKey::from_secret(stretched.as_ref(), me))
    }

    /// The data key of peer `me` from a secret (tests, the simulator).
    pub fn from_secret(secret: &[u8], me: PeerId) -> DataKey {
        let info = format!("peer {me}");
        let mut root = derive(b"dbs-data-v1", secret, info.as_bytes());
        let key = DataKey {
            chunks: derive(b"dbs-data-v1 chunks", root.as_ref(), b""),
            delete: derive(b"dbs-data-v1 delete", root.as_ref(), b""),
        };
        root.zeroize();
        key
    }

    /// The key that encrypts the chunks of `file`.
    pub(crate) fn file_key(&self, file: &FileId) -> Zeroizing<[u8; 32]> {
        derive(b"dbs-chunk-key-v1", self.chunks.as_ref(), &file.0)
    }

    /// The key the chunks of `file` derive their nonces with (not the encryption key).
    pub(crate) fn nonce_key(&self, file: &FileId) -> Zeroizing<[u8; 32]> {
        derive(b"dbs-chunk-nonce-key-v1", self.chunks.as_ref(), &file.0)
    }

    /// The delete secret of the file whose base id is `base`, registered with `salt` (see
    /// [`super::ownership`]).
    pub(crate) fn delete_secret(
        &self,
        base: &FileId,
        salt: Option<&FileId>,
    ) -> Zeroizing<[u8; 32]> {
        let salt = salt.map_or(&[][..], |s| &s.0[..]);
        Zeroizing::new(hmac(&self.delete, &[b"dbs-delete-v2", &base.0, salt]))
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key_file(dir: &Path, bytes: &[u8], mode: u32) -> PathBuf {
        let path = dir.join("key");
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn key_files_must_be_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let p = key_file(dir.path(), &[7; 32], 0o644);
        assert!(matches!(
            GroupKey::load(&p),
            Err(KeyError::Exposed { mode: 0o644, .. })
        ));
        let p = key_file(dir.path(), &[7; 31], 0o600);
        assert!(matches!(
            GroupKey::load(&p),
            Err(KeyError::Short { len: 31, .. })
        ));
        let p = key_file(dir.path(), &[7; 32], 0o400);
        assert!(GroupKey::load(&p).is_ok());
        assert!(DataKey::load(&p, 1).is_ok());
        let missing = dir.path().join("none");
        assert!(matches!(
            GroupKey::load(&missing),
            Err(KeyError::Read { .. })
        ));
    }

    #[test]
    fn data_keys_depend_on_the_secret_and_the_peer_and_come_back() {
        let f = FileId([3; 32]);
        let a = DataKey::from_secret(&[1; 32], 1);
        assert_eq!(
            *a.file_key(&f),
            *DataKey::from_secret(&[1; 32], 1).file_key(&f)
        );
        assert_ne!(
            *a.file_key(&f),
            *DataKey::from_secret(&[1; 32], 2).file_key(&f)
        );
        assert_ne!(
            *a.file_key(&f),
            *DataKey::from_secret(&[2; 32], 1).file_key(&f)
        );
        assert_ne!(*a.file_key(&f), *a.file_key(&FileId([4; 32])));
        assert_ne!(*a.delete_secret(&f, None), *a.file_key(&f));
        assert_ne!(*a.nonce_key(&f), *a.file_key(&f));
        assert_eq!(format!("{a:?}"), "DataKey(..)");
    }

    #[test]
    fn a_passphrase_is_stretched_with_the_peer_id_as_salt() {
        let dir = tempfile::tempdir().unwrap();
        let p = key_file(dir.path(), b"correct horse battery\n", 0o600);
        let f = FileId([3; 32]);
        let a = DataKey::from_passphrase_file(&p, 1).unwrap();
        let again = DataKey::from_passphrase_file(&p, 1).unwrap();
        assert_eq!(*a.file_key(&f), *again.file_key(&f));
        let other = DataKey::from_passphrase_file(&p, 2).unwrap();
        assert_ne!(*a.file_key(&f), *other.file_key(&f));
        let short = key_file(dir.path(), b"too short\n", 0o600);
        assert!(matches!(
            DataKey::from_passphrase_file(&short, 1),
            Err(KeyError::ShortPassphrase { chars: 9, .. })
        ));
    }
}
