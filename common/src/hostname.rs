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

#[cfg(test)]
mod tests {
    use super::normalize;

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
