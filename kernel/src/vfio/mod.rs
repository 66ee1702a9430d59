//! VFIO for guests: containers, groups and devices behind the hypercalls of
//! [`sluice_abi::vfio`] (read that module for the calls, their structures and errors).
//!
//! Hardware-independent: the IOMMU is a `dyn Iommu`, config space a `dyn ConfigSpace`, a
//! guest's memory a [`GuestRam`]; host tests supply fakes of all three.
//!
//! Objects, each an explicit state machine with a typed id:
//!
//! - a **group** ([`GroupDesc`], from the kernel's group formation) is *closed* or *open*
//!   in exactly one guest; open, it is *detached* or *in a container*; a group in a
//!   container has its devices attached to the container's domain on their unit;
//! - a **container** belongs to the guest that created it; it is *empty* (no group),
//!   *grouped* (groups, no IOMMU model) or *active* (type1v2 set: one IOMMU domain per
//!   unit its groups span, and the DMA mappings, replayed into every domain);
//! - a **device** is open through its group, which it holds (the group cannot leave its
//!   container, or be closed, while a device is open);
//! - an **external user** ([`ExternalUser`]: the VM binding of `GROUP_BIND_VM`, or an
//!   in-hypervisor component) holds an open group in its active container the same way.
//!
//! Every guest has a handle table; a handle carries a generation, so a closed or forged
//! handle is `EBADF`, never another object, and handles never cross guests.
//!
//! Release (close, guest ended or killed): devices closed (bus mastering off, region
//! mappings removed), groups detached (their devices' DMA blocked again), containers
//! destroyed with their domains and mappings. Nothing a guest mapped survives it.
//!
//! # Modules
//!
//! - `state`: [`Vfio`] itself, the objects, reference counting and release, and
//!   [`Vfio::check_invariants`];
//! - `handles`: the per-guest handle tables (generations, `EBADF`);
//! - `container`, `group`, `device`: the calls on each kind of object;
//! - `external`: external users ([`Vfio::external_user_get`] and the VM binding calls);
//! - `irq`: device interrupts (`DEVICE_GET_IRQ_INFO`, `DEVICE_SET_IRQS`): MSI and
//!   MSI-X state, MSI programming, the host vector pool, routes to guests' virtual vectors
//!   ([`Vfio::take_interrupts`]); `msix`: the MSI-X table, programmed by the
//!   hypervisor; `intx`: legacy INTx lines through the I/O APIC
//!   (level-triggered, masked while the guest services them);
//! - `region`, `reset`: `DEVICE_REGION_READ`/`WRITE` (mediated config space, memory
//!   BARs) and `DEVICE_RESET` (also run on every function of a released group);
//! - `args`: reading and writing argument structures in guest memory;
//! - `errors`: what an [`sluice_iommu::IommuError`] becomes for the guest
//!   ([`iommu_errno`]).

mod args;
mod container;
mod device;
mod errors;
mod external;
mod group;
mod handles;
mod intx;
mod irq;
mod msix;
mod region;
mod reset;
mod state;
#[cfg(test)]
mod tests;

use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_iommu::DeviceDma;
use sluice_pci::{Bar, PciAddress};

pub use sluice_abi::vfio::VfioCall;

pub use self::container::Mapping;
pub use self::device::MAX_REGION_MAPPINGS;
pub use self::errors::iommu_errno;
pub use self::external::{ExternalUser, external_user_iommu_id};
pub use self::handles::{ContainerId, DeviceId, GroupIndex, MAX_HANDLES};
pub use self::irq::{HOST_VECTOR_FIRST, HOST_VECTOR_LAST, MSI_ADDRESS_BASE};
pub use self::state::{HEAP_RESERVE, Vfio};

/// Which guest makes a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestId(pub u32);

/// A guest's memory as the VFIO layer needs it. Guest RAM is one contiguous run of
/// host frames, so a RAM range has one host-physical start.
pub trait GuestRam {
    /// The guest-physical RAM: `(base, size)`.
    fn ram(&self) -> (u64, u64);

    /// Host-physical address of guest-physical `gpa`, when `[gpa, gpa + len)` is wholly
    /// the guest's RAM (not wrapping); `None` otherwise.
    fn host_address(&self, gpa: u64, len: u64) -> Option<u64>;

    /// Read guest RAM; `EFAULT` unless `[gpa, gpa + buf.len())` is wholly RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Errno>;

    /// Write guest RAM; `EFAULT` unless `[gpa, gpa + data.len())` is wholly RAM.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Errno>;

    /// Map host MMIO `[hpa, hpa + size)` at guest-physical `gpa`, uncached (page-aligned
    /// arguments). `EINVAL` if the range overlaps RAM or lies beyond what the nested
    /// tables can address; `EEXIST` if something is mapped there already; `ENOMEM`.
    fn map_mmio(&mut self, gpa: u64, hpa: u64, size: u64) -> Result<(), Errno>;

    /// Remove a mapping made by [`Self::map_mmio`] (the guest's TLB is flushed before
    /// it runs again).
    fn unmap_mmio(&mut self, gpa: u64, size: u64);
}

/// What the VFIO layer needs from the platform to reset devices and access their BARs
/// (the kernel: a timer and checked MMIO; host tests: fakes).
pub trait DeviceHw {
    /// Wait at least `us` microseconds (resets: 100 ms after an FLR, and the like).
    fn delay_us(&mut self, us: u32);

    /// Read `size` (1, 2, 4 or 8) bytes of device memory at host-physical `hpa`, an
    /// aligned address inside an assigned memory BAR (the caller checked). `None` when
    /// the platform cannot reach it or refuses it (RAM, the hypervisor's own devices).
    fn mmio_read(&mut self, hpa: u64, size: u32) -> Option<u64>;

    /// Write the low `size` bytes of `value` at `hpa` (as [`Self::mmio_read`]); `false`
    /// when refused.
    fn mmio_write(&mut self, hpa: u64, size: u32, value: u64) -> bool;

    /// Whether the whole window `[hpa, hpa + len)` is device memory the platform lets a
    /// device decode on a guest's behalf (what [`Self::mmio_read`] accepts, for every
    /// address of it). Asked before the hypervisor makes a device decode a window it
    /// does not normally decode (its expansion ROM): a ROM BAR overlapping RAM or the
    /// hypervisor's own registers must never be switched on, not even for one read.
    fn mmio_window_allowed(&self, hpa: u64, len: u64) -> bool;

    /// Read `size` (1, 2 or 4) bytes from I/O port `port`, an aligned port inside an
    /// assigned I/O BAR (the caller checked). `None` when the platform refuses the port
    /// (one the hypervisor or the platform owns, e.g. the legacy ISA range).
    fn io_read(&mut self, port: u16, size: u32) -> Option<u32>;

    /// Write the low `size` bytes of `value` to `port` (as [`Self::io_read`]); `false`
    /// when refused.
    fn io_write(&mut self, port: u16, size: u32, value: u32) -> bool;
}

/// Where a function's INTx pin arrives at the host, from the firmware's routing table
/// (the DSDT's `_PRT`, swizzled through bridges): a GSI, and how the line signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntxLine {
    pub gsi: u32,
    pub level_triggered: bool,
    pub active_low: bool,
}

/// The interrupt controller pins (I/O APICs) device INTx lines arrive on, as the VFIO
/// layer needs them (the kernel: `arch::ioapic`; host tests: a fake).
pub trait InterruptLines {
    /// The I/O APIC id and pin that `gsi` is, when some I/O APIC has it.
    fn locate(&self, gsi: u32) -> Option<(u8, u8)>;

    /// Program `gsi`'s redirection entry with `rte` and leave the pin masked; the host's
    /// interrupt handler now treats `vector` as `gsi`'s level-triggered line and masks
    /// the pin before its EOI (until [`Self::set_masked`] unmasks it again).
    fn route(&self, gsi: u32, vector: u8, rte: u64) -> Result<(), alloc::string::String>;

    /// Mask or unmask `gsi`'s pin.
    fn set_masked(&self, gsi: u32, masked: bool);

    /// Stop using `gsi`: pin masked, `vector` no longer a line of the handler's.
    fn release(&self, gsi: u32, vector: u8);
}

/// One PCI function of an IOMMU group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDevice {
    pub address: PciAddress,
    pub vendor_id: u16,
    pub device_id: u16,
    /// Class code, 24 bits.
    pub class: u32,
    /// A bridge or port: doesn't count for viability, can't be opened as a device.
    pub bridge: bool,
    /// The hypervisor uses it itself (e.g. the LPC bridge behind which COM1 sits), or
    /// firmware reserves host memory for it (VT-d RMRR, AMD-Vi IVMD): its group is
    /// viable for nobody.
    pub host_owned: bool,
    /// Its DMA route (unit and requester ids).
    pub dma: DeviceDma,
    /// Implemented BARs, as enumerated.
    pub bars: Vec<Bar>,
    /// How it can be reset (FLR, PM, bus reset), if at all: `DEVICE_FLAGS_RESET`.
    pub reset: Option<sluice_pci::ResetMethod>,
    pub interrupt_pin: u8,
    /// Where its INTx pin arrives (`None`: no pin, or the firmware does not say).
    pub intx_line: Option<IntxLine>,
}

/// An IOMMU group as the kernel formed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDesc {
    pub id: u32,
    /// Its functions, sorted by address.
    pub devices: Vec<GroupDevice>,
}
