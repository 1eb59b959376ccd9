//! PromQL, read just enough to check alert rules and dashboard queries
//! against what the gateway serves: the metric selectors an expression
//! uses and the label names of its `by (...)` clauses.

use std::collections::BTreeSet;

/// What an expression selects on.
#[derive(Debug, Default, PartialEq)]
pub struct Uses {
    /// Metric selectors as written: `name` or `name{matchers}`.
    pub selectors: Vec<String>,
    /// Label names of its `by (...)` clauses.
    pub by: BTreeSet<String>,
}

impl Uses {
    /// The metric names of the selectors, in order.
    pub fn metric_names(&self) -> Vec<String> {
        self.selectors
            .iter()
            .map(|s| s.split('{').next().unwrap_or_default().to_string())
            .collect()
    }
}

/// Identifiers that are neither metrics nor calls: keywords, and the
/// aggregations (which may be followed by `by (...)` before their `(`).
const KEYWORDS: &[&str] = &[
    // followed by a list of label names
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    // the rest
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a list of label names (the first six).
const LABEL_LISTS: &[&str] = KEYWORDS.split_at(6).0;

/// Index just past the block that starts at `i` (`{`, `[` or a quote).
fn skip_block(b: &[char], i: usize) -> usize {
    let close = match b[i] {
        '{' => '}',
        '[' => ']',
        q => q,
    };
    let quoted = close == b[i];
    let mut i = i + 1;
    while i < b.len() && b[i] != close {
        if quoted && b[i] == '\\' && close != '`' {
            i += 1;
        } else if !quoted && matches!(b[i], '"' | '\'' | '`') {
            i = skip_block(b, i) - 1;
        }
        i += 1;
    }
    i + 1
}

/// The selectors and `by` labels of `expr`: identifiers that are not
/// functions (followed by `(`), keywords, label lists, numbers or
/// durations, Grafana `$variables`, or inside strings and `[...]`.
pub fn uses(expr: &str) -> Uses {
    let b: Vec<char> = expr.chars().collect();
    let mut u = Uses::default();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, '"' | '\'' | '`' | '{' | '[') {
            i = skip_block(&b, i);
        } else if c.is_ascii_digit() || (c == '.' && b.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations (0.99, 86400, 1e3, 5m).
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || matches!(c, '_' | ':' | '$') {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '_' || b[i] == ':') {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            let mut j = i;
            while j < b.len() && b[j].is_whitespace() {
                j += 1;
            }
            let next = b.get(j).copied();
            if LABEL_LISTS.contains(&word.as_str()) && next == Some('(') {
                let close = b[j..]
                    .iter()
                    .position(|&c| c == ')')
                    .map_or(b.len(), |p| p + j);
                if word == "by" {
                    let list: String = b[j + 1..close].iter().collect();
                    u.by.extend(
                        list.split(',')
                            .map(|l| l.trim().to_string())
                            .filter(|l| !l.is_empty()),
                    );
                }
                i = close + 1;
            } else if next == Some('(')
                || KEYWORDS.contains(&word.as_str())
                || word.starts_with('$')
            {
                // a function, an aggregation or a keyword; `$var` outside a
                // selector is a Grafana variable
            } else if next == Some('{') {
                let end = skip_block(&b, j);
                u.selectors
                    .push(format!("{word}{}", b[j..end].iter().collect::<String>()));
                i = end;
            } else {
                u.selectors.push(word);
            }
        } else {
            i += 1;
        }
    }
    u
}
