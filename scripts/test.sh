#!/usr/bin/env bash
# Every check dfleet has, from a fresh Debian 12 machine (run as root):
# installs what the tests need, then formatting, lints, the build and every
# test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

start_all=$(date +%s)
phase_start=$start_all
phase() {
  local now; now=$(date +%s)
  if [ -n "${phase_name:-}" ]; then
    printf '== %-40s %4ss\n' "$phase_name done" "$((now - phase_start))"
  fi
  phase_name=$1; phase_start=$now
  printf '== %s\n' "$phase_name"
}

phase "system packages"
# Debian packages the tests use: ssh-keygen makes and checks real host keys;
# the DHCP servers check the configurations dfleet renders.
missing=()
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
[ -x /usr/sbin/dhcpd ] || missing+=(isc-dhcp-server)
[ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq)
[ -x /usr/sbin/kea-dhcp4 ] || missing+=(kea-dhcp4-server)
# A real DHCP/TFTP exchange: udhcpc from busybox, TFTP with curl, namespaces with iproute2.
[ -x /usr/bin/busybox ] || missing+=(busybox)
command -v curl >/dev/null || missing+=(curl)
command -v ip >/dev/null || missing+=(iproute2)
# Image trees: file capabilities set and read back with the real tools.
command -v setcap >/dev/null || missing+=(libcap2-bin)
# A real Debian 12 image (cached outside the clone, see tests/tests/image_debian.rs).
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v chattr >/dev/null || missing+=(e2fsprogs)
# Boot loaders dfleet copies into the TFTP root.
[ -f /usr/lib/PXELINUX/pxelinux.0 ] || missing+=(pxelinux)
[ -f /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || missing+=(syslinux-common)
[ -f /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed ] || missing+=(grub-efi-amd64-signed)
# The end-to-end boot (tests/tests/lab.rs): QEMU with its NIC boot ROMs, a
# userspace NFSv3 server with its VFS backend and rpcbind.
[ -x /usr/bin/qemu-system-x86_64 ] || missing+=(qemu-system-x86)
[ -f /usr/lib/ipxe/qemu/efi-virtio.rom ] || missing+=(ipxe-qemu)
[ -x /usr/bin/ganesha.nfsd ] || missing+=(nfs-ganesha)
[ -f /usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so ] || missing+=(nfs-ganesha-vfs)
[ -x /usr/sbin/rpcbind ] || missing+=(rpcbind)
command -v nsenter >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages ${missing[*]}: run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "the tests bind privileged source ports and make device nodes as a real node's agent does: run them as root" >&2
  exit 1
fi

phase "cargo fmt --check"
cargo fmt --all -- --check

phase "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

phase "cargo build (binaries for the cross-process tests)"
cargo build --workspace --bins --locked

# The end-to-end boot runs last and alone, in a phase of its own.
phase "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci -E 'not binary(lab)'
  phase "end-to-end boot (dfleet lab, QEMU)"
  cargo nextest run --workspace --locked --profile ci -E 'binary(lab)'
else
  cargo test --workspace --locked -- --skip two_nodes_boot
  phase "end-to-end boot (dfleet lab, QEMU)"
  cargo test --locked -p dfleet-tests --test lab
fi

phase "end"
printf '== all checks passed in %ss\n' "$(( $(date +%s) - start_all ))"
