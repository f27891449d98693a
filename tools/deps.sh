#!/usr/bin/env bash
# Installs the Debian packages xenplug's demo, tests and real-Xen rig need, if any is missing.
# Run as root on Debian 12. Idempotent; does nothing when everything is present.
#
# On this kind of machine qemu-utils comes preinstalled from bookworm-backports (10.0), and
# bookworm's qemu-system-x86 (7.2) cannot be installed next to it: every qemu-* package follows
# the suite the installed qemu-utils came from. bookworm-backports is added to apt's sources when
# missing (at its default priority of 100, so nothing else is ever taken from it unless asked).
set -euo pipefail

packages=(
  # real peers and oracles for the tests
  xenstore-utils        # xenstore-read/-write/-ls/…: interop with our xenstored; used by the reference scripts
  xen-utils-common      # Debian's reference hotplug scripts (/etc/xen/scripts) for differential tests
  iproute2              # `ip -j` as the test oracle; the simulator's stand-in links
  util-linux            # losetup/flock/logger, used by the reference scripts
  net-tools             # ifconfig, used by the reference vif-route/vif-nat
  e2fsprogs             # mkfs for mounted-device sharing tests; mkfs.ext4 -d for the rig's images
  nftables              # nft: antispoofing and NAT rules, and their oracle
  dnsmasq-base          # vif-nat's DHCP server
  openvswitch-switch    # vif-openvswitch against a real Open vSwitch (userspace datapath)
  socat                 # channel tests
  iputils-ping          # antispoofing tests send real packets between namespaces
  hyperfine             # benchmarks
  g++                   # libFuzzer, compiled by libfuzzer-sys for the fuzz targets (fuzz/run.sh)
  python3-venv          # the channel tests' PyPI peers (tools/channel-deps.sh)
  etcd-server etcd-client  # the peer's fleet store: a real 3-member etcd cluster in the tests
  protobuf-compiler libprotobuf-dev  # protoc and its well-known types (descriptor.proto): the etcd-client crate's build
  openssl               # the etcd TLS test's CA and certificates
  # the real-Xen rig (tests/xen-e2e/run) and the kernel tests (tools/vm-test.sh)
  qemu-system-x86       # Xen and Debian's kernel under TCG
  mmdebstrap            # the cached dom0 image
  busybox-static        # the guests' userland
  cpio gzip xz-utils zstd python3
)

need_update=0
if [ ! -e /etc/apt/sources.list.d/xenplug-backports.sources ] &&
   ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  [ "$(id -u)" = 0 ] || { echo "deps.sh: bookworm-backports is not in apt's sources; run as root to add it" >&2; exit 1; }
  # The machine's own Debian mirror (the first non-security archive URI in its apt configuration).
  mirror=$(awk '$1 == "URIs:" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print ($2 ~ /^\[/ ? $3 : $2); exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || { echo "deps.sh: no Debian mirror in the apt configuration" >&2; exit 1; }
  cat > /etc/apt/sources.list.d/xenplug-backports.sources <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  need_update=1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ "$need_update" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  qemu=() rest=()
  for p in "${missing[@]}"; do
    case "$p" in qemu-*) qemu+=("$p") ;; *) rest+=("$p") ;; esac
  done
  # Don't let package scripts start daemons (openvswitch, dnsmasq) on the build machine.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  echo "deps.sh: installing ${missing[*]}"
  [ ${#rest[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${rest[@]}" >/dev/null
  if [ ${#qemu[@]} -gt 0 ]; then
    target=()
    case "$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null)" in
      *bpo12*) target=(-t bookworm-backports) ;;
    esac
    apt-get install -y -qq --no-install-recommends "${target[@]}" "${qemu[@]}" >/dev/null
  fi
fi
