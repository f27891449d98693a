#!/usr/bin/env bash
# Runs every xenplug test: formatting, lints, unit, integration and privileged end-to-end tests,
# then the real-Xen suite with its reference run and self-test. As root on Debian 12 (network
# namespaces, loop devices and QEMU are used for real); installs what it needs (tools/deps.sh).
#
# Prints each phase's wall time, and at the end the tests that skipped (run as root on this kind
# of machine: none; the command fails if any did). Exit status: 0 when everything passed.
set -euo pipefail
cd "$(dirname "$0")"

[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (the tests use namespaces, loop devices and QEMU)" >&2; exit 1; }

T0=$(date +%s.%N)
PHASES=()
CURRENT=""
# Every test that skips (testkit::require) names itself in this file.
export XENPLUG_SKIP_LOG
XENPLUG_SKIP_LOG=$(mktemp /tmp/xenplug-skips.XXXXXX)

since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.0f", b-a}'; }
# CHILD_CPU := CPU seconds (user + system) used so far by the commands this script ran and
# waited for (`times` in this shell: a command substitution would report its own children).
CHILD_CPU=0
child_cpu() {
    local f
    f=$(mktemp)
    times > "$f"
    CHILD_CPU=$(awk 'NR == 2 {
        s = 0
        for (i = 1; i <= 2; i++) { split($i, ms, "m"); sub("s", "", ms[2]); s += ms[1] * 60 + ms[2] }
        printf "%.1f", s }' "$f")
    rm -f "$f"
}
# "NNNs  cpu NNNs (N.N cores)" for the phase that started at PHASE_T0 / PHASE_CPU0 (call
# child_cpu first).
phase_figures() {
    local wall cpu
    wall=$(since "$PHASE_T0")
    cpu=$(awk -v a="$PHASE_CPU0" -v b="$CHILD_CPU" 'BEGIN{printf "%.0f", b-a}')
    awk -v w="$wall" -v c="$cpu" 'BEGIN{printf "%5ss  cpu %5ss (%.1f cores)", w, c, (w > 0 ? c / w : 0)}'
}
summary() {
    local rc=$? p
    trap - EXIT
    bg_stop
    child_cpu
    if [ -n "$CURRENT" ]; then
        PHASES+=("$(printf '%-22s %s  FAILED' "$CURRENT" "$(phase_figures)")")
        # A phase that did not finish is a failure, also when a signal ended the run.
        [ "$rc" = 0 ] && rc=1
    fi
    echo
    echo "== test.sh phase times"
    for p in "${PHASES[@]}"; do echo "   $p"; done
    PHASE_T0=$T0 PHASE_CPU0=0
    printf '   %-22s %s\n' total "$(phase_figures)"
    echo "== skipped tests"
    if [ -s "$XENPLUG_SKIP_LOG" ]; then
        sort -u "$XENPLUG_SKIP_LOG" | sed 's/^/   SKIPPED /'
        echo "test.sh: FAIL: tests skipped although this runs as root (every test must run here)" >&2
        [ "$rc" = 0 ] && rc=1
    else
        echo "   none"
    fi
    rm -f "$XENPLUG_SKIP_LOG"
    rm -rf "${DEBS_COPY:-}"
    [ "$rc" = 0 ] && echo "test.sh: PASS" || echo "test.sh: FAIL (status $rc)"
    exit "$rc"
}
trap summary EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# phase NAME CMD…: run CMD as one timed phase (a failure ends the run, with the times so far).
phase() {
    CURRENT=$1
    shift
    echo
    echo "== phase $CURRENT: $*"
    PHASE_T0=$(date +%s.%N)
    child_cpu
    PHASE_CPU0=$CHILD_CPU
    "$@"
    child_cpu
    PHASES+=("$(printf '%-22s %s' "$CURRENT" "$(phase_figures)")")
    CURRENT=""
}

# bg NAME CMD…: start CMD in the background, its output kept for bg_wait; the cached images
# (network and disk bound) are built this way while the CPU compiles and tests.
declare -A BG_PID BG_LOG BG_T0
bg() {
    local name=$1
    shift
    BG_LOG[$name]=$(mktemp "/tmp/xenplug-bg-$name.XXXXXX")
    BG_T0[$name]=$(date +%s.%N)
    echo "== background $name: $* (output: ${BG_LOG[$name]}, shown when it is waited for)"
    # Its own session, so an early end of this run stops it with everything it started.
    setsid "$@" < /dev/null > "${BG_LOG[$name]}" 2>&1 &
    BG_PID[$name]=$!
}
# bg_wait NAME: wait for NAME, print its output and its wall time since it started, and fail
# as it did.
bg_wait() {
    local name=$1 rc=0
    wait "${BG_PID[$name]}" || rc=$?
    unset "BG_PID[$name]"
    sed 's/^/   /' "${BG_LOG[$name]}"
    rm -f "${BG_LOG[$name]}"
    echo "== background $name: status $rc after $(since "${BG_T0[$name]}")s (started in the background)"
    [ "$rc" = 0 ] || echo "test.sh: background $name failed (status $rc)" >&2
    return "$rc"
}
# bg_stop: stop every background job that is still running, with everything it started: all of
# it is in the job's session (setsid), whatever process groups it made (timeout(1) makes its
# own, and a shell runs its TERM trap only once its foreground child has exited), so the whole
# session is told to stop, given 15 s, then killed.
bg_stop() {
    local name pid
    for name in "${!BG_PID[@]}"; do
        pid=${BG_PID[$name]}
        pkill -TERM -s "$pid" 2>/dev/null || true
        timeout 15 tail --pid="$pid" -f /dev/null 2>/dev/null || true
        pkill -KILL -s "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        rm -f "${BG_LOG[$name]}"
    done
}

# Every package the demo and the tests need, the real-Xen rig's and the package tests' included
# (on this kind of machine some come from bookworm-backports: see tools/deps.sh).
phase deps sh -c 'tools/deps.sh && tools/deb-deps.sh test'
phase channel-deps tools/channel-deps.sh
# Cached after the first run, built meanwhile: a Debian 12 tree with cloud-init for the
# first-boot oracle tests, the real-Xen suite's dom0 image, the package tests' base root.
bg guest-root bash -c 'tools/guest-root.sh > /dev/null'
bg xen-e2e-image tests/xen-e2e/run build
bg packages-root packaging/test-packages.sh --base-only
phase fmt cargo fmt --all -- --check
phase clippy cargo clippy --workspace --all-targets -- -D warnings
# The Debian packages (tools/build-deb.sh), first: the real-Xen suite installs them. A copy is
# what the package tests below get, since the suite's repack builds them again (cargo is a
# no-op then, dpkg-buildpackage is not) while they run.
DEBS_COPY=$(mktemp -d /tmp/xenplug-debs.XXXXXX)
phase build-deb sh -c "tools/build-deb.sh > /dev/null && cp target/debian/*.deb '$DEBS_COPY/' && ls '$DEBS_COPY'"
# The end-to-end suite on real Xen 4.17 + a Debian 12 dom0 under QEMU (tests/xen-e2e/README.md):
# our static build installed into dom0 from the Debian package, real libxl/blkback/netback/
# hvc_xen. Every check the scenarios declare (tests/xen-e2e/manifest) must print and pass, but
# the opt-in cloud-template (Debian guests; it does not fit this budget on a 2-core machine: the
# e2e README). The dom0 image is cached in /var/cache/xenplug-e2e between runs.
# One boot of Xen and dom0 does all three parts (`run all --full`): the suite with the xenplug
# package installed; the suite's self-test, plausible-but-wrong programs each caught by the
# checks named for it; then the package removed and Debian's own scripts on the fast scenarios,
# which must fail exactly the checks flagged as their known bugs and pass the rest. Each part is
# judged as its own mode (`run all`, `run --self-test-broken`, `run --reference`) would judge it.
# It runs in the background, beside the host-side phases below: the rig keeps about 1.3 of the
# 2 cores busy (QEMU's TCG), the host-side tests fill the rest (README "./test.sh").
phase xen-e2e-image bg_wait xen-e2e-image
bg xen-e2e tests/xen-e2e/run all --full
# The packages: lintian, then installed, upgraded around and removed in a fresh Debian 12 root,
# and the peer's sandboxed unit under systemd in systemd-nspawn (packaging/test-packages.sh;
# about a minute with its base root cached in /var/cache/xenplug-pkgtest).
phase packages-root bg_wait packages-root
phase packages packaging/test-packages.sh --debs "$DEBS_COPY"
phase guest-root bg_wait guest-root
# One test at a time per binary would be slow; tests isolate themselves (own namespaces, own
# xenstore subtrees, own loop devices), so the default parallelism is kept. A test that hangs
# fails the phase after 40 minutes (libtest names it after 60 s: "has been running for over")
# instead of holding the whole run until CI's limit.
phase cargo-test timeout --kill-after=30 2400 cargo test --workspace --no-fail-fast
# Crash safety (issue 13): each hotplug script and the agent's apply SIGKILLed at random
# instants, then what libxl runs next, then every leak class audited; 20 rounds each here (the
# README's figures: 1000). For the agent: the guest after its restart is in the previous or the
# new generation, never between (its apply journal).
phase chaos tools/chaos.sh --debug --rounds 20 --reference all
# Every fuzz target for a few seconds from its committed corpus (fuzz/README.md): each input in
# the corpus is replayed first, so a regression on a past finding fails here.
phase fuzz-smoke fuzz/run.sh smoke 3
# Tests that need tc policing (cls_matchall, act_police), which this kind of host's kernel
# lacks: under Debian 12's kernel in QEMU, from the image the suite cached (~1 minute).
phase vm-kernel-tests tools/vm-kernel-tests.sh
phase xen-e2e bg_wait xen-e2e
