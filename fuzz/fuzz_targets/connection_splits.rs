//! The whole core on arbitrary input: the first bytes choose how the rest is cut into
//! chunks and which end sends each, then the connection closes; the verdict must come
//! without a panic, and feeding the same chunks (same ends, same times, same order) one byte
//! at a time must give the same verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsmon::handshake::{CloseKind, Connection, ConnectionMeta, HandshakeOutcome, Party};

/// (sender, time, bytes) in arrival order, as the plan cuts `data`.
fn chunks<'a>(data: &'a [u8], plan: &[u8]) -> Vec<(Party, u64, &'a [u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    let mut ts = 2;
    while !rest.is_empty() {
        let step = plan.get(i % plan.len().max(1)).copied().unwrap_or(0);
        let from = if step & 1 == 0 {
            Party::Client
        } else {
            Party::Server
        };
        let n = rest.len().min(usize::from(step >> 1) * 16 + 1);
        out.push((from, ts, &rest[..n]));
        rest = &rest[n..];
        i += 1;
        ts += 1_000;
    }
    out
}

fn run(chunks: &[(Party, u64, &[u8])], meta: ConnectionMeta, bytewise: bool) -> HandshakeOutcome {
    let mut conn = Connection::new(meta);
    conn.opened(1);
    let mut ts = 2;
    for &(from, at, bytes) in chunks {
        if bytewise {
            for b in bytes.chunks(1) {
                conn.data(from, at, b);
            }
        } else {
            conn.data(from, at, bytes);
        }
        ts = at;
    }
    conn.closed(Party::Client, CloseKind::Fin, ts + 1_000);
    conn.finish(ts + 5_000_000_000)
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let plan_len = usize::from(input[0] % 16) + 1;
    let (plan, data) = input[1..].split_at(plan_len.min(input.len() - 1));
    let meta = ConnectionMeta {
        tls_port: input[0] & 0x80 != 0,
        client_start_unseen: input[0] & 0x40 != 0,
    };
    let cut = chunks(data, plan);
    let whole = run(&cut, meta, false);
    let bytewise = run(&cut, meta, true);
    assert_eq!(whole, bytewise, "the verdict depends on how the bytes were split");
});
