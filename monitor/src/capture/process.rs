//! Who a process is, from /proc: exe, cmdline, uid, systemd unit or container.
//!
//! Read when a connection is reported (so a `curl` that fails and exits within milliseconds
//! is usually still there) and cached by (tgid, start time) so a reused pid cannot inherit
//! another process's identity. When /proc is gone, the kernel's comm is what remains.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::flow::Task;

/// A process as tlsmon names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tgid: u32,
    /// The kernel's short name (always known).
    pub comm: String,
    pub exe: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub uid: Option<u32>,
    /// systemd unit (`nginx.service`), or the cgroup path when not a unit.
    pub unit: Option<String>,
    /// Container id when the cgroup path names one (docker/containerd/podman/crio).
    pub container: Option<String>,
}

/// Pure parsers of /proc files (tested without a /proc).
pub mod parse {
    /// Field 22 (starttime) of /proc/PID/stat; the comm field may hold spaces and parens.
    pub fn start_time(stat: &str) -> Option<u64> {
        let after = &stat[stat.rfind(')')? + 1..];
        after.split_whitespace().nth(19)?.parse().ok()
    }

    /// Real uid from /proc/PID/status.
    pub fn uid(status: &str) -> Option<u32> {
        status.lines().find_map(|l| {
            l.strip_prefix("Uid:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }

    /// cgroup v2 path ("0::/system.slice/nginx.service") from /proc/PID/cgroup.
    pub fn cgroup_path(cgroup: &str) -> Option<&str> {
        cgroup.lines().find_map(|l| l.strip_prefix("0::"))
    }

    /// The innermost systemd unit (.service/.scope/.socket) in a cgroup path, else the path.
    pub fn unit(path: &str) -> Option<String> {
        if path.is_empty() || path == "/" {
            return None;
        }
        path.rsplit('/')
            .find(|c| c.ends_with(".service") || c.ends_with(".scope") || c.ends_with(".socket"))
            .map(str::to_owned)
            .or_else(|| Some(path.to_owned()))
    }

    /// A 64-hex-digit container id in a cgroup path (docker-<id>.scope, cri-containerd-<id>,
    /// libpod-<id>, crio-<id>, or a bare /docker/<id>).
    pub fn container(path: &str) -> Option<String> {
        path.split(['/', '-', '.'])
            .find(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned)
    }

    /// NUL-separated argv as one line.
    pub fn cmdline(raw: &[u8]) -> Option<String> {
        let s: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        (!s.is_empty()).then(|| s.join(" "))
    }
}

/// Caches process identities by (tgid, start time).
#[derive(Debug)]
pub struct ProcessCache {
    root: PathBuf,
    /// tgid -> (start time, identity, when the start time was last read).
    by_tgid: HashMap<u32, (u64, ProcessInfo, Instant)>,
    max_entries: usize,
    /// A tgid whose start time was read this recently, seen again with the same name, is
    /// taken as the same process without reading /proc again: a pid is not reused by
    /// another process of the same name within a second, and reading /proc/PID/stat for
    /// every connection was a fifth of the daemon's CPU under a handshake storm.
    revalidate_after: Duration,
}

impl Default for ProcessCache {
    fn default() -> Self {
        Self::with_root("/proc")
    }
}

impl ProcessCache {
    pub fn with_root(root: impl AsRef<Path>) -> Self {
        ProcessCache {
            root: root.as_ref().to_owned(),
            by_tgid: HashMap::new(),
            max_entries: 4096,
            revalidate_after: Duration::from_secs(1),
        }
    }

    /// Names the owner the kernel reported, with /proc details while the process exists.
    pub fn resolve(&mut self, owner: &Task) -> ProcessInfo {
        if let Some((_, info, checked)) = self.by_tgid.get(&owner.tgid)
            && info.comm == owner.comm
            && checked.elapsed() < self.revalidate_after
        {
            return ProcessInfo {
                pid: owner.pid,
                ..info.clone()
            };
        }
        let dir = self.root.join(owner.tgid.to_string());
        let start = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| parse::start_time(&s));
        let Some(start) = start else {
            // Gone already (the ring is read some milliseconds after the event). The process
            // last seen with this tgid and the same name is the best identity left; a reused
            // pid with another name gets only the kernel's comm.
            if let Some((_, info, _)) = self.by_tgid.get(&owner.tgid)
                && info.comm == owner.comm
            {
                return ProcessInfo {
                    pid: owner.pid,
                    ..info.clone()
                };
            }
            return ProcessInfo {
                pid: owner.pid,
                tgid: owner.tgid,
                comm: owner.comm.clone(),
                exe: None,
                cmdline: None,
                uid: None,
                unit: None,
                container: None,
            };
        };
        if let Some((s, info, checked)) = self.by_tgid.get_mut(&owner.tgid)
            && *s == start
        {
            *checked = Instant::now();
            return ProcessInfo {
                pid: owner.pid,
                comm: owner.comm.clone(),
                ..info.clone()
            };
        }
        let cgroup = std::fs::read_to_string(dir.join("cgroup")).ok();
        let cgroup_path = cgroup.as_deref().and_then(parse::cgroup_path);
        let info = ProcessInfo {
            pid: owner.pid,
            tgid: owner.tgid,
            comm: owner.comm.clone(),
            exe: std::fs::read_link(dir.join("exe")).ok(),
            cmdline: std::fs::read(dir.join("cmdline"))
                .ok()
                .and_then(|c| parse::cmdline(&c)),
            uid: std::fs::read_to_string(dir.join("status"))
                .ok()
                .and_then(|s| parse::uid(&s)),
            unit: cgroup_path.and_then(parse::unit),
            container: cgroup_path.and_then(parse::container),
        };
        if self.by_tgid.len() >= self.max_entries {
            self.by_tgid.clear();
        }
        self.by_tgid
            .insert(owner.tgid, (start, info.clone(), Instant::now()));
        info
    }
}

/// The process of each reported connection, resolved when the kernel names it (at open,
/// while a short-lived client still exists) and handed over with the connection's verdict.
#[derive(Default)]
pub struct ConnectionProcesses {
    cache: ProcessCache,
    by_cookie: HashMap<u64, ProcessInfo>,
}

/// Connections whose owner is remembered at most (owners of connections judged early may
/// arrive after the verdict and are never taken).
const MAX_OWNERS: usize = 131_072;

impl ConnectionProcesses {
    /// Resolves the owner an open or owner event carries.
    pub fn observe(&mut self, ev: &crate::flow::CaptureEvent) {
        use crate::flow::CaptureEvent;
        let (cookie, owner) = match ev {
            CaptureEvent::Open {
                cookie,
                owner: Some(o),
                ..
            }
            | CaptureEvent::Owner {
                cookie, owner: o, ..
            } => (*cookie, o),
            _ => return,
        };
        if self.by_cookie.len() >= MAX_OWNERS {
            self.by_cookie.clear();
        }
        let info = self.cache.resolve(owner);
        self.by_cookie.insert(cookie, info);
    }

    /// The connection's process: as resolved earlier, else from the kernel's owner now.
    pub fn take(&mut self, cookie: u64, kernel: Option<&Task>) -> Option<ProcessInfo> {
        self.by_cookie
            .remove(&cookie)
            .or_else(|| kernel.map(|o| self.cache.resolve(o)))
    }
}

#[cfg(test)]
mod tests {
    use super::parse::*;
    use super::*;

    #[test]
    fn start_time_survives_a_comm_with_spaces_and_parens() {
        let stat = "4312 (my (weird) prog) S 1 4312 4312 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(start_time(stat), Some(987654));
    }

    #[test]
    fn unit_and_container_from_cgroup_paths() {
        assert_eq!(
            unit("/system.slice/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            unit("/user.slice/user-0.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(unit("/"), None);
        let id = "a".repeat(64);
        assert_eq!(
            container(&format!("/system.slice/docker-{id}.scope")),
            Some(id.clone())
        );
        assert_eq!(container("/system.slice/nginx.service"), None);
        assert_eq!(
            cgroup_path("0::/system.slice/x.service\n"),
            Some("/system.slice/x.service")
        );
    }

    #[test]
    fn uid_and_cmdline() {
        assert_eq!(
            uid("Name:\tcurl\nUid:\t1000\t1000\t1000\t1000\n"),
            Some(1000)
        );
        assert_eq!(
            cmdline(b"curl\0-k\0https://x\0").as_deref(),
            Some("curl -k https://x")
        );
        assert_eq!(cmdline(b""), None);
    }

    #[test]
    fn our_own_process_is_resolved_from_proc() {
        let me = std::process::id();
        let mut cache = ProcessCache::default();
        let owner = Task {
            tgid: me,
            pid: me,
            cgroup_id: 0,
            comm: "x".into(),
        };
        let info = cache.resolve(&owner);
        assert!(info.exe.is_some());
        assert!(info.uid.is_some());
    }

    #[test]
    fn a_gone_process_keeps_the_kernel_comm() {
        let mut cache = ProcessCache::with_root("/nonexistent-proc");
        let owner = Task {
            tgid: 4312,
            pid: 4312,
            cgroup_id: 0,
            comm: "curl".into(),
        };
        let info = cache.resolve(&owner);
        assert_eq!(info.comm, "curl");
        assert_eq!(info.exe, None);
    }

    #[test]
    fn a_process_gone_since_it_was_seen_keeps_its_identity_unless_renamed() {
        let root = std::env::temp_dir().join(format!("tlsmon-proc-{}", std::process::id()));
        let dir = root.join("4312");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("stat"),
            "4312 (curl) S 1 4312 4312 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 0 0",
        )
        .unwrap();
        std::os::unix::fs::symlink("/usr/bin/curl", dir.join("exe")).unwrap();
        let mut cache = ProcessCache::with_root(&root);
        let owner = Task {
            tgid: 4312,
            pid: 4312,
            cgroup_id: 0,
            comm: "curl".into(),
        };
        assert_eq!(cache.resolve(&owner).exe, Some("/usr/bin/curl".into()));
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(cache.resolve(&owner).exe, Some("/usr/bin/curl".into()));
        let renamed = Task {
            comm: "sshd".into(),
            ..owner
        };
        assert_eq!(cache.resolve(&renamed).exe, None);
    }

    #[test]
    fn a_recent_identity_is_reused_and_revalidated_after_a_second() {
        let root = std::env::temp_dir().join(format!("tlsmon-proc-reuse-{}", std::process::id()));
        let dir = root.join("5150");
        std::fs::create_dir_all(&dir).unwrap();
        let stat = |start: u64| {
            format!("5150 (app) S 1 5150 5150 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0")
        };
        std::fs::write(dir.join("stat"), stat(777)).unwrap();
        std::os::unix::fs::symlink("/usr/bin/first", dir.join("exe")).unwrap();
        let mut cache = ProcessCache::with_root(&root);
        let owner = Task {
            tgid: 5150,
            pid: 5151,
            cgroup_id: 0,
            comm: "app".into(),
        };
        assert_eq!(cache.resolve(&owner).exe, Some("/usr/bin/first".into()));
        // The pid is taken by another process of the same name: within the second, the
        // cached identity is given without reading /proc.
        std::fs::write(dir.join("stat"), stat(888)).unwrap();
        std::fs::remove_file(dir.join("exe")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/second", dir.join("exe")).unwrap();
        let again = cache.resolve(&owner);
        assert_eq!(
            (again.exe, again.pid),
            (Some("/usr/bin/first".into()), 5151)
        );
        // Past the interval the start time is read again, and the new process named.
        cache.revalidate_after = Duration::ZERO;
        assert_eq!(cache.resolve(&owner).exe, Some("/usr/bin/second".into()));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
