//! One resource of a configcrate: its common keys (`id`, `type`, `depends_on`, `when`,
//! `notify`, `subscribes`) and the keys of the file types and `exec`, checked with every
//! problem named by file and item. The types that drive the machine's tools (package,
//! service, user, group, cron) are parsed in `system.rs`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use super::load::{Parser, scalar, valid_name};
use super::when::Condition;
use super::{Resource, ResourceSpec, checks};

pub(super) const RESOURCE_TYPES: &str =
    "file, directory, symlink, file_line, exec, package, service, user, group, cron";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: String,
    #[serde(default)]
    ensure: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    mode: Option<Value>,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    group: String,
    #[serde(default = "yes")]
    template: bool,
    #[serde(default)]
    allow_unsafe_parent: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    path: String,
    #[serde(default)]
    ensure: Option<String>,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    mode: Option<Value>,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    allow_unsafe_parent: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSymlink {
    path: String,
    #[serde(default)]
    ensure: Option<String>,
    #[serde(default)]
    target: String,
    #[serde(default)]
    allow_unsafe_parent: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileLine {
    path: String,
    line: String,
    #[serde(default)]
    ensure: Option<String>,
    #[serde(default, rename = "match")]
    pattern: String,
    #[serde(default)]
    allow_unsafe_parent: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    command: String,
    #[serde(default)]
    creates: String,
    #[serde(default)]
    unless: String,
    #[serde(default)]
    onlyif: String,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<std::time::Duration>,
    #[serde(default)]
    environment: BTreeMap<String, Value>,
    #[serde(default)]
    refresh_only: bool,
}

fn yes() -> bool {
    true
}

/// What a resource's `ensure` says about its existence.
pub(super) fn absent(ensure: &Option<String>) -> Result<bool, String> {
    match ensure.as_deref() {
        None | Some("present") => Ok(false),
        Some("absent") => Ok(true),
        Some(other) => Err(format!("ensure: {other:?} must be present or absent")),
    }
}

impl Parser {
    pub(super) fn parse_resource(
        &mut self,
        path: &Path,
        crate_name: &str,
        index: usize,
        value: Value,
    ) -> Option<Resource> {
        let Value::Mapping(mut map) = value else {
            self.push(
                path,
                format!("resources[{index}]"),
                "a resource must be a mapping",
            );
            return None;
        };
        let id = take_string(&mut map, "id");
        let item = match &id {
            Some(id) => format!("resource {crate_name}/{id}"),
            None => format!("resources[{index}]"),
        };
        let Some(id) = id else {
            self.push(path, item, "missing `id`");
            return None;
        };
        if !valid_name(&id) {
            self.push(path, &item, "id must be letters, digits, '.', '_' or '-'");
        }
        let Some(kind) = take_string(&mut map, "type") else {
            self.push(
                path,
                item,
                format!("missing `type` (one of {RESOURCE_TYPES})"),
            );
            return None;
        };
        let mut lists = ["depends_on", "notify", "subscribes"]
            .map(|key| self.id_list(path, &item, crate_name, &mut map, key));
        let when = take_string(&mut map, "when").unwrap_or_default();
        if !when.is_empty()
            && let Err(e) = Condition::parse(&when)
        {
            self.push(path, &item, format!("when: {e}"));
        }
        let spec = self.resource_spec(path, &item, &id, &kind, Value::Mapping(map))?;
        if !lists[2].is_empty() && !spec.refreshable() {
            self.push(
                path,
                &item,
                format!(
                    "subscribes: a {} cannot be refreshed (services restart, execs run)",
                    spec.type_name()
                ),
            );
        }
        Some(Resource {
            id,
            depends_on: std::mem::take(&mut lists[0]),
            when,
            notify: std::mem::take(&mut lists[1]),
            subscribes: std::mem::take(&mut lists[2]),
            spec,
        })
    }

    /// A list of resource ids under `key`, qualified with the configcrate's name.
    fn id_list(
        &mut self,
        path: &Path,
        item: &str,
        crate_name: &str,
        map: &mut Mapping,
        key: &str,
    ) -> Vec<String> {
        match map.remove(key) {
            None => Vec::new(),
            Some(v) => match serde_yaml_ng::from_value::<Vec<String>>(v) {
                Ok(ids) => ids.into_iter().map(|d| qualify(crate_name, &d)).collect(),
                Err(e) => {
                    self.push(path, item, format!("{key}: {e}"));
                    Vec::new()
                }
            },
        }
    }

    fn resource_spec(
        &mut self,
        path: &Path,
        item: &str,
        id: &str,
        kind: &str,
        rest: Value,
    ) -> Option<ResourceSpec> {
        let spec = match kind {
            "file" => self.file(path, item, rest),
            "directory" => self.directory(path, item, rest),
            "symlink" => self.symlink(path, item, rest),
            "file_line" => self.file_line(path, item, rest),
            "exec" => self.exec(path, item, rest),
            "package" => self.package(path, item, id, rest),
            "service" => self.service(path, item, id, rest),
            "user" => self.user(path, item, id, rest),
            "group" => self.group(path, item, id, rest),
            "cron" => self.cron(path, item, id, rest),
            other => Err(format!("unknown type {other:?} (one of {RESOURCE_TYPES})")),
        };
        match spec {
            Ok(Some(spec)) => Some(spec),
            Ok(None) => None,
            Err(why) => {
                self.push(path, item, why);
                None
            }
        }
    }

    fn file(&mut self, path: &Path, item: &str, rest: Value) -> Spec {
        let Some(f) = self.spec::<RawFile>(path, item, rest) else {
            return Ok(None);
        };
        let absent = absent(&f.ensure)?;
        absolute(&f.path)?;
        if absent {
            only_path(
                f.content.is_some()
                    || f.mode.is_some()
                    || !f.owner.is_empty()
                    || !f.group.is_empty(),
                "file",
            )?;
        }
        let content = f.content.unwrap_or_default();
        if f.template && !absent {
            template("content", &content)?;
        }
        let mode = mode(f.mode)?;
        Ok(Some(ResourceSpec::File {
            path: f.path,
            content,
            mode,
            owner: f.owner,
            group: f.group,
            template: f.template && !absent,
            allow_unsafe_parent: f.allow_unsafe_parent,
            absent,
        }))
    }

    fn directory(&mut self, path: &Path, item: &str, rest: Value) -> Spec {
        let Some(d) = self.spec::<RawDirectory>(path, item, rest) else {
            return Ok(None);
        };
        let absent = absent(&d.ensure)?;
        absolute(&d.path)?;
        if absent {
            only_path(
                d.mode.is_some() || !d.owner.is_empty() || !d.group.is_empty(),
                "directory",
            )?;
        }
        if d.recursive && !absent {
            return Err("recursive: applies to `ensure: absent` only".into());
        }
        if d.recursive {
            checks::removable_tree(&d.path)?;
        }
        let mode = mode(d.mode)?;
        Ok(Some(ResourceSpec::Directory {
            path: d.path,
            mode,
            owner: d.owner,
            group: d.group,
            allow_unsafe_parent: d.allow_unsafe_parent,
            absent,
            recursive: d.recursive,
        }))
    }

    fn symlink(&mut self, path: &Path, item: &str, rest: Value) -> Spec {
        let Some(s) = self.spec::<RawSymlink>(path, item, rest) else {
            return Ok(None);
        };
        let absent = absent(&s.ensure)?;
        absolute(&s.path)?;
        if absent {
            only_path(!s.target.is_empty(), "symlink")?;
        } else if s.target.is_empty() {
            return Err("missing `target`".into());
        }
        Ok(Some(ResourceSpec::Symlink {
            path: s.path,
            target: s.target,
            allow_unsafe_parent: s.allow_unsafe_parent,
            absent,
        }))
    }

    fn file_line(&mut self, path: &Path, item: &str, rest: Value) -> Spec {
        let Some(l) = self.spec::<RawFileLine>(path, item, rest) else {
            return Ok(None);
        };
        absolute(&l.path)?;
        template("line", &l.line)?;
        let present = !absent(&l.ensure)?;
        if !l.pattern.is_empty()
            && let Err(e) = regex::Regex::new(&l.pattern)
        {
            return Err(format!("match: bad regular expression: {e}"));
        }
        Ok(Some(ResourceSpec::FileLine {
            path: l.path,
            line: l.line,
            present,
            pattern: l.pattern,
            allow_unsafe_parent: l.allow_unsafe_parent,
        }))
    }

    fn exec(&mut self, path: &Path, item: &str, rest: Value) -> Spec {
        let Some(e) = self.spec::<RawExec>(path, item, rest) else {
            return Ok(None);
        };
        if e.command.trim().is_empty() {
            return Err("command is empty".into());
        }
        for (field, value) in [
            ("command", &e.command),
            ("creates", &e.creates),
            ("unless", &e.unless),
            ("onlyif", &e.onlyif),
        ] {
            template(field, value)?;
        }
        let environment = self.vars(path, item, e.environment);
        let timeout_ms = e
            .timeout
            .map(|t| t.as_millis().min(u32::MAX as u128) as u32)
            .unwrap_or(0);
        Ok(Some(ResourceSpec::Exec {
            command: e.command,
            creates: e.creates,
            unless: e.unless,
            onlyif: e.onlyif,
            timeout_ms,
            environment,
            refresh_only: e.refresh_only,
        }))
    }

    pub(super) fn spec<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &Path,
        item: &str,
        value: Value,
    ) -> Option<T> {
        match serde_yaml_ng::from_value(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(path, item, e.to_string());
                None
            }
        }
    }
}

/// A resource's type-specific result: the spec, `None` when the problem was already
/// recorded, or the one problem to record.
pub(super) type Spec = Result<Option<ResourceSpec>, String>;

pub(super) fn absolute(p: &str) -> Result<(), String> {
    if p.starts_with('/') {
        Ok(())
    } else {
        Err(format!("path {p:?} must be absolute"))
    }
}

/// An absent resource names what to remove and nothing else.
pub(super) fn only_path(described: bool, what: &str) -> Result<(), String> {
    if described {
        Err(format!(
            "an absent {what} takes no other settings (ensure: absent removes it)"
        ))
    } else {
        Ok(())
    }
}

pub(super) fn take_string(map: &mut Mapping, key: &str) -> Option<String> {
    match map.remove(key) {
        Some(Value::String(s)) => Some(s),
        Some(other) => scalar(&other),
        None => None,
    }
}

fn qualify(crate_name: &str, dep: &str) -> String {
    if dep.contains('/') {
        dep.to_string()
    } else {
        format!("{crate_name}/{dep}")
    }
}

fn mode(raw: Option<Value>) -> Result<u32, String> {
    let Some(raw) = raw else { return Ok(0) };
    let parsed = match &raw {
        Value::String(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
        _ => None,
    };
    match parsed {
        Some(m) if m <= 0o7777 => Ok(m),
        _ => Err("mode must be a quoted octal string such as \"0644\"".into()),
    }
}

pub(super) fn template(field: &str, source: &str) -> Result<(), String> {
    crate::templates::check_syntax(source).map_err(|e| format!("{field}: bad template: {e}"))
}
