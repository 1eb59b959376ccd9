//! Secrets read from files: tokens and passwords ([`Secret`]) and decoded
//! keys ([`SecretBytes`]). Neither `Debug` shows the value, and the errors
//! name the file, never its content.

use std::fmt;

/// A secret read from a file. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Secrets are tokens and passwords: anything bigger is the wrong file
/// (or `/dev/zero`), refused instead of read into memory.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

impl Secret {
    /// Reads a secret file: surrounding whitespace trimmed, refused when
    /// empty, larger than [`MAX_SECRET_FILE_BYTES`] or not UTF-8. The
    /// message names the file, never the content.
    pub fn read_file(path: &std::path::Path) -> Result<Secret, String> {
        use std::io::Read;
        let shown = path.display();
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let mut bytes = Vec::new();
        file.take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read {shown}: {e}"))?;
        if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
            return Err(format!(
                "{shown} is larger than {} KiB; a secret file holds one token",
                MAX_SECRET_FILE_BYTES / 1024
            ));
        }
        let text = String::from_utf8(bytes).map_err(|_| format!("{shown} is not UTF-8 text"))?;
        match text.trim() {
            "" => Err(format!("{shown} is empty")),
            t => Ok(Secret(t.to_string())),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Secret bytes (a decoded key). Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(v: Vec<u8>) -> Self {
        SecretBytes(v)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_trimmed_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "  tok3n\n").unwrap();
        assert_eq!(Secret::read_file(&p).unwrap().expose(), "tok3n");
        std::fs::write(&p, " \n").unwrap();
        assert!(Secret::read_file(&p).unwrap_err().contains("is empty"));
        std::fs::write(&p, vec![b'x'; MAX_SECRET_FILE_BYTES as usize + 1]).unwrap();
        let e = Secret::read_file(&p).unwrap_err();
        assert!(e.contains("larger than 64 KiB"), "{e}");
        assert!(!e.contains("xxxx"), "the content is never shown: {e}");
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(Secret::read_file(&p).unwrap_err().contains("not UTF-8"));
        let e = Secret::read_file(&dir.path().join("missing")).unwrap_err();
        assert!(e.starts_with("cannot read"), "{e}");
    }
}
