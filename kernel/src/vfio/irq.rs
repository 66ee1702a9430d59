//! Device interrupts: `DEVICE_GET_IRQ_INFO`, `DEVICE_SET_IRQS` (MSI and MSI-X here, the
//! MSI-X table's programming in `msix`, INTx in `intx`), the host vector pool and the
//! route table (host vector → device, subindex → guest, virtual vector).
//!
//! MSI and MSI-X share one state machine ([`Msi`], its [`MsiKind`] saying which): the
//! same host-vector blocks, remapping entries, routes, masks and pending bits; only the
//! hardware side differs. MSI-X's first binding (at most [`MSIX_MAX_VECTORS`]) gets a
//! block like MSI's and `msix` writes entry `i` with the block's message, data + `i`;
//! masking sets the entry's mask bit; disabling masks and zeroes the whole table. One
//! of INTx, MSI, MSI-X at a time, as Linux (`EINVAL`).
//!
//! # MSI, end to end
//!
//! - Enabling MSI (the first `DATA_EVENTFD | ACTION_TRIGGER`) takes an aligned block of
//!   host vectors from [`HOST_VECTOR_FIRST`]`..=`[`HOST_VECTOR_LAST`] (MSI's Multiple
//!   Message Enable makes the device put the subindex in the low data bits, so the block
//!   is a power of two, aligned to its size) and programs the capability, MME and MSI
//!   enable; INTx disabled (COMMAND bit 10: one type at a time). The message depends on
//!   the IOMMU (see *Interrupt remapping* below): with remapping, the address/data
//!   [`Iommu::map_msi`] returns for the block; without, compatibility format: address
//!   `0xFEE00000 | apic_id << 12` (physical destination, the host's local APIC), data =
//!   the block's first vector (fixed delivery, edge).
//! - The host's handler for those vectors only records them (`arch::lapic`); the kernel
//!   hands them to [`Vfio::take_interrupts`], which maps each to its route and returns
//!   `(guest, virtual vector)` pairs to inject. Loopback triggers and interrupts held
//!   by a mask join the same queue.
//! - Masking is the hypervisor's: a masked vector's interrupt is held (pending) and
//!   injected once on unmask. When the capability has per-vector mask bits they are set
//!   too (the device then holds the message itself).
//! - Disabling (count 0), closing the device, unbinding its group from the VM, or the
//!   guest's end: MSI off in the capability, address/data cleared, the remapping entries
//!   cleared and invalidated ([`Iommu::unmap_msi`]), host vectors freed, routes and
//!   queued injections dropped.
//!
//! # Interrupt remapping
//!
//! Where the IOMMU offers it ([`Iommu::interrupt_remapping`]: VT-d with ECAP.IR on every
//! unit, enabled at boot with compatibility format blocked; AMD-Vi when the IVRS names
//! the I/O APIC, each attached device with its own interrupt table), the device's MSI
//! names entries the hypervisor wrote: the vector and the destination come from the
//! entry, and the entry admits only the device's own requester id (VT-d: source-id
//! validation; AMD-Vi: the table is the device's). A device (or a guest driving it) can then raise only the host vectors it was
//! given — not another device's, not the hypervisor's — and cannot aim at another CPU.
//! (QEMU 7.2's intel-iommu model still passes compatibility-format requests with
//! remapping on, whatever GSTS.CFIS says; real hardware and the specification block them.)
//!
//! [`Iommu::map_msi`]: sluice_iommu::Iommu::map_msi
//! [`Iommu::unmap_msi`]: sluice_iommu::Iommu::unmap_msi
//! [`Iommu::interrupt_remapping`]: sluice_iommu::Iommu::interrupt_remapping
//!
//! Without it (`intremap=off`, or units that lack it), the device's MSI is a
//! compatibility-format write to the interrupt window that the IOMMU passes as is; the
//! hypervisor programs it, but a device that can DMA (or whose MSI-X table the guest
//! reaches through a mapped BAR) could also write the window with any vector — one the
//! hypervisor treats as fatal included, which stops it. Linux refuses such assignments
//! unless `allow_unsafe_interrupts` is set; here it is allowed, for teaching and for
//! QEMU configurations without remapping, and the log and the ABI docs say so.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    IRQ_INDEX_INTX, IRQ_INDEX_MSI, IRQ_INDEX_MSIX, IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD,
    IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE, IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER,
    IRQ_SET_ACTION_TYPE_MASK, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD,
    IRQ_SET_DATA_NONE, IRQ_SET_DATA_TYPE_MASK, IRQ_VECTOR_MIN, IRQ_VECTOR_NONE, IrqInfo, IrqSet,
    NUM_IRQS, min_size,
};
use sluice_iommu::{DeviceDma, IommuError, RemappedMsi};
use sluice_pci::{ConfigSpace, PciAddress, cap_id, reg};

use super::args::read_args;
use super::errors::iommu_errno;
use super::handles::DeviceId;
use super::intx::IntxState;
use super::msix::{self, MSIX_MAX_VECTORS, MsixCap, msix_capability};
use super::state::{Vfio, set_command};
use super::{GuestId, GuestRam, IntxLine};

/// The first host vector given to device MSIs (`arch::lapic` handles them).
pub const HOST_VECTOR_FIRST: u8 = crate::arch::lapic::DEVICE_VECTOR_FIRST;
/// The last.
pub const HOST_VECTOR_LAST: u8 = crate::arch::lapic::DEVICE_VECTOR_LAST;
/// The MSI address window's base (physical destination mode, no redirection hint).
pub const MSI_ADDRESS_BASE: u32 = 0xFEE0_0000;

/// MSI control register bits.
const MSI_ENABLE: u16 = 1 << 0;
const MSI_MME_SHIFT: u16 = 4;
const MSI_MME_MASK: u16 = 0x7 << 4;
const MSI_64BIT: u16 = 1 << 7;
const MSI_PVM: u16 = 1 << 8;

/// An MSI capability as found in config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MsiCap {
    offset: u16,
    is_64bit: bool,
    per_vector_masking: bool,
    /// Vectors the function can request (1..=32).
    vectors: u32,
}

impl MsiCap {
    fn data_offset(&self) -> u16 {
        self.offset + if self.is_64bit { 12 } else { 8 }
    }

    fn mask_offset(&self) -> u16 {
        self.data_offset() + 4
    }
}

/// Walk the classic capability list of `address` for capability `id` (bounded: a loop
/// in the list ends the walk). Returns its offset.
pub(super) fn find_capability(
    config: &dyn ConfigSpace,
    address: PciAddress,
    id: u8,
) -> Option<u16> {
    if config.read16(address, reg::STATUS) & reg::STATUS_CAPABILITY_LIST == 0 {
        return None;
    }
    let mut at = u16::from(config.read8(address, reg::CAPABILITY_POINTER) & !3);
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        if config.read8(address, at) == id {
            return Some(at);
        }
        at = u16::from(config.read8(address, at + 1) & !3);
    }
    None
}

/// The MSI capability of `address`, read live.
pub(super) fn msi_capability(config: &dyn ConfigSpace, address: PciAddress) -> Option<MsiCap> {
    let offset = find_capability(config, address, cap_id::MSI)?;
    let control = config.read16(address, offset + 2);
    Some(MsiCap {
        offset,
        is_64bit: control & MSI_64BIT != 0,
        per_vector_masking: control & MSI_PVM != 0,
        vectors: 1 << ((control >> 1) & 0x7).min(5),
    })
}

/// Write the 16-bit MSI control register (the dword's low half is the read-only header).
fn write_msi_control(config: &dyn ConfigSpace, address: PciAddress, cap: &MsiCap, control: u16) {
    let header = config.read32(address, cap.offset) & 0xFFFF;
    config.write32(address, cap.offset, header | u32::from(control) << 16);
}

/// One MSI subindex.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Vector {
    /// The guest's vector, when bound.
    pub virt: Option<u8>,
    pub masked: bool,
    /// Fired while masked: injected on unmask.
    pub pending: bool,
}

/// Which message-signalled type a device has enabled (one at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MsiKind {
    /// MSI: the capability holds the message; the device adds the subindex to the data.
    Msi(MsiCap),
    /// MSI-X: the table holds one message per subindex (see `msix`).
    Msix(MsixCap),
}

impl MsiKind {
    fn is_msix(&self) -> bool {
        matches!(self, Self::Msix(_))
    }

    fn name(&self) -> &'static str {
        if self.is_msix() { "MSI-X" } else { "MSI" }
    }
}

/// A device with MSI or MSI-X enabled.
#[derive(Debug)]
pub(super) struct Msi {
    pub owner: GuestId,
    pub address: PciAddress,
    pub kind: MsiKind,
    /// First host vector of the block.
    pub base: u8,
    /// Host vectors reserved (a power of two ≥ `vectors.len()`).
    pub block: u32,
    /// The subindexes enabled (`start + count` of the enabling call).
    pub vectors: Vec<Vector>,
    /// The device's DMA route (the requester ids its interrupts carry).
    pub dma: DeviceDma,
    /// The interrupt-remapping entries of the block, when the IOMMU remaps.
    pub remap: Option<RemappedMsi>,
}

/// The interrupt side of [`Vfio`].
#[derive(Debug, Default)]
pub(super) struct IrqState {
    /// Host vectors in use (bit n: vector n).
    pub(super) used: [u64; 4],
    /// Host vector → (device, subindex).
    routes: BTreeMap<u8, (DeviceId, u32)>,
    /// Devices with MSI or MSI-X enabled.
    pub(super) msi: BTreeMap<DeviceId, Msi>,
    /// Injections waiting for the next [`Vfio::take_interrupts`]: loopbacks and
    /// interrupts released by an unmask.
    pub(super) queued: Vec<(DeviceId, GuestId, u8)>,
    /// The host's local APIC id (the MSI destination).
    pub(super) apic_id: u8,
    /// Interrupts dropped: on an unbound subindex, or on a host vector without route.
    pub(super) dropped: u64,
    /// Interrupts injected (handed out by take_interrupts).
    injected: u64,
    /// Devices with INTx enabled and the I/O APIC lines they use (see `intx`).
    pub(super) intx: IntxState,
}

fn is_used(used: &[u64; 4], v: u32) -> bool {
    used[(v / 64) as usize] & 1 << (v % 64) != 0
}

fn set_used(used: &mut [u64; 4], v: u32, on: bool) {
    let word = &mut used[(v / 64) as usize];
    if on {
        *word |= 1 << (v % 64);
    } else {
        *word &= !(1 << (v % 64));
    }
}

impl IrqState {
    /// An aligned block of `size` (a power of two ≤ 32) free host vectors.
    pub(super) fn alloc(&mut self, size: u32) -> Option<u8> {
        let first = u32::from(HOST_VECTOR_FIRST).next_multiple_of(size);
        let mut base = first;
        while base + size - 1 <= u32::from(HOST_VECTOR_LAST) {
            if (base..base + size).all(|v| !is_used(&self.used, v)) {
                for v in base..base + size {
                    set_used(&mut self.used, v, true);
                }
                return u8::try_from(base).ok();
            }
            base += size;
        }
        None
    }

    pub(super) fn free(&mut self, base: u8, size: u32) {
        for v in u32::from(base)..u32::from(base) + size {
            set_used(&mut self.used, v, false);
        }
    }

    /// Queue the interrupt of subindex `sub` of `d`, or hold it (masked), or drop it
    /// (unbound).
    fn fire(&mut self, d: DeviceId, sub: u32) {
        let Some(msi) = self.msi.get_mut(&d) else {
            self.dropped += 1;
            return;
        };
        let owner = msi.owner;
        let Some(vector) = msi.vectors.get_mut(sub as usize) else {
            self.dropped += 1;
            return;
        };
        match vector.virt {
            None => self.dropped += 1,
            Some(_) if vector.masked => vector.pending = true,
            Some(virt) => self.queued.push((d, owner, virt)),
        }
    }
}

/// The item size of a `DATA_*` type.
const fn data_size(data: u32) -> usize {
    match data {
        IRQ_SET_DATA_BOOL => 1,
        IRQ_SET_DATA_EVENTFD => 4,
        _ => 0,
    }
}

impl Vfio {
    /// Send device MSIs to the host's local APIC `apic_id` (default 0).
    pub fn set_interrupt_target(&mut self, apic_id: u8) {
        self.irq.apic_id = apic_id;
    }

    /// The device interrupts to inject now: `host` is the set of host vectors taken
    /// since the last call (bit n of word n / 64: vector n); each is routed to its
    /// guest's virtual vector (held if masked, dropped if unbound or unrouted), then the
    /// queued loopbacks and unmasked interrupts follow. Returns `(guest, vector)` pairs
    /// in that order.
    pub fn take_interrupts(&mut self, host: [u64; 4]) -> Vec<(GuestId, u8)> {
        for (w, &word) in host.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let v = w as u32 * 64 + bits.trailing_zeros();
                bits &= bits - 1;
                let Ok(v) = u8::try_from(v) else {
                    continue;
                };
                match self.irq.routes.get(&v).copied() {
                    Some((d, sub)) => self.irq.fire(d, sub),
                    None if self.service_line(v) => {}
                    None => {
                        self.irq.dropped += 1;
                        log::debug!(target: "vfio", "host vector {v:#x}: no route, dropped");
                    }
                }
            }
        }
        let out: Vec<(GuestId, u8)> = self
            .irq
            .queued
            .drain(..)
            .map(|(_, guest, virt)| (guest, virt))
            .collect();
        self.irq.injected += out.len() as u64;
        out
    }

    /// Could a device interrupt still come: some MSI vector is bound, or an injection
    /// is queued?
    pub fn interrupts_armed(&self) -> bool {
        !self.irq.queued.is_empty()
            || self.intx_armed()
            || self
                .irq
                .msi
                .values()
                .any(|m| m.vectors.iter().any(|v| v.virt.is_some()))
    }

    /// `(injected, dropped)` device interrupts since boot.
    pub fn interrupt_counts(&self) -> (u64, u64) {
        (self.irq.injected, self.irq.dropped)
    }

    /// How many host vectors are allocated and how many routes exist (tests, logs).
    pub fn interrupt_routes(&self) -> (u32, usize) {
        let used = self.irq.used.iter().map(|w| w.count_ones()).sum();
        (used, self.irq.routes.len())
    }

    /// The route of host vector `host`: `(guest, subindex, virtual vector if bound)`.
    pub fn interrupt_route(&self, host: u8) -> Option<(GuestId, u32, Option<u8>)> {
        let &(d, sub) = self.irq.routes.get(&host)?;
        let msi = self.irq.msi.get(&d)?;
        let v = msi.vectors.get(sub as usize)?;
        Some((msi.owner, sub, v.virt))
    }

    /// The open device's DMA route (its requester ids and unit).
    fn irq_device_dma(&self, d: DeviceId) -> Result<DeviceDma, Errno> {
        let device = self.devices.get(&d).ok_or(Errno::EBADF)?;
        self.groups
            .get(device.group.0)
            .and_then(|g| g.desc.devices.get(device.member))
            .map(|f| f.dma.clone())
            .ok_or(Errno::EBADF)
    }

    /// Whether device MSIs go through interrupt remapping (see the module docs).
    pub fn interrupt_remapping(&self) -> bool {
        self.iommu.interrupt_remapping()
    }

    /// The open device's owner, function and INTx line (when INTx can be offered).
    fn irq_device(&self, d: DeviceId) -> Result<(GuestId, PciAddress, Option<IntxLine>), Errno> {
        let device = self.devices.get(&d).ok_or(Errno::EBADF)?;
        let function = self
            .groups
            .get(device.group.0)
            .and_then(|g| g.desc.devices.get(device.member))
            .ok_or(Errno::EBADF)?;
        // PCI 2.3 INTx masking is how the line is shared and automasked: the hypervisor
        // keeps Interrupt Disable set whenever INTx is not enabled (open, MSI on, INTx
        // off), so a function where it reads back clear does not implement it (Linux:
        // `pci_intx_mask_supported`) and is not offered INTx.
        let masking = self.irq.intx.devices.contains_key(&d)
            || self.config.read16(function.address, reg::COMMAND) & reg::COMMAND_INTX_DISABLE != 0;
        let line = function
            .intx_line
            .filter(|_| function.interrupt_pin != 0 && masking)
            .filter(|&l| self.intx_available(Some(l)));
        Ok((device.owner, function.address, line))
    }

    /// How many interrupts index `index` of the function has (INTx: 1 when its pin is
    /// set and the host can route the line; MSI-X: the table size when the table lies in
    /// an assigned memory BAR, where the hypervisor can program it).
    fn irq_count(&self, d: DeviceId, intx: Option<IntxLine>, index: u32) -> u32 {
        let Ok(function) = self.function(d) else {
            return 0;
        };
        match index {
            IRQ_INDEX_INTX => u32::from(intx.is_some()),
            IRQ_INDEX_MSI => {
                msi_capability(&*self.config, function.address).map_or(0, |c| c.vectors)
            }
            // Offered only where the platform lets the hypervisor write the table.
            IRQ_INDEX_MSIX => msix_capability(&*self.config, function)
                .filter(|c| {
                    self.device_hw
                        .as_ref()
                        .is_some_and(|hw| hw.mmio_window_allowed(c.table, u64::from(c.size) * 16))
                })
                .map_or(0, |c| c.size),
            _ => 0,
        }
    }

    /// `DEVICE_GET_IRQ_INFO`.
    pub(super) fn device_get_irq_info(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        handle: u64,
        gpa: u64,
    ) -> Result<u64, Errno> {
        let d = self.device_handle(guest, handle)?;
        let (_, _, intx) = self.irq_device(d)?;
        let (argsz, bytes) = read_args::<{ IrqInfo::SIZE }>(&*mem, gpa, min_size::IRQ_INFO)?;
        let input = IrqInfo::from_bytes(&bytes);
        if input.flags != 0 || input.index >= NUM_IRQS {
            return Err(Errno::EINVAL);
        }
        let count = self.irq_count(d, intx, input.index);
        let flags = match input.index {
            IRQ_INDEX_INTX if count > 0 => {
                IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED
            }
            IRQ_INDEX_MSI | IRQ_INDEX_MSIX if count > 0 => {
                IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_NORESIZE
            }
            _ => 0,
        };
        let info = IrqInfo {
            argsz,
            flags,
            index: input.index,
            count,
        };
        mem.write(gpa, &info.to_bytes())?;
        Ok(0)
    }

    /// `DEVICE_SET_IRQS`: see the ABI's *Interrupts*.
    pub(super) fn device_set_irqs(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        handle: u64,
        gpa: u64,
    ) -> Result<u64, Errno> {
        let d = self.device_handle(guest, handle)?;
        let (owner, address, intx) = self.irq_device(d)?;
        let (argsz, bytes) = read_args::<{ IrqSet::SIZE }>(&*mem, gpa, min_size::IRQ_SET)?;
        let set = IrqSet::from_bytes(&bytes);
        let data = set.flags & IRQ_SET_DATA_TYPE_MASK;
        let action = set.flags & IRQ_SET_ACTION_TYPE_MASK;
        if set.flags & !(IRQ_SET_DATA_TYPE_MASK | IRQ_SET_ACTION_TYPE_MASK) != 0
            || data.count_ones() != 1
            || action.count_ones() != 1
            || set.index >= NUM_IRQS
        {
            return Err(Errno::EINVAL);
        }
        let max = self.irq_count(d, intx, set.index);
        let end = set.start.checked_add(set.count).ok_or(Errno::EINVAL)?;
        if set.start >= max || end > max {
            return Err(Errno::EINVAL);
        }
        let len = set.count as usize * data_size(data);
        if (argsz as usize - IrqSet::SIZE) < len {
            return Err(Errno::EINVAL);
        }
        let binds =
            action == IRQ_SET_ACTION_TRIGGER && !(data == IRQ_SET_DATA_NONE && set.count == 0);
        if binds {
            let group = self.devices.get(&d).ok_or(Errno::EBADF)?.group;
            if !self.bound(group) {
                return Err(Errno::EPERM);
            }
        }
        let mut items = vec![0u8; len];
        // `argsz` covers the data and lies in RAM (read_args checked it).
        mem.read(gpa + IrqSet::SIZE as u64, &mut items)?;
        if set.index == IRQ_INDEX_INTX {
            self.intx_set_irqs(d, owner, address, intx, (data, action, set.count), &items)?;
            return Ok(0);
        }
        // MSI or MSI-X (`max` > 0 above: INTx, ERR and REQ went elsewhere or failed).
        let msix = set.index == IRQ_INDEX_MSIX;
        let name = if msix { "MSI-X" } else { "MSI" };
        let enabled = self
            .irq
            .msi
            .get(&d)
            .filter(|m| m.kind.is_msix() == msix)
            .map(|m| m.vectors.len() as u32);
        match (data, action) {
            (IRQ_SET_DATA_NONE, IRQ_SET_ACTION_TRIGGER) if set.count == 0 => {
                if enabled.is_none() {
                    return Err(Errno::EINVAL);
                }
                self.msi_disable(d);
                log::info!(target: "vfio", "guest {}: device {address} {name} disabled", owner.0);
            }
            (IRQ_SET_DATA_EVENTFD, IRQ_SET_ACTION_TRIGGER) => {
                let mut vectors = Vec::with_capacity(set.count as usize);
                for chunk in items.chunks_exact(4) {
                    let v = i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                    vectors.push(match v {
                        IRQ_VECTOR_NONE => None,
                        IRQ_VECTOR_MIN..=255 => Some(v as u8),
                        _ => return Err(Errno::EINVAL),
                    });
                }
                match enabled {
                    Some(n) if end > n => return Err(Errno::EINVAL),
                    Some(_) => {}
                    None if msix => self.msix_enable(d, owner, address, end)?,
                    None => self.msi_enable(d, owner, address, end)?,
                }
                let msi = self.irq.msi.get_mut(&d).ok_or(Errno::EINVAL)?;
                for (i, v) in vectors.into_iter().enumerate() {
                    if let Some(slot) = msi.vectors.get_mut(set.start as usize + i) {
                        *slot = Vector { virt: v, ..*slot };
                        if v.is_none() {
                            slot.pending = false;
                        }
                    }
                }
                log::info!(target: "vfio", "guest {}: device {address} {name} {}..{end} bound to {:?}", owner.0, set.start, msi.vectors.iter().map(|v| v.virt).collect::<Vec<_>>());
            }
            (IRQ_SET_DATA_EVENTFD, _) => return Err(Errno::EINVAL),
            (_, action) => {
                let n = enabled.ok_or(Errno::EINVAL)?;
                if end > n {
                    return Err(Errno::EINVAL);
                }
                let chosen: Vec<u32> = (set.start..end)
                    .filter(|&i| {
                        data == IRQ_SET_DATA_NONE
                            || items.get((i - set.start) as usize).is_some_and(|&b| b != 0)
                    })
                    .collect();
                match action {
                    IRQ_SET_ACTION_TRIGGER => {
                        for sub in chosen {
                            self.irq.fire(d, sub);
                        }
                    }
                    IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK => {
                        self.msi_mask(d, &chosen, action == IRQ_SET_ACTION_MASK);
                    }
                    _ => return Err(Errno::EINVAL),
                }
            }
        }
        Ok(0)
    }

    /// Whether `d` has an interrupt type enabled (INTx, MSI or MSI-X): VFIO enables one
    /// at a time.
    pub(super) fn irq_enabled(&self, d: DeviceId) -> bool {
        self.irq.intx.devices.contains_key(&d) || self.irq.msi.contains_key(&d)
    }

    /// Enable MSI on `d` with `count` subindexes (none bound yet): host vectors, routes,
    /// remapping entries when the IOMMU remaps, the capability programmed. `EINVAL`
    /// without a capability, `ENOSPC` without host vectors or remapping entries, the
    /// IOMMU's error (see `iommu_errno`) when it cannot write them.
    fn msi_enable(
        &mut self,
        d: DeviceId,
        owner: GuestId,
        address: PciAddress,
        count: u32,
    ) -> Result<(), Errno> {
        if self.irq_enabled(d) {
            // One interrupt type at a time.
            return Err(Errno::EINVAL);
        }
        let cap = msi_capability(&*self.config, address).ok_or(Errno::EINVAL)?;
        let block = count.next_power_of_two();
        if count == 0 || block > cap.vectors {
            return Err(Errno::EINVAL);
        }
        let dma = self.irq_device_dma(d)?;
        let (base, remap) = self.alloc_block(address, &dma, block)?;
        for sub in 0..count {
            self.irq.routes.insert(base + sub as u8, (d, sub));
        }
        let (message, data) = self.block_message(base, remap.as_ref());
        let (address_lo, address_hi) = (message as u32, (message >> 32) as u32);
        let config = &*self.config;
        set_command(config, address, reg::COMMAND_INTX_DISABLE, 0);
        config.write32(address, cap.offset + 4, address_lo);
        if cap.is_64bit {
            config.write32(address, cap.offset + 8, address_hi);
        }
        config.write32(address, cap.data_offset(), data);
        if cap.per_vector_masking {
            config.write32(address, cap.mask_offset(), 0);
        }
        let control = config.read16(address, cap.offset + 2);
        let mme = block.trailing_zeros() as u16;
        let control = (control & !(MSI_MME_MASK | MSI_ENABLE)) | mme << MSI_MME_SHIFT | MSI_ENABLE;
        write_msi_control(config, address, &cap, control);
        self.irq.msi.insert(
            d,
            Msi {
                owner,
                address,
                kind: MsiKind::Msi(cap),
                base,
                block,
                vectors: vec![Vector::default(); count as usize],
                dma,
                remap,
            },
        );
        let last = u32::from(base) + block - 1;
        match remap {
            Some(r) => {
                log::info!(target: "vfio", "guest {}: device {address} MSI enabled: {count} vectors on host vectors {base:#x}..{last:#x} through interrupt remapping (unit {} entries {}..{}, address {address_lo:#x} data {data:#x})", owner.0, r.unit.0, r.first, r.first + r.count - 1)
            }
            None => {
                log::info!(target: "vfio", "guest {}: device {address} MSI enabled: {count} vectors on host vectors {base:#x}..{last:#x} (address {address_lo:#x}, compatibility format: no interrupt remapping)", owner.0)
            }
        }
        Ok(())
    }

    /// An aligned block of `block` host vectors and, when the IOMMU remaps interrupts,
    /// its remapping entries for `dma` (nothing is kept on failure): `ENOSPC` without
    /// host vectors or remapping entries, the IOMMU's error (see `iommu_errno`) when it
    /// cannot write them.
    fn alloc_block(
        &mut self,
        address: PciAddress,
        dma: &DeviceDma,
        block: u32,
    ) -> Result<(u8, Option<RemappedMsi>), Errno> {
        let base = self.irq.alloc(block).ok_or(Errno::ENOSPC)?;
        if !self.iommu.interrupt_remapping() {
            return Ok((base, None));
        }
        match self
            .iommu
            .map_msi(dma, base, block, u32::from(self.irq.apic_id))
        {
            Ok(remap) => Ok((base, Some(remap))),
            Err(e) => {
                self.irq.free(base, block);
                log::warn!(target: "vfio", "device {address}: no interrupt remapping entries: {e}");
                Err(match e {
                    IommuError::NoMemory => Errno::ENOSPC,
                    e => iommu_errno(e),
                })
            }
        }
    }

    /// The message of subindex 0 of a block at `base`: `(address, data)`, remapped or
    /// in compatibility format (address `0xFEE00000 | apic_id << 12`, data the vector).
    /// Subindex `i` is the same address with data + `i` (MSI: the device adds it; MSI-X:
    /// the hypervisor writes it in entry `i`).
    fn block_message(&self, base: u8, remap: Option<&RemappedMsi>) -> (u64, u32) {
        match remap {
            Some(r) => (r.address, r.data),
            None => (
                u64::from(MSI_ADDRESS_BASE | u32::from(self.irq.apic_id) << 12),
                u32::from(base),
            ),
        }
    }

    /// After a reset of `d`: its MSI-X table lives in BAR memory, which the reset
    /// cleared (the saved config header brought back only the capability's Enable), so
    /// write every enabled entry again — same messages, same masks.
    pub(super) fn msix_after_reset(&mut self, d: DeviceId) {
        let Some(msi) = self.irq.msi.get(&d) else {
            return;
        };
        let MsiKind::Msix(cap) = msi.kind else {
            return;
        };
        let (message, data) = self.block_message(msi.base, msi.remap.as_ref());
        let messages: Vec<((u64, u32), bool)> = msi
            .vectors
            .iter()
            .zip(0u32..)
            .map(|(v, i)| ((message, data + i), v.masked))
            .collect();
        let address = msi.address;
        let config = &*self.config;
        let ok = self
            .device_hw
            .as_deref_mut()
            .is_some_and(|hw| msix::enable(config, hw, address, &cap, &messages));
        if !ok {
            log::error!(target: "vfio", "device {address}: MSI-X table not rewritten after the reset (platform refused it): its interrupts stay off");
        }
    }

    /// Enable MSI-X on `d` with `count` subindexes (none bound yet, all unmasked):
    /// host vectors (a block of the next power of two, as MSI, so one remapping block
    /// covers it), routes, remapping entries, the table programmed (see `msix`), INTx
    /// disabled. `EINVAL` with another type enabled, without a reachable table or
    /// platform MMIO, beyond [`MSIX_MAX_VECTORS`], or when the platform refuses a table
    /// access (everything undone); `ENOSPC` and the IOMMU's errors as [`Self::alloc_block`].
    fn msix_enable(
        &mut self,
        d: DeviceId,
        owner: GuestId,
        address: PciAddress,
        count: u32,
    ) -> Result<(), Errno> {
        if self.irq_enabled(d) {
            // One interrupt type at a time.
            return Err(Errno::EINVAL);
        }
        let function = self.function(d)?;
        let cap = msix_capability(&*self.config, function).ok_or(Errno::EINVAL)?;
        if count == 0 || count > MSIX_MAX_VECTORS || count > cap.size || self.device_hw.is_none() {
            return Err(Errno::EINVAL);
        }
        let block = count.next_power_of_two();
        let dma = self.irq_device_dma(d)?;
        let (base, remap) = self.alloc_block(address, &dma, block)?;
        let (message, data) = self.block_message(base, remap.as_ref());
        let messages: Vec<((u64, u32), bool)> =
            (0..count).map(|i| ((message, data + i), false)).collect();
        let config = &*self.config;
        set_command(config, address, reg::COMMAND_INTX_DISABLE, 0);
        let programmed = self
            .device_hw
            .as_deref_mut()
            .is_some_and(|hw| msix::enable(config, hw, address, &cap, &messages));
        if !programmed {
            log::warn!(target: "vfio", "device {address}: MSI-X table at {:#x} refused by the platform", cap.table);
            msix::disable(config, self.device_hw.as_deref_mut(), address, &cap);
            if let Some(remap) = &remap {
                if let Err(e) = self.iommu.unmap_msi(&dma, remap) {
                    log::error!(target: "vfio", "device {address}: interrupt remapping entries not released: {e}");
                }
            }
            self.irq.free(base, block);
            return Err(Errno::EINVAL);
        }
        for sub in 0..count {
            self.irq.routes.insert(base + sub as u8, (d, sub));
        }
        self.irq.msi.insert(
            d,
            Msi {
                owner,
                address,
                kind: MsiKind::Msix(cap),
                base,
                block,
                vectors: vec![Vector::default(); count as usize],
                dma,
                remap,
            },
        );
        let last = u32::from(base) + block - 1;
        let how = match remap {
            Some(r) => alloc::format!(
                "through interrupt remapping (unit {} entries {}..{})",
                r.unit.0,
                r.first,
                r.first + r.count - 1
            ),
            None => "compatibility format: no interrupt remapping".into(),
        };
        log::info!(target: "vfio", "guest {}: device {address} MSI-X enabled: {count} of {} table entries (table at {:#x}) on host vectors {base:#x}..{last:#x}, entry 0 address {message:#x} data {data:#x}, {how}", owner.0, cap.size, cap.table);
        Ok(())
    }

    /// Mask or unmask subindexes `subs` of `d`; an unmask injects what was held.
    fn msi_mask(&mut self, d: DeviceId, subs: &[u32], mask: bool) {
        let Some(msi) = self.irq.msi.get_mut(&d) else {
            return;
        };
        let owner = msi.owner;
        let mut release = Vec::new();
        for &sub in subs {
            if let Some(v) = msi.vectors.get_mut(sub as usize) {
                v.masked = mask;
                if !mask && v.pending {
                    v.pending = false;
                    if let Some(virt) = v.virt {
                        release.push(virt);
                    }
                }
            }
        }
        match msi.kind {
            MsiKind::Msi(cap) if cap.per_vector_masking => {
                let bits = msi
                    .vectors
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.masked)
                    .fold(0u32, |acc, (i, _)| acc | 1 << i);
                self.config.write32(msi.address, cap.mask_offset(), bits);
            }
            MsiKind::Msi(_) => {}
            MsiKind::Msix(cap) => {
                // The entry's own mask bit: the device holds the message (its PBA bit)
                // and sends it once unmasked.
                let entries: Vec<(u32, bool)> = subs
                    .iter()
                    .filter(|&&sub| (sub as usize) < msi.vectors.len())
                    .map(|&sub| (sub, mask))
                    .collect();
                let ok = self
                    .device_hw
                    .as_deref_mut()
                    .is_some_and(|hw| msix::mask(&*self.config, hw, msi.address, &cap, &entries));
                if !ok {
                    log::warn!(target: "vfio", "device {}: MSI-X mask bits refused by the platform (the hypervisor's mask holds)", msi.address);
                }
            }
        }
        self.irq
            .queued
            .extend(release.into_iter().map(|virt| (d, owner, virt)));
    }

    /// Disable every interrupt type of `d` (closing, unbinding, the guest's end).
    pub(super) fn irqs_disable(&mut self, d: DeviceId) {
        self.msi_disable(d);
        self.intx_disable(d);
    }

    /// Disable MSI or MSI-X on `d` (if enabled): capability off and cleared (MSI-X:
    /// every table entry masked and zeroed), remapping entries released, host vectors
    /// freed, routes and queued injections dropped. INTx stays disabled (COMMAND bit 10)
    /// until the guest enables it.
    pub(super) fn msi_disable(&mut self, d: DeviceId) {
        let Some(msi) = self.irq.msi.remove(&d) else {
            return;
        };
        let config = &*self.config;
        match msi.kind {
            MsiKind::Msi(cap) => {
                let control = config.read16(msi.address, cap.offset + 2);
                write_msi_control(
                    config,
                    msi.address,
                    &cap,
                    control & !(MSI_ENABLE | MSI_MME_MASK),
                );
                config.write32(msi.address, cap.offset + 4, 0);
                if cap.is_64bit {
                    config.write32(msi.address, cap.offset + 8, 0);
                }
                config.write32(msi.address, cap.data_offset(), 0);
            }
            MsiKind::Msix(cap) => {
                if !msix::disable(config, self.device_hw.as_deref_mut(), msi.address, &cap) {
                    log::warn!(target: "vfio", "device {}: MSI-X table at {:#x} refused by the platform while disabling (MSI-X Enable is off)", msi.address, cap.table);
                }
            }
        }
        // The device no longer sends the message: its entries can go (a failure is the
        // unit's; the driver keeps those entries out of use).
        if let Some(remap) = &msi.remap {
            if let Err(e) = self.iommu.unmap_msi(&msi.dma, remap) {
                log::error!(target: "vfio", "device {}: interrupt remapping entries not released: {e}", msi.address);
            }
        }
        self.irq.routes.retain(|_, &mut (dev, _)| dev != d);
        self.irq.free(msi.base, msi.block);
        self.irq.queued.retain(|&(dev, _, _)| dev != d);
        log::debug!(target: "vfio", "device {} {} off, host vectors {:#x}+{} freed", msi.address, msi.kind.name(), msi.base, msi.block);
    }

    /// MSI state of every open device, for [`Vfio::check_invariants`].
    pub(super) fn check_irq_invariants(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        let mut used = [0u64; 4];
        for (&d, msi) in &self.irq.msi {
            let device = self
                .devices
                .get(&d)
                .ok_or(format!("MSI state for closed {d:?}"))?;
            if device.owner != msi.owner {
                return Err(format!("{d:?}: MSI owner disagrees"));
            }
            let limit = match msi.kind {
                MsiKind::Msi(cap) => cap.vectors,
                MsiKind::Msix(cap) => cap.size.min(MSIX_MAX_VECTORS),
            };
            if msi.vectors.len() as u32 > limit
                || msi.block != (msi.vectors.len() as u32).next_power_of_two()
            {
                return Err(format!(
                    "{d:?}: {} {} vectors beyond the device's {limit} or in a block of {}",
                    msi.vectors.len(),
                    msi.kind.name(),
                    msi.block
                ));
            }
            if self.irq.intx.devices.contains_key(&d) {
                return Err(format!("{d:?}: {} and INTx both enabled", msi.kind.name()));
            }
            if msi.vectors.is_empty() || msi.vectors.len() as u32 > msi.block {
                return Err(format!(
                    "{d:?}: {} vectors in a block of {}",
                    msi.vectors.len(),
                    msi.block
                ));
            }
            if msi.remap.is_some() != self.iommu.interrupt_remapping()
                || msi.remap.is_some_and(|r| r.count != msi.block)
            {
                return Err(format!("{d:?}: remapping entries disagree with the block"));
            }
            for v in u32::from(msi.base)..u32::from(msi.base) + msi.block {
                if is_used(&used, v) {
                    return Err(format!("host vector {v:#x} given twice"));
                }
                set_used(&mut used, v, true);
            }
            for sub in 0..msi.vectors.len() as u32 {
                let host = u32::from(msi.base) + sub;
                let route = u8::try_from(host)
                    .ok()
                    .and_then(|h| self.irq.routes.get(&h));
                if route != Some(&(d, sub)) {
                    return Err(format!("{d:?}: subindex {sub} has no route at {host:#x}"));
                }
            }
        }
        for &v in self.irq.intx.vectors.keys() {
            if is_used(&used, u32::from(v)) || self.irq.routes.contains_key(&v) {
                return Err(format!("host vector {v:#x} given twice"));
            }
            set_used(&mut used, u32::from(v), true);
        }
        if used != self.irq.used {
            return Err("host vector pool disagrees with the MSI blocks and INTx lines".into());
        }
        for (&host, &(d, _)) in &self.irq.routes {
            if !self.irq.msi.contains_key(&d) {
                return Err(format!("route {host:#x} names {d:?} without MSI"));
            }
        }
        for &(d, guest, _) in &self.irq.queued {
            let owner = self.irq.msi.get(&d).map(|m| m.owner).or(self.intx_owner(d));
            if owner != Some(guest) {
                return Err(format!("queued interrupt of {d:?} outlived its MSI/INTx"));
            }
        }
        self.check_intx_invariants()
    }
}
