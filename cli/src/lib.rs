//! vigocli: the operator's view of the whole fleet, as if it were one server. It talks
//! to any hub node over TLS with a bearer token (the admin API, `vigo.admin.v1`), prints
//! tables for people and JSON (`--json`) for scripts.
//!
//! It knows the admin API only: nothing of raft, spokes' internals or the envoy
//! protocol.

mod args;
mod bundle_key;
mod cert;
mod connect;
mod envoys;
mod history;
mod render;
mod run;
mod runs;
mod task;

use std::process::ExitCode;

/// Exit status when some spokes did not answer: the output is partial.
pub const EXIT_PARTIAL: u8 = 3;

pub fn main() -> ExitCode {
    vigo_common::tls::install_default_provider();
    let cli = args::Cli::parse_args();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
