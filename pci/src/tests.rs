//! Enumeration tests over the fake config space: topologies, BARs through the
//! whole walk, the boot-log format, every malformed case, and random config
//! spaces.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use crate::fake::{FakeConfigSpace, FakeFunction};
use crate::*;

/// QEMU q35's MCFG: one window, segment 0, buses 0..=255.
const Q35_WINDOW: EcamRegion = EcamRegion {
    segment: 0,
    bus_start: 0,
    bus_end: 255,
    base: 0xB000_0000,
};

fn at(bus: u8, device: u8, function: u8) -> PciAddress {
    PciAddress::new(0, bus, device, function)
}

fn addresses<'a>(devices: impl Iterator<Item = &'a PciDevice>) -> Vec<PciAddress> {
    devices.map(|device| device.address).collect()
}

/// A q35-like machine:
///
/// ```text
/// bus 0  00.0 host bridge
///        01.0 edu (conventional)
///        02.0 root port ── bus 1  00.0 switch upstream port ── bus 2
///                                     bus 2  00.0 downstream port ── bus 3  00.0 NVMe (PCIe)
///                                            01.0 downstream port ── bus 4  00.0 NIC (PCIe, SR-IOV)
///        03.0 root port ── bus 5  00.0 PCIe-to-PCI bridge ── bus 6
///                                     bus 6  01.0 conventional device
///                                            02.0 PCI bridge ── bus 7  00.0 conventional device
///        1f.0 ISA bridge, multifunction: 1f.2 SATA, 1f.3 SMBus
/// ```
fn q35_like() -> FakeConfigSpace {
    let decoding = reg::COMMAND_IO_SPACE | reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER;
    FakeConfigSpace::new()
        .with(at(0, 0, 0), FakeFunction::host_bridge(0x8086, 0x29c0))
        .with(
            at(0, 1, 0),
            FakeFunction::conventional_endpoint(0x1234, 0x11e8)
                .with_revision(0x10)
                .with_interrupt_pin(1)
                .with_subsystem(0x1af4, 0x1100)
                .with_mem32_bar(0, 0xfea0_0000, 0x10_0000, false)
                .with_msi(0, true, false)
                .with_command(decoding),
        )
        .with(
            at(0, 2, 0),
            FakeFunction::root_port(0, 1, 4).with_mem32_bar(0, 0xfeb0_0000, 0x1000, false),
        )
        .with(at(1, 0, 0), FakeFunction::upstream_port(1, 2, 4))
        .with(at(2, 0, 0), FakeFunction::downstream_port(2, 3, 3))
        .with(at(2, 1, 0), FakeFunction::downstream_port(2, 4, 4))
        .with(
            at(3, 0, 0),
            FakeFunction::endpoint(0x1b36, 0x0010, 0x01_08_02)
                .with_pcie_flags(PciePortType::Endpoint, true, false)
                .with_msix(65, 0, 0x2000, 0, 0x3000)
                .with_mem64_bar(0, 0x8_0000_0000, 0x4000, false)
                .with_command(decoding),
        )
        .with(
            at(4, 0, 0),
            FakeFunction::pcie_endpoint(0x8086, 0x10c9)
                .with_power_management(false, false, true)
                .with_msix(10, 3, 0, 3, 0x2000)
                .with_mem64_bar(0, 0x8_0010_0000, 0x2_0000, true)
                .with_io_bar(2, 0xc040, 0x20)
                .with_mem32_bar(3, 0xfe80_0000, 0x4000, false)
                .with_ari(0)
                .with_sriov(8, 8, 0, 0x80, 2, 0x10ca)
                .with_command(decoding),
        )
        .with(at(0, 3, 0), FakeFunction::root_port(0, 5, 7))
        .with(at(5, 0, 0), FakeFunction::pcie_to_pci_bridge(5, 6, 7))
        .with(
            at(6, 1, 0),
            FakeFunction::conventional_endpoint(0x1234, 0x11e8).with_io_bar(0, 0xd000, 0x100),
        )
        .with(at(6, 2, 0), FakeFunction::pci_bridge(6, 7, 7))
        .with(
            at(7, 0, 0),
            FakeFunction::conventional_endpoint(0x10ec, 0x8029),
        )
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

#[test]
fn q35_like_topology_parents_and_kinds() {
    let cfg = q35_like();
    let table = enumerate(&cfg, &[Q35_WINDOW]);

    let expected: Vec<(PciAddress, DeviceKind, Option<PciAddress>)> = vec![
        (at(0, 0, 0), DeviceKind::HostBridge, None),
        (at(0, 1, 0), DeviceKind::ConventionalEndpoint, None),
        (at(0, 2, 0), DeviceKind::RootPort, None),
        (at(0, 3, 0), DeviceKind::RootPort, None),
        (at(0, 0x1f, 0), DeviceKind::ConventionalEndpoint, None),
        (at(0, 0x1f, 2), DeviceKind::ConventionalEndpoint, None),
        (at(0, 0x1f, 3), DeviceKind::ConventionalEndpoint, None),
        (at(1, 0, 0), DeviceKind::UpstreamPort, Some(at(0, 2, 0))),
        (at(2, 0, 0), DeviceKind::DownstreamPort, Some(at(1, 0, 0))),
        (at(2, 1, 0), DeviceKind::DownstreamPort, Some(at(1, 0, 0))),
        (at(3, 0, 0), DeviceKind::Endpoint, Some(at(2, 0, 0))),
        (at(4, 0, 0), DeviceKind::Endpoint, Some(at(2, 1, 0))),
        (at(5, 0, 0), DeviceKind::PcieToPciBridge, Some(at(0, 3, 0))),
        (
            at(6, 1, 0),
            DeviceKind::ConventionalEndpoint,
            Some(at(5, 0, 0)),
        ),
        (at(6, 2, 0), DeviceKind::PciBridge, Some(at(5, 0, 0))),
        (
            at(7, 0, 0),
            DeviceKind::ConventionalEndpoint,
            Some(at(6, 2, 0)),
        ),
    ];
    let found: Vec<(PciAddress, DeviceKind, Option<PciAddress>)> = table
        .iter()
        .map(|device| (device.address, device.kind, device.parent))
        .collect();
    assert_eq!(found, expected);

    for device in &table {
        assert!(device.defects.is_empty(), "{device}: {:?}", device.defects);
    }
    assert_eq!(addresses(table.children_of(at(2, 1, 0))), vec![at(4, 0, 0)]);
    assert_eq!(
        addresses(table.children_of(at(5, 0, 0))),
        vec![at(6, 1, 0), at(6, 2, 0)]
    );
    assert_eq!(
        addresses(table.children_of(at(0, 1, 0))),
        Vec::<PciAddress>::new()
    );
    assert_eq!(
        addresses(table.ancestors(at(7, 0, 0)).into_iter()),
        vec![at(6, 2, 0), at(5, 0, 0), at(0, 3, 0)]
    );
    assert!(table.ancestors(at(0, 1, 0)).is_empty());

    let nic = table.get(at(4, 0, 0)).expect("NIC");
    assert_eq!(nic.capabilities.sriov.map(|s| s.vf_device_id), Some(0x10ca));
    assert_eq!(
        nic.subsystem,
        Some(SubsystemId {
            vendor_id: 0,
            device_id: 0
        })
    );
    let edu = table.get(at(0, 1, 0)).expect("edu");
    assert_eq!(
        (
            edu.class,
            edu.revision,
            edu.interrupt_pin,
            edu.header_type,
            edu.multifunction
        ),
        (0x00ff00, 0x10, 1, 0, false)
    );
    assert_eq!(
        edu.subsystem,
        Some(SubsystemId {
            vendor_id: 0x1af4,
            device_id: 0x1100
        })
    );
    let root_port = table.get(at(0, 3, 0)).expect("root port");
    assert_eq!(root_port.bridge_buses, Some((0, 5, 7)));
    assert_eq!(root_port.bus_range(), Some(5..=7));
    assert!(root_port.capabilities.pcie.unwrap().slot_implemented);
    assert!(table.get(at(0, 4, 0)).is_none());
}

#[test]
fn boot_log_lines() {
    let table = enumerate(&q35_like(), &[Q35_WINDOW]);
    let mut log = String::new();
    for device in &table {
        log.push_str(&format!("{device}\n"));
        for bar in &device.bars {
            log.push_str(&format!("    {bar}\n"));
        }
    }
    let expected = "\
0000:00:00.0 [8086:29c0] class 060000 rev 00 host-bridge
0000:00:01.0 [1234:11e8] class 00ff00 rev 10 conventional-endpoint caps: msi
    BAR0 mem32 0x00000000fea00000 size 0x100000
0000:00:02.0 [1b36:000c] class 060400 rev 00 root-port buses 00/01-04 caps: pcie
    BAR0 mem32 0x00000000feb00000 size 0x1000
0000:00:03.0 [1b36:000c] class 060400 rev 00 root-port buses 00/05-07 caps: pcie
0000:00:1f.0 [8086:2918] class 060100 rev 00 conventional-endpoint
0000:00:1f.2 [8086:2922] class 010601 rev 00 conventional-endpoint
0000:00:1f.3 [8086:2930] class 0c0500 rev 00 conventional-endpoint
0000:01:00.0 [104c:8232] class 060400 rev 00 upstream-port buses 01/02-04 caps: pcie
0000:02:00.0 [104c:8233] class 060400 rev 00 downstream-port buses 02/03-03 caps: pcie
0000:02:01.0 [104c:8233] class 060400 rev 00 downstream-port buses 02/04-04 caps: pcie
0000:03:00.0 [1b36:0010] class 010802 rev 00 endpoint caps: pcie msix flr
    BAR0 mem64 0x0000000800000000 size 0x4000
0000:04:00.0 [8086:10c9] class 020000 rev 00 endpoint caps: pcie msix pm ari sriov
    BAR0 mem64 pref 0x0000000800100000 size 0x20000
    BAR2 io 0x000000000000c040 size 0x20
    BAR3 mem32 0x00000000fe800000 size 0x4000
0000:05:00.0 [1b36:000e] class 060400 rev 00 pcie-to-pci-bridge buses 05/06-07 caps: pcie
0000:06:01.0 [1234:11e8] class 00ff00 rev 00 conventional-endpoint
    BAR0 io 0x000000000000d000 size 0x100
0000:06:02.0 [1b36:0001] class 060400 rev 00 pci-bridge buses 06/07-07
0000:07:00.0 [10ec:8029] class 00ff00 rev 00 conventional-endpoint
";
    assert_eq!(log, expected);
}

#[test]
fn every_kind_has_its_kebab_case_name() {
    let names: Vec<String> = [
        DeviceKind::Endpoint,
        DeviceKind::RcIntegratedEndpoint,
        DeviceKind::RcEventCollector,
        DeviceKind::RootPort,
        DeviceKind::UpstreamPort,
        DeviceKind::DownstreamPort,
        DeviceKind::PcieToPciBridge,
        DeviceKind::PciToPcieBridge,
        DeviceKind::PciBridge,
        DeviceKind::ConventionalEndpoint,
        DeviceKind::HostBridge,
        DeviceKind::Unknown,
    ]
    .iter()
    .map(|kind| format!("{kind}"))
    .collect();
    assert_eq!(
        names,
        [
            "endpoint",
            "rc-integrated-endpoint",
            "rc-event-collector",
            "root-port",
            "upstream-port",
            "downstream-port",
            "pcie-to-pci-bridge",
            "pci-to-pcie-bridge",
            "pci-bridge",
            "conventional-endpoint",
            "host-bridge",
            "unknown",
        ]
    );
}

#[test]
fn classification_follows_pcie_port_type_then_header() {
    let cfg = FakeConfigSpace::new()
        .with(
            at(0, 1, 0),
            FakeFunction::endpoint(1, 1, 0x01_00_00).with_pcie(PciePortType::LegacyEndpoint),
        )
        .with(
            at(0, 2, 0),
            FakeFunction::endpoint(1, 2, 0x08_80_00).with_pcie(PciePortType::RcIntegratedEndpoint),
        )
        .with(
            at(0, 3, 0),
            FakeFunction::endpoint(1, 3, 0x08_07_00).with_pcie(PciePortType::RcEventCollector),
        )
        .with(
            at(0, 4, 0),
            FakeFunction::bridge(1, 4, 0, 0x10, 0x10).with_pcie(PciePortType::PciToPcieBridge),
        )
        .with(
            at(0, 5, 0),
            FakeFunction::endpoint(1, 5, 0).with_pcie(PciePortType::Unknown(0xC)),
        )
        // A PCIe host bridge is classified by its port type, not its class.
        .with(
            at(0, 6, 0),
            FakeFunction::host_bridge(1, 6).with_pcie(PciePortType::RcIntegratedEndpoint),
        )
        .with(
            at(0, 7, 0),
            FakeFunction::endpoint(1, 7, 0).with_u8(reg::HEADER_TYPE, 0x02),
        )
        .with(
            at(0, 8, 0),
            FakeFunction::endpoint(1, 8, 0).with_u8(reg::HEADER_TYPE, 0x7F),
        );
    let table = enumerate(&cfg, &[Q35_WINDOW]);
    let kinds: Vec<DeviceKind> = table.iter().map(|device| device.kind).collect();
    assert_eq!(
        kinds,
        vec![
            DeviceKind::Endpoint,
            DeviceKind::RcIntegratedEndpoint,
            DeviceKind::RcEventCollector,
            DeviceKind::PciToPcieBridge,
            DeviceKind::Unknown,
            DeviceKind::RcIntegratedEndpoint,
            DeviceKind::Unknown, // CardBus: not decoded
            DeviceKind::Unknown,
        ]
    );
    let cardbus = table.get(at(0, 7, 0)).unwrap();
    assert!(
        cardbus.bars.is_empty() && cardbus.bridge_buses.is_none() && cardbus.subsystem.is_none()
    );
}

#[test]
fn multifunction_bit_gates_functions_1_to_7() {
    let cfg = FakeConfigSpace::new()
        // Device 1: multifunction, functions 0, 1 and 7 (gaps are fine).
        .with(
            at(0, 1, 0),
            FakeFunction::conventional_endpoint(1, 0x10).multifunction(),
        )
        .with(at(0, 1, 1), FakeFunction::conventional_endpoint(1, 0x11))
        .with(at(0, 1, 7), FakeFunction::conventional_endpoint(1, 0x17))
        // Device 2: function 1 exists but function 0 does not claim multifunction.
        .with(at(0, 2, 0), FakeFunction::conventional_endpoint(1, 0x20))
        .with(at(0, 2, 1), FakeFunction::conventional_endpoint(1, 0x21))
        // Device 3: no function 0 at all, so nothing there counts.
        .with(at(0, 3, 1), FakeFunction::conventional_endpoint(1, 0x31))
        // Device 4: vendor id 0 means absent too.
        .with(at(0, 4, 0), FakeFunction::conventional_endpoint(0, 0x40));
    let table = enumerate(&cfg, &[Q35_WINDOW]);
    assert_eq!(
        addresses(table.iter()),
        vec![at(0, 1, 0), at(0, 1, 1), at(0, 1, 7), at(0, 2, 0)]
    );
    assert!(table.get(at(0, 1, 0)).unwrap().multifunction);
    assert!(!table.get(at(0, 1, 1)).unwrap().multifunction);
}

#[test]
fn multifunction_bridge_functions_each_lead_to_their_bus() {
    let cfg = FakeConfigSpace::new()
        .with(
            at(0, 2, 0),
            FakeFunction::root_port(0, 1, 1).multifunction(),
        )
        .with(at(0, 2, 1), FakeFunction::root_port(0, 2, 2))
        .with(at(1, 0, 0), FakeFunction::pcie_endpoint(1, 1))
        .with(at(2, 0, 0), FakeFunction::pcie_endpoint(1, 2));
    let table = enumerate(&cfg, &[Q35_WINDOW]);
    assert_eq!(table.get(at(1, 0, 0)).unwrap().parent, Some(at(0, 2, 0)));
    assert_eq!(table.get(at(2, 0, 0)).unwrap().parent, Some(at(0, 2, 1)));
}

#[test]
fn enumeration_sizes_bars_without_decoding_and_restores_state() {
    let cfg = q35_like();
    let watched = [at(0, 1, 0), at(3, 0, 0), at(4, 0, 0), at(0, 2, 0)];
    let snapshot = |cfg: &FakeConfigSpace| -> Vec<u32> {
        watched
            .iter()
            .flat_map(|&addr| {
                (0x04..0x28)
                    .step_by(4)
                    .map(move |offset| cfg.read32(addr, offset))
            })
            .collect()
    };
    let before = snapshot(&cfg);
    let table = enumerate(&cfg, &[Q35_WINDOW]);
    assert_eq!(snapshot(&cfg), before, "command, status and BARs restored");
    assert!(
        cfg.bar_writes_while_decoding().is_empty(),
        "{:?}",
        cfg.bar_writes_while_decoding()
    );
    assert!(cfg.bar_write_count() > 0);
    let nvme = table.get(at(3, 0, 0)).unwrap();
    assert_eq!(
        nvme.command,
        reg::COMMAND_IO_SPACE | reg::COMMAND_MEMORY_SPACE | reg::COMMAND_BUS_MASTER,
        "the device records the command register as firmware left it"
    );
    assert_eq!(nvme.bar(0).map(|bar| bar.kind), Some(BarKind::Mem64));
    assert_eq!(
        nvme.bar(1),
        None,
        "upper half of a 64-bit BAR is not listed"
    );
}

#[test]
fn host_bridge_not_below_any_bridge_is_found_as_extra_root() {
    // Like QEMU's pxb: a second root bus at 0x80 in the same window, with its own
    // root port leading to 0x81. Plus a second segment.
    let segment_one = PciAddress::new(1, 0x40, 0, 0);
    let cfg = FakeConfigSpace::new()
        .with(at(0, 0, 0), FakeFunction::host_bridge(0x8086, 0x29c0))
        .with(at(0x80, 0, 0), FakeFunction::root_port(0x80, 0x81, 0x81))
        .with(at(0x81, 0, 0), FakeFunction::pcie_endpoint(1, 1))
        .with(segment_one, FakeFunction::conventional_endpoint(2, 2));
    let regions = [
        Q35_WINDOW,
        EcamRegion {
            segment: 1,
            bus_start: 0x40,
            bus_end: 0x40,
            base: 0xC000_0000,
        },
    ];
    let table = enumerate(&cfg, &regions);
    assert_eq!(
        addresses(table.iter()),
        vec![at(0, 0, 0), at(0x80, 0, 0), at(0x81, 0, 0), segment_one]
    );
    assert_eq!(table.get(at(0x80, 0, 0)).unwrap().parent, None);
    assert_eq!(
        table.get(at(0x81, 0, 0)).unwrap().parent,
        Some(at(0x80, 0, 0))
    );
    assert_eq!(
        format!("{}", table.get(segment_one).unwrap().address),
        "0001:40:00.0"
    );
}

#[test]
fn windows_limit_the_walk() {
    let cfg = FakeConfigSpace::new()
        .with(at(2, 0, 0), FakeFunction::conventional_endpoint(1, 2))
        .with(at(5, 0, 0), FakeFunction::conventional_endpoint(1, 5));
    let window = |bus_start, bus_end| EcamRegion {
        segment: 0,
        bus_start,
        bus_end,
        base: 0,
    };
    assert_eq!(
        addresses(enumerate(&cfg, &[window(2, 4)]).iter()),
        vec![at(2, 0, 0)]
    );
    assert!(
        enumerate(&cfg, &[window(5, 2)]).is_empty(),
        "inverted window skipped"
    );
    assert!(enumerate(&cfg, &[]).is_empty());
    // Overlapping windows of one segment: each function once.
    let table = enumerate(&cfg, &[window(0, 5), window(2, 8), window(5, 5)]);
    assert_eq!(addresses(table.iter()), vec![at(2, 0, 0), at(5, 0, 0)]);
}

// ---- malformed config space ----------------------------------------------------

fn defects_of(table: &DeviceTable, addr: PciAddress) -> Vec<ConfigDefect> {
    table.get(addr).expect("device present").defects.clone()
}

#[test]
fn bridge_pointing_at_its_own_bus_is_not_followed() {
    let cfg = FakeConfigSpace::new()
        .with(at(0, 1, 0), FakeFunction::pci_bridge(0, 0, 5))
        .with(at(0, 2, 0), FakeFunction::conventional_endpoint(1, 2));
    let table = enumerate(&cfg, &[Q35_WINDOW]);
    assert_eq!(addresses(table.iter()), vec![at(0, 1, 0), at(0, 2, 0)]);
    assert_eq!(
        defects_of(&table, at(0, 1, 0)),
        vec![ConfigDefect::BridgeSecondaryNotBelow {
            bus: 0,
            secondary: 0
        }]
    );
}

#[test]
fn bridge_pointing_back_to_an_ancestor_is_not_followed() {
    // 0 -> 1 -> 2, and the bridge on bus 2 claims bus 1 again.
    let cfg = FakeConfigSpace::new()
        .with(at(0, 1, 0), FakeFunction::root_port(0, 1, 3))
        .with(at(1, 0, 0), FakeFunction::upstream_port(1, 2, 3))
        .with(at(2, 0, 0), FakeFunction::downstream_port(2, 1, 3))
        .with(at(2, 1, 0), FakeFunction::pcie_endpoint(1, 1));
    let table = enumerate(&cfg, &[Q35_WINDOW]);
    assert_eq!(table.len(), 4);
    assert_eq!(
        defects_of(&table, at(2, 0, 0)),
        vec![ConfigDefect::BridgeSecondaryNotBelow {
            bus: 2,
            secondary: 1
        }]
    );
    assert_eq!(table.get(at(2, 1, 0)).unwrap().parent, Some(at(1, 0, 0)));
}

#[test]
fn bridge_with_secondary_above_subordinate_is_not_followed() {
    let cfg = FakeConfigSpace::new()
        .with(at(0, 1, 0), FakeFunction::root_port(0, 5, 3))
        .with(at(5, 0, 0), FakeFunction::pcie_endpoint(1, 1));
    let table = enumerate(&cfg, &[Q35_WINDOW]);
    assert_eq!(
        defects_of(&table, at(0, 1, 0)),
        vec![ConfigDefect::BridgeSecondaryAboveSubordinate {
            secondary: 5,
            subordinate: 3
        }]
    );
    // The bus is still scanned, as an extra root: the device is not lost.
    assert_eq!(table.get(at(5, 0, 0)).unwrap().parent, None);
}

#[test]
fn bridge_leading_outside_the_window_is_not_followed() {
    let cfg = FakeConfigSpace::new()
        .with(at(0, 1, 0), FakeFunction::root_port(0, 0x20, 0x20))
        .with(at(0x20, 0, 0), FakeFunction::pcie_endpoint(1, 1));
    let window = EcamRegion {
        segment: 0,
        bus_start: 0,
        bus_end: 0x0f,
        base: 0xB000_0000,
    };
    let table = enumerate(&cfg, &[window]);
    assert_eq!(addresses(table.iter()), vec![at(0, 1, 0)]);
    assert_eq!(
        defects_of(&table, at(0, 1, 0)),
        vec![ConfigDefect::BridgeSecondaryOutsideWindow { secondary: 0x20 }]
    );
}

#[test]
fn two_bridges_claiming_one_bus_scan_it_once() {
    let cfg = FakeConfigSpace::new()
        .with(at(0, 1, 0), FakeFunction::root_port(0, 1, 1))
        .with(at(0, 2, 0), FakeFunction::root_port(0, 1, 1))
        .with(at(1, 0, 0), FakeFunction::pcie_endpoint(1, 1));
    let table = enumerate(&cfg, &[Q35_WINDOW]);
    assert_eq!(table.len(), 3);
    let claimed_by_first = table.get(at(1, 0, 0)).unwrap().parent == Some(at(0, 1, 0));
    let (winner, loser) = if claimed_by_first {
        (at(0, 1, 0), at(0, 2, 0))
    } else {
        (at(0, 2, 0), at(0, 1, 0))
    };
    assert!(defects_of(&table, winner).is_empty());
    assert_eq!(
        defects_of(&table, loser),
        vec![ConfigDefect::BridgeSecondaryAlreadyScanned { secondary: 1 }]
    );
}

#[test]
fn bridge_chain_deeper_than_the_limit_is_cut() {
    // Bus n holds a bridge to bus n + 1, for n in 0..40, and an endpoint at 1.
    let mut cfg = FakeConfigSpace::new();
    for bus in 0..40u8 {
        cfg.insert(at(bus, 0, 0), FakeFunction::pci_bridge(bus, bus + 1, 40));
        cfg.insert(at(bus + 1, 1, 0), FakeFunction::conventional_endpoint(1, 1));
    }
    let table = enumerate(&cfg, &[Q35_WINDOW]);
    assert_eq!(table.len(), 80, "every function found once");
    let limit = MAX_BRIDGE_DEPTH;
    // The bus behind `limit` bridges is scanned as a child...
    assert_eq!(
        table.get(at(limit, 1, 0)).unwrap().parent,
        Some(at(limit - 1, 0, 0))
    );
    // ...but the bridge on it is not followed,
    assert_eq!(
        defects_of(&table, at(limit, 0, 0)),
        vec![ConfigDefect::BridgeTooDeep {
            secondary: limit + 1
        }]
    );
    // so the next bus is picked up as an extra root.
    assert_eq!(table.get(at(limit + 1, 1, 0)).unwrap().parent, None);
    assert_eq!(
        table.get(at(limit + 2, 1, 0)).unwrap().parent,
        Some(at(limit + 1, 0, 0))
    );
}

#[test]
fn sixty_four_bit_bar_in_the_last_slot_is_reported() {
    let cfg = FakeConfigSpace::new().with(
        at(0, 1, 0),
        FakeFunction::conventional_endpoint(1, 2)
            .with_mem32_bar(0, 0xfe00_0000, 0x1000, false)
            .with_bar_register(5, 0x8000_0000 | 0b1100, 0xFFFF_0000),
    );
    let table = enumerate(&cfg, &[Q35_WINDOW]);
    let device = table.get(at(0, 1, 0)).unwrap();
    assert_eq!(device.bars.len(), 1);
    assert_eq!(
        device.defects,
        vec![ConfigDefect::Bar64InLastSlot { index: 5 }]
    );
}

#[test]
fn capability_loops_do_not_hang_enumeration() {
    let cfg = FakeConfigSpace::new().with(
        at(0, 1, 0),
        FakeFunction::pcie_endpoint(1, 2)
            // The PCIe capability at 0x40 gets a next pointer back to itself...
            .with_u8(0x41, 0x40)
            // ...and the extended list loops 0x100 -> 0x100.
            .with_u32(0x100, 0x1001_000D),
    );
    let table = enumerate(&cfg, &[Q35_WINDOW]);
    assert_eq!(
        defects_of(&table, at(0, 1, 0)),
        vec![
            ConfigDefect::CapabilityLoop { pointer: 0x40 },
            ConfigDefect::ExtendedCapabilityLoop { pointer: 0x100 },
        ]
    );
}

/// A function whose config space is all-ones except for the words listed.
struct StuckFunction {
    address: PciAddress,
    words: BTreeMap<u16, u32>,
}

impl ConfigSpace for StuckFunction {
    fn read32(&self, addr: PciAddress, offset: u16) -> u32 {
        if addr != self.address {
            return ALL_ONES;
        }
        self.words.get(&offset).copied().unwrap_or(ALL_ONES)
    }

    fn write32(&self, _addr: PciAddress, _offset: u16, _value: u32) {}
}

#[test]
fn all_ones_reads_do_not_hang_or_panic() {
    // Only the id dword answers: header type reads 0xFF (type 0x7F, multifunction).
    let mut stuck = StuckFunction {
        address: at(0, 3, 0),
        words: BTreeMap::from([(0, 0x11e8_1234)]),
    };
    let table = enumerate(&stuck, &[Q35_WINDOW]);
    assert_eq!(addresses(table.iter()), vec![at(0, 3, 0)]);
    let device = &table.devices[0];
    assert_eq!(
        (device.kind, device.header_type, device.multifunction),
        (DeviceKind::Unknown, 0x7F, true)
    );
    assert_eq!(device.class, 0xFF_FFFF);

    // Now with a type 0 header: status claims a capability list whose pointer
    // (0xFC) leads to an all-ones header; every BAR reads all-ones.
    stuck.words.insert(reg::HEADER_TYPE & !3, 0);
    let table = enumerate(&stuck, &[Q35_WINDOW]);
    let device = &table.devices[0];
    assert_eq!(device.kind, DeviceKind::ConventionalEndpoint);
    assert!(device.bars.is_empty());
    assert!(device.capabilities.classic.is_empty());

    // And a PCIe capability at 0x40 whose next pointer is all-ones (0xFC after
    // masking, where the header reads 0xFF: end): the extended walk meets an
    // all-ones header and stops.
    stuck.words.insert(reg::CAPABILITY_POINTER, 0x40);
    stuck.words.insert(0x40, 0x0002_FF10);
    let table = enumerate(&stuck, &[Q35_WINDOW]);
    let device = &table.devices[0];
    assert!(device.capabilities.pcie.is_some());
    assert_eq!(device.capabilities.classic.len(), 1);
    assert!(device.capabilities.extended.is_empty());
    assert_eq!(device.kind, DeviceKind::Endpoint);
}

// ---- random config spaces ------------------------------------------------------

/// One function of random content, nudged so that the interesting paths (bridges,
/// capability lists, BARs that answer sizing) are taken often.
#[derive(Clone, Debug)]
struct RandomFunction {
    address: PciAddress,
    image: Vec<u8>,
    header_type: u8,
    capability_list: bool,
    pcie_at_0x40: bool,
    buses: (u8, u8),
    bar_masks: Vec<u32>,
}

fn random_function() -> impl Strategy<Value = RandomFunction> {
    (
        (0u8..4, 0u8..4, 0u8..8),
        proptest::collection::vec(any::<u8>(), 4096),
        prop_oneof![
            Just(0x00u8),
            Just(0x01),
            Just(0x80),
            Just(0x81),
            any::<u8>()
        ],
        any::<bool>(),
        any::<bool>(),
        (0u8..8, 0u8..8),
        proptest::collection::vec(any::<u32>(), 6),
    )
        .prop_map(
            |(
                (bus, device, function),
                image,
                header_type,
                capability_list,
                pcie_at_0x40,
                buses,
                bar_masks,
            )| {
                RandomFunction {
                    address: at(bus, device, function),
                    image,
                    header_type,
                    capability_list,
                    pcie_at_0x40,
                    buses,
                    bar_masks,
                }
            },
        )
}

impl RandomFunction {
    fn build(&self) -> FakeFunction {
        let mut image = self.image.clone();
        image[usize::from(reg::HEADER_TYPE)] = self.header_type;
        if self.capability_list {
            image[usize::from(reg::STATUS)] |= reg::STATUS_CAPABILITY_LIST as u8;
        }
        if self.pcie_at_0x40 {
            image[usize::from(reg::CAPABILITY_POINTER)] = 0x40;
            image[0x40] = cap_id::PCI_EXPRESS;
        }
        if self.header_type & 0x7F == reg::HEADER_TYPE_BRIDGE {
            image[0x19] = self.buses.0;
            image[0x1A] = self.buses.1;
        }
        let mut function = FakeFunction::from_image(&image);
        let slots = match self.header_type & 0x7F {
            0 => 6,
            1 => 2,
            _ => 0,
        };
        for index in 0..slots {
            let value = u32::from_le_bytes(
                image[0x10 + 4 * index..0x14 + 4 * index]
                    .try_into()
                    .unwrap(),
            );
            function = function.with_bar_register(index as u8, value, self.bar_masks[index]);
        }
        function
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_config_space_never_panics_or_hangs(functions in proptest::collection::vec(random_function(), 1..6)) {
        let mut cfg = FakeConfigSpace::new();
        for function in &functions {
            cfg.insert(function.address, function.build());
        }
        let present: BTreeSet<PciAddress> = functions.iter().map(|f| f.address).collect();
        let state = |cfg: &FakeConfigSpace| -> Vec<u32> {
            present
                .iter()
                .flat_map(|&addr| (0x04..0x28).step_by(4).map(move |offset| cfg.read32(addr, offset)))
                .collect()
        };
        let before = state(&cfg);
        let regions = [
            EcamRegion { segment: 0, bus_start: 0, bus_end: 3, base: 0 },
            EcamRegion { segment: 0, bus_start: 2, bus_end: 5, base: 0 },
        ];

        let table = enumerate(&cfg, &regions);

        // Finite work: at most every function slot of the 6 buses is probed once,
        // plus a bounded number of reads per present function (header, 6 BARs,
        // capability walks capped at 48 + 960 steps, their decoding).
        let probes = 6 * 32 * 8;
        prop_assert!(cfg.read_count() < probes + present.len() as u64 * 2_500);
        // Only real functions, each once, sorted; parents are bridges leading to
        // the child's bus.
        let found: Vec<PciAddress> = table.iter().map(|d| d.address).collect();
        prop_assert!(found.windows(2).all(|pair| pair[0] < pair[1]));
        prop_assert!(found.iter().all(|addr| present.contains(addr)));
        for device in &table {
            if let Some(parent) = device.parent {
                let bridge = table.get(parent);
                prop_assert!(bridge.is_some());
                prop_assert_eq!(bridge.and_then(|b| b.secondary_bus()), Some(device.address.bus));
            }
            let _ = format!("{device}");
        }
        // Sizing left every function as it was and never wrote a decoding BAR.
        prop_assert!(cfg.bar_writes_while_decoding().is_empty());
        prop_assert_eq!(state(&cfg), before);
    }
}
