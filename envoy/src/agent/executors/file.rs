//! `file`, `directory` and `symlink` resources, through [`Target`]: never following a
//! link at the path, refusing parent directories other users can write (unless they own
//! the file, or the resource allows it), owner and mode set before content lands.

use nix::sys::stat::SFlag;
use vigo_proto::v1 as pb;

use super::fsops::{Owner, Target};
use super::remove::{Removes, apply_absent};
use super::{Applied, Failure, Outcome, act, combine};

/// The target of a resource with an owner: its parent opened and checked against the
/// user the file belongs to (the one the resource names, else the current owner), the
/// resolved owner, and what is at the path now.
fn open_owned(
    path: &str,
    owner: &str,
    group: &str,
    allow_unsafe_parent: bool,
) -> Result<(Target, Owner, Option<nix::sys::stat::FileStat>), Failure> {
    let target = Target::open(path)?;
    let owner = Owner::named(owner, group)?;
    let current = target.stat()?;
    target.check_parent(
        owner.uid.or(current.as_ref().map(|st| st.st_uid)),
        allow_unsafe_parent,
    )?;
    Ok((target, owner, current))
}

/// A file with exactly `content` (already rendered), then mode and ownership. A file
/// that is replaced keeps its owner, group and mode unless the resource sets them.
pub fn apply_file(spec: &pb::FileSpec, content: &str, dry_run: bool) -> Outcome {
    if spec.absent {
        return apply_absent(&spec.path, Removes::File, spec.allow_unsafe_parent, dry_run);
    }
    let (target, owner, current) = open_owned(
        &spec.path,
        &spec.owner,
        &spec.group,
        spec.allow_unsafe_parent,
    )?;
    // Only a file of the same size can hold the same content: no need to read others.
    let same = match &current {
        None => false,
        Some(st) if st.st_size as usize != content.len() => {
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
                return Err(format!("{} is a directory", spec.path));
            }
            false
        }
        Some(_) => target
            .read(content.len() as u64)?
            .is_some_and(|(bytes, _)| bytes == content.as_bytes()),
    };
    let content_step = if same {
        Ok(Applied::InPolicy)
    } else {
        let what = if current.is_some() {
            "content replaced"
        } else {
            "created"
        };
        act(dry_run, what.into(), || {
            target.replace(content.as_bytes(), owner, spec.mode)
        })
    };
    if dry_run && current.is_none() {
        // Mode and owner of a file that does not exist yet cannot be inspected.
        return content_step;
    }
    if !same && !dry_run {
        // `replace` set owner and mode on the new file's own descriptor before it was
        // renamed into place: looking the path up again would act on whatever is there
        // now, which the parent's owner may have swapped in meanwhile.
        return content_step;
    }
    combine(vec![
        content_step,
        target.ensure_mode(SFlag::S_IFREG, spec.mode, dry_run),
        target.ensure_owner(SFlag::S_IFREG, owner, dry_run),
    ])
}

/// A directory (its parent must exist), then mode and ownership.
pub fn apply_directory(spec: &pb::DirectorySpec, dry_run: bool) -> Outcome {
    if spec.absent {
        let what = Removes::Directory {
            recursive: spec.recursive,
        };
        return apply_absent(&spec.path, what, spec.allow_unsafe_parent, dry_run);
    }
    let (target, owner, current) = open_owned(
        &spec.path,
        &spec.owner,
        &spec.group,
        spec.allow_unsafe_parent,
    )?;
    let created = match &current {
        Some(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
            Ok(Applied::InPolicy)
        }
        Some(_) => return Err(format!("{} exists and is not a directory", spec.path)),
        None => act(dry_run, "created".into(), || {
            target.create_dir(owner, spec.mode)
        }),
    };
    if dry_run && matches!(created, Ok(Applied::WouldChange(_))) {
        return created;
    }
    combine(vec![
        created,
        target.ensure_mode(SFlag::S_IFDIR, spec.mode, dry_run),
        target.ensure_owner(SFlag::S_IFDIR, owner, dry_run),
    ])
}

/// A symbolic link at `path` pointing to `target`. A link pointing elsewhere is
/// replaced; a file or directory in the way is not (it may hold data).
pub fn apply_symlink(spec: &pb::SymlinkSpec, dry_run: bool) -> Outcome {
    if spec.absent {
        return apply_absent(&spec.path, Removes::Link, spec.allow_unsafe_parent, dry_run);
    }
    let target = Target::open(&spec.path)?;
    target.check_parent(None, spec.allow_unsafe_parent)?;
    match target.stat()? {
        Some(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
            let current = target.read_link()?;
            if current.as_os_str() == spec.target.as_str() {
                return Ok(Applied::InPolicy);
            }
            act(
                dry_run,
                format!("retargeted from {}", current.to_string_lossy()),
                || target.set_link(&spec.target),
            )
        }
        Some(_) => Err(format!("{} exists and is not a symbolic link", spec.path)),
        None => act(dry_run, "created".into(), || target.set_link(&spec.target)),
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
            ..Default::default()
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
