#!/usr/bin/env bash
# Saves a PNG screenshot of every page of the web console to docs/console/ (or the
# directory given), as the README shows them. It runs the console's browser test
# (tests/tests/console/: a 3-hub, 3-spoke cluster in one process with 120 simulated
# envoys, headless Chromium over WebDriver), which takes each picture as it walks the
# pages; installs chromium and chromium-driver from Debian's packages when missing.
#
#   deploy/console-screenshots.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-docs/console}")"
bash tests/ensure-debs.sh chromium:chromium chromedriver:chromium-driver
mkdir -p "$out"
VIGO_CONSOLE_SCREENSHOTS="$out" cargo test -q -p vigo-tests --test console
echo "== screenshots in $out:"
ls -1 "$out"/*.png
