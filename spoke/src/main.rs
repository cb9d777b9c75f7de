use vigo_common::telemetry::{HeapStats, set_heap_probe};

// jemalloc: hands large buffers out of fresh pages and returns freed pages to the OS
// after a short decay, and reports what it holds (exported as vigo_heap_* metrics).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn heap() -> Option<HeapStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(HeapStats {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

fn main() -> std::process::ExitCode {
    set_heap_probe(heap);
    vigo_spoke::cli::main()
}
