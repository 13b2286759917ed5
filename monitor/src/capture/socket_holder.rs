//! Who holds a TCP socket, found through /proc the way `ss -p` does: the socket's inode
//! from /proc/net/tcp{,6} by its two ends, then the process whose /proc/PID/fd links to
//! `socket:[INODE]`.
//!
//! The fallback for connections the kernel programs did not name: a kernel where the
//! tracepoint that names servers cannot be attached, or a server that has neither read nor
//! closed its socket yet. It costs a walk of every process's fds, so the daemon asks only
//! for such connections and at most a few times a second. It sees the daemon's own
//! network namespace.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::flow::{CaptureEvent, ConnInfo, Task};

/// Pure parsers of the /proc files involved (tested without a /proc).
pub mod parse {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    /// One row of /proc/net/tcp or /proc/net/tcp6: local end, remote end, socket inode.
    /// IPv4-mapped IPv6 ends are given as IPv4 (as the kernel programs report them).
    pub fn tcp_row(line: &str) -> Option<(SocketAddr, SocketAddr, u64)> {
        let mut fields = line.split_whitespace();
        let _slot = fields.next()?.strip_suffix(':')?;
        let local = addr(fields.next()?)?;
        let remote = addr(fields.next()?)?;
        // st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let inode = fields.nth(6)?.parse().ok()?;
        Some((local, remote, inode))
    }

    /// "0100007F:1F90" (IPv4) or 32 hex digits ":PORT" (IPv6): each 32-bit word of the
    /// address is printed as a number in the kernel's (little-endian) byte order.
    fn addr(field: &str) -> Option<SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let word = |i: usize| -> Option<[u8; 4]> {
            let hex = ip.get(i * 8..i * 8 + 8)?;
            Some(u32::from_str_radix(hex, 16).ok()?.to_le_bytes())
        };
        let ip = match ip.len() {
            8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
            32 => {
                let mut b = [0u8; 16];
                for i in 0..4 {
                    b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
                }
                let v6 = Ipv6Addr::from(b);
                v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }

    /// The inode of a `socket:[12345]` fd link.
    pub fn socket_inode(link: &str) -> Option<u64> {
        link.strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    }
}

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub tgid: u32,
    pub comm: String,
}

/// Looks sockets up in a /proc tree (the real one, or a copy in tests).
#[derive(Debug, Clone)]
pub struct SocketHolders {
    root: PathBuf,
}

impl Default for SocketHolders {
    fn default() -> Self {
        SocketHolders::at("/proc")
    }
}

impl SocketHolders {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        SocketHolders { root: root.into() }
    }

    /// The holder of each socket `(local, peer)` in `wanted`, where one is found. A socket
    /// held by several processes (inherited over fork) is given to the lowest tgid, the
    /// parent that accepted it in the common pre-fork servers.
    pub fn find(&self, wanted: &[(SocketAddr, SocketAddr)]) -> Vec<Option<Holder>> {
        let inodes = self.inodes(wanted);
        let mut holders: HashMap<u64, Holder> = HashMap::new();
        if inodes.iter().any(Option::is_some) {
            let wanted_inodes: Vec<u64> = inodes.iter().flatten().copied().collect();
            self.scan_fds(&wanted_inodes, &mut holders);
        }
        inodes
            .iter()
            .map(|i| i.and_then(|i| holders.get(&i).cloned()))
            .collect()
    }

    /// The socket inode of each wanted connection, from /proc/net/tcp and tcp6.
    fn inodes(&self, wanted: &[(SocketAddr, SocketAddr)]) -> Vec<Option<u64>> {
        let mut found = vec![None; wanted.len()];
        let mut index: HashMap<(SocketAddr, SocketAddr), Vec<usize>> = HashMap::new();
        for (i, w) in wanted.iter().enumerate() {
            index.entry(*w).or_default().push(i);
        }
        for table in ["net/tcp", "net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(self.root.join(table)) else {
                continue;
            };
            for (local, remote, inode) in text.lines().skip(1).filter_map(parse::tcp_row) {
                // Inode 0: a socket no process holds any more (TIME_WAIT, orphaned).
                if inode == 0 {
                    continue;
                }
                for &i in index.get(&(local, remote)).into_iter().flatten() {
                    found[i] = Some(inode);
                }
            }
        }
        found
    }

    fn scan_fds(&self, inodes: &[u64], holders: &mut HashMap<u64, Holder>) {
        let wanted: std::collections::HashSet<u64> = inodes.iter().copied().collect();
        let Ok(procs) = std::fs::read_dir(&self.root) else {
            return;
        };
        let mut tgids: Vec<u32> = procs
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tgids.sort_unstable();
        for tgid in tgids {
            let dir = self.root.join(tgid.to_string());
            let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
                continue; // gone, or a kernel thread
            };
            for fd in fds.flatten() {
                let Some(inode) = std::fs::read_link(fd.path())
                    .ok()
                    .and_then(|l| parse::socket_inode(l.to_str()?))
                else {
                    continue;
                };
                if wanted.contains(&inode) && !holders.contains_key(&inode) {
                    holders.insert(
                        inode,
                        Holder {
                            tgid,
                            comm: comm(&dir),
                        },
                    );
                }
            }
            if holders.len() == wanted.len() {
                return;
            }
        }
    }
}

/// Connections the kernel has not named after this long are looked up.
pub const GRACE_NS: u64 = 100_000_000;
/// At most one lookup this often.
pub const INTERVAL_NS: u64 = 250_000_000;
/// Lookups per connection before giving up (it may live in another network namespace).
pub const TRIES: u8 = 8;
/// Connections per lookup.
pub const PER_LOOKUP: usize = 256;

/// The daemon's use of the lookup: unnamed connections are looked up at most every
/// `INTERVAL_NS`, each at most `TRIES` times, and what is found comes back as the owner
/// events the kernel would have sent.
#[derive(Debug, Default)]
pub struct HolderFallback {
    holders: SocketHolders,
    last_ns: u64,
    tries: HashMap<u64, u8>,
}

impl HolderFallback {
    pub fn due(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_ns) >= INTERVAL_NS
    }

    /// Looks up `unowned` (cookie, ends) connections; owner events for those found.
    pub fn lookup(&mut self, now_ns: u64, unowned: Vec<(u64, ConnInfo)>) -> Vec<CaptureEvent> {
        self.last_ns = now_ns;
        self.tries
            .retain(|cookie, _| unowned.iter().any(|(c, _)| c == cookie));
        let ask: Vec<(u64, ConnInfo)> = unowned
            .into_iter()
            .filter(|(cookie, _)| {
                let tries = self.tries.entry(*cookie).or_default();
                *tries = tries.saturating_add(1);
                *tries <= TRIES
            })
            .collect();
        if ask.is_empty() {
            return Vec::new();
        }
        let ends: Vec<_> = ask.iter().map(|(_, c)| (c.local, c.peer)).collect();
        self.holders
            .find(&ends)
            .into_iter()
            .zip(ask)
            .filter_map(|(holder, (cookie, conn))| {
                let holder = holder?;
                tracing::debug!(cookie, tgid = holder.tgid, comm = %holder.comm, "owner found through /proc");
                Some(CaptureEvent::Owner {
                    cookie,
                    ts_ns: now_ns,
                    owner: Task {
                        tgid: holder.tgid,
                        pid: holder.tgid,
                        cgroup_id: conn.socket_cgroup_id,
                        comm: holder.comm,
                    },
                })
            })
            .collect()
    }
}

/// [`HolderFallback`] on a thread of its own: a walk of /proc on a host with 100,000
/// sockets takes long enough to stall the ring's drain, so the daemon loop only hands
/// requests over and picks answers up, never waits. One request at a time.
pub struct HolderWorker {
    requests: std::sync::mpsc::SyncSender<(u64, Vec<(u64, ConnInfo)>)>,
    answers: std::sync::mpsc::Receiver<Vec<CaptureEvent>>,
    busy: bool,
    last_ns: u64,
    /// The thread is gone (said once; the fallback is off from then on).
    dead: bool,
}

impl HolderWorker {
    /// Starts the thread (after the privilege drop: it inherits what the daemon kept).
    pub fn start() -> std::io::Result<HolderWorker> {
        let (requests, rx) = std::sync::mpsc::sync_channel::<(u64, Vec<(u64, ConnInfo)>)>(1);
        let (tx, answers) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("tlsmon-holders".into())
            .spawn(move || {
                let mut fallback = HolderFallback::default();
                for (now_ns, unowned) in rx {
                    if tx.send(fallback.lookup(now_ns, unowned)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(HolderWorker {
            requests,
            answers,
            busy: false,
            last_ns: 0,
            dead: false,
        })
    }

    /// Whether a new request may go now (none in progress, the interval passed).
    pub fn due(&self, now_ns: u64) -> bool {
        !self.dead && !self.busy && now_ns.saturating_sub(self.last_ns) >= INTERVAL_NS
    }

    /// Hands `unowned` connections over.
    pub fn ask(&mut self, now_ns: u64, unowned: Vec<(u64, ConnInfo)>) {
        self.last_ns = now_ns;
        match self.requests.try_send((now_ns, unowned)) {
            Ok(()) => self.busy = true,
            Err(std::sync::mpsc::TrySendError::Full(_)) => {}
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => self.died(),
        }
    }

    /// The owner events of the last request, once it is done.
    pub fn answers(&mut self) -> Vec<CaptureEvent> {
        match self.answers.try_recv() {
            Ok(events) => {
                self.busy = false;
                events
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => Vec::new(),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.died();
                Vec::new()
            }
        }
    }

    fn died(&mut self) {
        if !self.dead {
            tracing::error!(
                "the /proc lookup thread stopped: connections the kernel did not name stay unnamed"
            );
        }
        self.dead = true;
        self.busy = false;
    }
}

fn comm(proc_dir: &Path) -> String {
    std::fs::read_to_string(proc_dir.join("comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_tcp_and_tcp6_are_parsed() {
        let v4 = "   3: 0100007F:1F90 0500007F:B3C2 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            parse::tcp_row(v4),
            Some((
                "127.0.0.1:8080".parse().expect("addr"),
                "127.0.0.5:46018".parse().expect("addr"),
                4242
            ))
        );
        let v6 = "   0: 00000000000000000000000001000000:01BB 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            parse::tcp_row(v6),
            Some((
                "[::1]:443".parse().expect("addr"),
                "[::1]:54321".parse().expect("addr"),
                77
            ))
        );
        // IPv4-mapped (a dual-stack listener's accepted IPv4 connection).
        let mapped = "   1: 0000000000000000FFFF00000100007F:01BB 0000000000000000FFFF00000200007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 78 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            parse::tcp_row(mapped).map(|r| (r.0, r.1)),
            Some((
                "127.0.0.1:443".parse().expect("addr"),
                "127.0.0.2:54321".parse().expect("addr")
            ))
        );
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        assert_eq!(parse::tcp_row(header), None);
        for n in 0..v4.len() {
            let _ = parse::tcp_row(&v4[..n]); // every prefix: no panic
        }
        assert_eq!(parse::socket_inode("socket:[123]"), Some(123));
        assert_eq!(parse::socket_inode("pipe:[123]"), None);
        assert_eq!(parse::socket_inode("socket:[12"), None);
    }

    /// The real /proc: a connection this test process makes to itself is found, at both
    /// ends, and attributed to this process; a connection that does not exist is not.
    #[test]
    fn a_live_connection_of_this_process_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(server).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let client_end = client.local_addr().expect("addr");
        let nobody: SocketAddr = "127.0.0.9:9".parse().expect("addr");
        let found = SocketHolders::default().find(&[
            (server, client_end),
            (client_end, server),
            (nobody, server),
        ]);
        let me = Holder {
            tgid: std::process::id(),
            comm: comm(Path::new("/proc/self")),
        };
        assert_eq!(found, vec![Some(me.clone()), Some(me), None]);
        drop((accepted, client));
    }
}
