//! Who may delete a file: only its home, even against other members of the group.
//!
//! A home with a data key names each file it backs up by a commitment to a secret only it can
//! derive: the file's *delete secret* is `HMAC(data key's delete key, base)`, where `base` is
//! the plain file id (protocol.md §2; for a catalog generation, its plain id), and the file
//! id on the wire is `SHA-256("dbs-owned-file-v1\0" | delete secret)`. A DELETE reveals the
//! secret in a `PROOF <hex>` line; a secure holder deletes a file's copies only if the proof
//! hashes to the file id. The home keeps `base` with the file (and in its tombstone), so
//! that it can prove a deletion again after a restart or a RECOVER.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::keys::DataKey;
use crate::protocol::FileId;
use crate::protocol::ids::{hex_lower, parse_hex};

/// The header line that carries a DELETE's proof: `PROOF <64 hex digits>`.
pub const PROOF: &str = "PROOF";

/// The file id committed to by `secret`.
fn commitment(secret: &[u8; 32]) -> FileId {
    let mut h = Sha256::new();
    h.update(b"dbs-owned-file-v1\0");
    h.update(secret);
    FileId(h.finalize().into())
}

/// The file id a home with `key` gives the file whose plain id is `base`.
pub fn owned_file_id(key: &DataKey, base: &FileId) -> FileId {
    commitment(&key.delete_secret(base))
}

/// The `PROOF` line of a DELETE of the file whose plain id is `base`.
pub fn proof_line(key: &DataKey, base: &FileId) -> String {
    format!("{PROOF} {}", hex_lower(&key.delete_secret(base)))
}

/// Whether `lines` (a DELETE's extra header lines) prove that its sender may delete `file`.
pub fn proves(file: &FileId, lines: &[String]) -> bool {
    lines.iter().any(|l| {
        let mut words = l.split_ascii_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(PROOF), Some(hex), None) => parse_hex::<32>(hex.as_bytes())
                .is_some_and(|secret| bool::from(commitment(&secret).0.ct_eq(&file.0))),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_home_can_prove_a_deletion() {
        let home = DataKey::from_secret(&[1; 32], 1);
        let member = DataKey::from_secret(&[2; 32], 2);
        let base = FileId([7; 32]);
        let file = owned_file_id(&home, &base);
        assert_ne!(file, base);
        assert!(proves(&file, &[proof_line(&home, &base)]));
        assert!(proves(&file, &["X".into(), proof_line(&home, &base)]));
        assert!(!proves(&file, &[proof_line(&member, &base)]));
        assert!(!proves(&file, &[proof_line(&home, &FileId([8; 32]))]));
        assert!(!proves(&file, &[]));
        assert!(!proves(&file, &[format!("PROOF {}", hex_lower(&file.0))]));
        assert!(!proves(&file, &["PROOF zz".into(), "PROOF".into()]));
    }
}
