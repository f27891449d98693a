#!/usr/bin/env bash
# Fetches the peer programs and oracles the PV channel tests use, without installing services:
#   * Debian qemu-guest-agent (unpacked: the real qemu-ga, run with -m unix-listen / isa-serial)
#   * Debian cloud-init (unpacked) plus a venv with its Python deps: `cloud-init schema`,
#     `cloud-init devel net-convert`
#   * bookworm-backports udev + libsystemd-shared >= 254 (unpacked): `udevadm verify`
#   * a venv with PyPI `qemu.qmp` (a QGA/QMP client nobody here wrote)
# Everything goes under $XENPLUG_CHANNEL_DEPS (default /var/cache/xenplug-channel-deps); nothing is
# installed into the system except what tools/deps.sh installs (it runs first: socat, python3-venv
# and the bookworm-backports apt source, at priority 100, never picked unless asked for).
# Idempotent. Run as root on Debian 12. Prints the directory on success.
set -euo pipefail

# The packages (socat, python3-venv) and the bookworm-backports apt source come from deps.sh.
"$(dirname "$(readlink -f "$0")")/deps.sh"
DEST=${XENPLUG_CHANNEL_DEPS:-/var/cache/xenplug-channel-deps}
mkdir -p "$DEST"
cd "$DEST"
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache policy udev | grep -q bpo; then
  apt-get update -qq
fi

unpack() { # dir pkg...
  local dir=$1; shift
  [ -e "$dir/.done" ] && return 0
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/debs"
  (cd "$dir.tmp/debs" && apt-get download -qq "$@" >/dev/null)
  for d in "$dir.tmp"/debs/*.deb; do dpkg-deb -x "$d" "$dir.tmp/root"; done
  touch "$dir.tmp/.done"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

unpack qga qemu-guest-agent
unpack udev-bpo udev/bookworm-backports libsystemd-shared/bookworm-backports
unpack cloud-init cloud-init

if [ ! -e venv/.done ]; then
  rm -rf venv
  python3 -m venv venv
  venv/bin/pip install -q 'qemu.qmp' pyyaml jsonschema jinja2 configobj requests jsonpatch netifaces
  touch venv/.done
fi

# Thin wrappers with stable names the tests look for.
mkdir -p bin
cat > bin/qemu-ga <<W
#!/bin/sh
exec "$DEST/qga/root/usr/sbin/qemu-ga" "\$@"
W
cat > bin/udevadm-verify <<W
#!/bin/sh
LD_LIBRARY_PATH="$DEST/udev-bpo/root/usr/lib/x86_64-linux-gnu/systemd" exec "$DEST/udev-bpo/root/bin/udevadm" verify "\$@"
W
cat > bin/cloud-init <<W
#!/bin/sh
PYTHONPATH="$DEST/cloud-init/root/usr/lib/python3/dist-packages" exec "$DEST/venv/bin/python" "$DEST/cloud-init/root/usr/bin/cloud-init" "\$@"
W
cat > bin/python-qmp <<W
#!/bin/sh
exec "$DEST/venv/bin/python" "\$@"
W
chmod +x bin/*
echo "$DEST"
