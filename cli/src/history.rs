//! `vigocli compliance --history WINDOW`: the fleet's counts per status over time, one
//! row per sample the hub kept, with the converged share so a drop stands out.

use std::time::Duration;

use vigo_proto::admin::v1 as api;

use crate::args::Cli;
use crate::connect::{CliError, Client};
use crate::render::{age, table};
use crate::run::{counts_headers, counts_row, emit, request};

pub async fn show(cli: &Cli, c: &mut Client, window: Duration) -> Result<u8, CliError> {
    if window.is_zero() {
        return Err(CliError::Setup(
            "--history needs a window longer than zero".into(),
        ));
    }
    let t = c
        .compliance_history(request(
            cli,
            api::ComplianceHistoryRequest {
                window_ms: window.as_millis().min(u128::from(u64::MAX)) as u64,
            },
        ))
        .await?
        .into_inner();
    Ok(emit(cli.json, &t, &[], |t| render(t, window)))
}

fn render(t: &api::ComplianceTimeline, window: Duration) -> String {
    let every = humantime::format_duration(Duration::from_millis(t.sample_every_ms));
    if t.samples.is_empty() {
        return format!(
            "no sample in the last {} (the hub keeps one roll-up every {every})\n",
            humantime::format_duration(window)
        );
    }
    let mut headers = counts_headers("SAMPLED");
    headers.push("CONVERGED %");
    headers.push("MISSING SPOKES");
    let rows: Vec<Vec<String>> = t
        .samples
        .iter()
        .map(|s| {
            let counts = s.counts.clone().unwrap_or_default();
            let mut row = counts_row(&age(s.at_ms), &counts);
            let converged = counts.by_status.get("converged").copied().unwrap_or(0);
            let counted = counts
                .total
                .saturating_sub(counts.by_status.get("revoked").copied().unwrap_or(0));
            row.push(if counted == 0 {
                "-".into()
            } else {
                format!("{:.1}", 100.0 * converged as f64 / counted as f64)
            });
            row.push(s.missing_spokes.join(","));
            row
        })
        .collect();
    format!(
        "fleet compliance, one sample every {every}, oldest first\n{}",
        table(&headers, &rows)
    )
}
