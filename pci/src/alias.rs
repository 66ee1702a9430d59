//! DMA aliases: every requester id a function's DMA can arrive at the IOMMU with.
//!
//! The IOMMU looks up translation tables by the requester id (bus/device/function)
//! a request carries. That id is not always the function's own: a bridge that
//! converts between PCI Express and conventional PCI cannot pass requester ids
//! through (conventional PCI has none) and puts its own on the traffic it
//! forwards upstream. The IOMMU then cannot tell the devices behind such a bridge
//! apart, so they can only be isolated together, and the hypervisor must program
//! *every* id a device may use, or its DMA faults (or worse, hits another
//! device's tables).
//!
//! [`dma_aliases()`] is Linux's `pci_for_each_dma_alias` (`drivers/pci/search.c`)
//! over a [`DeviceTable`], without Linux's device quirks:
//! 1. the function's own id;
//! 2. extra same-bus device/function numbers the caller knows about (firmware
//!    alias tables such as AMD IVRS alias entries, or known-broken devices; Linux's
//!    `pci_add_dma_alias`), in increasing order;
//! 3. walking up the bridges to the root bus:
//!    - PCIe root, upstream and downstream ports: no alias (PCIe keeps ids);
//!    - PCIe-to-PCI/PCI-X bridge: (its secondary bus, 00.0), the id the bridge
//!      uses for transactions it takes ownership of (PCIe-to-PCI/PCI-X Bridge
//!      spec 2.3);
//!    - PCI/PCI-X-to-PCIe bridge: the bridge's own id;
//!    - conventional PCI bridge (no PCIe capability): the bridge's own id;
//!    - any other PCIe port type: no alias (Linux's `switch` has no case for it);
//!
//!    and the walk goes on above each of them: a bridge further up may alias again.
//!
//! The walk follows `parent` links, which come from config space; it stops at a
//! parent missing from the table and after [`MAX_ALIAS_HOPS`] bridges, so a
//! corrupt table cannot make it loop.

use alloc::vec::Vec;
use core::fmt;
use core::ops::ControlFlow;

use crate::{DeviceTable, PciAddress, PciDevice, PciePortType};

/// The most bridges the alias walk climbs (a guard against corrupt parent chains;
/// real hierarchies are far shallower).
pub const MAX_ALIAS_HOPS: usize = 256;

/// Why a requester id is one of a function's DMA aliases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AliasKind {
    /// The function's own bus/device/function.
    Own,
    /// A same-bus device/function number supplied by the caller (firmware alias
    /// entry or quirk).
    Firmware,
    /// A PCIe-to-PCI/PCI-X bridge above: its secondary bus, device 0, function 0.
    PcieToPciBridge,
    /// A PCI/PCI-X-to-PCIe bridge above: the bridge's own id.
    PciToPcieBridge,
    /// A conventional PCI-to-PCI bridge above: the bridge's own id.
    ConventionalBridge,
}

impl AliasKind {
    /// A short name for logs: `own`, `firmware`, `PCIe-to-PCI bridge`,
    /// `PCI-to-PCIe bridge`, `PCI bridge`.
    pub fn as_str(self) -> &'static str {
        match self {
            AliasKind::Own => "own",
            AliasKind::Firmware => "firmware",
            AliasKind::PcieToPciBridge => "PCIe-to-PCI bridge",
            AliasKind::PciToPcieBridge => "PCI-to-PCIe bridge",
            AliasKind::ConventionalBridge => "PCI bridge",
        }
    }
}

impl fmt::Display for AliasKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One requester id a function's DMA may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaAlias {
    /// `bus << 8 | device << 3 | function`, as the IOMMU sees it (same segment as
    /// the function).
    pub requester_id: u16,
    /// The bridge that introduces this alias; `None` for the function's own id
    /// and for caller-supplied aliases.
    pub via: Option<PciAddress>,
    /// Where the alias comes from.
    pub kind: AliasKind,
}

impl DmaAlias {
    /// The requester id as an address in `segment` (it may name no function).
    pub fn as_address(&self, segment: u16) -> PciAddress {
        PciAddress::from_bdf(segment, self.requester_id)
    }
}

/// `05:00.0 own`, `06:00.0 firmware`, `06:00.0 via 0000:05:00.0 (PCIe-to-PCI bridge)`.
impl fmt::Display for DmaAlias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.requester_id;
        write!(f, "{:02x}:{:02x}.{:x}", id >> 8, (id >> 3) & 0x1f, id & 7)?;
        match self.via {
            Some(bridge) => write!(f, " via {bridge} ({})", self.kind),
            None => write!(f, " {}", self.kind),
        }
    }
}

/// Every requester id the DMA of the function at `address` can carry: its own id
/// first, then `extra_devfns` (device/function numbers on its own bus, e.g. AMD
/// IVRS alias entries; duplicates are fine), then the aliases introduced by the
/// bridges above it, nearest first. Each requester id appears once (the first
/// reason found is kept).
///
/// A function not in the table yields its own id and the extra ones only.
pub fn dma_aliases(table: &DeviceTable, address: PciAddress, extra_devfns: &[u8]) -> Vec<DmaAlias> {
    let mut aliases: Vec<DmaAlias> = Vec::new();
    let mut record = |alias: &DmaAlias| {
        if !aliases
            .iter()
            .any(|seen| seen.requester_id == alias.requester_id)
        {
            aliases.push(*alias);
        }
        ControlFlow::Continue(())
    };
    match table.get(address) {
        Some(device) => {
            let _ = for_each_alias(|a| table.get(a), device, extra_devfns, &mut record);
        }
        None => {
            let _ = own_and_extra(address, extra_devfns, &mut record);
        }
    }
    aliases
}

/// The walk itself, in Linux's order and *without* removing duplicates (the
/// grouping code must see every bridge, even one whose alias repeats an id seen
/// before). `visit` may stop the walk early.
pub(crate) fn for_each_alias<'a>(
    lookup: impl Fn(PciAddress) -> Option<&'a PciDevice>,
    device: &PciDevice,
    extra_devfns: &[u8],
    mut visit: impl FnMut(&DmaAlias) -> ControlFlow<()>,
) -> ControlFlow<()> {
    own_and_extra(device.address, extra_devfns, &mut visit)?;
    // `below` is the bus the walk came up from: a bridge's secondary bus.
    let mut below = device.address.bus;
    let mut next = device.parent;
    for _ in 0..MAX_ALIAS_HOPS {
        let Some(parent) = next else {
            return ControlFlow::Continue(());
        };
        let Some(bridge) = lookup(parent) else {
            log::warn!(
                "pci: {}: parent {parent} is not in the device table; alias walk stops",
                device.address
            );
            return ControlFlow::Continue(());
        };
        let alias = |requester_id, kind| DmaAlias {
            requester_id,
            via: Some(bridge.address),
            kind,
        };
        match bridge.capabilities.pcie.map(|pcie| pcie.port_type) {
            Some(PciePortType::PcieToPciBridge) => {
                visit(&alias(u16::from(below) << 8, AliasKind::PcieToPciBridge))?;
            }
            Some(PciePortType::PciToPcieBridge) => {
                visit(&alias(bridge.address.bdf(), AliasKind::PciToPcieBridge))?;
            }
            // Root, upstream and downstream ports keep requester ids; Linux has no
            // case for the remaining types either.
            Some(_) => {}
            None => visit(&alias(bridge.address.bdf(), AliasKind::ConventionalBridge))?,
        }
        below = bridge.address.bus;
        next = bridge.parent;
    }
    log::warn!(
        "pci: {}: more than {MAX_ALIAS_HOPS} bridges above; alias walk stops",
        device.address
    );
    ControlFlow::Continue(())
}

/// Steps 1 and 2: the own id, then the extra devfns in increasing order, once each.
fn own_and_extra(
    address: PciAddress,
    extra_devfns: &[u8],
    visit: &mut impl FnMut(&DmaAlias) -> ControlFlow<()>,
) -> ControlFlow<()> {
    visit(&DmaAlias {
        requester_id: address.bdf(),
        via: None,
        kind: AliasKind::Own,
    })?;
    let mut set = [0u64; 4];
    for &devfn in extra_devfns {
        set[usize::from(devfn / 64)] |= 1 << (devfn % 64);
    }
    for devfn in 0..=255u8 {
        if set[usize::from(devfn / 64)] & (1 << (devfn % 64)) != 0 {
            visit(&DmaAlias {
                requester_id: u16::from(address.bus) << 8 | u16::from(devfn),
                via: None,
                kind: AliasKind::Firmware,
            })?;
        }
    }
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeConfigSpace, FakeFunction};
    use crate::{EcamRegion, enumerate};
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;

    const WINDOW: EcamRegion = EcamRegion {
        segment: 0,
        bus_start: 0,
        bus_end: 255,
        base: 0xB000_0000,
    };

    fn at(bus: u8, device: u8, function: u8) -> PciAddress {
        PciAddress::new(0, bus, device, function)
    }

    fn edu() -> FakeFunction {
        FakeFunction::conventional_endpoint(0x1234, 0x11e8)
    }

    fn ids(aliases: &[DmaAlias]) -> Vec<u16> {
        aliases.iter().map(|alias| alias.requester_id).collect()
    }

    /// root port 00:03.0 -> PCIe-to-PCI bridge 05:00.0 -> bus 6: edu 06:01.0 and
    /// PCI bridge 06:02.0 -> bus 7: edu 07:00.0 (the chain of `tests::q35_like`).
    fn nested_bridges() -> DeviceTable {
        let cfg = FakeConfigSpace::new()
            .with(at(0, 3, 0), FakeFunction::root_port(0, 5, 7))
            .with(at(5, 0, 0), FakeFunction::pcie_to_pci_bridge(5, 6, 7))
            .with(at(6, 1, 0), edu())
            .with(at(6, 2, 0), FakeFunction::pci_bridge(6, 7, 7))
            .with(at(7, 0, 0), edu());
        enumerate(&cfg, &[WINDOW])
    }

    #[test]
    fn behind_pcie_to_pci_and_pci_bridges() {
        let table = nested_bridges();
        // 07:00.0 own; the PCI bridge 06:02.0 puts its own id on it; the
        // PCIe-to-PCI bridge then uses (bus 6, 00.0); the root port keeps ids.
        let aliases = dma_aliases(&table, at(7, 0, 0), &[]);
        assert_eq!(
            aliases,
            vec![
                DmaAlias {
                    requester_id: 0x0700,
                    via: None,
                    kind: AliasKind::Own
                },
                DmaAlias {
                    requester_id: 0x0610,
                    via: Some(at(6, 2, 0)),
                    kind: AliasKind::ConventionalBridge
                },
                DmaAlias {
                    requester_id: 0x0600,
                    via: Some(at(5, 0, 0)),
                    kind: AliasKind::PcieToPciBridge
                },
            ]
        );
        let lines: Vec<String> = aliases.iter().map(|alias| format!("{alias}")).collect();
        assert_eq!(
            lines,
            [
                "07:00.0 own",
                "06:02.0 via 0000:06:02.0 (PCI bridge)",
                "06:00.0 via 0000:05:00.0 (PCIe-to-PCI bridge)"
            ]
        );
        assert_eq!(
            ids(&dma_aliases(&table, at(6, 1, 0), &[])),
            [0x0608, 0x0600]
        );
        // The bridges themselves: the PCI bridge is aliased by the PCIe-to-PCI one,
        // which sits behind a root port only.
        assert_eq!(
            ids(&dma_aliases(&table, at(6, 2, 0), &[])),
            [0x0610, 0x0600]
        );
        assert_eq!(ids(&dma_aliases(&table, at(5, 0, 0), &[])), [0x0500]);
        assert_eq!(ids(&dma_aliases(&table, at(0, 3, 0), &[])), [0x0018]);
    }

    #[test]
    fn requester_ids_are_unique_but_the_walk_sees_every_bridge() {
        // A device at 06:00.0 behind the PCIe-to-PCI bridge: its own id equals the
        // bridge's alias, listed once; the raw walk still visits the bridge.
        let cfg = FakeConfigSpace::new()
            .with(at(0, 3, 0), FakeFunction::pcie_to_pci_bridge(0, 6, 6))
            .with(at(6, 0, 0), edu());
        let table = enumerate(&cfg, &[WINDOW]);
        let aliases = dma_aliases(&table, at(6, 0, 0), &[0, 0, 8]);
        assert_eq!(ids(&aliases), [0x0600, 0x0608]);
        assert_eq!(aliases[1].kind, AliasKind::Firmware);

        let device = table.get(at(6, 0, 0)).unwrap();
        let mut seen = Vec::new();
        let _ = for_each_alias(
            |a| table.get(a),
            device,
            &[0, 0, 8],
            |alias| {
                seen.push((alias.requester_id, alias.via));
                ControlFlow::Continue(())
            },
        );
        assert_eq!(
            seen,
            [
                (0x0600, None),
                (0x0600, None),
                (0x0608, None),
                (0x0600, Some(at(0, 3, 0)))
            ]
        );
    }

    #[test]
    fn reverse_bridge_and_pcie_ports_and_firmware_aliases() {
        let cfg = FakeConfigSpace::new()
            .with(
                at(0, 1, 0),
                FakeFunction::bridge(1, 1, 0, 1, 2).with_pcie(PciePortType::PciToPcieBridge),
            )
            .with(at(1, 0, 0), FakeFunction::upstream_port(1, 2, 2))
            .with(at(2, 0, 0), FakeFunction::pcie_endpoint(1, 2))
            .with(at(0, 2, 0), FakeFunction::root_port(0, 3, 4))
            .with(at(3, 0, 0), FakeFunction::upstream_port(3, 4, 4))
            .with(at(4, 0, 0), FakeFunction::downstream_port(4, 5, 5));
        let table = enumerate(&cfg, &[WINDOW]);
        let aliases = dma_aliases(&table, at(2, 0, 0), &[0x11, 0x03]);
        assert_eq!(ids(&aliases), [0x0200, 0x0203, 0x0211, 0x0008]);
        assert_eq!(aliases[3].kind, AliasKind::PciToPcieBridge);
        assert_eq!(aliases[3].via, Some(at(0, 1, 0)));
        assert_eq!(aliases[1].as_address(0), at(2, 0, 3));
        // Behind PCIe ports only: no alias.
        assert_eq!(ids(&dma_aliases(&table, at(4, 0, 0), &[])), [0x0400]);
        // Not in the table: own and extra only.
        assert_eq!(
            ids(&dma_aliases(&table, at(9, 1, 0), &[0])),
            [0x0908, 0x0900]
        );
    }

    #[test]
    fn corrupt_parent_chains_end() {
        let mut table = nested_bridges();
        // The root port claims to sit below the PCI bridge: the chain above
        // 07:00.0 becomes 06:02.0 -> 05:00.0 -> 00:03.0 -> 06:02.0 -> ... The walk
        // gives up after MAX_ALIAS_HOPS bridges; each id is listed once.
        for device in &mut table.devices {
            if device.address == at(0, 3, 0) {
                device.parent = Some(at(6, 2, 0));
            }
        }
        let aliases = dma_aliases(&table, at(7, 0, 0), &[]);
        assert_eq!(ids(&aliases), [0x0700, 0x0610, 0x0600]);
        // A parent that is not in the table ends the walk.
        for device in &mut table.devices {
            if device.address == at(6, 2, 0) {
                device.parent = Some(at(0x42, 0, 0));
            }
        }
        assert_eq!(
            ids(&dma_aliases(&table, at(7, 0, 0), &[])),
            [0x0700, 0x0610]
        );
    }
}
