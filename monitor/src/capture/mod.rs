//! Loading, attaching and reading the kernel programs: the only module that uses aya.
//!
//! `Capture::start` checks what the kernel needs (root, BTF, cgroup v2), loads the embedded
//! object, attaches every program to the root cgroup / BTF tracepoints, and then
//! `Capture::drain` decodes ring records into [`CaptureEvent`]s. The ring is filled with
//! `BPF_RB_NO_WAKEUP` and drained on a timer by the caller.

pub mod process;
pub mod socket_holder;

use std::{fs::File, path::PathBuf};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr},
};
use monitor_common::{ServiceKey, counter, globals, tls_port};

use crate::flow::{
    CaptureEvent,
    capture_event::{DecodeError, decode},
    tls_services::Change,
};

/// The eBPF object built by `monitor/build.rs` (empty unless built through `cargo xtask`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

/// Capture settings.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Bytes captured per direction of a TLS flow.
    pub direction_budget: u32,
    /// Plaintext bytes watched for a STARTTLS-style upgrade.
    pub watch_limit: u32,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Ports known to speak TLS: plaintext sent to them is sampled.
    pub tls_ports: Vec<u16>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            direction_budget: monitor_common::DEFAULT_DIRECTION_BUDGET,
            watch_limit: monitor_common::DEFAULT_WATCH_LIMIT,
            ring_bytes: 4 * 1024 * 1024,
            tls_ports: crate::handshake::DEFAULT_TLS_PORTS.to_vec(),
        }
    }
}

/// Why capture cannot start; each names what is missing.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "this tlsmon was built without its eBPF programs; build it with `cargo xtask build` \
         (or run `cargo xtask run`)"
    )]
    NoObject,
    #[error(
        "tlsmon needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN to load its eBPF programs: run it as root, or as tlsmon.service does (User=tlsmon with those AmbientCapabilities)"
    )]
    NotRoot,
    #[error(
        "the kernel has no BTF (/sys/kernel/btf/vmlinux missing): tlsmon needs a kernel >= 5.12 built with CONFIG_DEBUG_INFO_BTF"
    )]
    NoBtf,
    #[error("kernel {release} is too old: tlsmon needs Linux >= {MIN_KERNEL_TEXT} ({missing})")]
    KernelTooOld {
        release: String,
        missing: &'static str,
    },
    #[error("no cgroup v2 hierarchy is mounted and mounting one at {path} failed: {source}")]
    NoCgroup2 {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel lockdown is in confidentiality mode: eBPF tracing is refused")]
    Lockdown,
    #[error("{what}: {source}")]
    Ebpf {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid capture setting: {0}")]
    Config(String),
}

fn ebpf_err<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> CaptureError {
    let what = what.into();
    move |e| CaptureError::Ebpf {
        what,
        source: Box::new(e),
    }
}

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub ring_drops: u64,
    pub budget_truncated_bytes: u64,
    pub flows_reported: u64,
    pub flows_tls: u64,
    pub flows_upgraded: u64,
    pub data_records: u64,
    pub parse_errors: u64,
    /// Connections whose peer's first bytes went to a listener before the socket existed.
    pub missed_start: u64,
}

/// Attached programs and their maps. Dropping it detaches everything.
pub struct Capture {
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    tls_ports: Array<MapData, u8>,
    tls_services: HashMap<MapData, ServiceKey, u8>,
    stop: HashMap<MapData, u64, u8>,
    /// Ports configured as TLS.
    configured_ports: std::collections::HashSet<u16>,
    /// Learned services per port (the `tls_port::LEARNED` bit is set while non-zero).
    learned_per_port: std::collections::HashMap<u16, u32>,
    /// Names of the attached programs, for status output.
    pub attached: Vec<&'static str>,
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn is_cgroup2(path: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct with a valid C string.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

/// The cgroup v2 root to attach to; mounts one when the host has none (a hybrid v1 host).
fn cgroup2_root() -> Result<PathBuf, CaptureError> {
    for p in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if is_cgroup2(p) {
            return Ok(PathBuf::from(p));
        }
    }
    let path = PathBuf::from("/run/tlsmon/cgroup2");
    let mount = || -> std::io::Result<()> {
        std::fs::create_dir_all(&path)?;
        let target = std::ffi::CString::new("/run/tlsmon/cgroup2")?;
        let fstype = std::ffi::CString::new("cgroup2")?;
        // SAFETY: mount(2) with valid C strings and no data.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    mount().map_err(|source| CaptureError::NoCgroup2 {
        path: path.clone(),
        source,
    })?;
    tracing::info!(path = %path.display(), "mounted a cgroup v2 hierarchy");
    Ok(path)
}

/// The oldest kernel the programs load on, and what each older one lacks.
const MIN_KERNEL: (u32, u32) = (5, 12);
const MIN_KERNEL_TEXT: &str = "5.12";

/// What a kernel older than `MIN_KERNEL` lacks that tlsmon uses.
fn missing_before(version: (u32, u32)) -> Option<&'static str> {
    match version {
        v if v < (5, 8) => Some("BPF ring buffers arrived in 5.8"),
        v if v < (5, 11) => Some(
            "socket storage from BTF tracepoints (tcp_rcv_space_adjust, inet_sock_set_state) arrived in 5.11",
        ),
        v if v < MIN_KERNEL => Some(
            "fully ordered BPF atomics (xchg, fetch_add), used by the table of client owners, arrived in 5.12",
        ),
        _ => None,
    }
}

/// "6.18.44-fc-v657" -> (6, 18).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The effective capabilities (a `/proc/PID/status` text) hold CAP_NET_ADMIN (12),
/// CAP_PERFMON (38) and CAP_BPF (39): root's, or a unit's ambient ones.
fn can_attach(status: &str) -> bool {
    const NEEDED: u64 = 1 << 12 | 1 << 38 | 1 << 39;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|eff| eff & NEEDED == NEEDED)
}

fn check_prerequisites() -> Result<(), CaptureError> {
    if EBPF_OBJECT.is_empty() {
        return Err(CaptureError::NoObject);
    }
    let release = kernel_release();
    if let Some(missing) = kernel_version(&release).and_then(missing_before) {
        return Err(CaptureError::KernelTooOld { release, missing });
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !can_attach(&status) {
        return Err(CaptureError::NotRoot);
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(CaptureError::NoBtf);
    }
    if let Ok(l) = std::fs::read_to_string("/sys/kernel/security/lockdown")
        && l.contains("[confidentiality]")
    {
        return Err(CaptureError::Lockdown);
    }
    Ok(())
}

impl Capture {
    /// Loads and attaches every program. Fails with one clear error naming what is missing.
    pub fn start(cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        check_prerequisites()?;
        if !cfg.ring_bytes.is_power_of_two() || cfg.ring_bytes < 4096 {
            return Err(CaptureError::Config(format!(
                "ring_bytes {} must be a power of two >= 4096",
                cfg.ring_bytes
            )));
        }
        if cfg.direction_budget == 0 || cfg.direction_budget > monitor_common::MAX_DIRECTION_BUDGET
        {
            return Err(CaptureError::Config(format!(
                "direction budget {} must be 1..={}",
                cfg.direction_budget,
                monitor_common::MAX_DIRECTION_BUDGET
            )));
        }
        // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit with a valid struct.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };

        let cgroup_path = cgroup2_root()?;
        let btf = Btf::from_sys_fs().map_err(|_| CaptureError::NoBtf)?;
        let self_tgid = std::process::id();
        // A benchmark hook: the hooks attached, every program empty (their bare cost).
        let floor = u32::from(std::env::var_os("TLSMON_BENCH_FLOOR").is_some_and(|v| v == "1"));
        if floor != 0 {
            tracing::warn!(
                "TLSMON_BENCH_FLOOR=1: programs attached but empty, nothing is captured"
            );
        }
        let mut ebpf = EbpfLoader::new()
            .btf(&btf)
            .override_global(globals::SELF_TGID, &self_tgid, true)
            .override_global(globals::DIRECTION_BUDGET, &cfg.direction_budget, true)
            .override_global(globals::WATCH_LIMIT, &cfg.watch_limit, true)
            .override_global(globals::FLOOR, &floor, true)
            .map_max_entries("EVENTS", cfg.ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(ebpf_err("loading the eBPF object"))?;

        let cgroup = File::open(&cgroup_path)
            .map_err(ebpf_err(format!("opening {}", cgroup_path.display())))?;
        let mut attached = Vec::new();
        for (name, attach) in [
            ("tlsmon_egress", CgroupSkbAttachType::Egress),
            ("tlsmon_ingress", CgroupSkbAttachType::Ingress),
        ] {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?;
            prog.load().map_err(ebpf_err(format!("loading {name}")))?;
            // With bpf_link (kernel >= 5.7) "Single" coexists with other programs on the
            // same cgroup; AllowMultiple was measured to fail with EINVAL here.
            prog.attach(&cgroup, attach, CgroupAttachMode::Single)
                .map_err(ebpf_err(format!(
                    "attaching {name} to {}",
                    cgroup_path.display()
                )))?;
            attached.push(name);
        }
        for name in ["tlsmon_connect4", "tlsmon_connect6"] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(ebpf_err(format!("loading {name}")))?;
            prog.attach(&cgroup, CgroupAttachMode::Single)
                .map_err(ebpf_err(format!("attaching {name}")))?;
            attached.push(name);
        }
        // A test hook: programs named here are left out, as on a kernel without them.
        let skipped = std::env::var("TLSMON_SKIP_PROGRAMS").unwrap_or_default();
        for (name, tp) in [
            ("tlsmon_reader", "tcp_rcv_space_adjust"),
            ("tlsmon_state", "inet_sock_set_state"),
            ("tlsmon_rst_in", "tcp_receive_reset"),
            ("tlsmon_rst_out", "tcp_send_reset"),
        ] {
            if skipped.split(',').any(|s| s == name) {
                tracing::warn!(program = name, "not attached (TLSMON_SKIP_PROGRAMS)");
                continue;
            }
            let mut attach = || -> Result<(), CaptureError> {
                let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
                prog.load(tp, &btf)
                    .map_err(ebpf_err(format!("loading {name} for tracepoint {tp}")))?;
                prog.attach()
                    .map_err(ebpf_err(format!("attaching {name} to tp_btf/{tp}")))?;
                Ok(())
            };
            match attach() {
                Ok(()) => attached.push(name),
                // Naming servers has a fallback (/proc), the lifecycle has none.
                Err(e) if name == "tlsmon_reader" => tracing::warn!(
                    error = %e,
                    "servers' processes will be found through /proc instead"
                ),
                Err(e) => return Err(e),
            }
        }

        let ring = RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?)
            .map_err(ebpf_err("opening the EVENTS ring"))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, "COUNTERS")?)
            .map_err(ebpf_err("opening COUNTERS"))?;
        let mut tls_ports: Array<MapData, u8> = Array::try_from(take_map(&mut ebpf, "TLS_PORTS")?)
            .map_err(ebpf_err("opening TLS_PORTS"))?;
        let stop =
            HashMap::try_from(take_map(&mut ebpf, "STOP")?).map_err(ebpf_err("opening STOP"))?;
        let tls_services = HashMap::try_from(take_map(&mut ebpf, "TLS_SERVICES")?)
            .map_err(ebpf_err("opening TLS_SERVICES"))?;
        for port in &cfg.tls_ports {
            tls_ports
                .set(u32::from(*port), &tls_port::CONFIGURED, 0)
                .map_err(ebpf_err("filling TLS_PORTS"))?;
        }
        Ok(Capture {
            _ebpf: ebpf,
            ring,
            counters,
            tls_ports,
            tls_services,
            stop,
            configured_ports: cfg.tls_ports.iter().copied().collect(),
            learned_per_port: std::collections::HashMap::new(),
            attached,
        })
    }

    /// Decodes every record waiting in the ring.
    pub fn drain(&mut self, out: &mut Vec<Result<CaptureEvent, DecodeError>>) {
        while let Some(item) = self.ring.next() {
            out.push(decode(&item));
        }
    }

    /// One kernel counter summed over CPUs.
    fn counter(&self, idx: u32) -> u64 {
        self.counters
            .get(&idx, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Ring records the kernel could not deliver, so far (one map read: cheap enough for
    /// every drain).
    pub fn ring_drops(&self) -> u64 {
        self.counter(counter::RING_DROPS)
    }

    /// Kernel counters summed over CPUs.
    pub fn counters(&self) -> KernelCounters {
        let get = |idx: u32| self.counter(idx);
        KernelCounters {
            ring_drops: get(counter::RING_DROPS),
            budget_truncated_bytes: get(counter::BUDGET_TRUNCATED),
            flows_reported: get(counter::FLOWS_REPORTED),
            flows_tls: get(counter::FLOWS_TLS),
            flows_upgraded: get(counter::FLOWS_UPGRADED),
            data_records: get(counter::DATA_RECORDS),
            parse_errors: get(counter::PARSE_ERRORS),
            missed_start: get(counter::MISSED_START),
        }
    }

    /// Mirrors a change of the learned TLS services into `TLS_SERVICES` and the port's
    /// `tls_port::LEARNED` bit (a map update per change, not per handshake).
    pub fn follow(&mut self, change: Change) {
        let (addr, learned) = match change {
            Change::Learned(a) => (a, true),
            Change::Forgotten(a) => (a, false),
        };
        let key = service_key(addr);
        let port = addr.port();
        let n = self.learned_per_port.entry(port).or_default();
        let before = *n;
        let res = if learned {
            *n += 1;
            self.tls_services.insert(&key, &1, 0)
        } else {
            *n = n.saturating_sub(1);
            self.tls_services.remove(&key)
        };
        if let Err(e) = res {
            tracing::debug!(%addr, error = %e, "TLS_SERVICES not updated");
        }
        let after = *n;
        if after == 0 {
            self.learned_per_port.remove(&port);
        }
        if (before == 0) != (after == 0) {
            let mut bits = if after > 0 { tls_port::LEARNED } else { 0 };
            if self.configured_ports.contains(&port) {
                bits |= tls_port::CONFIGURED;
            }
            if let Err(e) = self.tls_ports.set(u32::from(port), &bits, 0) {
                tracing::debug!(port, error = %e, "TLS_PORTS not updated");
            }
        }
    }

    /// Tells the kernel to stop capturing a connection whose outcome is decided.
    pub fn stop_flow(&mut self, cookie: u64) {
        if let Err(e) = self.stop.insert(&cookie, &1, 0) {
            tracing::debug!(cookie, error = %e, "STOP map full");
        }
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| CaptureError::Ebpf {
        what: format!("program {name}"),
        source: "missing from the eBPF object".into(),
    })?;
    p.try_into()
        .map_err(ebpf_err(format!("program {name} has an unexpected type")))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, CaptureError> {
    ebpf.take_map(name).ok_or_else(|| CaptureError::Ebpf {
        what: format!("map {name}"),
        source: "missing from the eBPF object".into(),
    })
}

/// The kernel's key for a service: IPv4 as `::ffff:a.b.c.d`, as dual-stack sockets hold it.
fn service_key(addr: std::net::SocketAddr) -> ServiceKey {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    ServiceKey {
        addr: ip.octets(),
        port: addr.port(),
        _pad: [0; 6],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attaching_needs_bpf_perfmon_and_net_admin_not_uid_0() {
        assert!(can_attach("Uid:\t995\nCapEff:\t000000c000081000\n"));
        assert!(can_attach("CapEff:\t000001ffffffffff\n"));
        assert!(!can_attach("CapEff:\t0000008000001000\n"), "no CAP_PERFMON");
        assert!(!can_attach("CapEff:\t0000000000080000\n"));
        assert!(!can_attach(""));
    }

    #[test]
    fn kernels_older_than_5_12_are_refused_naming_what_they_lack() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(kernel_version("garbage"), None);
        assert_eq!(missing_before((6, 18)), None);
        assert_eq!(missing_before((5, 12)), None);
        assert!(missing_before((5, 11)).is_some_and(|m| m.contains("atomics")));
        assert!(missing_before((5, 10)).is_some_and(|m| m.contains("5.11")));
        assert!(missing_before((4, 19)).is_some_and(|m| m.contains("ring buffers")));
        let e = CaptureError::KernelTooOld {
            release: "5.10.0".into(),
            missing: "x",
        };
        assert!(e.to_string().contains("needs Linux >= 5.12"), "{e}");
    }
}
