//! `vigocli envoys runs`, `vigocli envoys show --run` and `vigocli config trace`: what
//! an envoy's runs did, resource by resource, and why a host gets the policy it gets.

use std::path::Path;

use vigo_proto::admin::v1 as api;

use crate::args::Cli;
use crate::connect::{CliError, Client};
use crate::render::{age, short, table};
use crate::run::{emit, request};

/// Which run `show --run` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Latest,
    Id(u64),
}

impl std::str::FromStr for Which {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "latest" => Ok(Which::Latest),
            id => id
                .parse()
                .map(Which::Id)
                .map_err(|_| format!("{s:?}: give `latest` or a run id from `envoys runs`")),
        }
    }
}

pub async fn runs(cli: &Cli, c: &mut Client, envoy_id: &str, limit: u32) -> Result<u8, CliError> {
    let list = fetch(cli, c, envoy_id, limit).await?;
    Ok(emit(cli.json, &list, &[], |l| {
        if l.runs.is_empty() {
            return format!(
                "envoy {} (spoke {}) has reported no run yet\n",
                l.envoy_id, l.spoke
            );
        }
        let mut out = format!(
            "envoy {} on spoke {}, newest run first\n\n",
            l.envoy_id, l.spoke
        );
        for run in &l.runs {
            out.push_str(&run_header(run));
            let notable: Vec<&api::ResourceRun> =
                run.resources.iter().filter(|r| r.outcome != "ok").collect();
            out.push_str(&resource_rows(&notable));
            out.push('\n');
        }
        out
    }))
}

/// `envoys show ID --run WHICH`: the envoy's detail is printed first by the caller.
pub async fn show_run(
    cli: &Cli,
    c: &mut Client,
    envoy_id: &str,
    which: Which,
) -> Result<(u8, String), CliError> {
    let limit = if which == Which::Latest { 1 } else { 100 };
    let list = fetch(cli, c, envoy_id, limit).await?;
    let run = match which {
        Which::Latest => list.runs.first(),
        Which::Id(id) => list.runs.iter().find(|r| r.run_id == id),
    };
    let Some(run) = run.cloned() else {
        return Err(CliError::Setup(match which {
            Which::Latest => format!("envoy {envoy_id} has reported no run yet"),
            Which::Id(id) => {
                format!("envoy {envoy_id}'s spoke keeps no run {id} (see `envoys runs`)")
            }
        }));
    };
    let all: Vec<&api::ResourceRun> = run.resources.iter().collect();
    let text = format!("\n{}{}", run_header(&run), resource_rows(&all));
    let json = serde_json::to_string_pretty(&run).unwrap_or_default();
    Ok((0, if cli.json { json } else { text }))
}

async fn fetch(
    cli: &Cli,
    c: &mut Client,
    envoy_id: &str,
    limit: u32,
) -> Result<api::EnvoyRunList, CliError> {
    Ok(c.envoy_runs(request(
        cli,
        api::EnvoyRunsRequest {
            envoy_id: envoy_id.to_string(),
            limit,
        },
    ))
    .await?
    .into_inner())
}

fn run_header(run: &api::RunInfo) -> String {
    let kind = if run.dry_run { "dry run" } else { "run" };
    let mut line = format!(
        "{kind} {} started {} took {} ms: {} — {} ok, {} changed, {} failed, {} skipped",
        run.run_id,
        age(run.started_ms),
        run.duration_ms,
        run.status,
        run.ok,
        run.changed,
        run.failed,
        run.skipped
    );
    if run.dry_run {
        line.push_str(&format!(", {} would change", run.would_change));
    }
    line.push_str(&format!(" (bundle {})\n", short(&run.bundle_fingerprint)));
    if !run.error.is_empty() {
        line.push_str(&format!("  the run failed as a whole: {}\n", run.error));
    }
    line
}

fn resource_rows(resources: &[&api::ResourceRun]) -> String {
    if resources.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = resources
        .iter()
        .map(|r| {
            vec![
                r.outcome.clone(),
                r.resource_id.clone(),
                format!("{} ms", r.duration_ms),
                r.message.replace('\n', " "),
            ]
        })
        .collect();
    table(&["OUTCOME", "RESOURCE", "TOOK", "MESSAGE"], &rows)
}

pub async fn trace(
    cli: &Cli,
    c: &mut Client,
    hostname: &str,
    version: &str,
) -> Result<u8, CliError> {
    let t = c
        .trace_config(request(
            cli,
            api::TraceConfigRequest {
                hostname: hostname.to_string(),
                version: version.to_string(),
            },
        ))
        .await?
        .into_inner();
    Ok(emit(cli.json, &t, &[], render_trace))
}

/// `config trace HOSTNAME --dir DIR`: the same trace of a policy directory not yet
/// published, without a hub.
pub fn trace_dir(cli: &Cli, hostname: &str, dir: &Path) -> Result<u8, CliError> {
    let setup = |e: String| CliError::Setup(format!("{}: {e}", dir.display()));
    let host = vigo_common::hostname::normalize(hostname).map_err(|e| setup(e.to_string()))?;
    let tree = vigo_common::policy::load_dir(dir).map_err(|e| setup(e.to_string()))?;
    let compiled = vigo_common::policy::compile(&tree).map_err(|e| setup(e.to_string()))?;
    let t = vigo_common::policy::trace::trace(&tree, &compiled, &host)
        .into_api(format!("{} (not published)", dir.display()), host);
    Ok(emit(cli.json, &t, &[], render_trace))
}

fn render_trace(t: &api::ConfigTrace) -> String {
    let mut out = format!(
        "host      {}\nconfig    {}\n",
        t.hostname,
        short(&t.version)
    );
    if t.hostcrate.is_empty() {
        out.push_str("hostcrate (none matches: the host gets an empty bundle)\n");
        return out;
    }
    out.push_str(&format!(
        "hostcrate {} (matched by {})\nroles     {}\n\nconfigcrates, in application order\n",
        t.hostcrate,
        t.patterns.join(", "),
        t.roles.join(", ")
    ));
    let rows: Vec<Vec<String>> = t
        .configcrates
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.roles.join(","),
                c.resources.to_string(),
                if c.when.is_empty() {
                    "always".into()
                } else {
                    c.when.clone()
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &["CONFIGCRATE", "FROM ROLES", "RESOURCES", "WHEN"],
        &rows,
    ));
    out.push_str("\nvariables (precedence: configcrate < role < hostcrate)\n");
    let rows: Vec<Vec<String>> = t
        .vars
        .iter()
        .map(|v| {
            let overrode: Vec<String> = v
                .overrides
                .iter()
                .map(|o| format!("{} ({})", o.value, o.source))
                .collect();
            vec![
                v.name.clone(),
                v.value.clone(),
                v.source.clone(),
                overrode.join("; "),
            ]
        })
        .collect();
    out.push_str(&table(&["VAR", "VALUE", "FROM", "OVERRODE"], &rows));
    out
}
