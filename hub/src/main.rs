fn main() -> std::process::ExitCode {
    vigo_common::telemetry::set_heap_probe(vigo_common::procfs::glibc_heap);
    vigo_hub::cli::main()
}
