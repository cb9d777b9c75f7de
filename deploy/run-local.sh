#!/usr/bin/env bash
# Runs the product locally: a spoke with a generated PKI and the example policy, and the
# fleet simulator driving simulated envoys against it through the real protocol.
#
#   deploy/run-local.sh                 500 envoys, 5 s interval, 60 s
#   ENVOYS=2000 INTERVAL=10s DURATION=5m deploy/run-local.sh
#
# State lives in .local/ (PKI, redb, config, simulator identities); a second run reuses
# it. Ctrl-C stops the simulator and the spoke (which flushes to disk before exiting).
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOYS=${ENVOYS:-500}
INTERVAL=${INTERVAL:-5s}
DURATION=${DURATION:-60s}
HOME_DIR=${VIGO_LOCAL:-.local}

cargo build --release --bin vigo-spoke --bin vigo-sim
BIN=${CARGO_TARGET_DIR:-target}/release
mkdir -p "$HOME_DIR"
cd "$HOME_DIR"

if [ ! -f pki/ca.pem ]; then
    "$OLDPWD/$BIN/vigo-spoke" pki init pki
fi
if [ ! -f spoke.yaml ]; then
    "$OLDPWD/$BIN/vigo-spoke" token new --name local --uses 1000000 > token.txt
    sed -n 's/^secret: //p' token.txt > token.secret
    chmod 600 token.txt token.secret
    cat > spoke.yaml <<YAML
# Local spoke (deploy/spoke.example.yaml documents every key).
name: local
listen: 127.0.0.1:7443
metrics_listen: 127.0.0.1:9464
data_dir: data
policy_dir: $OLDPWD/deploy/policy
tls:
  ca_cert: pki/ca.pem
  ca_key: pki/ca.key
  cert: pki/spoke.pem
  key: pki/spoke.key
bundle_signing_key: pki/bundle-signing.key
checkin:
  interval: $INTERVAL
enrollment:
  tokens:
$(sed -n '/^- name/,$p' token.txt | sed 's/^/    /')
YAML
fi

"$OLDPWD/$BIN/vigo-spoke" --config spoke.yaml 2> spoke.log &
SPOKE=$!
trap 'kill -TERM $SPOKE 2>/dev/null; wait $SPOKE 2>/dev/null; echo "spoke stopped (log: $HOME_DIR/spoke.log)"' EXIT
for _ in $(seq 100); do grep -q "spoke serving" spoke.log && break; sleep 0.1; done
grep -q "spoke serving" spoke.log || { cat spoke.log; exit 1; }
echo "spoke pid $SPOKE on 127.0.0.1:7443; metrics at http://127.0.0.1:9464/metrics; log $HOME_DIR/spoke.log"

"$OLDPWD/$BIN/vigo-sim" --target 127.0.0.1:7443 --ca pki/ca.pem --token "$(cat token.secret)" \
    --envoys "$ENVOYS" --interval "$INTERVAL" --duration "$DURATION" --ramp "$INTERVAL" \
    --identities sim-identities.json --spoke-pid "$SPOKE"
