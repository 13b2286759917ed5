//! What operators do around the daemon: install the .deb, point fail2ban at its log lines,
//! ask it over a unix socket, watch a real nginx being scanned. Needs root (`sudo ./x test`).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tlsmon_e2e::{
    Daemon, TempDir, fail2ban_ips, free_port, nginx_tls, openssl_server, run_bounded,
    self_signed_cert, tls12_self_signed_server,
};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// curl with extra arguments (bounded); true when it succeeded.
fn curl(extra: &[&str]) -> bool {
    run_bounded(
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "5"])
            .args(extra),
        Duration::from_secs(10),
    )
    .0
}

/// A shell command in a private mount namespace: dpkg's maintainer scripts run there, and if
/// the host runs systemd its /run/systemd is hidden, so nothing is started or enabled on it.
fn in_private_mounts(script: &str) -> (bool, String) {
    let guarded = format!(
        "mount --make-rprivate / && \
         if [ -d /run/systemd/system ]; then mount -t tmpfs none /run/systemd; fi && {script}"
    );
    run_bounded(
        Command::new("unshare").args(["-m", "sh", "-c", &format!("{guarded} 2>&1")]),
        Duration::from_secs(60),
    )
}

#[test]
#[ignore = "root: dpkg into a scratch root, loads eBPF programs (sudo ./x test)"]
fn the_package_installs_into_a_scratch_root_enables_its_unit_and_its_daemon_reports_curl() {
    let deb = PathBuf::from(
        std::env::var("TLSMON_DEB").expect("TLSMON_DEB (set by cargo xtask test: the .deb)"),
    );
    let scratch = TempDir::new("deb-root");
    let r = scratch.path();
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    std::fs::write(r.join("var/lib/dpkg/status"), "").expect("dpkg status");
    // The scratch root has no libc6 package: that dependency is the only one forced.
    let dpkg = |args: &str| {
        in_private_mounts(&format!(
            "dpkg --root={} --force-not-root --force-script-chrootless --force-depends {args}",
            r.display()
        ))
    };
    let (ok, out) = dpkg(&format!("-i {}", deb.display()));
    assert!(ok, "dpkg -i failed:\n{out}");
    let (_, status) = dpkg("-s tlsmon");
    assert!(status.contains("Status: install ok installed"), "{status}");

    // What the package put where.
    let bin = r.join("usr/bin/tlsmon");
    assert!(bin.is_file(), "no /usr/bin/tlsmon");
    assert_eq!(
        std::fs::read_to_string(r.join("etc/tlsmon/tlsmon.toml")).expect("conffile"),
        std::fs::read_to_string(repo_file("packaging/tlsmon.toml")).expect("packaging"),
    );
    let (_, conffiles) = dpkg("--status tlsmon");
    assert!(conffiles.contains("/etc/tlsmon/tlsmon.toml"), "{conffiles}");
    // postinst made the system user (systemd-sysusers, inside the root) and gave the
    // configuration to root and its group only.
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).expect("passwd in the root");
    let gid: u32 = std::fs::read_to_string(r.join("etc/group"))
        .expect("group in the root")
        .lines()
        .find_map(|l| l.strip_prefix("tlsmon:x:"))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
        .expect("group tlsmon");
    assert!(passwd.lines().any(|l| l.starts_with("tlsmon:")), "{passwd}");
    let meta = std::fs::metadata(r.join("etc/tlsmon/tlsmon.toml")).expect("conffile");
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), gid);
    let (ok, man) = run_bounded(
        Command::new("zcat").arg(r.join("usr/share/man/man8/tlsmon.8.gz")),
        Duration::from_secs(10),
    );
    assert!(ok && man.contains(".TH tlsmon 8"), "man page:\n{man}");
    assert!(man.contains("TLSMON FAILURES") && man.contains("SIGHUP"));
    for doc in ["filter.d/tlsmon.conf", "jail.d/tlsmon.local"] {
        assert!(r.join("usr/share/doc/tlsmon/fail2ban").join(doc).is_file());
    }
    // postinst enabled the unit inside the scratch root (deb-systemd-helper honours DPKG_ROOT).
    let wants = r.join("etc/systemd/system/multi-user.target.wants/tlsmon.service");
    let target = std::fs::read_link(&wants).expect("tlsmon.service enabled");
    assert!(
        target.ends_with("systemd/system/tlsmon.service"),
        "{target:?}"
    );

    // The installed units verify, with ExecStart pointing into the scratch root; the
    // aggregator's unit is shipped but not enabled.
    for name in ["tlsmon.service", "tlsmon-aggregate.service"] {
        let unit_text = std::fs::read_to_string(r.join("usr/lib/systemd/system").join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let unit = r.join(name);
        std::fs::write(
            &unit,
            unit_text.replace("/usr/bin/tlsmon", &bin.display().to_string()),
        )
        .expect("write unit");
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit)
            .output()
            .expect("systemd-analyze");
        assert!(
            out.status.success(),
            "systemd-analyze verify {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        !r.join("etc/systemd/system/multi-user.target.wants/tlsmon-aggregate.service")
            .exists()
    );
    let (ok, checked) = run_bounded(
        Command::new(&bin)
            .args(["check-config", "--config"])
            .arg(r.join("etc/tlsmon/tlsmon.toml")),
        Duration::from_secs(10),
    );
    assert!(ok, "check-config of the shipped file:\n{checked}");

    // The packaged binary (eBPF object inside) as a daemon: a failing curl shows in status.
    let (_pki, _server, port) = tls12_self_signed_server();
    let d = Daemon::start_bin(&bin, "");
    let t0 = Instant::now();
    assert!(!curl(&[&format!("https://127.0.0.1:{port}/")]));
    let seen = d.wait_failure("process=curl&since=5m", Duration::from_secs(10), |a| {
        a["peer"]["port"] == port
    });
    println!("failing curl visible after {:?}", t0.elapsed());
    let alert = seen.unwrap_or_else(|| panic!("no curl failure:\n{}", d.log()));
    assert_eq!(alert["cause"], "self_signed", "{alert}");
    let endpoint = d.endpoint.to_string();
    let (ok, table) = run_bounded(
        Command::new(&bin).args(["status", "--endpoint", &endpoint]),
        Duration::from_secs(10),
    );
    assert!(
        ok && table.contains("curl") && table.contains("self_signed"),
        "{table}"
    );
    let (code, log) = d.stop();
    assert_eq!(code.and_then(|c| c.code()), Some(0), "{log}");

    // Purge takes everything away again, the enablement and the conffile included.
    let (ok, out) = dpkg("--purge tlsmon");
    assert!(ok, "dpkg --purge:\n{out}");
    assert!(!bin.exists() && !r.join("etc/tlsmon/tlsmon.toml").exists());
    assert!(std::fs::symlink_metadata(&wants).is_err(), "still enabled");
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn the_fail2ban_filter_matches_real_alert_lines_and_names_only_scanning_clients() {
    let pki = self_signed_cert();
    let tls13 = free_port();
    let tls_port = free_port();
    let _modern = openssl_server(
        &pki,
        format!("127.0.0.1:{tls13}").parse().expect("addr"),
        &["-tls1_3"],
    );
    let _plain_target = openssl_server(
        &pki,
        format!("127.0.0.1:{tls_port}").parse().expect("addr"),
        &[],
    );
    let d = Daemon::start(&format!("[capture]\ntls_ports = [{tls_port}]\n"));
    // A client that only speaks TLS 1.2 (from 127.0.0.5) and one sending HTTP to a TLS port
    // (from 127.0.0.7); our own curl to a self-signed server must not be matched.
    assert!(!curl(&[
        "--interface",
        "127.0.0.5",
        "--tls-max",
        "1.2",
        "-k",
        &format!("https://127.0.0.1:{tls13}/")
    ]));
    assert!(!curl(&[
        "--interface",
        "127.0.0.7",
        &format!("http://127.0.0.1:{tls_port}/")
    ]));
    assert!(!curl(&[&format!("https://127.0.0.1:{tls_port}/")]));
    for (ip, cause) in [
        ("127.0.0.5", "protocol_version_mismatch"),
        ("127.0.0.7", "plaintext_to_tls_port"),
    ] {
        let found = d.wait_failure("process=openssl&since=5m", Duration::from_secs(10), |a| {
            a["peer"]["ip"] == ip && a["role"] == "server"
        });
        let a = found.unwrap_or_else(|| panic!("no server-side alert for {ip}:\n{}", d.log()));
        assert_eq!(a["cause"], cause, "{a}");
    }
    assert!(
        d.wait_log("cause=server_cert_rejected", Duration::from_secs(10)),
        "{}",
        d.log()
    );
    let log_file = d.dir.path().join("tlsmon.log");
    std::fs::write(&log_file, d.log()).expect("write log");

    let ips = fail2ban_ips(&log_file);
    assert_eq!(
        ips,
        BTreeSet::from(["127.0.0.5".to_owned(), "127.0.0.7".to_owned()]),
        "log:\n{}",
        d.log()
    );
    // The summary counts lines: every alert line was read, with the date understood.
    let filter = repo_file("packaging/fail2ban/filter.d/tlsmon.conf");
    let (_, summary) = run_bounded(
        Command::new("fail2ban-regex").arg(&log_file).arg(&filter),
        Duration::from_secs(60),
    );
    assert!(summary.contains("2 matched"), "{summary}");
    assert!(
        !summary.contains("[0] ^Year"),
        "dates not recognised:\n{summary}"
    );
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn nginx_scanned_by_ten_old_clients_is_five_alerts_and_one_summary_of_the_rest() {
    let pki = self_signed_cert();
    let port = free_port();
    let _nginx = nginx_tls(&pki, port, "ssl_protocols TLSv1.3;");
    let d = Daemon::start("[alerts]\nflood_peers = 5\n");
    for i in 10..20 {
        assert!(!curl(&[
            "--interface",
            &format!("127.0.0.{i}"),
            "--tls-max",
            "1.2",
            "-k",
            &format!("https://127.0.0.1:{port}/"),
        ]));
    }
    let all = |d: &Daemon| -> Vec<Value> {
        d.json("/v1/failures?process=nginx&since=5m")
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let t0 = Instant::now();
    let settled = |alerts: &[Value]| {
        let peers = alerts
            .iter()
            .filter(|a| a["kind"] == "handshake_failure_summary")
            .map(|a| a["count"].as_u64().unwrap_or(0))
            .sum::<u64>();
        peers >= 5
    };
    let mut alerts = all(&d);
    while t0.elapsed() < Duration::from_secs(15) && !settled(&alerts) {
        std::thread::sleep(Duration::from_millis(200));
        alerts = all(&d);
    }
    let single: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["kind"] == "handshake_failure")
        .collect();
    let summary: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["kind"] == "handshake_failure_summary")
        .collect();
    assert_eq!(single.len(), 5, "{alerts:#?}\n{}", d.log());
    assert_eq!(summary.len(), 1, "{alerts:#?}");
    let s = summary[0];
    assert_eq!(s["count"], 5, "{s}");
    assert_eq!(s["peers"], 5, "{s}");
    for a in single.iter().chain([&s]) {
        assert_eq!(a["process"]["comm"], "nginx", "{a}");
        assert_eq!(a["role"], "server");
        assert_eq!(a["local"]["port"], port);
        assert_eq!(a["cause"], "protocol_version_mismatch", "{a}");
        assert_eq!(a["alert"]["sender"], "server", "{a}");
    }
    let peers: BTreeSet<&str> = single
        .iter()
        .filter_map(|a| a["peer"]["ip"].as_str())
        .collect();
    assert_eq!(peers.len(), 5, "{peers:?}");
}
