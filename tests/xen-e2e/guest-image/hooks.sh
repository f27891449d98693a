# The cloud-template scenario's guest image in the rig's phases (sourced by `run`; uses its
# CACHE, HERE, WORK, COVERED, DEBS, HOST_MNT, apt_mirrors, base_dir, phase_begin/phase_end).
# Only runs that cover the scenario build, carry or attach the image.
#   build:  guest_image_build          the cached Debian 12 tree (guest-image/build), ~3.5 min once
#   repack: guest_image_repack PAYLOAD the template disk of this run: a copy of the tree with the
#                                      xenplug-agent package under test installed by dpkg and
#                                      prepared by `xenplug-agent --prepare-template`, packed as
#                                      ext4 (label debroot); its initramfs onto the payload
#   run:    guest_image_qemu_args      the template disk as a read-only disk of dom0 after the
#                                      rig's own three (vdd; the scenario finds it by its label)

# Wanted when the run covers the scenario and tests the Debian packages (before repack: no
# --binary and no --reference; after it: DEBS is set); never by the benchmark.
guest_image_wanted() {
    [ "$PHASE" != bench ] || return 1
    case ",$COVERED," in *,cloud-template,*) ;; *) return 1 ;; esac
    [ -n "${DEBS:-}" ] || { [ -z "$BINARY" ] && [ "$REFERENCE" = 0 ]; }
}

# The key: the recipe, the package list, the mirrors and the exact dom0 kernel package whose
# modules go in (not the whole base key: other dom0 packages do not change the guest).
guest_image_dir() {
    local base kver
    base=$(base_dir)
    kver=$(cat "$base/kernel-version")
    echo "$CACHE/guest-$( {
        apt_mirrors
        grep -E "^linux-image-$kver\s" "$base/packages.lock"
        cat "$HERE/guest-image/build" "$HERE/guest-image/packages"
    } | sha256sum | cut -c1-16)"
}

guest_image_build() {
    guest_image_wanted || return 0
    local dir mirror security
    phase_begin guest-image
    dir=$(guest_image_dir)
    if [ -f "$dir/done" ]; then
        echo "cached: $dir"
        phase_end
        return 0
    fi
    read -r mirror security < <(apt_mirrors)
    HOST_MNT="$dir.tmp/root"
    "$HERE/guest-image/build" "$dir" "$(base_dir)" "$mirror" "$security"
    HOST_MNT=""
    # Keep only the newest two guest images.
    ls -1dt "$CACHE"/guest-* 2>/dev/null | grep -v '\.tmp$' | tail -n +3 | xargs -r rm -rf
    phase_end
}

# The template as an operator makes one: the package installed with dpkg inside the image, then
# the agent's own preparation for cloning, then the disk packed. Done here, on the host, rather
# than in dom0 (where it took 40-150 s of TCG time for the same dpkg run). A failure does not
# stop the run: the scenario reports it (template.rc, template.log on the payload).
guest_image_repack() {
    guest_image_wanted || return 0
    local P=$1 dir T deb rc t0
    t0=$(date +%s.%N)
    dir=$(guest_image_dir)
    [ -f "$dir/done" ] || { echo "run: no guest image; run the build phase first" >&2; exit 1; }
    deb=$(ls "$DEBS"/xenplug-agent_*_amd64.deb | head -1)
    T="$WORK/template"
    rm -rf "$T"
    cp -a "$dir/root" "$T"
    set +e
    {
        cp "$deb" "$T/tmp/" &&
            chroot "$T" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
                dpkg -i "/tmp/$(basename "$deb")" &&
            rm -f "$T/tmp/$(basename "$deb")" &&
            echo "== xenplug-agent --prepare-template" &&
            chroot "$T" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/sbin/xenplug-agent --prepare-template
    } > "$WORK/template.log" 2>&1
    rc=$?
    set -e
    truncate -s 2G "$WORK/template.ext4"
    mkfs.ext4 -q -F -L debroot -d "$T" "$WORK/template.ext4"
    rm -rf "$T"
    mkdir -p "$P/guest/debian"
    cp "$dir/initrd.gz" "$dir/packages.lock" "$WORK/template.log" "$P/guest/debian/"
    echo "$rc" > "$P/guest/debian/template.rc"
    # The package itself, for the scenario's comparison with what the template holds.
    mkdir -p "$P/debs"
    cp "$deb" "$P/debs/"
    echo "template disk: $(basename "$deb") installed and prepared (rc $rc) in" \
        "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s"
}

guest_image_qemu_args() {
    guest_image_wanted || return 0
    echo "-drive file=$WORK/template.ext4,if=virtio,format=raw,readonly=on"
}
