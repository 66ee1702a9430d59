//! Base Address Registers: the address windows a function decodes.
//!
//! A BAR holds an address whose low bits are hard-wired flags: bit 0 says I/O or
//! memory; for memory, bits 2:1 say 32- or 64-bit and bit 3 "prefetchable". Its
//! size is not stored anywhere: the address bits below the size are hard-wired to
//! zero, so writing all-ones and reading back reveals them (the lowest writable bit
//! *is* the size). A 64-bit BAR spans two slots, the second holding the upper half.
//!
//! While a BAR holds all-ones the function would decode that address range, so
//! memory and I/O decoding are switched off in the command register during sizing
//! and restored afterwards (firmware may already have enabled them; SeaBIOS does).

use alloc::vec::Vec;
use core::fmt;

use crate::config::{ALL_ONES, reg};
use crate::{ConfigDefect, ConfigSpace, PciAddress};

/// Which address space a BAR decodes, and how wide its address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// Port I/O space.
    Io,
    /// Memory below 4 GiB (including the legacy "below 1 MiB" type).
    Mem32,
    /// Memory anywhere in the 64-bit space; occupies two BAR slots.
    Mem64,
}

/// One implemented BAR, as the firmware left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bar {
    /// Slot number, 0..=5 (type 0 header) or 0..=1 (type 1 header). For a 64-bit
    /// BAR, the lower slot; slot `index + 1` is its upper half and is not listed.
    pub index: u8,
    /// Address space and width.
    pub kind: BarKind,
    /// Reads have no side effects (memory BARs only; always false for I/O).
    pub prefetchable: bool,
    /// Base address assigned by firmware (flag bits removed). May be 0 if
    /// firmware did not assign one.
    pub address: u64,
    /// Size in bytes, a power of two.
    pub size: u64,
}

impl fmt::Display for BarKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BarKind::Io => "io",
            BarKind::Mem32 => "mem32",
            BarKind::Mem64 => "mem64",
        })
    }
}

/// `BAR2 mem64 pref 0x0000000800000000 size 0x4000`.
impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefetchable = if self.prefetchable { "pref " } else { "" };
        write!(
            f,
            "BAR{} {} {}0x{:016x} size 0x{:x}",
            self.index, self.kind, prefetchable, self.address, self.size
        )
    }
}

/// BAR bit 0: this is an I/O BAR.
const BAR_IO: u32 = 1 << 0;
/// I/O BARs: bits above bit 1 are the address.
const BAR_IO_ADDRESS_MASK: u32 = !0x3;
/// Memory BARs: bits above bit 3 are the address.
const BAR_MEM_ADDRESS_MASK: u32 = !0xF;
/// Memory BARs: bit 3, prefetchable.
const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;

/// The lowest set bit of `mask`, i.e. the size of a BAR whose writable address
/// bits are `mask`; 0 if no bit is writable (BAR not implemented).
///
/// Taking the lowest set bit rather than `!mask + 1` is correct even for BARs
/// whose upper bits are hard-wired to zero, such as 16-bit I/O BARs.
fn size_from_mask(mask: u64) -> u64 {
    mask & mask.wrapping_neg()
}

/// Writes all-ones to the BAR dword at `offset`, reads back what stuck and
/// restores the original value. Returns the read-back value.
fn probe(cfg: &dyn ConfigSpace, addr: PciAddress, offset: u16, original: u32) -> u32 {
    cfg.write32(addr, offset, ALL_ONES);
    let readback = cfg.read32(addr, offset);
    cfg.write32(addr, offset, original);
    readback
}

/// Sizes and decodes the first `slots` BARs of `addr` (6 for a type 0 header, 2 for
/// type 1). Unimplemented BARs are left out; problems are appended to `defects`.
///
/// Decoding is disabled while probing and the command register restored after,
/// also when the function answers nonsense.
pub(crate) fn read_bars(
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    slots: u8,
    defects: &mut Vec<ConfigDefect>,
) -> Vec<Bar> {
    let decode_enables = reg::COMMAND_IO_SPACE | reg::COMMAND_MEMORY_SPACE;
    let command = cfg.read16(addr, reg::COMMAND);
    let decoding = command & decode_enables != 0;
    if decoding {
        cfg.write16(addr, reg::COMMAND, command & !decode_enables);
    }

    let mut bars = Vec::new();
    let mut index = 0u8;
    while index < slots {
        let offset = reg::BAR0 + 4 * u16::from(index);
        let original = cfg.read32(addr, offset);
        let readback = probe(cfg, addr, offset, original);
        // Hard-wired flag bits read the same before and after the probe; a
        // readback of all-ones is impossible for a real BAR (bit 1 of I/O BARs and
        // bit 0 of memory BARs are zero), so it means "nothing answers".
        let implemented = readback != ALL_ONES;

        if original & BAR_IO != 0 {
            let size = size_from_mask(u64::from(readback & BAR_IO_ADDRESS_MASK));
            if implemented && size != 0 {
                bars.push(Bar {
                    index,
                    kind: BarKind::Io,
                    prefetchable: false,
                    address: u64::from(original & BAR_IO_ADDRESS_MASK),
                    size,
                });
            }
            index += 1;
            continue;
        }

        let prefetchable = original & BAR_MEM_PREFETCHABLE != 0;
        match (original >> 1) & 0b11 {
            // 0b00: anywhere in 32 bits; 0b01: legacy "below 1 MiB", still 32-bit.
            0b00 | 0b01 => {
                let size = size_from_mask(u64::from(readback & BAR_MEM_ADDRESS_MASK));
                if implemented && size != 0 {
                    bars.push(Bar {
                        index,
                        kind: BarKind::Mem32,
                        prefetchable,
                        address: u64::from(original & BAR_MEM_ADDRESS_MASK),
                        size,
                    });
                }
                index += 1;
            }
            0b10 => {
                if index + 1 >= slots {
                    defects.push(ConfigDefect::Bar64InLastSlot { index });
                    index += 1;
                    continue;
                }
                let upper_offset = offset + 4;
                let upper_original = cfg.read32(addr, upper_offset);
                let upper_readback = probe(cfg, addr, upper_offset, upper_original);
                // All-ones is a legitimate upper readback (any BAR below 4 GiB).
                let mask =
                    (u64::from(upper_readback) << 32) | u64::from(readback & BAR_MEM_ADDRESS_MASK);
                let size = size_from_mask(mask);
                if implemented && size != 0 {
                    bars.push(Bar {
                        index,
                        kind: BarKind::Mem64,
                        prefetchable,
                        address: (u64::from(upper_original) << 32)
                            | u64::from(original & BAR_MEM_ADDRESS_MASK),
                        size,
                    });
                }
                index += 2;
            }
            _ => {
                defects.push(ConfigDefect::BarReservedType { index });
                index += 1;
            }
        }
    }

    if decoding {
        cfg.write16(addr, reg::COMMAND, command);
    }
    bars
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeConfigSpace, FakeFunction};
    use alloc::format;
    use alloc::vec;

    const DEV: PciAddress = PciAddress::new(0, 0, 4, 0);

    #[test]
    fn display_formats() {
        let bar = |index, kind, prefetchable, address, size| Bar {
            index,
            kind,
            prefetchable,
            address,
            size,
        };
        assert_eq!(
            format!("{}", bar(0, BarKind::Mem32, false, 0xfea0_0000, 0x10_0000)),
            "BAR0 mem32 0x00000000fea00000 size 0x100000"
        );
        assert_eq!(
            format!("{}", bar(2, BarKind::Mem64, true, 0x8_0000_0000, 0x4000)),
            "BAR2 mem64 pref 0x0000000800000000 size 0x4000"
        );
        assert_eq!(
            format!("{}", bar(4, BarKind::Io, false, 0xc000, 0x20)),
            "BAR4 io 0x000000000000c000 size 0x20"
        );
    }

    #[test]
    fn sizes_every_kind_with_decode_disabled_and_restores_everything() {
        let function = FakeFunction::conventional_endpoint(0x1234, 0x11e8)
            .with_mem32_bar(0, 0xfea0_0000, 0x10_0000, false)
            .with_mem64_bar(1, 0x8_0000_0000, 0x4000, true) // slots 1 and 2
            // slot 3: not implemented (reads 0 whatever is written)
            .with_io_bar(4, 0xc000, 0x20) // 16-bit decode: upper half reads 0
            // slot 5: legacy "below 1 MiB" memory type (0b01 in bits 2:1), 4 KiB
            .with_bar_register(5, 0x000d_0000 | 0b010, 0xFFFF_F000)
            .with_command(
                reg::COMMAND_IO_SPACE | reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER,
            );
        let cfg = FakeConfigSpace::new().with(DEV, function);
        let bar_dwords_before: Vec<u32> = (0..6).map(|i| cfg.read32(DEV, 0x10 + 4 * i)).collect();

        let mut defects = Vec::new();
        let bars = read_bars(&cfg, DEV, 6, &mut defects);

        assert_eq!(
            bars,
            vec![
                Bar {
                    index: 0,
                    kind: BarKind::Mem32,
                    prefetchable: false,
                    address: 0xfea0_0000,
                    size: 0x10_0000
                },
                Bar {
                    index: 1,
                    kind: BarKind::Mem64,
                    prefetchable: true,
                    address: 0x8_0000_0000,
                    size: 0x4000
                },
                Bar {
                    index: 4,
                    kind: BarKind::Io,
                    prefetchable: false,
                    address: 0xc000,
                    size: 0x20
                },
                Bar {
                    index: 5,
                    kind: BarKind::Mem32,
                    prefetchable: false,
                    address: 0x000d_0000,
                    size: 0x1000
                },
            ]
        );
        assert!(defects.is_empty(), "{defects:?}");
        assert!(
            cfg.bar_writes_while_decoding().is_empty(),
            "BAR written with decode on: {:?}",
            cfg.bar_writes_while_decoding()
        );
        assert!(cfg.bar_write_count() >= 10, "the BARs were really probed");
        assert_eq!(cfg.read16(DEV, reg::COMMAND), 0x0007, "command restored");
        let bar_dwords_after: Vec<u32> = (0..6).map(|i| cfg.read32(DEV, 0x10 + 4 * i)).collect();
        assert_eq!(bar_dwords_before, bar_dwords_after, "BARs restored");
    }

    #[test]
    fn decode_stays_off_if_it_was_off() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(1, 2)
                .with_mem32_bar(0, 0xfe00_0000, 0x1000, false)
                .with_command(reg::COMMAND_BUS_MASTER),
        );
        let bars = read_bars(&cfg, DEV, 6, &mut Vec::new());
        assert_eq!(bars.len(), 1);
        assert_eq!(cfg.read16(DEV, reg::COMMAND), reg::COMMAND_BUS_MASTER);
    }

    #[test]
    fn large_and_tiny_bars() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(1, 2)
                .with_mem64_bar(0, 0x40_0000_0000, 0x10_0000_0000, true) // 64 GiB
                .with_mem32_bar(2, 0x8000_0000, 0x8000_0000, false) // 2 GiB
                .with_mem32_bar(3, 0xfebf_f000, 0x10, false) // minimum memory size
                .with_io_bar(4, 0x0600, 0x4), // minimum I/O size
        );
        let bars = read_bars(&cfg, DEV, 6, &mut Vec::new());
        let sizes: Vec<(u8, BarKind, u64, u64)> = bars
            .iter()
            .map(|b| (b.index, b.kind, b.address, b.size))
            .collect();
        assert_eq!(
            sizes,
            vec![
                (0, BarKind::Mem64, 0x40_0000_0000, 0x10_0000_0000),
                (2, BarKind::Mem32, 0x8000_0000, 0x8000_0000),
                (3, BarKind::Mem32, 0xfebf_f000, 0x10),
                (4, BarKind::Io, 0x0600, 0x4),
            ]
        );
    }

    #[test]
    fn sixty_four_bit_bar_in_the_last_slot_is_skipped_not_a_panic() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::pci_bridge(0, 1, 1)
                .with_mem32_bar(0, 0xfe00_0000, 0x1000, false)
                // Bridge headers have two slots: a 64-bit BAR in slot 1 has no upper half.
                .with_bar_register(1, 0xfd00_0000 | 0b100, 0xFFFF_F000),
        );
        let mut defects = Vec::new();
        let bars = read_bars(&cfg, DEV, 2, &mut defects);
        assert_eq!(bars.len(), 1);
        assert_eq!(defects, vec![ConfigDefect::Bar64InLastSlot { index: 1 }]);
        assert_eq!(
            cfg.read32(DEV, 0x18),
            0x0001_0100,
            "slot 2 is bus numbers, untouched"
        );
    }

    #[test]
    fn reserved_memory_type_is_reported() {
        let cfg = FakeConfigSpace::new().with(
            DEV,
            FakeFunction::conventional_endpoint(1, 2).with_bar_register(
                0,
                0xfe00_0000 | 0b110,
                0xFFFF_F000,
            ),
        );
        let mut defects = Vec::new();
        assert!(read_bars(&cfg, DEV, 6, &mut defects).is_empty());
        assert_eq!(defects, vec![ConfigDefect::BarReservedType { index: 0 }]);
    }

    #[test]
    fn all_ones_function_yields_no_bars_and_no_panic() {
        // Absent from the fake: every read is all-ones, every write dropped.
        let cfg = FakeConfigSpace::new();
        let mut defects = Vec::new();
        assert!(read_bars(&cfg, DEV, 6, &mut defects).is_empty());
    }
}
