//! `package` resources through the system's package manager: dpkg/apt where dpkg is,
//! else rpm/dnf. Every package resource ready at one point of a run comes here at once:
//! one query for what is installed, one install call and one removal call for all of
//! them. When a batched call fails, each package of it is tried alone, so the failure
//! lands on the package that caused it. What the call did is read back from the
//! package database, never assumed from its exit status.

use std::collections::HashMap;

use vigo_common::policy::checks;
use vigo_proto::v1 as pb;

use super::{Applied, Failure, Outcome, on_path, run_tool, tool};

/// apt and dpkg must not ask questions, and keep the configuration files an operator
/// edited (a `file` resource manages those).
const APT_ENV: &[(&str, &str)] = &[("DEBIAN_FRONTEND", "noninteractive")];
const APT_INSTALL: &[&str] = &[
    "apt-get",
    "install",
    "-y",
    "-q",
    "--no-install-recommends",
    "--allow-downgrades",
    "-o",
    "DPkg::Lock::Timeout=120",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
    "--",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    Apt,
    Dnf,
}

impl Manager {
    /// The manager of this machine: dpkg with apt, else rpm with dnf.
    pub fn detect() -> Result<Manager, Failure> {
        if on_path("dpkg-query") && on_path("apt-get") {
            Ok(Manager::Apt)
        } else if on_path("rpm") && on_path("dnf") {
            Ok(Manager::Dnf)
        } else {
            Err("no supported package manager on this machine (looked for dpkg-query with apt-get, and rpm with dnf, on PATH)".into())
        }
    }

    /// Installed versions of `names` (those not installed are absent from the map).
    fn installed(self, names: &[&str]) -> Result<HashMap<String, String>, Failure> {
        let mut argv: Vec<&str> = match self {
            Manager::Apt => vec![
                "dpkg-query",
                "-W",
                "-f",
                "${Package}\t${db:Status-Abbrev}\t${Version}\n",
                "--",
            ],
            Manager::Dnf => vec![
                "rpm",
                "-q",
                "--qf",
                "%{NAME}\t-i-\t%{VERSION}-%{RELEASE}\n",
                "--",
            ],
        };
        argv.extend(names);
        // Both exit non-zero when a name is unknown, and still list the others.
        let ran = run_tool(&argv, &[])?;
        let mut out = HashMap::new();
        for line in ran.stdout.text().lines() {
            let mut f = line.split('\t');
            let (Some(name), Some(status), Some(version)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            // dpkg's second status letter: installed, or installed with triggers due.
            let installed = matches!(status.chars().nth(1), Some('i' | 'W' | 't'));
            if installed && !version.is_empty() {
                out.insert(name.to_string(), version.to_string());
            }
        }
        Ok(out)
    }

    /// The version the repositories offer for each of `names`.
    fn candidates(self, names: &[&str]) -> Result<HashMap<String, String>, Failure> {
        let mut out = HashMap::new();
        match self {
            Manager::Apt => {
                let mut argv = vec!["apt-cache", "policy", "--"];
                argv.extend(names);
                let text = tool(&argv, &[])?;
                let mut current = None;
                for line in text.lines() {
                    if !line.starts_with(' ') && line.ends_with(':') {
                        current = Some(line.trim_end_matches(':').to_string());
                    } else if let (Some(name), Some(v)) =
                        (&current, line.trim().strip_prefix("Candidate: "))
                        && v != "(none)"
                    {
                        out.insert(name.clone(), v.to_string());
                    }
                }
            }
            Manager::Dnf => {
                let mut argv = vec![
                    "dnf",
                    "-q",
                    "repoquery",
                    "--latest-limit",
                    "1",
                    "--qf",
                    "%{name}\t%{version}-%{release}\n",
                    "--",
                ];
                argv.extend(names);
                for line in tool(&argv, &[])?.lines() {
                    if let Some((n, v)) = line.split_once('\t') {
                        out.insert(n.to_string(), v.to_string());
                    }
                }
            }
        }
        Ok(out)
    }

    /// The package name and version inside a package file.
    fn file_info(self, path: &str) -> Result<(String, String), Failure> {
        match self {
            Manager::Apt => {
                let text = tool(&["dpkg-deb", "-f", "--", path, "Package", "Version"], &[])?;
                let field = |key: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(key))
                        .map(|v| v.trim().to_string())
                        .unwrap_or_default()
                };
                Ok((field("Package:"), field("Version:")))
            }
            Manager::Dnf => {
                let text = tool(
                    &[
                        "rpm",
                        "-qp",
                        "--qf",
                        "%{NAME}\t%{VERSION}-%{RELEASE}",
                        "--",
                        path,
                    ],
                    &[],
                )?;
                let (n, v) = text.trim().split_once('\t').unwrap_or(("", ""));
                Ok((n.to_string(), v.to_string()))
            }
        }
    }

    /// What to name a package with a version in an install call.
    fn pinned(self, name: &str, version: &str) -> String {
        match self {
            Manager::Apt => format!("{name}={version}"),
            Manager::Dnf => format!("{name}-{version}"),
        }
    }

    fn install(self, items: &[&str]) -> Result<String, Failure> {
        match self {
            Manager::Apt => tool(&[APT_INSTALL, items].concat(), APT_ENV),
            Manager::Dnf => tool(&[&["dnf", "-y", "install", "--"], items].concat(), &[]),
        }
    }

    fn remove(self, names: &[&str]) -> Result<String, Failure> {
        match self {
            Manager::Apt => {
                let argv = [
                    "apt-get",
                    "remove",
                    "-y",
                    "-q",
                    "-o",
                    "DPkg::Lock::Timeout=120",
                    "--",
                ];
                tool(&[&argv, names].concat(), APT_ENV)
            }
            Manager::Dnf => tool(&[&["dnf", "-y", "remove", "--"], names].concat(), &[]),
        }
    }
}

/// What one resource needs.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Nothing,
    /// Install this argument; afterwards the package holds `expect` (any version when
    /// empty).
    Install {
        item: String,
        expect: String,
        what: String,
    },
    Remove {
        what: String,
    },
}

/// Applies package resources together; one outcome per spec, in order.
pub fn apply_packages(specs: &[&pb::PackageSpec], dry_run: bool) -> Vec<Outcome> {
    let manager = match Manager::detect() {
        Ok(m) => m,
        Err(e) => return specs.iter().map(|_| Err(e.clone())).collect(),
    };
    apply_with(manager, specs, dry_run)
}

fn apply_with(m: Manager, specs: &[&pb::PackageSpec], dry_run: bool) -> Vec<Outcome> {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let installed = match names.iter().try_for_each(|n| checks::package_name(n)) {
        Ok(()) => m.installed(&names),
        Err(e) => Err(e),
    };
    let installed = match installed {
        Ok(i) => i,
        Err(e) => return specs.iter().map(|_| Err(e.clone())).collect(),
    };
    let latest: Vec<&str> = specs
        .iter()
        .filter(|s| s.state() == pb::PackageState::Latest)
        .map(|s| s.name.as_str())
        .collect();
    let candidates = if latest.is_empty() {
        Ok(HashMap::new())
    } else {
        m.candidates(&latest)
    };
    let steps: Vec<Result<Step, Failure>> = specs
        .iter()
        .map(|s| decide(m, s, installed.get(&s.name), &candidates))
        .collect();
    if dry_run {
        return steps
            .into_iter()
            .map(|s| {
                s.map(|step| match step {
                    Step::Nothing => Applied::InPolicy,
                    Step::Install { what, .. } | Step::Remove { what } => {
                        Applied::WouldChange(what)
                    }
                })
            })
            .collect();
    }
    let mut errors: HashMap<usize, Failure> = HashMap::new();
    let installs: Vec<(usize, &str)> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Ok(Step::Install { item, .. }) => Some((i, item.as_str())),
            _ => None,
        })
        .collect();
    let removals: Vec<(usize, &str)> = steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| matches!(s, Ok(Step::Remove { .. })).then_some((i, names[i])))
        .collect();
    call_batched(&installs, |items| m.install(items), &mut errors);
    call_batched(&removals, |items| m.remove(items), &mut errors);
    let after = m.installed(&names);
    steps
        .into_iter()
        .enumerate()
        .map(|(i, step)| {
            let step = step?;
            if let Some(e) = errors.remove(&i) {
                return Err(e);
            }
            let after = after.as_ref().map_err(Clone::clone)?;
            let now = after.get(names[i]);
            match step {
                Step::Nothing => Ok(Applied::InPolicy),
                Step::Install { expect, what, .. } => match now {
                    Some(v) if expect.is_empty() || *v == expect => Ok(Applied::Changed(what)),
                    other => Err(format!(
                        "the package manager succeeded, yet {} is {}",
                        names[i],
                        other.map_or("not installed".to_string(), |v| format!(
                            "at {v}, not {expect}"
                        ))
                    )),
                },
                Step::Remove { what } => match now {
                    None => Ok(Applied::Changed(what)),
                    Some(v) => Err(format!(
                        "the package manager succeeded, yet {} {v} is still installed",
                        names[i]
                    )),
                },
            }
        })
        .collect()
}

/// One call for every item; if it fails and held more than one, one call per item, so
/// each failure is told to the package that caused it.
fn call_batched(
    items: &[(usize, &str)],
    call: impl Fn(&[&str]) -> Result<String, Failure>,
    errors: &mut HashMap<usize, Failure>,
) {
    if items.is_empty() {
        return;
    }
    let all: Vec<&str> = items.iter().map(|(_, item)| *item).collect();
    match call(&all) {
        Ok(_) => {}
        Err(e) if items.len() == 1 => {
            errors.insert(items[0].0, e);
        }
        Err(_) => {
            for (i, item) in items {
                if let Err(e) = call(&[item]) {
                    errors.insert(*i, e);
                }
            }
        }
    }
}

/// What a spec needs, given the version installed now.
fn decide(
    m: Manager,
    spec: &pb::PackageSpec,
    installed: Option<&String>,
    candidates: &Result<HashMap<String, String>, Failure>,
) -> Result<Step, Failure> {
    let name = spec.name.as_str();
    let install = |item: String, expect: String, what: String| Step::Install { item, expect, what };
    // A package file names its own version; a pin must agree with it.
    let (file_item, file_version) = if spec.source.is_empty() {
        (None, None)
    } else {
        if !spec.source.starts_with('/') {
            return Err(format!("source {:?} is not an absolute path", spec.source));
        }
        // The package manager reads a copy no other user can touch.
        let staged = super::staged::stage(&spec.source)?;
        let (file_name, version) = m.file_info(&staged)?;
        if file_name != name {
            return Err(format!(
                "{} holds package {file_name:?}, not {name:?}",
                spec.source
            ));
        }
        (Some(staged), Some(version))
    };
    Ok(match spec.state() {
        pb::PackageState::Absent => match installed {
            Some(v) => Step::Remove {
                what: format!("removed (was {v})"),
            },
            None => Step::Nothing,
        },
        pb::PackageState::Present | pb::PackageState::Unspecified => {
            match (installed, file_version) {
                (Some(_), _) => Step::Nothing,
                (None, v) => install(
                    file_item.unwrap_or_else(|| name.to_string()),
                    v.clone().unwrap_or_default(),
                    format!(
                        "installed{}",
                        v.map(|v| format!(" {v}")).unwrap_or_default()
                    ),
                ),
            }
        }
        pb::PackageState::Latest => {
            let candidates = candidates.as_ref().map_err(Clone::clone)?;
            let Some(want) = candidates.get(name) else {
                return Err(format!(
                    "no version of {name} in the configured repositories"
                ));
            };
            match installed {
                Some(v) if v == want => Step::Nothing,
                Some(v) => install(name.into(), want.clone(), format!("upgraded {v} -> {want}")),
                None => install(name.into(), want.clone(), format!("installed {want}")),
            }
        }
        pb::PackageState::Pinned => {
            checks::package_version(&spec.version)?;
            let want = spec.version.clone();
            if let Some(v) = file_version.filter(|v| *v != want) {
                return Err(format!(
                    "{} has version {v}, not the pinned {want}",
                    spec.source
                ));
            }
            match installed {
                Some(v) if *v == want => Step::Nothing,
                now => install(
                    file_item.unwrap_or_else(|| m.pinned(name, &want)),
                    want.clone(),
                    match now {
                        Some(v) => format!("{v} -> {want} (pinned)"),
                        None => format!("installed {want} (pinned)"),
                    },
                ),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a package file with dpkg-deb; `fail_install` gives it a preinst that fails.
    fn deb(dir: &std::path::Path, name: &str, version: &str, fail_install: bool) -> String {
        let root = dir.join(format!("{name}-{version}"));
        std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(root.join("usr/share/doc").join(name)).unwrap();
        std::fs::write(
            root.join("usr/share/doc").join(name).join("version"),
            version,
        )
        .unwrap();
        std::fs::write(
            root.join("DEBIAN/control"),
            format!(
                "Package: {name}\nVersion: {version}\nArchitecture: all\n\
                 Maintainer: Vigo tests <tests@vigo.invalid>\nDescription: test fixture\n"
            ),
        )
        .unwrap();
        if fail_install {
            use std::os::unix::fs::PermissionsExt;
            let script = root.join("DEBIAN/preinst");
            std::fs::write(&script, "#!/bin/sh\necho refusing to install >&2\nexit 1\n").unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = dir.join(format!("{name}_{version}_all.deb"));
        let built = std::process::Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&root)
            .arg(&out)
            .output()
            .unwrap();
        assert!(built.status.success(), "{built:?}");
        out.to_string_lossy().into_owned()
    }

    /// Fixture packages are purged however the test ends.
    struct Purge(Vec<String>);

    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = std::process::Command::new("dpkg")
                .arg("--purge")
                .args(&self.0)
                .output();
        }
    }

    fn spec(name: &str, state: pb::PackageState, version: &str, source: &str) -> pb::PackageSpec {
        pb::PackageSpec {
            name: name.into(),
            state: state as i32,
            version: version.into(),
            source: source.into(),
        }
    }

    /// apt's own record of its calls: the command lines that mention `name`.
    fn apt_calls_naming(name: &str) -> Vec<String> {
        std::fs::read_to_string("/var/log/apt/history.log")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("Commandline:") && l.contains(name))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn packages_install_pin_and_remove_in_batches_with_the_real_dpkg() {
        if Manager::detect() != Ok(Manager::Apt) || !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root, dpkg and apt-get");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tag = std::process::id();
        let (a, b, bad) = (
            format!("vigo-fixture-a{tag}"),
            format!("vigo-fixture-b{tag}"),
            format!("vigo-fixture-bad{tag}"),
        );
        let _purge = Purge(vec![a.clone(), b.clone(), bad.clone()]);
        let a1 = deb(dir.path(), &a, "1.0-1", false);
        let a2 = deb(dir.path(), &a, "2.0-1", false);
        let b1 = deb(dir.path(), &b, "1.0-1", false);
        let bad1 = deb(dir.path(), &bad, "1.0-1", true);
        use pb::PackageState::*;

        // Dry run: says what it would do and installs nothing.
        let want = [spec(&a, Present, "", &a1), spec(&b, Pinned, "1.0-1", &b1)];
        let refs: Vec<&pb::PackageSpec> = want.iter().collect();
        assert_eq!(
            apply_packages(&refs, true),
            [
                Ok(Applied::WouldChange("installed 1.0-1".into())),
                Ok(Applied::WouldChange("installed 1.0-1 (pinned)".into()))
            ]
        );
        assert!(Manager::Apt.installed(&[&a]).unwrap().is_empty());

        // Two packages, one apt call naming both.
        let calls_before = apt_calls_naming(&a).len();
        let got = apply_packages(&refs, false);
        assert!(
            got.iter().all(|o| matches!(o, Ok(Applied::Changed(_)))),
            "{got:?}"
        );
        let calls = apt_calls_naming(&a);
        assert_eq!(calls.len() - calls_before, 1, "{calls:?}");
        assert!(calls.last().unwrap().contains(&b), "{calls:?}");
        assert_eq!(
            apply_packages(&refs, false),
            [Ok(Applied::InPolicy), Ok(Applied::InPolicy)]
        );

        // A pin moves the version; a pin that disagrees with its file is refused.
        let pin = spec(&a, Pinned, "2.0-1", &a2);
        assert_eq!(
            apply_packages(&[&pin], false),
            [Ok(Applied::Changed("1.0-1 -> 2.0-1 (pinned)".into()))]
        );
        let wrong = spec(&a, Pinned, "3.0-1", &a2);
        let err = apply_packages(&[&wrong], false).pop().unwrap().unwrap_err();
        assert!(
            err.contains("has version 2.0-1, not the pinned 3.0-1"),
            "{err}"
        );
        let other = spec(&b, Present, "", &a2);
        let err = apply_packages(&[&other], false).pop().unwrap().unwrap_err();
        assert!(err.contains(&format!("holds package \"{a}\"")), "{err}");

        // A batch holding a package whose install fails: each is tried alone, the
        // failure lands on the one that caused it and the others are done.
        let mixed = [
            spec(&a, Absent, "", ""),
            spec(&bad, Present, "", &bad1),
            spec(&b, Absent, "", ""),
        ];
        let refs: Vec<&pb::PackageSpec> = mixed.iter().collect();
        let got = apply_packages(&refs, false);
        assert_eq!(got[0], Ok(Applied::Changed("removed (was 2.0-1)".into())));
        let err = got[1].clone().unwrap_err();
        assert!(err.contains("refusing to install"), "{err}");
        assert_eq!(got[2], Ok(Applied::Changed("removed (was 1.0-1)".into())));
        assert!(Manager::Apt.installed(&[&a, &b, &bad]).unwrap().is_empty());

        // Latest of a package no repository has, and a name that is an option.
        let latest = spec(&format!("vigo-nowhere{tag}"), Latest, "", "");
        let err = apply_packages(&[&latest], false)
            .pop()
            .unwrap()
            .unwrap_err();
        assert!(err.contains("no version of vigo-nowhere"), "{err}");
        let hostile = spec("--force-all", Present, "", "");
        let err = apply_packages(&[&hostile], false)
            .pop()
            .unwrap()
            .unwrap_err();
        assert!(err.contains("may not start with '-'"), "{err}");
    }
}
