//! Text from outside (remote replies, reasons, evidence, addresses, EHLO names) made safe for a
//! terminal or a log line.
//!
//! Rules: every character that can move the cursor, start an escape sequence or reorder what the
//! reader sees is shown as an escape instead: C0 controls, DEL, C1 controls (U+0080–U+009F, e.g.
//! U+009B is a one-byte CSI), line/paragraph separators, and the Unicode format characters that
//! hide or reorder text (bidi embeddings, overrides and isolates U+202A–U+202E, U+2066–U+2069,
//! marks U+200E/U+200F/U+061C, zero-width characters, BOM, tags). ASCII controls print as `\xHH`,
//! the others as `\u{HHHH}`; everything else (printable ASCII and other Unicode) is kept.
//! JSON output: serde escapes only C0, so [`json`] also writes DEL, C1 and the format characters as
//! `\uHHHH` (the same JSON value, nothing raw on the terminal).

use std::borrow::Cow;
use std::fmt;

/// True for a character that must not reach a terminal or log line raw.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// `s` with every unsafe character escaped (borrowed when there is none).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(Escaped(s).to_string())
}

/// Display adapter for format strings and tracing fields: `client_name = %Escaped(helo)`.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if !is_unsafe(c) {
                fmt::Write::write_char(f, c)?;
            } else if c.is_ascii() {
                write!(f, "\\x{:02x}", c as u32)?;
            } else {
                write!(f, "\\u{{{:04x}}}", c as u32)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Serialized JSON with DEL, C1 and format characters written as `\uHHHH`. Outside strings JSON
/// is plain ASCII, so every such character is inside a string where the escape means the same.
pub fn json(serialized: &str) -> Cow<'_, str> {
    if !serialized.chars().any(is_unsafe) {
        return Cow::Borrowed(serialized);
    }
    let mut out = String::with_capacity(serialized.len() + 16);
    for c in serialized.chars() {
        if is_unsafe(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert_eq!(escape("550 5.7.1 blocked"), "550 5.7.1 blocked");
        assert!(matches!(escape("plain ü 日本"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b[31mred\x07"), "a\\x1b[31mred\\x07");
        assert_eq!(escape("x\r\ny\t\x7f"), "x\\x0d\\x0ay\\x09\\x7f");
        assert_eq!(escape("c1 \u{9b}2J \u{85}"), "c1 \\u{009b}2J \\u{0085}");
        assert_eq!(
            escape("bidi \u{202e}gpj.exe\u{2066}\u{2069}\u{200e}\u{200f}"),
            "bidi \\u{202e}gpj.exe\\u{2066}\\u{2069}\\u{200e}\\u{200f}"
        );
        assert_eq!(escape("\u{feff}\u{e0041}"), "\\u{feff}\\u{e0041}");
        assert_eq!(format!("{}", Escaped("ok\x00")), "ok\\x00");
    }

    #[test]
    fn json_escapes_stay_valid_json_with_the_same_value() {
        let v = serde_json::json!({"reason": "a\u{9b}b\u{202e}c\x7f\x1b\u{e0041}日"});
        let text = v.to_string();
        let safe = json(&text);
        assert!(!safe.chars().any(is_unsafe), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, v);
        assert!(matches!(json("{\"a\":\"ü\"}"), Cow::Borrowed(_)));
    }
}
