//! A streaming DATA reader: undoes dot-stuffing and finds the end of the message, in bounded
//! memory, one byte state machine over whatever the socket delivers.
//!
//! smtp-proto's `DataReceiver` is not used: it stores bare CR / bare LF silently and gives no way
//! to refuse them. Here the message ends only at CRLF "." CRLF (the CRLF of the DATA command
//! counts as the first one); `\n.\n`, `\r.\r`, `\n.\r\n`, `\r\n.\n` … never end it, and any bare
//! CR or LF marks the message as refused: the SMTP smuggling defence (the bytes after such a fake
//! end stay message content, never commands). A NUL byte marks it as refused too: a next hop that
//! strips NULs would read a NUL-dot line as the end of data.

/// Measures a message's header section: its bytes up to the first empty line (CRLF CRLF), or
/// the whole message when there is none. That is where the DKIM signer and mail-auth look for
/// the end of the headers (and hold what comes before it), so a section over `limits.header_size`
/// is refused (`552 5.3.4`), never stored past the limit, and never reaches them.
#[derive(Debug, Clone)]
pub struct HeaderSection {
    /// Bytes of "\r\n\r\n" matched so far; starts at 2 (the CRLF before the message), so a
    /// message opening with an empty line has an empty header section.
    matched: u8,
    pub len: u64,
    max: u64,
    done: bool,
}

impl HeaderSection {
    pub fn new(max: u64) -> HeaderSection {
        HeaderSection {
            matched: 2,
            len: 0,
            max,
            done: false,
        }
    }

    /// Message bytes in order; cheap once the header section is over.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        const END: &[u8; 4] = b"\r\n\r\n";
        for &b in bytes {
            self.matched = if b == END[self.matched as usize] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == 4 {
                self.len -= 1; // the empty line's CR, counted below
                self.done = true;
                return;
            }
            self.len += 1;
            // A CR that may start the empty line does not count yet.
            if self.len > self.max.saturating_add(u64::from(self.matched == 3)) {
                self.done = true;
                return;
            }
        }
    }

    pub fn too_long(&self) -> bool {
        self.len > self.max
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// After CRLF (or at the very start).
    LineStart,
    /// A "." at line start, not yet emitted.
    Dot,
    /// "." CR at line start.
    DotCr,
    /// Inside a line.
    Mid,
    /// A CR inside a line, not yet emitted.
    Cr,
}

pub struct DataReader {
    st: St,
    /// Message bytes seen (after unstuffing), stored or not.
    pub size: u64,
    /// Stop storing past this many bytes (the caller replies 552 at the end).
    max: u64,
    /// A bare CR or LF was seen: the message will be refused.
    pub bare: bool,
    pub header: HeaderSection,
    /// A NUL byte was seen: the message will be refused.
    pub nul: bool,
}

impl DataReader {
    pub fn new(max: u64, max_header: u64) -> DataReader {
        DataReader {
            st: St::LineStart,
            size: 0,
            max,
            bare: false,
            header: HeaderSection::new(max_header),
            nul: false,
        }
    }

    /// A bare CR/LF or a NUL was seen.
    pub fn refused(&self) -> bool {
        self.bare || self.nul
    }

    pub fn too_big(&self) -> bool {
        self.size > self.max
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.header.feed(bytes);
        // The bytes before a NUL are stored like any others, so what is stored does not depend
        // on where the socket cut the stream.
        let (before, nul) = match bytes.iter().position(|&b| b == 0) {
            Some(p) => (&bytes[..p], true),
            None => (bytes, false),
        };
        self.size += before.len() as u64;
        // A message that will be refused is not stored any further.
        if !self.refused() && self.size <= self.max && !self.header.too_long() {
            out.extend_from_slice(before);
        }
        self.size += (bytes.len() - before.len()) as u64;
        self.nul |= nul;
    }

    /// Consumes `input`, appending message bytes to `out`. Returns `Some(n)` when the end marker
    /// was found after `n` bytes of `input` (the rest belongs to the next command), else `None`
    /// (all of `input` consumed).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            let c = input[i];
            match self.st {
                St::Mid => {
                    // Fast path: copy up to the next CR or LF.
                    let run = input[i..]
                        .iter()
                        .position(|&b| b == b'\r' || b == b'\n')
                        .unwrap_or(input.len() - i);
                    if run > 0 {
                        self.emit(out, &input[i..i + run]);
                        i += run;
                        continue;
                    }
                    if c == b'\r' {
                        self.st = St::Cr;
                    } else {
                        self.bare = true;
                        self.emit(out, b"\n");
                    }
                }
                St::Cr => match c {
                    b'\n' => {
                        self.emit(out, b"\r\n");
                        self.st = St::LineStart;
                    }
                    _ => {
                        // Bare CR; reprocess `c` inside the line.
                        self.bare = true;
                        self.emit(out, b"\r");
                        self.st = St::Mid;
                        continue;
                    }
                },
                St::LineStart => match c {
                    b'.' => self.st = St::Dot,
                    _ => {
                        self.st = St::Mid;
                        continue;
                    }
                },
                St::Dot => match c {
                    b'\r' => self.st = St::DotCr,
                    _ => {
                        // The leading dot of a stuffed line is dropped (RFC 5321 §4.5.2).
                        self.st = St::Mid;
                        continue;
                    }
                },
                St::DotCr => {
                    if c == b'\n' {
                        self.st = St::LineStart;
                        return Some(i + 1);
                    }
                    // "." CR x: a bare CR on a stuffed line.
                    self.st = St::Cr;
                    continue;
                }
            }
            i += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns (message, bytes consumed, bare) or None.
    fn run(input: &[u8], step: usize) -> Option<(Vec<u8>, usize, bool)> {
        let mut r = DataReader::new(u64::MAX, u64::MAX);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            if let Some(n) = r.feed(&input[pos..end], &mut out) {
                return Some((out, pos + n, r.bare));
            }
            pos = end;
        }
        None
    }

    fn all_steps(input: &[u8]) -> Option<(Vec<u8>, usize, bool)> {
        let whole = run(input, input.len().max(1));
        for step in 1..8 {
            assert_eq!(run(input, step), whole, "step {step} differs for {input:?}");
        }
        whole
    }

    #[test]
    fn simple_and_empty() {
        let (m, n, bare) = all_steps(b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n").unwrap();
        assert_eq!(m, b"Subject: x\r\n\r\nhi\r\n");
        assert_eq!(n, 21);
        assert!(!bare);
        let (m, n, _) = all_steps(b".\r\n").unwrap();
        assert_eq!((m.as_slice(), n), (&b""[..], 3));
    }

    #[test]
    fn dot_unstuffing_is_exact() {
        let (m, _, bare) = all_steps(b"..\r\n...x\r\n.y\r\na.b\r\n..\r\n\r\n.\r\n").unwrap();
        assert_eq!(m, b".\r\n..x\r\ny\r\na.b\r\n.\r\n\r\n");
        assert!(!bare);
    }

    #[test]
    fn only_crlf_dot_crlf_ends() {
        for fake in [
            &b"a\n.\nb"[..],
            b"a\r.\rb",
            b"a\n.\r\nb",
            b"a\r\n.\nb",
            b"a\r\n.\rb",
            b"a\r.\r\nb",
            b"a\n.\rb",
            b"a\r\n. \r\nb",
            // smtp-proto 0.2's DataReceiver ends the message here; it must not.
            b"a\r\n.\r\r\nb",
        ] {
            let mut input = fake.to_vec();
            input.extend_from_slice(b"\r\nMAIL FROM:<x@y.z>\r\n.\r\n");
            let (m, n, bare) = all_steps(&input).unwrap();
            assert_eq!(n, input.len(), "{fake:?} ended early");
            // A refused message is not stored past the bare CR/LF; a clean one keeps everything.
            assert_eq!(m.windows(4).any(|w| w == b"MAIL"), !bare, "{fake:?}");
            let has_bare = fake != b"a\r\n. \r\nb";
            assert_eq!(bare, has_bare, "{fake:?}");
        }
    }

    #[test]
    fn bare_lf_and_cr_are_flagged() {
        for body in [
            &b"a\nb"[..],
            b"a\rb",
            b"\n.",
            b"a\r",
            b".\rx",
            b"x\r\n.\n.",
            b"\r",
            b"\n",
        ] {
            let mut input = body.to_vec();
            input.extend_from_slice(b"\r\n.\r\n");
            let (_, n, bare) = all_steps(&input).unwrap();
            assert_eq!(n, input.len(), "{body:?}");
            assert!(bare, "{body:?}");
        }
    }

    #[test]
    fn nul_is_flagged_and_not_stored() {
        for body in [
            &b"\0.\r\nafter"[..],
            b"a\0b",
            b"\0",
            b".\0",
            b"x\r\n\0\r\n.x",
        ] {
            let mut input = body.to_vec();
            input.extend_from_slice(b"\r\nMAIL FROM:<x@y.z>\r\n.\r\n");
            let mut r = DataReader::new(u64::MAX, u64::MAX);
            let mut out = Vec::new();
            assert_eq!(r.feed(&input, &mut out), Some(input.len()), "{body:?}");
            assert!(r.nul && r.refused() && !r.bare, "{body:?}");
            assert!(!out.contains(&0), "{body:?}");
        }
        let mut r = DataReader::new(u64::MAX, u64::MAX);
        r.feed(b"clean\r\n.\r\n", &mut Vec::new());
        assert!(!r.refused());
    }

    #[test]
    fn unterminated_never_ends() {
        assert_eq!(all_steps(b"abc\r\n.\r"), None);
        assert_eq!(all_steps(b"abc\r\n."), None);
        assert_eq!(all_steps(b"abc\r\n"), None);
    }

    #[test]
    fn size_limit_stops_storing_but_finds_the_end() {
        let mut r = DataReader::new(5, u64::MAX);
        let mut out = Vec::new();
        let n = r.feed(b"0123456789\r\n.\r\nNOOP\r\n", &mut out).unwrap();
        assert_eq!(n, 15);
        assert!(r.too_big());
        assert_eq!(r.size, 12);
        assert!(out.len() <= 5);
    }

    fn header_len(message: &[u8], step: usize) -> u64 {
        let mut h = HeaderSection::new(u64::MAX);
        for piece in message.chunks(step) {
            h.feed(piece);
        }
        h.len
    }

    #[test]
    fn header_section_ends_at_the_first_empty_line() {
        for (message, len) in [
            (&b"Subject: x\r\nFrom: a@b\r\n\r\nbody\r\n\r\nmore"[..], 23),
            (b"\r\nbody only", 0),
            (b"Subject: x\r\n", 12),
            (b"Subject: x\r\n folded\r\n\r\n", 21),
            (b"no empty line at all", 20),
            (b"a\r\r\n\r\n", 4),
        ] {
            for step in 1..6 {
                assert_eq!(header_len(message, step), len, "{message:?} step {step}");
            }
        }
    }

    #[test]
    fn long_header_section_stops_storing_but_finds_the_end() {
        let mut input = Vec::new();
        for i in 0..200 {
            input.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\nbody\r\n.\r\nNOOP\r\n");
        let mut r = DataReader::new(u64::MAX, 100);
        let mut out = Vec::new();
        let n = r.feed(&input, &mut out).unwrap();
        assert_eq!(n, input.len() - 6);
        assert!(r.header.too_long());
        assert!(out.len() <= 100 + 16, "stored {}", out.len());
        // Exactly at the limit: accepted whole.
        let mut r = DataReader::new(u64::MAX, 12);
        let mut out = Vec::new();
        r.feed(b"Subject: x\r\n\r\nbody\r\n.\r\n", &mut out)
            .unwrap();
        assert!(!r.header.too_long());
        assert_eq!(out, b"Subject: x\r\n\r\nbody\r\n");
    }
}
