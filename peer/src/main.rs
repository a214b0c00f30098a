//! The dbs peer: lends disk to other peers' chunks and backs up, restores and deletes its own
//! files on its clients' request.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dbs::client::AccessPoint;
use dbs::core::Config;
use dbs::net::ChannelAddrs;
use dbs::protocol::Version;
use dbs::runtime::{Node, NodeConfig};
use dbs::secure::{DataKey, GroupKey};

/// A dbs peer: stores chunks for the other peers on the LAN and runs backups of its own files.
///
/// Peers talk over three multicast channels (MC control, MDB backup, MDR restore). Every
/// multicast socket is pinned to --iface (127.0.0.1 unless you name another interface).
#[derive(Parser, Debug)]
#[command(version, about, long_about, after_help = AFTER_HELP)]
struct Args {
    /// Protocol version: 1.0 (the base protocol) or 2.0 (the enhanced protocol, which also
    /// runs every 1.0 operation and works with 1.0 peers).
    #[arg(value_parser = parse_version)]
    protocol_version: Version,
    /// This peer's id: a positive integer, unique in the group and permanent.
    #[arg(value_parser = parse_peer_id, allow_hyphen_values = true)]
    peer_id: u32,
    /// Where clients reach this peer: NAME (Unix socket NAME.sock in the runtime directory) or
    /// [HOST:]PORT (TCP; host 127.0.0.1 by default, port 0 picks a free one).
    #[arg(value_parser = parse_access_point)]
    access_point: AccessPoint,
    /// Control channel (MC) multicast group, e.g. 239.255.0.1.
    #[arg(value_parser = parse_group)]
    mc_addr: Ipv4Addr,
    /// Control channel (MC) port.
    #[arg(value_parser = parse_port)]
    mc_port: u16,
    /// Backup channel (MDB) multicast group.
    #[arg(value_parser = parse_group)]
    mdb_addr: Ipv4Addr,
    /// Backup channel (MDB) port.
    #[arg(value_parser = parse_port)]
    mdb_port: u16,
    /// Restore channel (MDR) multicast group.
    #[arg(value_parser = parse_group)]
    mdr_addr: Ipv4Addr,
    /// Restore channel (MDR) port.
    #[arg(value_parser = parse_port)]
    mdr_port: u16,
    /// This peer's directory tree (chunks, metadata, restored files). Default: ./peer<ID>.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// IPv4 address of the interface every multicast socket is pinned to.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    iface: Ipv4Addr,
    /// Space for stored chunks, in KBytes (1000 bytes); saved in the tree. Default: the saved
    /// value, else 100000000 (100 GB).
    #[arg(long, value_name = "KB")]
    capacity: Option<u64>,
    /// Log level: off, error, warn, info, debug or trace; or a filter of comma-separated
    /// TARGET=LEVEL directives beside one level (e.g. "warn,dbs::core=debug").
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = parse_log_filter)]
    log_level: String,
    /// PUTCHUNKs in flight at most, all backups together (a congestion window adapts below
    /// it). The default, 48 MiB of chunks, fits in a stalled peer's receive buffer and worker
    /// backlog; more risks drops on a busy machine.
    #[arg(long, value_name = "N", default_value_t = 768, value_parser = clap::value_parser!(u32).range(4..=4096))]
    window: u32,
    /// GETCHUNKs of one restore in flight at most (a congestion window adapts below it; the
    /// default is chosen as for --window).
    #[arg(long, value_name = "N", default_value_t = 768, value_parser = clap::value_parser!(u32).range(1..=8192))]
    restore_window: u32,
    /// Send rate limit over all channels, in MB/s (0 = unpaced).
    #[arg(long, value_name = "MBPS", default_value_t = 250)]
    rate: u64,
    /// Worker threads handling messages and disk writes.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// Accept a TCP access point, or --metrics, on a non-loopback address (refused without
    /// it): anyone who can reach the access point can run every operation on this peer, and
    /// the metrics tell what it stores and does.
    #[arg(long)]
    allow_remote: bool,
    /// Serve Prometheus metrics (the STATE report's figures and counters) over HTTP at
    /// http://ADDR/metrics, ADDR being IP:PORT (e.g. 127.0.0.1:9464; port 0 picks a free one,
    /// logged at start). Off by default; a non-loopback ADDR needs --allow-remote.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    metrics: Option<SocketAddr>,
    /// Enhanced peers: after the catalog (the files this peer backed up) changes, it is backed
    /// up into the group at most this often, so that RECOVER can get it back if this peer's
    /// disk is lost (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    catalog_interval: f64,
    /// Enhanced peers: ALIVE is sent on MC this often (a fifth earlier or later at random), and
    /// the membership view and the repair scan run at the same pace (at least 0.05).
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs)]
    announce_interval: Duration,
    /// Enhanced peers: a 2.0 peer not heard this long is suspected: its copies no longer count
    /// toward a chunk's degree (backups send such chunks again, repairs replace them).
    #[arg(long, value_name = "SECS", default_value = "8", value_parser = parse_secs)]
    suspect_after: Duration,
    /// Enhanced peers: a chunk with fewer live holders than its desired degree for this long
    /// is re-replicated from a live copy (by its home, else by its lowest live holder).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    repair_after: Duration,
    /// Enhanced peers: chunks this peer repairs at once, at most (the fewest live copies
    /// first).
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    repair_concurrency: u32,
    /// Enhanced peers: the path MTU in bytes (576-65535). A PUTCHUNK 2.0 or CHUNK 2.0 larger
    /// than one frame then travels as pieces that need no IP fragmentation (repaired piece by
    /// piece with NACKs), when every peer heard of speaks 2.0. Default: the MTU of the
    /// interface given by --iface.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(576..=65_535))]
    mtu: Option<u32>,
    /// Send every piece with a system call of its own, instead of a message's pieces in one
    /// (UDP GSO, used where the kernel allows): for measurements, or a driver that mishandles
    /// GSO.
    #[arg(long)]
    no_gso: bool,
    /// Secure group: FILE holds the group's shared secret (at least 32 bytes of any content,
    /// e.g. `head -c 32 /dev/urandom > FILE`; readable by its owner only). Every member uses
    /// the same file. The peer then seals every message it sends and drops every datagram
    /// not sealed for its group, replayed or too old (counted in STATE), and obeys a DELETE
    /// only with its home's proof. Needs --data-key or --data-passphrase. Plain and secure
    /// peers do not work together: a secure group is made of secure dbs peers only.
    #[arg(long, value_name = "FILE")]
    group_key: Option<PathBuf>,
    /// FILE holds this peer's data key (at least 32 bytes, readable by its owner only): the
    /// files it backs up from now on are encrypted (XChaCha20-Poly1305; holders keep only
    /// ciphertext) and named so that only it can delete them. Keep a copy away from this
    /// machine: with the peer id, it is what RECOVER and RESTORE need after the disk is lost.
    #[arg(long, value_name = "FILE", conflicts_with = "data_passphrase")]
    data_key: Option<PathBuf>,
    /// Like --data-key, from the passphrase on FILE's first line (at least 12 characters;
    /// readable by its owner only), stretched with Argon2id (64 MiB, 3 passes: about a second
    /// at start) and salted with the peer id.
    #[arg(long, value_name = "FILE")]
    data_passphrase: Option<PathBuf>,
    /// Share of --capacity the chunks of one home (a PUTCHUNK's sender, or the home a
    /// re-backup names) may fill, above 0 and at most 1 (1: no limit): a PUTCHUNK past it is
    /// not stored, and RECLAIM evicts the chunks of homes over it first.
    #[arg(long, value_name = "F", default_value = "0.5", value_parser = parse_share)]
    max_share: f64,
    /// CHUNK replies one requester (a GETCHUNK's sender id) gets from this peer, in MB/s
    /// (0 = no limit); a GETCHUNK past it is not answered.
    #[arg(long, value_name = "MBPS", default_value_t = 256)]
    reply_budget: u64,
}

const AFTER_HELP: &str = "\
Example (4 peers on one machine, loopback multicast):
  peer 1.0 1 peer1 239.255.0.1 8001 239.255.0.2 8002 239.255.0.3 8003

The peer stops on SIGINT or SIGTERM after saving its metadata. Exit codes: 0 stopped cleanly,
1 could not start (tree, sockets, access point), 2 bad arguments, 70 one of its threads
panicked (logged with the thread's name and the message; the peer stops at once rather than
run on without that thread, as after a SIGKILL its tree is consistent at the next start).";

/// A number of seconds from 0 to a day (fractions allowed).
fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| (0.0..=86_400.0).contains(v))
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("{s:?} is not a number of seconds from 0 to 86400"))
}

/// A fraction above 0 and at most 1.
fn parse_share(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0 && *v <= 1.0)
        .ok_or_else(|| format!("{s:?} is not a fraction above 0 and at most 1 (e.g. 0.5)"))
}

fn parse_version(s: &str) -> Result<Version, String> {
    let v: Version = s.parse()?;
    if v != Version::V1_0 && v != Version::V2_0 {
        return Err(format!(
            "protocol version {v} is not supported: use 1.0 or 2.0"
        ));
    }
    Ok(v)
}

/// The levels a log directive may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Accepts a level, or directives each naming a level (`TARGET=LEVEL`). A bare word that is no
/// level is refused: tracing would read it as a target to log at every level and log nothing
/// else (`--log-level warning` turned logging off).
fn parse_log_filter(s: &str) -> Result<String, String> {
    let is_level = |l: &str| LOG_LEVELS.iter().any(|k| k.eq_ignore_ascii_case(l.trim()));
    for directive in s.split(',') {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !is_level(level) {
            return Err(format!(
                "{level:?} is not a log level (one of {}, or TARGET=LEVEL)",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| format!("bad log filter {s:?}: {e}"))?;
    Ok(s.to_string())
}

fn parse_peer_id(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(id) if id > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(id),
        _ => Err(format!("peer id must be a positive integer, got {s:?}")),
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!("port must be a number from 1 to 65535, got {s:?}")),
    }
}

fn parse_group(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address"))?;
    if !ip.is_multicast() {
        return Err(format!(
            "{ip} is not a multicast address (224.0.0.0 to 239.255.255.255)"
        ));
    }
    Ok(ip)
}

fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not IP:PORT (e.g. 127.0.0.1:9464, [::1]:9464; port 0 picks a free one)")
    })
}

fn parse_access_point(s: &str) -> Result<AccessPoint, String> {
    AccessPoint::parse(s).map_err(|e| e.to_string())
}

/// The peer's allocator: jemalloc, which keeps small objects of one size together and gives
/// freed pages back soon (see `MALLOC_CONF`). With glibc's allocator a peer's resident set
/// kept growing in a soak (8 to 12 MB in an hour on a 2.0 peer) while the memory in use stayed
/// at 1.3-1.6 MB: the long-lived small objects (tombstones, map entries) landed between the
/// 64 KB chunk buffers of the bursts and pinned their pages, and a freed buffer went back to
/// the system only at the next trim. With jemalloc, an hour-long soak ended within 76-240 kB of
/// its minute-10 figures (docs/benchmarks.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string pointer jemalloc reads at start-up.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable, NUL-terminated string.
unsafe impl Sync for MallocConf {}

/// jemalloc's settings (its `malloc_conf`; the `_RJEM_MALLOC_CONF` environment variable
/// overrides them): two arenas for the peer's threads, and freed pages given back to the system
/// by a background thread within about 100 ms instead of the default 10 s. With 0 ms (given
/// back at once, on the freeing thread) a 128 MB restore on loopback ran at 117-122 MB/s
/// against 177 with glibc; with 100 ms at 136-204 MB/s (the disk's rate swings).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,narenas:2,dirty_decay_ms:100,muzzy_decay_ms:0".as_ptr());

/// Exits with a usage error (code 2) saying `problem`.
fn refuse(problem: String) -> ! {
    use clap::CommandFactory;
    Args::command()
        .error(clap::error::ErrorKind::ValueValidation, problem)
        .exit()
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let AccessPoint::Tcp(addr) = &args.access_point
        && !addr.ip().is_loopback()
        && !args.allow_remote
    {
        refuse(format!(
            "access point {addr} is not on loopback: anyone who can reach it could run any \
             operation on this peer (DELETE every backup, RECLAIM 0, read STATE); give \
             --allow-remote to accept that on a network you trust"
        ));
    }
    if args.announce_interval < Duration::from_millis(50)
        || args.suspect_after < 3 * args.announce_interval
    {
        refuse(format!(
            "--announce-interval must be at least 0.05 s and --suspect-after at least three \
             announce intervals (got {:?} and {:?}): peers would be suspected after a lost ALIVE",
            args.announce_interval, args.suspect_after
        ));
    }
    if let Some(addr) = args.metrics
        && !addr.ip().is_loopback()
        && !args.allow_remote
    {
        refuse(format!(
            "--metrics {addr} is not on loopback: anyone who can reach it could read what this \
             peer stores and does; give --allow-remote to accept that on a network you trust"
        ));
    }
    // Checked by parse_log_filter.
    let filter = tracing_subscriber::EnvFilter::new(&args.log_level);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    // From here on a panic on any thread is logged and ends the peer with exit code 70.
    dbs::runtime::supervise::exit_on_panic();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let id = args.peer_id;
    let mut core = Config::new(id, args.protocol_version);
    core.window = args.window as usize;
    core.restore_window = args.restore_window as usize;
    core.catalog_interval = std::time::Duration::try_from_secs_f64(args.catalog_interval)
        .context("--catalog-interval must be a number of seconds, 0 or more")?;
    core.announce_interval = args.announce_interval;
    core.suspect_after = args.suspect_after;
    core.repair_after = args.repair_after;
    core.repair_concurrency = args.repair_concurrency as usize;
    core.group_key = args
        .group_key
        .as_deref()
        .map(|f| GroupKey::load(f).map(Arc::new))
        .transpose()
        .unwrap_or_else(|e| refuse(e.to_string()));
    core.data_key = match (&args.data_key, &args.data_passphrase) {
        (Some(f), _) => Some(DataKey::load(f, id)),
        (None, Some(f)) => Some(DataKey::from_passphrase_file(f, id)),
        (None, None) => None,
    }
    .transpose()
    .unwrap_or_else(|e| refuse(e.to_string()))
    .map(Arc::new);
    if core.group_key.is_some() && core.data_key.is_none() {
        refuse(
            "--group-key needs --data-key or --data-passphrase: in a secure group only a \
             file's home may delete it, which it proves with a secret made from its data key"
                .into(),
        );
    }
    if core.secure() {
        tracing::info!("secure group: every message sealed; chunks of new backups encrypted");
    } else if core.data_key.is_some() {
        tracing::info!("chunks of new backups encrypted with the data key");
    }
    core.mtu = args
        .mtu
        .or_else(|| dbs::net::lan::interface_mtu(args.iface).map(|(_, mtu)| mtu))
        .map(|mtu| mtu as usize);
    core.max_share = args.max_share;
    core.reply_budget = args.reply_budget.saturating_mul(1_000_000);
    let cfg = NodeConfig {
        core,
        channels: ChannelAddrs {
            mc: SocketAddrV4::new(args.mc_addr, args.mc_port),
            mdb: SocketAddrV4::new(args.mdb_addr, args.mdb_port),
            mdr: SocketAddrV4::new(args.mdr_addr, args.mdr_port),
        },
        iface: args.iface,
        dir: std::path::absolute(
            args.dir
                .unwrap_or_else(|| PathBuf::from(format!("peer{id}"))),
        )
        .context("resolving the peer's directory")?,
        capacity_kb: args.capacity,
        send_rate: args.rate.saturating_mul(1_000_000),
        gso: !args.no_gso,
        workers: args.workers as usize,
        backlog_bytes: 32 << 20,
    };
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    let dir = cfg.dir.clone();
    let node = Node::start(cfg).with_context(|| format!("starting peer {id}"))?;
    let metrics = match args.metrics {
        Some(addr) => {
            let server = node
                .serve_metrics(addr)
                .with_context(|| format!("opening the metrics endpoint {addr}"))?;
            tracing::info!("metrics on {}", server.url());
            Some(server)
        }
        None => None,
    };
    let listener = args
        .access_point
        .bind()
        .with_context(|| format!("opening access point {}", args.access_point))?;
    // A TCP access point takes requests only with its token: in the tree, and in the runtime
    // directory where this user's testapp finds it (named after the address bound, so port 0
    // works too).
    let token_files = match listener.tcp_addr() {
        Some(addr) => vec![
            dir.join("access-token"),
            dbs::client::access_point::token_path(addr).context("the runtime directory")?,
        ],
        None => Vec::new(),
    };
    let token = if token_files.is_empty() {
        None
    } else {
        let token = dbs::client::access_point::new_token(&token_files)
            .context("writing the access point's token")?;
        tracing::info!(
            "TCP access point token in {} and {}",
            token_files[0].display(),
            token_files[1].display()
        );
        Some(token)
    };
    tracing::info!(
        "peer {id} (protocol {}) ready: access point {}, tree {}, multicast on {}",
        args.protocol_version,
        listener.describe(),
        dir.display(),
        args.iface
    );
    if let Some(warning) = dbs::net::lan::fragmentation_warning(args.iface) {
        tracing::warn!("{warning}");
    }
    let handler = node.handler();
    std::thread::Builder::new()
        .name("access-point".into())
        .spawn(move || dbs::client::server::serve(listener, Arc::clone(&handler), token))
        .context("starting the access point")?;
    let mut signals = signals;
    if let Some(sig) = signals.forever().next() {
        tracing::info!("signal {sig}: stopping");
    }
    if let Some(server) = metrics {
        server.stop();
    }
    node.shutdown().context("saving metadata at shutdown")?;
    for f in &token_files {
        let _ = std::fs::remove_file(f);
    }
    if let AccessPoint::Unix(name) = &args.access_point
        && let Ok(path) = AccessPoint::socket_path(name)
    {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
