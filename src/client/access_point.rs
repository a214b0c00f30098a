//! Access points: `NAME` is a Unix socket `NAME.sock` in the runtime directory, `[HOST:]PORT` is
//! TCP (host 127.0.0.1 by default).

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

/// Where a peer takes client requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessPoint {
    /// A Unix socket (by name; the path is in the runtime directory).
    Unix(String),
    /// A TCP address.
    Tcp(SocketAddr),
}

/// Why an access point string is not valid.
#[derive(Debug, thiserror::Error)]
pub enum AccessPointError {
    /// Neither a name nor `[host:]port`.
    #[error(
        "access point {0:?} is neither a name (letters, digits, '.', '_', '-') nor [host:]port"
    )]
    Invalid(String),
    /// The host does not resolve.
    #[error("access point {0:?}: cannot resolve host: {1}")]
    Resolve(String, io::Error),
}

impl AccessPoint {
    /// Parses `NAME` or `[HOST:]PORT`.
    pub fn parse(s: &str) -> Result<Self, AccessPointError> {
        let invalid = || AccessPointError::Invalid(s.to_string());
        if let Ok(port) = s.parse::<u16>() {
            return Ok(AccessPoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        if let Some((host, port)) = s.rsplit_once(':') {
            let port: u16 = port.parse().map_err(|_| invalid())?;
            if host.is_empty() {
                return Err(invalid());
            }
            let addr = (host, port)
                .to_socket_addrs()
                .map_err(|e| AccessPointError::Resolve(s.to_string(), e))?
                .find(SocketAddr::is_ipv4)
                .ok_or_else(invalid)?;
            return Ok(AccessPoint::Tcp(addr));
        }
        let ok = !s.is_empty()
            && s.len() <= 100
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(AccessPoint::Unix(s.to_string()))
        } else {
            Err(invalid())
        }
    }

    /// The Unix socket path for a name.
    pub fn socket_path(name: &str) -> io::Result<PathBuf> {
        Ok(runtime_dir()?.join(format!("{name}.sock")))
    }

    /// Connects as a client.
    pub fn connect(&self) -> io::Result<Stream> {
        match self {
            AccessPoint::Unix(name) => {
                Ok(Stream::Unix(UnixStream::connect(Self::socket_path(name)?)?))
            }
            AccessPoint::Tcp(addr) => Ok(Stream::Tcp(TcpStream::connect(addr)?)),
        }
    }

    /// Binds as a server. A Unix socket file left by a dead peer is replaced; one a live peer
    /// answers on is an error.
    pub fn bind(&self) -> io::Result<Listener> {
        match self {
            AccessPoint::Unix(name) => {
                let path = runtime_dir()?.join(format!("{name}.sock"));
                if path.exists() {
                    if UnixStream::connect(&path).is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!(
                                "access point {name} is in use by another peer ({})",
                                path.display()
                            ),
                        ));
                    }
                    std::fs::remove_file(&path)?;
                }
                let listener = UnixListener::bind(&path)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                Ok(Listener::Unix(listener, path))
            }
            AccessPoint::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr)?)),
        }
    }
}

impl fmt::Display for AccessPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessPoint::Unix(name) => f.write_str(name),
            AccessPoint::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// What a client sends first on a TCP access point, before its request: `TOKEN <hex>`.
pub const TOKEN_PREFIX: &str = "TOKEN ";

/// Where the token of the TCP access point bound at `addr` is kept for the local user's
/// clients: `<runtime dir>/tcp-<ip>-<port>.token` (the runtime directory is the user's, mode
/// 0700).
pub fn token_path(addr: SocketAddr) -> io::Result<PathBuf> {
    Ok(runtime_dir()?.join(format!("tcp-{}-{}.token", addr.ip(), addr.port())))
}

/// A new random token (64 hex digits) for a TCP access point, written to each of `files`
/// (mode 0600, atomically: a reader never sees half of one).
pub fn new_token(files: &[PathBuf]) -> io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(io::Error::other)?;
    let token = crate::protocol::ids::hex_lower(&bytes);
    for f in files {
        let dir = f.parent().unwrap_or(std::path::Path::new("."));
        crate::storage::write_atomic(dir, f, token.as_bytes()).map_err(io::Error::other)?;
    }
    Ok(token)
}

/// Whether `given` is `token` (in constant time).
pub fn token_matches(given: &str, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// The directory of access-point sockets: `$DBS_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/dbs`, else
/// `/tmp/dbs-<uid>`; created with mode 0700 and refused if another user owns it.
pub fn runtime_dir() -> io::Result<PathBuf> {
    let dir = runtime_dir_path()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let meta = std::fs::metadata(&dir)?;
    if meta.uid() != current_uid()? {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "runtime directory {} belongs to another user",
                dir.display()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(dir)
}

/// Where the runtime directory is, without creating it.
fn runtime_dir_path() -> io::Result<PathBuf> {
    Ok(
        match (
            std::env::var_os("DBS_RUNTIME_DIR"),
            std::env::var_os("XDG_RUNTIME_DIR"),
        ) {
            (Some(d), _) if !d.is_empty() => PathBuf::from(d),
            (_, Some(x)) if !x.is_empty() => PathBuf::from(x).join("dbs"),
            _ => PathBuf::from(format!("/tmp/dbs-{}", current_uid()?)),
        },
    )
}

fn current_uid() -> io::Result<u32> {
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// A listening access point.
pub enum Listener {
    /// Unix socket and its path (removed on drop).
    Unix(UnixListener, PathBuf),
    /// TCP.
    Tcp(TcpListener),
}

impl Listener {
    /// Waits for the next client.
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept()?.0)),
            Listener::Tcp(l) => Ok(Stream::Tcp(l.accept()?.0)),
        }
    }

    /// The address a TCP access point is bound to (its real port, if 0 was asked for).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// Where it listens (the TCP port picked when port 0 was asked for).
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix(_, path) => path.display().to_string(),
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A client connection.
pub enum Stream {
    /// Over a Unix socket.
    Unix(UnixStream),
    /// Over TCP.
    Tcp(TcpStream),
}

impl Stream {
    /// Limits how long a read may block.
    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(timeout),
            Stream::Tcp(s) => s.set_read_timeout(timeout),
        }
    }

    /// A second handle to the same connection.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    /// A Unix client whose process runs as another user than this peer (and not as root) is
    /// refused: the reason. (The socket is 0600 in a 0700 directory; this holds even if those
    /// modes were loosened. A TCP client proves itself with the token instead.)
    pub fn refusal(&self) -> Option<String> {
        let Stream::Unix(s) = self else {
            return None;
        };
        let ours = current_uid().ok()?;
        match peer_uid(s) {
            Ok(uid) if uid == ours || uid == 0 => None,
            Ok(uid) => Some(format!(
                "this access point serves user {ours} (and root) only; the client runs as user {uid}"
            )),
            Err(e) => Some(format!("cannot tell the client's user (SO_PEERCRED): {e}")),
        }
    }
}

/// The user id of the process at the other end of a Unix socket (SO_PEERCRED).
fn peer_uid(s: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a plain struct of that size,
    // and sets `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unix_client_of_this_user_is_served() {
        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(peer_uid(&a).unwrap(), current_uid().unwrap());
        assert_eq!(Stream::Unix(b).refusal(), None);
    }

    #[test]
    fn parses_names_and_ports() {
        assert_eq!(
            AccessPoint::parse("peer1").unwrap(),
            AccessPoint::Unix("peer1".into())
        );
        assert_eq!(
            AccessPoint::parse("8080").unwrap(),
            AccessPoint::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            AccessPoint::parse("127.0.0.2:9").unwrap(),
            AccessPoint::Tcp("127.0.0.2:9".parse().unwrap())
        );
        for bad in ["", "a/b", "../x", ":80", "host:99999", "x y"] {
            assert!(AccessPoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
