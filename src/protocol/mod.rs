//! The wire protocol: identifiers (peer, file, chunk) and the message codec.

pub mod file_id;
pub mod ids;
pub mod message;

pub use ids::{ChunkHash, ChunkKey, ChunkNo, FileId, PeerId, Version};
pub use message::{CatalogTag, Message, MessageKind, ParseError, peek_sender};

/// Largest chunk body, in bytes (protocol.md §2).
pub const MAX_CHUNK_SIZE: usize = 64_000;
