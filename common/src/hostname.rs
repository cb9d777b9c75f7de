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

/// The hostnames an enrollment token may enroll: any (no patterns), or those matching
/// one of its patterns. Hub and standalone spokes check tokens with it alike.
#[derive(Clone, Default)]
pub struct Scope {
    patterns: Vec<String>,
    set: Option<globset::GlobSet>,
}

impl Scope {
    /// Patterns one token may carry.
    pub const MAX_PATTERNS: usize = 32;

    pub fn new(patterns: &[String]) -> Result<Self, String> {
        if patterns.len() > Self::MAX_PATTERNS {
            return Err(format!(
                "{} patterns; a token carries at most {}",
                patterns.len(),
                Self::MAX_PATTERNS
            ));
        }
        if patterns.is_empty() {
            return Ok(Self::default());
        }
        let mut set = globset::GlobSetBuilder::new();
        for p in patterns {
            set.add(glob(p)?);
        }
        let set = set
            .build()
            .map_err(|e| format!("the patterns do not compile: {e}"))?;
        Ok(Self {
            patterns: patterns.to_vec(),
            set: Some(set),
        })
    }

    pub fn admits(&self, hostname: &str) -> bool {
        self.set.as_ref().is_none_or(|s| s.is_match(hostname))
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.patterns).finish()
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

    #[test]
    fn a_scope_admits_what_its_patterns_match_and_no_pattern_admits_all() {
        use super::Scope;
        assert!(Scope::new(&[]).unwrap().admits("db-1"));
        let web = Scope::new(&["web-*".into(), "www".into()]).unwrap();
        assert!(web.admits("web-1") && web.admits("WWW") && !web.admits("db-1"));
        assert!(Scope::new(&["web-[".into()]).is_err());
        assert!(Scope::new(&vec!["a".to_string(); 33]).is_err());
    }
}
