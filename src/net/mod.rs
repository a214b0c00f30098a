//! Networking: multicast channel addresses and sockets pinned to one interface.

pub mod multicast;

pub use multicast::{ChannelAddrs, open_receiver, open_sender, recv_head};
