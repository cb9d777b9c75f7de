#!/usr/bin/env bash
# Installs the Debian packages whose commands are missing, as COMMAND:PACKAGE pairs:
#   bash tests/ensure-debs.sh promtool:prometheus chromedriver:chromium-driver
# (root, or sudo). Used by tests/run.sh and deploy/console-screenshots.sh.
set -euo pipefail
missing=()
for pair in "$@"; do
    command -v "${pair%%:*}" > /dev/null || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "== installing Debian packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
