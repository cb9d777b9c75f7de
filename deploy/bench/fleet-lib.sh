# The cluster of deploy/bench/fleet.sh: hub nodes and spokes on loopback, phase marks
# with /proc samples, and the leader failover. Sourced; expects BIN, OUT, SPOKES, INTERVAL.

HUB_PORT=7600     # gRPC of hub 1..3: 7600-7602; REST 7680-7682; metrics 9600-9602
SPOKE_PORT=7700   # spoke i: 7700+i; metrics 9700+i
HUB_PIDS=()
SPOKE_PIDS=()
SIM_PIDS=()

cleanup() {
    trap - EXIT INT TERM
    for p in "${SIM_PIDS[@]}" "${SPOKE_PIDS[@]}" "${HUB_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_port() { # port what
    for _ in $(seq 1 150); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "$2 did not come up on port $1; see $OUT/*.log" >&2
    exit 1
}

vigocli() {
    VIGO_HUB=127.0.0.1:$HUB_PORT,127.0.0.1:$((HUB_PORT + 1)),127.0.0.1:$((HUB_PORT + 2)) \
        VIGO_CA=$OUT/pki/ca.pem VIGO_TOKEN_FILE=$OUT/hub-1/admin.token "$BIN/vigocli" "$@"
}

start_hub() { # id init|run
    local id=$1
    (cd "$OUT" && exec "$BIN/vigo-hub" "$2" --config "hub-$id.yaml" 2>> "hub-$id.log") &
    HUB_PIDS[$id]=$!
}

start_hubs() {
    for id in 1 2 3; do
        cat > "$OUT/hub-$id.yaml" <<YAML
node_id: $id
listen: 127.0.0.1:$((HUB_PORT + id - 1))
admin_listen: 127.0.0.1:$((HUB_PORT + 80 + id - 1))
metrics_listen: 127.0.0.1:$((9600 + id - 1))
data_dir: hub-$id
tls: {ca_cert: pki/ca.pem, ca_key: pki/ca.key, cert: pki/hub-$id.pem, key: pki/hub-$id.key}
YAML
    done
    start_hub 1 init
    start_hub 2 run
    start_hub 3 run
    for id in 1 2 3; do wait_port $((HUB_PORT + id - 1)) "hub $id"; done
    for _ in $(seq 1 100); do [ -s "$OUT/hub-1/admin.token" ] && break; sleep 0.2; done
    for id in 2 3; do
        until vigocli hub add "$id" "127.0.0.1:$((HUB_PORT + id - 1))" >/dev/null 2>&1; do sleep 1; done
    done
}

start_spoke() { # index
    local i=$1
    (cd "$OUT" && exec "$BIN/vigo-spoke" --config "spoke-$i.yaml" 2>> "spoke-$i.log") &
    SPOKE_PIDS[$i]=$!
}

start_spokes() {
    for i in $(seq 0 $((SPOKES - 1))); do
        cat > "$OUT/spoke-$i.yaml" <<YAML
name: spoke-$i
listen: 127.0.0.1:$((SPOKE_PORT + i))
metrics_listen: 127.0.0.1:$((9700 + i))
data_dir: spoke-$i
tls: {ca_cert: pki/ca.pem, cert: pki/spoke-$i.pem, key: pki/spoke-$i.key}
checkin: {interval: $INTERVAL}
hub: {addresses: [127.0.0.1:$HUB_PORT, 127.0.0.1:$((HUB_PORT + 1)), 127.0.0.1:$((HUB_PORT + 2))], spoke_id: spoke-$i}
YAML
        start_spoke "$i"
    done
    for i in $(seq 0 $((SPOKES - 1))); do wait_port $((SPOKE_PORT + i)) "spoke-$i"; done
}

# proc_sample PID: "cpu_us rss_kib" of a live process (user + system CPU of all threads).
proc_sample() {
    local pid=$1 tck
    tck=$(getconf CLK_TCK)
    if [ -r "/proc/$pid/stat" ]; then
        awk -v t="$tck" '{ sub(/^.*\) /, ""); printf "%d", ($12 + $13) * 1000000 / t }' "/proc/$pid/stat"
        printf ' %s\n' "$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")"
    else
        echo "0 0"
    fi
}

# mark NAME: a phase boundary in $OUT/marks.jsonl with every process's CPU and RSS and
# every hub's raft term.
mark() {
    local name=$1 at spokes="" hubs="" terms="" s
    at=$(date +%s%3N)
    for i in $(seq 0 $((SPOKES - 1))); do
        s=$(proc_sample "${SPOKE_PIDS[$i]}")
        spokes+="{\"pid\":${SPOKE_PIDS[$i]},\"cpu_us\":${s% *},\"rss_kib\":${s#* }},"
    done
    for id in 1 2 3; do
        s=$(proc_sample "${HUB_PIDS[$id]}")
        hubs+="{\"pid\":${HUB_PIDS[$id]},\"cpu_us\":${s% *},\"rss_kib\":${s#* }},"
        t=$(curl -s --max-time 2 "127.0.0.1:$((9600 + id - 1))/metrics" | awk '/^vigo_hub_raft_term / {print $2}')
        terms+="${t:-null},"
    done
    echo "{\"name\":\"$name\",\"at_ms\":$at,\"spokes\":[${spokes%,}],\"hubs\":[${hubs%,}],\"terms\":[${terms%,}]}" >> "$OUT/marks.jsonl"
    echo "[$(date -u +%T)] $name"
}

# start_cluster: the PKI, three hub nodes, SPOKES spokes and an enrollment token in
# $OUT/enroll.token.
start_cluster() {
    local names=() i
    for i in $(seq 0 $((SPOKES - 1))); do names+=("spoke-$i"); done
    "$BIN/vigo-hub" pki init "$OUT/pki" --hubs 1,2,3 --spokes "$(IFS=,; echo "${names[*]}")" >/dev/null
    start_hubs
    start_spokes
    vigocli token create fleet --role enroll --uses 10000000 --write-secret "$OUT/enroll.token" >/dev/null
}

is_leader() { # hub id
    [ "$(curl -s --max-time 1 "127.0.0.1:$((9600 + $1 - 1))/metrics" | awk '/^vigo_hub_raft_is_leader / {print $2}')" = 1 ]
}

# failover: stops the leader with SIGKILL and prints the milliseconds until a survivor
# says it leads (its metrics, polled every 20 ms) and until a write through the
# survivors commits (an enrollment token created), then restarts the old leader.
failover() {
    local leader=0 id started elected=
    for id in 1 2 3; do is_leader "$id" && leader=$id; done
    [ "$leader" != 0 ] || { echo "no leader found"; return; }
    started=$(date +%s%3N)
    kill -9 "${HUB_PIDS[$leader]}"
    while [ -z "$elected" ]; do
        for id in 1 2 3; do
            [ "$id" != "$leader" ] && is_leader "$id" && elected=$(( $(date +%s%3N) - started ))
        done
        sleep 0.02
    done
    until vigocli token create "failover-$started" --role enroll --uses 1 --timeout 300ms >/dev/null 2>&1; do :; done
    echo "killed=$leader elected_ms=$elected commit_ms=$(( $(date +%s%3N) - started ))"
    start_hub "$leader" run
}
