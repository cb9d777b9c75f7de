//! Resource executors. Each checks the machine before acting, changes only what differs
//! from the resource's spec, and under `dry_run` changes nothing and says what it would.

mod account;
#[cfg(test)]
mod attacks;
mod cron;
pub(crate) mod exec;
mod file;
mod file_line;
pub(crate) mod fsops;
mod package;
mod remove;
mod service;
mod staged;

use std::collections::BTreeMap;
use std::time::Duration;

pub use account::{apply_group, apply_user};
pub use cron::apply_cron;
pub use exec::{DEFAULT_TIMEOUT, ExecPlan, apply_exec};
pub use file::{apply_directory, apply_file, apply_symlink};
pub use file_line::apply_file_line;
pub use package::apply_packages;
pub use remove::{Removes, apply_absent};
pub use service::apply_service;

/// What applying one resource did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Already as specified.
    InPolicy,
    /// Was changed to match; the message says what changed.
    Changed(String),
    /// Dry run: would have been changed, as the message says.
    WouldChange(String),
}

/// A resource that could not be brought into policy, and why.
pub type Failure = String;

pub type Outcome = Result<Applied, Failure>;

/// Changes something, unless this is a dry run.
pub(crate) fn act(
    dry_run: bool,
    what: String,
    change: impl FnOnce() -> Result<(), Failure>,
) -> Outcome {
    if dry_run {
        return Ok(Applied::WouldChange(what));
    }
    change()?;
    Ok(Applied::Changed(what))
}

/// Folds several checked aspects of one resource (content, mode, owner) into one outcome.
pub(crate) fn combine(parts: Vec<Outcome>) -> Outcome {
    let mut changed = Vec::new();
    let mut would = Vec::new();
    for p in parts {
        match p? {
            Applied::InPolicy => {}
            Applied::Changed(m) => changed.push(m),
            Applied::WouldChange(m) => would.push(m),
        }
    }
    Ok(if !changed.is_empty() {
        Applied::Changed(changed.join("; "))
    } else if !would.is_empty() {
        Applied::WouldChange(would.join("; "))
    } else {
        Applied::InPolicy
    })
}

/// How long a system tool (package manager, systemctl, account tools) may run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs a system tool without a shell; `Ok` holds what it ran to, whatever its status.
pub(crate) fn run_tool(argv: &[&str], env: &[(&str, &str)]) -> Result<exec::Ran, Failure> {
    let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    exec::run_program(exec::Program::Argv(&argv), TOOL_TIMEOUT, &env).map_err(|e| e.to_string())
}

/// Runs a system tool that must succeed; its standard output, or a failure naming the
/// command, its exit status and the end of its output.
pub(crate) fn tool(argv: &[&str], env: &[(&str, &str)]) -> Result<String, Failure> {
    let ran = run_tool(argv, env)?;
    if ran.success() {
        Ok(ran.stdout.text())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            ran.status,
            ran.message_tail()
        ))
    }
}

/// Whether `program` is an executable file on the agent's PATH.
pub(crate) fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|dir| {
                std::fs::metadata(dir.join(program))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
        .unwrap_or(false)
}
