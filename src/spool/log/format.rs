//! The segment files' format: a record is a 16-byte header (magic, kind, payload length,
//! CRC-32 of kind and payload) and its payload; and reading segments back (recovery, `inspect`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{Envelope, Found, Loc};

pub(super) const MAGIC: u32 = 0x3147_4C50; // "PLG1"
pub(super) const HEADER: usize = 16;
pub(super) const KIND_MESSAGE: u8 = 1;
pub(super) const KIND_DONE: u8 = 2;

pub(super) fn segment_name(seq: u64) -> String {
    format!("{seq:016}.log")
}

pub(super) fn record(kind: u8, payload_parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = payload_parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(HEADER + len);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for p in payload_parts {
        crc.update(p);
    }
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    for p in payload_parts {
        out.extend_from_slice(p);
    }
    out
}

/// Message payload: id length (u16), id, envelope length (u32), envelope JSON, message bytes.
pub(super) fn message_record(id: &str, envelope: &[u8], body: &[u8]) -> (Vec<u8>, usize) {
    let idlen = (id.len() as u16).to_le_bytes();
    let envlen = (envelope.len() as u32).to_le_bytes();
    let rec = record(
        KIND_MESSAGE,
        &[&idlen, id.as_bytes(), &envlen, envelope, body],
    );
    let body_at = HEADER + 2 + id.len() + 4 + envelope.len();
    (rec, body_at)
}

pub(super) enum Parsed<'a> {
    Message {
        id: &'a str,
        envelope: &'a [u8],
        body_at: usize,
        body_len: usize,
    },
    Done {
        id: &'a str,
    },
}

/// The record at `pos`, and its total length; None at the end or at the first bad record.
pub(super) fn parse_at(data: &[u8], pos: usize) -> Option<(Parsed<'_>, usize)> {
    let h = data.get(pos..pos + HEADER)?;
    let word = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    if word(0) != MAGIC {
        return None;
    }
    let kind = h[4];
    let len = word(8) as usize;
    let payload = data.get(pos + HEADER..(pos + HEADER).checked_add(len)?)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    crc.update(payload);
    if crc.finalize() != word(12) {
        return None;
    }
    let parsed = match kind {
        KIND_MESSAGE => {
            let idlen = u16::from_le_bytes(payload.get(0..2)?.try_into().ok()?) as usize;
            let id = std::str::from_utf8(payload.get(2..2 + idlen)?).ok()?;
            let e = 2 + idlen;
            let envlen = u32::from_le_bytes(payload.get(e..e + 4)?.try_into().ok()?) as usize;
            let envelope = payload.get(e + 4..e + 4 + envlen)?;
            let start = e + 4 + envlen;
            Parsed::Message {
                id,
                envelope,
                body_at: pos + HEADER + start,
                body_len: len - start,
            }
        }
        KIND_DONE => Parsed::Done {
            id: std::str::from_utf8(payload).ok()?,
        },
        _ => return None,
    };
    Some((parsed, HEADER + len))
}

/// Reads every segment in order: the messages not yet done, and per segment its live count.
/// Read-only (also used to inspect a running relay's queue).
/// What `scan` found.
pub(super) struct Scan {
    pub(super) found: Vec<Found>,
    /// Live messages per segment.
    pub(super) live: BTreeMap<u64, usize>,
    /// Segments with something unreadable besides a torn tail.
    pub(super) damaged: Vec<u64>,
}

/// The log's segment numbers, oldest first (none when the directory does not exist).
pub(super) fn segment_seqs(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let name = e?.file_name();
                if let Some(seq) = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".log"))
                    .and_then(|n| n.parse().ok())
                {
                    seqs.push(seq);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    seqs.sort_unstable();
    Ok(seqs)
}

pub(super) fn scan(dir: &Path) -> io::Result<Scan> {
    let seqs = segment_seqs(dir)?;
    let mut live: HashMap<String, Found> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut segs = BTreeMap::new();
    // Segments with something unreadable besides a torn tail: kept for the operator.
    let mut damaged = Vec::new();
    for seq in seqs {
        let data = match std::fs::read(dir.join(segment_name(seq))) {
            Ok(d) => d,
            // Deleted since the listing (inspecting a running relay): all of it was done.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        segs.insert(seq, 0);
        let mut pos = 0;
        while let Some((rec, n)) = parse_at(&data, pos) {
            match rec {
                Parsed::Message {
                    id,
                    envelope,
                    body_at,
                    body_len,
                } => match serde_json::from_slice::<Envelope>(envelope) {
                    Ok(envelope) => {
                        let loc = Loc {
                            seg: seq,
                            offset: body_at as u64,
                            len: body_len as u64,
                            record: pos as u64,
                        };
                        order.push(id.to_string());
                        live.insert(id.to_string(), Found { envelope, loc });
                    }
                    Err(e) => {
                        tracing::error!(queue_id = id, error = %e, segment = seq, "spool log: unreadable envelope, skipped");
                        damaged.push(seq);
                    }
                },
                Parsed::Done { id } => {
                    live.remove(id);
                }
            }
            pos += n;
        }
        // A valid record after the bad spot means damage, not a torn tail.
        if pos < data.len() && (pos + 1..data.len()).any(|p| parse_at(&data, p).is_some()) {
            tracing::error!(
                segment = seq,
                offset = pos,
                "spool log: damaged record in the middle of a segment; records after it are skipped"
            );
            damaged.push(seq);
        } else if pos < data.len() {
            // Normal after a crash mid-batch (never acknowledged) or a failed write.
            tracing::info!(
                segment = seq,
                offset = pos,
                bytes = data.len() - pos,
                "spool log: segment ends in an incomplete record, ignored"
            );
        }
    }
    let mut found = Vec::with_capacity(live.len());
    for id in order {
        if let Some(f) = live.remove(&id) {
            *segs.get_mut(&f.loc.seg).expect("segment listed") += 1;
            found.push(f);
        }
    }
    damaged.dedup();
    Ok(Scan {
        found,
        live: segs,
        damaged,
    })
}

/// Ids of the messages in the log that are not done, from the record headers only (no envelope
/// is parsed), without changing anything.
pub fn live_ids(log_dir: &Path) -> io::Result<Vec<String>> {
    let seqs = segment_seqs(log_dir)?;
    let mut live = std::collections::HashSet::new();
    for seq in seqs {
        let data = match std::fs::read(log_dir.join(segment_name(seq))) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut pos = 0;
        while let Some((rec, n)) = parse_at(&data, pos) {
            match rec {
                Parsed::Message { id, .. } => {
                    live.insert(id.to_string());
                }
                Parsed::Done { id } => {
                    live.remove(id);
                }
            }
            pos += n;
        }
    }
    Ok(live.into_iter().collect())
}

/// Messages in the log of `data_dir/spool/log` that are not done, without changing anything.
pub fn inspect(log_dir: &Path, bodies: bool) -> io::Result<Vec<(Envelope, Vec<u8>)>> {
    let found = scan(log_dir)?.found;
    let mut out = Vec::with_capacity(found.len());
    if !bodies {
        return Ok(found
            .into_iter()
            .map(|f| (f.envelope, Vec::new()))
            .collect());
    }
    for f in found {
        let file = match File::open(log_dir.join(segment_name(f.loc.seg))) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut buf = vec![0; f.loc.len as usize];
        file.read_exact_at(&mut buf, f.loc.offset)?;
        out.push((f.envelope, buf));
    }
    Ok(out)
}
