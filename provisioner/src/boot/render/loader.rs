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

/// The client architectures (DHCP option 93, RFC 4578) of UEFI x64
/// firmware: 7 (EFI BC) and 9 (EFI x86-64). Every other value, and no
/// option at all, is treated as BIOS.
pub const UEFI_X64_ARCHES: [u16; 2] = [7, 9];

/// What the DHCP server answers a node's firmware with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFile {
    /// Always this file.
    Fixed(&'static str),
    /// By the client architecture the request carries.
    ByArch {
        bios: &'static str,
        uefi: &'static str,
    },
    /// The first request gets `first`; the loader asks again (as iPXE) and
    /// gets `script`.
    Chained {
        first: &'static str,
        script: &'static str,
    },
}

/// The boot file rule of `loader`.
pub fn boot_file(loader: Loader) -> BootFile {
    match loader {
        Loader::Auto => BootFile::ByArch {
            bios: PXELINUX,
            uefi: GRUB_EFI,
        },
        Loader::Pxelinux => BootFile::Fixed(PXELINUX),
        Loader::GrubEfi => BootFile::Fixed(GRUB_EFI),
        Loader::Ipxe => BootFile::Chained {
            first: IPXE_FIRST_STAGE,
            script: IPXE_SCRIPT,
        },
    }
}

/// Whether a node with `loader` may boot through pxelinux (and so needs a
/// `pxelinux.cfg/01-<mac>` menu).
pub fn uses_pxelinux(loader: Loader) -> bool {
    matches!(loader, Loader::Auto | Loader::Pxelinux)
}

/// Whether a node with `loader` may boot through GRUB (and so needs a GRUB
/// menu).
pub fn uses_grub(loader: Loader) -> bool {
    matches!(loader, Loader::Auto | Loader::GrubEfi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_loaders_get_their_own_file() {
        assert_eq!(boot_file(Loader::Pxelinux), BootFile::Fixed("pxelinux.0"));
        assert_eq!(boot_file(Loader::GrubEfi), BootFile::Fixed("grubx64.efi"));
    }

    #[test]
    fn auto_chooses_by_architecture_and_ipxe_is_chained() {
        assert_eq!(
            boot_file(Loader::Auto),
            BootFile::ByArch {
                bios: "pxelinux.0",
                uefi: "grubx64.efi"
            }
        );
        assert_eq!(
            boot_file(Loader::Ipxe),
            BootFile::Chained {
                first: "undionly.kpxe",
                script: "dfleet.ipxe"
            }
        );
    }

    #[test]
    fn auto_nodes_get_both_menus() {
        assert!(uses_pxelinux(Loader::Auto) && uses_grub(Loader::Auto));
        assert!(uses_pxelinux(Loader::Pxelinux) && !uses_grub(Loader::Pxelinux));
        assert!(!uses_pxelinux(Loader::GrubEfi) && uses_grub(Loader::GrubEfi));
        assert!(!uses_pxelinux(Loader::Ipxe) && !uses_grub(Loader::Ipxe));
    }
}
