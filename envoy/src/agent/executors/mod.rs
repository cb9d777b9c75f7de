//! Resource executors. Each checks the machine before acting, changes only what differs
//! from the resource's spec, and under `dry_run` changes nothing and says what it would.

#[cfg(test)]
mod attacks;
pub(crate) mod exec;
mod file;
mod file_line;
pub(crate) mod fsops;

pub use exec::{DEFAULT_TIMEOUT, ExecPlan, apply_exec};
pub use file::{apply_directory, apply_file, apply_symlink};
pub use file_line::apply_file_line;

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
