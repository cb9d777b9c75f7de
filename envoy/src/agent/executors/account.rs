//! `user` and `group` resources through the shadow tools (useradd, usermod, userdel,
//! groupadd, groupmod, groupdel). Only the account a resource names is looked at or
//! changed; settings a resource leaves out are left as they are.

use std::collections::BTreeSet;

use nix::unistd::{Group, User};
use vigo_common::policy::checks;
use vigo_proto::v1 as pb;

use super::{Applied, Failure, Outcome, act, tool};

/// The group database the shadow tools write (supplementary memberships live here).
const GROUP_FILE: &str = "/etc/group";

pub fn apply_group(spec: &pb::GroupSpec, dry_run: bool) -> Outcome {
    checks::account_name(&spec.name)?;
    let name = spec.name.as_str();
    let current = Group::from_name(name).map_err(|e| format!("group {name}: {e}"))?;
    match (current, spec.absent) {
        (None, true) => Ok(Applied::InPolicy),
        (Some(g), true) => act(dry_run, format!("removed (gid {})", g.gid), || {
            tool(&["groupdel", "--", name], &[]).map(|_| ())
        }),
        (None, false) => {
            let gid = spec.gid.to_string();
            let mut argv = vec!["groupadd"];
            if spec.has_gid {
                argv.extend(["-g", &gid]);
            }
            if spec.system {
                argv.push("-r");
            }
            argv.extend(["--", name]);
            act(dry_run, "created".into(), || tool(&argv, &[]).map(|_| ()))
        }
        (Some(g), false) if spec.has_gid && g.gid.as_raw() != spec.gid => {
            let gid = spec.gid.to_string();
            act(dry_run, format!("gid {} -> {gid}", g.gid), || {
                tool(&["groupmod", "-g", &gid, "--", name], &[]).map(|_| ())
            })
        }
        (Some(_), false) => Ok(Applied::InPolicy),
    }
}

pub fn apply_user(spec: &pb::UserSpec, dry_run: bool) -> Outcome {
    checks::account_name(&spec.name)?;
    for g in spec
        .groups
        .iter()
        .chain(Some(&spec.group).filter(|g| !g.is_empty()))
    {
        checks::account_name(g)?;
    }
    for (path, what) in [(&spec.shell, "shell"), (&spec.home, "home")] {
        if !path.is_empty() {
            checks::passwd_path(path, what)?;
        }
    }
    let name = spec.name.as_str();
    let current = User::from_name(name).map_err(|e| format!("user {name}: {e}"))?;
    if spec.absent {
        return match current {
            None => Ok(Applied::InPolicy),
            Some(u) => act(
                dry_run,
                format!("removed (uid {}; home kept)", u.uid),
                || tool(&["userdel", "--", name], &[]).map(|_| ()),
            ),
        };
    }
    let uid = spec.uid.to_string();
    let groups = spec.groups.join(",");
    let Some(user) = current else {
        let mut argv = vec!["useradd"];
        if spec.has_uid {
            argv.extend(["-u", &uid]);
        }
        argv.extend(options(spec, &groups));
        if !spec.home.is_empty() {
            argv.push("-m");
        }
        if spec.system {
            argv.push("-r");
        }
        argv.extend(["--", name]);
        return act(dry_run, "created".into(), || tool(&argv, &[]).map(|_| ()));
    };
    let mut changes = Vec::new();
    let mut argv = vec!["usermod"];
    if spec.has_uid && user.uid.as_raw() != spec.uid {
        changes.push(format!("uid {} -> {uid}", user.uid));
        argv.extend(["-u", &uid]);
    }
    if !spec.group.is_empty() {
        let want = Group::from_name(&spec.group)
            .map_err(|e| format!("group {}: {e}", spec.group))?
            .ok_or_else(|| format!("no group named {}", spec.group))?;
        if want.gid != user.gid {
            changes.push(format!("primary group -> {}", spec.group));
            argv.extend(["-g", &spec.group]);
        }
    }
    if !spec.shell.is_empty() && user.shell.as_os_str() != spec.shell.as_str() {
        changes.push(format!("shell {} -> {}", user.shell.display(), spec.shell));
        argv.extend(["-s", &spec.shell]);
    }
    if !spec.home.is_empty() && user.dir.as_os_str() != spec.home.as_str() {
        changes.push(format!("home {} -> {}", user.dir.display(), spec.home));
        argv.extend(["-d", &spec.home]);
    }
    if spec.manage_groups {
        let now = memberships(name)?;
        let want: BTreeSet<String> = spec.groups.iter().cloned().collect();
        if now != want {
            changes.push(format!(
                "groups [{}] -> [{}]",
                now.into_iter().collect::<Vec<_>>().join(","),
                groups
            ));
            argv.extend(["-G", &groups]);
        }
    }
    if changes.is_empty() {
        return Ok(Applied::InPolicy);
    }
    argv.extend(["--", name]);
    act(dry_run, changes.join("; "), || tool(&argv, &[]).map(|_| ()))
}

/// useradd options for the settings a spec gives.
fn options<'a>(spec: &'a pb::UserSpec, groups: &'a str) -> Vec<&'a str> {
    let mut argv = Vec::new();
    if !spec.group.is_empty() {
        argv.extend(["-g", spec.group.as_str()]);
    }
    if spec.manage_groups && !groups.is_empty() {
        argv.extend(["-G", groups]);
    }
    if !spec.shell.is_empty() {
        argv.extend(["-s", spec.shell.as_str()]);
    }
    if !spec.home.is_empty() {
        argv.extend(["-d", spec.home.as_str()]);
    }
    argv
}

/// The supplementary groups `user` is listed in.
fn memberships(user: &str) -> Result<BTreeSet<String>, Failure> {
    let text = std::fs::read_to_string(GROUP_FILE).map_err(|e| format!("{GROUP_FILE}: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let group = f.next()?;
            let members = f.nth(2)?;
            members
                .split(',')
                .any(|m| m == user)
                .then(|| group.to_string())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names this test owns, removed however it ends.
    struct Owned(String);

    impl Drop for Owned {
        fn drop(&mut self) {
            let _ = tool(&["userdel", "--", &self.0], &[]);
            let _ = tool(&["groupdel", "--", &self.0], &[]);
            let _ = tool(&["groupdel", "--", &format!("{}x", self.0)], &[]);
        }
    }

    #[test]
    fn accounts_are_created_changed_and_removed() {
        if !nix::unistd::Uid::effective().is_root() || !super::super::on_path("useradd") {
            eprintln!("skipped: needs root and the shadow tools");
            return;
        }
        let name = format!("vigot{}", std::process::id() % 100_000);
        let _owned = Owned(name.clone());
        let extra = format!("{name}x");
        let group = |n: &str| pb::GroupSpec {
            name: n.into(),
            ..Default::default()
        };
        assert!(matches!(
            apply_group(&group(&name), true),
            Ok(Applied::WouldChange(_))
        ));
        assert!(
            Group::from_name(&name).unwrap().is_none(),
            "a dry run creates nothing"
        );
        assert!(matches!(
            apply_group(&group(&name), false),
            Ok(Applied::Changed(_))
        ));
        assert!(matches!(
            apply_group(&group(&extra), false),
            Ok(Applied::Changed(_))
        ));
        assert_eq!(apply_group(&group(&name), false), Ok(Applied::InPolicy));

        let mut user = pb::UserSpec {
            name: name.clone(),
            group: name.clone(),
            shell: "/bin/sh".into(),
            ..Default::default()
        };
        assert_eq!(
            apply_user(&user, false),
            Ok(Applied::Changed("created".into()))
        );
        assert_eq!(apply_user(&user, false), Ok(Applied::InPolicy));
        user.shell = "/bin/bash".into();
        user.groups = vec![extra.clone()];
        user.manage_groups = true;
        let changed = apply_user(&user, false).unwrap();
        assert!(
            matches!(&changed, Applied::Changed(m) if m.contains("shell /bin/sh -> /bin/bash") && m.contains(&extra)),
            "{changed:?}"
        );
        assert_eq!(apply_user(&user, false), Ok(Applied::InPolicy));
        assert_eq!(memberships(&name).unwrap(), BTreeSet::from([extra.clone()]));

        let gone = pb::UserSpec {
            name: name.clone(),
            absent: true,
            ..Default::default()
        };
        assert!(matches!(apply_user(&gone, false), Ok(Applied::Changed(_))));
        assert!(User::from_name(&name).unwrap().is_none());
        assert_eq!(apply_user(&gone, false), Ok(Applied::InPolicy));
        let gone = pb::GroupSpec {
            absent: true,
            ..group(&extra)
        };
        assert!(matches!(apply_group(&gone, false), Ok(Applied::Changed(_))));

        // A hostile name never reaches the tools as an option.
        let err = apply_user(
            &pb::UserSpec {
                name: "-o".into(),
                ..Default::default()
            },
            false,
        )
        .unwrap_err();
        assert!(err.contains("must start with a lowercase letter"), "{err}");
        let err = apply_user(
            &pb::UserSpec {
                name: name.clone(),
                home: "/x:0:0:".into(),
                ..Default::default()
            },
            false,
        )
        .unwrap_err();
        assert!(err.contains("without ':'"), "{err}");
    }
}
