//! ACME state on disk, under `state_dir/acme/<server>/`:
//! `account.json` (credentials, 0600) and `certs/<host>.crt` + `.key`
//! (0600), in 0700 folders, every write atomic. One folder per ACME server,
//! so switching from staging to production never serves staging
//! certificates or reuses the staging account.

use std::path::{Path, PathBuf};

use crate::fsutil::{private_dir, write_atomic};

#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    pub fn new(state_dir: &Path, directory_url: &str) -> Self {
        Storage {
            root: state_dir.join("acme").join(server_key(directory_url)),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn account_path(&self) -> PathBuf {
        self.root.join("account.json")
    }

    fn cert_paths(&self, host: &str) -> (PathBuf, PathBuf) {
        let dir = self.root.join("certs");
        // `*.example.com` is stored as `_wildcard_.example.com`: no glob
        // character in file names (`_` is never in a routed host).
        let host = match host.strip_prefix("*.") {
            Some(base) => format!("_wildcard_.{base}"),
            None => host.to_string(),
        };
        (
            dir.join(format!("{host}.crt")),
            dir.join(format!("{host}.key")),
        )
    }

    pub fn load_account(&self) -> Option<Vec<u8>> {
        std::fs::read(self.account_path()).ok()
    }

    pub fn save_account(&self, json: &[u8]) -> std::io::Result<()> {
        private_dir(&self.root)?;
        write_atomic(&self.account_path(), json, 0o600)
    }

    pub fn forget_account(&self) {
        let _ = std::fs::remove_file(self.account_path());
    }

    /// The stored chain and key PEM for a host, if both exist.
    pub fn load_cert(&self, host: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        let (c, k) = self.cert_paths(host);
        Some((std::fs::read(c).ok()?, std::fs::read(k).ok()?))
    }

    /// Stores key first, then chain: a crash in between leaves a new key
    /// with the old chain, which fails the key check on load and is simply
    /// ordered again, never a half-written file.
    pub fn save_cert(&self, host: &str, chain_pem: &[u8], key_pem: &[u8]) -> std::io::Result<()> {
        let (c, k) = self.cert_paths(host);
        private_dir(c.parent().expect("certs dir"))?;
        write_atomic(&k, key_pem, 0o600)?;
        write_atomic(&c, chain_pem, 0o600)
    }
}

/// A readable, unique folder name for an ACME directory URL.
fn server_key(url: &str) -> String {
    let host: String = url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or("acme")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    let short: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{host}-{short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_keys_differ_per_directory() {
        let a = server_key("https://acme-v02.api.letsencrypt.org/directory");
        let b = server_key("https://acme-staging-v02.api.letsencrypt.org/directory");
        assert!(a.starts_with("acme-v02.api.letsencrypt.org-"), "{a}");
        assert_ne!(a, b);
        assert_eq!(
            server_key("https://127.0.0.1:14000/dir").split('-').next(),
            Some("127.0.0.1_14000")
        );
    }
}
