//! Raw file → checked [`Config`]. Every problem is collected, none stops the
//! search for the next, and each names file, line, column and key.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use std::collections::HashMap;

use super::cx::Cx;
use super::docker_section::FileDocker;
use super::file::{
    FileAcme, FileAcmeCertificate, FileCertificate, FileRoute, FileServer, OneOrMany,
    TOP_LEVEL_KEYS,
};
use super::oidc_section::OidcSet;
use super::{Config, ConfigError, ConfigErrors};

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(src) => parse(path, &src).inspect(warn_insecure),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        }])),
    }
}

/// [`load`] without reading the files the config names (secrets,
/// certificates): syntax and semantics only, for `portcullis check
/// --no-files` on a machine that does not hold the secrets. Each such file
/// stands in as present; the result is for checking, never for serving.
pub fn load_without_files(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(src) => parse_with(path, &src, false),
        Err(_) => load(path),
    }
}

/// Every load (start-up, reload, `check`) says which routes do not verify
/// their backends' certificates.
fn warn_insecure(c: &Config) {
    for r in &c.routes {
        if r.upstream_tls
            .as_ref()
            .is_some_and(|t| t.insecure_skip_verify)
        {
            tracing::warn!(
                route = %r.name,
                line = r.line,
                "upstream_tls.insecure_skip_verify: this route's backend certificates are NOT verified"
            );
        }
    }
}

/// Validates config text; `path` is used for messages and for resolving
/// relative file names. Files named by `include` are read from disk.
pub fn parse(path: &Path, src: &str) -> Result<Config, ConfigErrors> {
    parse_with(path, src, true)
}

fn parse_with(path: &Path, src: &str, read_files: bool) -> Result<Config, ConfigErrors> {
    let mut cx = Cx::new(path, src);
    cx.read_files = read_files;
    let (table, syntax) = DeTable::parse_recoverable(src);
    if !syntax.is_empty() {
        for e in syntax {
            cx.err(e.span(), "", e.message().to_string());
        }
        return Err(cx.finish_err());
    }
    let table = table.into_inner();

    let mut server_raw = None;
    let mut server_span = None;
    let mut acme_raw = None;
    let mut acme_certs_raw = Vec::new();
    let mut docker_raw = None;
    let mut include_raw = None;
    let mut main = Part::new(cx.file.clone(), src.to_string());
    let mut oidc = OidcSet::default();
    let mut oidc_places = HashMap::new();
    let mut access_raw = None;
    let mut cluster_raw = None;
    for (key, value) in table {
        let span = key.span();
        match key.get_ref().as_ref() {
            "server" => {
                server_span = Some(span.clone());
                server_raw = cx.section::<FileServer>("server", value)
            }
            "acme" => acme_raw = cx.section::<FileAcme>("acme", value).map(|a| (span, a)),
            "acme_certificate" => {
                acme_certs_raw =
                    cx.array_of_tables::<FileAcmeCertificate>("acme_certificate", value)
            }
            "docker" => docker_raw = cx.section::<FileDocker>("docker", value).map(|d| (span, d)),
            "include" => {
                include_raw = match OneOrMany::deserialize(ValueDeserializer::from(value)) {
                    Ok(v) => Some((span, v.0)),
                    Err(e) => {
                        cx.err(
                            e.span().or(Some(span)),
                            "include",
                            format!("{}; write include = [\"routes.d/*.toml\"]", e.message()),
                        );
                        None
                    }
                }
            }
            name @ ("route" | "certificate" | "oidc") => {
                cx.part_section(&mut main, name, value, &mut oidc, &mut oidc_places)
            }
            "access" => access_raw = Some(value),
            "cluster" => {
                cluster_raw = cx
                    .section::<super::cluster_section::FileCluster>("cluster", value)
                    .map(|c| (span, c))
            }
            other => cx.err(
                Some(span),
                other,
                format!(
                    "unknown section `{other}`; known sections: {}",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            ),
        }
    }

    // Included files: [[route]], [oidc.NAME] and [[certificate]] only.
    let mut parts = vec![main];
    let mut include_patterns = Vec::new();
    if let Some((span, patterns)) = include_raw {
        for pattern in patterns {
            let full = resolve_relative(path, Path::new(&pattern));
            include_patterns.push(full.clone());
            for file in cx.expand_include(&span, &pattern, &full, path) {
                let text = match std::fs::read_to_string(&file) {
                    Ok(t) => t,
                    Err(e) => {
                        cx.err(
                            Some(span.clone()),
                            "include",
                            format!("cannot read {}: {e}", file.display()),
                        );
                        continue;
                    }
                };
                let file: Arc<Path> = Arc::from(file.as_path());
                cx.enter(file.clone(), &text);
                let mut part = Part::new(file.clone(), String::new());
                let (table, syntax) = DeTable::parse_recoverable(&text);
                if syntax.is_empty() {
                    for (key, value) in table.into_inner() {
                        let span = key.span();
                        match key.get_ref().as_ref() {
                            name @ ("route" | "certificate" | "oidc") => cx.part_section(
                                &mut part,
                                name,
                                value,
                                &mut oidc,
                                &mut oidc_places,
                            ),
                            other => cx.err(
                                Some(span),
                                other,
                                format!(
                                    "`{other}` is not allowed in an included file; it may hold [[route]], [oidc.NAME] and [[certificate]]"
                                ),
                            ),
                        }
                    }
                } else {
                    for e in syntax {
                        cx.err(e.span(), "", e.message().to_string());
                    }
                }
                part.src = text;
                parts.push(part);
            }
        }
    }
    oidc.list.sort_by(|a, b| a.name.cmp(&b.name));

    let main_file = parts[0].file.clone();
    cx.enter(main_file, src);
    let server = cx.server(server_raw.unwrap_or_default());
    let acme = acme_raw.and_then(|(span, a)| cx.acme(span, a));
    let mut acme_certificates = Vec::new();
    for (index, span, raw) in acme_certs_raw {
        if let Some(c) = cx.acme_certificate(index, span, raw, acme.as_ref()) {
            acme_certificates.push(c);
        }
    }
    let docker = docker_raw.and_then(|(span, d)| cx.docker(span, d, &oidc));
    let cluster = cluster_raw.and_then(|(span, c)| cx.cluster(span, c));
    let mut certificates = Vec::new();
    let access = access_raw.map(|v| cx.access_lists(v)).unwrap_or_default();
    // Hosts of [[certificate]]s that failed to load (their own error).
    let mut failed_cert_hosts: Vec<super::HostPattern> = Vec::new();
    let mut routes = Vec::new();
    let mut files = Vec::new();
    for part in parts {
        cx.enter(part.file.clone(), &part.src);
        files.push(part.file.to_path_buf());
        for (index, span, raw) in part.certs {
            let hosts = raw.hosts.get_ref().clone();
            match cx.certificate(index, span, raw) {
                Some(c) => certificates.push(c),
                None => failed_cert_hosts.extend(
                    hosts
                        .iter()
                        .filter_map(|h| super::route_section::parse_host_pattern(h).ok()),
                ),
            }
        }
        for (index, span, raw) in part.routes {
            if let Some(r) = cx.route(index, span, raw, &server, &oidc, &access) {
                routes.push(r);
            }
        }
    }
    cx.enter(Arc::from(path), src);
    cx.check_route_set(&routes);
    cx.check_oidc_routes(&routes, &oidc);
    if server.https.is_some() {
        let before = cx.errors.len();
        cx.check_tls_coverage(&routes, &certificates, acme.as_ref(), &acme_certificates);
        // A [[certificate]] that failed to load has its own error; "add a
        // certificate" for the hosts it names would only mislead.
        let coverage = cx.errors.split_off(before);
        cx.errors.extend(coverage.into_iter().filter(|e| {
            let named = e.message.split('`').nth(1).unwrap_or("");
            !failed_cert_hosts
                .iter()
                .any(|p| p.to_string() == named || super::tls_section::pattern_covers(p, named))
        }));
    }

    if server.http.is_none() && server.https.is_none() {
        cx.err(
            server_span,
            "server",
            "no listener: set `http` and/or `https` in [server]".to_string(),
        );
    }

    if cx.errors.is_empty() {
        Ok(Config {
            source: path.to_path_buf(),
            files,
            include_patterns,
            server,
            acme,
            docker,
            certificates,
            acme_certificates,
            oidc: oidc.list,
            access: access.list.into_values().collect(),
            routes,
            discovery: Default::default(),
            cluster,
            secret_files: std::mem::take(&mut cx.secret_files),
        })
    } else {
        Err(cx.finish_err())
    }
}

/// The sections of one file that may also come from included files.
struct Part {
    file: Arc<Path>,
    src: String,
    certs: Vec<(usize, Range<usize>, FileCertificate)>,
    routes: Vec<(usize, Range<usize>, FileRoute)>,
}

impl Part {
    fn new(file: Arc<Path>, src: String) -> Self {
        Part {
            file,
            src,
            certs: Vec::new(),
            routes: Vec::new(),
        }
    }
}

/// A path from the config, relative to the config file's folder.
pub fn resolve_relative(config_file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(p)
    }
}

impl Cx<'_> {
    /// `[[route]]`, `[[certificate]]` or `[oidc]` of the current file.
    fn part_section(
        &mut self,
        part: &mut Part,
        name: &str,
        value: Spanned<DeValue<'_>>,
        oidc: &mut OidcSet,
        places: &mut HashMap<String, (Arc<Path>, usize)>,
    ) {
        match name {
            "route" => part
                .routes
                .extend(self.array_of_tables::<FileRoute>("route", value)),
            "certificate" => part
                .certs
                .extend(self.array_of_tables::<FileCertificate>("certificate", value)),
            _ => {
                let more = self.oidc(value);
                for p in more.list {
                    if let Some((file, line)) = places.get(&p.name) {
                        let msg = format!(
                            "[oidc.{}] is already defined at {}:{line}",
                            p.name,
                            file.display()
                        );
                        let here = self.file.clone();
                        self.err_at(&here, p.line, &format!("oidc.{}", p.name), msg);
                        continue;
                    }
                    places.insert(p.name.clone(), (self.file.clone(), p.line));
                    oidc.list.push(p);
                }
                oidc.broken.extend(more.broken);
            }
        }
    }

    /// The files an `include` pattern names, in name order. A pattern
    /// without wildcards must name an existing file; one with wildcards
    /// may match nothing (an empty `routes.d/`).
    fn expand_include(
        &mut self,
        span: &Range<usize>,
        pattern: &str,
        full: &Path,
        main: &Path,
    ) -> Vec<PathBuf> {
        let Some(text) = full.to_str() else {
            self.err(
                Some(span.clone()),
                "include",
                format!("`{pattern}` is not UTF-8"),
            );
            return Vec::new();
        };
        let paths = match glob::glob(text) {
            Ok(p) => p,
            Err(e) => {
                self.err(
                    Some(span.clone()),
                    "include",
                    format!("`{pattern}` is not a valid pattern: {e}"),
                );
                return Vec::new();
            }
        };
        let mut out: Vec<PathBuf> = paths
            .filter_map(Result::ok)
            .filter(|p| p.is_file() && p.as_path() != main)
            .collect();
        out.sort();
        let wild = pattern.contains(['*', '?', '[']);
        if out.is_empty() && !wild {
            self.err(
                Some(span.clone()),
                "include",
                format!("cannot read {}: no such file", full.display()),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(src: &str) -> Vec<ConfigError> {
        parse(Path::new("t.toml"), src).unwrap_err().0
    }

    #[test]
    fn reports_every_error_with_line_and_key() {
        let src = r#"
[server]
http = "127.0.0.1:0"
admin = "nope"

[[route]]
host = "a.example.com"
upstream = "10.0.0.1"

[[route]]
host = "b.example.com"
hots = "typo"

[[route]]
host = "c.example.com"
redirect = "https://x.example.com"
respond = { status = 200 }
"#;
        let e = errs(src);
        let lines: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert!(lines.contains(&(4, "server.admin")), "{e:?}");
        assert!(lines.contains(&(8, "route[1].upstream")), "{e:?}");
        // The unknown key, and (the rest of the route still checked) the
        // missing target.
        assert!(lines.contains(&(12, "route[2].hots")), "{e:?}");
        assert!(lines.contains(&(10, "route[2]")), "{e:?}");
        assert!(
            lines.iter().any(|(l, k)| *l == 14 && *k == "route[3]"),
            "{e:?}"
        );
        assert_eq!(e.len(), 5, "{e:?}");
        let shown = e[0].to_string();
        assert!(shown.starts_with("t.toml:4:9: server.admin:"), "{shown}");
    }

    #[test]
    fn duplicate_routes_name_the_first_line() {
        let src = "[server]\nhttp = \"127.0.0.1:0\"\n[[route]]\nhost = \"a.com\"\nrespond = {}\n[[route]]\nhost = \"A.com.\"\npath = \"/\"\nrespond = {}\n";
        let e = errs(src);
        // Same host+path (and so the same derived name): reported once.
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].message.contains("line 3"), "{e:?}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = errs("[server\nhttp = 1\n");
        assert!(e[0].line >= 1, "{e:?}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let e = errs("[sever]\nhttp = \"127.0.0.1:1\"\n");
        assert!(e.iter().any(|e| e.key == "sever" && e.line == 1), "{e:?}");
    }

    #[test]
    fn defaults_are_filled() {
        let c = parse(
            Path::new("t.toml"),
            "[server]\nhttp = \"127.0.0.1:0\"\n[[route]]\nhost = \"a.com\"\nupstream = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        assert_eq!(c.server.admin, Some("127.0.0.1:9180".parse().unwrap()));
        assert!(c.server.trusted_proxies.is_empty());
        assert_eq!(c.routes[0].name, "a.com/");
        assert!(c.routes[0].preserve_host);
        assert!(!c.routes[0].strip_prefix);
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        let e = errs("[server]\nhttp = \"127.0.0.1:0\"\nadmin = \"0.0.0.0:9180\"\n");
        assert!(e.iter().any(|e| e.key == "server.admin"), "{e:?}");
    }

    #[test]
    fn included_files_add_routes_and_errors_name_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("routes.d")).unwrap();
        std::fs::write(d.join("secret"), "s3cret\n").unwrap();
        std::fs::write(
            d.join("routes.d/a.toml"),
            "[oidc.corp]\nissuer = \"https://id.example.com/\"\nclient_id = \"x\"\nclient_secret_file = \"../secret\"\n\n[[route]]\nhost = \"a.example.com\"\nupstream = \"http://127.0.0.1:1\"\nauth = { oidc = \"corp\" }\n",
        )
        .unwrap();
        std::fs::write(
            d.join("routes.d/b.toml"),
            "[[route]]\nhost = \"b.example.com\"\nupstream = \"http://127.0.0.1:2\"\n",
        )
        .unwrap();
        let main = d.join("portcullis.toml");
        let text = "include = [\"routes.d/*.toml\"]\n[server]\nhttp = \"127.0.0.1:0\"\n[[route]]\nhost = \"m.example.com\"\nrespond = {}\n";
        let c = parse(&main, text).unwrap();
        let hosts: Vec<String> = c.routes.iter().map(|r| r.host.to_string()).collect();
        assert_eq!(hosts, ["m.example.com", "a.example.com", "b.example.com"]);
        assert_eq!(
            c.routes[1].source.to_string(),
            format!("{}:6", d.join("routes.d/a.toml").display())
        );
        assert_eq!(c.files.len(), 3);
        assert!(c.watched_files().contains(&d.join("routes.d/../secret")));

        // A bad value in an included file: its file and line.
        std::fs::write(
            d.join("routes.d/b.toml"),
            "[[route]]\nhost = \"b.example.com\"\n\nupstream = \"ftp://nope\"\n",
        )
        .unwrap();
        let e = parse(&main, text).unwrap_err().0;
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].file, d.join("routes.d/b.toml"));
        assert_eq!((e[0].line, e[0].key.as_str()), (4, "route[1].upstream"));

        // The same host and path in two files: both places named.
        std::fs::write(
            d.join("routes.d/b.toml"),
            "\n[[route]]\nhost = \"M.example.com\"\nrespond = {}\n",
        )
        .unwrap();
        let e = parse(&main, text).unwrap_err().0;
        let shown: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        let dup = shown
            .iter()
            .find(|s| s.contains("already routed"))
            .unwrap_or_else(|| panic!("{shown:?}"));
        assert!(
            dup.starts_with(&format!("{}:2:", d.join("routes.d/b.toml").display())),
            "{dup}"
        );
        assert!(
            dup.ends_with(&format!("already routed at {}:4", main.display())),
            "{dup}"
        );

        // Only routes, providers and certificates belong in an included file.
        std::fs::write(
            d.join("routes.d/b.toml"),
            "[server]\nhttp = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let e = parse(&main, text).unwrap_err().0;
        assert!(
            e[0].message.contains("not allowed in an included file"),
            "{e:?}"
        );
        assert_eq!(e[0].line, 1);

        // A named file that is missing is an error in the main file.
        let e = parse(
            &main,
            "include = [\"nope.toml\"]\n[server]\nhttp = \"127.0.0.1:0\"\n",
        )
        .unwrap_err()
        .0;
        assert_eq!((e[0].line, e[0].key.as_str()), (1, "include"), "{e:?}");
        assert!(e[0].message.contains("nope.toml"), "{e:?}");
    }
}
