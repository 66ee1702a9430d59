//! The external user: a reference on an open group held by someone other than the
//! guest's handles — the VM itself (`GROUP_BIND_VM`) or a hypervisor component acting
//! for it (Linux: `vfio_group_get_external_user`, `..._from_dev`,
//! `vfio_group_put_external_user`, `vfio_external_user_iommu_id`, which KVM uses).
//!
//! # Contract (the same for the Rust API and the hypercalls)
//!
//! - **get** ([`Vfio::external_user_get`], [`Vfio::external_user_get_from_dev`]): the
//!   handle must be a live group (device) handle of the caller (`EBADF`, `ENOTTY`); the
//!   group must be in a container with an IOMMU model set (`EINVAL`) and viable (`EPERM`).
//!   It takes one reference on the group: the group stays open (owned by the guest), in
//!   its container — `GROUP_UNSET_CONTAINER` is `EBUSY` — so the container keeps its
//!   model, domains and mappings, even when every handle of the guest is closed.
//! - **put** ([`Vfio::external_user_put`]): drops that reference; the last reference of
//!   the group (handle, devices, external users) releases it as `CLOSE` would.
//! - A guest's external users end with the guest: [`Vfio::release_guest`] drops its VM
//!   bindings first, then revokes any reference a component still holds (logged: the
//!   component should have put it); a token put after that is stale and changes nothing.
//! - [`ExternalUser`] is a typed token, neither `Clone` nor `Copy`: one get, at most one
//!   put. It names its guest and group and carries a unique serial number, so a stale
//!   token never drops a reference someone else took (even on the same group, reopened).
//!
//! A VM binding (`GROUP_BIND_VM`) is one external user whose token the group keeps
//! (`Owner::vm_binding`); at most one per group (`EBUSY`).

use sluice_abi::Errno;
use sluice_abi::vfio::{GROUP_VM_INFO_COHERENT, GroupVmInfo, min_size};
use sluice_iommu::UnitId;

use super::args::{out_len, read_args};
use super::handles::GroupIndex;
use super::state::Vfio;
use super::{GuestId, GuestRam};

/// One reference on an open group, held by an external user. See the module docs.
///
/// Not `Clone`/`Copy`: give it back with [`Vfio::external_user_put`] exactly once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "an external user must be given back with Vfio::external_user_put"]
pub struct ExternalUser {
    /// Unique over the hypervisor's lifetime: which reference this is.
    serial: u64,
    guest: GuestId,
    group: GroupIndex,
    group_id: u32,
}

impl ExternalUser {
    /// The guest whose group this is.
    pub fn guest(&self) -> GuestId {
        self.guest
    }

    /// The group, by index.
    pub fn group(&self) -> GroupIndex {
        self.group
    }

    pub(super) fn serial(&self) -> u64 {
        self.serial
    }
}

/// The IOMMU group id of the group `user` holds (Linux `vfio_external_user_iommu_id`).
pub fn external_user_iommu_id(user: &ExternalUser) -> u32 {
    user.group_id
}

impl Vfio {
    /// Take an external-user reference on the group `group_handle` names for `guest`.
    /// `EBADF`/`ENOTTY` (handle), `EINVAL` (no container, or no IOMMU model set),
    /// `EPERM` (not viable).
    pub fn external_user_get(
        &mut self,
        guest: GuestId,
        group_handle: u64,
    ) -> Result<ExternalUser, Errno> {
        let g = self.group_handle(guest, group_handle)?;
        self.check_external_user(guest, g)?;
        Ok(self.take_external_user(guest, g))
    }

    /// The same, from an open device: the reference is on the device's group.
    /// `EBADF`/`ENOTTY` (the device handle), then as [`Self::external_user_get`].
    pub fn external_user_get_from_dev(
        &mut self,
        guest: GuestId,
        device_handle: u64,
    ) -> Result<ExternalUser, Errno> {
        let d = self.device_handle(guest, device_handle)?;
        let g = self.devices.get(&d).ok_or(Errno::EBADF)?.group;
        self.check_external_user(guest, g)?;
        Ok(self.take_external_user(guest, g))
    }

    /// Give an external-user reference back; the group's last reference releases it. A
    /// stale token (its guest released since) changes nothing.
    pub fn external_user_put(&mut self, user: ExternalUser) {
        let live = self
            .owner_mut(user.group)
            .filter(|owner| owner.guest == user.guest)
            .is_some_and(|owner| owner.external.remove(&user.serial));
        if !live {
            log::warn!(target: "vfio", "guest {}: stale external user #{} put (already revoked)", user.guest.0, user.serial);
            return;
        }
        if let Some(owner) = self.owner_mut(user.group) {
            if owner.vm_binding.as_ref().map(ExternalUser::serial) == Some(user.serial) {
                // Cannot happen: the binding's token lives in the owner, not out here.
                owner.vm_binding = None;
            }
        }
        log::debug!(target: "vfio", "guest {}: external user #{} of group {} put", user.guest.0, user.serial, user.group_id);
        self.put_group(user.group);
    }

    /// Whether `guest` may take an external user on `g`: owned by it (`EBADF`), in a
    /// container with a model set (`EINVAL`), viable (`EPERM`).
    fn check_external_user(&self, guest: GuestId, g: GroupIndex) -> Result<(), Errno> {
        let group = self.groups.get(g.0).ok_or(Errno::EBADF)?;
        let owner = group.owner.as_ref().ok_or(Errno::EBADF)?;
        if owner.guest != guest {
            return Err(Errno::EBADF);
        }
        let active = owner
            .container
            .and_then(|c| self.containers.get(&c))
            .is_some_and(|c| c.model.is_some());
        if !active {
            return Err(Errno::EINVAL);
        }
        if !group.viable {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// Record a new external user on `g` (checked by [`Self::check_external_user`]).
    fn take_external_user(&mut self, guest: GuestId, g: GroupIndex) -> ExternalUser {
        let serial = self.next_external;
        self.next_external += 1;
        let group_id = self.groups.get(g.0).map_or(0, |group| group.desc.id);
        if let Some(owner) = self.owner_mut(g) {
            owner.external.insert(serial);
            owner.refs += 1;
        }
        log::debug!(target: "vfio", "guest {}: external user #{serial} of group {group_id}", guest.0);
        ExternalUser {
            serial,
            guest,
            group: g,
            group_id,
        }
    }

    /// At the start of [`Self::release_guest`]: drop `guest`'s VM bindings, then revoke
    /// the external users components still hold on its groups. Groups whose handles are
    /// already closed are released here.
    pub(super) fn release_external_users(&mut self, guest: GuestId) {
        for index in 0..self.groups.len() {
            let g = GroupIndex(index);
            let Some(owner) = self.owner_mut(g).filter(|o| o.guest == guest) else {
                continue;
            };
            if let Some(binding) = owner.vm_binding.take() {
                self.external_user_put(binding);
            }
            let Some(owner) = self.owner_mut(g).filter(|o| o.guest == guest) else {
                continue;
            };
            let revoked = core::mem::take(&mut owner.external);
            if !revoked.is_empty() {
                log::warn!(target: "vfio", "guest {}: {} external users of group index {index} still held at release: revoked", guest.0, revoked.len());
            }
            for _ in revoked {
                self.put_group(g);
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // The hypercalls
    // -----------------------------------------------------------------------------------

    /// `GROUP_BIND_VM`: `EINVAL` (no container / model), `EPERM` (not viable), `EBUSY`
    /// (bound already).
    pub(super) fn group_bind_vm(&mut self, guest: GuestId, handle: u64) -> Result<u64, Errno> {
        let g = self.group_handle(guest, handle)?;
        self.check_external_user(guest, g)?;
        if self.bound(g) {
            return Err(Errno::EBUSY);
        }
        let user = self.take_external_user(guest, g);
        let group_id = external_user_iommu_id(&user);
        if let Some(owner) = self.owner_mut(g) {
            owner.vm_binding = Some(user);
        }
        log::info!(target: "vfio", "guest {}: group {group_id} bound to the VM", guest.0);
        Ok(0)
    }

    /// `GROUP_UNBIND_VM`: `EINVAL` when not bound. Disables the interrupts of the group's
    /// open devices (they are routed to the VM).
    pub(super) fn group_unbind_vm(&mut self, guest: GuestId, handle: u64) -> Result<u64, Errno> {
        let g = self.group_handle(guest, handle)?;
        let user = self
            .owner_mut(g)
            .and_then(|owner| owner.vm_binding.take())
            .ok_or(Errno::EINVAL)?;
        let group_id = external_user_iommu_id(&user);
        // Interrupts go to the VM: without the binding, the group's devices' MSI and
        // INTx are disabled and their routes dropped.
        let open: alloc::vec::Vec<_> = self
            .devices
            .iter()
            .filter(|(_, dev)| dev.group == g)
            .map(|(&d, _)| d)
            .collect();
        for d in open {
            self.irqs_disable(d);
        }
        self.external_user_put(user);
        log::info!(target: "vfio", "guest {}: group {group_id} unbound from the VM", guest.0);
        Ok(0)
    }

    /// `GROUP_VM_INFO`: `EINVAL` when not bound (before the structure is read), then the
    /// structure's rules.
    pub(super) fn group_vm_info(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        handle: u64,
        gpa: u64,
    ) -> Result<u64, Errno> {
        let g = self.group_handle(guest, handle)?;
        if !self.bound(g) {
            return Err(Errno::EINVAL);
        }
        let (argsz, bytes) =
            read_args::<{ GroupVmInfo::SIZE }>(&*mem, gpa, min_size::GROUP_VM_INFO)?;
        if GroupVmInfo::from_bytes(&bytes).flags != 0 {
            return Err(Errno::EINVAL);
        }
        let group = self.groups.get(g.0).ok_or(Errno::EBADF)?;
        let units = group.units();
        let unit = units.first().copied().unwrap_or(UnitId(u16::MAX));
        let coherent = !units.is_empty()
            && units
                .iter()
                .all(|&u| self.iommu.dma_coherent(u) == Some(true));
        let info = GroupVmInfo {
            argsz,
            flags: if coherent { GROUP_VM_INFO_COHERENT } else { 0 },
            group_id: group.desc.id,
            unit: u32::from(unit.0),
        };
        let n = out_len(argsz, min_size::GROUP_VM_INFO, GroupVmInfo::SIZE);
        mem.write(gpa, info.to_bytes().get(..n).ok_or(Errno::EINVAL)?)?;
        Ok(0)
    }

    /// Whether group `g` is bound to its owner's VM.
    pub(super) fn bound(&self, g: GroupIndex) -> bool {
        self.groups
            .get(g.0)
            .and_then(|group| group.owner.as_ref())
            .is_some_and(|owner| owner.vm_binding.is_some())
    }
}
