//! The runtime that drives the protocol core for real: receiver threads, a bounded worker
//! pool, a timer wheel, paced sender threads, and the disk.

mod actions;
mod commands;
pub mod node;
pub mod pool;
pub mod sender;
pub mod supervise;
pub mod tcp;
pub mod timer;

pub use node::{Node, NodeConfig, NodeError};
