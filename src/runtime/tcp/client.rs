//! The holder's side of TCP bodies: a bounded pool of non-blocking connections to initiators,
//! driven by one event-loop thread (`mio`).
//!
//! [`ConnectionPool::send`] never blocks: it queues the frame on the connection to its
//! initiator (connecting without waiting if there is none), writes what the socket takes at
//! once, and returns. The loop thread completes connections and writes the rest as each socket
//! drains. So a slow or stuck initiator fills only its own queue, bounded in bytes; past the
//! bound, or while its connection is known to have failed, `send` returns an error and the
//! executor sends that body on MDR instead.
//!
//! A frame queued on a connection that then fails (refused, reset, no progress for
//! [`PoolConfig::stall_timeout`]) is lost. The initiator covers that: a chunk asked for over TCP
//! and not received within its GETCHUNK wait is asked for again with a plain GETCHUNK, answered
//! on MDR.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use parking_lot::Mutex;

use crate::log_limit::LogLimit;

const WAKE: Token = Token(usize::MAX);

/// How often the loop checks its timeouts while connections are open.
const TICK: Duration = Duration::from_millis(100);

/// How the pool runs.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// Connections open at most; a new one closes the least recently used one that has
    /// nothing queued.
    pub max_connections: usize,
    /// Bytes queued on one connection at most (not counting what the kernel holds).
    pub max_queued: usize,
    /// A connection not established within this is failed.
    pub connect_timeout: Duration,
    /// A connection with bytes queued that takes none of them for this long is failed.
    pub stall_timeout: Duration,
    /// A connection with nothing to send for this long is closed (before the initiator's own
    /// idle timeout closes it under a frame being sent).
    pub idle: Duration,
    /// After a connection failed, sends to its address are refused for this long.
    pub backoff: Duration,
}

impl PoolConfig {
    /// The defaults with at most `max_connections` connections.
    pub fn new(max_connections: usize) -> Self {
        PoolConfig {
            max_connections,
            max_queued: 4 << 20,
            connect_timeout: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(5),
            idle: Duration::from_secs(30),
            backoff: Duration::from_secs(5),
        }
    }
}

/// Why a frame was not queued (the body then goes on MDR).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection's queue is at its bound: the initiator reads too slowly.
    #[error("{queued} bytes already queued for {addr} (at most {bound})")]
    QueueFull {
        /// The initiator.
        addr: SocketAddrV4,
        /// Bytes queued for it.
        queued: usize,
        /// The bound.
        bound: usize,
    },
    /// The connection to the initiator failed a short while ago.
    #[error("the connection to {addr} failed {ago:?} ago ({kind})")]
    RecentlyFailed {
        /// The initiator.
        addr: SocketAddrV4,
        /// How long ago.
        ago: Duration,
        /// How it failed.
        kind: io::ErrorKind,
    },
    /// Every connection of the pool has frames queued: none can be closed for a new one.
    #[error("all {0} TCP connections to initiators are busy")]
    Busy(usize),
    /// The connection cannot be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The initiator.
        addr: SocketAddrV4,
        /// The OS error.
        source: io::Error,
    },
    /// The connection broke while this frame was being written.
    #[error("the connection to {addr} broke: {source}")]
    Broken {
        /// The initiator.
        addr: SocketAddrV4,
        /// The OS error.
        source: io::Error,
    },
}

/// Open connections to initiators, at most a bound, least recently used closed first; each
/// with a write queue bounded in bytes. Dropping it stops its thread and closes them.
pub struct ConnectionPool {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    cfg: PoolConfig,
    state: Mutex<State>,
    registry: Registry,
    waker: Waker,
    stop: AtomicBool,
    lost: AtomicU64,
}

#[derive(Default)]
struct State {
    conns: HashMap<SocketAddrV4, Conn>,
    by_token: HashMap<Token, SocketAddrV4>,
    failed: HashMap<SocketAddrV4, (Instant, io::ErrorKind)>,
    next_token: usize,
    clock: u64,
}

struct Conn {
    stream: TcpStream,
    token: Token,
    connected: bool,
    /// Frames to write, the first one from `offset` on.
    queue: VecDeque<Vec<u8>>,
    offset: usize,
    /// Bytes in `queue` not written yet.
    queued: usize,
    /// When it was opened, last wrote a byte, or last got a frame to an empty queue.
    progress: Instant,
    /// When it last got a frame.
    active: Instant,
    /// The same as a count, for least-recently-used order.
    used: u64,
}

impl ConnectionPool {
    /// A pool of at most `max` connections, with the defaults of [`PoolConfig::new`].
    pub fn new(max: usize) -> Self {
        Self::with_config(PoolConfig::new(max)).expect("start the TCP connection pool")
    }

    /// A pool that runs as `cfg` says.
    pub fn with_config(mut cfg: PoolConfig) -> io::Result<Self> {
        cfg.max_connections = cfg.max_connections.max(1);
        let mut poll = Poll::new()?;
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State::default()),
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKE)?,
            stop: AtomicBool::new(false),
            lost: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tcp-send".into())
            .spawn(move || s.run(&mut poll))?;
        Ok(ConnectionPool {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `frame` for `addr`, reusing its connection or opening one, and returns at once:
    /// `Ok` means the frame is on its way (it is lost if the connection then fails).
    pub fn send(&self, addr: SocketAddrV4, frame: Vec<u8>) -> Result<(), SendError> {
        let shared = &*self.shared;
        let cfg = &shared.cfg;
        let mut guard = shared.state.lock();
        let st = &mut *guard;
        if let Some(&(at, kind)) = st.failed.get(&addr) {
            let ago = at.elapsed();
            if ago < cfg.backoff {
                return Err(SendError::RecentlyFailed { addr, ago, kind });
            }
            st.failed.remove(&addr);
        }
        let mut opened = false;
        if !st.conns.contains_key(&addr) {
            if st.conns.len() >= cfg.max_connections {
                let lru = st
                    .conns
                    .iter()
                    .filter(|(_, c)| c.queued == 0)
                    .min_by_key(|(_, c)| c.used)
                    .map(|(a, _)| *a);
                match lru {
                    Some(old) => shared.close(st, old),
                    None => return Err(SendError::Busy(st.conns.len())),
                }
            }
            let fail = |st: &mut State, source: io::Error| {
                st.failed.insert(addr, (Instant::now(), source.kind()));
                SendError::Connect { addr, source }
            };
            let mut stream = match TcpStream::connect(addr.into()) {
                Ok(stream) => stream,
                Err(e) => return Err(fail(st, e)),
            };
            let _ = stream.set_nodelay(true);
            let token = Token(st.next_token);
            st.next_token = (st.next_token + 1) % WAKE.0;
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = shared.registry.register(&mut stream, token, interest) {
                return Err(fail(st, e));
            }
            let now = Instant::now();
            st.by_token.insert(token, addr);
            st.conns.insert(
                addr,
                Conn {
                    stream,
                    token,
                    connected: false,
                    queue: VecDeque::new(),
                    offset: 0,
                    queued: 0,
                    progress: now,
                    active: now,
                    used: 0,
                },
            );
            opened = true;
        }
        st.clock += 1;
        let clock = st.clock;
        let conn = st
            .conns
            .get_mut(&addr)
            .expect("connection just found or made");
        if conn.queued + frame.len() > cfg.max_queued {
            return Err(SendError::QueueFull {
                addr,
                queued: conn.queued,
                bound: cfg.max_queued,
            });
        }
        let now = Instant::now();
        if conn.queue.is_empty() {
            conn.progress = now;
        }
        conn.active = now;
        conn.used = clock;
        conn.queued += frame.len();
        conn.queue.push_back(frame);
        if conn.connected
            && let Err(source) = conn.flush()
        {
            conn.queue.pop_back(); // not lost: it goes on MDR
            shared.fail(st, addr, &source);
            return Err(SendError::Broken { addr, source });
        }
        drop(guard);
        if opened {
            // The loop may be waiting with no timeout: it must watch the connect's.
            let _ = shared.waker.wake();
        }
        Ok(())
    }

    /// Open connections (established or being established).
    pub fn len(&self) -> usize {
        self.shared.state.lock().conns.len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes queued for `addr` and not written to its socket yet.
    pub fn queued(&self, addr: SocketAddrV4) -> usize {
        self.shared
            .state
            .lock()
            .conns
            .get(&addr)
            .map_or(0, |c| c.queued)
    }

    /// Frames lost so far in connections that failed after they were queued.
    pub fn lost(&self) -> u64 {
        self.shared.lost.load(Ordering::Relaxed)
    }
}

impl Drop for ConnectionPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.shared.waker.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Conn {
    /// Writes what the socket takes; `Ok` when it would block or the queue is empty.
    fn flush(&mut self) -> io::Result<()> {
        while let Some(front) = self.queue.front() {
            match self.stream.write(&front[self.offset..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.offset += n;
                    self.queued -= n;
                    self.progress = Instant::now();
                    if self.offset == front.len() {
                        self.queue.pop_front();
                        self.offset = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Shared {
    fn run(&self, poll: &mut Poll) {
        let mut events = Events::with_capacity(256);
        let mut last_sweep = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            let timeout = (!self.state.lock().conns.is_empty()).then_some(TICK);
            if let Err(e) = poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!("TCP connection pool: poll: {e}");
                std::thread::sleep(TICK);
            }
            let mut guard = self.state.lock();
            let st = &mut *guard;
            for event in events.iter() {
                if let Some(&addr) = st.by_token.get(&event.token()) {
                    self.on_event(st, addr, event);
                }
            }
            if last_sweep.elapsed() >= TICK {
                last_sweep = Instant::now();
                self.sweep(st);
            }
        }
    }

    fn on_event(&self, st: &mut State, addr: SocketAddrV4, event: &Event) {
        let Some(conn) = st.conns.get_mut(&addr) else {
            return;
        };
        if !conn.connected {
            // Connected, refused, or not yet (a spurious event).
            match conn.stream.take_error() {
                Ok(Some(e)) | Err(e) => return self.fail(st, addr, &e),
                Ok(None) => match conn.stream.peer_addr() {
                    Ok(_) => {
                        conn.connected = true;
                        conn.progress = Instant::now();
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                    Err(e) => return self.fail(st, addr, &e),
                },
            }
        }
        if event.is_writable()
            && let Err(e) = conn.flush()
        {
            return self.fail(st, addr, &e);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            // An initiator sends nothing: this is its closing (or garbage, ignored).
            let mut buf = [0u8; 512];
            loop {
                match conn.stream.read(&mut buf) {
                    Ok(0) if conn.queued == 0 => return self.close(st, addr),
                    Ok(0) => {
                        let e = io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "closed by the initiator",
                        );
                        return self.fail(st, addr, &e);
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return self.fail(st, addr, &e),
                }
            }
        }
    }

    /// Fails connections that connect or write too slowly; closes idle ones; forgets old
    /// failures.
    fn sweep(&self, st: &mut State) {
        let cfg = &self.cfg;
        let mut failed = Vec::new();
        let mut idle = Vec::new();
        for (addr, c) in &st.conns {
            if !c.connected && c.progress.elapsed() >= cfg.connect_timeout {
                failed.push((*addr, io::Error::from(io::ErrorKind::TimedOut)));
            } else if c.queued > 0 && c.progress.elapsed() >= cfg.stall_timeout {
                let e = io::Error::new(io::ErrorKind::TimedOut, "the initiator reads nothing");
                failed.push((*addr, e));
            } else if c.queued == 0 && c.active.elapsed() >= cfg.idle {
                idle.push(*addr);
            }
        }
        for (addr, e) in failed {
            self.fail(st, addr, &e);
        }
        for addr in idle {
            self.close(st, addr);
        }
        st.failed.retain(|_, (at, _)| at.elapsed() < cfg.backoff);
    }

    /// Closes the connection to `addr`; what was queued on it is lost, and sends to `addr` are
    /// refused for a while.
    fn fail(&self, st: &mut State, addr: SocketAddrV4, e: &io::Error) {
        let lost = st.conns.get(&addr).map_or(0, |c| c.queue.len());
        self.close(st, addr);
        st.failed.insert(addr, (Instant::now(), e.kind()));
        self.lost.fetch_add(lost as u64, Ordering::Relaxed);
        static LIMIT: LogLimit = LogLimit::new(Duration::from_secs(1));
        crate::log_limited!(
            LIMIT,
            warn,
            "TCP connection to {addr} failed: {e}; {lost} bodies queued on it are lost (the \
             initiator asks again); bodies for it go on MDR for {:?}",
            self.cfg.backoff
        );
    }

    fn close(&self, st: &mut State, addr: SocketAddrV4) {
        if let Some(mut conn) = st.conns.remove(&addr) {
            st.by_token.remove(&conn.token);
            let _ = self.registry.deregister(&mut conn.stream);
        }
    }
}
