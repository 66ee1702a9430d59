//! IOMMU groups: the smallest sets of functions the IOMMU can keep apart.
//!
//! The IOMMU isolates *requester ids*, not devices. Two functions it cannot tell
//! apart (they share a DMA alias), or that can reach each other without passing
//! through it (peer-to-peer below a switch or bridge without ACS, functions of one
//! multifunction device without ACS), must be handed to the same owner or not at
//! all. A group is such a set; passthrough is per group, never per device.
//!
//! [`form_groups()`] is Linux's `pci_device_group` (`drivers/iommu/iommu.c`), run
//! for every function in the order Linux adds devices (each bus's functions in
//! device/function order, then the buses below each bridge, depth first), which
//! guarantees a bridge is grouped before anything below it. For one function
//! `pdev`:
//!
//! 1. **DMA aliases** (`pci_for_each_dma_alias` with `get_pci_alias_or_group`):
//!    walk the function's aliases ([`crate::alias`]); the first aliasing bridge that
//!    already has a group is joined. The last aliasing bridge becomes the starting
//!    point for what follows (nothing below it can be told apart anyway).
//!    For caller-supplied same-bus aliases Linux only looks at `pdev` itself here
//!    (and finds the aliased device in step 3); this also looks at the device at
//!    that devfn, which can only merge more (see "Differences").
//! 2. **Upstream without ACS**: from the starting point, for each bridge above,
//!    stop as soon as that bridge and everything above it to the root bus are
//!    ACS-isolated ([`crate::acs::acs_path_enabled`] with [`AcsFlags::ISOLATION`]);
//!    otherwise the bridge becomes the starting point and, if it has a group, that
//!    group is joined: everything below a non-isolating bridge can talk to it.
//! 3. **Alias peers** (`get_pci_alias_group`): a function on the starting point's
//!    bus that aliases it or that it aliases (caller-supplied aliases), searched
//!    transitively, with a devfn bitmap so alias cycles end.
//! 4. **Multifunction peers** (`get_pci_function_alias_group`): if the starting
//!    point is part of a multifunction device and not ACS-isolated, the other
//!    functions of its slot that are not ACS-isolated either (and their aliases).
//! 5. Otherwise a new group.
//!
//! Functions the caller says no IOMMU translates ("not eligible") get no group;
//! every lookup of their group finds none, exactly like Linux's `iommu_group_get`
//! returning NULL for a device without an IOMMU, and the walks carry on past them.
//!
//! Group ids are renumbered at the end: 0, 1, 2, ... in the order of each group's
//! lowest function address, so the same machine always gets the same numbers.
//!
//! # Differences from Linux
//! - No device-specific ACS or alias quirks (Linux's `pci_dev_specific_acs_enabled`,
//!   `PCI_DEV_FLAG_PCIE_BRIDGE_ALIAS`, `PCI_DEV_FLAGS_BRIDGE_XLATE_ROOT`, VMD's
//!   `pci_real_dma_dev`). Firmware aliases come in through `extra_aliases`.
//! - Step 1 also joins the group of a same-bus device named by an extra alias. In
//!   every topology where the bridges involved are translated this gives Linux's
//!   result (that device reached the same group through the same bridges, or
//!   step 3 finds it); it differs only when an ineligible non-ACS bridge sits above
//!   both, where Linux would split two functions sharing a requester id.
//! - Each membership records a [`GroupReason`] for the boot log.
//!
//! This is the long-standing Linux algorithm. A 2025 Linux patch series ("iommu:
//! Compute iommu_groups properly for PCIe switches") argues it under-groups
//! switches whose downstream ports lack ACS (each such port keeps its own group,
//! though the devices below them can reach one another) and reworks it per bus;
//! this module follows the algorithm as specified, not that rework.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::ops::ControlFlow;

use crate::acs::{MAX_PATH_HOPS, acs_enabled, is_multifunction, path_enabled};
use crate::alias::{AliasKind, for_each_alias};
use crate::{AcsFlags, DeviceTable, PciAddress, PciDevice};

/// The number of an IOMMU group: 0, 1, 2, ... in the order of the groups' lowest
/// function addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u32);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a function is in its group: which rule put it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupReason {
    /// Nothing it aliases or can reach had a group: it founded a new one.
    Isolated,
    /// It founded a new group, but as seen from `bridge`: an aliasing or non-ACS
    /// bridge above it that has no group of its own (no IOMMU translates it).
    FirstBelow {
        /// The bridge the search started from.
        bridge: PciAddress,
    },
    /// Its DMA carries a requester id of `bridge` (step 1).
    BridgeAlias {
        /// The bridge introducing the alias.
        bridge: PciAddress,
        /// What kind of bridge it is.
        kind: AliasKind,
    },
    /// A caller-supplied alias names `device`, on the same bus (step 1).
    FirmwareAlias {
        /// The function at the aliased device/function number.
        device: PciAddress,
    },
    /// It is below `bridge`, and the path from `bridge` to the root bus is not
    /// entirely ACS-isolated (step 2).
    BelowNonAcsBridge {
        /// The first bridge (walking up) whose path to the root lacks ACS.
        bridge: PciAddress,
    },
    /// It and `device` (same bus) alias one another, possibly through others
    /// (step 3).
    AliasPeer {
        /// The function whose group was found.
        device: PciAddress,
    },
    /// It and `device` are functions of one slot, neither ACS-isolated (step 4).
    MultifunctionSlot {
        /// The function whose group was found.
        device: PciAddress,
    },
}

impl fmt::Display for GroupReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupReason::Isolated => f.write_str("isolated"),
            GroupReason::FirstBelow { bridge } => {
                write!(f, "first below {bridge}, which has no group")
            }
            GroupReason::BridgeAlias { bridge, kind } => {
                write!(f, "DMA alias of {bridge} ({kind})")
            }
            GroupReason::FirmwareAlias { device } => write!(f, "firmware DMA alias of {device}"),
            GroupReason::BelowNonAcsBridge { bridge } => {
                write!(f, "below {bridge} without ACS to the root")
            }
            GroupReason::AliasPeer { device } => write!(f, "DMA alias peer of {device}"),
            GroupReason::MultifunctionSlot { device } => {
                write!(f, "multifunction slot without ACS, with {device}")
            }
        }
    }
}

/// One function of a group and why it joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupMember {
    /// The function.
    pub address: PciAddress,
    /// The rule that put it in this group.
    pub reason: GroupReason,
}

/// One IOMMU group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuGroup {
    /// Its number.
    pub id: GroupId,
    /// Its functions, sorted by address.
    pub devices: Vec<PciAddress>,
    /// Its functions with the reason each joined, in the order they joined (the
    /// first one founded the group).
    pub members: Vec<GroupMember>,
}

impl IommuGroup {
    /// Whether `address` is in this group.
    pub fn contains(&self, address: PciAddress) -> bool {
        self.devices.binary_search(&address).is_ok()
    }

    /// Why `address` is in this group.
    pub fn reason(&self, address: PciAddress) -> Option<GroupReason> {
        self.members
            .iter()
            .find(|member| member.address == address)
            .map(|member| member.reason)
    }
}

/// `group 2: 0000:00:1f.0 0000:00:1f.2 0000:00:1f.3`, like listing
/// `/sys/kernel/iommu_groups/2/devices`.
impl fmt::Display for IommuGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {}:", self.id)?;
        for device in &self.devices {
            write!(f, " {device}")?;
        }
        Ok(())
    }
}

/// All IOMMU groups of a machine, from [`form_groups()`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupTable {
    groups: Vec<IommuGroup>,
    index: BTreeMap<PciAddress, GroupId>,
}

impl GroupTable {
    /// The group of `address`; `None` if it has none (not eligible, or unknown).
    pub fn group_of(&self, address: PciAddress) -> Option<GroupId> {
        self.index.get(&address).copied()
    }

    /// The group with number `id`.
    pub fn get(&self, id: GroupId) -> Option<&IommuGroup> {
        self.groups.get(usize::try_from(id.0).ok()?)
    }

    /// The group holding `address`.
    pub fn group_containing(&self, address: PciAddress) -> Option<&IommuGroup> {
        self.get(self.group_of(address)?)
    }

    /// All groups, by id.
    pub fn groups(&self) -> &[IommuGroup] {
        &self.groups
    }

    /// All groups, by id.
    pub fn iter(&self) -> core::slice::Iter<'_, IommuGroup> {
        self.groups.iter()
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there is no group at all.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// A multi-line rendering with each member's reason, for the boot log:
    /// `group 1:` then `  0000:00:01.0 isolated`, one member a line, in join order.
    pub fn explain(&self) -> GroupExplanation<'_> {
        GroupExplanation(self)
    }
}

impl<'a> IntoIterator for &'a GroupTable {
    type Item = &'a IommuGroup;
    type IntoIter = core::slice::Iter<'a, IommuGroup>;

    fn into_iter(self) -> Self::IntoIter {
        self.groups.iter()
    }
}

/// One line per group, as [`IommuGroup`]'s `Display`.
impl fmt::Display for GroupTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for group in &self.groups {
            writeln!(f, "{group}")?;
        }
        Ok(())
    }
}

/// See [`GroupTable::explain`].
pub struct GroupExplanation<'a>(&'a GroupTable);

impl fmt::Display for GroupExplanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for group in &self.0.groups {
            writeln!(f, "group {}:", group.id)?;
            for member in &group.members {
                writeln!(f, "  {} {}", member.address, member.reason)?;
            }
        }
        Ok(())
    }
}

/// Forms the IOMMU groups of every function in `table`, as Linux's
/// `pci_device_group` would (see the module documentation).
///
/// - `eligible(a)`: whether an IOMMU unit translates function `a`. Ineligible
///   functions get no group and count as "no group" wherever their group is
///   looked up.
/// - `extra_aliases(a)`: device/function numbers on `a`'s own bus that `a`'s DMA
///   may also carry (firmware alias tables, quirks); usually empty.
///
/// Both are called once per function. Call [`crate::acs::enable_acs()`] first:
/// the ACS checks read the control values in the table.
pub fn form_groups(
    table: &DeviceTable,
    eligible: &dyn Fn(PciAddress) -> bool,
    extra_aliases: &dyn Fn(PciAddress) -> Vec<u8>,
) -> GroupTable {
    let mut former = Former::new(table, eligible, extra_aliases);
    for index in former.processing_order() {
        if former.eligible[index] {
            former.group_one(index);
        }
    }
    former.finish()
}

/// Which devfns a search has visited (Linux's `u64 devfns[4]`).
struct DevfnSet([u64; 4]);

impl DevfnSet {
    /// Marks `devfn`; returns whether it was marked already.
    fn test_and_set(&mut self, devfn: u8) -> bool {
        let (word, bit) = (usize::from(devfn / 64), devfn % 64);
        let was = self.0[word] & (1 << bit) != 0;
        self.0[word] |= 1 << bit;
        was
    }
}

/// A pending call of the alias search (Linux's two mutually recursive functions).
#[derive(Clone, Copy)]
enum Call {
    /// `get_pci_alias_group(device)`.
    Alias(usize),
    /// `get_pci_function_alias_group(device)`.
    Function(usize),
}

/// A call in progress, with where its loop over the bus has got to.
enum Frame {
    Alias {
        device: usize,
        next: usize,
        /// After the alias call for this peer returns empty-handed, its function
        /// search comes next (Linux calls both for each aliasing peer).
        then_function: Option<usize>,
    },
    Function {
        device: usize,
        next: usize,
    },
}

/// The working state of one [`form_groups()`] run; functions are named by their
/// index in `devices`.
struct Former<'a> {
    /// Unique by address, sorted.
    devices: Vec<&'a PciDevice>,
    index: BTreeMap<PciAddress, usize>,
    /// Index of the bridge above; `None` on a root bus (or a parent missing from
    /// the table, which is then treated as one).
    parent: Vec<Option<usize>>,
    /// Every function of each (segment, bus), by devfn.
    buses: BTreeMap<(u16, u8), Vec<usize>>,
    eligible: Vec<bool>,
    /// Caller-supplied alias devfns, sorted, unique.
    extra: Vec<Vec<u8>>,
    /// `acs_enabled(device, ISOLATION)`.
    acs: Vec<bool>,
    /// `acs_path_enabled(device, None, ISOLATION)`.
    acs_path: Vec<bool>,
    group_of: Vec<Option<usize>>,
    groups: Vec<Vec<GroupMember>>,
}

impl<'a> Former<'a> {
    fn new(
        table: &'a DeviceTable,
        eligible: &dyn Fn(PciAddress) -> bool,
        extra_aliases: &dyn Fn(PciAddress) -> Vec<u8>,
    ) -> Self {
        // `DeviceTable::new` sorts and deduplicates, but the field is public:
        // do it again (stable, first of each address wins, as there).
        let mut devices: Vec<&PciDevice> = table.devices.iter().collect();
        devices.sort_by_key(|device| device.address);
        devices.dedup_by_key(|device| device.address);
        let index: BTreeMap<PciAddress, usize> = devices
            .iter()
            .enumerate()
            .map(|(i, device)| (device.address, i))
            .collect();
        let parent = devices
            .iter()
            .map(|device| device.parent.and_then(|p| index.get(&p).copied()))
            .collect();
        let mut buses: BTreeMap<(u16, u8), Vec<usize>> = BTreeMap::new();
        for (i, device) in devices.iter().enumerate() {
            let address = device.address;
            buses
                .entry((address.segment, address.bus))
                .or_default()
                .push(i);
        }
        let lookup = |address: PciAddress| index.get(&address).map(|&i| devices[i]);
        let acs_path = devices
            .iter()
            .map(|device| path_enabled(lookup, device.address, AcsFlags::ISOLATION))
            .collect();
        let extra = devices
            .iter()
            .map(|device| {
                let mut devfns = extra_aliases(device.address);
                devfns.sort_unstable();
                devfns.dedup();
                devfns
            })
            .collect();
        Former {
            eligible: devices
                .iter()
                .map(|device| eligible(device.address))
                .collect(),
            acs: devices
                .iter()
                .map(|device| acs_enabled(device, AcsFlags::ISOLATION))
                .collect(),
            group_of: alloc::vec![None; devices.len()],
            groups: Vec::new(),
            devices,
            index,
            parent,
            buses,
            extra,
            acs_path,
        }
    }

    fn address(&self, i: usize) -> PciAddress {
        self.devices[i].address
    }

    fn devfn(&self, i: usize) -> u8 {
        self.address(i).bdf() as u8
    }

    fn bus_of(&self, i: usize) -> &[usize] {
        let address = self.address(i);
        self.buses
            .get(&(address.segment, address.bus))
            .map_or(&[], Vec::as_slice)
    }

    /// Linux's `pci_devs_are_dma_aliases` for two functions on one bus.
    fn are_aliases(&self, a: usize, b: usize) -> bool {
        self.extra[a].binary_search(&self.devfn(b)).is_ok()
            || self.extra[b].binary_search(&self.devfn(a)).is_ok()
    }

    /// The order Linux adds devices (`pci_bus_add_devices`): all functions of a
    /// bus, then, for each bridge on it in turn, everything below that bridge.
    /// Root buses (and functions whose parent is missing) in address order; any
    /// function unreachable that way (a parent loop in a corrupt table) last.
    ///
    /// For a table from [`crate::enumerate()`] this is plain address order, since
    /// a secondary bus is always numbered above its bridge's bus; building it
    /// from the tree makes it right for any table.
    fn processing_order(&self) -> Vec<usize> {
        let n = self.devices.len();
        let mut children: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut roots: BTreeMap<(u16, u8), Vec<usize>> = BTreeMap::new();
        for i in 0..n {
            match self.parent[i] {
                Some(bridge) => children.entry(bridge).or_default().push(i),
                None => {
                    let address = self.address(i);
                    roots
                        .entry((address.segment, address.bus))
                        .or_default()
                        .push(i);
                }
            }
        }
        let mut order = Vec::with_capacity(n);
        let mut queued = alloc::vec![false; n];
        let mut take = |list: &[usize], order: &mut Vec<usize>| -> Vec<usize> {
            let fresh: Vec<usize> = list.iter().copied().filter(|&i| !queued[i]).collect();
            for &i in &fresh {
                queued[i] = true;
                order.push(i);
            }
            fresh
        };
        for bus in roots.values() {
            let first = take(bus, &mut order);
            // Each function is queued once, so the stack holds at most n entries.
            let mut stack: Vec<(Vec<usize>, usize)> = alloc::vec![(first, 0)];
            while let Some((bus, next)) = stack.last_mut() {
                let Some(&bridge) = bus.get(*next) else {
                    stack.pop();
                    continue;
                };
                *next += 1;
                if let Some(below) = children.get(&bridge) {
                    let below = take(below, &mut order);
                    if !below.is_empty() {
                        stack.push((below, 0));
                    }
                }
            }
        }
        if order.len() < n {
            log::warn!(
                "pci: {} functions sit in a loop of parent links; grouped last",
                n - order.len()
            );
            let all: Vec<usize> = (0..n).collect();
            take(&all, &mut order);
        }
        order
    }

    fn join(&mut self, i: usize, group: usize, reason: GroupReason) {
        let address = self.address(i);
        self.group_of[i] = Some(group);
        self.groups[group].push(GroupMember { address, reason });
        log::debug!(
            "pci: {address}: joins the group of {}: {reason}",
            self.groups[group][0].address
        );
    }

    /// `pci_device_group` for one eligible function.
    fn group_one(&mut self, i: usize) {
        let (group, reason, start) = self.find_group(i);
        match group {
            Some(group) => self.join(i, group, reason),
            None => {
                let reason = if start == i {
                    GroupReason::Isolated
                } else {
                    GroupReason::FirstBelow {
                        bridge: self.address(start),
                    }
                };
                let address = self.address(i);
                log::debug!("pci: {address}: new group: {reason}");
                self.group_of[i] = Some(self.groups.len());
                self.groups
                    .push(alloc::vec![GroupMember { address, reason }]);
            }
        }
    }

    /// Steps 1 to 4: an existing group for `i` and why, or `None` with the
    /// starting point the search ended at.
    fn find_group(&self, i: usize) -> (Option<usize>, GroupReason, usize) {
        // Step 1: the DMA aliases.
        let mut start = i;
        let mut found = None;
        let device = self.devices[i];
        let lookup = |address: PciAddress| self.index.get(&address).map(|&j| self.devices[j]);
        let _ = for_each_alias(lookup, device, &self.extra[i], |alias| {
            match alias.via {
                Some(bridge) => {
                    let Some(&b) = self.index.get(&bridge) else {
                        return ControlFlow::Continue(());
                    };
                    start = b;
                    if let Some(group) = self.group_of[b] {
                        found = Some((
                            group,
                            GroupReason::BridgeAlias {
                                bridge,
                                kind: alias.kind,
                            },
                        ));
                        return ControlFlow::Break(());
                    }
                    if !self.eligible[b] {
                        log::warn!(
                            "pci: {}: DMA carries requester id {alias} of a function no IOMMU \
                             translates",
                            device.address
                        );
                    }
                }
                // Linux looks at `pdev` itself here, which has no group yet; a
                // caller-supplied alias also names a same-bus function.
                None if alias.kind == AliasKind::Firmware => {
                    let peer = self
                        .bus_of(i)
                        .iter()
                        .copied()
                        .find(|&j| self.address(j).bdf() == alias.requester_id);
                    if let Some(group) = peer.and_then(|j| self.group_of[j]) {
                        let device = alias.as_address(device.address.segment);
                        found = Some((group, GroupReason::FirmwareAlias { device }));
                        return ControlFlow::Break(());
                    }
                }
                None => {}
            }
            ControlFlow::Continue(())
        });
        if let Some((group, reason)) = found {
            return (Some(group), reason, start);
        }

        // Step 2: up from the starting point until the path to the root is
        // ACS-isolated.
        for _ in 0..MAX_PATH_HOPS {
            let Some(bridge) = self.parent[start] else {
                break;
            };
            if self.acs_path[bridge] {
                break;
            }
            start = bridge;
            if let Some(group) = self.group_of[bridge] {
                let bridge = self.address(bridge);
                return (
                    Some(group),
                    GroupReason::BelowNonAcsBridge { bridge },
                    start,
                );
            }
        }

        // Steps 3 and 4 share one visited set, as in Linux.
        let mut visited = DevfnSet([0; 4]);
        if let Some(peer) = self.search(Call::Alias(start), &mut visited) {
            let device = self.address(peer);
            return (
                self.group_of[peer],
                GroupReason::AliasPeer { device },
                start,
            );
        }
        if let Some(peer) = self.search(Call::Function(start), &mut visited) {
            let device = self.address(peer);
            return (
                self.group_of[peer],
                GroupReason::MultifunctionSlot { device },
                start,
            );
        }
        (None, GroupReason::Isolated, start)
    }

    /// Runs Linux's recursive `get_pci_alias_group` / `get_pci_function_alias_group`
    /// pair with an explicit stack (kernel stacks are small), visiting peers in the
    /// same order. Returns the first function found that has a group.
    ///
    /// Bounded: an alias call does work only for a devfn not visited before (at
    /// most 256), and a function call only loops over one slot.
    fn search(&self, first: Call, visited: &mut DevfnSet) -> Option<usize> {
        let mut stack = Vec::new();
        if let Some(found) = self.enter(first, visited, &mut stack) {
            return Some(found);
        }
        while let Some(frame) = stack.last_mut() {
            let call = match frame {
                Frame::Alias {
                    device,
                    next,
                    then_function,
                } => {
                    if let Some(peer) = then_function.take() {
                        Some(Call::Function(peer))
                    } else {
                        let bus = self.bus_of(*device);
                        let found = (*next..bus.len())
                            .find(|&k| bus[k] != *device && self.are_aliases(*device, bus[k]));
                        found.map(|k| {
                            *next = k + 1;
                            *then_function = Some(bus[k]);
                            Call::Alias(bus[k])
                        })
                    }
                }
                Frame::Function { device, next } => {
                    let bus = self.bus_of(*device);
                    let slot = self.address(*device).device;
                    let found = (*next..bus.len()).find(|&k| {
                        let peer = bus[k];
                        peer != *device && self.address(peer).device == slot && !self.acs[peer]
                    });
                    found.map(|k| {
                        *next = k + 1;
                        Call::Alias(bus[k])
                    })
                }
            };
            match call {
                None => {
                    stack.pop();
                }
                Some(call) => {
                    if let Some(found) = self.enter(call, visited, &mut stack) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    /// The entry of one call: either an immediate answer (`Some` = found a
    /// group, ends the whole search) or a frame pushed to loop over the bus.
    fn enter(&self, call: Call, visited: &mut DevfnSet, stack: &mut Vec<Frame>) -> Option<usize> {
        match call {
            Call::Alias(device) => {
                if visited.test_and_set(self.devfn(device)) {
                    return None;
                }
                if self.group_of[device].is_some() {
                    return Some(device);
                }
                stack.push(Frame::Alias {
                    device,
                    next: 0,
                    then_function: None,
                });
            }
            Call::Function(device) => {
                if is_multifunction(self.devices[device]) && !self.acs[device] {
                    stack.push(Frame::Function { device, next: 0 });
                }
            }
        }
        None
    }

    /// Renumbers by lowest member address and builds the table.
    fn finish(self) -> GroupTable {
        let mut groups: Vec<Vec<GroupMember>> = self.groups;
        // Groups are disjoint, so their lowest addresses are distinct.
        groups.sort_by_key(|members| members.iter().map(|m| m.address).min());
        let mut table = GroupTable::default();
        for (number, members) in groups.into_iter().enumerate() {
            let id = GroupId(number as u32);
            let mut devices: Vec<PciAddress> = members.iter().map(|m| m.address).collect();
            devices.sort_unstable();
            for &device in &devices {
                table.index.insert(device, id);
            }
            table.groups.push(IommuGroup {
                id,
                devices,
                members,
            });
        }
        table
    }
}
