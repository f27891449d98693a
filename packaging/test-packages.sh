#!/usr/bin/env bash
# The Debian packages, installed for real in a fresh Debian 12 root with xen-utils-common:
#   * lintian: no errors (overrides are explained in debian/*.lintian-overrides);
#   * dpkg -i of both packages: every script name in /etc/xen/scripts runs xenplug, is diverted
#     by xenplug, and Debian's script is kept byte-identical as <name>.xen-utils-common;
#   * inotify on /etc/xen/scripts for the whole run: no script name is ever deleted or renamed
#     away (replacements are renames over the name), so a toolstack never finds one missing;
#   * `apt-get install --reinstall xen-utils-common`, an upgrade of xen-utils-common whose
#     scripts changed (a repacked newer version), a purge of xen-utils-common and its
#     installation again, all with xenplug installed: the names keep running xenplug, Debian's
#     current scripts are at the diverted names, no dpkg prompt, no stray files;
#   * `xenplug doctor` in the root (in private network and mount namespaces, a bridge xenbr0,
#     the embedded xenstored, the peer daemon started with its unit's ExecStart): its checks,
#     and its failure path after links and a diversion are broken, then `dpkg-reconfigure
#     xenplug` repairing them;
#   * `systemd-analyze verify` of the units, `udevadm verify` of the rule (systemd 254's, from
#     tools/channel-deps.sh), the bash completions, the installed programs;
#   * the sandboxed xenplug-peer.service booted under systemd (systemd-nspawn): it configures a
#     simulated VM (the peer benchmark's guest helper, built here, stands in for QEMU and the
#     agent) and cannot see one under /tmp; then with the etcd example drop-in and its
#     environment file, against a real etcd on loopback: the document comes from etcd and the
#     status goes back, and with etcd's address left out of IPAddressAllow= it is out of reach;
#   * `dpkg -r` and, in a second round, `dpkg -P`: Debian's scripts are back byte-identical
#     (compared with the xen-utils-common package's own files and its Conffiles md5sums, and
#     `dpkg --verify`), no diversion and no xenplug file left.
#
# Usage: packaging/test-packages.sh [--debs DIR]   (default: build them with tools/build-deb.sh)
#        packaging/test-packages.sh --base-only   (only build the cached base root, if missing)
# Environment: PKGTEST_CACHE (default /var/cache/xenplug-pkgtest): the cached base root, built
# with mmdebstrap once per mirror and package list (about a minute), like the real-Xen suite's
# dom0 image. Every run unpacks a fresh copy. Needs root on Debian 12 amd64. Exit 0 when every
# check passed, 1 otherwise, 2 on a usage error.
set -euo pipefail
{
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${PKGTEST_CACHE:-/var/cache/xenplug-pkgtest}
# Bump when the recipe below changes in a way the hashed inputs do not show.
BASE_REV=1
BASE_PACKAGES="xen-utils-common systemd nftables procps man-db openssh-client"

DEBS=${PKGTEST_DEBS:-}
BASE_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --debs) DEBS=${2:?--debs needs a directory}; shift ;;
        --base-only) BASE_ONLY=1 ;;
        -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-packages: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "test-packages: must run as root" >&2; exit 1; }

# ------------------------------------------------------------------ outside the namespaces
if [ -z "${PKGTEST_INSIDE:-}" ]; then
    cd "$REPO"
    tools/deb-deps.sh test
    # Debian mirrors from the machine's apt configuration (one-line and deb822 sources).
    read -r MIRROR SECURITY < <(python3 - <<'PY'
import glob, re, sys
main = sec = None
for f in glob.glob("/etc/apt/sources.list") + sorted(glob.glob("/etc/apt/sources.list.d/*")):
    try:
        text = open(f, encoding="utf-8", errors="replace").read()
    except OSError:
        continue
    entries = []
    if f.endswith(".sources"):
        for para in re.split(r"\n\s*\n", text):
            d = {}
            for line in para.splitlines():
                if ":" in line and not line.startswith("#"):
                    k, v = line.split(":", 1)
                    d[k.strip().lower()] = v.strip()
            if "deb" in d.get("types", "").split():
                entries += [(u, d.get("suites", "").split()) for u in d.get("uris", "").split()]
    else:
        for line in text.splitlines():
            w = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(w) >= 3 and w[0] == "deb":
                entries.append((w[1], [w[2]]))
    for uri, suites in entries:
        if main is None and "bookworm" in suites:
            main = uri
        if sec is None and "bookworm-security" in suites:
            sec = uri
if not main:
    sys.exit("no Debian bookworm mirror in the apt configuration")
print(main, sec or main + "-security")
PY
)
    key=$(printf 'rev=%s mirror=%s security=%s packages=%s' "$BASE_REV" "$MIRROR" "$SECURITY" "$BASE_PACKAGES" | sha256sum | cut -c1-16)
    BASE=$CACHE/base-$key.tar
    if [ ! -f "$BASE" ]; then
        mkdir -p "$CACHE"
        echo "test-packages: building the base root $BASE (mmdebstrap, $MIRROR)"
        # The downloaded packages and the apt lists stay in the root: the test reinstalls
        # xen-utils-common from exactly the .deb that was installed, without the network.
        mmdebstrap --variant=minbase --mode=root --quiet \
            --aptopt='APT::Install-Recommends "false"' \
            --skip=cleanup/apt/lists --skip=cleanup/apt/cache \
            --include="$(echo "$BASE_PACKAGES" | tr ' ' ',')" \
            bookworm "$CACHE/new-$key.tar" "deb $MIRROR bookworm main" "deb $SECURITY bookworm-security main" \
            > "$CACHE/mmdebstrap.log" 2>&1 || { tail -20 "$CACHE/mmdebstrap.log"; rm -f "$CACHE/new-$key.tar"; exit 1; }
        mv "$CACHE/new-$key.tar" "$BASE"
        # Keep only the newest base roots.
        ls -1t "$CACHE"/base-*.tar 2>/dev/null | tail -n +3 | xargs -r rm -f
    fi
    [ "$BASE_ONLY" = 1 ] && { echo "test-packages: base root $BASE"; exit 0; }
    CHANNEL_DEPS=$(tools/channel-deps.sh)
    if [ -z "$DEBS" ]; then
        tools/build-deb.sh >/dev/null
        DEBS=$REPO/target/debian
    fi
    DEBS=$(cd "$DEBS" && pwd)
    # The booted unit's simulated guests: the peer benchmark's guest helper (a development
    # program, in no package).
    cargo build --release -q -p xenplug-peer --example peer_bench
    GUEST_HELPER=$REPO/target/release/examples/peer_bench

    # The rest runs in private network and mount namespaces (every mount and link goes away
    # with them, also when the run is killed), under an overall deadline.
    export PKGTEST_INSIDE=1 PKGTEST_BASE=$BASE PKGTEST_DEBS=$DEBS PKGTEST_CHANNEL_DEPS=$CHANNEL_DEPS PKGTEST_GUEST_HELPER=$GUEST_HELPER
    exec timeout --kill-after=30 900 unshare --net --mount --propagation private "$0"
fi

# ------------------------------------------------------------------ inside the namespaces
BASE=$PKGTEST_BASE
DEBS=$PKGTEST_DEBS
CHANNEL_DEPS=$PKGTEST_CHANNEL_DEPS
GUEST_HELPER=$PKGTEST_GUEST_HELPER
WORK=$(mktemp -d /tmp/xenplug-pkgtest.XXXXXX)
R=$WORK/root
BG_PIDS=()
cleanup() {
    local rc=$?
    local p i
    # Newest first (the helpers inside the container before the container itself); bounded.
    for ((i = ${#BG_PIDS[@]} - 1; i >= 0; i--)); do
        p=${BG_PIDS[i]}
        kill -TERM "$p" 2>/dev/null || continue
        local deadline=$((SECONDS + 30))
        while kill -0 "$p" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    # Mounts belong to this mount namespace; unmount anyway so that the directory can go.
    local m
    for m in $(awk -v r="$R" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

PASSED=0
FAILED=0
pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $1${2:+: $2}"; FAILED=$((FAILED + 1)); }
# A check this machine cannot make, said loudly with why (never counted as passed).
SKIPPED=0
skip() { echo "SKIP $1: $2"; SKIPPED=$((SKIPPED + 1)); }
check() { local name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }
quietly() { "$@" > /dev/null; }
# Run a command in the root with a clean environment.
in_root() {
    chroot "$R" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}
# Wait (at most $2 seconds) until the command in $3... succeeds.
wait_for() {
    local what=$1 limit=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "test-packages: timed out waiting for $what" >&2
            return 1
        fi
        sleep 0.05
    done
}

t0=$SECONDS
echo "== packages"
XDEB=$(ls "$DEBS"/xenplug_*_amd64.deb)
ADEB=$(ls "$DEBS"/xenplug-agent_*_amd64.deb)
for d in "$XDEB" "$ADEB"; do
    echo "$(basename "$d"): $(stat -c %s "$d") bytes, installed size $(dpkg-deb -f "$d" Installed-Size) KiB"
done

echo "== lintian"
lintian --display-info --pedantic "$XDEB" "$ADEB" > "$WORK/lintian.txt" 2>&1 || true
sed 's/^/   /' "$WORK/lintian.txt"
check "lintian reports no errors" test -z "$(grep '^E:' "$WORK/lintian.txt" || true)"
lintian --show-overrides "$XDEB" "$ADEB" 2>/dev/null | grep '^O:' | sed 's/^/   overridden: /' || true

echo "== fresh Debian 12 root with xen-utils-common ($(basename "$BASE"))"
mkdir -p "$R"
tar --numeric-owner -xpf "$BASE" -C "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"      # this network namespace's view
mount --bind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
ip link set lo up
ip link add xenbr0 type bridge
cp "$XDEB" "$ADEB" "$R/tmp/"

SCRIPTS=$R/etc/xen/scripts
NAMES=$(sed -n 's/^NAMES="\(.*\)"$/\1/p' "$REPO/debian/xenplug.postinst")
XEN_DEB=$(ls "$R"/var/cache/apt/archives/xen-utils-common_*.deb)

# The reference: Debian's scripts as the xen-utils-common package holds them.
unpack_ref() { # deb dir
    rm -rf "$2"
    mkdir -p "$2"
    dpkg-deb -x "$1" "$2"
}
unpack_ref "$XEN_DEB" "$WORK/ref"
conffile_md5() { # path
    in_root dpkg-query -W -f='${Conffiles}\n' xen-utils-common | awk -v f="$1" '$1 == f {print $2}'
}

# Debian's scripts are at their names, byte for byte the package's, and nothing of ours is left.
debian_scripts_back() { # label refdir
    local ok=0 n f
    for n in $NAMES; do
        f=$SCRIPTS/$n
        if [ -L "$f" ] || [ ! -f "$f" ]; then echo "   $n: not a regular file" >&2; ok=1; continue; fi
        cmp -s "$f" "$2/etc/xen/scripts/$n" || { echo "   $n: differs from the package's file" >&2; ok=1; }
        [ "$(md5sum < "$f" | cut -d' ' -f1)" = "$(conffile_md5 "/etc/xen/scripts/$n")" ] ||
            { echo "   $n: md5sum differs from xen-utils-common's Conffiles" >&2; ok=1; }
        [ "$(stat -c '%a %u %g' "$f")" = "$(stat -c '%a %u %g' "$2/etc/xen/scripts/$n")" ] ||
            { echo "   $n: mode or owner differs" >&2; ok=1; }
        if [ -e "$f.xen-utils-common" ]; then echo "   $n: $n.xen-utils-common left" >&2; ok=1; fi
    done
    if in_root dpkg-divert --list | grep -q 'by xenplug'; then echo "   diversions by xenplug left" >&2; ok=1; fi
    local v
    v=$(in_root dpkg --verify xen-utils-common 2>&1 || true)
    if [ -n "$v" ]; then echo "   dpkg --verify xen-utils-common: $v" >&2; ok=1; fi
    return $ok
}

# Every name runs xenplug, is diverted by xenplug, and Debian's current script is kept.
# (Without xen-utils-common, its diverted copies may be left: dpkg does not purge a diverted
# conffile. prerm removes them; the last round checks that.)
names_run_xenplug() { # refdir (of the installed xen-utils-common; "" when it is not installed)
    local ok=0 n f out
    local div
    div=$(in_root dpkg-divert --list)
    for n in $NAMES; do
        f=$SCRIPTS/$n
        [ "$(readlink "$f")" = /usr/sbin/xenplug ] || { echo "   $n: not a link to /usr/sbin/xenplug" >&2; ok=1; }
        out=$(in_root "/etc/xen/scripts/$n" 2>&1 || true)
        [ "$out" = "$n: error: missing action: expected add, remove, online or offline" ] ||
            { echo "   $n: runs something else: $out" >&2; ok=1; }
        grep -qx "diversion of /etc/xen/scripts/$n to /etc/xen/scripts/$n.xen-utils-common by xenplug" <<<"$div" ||
            { echo "   $n: no diversion by xenplug" >&2; ok=1; }
        if [ -n "$1" ]; then
            cmp -s "$f.xen-utils-common" "$1/etc/xen/scripts/$n" ||
                { echo "   $n.xen-utils-common: not the package's file" >&2; ok=1; }
            [ "$(md5sum < "$f.xen-utils-common" | cut -d' ' -f1)" = "$(conffile_md5 "/etc/xen/scripts/$n")" ] ||
                { echo "   $n.xen-utils-common: md5sum differs from the Conffiles" >&2; ok=1; }
        fi
    done
    local stray
    stray=$(cd "$SCRIPTS" && ls -A | grep -E '\.(dpkg-(new|dist|old|tmp)|xenplug-(new|old))$' || true)
    [ -z "$stray" ] || { echo "   stray files: $stray" >&2; ok=1; }
    return $ok
}

# The names libxl runs, watched for the whole run: they may only ever be replaced by a rename
# over them (IN_MOVED_TO), never deleted or renamed away.
inotifywait -m -e delete,moved_from --format '%e %f' "$SCRIPTS" > "$WORK/events" 2> "$WORK/inotify.err" &
BG_PIDS+=($!)
wait_for "inotify watches" 10 grep -qs "Watches established" "$WORK/inotify.err"
names_never_missing() {
    local n bad=""
    for n in $NAMES; do
        if grep -qE "^[A-Z_,]+ $n\$" "$WORK/events"; then bad="$bad $n"; fi
    done
    [ -z "$bad" ] || { echo "   deleted or moved away:$bad" >&2; grep -E " ($(echo $NAMES | tr ' ' '|'))\$" "$WORK/events" >&2; return 1; }
}

check "baseline: Debian's scripts as packaged" debian_scripts_back baseline "$WORK/ref"

echo "== dpkg -i xenplug xenplug-agent"
if in_root dpkg -i /tmp/"$(basename "$XDEB")" /tmp/"$(basename "$ADEB")" > "$WORK/dpkg-i.log" 2>&1; then
    pass "dpkg -i of both packages"
else
    fail "dpkg -i of both packages"; sed 's/^/   /' "$WORK/dpkg-i.log"
fi
check "every script name runs xenplug, diverted, Debian's scripts kept" names_run_xenplug "$WORK/ref"
check "conffiles in place" test -f "$R/etc/xen/xenplug.toml" -a -f "$R/etc/xenplug/peer.policy" -a -f "$R/etc/xenplug/agent.toml"
check "dpkg lists the conffiles" sh -c "chroot '$R' dpkg-query -W -f='\${Conffiles}' xenplug | grep -q /etc/xen/xenplug.toml"
check "store directory is root-only" test "$(stat -c %a "$R/var/lib/xenplug-peer")" = 700
check "installed programs run" quietly in_root sh -c 'xenplug --version && xenplug-peer --version && xenplug-agent --version && /usr/libexec/xen-channel-setup --version'
check "xenplug list matches the maintainer scripts" test "$(in_root xenplug list | sort | xargs)" = "$(echo $NAMES | tr ' ' '\n' | sort | xargs)"
check "man pages installed" test -f "$R/usr/share/man/man8/xenplug-doctor.8.gz" -a -f "$R/usr/share/man/man5/xenplug.toml.5.gz" -a -L "$R/usr/share/man/man8/vif-bridge.8.gz" -a -f "$R/usr/share/man/man8/xenplug-agent.8.gz"
check "bash completions load" bash -c "source '$R/usr/share/bash-completion/completions/xenplug' && complete -p xenplug >/dev/null && source '$R/usr/share/bash-completion/completions/xenplug-peer' && complete -p xenplug-peer >/dev/null && source '$R/usr/share/bash-completion/completions/xenplug-agent' && complete -p xenplug-agent >/dev/null"
check "units enabled by the maintainer scripts" test -L "$R/etc/systemd/system/multi-user.target.wants/xenplug-peer.service" -a -L "$R/etc/systemd/system/multi-user.target.wants/xenplug-agent.service"

echo "== systemd-analyze verify, udevadm verify"
for u in xenplug-peer.service xenplug-agent.service xenplug-agent-ssh-keygen.service; do
    out=$(in_root systemd-analyze verify "/lib/systemd/system/$u" 2>&1) && rc=0 || rc=$?
    if [ "$rc" = 0 ] && [ -z "$out" ]; then pass "systemd-analyze verify $u"; else fail "systemd-analyze verify $u" "$out"; fi
done
systemd-analyze security --offline=yes --root="$R" xenplug-peer.service 2>/dev/null | tail -1 | sed 's/^/   /' || true
# The etcd example drop-in (xenplug-peer(8), FLEET): the unit still verifies with it in place and
# the environment file it reads; then both go again (the default unit stays network-less).
dropin="$R/etc/systemd/system/xenplug-peer.service.d"
mkdir -p "$dropin"
cp "$R/usr/share/xenplug/examples/etcd/xenplug-peer-etcd.conf" "$dropin/etcd.conf"
install -m 0600 "$R/usr/share/xenplug/examples/etcd/peer-etcd.env" "$R/etc/xenplug/peer-etcd.env"
out=$(in_root systemd-analyze verify /lib/systemd/system/xenplug-peer.service 2>&1) && rc=0 || rc=$?
if [ "$rc" = 0 ] && [ -z "$out" ]; then pass "systemd-analyze verify xenplug-peer.service with the etcd drop-in"; else fail "systemd-analyze verify xenplug-peer.service with the etcd drop-in" "$out"; fi
systemd-analyze security --offline=yes --root="$R" xenplug-peer.service 2>/dev/null | tail -1 | sed 's/^/   with the etcd drop-in: /' || true
rm -rf "$dropin" "$R/etc/xenplug/peer-etcd.env"
out=$("$CHANNEL_DEPS/bin/udevadm-verify" "$R/lib/udev/rules.d/90-xen-channel.rules" 2>&1) && rc=0 || rc=$?
if [ "$rc" = 0 ]; then pass "udevadm verify 90-xen-channel.rules"; else fail "udevadm verify 90-xen-channel.rules" "$out"; fi
check "the rule's helper is installed" test -x "$R$(sed -n 's/.*RUN+="\([^"]*\)".*/\1/p' "$R/lib/udev/rules.d/90-xen-channel.rules" | head -1)"

echo "== xenplug doctor, with xenstored and the peer daemon running"
cp -r "$R/usr/share/xenplug/examples/store/db-01.nocloud" "$R/var/lib/xenplug-peer/store/"
cat > "$WORK/run-doctor.sh" <<'EOS'
#!/bin/sh
# In the root: xenstored (xenplug's embedded one) on the standard socket, the peer daemon with
# its unit's command line, then the doctor.
set -u
mkdir -p /run/xenstored
xenplug xenstored --socket /run/xenstored/socket 2> /tmp/xenstored.log &
XS=$!
n=0; until [ -S /run/xenstored/socket ]; do n=$((n + 1)); [ $n -lt 400 ] || exit 90; sleep 0.05; done
EXEC=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/xenplug-peer.service)
mkdir -p /run/xenplug-peer
$EXEC 2> /tmp/peer.log &
PEER=$!
n=0; until [ -S /run/xenplug-peer/control.sock ]; do n=$((n + 1)); [ $n -lt 400 ] || exit 91; sleep 0.05; done
xenplug-peer list > /tmp/peer-list.txt; echo $? > /tmp/peer-list.rc
xenplug doctor > /tmp/doctor.txt; echo $? > /tmp/doctor.rc
xenplug doctor --json > /tmp/doctor.json
kill $PEER $XS
wait
EOS
chmod +x "$WORK/run-doctor.sh"
run_doctor() {
    rm -f "$R"/tmp/doctor.* "$R"/tmp/peer*
    cp "$WORK/run-doctor.sh" "$R/tmp/run-doctor.sh"
    in_root /tmp/run-doctor.sh && test -s "$R/tmp/doctor.json"
}
check "doctor run" run_doctor
sed 's/^/   /' "$R/tmp/doctor.txt" 2>/dev/null || true
status_of() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print({c["id"]: c["status"] for c in d["checks"]}[sys.argv[2]])' "$R/tmp/doctor.json" "$1" 2>/dev/null || echo "no report"; }
for c in config scripts diversions xenstored xl-conf network nft loop-control lock-dir state-dir log-dir leftovers peer; do
    st=$(status_of "$c")
    if [ "$st" = ok ]; then pass "doctor: $c ok"; else fail "doctor: $c" "$st"; fi
done
check "doctor: the peer daemon serves the example store (1 document)" grep -q '"documents":1' "$R/tmp/peer.log"
check "doctor: xenplug-peer list works" test "$(cat "$R/tmp/peer-list.rc" 2>/dev/null)" = 0
check "doctor: exit status matches its worst check" test "$(cat "$R/tmp/doctor.rc" 2>/dev/null)" = "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["exit"])' "$R/tmp/doctor.json" 2>/dev/null)"

echo "== the peer's sandboxed unit under systemd (systemd-nspawn --boot)"
# The root boots with systemd as PID 1. A test unit runs xenplug's embedded xenstored on the
# standard socket; xenplug-peer.service starts from the package's unit with all its sandboxing.
# A simulated guest (the peer benchmark's bench-guests helper, standing in for QEMU) listens on
# /run/xen/5 and another on /tmp/xen/6; xenstore gets the console backend nodes libxl writes.
# The sandboxed daemon must configure the VM behind /run/xen/5 and must not see /tmp/xen/6
# (PrivateTmp), proving the sandbox is in force and still reaches xenstored and QEMU's sockets.
for m in tmp run dev sys proc; do umount "$R/$m"; done
cat > "$R/etc/systemd/system/test-xenstored.service" <<'EOU'
[Unit]
Description=xenstored for the package test (xenplug's embedded one)
Before=xenplug-peer.service
[Service]
RuntimeDirectory=xenstored
ExecStart=/usr/sbin/xenplug xenstored --socket /run/xenstored/socket
[Install]
WantedBy=multi-user.target
EOU
ln -sf /etc/systemd/system/test-xenstored.service "$R/etc/systemd/system/multi-user.target.wants/test-xenstored.service"
for i in 5 6; do
    printf '{"instance-id": "i-%s", "generation": 1, "hostname": "vm%s"}\n' "$i" "$i" > "$R/var/lib/xenplug-peer/store/vm$i.json"
done
HELPER=/usr/local/libexec/xenplug-pkgtest/peer_bench
install -D -m 0755 "$GUEST_HELPER" "$R$HELPER"
systemd-nspawn -D "$R" --register=no --keep-unit --console=passive -b > "$WORK/nspawn.log" 2>&1 &
NSPAWN=$!
BG_PIDS+=("$NSPAWN")
INIT=""
find_init() { INIT=$(pgrep -P "$NSPAWN" -x systemd || true); [ -n "$INIT" ]; }
booted() { local st; st=$(nsenter -t "$INIT" -a systemctl is-system-running 2>/dev/null || true); [ "$st" = running ] || [ "$st" = degraded ]; }
in_ct() { nsenter -t "$INIT" -a /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }
if wait_for "the container's systemd" 30 find_init && wait_for "the boot" 90 booted; then
    pass "the root boots with systemd ($(in_ct systemctl is-system-running 2>/dev/null || true))"
    check "xenplug-peer.service is active" in_ct systemctl is-active --quiet xenplug-peer.service test-xenstored.service
    in_ct mkdir -p /run/xen /tmp/xen || true
    # The helpers serve until their stdin closes: a FIFO whose writer this script holds.
    mkfifo "$WORK/hold"
    in_ct "$HELPER" bench-guests --dir /run/xen --from 5 --to 6 < "$WORK/hold" > "$WORK/guest5.out" 2>&1 &
    BG_PIDS+=($!)
    in_ct "$HELPER" bench-guests --dir /tmp/xen --from 6 --to 7 < "$WORK/hold" > "$WORK/guest6.out" 2>&1 &
    BG_PIDS+=($!)
    exec 8> "$WORK/hold"
    wait_for "the simulated guest on /run/xen/5" 20 grep -q ready "$WORK/guest5.out"
    wait_for "the simulated guest on /tmp/xen/6" 20 grep -q ready "$WORK/guest6.out"
    B=/local/domain/0/backend/console
    check "console backends written to xenstore" in_ct xenstore-write /local/domain/5/name vm5 /local/domain/5/vm /vm/00000000-0000-4000-8000-000000000005 \
        $B/5/1/frontend /local/domain/5/device/console/1 $B/5/1/frontend-id 5 $B/5/1/online 1 $B/5/1/state 4 \
        $B/5/1/protocol vt100 $B/5/1/name org.xenplug.agent.0 $B/5/1/connection socket $B/5/1/path /run/xen/5 \
        /local/domain/6/name vm6 /local/domain/6/vm /vm/00000000-0000-4000-8000-000000000006 \
        $B/6/1/frontend /local/domain/6/device/console/1 $B/6/1/frontend-id 6 $B/6/1/online 1 $B/6/1/state 4 \
        $B/6/1/protocol vt100 $B/6/1/name org.xenplug.agent.0 $B/6/1/connection socket $B/6/1/path /tmp/xen/6
    state_of() { in_ct xenplug-peer list --json 2>/dev/null | python3 -c 'import json,sys; print({r["domid"]: r["state"] for r in json.load(sys.stdin)}.get(int(sys.argv[1]), "absent"))' "$1"; }
    vm5_configured() { [ "$(state_of 5)" = configured ]; }
    if wait_for "vm5 configured" 30 vm5_configured; then pass "sandboxed daemon configured the VM behind /run/xen/5 (xenstored and QEMU's socket reachable)"; else fail "sandboxed daemon configured vm5" "$(state_of 5)"; fi
    st6=$(state_of 6)
    check "the VM behind /tmp/xen/6 is out of the daemon's sight (PrivateTmp): $st6" test "$st6" != configured -a "$st6" != absent
    in_ct xenplug-peer list | sed 's/^/   /' || true
    check "systemctl reload xenplug-peer" in_ct systemctl reload xenplug-peer
    sighup() { in_ct journalctl -u xenplug-peer -o cat | grep -q '"event":"sighup"'; }
    check "the reload reached the daemon (SIGHUP)" wait_for "sighup in the journal" 20 sighup
    in_ct xenplug doctor > "$WORK/doctor-booted.txt" 2>&1 || true
    sed 's/^/   /' "$WORK/doctor-booted.txt"
    check "doctor under systemd: peer ok with the configured VM" grep -qE '^ok +peer .*configured 1' "$WORK/doctor-booted.txt"
    check "doctor under systemd: syslog ok (journald's /dev/log)" grep -qE '^ok +syslog' "$WORK/doctor-booted.txt"
    in_ct systemd-analyze security xenplug-peer.service 2>/dev/null | tail -1 | sed 's/^/   live: /' || true
    in_ct systemctl show -p NoNewPrivileges -p ProtectSystem -p PrivateTmp -p PrivateNetwork -p CapabilityBoundingSet xenplug-peer.service | sed 's/^/   /' || true
    # The etcd example drop-in, live. This network namespace is the container's: a one-member
    # etcd on its loopback, the drop-in and the environment file installed as the example's
    # README says, IPAddressAllow= naming the member. The sandboxed daemon must take vm5's
    # document (generation 2) from etcd and write its status back; with another address in
    # IPAddressAllow= (IPAddressDeny=any stays from the unit) etcd must be out of its reach.
    etcd --name pkgtest --data-dir "$WORK/etcd" --logger zap --log-level warn \
        --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
        --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
        --initial-cluster pkgtest=http://127.0.0.1:23800 > "$WORK/etcd.log" 2>&1 8>&- &
    BG_PIDS+=($!)
    ectl() { ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:23790 "$@"; }
    UUID5=00000000-0000-4000-8000-000000000005
    DROPIN=$R/etc/systemd/system/xenplug-peer.service.d
    if wait_for "etcd on 127.0.0.1:23790" 30 quietly ectl endpoint health; then
        quietly ectl put /pkgtest/vms/$UUID5 '{"instance-id": "i-5", "generation": 2, "hostname": "vm5"}'
        mkdir -p "$DROPIN"
        sed 's/^IPAddressAllow=.*/IPAddressAllow=127.0.0.1/' "$R/usr/share/xenplug/examples/etcd/xenplug-peer-etcd.conf" > "$DROPIN/etcd.conf"
        printf 'XENPLUG_PEER_STORE=etcd://127.0.0.1:23790/pkgtest\nXENPLUG_PEER_HOST=pkgtest-host\n' > "$R/etc/xenplug/peer-etcd.env"
        chmod 0600 "$R/etc/xenplug/peer-etcd.env"
        in_ct systemctl daemon-reload
        check "xenplug-peer.service restarted with the etcd drop-in" in_ct systemctl restart xenplug-peer
        etcd_status() { ectl get --print-value-only /pkgtest/status/$UUID5 2>/dev/null; }
        etcd_configured() { etcd_status | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(not (d["state"] == "configured" and d["host"] == "pkgtest-host" and d["applied_generation"] == 2))' 2>/dev/null; }
        check "etcd drop-in: the sandboxed daemon took vm5's document from etcd and wrote its status there" wait_for "vm5's status in etcd" 40 etcd_configured
        etcd_status | sed 's/^/   /'
        check "etcd drop-in: the guest behind /run/xen/5 applied generation 2" grep -qx "applied 5 2" "$WORK/guest5.out"
        # systemd's view of the unit with the drop-in: the sandbox opened only as far as etcd needs.
        in_ct systemctl show -p PrivateNetwork -p RestrictAddressFamilies -p IPAddressDeny -p IPAddressAllow xenplug-peer.service > "$WORK/etcd-unit.txt" 2>&1 || true
        sed 's/^/   /' "$WORK/etcd-unit.txt"
        merged() {
            grep -qx 'PrivateNetwork=no' "$WORK/etcd-unit.txt" &&
            grep -q '^RestrictAddressFamilies=.*AF_INET6' "$WORK/etcd-unit.txt" &&
            grep -q '^RestrictAddressFamilies=.*AF_UNIX' "$WORK/etcd-unit.txt" &&
            grep -q '^IPAddressDeny=.*0\.0\.0\.0/0' "$WORK/etcd-unit.txt" &&
            grep -q '^IPAddressAllow=.*127\.0\.0\.1' "$WORK/etcd-unit.txt"
        }
        check "etcd drop-in: systemd merged it (host network, AF_INET/AF_INET6, IPAddressDeny=any with only the member allowed)" merged
        # Enforcement: systemd's IP firewall is a cgroup BPF program, which needs the unified
        # cgroup hierarchy (Debian 12's default). With another address allowed, a connection
        # attempt to etcd must fail (not merely be on its way).
        if [ "$(in_ct stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; then
            sed -i 's/^IPAddressAllow=.*/IPAddressAllow=192.0.2.1/' "$DROPIN/etcd.conf"
            in_ct systemctl daemon-reload
            in_ct systemctl restart xenplug-peer
            unreachable() { in_ct xenplug-peer list 2>/dev/null | head -1 | grep UNREACHABLE | grep -vq "not reached yet"; }
            check "etcd drop-in: with etcd's address not in IPAddressAllow=, etcd is out of the daemon's reach" wait_for "list saying UNREACHABLE" 40 unreachable
            in_ct xenplug-peer list 2>/dev/null | head -1 | sed 's/^/   /' || true
        else
            skip "etcd drop-in: IPAddressAllow= enforced" "this machine's cgroups are v1 (the container's /sys/fs/cgroup is $(in_ct stat -fc %T /sys/fs/cgroup 2>/dev/null)); systemd's IP firewall needs cgroup v2"
        fi
        rm -rf "$DROPIN" "$R/etc/xenplug/peer-etcd.env"
        in_ct systemctl daemon-reload
    else
        fail "etcd for the drop-in check"; sed 's/^/   /' "$WORK/etcd.log"
    fi
    # Closing the FIFO ends both helpers (they report how many guests applied generation 1);
    # they must be gone before the container shuts down.
    exec 8>&-
    check "the simulated guest on /run/xen/5 applied generation 1" wait_for "the guest's report" 20 grep -qx 1 "$WORK/guest5.out"
    check "the simulated guest on /tmp/xen/6 applied nothing" wait_for "the guest's report" 20 grep -qx 0 "$WORK/guest6.out"
else
    fail "the root boots with systemd"; tail -20 "$WORK/nspawn.log" | sed 's/^/   /'
fi
kill -TERM "$NSPAWN" 2>/dev/null || true
stopped() { ! kill -0 "$NSPAWN" 2>/dev/null; }
wait_for "the container to stop" 60 stopped || kill -KILL "$NSPAWN" 2>/dev/null || true
rm -f "$R/etc/systemd/system/multi-user.target.wants/test-xenstored.service" "$R/etc/systemd/system/test-xenstored.service" "$R"/var/lib/xenplug-peer/store/vm[56].json "$R/etc/xenplug/peer-etcd.env"
rm -rf "$R/usr/local/libexec/xenplug-pkgtest" "$R/etc/systemd/system/xenplug-peer.service.d"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --bind /dev "$R/dev"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
cp "$XDEB" "$ADEB" "$R/tmp/"

echo "== broken links and a missing diversion: doctor fails, dpkg-reconfigure repairs"
# (Replaced by a rename, as everything here: the name-watch stays meaningful.)
ln -sf /nonexistent "$SCRIPTS/vif-route.tmp" && mv -T "$SCRIPTS/vif-route.tmp" "$SCRIPTS/vif-route"
in_root dpkg-divert --package xenplug --no-rename --divert /etc/xen/scripts/block-nbd.xen-utils-common --remove /etc/xen/scripts/block-nbd >/dev/null
run_doctor || true
check "doctor: scripts FAIL names vif-route" sh -c "grep -q 'vif-route: a link to /nonexistent' '$R/tmp/doctor.txt' && [ \"\$(cat '$R/tmp/doctor.rc')\" = 1 ]"
check "doctor: diversions FAIL names block-nbd" grep -q 'block-nbd: not diverted' "$R/tmp/doctor.txt"
check "doctor: fix says dpkg-reconfigure" grep -q 'fix: dpkg-reconfigure xenplug' "$R/tmp/doctor.txt"
check "dpkg-reconfigure xenplug" quietly in_root dpkg-reconfigure xenplug
check "after dpkg-reconfigure: every name runs xenplug" names_run_xenplug "$WORK/ref"

echo "== reinstall of xen-utils-common (apt)"
if in_root apt-get install -y -q --reinstall -o Dpkg::Options::=--force-confdef xen-utils-common < /dev/null > "$WORK/reinstall.log" 2>&1; then
    pass "apt-get install --reinstall xen-utils-common"
else
    fail "apt-get install --reinstall xen-utils-common"; tail -20 "$WORK/reinstall.log" | sed 's/^/   /'
fi
check "after the reinstall: every name runs xenplug, Debian's scripts kept" names_run_xenplug "$WORK/ref"

echo "== upgrade of xen-utils-common with changed scripts"
# A newer xen-utils-common: the installed one repacked with another version and two scripts
# changed, as a security update would.
rm -rf "$WORK/newxen"
dpkg-deb -R "$XEN_DEB" "$WORK/newxen"
oldv=$(dpkg-deb -f "$XEN_DEB" Version)
sed -i "s/^Version: .*/Version: ${oldv}+xenplugtest1/" "$WORK/newxen/DEBIAN/control"
printf '# changed by an upgrade (xenplug package test)\n' >> "$WORK/newxen/etc/xen/scripts/block"
printf '# changed by an upgrade (xenplug package test)\n' >> "$WORK/newxen/etc/xen/scripts/vif-bridge"
dpkg-deb -b "$WORK/newxen" "$R/tmp/xen-utils-common-new.deb" >/dev/null
unpack_ref "$R/tmp/xen-utils-common-new.deb" "$WORK/ref-new"
# stdin closed: a conffile prompt (dpkg believing Debian's script was modified) fails the step.
if in_root dpkg -i /tmp/xen-utils-common-new.deb < /dev/null > "$WORK/upgrade.log" 2>&1; then
    pass "dpkg -i of the newer xen-utils-common, no conffile prompt"
else
    fail "dpkg -i of the newer xen-utils-common"; tail -20 "$WORK/upgrade.log" | sed 's/^/   /'
fi
check "after the upgrade: every name runs xenplug, the new scripts kept" names_run_xenplug "$WORK/ref-new"

echo "== xen-utils-common purged and installed again, xenplug staying"
if in_root dpkg -P xen-utils-common > "$WORK/purge-xen.log" 2>&1; then pass "dpkg -P xen-utils-common"; else fail "dpkg -P xen-utils-common"; tail -20 "$WORK/purge-xen.log"; fi
check "without xen-utils-common: every name runs xenplug" names_run_xenplug ""
if in_root dpkg -i /tmp/xen-utils-common-new.deb < /dev/null > "$WORK/reinst-xen.log" 2>&1; then pass "xen-utils-common installed again"; else fail "xen-utils-common installed again"; tail -20 "$WORK/reinst-xen.log"; fi
check "after installing xen-utils-common: every name runs xenplug, its scripts kept" names_run_xenplug "$WORK/ref-new"

echo "== dpkg -r xenplug xenplug-agent"
if in_root dpkg -r xenplug xenplug-agent > "$WORK/remove.log" 2>&1; then pass "dpkg -r"; else fail "dpkg -r"; sed 's/^/   /' "$WORK/remove.log"; fi
check "after removal: Debian's scripts back, byte-identical" debian_scripts_back removed "$WORK/ref-new"
check "after removal: conffiles kept" test -f "$R/etc/xen/xenplug.toml"
check "after removal: programs gone" test ! -e "$R/usr/sbin/xenplug" -a ! -e "$R/usr/sbin/xenplug-agent"

echo "== second round: dpkg -i, then dpkg -P"
in_root dpkg -i /tmp/"$(basename "$XDEB")" /tmp/"$(basename "$ADEB")" > "$WORK/dpkg-i2.log" 2>&1 && pass "dpkg -i again" || { fail "dpkg -i again"; sed 's/^/   /' "$WORK/dpkg-i2.log"; }
check "installed again: every name runs xenplug" names_run_xenplug "$WORK/ref-new"
if in_root dpkg -P xenplug xenplug-agent > "$WORK/purge.log" 2>&1; then pass "dpkg -P"; else fail "dpkg -P"; sed 's/^/   /' "$WORK/purge.log"; fi
check "after purge: Debian's scripts back, byte-identical" debian_scripts_back purged "$WORK/ref-new"
check "after purge: no xenplug file left" sh -c "! chroot '$R' dpkg -S xenplug >/dev/null 2>&1 && test ! -e '$R/etc/xen/xenplug.toml' -a ! -e '$R/etc/xenplug' -a ! -e '$R/lib/systemd/system/xenplug-peer.service' -a ! -e '$R/etc/systemd/system/multi-user.target.wants/xenplug-peer.service'"
check "the store (holding an entry) is kept on purge" test -d "$R/var/lib/xenplug-peer/store/db-01.nocloud"

echo "== no script name was ever missing"
check "inotify: no script name deleted or moved away during the whole run" names_never_missing

echo "== third round: xen-utils-common purged while xenplug is installed, then xenplug purged"
# The names now disappear for real (no package ships them any more), so after the watch.
in_root dpkg -i /tmp/"$(basename "$XDEB")" > "$WORK/dpkg-i3.log" 2>&1 && pass "dpkg -i xenplug" || { fail "dpkg -i xenplug"; sed 's/^/   /' "$WORK/dpkg-i3.log"; }
in_root dpkg -P xen-utils-common > "$WORK/purge-xen2.log" 2>&1 && pass "dpkg -P xen-utils-common" || fail "dpkg -P xen-utils-common"
in_root dpkg -P xenplug > "$WORK/purge3.log" 2>&1 && pass "dpkg -P xenplug" || { fail "dpkg -P xenplug"; sed 's/^/   /' "$WORK/purge3.log"; }
nothing_left() {
    local n ok=0
    for n in $NAMES; do
        if [ -e "$SCRIPTS/$n" ] || [ -L "$SCRIPTS/$n" ] || [ -e "$SCRIPTS/$n.xen-utils-common" ]; then
            echo "   $n or its diverted copy is left" >&2; ok=1
        fi
    done
    if in_root dpkg-divert --list | grep -q 'by xenplug'; then echo "   diversions left" >&2; ok=1; fi
    return $ok
}
check "neither package: no script name, no diverted copy, no diversion left" nothing_left
in_root dpkg -i /tmp/xen-utils-common-new.deb < /dev/null > "$WORK/reinst-xen2.log" 2>&1 && pass "xen-utils-common installed again" || fail "xen-utils-common installed again"
check "Debian's scripts as packaged" debian_scripts_back final "$WORK/ref-new"

echo "== fourth round: an administrator's own script (no package) under a script name"
in_root dpkg -P xen-utils-common > "$WORK/purge-xen3.log" 2>&1 && pass "dpkg -P xen-utils-common" || fail "dpkg -P xen-utils-common"
printf '#!/bin/sh\n# site-local vif-route\nexit 0\n' > "$WORK/site-vif-route"
mkdir -p "$SCRIPTS"
install -m 0750 "$WORK/site-vif-route" "$SCRIPTS/vif-route"
in_root dpkg -i /tmp/"$(basename "$XDEB")" > "$WORK/dpkg-i4.log" 2>&1 && pass "dpkg -i xenplug" || { fail "dpkg -i xenplug"; sed 's/^/   /' "$WORK/dpkg-i4.log"; }
check "the site's vif-route kept as vif-route.xen-utils-common, the name runs xenplug" sh -c "cmp -s '$SCRIPTS/vif-route.xen-utils-common' '$WORK/site-vif-route' && [ \"\$(readlink '$SCRIPTS/vif-route')\" = /usr/sbin/xenplug ]"
in_root dpkg -P xenplug > "$WORK/purge4.log" 2>&1 && pass "dpkg -P xenplug" || { fail "dpkg -P xenplug"; sed 's/^/   /' "$WORK/purge4.log"; }
site_back() {
    [ ! -L "$SCRIPTS/vif-route" ] && cmp -s "$SCRIPTS/vif-route" "$WORK/site-vif-route" &&
        [ "$(stat -c %a "$SCRIPTS/vif-route")" = 750 ] && [ ! -e "$SCRIPTS/vif-route.xen-utils-common" ] &&
        [ ! -e "$SCRIPTS/block" ] && ! in_root dpkg-divert --list | grep -q 'by xenplug'
}
check "after purge: the site's vif-route is back as it was, nothing else left" site_back

echo "test-packages: $PASSED passed, $FAILED failed, $SKIPPED skipped in $((SECONDS - t0)) s"
[ "$FAILED" = 0 ]
}
