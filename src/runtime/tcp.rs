//! Enhanced restore over TCP: the initiator's listener for chunk bodies, and the holder's
//! bounded pool of connections to initiators (least recently used closed first).
//!
//! A frame is a 4-byte big-endian length followed by one encoded CHUNK message (sealed, in a
//! secure group: the executor seals and opens it).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::log_limit::LogLimit;
use bytes::Bytes;

use crate::protocol::MAX_CHUNK_SIZE;

/// Largest frame accepted: a full chunk plus a generous header (and a seal).
pub const MAX_FRAME: usize = MAX_CHUNK_SIZE + 4096 + crate::secure::envelope::OVERHEAD;

/// How long a connection may stay idle before the initiator closes it.
const IDLE: Duration = Duration::from_secs(60);

/// Binds the body listener on `iface` at a port picked by the system.
pub fn bind(iface: Ipv4Addr) -> io::Result<(TcpListener, SocketAddrV4)> {
    let listener = TcpListener::bind(SocketAddrV4::new(iface, 0))?;
    match listener.local_addr()? {
        SocketAddr::V4(addr) => Ok((listener, addr)),
        SocketAddr::V6(_) => Err(io::Error::other("IPv4 listener has an IPv6 address")),
    }
}

/// Connections to the body listener open at once at most (a thread each): 8 holders with a
/// full pool each. Past it a new connection is closed at once; its holder then sends the body
/// on MDR, as when TCP fails.
pub const MAX_BODY_CONNECTIONS: usize = 64;

/// Accepts holders' connections (at most [`MAX_BODY_CONNECTIONS`] open); every message read
/// is handed to `deliver` on the connection's own thread (so a fast holder is slowed down by
/// TCP, not dropped). Returns the count of connections open.
pub fn serve(
    listener: TcpListener,
    deliver: impl Fn(Bytes) + Send + Sync + Clone + 'static,
) -> Arc<AtomicUsize> {
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    std::thread::Builder::new()
        .name("tcp-bodies".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if count.fetch_add(1, Ordering::SeqCst) >= MAX_BODY_CONNECTIONS {
                    count.fetch_sub(1, Ordering::SeqCst);
                    static LIMIT: LogLimit = LogLimit::new(Duration::from_secs(1));
                    crate::log_limited!(
                        LIMIT,
                        warn,
                        "TCP body listener: {MAX_BODY_CONNECTIONS} connections open already, \
                         closing one from {:?}",
                        stream.peer_addr().ok()
                    );
                    continue; // dropped: closed
                }
                let deliver = deliver.clone();
                let conn = count.clone();
                let spawned = std::thread::Builder::new()
                    .name("tcp-body-conn".into())
                    .spawn(move || {
                        read_frames(stream, deliver);
                        conn.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    count.fetch_sub(1, Ordering::SeqCst); // not open after all
                }
            }
        })
        .expect("spawn TCP body listener");
    open
}

fn read_frames(mut stream: TcpStream, deliver: impl Fn(Bytes)) {
    if stream.set_read_timeout(Some(IDLE)).is_err() {
        return;
    }
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let mut len = [0u8; 4];
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME || stream.read_exact(&mut buf[..len]).is_err() {
            return; // a frame we cannot take: drop the connection
        }
        deliver(Bytes::copy_from_slice(&buf[..len]));
    }
}

/// `bytes` (an encoded message) as one frame.
pub fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Open connections to initiators, at most `max`, least recently used closed first.
pub struct ConnectionPool {
    max: usize,
    conns: Mutex<VecDeque<(SocketAddrV4, TcpStream)>>,
}

impl ConnectionPool {
    /// A pool of at most `max` connections.
    pub fn new(max: usize) -> Self {
        ConnectionPool {
            max: max.max(1),
            conns: Mutex::new(VecDeque::new()),
        }
    }

    /// Sends `frame` to `addr`, reusing an open connection (and reconnecting once if it broke).
    pub fn send(&self, addr: SocketAddrV4, frame: &[u8]) -> io::Result<()> {
        let reused = {
            let mut conns = self.conns.lock();
            conns
                .iter()
                .position(|(a, _)| *a == addr)
                .and_then(|i| conns.remove(i))
        };
        let stream = match reused.map(|(_, mut s)| s.write_all(frame).map(|()| s)) {
            Some(Ok(s)) => s,
            _ => {
                let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1))?;
                s.set_nodelay(true)?;
                s.set_write_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(frame)?;
                s
            }
        };
        let mut conns = self.conns.lock();
        conns.push_front((addr, stream));
        conns.truncate(self.max);
        Ok(())
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.conns.lock().len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChunkKey, FileId, Message, MessageKind, Version};

    #[test]
    fn frames_arrive_in_order_over_reused_connections_and_the_pool_is_bounded() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let (listener, addr) = bind(Ipv4Addr::LOCALHOST).unwrap();
            let tx = tx.clone();
            serve(listener, move |m: Bytes| {
                let _ = tx.send(m);
            });
            addrs.push(addr);
        }
        let pool = ConnectionPool::new(2);
        let chunk = |no| {
            Message::new(
                Version::V2_0,
                9,
                MessageKind::Chunk {
                    chunk: ChunkKey {
                        file: FileId([1; 32]),
                        no,
                    },
                    body: vec![no as u8; 64_000].into(),
                },
            )
        };
        for no in 0..6 {
            pool.send(addrs[no as usize % 3], &frame(&chunk(no).encode()))
                .unwrap();
            assert!(pool.len() <= 2);
        }
        let mut got: Vec<u32> = (0..6)
            .map(|_| {
                match Message::parse(&rx.recv_timeout(Duration::from_secs(5)).unwrap())
                    .unwrap()
                    .kind
                {
                    MessageKind::Chunk { chunk, body } => {
                        assert_eq!(body, vec![chunk.no as u8; 64_000]);
                        chunk.no
                    }
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn the_body_listener_keeps_at_most_its_cap_of_connections_open() {
        let (listener, addr) = bind(Ipv4Addr::LOCALHOST).unwrap();
        let open = serve(listener, |_| {});
        let mut idle: Vec<TcpStream> = (0..MAX_BODY_CONNECTIONS + 20)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        // The ones past the cap are closed by the listener: reading them gives end of file.
        let mut closed = 0;
        for s in idle.iter_mut().skip(MAX_BODY_CONNECTIONS) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            if matches!(s.read(&mut [0u8; 1]), Ok(0)) {
                closed += 1;
            }
        }
        assert_eq!(closed, 20);
        assert_eq!(open.load(Ordering::SeqCst), MAX_BODY_CONNECTIONS);
        // Closing them frees their places.
        idle.clear();
        let freed = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            open.load(Ordering::SeqCst) == 0
        });
        assert!(freed, "{} still open", open.load(Ordering::SeqCst));
    }
}
