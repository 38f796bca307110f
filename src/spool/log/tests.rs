use super::*;

fn env(id: &str) -> Envelope {
    crate::spool::test_envelope(id)
}

fn tempdir(name: &str) -> PathBuf {
    crate::util::test_dir::tempdir(&format!("log-{name}"))
}

fn ids(found: &[Found]) -> Vec<&str> {
    found.iter().map(|f| f.envelope.id.as_str()).collect()
}

fn segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn appended_messages_come_back_unless_done() {
    let dir = tempdir("recover");
    let (log, found) = Log::open(&dir).unwrap();
    assert!(found.is_empty());
    for id in ["A", "B", "C"] {
        let loc = log
            .append(&env(id), id.repeat(100).as_bytes())
            .await
            .unwrap();
        assert_eq!(loc.len, 100);
    }
    assert!(log.done("B"));
    assert!(!log.done("B"), "done once");
    assert_eq!(log.read("C").unwrap(), b"C".repeat(100));
    drop(log);
    let (log, found) = Log::open(&dir).unwrap();
    assert_eq!(ids(&found), ["A", "C"]);
    assert_eq!(log.read("A").unwrap(), b"A".repeat(100));
    assert_eq!(log.live_count(), 2);
    assert_eq!(inspect(&dir, true).unwrap().len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A crash mid-batch leaves a torn record at the end of a segment: everything before it
/// comes back, and the next run writes a new segment.
#[tokio::test]
async fn a_torn_tail_is_ignored() {
    let dir = tempdir("torn");
    let (log, _) = Log::open(&dir).unwrap();
    log.append(&env("A"), b"aaaa").await.unwrap();
    log.append(&env("B"), b"bbbb").await.unwrap();
    drop(log);
    let seg = dir.join(segment_name(1));
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let (log, found) = Log::open(&dir).unwrap();
    assert_eq!(ids(&found), ["A"]);
    assert!(
        segments(&dir).iter().all(|n| !n.starts_with("damaged-")),
        "a torn tail is not damage"
    );
    log.append(&env("C"), b"cccc").await.unwrap();
    drop(log);
    let (_log, found) = Log::open(&dir).unwrap();
    assert_eq!(ids(&found), ["A", "C"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A bad record with good ones after it is damage, not a torn tail: recovery keeps what it
/// can read and a hard-linked copy of the segment for the operator, as it does for a
/// record whose envelope it cannot read.
#[tokio::test]
async fn damaged_segments_are_kept_for_the_operator() {
    let dir = tempdir("damaged");
    let (log, _) = Log::open(&dir).unwrap();
    let a = log.append(&env("A"), b"aaaa").await.unwrap();
    log.append(&env("B"), b"bbbb").await.unwrap();
    drop(log);
    let seg = dir.join(segment_name(1));
    let mut data = std::fs::read(&seg).unwrap();
    data[a.offset as usize] ^= 0xff; // A's body: its CRC no longer matches
    std::fs::write(&seg, &data).unwrap();
    let (log, found) = Log::open(&dir).unwrap();
    assert!(
        ids(&found).is_empty(),
        "nothing after the damage is trusted"
    );
    assert!(dir.join(format!("damaged-{}", segment_name(1))).exists());
    drop(log);

    let dir2 = tempdir("badenv");
    let (log, _) = Log::open(&dir2).unwrap();
    log.append(&env("A"), b"aaaa").await.unwrap();
    drop(log);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir2.join(segment_name(1)))
        .unwrap();
    let (rec, _) = message_record("X", b"{not an envelope", b"x");
    std::io::Write::write_all(&mut f, &rec).unwrap();
    drop(f);
    let (_log, found) = Log::open(&dir2).unwrap();
    assert_eq!(ids(&found), ["A"]);
    assert!(dir2.join(format!("damaged-{}", segment_name(1))).exists());
    for d in [dir, dir2] {
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// A full disk (here /dev/full as the segment): the batch fails, nothing is recorded, and
/// the next batch goes to a new segment.
#[test]
fn a_failed_write_fails_the_batch_and_the_next_one_starts_a_new_segment() {
    let dir = tempdir("full");
    let state = Arc::new(Mutex::new(State::default()));
    let mut w = Writer::start(&dir, 1, &state).unwrap();
    w.file = File::options().write(true).open("/dev/full").unwrap();
    let mut buf = Vec::new();
    let op = |id: &str| Op::Done {
        record: record(KIND_DONE, &[id.as_bytes()]),
    };
    let (rec, body_at) = message_record("A", &serde_json::to_vec(&env("A")).unwrap(), b"x");
    let (reply, _answer) = tokio::sync::oneshot::channel();
    let msg = Op::Message {
        id: "A".into(),
        record: rec,
        body_at,
        reply,
    };
    let err = w.try_write(&[msg, op("Z")], &mut buf, true).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
    assert!(w.broken);
    assert_eq!(w.len, 0);
    let (rec, body_at) = message_record("B", &serde_json::to_vec(&env("B")).unwrap(), b"y");
    let (reply, _answer) = tokio::sync::oneshot::channel();
    let locs = w
        .try_write(
            &[Op::Message {
                id: "B".into(),
                record: rec,
                body_at,
                reply,
            }],
            &mut buf,
            true,
        )
        .unwrap();
    assert_eq!(locs[0].seg, 2);
    assert_eq!(state.lock().unwrap().current, 2);
    let found = scan(&dir).unwrap().found;
    assert_eq!(ids(&found), ["B"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Segments go oldest first: a finished segment waits while an older one still holds a
/// message (its done records would otherwise vanish before that message's).
#[tokio::test]
async fn finished_segments_are_deleted_oldest_first() {
    let dir = tempdir("order");
    let (log, _) = Log::open_with(&dir, 1).unwrap();
    let a = log.append(&env("A"), b"a").await.unwrap();
    let b = log.append(&env("B"), b"b").await.unwrap();
    assert_eq!((a.seg, b.seg), (1, 2), "one segment per batch here");
    log.done("B");
    let wait = |want: Vec<String>| {
        for _ in 0..500 {
            if segments(&dir) == want {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("segments {:?}, want {want:?}", segments(&dir));
    };
    // The done record went to segment 3; segment 2 is finished but 1 is not.
    wait(vec![segment_name(1), segment_name(2), segment_name(3)]);
    log.done("A");
    wait(vec![segment_name(3)]);
    drop(log);
    let (_log, found) = Log::open(&dir).unwrap();
    assert!(found.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
