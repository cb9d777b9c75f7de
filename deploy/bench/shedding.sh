#!/usr/bin/env bash
# Admission control under a herd: offered load at twice what the spoke can answer.
#
# The spoke runs pinned to core 0, and once every envoy has connected (the ramp: TLS
# handshakes are not what this measures) under a CPU quota (QUOTA % of that core, through
# the cgroup v1 cpu controller), so the simulator on core 1 can offer more than it
# answers. Measurement starts SETTLE after the ramp.
# First the spoke's capacity is measured (500 envoys in a closed loop: each checks in
# again as soon as it is answered); then ENVOYS envoys check in on an interval that
# offers twice that rate, once with shedding as configured and once with shedding off. Printed per
# run: answered check-ins/s, latency p50/p99/p99.9 of answered check-ins, failures by
# status (timeouts included), attempts shed, and check-ins answered on retry after being
# shed.
#
#   deploy/bench/shedding.sh
#   ENVOYS=20000 QUOTA=25 SECS=40 deploy/bench/shedding.sh
#
# Needs root (the cgroup). Env: ENVOYS (20000), QUOTA (25), SECS (measured seconds, 40),
# RAMP (60), SETTLE (10), OUT (/tmp/vigo-bench/shedding-<UTC>).
set -euo pipefail
cd "$(dirname "$0")/../.."
ENVOYS=${ENVOYS:-20000}
QUOTA=${QUOTA:-25}
SECS=${SECS:-40}
RAMP=${RAMP:-60}
SETTLE=${SETTLE:-10}
OUT=${OUT:-/tmp/vigo-bench/shedding-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
cargo build --release --bin vigo-spoke --bin vigo-sim 2>&1 | tail -1
BIN=${BIN:-$(pwd)/${CARGO_TARGET_DIR:-target}/release}
. deploy/bench/lib.sh
vigo_common_fd() { ulimit -n 65536 2>/dev/null || true; }
vigo_common_fd

CG=/sys/fs/cgroup/cpu/vigo-bench
mkdir -p "$CG"
echo 100000 > "$CG/cpu.cfs_period_us"
echo $((QUOTA * 1000)) > "$CG/cpu.cfs_quota_us"
confine() { echo "$1" > "$CG/cgroup.procs"; for t in /proc/"$1"/task/*; do echo "${t##*/}" > "$CG/tasks"; done; }

# Shedding as configured by default, but for the hint's ceiling: the bench's interval is
# seconds where a fleet's is a minute, and max_retry_after (5m by default) is scaled to
# five intervals.
shedding_yaml() { printf "shedding:\n  max_queue_wait: 250ms\n  retry_after: 2s\n  max_retry_after: %s" "$1"; }
NO_SHED="shedding:\n  max_in_flight: 100000000\n  max_queue_wait: 1h\n  retry_after: 2s"
# Capacity is measured with shedding off.
spoke_home "$OUT/spoke" "$(printf "$NO_SHED")"
SECRET=$(cat "$OUT/spoke/secret")

connected() { # envoys the simulator has seen answered so far (its progress lines)
    sed -n 's/.*connected \([0-9]*\) .*/\1/p' "$OUT/$1.progress" 2>/dev/null | tail -1
}
sim() { # sim INTERVAL LABEL [ENVOYS]: a run against the spoke, confined once every
        # envoy has been answered; JSON to OUT/LABEL.json
    local n=${3:-$ENVOYS}
    taskset -c 1 "$BIN/vigo-sim" --ca "$OUT/spoke/pki/ca.pem" --envoys "$n" \
        --identities "$OUT/ids.json" --interval "$1" --jitter 0% \
        --duration "$((SECS + RAMP + SETTLE))s" --ramp "${RAMP}s" --settle "${SETTLE}s" \
        --progress 1s --spoke-pid "$SPOKE" --json > "$OUT/$2.json" 2> "$OUT/$2.progress" &
    local sim=$! deadline=$((SECONDS + RAMP + SETTLE - 1))
    sleep "$RAMP"
    until [ "$(connected "$2")" -ge "$n" ] || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.2; done
    [ "$(connected "$2")" -ge "$n" ] ||
        echo "warning: $(connected "$2") of $n envoys answered when the quota starts" >&2
    confine "$SPOKE"
    wait "$sim"
}
report() {
    python3 - "$OUT/$1.json" "$1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"RESULT run={sys.argv[2]} answered_per_s={s['checkins_per_second']:.0f} "
      f"p50_ms={s['latency_p50_us']/1000:.1f} p99_ms={s['latency_p99_us']/1000:.1f} "
      f"p999_ms={s['latency_p999_us']/1000:.1f} failed={sum(s['failed'].values())} "
      f"failed_by={json.dumps(s['failed'])} shed={s['shed']} "
      f"answered_after_shed={s['recovered_after_shed']} "
      f"spoke_cpu_pct={s['spoke_cpu_percent'] or 0:.0f}")
PY
}

# Enroll once, unconfined (not measured).
start_spoke "$OUT/spoke"
taskset -c 1 "$BIN/vigo-sim" --ca "$OUT/spoke/pki/ca.pem" --token "$SECRET" --envoys "$ENVOYS" \
    --identities "$OUT/ids.json" --interval 60s --duration 1s --ramp 0s --progress 0s >/dev/null
stop_spoke

# Capacity: 500 envoys in a closed loop against the confined spoke (enough to keep it
# busy; more would only queue).
start_spoke "$OUT/spoke"
sim 1ms capacity 500
stop_spoke
capacity=$(python3 -c "import json; print(json.load(open('$OUT/capacity.json'))['checkins_per_second'])")
interval_ms=$(python3 -c "print(max(1, round($ENVOYS / (2 * $capacity) * 1000)))")
report capacity | tee -a "$OUT/results.txt"
echo "capacity ${capacity%.*}/s under a ${QUOTA}% quota: offering twice that (${ENVOYS} envoys every ${interval_ms} ms)" | tee -a "$OUT/results.txt"

for run in shedding no-shedding; do
    if [ "$run" = no-shedding ]; then
        spoke_home_yaml=$(printf "$NO_SHED")
    else
        spoke_home_yaml=$(shedding_yaml "$((5 * interval_ms))ms")
    fi
    python3 - "$OUT/spoke/spoke.yaml" "$spoke_home_yaml" <<'PY'
import re, sys
path, block = sys.argv[1], sys.argv[2]
text = open(path).read()
text = re.sub(r"shedding:\n(  .*\n)+", block + "\n", text)
open(path, "w").write(text)
PY
    start_spoke "$OUT/spoke"
    sim "${interval_ms}ms" "$run"
    curl -s http://127.0.0.1:9464/metrics > "$OUT/$run.metrics" || true
    stop_spoke
    report "$run" | tee -a "$OUT/results.txt"
done
rmdir "$CG" 2>/dev/null || true
echo "results in $OUT"
