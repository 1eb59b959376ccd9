//! The ACME account: reused from `state_dir` (or, with `[cluster]`, from
//! Redis, mirrored to disk), created when there is none, and the HTTPS
//! client that talks to the CA.

use std::path::Path;

use bytes::Bytes;
use instant_acme::{Account, AccountCredentials, NewAccount};

use super::order;
use super::shared::AcmeShared;
use super::storage::Storage;
use crate::config::AcmeConfig;

/// With `[cluster]`, the cluster's account (Redis first, mirrored to
/// disk; a disk account is offered to Redis when it has none; while Redis
/// is down, the disk's).
async fn cluster_account(
    cfg: &AcmeConfig,
    storage: &Storage,
    shared: &AcmeShared,
) -> Option<Vec<u8>> {
    let local = storage.load_account();
    let remote = match shared.load_account(&cfg.directory).await {
        Ok(Some(json)) => json,
        Ok(None) => match &local {
            Some(l) => shared.offer_account(&cfg.directory, l).await.ok()?,
            None => return None,
        },
        Err(e) => {
            tracing::warn!(error = %e, "Redis unreachable: using the ACME account stored on disk");
            return local;
        }
    };
    if local.as_deref() != Some(&remote[..])
        && let Err(e) = storage.save_account(&remote)
    {
        tracing::error!(error = %e, "could not mirror the shared ACME account into state_dir");
    }
    Some(remote)
}

pub(super) async fn get_account(
    cfg: &AcmeConfig,
    storage: &Storage,
    shared: Option<&AcmeShared>,
) -> Result<Account, String> {
    let stored = match shared {
        Some(sh) => cluster_account(cfg, storage, sh).await,
        None => storage.load_account(),
    };
    if let Some(json) = stored {
        match serde_json::from_slice::<AccountCredentials>(&json) {
            Ok(creds) => {
                let acct =
                    instant_acme::Account::builder_with_http(http_client(cfg.ca_file.as_deref())?)
                        .from_credentials(creds)
                        .await
                        .map_err(|e| crate::http::error::chain(&e))?;
                tracing::info!(directory = %cfg.directory, "reusing stored ACME account");
                return Ok(acct);
            }
            Err(e) => {
                tracing::warn!(error = %e, "stored ACME account unreadable; creating a new one")
            }
        }
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (acct, creds) =
        instant_acme::Account::builder_with_http(http_client(cfg.ca_file.as_deref())?)
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                cfg.directory.clone(),
                None,
            )
            .await
            .map_err(|e| match &e {
                instant_acme::Error::Api(p) => order::describe_problem(p),
                other => crate::http::error::chain(other),
            })?;
    let mut json = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
    let mut acct = acct;
    if let Some(sh) = shared {
        match sh.offer_account(&cfg.directory, &json).await {
            // Another instance created one at the same time: use theirs.
            Ok(winner) if winner != json => {
                let creds: AccountCredentials =
                    serde_json::from_slice(&winner).map_err(|e| e.to_string())?;
                acct =
                    instant_acme::Account::builder_with_http(http_client(cfg.ca_file.as_deref())?)
                        .from_credentials(creds)
                        .await
                        .map_err(|e| crate::http::error::chain(&e))?;
                json = winner;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the new ACME account could not be shared through Redis")
            }
        }
    }
    storage.save_account(&json).map_err(|e| {
        format!(
            "cannot store the account in {}: {e}",
            storage.root().display()
        )
    })?;
    tracing::info!(directory = %cfg.directory, "created ACME account");
    Ok(acct)
}

/// The HTTPS client for the CA: system roots plus `ca_file`.
fn http_client(ca_file: Option<&Path>) -> Result<Box<dyn instant_acme::HttpClient>, String> {
    let tls = crate::pki::client_config(ca_file)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: hyper_util::client::legacy::Client<_, instant_acme::BodyWrapper<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    Ok(Box::new(client))
}
