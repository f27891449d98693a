#!/usr/bin/env bash
# Benchmark of the PV channel dom0 peer (xenplug-peer).
#
#   tools/bench-peer.sh [N…]            one host, N simulated VMs (default: 1000 10000): the time
#                                       until every VM is configured, the daemon's peak RSS and CPU
#   tools/bench-peer.sh fleet [H] [N] [OPTION…]
#                                       H hosts × N VMs (default 10 × 10000), the directory store
#                                       and a real 3-member etcd side by side in one run: time until
#                                       every status says configured, etcd requests per VM, peak
#                                       RSS per daemon, document-change-to-VM latency p50/p99;
#                                       OPTIONs go to peer_bench (--timeout SECS, --json, --changes K…)
#
# Each run starts, per host, an embedded xenstored with libxl's console backend nodes, simulated
# guests (QEMU's listening socket + tty echo + agent, in helper processes) and `xenplug-peer
# daemon` as a child; see dom0-peer/examples/peer_bench.rs (a development program: neither it
# nor the simulated guest is part of the shipped binary). `fleet` also starts Debian's etcd
# (tools/deps.sh installs it) as a 3-member cluster on loopback with random free ports and its
# data in a private directory on disk (removed afterwards, also on failure).
# Targets: 10 000 VMs configured within 10 s in at most 200 MB; 10 × 10 000 with etcd within
# 60 s and at most 3 etcd requests per VM.
#
# Not a timed test: it prints figures and exits 0 when every VM was configured.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p xenplug-peer --bins --example peer_bench
bench=target/release/examples/peer_bench
peer=target/release/xenplug-peer

if [ "${1:-}" != fleet ]; then
  sizes=("$@")
  [ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000)
  for n in "${sizes[@]}"; do
    "$bench" --vms "$n" --peer-binary "$peer"
  done
  exit 0
fi

hosts=${2:-10}
vms=${3:-10000}
shift $(($# < 3 ? $# : 3))
command -v etcd >/dev/null || { echo "bench-peer.sh: etcd not installed (tools/deps.sh)" >&2; exit 1; }
data=$(mktemp -d /var/tmp/xenplug-bench-etcd.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$data"
}
trap cleanup EXIT INT TERM
# Six free loopback ports (held together while they are picked, so that they differ).
read -r -a ports < <(python3 -c '
import socket
s = [socket.socket() for _ in range(6)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')
initial=""
for i in 0 1 2; do initial+="${initial:+,}m$i=http://127.0.0.1:${ports[$((2 * i + 1))]}"; done
endpoints=""
for i in 0 1 2; do
  c=${ports[$((2 * i))]} p=${ports[$((2 * i + 1))]}
  endpoints+="${endpoints:+,}127.0.0.1:$c"
  etcd --name "m$i" --data-dir "$data/m$i" --logger zap --log-level warn \
    --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
    --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
    --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token "bench-$$" \
    --quota-backend-bytes 4294967296 >"$data/m$i.log" 2>&1 &
  pids+=($!)
done
n=0
until ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; do
  n=$((n + 1)); [ $n -lt 300 ] || { echo "bench-peer.sh: etcd did not come up" >&2; cat "$data"/m*.log >&2; exit 1; }
  sleep 0.1
done
echo "etcd 3-member cluster: $endpoints (data in $data, on disk)"
"$bench" --hosts "$hosts" --vms "$vms" --store "etcd://$endpoints/xenplug-bench" --peer-binary "$peer" "$@"
