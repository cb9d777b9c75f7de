fn main() -> std::process::ExitCode {
    vigo_spoke::cli::main()
}
