//! `DEVICE_RESET`, and the reset of a released group's functions.
//!
//! The method of each function is fixed when the groups are formed
//! ([`GroupDevice::reset`](super::GroupDevice::reset)): FLR, PM reset, or a secondary
//! bus reset when the whole bus is in the group. `sluice_pci::reset` does the work,
//! saving and restoring the config header; the waits go to the platform's
//! [`DeviceHw::delay_us`](super::DeviceHw::delay_us) (no-ops when none is set, as in
//! host tests).

use sluice_abi::Errno;
use sluice_pci::{ResetError, ResetMethod};

use super::handles::{DeviceId, GroupIndex};
use super::{GuestId, Vfio};

impl Vfio {
    /// Reset `function` of the group at `g` with `method`.
    fn reset_function(
        &mut self,
        g: GroupIndex,
        member: usize,
    ) -> Option<Result<ResetMethod, ResetError>> {
        let function = self.groups.get(g.0)?.desc.devices.get(member)?;
        let method = function.reset?;
        let address = function.address;
        let hw = &mut self.device_hw;
        let mut delay = |us: u32| {
            if let Some(hw) = hw.as_mut() {
                hw.delay_us(us);
            }
        };
        Some(sluice_pci::reset(&*self.config, address, method, &mut delay).map(|()| method))
    }

    /// Reset an open device and re-read its virtual config.
    pub(super) fn reset_device(&mut self, d: DeviceId) -> Result<ResetMethod, Errno> {
        let device = self.devices.get(&d).ok_or(Errno::EBADF)?;
        let (g, member) = (device.group, device.member);
        let result = self.reset_function(g, member).ok_or(Errno::EINVAL)?;
        // A bus reset reset every function on the bus, all of them in this group: each
        // open one gets its virtual registers and MSI-X table back, not only `d`.
        let reset: alloc::vec::Vec<DeviceId> = match result {
            Ok(ResetMethod::BusReset { .. }) => self
                .devices
                .iter()
                .filter(|(_, dev)| dev.group == g)
                .map(|(&other, _)| other)
                .collect(),
            _ => alloc::vec![d],
        };
        for other in reset {
            self.refresh_vconfig(other);
            if result.is_ok() {
                self.msix_after_reset(other);
            }
        }
        result.map_err(|e| {
            log::warn!(target: "vfio", "{d:?}: reset failed: {e:?}");
            Errno::ENODEV
        })
    }

    /// `DEVICE_RESET`.
    pub(super) fn device_reset(&mut self, guest: GuestId, handle: u64) -> Result<u64, Errno> {
        let d = self.device_handle(guest, handle)?;
        let address = self.function(d)?.address;
        if self.function(d)?.reset.is_none() {
            return Err(Errno::EINVAL);
        }
        let method = self.reset_device(d)?;
        log::info!(target: "vfio", "guest {}: device {address} reset ({method})", guest.0);
        Ok(0)
    }

    /// The group's last reference went and its DMA is blocked: reset every function
    /// that has a method, so nothing the last owner left in a device (queued DMA,
    /// programmed registers) reaches the next owner. Logged per function.
    pub(super) fn reset_released_group(&mut self, g: GroupIndex) {
        let Some(group) = self.groups.get(g.0) else {
            return;
        };
        let id = group.desc.id;
        let members: alloc::vec::Vec<usize> = group
            .desc
            .devices
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.bridge)
            .map(|(i, _)| i)
            .collect();
        let mut bus_resets = alloc::collections::BTreeSet::new();
        for member in members {
            let Some(address) = self
                .groups
                .get(g.0)
                .and_then(|group| group.desc.devices.get(member))
                .map(|f| f.address)
            else {
                continue;
            };
            let method = self
                .groups
                .get(g.0)
                .and_then(|group| group.desc.devices.get(member))
                .and_then(|f| f.reset);
            if let Some(ResetMethod::BusReset { bridge }) = method {
                // One bus reset covers every function on the bus.
                if !bus_resets.insert(bridge) {
                    continue;
                }
            }
            match self.reset_function(g, member) {
                Some(Ok(method)) => {
                    log::info!(target: "vfio", "group {id}: {address} reset on release ({method})")
                }
                Some(Err(e)) => {
                    log::warn!(target: "vfio", "group {id}: {address} reset on release failed: {e:?}")
                }
                None => {
                    log::info!(target: "vfio", "group {id}: {address} has no reset method: not reset on release")
                }
            }
        }
    }
}
