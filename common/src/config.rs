//! Reading YAML configuration files: unknown keys are refused, and every error names the
//! file and the offending key path (`checkin.interval: invalid duration ...`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::{Error, fsutil};

/// Parses YAML text into `T`; `origin` names the source in errors.
pub fn from_yaml_str<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T, Error> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        Error::Config {
            file: origin.to_path_buf(),
            key: if path == "." { String::new() } else { path },
            why: inner.to_string(),
        }
    })
}

/// Reads and parses a YAML file.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = fsutil::read_to_string(path)?;
    from_yaml_str(&text, path)
}

/// Resolves `p` against the directory of the config file it came from, so configs can
/// name their neighbours ("pki/ca.pem") wherever they are started from.
pub fn resolve(config_file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    config_file
        .parent()
        .map(|d| d.join(p))
        .unwrap_or_else(|| p.to_path_buf())
}

/// A percentage between 0 and 100, written `10%` or `10`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        let value = match Raw::deserialize(d)? {
            Raw::Num(n) => n,
            Raw::Text(s) => s
                .trim()
                .trim_end_matches('%')
                .trim()
                .parse::<f64>()
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a percentage")))?,
        };
        if !(0.0..=100.0).contains(&value) {
            return Err(serde::de::Error::custom(format!(
                "{value}% is outside 0%..100%"
            )));
        }
        Ok(Percent(value))
    }
}

impl Percent {
    pub fn of(self, d: Duration) -> Duration {
        d.mul_f64(self.0 / 100.0)
    }
}

/// A byte size written `65536`, `64KiB` or `1MiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(ByteSize(n as usize)),
            Raw::Text(s) => parse_byte_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

fn parse_byte_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(with = "humantime_serde")]
        interval: Duration,
        #[serde(default)]
        size: Option<ByteSize>,
        #[serde(default)]
        jitter: Option<Percent>,
    }

    fn parse(text: &str) -> Result<Outer, Error> {
        from_yaml_str(text, Path::new("test.yaml"))
    }

    #[test]
    fn errors_name_the_key_path() {
        let err = parse("inner:\n  interval: soon\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("test.yaml"), "{msg}");
        assert!(msg.contains("inner.interval"), "{msg}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let msg = parse("inner:\n  interval: 1s\n  intervall: 2s\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("intervall"), "{msg}");
    }

    #[test]
    fn sizes_and_percentages_parse() {
        let o = parse("inner:\n  interval: 1m\n  size: 64KiB\n  jitter: 10%\n").unwrap();
        assert_eq!(o.inner.interval, Duration::from_secs(60));
        assert_eq!(o.inner.size, Some(ByteSize(65536)));
        assert_eq!(o.inner.jitter, Some(Percent(10.0)));
        assert!(parse("inner:\n  interval: 1m\n  jitter: 150%\n").is_err());
        assert!(parse("inner:\n  interval: 1m\n  size: 3 parsecs\n").is_err());
    }
}
