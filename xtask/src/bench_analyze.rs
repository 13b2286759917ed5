//! `cargo xtask bench analyze`: a large capture built from the committed fixtures (each
//! copy with its own client address, server port rewritten to 443 so both tools decode it
//! as TLS), timed through `tlsmon analyze --json` and through tshark side by side; both
//! must count the same ClientHello SNIs and the same fatal alerts.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};

/// Handshakes in the generated capture.
pub const HANDSHAKES: usize = 100_000;

struct Fixture {
    port: u16,
    frames: Vec<(Duration, Vec<u8>)>,
}

fn load_fixtures(dir: &Path) -> Result<Vec<Fixture>> {
    let mut out = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    for json in names {
        let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
        let port = spec["port"].as_u64().context("port")? as u16;
        let mut reader = PcapReader::new(File::open(json.with_extension("pcap"))?)?;
        let mut frames = Vec::new();
        while let Some(p) = reader.next_packet() {
            let p = p?;
            frames.push((p.timestamp, p.data.into_owned()));
        }
        if let Some(&(t0, _)) = frames.first() {
            for f in &mut frames {
                f.0 -= t0;
            }
        }
        out.push(Fixture { port, frames });
    }
    Ok(out)
}

/// Ethernet + IPv4 + TCP (what tcpdump -i lo writes): client address becomes 10.x.y.z of
/// copy `n`, the fixture's server port becomes 443, the IPv4 header checksum is redone.
fn rewrite(frame: &mut [u8], server_port: u16, n: u32) -> bool {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return false;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    if frame.len() < 14 + ihl + 4 {
        return false;
    }
    let tcp = 14 + ihl;
    let src_port = u16::from_be_bytes([frame[tcp], frame[tcp + 1]]);
    let client_addr = 0x0a00_0000u32 | (n & 0x00ff_ffff);
    let (client_ip_at, server_port_at) = if src_port == server_port {
        (30, tcp)
    } else {
        (26, tcp + 2)
    };
    frame[client_ip_at..client_ip_at + 4].copy_from_slice(&client_addr.to_be_bytes());
    frame[server_port_at..server_port_at + 2].copy_from_slice(&443u16.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let sum: u32 = frame[14..14 + ihl]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    frame[24..26].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    true
}

fn build_capture(fixtures: &[Fixture], out: &Path) -> Result<(usize, u64)> {
    let mut writer = PcapWriter::new(BufWriter::new(File::create(out)?))?;
    let base = Duration::from_secs(1_790_000_000);
    let mut written = 0;
    for n in 0..HANDSHAKES {
        let fx = &fixtures[n % fixtures.len()];
        let start = base + Duration::from_millis(n as u64 * 20);
        for (t, data) in &fx.frames {
            let mut data = data.clone();
            if !rewrite(&mut data, fx.port, n as u32) {
                continue;
            }
            writer.write_packet(&PcapPacket::new(start + *t, data.len() as u32, &data))?;
        }
        written += 1;
    }
    drop(writer);
    Ok((written, std::fs::metadata(out)?.len()))
}

/// SNI -> count, and (alert code) -> count of fatal alerts.
#[derive(Debug, Default, PartialEq, Eq)]
struct Findings {
    snis: BTreeMap<String, u64>,
    fatal_alerts: BTreeMap<u64, u64>,
}

/// Runs a tool with its output into a file: only the tool is timed, not our reading.
fn timed_to_file(cmd: &mut Command, out: &Path) -> Result<Duration> {
    let t0 = Instant::now();
    let status = cmd
        .stdout(File::create(out)?)
        .stderr(Stdio::null())
        .status()?;
    let elapsed = t0.elapsed();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(elapsed)
}

fn run_tlsmon(tlsmon: &Path, capture: &Path) -> Result<(Duration, Findings)> {
    let out = capture.with_extension("tlsmon.jsonl");
    let t = timed_to_file(
        Command::new(tlsmon)
            .args(["analyze", "--json", "--no-progress"])
            .arg(capture),
        &out,
    )?;
    let mut f = Findings::default();
    for line in BufReader::new(File::open(&out)?).lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        if let Some(sni) = v["offered"]["server_name"].as_str() {
            *f.snis.entry(sni.to_string()).or_default() += 1;
        }
        for a in v["readable_alerts"].as_array().into_iter().flatten() {
            if a["level"] == 2 {
                *f.fatal_alerts
                    .entry(a["code"].as_u64().unwrap_or(999))
                    .or_default() += 1;
            }
        }
    }
    Ok((t, f))
}

fn run_tshark(capture: &Path) -> Result<(Duration, Findings)> {
    let out = capture.with_extension("tshark.tsv");
    let mut cmd = Command::new("tshark");
    cmd.args(["-n", "-r"])
        .arg(capture)
        .args([
            "-Y",
            "tls.handshake or tls.alert_message",
            "-T",
            "fields",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=;",
        ])
        .args([
            "-e",
            "tls.handshake.type",
            "-e",
            "tls.handshake.extensions_server_name",
            "-e",
            "tcp.stream",
        ])
        .args([
            "-e",
            "tls.alert_message.level",
            "-e",
            "tls.alert_message.desc",
        ]);
    let t = timed_to_file(&mut cmd, &out)?;
    let mut f = Findings::default();
    // Connections whose ClientHello SNI was counted: a second ClientHello after a
    // HelloRetryRequest is the same connection's offer, as tlsmon reports it once.
    let mut offered = std::collections::HashSet::new();
    for line in BufReader::new(File::open(&out)?).lines() {
        let line = line?;
        let cols: Vec<&str> = line.split('\t').collect();
        let field = |i: usize| cols.get(i).copied().unwrap_or("");
        // Count SNIs of ClientHellos only (type 1), as tlsmon reports the client's offer.
        if field(0).split(';').any(|t| t == "1") && offered.insert(field(2).to_owned()) {
            for sni in field(1).split(';').filter(|s| !s.is_empty()) {
                *f.snis.entry(sni.to_string()).or_default() += 1;
            }
        }
        let levels: Vec<&str> = field(3).split(';').collect();
        for (level, desc) in levels.iter().zip(field(4).split(';')) {
            if *level == "2" {
                *f.fatal_alerts
                    .entry(desc.parse().unwrap_or(999))
                    .or_default() += 1;
            }
        }
    }
    Ok((t, f))
}

pub fn run(root: &Path, tlsmon: &Path, rounds: usize) -> Result<String> {
    let fixtures = load_fixtures(&root.join("monitor/tests/fixtures/handshakes"))?;
    let capture = root.join("target/bench-analyze.pcap");
    let (handshakes, bytes) = build_capture(&fixtures, &capture)?;
    eprintln!(
        "bench: {handshakes} handshakes from {} fixtures, {} MB",
        fixtures.len(),
        bytes >> 20
    );
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut last = (Findings::default(), Findings::default());
    // Interleaved rounds, medians: both tools see the same page cache and machine load.
    for round in 0..rounds {
        let (t, f) = run_tlsmon(tlsmon, &capture)?;
        eprintln!("bench: round {round}: tlsmon {:.2} s", t.as_secs_f64());
        ours.push(t);
        last.0 = f;
        let (t, f) = run_tshark(&capture)?;
        eprintln!("bench: round {round}: tshark {:.2} s", t.as_secs_f64());
        theirs.push(t);
        last.1 = f;
    }
    ours.sort();
    theirs.sort();
    let (a, b) = (ours[ours.len() / 2], theirs[theirs.len() / 2]);
    let same = last.0 == last.1;
    let report = format!(
        "analyze: {handshakes} handshakes, {} MB pcap; tlsmon {:.2} s ({:.0} handshakes/s), tshark {:.2} s; tlsmon is {:.1}x faster (target >= 20x); same SNIs and fatal alerts: {same}",
        bytes >> 20,
        a.as_secs_f64(),
        handshakes as f64 / a.as_secs_f64(),
        b.as_secs_f64(),
        b.as_secs_f64() / a.as_secs_f64()
    );
    if !same {
        eprintln!(
            "bench: tlsmon found {:?}\nbench: tshark found {:?}",
            last.0, last.1
        );
        bail!("{report}");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rewrite_moves_the_server_to_443_and_keeps_the_ip_checksum_valid() {
        // Ethernet + minimal IPv4 header (127.0.0.1 -> 127.0.0.1) + TCP ports 40000 -> 5555.
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12] = 0x08;
        f[14] = 0x45;
        f[26..30].copy_from_slice(&[127, 0, 0, 1]);
        f[30..34].copy_from_slice(&[127, 0, 0, 1]);
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&5555u16.to_be_bytes());
        assert!(super::rewrite(&mut f, 5555, 7));
        assert_eq!(&f[26..30], &[10, 0, 0, 7]);
        assert_eq!(&f[36..38], &443u16.to_be_bytes());
        let sum: u32 = f[14..34]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
    }
}
