#!/usr/bin/env bash
# Runs commands as root under Debian 12's own kernel (linux-image-amd64, 6.1) in QEMU, for tests
# that need kernel features a development host's kernel may lack (e.g. tc's act_police and
# cls_matchall, which a Debian dom0 has as modules).
#
#   tools/vm-test.sh [-f FILE]... -- 'SHELL COMMAND'
#
# Every FILE (test binaries, typically `cargo test --no-run` output) is copied to /mnt in the VM;
# the command (its words joined by spaces, run by `sh -c`) runs there with /mnt as the working directory, PATH including /mnt, and CI=1 (so a
# privileged test that cannot run fails instead of skipping). The exit status is COMMAND's.
#
# The root file system is the dom0 image cached by the real-Xen suite (tests/xen-e2e/run build,
# $E2E_CACHE, default /var/cache/xenplug-e2e), used read-only (snapshot=on): iproute2, nftables
# and the kernel's modules (loaded on demand) are there. QEMU runs with TCG (no KVM needed);
# boot takes ~20 s. Knobs: VM_MEM (2G), VM_SMP (2), VM_TIMEOUT (600 s).
set -euo pipefail

files=()
while [ $# -gt 0 ]; do
  case "$1" in
    -f) files+=("$2"); shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [-f FILE]... -- COMMAND..." >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [-f FILE]... -- COMMAND..." >&2; exit 2; }

cache=${E2E_CACHE:-/var/cache/xenplug-e2e}
base=$(ls -td "$cache"/base-*/ 2>/dev/null | while read -r d; do
  [ -e "$d/done" ] && { echo "${d%/}"; break; }
done)
[ -n "$base" ] || { echo "vm-test: no finished image in $cache (run tests/xen-e2e/run build)" >&2; exit 1; }

mkdir -p /var/tmp/xenplug-e2e
work=$(mktemp -d /var/tmp/xenplug-e2e/vm-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/payload"
for f in "${files[@]}"; do cp "$f" "$work/payload/"; done
printf '%s' "$*" > "$work/payload/cmd"
cat > "$work/payload/init" <<'EOF'
#!/bin/sh
export PATH=/mnt:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CI=1 RUST_BACKTRACE=1
grep -q ' /proc ' /proc/mounts 2>/dev/null || mount -t proc proc /proc
grep -q ' /sys ' /proc/mounts || mount -t sysfs sysfs /sys
grep -q ' /run ' /proc/mounts || mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
ip link set lo up
# Device nodes udev would make (/dev/net/tun for `ip tuntap`).
modprobe -q tun 2>/dev/null || true
cd /mnt
echo "VM-TEST: kernel $(uname -r)"
sh -c "$(cat /mnt/cmd)"
echo "VM-TEST: RC $?"
echo o > /proc/sysrq-trigger
while :; do :; done
EOF
chmod +x "$work/payload/init"
size=$(( $(du -sm "$work/payload" | cut -f1) + 64 ))
mkfs.ext4 -q -F -d "$work/payload" "$work/payload.img" "${size}M"

log="$work/console.log"
timeout "${VM_TIMEOUT:-600}" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu qemu64 -m "${VM_MEM:-2G}" -smp "${VM_SMP:-2}" \
  -nographic -no-reboot -serial mon:stdio -display none \
  -kernel "$base/vmlinuz" -initrd "$base/initrd.img" \
  -append 'console=ttyS0 root=/dev/vda rw quiet panic=-1 init=/bin/sh -- -c "mount -t ext4 /dev/vdb /mnt && exec /mnt/init"' \
  -drive "file=$base/dom0.ext4,format=raw,if=virtio,snapshot=on" \
  -drive "file=$work/payload.img,format=raw,if=virtio" \
  < /dev/null | tee "$log" || true
rc=$(sed -n 's/.*VM-TEST: RC \([0-9]*\).*/\1/p' "$log" | tail -1)
[ -n "$rc" ] || { echo "vm-test: no result line (boot failure or timeout)" >&2; exit 1; }
exit "$rc"
