#!/usr/bin/env bash
# Runs every xenplug test: formatting, lints, unit, integration and privileged end-to-end tests.
# As root on Debian 12 (network namespaces and loop devices are used for real).
set -euo pipefail
cd "$(dirname "$0")"
tools/deps.sh
tools/channel-deps.sh
# A Debian 12 tree with cloud-init for the first-boot oracle tests (cached after the first run).
tools/guest-root.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# One test at a time per binary would be slow; tests isolate themselves (own namespaces, own
# xenstore subtrees, own loop devices), so the default parallelism is kept.
cargo test --workspace --no-fail-fast
# The end-to-end suite on real Xen 4.17 + a Debian 12 dom0 under QEMU (tests/xen-e2e/README.md):
# our static build (tools/build-static.sh) installed into dom0 with `xenplug install`, real
# libxl/blkback/netback/hvc_xen.
# About 4–8 minutes; the dom0 image is cached in /var/cache/xenplug-e2e between runs.
tests/xen-e2e/run all
# Tests that need tc policing (cls_matchall, act_police), which this kind of host's kernel
# lacks: under Debian 12's kernel in QEMU, from the image the suite above cached (~1 minute).
tools/vm-kernel-tests.sh
# The suite's own test: with a deliberately broken `block` installed it must report failures
# (this command succeeds only if it does).
tests/xen-e2e/run run --self-test-broken
