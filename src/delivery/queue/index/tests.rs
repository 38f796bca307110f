use super::ids::{ODD, canonical};
use super::*;

fn env(id: &str, domain: &str, next: u64) -> Envelope {
    let mut e = crate::spool::test_envelope(id);
    e.recipients[0].address = format!("u@{domain}");
    e.recipients[0].next_attempt = next;
    e
}

fn none(_: &str) -> String {
    "unknown".into()
}

fn id(n: u32) -> String {
    format!("{:018X}", 0x1000 + n as u128)
}

#[test]
fn ids_pack_and_unpack() {
    let mut ids = Ids::default();
    let real = crate::spool::Spool::new_id();
    let q = ids.pack(&real);
    assert_eq!(q & ODD, 0);
    assert_eq!(ids.name(q), real);
    let odd = ids.pack("a-test-id");
    assert_eq!(ids.name(odd), "a-test-id");
    assert_eq!(ids.pack("a-test-id"), odd);
    assert_eq!(ids.find("nope"), None);
    assert!(
        canonical("0123456789abcdef01").is_none(),
        "lower case is not canonical"
    );
}

/// One destination with a huge due backlog and a slot limit of 2 cannot take the slots of
/// another destination: they take turns.
#[test]
fn destinations_take_turns_within_the_limits() {
    let mut ix = Index::new(4, 2);
    for n in 0..100 {
        ix.insert(&env(&id(n), "down.test", 10), false, &none);
    }
    for n in 100..103 {
        ix.insert(&env(&id(n), "up.test", 20), false, &none);
    }
    ix.promote(30);
    let mut got = Vec::new();
    while let Some(q) = ix.next_active() {
        got.push(q);
    }
    assert_eq!(got.len(), 4, "the active limit");
    let up = got.iter().filter(|&&q| q >= 0x1000 + 100).count();
    assert_eq!(up, 2, "the other destination got its share: {got:X?}");
    // Oldest first within a destination.
    assert_eq!(got[0], 0x1000);
    // An attempt to up.test ends: its slot goes to up.test's next message.
    let (a, _) = (got[1], ());
    ix.finished(a, After::Gone, &none);
    assert_eq!(ix.next_active(), Some(0x1000 + 102));
    assert_eq!(ix.next_active(), None, "full again");
    let ready = ix.entries.values().filter(|e| e.place == Place::Ready);
    assert_eq!(ready.count(), 98);
}

#[test]
fn waiting_messages_become_ready_in_due_order_and_can_be_hurried() {
    let mut ix = Index::new(10, 10);
    ix.insert(&env(&id(1), "a.test", 50), false, &none);
    ix.insert(&env(&id(2), "a.test", 40), false, &none);
    ix.insert(&env(&id(3), "a.test", 100), true, &none);
    assert!(!ix.insert(&env(&id(2), "a.test", 40), false, &none), "once");
    assert_eq!(ix.next_due(), Some(40));
    ix.promote(45);
    assert_eq!(ix.next_active(), Some(0x1002));
    assert_eq!(ix.next_active(), None);
    assert!(ix.hurry(0x1001, 45));
    ix.promote(45);
    assert_eq!(ix.next_active(), Some(0x1001));
    assert_eq!(ix.next_due(), None, "the held one is in no queue");
    // Rescheduled after its attempt.
    let mut later = env(&id(1), "a.test", 500);
    later.recipients[0].attempts = 1;
    ix.finished(0x1001, After::Pending(&later, None, Written::Saved), &none);
    assert_eq!(ix.next_due(), Some(500));
    assert_eq!(ix.active, 1);
    // A taken message's stale ready copy is skipped.
    ix.promote(600);
    assert!(ix.take_waiting(0x1001));
    assert_eq!(ix.next_active(), None);
    ix.put_back(0x1001, false, Some(600));
    ix.promote(600);
    assert_eq!(ix.next_active(), Some(0x1001));
}

/// A message for a busy destination and a free one waits in both ready queues: the free
/// one's turn starts it (and takes the slot), its copy in the busy queue is skipped.
#[test]
fn a_message_for_several_destinations_waits_in_each_queue() {
    let mut ix = Index::new(10, 1);
    ix.insert(&env(&id(0), "down.test", 10), false, &none);
    let mut both = env(&id(1), "down.test", 10);
    let mut up = both.recipients[0].clone();
    up.address = "v@up.test".into();
    both.recipients.push(up);
    ix.insert(&both, false, &none);
    ix.promote(20);
    assert_eq!(ix.next_active(), Some(0x1000), "down.test's only slot");
    assert_eq!(ix.next_active(), Some(0x1001), "up.test's turn");
    assert_eq!(ix.next_active(), None);
    let up_n = ix.names.find("up.test").unwrap();
    assert_eq!(ix.entries[&0x1001].dest, up_n, "up.test's slot");
    assert_eq!(ix.entries[&0x1001].domains().count(), 2);
    // The deferral was recorded in place twice, then saved.
    let mut later = both.clone();
    later.recipients[0].next_attempt = 100;
    later.recipients[1].next_attempt = 100;
    ix.finished(
        0x1001,
        After::Pending(&later, None, Written::InPlace),
        &none,
    );
    assert_eq!(ix.entries[&0x1001].unsaved, 1);
    ix.hurry(0x1001, 20);
    ix.promote(20);
    assert_eq!(ix.next_active(), Some(0x1001), "up.test again");
    ix.finished(
        0x1001,
        After::Pending(&later, None, Written::InPlace),
        &none,
    );
    assert_eq!(ix.entries[&0x1001].unsaved, 2);
    ix.finished(0x1000, After::Gone, &none);
    ix.hurry(0x1001, 20);
    ix.promote(20);
    assert_eq!(ix.next_active(), Some(0x1001));
    assert_eq!(ix.next_active(), None, "one attempt at a time");
    ix.finished(0x1001, After::Pending(&later, None, Written::Saved), &none);
    assert_eq!(ix.entries[&0x1001].unsaved, 0);
    assert_eq!(ix.active, 0);
}

/// The in-memory cost per queued message (entry, timer, hash table), measured: the target
/// is at most 300 bytes. Run with `--nocapture` to see the figure.
#[test]
fn an_index_entry_is_small() {
    assert_eq!(std::mem::size_of::<Entry>(), 32);
    let n = 200_000u32;
    let before = allocated();
    let mut ix = Index::new(100, 10);
    let mut e = env(&id(0), "example.com", 100);
    e.recipients[0].last_reply = Some(crate::spool::RemoteReply {
        code: 451,
        status: "4.4.1".into(),
        text: "connection refused".into(),
        host: "mx.example.com".into(),
        addr: "127.0.0.1:25".into(),
        source_ip: "127.0.0.10".into(),
    });
    for n in 0..n {
        e.id = id(n);
        e.recipients[0].next_attempt = 100 + (n % 1000) as u64;
        ix.insert(&e, false, &|_| "example".into());
    }
    let per = (allocated() - before) / n as usize;
    println!("index: {per} bytes per queued message");
    assert!(per <= 300, "{per} bytes per entry");
    assert_eq!(ix.len(), n as usize);
}

/// Bytes this thread has allocated and not freed (other tests run in parallel).
fn allocated() -> usize {
    COUNTED.with(|c| c.get()) as usize
}

thread_local! {
    static COUNTED: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

/// The system allocator, counting per thread (the lib's unit tests only).
struct Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

fn count(n: isize) {
    // try_with: no counting while the thread's locals are torn down.
    let _ = COUNTED.try_with(|c| c.set(c.get() + n));
}

// SAFETY: every call goes to the system allocator unchanged; only sizes are counted.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        count(l.size() as isize);
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        count(-(l.size() as isize));
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        count(new as isize - l.size() as isize);
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}
