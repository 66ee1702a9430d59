//! The IVRS tables QEMU 7.2 and 10.0 build, captured by our kernel, decoded by hand
//! (see the comments) and checked field by field.
//!
//! Layout common to all of them: 48-byte header (OEM "BOCHS ", table id "BXPC    ",
//! revision 1), then per IOMMU an IVHD type 10h at offset 0x30 (flags 0xd1, device id
//! 0x0008 = 00:01.0, capability at 0x40, MMIO 0xfed80000, segment 0, feature
//! reporting 0x44). QEMU 9.0+ adds an IVHD type 11h describing the same IOMMU with
//! the same entries (flags 0x11, EFR image 0x29d3), and sets IVinfo.EFRSup: that is
//! why the QEMU 10 tables are larger.

mod common;

use common::*;
use sluice_amdvi::{
    DeviceEntryKind, ExtendedFeatures, FeatureReporting, IommuInfo, IvInfo, IvhdAttributes,
    IvhdFeatures, IvhdFlags, IvhdType, Ivrs, SpecialVariety,
};

fn parse(bytes: &[u8]) -> Ivrs {
    Ivrs::parse(bytes).expect("fixture parses")
}

/// `(offset, text)` of every entry of IVHD `index`.
fn entries(ivrs: &Ivrs, index: usize) -> Vec<(usize, String)> {
    ivrs.ivhds[index]
        .entries
        .iter()
        .map(|entry| (entry.offset, entry.to_string()))
        .collect()
}

/// Shifts hand-decoded entry offsets to where an IVHD's entries start.
fn at(start: usize, list: &[&str]) -> Vec<(usize, String)> {
    let mut offset = start;
    list.iter()
        .map(|text| {
            let entry = (offset, text.to_string());
            offset += if text.starts_with("alias") || text.starts_with("special") {
                8
            } else {
                4
            };
            entry
        })
        .collect()
}

/// The root-bus devices of `-device amd-iommu -device edu` in select entries, then
/// the IOAPIC (special, variety 1, handle 0, source 00:14.0) when intremap is on.
const DEFAULT_ENTRIES: [&str; 7] = [
    "select 00:00.0", // MCH
    "select 00:01.0", // the amd-iommu itself
    "select 00:02.0", // edu
    "select 00:1f.0", // ICH9 LPC
    "select 00:1f.2", // ICH9 SATA
    "select 00:1f.3", // ICH9 SMBus
    "special IOAPIC 0 source 00:14.0",
];

const BRIDGES_ENTRIES: [&str; 21] = [
    "select 00:00.0",
    "select 00:01.0",
    "select 00:02.0", // root port, secondary bus 1 == subordinate: a range
    "range-start 01:00.0",
    "range-end 01:1f.7",
    "select 00:03.0",                          // root port, buses 2-3: walked
    "select 02:00.0",                          // pcie-pci-bridge: conventional bus 3 behind it
    "alias-range-start 03:00.0 alias 03:00.0", // DMA carries (secondary bus, devfn 0)
    "range-end 03:1f.7",
    "select 00:04.0", // root port, buses 4-7: walked
    "select 04:00.0", // x3130 upstream port, buses 5-7: walked
    "select 05:00.0", // downstream port, bus 6 (edu): a range
    "range-start 06:00.0",
    "range-end 06:1f.7",
    "select 05:01.0", // second downstream port, bus 7 (empty): a range
    "range-start 07:00.0",
    "range-end 07:1f.7",
    "select 00:1f.0",
    "select 00:1f.2",
    "select 00:1f.3",
    "special IOAPIC 0 source 00:14.0",
];

#[test]
fn header_and_ivinfo() {
    let ivrs = parse(QEMU72_DEFAULT);
    assert_eq!(&ivrs.header.signature, b"IVRS");
    assert_eq!(ivrs.header.length, 104);
    assert_eq!(ivrs.header.revision, 1);
    assert_eq!(ivrs.header.checksum, 0x4b);
    assert_eq!(&ivrs.header.oem_id, b"BOCHS ");
    assert_eq!(&ivrs.header.oem_table_id, b"BXPC    ");
    assert_eq!(ivrs.header.oem_revision, 1);
    assert_eq!(&ivrs.header.creator_id, b"BXPC");
    assert_eq!(ivrs.header.creator_revision, 1);
    assert_eq!(ivrs.reserved, [0; 8]);
    // 7.2: PAsize 40, nothing else (no EFRSup: no IVHD 11h to carry an EFR image).
    assert_eq!(
        ivrs.iv_info,
        IvInfo {
            raw: 0x2800,
            efr_sup: false,
            dma_remap_sup: false,
            gva_size: 0,
            pa_size: 40,
            va_size: 0,
            ht_ats_resv: false,
        }
    );
    assert_eq!(ivrs.iv_info.to_string(), "PA 40 bits, VA unstated");
    // 10.0: EFRSup added.
    let ivrs = parse(QEMU10_DEFAULT);
    assert_eq!(ivrs.header.length, 176);
    assert_eq!(ivrs.iv_info.raw, 0x2801);
    assert!(ivrs.iv_info.efr_sup);
    assert_eq!(ivrs.iv_info.pa_size, 40);
    assert_eq!(
        ivrs.iv_info.to_string(),
        "PA 40 bits, VA unstated, EFR images valid"
    );
}

#[test]
fn qemu72_default_has_one_ivhd_10h() {
    let ivrs = parse(QEMU72_DEFAULT);
    assert_eq!(ivrs.ivhds.len(), 1);
    assert!(ivrs.ivmds.is_empty() && ivrs.skipped_blocks.is_empty());
    let ivhd = &ivrs.ivhds[0];
    assert_eq!(ivhd.offset, 0x30);
    assert_eq!(ivhd.ivhd_type, IvhdType::Type10);
    // 0xd1: HtTunEn, IotlbSup, PreFSup, PPRSup.
    assert_eq!(
        ivhd.flags,
        IvhdFlags::HT_TUN_EN | IvhdFlags::IOTLB_SUP | IvhdFlags::PREF_SUP | IvhdFlags::PPR_SUP
    );
    assert_eq!(ivhd.length, 56); // 24 header + 6 selects * 4 + special 8
    assert_eq!(ivhd.device_id, 0x0008);
    assert_eq!(ivhd.iommu_function(), addr(0, 1, 0));
    assert_eq!(ivhd.capability_offset, 0x40);
    assert_eq!(ivhd.base_address, 0xfed8_0000);
    assert_eq!(ivhd.segment, 0);
    assert_eq!(ivhd.info, IommuInfo::from_raw(0));
    // 0x44 = GTSup | GASup; HATS/GATS 0 (QEMU's 48 << 30 falls off the word).
    let IvhdFeatures::Reporting(reporting) = ivhd.features else {
        panic!("type 10h reports features in its own word");
    };
    assert_eq!(reporting, FeatureReporting::from_raw(0x44));
    assert!(reporting.gt_sup && reporting.ga_sup);
    assert_eq!((reporting.hats, reporting.gats), (0, 0));
    assert_eq!(ivhd.efr(), None);
    assert_eq!(ivhd.register_size(), 0x4000);
    assert_eq!(ivhd.entry_error, None);
    assert_eq!(entries(&ivrs, 0), at(0x48, &DEFAULT_ENTRIES));
    assert_eq!(ivrs.selected_ivhd_type(), Some(IvhdType::Type10));
    assert_eq!(ivrs.selected_ivhds().count(), 1);
    // The special entry's fields, not just its text.
    let special = &ivhd.entries[6];
    assert_eq!(special.offset, 0x60);
    assert_eq!(
        special.kind,
        DeviceEntryKind::Special {
            handle: 0,
            source_id: 0x00a0,
            variety: SpecialVariety::IoApic
        }
    );
}

#[test]
fn qemu10_default_describes_the_iommu_twice() {
    let ivrs = parse(QEMU10_DEFAULT);
    assert_eq!(ivrs.ivhds.len(), 2);
    let (legacy, full) = (&ivrs.ivhds[0], &ivrs.ivhds[1]);
    // The 10h block is byte-for-byte the one of QEMU 7.2.
    assert_eq!(legacy.offset, 0x30);
    assert_eq!(legacy.ivhd_type, IvhdType::Type10);
    assert_eq!(legacy.length, 56);
    assert_eq!(QEMU10_DEFAULT[0x30..0x68], QEMU72_DEFAULT[0x30..0x68]);
    assert_eq!(entries(&ivrs, 0), at(0x48, &DEFAULT_ENTRIES));
    // Then the 11h block: 40-byte header, same entries.
    assert_eq!(full.offset, 0x68);
    assert_eq!(full.ivhd_type, IvhdType::Type11);
    assert_eq!(full.length, 72);
    assert_eq!(full.flags, IvhdFlags::HT_TUN_EN | IvhdFlags::IOTLB_SUP);
    assert_eq!(
        (
            full.device_id,
            full.capability_offset,
            full.base_address,
            full.segment
        ),
        (0x0008, 0x40, 0xfed8_0000, 0)
    );
    assert_eq!(
        full.features,
        IvhdFeatures::Efr {
            attributes: IvhdAttributes::from_raw(0),
            efr: ExtendedFeatures::from_raw(0x29d3),
            efr2: 0,
        }
    );
    let efr = full.efr().copied().unwrap_or_default();
    assert!(efr.pref_sup && efr.ppr_sup && efr.gt_sup && efr.ia_sup && efr.ga_sup);
    assert!(efr.he_sup && !efr.xt_sup && !efr.pc_sup);
    assert_eq!(efr.host_page_table_levels(), Some(6));
    assert_eq!(full.register_size(), 0x4000);
    assert_eq!(entries(&ivrs, 1), at(0x90, &DEFAULT_ENTRIES));
    assert_eq!(ivrs.selected_ivhd_type(), Some(IvhdType::Type11));
    let selected: Vec<usize> = ivrs.selected_ivhds().map(|ivhd| ivhd.offset).collect();
    assert_eq!(selected, [0x68]);
}

#[test]
fn intremap_on_is_the_default_and_adds_the_ioapic() {
    // Under TCG amd-iommu's interrupt remapping defaults to on: same bytes.
    assert_eq!(QEMU72_INTREMAP_ON, QEMU72_DEFAULT);
    assert_eq!(QEMU10_INTREMAP_ON, QEMU10_DEFAULT);
    for bytes in [QEMU72_INTREMAP_ON, QEMU10_INTREMAP_ON] {
        let ivrs = parse(bytes);
        for ivhd in &ivrs.ivhds {
            let specials: Vec<_> = ivhd
                .entries
                .iter()
                .filter(|entry| matches!(entry.kind, DeviceEntryKind::Special { .. }))
                .map(ToString::to_string)
                .collect();
            assert_eq!(specials, ["special IOAPIC 0 source 00:14.0"]);
        }
    }
}

#[test]
fn intremap_off_drops_the_special_entry() {
    let ivrs = parse(QEMU72_INTREMAP_OFF);
    assert_eq!(ivrs.header.length, 96);
    assert_eq!(ivrs.ivhds.len(), 1);
    assert_eq!(ivrs.ivhds[0].length, 48);
    assert_eq!(entries(&ivrs, 0), at(0x48, &DEFAULT_ENTRIES[..6]));

    let ivrs = parse(QEMU10_INTREMAP_OFF);
    assert_eq!(ivrs.header.length, 160);
    assert_eq!(
        ivrs.ivhds
            .iter()
            .map(|ivhd| (ivhd.offset, ivhd.ivhd_type, ivhd.length))
            .collect::<Vec<_>>(),
        [(0x30, IvhdType::Type10, 48), (0x60, IvhdType::Type11, 64)]
    );
    assert_eq!(entries(&ivrs, 0), at(0x48, &DEFAULT_ENTRIES[..6]));
    assert_eq!(entries(&ivrs, 1), at(0x88, &DEFAULT_ENTRIES[..6]));
}

#[test]
fn device_iotlb_changes_nothing_in_the_ivrs() {
    // QEMU sets IotlbSup in the IVHD flags whether or not device-iotlb is on; the
    // option only changes what the emulated IOMMU does with ATS requests.
    assert_eq!(QEMU72_DEVICE_IOTLB, QEMU72_DEFAULT);
    assert_eq!(QEMU10_DEVICE_IOTLB, QEMU10_DEFAULT);
    let ivrs = parse(QEMU72_DEVICE_IOTLB);
    assert!(ivrs.ivhds[0].flags.contains(IvhdFlags::IOTLB_SUP));
}

#[test]
fn bridges_ranges_and_the_alias_range_behind_the_pcie_to_pci_bridge() {
    let ivrs = parse(QEMU72_BRIDGES);
    assert_eq!(ivrs.header.length, 164);
    assert_eq!(ivrs.ivhds.len(), 1);
    assert_eq!(ivrs.ivhds[0].length, 116); // 24 + 21 entries (19 of 4 bytes, 2 of 8)
    assert_eq!(entries(&ivrs, 0), at(0x48, &BRIDGES_ENTRIES));
    // QEMU declares the bridge's secondary side as aliased to 03:00.0, i.e.
    // (secondary bus, devfn 0): what a PCIe-to-PCI bridge puts in the requests it
    // forwards. (For a conventional PCI bridge it would name the bridge itself.)
    let alias = &ivrs.ivhds[0].entries[7];
    assert_eq!(alias.offset, 0x64);
    assert_eq!(alias.entry_type, 0x43);
    assert_eq!(alias.device_id, 0x0300);
    assert_eq!(
        alias.kind,
        DeviceEntryKind::AliasRangeStart { alias: 0x0300 }
    );

    let ivrs = parse(QEMU10_BRIDGES);
    assert_eq!(ivrs.header.length, 296);
    assert_eq!(
        ivrs.ivhds
            .iter()
            .map(|ivhd| (ivhd.offset, ivhd.ivhd_type, ivhd.length))
            .collect::<Vec<_>>(),
        [(0x30, IvhdType::Type10, 116), (0xa4, IvhdType::Type11, 132)]
    );
    assert_eq!(entries(&ivrs, 0), at(0x48, &BRIDGES_ENTRIES));
    assert_eq!(entries(&ivrs, 1), at(0xcc, &BRIDGES_ENTRIES));
}

#[test]
fn both_qemu_versions_agree_on_everything_but_the_11h_block() {
    for (old, new) in [
        (QEMU72_DEFAULT, QEMU10_DEFAULT),
        (QEMU72_INTREMAP_OFF, QEMU10_INTREMAP_OFF),
        (QEMU72_BRIDGES, QEMU10_BRIDGES),
    ] {
        let (old, new) = (parse(old), parse(new));
        assert_eq!(old.ivhds[0], new.ivhds[0]);
        let old_entries: Vec<String> = old.ivhds[0].entries.iter().map(|e| e.to_string()).collect();
        let new_entries: Vec<String> = new.ivhds[1].entries.iter().map(|e| e.to_string()).collect();
        assert_eq!(old_entries, new_entries);
        assert_eq!(old.header.oem_id, new.header.oem_id);
        assert_eq!(new.iv_info.raw, old.iv_info.raw | 1);
    }
}
