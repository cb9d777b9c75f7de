//! `service` resources: systemd units through `systemctl`. Running state and boot state
//! are checked and changed apart; a refresh (a resource it subscribes to changed)
//! restarts a unit that is meant to run, once, unless this run just started it. On a
//! machine where systemd is not running, the resource fails and says so.

use std::path::Path;

use vigo_common::policy::checks;
use vigo_proto::v1 as pb;

use super::{Applied, Failure, Outcome, act, combine, run_tool, tool};

/// Present exactly when systemd is the running init (what `sd_booted()` checks).
const SYSTEMD_RUNTIME: &str = "/run/systemd/system";

/// Brings a unit to its states; `refresh` names the resource whose change asks for a
/// restart.
pub fn apply_service(spec: &pb::ServiceSpec, refresh: Option<&str>, dry_run: bool) -> Outcome {
    checks::unit_name(&spec.name)?;
    if !Path::new(SYSTEMD_RUNTIME).is_dir() {
        return Err(format!(
            "systemd is not running on this machine ({SYSTEMD_RUNTIME} is missing): service resources need systemd"
        ));
    }
    let unit = spec.name.as_str();
    let active = query(&["systemctl", "is-active", "--", unit])? == "active";
    let mut started = false;
    let run = match spec.state() {
        pb::RunState::Running if !active => {
            started = true;
            act(dry_run, "started".into(), || systemctl("start", unit))
        }
        pb::RunState::Stopped if active => {
            act(dry_run, "stopped".into(), || systemctl("stop", unit))
        }
        _ => Ok(Applied::InPolicy),
    };
    // A unit not installed yet (a dry run ahead of its package) answers on stderr only.
    let enabled = query(&["systemctl", "is-enabled", "--", unit])
        .unwrap_or_else(|_| "not installed".to_string());
    let boot = match (spec.boot(), enabled.as_str()) {
        (pb::BootState::Enabled, now) if now != "enabled" => {
            act(dry_run, format!("enabled (was {now})"), || {
                systemctl("enable", unit)
            })
        }
        (pb::BootState::Disabled, "enabled") => {
            act(dry_run, "disabled".into(), || systemctl("disable", unit))
        }
        _ => Ok(Applied::InPolicy),
    };
    let meant_to_run = match spec.state() {
        pb::RunState::Running => true,
        pb::RunState::Stopped => false,
        pb::RunState::Unmanaged => active,
    };
    let restart = match refresh {
        Some(why) if meant_to_run && !started => {
            act(dry_run, format!("restarted ({why} changed)"), || {
                systemctl("restart", unit)
            })
        }
        _ => Ok(Applied::InPolicy),
    };
    combine(vec![run, boot, restart])
}

/// systemctl's one-word answer; its exit status only says whether the answer is the
/// happy one.
fn query(argv: &[&str]) -> Result<String, Failure> {
    let ran = run_tool(argv, &[])?;
    let answer = ran.stdout.text().trim().to_string();
    if answer.is_empty() {
        return Err(format!(
            "`{}` gave no answer: {}",
            argv.join(" "),
            ran.message_tail()
        ));
    }
    Ok(answer)
}

fn systemctl(verb: &str, unit: &str) -> Result<(), Failure> {
    tool(&["systemctl", verb, "--", unit], &[]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_clearly_without_systemd_and_bad_names_always() {
        let spec = pb::ServiceSpec {
            name: "-H".into(),
            state: pb::RunState::Running as i32,
            boot: 0,
        };
        let err = apply_service(&spec, None, false).unwrap_err();
        assert!(err.contains("may not start with '-'"), "{err}");
        if Path::new(SYSTEMD_RUNTIME).is_dir() {
            return; // the refusal below is for machines without systemd
        }
        let spec = pb::ServiceSpec {
            name: "nginx".into(),
            ..spec
        };
        let err = apply_service(&spec, Some("web/conf"), false).unwrap_err();
        assert!(
            err.contains("systemd is not running on this machine"),
            "{err}"
        );
    }
}
