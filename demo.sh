#!/usr/bin/env bash
# The xenplug demonstration: builds xenplug, then creates and destroys an example domain through
# xenplug's hotplug scripts with the embedded xenstored in a private network namespace, printing
# every script invocation and the resulting xenstore and link state; then the same domain through
# Debian's reference scripts for comparison. Run as root on Debian 12. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")"
tools/deps.sh
cargo build --release -p xenplug -p xenplug-guest-agent -p xenplug-peer
exec target/release/xenplug demo --reference /etc/xen/scripts
