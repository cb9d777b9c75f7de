fn main() -> std::process::ExitCode {
    vigo_cli::main()
}
