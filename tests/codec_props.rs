//! Properties of the wire codec (protocol.md §2–§3): round trips of all six message types,
//! robustness against arbitrary and mutated datagrams, lenient input forms, canonical output and
//! exact-byte vectors with their rejection cases.

use dbs::protocol::{ChunkKey, FileId, MAX_CHUNK_SIZE, Message, MessageKind, ParseError, Version};
use proptest::prelude::*;
use proptest::sample::Index;

const HEX: &str = "6f1ed002ab5595859014ebf0951522d9a3f0c3b4d5e6f708192a3b4c5d6e7f80";

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// `len` pseudo-random bytes from `seed` (cheap even for 64 KB in a debug build, unlike a
/// proptest vector of 64,000 element strategies).
fn bytes_from_seed(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Bodies of 0..=64,000 bytes: mostly short, some large, some exactly at the limit.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![
        12 => 0..=300usize,
        2 => 0..=MAX_CHUNK_SIZE,
        1 => Just(MAX_CHUNK_SIZE),
        1 => Just(0usize),
    ];
    (len, any::<u64>()).prop_map(|(len, seed)| bytes_from_seed(len, seed))
}

fn file_id() -> impl Strategy<Value = FileId> {
    any::<[u8; 32]>().prop_map(FileId)
}

fn chunk_key() -> impl Strategy<Value = ChunkKey> {
    (file_id(), 0..=999_999u32).prop_map(|(file, no)| ChunkKey { file, no })
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![
        2 => Just(Version::V1_0),
        1 => (0..=9u8, 0..=9u8).prop_map(|(major, minor)| Version { major, minor }),
    ]
}

fn kind() -> impl Strategy<Value = MessageKind> {
    prop_oneof![
        (chunk_key(), 1..=9u8, body()).prop_map(|(chunk, degree, body)| MessageKind::Putchunk {
            chunk,
            degree,
            body: body.into()
        }),
        chunk_key().prop_map(|chunk| MessageKind::Stored { chunk }),
        chunk_key().prop_map(|chunk| MessageKind::Getchunk { chunk }),
        (chunk_key(), body()).prop_map(|(chunk, body)| MessageKind::Chunk {
            chunk,
            body: body.into()
        }),
        file_id().prop_map(|file| MessageKind::Delete { file }),
        chunk_key().prop_map(|chunk| MessageKind::Removed { chunk }),
        Just(MessageKind::Up),
        file_id().prop_map(|file| MessageKind::Deleted { file }),
        (chunk_key(), any::<[u8; 32]>())
            .prop_map(|(chunk, nonce)| MessageKind::Check { chunk, nonce }),
        any::<u32>().prop_map(|home| MessageKind::FindCatalog { home }),
        (
            file_id(),
            any::<(u32, u32, u64, [u8; 32])>(),
            0..=dbs::protocol::CatalogTag::MAX_SIZE
        )
            .prop_map(|(file, (home, generation, files, hash), size)| {
                MessageKind::CatalogHeld {
                    file,
                    tag: dbs::protocol::CatalogTag {
                        home,
                        generation: u64::from(generation),
                        size,
                        files,
                        hash: dbs::protocol::ChunkHash(hash),
                    },
                }
            }),
        (chunk_key(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(chunk, nonce, proof)| {
            MessageKind::Checked {
                chunk,
                nonce,
                proof,
            }
        }),
        Just(MessageKind::Alive),
        (
            file_id(),
            0u32..=999_999,
            prop::collection::btree_set(0u32..dbs::protocol::message::HOLDS_SPAN, 1..40)
        )
            .prop_map(|(file, base, offsets)| {
                let mut chunks: Vec<u32> = offsets
                    .into_iter()
                    .map(|o| base + o)
                    .filter(|&no| no <= 999_999)
                    .collect();
                if chunks.is_empty() {
                    chunks.push(base);
                }
                MessageKind::Holds { file, chunks }
            }),
        (chunk_key(), 1..=9u8, any::<u32>()).prop_map(|(chunk, degree, by)| MessageKind::Repair {
            chunk,
            degree,
            by
        }),
    ]
}

/// A HOLDS bitmap as the protocol describes it: one bit per chunk from the first, most
/// significant bit of each hex digit first, up to the digit of the last chunk.
fn bitmap(chunks: &[u32]) -> String {
    let first = chunks[0];
    let digits = (chunks[chunks.len() - 1] - first) / 4 + 1;
    (0..digits)
        .map(|d| {
            let v = (0..4)
                .filter(|b| chunks.contains(&(first + d * 4 + b)))
                .fold(0, |v, b| v | (8 >> b));
            char::from_digit(v, 16).unwrap()
        })
        .collect()
}

/// Extra header lines: non-empty printable ASCII, no CR/LF.
fn extra_lines() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec("[ -~]{1,40}", 1..4),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (version(), any::<u32>(), kind(), extra_lines()).prop_map(
        |(version, sender, kind, extra_lines)| Message {
            version,
            sender,
            kind,
            extra_lines,
        },
    )
}

/// The fields of a message's first header line, as we would send them.
fn header_fields(m: &Message) -> Vec<String> {
    let mut f = vec![
        m.kind.name().to_string(),
        m.version.to_string(),
        m.sender.to_string(),
    ];
    f.extend(m.kind.file().map(|file| file.to_hex()));
    match &m.kind {
        MessageKind::Putchunk { chunk, degree, .. } => {
            f.push(chunk.no.to_string());
            f.push(degree.to_string());
        }
        MessageKind::Stored { chunk }
        | MessageKind::Getchunk { chunk }
        | MessageKind::Chunk { chunk, .. }
        | MessageKind::Removed { chunk } => f.push(chunk.no.to_string()),
        MessageKind::Check { chunk, nonce } => {
            f.push(chunk.no.to_string());
            f.push(dbs::protocol::ids::hex_lower(nonce));
        }
        MessageKind::FindCatalog { home } => f.push(home.to_string()),
        MessageKind::CatalogHeld { tag, .. } => {
            f.extend(tag.fields().split(' ').map(str::to_string));
        }
        MessageKind::Checked {
            chunk,
            nonce,
            proof,
        } => {
            f.push(chunk.no.to_string());
            f.push(dbs::protocol::ids::hex_lower(nonce));
            f.push(dbs::protocol::ids::hex_lower(proof));
        }
        MessageKind::Holds { chunks, .. } => {
            f.push(chunks[0].to_string());
            f.push(bitmap(chunks));
        }
        MessageKind::Repair { chunk, degree, by } => {
            f.push(chunk.no.to_string());
            f.push(degree.to_string());
            f.push(by.to_string());
        }
        MessageKind::Delete { .. }
        | MessageKind::Up
        | MessageKind::Alive
        | MessageKind::Deleted { .. } => {}
    }
    f
}

fn body_of(m: &Message) -> &[u8] {
    match &m.kind {
        MessageKind::Putchunk { body, .. } | MessageKind::Chunk { body, .. } => body,
        _ => &[],
    }
}

/// Checks what every successfully parsed message must satisfy, and that its encoding is
/// canonical: lower-case file id, exactly one space before the first CRLF, and it parses back
/// to the same message.
fn check_parsed(m: &Message) -> Result<(), TestCaseError> {
    match &m.kind {
        MessageKind::Putchunk {
            chunk,
            degree,
            body,
        } => {
            prop_assert!((1..=9).contains(degree));
            prop_assert!(chunk.no <= 999_999);
            prop_assert!(body.len() <= MAX_CHUNK_SIZE);
        }
        MessageKind::Chunk { chunk, body } => {
            prop_assert!(chunk.no <= 999_999);
            prop_assert!(body.len() <= MAX_CHUNK_SIZE);
        }
        MessageKind::Stored { chunk }
        | MessageKind::Getchunk { chunk }
        | MessageKind::Removed { chunk }
        | MessageKind::Check { chunk, .. }
        | MessageKind::Checked { chunk, .. } => prop_assert!(chunk.no <= 999_999),
        MessageKind::Repair { chunk, degree, .. } => {
            prop_assert!(chunk.no <= 999_999);
            prop_assert!((1..=9).contains(degree));
        }
        MessageKind::Holds { chunks, .. } => {
            prop_assert!(chunks.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(chunks.iter().all(|&no| no <= 999_999));
            if let (Some(a), Some(b)) = (chunks.first(), chunks.last()) {
                prop_assert!(b - a < dbs::protocol::message::HOLDS_SPAN);
            }
        }
        MessageKind::Delete { .. }
        | MessageKind::Up
        | MessageKind::Alive
        | MessageKind::Deleted { .. }
        | MessageKind::FindCatalog { .. }
        | MessageKind::CatalogHeld { .. } => {}
    }
    check_canonical(m)
}

/// The encoding of `m` is canonical and parses back to `m`.
fn check_canonical(m: &Message) -> Result<(), TestCaseError> {
    let bytes = m.encode();
    let crlf = bytes
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("encoding has a CRLF");
    prop_assert!(crlf >= 2);
    prop_assert_eq!(bytes[crlf - 1], b' ', "one space before the first CRLF");
    prop_assert_ne!(
        bytes[crlf - 2],
        b' ',
        "only one space before the first CRLF"
    );
    let first = std::str::from_utf8(&bytes[..crlf - 1]).expect("ASCII first line");
    prop_assert!(!first.contains("  "), "single spaces between fields");
    let fields: Vec<&str> = first.split(' ').collect();
    let want = header_fields(m);
    prop_assert_eq!(
        &fields,
        &want.iter().map(String::as_str).collect::<Vec<_>>()
    );
    // The fourth field is the file id of every type but UP and FINDCATALOG.
    if let Some(hex) = fields.get(3).filter(|_| m.kind.file().is_some()) {
        prop_assert_eq!(hex.len(), 64);
        prop_assert!(
            hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "lower-case file id: {}",
            hex
        );
    }
    // The header is followed by exactly the body.
    let body = body_of(m);
    prop_assert!(bytes.ends_with(body));
    prop_assert!(bytes[..bytes.len() - body.len()].ends_with(b"\r\n\r\n"));
    let back = Message::parse(&bytes);
    prop_assert_eq!(
        back.as_ref(),
        Ok(m),
        "re-encoding parses back to the same message"
    );
    Ok(())
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Bytes that matter to the grammar are likelier than random ones.
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(&b" \r\n.0123456789abcdefABCDEFgG-+\x00\x7f\x80\xff"[..]),
    ];
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        (any::<Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

/// Where a mutation aims.
#[derive(Clone, Copy, Debug)]
enum Aim {
    /// Anywhere in the datagram.
    Anywhere,
    /// Within the header (up to and including the empty line).
    Header,
    /// Within 4 bytes of the end of the first header line, where line structure is decided.
    LineEnd,
}

fn aim() -> impl Strategy<Value = Aim> {
    prop_oneof![
        1 => Just(Aim::Anywhere),
        3 => Just(Aim::Header),
        2 => Just(Aim::LineEnd),
    ]
}

/// Applies `m` to `bytes`, at a position chosen by `index` within the window `aim` names, so
/// that the grammar gets exercised rather than the body.
fn apply(bytes: &mut Vec<u8>, m: &Mutation, aim: Aim) {
    let len = bytes.len();
    let (start, end) = match aim {
        Aim::Anywhere => (0, len),
        Aim::Header => (0, header_len(bytes)),
        Aim::LineEnd => {
            let crlf = bytes.windows(2).position(|w| w == b"\r\n").unwrap_or(len);
            (crlf.saturating_sub(4), (crlf + 4).min(len))
        }
    };
    // A position in start..end (or start..=end for insertions), clamped to the datagram.
    let at = |i: &Index, inclusive: bool| {
        let n = end - start + usize::from(inclusive);
        (start + i.index(n.max(1))).min(if inclusive { len } else { len - 1 })
    };
    match m {
        Mutation::Flip(i, bit) if len > 0 => bytes[at(i, false)] ^= 1 << bit,
        Mutation::Set(i, b) if len > 0 => bytes[at(i, false)] = *b,
        Mutation::Insert(i, b) => bytes.insert(at(i, true), *b),
        Mutation::Delete(i) if len > 0 => {
            bytes.remove(at(i, false));
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
        _ => {}
    }
}

fn header_len(bytes: &[u8]) -> usize {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |p| p + 4)
}

/// `n` cases, and no regression files written next to the tests.
fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// (a) Round trips, (c) lenient forms, (d) canonical output
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(400))]

    /// encode → parse gives the message back, for all six types, and the encoding is canonical.
    #[test]
    fn encode_parse_round_trip(m in message()) {
        check_canonical(&m)?;
    }

    /// Several spaces between fields, 0..3 spaces (instead of exactly one) before the CRLF and
    /// upper- or mixed-case hex all parse to the same message; its re-encoding is canonical.
    #[test]
    fn lenient_forms_parse_to_the_same_message(
        m in message(),
        gaps in prop::collection::vec(1..5usize, 8),
        trailing in 0..4usize,
        case in 0..3u8,
        case_seed in any::<u64>(),
    ) {
        let mut fields = header_fields(&m);
        let has_file = m.kind.file().is_some();
        if let Some(hex) = fields.get_mut(3).filter(|_| has_file) {
            *hex = match case {
                0 => hex.to_uppercase(),
                1 => hex
                    .chars()
                    .zip(bytes_from_seed(64, case_seed))
                    .map(|(c, r)| if r & 1 == 1 { c.to_ascii_uppercase() } else { c })
                    .collect(),
                _ => hex.clone(),
            };
        }
        let mut text = fields[0].clone();
        for (f, gap) in fields[1..].iter().zip(&gaps) {
            text.push_str(&" ".repeat(*gap));
            text.push_str(f);
        }
        text.push_str(&" ".repeat(trailing));
        text.push_str("\r\n");
        for line in &m.extra_lines {
            text.push_str(line);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body_of(&m));
        let parsed = Message::parse(&bytes);
        prop_assert_eq!(parsed.as_ref(), Ok(&m), "{:?}", String::from_utf8_lossy(&bytes[..header_len(&bytes)]));
        check_canonical(&parsed.unwrap())?;
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Parse never panics
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(300))]

    /// Arbitrary bytes up to ~70,000: parse returns (mostly Err) without panicking, and whatever
    /// it accepts satisfies the message invariants.
    #[test]
    fn parse_never_panics_on_random_bytes(
        len in prop_oneof![4 => 0..200usize, 1 => 0..70_000usize],
        seed in any::<u64>(),
    ) {
        let bytes = bytes_from_seed(len, seed);
        if let Ok(m) = Message::parse(&bytes) {
            check_parsed(&m)?;
        }
    }

    /// Random bytes with a valid-looking prefix and an empty line somewhere, so that parsing
    /// gets past the header search.
    #[test]
    fn parse_never_panics_on_random_headers(
        prefix in prop::sample::select(vec!["PUTCHUNK ", "STORED ", "GETCHUNK ", "CHUNK ", "DELETE ", "REMOVED ", ""]),
        header in prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(&b" \r\n.0123456789abcdefABCDEF"[..]),
                1 => any::<u8>(),
            ],
            0..120,
        ),
        body_len in prop_oneof![4 => 0..100usize, 1 => 63_990..64_010usize],
        seed in any::<u64>(),
    ) {
        let mut bytes = prefix.as_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(b"\r\n\r\n");
        bytes.extend_from_slice(&bytes_from_seed(body_len, seed));
        if let Ok(m) = Message::parse(&bytes) {
            check_parsed(&m)?;
        }
    }

    /// Mutations (flip, set, insert, delete bytes; truncate) of valid encodings: parse returns Ok
    /// or Err without panicking.
    #[test]
    fn parse_never_panics_on_mutated_messages(
        m in message(),
        mutations in prop::collection::vec((mutation(), aim()), 1..6),
    ) {
        let mut bytes = m.encode();
        for (mutation, aim) in &mutations {
            apply(&mut bytes, mutation, *aim);
        }
        let _ = Message::parse(&bytes);
    }
}

/// Edits that keep a valid encoding close to valid: line-structure bytes put into the header.
fn header_edit() -> impl Strategy<Value = Mutation> {
    let byte = prop::sample::select(&b" \r\n"[..]);
    prop_oneof![
        (any::<Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
    ]
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Whatever parses (here: valid encodings with spaces, CRs and LFs set, inserted or deleted
    /// in the header, or with general mutations) re-encodes canonically, with a lower-case file
    /// id and one space before the first CRLF, and that encoding parses back to the same message.
    #[test]
    fn parsed_mutations_re_encode_canonically(
        m in message(),
        mutations in prop::collection::vec(
            (prop_oneof![3 => header_edit(), 1 => mutation()], aim()),
            1..4,
        ),
    ) {
        let mut bytes = m.encode();
        for (mutation, aim) in &mutations {
            apply(&mut bytes, mutation, *aim);
        }
        if let Ok(parsed) = Message::parse(&bytes) {
            check_parsed(&parsed)?;
        }
    }
}

/// The shortest cases the property above found before bare LFs were refused.
#[test]
fn header_with_bare_lf_is_refused() {
    for text in [
        format!("STORED 1.0 2 {HEX} 0\n\r\n\r\n"),
        format!("STORED 1.0 2 {HEX} 0 \r\n\n\r\n\r\n"),
    ] {
        // Header lines end with CRLF: a bare LF is refused.
        assert_eq!(
            Message::parse(text.as_bytes()),
            Err(ParseError::BadLineEnd),
            "{text:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (e) Exact bytes and rejections
// ---------------------------------------------------------------------------------------------

fn key(no: u32) -> ChunkKey {
    ChunkKey {
        file: HEX.parse().unwrap(),
        no,
    }
}

#[test]
fn exact_bytes_of_all_six_types() {
    let cases: Vec<(MessageKind, u32, String)> = vec![
        (
            MessageKind::Putchunk {
                chunk: key(0),
                degree: 1,
                body: b"hello".to_vec().into(),
            },
            1,
            format!("PUTCHUNK 1.0 1 {HEX} 0 1 \r\n\r\nhello"),
        ),
        (
            MessageKind::Putchunk {
                chunk: key(999_999),
                degree: 9,
                body: Default::default(),
            },
            4_294_967_295,
            format!("PUTCHUNK 1.0 4294967295 {HEX} 999999 9 \r\n\r\n"),
        ),
        (
            MessageKind::Stored { chunk: key(12) },
            2,
            format!("STORED 1.0 2 {HEX} 12 \r\n\r\n"),
        ),
        (
            MessageKind::Getchunk { chunk: key(3) },
            0,
            format!("GETCHUNK 1.0 0 {HEX} 3 \r\n\r\n"),
        ),
        (
            MessageKind::Chunk {
                chunk: key(4),
                body: b"\r\n\r\nbody\x00\xff".to_vec().into(),
            },
            77,
            format!("CHUNK 1.0 77 {HEX} 4 \r\n\r\n\r\n\r\nbody\x00"),
        ),
        (
            MessageKind::Delete { file: key(0).file },
            5,
            format!("DELETE 1.0 5 {HEX} \r\n\r\n"),
        ),
        (
            MessageKind::Removed { chunk: key(999) },
            6,
            format!("REMOVED 1.0 6 {HEX} 999 \r\n\r\n"),
        ),
    ];
    for (kind, sender, text) in cases {
        let m = Message::new(Version::V1_0, sender, kind);
        let mut want = text.into_bytes();
        if let MessageKind::Chunk { .. } = m.kind {
            want.push(0xff); // not expressible in a Rust string
        }
        assert_eq!(
            m.encode(),
            want,
            "{:?}",
            String::from_utf8_lossy(&m.encode())
        );
        assert_eq!(
            Message::parse(&want),
            Ok(m),
            "{:?}",
            String::from_utf8_lossy(&want)
        );
    }
}

#[test]
fn exact_bytes_with_enhanced_version_and_extra_lines() {
    let mut m = Message::new(
        Version { major: 2, minor: 0 },
        3,
        MessageKind::Getchunk { chunk: key(1) },
    );
    m.extra_lines = vec!["PORT 4000".into(), " x ".into()];
    let want = format!("GETCHUNK 2.0 3 {HEX} 1 \r\nPORT 4000\r\n x \r\n\r\n").into_bytes();
    assert_eq!(m.encode(), want);
    assert_eq!(Message::parse(&want), Ok(m));
}

#[test]
fn body_limits_are_exact() {
    for name in ["PUTCHUNK", "CHUNK"] {
        let fields = if name == "PUTCHUNK" { "0 1" } else { "0" };
        let header = format!("{name} 1.0 2 {HEX} {fields} \r\n\r\n").into_bytes();
        let mut ok = header.clone();
        ok.resize(header.len() + MAX_CHUNK_SIZE, 7);
        let m = Message::parse(&ok).expect("64,000-byte body is accepted");
        assert_eq!(m.encode(), ok);
        let mut big = header.clone();
        big.resize(header.len() + MAX_CHUNK_SIZE + 1, 7);
        assert_eq!(
            Message::parse(&big),
            Err(ParseError::BodyTooLarge(MAX_CHUNK_SIZE + 1)),
            "{name}"
        );
    }
}

#[test]
fn rejects_malformed_messages_with_the_matching_error() {
    use ParseError::*;
    let h63 = &HEX[..63];
    let h65 = format!("{HEX}0");
    let hg = format!("{}g", &HEX[..63]);
    let mut cases: Vec<(String, ParseError)> = vec![
        // File ids.
        ("STORED 1.0 2 ../.. 0 \r\n\r\n".into(), BadFileId),
        ("PUTCHUNK 1.0 2 ../.. 0 1 \r\n\r\nx".into(), BadFileId),
        ("DELETE 1.0 2 ../.. \r\n\r\n".into(), BadFileId),
        (format!("STORED 1.0 2 {h63} 0 \r\n\r\n"), BadFileId),
        (format!("STORED 1.0 2 {h65} 0 \r\n\r\n"), BadFileId),
        (format!("DELETE 1.0 2 {h63} \r\n\r\n"), BadFileId),
        (format!("DELETE 1.0 2 {h65} \r\n\r\n"), BadFileId),
        (format!("GETCHUNK 1.0 2 {hg} 0 \r\n\r\n"), BadFileId),
        // Chunk numbers.
        (format!("STORED 1.0 2 {HEX} -1 \r\n\r\n"), BadChunkNo),
        (format!("GETCHUNK 1.0 2 {HEX} 1234567 \r\n\r\n"), BadChunkNo),
        (format!("REMOVED 1.0 2 {HEX} +1 \r\n\r\n"), BadChunkNo),
        (format!("CHUNK 1.0 2 {HEX} 1000000 \r\n\r\n"), BadChunkNo),
        (format!("PUTCHUNK 1.0 2 {HEX} -1 1 \r\n\r\n"), BadChunkNo),
        (
            format!("PUTCHUNK 1.0 2 {HEX} 1234567 1 \r\n\r\n"),
            BadChunkNo,
        ),
        (format!("PUTCHUNK 1.0 2 {HEX} +1 1 \r\n\r\n"), BadChunkNo),
        (format!("STORED 1.0 2 {HEX} 0x1 \r\n\r\n"), BadChunkNo),
        // Degrees.
        (format!("PUTCHUNK 1.0 2 {HEX} 0 0 \r\n\r\n"), BadDegree),
        (format!("PUTCHUNK 1.0 2 {HEX} 0 10 \r\n\r\n"), BadDegree),
        (format!("PUTCHUNK 1.0 2 {HEX} 0 -1 \r\n\r\n"), BadDegree),
        (format!("PUTCHUNK 1.0 2 {HEX} 0 01 \r\n\r\n"), BadDegree),
        // Bodies where none belongs.
        (
            format!("STORED 1.0 2 {HEX} 0 \r\n\r\nx"),
            UnexpectedBody("STORED", 1),
        ),
        (
            format!("GETCHUNK 1.0 2 {HEX} 0 \r\n\r\nxy"),
            UnexpectedBody("GETCHUNK", 2),
        ),
        (
            format!("DELETE 1.0 2 {HEX} \r\n\r\n\r\n"),
            UnexpectedBody("DELETE", 2),
        ),
        (
            format!("REMOVED 1.0 2 {HEX} 0 \r\n\r\nabc"),
            UnexpectedBody("REMOVED", 3),
        ),
        // Unknown types (some seen in the wild).
        (
            format!("HELLO 1.0 2 {HEX} 0 \r\n\r\n"),
            UnknownType("HELLO".into()),
        ),
        (
            "HELLO 2.0 2 \r\n\r\n".to_string(),
            UnknownType("HELLO".into()),
        ),
        // The enhanced types with wrong field counts.
        (
            format!("UP 2.0 2 {HEX} \r\n\r\n"),
            FieldCount {
                kind: "UP",
                expected: 3,
                got: 4,
            },
        ),
        (
            "DELETED 2.0 2 \r\n\r\n".into(),
            FieldCount {
                kind: "DELETED",
                expected: 4,
                got: 3,
            },
        ),
        (
            format!("CHECK 2.0 2 {HEX} 0 \r\n\r\n"),
            FieldCount {
                kind: "CHECK",
                expected: 6,
                got: 5,
            },
        ),
        (format!("CHECK 2.0 2 {HEX} 0 abc \r\n\r\n"), BadDigest),
        // A catalog over 1 GiB, or a generation past 32 bits, is not believed.
        (
            format!("CATALOG 2.0 2 {HEX} 1 4294967296 10 1 {HEX} \r\n\r\n"),
            BadCatalog,
        ),
        (
            format!("CATALOG 2.0 2 {HEX} 1 1 1073741825 1 {HEX} \r\n\r\n"),
            BadCatalog,
        ),
        (
            format!("CHECKED 2.0 2 {HEX} 0 {HEX} ../.. \r\n\r\n"),
            BadDigest,
        ),
        (
            format!("CHECKED 2.0 2 {HEX} 0 {HEX} {HEX} \r\n\r\nbody"),
            UnexpectedBody("CHECKED", 4),
        ),
        // Versions.
        (format!("STORED 1 2 {HEX} 0 \r\n\r\n"), BadVersion),
        (format!("STORED 1.0.0 2 {HEX} 0 \r\n\r\n"), BadVersion),
        (format!("STORED a.b 2 {HEX} 0 \r\n\r\n"), BadVersion),
        (format!("PUTCHUNK 1 2 {HEX} 0 1 \r\n\r\n"), BadVersion),
        (format!("DELETE 10.0 2 {HEX} \r\n\r\n"), BadVersion),
        // Sender ids.
        (format!("STORED 1.0 x {HEX} 0 \r\n\r\n"), BadSender),
        (format!("STORED 1.0 -2 {HEX} 0 \r\n\r\n"), BadSender),
        (format!("STORED 1.0 4294967296 {HEX} 0 \r\n\r\n"), BadSender),
        // Field counts.
        (
            format!("STORED 1.0 2 {HEX} \r\n\r\n"),
            FieldCount {
                kind: "STORED",
                expected: 5,
                got: 4,
            },
        ),
        (
            format!("PUTCHUNK 1.0 2 {HEX} 0 \r\n\r\n"),
            FieldCount {
                kind: "PUTCHUNK",
                expected: 6,
                got: 5,
            },
        ),
        (
            format!("DELETE 1.0 2 {HEX} 0 \r\n\r\n"),
            FieldCount {
                kind: "DELETE",
                expected: 4,
                got: 5,
            },
        ),
        // Headers without the empty line.
        (format!("STORED 1.0 2 {HEX} 0 \r\n"), MissingEmptyLine),
        (format!("STORED 1.0 2 {HEX} 0 "), MissingEmptyLine),
        (format!("STORED 1.0 2 {HEX} 0 \r\n\r"), MissingEmptyLine),
        (format!("STORED 1.0 2 {HEX} 0 \n\n"), MissingEmptyLine),
        (
            format!("PUTCHUNK 1.0 2 {HEX} 0 1 \r\nbody"),
            MissingEmptyLine,
        ),
        (String::new(), MissingEmptyLine),
    ];
    // Not ASCII in the header.
    cases.push((format!("STORED 1.0 2 {HEX} 0 é\r\n\r\n"), NotAscii));
    for (text, want) in cases {
        assert_eq!(Message::parse(text.as_bytes()), Err(want), "{text:?}");
    }
}

#[test]
fn lenient_examples_from_the_spec() {
    let upper = HEX.to_uppercase();
    let want = Message::new(Version::V1_0, 2, MessageKind::Stored { chunk: key(7) });
    for text in [
        format!("STORED 1.0 2 {HEX} 7 \r\n\r\n"),
        format!("STORED 1.0 2 {HEX} 7\r\n\r\n"),
        format!("STORED   1.0  2 {upper}   7   \r\n\r\n"),
        format!("STORED 1.0 2 {upper} 7\r\n\r\n"),
        format!("STORED 1.0 2 {HEX} 007 \r\n\r\n"),
    ] {
        let m = Message::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(m, want, "{text:?}");
        assert_eq!(
            m.encode(),
            format!("STORED 1.0 2 {HEX} 7 \r\n\r\n").into_bytes()
        );
    }
}
