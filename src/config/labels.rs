//! Container labels → routes. Each label route is written out as a
//! `[[route]]` table, one label per line, and checked by the same code as
//! a route in the file, so a label takes exactly the values the route key
//! takes; an error's line leads back to the label that caused it.
//!
//! Then: replicas (same host and path, same labels) become one route with
//! several upstreams; a route in the file wins over a label route for the
//! same host and path; a label never changes the SSO policy the file sets
//! for a host. Nothing here talks to Docker (`discovery::docker` does).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use toml::de::DeTable;

use super::access_section::AccessSet;
use super::cx::Cx;
use super::file::FileRoute;
use super::oidc_section::OidcSet;
use super::{Config, DefaultAuth, HostPattern, RouteAuth, RouteConfig, RouteSource};

/// A running container as discovery saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Container {
    /// Name without the leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Network name → the container's IP address on it.
    pub networks: BTreeMap<String, String>,
    /// `--network host`: reached at 127.0.0.1.
    pub host_network: bool,
    /// Exposed TCP ports.
    pub ports: Vec<u16>,
    /// False while its health check says unhealthy (or is still starting).
    pub healthy: bool,
}

/// What label discovery left out or refused, for `GET /routes`, logs and
/// metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Label routes hidden by a file route for the same host and path.
    pub shadowed: Vec<Shadowed>,
    pub errors: Vec<LabelError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    pub host: String,
    pub path: String,
    /// The label route's source (`docker:NAME`).
    pub source: RouteSource,
    /// The file route that wins.
    pub by: RouteSource,
}

/// A bad label: that container's routes are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelError {
    pub container: String,
    pub label: String,
    pub message: String,
}

impl std::fmt::Display for LabelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "container {}: label {}: {}",
            self.container, self.label, self.message
        )
    }
}

/// Label keys and how each is written into the route table.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Str,
    Bool,
    List,
}

const KEYS: &[(&str, Kind)] = &[
    ("host", Kind::Str),
    ("path", Kind::Str),
    ("port", Kind::Str),
    ("strip_prefix", Kind::Bool),
    ("preserve_host", Kind::Bool),
    ("https_redirect", Kind::Bool),
    ("matrix_params", Kind::Bool),
    ("case_insensitive_path", Kind::Bool),
    ("auth", Kind::Str),
    ("groups", Kind::List),
    ("emails", Kind::List),
    ("email_domains", Kind::List),
    ("identity_headers", Kind::Str),
    ("timeout", Kind::Str),
    ("max_body", Kind::Str),
    ("allow_ips", Kind::List),
    ("deny_ips", Kind::List),
    ("health_check", Kind::Str),
    ("request_buffering", Kind::Bool),
    ("request_buffer", Kind::Str),
    ("access", Kind::Str),
];

/// Adds the label routes of `containers` to `config` (whose routes are
/// the file's) and records what was left out in `config.discovery`.
pub fn apply(config: &mut Config, containers: &[Container]) {
    let Some(docker) = config.docker.clone() else {
        return;
    };
    let oidc = OidcSet {
        list: config.oidc.clone(),
        broken: Vec::new(),
    };
    // The file's SSO policies: a label cannot change them (exact hosts
    // first, then `*.domain`, then `*`).
    let mut file_policy: Vec<(HostPattern, RouteAuth, RouteSource)> = config
        .routes
        .iter()
        .filter(|r| matches!(r.auth, RouteAuth::Oidc(_)))
        .map(|r| (r.host.clone(), r.auth.clone(), r.source.clone()))
        .collect();
    file_policy.sort_by_key(|(h, _, _)| match h {
        HostPattern::Exact(_) => 0,
        HostPattern::Wildcard(_) => 1,
        HostPattern::Any => 2,
    });
    let mut sorted: Vec<&Container> = containers.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));

    let mut discovery = Discovery::default();
    // (host, path) → the route, the labels' signature, its containers.
    let mut grouped: BTreeMap<(String, String), (RouteConfig, String, String)> = BTreeMap::new();
    for c in sorted {
        let mut errors = Vec::new();
        let routes = container_routes(config, &docker, &oidc, &file_policy, c, &mut errors);
        if !errors.is_empty() {
            discovery.errors.extend(errors);
            continue;
        }
        let mut errors = Vec::new();
        let mut mine = Vec::new();
        for (route, sig) in routes {
            let key = (route.host.to_string(), route.path.clone());
            match grouped.get(&key) {
                Some((_, other_sig, other)) if *other_sig != sig => errors.push(LabelError {
                    container: c.name.clone(),
                    label: format!("{}.host", docker.label_prefix),
                    message: format!(
                        "host `{}` path `{}` is already routed by container {other} with other labels",
                        key.0, key.1
                    ),
                }),
                _ => mine.push((key, route, sig)),
            }
        }
        if !errors.is_empty() {
            discovery.errors.extend(errors);
            continue;
        }
        for (key, route, sig) in mine {
            match grouped.get_mut(&key) {
                Some((existing, _, _)) => {
                    if let (super::Action::Upstream(list), super::Action::Upstream(more)) =
                        (&mut existing.action, route.action)
                    {
                        list.extend(more);
                    }
                    if let RouteSource::Docker { containers } = &mut existing.source {
                        containers.push(c.name.clone());
                    }
                }
                None => {
                    grouped.insert(key, (route, sig, c.name.clone()));
                }
            }
        }
    }

    let file_routes: HashMap<(String, String), RouteSource> = config
        .routes
        .iter()
        .map(|r| ((r.host.to_string(), r.path.clone()), r.source.clone()))
        .collect();
    let names: std::collections::HashSet<String> =
        config.routes.iter().map(|r| r.name.clone()).collect();
    for ((host, path), (mut route, _, _)) in grouped {
        if route.upstreams().is_empty() {
            continue; // every replica is unhealthy
        }
        if let Some(by) = file_routes.get(&(host.clone(), path.clone())) {
            discovery.shadowed.push(Shadowed {
                host,
                path,
                source: route.source.clone(),
                by: by.clone(),
            });
            continue;
        }
        if names.contains(&route.name) {
            route.name = format!("docker/{}", route.name);
        }
        config.routes.push(route);
    }
    config.discovery = Arc::new(discovery);
}

/// The routes one container's labels ask for (one per host), each with
/// the signature of its labels (replicas have equal ones). Unhealthy
/// containers give their routes without upstreams.
fn container_routes(
    config: &Config,
    docker: &super::DockerConfig,
    oidc: &OidcSet,
    file_policy: &[(HostPattern, RouteAuth, RouteSource)],
    c: &Container,
    errors: &mut Vec<LabelError>,
) -> Vec<(RouteConfig, String)> {
    let prefix = format!("{}.", docker.label_prefix);
    let mut err = |label: &str, message: String| {
        errors.push(LabelError {
            container: c.name.clone(),
            label: label.to_string(),
            message,
        })
    };
    let enable_label = format!("{prefix}enable");
    match c.labels.get(&enable_label).map(String::as_str) {
        Some("true") => {}
        Some("false") => return Vec::new(),
        None if docker.exposed_by_default => {}
        None => return Vec::new(),
        Some(other) => {
            err(&enable_label, format!("`{other}`: use true or false"));
            return Vec::new();
        }
    }
    // Route name ("" for the container's one unnamed route) → key → (label, value).
    let mut groups: BTreeMap<String, BTreeMap<&str, (String, String)>> = BTreeMap::new();
    for (label, value) in &c.labels {
        let Some(rest) = label.strip_prefix(&prefix) else {
            continue;
        };
        if rest == "enable" {
            continue;
        }
        let (route, key) = match rest.strip_prefix("routes.") {
            Some(r) => match r.split_once('.') {
                Some((name, key)) if !name.is_empty() => (name.to_string(), key),
                _ => {
                    err(label, "write PREFIX.routes.NAME.KEY".into());
                    continue;
                }
            },
            None => (String::new(), rest),
        };
        let Some((known, _)) = KEYS.iter().find(|(k, _)| *k == key) else {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            err(
                label,
                format!("unknown key `{key}`; known keys: {}", known.join(", ")),
            );
            continue;
        };
        groups
            .entry(route)
            .or_default()
            .insert(known, (label.clone(), value.clone()));
    }
    if !errors.is_empty() {
        return Vec::new();
    }
    // Routes named `routes.NAME` take the container-wide keys as defaults.
    let common = groups.remove("").unwrap_or_default();
    if groups.is_empty() {
        if common.is_empty() {
            return Vec::new(); // exposed by default, but nothing to route
        }
        groups.insert(String::new(), BTreeMap::new());
    }
    let mut out = Vec::new();
    for (name, own) in groups {
        let mut keys = common.clone();
        keys.extend(own);
        let mut errs = Vec::new();
        let routes = one_route(
            config,
            docker,
            oidc,
            file_policy,
            c,
            &name,
            &keys,
            &mut errs,
        );
        if errs.is_empty() {
            out.extend(routes);
        }
        errors.extend(errs);
    }
    if !errors.is_empty() {
        return Vec::new();
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn one_route(
    config: &Config,
    docker: &super::DockerConfig,
    oidc: &OidcSet,
    file_policy: &[(HostPattern, RouteAuth, RouteSource)],
    c: &Container,
    route_name: &str,
    keys: &BTreeMap<&str, (String, String)>,
    errors: &mut Vec<LabelError>,
) -> Vec<(RouteConfig, String)> {
    let prefix = &docker.label_prefix;
    let label_of = |key: &str| -> String {
        keys.get(key).map(|(l, _)| l.clone()).unwrap_or_else(|| {
            if route_name.is_empty() {
                format!("{prefix}.{key}")
            } else {
                format!("{prefix}.routes.{route_name}.{key}")
            }
        })
    };
    let mut err = |label: String, message: String| {
        errors.push(LabelError {
            container: c.name.clone(),
            label,
            message,
        })
    };
    let Some((_, hosts)) = keys.get("host") else {
        err(
            label_of("host"),
            "missing: every label route needs a host".into(),
        );
        return Vec::new();
    };
    // The upstream address: 127.0.0.1 on the host network, else the
    // container's address on the configured (or only) network.
    let address = if c.host_network {
        "127.0.0.1".to_string()
    } else {
        let pick = match &docker.network {
            Some(n) => c.networks.get(n).cloned(),
            None if c.networks.len() == 1 => c.networks.values().next().cloned(),
            None => None,
        };
        match pick.filter(|a| !a.is_empty()) {
            Some(a) if a.contains(':') => format!("[{a}]"),
            Some(a) => a,
            None => {
                let nets: Vec<&str> = c.networks.keys().map(String::as_str).collect();
                err(
                    label_of("host"),
                    match &docker.network {
                        Some(n) => format!(
                            "the container has no address on network `{n}` ([docker] network); its networks: {}",
                            nets.join(", ")
                        ),
                        None => format!(
                            "the container is on {} networks ({}); set [docker] network",
                            nets.len(),
                            nets.join(", ")
                        ),
                    },
                );
                return Vec::new();
            }
        }
    };
    let port = match keys.get("port") {
        Some((label, p)) => match p.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                err(label.clone(), format!("`{p}` is not a port number"));
                return Vec::new();
            }
        },
        None => match c.ports.as_slice() {
            [p] => *p,
            ports => {
                err(
                    label_of("port"),
                    format!(
                        "missing: the container exposes {} ports; say which one",
                        ports.len()
                    ),
                );
                return Vec::new();
            }
        },
    };

    // One line per label; `lines[i]` is the label behind line i + 1.
    let mut text = String::from("[[route]]\n");
    let mut lines = vec![label_of("host")];
    let mut sig = String::new();
    let mut push = |text: &mut String, label: String, line: String, sig_too: bool| {
        if sig_too {
            sig.push_str(&line);
        }
        text.push_str(&line);
        text.push('\n');
        lines.push(label);
    };
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let list = |s: &str| {
        let items: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(quote)
            .collect();
        format!("[{}]", items.join(", "))
    };
    for (key, kind) in KEYS {
        let Some((label, value)) = keys.get(key) else {
            continue;
        };
        let v = match (*key, kind) {
            ("host" | "port" | "auth" | "groups" | "emails" | "email_domains", _) => continue,
            ("health_check", _) => format!("{{ path = {} }}", quote(value)),
            (_, Kind::Bool) if value == "true" || value == "false" => value.clone(),
            (_, Kind::List) => list(value),
            _ => quote(value),
        };
        push(&mut text, label.clone(), format!("{key} = {v}"), true);
    }
    let upstream = format!("http://{address}:{port}");
    push(
        &mut text,
        label_of("port"),
        format!("upstream = {}", quote(&upstream)),
        false,
    );
    // auth: the label, or [docker] default_auth; groups and emails join it.
    let explicit_auth = ["auth", "groups", "emails", "email_domains"]
        .iter()
        .any(|k| keys.contains_key(k));
    let provider = match keys.get("auth") {
        Some((_, a)) if a == "public" => None,
        Some((_, a)) => Some(a.clone()),
        None => match &docker.default_auth {
            DefaultAuth::Public => None,
            DefaultAuth::Oidc { provider, .. } => Some(provider.clone()),
        },
    };
    let auth_label = label_of("auth");
    match provider {
        None => {
            for k in ["groups", "emails", "email_domains"] {
                if let Some((label, _)) = keys.get(k) {
                    err(
                        label.clone(),
                        format!("needs a provider: set {auth_label}=<oidc provider name>"),
                    );
                    return Vec::new();
                }
            }
            if keys.contains_key("auth") {
                push(
                    &mut text,
                    auth_label.clone(),
                    "auth = \"public\"".into(),
                    true,
                );
            }
        }
        Some(p) => {
            let mut parts = vec![format!("oidc = {}", quote(&p))];
            let defaults = match &docker.default_auth {
                DefaultAuth::Oidc {
                    groups,
                    emails,
                    email_domains,
                    ..
                } if !keys.contains_key("auth") => {
                    [groups.join(","), emails.join(","), email_domains.join(",")]
                }
                _ => Default::default(),
            };
            for (k, d) in ["groups", "emails", "email_domains"].iter().zip(defaults) {
                match keys.get(k) {
                    Some((_, v)) => parts.push(format!("{k} = {}", list(v))),
                    None if !d.is_empty() => parts.push(format!("{k} = {}", list(&d))),
                    None => {}
                }
            }
            let label = keys
                .get("auth")
                .or_else(|| keys.get("groups"))
                .map(|(l, _)| l.clone())
                .unwrap_or(auth_label.clone());
            push(
                &mut text,
                label,
                format!("auth = {{ {} }}", parts.join(", ")),
                true,
            );
        }
    }

    // The main config's `[access.NAME]` lists: a label names one as the
    // file's routes do (the lists themselves are only in the file).
    let access = AccessSet {
        list: config
            .access
            .iter()
            .map(|a| (a.name.clone(), a.clone()))
            .collect(),
        broken: Vec::new(),
    };
    let pseudo = format!("docker:{}", c.name);
    let mut out = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let full = format!("{text}host = {}\n", quote(host));
        let mut all_lines = lines.clone();
        all_lines.push(label_of("host"));
        let mut cx = Cx::new(Path::new(&pseudo), &full);
        let (table, syntax) = DeTable::parse_recoverable(&full);
        let mut route = None;
        if syntax.is_empty() {
            for (key, value) in table.into_inner() {
                if key.get_ref().as_ref() != "route" {
                    continue;
                }
                for (index, span, raw) in cx.array_of_tables::<FileRoute>("route", value) {
                    route = cx.route(index, span, raw, &config.server, oidc, &access);
                }
            }
        }
        if let Some(r) = &route {
            cx.check_oidc_routes(std::slice::from_ref(r), oidc);
            if config.server.https.is_some() {
                cx.check_tls_coverage(
                    std::slice::from_ref(r),
                    &config.certificates,
                    config.acme.as_ref(),
                    &config.acme_certificates,
                );
            }
        }
        let cx_errors = std::mem::take(&mut cx.errors);
        if !cx_errors.is_empty() || route.is_none() {
            let none = cx_errors.is_empty();
            for e in cx_errors {
                let label = match e.line.checked_sub(1).and_then(|i| all_lines.get(i)) {
                    Some(l) if e.line > 1 => l.clone(),
                    _ => match e.key.rsplit('.').next() {
                        Some(k) if KEYS.iter().any(|(x, _)| *x == k) => label_of(k),
                        _ => label_of("host"),
                    },
                };
                err(label, e.message);
            }
            if none {
                err(label_of("host"), "not a valid route".into());
            }
            return Vec::new();
        }
        let mut route = route.expect("checked above");
        // A label never claims every host (it would take all unrouted traffic).
        let HostPattern::Exact(h) = &route.host else {
            err(
                label_of("host"),
                format!(
                    "`{host}`: a label route names its hosts; `*` and `*.domain` are for the config file"
                ),
            );
            return Vec::new();
        };
        // The file's SSO policy for this host stands.
        if let Some((_, policy, place)) = file_policy
            .iter()
            .find(|(p, _, _)| matches!(p, HostPattern::Any) || super::pattern_covers(p, h))
        {
            if !explicit_auth {
                route.auth = policy.clone();
            } else if !same_auth(&route.auth, policy) {
                err(
                    keys.get("auth")
                        .map(|(l, _)| l.clone())
                        .unwrap_or(auth_label.clone()),
                    format!(
                        "host `{h}` has its single sign-on policy set at {place}; a label cannot change it"
                    ),
                );
                return Vec::new();
            }
        }
        if matches!(route.auth, RouteAuth::Public) && !docker.allow_public {
            err(
                auth_label.clone(),
                "[docker] allow_public = false: a label route must sign users in; set auth to a provider".into(),
            );
            return Vec::new();
        }
        route.source = RouteSource::Docker {
            containers: vec![c.name.clone()],
        };
        route.line = 0;
        if !c.healthy
            && let super::Action::Upstream(list) = &mut route.action
        {
            list.clear();
        }
        out.push((route, format!("{sig}host={host}")));
    }
    out
}

fn same_auth(a: &RouteAuth, b: &RouteAuth) -> bool {
    match (a, b) {
        (RouteAuth::Public, RouteAuth::Public) => true,
        (RouteAuth::Oidc(x), RouteAuth::Oidc(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        let text = format!(
            "[server]\nhttp = \"127.0.0.1:0\"\n[docker]\nendpoint = \"unix:///tmp/d.sock\"\n[oidc.corp]\nissuer = \"https://id.example.com/\"\nclient_id = \"x\"\nclient_secret_file = \"secret\"\n{extra}"
        );
        super::super::parse(&dir.path().join("p.toml"), &text).unwrap()
    }

    fn container(name: &str, labels: &[(&str, &str)]) -> Container {
        Container {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            host_network: true,
            healthy: true,
            ..Default::default()
        }
    }

    fn app(name: &str, port: &str) -> Container {
        container(
            name,
            &[
                ("portcullis.enable", "true"),
                ("portcullis.host", "app.example.com"),
                ("portcullis.port", port),
            ],
        )
    }

    #[test]
    fn replicas_share_one_route_and_bad_labels_name_container_and_label() {
        let mut c = config("");
        let mut bad = app("bad", "8080");
        bad.labels.insert("portcullis.hots".into(), "x".into());
        let mut bad_port = app("bad2", "http");
        bad_port
            .labels
            .insert("portcullis.host".into(), "other.example.com".into());
        let mut sick = app("app-4", "8083");
        sick.healthy = false;
        let plain = container("unlabelled", &[("portcullis.host", "x.example.com")]);
        apply(
            &mut c,
            &[
                app("app-2", "8081"),
                app("app-1", "8080"),
                app("app-3", "8082"),
                bad,
                bad_port,
                sick,
                plain,
            ],
        );
        assert_eq!(c.routes.len(), 1, "{:?}", c.discovery);
        let r = &c.routes[0];
        let ups: Vec<&str> = r.upstreams().iter().map(|u| u.url.as_str()).collect();
        assert_eq!(
            ups,
            [
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8081",
                "http://127.0.0.1:8082"
            ]
        );
        assert_eq!(r.source.to_string(), "docker:app-1,app-2,app-3,app-4");
        let errs: Vec<String> = c.discovery.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("container bad: label portcullis.hots: unknown key"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("container bad2: label portcullis.port: `http`"),
            "{errs:?}"
        );
    }

    /// A label names an `[access.NAME]` list of the main config like a
    /// file route does; an unknown name is the label's error.
    #[test]
    fn labels_use_the_files_access_lists() {
        let mut c = config("[access.family]\nallow = [\"10.0.0.0/8\"]\nrealm = \"Family\"\n");
        let mut a = app("a", "80");
        a.labels.insert("portcullis.access".into(), "family".into());
        let mut b = app("b", "80");
        b.labels
            .insert("portcullis.host".into(), "b.example.com".into());
        b.labels
            .insert("portcullis.access".into(), "friends".into());
        apply(&mut c, &[a, b]);
        assert_eq!(c.routes.len(), 1, "{:?}", c.discovery);
        let list = c.routes[0].options.access.as_ref().expect("access list");
        assert_eq!(list.name, "family");
        assert_eq!(list.realm, "Family");
        assert!(
            std::sync::Arc::ptr_eq(list, &c.access[0]),
            "the file's list itself"
        );
        let errs: Vec<String> = c.discovery.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("container b: label portcullis.access:")
                && errs[0].contains("friends")
                && errs[0].contains("family"),
            "{errs:?}"
        );
    }

    #[test]
    fn values_go_through_route_validation() {
        let mut c = config("");
        let mut a = app("a", "80");
        a.labels.insert("portcullis.timeout".into(), "soon".into());
        let mut b = app("b", "80");
        b.labels
            .insert("portcullis.host".into(), "b.example.com".into());
        b.labels.insert("portcullis.auth".into(), "nobody".into());
        let mut d = app("d", "80");
        d.labels.insert(
            "portcullis.host".into(),
            "d.example.com,e.example.com".into(),
        );
        d.labels.insert("portcullis.path".into(), "/api/".into());
        d.labels
            .insert("portcullis.strip_prefix".into(), "true".into());
        d.labels.insert("portcullis.auth".into(), "corp".into());
        d.labels
            .insert("portcullis.groups".into(), "admins, devs".into());
        apply(&mut c, &[a, b, d]);
        let errs: Vec<String> = c.discovery.errors.iter().map(|e| e.to_string()).collect();
        assert!(
            errs[0].starts_with("container a: label portcullis.timeout:"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("container b: label portcullis.auth:"),
            "{errs:?}"
        );
        assert!(errs[1].contains("nobody"), "{errs:?}");
        assert_eq!(c.routes.len(), 2);
        for r in &c.routes {
            assert_eq!(r.path, "/api");
            assert!(r.strip_prefix);
            let RouteAuth::Oidc(p) = &r.auth else {
                panic!()
            };
            assert_eq!(p.groups, ["admins", "devs"]);
        }
    }

    #[test]
    fn the_file_wins_and_keeps_its_sso_policy() {
        let file = "[[route]]\nhost = \"app.example.com\"\nrespond = {}\nauth = { oidc = \"corp\", groups = [\"ops\"] }\n";
        let mut c = config(file);
        let mut other_path = container(
            "api",
            &[
                ("portcullis.enable", "true"),
                ("portcullis.host", "app.example.com"),
                ("portcullis.path", "/api"),
                ("portcullis.port", "1"),
            ],
        );
        let mut public = other_path.clone();
        public.name = "open".into();
        public
            .labels
            .insert("portcullis.path".into(), "/open".into());
        public
            .labels
            .insert("portcullis.auth".into(), "public".into());
        other_path
            .labels
            .insert("portcullis.enable".into(), "true".into());
        apply(&mut c, &[app("web", "80"), other_path, public]);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.discovery.shadowed.len(), 1);
        assert_eq!(c.discovery.shadowed[0].source.to_string(), "docker:web");
        assert!(
            c.discovery.shadowed[0].by.to_string().ends_with("p.toml:9"),
            "{:?}",
            c.discovery.shadowed
        );
        let RouteAuth::Oidc(p) = &c.routes[1].auth else {
            panic!("label route made public")
        };
        assert_eq!(p.groups, ["ops"]);
        let e = &c.discovery.errors[0];
        assert_eq!(
            (e.container.as_str(), e.label.as_str()),
            ("open", "portcullis.auth")
        );
        assert!(e.message.contains("single sign-on policy"), "{e}");
    }

    #[test]
    fn a_wildcard_sso_policy_covers_label_hosts_and_labels_cannot_claim_every_host() {
        let file =
            "[[route]]\nhost = \"*.corp.example.com\"\nrespond = {}\nauth = { oidc = \"corp\" }\n";
        let mut c = config(file);
        let mut inside = app("inside", "80");
        inside
            .labels
            .insert("portcullis.host".into(), "wiki.corp.example.com".into());
        let mut any = app("any", "80");
        any.labels.insert("portcullis.host".into(), "*".into());
        apply(&mut c, &[inside, any]);
        let r = c
            .routes
            .iter()
            .find(|r| r.host.to_string() == "wiki.corp.example.com")
            .unwrap();
        assert!(
            matches!(r.auth, RouteAuth::Oidc(_)),
            "the file's policy applies"
        );
        let e = &c.discovery.errors[0];
        assert_eq!(
            (e.container.as_str(), e.label.as_str()),
            ("any", "portcullis.host"),
            "{e}"
        );
    }
}
