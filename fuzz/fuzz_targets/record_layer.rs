//! The record layer on arbitrary bytes, whole and in 7-byte chunks: same items, no panic,
//! bounded memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsmon::handshake::record_layer::RecordLayer;

fuzz_target!(|data: &[u8]| {
    let mut whole = RecordLayer::new();
    let mut a = Vec::new();
    whole.push(data, &mut a);
    let mut chunked = RecordLayer::new();
    let mut b = Vec::new();
    for c in data.chunks(7) {
        chunked.push(c, &mut b);
    }
    assert_eq!(a, b);
});
