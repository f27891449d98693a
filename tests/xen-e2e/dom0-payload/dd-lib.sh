# Helpers for the commands dom0 runs in the driver domain (dd-init's command channel), next to
# lib.sh's leftover probes.
DEVD_LOG=/var/log/xl-devd.log

# devd_ran DOMID LINE…: every LINE (with printf %b escapes, e.g. \t) is in xl devd's debug log as
# libxl's "Domain DOMID:LINE" (libxl_device.c device_hotplug lists each script's argv and env).
devd_ran() {
    local d=$1 l miss=0
    shift
    for l in "$@"; do
        l=$(printf '%b' "$l")
        grep -qF -- "Domain $d:$l" "$DEVD_LOG" || { echo "not in xl devd's log: Domain $d:$l"; miss=1; }
    done
    [ $miss = 0 ] || grep -F "Domain $d:" "$DEVD_LOG" | grep -E 'hotplug|XENBUS|script|vif:|netdev|type_if' | tail -30
    return $miss
}

# dd_batch NAME CMD [NAME CMD]…: run each CMD (in a subshell, in order); after its output print
# "@@ NAME STATUS". One round trip for several of dom0's checks (see dd_checks in the scenario).
dd_batch() {
    local n c rc
    while [ $# -ge 2 ]; do
        n=$1 c=$2
        shift 2
        (eval "$c") > /tmp/batch.out 2>&1
        rc=$?
        cat /tmp/batch.out
        echo "@@ $n $rc"
    done
}
