//! MSI-X: the capability, the table inside a memory BAR, and how the hypervisor
//! programs it (the state machine is MSI's, in `irq`; this module is the hardware side).
//!
//! # The table is the hypervisor's
//!
//! An MSI-X function keeps its messages in a table inside one of its memory BARs (the
//! capability's Table BIR/offset), 16 bytes an entry: address low, address high, data,
//! vector control (bit 0: masked). A Pending Bit Array (PBA BIR/offset, one bit an
//! entry) shows what a masked entry holds. Linux's vfio-pci virtualises the table; here
//! the hypervisor writes it itself through the checked MMIO of [`super::DeviceHw`], and
//! `DEVICE_REGION_WRITE`s into the table or the PBA are dropped ([`msix_write_hidden`]),
//! as Linux drops them. A guest that *maps* the BAR can still write the table — that
//! gives it no interrupt it could not already send (see the ABI's *Config space*).
//!
//! # Programming order (PCI Local Bus 3.0 §6.8.2, Linux `msix_capability_init`)
//!
//! Enable: Function Mask and MSI-X Enable set together (some functions only decode
//! their table while enabled; the Function Mask keeps every entry silent meanwhile),
//! the entries in use written (address, data, then vector control), every other entry
//! masked with its message zeroed, Function Mask cleared last. Disable: Function Mask
//! set first (nothing more is sent), every entry masked and zeroed, then Enable and
//! Function Mask cleared. Memory decoding is switched on for the accesses if the guest
//! turned it off (Linux: `vfio_pci_memory_lock_and_enable`), and restored after.
//!
//! # Messages
//!
//! Entry `i` (a subindex) gets the block's message with data + `i`: without interrupt
//! remapping a compatibility-format message for host vector `base + i`; with it, the
//! message [`Iommu::map_msi`](sluice_iommu::Iommu::map_msi) returned for subindex 0
//! with data + `i`, which selects entry `first + i` on both drivers: VT-d's address
//! has SHV set, so the data is a subhandle added to the handle; AMD-Vi's data *is* the
//! index into the device's own table (entries stay below 256, so data bits 10:8 — the
//! delivery mode QEMU also decodes — stay 0).

use sluice_pci::{BarKind, ConfigSpace, PciAddress, cap_id, reg};

use super::irq::find_capability;
use super::state::set_command;
use super::{DeviceHw, GroupDevice};

/// Message Control: MSI-X Enable.
const MSIX_ENABLE: u16 = 1 << 15;
/// Message Control: Function Mask (every entry masked, whatever its own bit says).
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Message Control: Table Size − 1.
const MSIX_TABLE_SIZE: u16 = 0x7FF;
/// Bytes per table entry.
pub(super) const ENTRY_BYTES: u64 = 16;
/// Vector control: the entry's mask bit.
pub(super) const ENTRY_MASKED: u32 = 1;
/// The most vectors one MSI-X enable can have: [`sluice_iommu::Iommu::map_msi`] remaps
/// at most 32 (a power of two) and the host vector pool is 176 vectors for everyone.
pub(super) const MSIX_MAX_VECTORS: u32 = 32;

/// An MSI-X capability whose table lies inside an assigned memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MsixCap {
    /// The capability's config offset.
    pub offset: u16,
    /// Table entries.
    pub size: u32,
    /// Host-physical address of entry 0.
    pub table: u64,
}

impl MsixCap {
    fn entry(&self, i: u32) -> u64 {
        self.table + u64::from(i) * ENTRY_BYTES
    }
}

/// The capability as config space says, before any check against the BARs.
struct RawMsix {
    offset: u16,
    size: u32,
    /// Table BIR and offset in that BAR.
    table: (u8, u64),
    /// PBA BIR and offset in that BAR.
    pba: (u8, u64),
}

fn raw_capability(config: &dyn ConfigSpace, address: PciAddress) -> Option<RawMsix> {
    let offset = find_capability(config, address, cap_id::MSIX)?;
    let size = u32::from(config.read16(address, offset + 2) & MSIX_TABLE_SIZE) + 1;
    let split = |v: u32| ((v & 7) as u8, u64::from(v & !7));
    Some(RawMsix {
        offset,
        size,
        table: split(config.read32(address, offset + 4)),
        pba: split(config.read32(address, offset + 8)),
    })
}

/// The MSI-X capability of `function`, read live, when its table lies wholly inside
/// one of its assigned memory BARs (as enumerated); `None` otherwise — a table the
/// hypervisor cannot reach is not offered.
pub(super) fn msix_capability(config: &dyn ConfigSpace, function: &GroupDevice) -> Option<MsixCap> {
    let RawMsix {
        offset,
        size,
        table: (bir, table_offset),
        ..
    } = raw_capability(config, function.address)?;
    let bar = function
        .bars
        .iter()
        .find(|b| b.index == bir && b.kind != BarKind::Io && b.address != 0)?;
    let end = table_offset.checked_add(u64::from(size) * ENTRY_BYTES)?;
    if end > bar.size {
        return None;
    }
    Some(MsixCap {
        offset,
        size,
        table: bar.address.checked_add(table_offset)?,
    })
}

/// Whether a `len`-byte access at `offset` of BAR `index` touches `function`'s MSI-X
/// `(table, PBA)`. `DEVICE_REGION_WRITE`s touching either are dropped (the table is
/// the hypervisor's; a PBA write is undefined by the specification);
/// `DEVICE_REGION_READ`s of the table read all-ones (its messages name host vectors or
/// remapping handles, the hypervisor's business), as Linux's vfio-pci does.
pub(super) fn msix_overlap(
    config: &dyn ConfigSpace,
    function: &GroupDevice,
    index: u32,
    offset: u64,
    len: u64,
) -> (bool, bool) {
    let Some(RawMsix {
        size,
        table: (table_bir, table),
        pba: (pba_bir, pba),
        ..
    }) = raw_capability(config, function.address)
    else {
        return (false, false);
    };
    let end = offset.saturating_add(len);
    let overlaps = |bir: u8, start: u64, bytes: u64| {
        u32::from(bir) == index && offset < start.saturating_add(bytes) && start < end
    };
    (
        overlaps(table_bir, table, u64::from(size) * ENTRY_BYTES),
        overlaps(pba_bir, pba, u64::from(size.div_ceil(64)) * 8),
    )
}

/// Write the 16-bit Message Control (the dword's low half is the read-only header).
fn write_control(config: &dyn ConfigSpace, address: PciAddress, cap: &MsixCap, control: u16) {
    let header = config.read32(address, cap.offset) & 0xFFFF;
    config.write32(address, cap.offset, header | u32::from(control) << 16);
}

/// Run `f` with memory decoding on (restored after, if the guest had turned it off):
/// the table answers only while the function decodes its BARs.
fn with_decoding<R>(config: &dyn ConfigSpace, address: PciAddress, f: impl FnOnce() -> R) -> R {
    let off = config.read16(address, reg::COMMAND) & reg::COMMAND_MEMORY_SPACE == 0;
    if off {
        set_command(config, address, reg::COMMAND_MEMORY_SPACE, 0);
    }
    let r = f();
    if off {
        set_command(config, address, 0, reg::COMMAND_MEMORY_SPACE);
    }
    r
}

/// Write entry `i`: message (address, data), then vector control with `masked` (its
/// other bits, reserved or steering tags, kept). `false` when the platform refused.
fn write_entry(
    hw: &mut dyn DeviceHw,
    cap: &MsixCap,
    i: u32,
    message: (u64, u32),
    masked: bool,
) -> bool {
    let at = cap.entry(i);
    let (address, data) = message;
    hw.mmio_write(at, 4, address & 0xFFFF_FFFF)
        && hw.mmio_write(at + 4, 4, address >> 32)
        && hw.mmio_write(at + 8, 4, u64::from(data))
        && set_entry_mask(hw, cap, i, masked)
}

/// Set or clear entry `i`'s mask bit. `false` when the platform refused.
fn set_entry_mask(hw: &mut dyn DeviceHw, cap: &MsixCap, i: u32, masked: bool) -> bool {
    let at = cap.entry(i) + 12;
    let Some(control) = hw.mmio_read(at, 4) else {
        return false;
    };
    let control = (control as u32 & !ENTRY_MASKED) | if masked { ENTRY_MASKED } else { 0 };
    hw.mmio_write(at, 4, u64::from(control))
}

/// Enable MSI-X with `messages[i]` in entry `i` (`masked[i]`: its mask bit), every
/// other entry masked and zeroed, in the order of the module docs. `false` when the
/// platform refused an access; the caller then disables it again ([`disable`]).
pub(super) fn enable(
    config: &dyn ConfigSpace,
    hw: &mut dyn DeviceHw,
    address: PciAddress,
    cap: &MsixCap,
    messages: &[((u64, u32), bool)],
) -> bool {
    with_decoding(config, address, || {
        let control = config.read16(address, cap.offset + 2);
        write_control(
            config,
            address,
            cap,
            control | MSIX_ENABLE | MSIX_FUNCTION_MASK,
        );
        let mut ok = true;
        for i in 0..cap.size {
            let (message, masked) = messages.get(i as usize).copied().unwrap_or(((0, 0), true));
            ok = ok && write_entry(hw, cap, i, message, masked);
        }
        let control = config.read16(address, cap.offset + 2);
        write_control(config, address, cap, control & !MSIX_FUNCTION_MASK);
        ok
    })
}

/// Set or clear the mask bits of `entries`. `false` when the platform refused one.
pub(super) fn mask(
    config: &dyn ConfigSpace,
    hw: &mut dyn DeviceHw,
    address: PciAddress,
    cap: &MsixCap,
    entries: &[(u32, bool)],
) -> bool {
    with_decoding(config, address, || {
        let mut ok = true;
        for &(i, masked) in entries {
            ok &= set_entry_mask(hw, cap, i, masked);
        }
        ok
    })
}

/// Disable MSI-X: Function Mask first, every entry masked and zeroed, then Enable and
/// Function Mask cleared. `false` when the platform refused an access (the capability
/// is turned off all the same).
pub(super) fn disable(
    config: &dyn ConfigSpace,
    hw: Option<&mut (dyn DeviceHw + 'static)>,
    address: PciAddress,
    cap: &MsixCap,
) -> bool {
    with_decoding(config, address, || {
        let control = config.read16(address, cap.offset + 2);
        write_control(config, address, cap, control | MSIX_FUNCTION_MASK);
        // Every entry is tried, even after a refusal: mask as much as can be masked.
        let mut ok = hw.is_some();
        if let Some(hw) = hw {
            for i in 0..cap.size {
                ok &= write_entry(hw, cap, i, (0, 0), true);
            }
        }
        let control = config.read16(address, cap.offset + 2);
        write_control(
            config,
            address,
            cap,
            control & !(MSIX_ENABLE | MSIX_FUNCTION_MASK),
        );
        ok
    })
}
