//! A package file the policy names (`source:`), made safe to hand to the package
//! manager as root. The file is opened through the same checked walk as files the
//! policy manages (no link followed; refused when its directory is writable by anyone
//! but root), copied through that descriptor into a directory only this agent can
//! enter, under the name of its content's digest, and that copy is what `dpkg-deb`,
//! `rpm`, `apt-get` and `dnf` read. Whoever can write where the original lies can no
//! longer put another package there between the check and the install.

use std::io::{Read, Write};
use std::sync::OnceLock;

use super::Failure;
use super::fsops::Target;

/// The largest package file staged.
const MAX_PACKAGE: u64 = 4 << 30;

/// This agent's staging directory (0700, in the temporary directory; kept for the
/// agent's life, as a static is never dropped, and cleared with the temporary directory).
fn staging() -> Result<&'static std::path::Path, Failure> {
    static DIR: OnceLock<Result<tempfile::TempDir, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        tempfile::Builder::new()
            .prefix("vigo-pkg.")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| format!("a directory to stage package files: {e}"))
    })
    .as_ref()
    .map(|d| d.path())
    .map_err(Clone::clone)
}

/// The staged copy of the package file at `source`: its path.
pub fn stage(source: &str) -> Result<String, Failure> {
    let target = Target::open(source)?;
    target.check_parent(None, false)?;
    let mut file = target.open_file()?;
    let dir = staging()?;
    let extension = std::path::Path::new(source)
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| matches!(*e, "deb" | "rpm"))
        .ok_or_else(|| format!("{source}: a package file ends in .deb or .rpm"))?;
    let partial = dir.join(format!(".{:016x}.partial", rand::random::<u64>()));
    let err = |e: std::io::Error| format!("staging {source}: {e}");
    let mut copy = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(err)?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MAX_PACKAGE {
            let _ = std::fs::remove_file(&partial);
            return Err(format!("{source} is larger than {MAX_PACKAGE} bytes"));
        }
        digest.update(&buf[..n]);
        copy.write_all(&buf[..n]).map_err(err)?;
    }
    copy.sync_all().map_err(err)?;
    // Under its digest, with its own name (what apt's log shows an operator).
    let shown: String = std::path::Path::new(source)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("package")
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '+' | '~' | '-' => c,
            _ => '_',
        })
        .collect();
    let home = dir.join(&hex::encode(digest.finish())[..16]);
    match std::fs::create_dir(&home) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(err(e)),
        _ => {}
    }
    let staged = home.join(match shown.ends_with(&format!(".{extension}")) {
        true => shown,
        false => format!("{shown}.{extension}"),
    });
    std::fs::rename(&partial, &staged).map_err(err)?;
    Ok(staged.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_package_file_is_copied_where_only_the_agent_can_go() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("app_1.0_all.deb");
        std::fs::write(&source, b"not really a package").unwrap();
        let staged = stage(source.to_str().unwrap()).unwrap();
        assert_eq!(std::fs::read(&staged).unwrap(), b"not really a package");
        assert!(staged.ends_with(".deb"));
        let parent = std::path::Path::new(&staged)
            .parent()
            .unwrap()
            .parent()
            .unwrap();
        let mode = std::fs::metadata(parent).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // The same content stages to the same name.
        assert_eq!(stage(source.to_str().unwrap()).unwrap(), staged);
    }

    /// A directory anyone may write (no sticky bit): whoever can write there could
    /// swap the package between the check and the install. Refused, as is a link.
    #[test]
    fn a_package_file_where_others_write_or_behind_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("app.deb");
        std::fs::write(&source, b"x").unwrap();
        let link = dir.path().join("link.deb");
        std::os::unix::fs::symlink(&source, &link).unwrap();
        let err = stage(link.to_str().unwrap()).unwrap_err();
        assert!(err.contains("link"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = stage(source.to_str().unwrap()).unwrap_err();
        assert!(err.contains("writable"), "{err}");
        assert!(stage("/nonexistent/app.txt").is_err());
    }
}
