#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets (fuzz/seeds/<target>/) from the
recorded handshakes (monitor/tests/fixtures/handshakes/*.pcap) and the shipped files.
Run again after recording new fixtures: python3 fuzz/seeds/make.py"""
import hashlib, pathlib, struct

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "monitor/tests/fixtures/handshakes"
OUT = ROOT / "fuzz/seeds"
PICK = ["hostname_mismatch_tls12_curl", "completed_tls13_curl", "alpn_mismatch",
        "weak_key_tls12", "no_shared_group_tls13", "client_cert_required_tls13_curl",
        "hrr_completed_tls13_curl", "ca_cert_as_leaf_curl", "plaintext_to_tls_port"]


def segments(pcap):
    """(from_client, payload) of each TCP segment with data, in file order (Ethernet)."""
    d = pcap.read_bytes()
    off, client, out = 24, None, []
    while off + 16 <= len(d):
        incl = struct.unpack("<I", d[off + 8:off + 12])[0]
        frame = d[off + 16:off + 16 + incl]
        off += 16 + incl
        eth = struct.unpack(">H", frame[12:14])[0]
        ip = frame[14:]
        if eth == 0x0800:
            ihl = (ip[0] & 15) * 4
            total = struct.unpack(">H", ip[2:4])[0]
            src, tcp = ip[12:16], ip[ihl:total]
        elif eth == 0x86DD:
            plen = struct.unpack(">H", ip[4:6])[0]
            src, tcp = ip[8:24], ip[40:40 + plen]
        else:
            continue
        sport = tcp[0:2]
        flags = tcp[13]
        if flags & 0x02 and not flags & 0x10:
            client = (src, sport)
        data = tcp[(tcp[12] >> 4) * 4:]
        if data:
            out.append(((src, sport) == client, bytes(data)))
    return out


def messages(stream):
    """(type, body) of the handshake messages in plaintext records of a stream."""
    hs, off = b"", 0
    while off + 5 <= len(stream):
        ctype, n = stream[off], struct.unpack(">H", stream[off + 3:off + 5])[0]
        if ctype == 22:
            hs += stream[off + 5:off + 5 + n]
        elif ctype == 20:
            break
        off += 5 + n
    out, off = [], 0
    while off + 4 <= len(hs):
        n = int.from_bytes(hs[off + 1:off + 4], "big")
        out.append((hs[off], hs[off + 4:off + 4 + n]))
        off += 4 + n
    return out


def write(target, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


for name in PICK:
    segs = segments(FIXTURES / f"{name}.pcap")
    client = b"".join(p for c, p in segs if c)
    server = b"".join(p for c, p in segs if not c)
    for s in (client, server):
        if s:
            write("record_layer", s)
    # connection_splits: flags+plan length, then a plan of the first 16 segments, then data.
    plan = bytes(min(len(p) // 16, 127) << 1 | (0 if c else 1) for c, p in segs[:16])
    plan = plan.ljust(16, b"\x00")
    write("connection_splits", bytes([0x80 | 15]) + plan + b"".join(p for _, p in segs))
    for t, body in messages(client) + messages(server):
        if t in (1, 2, 11):
            write("certificate", body)
        if t == 11:
            off = 3
            while off + 3 <= len(body):
                n = int.from_bytes(body[off:off + 3], "big")
                write("certificate", body[off + 3:off + 3 + n])
                off += 3 + n
for name in ["hostname_mismatch_tls12_curl", "completed_tls13_curl", "alpn_mismatch"]:
    write("capture_file", (FIXTURES / f"{name}.pcap").read_bytes())
write("config", (ROOT / "packaging/tlsmon.toml").read_bytes())
write("config", b'[status]\nlisten = "unix:/run/tlsmon/s.sock"\n[aggregate]\nstore = "postgresql://u:p@h/db?sslmode=require"\n')
HOST = '"host":{"id":"m1","name":"web1"}'
EVENT = ('{"schema":"tlsmon.event/1","event_id":"0195-a","time":"2026-11-23T10:00:00Z",' + HOST +
         ',"kind":"handshake_failure","severity":"error","process":{"pid":7,"comm":"curl",'
         '"exe":"/usr/bin/curl","unit":null,"uid":0,"container":null},"role":"client",'
         '"local":{"ip":"127.0.0.1","port":40000},"peer":{"ip":"127.0.0.1","port":8443},'
         '"sni":"api.example","tls":{},"alert":null,"stage":"server_hello","cause":"self_signed",'
         '"inferred":false,"message":"m","certificate":null,"count":3,'
         '"first_seen":"2026-11-23T10:00:00Z","last_seen":"2026-11-23T10:00:01.5Z"}')
GAP = ('{"schema":"tlsmon.gap/1","event_id":"g1","time":"x",' + HOST +
       ',"reason":"outbox_full","dropped":21,"first_ms":5,"last_ms":9}')
STATUS = ('{"schema":"tlsmon.status/1","state":"offline",' + HOST + ',"site":"s",'
          '"version":"0.1.0","capabilities":[],"time":"2026-11-23T10:00:00Z"}')
SUMMARY = ('{"schema":"tlsmon.summary/1","time":"2026-11-23T10:00:00Z",' + HOST + ',"site":"s",'
           '"interval_secs":60,"handshakes":{"judged":10,"ok":7,"failed":3,"warnings":0},'
           '"failing":[],"outbox_backlog":0}')
for kind, doc in [("events", EVENT), ("events", GAP), ("status", STATUS), ("summary", SUMMARY)]:
    t = f"tlsmon/v1/fra1/m1/{kind}".encode()
    write("fleet_message", bytes([len(t)]) + t + doc.encode())
write("renderers", "evil.example peer_ip=203.0.113.9\tsender=server \x1b[2J\"q\"\u202e".encode())
