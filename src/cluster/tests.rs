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
    let snap = c.snapshot(&specs);
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
    assert_eq!(c.stats.sid.load(Ordering::Relaxed), 21);
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
