//! Captured strings on a terminal: an SNI, a certificate name or a process name can hold
//! control characters (ANSI escapes that rewrite the screen, a newline that forges a row)
//! or invisible bidirectional overrides. Every such character is shown as an escape
//! (`\x1b`, `\u{202e}`); everything else, non-ASCII letters included, is shown as it is.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;

/// A character a terminal would act on or hide instead of showing.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// `s` with every hidden character escaped.
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !hidden(c) {
            out.push(c);
        } else if c.is_ascii() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
    Cow::Owned(out)
}

/// Every string of a JSON document (keys too) made visible, before it is laid out as text.
pub fn visible_json(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(o) = visible(s) {
                *s = o;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(visible_json),
        Value::Object(m) => {
            let old = std::mem::take(m);
            for (k, mut val) in old {
                visible_json(&mut val);
                m.insert(visible(&k).into_owned(), val);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_shown_escaped_and_letters_as_they_are() {
        assert_eq!(visible("plain.example"), "plain.example");
        assert_eq!(visible("bücher.example"), "bücher.example");
        assert_eq!(
            visible("a\u{1b}[2Jb\nc\td\u{7f}\u{9b}e\u{202e}f"),
            "a\\x1b[2Jb\\x0ac\\x09d\\x7f\\u{9b}e\\u{202e}f"
        );
        let mut v = serde_json::json!({"sni": "x\ny", "list": ["\u{1b}"], "k\r": 1});
        visible_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"sni": "x\\x0ay", "list": ["\\x1b"], "k\\x0d": 1})
        );
    }
}
