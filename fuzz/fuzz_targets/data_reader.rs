//! The streaming DATA reader on arbitrary bytes, split into arbitrary chunks: the result must not
//! depend on how the socket cut the stream, the end must be exactly at CRLF "." CRLF, and
//! a message with a bare CR or LF must be flagged (and one with a NUL refused).
#![no_main]

use libfuzzer_sys::fuzz_target;
use poolrelay_parsers::inbound::data::DataReader;

type Result = (Vec<u8>, Option<usize>, u64, bool, bool, bool);

/// Feeds `input` in chunks of the given sizes; returns (stored bytes, end offset, size, bare,
/// nul, header section too long).
fn run(input: &[u8], cuts: &[u8], max: u64, max_header: u64) -> Result {
    let mut r = DataReader::new(max, max_header);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    while pos < input.len() {
        let step = if cuts.is_empty() {
            input.len()
        } else {
            (cuts[k % cuts.len()] as usize % 17) + 1
        };
        k += 1;
        let end = (pos + step).min(input.len());
        if let Some(n) = r.feed(&input[pos..end], &mut out) {
            assert!(n <= end - pos);
            return (
                out,
                Some(pos + n),
                r.size,
                r.bare,
                r.nul,
                r.header.too_long(),
            );
        }
        pos = end;
    }
    (out, None, r.size, r.bare, r.nul, r.header.too_long())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let ncuts = (data[0] as usize % 8).min(data.len() - 1);
    let (cuts, input) = data[1..].split_at(ncuts);
    let max = 1 << 20;
    // A header limit the input can reach (16 B … 512 B).
    let max_header = 16 * (1 + u64::from(data[0] >> 3));
    let whole = run(input, &[], max, max_header);
    let pieces = run(input, cuts, max, max_header);
    if whole.5 {
        // Refused (552): how much was stored before the limit may depend on the cuts, never
        // more than the limit allows.
        assert!(pieces.5, "chunking changed the header verdict");
        for stored in [&whole.0, &pieces.0] {
            assert!(
                stored.len() as u64 <= max_header + 4,
                "stored past the header limit"
            );
        }
        assert_eq!(
            (whole.1, whole.2, whole.3, whole.4),
            (pieces.1, pieces.2, pieces.3, pieces.4)
        );
    } else {
        assert_eq!(whole, pieces, "chunking changed the result");
    }

    let (out, end, size, bare, nul, too_long) = whole;
    // NUL flagged exactly when the message (up to its end) has one; never stored.
    assert_eq!(nul, input[..end.unwrap_or(input.len())].contains(&0));
    assert!(!out.contains(&0), "NUL stored");
    if let Some(n) = end {
        // The CRLF ending the DATA command counts as the first CRLF of the end marker.
        let mut seen = b"\r\n".to_vec();
        seen.extend_from_slice(&input[..n]);
        assert!(
            seen.ends_with(b"\r\n.\r\n"),
            "ended without CRLF.CRLF: {:?}",
            &input[..n]
        );
        // No earlier end marker in a message that had no bare CR/LF.
        if !bare {
            let body = &seen[..seen.len() - 3];
            assert!(
                !body.windows(5).any(|w| w == b"\r\n.\r\n"),
                "missed an earlier end"
            );
        }
    }
    if !bare && !nul && !too_long {
        assert_eq!(out.len() as u64, size);
        // Stored bytes have CRLF line endings only.
        for (i, &c) in out.iter().enumerate() {
            if c == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r', "bare LF stored");
            }
            if c == b'\r' {
                assert!(
                    out.get(i + 1) == Some(&b'\n') || i + 1 == out.len(),
                    "bare CR stored"
                );
            }
        }
    }
    if bare {
        // Input with a lone LF or CR (outside CRLF) must be what set the flag.
        let upto = end.unwrap_or(input.len());
        let mut s = b"\r\n".to_vec();
        s.extend_from_slice(&input[..upto]);
        let has_bare = s.iter().enumerate().any(|(i, &c)| {
            (c == b'\n' && s[i - 1] != b'\r')
                || (c == b'\r' && s.get(i + 1).is_some_and(|&d| d != b'\n'))
        });
        assert!(has_bare, "bare flagged without a bare CR/LF");
    }
});
