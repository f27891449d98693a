#!/usr/bin/env bash
# Builds (once, cached) a Debian 12 minbase tree the first-boot oracle tests apply
# configurations to: guest-agent/tests/cloud_init_root.rs copies it twice, lets Debian's own
# cloud-init configure one copy (chroot, NoCloud seed directory) and xenplug-agent the other,
# and compares passwd/group/shadow/gshadow/sudoers/authorized_keys/written files.
#
# The tree holds what cloud-init's modules act on in a Debian guest: shadow-utils (minbase),
# sudo, openssh-server (sshd_config), ca-certificates, tzdata, systemd-timesyncd, ifupdown, and
# cloud-init itself (which only runs inside the oracle copy, never on this machine).
#
# Output: $XENPLUG_GUEST_ROOT (default /var/cache/xenplug-guest-root)/<key>/root, plus a
# `current` symlink to <key>. <key> hashes the package list and the mirrors, so a change of
# either builds a new tree. Idempotent; needs root (mmdebstrap --mode=root) on Debian 12.
# Prints the tree's path on success.
set -euo pipefail

CACHE=${XENPLUG_GUEST_ROOT:-/var/cache/xenplug-guest-root}
PKGS="cloud-init sudo openssh-server ca-certificates tzdata systemd systemd-timesyncd ifupdown"
REV=1

if ! command -v mmdebstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

# The machine's Debian mirrors (archive, security), from its apt configuration.
mirrors() {
  local m s
  m=$(awk '$1 == "URIs:" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  s=$(awk '$1 == "URIs:" && $2 ~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $0 !~ /security/ {print ($2 ~ /^\[/ ? $3 : $2); exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$s" ] || s=$(awk '$1 == "deb" && $0 ~ /security/ {print ($2 ~ /^\[/ ? $3 : $2); exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian} ${s:-http://deb.debian.org/debian-security}"
}
read -r MIRROR SECURITY < <(mirrors)
KEY=$(printf 'rev=%s\npkgs=%s\nmirror=%s\nsecurity=%s\n' "$REV" "$PKGS" "$MIRROR" "$SECURITY" | sha256sum | cut -c1-16)
DIR="$CACHE/$KEY"
if [ -f "$DIR/done" ]; then
  ln -sfn "$KEY" "$CACHE/current"
  echo "$DIR/root"
  exit 0
fi

mkdir -p "$CACHE"
TMP="$DIR.tmp"
cleanup() {
  # mmdebstrap unmounts what it mounted; this catches an interrupted build.
  local m
  for m in $(awk -v r="$TMP/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
rm -rf "$TMP"
mkdir -p "$TMP"
# No service may start inside the tree (policy-rc.d), and nothing is documented that the tests
# do not read.
mmdebstrap --variant=minbase --mode=root --quiet \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --include="$(echo "$PKGS" | tr ' ' ',')" \
  --customize-hook='rm -f "$1/etc/ssh/ssh_host_"*' \
  bookworm "$TMP/root" "deb $MIRROR bookworm main" "deb $SECURITY bookworm-security main" \
  > "$TMP/mmdebstrap.log" 2>&1 || { tail -30 "$TMP/mmdebstrap.log" >&2; echo "guest-root.sh: mmdebstrap failed" >&2; exit 1; }
touch "$TMP/done"
rm -rf "$DIR"
mv "$TMP" "$DIR"
trap - EXIT
ln -sfn "$KEY" "$CACHE/current"
echo "$DIR/root"
