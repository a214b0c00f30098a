//! The host settings a peer checks at start for a real LAN: on a link whose MTU cannot carry a
//! 64,000-byte chunk datagram in one frame, the kernel reassembles it from IP fragments, and
//! its default reassembly limits do not survive frame loss.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// Below this MTU a chunk datagram (64,000 bytes of body, its header, UDP and IP) is
/// fragmented.
pub const UNFRAGMENTED_MTU: u32 = 65_535;
/// IP payload of the largest chunk datagram: 64,000 bytes of body, up to about 92 of header,
/// 8 of UDP.
const CHUNK_DATAGRAM: u32 = 64_100;
/// Reassembly memory (`net.ipv4.ipfrag_high_thresh`, bytes) that held up in the measurement
/// (docs/benchmarks.md: 4 hosts, MTU 1,500, 1 Gbit/s, 1 % frame loss, a 20 MB BACKUP).
pub const ADVISED_HIGH_THRESH: u64 = 32 * 1024 * 1024;
/// Seconds an incomplete datagram is kept (`net.ipv4.ipfrag_time`) at most, advised.
pub const ADVISED_TIME_S: u64 = 5;

/// The name and MTU of the interface that has address `addr`, if one has.
pub fn interface_mtu(addr: Ipv4Addr) -> Option<(String, u32)> {
    let name = if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .find(|i| i.ip() == IpAddr::V4(addr))?
        .name;
    let mtu = mtu_of(&name)?;
    Some((name, mtu))
}

/// The MTU of interface `name`, asked of the kernel (`SIOCGIFMTU`) in this process's network
/// namespace (`/sys/class/net` shows the namespace sysfs was mounted in, which may be another).
fn mtu_of(name: &str) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
    // SAFETY: ifreq is plain data, valid when zeroed.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the NUL-terminated name in `req` and writes its ifru_mtu.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc != 0 {
        return None;
    }
    // SAFETY: after a successful SIOCGIFMTU the union holds the MTU.
    u32::try_from(unsafe { req.ifr_ifru.ifru_mtu }).ok()
}

/// What to tell the user about the interface with address `addr` (none when its MTU carries
/// whole chunk datagrams or the reassembly limits are already as advised).
pub fn fragmentation_warning(addr: Ipv4Addr) -> Option<String> {
    let (name, mtu) = interface_mtu(addr)?;
    let sysctl = Path::new("/proc/sys/net/ipv4");
    let high = read_number(&sysctl.join("ipfrag_high_thresh"))?;
    let time = read_number(&sysctl.join("ipfrag_time"))?;
    advice(&name, mtu, high, time)
}

/// The warning for interface `name` with MTU `mtu` and reassembly limits `high_thresh`
/// (bytes) and `time_s` (seconds), if one is due.
pub fn advice(name: &str, mtu: u32, high_thresh: u64, time_s: u64) -> Option<String> {
    if mtu >= UNFRAGMENTED_MTU || (high_thresh >= ADVISED_HIGH_THRESH && time_s <= ADVISED_TIME_S) {
        return None;
    }
    // Each fragment carries what fits after the 20-byte IP header, in multiples of 8 bytes.
    let fragments = CHUNK_DATAGRAM.div_ceil(mtu.saturating_sub(20).max(8) / 8 * 8);
    Some(format!(
        "{name} has MTU {mtu}: each chunk datagram travels as {fragments} IP fragments and is lost \
         with any one of them, and this host keeps at most {high_thresh} bytes of incomplete \
         datagrams for {time_s} s (net.ipv4.ipfrag_high_thresh, ipfrag_time), which frame loss \
         fills (at 1 % frame loss a 20 MB backup then failed); run: sysctl -w \
         net.ipv4.ipfrag_high_thresh={} net.ipv4.ipfrag_time={} (README: running on a real LAN)",
        high_thresh.max(ADVISED_HIGH_THRESH),
        time_s.min(ADVISED_TIME_S)
    ))
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_mtu_with_the_default_limits_gets_advice_naming_both_sysctls() {
        let w = advice("eth0", 1500, 4_194_304, 30).expect("advice");
        assert!(w.contains("eth0 has MTU 1500: each chunk datagram travels as 44 IP fragments"));
        assert!(w.contains("net.ipv4.ipfrag_high_thresh=33554432 net.ipv4.ipfrag_time=5"));
        let jumbo = advice("eth0", 9000, 4_194_304, 30).expect("advice");
        assert!(jumbo.contains("as 8 IP fragments"), "{jumbo}");
    }

    #[test]
    fn the_loopback_interface_is_found_by_its_address_with_its_mtu() {
        let (name, mtu) = interface_mtu(Ipv4Addr::LOCALHOST).expect("lo");
        assert_eq!(name, "lo");
        assert!(mtu >= UNFRAGMENTED_MTU, "lo's MTU {mtu}");
        assert_eq!(fragmentation_warning(Ipv4Addr::LOCALHOST), None);
    }

    #[test]
    fn no_advice_for_loopback_sized_mtus_or_limits_already_raised() {
        assert_eq!(advice("lo", 65_536, 4_194_304, 30), None);
        assert_eq!(advice("eth0", 1500, ADVISED_HIGH_THRESH, 5), None);
        assert_eq!(advice("eth0", 1500, 64 * 1024 * 1024, 2), None);
        assert!(advice("eth0", 1500, 64 * 1024 * 1024, 30).is_some());
    }
}
