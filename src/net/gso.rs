//! Sending a run of equal-sized datagrams (a chunk message's pieces) with one system call:
//! UDP generic segmentation offload (`UDP_SEGMENT`), through `quinn-udp`, where the kernel
//! supports it; one `send_to` per datagram where it does not (or when turned off).

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// The most bytes one GSO send carries (the kernel builds one packet of at most 64 KB).
const MAX_BATCH_BYTES: usize = 65_000;

/// Sends datagrams on one socket, batching equal-sized runs when it can.
pub struct BatchSender {
    /// `quinn-udp`'s state of the socket and how many segments one send may carry (absent:
    /// one datagram per send).
    gso: Option<(quinn_udp::UdpSocketState, usize)>,
}

/// What one [`BatchSender::send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams sent.
    pub datagrams: usize,
    /// Bytes sent.
    pub bytes: usize,
    /// System calls made.
    pub calls: usize,
}

impl BatchSender {
    /// A sender on `socket`, with GSO if `use_gso` and the kernel offers it.
    pub fn new(socket: &UdpSocket, use_gso: bool) -> BatchSender {
        let gso = use_gso
            .then(|| quinn_udp::UdpSocketState::new(socket.into()).ok())
            .flatten()
            .map(|state| {
                let segments = state.max_gso_segments();
                (state, segments)
            })
            .filter(|(_, segments)| *segments > 1);
        if gso.is_some() {
            // quinn-udp sets the don't-fragment bit (path MTU probing); a whole 64,000-byte
            // chunk datagram (protocol 1.0) must still be fragmented by the kernel.
            let _ = allow_fragments(socket);
        }
        BatchSender { gso }
    }

    /// Whether sends are batched.
    pub fn batching(&self) -> bool {
        self.gso.is_some()
    }

    /// Sends `datagrams` to `dest`, in order. Stops at the first error, returning it with what
    /// was sent before.
    pub fn send(
        &self,
        socket: &UdpSocket,
        dest: SocketAddr,
        datagrams: &[Vec<u8>],
    ) -> (Sent, Option<io::Error>) {
        let mut sent = Sent::default();
        let mut rest = datagrams;
        while !rest.is_empty() {
            let run = self.run_len(rest);
            let result = if run > 1 {
                let (state, _) = self.gso.as_ref().expect("runs only with GSO");
                let contents: Vec<u8> = rest[..run].concat();
                let transmit = quinn_udp::Transmit {
                    destination: dest,
                    ecn: None,
                    contents: &contents,
                    segment_size: Some(rest[0].len()),
                    src_ip: None,
                };
                state.try_send(socket.into(), &transmit)
            } else {
                socket.send_to(&rest[0], dest).map(drop)
            };
            if let Err(e) = result {
                return (sent, Some(e));
            }
            sent.calls += 1;
            sent.datagrams += run;
            sent.bytes += rest[..run].iter().map(Vec::len).sum::<usize>();
            rest = &rest[run..];
        }
        (sent, None)
    }

    /// How many of `datagrams`, from the first, one send carries: a run of the first one's
    /// size (the last of it may be shorter), within the segment and byte limits.
    fn run_len(&self, datagrams: &[Vec<u8>]) -> usize {
        let Some((_, segments)) = &self.gso else {
            return 1;
        };
        let size = datagrams[0].len();
        let max = (*segments).min(MAX_BATCH_BYTES / size.max(1)).max(1);
        let mut n = 1;
        while n < datagrams.len().min(max) {
            let len = datagrams[n].len();
            if len > size {
                break;
            }
            n += 1;
            if len < size {
                break; // a shorter one ends a run
            }
        }
        n
    }
}

/// Lets the kernel fragment datagrams larger than the path MTU again (`IP_PMTUDISC_DONT`).
fn allow_fragments(socket: &UdpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_run_of_pieces_goes_in_few_calls_and_arrives_as_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut datagrams: Vec<Vec<u8>> = (0..45u8).map(|i| vec![i; 1_400]).collect();
        datagrams.push(vec![99; 300]);
        datagrams.push(vec![100; 64_000]); // whole: a send of its own
        for gso in [false, true] {
            let sender = BatchSender::new(&tx, gso);
            let (sent, err) = sender.send(&tx, rx.local_addr().unwrap(), &datagrams);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(sent.datagrams, datagrams.len());
            if sender.batching() {
                assert!(sent.calls <= 4, "{sent:?}");
            } else {
                assert_eq!(sent.calls, datagrams.len());
            }
            let mut buf = vec![0u8; 65_536];
            for d in &datagrams {
                let n = rx.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &d[..]);
            }
        }
    }

    #[test]
    fn runs_break_at_a_larger_or_shorter_datagram() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = BatchSender::new(&tx, true);
        assert!(sender.batching(), "Linux has had UDP GSO since 4.18");
        let d = |n: usize| vec![0u8; n];
        assert_eq!(sender.run_len(&[d(10), d(10), d(5), d(10)]), 3);
        assert_eq!(sender.run_len(&[d(10), d(11)]), 1);
        assert_eq!(sender.run_len(&[d(64_000), d(64_000)]), 1);
    }
}
