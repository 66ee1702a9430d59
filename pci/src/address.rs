//! The address of one PCI function.
//!
//! PCI names a function by bus (0..=255), device (0..=31) and function (0..=7);
//! PCI Express adds a segment (a separate config-space domain, one per ECAM window
//! group in ACPI's MCFG). The IOMMU sees DMA tagged with the 16-bit "requester id"
//! `bus:device.function` of its source, which [`PciAddress::bdf`] computes.

use core::fmt;

/// Segment, bus, device and function of one PCI function.
///
/// The derived ordering sorts by segment, then bus, device and function, which is
/// the order `lspci` prints and the order of [`crate::DeviceTable`].
///
/// The fields are plain numbers: nothing stops a caller building an address with
/// `device >= 32` or `function >= 8`. Such an address names no function; config
/// accesses to it read all-ones (see [`PciAddress::is_valid`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI segment (also called domain).
    pub segment: u16,
    /// Bus number within the segment.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl PciAddress {
    /// Builds an address from its four parts.
    pub const fn new(segment: u16, bus: u8, device: u8, function: u8) -> Self {
        Self {
            segment,
            bus,
            device,
            function,
        }
    }

    /// Whether device and function are within their 5-bit and 3-bit ranges.
    pub const fn is_valid(self) -> bool {
        self.device < 32 && self.function < 8
    }

    /// The 16-bit requester id, `(bus << 8) | (device << 3) | function`, that tags
    /// this function's DMA and interrupt messages (and indexes IOMMU tables).
    ///
    /// Out-of-range device or function numbers are truncated to their field widths.
    pub const fn bdf(self) -> u16 {
        ((self.bus as u16) << 8)
            | (((self.device & 0x1f) as u16) << 3)
            | (self.function & 0x7) as u16
    }

    /// The inverse of [`PciAddress::bdf`] for a given segment.
    pub const fn from_bdf(segment: u16, bdf: u16) -> Self {
        Self {
            segment,
            bus: (bdf >> 8) as u8,
            device: ((bdf >> 3) & 0x1f) as u8,
            function: (bdf & 0x7) as u8,
        }
    }

    /// The same device's function `function` (used to scan multifunction devices).
    pub const fn with_function(self, function: u8) -> Self {
        Self { function, ..self }
    }
}

/// `ssss:bb:dd.f` in lowercase hex, as `lspci -D` prints it.
impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn display_is_lspci_style_lowercase_hex() {
        assert_eq!(format!("{}", PciAddress::new(0, 0, 3, 0)), "0000:00:03.0");
        assert_eq!(
            format!("{}", PciAddress::new(0xabcd, 0xfe, 0x1f, 7)),
            "abcd:fe:1f.7"
        );
    }

    #[test]
    fn bdf_packs_bus_device_function() {
        assert_eq!(PciAddress::new(0, 0, 3, 0).bdf(), 0x0018);
        assert_eq!(PciAddress::new(0, 0x12, 0x1f, 7).bdf(), 0x12ff);
        assert_eq!(PciAddress::new(0, 1, 0, 1).bdf(), 0x0101);
        for bdf in [0u16, 0x0018, 0x12ff, 0xffff, 0x0101] {
            assert_eq!(PciAddress::from_bdf(3, bdf).bdf(), bdf);
        }
    }

    #[test]
    fn ordering_is_segment_bus_device_function() {
        let a = PciAddress::new(0, 1, 0, 0);
        let b = PciAddress::new(0, 0, 31, 7);
        let c = PciAddress::new(1, 0, 0, 0);
        assert!(b < a && a < c);
        assert!(PciAddress::new(0, 0, 2, 0) < PciAddress::new(0, 0, 2, 1));
    }

    #[test]
    fn validity_checks_field_ranges() {
        assert!(PciAddress::new(0, 255, 31, 7).is_valid());
        assert!(!PciAddress::new(0, 0, 32, 0).is_valid());
        assert!(!PciAddress::new(0, 0, 0, 8).is_valid());
    }
}
