//! `[docker]`: where the Docker API is and how container labels become
//! routes (the translation itself is in `labels`).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::cx::Cx;
use super::file::FileAuth;
use super::oidc_section::OidcSet;
use super::validate::resolve_relative;

/// `[docker]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDocker {
    /// `unix:///var/run/docker.sock` (default), `tcp://HOST:PORT`, or
    /// `https://HOST:PORT` with `ca_file`, `cert_file`, `key_file`.
    pub endpoint: Option<Spanned<String>>,
    /// Labels read are `PREFIX.enable`, `PREFIX.host`... (default "portcullis").
    pub label_prefix: Option<Spanned<String>>,
    /// Route containers without `PREFIX.enable=true` too (default false).
    pub exposed_by_default: Option<bool>,
    /// Which container network's address to use when it has several.
    pub network: Option<Spanned<String>>,
    /// Auth of label routes that do not say (default "public").
    pub default_auth: Option<Spanned<FileAuth>>,
    /// false: a label cannot make a route public (default true).
    pub allow_public: Option<bool>,
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
}

/// `[docker]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    pub endpoint: String,
    pub label_prefix: String,
    pub exposed_by_default: bool,
    pub network: Option<String>,
    pub default_auth: DefaultAuth,
    pub allow_public: bool,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// 1-based line of `[docker]`.
    pub line: usize,
}

/// `default_auth`: what a label route without `PREFIX.auth` gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DefaultAuth {
    #[default]
    Public,
    Oidc {
        provider: String,
        groups: Vec<String>,
        emails: Vec<String>,
        email_domains: Vec<String>,
    },
}

pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

impl Cx<'_> {
    pub(super) fn docker(
        &mut self,
        span: Range<usize>,
        raw: FileDocker,
        oidc: &OidcSet,
    ) -> Option<DockerConfig> {
        let before = self.errors.len();
        let endpoint = match raw.endpoint {
            None => DEFAULT_ENDPOINT.to_string(),
            Some(e) => {
                let v = e.get_ref().trim().to_string();
                let ok = ["unix:///", "tcp://", "http://", "https://"]
                    .iter()
                    .any(|p| v.starts_with(p) && v.len() > p.len());
                if !ok {
                    self.err(
                        Some(e.span()),
                        "docker.endpoint",
                        format!(
                            "`{v}`: write unix:///var/run/docker.sock, tcp://HOST:PORT or https://HOST:PORT"
                        ),
                    );
                }
                v
            }
        };
        let label_prefix = match raw.label_prefix {
            None => "portcullis".to_string(),
            Some(p) => {
                let v = p.get_ref().clone();
                if v.is_empty()
                    || v.ends_with('.')
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    self.err(
                        Some(p.span()),
                        "docker.label_prefix",
                        "use letters, digits, - _ and inner dots, e.g. \"portcullis\"".into(),
                    );
                }
                v
            }
        };
        let network = raw.network.map(|n| n.into_inner());
        let default_auth = match raw.default_auth {
            None => DefaultAuth::Public,
            Some(a) => {
                let span = a.span();
                match a.into_inner() {
                    FileAuth::Scalar(k) if k == "public" => DefaultAuth::Public,
                    FileAuth::Scalar(k) => {
                        self.err(
                            Some(span),
                            "docker.default_auth",
                            format!("`{k}`: use \"public\" or {{ oidc = \"NAME\" }}"),
                        );
                        DefaultAuth::Public
                    }
                    FileAuth::Table(t) => {
                        if !oidc.list.iter().any(|p| p.name == t.oidc)
                            && !oidc.broken.contains(&t.oidc)
                        {
                            self.err(
                                Some(span),
                                "docker.default_auth",
                                format!("no [oidc.{}] provider is configured", t.oidc),
                            );
                        }
                        DefaultAuth::Oidc {
                            provider: t.oidc,
                            groups: t.groups.unwrap_or_default(),
                            emails: t.emails.unwrap_or_default(),
                            email_domains: t.email_domains.unwrap_or_default(),
                        }
                    }
                }
            }
        };
        let mut file = |key: &str, v: Option<Spanned<String>>| {
            let v = v?;
            let p = resolve_relative(&self.file, Path::new(v.get_ref()));
            if !p.is_file() {
                self.err(
                    Some(v.span()),
                    &format!("docker.{key}"),
                    format!("cannot read {}", p.display()),
                );
            }
            Some(p)
        };
        let ca_file = file("ca_file", raw.ca_file);
        let cert_file = file("cert_file", raw.cert_file);
        let key_file = file("key_file", raw.key_file);
        if cert_file.is_some() != key_file.is_some() {
            self.err(
                Some(span.clone()),
                "docker",
                "give both cert_file and key_file, or neither".into(),
            );
        }
        if (ca_file.is_some() || cert_file.is_some()) && !endpoint.starts_with("https://") {
            self.err(
                Some(span.clone()),
                "docker",
                "ca_file, cert_file and key_file need an https:// endpoint".into(),
            );
        }
        if self.errors.len() != before {
            return None;
        }
        Some(DockerConfig {
            endpoint,
            label_prefix,
            exposed_by_default: raw.exposed_by_default.unwrap_or(false),
            network,
            default_auth,
            allow_public: raw.allow_public.unwrap_or(true),
            ca_file,
            cert_file,
            key_file,
            line: self.line_of(span.start),
        })
    }
}
