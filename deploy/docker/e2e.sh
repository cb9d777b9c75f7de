#!/usr/bin/env bash
# Failure tests across containers: the docker-compose deployment (3 hubs, 3 spokes, a real
# agent, a Debian machine the policy makes a web server, a simulator) under the failures
# a real deployment sees. One line per scenario:
#
#   PASS <scenario> (<seconds>s)     or     FAIL <scenario>: <why>
#
# Builds the image first (deploy/docker/build-image.sh). Runs under its own compose
# project on free host ports, and removes its containers, network and volumes when it
# ends, failed or not (the containers' logs are kept in $E2E_LOGS, default
# /tmp/<project>.log). Exit status: the number of failed scenarios (0: all passed).
set -uo pipefail
cd "$(dirname "$0")/../.."
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-vigoe2e$$}
export VIGO_SIM_ENVOYS=${VIGO_SIM_ENVOYS:-100}
P=$COMPOSE_PROJECT_NAME
NET=${P}_vigo
LOGS=${E2E_LOGS:-/tmp/$P.log}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for v in HUB1_ADMIN HUB1_METRICS HUB2_ADMIN HUB2_METRICS HUB3_ADMIN HUB3_METRICS \
    SPOKEA_METRICS SPOKEB_METRICS SPOKEC_METRICS WWW1_HTTP; do
    export "VIGO_PORT_$v=$(free_port)"
done

compose() { docker-compose -f docker-compose.yml "$@"; }
cleanup() {
    compose logs --no-color > "$LOGS" 2>&1 || true
    compose down -v --remove-orphans > /dev/null 2>&1 || true
}
trap cleanup EXIT

deploy/docker/build-image.sh || { echo "FAIL image: the image did not build"; exit 1; }
deploy/docker/build-agent-image.sh || { echo "FAIL image: the Debian agent image did not build"; exit 1; }

failed=0
current=
started=0
scenario() { current=$1; started=$(date +%s); }
pass() { echo "PASS $current ($(( $(date +%s) - started ))s)"; }
fail() { echo "FAIL $current: $*"; failed=$((failed + 1)); }

container() { echo "${P}_$1_1"; }
running() { [ "$(docker inspect -f '{{.State.Running}}' "$(container "$1")" 2>/dev/null)" = true ]; }
# vigocli inside hub container $1, against hub address(es) $2.
cli_via() {
    local hub=$1 target=$2; shift 2
    docker exec "$(container "$hub")" vigocli --hub "$target" --ca /pki/ca.pem \
        --token-file /hub-1/admin.token --timeout 10s "$@"
}
# vigocli from any running hub, against any hub.
cli() {
    local h
    for h in hub-1 hub-2 hub-3; do
        if running "$h"; then cli_via "$h" "hub-1:7400,hub-2:7400,hub-3:7400" "$@"; return; fi
    done
    return 1
}
# The same, for a command that may take minutes (a drain).
cli_long() {
    docker exec "$(container hub-1)" vigocli --hub "hub-1:7400,hub-2:7400,hub-3:7400" \
        --ca /pki/ca.pem --token-file /hub-1/admin.token --timeout 300s "$@"
}
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
checkins() { # check-ins answered so far by the spokes whose metrics answer
    local total=0 n v
    for v in VIGO_PORT_SPOKEA_METRICS VIGO_PORT_SPOKEB_METRICS VIGO_PORT_SPOKEC_METRICS; do
        n=$(curl -s --max-time 2 "http://127.0.0.1:${!v}/metrics" |
            awk '/^vigo_checkins_total/ { s += $2 } END { printf "%d", s }')
        total=$((total + ${n:-0}))
    done
    echo "$total"
}
wait_for() { # seconds what command...: polls the command until it succeeds
    local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
    until "$@" > /dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then why="timed out waiting for $what"; return 1; fi
        sleep 1
    done
}

# Conditions polled by the scenarios.
listed_at_least() { [ "$(cli envoys list --limit 1 --json | field "d['matched']")" -ge "$1" ]; }
agent_status() { docker exec "$(container envoy)" vigo-envoy --state-dir /state status --json; }
agent_converged() {
    agent_status | field "d['last_run']['failed'] == 0 and d['last_run']['ok'] + d['last_run']['changed'] > 0" |
        grep -qx True
}
agent_checked_in_after() { [ "$(agent_status | field "d['last_run']['last_check_in_ms']")" -gt "$1" ]; }
# A hub asked about itself goes through 127.0.0.1: a node cut off the network has no DNS.
leader_seen_by() { cli_via "hub-$1" 127.0.0.1:7400 status --json | field "d['leader_id']"; }
new_leader() { local l; l=$(leader_seen_by "$1") && [ "$l" != 0 ] && [ "$l" != "$2" ]; }
node_has_token() { cli_via "hub-$1" 127.0.0.1:7400 token list | grep -q "^$2 "; }
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(container "$1")")" = healthy ]; }
checkins_advance() { local a; a=$(checkins); sleep 3; [ "$(checkins)" -gt "$a" ]; }
# A fresh envoy enrolls through hub $1 as hostname $2 (a throwaway container).
enroll_via() {
    docker run --rm --network "$NET" -v "${P}_pki:/pki:ro" -v "${P}_tokens:/tokens:ro" \
        "vigo-spanner:${VIGO_IMAGE_TAG:-local}" vigo-envoy --state-dir /tmp/state enroll \
        --server "hub-$1:7400" --ca /pki/ca.pem --token-file /tokens/enroll.token --hostname "$2"
}
# The web console's overview on hub $1's published admin port, as a browser gets it:
# the log-in form's nonce and cookie, the admin token posted, then the page.
console_overview() {
    local port_var="VIGO_PORT_HUB$1_ADMIN" dir base nonce
    dir=$(mktemp -d)
    docker cp -q "$(container hub-1):/pki/ca.pem" "$dir/ca.pem"
    docker cp -q "$(container hub-1):/hub-1/admin.token" "$dir/token"
    base="https://127.0.0.1:${!port_var}"
    nonce=$(curl -sf --cacert "$dir/ca.pem" -c "$dir/jar" "$base/console/login" |
        sed -n 's/.*name="login_csrf" value="\([0-9a-f]*\)".*/\1/p')
    curl -sf --cacert "$dir/ca.pem" -b "$dir/jar" -c "$dir/jar" -o /dev/null \
        --data-urlencode "login_csrf=$nonce" --data-urlencode "token@$dir/token" "$base/console/login"
    curl -sf --cacert "$dir/ca.pem" -b "$dir/jar" "$base/console/"
    rm -rf "$dir"
}
console_names_missing() { console_overview 2 | grep -q "class=\"missing-spoke\">$1<"; }
listed_hostname() { [ "$(cli envoys list --hostname "$1" --json | field "d['matched']")" = 1 ]; }

# ------------------------------------------------------------------ scenarios

scenario "enroll through the hub and converge"
why=
if compose up -d > /dev/null 2>&1 &&
    wait_for 240 "every envoy to be listed" listed_at_least $((VIGO_SIM_ENVOYS + 2)) &&
    wait_for 90 "the agent to converge" agent_converged &&
    wait_for 30 "check-ins to flow" checkins_advance; then
    pass
else
    fail "${why:-the deployment did not come up}"
fi

scenario "a web server from the policy: package, rendered config, service, one restart per change"
www() { docker exec "$(container www-1)" "$@"; }
www_id() { cli envoys list --hostname www-1 --json | field "d['envoys'][0]['envoy_id']"; }
page_served() { www curl -sf http://127.0.0.1/ | grep -q "^www-1 runs debian "; }
revision_served() { curl -sfI "http://127.0.0.1:$VIGO_PORT_WWW1_HTTP/" | grep -qi "^x-vigo-revision: $1"; }
nginx_invocation() { www systemctl show nginx -p InvocationID --value; }
# Runs (newest first) since run id $2 whose nginx/service resource says "restarted".
restarts_since() {
    cli envoys runs "$1" --limit 100 --json | field \
        "sum(1 for r in d['runs'] if r['run_id'] > $2 for x in r['resources'] if x['resource_id'] == 'nginx/service' and 'restarted' in x['message'])"
}
latest_run() { cli envoys runs "$1" --limit 1 --json | field "d['runs'][0]['run_id']"; }
runs_after() { [ "$(cli envoys runs "$1" --limit 100 --json | field "sum(1 for r in d['runs'] if r['run_id'] > $2)")" -ge "$3" ]; }
why=
if wait_for 300 "www-1 to serve the page rendered from its traits" page_served &&
    www dpkg-query -W -f '${db:Status-Abbrev}' nginx | grep -q '^ii' &&
    www systemctl is-enabled nginx | grep -qx enabled &&
    wait_for 30 "the site's revision header" revision_served 1 &&
    id=$(www_id) && before=$(nginx_invocation) && mark=$(latest_run "$id") &&
    rm -rf "/tmp/$P-policy" && cp -r deploy/policy "/tmp/$P-policy" &&
    sed -i 's/site_revision: "1"/site_revision: "2"/' "/tmp/$P-policy/hostcrates.yaml" &&
    docker cp "/tmp/$P-policy" "$(container hub-1):/tmp/policy-v2" &&
    cli_via hub-1 "hub-1:7400,hub-2:7400,hub-3:7400" config publish /tmp/policy-v2 -m "site revision 2" > /dev/null &&
    wait_for 120 "nginx to serve revision 2" revision_served 2 &&
    wait_for 60 "two more runs of www-1" runs_after "$id" "$mark" 3 &&
    restarts=$(restarts_since "$id" "$mark") && after=$(nginx_invocation) &&
    echo "  nginx restarted $restarts time(s) for one config change (invocation $before -> $after)" &&
    [ "$restarts" = 1 ] && [ "$before" != "$after" ] && page_served; then
    pass
else
    fail "${why:-nginx on www-1 (restarts: ${restarts:-?})}"
fi
rm -rf "/tmp/$P-policy"
# Back to the policy the deployment publishes (its publish step runs again on a restart).
docker cp deploy/policy "$(container hub-1):/tmp/policy-v1" &&
    cli_via hub-1 "hub-1:7400,hub-2:7400,hub-3:7400" config publish /tmp/policy-v1 -m "example policy again" > /dev/null &&
    wait_for 120 "nginx to serve revision 1 again" revision_served 1 ||
    echo "  could not restore the example policy: ${why:-publish failed}"

scenario "stop the hub leader"
why=
old=$(cli status --json | field "d['leader_id']")
other=$(( old % 3 + 1 ))
if [ -n "$old" ] && [ "$old" != 0 ] &&
    docker stop -t 5 "$(container "hub-$old")" > /dev/null &&
    wait_for 30 "a new leader" new_leader "$other" "$old" &&
    wait_for 30 "check-ins to go on without the leader" checkins_advance &&
    wait_for 30 "an enrollment through a surviving hub" enroll_via "$other" "after-failover-$old" &&
    wait_for 10 "the new envoy to be listed" listed_hostname "after-failover-$old" &&
    cli token create "while-hub-$old-down" --role viewer > /dev/null &&
    docker start "$(container "hub-$old")" > /dev/null &&
    wait_for 60 "the old leader to catch up" node_has_token "$old" "while-hub-$old-down"; then
    pass
else
    fail "${why:-hub-$old: a step failed}"
fi

scenario "cut one hub off the network"
why=
victim=$(cli status --json | field "[m['node_id'] for m in d['members'] if not m['leader']][0]")
if [ -n "$victim" ] &&
    docker network disconnect "$NET" "$(container "hub-$victim")" &&
    cli_via "hub-$(( victim % 3 + 1 ))" "hub-$(( victim % 3 + 1 )):7400,hub-$(( (victim + 1) % 3 + 1 )):7400" \
        token create "while-hub-$victim-cut-off" --role viewer > /dev/null &&
    ! cli_via "hub-$victim" 127.0.0.1:7400 token create "from-the-cut-off-hub" --role viewer > /dev/null 2>&1 &&
    ! node_has_token "$victim" "while-hub-$victim-cut-off" &&
    docker network connect --alias "hub-$victim" "$NET" "$(container "hub-$victim")" &&
    wait_for 60 "the cut-off hub to catch up" node_has_token "$victim" "while-hub-$victim-cut-off" &&
    ! node_has_token "$victim" "from-the-cut-off-hub"; then
    pass
else
    fail "${why:-hub-$victim: the majority did not commit, or the isolated node accepted a write}"
fi

scenario "stop a spoke"
why=
spoke=$(agent_status | field "d['spoke'].split(':')[0]")
if [ -n "$spoke" ] && docker stop -t 10 "$(container "$spoke")" > /dev/null &&
    out=$(cli envoys list --limit 1000 2>&1 >/dev/null; echo "exit=$?") &&
    grep -q "spoke $spoke did not answer" <<< "$out" && grep -q "exit=3" <<< "$out" &&
    { console_names_missing "$spoke" || { why="the console's overview does not name $spoke"; false; }; } &&
    since=$(agent_status | field "d['last_run']['finished_at_ms']") &&
    wait_for 60 "the agent to run from its cached bundle" bash -c \
        "[ \$(docker exec $(container envoy) vigo-envoy --state-dir /state status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"last_run\"][\"finished_at_ms\"])') -gt $since ]" &&
    agent_converged &&
    docker start "$(container "$spoke")" > /dev/null &&
    wait_for 60 "the spoke to be healthy" healthy "$spoke" &&
    wait_for 60 "the agent to check in again" agent_checked_in_after "$since" &&
    wait_for 30 "every spoke to answer" cli envoys list --limit 1; then
    pass
else
    fail "${why:-spoke ${spoke:-?}: ${out:-no listing}}"
fi

scenario "restart every container"
why=
before=$(cli status --json | field "(d['pins'], d['config_version'])")
tokens_before=$(cli token list --json | field "sorted(t['name'] for t in d['tokens'])")
if [ -n "$before" ] && compose restart > /dev/null 2>&1 &&
    wait_for 120 "the hubs to answer" cli status &&
    wait_for 60 "check-ins to flow again" checkins_advance &&
    after=$(cli status --json | field "(d['pins'], d['config_version'])") &&
    [ "$after" = "$before" ] &&
    [ "$(cli token list --json | field "sorted(t['name'] for t in d['tokens'])")" = "$tokens_before" ] &&
    wait_for 90 "the agent to converge after the restart" agent_converged; then
    pass
else
    fail "${why:-state before ${before:-?}, after ${after:-?}}"
fi

# Revocation is the cluster's: a revoke that lands while the envoy's spoke is being
# drained holds on the spoke that takes it over, and the old spoke, restarted from a copy
# of its data taken before the revocation, learns it from the hub before it serves.
scenario "revoke an envoy during a drain, restart the old spoke from an older copy"
why=
spoke=$(agent_status | field "d['spoke'].split(':')[0]")
agent=$(agent_status | field "d['envoy_id']")
metrics_port_var="VIGO_PORT_$(tr -d '-' <<< "$spoke" | tr '[:lower:]' '[:upper:]')_METRICS"
backup=$(mktemp -d)
revoked_on_old_spoke() {
    curl -s --max-time 2 "http://127.0.0.1:${!metrics_port_var}/metrics" |
        awk '/^vigo_envoys_revoked / { exit !($2 >= 1) }'
}
agent_revoked() { [ "$(cli envoys show "$agent" --json | field "d['envoy']['revoked']")" = True ]; }
if [ -n "$spoke" ] && [ -n "$agent" ] &&
    docker stop -t 10 "$(container "$spoke")" > /dev/null &&
    docker cp "$(container "$spoke"):/data" "$backup/" &&
    docker start "$(container "$spoke")" > /dev/null &&
    wait_for 60 "the spoke to be healthy" healthy "$spoke" &&
    ! revoked_on_old_spoke; then
    cli_long spoke drain "$spoke" > "$backup/drain.out" 2>&1 &
    drain=$!
    sleep 1
    if cli envoys revoke "$agent" --reason "e2e: revoked during a drain" > /dev/null &&
        wait "$drain" &&
        wait_for 30 "the agent to show revoked on its new spoke" agent_revoked &&
        docker stop -t 10 "$(container "$spoke")" > /dev/null &&
        docker cp "$backup/data/." "$(container "$spoke"):/data/" &&
        docker start "$(container "$spoke")" > /dev/null &&
        wait_for 60 "the restored spoke to be healthy" healthy "$spoke" &&
        wait_for 30 "the restored spoke to hold the revocation" revoked_on_old_spoke &&
        agent_revoked; then
        pass
    else
        fail "${why:-spoke $spoke, envoy $agent: $(cat "$backup/drain.out" 2>/dev/null | tail -1)}"
    fi
else
    fail "${why:-could not copy the data of spoke ${spoke:-?}}"
fi
rm -rf "$backup"

# A spoke cut off the network (no reset reaches anyone) shows unhealthy within seconds,
# and once back, fan-out queries reach it at once (no connection left waiting on the
# dead one).
scenario "cut a spoke off the network"
why=
spoke_healthy() {
    [ "$(cli status --json | field "[s['healthy'] for s in d['spokes'] if s['spoke_id'] == '$1'][0]")" = "$2" ]
}
every_spoke_answers() { cli envoys list --limit 1 > /dev/null; }
cut=$(cli status --json | field "[s['spoke_id'] for s in d['spokes'] if s['state'] == 'active'][0]")
if [ -n "$cut" ] && docker network disconnect "$NET" "$(container "$cut")" &&
    wait_for 20 "the cut-off spoke to show unhealthy" spoke_healthy "$cut" False &&
    docker network connect --alias "$cut" "$NET" "$(container "$cut")" &&
    back=$(date +%s) &&
    wait_for 20 "every spoke to answer a listing" every_spoke_answers &&
    echo "  $cut answered a fan-out $(( $(date +%s) - back ))s after it was reconnected" &&
    wait_for 20 "the spoke to show healthy" spoke_healthy "$cut" True; then
    pass
else
    fail "${why:-spoke ${cut:-?}}"
fi

echo "$((8 - failed)) of 8 scenarios passed (logs: $LOGS)"
exit "$failed"
