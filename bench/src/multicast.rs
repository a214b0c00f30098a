//! The multicast limit: one paced sender (the peer's [`Pacer`]) and N receiving processes (this
//! binary again, `mc-receive`), all on 127.0.0.1 with the peer's sockets
//! ([`open_sender`], [`open_receiver`] with the peers' receive buffer). A trial sends 64,000-byte
//! datagrams at one rate (at least `--count` of them, and at least `--min-secs` worth); it is
//! loss-free when every receiver got them all. A rate counts as lossy when `--tries` trials in
//! a row lose datagrams. The rate doubles until it is lossy (or the sender cannot keep up),
//! then the last interval is bisected.
//!
//! `mc-send` with `mc-receive` measure one unpaced run between hosts (the emulated LAN of
//! `tests/netns`), each on the interface it is given: the raw figure beside dbs's.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dbs::exec::pacer::Pacer;
use dbs::net::{open_receiver, open_sender};
use serde_json::json;

use crate::{CHUNK_BYTES, mbps, round2, udp_counter};

/// First bytes of every datagram of a trial.
const MAGIC: &[u8; 4] = b"DBSB";
/// A receiver reports its count once no datagram arrived for this long.
const QUIET: Duration = Duration::from_millis(50);
/// How long a receiver waits for quiet before reporting anyway.
const QUIET_LIMIT: Duration = Duration::from_secs(3);
/// How long the sender waits for the receivers' answers.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// Options of `dbs-bench multicast`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Receiving processes (N - 1 for N peers).
    #[arg(long, default_value_t = 3)]
    receivers: usize,
    /// Multicast group and port (239.x.x.x; the socket is pinned to 127.0.0.1).
    #[arg(long, default_value = "239.77.1.1:8201")]
    group: SocketAddrV4,
    /// Datagrams per trial, at least (see --min-secs).
    #[arg(long, default_value_t = 2000)]
    count: u32,
    /// A trial lasts at least this long at its target rate (more datagrams at high rates), so
    /// that the receive buffers cannot hide a rate the receivers do not sustain.
    #[arg(long, default_value_t = 0.5)]
    min_secs: f64,
    /// Rate of the first trial, MB/s.
    #[arg(long, default_value_t = 100.0)]
    start: f64,
    /// Highest rate tried, MB/s.
    #[arg(long, default_value_t = 12_800.0)]
    max: f64,
    /// Bisection steps after the doubling.
    #[arg(long, default_value_t = 5)]
    steps: u32,
    /// Trials of a rate before it counts as lossy (all of them must lose datagrams).
    #[arg(long, default_value_t = 2)]
    tries: u32,
}

/// What one trial measured.
struct Trial {
    target_mbps: f64,
    achieved_mbps: f64,
    /// Datagrams sent.
    sent: u32,
    /// Fewest datagrams any receiver got.
    min_received: u32,
    rcvbuf_errors: u64,
}

impl Trial {
    fn loss_free(&self) -> bool {
        self.min_received == self.sent
    }
}

/// Runs the search and prints its result as one JSON line.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !opts.group.ip().is_multicast() {
        bail!("{} is not a multicast group", opts.group);
    }
    if opts.receivers == 0 || opts.count == 0 {
        bail!("--receivers and --count must be positive");
    }
    let mut receivers = Receivers::start(opts.receivers, opts.group)?;
    let socket = open_sender(Ipv4Addr::LOCALHOST).context("open the sender socket")?;
    let mut trial_no = 0u32;
    let mut trials = Vec::new();
    // Whether `target` is loss-free in one of `tries` trials (a rate that loses once may have
    // met a burst of other work on this machine; one that loses every time is over the limit).
    let mut run_trial = |target: f64,
                         tries: u32,
                         trials: &mut Vec<Trial>|
     -> anyhow::Result<bool> {
        for _ in 0..tries.max(1) {
            trial_no += 1;
            let t = trial(&socket, opts, &mut receivers, trial_no, target)?;
            let ok = t.loss_free();
            eprintln!(
                "[dbs-bench multicast] {} receivers, target {:.0} MB/s: sent at {:.1} MB/s, fewest received {}/{}, RcvbufErrors +{}",
                opts.receivers, target, t.achieved_mbps, t.min_received, t.sent, t.rcvbuf_errors
            );
            trials.push(t);
            if ok {
                return Ok(true);
            }
        }
        Ok(false)
    };
    // Doubling: stop at the first loss, or when the sender falls well short of the target
    // (then the sender, not the receivers, is the limit).
    let mut good: Option<f64> = None;
    let mut bad: Option<f64> = None;
    let mut sender_bound = false;
    let mut rate = opts.start;
    while rate <= opts.max {
        if run_trial(rate, opts.tries, &mut trials)? {
            good = Some(rate);
            if trials.last().expect("a trial").achieved_mbps < 0.8 * rate {
                sender_bound = true;
                break;
            }
            rate *= 2.0;
        } else {
            bad = Some(rate);
            break;
        }
    }
    if let (false, Some(mut hi)) = (sender_bound, bad) {
        let mut lo = good.unwrap_or(0.0);
        for _ in 0..opts.steps {
            let mid = (lo + hi) / 2.0;
            if mid < 1.0 {
                break;
            }
            if run_trial(mid, opts.tries, &mut trials)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    // One unpaced trial, for reference: what bursts at full speed do to the receivers.
    run_trial(0.0, 1, &mut trials)?;
    let unpaced = trials.pop().expect("the unpaced trial");
    let best = trials
        .iter()
        .filter(|t| t.loss_free())
        .map(|t| t.achieved_mbps)
        .fold(0.0, f64::max);
    let lost_rates: Vec<f64> = trials
        .iter()
        .filter(|t| !t.loss_free())
        .map(|t| t.target_mbps)
        .collect();
    let lowest_lossy = lost_rates.iter().copied().fold(f64::INFINITY, f64::min);
    receivers.stop();
    let out = json!({
        "kind": "multicast",
        "receivers": opts.receivers,
        "datagram_bytes": CHUNK_BYTES,
        "min_datagrams_per_trial": opts.count,
        "min_trial_secs": opts.min_secs,
        "tries_per_rate": opts.tries,
        "recv_buffer_requested": dbs::net::RECV_BUFFER,
        "recv_buffer_effective": effective_recv_buffer(),
        "loss_free_mbps": round2(best),
        "bound": if sender_bound { "sender" } else if bad.is_some() { "loss" } else { "max" },
        "lowest_lossy_target_mbps": if lowest_lossy.is_finite() { json!(round2(lowest_lossy)) } else { json!(null) },
        "unpaced_mbps": round2(unpaced.achieved_mbps),
        "unpaced_sent": unpaced.sent,
        "unpaced_min_received": unpaced.min_received,
        "unpaced_rcvbuf_errors": unpaced.rcvbuf_errors,
        "trials": trials.iter().map(|t| json!({
            "target_mbps": round2(t.target_mbps),
            "achieved_mbps": round2(t.achieved_mbps),
            "sent": t.sent,
            "min_received": t.min_received,
            "rcvbuf_errors": t.rcvbuf_errors,
        })).collect::<Vec<_>>(),
    });
    println!("{out}");
    Ok(())
}

/// Sends one trial at `target` MB/s (0 = unpaced) and collects the receivers' counts.
fn trial(
    socket: &std::net::UdpSocket,
    opts: &Options,
    receivers: &mut Receivers,
    no: u32,
    target: f64,
) -> anyhow::Result<Trial> {
    let pacer = Pacer::new((target * 1e6) as u64);
    let count = opts
        .count
        .max((target * 1e6 * opts.min_secs / CHUNK_BYTES as f64).ceil() as u32);
    let mut datagram = vec![0u8; CHUNK_BYTES];
    datagram[..4].copy_from_slice(MAGIC);
    datagram[4..8].copy_from_slice(&no.to_be_bytes());
    let errors_before = udp_counter("RcvbufErrors").unwrap_or(0);
    let start = Instant::now();
    for seq in 0..count {
        datagram[8..12].copy_from_slice(&seq.to_be_bytes());
        let wait = pacer.reserve(datagram.len(), start.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        socket
            .send_to(&datagram, opts.group)
            .context("send a datagram")?;
    }
    let secs = start.elapsed().as_secs_f64();
    let counts = receivers.counts(no)?;
    Ok(Trial {
        target_mbps: target,
        achieved_mbps: mbps(u64::from(count) * CHUNK_BYTES as u64, secs),
        sent: count,
        min_received: counts.into_iter().min().unwrap_or(0),
        rcvbuf_errors: udp_counter("RcvbufErrors")
            .unwrap_or(0)
            .saturating_sub(errors_before),
    })
}

/// The receiving processes, each driven through its stdin and answering on its stdout.
struct Receivers {
    children: Vec<(Child, ChildStdin)>,
    lines: Receiver<(usize, String)>,
}

impl Receivers {
    /// Starts `n` receiving processes and waits until each has joined the group.
    fn start(n: usize, group: SocketAddrV4) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("find this program")?;
        let (tx, lines) = channel();
        let mut children = Vec::new();
        for i in 0..n {
            let mut child = Command::new(&exe)
                .args(["mc-receive", "--group", &group.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("start a receiving process")?;
            let stdin = child.stdin.take().expect("piped stdin");
            let stdout = child.stdout.take().expect("piped stdout");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send((i, line)).is_err() {
                        break;
                    }
                }
            });
            children.push((child, stdin));
        }
        let mut receivers = Receivers { children, lines };
        let ready = receivers.collect(|line| line == "ready")?;
        debug_assert_eq!(ready.len(), n);
        Ok(receivers)
    }

    /// Asks every receiver how many datagrams of trial `no` it got.
    fn counts(&mut self, no: u32) -> anyhow::Result<Vec<u32>> {
        for (_, stdin) in &mut self.children {
            writeln!(stdin, "count {no}").context("ask a receiver")?;
            stdin.flush().context("ask a receiver")?;
        }
        let prefix = format!("{no} ");
        let answers = self.collect(|line| line.starts_with(&prefix))?;
        answers
            .iter()
            .map(|line| {
                line[prefix.len()..]
                    .split(' ')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .context("a receiver's answer")
            })
            .collect()
    }

    /// One line matching `want` from every receiver, within [`ANSWER_LIMIT`].
    fn collect(&mut self, want: impl Fn(&str) -> bool) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + ANSWER_LIMIT;
        let mut got: Vec<Option<String>> = vec![None; self.children.len()];
        while got.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((i, line)) if want(&line) => got[i] = Some(line),
                Ok(_) => {}
                Err(_) => bail!("a receiving process did not answer within {ANSWER_LIMIT:?}"),
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Closes the receivers' stdin (they exit on it) and waits for them.
    fn stop(mut self) {
        for (mut child, stdin) in std::mem::take(&mut self.children) {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            let _ = child.kill();
        }
    }
}

/// The receiving process: counts the datagrams of the current trial on one thread (copying
/// each, as a peer's receiver does) and answers `count <trial>` lines on stdin with
/// `<trial> <count>` once the group has been quiet for [`QUIET`]. Exits when stdin closes.
pub fn receive(group: SocketAddrV4, iface: Ipv4Addr) -> anyhow::Result<()> {
    let socket = open_receiver(group, iface, Duration::from_millis(100))
        .with_context(|| format!("join {group} on {iface}"))?;
    // (trial, datagrams of it received, bytes, µs of its first and last datagram)
    let current = Arc::new(Mutex::new(Count::default()));
    let start = Instant::now();
    let last_rx = Arc::new(AtomicU64::new(0));
    {
        let current = current.clone();
        let last_rx = last_rx.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let copy = std::hint::black_box(buf[..n].to_vec());
                last_rx.store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                if n < 12 || &copy[..4] != MAGIC {
                    continue;
                }
                let no = u32::from_be_bytes(copy[4..8].try_into().expect("4 bytes"));
                let now = start.elapsed().as_micros() as u64;
                let mut cur = current.lock().expect("not poisoned");
                if no > cur.trial {
                    *cur = Count {
                        trial: no,
                        first_us: now,
                        ..Count::default()
                    };
                }
                if no == cur.trial {
                    cur.datagrams += 1;
                    cur.bytes += n as u64;
                    cur.last_us = now;
                }
            }
        });
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let Some(no) = line
            .strip_prefix("count ")
            .and_then(|n| n.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let asked = Instant::now();
        loop {
            let idle = (start.elapsed().as_micros() as u64)
                .saturating_sub(last_rx.load(Ordering::Relaxed));
            if Duration::from_micros(idle) >= QUIET || asked.elapsed() >= QUIET_LIMIT {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let cur = *current.lock().expect("not poisoned");
        let cur = if cur.trial == no {
            cur
        } else {
            Count::default()
        };
        writeln!(
            out,
            "{no} {} {} {}",
            cur.datagrams,
            cur.bytes,
            cur.last_us - cur.first_us
        )?;
        out.flush()?;
    }
    Ok(())
}

/// What a receiving process got of one trial.
#[derive(Clone, Copy, Default)]
struct Count {
    trial: u32,
    datagrams: u32,
    bytes: u64,
    first_us: u64,
    last_us: u64,
}

/// Options of `dbs-bench mc-send`.
#[derive(clap::Args, Debug)]
pub struct SendOptions {
    /// Multicast group and port.
    #[arg(long)]
    group: SocketAddrV4,
    /// Address of the interface to send on (127.0.0.1 unless named).
    #[arg(long, default_value = "127.0.0.1")]
    iface: Ipv4Addr,
    /// Bytes of each datagram (at least 12, at most 65,507).
    #[arg(long, default_value_t = CHUNK_BYTES as u32, value_parser = clap::value_parser!(u32).range(12..=65_507))]
    size: u32,
    /// Bytes to send in all.
    #[arg(long)]
    bytes: u64,
    /// The trial's number (the receivers count the datagrams of the newest trial).
    #[arg(long, default_value_t = 1)]
    trial: u32,
}

/// `dbs-bench mc-send`: sends `--bytes` in `--size`-byte datagrams as fast as the socket
/// takes them (one `send_to` each, blocking: the link's queue sets the pace), and prints one
/// JSON line (datagrams sent, seconds, MB/s).
pub fn send(opts: &SendOptions) -> anyhow::Result<()> {
    if !opts.group.ip().is_multicast() {
        bail!("{} is not a multicast group", opts.group);
    }
    let socket = open_sender(opts.iface).with_context(|| format!("send on {}", opts.iface))?;
    let size = opts.size as usize;
    let mut datagram = vec![0u8; size];
    datagram[..4].copy_from_slice(MAGIC);
    datagram[4..8].copy_from_slice(&opts.trial.to_be_bytes());
    let count = opts.bytes.div_ceil(u64::from(opts.size)) as u32;
    let start = Instant::now();
    for seq in 0..count {
        datagram[8..12].copy_from_slice(&seq.to_be_bytes());
        socket
            .send_to(&datagram, opts.group)
            .context("send a datagram")?;
    }
    let secs = start.elapsed().as_secs_f64();
    let out = json!({
        "kind": "mc-send",
        "datagram_bytes": opts.size,
        "sent": count,
        "secs": round2(secs),
        "mbps": round2(mbps(u64::from(count) * u64::from(opts.size), secs)),
    });
    println!("{out}");
    Ok(())
}

/// The receive buffer a peer's channel socket gets here (kernel figure), or null.
fn effective_recv_buffer() -> serde_json::Value {
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 77, 1, 9), 8209);
    open_receiver(group, Ipv4Addr::LOCALHOST, Duration::from_millis(100))
        .and_then(|s| dbs::net::recv_buffer_size(&s))
        .map_or(serde_json::Value::Null, |n| json!(n))
}
