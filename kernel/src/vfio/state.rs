//! The [`Vfio`] object: every group, container and open device, the guests' handle
//! tables, and the reference counting that decides when an object goes away.
//!
//! # Lifetimes (file-descriptor semantics, see `CLOSE` in the ABI)
//!
//! - A **container** is referenced by its handle (while open) and by each group in it:
//!   `Container::refs == handle_open + groups.len()`. At zero it is destroyed. Its IOMMU
//!   model lives while a group is in it: the last group out releases the model (domains
//!   destroyed, mappings forgotten).
//! - A **group** is owned by a guest while referenced by its handle (while open), by
//!   each open device of it and by each external user (the VM binding, in-hypervisor
//!   users: see `external`): `Owner::refs == handle_open + open.len() +
//!   external.len()`. At zero it is released: taken out of its container (its devices
//!   detached, so their DMA is blocked), and free for its next owner. While it has an
//!   external user it cannot leave its container (`EBUSY`).
//! - A **device** is referenced by its handle only; closing it turns bus mastering off,
//!   removes its region mappings and drops its group reference.
//!
//! The counts are kept explicitly (not recomputed) so that a bookkeeping mistake shows
//! up as a broken invariant in [`Vfio::check_invariants`], which the host tests run
//! after every step.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_abi::vfio::{API_VERSION, VfioCall, extension};
use sluice_iommu::{DeviceDma, Iommu, UnitId};
use sluice_pci::{ConfigSpace, reg};

use super::container::{Mapping, Model, leave};
use super::external::ExternalUser;
use super::handles::{ContainerId, DeviceId, Generations, GroupIndex, HandleTable, Object};
use super::irq::IrqState;
use super::{GroupDesc, GuestId, GuestRam};

/// The hypervisor's VFIO state: see the module docs of [`super`].
pub struct Vfio {
    pub(super) iommu: Box<dyn Iommu>,
    pub(super) config: Box<dyn ConfigSpace>,
    /// Every group, sorted by id (so [`GroupIndex`] order is id order).
    pub(super) groups: Vec<Group>,
    pub(super) containers: BTreeMap<ContainerId, Container>,
    pub(super) devices: BTreeMap<DeviceId, Device>,
    pub(super) guests: BTreeMap<GuestId, Guest>,
    /// Shared by every guest's handle table, so handle values are never reused.
    pub(super) generations: Generations,
    pub(super) next_container: u64,
    pub(super) next_device: u64,
    /// Serial number of the next external user (never reused).
    pub(super) next_external: u64,
    /// How many bytes the hypervisor's heap has free, when the platform can tell
    /// ([`Vfio::set_heap_guard`]).
    pub(super) heap_free: Option<fn() -> usize>,
    /// Delays and BAR accesses for reset and region access ([`Vfio::set_device_hw`]).
    pub(super) device_hw: Option<Box<dyn super::DeviceHw>>,
    /// Device interrupts: host vectors, routes, MSI state (see `irq`).
    pub(super) irq: IrqState,
    /// The I/O APICs device INTx lines arrive on ([`Vfio::set_interrupt_lines`]);
    /// without them INTx is not offered.
    pub(super) lines: Option<Box<dyn super::InterruptLines>>,
}

/// Heap bytes kept free from guest-driven growth (see [`Vfio::set_heap_guard`]).
pub const HEAP_RESERVE: usize = 6 << 20;

/// A group and, while a guest owns it, its state.
pub(super) struct Group {
    pub desc: GroupDesc,
    /// No non-bridge function is used by the hypervisor. Fixed at boot: grants are per
    /// group and open groups are exclusive, so nothing else can take a function away.
    pub viable: bool,
    pub owner: Option<Owner>,
}

impl Group {
    /// The DMA routes of every function (bridges too: a bridge's own requests, and
    /// the aliases it carries, need the same confinement).
    pub fn routes(&self) -> impl Iterator<Item = &DeviceDma> {
        self.desc.devices.iter().map(|d| &d.dma)
    }

    /// The units its functions' DMA goes through.
    pub fn units(&self) -> BTreeSet<UnitId> {
        self.routes().map(|d| d.unit).collect()
    }
}

/// An owned (open) group.
pub(super) struct Owner {
    pub guest: GuestId,
    /// `handle_open as u32 + open.len() + external.len()`; the group is released at 0.
    pub refs: u32,
    pub handle_open: bool,
    pub container: Option<ContainerId>,
    /// Open devices by index into the group's `devices`.
    pub open: BTreeMap<usize, DeviceId>,
    /// Serial numbers of the live external users (each one reference).
    pub external: BTreeSet<u64>,
    /// The VM binding (`GROUP_BIND_VM`): one of `external`, its token kept here.
    pub vm_binding: Option<ExternalUser>,
}

pub(super) struct Container {
    pub owner: GuestId,
    /// `handle_open as u32 + groups.len()`; the container is destroyed at 0.
    pub refs: u32,
    pub handle_open: bool,
    pub groups: BTreeSet<GroupIndex>,
    /// Set by `CONTAINER_SET_IOMMU`, released with the last group.
    pub model: Option<Model>,
}

/// An open device.
pub(super) struct Device {
    pub owner: GuestId,
    pub group: GroupIndex,
    /// Index into the group's `devices`.
    pub member: usize,
    /// Its BAR ranges mapped into the owner's guest-physical space.
    pub regions: Vec<RegionMapping>,
    /// Its config space's virtual registers (see `region`).
    pub vconfig: super::region::VirtualConfig,
}

/// A BAR range mapped into a guest (`DEVICE_MAP_REGION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RegionMapping {
    pub gpa: u64,
    pub size: u64,
    pub hpa: u64,
}

/// A guest as VFIO sees it.
#[derive(Default)]
pub(super) struct Guest {
    /// Groups its command line gives it.
    pub grants: BTreeSet<GroupIndex>,
    pub handles: HandleTable,
}

impl Vfio {
    /// Take over the IOMMU driver, config space, and the groups the kernel formed.
    ///
    /// Groups are kept sorted by id and their functions by address (the order
    /// `GROUP_LIST` reports); a duplicate group id (a bug upstream) is dropped with a
    /// warning rather than making two groups answer to one id.
    pub fn new(
        iommu: Box<dyn Iommu>,
        config: Box<dyn ConfigSpace>,
        mut groups: Vec<GroupDesc>,
    ) -> Self {
        groups.sort_by_key(|g| g.id);
        let mut kept: Vec<Group> = Vec::with_capacity(groups.len());
        for mut desc in groups {
            if kept.last().is_some_and(|g| g.desc.id == desc.id) {
                log::warn!(target: "vfio", "duplicate IOMMU group {} ignored", desc.id);
                continue;
            }
            desc.devices.sort_by_key(|d| d.address);
            let viable = !desc.devices.iter().any(|d| d.host_owned && !d.bridge);
            kept.push(Group {
                desc,
                viable,
                owner: None,
            });
        }
        Self {
            iommu,
            config,
            groups: kept,
            containers: BTreeMap::new(),
            devices: BTreeMap::new(),
            guests: BTreeMap::new(),
            generations: Generations::default(),
            next_container: 1,
            next_device: 1,
            next_external: 1,
            heap_free: None,
            device_hw: None,
            irq: IrqState::default(),
            lines: None,
        }
    }

    /// Give the VFIO layer the platform's delays and BAR accesses (device reset waits,
    /// `DEVICE_REGION_READ`/`WRITE` of BARs). Without it, waits are skipped (host tests)
    /// and BAR accesses are `EINVAL`.
    pub fn set_device_hw(&mut self, hw: Box<dyn super::DeviceHw>) {
        self.device_hw = Some(hw);
    }

    /// Give the VFIO layer the I/O APICs, so devices' INTx can be routed (see `intx`).
    pub fn set_interrupt_lines(&mut self, lines: Box<dyn super::InterruptLines>) {
        self.lines = Some(lines);
    }

    /// Register `guest` and the groups its command line gives it (`groups=`). Ids that
    /// name no group are ignored with a warning. Calling it again adds grants.
    /// Tell the VFIO layer how to read the hypervisor heap's free bytes. Calls that make
    /// the heap grow (MAP_DMA, DEVICE_MAP_REGION) then fail with `ENOMEM` while fewer
    /// than [`HEAP_RESERVE`] bytes are free, so no guest can exhaust the heap (an
    /// allocation failure would stop the hypervisor); the reserve also covers the
    /// transient peak of an unmap of every mapping.
    pub fn set_heap_guard(&mut self, free_bytes: fn() -> usize) {
        self.heap_free = Some(free_bytes);
    }

    /// `ENOMEM` when the heap is down to its reserve.
    pub(super) fn check_heap(&self) -> Result<(), Errno> {
        match self.heap_free {
            Some(free) if free() < HEAP_RESERVE => {
                log::warn!(target: "vfio", "hypervisor heap down to its {} KiB reserve: refusing to grow it", HEAP_RESERVE >> 10);
                Err(Errno::ENOMEM)
            }
            _ => Ok(()),
        }
    }

    pub fn add_guest(&mut self, guest: GuestId, groups: &[u32]) {
        let mut grants = BTreeSet::new();
        for &id in groups {
            match self.group_index(u64::from(id)) {
                Some(index) => {
                    grants.insert(index);
                }
                None => {
                    log::warn!(target: "vfio", "guest {}: no IOMMU group {id}; ignored", guest.0)
                }
            }
        }
        self.guests.entry(guest).or_default().grants.extend(grants);
    }

    /// Execute one VFIO hypercall for `guest`, whose memory is `mem`. Never panics; a
    /// failing call changes nothing (see the ABI docs for the rare exception: hardware
    /// that stops answering mid-call).
    pub fn call(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        call: VfioCall,
    ) -> Result<u64, Errno> {
        let result = match call {
            VfioCall::GetApiVersion => Ok(API_VERSION),
            VfioCall::CheckExtension { extension } => Ok(u64::from(matches!(
                extension,
                extension::TYPE1V2_IOMMU | extension::UNMAP_ALL
            ))),
            VfioCall::ContainerCreate => self.container_create(guest),
            VfioCall::SetIommu {
                container,
                iommu_type,
            } => self.set_iommu(guest, container, iommu_type),
            VfioCall::IommuGetInfo { container, info } => {
                self.iommu_get_info(guest, mem, container, info)
            }
            VfioCall::MapDma { container, map } => self.map_dma(guest, mem, container, map),
            VfioCall::UnmapDma { container, unmap } => self.unmap_dma(guest, mem, container, unmap),
            VfioCall::GroupList { list } => self.group_list(guest, mem, list),
            VfioCall::GroupOpen { group_id } => self.group_open(guest, group_id),
            VfioCall::GroupGetStatus { group, status } => {
                self.group_get_status(guest, mem, group, status)
            }
            VfioCall::GroupSetContainer { group, container } => {
                self.group_set_container(guest, group, container)
            }
            VfioCall::GroupUnsetContainer { group } => self.group_unset_container(guest, group),
            VfioCall::Close { handle } => self.close(guest, Some(mem), handle),
            VfioCall::GroupGetDevice {
                group,
                name,
                name_len,
            } => self.group_get_device(guest, mem, group, name, name_len),
            VfioCall::DeviceGetInfo { device, info } => {
                self.device_get_info(guest, mem, device, info)
            }
            VfioCall::DeviceGetRegionInfo { device, info } => {
                self.device_get_region_info(guest, mem, device, info)
            }
            VfioCall::DeviceMapRegion { device, map } => {
                self.device_map_region(guest, mem, device, map)
            }
            VfioCall::ContainerDebug { container, iova } => {
                self.container_debug(guest, container, iova)
            }
            VfioCall::GroupBindVm { group } => self.group_bind_vm(guest, group),
            VfioCall::GroupUnbindVm { group } => self.group_unbind_vm(guest, group),
            VfioCall::GroupVmInfo { group, info } => self.group_vm_info(guest, mem, group, info),
            VfioCall::DeviceReset { device } => self.device_reset(guest, device),
            VfioCall::DeviceRegionRead { device, access } => {
                self.device_region_access(guest, mem, device, access, false)
            }
            VfioCall::DeviceRegionWrite { device, access } => {
                self.device_region_access(guest, mem, device, access, true)
            }
            VfioCall::DeviceGetIrqInfo { device, info } => {
                self.device_get_irq_info(guest, mem, device, info)
            }
            VfioCall::DeviceSetIrqs { device, set } => {
                self.device_set_irqs(guest, mem, device, set)
            }
        };
        if let Err(e) = result {
            log::debug!(target: "vfio", "guest {}: {call:?} -> {e:?}", guest.0);
        }
        result
    }

    /// The guest ended or was killed: drop its VM bindings and revoke any other
    /// external user of its groups (see `external`), then close every handle it holds,
    /// as `CLOSE` would (devices: bus mastering off; groups: detached, DMA blocked;
    /// containers: destroyed with their domains and mappings), and forget its grants. Its
    /// memory is gone, so region mappings are forgotten rather than unmapped.
    pub fn release_guest(&mut self, guest: GuestId) {
        if !self.guests.contains_key(&guest) {
            return;
        }
        self.release_external_users(guest);
        let Some(state) = self.guests.get(&guest) else {
            return;
        };
        let mut handles: Vec<(u64, Object)> = state.handles.live().collect();
        // Devices first, then groups, then containers: the order a tidy guest would
        // close them in, so the log reads naturally (the result is the same in any
        // order).
        handles.sort_by_key(|(_, o)| match o {
            Object::Device(_) => 0,
            Object::Group(_) => 1,
            Object::Container(_) => 2,
        });
        let count = handles.len();
        for (handle, _) in handles {
            // Cannot fail: the handle was just read from the table.
            let _ = self.close(guest, None, handle);
        }
        self.guests.remove(&guest);
        log::info!(target: "vfio", "guest {} released: {count} handles closed", guest.0);
    }

    /// The IOMMU driver (for fault reporting and the like).
    pub fn iommu(&self) -> &dyn Iommu {
        &*self.iommu
    }

    /// The IOMMU driver, mutable (e.g. to take fault records).
    pub fn iommu_mut(&mut self) -> &mut dyn Iommu {
        &mut *self.iommu
    }

    /// Config space, as the VFIO layer uses it.
    pub fn config(&self) -> &dyn ConfigSpace {
        &*self.config
    }

    /// The groups, sorted by id.
    pub fn groups(&self) -> impl Iterator<Item = &GroupDesc> {
        self.groups.iter().map(|g| &g.desc)
    }

    /// Which guest owns (has open) group `group_id`.
    pub fn group_owner(&self, group_id: u32) -> Option<GuestId> {
        let index = self.group_index(u64::from(group_id))?;
        self.groups.get(index.0)?.owner.as_ref().map(|o| o.guest)
    }

    /// How many containers exist.
    pub fn container_count(&self) -> usize {
        self.containers.len()
    }

    /// How many groups are owned by some guest.
    pub fn open_group_count(&self) -> usize {
        self.groups.iter().filter(|g| g.owner.is_some()).count()
    }

    /// How many devices are open.
    pub fn open_device_count(&self) -> usize {
        self.devices.len()
    }

    /// How many DMA mappings exist, over all containers.
    pub fn mapping_count(&self) -> usize {
        self.models().map(|m| m.mappings.len()).sum()
    }

    /// Every DMA mapping of `guest`'s containers, by container then IOVA.
    pub fn mappings(&self, guest: GuestId) -> Vec<(ContainerId, Mapping)> {
        self.containers
            .iter()
            .filter(|(_, c)| c.owner == guest)
            .filter_map(|(&id, c)| c.model.as_ref().map(|m| (id, m)))
            .flat_map(|(id, m)| m.mappings.values().map(move |&mapping| (id, mapping)))
            .collect()
    }

    /// How many IOMMU domains the containers hold.
    pub fn domain_count(&self) -> usize {
        self.models().map(|m| m.domains.len()).sum()
    }

    /// How many live handles `guest` holds.
    pub fn handle_count(&self, guest: GuestId) -> usize {
        self.guests.get(&guest).map_or(0, |g| g.handles.len())
    }

    /// How many region mappings `guest`'s open devices hold.
    pub fn region_mapping_count(&self, guest: GuestId) -> usize {
        self.devices
            .values()
            .filter(|d| d.owner == guest)
            .map(|d| d.regions.len())
            .sum()
    }

    fn models(&self) -> impl Iterator<Item = &Model> {
        self.containers.values().filter_map(|c| c.model.as_ref())
    }

    /// Check every bookkeeping invariant; `Err` names the first one broken. The host
    /// tests call this after every step; it is cheap enough to call from a debug
    /// command too.
    ///
    /// - every handle names a live object of the same guest, and each object has at
    ///   most one handle (none for groups held only by devices);
    /// - reference counts equal what references exist;
    /// - a group is in a container iff the container lists it, both of one guest;
    /// - a container without groups has no model; a model has exactly one domain per
    ///   unit its groups span, and mappings that do not overlap;
    /// - an open device is a non-bridge function of a group its guest owns, recorded
    ///   there.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut container_handles: BTreeMap<ContainerId, u32> = BTreeMap::new();
        let mut group_handles: BTreeMap<GroupIndex, u32> = BTreeMap::new();
        let mut device_handles: BTreeMap<DeviceId, u32> = BTreeMap::new();
        for (&guest, state) in &self.guests {
            for (handle, object) in state.handles.live() {
                let owner = match object {
                    Object::Container(c) => {
                        *container_handles.entry(c).or_default() += 1;
                        self.containers.get(&c).map(|c| c.owner)
                    }
                    Object::Group(g) => {
                        *group_handles.entry(g).or_default() += 1;
                        self.groups
                            .get(g.0)
                            .and_then(|g| g.owner.as_ref())
                            .map(|o| o.guest)
                    }
                    Object::Device(d) => {
                        *device_handles.entry(d).or_default() += 1;
                        self.devices.get(&d).map(|d| d.owner)
                    }
                };
                if owner != Some(guest) {
                    return Err(format!(
                        "guest {} handle {handle:#x} names {object:?} owned by {owner:?}",
                        guest.0
                    ));
                }
            }
        }
        for (&id, c) in &self.containers {
            let handles = container_handles.get(&id).copied().unwrap_or(0);
            if handles != u32::from(c.handle_open) {
                return Err(format!(
                    "{id:?}: {handles} handles, handle_open {}",
                    c.handle_open
                ));
            }
            let expected = u32::from(c.handle_open) + c.groups.len() as u32;
            if c.refs != expected || c.refs == 0 {
                return Err(format!("{id:?}: refs {} but {expected} references", c.refs));
            }
            let mut units = BTreeSet::new();
            for &g in &c.groups {
                let group = self.groups.get(g.0).ok_or("container lists no group")?;
                let owner = group
                    .owner
                    .as_ref()
                    .ok_or("container lists a closed group")?;
                if owner.container != Some(id) || owner.guest != c.owner {
                    return Err(format!("{id:?} lists {g:?}, which is not in it"));
                }
                units.extend(group.units());
            }
            match &c.model {
                None => {}
                Some(_) if c.groups.is_empty() => {
                    return Err(format!("{id:?}: a model without groups"));
                }
                Some(model) => {
                    let domain_units: BTreeSet<UnitId> = model.domains.keys().copied().collect();
                    if domain_units != units {
                        return Err(format!(
                            "{id:?}: domains on {domain_units:?}, groups on {units:?}"
                        ));
                    }
                    let mut end = 0u64;
                    for (&iova, m) in &model.mappings {
                        if iova != m.iova || iova < end || m.size == 0 {
                            return Err(format!("{id:?}: mapping at {iova:#x} is malformed"));
                        }
                        end = iova.saturating_add(m.size);
                    }
                    let pinned: u64 = model.mappings.values().map(|m| m.size).sum();
                    if pinned != model.pinned {
                        return Err(format!(
                            "{id:?}: pinned count {:#x}, mappings sum to {pinned:#x}",
                            model.pinned
                        ));
                    }
                }
            }
        }
        for (index, group) in self.groups.iter().enumerate() {
            let g = GroupIndex(index);
            let handles = group_handles.get(&g).copied().unwrap_or(0);
            let Some(owner) = &group.owner else {
                if handles != 0 {
                    return Err(format!("closed {g:?} has {handles} handles"));
                }
                continue;
            };
            if handles != u32::from(owner.handle_open) {
                return Err(format!(
                    "{g:?}: {handles} handles, handle_open {}",
                    owner.handle_open
                ));
            }
            let expected = u32::from(owner.handle_open)
                + owner.open.len() as u32
                + owner.external.len() as u32;
            if owner.refs != expected || owner.refs == 0 {
                return Err(format!(
                    "{g:?}: refs {} but {expected} references",
                    owner.refs
                ));
            }
            if !self.guests.contains_key(&owner.guest) {
                return Err(format!("{g:?} owned by unknown guest {}", owner.guest.0));
            }
            if let Some(binding) = &owner.vm_binding {
                if binding.guest() != owner.guest
                    || binding.group() != g
                    || !owner.external.contains(&binding.serial())
                {
                    return Err(format!("{g:?}: VM binding {binding:?} disagrees"));
                }
            }
            if !owner.external.is_empty() {
                let active = owner
                    .container
                    .and_then(|c| self.containers.get(&c))
                    .is_some_and(|c| c.model.is_some());
                if !active || !group.viable {
                    return Err(format!(
                        "{g:?}: external users without an active container, or not viable"
                    ));
                }
            }
            if let Some(c) = owner.container {
                let listed = self
                    .containers
                    .get(&c)
                    .is_some_and(|c| c.groups.contains(&g));
                if !listed {
                    return Err(format!("{g:?} says it is in {c:?}, which does not list it"));
                }
            }
            for (&member, &d) in &owner.open {
                let device = self
                    .devices
                    .get(&d)
                    .ok_or("open map names a closed device")?;
                if device.group != g || device.member != member || device.owner != owner.guest {
                    return Err(format!("{g:?}: open device {d:?} disagrees"));
                }
            }
        }
        for (&id, device) in &self.devices {
            if device_handles.get(&id).copied() != Some(1) {
                return Err(format!("{id:?} has no handle"));
            }
            let group = self
                .groups
                .get(device.group.0)
                .ok_or("device of no group")?;
            let function = group
                .desc
                .devices
                .get(device.member)
                .ok_or("no such member")?;
            if function.bridge {
                return Err(format!("{id:?} is a bridge"));
            }
            let recorded = group
                .owner
                .as_ref()
                .and_then(|o| o.open.get(&device.member))
                .copied();
            if recorded != Some(id) {
                return Err(format!("{id:?} not recorded in its group"));
            }
        }
        self.check_irq_invariants()?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Lookups
    // -----------------------------------------------------------------------------------

    /// The group with id `id` (the ABI passes it as a register, hence `u64`).
    pub(super) fn group_index(&self, id: u64) -> Option<GroupIndex> {
        let id = u32::try_from(id).ok()?;
        self.groups
            .binary_search_by_key(&id, |g| g.desc.id)
            .ok()
            .map(GroupIndex)
    }

    /// What `handle` names for `guest`: `EBADF` unless it is one of its live handles.
    pub(super) fn object(&self, guest: GuestId, handle: u64) -> Result<Object, Errno> {
        self.guests
            .get(&guest)
            .ok_or(Errno::EBADF)?
            .handles
            .get(handle)
    }

    /// The container `handle` names, as the object of a call (`ENOTTY`: another kind).
    pub(super) fn container_handle(
        &self,
        guest: GuestId,
        handle: u64,
    ) -> Result<ContainerId, Errno> {
        match self.object(guest, handle)? {
            Object::Container(c) => Ok(c),
            _ => Err(Errno::ENOTTY),
        }
    }

    /// The group `handle` names, as the object of a call.
    pub(super) fn group_handle(&self, guest: GuestId, handle: u64) -> Result<GroupIndex, Errno> {
        match self.object(guest, handle)? {
            Object::Group(g) => Ok(g),
            _ => Err(Errno::ENOTTY),
        }
    }

    /// The device `handle` names, as the object of a call.
    pub(super) fn device_handle(&self, guest: GuestId, handle: u64) -> Result<DeviceId, Errno> {
        match self.object(guest, handle)? {
            Object::Device(d) => Ok(d),
            _ => Err(Errno::ENOTTY),
        }
    }

    // -----------------------------------------------------------------------------------
    // Closing and reference counting
    // -----------------------------------------------------------------------------------

    /// `CLOSE`: any live handle closes (0); the object goes when its last reference
    /// does. `mem` is `None` when the guest is gone (region mappings are forgotten).
    pub(super) fn close(
        &mut self,
        guest: GuestId,
        mem: Option<&mut dyn GuestRam>,
        handle: u64,
    ) -> Result<u64, Errno> {
        let object = self
            .guests
            .get_mut(&guest)
            .ok_or(Errno::EBADF)?
            .handles
            .remove(handle)?;
        match object {
            Object::Container(c) => {
                if let Some(container) = self.containers.get_mut(&c) {
                    container.handle_open = false;
                }
                self.put_container(c);
            }
            Object::Group(g) => {
                if let Some(owner) = self.owner_mut(g) {
                    owner.handle_open = false;
                }
                self.put_group(g);
            }
            Object::Device(d) => self.close_device(d, mem),
        }
        Ok(0)
    }

    pub(super) fn owner_mut(&mut self, g: GroupIndex) -> Option<&mut Owner> {
        self.groups.get_mut(g.0)?.owner.as_mut()
    }

    /// Drop one reference to an owned group; the last one releases it.
    pub(super) fn put_group(&mut self, g: GroupIndex) {
        let Some(owner) = self.owner_mut(g) else {
            log::error!(target: "vfio", "reference dropped on closed {g:?}");
            return;
        };
        owner.refs = owner.refs.saturating_sub(1);
        if owner.refs == 0 {
            self.release_group(g);
        }
    }

    /// The group's last reference went: out of its container, free for another guest.
    fn release_group(&mut self, g: GroupIndex) {
        self.leave_container(g);
        // DMA is blocked now: reset what the owner left in the devices.
        self.reset_released_group(g);
        if let Some(group) = self.groups.get_mut(g.0) {
            if let Some(owner) = group.owner.take() {
                log::info!(target: "vfio", "guest {}: group {} released", owner.guest.0, group.desc.id);
            }
        }
    }

    /// Take group `g` out of its container (if any): its functions are detached (their
    /// DMA blocked again), domains of units no other group of the container spans are
    /// destroyed, and when it was the last group the IOMMU model is released with every
    /// mapping. Then the group's reference on the container is dropped.
    ///
    /// Cannot fail: a detach the hardware does not confirm is logged, and the domain it
    /// still uses is then not destroyed (the driver refuses, `Busy`) but leaked, so no
    /// table a device might still walk is freed.
    pub(super) fn leave_container(&mut self, g: GroupIndex) {
        let Some(group) = self.groups.get_mut(g.0) else {
            return;
        };
        let Some(c) = group.owner.as_mut().and_then(|o| o.container.take()) else {
            return;
        };
        let group_id = group.desc.id;
        let Some(container) = self.containers.get_mut(&c) else {
            log::error!(target: "vfio", "group {group_id} was in a missing {c:?}");
            return;
        };
        container.groups.remove(&g);
        if let Some(model) = container.model.as_mut() {
            let remaining: BTreeSet<UnitId> = container
                .groups
                .iter()
                .filter_map(|other| self.groups.get(other.0))
                .flat_map(Group::units)
                .collect();
            let leaving: Vec<DeviceDma> = self
                .groups
                .get(g.0)
                .map(|group| group.routes().cloned().collect())
                .unwrap_or_default();
            leave(&mut *self.iommu, model, &leaving, &remaining);
            if container.groups.is_empty() {
                let released = container.model.take().map_or(0, |m| m.mappings.len());
                log::info!(target: "vfio", "container {}: last group left, IOMMU model released ({released} mappings dropped)", c.0);
            }
        }
        log::info!(target: "vfio", "group {group_id} left container {}", c.0);
        self.put_container(c);
    }

    /// Drop one reference to a container; the last one destroys it.
    pub(super) fn put_container(&mut self, c: ContainerId) {
        let Some(container) = self.containers.get_mut(&c) else {
            log::error!(target: "vfio", "reference dropped on missing {c:?}");
            return;
        };
        container.refs = container.refs.saturating_sub(1);
        if container.refs > 0 {
            return;
        }
        if let Some(container) = self.containers.remove(&c) {
            // No group is in it, so its model is already released; be thorough anyway.
            if let Some(mut model) = container.model {
                leave(&mut *self.iommu, &mut model, &[], &BTreeSet::new());
            }
            log::info!(target: "vfio", "guest {}: container {} destroyed", container.owner.0, c.0);
        }
    }

    /// Close an open device: bus mastering off, its region mappings removed from the
    /// guest (`mem`; forgotten when the guest is gone), its group reference dropped.
    pub(super) fn close_device(&mut self, d: DeviceId, mem: Option<&mut dyn GuestRam>) {
        // Interrupts first: MSI and INTx off, host vectors and lines freed, routes dropped.
        self.irqs_disable(d);
        let Some(device) = self.devices.remove(&d) else {
            return;
        };
        let address = self
            .groups
            .get(device.group.0)
            .and_then(|g| g.desc.devices.get(device.member))
            .map(|f| f.address);
        if let Some(address) = address {
            set_command(&*self.config, address, 0, reg::COMMAND_BUS_MASTER);
        }
        if let Some(mem) = mem {
            for region in &device.regions {
                mem.unmap_mmio(region.gpa, region.size);
            }
        }
        if let Some(owner) = self.owner_mut(device.group) {
            owner.open.remove(&device.member);
        }
        if let Some(address) = address {
            log::info!(target: "vfio", "guest {}: device {address} closed (bus master off, {} region mappings removed)", device.owner.0, device.regions.len());
        }
        self.put_group(device.group);
    }
}

/// Set and clear bits of a function's command register.
///
/// The register is read as the low half of the dword at 0x04 and written back with the
/// status half zero: status bits are write-1-to-clear, so writing back what was read
/// would clear pending error bits the host may want to see.
pub(super) fn set_command(
    config: &dyn ConfigSpace,
    address: sluice_pci::PciAddress,
    set: u16,
    clear: u16,
) {
    let command = config.read32(address, reg::COMMAND) as u16;
    let new = (command | set) & !clear;
    config.write32(address, reg::COMMAND, u32::from(new));
}
