//! The checking context every section shares: where errors go (file,
//! line, column, key), whether named files are read, and the typed
//! readers for a table, an array of tables, an address and a duration.
//! Unknown keys are explained with the nearest known one.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

use super::{ConfigError, ConfigErrors, Secret, parse_duration};

pub(super) struct Cx<'a> {
    /// The file being checked now (the main file or an included one).
    pub(super) file: Arc<Path>,
    pub(super) line_starts: Vec<usize>,
    pub(super) errors: Vec<ConfigError>,
    /// false: files named by the config are taken as present (`check
    /// --no-files`).
    pub(super) read_files: bool,
    /// Secret files whose paths no checked section keeps (`[cluster]`'s,
    /// DNS-01 providers'), for [`super::Config::watched_files`].
    pub(super) secret_files: Vec<PathBuf>,
    _src: std::marker::PhantomData<&'a str>,
}

impl Cx<'_> {
    pub(super) fn new(file: &Path, src: &str) -> Self {
        let mut cx = Cx {
            file: Arc::from(file),
            line_starts: Vec::new(),
            errors: Vec::new(),
            read_files: true,
            secret_files: Vec::new(),
            _src: std::marker::PhantomData,
        };
        cx.enter(Arc::from(file), src);
        cx
    }

    /// A secret file's content, or a stand-in when files are not read.
    pub(super) fn secret(&self, path: &Path) -> Result<Secret, String> {
        if self.read_files {
            Secret::read_file(path)
        } else {
            Ok(Secret::new("not read (--no-files)".into()))
        }
    }

    /// Spans from now on are in `file`, whose text is `src`.
    pub(super) fn enter(&mut self, file: Arc<Path>, src: &str) {
        self.file = file;
        self.line_starts = vec![0];
        self.line_starts
            .extend(src.match_indices('\n').map(|(i, _)| i + 1));
    }

    /// An error at a 1-based line of another file than the current one
    /// (checks across files and label routes).
    pub(super) fn err_at(&mut self, file: &Path, line: usize, key: &str, message: String) {
        self.errors.push(ConfigError {
            file: file.to_path_buf(),
            line,
            column: if line > 0 { 1 } else { 0 },
            key: key.to_string(),
            message,
        });
    }

    pub(super) fn err(&mut self, span: Option<Range<usize>>, key: &str, message: String) {
        let (line, column) = match span {
            Some(r) => {
                let line_idx = self.line_starts.partition_point(|&s| s <= r.start) - 1;
                (line_idx + 1, r.start - self.line_starts[line_idx] + 1)
            }
            None => (0, 0),
        };
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        });
    }

    pub(super) fn finish_err(mut self) -> ConfigErrors {
        self.errors
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        ConfigErrors(self.errors)
    }

    /// `[SECTION.NAME]` tables, each read as `T` like [`Cx::section`]
    /// (every bad key reported with its path and line); `what` names one
    /// in errors ("a provider"). The broken ones' names come back apart,
    /// so that a route naming one gets no second error.
    pub(super) fn named_tables<T: for<'de> Deserialize<'de>>(
        &mut self,
        section: &str,
        what: &str,
        value: Spanned<DeValue<'_>>,
    ) -> (Vec<Named<T>>, Vec<String>) {
        let span = value.span();
        let DeValue::Table(table) = value.into_inner() else {
            self.err(
                Some(span),
                section,
                format!("`{section}` must hold named tables: [{section}.NAME]"),
            );
            return (Vec::new(), Vec::new());
        };
        let (mut good, mut broken) = (Vec::new(), Vec::new());
        for (name, v) in table {
            let name_span = name.span();
            let name = name.get_ref().to_string();
            let key = format!("{section}.{name}");
            if !valid_name(&name) {
                self.err(
                    Some(name_span),
                    &key,
                    format!("{what} name uses 1-64 letters, digits, - or _"),
                );
                broken.push(name);
                continue;
            }
            let before = self.errors.len();
            match self.section::<T>(&key, v) {
                Some(raw) if self.errors.len() == before => good.push(Named {
                    // The table header's line: the name's span is on it.
                    line: self.line_of(name_span.start),
                    name,
                    key,
                    name_span,
                    raw,
                }),
                _ => broken.push(name),
            }
        }
        (good, broken)
    }

    /// A table deserialized into `T`. A key that fails (unknown, wrong
    /// type, bad value) is reported with its full path (`server.workers`,
    /// `route[2].name`) and its own line, then left out, and the rest of
    /// the table is read again: one bad key neither hides the others nor
    /// makes the table look empty (which would invent errors such as "no
    /// listener").
    pub(super) fn section<T: for<'de> Deserialize<'de>>(
        &mut self,
        key: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let span = value.span();
        let DeValue::Table(mut table) = value.into_inner() else {
            self.err(Some(span), key, format!("`{key}` must be a table: [{key}]"));
            return None;
        };
        loop {
            let attempt = Spanned::new(span.clone(), DeValue::Table(table.clone()));
            let e = match T::deserialize(ValueDeserializer::from(attempt)) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let at = e.span();
            let culprit = at.as_ref().and_then(|at| {
                table
                    .iter()
                    .find(|(k, v)| {
                        let (k, v) = (k.span(), v.span());
                        (k.start..v.end.max(k.end)).contains(&at.start)
                    })
                    .map(|(k, _)| k.clone())
            });
            let Some(culprit) = culprit else {
                // Not one key's fault (a missing required key, say).
                self.err(at.or(Some(span)), key, e.message().to_string());
                return None;
            };
            let name: &str = culprit.get_ref();
            self.err(
                at.or(Some(culprit.span())),
                &format!("{key}.{name}"),
                explain_key_error(name, e.message()),
            );
            table.remove(&culprit);
        }
    }

    pub(super) fn array_of_tables<T: for<'de> Deserialize<'de>>(
        &mut self,
        key: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Vec<(usize, Range<usize>, T)> {
        let span = value.span();
        let DeValue::Array(items) = value.into_inner() else {
            self.err(
                Some(span),
                key,
                format!("`{key}` must be an array of tables: [[{key}]]"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let item_key = format!("{key}[{}]", i + 1);
            let item_span = item.span();
            if let Some(v) = self.section::<T>(&item_key, item) {
                out.push((i + 1, item_span, v));
            }
        }
        out
    }

    pub(super) fn addr(&mut self, key: &str, v: Option<Spanned<String>>) -> Option<SocketAddr> {
        let v = v?;
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    Some(v.span()),
                    key,
                    format!(
                        "`{}` is not an address; write IP:PORT, e.g. \"0.0.0.0:443\" or \"[::]:443\"",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        v: Option<Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        match parse_duration(v.get_ref()) {
            Ok(d) => d,
            Err(msg) => {
                self.err(Some(v.span()), key, msg);
                default
            }
        }
    }
}

/// serde's message for a bad key, in the config's words: an unknown key
/// names the nearest known one when there is a close one.
fn explain_key_error(name: &str, message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let known: Vec<&str> = rest
        .split('`')
        .skip(2)
        .step_by(2)
        .filter(|k| !k.is_empty())
        .collect();
    match nearest(name, &known) {
        Some(k) => format!("unknown key `{name}`; did you mean `{k}`?"),
        None if known.is_empty() => format!("unknown key `{name}`"),
        None => format!("unknown key `{name}`; known keys: {}", known.join(", ")),
    }
}

/// The known key closest to `name` by edit distance, if close enough to be
/// a typo (at most a third of its length, and at most 3 edits).
pub(super) fn nearest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (insertions, deletions, substitutions).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// A name of a `[SECTION.NAME]` table (a provider, an access list): 1-64
/// letters, digits, `-` or `_`.
pub(super) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One `[SECTION.NAME]` table, read.
pub(super) struct Named<T> {
    pub(super) name: String,
    /// `SECTION.NAME`: the key its errors name.
    pub(super) key: String,
    /// The line of its table header.
    pub(super) line: usize,
    pub(super) name_span: Range<usize>,
    pub(super) raw: T,
}

#[cfg(test)]
mod key_error_tests {
    use super::*;

    #[test]
    fn typos_get_the_nearest_key() {
        let known = ["http", "https", "grace_period", "upstream_timeout"];
        assert_eq!(nearest("grace_perod", &known), Some("grace_period"));
        assert_eq!(nearest("upstream_timout", &known), Some("upstream_timeout"));
        assert_eq!(nearest("htps", &known), Some("https"));
        assert_eq!(nearest("completely_else", &known), None);
        assert_eq!(
            explain_key_error(
                "grace_perod",
                "unknown field `grace_perod`, expected one of `http`, `grace_period`"
            ),
            "unknown key `grace_perod`; did you mean `grace_period`?"
        );
        assert_eq!(
            explain_key_error("zzz", "unknown field `zzz`, expected `http` or `https`"),
            "unknown key `zzz`; known keys: http, https"
        );
    }
}
