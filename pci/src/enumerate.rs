//! Finding every function: a walk of the bus tree the firmware configured.
//!
//! Each ECAM window's first bus is a root bus. A scan of a bus probes devices
//! 0..32, function 0 first (vendor id 0xFFFF or 0x0000: nothing there) and
//! functions 1..8 only if function 0 says it is multifunction. A bridge (type 1
//! header) leads to its secondary bus, which is scanned next, depth first.
//!
//! Bus numbers are taken as firmware assigned them, never reassigned: the host and
//! the IOMMU tables built from this table must agree with what SeaBIOS/UEFI set
//! up. Because those numbers come from config space, a bridge is only followed if
//! its secondary bus is inside the window, above the bridge's own bus, not above
//! its subordinate bus and not scanned yet, and only [`MAX_BRIDGE_DEPTH`] deep.
//! That makes the walk finite whatever the bridges claim (each bus is scanned at
//! most once), and the walk uses an explicit stack rather than recursion, so a
//! deep hierarchy cannot overflow a small kernel stack.
//!
//! Some host bridges (QEMU's pxb, or several root complexes in one window) put
//! further root buses in the window that no bridge leads to, so afterwards every
//! bus of the window not reached by the walk is scanned as an extra root bus.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::bar::read_bars;
use crate::capability::read_capabilities;
use crate::config::reg;
use crate::{
    ConfigDefect, ConfigSpace, DeviceKind, DeviceTable, EcamRegion, PciAddress, PciDevice,
    SubsystemId,
};

/// The most bridges the walk follows from a root bus: a bus behind this many
/// bridges is scanned, but bridges on it are not followed.
pub const MAX_BRIDGE_DEPTH: u8 = 32;

/// Enumerates every function reachable in the given ECAM windows.
///
/// `cfg` performs the accesses (usually an [`crate::Ecam`] built from the same
/// `regions`); `regions` says where the root buses are. Windows of the same
/// segment share one record of scanned buses, so overlapping windows do not
/// produce duplicates. Windows with `bus_start > bus_end` are skipped.
///
/// BAR sizing writes to the functions (with decoding briefly disabled): call this
/// before any driver uses them, and not concurrently with other config accesses.
pub fn enumerate(cfg: &dyn ConfigSpace, regions: &[EcamRegion]) -> DeviceTable {
    let mut scanned: BTreeMap<u16, BusSet> = BTreeMap::new();
    let mut devices = Vec::new();
    for region in regions {
        if region.bus_start > region.bus_end {
            log::warn!(
                "pci: ECAM window for segment {:04x} has bus_start {:#x} > bus_end {:#x}; skipped",
                region.segment,
                region.bus_start,
                region.bus_end
            );
            continue;
        }
        let scanned = scanned.entry(region.segment).or_default();
        walk_tree(cfg, region, region.bus_start, scanned, &mut devices);
        for bus in region.bus_start..=region.bus_end {
            walk_tree(cfg, region, bus, scanned, &mut devices);
        }
    }
    DeviceTable::new(devices)
}

/// A set of bus numbers.
#[derive(Default)]
struct BusSet([u64; 4]);

impl BusSet {
    fn contains(&self, bus: u8) -> bool {
        self.0[usize::from(bus / 64)] & (1 << (bus % 64)) != 0
    }

    fn insert(&mut self, bus: u8) {
        self.0[usize::from(bus / 64)] |= 1 << (bus % 64);
    }
}

/// A bus waiting to be scanned, with the bridge that leads to it.
struct PendingBus {
    bus: u8,
    parent: Option<PciAddress>,
    depth: u8,
}

/// Scans `root_bus` (if not scanned yet) and every bus below it.
fn walk_tree(
    cfg: &dyn ConfigSpace,
    region: &EcamRegion,
    root_bus: u8,
    scanned: &mut BusSet,
    devices: &mut Vec<PciDevice>,
) {
    if scanned.contains(root_bus) {
        return;
    }
    scanned.insert(root_bus);
    let mut pending = alloc::vec![PendingBus {
        bus: root_bus,
        parent: None,
        depth: 0,
    }];
    // Every bus is inserted in `scanned` before it is pushed, so at most 256
    // entries are ever pushed and the loop ends.
    while let Some(PendingBus { bus, parent, depth }) = pending.pop() {
        for device in 0..32 {
            let function_zero = PciAddress::new(region.segment, bus, device, 0);
            let Some(first) = read_function(cfg, function_zero, parent) else {
                continue;
            };
            let functions = if first.multifunction { 8 } else { 1 };
            let mut found = alloc::vec![first];
            for function in 1..functions {
                if let Some(other) =
                    read_function(cfg, function_zero.with_function(function), parent)
                {
                    found.push(other);
                }
            }
            for mut function in found {
                if let Some((_, secondary, subordinate)) = function.bridge_buses {
                    let child =
                        check_secondary_bus(region, bus, secondary, subordinate, depth, scanned);
                    match child {
                        Ok(()) => {
                            scanned.insert(secondary);
                            pending.push(PendingBus {
                                bus: secondary,
                                parent: Some(function.address),
                                depth: depth + 1,
                            });
                        }
                        Err(defect) => note_defect(&mut function, defect),
                    }
                }
                devices.push(function);
            }
        }
    }
}

/// Whether the walk may follow a bridge on `bus` to `secondary`.
fn check_secondary_bus(
    region: &EcamRegion,
    bus: u8,
    secondary: u8,
    subordinate: u8,
    depth: u8,
    scanned: &BusSet,
) -> Result<(), ConfigDefect> {
    if secondary <= bus {
        Err(ConfigDefect::BridgeSecondaryNotBelow { bus, secondary })
    } else if secondary > subordinate {
        Err(ConfigDefect::BridgeSecondaryAboveSubordinate {
            secondary,
            subordinate,
        })
    } else if !(region.bus_start..=region.bus_end).contains(&secondary) {
        Err(ConfigDefect::BridgeSecondaryOutsideWindow { secondary })
    } else if scanned.contains(secondary) {
        Err(ConfigDefect::BridgeSecondaryAlreadyScanned { secondary })
    } else if depth >= MAX_BRIDGE_DEPTH {
        Err(ConfigDefect::BridgeTooDeep { secondary })
    } else {
        Ok(())
    }
}

fn note_defect(device: &mut PciDevice, defect: ConfigDefect) {
    log::warn!("pci: {}: {:?}", device.address, defect);
    device.defects.push(defect);
}

/// Reads and decodes one function, or `None` if nothing answers at `addr`.
fn read_function(
    cfg: &dyn ConfigSpace,
    addr: PciAddress,
    parent: Option<PciAddress>,
) -> Option<PciDevice> {
    let ids = cfg.read32(addr, reg::VENDOR_ID);
    let vendor_id = ids as u16;
    if vendor_id == 0xFFFF || vendor_id == 0x0000 {
        return None;
    }
    let class_revision = cfg.read32(addr, reg::REVISION_ID);
    let header_type_register = cfg.read8(addr, reg::HEADER_TYPE);
    let header_type = header_type_register & !reg::HEADER_TYPE_MULTIFUNCTION;
    let command = cfg.read16(addr, reg::COMMAND);
    let status = cfg.read16(addr, reg::STATUS);
    let interrupt = cfg.read16(addr, reg::INTERRUPT_LINE);
    let class = class_revision >> 8;

    let mut defects = Vec::new();
    let capabilities = read_capabilities(cfg, addr, header_type, status, &mut defects);
    let (bar_slots, subsystem, bridge_buses) = match header_type {
        reg::HEADER_TYPE_ENDPOINT => {
            let subsystem = cfg.read32(addr, reg::SUBSYSTEM_VENDOR_ID);
            let subsystem = SubsystemId {
                vendor_id: subsystem as u16,
                device_id: (subsystem >> 16) as u16,
            };
            (6, Some(subsystem), None)
        }
        reg::HEADER_TYPE_BRIDGE => {
            let buses = cfg.read32(addr, reg::BRIDGE_BUS_NUMBERS);
            (
                2,
                None,
                Some((buses as u8, (buses >> 8) as u8, (buses >> 16) as u8)),
            )
        }
        _ => (0, None, None),
    };
    let bars = read_bars(cfg, addr, bar_slots, &mut defects);
    for defect in &defects {
        log::warn!("pci: {addr}: {defect:?}");
    }

    Some(PciDevice {
        address: addr,
        vendor_id,
        device_id: (ids >> 16) as u16,
        class,
        revision: class_revision as u8,
        header_type,
        multifunction: header_type_register & reg::HEADER_TYPE_MULTIFUNCTION != 0,
        kind: DeviceKind::classify(
            header_type,
            class,
            capabilities.pcie.map(|pcie| pcie.port_type),
        ),
        bars,
        interrupt_pin: (interrupt >> 8) as u8,
        interrupt_line: interrupt as u8,
        command,
        status,
        subsystem,
        capabilities,
        parent,
        bridge_buses,
        defects,
    })
}
