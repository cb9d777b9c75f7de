#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on the stable
# toolchain (the flags cargo-fuzz passes, minus the nightly-only sanitizer) and runs
# each for SECONDS. Findings (crashes) go to fuzz/artifacts/<target>/; the corpus grows
# in fuzz/corpus/<target>/ (kept between runs, not committed).
#
#   fuzz/run.sh            every target for 10 s (CI)
#   fuzz/run.sh 600        every target for 10 minutes
#   fuzz/run.sh 3600 policy
#
# Prints one line per target: executions, corpus size, findings. Exits non-zero on a
# finding.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-10}
shift || true
TARGETS=${*:-envelope bundle policy query task when}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
# --target keeps the instrumentation off build scripts and proc macros.
cargo build --release --locked --target "$TRIPLE" --bins 2>&1 | tail -1
status=0
for t in $TARGETS; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log=$(mktemp)
    if "$CARGO_TARGET_DIR/$TRIPLE/release/$t" "corpus/$t" -max_total_time="$SECS" \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 -rss_limit_mb=4096 >"$log" 2>&1; then
        verdict=ok
    else
        verdict=FINDING
        status=1
        tail -40 "$log"
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    corpus=$(ls "corpus/$t" | wc -l)
    echo "fuzz $t: $verdict, ${runs:-?} executions in ${SECS}s, corpus $corpus"
    rm -f "$log"
done
exit $status
