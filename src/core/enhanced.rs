//! Extra header lines of the enhanced protocol (2.0): where an initiator takes chunk bodies over
//! TCP, and the mark of a CHUNK whose body travels over TCP.
//!
//! `GETCHUNK 2.0 …` may carry the line `TCP <ipv4>:<port>`; a holder that speaks 2.0 then
//! sends `CHUNK 2.0 …` with the line `BODY TCP` and no body on MDR (so the other holders stay
//! quiet) and the full CHUNK over TCP to that address.

use bytes::Bytes;
use std::net::SocketAddrV4;

use crate::protocol::{ChunkKey, Message, MessageKind, PeerId, Version};

/// The line a CHUNK header-only announcement carries.
pub const BODY_BY_TCP: &str = "BODY TCP";

/// The GETCHUNK line naming the initiator's TCP address.
pub fn tcp_reply_line(addr: SocketAddrV4) -> String {
    format!("TCP {addr}")
}

/// The TCP address in a GETCHUNK's extra lines, if any.
pub fn tcp_reply_address(lines: &[String]) -> Option<SocketAddrV4> {
    lines.iter().find_map(|l| {
        let mut words = l.split_ascii_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("TCP"), Some(addr), None) => addr.parse().ok(),
            _ => None,
        }
    })
}

/// The header-only CHUNK 2.0 a holder multicasts on MDR when the body goes over TCP.
pub fn header_only_chunk(sender: PeerId, chunk: ChunkKey) -> Message {
    let mut m = Message::new(
        Version::V2_0,
        sender,
        MessageKind::Chunk {
            chunk,
            body: Bytes::new(),
        },
    );
    m.extra_lines.push(BODY_BY_TCP.to_string());
    m
}

/// Whether a CHUNK's extra lines say its body travels over TCP.
pub fn body_by_tcp(lines: &[String]) -> bool {
    lines.iter().any(|l| l.trim() == BODY_BY_TCP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let addr: SocketAddrV4 = "127.0.0.1:4567".parse().unwrap();
        assert_eq!(tcp_reply_address(&[tcp_reply_line(addr)]), Some(addr));
        assert_eq!(tcp_reply_address(&["TCP nowhere".into()]), None);
        assert_eq!(
            tcp_reply_address(&["X 1".into(), "TCP 1.2.3.4:5 6".into()]),
            None
        );
        assert!(body_by_tcp(&["BODY TCP".into()]));
        assert!(!body_by_tcp(&[]));
    }
}
