#!/usr/bin/env bash
# Builds the image vigo-spanner:local without any registry: release binaries of this
# repository plus the shared libraries they load (found with ldd), on FROM scratch.
#
#   deploy/docker/build-image.sh            IMAGE=vigo-spanner:dev deploy/docker/build-image.sh
#
# VIGO_IMAGE_PROFILE=debug packs the debug build instead (CI: it reuses what the tests
# just compiled; functionally the same, slower to run).
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-vigo-spanner:local}
PROFILE=${VIGO_IMAGE_PROFILE:-release}
BINS=(vigo-hub vigo-spoke vigo-envoy vigo-sim vigocli)

args=()
for b in "${BINS[@]}"; do args+=(--bin "$b"); done
case "$PROFILE" in
    # Release images say which commit they are (vigo_build_info{commit}); debug ones
    # share the test build and leave it unknown rather than rebuild every crate.
    release) VIGO_COMMIT=${VIGO_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)} \
                 cargo build --release "${args[@]}" ;;
    debug) cargo build "${args[@]}" ;;
    *) echo "VIGO_IMAGE_PROFILE must be release or debug" >&2; exit 2 ;;
esac
BIN=${CARGO_TARGET_DIR:-target}/$PROFILE

ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT
mkdir -p "$ROOTFS/usr/local/bin" "$ROOTFS/data" "$ROOTFS/tmp" "$ROOTFS/etc"
chmod 1777 "$ROOTFS/tmp"
# What envoys in this image report as their os trait.
printf 'ID=vigo-spanner\nVERSION_ID=%s\n' "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" > "$ROOTFS/etc/os-release"
for b in "${BINS[@]}"; do
    # Line tables stay in target/ for debugging; the image carries symbols only.
    strip --strip-debug -o "$ROOTFS/usr/local/bin/$b" "$BIN/$b"
    # Every library the dynamic loader resolves, and the loader itself.
    ldd "$BIN/$b" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
        while read -r lib; do cp -L --parents "$lib" "$ROOTFS/"; done
done
DOCKER_CLI_HINTS=false docker build --quiet -t "$IMAGE" -f deploy/docker/Dockerfile "$ROOTFS" > /dev/null 2>&1 ||
    docker build -t "$IMAGE" -f deploy/docker/Dockerfile "$ROOTFS"
echo "built $IMAGE ($PROFILE, $(du -sh "$ROOTFS" | cut -f1) on disk): ${BINS[*]}"
