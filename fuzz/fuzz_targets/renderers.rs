//! The renderers of captured strings: the log line's values ([`value`], [`quoted`]) are
//! printable ASCII that a logfmt reader turns back into the very string; the terminal form
//! ([`visible`]) holds no control character and no bidirectional override.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsmon::alert::log_line::{quoted, value};
use tlsmon::cli::visible::visible;

/// Reads back one quoted value (the logfmt rule of `log_line`).
fn unquote(q: &str) -> Option<String> {
    let inner = q.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'u' => {
                    let rest = chars.as_str().strip_prefix('{')?;
                    let end = rest.find('}')?;
                    out.push(char::from_u32(u32::from_str_radix(&rest[..end], 16).ok()?)?);
                    chars = rest[end + 1..].chars();
                }
                _ => return None,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let q = quoted(&s);
    assert!(q.bytes().all(|b| (b' '..=b'~').contains(&b)), "{q:?}");
    assert_eq!(unquote(&q).as_deref(), Some(&*s));
    let v = value(&s);
    if !v.starts_with('"') {
        assert!(!v.is_empty() && !v.contains([' ', '"', '=', '\\']), "{v:?}");
        assert_eq!(*v, *s);
    }
    let t = visible(&s);
    assert!(
        !t.chars().any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)),
        "{t:?}"
    );
});
