//! Reading a policy directory and validating it, collecting every problem.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::{Configcrate, Hostcrate, PolicyErrors, PolicyIssue, PolicyTree, Role};

use super::HOSTCRATES_FILE;
use crate::limits::MAX_POLICY_BYTES;

const ROLES_DIR: &str = "roles";
const CONFIGCRATES_DIR: &str = "configcrates";

/// Reads every YAML file under `dir` and validates the tree.
pub fn load_dir(dir: &Path) -> Result<PolicyTree, PolicyErrors> {
    parse_tree(&read_files(dir)?)
}

/// Every YAML file under `dir` (hidden ones skipped), by path relative to `dir`: the
/// tree as it is published.
pub fn read_files(dir: &Path) -> Result<BTreeMap<PathBuf, String>, PolicyErrors> {
    let mut files = BTreeMap::new();
    let mut issues = Vec::new();
    let mut total = 0usize;
    collect_files(dir, dir, &mut files, &mut issues, &mut total);
    if !issues.is_empty() {
        return Err(PolicyErrors(issues));
    }
    Ok(files)
}

/// Walks the tree without following links: a link could pull in a file from outside the
/// tree, or loop. Links and anything but directories and regular files are refused.
fn collect_files(
    root: &Path,
    dir: &Path,
    files: &mut BTreeMap<PathBuf, String>,
    issues: &mut Vec<PolicyIssue>,
    total: &mut usize,
) {
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).to_path_buf();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            return issues.push(issue(rel(dir), "", format!("cannot read directory: {e}")));
        }
    };
    let mut entries: Vec<std::fs::DirEntry> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        // The entry's own type: `file_type` does not follow a symbolic link.
        let kind = match entry.file_type() {
            Ok(k) => k,
            Err(e) => {
                issues.push(issue(rel(&path), "", format!("cannot stat: {e}")));
                continue;
            }
        };
        if kind.is_symlink() {
            issues.push(issue(
                rel(&path),
                "",
                "is a symbolic link: a policy tree holds real files only",
            ));
        } else if kind.is_dir() {
            collect_files(root, &path, files, issues, total);
        } else if is_yaml(&path) {
            if !kind.is_file() {
                issues.push(issue(rel(&path), "", "is not a regular file"));
                continue;
            }
            let size = entry.metadata().map(|m| m.len() as usize).unwrap_or(0);
            if *total + size > MAX_POLICY_BYTES {
                issues.push(issue(
                    rel(&path),
                    "",
                    format!("policy tree exceeds {MAX_POLICY_BYTES} bytes"),
                ));
                return;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    *total += text.len();
                    files.insert(rel(&path), text);
                }
                Err(e) => issues.push(issue(rel(&path), "", format!("cannot read: {e}"))),
            }
        }
    }
}

fn is_yaml(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

fn issue(file: impl Into<PathBuf>, item: impl Into<String>, why: impl Into<String>) -> PolicyIssue {
    PolicyIssue {
        file: file.into(),
        item: item.into(),
        why: why.into(),
    }
}

/// Validates a tree given as (relative path → YAML text).
pub fn parse_tree(files: &BTreeMap<PathBuf, String>) -> Result<PolicyTree, PolicyErrors> {
    let size: usize = files
        .iter()
        .map(|(k, v)| k.as_os_str().len() + v.len())
        .sum();
    if size > MAX_POLICY_BYTES {
        return Err(PolicyErrors(vec![issue(
            "",
            "",
            format!("policy tree is {size} bytes; the limit is {MAX_POLICY_BYTES}"),
        )]));
    }
    let mut p = Parser::default();
    for (path, text) in files {
        p.parse_file(path, text);
    }
    if !files.contains_key(Path::new(HOSTCRATES_FILE)) {
        p.issues.push(issue(
            HOSTCRATES_FILE,
            "",
            "missing: a policy needs a hostcrates.yaml",
        ));
    }
    p.check_references();
    if !p.issues.is_empty() {
        return Err(PolicyErrors(p.issues));
    }
    Ok(PolicyTree {
        version: tree_version(files),
        hostcrates: p.hostcrates,
        roles: p.roles.into_iter().map(|(k, (_, v))| (k, v)).collect(),
        configcrates: p
            .configcrates
            .into_iter()
            .map(|(k, (_, v))| (k, v))
            .collect(),
    })
}

fn tree_version(files: &BTreeMap<PathBuf, String>) -> [u8; 32] {
    crate::traits::sha256_fields(
        b"vigo.v1.PolicyTree\0",
        files
            .iter()
            .flat_map(|(path, text)| [path.to_string_lossy().into_owned(), text.clone()]),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostcrates {
    hostcrates: Vec<RawHostcrate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostcrate {
    name: String,
    #[serde(rename = "match")]
    patterns: OneOrMany,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    vars: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    configcrates: Vec<RawInclude>,
    #[serde(default)]
    vars: BTreeMap<String, Value>,
}

/// A configcrate a role pulls in: its name, or its name and a condition.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawInclude {
    Name(String),
    When { name: String, when: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfigcrate {
    #[serde(default)]
    vars: BTreeMap<String, Value>,
    #[serde(default)]
    resources: Vec<Value>,
}

#[derive(Default)]
pub(super) struct Parser {
    issues: Vec<PolicyIssue>,
    hostcrates: Vec<Hostcrate>,
    hostcrates_file: PathBuf,
    roles: BTreeMap<String, (PathBuf, Role)>,
    configcrates: BTreeMap<String, (PathBuf, Configcrate)>,
}

impl Parser {
    pub(super) fn push(&mut self, file: &Path, item: impl Into<String>, why: impl Into<String>) {
        self.issues.push(issue(file, item, why));
    }

    fn parse_file(&mut self, path: &Path, text: &str) {
        let parent = path.parent().and_then(|p| p.to_str()).unwrap_or("");
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        match (parent, path.to_str()) {
            ("", Some(HOSTCRATES_FILE)) => self.parse_hostcrates(path, text),
            (ROLES_DIR, _) => self.parse_role(path, &stem, text),
            (CONFIGCRATES_DIR, _) => self.parse_configcrate(path, &stem, text),
            _ => self.push(
                path,
                "",
                "unexpected file: a policy holds hostcrates.yaml, roles/*.yaml and configcrates/*.yaml",
            ),
        }
    }

    fn yaml<T: serde::de::DeserializeOwned>(&mut self, path: &Path, text: &str) -> Option<T> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        match serde_path_to_error::deserialize(de) {
            Ok(v) => Some(v),
            Err(e) => {
                let key = e.path().to_string();
                let key = if key == "." { String::new() } else { key };
                self.push(path, key, e.into_inner().to_string());
                None
            }
        }
    }

    pub(super) fn vars(
        &mut self,
        path: &Path,
        item: &str,
        raw: BTreeMap<String, Value>,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in raw {
            if !valid_name(&k) {
                self.push(
                    path,
                    item,
                    format!("variable name {k:?} must be letters, digits, '.', '_' or '-'"),
                );
            }
            match scalar(&v) {
                Some(s) => {
                    out.insert(k, s);
                }
                None => self.push(
                    path,
                    item,
                    format!("variable {k:?} must be a string, number or boolean"),
                ),
            }
        }
        out
    }

    fn parse_hostcrates(&mut self, path: &Path, text: &str) {
        self.hostcrates_file = path.to_path_buf();
        let Some(raw) = self.yaml::<RawHostcrates>(path, text) else {
            return;
        };
        let mut seen = BTreeSet::new();
        for h in raw.hostcrates {
            let item = format!("hostcrate {}", h.name);
            if !valid_name(&h.name) {
                self.push(path, &item, "name must be letters, digits, '.', '_' or '-'");
            }
            if !seen.insert(h.name.clone()) {
                self.push(path, &item, "defined twice");
            }
            let patterns = match h.patterns {
                OneOrMany::One(p) => vec![p],
                OneOrMany::Many(ps) => ps,
            };
            if patterns.is_empty() {
                self.push(path, &item, "`match` needs at least one hostname pattern");
            }
            for p in &patterns {
                if let Err(e) = super::compile::hostname_glob(p) {
                    self.push(path, &item, e);
                }
            }
            let vars = self.vars(path, &item, h.vars);
            self.hostcrates.push(Hostcrate {
                name: h.name,
                patterns,
                roles: h.roles,
                vars,
            });
        }
    }

    /// The item name of a role or configcrate file, and its parsed content.
    fn named_file<T: serde::de::DeserializeOwned>(
        &mut self,
        kind: &str,
        path: &Path,
        name: &str,
        text: &str,
    ) -> (String, Option<T>) {
        let item = format!("{kind} {name}");
        if !valid_name(name) {
            self.push(
                path,
                &item,
                "file name must be letters, digits, '.', '_' or '-'",
            );
        }
        let parsed = self.yaml::<T>(path, text);
        (item, parsed)
    }

    fn parse_role(&mut self, path: &Path, name: &str, text: &str) {
        let (item, raw) = self.named_file::<RawRole>("role", path, name, text);
        let Some(raw) = raw else {
            return;
        };
        let vars = self.vars(path, &item, raw.vars);
        let mut role = Role {
            configcrates: Vec::new(),
            vars,
            conditions: BTreeMap::new(),
        };
        for include in raw.configcrates {
            match include {
                RawInclude::Name(name) => role.configcrates.push(name),
                RawInclude::When { name, when } => {
                    if let Err(e) = super::when::Condition::parse(&when) {
                        self.push(path, &item, format!("configcrate {name}: when: {e}"));
                    }
                    role.conditions.insert(name.clone(), when);
                    role.configcrates.push(name);
                }
            }
        }
        if self
            .roles
            .insert(name.to_string(), (path.to_path_buf(), role))
            .is_some()
        {
            self.push(path, &item, "defined twice (.yaml and .yml?)");
        }
    }

    fn parse_configcrate(&mut self, path: &Path, name: &str, text: &str) {
        let (item, raw) = self.named_file::<RawConfigcrate>("configcrate", path, name, text);
        let Some(raw) = raw else {
            return;
        };
        let vars = self.vars(path, &item, raw.vars);
        let mut resources = Vec::new();
        let mut ids = BTreeSet::new();
        for (i, value) in raw.resources.into_iter().enumerate() {
            if let Some(r) = self.parse_resource(path, name, i, value) {
                if !ids.insert(r.id.clone()) {
                    self.push(path, format!("resource {name}/{}", r.id), "id used twice");
                }
                resources.push(r);
            }
        }
        if self
            .configcrates
            .insert(
                name.to_string(),
                (path.to_path_buf(), Configcrate { vars, resources }),
            )
            .is_some()
        {
            self.push(path, &item, "defined twice (.yaml and .yml?)");
        }
    }

    /// Cross-file checks: every name used exists, dependencies resolve inside every
    /// bundle that includes them, and no dependency cycle exists.
    fn check_references(&mut self) {
        let mut found = Vec::new();
        for h in &self.hostcrates {
            for r in &h.roles {
                if !self.roles.contains_key(r) {
                    found.push(issue(
                        &self.hostcrates_file,
                        format!("hostcrate {}", h.name),
                        format!("unknown role {r:?}"),
                    ));
                }
            }
        }
        for (name, (path, role)) in &self.roles {
            for c in &role.configcrates {
                if !self.configcrates.contains_key(c) {
                    found.push(issue(
                        path,
                        format!("role {name}"),
                        format!("unknown configcrate {c:?}"),
                    ));
                }
            }
        }
        // Every resource by id: whether a notification means something to it.
        let mut refreshable = HashMap::new();
        for (crate_name, (_, c)) in &self.configcrates {
            for r in &c.resources {
                refreshable.insert(format!("{crate_name}/{}", r.id), r.spec.refreshable());
            }
        }
        for (crate_name, (path, c)) in &self.configcrates {
            for r in &c.resources {
                let item = format!("resource {crate_name}/{}", r.id);
                for (how, ids) in [
                    ("depends on", &r.depends_on),
                    ("notifies", &r.notify),
                    ("subscribes to", &r.subscribes),
                ] {
                    for d in ids {
                        if !refreshable.contains_key(d) {
                            found.push(issue(path, &item, format!("{how} unknown resource {d:?}")));
                        }
                    }
                }
                for n in &r.notify {
                    if refreshable.get(n) == Some(&false) {
                        found.push(issue(
                            path,
                            &item,
                            format!("notifies {n}, which cannot be refreshed (services restart, execs run)"),
                        ));
                    }
                }
            }
        }
        found.extend(self.bundle_dependency_issues());
        if let Some(cycle) = self.find_cycle() {
            let file = self
                .configcrates
                .get(cycle[0].split('/').next().unwrap_or(""))
                .map(|(p, _)| p.clone())
                .unwrap_or_default();
            found.push(issue(
                file,
                format!("resource {}", cycle[0]),
                format!("dependency cycle: {}", cycle.join(" -> ")),
            ));
        }
        self.issues.extend(found);
    }

    /// A resource may depend on another configcrate's resource only if every hostcrate
    /// that includes the first also includes the second.
    fn bundle_dependency_issues(&self) -> Vec<PolicyIssue> {
        let mut out = Vec::new();
        for h in &self.hostcrates {
            let crates: BTreeSet<&str> = h
                .roles
                .iter()
                .filter_map(|r| self.roles.get(r))
                .flat_map(|(_, role)| role.configcrates.iter().map(String::as_str))
                .collect();
            for c in &crates {
                let Some((_, cc)) = self.configcrates.get(*c) else {
                    continue;
                };
                for r in &cc.resources {
                    for d in r.depends_on.iter().chain(&r.notify).chain(&r.subscribes) {
                        let dep_crate = d.split('/').next().unwrap_or("");
                        if self.configcrates.contains_key(dep_crate) && !crates.contains(dep_crate)
                        {
                            out.push(issue(
                                &self.hostcrates_file,
                                format!("hostcrate {}", h.name),
                                format!(
                                    "resource {c}/{} refers to {d}, but configcrate {dep_crate} is not in this hostcrate's roles",
                                    r.id
                                ),
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// The first dependency cycle found, as a closed path of resource ids.
    fn find_cycle(&self) -> Option<Vec<String>> {
        let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (crate_name, (_, c)) in &self.configcrates {
            for r in &c.resources {
                let id = format!("{crate_name}/{}", r.id);
                let deps = edges.entry(id.clone()).or_default();
                deps.extend(r.depends_on.iter().chain(&r.subscribes).cloned());
                // A notified resource is applied after the one that notifies it.
                for n in &r.notify {
                    edges.entry(n.clone()).or_default().push(id.clone());
                }
            }
        }
        // Edges to unknown resources were reported above; a walk needs every node.
        let known: BTreeSet<String> = edges.keys().cloned().collect();
        for deps in edges.values_mut() {
            deps.retain(|d| known.contains(d));
        }
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Unseen,
            OnPath,
            Done,
        }
        let mut marks: HashMap<&str, Mark> =
            edges.keys().map(|k| (k.as_str(), Mark::Unseen)).collect();
        for start in edges.keys() {
            if marks[start.as_str()] != Mark::Unseen {
                continue;
            }
            // Iterative DFS; `path` is the current chain, each with its next edge index.
            let mut path: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
            marks.insert(start, Mark::OnPath);
            while let Some((node, next)) = path.last_mut() {
                let deps = &edges[*node];
                if *next == deps.len() {
                    marks.insert(node, Mark::Done);
                    path.pop();
                    continue;
                }
                let dep = deps[*next].as_str();
                *next += 1;
                match marks.get(dep).copied() {
                    Some(Mark::Unseen) => {
                        marks.insert(dep, Mark::OnPath);
                        path.push((dep, 0));
                    }
                    Some(Mark::OnPath) => {
                        let from = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[from..].iter().map(|(n, _)| n.to_string()).collect();
                        cycle.push(dep.to_string());
                        return Some(cycle);
                    }
                    _ => {}
                }
            }
        }
        None
    }
}

pub(super) fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}
