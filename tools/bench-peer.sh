#!/usr/bin/env bash
# Benchmark of the PV channel dom0 peer (xenplug-peer): for 1 000 and 10 000 simulated VMs,
# the time until every VM is configured, the daemon's peak RSS and its CPU time.
#
# Each run starts an embedded xenstored with libxl's console backend nodes for N domains,
# N simulated guests (QEMU's listening socket + tty echo + agent, in helper processes), a store
# of N documents, then `xenplug-peer daemon` as a child; see dom0-peer/examples/peer_bench.rs
# (a development program: neither it nor the simulated guest is part of the shipped binary).
# Targets: 10 000 VMs configured within 10 s in at most 200 MB.
#
# Usage: tools/bench-peer.sh [N…]     (default: 1000 10000)
# Not a timed test: it prints figures and exits 0 when every VM was configured.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p xenplug-peer --bins --example peer_bench
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000)
for n in "${sizes[@]}"; do
  target/release/examples/peer_bench --vms "$n" --peer-binary target/release/xenplug-peer
done
