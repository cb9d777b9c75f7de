//! File helpers whose errors name the file, and writes that are atomic and private.

use std::io::Write;
use std::path::Path;

use crate::Error;

pub fn read_to_string(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

pub fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Writes `data` to `path` through a temporary file, fsync and rename, so a crash leaves
/// either the old file or the new one. `mode` applies on Unix (0o600 for secrets).
///
/// The temporary file has a random name and is created `O_EXCL|O_NOFOLLOW` with its
/// final mode already set (on the descriptor, whatever the umask), so in a directory
/// others can write nobody can have prepared it, read the content through it, or point
/// it elsewhere with a link.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    let err = |e: std::io::Error| Error::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    let tmp = dir.join(name);
    let written = write_new(&tmp, data, mode).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Creates `path` (which must not exist, nor be a link) with `mode`, writes and syncs.
fn write_new(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode & 0o777)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    f.write_all(data)?;
    f.sync_all()
}

/// Creates a directory (and parents) readable by its owner only.
pub fn create_private_dir(path: &Path) -> Result<(), Error> {
    let err = |e: std::io::Error| Error::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    std::fs::create_dir_all(path).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Another user's traps in a shared directory: a pre-created `FILE.tmp` readable by
    /// all and a link named like the old temporary file. Neither receives the secret,
    /// the file is created with its mode from the start, and no temporary is left.
    #[test]
    fn a_prepared_temp_file_or_link_receives_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("token");
        let trap = dir.path().join("token.tmp");
        std::fs::write(&trap, b"").unwrap();
        std::fs::set_permissions(&trap, std::fs::Permissions::from_mode(0o666)).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(".token.tmp")).unwrap();

        write_atomic(&target, b"s3cret", 0o600).unwrap();

        assert_eq!(std::fs::read(&target).unwrap(), b"s3cret");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&trap).unwrap(), b"", "the trap got nothing");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.len() == ".token.".len() + 16 + ".tmp".len())
            .filter(|n| n.ends_with(".tmp") && n.starts_with(".token."))
            .collect();
        assert!(left.is_empty(), "temporaries left: {left:?}");
    }
}
