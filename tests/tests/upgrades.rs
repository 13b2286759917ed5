//! TLS that starts inside another protocol (PostgreSQL's SSLRequest, MariaDB's SSL request,
//! IMAP and LDAP StartTLS), against the real servers Debian ships: for each, a client that
//! trusts the server's CA succeeds and one given another CA fails at the certificate. Live,
//! the daemon reports the failure from both ends with each end's process and the protocol
//! before TLS; offline, `tlsmon analyze` reads the same tcpdump capture to the same verdicts.
//! Privileged: run through `sudo ./x test`.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use tlsmon_e2e::{fleet::Postgres, *};

/// One protocol's run: the server's port and programs, the two clients.
struct Case<'a> {
    proto: &'a str,
    port: u16,
    /// `comm` of the server process that owns the failing connection's server end.
    server_comm: &'a str,
    client_comm: &'a str,
    good: Command,
    bad: Command,
}

/// Runs both clients while the daemon and tcpdump watch the port; checks the live alerts
/// and the offline analysis of the capture. Returns the failure's cause.
fn check(d: &Daemon, scratch: &Path, mut case: Case<'_>) -> String {
    let port = case.port;
    let pcap = scratch.join(format!("{}.pcap", case.proto));
    let dump = tcpdump(&pcap, port);
    let (ok, out) = run_bounded(&mut case.good, Duration::from_secs(30));
    assert!(
        ok,
        "{}: the client trusting the CA must succeed: {out}",
        case.proto
    );
    let (ok, out) = run_bounded(&mut case.bad, Duration::from_secs(30));
    assert!(
        !ok,
        "{}: the client trusting another CA must fail: {out}",
        case.proto
    );
    let alerts = d.failures_counting(&format!("port={port}"), 2, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    stop_tcpdump(dump);

    // Live: the failure from both ends, each with its own process, after the protocol.
    let end = |role: &str| -> &Value {
        alerts
            .iter()
            .find(|a| a["role"] == role)
            .unwrap_or_else(|| panic!("{}: no {role} alert: {alerts:#?}\n{}", case.proto, d.log()))
    };
    let (client, server) = (end("client"), end("server"));
    assert_eq!(client["process"]["comm"], case.client_comm, "{client:#}");
    assert_eq!(server["process"]["comm"], case.server_comm, "{server:#}");
    assert_eq!(server["upgrade"], case.proto, "{server:#}");
    // A client program tlsmon knows names the protocol itself; others fall back to the
    // port's registration ("unknown" on these test ports).
    let client_names = if case.client_comm == "openssl" {
        "unknown"
    } else {
        case.proto
    };
    assert_eq!(client["upgrade"], client_names, "{client:#}");
    assert_eq!(
        client["cause"], server["cause"],
        "both ends name one cause: {alerts:#?}"
    );
    let cause = client["cause"].as_str().unwrap_or("?").to_owned();

    // Offline, the same capture: both connections, the protocol named from its plaintext.
    let (ok, out) = run_bounded(
        Command::new(tlsmon_bin())
            .args(["analyze", "--json", "--all"])
            .arg(&pcap),
        Duration::from_secs(60),
    );
    assert!(ok, "analyze: {out}");
    let lines: Vec<Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let mut outcomes: Vec<&str> = lines.iter().map(|l| s(l, &["outcome"])).collect();
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["completed", "failed"], "{}: {out}", case.proto);
    for l in &lines {
        assert_eq!(l["upgrade"], case.proto, "{l:#}");
    }
    let failed = lines
        .iter()
        .find(|l| l["outcome"] == "failed")
        .expect("the failed connection");
    assert_eq!(
        failed["cause"],
        cause.as_str(),
        "offline as live: {failed:#}"
    );
    println!(
        "{}: live {cause} from {} and {}, offline {}",
        case.proto, case.client_comm, case.server_comm, failed["cause"]
    );
    cause
}

fn path(dir: &TempDir, file: &str) -> String {
    dir.path().join(file).display().to_string()
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn postgresql_ssl_request() {
    let pki = ca_signed_pki("pg-upgrade");
    let key = pki.path().join("key.pem");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let (ok, uid) = run_bounded(
        Command::new("id").args(["-u", "postgres"]),
        Duration::from_secs(5),
    );
    assert!(ok, "{uid}");
    std::os::unix::fs::chown(&key, uid.trim().parse().ok(), None).expect("chown");
    let pg = Postgres::start_with(
        None,
        &[
            "ssl=on",
            &format!("ssl_cert_file={}", path(&pki, "cert.pem")),
            &format!("ssl_key_file={}", key.display()),
        ],
    );
    let d = Daemon::start("");
    let psql = |ca: &str| {
        let mut c = with_stderr("psql");
        c.arg(format!(
            "host=127.0.0.1 port={} user=tlsmon dbname=postgres sslmode=verify-ca \
             sslrootcert={} connect_timeout=10",
            pg.port,
            path(&pki, ca)
        ))
        .args(["-Atc", "SELECT 1"]);
        c
    };
    check(
        &d,
        pki.path(),
        Case {
            proto: "postgresql",
            port: pg.port,
            server_comm: "postgres",
            client_comm: "psql",
            good: psql("ca.pem"),
            bad: psql("other-ca.pem"),
        },
    );
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn mariadb_ssl_request_with_secure_transport_required() {
    let pki = ca_signed_pki("mariadb-upgrade");
    let data = pki.path().join("data");
    let (ok, out) = run_bounded(
        Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display())),
        Duration::from_secs(180),
    );
    assert!(ok, "mariadb-install-db: {out}");
    let port = free_port();
    let _server = spawn(
        Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                "--skip-log-bin",
                "--require-secure-transport=ON",
                "--innodb-buffer-pool-size=16M",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", path(&pki, "mysqld.sock")))
            .arg(format!("--pid-file={}", path(&pki, "mysqld.pid")))
            .arg(format!("--log-error={}", path(&pki, "mysqld.err")))
            .arg(format!("--ssl-cert={}", path(&pki, "cert.pem")))
            .arg(format!("--ssl-key={}", path(&pki, "key.pem"))),
    );
    wait_listening(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        Duration::from_secs(60),
    );
    let d = Daemon::start("");
    let client = |ca: &str| {
        let mut c = with_stderr("mariadb");
        c.args([
            "--no-defaults",
            "--protocol=TCP",
            "-h",
            "127.0.0.1",
            "-u",
            "root",
            "--connect-timeout=10",
            "--ssl",
            "--ssl-verify-server-cert",
        ])
        .arg(format!("-P{port}"))
        .arg(format!("--ssl-ca={}", path(&pki, ca)))
        .args(["-e", "SELECT 1"]);
        c
    };
    check(
        &d,
        pki.path(),
        Case {
            proto: "mysql",
            port,
            server_comm: "mariadbd",
            client_comm: "mariadb",
            good: client("ca.pem"),
            bad: client("other-ca.pem"),
        },
    );
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn dovecot_imap_starttls() {
    let pki = ca_signed_pki("dovecot-upgrade");
    let port = free_port();
    let run = pki.path().join("run");
    std::fs::create_dir_all(&run).expect("mkdir");
    let conf = pki.path().join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "protocols = imap\nlisten = 127.0.0.1\nbase_dir = {run}\nstate_dir = {run}\n\
             log_path = {dir}/dovecot.log\nssl = required\nssl_cert = <{dir}/cert.pem\n\
             ssl_key = <{dir}/key.pem\nauth_mechanisms = plain\n\
             passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
             userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home=/nonexistent\n}}\n\
             service imap-login {{\n  inet_listener imap {{\n    port = {port}\n  }}\n\
               inet_listener imaps {{\n    port = 0\n  }}\n}}\n",
            run = run.display(),
            dir = pki.path().display(),
        ),
    )
    .expect("write dovecot.conf");
    let _server = spawn(Command::new("dovecot").arg("-F").arg("-c").arg(&conf));
    wait_listening(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        Duration::from_secs(30),
    );
    let d = Daemon::start("");
    let client = |ca: &str| {
        let mut c = Command::new("openssl");
        c.args([
            "s_client",
            "-starttls",
            "imap",
            "-brief",
            "-verify_return_error",
        ])
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-CAfile", &path(&pki, ca)]);
        c
    };
    check(
        &d,
        pki.path(),
        Case {
            proto: "imap",
            port,
            server_comm: "imap-login",
            client_comm: "openssl",
            good: client("ca.pem"),
            bad: client("other-ca.pem"),
        },
    );
}

#[test]
#[ignore = "privileged: run `sudo ./x test`"]
fn openldap_starttls() {
    let pki = ca_signed_pki("slapd-upgrade");
    let port = free_port();
    let db = pki.path().join("db");
    std::fs::create_dir_all(&db).expect("mkdir");
    let conf = pki.path().join("slapd.conf");
    let dir = pki.path().display();
    std::fs::write(
        &conf,
        format!(
            "include /etc/ldap/schema/core.schema\npidfile {dir}/slapd.pid\n\
             argsfile {dir}/slapd.args\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\n\
             TLSCertificateFile {dir}/cert.pem\nTLSCertificateKeyFile {dir}/key.pem\n\
             database mdb\nsuffix \"dc=example,dc=org\"\n\
             rootdn \"cn=admin,dc=example,dc=org\"\ndirectory {db}\n",
            db = db.display(),
        ),
    )
    .expect("write slapd.conf");
    let _server = spawn(
        Command::new("slapd")
            .args(["-d", "0", "-f"])
            .arg(&conf)
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{port}/")),
    );
    wait_listening(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        Duration::from_secs(30),
    );
    let d = Daemon::start("");
    let client = |ca: &str| {
        let mut c = with_stderr("ldapwhoami");
        c.args(["-x", "-ZZ", "-H", &format!("ldap://127.0.0.1:{port}")])
            .env("LDAPTLS_CACERT", path(&pki, ca))
            .env("LDAPTLS_REQCERT", "demand");
        c
    };
    check(
        &d,
        pki.path(),
        Case {
            proto: "ldap",
            port,
            server_comm: "slapd",
            client_comm: "ldapwhoami",
            good: client("ca.pem"),
            bad: client("other-ca.pem"),
        },
    );
}
