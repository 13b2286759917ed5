//! Long-running tlsmon processes under test: `tlsmon run` ([`Daemon`]) and `tlsmon aggregate`
//! ([`Aggregator`]), each with its own configuration and scratch directory, its stderr kept,
//! its HTTP endpoint (the daemon's status socket in its directory, which serves every
//! route; the aggregator's unix socket).

use std::{
    fmt,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    ops::Deref,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{TempDir, command_in, free_port, tlsmon_bin, wait_exit};

/// Where a service's HTTP endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Endpoint {
    /// A free loopback TCP port.
    pub fn free_tcp() -> Endpoint {
        Endpoint::Tcp(format!("127.0.0.1:{}", free_port()).parse().expect("addr"))
    }
}

/// As the configuration's `listen` and the CLI's `--endpoint` take it.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A tlsmon process with its stderr collected; killed on drop.
pub struct Service {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
    pub endpoint: Endpoint,
}

impl Service {
    /// Starts `cmd`; returns once `/readyz` answers 200 (bounded), panics with the log if it
    /// exits or is not ready in 60 s. Logs at info unless the command sets `TLSMON_LOG`.
    pub fn launch(mut cmd: Command, endpoint: Endpoint) -> Service {
        if !cmd.get_envs().any(|(k, _)| k == "TLSMON_LOG") {
            cmd.env("TLSMON_LOG", "info");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let e = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        let reader = thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                e.lock().expect("lock").push(line);
            }
        });
        let mut s = Service {
            child,
            stderr,
            reader: Some(reader),
            endpoint,
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if s.get("/readyz").0 == 200 {
                return s;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("{cmd:?} exited with {status}:\n{}", s.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = s.child.kill();
        panic!("{cmd:?} not ready within 60 s:\n{}", s.log());
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    /// Waits (bounded) until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.log().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// HTTP GET on the endpoint: (status code, body); code 0 when unreachable.
    pub fn get(&self, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut raw = String::new();
        let timeout = Some(Duration::from_secs(10));
        let sent = match &self.endpoint {
            Endpoint::Tcp(a) => {
                TcpStream::connect_timeout(a, Duration::from_secs(2)).and_then(|mut s| {
                    s.set_read_timeout(timeout)?;
                    s.write_all(req.as_bytes())?;
                    s.read_to_string(&mut raw)
                })
            }
            Endpoint::Unix(p) => UnixStream::connect(p).and_then(|mut s| {
                s.set_read_timeout(timeout)?;
                s.write_all(req.as_bytes())?;
                s.read_to_string(&mut raw)
            }),
        };
        if sent.is_err() {
            return (0, String::new());
        }
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, body.to_owned())
    }

    /// GET a JSON document (panics on a non-200 answer).
    pub fn json(&self, path: &str) -> Value {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "GET {path}: {body}\n{}", self.log());
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// `/v1/failures?since=5m&<query>`, polled (bounded by `limit`) until the alerts' counts
    /// add up to at least `count`; the last answer.
    pub fn failures_counting(&self, query: &str, count: u64, limit: Duration) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let alerts = self
                .json(&format!("/v1/failures?since=5m&{query}"))
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total: u64 = alerts
                .iter()
                .map(|a| a["count"].as_u64().unwrap_or(0))
                .sum();
            if total >= count || t0.elapsed() >= limit {
                return alerts;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, bounded wait; returns the exit status and the whole log.
    pub fn stop(mut self) -> (Option<std::process::ExitStatus>, String) {
        self.signal(libc::SIGTERM);
        let status = wait_exit(&mut self.child, Duration::from_secs(30));
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.log())
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `tlsmon run` with its own configuration, database and endpoint.
pub struct Daemon {
    svc: Service,
    pub dir: TempDir,
}

impl Deref for Daemon {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.svc
    }
}

impl Daemon {
    /// The config file every daemon of a test uses: its database and endpoint, plus `extra`.
    /// A unix endpoint is the status socket (every route; TCP on an ephemeral loopback
    /// port for metrics and health); a TCP one is the only listener.
    pub fn config_text(dir: &TempDir, endpoint: &Endpoint, extra: &str) -> String {
        let status = match endpoint {
            Endpoint::Unix(p) => format!("listen = \"127.0.0.1:0\"\nsocket = \"{}\"", p.display()),
            Endpoint::Tcp(a) => format!("listen = \"{a}\"\nsocket = \"\""),
        };
        Self::config_with_status(dir, &status, extra)
    }

    fn config_with_status(dir: &TempDir, status: &str, extra: &str) -> String {
        format!(
            "[store]\npath = \"{}\"\n\n[status]\n{status}\n\n{extra}\n",
            dir.path().join("db/tlsmon.db").display()
        )
    }

    /// Starts the daemon under test with its socket in its directory (the endpoint) and
    /// `status` added to its `[status]` section (a `listen`, a `token_file`).
    pub fn start_with_status(status: &str) -> Daemon {
        let dir = TempDir::new("daemon");
        let endpoint = Self::socket_in(&dir);
        let Endpoint::Unix(sock) = &endpoint else {
            unreachable!("socket_in is a unix endpoint")
        };
        let text = Self::config_with_status(
            &dir,
            &format!("socket = \"{}\"\n{status}", sock.display()),
            "",
        );
        std::fs::write(dir.path().join("tlsmon.toml"), text).expect("write config");
        Self::launch(&tlsmon_bin(), dir, endpoint, None, &[])
    }

    /// A daemon's status socket in its directory.
    fn socket_in(dir: &TempDir) -> Endpoint {
        Endpoint::Unix(dir.path().join("status.sock"))
    }

    /// Starts the daemon under test; returns once `/readyz` answers 200 (bounded).
    pub fn start(extra: &str) -> Daemon {
        Self::start_bin(&tlsmon_bin(), extra)
    }

    /// Starts `bin run` (the binary under test, or one a package installed).
    pub fn start_bin(bin: &Path, extra: &str) -> Daemon {
        let dir = TempDir::new("daemon");
        let endpoint = Self::socket_in(&dir);
        Self::write_and_launch(bin, dir, endpoint, extra, None, &[])
    }

    /// Starts the daemon under test after `prepare` ran on its directory (a file system
    /// mounted where its database goes, `db/`).
    pub fn start_after(extra: &str, prepare: impl FnOnce(&Path)) -> Daemon {
        let dir = TempDir::new("daemon");
        prepare(dir.path());
        let endpoint = Self::socket_in(&dir);
        Self::write_and_launch(&tlsmon_bin(), dir, endpoint, extra, None, &[])
    }

    /// Starts the daemon under test with extra environment variables.
    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = TempDir::new("daemon");
        let endpoint = Self::socket_in(&dir);
        Self::write_and_launch(&tlsmon_bin(), dir, endpoint, extra, None, env)
    }

    /// Starts the daemon inside network namespace `netns`.
    pub fn start_in(netns: &str, extra: &str) -> Daemon {
        let dir = TempDir::new("daemon");
        let endpoint = Self::socket_in(&dir);
        Self::write_and_launch(&tlsmon_bin(), dir, endpoint, extra, Some(netns), &[])
    }

    fn write_and_launch(
        bin: &Path,
        dir: TempDir,
        endpoint: Endpoint,
        extra: &str,
        netns: Option<&str>,
        env: &[(&str, &str)],
    ) -> Daemon {
        let cfg = dir.path().join("tlsmon.toml");
        std::fs::write(&cfg, Self::config_text(&dir, &endpoint, extra)).expect("write config");
        Self::launch(bin, dir, endpoint, netns, env)
    }

    /// SIGKILL (no flush, no goodbye); returns the directory with its config and database.
    pub fn kill(self) -> (TempDir, Endpoint) {
        let Daemon { mut svc, dir } = self;
        svc.kill();
        (dir, svc.endpoint.clone())
    }

    /// Starts the daemon under test again on a directory a killed one left.
    pub fn restart(dir: TempDir, endpoint: Endpoint) -> Daemon {
        Self::launch(&tlsmon_bin(), dir, endpoint, None, &[])
    }

    /// Starts `wrapper... <daemon under test> run --config ...`: e.g. `setpriv` with the
    /// user and capabilities the systemd unit gives it; its directory belongs to `owner`
    /// (uid, gid), as a unit's StateDirectory= would.
    pub fn start_wrapped(owner: (u32, u32), wrapper: &[&str], extra: &str) -> Daemon {
        let dir = TempDir::new("daemon");
        std::os::unix::fs::chown(dir.path(), Some(owner.0), Some(owner.1)).expect("chown");
        let endpoint = Self::socket_in(&dir);
        let cfg = dir.path().join("tlsmon.toml");
        std::fs::write(&cfg, Self::config_text(&dir, &endpoint, extra)).expect("write config");
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..])
            .arg(tlsmon_bin())
            .arg("run")
            .arg("--config")
            .arg(&cfg);
        Daemon {
            svc: Service::launch(cmd, endpoint),
            dir,
        }
    }

    fn launch(
        bin: &Path,
        dir: TempDir,
        endpoint: Endpoint,
        netns: Option<&str>,
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut cmd = command_in(netns, bin);
        cmd.envs(env.iter().copied())
            .arg("run")
            .arg("--config")
            .arg(dir.path().join("tlsmon.toml"));
        Daemon {
            svc: Service::launch(cmd, endpoint),
            dir,
        }
    }

    /// `tlsmon status` against this daemon's endpoint (bounded): (success, its output).
    pub fn status_table(&self) -> (bool, String) {
        crate::run_bounded(
            Command::new(tlsmon_bin())
                .args(["status", "--endpoint"])
                .arg(self.endpoint.to_string()),
            Duration::from_secs(10),
        )
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tlsmon.toml")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("db/tlsmon.db")
    }

    /// Polls `/v1/failures?{query}` (bounded) until `pred` holds for one alert; returns it.
    pub fn wait_failure(
        &self,
        query: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            let v = self.json(&format!("/v1/failures?{query}"));
            if let Some(hit) = v.as_array().into_iter().flatten().find(|a| pred(a)) {
                return Some(hit.clone());
            }
            thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// The event_ids of every alert in its database (read directly: no endpoint limit).
    pub fn stored_event_ids(&self) -> std::collections::BTreeSet<String> {
        let Ok(db) = rusqlite::Connection::open(self.db_path()) else {
            return Default::default();
        };
        let _ = db.busy_timeout(Duration::from_secs(5));
        let Ok(mut st) = db.prepare("SELECT event_id FROM alerts") else {
            return Default::default();
        };
        st.query_map([], |r| r.get::<_, String>(0))
            .map(|rows| rows.filter_map(Result::ok).collect())
            .unwrap_or_default()
    }

    /// SIGTERM, bounded wait; returns the exit status and the whole log.
    pub fn stop(self) -> (Option<std::process::ExitStatus>, String) {
        self.svc.stop()
    }
}

/// A running `tlsmon aggregate` (endpoint on a unix socket in its directory).
pub struct Aggregator {
    svc: Service,
    pub dir: TempDir,
}

impl Deref for Aggregator {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.svc
    }
}

impl Aggregator {
    /// `store`: `sqlite:/path` or a PostgreSQL URL; `None` puts SQLite in its directory.
    pub fn start(
        netns: Option<&str>,
        broker: &str,
        store: Option<&str>,
        group: &str,
        client_id: &str,
    ) -> Aggregator {
        Self::start_with(netns, broker, store, group, client_id, "")
    }

    /// [`Aggregator::start`] with more `[aggregate]` settings.
    pub fn start_with(
        netns: Option<&str>,
        broker: &str,
        store: Option<&str>,
        group: &str,
        client_id: &str,
        extra: &str,
    ) -> Aggregator {
        let dir = TempDir::new("aggregate");
        let endpoint = Endpoint::Unix(dir.path().join("fleet.sock"));
        Self::start_at(dir, netns, broker, store, group, client_id, extra, endpoint)
    }

    /// An aggregator whose endpoint is a loopback TCP port (what a browser can open), with
    /// its SQLite store in its directory.
    pub fn start_tcp(broker: &str, client_id: &str) -> Aggregator {
        let dir = TempDir::new("aggregate");
        let endpoint = Endpoint::free_tcp();
        Self::start_at(dir, None, broker, None, "fleet", client_id, "", endpoint)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_at(
        dir: TempDir,
        netns: Option<&str>,
        broker: &str,
        store: Option<&str>,
        group: &str,
        client_id: &str,
        extra: &str,
        endpoint: Endpoint,
    ) -> Aggregator {
        let store = store.map_or_else(
            || format!("sqlite:{}", dir.path().join("fleet.db").display()),
            str::to_owned,
        );
        let cfg = dir.path().join("aggregate.toml");
        std::fs::write(
            &cfg,
            format!(
                "[mqtt]\nbroker = \"{broker}\"\nkeepalive_secs = 5\n\n[aggregate]\nstore = \"{store}\"\n\
                 group = \"{group}\"\nclient_id = \"{client_id}\"\nlisten = \"{endpoint}\"\n{extra}\n"
            ),
        )
        .expect("write config");
        Self::launch(dir, netns, endpoint)
    }

    /// SIGKILL; returns its directory (configuration, SQLite store).
    pub fn kill(self) -> TempDir {
        let Aggregator { mut svc, dir } = self;
        svc.kill();
        dir
    }

    /// Starts an aggregator on the directory (configuration) of a killed one.
    pub fn restart(dir: TempDir, netns: Option<&str>) -> Aggregator {
        let endpoint = Endpoint::Unix(dir.path().join("fleet.sock"));
        Self::launch(dir, netns, endpoint)
    }

    fn launch(dir: TempDir, netns: Option<&str>, endpoint: Endpoint) -> Aggregator {
        let mut cmd = command_in(netns, tlsmon_bin());
        cmd.arg("aggregate")
            .arg("--config")
            .arg(dir.path().join("aggregate.toml"));
        Aggregator {
            svc: Service::launch(cmd, endpoint),
            dir,
        }
    }

    /// `/v1/fleet` over the last hour.
    pub fn fleet(&self) -> Value {
        self.json("/v1/fleet?since=1h&top=50")
    }

    /// `tlsmon fleet status` against this aggregator: (success, stdout + stderr).
    pub fn fleet_status(&self, extra: &[&str]) -> (bool, String) {
        crate::run_bounded(
            Command::new(tlsmon_bin())
                .args(["fleet", "status", "--since", "1h", "--endpoint"])
                .arg(self.endpoint.to_string())
                .args(extra),
            Duration::from_secs(20),
        )
    }

    /// SIGTERM, bounded wait; returns the exit status and the whole log.
    pub fn stop(self) -> (Option<std::process::ExitStatus>, String) {
        self.svc.stop()
    }
}
