//! Each command: one admin call (or a few, following a cursor), then the answer as a
//! table or as JSON.

use serde::Serialize;
use vigo_common::time::now_ms;
use vigo_proto::admin::v1 as api;

use crate::EXIT_PARTIAL;
use crate::args::{
    Cli, Command, ConfigCmd, FilterArgs, HubCmd, OverridesCmd, PushArgs, SpokeCmd, TokenCmd,
    TraitsCmd,
};
use crate::connect::{CliError, Client, connect};
use crate::render::{age, short, table};

/// Prints `value` as JSON or with `human`; the exit status says whether spokes were
/// missing from it.
pub(crate) fn emit<T: Serialize>(
    json: bool,
    value: &T,
    missing: &[api::MissingSpoke],
    human: impl FnOnce(&T) -> String,
) -> u8 {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot encode the answer: {e}"),
        }
    } else {
        print!("{}", human(value));
    }
    for m in missing {
        eprintln!(
            "warning: spoke {} did not answer ({}); its envoys are missing",
            m.spoke, m.error
        );
    }
    if missing.is_empty() { 0 } else { EXIT_PARTIAL }
}

pub(crate) fn request<T>(cli: &Cli, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(cli.timeout);
    r
}

pub(crate) fn filter(f: &FilterArgs) -> Option<api::EnvoyFilter> {
    let filter = api::EnvoyFilter {
        hostname: f.hostname.clone().unwrap_or_default(),
        spoke: f.spoke.clone().unwrap_or_default(),
        status: f.status.clone().unwrap_or_default(),
        traits: f.traits.clone(),
        hostcrate: f.hostcrate.clone().unwrap_or_default(),
    };
    (filter != api::EnvoyFilter::default()).then_some(filter)
}

pub(crate) fn counts_row(name: &str, c: &api::StatusCounts) -> Vec<String> {
    let get = |s: &str| c.by_status.get(s).copied().unwrap_or(0).to_string();
    let mut row = vec![name.to_string(), c.total.to_string()];
    row.extend(vigo_common::fleet_query::STATUSES.iter().map(|s| get(s)));
    row
}

pub(crate) fn counts_headers(first: &'static str) -> Vec<&'static str> {
    let mut h = vec![first, "TOTAL"];
    h.extend([
        "CONVERGED",
        "RELAPSED",
        "DIVERGED",
        "DEGRADED",
        "FAILED",
        "OFFLINE",
        "NO_DATA",
        "REVOKED",
    ]);
    h
}

fn spoke_rows(spokes: &[api::SpokeInfo]) -> String {
    let rows: Vec<Vec<String>> = spokes
        .iter()
        .map(|s| {
            vec![
                s.spoke_id.clone(),
                s.address.clone(),
                s.state.clone(),
                s.weight.to_string(),
                s.pins.to_string(),
                if s.healthy {
                    "ok".into()
                } else {
                    "no heartbeat".into()
                },
                age(s.last_heartbeat_ms),
                short(&s.config_version),
            ]
        })
        .collect();
    table(
        &[
            "SPOKE",
            "ADDRESS",
            "STATE",
            "WEIGHT",
            "ENVOYS",
            "HEALTH",
            "HEARTBEAT",
            "CONFIG",
        ],
        &rows,
    )
}

fn member_rows(m: &api::MemberList) -> String {
    let rows: Vec<Vec<String>> = m
        .members
        .iter()
        .map(|n| {
            vec![
                n.node_id.to_string(),
                n.address.clone(),
                match (n.leader, n.voter) {
                    (true, _) => "leader".into(),
                    (false, true) => "voter".into(),
                    (false, false) => "learner".into(),
                },
                match (n.reachable, n.silent_ms) {
                    (true, _) => "ok".into(),
                    (false, 0) => "unreachable".into(),
                    (false, ms) => format!("unreachable ({}s)", ms / 1000),
                },
                if n.leader {
                    "-".into()
                } else {
                    n.lag.to_string()
                },
            ]
        })
        .collect();
    table(&["NODE", "ADDRESS", "ROLE", "REACH", "LAG"], &rows)
}

/// Runs the command; a command that failed with "unavailable" or "outcome unknown" is
/// sent again (to whichever hub answers, with the same request id) until `--timeout`.
pub async fn run(cli: Cli) -> Result<u8, CliError> {
    let request_id = match &cli.request_id {
        Some(id) => id.clone(),
        None => format!("cli-{}", hex::encode(rand::random::<[u8; 12]>())),
    };
    let deadline = std::time::Instant::now() + cli.timeout;
    let mut pause = std::time::Duration::from_millis(250);
    if let Command::Config(ConfigCmd::Trace {
        hostname,
        dir: Some(dir),
        ..
    }) = &cli.command
    {
        return crate::runs::trace_dir(&cli, hostname, dir);
    }
    loop {
        match run_once(&cli, &request_id).await {
            Err(e) if e.retryable() && std::time::Instant::now() + pause < deadline => {
                eprintln!("warning: {e}; retrying (request id {request_id})");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(4));
            }
            other => return other,
        }
    }
}

async fn run_once(cli: &Cli, request_id: &str) -> Result<u8, CliError> {
    let mut c = connect(cli, request_id).await?;
    let json = cli.json;
    match &cli.command {
        Command::Status => {
            let s = c
                .status(request(cli, api::StatusRequest {}))
                .await?
                .into_inner();
            Ok(emit(json, &s, &[], |s| {
                let members = api::MemberList {
                    members: s.members.clone(),
                    leader_id: s.leader_id,
                };
                let view = if s.from_leader {
                    "the leader's view"
                } else {
                    "no leader answered: this node's own view, possibly stale"
                };
                format!(
                    "hub node {} answering ({view}); leader {} in term {}; commit {} applied {}\n{} envoys pinned; config {}\n\n{}\n{}",
                    s.node_id,
                    s.leader_id,
                    s.term,
                    s.commit_index,
                    s.applied_index,
                    s.pins,
                    if s.config_version.is_empty() {
                        "none published".into()
                    } else {
                        short(&s.config_version)
                    },
                    member_rows(&members),
                    spoke_rows(&s.spokes)
                )
            }))
        }
        Command::Envoys(cmd) => crate::envoys::run(cli, &mut c, cmd).await,
        Command::Compliance {
            history: Some(window),
        } => crate::history::show(cli, &mut c, *window).await,
        Command::Compliance { history: None } => {
            let r = c
                .compliance(request(cli, api::ComplianceRequest {}))
                .await?
                .into_inner();
            Ok(emit(json, &r, &r.missing, |r| {
                let fleet = r.fleet.clone().unwrap_or_default();
                let spokes: Vec<_> = r
                    .spokes
                    .iter()
                    .map(|n| counts_row(&n.name, &n.counts.clone().unwrap_or_default()))
                    .collect();
                let crates: Vec<_> = r
                    .hostcrates
                    .iter()
                    .map(|n| counts_row(&n.name, &n.counts.clone().unwrap_or_default()))
                    .collect();
                format!(
                    "{}\n{}\n{}",
                    table(&counts_headers("FLEET"), &[counts_row("all", &fleet)]),
                    table(&counts_headers("SPOKE"), &spokes),
                    table(&counts_headers("HOSTCRATE"), &crates)
                )
            }))
        }
        Command::Traits(TraitsCmd::Count { key, filter: f }) => {
            let r = c
                .trait_count(request(
                    cli,
                    api::TraitCountRequest {
                        key: key.clone(),
                        filter: filter(f),
                    },
                ))
                .await?
                .into_inner();
            Ok(emit(json, &r, &r.missing, |r| {
                let mut rows: Vec<Vec<String>> = r
                    .values
                    .iter()
                    .map(|v| vec![v.value.clone(), v.envoys.to_string()])
                    .collect();
                if r.absent > 0 {
                    rows.push(vec!["(absent)".into(), r.absent.to_string()]);
                }
                table(&[&r.key.to_uppercase(), "ENVOYS"], &rows)
            }))
        }
        Command::Config(cmd) => config(cli, &mut c, cmd).await,
        Command::Push(args) => push(cli, &mut c, args).await,
        Command::Spoke(cmd) => spoke(cli, &mut c, cmd).await,
        Command::Overrides(OverridesCmd::Set { rules }) => {
            let overrides = rules
                .iter()
                .map(|r| {
                    r.split_once('=')
                        .map(|(p, s)| api::Override {
                            pattern: p.into(),
                            spoke_id: s.into(),
                        })
                        .ok_or_else(|| CliError::Setup(format!("{r:?}: write PATTERN=SPOKE")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let r = c
                .set_overrides(request(cli, api::SetOverridesRequest { overrides }))
                .await?
                .into_inner();
            Ok(emit(json, &r, &[], |r| {
                let rows: Vec<_> = r
                    .overrides
                    .iter()
                    .map(|o| vec![o.pattern.clone(), o.spoke_id.clone()])
                    .collect();
                table(&["PATTERN", "SPOKE"], &rows)
            }))
        }
        Command::Token(cmd) => token(cli, &mut c, cmd).await,
        Command::Cert(cmd) => crate::cert::run(cli, &mut c, cmd).await,
        Command::BundleKey(cmd) => crate::bundle_key::run(cli, &mut c, cmd).await,
        Command::Task(cmd) => crate::task::run(cli, &mut c, cmd).await,
        Command::Query(args) => crate::task::query(cli, &mut c, args).await,
        Command::Hub(cmd) => {
            let m = match cmd {
                HubCmd::Members => c.members(request(cli, api::MembersRequest {})).await?,
                HubCmd::Add {
                    node_id,
                    address,
                    learner,
                } => {
                    c.add_hub(request(
                        cli,
                        api::AddHubRequest {
                            node_id: *node_id,
                            address: address.clone(),
                            voter: !learner,
                        },
                    ))
                    .await?
                }
                HubCmd::Remove { node_id } => {
                    c.remove_hub(request(cli, api::RemoveHubRequest { node_id: *node_id }))
                        .await?
                }
            }
            .into_inner();
            Ok(emit(json, &m, &[], member_rows))
        }
    }
}

async fn config(cli: &Cli, c: &mut Client, cmd: &ConfigCmd) -> Result<u8, CliError> {
    let json = cli.json;
    let info = |v: &api::ConfigVersionInfo| {
        format!(
            "version {} ({} files) by {}: {}\n",
            short(&v.version),
            v.files,
            v.author,
            v.message
        )
    };
    match cmd {
        ConfigCmd::Publish { dir, message } => {
            let files = vigo_common::policy::read_files(dir)
                .map_err(|e| CliError::Setup(format!("{}: {e}", dir.display())))?
                .into_iter()
                .map(|(k, v)| (k.to_string_lossy().into_owned(), v))
                .collect();
            let v = c
                .publish_config(request(
                    cli,
                    api::PublishConfigRequest {
                        message: message.clone(),
                        files,
                    },
                ))
                .await?
                .into_inner();
            Ok(emit(json, &v, &[], |v| format!("published {}", info(v))))
        }
        ConfigCmd::History => {
            let h = c
                .config_history(request(cli, api::ConfigHistoryRequest {}))
                .await?
                .into_inner();
            Ok(emit(json, &h, &[], |h| {
                let rows: Vec<_> = h
                    .versions
                    .iter()
                    .map(|v| {
                        vec![
                            if v.current { "*".into() } else { String::new() },
                            short(&v.version),
                            age(v.published_ms),
                            v.author.clone(),
                            v.files.to_string(),
                            v.message.clone(),
                        ]
                    })
                    .collect();
                table(
                    &["", "VERSION", "PUBLISHED", "AUTHOR", "FILES", "MESSAGE"],
                    &rows,
                )
            }))
        }
        ConfigCmd::Trace {
            hostname, version, ..
        } => crate::runs::trace(cli, c, hostname, version.as_deref().unwrap_or("")).await,
        ConfigCmd::Rollback { version } => {
            let v = c
                .rollback_config(request(
                    cli,
                    api::RollbackConfigRequest {
                        version: version.clone(),
                    },
                ))
                .await?
                .into_inner();
            Ok(emit(json, &v, &[], |v| format!("now serving {}", info(v))))
        }
    }
}

async fn push(cli: &Cli, c: &mut Client, args: &PushArgs) -> Result<u8, CliError> {
    let f = filter(&args.filter);
    let only_spoke = f.as_ref().is_some_and(|f| {
        !f.spoke.is_empty()
            && f.hostname.is_empty()
            && f.status.is_empty()
            && f.traits.is_empty()
            && f.hostcrate.is_empty()
    });
    let req = if !args.envoys.is_empty() {
        api::PushRequest {
            envoy_ids: args.envoys.clone(),
            ..Default::default()
        }
    } else if args.all {
        api::PushRequest {
            all: true,
            ..Default::default()
        }
    } else if only_spoke {
        api::PushRequest {
            spoke: f.map(|f| f.spoke).unwrap_or_default(),
            ..Default::default()
        }
    } else if f.is_some() {
        api::PushRequest {
            filter: f,
            ..Default::default()
        }
    } else {
        return Err(CliError::Setup(
            "push what? --envoy ID, --spoke S, a filter, or --all".into(),
        ));
    };
    let r = c.push(request(cli, req)).await?.into_inner();
    Ok(emit(cli.json, &r, &r.missing, |r| {
        format!(
            "{} envoys get their bundle at their next check-in; {} of them hold a stream and were told to check in now\n",
            r.marked, r.woken
        )
    }))
}

async fn spoke(cli: &Cli, c: &mut Client, cmd: &SpokeCmd) -> Result<u8, CliError> {
    let json = cli.json;
    match cmd {
        SpokeCmd::List => {
            let l = c
                .list_spokes(request(cli, api::ListSpokesRequest {}))
                .await?
                .into_inner();
            Ok(emit(json, &l, &[], |l| spoke_rows(&l.spokes)))
        }
        SpokeCmd::Show { spoke_id } => {
            let d = c
                .show_spoke(request(
                    cli,
                    api::SpokeRef {
                        spoke_id: spoke_id.clone(),
                    },
                ))
                .await?
                .into_inner();
            let code = if d.error.is_empty() { 0 } else { EXIT_PARTIAL };
            emit(json, &d, &[], |d| {
                let mut out = spoke_rows(&d.spoke.clone().into_iter().collect::<Vec<_>>());
                match &d.compliance {
                    Some(counts) => {
                        out.push('\n');
                        out.push_str(&table(
                            &counts_headers("LIVE"),
                            &[counts_row(spoke_id, counts)],
                        ));
                        out.push_str(&format!(
                            "serving config {}; {} envoys waiting for a flush\n",
                            short(&d.serving_version),
                            d.dirty
                        ));
                    }
                    None => out.push_str(&format!("the spoke did not answer: {}\n", d.error)),
                }
                out
            });
            Ok(code)
        }
        SpokeCmd::Add {
            spoke_id,
            address,
            weight,
        } => {
            let s = c
                .add_spoke(request(
                    cli,
                    api::AddSpokeRequest {
                        spoke_id: spoke_id.clone(),
                        address: address.clone().unwrap_or_default(),
                        weight: weight.unwrap_or(0),
                    },
                ))
                .await?
                .into_inner();
            Ok(emit(json, &s, &[], |s| spoke_rows(std::slice::from_ref(s))))
        }
        SpokeCmd::Drain { spoke_id } => {
            let mut req = request(
                cli,
                api::SpokeRef {
                    spoke_id: spoke_id.clone(),
                },
            );
            // Moving thousands of envoys takes longer than one query.
            req.set_timeout(cli.timeout.max(std::time::Duration::from_secs(600)));
            let r = c.drain_spoke(req).await?.into_inner();
            Ok(emit(json, &r, &[], |r| {
                let to: Vec<String> = r.to.iter().map(|(s, n)| format!("{s}: {n}")).collect();
                format!(
                    "spoke {spoke_id} drained: {} envoys moved in {} ms ({})\n",
                    r.moved,
                    r.duration_ms,
                    if to.is_empty() {
                        "none".into()
                    } else {
                        to.join(", ")
                    }
                )
            }))
        }
        SpokeCmd::Remove { spoke_id } => {
            let s = c
                .remove_spoke(request(
                    cli,
                    api::SpokeRef {
                        spoke_id: spoke_id.clone(),
                    },
                ))
                .await?
                .into_inner();
            Ok(emit(json, &s, &[], |s| {
                format!("spoke {} removed\n", s.spoke_id)
            }))
        }
    }
}

async fn token(cli: &Cli, c: &mut Client, cmd: &TokenCmd) -> Result<u8, CliError> {
    let json = cli.json;
    let rows = |tokens: &[api::TokenInfo]| {
        let rows: Vec<_> = tokens
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.role.clone(),
                    if t.role == "enroll" {
                        format!("{}/{}", t.used, t.uses)
                    } else {
                        "-".into()
                    },
                    if t.expires_ms == 0 {
                        "never".into()
                    } else if t.expires_ms <= now_ms() {
                        "-".into()
                    } else {
                        humantime::format_duration(std::time::Duration::from_secs(
                            (t.expires_ms - now_ms()) / 1000,
                        ))
                        .to_string()
                    },
                    // One state: revoked wins over expired, and a used-up enrollment
                    // token is used up.
                    if t.revoked {
                        "revoked".into()
                    } else if t.expires_ms != 0 && t.expires_ms <= now_ms() {
                        "expired".into()
                    } else if t.role == "enroll" && t.uses != 0 && t.used >= t.uses {
                        "used up".into()
                    } else {
                        "valid".into()
                    },
                    if t.hostnames.is_empty() {
                        "-".into()
                    } else {
                        t.hostnames.join(",")
                    },
                ]
            })
            .collect::<Vec<_>>();
        table(
            &["NAME", "ROLE", "USED", "EXPIRES IN", "STATE", "HOSTNAMES"],
            &rows,
        )
    };
    match cmd {
        TokenCmd::Create {
            name,
            role,
            uses,
            expires_in,
            allow_rekey,
            hostnames,
            write_secret,
        } => {
            if let Some(file) = write_secret
                && file.exists()
            {
                println!(
                    "{} exists: token {name} was created before; nothing to do",
                    file.display()
                );
                return Ok(0);
            }
            let created = c
                .create_token(request(
                    cli,
                    api::CreateTokenRequest {
                        name: name.clone(),
                        role: role.clone(),
                        uses: uses.unwrap_or(0),
                        expires_ms: expires_in.map_or(0, |d| now_ms() + d.as_millis() as u64),
                        allow_rekey: *allow_rekey,
                        hostnames: hostnames.clone(),
                    },
                ))
                .await?
                .into_inner();
            if let Some(file) = write_secret {
                vigo_common::fsutil::write_atomic(
                    file,
                    format!("{}\n", created.secret).as_bytes(),
                    0o600,
                )
                .map_err(|e| CliError::Setup(e.to_string()))?;
                println!(
                    "token {name} ({role}) created; its secret is in {}",
                    file.display()
                );
                return Ok(0);
            }
            Ok(emit(json, &created, &[], |t| {
                format!(
                    "token {name} ({role}) created; its secret, shown only now:\n{}\n",
                    t.secret
                )
            }))
        }
        TokenCmd::List => {
            let l = c
                .list_tokens(request(cli, api::ListTokensRequest {}))
                .await?
                .into_inner();
            Ok(emit(json, &l, &[], |l| rows(&l.tokens)))
        }
        TokenCmd::Revoke { name } => {
            let t = c
                .revoke_token(request(cli, api::RevokeTokenRequest { name: name.clone() }))
                .await?
                .into_inner();
            Ok(emit(json, &t, &[], |t| rows(std::slice::from_ref(t))))
        }
    }
}
