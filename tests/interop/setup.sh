#!/usr/bin/env bash
# Makes the Python environments the interop tests run in, venvs under target/ with
# tools from PyPI (pinned), and prints the venv's bin directory. Reused when present.
#   tests/interop/setup.sh grpc    grpcio: a client on gRPC's C core
#   tests/interop/setup.sh fuzz    schemathesis: the schema-driven admin API fuzzer
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
case "${1:-grpc}" in
    grpc) venv="$root/target/interop-venv"; want="grpcio==1.76.0"; probe="import grpc" ;;
    fuzz) venv="$root/target/api-fuzz-venv"; want="schemathesis==4.32.5 hypothesis==6.170.17"; probe="import schemathesis" ;;
    *) echo "usage: $0 grpc|fuzz" >&2; exit 2 ;;
esac
if ! "$venv/bin/python" -c "$probe" 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check $want >&2
fi
echo "$venv/bin"
