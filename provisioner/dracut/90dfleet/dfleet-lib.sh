#!/bin/sh
# dfleet's overlay root: the functions behind the hooks of dracut module
# "dfleet". Everything here is sourced by dracut's init (hooks and the
# initqueue job), so functions `return`, never `exit`, and every name starts
# with dfleet_/DFLEET_ so nothing of init's is clobbered.
#
# The root it builds:
#   NFS root, read-only            at /run/dfleet/lower   (the image generation)
#   tmpfs, size dfleet.overlay.size at /run/dfleet/rw      (upper/ and work/)
#   overlay lowerdir=/run/dfleet/lower,upperdir=/run/dfleet/rw/upper,
#           workdir=/run/dfleet/rw/work                   on $NEWROOT
# switch_root moves /run into the new root, so the node sees both layers at
# the same paths afterwards; the generation stamp is
# /run/dfleet/lower/etc/dfleet/generation.
#
# Who mounts the NFS root (dfleet.mount=auto|self, default auto):
# - The distribution's nfs module, when its network handler calls netroot once
#   an interface is up (Debian 12, dracut 059, network-legacy): the NFS root
#   lands on $NEWROOT during the initqueue, init then skips every mount hook,
#   and dfleet's pre-pivot hook moves it to /run/dfleet/lower and mounts the
#   overlay on $NEWROOT.
# - Nobody, when the network handler never calls netroot (SLES 15 with wicked,
#   dracut issue 1010: the nfs module's finished hook `[ -e $NEWROOT/proc ]`
#   then loops until the initqueue gives up). dfleet's initqueue job mounts the
#   NFS root at /run/dfleet/lower and the overlay on $NEWROOT itself, which
#   also meets that finished hook. In auto mode it does so only when the
#   network has been up for DFLEET_GRACE initqueue rounds and $NEWROOT is
#   still empty; dfleet.mount=self skips the nfs module's mount and the wait,
#   so this path can be tested where the nfs module would have mounted.
# A failed mount by dfleet is tried again every initqueue round (the NFS
# server may be restarting), with a console warning at the first and every
# DFLEET_RETRY_EVERY-th failure; init's rd.retry bounds the wait.
# /run/dfleet/mounted-by records which of the two paths ran.

type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

DFLEET_LOWER=/run/dfleet/lower
DFLEET_RW=/run/dfleet/rw
# What the cmdline hook decided, for the initqueue job and the pre-pivot hook.
DFLEET_STATE=/tmp/dfleet
# Initqueue rounds (at least 0.5 s each) that auto mode waits, once the
# network is up, for somebody else to mount the NFS root. network-legacy
# mounts it one round after the address is configured.
DFLEET_GRACE=10
# The last failure, for the caller's die message.
DFLEET_ERR=
# Who mounted the NFS root: "dfleet" (its initqueue job) or "nfs-module"
# (the distribution's nfs module). Under /run, so the booted system reads it.
DFLEET_MOUNTED_BY=/run/dfleet/mounted-by
# A failed mount of the NFS root is tried again every initqueue round; the
# console hears of every this many failures.
DFLEET_RETRY_EVERY=20

# dfleet_fstype MOUNTPOINT: the type of the topmost mount on MOUNTPOINT, or
# nothing.
dfleet_fstype() {
    local _dev _mp _type _rest _found=
    while read -r _dev _mp _type _rest; do
        [ "$_mp" = "$1" ] && _found=$_type
    done < /proc/mounts
    echo "$_found"
}

# dfleet_mount_options MOUNTPOINT: the options of the topmost mount on
# MOUNTPOINT, or nothing.
dfleet_mount_options() {
    local _dev _mp _type _opts _rest _found=
    while read -r _dev _mp _type _opts _rest; do
        [ "$_mp" = "$1" ] && _found=$_opts
    done < /proc/mounts
    echo "$_found"
}

# dfleet_overlay_size: the tmpfs size from dfleet.overlay.size=, either a
# percentage of RAM (1%..100%) or a size with an optional k/m/g suffix (4g).
# Unset means 50%. An invalid value warns and falls back to 50%: zero would
# mean "no limit" to tmpfs, and the upper layer is the node's RAM.
dfleet_overlay_size() {
    local _s _n
    _s=$(getarg dfleet.overlay.size=)
    if [ -z "$_s" ]; then
        echo 50%
        return 0
    fi
    _n=${_s%[%kKmMgG]}
    case "$_n" in
        '' | *[!0-9]*) _n=bad ;;
        *[1-9]*) ;;
        *) _n=bad ;; # all zeros
    esac
    if [ "$_n" != bad ] && [ "${_s%\%}" != "$_s" ] && [ "$_n" -gt 100 ]; then
        _n=bad
    fi
    if [ "$_n" = bad ]; then
        warn "dfleet: dfleet.overlay.size=$_s is not a size like 50% or 4g; using 50%"
        echo 50%
        return 0
    fi
    echo "$_s"
}

# dfleet_cmdline: the cmdline hook. Runs after the nfs module's
# parse-nfsroot.sh, which has turned root=nfs:SERVER:PATH,OPTIONS into
# netroot=nfs:SERVER:PATH:OPTIONS.
dfleet_cmdline() {
    local _mode
    case "${netroot%%:*}" in
        nfs | nfs4) ;;
        *)
            info "dfleet: the root is not on NFS (root=$root), leaving it alone"
            return 0
            ;;
    esac
    _mode=$(getarg dfleet.mount=)
    case "$_mode" in
        '') _mode=auto ;;
        auto | self) ;;
        *)
            warn "dfleet: dfleet.mount=$_mode is neither auto nor self; using auto"
            _mode=auto
            ;;
    esac
    mkdir -p "$DFLEET_STATE"
    echo "$netroot" > "$DFLEET_STATE/nfsroot"
    echo "$_mode" > "$DFLEET_STATE/mode"
    dfleet_overlay_size > "$DFLEET_STATE/size"

    if [ "$_mode" = self ]; then
        # Neutralise the nfs module's own mount without touching its files:
        # the network module's netroot picks its handler by netroot's prefix
        # (nfs: -> /sbin/nfsroot, the documented way modules plug in a root
        # type), so netroot=dfleet:SERVER:PATH:OPTIONS makes it call
        # /sbin/dfleetroot, which mounts nothing. The rest of netroot keeps
        # its shape, so the network module still brings the interface up
        # (ip=dhcp is implied by a netroot) and still finds the server's
        # address in it to pick the route. Unsetting netroot instead would
        # stop network-legacy from bringing the network up without
        # rd.neednet=1, and deleting the nfs module's finished hook is not
        # needed: the overlay on $NEWROOT has a /proc, so it is met.
        netroot="dfleet:${netroot#*:}"
        info "dfleet: dfleet.mount=self: dfleet mounts the NFS root itself"
    fi

    # A settled initqueue job sourced by init each round until it removes
    # itself (sourced, not run by /sbin/initqueue as a process, so its die
    # stops init).
    echo '. /lib/dfleet-lib.sh; dfleet_root_job' > "$hookdir/initqueue/settled/dfleet-root.sh"
}

# dfleet_network_up SERVER: whether the node can reach SERVER yet (a route to
# an address, or any global address when SERVER is a name).
dfleet_network_up() {
    local _a=${1#[}
    _a=${_a%]}
    case "$_a" in
        *[!0-9a-fA-F.:]*) [ -n "$(ip -o addr show scope global 2> /dev/null)" ] ;;
        *) ip route get "$_a" > /dev/null 2>&1 ;;
    esac
}

# dfleet_nfs_var NFSROOT: sets the caller's local nfs, server, path and
# options from the nfs module's netroot form.
dfleet_nfs_var() {
    command -v nfs_to_var > /dev/null || . /lib/nfs-lib.sh
    nfs_to_var "$1"
}

# dfleet_mount_lower NFSROOT: mounts the NFS root read-only at
# /run/dfleet/lower, with the options root= gave minus ro/rw/lock (the lower
# layer must never change, and NFSv3 in an initramfs has no lock manager).
# Returns 1 when the mount failed (worth another try), 2 when root= names no
# server and path (never worth one).
dfleet_mount_lower() {
    local nfs= server= path= options= _o _opts=ro _err _retry=retry=0
    dfleet_nfs_var "$1"
    if [ -z "$server" ] || [ -z "$path" ] || [ "$path" = error ]; then
        DFLEET_ERR="no NFS server and path in root=$(getarg root=)"
        return 2
    fi
    local IFS=,
    for _o in $options; do
        case "$_o" in
            ro | rw | lock | nolock | '') ;;
            retry=*) _retry=$_o ;;
            *) _opts="$_opts,$_o" ;;
        esac
    done
    unset IFS
    [ "$nfs" = nfs4 ] || _opts="$_opts,nolock"
    # One try per call unless root= says otherwise: the initqueue job
    # retries, saying so on the console, where mount.nfs alone would retry
    # silently for two minutes.
    _opts="$_opts,$_retry"
    mkdir -p "$DFLEET_LOWER"
    [ -e "$DFLEET_STATE/attempts" ] \
        || info "dfleet: mounting the NFS root $server:$path on $DFLEET_LOWER ($_opts)"
    if ! _err=$(mount -t "$nfs" -o "$_opts" "$server:$path" "$DFLEET_LOWER" 2>&1); then
        DFLEET_ERR="mounting the NFS root $server:$path on $DFLEET_LOWER failed: $_err"
        return 1
    fi
}

# dfleet_overlay: with the NFS root at /run/dfleet/lower and nothing on
# $NEWROOT, mounts the tmpfs for the upper layer and the overlay on $NEWROOT.
# On failure it unmounts what it mounted, sets DFLEET_ERR and returns 1.
dfleet_overlay() {
    local _size _err
    read -r _size < "$DFLEET_STATE/size"
    mkdir -p "$DFLEET_RW"
    if ! _err=$(mount -t tmpfs -o "mode=0755,size=$_size" tmpfs "$DFLEET_RW" 2>&1); then
        DFLEET_ERR="mounting the tmpfs (size=$_size) for the overlay's upper layer on $DFLEET_RW failed: $_err"
        return 1
    fi
    if ! _err=$(mkdir -m 0755 "$DFLEET_RW/upper" "$DFLEET_RW/work" 2>&1); then
        umount "$DFLEET_RW"
        DFLEET_ERR="creating upper and work in the tmpfs on $DFLEET_RW failed: $_err"
        return 1
    fi
    if ! _err=$(mount -t overlay \
        -o "lowerdir=$DFLEET_LOWER,upperdir=$DFLEET_RW/upper,workdir=$DFLEET_RW/work" \
        overlay "$NEWROOT" 2>&1); then
        umount "$DFLEET_RW"
        DFLEET_ERR="mounting the overlay (lowerdir=$DFLEET_LOWER, upper and work in $DFLEET_RW) on $NEWROOT failed: $_err"
        return 1
    fi
}

# dfleet_report: one line saying what the node booted.
dfleet_report() {
    local _gen=unknown _size _by=unknown
    # The stamp is TOML (`image = "compute"`, `generation = 7`, comments).
    local _line _image= _number=
    if [ -r "$DFLEET_LOWER/etc/dfleet/generation" ]; then
        while read -r _line; do
            case "$_line" in
                image*=*) _image=${_line#*=} ;;
                generation*=*) _number=${_line#*=} ;;
            esac
        done < "$DFLEET_LOWER/etc/dfleet/generation"
        # Strip the quotes and blanks with the shell alone (no tr in the initramfs).
        _image=${_image#*\"}
        _image=${_image%%\"*}
        _number=${_number##* }
        [ -n "$_image" ] && [ -n "$_number" ] && _gen="$_image:$_number"
    fi
    read -r _size < "$DFLEET_STATE/size"
    read -r _by < "$DFLEET_MOUNTED_BY"
    info "dfleet: root is an overlay of $DFLEET_LOWER (generation $_gen, NFS root mounted by $_by) with its upper layer in a tmpfs of size $_size"
}

# dfleet_root_job: the settled initqueue job. Mounts the NFS root and the
# overlay itself when nobody else mounts the NFS root (see the top of this
# file); removes itself once the root is there.
dfleet_root_job() {
    local _mode _nfsroot _round=0 nfs= server= path= options=
    read -r _mode < "$DFLEET_STATE/mode"
    read -r _nfsroot < "$DFLEET_STATE/nfsroot"
    if ismounted "$NEWROOT"; then
        # The nfs module mounted it; the pre-pivot hook takes it from here.
        rm -f -- "$job"
        return 0
    fi
    dfleet_nfs_var "$_nfsroot"
    dfleet_network_up "$server" || return 0
    if [ "$_mode" = auto ]; then
        [ -r "$DFLEET_STATE/rounds" ] && read -r _round < "$DFLEET_STATE/rounds"
        _round=$((_round + 1))
        echo "$_round" > "$DFLEET_STATE/rounds"
        [ "$_round" -le "$DFLEET_GRACE" ] && return 0
        info "dfleet: the network is up and nothing mounted the NFS root on $NEWROOT; dfleet mounts it"
    fi
    dfleet_mount_lower "$_nfsroot"
    case $? in
        0) ;;
        1)
            # The NFS server may be restarting: the job stays queued and
            # tries again next round, until init's rd.retry gives up.
            dfleet_retry_note
            return 0
            ;;
        *)
            rm -f -- "$job"
            die "dfleet: $DFLEET_ERR"
            return 1
            ;;
    esac
    rm -f -- "$job"
    if ! dfleet_overlay; then
        umount "$DFLEET_LOWER"
        die "dfleet: $DFLEET_ERR"
        return 1
    fi
    echo dfleet > "$DFLEET_MOUNTED_BY"
    dfleet_report
    need_shutdown
}

# dfleet_retry_note: counts failed mounts of the NFS root and says so on the
# console at the first and then every DFLEET_RETRY_EVERY-th, so a node waiting
# for its NFS server shows why without flooding the console.
dfleet_retry_note() {
    local _n=0
    [ -r "$DFLEET_STATE/attempts" ] && read -r _n < "$DFLEET_STATE/attempts"
    _n=$((_n + 1))
    echo "$_n" > "$DFLEET_STATE/attempts"
    if [ $(((_n - 1) % DFLEET_RETRY_EVERY)) -eq 0 ]; then
        warn "dfleet: $DFLEET_ERR (attempt $_n; trying again until rd.retry gives up)"
    fi
}

# dfleet_pre_pivot: the pre-pivot hook.
dfleet_pre_pivot() {
    local _type _err
    [ -r "$DFLEET_STATE/nfsroot" ] || return 0
    _type=$(dfleet_fstype "$NEWROOT")
    case "$_type" in
        overlay)
            # dfleet's initqueue job built it.
            ismounted "$DFLEET_LOWER" && return 0
            die "dfleet: $NEWROOT is an overlay but nothing is mounted on $DFLEET_LOWER"
            return 1
            ;;
        nfs | nfs4) ;;
        '')
            die "dfleet: nothing is mounted on $NEWROOT, expected the NFS root"
            return 1
            ;;
        *)
            die "dfleet: $NEWROOT is a $_type mount, not the NFS root; not building the overlay"
            return 1
            ;;
    esac
    mkdir -p "$DFLEET_LOWER"
    if ! _err=$(mount --move "$NEWROOT" "$DFLEET_LOWER" 2>&1); then
        die "dfleet: moving the NFS root from $NEWROOT to $DFLEET_LOWER failed: $_err"
        return 1
    fi
    case ",$(dfleet_mount_options "$DFLEET_LOWER")," in
        *,ro,*) ;;
        *)
            # root= or the kernel's `rw` asked for it; the lower layer must
            # never change under the overlay.
            warn "dfleet: the NFS root was mounted read-write; remounting it read-only"
            if ! _err=$(mount -o remount,ro "$DFLEET_LOWER" 2>&1); then
                mount --move "$DFLEET_LOWER" "$NEWROOT"
                die "dfleet: remounting the NFS root on $DFLEET_LOWER read-only failed: $_err"
                return 1
            fi
            ;;
    esac
    echo nfs-module > "$DFLEET_MOUNTED_BY"
    if ! dfleet_overlay; then
        # Put the NFS root back so an emergency shell (rd.shell) sees it
        # where the nfs module left it.
        mount --move "$DFLEET_LOWER" "$NEWROOT" \
            || warn "dfleet: moving the NFS root back to $NEWROOT failed too"
        die "dfleet: $DFLEET_ERR"
        return 1
    fi
    dfleet_report
}
