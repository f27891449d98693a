# Helpers shared by the dom0 payload init and the scenarios (bash).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
E2E=/var/lib/e2e
CONSOLE_DIR=/var/log/xen/console

# dom0's image has no iputils: the host's static busybox is on the payload disk.
ping() { /srv/e2e/bin/busybox ping "$@"; }

uptime_s() { cut -d' ' -f1 /proc/uptime; }
timing() { echo "E2E: TIME $1 $2"; }

# pass NAME / fail NAME [DETAIL…]: one result line each; details indented below a FAIL. Every
# name a scenario prints must be declared in tests/xen-e2e/manifest (the harness fails on a
# missing or an undeclared one). E2E_PREFIX (the self-test's variant) is put in front of it.
pass() { echo "PASS ${E2E_PREFIX:-}$1"; }
fail() {
    local n=$1; shift
    echo "FAIL ${E2E_PREFIX:-}$n"
    [ $# -gt 0 ] && printf '%s\n' "$@" | sed 's/^/    | /' | head -40
    return 0
}
# check NAME CMD…: PASS if CMD succeeds now. For facts that are settled when the command that
# made them returned (xl create waits for the hotplug scripts; xl destroy for their removal).
check() {
    local n=$1; shift
    if "$@" > /tmp/check.out 2>&1; then pass "$n"; else fail "$n" "command: $*" "$(cat /tmp/check.out)"; fi
}
# eventually SECS NAME CMD…: PASS as soon as CMD succeeds, FAIL if it has not within SECS. For
# anything asynchronous (a guest's console line, a backend state, a link or device that the
# kernel or a daemon removes after the command returned): never sample those once.
eventually() {
    local secs=$1 n=$2; shift 2
    if wait_for "$secs" "$@"; then pass "$n"; else
        "$@" > /tmp/check.out 2>&1
        fail "$n" "command (still failing after ${secs}s): $*" "$(cat /tmp/check.out)"
    fi
}
# wait_for SECS CMD…: until CMD succeeds (polled every 0.2 s, or every WAIT_EVERY s: a probe that
# costs the guest work, such as an ssh login, is not repeated five times a second), at most SECS
# seconds; its status.
wait_for() {
    local deadline
    deadline=$(awk -v u="$(cut -d' ' -f1 /proc/uptime)" -v s="$1" 'BEGIN{printf "%.2f", u+s}')
    shift
    while ! "$@" > /dev/null 2>&1; do
        awk -v u="$(cut -d' ' -f1 /proc/uptime)" -v d="$deadline" 'BEGIN{exit !(u >= d)}' && return 1
        sleep "${WAIT_EVERY:-0.2}"
    done
}

# write_cfg NAME FILE [LINES…]: a PV guest config with the suite's kernel and initramfs (128 MiB
# unless a line sets `memory`).
write_cfg() {
    local name=$1 file=$2; shift 2
    {
        echo "name = \"$name\""
        echo 'type = "pv"'
        echo "kernel = \"$E2E/vmlinux\""
        echo "ramdisk = \"$E2E/initrd.gz\""
        case "$*" in *'memory = '*) ;; *) echo 'memory = 128' ;; esac
        echo 'vcpus = 1'
        echo 'on_poweroff = "destroy"'
        echo 'on_crash = "preserve"'
        # The self-test's variants may add guest options (E2E_GUEST_EXTRA) to the kernel line.
        local l
        for l in "$@"; do
            case "$l" in 'extra = "'*) [ -n "${E2E_GUEST_EXTRA:-}" ] && l="extra = \"$E2E_GUEST_EXTRA ${l#extra = \"}" ;; esac
            printf '%s\n' "$l"
        done
    } > "$file"
}

# xl_create NAME CFG [xl args…]: runs xl create, output in /tmp/xl-NAME.log, rc in XL_RC.
# XL_VERBOSE (default -v) is xl's verbosity (-vvv: libxl's debug lines too).
xl_create() {
    local name=$1 cfg=$2; shift 2
    local t; t=$(uptime_s)
    xl "${XL_VERBOSE:--v}" create "$@" "$cfg" > "/tmp/xl-$name.log" 2>&1
    XL_RC=$?
    echo "E2E: xl create $name rc=$XL_RC in $(awk -v a="$t" -v b="$(uptime_s)" 'BEGIN{printf "%.1f", b-a}')s"
    return 0
}
# show_xl_log NAME: the interesting part of an xl create log (errors, script output), and the
# hotplug log's tail.
show_xl_log() {
    grep -v -E ': (detail|debug): |^ *$|^xc: |^domainbuilder: ' "/tmp/xl-$1.log" | sed 's/^/xl| /' | tail -40
    [ -s /var/log/xen/xen-hotplug.log ] && tail -15 /var/log/xen/xen-hotplug.log | sed 's/^/hotplug.log| /'
}

guest_log() { echo "$CONSOLE_DIR/guest-$1.log"; }
# wait_guest NAME SECS: until the guest printed GUEST: READY.
wait_guest() { wait_for "$2" grep -q 'GUEST: READY' "$(guest_log "$1")"; }
# guest_has NAME PATTERN: the guest printed a line matching PATTERN, waiting for it up to
# GUEST_WAIT seconds (20): xenconsoled writes the console log asynchronously, and the guest's
# background jobs report after READY. guest_saw: the same, now (for diagnostics only).
guest_has() { wait_for "${GUEST_WAIT:-20}" grep -q -- "$2" "$(guest_log "$1")"; }
guest_saw() { grep -q -- "$2" "$(guest_log "$1")"; }
show_guest() { sed 's/^/    guest| /' "$(guest_log "$1")" 2>/dev/null | tail -40; }

domid_of() { xl domid "$1" 2>/dev/null; }
xs() { xenstore-read "$1" 2>/dev/null; }

# destroy NAME: xl destroy, timed.
destroy() {
    local t; t=$(uptime_s)
    xl destroy "$1" > "/tmp/xl-destroy-$1.log" 2>&1
    local rc=$?
    echo "E2E: xl destroy $1 rc=$rc in $(awk -v a="$t" -v b="$(uptime_s)" 'BEGIN{printf "%.1f", b-a}')s"
    return $rc
}
destroy_all() {
    local d
    for d in $(xl list 2>/dev/null | awk 'NR > 2 {print $1}'); do
        xl destroy "$d" > /dev/null 2>&1
    done
}

# Leftover probes.
loops_for() { losetup -a 2>/dev/null | grep -F -- "$1"; }
no_loops_for() { ! loops_for "$1"; }
no_link() { ! ip link show "$1" > /dev/null 2>&1; }
# No lock file left behind and none held: a lock is unlinked on release (locking.sh's
# protocol); xenplug's waiting-line files (.<name>.queue, never unlinked) stay but must be free.
no_lock_files() {
    [ -z "$(ls -A /var/run/xen-hotplug 2>/dev/null | grep -v -e '^xenplug-block$' -e '^xenplug-runs$' -e '^\..*\.queue$')" ] || return 1
    # The runs' marks (hotplug/src/runs.rs): one outlives its run only if the run was killed.
    [ -z "$(ls -A /var/run/xen-hotplug/xenplug-runs 2>/dev/null)" ] || return 1
    local q
    for q in /var/run/xen-hotplug/.*.queue; do
        [ -e "$q" ] || continue
        flock -n "$q" true || return 1
    done
}
no_block_state_for() { [ -z "$(ls /run/xen-hotplug/xenplug-block 2>/dev/null | grep -- "-$1-")" ]; }
no_backend_dir() { ! xenstore-exists "/local/domain/0/backend/$1" 2>/dev/null; }
