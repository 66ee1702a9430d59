//! IOMMU grouping on the machines the QEMU integration tests boot, each with the
//! partition Linux would produce and why, plus random topologies.
//!
//! Reading guide for the expectations: a function joins (1) a group of a bridge
//! its DMA is aliased to, else (2) the group of the first bridge above it whose
//! path to the root is not fully ACS-isolated, else (3) a group of a same-bus
//! function it aliases, else (4) a group of another function of its slot when
//! both are multifunction without ACS, else it founds a group. Conventional PCI
//! never counts as ACS-isolated; single-function PCIe endpoints and upstream ports
//! always do. Group ids follow each group's lowest address.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use crate::fake::{FakeConfigSpace, FakeFunction};
use crate::*;

const WINDOW: EcamRegion = EcamRegion {
    segment: 0,
    bus_start: 0,
    bus_end: 255,
    base: 0xB000_0000,
};

/// The ACS capability QEMU gives `pcie-root-port` (unless `disable-acs=on`) and
/// other downstream ports that have one: SV, TB, RR, CR, UF, DT, all off at reset.
const QEMU_PORT_ACS: AcsFlags = AcsFlags::ISOLATION
    .union(AcsFlags::TRANSLATION_BLOCKING)
    .union(AcsFlags::DIRECT_TRANSLATED_P2P);

fn at(bus: u8, device: u8, function: u8) -> PciAddress {
    PciAddress::new(0, bus, device, function)
}

/// QEMU's `edu`: a conventional PCI function (no PCIe capability), single function.
fn edu() -> FakeFunction {
    FakeFunction::conventional_endpoint(0x1234, 0x11e8)
}

/// QEMU's `pcie-root-port` with its default ACS capability.
fn qemu_root_port(primary: u8, secondary: u8, subordinate: u8) -> FakeFunction {
    FakeFunction::root_port(primary, secondary, subordinate)
        .with_acs(QEMU_PORT_ACS, AcsFlags::empty())
}

/// Enumerates and enables ACS, as the kernel does before grouping.
fn boot(cfg: &FakeConfigSpace) -> DeviceTable {
    let mut table = enumerate(cfg, &[WINDOW]);
    enable_acs(cfg, &mut table);
    table
}

fn all_translated(_: PciAddress) -> bool {
    true
}

fn no_aliases(_: PciAddress) -> Vec<u8> {
    Vec::new()
}

fn groups_of(table: &DeviceTable) -> GroupTable {
    form_groups(table, &all_translated, &no_aliases)
}

/// The partition in id order.
fn partition(groups: &GroupTable) -> Vec<Vec<PciAddress>> {
    groups.iter().map(|group| group.devices.clone()).collect()
}

fn reason(groups: &GroupTable, address: PciAddress) -> GroupReason {
    groups
        .group_containing(address)
        .and_then(|group| group.reason(address))
        .unwrap_or_else(|| panic!("{address} has no group"))
}

fn requester_ids(table: &DeviceTable, address: PciAddress) -> Vec<u16> {
    dma_aliases(table, address, &[])
        .iter()
        .map(|alias| alias.requester_id)
        .collect()
}

/// q35's root bus: MCH host bridge, `edu`, and the ICH9 functions (LPC, SATA,
/// SMBus), which QEMU creates with the multifunction bit set on each.
fn flat_q35() -> FakeConfigSpace {
    FakeConfigSpace::new()
        .with(at(0, 0, 0), FakeFunction::host_bridge(0x8086, 0x29c0))
        .with(at(0, 1, 0), edu())
        .with(
            at(0, 0x1f, 0),
            FakeFunction::endpoint(0x8086, 0x2918, 0x06_01_00).multifunction(),
        )
        .with(
            at(0, 0x1f, 2),
            FakeFunction::endpoint(0x8086, 0x2922, 0x01_06_01).multifunction(),
        )
        .with(
            at(0, 0x1f, 3),
            FakeFunction::endpoint(0x8086, 0x2930, 0x0c_05_00).multifunction(),
        )
}

#[test]
fn flat_q35_root_bus() {
    // Everything is on the root bus, so step 2 never applies, and nothing aliases.
    // - 00.0 and 01.0 are single-function: nothing to share with, own groups
    //   (conventional PCI never counts as ACS-isolated, but that only matters
    //   for bridges above something, or for multifunction peers).
    // - 1f.0/1f.2/1f.3 are one multifunction conventional device: no ACS, so
    //   each function after the first joins the first one's group (step 4).
    let table = boot(&flat_q35());
    let groups = groups_of(&table);
    assert_eq!(
        partition(&groups),
        vec![
            vec![at(0, 0, 0)],
            vec![at(0, 1, 0)],
            vec![at(0, 0x1f, 0), at(0, 0x1f, 2), at(0, 0x1f, 3)],
        ]
    );
    assert_eq!(reason(&groups, at(0, 1, 0)), GroupReason::Isolated);
    assert_eq!(
        reason(&groups, at(0, 0x1f, 3)),
        GroupReason::MultifunctionSlot {
            device: at(0, 0x1f, 0)
        }
    );
    assert_eq!(
        format!("{groups}"),
        "\
group 0: 0000:00:00.0
group 1: 0000:00:01.0
group 2: 0000:00:1f.0 0000:00:1f.2 0000:00:1f.3
"
    );
    assert_eq!(
        format!("{}", groups.explain()),
        "\
group 0:
  0000:00:00.0 isolated
group 1:
  0000:00:01.0 isolated
group 2:
  0000:00:1f.0 isolated
  0000:00:1f.2 multifunction slot without ACS, with 0000:00:1f.0
  0000:00:1f.3 multifunction slot without ACS, with 0000:00:1f.0
"
    );
    assert_eq!(groups.group_of(at(0, 0x1f, 2)), Some(GroupId(2)));
    assert_eq!(groups.get(GroupId(1)).map(|g| g.devices.len()), Some(1));
    assert!(groups.get(GroupId(3)).is_none());
    assert_eq!(requester_ids(&table, at(0, 0x1f, 2)), [0x00fa]);
}

#[test]
fn multifunction_bit_on_function_zero_only_still_groups_the_slot() {
    // Linux marks every function found after function 0 as multifunction
    // (`pci_scan_slot`), whatever its own header type says.
    let cfg = FakeConfigSpace::new()
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
        );
    let groups = groups_of(&boot(&cfg));
    assert_eq!(
        partition(&groups),
        vec![vec![at(0, 0x1f, 0), at(0, 0x1f, 2), at(0, 0x1f, 3)]]
    );
}

/// Host bridge, two `pcie-root-port`s at 01.0 and 02.0, an `edu` below each.
fn two_root_ports(acs: bool) -> FakeConfigSpace {
    let port = |secondary| {
        if acs {
            qemu_root_port(0, secondary, secondary)
        } else {
            FakeFunction::root_port(0, secondary, secondary)
        }
    };
    FakeConfigSpace::new()
        .with(at(0, 0, 0), FakeFunction::host_bridge(0x8086, 0x29c0))
        .with(at(0, 1, 0), port(1))
        .with(at(0, 2, 0), port(2))
        .with(at(1, 0, 0), edu())
        .with(at(2, 0, 0), edu())
}

#[test]
fn root_ports_with_acs_isolate_what_is_below_them() {
    // enable_acs turns on SV|RR|CR|UF on both ports. For each edu: no alias (root
    // ports keep requester ids); step 2 asks whether its root port's path to the
    // root is ACS-isolated: yes (a root port with the controls on, on the root
    // bus), so the walk stops and the edu founds its own group. The ports are
    // single-function and on the root bus: own groups.
    let cfg = two_root_ports(true);
    let mut table = enumerate(&cfg, &[WINDOW]);
    let changes = enable_acs(&cfg, &mut table);
    assert_eq!(changes.len(), 2);
    assert!(
        changes
            .iter()
            .all(|c| c.write_stuck && c.after == AcsFlags::ISOLATION)
    );
    let groups = groups_of(&table);
    assert_eq!(
        partition(&groups),
        vec![
            vec![at(0, 0, 0)],
            vec![at(0, 1, 0)],
            vec![at(0, 2, 0)],
            vec![at(1, 0, 0)],
            vec![at(2, 0, 0)],
        ]
    );
    assert_eq!(reason(&groups, at(2, 0, 0)), GroupReason::Isolated);
    assert_eq!(requester_ids(&table, at(1, 0, 0)), [0x0100]);
}

#[test]
fn root_ports_without_acs_share_with_what_is_below_them() {
    // `disable-acs=on`: no ACS capability, so acs_enabled(root port) is false and
    // each edu joins its root port's group in step 2. The two sides stay apart:
    // each root port is alone on the root bus side (single function).
    let cfg = two_root_ports(false);
    let mut table = enumerate(&cfg, &[WINDOW]);
    assert!(enable_acs(&cfg, &mut table).is_empty());
    let groups = groups_of(&table);
    assert_eq!(
        partition(&groups),
        vec![
            vec![at(0, 0, 0)],
            vec![at(0, 1, 0), at(1, 0, 0)],
            vec![at(0, 2, 0), at(2, 0, 0)],
        ]
    );
    assert_eq!(
        reason(&groups, at(1, 0, 0)),
        GroupReason::BelowNonAcsBridge {
            bridge: at(0, 1, 0)
        }
    );
}

/// `pcie-root-port` 00:01.0 -> `pcie-pci-bridge` 01:00.0 -> edus at 02:01.0 and
/// 02:02.0 (QEMU's PCIe-to-PCI bridge keeps slot 0 for itself).
fn behind_pcie_pci_bridge() -> FakeConfigSpace {
    FakeConfigSpace::new()
        .with(at(0, 1, 0), qemu_root_port(0, 1, 2))
        .with(at(1, 0, 0), FakeFunction::pcie_to_pci_bridge(1, 2, 2))
        .with(at(2, 1, 0), edu())
        .with(at(2, 2, 0), edu())
}

#[test]
fn devices_behind_a_pcie_to_pci_bridge_share_its_group() {
    // The bridge: no alias above it (root port), its root port is ACS-isolated,
    // single function: own group. Each edu: its DMA reaches the IOMMU as (bus 2,
    // 00.0), owned by the bridge, so step 1 finds the bridge's group and joins it.
    // The root port (ACS) stays alone.
    let table = boot(&behind_pcie_pci_bridge());
    let groups = groups_of(&table);
    assert_eq!(
        partition(&groups),
        vec![
            vec![at(0, 1, 0)],
            vec![at(1, 0, 0), at(2, 1, 0), at(2, 2, 0)]
        ]
    );
    assert_eq!(
        reason(&groups, at(2, 2, 0)),
        GroupReason::BridgeAlias {
            bridge: at(1, 0, 0),
            kind: AliasKind::PcieToPciBridge
        }
    );
    // Requester ids: own, then the bridge's (secondary bus, 00.0).
    assert_eq!(requester_ids(&table, at(2, 1, 0)), [0x0208, 0x0200]);
    assert_eq!(requester_ids(&table, at(2, 2, 0)), [0x0210, 0x0200]);
    assert_eq!(requester_ids(&table, at(1, 0, 0)), [0x0100]);
    assert_eq!(
        format!("{}", groups.explain()),
        "\
group 0:
  0000:00:01.0 isolated
group 1:
  0000:01:00.0 isolated
  0000:02:01.0 DMA alias of 0000:01:00.0 (PCIe-to-PCI bridge)
  0000:02:02.0 DMA alias of 0000:01:00.0 (PCIe-to-PCI bridge)
"
    );
}

#[test]
fn devices_behind_a_conventional_pci_bridge_share_its_group() {
    // QEMU `pci-bridge` on the root bus at 03.0, edus at 01:01.0 and 01:02.0. A
    // conventional bridge forwards DMA under its own id (00:03.0): step 1 joins
    // the bridge's group.
    let cfg = FakeConfigSpace::new()
        .with(at(0, 3, 0), FakeFunction::pci_bridge(0, 1, 1))
        .with(at(1, 1, 0), edu())
        .with(at(1, 2, 0), edu());
    let table = boot(&cfg);
    let groups = groups_of(&table);
    assert_eq!(
        partition(&groups),
        vec![vec![at(0, 3, 0), at(1, 1, 0), at(1, 2, 0)]]
    );
    assert_eq!(requester_ids(&table, at(1, 1, 0)), [0x0108, 0x0018]);
    assert_eq!(requester_ids(&table, at(1, 2, 0)), [0x0110, 0x0018]);
    assert_eq!(
        reason(&groups, at(1, 1, 0)),
        GroupReason::BridgeAlias {
            bridge: at(0, 3, 0),
            kind: AliasKind::ConventionalBridge
        }
    );
}

#[test]
fn conventional_multifunction_device_on_the_root_bus() {
    // 03.0/03.1: conventional, so never ACS-isolated; 03.1 joins 03.0 (step 4).
    // 04.0 is single-function: alone.
    let cfg = FakeConfigSpace::new()
        .with(at(0, 3, 0), edu().multifunction())
        .with(at(0, 3, 1), edu().multifunction())
        .with(at(0, 4, 0), edu());
    let groups = groups_of(&boot(&cfg));
    assert_eq!(
        partition(&groups),
        vec![vec![at(0, 3, 0), at(0, 3, 1)], vec![at(0, 4, 0)]]
    );
}

/// `pcie-root-port` 00:01.0 (ACS) -> `x3130-upstream` 01:00.0 -> two
/// `xio3130-downstream` ports 02:00.0 and 02:01.0 -> an edu at 03:00.0.
fn switch(downstream_acs: bool) -> FakeConfigSpace {
    let downstream = |secondary| {
        let port = FakeFunction::downstream_port(2, secondary, secondary);
        if downstream_acs {
            port.with_acs(QEMU_PORT_ACS, AcsFlags::empty())
        } else {
            port
        }
    };
    FakeConfigSpace::new()
        .with(at(0, 1, 0), qemu_root_port(0, 1, 4))
        .with(at(1, 0, 0), FakeFunction::upstream_port(1, 2, 4))
        .with(at(2, 0, 0), downstream(3))
        .with(at(2, 1, 0), downstream(4))
        .with(at(3, 0, 0), edu())
}

#[test]
fn switch_without_acs_on_its_downstream_ports() {
    // - root port: root bus, alone.
    // - upstream port: single-function, so ACS does not apply to it (counts as
    //   enabled); the root port above is isolated: alone.
    // - each downstream port: the path from the upstream port to the root is
    //   isolated, so each founds its own group. (Linux does the same; the 2025
    //   rework of pci_device_group would merge both ports and everything below,
    //   since the edu could reach the second port's subtree.)
    // - edu: the downstream port above it has no ACS, so it joins that port's group.
    let table = boot(&switch(false));
    let groups = groups_of(&table);
    assert_eq!(
        partition(&groups),
        vec![
            vec![at(0, 1, 0)],
            vec![at(1, 0, 0)],
            vec![at(2, 0, 0), at(3, 0, 0)],
            vec![at(2, 1, 0)],
        ]
    );
    assert_eq!(
        reason(&groups, at(3, 0, 0)),
        GroupReason::BelowNonAcsBridge {
            bridge: at(2, 0, 0)
        }
    );
    assert_eq!(requester_ids(&table, at(3, 0, 0)), [0x0300]);
}

#[test]
fn switch_with_acs_on_its_downstream_ports() {
    // Now the edu's downstream port, the upstream port (single function) and the
    // root port are all isolating: the edu founds its own group.
    let groups = groups_of(&boot(&switch(true)));
    assert_eq!(
        partition(&groups),
        vec![
            vec![at(0, 1, 0)],
            vec![at(1, 0, 0)],
            vec![at(2, 0, 0)],
            vec![at(2, 1, 0)],
            vec![at(3, 0, 0)],
        ]
    );
}

/// An ACS root port with a two-function PCIe endpoint below it.
fn multifunction_endpoint(acs: Option<AcsFlags>) -> FakeConfigSpace {
    let function = |device_id| {
        let function = FakeFunction::pcie_endpoint(0x8086, device_id).multifunction();
        match acs {
            Some(capability) => function.with_acs(capability, AcsFlags::empty()),
            None => function,
        }
    };
    FakeConfigSpace::new()
        .with(at(0, 1, 0), qemu_root_port(0, 1, 1))
        .with(at(1, 0, 0), function(0x10c9))
        .with(at(1, 0, 1), function(0x10ca))
}

#[test]
fn multifunction_pcie_endpoint_with_and_without_acs() {
    // With ACS (enabled by enable_acs) each function is isolated from the other:
    // step 4 does not apply, separate groups.
    let groups = groups_of(&boot(&multifunction_endpoint(Some(AcsFlags::ISOLATION))));
    assert_eq!(
        partition(&groups),
        vec![vec![at(0, 1, 0)], vec![at(1, 0, 0)], vec![at(1, 0, 1)]]
    );
    // A capability implementing only RR and CR is enough: SV and UF, absent from
    // the capability, count as hard-wired.
    let partial = AcsFlags::REQUEST_REDIRECT | AcsFlags::COMPLETION_REDIRECT;
    let groups = groups_of(&boot(&multifunction_endpoint(Some(partial))));
    assert_eq!(groups.len(), 3);
    // Without ACS the functions can reach each other inside the device: shared.
    let groups = groups_of(&boot(&multifunction_endpoint(None)));
    assert_eq!(
        partition(&groups),
        vec![vec![at(0, 1, 0)], vec![at(1, 0, 0), at(1, 0, 1)]]
    );
    // With the capabilities but without enable_acs, every control is off, the
    // root port's too: everything below it shares its group.
    let cfg = multifunction_endpoint(Some(AcsFlags::ISOLATION));
    let groups = groups_of(&enumerate(&cfg, &[WINDOW]));
    assert_eq!(
        partition(&groups),
        vec![vec![at(0, 1, 0), at(1, 0, 0), at(1, 0, 1)]]
    );
}

#[test]
fn ineligible_functions_get_no_group_and_are_skipped() {
    // The host bridge is not translated: no group; everything else as before.
    let table = boot(&flat_q35());
    let not_host_bridge = |address: PciAddress| address != at(0, 0, 0);
    let groups = form_groups(&table, &not_host_bridge, &no_aliases);
    assert_eq!(groups.group_of(at(0, 0, 0)), None);
    assert_eq!(
        partition(&groups),
        vec![
            vec![at(0, 1, 0)],
            vec![at(0, 0x1f, 0), at(0, 0x1f, 2), at(0, 0x1f, 3)],
        ]
    );

    // 1f.0 untranslated: 1f.2 and 1f.3 still find each other (the search passes
    // over 1f.0, which has no group).
    let not_lpc = |address: PciAddress| address != at(0, 0x1f, 0);
    let groups = form_groups(&table, &not_lpc, &no_aliases);
    assert_eq!(
        groups
            .group_containing(at(0, 0x1f, 3))
            .map(|g| g.devices.clone()),
        Some(vec![at(0, 0x1f, 2), at(0, 0x1f, 3)])
    );
}

#[test]
fn an_ineligible_non_acs_bridge_does_not_stop_grouping_below_it() {
    // Root ports without ACS; 00:01.0 is not translated. Its edu walks past it
    // (Linux: iommu_group_get returns NULL, the loop goes on up) and, finding
    // nothing, founds a group. 00:02.0 is translated: its edu joins it.
    let table = boot(&two_root_ports(false));
    let eligible = |address: PciAddress| address != at(0, 1, 0);
    let groups = form_groups(&table, &eligible, &no_aliases);
    assert_eq!(groups.group_of(at(0, 1, 0)), None);
    assert_eq!(
        partition(&groups),
        vec![
            vec![at(0, 0, 0)],
            vec![at(0, 2, 0), at(2, 0, 0)],
            vec![at(1, 0, 0)],
        ]
    );
    assert_eq!(
        reason(&groups, at(1, 0, 0)),
        GroupReason::FirstBelow {
            bridge: at(0, 1, 0)
        }
    );
}

#[test]
fn an_untranslated_aliasing_bridge_splits_what_shares_its_requester_id() {
    // A pitfall for the caller, faithful to Linux: if a conventional PCI bridge
    // is not eligible but the devices behind it are, each device founds its own
    // group although both DMA as the bridge (00:03.0). `eligible` must therefore
    // hold for an aliasing bridge whenever it holds for anything behind it (true
    // of DMAR/IVRS scopes, which cover a bridge together with its buses).
    let cfg = FakeConfigSpace::new()
        .with(at(0, 3, 0), FakeFunction::pci_bridge(0, 1, 1))
        .with(at(1, 1, 0), edu())
        .with(at(1, 2, 0), edu());
    let table = boot(&cfg);
    let eligible = |address: PciAddress| address != at(0, 3, 0);
    let groups = form_groups(&table, &eligible, &no_aliases);
    assert_eq!(
        partition(&groups),
        vec![vec![at(1, 1, 0)], vec![at(1, 2, 0)]]
    );
    assert_eq!(
        reason(&groups, at(1, 2, 0)),
        GroupReason::FirstBelow {
            bridge: at(0, 3, 0)
        }
    );
}

#[test]
fn acs_writes_that_do_not_stick_leave_devices_grouped() {
    // Root port 00:01.0 advertises ACS but its control register ignores writes;
    // 00:02.0 only lets SV and RR change. Grouping uses the read-back: neither
    // isolates, so each edu shares its root port's group.
    let cfg = FakeConfigSpace::new()
        .with(
            at(0, 1, 0),
            FakeFunction::root_port(0, 1, 1).with_acs_writable(
                QEMU_PORT_ACS,
                AcsFlags::empty(),
                AcsFlags::empty(),
            ),
        )
        .with(
            at(0, 2, 0),
            FakeFunction::root_port(0, 2, 2).with_acs_writable(
                QEMU_PORT_ACS,
                AcsFlags::empty(),
                AcsFlags::SOURCE_VALIDATION | AcsFlags::REQUEST_REDIRECT,
            ),
        )
        .with(at(0, 3, 0), qemu_root_port(0, 3, 3))
        .with(at(1, 0, 0), edu())
        .with(at(2, 0, 0), edu())
        .with(at(3, 0, 0), edu());
    let mut table = enumerate(&cfg, &[WINDOW]);
    let changes = enable_acs(&cfg, &mut table);
    let stuck: Vec<(PciAddress, bool)> =
        changes.iter().map(|c| (c.address, c.write_stuck)).collect();
    assert_eq!(
        stuck,
        [
            (at(0, 1, 0), false),
            (at(0, 2, 0), false),
            (at(0, 3, 0), true)
        ]
    );
    let stored = |address| {
        table
            .get(address)
            .and_then(|d| d.capabilities.acs)
            .map(|acs| acs.control)
    };
    assert_eq!(stored(at(0, 1, 0)), Some(AcsFlags::empty()));
    assert_eq!(
        stored(at(0, 2, 0)),
        Some(AcsFlags::SOURCE_VALIDATION | AcsFlags::REQUEST_REDIRECT)
    );
    assert_eq!(stored(at(0, 3, 0)), Some(AcsFlags::ISOLATION));
    let groups = groups_of(&table);
    assert_eq!(
        partition(&groups),
        vec![
            vec![at(0, 1, 0), at(1, 0, 0)],
            vec![at(0, 2, 0), at(2, 0, 0)],
            vec![at(0, 3, 0)],
            vec![at(3, 0, 0)],
        ]
    );
}

#[test]
fn firmware_aliases_merge_same_bus_functions() {
    // Four single-function PCIe endpoints on the root bus (RC-integrated, like
    // on-chip devices). Firmware says 00:03.0 also DMAs as 00:02.0, and 00:04.0
    // as 00:06.0, where nothing lives.
    let cfg = FakeConfigSpace::new()
        .with(at(0, 2, 0), FakeFunction::pcie_endpoint(1, 2))
        .with(at(0, 3, 0), FakeFunction::pcie_endpoint(1, 3))
        .with(at(0, 4, 0), FakeFunction::pcie_endpoint(1, 4))
        .with(at(0, 5, 0), FakeFunction::pcie_endpoint(1, 5));
    let table = boot(&cfg);
    let extra = |address: PciAddress| match address.device {
        3 => vec![0x10],
        4 => vec![0x30],
        _ => Vec::new(),
    };
    let groups = form_groups(&table, &all_translated, &extra);
    assert_eq!(
        partition(&groups),
        vec![
            vec![at(0, 2, 0), at(0, 3, 0)],
            vec![at(0, 4, 0)],
            vec![at(0, 5, 0)],
        ]
    );
    assert_eq!(
        reason(&groups, at(0, 3, 0)),
        GroupReason::FirmwareAlias {
            device: at(0, 2, 0)
        }
    );
    let ids: Vec<u16> = dma_aliases(&table, at(0, 4, 0), &extra(at(0, 4, 0)))
        .iter()
        .map(|alias| alias.requester_id)
        .collect();
    assert_eq!(ids, [0x0020, 0x0030]);

    // The other direction: 00:02.0 declares the alias to 00:03.0, so 00:03.0
    // finds it in step 3 ("they alias us").
    let reverse = |address: PciAddress| {
        if address.device == 2 {
            vec![0x18]
        } else {
            Vec::new()
        }
    };
    let groups = form_groups(&table, &all_translated, &reverse);
    assert_eq!(
        reason(&groups, at(0, 3, 0)),
        GroupReason::AliasPeer {
            device: at(0, 2, 0)
        }
    );
    assert_eq!(groups.len(), 3);
}

#[test]
fn alias_searches_pass_through_untranslated_functions_and_end_on_cycles() {
    // 00:02.0 (untranslated) aliases both 00:01.0 and 00:03.0: 00:03.0 reaches
    // 00:01.0's group through it. 00:04.0 -> 00:05.0 -> 00:06.0 -> 00:04.0 is a
    // cycle: one group, and the search ends.
    let mut cfg = FakeConfigSpace::new();
    for device in 1..=6 {
        cfg.insert(
            at(0, device, 0),
            FakeFunction::pcie_endpoint(1, u16::from(device)),
        );
    }
    let table = boot(&cfg);
    let devfn = |device: u8| device << 3;
    let extra = move |address: PciAddress| match address.device {
        2 => vec![devfn(1), devfn(3)],
        4 => vec![devfn(5)],
        5 => vec![devfn(6)],
        6 => vec![devfn(4)],
        _ => Vec::new(),
    };
    let eligible = |address: PciAddress| address.device != 2;
    let groups = form_groups(&table, &eligible, &extra);
    assert_eq!(
        partition(&groups),
        vec![
            vec![at(0, 1, 0), at(0, 3, 0)],
            vec![at(0, 4, 0), at(0, 5, 0), at(0, 6, 0)],
        ]
    );
    assert_eq!(
        reason(&groups, at(0, 3, 0)),
        GroupReason::AliasPeer {
            device: at(0, 1, 0)
        }
    );
}

#[test]
fn bridges_are_grouped_before_their_children_whatever_the_bus_numbers() {
    // A hand-made table (not from enumerate) where the root port sits on root
    // bus 3 and its secondary bus is 1: address order would put the edu first.
    // The grouping follows the tree, so the edu still joins the non-ACS port.
    let cfg = FakeConfigSpace::new()
        .with(at(3, 0, 0), FakeFunction::root_port(3, 1, 1))
        .with(at(1, 0, 0), edu());
    let mut table = enumerate(&cfg, &[WINDOW]);
    for device in &mut table.devices {
        if device.address == at(1, 0, 0) {
            device.parent = Some(at(3, 0, 0));
        }
    }
    let groups = groups_of(&table);
    assert_eq!(partition(&groups), vec![vec![at(1, 0, 0), at(3, 0, 0)]]);
    assert_eq!(
        reason(&groups, at(1, 0, 0)),
        GroupReason::BelowNonAcsBridge {
            bridge: at(3, 0, 0)
        }
    );
}

#[test]
fn parent_loops_in_a_corrupt_table_still_give_every_function_one_group() {
    let table = boot(&switch(false));
    let mut looped = table.clone();
    for device in &mut looped.devices {
        if device.address == at(0, 1, 0) {
            // The root port claims to be below the first downstream port.
            device.parent = Some(at(2, 0, 0));
        }
    }
    let groups = groups_of(&looped);
    let grouped: usize = groups.iter().map(|group| group.devices.len()).sum();
    assert_eq!(grouped, looped.len());
    for device in &looped {
        assert!(
            groups.group_of(device.address).is_some(),
            "{}",
            device.address
        );
    }
}

#[test]
fn empty_table_gives_no_groups() {
    let groups = groups_of(&DeviceTable::default());
    assert!(groups.is_empty());
    assert_eq!(format!("{groups}"), "");
}

// ---- random topologies ---------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum RandomAcs {
    /// No ACS capability.
    Absent,
    /// SV|RR|CR|UF implemented and writable: enable_acs turns them on.
    Writable,
    /// Implemented, but the control register ignores writes.
    Stuck,
    /// Only RR and CR implemented (SV and UF count as hard-wired).
    Partial,
}

#[derive(Clone, Copy, Debug)]
enum RandomBridge {
    RootPort,
    Upstream,
    Downstream,
    PcieToPci,
    PciToPcie,
    Pci,
}

#[derive(Clone, Debug)]
enum RandomNode {
    Endpoint {
        pcie: bool,
        functions: u8,
        multifunction_bit_on_all: bool,
        acs: RandomAcs,
    },
    Bridge {
        kind: RandomBridge,
        acs: RandomAcs,
        children: Vec<RandomNode>,
    },
}

fn random_acs() -> impl Strategy<Value = RandomAcs> {
    prop_oneof![
        Just(RandomAcs::Absent),
        Just(RandomAcs::Writable),
        Just(RandomAcs::Stuck),
        Just(RandomAcs::Partial),
    ]
}

fn random_node() -> impl Strategy<Value = RandomNode> {
    let endpoint = (any::<bool>(), 1u8..=3, any::<bool>(), random_acs()).prop_map(
        |(pcie, functions, multifunction_bit_on_all, acs)| RandomNode::Endpoint {
            pcie,
            functions,
            multifunction_bit_on_all,
            acs,
        },
    );
    let kind = prop_oneof![
        Just(RandomBridge::RootPort),
        Just(RandomBridge::Upstream),
        Just(RandomBridge::Downstream),
        Just(RandomBridge::PcieToPci),
        Just(RandomBridge::PciToPcie),
        Just(RandomBridge::Pci),
    ];
    endpoint.prop_recursive(4, 48, 4, move |inner| {
        (
            kind.clone(),
            random_acs(),
            proptest::collection::vec(inner, 0..4),
        )
            .prop_map(|(kind, acs, children)| RandomNode::Bridge {
                kind,
                acs,
                children,
            })
    })
}

fn with_random_acs(function: FakeFunction, acs: RandomAcs) -> FakeFunction {
    match acs {
        RandomAcs::Absent => function,
        RandomAcs::Writable => function.with_acs(AcsFlags::ISOLATION, AcsFlags::empty()),
        RandomAcs::Stuck => {
            function.with_acs_writable(AcsFlags::ISOLATION, AcsFlags::empty(), AcsFlags::empty())
        }
        RandomAcs::Partial => function.with_acs(
            AcsFlags::REQUEST_REDIRECT | AcsFlags::COMPLETION_REDIRECT,
            AcsFlags::empty(),
        ),
    }
}

/// Places `nodes` as devices 0.. of `bus`, numbering buses depth first as
/// firmware does.
fn place(cfg: &mut FakeConfigSpace, nodes: &[RandomNode], bus: u8, next_bus: &mut u16) {
    for (slot, node) in nodes.iter().enumerate() {
        let device = slot as u8;
        match node {
            RandomNode::Endpoint {
                pcie,
                functions,
                multifunction_bit_on_all,
                acs,
            } => {
                for function in 0..*functions {
                    let mut f = if *pcie {
                        with_random_acs(FakeFunction::pcie_endpoint(0x8086, 0x1000), *acs)
                    } else {
                        edu()
                    };
                    if *functions > 1 && (function == 0 || *multifunction_bit_on_all) {
                        f = f.multifunction();
                    }
                    cfg.insert(at(bus, device, function), f);
                }
            }
            RandomNode::Bridge {
                kind,
                acs,
                children,
            } => {
                if *next_bus > 255 {
                    cfg.insert(at(bus, device, 0), edu());
                    continue;
                }
                let secondary = *next_bus as u8;
                *next_bus += 1;
                place(cfg, children, secondary, next_bus);
                let subordinate = (*next_bus - 1) as u8;
                let (p, s, u) = (bus, secondary, subordinate);
                let function = match kind {
                    RandomBridge::RootPort => {
                        with_random_acs(FakeFunction::root_port(p, s, u), *acs)
                    }
                    RandomBridge::Upstream => {
                        with_random_acs(FakeFunction::upstream_port(p, s, u), *acs)
                    }
                    RandomBridge::Downstream => {
                        with_random_acs(FakeFunction::downstream_port(p, s, u), *acs)
                    }
                    RandomBridge::PcieToPci => FakeFunction::pcie_to_pci_bridge(p, s, u),
                    RandomBridge::PciToPcie => {
                        FakeFunction::bridge(1, 8, p, s, u).with_pcie(PciePortType::PciToPcieBridge)
                    }
                    RandomBridge::Pci => FakeFunction::pci_bridge(p, s, u),
                };
                cfg.insert(at(bus, device, 0), function);
            }
        }
    }
}

fn mix(seed: u64, address: PciAddress) -> u64 {
    (u64::from(address.bdf()) ^ seed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_topologies_group_soundly(
        roots in proptest::collection::vec(random_node(), 1..6),
        eligibility_seed in any::<u64>(),
        alias_seed in any::<u64>(),
        with_aliases in any::<bool>(),
    ) {
        let mut cfg = FakeConfigSpace::new();
        let mut next_bus = 1u16;
        place(&mut cfg, &roots, 0, &mut next_bus);
        let table = boot(&cfg);

        // About one function in seven is not translated; with `with_aliases`,
        // about one in eight gets a firmware alias to another function of its bus.
        let eligible_of = |address: PciAddress| mix(eligibility_seed, address) % 7 != 0;
        let mut extra: BTreeMap<PciAddress, Vec<u8>> = BTreeMap::new();
        if with_aliases {
            for device in &table {
                let hash = mix(alias_seed, device.address);
                if hash % 8 == 0 {
                    let same_bus: Vec<&PciDevice> = table
                        .iter()
                        .filter(|other| other.address.bus == device.address.bus)
                        .collect();
                    let target = same_bus[(hash >> 8) as usize % same_bus.len()];
                    extra.insert(device.address, vec![target.address.bdf() as u8]);
                }
            }
        }
        let extra_of = |address: PciAddress| extra.get(&address).cloned().unwrap_or_default();
        let groups = form_groups(&table, &eligible_of, &extra_of);

        // Every eligible function in exactly one group, ineligible ones in none,
        // groups disjoint and consistent.
        let mut seen = BTreeSet::new();
        for group in &groups {
            let members: BTreeSet<PciAddress> = group.members.iter().map(|m| m.address).collect();
            let devices: BTreeSet<PciAddress> = group.devices.iter().copied().collect();
            prop_assert_eq!(&members, &devices);
            prop_assert_eq!(devices.len(), group.devices.len());
            prop_assert!(group.devices.windows(2).all(|pair| pair[0] < pair[1]));
            for &device in &group.devices {
                prop_assert!(seen.insert(device), "{} in two groups", device);
                prop_assert_eq!(groups.group_of(device), Some(group.id));
            }
        }
        for device in &table {
            let address = device.address;
            prop_assert_eq!(groups.group_of(address).is_some(), eligible_of(address), "{}", address);
            prop_assert_eq!(seen.contains(&address), eligible_of(address));
        }
        // Ids are 0..n in order of each group's lowest address.
        for (number, group) in groups.iter().enumerate() {
            prop_assert_eq!(group.id, GroupId(number as u32));
        }
        prop_assert!(groups.iter().collect::<Vec<_>>().windows(2).all(|pair| pair[0].devices[0] < pair[1].devices[0]));

        let same_group = |a: PciAddress, b: PciAddress| {
            groups.group_of(a).is_some() && groups.group_of(a) == groups.group_of(b)
        };
        let aliases_of = |address: PciAddress| dma_aliases(&table, address, &extra_of(address));
        for device in &table {
            let address = device.address;
            if !eligible_of(address) {
                continue;
            }
            let aliases = aliases_of(address);
            // An eligible bridge whose requester id this function's DMA carries
            // is in its group.
            for bridge in aliases.iter().filter_map(|alias| alias.via) {
                if eligible_of(bridge) {
                    prop_assert!(same_group(address, bridge), "{} not with aliasing {}", address, bridge);
                }
            }
            // Without aliasing bridges, an eligible parent that does not isolate
            // (no ACS on its path to the root) shares the group.
            let aliased = aliases.iter().any(|alias| alias.via.is_some());
            if let Some(parent) = device.parent
                && !aliased
                && eligible_of(parent)
                && !acs_path_enabled(&table, parent, AcsFlags::ISOLATION)
            {
                prop_assert!(same_group(address, parent), "{} not with non-ACS {}", address, parent);
            }
        }
        // Functions of one slot, both multifunction without ACS, whose search
        // starts at themselves (no aliasing bridge, isolated path above), share a
        // group when no firmware alias on their bus could pull one elsewhere.
        let starts_at_itself = |device: &PciDevice| {
            !aliases_of(device.address).iter().any(|alias| alias.via.is_some())
                && device.parent.is_none_or(|parent| acs_path_enabled(&table, parent, AcsFlags::ISOLATION))
        };
        for a in &table {
            for b in &table {
                let (x, y) = (a.address, b.address);
                let same_slot = x < y && x.bus == y.bus && x.device == y.device;
                let bus_has_aliases = extra.keys().any(|k| k.bus == x.bus);
                if same_slot
                    && !bus_has_aliases
                    && eligible_of(x)
                    && eligible_of(y)
                    && is_multifunction(a)
                    && is_multifunction(b)
                    && !acs_enabled(a, AcsFlags::ISOLATION)
                    && !acs_enabled(b, AcsFlags::ISOLATION)
                    && starts_at_itself(a)
                    && starts_at_itself(b)
                {
                    prop_assert!(same_group(x, y), "{} and {} split", x, y);
                }
            }
        }
        // Isolation: below root-bus bridges whose every bridge on the path is an
        // ACS-enabled root or downstream port, functions under different such
        // top-level ports never share a group.
        let isolated_top = |device: &PciDevice| -> Option<PciAddress> {
            let chain = table.ancestors(device.address);
            let top = chain.last()?;
            chain
                .iter()
                .all(|bridge| {
                    matches!(bridge.kind, DeviceKind::RootPort | DeviceKind::DownstreamPort)
                        && acs_enabled(bridge, AcsFlags::ISOLATION)
                })
                .then_some(top.address)
        };
        for a in &table {
            for b in &table {
                if let (Some(top_a), Some(top_b)) = (isolated_top(a), isolated_top(b))
                    && top_a != top_b
                {
                    prop_assert!(
                        !same_group(a.address, b.address),
                        "{} (below {}) and {} (below {}) share a group\n{}",
                        a.address, top_a, b.address, top_b, groups.explain()
                    );
                }
            }
        }
        // Deterministic.
        prop_assert_eq!(&form_groups(&table, &eligible_of, &extra_of), &groups);
        let _ = format!("{groups}{}", groups.explain());
    }
}
