//! Shared test material: the captured QEMU tables, fake PCI machines that mirror the
//! QEMU machines they were captured on, and byte-level table editing.

use sluice_pci::fake::{FakeConfigSpace, FakeFunction};
use sluice_pci::{DeviceTable, EcamRegion, PciAddress, enumerate};

pub const QEMU72_DEFAULT: &[u8] = include_bytes!("../fixtures/qemu72-default.dmar");
pub const QEMU72_AW39: &[u8] = include_bytes!("../fixtures/qemu72-aw39.dmar");
pub const QEMU72_AW48: &[u8] = include_bytes!("../fixtures/qemu72-aw48.dmar");
pub const QEMU72_INTREMAP_OFF: &[u8] = include_bytes!("../fixtures/qemu72-intremap-off.dmar");
pub const QEMU72_INTREMAP_ON: &[u8] = include_bytes!("../fixtures/qemu72-intremap-on.dmar");
pub const QEMU72_DEVICE_IOTLB: &[u8] = include_bytes!("../fixtures/qemu72-device-iotlb.dmar");
pub const QEMU72_BRIDGES: &[u8] = include_bytes!("../fixtures/qemu72-bridges.dmar");
pub const QEMU10_DEFAULT: &[u8] = include_bytes!("../fixtures/qemu10-default.dmar");
pub const QEMU10_AW39: &[u8] = include_bytes!("../fixtures/qemu10-aw39.dmar");
pub const QEMU10_AW48: &[u8] = include_bytes!("../fixtures/qemu10-aw48.dmar");
pub const QEMU10_INTREMAP_OFF: &[u8] = include_bytes!("../fixtures/qemu10-intremap-off.dmar");
pub const QEMU10_INTREMAP_ON: &[u8] = include_bytes!("../fixtures/qemu10-intremap-on.dmar");
pub const QEMU10_DEVICE_IOTLB: &[u8] = include_bytes!("../fixtures/qemu10-device-iotlb.dmar");
pub const QEMU10_BRIDGES: &[u8] = include_bytes!("../fixtures/qemu10-bridges.dmar");

/// Every fixture with its name.
pub const FIXTURES: [(&str, &[u8]); 14] = [
    ("qemu72-default", QEMU72_DEFAULT),
    ("qemu72-aw39", QEMU72_AW39),
    ("qemu72-aw48", QEMU72_AW48),
    ("qemu72-intremap-off", QEMU72_INTREMAP_OFF),
    ("qemu72-intremap-on", QEMU72_INTREMAP_ON),
    ("qemu72-device-iotlb", QEMU72_DEVICE_IOTLB),
    ("qemu72-bridges", QEMU72_BRIDGES),
    ("qemu10-default", QEMU10_DEFAULT),
    ("qemu10-aw39", QEMU10_AW39),
    ("qemu10-aw48", QEMU10_AW48),
    ("qemu10-intremap-off", QEMU10_INTREMAP_OFF),
    ("qemu10-intremap-on", QEMU10_INTREMAP_ON),
    ("qemu10-device-iotlb", QEMU10_DEVICE_IOTLB),
    ("qemu10-bridges", QEMU10_BRIDGES),
];

/// The DRHD of every fixture starts right after the 48-byte header.
pub const DRHD_AT: usize = 0x30;
/// Its first device scope (the IOAPIC).
pub const FIRST_SCOPE_AT: usize = 0x40;

/// q35's MCFG: one window, segment 0, buses 0..=255.
pub const Q35_WINDOW: EcamRegion = EcamRegion {
    segment: 0,
    bus_start: 0,
    bus_end: 255,
    base: 0xB000_0000,
};

pub const fn at(bus: u8, device: u8, function: u8) -> PciAddress {
    PciAddress::new(0, bus, device, function)
}

/// The root-bus functions of every q35 machine the harness runs with `-nodefaults`:
/// MCH host bridge, the ICH9 LPC/ISA bridge (class 06/01, a type 0 header), AHCI, SMBus.
fn q35_chipset() -> FakeConfigSpace {
    FakeConfigSpace::new()
        .with(at(0, 0, 0), FakeFunction::host_bridge(0x8086, 0x29c0))
        .with(
            at(0, 0x1f, 0),
            FakeFunction::endpoint(0x8086, 0x2918, 0x06_01_00).multifunction(),
        )
        .with(
            at(0, 0x1f, 2),
            FakeFunction::endpoint(0x8086, 0x2922, 0x01_06_01),
        )
        .with(
            at(0, 0x1f, 3),
            FakeFunction::endpoint(0x8086, 0x2930, 0x0c_05_00),
        )
}

fn edu() -> FakeFunction {
    FakeFunction::conventional_endpoint(0x1234, 0x11e8).with_mem32_bar(
        0,
        0xfea0_0000,
        0x10_0000,
        false,
    )
}

/// The harness's "flat" machine (`-device intel-iommu -device edu`): edu at 00:01.0.
pub fn flat_config() -> FakeConfigSpace {
    q35_chipset().with(at(0, 1, 0), edu())
}

/// The harness's "bridges" machine:
///
/// ```text
/// 00:01.0 root port (buses 01-01) ── 01:00.0 edu
/// 00:02.0 root port (buses 02-03) ── 02:00.0 pcie-pci-bridge (03-03) ── 03:01.0 edu
/// 00:03.0 root port (buses 04-07) ── 04:00.0 x3130 upstream (05-07)
///                                      ├─ 05:00.0 downstream (06-06) ── 06:00.0 edu
///                                      └─ 05:01.0 downstream (07-07), empty
/// ```
pub fn bridges_config() -> FakeConfigSpace {
    q35_chipset()
        .with(at(0, 1, 0), FakeFunction::root_port(0, 1, 1))
        .with(at(1, 0, 0), edu())
        .with(at(0, 2, 0), FakeFunction::root_port(0, 2, 3))
        .with(at(2, 0, 0), FakeFunction::pcie_to_pci_bridge(2, 3, 3))
        .with(at(3, 1, 0), edu())
        .with(at(0, 3, 0), FakeFunction::root_port(0, 4, 7))
        .with(at(4, 0, 0), FakeFunction::upstream_port(4, 5, 7))
        .with(at(5, 0, 0), FakeFunction::downstream_port(5, 6, 6))
        .with(at(5, 1, 0), FakeFunction::downstream_port(5, 7, 7))
        .with(at(6, 0, 0), edu())
}

pub fn flat_machine() -> DeviceTable {
    enumerate(&flat_config(), &[Q35_WINDOW])
}

pub fn bridges_machine() -> DeviceTable {
    enumerate(&bridges_config(), &[Q35_WINDOW])
}

pub fn addresses(table: &DeviceTable) -> Vec<PciAddress> {
    table.iter().map(|device| device.address).collect()
}

/// Sets the header's length field to the table's length and fixes the checksum.
pub fn fix_up(table: &mut [u8]) {
    if table.len() >= 8 {
        let length = table.len() as u32;
        table[4..8].copy_from_slice(&length.to_le_bytes());
    }
    fix_checksum(table);
}

/// Makes the bytes sum to zero by adjusting the checksum byte (offset 9).
pub fn fix_checksum(table: &mut [u8]) {
    if table.len() > 9 {
        table[9] = 0;
        let sum = table.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte));
        table[9] = 0u8.wrapping_sub(sum);
    }
}

/// A fixture's header with `structures` instead of its own, length and checksum fixed.
pub fn with_structures(fixture: &[u8], structures: &[Vec<u8>]) -> Vec<u8> {
    let mut table = fixture[..48].to_vec();
    for structure in structures {
        table.extend_from_slice(structure);
    }
    fix_up(&mut table);
    table
}

/// A fixture with `edit` applied, length and checksum fixed.
pub fn edited(fixture: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut table = fixture.to_vec();
    edit(&mut table);
    fix_up(&mut table);
    table
}

/// Device scope bytes: type, length, flags 0, reserved, enumeration id, bus, path.
pub fn scope(scope_type: u8, enumeration_id: u8, start_bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
    let mut bytes = vec![
        scope_type,
        (6 + 2 * path.len()) as u8,
        0,
        0,
        enumeration_id,
        start_bus,
    ];
    for &(device, function) in path {
        bytes.extend_from_slice(&[device, function]);
    }
    bytes
}

pub fn endpoint(bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
    scope(1, 0, bus, path)
}

pub fn bridge(bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
    scope(2, 0, bus, path)
}

/// QEMU's IOAPIC scope: id 0, source id ff:00.0.
pub fn qemu_ioapic() -> Vec<u8> {
    scope(3, 0, 0xff, &[(0, 0)])
}

fn structure(structure_type: u16, fixed: &[u8], scopes: &[Vec<u8>]) -> Vec<u8> {
    let length = 4 + fixed.len() + scopes.iter().map(Vec::len).sum::<usize>();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&structure_type.to_le_bytes());
    bytes.extend_from_slice(&(length as u16).to_le_bytes());
    bytes.extend_from_slice(fixed);
    for scope in scopes {
        bytes.extend_from_slice(scope);
    }
    bytes
}

pub fn drhd(include_all: bool, segment: u16, base: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut fixed = vec![u8::from(include_all), 0];
    fixed.extend_from_slice(&segment.to_le_bytes());
    fixed.extend_from_slice(&base.to_le_bytes());
    structure(0, &fixed, scopes)
}

pub fn rmrr(segment: u16, base: u64, limit: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut fixed = vec![0, 0];
    fixed.extend_from_slice(&segment.to_le_bytes());
    fixed.extend_from_slice(&base.to_le_bytes());
    fixed.extend_from_slice(&limit.to_le_bytes());
    structure(1, &fixed, scopes)
}

pub fn rhsa(base: u64, proximity_domain: u32) -> Vec<u8> {
    let mut fixed = vec![0; 4];
    fixed.extend_from_slice(&base.to_le_bytes());
    fixed.extend_from_slice(&proximity_domain.to_le_bytes());
    structure(3, &fixed, &[])
}

pub fn andd(device_number: u8, name: &str) -> Vec<u8> {
    let mut fixed = vec![0, 0, 0, device_number];
    fixed.extend_from_slice(name.as_bytes());
    fixed.push(0);
    structure(4, &fixed, &[])
}

pub fn raw_structure(structure_type: u16, body: &[u8]) -> Vec<u8> {
    structure(structure_type, body, &[])
}

pub fn atsr(flags: u8, segment: u16, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut fixed = vec![flags, 0];
    fixed.extend_from_slice(&segment.to_le_bytes());
    structure(2, &fixed, scopes)
}

pub fn satc(flags: u8, segment: u16, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut fixed = vec![flags, 0];
    fixed.extend_from_slice(&segment.to_le_bytes());
    structure(5, &fixed, scopes)
}
