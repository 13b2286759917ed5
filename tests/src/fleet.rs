//! A fleet on one machine: network namespaces joined by veth pairs (a broker namespace and
//! one per "host"), and a real PostgreSQL (Debian's) started by the test in its own scratch
//! directory, on a loopback port of the namespace it runs in.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::{Bg, TempDir, command_in, free_port, run_bounded, spawn};

/// A network namespace we created (deleted on drop), its loopback up.
pub struct Netns(pub String);

impl Netns {
    pub fn create(tag: &str) -> Netns {
        let name = format!("tlsmon-{tag}-{}", std::process::id());
        let _ = run_bounded(
            Command::new("ip").args(["netns", "del", &name]),
            Duration::from_secs(10),
        );
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    /// A veth pair between `self` and `other` on 10.231.`subnet`.0/24: self gets .1, other .2.
    /// Returns (self's address, other's address).
    pub fn link(&self, other: &Netns, subnet: u8) -> (String, String) {
        let (a, b) = (format!("veth{subnet}a"), format!("veth{subnet}b"));
        ip(&[
            "link", "add", &a, "netns", &self.0, "type", "veth", "peer", "name", &b, "netns",
            &other.0,
        ]);
        let (ia, ib) = (format!("10.231.{subnet}.1"), format!("10.231.{subnet}.2"));
        ip(&["-n", &self.0, "addr", "add", &format!("{ia}/24"), "dev", &a]);
        ip(&[
            "-n",
            &other.0,
            "addr",
            "add",
            &format!("{ib}/24"),
            "dev",
            &b,
        ]);
        ip(&["-n", &self.0, "link", "set", &a, "up"]);
        ip(&["-n", &other.0, "link", "set", &b, "up"]);
        (ia, ib)
    }

    /// `ip netns exec NAME program args...`
    pub fn exec(&self, program: &str) -> Command {
        command_in(Some(&self.0), program)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new("ip").args(["netns", "del", &self.0]),
            Duration::from_secs(10),
        );
    }
}

fn ip(args: &[&str]) {
    let (ok, out) = run_bounded(Command::new("ip").args(args), Duration::from_secs(10));
    assert!(ok, "ip {}: {out}", args.join(" "));
}

/// A PostgreSQL server of our own (user `tlsmon`, trust auth on loopback, database `fleet`).
pub struct Postgres {
    pub port: u16,
    pub dir: TempDir,
    bin: PathBuf,
    server: Option<Bg>,
}

/// Debian installs the server programs under /usr/lib/postgresql/<version>/bin.
fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect(
        "PostgreSQL server programs not found under /usr/lib/postgresql (apt install postgresql)",
    )
}

impl Postgres {
    /// Initialises a cluster and starts it (inside `netns` when given), bounded.
    pub fn start(netns: Option<&Netns>) -> Postgres {
        Self::start_with(netns, &[])
    }

    /// [`Postgres::start`] with more server settings (`-c name=value` pairs).
    pub fn start_with(netns: Option<&Netns>, settings: &[&str]) -> Postgres {
        let dir = TempDir::new("postgres");
        let bin = pg_bin();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        let (ok, out) = run_bounded(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()),
            Duration::from_secs(10),
        );
        assert!(ok, "chown: {out}");
        let (ok, out) = run_bounded(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("initdb"))
                .args([
                    "-U",
                    "tlsmon",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
            Duration::from_secs(120),
        );
        assert!(ok, "initdb: {out}");
        let port = free_port();
        let mut cmd = command_in(netns.map(|n| n.0.as_str()), "runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        for setting in settings {
            cmd.args(["-c", setting]);
        }
        let pg = Postgres {
            port,
            dir,
            bin,
            server: Some(spawn(&mut cmd)),
        };
        let t0 = Instant::now();
        loop {
            if pg.psql("postgres", "SELECT 1").is_ok() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "PostgreSQL did not start in 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        pg.psql("postgres", "CREATE DATABASE fleet")
            .expect("create database");
        pg
    }

    /// The URL an aggregator in the same namespace uses.
    pub fn url(&self) -> String {
        format!("postgres://tlsmon@127.0.0.1:{}/fleet", self.port)
    }

    /// Runs SQL through psql over the unix socket (reachable from any namespace).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let (ok, out) = run_bounded(
            Command::new("psql").arg("-h").arg(self.dir.path()).args([
                "-p",
                &self.port.to_string(),
                "-U",
                "tlsmon",
                "-d",
                db,
                "-Atc",
                sql,
            ]),
            Duration::from_secs(30),
        );
        if ok {
            Ok(out.trim().to_owned())
        } else {
            Err(out)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["stop", "-m", "immediate", "-D"])
                .arg(self.dir.path().join("data")),
            Duration::from_secs(20),
        );
        self.server.take();
    }
}
