//! Hostile input: whatever the bytes, parsing returns `Ok` or `Err` (never panics,
//! never hangs), and a topology built from any `Ok` result against the fake QEMU
//! machines answers every question without panicking.

mod common;

use std::sync::OnceLock;

use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use sluice_amdvi::{Ivrs, IvrsTopology};
use sluice_iommu::IommuTopology;
use sluice_pci::{DeviceTable, PciAddress};

fn machines() -> &'static [DeviceTable] {
    static MACHINES: OnceLock<Vec<DeviceTable>> = OnceLock::new();
    MACHINES.get_or_init(|| {
        vec![
            qemu_default_machine(AMD_IOMMU_72),
            qemu_bridges_machine(AMD_IOMMU_10),
            two_segment_machine(),
        ]
    })
}

/// Parses, checks what an `Ok` promises, and uses the topology every way there is.
fn exercise(bytes: &[u8]) {
    let ivrs = match Ivrs::parse(bytes) {
        Ok(ivrs) => ivrs,
        Err(error) => {
            assert!(error.offset < bytes.len().max(10), "{error}");
            let _ = error.to_string();
            return;
        }
    };
    for ivhd in &ivrs.ivhds {
        let end = ivhd.offset + usize::from(ivhd.length);
        assert!(end <= bytes.len());
        let mut previous_end = ivhd.offset + ivhd.ivhd_type.header_len();
        for entry in &ivhd.entries {
            assert_eq!(entry.offset, previous_end, "entries are contiguous");
            previous_end = entry.offset + entry.len();
            assert!(previous_end <= end);
            let _ = entry.to_string();
        }
        if let Some(error) = &ivhd.entry_error {
            let first_entry = ivhd.offset + ivhd.ivhd_type.header_len();
            assert!(error.offset >= first_entry && error.offset < end, "{error}");
        }
        let _ = ivhd.register_size();
    }
    for ivmd in &ivrs.ivmds {
        assert!(ivmd.start_address.checked_add(ivmd.memory_length).is_some());
        let _ = ivmd.device_ids();
    }
    for table in machines() {
        let topology = match IvrsTopology::new(&ivrs, table) {
            Ok(topology) => topology,
            Err(error) => {
                let _ = error.to_string();
                continue;
            }
        };
        let _ = topology.to_string();
        for warning in topology.warnings() {
            let _ = warning.to_string();
        }
        for (index, unit) in topology.units().iter().enumerate() {
            assert_eq!(usize::from(unit.id.0), index);
            assert!(unit.register_size == 0x4000 || unit.register_size == 0x8_0000);
        }
        for device in table {
            if let Some(binding) = topology.binding(table, device.address) {
                assert!(usize::from(binding.unit.0) < topology.units().len());
                assert!(binding.firmware_aliases.len() <= 1);
                assert!(!binding.firmware_aliases.contains(&device.address.bdf()));
                assert!(!topology.is_iommu_function(device.address));
            }
        }
        // Addresses outside the table, and invalid ones, too.
        for address in [
            PciAddress::new(0, 0xff, 31, 7),
            PciAddress::new(7, 3, 1, 0),
            PciAddress::new(0, 0, 32, 0),
        ] {
            let _ = topology.binding(table, address);
        }
        for definition in topology.memory_definitions() {
            for device in &definition.devices {
                assert!(definition.ivmd.device_ids().contains(&device.matched_id));
            }
        }
    }
}

/// A header with the given IVinfo, then `body`; length and checksum fixed.
fn with_header(iv_info: u32, body: &[u8]) -> Vec<u8> {
    IvrsBuilder::new(iv_info).raw(body).build()
}

/// One device entry of a known (or nearly known) type with a random id.
fn device_entry() -> impl Strategy<Value = Vec<u8>> {
    let entry_type = prop_oneof![
        Just(0x00u8),
        Just(0x01),
        Just(0x02),
        Just(0x03),
        Just(0x04),
        Just(0x42),
        Just(0x43),
        Just(0x46),
        Just(0x47),
        Just(0x48),
        Just(0xF0),
        any::<u8>(),
    ];
    (
        entry_type,
        any::<u16>(),
        any::<u8>(),
        any::<u16>(),
        vec(any::<u8>(), 0..6),
    )
        .prop_map(|(entry_type, id, dte, extra, uid)| {
            let id = id.to_le_bytes();
            let extra = extra.to_le_bytes();
            let mut bytes = vec![entry_type, id[0], id[1], dte];
            match entry_type {
                0x40..=0x7F => bytes.extend_from_slice(&[extra[0], extra[1], extra[0], 1]),
                0xF0 => {
                    bytes.extend_from_slice(b"AMDI0020\0\0\0\0\0\0\0\0");
                    bytes.push(2);
                    bytes.push(uid.len() as u8);
                    bytes.extend_from_slice(&uid);
                }
                _ => {}
            }
            bytes
        })
}

/// An IVHD of a random type and segment with random entries, as raw bytes.
fn ivhd_block() -> impl Strategy<Value = Vec<u8>> {
    let ivhd_type = prop_oneof![Just(0x10u8), Just(0x11), Just(0x40), any::<u8>()];
    (ivhd_type, 0u16..3, any::<u64>(), vec(device_entry(), 0..12)).prop_map(
        |(ivhd_type, segment, efr, entries)| {
            let header_len = if ivhd_type == 0x10 { 24 } else { 40 };
            let mut block = vec![0u8; header_len];
            block[0] = ivhd_type;
            block[4] = 0x08; // IOMMU at 00:01.0
            block[8..16].copy_from_slice(&0xfed8_0000u64.to_le_bytes());
            block[16..18].copy_from_slice(&segment.to_le_bytes());
            if header_len == 40 {
                block[24..32].copy_from_slice(&efr.to_le_bytes());
            }
            for entry in entries {
                block.extend_from_slice(&entry);
            }
            let length = block.len() as u16;
            block[2..4].copy_from_slice(&length.to_le_bytes());
            block
        },
    )
}

/// An IVMD with random fields.
fn ivmd_block() -> impl Strategy<Value = Vec<u8>> {
    (
        0x20u8..0x23,
        any::<u8>(),
        any::<u16>(),
        any::<u16>(),
        0u16..3,
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(ivmd_type, flags, id, aux, segment, start, length)| {
            let mut block = vec![ivmd_type, flags, 32, 0];
            block.extend_from_slice(&id.to_le_bytes());
            block.extend_from_slice(&aux.to_le_bytes());
            block.extend_from_slice(&segment.to_le_bytes());
            block.extend_from_slice(&[0; 6]);
            block.extend_from_slice(&(start >> 16).to_le_bytes());
            block.extend_from_slice(&(length >> 40).to_le_bytes());
            block
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes(bytes in vec(any::<u8>(), 0..400)) {
        exercise(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header(
        iv_info in any::<u32>(),
        body in vec(any::<u8>(), 0..400),
    ) {
        exercise(&with_header(iv_info, &body));
    }

    #[test]
    fn mutated_fixtures(
        fixture in 0..FIXTURES.len(),
        edits in vec((any::<Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<Index>()),
        fix_length in any::<bool>(),
    ) {
        let mut bytes = FIXTURES[fixture].1.to_vec();
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        if fix_length {
            fix_length_and_checksum(&mut bytes);
        } else {
            fix_checksum(&mut bytes);
        }
        exercise(&bytes);
    }

    #[test]
    fn generated_blocks(
        iv_info in any::<u32>(),
        ivhds in vec(ivhd_block(), 0..4),
        ivmds in vec(ivmd_block(), 0..3),
    ) {
        let mut body = Vec::new();
        for block in ivhds.iter().chain(&ivmds) {
            body.extend_from_slice(block);
        }
        exercise(&with_header(iv_info, &body));
    }
}

#[test]
fn every_fixture_exercises_cleanly() {
    for (name, bytes) in FIXTURES {
        assert!(Ivrs::parse(bytes).is_ok(), "{name}");
        exercise(bytes);
    }
}
