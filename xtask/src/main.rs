//! Project tasks: `cargo xtask build | run | test | deb | bench | fuzz | fixtures | layout`.
//!
//! `./x` (the README's entry point) installs toolchains and test programs first, then calls
//! this. Every step prints what it runs; the first failing step ends the task non-zero.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

mod bench_analyze;
mod bench_capture;
mod bench_daemon;
mod bench_mqtt;
mod bpf_stats;
mod layout;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build `tlsmon` with its eBPF programs (release).
    Build,
    /// Build, then run `tlsmon run` (root) with the built-in default configuration.
    Run {
        /// Arguments passed to `tlsmon run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The whole suite: format and lint checks, unit tests, then the privileged end-to-end
    /// tests with the real eBPF programs (root).
    Test {
        /// Only the unprivileged part (no root, no eBPF).
        #[arg(long)]
        unit_only: bool,
        /// Only end-to-end tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Build the Debian package (cargo-deb): target/debian/tlsmon_*.deb.
    Deb,
    /// Benchmarks; reports ratios measured side by side in one run.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
    /// Run every fuzz target of fuzz/ for a bounded time each (cargo fuzz, nightly).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        secs: u32,
    },
    /// The top-level modules of monitor/src in layers, from their `crate::` imports, and
    /// any circle among them (the test suite fails on one).
    Layout,
    /// Regenerate the handshake fixtures (root: tcpdump): real client/server pairs on
    /// loopback with a fresh PKI, recorded into monitor/tests/fixtures/handshakes.
    Fixtures {
        /// Only scenarios whose name contains one of these.
        only: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// `tlsmon analyze` against tshark on a 100k-handshake capture built from the fixtures.
    Analyze {
        /// Interleaved rounds (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The MQTT publishing path (outbox + publisher) against a real mosquitto: sustained
    /// events/s end to end, and the time to drain a backlog after a broker outage.
    Mqtt {
        /// Target events per second.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Seconds of sustained load.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Events queued while the broker is down.
        #[arg(long, default_value_t = 100_000)]
        backlog: u64,
    },
    /// What attaching tlsmon costs the host (root): wrk against nginx (keep-alive and a
    /// connection per request), dd bs=64, getpid and pipe loops, TLS handshakes; each
    /// without and with the daemon, interleaved rounds, medians and ratios.
    Capture {
        /// Rounds (each runs every workload without and with tlsmon).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per workload and side.
        #[arg(long, default_value_t = 5)]
        secs: u64,
        /// Only the workloads with these letters (`--only bd`: (b) and (d)); all by default.
        #[arg(long, default_value = "abcd")]
        only: String,
    },
    /// The daemon (root, eBPF attached) under a storm of failing handshakes on loopback.
    Daemon {
        /// Target connections per second.
        #[arg(long, default_value_t = 5000)]
        rate: u32,
        /// Storm duration in seconds.
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Test counts summed over every `test result:` line cargo printed.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        let count = |word: &str| -> u64 {
            rest.split([';', '.'])
                .find_map(|part| part.trim().strip_suffix(word)?.trim().parse().ok())
                .unwrap_or(0)
        };
        self.passed += count(" passed");
        self.failed += count(" failed");
    }
}

/// Runs a `cargo test`, echoing its output and counting its results.
fn run_tests(cmd: &mut Command, tally: &mut Tally) -> Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            tally.add_line(&line);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!(
            "xtask: {} passed, {} failed",
            tally.passed,
            tally.failed.max(1)
        );
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Builds the kernel programs (`monitor-ebpf`) with the pinned nightly for the BPF target;
/// returns the object's path. Run here rather than inside a build script so cargo's
/// progress, warnings and errors print as they are.
fn build_ebpf() -> Result<PathBuf> {
    let target_dir = root().join("target/ebpf");
    // What aya's build helper passes: the host architecture for aya-ebpf's per-arch code,
    // debug info and BTF for the loader (CO-RE relocations). And BPF v3 (kernel >= 5.12;
    // rustc hands it to bpf-linker too): the owner table's fully ordered atomics need it.
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".into(),
        "-Ctarget-cpu=v3".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    run(Command::new("rustup")
        .args([
            "run",
            NIGHTLY,
            "cargo",
            "build",
            "--package",
            "monitor-ebpf",
        ])
        .args(["--bins", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        // The stable toolchain's cargo/rustc set these for us; the nightly must pick its own.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO"))?;
    Ok(target_dir.join("bpfel-unknown-none/release/monitor"))
}

/// `cargo build` of the userspace with the kernel programs embedded.
fn with_ebpf(cmd: &mut Command) -> Result<&mut Command> {
    Ok(cmd.env("TLSMON_EBPF_OBJECT", build_ebpf()?))
}

/// Builds the daemon with the eBPF object embedded; returns its path.
fn build() -> Result<PathBuf> {
    run(with_ebpf(cargo().args([
        "build",
        "--release",
        "-p",
        "monitor",
    ]))?)?;
    Ok(root().join("target/release/tlsmon"))
}

/// Builds the .deb: the release binary with its eBPF object, the man page generated from
/// the command line, then `cargo deb --no-build`. Returns the package's path.
fn deb() -> Result<PathBuf> {
    let bin = build()?;
    let man = Command::new(&bin)
        .arg("man")
        .output()
        .context("tlsmon man")?;
    if !man.status.success() {
        bail!(
            "tlsmon man failed: {}",
            String::from_utf8_lossy(&man.stderr)
        );
    }
    let dir = root().join("target/release/man");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tlsmon.8"), &man.stdout)?;
    // -n: no name or timestamp in the header, so the package is reproducible.
    run(Command::new("gzip").args(["-9nf", "target/release/man/tlsmon.8"]))?;
    let out = cargo()
        .args(["deb", "-p", "monitor", "--no-build"])
        .current_dir(root())
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => bail!(
            "cargo deb failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => bail!("cannot run cargo deb ({e}): `./x deb` installs cargo-deb"),
    };
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!("xtask: built {path}");
    Ok(PathBuf::from(path))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn test(unit_only: bool, filter: Option<String>) -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    let mut tally = Tally::default();
    run_tests(cargo().args(["test"]), &mut tally)?;
    if unit_only {
        println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
        return Ok(());
    }
    if !is_root() {
        bail!("the end-to-end tests load eBPF programs and need root: run `sudo ./x test`");
    }
    // The package is built (and with it the release binary) so the tests can install it.
    let deb = deb()?;
    let bin = root().join("target/release/tlsmon");
    let mut e2e = cargo();
    e2e.args(["test", "--release", "-p", "tlsmon-e2e", "--tests", "--"]);
    if let Some(f) = filter {
        e2e.arg(f);
    }
    e2e.args(["--include-ignored", "--test-threads=1"])
        .env("TLSMON_BIN", bin)
        .env("TLSMON_DEB", deb);
    run_tests(&mut e2e, &mut tally)?;
    // Every parser keeps being fuzzed: a crash fails the run (and becomes a test).
    fuzz(FUZZ_SECS_IN_TEST)?;
    // The plain closing line: unit and privileged tests together.
    println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
    Ok(())
}

/// The nightly that builds the eBPF crate (with `rust-src`, for `-Z build-std`) also runs
/// the fuzzers (sanitizers need nightly). scripts/setup.sh installs it.
const NIGHTLY: &str = "nightly-2026-10-30";
const FUZZ_TARGETS: [&str; 7] = [
    "record_layer",
    "certificate",
    "connection_splits",
    "renderers",
    "capture_file",
    "config",
    "fleet_message",
];

/// Seconds per fuzz target in `xtask test` (the committed seeds and what earlier runs on
/// this machine found, then new inputs; a fixed seed so a run repeats).
const FUZZ_SECS_IN_TEST: u32 = 10;

fn fuzz(secs: u32) -> Result<()> {
    for target in FUZZ_TARGETS {
        let corpus = root().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        // New inputs go to the first folder; the committed seeds (fuzz/seeds/make.py) are
        // read only.
        let seeds = root().join("fuzz/seeds").join(target);
        // The rustup proxy (not $CARGO, which is the stable binary) so the nightly is used.
        run(Command::new("cargo")
            .args(["fuzz", "run", "--fuzz-dir", "fuzz", target])
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg("-seed=1")
            // Bounded memory and input: a handshake fits in 64 KiB.
            .args(["-rss_limit_mb=1024", "-max_len=65536"])
            .env("RUSTUP_TOOLCHAIN", NIGHTLY))?;
    }
    println!(
        "xtask: fuzzed {} targets for {secs} s each, no crash",
        FUZZ_TARGETS.len()
    );
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Build => build().map(drop),
        Cmd::Deb => deb().map(drop),
        Cmd::Run { args } => {
            let bin = build()?;
            run(Command::new(bin).arg("run").args(args))
        }
        Cmd::Test { unit_only, filter } => test(unit_only, filter),
        Cmd::Fuzz { secs } => fuzz(secs),
        Cmd::Layout => {
            print!("{}", layout::report(&root())?);
            Ok(())
        }
        Cmd::Bench {
            what: Bench::Analyze { rounds },
        } => {
            run(cargo().args(["build", "--release", "-p", "monitor"]))?;
            let report = bench_analyze::run(
                &root(),
                &root().join("target/release/tlsmon"),
                rounds.max(1),
            )?;
            println!("xtask: {report}");
            Ok(())
        }
        Cmd::Bench {
            what: Bench::Capture { rounds, secs, only },
        } => {
            if !is_root() {
                bail!("the capture bench loads eBPF programs and needs root");
            }
            let report = bench_capture::run(&build()?, rounds.max(1), secs.max(1), &only)?;
            println!("xtask: {report}");
            Ok(())
        }
        Cmd::Bench {
            what: Bench::Daemon { rate, secs },
        } => {
            if !is_root() {
                bail!("the daemon bench loads eBPF programs and needs root");
            }
            let report = bench_daemon::run(&build()?, rate.max(1), secs.max(1))?;
            println!("xtask: {report}");
            Ok(())
        }
        Cmd::Bench {
            what:
                Bench::Mqtt {
                    rate,
                    secs,
                    backlog,
                },
        } => {
            // The same release build of the library as the daemon's (eBPF included).
            run(with_ebpf(cargo().args([
                "build",
                "--release",
                "-p",
                "monitor",
                "--example",
                "mqtt_load",
            ]))?)?;
            let report = bench_mqtt::run(
                &root().join("target/release/examples/mqtt_load"),
                rate.max(1),
                secs.max(1),
                backlog.max(1),
            )?;
            println!("xtask: {report}");
            Ok(())
        }
        Cmd::Fixtures { only } => {
            if !is_root() {
                bail!("recording fixtures runs tcpdump on loopback and needs root");
            }
            run(cargo()
                .args([
                    "run",
                    "--quiet",
                    "-p",
                    "tlsmon-e2e",
                    "--bin",
                    "make_fixtures",
                    "--",
                ])
                .arg(root().join("monitor/tests/fixtures/handshakes"))
                .args(only))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_sums_cargo_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 29 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        t.add_line(
            "test result: FAILED. 8 passed; 2 failed; 10 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 10 tests");
        assert_eq!((t.passed, t.failed), (37, 2));
    }
}
