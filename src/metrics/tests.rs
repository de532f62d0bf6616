use super::*;

/// `(name, labels, value)` of one sample line.
type Sample = (String, Vec<(String, String)>, f64);

/// Checks the exposition line by line: `# HELP`, `# TYPE`, `# UNIT`, a sample
/// `name{k="v",..} value`, and `# EOF` exactly once, last. Returns the samples.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "must end with # EOF");
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            assert_eq!(i, lines.len() - 1, "# EOF must be last");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut it = rest.splitn(3, ' ');
            let kind = it.next().unwrap();
            let name = it.next().unwrap();
            assert!(
                matches!(kind, "HELP" | "TYPE" | "UNIT"),
                "bad comment: {line}"
            );
            assert!(name.starts_with("bpgate_"), "unprefixed: {line}");
            if kind == "TYPE" {
                let t = it.next().unwrap();
                assert!(
                    matches!(t, "counter" | "gauge" | "histogram"),
                    "bad type: {line}"
                );
            }
            continue;
        }
        let (name_labels, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value: {line}"));
        let (name, labels) = match name_labels.split_once('{') {
            None => (name_labels.to_string(), Vec::new()),
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect(line);
                (n.to_string(), parse_labels(body, line))
            }
        };
        assert!(
            name.starts_with("bpgate_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name: {line}"
        );
        samples.push((name, labels, value));
    }
    samples
}

fn parse_labels(body: &str, line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label key in {line}"
        );
        assert_eq!(chars.next(), Some('"'), "unquoted label in {line}");
        let mut val = String::new();
        loop {
            match chars.next().expect(line) {
                '\\' => match chars.next().expect(line) {
                    'n' => val.push('\n'),
                    c @ ('\\' | '"') => val.push(c),
                    c => panic!("bad escape \\{c} in {line}"),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        out.push((key, val));
        match chars.next() {
            None => break,
            Some(',') => continue,
            Some(c) => panic!("unexpected {c} in {line}"),
        }
    }
    out
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .2
}

fn sample_input() -> MetricsInput {
    MetricsInput {
        requests: 42,
        connections_h1: 3,
        connections_h2: 1,
        handshakes: 40,
        handshake_failures: [1, 2, 3, 4, 5, 6],
        nodes: vec![
            NodeInput {
                name: "botpress-0".into(),
                healthy: true,
                draining: false,
                in_flight: 2,
                ejections: 1,
                connections_opened: 7,
                requests: 30,
            },
            NodeInput {
                name: "we\"ird\\node".into(),
                healthy: false,
                draining: true,
                in_flight: 0,
                ejections: 5,
                connections_opened: 1,
                requests: 12,
            },
        ],
        upstream_panic: true,
        sticky_hit: 10,
        sticky_new: 5,
        sticky_failover: 1,
        sticky_forged: 2,
        sticky_expired: 3,
        sticky_sid: 4,
        sid: SidInput {
            entries: 9,
            hits: 8,
            misses: 7,
            learned: 6,
            unparsed: 5,
            evicted_idle: 4,
            evicted_capacity: 3,
            evicted_unknown: 2,
        },
        audit: Some(AuditInput {
            lines: 41,
            write_errors: 0,
            rotations: 2,
            queue_depth: 1,
        }),
        cert_not_after: 1_900_000_000,
        uptime_seconds: 12.5,
        ..Default::default()
    }
}

#[test]
fn render_is_parseable_and_complete() {
    let text = render_from(&sample_input());
    let s = parse(&text);
    assert_eq!(value(&s, "bpgate_requests_total", &[]), 42.0);
    assert_eq!(value(&s, "bpgate_connections", &[("protocol", "h1")]), 3.0);
    assert_eq!(value(&s, "bpgate_connections", &[("protocol", "h2")]), 1.0);
    assert_eq!(value(&s, "bpgate_tls_handshakes_total", &[]), 40.0);
    for (reason, v) in [
        ("timeout", 1.0),
        ("eof", 2.0),
        ("protocol", 3.0),
        ("incompatible", 4.0),
        ("certificate_rejected", 5.0),
        ("evicted", 6.0),
    ] {
        assert_eq!(
            value(
                &s,
                "bpgate_tls_handshake_failures_total",
                &[("reason", reason)]
            ),
            v
        );
    }
    let n0 = [("node", "botpress-0")];
    let n1 = [("node", "we\"ird\\node")];
    assert_eq!(value(&s, "bpgate_upstream_healthy", &n0), 1.0);
    assert_eq!(value(&s, "bpgate_upstream_healthy", &n1), 0.0);
    assert_eq!(value(&s, "bpgate_upstream_draining", &n1), 1.0);
    assert_eq!(value(&s, "bpgate_upstream_panic", &[]), 1.0);
    assert_eq!(value(&s, "bpgate_upstream_in_flight", &n0), 2.0);
    assert_eq!(value(&s, "bpgate_upstream_ejections_total", &n1), 5.0);
    assert_eq!(
        value(&s, "bpgate_upstream_connections_opened_total", &n0),
        7.0
    );
    assert_eq!(value(&s, "bpgate_upstream_requests_total", &n1), 12.0);
    for (o, v) in [
        ("hit", 10.0),
        ("new", 5.0),
        ("failover", 1.0),
        ("forged", 2.0),
        ("expired", 3.0),
        ("sid", 4.0),
    ] {
        assert_eq!(value(&s, "bpgate_sticky_total", &[("outcome", o)]), v);
    }
    assert_eq!(value(&s, "bpgate_sticky_sid_entries", &[]), 9.0);
    for (name, l, v) in [
        ("bpgate_sticky_sid_lookups_total", ("result", "hit"), 8.0),
        ("bpgate_sticky_sid_lookups_total", ("result", "miss"), 7.0),
        (
            "bpgate_sticky_sid_handshakes_total",
            ("result", "learned"),
            6.0,
        ),
        (
            "bpgate_sticky_sid_handshakes_total",
            ("result", "unparsed"),
            5.0,
        ),
        ("bpgate_sticky_sid_evictions_total", ("reason", "idle"), 4.0),
        (
            "bpgate_sticky_sid_evictions_total",
            ("reason", "capacity"),
            3.0,
        ),
        (
            "bpgate_sticky_sid_evictions_total",
            ("reason", "unknown"),
            2.0,
        ),
    ] {
        assert_eq!(value(&s, name, &[l]), v, "{name} {l:?}");
    }
    assert_eq!(value(&s, "bpgate_audit_lines_total", &[]), 41.0);
    assert_eq!(value(&s, "bpgate_audit_write_errors_total", &[]), 0.0);
    assert_eq!(value(&s, "bpgate_audit_rotations_total", &[]), 2.0);
    assert_eq!(value(&s, "bpgate_audit_queue_depth", &[]), 1.0);
    assert_eq!(
        value(&s, "bpgate_tls_certificate_expiry_timestamp_seconds", &[]),
        1_900_000_000.0
    );
    assert_eq!(value(&s, "bpgate_uptime_seconds", &[]), 12.5);
}

#[test]
fn audit_disabled_and_no_nodes_still_parse() {
    let mut m = sample_input();
    m.audit = None;
    m.nodes.clear();
    let text = render_from(&m);
    let s = parse(&text);
    assert!(!text.contains("bpgate_audit_"));
    // Per-node families are empty; the node-independent timing histogram and panic gauge stay.
    assert!(s.iter().all(|(n, _, _)| !n.starts_with("bpgate_upstream_")
        || n.starts_with("bpgate_upstream_response_time")
        || n == "bpgate_upstream_panic"));
    assert_eq!(value(&s, "bpgate_requests_total", &[]), 42.0);
}

#[test]
fn no_label_outside_the_bounded_set() {
    let s = parse(&render_from(&sample_input()));
    for (name, labels, _) in &s {
        for (k, _) in labels {
            assert!(
                matches!(
                    k.as_str(),
                    "protocol"
                        | "reason"
                        | "node"
                        | "outcome"
                        | "class"
                        | "method"
                        | "result"
                        | "le"
                ),
                "{name} has unexpected label {k}"
            );
        }
    }
}

/// Two scrapes of the same values are byte for byte the same, samples come in configuration
/// order, and every label combination is there at 0. (A real gateway under real traffic is
/// rendered by the integration test `metrics::a_real_gateway_under_traffic`.)
#[test]
fn order_is_stable_and_complete() {
    let mut m = sample_input();
    m.requests_by = CLASSES
        .iter()
        .flat_map(|c| METHODS.iter().map(move |x| (*c, *x, 0)))
        .collect();
    m.node_classes = m
        .nodes
        .iter()
        .flat_map(|n| CLASSES.iter().map(move |c| (n.name.clone(), *c, 1)))
        .collect();
    let a = render_from(&m);
    for _ in 0..20 {
        assert_eq!(render_from(&m), a);
    }
    let s = parse(&a);
    let nodes: Vec<&str> = s
        .iter()
        .filter(|(n, _, _)| n == "bpgate_upstream_healthy")
        .map(|(_, l, _)| l[0].1.as_str())
        .collect();
    assert_eq!(nodes, ["botpress-0", "we\"ird\\node"]);
    let responses: Vec<(String, String)> = s
        .iter()
        .filter(|(n, _, _)| n == "bpgate_responses_total")
        .map(|(_, l, _)| {
            assert_eq!(l[0].0, "class");
            assert_eq!(l[1].0, "method");
            (l[0].1.clone(), l[1].1.clone())
        })
        .collect();
    assert_eq!(responses.len(), 40);
    assert_eq!(responses[0], ("1xx".to_string(), "GET".to_string()));
    assert_eq!(responses[39], ("5xx".to_string(), "other".to_string()));
    let reasons: Vec<&str> = s
        .iter()
        .filter(|(n, _, _)| n == "bpgate_tls_handshake_failures_total")
        .map(|(_, l, _)| l[0].1.as_str())
        .collect();
    assert_eq!(reasons, HANDSHAKE_FAILURES);
}
