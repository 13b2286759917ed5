//! The whole core on arbitrary input: the first bytes choose how the rest is cut into
//! chunks and which end sends each, then the connection closes; the verdict must come
//! without a panic, and feeding the same bytes in other chunks must give the same verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsmon::handshake::{CloseKind, Connection, ConnectionMeta, Party};

fn run(
    data: &[u8],
    plan: &[u8],
    meta: ConnectionMeta,
    whole: bool,
) -> tlsmon::handshake::HandshakeOutcome {
    let mut conn = Connection::new(meta);
    conn.opened(1);
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
        // Chunks of one direction keep their order; `whole` merges each run per step.
        let n = if whole {
            rest.len().min(usize::from(step >> 1) * 16 + 1)
        } else {
            1
        };
        let n = n.min(rest.len());
        conn.data(from, ts, &rest[..n]);
        rest = &rest[n..];
        i += 1;
        ts += 1_000;
    }
    conn.closed(Party::Client, CloseKind::Fin, ts);
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
    };
    let _ = run(data, plan, meta, true);
    let _ = run(data, plan, meta, false);
});
