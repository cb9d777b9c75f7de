//! `vigo-hub` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::{error, info};
use vigo_common::pki::PkiLayout;

use crate::config::HubConfig;
use crate::server::HubNode;

#[derive(Parser, Debug)]
#[command(
    name = "vigo-hub",
    version,
    about = "Vigo Spanner hub: the raft-replicated control plane of a sharded fleet",
    long_about = "Vigo Spanner hub: the raft-replicated control plane of a sharded fleet.\n\n\
Three (or five) hub nodes hold the spokes and the hash ring, pattern overrides, every \
envoy's pin, enrollment tokens and published config versions. Envoys enroll at any hub \
node; spokes register and heartbeat; admins publish config. Writes sent to a follower are \
forwarded to the leader.\n\n\
Start the first node with `init` (it founds the cluster and writes the first admin API \
token to <data_dir>/admin.token), the others with `run`, then add them with \
`vigocli hub add ID ADDRESS`. The admin API is served as gRPC on `listen` and as \
REST/JSON on `admin_listen` (https://ADDR/api/v1/, described at /api/v1/openapi.json). \
SIGTERM or SIGINT stop a node."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Found the cluster with this node as its first member (no-op if it already has one), then serve.
    Init {
        #[arg(long, short, env = "VIGO_HUB_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Serve as a member (or future member) of an existing cluster.
    Run {
        #[arg(long, short, env = "VIGO_HUB_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a config file and exit.
    CheckConfig {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Exit 0 when the node configured in FILE answers SERVING to a gRPC health check
    /// (grpc.health.v1) on its port: a member of a cluster with a leader. For container
    /// health checks (the image has no shell).
    Health {
        #[arg(long, short, env = "VIGO_HUB_CONFIG", value_name = "FILE")]
        config: PathBuf,
    },
    /// Certificates and keys for a whole cluster.
    #[command(subcommand)]
    Pki(PkiCommand),
}

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Create a CA, a certificate per hub node (hub-ID.pem) and spoke (NAME.pem) and an
    /// admin certificate in DIR. (The founding hub node generates the bundle-signing key.)
    Init {
        dir: PathBuf,
        /// Hub node ids.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        hubs: Vec<u64>,
        /// Spoke ids.
        #[arg(long, value_delimiter = ',', default_value = "spoke-a,spoke-b,spoke-c")]
        spokes: Vec<String>,
        /// Names and addresses the nodes are reached at (repeatable).
        #[arg(long = "san", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        sans: Vec<String>,
        /// Succeed without writing anything when DIR already holds a CA (a deployment
        /// step that runs at every start).
        #[arg(long)]
        if_missing: bool,
    },
    /// Issue one more node certificate from the CA in DIR (a new hub node, spoke or
    /// admin), written as DIR/NAME.pem and .key.
    Issue {
        dir: PathBuf,
        #[arg(long, value_enum)]
        role: NodeRole,
        /// Hub: hub-<id>; spoke: its spoke id; admin: any name.
        #[arg(long)]
        name: String,
        /// Names and addresses the node is reached at (repeatable; not for admin).
        #[arg(long = "san", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        sans: Vec<String>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum NodeRole {
    Hub,
    Spoke,
    Admin,
}

pub fn main() -> ExitCode {
    vigo_common::tls::install_default_provider();
    vigo_common::telemetry::init_tracing("info,openraft=warn");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init { config } => serve(config, true),
        Command::Run { config } => serve(config, false),
        Command::CheckConfig { config } => HubConfig::load(&config)
            .map(|c| println!("config ok: node {} listening on {}", c.node_id, c.listen))
            .map_err(|e| e.to_string()),
        Command::Health { config } => HubConfig::load(&config)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                vigo_common::net::health::check_own_port(
                    c.listen,
                    &c.tls.ca_cert,
                    &[vigo_common::pki::Role::Hub],
                )
            }),
        Command::Pki(PkiCommand::Issue {
            dir,
            role,
            name,
            sans,
        }) => issue(&dir, role, &name, &sans),
        Command::Pki(PkiCommand::Init {
            dir,
            if_missing: true,
            ..
        }) if PkiLayout::new(&dir).ca_cert().exists() => {
            println!("a CA already exists in {}; kept as it is", dir.display());
            Ok(())
        }
        Command::Pki(PkiCommand::Init {
            dir,
            hubs,
            spokes,
            sans,
            ..
        }) => PkiLayout::new(&dir)
            .init_cluster(&hubs, &spokes, &sans)
            .map(|()| println!("wrote the cluster PKI to {}", dir.display()))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("vigo-hub: {e}");
            ExitCode::FAILURE
        }
    }
}

fn issue(dir: &std::path::Path, role: NodeRole, name: &str, sans: &[String]) -> Result<(), String> {
    use vigo_common::pki::Role;
    let layout = PkiLayout::new(dir);
    let ca = layout.load_ca().map_err(|e| e.to_string())?;
    let (role, cert_name, sans) = match role {
        // The certificate names the hub by its node id: hub-3 → "3".
        NodeRole::Hub => (Role::Hub, name.trim_start_matches("hub-"), sans),
        NodeRole::Spoke => (Role::Spoke, name, sans),
        NodeRole::Admin => (Role::Admin, name, &[][..]),
    };
    let issued = ca
        .issue_node(role, cert_name, sans)
        .map_err(|e| e.to_string())?;
    layout
        .write_issued(name, &issued)
        .map_err(|e| e.to_string())?;
    println!("wrote {name}.pem and {name}.key to {}", dir.display());
    Ok(())
}

fn serve(config_path: PathBuf, found: bool) -> Result<(), String> {
    let config = HubConfig::load(&config_path).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hub")
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let metrics = vigo_common::telemetry::install_metrics().map_err(|e| e.to_string())?;
        crate::metrics::describe();
        let node = HubNode::start(config, Some(metrics))
            .await
            .map_err(|e| e.to_string())?;
        if found {
            node.found().await.map_err(|e| e.to_string())?;
        }
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM"),
            _ = int.recv() => info!("SIGINT"),
            r = node.serving() => r.map_err(|e| e.to_string())?,
        }
        node.shutdown().await;
        Ok(())
    })
}
