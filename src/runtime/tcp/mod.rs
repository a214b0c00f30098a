//! Enhanced restore over TCP: the initiator's listener for chunk bodies ([`serve`]) and the
//! holder's bounded pool of connections to initiators ([`ConnectionPool`]).
//!
//! Both sides are non-blocking sockets multiplexed by one `mio` event loop each, so a peer
//! spends a constant number of threads on TCP bodies (one for the listener, one for the pool)
//! whatever the number of connections, and a slow or stuck connection delays nobody else.
//!
//! A frame is a 4-byte big-endian length followed by one encoded CHUNK message (sealed, in a
//! secure group: the executor seals and opens it).

mod client;
mod listener;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};

use bytes::Bytes;

use crate::protocol::MAX_CHUNK_SIZE;

pub use client::{ConnectionPool, PoolConfig, SendError};
pub use listener::{BodyListener, MAX_BODY_CONNECTIONS, ServeConfig, serve, serve_with};

/// Largest frame accepted: a full chunk plus a generous header (and a seal).
pub const MAX_FRAME: usize = MAX_CHUNK_SIZE + 4096 + crate::secure::envelope::OVERHEAD;

/// Connections the kernel queues for the body listener before it accepts them.
const LISTEN_BACKLOG: i32 = 1024;

/// Binds the body listener on `iface` at a port picked by the system.
pub fn bind(iface: Ipv4Addr) -> io::Result<(TcpListener, SocketAddrV4)> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SockAddr::from(SocketAddrV4::new(iface, 0)))?;
    socket.listen(LISTEN_BACKLOG)?;
    let listener: TcpListener = socket.into();
    match listener.local_addr()? {
        SocketAddr::V4(addr) => Ok((listener, addr)),
        SocketAddr::V6(_) => Err(io::Error::other("IPv4 listener has an IPv6 address")),
    }
}

/// `bytes` (an encoded message) as one frame.
pub fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// A frame announced a length past [`MAX_FRAME`]: the connection is dropped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a frame of {0} bytes is past the {MAX_FRAME}-byte bound")]
struct FrameTooLarge(usize);

/// Cuts a byte stream into frames as its bytes arrive, in pieces of any size. A partial frame
/// costs what has arrived of it, not the length it announces.
#[derive(Debug, Default)]
struct FrameReader {
    head: [u8; 4],
    head_len: usize,
    /// The length announced, once the head is complete.
    want: usize,
    body: Vec<u8>,
}

impl FrameReader {
    /// Takes `data`, handing every frame it completes to `deliver`.
    fn feed(
        &mut self,
        mut data: &[u8],
        deliver: &mut impl FnMut(Bytes),
    ) -> Result<(), FrameTooLarge> {
        while !data.is_empty() {
            if self.head_len < 4 {
                let take = (4 - self.head_len).min(data.len());
                self.head[self.head_len..self.head_len + take].copy_from_slice(&data[..take]);
                self.head_len += take;
                data = &data[take..];
                if self.head_len == 4 {
                    self.want = u32::from_be_bytes(self.head) as usize;
                    if self.want > MAX_FRAME {
                        return Err(FrameTooLarge(self.want));
                    }
                    if self.want == 0 {
                        self.head_len = 0;
                        deliver(Bytes::new());
                    }
                }
                continue;
            }
            let need = self.want - self.body.len();
            if self.body.is_empty() && data.len() >= need {
                // The whole frame is in `data`: one copy.
                deliver(Bytes::copy_from_slice(&data[..need]));
                data = &data[need..];
                self.head_len = 0;
                continue;
            }
            let take = need.min(data.len());
            self.body.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.body.len() == self.want {
                deliver(Bytes::from(std::mem::take(&mut self.body)));
                self.head_len = 0;
            }
        }
        Ok(())
    }

    /// Whether part of a frame has arrived.
    fn mid_frame(&self) -> bool {
        self.head_len > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChunkKey, FileId, Message, MessageKind, Version};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    fn chunk(no: u32, len: usize) -> Vec<u8> {
        Message::new(
            Version::V2_0,
            9,
            MessageKind::Chunk {
                chunk: ChunkKey {
                    file: FileId([1; 32]),
                    no,
                },
                body: vec![no as u8; len].into(),
            },
        )
        .encode()
    }

    fn chunk_no(frame: &[u8]) -> u32 {
        match Message::parse(frame).unwrap().kind {
            MessageKind::Chunk { chunk, .. } => chunk.no,
            other => panic!("{other:?}"),
        }
    }

    /// Waits (polling) until `cond` holds, at most `timeout`.
    fn within(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        cond()
    }

    #[test]
    fn frames_are_cut_from_pieces_of_any_size() {
        let frames = [frame(b"hello"), frame(b""), frame(&[7u8; 60_000])];
        let stream: Vec<u8> = frames.concat();
        for piece in [1, 3, 4, 5, 9, 4096, stream.len()] {
            let mut reader = FrameReader::default();
            let mut got = Vec::new();
            for part in stream.chunks(piece) {
                reader.feed(part, &mut |f: Bytes| got.push(f)).unwrap();
            }
            assert!(!reader.mid_frame(), "pieces of {piece}");
            assert_eq!(got.len(), 3, "pieces of {piece}");
            assert_eq!(&got[0][..], b"hello");
            assert!(got[1].is_empty());
            assert_eq!(&got[2][..], &[7u8; 60_000][..]);
        }
        let mut reader = FrameReader::default();
        reader.feed(&[0, 0], &mut |_| {}).unwrap();
        assert!(reader.mid_frame());
        let too_large = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(
            FrameReader::default().feed(&too_large, &mut |_| {}),
            Err(FrameTooLarge(MAX_FRAME + 1))
        );
    }

    #[test]
    fn frames_arrive_in_order_over_reused_connections_and_the_pool_is_bounded() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut addrs = Vec::new();
        let mut listeners = Vec::new();
        for _ in 0..3 {
            let (listener, addr) = bind(Ipv4Addr::LOCALHOST).unwrap();
            let tx = tx.clone();
            listeners.push(
                serve(listener, move |m: Bytes| {
                    let _ = tx.send(m);
                })
                .unwrap(),
            );
            addrs.push(addr);
        }
        let pool = ConnectionPool::new(2);
        for no in 0..6 {
            // The pool closes an idle connection for a new one: wait for the last frame
            // queued to be written.
            assert!(within(Duration::from_secs(5), || addrs
                .iter()
                .all(|a| pool.queued(*a) == 0)));
            pool.send(addrs[no as usize % 3], frame(&chunk(no, 64_000)))
                .unwrap();
            assert!(pool.len() <= 2);
        }
        let mut got: Vec<u32> = (0..6)
            .map(|_| {
                let m = rx.recv_timeout(Duration::from_secs(5)).unwrap();
                match Message::parse(&m).unwrap().kind {
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
    fn past_its_cap_the_body_listener_closes_the_connection_idle_the_longest() {
        let (listener, addr) = bind(Ipv4Addr::LOCALHOST).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let cap = 8;
        let cfg = ServeConfig {
            max_connections: cap,
            ..ServeConfig::default()
        };
        let server = serve_with(listener, cfg, move |m: Bytes| {
            let _ = tx.send(m);
        })
        .unwrap();
        let mut conns: Vec<TcpStream> = Vec::new();
        for i in 0..cap {
            conns.push(TcpStream::connect(addr).unwrap());
            assert!(within(Duration::from_secs(5), || server.open() == i + 1));
        }
        // The first one sends a frame: the second is now the one idle the longest.
        conns[0].write_all(&frame(&chunk(0, 10))).unwrap();
        assert_eq!(
            chunk_no(&rx.recv_timeout(Duration::from_secs(5)).unwrap()),
            0
        );
        for _ in 0..3 {
            conns.push(TcpStream::connect(addr).unwrap());
        }
        assert!(within(Duration::from_secs(5), || server.evicted() == 3));
        assert_eq!(server.open(), cap);
        // Closed: the 2nd, 3rd and 4th (end of file); the others are open (nothing to read).
        let closed: Vec<usize> = conns
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| {
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                matches!(s.read(&mut [0u8; 1]), Ok(0)).then_some(i)
            })
            .collect();
        assert_eq!(closed, vec![1, 2, 3]);
        // Closing them frees their places.
        conns.clear();
        assert!(
            within(Duration::from_secs(5), || server.open() == 0),
            "{} still open",
            server.open()
        );
    }

    #[test]
    fn the_body_listener_closes_idle_connections_and_oversized_frames() {
        let (listener, addr) = bind(Ipv4Addr::LOCALHOST).unwrap();
        let cfg = ServeConfig {
            idle: Duration::from_millis(200),
            ..ServeConfig::default()
        };
        let server = serve_with(listener, cfg, |_| {}).unwrap();
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(idle.read(&mut [0u8; 1]), Ok(0)));
        assert_eq!(server.timed_out(), 1);
        let mut liar = TcpStream::connect(addr).unwrap();
        liar.write_all(&u32::MAX.to_be_bytes()).unwrap();
        liar.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(liar.read(&mut [0u8; 1]), Ok(0)));
        assert_eq!(
            server.timed_out(),
            1,
            "closed for its frame, not for idling"
        );
    }

    /// One initiator accepts the connection and never reads: its queue fills to its bound and
    /// then refuses frames (they go on MDR), while frames to another initiator are delivered
    /// at once, and no send waits.
    #[test]
    fn an_initiator_that_never_reads_delays_no_other() {
        let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stuck_addr = match stuck.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        let (listener, good) = bind(Ipv4Addr::LOCALHOST).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let _server = serve(listener, move |m: Bytes| {
            let _ = tx.send(m);
        })
        .unwrap();
        let cfg = PoolConfig {
            max_queued: 1 << 20,
            stall_timeout: Duration::from_secs(60),
            ..PoolConfig::new(8)
        };
        let pool = ConnectionPool::with_config(cfg).unwrap();
        let mut slowest = Duration::ZERO;
        let mut timed = |f: &mut dyn FnMut() -> Result<(), SendError>| {
            let start = Instant::now();
            let r = f();
            slowest = slowest.max(start.elapsed());
            r
        };
        // Accepted, then never read.
        timed(&mut || pool.send(stuck_addr, frame(&chunk(0, 64_000)))).unwrap();
        let (_held, _) = stuck.accept().unwrap();
        let mut refused = 0;
        let mut delivered = 0;
        for no in 1..=400 {
            match timed(&mut || pool.send(stuck_addr, frame(&chunk(no, 64_000)))) {
                Ok(()) => {}
                Err(SendError::QueueFull { queued, bound, .. }) => {
                    assert!(queued <= bound);
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
            timed(&mut || pool.send(good, frame(&chunk(no, 64_000)))).unwrap();
            let got = rx
                .recv_timeout(Duration::from_secs(2))
                .expect("delivered promptly");
            assert_eq!(chunk_no(&got), no);
            delivered += 1;
        }
        // The kernel's buffers took some megabytes; the queue took at most its bound.
        assert!(refused > 0, "the stuck initiator's queue never filled");
        assert!(pool.queued(stuck_addr) <= 1 << 20);
        assert_eq!(delivered, 400);
        assert!(
            slowest < Duration::from_millis(500),
            "a send took {slowest:?}"
        );
    }

    #[test]
    fn a_refused_connection_loses_its_frames_and_sends_to_it_fail_for_a_while() {
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = match gone.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        };
        drop(gone);
        let pool = ConnectionPool::new(8);
        // Queued while connecting (or refused at once, if the kernel says so right away).
        let first = pool.send(addr, frame(b"x"));
        assert!(within(Duration::from_secs(5), || matches!(
            pool.send(addr, frame(b"y")),
            Err(SendError::RecentlyFailed { .. } | SendError::Connect { .. })
        )));
        assert!(pool.is_empty());
        if first.is_ok() {
            assert!(pool.lost() >= 1);
        }
    }
}
