fn main() -> std::process::ExitCode {
    vigo_envoy::cli::main()
}
