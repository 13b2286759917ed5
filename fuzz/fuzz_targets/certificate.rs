//! Certificate messages and DER certificates from arbitrary bytes: summaries or nothing,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsmon::handshake::certs::{parse_certificate_message, summarize};
use tlsmon::handshake::hello::{parse_client_hello, parse_server_hello};

fuzz_target!(|data: &[u8]| {
    let _ = parse_certificate_message(data);
    let _ = summarize(data);
    let _ = parse_client_hello(data);
    let _ = parse_server_hello(data);
});
