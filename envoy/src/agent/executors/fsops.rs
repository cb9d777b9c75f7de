//! File-system steps shared by the executors: mode, ownership, atomic writes.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::{Outcome, act, io_err};
use crate::agent::executors::Applied;

/// Brings the permission bits of `path` to `mode` (0 = leave them).
pub fn ensure_mode(path: &str, mode: u32, dry_run: bool) -> Outcome {
    if mode == 0 {
        return Ok(Applied::InPolicy);
    }
    let meta = std::fs::metadata(path).map_err(io_err("stat", path))?;
    let current = meta.permissions().mode() & 0o7777;
    if current == mode {
        return Ok(Applied::InPolicy);
    }
    act(dry_run, format!("mode {current:04o} -> {mode:04o}"), || {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", path))
    })
}

/// Brings the owner and group of `path` to the named ones (empty = leave it).
pub fn ensure_owner(path: &str, owner: &str, group: &str, dry_run: bool) -> Outcome {
    if owner.is_empty() && group.is_empty() {
        return Ok(Applied::InPolicy);
    }
    let uid = if owner.is_empty() {
        None
    } else {
        Some(
            nix::unistd::User::from_name(owner)
                .map_err(|e| format!("user {owner}: {e}"))?
                .ok_or_else(|| format!("no user named {owner}"))?
                .uid
                .as_raw(),
        )
    };
    let gid = if group.is_empty() {
        None
    } else {
        Some(
            nix::unistd::Group::from_name(group)
                .map_err(|e| format!("group {group}: {e}"))?
                .ok_or_else(|| format!("no group named {group}"))?
                .gid
                .as_raw(),
        )
    };
    let meta = std::fs::metadata(path).map_err(io_err("stat", path))?;
    let uid_ok = uid.is_none_or(|u| u == meta.uid());
    let gid_ok = gid.is_none_or(|g| g == meta.gid());
    if uid_ok && gid_ok {
        return Ok(Applied::InPolicy);
    }
    act(
        dry_run,
        format!("owner {}:{} -> {owner}:{group}", meta.uid(), meta.gid()),
        || std::os::unix::fs::chown(path, uid, gid).map_err(io_err("chown", path)),
    )
}

/// Replaces `path` with `content` through a temporary file and a rename, so a reader
/// never sees half a file. New files get `mode` (0644 when 0).
pub fn write_atomic(path: &str, content: &[u8], mode: u32) -> Result<(), String> {
    let target = Path::new(path);
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| format!("{path}: no parent directory"))?;
    if !parent.is_dir() {
        return Err(format!(
            "parent directory {} does not exist",
            parent.display()
        ));
    }
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.vigo-tmp"));
    let mode = if mode == 0 {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644)
    } else {
        mode
    };
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err("write", path))
}
