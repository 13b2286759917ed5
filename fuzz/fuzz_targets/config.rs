//! The configuration parser on arbitrary text: a configuration or an error that names a
//! line and column inside the text, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsmon::config::{ConfigError, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text, "fuzz.toml") {
        Ok(cfg) => {
            let _ = tlsmon::config::needs_restart(&cfg, &tlsmon::config::Config::default());
        }
        Err(ConfigError::Invalid { line, column, .. }) => {
            assert!(line >= 1 && column >= 1, "{line}:{column}");
            assert!(line <= text.lines().count().max(1) + 1, "line {line} past the text");
        }
        Err(ConfigError::Read { .. }) => unreachable!("parse reads no file"),
    }
});
