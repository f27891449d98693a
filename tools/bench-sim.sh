#!/usr/bin/env bash
# Whole-protocol benchmark: `xenplug sim` creates and destroys the same domain (N file-backed
# disks through `block`, N bridged vifs through `vif-bridge`) ROUNDS times with Debian's reference
# scripts and with xenplug's, in one run, and prints per-script-execution times (from the
# simulator's reports: spawn to reaping, as libxl sees them) and the ratios.
# Usage: tools/bench-sim.sh [N=8] [ROUNDS=5]. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-8}
rounds=${2:-5}
tools/deps.sh
# The form installed on hosts: the static build.
bin=$PWD/$(tools/build-static.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" install --scripts-dir "$work/ours" >/dev/null
disks=() vifs=()
for i in $(seq 0 $((n - 1))); do
  truncate -s 16M "$work/d$i.img"
  disks+=("'format=raw,vdev=xvd$(printf "\\x$(printf %x $((97 + i)))"),access=rw,target=$work/d$i.img'")
  vifs+=("'bridge=xenbr0,mac=00:16:3e:00:01:$(printf %02x "$i")'")
done
{
  echo "name = 'bench'"
  echo "disk = [ $(IFS=,; echo "${disks[*]}") ]"
  echo "vif = [ $(IFS=,; echo "${vifs[*]}") ]"
} > "$work/bench.cfg"
for r in $(seq 1 "$rounds"); do
  for which in reference ours; do
    dir=$work/ours; [ $which = reference ] && dir=/etc/xen/scripts
    XENPLUG_LOG_FILE=/dev/null "$bin" sim "$work/bench.cfg" --scripts-dir "$dir" \
      --report "$work/$which.$r.json" >/dev/null
  done
done
python3 - "$work" "$rounds" "$n" <<'PY'
import json, sys, statistics as st
work, rounds, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = {}
for which in ("reference", "ours"):
    for r in range(1, rounds + 1):
        rep = json.load(open(f"{work}/{which}.{r}.json"))
        assert rep["created"], (which, r)
        for e in rep["events"]:
            key = (which, e["device"].split("/")[0], e["exec"]["argv"][1])
            times.setdefault(key, []).append(e["exec"]["duration_ms"])
print(f"{n} disks + {n} vifs, {rounds} create/destroy rounds; ms per script execution (median, mean)")
print(f"{'script action':24} {'reference':>18} {'xenplug':>18} {'ratio':>7}")
for dev, act in (("vbd", "add"), ("vbd", "remove"), ("vif", "online"), ("vif", "offline")):
    ref, ours = times[("reference", dev, act)], times[("ours", dev, act)]
    print(f"{dev + ' ' + act:24} {st.median(ref):8.2f} {st.mean(ref):8.2f}  {st.median(ours):8.2f} {st.mean(ours):8.2f}  {st.mean(ref) / st.mean(ours):6.1f}x")
tot = {w: sum(sum(v) for k, v in times.items() if k[0] == w) / rounds for w in ("reference", "ours")}
print(f"total script time per create+destroy: reference {tot['reference']:.0f} ms, xenplug {tot['ours']:.0f} ms ({tot['reference'] / tot['ours']:.1f}x)")
PY
