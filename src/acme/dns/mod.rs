//! DNS-01: put the key authorization's digest in a TXT record at
//! `_acme-challenge.NAME` through a provider, wait until the zone's
//! authoritative servers (or the configured `resolvers`) answer with it,
//! and remove it afterwards. Providers: `rfc2136` (dynamic update with
//! TSIG), `cloudflare` (API v4), `exec` (a hook program).
//!
//! Every error names the provider and says what went wrong in plain words;
//! secrets never appear in them.

mod cloudflare;
mod exec;
mod rfc2136;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::rr::Name;
use tokio::time::Instant;

use crate::config::{AcmeConfig, DnsConfig};

/// How often propagation is checked.
const POLL: Duration = Duration::from_secs(2);

enum Provider {
    Rfc2136(rfc2136::Rfc2136),
    Cloudflare(Box<cloudflare::Cloudflare>),
    Exec(Vec<String>),
}

/// Writes, checks and removes DNS-01 records for one `[acme]` config.
pub(crate) struct Solver {
    provider: Provider,
    propagation_timeout: Duration,
    resolvers: Vec<SocketAddr>,
}

/// One TXT value that was written, with what its removal needs.
#[derive(Debug)]
pub(crate) struct Presented {
    pub fqdn: String,
    pub value: String,
    cf: Option<cloudflare::CfRecord>,
}

impl Solver {
    /// The solver for `cfg`; None when no DNS provider is configured.
    pub fn new(cfg: &AcmeConfig) -> Result<Option<Solver>, String> {
        let Some(dns) = &cfg.dns else { return Ok(None) };
        let provider = match dns {
            DnsConfig::Rfc2136 {
                server,
                zone,
                tsig_key_name,
                tsig_algorithm,
                tsig_secret,
            } => Provider::Rfc2136(rfc2136::Rfc2136::new(
                *server,
                zone,
                tsig_key_name,
                *tsig_algorithm,
                tsig_secret.expose(),
            )?),
            DnsConfig::Cloudflare { api_token, api_url } => Provider::Cloudflare(Box::new(
                cloudflare::Cloudflare::new(api_token.clone(), api_url.as_deref())?,
            )),
            DnsConfig::Exec { command } => Provider::Exec(command.clone()),
        };
        Ok(Some(Solver {
            provider,
            propagation_timeout: cfg.propagation_timeout,
            resolvers: cfg.resolvers.clone(),
        }))
    }

    pub fn provider_name(&self) -> &'static str {
        match self.provider {
            Provider::Rfc2136(_) => "rfc2136",
            Provider::Cloudflare(_) => "cloudflare",
            Provider::Exec(_) => "exec",
        }
    }

    /// The record name for an identifier (a wildcard's is its base name's).
    pub fn record_name(identifier: &str) -> String {
        format!("_acme-challenge.{}", identifier.trim_start_matches("*."))
    }

    /// Adds `value` to the TXT records at `fqdn` (others stay: a wildcard
    /// and its apex share the name).
    pub async fn present(&self, fqdn: &str, value: &str) -> Result<Presented, String> {
        let cf = match &self.provider {
            Provider::Rfc2136(p) => {
                p.present(&dns_name(fqdn)?, value).await?;
                None
            }
            Provider::Cloudflare(p) => Some(p.present(fqdn, value).await?),
            Provider::Exec(cmd) => {
                exec::run(cmd, "present", fqdn, value).await?;
                None
            }
        };
        Ok(Presented {
            fqdn: fqdn.to_string(),
            value: value.to_string(),
            cf,
        })
    }

    /// Removes one presented value.
    pub async fn cleanup(&self, p: &Presented) -> Result<(), String> {
        match &self.provider {
            Provider::Rfc2136(r) => r.cleanup(&dns_name(&p.fqdn)?, &p.value).await,
            Provider::Cloudflare(c) => match &p.cf {
                Some(rec) => c.cleanup(&p.fqdn, rec).await,
                None => Ok(()),
            },
            Provider::Exec(cmd) => exec::run(cmd, "cleanup", &p.fqdn, &p.value).await,
        }
    }

    /// Waits until every server that will be asked answers every presented
    /// value; the error says which server still lacks which record.
    pub async fn wait_propagated(&self, records: &[Presented]) -> Result<(), String> {
        let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in records {
            wanted.entry(&r.fqdn).or_default().push(&r.value);
        }
        let deadline = Instant::now() + self.propagation_timeout;
        // Where to ask, found once per name (finding it may take a while).
        let mut targets = Vec::new();
        for (fqdn, values) in &wanted {
            let name = dns_name(fqdn)?;
            let (servers, recursive) = self.check_servers(&name).await?;
            targets.push((*fqdn, name, values, servers, recursive));
        }
        let last_missing = loop {
            let mut missing = Vec::new();
            for (fqdn, name, values, servers, recursive) in &targets {
                for server in servers {
                    match wire::txt_values(*server, name, *recursive).await {
                        Ok(have) => {
                            let absent = values
                                .iter()
                                .filter(|v| !have.iter().any(|h| h == *v))
                                .count();
                            if absent > 0 {
                                missing.push(format!(
                                    "{server} answers {} of {} values for TXT {fqdn}",
                                    values.len() - absent,
                                    values.len()
                                ));
                            }
                        }
                        Err(e) => missing.push(e),
                    }
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() + POLL > deadline {
                break missing.join("; ");
            }
            tokio::time::sleep(POLL).await;
        };
        Err(format!(
            "propagation timeout: after {}s (acme.propagation_timeout) {last_missing}",
            self.propagation_timeout.as_secs()
        ))
    }

    /// Where to check a name: the configured resolvers (asked to recurse),
    /// or the zone's authoritative servers (for rfc2136, at least the
    /// server that took the update).
    async fn check_servers(&self, name: &Name) -> Result<(Vec<SocketAddr>, bool), String> {
        if !self.resolvers.is_empty() {
            return Ok((self.resolvers.clone(), true));
        }
        let found = wire::authoritative_servers(name).await;
        match (&self.provider, found) {
            (Provider::Rfc2136(p), Ok(mut servers)) => {
                if !servers.contains(&p.server) {
                    servers.push(p.server);
                }
                Ok((servers, false))
            }
            (Provider::Rfc2136(p), Err(e)) => {
                tracing::debug!(name = %name, error = %e, "checking propagation at the update server only");
                Ok((vec![p.server], false))
            }
            (_, Ok(servers)) => Ok((servers, false)),
            (_, Err(e)) => Err(format!(
                "cannot check propagation: {e}; set acme.resolvers to the servers to ask"
            )),
        }
    }
}

fn dns_name(fqdn: &str) -> Result<Name, String> {
    let abs = if fqdn.ends_with('.') {
        fqdn.to_string()
    } else {
        format!("{fqdn}.")
    };
    Name::from_ascii(&abs).map_err(|e| format!("`{fqdn}` is not a DNS name: {e}"))
}
