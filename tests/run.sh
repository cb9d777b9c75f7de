#!/usr/bin/env bash
# The test command: installs what the tests use beyond the Rust toolchain, then runs
# the workspace's tests. What it installs:
#   - promtool (Debian package `prometheus`): lints every metrics scrape and the alert
#     rules under deploy/monitoring/;
#   - headless Chromium and its WebDriver (Debian packages chromium, chromium-driver):
#     the web console's tests drive a real browser (tests/tests/console/);
#   - Python grpcio and schemathesis from PyPI, in venvs under target/
#     (tests/interop/setup.sh): a client on gRPC's C core against our TLS, and the
#     schema-driven fuzzer of the admin API.
# Extra arguments go to `cargo test` (e.g. `tests/run.sh -p vigo-tests --test interop`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/ensure-debs.sh promtool:prometheus chromium:chromium chromedriver:chromium-driver
echo "== python tools for the interop tests (grpcio, schemathesis)"
bash tests/interop/setup.sh grpc > /dev/null
bash tests/interop/setup.sh fuzz > /dev/null
echo "== alert rules (promtool check rules, promtool test rules)"
promtool check rules deploy/monitoring/alerts.yml
(cd deploy/monitoring && promtool test rules alerts_test.yml)
echo "== cargo test"
cargo test --workspace "$@"
