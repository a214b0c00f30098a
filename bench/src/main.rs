//! dbs-bench: measures the raw limits of this machine for dbs (loss-free multicast rate of
//! 64,000-byte datagrams, rate of durable 64,000-byte chunk files), the CPU cost of a secure
//! group's cryptography, and checks replication from the peers' STATE; `scripts/bench.sh`
//! runs it and the peers. Each subcommand prints one JSON line on stdout; progress goes to
//! stderr.

mod crypto;
mod disk;
mod multicast;
mod replication;

use std::net::SocketAddrV4;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Size of every datagram and chunk file the measurements use: a full chunk body.
pub const CHUNK_BYTES: usize = 64_000;

/// Raw limits of this machine for dbs, and a replication check.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Highest paced rate at which 64,000-byte datagrams reach every receiving process with no
    /// loss (doubling, then bisecting; each trial a fixed number of datagrams).
    Multicast(multicast::Options),
    /// Receiving process of `multicast` and `mc-send`: counts the datagrams of the newest
    /// trial and answers `count <trial>` lines on stdin with `<trial> <datagrams> <bytes>
    /// <µs from the first to the last>`. Started by `multicast`, or by a harness in another
    /// host's namespace.
    #[command(hide = true)]
    McReceive {
        /// Multicast group and port.
        #[arg(long)]
        group: SocketAddrV4,
        /// Address of the interface to join the group on (127.0.0.1 unless named).
        #[arg(long, default_value = "127.0.0.1")]
        iface: std::net::Ipv4Addr,
    },
    /// One unpaced run of datagrams to a group, for `mc-receive` processes to count (the raw
    /// multicast figure of an emulated LAN).
    McSend(multicast::SendOptions),
    /// Rate at which this disk takes 64,000-byte chunk files made durable (stage + group
    /// commit, as a peer does).
    Disk(disk::Options),
    /// CPU cost of a secure group's cryptography alone (one thread): sealing and opening
    /// 64,000-byte messages, encrypting and decrypting 63,960-byte chunks, SHA-256 for
    /// reference.
    Crypto(crypto::Options),
    /// Checks that every chunk of every backed-up file is held by enough other peers, from the
    /// `testapp --json STATE` outputs of all peers.
    Replication {
        /// Fewest holders every chunk needs (besides its file's home peer).
        #[arg(long, default_value_t = 2)]
        min: usize,
        /// One file per peer holding its `testapp --json <ap> STATE` output.
        #[arg(required = true)]
        states: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Multicast(opts) => multicast::run(&opts),
        Command::McReceive { group, iface } => multicast::receive(group, iface),
        Command::McSend(opts) => multicast::send(&opts),
        Command::Disk(opts) => disk::run(&opts),
        Command::Crypto(opts) => crypto::run(&opts),
        Command::Replication { min, states } => replication::run(min, &states),
    }
}

/// One counter of the `Udp:` line of `/proc/net/snmp` (this network namespace), if readable.
pub fn udp_counter(name: &str) -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names = lines.next()?.split_whitespace();
    let values = lines.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// MB/s (10^6 bytes) of `bytes` moved in `secs`.
pub fn mbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / 1e6 / secs
    } else {
        0.0
    }
}

/// Rounds to 2 decimals for printing.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
