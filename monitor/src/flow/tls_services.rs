//! Which services speak TLS, so that plaintext sent to one is a failure
//! (`plaintext_to_tls_port`) and its first bytes are worth a sample. Ports come from the
//! configuration (TLS wherever they appear, as 443 is); the rest is learned per service, not
//! per port number: a local listener (its address and port) from the handshakes it served, a
//! remote server (address and port) from the handshakes our clients made with it. A
//! STARTTLS upgrade or a connection of unknown role teaches nothing: the port also speaks
//! plaintext. What is not seen again for `LEARNED_TTL_NS` is forgotten. Pure: the daemon
//! mirrors each change into the kernel's maps.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::{ConnInfo, Role};

/// A learned service not seen for this long is forgotten (a day).
pub const LEARNED_TTL_NS: u64 = 24 * 3600 * 1_000_000_000;
/// Learned services kept at most; past it the one seen longest ago gives way.
pub const MAX_LEARNED: usize = 4096;

/// A change the kernel's maps must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Learned(SocketAddr),
    Forgotten(SocketAddr),
}

#[derive(Debug, Clone, Default)]
pub struct TlsServices {
    configured: HashSet<u16>,
    /// Service address → monotonic ns it was last seen completing a handshake.
    learned: HashMap<SocketAddr, u64>,
}

impl TlsServices {
    pub fn new(configured_ports: &[u16]) -> Self {
        TlsServices {
            configured: configured_ports.iter().copied().collect(),
            learned: HashMap::new(),
        }
    }

    /// The connection is to (client) or on (server) a service known to speak TLS.
    pub fn is_tls(&self, c: &ConnInfo) -> bool {
        match c.role {
            Role::Client | Role::Server => {
                self.configured.contains(&c.service().port())
                    || self.learned.contains_key(&c.service())
            }
            Role::Unknown => {
                self.configured.contains(&c.local.port())
                    || self.configured.contains(&c.peer.port())
            }
        }
    }

    /// A handshake completed on `c` (`upgraded`: after a STARTTLS-style upgrade). Returns
    /// the changes for the kernel: the service learned, and the one pushed out if the table
    /// was full.
    pub fn completed(&mut self, c: &ConnInfo, upgraded: bool, now_ns: u64) -> Vec<Change> {
        if upgraded || c.role == Role::Unknown {
            return Vec::new();
        }
        let service = c.service();
        if self.configured.contains(&service.port()) {
            return Vec::new();
        }
        if let Some(seen) = self.learned.get_mut(&service) {
            *seen = now_ns;
            return Vec::new();
        }
        let mut changes = Vec::new();
        if self.learned.len() >= MAX_LEARNED
            && let Some((&oldest, _)) = self.learned.iter().min_by_key(|(_, t)| **t)
        {
            self.learned.remove(&oldest);
            changes.push(Change::Forgotten(oldest));
        }
        self.learned.insert(service, now_ns);
        changes.push(Change::Learned(service));
        changes
    }

    /// Forgets what has not been seen for `LEARNED_TTL_NS`.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Change> {
        let old: Vec<SocketAddr> = self
            .learned
            .iter()
            .filter(|(_, t)| now_ns.saturating_sub(**t) >= LEARNED_TTL_NS)
            .map(|(a, _)| *a)
            .collect();
        for a in &old {
            self.learned.remove(a);
        }
        old.into_iter().map(Change::Forgotten).collect()
    }

    /// Learned services with the monotonic ns each was last seen, oldest first.
    pub fn learned(&self) -> Vec<(SocketAddr, u64)> {
        let mut v: Vec<_> = self.learned.iter().map(|(a, t)| (*a, *t)).collect();
        v.sort_by_key(|(a, t)| (*t, *a));
        v
    }

    /// Configured ports, sorted.
    pub fn configured(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.configured.iter().copied().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(role: Role, local: &str, peer: &str) -> ConnInfo {
        ConnInfo {
            role,
            local: local.parse().expect("addr"),
            peer: peer.parse().expect("addr"),
            socket_cgroup_id: 0,
        }
    }

    #[test]
    fn a_client_handshake_teaches_the_remote_service_not_the_port() {
        let mut t = TlsServices::new(&[443]);
        let out = conn(Role::Client, "10.0.0.1:40000", "192.0.2.7:8080");
        assert_eq!(
            t.completed(&out, false, 1),
            [Change::Learned("192.0.2.7:8080".parse().expect("addr"))]
        );
        assert!(t.is_tls(&out));
        // A local plaintext service on the same port number is not TLS.
        assert!(!t.is_tls(&conn(Role::Server, "127.0.0.1:8080", "127.0.0.1:50000")));
        // Nor another remote host on that port.
        assert!(!t.is_tls(&conn(Role::Client, "10.0.0.1:40001", "192.0.2.8:8080")));
    }

    #[test]
    fn a_server_handshake_teaches_its_listener() {
        let mut t = TlsServices::new(&[]);
        let served = conn(Role::Server, "127.0.0.1:9443", "127.0.0.1:50000");
        assert_eq!(t.completed(&served, false, 1).len(), 1);
        assert!(t.is_tls(&conn(Role::Server, "127.0.0.1:9443", "127.0.0.1:50001")));
        // A client of ours whose peer port is 9443 elsewhere is not that listener.
        assert!(!t.is_tls(&conn(Role::Client, "127.0.0.1:50002", "192.0.2.1:9443")));
    }

    #[test]
    fn upgrades_unknown_roles_and_configured_ports_teach_nothing() {
        let mut t = TlsServices::new(&[443]);
        assert!(
            t.completed(&conn(Role::Server, "127.0.0.1:25", "127.0.0.1:5"), true, 1)
                .is_empty()
        );
        assert!(
            t.completed(&conn(Role::Unknown, "127.0.0.1:9", "127.0.0.1:6"), false, 1)
                .is_empty()
        );
        assert!(
            t.completed(
                &conn(Role::Client, "127.0.0.1:7", "192.0.2.1:443"),
                false,
                1
            )
            .is_empty()
        );
        assert!(t.learned().is_empty());
        // Configured ports are TLS at either end, for any role.
        assert!(t.is_tls(&conn(Role::Unknown, "127.0.0.1:443", "127.0.0.1:7")));
        assert!(t.is_tls(&conn(Role::Client, "127.0.0.1:7", "192.0.2.9:443")));
    }

    #[test]
    fn what_is_not_seen_again_is_forgotten_and_the_table_is_bounded() {
        let mut t = TlsServices::new(&[]);
        let a = conn(Role::Server, "127.0.0.1:9443", "127.0.0.1:50000");
        t.completed(&a, false, 0);
        t.completed(&a, false, LEARNED_TTL_NS / 2);
        assert!(
            t.expire(LEARNED_TTL_NS).is_empty(),
            "seen again at half the TTL"
        );
        assert_eq!(t.expire(LEARNED_TTL_NS / 2 + LEARNED_TTL_NS).len(), 1);
        assert!(!t.is_tls(&a));
        for i in 0..MAX_LEARNED as u64 + 1 {
            let port = 1 + i as u16;
            t.completed(
                &conn(Role::Client, "127.0.0.1:7", &format!("192.0.2.1:{port}")),
                false,
                i,
            );
        }
        assert_eq!(t.learned().len(), MAX_LEARNED);
        assert_eq!(t.learned()[0].0.port(), 2, "the oldest gave way");
    }
}
