use super::*;

fn envelope() -> Envelope {
    test_envelope("")
}

#[tokio::test]
async fn commit_then_recover_and_debris_is_removed() {
    let dir = tempdir();
    let (spool, mut rx) = Spool::open(&dir).unwrap();
    let id = Spool::new_id();
    let mut w = spool.writer(&id).await.unwrap();
    w.write(b"Subject: x\r\n\r\nbody\r\n").await.unwrap();
    let env = w.commit(envelope()).await.unwrap();
    assert_eq!(env.size, 20);
    assert_eq!(rx.recv().await.unwrap().id, id);

    // An aborted writer leaves nothing; debris in tmp and a lone .msg are cleaned up.
    let w2 = spool.writer(&Spool::new_id()).await.unwrap();
    drop(w2);
    std::fs::write(dir.join("spool/tmp/X.msg"), b"half").unwrap();
    std::fs::write(dir.join("spool/queue/Y.msg"), b"half").unwrap();
    let (spool2, _rx) = Spool::open(&dir).unwrap();
    let rec = spool2.recover().unwrap();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].id, id);
    assert!(!dir.join("spool/queue/Y.msg").exists());
    assert_eq!(std::fs::read_dir(dir.join("spool/tmp")).unwrap().count(), 0);

    spool2.remove(&id).await.unwrap();
    assert_eq!(spool2.queued_count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn large_messages_stream_to_disk_and_small_ones_wait_for_finish() {
    let dir = tempdir();
    let (spool, _rx) = Spool::open(&dir).unwrap();
    let small_id = Spool::new_id();
    let mut small = spool.writer(&small_id).await.unwrap();
    small.write(b"Subject: s\r\n\r\nhi\r\n").await.unwrap();
    let tmp = dir.join("spool/tmp");
    let on_disk = |id: &str| {
        std::fs::metadata(tmp.join(format!("{id}.msg")))
            .unwrap()
            .len()
    };
    assert!(
        !tmp.join(format!("{small_id}.msg")).exists(),
        "a small message stays in memory (then goes to the log)"
    );
    let big_id = Spool::new_id();
    let mut big = spool.writer(&big_id).await.unwrap();
    let chunk = vec![b'x'; 40_000];
    for _ in 0..5 {
        big.write(&chunk).await.unwrap();
    }
    assert!(on_disk(&big_id) >= 120_000, "streamed before finish");
    let env = big.commit(envelope()).await.unwrap();
    assert_eq!(env.size, 200_000);
    assert_eq!(
        std::fs::read(spool.message_path(&big_id)).unwrap().len(),
        200_000
    );
    let env = small.commit(envelope()).await.unwrap();
    assert!(
        !spool.message_path(&small_id).exists(),
        "in the log, not a file"
    );
    assert_eq!(env.size, 18);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    let queued = inspect(&dir).unwrap();
    assert_eq!(queued.len(), 2);
    let small_q = queued.iter().find(|(e, _)| e.id == small_id).unwrap();
    assert_eq!(small_q.1, b"Subject: s\r\n\r\nhi\r\n");
    assert!(matches!(spool.body(&small_id).await.unwrap(), Body::Memory(b) if b.len() == 18));
    assert!(matches!(spool.body(&big_id).await.unwrap(), Body::File(_)));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A log message whose envelope changes moves to files; the log copy is done. After a
/// crash in the middle of the move (both copies), recovery takes the files.
#[tokio::test]
async fn a_log_message_moves_to_files_when_its_envelope_changes() {
    let dir = tempdir();
    let (spool, _rx) = Spool::open(&dir).unwrap();
    let a = spool
        .store(
            Envelope {
                id: Spool::new_id(),
                ..envelope()
            },
            b"Subject: a\r\n\r\na\r\n",
        )
        .await
        .unwrap();
    let b = spool
        .store(
            Envelope {
                id: Spool::new_id(),
                ..envelope()
            },
            b"Subject: b\r\n\r\nb\r\n",
        )
        .await
        .unwrap();
    let mut a2 = a.clone();
    a2.recipients[0].attempts = 1;
    spool.save_envelope(&a2).await.unwrap();
    assert!(spool.message_path(&a.id).exists());
    assert!(!spool.log.contains(&a.id));
    assert!(spool.log.contains(&b.id));
    assert_eq!(spool.queued_count(), 2);
    // The move's files again, as if the crash came before the done record was written.
    let env_file = spool.envelope_path(&b.id);
    let mut b2 = b.clone();
    b2.recipients[0].attempts = 7;
    std::fs::write(spool.message_path(&b.id), b"Subject: b\r\n\r\nb\r\n").unwrap();
    std::fs::write(&env_file, serde_json::to_vec(&b2).unwrap()).unwrap();
    drop(spool);

    let (spool, _rx) = Spool::open(&dir).unwrap();
    let rec = spool.recover().unwrap();
    assert_eq!(rec.len(), 2, "{rec:?}");
    assert_eq!(rec[0].id, a.id);
    assert_eq!(rec[0].recipients[0].attempts, 1);
    assert_eq!(rec[1].id, b.id);
    assert_eq!(rec[1].recipients[0].attempts, 7, "the files win");
    assert!(!spool.log.contains(&b.id));
    for id in [&a.id, &b.id] {
        spool.remove(id).await.unwrap();
    }
    assert_eq!(spool.queued_count(), 0);
    assert!(inspect(&dir).unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One message stuck in its first attempt must not keep every later log segment: past
/// MAX_PINNED_SEGMENTS finished ones behind it, it moves to files and they are deleted.
#[tokio::test]
async fn a_message_pinning_old_segments_moves_to_files() {
    let dir = tempdir();
    // Every batch fills a segment: one message per segment.
    let (spool, _rx) = Spool::open_with(&dir, Some(1)).unwrap();
    let store = |body: &'static [u8]| {
        let spool = spool.clone();
        async move {
            spool
                .store(
                    Envelope {
                        id: Spool::new_id(),
                        ..envelope()
                    },
                    body,
                )
                .await
                .unwrap()
        }
    };
    let stuck = store(b"Subject: stuck\r\n\r\nx\r\n").await;
    spool.compact().await;
    assert!(!spool.message_path(&stuck.id).exists(), "nothing to do yet");
    for _ in 0..(MAX_PINNED_SEGMENTS + 2) {
        let e = store(b"Subject: quick\r\n\r\ny\r\n").await;
        spool.remove(&e.id).await.unwrap();
    }
    let log_dir = dir.join("spool/log");
    let segments = || std::fs::read_dir(&log_dir).unwrap().count();
    assert!(
        segments() > MAX_PINNED_SEGMENTS,
        "kept alive by the stuck one"
    );
    spool.compact().await;
    assert!(spool.message_path(&stuck.id).exists());
    assert!(!spool.log.contains(&stuck.id));
    assert!(segments() <= 2, "{} segments left", segments());
    // Its delivery goes on as before: the files hold it; removal removes them.
    assert!(matches!(
        spool.body(&stuck.id).await.unwrap(),
        Body::File(_)
    ));
    let q = inspect(&dir).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].1, b"Subject: stuck\r\n\r\nx\r\n");
    spool.remove(&stuck.id).await.unwrap();
    assert!(inspect(&dir).unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Recovery runs while the relay works: what was started since the spool was opened is
/// queued already and skipped; envelopes are read back from the log or the files.
#[tokio::test]
async fn recovery_skips_new_messages_and_envelopes_are_read_back() {
    let dir = tempdir();
    let (spool, _rx) = Spool::open(&dir).unwrap();
    let mut env = envelope();
    env.id = Spool::new_id();
    let old = spool
        .store(env.clone(), b"Subject: old\r\n\r\n")
        .await
        .unwrap();
    let mut moved = old.clone();
    moved.recipients[0].attempts = 3;
    spool.save_envelope(&moved).await.unwrap();
    drop(spool);
    let (spool, _rx) = Spool::open(&dir).unwrap();
    env.id = Spool::new_id();
    let new = spool.store(env, b"Subject: new\r\n\r\n").await.unwrap();
    let mut batches = Vec::new();
    let n = spool.recover_each(1, |b| batches.push(b)).unwrap();
    assert_eq!(n, 1);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0][0].id, old.id);
    assert_eq!(
        spool.envelope(&old.id).await.unwrap().recipients[0].attempts,
        3
    );
    assert_eq!(
        spool.envelope(&new.id).await.unwrap().id,
        new.id,
        "from the log"
    );
    assert!(spool.message_path(&old.id).exists());
    let gone = spool.envelope("000000000000000000").await.unwrap_err();
    assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A deferral recorded in place leaves the envelope's bytes alone; its next attempt (the
/// file's mtime) survives a restart. The offline count reads no envelope.
#[tokio::test]
async fn a_deferral_in_place_writes_no_envelope_and_survives_a_restart() {
    let dir = tempdir();
    let (spool, _rx) = Spool::open(&dir).unwrap();
    let mut env = test_envelope(&Spool::new_id());
    let logged = test_envelope(&Spool::new_id());
    env = spool.store(env, b"Subject: a\r\n\r\na\r\n").await.unwrap();
    let logged = spool
        .store(logged, b"Subject: b\r\n\r\nb\r\n")
        .await
        .unwrap();
    assert!(
        !spool
            .defer_in_place(&env.id, now_unix() + 60)
            .await
            .unwrap(),
        "in the log: the first deferral must save"
    );
    env.recipients[0].attempts = 1;
    env.recipients[0].next_attempt = now_unix() + 60;
    spool.save_envelope(&env).await.unwrap();
    let path = spool.envelope_path(&env.id);
    let bytes = std::fs::read(&path).unwrap();
    let later = now_unix() + 3600;
    assert!(spool.defer_in_place(&env.id, later).await.unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "not rewritten");
    assert_eq!(count_queued(&dir).unwrap(), 2);
    drop(spool);

    let (spool, _rx) = Spool::open(&dir).unwrap();
    let rec = spool.recover().unwrap();
    let got = rec.iter().find(|e| e.id == env.id).unwrap();
    assert_eq!(got.recipients[0].next_attempt, later);
    assert_eq!(got.recipients[0].attempts, 1, "the count last saved");
    let other = rec.iter().find(|e| e.id == logged.id).unwrap();
    assert_eq!(other.recipients[0].next_attempt, 0, "untouched");
    spool.remove(&logged.id).await.unwrap();
    assert_eq!(count_queued(&dir).unwrap(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ids_are_unique_and_sortable() {
    let a = Spool::new_id();
    let b = Spool::new_id();
    assert_ne!(a, b);
    assert_eq!(a.len(), 18);
}

pub(super) fn tempdir() -> PathBuf {
    crate::util::test_dir::tempdir("spool")
}
