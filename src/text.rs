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
//! Logs: [`LogWriter`] sits under the tracing subscriber and escapes every event the same way, so
//! no field (EHLO name, address, remote reply) can add a line or a control to the log; only the
//! newline that ends an event and, on a colour terminal, the subscriber's own ESC stay raw
//! (tracing-subscriber escapes ESC inside field values itself).

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
/// is plain ASCII, so every such character is inside a string where the escape means the same;
/// serde escapes C0 inside strings, so a raw tab, CR or LF is the pretty printer's whitespace.
pub fn json(serialized: &str) -> Cow<'_, str> {
    let unsafe_in_json = |c: char| is_unsafe(c) && !matches!(c, '\t' | '\r' | '\n');
    if !serialized.chars().any(unsafe_in_json) {
        return Cow::Borrowed(serialized);
    }
    let mut out = String::with_capacity(serialized.len() + 16);
    for c in serialized.chars() {
        if unsafe_in_json(c) {
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

/// An `io::Write` for the log subscriber: one `write` is one formatted event.
pub struct LogWriter<W> {
    inner: W,
    /// Keep ESC raw: the subscriber colours a terminal.
    ansi: bool,
}

impl<W: std::io::Write> LogWriter<W> {
    pub fn new(inner: W, ansi: bool) -> LogWriter<W> {
        LogWriter { inner, ansi }
    }
}

impl<W: std::io::Write> std::io::Write for LogWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, end) = match text.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (&*text, ""),
        };
        if !body
            .chars()
            .any(|c| is_unsafe(c) && !(self.ansi && c == '\x1b'))
        {
            self.inner.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = String::with_capacity(buf.len() + 16);
        for c in body.chars() {
            if self.ansi && c == '\x1b' {
                out.push(c);
            } else {
                let mut tmp = [0u8; 4];
                out.push_str(&escape(c.encode_utf8(&mut tmp)));
            }
        }
        out.push_str(end);
        self.inner.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Unix seconds as a UTC date and time for people: `2026-12-07 14:03:12 UTC`.
pub fn utc(t: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t);
    let s = humantime::format_rfc3339_seconds(at).to_string();
    format!("{} UTC", s.trim_end_matches('Z').replacen('T', " ", 1))
}

/// `t` relative to `now` in one unit: `in 4m`, `3h ago`, `now` (within a second).
pub fn relative(t: u64, now: u64) -> String {
    let (d, future) = if t >= now {
        (t - now, true)
    } else {
        (now - t, false)
    };
    let span = match d {
        0 => return "now".into(),
        1..120 => format!("{d}s"),
        120..7200 => format!("{}m", d / 60),
        7200..172_800 => format!("{}h", d / 3600),
        _ => format!("{}d", d / 86_400),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// `1 message`, `2 messages`, `0 messages` (regular plurals only).
pub fn count(n: impl Into<u64>, word: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Rows as columns aligned on the widest cell (the first row is the header); no trailing
/// spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
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
    fn log_writer_keeps_one_line_per_event() {
        use std::io::Write;
        let mut out = Vec::new();
        let mut w = LogWriter::new(&mut out, false);
        w.write_all("INFO helo=a\nFAKE line\u{202e}\x1b[2J\n".as_bytes())
            .unwrap();
        w.write_all(b"INFO plain\n").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "INFO helo=a\\x0aFAKE line\\u{202e}\\x1b[2J\nINFO plain\n"
        );
        let mut out = Vec::new();
        LogWriter::new(&mut out, true)
            .write_all(b"\x1b[32mINFO\x1b[0m \x07\n")
            .unwrap();
        assert_eq!(out, b"\x1b[32mINFO\x1b[0m \\x07\n");
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
        // Pretty-printed: the layout's newlines stay newlines.
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let safe = json(&pretty);
        assert!(safe.lines().count() > 1, "{safe}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), v);
    }

    #[test]
    fn times_for_people() {
        assert_eq!(utc(1_796_652_192), "2026-12-07 14:03:12 UTC");
        assert_eq!(relative(100, 100), "now");
        assert_eq!(relative(340, 100), "in 4m");
        assert_eq!(relative(100, 100 + 3 * 3600 + 5), "3h ago");
        assert_eq!(relative(100, 159), "59s ago");
        assert_eq!(relative(100 + 3 * 86_400, 100), "in 3d");
        assert_eq!(count(1u64, "message"), "1 message");
        assert_eq!(count(0u64, "message"), "0 messages");
        let t = table(&[
            vec!["ID".into(), "STATE".into()],
            vec!["abc".into(), "pending".into()],
        ]);
        assert_eq!(t, "ID   STATE\nabc  pending\n");
    }
}
