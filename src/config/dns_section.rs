//! `[acme] dns`: the DNS-01 provider that writes the challenge records
//! (RFC 2136 dynamic update signed with TSIG, the Cloudflare API, or a
//! hook program), with its secret read and checked here.

use std::net::SocketAddr;
use std::path::Path;

use toml::Spanned;

use super::cx::Cx;
use super::file::FileDns;
use super::route_section::parse_host_pattern;
use super::validate::resolve_relative;
use super::{Secret, SecretBytes};

// --- checked ------------------------------------------------------------------

/// `[acme] dns`, checked, with its secret read.
#[derive(Debug, Clone)]
pub enum DnsConfig {
    /// RFC 2136 dynamic update signed with TSIG (BIND, Knot, PowerDNS...).
    Rfc2136 {
        server: SocketAddr,
        /// Fully qualified, lowercase, with the trailing dot.
        zone: String,
        tsig_key_name: String,
        tsig_algorithm: TsigAlgorithm,
        /// The decoded TSIG secret.
        tsig_secret: SecretBytes,
    },
    /// Cloudflare's API v4.
    Cloudflare {
        api_token: Secret,
        /// Only set by tests (a local stand-in); None = the real API.
        api_url: Option<String>,
    },
    /// A program called as `COMMAND... present|cleanup FQDN VALUE`.
    Exec { command: Vec<String> },
}

impl DnsConfig {
    pub fn provider(&self) -> &'static str {
        match self {
            DnsConfig::Rfc2136 { .. } => "rfc2136",
            DnsConfig::Cloudflare { .. } => "cloudflare",
            DnsConfig::Exec { .. } => "exec",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl TsigAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }
}

// --- checks -------------------------------------------------------------------

impl Cx<'_> {
    /// `[acme] dns`: the provider's keys, its secret read from its file.
    pub(super) fn dns(&mut self, raw: Spanned<FileDns>) -> Option<DnsConfig> {
        let span = raw.span();
        let raw = raw.into_inner();
        let before = self.errors.len();
        let provider = raw.provider.get_ref().clone();
        // Keys that belong to another provider are refused, so a typo in
        // the provider name does not silently drop the settings.
        let given: Vec<(&str, bool)> = vec![
            ("server", raw.server.is_some()),
            ("zone", raw.zone.is_some()),
            ("tsig_key_name", raw.tsig_key_name.is_some()),
            ("tsig_algorithm", raw.tsig_algorithm.is_some()),
            ("tsig_secret_file", raw.tsig_secret_file.is_some()),
            ("api_token_file", raw.api_token_file.is_some()),
            ("api_url", raw.api_url.is_some()),
            ("command", raw.command.is_some()),
        ];
        let allowed: &[&str] = match provider.as_str() {
            "rfc2136" => &[
                "server",
                "zone",
                "tsig_key_name",
                "tsig_algorithm",
                "tsig_secret_file",
            ],
            "cloudflare" => &["api_token_file", "api_url"],
            "exec" => &["command"],
            other => {
                self.err(
                    Some(raw.provider.span()),
                    "acme.dns.provider",
                    format!("`{other}`: use \"rfc2136\", \"cloudflare\" or \"exec\""),
                );
                return None;
            }
        };
        for (k, set) in &given {
            if *set && !allowed.contains(k) {
                self.err(
                    Some(span.clone()),
                    &format!("acme.dns.{k}"),
                    format!(
                        "`{k}` is not a setting of the {provider} provider; it takes {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
        let need = |cx: &mut Self, key: &str, v: Option<Spanned<String>>| {
            if v.is_none() {
                cx.err(
                    Some(span.clone()),
                    &format!("acme.dns.{key}"),
                    format!("the {provider} provider needs `{key}`"),
                );
            }
            v
        };
        let cfg = match provider.as_str() {
            "rfc2136" => {
                let server = need(self, "server", raw.server);
                let server = self.addr("acme.dns.server", server);
                let zone = need(self, "zone", raw.zone).and_then(|z| {
                    let name = z.get_ref().trim_end_matches('.').to_ascii_lowercase();
                    if name.is_empty() || parse_host_pattern(&name).is_err() {
                        self.err(
                            Some(z.span()),
                            "acme.dns.zone",
                            format!("`{}` is not a zone name", z.get_ref()),
                        );
                        None
                    } else {
                        Some(format!("{name}."))
                    }
                });
                let key_name = need(self, "tsig_key_name", raw.tsig_key_name).map(|k| {
                    let k = k.into_inner().to_ascii_lowercase();
                    if k.ends_with('.') { k } else { format!("{k}.") }
                });
                let algorithm = match raw.tsig_algorithm {
                    None => TsigAlgorithm::HmacSha256,
                    Some(a) => match a.get_ref().to_ascii_lowercase().trim_end_matches('.') {
                        "hmac-sha256" => TsigAlgorithm::HmacSha256,
                        "hmac-sha384" => TsigAlgorithm::HmacSha384,
                        "hmac-sha512" => TsigAlgorithm::HmacSha512,
                        other => {
                            self.err(
                                Some(a.span()),
                                "acme.dns.tsig_algorithm",
                                format!("`{other}`: use \"hmac-sha256\", \"hmac-sha384\" or \"hmac-sha512\""),
                            );
                            TsigAlgorithm::HmacSha256
                        }
                    },
                };
                let secret = need(self, "tsig_secret_file", raw.tsig_secret_file).and_then(|f| {
                    let p = resolve_relative(&self.file, Path::new(f.get_ref()));
                    self.secret_files.push(p.clone());
                    let read = if self.read_files {
                        read_tsig_secret(&p)
                    } else {
                        Ok(SecretBytes::new(vec![0; 32]))
                    };
                    match read {
                        Ok(s) => Some(s),
                        Err(msg) => {
                            self.err(Some(f.span()), "acme.dns.tsig_secret_file", msg);
                            None
                        }
                    }
                });
                match (server, zone, key_name, secret) {
                    (Some(server), Some(zone), Some(tsig_key_name), Some(tsig_secret)) => {
                        Some(DnsConfig::Rfc2136 {
                            server,
                            zone,
                            tsig_key_name,
                            tsig_algorithm: algorithm,
                            tsig_secret,
                        })
                    }
                    _ => None,
                }
            }
            "cloudflare" => {
                let token = need(self, "api_token_file", raw.api_token_file).and_then(|f| {
                    let p = resolve_relative(&self.file, Path::new(f.get_ref()));
                    self.secret_files.push(p.clone());
                    match self.secret(&p) {
                        Ok(s) => Some(s),
                        Err(msg) => {
                            self.err(Some(f.span()), "acme.dns.api_token_file", msg);
                            None
                        }
                    }
                });
                let api_url = raw.api_url.and_then(|u| {
                    let url = u.get_ref().trim_end_matches('/').to_string();
                    let ok = url.parse::<http::Uri>().is_ok()
                        && (url.starts_with("https://")
                            || url.starts_with("http://127.0.0.1:")
                            || url.starts_with("http://[::1]:"));
                    if ok {
                        Some(url)
                    } else {
                        self.err(
                            Some(u.span()),
                            "acme.dns.api_url",
                            "only for tests: an https:// URL or http://127.0.0.1:PORT".into(),
                        );
                        None
                    }
                });
                token.map(|api_token| DnsConfig::Cloudflare { api_token, api_url })
            }
            _ => match raw.command {
                Some(c) if !c.get_ref().is_empty() && !c.get_ref()[0].is_empty() => {
                    let command = c.get_ref().clone();
                    let prog = resolve_relative(&self.file, Path::new(&command[0]));
                    if command[0].contains('/') && !prog.is_file() {
                        self.err(
                            Some(c.span()),
                            "acme.dns.command",
                            format!("{} does not exist", prog.display()),
                        );
                        None
                    } else {
                        let mut command = command;
                        if command[0].contains('/') {
                            command[0] = prog.display().to_string();
                        }
                        Some(DnsConfig::Exec { command })
                    }
                }
                other => {
                    self.err(
                        other.map(|c| c.span()).or(Some(span.clone())),
                        "acme.dns.command",
                        "the exec provider needs `command`: [\"/path/to/hook\", \"args\"...]"
                            .into(),
                    );
                    None
                }
            },
        };
        if self.errors.len() == before {
            cfg
        } else {
            None
        }
    }
}

/// The TSIG secret: the base64 text of the file, or the `secret "..."` of
/// a BIND key file (as `tsig-keygen` writes it). The message names the
/// file, never the content.
fn read_tsig_secret(path: &Path) -> Result<SecretBytes, String> {
    use base64::Engine as _;
    let text = Secret::read_file(path)?;
    let text = text.expose();
    let b64 = match text.find("secret") {
        Some(i) => text[i + 6..]
            .split('"')
            .nth(1)
            .ok_or_else(|| format!("{}: a key file without a quoted secret", path.display()))?,
        None => text,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| {
            format!(
                "{} does not hold a base64 TSIG secret (or a BIND key file)",
                path.display()
            )
        })?;
    if bytes.len() < 16 {
        return Err(format!(
            "{}: the TSIG secret is shorter than 16 bytes",
            path.display()
        ));
    }
    Ok(SecretBytes::new(bytes))
}
