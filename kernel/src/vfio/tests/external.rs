//! External users: the Rust API (`external_user_get`, `_from_dev`, `_put`,
//! `external_user_iommu_id`) and the VM binding hypercalls (GROUP_BIND_VM,
//! GROUP_UNBIND_VM, GROUP_VM_INFO), with their reference counting against CLOSE,
//! UNSET_CONTAINER and guest release.

use sluice_abi::Errno;
use sluice_abi::vfio::{GROUP_VM_INFO_COHERENT, GroupVmInfo, MAX_ARGSZ, VfioCall};

use super::*;
use crate::vfio::{ExternalUser, external_user_iommu_id};

impl Rig {
    /// `external_user_get`, then the invariants.
    fn get(&mut self, guest: GuestId, group: u64) -> Result<ExternalUser, Errno> {
        let r = self.vfio.external_user_get(guest, group);
        self.vfio.check_invariants().unwrap();
        r
    }

    fn get_from_dev(&mut self, guest: GuestId, device: u64) -> Result<ExternalUser, Errno> {
        let r = self.vfio.external_user_get_from_dev(guest, device);
        self.vfio.check_invariants().unwrap();
        r
    }

    fn put(&mut self, user: ExternalUser) {
        self.vfio.external_user_put(user);
        self.vfio.check_invariants().unwrap();
    }

    /// The owner's reference count of group `id` (None: closed).
    fn refs(&self, id: u64) -> Option<u32> {
        let index = self.vfio.group_index(id)?;
        self.vfio.groups[index.0].owner.as_ref().map(|o| o.refs)
    }

    fn set_viable(&mut self, id: u64, viable: bool) {
        let index = self.vfio.group_index(id).unwrap();
        self.vfio.groups[index.0].viable = viable;
    }
}

#[test]
fn get_needs_a_container_with_a_model_and_viability() {
    let mut rig = Rig::new();
    let g = rig.open(A, 1).unwrap();
    // No container.
    assert_eq!(rig.get(A, g).err(), Some(Errno::EINVAL));
    // A container without a model.
    let c = rig.create(A);
    rig.set(A, g, c).unwrap();
    assert_eq!(rig.get(A, g).err(), Some(Errno::EINVAL));
    assert_eq!(rig.refs(1), Some(1), "failed gets take nothing");
    // The LPC group can never be in a container: EINVAL, not EPERM (order of checks).
    let lpc = rig.open(A, 4).unwrap();
    assert_eq!(rig.set(A, lpc, c), Err(Errno::EPERM));
    assert_eq!(rig.get(A, lpc).err(), Some(Errno::EINVAL));
    // Active: it works.
    rig.set_iommu(A, c).unwrap();
    let user = rig.get(A, g).unwrap();
    assert_eq!(external_user_iommu_id(&user), 1);
    assert_eq!(user.guest(), A);
    assert_eq!(rig.refs(1), Some(2));
    rig.put(user);
    assert_eq!(rig.refs(1), Some(1));
    // Not viable (viability is fixed at boot; forced here to reach the check): EPERM.
    rig.set_viable(1, false);
    assert_eq!(rig.vfio.external_user_get(A, g).err(), Some(Errno::EPERM));
    assert_eq!(
        rig.call(A, VfioCall::GroupBindVm { group: g }),
        Err(Errno::EPERM)
    );
    rig.set_viable(1, true);
    // Handle errors: wrong kind, forged, closed.
    assert_eq!(rig.get(A, c).err(), Some(Errno::ENOTTY));
    assert_eq!(rig.get(A, 0).err(), Some(Errno::EBADF));
    assert_eq!(rig.get(A, g + 1).err(), Some(Errno::EBADF));
    assert_eq!(rig.get_from_dev(A, g).err(), Some(Errno::ENOTTY));
    assert_eq!(rig.get_from_dev(A, c).err(), Some(Errno::ENOTTY));
    assert_eq!(rig.get_from_dev(A, u64::MAX).err(), Some(Errno::EBADF));
}

#[test]
fn an_external_user_keeps_the_group_through_close_and_unset() {
    let mut rig = Rig::new();
    let (c, gs) = rig.active(A, &[1]);
    let g = gs[0];
    rig.map(A, c, 0x10_0000, 0x10_0000, 0x2000).unwrap();
    let user = rig.get(A, g).unwrap();
    // UNSET_CONTAINER is EBUSY while held.
    assert_eq!(rig.unset(A, g), Err(Errno::EBUSY));
    // Closing every handle keeps the group open, in its container, with its mappings.
    rig.close(A, g).unwrap();
    rig.close(A, c).unwrap();
    assert_eq!(rig.refs(1), Some(1));
    assert_eq!(rig.vfio.group_owner(1), Some(A));
    assert_eq!(rig.attached().len(), 1);
    assert_eq!(rig.attached()[0].1.len(), 1);
    // Nobody can take it meanwhile.
    assert_eq!(rig.open(A, 1), Err(Errno::EBUSY));
    // The last reference goes with the put: released, container destroyed.
    rig.put(user);
    assert_eq!(rig.vfio.group_owner(1), None);
    assert!(rig.iommu_is_clean());
    assert_eq!(rig.vfio.container_count(), 0);
    // And the group can be opened again.
    rig.open(A, 1).unwrap();
}

#[test]
fn put_before_close_and_unset_after_put() {
    let mut rig = Rig::new();
    let (c, gs) = rig.active(A, &[1, 3]);
    let (u1, u2) = (rig.get(A, gs[0]).unwrap(), rig.get(A, gs[0]).unwrap());
    let u3 = rig.get(A, gs[1]).unwrap();
    assert_eq!(rig.refs(1), Some(3));
    assert_eq!(external_user_iommu_id(&u3), 3);
    rig.put(u2);
    assert_eq!(rig.unset(A, gs[0]), Err(Errno::EBUSY), "u1 still holds it");
    rig.put(u1);
    assert_eq!(rig.refs(1), Some(1));
    rig.unset(A, gs[0]).unwrap();
    // Group 3 is still held; unsetting group 1 left the container active.
    assert_eq!(rig.unset(A, gs[1]), Err(Errno::EBUSY));
    rig.put(u3);
    rig.unset(A, gs[1]).unwrap();
    rig.close(A, c).unwrap();
    rig.release(A);
    assert!(rig.iommu_is_clean());
    assert_eq!(rig.vfio.open_group_count(), 0);
}

#[test]
fn from_dev_holds_the_devices_group() {
    let mut rig = Rig::new();
    let (c, gs) = rig.active(A, &[2]);
    let d = rig.get_device(A, gs[0], "0000:01:00.0").unwrap();
    let user = rig.get_from_dev(A, d).unwrap();
    assert_eq!(external_user_iommu_id(&user), 2);
    assert_eq!(rig.refs(2), Some(3), "handle, device, external user");
    rig.close(A, d).unwrap();
    rig.close(A, gs[0]).unwrap();
    assert_eq!(rig.refs(2), Some(1));
    assert_eq!(rig.vfio.group_owner(2), Some(A));
    rig.close(A, c).unwrap();
    rig.put(user);
    assert_eq!(rig.vfio.open_group_count(), 0);
    assert!(rig.iommu_is_clean());
    // A closed device handle is EBADF.
    assert_eq!(rig.get_from_dev(A, d).err(), Some(Errno::EBADF));
}

#[test]
fn release_revokes_and_stale_tokens_change_nothing() {
    let mut rig = Rig::new();
    let (_c, gs) = rig.active(A, &[2]);
    let user = rig.get(A, gs[0]).unwrap();
    rig.bind(A, gs[0]).unwrap();
    rig.close(A, gs[0]).unwrap();
    // The guest ends with a component still holding a reference: revoked.
    rig.release(A);
    assert_eq!(rig.vfio.open_group_count(), 0);
    assert!(rig.iommu_is_clean());
    // B takes the same group; A's stale token must not drop B's reference.
    let (_cb, gb) = rig.active(B, &[2]);
    assert_eq!(rig.refs(2), Some(1));
    rig.put(user);
    assert_eq!(rig.refs(2), Some(1));
    assert_eq!(rig.vfio.group_owner(2), Some(B));
    // A comes back and reopens it after B is gone: still stale.
    let stale = {
        rig.vfio.add_guest(A, &[2]);
        rig.release(B);
        let (_c, ga) = rig.active(A, &[2]);
        let u = rig.get(A, ga[0]).unwrap();
        rig.release(A);
        u
    };
    rig.vfio.add_guest(A, &[2]);
    let (_c, ga) = rig.active(A, &[2]);
    rig.put(stale);
    assert_eq!(rig.refs(2), Some(1));
    let _ = (gb, ga);
}

#[test]
fn no_cross_guest_use() {
    let mut rig = Rig::new();
    let (_ca, ga) = rig.active(A, &[3]);
    let (_cb, gb) = rig.active(B, &[5]);
    // Another guest's handles are EBADF, for the API and the calls alike.
    assert_eq!(rig.get(A, gb[0]).err(), Some(Errno::EBADF));
    assert_eq!(rig.get(B, ga[0]).err(), Some(Errno::EBADF));
    assert_eq!(rig.bind(A, gb[0]), Err(Errno::EBADF));
    assert_eq!(rig.unbind(B, ga[0]), Err(Errno::EBADF));
    assert_eq!(rig.vm_info(B, ga[0]), Err(Errno::EBADF));
    // A's binding is invisible to B and dies with A only.
    rig.bind(A, ga[0]).unwrap();
    let ub = rig.get(B, gb[0]).unwrap();
    rig.release(A);
    assert_eq!(rig.vfio.group_owner(3), None);
    assert_eq!(rig.vfio.group_owner(5), Some(B));
    assert_eq!(rig.refs(5), Some(2));
    rig.put(ub);
    assert_eq!(rig.refs(5), Some(1));
}

#[test]
fn bind_vm_errors_in_order() {
    let mut rig = Rig::new();
    let g = rig.open(A, 1).unwrap();
    let c = rig.create(A);
    assert_eq!(rig.bind(A, 0), Err(Errno::EBADF));
    assert_eq!(rig.bind(A, c), Err(Errno::ENOTTY));
    assert_eq!(rig.bind(A, g), Err(Errno::EINVAL), "no container");
    rig.set(A, g, c).unwrap();
    assert_eq!(rig.bind(A, g), Err(Errno::EINVAL), "no model");
    let lpc = rig.open(A, 4).unwrap();
    assert_eq!(
        rig.bind(A, lpc),
        Err(Errno::EINVAL),
        "not viable, so no container"
    );
    rig.set_iommu(A, c).unwrap();
    rig.bind(A, g).unwrap();
    assert_eq!(rig.bind(A, g), Err(Errno::EBUSY));
    assert_eq!(rig.refs(1), Some(2));
    // In-hypervisor users are not limited to one (only the VM binding is).
    let user = rig.get(A, g).unwrap();
    assert_eq!(rig.unset(A, g), Err(Errno::EBUSY));
    rig.unbind(A, g).unwrap();
    assert_eq!(rig.unbind(A, g), Err(Errno::EINVAL));
    assert_eq!(
        rig.unset(A, g),
        Err(Errno::EBUSY),
        "the API user still holds it"
    );
    rig.put(user);
    rig.unset(A, g).unwrap();
    assert_eq!(rig.unbind(A, g), Err(Errno::EINVAL));
    assert_eq!(rig.unbind(A, c), Err(Errno::ENOTTY));
    assert_eq!(rig.refs(1), Some(1));
}

#[test]
fn vm_info_of_bound_groups() {
    let mut rig = Rig::new();
    let (_c, gs) = rig.active(A, &[1, 3]);
    assert_eq!(rig.vm_info(A, gs[0]), Err(Errno::EINVAL), "not bound");
    rig.bind(A, gs[0]).unwrap();
    rig.bind(A, gs[1]).unwrap();
    // The fake's unit 0 is coherent, unit 1 is not.
    assert_eq!(
        rig.vm_info(A, gs[0]),
        Ok(GroupVmInfo {
            argsz: 16,
            flags: GROUP_VM_INFO_COHERENT,
            group_id: 1,
            unit: 0,
        })
    );
    assert_eq!(
        rig.vm_info(A, gs[1]),
        Ok(GroupVmInfo {
            argsz: 16,
            flags: 0,
            group_id: 3,
            unit: 1,
        })
    );
    // The structure's rules, after the state: argsz, flags, outside RAM.
    let call = |rig: &mut Rig, bytes: [u8; 16]| {
        rig.ram(A).put(ARGS, &bytes);
        rig.call(
            A,
            VfioCall::GroupVmInfo {
                group: gs[0],
                info: ARGS,
            },
        )
    };
    let info = |argsz, flags| {
        GroupVmInfo {
            argsz,
            flags,
            ..GroupVmInfo::default()
        }
        .to_bytes()
    };
    assert_eq!(call(&mut rig, info(15, 0)), Err(Errno::EINVAL));
    assert_eq!(call(&mut rig, info(16, 1)), Err(Errno::EINVAL));
    assert_eq!(call(&mut rig, info(MAX_ARGSZ + 1, 0)), Err(Errno::E2BIG));
    assert_eq!(
        rig.ram(A).get(ARGS, 16),
        &info(MAX_ARGSZ + 1, 0)[..],
        "untouched"
    );
    // A larger argsz: the 16 bytes are written, argsz kept.
    assert_eq!(call(&mut rig, info(64, 0)), Ok(0));
    assert_eq!(
        GroupVmInfo::from_prefix(rig.ram(A).get(ARGS, 16)),
        GroupVmInfo {
            argsz: 64,
            flags: GROUP_VM_INFO_COHERENT,
            group_id: 1,
            unit: 0
        }
    );
    // argsz 16 readable, the structure running past the end of RAM.
    rig.ram(A).put(RAM_SIZE - 8, &info(16, 0)[..8]);
    assert_eq!(
        rig.call(
            A,
            VfioCall::GroupVmInfo {
                group: gs[0],
                info: RAM_SIZE - 8,
            },
        ),
        Err(Errno::EFAULT)
    );
    // Unbound again: EINVAL before the structure is looked at.
    rig.unbind(A, gs[0]).unwrap();
    assert_eq!(
        rig.call(
            A,
            VfioCall::GroupVmInfo {
                group: gs[0],
                info: u64::MAX,
            },
        ),
        Err(Errno::EINVAL)
    );
}

#[test]
fn a_bound_group_survives_its_handle_until_the_guest_ends() {
    let mut rig = Rig::new();
    let (c, gs) = rig.active(A, &[1]);
    rig.map(A, c, 0x10_0000, 0x10_0000, 0x1000).unwrap();
    let d = rig.get_device(A, gs[0], "0000:00:02.0").unwrap();
    rig.bind(A, gs[0]).unwrap();
    rig.close(A, d).unwrap();
    rig.close(A, gs[0]).unwrap();
    rig.close(A, c).unwrap();
    // Still open, bound, attached with its mapping.
    assert_eq!(rig.vfio.group_owner(1), Some(A));
    assert_eq!(rig.refs(1), Some(1));
    assert_eq!(rig.attached().len(), 1);
    assert_eq!(rig.open(A, 1), Err(Errno::EBUSY));
    // The guest ends: the binding goes first, the group with it.
    rig.release(A);
    assert_eq!(rig.vfio.open_group_count(), 0);
    assert!(rig.iommu_is_clean());
    assert_eq!(rig.vfio.container_count(), 0);
}

#[test]
fn bind_unbind_then_teardown_in_every_order() {
    // Each order of {unbind, close device, close group, close container}, then release.
    let steps = ["unbind", "device", "group", "container"];
    let mut orders = vec![vec![]];
    for _ in 0..steps.len() {
        let mut next = vec![];
        for order in &orders {
            for s in steps {
                if !order.contains(&s) {
                    let mut o = order.clone();
                    o.push(s);
                    next.push(o);
                }
            }
        }
        orders = next;
    }
    assert_eq!(orders.len(), 24);
    for order in orders {
        let mut rig = Rig::new();
        let (c, gs) = rig.active(A, &[1]);
        let g = gs[0];
        let d = rig.get_device(A, g, "0000:00:02.0").unwrap();
        rig.bind(A, g).unwrap();
        let mut group_closed = false;
        for s in &order {
            match *s {
                "unbind" if group_closed => assert_eq!(rig.unbind(A, g), Err(Errno::EBADF)),
                "unbind" => rig.unbind(A, g).map(drop).unwrap(),
                "device" => rig.close(A, d).map(drop).unwrap(),
                "group" => {
                    rig.close(A, g).unwrap();
                    group_closed = true;
                }
                _ => rig.close(A, c).map(drop).unwrap(),
            }
        }
        let unbound_first =
            order.iter().position(|s| *s == "unbind") < order.iter().position(|s| *s == "group");
        assert_eq!(
            rig.vfio.group_owner(1).is_none(),
            unbound_first,
            "{order:?}"
        );
        rig.release(A);
        assert!(rig.iommu_is_clean(), "{order:?}");
        assert_eq!(rig.vfio.open_group_count(), 0, "{order:?}");
    }
}
