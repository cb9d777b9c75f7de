//! `file_line`: one line present in (or absent from) an existing file.

use regex::Regex;
use vigo_proto::v1 as pb;

use super::fsops::{MAX_READ, Owner, Target};
use super::{Applied, Outcome, act};

/// `line` is already rendered. With `match`, the first matching line is replaced by
/// `line` (present) or every matching line removed (absent). The edited file keeps its
/// owner, group and mode.
pub fn apply_file_line(spec: &pb::FileLineSpec, line: &str, dry_run: bool) -> Outcome {
    let path = spec.path.as_str();
    let target = Target::open(path)?;
    let st = target
        .stat()?
        .ok_or_else(|| format!("read {path}: no such file"))?;
    target.check_parent(Some(st.st_uid), spec.allow_unsafe_parent)?;
    let (bytes, _) = target
        .read(MAX_READ)?
        .ok_or_else(|| format!("read {path}: no such file"))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{path} is not UTF-8 text"))?;
    let pattern = if spec.r#match.is_empty() {
        None
    } else {
        Some(Regex::new(&spec.r#match).map_err(|e| format!("match: {e}"))?)
    };
    let matches = |l: &str| l == line || pattern.as_ref().is_some_and(|p| p.is_match(l));
    let lines: Vec<&str> = text.lines().collect();
    let updated: Option<(Vec<String>, &str)> = if spec.present {
        if lines.contains(&line) {
            None
        } else if let Some(i) = lines.iter().position(|l| matches(l)) {
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            out[i] = line.to_string();
            Some((out, "matching line replaced"))
        } else {
            let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
            out.push(line.to_string());
            Some((out, "line appended"))
        }
    } else {
        let kept: Vec<String> = lines
            .iter()
            .filter(|l| !matches(l))
            .map(|l| l.to_string())
            .collect();
        (kept.len() != lines.len()).then_some((kept, "line removed"))
    };
    match updated {
        None => Ok(Applied::InPolicy),
        Some((out, what)) => act(dry_run, what.into(), || {
            let mut body = out.join("\n");
            body.push('\n');
            target.replace(body.as_bytes(), Owner::default(), 0)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_added_replaced_and_removed_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts").to_string_lossy().into_owned();
        std::fs::write(&p, "127.0.0.1 localhost\n10.0.0.1 app.local\n").unwrap();
        let spec = pb::FileLineSpec {
            path: p.clone(),
            line: String::new(),
            present: true,
            r#match: r"app\.local$".into(),
            ..Default::default()
        };
        let line = "10.0.0.9 app.local";
        assert!(matches!(
            apply_file_line(&spec, line, true),
            Ok(Applied::WouldChange(_))
        ));
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .contains("10.0.0.1 app.local")
        );
        assert!(matches!(
            apply_file_line(&spec, line, false),
            Ok(Applied::Changed(_))
        ));
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "127.0.0.1 localhost\n10.0.0.9 app.local\n"
        );
        assert_eq!(apply_file_line(&spec, line, false), Ok(Applied::InPolicy));

        let absent = pb::FileLineSpec {
            present: false,
            ..spec
        };
        assert!(matches!(
            apply_file_line(&absent, line, false),
            Ok(Applied::Changed(_))
        ));
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "127.0.0.1 localhost\n"
        );
        assert_eq!(apply_file_line(&absent, line, false), Ok(Applied::InPolicy));
    }

    #[test]
    fn a_missing_file_fails() {
        let spec = pb::FileLineSpec {
            path: "/nonexistent/vigo/file".into(),
            present: true,
            ..Default::default()
        };
        assert!(apply_file_line(&spec, "x", false).is_err());
    }
}
