//! Who may read what: the status details (peers, SNIs, processes) are for root and the
//! `tlsmon` group on the unix socket, and on TCP only with the bearer token; `/metrics`,
//! `/healthz` and `/readyz` answer anyone on TCP. Real users through setpriv, the real CLI,
//! real curl. Privileged: run through `sudo ./x test` (scripts/setup.sh creates the group).

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::Command,
    time::Duration,
};

use tlsmon_e2e::*;

fn tlsmon_gid() -> u32 {
    let (ok, out) = run_bounded(
        Command::new("getent").args(["group", "tlsmon"]),
        Duration::from_secs(5),
    );
    assert!(ok, "no tlsmon group (scripts/setup.sh creates it): {out}");
    out.split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .expect("gid")
}

/// `tlsmon args...` as user nobody, with the tlsmon group too when `member`: (success,
/// stdout and stderr).
fn tlsmon_as_nobody(member: bool, args: &[&str]) -> (bool, String) {
    let groups = if member {
        "--groups=tlsmon".to_owned()
    } else {
        "--clear-groups".to_owned()
    };
    // stderr too: what the user reads when refused.
    run_bounded(
        with_stderr("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", &groups])
            .arg(tlsmon_bin())
            .args(args),
        Duration::from_secs(10),
    )
}

/// curl's status code for `url` as user nobody, with `extra` arguments.
fn http_code_as_nobody(url: &str, extra: &[&str]) -> String {
    let (_, out) = run_bounded(
        Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "curl",
            ])
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(extra)
            .arg(url),
        Duration::from_secs(10),
    );
    out.trim().to_owned()
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
#[ignore = "root: loads eBPF programs (sudo ./x test)"]
fn details_are_for_root_and_the_tlsmon_group_and_metrics_for_anyone() {
    let gid = tlsmon_gid();
    let port = free_port();
    let token_dir = TempDir::new("token");
    let token = token_dir.path().join("status.token");
    std::fs::write(&token, "5f1c0e7a9b2d4c6e8f0a1b3c5d7e9f11\n").expect("token");
    chmod(&token, 0o640);
    let d = Daemon::start_with_status(&format!(
        "listen = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"",
        token.display()
    ));
    // Other users may reach the directory, not the socket.
    chmod(d.dir.path(), 0o711);
    let Endpoint::Unix(sock) = &d.endpoint else {
        panic!("the daemon's endpoint is its socket")
    };
    let meta = std::fs::metadata(sock).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.gid(), gid, "socket group");

    // A failure to read about.
    let (_pki, _server, server_port) = tls12_self_signed_server();
    assert!(
        !curl_named("secret.example", server_port),
        "curl trusted a self-signed certificate"
    );
    assert!(
        d.wait_failure("since=5m", Duration::from_secs(15), |a| a["peer"]["port"]
            == server_port)
            .is_some(),
        "{}",
        d.log()
    );

    // Root: the CLI finds the socket in the configuration.
    let config = d.config_path().display().to_string();
    let (ok, table) = run_bounded(
        Command::new(tlsmon_bin()).args(["status", "--config", &config]),
        Duration::from_secs(10),
    );
    assert!(ok && table.contains("curl"), "{table}");

    // Any other user: no details on the socket, a sentence that says why and what to do.
    let endpoint = d.endpoint.to_string();
    let (ok, out) = tlsmon_as_nobody(false, &["failures", "--endpoint", &endpoint]);
    assert!(!ok, "nobody read the failures: {out}");
    assert!(
        out.contains("permission denied") && out.contains("tlsmon group"),
        "{out}"
    );
    // ... none on TCP without the token, or with a wrong one ...
    let details = format!("http://127.0.0.1:{port}/v1/failures?since=5m");
    assert_eq!(http_code_as_nobody(&details, &[]), "403");
    assert_eq!(
        http_code_as_nobody(
            &details,
            &[
                "-H",
                "Authorization: Bearer 5f1c0e7a9b2d4c6e8f0a1b3c5d7e9f12"
            ]
        ),
        "403"
    );
    // ... and metrics and health for anyone: what Prometheus scrapes.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            http_code_as_nobody(&format!("http://127.0.0.1:{port}{path}"), &[]),
            "200",
            "{path}"
        );
    }

    // A member of the tlsmon group reads them on the socket.
    let (ok, out) = tlsmon_as_nobody(
        true,
        &[
            "failures",
            "--since",
            "5m",
            "--json",
            "--endpoint",
            &endpoint,
        ],
    );
    assert!(ok && out.contains("secret.example"), "{out}");

    // The token opens the details on TCP, to curl and to the CLI.
    assert_eq!(
        http_code_as_nobody(
            &details,
            &[
                "-H",
                "Authorization: Bearer 5f1c0e7a9b2d4c6e8f0a1b3c5d7e9f11"
            ]
        ),
        "200"
    );
    let (ok, out) = run_bounded(
        Command::new(tlsmon_bin())
            .args(["failures", "--since", "5m", "--json", "--endpoint"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--token-file")
            .arg(&token),
        Duration::from_secs(10),
    );
    assert!(ok && out.contains("secret.example"), "{out}");

    // check-config says so when the token is readable by everyone.
    chmod(&token, 0o644);
    let (ok, out) = run_bounded(
        Command::new(tlsmon_bin()).args(["check-config", "--config", &config]),
        Duration::from_secs(10),
    );
    assert!(ok && out.contains("status.token_file"), "{out}");
}
