//! `vigo-spoke` command line.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info, warn};
use vigo_common::pki::{PkiLayout, Role};

use crate::config::SpokeConfig;
use crate::error::SpokeError;
use crate::server::Spoke;
use crate::tokens;

#[derive(Parser, Debug)]
#[command(
    name = "vigo-spoke",
    version,
    about = "Vigo Spanner spoke: serves signed check-ins of a shard of envoys from memory, durable in redb",
    long_about = "Vigo Spanner spoke: serves signed check-ins of a shard of envoys from memory, durable in redb.\n\n\
Without a subcommand it runs the spoke described by --config. SIGHUP reloads the policy \
directory (a bad policy is refused and the previous one keeps serving); SIGTERM or SIGINT \
stop it after flushing every dirty envoy to disk.\n\n\
First time? `vigo-spoke pki init ./pki` makes a CA, a spoke certificate and a bundle \
signing key; `vigo-spoke token new` makes an enrollment token; deploy/spoke.example.yaml \
documents every config key."
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// YAML config file (see deploy/spoke.example.yaml).
    #[arg(long, short, env = "VIGO_SPOKE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the spoke (the default).
    Run {
        #[arg(long, short, env = "VIGO_SPOKE_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a config file and its policy directory, then exit (0 when both are valid).
    CheckConfig {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Exit 0 when the spoke configured in FILE answers SERVING to a gRPC health check
    /// (grpc.health.v1) on its port: its store open, its policy in force and, under a
    /// hub, the hub's revocations taken. For container health checks (no shell).
    Health {
        #[arg(long, short, env = "VIGO_SPOKE_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Certificates and keys for a standalone spoke.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Create a CA, this spoke's server certificate, an admin client certificate and the
    /// bundle-signing key in DIR. Refuses to overwrite an existing CA.
    Init {
        dir: PathBuf,
        /// The spoke's name (in its certificate).
        #[arg(long, default_value = "spoke")]
        name: String,
        /// Host names and IP addresses envoys use to reach the spoke (repeatable).
        #[arg(long = "san", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        sans: Vec<String>,
    },
    /// Issue a client certificate from the CA in DIR, written as DIR/NAME.pem and .key.
    Issue {
        dir: PathBuf,
        #[arg(long, value_enum)]
        role: IssueRole,
        #[arg(long)]
        name: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum IssueRole {
    /// Administers spokes (revoke, force-push, stats).
    Admin,
    /// Carries many envoys' signed check-ins over shared connections (the simulator's
    /// --connections); accepted only with tls.allow_relay_certificates.
    Relay,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print a new token secret and the config entry that accepts it. The secret is
    /// shown once; the config keeps only its SHA-256.
    New {
        #[arg(long, default_value = "bootstrap")]
        name: String,
        /// Enrollments it allows.
        #[arg(long, default_value_t = 1)]
        uses: u64,
        /// Lifetime, e.g. 24h or 30d.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Allow re-enrolling a known hostname with a new key.
        #[arg(long)]
        allow_rekey: bool,
    },
}

/// Runs the command line; the exit code is the result.
pub fn main() -> std::process::ExitCode {
    vigo_common::tls::install_default_provider();
    vigo_common::telemetry::init_tracing("info");
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Run { config }) => run(config),
        None => match cli.config {
            Some(config) => run(config),
            None => Err("no --config given; see vigo-spoke --help".to_string()),
        },
        Some(Command::CheckConfig { config }) => check_config(config),
        Some(Command::Health { config }) => SpokeConfig::load(&config)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                vigo_common::net::health::check_own_port(c.listen, &c.tls.ca_cert, &[Role::Spoke])
            }),
        Some(Command::Pki(cmd)) => pki(cmd),
        Some(Command::Token(cmd)) => token(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("vigo-spoke: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(config_path: PathBuf) -> Result<(), String> {
    let config = SpokeConfig::load(&config_path).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.workers)
        .enable_all()
        .thread_name("spoke")
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async move {
        let metrics = vigo_common::telemetry::install_metrics().map_err(|e| e.to_string())?;
        crate::metrics::describe();
        let mut spoke = Spoke::start(config, Some(metrics))
            .await
            .map_err(|e| e.to_string())?;
        serve_until_signal(&mut spoke).await?;
        spoke.shutdown().await.map_err(|e| e.to_string())
    })
}

async fn serve_until_signal(spoke: &mut Spoke) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading policy");
                if let Err(e) = spoke.reload_policy().await {
                    warn!(error = %e, "policy reload failed; the previous policy keeps serving");
                }
            }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            r = spoke.serving() => return r.map_err(|e| e.to_string()),
        }
    }
}

fn check_config(path: PathBuf) -> Result<(), String> {
    let config = SpokeConfig::load(&path).map_err(|e: SpokeError| e.to_string())?;
    let files = vigo_common::policy::read_files(&config.policy_dir).map_err(|e| e.to_string())?;
    let compiled = vigo_common::policy::validate(&files).map_err(|e| e.to_string())?;
    println!(
        "config ok; policy {} with {} hostcrate(s)",
        hex::encode(compiled.version),
        compiled.hostcrates.len() - 1
    );
    Ok(())
}

fn pki(cmd: PkiCommand) -> Result<(), String> {
    match cmd {
        PkiCommand::Init { dir, name, sans } => {
            let layout = PkiLayout::new(&dir);
            layout
                .init_standalone(&name, &sans)
                .map_err(|e| e.to_string())?;
            println!(
                "wrote ca.pem ca.key spoke.pem spoke.key admin.pem admin.key bundle-signing.key to {}",
                dir.display()
            );
            Ok(())
        }
        PkiCommand::Issue { dir, role, name } => {
            let layout = PkiLayout::new(&dir);
            let ca = layout.load_ca().map_err(|e| e.to_string())?;
            let role = match role {
                IssueRole::Admin => Role::Admin,
                IssueRole::Relay => Role::Relay,
            };
            let issued = ca.issue_node(role, &name, &[]).map_err(|e| e.to_string())?;
            layout
                .write_issued(&name, &issued)
                .map_err(|e| e.to_string())?;
            println!("wrote {name}.pem and {name}.key to {}", dir.display());
            Ok(())
        }
    }
}

fn token(cmd: TokenCommand) -> Result<(), String> {
    let TokenCommand::New {
        name,
        uses,
        ttl,
        allow_rekey,
    } = cmd;
    if uses == 0 {
        return Err("--uses must be at least 1".into());
    }
    let secret = tokens::new_secret();
    println!("secret: {secret}");
    println!("# add under enrollment.tokens in the spoke config:");
    println!("- name: {name}");
    println!("  sha256: {}", hex::encode(tokens::hash_secret(&secret)));
    println!("  uses: {uses}");
    if let Some(ttl) = ttl {
        let expires = SystemTime::now() + ttl;
        println!("  expires: {}", humantime::format_rfc3339_seconds(expires));
    }
    if allow_rekey {
        println!("  allow_rekey: true");
    }
    Ok(())
}
