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
