//! What a local user of a managed machine can try against the agent, which runs as root:
//! links planted where it writes, files prepared under the names it uses, directories
//! the user can write, FIFOs that would block a read. Each try leaves root's files as
//! they were. The tries that need a second user (a directory owned by `nobody`) need
//! root, as the agent has; run as another user they say so and check the rest.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use vigo_proto::v1 as pb;

use super::{Applied, apply_directory, apply_file, apply_file_line, apply_symlink};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn file(path: &Path) -> pb::FileSpec {
    pb::FileSpec {
        path: s(path),
        ..Default::default()
    }
}

fn line(path: &Path, text: &str) -> pb::FileLineSpec {
    pb::FileLineSpec {
        path: s(path),
        line: text.into(),
        present: true,
        ..Default::default()
    }
}

/// A directory owned by `nobody`, as a user's home directory is.
fn user_dir(parent: &Path, name: &str) -> std::path::PathBuf {
    let d = parent.join(name);
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn needs_root(what: &str) -> bool {
    if !is_root() {
        eprintln!("not root: {what} not checked (it needs a second user's directory)");
    }
    is_root()
}

#[test]
fn a_link_at_the_old_temporary_name_is_never_written_through() {
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim");
    std::fs::write(&victim, "orig").unwrap();
    let target = d.path().join("f");
    std::fs::write(&target, "old").unwrap();
    symlink(&victim, d.path().join(".f.vigo-tmp")).unwrap();
    let mut spec = file(&target);
    spec.mode = 0o600;
    assert!(matches!(
        apply_file(&spec, "new", false),
        Ok(Applied::Changed(_))
    ));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "orig");
    let meta = std::fs::symlink_metadata(&target).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
}

#[test]
fn a_file_prepared_under_a_temporary_name_never_becomes_the_managed_file() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("f");
    std::fs::write(&target, "old").unwrap();
    let planted = d.path().join(".f.vigo-tmp");
    std::fs::write(&planted, "planted").unwrap();
    let planted_inode = std::fs::metadata(&planted).unwrap().ino();
    apply_file(&file(&target), "new", false).unwrap();
    assert_ne!(std::fs::metadata(&target).unwrap().ino(), planted_inode);
    assert_eq!(std::fs::read_to_string(&planted).unwrap(), "planted");
    // Nothing of ours is left behind.
    let names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_link_at_the_managed_path_is_refused_by_every_executor() {
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim");
    std::fs::write(&victim, "orig\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = d.path().join("link");
    symlink(&victim, &link).unwrap();

    let mut spec = file(&link);
    spec.mode = 0o644;
    let err = apply_file(&spec, "orig\n", false).unwrap_err();
    assert!(err.contains("symbolic link"), "{err}");
    let err = apply_file(&spec, "other content\n", false).unwrap_err();
    assert!(err.contains("symbolic link"), "{err}");
    let err = apply_file_line(&line(&link, "added"), "added", false).unwrap_err();
    assert!(err.contains("symbolic link"), "{err}");
    let dir = pb::DirectorySpec {
        path: s(&link),
        mode: 0o777,
        ..Default::default()
    };
    assert!(apply_directory(&dir, false).is_err());

    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "orig\n");
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "no chmod through the link");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_fifo_at_the_managed_path_is_refused_without_blocking() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    // Same size as the FIFO (0): the content would be read.
    assert!(apply_file(&file(&fifo), "", false).is_err());
    assert!(apply_file(&file(&fifo), "data", false).is_err());
    let err = apply_file_line(&line(&fifo, "x"), "x", false).unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn links_on_the_way_are_followed_where_only_root_could_have_made_them() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("real")).unwrap();
    symlink("real", d.path().join("alias")).unwrap();
    let through = d.path().join("alias/f");
    assert!(matches!(
        apply_file(&file(&through), "x", false),
        Ok(Applied::Changed(_))
    ));
    assert_eq!(
        std::fs::read_to_string(d.path().join("real/f")).unwrap(),
        "x"
    );
}

#[test]
fn a_directory_another_user_writes_is_refused_unless_they_own_the_file() {
    if !needs_root("the refusal of a user-writable directory") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let home = user_dir(d.path(), "alice");
    let target = home.join("authorized_keys");

    let err = apply_file(&file(&target), "root's content", false).unwrap_err();
    assert!(err.contains("writable by user 65534"), "{err}");
    assert!(!target.exists(), "nothing written");
    let err = apply_directory(
        &pb::DirectorySpec {
            path: s(&home.join("sub")),
            ..Default::default()
        },
        false,
    )
    .unwrap_err();
    assert!(err.contains("writable by user 65534"), "{err}");
    let err = apply_symlink(
        &pb::SymlinkSpec {
            path: s(&home.join("l")),
            target: "/etc/shadow".into(),
            ..Default::default()
        },
        false,
    )
    .unwrap_err();
    assert!(err.contains("writable by user 65534"), "{err}");

    // The user the file belongs to writes the directory: fine, and the file is theirs.
    let mut theirs = file(&target);
    theirs.owner = "nobody".into();
    theirs.mode = 0o600;
    apply_file(&theirs, "key\n", false).unwrap();
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (NOBODY, 0o600));

    // The resource may say the directory is fine.
    let mut allowed = file(&home.join("notes"));
    allowed.allow_unsafe_parent = true;
    apply_file(&allowed, "x", false).unwrap();
}

#[test]
fn a_link_planted_in_a_user_directory_is_not_followed() {
    if !needs_root("links planted in a user's directory") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let root_only = d.path().join("root-only");
    std::fs::create_dir(&root_only).unwrap();
    let home = user_dir(d.path(), "alice");
    // Policy manages ~alice/.ssh/authorized_keys for alice; alice makes .ssh a link to
    // a directory of root's.
    symlink(&root_only, home.join(".ssh")).unwrap();
    let mut spec = file(&home.join(".ssh/authorized_keys"));
    spec.owner = "nobody".into();
    let err = apply_file(&spec, "alice's key\n", false).unwrap_err();
    assert!(
        err.contains("symbolic link in a directory writable by user 65534"),
        "{err}"
    );
    assert!(!root_only.join("authorized_keys").exists());
}

#[test]
fn changed_content_keeps_owner_group_and_mode() {
    if !needs_root("ownership kept across a rewrite") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("postgresql.conf");
    std::fs::write(&conf, "a = 1\n").unwrap();
    std::os::unix::fs::chown(&conf, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o640)).unwrap();
    let kept = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    };

    apply_file_line(&line(&conf, "b = 2"), "b = 2", false).unwrap();
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "a = 1\nb = 2\n");
    assert_eq!(kept(&conf), (NOBODY, NOBODY, 0o640));

    assert!(matches!(
        apply_file(&file(&conf), "c = 3\n", false),
        Ok(Applied::Changed(_))
    ));
    assert_eq!(kept(&conf), (NOBODY, NOBODY, 0o640));
}
