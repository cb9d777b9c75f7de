#!/usr/bin/env bash
# Tasks at fleet scale on this box: 3 hub nodes, SPOKES spokes, ENVOYS simulated envoys
# (vigo-sim answering tasks: TASK_RUN_TIME each, a TASK_FAIL share failing), then three
# exec tasks to every envoy, measured from the hub's own record and the spokes' results:
#
#   idle       every envoy polls on INTERVAL and holds no stream: each is told at its
#              next check-in, opens a stream and gets the task (time to 99% ~ INTERVAL)
#   streaming  the same envoys now hold their streams: the task reaches them at once
#   failing    --batch BATCH --max-failures MAX_FAILURES with TASK_FAIL of envoys
#              failing: how far dispatch went after the limit was reached
#
# For each: time from the task's creation to its first result, to 50% / 99% / 100% of
# results (the spokes' receive times), results per second, hub (all three) and spoke CPU
# per result (less the check-ins' own CPU, measured over a quiet 20 s first), and the
# spokes' RSS per held stream (after the idle task opened them).
#
#   deploy/bench/tasks.sh                           10,000 envoys, 2 spokes
#   ENVOYS=2000 INTERVAL=20s deploy/bench/tasks.sh
#
# Env: ENVOYS (10000), SPOKES (2), INTERVAL (60s), TASK_RUN_TIME (100ms), TASK_FAIL (0.01),
#      BATCH (500), MAX_FAILURES (50), OUT (/tmp/vigo-tasks/<UTC>).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ENVOYS=${ENVOYS:-10000}
SPOKES=${SPOKES:-2}
INTERVAL=${INTERVAL:-60s}
TASK_RUN_TIME=${TASK_RUN_TIME:-100ms}
TASK_FAIL=${TASK_FAIL:-0.01}
BATCH=${BATCH:-500}
MAX_FAILURES=${MAX_FAILURES:-50}
OUT=${OUT:-/tmp/vigo-tasks/$(date -u +%Y%m%dT%H%M%SZ)}
IVL=$(sed -E 's/s$//' <<<"$INTERVAL")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

cargo build --release --bin vigo-hub --bin vigo-spoke --bin vigo-sim --bin vigocli 2>&1 | tail -1
BIN=$ROOT/${CARGO_TARGET_DIR:-target}/release
ulimit -n "$(ulimit -Hn)"
. deploy/bench/fleet-lib.sh

start_cluster
sleep 2

echo "[$(date -u +%T)] enrolling $ENVOYS envoys"
"$BIN/vigo-sim" --hub "127.0.0.1:$HUB_PORT" --ca "$OUT/pki/ca.pem" --token-file "$OUT/enroll.token" \
    --envoys "$ENVOYS" --identities "$OUT/sim.ids" --hostname-prefix "t-" --enroll-concurrency 64 \
    --duration 0s --ramp 0s --progress 0s > "$OUT/enroll.log" 2>&1
# Check-ins spread over the interval; long enough for every phase.
RAMP=$IVL
TOTAL=$((RAMP + 3 * IVL + 240))
"$BIN/vigo-sim" --hub "127.0.0.1:$HUB_PORT" --ca "$OUT/pki/ca.pem" --envoys "$ENVOYS" \
    --identities "$OUT/sim.ids" --interval "$INTERVAL" --ramp "${RAMP}s" --duration "${TOTAL}s" \
    --progress 0s --loopback-sources --task-run-time "$TASK_RUN_TIME" --task-fail "$TASK_FAIL" \
    --json > "$OUT/sim.json" 2> "$OUT/sim.log" &
SIM_PIDS+=($!)
sleep $((RAMP + 10))

# run_task NAME ARGS...: starts a task, waits for its end, saves its record and results.
run_task() {
    local name=$1 task
    shift
    mark "$name"
    task=$(vigocli --json task run --all --no-wait --timeout "$((2 * IVL + 60))s" "$@" -- true \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["task_id"])')
    vigocli task watch "$task" > "$OUT/$name.watch" || true
    mark "$name-end"
    vigocli --json task show "$task" > "$OUT/$name.task.json"
    vigocli --json task results "$task" > "$OUT/$name.results.json" || true
    echo "$name: $(tail -1 "$OUT/$name.watch")"
}

spoke_rss() { local t=0 s; for i in $(seq 0 $((SPOKES - 1))); do s=$(proc_sample "${SPOKE_PIDS[$i]}"); t=$((t + ${s#* })); done; echo "$t"; }
# Check-ins go on during every phase: their CPU over a quiet stretch is taken off each
# phase's figures (per millisecond, times the phase's length).
mark baseline
sleep 20
mark baseline-end
RSS_IDLE=$(spoke_rss)
run_task idle
sleep 5
RSS_STREAMS=$(spoke_rss)
run_task streaming
run_task failing --batch "$BATCH" --max-failures "$MAX_FAILURES"

python3 - "$OUT" "$ENVOYS" "$RSS_IDLE" "$RSS_STREAMS" <<'PY'
import json, sys
out, envoys, rss_idle, rss_streams = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
marks = {m["name"]: m for m in map(json.loads, open(f"{out}/marks.jsonl"))}
def cpu(m, role):
    return sum(p["cpu_us"] for p in m[role])
def background(role, a, b):
    base, end = marks["baseline"], marks["baseline-end"]
    per_ms = (cpu(end, role) - cpu(base, role)) / (end["at_ms"] - base["at_ms"])
    return per_ms * (b["at_ms"] - a["at_ms"])
report = {"envoys": envoys,
          "spoke_rss_per_held_stream_bytes": (rss_streams - rss_idle) * 1024 / envoys}
print(f"{envoys} envoys; spoke RSS per held stream: {report['spoke_rss_per_held_stream_bytes']:.0f} B")
for name in ["idle", "streaming", "failing"]:
    task = json.load(open(f"{out}/{name}.task.json"))
    try:
        results = json.load(open(f"{out}/{name}.results.json"))["results"]
    except Exception:
        results = []
    c = task["counts"]
    got = sorted(r["received_ms"] - task["created_ms"] for r in results if r.get("received_ms"))
    q = lambda f: got[min(len(got) - 1, int(f * len(got)))] if got else None
    a, b = marks[name], marks[name + "-end"]
    ended = c["ok"] + c["failed"] + c["timed_out"] + c["refused"] + c["unreachable"]
    row = {
        "state": task["state"], "targets": c["targets"], "released": c["released"],
        "ok": c["ok"], "failed": c["failed"], "timed_out": c["timed_out"],
        "unreachable": c["unreachable"],
        "first_result_ms": got[0] if got else None, "p50_ms": q(0.5), "p99_ms": q(0.99),
        "last_ms": got[-1] if got else None,
        "results_per_s": len(got) / max(1e-3, (got[-1] - got[0]) / 1000) if len(got) > 1 else None,
        "hub_cpu_us_per_result": (cpu(b, "hubs") - cpu(a, "hubs") - background("hubs", a, b)) / max(1, ended),
        "spoke_cpu_us_per_result": (cpu(b, "spokes") - cpu(a, "spokes") - background("spokes", a, b)) / max(1, ended),
        "in_flight_at_end": c["released"] - ended,
    }
    report[name] = row
    print(f"{name:9} {row['state']:8} released {row['released']}/{row['targets']} ok {row['ok']} failed {row['failed']} "
          f"timed out {row['timed_out']} unreachable {row['unreachable']}; first {row['first_result_ms']} ms, "
          f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, last {row['last_ms']} ms, in flight at the end {row['in_flight_at_end']}; "
          f"hub {row['hub_cpu_us_per_result']:.0f} us/result, spoke {row['spoke_cpu_us_per_result']:.0f} us/result")
json.dump(report, open(f"{out}/tasks.json", "w"), indent=2)
PY
echo "results in $OUT"
