//! Host names as envoys are enrolled under: lowercase, 1–253 characters of letters,
//! digits, '-' and '_', dot-separated labels of 1–63.

use crate::Error;

const MAX_HOSTNAME: usize = 253;

pub fn normalize(raw: &str) -> Result<String, Error> {
    let h = raw.trim().to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= MAX_HOSTNAME
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(h)
    } else {
        Err(Error::Malformed {
            what: "hostname",
            why: format!("{raw:?} is not a valid host name"),
        })
    }
}

/// One hostname glob (`web-*`, `db-??.example.com`) as policies, overrides and fleet
/// queries mean it: case-insensitive, `*` matches across dots, at most
/// [`MAX_HOSTNAME_PATTERN`](crate::limits::MAX_HOSTNAME_PATTERN) bytes.
pub fn glob(pattern: &str) -> Result<globset::Glob, String> {
    let limit = crate::limits::MAX_HOSTNAME_PATTERN;
    if pattern.len() > limit {
        return Err(format!(
            "a pattern of {} bytes: patterns are at most {limit}",
            pattern.len()
        ));
    }
    globset::GlobBuilder::new(pattern)
        .case_insensitive(true)
        .literal_separator(false)
        .build()
        .map_err(|e| format!("bad pattern {pattern:?}: {e}"))
}

/// A compiled hostname glob. Building one compiles a regular expression, which can
/// fail: that is an error here, never a panic.
#[derive(Clone, Debug)]
pub struct Pattern(globset::GlobSet);

impl Pattern {
    pub fn new(pattern: &str) -> Result<Self, String> {
        let mut set = globset::GlobSetBuilder::new();
        set.add(glob(pattern)?);
        set.build()
            .map(Pattern)
            .map_err(|e| format!("{pattern:?} does not compile: {e}"))
    }

    pub fn is_match(&self, hostname: &str) -> bool {
        self.0.is_match(hostname)
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn patterns_are_bounded_and_never_panic() {
        let p = super::Pattern::new("WEB-*").unwrap();
        assert!(p.is_match("web-1.example.com"));
        assert!(super::Pattern::new(&"?".repeat(1_000_000)).is_err());
        assert!(super::Pattern::new("web-[").is_err());
    }

    #[test]
    fn hostnames_are_normalized_and_checked() {
        assert_eq!(
            normalize(" Web-01.Example.COM ").unwrap(),
            "web-01.example.com"
        );
        for bad in ["", "a..b", ".a", "a b", "a/b", &"x".repeat(64)] {
            assert!(normalize(bad).is_err(), "{bad:?} accepted");
        }
    }
}
