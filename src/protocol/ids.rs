//! Identifiers on the wire: peer ids, file ids (SHA-256, 64 hex digits), chunk numbers, versions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A peer's permanent integer id.
pub type PeerId = u32;

/// A chunk number within a file: 0..=999_999 on the wire.
pub type ChunkNo = u32;

/// Largest chunk number the wire format can carry (6 decimal digits).
pub const MAX_CHUNK_NO: ChunkNo = 999_999;

/// A file id: 32 bytes, written on the wire as 64 hex digits (lower case when sent).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub [u8; 32]);

/// Why a string is not a file id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("file id must be 64 hexadecimal digits")]
pub struct BadFileId;

impl FileId {
    /// Parses 64 hex digits of either case.
    pub fn from_hex(s: &[u8]) -> Result<Self, BadFileId> {
        parse_hex(s).map(FileId).ok_or(BadFileId)
    }

    /// The 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex_lower(&self.0)
    }
}

/// Lower-case hex of arbitrary bytes (sha2 0.11 digests have no `{:x}`).
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses exactly `2 * N` hex digits of either case.
pub fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", &self.to_hex()[..12])
    }
}

impl FromStr for FileId {
    type Err = BadFileId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FileId::from_hex(s.as_bytes())
    }
}

impl Serialize for FileId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for FileId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// SHA-256 of a chunk body: recorded by the home at backup and by holders at write, checked
/// before a body is served or accepted.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// The hash of `body`.
    pub fn of(body: &[u8]) -> Self {
        use sha2::Digest;
        ChunkHash(sha2::Sha256::digest(body).into())
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkHash({})", &hex_lower(&self.0)[..12])
    }
}

impl Serialize for ChunkHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex_lower(&self.0))
    }
}

impl<'de> Deserialize<'de> for ChunkHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FileId::from_hex(s.as_bytes())
            .map(|id| ChunkHash(id.0))
            .map_err(|_| serde::de::Error::custom("chunk hash must be 64 hexadecimal digits"))
    }
}

/// One chunk of one file: what STORED, GETCHUNK, CHUNK and REMOVED name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ChunkKey {
    /// The file the chunk belongs to.
    pub file: FileId,
    /// The chunk's number within the file.
    pub no: ChunkNo,
}

impl fmt::Display for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.file, self.no)
    }
}

/// A protocol version `<digit>.<digit>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Version {
    /// Digit before the dot.
    pub major: u8,
    /// Digit after the dot.
    pub minor: u8,
}

impl Version {
    /// The base protocol, 1.0.
    pub const V1_0: Version = Version { major: 1, minor: 0 };
    /// The enhanced protocol, 2.0.
    pub const V2_0: Version = Version { major: 2, minor: 0 };

    /// Parses exactly `<digit>.<digit>`.
    pub fn parse(s: &[u8]) -> Option<Version> {
        match s {
            [a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit() => Some(Version {
                major: a - b'0',
                minor: b - b'0',
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse(s.as_bytes())
            .ok_or_else(|| format!("version must be <digit>.<digit>, got {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_id_hex_round_trip_and_case() {
        let lower = "6f1ed002ab5595859014ebf0951522d9a3f0c3b4d5e6f708192a3b4c5d6e7f80";
        let id: FileId = lower.parse().unwrap();
        assert_eq!(id.to_hex(), lower);
        let upper: FileId = lower.to_uppercase().parse().unwrap();
        assert_eq!(upper, id);
        assert!("../..".parse::<FileId>().is_err());
        assert!(lower[..63].parse::<FileId>().is_err());
        assert!(format!("{}g", &lower[..63]).parse::<FileId>().is_err());
    }

    #[test]
    fn version_syntax() {
        assert_eq!(Version::parse(b"1.0"), Some(Version::V1_0));
        assert_eq!(Version::parse(b"2.0").unwrap().to_string(), "2.0");
        for bad in [&b"1"[..], b"1.", b"10.0", b"a.0", b"1,0", b""] {
            assert_eq!(Version::parse(bad), None);
        }
    }
}
