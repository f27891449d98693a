#!/usr/bin/env bash
# Installs the Debian packages xenplug's demo and tests need, if any is missing.
# Run as root on Debian 12. Idempotent; does nothing when everything is present.
set -euo pipefail

packages=(
  # real peers and oracles for the tests
  xenstore-utils        # xenstore-read/-write/-ls/…: interop with our xenstored; used by the reference scripts
  xen-utils-common      # Debian's reference hotplug scripts (/etc/xen/scripts) for differential tests
  iproute2              # `ip -j` as the test oracle; the simulator's stand-in links
  util-linux            # losetup/flock/logger, used by the reference scripts
  net-tools             # ifconfig, used by the reference vif-route/vif-nat
  e2fsprogs             # mkfs for mounted-device sharing tests
  nftables              # nft: antispoofing and NAT rules, and their oracle
  dnsmasq-base          # vif-nat's DHCP server
  openvswitch-switch    # vif-openvswitch against a real Open vSwitch (userspace datapath)
  socat                 # channel tests
  iputils-ping          # antispoofing tests send real packets between namespaces
  hyperfine             # benchmarks
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Don't let package scripts start daemons (openvswitch, dnsmasq) on the build machine.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
