//! Dot-stuffing (RFC 5321 §4.5.2) of a message on its way out, with the final `.`: from memory
//! in one buffer, or streamed from a file line by line.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Writes `prepend` then `body` as DATA content: a dot is doubled at the start of every line
/// (and after a bare CR or LF, as mail-send does, so nothing can be smuggled), then the
/// terminator. A body that already ends in CRLF gets only `.\r\n`: mail-send's `write_message`
/// always adds `\r\n.\r\n`, which would append an empty line, so it is not used here.
pub async fn write_dot_stuffed<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    out: &mut W,
    prepend: &[u8],
    body: R,
) -> io::Result<()> {
    write_dot_stuffed_sized(out, prepend, body, 64 * 1024).await
}

/// `write_dot_stuffed` with buffers sized for a body of about `size` bytes (64 KiB at most):
/// a small message costs small allocations (large ones were a measurable share of the CPU).
pub async fn write_dot_stuffed_sized<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    out: &mut W,
    prepend: &[u8],
    mut body: R,
    size: u64,
) -> io::Result<()> {
    let size = usize::try_from(size).unwrap_or(usize::MAX).min(64 * 1024);
    let mut stuffer = DotStuffer::default();
    let mut outbuf = Vec::with_capacity(prepend.len() + size + size / 16 + 8);
    let mut inbuf = vec![0u8; size + 1];
    stuffer.feed(prepend, &mut outbuf);
    loop {
        let n = body.read(&mut inbuf).await?;
        if n == 0 {
            break;
        }
        stuffer.feed(&inbuf[..n], &mut outbuf);
        if outbuf.len() >= 64 * 1024 {
            out.write_all(&outbuf).await?;
            outbuf.clear();
        }
    }
    stuffer.finish(&mut outbuf);
    out.write_all(&outbuf).await?;
    out.flush().await
}

/// `prepend` then `body` dot-stuffed and terminated, in one buffer: for a message already in
/// memory (no read buffer, no second copy).
pub fn dot_stuffed(prepend: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prepend.len() + body.len() + body.len() / 16 + 8);
    let mut stuffer = DotStuffer::default();
    stuffer.feed(prepend, &mut out);
    stuffer.feed(body, &mut out);
    stuffer.finish(&mut out);
    out
}

/// Dot-stuffing state carried across chunks.
struct DotStuffer {
    line_start: bool,
    last_two: [u8; 2],
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            last_two: [0, 0],
        }
    }
}

impl DotStuffer {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        // Line by line (up to each CR or LF), not byte by byte.
        let mut rest = chunk;
        while let Some(&first) = rest.first() {
            if first == b'.' && self.line_start {
                out.push(b'.');
            }
            match memchr::memchr2(b'\n', b'\r', rest) {
                Some(i) => {
                    out.extend_from_slice(&rest[..=i]);
                    self.line_start = true;
                    rest = &rest[i + 1..];
                }
                None => {
                    out.extend_from_slice(rest);
                    self.line_start = false;
                    rest = &[];
                }
            }
        }
        match *chunk {
            [.., a, b] => self.last_two = [a, b],
            [b] => self.last_two = [self.last_two[1], b],
            [] => {}
        }
    }

    /// CRLF unless the content ends in one (or is empty), then the terminating dot.
    fn finish(&self, out: &mut Vec<u8>) {
        let empty = self.last_two == [0, 0];
        if !empty && self.last_two != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn stuff(prepend: &str, body: &str) -> String {
        let mut out = Vec::new();
        write_dot_stuffed(&mut out, prepend.as_bytes(), body.as_bytes())
            .await
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn dot_stuffing_and_terminator() {
        assert_eq!(
            stuff("", "A: b\r\n\r\nx\r\n").await,
            "A: b\r\n\r\nx\r\n.\r\n"
        );
        assert_eq!(
            stuff("", "A: b\r\n\r\n.\r\n").await,
            "A: b\r\n\r\n..\r\n.\r\n"
        );
        assert_eq!(
            stuff("", "A: b\r\n\r\nno eol").await,
            "A: b\r\n\r\nno eol\r\n.\r\n"
        );
        assert_eq!(
            stuff("D: s\r\n", ".x\r\n..y\r\n").await,
            "D: s\r\n..x\r\n...y\r\n.\r\n"
        );
        assert_eq!(stuff("", "a\n.\r\nMAIL").await, "a\n..\r\nMAIL\r\n.\r\n");
        assert_eq!(stuff("", "").await, ".\r\n");
    }

    /// The same bytes whatever the read size: dots, CRs and LFs split across reads.
    #[tokio::test]
    async fn dot_stuffing_does_not_depend_on_read_boundaries() {
        let bodies = [
            ".a\r\n.\r\n..\r\nx.\r\n.",
            "a\r.b\n.c\r\n\r\n.\r\n",
            "no newline at all",
            "ends in cr\r",
            "\r\n",
            ".",
        ];
        for body in bodies {
            let mut whole = Vec::new();
            write_dot_stuffed(&mut whole, b"P: q\r\n", body.as_bytes())
                .await
                .unwrap();
            for size in [0, 1, 2, 3] {
                let mut pieces = Vec::new();
                write_dot_stuffed_sized(&mut pieces, b"P: q\r\n", body.as_bytes(), size)
                    .await
                    .unwrap();
                assert_eq!(pieces, whole, "{body:?} read {} at a time", size + 1);
            }
            assert_eq!(
                dot_stuffed(b"P: q\r\n", body.as_bytes()),
                whole,
                "{body:?} in memory"
            );
        }
        let mut out = Vec::new();
        write_dot_stuffed(&mut out, b"", &b".a\r\n.\r\n..\r\nx.\r\n."[..])
            .await
            .unwrap();
        assert_eq!(out, b"..a\r\n..\r\n...\r\nx.\r\n..\r\n.\r\n");
    }

    #[tokio::test]
    async fn large_body_streams_in_chunks() {
        let body = "0123456789.\r\n.abc\r\n".repeat(20_000);
        let out = stuff("", &body).await;
        assert_eq!(out.len(), body.len() + 20_000 + 3);
        assert!(out.ends_with("\r\n..abc\r\n.\r\n"));
    }
}
