//! Parsing and encoding of protocol messages (protocol.md §3), apart from any I/O.
//!
//! We send exactly `TYPE <ver> <id> <fileid> [<chunkNo> [<deg>]] \r\n\r\n` with a lower-case
//! file id and accept more: several spaces between fields, no trailing space, upper-case hex and
//! extra header lines (kept, for enhanced versions). The enhanced (2.0) types UP, DELETED,
//! FINDCATALOG, CATALOG, CHECK, CHECKED, ALIVE, HOLDS and REPAIR are parsed too; a 1.0 peer
//! ignores them.

use bytes::Bytes;

use super::MAX_CHUNK_SIZE;
use super::ids::{ChunkKey, ChunkNo, FileId, PeerId, Version, hex_lower, parse_hex};

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Protocol version the sender speaks.
    pub version: Version,
    /// Id of the sending peer.
    pub sender: PeerId,
    /// The type with its own fields and body.
    pub kind: MessageKind,
    /// Header lines after the first (enhanced versions), without their CRLF; never empty and
    /// never containing CR or LF.
    pub extra_lines: Vec<String>,
}

/// The six 1.0 message types with their fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Initiator asks peers to store a chunk (MDB).
    Putchunk {
        /// Which chunk.
        chunk: ChunkKey,
        /// Desired replication degree, 1..=9.
        degree: u8,
        /// Chunk bytes, at most 64,000.
        body: Bytes,
    },
    /// A peer holds the chunk (MC).
    Stored {
        /// Which chunk.
        chunk: ChunkKey,
    },
    /// Initiator asks for a chunk (MC).
    Getchunk {
        /// Which chunk.
        chunk: ChunkKey,
    },
    /// A holder answers GETCHUNK (MDR).
    Chunk {
        /// Which chunk.
        chunk: ChunkKey,
        /// Chunk bytes, at most 64,000.
        body: Bytes,
    },
    /// Initiator asks every peer to drop a file's chunks (MC).
    Delete {
        /// Which file.
        file: FileId,
    },
    /// A peer dropped its copy of a chunk (MC).
    Removed {
        /// Which chunk.
        chunk: ChunkKey,
    },
    /// Enhanced (2.0): a peer started and is reachable (MC).
    Up,
    /// Enhanced (2.0): a peer removed every chunk of a file after DELETE (MC).
    Deleted {
        /// Which file.
        file: FileId,
    },
    /// Enhanced (2.0): a peer asks who holds catalog generations of peer `home` (MC).
    FindCatalog {
        /// Whose catalog.
        home: PeerId,
    },
    /// Enhanced (2.0): a holder of chunks of a catalog generation says so (MC).
    CatalogHeld {
        /// The generation's file id.
        file: FileId,
        /// What it is.
        tag: CatalogTag,
    },
    /// Enhanced (2.0): the home asks the holders of a chunk to prove they have it (MC).
    Check {
        /// Which chunk.
        chunk: ChunkKey,
        /// A value the holder hashes with the chunk (32 bytes, 64 hex digits on the wire).
        nonce: [u8; 32],
    },
    /// Enhanced (2.0): a holder's answer to CHECK (MC): the nonce it answers, and the proof
    /// (see `core::verify::proof`).
    Checked {
        /// Which chunk.
        chunk: ChunkKey,
        /// The CHECK's nonce (an answer to an earlier CHECK is told apart).
        nonce: [u8; 32],
        /// SHA-256 of the nonce and (part of) the chunk (`core::verify::proof`; 64 hex digits
        /// on the wire).
        proof: [u8; 32],
    },
    /// Enhanced (2.0): a peer is alive (MC, every few seconds).
    Alive,
    /// Enhanced (2.0): the chunks of a file a peer holds (MC; on the wire the first chunk
    /// number and a bitmap from it, at most [`HOLDS_SPAN`] chunks per message).
    Holds {
        /// Which file.
        file: FileId,
        /// Chunk numbers held, ascending, spanning at most [`HOLDS_SPAN`].
        chunks: Vec<ChunkNo>,
    },
    /// Enhanced (2.0): a file's home asks holder `by` to re-back up a chunk whose live
    /// holders are fewer than `degree` (MC).
    Repair {
        /// Which chunk.
        chunk: ChunkKey,
        /// Its desired degree.
        degree: u8,
        /// The holder asked to do it.
        by: PeerId,
    },
}

/// Chunks one HOLDS message covers at most: a bitmap of 1,000 hex digits, so that the
/// datagram fits an Ethernet frame.
pub const HOLDS_SPAN: u32 = 4000;

/// What a catalog generation is: whose, which, how large, how many files, its SHA-256 (on the
/// wire: `<home> <generation> <size> <files> <hash>`, in CATALOG messages and in the `CATALOG`
/// line of the PUTCHUNK 2.0 of its chunks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CatalogTag {
    /// The peer whose catalog it is.
    pub home: PeerId,
    /// Its generation (1, 2, ...).
    pub generation: u64,
    /// The document's size in bytes.
    pub size: u64,
    /// Files (versions and links included) it lists.
    pub files: u64,
    /// SHA-256 of the document.
    pub hash: super::ids::ChunkHash,
}

impl CatalogTag {
    /// A catalog document is at most this large (a million files of about a kilobyte each);
    /// a tag naming more is not believed.
    pub const MAX_SIZE: u64 = 1 << 30;

    /// The five wire fields.
    pub fn fields(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.home,
            self.generation,
            self.size,
            self.files,
            hex_lower(&self.hash.0)
        )
    }

    /// Parses the five wire fields.
    pub fn parse(fields: &[&[u8]]) -> Option<CatalogTag> {
        let [home, generation, size, files, hash] = fields else {
            return None;
        };
        let num = |f: &[u8]| -> Option<u64> {
            (f.len() <= 20 && f.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(f).ok()?.parse().ok())
                .flatten()
        };
        Some(CatalogTag {
            home: parse_sender(home).ok()?,
            // Generations are version numbers (32 bits) of the catalog's path.
            generation: num(generation).filter(|g| *g <= u64::from(u32::MAX))?,
            size: num(size).filter(|s| *s <= CatalogTag::MAX_SIZE)?,
            files: num(files)?,
            hash: super::ids::ChunkHash(parse_hex(hash)?),
        })
    }
}

/// The `CATALOG …` extra line of a PUTCHUNK 2.0 of a catalog chunk.
pub fn catalog_line(tag: &CatalogTag) -> String {
    format!("CATALOG {}", tag.fields())
}

/// The catalog tag in a PUTCHUNK's extra lines, if any.
pub fn catalog_in(lines: &[String]) -> Option<CatalogTag> {
    lines.iter().find_map(|l| {
        let words: Vec<&[u8]> = l
            .as_bytes()
            .split(|&b| b == b' ')
            .filter(|w| !w.is_empty())
            .collect();
        match words.split_first() {
            Some((&b"CATALOG", rest)) => CatalogTag::parse(rest),
            _ => None,
        }
    })
}

/// Why a datagram is not a message we understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No CRLF CRLF ends the header.
    #[error("header does not end with an empty line (CRLF CRLF)")]
    MissingEmptyLine,
    /// A header line contains a CR or LF that is not part of a CRLF line end.
    #[error("header line contains a bare CR or LF")]
    BadLineEnd,
    /// Header bytes are not ASCII.
    #[error("header is not ASCII")]
    NotAscii,
    /// The message type is not one we know.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// Version is not `<digit>.<digit>`.
    #[error("version is not <digit>.<digit>")]
    BadVersion,
    /// Sender id is not a decimal number that fits in 32 bits.
    #[error("sender id is not a decimal number")]
    BadSender,
    /// File id is not 64 hex digits.
    #[error("file id is not 64 hex digits")]
    BadFileId,
    /// Chunk number is not 1 to 6 decimal digits.
    #[error("chunk number is not 1 to 6 decimal digits")]
    BadChunkNo,
    /// A catalog's fields are not `<home> <generation> <size> <files> <64 hex digits>`.
    #[error("catalog fields are not <home> <generation> <size> <files> <hash>")]
    BadCatalog,
    /// A HOLDS bitmap is not 1 to 1,000 hex digits within the chunk numbers.
    #[error("HOLDS bitmap is not 1 to 1000 hex digits within chunk 999999")]
    BadBitmap,
    /// A nonce or proof is not 64 hex digits.
    #[error("nonce or proof is not 64 hex digits")]
    BadDigest,
    /// Replication degree is not one digit 1..=9.
    #[error("replication degree is not one digit 1-9")]
    BadDegree,
    /// Too few or too many fields on the first header line.
    #[error("{kind} takes {expected} fields, got {got}")]
    FieldCount {
        /// Message type.
        kind: &'static str,
        /// Fields it takes.
        expected: usize,
        /// Fields present.
        got: usize,
    },
    /// A message type without a body has one.
    #[error("{0} carries no body, got {1} bytes")]
    UnexpectedBody(&'static str, usize),
    /// Body larger than a chunk.
    #[error("body of {0} bytes exceeds 64000")]
    BodyTooLarge(usize),
}

impl MessageKind {
    /// The type name as written on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            MessageKind::Putchunk { .. } => "PUTCHUNK",
            MessageKind::Stored { .. } => "STORED",
            MessageKind::Getchunk { .. } => "GETCHUNK",
            MessageKind::Chunk { .. } => "CHUNK",
            MessageKind::Delete { .. } => "DELETE",
            MessageKind::Removed { .. } => "REMOVED",
            MessageKind::Up => "UP",
            MessageKind::Deleted { .. } => "DELETED",
            MessageKind::FindCatalog { .. } => "FINDCATALOG",
            MessageKind::CatalogHeld { .. } => "CATALOG",
            MessageKind::Check { .. } => "CHECK",
            MessageKind::Checked { .. } => "CHECKED",
            MessageKind::Alive => "ALIVE",
            MessageKind::Holds { .. } => "HOLDS",
            MessageKind::Repair { .. } => "REPAIR",
        }
    }

    /// The file the message is about (none for UP).
    pub fn file(&self) -> Option<FileId> {
        match self {
            MessageKind::Delete { file }
            | MessageKind::Deleted { file }
            | MessageKind::CatalogHeld { file, .. }
            | MessageKind::Holds { file, .. } => Some(*file),
            MessageKind::Putchunk { chunk, .. }
            | MessageKind::Repair { chunk, .. }
            | MessageKind::Stored { chunk }
            | MessageKind::Getchunk { chunk }
            | MessageKind::Chunk { chunk, .. }
            | MessageKind::Removed { chunk }
            | MessageKind::Check { chunk, .. }
            | MessageKind::Checked { chunk, .. } => Some(chunk.file),
            MessageKind::Up | MessageKind::Alive | MessageKind::FindCatalog { .. } => None,
        }
    }
}

impl Message {
    /// A message with no extra header lines.
    pub fn new(version: Version, sender: PeerId, kind: MessageKind) -> Self {
        Message {
            version,
            sender,
            kind,
            extra_lines: Vec::new(),
        }
    }

    /// Encodes the message into one datagram.
    pub fn encode(&self) -> Vec<u8> {
        let body: &[u8] = match &self.kind {
            MessageKind::Putchunk { body, .. } | MessageKind::Chunk { body, .. } => body,
            _ => &[],
        };
        let mut out = Vec::with_capacity(160 + body.len());
        self.encode_header(&mut out);
        out.extend_from_slice(body);
        out
    }

    /// Appends the header (up to and including the empty line) to `out`.
    pub fn encode_header(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let kind = &self.kind;
        let _ = write!(out, "{} {} {}", kind.name(), self.version, self.sender);
        if let Some(file) = kind.file() {
            let _ = write!(out, " {file}");
        }
        match kind {
            MessageKind::Putchunk { chunk, degree, .. } => {
                let _ = write!(out, " {} {}", chunk.no, degree);
            }
            MessageKind::Stored { chunk }
            | MessageKind::Getchunk { chunk }
            | MessageKind::Chunk { chunk, .. }
            | MessageKind::Removed { chunk } => {
                let _ = write!(out, " {}", chunk.no);
            }
            MessageKind::FindCatalog { home } => {
                let _ = write!(out, " {home}");
            }
            MessageKind::CatalogHeld { tag, .. } => {
                let _ = write!(out, " {}", tag.fields());
            }
            MessageKind::Check { chunk, nonce } => {
                let _ = write!(out, " {} {}", chunk.no, hex_lower(nonce));
            }
            MessageKind::Checked {
                chunk,
                nonce,
                proof,
            } => {
                let _ = write!(
                    out,
                    " {} {} {}",
                    chunk.no,
                    hex_lower(nonce),
                    hex_lower(proof)
                );
            }
            MessageKind::Holds { chunks, .. } => {
                let first = chunks.first().copied().unwrap_or(0);
                let _ = write!(out, " {first} {}", holds_bitmap(first, chunks));
            }
            MessageKind::Repair { chunk, degree, by } => {
                let _ = write!(out, " {} {degree} {by}", chunk.no);
            }
            MessageKind::Delete { .. }
            | MessageKind::Up
            | MessageKind::Alive
            | MessageKind::Deleted { .. } => {}
        }
        out.extend_from_slice(b" \r\n");
        for line in &self.extra_lines {
            debug_assert!(
                !line.is_empty() && !line.contains(['\r', '\n']),
                "bad header line {line:?}"
            );
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Parses one datagram (copying its body). Never panics; anything not understood is an
    /// error.
    pub fn parse(datagram: &[u8]) -> Result<Message, ParseError> {
        Self::parse_with(datagram, |body| Bytes::copy_from_slice(&datagram[body]))
    }

    /// [`Message::parse`] of a shared datagram: the body is a slice of it, not a copy (the
    /// receivers of one multicast share its bytes).
    pub fn parse_shared(datagram: &Bytes) -> Result<Message, ParseError> {
        Self::parse_with(datagram, |body| datagram.slice(body))
    }

    fn parse_with(
        datagram: &[u8],
        take_body: impl FnOnce(std::ops::Range<usize>) -> Bytes,
    ) -> Result<Message, ParseError> {
        let end = find_header_end(datagram).ok_or(ParseError::MissingEmptyLine)?;
        let header = &datagram[..end];
        let body = &datagram[end + 4..];
        if !header.is_ascii() {
            return Err(ParseError::NotAscii);
        }
        let lines: Vec<&[u8]> = split_crlf(header);
        if lines
            .iter()
            .any(|l| l.contains(&b'\r') || l.contains(&b'\n'))
        {
            return Err(ParseError::BadLineEnd);
        }
        let mut lines = lines.into_iter();
        let first = lines.next().unwrap_or_default();
        let extra_lines = lines
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let fields: Vec<&[u8]> = first
            .split(|&b| b == b' ')
            .filter(|f| !f.is_empty())
            .collect();
        let type_name = *fields
            .first()
            .ok_or(ParseError::UnknownType(String::new()))?;
        let (name, expected, has_body): (&'static str, usize, bool) = match type_name {
            b"PUTCHUNK" => ("PUTCHUNK", 6, true),
            b"STORED" => ("STORED", 5, false),
            b"GETCHUNK" => ("GETCHUNK", 5, false),
            b"CHUNK" => ("CHUNK", 5, true),
            b"DELETE" => ("DELETE", 4, false),
            b"REMOVED" => ("REMOVED", 5, false),
            b"UP" => ("UP", 3, false),
            b"DELETED" => ("DELETED", 4, false),
            b"FINDCATALOG" => ("FINDCATALOG", 4, false),
            b"CATALOG" => ("CATALOG", 9, false),
            b"CHECK" => ("CHECK", 6, false),
            b"CHECKED" => ("CHECKED", 7, false),
            b"ALIVE" => ("ALIVE", 3, false),
            b"HOLDS" => ("HOLDS", 6, false),
            b"REPAIR" => ("REPAIR", 7, false),
            other => {
                return Err(ParseError::UnknownType(
                    String::from_utf8_lossy(&other[..other.len().min(32)]).into_owned(),
                ));
            }
        };
        let version = fields
            .get(1)
            .and_then(|v| Version::parse(v))
            .ok_or(ParseError::BadVersion)?;
        if fields.len() != expected {
            return Err(ParseError::FieldCount {
                kind: name,
                expected,
                got: fields.len(),
            });
        }
        let sender = parse_sender(fields[2])?;
        if has_body {
            if body.len() > MAX_CHUNK_SIZE {
                return Err(ParseError::BodyTooLarge(body.len()));
            }
        } else if !body.is_empty() {
            return Err(ParseError::UnexpectedBody(name, body.len()));
        }
        if name == "UP" || name == "ALIVE" || name == "FINDCATALOG" {
            let kind = match name {
                "UP" => MessageKind::Up,
                "ALIVE" => MessageKind::Alive,
                _ => MessageKind::FindCatalog {
                    home: parse_sender(fields[3])?,
                },
            };
            return Ok(Message {
                version,
                sender,
                kind,
                extra_lines,
            });
        }
        let file = FileId::from_hex(fields[3]).map_err(|_| ParseError::BadFileId)?;
        let chunk = || -> Result<ChunkKey, ParseError> {
            Ok(ChunkKey {
                file,
                no: parse_chunk_no(fields[4])?,
            })
        };
        let body_at = end + 4..datagram.len();
        let kind = match name {
            "PUTCHUNK" => MessageKind::Putchunk {
                chunk: chunk()?,
                degree: parse_degree(fields[5])?,
                body: take_body(body_at),
            },
            "STORED" => MessageKind::Stored { chunk: chunk()? },
            "GETCHUNK" => MessageKind::Getchunk { chunk: chunk()? },
            "CHUNK" => MessageKind::Chunk {
                chunk: chunk()?,
                body: take_body(body_at),
            },
            "DELETE" => MessageKind::Delete { file },
            "DELETED" => MessageKind::Deleted { file },
            "CATALOG" => MessageKind::CatalogHeld {
                file,
                tag: CatalogTag::parse(&fields[4..]).ok_or(ParseError::BadCatalog)?,
            },
            "CHECK" => MessageKind::Check {
                chunk: chunk()?,
                nonce: parse_hex(fields[5]).ok_or(ParseError::BadDigest)?,
            },
            "CHECKED" => MessageKind::Checked {
                chunk: chunk()?,
                nonce: parse_hex(fields[5]).ok_or(ParseError::BadDigest)?,
                proof: parse_hex(fields[6]).ok_or(ParseError::BadDigest)?,
            },
            "HOLDS" => MessageKind::Holds {
                file,
                chunks: parse_holds(fields[4], fields[5])?,
            },
            "REPAIR" => MessageKind::Repair {
                chunk: chunk()?,
                degree: parse_degree(fields[5])?,
                by: parse_sender(fields[6])?,
            },
            _ => MessageKind::Removed { chunk: chunk()? },
        };
        Ok(Message {
            version,
            sender,
            kind,
            extra_lines,
        })
    }
}

/// The sender id of a datagram, read from its first header line only: cheap enough for a
/// receiver thread to skip its own multicasts without copying or parsing them. `None` when the
/// first line has no valid sender field (the full parse then refuses the datagram).
pub fn peek_sender(datagram: &[u8]) -> Option<PeerId> {
    let head = &datagram[..datagram.len().min(256)];
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let mut fields = head[..end].split(|&b| b == b' ').filter(|f| !f.is_empty());
    fields.nth(2).and_then(|f| parse_sender(f).ok())
}

/// The HOLDS bitmap of `chunks` from `first`: one bit per chunk, most significant bit of each
/// hex digit first, lower-case, trailing zero digits left out (at least one digit).
fn holds_bitmap(first: ChunkNo, chunks: &[ChunkNo]) -> String {
    let span = chunks.last().map_or(0, |&l| l - first + 1);
    let mut digits = vec![0u8; span.div_ceil(4).max(1) as usize];
    for &no in chunks {
        let i = no - first;
        digits[(i / 4) as usize] |= 8 >> (i % 4);
    }
    digits
        .into_iter()
        .map(|d| char::from_digit(u32::from(d), 16).expect("a hex digit"))
        .collect()
}

/// The chunk numbers of a HOLDS's first chunk number and bitmap.
fn parse_holds(first: &[u8], bitmap: &[u8]) -> Result<Vec<ChunkNo>, ParseError> {
    let first = parse_chunk_no(first)?;
    if bitmap.is_empty() || bitmap.len() > (HOLDS_SPAN / 4) as usize {
        return Err(ParseError::BadBitmap);
    }
    let mut chunks = Vec::new();
    for (i, &c) in bitmap.iter().enumerate() {
        let d = char::from(c).to_digit(16).ok_or(ParseError::BadBitmap)?;
        for bit in 0..4 {
            if d & (8 >> bit) != 0 {
                let no = first + (i as u32) * 4 + bit;
                if no > crate::protocol::ids::MAX_CHUNK_NO {
                    return Err(ParseError::BadBitmap);
                }
                chunks.push(no);
            }
        }
    }
    Ok(chunks)
}

/// Splits header bytes (without the final CRLF CRLF) at each CRLF.
fn split_crlf(header: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut rest = header;
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        lines.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    lines.push(rest);
    lines
}

/// Index of the CRLF CRLF that ends the header.
fn find_header_end(d: &[u8]) -> Option<usize> {
    d.windows(4).position(|w| w == b"\r\n\r\n")
}

fn all_digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

fn parse_sender(s: &[u8]) -> Result<PeerId, ParseError> {
    if !all_digits(s) || s.len() > 10 {
        return Err(ParseError::BadSender);
    }
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ParseError::BadSender)
}

fn parse_chunk_no(s: &[u8]) -> Result<ChunkNo, ParseError> {
    if !all_digits(s) || s.len() > 6 {
        return Err(ParseError::BadChunkNo);
    }
    Ok(s.iter().fold(0, |n, d| n * 10 + ChunkNo::from(d - b'0')))
}

fn parse_degree(s: &[u8]) -> Result<u8, ParseError> {
    match s {
        [d @ b'1'..=b'9'] => Ok(d - b'0'),
        _ => Err(ParseError::BadDegree),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "6f1ed002ab5595859014ebf0951522d9a3f0c3b4d5e6f708192a3b4c5d6e7f80";

    fn key(no: ChunkNo) -> ChunkKey {
        ChunkKey {
            file: HEX.parse().unwrap(),
            no,
        }
    }

    #[test]
    fn peeks_the_sender_of_the_first_line() {
        let m = Message::new(Version::V1_0, 42, MessageKind::Stored { chunk: key(3) });
        assert_eq!(peek_sender(&m.encode()), Some(42));
        assert_eq!(peek_sender(b"UP 2.0 7 \r\n\r\n"), Some(7));
        assert_eq!(peek_sender(b"STORED 1.0 x \r\n\r\n"), None);
        assert_eq!(peek_sender(b"no line end"), None);
    }

    #[test]
    fn encodes_exact_bytes() {
        let m = Message::new(Version::V1_0, 2, MessageKind::Stored { chunk: key(0) });
        assert_eq!(
            m.encode(),
            format!("STORED 1.0 2 {HEX} 0 \r\n\r\n").into_bytes()
        );
        let m = Message::new(
            Version::V1_0,
            17,
            MessageKind::Putchunk {
                chunk: key(999_999),
                degree: 3,
                body: Bytes::from_static(b"abc"),
            },
        );
        assert_eq!(
            m.encode(),
            format!("PUTCHUNK 1.0 17 {HEX} 999999 3 \r\n\r\nabc").into_bytes()
        );
        let m = Message::new(Version::V1_0, 1, MessageKind::Delete { file: key(0).file });
        assert_eq!(
            m.encode(),
            format!("DELETE 1.0 1 {HEX} \r\n\r\n").into_bytes()
        );
        let v2 = Version::V2_0;
        let m = Message::new(v2, 4, MessageKind::Up);
        assert_eq!(Message::parse(&m.encode()), Ok(m.clone()));
        assert_eq!(m.encode(), b"UP 2.0 4 \r\n\r\n".to_vec());
        let m = Message::new(v2, 4, MessageKind::Deleted { file: key(0).file });
        assert_eq!(
            m.encode(),
            format!("DELETED 2.0 4 {HEX} \r\n\r\n").into_bytes()
        );
        let m = Message::new(Version::V1_0, 1, MessageKind::Delete { file: key(0).file });
        assert_eq!(
            m.encode(),
            format!("DELETE 1.0 1 {HEX} \r\n\r\n").into_bytes()
        );
    }

    #[test]
    fn accepts_lenient_forms() {
        let upper = HEX.to_uppercase();
        for text in [
            format!("STORED 1.0 2 {HEX} 7\r\n\r\n"),
            format!("STORED   1.0  2 {upper}   7   \r\n\r\n"),
            format!("STORED 1.0 2 {HEX} 7 \r\nX-Extra: yes\r\n\r\n"),
        ] {
            let m = Message::parse(text.as_bytes()).unwrap();
            assert_eq!(m.kind, MessageKind::Stored { chunk: key(7) }, "{text:?}");
            assert_eq!(m.sender, 2);
        }
        let m = Message::parse(format!("GETCHUNK 2.0 3 {HEX} 1 \r\nPORT 4000\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(m.extra_lines, vec!["PORT 4000".to_string()]);
        assert_eq!(m.version.to_string(), "2.0");
    }

    #[test]
    fn rejects_malformed() {
        use ParseError::*;
        let cases: Vec<(Vec<u8>, ParseError)> = vec![
            (
                format!("STORED 1.0 2 {HEX} 0 \r\n").into(),
                MissingEmptyLine,
            ),
            (b"STORED 1.0 2 ../.. 0 \r\n\r\n".to_vec(), BadFileId),
            (format!("STORED 1.0 2 {HEX} -1 \r\n\r\n").into(), BadChunkNo),
            (
                format!("STORED 1.0 2 {HEX} 1000000 \r\n\r\n").into(),
                BadChunkNo,
            ),
            (
                format!("PUTCHUNK 1.0 2 {HEX} 0 0 \r\n\r\n").into(),
                BadDegree,
            ),
            (
                format!("PUTCHUNK 1.0 2 {HEX} 0 10 \r\n\r\n").into(),
                BadDegree,
            ),
            (
                format!("STORED 1.0 2 {HEX} 0 \r\n\r\nx").into(),
                UnexpectedBody("STORED", 1),
            ),
            (
                format!("HELLO 1.0 2 {HEX} 0 \r\n\r\n").into(),
                UnknownType("HELLO".into()),
            ),
            (format!("STORED 1 2 {HEX} 0 \r\n\r\n").into(), BadVersion),
            (format!("STORED 1.0 x {HEX} 0 \r\n\r\n").into(), BadSender),
            (
                format!("STORED 1.0 2 {HEX} \r\n\r\n").into(),
                FieldCount {
                    kind: "STORED",
                    expected: 5,
                    got: 4,
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                Message::parse(&bytes),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let mut big = format!("CHUNK 1.0 2 {HEX} 0 \r\n\r\n").into_bytes();
        big.resize(big.len() + MAX_CHUNK_SIZE + 1, 0);
        assert_eq!(Message::parse(&big), Err(BodyTooLarge(MAX_CHUNK_SIZE + 1)));
    }
}
