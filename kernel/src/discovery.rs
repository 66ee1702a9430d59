//! From firmware tables and the live PCI topology to IOMMU groups, vendor-neutrally.
//!
//! The vendor crates turn the DMAR or IVRS into an [`IommuTopology`]; this module asks it
//! which unit translates each function, lets the PCI crate form Linux-equivalent groups
//! (with firmware-declared same-bus aliases fed in, as Linux's `pci_add_dma_alias`
//! does for AMD's IVRS), and works out every requester id each function's DMA can carry.
//! The result is what the VFIO layer hands out: a group is the unit of ownership.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use sluice_iommu::{IommuTopology, UnitId};
use sluice_pci::{
    DeviceTable, DmaAlias, GroupId, GroupTable, PciAddress, dma_aliases, form_groups,
};

/// How one translated function's DMA reaches its unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRoute {
    pub unit: UnitId,
    /// Every requester id its DMA can carry, its own first (topology and firmware aliases).
    pub requester_ids: Vec<DmaAlias>,
}

pub struct Discovery {
    pub topology: Box<dyn IommuTopology>,
    pub groups: GroupTable,
    pub routes: BTreeMap<PciAddress, DeviceRoute>,
    /// Functions no unit translates: they belong to no group and can never be assigned.
    pub untranslated: Vec<PciAddress>,
}

/// Firmware aliases that Linux would add as PCI DMA aliases: same bus only.
fn same_bus_devfns(device: PciAddress, firmware_aliases: &[u16]) -> Vec<u8> {
    firmware_aliases
        .iter()
        .filter(|&&rid| (rid >> 8) as u8 == device.bus && rid != device.bdf())
        .map(|&rid| rid as u8)
        .collect()
}

impl Discovery {
    pub fn new(topology: Box<dyn IommuTopology>, table: &DeviceTable) -> Self {
        let mut routes = BTreeMap::new();
        let mut firmware = BTreeMap::new();
        let mut untranslated = Vec::new();
        for d in table.iter() {
            match topology.binding(table, d.address) {
                Some(b) => {
                    firmware.insert(d.address, (b.unit, b.firmware_aliases));
                }
                None => untranslated.push(d.address),
            }
        }
        let extra = |a: PciAddress| {
            firmware
                .get(&a)
                .map(|(_, f)| same_bus_devfns(a, f))
                .unwrap_or_default()
        };
        let groups = form_groups(table, &|a| firmware.contains_key(&a), &extra);
        for (&address, (unit, _)) in &firmware {
            routes.insert(
                address,
                DeviceRoute {
                    unit: *unit,
                    requester_ids: dma_aliases(table, address, &extra(address)),
                },
            );
        }
        Discovery {
            topology,
            groups,
            routes,
            untranslated,
        }
    }

    fn unit_name(&self, unit: UnitId) -> &str {
        self.topology
            .units()
            .get(unit.0 as usize)
            .map_or("unit?", |u| u.name.as_str())
    }

    /// The unit of a group: that of its members. Several units in one group would mean
    /// firmware splits functions the IOMMU cannot keep apart: reported, first one used.
    pub fn group_unit(&self, id: GroupId) -> Option<(UnitId, bool)> {
        let group = self.groups.get(id)?;
        let mut units = group
            .devices
            .iter()
            .filter_map(|d| self.routes.get(d).map(|r| r.unit));
        let first = units.next()?;
        Some((first, units.all(|u| u == first)))
    }

    /// The boot report, like `/sys/kernel/iommu_groups`: one line per group, one per
    /// member with its requester ids and why it is there, then the untranslated ones.
    pub fn report(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for g in self.groups.iter() {
            let devices: Vec<String> = g.devices.iter().map(|d| format!("{d}")).collect();
            let (unit, consistent) = self.group_unit(g.id).unwrap_or((UnitId(u16::MAX), true));
            lines.push(format!(
                "group {} ({}): {}",
                g.id,
                self.unit_name(unit),
                devices.join(" ")
            ));
            if !consistent {
                lines.push(format!(
                    "    WARNING: group {} spans several IOMMU units",
                    g.id
                ));
            }
            for d in &g.devices {
                let rids: Vec<String> = self.routes.get(d).map_or(Vec::new(), |r| {
                    r.requester_ids
                        .iter()
                        .map(|a| {
                            format!(
                                "{:02x}:{:02x}.{}",
                                a.requester_id >> 8,
                                (a.requester_id >> 3) & 0x1f,
                                a.requester_id & 7
                            )
                        })
                        .collect()
                });
                let reason = g.reason(*d).map(|r| format!("{r}")).unwrap_or_default();
                lines.push(format!(
                    "    {d} requester-ids {} ({reason})",
                    rids.join(",")
                ));
            }
        }
        for d in &self.untranslated {
            let why = if self.topology.is_remapping_unit(*d) {
                "the IOMMU itself: never translated, never assignable"
            } else {
                "not translated by any IOMMU unit"
            };
            lines.push(format!("no group: {d} ({why})"));
        }
        lines.push(format!("formed {} IOMMU groups", self.groups.len()));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use sluice_iommu::{FirmwareBinding, UnitDescription, Vendor};
    use sluice_pci::fake::{FakeConfigSpace, FakeFunction};
    use sluice_pci::{EcamRegion, enumerate};

    /// A topology that translates everything on bus 0 and below with one unit, except
    /// `excluded`, and declares `alias` as a firmware alias of `aliased`.
    struct TestTopology {
        units: Vec<UnitDescription>,
        excluded: Option<PciAddress>,
        firmware_alias: Option<(PciAddress, u16)>,
    }

    impl IommuTopology for TestTopology {
        fn vendor(&self) -> Vendor {
            Vendor::AmdVi
        }
        fn units(&self) -> &[UnitDescription] {
            &self.units
        }
        fn binding(&self, _: &DeviceTable, device: PciAddress) -> Option<FirmwareBinding> {
            if Some(device) == self.excluded {
                return None;
            }
            let firmware_aliases = match self.firmware_alias {
                Some((d, rid)) if d == device => vec![rid],
                _ => vec![],
            };
            Some(FirmwareBinding {
                unit: UnitId(0),
                firmware_aliases,
            })
        }
    }

    fn unit() -> Vec<UnitDescription> {
        vec![UnitDescription {
            id: UnitId(0),
            vendor: Vendor::AmdVi,
            segment: 0,
            register_base: 0xfed8_0000,
            register_size: 0x4000,
            name: "ivhd0".to_string(),
        }]
    }

    fn addr(bus: u8, dev: u8, func: u8) -> PciAddress {
        PciAddress::new(0, bus, dev, func)
    }

    /// q35-like root bus: host bridge, an edu, a PCIe root port, a conventional bridge
    /// with an edu behind it, and ICH9's multifunction slot.
    fn machine() -> DeviceTable {
        let mut cfg = FakeConfigSpace::new();
        cfg.insert(addr(0, 0, 0), FakeFunction::host_bridge(0x8086, 0x29c0));
        cfg.insert(
            addr(0, 1, 0),
            FakeFunction::conventional_endpoint(0x1234, 0x11e8),
        );
        cfg.insert(addr(0, 2, 0), FakeFunction::pci_bridge(0, 1, 1));
        cfg.insert(
            addr(1, 1, 0),
            FakeFunction::conventional_endpoint(0x1234, 0x11e8),
        );
        cfg.insert(
            addr(0, 0x1f, 0),
            FakeFunction::endpoint(0x8086, 0x2918, 0x060100).multifunction(),
        );
        cfg.insert(
            addr(0, 0x1f, 2),
            FakeFunction::endpoint(0x8086, 0x2922, 0x010601).multifunction(),
        );
        enumerate(
            &cfg,
            &[EcamRegion {
                segment: 0,
                bus_start: 0,
                bus_end: 0xff,
                base: 0,
            }],
        )
    }

    #[test]
    fn groups_routes_and_report() {
        let table = machine();
        let topo = TestTopology {
            units: unit(),
            excluded: Some(addr(0, 0, 0)),
            firmware_alias: None,
        };
        let d = Discovery::new(Box::new(topo), &table);
        assert_eq!(d.untranslated, vec![addr(0, 0, 0)]);
        let behind = &d.routes[&addr(1, 1, 0)];
        let rids: Vec<u16> = behind
            .requester_ids
            .iter()
            .map(|a| a.requester_id)
            .collect();
        // Behind a conventional bridge the DMA also carries the bridge's own id.
        assert_eq!(rids, vec![0x0108, 0x0010]);
        let report = d.report();
        assert_eq!(
            report,
            vec![
                "group 0 (ivhd0): 0000:00:01.0".to_string(),
                "    0000:00:01.0 requester-ids 00:01.0 (isolated)".to_string(),
                "group 1 (ivhd0): 0000:00:02.0 0000:01:01.0".to_string(),
                "    0000:00:02.0 requester-ids 00:02.0 (isolated)".to_string(),
                "    0000:01:01.0 requester-ids 01:01.0,00:02.0 (DMA alias of 0000:00:02.0 (PCI bridge))"
                    .to_string(),
                "group 2 (ivhd0): 0000:00:1f.0 0000:00:1f.2".to_string(),
                "    0000:00:1f.0 requester-ids 00:1f.0 (isolated)".to_string(),
                "    0000:00:1f.2 requester-ids 00:1f.2 (multifunction slot without ACS, with 0000:00:1f.0)"
                    .to_string(),
                "no group: 0000:00:00.0 (not translated by any IOMMU unit)".to_string(),
                "formed 3 IOMMU groups".to_string(),
            ]
        );
    }

    #[test]
    fn same_bus_firmware_alias_merges_groups_and_adds_a_requester_id() {
        let table = machine();
        // Firmware says 00:01.0's DMA carries 00:00.0's id: they cannot be told apart.
        let topo = TestTopology {
            units: unit(),
            excluded: None,
            firmware_alias: Some((addr(0, 1, 0), 0x0000)),
        };
        let d = Discovery::new(Box::new(topo), &table);
        assert_eq!(
            d.groups.group_of(addr(0, 0, 0)),
            d.groups.group_of(addr(0, 1, 0))
        );
        let rids: Vec<u16> = d.routes[&addr(0, 1, 0)]
            .requester_ids
            .iter()
            .map(|a| a.requester_id)
            .collect();
        assert_eq!(rids, vec![0x0008, 0x0000]);
        // An alias on another bus is not a PCI alias (Linux ignores it for grouping).
        assert!(same_bus_devfns(addr(1, 1, 0), &[0x0010]).is_empty());
        assert_eq!(
            same_bus_devfns(addr(1, 1, 0), &[0x0100, 0x0108]),
            vec![0x00]
        );
    }
}
