//! Which file each loader's firmware is told to fetch: the one mapping the
//! three DHCP flavours share, so they cannot disagree.

use crate::boot::Loader;

/// BIOS PXE loader (syslinux).
pub const PXELINUX: &str = "pxelinux.0";
/// UEFI x64 GRUB, built or signed for network boot.
pub const GRUB_EFI: &str = "grubx64.efi";
/// iPXE for a BIOS PXE ROM; it asks the DHCP server again, as iPXE.
pub const IPXE_FIRST_STAGE: &str = "undionly.kpxe";
/// The script iPXE runs once it asks as iPXE (user class `iPXE`).
pub const IPXE_SCRIPT: &str = "dfleet.ipxe";

/// The file the DHCP server names when the node's firmware asks.
pub fn first_stage_file(loader: Loader) -> &'static str {
    match loader {
        Loader::Pxelinux => PXELINUX,
        Loader::GrubEfi => GRUB_EFI,
        Loader::Ipxe => IPXE_FIRST_STAGE,
    }
}

/// The file the DHCP server names when the loader itself asks again (only
/// iPXE does); `None` when the loader never asks twice.
pub fn chained_file(loader: Loader) -> Option<&'static str> {
    match loader {
        Loader::Pxelinux | Loader::GrubEfi => None,
        Loader::Ipxe => Some(IPXE_SCRIPT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_loader_gets_its_own_file() {
        assert_eq!(first_stage_file(Loader::Pxelinux), "pxelinux.0");
        assert_eq!(first_stage_file(Loader::GrubEfi), "grubx64.efi");
        assert_eq!(first_stage_file(Loader::Ipxe), "undionly.kpxe");
    }

    #[test]
    fn only_ipxe_is_chained_to_a_script() {
        assert_eq!(chained_file(Loader::Pxelinux), None);
        assert_eq!(chained_file(Loader::GrubEfi), None);
        assert_eq!(chained_file(Loader::Ipxe), Some("dfleet.ipxe"));
    }
}
