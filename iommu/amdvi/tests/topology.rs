//! Bindings: the fixtures resolved against fake PCI machines mirroring the QEMU
//! ones, and hand-built tables for what QEMU never produces (two segments, two
//! units covering one device, IVMDs, ACPI-HID entries).

mod common;

use common::*;
use sluice_amdvi::{
    Coverage, IvhdType, IvmdDevice, Ivrs, IvrsTopology, SpecialDevice, SpecialVariety,
    TopologyWarning,
};
use sluice_iommu::{FirmwareBinding, IommuTopology, UnitDescription, UnitId, Vendor};
use sluice_pci::{DeviceTable, PciAddress};

fn topology(bytes: &[u8], table: &DeviceTable) -> IvrsTopology {
    let ivrs = Ivrs::parse(bytes).expect("table parses");
    IvrsTopology::new(&ivrs, table).expect("topology builds")
}

fn bound(unit: u16) -> Option<FirmwareBinding> {
    Some(FirmwareBinding {
        unit: UnitId(unit),
        firmware_aliases: Vec::new(),
    })
}

/// Every function of the table with its binding.
fn bindings(
    topology: &IvrsTopology,
    table: &DeviceTable,
) -> Vec<(PciAddress, Option<FirmwareBinding>)> {
    table
        .iter()
        .map(|device| (device.address, topology.binding(table, device.address)))
        .collect()
}

const IOAPIC: SpecialDevice = SpecialDevice {
    unit: UnitId(0),
    variety: SpecialVariety::IoApic,
    handle: 0,
    source: addr(0, 0x14, 0),
    dte: sluice_amdvi::DteSetting::empty(),
    entry_offset: 0,
};

#[test]
fn qemu72_default_machine() {
    let table = qemu_default_machine(AMD_IOMMU_72);
    let topology = topology(QEMU72_DEFAULT, &table);
    assert_eq!(topology.vendor(), Vendor::AmdVi);
    assert_eq!(
        topology.units(),
        [UnitDescription {
            id: UnitId(0),
            vendor: Vendor::AmdVi,
            segment: 0,
            register_base: 0xfed8_0000,
            register_size: 0x4000,
            name: "ivhd0".into(),
        }]
    );
    assert_eq!(topology.selected_ivhd_type(), Some(IvhdType::Type10));
    assert_eq!(topology.ignored_ivhds(), 0);
    let unit = &topology.amd_units()[0];
    assert_eq!(unit.iommu_function, addr(0, 1, 0));
    assert_eq!(unit.capability_offset, 0x40);
    assert_eq!(unit.efr_image(), None);
    assert_eq!(unit.device_map.covered_count(), 6);
    assert_eq!(
        bindings(&topology, &table),
        [
            (addr(0, 0, 0), bound(0)),
            // The IOMMU's own function is listed by QEMU but never bound.
            (addr(0, 1, 0), None),
            (addr(0, 2, 0), bound(0)),
            (addr(0, 0x1f, 0), bound(0)),
            (addr(0, 0x1f, 2), bound(0)),
            (addr(0, 0x1f, 3), bound(0)),
        ]
    );
    assert!(topology.is_iommu_function(addr(0, 1, 0)));
    assert_eq!(
        topology.special_devices(),
        [SpecialDevice {
            entry_offset: 0x60,
            ..IOAPIC
        }]
    );
    assert!(topology.memory_definitions().is_empty());
    assert!(topology.acpi_hid_devices().is_empty());
    assert_eq!(topology.warnings(), []);
    assert_eq!(
        topology.to_string(),
        "ivhd0: AMD-Vi IVHD type 0x10 at 0xfed80000 (16 KiB), segment 0000, \
         IOMMU function 0000:00:01.0 cap 0x40, flags [HT tunnel, IOTLB, prefetch, PPR], \
         features [guest translation, guest vAPIC, host address translation size 4 levels, \
         guest address translation size 4 levels, PASmax 0], covers 6 device ids in 6 runs, \
         aliases [], specials [IOAPIC 0 @ 0000:00:14.0]"
    );
}

#[test]
fn qemu10_default_machine_uses_the_11h_block() {
    let table = qemu_default_machine(AMD_IOMMU_10);
    let topology = topology(QEMU10_DEFAULT, &table);
    assert_eq!(topology.units().len(), 1, "10h and 11h describe one IOMMU");
    assert_eq!(topology.selected_ivhd_type(), Some(IvhdType::Type11));
    assert_eq!(topology.ignored_ivhds(), 1);
    let unit = &topology.amd_units()[0];
    assert_eq!(unit.ivhd_offset, 0x68);
    assert_eq!(unit.description.register_size, 0x4000);
    let efr = unit.efr_image().expect("IVinfo.EFRSup is set");
    assert_eq!(efr.raw, 0x29d3);
    assert!(
        !efr.xt_sup,
        "QEMU's xtsup defaults to off: xAPIC remapping only"
    );
    assert_eq!(
        bindings(&topology, &table),
        [
            (addr(0, 0, 0), bound(0)),
            (addr(0, 1, 0), None),
            (addr(0, 2, 0), bound(0)),
            (addr(0, 0x1f, 0), bound(0)),
            (addr(0, 0x1f, 2), bound(0)),
            (addr(0, 0x1f, 3), bound(0)),
        ]
    );
    assert_eq!(
        topology.special_devices(),
        [SpecialDevice {
            entry_offset: 0xa8,
            ..IOAPIC
        }]
    );
    assert_eq!(topology.warnings(), []);
    assert_eq!(
        topology.to_string(),
        "ivhd0: AMD-Vi IVHD type 0x11 at 0xfed80000 (16 KiB), segment 0000, \
         IOMMU function 0000:00:01.0 cap 0x40, flags [HT tunnel, IOTLB], \
         EFR [prefetch, PPR, guest translation, invalidate-all, guest vAPIC, \
         hardware error regs, host address translation size 6 levels, \
         guest address translation size reserved (2), max PASID 0x1], \
         covers 6 device ids in 6 runs, aliases [], specials [IOAPIC 0 @ 0000:00:14.0]"
    );
}

#[test]
fn intremap_off_has_no_special_devices() {
    for (bytes, iommu) in [
        (QEMU72_INTREMAP_OFF, AMD_IOMMU_72),
        (QEMU10_INTREMAP_OFF, AMD_IOMMU_10),
    ] {
        let table = qemu_default_machine(iommu);
        let topology = topology(bytes, &table);
        assert_eq!(topology.special_devices(), []);
        assert_eq!(topology.binding(&table, addr(0, 2, 0)), bound(0));
        assert!(topology.to_string().ends_with("specials []"));
    }
}

#[test]
fn bridges_machine_binds_everything_and_aliases_behind_the_pcie_to_pci_bridge() {
    for (bytes, iommu, ivhd_type) in [
        (QEMU72_BRIDGES, AMD_IOMMU_72, IvhdType::Type10),
        (QEMU10_BRIDGES, AMD_IOMMU_10, IvhdType::Type11),
    ] {
        let table = qemu_bridges_machine(iommu);
        let topology = topology(bytes, &table);
        assert_eq!(topology.selected_ivhd_type(), Some(ivhd_type));
        assert_eq!(
            bindings(&topology, &table),
            [
                (addr(0, 0, 0), bound(0)),
                (addr(0, 1, 0), None),
                (addr(0, 2, 0), bound(0)),
                (addr(0, 3, 0), bound(0)),
                (addr(0, 4, 0), bound(0)),
                (addr(0, 0x1f, 0), bound(0)),
                (addr(0, 0x1f, 2), bound(0)),
                (addr(0, 0x1f, 3), bound(0)),
                (addr(1, 0, 0), bound(0)),
                (addr(2, 0, 0), bound(0)),
                // The conventional edu behind the PCIe-to-PCI bridge: its DMA
                // carries 03:00.0 (the bridge's secondary bus, devfn 0).
                (
                    addr(3, 1, 0),
                    Some(FirmwareBinding {
                        unit: UnitId(0),
                        firmware_aliases: vec![0x0300],
                    })
                ),
                (addr(4, 0, 0), bound(0)),
                (addr(5, 0, 0), bound(0)),
                (addr(5, 1, 0), bound(0)),
                (addr(6, 0, 0), bound(0)),
            ]
        );
        // 03:00.0 names no function, but it is the bridge's secondary bus: fine.
        assert_eq!(topology.warnings(), []);
        // A function at the alias id itself carries no *other* id.
        assert_eq!(topology.binding(&table, addr(3, 0, 0)), bound(0));
        let (_, settings) = topology.device_settings(addr(3, 1, 0)).unwrap();
        assert_eq!(settings.coverage, Coverage::Aliased);
        // The 43h entry: 0x1c bytes into the entry list (0x64 in 7.2, 0xe8 in 10.0).
        let unit = &topology.amd_units()[0];
        assert_eq!(
            settings.entry_offset,
            unit.ivhd_offset + ivhd_type.header_len() + 0x1c
        );
        let map = &topology.amd_units()[0].device_map;
        // 12 selects + 4 ranges of 256 ids (bus 1, 3 aliased, 6, 7).
        assert_eq!(map.covered_count(), 12 + 4 * 256);
        assert_eq!(map.aliases(), vec![(0x0300..=0x03ff, 0x0300)]);
        assert!(
            topology.to_string().contains(
                "covers 1036 device ids in 16 runs, aliases [03:00.0-03:1f.7 -> 03:00.0]"
            ),
            "{topology}"
        );
    }
}

#[test]
fn functions_the_ivrs_does_not_list_are_uncovered() {
    // A function hot-added after firmware built the table (here 00:05.0).
    let mut table = qemu_default_machine(AMD_IOMMU_72);
    let extra = qemu_default_machine(AMD_IOMMU_72)
        .devices
        .into_iter()
        .find(|device| device.address == addr(0, 2, 0))
        .map(|mut device| {
            device.address = addr(0, 5, 0);
            device
        })
        .unwrap();
    table = DeviceTable::new(table.devices.into_iter().chain([extra]).collect());
    let topology = topology(QEMU72_DEFAULT, &table);
    assert_eq!(topology.binding(&table, addr(0, 5, 0)), None);
    assert_eq!(
        topology.warnings(),
        [TopologyWarning::UncoveredDevice {
            device: addr(0, 5, 0)
        }]
    );
    assert_eq!(
        topology.warnings()[0].to_string(),
        "0000:00:05.0 is covered by no IOMMU unit: its DMA is untranslated"
    );
}

#[test]
fn the_iommu_function_missing_from_the_pci_table_is_reported() {
    let table = DeviceTable::new(
        qemu_default_machine(AMD_IOMMU_72)
            .devices
            .into_iter()
            .filter(|device| device.address != addr(0, 1, 0))
            .collect(),
    );
    let topology = topology(QEMU72_DEFAULT, &table);
    assert_eq!(
        topology.warnings(),
        [TopologyWarning::IommuFunctionMissing {
            unit: UnitId(0),
            function: addr(0, 1, 0)
        }]
    );
}

#[test]
fn two_segments_two_units() {
    let bytes = IvrsBuilder::new(0x2800)
        .ivhd10(0x0008, 0xfed8_0000, 0, &[select(0x0000), select(0x0010)])
        .ivhd10(
            0x0008,
            0xfed9_0000,
            1,
            &[select(0x0000), range_start(0x0100), range_end(0x01ff)],
        )
        .build();
    let table = two_segment_machine();
    let topology = topology(&bytes, &table);
    let units: Vec<(&str, u16, u64)> = topology
        .units()
        .iter()
        .map(|unit| (unit.name.as_str(), unit.segment, unit.register_base))
        .collect();
    assert_eq!(
        units,
        [("ivhd0", 0, 0xfed8_0000), ("ivhd1", 1, 0xfed9_0000)]
    );
    let seg = |segment, bus, device| PciAddress::new(segment, bus, device, 0);
    assert_eq!(topology.binding(&table, seg(0, 0, 0)), bound(0));
    assert_eq!(topology.binding(&table, seg(0, 0, 2)), bound(0));
    assert_eq!(
        topology.binding(&table, seg(0, 1, 0)),
        None,
        "segment 0 bus 1 unlisted"
    );
    assert_eq!(topology.binding(&table, seg(1, 0, 0)), bound(1));
    assert_eq!(topology.binding(&table, seg(1, 1, 0)), bound(1));
    assert_eq!(
        topology.binding(&table, seg(1, 0, 2)),
        None,
        "segment 1 lists no 00:02.0"
    );
    // Each IOMMU function is excluded in its own segment.
    assert!(topology.is_iommu_function(seg(1, 0, 1)));
    assert_eq!(topology.binding(&table, seg(1, 0, 1)), None);
    let uncovered: Vec<_> = topology
        .warnings()
        .iter()
        .filter_map(|warning| match warning {
            TopologyWarning::UncoveredDevice { device } => Some(*device),
            _ => None,
        })
        .collect();
    assert_eq!(
        uncovered,
        [seg(0, 0, 3), seg(0, 1, 0), seg(1, 0, 2), seg(1, 0, 3)]
    );
    assert_eq!(topology.to_string().lines().count(), 2);
}

#[test]
fn duplicate_coverage_picks_the_first_unit_and_warns() {
    let bytes = IvrsBuilder::new(0x2800)
        .ivhd10(0x0008, 0xfed8_0000, 0, &[select(0x0000), select(0x0010)])
        .ivhd10(0x0008, 0xfed9_0000, 0, &[select(0x0010), select(0x00f8)])
        .build();
    let table = qemu_default_machine(AMD_IOMMU_72);
    let topology = topology(&bytes, &table);
    assert_eq!(topology.binding(&table, addr(0, 2, 0)), bound(0));
    assert_eq!(topology.binding(&table, addr(0, 0x1f, 0)), bound(1));
    assert_eq!(
        topology
            .covering_units(addr(0, 2, 0))
            .map(|(unit, _)| unit.id())
            .collect::<Vec<_>>(),
        [UnitId(0), UnitId(1)]
    );
    let duplicates: Vec<_> = topology
        .warnings()
        .iter()
        .filter(|warning| matches!(warning, TopologyWarning::DuplicateCoverage { .. }))
        .collect();
    assert_eq!(
        duplicates,
        [&TopologyWarning::DuplicateCoverage {
            device: addr(0, 2, 0),
            units: vec![UnitId(0), UnitId(1)]
        }]
    );
    assert_eq!(
        duplicates[0].to_string(),
        "0000:00:02.0 is covered by several units: ivhd0 ivhd1; using the first"
    );
}

#[test]
fn alias_select_and_an_alias_to_nothing() {
    // 00:02.0 (edu) declared to DMA as 12:06.4: no such function, and no bridge
    // leads to bus 0x12. The alias is still reported (the DTE for 0x1234 must be
    // programmed or the device's DMA faults) and a warning says it looks wrong.
    let bytes = IvrsBuilder::new(0x2800)
        .ivhd10(
            0x0008,
            0xfed8_0000,
            0,
            &[select(0x0000), alias_select(0x0010, 0x1234), select(0x00f8)],
        )
        .build();
    let table = qemu_default_machine(AMD_IOMMU_72);
    let topology = topology(&bytes, &table);
    assert_eq!(
        topology.binding(&table, addr(0, 2, 0)),
        Some(FirmwareBinding {
            unit: UnitId(0),
            firmware_aliases: vec![0x1234]
        })
    );
    let map = &topology.amd_units()[0].device_map;
    assert_eq!(
        map.lookup(0x1234).map(|s| s.coverage),
        Some(Coverage::AliasTarget)
    );
    assert!(
        topology
            .warnings()
            .contains(&TopologyWarning::AliasTargetUnreachable {
                device: addr(0, 2, 0),
                alias: 0x1234
            })
    );
    assert!(topology.warnings().iter().any(|w| w.to_string()
        == "0000:00:02.0: firmware alias 12:06.4 names no function or bridge secondary bus"));
}

#[test]
fn alias_range_edited_to_a_missing_target() {
    // The bridges fixture with the alias range's target (bytes 5..7 of the 43h
    // entry at 0x64) changed from 03:00.0 to 12:06.4.
    let bytes = edited(QEMU72_BRIDGES, |b| put_u16(b, 0x64 + 5, 0x1234));
    let table = qemu_bridges_machine(AMD_IOMMU_72);
    let topology = topology(&bytes, &table);
    assert_eq!(
        topology.binding(&table, addr(3, 1, 0)),
        Some(FirmwareBinding {
            unit: UnitId(0),
            firmware_aliases: vec![0x1234]
        })
    );
    assert_eq!(
        topology.warnings(),
        [TopologyWarning::AliasTargetUnreachable {
            device: addr(3, 1, 0),
            alias: 0x1234
        }]
    );
    // The target is covered too (Linux gives it a DTE): one more id.
    assert_eq!(
        topology.amd_units()[0].device_map.covered_count(),
        12 + 4 * 256 + 1
    );
}

#[test]
fn memory_definitions_resolve_to_devices() {
    let bytes = IvrsBuilder::new(0x2800)
        .ivhd10(
            0x0008,
            0xfed8_0000,
            0,
            &[
                select(0x0000),
                select(0x0010),
                select(0x0018),
                select(0x0200),
                alias_range_start(0x0300, 0x0300),
                range_end(0x03ff),
            ],
        )
        // Unity, read/write, for 00:02.0.
        .ivmd(0x21, 0x07, 0x0010, 0, 0, 0x000e_0000, 0x2_0000)
        // Exclusion range for 03:00.0 only: matches 03:01.0 through its alias.
        .ivmd(0x22, 0x08, 0x0300, 0x0300, 0, 0x1000_0000, 0x1000)
        // Read-only hint for everyone, no unity flag.
        .ivmd(0x20, 0x02, 0, 0, 0, 0x2000_0000, 0x1000)
        .build();
    let table = qemu_bridges_machine(AMD_IOMMU_72);
    let ivrs = Ivrs::parse(&bytes).unwrap();
    assert_eq!(ivrs.ivmds.len(), 3);
    let topology = IvrsTopology::new(&ivrs, &table).unwrap();
    let definitions = topology.memory_definitions();
    assert_eq!(definitions.len(), 3);

    assert!(definitions[0].ivmd.requires_unity_map());
    assert_eq!(definitions[0].ivmd.flags.to_string(), "unity, read, write");
    assert_eq!(definitions[0].ivmd.end_address(), 0x0010_0000);
    assert_eq!(
        definitions[0].devices,
        [IvmdDevice {
            address: addr(0, 2, 0),
            matched_id: 0x0010,
            via_alias: false
        }]
    );

    assert!(definitions[1].ivmd.requires_unity_map());
    assert_eq!(
        definitions[1].devices,
        [IvmdDevice {
            address: addr(3, 1, 0),
            matched_id: 0x0300,
            via_alias: true
        }]
    );

    // What the VFIO layer asks: unity and exclusion ranges, not hints.
    assert_eq!(
        topology.reserved_regions(&table, addr(0, 2, 0)),
        [(0x000e_0000, 0x000f_ffff)]
    );
    assert_eq!(
        topology.reserved_regions(&table, addr(3, 1, 0)),
        [(0x1000_0000, 0x1000_0fff)]
    );
    assert!(topology.reserved_regions(&table, addr(0, 3, 0)).is_empty());

    assert!(!definitions[2].ivmd.requires_unity_map());
    let everyone: Vec<PciAddress> = definitions[2].devices.iter().map(|d| d.address).collect();
    assert_eq!(
        everyone,
        [
            addr(0, 0, 0),
            addr(0, 2, 0),
            addr(0, 3, 0),
            addr(2, 0, 0),
            addr(3, 1, 0)
        ],
        "all *bound* functions: untranslated ones need no mapping"
    );
}

#[test]
fn type40_with_acpi_hid_and_extended_entries() {
    let bytes = IvrsBuilder::new(0x2801)
        .ivhd10(0x0002, 0xfd20_0000, 0, &[select(0x0010)])
        .ivhd_efr(0x11, 0x0002, 0xfd20_0000, 0, 1 << 9, &[select(0x0010)])
        .ivhd_efr(
            0x40,
            0x0002,
            0xfd20_0000,
            0,
            1 << 9, // PCSup: the counter banks need 512 KiB
            &[
                ext_select(0x0010, 0x8000_0000),
                acpi_hid(0x00a5, b"AMDI0020", b"ID00"),
                special(0x21, 0x00a0, 2),
            ],
        )
        .build();
    let table = qemu_default_machine(AMD_IOMMU_10);
    let topology = topology(&bytes, &table);
    assert_eq!(topology.selected_ivhd_type(), Some(IvhdType::Type40));
    assert_eq!(topology.ignored_ivhds(), 2);
    assert_eq!(topology.units()[0].register_size, 0x8_0000);
    let (_, settings) = topology.device_settings(addr(0, 2, 0)).unwrap();
    assert!(settings.ext.ats_disabled());
    let hid = &topology.acpi_hid_devices()[0];
    assert_eq!(&hid.hid, b"AMDI0020");
    assert_eq!(hid.uid, b"ID00");
    assert_eq!(hid.requester, addr(0, 0x14, 5));
    assert_eq!(
        topology.amd_units()[0]
            .device_map
            .lookup(0x00a5)
            .map(|s| s.coverage),
        Some(Coverage::AcpiHid)
    );
    assert_eq!(topology.special_devices()[0].variety, SpecialVariety::Hpet);
    assert_eq!(topology.special_devices()[0].handle, 0x21);
}

#[test]
fn acpi_hid_entries_outside_type40_are_ignored_with_a_warning() {
    let bytes = IvrsBuilder::new(0x2800)
        .ivhd10(
            0x0008,
            0xfed8_0000,
            0,
            &[select(0x0010), acpi_hid(0x00a5, b"AMDI0020", b"")],
        )
        .build();
    let table = qemu_default_machine(AMD_IOMMU_72);
    let topology = topology(&bytes, &table);
    assert!(topology.acpi_hid_devices().is_empty());
    assert_eq!(topology.amd_units()[0].device_map.lookup(0x00a5), None);
    assert!(
        topology
            .warnings()
            .contains(&TopologyWarning::AcpiHidOutsideType40 { entry_offset: 76 })
    );
}
