//! `ensure: absent` for files, directories and links, through [`Target`]: the parent is
//! found and checked as for every other change, the path itself is never followed, and a
//! recursive removal walks the tree by descriptors (`openat` with `O_NOFOLLOW`), so a
//! link inside the tree is removed, never followed out of it.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{UnlinkatFlags, fsync, unlinkat};

use super::fsops::{Target, is_kind};
use super::{Applied, Outcome, act};

/// Deeper trees than this are not removed (each level holds a descriptor).
const MAX_DEPTH: usize = 128;

/// What kind of thing an absent resource removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removes {
    File,
    Link,
    /// A directory; with everything in it when `recursive`.
    Directory {
        recursive: bool,
    },
}

impl Removes {
    fn kind(self) -> (SFlag, &'static str) {
        match self {
            Removes::File => (SFlag::S_IFREG, "a regular file"),
            Removes::Link => (SFlag::S_IFLNK, "a symbolic link"),
            Removes::Directory { .. } => (SFlag::S_IFDIR, "a directory"),
        }
    }
}

/// Removes what is at `path` if it is of the kind the resource names; anything else
/// there is left alone and named.
pub fn apply_absent(
    path: &str,
    what: Removes,
    allow_unsafe_parent: bool,
    dry_run: bool,
) -> Outcome {
    if let Removes::Directory { recursive: true } = what {
        vigo_common::policy::checks::removable_tree(path)?;
    }
    let target = Target::open(path)?;
    let Some(st) = target.stat()? else {
        return Ok(Applied::InPolicy);
    };
    target.check_parent(Some(st.st_uid), allow_unsafe_parent)?;
    let (kind, name) = what.kind();
    if !is_kind(&st, kind) {
        return Err(format!("{path} is not {name}; left as it is"));
    }
    let (dir, last, _) = target.parts();
    match what {
        Removes::File | Removes::Link => act(dry_run, "removed".into(), || {
            unlinkat(dir, last, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| format!("unlink {path}: {e}"))?;
            fsync(dir).map_err(|e| format!("fsync the parent of {path}: {e}"))
        }),
        Removes::Directory { recursive } => {
            let fd = open_dir_at(dir, last).map_err(|e| format!("open {path}: {e}"))?;
            let entries = count_entries(&fd).map_err(|e| format!("read {path}: {e}"))?;
            if entries > 0 && !recursive {
                return Err(format!(
                    "{path} is not empty ({entries} entries); `recursive: true` removes its content"
                ));
            }
            let what = if entries > 0 {
                "removed with everything in it"
            } else {
                "removed"
            };
            act(dry_run, what.into(), || {
                empty_tree(fd, 0).map_err(|e| format!("remove {path}: {e}"))?;
                unlinkat(dir, last, UnlinkatFlags::RemoveDir)
                    .map_err(|e| format!("rmdir {path}: {e}"))?;
                fsync(dir).map_err(|e| format!("fsync the parent of {path}: {e}"))
            })
        }
    }
}

fn open_dir_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn count_entries(fd: &OwnedFd) -> Result<usize, Errno> {
    let dup = nix::unistd::dup(fd)?;
    let mut d = Dir::from_fd(dup)?;
    let mut n = 0;
    for entry in d.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            n += 1;
        }
    }
    Ok(n)
}

/// Removes everything inside the directory `fd`, depth first, never following a link.
fn empty_tree(fd: OwnedFd, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("deeper than {MAX_DEPTH} levels; not removed"));
    }
    let raw = fd.as_raw_fd();
    let dup = nix::unistd::dup(&fd).map_err(|e| e.to_string())?;
    let mut d = Dir::from_fd(dup).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_owned();
        if name.as_bytes() == b"." || name.as_bytes() == b".." {
            continue;
        }
        names.push((name, entry.file_type()));
    }
    drop(d);
    debug_assert_eq!(raw, fd.as_raw_fd());
    for (name, kind) in names {
        let is_dir = match kind {
            Some(Type::Directory) => true,
            Some(_) => false,
            None => nix::sys::stat::fstatat(
                &fd,
                name.as_c_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map(|st| is_kind(&st, SFlag::S_IFDIR))
            .map_err(|e| e.to_string())?,
        };
        let shown = name.to_string_lossy().into_owned();
        if is_dir {
            let child = openat(
                &fd,
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| format!("{shown}: {e}"))?;
            empty_tree(child, depth + 1).map_err(|e| format!("{shown}/{e}"))?;
            unlinkat(&fd, name.as_c_str(), UnlinkatFlags::RemoveDir)
                .map_err(|e| format!("{shown}: {e}"))?;
        } else {
            unlinkat(&fd, name.as_c_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| format!("{shown}: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_links_and_trees_go_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_string_lossy().into_owned();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "precious").unwrap();

        let file = format!("{base}/f");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(
            apply_absent(&file, Removes::File, false, true),
            Ok(Applied::WouldChange(_))
        ));
        assert!(
            std::path::Path::new(&file).exists(),
            "a dry run removes nothing"
        );
        assert!(matches!(
            apply_absent(&file, Removes::File, false, false),
            Ok(Applied::Changed(_))
        ));
        assert_eq!(
            apply_absent(&file, Removes::File, false, false),
            Ok(Applied::InPolicy)
        );

        // A link named as a file is not removed, nor followed.
        let link = format!("{base}/l");
        std::os::unix::fs::symlink(outside.path().join("keep"), &link).unwrap();
        let err = apply_absent(&link, Removes::File, false, false).unwrap_err();
        assert!(err.contains("is not a regular file"), "{err}");
        assert!(matches!(
            apply_absent(&link, Removes::Link, false, false),
            Ok(Applied::Changed(_))
        ));

        // A tree holding a link out of it: the link goes, its target stays.
        let tree = format!("{base}/tree");
        std::fs::create_dir_all(format!("{tree}/a/b")).unwrap();
        std::fs::write(format!("{tree}/a/b/c"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), format!("{tree}/a/out")).unwrap();
        let err =
            apply_absent(&tree, Removes::Directory { recursive: false }, false, false).unwrap_err();
        assert!(err.contains("not empty"), "{err}");
        assert!(matches!(
            apply_absent(&tree, Removes::Directory { recursive: true }, false, false),
            Ok(Applied::Changed(m)) if m.contains("everything")
        ));
        assert!(!std::path::Path::new(&tree).exists());
        assert_eq!(
            std::fs::read_to_string(outside.path().join("keep")).unwrap(),
            "precious"
        );

        // A directory named as a file is left alone.
        std::fs::create_dir(format!("{base}/d")).unwrap();
        assert!(apply_absent(&format!("{base}/d"), Removes::File, false, false).is_err());
        assert!(apply_absent("/etc", Removes::Directory { recursive: true }, false, true).is_err());
    }
}
