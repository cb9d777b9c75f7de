#!/usr/bin/env bash
# Makes the Python environment the interop tests run in: a venv under target/ with
# grpcio from PyPI (pinned). Prints the venv's python. Reused when present.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/target/interop-venv"
want="grpcio==1.76.0"
if ! "$venv/bin/python" -c "import grpc" 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$want" >&2
fi
echo "$venv/bin/python"
