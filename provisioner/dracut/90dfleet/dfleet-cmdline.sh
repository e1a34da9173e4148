#!/bin/sh
# cmdline hook: decide whether dfleet builds the root, and how the NFS root
# gets mounted. Sourced by dracut's init: `return`, never `exit`.

command -v dfleet_cmdline > /dev/null || . /lib/dfleet-lib.sh
dfleet_cmdline
