//! `vigo-envoy` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;
use tracing::info;
use vigo_common::{fsutil, signing};

use crate::agent::state::{RunStatus, StateDir};
use crate::agent::{Agent, traits};
use crate::client;

const DEFAULT_STATE_DIR: &str = "/var/lib/vigo-envoy";

#[derive(Parser, Debug)]
#[command(
    name = "vigo-envoy",
    version,
    about = "Vigo Spanner agent: keeps this machine in its declared state",
    long_about = "Vigo Spanner agent: keeps this machine in its declared state.\n\n\
Enroll once with a token, then `run` as a service: every interval it checks in with its \
spoke, takes a new policy bundle when one is published (only if its signature verifies), \
applies it, and reports. Without its spoke it keeps converging from the last good bundle \
and sends its queued reports when the spoke is back.\n\n\
`once` exits 0 when everything was in policy, 2 when something changed (or, with \
--dry-run, would change), 4 when something failed, 6 when both, 1 when it could not run."
)]
pub struct Cli {
    /// Where identity, certificates and local state live (created 0700).
    #[arg(long, global = true, env = "VIGO_ENVOY_STATE", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate this machine's Ed25519 key and enroll it with a token.
    Enroll {
        /// The hub or spoke to enroll with (host:port).
        #[arg(long)]
        server: String,
        /// The enrollment token.
        #[arg(long, env = "VIGO_TOKEN", required_unless_present = "token_file")]
        token: Option<String>,
        /// File holding the enrollment token (instead of --token).
        #[arg(long, value_name = "FILE", conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// The cluster CA certificate (PEM) that the server's certificate chains to.
        #[arg(long, value_name = "FILE")]
        ca: PathBuf,
        /// The name to enroll as (default: this machine's host name).
        #[arg(long)]
        hostname: Option<String>,
        /// Replace an existing identity (a new key, a new envoy id).
        #[arg(long, conflicts_with = "if_missing")]
        force: bool,
        /// Succeed without doing anything when an identity exists (a deployment step
        /// that runs at every start).
        #[arg(long)]
        if_missing: bool,
    },
    /// Check in and converge every interval until SIGTERM or SIGINT.
    Run {
        /// Report what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long to hold a stream to the spoke after it last said work is flowing
        /// (a new bundle, a force-push); while held, a force-push applies within
        /// seconds. 0 never opens one.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        stream_linger: std::time::Duration,
        /// Refuse exec tasks (commands sent from `vigocli task run -- ...`): they are
        /// answered "refused". Queries, applies and trait refreshes still run.
        #[arg(long)]
        no_exec_tasks: bool,
    },
    /// Check in, converge once and report; the exit status tells the outcome.
    Once {
        #[arg(long)]
        dry_run: bool,
    },
    /// Identity, spoke, last check-in and last run.
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn task_policy(no_exec: bool) -> crate::agent::tasks::TaskPolicy {
    crate::agent::tasks::TaskPolicy { exec: !no_exec }
}

pub fn main() -> ExitCode {
    vigo_common::tls::install_default_provider();
    vigo_common::telemetry::init_tracing("info");
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("tokio runtime: {e}")),
    };
    let dir = StateDir::new(&cli.state_dir);
    match cli.command {
        Command::Enroll {
            if_missing: true, ..
        } if dir.is_enrolled() => {
            println!("already enrolled in {}; nothing to do", dir.root().display());
            ExitCode::SUCCESS
        }
        Command::Enroll {
            server,
            token,
            token_file,
            ca,
            hostname,
            force,
            ..
        } => {
            let token = match (token, token_file) {
                (Some(t), _) => t,
                (None, Some(f)) => match std::fs::read_to_string(&f) {
                    Ok(t) => t.trim().to_string(),
                    Err(e) => return fail(format!("--token-file {}: {e}", f.display())),
                },
                (None, None) => return fail("pass --token or --token-file".into()),
            };
            runtime
                .block_on(enroll(dir, &server, &token, &ca, hostname, force))
                .map_or_else(fail, |()| ExitCode::SUCCESS)
        }
        Command::Run {
            dry_run,
            stream_linger,
            no_exec_tasks,
        } => runtime.block_on(async {
            let mut agent = match Agent::load(dir) {
                Ok(a) => a,
                Err(e) => return fail(e.to_string()),
            };
            agent.set_stream_linger(stream_linger);
            agent.set_task_policy(task_policy(no_exec_tasks));
            info!(envoy = %agent.identity().envoy_id, spoke = %agent.identity().spoke_address, "agent running");
            agent.run(dry_run, shutdown_signal()).await;
            ExitCode::SUCCESS
        }),
        Command::Once { dry_run } => runtime.block_on(async {
            let mut agent = match Agent::load(dir) {
                Ok(a) => a,
                Err(e) => return fail(e.to_string()),
            };
            match agent.run_once(dry_run).await {
                Ok(summary) => {
                    println!(
                        "checked in: {}; ok {}, changed {}, would change {}, failed {}, skipped {}; reports queued {}",
                        summary.checked_in,
                        summary.tally.ok,
                        summary.tally.changed,
                        summary.tally.would_change,
                        summary.tally.failed,
                        summary.tally.skipped,
                        summary.reports_pending
                    );
                    if let Some(e) = &summary.refused_bundle {
                        println!("bundle refused: {e}");
                    }
                    ExitCode::from(summary.exit_code())
                }
                Err(e) => fail(e.to_string()),
            }
        }),
        Command::Status { json } => status(dir, json).map_or_else(fail, |()| ExitCode::SUCCESS),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("vigo-envoy: {message}");
    ExitCode::from(1)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn enroll(
    dir: StateDir,
    server: &str,
    token: &str,
    ca: &std::path::Path,
    hostname: Option<String>,
    force: bool,
) -> Result<(), String> {
    if dir.is_enrolled() && !force {
        return Err(format!(
            "an envoy identity already exists in {}; pass --force to replace it",
            dir.root().display()
        ));
    }
    let ca_pem = fsutil::read_to_string(ca).map_err(|e| e.to_string())?;
    let hostname = hostname.unwrap_or_else(traits::machine_hostname);
    let key = signing::generate_key();
    let (identity, response) = client::enroll(server, &ca_pem, token, &hostname, key)
        .await
        .map_err(|e| e.to_string())?;
    dir.save_identity(&identity, force)
        .map_err(|e| e.to_string())?;
    println!(
        "enrolled {hostname} as envoy {}{}; checking in at {}",
        identity.envoy_id,
        if response.already_enrolled {
            " (already enrolled with this key)"
        } else {
            ""
        },
        identity.spoke_address
    );
    Ok(())
}

#[derive(Serialize)]
struct Status {
    envoy_id: String,
    hostname: String,
    spoke: String,
    state_dir: String,
    last_run: Option<RunStatus>,
}

fn status(dir: StateDir, json: bool) -> Result<(), String> {
    let identity = dir.load_identity().map_err(|e| e.to_string())?;
    let status = Status {
        envoy_id: identity.envoy_id.to_string(),
        hostname: identity.hostname.clone(),
        spoke: identity.spoke_address.clone(),
        state_dir: dir.root().display().to_string(),
        last_run: dir.load_status().map_err(|e| e.to_string())?,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
        return Ok(());
    }
    let fmt = vigo_common::time::format_ms;
    println!("envoy      {} ({})", status.envoy_id, status.hostname);
    println!("spoke      {}", status.spoke);
    println!("state      {}", status.state_dir);
    let Some(r) = &status.last_run else {
        println!("last run   never");
        return Ok(());
    };
    println!(
        "bundle     {}",
        r.bundle_fingerprint.as_deref().unwrap_or("none yet")
    );
    println!(
        "check-in   {}",
        if r.last_check_in_ms > 0 {
            fmt(r.last_check_in_ms)
        } else {
            "never".into()
        }
    );
    println!(
        "last run   {}{}: ok {}, changed {}, would change {}, failed {}, skipped {}{}",
        fmt(r.finished_at_ms),
        if r.dry_run { " (dry run)" } else { "" },
        r.ok,
        r.changed,
        r.would_change,
        r.failed,
        r.skipped,
        r.error
            .as_ref()
            .map(|e| format!("; error: {e}"))
            .unwrap_or_default()
    );
    println!("queued     {} report(s)", r.reports_queued);
    Ok(())
}
