//! The structure the code promises, checked: no import cycle among `src/` modules, the leaves
//! (`config`, `exchange`, `counters`) import nothing of the crate, and the README's lists match
//! the types they describe (audit outcomes, live and restart-only reload keys).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bpgate::exchange::Outcome;
use bpgate::reload::{self, Live, RestartOnly};

/// Modules that must import nothing else of the crate.
const LEAVES: [&str; 3] = ["config", "exchange", "counters"];

/// The top-level module graph: for each module (`src/x.rs` or `src/x/`), the modules its
/// non-test code names as `crate::y`. Unit-test files and inline `#[cfg(test)] mod tests { .. }`
/// blocks may reach anywhere and are left out, as `shared/tools/modcycles.py` does.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, files);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let parts: Vec<&str> = rel.iter().map(|c| c.to_str().unwrap()).collect();
        let first = parts[0];
        if parts.last() == Some(&"tests.rs") || ["main.rs", "lib.rs", "bin"].contains(&first) {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_string();
        let mut text = std::fs::read_to_string(&f).unwrap();
        if let Some(i) = text.find("#[cfg(test)]\nmod tests {") {
            text.truncate(i);
        }
        let deps = graph.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let before = text[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
    }
    graph
}

/// Every cycle found by depth-first search from each module, as `a -> b -> a`.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    fn dfs(
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        seen: &mut BTreeSet<BTreeSet<String>>,
        out: &mut Vec<String>,
    ) {
        let Some(last) = stack.last().cloned() else {
            return;
        };
        for next in g.get(&last).into_iter().flatten() {
            if let Some(i) = stack.iter().position(|m| m == next) {
                let cycle: Vec<String> = stack[i..].to_vec();
                if seen.insert(cycle.iter().cloned().collect()) {
                    out.push(format!("{} -> {next}", cycle.join(" -> ")));
                }
            } else if g.contains_key(next) && stack.len() < 20 {
                stack.push(next.clone());
                dfs(g, stack, seen, out);
                stack.pop();
            }
        }
    }
    let (mut seen, mut out) = (BTreeSet::new(), Vec::new());
    for m in graph.keys() {
        dfs(graph, &mut vec![m.clone()], &mut seen, &mut out);
    }
    out
}

#[test]
fn no_import_cycle_and_leaves_stay_leaves() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(
        graph.len() > 10,
        "the scan found too few modules: {graph:?}"
    );
    for l in LEAVES {
        assert!(graph.contains_key(l), "no module {l}");
    }
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles among src/ modules:\n{}",
        found.join("\n")
    );
    for l in LEAVES {
        let deps = &graph[l];
        assert!(
            deps.is_empty(),
            "`{l}` must import nothing of the crate, imports {deps:?}"
        );
    }
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    // The checker itself: a graph with a cycle is reported, one without is not.
    let g = |edges: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            m.entry(a.to_string()).or_default().insert(b.to_string());
            m.entry(b.to_string()).or_default();
        }
        m
    };
    assert_eq!(
        cycles(&g(&[("a", "b"), ("b", "c"), ("c", "a")])),
        vec!["a -> b -> c -> a"]
    );
    assert!(cycles(&g(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
}

/// The backticked words of the README table row for `field`.
fn readme_row(field: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let prefix = format!("| `{field}` |");
    let row = readme
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("README has no row for {field}"));
    row[prefix.len()..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_lists_exactly_the_audit_outcomes() {
    let listed = readme_row("outcome");
    let ours: Vec<String> = Outcome::ALL
        .iter()
        .map(|o| o.as_str().to_string())
        .collect();
    assert_eq!(
        listed, ours,
        "README's outcome list and exchange::Outcome differ"
    );
}

/// The README's Reload bullet starting with `lead`, up to the next bullet.
fn reload_bullet(lead: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find(&format!("- {lead}"))
        .unwrap_or_else(|| panic!("README has no bullet `{lead}`"));
    let rest = &readme[start + 2..];
    let end = rest.find("\n- ").unwrap_or(rest.len());
    rest[..end].to_string()
}

fn mentioned(bullet: &str, key: &str) -> bool {
    let section = key.split('.').next().unwrap_or(key);
    bullet.contains(&format!("`{key}`")) || bullet.contains(&format!("`{section}.*`"))
}

#[test]
fn readme_reload_lists_match_the_live_and_restart_only_types() {
    let (live, restart) = reload::split(bpgate::config::Config::default());
    let applied = reload_bullet("Applied live");
    let restart_bullet = reload_bullet("Reported as needing a restart");
    for k in reload::keys::<Live>(&live) {
        assert!(mentioned(&applied, &k), "README's live list misses {k}");
    }
    for k in reload::keys::<RestartOnly>(&restart) {
        assert!(
            mentioned(&restart_bullet, &k),
            "README's restart-only list misses {k}"
        );
    }
}

#[test]
fn readme_lists_exactly_the_user_sources() {
    use bpgate::audit::{EndUserSource, UserSource};
    let ours: Vec<String> = UserSource::ALL
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    assert_eq!(
        readme_row("user_source"),
        ours,
        "README's user_source list and audit::UserSource differ"
    );
    let ours: Vec<String> = EndUserSource::ALL
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    assert_eq!(
        readme_row("end_user_source"),
        ours,
        "README's end_user_source list and audit::EndUserSource differ"
    );
}
