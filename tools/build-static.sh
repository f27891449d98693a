#!/bin/bash
# Build the `xenplug` multi-call binary as one static executable, the form to install on a Xen
# host: target/static/xenplug.
#
# A hotplug script is a process libxl starts for every device event, so start-up is most of its
# cost. A static binary skips the dynamic loader (about 0.5 ms per run here), and musl's libc
# also skips glibc's start-up CPU probing (cpuid, which traps to the hypervisor when dom0 is
# itself a guest). musl is used when its Rust standard library is installed or can be added
# with rustup; otherwise glibc, statically linked. The binary says which:
#   file target/static/xenplug
#
# Usage: tools/build-static.sh            (prints the path of the binary)
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/static
mkdir -p "$out"
musl=x86_64-unknown-linux-musl
gnu=x86_64-unknown-linux-gnu
have_musl() { rustup target list --installed 2>/dev/null | grep -qx "$musl"; }
if ! have_musl && command -v rustup >/dev/null; then
    rustup target add "$musl" >&2 || echo "build-static: cannot add $musl; using glibc" >&2
fi
if have_musl; then
    cargo build --release --locked -p xenplug --target "$musl" >&2
    cp "target/$musl/release/xenplug" "$out/xenplug.new"
else
    # No PIE: nothing to relocate at start-up either.
    RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
        cargo build --release --locked -p xenplug --target "$gnu" >&2
    cp "target/$gnu/release/xenplug" "$out/xenplug.new"
fi
mv -f "$out/xenplug.new" "$out/xenplug"
echo "$out/xenplug"
