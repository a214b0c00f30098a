//! Multicast sockets, always pinned to an explicit interface (IP_ADD_MEMBERSHIP and
//! IP_MULTICAST_IF), never INADDR_ANY: on these machines that keeps traffic on loopback.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::core::Channel;

/// Receive buffer asked for on every channel socket (the kernel doubles it).
pub const RECV_BUFFER: usize = 4 << 20;

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
    socket.set_recv_buffer_size(RECV_BUFFER)?;
    socket.bind(&SockAddr::from(group))?;
    socket.join_multicast_v4(group.ip(), &iface)?;
    socket.set_multicast_all_v4(false)?;
    socket.set_multicast_if_v4(&iface)?;
    socket.set_read_timeout(Some(read_timeout))?;
    Ok(socket.into())
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
