//! The initiator's listener for chunk bodies: one event-loop thread (`mio`) accepts holders'
//! connections and reads frames from all of them without blocking.
//!
//! At most [`ServeConfig::max_connections`] are open; a new one past the cap closes the one
//! idle the longest (its holder reconnects when it next has a body to send, or sends on MDR).
//! A connection idle for [`ServeConfig::idle`] is closed. Reads are fair: a connection gets at
//! most [`TURN`] bytes read before every other ready connection has had its turn.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Events, Interest, Poll, Token, Waker};

use super::FrameReader;
use crate::log_limit::LogLimit;

/// Connections to the body listener open at once by default. Each costs a socket and what has
/// arrived of its current frame, not a thread. A holder keeps one connection per initiator, so
/// this is room for as many holders; it stays under the usual limit of 1,024 open files.
pub const MAX_BODY_CONNECTIONS: usize = 512;

/// How long a connection may stay idle before the initiator closes it, by default.
const IDLE: Duration = Duration::from_secs(60);

/// Bytes read from one connection before the others' turn.
const TURN: usize = 256 * 1024;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKE: Token = Token(usize::MAX);

/// How the body listener runs.
#[derive(Clone, Copy, Debug)]
pub struct ServeConfig {
    /// Connections open at most; past it, the one idle the longest is closed.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_connections: MAX_BODY_CONNECTIONS,
            idle: IDLE,
        }
    }
}

/// A running body listener; dropping it stops its thread and closes its connections.
pub struct BodyListener {
    stats: Arc<Stats>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Stats {
    stop: AtomicBool,
    open: AtomicUsize,
    evicted: AtomicU64,
    timed_out: AtomicU64,
}

impl BodyListener {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.stats.open.load(Ordering::SeqCst)
    }

    /// Connections closed so far to make room for a new one.
    pub fn evicted(&self) -> u64 {
        self.stats.evicted.load(Ordering::SeqCst)
    }

    /// Connections closed so far for being idle.
    pub fn timed_out(&self) -> u64 {
        self.stats.timed_out.load(Ordering::SeqCst)
    }
}

impl Drop for BodyListener {
    fn drop(&mut self) {
        self.stats.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// [`serve_with`] the default [`ServeConfig`].
pub fn serve(
    listener: TcpListener,
    deliver: impl FnMut(Bytes) + Send + 'static,
) -> io::Result<BodyListener> {
    serve_with(listener, ServeConfig::default(), deliver)
}

/// Accepts holders' connections on `listener` and hands every frame read to `deliver`, on the
/// listener's one thread: `deliver` must be quick (hand the frame on), or it delays every
/// connection — which is also how a busy initiator slows its holders down through TCP.
pub fn serve_with(
    listener: TcpListener,
    cfg: ServeConfig,
    deliver: impl FnMut(Bytes) + Send + 'static,
) -> io::Result<BodyListener> {
    listener.set_nonblocking(true)?;
    let mut listener = mio::net::TcpListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let stats = Arc::new(Stats::default());
    let mut event_loop = Loop {
        poll,
        listener,
        cfg: ServeConfig {
            max_connections: cfg.max_connections.max(1),
            idle: cfg.idle,
        },
        conns: HashMap::new(),
        ready: VecDeque::new(),
        next_token: 0,
        clock: 0,
        stats: stats.clone(),
        deliver,
    };
    let thread = std::thread::Builder::new()
        .name("tcp-bodies".into())
        .spawn(move || event_loop.run())?;
    Ok(BodyListener {
        stats,
        waker,
        thread: Some(thread),
    })
}

struct Conn {
    stream: mio::net::TcpStream,
    frames: FrameReader,
    /// When it last sent something (or was accepted).
    active: Instant,
    /// The same as a count, for a strict order among connections.
    stamp: u64,
    /// In `ready`.
    queued: bool,
}

struct Loop<D> {
    poll: Poll,
    listener: mio::net::TcpListener,
    cfg: ServeConfig,
    conns: HashMap<Token, Conn>,
    /// Connections that may have more to read.
    ready: VecDeque<Token>,
    next_token: usize,
    clock: u64,
    stats: Arc<Stats>,
    deliver: D,
}

/// What a turn of reading left of a connection.
enum Turn {
    /// Nothing more to read until its next event.
    Drained,
    /// More may be waiting: another turn after the others'.
    More,
    /// Closed (by the holder, an error, or a frame too large).
    Closed,
}

impl<D: FnMut(Bytes)> Loop<D> {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut scratch = vec![0u8; 64 * 1024];
        let tick = (self.cfg.idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut last_sweep = Instant::now();
        // After a failed accept (no file descriptor left), retried each tick.
        let mut accept_again = false;
        while !self.stats.stop.load(Ordering::SeqCst) {
            let timeout = if self.ready.is_empty() {
                tick
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!("TCP body listener: poll: {e}");
                std::thread::sleep(tick);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => accept_again = true,
                    WAKE => {}
                    token => self.mark_ready(token),
                }
            }
            if accept_again {
                accept_again = !self.accept();
            }
            for _ in 0..self.ready.len() {
                let Some(token) = self.ready.pop_front() else {
                    break;
                };
                match self.read_turn(token, &mut scratch) {
                    Turn::More => self.ready.push_back(token),
                    Turn::Drained => {
                        if let Some(conn) = self.conns.get_mut(&token) {
                            conn.queued = false;
                        }
                    }
                    Turn::Closed => self.close(token),
                }
            }
            if last_sweep.elapsed() >= tick {
                last_sweep = Instant::now();
                self.close_idle();
            }
        }
    }

    fn mark_ready(&mut self, token: Token) {
        if let Some(conn) = self.conns.get_mut(&token)
            && !conn.queued
        {
            conn.queued = true;
            self.ready.push_back(token);
        }
    }

    /// Accepts every connection waiting; false if it must be tried again later.
    fn accept(&mut self) -> bool {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.conns.len() >= self.cfg.max_connections {
                        self.evict_oldest_idle();
                    }
                    let token = Token(self.next_token);
                    self.next_token = (self.next_token + 1) % (usize::MAX - 1);
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, token, Interest::READABLE)
                    {
                        tracing::warn!("TCP body listener: cannot watch a connection: {e}");
                        continue;
                    }
                    self.clock += 1;
                    self.conns.insert(
                        token,
                        Conn {
                            stream,
                            frames: FrameReader::default(),
                            active: Instant::now(),
                            stamp: self.clock,
                            queued: false,
                        },
                    );
                    self.stats.open.store(self.conns.len(), Ordering::SeqCst);
                    // It may have sent already: read it without waiting for an event.
                    self.mark_ready(token);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    static LIMIT: LogLimit = LogLimit::new(Duration::from_secs(1));
                    crate::log_limited!(LIMIT, warn, "TCP body listener: accept: {e}");
                    return false;
                }
            }
        }
    }

    /// Closes the connection that sent nothing for the longest time.
    fn evict_oldest_idle(&mut self) {
        let Some(token) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.stamp)
            .map(|(t, _)| *t)
        else {
            return;
        };
        let conn = &self.conns[&token];
        static LIMIT: LogLimit = LogLimit::new(Duration::from_secs(1));
        crate::log_limited!(
            LIMIT,
            warn,
            "TCP body listener: {} connections open already, closing the one idle the \
             longest ({:?}, {} ms{})",
            self.cfg.max_connections,
            conn.stream.peer_addr().ok(),
            conn.active.elapsed().as_millis(),
            if conn.frames.mid_frame() {
                ", in the middle of a frame"
            } else {
                ""
            }
        );
        self.close(token);
        self.stats.evicted.fetch_add(1, Ordering::SeqCst);
    }

    fn close_idle(&mut self) {
        let idle: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.active.elapsed() >= self.cfg.idle)
            .map(|(t, _)| *t)
            .collect();
        for token in idle {
            self.close(token);
            self.stats.timed_out.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            self.stats.open.store(self.conns.len(), Ordering::SeqCst);
        }
    }

    /// Reads what `token` has sent, up to [`TURN`] bytes, delivering every frame completed.
    fn read_turn(&mut self, token: Token, scratch: &mut [u8]) -> Turn {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Turn::Drained;
        };
        let mut read = 0;
        loop {
            match conn.stream.read(scratch) {
                Ok(0) => return Turn::Closed,
                Ok(n) => {
                    self.clock += 1;
                    conn.stamp = self.clock;
                    conn.active = Instant::now();
                    if let Err(e) = conn.frames.feed(&scratch[..n], &mut self.deliver) {
                        tracing::debug!("TCP body listener: {e}: closing the connection");
                        return Turn::Closed;
                    }
                    read += n;
                    if read >= TURN {
                        return Turn::More;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Turn::Closed,
            }
        }
    }
}
