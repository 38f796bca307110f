//! The bytes of the replies read on an outbound session, so an enhanced status code is read
//! whole. smtp-proto 0.2 keeps each part of `Response.esc` in a byte, so a receiver's
//! `451 4.7.650` arrives as `4.7.255`; RFC 3463 allows up to three digits in subject and detail.
//! - `Recorded` wraps the stream under mail-send's `SmtpClient`: a write (the next command)
//!   starts a new record, every byte read after it is kept, up to `LIMIT` bytes.
//! - The record is cut into replies: a reply ends with a complete line whose fourth byte is not
//!   `-` (so also a bare `250`), as smtp-proto reads them; the n-th reply of a pipelined batch
//!   is the n-th piece.
//! - `status`: smtp-proto's parts when none is saturated (255); else the status read from that
//!   reply's raw text (`parse_reply`) when its code and class agree; else smtp-proto's parts.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use smtp_proto::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::outcome::classify::parse_reply;

/// Bytes kept per record: a pipelined batch of ordinary replies fits; replies past it fall back
/// to smtp-proto's status.
const LIMIT: usize = 16 * 1024;
/// A record grown past this is freed rather than kept for the life of the session.
const KEEP: usize = 4 * 1024;

/// A stream that keeps the bytes read since the last write.
pub struct Recorded<S> {
    inner: S,
    record: Vec<u8>,
}

impl<S> Recorded<S> {
    pub fn new(inner: S) -> Self {
        Recorded {
            inner,
            record: Vec::new(),
        }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The enhanced status of `r`, the `n`-th reply read since the last write, whole.
    pub fn status(&self, r: &Response<String>, n: usize) -> String {
        whole_status(r, nth_reply(&self.record, n))
    }
}

/// `X.Y.Z` for a reply: smtp-proto's parts unless saturated, then the raw reply's (see the
/// module doc); `X.0.0` from the code when the reply has none.
pub fn whole_status(r: &Response<String>, raw: Option<&[u8]>) -> String {
    if r.esc[0] == 0 {
        return format!("{}.0.0", r.code / 100);
    }
    if r.esc.contains(&255)
        && let Some(raw) = raw
    {
        let parsed = parse_reply(&String::from_utf8_lossy(raw));
        if parsed.code == r.code && parsed.status.starts_with(&format!("{}.", r.esc[0])) {
            return parsed.status;
        }
    }
    format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2])
}

/// The `n`-th complete reply in `bytes` (its lines with their line ends), if all of it is there.
pub fn nth_reply(bytes: &[u8], n: usize) -> Option<&[u8]> {
    let mut start = 0;
    let mut seen = 0;
    let mut pos = 0;
    while let Some(lf) = bytes[pos..].iter().position(|&b| b == b'\n') {
        let line = &bytes[pos..pos + lf + 1];
        pos += lf + 1;
        if line.get(3) == Some(&b'-') {
            continue;
        }
        if seen == n {
            return Some(&bytes[start..pos]);
        }
        seen += 1;
        start = pos;
    }
    None
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = &buf.filled()[before..];
            let room = LIMIT.saturating_sub(this.record.len());
            this.record.extend_from_slice(&new[..new.len().min(room)]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            // A command went out: what is read next answers it.
            if this.record.capacity() > KEEP {
                this.record = Vec::new();
            } else {
                this.record.clear();
            }
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_proto::response::parser::ResponseReceiver;

    /// Every reply in `bytes` as smtp-proto reads it, with its status read whole.
    fn statuses(bytes: &[u8]) -> Vec<(u16, String)> {
        let mut iter = bytes.iter();
        let mut parser = ResponseReceiver::default();
        let mut out = Vec::new();
        while let Ok(r) = parser.parse(&mut iter) {
            out.push((r.code, whole_status(&r, nth_reply(bytes, out.len()))));
            parser.reset();
        }
        out
    }

    #[test]
    fn three_digit_detail_is_kept_whole() {
        let raw = b"451 4.7.650 The mail server [203.0.113.5] has been temporarily rate limited due to IP reputation. (S775)\r\n";
        // What smtp-proto alone makes of it.
        let r = ResponseReceiver::default().parse(&mut raw.iter()).unwrap();
        assert_eq!(r.esc, [4, 7, 255]);
        assert_eq!(whole_status(&r, None), "4.7.255");
        assert_eq!(statuses(raw), vec![(451, "4.7.650".to_string())]);
    }

    #[test]
    fn multi_line_reply_is_one_reply() {
        let raw = b"451-4.7.650 The mail server [203.0.113.5] has been\r\n451 4.7.650 temporarily rate limited. (S775)\r\n";
        assert_eq!(nth_reply(raw, 0), Some(&raw[..]));
        assert_eq!(nth_reply(raw, 1), None);
        assert_eq!(statuses(raw), vec![(451, "4.7.650".to_string())]);
    }

    #[test]
    fn pipelined_batch_maps_each_reply_to_its_text() {
        let raw = b"250 2.1.0 ok\r\n550-5.7.606 Access denied, banned\r\n550 5.7.606 sending IP\r\n451 4.7.650 rate limited\r\n250 2.1.5 ok\r\n354 go on\r\n";
        assert_eq!(
            nth_reply(raw, 2),
            Some(&b"451 4.7.650 rate limited\r\n"[..])
        );
        let got: Vec<(u16, String)> = statuses(raw);
        let want = [
            (250, "2.1.0"),
            (550, "5.7.606"),
            (451, "4.7.650"),
            (250, "2.1.5"),
            (354, "3.0.0"),
        ];
        let want: Vec<(u16, String)> = want.iter().map(|(c, s)| (*c, s.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn ordinary_and_missing_statuses() {
        assert_eq!(
            statuses(b"550 5.1.1 no such user\r\n"),
            vec![(550, "5.1.1".to_string())]
        );
        assert_eq!(
            statuses(b"421 try again later\r\n250\r\n"),
            vec![(421, "4.0.0".to_string()), (250, "2.0.0".to_string())]
        );
        // Incomplete: no reply yet.
        assert_eq!(nth_reply(b"451 4.7.650 rate", 0), None);
        assert_eq!(nth_reply(b"451-4.7.650 a\r\n", 0), None);
    }

    /// The record follows the conversation: a write starts a new one.
    #[tokio::test]
    async fn a_write_starts_a_new_record() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut s = Recorded::new(ours);
        theirs.write_all(b"220 hi\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&s.record[..], &buf[..n]);
        s.write_all(b"RCPT TO:<a@b>\r\n").await.unwrap();
        assert!(s.record.is_empty());
        theirs.write_all(b"451 4.7.650 slow\r\n").await.unwrap();
        let _ = s.read(&mut buf).await.unwrap();
        let r = ResponseReceiver::default()
            .parse(&mut b"451 4.7.650 slow\r\n".iter())
            .unwrap();
        assert_eq!(s.status(&r, 0), "4.7.650");
    }
}
