//! `vigocli envoys`: list (merged from every spoke, with cursors), show (with a run),
//! runs, revoke and reassign.

use vigo_proto::admin::v1 as api;

use crate::args::{Cli, EnvoysCmd};
use crate::connect::{CliError, Client};
use crate::render::{age, short, table};
use crate::run::{emit, filter, request};

fn envoy_rows(envoys: &[api::EnvoySummary], with_traits: bool) -> Vec<Vec<String>> {
    envoys
        .iter()
        .map(|e| {
            let mut row = vec![
                e.envoy_id.clone(),
                e.hostname.clone(),
                e.spoke.clone(),
                e.status.clone(),
                e.hostcrate.clone(),
                age(e.last_seen_ms),
            ];
            if with_traits {
                row.push(
                    e.traits
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
            row
        })
        .collect()
}

pub async fn run(cli: &Cli, c: &mut Client, cmd: &EnvoysCmd) -> Result<u8, CliError> {
    let json = cli.json;
    match cmd {
        EnvoysCmd::List {
            filter: f,
            sort,
            limit,
            cursor,
            all,
            with_traits: traits,
        } => {
            let mut req = api::ListEnvoysRequest {
                filter: filter(f),
                sort: sort.clone(),
                limit: *limit,
                cursor: cursor.clone().unwrap_or_default(),
                with_traits: *traits,
            };
            let mut page = c.list_envoys(request(cli, req.clone())).await?.into_inner();
            if *all {
                while !page.next_cursor.is_empty() {
                    req.cursor = page.next_cursor.clone();
                    let next = c.list_envoys(request(cli, req.clone())).await?.into_inner();
                    page.envoys.extend(next.envoys);
                    page.next_cursor = next.next_cursor;
                    for m in next.missing {
                        if !page.missing.iter().any(|p| p.spoke == m.spoke) {
                            page.missing.push(m);
                        }
                    }
                }
            }
            let missing = page.missing.clone();
            Ok(emit(json, &page, &missing, |p| {
                let mut headers = vec![
                    "ENVOY",
                    "HOSTNAME",
                    "SPOKE",
                    "STATUS",
                    "HOSTCRATE",
                    "LAST SEEN",
                ];
                if *traits {
                    headers.push("TRAITS");
                }
                let mut out = table(&headers, &envoy_rows(&p.envoys, *traits));
                out.push_str(&format!(
                    "{} shown of {} matching\n",
                    p.envoys.len(),
                    p.matched
                ));
                if !p.next_cursor.is_empty() {
                    out.push_str(&format!("more: --cursor {}\n", p.next_cursor));
                }
                out
            }))
        }
        EnvoysCmd::Runs { envoy_id, limit } => crate::runs::runs(cli, c, envoy_id, *limit).await,
        EnvoysCmd::Show {
            envoy_id,
            run: Some(which),
        } if cli.json => {
            let (code, run) = crate::runs::show_run(cli, c, envoy_id, *which).await?;
            println!("{run}");
            Ok(code)
        }
        EnvoysCmd::Show { envoy_id, run } => {
            let d = c
                .show_envoy(request(
                    cli,
                    api::EnvoyRef {
                        envoy_id: envoy_id.clone(),
                    },
                ))
                .await?
                .into_inner();
            let code = emit(json, &d, &[], |d| {
                let e = d.envoy.clone().unwrap_or_default();
                let mut out = format!(
                    "envoy      {}\nhostname   {}\nspoke      {} ({})\nstatus     {}\nhostcrate  {}\nlast seen  {}\nenrolled   {}\nkey        {}\nbundle     {}\nruns kept  {}\n",
                    e.envoy_id,
                    e.hostname,
                    e.spoke,
                    d.spoke_address,
                    e.status,
                    e.hostcrate,
                    age(e.last_seen_ms),
                    age(e.enrolled_at_ms),
                    d.public_key,
                    short(&d.bundle_fingerprint),
                    d.stored_runs
                );
                if !e.traits.is_empty() {
                    out.push_str("traits\n");
                    for (k, v) in &e.traits {
                        out.push_str(&format!("  {k} = {v}\n"));
                    }
                }
                out
            });
            if let Some(which) = run {
                let (_, text) = crate::runs::show_run(cli, c, envoy_id, *which).await?;
                print!("{text}");
            }
            Ok(code)
        }
        EnvoysCmd::Revoke { envoy_id, reason } => {
            let r = c
                .revoke_envoy(request(
                    cli,
                    api::RevokeEnvoyRequest {
                        envoy_id: envoy_id.clone(),
                        reason: reason.clone(),
                    },
                ))
                .await?
                .into_inner();
            Ok(emit(json, &r, &[], |r| {
                if r.revoked_now {
                    format!("envoy {} revoked\n", r.envoy_id)
                } else {
                    format!("envoy {} was already revoked\n", r.envoy_id)
                }
            }))
        }
        EnvoysCmd::Reassign { envoy_id, to } => {
            let r = c
                .reassign_envoy(request(
                    cli,
                    api::ReassignEnvoyRequest {
                        envoy_id: envoy_id.clone(),
                        to: to.clone(),
                    },
                ))
                .await?
                .into_inner();
            Ok(emit(json, &r, &[], |r| {
                format!(
                    "envoy {envoy_id} moved to {to} in {} ms; it follows at its next check-in\n",
                    r.duration_ms
                )
            }))
        }
    }
}
