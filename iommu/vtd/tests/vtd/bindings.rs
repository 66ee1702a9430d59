//! Which unit translates which device: Intel's rule against fake machines.

use sluice_iommu::{IommuTopology, UnitId};
use sluice_pci::fake::{FakeConfigSpace, FakeFunction};
use sluice_pci::{DeviceTable, EcamRegion, PciAddress, enumerate};
use sluice_vtd::{
    DmarTopology, InterruptSource, InterruptSourceKind, ResolvedScope, ScopeType, Warning,
    WarningKind,
};

use crate::common::*;

const BASE0: u64 = 0xfed9_0000;
const BASE1: u64 = 0xfed9_1000;
const BASE2: u64 = 0xfed9_2000;

fn unit_of(topology: &DmarTopology, table: &DeviceTable, device: PciAddress) -> Option<u16> {
    topology.unit_for(table, device).map(|unit| unit.0)
}

fn kinds(topology: &DmarTopology) -> Vec<&WarningKind> {
    topology
        .warnings()
        .iter()
        .map(|warning| &warning.kind)
        .collect()
}

/// The root-bus scopes of the bridges fixture, without the root ports.
fn chipset_scopes() -> Vec<Vec<u8>> {
    vec![
        qemu_ioapic(),
        endpoint(0, &[(0, 0)]),
        endpoint(0, &[(0x1f, 0)]),
        endpoint(0, &[(0x1f, 2)]),
        endpoint(0, &[(0x1f, 3)]),
    ]
}

#[test]
fn every_device_of_the_bridges_machine_maps_to_dmar0() {
    let table = bridges_machine();
    for fixture in [QEMU72_BRIDGES, QEMU10_BRIDGES] {
        let topology = DmarTopology::parse(fixture, &table).unwrap();
        assert_eq!(topology.warnings(), []);
        for device in addresses(&table) {
            let binding = topology.binding(&table, device).unwrap();
            assert_eq!(binding.unit, UnitId(0), "{device}");
        }
        // The functions below the root ports are not named exactly: they map through
        // the root ports' bridge scopes.
        let named: Vec<PciAddress> = topology.vtd_units()[0].devices().collect();
        for below in [
            at(1, 0, 0),
            at(2, 0, 0),
            at(3, 1, 0),
            at(4, 0, 0),
            at(6, 0, 0),
        ] {
            assert!(!named.contains(&below));
        }
        assert!(topology.uncovered(&table).is_empty());
    }
}

#[test]
fn without_the_bridge_scopes_nothing_below_the_root_ports_is_translated() {
    let table = bridges_machine();
    let bytes = with_structures(QEMU72_BRIDGES, &[drhd(false, 0, BASE0, &chipset_scopes())]);
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(unit_of(&topology, &table, at(0, 0x1f, 2)), Some(0));
    assert_eq!(
        topology.uncovered(&table),
        [
            at(0, 1, 0),
            at(0, 2, 0),
            at(0, 3, 0),
            at(1, 0, 0),
            at(2, 0, 0),
            at(3, 1, 0),
            at(4, 0, 0),
            at(5, 0, 0),
            at(5, 1, 0),
            at(6, 0, 0)
        ]
    );
    assert_eq!(topology.binding(&table, at(6, 0, 0)), None);
}

#[test]
fn root_ports_split_between_two_units() {
    let table = bridges_machine();
    let mut first = chipset_scopes();
    first.push(bridge(0, &[(1, 0)]));
    let bytes = with_structures(
        QEMU72_BRIDGES,
        &[
            drhd(false, 0, BASE0, &first),
            drhd(
                false,
                0,
                BASE1,
                &[bridge(0, &[(2, 0)]), bridge(0, &[(3, 0)])],
            ),
        ],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(topology.warnings(), []);
    for (device, unit) in [
        (at(0, 0, 0), 0),
        (at(0, 1, 0), 0),
        (at(1, 0, 0), 0),
        (at(0, 2, 0), 1),
        (at(2, 0, 0), 1),
        (at(3, 1, 0), 1),
        (at(0, 3, 0), 1),
        (at(4, 0, 0), 1),
        (at(5, 0, 0), 1),
        (at(5, 1, 0), 1),
        (at(6, 0, 0), 1),
        (at(0, 0x1f, 3), 0),
    ] {
        assert_eq!(unit_of(&topology, &table, device), Some(unit), "{device}");
    }
    assert_eq!(topology.units()[1].name, "dmar1");
    assert_eq!(topology.units()[1].register_base, BASE1);
}

#[test]
fn nearest_bridge_scope_wins_whatever_the_table_order() {
    let table = bridges_machine();
    // dmar0: the downstream port 05:00.0 (buses 06-06), reached by a 3-hop path;
    // dmar1: the root port 00:03.0 (buses 04-07) above it.
    let bytes = with_structures(
        QEMU72_BRIDGES,
        &[
            drhd(false, 0, BASE0, &[bridge(0, &[(3, 0), (0, 0), (0, 0)])]),
            drhd(false, 0, BASE1, &[bridge(0, &[(3, 0)])]),
        ],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(topology.warnings(), []);
    assert_eq!(
        topology.vtd_units()[0].scopes,
        [ResolvedScope::Bridge {
            bridge: at(5, 0, 0),
            secondary: 6,
            subordinate: 6
        }]
    );
    assert_eq!(unit_of(&topology, &table, at(6, 0, 0)), Some(0));
    assert_eq!(
        unit_of(&topology, &table, at(5, 0, 0)),
        Some(0),
        "named exactly"
    );
    assert_eq!(unit_of(&topology, &table, at(5, 1, 0)), Some(1));
    assert_eq!(unit_of(&topology, &table, at(4, 0, 0)), Some(1));
    assert_eq!(unit_of(&topology, &table, at(0, 3, 0)), Some(1));
    // Functions not in the table (a VF enabled later): by bus range, narrowest first.
    assert_eq!(unit_of(&topology, &table, at(6, 0, 5)), Some(0));
    assert_eq!(unit_of(&topology, &table, at(7, 3, 0)), Some(1));
    assert_eq!(unit_of(&topology, &table, at(8, 0, 0)), None);
    assert_eq!(unit_of(&topology, &table, at(0, 0x1f, 2)), None);
}

#[test]
fn an_exact_endpoint_scope_beats_the_bridge_above_it() {
    let table = bridges_machine();
    let bytes = with_structures(
        QEMU72_BRIDGES,
        &[
            drhd(false, 0, BASE0, &[endpoint(0, &[(1, 0), (0, 0)])]),
            drhd(false, 0, BASE1, &[bridge(0, &[(1, 0)])]),
        ],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(
        topology.vtd_units()[0].scopes,
        [ResolvedScope::Device(at(1, 0, 0))]
    );
    assert_eq!(unit_of(&topology, &table, at(1, 0, 0)), Some(0));
    assert_eq!(unit_of(&topology, &table, at(0, 1, 0)), Some(1));
}

#[test]
fn include_all_is_checked_last_wherever_it_is_in_the_table() {
    let table = flat_machine();
    let include_all = drhd(true, 0, BASE0, &[qemu_ioapic()]);
    let scoped = drhd(false, 0, BASE1, &[endpoint(0, &[(1, 0)])]);
    let first = with_structures(QEMU72_DEFAULT, &[include_all.clone(), scoped.clone()]);
    let last = with_structures(QEMU72_DEFAULT, &[scoped, include_all]);

    let topology = DmarTopology::parse(&first, &table).unwrap();
    assert_eq!(topology.warnings(), []);
    assert!(topology.vtd_units()[0].include_pci_all());
    assert_eq!(unit_of(&topology, &table, at(0, 1, 0)), Some(1));
    for device in [at(0, 0, 0), at(0, 0x1f, 0), at(0, 0x1f, 2), at(0, 0x1f, 3)] {
        assert_eq!(unit_of(&topology, &table, device), Some(0), "{device}");
    }
    assert_eq!(
        unit_of(&topology, &table, at(0, 5, 0)),
        Some(0),
        "not enumerated"
    );
    assert_eq!(
        unit_of(&topology, &table, PciAddress::new(1, 0, 1, 0)),
        None
    );
    assert!(
        topology
            .to_string()
            .contains("flags: include-pci-all; scope: ioapic 0")
    );

    let topology = DmarTopology::parse(&last, &table).unwrap();
    assert_eq!(unit_of(&topology, &table, at(0, 1, 0)), Some(0));
    assert_eq!(unit_of(&topology, &table, at(0, 0x1f, 2)), Some(1));
}

#[test]
fn a_second_include_all_unit_of_a_segment_is_reported_and_unused() {
    let table = flat_machine();
    let bytes = with_structures(
        QEMU72_DEFAULT,
        &[
            drhd(true, 0, BASE0, &[qemu_ioapic()]),
            drhd(true, 0, BASE1, &[]),
        ],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(
        topology.warnings(),
        [Warning {
            offset: 0x30 + 24,
            kind: WarningKind::ExtraIncludeAll {
                segment: 0,
                used: UnitId(0),
                ignored: UnitId(1)
            }
        }]
    );
    assert_eq!(unit_of(&topology, &table, at(0, 1, 0)), Some(0));
}

/// Segment 0: the flat machine. Segment 1: a host bridge and a root port with an edu.
fn two_segment_machine() -> DeviceTable {
    let segment1 = |bus, device| PciAddress::new(1, bus, device, 0);
    let mut cfg: FakeConfigSpace = flat_config();
    cfg.insert(segment1(0, 0), FakeFunction::host_bridge(0x8086, 0x29c0));
    cfg.insert(segment1(0, 2), FakeFunction::root_port(0, 1, 1));
    cfg.insert(
        segment1(1, 0),
        FakeFunction::conventional_endpoint(0x1234, 0x11e8),
    );
    let window1 = EcamRegion {
        segment: 1,
        bus_start: 0,
        bus_end: 255,
        base: 0xC000_0000,
    };
    enumerate(&cfg, &[Q35_WINDOW, window1])
}

#[test]
fn units_only_match_devices_of_their_own_segment() {
    let table = two_segment_machine();
    assert_eq!(table.len(), 8);
    let bytes = with_structures(
        QEMU72_DEFAULT,
        &[
            drhd(false, 0, BASE0, &[qemu_ioapic(), endpoint(0, &[(1, 0)])]),
            drhd(true, 1, BASE1, &[]),
            drhd(false, 1, BASE2, &[bridge(0, &[(2, 0)])]),
        ],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(topology.warnings(), []);
    assert_eq!(
        topology.vtd_units()[2].scopes,
        [ResolvedScope::Bridge {
            bridge: PciAddress::new(1, 0, 2, 0),
            secondary: 1,
            subordinate: 1
        }]
    );
    let seg1 = |bus, device| PciAddress::new(1, bus, device, 0);
    assert_eq!(unit_of(&topology, &table, at(0, 1, 0)), Some(0));
    // Segment 0 has no include-all unit: the rest of it is not translated.
    assert_eq!(unit_of(&topology, &table, at(0, 0x1f, 2)), None);
    assert_eq!(unit_of(&topology, &table, at(0, 2, 0)), None);
    assert_eq!(unit_of(&topology, &table, seg1(0, 0)), Some(1));
    assert_eq!(unit_of(&topology, &table, seg1(0, 2)), Some(2));
    assert_eq!(unit_of(&topology, &table, seg1(1, 0)), Some(2));
    // Bus 1 of segment 0 is not below segment 1's bridge.
    assert_eq!(unit_of(&topology, &table, at(1, 0, 0)), None);
    assert_eq!(
        topology
            .units()
            .iter()
            .map(|unit| unit.segment)
            .collect::<Vec<_>>(),
        [0, 1, 1]
    );
}

#[test]
fn a_device_named_by_two_units_goes_to_the_later_one_as_in_linux() {
    let table = flat_machine();
    let bytes = with_structures(
        QEMU72_DEFAULT,
        &[
            drhd(false, 0, BASE0, &[endpoint(0, &[(1, 0)])]),
            drhd(false, 0, BASE1, &[endpoint(0, &[(1, 0)])]),
        ],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(
        topology.warnings(),
        [Warning {
            offset: 0x30 + 24 + 16,
            kind: WarningKind::DuplicateScope {
                device: at(0, 1, 0),
                ignored: UnitId(0),
                used: UnitId(1)
            }
        }]
    );
    assert_eq!(unit_of(&topology, &table, at(0, 1, 0)), Some(1));
    assert_eq!(
        topology.warnings()[0].to_string(),
        "DMAR offset 0x58: 0000:00:01.0 is named by dmar0 and dmar1; dmar1 used"
    );
}

#[test]
fn an_endpoint_scope_naming_a_root_port_is_reported_and_used_as_the_bridge() {
    let table = bridges_machine();
    // Scope 2 of the bridges fixture (offset 0x50) is the bridge 00:01.0: call it an
    // endpoint.
    let bytes = edited(QEMU72_BRIDGES, |t| t[0x50] = 1);
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(topology.warnings().len(), 1);
    let warning = &topology.warnings()[0];
    assert_eq!(warning.offset, 0x50);
    let WarningKind::ScopeTypeMismatch { device, scope, .. } = &warning.kind else {
        panic!("{warning}");
    };
    assert_eq!(*device, at(0, 1, 0));
    assert_eq!(scope.scope_type, ScopeType::Endpoint);
    assert_eq!(
        topology.vtd_units()[0].scopes[2],
        ResolvedScope::Bridge {
            bridge: at(0, 1, 0),
            secondary: 1,
            subordinate: 1
        }
    );
    assert_eq!(unit_of(&topology, &table, at(1, 0, 0)), Some(0));
    assert_eq!(
        warning.to_string(),
        "DMAR offset 0x50: DRHD scope endpoint 00:[01.0] names 0000:00:01.0, which is a bridge; used as found"
    );
}

#[test]
fn a_bridge_scope_naming_an_endpoint_is_reported_unless_its_class_is_bridge() {
    let table = flat_machine();
    // 0x50: edu 00:01.0 (class 00ff00); 0x58: ISA bridge 00:1f.0 (class 0601, type 0).
    let bytes = edited(QEMU72_DEFAULT, |t| {
        t[0x50] = 2;
        t[0x58] = 2;
    });
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(
        kinds(&topology)
            .iter()
            .filter(|kind| matches!(kind, WarningKind::ScopeTypeMismatch { .. }))
            .count(),
        1
    );
    assert_eq!(topology.warnings()[0].offset, 0x50);
    assert_eq!(
        topology.vtd_units()[0].scopes[2],
        ResolvedScope::Device(at(0, 1, 0))
    );
    assert_eq!(
        topology.vtd_units()[0].scopes[3],
        ResolvedScope::Device(at(0, 0x1f, 0))
    );
    assert_eq!(unit_of(&topology, &table, at(0, 1, 0)), Some(0));
}

#[test]
fn multi_hop_paths_follow_secondary_buses() {
    let table = bridges_machine();
    let bytes = with_structures(
        QEMU72_BRIDGES,
        &[drhd(
            false,
            0,
            BASE0,
            &[
                endpoint(0, &[(2, 0), (0, 0), (1, 0)]),
                endpoint(0, &[(3, 0), (0, 0), (0, 0), (0, 0)]),
                scope(3, 1, 0, &[(2, 0), (0, 0)]),
            ],
        )],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(topology.warnings(), []);
    assert_eq!(
        topology.vtd_units()[0].scopes,
        [
            ResolvedScope::Device(at(3, 1, 0)),
            ResolvedScope::Device(at(6, 0, 0)),
            ResolvedScope::IoApic {
                id: 1,
                source_id: 0x0200
            }
        ]
    );
}

#[test]
fn rmrrs_resolve_to_the_devices_to_identity_map() {
    let table = bridges_machine();
    let bytes = with_structures(
        QEMU72_BRIDGES,
        &[
            QEMU72_BRIDGES[0x30..0x80].to_vec(),
            rmrr(
                0,
                0xe_0000,
                0xe_3fff,
                &[endpoint(0, &[(0x1f, 2)]), bridge(0, &[(2, 0)])],
            ),
        ],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(topology.warnings(), []);
    let rmrr = &topology.rmrrs()[0];
    assert_eq!(
        (rmrr.base, rmrr.limit, rmrr.size()),
        (0xe_0000, 0xe_3fff, 0x4000)
    );
    assert_eq!(
        rmrr.devices,
        [at(0, 2, 0), at(0, 0x1f, 2), at(2, 0, 0), at(3, 1, 0)]
    );
    assert!(rmrr.applies_to(&table, at(3, 1, 0)));
    assert!(
        rmrr.applies_to(&table, at(3, 2, 0)),
        "not enumerated, below 00:02.0"
    );
    assert!(!rmrr.applies_to(&table, at(1, 0, 0)));
    assert!(!rmrr.applies_to(&table, PciAddress::new(1, 0, 0x1f, 2)));
    assert_eq!(topology.rmrrs_for(&table, at(0, 0x1f, 2)).count(), 1);
    assert_eq!(topology.rmrrs_for(&table, at(6, 0, 0)).count(), 0);
    // What the VFIO layer asks: such devices are never assignable.
    assert_eq!(
        topology.reserved_regions(&table, at(0, 0x1f, 2)),
        [(0xe_0000, 0xe_3fff)]
    );
    assert!(topology.reserved_regions(&table, at(6, 0, 0)).is_empty());
    assert!(topology.to_string().contains(
        "\nrmrr: 0xe0000-0xe3fff segment 0000 for 0000:00:1f.2, bridge 0000:00:02.0 (buses 02-03)"
    ));
}

#[test]
fn odd_rmrrs_and_misplaced_scopes_are_reported() {
    let table = flat_machine();
    let bytes = with_structures(
        QEMU72_DEFAULT,
        &[
            QEMU72_DEFAULT[0x30..0x70].to_vec(),
            rmrr(0, 0xe_0800, 0xe_3fff, &[endpoint(0, &[(1, 0)])]),
            rmrr(0, 0x2000, 0xfff, &[qemu_ioapic()]),
        ],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    let kinds = kinds(&topology);
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(
        *kinds[0],
        WarningKind::RmrrBadRange {
            base: 0xe_0800,
            limit: 0xe_3fff
        }
    );
    assert_eq!(
        *kinds[1],
        WarningKind::RmrrBadRange {
            base: 0x2000,
            limit: 0xfff
        }
    );
    assert!(matches!(kinds[2], WarningKind::UnexpectedScopeType { .. }));
    assert_eq!(topology.rmrrs()[1].size(), 0);
    assert!(topology.rmrrs()[1].devices.is_empty());
}

#[test]
fn rhsa_attaches_a_proximity_domain_or_is_reported() {
    let table = flat_machine();
    let bytes = with_structures(
        QEMU72_DEFAULT,
        &[
            QEMU72_DEFAULT[0x30..0x70].to_vec(),
            rhsa(BASE0, 3),
            rhsa(0xdead_0000, 1),
        ],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(topology.vtd_units()[0].proximity_domain, Some(3));
    assert_eq!(
        kinds(&topology),
        [&WarningKind::RhsaWithoutUnit {
            register_base: 0xdead_0000
        }]
    );
    assert!(
        topology
            .to_string()
            .contains("flags: none, proximity domain 3; scope:")
    );
}

#[test]
fn hpet_and_acpi_namespace_scopes_give_source_ids() {
    let table = flat_machine();
    let bytes = with_structures(
        QEMU72_DEFAULT,
        &[
            drhd(
                true,
                0,
                BASE0,
                &[
                    qemu_ioapic(),
                    scope(4, 2, 0, &[(0x1f, 0)]),
                    scope(5, 7, 0, &[(0x15, 1)]),
                ],
            ),
            andd(7, "\\_SB.PCI0.I2C1"),
        ],
    );
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(topology.warnings(), []);
    assert_eq!(
        topology.interrupt_sources().collect::<Vec<_>>(),
        [
            InterruptSource {
                unit: UnitId(0),
                kind: InterruptSourceKind::IoApic,
                id: 0,
                source_id: 0xff00
            },
            InterruptSource {
                unit: UnitId(0),
                kind: InterruptSourceKind::Hpet,
                id: 2,
                source_id: 0x00f8
            }
        ]
    );
    assert_eq!(
        topology.vtd_units()[0].scopes[2],
        ResolvedScope::AcpiNamespace {
            device_number: 7,
            source_id: 0x00a9
        }
    );
    assert_eq!(topology.andds()[0].object_name, "\\_SB.PCI0.I2C1");
    let text = topology.to_string();
    assert!(
        text.contains("hpet 2 (00:1f.0), acpi-device 7 (00:15.1)"),
        "{text}"
    );
    assert!(
        text.contains("\nandd: device 7 \"\\_SB.PCI0.I2C1\""),
        "{text}"
    );
}

#[test]
fn a_table_without_units_translates_nothing() {
    let table = flat_machine();
    let bytes = with_structures(QEMU72_DEFAULT, &[]);
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(kinds(&topology), [&WarningKind::NoUnits]);
    assert!(topology.units().is_empty());
    assert_eq!(topology.uncovered(&table), addresses(&table));
    assert_eq!(
        topology.to_string(),
        "DMAR: 39-bit host addresses, flags: interrupt-remapping, 0 units\n1 warning"
    );
}

#[test]
fn register_size_follows_the_size_field() {
    let table = flat_machine();
    let mut unit = drhd(false, 0, BASE0, &[]);
    unit[5] = 3;
    let bytes = with_structures(QEMU72_DEFAULT, &[unit]);
    let topology = DmarTopology::parse(&bytes, &table).unwrap();
    assert_eq!(topology.units()[0].register_size, 32 * 1024);
    assert!(topology.to_string().contains("(32 KiB)"));
}
