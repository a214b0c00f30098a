//! dbs: a distributed backup service for a local network (library: protocol, storage, networking).
//!
//! The crate is layered so that the protocol logic can run without sockets or clocks:
//! - [`protocol`]: identifiers and the wire codec of the six 1.0 messages;
//! - [`core`]: the sans-IO protocol state machine (messages, timer events and client commands
//!   in; sends, disk actions and timers out);
//! - [`storage`]: chunk files and persisted metadata in a peer's directory tree;
//! - [`net`]: multicast sockets pinned to one interface;
//! - [`exec`]: the one executor of the core's actions, over a world's disk, network and timers;
//! - [`runtime`]: threads, worker pool and timer wheel that drive the core for real;
//! - [`sim`]: a deterministic simulated group (virtual clock, network and disks) of real cores;
//! - [`client`]: the access point and the line-delimited JSON API between TestApp and peer;
//! - [`log_limit`]: log lines of repeated events, rate-limited.

pub mod client;
pub mod core;
pub mod exec;
pub mod log_limit;
pub mod net;
pub mod protocol;
pub mod runtime;
pub mod secure;
pub mod sim;
pub mod storage;
