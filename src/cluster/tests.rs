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
        .choose(&snap, Some(&v), "127.0.0.1".parse().unwrap())
        .unwrap();
    assert_eq!(&*ch.node.name, "b");
    assert_eq!(ch.sticky, Sticky::Hit);
    // Same names, other order, one added: the cookie still names b.
    let c2 = cluster(&["c", "d", "b", "a"], false);
    let ch = c2
        .choose(&c2.snapshot(), Some(&v), "127.0.0.1".parse().unwrap())
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
        .choose(&snap, Some(&v), "127.0.0.1".parse().unwrap())
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
        &*c.choose(&snap, Some(&v), "127.0.0.1".parse().unwrap())
            .unwrap()
            .node
            .name,
        "a"
    );
}

#[test]
fn a_reweighted_node_is_replaced_and_the_others_keep_their_state() {
    let f = cluster(&["a", "b"], false);
    f.snap.nodes[1].set_draining(true);
    let mut specs: Vec<NodeSpec> = f.snap.nodes.iter().map(|n| n.spec.clone()).collect();
    specs[0].weight = 5;
    // Same name, other spec: replaced (this once deadlocked on the registry's shard lock).
    let next = f.c.snapshot(&specs);
    assert_eq!(next.nodes[0].spec.weight, 5);
    assert!(!Arc::ptr_eq(&next.nodes[0], &f.snap.nodes[0]));
    assert!(Arc::ptr_eq(&next.nodes[1], &f.snap.nodes[1]));
    assert!(next.nodes[1].is_draining());
}
