//! `vigocli bundle-key`: the keys that sign policy bundles, and their rotation.

use vigo_proto::admin::v1 as api;

use crate::args::{BundleKeyCmd, Cli};
use crate::connect::{CliError, Client};
use crate::render::{age, table};
use crate::run::{emit, request};

fn rows(list: &api::BundleKeyList) -> String {
    let rows: Vec<Vec<String>> = list
        .keys
        .iter()
        .map(|k| {
            vec![
                k.key.clone(),
                k.state.clone(),
                age(k.added_ms),
                k.added_by.clone(),
            ]
        })
        .collect();
    let mut out = table(&["KEY", "STATE", "ADDED", "BY"], &rows);
    if !list.config_version.is_empty() {
        out.push_str(&format!(
            "config {} signed at generation {}\n",
            &list.config_version[..list.config_version.len().min(12)],
            list.generation
        ));
    }
    out
}

pub async fn run(cli: &Cli, c: &mut Client, cmd: &BundleKeyCmd) -> Result<u8, CliError> {
    let list = match cmd {
        BundleKeyCmd::List => {
            c.list_bundle_keys(request(cli, api::ListBundleKeysRequest {}))
                .await?
        }
        BundleKeyCmd::Add => {
            c.add_bundle_key(request(cli, api::AddBundleKeyRequest {}))
                .await?
        }
        BundleKeyCmd::Use { key } => {
            c.use_bundle_key(request(cli, api::BundleKeyRef { key: key.clone() }))
                .await?
        }
        BundleKeyCmd::Retire { key } => {
            c.retire_bundle_key(request(cli, api::BundleKeyRef { key: key.clone() }))
                .await?
        }
    }
    .into_inner();
    Ok(emit(cli.json, &list, &[], rows))
}
