//! Broken tables: byte edits of the captured fixtures (checksum fixed unless the
//! checksum is the point) and hand-built ones. Each gives a known result or a named
//! error at the right offset.
//!
//! Offsets used below, in qemu72-default (104 bytes): IVHD 10h at 0x30 (length field
//! at 0x32), entries from 0x48: selects at 0x48, 0x4c, 0x50 (00:02.0), 0x54, 0x58,
//! 0x5c, the IOAPIC special entry at 0x60. In qemu72-bridges: range start 01:00.0 at
//! 0x54, its end at 0x58, the alias range start at 0x64.

mod common;

use common::*;
use sluice_amdvi::{
    DeviceEntryKind, IvhdType, Ivrs, IvrsError, IvrsErrorKind, IvrsTopology, SkippedBlock,
    TopologyError, TopologyWarning,
};
use sluice_iommu::{FirmwareBinding, IommuTopology, UnitId};

fn error(bytes: &[u8]) -> IvrsError {
    Ivrs::parse(bytes).expect_err("table must be refused")
}

fn err(offset: usize, kind: IvrsErrorKind) -> IvrsError {
    IvrsError { offset, kind }
}

/// The entry error of the only (or first) IVHD, which otherwise parses.
fn entry_error(bytes: &[u8]) -> (Ivrs, IvrsError) {
    let ivrs = Ivrs::parse(bytes).expect("blocks are intact");
    let error = ivrs.ivhds[0]
        .entry_error
        .clone()
        .expect("entry list is broken");
    (ivrs, error)
}

#[test]
fn truncated_tables() {
    // The slice is shorter than the header says.
    assert_eq!(
        error(&QEMU72_DEFAULT[..100]),
        err(
            4,
            IvrsErrorKind::LengthMismatch {
                declared: 104,
                actual: 100
            }
        )
    );
    // Shorter than the IVRS header itself.
    for length in [0, 4, 36, 47] {
        assert_eq!(
            error(&QEMU72_DEFAULT[..length]),
            err(
                0,
                IvrsErrorKind::TableTooShort {
                    length,
                    minimum: 48
                }
            )
        );
    }
    // Cut and made consistent (length field and checksum fixed): now the IVHD's
    // own length runs past the end.
    let mut cut = QEMU72_DEFAULT[..100].to_vec();
    fix_length_and_checksum(&mut cut);
    assert_eq!(
        error(&cut),
        err(
            0x30,
            IvrsErrorKind::BlockOverrun {
                block_type: 0x10,
                length: 56,
                remaining: 52
            }
        )
    );
    // Cut inside the last entry with the IVHD length cut too: the special entry
    // (8 bytes at 0x60) has 6 bytes left.
    let mut cut = QEMU72_DEFAULT[..102].to_vec();
    put_u16(&mut cut, 0x32, 54);
    fix_length_and_checksum(&mut cut);
    let (ivrs, entry) = entry_error(&cut);
    assert_eq!(
        entry,
        err(
            0x60,
            IvrsErrorKind::TruncatedEntry {
                entry_type: 0x48,
                needed: 8,
                remaining: 6
            }
        )
    );
    assert_eq!(
        ivrs.ivhds[0].entries.len(),
        6,
        "entries before the fault are kept"
    );
    // The only IVHD is unusable as a whole.
    let table = qemu_default_machine(AMD_IOMMU_72);
    assert_eq!(
        IvrsTopology::new(&ivrs, &table),
        Err(TopologyError::MalformedIvhd {
            offset: 0x30,
            error: entry
        })
    );
    // Two stray bytes after the last block.
    let mut tail = QEMU72_DEFAULT.to_vec();
    tail.extend_from_slice(&[0x10, 0xd1]);
    fix_length_and_checksum(&mut tail);
    assert_eq!(
        error(&tail),
        err(104, IvrsErrorKind::TruncatedBlockHeader { remaining: 2 })
    );
}

#[test]
fn zero_length_ivhd() {
    let bytes = edited(QEMU72_DEFAULT, |b| put_u16(b, 0x32, 0));
    assert_eq!(
        error(&bytes),
        err(0x30, IvrsErrorKind::ZeroBlockLength { block_type: 0x10 })
    );
    // Zero length on an unknown block type: still refused (it would never advance).
    let bytes = edited(QEMU72_DEFAULT, |b| {
        b[0x30] = 0x99;
        put_u16(b, 0x32, 0);
    });
    assert_eq!(
        error(&bytes),
        err(0x30, IvrsErrorKind::ZeroBlockLength { block_type: 0x99 })
    );
}

#[test]
fn short_blocks() {
    // An IVHD 10h shorter than its 24-byte header.
    let bytes = edited(QEMU72_DEFAULT, |b| put_u16(b, 0x32, 20));
    assert_eq!(
        error(&bytes),
        err(
            0x30,
            IvrsErrorKind::ShortBlock {
                block_type: 0x10,
                length: 20,
                minimum: 24
            }
        )
    );
    // The QEMU 10 IVHD 11h (at 0x68) with 24 bytes: enough for 10h, not for 11h.
    let bytes = edited(QEMU10_DEFAULT, |b| put_u16(b, 0x6a, 24));
    assert_eq!(
        error(&bytes),
        err(
            0x68,
            IvrsErrorKind::ShortBlock {
                block_type: 0x11,
                length: 24,
                minimum: 40
            }
        )
    );
    // An unknown block type with a length below its own 4-byte header.
    let bytes = IvrsBuilder::new(0).raw(&[0x77, 0, 2, 0]).build();
    assert_eq!(
        error(&bytes),
        err(
            48,
            IvrsErrorKind::ShortBlock {
                block_type: 0x77,
                length: 2,
                minimum: 4
            }
        )
    );
    // An IVMD must be 32 bytes.
    let bytes = IvrsBuilder::new(0)
        .raw(&[0x21, 0, 16, 0])
        .raw(&[0; 12])
        .build();
    assert_eq!(
        error(&bytes),
        err(
            48,
            IvrsErrorKind::ShortBlock {
                block_type: 0x21,
                length: 16,
                minimum: 32
            }
        )
    );
}

#[test]
fn overlong_ivhd() {
    let bytes = edited(QEMU72_DEFAULT, |b| put_u16(b, 0x32, 0x40));
    assert_eq!(
        error(&bytes),
        err(
            0x30,
            IvrsErrorKind::BlockOverrun {
                block_type: 0x10,
                length: 0x40,
                remaining: 56
            }
        )
    );
    let bytes = edited(QEMU72_DEFAULT, |b| put_u16(b, 0x32, 0xffff));
    assert_eq!(
        error(&bytes).kind,
        IvrsErrorKind::BlockOverrun {
            block_type: 0x10,
            length: 0xffff,
            remaining: 56
        }
    );
    // QEMU 10's second block (11h at 0x68) running 8 bytes past the end.
    let bytes = edited(QEMU10_DEFAULT, |b| put_u16(b, 0x6a, 80));
    assert_eq!(
        error(&bytes),
        err(
            0x68,
            IvrsErrorKind::BlockOverrun {
                block_type: 0x11,
                length: 80,
                remaining: 72
            }
        )
    );
}

#[test]
fn bad_checksum() {
    let mut bytes = QEMU72_DEFAULT.to_vec();
    bytes[9] = bytes[9].wrapping_sub(1);
    assert_eq!(
        error(&bytes),
        err(9, IvrsErrorKind::BadChecksum { sum: 0xff })
    );
    // A changed entry (select 00:02.0 -> 00:03.0) without fixing the checksum.
    let mut bytes = QEMU72_DEFAULT.to_vec();
    bytes[0x51] = 0x18;
    assert_eq!(
        error(&bytes),
        err(9, IvrsErrorKind::BadChecksum { sum: 0x08 })
    );
}

#[test]
fn wrong_length_field_and_signature() {
    // Both larger and smaller than the slice; fixed checksum, so only the length
    // check can fire.
    for declared in [0x69, 0x67, 0, u32::MAX] {
        let bytes = edited(QEMU72_DEFAULT, |b| {
            b[4..8].copy_from_slice(&declared.to_le_bytes())
        });
        assert_eq!(
            error(&bytes),
            err(
                4,
                IvrsErrorKind::LengthMismatch {
                    declared,
                    actual: 104
                }
            )
        );
    }
    let bytes = edited(QEMU72_DEFAULT, |b| b[..4].copy_from_slice(b"DMAR"));
    assert_eq!(
        error(&bytes),
        err(0, IvrsErrorKind::WrongSignature { found: *b"DMAR" })
    );
    assert_eq!(
        error(&bytes).to_string(),
        "IVRS offset 0x0: signature is \"DMAR\", not \"IVRS\""
    );
}

#[test]
fn unknown_ivhd_types_are_skipped() {
    // The only IVHD of 7.2 turned into type 12h: skipped, no units at all.
    let bytes = edited(QEMU72_DEFAULT, |b| b[0x30] = 0x12);
    let ivrs = Ivrs::parse(&bytes).unwrap();
    assert!(ivrs.ivhds.is_empty());
    assert_eq!(
        ivrs.skipped_blocks,
        [SkippedBlock {
            offset: 0x30,
            block_type: 0x12,
            length: 56
        }]
    );
    let table = qemu_default_machine(AMD_IOMMU_72);
    let topology = IvrsTopology::new(&ivrs, &table).unwrap();
    assert!(topology.units().is_empty());
    assert_eq!(topology.binding(&table, addr(0, 2, 0)), None);
    assert_eq!(topology.to_string(), "AMD-Vi: no IOMMU units");
    assert_eq!(
        topology.warnings()[..2],
        [
            TopologyWarning::SkippedBlock {
                offset: 0x30,
                block_type: 0x12
            },
            TopologyWarning::NoUnits
        ]
    );
    // QEMU 10's 11h block turned into an unknown 41h: the 10h block is used.
    let bytes = edited(QEMU10_DEFAULT, |b| b[0x68] = 0x41);
    let ivrs = Ivrs::parse(&bytes).unwrap();
    assert_eq!(ivrs.selected_ivhd_type(), Some(IvhdType::Type10));
    let table = qemu_default_machine(AMD_IOMMU_10);
    let topology = IvrsTopology::new(&ivrs, &table).unwrap();
    assert_eq!(topology.amd_units()[0].ivhd_offset, 0x30);
    assert_eq!(
        topology.binding(&table, addr(0, 2, 0)),
        Some(FirmwareBinding {
            unit: UnitId(0),
            firmware_aliases: vec![]
        })
    );
}

#[test]
fn unknown_fixed_size_entry_types_are_skipped() {
    // Select 00:02.0 (4-byte type 02h at 0x50) turned into the unknown 4-byte 05h.
    let bytes = edited(QEMU72_DEFAULT, |b| b[0x50] = 0x05);
    let ivrs = Ivrs::parse(&bytes).unwrap();
    let ivhd = &ivrs.ivhds[0];
    assert_eq!(ivhd.entry_error, None);
    assert_eq!(ivhd.entries.len(), 7);
    assert_eq!(ivhd.entries[2].kind, DeviceEntryKind::Reserved);
    assert_eq!(ivhd.entries[2].to_string(), "reserved type 0x05 00:02.0");
    let table = qemu_default_machine(AMD_IOMMU_72);
    let topology = IvrsTopology::new(&ivrs, &table).unwrap();
    assert_eq!(topology.binding(&table, addr(0, 2, 0)), None);
    assert_eq!(
        topology.warnings(),
        [TopologyWarning::UncoveredDevice {
            device: addr(0, 2, 0)
        }]
    );
    // The special entry (8-byte 48h at 0x60) turned into the unknown 8-byte 49h.
    let bytes = edited(QEMU72_DEFAULT, |b| b[0x60] = 0x49);
    let ivrs = Ivrs::parse(&bytes).unwrap();
    assert_eq!(ivrs.ivhds[0].entries[6].kind, DeviceEntryKind::Reserved);
    assert_eq!(ivrs.ivhds[0].entries[6].len(), 8);
    let topology = IvrsTopology::new(&ivrs, &table).unwrap();
    assert!(topology.special_devices().is_empty());
    assert_eq!(topology.warnings(), []);
}

#[test]
fn unknown_variable_entry_type_stops_its_ivhd() {
    let bytes = edited(QEMU72_DEFAULT, |b| b[0x60] = 0x88);
    let (ivrs, entry) = entry_error(&bytes);
    assert_eq!(
        entry,
        err(
            0x60,
            IvrsErrorKind::UnknownVariableEntry { entry_type: 0x88 }
        )
    );
    assert_eq!(ivrs.ivhds[0].entries.len(), 6);
    let table = qemu_default_machine(AMD_IOMMU_72);
    let refused = IvrsTopology::new(&ivrs, &table).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "IVHD at offset 0x30 is unusable: IVRS offset 0x60: unknown variable-length \
         device entry type 0x88: the rest of this IVHD cannot be read"
    );
    // In QEMU 10 the same fault in the ignored 10h block only warns: the 11h block
    // (which describes the same IOMMU) is intact and used.
    let bytes = edited(QEMU10_DEFAULT, |b| b[0x60] = 0x88);
    let ivrs = Ivrs::parse(&bytes).unwrap();
    assert_eq!(ivrs.ivhds[1].entry_error, None);
    let table = qemu_default_machine(AMD_IOMMU_10);
    let topology = IvrsTopology::new(&ivrs, &table).unwrap();
    assert_eq!(topology.special_devices().len(), 1);
    assert_eq!(
        topology.warnings(),
        [TopologyWarning::IgnoredIvhdMalformed {
            offset: 0x30,
            error: err(
                0x60,
                IvrsErrorKind::UnknownVariableEntry { entry_type: 0x88 }
            )
        }]
    );
}

#[test]
fn range_start_without_end() {
    // The end of range 01:00.0.. (0x58) turned into a select: the next range start
    // (the 43h at 0x64) finds the range at 0x54 still open.
    let bytes = edited(QEMU72_BRIDGES, |b| b[0x58] = 0x02);
    let (ivrs, entry) = entry_error(&bytes);
    assert_eq!(
        entry,
        err(
            0x54,
            IvrsErrorKind::RangeStartWithoutEnd { entry_type: 0x03 }
        )
    );
    assert_eq!(
        ivrs.ivhds[0].entries.len(),
        7,
        "walk stopped at the second start"
    );
    // A range start as the last entry of the IVHD: the special entry at the end of
    // qemu72-bridges (0x9c) turned into a 47h (extended range start, also 8 bytes).
    let bytes = edited(QEMU72_BRIDGES, |b| b[0x9c] = 0x47);
    let (_, entry) = entry_error(&bytes);
    assert_eq!(
        entry,
        err(
            0x9c,
            IvrsErrorKind::RangeStartWithoutEnd { entry_type: 0x47 }
        )
    );
}

#[test]
fn range_end_without_start_or_before_it() {
    let bytes = edited(QEMU72_BRIDGES, |b| b[0x54] = 0x02);
    let (_, entry) = entry_error(&bytes);
    assert_eq!(entry, err(0x58, IvrsErrorKind::RangeEndWithoutStart));
    // End 00:1f.7 for start 01:00.0.
    let bytes = edited(QEMU72_BRIDGES, |b| put_u16(b, 0x59, 0x00ff));
    let (_, entry) = entry_error(&bytes);
    assert_eq!(
        entry,
        err(
            0x58,
            IvrsErrorKind::RangeEndBeforeStart {
                start: 0x0100,
                end: 0x00ff
            }
        )
    );
}

#[test]
fn broken_ivmds() {
    let bytes = IvrsBuilder::new(0)
        .ivmd(0x22, 0x01, 0x0300, 0x02ff, 0, 0x1000, 0x1000)
        .build();
    assert_eq!(
        error(&bytes),
        err(
            48,
            IvrsErrorKind::IvmdRangeEndBeforeStart {
                start: 0x0300,
                end: 0x02ff
            }
        )
    );
    let bytes = IvrsBuilder::new(0)
        .ivhd10(0x0008, 0xfed8_0000, 0, &[select(0)])
        .ivmd(0x21, 0x01, 0x0010, 0, 0, u64::MAX - 0xfff, 0x1000)
        .build();
    assert_eq!(
        error(&bytes),
        err(
            48 + 28,
            IvrsErrorKind::IvmdAddressOverflow {
                start: u64::MAX - 0xfff,
                length: 0x1000
            }
        )
    );
}

#[test]
fn empty_and_header_only_tables() {
    // A table with no blocks at all parses; it describes no IOMMU.
    let bytes = IvrsBuilder::new(0x2800).build();
    let ivrs = Ivrs::parse(&bytes).unwrap();
    assert_eq!(ivrs.selected_ivhd_type(), None);
    let table = qemu_default_machine(AMD_IOMMU_72);
    let topology = IvrsTopology::new(&ivrs, &table).unwrap();
    assert!(topology.warnings().contains(&TopologyWarning::NoUnits));
}

#[test]
fn errors_print_offset_and_field() {
    let bytes = edited(QEMU72_DEFAULT, |b| put_u16(b, 0x32, 0));
    assert_eq!(
        error(&bytes).to_string(),
        "IVRS offset 0x30: block type 0x10: length field is 0"
    );
    let bytes = edited(QEMU72_BRIDGES, |b| b[0x54] = 0x02);
    let (_, entry) = entry_error(&bytes);
    assert_eq!(
        entry.to_string(),
        "IVRS offset 0x58: end-of-range entry without a start-of-range entry"
    );
}
