#!/usr/bin/env bash
# Channel figures for issue 6 (a benchmark command, not a timed test). Run as root from the
# workspace. Builds release binaries, then inside a throwaway network namespace plus private UTS
# and mount namespaces (this machine is never renamed or re-addressed) runs
# guest-agent/examples/channel_bench.rs over a pty: handshake-to-applied latency, agent RSS,
# guest-ping round trip vs the real qemu-ga (tools/channel-deps.sh fetches it). Prints the
# release binary sizes too.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p xenplug-guest-agent --bins --example channel_bench
T=${CARGO_TARGET_DIR:-target}/release
DEPS=${XENPLUG_CHANNEL_DEPS:-/var/cache/xenplug-channel-deps}
QGA=()
[ -x "$DEPS/bin/qemu-ga" ] && QGA=("$DEPS/bin/qemu-ga")

NS=xpbench-$$
ROOT=$(mktemp -d /tmp/xenplug-bench-XXXXXX)
cleanup() { ip netns del "$NS" 2>/dev/null || true; rm -rf "$ROOT"; }
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add nic0 address 00:16:3e:be:0c:01 type veth peer name peer0
chmod 755 "$ROOT"   # as a real /: users must be able to reach their home
mkdir -p "$ROOT/etc" "$ROOT/home/bench"
printf 'root:x:0:0::/root:/bin/sh\nbench:x:4243:4243::/home/bench:/bin/sh\n' > "$ROOT/etc/passwd"
printf 'root:*:19000:0:99999:7:::\nbench:!:19000:0:99999:7:::\n' > "$ROOT/etc/shadow"
chown 4243:4243 "$ROOT/home/bench"

echo "== sizes"
ls -l "$T/xenplug-agent" "$T/xen-channel-setup" | awk '{printf "%s: %d bytes (%.2f MiB)\n", $9, $5, $5/1048576}'
echo "== figures (pty, private netns+uts+mount)"
ip netns exec "$NS" unshare --uts --mount -- "$T/examples/channel_bench" "$T/xenplug-agent" "$ROOT" "${QGA[@]}"
