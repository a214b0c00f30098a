//! Chunk encryption: a home with a data key sends, and holders store, only ciphertext.
//!
//! Each chunk is sealed with XChaCha20-Poly1305 under its file's key (derived from the data
//! key and the file id), with the chunk's identity (file id, chunk number) as associated data.
//! The nonce is an HMAC, under another key of the file, of the chunk number and the plaintext
//! (a synthetic IV), so
//! that the same chunk always encrypts to the same bytes: a resumed backup, VERIFY's recorded
//! proofs and the "changed during the backup" check all compare ciphertexts. A body on the
//! wire is `nonce (24) | ciphertext | tag (16)`, so a chunk carries [`SEALED_PAYLOAD`] bytes of
//! the file instead of 64,000.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::keys::{DataKey, hmac};
use crate::protocol::{ChunkKey, MAX_CHUNK_SIZE};

/// Bytes encryption adds to a chunk: the nonce and the tag.
pub const OVERHEAD: usize = 24 + 16;
/// Bytes of a file an encrypted chunk carries.
pub const SEALED_PAYLOAD: usize = MAX_CHUNK_SIZE - OVERHEAD;

/// The chunk's identity, authenticated with it.
fn associated(chunk: &ChunkKey) -> [u8; 48] {
    let mut aad = [0u8; 48];
    aad[..12].copy_from_slice(b"dbs-chunk-v1");
    aad[12..44].copy_from_slice(&chunk.file.0);
    aad[44..].copy_from_slice(&chunk.no.to_be_bytes());
    aad
}

/// `plain` (at most [`SEALED_PAYLOAD`] bytes) of `chunk`, encrypted.
pub fn encrypt(key: &DataKey, chunk: &ChunkKey, plain: &[u8]) -> Vec<u8> {
    debug_assert!(plain.len() <= SEALED_PAYLOAD);
    let file_key = key.file_key(&chunk.file);
    let iv = hmac(
        &key.nonce_key(&chunk.file),
        &[b"dbs-chunk-nonce-v1", &chunk.no.to_be_bytes(), plain],
    );
    let nonce = XNonce::try_from(&iv[..24]).expect("24 bytes");
    let cipher = XChaCha20Poly1305::new_from_slice(file_key.as_ref()).expect("32-byte key");
    let aad = associated(chunk);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .expect("a chunk is far below XChaCha20's limit");
    let mut out = Vec::with_capacity(24 + sealed.len());
    out.extend_from_slice(&iv[..24]);
    out.extend_from_slice(&sealed);
    out
}

/// The plaintext of `body`, if it is `chunk` encrypted under `key` (`None`: not ours, or
/// altered).
pub fn decrypt(key: &DataKey, chunk: &ChunkKey, body: &[u8]) -> Option<Vec<u8>> {
    if body.len() < OVERHEAD {
        return None;
    }
    let (iv, sealed) = body.split_at(24);
    let file_key = key.file_key(&chunk.file);
    let cipher = XChaCha20Poly1305::new_from_slice(file_key.as_ref()).expect("32-byte key");
    let nonce = XNonce::try_from(iv).expect("24 bytes");
    let aad = associated(chunk);
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FileId;

    fn key(n: u8) -> DataKey {
        DataKey::from_secret(&[n; 32], 1)
    }

    fn chunk(no: u32) -> ChunkKey {
        ChunkKey {
            file: FileId([5; 32]),
            no,
        }
    }

    #[test]
    fn a_chunk_round_trips_deterministically_and_fits_a_body() {
        let plain = vec![0xab; SEALED_PAYLOAD];
        let body = encrypt(&key(1), &chunk(0), &plain);
        assert_eq!(body.len(), MAX_CHUNK_SIZE);
        assert_eq!(body, encrypt(&key(1), &chunk(0), &plain));
        assert_ne!(body, encrypt(&key(1), &chunk(1), &plain));
        assert_eq!(decrypt(&key(1), &chunk(0), &body).unwrap(), plain);
        assert_eq!(
            decrypt(&key(1), &chunk(0), &encrypt(&key(1), &chunk(0), b"")).unwrap(),
            b""
        );
    }

    #[test]
    fn another_key_chunk_or_an_altered_body_does_not_decrypt() {
        let body = encrypt(&key(1), &chunk(0), b"secret text");
        assert!(!body.windows(6).any(|w| w == b"secret"));
        assert!(decrypt(&key(2), &chunk(0), &body).is_none());
        assert!(decrypt(&key(1), &chunk(1), &body).is_none());
        let mut altered = body.clone();
        altered[30] ^= 1;
        assert!(decrypt(&key(1), &chunk(0), &altered).is_none());
        assert!(decrypt(&key(1), &chunk(0), &body[..39]).is_none());
    }
}
