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
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    let err = |e: std::io::Error| Error::File {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        let mut f = opts.open(&tmp).map_err(err)?;
        f.write_all(data).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
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
