//! The guest side of the VFIO hypercalls: containers, groups and devices as owned values,
//! in the spirit of rust-vmm's `vfio-ioctls` (handles in place of file descriptors).
//!
//! ```no_run
//! use sluice_abi::client::vfio::{self, Container, Group};
//! use sluice_abi::vfio::{DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE, REGION_BAR0, extension};
//!
//! # fn main() -> Result<(), sluice_abi::Errno> {
//! # let buf_gpa = 0x20_0000;
//! assert!(vfio::check_extension(extension::TYPE1V2_IOMMU)?);
//! let container = Container::new()?;
//! let group = Group::open(3)?;
//! assert!(group.is_viable()?);
//! group.set_container(&container)?;
//! container.set_iommu(extension::TYPE1V2_IOMMU)?;
//! let info = container.info()?; // page sizes, IOVA ranges, mappings left
//! let flags = DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE;
//! container.map_dma(buf_gpa, 0x10_0000, 0x1000, flags)?;
//! let device = group.device("0000:00:03.0")?;
//! group.bind_vm()?; // BARs and interrupts go into the VM only for a bound group
//! let bar0 = device.region_info(REGION_BAR0)?;
//! device.map_region(REGION_BAR0, 0, bar0.size, 0x1_0000_0000)?; // BAR0 at GPA 4 GiB
//! # Ok(())
//! # }
//! ```
//!
//! The full semantics of every call (errors included) are in [`crate::vfio`]; this module
//! only marshals. Structures are built on the caller's stack, 8-byte aligned, with `argsz`
//! = their full size, and passed by address: like the rest of [`crate::client`], this
//! assumes the guest's identity mapping (virtual address == guest-physical address) for
//! its stack, statics and heap.
//!
//! # Ownership
//!
//! [`Container`], [`Group`] and [`Device`] own their handle and close it on drop (errors
//! ignored; use `close` to see them). In the hypervisor an object lives while it is
//! referenced (see [`crate::vfio::nr::CLOSE`]): a group stays in its container, a device
//! keeps its group open, so the order in which these values are dropped does not
//! matter.
//!
//! # Safety
//!
//! Everything here is safe except [`raw`]: each call lets the hypervisor read or write
//! only a buffer this module owns for the duration of the call, within the `argsz` it
//! states. Two calls grant access to memory beyond that, as their Linux counterparts do
//! and in the same way safe in `vfio-ioctls`: [`Container::map_dma`] lets devices of the
//! container DMA into the given guest RAM (the IOMMU confines them to exactly that), and
//! [`Device::map_region`] makes device registers appear at a guest-physical address that
//! the hypervisor guarantees is outside the guest's RAM.
//!
//! # Replies are not trusted
//!
//! What the hypervisor writes back is checked before use: [`parse_iommu_info`] walks the
//! capability chain with bounds on every offset, length and count and a bound on the
//! number of steps, and [`parse_group_list`] checks the entry size. A malformed reply is
//! [`Errno::EINVAL`], as [`crate::decode_result`] does for a malformed RAX.

use crate::Errno;
use crate::vfio::{
    CAP_DMA_AVAIL, CAP_IOVA_RANGE, DMA_UNMAP_FLAG_ALL, DmaAvailCap, DmaMap, DmaUnmap,
    GROUP_FLAGS_VIABLE, GroupList, GroupStatus, IOMMU_INFO_CAPS, InfoCapHeader, IommuType1Info,
    IovaRangeCap, MAX_ARGSZ, RegionAccess, RegionMap, min_size,
};
use crate::vfio::{
    IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_EVENTFD,
    IRQ_SET_DATA_NONE, IrqSet,
};

pub use crate::vfio::IrqInfo;
pub use crate::vfio::{
    DeviceInfo, GroupListEntry, GroupVmInfo, IovaRangeEntry, RegionInfo, VfioCall,
};

/// The most vectors one [`Device::set_irq_vectors`] / [`Device::trigger_irq`] call
/// carries (MSI has at most 32).
pub const IRQ_SET_MAX: usize = 32;

/// The most entries [`group_list`] returns per call (its stack buffer holds this many).
pub const GROUP_LIST_MAX: usize = 64;

/// The most IOVA ranges [`IommuInfo`] keeps.
pub const IOMMU_INFO_MAX_RANGES: usize = 8;

/// The bytes [`Container::info`] offers for the info structure and its capability chain
/// (room for 60 IOVA ranges and the DMA-available capability). A longer chain is
/// [`Errno::E2BIG`].
pub const IOMMU_INFO_BUFFER: usize = 1024;

const GROUP_LIST_BUFFER: usize = GroupList::SIZE + GROUP_LIST_MAX * GroupListEntry::SIZE;

const _: () = assert!(IOMMU_INFO_BUFFER <= MAX_ARGSZ as usize);
// As documented: the fixed part, the range header, 60 ranges and the DMA-avail capability.
const _: () = assert!(
    IommuType1Info::SIZE + IovaRangeCap::SIZE + 60 * IovaRangeEntry::SIZE + DmaAvailCap::SIZE
        <= IOMMU_INFO_BUFFER
);
const _: () = assert!(GROUP_LIST_BUFFER <= MAX_ARGSZ as usize);

/// Bytes on the stack, aligned like the structures they carry.
#[repr(C, align(8))]
struct Aligned<const N: usize>([u8; N]);

// ---------------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------------

/// The guest-memory address a call carries, if any (the hypervisor reads, and for some
/// calls writes, memory there).
const fn memory_argument(call: &VfioCall) -> Option<u64> {
    match *call {
        VfioCall::IommuGetInfo { info: gpa, .. }
        | VfioCall::MapDma { map: gpa, .. }
        | VfioCall::UnmapDma { unmap: gpa, .. }
        | VfioCall::GroupList { list: gpa }
        | VfioCall::GroupGetStatus { status: gpa, .. }
        | VfioCall::GroupGetDevice { name: gpa, .. }
        | VfioCall::DeviceGetInfo { info: gpa, .. }
        | VfioCall::DeviceGetRegionInfo { info: gpa, .. }
        | VfioCall::DeviceMapRegion { map: gpa, .. }
        | VfioCall::GroupVmInfo { info: gpa, .. }
        | VfioCall::DeviceRegionRead { access: gpa, .. }
        | VfioCall::DeviceRegionWrite { access: gpa, .. }
        | VfioCall::DeviceGetIrqInfo { info: gpa, .. }
        | VfioCall::DeviceSetIrqs { set: gpa, .. } => Some(gpa),
        VfioCall::GetApiVersion
        | VfioCall::CheckExtension { .. }
        | VfioCall::ContainerCreate
        | VfioCall::SetIommu { .. }
        | VfioCall::GroupOpen { .. }
        | VfioCall::GroupSetContainer { .. }
        | VfioCall::GroupUnsetContainer { .. }
        | VfioCall::Close { .. }
        | VfioCall::ContainerDebug { .. }
        | VfioCall::GroupBindVm { .. }
        | VfioCall::GroupUnbindVm { .. }
        | VfioCall::DeviceReset { .. } => None,
    }
}

/// A call whose arguments are values and handles only.
///
/// # Panics
///
/// If `call` carries a guest-memory address.
fn call_value(call: VfioCall) -> Result<u64, Errno> {
    assert!(memory_argument(&call).is_none(), "{call:?} carries memory");
    // SAFETY: the call carries no guest-memory address (checked above), so the
    // hypervisor reads and writes none of our memory.
    unsafe { raw::call(call) }
}

/// A call whose structure is `buf`: sets its `argsz` to `buf.len()` and passes its
/// address to `make`, which builds the call.
///
/// # Panics
///
/// If `buf` is shorter than 8 bytes or longer than [`MAX_ARGSZ`], or `make` builds a call
/// that does not carry `buf`'s address (bugs in this module).
fn call_struct(buf: &mut [u8], make: impl FnOnce(u64) -> VfioCall) -> Result<u64, Errno> {
    assert!(buf.len() >= 8 && buf.len() <= MAX_ARGSZ as usize);
    let argsz = buf.len() as u32;
    buf[..4].copy_from_slice(&argsz.to_le_bytes());
    let gpa = buf.as_mut_ptr().expose_provenance() as u64;
    let call = make(gpa);
    assert_eq!(
        memory_argument(&call),
        Some(gpa),
        "{call:?} must carry the buffer"
    );
    // SAFETY: the only guest memory the call names is `buf` (checked above), whose
    // `argsz` is its length: the hypervisor reads and writes at most `argsz` bytes there
    // (crate::vfio, "Argument structures"). `buf` is exclusively borrowed for the whole
    // call, and its address is its guest-physical address (identity mapping). The
    // exposed pointer and the memory-clobbering asm make the compiler assume the bytes
    // may change.
    unsafe { raw::call(call) }
}

/// A handle returned by the hypervisor: `1..=i64::MAX` ([`crate::decode_result`] already
/// excludes values above `i64::MAX`).
fn handle(value: u64) -> Result<u64, Errno> {
    if value == 0 {
        Err(Errno::EINVAL)
    } else {
        Ok(value)
    }
}

fn close_handle(handle: u64) -> Result<(), Errno> {
    call_value(VfioCall::Close { handle }).map(drop)
}

/// [`GET_API_VERSION`](crate::vfio::nr::GET_API_VERSION): [`crate::vfio::API_VERSION`]
/// from a conforming hypervisor.
pub fn api_version() -> Result<u64, Errno> {
    call_value(VfioCall::GetApiVersion)
}

/// [`CHECK_EXTENSION`](crate::vfio::nr::CHECK_EXTENSION): whether `ext` (one of
/// [`crate::vfio::extension`]) is supported. A result other than 0 or 1 is
/// [`Errno::EINVAL`].
pub fn check_extension(ext: u64) -> Result<bool, Errno> {
    match call_value(VfioCall::CheckExtension { extension: ext })? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Errno::EINVAL),
    }
}

/// [`GROUP_LIST`](crate::vfio::nr::GROUP_LIST): every PCI function in an IOMMU group,
/// with its group's state for this guest.
///
/// Fills `entries` with as many [`GroupListEntry`] as fit and returns the total count
/// that exists: `entries[..count.min(entries.len()).min(GROUP_LIST_MAX)]` are written,
/// the rest untouched. At most [`GROUP_LIST_MAX`] (64) entries come back per call,
/// because the reply is read into a fixed buffer on the stack (1552 bytes; this crate
/// has no allocator).
pub fn group_list(entries: &mut [GroupListEntry]) -> Result<usize, Errno> {
    let mut buf = Aligned([0u8; GROUP_LIST_BUFFER]);
    call_struct(&mut buf.0, |list| VfioCall::GroupList { list })?;
    parse_group_list(&buf.0, entries)
}

/// Parse a [`GROUP_LIST`](crate::vfio::nr::GROUP_LIST) reply: `reply` is the buffer that
/// was offered (its length the `argsz` passed in). Copies the entries present, up to
/// `entries.len()`, and returns the count the hypervisor reports.
///
/// [`Errno::EINVAL`] if `reply` is shorter than the header or entries are reported with
/// an `entry_size` below [`GroupListEntry::SIZE`]. Entries larger than that (a later ABI)
/// are read by their first [`GroupListEntry::SIZE`] bytes.
pub fn parse_group_list(reply: &[u8], entries: &mut [GroupListEntry]) -> Result<usize, Errno> {
    let body = reply.get(GroupList::SIZE..).ok_or(Errno::EINVAL)?;
    let header = GroupList::from_prefix(reply);
    let count = header.count as usize;
    if count == 0 {
        return Ok(0);
    }
    let entry_size = header.entry_size as usize;
    if entry_size < GroupListEntry::SIZE {
        return Err(Errno::EINVAL);
    }
    for (entry, bytes) in entries
        .iter_mut()
        .zip(body.chunks_exact(entry_size))
        .take(count)
    {
        *entry = GroupListEntry::from_prefix(bytes);
    }
    Ok(count)
}

/// What [`Container::info`] reports: [`IommuType1Info`] and its capability chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IommuInfo {
    /// [`IOMMU_INFO_PGSIZES`](crate::vfio::IOMMU_INFO_PGSIZES) (`iova_pgsizes` is valid),
    /// [`IOMMU_INFO_CAPS`] (a capability chain was returned).
    pub flags: u32,
    /// Page sizes every domain of the container supports (bit n = 2^n bytes).
    pub iova_pgsizes: u64,
    /// The usable IOVA ranges (inclusive), `ranges[..nr_ranges]`; the first
    /// [`IOMMU_INFO_MAX_RANGES`] if the hypervisor reports more.
    pub ranges: [IovaRangeEntry; IOMMU_INFO_MAX_RANGES],
    /// How many of `ranges` are valid. 0 when the chain carries no IOVA-range capability
    /// (which in Linux means no restriction is reported).
    pub nr_ranges: usize,
    /// How many more DMA mappings the container accepts, when reported.
    pub dma_avail: Option<u32>,
}

impl IommuInfo {
    /// The valid IOVA ranges.
    pub fn ranges(&self) -> &[IovaRangeEntry] {
        &self.ranges[..self.nr_ranges.min(IOMMU_INFO_MAX_RANGES)]
    }

    /// The smallest supported page size (the alignment of every map and unmap), if any.
    pub fn min_page_size(&self) -> Option<u64> {
        (self.iova_pgsizes != 0).then(|| 1 << self.iova_pgsizes.trailing_zeros())
    }
}

/// Parse an [`IOMMU_GET_INFO`](crate::vfio::nr::IOMMU_GET_INFO) reply: `reply` is the
/// buffer that was offered (its length the `argsz` passed in).
///
/// Errors:
/// * [`Errno::E2BIG`]: the hypervisor has a capability chain that did not fit (`CAPS`
///   set, `cap_offset` 0, `argsz` raised above `reply.len()`): offer more bytes.
/// * [`Errno::EINVAL`]: `reply` is shorter than the minimum size, or the chain is
///   malformed: `CAPS` with `cap_offset` 0 although everything fit; a capability
///   starting inside the fixed structure or not wholly inside `reply`; an IOVA-range
///   list longer than `reply`; a range with `start > end`; a chain longer than
///   `reply.len() / 8` steps (a loop).
///
/// Unknown capabilities are skipped; of two capabilities with the same id the first
/// counts (as Linux's `vfio_find_cap`); capability versions are not checked. `cap_offset`
/// is only followed when `CAPS` is set.
pub fn parse_iommu_info(reply: &[u8]) -> Result<IommuInfo, Errno> {
    if reply.len() < min_size::IOMMU_INFO {
        return Err(Errno::EINVAL);
    }
    let fixed = IommuType1Info::from_prefix(reply);
    let mut info = IommuInfo {
        flags: fixed.flags,
        iova_pgsizes: fixed.iova_pgsizes,
        ..IommuInfo::default()
    };
    if fixed.flags & IOMMU_INFO_CAPS == 0 {
        return Ok(info);
    }
    if reply.len() < IommuType1Info::SIZE {
        // Too short to receive `cap_offset`: the chain cannot have been written.
        return Err(Errno::E2BIG);
    }
    if fixed.cap_offset == 0 {
        return Err(if fixed.argsz as usize > reply.len() {
            Errno::E2BIG
        } else {
            Errno::EINVAL
        });
    }
    let (mut seen_ranges, mut offset) = (false, fixed.cap_offset as usize);
    let mut steps_left = reply.len() / InfoCapHeader::SIZE;
    while offset != 0 {
        if offset < IommuType1Info::SIZE || steps_left == 0 {
            return Err(Errno::EINVAL);
        }
        steps_left -= 1;
        let cap = reply.get(offset..).ok_or(Errno::EINVAL)?;
        let header =
            InfoCapHeader::from_prefix(cap.get(..InfoCapHeader::SIZE).ok_or(Errno::EINVAL)?);
        match header.id {
            CAP_IOVA_RANGE if !seen_ranges => {
                seen_ranges = true;
                let fixed =
                    IovaRangeCap::from_prefix(cap.get(..IovaRangeCap::SIZE).ok_or(Errno::EINVAL)?);
                let len = (fixed.nr_iovas as usize)
                    .checked_mul(IovaRangeEntry::SIZE)
                    .ok_or(Errno::EINVAL)?;
                let list = cap
                    .get(IovaRangeCap::SIZE..)
                    .and_then(|rest| rest.get(..len))
                    .ok_or(Errno::EINVAL)?;
                for (i, bytes) in list.chunks_exact(IovaRangeEntry::SIZE).enumerate() {
                    let range = IovaRangeEntry::from_prefix(bytes);
                    if range.start > range.end {
                        return Err(Errno::EINVAL);
                    }
                    if i < IOMMU_INFO_MAX_RANGES {
                        info.ranges[i] = range;
                        info.nr_ranges = i + 1;
                    }
                }
            }
            CAP_DMA_AVAIL if info.dma_avail.is_none() => {
                let cap =
                    DmaAvailCap::from_prefix(cap.get(..DmaAvailCap::SIZE).ok_or(Errno::EINVAL)?);
                info.dma_avail = Some(cap.avail);
            }
            _ => {}
        }
        offset = header.next as usize;
    }
    Ok(info)
}

// ---------------------------------------------------------------------------------------
// Containers
// ---------------------------------------------------------------------------------------

/// A container: an IO address space (Linux: an open `/dev/vfio/vfio`). Closes its
/// handle on drop.
#[derive(Debug, PartialEq, Eq)]
pub struct Container {
    handle: u64,
}

impl Container {
    /// [`CONTAINER_CREATE`](crate::vfio::nr::CONTAINER_CREATE).
    pub fn new() -> Result<Self, Errno> {
        let handle = handle(call_value(VfioCall::ContainerCreate)?)?;
        Ok(Container { handle })
    }

    /// The hypervisor's handle.
    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// [`CONTAINER_SET_IOMMU`](crate::vfio::nr::CONTAINER_SET_IOMMU): set the IOMMU model
    /// (only [`crate::vfio::extension::TYPE1V2_IOMMU`] exists). Needs a group in the
    /// container.
    pub fn set_iommu(&self, iommu_type: u64) -> Result<(), Errno> {
        call_value(VfioCall::SetIommu {
            container: self.handle,
            iommu_type,
        })
        .map(drop)
    }

    /// [`IOMMU_GET_INFO`](crate::vfio::nr::IOMMU_GET_INFO) with a
    /// [`IOMMU_INFO_BUFFER`]-byte buffer, parsed by [`parse_iommu_info`].
    pub fn info(&self) -> Result<IommuInfo, Errno> {
        let mut buf = Aligned([0u8; IOMMU_INFO_BUFFER]);
        call_struct(&mut buf.0, |info| VfioCall::IommuGetInfo {
            container: self.handle,
            info,
        })?;
        parse_iommu_info(&buf.0)
    }

    /// [`MAP_DMA`](crate::vfio::nr::MAP_DMA): let the container's devices access
    /// `[vaddr, vaddr + size)` of this guest's RAM at `[iova, iova + size)`, with
    /// `flags` = [`DMA_MAP_FLAG_READ`](crate::vfio::DMA_MAP_FLAG_READ) |
    /// [`DMA_MAP_FLAG_WRITE`](crate::vfio::DMA_MAP_FLAG_WRITE). `vaddr` is a
    /// guest-physical address (== virtual under the identity map).
    ///
    /// Devices may then write that memory at any time: keep Rust references to it out of
    /// the way (as with Linux VFIO, this is the caller's care, not a `unsafe` contract).
    pub fn map_dma(&self, vaddr: u64, iova: u64, size: u64, flags: u32) -> Result<(), Errno> {
        let map = DmaMap {
            argsz: DmaMap::SIZE as u32,
            flags,
            vaddr,
            iova,
            size,
        };
        let mut buf = Aligned(map.to_bytes());
        call_struct(&mut buf.0, |map| VfioCall::MapDma {
            container: self.handle,
            map,
        })
        .map(drop)
    }

    /// [`UNMAP_DMA`](crate::vfio::nr::UNMAP_DMA) of `[iova, iova + size)`: returns the
    /// bytes unmapped (0 if nothing was mapped there).
    pub fn unmap_dma(&self, iova: u64, size: u64) -> Result<u64, Errno> {
        self.unmap(0, iova, size)
    }

    /// [`UNMAP_DMA`](crate::vfio::nr::UNMAP_DMA) with
    /// [`DMA_UNMAP_FLAG_ALL`]: unmaps everything; returns the bytes unmapped.
    pub fn unmap_all(&self) -> Result<u64, Errno> {
        self.unmap(DMA_UNMAP_FLAG_ALL, 0, 0)
    }

    fn unmap(&self, flags: u32, iova: u64, size: u64) -> Result<u64, Errno> {
        let unmap = DmaUnmap {
            argsz: DmaUnmap::SIZE as u32,
            flags,
            iova,
            size,
        };
        let mut buf = Aligned(unmap.to_bytes());
        call_struct(&mut buf.0, |unmap| VfioCall::UnmapDma {
            container: self.handle,
            unmap,
        })?;
        Ok(DmaUnmap::from_bytes(&buf.0).size)
    }

    /// [`CONTAINER_DEBUG`](crate::vfio::nr::CONTAINER_DEBUG): the hypervisor logs the
    /// container's domains, its devices' context / device-table entries and the page-table
    /// walk for `iova`; returns the number of lines printed.
    pub fn debug(&self, iova: u64) -> Result<u64, Errno> {
        call_value(VfioCall::ContainerDebug {
            container: self.handle,
            iova,
        })
    }

    /// [`CLOSE`](crate::vfio::nr::CLOSE) the handle, reporting the result (drop ignores
    /// it). The container lives on while a group is in it.
    pub fn close(self) -> Result<(), Errno> {
        let handle = self.handle;
        core::mem::forget(self);
        close_handle(handle)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = close_handle(self.handle);
    }
}

// ---------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------

/// An open IOMMU group (Linux: an open `/dev/vfio/N`). Closes its handle on drop.
#[derive(Debug, PartialEq, Eq)]
pub struct Group {
    id: u32,
    handle: u64,
}

impl Group {
    /// [`GROUP_OPEN`](crate::vfio::nr::GROUP_OPEN) group `id` (as in [`group_list`]).
    pub fn open(id: u32) -> Result<Self, Errno> {
        let handle = handle(call_value(VfioCall::GroupOpen {
            group_id: u64::from(id),
        })?)?;
        Ok(Group { id, handle })
    }

    /// The group id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The hypervisor's handle.
    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// [`GROUP_GET_STATUS`](crate::vfio::nr::GROUP_GET_STATUS): the group's flags,
    /// [`GROUP_FLAGS_VIABLE`] and
    /// [`GROUP_FLAGS_CONTAINER_SET`](crate::vfio::GROUP_FLAGS_CONTAINER_SET).
    pub fn status(&self) -> Result<u32, Errno> {
        let mut buf = Aligned(GroupStatus::default().to_bytes());
        call_struct(&mut buf.0, |status| VfioCall::GroupGetStatus {
            group: self.handle,
            status,
        })?;
        Ok(GroupStatus::from_bytes(&buf.0).flags)
    }

    /// Whether [`Self::status`] has [`GROUP_FLAGS_VIABLE`].
    pub fn is_viable(&self) -> Result<bool, Errno> {
        Ok(self.status()? & GROUP_FLAGS_VIABLE != 0)
    }

    /// [`GROUP_SET_CONTAINER`](crate::vfio::nr::GROUP_SET_CONTAINER): put the group in
    /// `container`.
    pub fn set_container(&self, container: &Container) -> Result<(), Errno> {
        call_value(VfioCall::GroupSetContainer {
            group: self.handle,
            container: container.handle,
        })
        .map(drop)
    }

    /// [`GROUP_UNSET_CONTAINER`](crate::vfio::nr::GROUP_UNSET_CONTAINER).
    pub fn unset_container(&self) -> Result<(), Errno> {
        call_value(VfioCall::GroupUnsetContainer { group: self.handle }).map(drop)
    }

    /// [`GROUP_BIND_VM`](crate::vfio::nr::GROUP_BIND_VM): bind the group to this VM
    /// (the VM becomes its external user). The group must be in a container with the
    /// IOMMU model set; while bound, [`Self::unset_container`] is `EBUSY` and closing the
    /// handle leaves the group open and bound until the guest ends.
    pub fn bind_vm(&self) -> Result<(), Errno> {
        call_value(VfioCall::GroupBindVm { group: self.handle }).map(drop)
    }

    /// [`GROUP_UNBIND_VM`](crate::vfio::nr::GROUP_UNBIND_VM).
    pub fn unbind_vm(&self) -> Result<(), Errno> {
        call_value(VfioCall::GroupUnbindVm { group: self.handle }).map(drop)
    }

    /// [`GROUP_VM_INFO`](crate::vfio::nr::GROUP_VM_INFO) of a bound group: its id, its
    /// remapping unit and [`GROUP_VM_INFO_COHERENT`](crate::vfio::GROUP_VM_INFO_COHERENT).
    pub fn vm_info(&self) -> Result<GroupVmInfo, Errno> {
        let mut buf = Aligned(GroupVmInfo::default().to_bytes());
        call_struct(&mut buf.0, |info| VfioCall::GroupVmInfo {
            group: self.handle,
            info,
        })?;
        Ok(GroupVmInfo::from_bytes(&buf.0))
    }

    /// [`GROUP_GET_DEVICE`](crate::vfio::nr::GROUP_GET_DEVICE): open the device `name`
    /// (`SSSS:BB:DD.F`, see [`crate::vfio::format_device_name`]). The name is passed as
    /// is; the hypervisor checks its length (1..=[`crate::vfio::DEVICE_NAME_MAX`]).
    pub fn device(&self, name: &str) -> Result<Device, Errno> {
        let call = VfioCall::GroupGetDevice {
            group: self.handle,
            name: name.as_ptr().expose_provenance() as u64,
            name_len: name.len() as u64,
        };
        // SAFETY: the only guest memory the call names is `name`, `name.len()` bytes
        // that stay borrowed for the call; the hypervisor only reads them. An empty or
        // over-long name is refused before anything is read.
        let handle = handle(unsafe { raw::call(call) }?)?;
        Ok(Device { handle })
    }

    /// [`CLOSE`](crate::vfio::nr::CLOSE) the handle, reporting the result (drop ignores
    /// it). The group stays open while a device of it is.
    pub fn close(self) -> Result<(), Errno> {
        let handle = self.handle;
        core::mem::forget(self);
        close_handle(handle)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = close_handle(self.handle);
    }
}

// ---------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------

/// An open device of a group (Linux: a device file descriptor). Closes its handle on
/// drop, which turns its bus mastering off and removes its region mappings.
#[derive(Debug, PartialEq, Eq)]
pub struct Device {
    handle: u64,
}

impl Device {
    /// The hypervisor's handle.
    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// [`DEVICE_GET_INFO`](crate::vfio::nr::DEVICE_GET_INFO).
    pub fn info(&self) -> Result<DeviceInfo, Errno> {
        let mut buf = Aligned(DeviceInfo::default().to_bytes());
        call_struct(&mut buf.0, |info| VfioCall::DeviceGetInfo {
            device: self.handle,
            info,
        })?;
        Ok(DeviceInfo::from_bytes(&buf.0))
    }

    /// [`DEVICE_GET_REGION_INFO`](crate::vfio::nr::DEVICE_GET_REGION_INFO) of region
    /// `index` ([`crate::vfio::REGION_BAR0`]...).
    pub fn region_info(&self, index: u32) -> Result<RegionInfo, Errno> {
        let request = RegionInfo {
            index,
            ..RegionInfo::default()
        };
        let mut buf = Aligned(request.to_bytes());
        call_struct(&mut buf.0, |info| VfioCall::DeviceGetRegionInfo {
            device: self.handle,
            info,
        })?;
        Ok(RegionInfo::from_bytes(&buf.0))
    }

    /// [`DEVICE_MAP_REGION`](crate::vfio::nr::DEVICE_MAP_REGION): map `[offset, offset +
    /// size)` of region `index` at guest-physical `gpa` (outside this guest's RAM),
    /// uncached, until the device is closed. The device's group must be bound to the VM
    /// ([`Group::bind_vm`]; `EPERM`). Accessing it is the caller's (volatile, `unsafe`)
    /// business.
    pub fn map_region(&self, index: u32, offset: u64, size: u64, gpa: u64) -> Result<(), Errno> {
        let map = RegionMap {
            index,
            offset,
            size,
            gpa,
            ..RegionMap::default()
        };
        let mut buf = Aligned(map.to_bytes());
        call_struct(&mut buf.0, |map| VfioCall::DeviceMapRegion {
            device: self.handle,
            map,
        })
        .map(drop)
    }

    /// [`DEVICE_RESET`](crate::vfio::nr::DEVICE_RESET): reset the function (FLR, PM or
    /// bus reset; `EINVAL` when it has no method, see [`DeviceInfo::flags`]).
    pub fn reset(&self) -> Result<(), Errno> {
        call_value(VfioCall::DeviceReset {
            device: self.handle,
        })
        .map(drop)
    }

    /// [`DEVICE_REGION_READ`](crate::vfio::nr::DEVICE_REGION_READ): `size` (1, 2, 4, 8)
    /// bytes at `offset` of region `index`, zero-extended.
    pub fn region_read(&self, index: u32, offset: u64, size: u32) -> Result<u64, Errno> {
        let access = RegionAccess {
            index,
            size,
            offset,
            ..RegionAccess::default()
        };
        let mut buf = Aligned(access.to_bytes());
        call_struct(&mut buf.0, |access| VfioCall::DeviceRegionRead {
            device: self.handle,
            access,
        })?;
        Ok(RegionAccess::from_bytes(&buf.0).data)
    }

    /// [`DEVICE_REGION_WRITE`](crate::vfio::nr::DEVICE_REGION_WRITE): the low `size`
    /// bytes of `value` at `offset` of region `index` (config space is mediated).
    pub fn region_write(
        &self,
        index: u32,
        offset: u64,
        size: u32,
        value: u64,
    ) -> Result<(), Errno> {
        let access = RegionAccess {
            index,
            size,
            offset,
            data: value,
            ..RegionAccess::default()
        };
        let mut buf = Aligned(access.to_bytes());
        call_struct(&mut buf.0, |access| VfioCall::DeviceRegionWrite {
            device: self.handle,
            access,
        })
        .map(drop)
    }

    /// `DEVICE_GET_IRQ_INFO` for interrupt `index` (`IRQ_INDEX_*`).
    pub fn irq_info(&self, index: u32) -> Result<IrqInfo, Errno> {
        let request = IrqInfo {
            index,
            ..IrqInfo::default()
        };
        let mut buf = Aligned(request.to_bytes());
        call_struct(&mut buf.0, |info| VfioCall::DeviceGetIrqInfo {
            device: self.handle,
            info,
        })?;
        Ok(IrqInfo::from_bytes(&buf.0))
    }

    /// `DEVICE_SET_IRQS` with `DATA_EVENTFD | ACTION_TRIGGER`: bind subindexes
    /// `start..start + vectors.len()` of `index` to the virtual vectors given (32..=255,
    /// or -1 to unbind one). The first binding enables the index. `EINVAL` for an empty
    /// slice or more than [`IRQ_SET_MAX`] vectors.
    pub fn set_irq_vectors(&self, index: u32, start: u32, vectors: &[i32]) -> Result<(), Errno> {
        if vectors.is_empty() || vectors.len() > IRQ_SET_MAX {
            return Err(Errno::EINVAL);
        }
        let header = IrqSet {
            flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            index,
            start,
            count: vectors.len() as u32,
            ..IrqSet::default()
        };
        let mut buf = Aligned([0u8; IrqSet::SIZE + 4 * IRQ_SET_MAX]);
        buf.0[..IrqSet::SIZE].copy_from_slice(&header.to_bytes());
        for (i, v) in vectors.iter().enumerate() {
            let at = IrqSet::SIZE + 4 * i;
            buf.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        let len = IrqSet::SIZE + 4 * vectors.len();
        call_struct(&mut buf.0[..len], |set| VfioCall::DeviceSetIrqs {
            device: self.handle,
            set,
        })
        .map(drop)
    }

    /// `DEVICE_SET_IRQS` with `DATA_NONE | ACTION_TRIGGER` and `count` 0: disable
    /// interrupt `index` (every vector unbound).
    pub fn disable_irqs(&self, index: u32) -> Result<(), Errno> {
        let header = IrqSet {
            flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
            index,
            ..IrqSet::default()
        };
        let mut buf = Aligned(header.to_bytes());
        call_struct(&mut buf.0, |set| VfioCall::DeviceSetIrqs {
            device: self.handle,
            set,
        })
        .map(drop)
    }

    /// `DEVICE_SET_IRQS` with `DATA_NONE | ACTION_TRIGGER`: fire subindexes
    /// `start..start + count` as if the device had (a loopback test; `count` ≥ 1).
    pub fn trigger_irq(&self, index: u32, start: u32, count: u32) -> Result<(), Errno> {
        if count == 0 {
            return Err(Errno::EINVAL);
        }
        self.set_irqs_raw(
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
            index,
            start,
            count,
            &[],
        )
    }

    /// `DEVICE_SET_IRQS` with `DATA_NONE | ACTION_MASK`: mask subindexes
    /// `start..start + count` (INTx: `0, 1`).
    pub fn mask_irq(&self, index: u32, start: u32, count: u32) -> Result<(), Errno> {
        self.set_irqs_raw(
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK,
            index,
            start,
            count,
            &[],
        )
    }

    /// `DEVICE_SET_IRQS` with `DATA_NONE | ACTION_UNMASK`: unmask subindexes
    /// `start..start + count`. INTx is masked by every interrupt (automasked): service
    /// the device, then unmask `0, 1`.
    pub fn unmask_irq(&self, index: u32, start: u32, count: u32) -> Result<(), Errno> {
        self.set_irqs_raw(
            IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
            index,
            start,
            count,
            &[],
        )
    }

    /// `DEVICE_SET_IRQS` with any `flags` and raw data bytes after the header (for
    /// masking with `DATA_BOOL`, or to test the hypervisor's checks). `data` is at most
    /// `4 * IRQ_SET_MAX` bytes (else `EINVAL`).
    pub fn set_irqs_raw(
        &self,
        flags: u32,
        index: u32,
        start: u32,
        count: u32,
        data: &[u8],
    ) -> Result<(), Errno> {
        if data.len() > 4 * IRQ_SET_MAX {
            return Err(Errno::EINVAL);
        }
        let header = IrqSet {
            flags,
            index,
            start,
            count,
            ..IrqSet::default()
        };
        let mut buf = Aligned([0u8; IrqSet::SIZE + 4 * IRQ_SET_MAX]);
        buf.0[..IrqSet::SIZE].copy_from_slice(&header.to_bytes());
        buf.0[IrqSet::SIZE..IrqSet::SIZE + data.len()].copy_from_slice(data);
        let len = IrqSet::SIZE + data.len();
        call_struct(&mut buf.0[..len], |set| VfioCall::DeviceSetIrqs {
            device: self.handle,
            set,
        })
        .map(drop)
    }

    /// [`CLOSE`](crate::vfio::nr::CLOSE) the handle, reporting the result (drop ignores
    /// it).
    pub fn close(self) -> Result<(), Errno> {
        let handle = self.handle;
        core::mem::forget(self);
        close_handle(handle)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = close_handle(self.handle);
    }
}

// ---------------------------------------------------------------------------------------
// Raw access
// ---------------------------------------------------------------------------------------

/// Raw access, for tests of hostile behaviour: issue any [`VfioCall`] (forged or
/// closed handles, handles of the wrong kind, addresses outside RAM, odd `argsz` or
/// flags) or any numbers, and get the result.
///
/// [`call`](raw::call) and [`call_nr`](raw::call_nr) are `unsafe`: a call that carries a
/// guest-memory address lets the hypervisor write there, and only the caller knows what
/// lives at that address. Calls that carry none (forged handles and the like) are safe
/// through [`call_value`](raw::call_value).
pub mod raw {
    use super::VfioCall;
    use crate::client::hypercall;
    use crate::{Errno, decode_result};

    /// Issue a call that carries no guest-memory address (`GetApiVersion`,
    /// `CheckExtension`, `ContainerCreate`, `SetIommu`, `GroupOpen`, `GroupSetContainer`,
    /// `GroupUnsetContainer`, `Close`, `ContainerDebug`, `GroupBindVm`, `GroupUnbindVm`)
    /// with any values, and decode RAX.
    ///
    /// # Panics
    ///
    /// If `call` carries a guest-memory address: use [`call`] for those.
    pub fn call_value(call: VfioCall) -> Result<u64, Errno> {
        super::call_value(call)
    }

    /// Issue `call` and decode RAX ([`decode_result`]).
    ///
    /// # Safety
    ///
    /// Must run in a Sluice guest at CPL 0. For the duration of the call, the memory
    /// `call` names must be accessible as the call's contract in [`crate::vfio`] says:
    ///
    /// * `IommuGetInfo`, `UnmapDma`, `GroupList`, `GroupGetStatus`, `DeviceGetInfo`,
    ///   `DeviceGetRegionInfo`, `GroupVmInfo` (the hypervisor writes the structure back) and `MapDma`,
    ///   `DeviceMapRegion` (it reads it): `min(argsz, MAX_ARGSZ)` bytes at the address,
    ///   `argsz` being the `u32` stored there, valid for writes and not in use through
    ///   any live reference;
    /// * `GroupGetDevice`: `name_len` bytes at `name`, valid for reads.
    ///
    /// Addresses wholly outside the guest's RAM need nothing: the hypervisor refuses them
    /// (`EFAULT`) and touches nothing. A successful `MapDma` further lets the container's
    /// devices write the memory it maps, as [`super::Container::map_dma`] does.
    pub unsafe fn call(call: VfioCall) -> Result<u64, Errno> {
        let (nr, a) = call.encode();
        // SAFETY: the caller upholds the call's contract (see above).
        decode_result(unsafe { call_nr(nr, a) })
    }

    /// Issue hypercall `nr` with `args` = `[rdi, rsi, rdx, r10, r8, r9]`; returns RAX
    /// undecoded (see [`decode_result`]).
    ///
    /// # Safety
    ///
    /// As [`crate::client::hypercall`]: a Sluice guest at CPL 0, and every guest-memory
    /// argument is memory the hypervisor may read or write as that call's contract says.
    pub unsafe fn call_nr(nr: u64, args: [u64; 6]) -> i64 {
        let [a0, a1, a2, a3, a4, a5] = args;
        // SAFETY: forwarded from the caller.
        unsafe { hypercall(nr, a0, a1, a2, a3, a4, a5) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::{DEVICE_LIST_BRIDGE, GROUP_LIST_OWNABLE, IOMMU_INFO_PGSIZES};

    /// A reply buffer: `fixed` at 0, then `(offset, bytes)` pieces.
    fn reply(len: usize, fixed: IommuType1Info, pieces: &[(usize, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[..IommuType1Info::SIZE].copy_from_slice(&fixed.to_bytes());
        for (off, bytes) in pieces {
            b[*off..off + bytes.len()].copy_from_slice(bytes);
        }
        b
    }

    fn fixed(flags: u32, cap_offset: u32, argsz: u32) -> IommuType1Info {
        IommuType1Info {
            argsz,
            flags,
            iova_pgsizes: 0x4000_1000, // 4 KiB | 1 GiB
            cap_offset,
            _pad: 0,
        }
    }

    fn ranges_cap(next: u32, ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut b = IovaRangeCap {
            id: CAP_IOVA_RANGE,
            version: 1,
            next,
            nr_iovas: ranges.len() as u32,
            _reserved: 0,
        }
        .to_bytes()
        .to_vec();
        for &(start, end) in ranges {
            b.extend_from_slice(&IovaRangeEntry { start, end }.to_bytes());
        }
        b
    }

    fn avail_cap(next: u32, avail: u32) -> [u8; 16] {
        DmaAvailCap {
            id: CAP_DMA_AVAIL,
            version: 1,
            next,
            avail,
            _pad: 0,
        }
        .to_bytes()
    }

    const BOTH: u32 = IOMMU_INFO_PGSIZES | IOMMU_INFO_CAPS;

    #[test]
    fn info_chain_as_the_hypervisor_writes_it() {
        // Ranges at 24 (two of them: 48 bytes), DMA avail at 72.
        let r = ranges_cap(72, &[(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)]);
        let b = reply(
            1024,
            fixed(BOTH, 24, 1024),
            &[(24, &r), (72, &avail_cap(0, 65530))],
        );
        let info = parse_iommu_info(&b).unwrap();
        assert_eq!(info.flags, BOTH);
        assert_eq!(info.iova_pgsizes, 0x4000_1000);
        assert_eq!(info.min_page_size(), Some(4096));
        assert_eq!(
            info.ranges(),
            &[
                IovaRangeEntry {
                    start: 0,
                    end: 0xfedf_ffff
                },
                IovaRangeEntry {
                    start: 0xfef0_0000,
                    end: (1 << 39) - 1
                },
            ]
        );
        assert_eq!(info.dma_avail, Some(65530));

        // The other order, an unknown capability in between, and the exact length.
        let r = ranges_cap(0, &[(0x1000, 0x1fff)]);
        let unknown = InfoCapHeader {
            id: 77,
            version: 9,
            next: 48,
        }
        .to_bytes();
        let b = reply(
            80,
            fixed(BOTH, 24, 80),
            &[(24, &avail_cap(40, 3)), (40, &unknown), (48, &r)],
        );
        let info = parse_iommu_info(&b).unwrap();
        assert_eq!(info.dma_avail, Some(3));
        assert_eq!(
            info.ranges(),
            &[IovaRangeEntry {
                start: 0x1000,
                end: 0x1fff
            }]
        );
        // One byte short of the last range.
        assert_eq!(parse_iommu_info(&b[..79]), Err(Errno::EINVAL));
    }

    #[test]
    fn info_without_chain() {
        let b = reply(24, fixed(IOMMU_INFO_PGSIZES, 0, 24), &[]);
        let info = parse_iommu_info(&b).unwrap();
        assert_eq!((info.nr_ranges, info.dma_avail), (0, None));
        // Minimum size 16 is enough without CAPS; cap_offset is ignored without CAPS.
        assert!(parse_iommu_info(&b[..16]).is_ok());
        let b = reply(24, fixed(IOMMU_INFO_PGSIZES, 0x7777, 24), &[]);
        assert_eq!(parse_iommu_info(&b).unwrap().nr_ranges, 0);
        assert_eq!(parse_iommu_info(&b[..15]), Err(Errno::EINVAL));
        assert_eq!(IommuInfo::default().min_page_size(), None);
    }

    #[test]
    fn info_chain_too_long_for_the_buffer() {
        // The hypervisor raised argsz and wrote no chain.
        let b = reply(64, fixed(BOTH, 0, 2000), &[]);
        assert_eq!(parse_iommu_info(&b), Err(Errno::E2BIG));
        // CAPS in a reply too short for cap_offset.
        let b = reply(24, fixed(BOTH, 0, 2000), &[]);
        assert_eq!(parse_iommu_info(&b[..16]), Err(Errno::E2BIG));
        // CAPS, no chain, though it would have fit: malformed.
        let b = reply(64, fixed(BOTH, 0, 64), &[]);
        assert_eq!(parse_iommu_info(&b), Err(Errno::EINVAL));
    }

    #[test]
    fn info_hostile_chains() {
        let bad = |b: &[u8]| assert_eq!(parse_iommu_info(b), Err(Errno::EINVAL), "{b:?}");
        // A capability inside the fixed structure, at its own offset, or past the end.
        bad(&reply(64, fixed(BOTH, 8, 64), &[]));
        bad(&reply(64, fixed(BOTH, 60, 64), &[]));
        bad(&reply(64, fixed(BOTH, u32::MAX, 64), &[]));
        // A loop: 24 -> 40 -> 24.
        bad(&reply(
            64,
            fixed(BOTH, 24, 64),
            &[(24, &avail_cap(40, 1)), (40, &avail_cap(24, 2))],
        ));
        // A self loop through an unknown capability.
        let unknown = InfoCapHeader {
            id: 99,
            version: 1,
            next: 24,
        }
        .to_bytes();
        bad(&reply(64, fixed(BOTH, 24, 64), &[(24, &unknown)]));
        // Truncated DMA-avail capability (header fits, body does not).
        bad(&reply(
            36,
            fixed(BOTH, 24, 36),
            &[(24, &avail_cap(0, 1)[..12])],
        ));
        // nr_iovas beyond the buffer, and absurdly large.
        let mut r = ranges_cap(0, &[(0, 0xfff)]);
        r[8..12].copy_from_slice(&2u32.to_le_bytes());
        bad(&reply(64, fixed(BOTH, 24, 64), &[(24, &r)]));
        r[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        bad(&reply(64, fixed(BOTH, 24, 64), &[(24, &r)]));
        // An inverted range.
        bad(&reply(
            64,
            fixed(BOTH, 24, 64),
            &[(24, &ranges_cap(0, &[(0x2000, 0x1fff)]))],
        ));
    }

    #[test]
    fn info_many_ranges_and_duplicates() {
        let ranges: Vec<(u64, u64)> = (0..10).map(|i| (i << 20, (i << 20) + 0xfff)).collect();
        let r = ranges_cap(24 + 16 + 160, &ranges);
        let second = ranges_cap(0, &[(0, u64::MAX)]);
        let b = reply(1024, fixed(BOTH, 24, 1024), &[(24, &r), (200, &second)]);
        let info = parse_iommu_info(&b).unwrap();
        assert_eq!(info.nr_ranges, IOMMU_INFO_MAX_RANGES);
        assert_eq!(info.ranges().len(), 8);
        assert_eq!(
            info.ranges()[7],
            IovaRangeEntry {
                start: 7 << 20,
                end: (7 << 20) + 0xfff
            }
        );
        // Ranges past the eighth are still checked.
        let mut bad = ranges.clone();
        bad[9] = (0x2000, 0);
        let r = ranges_cap(0, &bad);
        assert_eq!(
            parse_iommu_info(&reply(1024, fixed(BOTH, 24, 1024), &[(24, &r)])),
            Err(Errno::EINVAL)
        );
    }

    fn entry(i: u32) -> GroupListEntry {
        GroupListEntry {
            group_id: i,
            group_flags: GROUP_LIST_OWNABLE,
            device_flags: if i == 0 { DEVICE_LIST_BRIDGE } else { 0 },
            class_code: 0x00ff00,
            segment: 0,
            bus: 0,
            devfn: (i as u8) << 3,
            vendor_id: 0x1234,
            device_id: 0x11e8,
        }
    }

    fn list_reply(len: usize, count: u32, entry_size: u32, written: u32) -> Vec<u8> {
        let mut b = vec![0u8; len];
        let header = GroupList {
            argsz: len as u32,
            flags: 0,
            count,
            entry_size,
        };
        b[..16].copy_from_slice(&header.to_bytes());
        for i in 0..written {
            let off = 16 + (i * entry_size) as usize;
            b[off..off + 24].copy_from_slice(&entry(i).to_bytes());
        }
        b
    }

    #[test]
    fn group_list_parsing() {
        let b = list_reply(16 + 3 * 24, 3, 24, 3);
        let mut out = [GroupListEntry::default(); 5];
        assert_eq!(parse_group_list(&b, &mut out), Ok(3));
        assert_eq!(&out[..3], &[entry(0), entry(1), entry(2)]);
        assert_eq!(out[3], GroupListEntry::default(), "untouched");

        // Fewer slots than entries.
        let mut two = [GroupListEntry::default(); 2];
        assert_eq!(parse_group_list(&b, &mut two), Ok(3));
        assert_eq!(two, [entry(0), entry(1)]);

        // More entries exist than the buffer holds: only those that fit are read.
        let b = list_reply(16 + 2 * 24 + 10, 100, 24, 2);
        let mut out = [GroupListEntry::default(); 5];
        assert_eq!(parse_group_list(&b, &mut out), Ok(100));
        assert_eq!(&out[..2], &[entry(0), entry(1)]);
        assert_eq!(out[2], GroupListEntry::default());

        // A later ABI with bigger entries.
        let b = list_reply(16 + 2 * 32, 2, 32, 2);
        assert_eq!(parse_group_list(&b, &mut out), Ok(2));
        assert_eq!(&out[..2], &[entry(0), entry(1)]);

        // Nothing there.
        assert_eq!(parse_group_list(&list_reply(16, 0, 0, 0), &mut out), Ok(0));
        assert_eq!(parse_group_list(&list_reply(16, 0, 24, 0), &mut []), Ok(0));
    }

    #[test]
    fn group_list_hostile() {
        let mut out = [GroupListEntry::default(); 4];
        for size in [0, 1, 23] {
            let b = list_reply(16 + 4 * 24, 4, size, 0);
            assert_eq!(parse_group_list(&b, &mut out), Err(Errno::EINVAL), "{size}");
        }
        assert_eq!(parse_group_list(&[0; 15], &mut out), Err(Errno::EINVAL));
        // A huge entry size just means nothing fits.
        let b = list_reply(16 + 4 * 24, 4, u32::MAX, 0);
        assert_eq!(parse_group_list(&b, &mut out), Ok(4));
    }

    #[test]
    fn every_memory_call_is_known() {
        for nr in crate::vfio::nr::GET_API_VERSION..crate::vfio::nr::END {
            let call = crate::vfio::decode(nr, [1, 0x5000, 7, 0, 0, 0]).unwrap();
            let carries = matches!(
                nr,
                crate::vfio::nr::IOMMU_GET_INFO
                    | crate::vfio::nr::MAP_DMA
                    | crate::vfio::nr::UNMAP_DMA
                    | crate::vfio::nr::GROUP_GET_STATUS
                    | crate::vfio::nr::GROUP_GET_DEVICE
                    | crate::vfio::nr::DEVICE_GET_INFO
                    | crate::vfio::nr::DEVICE_GET_REGION_INFO
                    | crate::vfio::nr::DEVICE_MAP_REGION
                    | crate::vfio::nr::GROUP_VM_INFO
                    | crate::vfio::nr::DEVICE_GET_IRQ_INFO
                    | crate::vfio::nr::DEVICE_SET_IRQS
                    | crate::vfio::nr::DEVICE_REGION_READ
                    | crate::vfio::nr::DEVICE_REGION_WRITE
            );
            if nr == crate::vfio::nr::GROUP_LIST {
                assert_eq!(memory_argument(&call), Some(1), "{call:?}");
            } else if carries {
                assert_eq!(memory_argument(&call), Some(0x5000), "{call:?}");
            } else {
                assert_eq!(memory_argument(&call), None, "{call:?}");
            }
        }
    }

    #[test]
    fn buffers_fit_the_limits() {
        assert_eq!(GROUP_LIST_BUFFER, 1552);
        assert_eq!(core::mem::align_of::<Aligned<3>>(), 8);
    }
}
