//! Access to configuration space, and the header register offsets.
//!
//! Every PCI function has a configuration space: 256 bytes on conventional PCI,
//! 4096 bytes on PCI Express. The first 64 bytes are a standard header (type 0 for
//! endpoints, type 1 for bridges); the rest holds capability structures.
//!
//! [`ConfigSpace`] is deliberately tiny (one aligned 32-bit read and write) so that
//! the same enumeration code runs over real ECAM MMIO and over an in-memory fake.
//! Narrower accesses are provided on top. ECAM permits 8/16-bit MMIO accesses too,
//! but going through dwords keeps implementations trivial and is what legacy
//! port-I/O config access (0xCF8/0xCFC) would need anyway.

use crate::PciAddress;

/// Size of a PCI Express function's configuration space in bytes.
pub const CONFIG_SPACE_SIZE: u16 = 4096;

/// What a read returns when no function answers (a master abort on PCI, an
/// Unsupported Request on PCIe): every bit set.
pub const ALL_ONES: u32 = 0xFFFF_FFFF;

/// Offsets and bits of the standard configuration header (PCI Local Bus 3.0 §6.1,
/// PCI-to-PCI Bridge 1.2 §3.2).
pub mod reg {
    /// Vendor id (16 bits). 0xFFFF means "no function here".
    pub const VENDOR_ID: u16 = 0x00;
    /// Device id (16 bits).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (16 bits).
    pub const COMMAND: u16 = 0x04;
    /// Status register (16 bits; its error bits are write-1-to-clear).
    pub const STATUS: u16 = 0x06;
    /// Revision id (8 bits), followed by the 24-bit class code.
    pub const REVISION_ID: u16 = 0x08;
    /// Header type (8 bits): low 7 bits the layout, bit 7 "multifunction".
    pub const HEADER_TYPE: u16 = 0x0E;
    /// First Base Address Register. BAR n is at `BAR0 + 4 * n`.
    pub const BAR0: u16 = 0x10;
    /// Type 1: primary, secondary and subordinate bus numbers (bytes 0..3).
    pub const BRIDGE_BUS_NUMBERS: u16 = 0x18;
    /// Type 1: secondary status (16 bits, write-1-to-clear error bits).
    pub const BRIDGE_SECONDARY_STATUS: u16 = 0x1E;
    /// Type 0: subsystem vendor id (16 bits), followed by the subsystem id.
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2C;
    /// Type 0 and 1: offset of the first capability (8 bits).
    pub const CAPABILITY_POINTER: u16 = 0x34;
    /// Type 2 (CardBus): offset of the first capability (8 bits).
    pub const CARDBUS_CAPABILITY_POINTER: u16 = 0x14;
    /// Interrupt line (8 bits, firmware scratch), followed by the interrupt pin.
    pub const INTERRUPT_LINE: u16 = 0x3C;
    /// Interrupt pin (8 bits): 0 none, 1..=4 INTA#..INTD#.
    pub const INTERRUPT_PIN: u16 = 0x3D;

    /// Command bit 0: respond to I/O space accesses.
    pub const COMMAND_IO_SPACE: u16 = 1 << 0;
    /// Command bit 1: respond to memory space accesses.
    pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
    /// Command bit 2: may issue memory requests (DMA, MSI).
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// Command bit 10: INTx emulation disabled.
    pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
    /// Status bit 4: a capability list exists.
    pub const STATUS_CAPABILITY_LIST: u16 = 1 << 4;

    /// Header type bit 7: the device implements more than one function.
    pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;
    /// Header layout: general device.
    pub const HEADER_TYPE_ENDPOINT: u8 = 0;
    /// Header layout: PCI-to-PCI bridge.
    pub const HEADER_TYPE_BRIDGE: u8 = 1;
    /// Header layout: CardBus bridge.
    pub const HEADER_TYPE_CARDBUS: u8 = 2;

    /// The first byte after the standard header, where capabilities may start.
    pub const FIRST_CAPABILITY_OFFSET: u8 = 0x40;
    /// Where the PCI Express extended capability list starts.
    pub const EXTENDED_CAPABILITIES_OFFSET: u16 = 0x100;
}

/// Read and write access to the configuration space of any function.
///
/// Implementations must tolerate any address and offset: a read of an absent
/// function, of an address outside the mapped space, or with `offset >= 4096` or
/// unaligned returns [`ALL_ONES`]; such a write does nothing. They take `&self`
/// because config space is MMIO (or, in the fake, interior-mutable memory).
///
/// Config accesses are not atomic with respect to each other: BAR sizing writes and
/// restores registers, so callers must not enumerate concurrently with a driver
/// using the same function.
pub trait ConfigSpace {
    /// Reads the dword at `offset` (dword aligned, below 4096) of `addr`'s config
    /// space. Returns `0xFFFF_FFFF` for absent functions and unmapped space.
    fn read32(&self, addr: PciAddress, offset: u16) -> u32;

    /// Writes the dword at `offset` (dword aligned, below 4096) of `addr`'s config
    /// space. Ignored for absent functions and unmapped space.
    fn write32(&self, addr: PciAddress, offset: u16, value: u32);

    /// Reads the 16-bit register at `offset` (bit 0 of `offset` is ignored).
    fn read16(&self, addr: PciAddress, offset: u16) -> u16 {
        if offset >= CONFIG_SPACE_SIZE {
            return 0xFFFF;
        }
        let dword = self.read32(addr, offset & !3);
        (dword >> (u32::from(offset & 2) * 8)) as u16
    }

    /// Reads the byte at `offset`.
    fn read8(&self, addr: PciAddress, offset: u16) -> u8 {
        if offset >= CONFIG_SPACE_SIZE {
            return 0xFF;
        }
        let dword = self.read32(addr, offset & !3);
        (dword >> (u32::from(offset & 3) * 8)) as u8
    }

    /// Writes the 16-bit register at `offset` (bit 0 of `offset` is ignored) by a
    /// read-modify-write of the containing dword.
    ///
    /// Writing back the other half of the dword unchanged is harmless for plain
    /// read-write bits but *clears* write-1-to-clear bits that happen to be set.
    /// The one such pair every function has is command/status at 0x04: a write of
    /// the command register writes zeros to the status half (a no-op for its RW1C
    /// error bits; status has no plain read-write bits). Other registers that share
    /// a dword with RW1C bits, such as the bridge's I/O base/limit next to the
    /// secondary status (0x1C) or PCIe Device Control next to Device Status, must be
    /// written with [`ConfigSpace::write32`] and an explicit value for both halves.
    fn write16(&self, addr: PciAddress, offset: u16, value: u16) {
        if offset >= CONFIG_SPACE_SIZE {
            return;
        }
        let dword_offset = offset & !3;
        let shift = u32::from(offset & 2) * 8;
        let other_half = if dword_offset == reg::COMMAND && shift == 0 {
            0
        } else {
            self.read32(addr, dword_offset) & !(0xFFFF << shift)
        };
        self.write32(addr, dword_offset, other_half | (u32::from(value) << shift));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeConfigSpace, FakeFunction};

    const DEV: PciAddress = PciAddress::new(0, 0, 1, 0);

    fn fake_with_status_errors() -> FakeConfigSpace {
        // Status: capability list (RO) | received master abort (RW1C) | detected
        // parity error (RW1C).
        let status = reg::STATUS_CAPABILITY_LIST | (1 << 13) | (1 << 15);
        FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(0x1234, 0x5678)
                .with_command(0x0006)
                .with_u16(reg::STATUS, status),
        )
    }

    #[test]
    fn narrow_reads_pick_the_right_lanes() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(0x1234, 0x5678).with_u32(0x40, 0xAABB_CCDD),
        );
        assert_eq!(cfg.read16(DEV, reg::VENDOR_ID), 0x1234);
        assert_eq!(cfg.read16(DEV, reg::DEVICE_ID), 0x5678);
        assert_eq!(cfg.read8(DEV, 0x40), 0xDD);
        assert_eq!(cfg.read8(DEV, 0x41), 0xCC);
        assert_eq!(cfg.read8(DEV, 0x42), 0xBB);
        assert_eq!(cfg.read8(DEV, 0x43), 0xAA);
        assert_eq!(cfg.read16(DEV, 0x42), 0xAABB);
        assert_eq!(
            cfg.read16(DEV, 0x43),
            0xAABB,
            "bit 0 of a 16-bit offset is ignored"
        );
        assert_eq!(cfg.read16(DEV, 4096), 0xFFFF);
        assert_eq!(cfg.read8(DEV, 0xFFFF), 0xFF);
    }

    #[test]
    fn writing_command_does_not_clear_status_error_bits() {
        let cfg = fake_with_status_errors();
        let status_before = cfg.read16(DEV, reg::STATUS);
        cfg.write16(DEV, reg::COMMAND, 0x0000);
        assert_eq!(cfg.read16(DEV, reg::COMMAND), 0x0000);
        assert_eq!(cfg.read16(DEV, reg::STATUS), status_before);
    }

    #[test]
    fn writing_status_clears_only_the_given_bits_and_keeps_command() {
        let cfg = fake_with_status_errors();
        cfg.write16(DEV, reg::STATUS, 1 << 13);
        assert_eq!(
            cfg.read16(DEV, reg::STATUS),
            reg::STATUS_CAPABILITY_LIST | (1 << 15)
        );
        assert_eq!(cfg.read16(DEV, reg::COMMAND), 0x0006);
    }

    #[test]
    fn write16_of_an_ordinary_register_keeps_the_other_half() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(0x1234, 0x5678).with_u32(0x80, 0x1111_2222),
        );
        cfg.write16(DEV, 0x82, 0xBEEF);
        assert_eq!(cfg.read32(DEV, 0x80), 0xBEEF_2222);
        cfg.write16(DEV, 0x80, 0xCAFE);
        assert_eq!(cfg.read32(DEV, 0x80), 0xBEEF_CAFE);
        cfg.write16(DEV, 4096, 0); // ignored, no panic
    }
}
