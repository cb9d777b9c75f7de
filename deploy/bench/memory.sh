#!/usr/bin/env bash
# Spoke memory over time at the real rate: ENVOYS simulated envoys checking in every
# INTERVAL for MINUTES, each on its own connection from its own loopback address; the
# spoke's RSS (and per connected envoy) at 1, 10 and 30 minutes after the ramp, so a
# per-connection cost that grows with calls (an HPACK table filling with `date`
# values, a queue growing a block) shows where a snapshot after one call cannot.
#
#   deploy/bench/memory.sh                  5,000 envoys, 60 s, 30 minutes
#   ENVOYS=1000 MINUTES=10 deploy/bench/memory.sh
#
# Env: ENVOYS (5000), INTERVAL (60s), MINUTES (30), RAMP (seconds, 60), OUT.
# Prints one line per sample and the figures the simulator measured at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENVOYS=${ENVOYS:-5000}
INTERVAL=${INTERVAL:-60s}
MINUTES=${MINUTES:-30}
RAMP=${RAMP:-60}
OUT=${OUT:-/tmp/vigo-bench/memory-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

cargo build --release --bin vigo-spoke --bin vigo-sim 2>&1 | tail -1
BIN=${BIN:-$(pwd)/${CARGO_TARGET_DIR:-target}/release}
. deploy/bench/lib.sh
HOME_DIR=$OUT/spoke
spoke_home "$HOME_DIR"
SECRET=$(cat "$HOME_DIR/secret")
start_spoke "$HOME_DIR"
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
base=$(rss_kib "$SPOKE")

# Enroll (not measured), then check in at the real rate.
"$BIN/vigo-sim" --ca "$HOME_DIR/pki/ca.pem" --token "$SECRET" --envoys "$ENVOYS" \
    --identities "$HOME_DIR/ids.json" --interval 60s --duration 1s --ramp 0s --progress 0s \
    --loopback-sources >/dev/null
total=$((MINUTES * 60 + RAMP))
"$BIN/vigo-sim" --ca "$HOME_DIR/pki/ca.pem" --envoys "$ENVOYS" --identities "$HOME_DIR/ids.json" \
    --interval "$INTERVAL" --duration "${total}s" --ramp "${RAMP}s" --progress 0s \
    --loopback-sources --spoke-pid "$SPOKE" > "$OUT/sim.txt" &
SIM=$!
started=$(date +%s)
echo "spoke RSS before the envoys connected: $base KiB"
for minute in 1 10 30; do
    [ "$minute" -le "$MINUTES" ] || continue
    until [ $(($(date +%s) - started)) -ge $((RAMP + minute * 60)) ]; do sleep 5; done
    rss=$(rss_kib "$SPOKE")
    echo "RESULT minute=$minute envoys=$ENVOYS spoke_rss_kib=$rss per_envoy_bytes=$(((rss - base) * 1024 / ENVOYS))"
done
wait "$SIM"
cat "$OUT/sim.txt"
