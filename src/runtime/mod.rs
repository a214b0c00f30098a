//! The runtime that drives the protocol core for real: receiver threads, a bounded worker
//! pool, a timer wheel, paced sender threads, and the disk, as the world of the shared
//! executor ([`crate::exec`]).

mod backup_ops;
mod batch;
mod client_ops;
mod effects;
pub mod metrics;
pub mod node;
pub mod pool;
mod receive;
mod replies;
mod restore_ops;
pub mod sender;
pub mod supervise;
pub mod tcp;
pub mod timer;
mod verify_ops;

pub use metrics::{MetricsError, MetricsServer};
pub use node::{Node, NodeConfig, NodeError};
