//! Receiving many datagrams per system call: `recvmmsg`, and UDP GRO where the kernel
//! coalesces a run of equal-sized datagrams into one buffer, through `quinn-udp` (the
//! counterpart of [`super::gso`]). The socket becomes non-blocking; a wait with a timeout
//! (`mio`) lets the receiving thread notice shutdown.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// Buffers filled by one system call at most (quinn-udp's own batch on Linux is 32).
const BATCH: usize = 32;
/// System calls one [`BatchReceiver::receive`] makes at most.
const MAX_CALLS: usize = 64;
/// Bytes of each buffer: the largest UDP datagram, or one GRO run (at most 64 KB).
const BUF_BYTES: usize = 65_536;

/// Receives datagrams from one socket, many per system call.
pub struct BatchReceiver {
    socket: mio::net::UdpSocket,
    poll: mio::Poll,
    events: mio::Events,
    state: quinn_udp::UdpSocketState,
    /// [`BATCH`] buffers of [`BUF_BYTES`], one allocation (zeroed lazily by the system:
    /// only the bytes datagrams fill become resident).
    bufs: Box<[u8]>,
    meta: [quinn_udp::RecvMeta; BATCH],
    /// System calls that received at least one datagram.
    pub calls: u64,
    /// Datagrams received.
    pub datagrams: u64,
    /// The last receive stopped at [`MAX_CALLS`]: datagrams may be waiting.
    more: bool,
}

impl BatchReceiver {
    /// Takes `socket` over, with [`BATCH`] buffers.
    pub fn new(socket: UdpSocket) -> io::Result<BatchReceiver> {
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        socket.set_nonblocking(true)?;
        let mut socket = mio::net::UdpSocket::from_std(socket);
        let poll = mio::Poll::new()?;
        poll.registry()
            .register(&mut socket, mio::Token(0), mio::Interest::READABLE)?;
        Ok(BatchReceiver {
            socket,
            poll,
            events: mio::Events::with_capacity(1),
            state,
            bufs: vec![0; BUF_BYTES * BATCH].into_boxed_slice(),
            meta: [quinn_udp::RecvMeta::default(); BATCH],
            calls: 0,
            datagrams: 0,
            more: false,
        })
    }

    /// Waits at most `timeout` for the socket to be readable, then receives until it has
    /// nothing more (or [`MAX_CALLS`] calls), handing each datagram and its source to `each`. Returns how many it
    /// received (0: the wait ran out). Errors other than "nothing more" end the call.
    pub fn receive(
        &mut self,
        timeout: Duration,
        mut each: impl FnMut(&[u8], SocketAddr),
    ) -> io::Result<usize> {
        // (The wait is edge-triggered: after a receive cut short, the next one does not wait.)
        if !self.more {
            self.poll.poll(&mut self.events, Some(timeout))?;
        }
        self.more = false;
        let mut received = 0;
        // At most this many calls before returning (the caller looks whether to stop), even
        // if datagrams keep coming.
        for _ in 0..MAX_CALLS {
            let mut bufs = self.bufs.chunks_exact_mut(BUF_BYTES);
            let mut slices: [io::IoSliceMut<'_>; BATCH] =
                std::array::from_fn(|_| io::IoSliceMut::new(bufs.next().expect("BATCH buffers")));
            let n = match self
                .state
                .recv((&self.socket).into(), &mut slices, &mut self.meta)
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(received),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.calls += 1;
            for (meta, buf) in self.meta[..n].iter().zip(self.bufs.chunks_exact(BUF_BYTES)) {
                if meta.len == 0 {
                    // An empty datagram is one too (to count, and refuse).
                    received += 1;
                    self.datagrams += 1;
                    each(&[], meta.addr);
                    continue;
                }
                let stride = if meta.stride == 0 {
                    meta.len
                } else {
                    meta.stride
                };
                for datagram in buf[..meta.len].chunks(stride) {
                    received += 1;
                    self.datagrams += 1;
                    each(datagram, meta.addr);
                }
            }
        }
        self.more = true;
        Ok(received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_burst_arrives_in_few_calls_and_in_order_empty_datagrams_too() {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let to = rx.local_addr().unwrap();
        let mut r = BatchReceiver::new(rx).unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        // (60 fit in the default receive buffer.) Every tenth is short, every tenth empty.
        let len = |i: u32| match i % 10 {
            9 => 70,
            5 => 0,
            _ => 1_000,
        };
        for i in 0..60u32 {
            let mut d = vec![0u8; len(i)];
            if !d.is_empty() {
                d[..4].copy_from_slice(&i.to_be_bytes());
            }
            tx.send_to(&d, to).unwrap();
        }
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < 60 && std::time::Instant::now() < deadline {
            r.receive(Duration::from_millis(100), |d, from| {
                assert_eq!(from, tx.local_addr().unwrap());
                let no = d
                    .get(..4)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap()));
                got.push((no, d.len()));
            })
            .unwrap();
        }
        let want: Vec<(Option<u32>, usize)> = (0..60)
            .map(|i| ((len(i) > 0).then_some(i), len(i)))
            .collect();
        assert_eq!(got, want);
        assert!(r.calls < 10, "{} calls for 60 datagrams", r.calls);
        // Nothing more: the wait runs out.
        let n = r
            .receive(Duration::from_millis(20), |_, _| panic!("nothing sent"))
            .unwrap();
        assert_eq!(n, 0);
    }
}
