//! Checks the deployment files under `config/deploy/`: the Kubernetes manifests parse and carry
//! the essentials (replicas, probes, preStop pause and grace period, secrets, the TLS Secret, no
//! public admin port, a NetworkPolicy fencing it), every setting lives in exactly one place (the
//! ConfigMap, or the environment for secrets, never both), the embedded bpgate configuration
//! validates with the pod's environment, and the systemd unit and the Dockerfile keep their
//! hardening. `.ci/run` adds what a static read cannot: `systemd-analyze verify` on the unit as
//! installed, and a `docker build` (or hadolint when no container engine runs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use bpgate::config::{Loaded, ENV_VARS};
use serde::Deserialize;
use serde_yaml_ng::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    repo().join("config/deploy")
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

fn example<'a>(docs: &'a [Doc], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d.is_example() && d.kind() == kind && d.name() == name)
        .map(|d| &d.v)
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

fn env_names(c: &Value) -> Vec<String> {
    seq(&c["env"])
        .iter()
        .filter_map(|e| e["name"].as_str().map(String::from))
        .collect()
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

/// The bpgate Deployment and its container.
fn bpgate_pod(docs: &[Doc]) -> (&Value, &Value) {
    let dep = find(docs, "Deployment", "bpgate");
    (dep, container(dep, "bpgate"))
}

/// The ConfigMap's `bpgate.toml`.
fn configmap_toml(docs: &[Doc]) -> String {
    find(docs, "ConfigMap", "bpgate-config")["data"]["bpgate.toml"]
        .as_str()
        .expect("ConfigMap bpgate-config has no bpgate.toml")
        .to_string()
}

/// The ConfigMap's `bpgate.toml` loaded by bpgate's own loader with the pod's environment: the
/// Deployment's literal values, stand-ins for its Secret references, and the image's `ENV`
/// (which the pod inherits unless the Deployment sets the same name).
fn load_pod_config(docs: &[Doc]) -> Loaded {
    let (_, c) = bpgate_pod(docs);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bpgate.toml");
    std::fs::write(&path, configmap_toml(docs)).unwrap();
    let mut vars: BTreeMap<String, String> = dockerfile().env.into_iter().collect();
    for e in seq(&c["env"]) {
        let name = e["name"].as_str().expect("env name").to_string();
        let value = match e["value"].as_str() {
            Some(v) => v.to_string(),
            None if e["valueFrom"]["secretKeyRef"].is_mapping() => "s".repeat(48),
            None => panic!("env {name}: neither a value nor a secretKeyRef"),
        };
        vars.insert(name, value);
    }
    vars.remove("BPGATE_CONFIG");
    let env = |k: &str| vars.get(k).cloned();
    bpgate::config::load(&path, &env, &Default::default())
        .unwrap_or_else(|e| panic!("the ConfigMap's bpgate.toml does not validate:\n{e}"))
}

/// Does the TOML table set `a.b.c`?
fn toml_has(table: &toml::Table, key: &str) -> bool {
    let mut cur = table;
    let mut parts = key.split('.').peekable();
    while let Some(p) = parts.next() {
        match cur.get(p) {
            None => return false,
            Some(_) if parts.peek().is_none() => return true,
            Some(toml::Value::Table(t)) => cur = t,
            // `base_path = "/x"` holds `base_path.path` and leaves `base_path.mode` unset.
            Some(_) => return key.ends_with(".path"),
        }
    }
    false
}

/// The config keys a set of environment variable names sets (bpgate's own table, plus
/// `BP_PRODUCTION`, which sets `mode`).
fn keys_set_by_env(names: &BTreeSet<String>) -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = ENV_VARS
        .iter()
        .filter(|v| names.contains(v.name))
        .map(|v| (v.name.to_string(), v.key))
        .collect();
    if names.contains("BP_PRODUCTION") {
        out.push(("BP_PRODUCTION".into(), "mode"));
    }
    out
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
        ("NetworkPolicy", "bpgate"),
        ("StatefulSet", "botpress"),
        ("Service", "botpress"),
        ("NetworkPolicy", "botpress-from-bpgate"),
    ] {
        assert!(kinds.contains(&want), "missing {want:?} in {kinds:?}");
    }
    assert!(
        !kinds.iter().any(|(k, _)| *k == "Secret"),
        "real Secrets must not be applied from the repository (only examples/)"
    );
}

/// Kubernetes: a setting is either in the ConfigMap or in the environment, never both. The
/// environment beats the file, so a key in both would make a ConfigMap edit plus `POST /reload`
/// change nothing. The pod's environment is the Deployment's plus the image's `ENV`.
#[test]
fn each_setting_in_one_place() {
    let docs = docs();
    let (_, c) = bpgate_pod(&docs);
    let table: toml::Table = configmap_toml(&docs)
        .parse()
        .unwrap_or_else(|e| panic!("the ConfigMap's bpgate.toml is not TOML: {e}"));

    let deployment_env: BTreeSet<String> = env_names(c).into_iter().collect();
    let image_env: BTreeSet<String> = dockerfile().env.into_iter().map(|(k, _)| k).collect();
    let mut both = Vec::new();
    for (source, names) in [
        ("Deployment env", &deployment_env),
        ("image ENV", &image_env),
    ] {
        for (name, key) in keys_set_by_env(names) {
            if toml_has(&table, key) {
                both.push(format!(
                    "`{key}` is in the ConfigMap's bpgate.toml and {name} in the {source}"
                ));
            }
        }
    }
    assert!(
        both.is_empty(),
        "settings in two places (the environment wins, so editing the ConfigMap would \
         change nothing): {both:#?}"
    );

    // Every BPGATE_* variable the Deployment sets is one bpgate reads (a typo would silently do
    // nothing), and only the secrets come from the environment: anything else belongs in the
    // ConfigMap, where `POST /reload` sees it.
    for name in &deployment_env {
        if name == "BPGATE_CONFIG" {
            continue;
        }
        let known = ENV_VARS.iter().any(|v| v.name == name.as_str());
        assert!(
            known || !name.starts_with("BPGATE_"),
            "Deployment env {name} is not a variable bpgate reads"
        );
        if known || name == "EXTERNAL_URL" || name == "BP_PRODUCTION" {
            assert!(
                env(c, name)["valueFrom"]["secretKeyRef"].is_mapping(),
                "Deployment env {name} is a setting: put its key in the ConfigMap instead"
            );
        }
    }
}

#[test]
fn bpgate_deployment_essentials() {
    let docs = docs();
    let (dep, c) = bpgate_pod(&docs);
    let loaded = load_pod_config(&docs);
    let cfg = &loaded.config;
    let spec = &dep["spec"];
    assert!(spec["replicas"].as_u64().unwrap_or(1) >= 2, "replicas >= 2");
    let pod = &spec["template"]["spec"];

    // The listeners are the container's ports; the probes use the admin one.
    let admin = u64::from(cfg.listen.admin.port());
    assert_eq!(port_number(c, &"admin".into()), admin);
    assert_eq!(
        port_number(c, &"https".into()),
        u64::from(cfg.listen.https.port())
    );
    let http = cfg.listen.http.expect("listen.http (the redirect) is set");
    assert_eq!(port_number(c, &"http".into()), u64::from(http.port()));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(port_number(c, &get["port"]), admin, "{probe} port");
    }

    // Graceful drain: a preStop pause lets the load balancer stop sending new connections
    // before SIGTERM starts the drain, and the grace period outlasts both.
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect(
            "no preStop sleep: without it the load balancer keeps sending new connections to a \
             pod that has started draining",
        );
    assert!(pre_stop >= 1, "preStop sleep of {pre_stop} s");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let drain = cfg.shutdown.drain_timeout.as_secs();
    assert!(
        grace > pre_stop + drain,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain_timeout {drain}: \
         SIGKILL would cut the drain"
    );

    // Secrets shared by the replicas.
    let (sticky_secret, _) = env_secret(c, "BPGATE_STICKY_SECRET");
    let (jwt_secret, _) = env_secret(c, "BPGATE_JWT_SECRET");
    assert_eq!(sticky_secret, jwt_secret);
    assert!(cfg.sticky.enabled);

    // Upstreams are exactly the StatefulSet's pods through its headless Service.
    let sts = find(&docs, "StatefulSet", "botpress");
    let svc_name = sts["spec"]["serviceName"].as_str().expect("serviceName");
    let headless = find(&docs, "Service", svc_name);
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    let n = sts["spec"]["replicas"].as_u64().expect("replicas");
    assert_eq!(n, 3);
    let port = seq(&headless["spec"]["ports"])[0]["port"].as_u64().unwrap();
    let want: Vec<String> = (0..n)
        .map(|i| format!("botpress-{i}.{svc_name}:{port}"))
        .collect();
    let got: Vec<String> = loaded
        .derived
        .nodes
        .iter()
        .map(|n| n.authority.clone())
        .collect();
    assert_eq!(got, want);

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

    // Volumes: TLS from a read-only mount of a kubernetes.io/tls Secret, audit on an emptyDir
    // (the root is read-only).
    let mounts = seq(&c["volumeMounts"]);
    let volumes = seq(&pod["volumes"]);
    let mount_of = |path: &Path| {
        mounts
            .iter()
            .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("\0")))
            .max_by_key(|m| m["mountPath"].as_str().map(str::len))
            .unwrap_or_else(|| panic!("{} is not on a mounted volume", path.display()))
    };
    let volume = |m: &Value| {
        volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {:?}", m["name"]))
            .clone()
    };
    let mut tls_secrets = BTreeSet::new();
    for (key, path, secret_key) in [
        ("tls.cert", &cfg.tls.cert, "tls.crt"),
        ("tls.key", &cfg.tls.key, "tls.key"),
    ] {
        let m = mount_of(path);
        assert_eq!(m["readOnly"].as_bool(), Some(true), "{key} mount read-only");
        let v = volume(m);
        let secret = v["secret"]["secretName"]
            .as_str()
            .unwrap_or_else(|| panic!("{key} is not on a Secret volume"))
            .to_string();
        assert!(
            seq(&v["secret"]["items"]).is_empty(),
            "{key}: the Secret volume remaps keys"
        );
        let rel = path.strip_prefix(m["mountPath"].as_str().unwrap()).unwrap();
        assert_eq!(
            rel,
            Path::new(secret_key),
            "{key} must name the Secret's `{secret_key}`"
        );
        tls_secrets.insert(secret);
    }
    assert_eq!(tls_secrets.len(), 1, "cert and key from one Secret");
    let tls_secret = tls_secrets.into_iter().next().unwrap();
    let ex = example(&docs, "Secret", &tls_secret).unwrap_or_else(|| {
        panic!("no example of the TLS Secret {tls_secret} under kubernetes/examples/")
    });
    assert_eq!(ex["type"].as_str(), Some("kubernetes.io/tls"));
    for k in ["tls.crt", "tls.key"] {
        assert!(ex["stringData"][k].is_string(), "example {tls_secret}: {k}");
    }
    // The documented command creates the Secret under the name the pod mounts.
    let create = format!("kubectl create secret tls {tls_secret} ");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(readme.contains(&create), "README lacks `{create}…`");
    let manifest = std::fs::read_to_string(deploy_dir().join("kubernetes/bpgate.yaml")).unwrap();
    assert!(manifest.contains(&create), "bpgate.yaml lacks `{create}…`");

    let audit = mount_of(&cfg.audit.dir);
    assert!(
        volume(audit)["emptyDir"].is_mapping(),
        "audit on an emptyDir"
    );
    assert_ne!(audit["readOnly"].as_bool(), Some(true));
    assert!(cfg.audit.enabled);

    // The config file is a directory mount of the ConfigMap, so that the kubelet updates it in
    // place (a subPath mount never sees a ConfigMap change, and reload would read the old file).
    let cfg_path = PathBuf::from(env_value(c, "BPGATE_CONFIG"));
    let m = mount_of(&cfg_path);
    assert_eq!(
        volume(m)["configMap"]["name"].as_str(),
        Some("bpgate-config")
    );
    assert!(
        m["subPath"].is_null(),
        "the ConfigMap is mounted by subPath"
    );
    assert_eq!(cfg_path.file_name().unwrap(), "bpgate.toml");
    assert_eq!(
        cfg_path.parent().unwrap(),
        Path::new(m["mountPath"].as_str().unwrap())
    );

    // Prometheus scrape annotation on the admin port.
    let ann = &spec["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        ann["prometheus.io/port"].as_str(),
        Some(admin.to_string().as_str())
    );
    assert_eq!(ann["prometheus.io/path"].as_str(), Some("/metrics"));
}

/// Does a NetworkPolicy select the pods with these labels?
fn selects(policy: &Value, labels: &Value) -> bool {
    let sel = &policy["spec"]["podSelector"];
    assert!(
        sel["matchExpressions"].is_null(),
        "matchExpressions not handled"
    );
    sel["matchLabels"]
        .as_mapping()
        .map(|m| m.iter().all(|(k, v)| &labels[k] == v))
        .unwrap_or(true)
}

/// The admin port reaches only this namespace and the monitoring namespace; the public ports
/// stay open to everyone (or the LoadBalancer would lead nowhere).
#[test]
fn network_policy_fences_the_admin_port() {
    let docs = docs();
    let (dep, c) = bpgate_pod(&docs);
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    let cfg = load_pod_config(&docs).config;
    let admin = u64::from(cfg.listen.admin.port());
    let public = [
        u64::from(cfg.listen.https.port()),
        u64::from(cfg.listen.http.expect("listen.http").port()),
    ];
    let policies: Vec<&Value> = docs
        .iter()
        .filter(|d| !d.is_example() && d.kind() == "NetworkPolicy" && selects(&d.v, labels))
        .map(|d| &d.v)
        .collect();
    assert!(
        !policies.is_empty(),
        "no NetworkPolicy selects the bpgate pods"
    );
    assert!(
        policies.iter().any(|p| seq(&p["spec"]["policyTypes"])
            .iter()
            .any(|t| t.as_str() == Some("Ingress"))),
        "no policy isolates bpgate's ingress"
    );

    let mut admin_from_monitoring = false;
    let mut open_to_all = BTreeSet::new();
    for rule in policies
        .iter()
        .flat_map(|p| seq(&p["spec"]["ingress"]).iter())
    {
        // No `ports` means every port.
        let ports: Vec<u64> = if seq(&rule["ports"]).is_empty() {
            public.iter().copied().chain([admin]).collect()
        } else {
            seq(&rule["ports"])
                .iter()
                .map(|p| port_number(c, &p["port"]))
                .collect()
        };
        let from = seq(&rule["from"]);
        if from.is_empty() {
            open_to_all.extend(ports.iter().copied());
            continue;
        }
        if !ports.contains(&admin) {
            continue;
        }
        for peer in from {
            assert!(
                peer["ipBlock"].is_null(),
                "the admin port is open to an ipBlock: {peer:?}"
            );
            let ns = &peer["namespaceSelector"];
            if !ns.is_null() {
                let narrowed = ns["matchLabels"]
                    .as_mapping()
                    .is_some_and(|m| !m.is_empty())
                    || !seq(&ns["matchExpressions"]).is_empty();
                assert!(
                    narrowed,
                    "the admin port is open to every namespace: {peer:?}"
                );
                admin_from_monitoring = true;
            }
        }
    }
    assert!(
        !open_to_all.contains(&admin),
        "a rule without `from` opens the admin port {admin} to everyone"
    );
    for p in public {
        assert!(
            open_to_all.contains(&p),
            "public port {p} is not open to clients"
        );
    }
    assert!(
        admin_from_monitoring,
        "no rule lets the monitoring namespace scrape the admin port"
    );
}

#[test]
fn public_service_is_l4_and_hides_admin() {
    let docs = docs();
    let (dep, c) = bpgate_pod(&docs);
    let admin = u64::from(load_pod_config(&docs).config.listen.admin.port());
    let svc = find(&docs, "Service", "bpgate");
    assert_eq!(svc["spec"]["type"].as_str(), Some("LoadBalancer"));
    let ports = seq(&svc["spec"]["ports"]);
    assert!(ports
        .iter()
        .any(|p| p["port"].as_u64() == Some(443) && port_number(c, &p["targetPort"]) == 8443));
    for p in ports {
        assert_eq!(p["protocol"].as_str().unwrap_or("TCP"), "TCP");
        assert_ne!(p["port"].as_u64(), Some(admin), "admin port exposed");
        assert_ne!(
            port_number(c, &p["targetPort"]),
            admin,
            "admin port exposed"
        );
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
                assert_ne!(
                    p["port"].as_u64(),
                    Some(admin),
                    "{} exposes {admin}",
                    d.name()
                );
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
    let cfg = load_pod_config(&docs).config;
    let bpgate_url = cfg.external_url.expect("bpgate's external_url");
    assert_eq!(env_value(c, "EXTERNAL_URL"), bpgate_url);
    assert!(bpgate_url.starts_with("https://"));
}

/// Every Secret the manifests use (env references and volumes) has an example of its shape.
#[test]
fn referenced_secrets_have_examples() {
    let docs = docs();
    let mut refs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in docs.iter().filter(|d| !d.is_example()) {
        let pod = &d.v["spec"]["template"]["spec"];
        for c in seq(&pod["containers"]) {
            for e in seq(&c["env"]) {
                let r = &e["valueFrom"]["secretKeyRef"];
                if let (Some(n), Some(k)) = (r["name"].as_str(), r["key"].as_str()) {
                    refs.entry(n.into()).or_default().push(k.into());
                }
            }
        }
        for v in seq(&pod["volumes"]) {
            if let Some(n) = v["secret"]["secretName"].as_str() {
                refs.entry(n.into()).or_default();
            }
        }
    }
    assert!(refs.len() >= 3, "{refs:?}");
    for (name, keys) in refs {
        let ex = example(&docs, "Secret", &name)
            .unwrap_or_else(|| panic!("no example for Secret {name}"));
        for k in keys {
            assert!(
                ex["stringData"][k.as_str()].is_string(),
                "example Secret {name} lacks {k}"
            );
        }
    }
}

/// The ConfigMap's bpgate.toml validates with the pod's environment, and on its own.
#[test]
fn embedded_config_validates_with_the_deployment_env() {
    let docs = docs();
    let (dep, _) = bpgate_pod(&docs);
    let loaded = load_pod_config(&docs);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bpgate.toml");
    std::fs::write(&path, configmap_toml(&docs)).unwrap();
    // Without the environment too: production mode without the sticky secret is refused at
    // start, not by the loader, so the file alone must still be coherent.
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
    // The admin listener binds the pod's network: production mode needs the token the
    // Deployment passes (BPGATE_ADMIN_TOKEN from bpgate-secrets), or it refuses to start.
    let admin = bpgate::posture::check::admin_api(&loaded);
    assert_eq!(admin.status, bpgate::posture::Status::Pass, "{admin:?}");
    assert!(!loaded.config.admin.token.is_empty());
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
    // `.ci/run` installs the binary at exactly this path and runs `systemd-analyze verify`.
    assert!(one("ExecStart").starts_with("/usr/local/bin/bpgate --config /etc/bpgate/bpgate.toml"));
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(ci.contains("systemd-analyze verify"));
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

/// The Dockerfile, as logical instructions (continuation lines joined, comments dropped).
struct Dockerfile {
    instr: Vec<(String, String)>,
    /// `ENV` of the final stage, the image's environment.
    env: Vec<(String, String)>,
}

impl Dockerfile {
    fn final_stage(&self) -> &[(String, String)] {
        let last = self
            .instr
            .iter()
            .rposition(|(i, _)| i == "FROM")
            .expect("FROM");
        &self.instr[last..]
    }
}

fn dockerfile() -> Dockerfile {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let mut instr = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                let (i, rest) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
                instr.push((i.to_ascii_uppercase(), rest.trim().to_string()));
                cur.clear();
            }
        }
    }
    let mut df = Dockerfile {
        instr,
        env: Vec::new(),
    };
    let mut env = Vec::new();
    for (_, args) in df.final_stage().iter().filter(|(i, _)| i == "ENV") {
        for kv in args.split_whitespace() {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV {args}: use the KEY=value form"));
            env.push((k.to_string(), v.trim_matches('"').to_string()));
        }
    }
    df.env = env;
    df
}

#[test]
fn dockerfile_is_multi_stage_and_non_root() {
    let df = dockerfile();
    let froms = df.instr.iter().filter(|(i, _)| i == "FROM").count();
    assert!(froms >= 2, "multi-stage: at least two FROM");
    let first_from = &df.instr.iter().find(|(i, _)| i == "FROM").unwrap().1;
    assert!(first_from.starts_with("rust:"));
    assert!(df
        .instr
        .iter()
        .any(|(i, v)| i == "RUN" && v.contains("cargo build --release --locked")));
    // The final stage runs as a non-root user, numerically (runAsNonRoot can only check a uid).
    let last = df.final_stage();
    let user = last
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, u)| u.as_str())
        .expect("USER in the final stage");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user} is not numeric"));
    assert_ne!(uid, 0, "runs as root");
    assert!(last
        .iter()
        .any(|(i, v)| i == "ENTRYPOINT" && v.contains("/usr/local/bin/bpgate")));
}

/// The image's settings are in its config file, not in `ENV`: an `ENV` would beat every file
/// mounted over it later (the Kubernetes ConfigMap). The file validates and agrees with `EXPOSE`
/// and `VOLUME`.
#[test]
fn dockerfile_settings_live_in_its_config_file() {
    let df = dockerfile();
    let names: BTreeSet<String> = df.env.iter().map(|(k, _)| k.clone()).collect();
    let settings = keys_set_by_env(&names);
    assert!(
        settings.is_empty(),
        "the image's ENV sets {settings:?}: put them in config/deploy/container.toml"
    );
    let config_path = &df
        .env
        .iter()
        .find(|(k, _)| k == "BPGATE_CONFIG")
        .expect("ENV BPGATE_CONFIG")
        .1;
    let last = df.final_stage();
    let src = last
        .iter()
        .filter(|(i, _)| i == "COPY")
        .find_map(|(_, v)| {
            let parts: Vec<&str> = v.split_whitespace().collect();
            (parts.len() == 2 && parts[1] == config_path).then(|| parts[0].to_string())
        })
        .unwrap_or_else(|| panic!("no `COPY <file> {config_path}` from the build context"));
    let loaded = bpgate::config::load(&repo().join(&src), &|_| None, &Default::default())
        .unwrap_or_else(|e| panic!("{src} does not validate:\n{e}"));
    let cfg = &loaded.config;
    let expose: Vec<u16> = last
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, v)| v.split_whitespace().map(|p| p.parse().expect("port")))
        .collect();
    for (what, addr) in [("https", cfg.listen.https), ("admin", cfg.listen.admin)] {
        assert!(
            addr.ip().is_unspecified(),
            "{what} must listen on all interfaces"
        );
        assert!(expose.contains(&addr.port()), "{what} port not in EXPOSE");
    }
    let volume = last
        .iter()
        .find(|(i, _)| i == "VOLUME")
        .map(|(_, v)| v.trim_matches(|c| "[]\" ".contains(c)).to_string())
        .expect("VOLUME");
    assert!(
        cfg.audit.dir.starts_with(&volume),
        "audit.dir {} outside the VOLUME {volume}",
        cfg.audit.dir.display()
    );
}
