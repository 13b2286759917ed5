//! The aggregator's MQTT message parser on arbitrary topics and payloads (what any client
//! of a shared broker may publish): a document or a rejection, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsmon::fleet::message::parse;

fuzz_target!(|data: &[u8]| {
    // First byte: the topic's length; then the topic, then the payload.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (topic, payload) = rest.split_at(usize::from(n).min(rest.len()));
    let _ = parse(&String::from_utf8_lossy(topic), payload);
});
