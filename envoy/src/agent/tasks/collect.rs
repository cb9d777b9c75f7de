//! Live-query collectors: read-only questions an operator asks the fleet, each answered
//! as one row of fields. Never a shell: a collector runs a fixed program (`dpkg-query`,
//! `rpm`, `systemctl`) with the name as one argument after `--`, or reads a file the
//! way the executors do (no link followed, no FIFO opened, only regular files hashed).
//!
//! | collector | fields |
//! |---|---|
//! | `package:NAME` | `installed` (true/false), `version`, `manager` (dpkg or rpm) |
//! | `service:NAME` | `active` (systemd's ActiveState), `sub`, `enabled` (UnitFileState) |
//! | `file:PATH` | `exists`, `type`, `size`, `mode`, `uid`, `gid`, `owner`, `sha256` (regular files up to 64 MiB), `target` (links) |
//! | `trait:KEY` | `value`, freshly collected |

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use nix::sys::stat::{FileStat, SFlag};

use crate::agent::executors::exec::{Program, RunError, run_program};
use crate::agent::executors::fsops::{MAX_READ, Target};
use vigo_common::traits::TraitMap;

/// How long one collector's program may run.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(20);
/// Collectors one query may ask.
pub const MAX_COLLECTORS: usize = 64;
/// The longest package or service name taken.
const MAX_NAME: usize = 255;

/// One collector's answer: its fields, or why there are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub collector: String,
    pub fields: BTreeMap<String, String>,
    pub error: Option<String>,
}

impl Row {
    fn answer(collector: &str, result: Result<Fields, String>) -> Row {
        let (fields, error) = match result {
            Ok(fields) => (fields.0, None),
            Err(why) => (BTreeMap::new(), Some(why)),
        };
        Row {
            collector: collector.to_string(),
            fields,
            error,
        }
    }
}

/// Field names and values, built up in order.
#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Fields {
    fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.0.insert(key.to_string(), value.to_string());
        self
    }
}

/// Answers `collector` (`kind:argument`); `traits` are the envoy's, freshly collected.
pub fn collect(collector: &str, traits: &TraitMap) -> Row {
    let result = match collector.split_once(':') {
        Some(("package", name)) => checked_name(name).and_then(package),
        Some(("service", name)) => checked_name(name).and_then(service),
        Some(("file", path)) => file(path),
        Some(("trait", key)) => match traits.get(key) {
            Some(value) => Ok(Fields::default().with("value", value)),
            None => Err(format!("this envoy has no trait {key:?}")),
        },
        Some(("query", _)) => Err("named queries are not defined in this release".into()),
        _ => Err(
            "unknown collector: expected package:NAME, service:NAME, file:PATH or \
                  trait:KEY"
                .into(),
        ),
    };
    Row::answer(collector, result)
}

/// A package or unit name: letters, digits and `.+_:@-`, not starting with `-`.
fn checked_name(name: &str) -> Result<&str, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".+_:@-".contains(c);
    if name.is_empty()
        || name.len() > MAX_NAME
        || name.starts_with('-')
        || !name.chars().all(allowed)
    {
        return Err(format!(
            "{name:?} is not a package or service name (letters, digits and .+_:@-, at most {MAX_NAME})"
        ));
    }
    Ok(name)
}

/// Runs a fixed program with `args`; its exit code and standard output.
fn program(args: &[&str]) -> Result<(i32, String), String> {
    let argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let ran = run_program(Program::Argv(&argv), PROGRAM_TIMEOUT, &BTreeMap::new()).map_err(
        |e| match e {
            RunError::Start(why) => why,
            timed_out => timed_out.to_string(),
        },
    )?;
    Ok((ran.status.code().unwrap_or(-1), ran.stdout.text()))
}

/// Whether `program` is on the agent's PATH.
pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn package(name: &str) -> Result<Fields, String> {
    if on_path("dpkg-query") {
        let (code, out) = program(&[
            "dpkg-query",
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Version}",
            "--",
            name,
        ])?;
        let (status, version) = out.split_once('\t').unwrap_or(("", ""));
        let installed = code == 0 && status.starts_with("ii");
        let fields = Fields::default()
            .with("manager", "dpkg")
            .with("installed", installed);
        return Ok(if installed {
            fields.with("version", version.trim())
        } else {
            fields
        });
    }
    if on_path("rpm") {
        let (code, out) = program(&["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", "--", name])?;
        let fields = Fields::default()
            .with("manager", "rpm")
            .with("installed", code == 0);
        return Ok(if code == 0 {
            fields.with("version", out.trim())
        } else {
            fields
        });
    }
    Err("no supported package manager on this machine (dpkg, rpm)".into())
}

fn service(name: &str) -> Result<Fields, String> {
    if !Path::new("/run/systemd/system").is_dir() {
        return Err("systemd is not running on this machine".into());
    }
    let property = "--property=ActiveState,SubState,UnitFileState";
    let (code, out) = program(&["systemctl", "show", property, "--", name])?;
    if code != 0 {
        return Err(format!("systemctl show exited with {code}"));
    }
    let value = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
            .to_string()
    };
    Ok(Fields::default()
        .with("active", value("ActiveState"))
        .with("sub", value("SubState"))
        .with("enabled", value("UnitFileState")))
}

fn file(path: &str) -> Result<Fields, String> {
    let target = Target::open(path)?;
    let Some(st) = target.stat()? else {
        return Ok(Fields::default().with("exists", false));
    };
    let fields = Fields::default()
        .with("exists", true)
        .with("type", kind(&st))
        .with("size", st.st_size)
        .with("mode", format!("{:04o}", st.st_mode & 0o7777))
        .with("uid", st.st_uid)
        .with("gid", st.st_gid)
        .with("owner", owner_name(st.st_uid));
    Ok(match kind(&st) {
        "file" if st.st_size as u64 <= MAX_READ => match target.read(MAX_READ)? {
            Some((content, _)) => {
                fields.with("sha256", hex::encode(vigo_common::traits::sha256(&content)))
            }
            None => fields,
        },
        "symlink" => fields.with("target", target.read_link()?.to_string_lossy()),
        _ => fields,
    })
}

fn kind(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => "file",
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFLNK => "symlink",
        SFlag::S_IFIFO => "fifo",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFCHR | SFlag::S_IFBLK => "device",
        _ => "other",
    }
}

fn owner_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}
