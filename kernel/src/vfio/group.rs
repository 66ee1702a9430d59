//! Groups: the unit of ownership. A guest opens a group the command line gives it,
//! puts it in a container, and opens devices through it.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    DEVICE_LIST_BRIDGE, DEVICE_LIST_HOST, GROUP_FLAGS_CONTAINER_SET, GROUP_FLAGS_VIABLE,
    GROUP_LIST_BUSY, GROUP_LIST_OPEN, GROUP_LIST_OWNABLE, GROUP_LIST_VIABLE, GroupList,
    GroupListEntry, GroupStatus, min_size,
};
use sluice_iommu::DeviceDma;

use super::args::read_args;
use super::container::join;
use super::errors::iommu_errno;
use super::handles::{GroupIndex, Object};
use super::state::{Owner, Vfio};
use super::{GuestId, GuestRam};

impl Vfio {
    /// `GROUP_LIST`: every function of every group, with the group's state for the
    /// caller; as many entries as `argsz` holds, `argsz` raised when not all fit.
    pub(super) fn group_list(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        gpa: u64,
    ) -> Result<u64, Errno> {
        let (argsz, bytes) = read_args::<{ GroupList::SIZE }>(&*mem, gpa, min_size::GROUP_LIST)?;
        let header = GroupList::from_bytes(&bytes);
        if header.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let grants = self.guests.get(&guest).map(|g| &g.grants);
        let mut entries: Vec<GroupListEntry> = Vec::new();
        for (index, group) in self.groups.iter().enumerate() {
            let mut group_flags = 0;
            if grants.is_some_and(|g| g.contains(&GroupIndex(index))) {
                group_flags |= GROUP_LIST_OWNABLE;
            }
            match &group.owner {
                Some(o) if o.guest == guest => group_flags |= GROUP_LIST_OPEN,
                Some(_) => group_flags |= GROUP_LIST_BUSY,
                None => {}
            }
            if group.viable {
                group_flags |= GROUP_LIST_VIABLE;
            }
            for f in &group.desc.devices {
                let mut device_flags = 0;
                if f.bridge {
                    device_flags |= DEVICE_LIST_BRIDGE;
                }
                if f.host_owned {
                    device_flags |= DEVICE_LIST_HOST;
                }
                entries.push(GroupListEntry {
                    group_id: group.desc.id,
                    group_flags,
                    device_flags,
                    class_code: f.class & 0x00ff_ffff,
                    segment: f.address.segment,
                    bus: f.address.bus,
                    devfn: (f.address.device & 0x1f) << 3 | (f.address.function & 7),
                    vendor_id: f.vendor_id,
                    device_id: f.device_id,
                });
            }
        }
        let room = (argsz as usize - GroupList::SIZE) / GroupListEntry::SIZE;
        let needed = GroupList::SIZE + entries.len() * GroupListEntry::SIZE;
        let out_header = GroupList {
            argsz: if entries.len() > room {
                u32::try_from(needed).unwrap_or(u32::MAX)
            } else {
                argsz
            },
            flags: 0,
            count: entries.len() as u32,
            entry_size: GroupListEntry::SIZE as u32,
        };
        let mut out = Vec::with_capacity(needed.min(argsz as usize));
        out.extend_from_slice(&out_header.to_bytes());
        for e in entries.iter().take(room) {
            out.extend_from_slice(&e.to_bytes());
        }
        mem.write(gpa, &out)?;
        Ok(0)
    }

    /// `GROUP_OPEN`: `ENOENT` unknown, `EPERM` not granted, `EBUSY` owned by anyone.
    pub(super) fn group_open(&mut self, guest: GuestId, id: u64) -> Result<u64, Errno> {
        let index = self.group_index(id).ok_or(Errno::ENOENT)?;
        let state = self.guests.get_mut(&guest).ok_or(Errno::EPERM)?;
        if !state.grants.contains(&index) {
            return Err(Errno::EPERM);
        }
        let group = self.groups.get_mut(index.0).ok_or(Errno::ENOENT)?;
        if group.owner.is_some() {
            return Err(Errno::EBUSY);
        }
        let handle = state
            .handles
            .insert(Object::Group(index), &mut self.generations)?;
        group.owner = Some(Owner {
            guest,
            refs: 1,
            handle_open: true,
            container: None,
            open: BTreeMap::new(),
            external: BTreeSet::new(),
            vm_binding: None,
        });
        log::info!(target: "vfio", "guest {}: group {} opened ({} functions{})", guest.0, group.desc.id, group.desc.devices.len(), if group.viable { "" } else { ", not viable" });
        Ok(handle)
    }

    /// `GROUP_GET_STATUS`.
    pub(super) fn group_get_status(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        handle: u64,
        gpa: u64,
    ) -> Result<u64, Errno> {
        let index = self.group_handle(guest, handle)?;
        let (argsz, bytes) =
            read_args::<{ GroupStatus::SIZE }>(&*mem, gpa, min_size::GROUP_STATUS)?;
        if GroupStatus::from_bytes(&bytes).flags != 0 {
            return Err(Errno::EINVAL);
        }
        let group = self.groups.get(index.0).ok_or(Errno::EBADF)?;
        let mut flags = 0;
        if group.viable {
            flags |= GROUP_FLAGS_VIABLE;
        }
        if group.owner.as_ref().is_some_and(|o| o.container.is_some()) {
            flags |= GROUP_FLAGS_CONTAINER_SET;
        }
        mem.write(gpa, &GroupStatus { argsz, flags }.to_bytes())?;
        Ok(0)
    }

    /// `GROUP_SET_CONTAINER`: the group joins; in an active container its functions
    /// are attached at once (a domain with every mapping replayed first, if the group
    /// brings a new unit).
    pub(super) fn group_set_container(
        &mut self,
        guest: GuestId,
        group_handle: u64,
        container_handle: u64,
    ) -> Result<u64, Errno> {
        let index = self.group_handle(guest, group_handle)?;
        // As in Linux: a live handle that is not a container is EINVAL here.
        let id = match self.object(guest, container_handle)? {
            Object::Container(c) => c,
            _ => return Err(Errno::EINVAL),
        };
        let group = self.groups.get(index.0).ok_or(Errno::EBADF)?;
        let owner = group.owner.as_ref().ok_or(Errno::EBADF)?;
        if owner.container.is_some() {
            return Err(Errno::EINVAL);
        }
        if !group.viable {
            return Err(Errno::EPERM);
        }
        let container = self.containers.get_mut(&id).ok_or(Errno::EBADF)?;
        if container.owner != guest || owner.guest != guest {
            // Cannot happen (handles are per guest); refuse rather than mix guests.
            return Err(Errno::EINVAL);
        }
        if let Some(model) = container.model.as_mut() {
            let devices: Vec<DeviceDma> = group.routes().cloned().collect();
            join(&mut *self.iommu, model, &devices).map_err(iommu_errno)?;
        }
        container.groups.insert(index);
        container.refs += 1;
        let active = container.model.is_some();
        let group_id = group.desc.id;
        if let Some(owner) = self.owner_mut(index) {
            owner.container = Some(id);
        }
        log::info!(target: "vfio", "guest {}: group {group_id} joined container {}{}", guest.0, id.0, if active { " (attached)" } else { "" });
        Ok(0)
    }

    /// `GROUP_UNSET_CONTAINER`: `EINVAL` when not in one, `EBUSY` while a device of
    /// the group is open or an external user (the VM binding) holds it.
    pub(super) fn group_unset_container(
        &mut self,
        guest: GuestId,
        handle: u64,
    ) -> Result<u64, Errno> {
        let index = self.group_handle(guest, handle)?;
        let owner = self
            .groups
            .get(index.0)
            .and_then(|g| g.owner.as_ref())
            .ok_or(Errno::EBADF)?;
        if owner.container.is_none() {
            return Err(Errno::EINVAL);
        }
        if !owner.open.is_empty() || !owner.external.is_empty() {
            return Err(Errno::EBUSY);
        }
        self.leave_container(index);
        Ok(0)
    }
}
