#!/bin/sh
# pre-pivot hook: when the nfs module mounted the NFS root on $NEWROOT, move it
# to /run/dfleet/lower and mount the overlay on $NEWROOT. Sourced by dracut's
# init: `return`, never `exit`.

command -v dfleet_pre_pivot > /dev/null || . /lib/dfleet-lib.sh
dfleet_pre_pivot
