//! Helpers for the privileged end-to-end tests: run the real `tlsmon` (path in `TLSMON_BIN`,
//! set by `cargo xtask test`) next to real programs on loopback or in network namespaces we
//! create. Every wait is bounded in time and count; every child is killed on drop.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

mod service;
pub use service::{Aggregator, Daemon, Endpoint, Service};
pub mod fleet;
pub mod load;

/// The tlsmon binary under test.
pub fn tlsmon_bin() -> PathBuf {
    PathBuf::from(std::env::var("TLSMON_BIN").expect(
        "TLSMON_BIN is not set: the end-to-end tests run through `sudo ./x test` (cargo xtask test)",
    ))
}

/// A child process, with its whole process group (nginx workers, `ip netns exec` children),
/// killed (SIGKILL) when dropped.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group our child leads.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a program in its own process group, in the background, output discarded.
pub fn spawn(cmd: &mut Command) -> Bg {
    use std::os::unix::process::CommandExt;
    let child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    Bg(child)
}

/// `program` run so that its stderr joins its stdout (what [`run_bounded`] returns): for
/// the sentence a refused command prints. Add the arguments to the returned command.
pub fn with_stderr(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exec \"$@\" 2>&1", "sh"]).arg(program);
    cmd
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind")
}

/// `ip netns exec NETNS program`, or the program alone.
pub fn command_in(netns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Waits (at most `limit`) until something accepts TCP connections at `addr` ("ip:port")
/// inside network namespace `netns` (probed from there with bash's /dev/tcp).
pub fn wait_listening_in(netns: &str, addr: &str, limit: Duration) {
    let probe = format!("exec 3<>/dev/tcp/{}", addr.replacen(':', "/", 1));
    let t0 = Instant::now();
    while !run_bounded(
        command_in(Some(netns), "bash").args(["-c", &probe]),
        Duration::from_secs(5),
    )
    .0
    {
        assert!(t0.elapsed() < limit, "nothing listens on {addr} in {netns}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// `curl URL` from source address `from` (inside `netns` when given), bounded; true when
/// it succeeded.
pub fn curl_from(netns: Option<&str>, from: &str, url: &str) -> bool {
    run_bounded(
        command_in(netns, "curl").args([
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "--interface",
            from,
            url,
        ]),
        Duration::from_secs(10),
    )
    .0
}

/// curl to the self-signed server on loopback `port` as `https://{name}:{port}/` (the SNI
/// `name`, resolved to 127.0.0.1); returns success.
pub fn curl_named(name: &str, port: u16) -> bool {
    run_bounded(
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "5", "--resolve"])
            .arg(format!("{name}:{port}:127.0.0.1"))
            .arg(format!("https://{name}:{port}/")),
        Duration::from_secs(10),
    )
    .0
}

/// Waits (at most `limit`) until something accepts TCP connections at `addr`.
pub fn wait_listening(addr: SocketAddr, limit: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {addr} after {limit:?}");
}

/// Waits at most `limit` for `child` to exit; `None` if it is still running.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if t0.elapsed() > limit {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion (bounded by `timeout`); returns (exit success, stdout).
/// Stdout is read while the command runs, so a large output cannot block it.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    match wait_exit(&mut child, timeout) {
        Some(status) => (status.success(), reader.join().unwrap_or_default()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            (false, String::new())
        }
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        // Unique within the process (a counter) and across processes (the pid).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "tlsmon-e2e-{tag}-{}-{n}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` (cert.pem, key.pem) in a scratch directory,
/// valid for two days (tlsmon warns that it expires soon when its handshakes complete).
pub fn self_signed_cert() -> TempDir {
    self_signed_cert_for_days(2)
}

/// A self-signed certificate for `localhost` valid for `days` days.
pub fn self_signed_cert_for_days(days: u32) -> TempDir {
    let dir = TempDir::new("pki");
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            &days.to_string(),
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "openssl req failed");
    dir
}

/// `openssl s_server` on `addr` with extra arguments; waits until it listens.
pub fn openssl_server(pki: &TempDir, addr: SocketAddr, extra: &[&str]) -> Bg {
    let server = spawn(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-accept", &addr.to_string()])
            .arg("-cert")
            .arg(pki.path().join("cert.pem"))
            .arg("-key")
            .arg(pki.path().join("key.pem"))
            .args(extra),
    );
    wait_listening(addr, Duration::from_secs(10));
    server
}

/// `openssl s_server -tls1_2` with a fresh self-signed `localhost` certificate on a free
/// loopback port: (the certificate's directory, the server, its port). Keep the first two
/// alive for as long as the server is needed.
pub fn tls12_self_signed_server() -> (TempDir, Bg, u16) {
    let pki = self_signed_cert();
    let port = free_port();
    let server = openssl_server(
        &pki,
        format!("127.0.0.1:{port}").parse().expect("addr"),
        &["-tls1_2"],
    );
    (pki, server, port)
}

/// nginx serving TLS on 127.0.0.1:`port` with the certificate of `pki` and extra `server`
/// directives (`ssl_protocols TLSv1.3;`); waits until it listens.
pub fn nginx_tls(pki: &TempDir, port: u16, directives: &str) -> Bg {
    let dir = pki.path();
    let conf = dir.join(format!("nginx-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2;\npid {d}/nginx-{port}.pid;\nerror_log {d}/error-{port}.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; server {{ listen 127.0.0.1:{port} ssl;\n\
             ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; {directives}\n\
             location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = dir.display()
        ),
    )
    .expect("write nginx.conf");
    let nginx = spawn(
        Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"]),
    );
    wait_listening(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        Duration::from_secs(10),
    );
    nginx
}

/// Go's own HTTPS server (net/http), built from tests/fixtures/go_tls_server.go into `dir`.
pub fn go_tls_server(dir: &TempDir) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/go_tls_server.go");
    let bin = dir.path().join("go_tls_server");
    let (ok, out) = run_bounded(
        Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .env("GOCACHE", dir.path().join("gocache"))
            .env("HOME", dir.path()),
        Duration::from_secs(120),
    );
    assert!(ok, "go build: {out}");
    bin
}

/// `openssl s_client` to `addr` with extra arguments, stdin closed; returns success.
pub fn openssl_client(addr: SocketAddr, extra: &[&str]) -> bool {
    run_bounded(
        Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string()])
            .args(extra),
        Duration::from_secs(10),
    )
    .0
}

/// A running `tlsmon trace --json --with-bytes`.
pub struct Tracer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// What a finished trace printed.
pub struct TraceOutput {
    /// Connection records (one JSON object each).
    pub records: Vec<Value>,
    /// `capture_loss` records.
    pub losses: Vec<Value>,
    /// The final kernel counters line.
    pub counters: Value,
    pub stderr: String,
}

impl Tracer {
    /// Starts tracing with extra arguments; returns once the programs are attached.
    pub fn start(extra: &[&str]) -> Tracer {
        let mut child = Command::new(tlsmon_bin())
            .args(["trace", "--json", "--with-bytes", "--idle-secs", "3"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tlsmon trace");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let l = lines.clone();
        let r1 = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().expect("lock").push(line);
            }
        });
        let e = stderr.clone();
        let r2 = thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("capturing (") {
                    let _ = ready_tx.send(());
                }
                e.lock().expect("lock").push(line);
            }
        });
        let ready = ready_rx.recv_timeout(Duration::from_secs(60)).is_ok();
        let mut t = Tracer {
            child,
            lines,
            stderr,
            readers: vec![r1, r2],
        };
        if !ready {
            let out = t.stop_inner();
            panic!("tlsmon trace did not attach within 60 s:\n{}", out.stderr);
        }
        t
    }

    /// Connection records printed so far.
    pub fn records_so_far(&self) -> Vec<Value> {
        parse_records(&self.lines.lock().expect("lock"))
    }

    /// Waits (bounded) until `pred` matches `count` records printed so far.
    pub fn wait_for(&self, count: usize, limit: Duration, pred: impl Fn(&Value) -> bool) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.records_so_far().iter().filter(|r| pred(r)).count() >= count {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// SIGINT, then collect everything it printed (flows still open are printed at exit).
    pub fn stop(mut self) -> TraceOutput {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> TraceOutput {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        wait_exit(&mut self.child, Duration::from_secs(20));
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let lines = self.lines.lock().expect("lock").clone();
        let stderr = self.stderr.lock().expect("lock").join("\n");
        let counters = stderr
            .lines()
            .find_map(|l| l.strip_prefix("tlsmon: counters "))
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or(Value::Null);
        let all: Vec<Value> = lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        TraceOutput {
            records: parse_records(&lines),
            losses: all
                .into_iter()
                .filter(|v| v["kind"] == "capture_loss")
                .collect(),
            counters,
            stderr,
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_records(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("cookie").is_some())
        .collect()
}

impl TraceOutput {
    /// Records whose local or peer address is `addr` (the server's address), by role.
    pub fn for_server(&self, addr: &str, role: &str) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["role"] == role)
            .filter(|r| match role {
                "server" => r["local"] == addr,
                _ => r["peer"] == addr,
            })
            .collect()
    }

    /// Exactly one record for the server address and role, or a panic that shows them all.
    pub fn one(&self, addr: &str, role: &str) -> &Value {
        let found = self.for_server(addr, role);
        assert_eq!(
            found.len(),
            1,
            "expected one {role} record for {addr}; trace printed:\n{}\nstderr:\n{}",
            self.records
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            self.stderr
        );
        found[0]
    }
}

/// Both directions of one TCP connection in a pcap, as tshark reassembles it
/// (`-z follow,tcp,raw,CLIENT,SERVER`): (bytes the client sent, bytes the server sent).
pub fn tshark_follow(pcap: &Path, client: &str, server: &str) -> (Vec<u8>, Vec<u8>) {
    let (ok, out) = run_bounded(
        Command::new("tshark").arg("-r").arg(pcap).args([
            "-q",
            "-z",
            &format!("follow,tcp,raw,{client},{server}"),
        ]),
        Duration::from_secs(60),
    );
    assert!(ok, "tshark failed on {}", pcap.display());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut in_body = false;
    for line in out.lines() {
        if line.starts_with("Node 1:") {
            in_body = true;
            continue;
        }
        if !in_body || line.starts_with("====") || line.is_empty() {
            continue;
        }
        // Lines of the responder are indented with a tab.
        let (target, hex) = match line.strip_prefix('\t') {
            Some(h) => (&mut b, h),
            None => (&mut a, line),
        };
        target.extend(unhex(hex.trim()));
    }
    (a, b)
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// `tcpdump` writing `port` traffic on loopback to `file`; waits until it is capturing.
pub fn tcpdump(file: &Path, port: u16) -> Bg {
    let mut child = Command::new("tcpdump")
        // -Z root: Debian's tcpdump otherwise drops to user tcpdump, who cannot write here.
        .args([
            "-Z",
            "root",
            "--immediate-mode",
            "-i",
            "lo",
            "-U",
            "-s",
            "0",
            "-w",
        ])
        .arg(file)
        .args(["tcp", "port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(20)).is_ok(),
        "tcpdump did not start"
    );
    Bg(child)
}

/// Stops tcpdump cleanly (SIGINT flushes the file).
pub fn stop_tcpdump(mut bg: Bg) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(bg.0.id() as i32, libc::SIGINT) };
    wait_exit(&mut bg.0, Duration::from_secs(10));
}

/// The string value of a JSON field, or "".
pub fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
}

/// A real mosquitto on a free loopback port with its own configuration (persistence in a
/// scratch directory, so a restart keeps durable subscribers' queues).
pub struct Mosquitto {
    pub port: u16,
    pub dir: TempDir,
    proc: Option<Child>,
    netns: Option<String>,
}

impl Mosquitto {
    /// Starts a broker on loopback; `extra` is appended to its configuration.
    pub fn start(extra: &str) -> Mosquitto {
        Self::start_on("127.0.0.1", None, extra)
    }

    /// Starts a broker inside network namespace `netns`, listening on all its addresses.
    pub fn start_in(netns: &str, extra: &str) -> Mosquitto {
        Self::start_on("0.0.0.0", Some(netns), extra)
    }

    fn start_on(addr: &str, netns: Option<&str>, extra: &str) -> Mosquitto {
        let dir = TempDir::new("mosquitto");
        let port = free_port();
        // No limit on messages queued for a durable subscriber (the default 1000 would drop
        // a backlog published while a subscriber reconnects).
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {port} {addr}\npersistence true\npersistence_location {}/\n\
                 log_dest stderr\nuser root\nmax_queued_messages 0\n{extra}\n",
                dir.path().display()
            ),
        )
        .expect("mosquitto.conf");
        let mut m = Mosquitto {
            port,
            dir,
            proc: None,
            netns: netns.map(str::to_owned),
        };
        m.up();
        m
    }

    /// (Re)starts the broker process; waits until it accepts connections.
    pub fn up(&mut self) {
        let child = command_in(self.netns.as_deref(), "mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt install mosquitto)");
        self.proc = Some(child);
        match &self.netns {
            None => wait_listening(
                format!("127.0.0.1:{}", self.port).parse().expect("addr"),
                Duration::from_secs(10),
            ),
            Some(ns) => wait_listening_in(
                ns,
                &format!("127.0.0.1:{}", self.port),
                Duration::from_secs(10),
            ),
        }
    }

    /// Stops the broker (SIGTERM: it saves its persistent state), bounded.
    pub fn down(&mut self) {
        if let Some(mut c) = self.proc.take() {
            // SAFETY: kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if wait_exit(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// SIGSTOP: the broker keeps its connections open and answers nothing (no PUBACK, no
    /// PINGRESP) until [`Mosquitto::resume`].
    pub fn pause(&self) {
        if let Some(c) = &self.proc {
            // SAFETY: kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
        }
    }

    /// SIGCONT after [`Mosquitto::pause`].
    pub fn resume(&self) {
        if let Some(c) = &self.proc {
            // SAFETY: kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
    }

    /// SIGHUP: the broker re-reads its password file.
    pub fn reload(&self) {
        if let Some(c) = &self.proc {
            // SAFETY: kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGHUP) };
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.proc.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A real `mosquitto_sub` (QoS 1, durable session with a fixed client id, so messages
/// published while it is away are kept for it) collecting `topic payload` lines.
pub struct Subscriber {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Subscriber {
    pub fn start(port: u16, topic: &str, extra: &[&str]) -> Subscriber {
        let id = format!("e2e-{}-{}", std::process::id(), free_port());
        // stdbuf: line-buffered, so the debug line that says it subscribed arrives at once.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-q",
                "1",
                "-c",
                "-i",
                &id,
            ])
            .args(["-t", topic, "-v", "-d"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub (apt install mosquitto-clients)");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let out = child.stdout.take().expect("stdout");
        let reader = thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().expect("lock").push(line);
            }
        });
        let s = Subscriber {
            child,
            lines,
            reader: Some(reader),
        };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if s.raw().iter().any(|l| l.contains("received SUBACK")) {
                return s;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("mosquitto_sub did not subscribe:\n{}", s.raw().join("\n"));
    }

    /// mosquitto_sub's own debug lines (connects, acknowledgements).
    pub fn debug_lines(&self) -> Vec<String> {
        self.raw()
            .into_iter()
            .filter(|l| l.starts_with("Client"))
            .collect()
    }

    fn raw(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }

    /// How many messages arrived so far (cheap: no parsing).
    pub fn count(&self) -> usize {
        let lines = self.lines.lock().expect("lock");
        // `topic payload` lines; mosquitto_sub's own lines ("Client ...", errors) have no '/'
        // before the first space.
        lines
            .iter()
            .filter(|l| l.split_once(' ').is_some_and(|(t, _)| t.contains('/')))
            .count()
    }

    /// Received messages: (topic, JSON payload); debug lines are left out.
    pub fn messages(&self) -> Vec<(String, Value)> {
        self.raw()
            .iter()
            .filter_map(|l| {
                let (topic, payload) = l.split_once(' ')?;
                if topic.starts_with("Client") {
                    return None;
                }
                Some((topic.to_owned(), serde_json::from_str(payload).ok()?))
            })
            .collect()
    }

    /// Waits (bounded) until `pred` holds for the messages received so far.
    pub fn wait(&self, limit: Duration, pred: impl Fn(&[(String, Value)]) -> bool) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if pred(&self.messages()) {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The shipped fail2ban filter (`packaging/fail2ban/filter.d/tlsmon.conf`) run by the real
/// `fail2ban-regex` over `log_file`: the addresses it would ban.
pub fn fail2ban_ips(log_file: &Path) -> std::collections::BTreeSet<String> {
    let filter = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/fail2ban/filter.d/tlsmon.conf")
        .canonicalize()
        .expect("filter path");
    let (ok, ips) = run_bounded(
        Command::new("fail2ban-regex")
            .args(["-o", "ip"])
            .arg(log_file)
            .arg(&filter),
        Duration::from_secs(60),
    );
    assert!(ok, "fail2ban-regex failed: {ips}");
    ips.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A CA (`ca.pem`), a leaf it signed for `localhost` and 127.0.0.1 (`cert.pem`, `key.pem`,
/// `chain.pem` = leaf then CA) and another CA the leaf does not chain to (`other-ca.pem`), in
/// a scratch directory readable by every user (servers that drop privileges read them).
pub fn ca_signed_pki(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    let script = "set -e; cd \"$1\"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=tlsmon-test-ca \
          -keyout ca.key -out ca.pem
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=tlsmon-other-ca \
          -keyout other-ca.key -out other-ca.pem
        openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out leaf.csr
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > leaf.ext
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
          -extfile leaf.ext -out cert.pem
        cat cert.pem ca.pem > chain.pem
        chmod 0755 . && chmod 0644 *.pem";
    let (ok, out) = run_bounded(
        Command::new("sh")
            .args(["-c", &format!("({script}) 2>&1"), "sh"])
            .arg(dir.path()),
        Duration::from_secs(60),
    );
    assert!(ok, "openssl: {out}");
    dir
}
