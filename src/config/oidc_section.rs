//! Validation of the `[oidc.NAME]` identity providers. What routes do
//! with them (`auth`, `identity_headers`) is in `route_auth`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::cx::Cx;
use super::file::FileOidc;
use super::validate::resolve_relative;
use super::{HostPattern, Secret, parse_duration};

/// Scopes asked for when the config does not say: `offline_access` makes
/// Authentik issue a refresh token.
pub const DEFAULT_SCOPES: [&str; 4] = ["openid", "email", "profile", "offline_access"];
const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// `[oidc.NAME]`, checked. The client secret is read from its file here.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The NAME in `[oidc.NAME]`.
    pub name: String,
    /// Exactly as configured (trailing slash kept); compared byte for byte
    /// with the discovery document and every token's `iss`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub client_secret_file: PathBuf,
    pub scopes: Vec<String>,
    /// Lowercase, no leading dot.
    pub cookie_domain: Option<String>,
    pub session_ttl: Duration,
    pub ca_file: Option<PathBuf>,
    /// Bearer token audiences accepted besides `client_id`.
    pub audiences: Vec<String>,
    /// Dev only: cookies without `Secure` (and so without the `__Host-` prefix).
    pub insecure_cookies: bool,
    /// 1-based line of the `[oidc.NAME]` table.
    pub line: usize,
}

/// The checked providers, plus the names of `[oidc.NAME]` tables that had
/// errors (so routes naming them do not get a second, misleading error).
#[derive(Debug, Default)]
pub(super) struct OidcSet {
    pub list: Vec<OidcConfig>,
    pub broken: Vec<String>,
}

impl Cx<'_> {
    /// `[oidc.NAME]` tables.
    pub(super) fn oidc(&mut self, value: Spanned<DeValue<'_>>) -> OidcSet {
        let (tables, broken) = self.named_tables::<FileOidc>("oidc", "a provider", value);
        let mut set = OidcSet {
            broken,
            ..OidcSet::default()
        };
        for t in tables {
            match self.oidc_provider(&t.key, t.name.clone(), t.line, t.raw) {
                Some(c) => set.list.push(c),
                None => set.broken.push(t.name),
            }
        }
        set.list.sort_by(|a, b| a.name.cmp(&b.name));
        set
    }

    fn oidc_provider(
        &mut self,
        key: &str,
        name: String,
        line: usize,
        raw: FileOidc,
    ) -> Option<OidcConfig> {
        let before = self.errors.len();

        let issuer = raw.issuer.get_ref().trim().to_string();
        let issuer_ok = match issuer.parse::<http::Uri>() {
            Ok(u) => {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && u.query().is_none()
                    && !issuer.contains('#')
            }
            Err(_) => false,
        };
        if !issuer_ok {
            self.err(
                Some(raw.issuer.span()),
                &format!("{key}.issuer"),
                format!(
                    "`{issuer}` is not an http(s) URL without query; write the issuer exactly as the provider shows it, e.g. \"https://auth.example.com/application/o/portcullis/\""
                ),
            );
        }

        let client_id = raw.client_id.get_ref().trim().to_string();
        if client_id.is_empty() {
            self.err(
                Some(raw.client_id.span()),
                &format!("{key}.client_id"),
                "empty client_id".into(),
            );
        }

        let secret_path = resolve_relative(&self.file, Path::new(raw.client_secret_file.get_ref()));
        let client_secret = match self.secret(&secret_path) {
            Ok(secret) => Some(secret),
            Err(message) => {
                self.err(
                    Some(raw.client_secret_file.span()),
                    &format!("{key}.client_secret_file"),
                    message,
                );
                None
            }
        };

        let scopes = match raw.scopes {
            None => DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
            Some(s) => {
                let span = s.span();
                let list = s.into_inner();
                if !list.iter().any(|x| x == "openid") {
                    self.err(
                        Some(span.clone()),
                        &format!("{key}.scopes"),
                        "must include \"openid\"".into(),
                    );
                }
                if list
                    .iter()
                    .any(|x| x.is_empty() || x.bytes().any(|b| b <= b' ' || b == b'"' || b == 0x7f))
                {
                    self.err(
                        Some(span),
                        &format!("{key}.scopes"),
                        "a scope is one word without spaces or quotes".into(),
                    );
                }
                list
            }
        };

        let cookie_domain = raw.cookie_domain.and_then(|d| {
            let text = d.get_ref().trim().trim_start_matches('.');
            match super::parse_host_pattern(text) {
                Ok(HostPattern::Exact(h)) => Some(h),
                _ => {
                    self.err(
                        Some(d.span()),
                        &format!("{key}.cookie_domain"),
                        format!(
                            "`{}` is not a domain name (e.g. \"example.com\")",
                            d.get_ref()
                        ),
                    );
                    None
                }
            }
        });

        let session_ttl = match raw.session_ttl {
            None => DEFAULT_SESSION_TTL,
            Some(t) => match parse_duration(t.get_ref()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.err(
                        Some(t.span()),
                        &format!("{key}.session_ttl"),
                        "must be above zero".into(),
                    );
                    DEFAULT_SESSION_TTL
                }
                Err(msg) => {
                    self.err(Some(t.span()), &format!("{key}.session_ttl"), msg);
                    DEFAULT_SESSION_TTL
                }
            },
        };

        let ca_file = raw.ca_file.and_then(|f| {
            let p = resolve_relative(&self.file, Path::new(f.get_ref()));
            match check_pem_certs(&p) {
                Ok(()) => Some(p),
                Err(msg) => {
                    self.err(Some(f.span()), &format!("{key}.ca_file"), msg);
                    None
                }
            }
        });

        let audiences = match raw.audiences {
            None => Vec::new(),
            Some(a) => {
                let span = a.span();
                let list = a.into_inner();
                if list.iter().any(|x| x.trim().is_empty()) {
                    self.err(
                        Some(span),
                        &format!("{key}.audiences"),
                        "empty audience".into(),
                    );
                }
                list
            }
        };

        let insecure_cookies = raw.insecure_cookies.map(|b| *b.get_ref()).unwrap_or(false);

        if self.errors.len() != before {
            return None;
        }
        Some(OidcConfig {
            name,
            issuer,
            client_id,
            client_secret: client_secret?,
            client_secret_file: secret_path,
            scopes,
            cookie_domain,
            session_ttl,
            ca_file,
            audiences,
            insecure_cookies,
            line,
        })
    }
}

/// The file exists and holds at least one PEM certificate.
fn check_pem_certs(p: &Path) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    if !p.is_file() {
        return Err(format!("{} does not exist", p.display()));
    }
    let mut n = 0;
    for c in CertificateDer::pem_file_iter(p).map_err(|e| format!("{}: {e}", p.display()))? {
        c.map_err(|e| format!("{}: {e}", p.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!("{} holds no PEM certificate", p.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, IdentityHeaders, RouteAuth, parse};
    use std::path::Path;

    fn with_secret(src: &str) -> (tempfile::TempDir, Result<crate::Config, Vec<ConfigError>>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
        let path = dir.path().join("t.toml");
        let r = parse(&path, src).map_err(|e| e.0);
        (dir, r)
    }

    const PROVIDER: &str = "[server]\nhttp = \"127.0.0.1:0\"\n\n[oidc.authentik]\nissuer = \"https://auth.example.com/application/o/portcullis/\"\nclient_id = \"portcullis\"\nclient_secret_file = \"secret\"\n";

    #[test]
    fn provider_defaults_and_route_policy() {
        let src = format!(
            "{PROVIDER}\n[[route]]\nhost = \"a.example.com\"\nupstream = \"http://127.0.0.1:1\"\nauth = {{ oidc = \"authentik\", groups = [\"admins\"], emails = [\"Bob@Example.org\"], email_domains = [\"@Example.com\"] }}\n\n[[route]]\nhost = \"b.example.com\"\nupstream = \"http://127.0.0.1:1\"\nauth = \"public\"\n"
        );
        let (_d, c) = with_secret(&src);
        let c = c.unwrap();
        let p = &c.oidc[0];
        assert_eq!(
            p.issuer,
            "https://auth.example.com/application/o/portcullis/"
        );
        assert_eq!(p.client_secret.expose(), "s3cret");
        assert_eq!(p.scopes, ["openid", "email", "profile", "offline_access"]);
        assert_eq!(p.session_ttl.as_secs(), 12 * 3600);
        assert!(!p.insecure_cookies);
        assert_eq!(p.line, 4);
        let RouteAuth::Oidc(pol) = &c.routes[0].auth else {
            panic!("route 1 should be protected")
        };
        assert_eq!(pol.provider_index, 0);
        assert_eq!(pol.emails, ["bob@example.org"]);
        assert_eq!(pol.email_domains, ["example.com"]);
        assert_eq!(pol.identity_headers, IdentityHeaders::Authentik);
        assert!(matches!(c.routes[1].auth, RouteAuth::Public));
        assert!(!format!("{p:?}").contains("s3cret"));
    }

    #[test]
    fn errors_are_located() {
        let src = "[server]\nhttp = \"127.0.0.1:0\"\n\n[oidc.a]\nissuer = \"not a url\"\nclient_id = \"\"\nclient_secret_file = \"missing\"\nscopes = [\"email\"]\nsession_ttl = \"12x\"\n\n[oidc.b]\nissuer = \"https://x/\"\n\n[[route]]\nhost = \"a.example.com\"\nupstream = \"http://127.0.0.1:1\"\nauth = { oidc = \"nope\" }\n\n[[route]]\nhost = \"b.example.com\"\nupstream = \"http://127.0.0.1:1\"\nidentity_headers = \"forwarded\"\n\n[[route]]\nhost = \"c.example.com\"\nupstream = \"http://127.0.0.1:1\"\nauth = { oidc = \"a\" }\n\n[[route]]\nhost = \"d.example.com\"\nupstream = \"http://127.0.0.1:1\"\nauth = \"private\"\n";
        let (_d, r) = with_secret(src);
        let e = r.unwrap_err();
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        for want in [
            (5, "oidc.a.issuer"),
            (6, "oidc.a.client_id"),
            (7, "oidc.a.client_secret_file"),
            (8, "oidc.a.scopes"),
            (9, "oidc.a.session_ttl"),
            (11, "oidc.b"),
            (17, "route[1].auth"),
            (22, "route[2].identity_headers"),
            (32, "route[4].auth"),
        ] {
            assert!(got.contains(&want), "missing {want:?} in {e:#?}");
        }
        // Route 3 names the broken provider `a`: no second error for it.
        assert!(!got.iter().any(|(l, _)| *l == 27), "{e:#?}");
        let unknown = e.iter().find(|e| e.key == "route[1].auth").unwrap();
        assert!(unknown.message.contains("nope"), "{unknown}");
        assert!(
            unknown
                .to_string()
                .starts_with(&format!("{}:17:", Path::new(&e[0].file).display()))
        );
    }

    #[test]
    fn cookie_domain_must_cover_protected_hosts() {
        let src = format!(
            "{PROVIDER}cookie_domain = \".Example.com\"\n\n[[route]]\nhost = \"a.example.com\"\nupstream = \"http://127.0.0.1:1\"\nauth = {{ oidc = \"authentik\" }}\n\n[[route]]\nhost = \"a.other.org\"\nupstream = \"http://127.0.0.1:1\"\nauth = {{ oidc = \"authentik\" }}\n"
        );
        let (_d, r) = with_secret(&src);
        let e = r.unwrap_err();
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].line, 15, "{e:#?}");
        assert!(
            e[0].message.contains("cookie_domain `example.com`"),
            "{e:#?}"
        );
    }

    #[test]
    fn unknown_keys_in_provider_are_errors() {
        let src = format!("{PROVIDER}cookie_domian = \"x.com\"\n");
        let (_d, r) = with_secret(&src);
        let e = r.unwrap_err();
        // The key's whole path, its own line, and the key it resembles.
        assert!(
            e.iter().any(|e| e.key == "oidc.authentik.cookie_domian"
                && e.line == 8
                && e.message.contains("did you mean `cookie_domain`")),
            "{e:#?}"
        );
    }
}
