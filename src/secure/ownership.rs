//! Who may delete a file: only its home, even against other members of the group.
//!
//! A home with a data key names each file it backs up after a secret only it can derive: the
//! file's *delete secret* is `s = HMAC(data key's delete key, base | salt)`, where `base` is
//! the plain file id (protocol.md §2; for a catalog generation, its plain id) and `salt` is
//! drawn anew each time the file is registered (none for a catalog generation, whose name
//! RECOVER must find from its tag alone). The file id on the wire is
//! `SHA-256("dbs-owned-file-v2\0" | base | SHA-256(s))`. A DELETE reveals `s` and `base` in a
//! `PROOF <s> <base>` line; a secure holder deletes a file's copies only if they hash to the
//! file id. A file deleted and backed up again gets another salt, so another id: a revealed
//! secret deletes nothing else. The home keeps `base` and `salt` with the file (and in its
//! tombstone), to prove a deletion again after a restart or a RECOVER.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::keys::DataKey;
use crate::protocol::FileId;
use crate::protocol::ids::{hex_lower, parse_hex};

/// The header line that carries a DELETE's proof: `PROOF <64 hex digits> <64 hex digits>`.
pub const PROOF: &str = "PROOF";

/// The file id of plain id `base` whose delete secret is `secret`.
fn name(base: &FileId, secret: &[u8; 32]) -> FileId {
    let commitment: [u8; 32] = Sha256::digest(secret).into();
    let mut h = Sha256::new();
    h.update(b"dbs-owned-file-v2\0");
    h.update(base.0);
    h.update(commitment);
    FileId(h.finalize().into())
}

/// The file id a home with `key` gives the file whose plain id is `base`, registered with
/// `salt`.
pub fn owned_file_id(key: &DataKey, base: &FileId, salt: Option<&FileId>) -> FileId {
    name(base, &key.delete_secret(base, salt))
}

/// The `PROOF` line of a DELETE of the file whose plain id is `base`, registered with `salt`.
pub fn proof_line(key: &DataKey, base: &FileId, salt: Option<&FileId>) -> String {
    format!(
        "{PROOF} {} {}",
        hex_lower(key.delete_secret(base, salt).as_ref()),
        base
    )
}

/// Whether `lines` (a DELETE's extra header lines) prove that its sender may delete `file`.
pub fn proves(file: &FileId, lines: &[String]) -> bool {
    lines.iter().any(|l| {
        let mut words = l.split_ascii_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some(PROOF), Some(secret), Some(base), None) => {
                match (
                    parse_hex::<32>(secret.as_bytes()),
                    FileId::from_hex(base.as_bytes()),
                ) {
                    (Some(secret), Ok(base)) => bool::from(name(&base, &secret).0.ct_eq(&file.0)),
                    _ => false,
                }
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_home_can_prove_a_deletion_of_that_registration() {
        let home = DataKey::from_secret(&[1; 32], 1);
        let member = DataKey::from_secret(&[2; 32], 2);
        let base = FileId([7; 32]);
        let salt = FileId([9; 32]);
        let file = owned_file_id(&home, &base, Some(&salt));
        assert_ne!(file, base);
        assert!(proves(&file, &[proof_line(&home, &base, Some(&salt))]));
        assert!(proves(
            &file,
            &["X".into(), proof_line(&home, &base, Some(&salt))]
        ));
        assert!(!proves(&file, &[proof_line(&member, &base, Some(&salt))]));
        assert!(!proves(
            &file,
            &[proof_line(&home, &FileId([8; 32]), Some(&salt))]
        ));
        // Another registration of the same file (another salt) is another file id: the
        // revealed proof of one does not delete the other.
        let again = owned_file_id(&home, &base, Some(&FileId([10; 32])));
        assert_ne!(again, file);
        assert!(!proves(&again, &[proof_line(&home, &base, Some(&salt))]));
        assert_eq!(
            owned_file_id(&home, &base, None),
            owned_file_id(&home, &base, None)
        );
        assert!(!proves(&file, &[]));
        assert!(!proves(
            &file,
            &[format!("PROOF {} {base}", hex_lower(&file.0))]
        ));
        assert!(!proves(&file, &["PROOF zz".into(), "PROOF".into()]));
    }
}
