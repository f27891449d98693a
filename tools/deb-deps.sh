#!/usr/bin/env bash
# Installs the Debian packages that building (tools/build-deb.sh) and testing
# (packaging/test-packages.sh) xenplug's Debian packages need, if any is missing.
#   tools/deb-deps.sh build   dpkg-dev, debhelper, man-db (man page check), protoc (etcd-client)
#   tools/deb-deps.sh test    the above, and lintian, mmdebstrap, inotify-tools, systemd
#                             (systemd-analyze), udev, systemd-container (systemd-nspawn),
#                             etcd-server and etcd-client (the etcd drop-in, live)
# Run as root on Debian 12. Idempotent; does nothing when everything is present.
set -euo pipefail

packages=(dpkg-dev debhelper man-db protobuf-compiler libprotobuf-dev)  # protoc: the etcd-client crate's build
case "${1:-build}" in
  build) ;;
  test) packages+=(lintian mmdebstrap inotify-tools systemd udev systemd-container etcd-server etcd-client) ;;
  *) echo "usage: tools/deb-deps.sh [build|test]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deb-deps.sh: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
