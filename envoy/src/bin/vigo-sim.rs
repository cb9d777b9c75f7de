use clap::Parser;
use vigo_envoy::sim::{SimArgs, run};

fn main() -> std::process::ExitCode {
    vigo_common::tls::install_default_provider();
    vigo_common::telemetry::init_tracing("warn");
    let args = SimArgs::parse();
    let json = args.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigo-sim: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(summary) => {
            if json {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            } else {
                summary.print();
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vigo-sim: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
