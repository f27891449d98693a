#!/usr/bin/env bash
# Runs every xenplug test: formatting, lints, unit, integration and privileged end-to-end tests.
# As root on Debian 12 (network namespaces and loop devices are used for real).
set -euo pipefail
cd "$(dirname "$0")"
tools/deps.sh
tools/channel-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# One test at a time per binary would be slow; tests isolate themselves (own namespaces, own
# xenstore subtrees, own loop devices), so the default parallelism is kept.
cargo test --workspace --no-fail-fast
