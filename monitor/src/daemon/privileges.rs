//! Least privilege for `tlsmon run`: root is needed to load and attach the probes, not to
//! read the ring, judge handshakes, write the store or serve the endpoint. Once attached, the
//! daemon becomes the `daemon.user` (default `tlsmon`, created by the package) and keeps two
//! capabilities, so a bug in the code that parses what strangers send cannot reach root.
//!
//! What stays possible without root: the ring buffer, the maps and the links are used
//! through file descriptors opened while root (the kernel checks the descriptor, not the
//! caller); the store's directory is handed to the user first. Kept, to name the processes
//! of other users (a failing program's path, and the socket-holder fallback that names a
//! socket's process when the kernel could not):
//! - `CAP_SYS_PTRACE`: the `/proc/PID/exe` and `/proc/PID/fd/N` links;
//! - `CAP_DAC_READ_SEARCH`: listing `/proc/PID/fd`, a directory only its owner may read.
//!
//! Everything else is dropped from every set of every thread (bounding set too where the
//! process may, and no_new_privs), then checked from `/proc/self/task/*/status`.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::state::RunAs;

/// Linux capability numbers (linux/capability.h).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;

/// The capabilities kept after the drop, with what each is for.
pub const KEPT: [(u32, &str, &str); 2] = [
    (
        CAP_DAC_READ_SEARCH,
        "cap_dac_read_search",
        "list /proc/PID/fd of other users' processes (a directory only its owner may read)",
    ),
    (
        CAP_SYS_PTRACE,
        "cap_sys_ptrace",
        "read the /proc/PID/exe and /proc/PID/fd/N links of other users' processes",
    ),
];

/// The kept set as a `/proc/PID/status` mask.
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |m, (c, _, _)| m | 1 << c)
}

/// What became of the daemon's privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privileges {
    /// Running as `user` with only [`KEPT`].
    Dropped { user: String, uid: u32, gid: u32 },
    /// Still what it started as, and why.
    Kept { why: String },
}

/// A user from the password database.
struct Account {
    uid: u32,
    gid: u32,
}

fn account(name: &str) -> anyhow::Result<Option<Account>> {
    let c = CString::new(name).context("user name holds a NUL byte")?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwnam_r writes into `pwd` and `buf` (sizes given) and sets `out` to
    // `&pwd` or null; nothing is read from them unless `out` is non-null.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        );
        if rc != 0 {
            bail!(
                "cannot look up user {name}: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        Ok((!out.is_null()).then_some(Account {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        }))
    }
}

/// The group of `user` (its primary group): who may use the status socket besides root.
/// None when the user does not exist (the socket is then its owner's only).
pub fn group_of(user: &str) -> anyhow::Result<Option<u32>> {
    Ok(account(user)?.map(|a| a.gid))
}

/// [`drop_to`] with the store's paths, logged, as the status page shows it.
pub fn drop_and_describe(user: &str, db: &Path) -> anyhow::Result<RunAs> {
    Ok(match drop_to(user, &store_paths(db))? {
        Privileges::Dropped { user, uid, gid } => {
            let kept: Vec<String> = KEPT.iter().map(|(_, name, _)| (*name).to_owned()).collect();
            tracing::info!(%user, uid, gid, kept = %kept.join(","), "privileges dropped");
            RunAs {
                user,
                capabilities: kept,
                root_because: None,
            }
        }
        Privileges::Kept { why } => {
            tracing::warn!(%why, "still running as root");
            RunAs {
                user: "root".into(),
                capabilities: vec!["all it started with".into()],
                root_because: Some(why),
            }
        }
    })
}

/// Becomes `user` (module doc) after handing it `own` (the store's directory and files),
/// with [`KEPT`] only. Started as another user with capabilities (the unit), keeps that user
/// and drops all but [`KEPT`]. `Kept` when `user = "root"` or the user does not exist; an error when the drop
/// was attempted and did not fully take (the daemon must not go on).
pub fn drop_to(user: &str, own: &[PathBuf]) -> anyhow::Result<Privileges> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return keep_only_kept(euid, user);
    }
    if user == "root" {
        return Ok(Privileges::Kept {
            why: "daemon.user = \"root\"".into(),
        });
    }
    let Some(a) = account(user)? else {
        return Ok(Privileges::Kept {
            why: format!(
                "user {user:?} does not exist (the package creates it; by hand: adduser --system --group {user})"
            ),
        });
    };
    if a.uid == 0 {
        bail!("daemon.user {user:?} has uid 0");
    }
    for p in own.iter().filter(|p| p.exists()) {
        std::os::unix::fs::chown(p, Some(a.uid), Some(a.gid))
            .with_context(|| format!("cannot hand {} to {user}", p.display()))?;
    }
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    let kept = kept_mask();
    // SAFETY: plain system calls on this process's credentials; arguments are values.
    unsafe {
        // The bounding set needs CAP_SETPCAP, which systemd's CapabilityBoundingSet may
        // already have taken away: then it is already as small as the unit made it.
        for cap in (0..=last_cap).filter(|c| kept & (1 << c) == 0) {
            libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0);
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            bail!("PR_SET_KEEPCAPS: {}", std::io::Error::last_os_error());
        }
        let groups = [a.gid];
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            bail!("setgroups: {}", std::io::Error::last_os_error());
        }
        // glibc applies set*id to every thread of the process; threads other than this
        // one lose every capability (they do not keep them across the change).
        if libc::setresgid(a.gid, a.gid, a.gid) != 0 {
            bail!("setresgid: {}", std::io::Error::last_os_error());
        }
        if libc::setresuid(a.uid, a.uid, a.uid) != 0 {
            bail!("setresuid: {}", std::io::Error::last_os_error());
        }
        set_capabilities(kept)?;
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            bail!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
        }
    }
    check_every_thread(a.uid, kept)?;
    Ok(Privileges::Dropped {
        user: user.to_owned(),
        uid: a.uid,
        gid: a.gid,
    })
}

/// Started as a user with capabilities (the unit: `User=tlsmon` and ambient capabilities
/// to attach): the same user from now on with only [`KEPT`].
fn keep_only_kept(euid: u32, user: &str) -> anyhow::Result<Privileges> {
    let kept = kept_mask();
    let me =
        parse_status(&std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?);
    // SAFETY: prctl and capset on this thread's own capabilities; arguments are values.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        set_capabilities(me.cap_prm & kept)?;
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            bail!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
        }
    }
    check_every_thread(euid, kept)?;
    let name = match account(user)? {
        Some(a) if a.uid == euid => user.to_owned(),
        _ => format!("uid {euid}"),
    };
    // SAFETY: getegid has no preconditions.
    let gid = unsafe { libc::getegid() };
    Ok(Privileges::Dropped {
        user: name,
        uid: euid,
        gid,
    })
}

/// capset(2) on this thread: permitted = effective = `mask`, nothing inheritable.
///
/// # Safety
/// A system call on this thread's credentials.
unsafe fn set_capabilities(mask: u64) -> anyhow::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let half = |shift: u32| Data {
        effective: (mask >> shift) as u32,
        permitted: (mask >> shift) as u32,
        inheritable: 0,
    };
    let data = [half(0), half(32)];
    // SAFETY: header and two data structs as capset's version 3 expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        bail!("capset: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One thread's credentials as `/proc/.../status` shows them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ThreadCredentials {
    /// Real, effective, saved and filesystem uids.
    pub uids: Vec<u32>,
    pub cap_eff: u64,
    pub cap_prm: u64,
    pub cap_inh: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
}

/// Reads the fields of [`ThreadCredentials`] from a status file's text.
pub fn parse_status(text: &str) -> ThreadCredentials {
    let mut c = ThreadCredentials::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let hex = || u64::from_str_radix(value, 16).unwrap_or(u64::MAX);
        match key {
            "Uid" => {
                c.uids = value
                    .split_whitespace()
                    .filter_map(|u| u.parse().ok())
                    .collect();
            }
            "CapEff" => c.cap_eff = hex(),
            "CapPrm" => c.cap_prm = hex(),
            "CapInh" => c.cap_inh = hex(),
            "CapAmb" => c.cap_amb = hex(),
            "NoNewPrivs" => c.no_new_privs = value == "1",
            _ => {}
        }
    }
    c
}

/// Every thread runs as `uid` with no capability outside `kept` and nothing inheritable.
fn check_every_thread(uid: u32, kept: u64) -> anyhow::Result<()> {
    let tasks = std::fs::read_dir("/proc/self/task").context("/proc/self/task")?;
    for t in tasks.flatten() {
        let path = t.path().join("status");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // a thread that ended meanwhile
        };
        let c = parse_status(&text);
        let wrong = c.uids.len() != 4
            || c.uids.iter().any(|u| *u != uid)
            || c.cap_eff & !kept != 0
            || c.cap_prm & !kept != 0
            || c.cap_inh != 0
            || c.cap_amb != 0;
        if wrong {
            bail!("{} after dropping privileges: {c:?}", path.display());
        }
    }
    Ok(())
}

/// What the store needs to own: its directory (when it is not the root) and its files.
pub fn store_paths(db: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(dir) = db.parent().filter(|d| d.parent().is_some()) {
        v.push(dir.to_path_buf());
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        v.push(PathBuf::from(p));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_credentials_are_read_from_a_status_file() {
        let text = "Name:\ttlsmon\nUid:\t998\t998\t998\t998\nGid:\t997\t997\t997\t997\n\
                    CapInh:\t0000000000000000\nCapPrm:\t0000000000080000\n\
                    CapEff:\t0000000000080000\nCapBnd:\t0000000000080000\n\
                    CapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let c = parse_status(text);
        assert_eq!(c.uids, [998; 4]);
        assert_eq!(c.cap_eff, 1 << 19);
        assert_eq!(kept_mask(), 1 << 19 | 1 << 2);
        assert!(c.no_new_privs);
        assert_eq!(parse_status("CapEff:\tzz\n").cap_eff, u64::MAX);
    }

    #[test]
    fn the_store_hands_over_its_directory_and_files_but_never_the_root() {
        assert_eq!(
            store_paths(Path::new("/var/lib/tlsmon/tlsmon.db")),
            [
                "/var/lib/tlsmon",
                "/var/lib/tlsmon/tlsmon.db",
                "/var/lib/tlsmon/tlsmon.db-wal",
                "/var/lib/tlsmon/tlsmon.db-shm"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(store_paths(Path::new("/t.db"))[0], PathBuf::from("/t.db"));
    }
}
