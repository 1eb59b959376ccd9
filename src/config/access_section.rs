//! `[access.NAME]` lists (NPM's "Access Lists"): htpasswd users with the
//! slow, salted hash kinds only, allowed and denied addresses, and whether
//! either suffices. The htpasswd file is read while checking, so on every
//! reload; what the request path does with a list is `policy::access`'s.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::cx::Cx;
use super::validate::resolve_relative;

// --- raw ---------------------------------------------------------------------

/// `[access.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccess {
    pub basic_auth_file: Option<Spanned<String>>,
    pub allow: Option<Vec<Spanned<String>>>,
    pub deny: Option<Vec<Spanned<String>>>,
    pub satisfy: Option<Spanned<String>>,
    pub pass_auth: Option<bool>,
    pub realm: Option<Spanned<String>>,
}

// --- checked -----------------------------------------------------------------

/// How a password in an htpasswd file is hashed (only the kinds accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    Bcrypt,
    ShaCrypt,
    Argon2id,
}

/// One `user:hash` line of an htpasswd file.
#[derive(Clone)]
pub struct HtpasswdUser {
    pub user: String,
    pub hash: String,
    pub kind: HashKind,
}

impl std::fmt::Debug for HtpasswdUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HtpasswdUser({}, {:?})", self.user, self.kind)
    }
}

/// `satisfy`: whether the address or the password suffices, or both are needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Satisfy {
    Any,
    All,
}

/// `[access.NAME]`, checked; the htpasswd file is read here (so on every
/// reload).
#[derive(Debug, Clone)]
pub struct AccessList {
    pub name: String,
    pub basic_auth_file: Option<PathBuf>,
    pub users: Vec<HtpasswdUser>,
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
    pub satisfy: Satisfy,
    pub pass_auth: bool,
    pub realm: String,
    pub line: usize,
}

impl AccessList {
    /// Is the address allowed by the list's address rules? `deny` wins;
    /// an empty `allow` lets every address not denied through.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }

    /// Under `satisfy = "any"`, does the address alone let the client in?
    /// Only when it is named by `allow` (an empty `allow` names nobody).
    pub fn address_suffices(&self, ip: IpAddr) -> bool {
        !self.allow.is_empty() && self.address_allowed(ip)
    }
}

// --- checks ------------------------------------------------------------------

/// The `[access.NAME]` lists, by name; names of broken ones are kept so
/// routes naming them get no second error.
#[derive(Debug, Default)]
pub(super) struct AccessSet {
    pub list: BTreeMap<String, Arc<AccessList>>,
    pub broken: Vec<String>,
}

/// Reads an htpasswd file. Errors name the file and line.
pub fn read_htpasswd(path: &Path) -> Result<Vec<HtpasswdUser>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("{shown}:{n}: not a `user:hash` line"));
        };
        let kind = hash_kind(hash).map_err(|why| format!("{shown}:{n}: user `{user}`: {why}"))?;
        if users.iter().any(|u: &HtpasswdUser| u.user == user) {
            return Err(format!("{shown}:{n}: user `{user}` appears twice"));
        }
        users.push(HtpasswdUser {
            user: user.to_string(),
            hash: hash.to_string(),
            kind,
        });
    }
    if users.is_empty() {
        return Err(format!("{shown} has no users"));
    }
    Ok(users)
}

/// Accepts the slow, salted hashes; refuses what can be cracked quickly.
fn hash_kind(hash: &str) -> Result<HashKind, String> {
    const REHASH: &str = "re-create it with `htpasswd -B` (bcrypt) or `htpasswd -5` (SHA-512)";
    if hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$") {
        if hash.len() != 60 {
            return Err("bcrypt hash of the wrong length".into());
        }
        return Ok(HashKind::Bcrypt);
    }
    if hash.starts_with("$5$") || hash.starts_with("$6$") {
        return sha_crypt::PasswordHashRef::new(hash)
            .map(|_| HashKind::ShaCrypt)
            .map_err(|_| "malformed SHA-crypt hash".into());
    }
    if hash.starts_with("$argon2id$") {
        return argon2::PasswordHash::new(hash)
            .map(|_| HashKind::Argon2id)
            .map_err(|e| format!("malformed argon2id hash: {e}"));
    }
    if hash.starts_with("$apr1$") || hash.starts_with("$1$") {
        return Err(format!(
            "MD5 (apr1) hashes are refused (fast to crack); {REHASH}"
        ));
    }
    if hash.starts_with("{SHA}") {
        return Err(format!(
            "unsalted SHA-1 hashes are refused (fast to crack); {REHASH}"
        ));
    }
    if hash.starts_with('$') {
        return Err(format!(
            "unknown hash kind; use bcrypt ($2y$), SHA-256/512-crypt ($5$/$6$) or argon2id; {REHASH}"
        ));
    }
    Err(format!(
        "plain-text or DES-crypt passwords are refused; {REHASH}"
    ))
}

impl Cx<'_> {
    /// `[access.NAME]` tables.
    pub(super) fn access_lists(&mut self, value: Spanned<DeValue<'_>>) -> AccessSet {
        let (tables, broken) = self.named_tables::<FileAccess>("access", "an access list", value);
        let mut set = AccessSet {
            broken,
            ..AccessSet::default()
        };
        for t in tables {
            match self.access_list(&t.key, t.name.clone(), t.line, t.name_span, t.raw) {
                Some(a) => {
                    set.list.insert(t.name, Arc::new(a));
                }
                None => set.broken.push(t.name),
            }
        }
        set
    }

    fn access_list(
        &mut self,
        key: &str,
        name: String,
        line: usize,
        span: std::ops::Range<usize>,
        raw: FileAccess,
    ) -> Option<AccessList> {
        let before = self.errors.len();
        let mut users = Vec::new();
        let mut basic_auth_file = None;
        if let Some(f) = raw.basic_auth_file {
            let path = resolve_relative(&self.file, Path::new(f.get_ref()));
            match read_htpasswd(&path) {
                Ok(u) => {
                    users = u;
                    basic_auth_file = Some(path);
                }
                Err(msg) => self.err(Some(f.span()), &format!("{key}.basic_auth_file"), msg),
            }
        }
        let allow = self.cidrs(&format!("{key}.allow"), raw.allow);
        let deny = self.cidrs(&format!("{key}.deny"), raw.deny);
        let satisfy = match raw.satisfy {
            None => Satisfy::Any,
            Some(s) => match s.get_ref().as_str() {
                "any" => Satisfy::Any,
                "all" => Satisfy::All,
                other => {
                    self.err(
                        Some(s.span()),
                        &format!("{key}.satisfy"),
                        format!("`{other}`: use \"any\" (address or password) or \"all\" (both)"),
                    );
                    Satisfy::Any
                }
            },
        };
        let realm = match raw.realm {
            None => name.clone(),
            Some(r) => {
                let t = r.get_ref();
                if t.is_empty()
                    || t.len() > 128
                    || t.bytes()
                        .any(|b| b < b' ' || b == b'"' || b == b'\\' || b >= 0x7f)
                {
                    self.err(
                        Some(r.span()),
                        &format!("{key}.realm"),
                        "use 1-128 printable ASCII characters, no quotes or backslashes".into(),
                    );
                }
                t.clone()
            }
        };
        if self.errors.len() == before
            && basic_auth_file.is_none()
            && allow.is_empty()
            && deny.is_empty()
        {
            self.err(
                Some(span),
                key,
                "an access list needs `basic_auth_file`, `allow` or `deny`".into(),
            );
        }
        if self.errors.len() != before {
            return None;
        }
        Some(AccessList {
            name,
            basic_auth_file,
            users,
            allow,
            deny,
            satisfy,
            pass_auth: raw.pass_auth.unwrap_or(false),
            realm,
            line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_kinds() {
        assert_eq!(
            hash_kind("$2y$05$lRlTODe/8f8uhP3DpCURxeDaZRY4/d4oz4PcflP5nhxeyK3CgrHre"),
            Ok(HashKind::Bcrypt)
        );
        assert_eq!(
            hash_kind("$5$WC7XJlfN952yYsKz$acbFJ9Y6iL6/9OAz8t8K4GWBtwrQ7IZCzOgKqJ0Z/nB"),
            Ok(HashKind::ShaCrypt)
        );
        assert!(hash_kind("$apr1$x$y").unwrap_err().contains("MD5"));
        assert!(hash_kind("{SHA}abc").unwrap_err().contains("SHA-1"));
        assert!(hash_kind("secret").unwrap_err().contains("plain-text"));
    }
}
