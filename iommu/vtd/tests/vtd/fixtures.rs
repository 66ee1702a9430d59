//! The captured QEMU tables, decoded by hand first and asserted field by field.
//!
//! Every fixture (hexdump by hand):
//!
//! ```text
//! 0x00 "DMAR", length 112 (120 device-iotlb, 128 bridges), revision 1, checksum,
//!      OEM "BOCHS ", table "BXPC    ", OEM revision 1, creator "BXPC" rev 1
//! 0x24 HAW 0x26 (39 bits) or 0x2f (48 bits); flags 0x01 INTR_REMAP (0x00 intremap-off);
//!      10 reserved bytes
//! 0x30 DRHD, length 0x40 (0x50 bridges), flags 0 (not include-all), size 0 (4 KiB),
//!      segment 0, register base 0xfed90000, then 8-byte scopes:
//! 0x40   03 08 00 00 00 ff 00 00   IOAPIC, id 0, bus ff, path 00.0 (source id ff00)
//! 0x48   01 08 00 00 00 00 00 00   endpoint 00:00.0 (MCH)
//!        flat:    01 .. 00 01.0 endpoint edu; 01 .. 00 1f.0, 1f.2, 1f.3 endpoints
//!        bridges: 02 .. 00 01.0, 02.0, 03.0 bridges (root ports); then 1f.0, 1f.2, 1f.3
//! 0x70 device-iotlb only: 02 00 08 00 01 00 00 00: ATSR, length 8, flags ALL_PORTS,
//!      segment 0, no scopes
//! ```
//!
//! QEMU 7.2 and 10.0 produce the same bytes except HAW (7.2 defaults to aw-bits 39,
//! 10.0 to 48) and the checksum: `aw39` and `aw48` are identical across versions.

use sluice_iommu::{IommuTopology, UnitId, Vendor};
use sluice_pci::PciAddress;
use sluice_vtd::{
    AtsrFlags, DmarFlags, DmarTopology, DrhdFlags, InterruptSource, InterruptSourceKind, PathEntry,
    ResolvedScope, ScopeType, dmar::Dmar,
};

use crate::common::*;

/// (scope type, start bus, device, function) as QEMU lists them.
type Expected = (ScopeType, u8, u8, u8);

const FLAT_SCOPES: [Expected; 6] = [
    (ScopeType::IoApic, 0xff, 0x00, 0),
    (ScopeType::Endpoint, 0, 0x00, 0),
    (ScopeType::Endpoint, 0, 0x01, 0),
    (ScopeType::Endpoint, 0, 0x1f, 0),
    (ScopeType::Endpoint, 0, 0x1f, 2),
    (ScopeType::Endpoint, 0, 0x1f, 3),
];

const BRIDGES_SCOPES: [Expected; 8] = [
    (ScopeType::IoApic, 0xff, 0x00, 0),
    (ScopeType::Endpoint, 0, 0x00, 0),
    (ScopeType::Bridge, 0, 0x01, 0),
    (ScopeType::Bridge, 0, 0x02, 0),
    (ScopeType::Bridge, 0, 0x03, 0),
    (ScopeType::Endpoint, 0, 0x1f, 0),
    (ScopeType::Endpoint, 0, 0x1f, 2),
    (ScopeType::Endpoint, 0, 0x1f, 3),
];

/// (name, HAW bits, INTR_REMAP, bridges machine, ATSR)
const EXPECTED: [(&str, u8, bool, bool, bool); 14] = [
    ("qemu72-default", 39, true, false, false),
    ("qemu72-aw39", 39, true, false, false),
    ("qemu72-aw48", 48, true, false, false),
    ("qemu72-intremap-off", 39, false, false, false),
    ("qemu72-intremap-on", 39, true, false, false),
    ("qemu72-device-iotlb", 39, true, false, true),
    ("qemu72-bridges", 39, true, true, false),
    ("qemu10-default", 48, true, false, false),
    ("qemu10-aw39", 39, true, false, false),
    ("qemu10-aw48", 48, true, false, false),
    ("qemu10-intremap-off", 48, false, false, false),
    ("qemu10-intremap-on", 48, true, false, false),
    ("qemu10-device-iotlb", 48, true, false, true),
    ("qemu10-bridges", 48, true, true, false),
];

#[test]
fn every_fixture_parses_to_what_qemu_wrote() {
    for ((name, bytes), (expected_name, haw, intremap, bridges, atsr)) in
        FIXTURES.iter().zip(EXPECTED)
    {
        assert_eq!(*name, expected_name);
        let dmar = Dmar::parse(bytes).unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(dmar.revision, 1, "{name}");
        assert_eq!(&dmar.oem_id, b"BOCHS ", "{name}");
        assert_eq!(&dmar.oem_table_id, b"BXPC    ", "{name}");
        assert_eq!(dmar.oem_revision, 1, "{name}");
        assert_eq!(dmar.host_address_width, haw, "{name}");
        let flags = if intremap {
            DmarFlags::INTR_REMAP
        } else {
            DmarFlags::empty()
        };
        assert_eq!(dmar.flags, flags, "{name}");

        assert_eq!(dmar.units.len(), 1, "{name}");
        let drhd = &dmar.units[0];
        assert_eq!(drhd.offset, DRHD_AT, "{name}");
        assert_eq!(drhd.flags, DrhdFlags::empty(), "{name}: not include-all");
        assert!(!drhd.include_pci_all(), "{name}");
        assert_eq!(drhd.size, 0, "{name}");
        assert_eq!(drhd.register_size(), 4096, "{name}");
        assert_eq!(drhd.segment, 0, "{name}");
        assert_eq!(drhd.register_base, 0xfed9_0000, "{name}");

        let expected: &[Expected] = if bridges {
            &BRIDGES_SCOPES
        } else {
            &FLAT_SCOPES
        };
        assert_eq!(drhd.scopes.len(), expected.len(), "{name}");
        for (index, (scope, &(scope_type, bus, device, function))) in
            drhd.scopes.iter().zip(expected).enumerate()
        {
            assert_eq!(scope.offset, FIRST_SCOPE_AT + 8 * index, "{name}");
            assert_eq!(scope.scope_type, scope_type, "{name} scope {index}");
            assert_eq!(scope.enumeration_id, 0, "{name} scope {index}");
            assert_eq!(scope.flags, 0, "{name} scope {index}");
            assert_eq!(scope.start_bus, bus, "{name} scope {index}");
            assert_eq!(
                scope.path,
                [PathEntry { device, function }],
                "{name} scope {index}"
            );
        }

        if atsr {
            assert_eq!(dmar.atsrs.len(), 1, "{name}");
            let atsr = &dmar.atsrs[0];
            assert_eq!(atsr.offset, 0x70, "{name}");
            assert_eq!(atsr.flags, AtsrFlags::ALL_PORTS, "{name}");
            assert!(atsr.all_ports(), "{name}");
            assert_eq!(atsr.segment, 0, "{name}");
            assert!(atsr.scopes.is_empty(), "{name}");
        } else {
            assert!(dmar.atsrs.is_empty(), "{name}");
        }
        assert!(dmar.rmrrs.is_empty(), "{name}");
        assert!(dmar.rhsas.is_empty(), "{name}");
        assert!(dmar.andds.is_empty(), "{name}");
        assert!(dmar.satcs.is_empty(), "{name}");
        assert_eq!(dmar.unknown_structures, 0, "{name}");
    }
}

#[test]
fn qemu_versions_differ_only_in_host_address_width_and_checksum() {
    let pairs = [
        (QEMU72_DEFAULT, QEMU10_DEFAULT),
        (QEMU72_INTREMAP_OFF, QEMU10_INTREMAP_OFF),
        (QEMU72_INTREMAP_ON, QEMU10_INTREMAP_ON),
        (QEMU72_DEVICE_IOTLB, QEMU10_DEVICE_IOTLB),
        (QEMU72_BRIDGES, QEMU10_BRIDGES),
    ];
    for (old, new) in pairs {
        let differing: Vec<usize> = (0..old.len()).filter(|&i| old[i] != new[i]).collect();
        assert_eq!(differing, [9, 36]);
        assert_eq!((old[36], new[36]), (0x26, 0x2f));
    }
    // With aw-bits given explicitly, both versions write the same table.
    assert_eq!(QEMU72_AW39, QEMU10_AW39);
    assert_eq!(QEMU72_AW48, QEMU10_AW48);
    // QEMU 7.2's default is aw-bits 39, 10.0's is 48; intremap is on by default (TCG).
    assert_eq!(QEMU72_DEFAULT, QEMU72_AW39);
    assert_eq!(QEMU10_DEFAULT, QEMU10_AW48);
    assert_eq!(QEMU72_DEFAULT, QEMU72_INTREMAP_ON);
    assert_eq!(QEMU10_DEFAULT, QEMU10_INTREMAP_ON);
}

#[test]
fn flat_machine_resolves_every_scope_without_warnings() {
    let table = flat_machine();
    for (name, bytes) in FIXTURES {
        let topology = if name.ends_with("bridges") {
            DmarTopology::parse(bytes, &bridges_machine()).unwrap()
        } else {
            DmarTopology::parse(bytes, &table).unwrap()
        };
        assert_eq!(topology.warnings(), [], "{name}");
    }
    let topology = DmarTopology::parse(QEMU72_DEFAULT, &table).unwrap();
    let unit = &topology.vtd_units()[0];
    assert_eq!(
        unit.scopes,
        [
            ResolvedScope::IoApic {
                id: 0,
                source_id: 0xff00
            },
            ResolvedScope::Device(at(0, 0, 0)),
            ResolvedScope::Device(at(0, 1, 0)),
            ResolvedScope::Device(at(0, 0x1f, 0)),
            ResolvedScope::Device(at(0, 0x1f, 2)),
            ResolvedScope::Device(at(0, 0x1f, 3)),
        ]
    );
    assert_eq!(unit.devices().count(), 5);
    assert_eq!(unit.bridges().count(), 0);
    assert_eq!(unit.io_apics().collect::<Vec<_>>(), [(0, 0xff00)]);
    assert_eq!(unit.hpets().count(), 0);
    assert_eq!(
        topology.interrupt_sources().collect::<Vec<_>>(),
        [InterruptSource {
            unit: UnitId(0),
            kind: InterruptSourceKind::IoApic,
            id: 0,
            source_id: 0xff00
        }]
    );
    assert!(topology.interrupt_remapping());
    assert!(topology.uncovered(&table).is_empty());
}

#[test]
fn bridges_machine_resolves_root_ports_with_their_bus_ranges() {
    let table = bridges_machine();
    let topology = DmarTopology::parse(QEMU10_BRIDGES, &table).unwrap();
    assert_eq!(topology.host_address_width(), 48);
    assert_eq!(
        topology.vtd_units()[0].bridges().collect::<Vec<_>>(),
        [
            (at(0, 1, 0), 1, 1),
            (at(0, 2, 0), 2, 3),
            (at(0, 3, 0), 4, 7)
        ]
    );
    assert_eq!(
        topology.vtd_units()[0].devices().collect::<Vec<_>>(),
        [at(0, 0, 0), at(0, 0x1f, 0), at(0, 0x1f, 2), at(0, 0x1f, 3)]
    );
}

#[test]
fn the_trait_describes_one_unit_like_linux_names_it() {
    let table = flat_machine();
    let topology = DmarTopology::parse(QEMU10_DEFAULT, &table).unwrap();
    assert_eq!(topology.vendor(), Vendor::IntelVtd);
    let units = topology.units();
    assert_eq!(units.len(), 1);
    assert_eq!(units[0].id, UnitId(0));
    assert_eq!(units[0].vendor, Vendor::IntelVtd);
    assert_eq!(units[0].segment, 0);
    assert_eq!(units[0].register_base, 0xfed9_0000);
    assert_eq!(units[0].register_size, 4096);
    assert_eq!(units[0].name, "dmar0");
    let binding = topology.binding(&table, at(0, 1, 0)).unwrap();
    assert_eq!(binding.unit, UnitId(0));
    assert!(binding.firmware_aliases.is_empty());
}

#[test]
fn device_iotlb_adds_an_all_ports_atsr() {
    let table = bridges_machine();
    let topology = DmarTopology::parse(QEMU72_DEVICE_IOTLB, &table).unwrap();
    assert_eq!(topology.atsrs().len(), 1);
    let atsr = &topology.atsrs()[0];
    assert!(atsr.all_ports());
    for device in addresses(&table) {
        assert!(atsr.allows_ats(&table, device));
    }
    assert!(!atsr.allows_ats(&table, PciAddress::new(1, 0, 1, 0)));
}

#[test]
fn boot_log_summary() {
    let topology = DmarTopology::parse(QEMU72_DEFAULT, &flat_machine()).unwrap();
    assert_eq!(
        topology.to_string(),
        "DMAR: 39-bit host addresses, flags: interrupt-remapping, 1 unit\n\
         dmar0: base 0xfed90000 (4 KiB) segment 0000 flags: none; scope: ioapic 0 (ff:00.0), \
         0000:00:00.0, 0000:00:01.0, 0000:00:1f.0, 0000:00:1f.2, 0000:00:1f.3"
    );
    let topology = DmarTopology::parse(QEMU10_DEVICE_IOTLB, &bridges_machine()).unwrap();
    let off = DmarTopology::parse(QEMU10_INTREMAP_OFF, &flat_machine()).unwrap();
    assert!(!off.interrupt_remapping());
    assert!(
        off.to_string()
            .starts_with("DMAR: 48-bit host addresses, flags: none, 1 unit\n")
    );
    // device-iotlb on the bridges machine: QEMU lists 00:01.0 as an endpoint there
    // because the fixture was captured on the flat machine; the mismatch is reported.
    let text = topology.to_string();
    assert!(
        text.contains("\natsr: segment 0000 all root ports"),
        "{text}"
    );
    assert!(text.contains("bridge 0000:00:01.0 (buses 01-01)"), "{text}");
    assert!(text.ends_with("\n1 warning"), "{text}");
    let bridges = DmarTopology::parse(QEMU72_BRIDGES, &bridges_machine()).unwrap();
    assert_eq!(
        bridges.to_string(),
        "DMAR: 39-bit host addresses, flags: interrupt-remapping, 1 unit\n\
         dmar0: base 0xfed90000 (4 KiB) segment 0000 flags: none; scope: ioapic 0 (ff:00.0), \
         0000:00:00.0, bridge 0000:00:01.0 (buses 01-01), bridge 0000:00:02.0 (buses 02-03), \
         bridge 0000:00:03.0 (buses 04-07), 0000:00:1f.0, 0000:00:1f.2, 0000:00:1f.3"
    );
}
