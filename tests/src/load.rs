//! A handshake load of our own: a ClientHello from a chosen loopback address to a server
//! that answers every hello with a fatal `handshake_failure` alert. Each connection is one
//! real failing handshake for the daemon (client side and server side), far cheaper than a
//! curl, so tests and benchmarks can make thousands from distinct peers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A TLS 1.2 ClientHello (one record) with SNI `bench.tlsmon.test`.
pub fn client_hello() -> Vec<u8> {
    let sni = b"bench.tlsmon.test";
    let mut ext = Vec::new();
    // server_name: list length, type host_name, name length, name.
    let sn_len = sni.len() as u16;
    ext.extend([0x00, 0x00]);
    ext.extend((sn_len + 5).to_be_bytes());
    ext.extend((sn_len + 3).to_be_bytes());
    ext.push(0);
    ext.extend(sn_len.to_be_bytes());
    ext.extend(sni);
    // supported_groups x25519, secp256r1; signature_algorithms rsa_pss_rsae_sha256, ecdsa.
    ext.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    ext.extend([0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x08, 0x04, 0x04, 0x03]);
    let mut body = vec![0x03, 0x03];
    body.extend([0x5a; 32]); // random
    body.push(0); // session id
    body.extend([0x00, 0x04, 0xc0, 0x2f, 0xc0, 0x2b]); // two ECDHE-GCM suites
    body.extend([0x01, 0x00]); // null compression
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut hs = vec![0x01];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend((hs.len() as u16).to_be_bytes());
    rec.extend(hs);
    rec
}

/// Fatal handshake_failure (40), TLS 1.2 record.
pub const ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];

pub fn serve(listener: Arc<TcpListener>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut s, _)) = listener.accept() else {
            continue;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if matches!(s.read(&mut buf), Ok(n) if n > 0) {
            let _ = s.write_all(&ALERT);
        }
    }
}

/// TCP connect from a chosen loopback address (std has no bind-before-connect).
pub fn connect_from(local: SocketAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (SocketAddr::V4(l), SocketAddr::V4(r)) = (local, server) else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let sin = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket syscalls on a descriptor owned by `stream` (closed on every path).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let (la, ra) = (sin(l), sin(r));
        if libc::bind(fd, (&raw const la).cast(), len) != 0
            || libc::connect(fd, (&raw const ra).cast(), len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// One failing handshake from `peer` (a 127/8 address) to `server`: sends the hello, reads
/// until the server closes. Err when the connection itself failed.
pub fn fail_once(peer: Ipv4Addr, server: SocketAddr) -> std::io::Result<()> {
    let local = SocketAddr::V4(SocketAddrV4::new(peer, 0));
    let mut s = connect_from(local, server)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(&client_hello())?;
    let mut buf = [0u8; 64];
    while s.read(&mut buf)? > 0 {}
    Ok(())
}

/// The alerting server on a free loopback port, `threads` acceptors; stops on drop.
pub struct AlertServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl AlertServer {
    pub fn start(threads: usize) -> std::io::Result<AlertServer> {
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0")?);
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..threads {
            let (l, s) = (listener.clone(), stop.clone());
            std::thread::spawn(move || serve(l, s));
        }
        Ok(AlertServer { addr, stop })
    }
}

impl Drop for AlertServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the acceptors blocked in accept().
        for _ in 0..64 {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
                break;
            }
        }
    }
}

/// The `n`th distinct peer address of a large pool: 127.1.0.1, 127.1.0.2, ... (250 per /24).
pub fn peer(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        1 + (n / 62_500) as u8,
        ((n / 250) % 250) as u8,
        (1 + n % 250) as u8,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_hello_is_one_well_formed_record() {
        let h = client_hello();
        assert_eq!(&h[..3], &[0x16, 0x03, 0x01]);
        assert_eq!(usize::from(u16::from_be_bytes([h[3], h[4]])), h.len() - 5);
        let hs_len = u32::from_be_bytes([0, h[6], h[7], h[8]]) as usize;
        assert_eq!(hs_len, h.len() - 9);
        assert!(h.windows(17).any(|w| w == b"bench.tlsmon.test"));
    }

    #[test]
    fn peers_are_distinct_loopback_addresses() {
        let all: std::collections::BTreeSet<_> = (0..20_000).map(peer).collect();
        assert_eq!(all.len(), 20_000);
        assert!(all.iter().all(|a| a.is_loopback() && a.octets()[3] != 0));
    }
}
