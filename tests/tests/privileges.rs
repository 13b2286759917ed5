//! Least privilege, end to end: once its probes are attached, `tlsmon run` is the `tlsmon`
//! user with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH only, in every thread, whether started as root or as the
//! systemd unit starts it (`User=tlsmon` and ambient capabilities, emulated with setpriv);
//! and it still sees failures, names the programs of other users and reloads its
//! configuration. Privileged: run through `sudo ./x test` (scripts/setup.sh creates the
//! user).

use std::{net::SocketAddr, process::Command, time::Duration};

use tlsmon_e2e::*;

/// CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH as a /proc status mask.
const KEPT: u64 = 1 << 19 | 1 << 2;

fn uid_gid(uid: u32) -> u32 {
    let (ok, out) = run_bounded(
        Command::new("id").args(["-g", &uid.to_string()]),
        Duration::from_secs(5),
    );
    assert!(ok, "{out}");
    out.trim().parse().expect("gid")
}

fn tlsmon_uid() -> u32 {
    let (ok, out) = run_bounded(
        Command::new("id").args(["-u", "tlsmon"]),
        Duration::from_secs(5),
    );
    assert!(
        ok,
        "no tlsmon user (scripts/setup.sh test creates it): {out}"
    );
    out.trim().parse().expect("uid")
}

/// Every thread of `pid`: its uids and its effective, permitted and ambient capabilities.
fn threads(pid: u32) -> Vec<(String, Vec<u32>, u64, u64, u64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or("")
                .to_owned()
        };
        let hex = |k: &str| u64::from_str_radix(&field(k), 16).unwrap_or(u64::MAX);
        out.push((
            field("Name:"),
            field("Uid:")
                .split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect(),
            hex("CapEff:"),
            hex("CapPrm:"),
            hex("CapAmb:"),
        ));
    }
    out
}

fn assert_dropped(d: &Daemon, uid: u32) {
    let all = threads(d.pid());
    assert!(!all.is_empty());
    for (name, uids, eff, prm, amb) in &all {
        assert_eq!(uids, &[uid; 4], "thread {name}: {all:?}\n{}", d.log());
        assert!(
            *eff & !KEPT == 0 && *prm & !KEPT == 0 && *amb == 0,
            "thread {name}: {all:?}"
        );
    }
    assert_eq!(all[0].2, KEPT, "the main thread keeps both: {all:?}");
    let status = d.json("/v1/status");
    assert_eq!(status["run_as"]["user"], "tlsmon", "{status:#}");
    assert_eq!(
        status["run_as"]["capabilities"],
        serde_json::json!(["cap_dac_read_search", "cap_sys_ptrace"]),
        "{status:#}"
    );
    let (ok, text) = d.status_table();
    assert!(
        ok && text.contains("runs as tlsmon with cap_dac_read_search, cap_sys_ptrace"),
        "{text}"
    );
}

/// A TLS 1.3-only `openssl s_server` run as `nobody`, refused by a TLS 1.2 client: the
/// server-side alert names `/usr/bin/openssl`, which only CAP_SYS_PTRACE lets another user read.
fn a_failure_of_another_users_server_is_named(d: &Daemon) {
    let pki = self_signed_cert();
    // nobody must read the key.
    for f in ["cert.pem", "key.pem"] {
        let p = pki.path().join(f);
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
    }
    std::fs::set_permissions(
        pki.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod dir");
    let port = free_port();
    let _server = spawn(
        Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "openssl",
                "s_server",
            ])
            .args(["-quiet", "-tls1_3", "-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(pki.path().join("cert.pem"))
            .arg("-key")
            .arg(pki.path().join("key.pem")),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_listening(addr, Duration::from_secs(10));
    assert!(!openssl_client(addr, &["-tls1_2"]));
    let a = d
        .wait_failure(&format!("port={port}"), Duration::from_secs(15), |a| {
            a["role"] == "server"
        })
        .unwrap_or_else(|| panic!("no server-side alert:\n{}", d.log()));
    assert_eq!(a["cause"], "protocol_version_mismatch", "{a:#}");
    assert_eq!(a["process"]["exe"], "/usr/bin/openssl", "{a:#}");
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn started_as_root_it_becomes_tlsmon_with_two_capabilities_and_keeps_working() {
    let uid = tlsmon_uid();
    let d = Daemon::start("");
    assert_dropped(&d, uid);
    assert!(d.log().contains("privileges dropped"), "{}", d.log());
    a_failure_of_another_users_server_is_named(&d);
    // The configuration is read again as tlsmon (SIGHUP).
    let cfg = d.config_path();
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str("\n[alerts]\nwindow_secs = 60\n");
    std::fs::write(&cfg, text).expect("config");
    d.signal(libc::SIGHUP);
    assert!(
        d.wait_log(
            "reloaded filters and alert thresholds",
            Duration::from_secs(10)
        ),
        "{}",
        d.log()
    );
    let (status, log) = d.stop();
    assert!(status.is_some_and(|s| s.success()), "{log}");
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn started_as_the_unit_starts_it_it_keeps_only_its_two_capabilities() {
    let uid = tlsmon_uid();
    // What tlsmon.service gives it: User=tlsmon, these ambient capabilities, no new
    // privileges. Its state directory belongs to it (StateDirectory=).
    let caps = "+bpf,+perfmon,+net_admin,+sys_ptrace,+dac_read_search";
    let inh = format!("--inh-caps={caps}");
    let amb = format!("--ambient-caps={caps}");
    let bnd = format!("--bounding-set=-all,{caps}");
    let d = Daemon::start_wrapped(
        (uid, uid_gid(uid)),
        &[
            "setpriv",
            "--reuid=tlsmon",
            "--regid=tlsmon",
            "--init-groups",
            &inh,
            &amb,
            &bnd,
            "--no-new-privs",
        ],
        "",
    );
    assert_dropped(&d, uid);
    a_failure_of_another_users_server_is_named(&d);
}
