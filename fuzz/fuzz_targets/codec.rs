//! Arbitrary datagrams → `Message::parse` (the wire codec, protocol.md §3).
//!
//! `parse` must never panic. When it accepts a datagram, the message must satisfy the codec's
//! invariants (tests/codec_props.rs): degree 1..=9 (PUTCHUNK, REPAIR), chunk number at most
//! 999,999, HOLDS chunk numbers ascending within `HOLDS_SPAN`, body at most 64,000 bytes and
//! only on PUTCHUNK / CHUNK, extra header lines non-empty without CR or LF.
//! Its encoding must parse back to the same message and be a fixed point (encode ∘ parse ∘
//! encode = encode), and `peek_sender` (used by the receivers to skip their own multicasts)
//! must agree with the full parse on the sender.
#![no_main]

use dbs::protocol::message::HOLDS_SPAN;
use dbs::protocol::{MAX_CHUNK_SIZE, Message, MessageKind, peek_sender};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::parse(data) else {
        return;
    };
    match &m.kind {
        MessageKind::Putchunk {
            chunk,
            degree,
            body,
        } => {
            assert!((1..=9).contains(degree), "degree {degree}");
            assert!(chunk.no <= 999_999, "chunk no {}", chunk.no);
            assert!(body.len() <= MAX_CHUNK_SIZE, "body {}", body.len());
        }
        MessageKind::Chunk { chunk, body } => {
            assert!(chunk.no <= 999_999, "chunk no {}", chunk.no);
            assert!(body.len() <= MAX_CHUNK_SIZE, "body {}", body.len());
        }
        MessageKind::Stored { chunk }
        | MessageKind::Getchunk { chunk }
        | MessageKind::Removed { chunk }
        | MessageKind::Check { chunk, .. }
        | MessageKind::Checked { chunk, .. } => {
            assert!(chunk.no <= 999_999, "chunk no {}", chunk.no)
        }
        MessageKind::Repair { chunk, degree, .. } => {
            assert!(chunk.no <= 999_999, "chunk no {}", chunk.no);
            assert!((1..=9).contains(degree), "degree {degree}");
        }
        MessageKind::Holds { chunks, .. } => {
            assert!(
                chunks.windows(2).all(|w| w[0] < w[1]),
                "HOLDS not ascending"
            );
            assert!(
                chunks.iter().all(|&no| no <= 999_999),
                "HOLDS chunk no > 999,999"
            );
            if let (Some(first), Some(last)) = (chunks.first(), chunks.last()) {
                assert!(last - first < HOLDS_SPAN, "HOLDS spans {first}..={last}");
            }
        }
        MessageKind::Delete { .. }
        | MessageKind::Up
        | MessageKind::Deleted { .. }
        | MessageKind::FindCatalog { .. }
        | MessageKind::CatalogHeld { .. }
        | MessageKind::Alive => {}
    }
    for line in &m.extra_lines {
        assert!(
            !line.is_empty() && !line.contains(['\r', '\n']),
            "bad extra header line {line:?}"
        );
    }

    let bytes = m.encode();
    let back = Message::parse(&bytes)
        .unwrap_or_else(|e| panic!("the encoding of a parsed message does not parse: {e}"));
    assert_eq!(back, m, "encode → parse is not the identity");
    assert_eq!(back.encode(), bytes, "the encoding is not canonical");

    // The receivers skip their own datagrams by peeking at the sender: it must never name a
    // different sender than the full parse (it may give up, None, on a first line > 256 bytes).
    if let Some(s) = peek_sender(data) {
        assert_eq!(s, m.sender, "peek_sender disagrees with parse");
    }
    assert_eq!(
        peek_sender(&bytes),
        Some(m.sender),
        "peek_sender on the canonical encoding"
    );
});
