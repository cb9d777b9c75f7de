//! The resource types that drive the machine's own tools: `package` (dpkg/apt, rpm/dnf),
//! `service` (systemd), `user` and `group` (the shadow tools) and `cron` (/etc/cron.d).
//! Every name that will reach a tool is checked here ([`checks`]) and again on the
//! envoy.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_yaml_ng::Value;
use vigo_proto::v1 as pb;

use super::load::Parser;
use super::resources::{Spec, absent, absolute, only_path, template};
use super::{ResourceSpec, checks};

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

fn root() -> String {
    "root".into()
}

impl Parser {
    pub(super) fn package(&mut self, path: &Path, item: &str, id: &str, rest: Value) -> Spec {
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

    pub(super) fn service(&mut self, path: &Path, item: &str, id: &str, rest: Value) -> Spec {
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

    pub(super) fn user(&mut self, path: &Path, item: &str, id: &str, rest: Value) -> Spec {
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

    pub(super) fn group(&mut self, path: &Path, item: &str, id: &str, rest: Value) -> Spec {
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

    pub(super) fn cron(&mut self, path: &Path, item: &str, id: &str, rest: Value) -> Spec {
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
