//! Running an admitted task's `exec` or `query` action (applying a configcrate and
//! refreshing traits go through the agent's own run and trait collection). An exec
//! runs as the executors run commands: a process group of its own, killed whole at its
//! timeout, each output stream kept to its last 64 KiB with the rest counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vigo_common::traits::TraitMap;
use vigo_proto::v1 as pb;

use super::collect::{self, MAX_COLLECTORS, Row};
use crate::agent::executors::exec::{Program, RunError, run_stoppable};

/// A task that names no timeout gets this one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a task may run, whatever it asks.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Ok,
    Failed,
    TimedOut,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Ok => "ok",
            TaskStatus::Failed => "failed",
            TaskStatus::TimedOut => "timed_out",
        }
    }
}

/// What running a task gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    pub status: TaskStatus,
    /// The program's exit code (exec).
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Output bytes dropped beyond the 64 KiB kept of each stream.
    pub output_dropped: u64,
    /// One per collector (query).
    pub rows: Vec<Row>,
    /// Why it failed, when it did.
    pub message: String,
    pub duration: Duration,
}

impl TaskOutcome {
    fn new(status: TaskStatus, message: String, started: Instant) -> Self {
        Self {
            status,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            output_dropped: 0,
            rows: Vec::new(),
            message,
            duration: started.elapsed(),
        }
    }
}

/// The timeout a task gets: its own, else the default, never above the maximum.
pub fn timeout_of(body: &pb::TaskBody) -> Duration {
    match body.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)).min(MAX_TIMEOUT),
    }
}

/// Runs an exec action: the program and its arguments, or one line through `/bin/sh -c`
/// when `shell`, with `env` added to the agent's environment; killed when `stop` is set.
pub fn run_exec(
    action: &pb::ExecAction,
    timeout: Duration,
    env: &BTreeMap<String, String>,
    stop: &std::sync::atomic::AtomicBool,
) -> TaskOutcome {
    let started = Instant::now();
    let line;
    let program = if action.shell {
        line = action.argv.join(" ");
        Program::Shell(&line)
    } else {
        Program::Argv(&action.argv)
    };
    match run_stoppable(program, timeout, env, stop) {
        Ok(ran) => TaskOutcome {
            status: if ran.success() {
                TaskStatus::Ok
            } else {
                TaskStatus::Failed
            },
            exit_code: ran.status.code(),
            message: if ran.success() {
                String::new()
            } else {
                format!("exited with {}", ran.status)
            },
            output_dropped: ran.stdout.dropped + ran.stderr.dropped,
            stdout: ran.stdout.text(),
            stderr: ran.stderr.text(),
            rows: Vec::new(),
            duration: started.elapsed(),
        },
        Err(e @ RunError::TimedOut { .. }) => {
            TaskOutcome::new(TaskStatus::TimedOut, e.to_string(), started)
        }
        Err(e) => TaskOutcome::new(TaskStatus::Failed, e.to_string(), started),
    }
}

/// Answers a query: one row per collector. It fails as a whole only when it asks too
/// much; a collector that cannot answer says why in its row.
pub fn run_query(action: &pb::QueryAction, traits: &TraitMap) -> TaskOutcome {
    let started = Instant::now();
    if action.collectors.is_empty() || action.collectors.len() > MAX_COLLECTORS {
        let why = format!(
            "a query asks 1 to {MAX_COLLECTORS} collectors, not {}",
            action.collectors.len()
        );
        return TaskOutcome::new(TaskStatus::Failed, why, started);
    }
    let rows = action
        .collectors
        .iter()
        .map(|c| collect::collect(c, traits))
        .collect();
    TaskOutcome {
        rows,
        ..TaskOutcome::new(TaskStatus::Ok, String::new(), started)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn exec(argv: &[&str], shell: bool, timeout: Duration) -> TaskOutcome {
        let action = pb::ExecAction {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            shell,
        };
        run_exec(
            &action,
            timeout,
            &BTreeMap::new(),
            &std::sync::atomic::AtomicBool::new(false),
        )
    }

    fn query(collectors: &[&str]) -> Vec<Row> {
        let traits = TraitMap::from([("os".to_string(), "debian".to_string())]);
        let action = pb::QueryAction {
            collectors: collectors.iter().map(|c| c.to_string()).collect(),
        };
        let outcome = run_query(&action, &traits);
        assert_eq!(outcome.status, TaskStatus::Ok, "{}", outcome.message);
        outcome.rows
    }

    fn field<'a>(row: &'a Row, key: &str) -> &'a str {
        row.fields.get(key).map_or("", |v| v.as_str())
    }

    const SECOND: Duration = Duration::from_secs(5);

    #[test]
    fn exec_runs_argv_without_a_shell_unless_asked() {
        let plain = exec(&["echo", "$HOME;", "rm", "-rf", "x"], false, SECOND);
        assert_eq!(plain.status, TaskStatus::Ok);
        assert_eq!(
            plain.stdout, "$HOME; rm -rf x\n",
            "no shell expanded or split it"
        );
        let shell = exec(&["echo $((1 + 2))"], true, SECOND);
        assert_eq!(shell.stdout, "3\n");
    }

    #[test]
    fn exec_reports_exit_code_streams_timeout_and_a_missing_program() {
        let failed = exec(
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            SECOND,
        );
        assert_eq!(
            (failed.status, failed.exit_code),
            (TaskStatus::Failed, Some(3))
        );
        assert_eq!(
            (failed.stdout.as_str(), failed.stderr.as_str()),
            ("out\n", "err\n")
        );
        let slow = exec(&["sleep", "5"], false, Duration::from_millis(200));
        assert_eq!(slow.status, TaskStatus::TimedOut, "{}", slow.message);
        assert!(
            slow.duration < Duration::from_secs(5),
            "killed at its timeout"
        );
        let missing = exec(&["/nonexistent/vigo-task"], false, SECOND);
        assert_eq!(missing.status, TaskStatus::Failed);
        assert!(
            missing.message.contains("cannot start"),
            "{}",
            missing.message
        );
        assert_eq!(exec(&[], false, SECOND).status, TaskStatus::Failed);
    }

    #[test]
    fn exec_output_is_capped_per_stream_and_the_rest_counted() {
        let big = exec(&["head -c 200000 /dev/zero | tr '\\0' x"], true, SECOND);
        assert_eq!(big.status, TaskStatus::Ok);
        assert_eq!(big.stdout.len(), 64 << 10);
        assert_eq!(big.output_dropped, 200_000 - (64 << 10));
    }

    #[test]
    fn timeouts_default_and_are_capped() {
        let body = |ms| pb::TaskBody {
            timeout_ms: ms,
            ..Default::default()
        };
        assert_eq!(timeout_of(&body(0)), DEFAULT_TIMEOUT);
        assert_eq!(timeout_of(&body(1_500)), Duration::from_millis(1_500));
        assert_eq!(timeout_of(&body(u32::MAX)), MAX_TIMEOUT);
    }

    #[test]
    fn the_file_collector_reads_without_following_links_or_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.conf");
        std::fs::write(&file, b"listen 80;\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let path = |p: &std::path::Path| format!("file:{}", p.display());
        let rows = query(&[
            &path(&file),
            &path(&link),
            &path(&fifo),
            &path(&dir.path().join("absent")),
            "file:relative/path",
        ]);
        assert_eq!(field(&rows[0], "type"), "file");
        assert_eq!(field(&rows[0], "size"), "11");
        assert_eq!(field(&rows[0], "mode"), "0640");
        assert_eq!(
            field(&rows[0], "sha256"),
            hex::encode(vigo_common::traits::sha256(b"listen 80;\n"))
        );
        assert_eq!(field(&rows[1], "type"), "symlink");
        assert_eq!(field(&rows[1], "target"), file.display().to_string());
        assert_eq!(field(&rows[1], "sha256"), "", "a link is not followed");
        assert_eq!(field(&rows[2], "type"), "fifo", "a FIFO is not opened");
        assert_eq!(field(&rows[3], "exists"), "false");
        assert!(rows[4].error.as_deref().unwrap_or("").contains("absolute"));
    }

    #[test]
    fn package_and_service_names_are_never_options_or_shell() {
        for bad in [
            "package:--help",
            "package:a;b",
            "service:-x",
            "package:",
            "service:a b",
        ] {
            let rows = query(&[bad]);
            assert!(rows[0].error.is_some(), "{bad} refused");
            assert!(rows[0].fields.is_empty());
        }
    }

    #[test]
    fn the_package_collector_asks_the_real_package_manager() {
        let rows = query(&["package:dpkg", "package:vigo-no-such-package"]);
        if !super::collect::on_path("dpkg-query") {
            // Not a Debian-like machine: the refusal says so.
            assert!(
                rows[0]
                    .error
                    .as_deref()
                    .unwrap_or("")
                    .contains("package manager")
            );
            return;
        }
        assert_eq!(field(&rows[0], "manager"), "dpkg");
        assert_eq!(field(&rows[0], "installed"), "true");
        assert!(!field(&rows[0], "version").is_empty());
        assert_eq!(field(&rows[1], "installed"), "false");
    }

    #[test]
    fn the_service_collector_needs_systemd_and_says_so() {
        let rows = query(&["service:systemd-journald"]);
        if std::path::Path::new("/run/systemd/system").is_dir() {
            assert_eq!(rows[0].error, None);
            assert!(!field(&rows[0], "active").is_empty());
        } else {
            assert_eq!(
                rows[0].error.as_deref(),
                Some("systemd is not running on this machine")
            );
        }
    }

    #[test]
    fn traits_unknown_collectors_and_oversized_queries() {
        let rows = query(&["trait:os", "trait:nope", "query:disk", "shell:ls"]);
        assert_eq!(field(&rows[0], "value"), "debian");
        assert!(rows[1].error.is_some());
        assert!(rows[2].error.is_some());
        assert!(
            rows[3]
                .error
                .as_deref()
                .unwrap_or("")
                .contains("unknown collector")
        );
        let many = pb::QueryAction {
            collectors: vec!["trait:os".into(); MAX_COLLECTORS + 1],
        };
        assert_eq!(
            run_query(&many, &TraitMap::new()).status,
            TaskStatus::Failed
        );
    }
}
