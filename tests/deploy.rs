//! Checks the deployment files under `config/deploy/`: the Kubernetes manifests parse and carry
//! the essentials (replicas, probes, grace period, secrets, no public admin port), the embedded
//! bpgate configuration validates with the Deployment's environment, and the systemd unit and
//! the Dockerfile keep their hardening.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// A parsed document and the file it came from.
struct Doc {
    file: PathBuf,
    v: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.v["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.v["metadata"]["name"].as_str().unwrap_or("")
    }
    /// Under `examples/`: shapes only, not applied.
    fn is_example(&self) -> bool {
        self.file.components().any(|c| c.as_os_str() == "examples")
    }
}

fn docs() -> Vec<Doc> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir().join("kubernetes"), &mut files);
    assert!(!files.is_empty(), "no YAML under config/deploy/kubernetes");
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for d in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if v.is_null() {
                continue;
            }
            assert!(
                v["apiVersion"].is_string()
                    && v["kind"].is_string()
                    && v["metadata"]["name"].is_string(),
                "{}: a document without apiVersion/kind/metadata.name",
                f.display()
            );
            out.push(Doc { file: f.clone(), v });
        }
    }
    out
}

fn find<'a>(docs: &'a [Doc], kind: &str, name: &str) -> &'a Value {
    &docs
        .iter()
        .find(|d| !d.is_example() && d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .v
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(|s| s.as_slice()).unwrap_or(&[])
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    seq(&workload["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
    seq(&c["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no env {name}"))
}

fn env_value(c: &Value, name: &str) -> String {
    env(c, name)["value"]
        .as_str()
        .unwrap_or_else(|| panic!("env {name} has no literal value"))
        .to_string()
}

/// `(secret name, key)` of an env var that must come from a Secret.
fn env_secret(c: &Value, name: &str) -> (String, String) {
    let r = &env(c, name)["valueFrom"]["secretKeyRef"];
    (
        r["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} is not from a secretKeyRef"))
            .into(),
        r["key"].as_str().expect("secretKeyRef.key").into(),
    )
}

/// A container port given by number or by name.
fn port_number(c: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("port is a number or a name");
    seq(&c["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

#[test]
fn kubernetes_kinds_present() {
    let docs = docs();
    let kinds: Vec<(&str, &str)> = docs
        .iter()
        .filter(|d| !d.is_example())
        .map(|d| (d.kind(), d.name()))
        .collect();
    for want in [
        ("Deployment", "bpgate"),
        ("Service", "bpgate"),
        ("ConfigMap", "bpgate-config"),
        ("PodDisruptionBudget", "bpgate"),
        ("StatefulSet", "botpress"),
        ("Service", "botpress"),
    ] {
        assert!(kinds.contains(&want), "missing {want:?} in {kinds:?}");
    }
    assert!(
        !kinds.iter().any(|(k, _)| *k == "Secret"),
        "real Secrets must not be applied from the repository (only examples/)"
    );
}

#[test]
fn bpgate_deployment_essentials() {
    let docs = docs();
    let dep = find(&docs, "Deployment", "bpgate");
    let spec = &dep["spec"];
    assert!(spec["replicas"].as_u64().unwrap_or(1) >= 2, "replicas >= 2");
    let pod = &spec["template"]["spec"];
    let c = container(dep, "bpgate");

    // Probes on the admin port.
    let admin = 9901;
    assert_eq!(
        env_value(c, "BPGATE_ADMIN_LISTEN"),
        format!("0.0.0.0:{admin}")
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(port_number(c, &get["port"]), admin, "{probe} port");
    }

    // Graceful drain: the grace period outlasts preStop + drain.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    assert!(
        grace > 30,
        "terminationGracePeriodSeconds must exceed the 30 s drain"
    );
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    assert!(grace > 30 + pre_stop, "grace {grace} <= drain + preStop");

    // Secrets shared by the replicas.
    let (sticky_secret, _) = env_secret(c, "BPGATE_STICKY_SECRET");
    let (jwt_secret, _) = env_secret(c, "BPGATE_JWT_SECRET");
    assert_eq!(sticky_secret, jwt_secret);

    // Upstreams are exactly the StatefulSet's pods through its headless Service.
    let sts = find(&docs, "StatefulSet", "botpress");
    let svc_name = sts["spec"]["serviceName"].as_str().expect("serviceName");
    let headless = find(&docs, "Service", svc_name);
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    let n = sts["spec"]["replicas"].as_u64().expect("replicas");
    assert_eq!(n, 3);
    let port = seq(&headless["spec"]["ports"])[0]["port"].as_u64().unwrap();
    let want: Vec<String> = (0..n)
        .map(|i| format!("http://botpress-{i}.{svc_name}:{port}"))
        .collect();
    assert_eq!(env_value(c, "BPGATE_UPSTREAMS"), want.join(","));
    assert_eq!(env_value(c, "BPGATE_LISTEN"), "0.0.0.0:8443");

    // Hardening.
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert!(pod["securityContext"]["runAsUser"].as_u64().unwrap_or(0) > 0);
    for r in ["requests", "limits"] {
        assert!(c["resources"][r]["cpu"].is_string(), "resources.{r}.cpu");
        assert!(
            c["resources"][r]["memory"].is_string(),
            "resources.{r}.memory"
        );
    }

    // Volumes: TLS from a read-only secret mount, audit on an emptyDir (the root is read-only).
    let mounts = seq(&c["volumeMounts"]);
    let volumes = seq(&pod["volumes"]);
    let mount_of = |path: &str| {
        mounts
            .iter()
            .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("\0")))
            .max_by_key(|m| m["mountPath"].as_str().map(str::len))
            .unwrap_or_else(|| panic!("{path} is not on a mounted volume"))
    };
    let volume = |m: &Value| {
        volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {:?}", m["name"]))
            .clone()
    };
    for key in ["BPGATE_TLS_CERT", "BPGATE_TLS_KEY"] {
        let m = mount_of(&env_value(c, key));
        assert_eq!(m["readOnly"].as_bool(), Some(true), "{key} mount read-only");
        let secret = volume(m)["secret"]["secretName"]
            .as_str()
            .expect("TLS from a Secret")
            .to_string();
        if let Some(ex) = docs
            .iter()
            .find(|d| d.is_example() && d.kind() == "Secret" && d.name() == secret)
        {
            assert_eq!(ex.v["type"].as_str(), Some("kubernetes.io/tls"));
        }
    }
    let audit = mount_of(&env_value(c, "BPGATE_AUDIT_DIR"));
    assert!(
        volume(audit)["emptyDir"].is_mapping(),
        "audit on an emptyDir"
    );
    assert_ne!(audit["readOnly"].as_bool(), Some(true));

    // Prometheus scrape annotation on the admin port.
    let ann = &spec["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(ann["prometheus.io/port"].as_str(), Some("9901"));
    assert_eq!(ann["prometheus.io/path"].as_str(), Some("/metrics"));
}

#[test]
fn public_service_is_l4_and_hides_admin() {
    let docs = docs();
    let dep = find(&docs, "Deployment", "bpgate");
    let c = container(dep, "bpgate");
    let svc = find(&docs, "Service", "bpgate");
    assert_eq!(svc["spec"]["type"].as_str(), Some("LoadBalancer"));
    let ports = seq(&svc["spec"]["ports"]);
    assert!(ports
        .iter()
        .any(|p| p["port"].as_u64() == Some(443) && port_number(c, &p["targetPort"]) == 8443));
    for p in ports {
        assert_eq!(p["protocol"].as_str().unwrap_or("TCP"), "TCP");
        assert_ne!(p["port"].as_u64(), Some(9901), "admin port exposed");
        assert_ne!(port_number(c, &p["targetPort"]), 9901, "admin port exposed");
    }
    // Selects the bpgate pods.
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(&labels[k], v);
    }
    // No other Service exposes the admin port publicly either.
    for d in docs.iter().filter(|d| d.kind() == "Service") {
        if matches!(
            d.v["spec"]["type"].as_str(),
            Some("LoadBalancer" | "NodePort")
        ) {
            for p in seq(&d.v["spec"]["ports"]) {
                assert_ne!(p["port"].as_u64(), Some(9901), "{} exposes 9901", d.name());
            }
        }
    }
}

#[test]
fn botpress_statefulset_essentials() {
    let docs = docs();
    let sts = find(&docs, "StatefulSet", "botpress");
    let c = container(sts, "botpress");
    assert_eq!(env_value(c, "BP_PRODUCTION"), "true");
    assert_eq!(env_value(c, "CLUSTER_ENABLED"), "true");
    assert_eq!(env_value(c, "BPFS_STORAGE"), "database");
    assert!(!env_value(c, "REVERSE_PROXY").is_empty());
    env_secret(c, "DATABASE_URL");
    assert!(env(c, "REDIS_URL").is_mapping());
    // bpgate and Botpress agree on the public URL.
    let bp = container(find(&docs, "Deployment", "bpgate"), "bpgate");
    assert_eq!(env_value(c, "EXTERNAL_URL"), env_value(bp, "EXTERNAL_URL"));
    assert!(env_value(c, "EXTERNAL_URL").starts_with("https://"));
}

#[test]
fn referenced_secrets_have_examples() {
    let docs = docs();
    let mut refs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in docs.iter().filter(|d| !d.is_example()) {
        for c in seq(&d.v["spec"]["template"]["spec"]["containers"]) {
            for e in seq(&c["env"]) {
                let r = &e["valueFrom"]["secretKeyRef"];
                if let (Some(n), Some(k)) = (r["name"].as_str(), r["key"].as_str()) {
                    refs.entry(n.into()).or_default().push(k.into());
                }
            }
        }
    }
    assert!(!refs.is_empty());
    for (name, keys) in refs {
        let ex = docs
            .iter()
            .find(|d| d.is_example() && d.kind() == "Secret" && d.name() == name)
            .unwrap_or_else(|| panic!("no example for Secret {name}"));
        for k in keys {
            assert!(
                ex.v["stringData"][k.as_str()].is_string(),
                "example Secret {name} lacks {k}"
            );
        }
    }
}

/// The ConfigMap's bpgate.toml, with the Deployment's literal environment applied, is a valid
/// configuration, and agrees with the manifests.
#[test]
fn embedded_config_validates_with_the_deployment_env() {
    let docs = docs();
    let dep = find(&docs, "Deployment", "bpgate");
    let c = container(dep, "bpgate");
    let cm = find(&docs, "ConfigMap", "bpgate-config");
    let toml = cm["data"]["bpgate.toml"].as_str().expect("bpgate.toml");
    // BPGATE_CONFIG points into the ConfigMap's mount.
    let cfg_path = env_value(c, "BPGATE_CONFIG");
    assert!(cfg_path.ends_with("/bpgate.toml"));
    let mount = seq(&c["volumeMounts"])
        .iter()
        .find(|m| m["name"].as_str() == Some("config"))
        .expect("config mount");
    assert!(cfg_path.starts_with(mount["mountPath"].as_str().unwrap()));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bpgate.toml");
    std::fs::write(&path, toml).unwrap();
    let mut vars: BTreeMap<String, String> = seq(&c["env"])
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect();
    vars.insert("BPGATE_STICKY_SECRET".into(), "x".repeat(48));
    vars.insert("BPGATE_JWT_SECRET".into(), "y".repeat(32));
    vars.remove("BPGATE_CONFIG");
    let env = |k: &str| vars.get(k).cloned();
    let loaded = bpgate::config::load(&path, &env, &Default::default())
        .unwrap_or_else(|e| panic!("the ConfigMap's bpgate.toml does not validate:\n{e}"));
    // Without the environment too (the file alone must be coherent).
    bpgate::config::load(&path, &|_| None, &Default::default())
        .unwrap_or_else(|e| panic!("bpgate.toml alone does not validate:\n{e}"));

    assert_eq!(loaded.derived.nodes.len(), 3);
    assert_eq!(loaded.config.listen.admin.port(), 9901);
    assert_eq!(loaded.config.listen.https.port(), 8443);
    let grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(loaded.config.shutdown.drain_timeout.as_secs() < grace);
    assert!(loaded.config.audit.enabled);
}

/// `Key=Value` lines of a unit file (all values of repeated keys).
fn unit_keys(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with('[')
        {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("bad line {line}"));
        m.entry(k.trim().into()).or_default().push(v.trim().into());
    }
    m
}

#[test]
fn systemd_unit_is_hardened() {
    let text = std::fs::read_to_string(deploy_dir().join("bpgate.service")).unwrap();
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(text.contains(section), "{section}");
    }
    let k = unit_keys(&text);
    let one = |key: &str| -> &str {
        k.get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{key}= missing"))
    };
    assert_eq!(one("Restart"), "on-failure");
    let user = one("User");
    assert!(!user.is_empty() && user != "root" && user != "0");
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ProtectHome"), "yes");
    assert!(one("ReadWritePaths").contains("/var/log/bpgate"));
    assert!(k["Environment"]
        .iter()
        .any(|e| e == "BPGATE_AUDIT_DIR=/var/log/bpgate/audit"));
    assert!(one("ExecStart").starts_with("/usr/local/bin/bpgate --config /etc/bpgate/bpgate.toml"));
    assert_eq!(one("KillSignal"), "SIGTERM");
    let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(stop > 30, "TimeoutStopSec must exceed the 30 s drain");
    assert!(one("RestrictAddressFamilies").contains("AF_INET6"));
    assert!(k["SystemCallFilter"].iter().any(|v| v == "@system-service"));
    assert_eq!(one("LimitNOFILE"), "65536");
    assert_eq!(one("EnvironmentFile"), "-/etc/bpgate/bpgate.env");
    for key in [
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
    ] {
        assert_eq!(one(key), "yes", "{key}");
    }
}

#[test]
fn dockerfile_is_multi_stage_and_non_root() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let instr: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (i, rest) = l.split_once(char::is_whitespace)?;
            Some((i.to_ascii_uppercase(), rest.trim().to_string()))
        })
        .collect();
    let froms: Vec<usize> = instr
        .iter()
        .enumerate()
        .filter(|(_, (i, _))| i == "FROM")
        .map(|(n, _)| n)
        .collect();
    assert!(froms.len() >= 2, "multi-stage: at least two FROM");
    assert!(instr[froms[0]].1.starts_with("rust:"));
    assert!(text.contains("cargo build --release --locked"));
    // The final stage runs as a non-root user.
    let last = &instr[*froms.last().unwrap()..];
    let user = last
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, u)| u.as_str())
        .expect("USER in the final stage");
    assert!(!matches!(user, "root" | "0" | "0:0"), "runs as root");
    assert!(last
        .iter()
        .any(|(i, v)| i == "EXPOSE" && v.contains("8443") && v.contains("9901")));
    assert!(last
        .iter()
        .any(|(i, v)| i == "ENTRYPOINT" && v.contains("/usr/local/bin/bpgate")));
}
