//! Compiling a validated tree into one bundle per hostcrate.
//!
//! Each configcrate becomes one module (an encoded `vigo.v1.Module`), content-addressed
//! by its SHA-256, so a module shared by many hostcrates is built once and an envoy that
//! already holds it receives only its name and hash.
//!
//! Compiling can fail on what parsing cannot see: a set of hostname patterns too large
//! for the matcher, or a bundle larger than an envoy accepts. Validation ([`super::validate`])
//! therefore compiles, and serving uses what validation compiled: a policy that validates
//! never fails later on a spoke.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use globset::{Glob, GlobSet, GlobSetBuilder};
use prost::Message;
use vigo_proto::v1 as pb;

use super::{PolicyErrors, PolicyIssue, PolicyTree, Resource, ResourceSpec};
use crate::limits::MAX_BUNDLE_BYTES;
use crate::traits::sha256;

/// One module: a compiled configcrate.
#[derive(Debug, PartialEq, Eq)]
pub struct CompiledModule {
    pub name: String,
    pub sha256: [u8; 32],
    /// Encoded `vigo.v1.Module`.
    pub body: Bytes,
}

/// What one hostcrate's envoys receive (before signing).
#[derive(Debug, PartialEq)]
pub struct CompiledHostcrate {
    /// "" for the fallback of hosts no hostcrate matches (an empty bundle).
    pub name: String,
    pub variables: BTreeMap<String, String>,
    /// In application order; shared with other hostcrates that include the same crate.
    pub modules: Vec<Arc<CompiledModule>>,
    /// Hostname patterns of this hostcrate, and of every hostcrate before it: signed
    /// into the manifest so an envoy can tell the bundle is meant for it.
    pub patterns: Vec<String>,
    pub earlier_patterns: Vec<String>,
}

/// A compiled policy: bundles per hostcrate and the hostname matcher.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub version: [u8; 32],
    /// Hostcrates in match order, followed by the fallback (always last).
    pub hostcrates: Vec<CompiledHostcrate>,
    matchers: Vec<GlobSet>,
}

/// A hostname pattern as policies and manifests mean it (see [`crate::hostname::glob`]).
pub fn hostname_glob(pattern: &str) -> Result<Glob, String> {
    crate::hostname::glob(pattern)
}

impl CompiledPolicy {
    /// The index of the hostcrate a hostname belongs to: the first whose patterns match,
    /// else the fallback (the last index).
    pub fn match_hostname(&self, hostname: &str) -> usize {
        self.matchers
            .iter()
            .position(|m| m.is_match(hostname))
            .unwrap_or(self.matchers.len())
    }

    pub fn fallback_index(&self) -> usize {
        self.matchers.len()
    }
}

/// Compiles a parsed tree. References were proved by parsing; what can still fail is
/// named as an issue of `hostcrates.yaml`: a hostcrate's patterns that the matcher cannot
/// build, or a bundle above [`MAX_BUNDLE_BYTES`].
pub fn compile(tree: &PolicyTree) -> Result<CompiledPolicy, PolicyErrors> {
    let mut issues = Vec::new();
    let mut modules: HashMap<&str, Arc<CompiledModule>> = HashMap::new();
    let mut hostcrates = Vec::with_capacity(tree.hostcrates.len() + 1);
    let mut matchers = Vec::with_capacity(tree.hostcrates.len());
    let mut earlier_patterns: Vec<String> = Vec::new();
    for h in &tree.hostcrates {
        let mut crate_order: Vec<&str> = Vec::new();
        let mut variables = BTreeMap::new();
        let mut role_vars = BTreeMap::new();
        for role_name in &h.roles {
            let role = &tree.roles[role_name];
            for c in &role.configcrates {
                if !crate_order.contains(&c.as_str()) {
                    crate_order.push(c);
                }
            }
            role_vars.extend(role.vars.clone());
        }
        // Precedence, lowest first: configcrate defaults, role variables, hostcrate's.
        for c in &crate_order {
            variables.extend(tree.configcrates[*c].vars.clone());
        }
        variables.extend(role_vars);
        variables.extend(h.vars.clone());
        let mods = crate_order
            .iter()
            .map(|c| {
                modules
                    .entry(c)
                    .or_insert_with(|| {
                        Arc::new(compile_module(c, &tree.configcrates[*c].resources))
                    })
                    .clone()
            })
            .collect();
        let compiled = CompiledHostcrate {
            name: h.name.clone(),
            variables,
            modules: mods,
            patterns: h.patterns.clone(),
            earlier_patterns: earlier_patterns.clone(),
        };
        earlier_patterns.extend(h.patterns.iter().cloned());
        hostcrates.push(compiled);
        match hostname_matcher(&h.patterns) {
            Ok(set) => matchers.push(set),
            Err(why) => {
                issues.push(hostcrate_issue(&h.name, why));
                matchers.push(GlobSet::empty());
            }
        }
    }
    hostcrates.push(CompiledHostcrate {
        name: String::new(),
        variables: BTreeMap::new(),
        modules: Vec::new(),
        patterns: Vec::new(),
        earlier_patterns,
    });
    for h in &hostcrates {
        let size = h.bundle_bytes();
        if size > MAX_BUNDLE_BYTES {
            let name = if h.name.is_empty() {
                "(fallback)"
            } else {
                &h.name
            };
            issues.push(hostcrate_issue(
                name,
                format!("its bundle is {size} bytes; an envoy accepts at most {MAX_BUNDLE_BYTES}"),
            ));
        }
    }
    if !issues.is_empty() {
        return Err(PolicyErrors(issues));
    }
    Ok(CompiledPolicy {
        version: tree.version,
        hostcrates,
        matchers,
    })
}

fn hostcrate_issue(name: &str, why: String) -> PolicyIssue {
    PolicyIssue {
        file: super::HOSTCRATES_FILE.into(),
        item: format!("hostcrate {name}"),
        why,
    }
}

/// The matcher of one hostcrate's patterns. Building it compiles a regular expression
/// set, which has a size limit: a huge pattern list is refused here, never at serving.
fn hostname_matcher(patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        set.add(hostname_glob(p)?);
    }
    set.build()
        .map_err(|e| format!("its {} pattern(s) do not compile: {e}", patterns.len()))
}

impl CompiledHostcrate {
    /// What the bundle of this hostcrate weighs on the wire with every module body.
    pub fn bundle_bytes(&self) -> usize {
        let variables: usize = self
            .variables
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum();
        let patterns: usize = self
            .patterns
            .iter()
            .chain(&self.earlier_patterns)
            .map(|p| p.len() + 4)
            .sum();
        let modules: usize = self
            .modules
            .iter()
            .map(|m| 2 * m.name.len() + m.body.len() + 32 + 16)
            .sum();
        self.name.len() + variables + patterns + modules + 256
    }
}

fn compile_module(name: &str, resources: &[Resource]) -> CompiledModule {
    let module = pb::Module {
        name: name.to_string(),
        resources: resources.iter().map(|r| to_proto(name, r)).collect(),
    };
    let body = Bytes::from(module.encode_to_vec());
    CompiledModule {
        name: name.to_string(),
        sha256: sha256(&body),
        body,
    }
}

fn to_proto(crate_name: &str, r: &Resource) -> pb::Resource {
    use pb::resource::Spec;
    let spec = match &r.spec {
        ResourceSpec::File {
            path,
            content,
            mode,
            owner,
            group,
            template,
            allow_unsafe_parent,
        } => Spec::File(pb::FileSpec {
            path: path.clone(),
            content: content.clone(),
            mode: *mode,
            owner: owner.clone(),
            group: group.clone(),
            template: *template,
            allow_unsafe_parent: *allow_unsafe_parent,
        }),
        ResourceSpec::Directory {
            path,
            mode,
            owner,
            group,
            allow_unsafe_parent,
        } => Spec::Directory(pb::DirectorySpec {
            path: path.clone(),
            mode: *mode,
            owner: owner.clone(),
            group: group.clone(),
            allow_unsafe_parent: *allow_unsafe_parent,
        }),
        ResourceSpec::Symlink {
            path,
            target,
            allow_unsafe_parent,
        } => Spec::Symlink(pb::SymlinkSpec {
            path: path.clone(),
            target: target.clone(),
            allow_unsafe_parent: *allow_unsafe_parent,
        }),
        ResourceSpec::FileLine {
            path,
            line,
            present,
            pattern,
            allow_unsafe_parent,
        } => Spec::FileLine(pb::FileLineSpec {
            path: path.clone(),
            line: line.clone(),
            present: *present,
            r#match: pattern.clone(),
            allow_unsafe_parent: *allow_unsafe_parent,
        }),
        ResourceSpec::Exec {
            command,
            creates,
            unless,
            onlyif,
            timeout_ms,
            environment,
        } => Spec::Exec(pb::ExecSpec {
            command: command.clone(),
            creates: creates.clone(),
            unless: unless.clone(),
            onlyif: onlyif.clone(),
            timeout_ms: *timeout_ms,
            environment: environment.clone(),
        }),
    };
    pb::Resource {
        id: format!("{crate_name}/{}", r.id),
        depends_on: r.depends_on.clone(),
        r#type: r.spec.type_name().to_string(),
        spec: Some(spec),
    }
}
