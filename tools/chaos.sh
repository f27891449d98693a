#!/usr/bin/env bash
# Crash-safety figures (issue 13; a command, not a timed test): builds the xenplug binary, the
# guest agent and xenplug-chaos, then SIGKILLs each hotplug script and the agent's apply at a
# uniformly random instant, runs what libxl runs next and audits every leak class
# (chaos/src/main.rs). Run as root on Debian 12; the host is never touched (private mount and
# network namespaces, a xenstored of its own).
#
#   tools/chaos.sh [--debug] [xenplug-chaos options] SCENARIO…
#   tools/chaos.sh --rounds 1000 --reference all        # the README's figures
#
# --debug uses the debug build (what ./test.sh runs, with a small count).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
if [ "${1:-}" = --debug ]; then profile=debug; shift; fi
flags=()
[ "$profile" = release ] && flags=(--release)
cargo build -q "${flags[@]}" -p xenplug -p xenplug-guest-agent -p xenplug-chaos
T=${CARGO_TARGET_DIR:-target}/$profile
exec "$T/xenplug-chaos" --binary "$T/xenplug" --agent "$T/xenplug-agent" "$@"
