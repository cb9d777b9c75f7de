#!/usr/bin/env bash
# Builds the image vigo-agent-debian:local without any registry: a Debian userland made
# with debootstrap from the Debian archive, systemd as its init, the nginx packages
# downloaded into apt's cache (so the policy installs nginx with no network in the
# container), and vigo-envoy as a systemd service that enrolls once and converges the
# container. The `www-1` agent of docker-compose.yml runs it.
#
#   deploy/docker/build-agent-image.sh       (after deploy/docker/build-image.sh)
#
# The debootstrapped userland is cached in $VIGO_ROOTFS_CACHE (default
# target/agent-rootfs-<suite>.tar): a rebuild only adds the current vigo-envoy. Needs
# root (debootstrap, chroot); installs debootstrap with apt-get when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${AGENT_IMAGE:-vigo-agent-debian:local}
PROFILE=${VIGO_IMAGE_PROFILE:-release}
SUITE=${VIGO_DEBIAN_SUITE:-bookworm}
MIRROR=${VIGO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${VIGO_ROOTFS_CACHE:-${CARGO_TARGET_DIR:-target}/agent-rootfs-$SUITE.tar}
ENVOY=${CARGO_TARGET_DIR:-target}/$PROFILE/vigo-envoy
# Packages the policy installs (deploy/policy/configcrates/nginx.yaml), fetched into the
# image's apt cache, not installed.
OFFLINE_PACKAGES=(nginx)

[ -x "$ENVOY" ] || { echo "no $ENVOY: run deploy/docker/build-image.sh first" >&2; exit 1; }

ROOTFS=$(mktemp -d)
trap 'rm -rf "$ROOTFS"' EXIT

if [ ! -s "$CACHE" ]; then
    if ! command -v debootstrap > /dev/null; then
        echo "== installing debootstrap (Debian package)"
        get_debootstrap() {
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap > /dev/null
        }
        get_debootstrap || { apt-get update -qq && get_debootstrap; }
    fi
    echo "== debootstrap $SUITE (systemd, curl) from $MIRROR"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl,procps,ca-certificates \
        "$SUITE" "$ROOTFS" "$MIRROR" > "$ROOTFS.log" 2>&1 ||
        { tail -20 "$ROOTFS.log"; exit 1; }
    rm -f "$ROOTFS.log"
    echo "== downloading ${OFFLINE_PACKAGES[*]} into the image's apt cache"
    cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
    echo "deb $MIRROR $SUITE main" > "$ROOTFS/etc/apt/sources.list"
    chroot "$ROOTFS" apt-get update -qq
    chroot "$ROOTFS" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --download-only --no-install-recommends "${OFFLINE_PACKAGES[@]}" > /dev/null
    # The container has no route to the archive: apt works from its cache alone.
    rm -f "$ROOTFS/etc/resolv.conf"
    # Units a container has no use for (no consoles, no udev, no time sync).
    for unit in getty.target console-getty.service systemd-udevd.service systemd-timesyncd.service \
        systemd-logind.service; do
        ln -sf /dev/null "$ROOTFS/etc/systemd/system/$unit"
    done
    mkdir -p "$(dirname "$CACHE")"
    tar -C "$ROOTFS" -cf "$CACHE" .
else
    tar -C "$ROOTFS" -xf "$CACHE"
fi

install -m 0755 "$ENVOY" "$ROOTFS/usr/local/bin/vigo-envoy"
[ -x "$ROOTFS/usr/local/bin/vigo-envoy" ] || { echo "vigo-envoy did not land in the image" >&2; exit 1; }
cat > "$ROOTFS/etc/systemd/system/vigo-envoy.service" <<'EOF'
# The agent: enrolls once through the hub (the container's hostname is its name), then
# converges this machine every check-in interval.
[Unit]
Description=Vigo Spanner envoy
After=network.target
# Keep trying while the hub is not reachable yet.
StartLimitIntervalSec=0

[Service]
ExecStartPre=/usr/local/bin/vigo-envoy --state-dir /state enroll --if-missing --server hub-2:7400 --ca /pki/ca.pem --token-file /tokens/enroll.token
ExecStart=/usr/local/bin/vigo-envoy --state-dir /state run --stream-linger 1m
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$ROOTFS/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/vigo-envoy.service "$ROOTFS/etc/systemd/system/multi-user.target.wants/vigo-envoy.service"

tar -C "$ROOTFS" -c . |
    docker import --change 'CMD ["/sbin/init"]' --change 'ENV container=docker' - "$IMAGE" > /dev/null
echo "built $IMAGE (Debian $SUITE, systemd, $PROFILE vigo-envoy; ${OFFLINE_PACKAGES[*]} in apt's cache) in ${SECONDS}s"
