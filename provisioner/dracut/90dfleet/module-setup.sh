#!/bin/bash
# dracut module "dfleet": the root of a diskless dfleet node is an overlay whose
# lower layer is the image generation mounted read-only over NFS at
# /run/dfleet/lower and whose upper layer lives in a size-capped tmpfs at
# /run/dfleet/rw. See dfleet-lib.sh for how the two boot paths work.

# called by dracut
check() {
    require_binaries mount umount mkdir ip || return 1
    # Never added on its own: it changes what the root is, so only an explicit
    # `dracut -m ... dfleet` or `--add dfleet` includes it.
    return 255
}

# called by dracut
depends() {
    # The nfs module parses root=nfs:... and brings rpcbind, mount.nfs and the
    # NFS kernel modules; network brings the interface up. Which network
    # handler is used is the caller's choice (Debian 12 needs network-legacy:
    # its default, systemd-networkd, needs dbus in the initramfs).
    echo nfs network
    return 0
}

# called by dracut
installkernel() {
    # Even in host-only mode: the build host need not have overlay loaded.
    hostonly='' instmods overlay
}

# called by dracut
install() {
    inst_multiple mount umount mkdir ip
    inst_simple "$moddir/dfleet-lib.sh" /lib/dfleet-lib.sh
    inst_script "$moddir/dfleetroot.sh" /sbin/dfleetroot
    # After the nfs module's parse-nfsroot.sh (90) and network's dhcp-root.sh (91).
    inst_hook cmdline 95 "$moddir/dfleet-cmdline.sh"
    # Early in pre-pivot, so later pre-pivot and cleanup hooks already see the
    # writable overlay on $NEWROOT.
    inst_hook pre-pivot 10 "$moddir/dfleet-pre-pivot.sh"
    dracut_need_initqueue
}
