use std::net::IpAddr;

use super::*;
use crate::inbound::anvil::ClientLimits;

const BUDGET: Duration = Duration::from_secs(10);

fn net(s: &str) -> Network {
    Network::of(s.parse::<IpAddr>().unwrap(), 24, 48)
}

fn anvil() -> Arc<Anvil> {
    Anvil::new(ClientLimits {
        sessions: 0,
        connection_rate: 0,
        message_rate: 0,
        network_sessions: 0,
        network_prefix_v4: 24,
        network_prefix_v6: 48,
    })
}

fn was_shed(p: &Arc<PreAuth>) -> bool {
    // `notify_one` left a permit: the session's wait would end at once.
    let fut = p.shed();
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    fut.as_mut().poll(&mut cx).is_ready()
}

#[test]
fn unauthenticated_sessions_never_hold_the_reserve() {
    // 10 slots, 4 reserved: pre-auth sessions hold at most 6.
    let a = anvil();
    let s = Slots::new(10, 4, BUDGET);
    let t0 = Instant::now();
    let mut held: Vec<Slot> = (0..6)
        .map(|_| s.admit(net("192.0.2.1"), false, false, t0, &a).unwrap())
        .map(|(slot, shed)| {
            assert!(!shed);
            slot
        })
        .collect();
    assert_eq!(s.preauth(), 6);
    // No AUTH on this listener: nothing to shed for, turned away.
    assert!(s.admit(net("198.51.100.1"), false, false, t0, &a).is_none());
    // One authenticates: it leaves the pre-auth share, so another may come in.
    held[0].authenticated();
    assert_eq!(s.preauth(), 5);
    let (slot, shed) = s.admit(net("198.51.100.1"), false, false, t0, &a).unwrap();
    assert!(!shed);
    held.push(slot);
    // Trusted clients take the reserve without shedding anyone.
    for _ in 0..3 {
        let (slot, shed) = s.admit(net("10.0.0.1"), true, false, t0, &a).unwrap();
        assert!(!shed);
        held.push(slot);
    }
    assert_eq!(s.in_use(), 10);
    assert!(s.stressed());
    drop(held.split_off(5));
    assert_eq!(s.in_use(), 5);
    assert!(!s.stressed());
}

#[test]
fn a_newcomer_on_an_auth_listener_sheds_a_preauth_session() {
    let a = anvil();
    let s = Slots::new(4, 1, BUDGET);
    let t0 = Instant::now();
    let flood: Vec<Slot> = (0..3)
        .map(|_| s.admit(net("192.0.2.1"), false, true, t0, &a).unwrap().0)
        .collect();
    let (user, shed) = s.admit(net("203.0.113.9"), false, true, t0, &a).unwrap();
    assert!(shed, "the pre-auth share was full");
    let shed_count = flood
        .iter()
        .filter(|f| was_shed(&f.shed_notice().unwrap()))
        .count();
    assert_eq!(shed_count, 1);
    // The victim's slot still counts until it has closed.
    assert_eq!(s.in_use(), 4);
    assert_eq!(s.preauth(), 3);
    drop(user);
    drop(flood);
    assert_eq!((s.in_use(), s.preauth()), (0, 0));
}

#[test]
fn authenticated_and_trusted_sessions_are_never_shed() {
    let a = anvil();
    let s = Slots::new(3, 1, BUDGET);
    let t0 = Instant::now();
    let (mut user, _) = s.admit(net("203.0.113.9"), false, true, t0, &a).unwrap();
    user.authenticated();
    let (_trusted, _) = s.admit(net("10.0.0.1"), true, false, t0, &a).unwrap();
    let (_flood, _) = s.admit(net("192.0.2.1"), false, true, t0, &a).unwrap();
    assert_eq!(s.in_use(), 3);
    // Full: the only pre-auth session goes, for a trusted newcomer too.
    let (_t2, shed) = s.admit(net("10.0.0.2"), true, false, t0, &a).unwrap();
    assert!(shed);
    assert!(user.shed_notice().is_none());
    // Nothing pre-auth is left: the next one is turned away.
    assert!(s.admit(net("192.0.2.2"), false, true, t0, &a).is_none());
    assert!(s.admit(net("10.0.0.3"), true, false, t0, &a).is_none());
}

#[test]
fn the_victim_is_late_then_from_the_most_crowded_network_then_idle_longest() {
    let a = anvil();
    let s = Slots::new(100, 1, BUDGET);
    let t0 = Instant::now();
    let admit = |ip: &str, at: Instant| s.admit(net(ip), false, true, at, &a).unwrap().0;
    // A network parking three sessions since t0, another one, and a user who just came.
    let parked: Vec<Slot> = (1..=3)
        .map(|i| admit(&format!("192.0.2.{i}"), t0))
        .collect();
    let lone = admit("198.51.100.1", t0);
    let t1 = t0 + Duration::from_secs(3);
    let user = admit("203.0.113.9", t1);
    // The lone session idles longest, but the crowded network goes first; within it, the one
    // idle longest (the others sent a command since).
    parked[0].touch_at(t0 + Duration::from_secs(1));
    parked[2].touch_at(t0 + Duration::from_secs(2));
    let v = s.victim(&s.lock(), t1, &a).unwrap();
    assert_eq!(v.id, parked[1].preauth.as_ref().unwrap().id);
    // A session checking a password is never the victim.
    parked[1].verifying(true);
    let v = s.victim(&s.lock(), t1, &a).unwrap();
    assert_ne!(v.id, parked[1].preauth.as_ref().unwrap().id);
    parked[1].verifying(false);
    // Past the budget comes first, whatever its network: the lone one (admitted at t0).
    let late = t0 + BUDGET;
    lone.touch_at(t1);
    user.touch_at(t1);
    let v = s.victim(&s.lock(), late, &a).unwrap();
    assert!(
        [&parked[0], &parked[1], &parked[2], &lone]
            .iter()
            .any(|p| p.preauth.as_ref().unwrap().id == v.id)
    );
    assert_ne!(
        v.id,
        user.preauth.as_ref().unwrap().id,
        "the user is within its budget"
    );
}

#[test]
fn fresh_sessions_do_not_make_their_network_a_target() {
    // Eight users of one office /24 log in at once; a flood parks single sessions on many /24s
    // since long ago. The users' network holds the most pre-auth sessions, but none settled.
    let a = anvil();
    let s = Slots::new(100, 1, BUDGET);
    let t0 = Instant::now();
    let flood: Vec<Slot> = (1..=5)
        .map(|i| {
            s.admit(net(&format!("192.0.{i}.1")), false, true, t0, &a)
                .unwrap()
                .0
        })
        .collect();
    let t1 = t0 + Duration::from_secs(2);
    let users: Vec<Slot> = (1..=8)
        .map(|i| {
            s.admit(net(&format!("203.0.113.{i}")), false, true, t1, &a)
                .unwrap()
                .0
        })
        .collect();
    // The flood kept its sessions busy with NOOP just now; the users are mid-handshake.
    for f in &flood {
        f.touch_at(t1);
    }
    let v = s.victim(&s.lock(), t1, &a).unwrap();
    let flood_ids: Vec<u64> = flood
        .iter()
        .map(|f| f.preauth.as_ref().unwrap().id)
        .collect();
    assert!(flood_ids.contains(&v.id), "a user was chosen");
    drop(users);
}

#[test]
fn reconnect_loops_make_their_network_a_target() {
    // A network that reconnected 50 times this minute loses its session before a lone user
    // that idles longer (both young, neither late).
    let a = anvil();
    let s = Slots::new(100, 1, BUDGET);
    let t0 = Instant::now();
    for i in 0..50u8 {
        drop(a.connect(IpAddr::from([192, 0, 2, i]), t0).unwrap());
    }
    let user = s.admit(net("203.0.113.9"), false, true, t0, &a).unwrap().0;
    let looper = s.admit(net("192.0.2.77"), false, true, t0, &a).unwrap().0;
    looper.touch_at(t0 + Duration::from_millis(500));
    let v = s
        .victim(&s.lock(), t0 + Duration::from_millis(600), &a)
        .unwrap();
    assert_eq!(v.id, looper.preauth.as_ref().unwrap().id);
    drop(user);
}

#[test]
fn reserve_is_smaller_than_max() {
    let a = anvil();
    let s = Slots::new(1, 5, BUDGET);
    assert!(
        s.admit(net("192.0.2.1"), false, false, Instant::now(), &a)
            .is_some()
    );
    let a = anvil();
    let s = Slots::new(0, 0, BUDGET);
    assert!(
        s.admit(net("10.0.0.1"), true, false, Instant::now(), &a)
            .is_some()
    );
}
