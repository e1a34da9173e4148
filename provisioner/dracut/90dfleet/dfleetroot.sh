#!/bin/sh
# The netroot handler for netroot=dfleet:..., which dfleet's cmdline hook sets
# instead of netroot=nfs:... when dfleet.mount=self: the network module calls
# it once an interface is up, where it would have called the nfs module's
# nfsroot, and it deliberately mounts nothing. dfleet's initqueue job mounts
# the NFS root itself (see dfleet-lib.sh). It runs as its own process, so
# `exit` is right here.

command -v info > /dev/null || . /lib/dracut-lib.sh
info "dfleet: dfleet.mount=self: not mounting the NFS root from netroot on ${1:-?}; dfleet mounts it"
exit 0
