//! The kernel's own accounting of BPF programs (`kernel.bpf_stats_enabled`): for every
//! loaded program named `tlsmon_*`, its total run time and run count, read with the bpf(2)
//! syscall (BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD), so the
//! capture bench can say what each hook costs per run, with tlsmon's programs and with the
//! empty ones.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// Offsets in `struct bpf_prog_info` (include/uapi/linux/bpf.h).
const NAME: usize = 64;
const RUN_TIME_NS: usize = 192;
const RUN_CNT: usize = 200;
const INFO_LEN: usize = 208;

/// Run time and count of one program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Runs {
    pub ns: u64,
    pub count: u64,
}

impl Runs {
    /// What ran between `before` and `self`.
    pub fn since(self, before: Runs) -> Runs {
        Runs {
            ns: self.ns.saturating_sub(before.ns),
            count: self.count.saturating_sub(before.count),
        }
    }

    /// Nanoseconds per run.
    pub fn per_run(self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.ns as f64 / self.count as f64
        }
    }
}

/// Turns the statistics on while it lives (they cost ~30 ns a run themselves), restoring
/// the previous setting after.
pub struct Enabled(String);

impl Enabled {
    pub fn new() -> Result<Enabled> {
        const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(PATH).context(PATH)?;
        std::fs::write(PATH, "1").context(PATH)?;
        Ok(Enabled(old.trim().to_owned()))
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> libc::c_long {
    // SAFETY: bpf(2) with an attribute buffer of the given size that lives for the call.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

/// Run time and count of every loaded `tlsmon_*` program, by name (summed when several
/// programs share a name, e.g. two daemons).
pub fn snapshot() -> Result<BTreeMap<String, Runs>> {
    let mut out: BTreeMap<String, Runs> = BTreeMap::new();
    let mut id = 0u32;
    loop {
        // union bpf_attr { __u32 start_id; __u32 next_id; __u32 open_flags; }
        let mut attr = [0u8; 12];
        attr[..4].copy_from_slice(&id.to_ne_bytes());
        if bpf(BPF_PROG_GET_NEXT_ID, &mut attr) < 0 {
            break; // ENOENT: no more programs
        }
        id = u32::from_ne_bytes([attr[4], attr[5], attr[6], attr[7]]);
        let mut by_id = [0u8; 12];
        by_id[..4].copy_from_slice(&id.to_ne_bytes());
        let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut by_id);
        if fd < 0 {
            continue; // unloaded meanwhile
        }
        let mut info = [0u8; INFO_LEN];
        // { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
        let mut get = [0u8; 16];
        get[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
        get[4..8].copy_from_slice(&(INFO_LEN as u32).to_ne_bytes());
        get[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
        let rc = bpf(BPF_OBJ_GET_INFO_BY_FD, &mut get);
        // SAFETY: closing the descriptor BPF_PROG_GET_FD_BY_ID gave us.
        unsafe { libc::close(fd as i32) };
        if rc < 0 {
            bail!(
                "BPF_OBJ_GET_INFO_BY_FD: {}",
                std::io::Error::last_os_error()
            );
        }
        let name: String = info[NAME..NAME + 16]
            .iter()
            .take_while(|b| **b != 0)
            .map(|b| *b as char)
            .collect();
        if !name.starts_with("tlsmon_") {
            continue;
        }
        let u64_at = |at: usize| u64::from_ne_bytes(info[at..at + 8].try_into().unwrap_or([0; 8]));
        let runs = out.entry(name).or_default();
        runs.ns += u64_at(RUN_TIME_NS);
        runs.count += u64_at(RUN_CNT);
    }
    Ok(out)
}

/// What ran between two snapshots, by program.
pub fn between(
    before: &BTreeMap<String, Runs>,
    after: &BTreeMap<String, Runs>,
) -> BTreeMap<String, Runs> {
    after
        .iter()
        .map(|(name, a)| {
            (
                name.clone(),
                a.since(before.get(name).copied().unwrap_or_default()),
            )
        })
        .collect()
}
