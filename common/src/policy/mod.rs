//! The policy model (DESIGN §6): hostcrates → roles → configcrates → resources.
//!
//! A policy tree is a directory:
//!
//! ```text
//! hostcrates.yaml          hostcrates, in match order (first match wins)
//! roles/<role>.yaml        configcrates a role pulls in, and role variables
//! configcrates/<name>.yaml resources and default variables
//! ```
//!
//! [`load_dir`] reads and parses a tree, reporting every problem with its file and item;
//! [`compile`] turns it into one bundle per hostcrate; [`validate`] does both, and is
//! what every publisher and server calls, so what validates is exactly what serves;
//! [`bundle`] signs bundles and verifies them on the envoy side.

pub mod bundle;
pub mod checks;
mod compile;
mod load;
mod resources;
mod system;
pub mod trace;
pub mod when;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use vigo_proto::v1 as pb;

pub use compile::{
    CompiledHostcrate, CompiledPolicy, ResolvedVar, VarSource, compile, resolve_vars,
};
pub use load::{load_dir, parse_tree, read_files};

/// The file that lists hostcrates, at the root of a tree.
pub(crate) const HOSTCRATES_FILE: &str = "hostcrates.yaml";

/// Parses and compiles a tree given as (relative path → YAML text): the one check a
/// policy passes before anything serves it.
pub fn validate(files: &BTreeMap<PathBuf, String>) -> Result<CompiledPolicy, PolicyErrors> {
    compile(&parse_tree(files)?)
}

/// One problem found in a policy tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyIssue {
    /// The file, relative to the policy directory.
    pub file: PathBuf,
    /// What inside the file: "hostcrate web", "resource nginx/conf", ...
    pub item: String,
    pub why: String,
}

impl fmt::Display for PolicyIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file.as_os_str().is_empty() {
            write!(f, "{}", self.why)
        } else if self.item.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.why)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.item, self.why)
        }
    }
}

/// Every problem found, so an operator fixes them in one pass.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyIssue>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy has {} problem(s):", self.0.len())?;
        for issue in &self.0 {
            write!(f, "\n  - {issue}")?;
        }
        Ok(())
    }
}

/// A validated policy tree.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyTree {
    /// SHA-256 over every file (path and content): the policy version.
    pub version: [u8; 32],
    pub hostcrates: Vec<Hostcrate>,
    pub roles: BTreeMap<String, Role>,
    pub configcrates: BTreeMap<String, Configcrate>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Hostcrate {
    pub name: String,
    /// Hostname globs (`web-*`, `db-??.example.com`), case-insensitive.
    pub patterns: Vec<String>,
    pub roles: Vec<String>,
    pub vars: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Role {
    pub configcrates: Vec<String>,
    pub vars: BTreeMap<String, String>,
    /// Conditions of includes that have one (`- {name: nginx, when: ...}`), by configcrate.
    pub conditions: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Configcrate {
    pub vars: BTreeMap<String, String>,
    pub resources: Vec<Resource>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// Local id, unique within its configcrate.
    pub id: String,
    /// Fully qualified ids ("crate/id") of resources applied first.
    pub depends_on: Vec<String>,
    /// Condition on traits and vars (checked); empty: always.
    pub when: String,
    /// Fully qualified ids of resources this one refreshes when it changes.
    pub notify: Vec<String>,
    /// Fully qualified ids of resources whose change refreshes this one.
    pub subscribes: Vec<String>,
    pub spec: ResourceSpec,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ResourceSpec {
    File {
        path: String,
        content: String,
        mode: u32,
        owner: String,
        group: String,
        template: bool,
        /// Manage the file even where a user who does not own it can write its directory.
        allow_unsafe_parent: bool,
        absent: bool,
    },
    Directory {
        path: String,
        mode: u32,
        owner: String,
        group: String,
        allow_unsafe_parent: bool,
        absent: bool,
        recursive: bool,
    },
    Symlink {
        path: String,
        target: String,
        allow_unsafe_parent: bool,
        absent: bool,
    },
    FileLine {
        path: String,
        line: String,
        present: bool,
        pattern: String,
        allow_unsafe_parent: bool,
    },
    Exec {
        command: String,
        creates: String,
        unless: String,
        onlyif: String,
        timeout_ms: u32,
        environment: BTreeMap<String, String>,
        refresh_only: bool,
    },
    // The newer types are carried as their wire form: the checks of `load` are what
    // the policy adds to them.
    Package(pb::PackageSpec),
    Service(pb::ServiceSpec),
    User(pb::UserSpec),
    Group(pb::GroupSpec),
    Cron(pb::CronSpec),
}

impl ResourceSpec {
    pub fn type_name(&self) -> &'static str {
        match self {
            ResourceSpec::File { .. } => "file",
            ResourceSpec::Directory { .. } => "directory",
            ResourceSpec::Symlink { .. } => "symlink",
            ResourceSpec::FileLine { .. } => "file_line",
            ResourceSpec::Exec { .. } => "exec",
            ResourceSpec::Package(_) => "package",
            ResourceSpec::Service(_) => "service",
            ResourceSpec::User(_) => "user",
            ResourceSpec::Group(_) => "group",
            ResourceSpec::Cron(_) => "cron",
        }
    }

    /// Whether a notification means something to this resource: a service restarts,
    /// an exec runs.
    pub fn refreshable(&self) -> bool {
        matches!(self, ResourceSpec::Service(_) | ResourceSpec::Exec { .. })
    }
}
