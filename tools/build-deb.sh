#!/usr/bin/env bash
# Build xenplug's Debian packages from this checkout:
#   target/debian/xenplug_<version>_amd64.deb        dom0 and driver domains
#   target/debian/xenplug-agent_<version>_amd64.deb  guests
# (<version> is debian/changelog's, which must equal the workspace version in Cargo.toml.)
#
# How: the programs are built with the project's Rust toolchain (xenplug static, with
# tools/build-static.sh; xenplug-peer, xenplug-agent, xen-channel-setup with cargo --release),
# the man pages and bash completions are rendered from their clap definitions
# (xenplug-docgen), then debhelper (dpkg-buildpackage -b, debian/) assembles both packages in a
# staging tree under target/debian/build, so that nothing is written into the checkout or
# beside it.
#
# Why debhelper (a debian/ directory and dpkg-buildpackage, which calls dpkg-deb) rather than
# cargo-deb: the two packages hold programs of three crates, one built for another target
# (static musl) plus generated man pages, so the build needs orchestration before any packager
# runs anyway; debhelper then does what Debian packages do, the way they do it — the
# maintainer-script snippets that enable, start, restart and purge systemd units, conffiles,
# md5sums, dependencies from dpkg-shlibdeps, compressed man pages with .so links turned into
# symlinks, lintian overrides — and comes from Debian's archive (apt) instead of a crate to
# compile on every fresh machine. The dpkg diversions are hand-written maintainer scripts
# (debian/xenplug.postinst, .prerm) with either tool, since their no-gap order is the point.
#
# Usage: tools/build-deb.sh      (as root on Debian 12; installs its build tools with
#                                 tools/deb-deps.sh; prints the paths of the two packages)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

tools/deb-deps.sh build

version=$(dpkg-parsechangelog -l debian/changelog -SVersion)
cargo_version=$(awk '/^\[workspace.package\]/{p=1; next} /^\[/{p=0} p && $1 == "version" {gsub(/"/, "", $3); print $3}' Cargo.toml)
if [ "$version" != "$cargo_version" ]; then
    echo "build-deb: debian/changelog says $version, Cargo.toml $cargo_version: add a changelog entry (dch -v $cargo_version)" >&2
    exit 1
fi
# Reproducible: dates in man pages and file times in the packages come from the changelog.
# Exported only after cargo has run: C build scripts (ring's, through cc) track
# SOURCE_DATE_EPOCH, so builds with and without it (any other cargo command) would rebuild each
# other's TLS stack (5 minutes of the suite's time on 2 cores).
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l debian/changelog -STimestamp)

echo "build-deb: building the programs" >&2
static=$(tools/build-static.sh)
# The same selection as the real-Xen suite builds (so its artifacts are shared), then the
# generator on its own (built together, feature unification could give other binaries).
cargo build --release --locked -p xenplug-guest-agent -p xenplug-peer >&2
cargo build --release --locked -p xenplug-packaging >&2

# The maintainer scripts name every script the binary answers to.
for f in debian/xenplug.postinst debian/xenplug.prerm; do
    listed=$(sed -n 's/^NAMES="\(.*\)"$/\1/p' "$f" | tr ' ' '\n' | sort)
    actual=$("$static" list | sort)
    if [ "$listed" != "$actual" ]; then
        echo "build-deb: NAMES in $f differ from \`xenplug list\`:" >&2
        diff <(echo "$listed") <(echo "$actual") >&2 || true
        exit 1
    fi
done

out=target/debian
build=$out/build
src=$build/xenplug-$version
rm -rf "$build"
mkdir -p "$src/dist" "$src/packaging" "$src/docs"
cp -r debian "$src/"
cp -r packaging/etc packaging/examples "$src/packaging/"
cp -r udev-rules "$src/"
cp README.md "$src/"
cp docs/channel-protocol.md "$src/docs/"
cp block-scripts/DIFFERENCES.md "$src/dist/block-DIFFERENCES.md"
cp vif-scripts/DIFFERENCES.md "$src/dist/vif-DIFFERENCES.md"
install -m 0755 "$static" "$src/dist/xenplug"
for b in xenplug-peer xenplug-agent xen-channel-setup; do
    install -m 0755 "target/release/$b" "$src/dist/$b"
done
export SOURCE_DATE_EPOCH
target/release/xenplug-docgen "$src/dist/docs"

# Every crate linked into each package's programs, with its licence (debian/copyright).
crates() { # package, then one cargo-tree selection per argument
    local dir=$src/dist/crates/$1
    shift
    mkdir -p "$dir"
    {
        echo "# Rust crates linked into the programs of this package: name, version, licence."
        local sel
        for sel in "$@"; do
            # shellcheck disable=SC2086 # a selection is several words
            cargo tree --locked -e normal --prefix none --format '{p} {l}' $sel
        done | sed 's/ ([^)]*)//; s/ (\*)$//' | grep -v '^$' | sort -u
    } > "$dir/rust-crates.txt"
}
crates xenplug "-p xenplug --target x86_64-unknown-linux-musl" "-p xenplug-peer"
crates xenplug-agent "-p xenplug-guest-agent"

echo "build-deb: dpkg-buildpackage in $src" >&2
(cd "$src" && dpkg-buildpackage -b -us -uc --no-sign >&2)

for p in xenplug xenplug-agent; do
    deb=${p}_${version}_amd64.deb
    mv -f "$build/$deb" "$out/$deb"
    echo "$repo/$out/$deb"
done
