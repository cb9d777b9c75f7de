//! `exec`: a command, guarded by `creates`, `unless` and `onlyif` so it runs only when
//! needed. Guards are checks and run even in a dry run; the command itself never does.
//!
//! A command runs as `sh -c` in a process group of its own, with the resource's
//! environment added to the agent's (minus the agent's own `VIGO_*` settings). Its
//! timeout covers the whole group: at the deadline every process in it is killed. Its
//! output is read as it comes, keeping the last [`OUTPUT_LIMIT`] bytes of each stream
//! and counting the rest; once the shell has exited, output still held open by a process
//! it left in the background is read for [`OUTPUT_GRACE`] at most, so a daemon started
//! by a command never holds the agent.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{Applied, Outcome, act};

/// Commands without a timeout in the policy get this one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Output kept per stream (stdout, stderr); older output is dropped and counted.
pub const OUTPUT_LIMIT: usize = 64 << 10;
/// How long output is still read after the shell exited.
pub const OUTPUT_GRACE: Duration = Duration::from_millis(500);
/// Output quoted in a report message.
const MESSAGE_TAIL: usize = 512;
/// How often a running command is checked for having exited.
const TICK: Duration = Duration::from_millis(20);

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
    if !plan.unless.is_empty() && run(plan.unless, plan)?.success() {
        return Ok(Applied::InPolicy);
    }
    if !plan.onlyif.is_empty() && !run(plan.onlyif, plan)?.success() {
        return Ok(Applied::InPolicy);
    }
    act(dry_run, format!("would run: {}", plan.command), || {
        let done = run(plan.command, plan)?;
        if done.success() {
            Ok(())
        } else {
            Err(format!(
                "command exited with {}: {}",
                done.status,
                done.message_tail()
            ))
        }
    })
    .map(|a| match a {
        Applied::Changed(_) => Applied::Changed(format!("ran: {}", plan.command)),
        other => other,
    })
}

/// The last [`OUTPUT_LIMIT`] bytes of one output stream, and how many came before them.
#[derive(Debug, Default)]
pub struct Captured {
    kept: VecDeque<u8>,
    pub dropped: u64,
}

impl Captured {
    fn push(&mut self, bytes: &[u8]) {
        self.kept.extend(bytes);
        let over = self.kept.len().saturating_sub(OUTPUT_LIMIT);
        if over > 0 {
            self.kept.drain(..over);
            self.dropped += over as u64;
        }
    }

    pub fn text(&self) -> String {
        let (a, b) = self.kept.as_slices();
        String::from_utf8_lossy(&[a, b].concat()).into_owned()
    }
}

/// A command that ran to its end.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: Captured,
    pub stderr: Captured,
    /// A background process still held the output open when reading stopped.
    pub output_left_open: bool,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The end of the combined output, for a report message.
    pub fn message_tail(&self) -> String {
        let mut output = self.stdout.text();
        output.push_str(&self.stderr.text());
        let start = output.len().saturating_sub(MESSAGE_TAIL);
        let start = (start..output.len())
            .find(|i| output.is_char_boundary(*i))
            .unwrap_or(output.len());
        let dropped = self.stdout.dropped + self.stderr.dropped;
        let mut tail = output[start..].trim().to_string();
        if dropped > 0 {
            tail.push_str(&format!(" ({dropped} earlier bytes of output dropped)"));
        }
        if self.output_left_open {
            tail.push_str(" (a background process kept the output open; stopped reading)");
        }
        tail
    }
}

/// Runs `sh -c command` with the plan's environment; see the module documentation for
/// the timeout and output rules.
pub fn run(command: &str, plan: &ExecPlan<'_>) -> Result<Ran, String> {
    run_program(Program::Shell(command), plan.timeout, plan.environment).map_err(|e| e.to_string())
}

/// What to start: a shell command line, or a program and its arguments (no shell).
#[derive(Clone, Copy, Debug)]
pub enum Program<'a> {
    Shell(&'a str),
    /// `argv[0]` is looked up on the agent's PATH.
    Argv(&'a [String]),
}

/// Why a program has no exit status to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {0}")]
    Start(String),
    #[error("{program} timed out after {timeout:?}")]
    TimedOut { program: String, timeout: Duration },
    #[error("{program} was stopped: its task was cancelled")]
    Stopped { program: String },
}

/// Runs `program` in a process group of its own, with `environment` added to the
/// agent's; the module documentation has the timeout and output rules.
pub fn run_program(
    program: Program<'_>,
    timeout: Duration,
    environment: &BTreeMap<String, String>,
) -> Result<Ran, RunError> {
    run_stoppable(program, timeout, environment, &AtomicBool::new(false))
}

/// As [`run_program`]; the whole group is killed as soon as `stop` is set (a task
/// cancelled while it runs).
pub fn run_stoppable(
    program: Program<'_>,
    timeout: Duration,
    environment: &BTreeMap<String, String>,
    stop: &AtomicBool,
) -> Result<Ran, RunError> {
    let (mut cmd, shown) = match program {
        Program::Shell(line) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(line);
            (cmd, format!("{line:?}"))
        }
        Program::Argv([first, rest @ ..]) => {
            let mut cmd = Command::new(first);
            cmd.args(rest);
            (cmd, format!("{first:?}"))
        }
        Program::Argv([]) => return Err(RunError::Start("an empty command".into())),
    };
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VIGO_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(environment);
    let mut child = cmd
        .spawn()
        .map_err(|e| RunError::Start(format!("{shown}: {e}")))?;
    let deadline = Instant::now() + timeout;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut reader = Reader::new(stdout, stderr);
    let mut exited: Option<(ExitStatus, Instant)> = None;
    loop {
        let now = Instant::now();
        if exited.is_none() {
            let status = child
                .try_wait()
                .map_err(|e| RunError::Start(format!("{shown}: wait: {e}")))?;
            if let Some(status) = status {
                exited = Some((status, (now + OUTPUT_GRACE).min(deadline.max(now))));
            } else if stop.load(Ordering::Relaxed) {
                kill_group(&mut child);
                return Err(RunError::Stopped { program: shown });
            } else if now >= deadline {
                kill_group(&mut child);
                return Err(RunError::TimedOut {
                    program: shown,
                    timeout,
                });
            }
        }
        if let Some((status, stop_reading)) = exited
            && (reader.done() || now >= stop_reading)
        {
            return Ok(Ran {
                status,
                output_left_open: !reader.done(),
                stdout: reader.out,
                stderr: reader.err,
            });
        }
        reader.read_for(TICK);
    }
}

fn kill_group(child: &mut Child) {
    // The group this function created: the shell and everything it started.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
}

/// Both output pipes of a command, read without blocking past a tick.
struct Reader {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    out: Captured,
    err: Captured,
}

impl Reader {
    fn new(stdout: Option<ChildStdout>, stderr: Option<ChildStderr>) -> Self {
        Self {
            stdout,
            stderr,
            out: Captured::default(),
            err: Captured::default(),
        }
    }

    /// Every writer of both pipes is gone.
    fn done(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }

    /// Waits up to `tick` for output and takes what there is.
    fn read_for(&mut self, tick: Duration) {
        let ready = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(2);
            if let Some(p) = &self.stdout {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            if let Some(p) = &self.stderr {
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            if fds.is_empty() {
                std::thread::sleep(tick);
                return;
            }
            let timeout = PollTimeout::try_from(tick).unwrap_or(PollTimeout::MAX);
            if poll(&mut fds, timeout).is_err() {
                return;
            }
            fds.iter()
                .map(|f| f.any().unwrap_or(false))
                .collect::<Vec<_>>()
        };
        let mut ready = ready.into_iter();
        if self.stdout.is_some() && ready.next() == Some(true) {
            drain(&mut self.stdout, &mut self.out);
        }
        if self.stderr.is_some() && ready.next() == Some(true) {
            drain(&mut self.stderr, &mut self.err);
        }
    }
}

/// Reads what one ready pipe holds (one read: poll said it would not block); at end of
/// file the pipe is closed.
fn drain<R: Read>(pipe: &mut Option<R>, into: &mut Captured) {
    let Some(p) = pipe else { return };
    let mut buf = [0u8; 16 << 10];
    match p.read(&mut buf) {
        Ok(0) | Err(_) => *pipe = None,
        Ok(n) => into.push(&buf[..n]),
    }
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

    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    fn pid_in(path: &std::path::Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// A daemon started by a command keeps the output pipes open: the run ends when
    /// the shell does (plus a short grace), not when the daemon does.
    #[test]
    fn a_background_process_holding_the_output_does_not_hold_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let env = BTreeMap::from([("PIDFILE".to_string(), pidfile.to_string_lossy().into())]);
        // setsid: outside the command's process group, as a daemon would be.
        let cmd = "setsid sleep 1000 & echo $! > \"$PIDFILE\"; echo started";
        let mut p = plan(cmd, "", &env);
        p.timeout = Duration::from_secs(600);
        let ran = run(cmd, &p).expect("the shell exits at once");
        assert!(ran.success());
        assert!(ran.output_left_open);
        assert_eq!(ran.stdout.text(), "started\n");
        let daemon = pid_in(&pidfile);
        assert!(alive(daemon), "the daemon is left running");
        unsafe { libc::kill(daemon, libc::SIGKILL) };
    }

    #[test]
    fn the_timeout_kills_everything_the_command_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let env = BTreeMap::from([("PIDFILE".to_string(), pidfile.to_string_lossy().into())]);
        let cmd = "sleep 1000 & echo $! > \"$PIDFILE\"; sleep 1000";
        let mut p = plan(cmd, "", &env);
        p.timeout = Duration::from_millis(300);
        let err = apply_exec(&p, false).unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        let child = pid_in(&pidfile);
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            !alive(child)
        });
        assert!(
            gone,
            "the background sleep of the command was killed with it"
        );
    }

    #[test]
    fn output_is_bounded_and_what_is_dropped_is_counted() {
        let env = BTreeMap::new();
        let cmd = "head -c 1048576 /dev/zero | tr '\\0' x; echo tail-marker >&2; exit 1";
        let ran = run(cmd, &plan(cmd, "", &env)).unwrap();
        assert!(!ran.success());
        assert_eq!(ran.stdout.text().len(), OUTPUT_LIMIT);
        assert_eq!(ran.stdout.dropped, (1 << 20) - OUTPUT_LIMIT as u64);
        assert_eq!(ran.stderr.text(), "tail-marker\n");
        let err = apply_exec(&plan(cmd, "", &env), false).unwrap_err();
        assert!(err.contains("tail-marker"), "{err}");
        assert!(err.contains("earlier bytes of output dropped"), "{err}");
        assert!(err.len() < 1024, "the message quotes a tail only");
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
