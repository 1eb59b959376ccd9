//! Human durations in the config file: `"30s"`, `"500ms"`, `"12h"`, `"1h30m"`.

use std::time::Duration;

/// The longest duration the config accepts: longer than any sensible
/// timeout, TTL or HSTS max-age, and far from the point where
/// `Instant::now() + d` overflows and panics (found by fuzzing:
/// `timeout = "18446744073709551615s"` validated, then every proxied
/// request panicked).
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// Parses a duration written as one or more `<number><unit>` pairs, units
/// `ms`, `s`, `m`, `h`, `d`. A bare `"0"` is accepted as zero. At most
/// [`MAX_DURATION`] (10 years).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration; write e.g. \"30s\", \"500ms\", \"12h\"".into());
    }
    let bytes = s.as_bytes();
    let mut total = Duration::ZERO;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!(
                "`{s}` is not a duration; write e.g. \"30s\", \"500ms\", \"12h\""
            ));
        }
        let n: u64 = s[start..i]
            .parse()
            .map_err(|_| format!("`{s}`: number too large"))?;
        // "5 seconds": read the unit past the space, to name it.
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let part = match &s[unit_start..i] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(format!("`{s}` needs a unit (ms, s, m, h, d)")),
            other => {
                return Err(format!(
                    "`{s}`: unknown unit `{other}` (use ms, s, m, h, d)"
                ));
            }
        };
        if unit_start > start && bytes[unit_start - 1] == b' ' {
            return Err(format!(
                "`{s}`: no space between number and unit; write e.g. \"{n}{}\"",
                &s[unit_start..i]
            ));
        }
        total = total.saturating_add(part);
    }
    if total > MAX_DURATION {
        return Err(format!("`{s}` is too long: at most 3650d (10 years)"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelled_out_units_are_named() {
        let e = parse_duration("5 seconds").unwrap_err();
        assert!(
            e.contains("unknown unit `seconds` (use ms, s, m, h, d)"),
            "{e}"
        );
        let e = parse_duration("5 s").unwrap_err();
        assert!(e.contains("no space"), "{e}");
    }

    #[test]
    fn parses_units_and_combinations() {
        let cases = [
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("12h", Duration::from_secs(12 * 3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("2d", Duration::from_secs(2 * 86_400)),
            ("0", Duration::ZERO),
            ("3650d", MAX_DURATION),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for bad in [
            "",
            "s",
            "10",
            "10x",
            "ten seconds",
            "-1s",
            "3651d",
            "18446744073709551615s",
            "9223372036854775807s1s",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }
}
