# Shared by the spoke benchmarks: a standalone spoke home (PKI, a many-use token, a
# config) and starting/stopping the spoke pinned to a core. Source it; it expects BIN
# (release binaries) and sets SPOKE (the running spoke's pid).

# spoke_home DIR [EXTRA_YAML]: PKI, token and spoke.yaml in DIR; the token secret in
# DIR/secret.
spoke_home() {
    local dir=$1 extra=${2:-}
    mkdir -p "$dir"
    "$BIN/vigo-spoke" pki init "$dir/pki" >/dev/null
    "$BIN/vigo-spoke" token new --name bench --uses 1000000 > "$dir/token.txt"
    sed -n 's/^secret: //p' "$dir/token.txt" > "$dir/secret"
    cat > "$dir/spoke.yaml" <<YAML
listen: 127.0.0.1:7443
metrics_listen: 127.0.0.1:9464
data_dir: data
policy_dir: ${POLICY:-$(pwd)/deploy/policy}
tls: {ca_cert: pki/ca.pem, ca_key: pki/ca.key, cert: pki/spoke.pem, key: pki/spoke.key}
bundle_signing_key: pki/bundle-signing.key
checkin:
  interval: 60s
  timestamp_window: 10m
# One simulator process is one source address for all its envoys (a lab, not a NAT):
# its share of connections is the whole cap.
connections:
  connections_per_source: 50000
$extra
enrollment:
  tokens:
$(sed -n '/^- name/,$p' "$dir/token.txt" | sed 's/^/    /')
YAML
}

SPOKE=
trap '[ -n "$SPOKE" ] && kill $SPOKE 2>/dev/null; true' EXIT

# start_spoke DIR [CPUS]: starts the spoke of DIR pinned to CPUS (default 0); waits
# until it serves.
start_spoke() {
    local dir=$1 cpus=${2:-0}
    : > "$dir/spoke.log"
    (cd "$dir" && exec taskset -c "$cpus" "$BIN/vigo-spoke" --config spoke.yaml 2>>spoke.log) &
    SPOKE=$!
    for _ in $(seq 200); do grep -q "spoke serving" "$dir/spoke.log" 2>/dev/null && return; sleep 0.1; done
    cat "$dir/spoke.log"; exit 1
}

stop_spoke() { kill -TERM "$SPOKE"; wait "$SPOKE" 2>/dev/null || true; SPOKE=; }
