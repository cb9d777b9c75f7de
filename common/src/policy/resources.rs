//! One resource of a configcrate: its common keys (`id`, `type`, `depends_on`, `when`,
//! `notify`, `subscribes`) and the keys of each type, checked with every problem named
//! by file and item.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use vigo_proto::v1 as pb;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    #[serde(default)]
    name: Option<String>,
    /// present, absent, latest, or a version to pin.
    #[serde(default)]
    ensure: Option<String>,
    #[serde(default)]
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(default)]
    name: Option<String>,
    /// running or stopped.
    #[serde(default)]
    ensure: Option<String>,
    #[serde(default)]
    enable: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ensure: Option<String>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    group: String,
    #[serde(default)]
    groups: Option<Vec<String>>,
    #[serde(default)]
    shell: String,
    #[serde(default)]
    home: String,
    #[serde(default)]
    system: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ensure: Option<String>,
    #[serde(default)]
    gid: Option<u32>,
    #[serde(default)]
    system: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCron {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ensure: Option<String>,
    #[serde(default)]
    schedule: String,
    #[serde(default = "root")]
    user: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    environment: BTreeMap<String, Value>,
}

fn yes() -> bool {
    true
}

fn root() -> String {
    "root".into()
}

/// What a resource's `ensure` says about its existence.
fn absent(ensure: &Option<String>) -> Result<bool, String> {
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

    fn package(&mut self, path: &Path, item: &str, id: &str, rest: Value) -> Spec {
        let Some(p) = self.spec::<RawPackage>(path, item, rest) else {
            return Ok(None);
        };
        let name = p.name.unwrap_or_else(|| id.to_string());
        checks::package_name(&name)?;
        let (state, version) = match p.ensure.as_deref().unwrap_or("present") {
            "present" => (pb::PackageState::Present, String::new()),
            "absent" => (pb::PackageState::Absent, String::new()),
            "latest" => (pb::PackageState::Latest, String::new()),
            pinned => {
                checks::package_version(pinned).map_err(|e| {
                    format!("ensure: present, absent, latest or a version to pin: {e}")
                })?;
                (pb::PackageState::Pinned, pinned.to_string())
            }
        };
        if !p.source.is_empty() {
            absolute(&p.source)?;
            if !(p.source.ends_with(".deb") || p.source.ends_with(".rpm")) {
                return Err(format!("source {:?} must be a .deb or .rpm file", p.source));
            }
            if matches!(state, pb::PackageState::Absent | pb::PackageState::Latest) {
                return Err("source: a package file is installed, not removed or upgraded (ensure present or a version)".into());
            }
        }
        Ok(Some(ResourceSpec::Package(pb::PackageSpec {
            name,
            state: state as i32,
            version,
            source: p.source,
        })))
    }

    fn service(&mut self, path: &Path, item: &str, id: &str, rest: Value) -> Spec {
        let Some(s) = self.spec::<RawService>(path, item, rest) else {
            return Ok(None);
        };
        let name = s.name.unwrap_or_else(|| id.to_string());
        checks::unit_name(&name)?;
        let state = match s.ensure.as_deref() {
            None => pb::RunState::Unmanaged,
            Some("running") => pb::RunState::Running,
            Some("stopped") => pb::RunState::Stopped,
            Some(other) => return Err(format!("ensure: {other:?} must be running or stopped")),
        };
        let boot = match s.enable {
            None => pb::BootState::Unmanaged,
            Some(true) => pb::BootState::Enabled,
            Some(false) => pb::BootState::Disabled,
        };
        Ok(Some(ResourceSpec::Service(pb::ServiceSpec {
            name,
            state: state as i32,
            boot: boot as i32,
        })))
    }

    fn user(&mut self, path: &Path, item: &str, id: &str, rest: Value) -> Spec {
        let Some(u) = self.spec::<RawUser>(path, item, rest) else {
            return Ok(None);
        };
        let (name, absent) = named(id, u.name, checks::account_name, &u.ensure)?;
        let described = u.uid.is_some()
            || !u.group.is_empty()
            || u.groups.is_some()
            || !u.shell.is_empty()
            || !u.home.is_empty()
            || u.system;
        if absent {
            only_path(described, "user")?;
            if name == "root" {
                return Err("the root account cannot be removed".into());
            }
        }
        if u.uid == Some(0) && name != "root" {
            return Err("uid 0 would make a second root account".into());
        }
        if !u.group.is_empty() {
            checks::account_name(&u.group)?;
        }
        for g in u.groups.iter().flatten() {
            checks::account_name(g)?;
        }
        if !u.shell.is_empty() {
            checks::passwd_path(&u.shell, "shell")?;
        }
        if !u.home.is_empty() {
            checks::passwd_path(&u.home, "home")?;
        }
        Ok(Some(ResourceSpec::User(pb::UserSpec {
            name,
            absent,
            uid: u.uid.unwrap_or(0),
            has_uid: u.uid.is_some(),
            group: u.group,
            manage_groups: u.groups.is_some(),
            groups: u.groups.unwrap_or_default(),
            shell: u.shell,
            home: u.home,
            system: u.system,
        })))
    }

    fn group(&mut self, path: &Path, item: &str, id: &str, rest: Value) -> Spec {
        let Some(g) = self.spec::<RawGroup>(path, item, rest) else {
            return Ok(None);
        };
        let (name, absent) = named(id, g.name, checks::account_name, &g.ensure)?;
        if absent {
            only_path(g.gid.is_some() || g.system, "group")?;
            if name == "root" {
                return Err("the root group cannot be removed".into());
            }
        }
        Ok(Some(ResourceSpec::Group(pb::GroupSpec {
            name,
            absent,
            gid: g.gid.unwrap_or(0),
            has_gid: g.gid.is_some(),
            system: g.system,
        })))
    }

    fn cron(&mut self, path: &Path, item: &str, id: &str, rest: Value) -> Spec {
        let Some(c) = self.spec::<RawCron>(path, item, rest) else {
            return Ok(None);
        };
        let (name, absent) = named(id, c.name, checks::cron_name, &c.ensure)?;
        if absent {
            only_path(
                !c.schedule.is_empty() || !c.command.is_empty() || !c.environment.is_empty(),
                "cron entry",
            )?;
        } else {
            checks::cron_schedule(&c.schedule)?;
            checks::account_name(&c.user)?;
            checks::one_line(&c.command, "command")?;
            template("command", &c.command)?;
        }
        let environment = self.vars(path, item, c.environment);
        for (k, v) in &environment {
            checks::env_name(k)?;
            checks::one_line(v, &format!("environment {k}"))?;
        }
        Ok(Some(ResourceSpec::Cron(pb::CronSpec {
            name,
            schedule: c.schedule,
            user: c.user,
            command: c.command,
            environment,
            absent,
        })))
    }

    fn spec<T: serde::de::DeserializeOwned>(
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
type Spec = Result<Option<ResourceSpec>, String>;

fn absolute(p: &str) -> Result<(), String> {
    if p.starts_with('/') {
        Ok(())
    } else {
        Err(format!("path {p:?} must be absolute"))
    }
}

/// The name a resource manages (its id unless it gives one), checked, and whether it is
/// to be removed.
fn named(
    id: &str,
    name: Option<String>,
    check: fn(&str) -> Result<(), String>,
    ensure: &Option<String>,
) -> Result<(String, bool), String> {
    let name = name.unwrap_or_else(|| id.to_string());
    check(&name)?;
    Ok((name, absent(ensure)?))
}

/// An absent resource names what to remove and nothing else.
fn only_path(described: bool, what: &str) -> Result<(), String> {
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

fn template(field: &str, source: &str) -> Result<(), String> {
    crate::templates::check_syntax(source).map_err(|e| format!("{field}: bad template: {e}"))
}
