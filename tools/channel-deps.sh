#!/usr/bin/env bash
# Fetches the peer programs and oracles the PV channel tests use, without installing services:
#   * Debian qemu-guest-agent (unpacked: the real qemu-ga, run with -m unix-listen / isa-serial)
#   * Debian cloud-init (unpacked) plus a venv with its Python deps: `cloud-init schema`,
#     `cloud-init devel net-convert`
#   * bookworm-backports udev + libsystemd-shared >= 254 (unpacked): `udevadm verify`
#   * a venv with PyPI `qemu.qmp` (a QGA/QMP client nobody here wrote)
# Everything goes under $XENPLUG_CHANNEL_DEPS (default /var/cache/xenplug-channel-deps); nothing is
# installed into the system except the packages socat/python3-venv and an apt source entry for
# bookworm-backports (priority 100 by default: never picked unless asked for).
# Idempotent. Run as root on Debian 12. Prints the directory on success.
set -euo pipefail

DEST=${XENPLUG_CHANNEL_DEPS:-/var/cache/xenplug-channel-deps}
mkdir -p "$DEST"
cd "$DEST"
export DEBIAN_FRONTEND=noninteractive

need_update=0
for p in socat python3-venv; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_install+=("$p")
done
if [ ! -e /etc/apt/sources.list.d/xenplug-backports.sources ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  # The machine's own Debian mirror (the first archive URI in its apt configuration).
  mirror=$(awk '$1 == "URIs:" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print ($2 ~ /^\[/ ? $3 : $2); exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || { echo "channel-deps.sh: no Debian mirror in the apt configuration" >&2; exit 1; }
  cat > /etc/apt/sources.list.d/xenplug-backports.sources <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  need_update=1
fi
if [ "$need_update" = 1 ] || ! apt-cache policy udev | grep -q bpo; then
  apt-get update -qq
fi
if [ -n "${need_install[*]:-}" ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${need_install[@]}" >/dev/null
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
