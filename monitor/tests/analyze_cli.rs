//! `tlsmon analyze` as an operator runs it: the binary, its output and its exit codes.

use std::process::Command;

fn tlsmon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tlsmon"))
}

fn fixture(name: &str) -> String {
    format!(
        "{}/tests/fixtures/handshakes/{name}.pcap",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn table_names_cause_sender_and_stage() {
    let out = tlsmon()
        .args(["analyze", &fixture("cert_expired_tls12")])
        .output()
        .expect("run tlsmon");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().nth(1).expect("one row after the header");
    for want in [
        "localhost",
        "TLSv1.2",
        "failed",
        "server_hello_done",
        "45 certificate_expired (client)",
        "cert_expired",
        "notAfter 2021-01-01",
    ] {
        assert!(row.contains(want), "{want:?} missing in {row:?}");
    }
}

#[test]
fn json_lines_carry_the_event_fields() {
    let out = tlsmon()
        .args(["analyze", "--json", &fixture("no_shared_cipher_tls12")])
        .output()
        .expect("run tlsmon");
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(v["outcome"], "failed");
    assert_eq!(v["cause"], "no_shared_cipher");
    assert_eq!(v["alert"]["sender"], "server");
    assert_eq!(v["alert"]["name"], "handshake_failure");
    assert_eq!(
        v["offered"]["ciphers"]["names"][0],
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
    );
    assert!(
        v["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:"))
    );
}

#[test]
fn unreadable_files_exit_non_zero_with_a_message() {
    let dir = std::env::temp_dir().join(format!("tlsmon-analyze-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "GET / HTTP/1.1\r\n").expect("write");
    let truncated = dir.join("cut.pcap");
    let pcap = std::fs::read(fixture("completed_tls12_curl")).expect("fixture");
    std::fs::write(&truncated, &pcap[..pcap.len() - 7]).expect("write");
    for (file, want) in [
        (dir.join("missing.pcap"), "cannot open"),
        (text, "not a pcap or pcapng file"),
        (truncated, "unreadable after"),
    ] {
        let out = tlsmon()
            .arg("analyze")
            .arg(&file)
            .output()
            .expect("run tlsmon");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", file.display());
        assert!(err.contains(want), "{}: {err}", file.display());
        if want == "unreadable after" {
            // What came before the cut is still judged and printed.
            let rows = String::from_utf8_lossy(&out.stdout);
            assert!(rows.contains("completed"), "{rows}");
            assert!(err.contains("1 connections before are reported"), "{err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A capture of at least `bytes`: one fixture's frames repeated, each copy 1,000 s later.
fn big_capture(path: &std::path::Path, bytes: u64) {
    use pcap_file::pcap::{PcapReader, PcapWriter};
    let mut reader =
        PcapReader::new(std::fs::File::open(fixture("completed_tls12_curl")).expect("open"))
            .expect("pcap");
    let header = reader.header();
    let mut packets = Vec::new();
    while let Some(p) = reader.next_packet() {
        packets.push(p.expect("packet").into_owned());
    }
    let mut writer = PcapWriter::with_header(std::fs::File::create(path).expect("create"), header)
        .expect("writer");
    let mut written = 0u64;
    let mut copy = 0u64;
    while written < bytes {
        for p in &packets {
            let mut p = p.clone();
            p.timestamp += std::time::Duration::from_secs(1000 * copy);
            written += 16 + p.data.len() as u64;
            writer.write_packet(&p).expect("write");
        }
        copy += 1;
    }
}

#[test]
fn a_progress_bar_is_drawn_on_a_terminal_only() {
    let dir = std::env::temp_dir().join(format!("tlsmon-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let capture = dir.join("big.pcap");
    big_capture(&capture, 9 << 20);
    // stderr a pipe: no bar, only the summary line.
    let out = tlsmon().arg("analyze").arg(&capture).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("MiB"), "{err}");
    // stderr a terminal (script(1) gives it a pty): the bar with the file's size.
    let cmd = format!(
        "{} analyze {} > /dev/null",
        env!("CARGO_BIN_EXE_tlsmon"),
        capture.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("run script(1)");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("MiB") && tty.contains(" left"),
        "no progress bar in {tty:?}"
    );
    assert!(tty.contains("connections:"), "{tty:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One frame of a classic pcap: its record header and bytes.
type Frame = ([u8; 16], Vec<u8>);

/// The file header and frames of a classic pcap fixture.
fn frames(name: &str) -> (Vec<u8>, Vec<Frame>) {
    let pcap = std::fs::read(fixture(name)).expect("fixture");
    let (head, mut rest) = pcap.split_at(24);
    let mut out = Vec::new();
    while rest.len() >= 16 {
        let mut h = [0u8; 16];
        h.copy_from_slice(&rest[..16]);
        let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        out.push((h, rest[16..16 + len].to_vec()));
        rest = &rest[16 + len..];
    }
    (head.to_vec(), out)
}

/// Writes a pcap of `head` and the chosen frames (by 1-based frame number as tshark counts),
/// each shifted by the given microseconds; returns its path.
fn rewrite(name: &str, head: &[u8], all: &[Frame], pick: &[(usize, u32)]) -> String {
    let dir = std::env::temp_dir().join(format!("tlsmon-analyze-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut out = head.to_vec();
    for &(n, shift_us) in pick {
        let (mut h, bytes) = all[n - 1].clone();
        let sec = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let usec = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) + shift_us;
        h[..4].copy_from_slice(&(sec + usec / 1_000_000).to_le_bytes());
        h[4..8].copy_from_slice(&(usec % 1_000_000).to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&bytes);
    }
    let path = dir.join(name);
    std::fs::write(&path, out).expect("write");
    path.display().to_string()
}

fn analyze_json(path: &str) -> (Vec<serde_json::Value>, String) {
    let out = tlsmon()
        .args(["analyze", "--json", "--all", path])
        .output()
        .expect("run tlsmon");
    assert!(out.status.success(), "{out:?}");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    (lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn retransmissions_after_the_close_make_no_second_connection() {
    // A real failing handshake (curl refuses an expired certificate), then the alert, the
    // server's flight and both FINs sent again 200 ms and 1 s later, as a lossy path does.
    let (head, all) = frames("cert_expired_tls12");
    let mut pick: Vec<(usize, u32)> = (1..=all.len()).map(|n| (n, 0)).collect();
    pick.extend([(8, 200_000), (6, 200_000), (9, 200_000), (10, 1_000_000)]);
    let path = rewrite("retransmitted.pcap", &head, &all, &pick);
    let (lines, stderr) = analyze_json(&path);
    assert_eq!(lines.len(), 1, "one connection: {lines:?}");
    assert_eq!(lines[0]["cause"], "cert_expired");
    assert!(stderr.contains("1 connections"), "{stderr}");
}

#[test]
fn a_capture_that_starts_mid_connection_is_truncated() {
    // A real completed curl handshake, captured from its first application data on: one
    // record each way, then silence (the capture stops before the close).
    let (head, all) = frames("completed_tls12_curl");
    let path = rewrite("mid_connection.pcap", &head, &all, &[(10, 0), (11, 0)]);
    let (lines, stderr) = analyze_json(&path);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "truncated", "{}", lines[0]);
    assert_eq!(lines[0]["bytes_from_client"], 108);
    assert!(stderr.contains("1 truncated"), "{stderr}");
    let table = tlsmon()
        .args(["analyze", &path])
        .output()
        .expect("run tlsmon");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("truncated") && text.contains("the capture began after"),
        "{text}"
    );
    // The same capture from its first frame is a completed handshake.
    let whole = rewrite(
        "whole.pcap",
        &head,
        &all,
        &(1..=all.len()).map(|n| (n, 0)).collect::<Vec<_>>(),
    );
    assert_eq!(analyze_json(&whole).0[0]["outcome"], "completed");
}
