//! Multicast sockets, always pinned to an explicit interface (IP_ADD_MEMBERSHIP and
//! IP_MULTICAST_IF), never INADDR_ANY: on these machines that keeps traffic on loopback.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::core::Channel;

/// Receive buffer asked for on every channel socket (the kernel doubles it, for its own
/// bookkeeping). A receiver thread that loses the CPU for a while (2 cores shared by many
/// peers) must find its datagrams still queued. Measured on such a machine: with a quarter of
/// this, an 8-peer backup lost about 1 % of its PUTCHUNKs in the storers' sockets; with half,
/// a 1 GB backup still lost 38 (a storer at 84 MB/s fills 16 MiB in 0.2 s); with this, none.
pub const RECV_BUFFER: usize = 16 << 20;

/// Send buffer asked for on sender sockets.
pub const SEND_BUFFER: usize = 1 << 20;

/// The group address and port of each channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelAddrs {
    /// Control channel.
    pub mc: SocketAddrV4,
    /// Backup data channel.
    pub mdb: SocketAddrV4,
    /// Restore data channel.
    pub mdr: SocketAddrV4,
}

impl ChannelAddrs {
    /// The address of `channel`.
    pub fn get(&self, channel: Channel) -> SocketAddrV4 {
        match channel {
            Channel::Mc => self.mc,
            Channel::Mdb => self.mdb,
            Channel::Mdr => self.mdr,
        }
    }
}

/// A socket that receives `group` on `iface` only. Bound to the group address (and with
/// IP_MULTICAST_ALL off) so that two groups sharing a port do not cross-talk; SO_REUSEADDR so
/// that many peers on one host share the port. Reads time out after `read_timeout` so the
/// receiver can notice shutdown.
pub fn open_receiver(
    group: SocketAddrV4,
    iface: Ipv4Addr,
    read_timeout: Duration,
) -> io::Result<UdpSocket> {
    if !group.ip().is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a multicast address", group.ip()),
        ));
    }
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    set_recv_buffer(&socket, RECV_BUFFER)?;
    socket.bind(&SockAddr::from(group))?;
    socket.join_multicast_v4(group.ip(), &iface)?;
    socket.set_multicast_all_v4(false)?;
    socket.set_multicast_if_v4(&iface)?;
    socket.set_read_timeout(Some(read_timeout))?;
    Ok(socket.into())
}

/// The receive buffer a socket got, as the kernel reports it (twice what was asked for, at
/// most twice `net.core.rmem_max` without CAP_NET_ADMIN).
pub fn recv_buffer_size(socket: &UdpSocket) -> io::Result<usize> {
    socket2::SockRef::from(socket).recv_buffer_size()
}

/// Asks for a receive buffer of `size` bytes: past `net.core.rmem_max` if the process may
/// (SO_RCVBUFFORCE, with CAP_NET_ADMIN), else up to that limit (SO_RCVBUF).
fn set_recv_buffer(socket: &Socket, size: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid descriptor and a pointer to a c_int that outlives the call, with its size.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if forced {
        return Ok(());
    }
    socket.set_recv_buffer_size(size)
}

/// A socket for sending multicast out of `iface` with TTL 1, loopback on (peers on this host
/// hear it), bound to `iface` so that it cannot send anywhere else.
pub fn open_sender(iface: Ipv4Addr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_multicast_if_v4(&iface)?;
    socket.set_multicast_ttl_v4(1)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_send_buffer_size(SEND_BUFFER)?;
    socket.bind(&SockAddr::from(SocketAddrV4::new(iface, 0)))?;
    Ok(socket.into())
}

/// Receives one datagram but copies at most `buf.len()` bytes of it (the rest is discarded by
/// the kernel without being copied). Returns the bytes copied and the datagram's full length:
/// a peer that only needs a CHUNK's header saves copying its 64 KB body. With `peek`, the
/// datagram stays queued (the next receive gets it again).
pub fn recv_head(socket: &UdpSocket, buf: &mut [u8], peek: bool) -> io::Result<(usize, usize)> {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call, and the kernel
    // writes at most that many (MSG_TRUNC only changes the length returned).
    let n = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC | if peek { libc::MSG_PEEK } else { 0 },
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let full = n as usize;
    Ok((full.min(buf.len()), full))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_head_copies_the_beginning_and_peeking_leaves_the_datagram_queued() {
        let lo = Ipv4Addr::LOCALHOST;
        // A port of our own: bind an ordinary socket to learn a free one.
        let port = UdpSocket::bind((lo, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let group = SocketAddrV4::new(Ipv4Addr::new(239, 77, 9, 9), port);
        let rx = open_receiver(group, lo, Duration::from_secs(5)).unwrap();
        let tx = open_sender(lo).unwrap();
        let datagram: Vec<u8> = (0..64_100u32).map(|i| i as u8).collect();
        for _ in 0..2 {
            tx.send_to(&datagram, group).unwrap();
        }
        let mut buf = vec![0u8; 65_536];
        // Peek: the first 1,000 bytes, the full length, and the datagram is still there.
        assert_eq!(
            recv_head(&rx, &mut buf[..1000], true).unwrap(),
            (1000, datagram.len())
        );
        assert_eq!(&buf[..1000], &datagram[..1000]);
        assert_eq!(rx.recv(&mut buf).unwrap(), datagram.len());
        assert_eq!(&buf[..datagram.len()], &datagram[..]);
        // Without peeking, the rest of the datagram is gone.
        assert_eq!(
            recv_head(&rx, &mut buf[..10], false).unwrap(),
            (10, datagram.len())
        );
        rx.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        assert!(rx.recv(&mut buf).is_err(), "nothing left");
        // A datagram that fits is copied whole.
        tx.send_to(b"short", group).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(recv_head(&rx, &mut buf[..10], false).unwrap(), (5, 5));
    }
}
