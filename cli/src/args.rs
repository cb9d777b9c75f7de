//! Command-line grammar.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "Run the whole Vigo Spanner fleet from one place, through any hub node.";

const LONG_ABOUT: &str = "\
Run the whole Vigo Spanner fleet from one place, through any hub node.

Connection settings come from flags, else the environment (VIGO_HUB, VIGO_TOKEN,
VIGO_TOKEN_FILE, VIGO_CA; one set to an empty value counts as unset), else the config
file (--config, default ~/.config/vigo/cli.yaml, keys: hub, token, token_file, ca). `hub` may list several
addresses (comma-separated): the first that answers is used.

Exit status: 0 done; 1 refused or failed (the message says why); 2 bad usage;
3 done, but some spokes did not answer (their part is missing from the output);
4 a task or query ended with envoys failed, timed out, refused or unreachable.";

/// Environment variables of the connection settings, by argument id.
const ENV: [(&str, &str); 5] = [
    ("hub", "VIGO_HUB"),
    ("token", "VIGO_TOKEN"),
    ("token_file", "VIGO_TOKEN_FILE"),
    ("ca", "VIGO_CA"),
    ("config", "VIGO_CLI_CONFIG"),
];

impl Cli {
    /// Parses the command line. An environment variable set to the empty string counts
    /// as unset (a shell's `VIGO_CA=` clears it), not as a missing value.
    pub fn parse_args() -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let mut command = Cli::command();
        for (id, var) in ENV {
            if std::env::var_os(var).is_some_and(|v| v.is_empty()) {
                command = command.mut_arg(id, |a| a.env(None));
            }
        }
        let matches = command.get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

#[derive(Debug, Parser)]
#[command(name = "vigocli", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// Hub node address(es), host:port of the hub's gRPC port, comma-separated.
    #[arg(long, env = "VIGO_HUB", global = true, help_heading = "Connection")]
    pub hub: Option<String>,
    /// Admin API token (bearer).
    #[arg(
        long,
        env = "VIGO_TOKEN",
        global = true,
        hide_env_values = true,
        help_heading = "Connection"
    )]
    pub token: Option<String>,
    /// File holding the admin API token (e.g. a hub's data_dir/admin.token).
    #[arg(
        long,
        env = "VIGO_TOKEN_FILE",
        global = true,
        help_heading = "Connection"
    )]
    pub token_file: Option<PathBuf>,
    /// The cluster CA certificate (PEM) the hub's certificate is checked against.
    #[arg(long, env = "VIGO_CA", global = true, help_heading = "Connection")]
    pub ca: Option<PathBuf>,
    /// Config file with defaults for the settings above.
    #[arg(
        long,
        env = "VIGO_CLI_CONFIG",
        global = true,
        help_heading = "Connection"
    )]
    pub config: Option<PathBuf>,
    /// Print the answer as JSON (the admin API's messages) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// The request id writes are made once under (default: a fresh one per command). A
    /// command sent again with the same id gets the first outcome: use it to retry a
    /// script's write safely after "outcome unknown".
    #[arg(long, global = true, value_name = "ID", help_heading = "Connection")]
    pub request_id: Option<String>,
    /// Deadline of one call. A command whose call found no leader, or got no answer in
    /// time, is sent again (same request id) until this much time has passed.
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "30s", help_heading = "Connection")]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hub nodes, the leader and its term, spokes with their envoys and health.
    Status,
    /// Query and act on envoys across every spoke.
    #[command(subcommand)]
    Envoys(EnvoysCmd),
    /// Compliance of the fleet, per spoke and per hostcrate; with --history, the
    /// fleet's counts per status over time as the hub sampled them.
    Compliance {
        /// How far back (`90m`, `24h`, `7d`): one row per sample, oldest first.
        #[arg(long, value_name = "WINDOW", value_parser = humantime::parse_duration)]
        history: Option<std::time::Duration>,
    },
    /// Trait distributions across the fleet.
    #[command(subcommand)]
    Traits(TraitsCmd),
    /// Publish, list and roll back policy versions.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Send the bundle again at the next check-in (now, for envoys holding a stream).
    Push(PushArgs),
    /// Spokes: list, show, add, drain, remove.
    #[command(subcommand)]
    Spoke(SpokeCmd),
    /// Hostname-pattern overrides of the ring (first match wins).
    #[command(subcommand)]
    Overrides(OverridesCmd),
    /// API and enrollment tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Hub cluster membership.
    #[command(subcommand)]
    Hub(HubCmd),
    /// Revoke hub, spoke and admin certificates; list the cluster's revocations.
    #[command(subcommand)]
    Cert(CertCmd),
    /// The keys that sign policy bundles, and their rotation: `add` a key (envoys learn
    /// to trust it with their next bundle), `use` it once the fleet has converged,
    /// then `retire` the old one. Each step re-signs the current config at a new
    /// generation, so every envoy fetches one bundle.
    #[command(subcommand, name = "bundle-key")]
    BundleKey(BundleKeyCmd),
    /// Run a command, apply a configcrate or refresh traits across the fleet, in
    /// batches, and follow it: `task run --where os=debian --batch 10% -- systemctl
    /// restart nginx`. Every task is recorded with who ran it.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Ask envoys read-only questions now and print their answers as rows:
    /// `query --where role=db package:openssl service:postgresql file:/etc/hosts
    /// trait:kernel query:NAME` (a query the policy defines). Never a shell line.
    Query(QueryArgs),
}

/// Which envoys a task targets: exactly one way.
#[derive(Debug, Args, Default, Clone)]
pub struct TargetArgs {
    /// These envoys (repeatable).
    #[arg(long = "envoy", value_name = "ID")]
    pub envoys: Vec<String>,
    /// Every envoy of the fleet.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// How a task goes out.
#[derive(Debug, Args, Clone)]
pub struct DispatchArgs {
    /// Envoys in flight at once across the fleet: a count (50) or a share (10%).
    /// Default: all at once.
    #[arg(long)]
    pub batch: Option<String>,
    /// A first batch of this many envoys that must end before the rest begins.
    #[arg(long)]
    pub canary: Option<u32>,
    /// Stop releasing batches once this many envoys failed or timed out: a count or a
    /// share of the targets (2%).
    #[arg(long)]
    pub max_failures: Option<String>,
    /// How long each envoy has, from its release to its result, delivery included
    /// (an idle envoy takes up to its check-in interval to be reached).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub timeout: Duration,
    /// Print the plan — envoys per spoke, how many hold a stream now, the batches —
    /// and run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Start a task and follow it to its end (operator role).
    Run(Box<TaskRunArgs>),
    /// Tasks, newest first.
    List {
        /// running, finished, stopped, cancelled or expired.
        #[arg(long)]
        state: Option<String>,
    },
    /// One task: what, who, targets and counts.
    Show { task_id: String },
    /// Follow a task's progress until it ends.
    Watch { task_id: String },
    /// Stop dispatch: envoys not yet sent the task never run it (operator role).
    Cancel { task_id: String },
    /// Each envoy's outcome and output.
    Results {
        task_id: String,
        /// Only failed, timed-out, refused and unreachable envoys.
        #[arg(long)]
        failed: bool,
    },
}

#[derive(Debug, Args)]
pub struct TaskRunArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub dispatch: DispatchArgs,
    /// Hand the command to /bin/sh -c as one line (default: run the program with its
    /// arguments, no shell).
    #[arg(long)]
    pub shell: bool,
    /// Apply this configcrate of the live policy now, instead of a command.
    #[arg(long, value_name = "CONFIGCRATE")]
    pub apply: Option<String>,
    /// Collect traits afresh and send them now, instead of a command.
    #[arg(long)]
    pub refresh_traits: bool,
    /// Print the task and return; follow it later with `task watch`.
    #[arg(long)]
    pub no_wait: bool,
    /// The program and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub dispatch: DispatchArgs,
    /// package:NAME, service:NAME, file:PATH, trait:KEY or query:NAME.
    #[arg(required = true, value_name = "COLLECTOR")]
    pub collectors: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum BundleKeyCmd {
    /// The keys envoys trust, and which one signs.
    List,
    /// Generate a new key on the hub (admin role); it is trusted, not yet signing. Its
    /// private half never leaves the hub nodes.
    Add,
    /// Sign bundles with this key from now on (admin role). Envoys that have not
    /// checked in since it was added do not trust it yet and refuse the new bundle
    /// until they have: wait for the fleet to converge after `add`.
    Use {
        /// The key (hex public key, or a prefix of at least 8 digits).
        key: String,
    },
    /// Stop trusting this key (admin role); the signing key cannot be retired.
    Retire {
        /// The key (hex public key, or a prefix of at least 8 digits).
        key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCmd {
    /// Revoke a hub, spoke or admin certificate (admin role). Every hub and spoke
    /// refuses it within seconds, on connections already open too; it cannot be undone
    /// (issue a new certificate instead). Envoys are revoked with `envoys revoke`.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["serial", "file"]))]
    Revoke {
        /// The serial, as `openssl x509 -serial -noout` prints it.
        serial: Option<String>,
        /// Read the serial from this PEM certificate instead.
        #[arg(long, value_name = "CERT_PEM")]
        file: Option<PathBuf>,
        /// Why, for the record (at most 512 bytes).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The cluster's revocations (envoys and certificates), oldest first.
    Revocations {
        /// Only those after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

/// Which envoys.
#[derive(Debug, Args, Default, Clone)]
pub struct FilterArgs {
    /// Hostname glob, e.g. 'web-*'.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Only envoys of this spoke.
    #[arg(long)]
    pub spoke: Option<String>,
    /// converged, relapsed, diverged, degraded, failed, offline, no_data or revoked.
    #[arg(long)]
    pub status: Option<String>,
    /// Hostcrate name.
    #[arg(long)]
    pub hostcrate: Option<String>,
    /// Trait predicate, repeatable: os=debian, os!=debian, mem_mb>4096, cpus<=8, ipv6.
    #[arg(long = "where", value_name = "PREDICATE")]
    pub traits: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum EnvoysCmd {
    /// List envoys, merged from every spoke, one page at a time.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// hostname, id, last_seen or status; prefix - to reverse (`--sort -last_seen`).
        #[arg(long, default_value = "hostname", allow_hyphen_values = true)]
        sort: String,
        /// Envoys per page, 1..=1000 (0 is refused; --all follows every page).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Continue after this cursor (printed after a page that has more).
        #[arg(long)]
        cursor: Option<String>,
        /// Follow the cursor to the end.
        #[arg(long)]
        all: bool,
        /// Include traits.
        #[arg(long = "traits", id = "with_traits")]
        with_traits: bool,
    },
    /// One envoy in detail, live from its spoke.
    Show {
        envoy_id: String,
        /// Also one of its runs, every resource with its outcome, message and duration:
        /// `latest` or a run id from `envoys runs`.
        #[arg(long, value_name = "latest|RUN_ID")]
        run: Option<crate::runs::Which>,
    },
    /// The envoy's recent runs, newest first: each run's status and counts, and the
    /// resources that did not end ok (changed, failed, skipped, would change).
    Runs {
        envoy_id: String,
        /// At most this many runs (the spoke keeps the last few; `reports.keep_runs`).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
    },
    /// Revoke an envoy for good: every spoke refuses it within seconds, also after a
    /// move or a restore from backup (operator role).
    Revoke {
        envoy_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Move an envoy to another spoke (record and history move; no re-enrollment).
    Reassign {
        envoy_id: String,
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TraitsCmd {
    /// How many envoys hold each value of one trait.
    Count {
        key: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate and publish a policy directory as a new version.
    Publish {
        dir: PathBuf,
        #[arg(short, long)]
        message: String,
    },
    /// Published versions, newest first.
    History,
    /// Serve an earlier version again (a unique prefix of its hash is enough).
    Rollback { version: String },
    /// Why a host gets what it gets: the hostcrate its name matches, the roles and
    /// configcrates (with their conditions) and every variable with where its value
    /// came from and what it overrode.
    Trace {
        hostname: String,
        /// A published version (unique prefix); default: the current one.
        #[arg(long, conflicts_with = "dir")]
        version: Option<String>,
        /// Trace a policy directory instead (not published; no hub needed).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// These envoys (repeatable).
    #[arg(long = "envoy", value_name = "ID")]
    pub envoys: Vec<String>,
    /// Every envoy of the fleet.
    #[arg(long)]
    pub all: bool,
    /// Envoys matching a filter (--spoke alone: every envoy of that spoke).
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Subcommand)]
pub enum SpokeCmd {
    List,
    Show {
        spoke_id: String,
    },
    /// Add a spoke to the ring, or put a drained one back.
    Add {
        spoke_id: String,
        /// host:port envoys reach it at (optional for a spoke the hub knows).
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Take a spoke out of the ring and move every envoy on it to the others.
    Drain {
        spoke_id: String,
    },
    /// Forget a spoke; refused while envoys are pinned to it.
    Remove {
        spoke_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OverridesCmd {
    /// Replace every override: PATTERN=SPOKE, first match wins (none: clear).
    Set { rules: Vec<String> },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token; its secret is printed once.
    Create {
        name: String,
        /// admin, operator, viewer (API tokens) or enroll (enrollment token).
        #[arg(long)]
        role: String,
        /// Enrollment tokens: enrollments allowed.
        #[arg(long)]
        uses: Option<u64>,
        /// Valid for this long (e.g. 30d); default forever.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        /// Enrollment tokens: may re-enroll a known hostname with a new key.
        #[arg(long)]
        allow_rekey: bool,
        /// Enrollment tokens: only hostnames matching PATTERN enroll (a glob, as
        /// hostcrates match; repeat for several, at most 32). Default: any hostname.
        #[arg(long = "hostname", value_name = "PATTERN")]
        hostnames: Vec<String>,
        /// Write the secret to FILE (0600) instead of printing it; when FILE exists
        /// already, do nothing (a deployment step that runs at every start).
        #[arg(long, value_name = "FILE")]
        write_secret: Option<PathBuf>,
    },
    List,
    Revoke {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum HubCmd {
    /// Hub nodes and their roles.
    Members,
    /// Add a hub node (as a voter unless --learner).
    Add {
        node_id: u64,
        address: String,
        #[arg(long)]
        learner: bool,
    },
    Remove {
        node_id: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
