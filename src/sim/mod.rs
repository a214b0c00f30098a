//! A deterministic simulator of a dbs group: N peers, each a real protocol core with the real
//! executor ([`crate::exec`]), on a virtual clock, a simulated multicast network (loss,
//! duplication, reordering, delay, partitions, bounded receive queues) and simulated disks
//! (a crash loses what was not durable; capacity runs out). One seed decides everything, so
//! the same seed gives the same trace, byte for byte; the invariants of `ops` are checked as
//! it runs.
//!
//! Run one with [`run`] on a [`Scenario`]; the `dbs-sim` binary does so from the command line.

mod copies;
mod disk;
mod effects;
mod invariants;
mod measure;
mod ops;
mod outcome;
mod scenario;
mod world;

pub use scenario::{PartitionSpec, Scenario, Summary, Versions, run, run_traced};
