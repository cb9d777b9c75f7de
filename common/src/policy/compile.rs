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

use super::when::Condition;
use super::{Hostcrate, PolicyErrors, PolicyIssue, PolicyTree, Resource, ResourceSpec};
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
    /// The include condition of each module (same order; "" = always).
    pub conditions: Vec<String>,
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
    let notified_by = notifications(tree);
    for h in &tree.hostcrates {
        let (crate_order, conditions) = includes(tree, h);
        let variables = resolve_vars(tree, h)
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect();
        issues.extend(condition_issues(
            tree,
            h,
            &crate_order,
            &conditions,
            &variables,
        ));
        let mods = crate_order
            .iter()
            .map(|c| {
                modules
                    .entry(c)
                    .or_insert_with(|| {
                        Arc::new(compile_module(
                            c,
                            &tree.configcrates[*c].resources,
                            &notified_by,
                        ))
                    })
                    .clone()
            })
            .collect();
        let compiled = CompiledHostcrate {
            name: h.name.clone(),
            variables,
            modules: mods,
            conditions,
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
        conditions: Vec::new(),
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

/// The configcrates of a hostcrate in application order (first include wins the place),
/// and each one's include condition: several includes of one configcrate are joined
/// with `or`, and one without a condition makes it unconditional.
pub(super) fn includes<'t>(tree: &'t PolicyTree, h: &Hostcrate) -> (Vec<&'t str>, Vec<String>) {
    let mut order: Vec<&str> = Vec::new();
    let mut conditions: Vec<Option<Vec<&str>>> = Vec::new();
    for role_name in &h.roles {
        let role = &tree.roles[role_name];
        for c in &role.configcrates {
            let when = role.conditions.get(c).map(String::as_str);
            match order.iter().position(|o| o == c) {
                None => {
                    order.push(c);
                    conditions.push(when.map(|w| vec![w]));
                }
                Some(i) => match (&mut conditions[i], when) {
                    (Some(all), Some(w)) => all.push(w),
                    (slot, _) => *slot = None,
                },
            }
        }
    }
    let conditions = conditions
        .into_iter()
        .map(|c| match c {
            None => String::new(),
            Some(ws) if ws.len() == 1 => ws[0].to_string(),
            Some(ws) => ws
                .iter()
                .map(|w| format!("({w})"))
                .collect::<Vec<_>>()
                .join(" or "),
        })
        .collect();
    (order, conditions)
}

/// Where a resolved variable's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VarSource {
    Configcrate(String),
    Role(String),
    Hostcrate(String),
}

impl std::fmt::Display for VarSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VarSource::Configcrate(n) => write!(f, "configcrate {n}"),
            VarSource::Role(n) => write!(f, "role {n}"),
            VarSource::Hostcrate(n) => write!(f, "hostcrate {n}"),
        }
    }
}

/// A variable after precedence, and the definitions it overrode (lowest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedVar {
    pub value: String,
    pub from: VarSource,
    pub overrides: Vec<(VarSource, String)>,
}

/// A hostcrate's variables. Precedence, lowest first: configcrate defaults (in
/// application order), role variables (in the hostcrate's role order), the
/// hostcrate's own: the later definition wins.
pub fn resolve_vars(tree: &PolicyTree, h: &Hostcrate) -> BTreeMap<String, ResolvedVar> {
    let (order, _) = includes(tree, h);
    let mut out: BTreeMap<String, ResolvedVar> = BTreeMap::new();
    let mut set = |k: &String, v: &String, from: VarSource| {
        let new = ResolvedVar {
            value: v.clone(),
            from,
            overrides: Vec::new(),
        };
        match out.get_mut(k) {
            Some(old) => {
                let mut overrides = std::mem::take(&mut old.overrides);
                overrides.push((old.from.clone(), old.value.clone()));
                *old = ResolvedVar { overrides, ..new };
            }
            None => {
                out.insert(k.clone(), new);
            }
        }
    };
    for c in &order {
        for (k, v) in &tree.configcrates[*c].vars {
            set(k, v, VarSource::Configcrate(c.to_string()));
        }
    }
    for r in &h.roles {
        for (k, v) in &tree.roles[r].vars {
            set(k, v, VarSource::Role(r.clone()));
        }
    }
    for (k, v) in &h.vars {
        set(k, v, VarSource::Hostcrate(h.name.clone()));
    }
    out
}

/// Conditions of this hostcrate's resources and includes that read a var it does not
/// define (parsing checked everything else).
fn condition_issues(
    tree: &PolicyTree,
    h: &Hostcrate,
    order: &[&str],
    includes: &[String],
    variables: &BTreeMap<String, String>,
) -> Vec<PolicyIssue> {
    let mut out = Vec::new();
    let mut check = |what: String, source: &str| {
        let Ok(c) = Condition::parse(source) else {
            return;
        };
        for v in c.vars() {
            if !variables.contains_key(v) {
                out.push(hostcrate_issue(
                    &h.name,
                    format!("{what}: when: vars.{v} is not defined for this hostcrate"),
                ));
            }
        }
    };
    for (c, when) in order.iter().zip(includes) {
        if !when.is_empty() {
            check(format!("include of configcrate {c}"), when);
        }
        for r in &tree.configcrates[*c].resources {
            if !r.when.is_empty() {
                check(format!("resource {c}/{}", r.id), &r.when);
            }
        }
    }
    out
}

/// For every resource that some resource notifies, those notifiers.
fn notifications(tree: &PolicyTree) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (crate_name, c) in &tree.configcrates {
        for r in &c.resources {
            for n in &r.notify {
                out.entry(n.clone())
                    .or_default()
                    .push(format!("{crate_name}/{}", r.id));
            }
        }
    }
    out
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

fn compile_module(
    name: &str,
    resources: &[Resource],
    notified_by: &HashMap<String, Vec<String>>,
) -> CompiledModule {
    let module = pb::Module {
        name: name.to_string(),
        resources: resources
            .iter()
            .map(|r| {
                let mut proto = to_proto(name, r);
                if let Some(from) = notified_by.get(&proto.id) {
                    for f in from {
                        if !proto.subscribes.contains(f) {
                            proto.subscribes.push(f.clone());
                        }
                    }
                }
                proto
            })
            .collect(),
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
            absent,
        } => Spec::File(pb::FileSpec {
            path: path.clone(),
            content: content.clone(),
            mode: *mode,
            owner: owner.clone(),
            group: group.clone(),
            template: *template,
            allow_unsafe_parent: *allow_unsafe_parent,
            absent: *absent,
        }),
        ResourceSpec::Directory {
            path,
            mode,
            owner,
            group,
            allow_unsafe_parent,
            absent,
            recursive,
        } => Spec::Directory(pb::DirectorySpec {
            path: path.clone(),
            mode: *mode,
            owner: owner.clone(),
            group: group.clone(),
            allow_unsafe_parent: *allow_unsafe_parent,
            absent: *absent,
            recursive: *recursive,
        }),
        ResourceSpec::Symlink {
            path,
            target,
            allow_unsafe_parent,
            absent,
        } => Spec::Symlink(pb::SymlinkSpec {
            path: path.clone(),
            target: target.clone(),
            allow_unsafe_parent: *allow_unsafe_parent,
            absent: *absent,
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
            refresh_only,
        } => Spec::Exec(pb::ExecSpec {
            command: command.clone(),
            creates: creates.clone(),
            unless: unless.clone(),
            onlyif: onlyif.clone(),
            timeout_ms: *timeout_ms,
            environment: environment.clone(),
            refresh_only: *refresh_only,
        }),
        ResourceSpec::Package(p) => Spec::Package(p.clone()),
        ResourceSpec::Service(s) => Spec::Service(s.clone()),
        ResourceSpec::User(u) => Spec::User(u.clone()),
        ResourceSpec::Group(g) => Spec::Group(g.clone()),
        ResourceSpec::Cron(c) => Spec::Cron(c.clone()),
    };
    pb::Resource {
        id: format!("{crate_name}/{}", r.id),
        depends_on: r.depends_on.clone(),
        r#type: r.spec.type_name().to_string(),
        when: r.when.clone(),
        subscribes: r.subscribes.clone(),
        spec: Some(spec),
    }
}
