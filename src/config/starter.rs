//! `portcullis init`: a commented starter config for one domain that
//! passes `check` as written (with `--authentik`, once the client secret
//! file it names exists).

use std::fmt::Write as _;

use super::HostPattern;
use super::route_section::parse_host_pattern;

/// The starter config's text. Refuses a domain that is not a host name, an
/// address that is not an email address, and an issuer that is not an
/// https URL, so the file it writes is one `check` accepts.
pub fn starter(domain: &str, email: &str, authentik: Option<&str>) -> anyhow::Result<String> {
    let domain = match parse_host_pattern(domain) {
        Ok(HostPattern::Exact(h)) => h,
        _ => anyhow::bail!("--domain {domain:?} is not a host name (e.g. example.com)"),
    };
    let (user, at) = email.split_once('@').unwrap_or(("", ""));
    anyhow::ensure!(
        !user.is_empty() && at.contains('.') && !email.contains(['"', '\\', ' ']),
        "--email {email:?} is not an email address"
    );
    if let Some(issuer) = authentik {
        anyhow::ensure!(
            issuer.starts_with("https://") && !issuer.contains(['"', '\\', ' ']),
            "--authentik {issuer:?} is not an https URL (Authentik shows it as the provider's OpenID Configuration Issuer)"
        );
    }
    let mut t = String::new();
    let _ = write!(
        t,
        r#"# Portcullis starter config for {domain}, written by `portcullis init`.
#
#   portcullis check --config portcullis.toml   # validate after every edit
#   portcullis run   --config portcullis.toml   # serve (SIGHUP reloads)
#
# Durations are strings ("30s", "12h"); secrets are only read from files;
# relative paths are relative to this file. README.md has every key.

[server]
http = "0.0.0.0:80"          # Let's Encrypt HTTP-01, and the redirect to https
https = "0.0.0.0:443"
admin = "127.0.0.1:9180"     # /healthz /readyz /metrics, POST /reload (loopback only)
state_dir = "state"          # ACME account, certificates, sessions (created 0700)
# Peers whose X-Forwarded-* headers are believed (a tunnel or load
# balancer in front); nobody by default.
trusted_proxies = []

# Certificates from Let's Encrypt for every routed host, renewed in the
# background. Port 80 must be reachable from the internet for HTTP-01.
[acme]
email = "{email}"
directory = "letsencrypt-staging"   # switch to "letsencrypt" once it works
challenge = "http-01"
"#
    );
    if let Some(issuer) = authentik {
        let _ = write!(
            t,
            r#"
# Single sign-on with Authentik: Applications > Providers > OAuth2/OpenID
# "portcullis" (confidential), redirect URI https://{domain}/.portcullis/callback
[oidc.authentik]
issuer = "{issuer}"
client_id = "portcullis"
client_secret_file = "secrets/oidc_client_secret"   # the provider's client secret, mode 0600
"#
        );
    }
    let auth = if authentik.is_some() {
        "auth = { oidc = \"authentik\" }   # sign-in required; add groups = [\"admins\"] to narrow it"
    } else {
        "# auth = { oidc = \"authentik\" }  # after adding an [oidc.authentik] section"
    };
    let _ = write!(
        t,
        r#"
# Routes: host first (exact, then *.wildcard), then the longest path prefix.
[[route]]
name = "app"
host = "{domain}"
upstream = "http://127.0.0.1:8080"   # your application
{auth}
"#
    );
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_are_refused_before_anything_is_written() {
        assert!(starter("https://x.com", "a@b.c", None).is_err());
        assert!(starter("*.x.com", "a@b.c", None).is_err());
        assert!(starter("x.com", "nobody", None).is_err());
        assert!(starter("x.com", "a@b.c", Some("http://auth.x.com/")).is_err());
        let t = starter("Example.COM", "me@example.com", None).unwrap();
        assert!(t.contains("host = \"example.com\""), "{t}");
    }
}
