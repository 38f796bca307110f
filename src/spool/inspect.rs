//! Reading a queue without changing it: the offline `poolrelay queue` commands and tests, on a
//! stopped or running relay's data directory.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use super::{Envelope, log};

/// Every queued message under `data_dir` (envelope and bytes), read without changing anything:
/// for tests and for inspecting a stopped or running relay's queue.
pub fn inspect(data_dir: &Path) -> io::Result<Vec<(Envelope, Vec<u8>)>> {
    inspect_queue(data_dir, true)
}

/// `inspect` without the message bytes (memory stays small for a large queue).
pub fn inspect_envelopes(data_dir: &Path) -> io::Result<Vec<Envelope>> {
    Ok(inspect_queue(data_dir, false)?
        .into_iter()
        .map(|(e, _)| e)
        .collect())
}

fn inspect_queue(data_dir: &Path, bodies: bool) -> io::Result<Vec<(Envelope, Vec<u8>)>> {
    let spool = data_dir.join("spool");
    // The log first: a message moving to files is marked done in the log only after its
    // files exist, so reading in this order never misses it.
    let mut found: HashMap<String, (Envelope, Vec<u8>)> = log::inspect(&spool.join("log"), bodies)?
        .into_iter()
        .map(|(env, msg)| (env.id.clone(), (env, msg)))
        .collect();
    let entries = match std::fs::read_dir(spool.join("queue")) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(sorted(found)),
        Err(e) => return Err(e),
    };
    for e in entries {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "env") {
            let msg = if bodies {
                std::fs::read(path.with_extension("msg"))
            } else {
                std::fs::metadata(path.with_extension("msg")).map(|_| Vec::new())
            };
            // Either gone meanwhile (finished) or not complete yet.
            let (Ok(text), Ok(msg)) = (std::fs::read(&path), msg) else {
                continue;
            };
            if let Ok(env) = serde_json::from_slice::<Envelope>(&text) {
                found.insert(env.id.clone(), (env, msg));
            }
        }
    }
    Ok(sorted(found))
}

fn sorted(found: HashMap<String, (Envelope, Vec<u8>)>) -> Vec<(Envelope, Vec<u8>)> {
    let mut out: Vec<_> = found.into_values().collect();
    out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    out
}

/// Queued messages under `data_dir`, counted from file names and the log's record headers
/// (no envelope is parsed): cheap at a million.
pub fn count_queued(data_dir: &Path) -> io::Result<usize> {
    let spool = data_dir.join("spool");
    let queue = spool.join("queue");
    let mut count = match std::fs::read_dir(&queue) {
        Ok(rd) => {
            let mut n = 0;
            for e in rd {
                if e?.file_name().as_encoded_bytes().ends_with(b".env") {
                    n += 1;
                }
            }
            n
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    // A message in both places (a crash during its move) counts once: the files win.
    for id in log::live_ids(&spool.join("log"))? {
        if !queue.join(format!("{id}.env")).exists() {
            count += 1;
        }
    }
    Ok(count)
}
