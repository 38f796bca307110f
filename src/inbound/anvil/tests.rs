use super::*;

fn anvil(sessions: usize, connection_rate: u32, message_rate: u32) -> Arc<Anvil> {
    Anvil::new(ClientLimits {
        sessions,
        connection_rate,
        message_rate,
        network_sessions: 0,
        network_prefix_v4: 24,
        network_prefix_v6: 48,
    })
}

fn per_network(n: usize) -> Arc<Anvil> {
    Anvil::new(ClientLimits {
        network_sessions: n,
        ..anvil(0, 0, 0).limits
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn ipv6_is_grouped_per_64_and_ipv4_per_address() {
    assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
    assert_eq!(
        client_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
        ip("2001:db8:1:2::")
    );
    assert_ne!(client_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
    // Mapped IPv4 counts as that IPv4 address, not as the ::ffff:0:0/64.
    assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    assert_ne!(
        client_key(ip("::ffff:192.0.2.7")),
        client_key(ip("::ffff:192.0.2.8"))
    );
}

#[test]
fn concurrent_sessions_per_client_and_per_64() {
    let a = anvil(2, 0, 0);
    let now = Instant::now();
    let t1 = a.connect(ip("2001:db8::1"), now).unwrap();
    let _t2 = a.connect(ip("2001:db8::2"), now).unwrap();
    let (r, log) = a.connect(ip("2001:db8::3"), now).err().unwrap();
    assert_eq!((r, log), (Refusal::Sessions, Some(0)));
    // Another /64 and another IPv4 address are separate clients.
    let _other = a.connect(ip("2001:db8:0:1::1"), now).unwrap();
    let _v4 = a.connect(ip("192.0.2.1"), now).unwrap();
    drop(t1);
    let _t3 = a.connect(ip("2001:db8::3"), now).unwrap();
}

#[test]
fn connection_rate_window_expires() {
    let a = anvil(0, 3, 0);
    let t0 = Instant::now();
    for _ in 0..3 {
        drop(a.connect(ip("192.0.2.1"), t0).unwrap());
    }
    let (r, _) = a.connect(ip("192.0.2.1"), t0).err().unwrap();
    assert_eq!(r, Refusal::ConnectionRate);
    let almost = t0 + WINDOW - Duration::from_millis(1);
    assert!(a.connect(ip("192.0.2.1"), almost).is_err());
    assert!(a.connect(ip("192.0.2.2"), almost).is_ok());
    // A new window opens a minute after the first.
    assert!(a.connect(ip("192.0.2.1"), t0 + WINDOW).is_ok());
}

#[test]
fn message_rate_window_expires() {
    let a = anvil(0, 0, 2);
    let t0 = Instant::now();
    assert!(a.message(ip("192.0.2.1"), t0).is_ok());
    assert!(a.message(ip("192.0.2.1"), t0).is_ok());
    let (r, _) = a.message(ip("192.0.2.1"), t0).unwrap_err();
    assert_eq!(r, Refusal::MessageRate);
    assert!(a.message(ip("192.0.2.1"), t0 + WINDOW).is_ok());
    // Off: never refused.
    let off = anvil(0, 0, 0);
    for _ in 0..1000 {
        assert!(off.message(ip("192.0.2.1"), t0).is_ok());
    }
}

#[test]
fn refusals_are_logged_once_a_minute_with_the_count_left_out() {
    let a = anvil(1, 0, 0);
    let t0 = Instant::now();
    let _held = a.connect(ip("192.0.2.1"), t0).unwrap();
    assert_eq!(a.connect(ip("192.0.2.1"), t0).err().unwrap().1, Some(0));
    for _ in 0..5 {
        assert_eq!(a.connect(ip("192.0.2.1"), t0).err().unwrap().1, None);
    }
    let later = t0 + WINDOW;
    assert_eq!(a.connect(ip("192.0.2.1"), later).err().unwrap().1, Some(5));
}

#[test]
fn networks_are_ipv4_24_and_ipv6_48_by_default() {
    let net = |s: &str| Network::of(ip(s), 24, 48).to_string();
    assert_eq!(net("192.0.2.77"), "192.0.2.0/24");
    assert_eq!(net("::ffff:192.0.2.77"), "192.0.2.0/24");
    assert_eq!(net("2001:db8:1:2:3::9"), "2001:db8:1::/48");
    assert_eq!(net("2001:db8:1:ffff::1"), "2001:db8:1::/48");
    assert_eq!(
        Network::of(ip("10.1.2.3"), 32, 64).to_string(),
        "10.1.2.3/32"
    );
    assert_eq!(Network::of(ip("10.1.2.3"), 8, 64).to_string(), "10.0.0.0/8");
}

#[test]
fn sessions_per_network_across_many_addresses_and_64s() {
    let a = per_network(3);
    let now = Instant::now();
    // Three addresses of one /24, then a fourth is refused; another /24 is not.
    let mut held: Vec<_> = (1..=3u8)
        .map(|i| a.connect(IpAddr::from([192, 0, 2, i]), now).unwrap())
        .collect();
    let (r, log) = a.connect(ip("192.0.2.200"), now).err().unwrap();
    assert_eq!(
        r,
        Refusal::NetworkSessions(Network::of(ip("192.0.2.0"), 24, 48))
    );
    assert_eq!(log, Some(0));
    let reply = r.reply("relay.test", ip("192.0.2.200"));
    assert_eq!((reply.code, reply.status.as_str()), (421, "4.7.0"));
    assert!(
        reply.text.contains("network 192.0.2.0/24"),
        "{}",
        reply.text
    );
    let _other = a.connect(ip("192.0.3.1"), now).unwrap();
    // IPv6: three /64s of one /48 fill it; the next /64 there is refused.
    let _v6: Vec<_> = (1..=3u16)
        .map(|i| {
            a.connect(format!("2001:db8:7:{i}::1").parse().unwrap(), now)
                .unwrap()
        })
        .collect();
    assert!(a.connect(ip("2001:db8:7:99::1"), now).is_err());
    assert!(a.connect(ip("2001:db8:8::1"), now).is_ok());
    // A session that authenticates leaves room in its network; one that ends too.
    held[0].authenticated();
    let fourth = a.connect(ip("192.0.2.4"), now).unwrap();
    assert!(a.connect(ip("192.0.2.5"), now).is_err());
    held[0].authenticated(); // twice: no double give-back
    assert!(a.connect(ip("192.0.2.5"), now).is_err());
    drop(held.remove(0));
    assert!(
        a.connect(ip("192.0.2.5"), now).is_err(),
        "it had left already"
    );
    drop(fourth);
    assert!(a.connect(ip("192.0.2.5"), now).is_ok());
}

#[test]
fn network_connection_rates_slide_over_a_minute() {
    let a = per_network(0);
    let t0 = Instant::now();
    for i in 0..30u8 {
        drop(a.connect(IpAddr::from([192, 0, 2, i]), t0).unwrap());
    }
    drop(a.connect(ip("198.51.100.1"), t0).unwrap());
    let (busy, quiet, unknown) = (
        Network::of(ip("192.0.2.0"), 24, 48),
        Network::of(ip("198.51.100.0"), 24, 48),
        Network::of(ip("203.0.113.0"), 24, 48),
    );
    let rates = |now| {
        let mut m: HashMap<Network, u64> = [(busy, 9), (quiet, 9), (unknown, 9)].into();
        a.network_rates(&mut m, now);
        (m[&busy], m[&quiet], m[&unknown])
    };
    assert_eq!(rates(t0), (30, 1, 0));
    // A new window opens: the old one still counts for the part within a minute.
    drop(
        a.connect(ip("192.0.2.1"), t0 + WINDOW + WINDOW / 2)
            .unwrap(),
    );
    assert_eq!(rates(t0 + WINDOW + WINDOW / 2), (16, 0, 0));
    assert_eq!(rates(t0 + 3 * WINDOW), (0, 0, 0));
}

#[test]
fn idle_clients_are_forgotten() {
    let a = anvil(5, 10, 0);
    let t0 = Instant::now();
    for i in 0..100u8 {
        drop(a.connect(IpAddr::from([192, 0, 2, i]), t0).unwrap());
    }
    let held = a.connect(ip("198.51.100.1"), t0).unwrap();
    assert_eq!(a.len(), 101);
    // After the windows expire only the client still connected is kept.
    let _ = a.connect(ip("198.51.100.2"), t0 + WINDOW + PRUNE_EVERY);
    assert_eq!(a.len(), 2);
    drop(held);
}
