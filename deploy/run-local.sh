#!/usr/bin/env bash
# Runs a complete Vigo Spanner cluster on loopback: 3 hub nodes (raft), 3 spokes, the
# example policy published, and the fleet simulator driving a few hundred envoys that
# enroll through the hub. Prints where the admin API and the metrics are, and a vigocli
# command to try.
#
#   deploy/run-local.sh                          300 envoys checking in every 10 s
#   ENVOYS=2000 INTERVAL=30s deploy/run-local.sh
#
# State lives in .local/cluster (PKI, redb files, configs, tokens, simulator identities);
# a second start reuses it. Ctrl-C stops everything cleanly (spokes flush to disk).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ENVOYS=${ENVOYS:-300}
INTERVAL=${INTERVAL:-10s}
STATE=${VIGO_LOCAL:-.local/cluster}
SPOKES=(spoke-a spoke-b spoke-c)

cargo build --release --bin vigo-hub --bin vigo-spoke --bin vigo-sim --bin vigocli
BIN=$ROOT/${CARGO_TARGET_DIR:-target}/release
mkdir -p "$STATE"
cd "$STATE"
STATE=$PWD

pids=()
stop() {
    trap - INT TERM EXIT
    echo
    echo "stopping: simulator, spokes (final flush), hubs"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "stopped; state kept in $STATE"
}
trap stop INT TERM EXIT

wait_port() { # host port what
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "$3 did not come up on $1:$2; see $STATE/*.log" >&2
    exit 1
}

if [ ! -f pki/ca.pem ]; then
    "$BIN/vigo-hub" pki init pki --hubs 1,2,3 --spokes "$(IFS=,; echo "${SPOKES[*]}")"
fi
for id in 1 2 3; do
    [ -f "hub-$id.yaml" ] || cat > "hub-$id.yaml" <<YAML
# Hub node $id (deploy/hub.example.yaml documents every key).
node_id: $id
listen: 127.0.0.1:740$((id - 1))
admin_listen: 127.0.0.1:748$((id - 1))
metrics_listen: 127.0.0.1:947$((id - 1))
data_dir: hub-$id
tls: {ca_cert: pki/ca.pem, ca_key: pki/ca.key, cert: pki/hub-$id.pem, key: pki/hub-$id.key}
YAML
done
for i in 0 1 2; do
    s=${SPOKES[$i]}
    [ -f "$s.yaml" ] || cat > "$s.yaml" <<YAML
# Spoke $s (deploy/spoke.example.yaml documents every key).
name: $s
listen: 127.0.0.1:744$((i + 3))
metrics_listen: 127.0.0.1:946$((i + 4))
data_dir: $s
tls: {ca_cert: pki/ca.pem, cert: pki/$s.pem, key: pki/$s.key}
checkin: {interval: $INTERVAL}
hub: {addresses: [127.0.0.1:7400, 127.0.0.1:7401, 127.0.0.1:7402], spoke_id: $s}
YAML
done

"$BIN/vigo-hub" init --config hub-1.yaml 2> hub-1.log & pids+=($!)
for id in 2 3; do
    "$BIN/vigo-hub" run --config "hub-$id.yaml" 2> "hub-$id.log" & pids+=($!)
done
for port in 7400 7401 7402; do wait_port 127.0.0.1 "$port" "hub"; done
for _ in $(seq 1 100); do [ -s hub-1/admin.token ] && break; sleep 0.2; done

export VIGO_HUB=127.0.0.1:7400,127.0.0.1:7401,127.0.0.1:7402
export VIGO_CA=$STATE/pki/ca.pem VIGO_TOKEN_FILE=$STATE/hub-1/admin.token
vigocli() { "$BIN/vigocli" "$@"; }
for id in 2 3; do
    if ! vigocli hub members --json | grep -q "\"node_id\": $id,"; then
        until vigocli hub add "$id" "127.0.0.1:740$((id - 1))" > /dev/null; do sleep 1; done
    fi
done

for s in "${SPOKES[@]}"; do
    "$BIN/vigo-spoke" --config "$s.yaml" 2> "$s.log" & pids+=($!)
done
for port in 7443 7444 7445; do wait_port 127.0.0.1 "$port" "spoke"; done

if [ ! -s enroll.token ]; then
    vigocli token create local-envoys --role enroll --uses 1000000 --json \
        | sed -n 's/^  "secret": "\(.*\)"$/\1/p' > enroll.token
    chmod 600 enroll.token
fi
vigocli config publish "$ROOT/deploy/policy" -m "example policy (deploy/policy)" > /dev/null

VIGO_TOKEN=$(cat enroll.token) "$BIN/vigo-sim" --hub 127.0.0.1:7400 --ca pki/ca.pem \
    --envoys "$ENVOYS" --interval "$INTERVAL" --duration 24h --progress 30s \
    --identities sim-identities.json --hostname-prefix "web-" --loopback-sources > sim.log 2>&1 & pids+=($!)

cat <<EOF

Vigo Spanner is running: 3 hub nodes, 3 spokes, $ENVOYS simulated envoys ($STATE).

  web console        https://127.0.0.1:7480/console/  (any hub node; log in with the token in
                     $VIGO_TOKEN_FILE; the certificate is signed by $VIGO_CA)
  admin API (REST)   https://127.0.0.1:7480/api/v1/   (also :7481, :7482; /api/v1/openapi.json)
  metrics            http://127.0.0.1:9470/metrics (hubs :9470-9472, spokes :9464-9466)
  logs               $STATE/*.log

Try, in another shell:

  export VIGO_HUB=$VIGO_HUB VIGO_CA=$VIGO_CA VIGO_TOKEN_FILE=$VIGO_TOKEN_FILE
  $BIN/vigocli status
  $BIN/vigocli compliance
  $BIN/vigocli envoys list --limit 10

Ctrl-C stops everything.
EOF
wait "${pids[@]}"
