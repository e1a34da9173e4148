#!/usr/bin/env bash
# Builds dfleet and runs the local demo fleet (run as root: the agents enroll
# from privileged ports, as on a real node). Extra arguments go to `dfleet demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
# ssh-keygen makes the nodes' real host keys; the demo's boot files name
# pxelinux, whose loader files the coordinator copies into its TFTP root.
missing=()
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
[ -f /usr/lib/PXELINUX/pxelinux.0 ] || missing+=(pxelinux)
[ -f /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || missing+=(syslinux-common)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
cargo build --release --locked --bins
exec target/release/dfleet demo "$@"
