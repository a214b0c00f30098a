//! Secure groups (opt-in): the group key that authenticates every message, the home's data key
//! that encrypts its chunks and proves its deletions, and what they are used for.
//!
//! Plain 1.0/2.0 peers trust everyone on the LAN. A secure peer (`peer --group-key FILE
//! --data-key FILE`) seals every datagram and TCP frame it sends ([`envelope`]), drops every
//! one that is not sealed for its group, replayed or too old, encrypts the chunks of the files
//! it backs up ([`chunks`]), names them so that only it can delete them ([`ownership`]) and
//! obeys a DELETE only with its proof. Decisions and limits: docs/protocol.md, "Secure groups".

pub mod chunks;
pub mod envelope;
pub mod keys;
pub mod ownership;

pub use envelope::{Opener, Rejected, Sealer};
pub use keys::{DataKey, GroupKey, KeyError};
