//! Legacy INTx: a device's interrupt pin, through the I/O APIC, to the owning guest.
//!
//! # The path of one interrupt
//!
//! A function asserts its INTx pin; the platform routes it (the DSDT's `_PRT`, swizzled
//! through bridges: [`IntxLine`]) to a GSI, i.e. an I/O APIC pin. While some open device
//! has INTx enabled on that GSI the pin is routed to one host vector (from the same pool
//! as MSIs), level-triggered, through the IOMMU's interrupt remapping where it is on
//! ([`Iommu::map_ioapic_pin`]). INTx is level-triggered and may be shared, so:
//!
//! 1. the host's interrupt handler masks the pin before its EOI (else the still-asserted
//!    line fires again at once) and records the vector;
//! 2. [`Vfio::take_interrupts`] asks every device enabled on that GSI whether it asserts
//!    (the Interrupt Status bit, STATUS bit 3, which PCI 2.3 functions keep); each one
//!    that does is masked at the device (COMMAND bit 10, Interrupt Disable: the
//!    function stops driving the pin) and its guest gets its virtual vector, then the
//!    pin is unmasked again;
//! 3. the guest services the device (e.g. acknowledges its interrupt register) and
//!    unmasks with `DEVICE_SET_IRQS(INTX, ACTION_UNMASK)`: Interrupt Disable is
//!    cleared, and if the device still asserts, the pin fires again.
//!
//! That is VFIO's *automasked* INTx (`IRQ_INFO_AUTOMASKED`), with PCI 2.3 masking (Linux
//! `vfio_pci_intx_mask`/`pci_check_and_mask_intx`); the I/O APIC pin is only masked for
//! the moment between the interrupt and the check. A line nobody claims is counted; one
//! that keeps firing unclaimed is left masked (logged), like Linux's "nobody cared", until
//! one of its devices is unmasked or enabled again. A line is shared only among one
//! guest's devices (another guest's enable is `EBUSY`), so no guest can do that to
//! another's interrupts. INTx is offered only to functions that implement PCI 2.3
//! masking (Interrupt Disable sticks).
//!
//! Interrupt Disable belongs to the hypervisor: guests' config writes cannot change it
//! (`region`), or a guest could unmask behind the host and storm the line.
//!
//! One interrupt type at a time: INTx cannot be enabled while MSI is, nor the reverse
//! (`EINVAL`), as VFIO does.
//!
//! [`Iommu::map_ioapic_pin`]: sluice_iommu::Iommu::map_ioapic_pin

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_BOOL,
    IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE, IRQ_VECTOR_MIN, IRQ_VECTOR_NONE,
};
use sluice_iommu::{IoApicPinRoute, IommuError};
use sluice_pci::{PciAddress, reg};

use super::errors::iommu_errno;
use super::handles::DeviceId;
use super::state::{Vfio, set_command};
use super::{GuestId, IntxLine};

/// STATUS bit 3: the function is asserting its INTx pin (PCI 2.3).
pub const STATUS_INTERRUPT: u16 = 1 << 3;

/// Unclaimed interrupts in a row after which a line is left masked.
pub const UNCLAIMED_LIMIT: u32 = 1000;

/// A GSI routed to a host vector for the devices whose INTx is enabled on it.
#[derive(Debug)]
pub(super) struct Line {
    pub vector: u8,
    pub route: IoApicPinRoute,
    pub users: BTreeSet<DeviceId>,
    /// Interrupts in a row no enabled device claimed.
    pub unclaimed: u32,
    /// Left masked after [`UNCLAIMED_LIMIT`] unclaimed interrupts.
    pub stuck: bool,
}

/// A device with INTx enabled.
#[derive(Debug)]
pub(super) struct Intx {
    pub owner: GuestId,
    pub address: PciAddress,
    pub gsi: u32,
    /// The guest's vector, when bound.
    pub virt: Option<u8>,
    /// Interrupt Disable is set: by the automask after an interrupt, or by the guest's
    /// `ACTION_MASK`.
    pub masked: bool,
}

/// The INTx side of the interrupt state.
#[derive(Debug, Default)]
pub(super) struct IntxState {
    pub devices: BTreeMap<DeviceId, Intx>,
    pub lines: BTreeMap<u32, Line>,
    /// Host vector → GSI.
    pub vectors: BTreeMap<u8, u32>,
    /// Line interrupts no device claimed.
    pub unclaimed: u64,
}

impl Vfio {
    /// Whether INTx can be offered on `line` at all: the platform gave the VFIO layer
    /// its I/O APICs and one of them has the GSI.
    pub(super) fn intx_available(&self, line: Option<IntxLine>) -> bool {
        match (line, &self.lines) {
            (Some(l), Some(lines)) => l.level_triggered && lines.locate(l.gsi).is_some(),
            _ => false,
        }
    }

    /// `DEVICE_SET_IRQS` on the INTx index, after the common checks (structure, range,
    /// data length, VM binding). `items` is the data.
    pub(super) fn intx_set_irqs(
        &mut self,
        d: DeviceId,
        owner: GuestId,
        address: PciAddress,
        line: Option<IntxLine>,
        (data, action, count): (u32, u32, u32),
        items: &[u8],
    ) -> Result<(), Errno> {
        let enabled = self.irq.intx.devices.contains_key(&d);
        // INTx has one interrupt: every call names it (`start` 0 was checked against the
        // count), except disabling with `count` 0 — as Linux.
        if count != 1 && !(data == IRQ_SET_DATA_NONE && action == IRQ_SET_ACTION_TRIGGER) {
            return Err(Errno::EINVAL);
        }
        match (data, action) {
            (IRQ_SET_DATA_NONE, IRQ_SET_ACTION_TRIGGER) if count == 0 => {
                if !enabled {
                    return Err(Errno::EINVAL);
                }
                self.intx_disable(d);
                log::info!(target: "vfio", "guest {}: device {address} INTx disabled", owner.0);
            }
            (IRQ_SET_DATA_EVENTFD, IRQ_SET_ACTION_TRIGGER) => {
                let raw = items.get(..4).ok_or(Errno::EINVAL)?;
                let v = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                let virt = match v {
                    IRQ_VECTOR_NONE => None,
                    IRQ_VECTOR_MIN..=255 => Some(v as u8),
                    _ => return Err(Errno::EINVAL),
                };
                if !enabled {
                    let line = line.ok_or(Errno::EINVAL)?;
                    self.intx_enable(d, owner, address, line)?;
                }
                if let Some(ix) = self.irq.intx.devices.get_mut(&d) {
                    ix.virt = virt;
                    log::info!(target: "vfio", "guest {}: device {address} INTx (GSI {}) bound to {virt:?}", owner.0, ix.gsi);
                }
            }
            (IRQ_SET_DATA_EVENTFD, _) => return Err(Errno::EINVAL),
            (_, action) => {
                if !enabled {
                    return Err(Errno::EINVAL);
                }
                let chosen = data == IRQ_SET_DATA_NONE
                    || (data == IRQ_SET_DATA_BOOL && items.first().is_some_and(|&b| b != 0));
                if !chosen {
                    return Ok(());
                }
                match action {
                    IRQ_SET_ACTION_TRIGGER => {
                        // A loopback: as if the line had fired (no automask: the
                        // device did not assert).
                        if let Some(ix) = self.irq.intx.devices.get(&d) {
                            match ix.virt {
                                Some(virt) => self.irq.queued.push((d, ix.owner, virt)),
                                None => self.irq.dropped += 1,
                            }
                        }
                    }
                    IRQ_SET_ACTION_MASK => self.intx_mask(d, true),
                    IRQ_SET_ACTION_UNMASK => self.intx_mask(d, false),
                    _ => return Err(Errno::EINVAL),
                }
            }
        }
        Ok(())
    }

    /// Enable INTx on `d`: the line routed (first user of the GSI: host vector, I/O APIC
    /// entry, remapping entry), then the device's Interrupt Disable cleared.
    fn intx_enable(
        &mut self,
        d: DeviceId,
        owner: GuestId,
        address: PciAddress,
        line: IntxLine,
    ) -> Result<(), Errno> {
        if self.irq_enabled(d) {
            // One interrupt type at a time.
            return Err(Errno::EINVAL);
        }
        if !self.intx_available(Some(line)) {
            return Err(Errno::EINVAL);
        }
        // A line is shared only among one guest's devices: another guest could otherwise
        // make it fire unclaimed (raise and acknowledge at once, or a DMA to the
        // interrupt window without remapping) until it is left masked.
        if let Some(l) = self.irq.intx.lines.get(&line.gsi) {
            let foreign = l.users.iter().any(|u| {
                self.irq
                    .intx
                    .devices
                    .get(u)
                    .is_some_and(|ix| ix.owner != owner)
            });
            if foreign {
                return Err(Errno::EBUSY);
            }
        }
        set_command(&*self.config, address, reg::COMMAND_INTX_DISABLE, 0);
        if !self.irq.intx.lines.contains_key(&line.gsi) {
            self.route_line(line)?;
        } else {
            self.rearm_line(line.gsi);
        }
        if let Some(l) = self.irq.intx.lines.get_mut(&line.gsi) {
            l.users.insert(d);
        }
        self.irq.intx.devices.insert(
            d,
            Intx {
                owner,
                address,
                gsi: line.gsi,
                virt: None,
                masked: false,
            },
        );
        set_command(&*self.config, address, 0, reg::COMMAND_INTX_DISABLE);
        Ok(())
    }

    /// Route `line`'s GSI to a fresh host vector and unmask it.
    fn route_line(&mut self, line: IntxLine) -> Result<(), Errno> {
        let lines = self.lines.as_deref().ok_or(Errno::EINVAL)?;
        let (ioapic, pin) = lines.locate(line.gsi).ok_or(Errno::EINVAL)?;
        let vector = self.irq.alloc(1).ok_or(Errno::ENOSPC)?;
        let apic_id = u32::from(self.irq.apic_id);
        let route = match self.iommu.map_ioapic_pin(
            ioapic,
            pin,
            vector,
            apic_id,
            line.level_triggered,
            line.active_low,
        ) {
            Ok(r) => r,
            Err(e) => {
                self.irq.free(vector, 1);
                log::warn!(target: "vfio", "GSI {}: I/O APIC {ioapic} pin {pin} not routed: {e}", line.gsi);
                return Err(match e {
                    IommuError::NoMemory => Errno::ENOSPC,
                    e => iommu_errno(e),
                });
            }
        };
        let lines = self.lines.as_deref().ok_or(Errno::EINVAL)?;
        if let Err(e) = lines.route(line.gsi, vector, route.rte) {
            log::error!(target: "vfio", "GSI {}: I/O APIC entry not written: {e}", line.gsi);
            if let Err(e) = self.iommu.unmap_ioapic_pin(&route) {
                log::error!(target: "vfio", "GSI {}: remapping entry not released: {e}", line.gsi);
            }
            self.irq.free(vector, 1);
            return Err(Errno::ENODEV);
        }
        lines.set_masked(line.gsi, false);
        let how = match (route.unit, route.index) {
            (Some(unit), Some(index)) => {
                format!(
                    "through interrupt remapping (unit {} entry {index})",
                    unit.0
                )
            }
            _ => String::from("compatibility format"),
        };
        log::info!(target: "vfio", "GSI {} (I/O APIC {ioapic} pin {pin}) routed to host vector {vector:#x}, level-triggered, {how}: redirection entry {:#018x}", line.gsi, route.rte);
        self.irq.intx.vectors.insert(vector, line.gsi);
        self.irq.intx.lines.insert(
            line.gsi,
            Line {
                vector,
                route,
                users: BTreeSet::new(),
                unclaimed: 0,
                stuck: false,
            },
        );
        Ok(())
    }

    /// Set or clear `d`'s Interrupt Disable (the guest's mask / unmask). An unmask also
    /// re-arms its line if it was left masked after unclaimed interrupts.
    fn intx_mask(&mut self, d: DeviceId, mask: bool) {
        let Some(ix) = self.irq.intx.devices.get_mut(&d) else {
            return;
        };
        ix.masked = mask;
        let (set, clear) = if mask {
            (reg::COMMAND_INTX_DISABLE, 0)
        } else {
            (0, reg::COMMAND_INTX_DISABLE)
        };
        let gsi = ix.gsi;
        set_command(&*self.config, ix.address, set, clear);
        if !mask {
            self.rearm_line(gsi);
        }
    }

    /// Unmask a line left masked after [`UNCLAIMED_LIMIT`] unclaimed interrupts (its
    /// guest acts on it again: try once more).
    fn rearm_line(&mut self, gsi: u32) {
        let Some(line) = self.irq.intx.lines.get_mut(&gsi) else {
            return;
        };
        line.unclaimed = 0;
        if !line.stuck {
            return;
        }
        line.stuck = false;
        log::warn!(target: "vfio", "GSI {gsi}: re-armed after being left masked");
        if let Some(lines) = self.lines.as_deref() {
            lines.set_masked(gsi, false);
        }
    }

    /// Disable INTx on `d` (if enabled): Interrupt Disable set, the line released when
    /// it was the last user, queued injections dropped.
    pub(super) fn intx_disable(&mut self, d: DeviceId) {
        let Some(ix) = self.irq.intx.devices.remove(&d) else {
            return;
        };
        set_command(&*self.config, ix.address, reg::COMMAND_INTX_DISABLE, 0);
        self.irq.queued.retain(|&(dev, _, _)| dev != d);
        let last = self.irq.intx.lines.get_mut(&ix.gsi).is_some_and(|l| {
            l.users.remove(&d);
            l.users.is_empty()
        });
        if !last {
            return;
        }
        let Some(line) = self.irq.intx.lines.remove(&ix.gsi) else {
            return;
        };
        if let Some(lines) = self.lines.as_deref() {
            lines.release(ix.gsi, line.vector);
        }
        if let Err(e) = self.iommu.unmap_ioapic_pin(&line.route) {
            log::error!(target: "vfio", "GSI {}: remapping entry not released: {e}", ix.gsi);
        }
        self.irq.intx.vectors.remove(&line.vector);
        self.irq.free(line.vector, 1);
        log::debug!(target: "vfio", "GSI {} released (host vector {:#x})", ix.gsi, line.vector);
    }

    /// The line of host vector `vector` fired (its pin is masked): find the devices
    /// that assert, mask each at the device and queue its guest's vector, unmask the pin.
    pub(super) fn service_line(&mut self, vector: u8) -> bool {
        let Some(&gsi) = self.irq.intx.vectors.get(&vector) else {
            return false;
        };
        let Some(line) = self.irq.intx.lines.get(&gsi) else {
            return false;
        };
        let users: Vec<DeviceId> = line.users.iter().copied().collect();
        let mut claimed = 0u32;
        for d in users {
            let Some(ix) = self.irq.intx.devices.get_mut(&d) else {
                continue;
            };
            if ix.masked {
                continue;
            }
            let status = self.config.read16(ix.address, reg::STATUS);
            if status == 0xFFFF || status & STATUS_INTERRUPT == 0 {
                continue;
            }
            set_command(&*self.config, ix.address, reg::COMMAND_INTX_DISABLE, 0);
            // Read back: the config write must have reached the device (it stops
            // driving the pin) before the pin is unmasked, or it fires once more.
            let _ = self.config.read16(ix.address, reg::COMMAND);
            ix.masked = true;
            claimed += 1;
            match ix.virt {
                Some(virt) => self.irq.queued.push((d, ix.owner, virt)),
                None => self.irq.dropped += 1,
            }
        }
        let Some(line) = self.irq.intx.lines.get_mut(&gsi) else {
            return true;
        };
        if claimed == 0 {
            self.irq.intx.unclaimed += 1;
            line.unclaimed += 1;
            if line.unclaimed >= UNCLAIMED_LIMIT {
                if !line.stuck {
                    line.stuck = true;
                    log::error!(target: "vfio", "GSI {gsi}: {UNCLAIMED_LIMIT} interrupts in a row no device claimed: the line stays masked");
                }
                return true;
            }
        } else {
            line.unclaimed = 0;
        }
        if let Some(lines) = self.lines.as_deref() {
            lines.set_masked(gsi, false);
        }
        true
    }

    /// Whether an INTx injection for `guest` from `d` may be queued (invariants).
    pub(super) fn intx_owner(&self, d: DeviceId) -> Option<GuestId> {
        self.irq.intx.devices.get(&d).map(|ix| ix.owner)
    }

    /// Could an INTx interrupt still come (a bound, enabled device)?
    pub(super) fn intx_armed(&self) -> bool {
        self.irq.intx.devices.values().any(|ix| ix.virt.is_some())
    }

    /// INTx state of every open device, for [`Vfio::check_invariants`].
    pub(super) fn check_intx_invariants(&self) -> Result<(), String> {
        for (&d, ix) in &self.irq.intx.devices {
            let device = self
                .devices
                .get(&d)
                .ok_or(format!("INTx state for closed {d:?}"))?;
            if device.owner != ix.owner {
                return Err(format!("{d:?}: INTx owner disagrees"));
            }
            if self.irq.msi.contains_key(&d) {
                return Err(format!("{d:?}: INTx and MSI both enabled"));
            }
            if !self
                .irq
                .intx
                .lines
                .get(&ix.gsi)
                .is_some_and(|l| l.users.contains(&d))
            {
                return Err(format!("{d:?}: not a user of its GSI {}", ix.gsi));
            }
        }
        for (&gsi, line) in &self.irq.intx.lines {
            if line.users.is_empty() {
                return Err(format!("GSI {gsi} routed without users"));
            }
            if self.irq.intx.vectors.get(&line.vector) != Some(&gsi) {
                return Err(format!(
                    "GSI {gsi}: vector {:#x} not mapped back",
                    line.vector
                ));
            }
            for d in &line.users {
                if self.irq.intx.devices.get(d).map(|ix| ix.gsi) != Some(gsi) {
                    return Err(format!("GSI {gsi}: user {d:?} not enabled on it"));
                }
            }
        }
        if self.irq.intx.vectors.len() != self.irq.intx.lines.len() {
            return Err("INTx vector map disagrees with the lines".into());
        }
        Ok(())
    }
}
