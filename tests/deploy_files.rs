//! The deployment files in `config/` and the Dockerfile, checked by parsing
//! them (Docker and systemd do not run here): every file the compose stack
//! mounts exists, the pieces point at each other correctly (ports, service
//! names, secrets, datasource uids, label names), and the Dockerfile and
//! systemd unit say what the README promises.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_norway::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config_dir() -> PathBuf {
    root().join("config")
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn yaml(rel: &str) -> Value {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

fn toml_file(rel: &str) -> toml::Value {
    toml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not TOML: {e}"))
}

fn s(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

fn seq(v: &Value) -> Vec<&Value> {
    v.as_sequence()
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn keys(v: &Value) -> Vec<String> {
    v.as_mapping()
        .map(|m| m.keys().map(|k| s(k).to_string()).collect())
        .unwrap_or_default()
}

/// A service's networks, short (list) or long (mapping) syntax.
fn networks(svc: &Value) -> BTreeSet<String> {
    match &svc["networks"] {
        Value::Sequence(l) => l.iter().map(|n| s(n).to_string()).collect(),
        Value::Mapping(_) => keys(&svc["networks"]).into_iter().collect(),
        _ => BTreeSet::from(["default".to_string()]),
    }
}

/// `(source, target)` of each volume entry of a service.
fn mounts(svc: &Value) -> Vec<(String, String)> {
    seq(&svc["volumes"])
        .into_iter()
        .map(|v| match v {
            Value::String(short) => {
                let mut parts = short.splitn(3, ':');
                let src = parts.next().unwrap().to_string();
                let dst = parts
                    .next()
                    .unwrap_or_else(|| panic!("volume `{short}` has no target"))
                    .to_string();
                (src, dst)
            }
            long => (
                s(&long["source"]).to_string(),
                s(&long["target"]).to_string(),
            ),
        })
        .collect()
}

fn is_path(src: &str) -> bool {
    src.starts_with('.') || src.starts_with('/') || src.starts_with('~')
}

/// A service's secret names, short or long syntax.
fn service_secrets(svc: &Value) -> BTreeSet<String> {
    seq(&svc["secrets"])
        .into_iter()
        .map(|v| match v {
            Value::String(n) => n.clone(),
            long => s(&long["source"]).to_string(),
        })
        .collect()
}

fn env(svc: &Value, key: &str) -> Option<String> {
    match &svc["environment"] {
        Value::Mapping(m) => m.get(key).map(|v| match v {
            Value::String(x) => x.clone(),
            other => serde_norway::to_string(other).unwrap().trim().to_string(),
        }),
        Value::Sequence(l) => l
            .iter()
            .find_map(|e| s(e).strip_prefix(&format!("{key}=")).map(String::from)),
        _ => None,
    }
}

struct Compose {
    doc: Value,
}

impl Compose {
    fn load() -> Compose {
        Compose {
            doc: yaml("config/compose.yaml"),
        }
    }
    fn services(&self) -> BTreeMap<String, &Value> {
        self.doc["services"]
            .as_mapping()
            .expect("services")
            .iter()
            .map(|(k, v)| (s(k).to_string(), v))
            .collect()
    }
    fn service(&self, name: &str) -> &Value {
        let v = &self.doc["services"][name];
        assert!(v.is_mapping(), "compose.yaml has no service `{name}`");
        v
    }
    /// The repo file a service mounts at `target`.
    fn mounted_at(&self, service: &str, target: &str) -> PathBuf {
        let (src, _) = mounts(self.service(service))
            .into_iter()
            .find(|(_, dst)| dst == target)
            .unwrap_or_else(|| panic!("{service} mounts nothing at {target}"));
        assert!(src.starts_with('.'), "{service}: {src} is not a repo path");
        config_dir().join(src)
    }
    fn portcullis_ip(&self) -> String {
        s(&self.service("portcullis")["networks"]["edge"]["ipv4_address"]).to_string()
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a.canonicalize().ok() == b.canonicalize().ok() && a.exists()
}

// --- compose.yaml --------------------------------------------------------------

#[test]
fn compose_file_parses_and_every_mounted_repo_file_exists() {
    let c = Compose::load();
    let services = c.services();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    let want = BTreeSet::from([
        "portcullis",
        "postgresql",
        "authentik-server",
        "authentik-worker",
        "prometheus",
        "grafana",
        "loki",
        "alloy",
    ]);
    assert_eq!(names, want, "the master stack's services");

    let volumes: BTreeSet<String> = keys(&c.doc["volumes"]).into_iter().collect();
    let declared_networks: BTreeSet<String> = keys(&c.doc["networks"]).into_iter().collect();
    let secrets: BTreeSet<String> = keys(&c.doc["secrets"]).into_iter().collect();
    let allowed_host_paths = ["/var/run/docker.sock"];
    let mut used_volumes = BTreeSet::new();
    for (name, svc) in &services {
        for (src, dst) in mounts(svc) {
            assert!(dst.starts_with('/'), "{name}: target {dst} is not absolute");
            if src.starts_with('.') {
                let p = config_dir().join(&src);
                assert!(
                    p.exists(),
                    "{name} mounts {src}, which is not in the repo ({})",
                    p.display()
                );
            } else if is_path(&src) {
                assert!(
                    allowed_host_paths.contains(&src.as_str()),
                    "{name} mounts host path {src}"
                );
            } else {
                assert!(
                    volumes.contains(&src),
                    "{name} uses volume {src}, not declared under volumes:"
                );
                used_volumes.insert(src);
            }
        }
        for n in networks(svc) {
            assert!(
                declared_networks.contains(&n),
                "{name}: network {n} not declared"
            );
        }
        for sec in service_secrets(svc) {
            assert!(secrets.contains(&sec), "{name}: secret {sec} not declared");
        }
        let deps: Vec<String> = match &svc["depends_on"] {
            Value::Sequence(l) => l.iter().map(|d| s(d).to_string()).collect(),
            Value::Mapping(_) => keys(&svc["depends_on"]),
            _ => vec![],
        };
        for d in deps {
            assert!(services.contains_key(&d), "{name} depends on unknown {d}");
        }
        // Images are pinned, never `latest`.
        if let Some(image) = svc["image"].as_str() {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest" && !tag.contains('/'),
                "{name}: image {image} is not pinned to a tag"
            );
        }
        if let Value::Mapping(_) = &svc["build"] {
            let ctx = config_dir().join(s(&svc["build"]["context"]));
            let file = svc["build"]["dockerfile"].as_str().unwrap_or("Dockerfile");
            assert!(
                ctx.join(file).is_file(),
                "{name}: no {file} in {}",
                ctx.display()
            );
            assert!(
                same_file(&ctx, &root()),
                "{name}: build context is the repo root"
            );
        }
    }
    assert_eq!(used_volumes, volumes, "declared volumes nobody uses");

    // Secret files are the operator's to create, in git-ignored config/secrets.
    let gitignore = read("config/secrets/.gitignore");
    assert!(
        gitignore.lines().any(|l| l.trim() == "*"),
        "config/secrets/.gitignore ignores everything"
    );
    let readme = read("README.md");
    let section = readme_section(&readme, "## Deploy with Docker Compose");
    for name in &secrets {
        let file = s(&c.doc["secrets"][name.as_str()]["file"]);
        assert!(
            file.starts_with("./secrets/"),
            "secret {name} comes from {file}, outside config/secrets"
        );
        let base = file.trim_start_matches("./secrets/");
        assert!(
            section.contains(base),
            "README's compose section does not say how to create secrets/{base}"
        );
    }
}

fn readme_section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no `{heading}`"))
        + 1;
    let rest = &readme[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    &rest[..end]
}

#[test]
fn only_portcullis_is_published_and_only_on_80_and_443() {
    let c = Compose::load();
    for (name, svc) in c.services() {
        let ports: Vec<String> = seq(&svc["ports"])
            .into_iter()
            .map(|p| match p {
                Value::String(x) => x.clone(),
                other => format!(
                    "{}:{}",
                    other["published"].as_u64().unwrap_or(0),
                    other["target"].as_u64().unwrap_or(0)
                ),
            })
            .collect();
        if name == "portcullis" {
            let mut ports = ports;
            ports.sort();
            assert_eq!(
                ports,
                ["443:443", "80:80"],
                "portcullis publishes 80 and 443 only"
            );
        } else {
            assert!(
                ports.is_empty(),
                "{name} publishes {ports:?}: only Portcullis faces the network"
            );
        }
    }
}

#[test]
fn compose_wiring_matches_the_portcullis_config() {
    let c = Compose::load();
    let pc = c.service("portcullis");
    // The config it runs with.
    let config_path = c.mounted_at("portcullis", "/etc/portcullis/portcullis.toml");
    assert!(same_file(&config_path, &config_dir().join("compose.toml")));
    let cfg = toml_file("config/compose.toml");
    let server = &cfg["server"];

    // Admin: reachable by Prometheus over the network, so it has a token.
    let admin = server["admin"].as_str().unwrap();
    let admin_port = admin.rsplit_once(':').unwrap().1;
    assert!(
        admin.starts_with("0.0.0.0:"),
        "admin {admin} must listen beyond loopback in a container"
    );
    assert!(server.get("admin_token_file").is_some());
    let prom = yaml("config/prometheus.yml");
    let targets: Vec<String> = seq(&prom["scrape_configs"])
        .into_iter()
        .filter(|j| j["job_name"] == "portcullis")
        .flat_map(|j| {
            seq(&j["static_configs"])
                .into_iter()
                .flat_map(|sc| seq(&sc["targets"]))
        })
        .map(|t| s(t).to_string())
        .collect();
    assert_eq!(targets, [format!("portcullis:{admin_port}")]);
    // The HEALTHCHECK reads server.admin from the mounted config itself:
    // no second copy of the address that could disagree with it.
    assert!(
        !read("Dockerfile").contains("PORTCULLIS_ADMIN") && env(pc, "PORTCULLIS_ADMIN").is_none(),
        "the health probe's address comes from server.admin ({admin}), not the environment"
    );

    // Every secret file the config names is a compose secret granted to it.
    let granted = service_secrets(pc);
    let mut file_keys = Vec::new();
    collect_file_keys(&cfg, &mut file_keys);
    assert!(file_keys.len() >= 2);
    for (key, path) in file_keys {
        let name = path
            .strip_prefix("/run/secrets/")
            .unwrap_or_else(|| panic!("{key} = {path}: not a compose secret"));
        assert!(
            granted.contains(name),
            "{key} = {path}: secret {name} not granted to portcullis"
        );
    }

    // state_dir is a named volume.
    let state = server["state_dir"].as_str().unwrap();
    assert!(
        mounts(pc)
            .iter()
            .any(|(src, dst)| dst == state && !is_path(src)),
        "state_dir {state} is not on a volume"
    );

    // Every upstream is a service on a network Portcullis shares.
    let services = c.services();
    let pc_nets = networks(pc);
    for r in cfg["route"].as_array().unwrap() {
        let Some(up) = r.get("upstream") else {
            continue;
        };
        let ups: Vec<&str> = match up {
            toml::Value::String(u) => vec![u.as_str()],
            toml::Value::Array(a) => a.iter().filter_map(|u| u.as_str()).collect(),
            _ => panic!("upstream {up:?}"),
        };
        for u in ups {
            let host = u
                .trim_start_matches("http://")
                .split([':', '/'])
                .next()
                .unwrap();
            let svc = services
                .get(host)
                .unwrap_or_else(|| panic!("upstream {u}: no compose service {host}"));
            assert!(
                !networks(svc).is_disjoint(&pc_nets),
                "upstream {u}: {host} shares no network with portcullis"
            );
        }
    }

    // Grafana and Authentik trust exactly Portcullis' fixed address.
    let ip = c.portcullis_ip();
    let subnet = s(&c.doc["networks"]["edge"]["ipam"]["config"][0]["subnet"]);
    let net: ipnet::IpNet = subnet.parse().unwrap();
    assert!(
        net.contains(&ip.parse::<std::net::IpAddr>().unwrap()),
        "{ip} in {subnet}"
    );
    let grafana = c.service("grafana");
    assert_eq!(
        env(grafana, "GF_AUTH_PROXY_WHITELIST").as_deref(),
        Some(ip.as_str())
    );
    assert_eq!(
        env(
            c.service("authentik-server"),
            "AUTHENTIK_LISTEN__TRUSTED_PROXY_CIDRS"
        ),
        Some(format!("{ip}/32"))
    );
    // Grafana reads the user from a header Portcullis sends on its route.
    assert_eq!(
        env(grafana, "GF_AUTH_PROXY_ENABLED").as_deref(),
        Some("true")
    );
    let header = env(grafana, "GF_AUTH_PROXY_HEADER_NAME").unwrap();
    assert_eq!(header.to_ascii_lowercase(), "x-authentik-username");
    let grafana_route = cfg["route"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["upstream"]
                .as_str()
                .is_some_and(|u| u.contains("//grafana:"))
        })
        .expect("a route to grafana");
    assert!(
        grafana_route["auth"].get("oidc").is_some(),
        "grafana is behind SSO"
    );
    assert_eq!(
        grafana_route
            .get("identity_headers")
            .and_then(|v| v.as_str())
            .unwrap_or("authentik"),
        "authentik"
    );
    // Grafana's auth proxy only sees Portcullis' address if the two share
    // exactly one network (the edge one).
    let shared: Vec<_> = networks(grafana).intersection(&pc_nets).cloned().collect();
    assert_eq!(shared, ["edge"]);

    // Authentik 2025.10+ needs no Redis; server and worker run one tag.
    let server_img = s(&c.service("authentik-server")["image"]);
    assert_eq!(server_img, s(&c.service("authentik-worker")["image"]));
    let version = server_img.rsplit_once(':').unwrap().1;
    let mut v = version.split('.').map(|p| p.parse::<u32>().unwrap());
    let (major, minor) = (v.next().unwrap(), v.next().unwrap());
    assert!(
        (major, minor) >= (2025, 10),
        "Authentik {version} still needs Redis"
    );
}

fn collect_file_keys(v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                if k.ends_with("_file") {
                    out.push((k.clone(), v.as_str().unwrap().to_string()));
                }
                collect_file_keys(v, out);
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|v| collect_file_keys(v, out)),
        _ => {}
    }
}

// --- Prometheus, Loki, Promtail -----------------------------------------------

#[test]
fn prometheus_scrapes_the_admin_listener_metrics_path() {
    let c = Compose::load();
    let prom = yaml("config/prometheus.yml");
    let job = seq(&prom["scrape_configs"])
        .into_iter()
        .find(|j| j["job_name"] == "portcullis")
        .expect("a portcullis job");
    assert_eq!(
        job["metrics_path"].as_str().unwrap_or("/metrics"),
        "/metrics"
    );
    assert_eq!(job["scheme"].as_str().unwrap_or("http"), "http");
    for j in seq(&prom["scrape_configs"]) {
        for sc in seq(&j["static_configs"]) {
            for t in seq(&sc["targets"]) {
                let host = s(t).split(':').next().unwrap();
                assert!(
                    host == "localhost" || c.services().contains_key(host),
                    "scrape target {} is not a compose service",
                    s(t)
                );
            }
        }
    }
    // Mounted where the command line says.
    let svc = c.service("prometheus");
    let flag = seq(&svc["command"])
        .into_iter()
        .map(s)
        .find_map(|a| a.strip_prefix("--config.file="))
        .expect("--config.file");
    assert!(same_file(
        &c.mounted_at("prometheus", flag),
        &config_dir().join("prometheus.yml")
    ));
}

#[test]
fn loki_config_parses_and_stores_on_its_volume() {
    let c = Compose::load();
    let loki = yaml("config/loki.yml");
    assert_eq!(loki["server"]["http_listen_port"].as_u64(), Some(3100));
    let prefix = s(&loki["common"]["path_prefix"]);
    assert!(
        mounts(c.service("loki"))
            .iter()
            .any(|(src, dst)| dst == prefix && !is_path(src))
    );
    let schema = &loki["schema_config"]["configs"][0];
    assert_eq!(s(&schema["store"]), "tsdb");
    assert_eq!(s(&schema["schema"]), "v13");
    let cmd: Vec<&str> = seq(&c.service("loki")["command"])
        .into_iter()
        .map(s)
        .collect();
    let file = cmd
        .iter()
        .find_map(|a| a.strip_prefix("-config.file="))
        .expect("-config.file");
    assert!(same_file(
        &c.mounted_at("loki", file),
        &config_dir().join("loki.yml")
    ));
}

/// Labels Promtail attaches to Portcullis' lines.
fn promtail_labels(p: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for job in seq(&p["scrape_configs"]) {
        for r in seq(&job["relabel_configs"]) {
            if let Some(t) = r["target_label"].as_str()
                && !t.starts_with("__")
            {
                out.insert(t.to_string());
            }
        }
        fn stages(v: &Value, out: &mut BTreeSet<String>) {
            for st in seq(v) {
                if let Value::Mapping(_) = &st["labels"] {
                    out.extend(keys(&st["labels"]));
                }
                if let Value::Mapping(_) = &st["match"] {
                    stages(&st["match"]["stages"], out);
                }
            }
        }
        stages(&job["pipeline_stages"], &mut out);
    }
    out
}

#[test]
fn promtail_ships_docker_logs_to_loki_with_few_labels() {
    let c = Compose::load();
    let p = yaml("config/promtail.yml");
    let loki = yaml("config/loki.yml");
    let url = s(&p["clients"][0]["url"]);
    assert_eq!(
        url,
        format!(
            "http://loki:{}/loki/api/v1/push",
            loki["server"]["http_listen_port"].as_u64().unwrap()
        )
    );
    // Promtail is kept for its users (Alloy replaced it in the compose
    // stack): its config still targets this compose project's containers.
    assert!(!c.services().contains_key("promtail"));
    let job = &p["scrape_configs"][0];
    let sd = &job["docker_sd_configs"][0];
    assert!(s(&sd["host"]).starts_with("unix://"));
    let filter = s(&sd["filters"][0]["values"][0]);
    assert_eq!(
        filter,
        format!("com.docker.compose.project={}", s(&c.doc["name"]))
    );
    assert!(Path::new(s(&p["positions"]["filename"])).is_absolute());

    // The JSON stage reads the fields our lines have, the timestamp stage
    // our timestamp field.
    let text = read("config/promtail.yml");
    for field in ["level", "target", "route", "status", "timestamp"] {
        assert!(
            text.contains(&format!("{field}: {field}")),
            "json stage extracts {field}"
        );
    }
    assert!(text.contains("format: RFC3339Nano"));

    let labels = promtail_labels(&p);
    let allowed = BTreeSet::from(
        [
            "service",
            "container",
            "stream",
            "level",
            "target",
            "route",
            "status_class",
        ]
        .map(String::from),
    );
    assert!(
        labels.is_subset(&allowed),
        "labels {labels:?} beyond {allowed:?}"
    );
    for must in ["service", "level", "target", "route", "status_class"] {
        assert!(labels.contains(must), "no `{must}` label");
    }

    // Every label the dashboard's Loki queries select on is one Promtail sets.
    let d: serde_json::Value =
        serde_json::from_str(&read("config/grafana/portcullis.json")).unwrap();
    for panel in d["panels"].as_array().unwrap() {
        if panel["datasource"]["uid"] != "${DS_LOKI}" {
            continue;
        }
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let selector = &expr[expr.find('{').unwrap() + 1..expr.find('}').unwrap()];
            for matcher in selector.split(',') {
                let name = matcher.trim().split(['=', '!', '~']).next().unwrap().trim();
                assert!(
                    labels.contains(name),
                    "Loki query selects on `{name}`, which Promtail does not set: {expr}"
                );
            }
        }
    }
}

// --- Grafana ---------------------------------------------------------------------

#[test]
fn grafana_provisioning_matches_the_dashboard() {
    let c = Compose::load();
    let prov = c.mounted_at("grafana", "/etc/grafana/provisioning");
    assert!(same_file(&prov, &config_dir().join("grafana/provisioning")));

    let mut uids = BTreeMap::new();
    for entry in std::fs::read_dir(prov.join("datasources")).unwrap() {
        let path = entry.unwrap().path();
        let v: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["apiVersion"].as_u64(), Some(1));
        for ds in seq(&v["datasources"]) {
            uids.insert(
                s(&ds["uid"]).to_string(),
                (s(&ds["type"]).to_string(), s(&ds["url"]).to_string()),
            );
        }
    }
    assert_eq!(
        uids["prometheus"],
        (
            "prometheus".to_string(),
            "http://prometheus:9090".to_string()
        )
    );
    assert_eq!(
        uids["loki"],
        ("loki".to_string(), "http://loki:3100".to_string())
    );
    let gnets = networks(c.service("grafana"));
    for svc in ["prometheus", "loki"] {
        assert!(
            !networks(c.service(svc)).is_disjoint(&gnets),
            "grafana cannot reach {svc}"
        );
    }

    // The dashboard provider reads the folder the dashboard is mounted in.
    let providers: Value = serde_norway::from_str(
        &std::fs::read_to_string(prov.join("dashboards/portcullis.yml")).unwrap(),
    )
    .unwrap();
    let folder = s(&providers["providers"][0]["options"]["path"]).to_string();
    let dash = c.mounted_at("grafana", &format!("{folder}/portcullis.json"));
    assert!(same_file(
        &dash,
        &config_dir().join("grafana/portcullis.json")
    ));

    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dash).unwrap()).unwrap();
    assert_eq!(d["uid"], "portcullis");
    let mut ids = BTreeSet::new();
    fn datasources(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(ds) = o.get("datasource")
                    && let Some(uid) = ds["uid"].as_str()
                {
                    out.push((
                        uid.to_string(),
                        ds["type"].as_str().unwrap_or("").to_string(),
                    ));
                }
                o.values().for_each(|v| datasources(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| datasources(v, out)),
            _ => {}
        }
    }
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id {} twice",
            p["id"]
        );
        assert!(p["gridPos"]["w"].as_u64().is_some_and(|w| w <= 24));
        if p["type"] != "row" {
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
            assert!(
                targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty()))
            );
        }
    }
    // No two panels share grid cells (Grafana would shuffle them).
    let grid: Vec<(u64, [u64; 4])> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let g = &p["gridPos"];
            let n = |k: &str| g[k].as_u64().unwrap();
            (p["id"].as_u64().unwrap(), [n("x"), n("y"), n("w"), n("h")])
        })
        .collect();
    for (i, (a, [ax, ay, aw, ah])) in grid.iter().enumerate() {
        for (b, [bx, by, bw, bh]) in &grid[i + 1..] {
            let apart = ax + aw <= *bx || bx + bw <= *ax || ay + ah <= *by || by + bh <= *ay;
            assert!(apart, "panels {a} and {b} overlap");
        }
    }
    let mut used = Vec::new();
    datasources(&d["panels"], &mut used);
    datasources(&d["templating"], &mut used);
    // Datasources are variables (`${DS_PROMETHEUS}`, `${DS_LOKI}`), so the
    // dashboard imports into an existing Grafana (`__inputs` asks which);
    // provisioned, each variable's default is the provisioned uid.
    let vars: BTreeMap<String, &serde_json::Value> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "datasource")
        .map(|v| (v["name"].as_str().unwrap().to_string(), v))
        .collect();
    let inputs: BTreeSet<&str> = d["__inputs"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["name"].as_str()).collect())
        .unwrap_or_default();
    let mut kinds = BTreeSet::new();
    for (uid, kind) in used {
        let name = uid
            .strip_prefix("${")
            .and_then(|u| u.strip_suffix('}'))
            .unwrap_or_else(|| panic!("datasource uid {uid} is fixed, not a variable"));
        let var = vars
            .get(name)
            .unwrap_or_else(|| panic!("datasource variable {name} is not defined"));
        assert!(inputs.contains(name), "{name} is not in __inputs");
        assert_eq!(var["query"], kind.as_str(), "variable {name} lists {kind}s");
        let default = var["current"]["value"].as_str().unwrap();
        let (t, _) = uids.get(default).unwrap_or_else(|| {
            panic!("{name} defaults to datasource uid {default}, which is not provisioned")
        });
        assert_eq!(*t, kind, "datasource {default}");
        kinds.insert(name.to_string());
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["DS_LOKI".to_string(), "DS_PROMETHEUS".to_string()])
    );
}

// --- systemd -----------------------------------------------------------------------

/// `[Section]` → key → every value (keys may repeat).
fn unit_file(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        assert!(!section.is_empty(), "{line} outside a section");
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

#[test]
fn systemd_unit_reloads_with_sighup_and_is_hardened() {
    let unit = unit_file(&read("config/portcullis.service"));
    let svc = &unit["Service"];
    let one = |k: &str| -> &str {
        let v = svc.get(k).unwrap_or_else(|| panic!("no {k}="));
        assert_eq!(v.len(), 1, "{k} set more than once");
        &v[0]
    };
    let reload = one("ExecReload");
    assert!(
        reload.contains("kill") && reload.contains("-HUP") && reload.contains("$MAINPID"),
        "ExecReload={reload}"
    );
    let start = one("ExecStart");
    assert!(
        start.contains(" run ") && start.contains("--config"),
        "ExecStart={start}"
    );
    assert_eq!(one("User"), "portcullis");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert!(
        one("AmbientCapabilities")
            .split_whitespace()
            .any(|c| c == "CAP_NET_BIND_SERVICE")
    );
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("Restart"), "on-failure");
    assert!(unit["Install"]["WantedBy"].contains(&"multi-user.target".to_string()));

    // The config it runs is the example, and the only writable path is the
    // example's state_dir.
    let env: Vec<&String> = svc["Environment"].iter().collect();
    assert!(
        env.iter()
            .any(|e| *e == "PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml")
    );
    let cfg = toml_file("config/portcullis.toml");
    let state = cfg["server"]["state_dir"].as_str().unwrap();
    assert_eq!(one("ReadWritePaths"), state);
    assert_eq!(format!("/var/lib/{}", one("StateDirectory")), state);
    let admin = cfg["server"]["admin"].as_str().unwrap();
    assert!(
        admin.starts_with("127.0.0.1:"),
        "the host example keeps admin on loopback: {admin}"
    );
}

// --- Dockerfile ----------------------------------------------------------------------

/// (INSTRUCTION, arguments) with continuation lines joined and comments
/// dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in read("Dockerfile").lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        if let Some(part) = t.strip_suffix('\\') {
            cur.push_str(part);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (ins, args) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
        out.push((ins.to_ascii_uppercase(), args.trim().to_string()));
        cur.clear();
    }
    out
}

fn json_array(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not an exec-form array ({e}): {args}"))
}

/// A path is excluded by .dockerignore (which uses only plain paths and
/// `**/name` here; anything fancier fails this helper loudly).
fn dockerignored(path: &str) -> bool {
    read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|pat| {
            assert!(
                !pat.contains(['!', '?', '[']) && !pat.trim_start_matches("**/").contains('*'),
                "unsupported .dockerignore pattern {pat}"
            );
            match pat.strip_prefix("**/") {
                Some(name) => path.split('/').any(|c| c == name),
                None => path == pat || path.starts_with(&format!("{pat}/")),
            }
        })
}

#[test]
fn dockerfile_is_multi_stage_locked_and_unprivileged() {
    let ins = dockerfile();
    let froms: Vec<&String> = ins
        .iter()
        .filter(|(i, _)| i == "FROM")
        .map(|(_, a)| a)
        .collect();
    assert!(froms.len() >= 2, "multi-stage");
    let builder = froms
        .iter()
        .find(|f| f.contains("/rust:"))
        .expect("a rust build stage");
    let (image, stage) = builder
        .split_once(" AS ")
        .or_else(|| builder.split_once(" as "))
        .expect("named build stage");
    let tag = image.rsplit_once(':').unwrap().1;
    assert!(
        image.contains("/rust:") && tag.ends_with("-bookworm"),
        "builder {image}"
    );
    let mut v = tag
        .split('-')
        .next()
        .unwrap()
        .split('.')
        .map(|p| p.parse::<u32>().unwrap());
    // edition 2024 with let-chains needs 1.88.
    assert!(
        (v.next().unwrap(), v.next().unwrap()) >= (1, 88),
        "builder {image}"
    );
    // The default (last) stage runs on Debian slim, through the stages it
    // builds on.
    let stage_of = |f: &str| -> (String, Option<String>) {
        match f.split_once(" AS ").or_else(|| f.split_once(" as ")) {
            Some((image, name)) => (image.trim().to_string(), Some(name.trim().to_string())),
            None => (f.trim().to_string(), None),
        }
    };
    let mut base = stage_of(froms.last().unwrap()).0;
    while let Some(parent) = froms
        .iter()
        .map(|f| stage_of(f))
        .find(|(_, name)| name.as_deref() == Some(base.as_str()))
    {
        base = parent.0;
    }
    assert!(base.ends_with("debian:bookworm-slim"), "runtime on {base}");
    // The test suite's prebuilt-binary stage comes before the build
    // stage, so the classic builder never runs cargo for it.
    let position = |name: &str| {
        froms
            .iter()
            .position(|f| stage_of(f).1.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("a stage named {name}"))
    };
    assert!(position("prebuilt") < position(stage));

    let runs: Vec<&String> = ins
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, a)| a)
        .collect();
    assert!(
        runs.iter().any(|r| r.contains("cargo build")
            && r.contains("--profile dist")
            && r.contains("--locked")),
        "the image ships the stripped dist profile"
    );
    let dist = &toml_file("Cargo.toml")["profile"]["dist"];
    assert_eq!(dist["strip"].as_bool(), Some(true), "profile.dist strips");
    assert!(
        runs.iter()
            .any(|r| r.contains("apt-get install") && r.contains("ca-certificates"))
    );

    let user = &ins.iter().rfind(|(i, _)| i == "USER").expect("USER").1;
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "runs as {user}");
    let volumes: Vec<&String> = ins
        .iter()
        .filter(|(i, _)| i == "VOLUME")
        .map(|(_, a)| a)
        .collect();
    assert!(volumes.iter().any(|v| v.contains("/var/lib/portcullis")));
    let exposed: BTreeSet<&str> = ins
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace())
        .collect();
    assert_eq!(exposed, BTreeSet::from(["80", "443"]));

    // HEALTHCHECK with the binary's own subcommand, which exists.
    let hc = &ins
        .iter()
        .find(|(i, _)| i == "HEALTHCHECK")
        .expect("HEALTHCHECK")
        .1;
    let cmd = json_array(hc.split_once("CMD").expect("HEALTHCHECK CMD").1.trim());
    assert_eq!(cmd, ["portcullis", "health"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["health", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("server.admin"));

    // The default command runs the config where compose mounts it.
    let entry = json_array(&ins.iter().find(|(i, _)| i == "ENTRYPOINT").unwrap().1);
    let cmd = json_array(&ins.iter().find(|(i, _)| i == "CMD").unwrap().1);
    let argv: Vec<String> = entry.into_iter().chain(cmd).collect();
    let at = argv.iter().position(|a| a == "--config").expect("--config");
    assert_eq!(argv[at + 1], "/etc/portcullis/portcullis.toml");
    assert!(argv.contains(&"run".to_string()));
    let compose = Compose::load();
    compose.mounted_at("portcullis", &argv[at + 1]);

    // Every COPY from the context exists and is not .dockerignored; the
    // release build gets every file Cargo.toml names (its benches).
    let mut copied = Vec::new();
    for (i, args) in &ins {
        if i != "COPY" || args.contains("--from=") {
            continue;
        }
        let parts: Vec<&str> = args
            .split_whitespace()
            .filter(|p| !p.starts_with("--"))
            .collect();
        for src in &parts[..parts.len() - 1] {
            if src.starts_with("dist/") {
                // The prebuilt stage's binary: the image test puts it there.
                assert!(!dockerignored(src), "COPY {src}: excluded by .dockerignore");
                continue;
            }
            assert!(root().join(src).exists(), "COPY {src}: not in the repo");
            assert!(!dockerignored(src), "COPY {src}: excluded by .dockerignore");
            copied.push(src.to_string());
        }
    }
    assert!(
        ins.iter()
            .any(|(i, a)| i == "COPY" && a.contains(&format!("--from={stage}")))
    );
    let manifest = toml_file("Cargo.toml");
    for b in manifest
        .get("bench")
        .and_then(|b| b.as_array())
        .into_iter()
        .flatten()
    {
        let path = b
            .get("path")
            .and_then(|p| p.as_str())
            .map(String::from)
            .unwrap_or_else(|| format!("benches/{}.rs", b["name"].as_str().unwrap()));
        assert!(
            copied
                .iter()
                .any(|c| path == *c || path.starts_with(&format!("{c}/")))
                && !dockerignored(&path),
            "the build needs {path} (a [[bench]] in Cargo.toml) but the Dockerfile does not copy it"
        );
    }
    for must in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(copied.iter().any(|c| c == must), "COPY {must}");
    }
    for excluded in ["target", ".git", "config/secrets"] {
        assert!(
            dockerignored(excluded),
            ".dockerignore keeps {excluded} out of the context"
        );
    }
}

// ---------------------------------------------------------------------------
// Alert rules, and the stack as three VMs (deploy/).

/// Runs a checker; a missing one fails with how to install it.
fn run_tool(program: &str, args: &[&str], install: &str) -> (bool, String) {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): {install}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const PROMTOOL: &str = "promtool is missing: apt-get install prometheus (scripts/test.sh does)";

fn promtool(args: &[&str]) {
    let (ok, text) = run_tool("promtool", args, PROMTOOL);
    assert!(ok, "promtool {}:\n{text}", args.join(" "));
}

/// The alert rules load, and their unit tests (`promtool test rules`) pass:
/// each alert fires on the series Portcullis serves and stays quiet on a
/// healthy gateway. Every `portcullis_*` metric they use is one the gateway
/// renders, and every alert has a test.
#[test]
fn alert_rules_load_fire_on_real_metric_names_and_are_tested() {
    promtool(&["check", "rules", "config/prometheus/alerts.yml"]);
    promtool(&["test", "rules", "config/prometheus/alerts.test.yml"]);

    let rules = read("config/prometheus/alerts.yml");
    let rendered = read("src/telemetry/metrics/render.rs");
    let mut used = BTreeSet::new();
    for (i, _) in rules.match_indices("portcullis_") {
        let name: String = rules[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        used.insert(name);
    }
    assert!(
        used.len() >= 5,
        "alerts use the gateway's metrics: {used:?}"
    );
    for name in &used {
        assert!(
            rendered.contains(&format!("\"{name}")),
            "alerts.yml uses {name}, which /metrics does not serve"
        );
    }

    let doc = yaml("config/prometheus/alerts.yml");
    let tests = read("config/prometheus/alerts.test.yml");
    let mut alerts = BTreeSet::new();
    for g in seq(&doc["groups"]) {
        for r in seq(&g["rules"]) {
            alerts.insert(s(&r["alert"]).to_string());
        }
    }
    for want in [
        "PortcullisDown",
        "PortcullisCertificateExpiringSoon",
        "PortcullisAcmeOrdersFailing",
        "PortcullisRoute5xxRatioHigh",
        "PortcullisUpstreamDown",
        "PortcullisConfigReloadFailing",
    ] {
        assert!(alerts.contains(want), "alerts.yml has no {want}");
    }
    for a in &alerts {
        assert!(
            tests.contains(&format!("alertname: {a}\n")),
            "alerts.test.yml does not test {a}"
        );
    }
}

const VMS: [&str; 3] = ["master", "data", "monitoring"];

fn vm_compose(vm: &str) -> Value {
    yaml(&format!("deploy/{vm}/compose.yaml"))
}

/// `KEY=value` lines of deploy/.env.example.
fn stack_env() -> BTreeMap<String, String> {
    read("deploy/.env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Every `${NAME}` in a text.
fn env_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let end = rest[i..].find('}').expect("unclosed ${");
        out.insert(rest[i + 2..i + end].to_string());
        rest = &rest[i + end..];
    }
    out
}

/// The three compose files are valid against the Compose specification's
/// JSON schema (`check-jsonschema --builtin-schema vendor.compose-spec`,
/// from PyPI: scripts/test.sh installs it in a venv and sets
/// CHECK_JSONSCHEMA).
#[test]
fn three_vm_compose_files_follow_the_compose_specification() {
    let program = std::env::var("CHECK_JSONSCHEMA").unwrap_or_else(|_| "check-jsonschema".into());
    let files: Vec<String> = VMS
        .iter()
        .map(|vm| format!("deploy/{vm}/compose.yaml"))
        .chain([
            "config/compose.yaml".to_string(),
            "deploy/cluster/compose.yaml".to_string(),
        ])
        .collect();
    let mut args = vec!["--builtin-schema", "vendor.compose-spec"];
    args.extend(files.iter().map(String::as_str));
    let (ok, text) = run_tool(
        &program,
        &args,
        "check-jsonschema is missing: run scripts/test.sh (it makes a venv with \
         `pip install check-jsonschema` and sets CHECK_JSONSCHEMA), or pip install it",
    );
    assert!(ok, "compose files against the compose spec:\n{text}");
}

/// Every Portcullis config under deploy/ passes `portcullis check
/// --no-files` (their secrets live on the VMs, not in the repository).
#[test]
fn every_deploy_config_passes_check() {
    let mut checked = 0;
    for dir in std::fs::read_dir(root().join("deploy")).unwrap() {
        let path = dir.unwrap().path().join("portcullis.toml");
        if !path.exists() {
            continue;
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check", "--no-files", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(
        checked >= 2,
        "deploy/master and deploy/cluster have configs"
    );
}

/// deploy/cluster: two instances behind HAProxy, sharing Redis. HAProxy's
/// config is valid (`haproxy -c`) and sends PROXY v2 to exactly the compose
/// services that run Portcullis, from the one address their config trusts;
/// each instance has its own hostname (its instance name) and state volume;
/// every secret file the config reads is a secret compose mounts, and
/// Redis takes its password from the same secret.
#[test]
fn cluster_example_runs_two_instances_behind_haproxy_with_redis() {
    let (ok, text) = run_tool(
        "haproxy",
        &["-c", "-f", "deploy/cluster/haproxy.cfg"],
        "haproxy is missing: apt-get install haproxy (scripts/test.sh does)",
    );
    assert!(ok, "haproxy -c:\n{text}");

    let mut doc = yaml("deploy/cluster/compose.yaml");
    doc.apply_merge().unwrap();
    let services = &doc["services"];
    let cfg = toml_file("deploy/cluster/portcullis.toml");
    let gateways: Vec<String> = keys(services)
        .into_iter()
        .filter(|n| {
            mounts(&services[n.as_str()])
                .iter()
                .any(|(src, _)| src == "./portcullis.toml")
        })
        .collect();
    assert_eq!(gateways, ["gw-a", "gw-b"], "two instances, one config");

    let lb_addr = s(&services["lb"]["networks"]["cluster"]["ipv4_address"]);
    let trusted: Vec<&str> = cfg["server"]["trusted_proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(trusted, [format!("{lb_addr}/32")], "only the balancer");
    assert_eq!(cfg["server"]["proxy_protocol"].as_bool(), Some(true));
    let haproxy = read("deploy/cluster/haproxy.cfg");
    assert!(
        haproxy.contains("send-proxy-v2"),
        "PROXY v2 to the gateways"
    );
    let servers: BTreeSet<&str> = haproxy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .unwrap()
                .split(':')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        servers,
        gateways.iter().map(String::as_str).collect(),
        "HAProxy balances over the instances"
    );

    let mut hostnames = BTreeSet::new();
    let mut states = BTreeSet::new();
    for g in &gateways {
        let svc = &services[g.as_str()];
        hostnames.insert(s(&svc["hostname"]).to_string());
        let (vol, _) = mounts(svc)
            .into_iter()
            .find(|(_, dst)| dst == cfg["server"]["state_dir"].as_str().unwrap())
            .unwrap_or_else(|| panic!("{g} has no state volume"));
        states.insert(vol);
        let mounted = service_secrets(svc);
        let mut files = Vec::new();
        collect_file_keys(&cfg, &mut files);
        for (key, path) in files {
            let name = path
                .strip_prefix("/run/secrets/")
                .unwrap_or_else(|| panic!("{key} = {path} is not a compose secret"));
            assert!(mounted.contains(name), "{g} does not mount {name} ({key})");
        }
    }
    assert_eq!(hostnames.len(), 2, "instance names come from the hostname");
    assert_eq!(states.len(), 2, "each instance its own state_dir");
    assert!(cfg["cluster"].get("instance_name").is_none());

    let redis = &services["redis"];
    assert!(service_secrets(redis).contains("redis_password"));
    assert!(
        serde_norway::to_string(&redis["entrypoint"])
            .unwrap()
            .contains("/run/secrets/redis_password"),
        "Redis wants the password the instances send"
    );
    assert!(
        cfg["cluster"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("redis://redis:")
    );
}

/// The three VMs share one .env of addresses: every variable a compose file
/// uses is there; only Portcullis is published to the internet (80, 443),
/// every other published port is bound to the VM's own private address;
/// mounted repo files exist; secrets come from config/secrets.
#[test]
fn three_vms_share_one_env_and_publish_only_on_private_addresses() {
    let env = stack_env();
    for k in ["MASTER_ADDR", "DATA_ADDR", "MONITORING_ADDR"] {
        let v = env
            .get(k)
            .unwrap_or_else(|| panic!(".env.example has no {k}"));
        assert!(
            v.parse::<std::net::IpAddr>().is_ok(),
            "{k}={v} is not an address"
        );
    }
    let mut services_of = BTreeMap::new();
    for vm in VMS {
        let rel = format!("deploy/{vm}/compose.yaml");
        for name in env_refs(&read(&rel)) {
            assert!(
                env.contains_key(&name),
                "{rel} uses ${{{name}}}, not in .env.example"
            );
        }
        let doc = vm_compose(vm);
        let own = format!("${{{}_ADDR}}:", vm.to_uppercase());
        let dir = root().join("deploy").join(vm);
        let services: BTreeMap<String, Value> = doc["services"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| (s(k).to_string(), v.clone()))
            .collect();
        for (name, svc) in &services {
            for p in seq(&svc["ports"]) {
                let p = s(p);
                let public = name == "portcullis" && (p == "80:80" || p == "443:443");
                assert!(
                    public || p.starts_with(&own),
                    "{vm}/{name} publishes {p} beyond {own}"
                );
            }
            for (src, _) in mounts(svc) {
                if src.starts_with('.') {
                    assert!(dir.join(&src).exists(), "{vm}/{name} mounts missing {src}");
                }
            }
        }
        for sec in keys(&doc["secrets"]) {
            let file = s(&doc["secrets"][sec.as_str()]["file"]);
            assert!(
                file.starts_with("../../config/secrets/"),
                "{vm}: secret {sec} from {file}, outside config/secrets"
            );
        }
        services_of.insert(vm, services);
    }
    let has = |vm: &str, svc: &str| services_of[vm].contains_key(svc);
    for (vm, svc) in [
        ("master", "portcullis"),
        ("master", "authentik-server"),
        ("master", "authentik-worker"),
        ("data", "postgres"),
        ("data", "mongodb"),
        ("data", "postgres-exporter"),
        ("data", "mongodb-exporter"),
        ("monitoring", "prometheus"),
        ("monitoring", "grafana"),
        ("monitoring", "loki"),
    ] {
        assert!(has(vm, svc), "deploy/{vm} has no {svc}");
    }
    for vm in VMS {
        assert!(has(vm, "node-exporter"), "deploy/{vm} has no node-exporter");
        assert!(has(vm, "alloy"), "deploy/{vm} ships no logs (alloy)");
        assert!(!has(vm, "promtail"), "deploy/{vm} still runs Promtail");
    }
    // Portcullis on the master VM reaches the monitoring VM's Grafana and
    // Prometheus at the address in .env.
    let cfg = toml_file("deploy/master/portcullis.toml");
    let mon = &env["MONITORING_ADDR"];
    for r in cfg["route"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        if name == "grafana" || name == "prometheus" {
            let up = r["upstream"].as_str().unwrap();
            assert!(
                up.contains(mon.as_str()),
                "route {name} goes to {up}, not {mon}"
            );
        }
    }
}

/// Prometheus on the monitoring VM: `promtool check config` passes (with the
/// alert rules it loads), and it scrapes each VM's exporters at the address
/// .env gives that VM, on a port that VM publishes.
#[test]
fn monitoring_prometheus_scrapes_every_vm_and_passes_promtool() {
    let dir = std::env::temp_dir().join(format!("portcullis-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("alerts.yml");
    std::fs::copy(root().join("config/prometheus/alerts.yml"), &rules).unwrap();
    let text = read("deploy/monitoring/prometheus.yml");
    assert!(text.contains("/etc/prometheus/alerts.yml"));
    let conf = dir.join("prometheus.yml");
    std::fs::write(
        &conf,
        text.replace("/etc/prometheus/alerts.yml", rules.to_str().unwrap()),
    )
    .unwrap();
    let (ok, out) = run_tool(
        "promtool",
        &["check", "config", conf.to_str().unwrap()],
        PROMTOOL,
    );
    std::fs::remove_dir_all(&dir).ok();
    assert!(ok, "promtool check config:\n{out}");

    // The rules file is mounted where rule_files says.
    let mon = vm_compose("monitoring");
    assert!(
        mounts(&mon["services"]["prometheus"])
            .iter()
            .any(|(src, dst)| src.ends_with("config/prometheus/alerts.yml")
                && dst == "/etc/prometheus/alerts.yml")
    );

    let env = stack_env();
    let prom: Value = serde_norway::from_str(&text).unwrap();
    let mut seen = BTreeSet::new();
    for job in seq(&prom["scrape_configs"]) {
        for sc in seq(&job["static_configs"]) {
            for t in seq(&sc["targets"]) {
                let (host, port) = s(t).rsplit_once(':').unwrap();
                if host == "localhost" {
                    continue;
                }
                let vm = VMS
                    .iter()
                    .find(|vm| env[&format!("{}_ADDR", vm.to_uppercase())] == host)
                    .unwrap_or_else(|| panic!("target {} is no VM address of .env", s(t)));
                let published = read(&format!("deploy/{vm}/compose.yaml"))
                    .contains(&format!("_ADDR}}:{port}:"));
                assert!(published, "{vm} does not publish port {port} for {}", s(t));
                seen.insert((vm.to_string(), s(&job["job_name"]).to_string()));
            }
        }
    }
    for (vm, job) in [
        ("master", "portcullis"),
        ("data", "postgres"),
        ("data", "mongodb"),
        ("master", "node"),
        ("data", "node"),
        ("monitoring", "node"),
    ] {
        assert!(
            seen.contains(&(vm.to_string(), job.to_string())),
            "no {job} scrape on {vm}"
        );
    }
}

/// Grafana Alloy's config (no Alloy binary here to check it): a structural
/// parse that checks the blocks balance, every `component.kind.name.field`
/// reference names a component declared in the file, logs go to Loki at
/// LOKI_URL, and Portcullis' lines get the same few labels Promtail gave
/// them plus `vm`. Each VM's Alloy service sets LOKI_URL and VM.
#[test]
fn alloy_config_is_well_formed_and_wired_like_promtail() {
    let text = read("config/alloy/config.alloy");
    // Strip comments and strings, then check braces balance.
    let mut code = String::new();
    let mut strings = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        code.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut lit = String::new();
                loop {
                    match chars.next().expect("unterminated string") {
                        '\\' => {
                            lit.push('\\');
                            lit.push(chars.next().unwrap());
                        }
                        '"' => break,
                        c => lit.push(c),
                    }
                }
                code.push_str("\"\"");
                strings.push(lit);
            }
            c => code.push(c),
        }
    }
    let mut depth = 0i32;
    for c in code.chars() {
        match c {
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth -= 1,
            _ => {}
        }
        assert!(depth >= 0, "unbalanced brackets in config.alloy");
    }
    assert_eq!(depth, 0, "unbalanced brackets in config.alloy");

    // Top-level components: `kind.kind "label" {`.
    let mut declared = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with('{'))
    {
        let mut parts = line.split_whitespace();
        let kind = parts.next().unwrap();
        let label = parts.next().unwrap().trim_matches('"');
        declared.insert(format!("{kind}.{label}"));
    }
    for want in [
        "discovery.docker.containers",
        "loki.source.docker.containers",
        "loki.process.portcullis",
        "loki.write.loki",
    ] {
        assert!(declared.contains(want), "config.alloy declares no {want}");
    }
    // References: `a.b.c.field` on the right of `=` or in a list.
    let mut refs = 0;
    for line in code.lines() {
        let Some((_, rhs)) = line.split_once('=') else {
            continue;
        };
        for word in rhs.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')) {
            let parts: Vec<&str> = word.split('.').collect();
            if parts.len() >= 4 && ["discovery", "loki"].contains(&parts[0]) {
                let component = parts[..parts.len() - 1].join(".");
                assert!(declared.contains(&component), "{word} names no component");
                refs += 1;
            }
        }
    }
    assert!(refs >= 4, "components are wired to each other");
    assert!(code.contains("url = sys.env(\"\")") && strings.contains(&"LOKI_URL".to_string()));
    assert!(strings.contains(&"unix:///var/run/docker.sock".to_string()));
    assert!(strings.contains(&"{service=\\\"portcullis\\\"}".to_string()));

    // Labels: those of `stage.labels` and of relabel rules, plus vm.
    let mut labels = BTreeSet::new();
    let mut in_labels = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with("stage.labels") || line.starts_with("stage.static_labels") {
            in_labels = true;
        } else if in_labels && line == "}" && labels.len() > 1 {
            in_labels = false;
        } else if in_labels && let Some((k, _)) = line.split_once('=') {
            let k = k.trim();
            if k != "values" {
                labels.insert(k.to_string());
            }
        }
        if let Some(t) = line.strip_prefix("target_label") {
            labels.insert(
                t.trim_start_matches([' ', '='])
                    .trim_matches('"')
                    .to_string(),
            );
        }
    }
    let mut want = promtail_labels(&yaml("config/promtail.yml"));
    want.insert("vm".into());
    assert_eq!(labels, want, "Alloy's labels are Promtail's plus vm");

    // In the single-host stack: on Loki's network, the Docker socket mounted
    // where the config reads it, positions on a volume.
    let c = Compose::load();
    let alloy = c.service("alloy");
    assert!(!networks(alloy).is_disjoint(&networks(c.service("loki"))));
    assert!(
        mounts(alloy)
            .iter()
            .any(|(src, dst)| src == "/var/run/docker.sock" && dst == "/var/run/docker.sock")
    );
    assert!(
        mounts(alloy)
            .iter()
            .any(|(src, dst)| !is_path(src) && dst == "/var/lib/alloy")
    );
    assert_eq!(
        env(alloy, "LOKI_URL").as_deref(),
        Some("http://loki:3100/loki/api/v1/push")
    );
    for vm in VMS {
        let c = vm_compose(vm);
        let alloy = &c["services"]["alloy"];
        assert!(env(alloy, "LOKI_URL").is_some_and(|u| u.ends_with(":3100/loki/api/v1/push")));
        assert_eq!(env(alloy, "VM").as_deref(), Some(vm));
        assert!(
            mounts(alloy)
                .iter()
                .any(|(src, _)| src == "../../config/alloy/config.alloy")
        );
    }
}
