use super::*;

/// A cluster and its node set for `names`.
struct Fixture {
    c: Arc<Cluster>,
    snap: Arc<Snapshot>,
}

impl std::ops::Deref for Fixture {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.c
    }
}

impl Fixture {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.clone()
    }
}

fn cluster(names: &[&str], ip_fallback: bool) -> Fixture {
    let c = Cluster::new(ClusterSettings {
        codec: StickyCodec::new(b"test secret test secret", None, "bpgate_node", "/", 86_400),
        sticky_enabled: true,
        ip_fallback,
        generated_secret: false,
        sid_map_max_entries: 1000,
        sid_map_idle: std::time::Duration::from_secs(300),
    });
    let specs: Vec<NodeSpec> = names
        .iter()
        .enumerate()
        .map(|(i, n)| NodeSpec {
            name: n.to_string(),
            authority: format!("127.0.0.1:{}", 40000 + i),
            weight: 1,
        })
        .collect();
    let snap = c.snapshot(&specs, false);
    Fixture { c, snap }
}

#[test]
fn cookie_hits_its_node_and_survives_reordering() {
    let c = cluster(&["a", "b", "c"], false);
    let snap = c.snapshot();
    let v = c.cookie_value(&snap, &snap.nodes[1]).unwrap();
    let ch = c
        .choose(&snap, Some(&v), None, "127.0.0.1".parse().unwrap())
        .unwrap();
    assert_eq!(&*ch.node.name, "b");
    assert_eq!(ch.sticky, Sticky::Hit);
    // Same names, other order, one added: the cookie still names b.
    let c2 = cluster(&["c", "d", "b", "a"], false);
    let ch = c2
        .choose(&c2.snapshot(), Some(&v), None, "127.0.0.1".parse().unwrap())
        .unwrap();
    assert_eq!(&*ch.node.name, "b");
}

/// A pinned browser's cookie is re-issued once it is past half its life, so an active session
/// is never cut by expiry, and not on every request before that.
#[test]
fn the_cookie_is_renewed_past_half_its_life_only() {
    let c = cluster(&["a", "b"], false);
    let snap = c.snapshot();
    let now = unix_now();
    // max_age is 86 400 s; a minute's margin either side of the half keeps the test off the
    // second boundary.
    for (age, renewed) in [
        (0, false),
        (600, false),
        (43_200 - 60, false),
        (43_200 + 60, true),
        (86_000, true),
    ] {
        let v = c.codec.seal(snap.ids[1], now - age);
        let ch = c
            .choose(&snap, Some(&v), None, "127.0.0.1".parse().unwrap())
            .unwrap();
        assert_eq!(&*ch.node.name, "b", "age {age}");
        assert_eq!(ch.sticky, Sticky::Hit, "age {age}");
        assert_eq!(ch.set_cookie, renewed, "age {age}");
    }
}

#[test]
fn dead_pinned_node_fails_over() {
    let c = cluster(&["a", "b"], false);
    let snap = c.snapshot();
    let v = c.cookie_value(&snap, &snap.nodes[0]).unwrap();
    for _ in 0..3 {
        snap.nodes[0].passive_failure(3, true);
    }
    let ch = c
        .choose(&snap, Some(&v), None, "127.0.0.1".parse().unwrap())
        .unwrap();
    assert_eq!(&*ch.node.name, "b");
    assert_eq!(ch.sticky, Sticky::Failover);
    assert!(ch.set_cookie);
}

#[test]
fn rendezvous_moves_only_the_removed_nodes_clients() {
    let c = cluster(&["a", "b", "c"], true);
    let before: Vec<String> = (0..300u32)
        .map(|i| {
            c.rendezvous(
                &c.snapshot(),
                IpAddr::from([10, 0, (i >> 8) as u8, i as u8]),
            )
            .unwrap()
            .spec
            .name
            .clone()
        })
        .collect();
    for name in ["a", "b", "c"] {
        let n = before.iter().filter(|x| *x == name).count();
        assert!(n > 50, "{name} got only {n} of 300");
    }
    let after = c.c.snapshot(
        &c.snapshot()
            .nodes
            .iter()
            .filter(|n| &*n.name != "c")
            .map(|n| n.spec.clone())
            .collect::<Vec<_>>(),
        false,
    );
    for (i, was) in before.iter().enumerate() {
        let now = c
            .rendezvous(&after, IpAddr::from([10, 0, (i >> 8) as u8, i as u8]))
            .unwrap();
        if was != "c" {
            assert_eq!(&now.spec.name, was);
        }
    }
}

#[test]
fn draining_node_gets_no_new_sessions_but_keeps_pins() {
    let c = cluster(&["a", "b"], false);
    let snap = c.snapshot();
    snap.nodes[0].set_draining(true);
    for _ in 0..50 {
        assert_eq!(&*c.balance(&snap, None).unwrap().name, "b");
    }
    let v = c.cookie_value(&snap, &snap.nodes[0]).unwrap();
    assert_eq!(
        &*c.choose(&snap, Some(&v), None, "127.0.0.1".parse().unwrap())
            .unwrap()
            .node
            .name,
        "a"
    );
}

#[test]
fn new_visitors_behind_one_ip_are_spread_by_load() {
    let c = cluster(&["a", "b", "c"], false);
    let snap = c.snapshot();
    let ip: IpAddr = "203.0.113.9".parse().unwrap();
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for _ in 0..300 {
        let ch = c.choose(&snap, None, None, ip).unwrap();
        assert_eq!(ch.sticky, Sticky::New);
        assert!(ch.set_cookie, "a new visitor is pinned by the cookie");
        *seen.entry(ch.node.name.to_string()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n > 50), "{seen:?}");
    // With client-ip, one address is one node.
    let c = cluster(&["a", "b", "c"], true);
    let snap = c.snapshot();
    let first = c.choose(&snap, None, None, ip).unwrap().node;
    for _ in 0..50 {
        assert!(Arc::ptr_eq(
            &c.choose(&snap, None, None, ip).unwrap().node,
            &first
        ));
    }
}

#[test]
fn a_learned_session_id_routes_and_wins_over_a_disagreeing_cookie() {
    let c = cluster(&["a", "b", "c"], false);
    let snap = c.snapshot();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let now = unix_now();
    c.sids.learn("sess-on-b", Arc::from("b"), now);
    // No cookie (a client that keeps none): the session's node, and a cookie offered.
    for _ in 0..20 {
        let ch = c.choose(&snap, None, Some("sess-on-b"), ip).unwrap();
        assert_eq!((&*ch.node.name, ch.sticky), ("b", Sticky::Sid));
        assert!(ch.set_cookie);
    }
    // A cookie naming the same node: an ordinary hit.
    let on_b = c.cookie_value(&snap, &snap.nodes[1]).unwrap();
    let ch = c.choose(&snap, Some(&on_b), Some("sess-on-b"), ip).unwrap();
    assert_eq!((&*ch.node.name, ch.sticky), ("b", Sticky::Hit));
    // A cookie naming another live node: the session wins, the cookie is left alone.
    let on_a = c.cookie_value(&snap, &snap.nodes[0]).unwrap();
    let ch = c.choose(&snap, Some(&on_a), Some("sess-on-b"), ip).unwrap();
    assert_eq!((&*ch.node.name, ch.sticky), ("b", Sticky::Sid));
    assert!(!ch.set_cookie);
    // Without the sid, the cookie decides again.
    let ch = c.choose(&snap, Some(&on_a), None, ip).unwrap();
    assert_eq!((&*ch.node.name, ch.sticky), ("a", Sticky::Hit));
    // An unknown sid is a miss and changes nothing.
    let ch = c.choose(&snap, Some(&on_a), Some("nope"), ip).unwrap();
    assert_eq!(&*ch.node.name, "a");
    let st = &c.sids.stats;
    assert_eq!(st.hits.load(Ordering::Relaxed), 22);
    assert_eq!(st.misses.load(Ordering::Relaxed), 1);
    // The session's node dies: the cookie (or the fallback) takes over, counted as a miss.
    for _ in 0..3 {
        snap.nodes[1].passive_failure(3, true);
    }
    let ch = c.choose(&snap, Some(&on_a), Some("sess-on-b"), ip).unwrap();
    assert_eq!((&*ch.node.name, ch.sticky), ("a", Sticky::Hit));
    let ch = c.choose(&snap, None, Some("sess-on-b"), ip).unwrap();
    assert_ne!(&*ch.node.name, "b");
    assert_eq!(st.misses.load(Ordering::Relaxed), 3);
}

#[test]
fn a_draining_node_keeps_its_sessions_by_sid() {
    let c = cluster(&["a", "b"], false);
    let snap = c.snapshot();
    snap.nodes[0].set_draining(true);
    c.sids.learn("s", Arc::from("a"), unix_now());
    let ch = c
        .choose(&snap, None, Some("s"), "127.0.0.1".parse().unwrap())
        .unwrap();
    assert_eq!(&*ch.node.name, "a");
}

fn check(ok: bool) -> CheckResult {
    CheckResult {
        ok,
        status: Some(if ok { 200 } else { 503 }),
        latency_ms: 1.0,
        at_ms: 0,
        error: None,
    }
}

/// A cluster with health checks on: its nodes start pending.
fn checked(names: &[&str]) -> Fixture {
    let f = cluster(&[], false);
    let specs: Vec<NodeSpec> = names
        .iter()
        .enumerate()
        .map(|(i, n)| NodeSpec {
            name: n.to_string(),
            authority: format!("127.0.0.1:{}", 41000 + i),
            weight: 1,
        })
        .collect();
    let snap = f.c.snapshot(&specs, true);
    Fixture { c: f.c, snap }
}

#[test]
fn nodes_are_pending_until_their_first_check_which_alone_decides() {
    let c = checked(&["a", "b"]);
    let snap = c.snapshot();
    assert!(snap.nodes.iter().all(|n| n.is_pending()));
    // Before any check every node takes requests, as before checks existed; no panic.
    assert_eq!(snap.tier(), Tier::Pending);
    assert!(!snap.panic());
    assert!(!snap.ready(true));
    // rise = 2, fall = 3, yet one check each decides.
    snap.nodes[0].record_check(check(true), 2, 3);
    snap.nodes[1].record_check(check(false), 2, 3);
    assert!(snap.nodes[0].is_healthy());
    assert!(!snap.nodes[1].is_healthy() && !snap.nodes[1].is_pending());
    assert_eq!(snap.nodes[1].ejections.load(Ordering::Relaxed), 0);
    assert!(snap.ready(true));
    for _ in 0..20 {
        assert_eq!(&*c.balance(&snap, None).unwrap().name, "a");
    }
    // After the first check, rise and fall apply.
    snap.nodes[1].record_check(check(true), 2, 3);
    assert!(!snap.nodes[1].is_healthy());
    snap.nodes[1].record_check(check(true), 2, 3);
    assert!(snap.nodes[1].is_healthy());
}

#[test]
fn panic_mode_routes_to_every_undrained_node_and_is_announced_once_each_way() {
    let c = checked(&["a", "b", "c"]);
    let snap = c.snapshot();
    for n in &snap.nodes {
        n.record_check(check(true), 1, 1);
    }
    let v = c.cookie_value(&snap, &snap.nodes[1]).unwrap();
    snap.nodes[2].set_draining(true);
    assert_eq!(snap.announce_panic(), None);
    for n in &snap.nodes {
        n.record_check(check(false), 1, 1);
    }
    assert_eq!(snap.tier(), Tier::Panic);
    assert_eq!(snap.announce_panic(), Some(true));
    assert_eq!(snap.announce_panic(), None, "announced once");
    assert!(snap.ready(true), "still routing: still ready");
    let mut seen = std::collections::HashSet::new();
    for i in 0..200u32 {
        let ip = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
        seen.insert(
            c.choose(&snap, None, None, ip)
                .unwrap()
                .node
                .name
                .to_string(),
        );
    }
    assert_eq!(
        seen,
        ["a", "b"].iter().map(|s| s.to_string()).collect(),
        "every node but the drained one"
    );
    // A pinned client stays on its (unhealthy, undrained) node.
    let ch = c
        .choose(&snap, Some(&v), None, "127.0.0.1".parse().unwrap())
        .unwrap();
    assert_eq!((&*ch.node.name, ch.sticky), ("b", Sticky::Hit));
    // One node passes again: normal selection at once.
    snap.nodes[0].record_check(check(true), 1, 1);
    assert_eq!(snap.tier(), Tier::Healthy);
    assert_eq!(snap.announce_panic(), Some(false));
    assert_eq!(snap.announce_panic(), None);
    for _ in 0..20 {
        assert_eq!(
            &*c.choose(&snap, None, None, "10.9.9.9".parse().unwrap())
                .unwrap()
                .node
                .name,
            "a"
        );
    }
    let ch = c
        .choose(&snap, Some(&v), None, "127.0.0.1".parse().unwrap())
        .unwrap();
    assert_eq!((&*ch.node.name, ch.sticky), ("a", Sticky::Failover));
}

#[test]
fn every_node_drained_and_unhealthy_is_no_node() {
    let c = checked(&["a"]);
    let snap = c.snapshot();
    snap.nodes[0].record_check(check(false), 1, 1);
    snap.nodes[0].set_draining(true);
    assert_eq!(snap.tier(), Tier::None);
    assert!(!snap.panic());
    assert!(c
        .choose(&snap, None, None, "10.0.0.1".parse().unwrap())
        .is_none());
}

#[test]
fn with_checks_off_every_node_is_healthy() {
    let c = checked(&["a"]);
    let snap = c.snapshot();
    snap.nodes[0].record_check(check(false), 1, 1);
    let off = c.c.snapshot(&[snap.nodes[0].spec.clone()], false);
    assert!(off.nodes[0].is_healthy());
    assert!(off.ready(false));
}

#[test]
fn a_reweighted_node_is_replaced_and_the_others_keep_their_state() {
    let f = cluster(&["a", "b"], false);
    f.snap.nodes[1].set_draining(true);
    let mut specs: Vec<NodeSpec> = f.snap.nodes.iter().map(|n| n.spec.clone()).collect();
    specs[0].weight = 5;
    // Same name, other spec: replaced (this once deadlocked on the registry's shard lock).
    let next = f.c.snapshot(&specs, true);
    assert_eq!(next.nodes[0].spec.weight, 5);
    assert!(!Arc::ptr_eq(&next.nodes[0], &f.snap.nodes[0]));
    assert!(Arc::ptr_eq(&next.nodes[1], &f.snap.nodes[1]));
    assert!(next.nodes[1].is_draining());
}
