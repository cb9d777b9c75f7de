//! `vigocli cert`: revoking node and admin certificates, and reading the cluster's
//! revocation list.

use vigo_proto::admin::v1 as api;

use crate::args::{CertCmd, Cli};
use crate::connect::{CliError, Client};
use crate::render::{age, table};
use crate::run::{emit, request};

fn rows(list: &[api::RevocationInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let (what, id) = if r.envoy_id.is_empty() {
                ("certificate", r.certificate_serial.clone())
            } else {
                ("envoy", r.envoy_id.clone())
            };
            vec![
                r.seq.to_string(),
                what.to_string(),
                id,
                age(r.at_ms),
                r.by.clone(),
                r.reason.clone(),
            ]
        })
        .collect();
    table(&["SEQ", "REVOKED", "ID", "WHEN", "BY", "REASON"], &rows)
}

pub async fn run(cli: &Cli, c: &mut Client, cmd: &CertCmd) -> Result<u8, CliError> {
    match cmd {
        CertCmd::Revoke {
            serial,
            file,
            reason,
        } => {
            let serial = match (serial, file) {
                (Some(s), _) => s.clone(),
                (None, Some(path)) => {
                    let pem = vigo_common::fsutil::read_to_string(path)
                        .map_err(|e| CliError::Setup(e.to_string()))?;
                    vigo_common::pki::serial_of_pem(&pem)
                        .map_err(|e| CliError::Setup(format!("{}: {e}", path.display())))?
                }
                (None, None) => unreachable!("clap requires a serial or --file"),
            };
            let r = c
                .revoke_certificate(request(
                    cli,
                    api::RevokeCertificateRequest {
                        serial,
                        reason: reason.clone(),
                    },
                ))
                .await?
                .into_inner();
            Ok(emit(cli.json, &r, &[], |r| {
                format!(
                    "certificate {} revoked (revocation {}); hubs and spokes refuse it from now on\n",
                    r.certificate_serial, r.seq
                )
            }))
        }
        CertCmd::Revocations { after } => {
            let mut all = Vec::new();
            let mut after = *after;
            loop {
                let page = c
                    .list_revocations(request(
                        cli,
                        api::ListRevocationsRequest { after, limit: 0 },
                    ))
                    .await?
                    .into_inner();
                let Some(last) = page.revocations.last().map(|r| r.seq) else {
                    break;
                };
                all.extend(page.revocations);
                if last >= page.last_seq {
                    break;
                }
                after = last;
            }
            let page = api::RevocationPage {
                last_seq: all.last().map_or(after, |r| r.seq),
                revocations: all,
            };
            Ok(emit(cli.json, &page, &[], |p| rows(&p.revocations)))
        }
    }
}
