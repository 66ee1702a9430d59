//! Shared by the integration tests: the captured fixtures, byte-editing helpers, a
//! builder for hand-made tables and fake PCI machines mirroring the QEMU ones.
#![allow(dead_code)] // each test file uses a different part

use sluice_pci::fake::{FakeConfigSpace, FakeFunction};
use sluice_pci::{DeviceTable, EcamRegion, PciAddress, enumerate};

pub const QEMU72_DEFAULT: &[u8] = include_bytes!("../fixtures/qemu72-default.ivrs");
pub const QEMU72_INTREMAP_ON: &[u8] = include_bytes!("../fixtures/qemu72-intremap-on.ivrs");
pub const QEMU72_INTREMAP_OFF: &[u8] = include_bytes!("../fixtures/qemu72-intremap-off.ivrs");
pub const QEMU72_DEVICE_IOTLB: &[u8] = include_bytes!("../fixtures/qemu72-device-iotlb.ivrs");
pub const QEMU72_BRIDGES: &[u8] = include_bytes!("../fixtures/qemu72-bridges.ivrs");
pub const QEMU10_DEFAULT: &[u8] = include_bytes!("../fixtures/qemu10-default.ivrs");
pub const QEMU10_INTREMAP_ON: &[u8] = include_bytes!("../fixtures/qemu10-intremap-on.ivrs");
pub const QEMU10_INTREMAP_OFF: &[u8] = include_bytes!("../fixtures/qemu10-intremap-off.ivrs");
pub const QEMU10_DEVICE_IOTLB: &[u8] = include_bytes!("../fixtures/qemu10-device-iotlb.ivrs");
pub const QEMU10_BRIDGES: &[u8] = include_bytes!("../fixtures/qemu10-bridges.ivrs");

/// Every fixture with its name.
pub const FIXTURES: [(&str, &[u8]); 10] = [
    ("qemu72-default", QEMU72_DEFAULT),
    ("qemu72-intremap-on", QEMU72_INTREMAP_ON),
    ("qemu72-intremap-off", QEMU72_INTREMAP_OFF),
    ("qemu72-device-iotlb", QEMU72_DEVICE_IOTLB),
    ("qemu72-bridges", QEMU72_BRIDGES),
    ("qemu10-default", QEMU10_DEFAULT),
    ("qemu10-intremap-on", QEMU10_INTREMAP_ON),
    ("qemu10-intremap-off", QEMU10_INTREMAP_OFF),
    ("qemu10-device-iotlb", QEMU10_DEVICE_IOTLB),
    ("qemu10-bridges", QEMU10_BRIDGES),
];

/// QEMU's amd-iommu PCI device id: 0x0008 on 7.2, 0x1419 on 10.0.
pub const AMD_IOMMU_72: u16 = 0x0008;
pub const AMD_IOMMU_10: u16 = 0x1419;

pub const fn addr(bus: u8, device: u8, function: u8) -> PciAddress {
    PciAddress::new(0, bus, device, function)
}

/// Makes the table's bytes sum to zero again.
pub fn fix_checksum(bytes: &mut [u8]) {
    if bytes.len() < 10 {
        return;
    }
    bytes[9] = 0;
    let sum = bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte));
    bytes[9] = 0u8.wrapping_sub(sum);
}

/// Sets the header's length field to the slice length and fixes the checksum.
pub fn fix_length_and_checksum(bytes: &mut [u8]) {
    if bytes.len() >= 8 {
        let length = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&length.to_le_bytes());
    }
    fix_checksum(bytes);
}

/// A copy of `fixture` with `edit` applied and the checksum fixed.
pub fn edited(fixture: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = fixture.to_vec();
    edit(&mut bytes);
    fix_checksum(&mut bytes);
    bytes
}

pub fn put_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

// Device entries.
pub fn select(id: u16) -> Vec<u8> {
    entry4(0x02, id, 0)
}
pub fn range_start(id: u16) -> Vec<u8> {
    entry4(0x03, id, 0)
}
pub fn range_end(id: u16) -> Vec<u8> {
    entry4(0x04, id, 0)
}
pub fn entry4(entry_type: u8, id: u16, dte: u8) -> Vec<u8> {
    let id = id.to_le_bytes();
    vec![entry_type, id[0], id[1], dte]
}
pub fn alias_select(id: u16, alias: u16) -> Vec<u8> {
    entry8(0x42, id, alias)
}
pub fn alias_range_start(id: u16, alias: u16) -> Vec<u8> {
    entry8(0x43, id, alias)
}
fn entry8(entry_type: u8, id: u16, alias: u16) -> Vec<u8> {
    let id = id.to_le_bytes();
    let alias = alias.to_le_bytes();
    vec![entry_type, id[0], id[1], 0, 0, alias[0], alias[1], 0]
}
pub fn ext_select(id: u16, ext: u32) -> Vec<u8> {
    let mut entry = entry4(0x46, id, 0);
    entry.extend_from_slice(&ext.to_le_bytes());
    entry
}
pub fn special(handle: u8, source: u16, variety: u8) -> Vec<u8> {
    let source = source.to_le_bytes();
    vec![0x48, 0, 0, 0, handle, source[0], source[1], variety]
}
pub fn acpi_hid(id: u16, hid: &[u8; 8], uid: &[u8]) -> Vec<u8> {
    let mut entry = entry4(0xF0, id, 0);
    entry.extend_from_slice(hid);
    entry.extend_from_slice(&[0; 8]);
    entry.push(2);
    entry.push(uid.len() as u8);
    entry.extend_from_slice(uid);
    entry
}

/// Builds IVRS tables by hand; `build` fills in length and checksum.
pub struct IvrsBuilder {
    bytes: Vec<u8>,
}

impl IvrsBuilder {
    pub fn new(iv_info: u32) -> Self {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"IVRS");
        bytes.extend_from_slice(&[0; 4]); // length
        bytes.push(2); // revision
        bytes.push(0); // checksum
        bytes.extend_from_slice(b"SLUICE");
        bytes.extend_from_slice(b"TESTIVRS");
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(b"TEST");
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&iv_info.to_le_bytes());
        bytes.extend_from_slice(&[0; 8]);
        Self { bytes }
    }

    /// An IVHD type 10h.
    pub fn ivhd10(self, device_id: u16, base: u64, segment: u16, entries: &[Vec<u8>]) -> Self {
        self.ivhd(0x10, 0xd1, device_id, base, segment, 0x44, None, entries)
    }

    /// An IVHD type 11h or 40h with an EFR image.
    pub fn ivhd_efr(
        self,
        ivhd_type: u8,
        device_id: u16,
        base: u64,
        segment: u16,
        efr: u64,
        entries: &[Vec<u8>],
    ) -> Self {
        self.ivhd(
            ivhd_type,
            0x11,
            device_id,
            base,
            segment,
            0,
            Some(efr),
            entries,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn ivhd(
        mut self,
        ivhd_type: u8,
        flags: u8,
        device_id: u16,
        base: u64,
        segment: u16,
        features: u32,
        efr: Option<u64>,
        entries: &[Vec<u8>],
    ) -> Self {
        let mut block = vec![ivhd_type, flags, 0, 0];
        block.extend_from_slice(&device_id.to_le_bytes());
        block.extend_from_slice(&0x40u16.to_le_bytes());
        block.extend_from_slice(&base.to_le_bytes());
        block.extend_from_slice(&segment.to_le_bytes());
        block.extend_from_slice(&0u16.to_le_bytes());
        block.extend_from_slice(&features.to_le_bytes());
        if let Some(efr) = efr {
            block.extend_from_slice(&efr.to_le_bytes());
            block.extend_from_slice(&0u64.to_le_bytes());
        }
        for entry in entries {
            block.extend_from_slice(entry);
        }
        let length = block.len() as u16;
        put_u16(&mut block, 2, length);
        self.bytes.extend_from_slice(&block);
        self
    }

    /// An IVMD of `ivmd_type` (0x20..0x22).
    #[allow(clippy::too_many_arguments)]
    pub fn ivmd(
        mut self,
        ivmd_type: u8,
        flags: u8,
        device_id: u16,
        aux: u16,
        segment: u16,
        start: u64,
        length: u64,
    ) -> Self {
        let mut block = vec![ivmd_type, flags, 32, 0];
        block.extend_from_slice(&device_id.to_le_bytes());
        block.extend_from_slice(&aux.to_le_bytes());
        block.extend_from_slice(&segment.to_le_bytes());
        block.extend_from_slice(&[0; 6]);
        block.extend_from_slice(&start.to_le_bytes());
        block.extend_from_slice(&length.to_le_bytes());
        self.bytes.extend_from_slice(&block);
        self
    }

    /// Arbitrary bytes appended as they are.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    pub fn build(mut self) -> Vec<u8> {
        fix_length_and_checksum(&mut self.bytes);
        self.bytes
    }
}

fn ecam(segment: u16) -> EcamRegion {
    EcamRegion {
        segment,
        bus_start: 0,
        bus_end: 255,
        base: 0xb000_0000,
    }
}

/// The q35 functions every QEMU machine here has: MCH, the amd-iommu at 00:01.0 and
/// the ICH9 functions at 00:1f.x (`-nodefaults`: no VGA, no NIC).
fn q35_base(iommu_device_id: u16) -> FakeConfigSpace {
    FakeConfigSpace::new()
        .with(addr(0, 0, 0), FakeFunction::host_bridge(0x8086, 0x29c0))
        .with(
            addr(0, 1, 0),
            FakeFunction::endpoint(0x1022, iommu_device_id, 0x08_06_00),
        )
        .with(
            addr(0, 0x1f, 0),
            FakeFunction::endpoint(0x8086, 0x2918, 0x06_01_00).multifunction(),
        )
        .with(
            addr(0, 0x1f, 2),
            FakeFunction::endpoint(0x8086, 0x2922, 0x01_06_01),
        )
        .with(
            addr(0, 0x1f, 3),
            FakeFunction::endpoint(0x8086, 0x2930, 0x0c_05_00),
        )
}

fn edu() -> FakeFunction {
    FakeFunction::conventional_endpoint(0x1234, 0x11e8)
}

/// `-device amd-iommu -device edu`: the edu at 00:02.0.
pub fn qemu_default_machine(iommu_device_id: u16) -> DeviceTable {
    let cfg = q35_base(iommu_device_id).with(addr(0, 2, 0), edu());
    enumerate(&cfg, &[ecam(0)])
}

/// The harness's `bridges` topology, as the fixtures describe it:
/// - root port 00:02.0, edu 01:00.0 below;
/// - root port 00:03.0, pcie-pci-bridge 02:00.0 below, conventional edu 03:01.0
///   behind that;
/// - root port 00:04.0, x3130 upstream port 04:00.0 below, downstream ports
///   05:00.0 (edu 06:00.0 below) and 05:01.0 (bus 07, empty).
pub fn qemu_bridges_machine(iommu_device_id: u16) -> DeviceTable {
    let last_bus = 7;
    let cfg = q35_base(iommu_device_id)
        .with(addr(0, 2, 0), FakeFunction::root_port(0, 1, 1))
        .with(addr(1, 0, 0), FakeFunction::pcie_endpoint(0x1234, 0x11e8))
        .with(addr(0, 3, 0), FakeFunction::root_port(0, 2, 3))
        .with(addr(2, 0, 0), FakeFunction::pcie_to_pci_bridge(2, 3, 3))
        .with(addr(3, 1, 0), edu())
        .with(addr(0, 4, 0), FakeFunction::root_port(0, 4, last_bus))
        .with(addr(4, 0, 0), FakeFunction::upstream_port(4, 5, last_bus))
        .with(addr(5, 0, 0), FakeFunction::downstream_port(5, 6, 6))
        .with(addr(6, 0, 0), FakeFunction::pcie_endpoint(0x1234, 0x11e8))
        .with(addr(5, 1, 0), FakeFunction::downstream_port(5, 7, 7));
    enumerate(&cfg, &[ecam(0)])
}

/// Two segments, each with a host bridge, an edu at 00:02.0 and a root port
/// 00:03.0 > edu 01:00.0. Segment 1 also has its IOMMU function at 00:01.0;
/// segment 0 has it there too.
pub fn two_segment_machine() -> DeviceTable {
    let mut cfg = FakeConfigSpace::new();
    for segment in [0, 1] {
        let at = |bus, device| PciAddress::new(segment, bus, device, 0);
        cfg.insert(at(0, 0), FakeFunction::host_bridge(0x8086, 0x29c0));
        cfg.insert(
            at(0, 1),
            FakeFunction::endpoint(0x1022, AMD_IOMMU_10, 0x08_06_00),
        );
        cfg.insert(at(0, 2), edu());
        cfg.insert(at(0, 3), FakeFunction::root_port(0, 1, 1));
        cfg.insert(at(1, 0), FakeFunction::pcie_endpoint(0x1234, 0x11e8));
    }
    enumerate(&cfg, &[ecam(0), ecam(1)])
}
