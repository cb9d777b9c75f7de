//! `file`, `directory` and `symlink` resources.

use std::io::ErrorKind;

use vigo_proto::v1 as pb;

use super::fsops::{ensure_mode, ensure_owner, write_atomic};
use super::{Applied, Outcome, act, combine, io_err};

/// A file with exactly `content` (already rendered), then mode and ownership.
pub fn apply_file(spec: &pb::FileSpec, content: &str, dry_run: bool) -> Outcome {
    let path = spec.path.as_str();
    let current = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Err(format!("{path} is a directory")),
        Ok(_) => Some(std::fs::read(path).map_err(io_err("read", path))?),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(format!("stat {path}: {e}")),
    };
    let content_step = match &current {
        Some(bytes) if bytes == content.as_bytes() => Ok(Applied::InPolicy),
        Some(_) => act(dry_run, "content replaced".into(), || {
            write_atomic(path, content.as_bytes(), spec.mode)
        }),
        None => act(dry_run, "created".into(), || {
            write_atomic(path, content.as_bytes(), spec.mode)
        }),
    };
    if dry_run && current.is_none() {
        // Mode and owner of a file that does not exist yet cannot be inspected.
        return content_step;
    }
    combine(vec![
        content_step,
        ensure_mode(path, spec.mode, dry_run),
        ensure_owner(path, &spec.owner, &spec.group, dry_run),
    ])
}

/// A directory (its parent must exist), then mode and ownership.
pub fn apply_directory(spec: &pb::DirectorySpec, dry_run: bool) -> Outcome {
    let path = spec.path.as_str();
    let created = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(Applied::InPolicy),
        Ok(_) => return Err(format!("{path} exists and is not a directory")),
        Err(e) if e.kind() == ErrorKind::NotFound => act(dry_run, "created".into(), || {
            std::fs::create_dir(path).map_err(io_err("mkdir", path))
        }),
        Err(e) => return Err(format!("stat {path}: {e}")),
    };
    if dry_run && matches!(created, Ok(Applied::WouldChange(_))) {
        return created;
    }
    combine(vec![
        created,
        ensure_mode(path, spec.mode, dry_run),
        ensure_owner(path, &spec.owner, &spec.group, dry_run),
    ])
}

/// A symbolic link at `path` pointing to `target`. A link pointing elsewhere is
/// replaced; a file or directory in the way is not (it may hold data).
pub fn apply_symlink(spec: &pb::SymlinkSpec, dry_run: bool) -> Outcome {
    let path = spec.path.as_str();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let current = std::fs::read_link(path).map_err(io_err("readlink", path))?;
            if current.as_os_str() == spec.target.as_str() {
                return Ok(Applied::InPolicy);
            }
            act(
                dry_run,
                format!("retargeted from {}", current.display()),
                || {
                    let tmp = format!("{path}.vigo-tmp");
                    let _ = std::fs::remove_file(&tmp);
                    std::os::unix::fs::symlink(&spec.target, &tmp)
                        .map_err(io_err("symlink", &tmp))?;
                    std::fs::rename(&tmp, path).map_err(io_err("rename", path))
                },
            )
        }
        Ok(_) => Err(format!("{path} exists and is not a symbolic link")),
        Err(e) if e.kind() == ErrorKind::NotFound => act(dry_run, "created".into(), || {
            std::os::unix::fs::symlink(&spec.target, path).map_err(io_err("symlink", path))
        }),
        Err(e) => Err(format!("stat {path}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, mode: u32) -> pb::FileSpec {
        pb::FileSpec {
            path: path.into(),
            mode,
            ..Default::default()
        }
    }

    #[test]
    fn file_converges_and_then_stays() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.conf").to_string_lossy().into_owned();
        let spec = file(&p, 0o640);
        assert!(matches!(
            apply_file(&spec, "x=1\n", true),
            Ok(Applied::WouldChange(_))
        ));
        assert!(!std::path::Path::new(&p).exists(), "dry run wrote nothing");
        assert!(matches!(
            apply_file(&spec, "x=1\n", false),
            Ok(Applied::Changed(_))
        ));
        assert_eq!(apply_file(&spec, "x=1\n", false), Ok(Applied::InPolicy));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        std::fs::write(&p, "drifted").unwrap();
        assert!(matches!(
            apply_file(&spec, "x=1\n", true),
            Ok(Applied::WouldChange(_))
        ));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "drifted");
        assert!(matches!(
            apply_file(&spec, "x=1\n", false),
            Ok(Applied::Changed(_))
        ));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "x=1\n");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            apply_file(&spec, "x=1\n", false),
            Ok(Applied::Changed("mode 0777 -> 0640".into()))
        );
    }

    #[test]
    fn file_in_a_missing_directory_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/f").to_string_lossy().into_owned();
        let err = apply_file(&file(&p, 0), "x", false).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn directory_converges_and_dry_run_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d").to_string_lossy().into_owned();
        let spec = pb::DirectorySpec {
            path: p.clone(),
            mode: 0o750,
            ..Default::default()
        };
        assert!(matches!(
            apply_directory(&spec, true),
            Ok(Applied::WouldChange(_))
        ));
        assert!(!std::path::Path::new(&p).exists());
        assert!(matches!(
            apply_directory(&spec, false),
            Ok(Applied::Changed(_))
        ));
        assert_eq!(apply_directory(&spec, false), Ok(Applied::InPolicy));
        std::fs::remove_dir(&p).unwrap();
        std::fs::write(&p, "").unwrap();
        assert!(
            apply_directory(&spec, false).is_err(),
            "a file in the way is refused"
        );
    }

    #[test]
    fn symlink_converges_and_never_clobbers_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("link").to_string_lossy().into_owned();
        let spec = pb::SymlinkSpec {
            path: p.clone(),
            target: "/etc/hostname".into(),
        };
        assert!(matches!(
            apply_symlink(&spec, true),
            Ok(Applied::WouldChange(_))
        ));
        assert!(std::fs::symlink_metadata(&p).is_err());
        assert!(matches!(
            apply_symlink(&spec, false),
            Ok(Applied::Changed(_))
        ));
        assert_eq!(apply_symlink(&spec, false), Ok(Applied::InPolicy));
        let other = pb::SymlinkSpec {
            target: "/etc/hosts".into(),
            ..spec.clone()
        };
        assert!(matches!(
            apply_symlink(&other, false),
            Ok(Applied::Changed(_))
        ));
        assert_eq!(std::fs::read_link(&p).unwrap().to_str(), Some("/etc/hosts"));
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, "data").unwrap();
        assert!(apply_symlink(&spec, false).is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "data");
    }
}
