//! Networking: multicast channel addresses and sockets pinned to one interface.

pub mod batch_recv;
pub mod gso;
pub mod lan;
pub mod multicast;

pub use multicast::{
    ChannelAddrs, RECV_BUFFER, open_receiver, open_sender, recv_buffer_size, recv_head,
};
