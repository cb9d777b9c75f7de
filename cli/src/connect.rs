//! Where the hub is and how to prove who we are: flags, environment, config file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use vigo_proto::admin::v1 as api;

use crate::args::Cli;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Setup(String),
    #[error("{code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Refused {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// The optional config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    hub: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
}

fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/vigo/cli.yaml"))
}

fn load_file(cli: &Cli) -> Result<FileConfig, CliError> {
    let path = match &cli.config {
        Some(p) => p.clone(),
        None => match default_config_path() {
            Some(p) if p.exists() => p,
            _ => return Ok(FileConfig::default()),
        },
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CliError::Setup(format!("{}: {e}", path.display())))?;
    serde_yaml_ng::from_str(&text).map_err(|e| CliError::Setup(format!("{}: {e}", path.display())))
}

fn read_trimmed(path: &Path, what: &str) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| CliError::Setup(format!("{what} {}: {e}", path.display())))
}

/// Adds the bearer token, and this command's request id, to every call: the hub makes
/// a write once per request id, so a command retried after "outcome unknown" gets the
/// first outcome instead of doing it twice.
#[derive(Clone)]
pub struct Bearer {
    token: MetadataValue<tonic::metadata::Ascii>,
    request_id: MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        r.metadata_mut().insert("authorization", self.token.clone());
        r.metadata_mut()
            .insert("vigo-request-id", self.request_id.clone());
        Ok(r)
    }
}

impl CliError {
    /// Whether the same command may be sent again: nothing was done (no leader, a node
    /// down), or the outcome is unknown and the request id makes a retry safe.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            CliError::Refused {
                code: Code::Unavailable | Code::DeadlineExceeded,
                ..
            }
        )
    }
}

pub type Client = api::hub_admin_client::HubAdminClient<InterceptedService<Channel, Bearer>>;

/// How long a hub node has to answer before the next address is tried.
const PROBE: Duration = Duration::from_secs(2);

/// Whether the node answers a cheap call (its member list, read locally) within
/// [`PROBE`]. Any answer counts, a refusal included: the command that follows reports
/// it. Only silence and transport failures move on to the next node.
async fn probe(client: &mut Client) -> Result<(), String> {
    let mut request = tonic::Request::new(api::MembersRequest {});
    request.set_timeout(PROBE);
    match tokio::time::timeout(PROBE, client.members(request)).await {
        Err(_) => Err(format!("no answer within {PROBE:?}")),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                Err(status.message().to_string())
            }
            _ => Ok(()),
        },
    }
}

/// Connects to the first hub address that answers; every call carries `request_id`.
pub async fn connect(cli: &Cli, request_id: &str) -> Result<Client, CliError> {
    let file = load_file(cli)?;
    let hubs = cli.hub.clone().or(file.hub).ok_or_else(|| {
        CliError::Setup("no hub address: --hub, VIGO_HUB or `hub:` in the config file".into())
    })?;
    let token = match (&cli.token, &cli.token_file, file.token, file.token_file) {
        (Some(t), _, _, _) => t.clone(),
        (None, Some(f), _, _) => read_trimmed(f, "token file")?,
        (None, None, Some(t), _) => t,
        (None, None, None, Some(f)) => read_trimmed(&f, "token file")?,
        _ => {
            return Err(CliError::Setup(
                "no API token: --token, --token-file, VIGO_TOKEN or `token:` in the config file"
                    .into(),
            ));
        }
    };
    let ca_path = cli.ca.clone().or(file.ca).ok_or_else(|| {
        CliError::Setup("no CA certificate: --ca, VIGO_CA or `ca:` in the config file".into())
    })?;
    let ca = read_trimmed(&ca_path, "CA certificate")?;
    let tls = Arc::new(
        vigo_common::tls::client_config(&ca, None, &[vigo_common::pki::Role::Hub])
            .map_err(|e| CliError::Setup(e.to_string()))?,
    );
    let bearer: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| CliError::Setup("the token has characters a header cannot carry".into()))?;
    let mut last = None;
    for address in hubs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let channel = match vigo_common::tls::channel(address, tls.clone(), PROBE) {
            Ok(c) => c,
            Err(e) => {
                last = Some(format!("{address}: {e}"));
                continue;
            }
        };
        let interceptor = Bearer {
            token: bearer.clone(),
            request_id: request_id
                .parse()
                .map_err(|_| CliError::Setup("the request id must be ASCII".into()))?,
        };
        let mut client =
            api::hub_admin_client::HubAdminClient::with_interceptor(channel, interceptor)
                .max_decoding_message_size(vigo_common::limits::MAX_ADMIN_ANSWER)
                .max_encoding_message_size(vigo_common::limits::MAX_CONFIG_MESSAGE);
        // A port that accepts is not a hub that answers (a frozen node's kernel still
        // completes the TCP handshake): ask it something cheap, briefly.
        match probe(&mut client).await {
            Ok(()) => return Ok(client),
            Err(why) => last = Some(format!("{address}: {why}")),
        }
    }
    Err(CliError::Setup(format!(
        "no hub node answered ({})",
        last.unwrap_or_else(|| "no address given".into())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cli.example.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let c: FileConfig = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(c.hub.unwrap().split(',').count(), 3);
        assert!(c.ca.is_some() && c.token_file.is_some() && c.token.is_none());
    }
}
