#!/usr/bin/env bash
# Start-up cost of one hotplug script execution (libxl forks one per device): exec-to-exit of a
# no-op run, `vif-bridge online type_if=tap` (the reference and ours both exit 0 there before
# touching anything), for
#   - Debian's reference bash script,
#   - xenplug's multi-call binary through its link,
#   - a binary holding only the network scripts (what separate binaries would cost),
#   - the static build hosts install (tools/build-static.sh),
# with /bin/true as the floor (the cost of exec itself on this machine).
# Prints hyperfine's table and the ratios. Run as root on Debian 12 after ./test.sh or ./demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
cargo build --release -p xenplug --example single_script
static=$PWD/$(tools/build-static.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/multi" "$work/single" "$work/static"
ln -s "$static" "$work/static/vif-bridge"
ln -s "$PWD/target/release/xenplug" "$work/multi/vif-bridge"
ln -s "$PWD/target/release/examples/single_script" "$work/single/vif-bridge"
export XENBUS_PATH=backend/vif/1/0 XENBUS_TYPE=vif XENBUS_BASE_PATH=backend vif=vif1.0 \
       INTERFACE=vif1.0-emu XENPLUG_LOG_FILE=/dev/null XENPLUG_SYSLOG=false
ls -l target/release/xenplug target/release/examples/single_script | awk '{print $5, $9}'
hyperfine -N --warmup 20 --runs 300 --export-json "$work/h.json" \
  -n /bin/true /bin/true \
  -n reference "/etc/xen/scripts/vif-bridge online type_if=tap" \
  -n multi-call "$work/multi/vif-bridge online type_if=tap" \
  -n single "$work/single/vif-bridge online type_if=tap" \
  -n static "$work/static/vif-bridge online type_if=tap"
python3 - "$work/h.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
true, ref, multi, single, static = (r[k]["mean"] * 1000 for k in ("/bin/true", "reference", "multi-call", "single", "static"))
print(f"mean exec-to-exit: /bin/true {true:.2f} ms, reference {ref:.2f} ms, multi-call {multi:.3f} ms, single {single:.3f} ms, static multi-call {static:.3f} ms")
print(f"reference/multi-call = {ref / multi:.0f}x; multi-call/single = {multi / single:.2f}; reference/static = {ref / static:.0f}x")
PY
