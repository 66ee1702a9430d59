//! Malformed tables made by editing the captured ones: each gives a known result or a
//! named error at the right offset.
//!
//! Offsets in `qemu72-default` (112 bytes): DRHD at 0x30 (length field at 0x32, 0x40
//! long), scopes at 0x40 (IOAPIC), 0x48 (00:00.0), 0x50 (00:01.0), 0x58 (00:1f.0),
//! 0x60 (00:1f.2), 0x68 (00:1f.3); each scope's length byte is at +1.

use sluice_pci::fake::FakeFunction;
use sluice_pci::{PciAddress, enumerate};
use sluice_vtd::dmar::{Dmar, Entry, EntryKind, HEADER_LEN, parse};
use sluice_vtd::{
    DmarError, DmarErrorKind, DmarTopology, HopProblem, PathError, ResolvedScope, ScopeType,
    StructureType, WarningKind,
};

use crate::common::*;

fn error(bytes: &[u8]) -> DmarError {
    parse(bytes).expect_err("table should be rejected")
}

const DRHD: Entry = Entry::Structure(StructureType::Drhd);

#[test]
fn truncated_tables() {
    // Cut, length field left alone: the table lies about its size.
    let error = self::error(&QEMU72_DEFAULT[..100]);
    assert_eq!(error.offset, 4);
    assert_eq!(
        error.kind,
        DmarErrorKind::LengthMismatch {
            declared: 112,
            actual: 100
        }
    );
    // Cut, length and checksum fixed: the DRHD now runs past the end.
    let cut = edited(QEMU72_DEFAULT, |t| t.truncate(100));
    let error = self::error(&cut);
    assert_eq!(error.offset, DRHD_AT + 2);
    assert_eq!(
        error.kind,
        DmarErrorKind::Overrun {
            entry: DRHD,
            length: 64,
            available: 52
        }
    );
    // Cut inside a structure header.
    let cut = edited(QEMU72_DEFAULT, |t| t.truncate(DRHD_AT + 3));
    let error = self::error(&cut);
    assert_eq!(error.offset, DRHD_AT);
    assert_eq!(
        error.kind,
        DmarErrorKind::TruncatedEntryHeader {
            entry: EntryKind::Structure,
            remaining: 3
        }
    );
    // Cut inside the header.
    for length in [0, 3, 4, 36, 47] {
        let error = self::error(&QEMU72_DEFAULT[..length]);
        assert_eq!(error.offset, 0);
        assert_eq!(error.kind, DmarErrorKind::TruncatedHeader { length });
    }
    // Just the header: valid, and empty.
    let header = edited(QEMU72_DEFAULT, |t| t.truncate(HEADER_LEN));
    assert!(Dmar::parse(&header).unwrap().units.is_empty());
}

#[test]
fn zero_length_structure_and_scope() {
    let bytes = edited(QEMU72_DEFAULT, |t| t[0x32..0x34].fill(0));
    let error = error(&bytes);
    assert_eq!(error.offset, 0x32);
    assert_eq!(error.kind, DmarErrorKind::ZeroLength { entry: DRHD });
    assert_eq!(error.to_string(), "DMAR offset 0x32: DRHD length is 0");

    let bytes = edited(QEMU72_DEFAULT, |t| t[0x49] = 0);
    let error = self::error(&bytes);
    assert_eq!(error.offset, 0x49);
    assert_eq!(
        error.kind,
        DmarErrorKind::ZeroLength {
            entry: Entry::DeviceScope(ScopeType::Endpoint)
        }
    );
}

#[test]
fn structures_shorter_than_their_fixed_part() {
    // DRHD of length 12 < 16.
    let bytes = edited(QEMU72_DEFAULT, |t| t[0x32] = 12);
    let error = error(&bytes);
    assert_eq!(error.offset, 0x32);
    assert_eq!(
        error.kind,
        DmarErrorKind::TooShort {
            entry: DRHD,
            length: 12,
            minimum: 16
        }
    );
    // Unknown type of length 2 < 4 (a structure header).
    let bytes = edited(QEMU72_DEFAULT, |t| t.extend_from_slice(&[0x99, 0, 2, 0]));
    let error = self::error(&bytes);
    assert_eq!(error.offset, 0x72);
    assert_eq!(
        error.kind,
        DmarErrorKind::TooShort {
            entry: Entry::Structure(StructureType::Unknown(0x99)),
            length: 2,
            minimum: 4
        }
    );
    // RMRR of length 16 < 24.
    let bytes = with_structures(QEMU72_DEFAULT, &[raw_structure(1, &[0; 12])]);
    assert_eq!(
        self::error(&bytes).kind,
        DmarErrorKind::TooShort {
            entry: Entry::Structure(StructureType::Rmrr),
            length: 16,
            minimum: 24
        }
    );
}

#[test]
fn overlong_structure_and_scope() {
    let bytes = edited(QEMU72_DEFAULT, |t| t[0x32] = 0x48);
    let error = error(&bytes);
    assert_eq!(error.offset, 0x32);
    assert_eq!(
        error.kind,
        DmarErrorKind::Overrun {
            entry: DRHD,
            length: 72,
            available: 64
        }
    );
    assert_eq!(
        error.to_string(),
        "DMAR offset 0x32: DRHD length 72 runs past the end (64 bytes left)"
    );
    // The last scope claims 10 bytes; its DRHD has 8 left.
    let bytes = edited(QEMU72_DEFAULT, |t| t[0x69] = 10);
    let error = self::error(&bytes);
    assert_eq!(error.offset, 0x69);
    assert_eq!(
        error.kind,
        DmarErrorKind::Overrun {
            entry: Entry::DeviceScope(ScopeType::Endpoint),
            length: 10,
            available: 8
        }
    );
    // A DRHD one byte shorter: its last scope has 7 bytes left.
    let bytes = edited(QEMU72_DEFAULT, |t| {
        t[0x32] = 0x3f;
        t.truncate(0x6f);
    });
    assert_eq!(
        self::error(&bytes).kind,
        DmarErrorKind::Overrun {
            entry: Entry::DeviceScope(ScopeType::Endpoint),
            length: 8,
            available: 7
        }
    );
    // A DRHD with one spare byte after its scopes.
    let bytes = edited(QEMU72_DEFAULT, |t| {
        t[0x32] = 0x41;
        t.push(0);
    });
    let error = self::error(&bytes);
    assert_eq!(error.offset, 0x70);
    assert_eq!(
        error.kind,
        DmarErrorKind::TruncatedEntryHeader {
            entry: EntryKind::DeviceScope,
            remaining: 1
        }
    );
}

#[test]
fn odd_path_length() {
    // The 00:1f.3 scope grows to 9 bytes (the DRHD and table with it).
    let bytes = edited(QEMU72_DEFAULT, |t| {
        t[0x32] = 0x41;
        t[0x69] = 9;
        t.push(0);
    });
    let error = error(&bytes);
    assert_eq!(error.offset, 0x69);
    assert_eq!(
        error.kind,
        DmarErrorKind::OddPathLength {
            scope_type: ScopeType::Endpoint,
            length: 9
        }
    );
}

#[test]
fn bad_checksum() {
    let mut bytes = QEMU72_DEFAULT.to_vec();
    bytes[9] ^= 1;
    let error = error(&bytes);
    assert_eq!(error.offset, 9);
    assert_eq!(error.kind, DmarErrorKind::BadChecksum { sum: 1 });
    // Any other byte changed without fixing the checksum.
    let mut bytes = QEMU72_DEFAULT.to_vec();
    bytes[36] = 0x2f;
    assert_eq!(
        self::error(&bytes).kind,
        DmarErrorKind::BadChecksum { sum: 0x2f - 0x26 }
    );
}

#[test]
fn wrong_table_length_field_and_signature() {
    for declared in [0u32, 48, 111, 113, 120, u32::MAX] {
        let mut bytes = QEMU72_DEFAULT.to_vec();
        bytes[4..8].copy_from_slice(&declared.to_le_bytes());
        fix_checksum(&mut bytes);
        let error = error(&bytes);
        assert_eq!(error.offset, 4);
        assert_eq!(
            error.kind,
            DmarErrorKind::LengthMismatch {
                declared,
                actual: 112
            }
        );
    }
    let mut bytes = QEMU72_DEFAULT.to_vec();
    bytes[..4].copy_from_slice(b"IVRS");
    fix_checksum(&mut bytes);
    let error = self::error(&bytes);
    assert_eq!(error.offset, 0);
    assert_eq!(
        error.kind,
        DmarErrorKind::WrongSignature { found: *b"IVRS" }
    );
}

#[test]
fn unknown_structure_types_are_skipped_and_counted() {
    let bytes = edited(QEMU72_DEVICE_IOTLB, |t| {
        // Type 6 (SIDP in newer specs) and a made-up type, each with a body.
        t.extend_from_slice(&[6, 0, 12, 0, 0, 0, 0, 0, 1, 8, 0, 0]);
        t.extend_from_slice(&[0x34, 0x12, 5, 0, 0xff]);
    });
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.unknown_structures, 2);
    assert_eq!(dmar.units.len(), 1);
    assert_eq!(dmar.atsrs.len(), 1);
    let topology = DmarTopology::new(dmar, &flat_machine());
    assert_eq!(topology.unknown_structures(), 2);
    assert!(
        topology
            .to_string()
            .ends_with("\n2 structures of unknown type skipped")
    );
}

#[test]
fn unknown_scope_type_is_kept_and_ignored() {
    let table = flat_machine();
    let bytes = edited(QEMU72_DEFAULT, |t| t[0x58] = 0x42);
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.units[0].scopes[3].scope_type, ScopeType::Unknown(0x42));
    let topology = DmarTopology::new(dmar, &table);
    assert_eq!(
        topology.vtd_units()[0].scopes[3],
        ResolvedScope::Unknown { scope_type: 0x42 }
    );
    assert_eq!(topology.warnings().len(), 1);
    assert_eq!(topology.warnings()[0].offset, 0x58);
    assert!(matches!(
        topology.warnings()[0].kind,
        WarningKind::UnknownScopeType { .. }
    ));
    // 00:1f.0 is named by nothing else, and there is no include-all unit.
    assert_eq!(topology.uncovered(&table), [at(0, 0x1f, 0)]);
}

#[test]
fn path_to_an_absent_device_is_a_warning() {
    let table = flat_machine();
    // The edu scope (0x50) now names 00:05.0.
    let bytes = edited(QEMU72_DEFAULT, |t| t[0x56] = 5);
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    let error = PathError {
        hop: 0,
        at: at(0, 5, 0),
        problem: HopProblem::Absent,
    };
    assert_eq!(
        topology.vtd_units()[0].scopes[2],
        ResolvedScope::Unresolved(error)
    );
    assert_eq!(topology.warnings().len(), 1);
    let warning = &topology.warnings()[0];
    assert_eq!(warning.offset, 0x50);
    assert!(matches!(
        warning.kind,
        WarningKind::UnresolvedScope { error: e, structure: StructureType::Drhd, .. } if e == error
    ));
    assert_eq!(
        warning.to_string(),
        "DMAR offset 0x50: DRHD scope endpoint 00:[05.0] unresolved: hop 0 at 0000:00:05.0: no function there"
    );
    // The rest of the table is used; edu itself is now uncovered.
    assert_eq!(topology.uncovered(&table), [at(0, 1, 0)]);
    assert_eq!(
        topology.unit_for(&table, at(0, 0x1f, 2)).map(|u| u.0),
        Some(0)
    );
}

#[test]
fn path_through_a_non_bridge_is_a_warning() {
    let table = flat_machine();
    let bytes = with_structures(
        QEMU72_DEFAULT,
        &[drhd(
            false,
            0,
            0xfed9_0000,
            &[
                endpoint(0, &[(1, 0), (0, 0)]),
                endpoint(0, &[(0x1f, 2)]),
                scope(3, 1, 0, &[(0x1f, 2), (0, 0)]),
            ],
        )],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    let scopes = &topology.vtd_units()[0].scopes;
    assert_eq!(
        scopes[0],
        ResolvedScope::Unresolved(PathError {
            hop: 0,
            at: at(0, 1, 0),
            problem: HopProblem::NotABridge
        })
    );
    assert_eq!(scopes[1], ResolvedScope::Device(at(0, 0x1f, 2)));
    assert_eq!(
        scopes[2],
        ResolvedScope::Unresolved(PathError {
            hop: 0,
            at: at(0, 0x1f, 2),
            problem: HopProblem::NotABridge
        })
    );
    assert_eq!(topology.warnings().len(), 2);
    assert_eq!(topology.interrupt_sources().count(), 0);
}

#[test]
fn path_beyond_the_end_of_a_bridge_chain() {
    let table = bridges_machine();
    let bytes = with_structures(
        QEMU72_BRIDGES,
        &[drhd(
            false,
            0,
            0xfed9_0000,
            &[
                // 00:03.0 -> bus 4: 04:00.0 -> bus 5: 05:05.0 is not there.
                endpoint(0, &[(3, 0), (0, 0), (5, 0)]),
                // A device number out of range.
                endpoint(0, &[(0x20, 0)]),
                // A hop through a missing bridge.
                bridge(0, &[(9, 0), (0, 0)]),
            ],
        )],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    let scopes = &topology.vtd_units()[0].scopes;
    assert_eq!(
        scopes[0],
        ResolvedScope::Unresolved(PathError {
            hop: 2,
            at: at(5, 5, 0),
            problem: HopProblem::Absent
        })
    );
    assert_eq!(
        scopes[1],
        ResolvedScope::Unresolved(PathError {
            hop: 0,
            at: at(0, 0x20, 0),
            problem: HopProblem::InvalidDeviceFunction
        })
    );
    assert_eq!(
        scopes[2],
        ResolvedScope::Unresolved(PathError {
            hop: 0,
            at: at(0, 9, 0),
            problem: HopProblem::Absent
        })
    );
    assert_eq!(topology.warnings().len(), 3);
}

#[test]
fn a_bridge_with_impossible_bus_numbers_is_not_followed() {
    // A root port whose secondary bus is its own bus (firmware left it unconfigured).
    let cfg = flat_config().with(at(0, 2, 0), FakeFunction::root_port(0, 0, 0));
    let table = enumerate(&cfg, &[Q35_WINDOW]);
    let bytes = with_structures(
        QEMU72_DEFAULT,
        &[drhd(
            false,
            0,
            0xfed9_0000,
            &[bridge(0, &[(2, 0)]), endpoint(0, &[(2, 0), (0, 0)])],
        )],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    let bad = HopProblem::BadBridgeBuses {
        secondary: 0,
        subordinate: 0,
    };
    assert_eq!(
        topology.vtd_units()[0].scopes,
        [
            ResolvedScope::Unresolved(PathError {
                hop: 0,
                at: at(0, 2, 0),
                problem: bad
            }),
            ResolvedScope::Unresolved(PathError {
                hop: 0,
                at: at(0, 2, 0),
                problem: bad
            }),
        ]
    );
    // Not bound through its bogus range: the root bus is not "below" it.
    assert_eq!(topology.unit_for(&table, at(0, 1, 0)), None);
}

#[test]
fn scope_paths_cannot_reach_other_segments() {
    // A bridge scope in segment 0 never covers a segment-1 function with the same bus.
    let table = bridges_machine();
    let topology = DmarTopology::parse(QEMU72_BRIDGES, &table).unwrap();
    assert_eq!(topology.unit_for(&table, PciAddress::new(1, 1, 0, 0)), None);
}
