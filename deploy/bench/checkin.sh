#!/usr/bin/env bash
# Spoke CPU per signed no-change check-in, measured with vigo-sim, and — in the same
# sitting — the floor of a bare signed mTLS RPC (../shared/anchors/grpc-floor), so the
# spoke can be quoted as a ratio. Spoke and floor server pinned to core 0, load to core 1.
#
#   deploy/bench/checkin.sh                 10,000 envoys, saturation (closed loop), 3 rounds
#   ENVOYS=500 ROUNDS=5 SECS=20 deploy/bench/checkin.sh
#   FLOOR=0 deploy/bench/checkin.sh         spoke only
#   FLOOR=0 ENVOYS=5000 INTERVAL=60s RAMP=60 SECS=60 PERF=1 deploy/bench/checkin.sh
#                                           the real rate (83/s), with context switches,
#                                           syscalls and migrations per check-in
#
# Env: ENVOYS (10000), ROUNDS (3), SECS (measured seconds, 20), RAMP (seconds, 10),
#      INTERVAL (check-in interval; default 1ms = every envoy back to back), SIM_BIN
#      (another vigo-sim build to load the spoke with),
#      FLOOR_DIR (../shared/anchors/grpc-floor), FLOOR_CONNS (512, the floor's reference
#      shape; set it to ENVOYS to compare at equal connection counts), OUT (/tmp/vigo-bench/<UTC>),
#      PERF (1: `perf stat` the spoke over the measured window).
# Prints one RESULT line per run and the medians.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENVOYS=${ENVOYS:-10000}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-20}
RAMP=${RAMP:-10}
INTERVAL=${INTERVAL:-1ms}
FLOOR=${FLOOR:-1}
FLOOR_DIR=${FLOOR_DIR:-../shared/anchors/grpc-floor}
FLOOR_CONNS=${FLOOR_CONNS:-512}
OUT=${OUT:-/tmp/vigo-bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

cargo build --release --bin vigo-spoke --bin vigo-sim 2>&1 | tail -1
BIN=${BIN:-$(pwd)/${CARGO_TARGET_DIR:-target}/release}
# SIM_BIN: another simulator build to load the spoke with (to compare two builds).
SIM_BIN=${SIM_BIN:-$BIN/vigo-sim}
if [ "$FLOOR" = 1 ]; then
    FLOOR_TARGET=${FLOOR_TARGET:-/tmp/grpc-floor-target}
    CARGO_TARGET_DIR=$FLOOR_TARGET cargo build --release --manifest-path "$FLOOR_DIR/Cargo.toml" 2>&1 | tail -1
    FB=$FLOOR_TARGET/release/grpc-floor
    "$FB" pki --dir "$OUT/floor-pki" >/dev/null
fi

# A spoke home with a relay-free config and a many-use token.
. deploy/bench/lib.sh
HOME_DIR=$OUT/spoke
spoke_home "$HOME_DIR"
SECRET=$(cat "$HOME_DIR/secret")

# Enroll once (not measured).
start_spoke "$HOME_DIR"
taskset -c 1 "$SIM_BIN" --ca "$HOME_DIR/pki/ca.pem" --token "$SECRET" --envoys "$ENVOYS" \
    --identities "$HOME_DIR/ids.json" --interval 60s --duration 1s --ramp 0s --progress 0s >/dev/null
stop_spoke

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for round in $(seq "$ROUNDS"); do
    start_spoke "$HOME_DIR"
    taskset -c 1 "$SIM_BIN" --ca "$HOME_DIR/pki/ca.pem" --envoys "$ENVOYS" \
        --identities "$HOME_DIR/ids.json" --interval "$INTERVAL" --jitter 0% \
        --duration "$((SECS + RAMP))s" --ramp "${RAMP}s" --progress 0s \
        --spoke-pid "$SPOKE" --json > "$OUT/spoke-$round.json" &
    SIM=$!
    if [ "${PERF:-0}" = 1 ]; then
        sleep "$RAMP"
        perf stat -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter \
            -p "$SPOKE" -o "$OUT/perf-$round.txt" -- sleep "$SECS" || true
    fi
    wait "$SIM"
    batch=$(curl -s 127.0.0.1:9464/metrics | awk '/^vigo_verify_batch_size_sum/{s=$2} /^vigo_verify_batch_size_count/{c=$2} END{if(c) printf "%.1f", s/c}')
    stop_spoke
    python3 - "$OUT/spoke-$round.json" "$batch" <<'PY' | tee -a "$OUT/results.txt"
import json, sys
s = json.load(open(sys.argv[1]))
print(f"RESULT kind=spoke cpu_us={s['spoke_cpu_us_per_checkin']:.1f} rps={s['checkins_per_second']:.0f} "
      f"p50_us={s['latency_p50_us']} p99_us={s['latency_p99_us']} rss_kib={s['spoke_rss_kib']} "
      f"rss_per_envoy_b={s['spoke_rss_per_envoy_bytes']:.0f} cpu_pct={s['spoke_cpu_percent']:.0f} "
      f"sim_cpu_us={s['sim_cpu_us_per_checkin']:.1f} sim_rss_per_envoy_b={s.get('sim_rss_per_envoy_bytes') or 0:.0f} "
      f"batch={sys.argv[2]} failed={sum(s['failed'].values())}")
PY
    if [ -f "$OUT/perf-$round.txt" ]; then
        python3 - "$OUT/perf-$round.txt" "$OUT/spoke-$round.json" "$SECS" <<'PY' | tee -a "$OUT/results.txt"
import json, re, sys
text = open(sys.argv[1]).read()
checkins = json.load(open(sys.argv[2]))["checkins_per_second"] * float(sys.argv[3])
count = lambda name: int(re.search(r"([\d,]+)\s+" + re.escape(name), text).group(1).replace(",", ""))
cpu_ms = float(re.search(r"([\d.,]+)\s+msec task-clock", text).group(1).replace(",", ""))
print(f"PERF cpu_us={cpu_ms * 1000 / checkins:.1f} ctx_switches={count('context-switches') / checkins:.2f} "
      f"syscalls={count('raw_syscalls:sys_enter') / checkins:.2f} migrations={count('cpu-migrations') / checkins:.2f} per check-in")
PY
    fi
    if [ "$FLOOR" = 1 ]; then
        taskset -c 0 "$FB" server --pki "$OUT/floor-pki" --mode verify > "$OUT/floor-server.log" 2>&1 &
        FS=$!
        for _ in $(seq 100); do grep -q READY "$OUT/floor-server.log" && break; sleep 0.1; done
        line=$(taskset -c 1 "$FB" load --pki "$OUT/floor-pki" --server-pid "$FS" --conns "$FLOOR_CONNS" --inflight 1 \
            --secs "$SECS" --warmup 2 2>/dev/null | grep RESULT)
        kill "$FS"; wait "$FS" 2>/dev/null || true
        cpu=$(sed -E 's/.*srv_cpu_us_per_req=([0-9.]+).*/\1/' <<<"$line")
        echo "RESULT kind=floor cpu_us=$cpu conns=$FLOOR_CONNS $(grep -oE '(rps|srv_rss_kb_[a-z]+)=[0-9.]+' <<<"$line" | tr '\n' ' ')" | tee -a "$OUT/results.txt"
    fi
done

s=$(grep 'kind=spoke' "$OUT/results.txt" | sed -E 's/.*kind=spoke cpu_us=([0-9.]+).*/\1/' | median)
echo "median spoke CPU per check-in: $s µs ($ENVOYS envoys, $ROUNDS rounds)"
if [ "$FLOOR" = 1 ]; then
    f=$(grep 'kind=floor' "$OUT/results.txt" | sed -E 's/.*kind=floor cpu_us=([0-9.]+).*/\1/' | median)
    echo "median floor CPU per request:   $f µs"
    python3 -c "print(f'ratio spoke/floor: {$s/$f:.2f}')"
fi
echo "results in $OUT"
