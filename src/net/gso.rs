//! Sending a run of equal-sized datagrams (a chunk message's pieces) with one system call:
//! UDP generic segmentation offload (`UDP_SEGMENT`), through `quinn-udp`, where the kernel
//! supports it; one `send_to` per datagram where it does not (or when turned off).

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// The most bytes one GSO send carries (the kernel builds one packet of at most 64 KB).
const MAX_BATCH_BYTES: usize = 65_000;

/// Sends datagrams on one socket, batching equal-sized runs when it can.
pub struct BatchSender {
    /// `quinn-udp`'s state of the socket (absent: one datagram per send).
    gso: Option<quinn_udp::UdpSocketState>,
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
    /// Datagrams that could not be sent.
    pub failed: usize,
}

impl BatchSender {
    /// A sender on `socket`, with GSO if `use_gso` and the kernel offers it. The socket stays
    /// as it was otherwise: blocking, and letting the kernel fragment a datagram larger than
    /// the path MTU (quinn-udp makes it non-blocking and sets the don't-fragment bit; both are
    /// undone, whatever it found).
    pub fn new(socket: &UdpSocket, use_gso: bool) -> BatchSender {
        if !use_gso {
            return BatchSender { gso: None };
        }
        let discover = mtu_discover(socket);
        let state = quinn_udp::UdpSocketState::new(socket.into()).ok();
        let _ = socket.set_nonblocking(false);
        if let Some(value) = discover {
            let _ = set_mtu_discover(socket, value);
        }
        BatchSender {
            gso: state.filter(|s| s.max_gso_segments() > 1),
        }
    }

    /// Whether sends are batched.
    pub fn batching(&self) -> bool {
        self.gso.as_ref().is_some_and(|s| s.max_gso_segments() > 1)
    }

    /// Sends `datagrams` to `dest`, in order. A run that GSO cannot send goes again one
    /// datagram at a time; a datagram that fails is counted and the rest still go. Returns
    /// what was done and the last error.
    pub fn send(
        &self,
        socket: &UdpSocket,
        dest: SocketAddr,
        datagrams: &[Vec<u8>],
    ) -> (Sent, Option<io::Error>) {
        let mut sent = Sent::default();
        let mut error = None;
        let mut rest = datagrams;
        while !rest.is_empty() {
            let run = self.run_len(rest);
            if run > 1 {
                let state = self.gso.as_ref().expect("runs only with GSO");
                let contents: Vec<u8> = rest[..run].concat();
                let transmit = quinn_udp::Transmit {
                    destination: dest,
                    ecn: None,
                    contents: &contents,
                    segment_size: Some(rest[0].len()),
                    src_ip: None,
                };
                sent.calls += 1;
                if state.try_send(socket.into(), &transmit).is_ok() {
                    sent.datagrams += run;
                    sent.bytes += contents.len();
                    rest = &rest[run..];
                    continue;
                }
                // (quinn-udp turns GSO off for the socket on errors that say it is not
                // supported; `run_len` then gives 1.) This run goes one by one.
            }
            for d in &rest[..run] {
                sent.calls += 1;
                match socket.send_to(d, dest) {
                    Ok(_) => {
                        sent.datagrams += 1;
                        sent.bytes += d.len();
                    }
                    Err(e) => {
                        sent.failed += 1;
                        error = Some(e);
                    }
                }
            }
            rest = &rest[run..];
        }
        (sent, error)
    }

    /// How many of `datagrams`, from the first, one send carries: a run of the first one's
    /// size (the last of it may be shorter), within the segment and byte limits.
    fn run_len(&self, datagrams: &[Vec<u8>]) -> usize {
        let Some(state) = &self.gso else {
            return 1;
        };
        let size = datagrams[0].len();
        let max = state
            .max_gso_segments()
            .min(MAX_BATCH_BYTES / size.max(1))
            .max(1);
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

/// The socket's `IP_MTU_DISCOVER` setting.
fn mtu_discover(socket: &UdpSocket) -> Option<libc::c_int> {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket, and a c_int buffer of the length given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// Sets the socket's `IP_MTU_DISCOVER` to `value`.
fn set_mtu_discover(socket: &UdpSocket, value: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
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
    fn the_socket_stays_blocking_and_lets_the_kernel_fragment() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = mtu_discover(&tx).unwrap();
        let sender = BatchSender::new(&tx, true);
        assert!(sender.batching());
        assert_eq!(mtu_discover(&tx), Some(before), "IP_MTU_DISCOVER changed");
        // Blocking: a read with no data waits for its timeout instead of failing at once.
        tx.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let err = tx.recv(&mut [0u8; 16]).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        let start = std::time::Instant::now();
        let _ = tx.recv(&mut [0u8; 16]);
        assert!(
            start.elapsed() >= Duration::from_millis(40),
            "the socket is non-blocking"
        );
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
