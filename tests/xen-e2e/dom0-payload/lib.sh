# Helpers shared by the dom0 payload init and the scenarios (bash).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
E2E=/var/lib/e2e
CONSOLE_DIR=/var/log/xen/console

# dom0's image has no iputils: the host's static busybox is on the payload disk.
ping() { /srv/e2e/bin/busybox ping "$@"; }

uptime_s() { cut -d' ' -f1 /proc/uptime; }
timing() { echo "E2E: TIME $1 $2"; }

# pass NAME / fail NAME [DETAIL…]: one result line each; details indented below a FAIL.
pass() { echo "PASS $1"; }
fail() {
    local n=$1; shift
    echo "FAIL $n"
    [ $# -gt 0 ] && printf '%s\n' "$@" | sed 's/^/    | /' | head -40
    return 0
}
# check NAME CMD…: PASS if CMD succeeds.
check() {
    local n=$1; shift
    if "$@" > /tmp/check.out 2>&1; then pass "$n"; else fail "$n" "command: $*" "$(cat /tmp/check.out)"; fi
}
# wait_for SECS CMD…: poll CMD every 0.5 s.
wait_for() {
    local deadline=$(( $(date +%s) + $1 )); shift
    while ! "$@" > /dev/null 2>&1; do
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 0.5
    done
}

# write_cfg NAME FILE [LINES…]: a PV guest config with the suite's kernel and initramfs.
write_cfg() {
    local name=$1 file=$2; shift 2
    {
        echo "name = \"$name\""
        echo 'type = "pv"'
        echo "kernel = \"$E2E/vmlinux\""
        echo "ramdisk = \"$E2E/initrd.gz\""
        echo 'memory = 128'
        echo 'vcpus = 1'
        echo 'on_poweroff = "destroy"'
        echo 'on_crash = "preserve"'
        printf '%s\n' "$@"
    } > "$file"
}

# xl_create NAME CFG [xl args…]: runs xl create, output in /tmp/xl-NAME.log, rc in XL_RC.
xl_create() {
    local name=$1 cfg=$2; shift 2
    local t; t=$(uptime_s)
    xl -v create "$@" "$cfg" > "/tmp/xl-$name.log" 2>&1
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
guest_has() { grep -q -- "$2" "$(guest_log "$1")"; }
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
    [ -z "$(ls -A /var/run/xen-hotplug 2>/dev/null | grep -v -e '^xenplug-block$' -e '^\..*\.queue$')" ] || return 1
    local q
    for q in /var/run/xen-hotplug/.*.queue; do
        [ -e "$q" ] || continue
        flock -n "$q" true || return 1
    done
}
no_block_state_for() { [ -z "$(ls /run/xen-hotplug/xenplug-block 2>/dev/null | grep -- "-$1-")" ]; }
no_backend_dir() { ! xenstore-exists "/local/domain/0/backend/$1" 2>/dev/null; }
