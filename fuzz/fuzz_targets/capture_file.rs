//! `tlsmon analyze`'s reader on arbitrary files: pcap and pcapng headers and blocks, frames
//! of every link type, TCP segments into conversations and the diagnosis core. Errors or
//! reports, never a panic; the reader ends (a bounded number of frames per input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsmon::analyze::{capture_file::CaptureFile, conversations::Tracker, segments::tcp_segment};

fuzz_target!(|data: &[u8]| {
    let Some((magic, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Ok(mut file) = CaptureFile::open(*magic, rest) else {
        return;
    };
    let mut tracker = Tracker::new(vec![443], false);
    let mut done = Vec::new();
    let mut last = 0;
    // Every frame takes input bytes, so a file has fewer frames than bytes.
    for _ in 0..=data.len() {
        let Some(Ok(frame)) = file.next_frame() else {
            break;
        };
        last = frame.ts_ns;
        if let Some(seg) = tcp_segment(&frame) {
            tracker.segment(frame.ts_ns, &seg, &mut done);
        }
    }
    done.extend(tracker.finish(last));
});
