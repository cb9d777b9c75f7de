//! File-system steps of the executors, written for a process that runs as root on a
//! machine where other users own some directories.
//!
//! Everything is done relative to a descriptor of the target's parent directory, found
//! by [`Target::open`] one component at a time: a symbolic link on the way is followed
//! only where it sits in a directory no other user can write (so `/var/run` works, a
//! link planted in a home directory does not), and the final component is never
//! followed. A parent directory that a user other than root (or this agent) can write is
//! refused unless that user is the one the file belongs to, or the resource allows it
//! with `allow_unsafe_parent`.
//!
//! Writes go to a new file with a random name created `O_EXCL|O_NOFOLLOW` in the
//! parent; owner and mode are set on its descriptor before the content is written, then
//! it is fsynced, renamed over the target and the directory fsynced. A file is read only
//! if it is a regular file, opened without following links and without blocking.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, symlinkat, unlinkat};

use super::{Applied, Failure, Outcome, act};

/// Symbolic links followed while finding one parent directory, as the kernel allows.
const MAX_LINKS: usize = 40;
/// A managed file larger than this is not read into memory (`file_line`).
pub const MAX_READ: u64 = 64 << 20;

/// Who, besides root and this agent, can write a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    User(u32),
    Group(u32),
    Everyone,
}

impl std::fmt::Display for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Writer::User(uid) => write!(f, "user {uid}"),
            Writer::Group(gid) => write!(f, "group {gid}"),
            Writer::Everyone => write!(f, "every user"),
        }
    }
}

fn other_writer(st: &FileStat) -> Option<Writer> {
    let mode = st.st_mode;
    if mode & 0o002 != 0 {
        return Some(Writer::Everyone);
    }
    if mode & 0o020 != 0 && st.st_gid != 0 && st.st_gid != Gid::effective().as_raw() {
        return Some(Writer::Group(st.st_gid));
    }
    if mode & 0o200 != 0 && st.st_uid != 0 && st.st_uid != Uid::effective().as_raw() {
        return Some(Writer::User(st.st_uid));
    }
    None
}

pub(super) fn is_kind(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

/// Owner and group to give a file, as ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Owner {
    /// Resolves the names of a resource (empty = leave as is).
    pub fn named(owner: &str, group: &str) -> Result<Owner, Failure> {
        let uid = if owner.is_empty() {
            None
        } else {
            let user = nix::unistd::User::from_name(owner)
                .map_err(|e| format!("user {owner}: {e}"))?
                .ok_or_else(|| format!("no user named {owner}"))?;
            Some(user.uid.as_raw())
        };
        let gid = if group.is_empty() {
            None
        } else {
            let g = nix::unistd::Group::from_name(group)
                .map_err(|e| format!("group {group}: {e}"))?
                .ok_or_else(|| format!("no group named {group}"))?;
            Some(g.gid.as_raw())
        };
        Ok(Owner { uid, gid })
    }

    /// This owner, with what it leaves unset taken from `current`.
    fn or(self, current: Option<&FileStat>) -> Owner {
        Owner {
            uid: self.uid.or(current.map(|s| s.st_uid)),
            gid: self.gid.or(current.map(|s| s.st_gid)),
        }
    }
}

/// A path to manage: its parent directory, open, and its last component.
pub struct Target {
    dir: OwnedFd,
    name: OsString,
    path: String,
    /// Who else can write the parent directory.
    writer: Option<Writer>,
}

impl Target {
    /// Finds and opens the parent of the absolute `path`.
    pub fn open(path: &str) -> Result<Target, Failure> {
        let bad = |why: &str| format!("{path}: {why}");
        if !path.starts_with('/') {
            return Err(bad("not an absolute path"));
        }
        let p = std::path::Path::new(path);
        let name = p
            .file_name()
            .ok_or_else(|| bad("names no file"))?
            .to_os_string();
        if name == ".." {
            return Err(bad("may not end in .."));
        }
        let parent = p.parent().unwrap_or(std::path::Path::new("/"));
        let (dir, writer) = walk(parent.as_os_str()).map_err(|e| bad(&e))?;
        Ok(Target {
            dir,
            name,
            path: path.to_string(),
            writer,
        })
    }

    /// What is at the path now, not following a link; `None` when nothing is.
    pub fn stat(&self) -> Result<Option<FileStat>, Failure> {
        match fstatat(
            &self.dir,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(format!("stat {}: {e}", self.path)),
        }
    }

    /// Refuses a parent directory that a user other than `owner` (root, this agent)
    /// can write, unless `allowed`: such a user could swap what is written or read.
    pub fn check_parent(&self, owner: Option<u32>, allowed: bool) -> Result<(), Failure> {
        match self.writer {
            None => Ok(()),
            Some(Writer::User(uid)) if owner == Some(uid) => Ok(()),
            Some(_) if allowed => Ok(()),
            Some(w) => Err(format!(
                "{}: its directory is writable by {w}, who does not own the file; \
                 refusing to manage it there (set allow_unsafe_parent to do it anyway)",
                self.path
            )),
        }
    }

    /// Opens what is at the path without following a link or blocking (a FIFO), and
    /// checks it is of `kind`.
    fn open_existing(&self, kind: SFlag) -> Result<(OwnedFd, FileStat), Failure> {
        let mut flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        if kind == SFlag::S_IFDIR {
            flags |= OFlag::O_DIRECTORY;
        }
        let fd = openat(&self.dir, self.name.as_os_str(), flags, Mode::empty()).map_err(
            |e| match e {
                Errno::ELOOP => format!("{} is a symbolic link; not following it", self.path),
                e => format!("open {}: {e}", self.path),
            },
        )?;
        let st = fstat(&fd).map_err(|e| format!("stat {}: {e}", self.path))?;
        if !is_kind(&st, kind) {
            let what = if kind == SFlag::S_IFDIR {
                "a directory"
            } else {
                "a regular file"
            };
            return Err(format!("{} is not {what}", self.path));
        }
        Ok((fd, st))
    }

    /// The regular file at the path, opened for reading through the checked walk (a
    /// link is not followed, a FIFO not waited on).
    pub fn open_file(&self) -> Result<std::fs::File, Failure> {
        self.open_existing(SFlag::S_IFREG)
            .map(|(fd, _)| std::fs::File::from(fd))
    }

    /// The content of the regular file at the path (`None` if there is none); refused
    /// for links, devices, FIFOs and files above `limit` bytes.
    pub fn read(&self, limit: u64) -> Result<Option<(Vec<u8>, FileStat)>, Failure> {
        if self.stat()?.is_none() {
            return Ok(None);
        }
        let (fd, st) = self.open_existing(SFlag::S_IFREG)?;
        if st.st_size as u64 > limit {
            return Err(format!(
                "{} is {} bytes; files above {limit} are not read",
                self.path, st.st_size
            ));
        }
        let mut content = Vec::with_capacity(st.st_size as usize);
        std::fs::File::from(fd)
            .take(limit + 1)
            .read_to_end(&mut content)
            .map_err(|e| format!("read {}: {e}", self.path))?;
        Ok(Some((content, st)))
    }

    /// Replaces the file with `content`. Owner and group come from `owner`, else from
    /// the file being replaced; the mode is `mode`, else the old file's, else 0644.
    pub fn replace(&self, content: &[u8], owner: Owner, mode: u32) -> Result<(), Failure> {
        let current = self.stat()?;
        match &current {
            Some(st) if is_kind(st, SFlag::S_IFLNK) => {
                return Err(format!(
                    "{} is a symbolic link; not following or replacing it",
                    self.path
                ));
            }
            Some(st) if !is_kind(st, SFlag::S_IFREG) => {
                return Err(format!("{} exists and is not a regular file", self.path));
            }
            _ => {}
        }
        let owner = owner.or(current.as_ref());
        let mode = match (mode, &current) {
            (0, Some(st)) => st.st_mode & 0o7777,
            (0, None) => 0o644,
            (m, _) => m,
        };
        let tmp = self.temp_name();
        let fd = openat(
            &self.dir,
            tmp.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| format!("create a temporary file beside {}: {e}", self.path))?;
        let written = (|| {
            // Owner first: chown clears set-id bits the mode may want.
            set_owner(&fd, owner)?;
            fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(std::io::Error::from)?;
            let mut file = std::fs::File::from(fd);
            file.write_all(content)?;
            file.sync_all()?;
            renameat(&self.dir, tmp.as_os_str(), &self.dir, self.name.as_os_str())?;
            fsync(&self.dir).map_err(std::io::Error::from)
        })();
        written.map_err(|e| {
            let _ = unlinkat(&self.dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            format!("write {}: {e}", self.path)
        })
    }

    /// Brings the permission bits of the file or directory at the path to `mode`
    /// (0 = leave them), through a descriptor that does not follow a link.
    pub fn ensure_mode(&self, kind: SFlag, mode: u32, dry_run: bool) -> Outcome {
        if mode == 0 {
            return Ok(Applied::InPolicy);
        }
        let (fd, st) = self.open_existing(kind)?;
        let current = st.st_mode & 0o7777;
        if current == mode {
            return Ok(Applied::InPolicy);
        }
        act(dry_run, format!("mode {current:04o} -> {mode:04o}"), || {
            fchmod(&fd, Mode::from_bits_truncate(mode))
                .map_err(|e| format!("chmod {}: {e}", self.path))
        })
    }

    /// Brings owner and group of the file or directory at the path to `owner` (unset
    /// parts are left as they are).
    pub fn ensure_owner(&self, kind: SFlag, owner: Owner, dry_run: bool) -> Outcome {
        if owner == Owner::default() {
            return Ok(Applied::InPolicy);
        }
        let (fd, st) = self.open_existing(kind)?;
        let uid_ok = owner.uid.is_none_or(|u| u == st.st_uid);
        let gid_ok = owner.gid.is_none_or(|g| g == st.st_gid);
        if uid_ok && gid_ok {
            return Ok(Applied::InPolicy);
        }
        let want = |id: Option<u32>, now: u32| id.unwrap_or(now);
        act(
            dry_run,
            format!(
                "owner {}:{} -> {}:{}",
                st.st_uid,
                st.st_gid,
                want(owner.uid, st.st_uid),
                want(owner.gid, st.st_gid)
            ),
            || set_owner(&fd, owner).map_err(|e| format!("chown {}: {e}", self.path)),
        )
    }

    /// Creates the directory at the path, private until its owner and mode are set on
    /// its own descriptor.
    pub fn create_dir(&self, owner: Owner, mode: u32) -> Result<(), Failure> {
        let err = |e: Errno| format!("mkdir {}: {e}", self.path);
        mkdirat(
            &self.dir,
            self.name.as_os_str(),
            Mode::from_bits_truncate(0o700),
        )
        .map_err(err)?;
        let (fd, _) = self.open_existing(SFlag::S_IFDIR)?;
        set_owner(&fd, owner).map_err(|e| format!("chown {}: {e}", self.path))?;
        let mode = if mode == 0 { 0o755 } else { mode };
        fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(err)?;
        fsync(&self.dir).map_err(err)
    }

    /// Where the symbolic link at the path points, if it is one.
    pub fn read_link(&self) -> Result<OsString, Failure> {
        readlinkat(&self.dir, self.name.as_os_str())
            .map_err(|e| format!("readlink {}: {e}", self.path))
    }

    /// Makes the path a symbolic link to `target`, replacing a link that is there.
    pub fn set_link(&self, target: &str) -> Result<(), Failure> {
        let tmp = self.temp_name();
        let err = |e: Errno| format!("symlink {}: {e}", self.path);
        symlinkat(target, &self.dir, tmp.as_os_str()).map_err(err)?;
        renameat(&self.dir, tmp.as_os_str(), &self.dir, self.name.as_os_str()).map_err(|e| {
            let _ = unlinkat(&self.dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            err(e)
        })?;
        fsync(&self.dir).map_err(err)
    }

    /// The open parent directory, the last component and the whole path: for the
    /// removal steps (`remove.rs`).
    pub(super) fn parts(&self) -> (&OwnedFd, &OsStr, &str) {
        (&self.dir, self.name.as_os_str(), &self.path)
    }

    /// A name no one can have prepared: the target's, hidden, with 64 random bits.
    fn temp_name(&self) -> OsString {
        let mut name = OsString::from(".");
        name.push(&self.name);
        name.push(format!(".vigo-{:016x}", rand::random::<u64>()));
        name
    }
}

fn set_owner(fd: &impl AsFd, owner: Owner) -> std::io::Result<()> {
    if owner == Owner::default() {
        return Ok(());
    }
    fchown(
        fd,
        owner.uid.map(Uid::from_raw),
        owner.gid.map(Gid::from_raw),
    )
    .map_err(std::io::Error::from)
}

/// Opens the directory `path` (absolute) one component at a time, following a link only
/// where no other user could have planted it. Returns it with who else can write it.
fn walk(path: &OsStr) -> Result<(OwnedFd, Option<Writer>), String> {
    let open_dir = |at: &OwnedFd, name: &OsStr| {
        openat(
            at,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    };
    let root = || {
        nix::fcntl::open(
            "/",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open /: {e}"))
    };
    let mut dir = root()?;
    let mut todo: Vec<OsString> = components(path.as_bytes());
    todo.reverse();
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == "." {
            continue;
        }
        let here = fstat(&dir).map_err(|e| e.to_string())?;
        let st = match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => {
                return Err(format!(
                    "parent directory {} does not exist",
                    path.to_string_lossy()
                ));
            }
            Err(e) => return Err(format!("{}: {e}", name.to_string_lossy())),
        };
        if is_kind(&st, SFlag::S_IFLNK) {
            if let Some(w) = other_writer(&here) {
                return Err(format!(
                    "{} is a symbolic link in a directory writable by {w}; not following it",
                    name.to_string_lossy()
                ));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err("too many symbolic links".into());
            }
            let target = readlinkat(&dir, name.as_os_str()).map_err(|e| e.to_string())?;
            let bytes = target.as_bytes();
            if bytes.starts_with(b"/") {
                dir = root()?;
            }
            todo.extend(components(bytes).into_iter().rev());
            continue;
        }
        if !is_kind(&st, SFlag::S_IFDIR) {
            return Err(format!("{} is not a directory", name.to_string_lossy()));
        }
        // `..` opens the real parent of the directory reached so far, as the kernel does.
        dir = open_dir(&dir, name.as_os_str())
            .map_err(|e| format!("{}: {e}", name.to_string_lossy()))?;
    }
    let st = fstat(&dir).map_err(|e| e.to_string())?;
    Ok((dir, other_writer(&st)))
}

fn components(path: &[u8]) -> Vec<OsString> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| OsStr::from_bytes(c).to_os_string())
        .collect()
}
