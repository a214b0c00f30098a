//! The TCP body listener under many connections, on loopback and in this process alone (so the
//! thread count read from `/proc/self/status` is the listener's and the test's): 1,000
//! concurrent connections, idle ones and ones that send their frames a byte at a time, on a
//! constant number of threads; past its cap the listener closes the connections idle the
//! longest.

mod common;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use common::wait_until;
use dbs::runtime::tcp::{self, ServeConfig};

/// Threads of this process now.
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

/// Lets this process open `want` files if its hard limit allows.
fn raise_open_files(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn connect(addr: SocketAddrV4, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
}

/// Whether the listener closed `s` (end of file), waiting at most `wait` for it.
fn closed(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    match s.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => panic!("the listener sent something"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn a_thousand_connections_idle_and_slow_on_a_constant_number_of_threads() {
    const CAP: usize = 900;
    const OLD_IDLE: usize = 600;
    const SLOW: usize = 300;
    const NEW_IDLE: usize = 100;
    raise_open_files(4096);
    let (listener, addr) = tcp::bind(Ipv4Addr::LOCALHOST).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded::<Bytes>();
    let before = threads();
    let cfg = ServeConfig {
        max_connections: CAP,
        ..ServeConfig::default()
    };
    let server = tcp::serve_with(listener, cfg, move |frame| {
        let _ = tx.send(frame);
    })
    .unwrap();
    let base = threads();
    assert_eq!(base, before + 1, "the listener is one thread");
    let mut samples = Vec::new();

    // The oldest connections: idle.
    let mut old_idle = Vec::new();
    for _ in 0..OLD_IDLE / 100 {
        old_idle.extend(connect(addr, 100));
        let want = old_idle.len();
        assert!(wait_until(Duration::from_secs(10), || server.open() == want));
        samples.push(threads());
    }
    // Then the slow ones: two frames each, sent one byte at a time, all in turn.
    let mut slow = connect(addr, SLOW);
    assert!(wait_until(Duration::from_secs(10), || server.open() == OLD_IDLE + SLOW));
    let frames: Vec<Vec<u8>> = (0..SLOW)
        .map(|i| {
            let body = |k| format!("connection {i:03} frame {k} {}", "x".repeat(150));
            [
                tcp::frame(body(0).as_bytes()),
                tcp::frame(body(1).as_bytes()),
            ]
            .concat()
        })
        .collect();
    let len = frames[0].len();
    assert!(frames.iter().all(|f| f.len() == len));
    for s in &slow {
        s.set_nodelay(true).unwrap(); // a segment per byte
    }
    let mut new_idle = Vec::new();
    for pos in 0..len {
        for (s, f) in slow.iter_mut().zip(&frames) {
            s.write_all(&f[pos..pos + 1]).unwrap();
        }
        if pos == len / 2 {
            // Halfway: 100 more connections, 1,000 in all. The listener is at its cap: each
            // closes one of the connections idle the longest (the first ones), not the slow
            // ones in the middle of their frames.
            new_idle = connect(addr, NEW_IDLE);
            assert!(wait_until(Duration::from_secs(10), || server.evicted()
                == NEW_IDLE as u64));
            assert_eq!(server.open(), CAP);
        }
        samples.push(threads());
        std::thread::sleep(Duration::from_millis(1)); // slow senders
    }

    // Every frame completed is delivered.
    let mut got = BTreeSet::new();
    while got.len() < 2 * SLOW {
        let frame = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("only {} frames of {} delivered", got.len(), 2 * SLOW));
        let text = String::from_utf8(frame.to_vec()).unwrap();
        assert!(got.insert(text[..22].to_string()), "twice: {text}");
    }
    let want: BTreeSet<String> = (0..SLOW)
        .flat_map(|i| (0..2).map(move |k| format!("connection {i:03} frame {k}")))
        .collect();
    let wrong: Vec<_> = got.symmetric_difference(&want).take(5).collect();
    assert!(wrong.is_empty(), "frames not as sent: {wrong:?}");
    samples.push(threads());

    // Closed: the 100 oldest idle connections; open: all the others.
    for (i, s) in old_idle.iter_mut().enumerate() {
        let wait = Duration::from_millis(if i < NEW_IDLE { 5000 } else { 1 });
        assert_eq!(closed(s, wait), i < NEW_IDLE, "old idle connection {i}");
    }
    for s in slow.iter_mut().chain(new_idle.iter_mut()) {
        assert!(!closed(s, Duration::from_millis(1)));
    }
    assert_eq!(server.open(), CAP);
    assert_eq!(server.evicted(), NEW_IDLE as u64);
    assert_eq!(server.timed_out(), 0);

    let peak = samples.iter().copied().max().unwrap();
    eprintln!(
        "threads: {before} before the listener, {base} with it, at most {peak} during \
         ({} samples) with up to {CAP} connections open and {} opened",
        samples.len(),
        OLD_IDLE + SLOW + NEW_IDLE
    );
    assert!(
        samples.iter().all(|&n| n == base),
        "thread counts: {samples:?}"
    );
    drop(server);
    assert_eq!(threads(), before, "the listener's thread stopped");
}
