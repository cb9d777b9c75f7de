//! `exec`: a command, guarded by `creates`, `unless` and `onlyif` so it runs only when
//! needed. Guards are checks and run even in a dry run; the command itself never does.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Applied, Outcome, act};

/// Commands without a timeout in the policy get this one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Output kept in a report message.
const OUTPUT_TAIL: usize = 512;

/// The rendered pieces of an exec resource.
pub struct ExecPlan<'a> {
    pub command: &'a str,
    pub creates: &'a str,
    pub unless: &'a str,
    pub onlyif: &'a str,
    pub timeout: Duration,
    pub environment: &'a BTreeMap<String, String>,
}

pub fn apply_exec(plan: &ExecPlan<'_>, dry_run: bool) -> Outcome {
    if !plan.creates.is_empty() && std::path::Path::new(plan.creates).exists() {
        return Ok(Applied::InPolicy);
    }
    if !plan.unless.is_empty() && run(plan.unless, plan)?.success {
        return Ok(Applied::InPolicy);
    }
    if !plan.onlyif.is_empty() && !run(plan.onlyif, plan)?.success {
        return Ok(Applied::InPolicy);
    }
    act(dry_run, format!("would run: {}", plan.command), || {
        let done = run(plan.command, plan)?;
        if done.success {
            Ok(())
        } else {
            Err(format!(
                "command exited with {}: {}",
                done.status, done.output
            ))
        }
    })
    .map(|a| match a {
        Applied::Changed(_) => Applied::Changed(format!("ran: {}", plan.command)),
        other => other,
    })
}

struct Ran {
    success: bool,
    status: String,
    output: String,
}

/// Runs `sh -c command` with the plan's environment, killing it at the timeout.
fn run(command: &str, plan: &ExecPlan<'_>) -> Result<Ran, String> {
    let mut child = Command::new("/bin/sh")
        // Its own process group, so a timeout kills everything the command started.
        .process_group(0)
        .arg("-c")
        .arg(command)
        .envs(plan.environment)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    // Drain both pipes while the command runs: a command writing more than a pipe
    // buffer would otherwise block forever.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                text = String::from_utf8_lossy(&buf).into_owned();
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("wait: {e}"))? {
            break status;
        }
        if started.elapsed() > plan.timeout {
            // SAFETY: signals the process group this function created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Err(format!("{command:?} timed out after {:?}", plan.timeout));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut output = stdout.join().unwrap_or_default();
    output.push_str(&stderr.join().unwrap_or_default());
    let tail_start = output.len().saturating_sub(OUTPUT_TAIL);
    let tail_start = (tail_start..output.len())
        .find(|i| output.is_char_boundary(*i))
        .unwrap_or(output.len());
    Ok(Ran {
        success: status.success(),
        status: status.to_string(),
        output: output[tail_start..].trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan<'a>(
        command: &'a str,
        creates: &'a str,
        env: &'a BTreeMap<String, String>,
    ) -> ExecPlan<'a> {
        ExecPlan {
            command,
            creates,
            unless: "",
            onlyif: "",
            timeout: Duration::from_secs(5),
            environment: env,
        }
    }

    #[test]
    fn creates_guard_makes_it_idempotent_and_dry_run_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("done").to_string_lossy().into_owned();
        let env = BTreeMap::from([("MARK".to_string(), marker.clone())]);
        let cmd = "echo ran > \"$MARK\"";
        assert!(matches!(
            apply_exec(&plan(cmd, &marker, &env), true),
            Ok(Applied::WouldChange(_))
        ));
        assert!(!std::path::Path::new(&marker).exists());
        assert!(matches!(
            apply_exec(&plan(cmd, &marker, &env), false),
            Ok(Applied::Changed(_))
        ));
        assert_eq!(
            apply_exec(&plan(cmd, &marker, &env), false),
            Ok(Applied::InPolicy)
        );
    }

    #[test]
    fn unless_and_onlyif_guard_the_command() {
        let env = BTreeMap::new();
        let mut p = plan("exit 3", "", &env);
        p.unless = "true";
        assert_eq!(apply_exec(&p, false), Ok(Applied::InPolicy));
        p.unless = "";
        p.onlyif = "false";
        assert_eq!(apply_exec(&p, false), Ok(Applied::InPolicy));
        p.onlyif = "true";
        let err = apply_exec(&p, false).unwrap_err();
        assert!(err.contains("exit status: 3"), "{err}");
    }

    #[test]
    fn a_chatty_command_does_not_block_on_its_pipe() {
        let env = BTreeMap::new();
        let p = plan(
            "head -c 300000 /dev/zero | tr '\\0' x; echo; echo done >&2",
            "",
            &env,
        );
        assert!(matches!(apply_exec(&p, false), Ok(Applied::Changed(_))));
    }

    #[test]
    fn a_hung_command_is_killed_at_its_timeout() {
        let env = BTreeMap::new();
        let mut p = plan("sleep 30", "", &env);
        p.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let err = apply_exec(&p, false).unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
