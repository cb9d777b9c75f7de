#!/usr/bin/env bash
# The whole fleet on this box, measured: 3 hub nodes, SPOKES spokes and as many vigo-sim
# processes as file-descriptor limits need, every envoy enrolling through the hub, then
# timed phases on the check-in interval:
#
#   enroll     every envoy enrolls through the hub (wall time, rate, hub CPU)
#   ramp       envoys start spread over RAMP seconds
#   steady     STEADY seconds of check-ins after the ramp (and SETTLE)
#   storm      a changed policy is published: every envoy fetches a bundle and reports
#   reconnect  spoke-0 is killed with -9 and restarted: its envoys reconnect at once
#   failover   the hub leader is stopped: time until a new leader commits
#
# Every envoy connects from its own loopback address (vigo-sim --loopback-sources), as
# from a fleet of machines. For each phase: check-ins/s, latency percentiles, failures and retries by status (from
# the simulators' timelines), spoke and hub CPU per check-in from /proc, spoke RSS per
# connected envoy, raft term changes. Prints a table and writes $OUT/fleet.json.
#
#   deploy/bench/fleet.sh                                   20,000 envoys, 3 spokes
#   ENVOYS=100000 SPOKES=6 deploy/bench/fleet.sh            the target fleet
#   ENVOYS=5000 STEADY=60 PHASES="steady" deploy/bench/fleet.sh
#   ENVOYS=30000 PHASES=enroll deploy/bench/fleet.sh       enrollment alone
#
# Env: ENVOYS (20000), SPOKES (3), INTERVAL (60s), RAMP (seconds; 120, or ENVOYS/300 when
#      longer), SETTLE (10), STEADY (180),
#      PHASES (the phases after steady, in order: "storm reconnect failover"; "enroll"
#      alone stops after enrollment),
#      PER_SIM (envoys per simulator, 16000: each envoy is a connection and a descriptor),
#      OUT (/tmp/vigo-fleet/<UTC>).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ENVOYS=${ENVOYS:-20000}
SPOKES=${SPOKES:-3}
INTERVAL=${INTERVAL:-60s}
# New connections cost full TLS handshakes (~1 ms of CPU at the spoke and as much at the
# simulator): this box takes ~300 a second beside the check-ins, so a bigger fleet ramps
# longer (100,000 envoys: 333 s). A ramp the box cannot take measures its collapse.
RAMP=${RAMP:-$(( ENVOYS / 300 > 120 ? ENVOYS / 300 : 120 ))}
SETTLE=${SETTLE:-10}
STEADY=${STEADY:-180}
PHASES=${PHASES:-storm reconnect failover}
PER_SIM=${PER_SIM:-16000}
OUT=${OUT:-/tmp/vigo-fleet/$(date -u +%Y%m%dT%H%M%SZ)}
IVL=$(sed -E 's/s$//' <<<"$INTERVAL")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

cargo build --release --bin vigo-hub --bin vigo-spoke --bin vigo-sim --bin vigocli 2>&1 | tail -1
BIN=$ROOT/${CARGO_TARGET_DIR:-target}/release
ulimit -n "$(ulimit -Hn)"
. deploy/bench/fleet-lib.sh

start_cluster
vigocli config publish "$ROOT/deploy/policy" -m "fleet bench" >/dev/null
sleep 2

# --- enroll: every simulator's share at once, through the three hub nodes.
SIMS=$(( (ENVOYS + PER_SIM - 1) / PER_SIM ))
share() { local k=$1; echo $(( ENVOYS / SIMS + (k < ENVOYS % SIMS ? 1 : 0) )); }
mark enroll
for k in $(seq 0 $((SIMS - 1))); do
    # The simulator's own CPU (user and system seconds) goes to enroll-K.cpu.
    ( TIMEFORMAT='cpu %U %S'
      time "$BIN/vigo-sim" --hub "127.0.0.1:$((HUB_PORT + k % 3))" --ca "$OUT/pki/ca.pem" \
        --token-file "$OUT/enroll.token" --envoys "$(share "$k")" --identities "$OUT/sim-$k.ids" \
        --hostname-prefix "f$k-" --enroll-concurrency 64 --duration 0s --ramp 0s --progress 0s \
        > "$OUT/enroll-$k.log" 2>&1 ) 2> "$OUT/enroll-$k.cpu" &
    SIM_PIDS+=($!)
done
for p in "${SIM_PIDS[@]}"; do wait "$p" || { cat "$OUT"/enroll-*.log; exit 1; }; done
SIM_PIDS=()
mark enroll-end
if [[ $PHASES == enroll ]]; then
    python3 deploy/bench/fleet-report.py "$OUT" | tee "$OUT/report.txt"
    exit 0
fi

# --- ramp and steady: every simulator runs to the end of the last phase.
rest=0
for p in $PHASES; do case $p in storm|reconnect) rest=$((rest + IVL + 30));; failover) rest=$((rest + 20));; esac; done
TOTAL=$((RAMP + SETTLE + STEADY + rest + 5))
for k in $(seq 0 $((SIMS - 1))); do
    "$BIN/vigo-sim" --hub "127.0.0.1:$((HUB_PORT + k % 3))" --ca "$OUT/pki/ca.pem" \
        --envoys "$(share "$k")" --identities "$OUT/sim-$k.ids" --interval "$INTERVAL" --ramp "${RAMP}s" --duration "${TOTAL}s" --progress 0s --loopback-sources \
        --timeline "$OUT/timeline-$k.jsonl" --json > "$OUT/sim-$k.json" 2> "$OUT/sim-$k.log" &
    SIM_PIDS+=($!)
done
mark ramp
sleep "$RAMP"
mark ramp-end
sleep "$SETTLE"
mark steady
sleep "$STEADY"
mark steady-end

for phase in $PHASES; do
    case $phase in
        storm)
            # A changed policy: every hostcrate's bundle changes, every envoy fetches one.
            rm -rf "$OUT/policy" && cp -r "$ROOT/deploy/policy" "$OUT/policy"
            printf '\n# fleet bench storm %s\n' "$(date -u +%s)" >> "$OUT/policy/hostcrates.yaml"
            mark storm
            vigocli config publish "$OUT/policy" -m "fleet bench storm" >/dev/null
            sleep $((IVL + 30))
            mark storm-end
            ;;
        reconnect)
            mark reconnect
            kill -9 "${SPOKE_PIDS[0]}"
            wait "${SPOKE_PIDS[0]}" 2>/dev/null || true
            start_spoke 0
            sleep $((IVL + 30))
            mark reconnect-end
            ;;
        failover)
            mark failover
            failover > "$OUT/failover.txt"
            sleep 15
            mark failover-end
            ;;
    esac
done
for p in "${SIM_PIDS[@]}"; do wait "$p" || true; done
SIM_PIDS=()
python3 deploy/bench/fleet-report.py "$OUT" | tee "$OUT/report.txt"
echo "results in $OUT (fleet.json, report.txt, timelines, logs)"
