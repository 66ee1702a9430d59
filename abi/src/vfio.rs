//! VFIO over hypercalls: containers, groups and devices with handles in place of file
//! descriptors and `VMMCALL` in place of `ioctl`.
//!
//! The model is Linux VFIO's (`Documentation/driver-api/vfio.rst`): a *container* is an
//! IO address space (one IOMMU domain per remapping unit it spans); a *group* is the
//! smallest set of PCI functions the IOMMU can isolate, and the unit of ownership; a
//! *device* is one function of an open group. A guest opens the groups the hypervisor's
//! command line gives it (`guest=NAME:SIZE:groups=...`), puts them in a container, sets
//! the IOMMU model (type1v2), and maps its own RAM for DMA.
//!
//! # Handles
//!
//! Objects are named by *handles*: opaque values in `1..=i64::MAX` that the hypervisor
//! returns from [`nr::CONTAINER_CREATE`], [`nr::GROUP_OPEN`] and [`nr::GROUP_GET_DEVICE`].
//! A handle is valid only in the guest that received it, until [`nr::CLOSE`]. A closed,
//! forged or another guest's handle is [`Errno::EBADF`] — never some other object (the
//! hypervisor keeps a generation count per handle slot). A valid handle of the wrong kind
//! as the object of a call is [`Errno::ENOTTY`] (Linux: an ioctl on the wrong file); as
//! the container argument of [`nr::GROUP_SET_CONTAINER`] it is [`Errno::EINVAL`] (as in
//! Linux). When a guest ends, all its handles are closed.
//!
//! # Argument structures
//!
//! Structures are passed by guest-physical address (the guest's identity map makes that
//! its pointer) and start with `argsz: u32, flags: u32`:
//!
//! - `argsz` is the size the caller provides. The hypervisor requires `argsz >=` the
//!   structure's *minimum size* (the end of the last field the call reads; each struct's
//!   `MIN_SIZE`), else [`Errno::EINVAL`]; it reads and writes at most `argsz` bytes and
//!   never more than the structure's full size, plus (for info calls) the capability
//!   chain that follows it inside `argsz`.
//! - unknown `flags` bits are [`Errno::EINVAL`].
//! - the range `[gpa, gpa + argsz)` (bounded by [`MAX_ARGSZ`]) must lie in the guest's RAM,
//!   else [`Errno::EFAULT`] (or [`Errno::E2BIG`] beyond `MAX_ARGSZ`).
//! - a call that fails changes nothing, in the hypervisor or in the guest's structure.
//!
//! Info calls ([`nr::IOMMU_GET_INFO`]) may return a *capability chain* of
//! [`InfoCapHeader`]-headed records after the fixed structure, linked by `next` offsets
//! from the start of the structure (0 ends the chain). When `argsz` is too small for the
//! chain, the call still succeeds, sets the CAPS flag, writes `cap_offset = 0` and raises
//! `argsz` to the size needed: call again with a bigger buffer.
//!
//! All fields are little-endian; every structure's size and field offsets are checked at
//! compile time here and against the C header `abi/include/sluice.h` by a test.
//!
//! # The calls
//!
//! `c` = container handle, `g` = group handle, `d` = device handle, `gpa` = guest-physical
//! address of the structure. Every call can also fail with `EBADF` (a handle argument is
//! not a live handle of the caller), `ENOTTY` (the handle is of another kind) and
//! `EFAULT`/`E2BIG` (structure not inside the caller's RAM / `argsz` above [`MAX_ARGSZ`]).
//!
//! When several errors apply, the first found is returned, checking in this order:
//! arguments checked at decoding (the device-name length of [`nr::GROUP_GET_DEVICE`]),
//! the handle arguments (`EBADF`, `ENOTTY`), the object's state (e.g. `EINVAL`: no IOMMU
//! model set), the argument structure (`EFAULT` if its `argsz` field is not in the
//! caller's RAM, `EINVAL` if `argsz` is below the minimum, `E2BIG` above [`MAX_ARGSZ`],
//! `EFAULT` if `[gpa, gpa + argsz)` is not all RAM, `EINVAL` for unknown flags), then the
//! remaining conditions in the order each row below lists them.
//!
//! Besides the errors each row lists: a call that creates a handle fails with `ENOSPC`
//! when the caller already holds 64; calls that program the IOMMU (SET_IOMMU,
//! SET_CONTAINER, MAP_DMA, UNMAP_DMA) can fail with `ENOMEM` (no memory for tables),
//! `ENOSPC` (no free domain id), `ENODEV` (the unit refused the device) or `EBUSY` (the
//! unit did not confirm an invalidation in time: logged, and the unit is not trusted
//! afterwards); MAP_DMA and DEVICE_MAP_REGION fail with `ENOMEM` while the hypervisor's
//! heap is down to its reserve.
//!
//! | nr                              | args                 | result / errors |
//! |---------------------------------|----------------------|-----------------|
//! | [`nr::GET_API_VERSION`]         | —                    | [`API_VERSION`] (0) |
//! | [`nr::CHECK_EXTENSION`]         | RDI = extension      | 1 if supported ([`extension::TYPE1V2_IOMMU`], [`extension::UNMAP_ALL`]), else 0 |
//! | [`nr::CONTAINER_CREATE`]        | —                    | a container handle. `ENOSPC`: the caller's handle table is full; `ENOMEM` |
//! | [`nr::CONTAINER_SET_IOMMU`]     | RDI = c, RSI = type  | 0. `EINVAL`: no group in the container, or a model already set. `ENODEV`: `type` is not [`extension::TYPE1V2_IOMMU`]. `ENOSPC`/`ENOMEM`: no IOMMU domain could be created |
//! | [`nr::IOMMU_GET_INFO`]          | RDI = c, RSI = gpa   | 0, fills [`IommuType1Info`] + caps ([`IovaRangeCap`], [`DmaAvailCap`]). `EINVAL`: no model set, `argsz` below the minimum, flags ≠ 0 |
//! | [`nr::MAP_DMA`]                 | RDI = c, RSI = gpa   | 0 ([`DmaMap`]). `EINVAL`: no model set; flags not a non-empty subset of READ|WRITE; size 0; `vaddr`, `iova` or `size` not a multiple of the smallest page size; `iova + size` or `vaddr + size` wraps; `[iova, iova + size)` not inside one usable IOVA range. `EFAULT`: `[vaddr, vaddr + size)` is not wholly the caller's RAM (MMIO, the hypervisor's or another guest's memory are never mapped). `EEXIST`: overlaps an existing mapping. `ENOSPC`: [`DMA_MAPPINGS_MAX`] mappings exist. `ENOMEM`: the container's mappings would exceed the caller's RAM size in bytes (the pinned-memory limit, aliases counted each time), or no memory for page tables. On any error nothing is mapped |
//! | [`nr::UNMAP_DMA`]               | RDI = c, RSI = gpa   | 0 ([`DmaUnmap`]); writes back `size` = bytes unmapped (0 if nothing was mapped there). `EINVAL`: no model set; unknown flags; size 0; misaligned; wraps; the range would cut a mapping in two at either end; with [`DMA_UNMAP_FLAG_ALL`], `iova` or `size` ≠ 0 |
//! | [`nr::GROUP_LIST`]              | RDI = gpa            | 0, fills [`GroupList`] + [`GroupListEntry`] × n: every function that is in an IOMMU group, with its group's state for the caller. `EINVAL`: `argsz` below the minimum, flags ≠ 0 |
//! | [`nr::GROUP_OPEN`]              | RDI = group id       | a group handle. `ENOENT`: no such group. `EPERM`: the command line does not give the group to the caller. `EBUSY`: open (by this or another guest) |
//! | [`nr::GROUP_GET_STATUS`]        | RDI = g, RSI = gpa   | 0, fills [`GroupStatus`]: [`GROUP_FLAGS_VIABLE`], [`GROUP_FLAGS_CONTAINER_SET`]. `EINVAL`: `argsz`, flags |
//! | [`nr::GROUP_SET_CONTAINER`]     | RDI = g, RSI = c     | 0; existing mappings are replayed into the group's unit. `EINVAL`: already in a container, or `c` is not a container. `EPERM`: the group is not viable. `ENOSPC`/`ENOMEM`: no domain for a new unit |
//! | [`nr::GROUP_UNSET_CONTAINER`]   | RDI = g              | 0; the group's devices are blocked again; the last group out releases the model, the domains and every mapping. `EINVAL`: not in a container. `EBUSY`: a device of the group is open, or the group is bound to the VM ([`nr::GROUP_BIND_VM`]) |
//! | [`nr::CLOSE`]                   | RDI = handle         | 0 (any live handle). As with file descriptors, an object lives while referenced: a container while its handle is open or a group is in it; a group stays open (owned) while its handle or a device of it is open, or while it is bound to the VM ([`nr::GROUP_BIND_VM`]). When a group's last reference goes it is released: taken out of its container (devices blocked again), ready for the next owner |
//! | [`nr::GROUP_GET_DEVICE`]        | RDI = g, RSI = gpa of the name, RDX = length | a device handle. The name is `SSSS:BB:DD.F` (hex, as Linux). `EINVAL`: length 0 or above [`DEVICE_NAME_MAX`]. `ENODEV`: the name is not a function of the group that can be opened (not a bridge). `EINVAL`: the group has no container with a model set (checked after the name, as Linux does). `EBUSY`: already open |
//! | [`nr::DEVICE_GET_INFO`]         | RDI = d, RSI = gpa   | 0, fills [`DeviceInfo`] ([`DEVICE_FLAGS_PCI`], [`DEVICE_FLAGS_RESET`] when a reset method exists (see [`nr::DEVICE_RESET`]), [`NUM_REGIONS`], [`NUM_IRQS`]) |
//! | [`nr::DEVICE_GET_REGION_INFO`]  | RDI = d, RSI = gpa   | 0, fills [`RegionInfo`] for `index`: assigned memory BARs READ|WRITE (and MMAP when mappable), assigned I/O BARs READ|WRITE (never MMAP), the ROM READ with its BAR's size when firmware gave it an address (else size 0, no flags), config READ|WRITE, VGA size 0 (see *BAR and ROM regions*). `EINVAL`: index ≥ [`NUM_REGIONS`], `argsz`, flags |
//! | [`nr::DEVICE_MAP_REGION`]       | RDI = d, RSI = gpa   | 0: maps `[offset, offset + size)` of region `index` ([`RegionMap`]) at guest-physical `gpa`, uncached, until the device is closed. `EINVAL`: the region is not mappable ([`REGION_INFO_FLAG_MMAP`]), range not page aligned or outside the region, `gpa` overlaps the caller's RAM or wraps, flags ≠ 0. `EPERM`: the device's group is not bound to the VM ([`nr::GROUP_BIND_VM`]; as KVM needs the kvm-vfio registration; checked after those `EINVAL`s). Unbinding keeps the mappings made while bound (as Linux keeps a process's mmaps when the group leaves kvm-vfio) and refuses new ones. `EEXIST`: overlaps a region mapped before. `ENOSPC`: the device already has 16 regions mapped. `EINVAL` also when the BAR's host address is not plain device memory (RAM, firmware tables, the APIC window, IOMMU registers or ECAM are never handed out). `ENOMEM`: no memory for nested tables |
//! | [`nr::CONTAINER_DEBUG`]         | RDI = c, RSI = iova  | number of lines printed: the hypervisor logs each domain of the container, the context / device-table entry of each attached device and the page-table walk for `iova` (a teaching aid). `EINVAL`: no model set |
//! | [`nr::GROUP_BIND_VM`]           | RDI = g              | 0: the group is bound to the caller's VM (the VM becomes the group's *external user*, below). `EINVAL`: the group is in no container, or its container has no IOMMU model set. `EPERM`: the group is not viable. `EBUSY`: already bound |
//! | [`nr::GROUP_UNBIND_VM`]         | RDI = g              | 0: the binding is dropped (the group's reference with it); the group's devices' MSI, MSI-X and INTx are disabled; their BAR mappings stay until the device is closed, new ones are `EPERM`. `EINVAL`: not bound |
//! | [`nr::GROUP_VM_INFO`]           | RDI = g, RSI = gpa   | 0, fills [`GroupVmInfo`]: the group id (Linux `vfio_external_user_iommu_id`), the remapping unit translating its DMA, and [`GROUP_VM_INFO_COHERENT`]. `EINVAL`: not bound (checked first: the group's state), `argsz` below [`min_size::GROUP_VM_INFO`], flags ≠ 0 |
//! | [`nr::DEVICE_RESET`]            | RDI = d              | 0: the function was reset (FLR, else PM reset, else secondary bus reset; see *Reset*) and its config header restored. `EINVAL`: no reset method (as Linux). `ENODEV`: the function did not answer after the reset |
//! | [`nr::DEVICE_REGION_READ`]      | RDI = d, RSI = gpa   | 0; [`RegionAccess`]: reads `size` bytes at `offset` of region `index` and writes them back in `data`. `EINVAL`: flags ≠ 0; `index` not a readable region (config, an assigned BAR, an assigned ROM); `size` not 1, 2, 4 (config, I/O BARs, ROM) or 1, 2, 4, 8 (memory BARs); `offset` not a multiple of `size`; `offset + size` beyond the region; the platform refuses the address or port (see *BAR and ROM regions*) |
//! | [`nr::DEVICE_REGION_WRITE`]     | RDI = d, RSI = gpa   | 0; [`RegionAccess`]: writes the low `size` bytes of `data` at `offset` of region `index` (config writes are mediated, see *Config space*). Errors as [`nr::DEVICE_REGION_READ`]; the ROM is read only (`EINVAL`) |
//! | [`nr::DEVICE_GET_IRQ_INFO`]    | RDI = d, RSI = gpa   | 0, fills [`IrqInfo`] for `index` (see *Interrupts*). `EINVAL`: index ≥ [`NUM_IRQS`], `argsz` below [`min_size::IRQ_INFO`], flags ≠ 0 |
//! | [`nr::DEVICE_SET_IRQS`]         | RDI = d, RSI = gpa   | 0; [`IrqSet`] + data: binds, fires, masks or disables interrupts of `index` (see *Interrupts*). `EINVAL`: flags not exactly one `DATA_*` and one `ACTION_*` bit (or unknown bits); index ≥ [`NUM_IRQS`]; `start + count` beyond the index's count; `argsz` shorter than `24 + count × (1 for BOOL, 4 for EVENTFD)`; a virtual vector outside 32..=255 (or -1); enabling INTx, MSI or MSI-X while another of them is enabled; more than 32 MSI-X vectors; an MSI-X table the platform refuses; a `start + count` beyond the vectors MSI/MSI-X was enabled with; MASK/UNMASK/loopback/disable while the index is off; `DATA_EVENTFD` with MASK/UNMASK. `EPERM`: binding vectors or a loopback while the device's group is not bound to the VM ([`nr::GROUP_BIND_VM`]). `ENOSPC`: no free host vectors or remapping entries |
//!
//! Devices: opening a device turns on its memory decoding and bus mastering (and its
//! I/O decoding when it has I/O BARs, all assigned, as vfio-pci enables the device);
//! its DMA is still confined to the container's mappings by the IOMMU. Closing it turns
//! bus mastering off and removes its region mappings from the guest. Numbers
//! [`nr::END`]`..VFIO_BASE + 0x100` are reserved for the rest of the device model.
//!
//! # Reset
//!
//! A function has a reset method when it has one of, tried in this order: Function
//! Level Reset (PCIe Device Capabilities bit 28: Initiate FLR, wait 100 ms), a PM reset
//! (a power-management capability whose PMCSR No_Soft_Reset bit is 0: D3hot, 10 ms, D0,
//! 10 ms), or a secondary bus reset (the parent bridge's Bridge Control bit 6), offered
//! only when every function on that bus is in the device's IOMMU group. The config
//! header (command, BARs, expansion ROM, interrupt line, cache line / latency timer)
//! and MSI / MSI-X control are saved before and restored after the reset, so the
//! device decodes the same addresses again; its internal state is gone. The hypervisor
//! also resets every function of a group that has a method when the group is released
//! (after its DMA is blocked, before any next owner), and logs the method used.
//!
//! # Config space (region [`REGION_CONFIG`])
//!
//! Reads and writes through [`nr::DEVICE_REGION_READ`] / [`nr::DEVICE_REGION_WRITE`]
//! are mediated, so the owner can never reprogram what the host relies on:
//!
//! - BARs and the expansion ROM BAR are virtual registers: writing all-ones then
//!   reading gives the size mask (sizing works), any other write is kept virtually and
//!   read back (with the BAR's read-only flag bits); nothing reaches the hardware, which
//!   keeps decoding the addresses the host assigned (those [`nr::DEVICE_MAP_REGION`]
//!   maps). The upper half of a 64-bit BAR and unimplemented BARs size as 0.
//! - a bridge's bus numbers (0x18..0x1B) read the hardware; writes are dropped.
//! - MSI address and data are virtual: writes are kept and read back, never reach the
//!   hardware (the hypervisor owns them). MSI-X's address and data live in its table,
//!   inside a BAR, which the hypervisor programs itself (see *Interrupts*):
//!   [`nr::DEVICE_REGION_WRITE`]s that touch the table or the Pending Bit Array succeed
//!   and write nothing, and reads of the table return all-ones (as Linux's vfio-pci). A guest that
//!   *maps* the BAR ([`nr::DEVICE_MAP_REGION`]) can still write the table directly;
//!   that gives it no interrupt it could not already send: with interrupt remapping an
//!   entry can only name remapping entries written for this device (VT-d: source-id
//!   validated; AMD-Vi: the device's own table), i.e. host vectors routed to this
//!   guest's own vectors, and the hypervisor's mask still holds what it masked; without
//!   remapping the device could write the same message to the interrupt window by DMA
//!   anyway (Linux lets the table be mmapped when the IOMMU isolates interrupts, and
//!   without remapping refuses assignment unless `allow_unsafe_interrupts`: Sluice
//!   allows it, and then a guest can also aim its device at a vector the hypervisor
//!   treats as fatal). MSI's Enable and Multiple Message Enable and MSI-X's Enable and
//!   Function Mask are the hypervisor's: a guest's writes keep the hardware's bits
//!   (else a guest could leave messages live for the next owner). Device Control's Max
//!   Payload Size and Phantom Functions Enable are kept too.
//! - Device Control's Initiate FLR becomes the hypervisor's reset (as
//!   [`nr::DEVICE_RESET`]); PMCSR's power state is kept (a D3hot round trip would reset
//!   the function behind the host's back).
//! - COMMAND: only memory space and bus master pass through; INTx disable is the
//!   hypervisor's (it is how INTx is masked: use `DEVICE_SET_IRQS` on [`IRQ_INDEX_INTX`]),
//!   the I/O space bit and the rest are dropped (reads show the hardware).
//! - everything else reads and writes the hardware. Accesses of 1, 2 or 4 bytes,
//!   naturally aligned, inside the 4096 bytes; anything else is `EINVAL`.
//!
//! # BAR and ROM regions
//!
//! Memory BARs are readable and writable through [`nr::DEVICE_REGION_READ`] /
//! [`nr::DEVICE_REGION_WRITE`] (1, 2, 4, 8 bytes, aligned, in bounds) whether or not
//! they are mappable, while the function's memory decoding is on (off, the access would
//! be an Unsupported Request: `EINVAL`; Linux answers `EIO`). I/O BARs (never mappable:
//! x86 port I/O cannot be given to a guest page by page) are read and written by the
//! hypervisor's own `in`/`out` (1, 2, 4 bytes, aligned, in bounds); the function's I/O
//! decoding is on while it is open when every I/O BAR lies in 0x1000..=0xFFFF (else
//! no I/O BAR is offered: region flags 0). The
//! platform's ports are refused whatever a BAR claims: everything below 0x1000 (legacy
//! ISA devices, PCI configuration at 0xCF8/0xCFC, the ACPI PM block) and anything
//! past 0xFFFF. The ROM (region [`REGION_ROM`], read only, 1, 2, 4 bytes, aligned, in
//! bounds) is read from the address firmware assigned to the function's ROM BAR —
//! never the value the guest wrote to its virtual ROM BAR — with the ROM's decoding
//! (and memory decoding, if the guest turned it off) switched on for that one read and
//! restored after; a ROM with no address, or whose window is not plain device memory
//! or overlaps a BAR, is `EINVAL`. Every refused access is `EINVAL`, like a bad offset or size, and moves
//! no data; device memory that is RAM, firmware tables, the APIC window, IOMMU
//! registers or ECAM is refused as for [`nr::DEVICE_MAP_REGION`].
//!
//! # Interrupts
//!
//! A device's MSI, MSI-X or INTx reaches the hypervisor and is injected into the owning guest
//! as the vector the guest chose (Linux: VFIO signals an eventfd, KVM's irqfd injects
//! it; here both are the hypervisor). Indexes ([`IRQ_INDEX_INTX`] ...) and flags are
//! Linux's; where Linux passes an eventfd the guest passes a *virtual vector* (an `i32`,
//! 32..=255; -1 unbinds that one).
//!
//! [`nr::DEVICE_GET_IRQ_INFO`] reports, per index: INTx count 1 when the interrupt pin
//! is set and the hypervisor can route the line (the firmware's `_PRT` names its GSI
//! and an I/O APIC has it), flags [`IRQ_INFO_EVENTFD`] | [`IRQ_INFO_MASKABLE`] |
//! [`IRQ_INFO_AUTOMASKED`]; MSI count = the vectors the MSI capability can request (0
//! without one), flags [`IRQ_INFO_EVENTFD`] | [`IRQ_INFO_MASKABLE`] |
//! [`IRQ_INFO_NORESIZE`]; MSI-X count = its table size (0 without the capability, or
//! when the table does not lie inside an assigned memory BAR), the same flags as MSI;
//! ERR and REQ count 0.
//!
//! [`nr::DEVICE_SET_IRQS`] (Linux `VFIO_DEVICE_SET_IRQS`), on MSI and MSI-X (the same
//! rules; "MSI" below means either, each on its own index):
//!
//! - `DATA_EVENTFD | ACTION_TRIGGER`: `count` × `i32` virtual vectors for subindexes
//!   `start..start + count`. The first binding enables MSI with `start + count` vectors
//!   (the device is programmed for the next power of two); later calls may only
//!   (re)bind or unbind (-1) vectors inside that count. An unbound vector's interrupts
//!   are dropped. Needs the VM binding (`EPERM`), as KVM needs kvm-vfio.
//! - `DATA_NONE | ACTION_TRIGGER` with `count` 0: disable MSI (every vector unbound; no
//!   VM binding needed). With `count` > 0, and `DATA_BOOL` (one `u8` per vector,
//!   non-zero = fire): fire the bound vectors as if the device had sent them (a loopback
//!   test).
//! - `ACTION_MASK` / `ACTION_UNMASK` with `DATA_NONE` (the whole range) or `DATA_BOOL`
//!   (the vectors whose byte is non-zero): masked vectors are held, not injected; an
//!   interrupt that arrives while masked is pending and injected once on unmask (as the
//!   MSI pending bit would). The capability's per-vector mask bits are set too when it
//!   has them (MSI-X: the table entry's mask bit always, so the device holds the
//!   message in its Pending Bit Array and sends it on unmask); otherwise the mask is the
//!   hypervisor's alone.
//!
//! MSI-X specifics: at most 32 vectors can be enabled (`start + count` of the enabling
//! call ≤ 32, `EINVAL` beyond, even when the table is larger: one interrupt-remapping
//! block holds 32); the hypervisor writes entry `i`'s address, data and mask bit itself
//! through its checked MMIO (memory decoding switched on for the accesses if the guest
//! turned it off), in the PCI specification's order — Function Mask and MSI-X Enable
//! set, the enabled entries written, every other entry masked with its message zeroed,
//! Function Mask cleared — and disabling masks and zeroes every entry before MSI-X
//! Enable goes off. A table the platform refuses to reach is `EINVAL`.
//!
//! On INTx (`start` 0, `count` 1; level-triggered and *automasked*, as in Linux):
//!
//! - `DATA_EVENTFD | ACTION_TRIGGER`: one `i32` virtual vector; the first call enables
//!   INTx (even with -1, which leaves it unbound: its interrupts are dropped, as
//!   Linux); later calls rebind or unbind. Needs the VM binding (`EPERM`).
//!   `DATA_NONE | ACTION_TRIGGER` with `count` 0 disables it; with `count` 1 (or
//!   `DATA_BOOL` non-zero) it is a loopback. Every other call needs `count` 1.
//! - A GSI is shared only among one guest's devices: enabling INTx on a line another
//!   guest's device has enabled is `EBUSY` (a guest could otherwise make the shared
//!   line fire unclaimed). A line that fires 1000 times in a row with no device
//!   asserting is left masked until one of its devices is unmasked or enabled again.
//!   Only functions whose Interrupt Disable works (PCI 2.3 masking) are offered INTx.
//! - Each interrupt masks the device (PCI 2.3 Interrupt Disable, COMMAND bit 10) before
//!   the guest sees it: service the device (acknowledge its interrupt), then
//!   `ACTION_UNMASK`; a device still asserting then interrupts again at once.
//!   `ACTION_MASK` masks it by hand. (`DATA_NONE`, or `DATA_BOOL` non-zero.)
//!
//! Errors are checked in this order: the structure (flags, index, range, data length;
//! ERR and REQ have count 0, so any range is out) (`EINVAL`); the VM binding (`EPERM`);
//! the vectors' values and the interrupt state — enabling one type (INTx, MSI, MSI-X)
//! while another is enabled, masking or disabling what is not enabled, more than 32
//! MSI-X vectors, an MSI-X table the platform refuses (`EINVAL`); INTx on a line another
//! guest uses (`EBUSY`); host vectors or remapping entries (`ENOSPC`); an I/O APIC pin
//! the IOMMU or the I/O APIC would not route (`ENODEV`).
//!
//! How it works: each enabled MSI or MSI-X gets an aligned block of host vectors (from
//! 0x40..=0xEF, a power of two); the device's MSI capability is programmed with the
//! host's local APIC, MSI enabled with the Multiple Message Enable for the block (MSI-X:
//! entry `i` gets the block's message with data + `i`), INTx disabled (COMMAND
//! bit 10). Where the IOMMU remaps interrupts (VT-d with ECAP.IR, AMD-Vi when the IVRS
//! names the I/O APIC) the message names remapping entries only this device's
//! requester id may use; without remapping it is a compatibility-format message
//! (address `0xFEE00000 | apic_id << 12`, data = the vector), and nothing stops a
//! device from writing another interrupt message than the one programmed: a guest that
//! controls the device's DMA engine could send any host vector. An enabled INTx routes
//! the I/O APIC pin of the device's GSI to one host vector (level-triggered, through a
//! remapping entry of the I/O APIC's on VT-d), shared by every device on that GSI; the
//! hypervisor asks each device whether it asserts (STATUS bit 3). The host interrupt
//! handler records the vector; after each guest exit (and while every guest waits in
//! HLT) the hypervisor maps it to (guest, virtual vector) and injects it (waking a guest
//! halted in HLT). Closing the device, unbinding its group from the VM, or the guest's
//! end disables MSI, MSI-X and INTx (MSI-X: every table entry masked and zeroed), frees
//! the host vectors and remapping entries and drops the routes. After a `DEVICE_RESET`
//! (or Initiate FLR) the hypervisor writes the MSI-X table the reset cleared again
//! (same messages and masks); MSI's capability is part of the saved header.
//!
//! # Binding a group to the VM (the external user)
//!
//! Linux lets a second consumer inside the kernel (KVM) take a reference on a group that
//! user space put in a container with an IOMMU model set: the *external user*
//! (`vfio_group_get_external_user`, `..._from_dev`, `vfio_group_put_external_user`,
//! `vfio_external_user_iommu_id`). In Sluice the VM itself is that consumer, and
//! [`nr::GROUP_BIND_VM`] takes the reference on the VM's behalf (at most one binding per
//! group; the hypervisor's own components may hold further references):
//!
//! - it succeeds only for a group in a container whose IOMMU model is set, and that is
//!   viable. The checks run in that order, so a group that is not viable — which can
//!   never be put in a container ([`nr::GROUP_SET_CONTAINER`] is `EPERM`) — gets
//!   `EINVAL` in practice, like any group without a container;
//! - while bound, [`nr::GROUP_UNSET_CONTAINER`] is `EBUSY` (the group's container, its
//!   model, domains and mappings therefore stay), and the group cannot be disposed:
//!   [`nr::CLOSE`] of its handle succeeds but, like an open device, the binding keeps the
//!   group open, in its container and bound. Having closed the handle, the guest can no
//!   longer name the group (to unbind it, or reopen it: `EBUSY`); the binding then lasts
//!   until the guest ends;
//! - what goes *into the VM* needs the binding, as KVM needs the kvm-vfio registration:
//!   routing a device's interrupts ([`nr::DEVICE_SET_IRQS`]) and mapping its BARs into
//!   guest-physical space ([`nr::DEVICE_MAP_REGION`]) are `EPERM` for a device whose
//!   group is not bound;
//! - [`nr::GROUP_UNBIND_VM`] drops it: the group's devices' MSIs are disabled (their
//!   routes lead into the VM), but BAR mappings made while bound stay until the device is
//!   closed — Linux does not unmap a process's mmaps of a device when its group is
//!   deleted from kvm-vfio — while new ones are refused. When the guest ends, its
//!   bindings are dropped first, then its handles closed.
//!
//! [`nr::GROUP_VM_INFO`] answers, for a bound group, what KVM asks VFIO: the group's id
//! and whether DMA through its remapping unit is cache-coherent.

use crate::Errno;

/// Returned by [`nr::GET_API_VERSION`] (Linux's `VFIO_API_VERSION`).
pub const API_VERSION: u64 = 0;

/// The most bytes any argument structure (with its capability chain or entries) may
/// claim in `argsz`.
pub const MAX_ARGSZ: u32 = 64 * 1024;

/// The longest device name [`nr::GROUP_GET_DEVICE`] accepts.
pub const DEVICE_NAME_MAX: u64 = 64;

/// The most DMA mappings one container holds (Linux's `dma_entry_limit` default).
pub const DMA_MAPPINGS_MAX: u32 = 65535;

/// Hypercall numbers of the VFIO calls (RAX), from [`crate::nr::VFIO_BASE`].
pub mod nr {
    use crate::nr::VFIO_BASE;
    pub const GET_API_VERSION: u64 = VFIO_BASE;
    pub const CHECK_EXTENSION: u64 = VFIO_BASE + 0x01;
    pub const CONTAINER_CREATE: u64 = VFIO_BASE + 0x02;
    pub const CONTAINER_SET_IOMMU: u64 = VFIO_BASE + 0x03;
    pub const IOMMU_GET_INFO: u64 = VFIO_BASE + 0x04;
    pub const MAP_DMA: u64 = VFIO_BASE + 0x05;
    pub const UNMAP_DMA: u64 = VFIO_BASE + 0x06;
    pub const GROUP_LIST: u64 = VFIO_BASE + 0x07;
    pub const GROUP_OPEN: u64 = VFIO_BASE + 0x08;
    pub const GROUP_GET_STATUS: u64 = VFIO_BASE + 0x09;
    pub const GROUP_SET_CONTAINER: u64 = VFIO_BASE + 0x0a;
    pub const GROUP_UNSET_CONTAINER: u64 = VFIO_BASE + 0x0b;
    pub const CLOSE: u64 = VFIO_BASE + 0x0c;
    pub const GROUP_GET_DEVICE: u64 = VFIO_BASE + 0x0d;
    pub const DEVICE_GET_INFO: u64 = VFIO_BASE + 0x0e;
    pub const DEVICE_GET_REGION_INFO: u64 = VFIO_BASE + 0x0f;
    pub const DEVICE_MAP_REGION: u64 = VFIO_BASE + 0x10;
    pub const CONTAINER_DEBUG: u64 = VFIO_BASE + 0x11;
    pub const GROUP_BIND_VM: u64 = VFIO_BASE + 0x12;
    pub const GROUP_UNBIND_VM: u64 = VFIO_BASE + 0x13;
    pub const GROUP_VM_INFO: u64 = VFIO_BASE + 0x14;
    // Device interrupts.
    pub const DEVICE_GET_IRQ_INFO: u64 = VFIO_BASE + 0x15;
    pub const DEVICE_SET_IRQS: u64 = VFIO_BASE + 0x16;
    // Device reset and region access (the device model).
    pub const DEVICE_RESET: u64 = VFIO_BASE + 0x17;
    pub const DEVICE_REGION_READ: u64 = VFIO_BASE + 0x18;
    pub const DEVICE_REGION_WRITE: u64 = VFIO_BASE + 0x19;
    /// One past the last VFIO number defined in this version.
    pub const END: u64 = VFIO_BASE + 0x1a;
    /// One past the last number reserved for VFIO.
    pub const RESERVED_END: u64 = VFIO_BASE + 0x100;
}

/// Extensions for [`nr::CHECK_EXTENSION`] and IOMMU models for
/// [`nr::CONTAINER_SET_IOMMU`] (Linux's numbers).
pub mod extension {
    /// Type1 (v1: unmap may split large pages). Not offered: 0.
    pub const TYPE1_IOMMU: u64 = 1;
    /// Type1v2: the only model Sluice offers.
    pub const TYPE1V2_IOMMU: u64 = 3;
    /// `UNMAP_DMA` with [`super::DMA_UNMAP_FLAG_ALL`].
    pub const UNMAP_ALL: u64 = 9;
}

/// Defines a little-endian wire structure: a `repr(C)` struct whose fields are integers
/// or byte arrays with no implicit padding, its `SIZE`, `to_bytes`/`from_bytes`, and
/// compile-time checks of size and offsets.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        pub struct $name:ident ($size:expr) {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $off:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[repr(C)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// Size in bytes.
            pub const SIZE: usize = $size;

            /// The structure's bytes, little-endian.
            pub fn to_bytes(&self) -> [u8; $size] {
                let mut b = [0u8; $size];
                $( b[$off..$off + core::mem::size_of::<$ty>()]
                    .copy_from_slice(&self.$field.to_le_bytes()); )*
                b
            }

            /// The structure from its bytes (no validation).
            pub fn from_bytes(b: &[u8; $size]) -> Self {
                Self {
                    $( $field: {
                        let mut x = [0u8; core::mem::size_of::<$ty>()];
                        x.copy_from_slice(&b[$off..$off + core::mem::size_of::<$ty>()]);
                        <$ty>::from_le_bytes(x)
                    }, )*
                }
            }

            /// The structure from the first `min(bytes.len(), SIZE)` bytes, the rest
            /// zero (for an `argsz` shorter than the whole structure).
            pub fn from_prefix(bytes: &[u8]) -> Self {
                let mut b = [0u8; $size];
                let n = bytes.len().min($size);
                b[..n].copy_from_slice(&bytes[..n]);
                Self::from_bytes(&b)
            }
        }

        const _: () = assert!(core::mem::size_of::<$name>() == $size);
        $( const _: () = assert!(core::mem::offset_of!($name, $field) == $off); )*
    };
}

wire_struct! {
    /// [`nr::IOMMU_GET_INFO`] (Linux `struct vfio_iommu_type1_info`). Minimum size 16
    /// (through `iova_pgsizes`); `cap_offset` is written when `argsz >= 24`.
    pub struct IommuType1Info (24) {
        argsz: u32 = 0,
        /// In: 0. Out: [`IOMMU_INFO_PGSIZES`], plus [`IOMMU_INFO_CAPS`] when a chain exists.
        flags: u32 = 4,
        /// Out: page sizes the container's domains all support (bit n = 2^n bytes).
        iova_pgsizes: u64 = 8,
        /// Out: offset of the first capability from the start of this structure, or 0.
        cap_offset: u32 = 16,
        _pad: u32 = 20,
    }
}

/// `IommuType1Info::flags`: `iova_pgsizes` is valid.
pub const IOMMU_INFO_PGSIZES: u32 = 1 << 0;
/// `IommuType1Info::flags`: a capability chain exists (see `cap_offset`, `argsz`).
pub const IOMMU_INFO_CAPS: u32 = 1 << 1;

wire_struct! {
    /// Header of one capability in a chain (Linux `struct vfio_info_cap_header`).
    pub struct InfoCapHeader (8) {
        id: u16 = 0,
        version: u16 = 2,
        /// Offset of the next capability from the start of the info structure; 0 = last.
        next: u32 = 4,
    }
}

/// Capability id of [`IovaRangeCap`] (Linux `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`).
pub const CAP_IOVA_RANGE: u16 = 1;
/// Capability id of [`DmaAvailCap`] (Linux `VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`).
pub const CAP_DMA_AVAIL: u16 = 3;

wire_struct! {
    /// The usable IOVA ranges: this header, then `nr_iovas` × [`IovaRangeEntry`].
    pub struct IovaRangeCap (16) {
        id: u16 = 0,
        version: u16 = 2,
        next: u32 = 4,
        nr_iovas: u32 = 8,
        _reserved: u32 = 12,
    }
}

wire_struct! {
    /// One usable IOVA range, inclusive (`end` is the last usable byte).
    pub struct IovaRangeEntry (16) {
        start: u64 = 0,
        end: u64 = 8,
    }
}

wire_struct! {
    /// How many more DMA mappings the container accepts (Linux
    /// `struct vfio_iommu_type1_info_dma_avail`, with explicit tail padding).
    pub struct DmaAvailCap (16) {
        id: u16 = 0,
        version: u16 = 2,
        next: u32 = 4,
        avail: u32 = 8,
        _pad: u32 = 12,
    }
}

wire_struct! {
    /// [`nr::MAP_DMA`] (Linux `struct vfio_iommu_type1_dma_map`). Minimum size 32.
    pub struct DmaMap (32) {
        argsz: u32 = 0,
        /// [`DMA_MAP_FLAG_READ`] | [`DMA_MAP_FLAG_WRITE`]: what the device may do.
        flags: u32 = 4,
        /// Guest-physical address of the memory to map (Linux: the process's vaddr).
        vaddr: u64 = 8,
        iova: u64 = 16,
        size: u64 = 24,
    }
}

/// The device may read the memory (DMA to the device).
pub const DMA_MAP_FLAG_READ: u32 = 1 << 0;
/// The device may write the memory.
pub const DMA_MAP_FLAG_WRITE: u32 = 1 << 1;

wire_struct! {
    /// [`nr::UNMAP_DMA`] (Linux `struct vfio_iommu_type1_dma_unmap` without the dirty
    /// bitmap). Minimum size 24. `size` is written back with the bytes unmapped.
    pub struct DmaUnmap (24) {
        argsz: u32 = 0,
        /// 0 or [`DMA_UNMAP_FLAG_ALL`].
        flags: u32 = 4,
        iova: u64 = 8,
        size: u64 = 16,
    }
}

/// Unmap every mapping of the container (`iova` and `size` must be 0). Linux's bit 1.
pub const DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;

wire_struct! {
    /// [`nr::GROUP_GET_STATUS`] (Linux `struct vfio_group_status`). Minimum size 8.
    pub struct GroupStatus (8) {
        argsz: u32 = 0,
        flags: u32 = 4,
    }
}

/// Every device of the group is free for the caller: none is used by the hypervisor or
/// anyone else (bridges and ports don't count).
pub const GROUP_FLAGS_VIABLE: u32 = 1 << 0;
/// The group is in a container.
pub const GROUP_FLAGS_CONTAINER_SET: u32 = 1 << 1;

wire_struct! {
    /// [`nr::GROUP_LIST`]: this header, then entries. Minimum size 16.
    ///
    /// Out: `count` = the number of entries that exist; as many as fit in `argsz` are
    /// written after the header, and when not all fit `argsz` is raised to the size
    /// needed (`16 + count * 24`) and the call still succeeds.
    pub struct GroupList (16) {
        argsz: u32 = 0,
        flags: u32 = 4,
        count: u32 = 8,
        /// Out: [`GroupListEntry::SIZE`], so that entries may grow later.
        entry_size: u32 = 12,
    }
}

wire_struct! {
    /// One PCI function in an IOMMU group, with the group's state for the caller.
    pub struct GroupListEntry (24) {
        group_id: u32 = 0,
        /// [`GROUP_LIST_OWNABLE`], [`GROUP_LIST_OPEN`], [`GROUP_LIST_BUSY`],
        /// [`GROUP_LIST_VIABLE`].
        group_flags: u32 = 4,
        /// [`DEVICE_LIST_BRIDGE`], [`DEVICE_LIST_HOST`].
        device_flags: u32 = 8,
        /// Base class, subclass, programming interface (24 bits).
        class_code: u32 = 12,
        segment: u16 = 16,
        bus: u8 = 18,
        devfn: u8 = 19,
        vendor_id: u16 = 20,
        device_id: u16 = 22,
    }
}

/// The command line gives this group to the caller: [`nr::GROUP_OPEN`] may succeed.
pub const GROUP_LIST_OWNABLE: u32 = 1 << 0;
/// The caller has the group open.
pub const GROUP_LIST_OPEN: u32 = 1 << 1;
/// Another guest has the group open.
pub const GROUP_LIST_BUSY: u32 = 1 << 2;
/// The group would be viable for the caller (see [`GROUP_FLAGS_VIABLE`]).
pub const GROUP_LIST_VIABLE: u32 = 1 << 3;
/// The function is a bridge or port (doesn't count for viability, is never a device).
pub const DEVICE_LIST_BRIDGE: u32 = 1 << 0;
/// The hypervisor uses the function itself, or firmware reserves host memory for it
/// (RMRR / IVMD): its group is not viable for anyone.
pub const DEVICE_LIST_HOST: u32 = 1 << 1;

wire_struct! {
    /// [`nr::GROUP_VM_INFO`]: what the VM, the group's external user, learns about a
    /// bound group. Minimum size 16 (the whole structure).
    pub struct GroupVmInfo (16) {
        argsz: u32 = 0,
        /// In: 0. Out: [`GROUP_VM_INFO_COHERENT`].
        flags: u32 = 4,
        /// Out: the IOMMU group id (Linux `vfio_external_user_iommu_id`), as
        /// [`nr::GROUP_OPEN`] takes it.
        group_id: u32 = 8,
        /// Out: the remapping unit that translates the group's DMA, numbered in firmware
        /// table order (DRHD / IVHD order: `dmar0`, `ivhd0` = 0); the lowest when its
        /// functions sit behind several.
        unit: u32 = 12,
    }
}

/// `GroupVmInfo::flags`: DMA through the group's remapping unit (every unit, if several)
/// is cache-coherent: the unit snoops the CPU caches (VT-d: ECAP.C; AMD-Vi: the IVHD's
/// Coherent flag). It describes the unit; Sluice does not force a device's no-snoop
/// requests to snoop (VT-d SNP, AMD-Vi FC stay clear), so a VM whose device issues
/// no-snoop DMA still needs WBINVD to reach memory (Linux: KVM's non-coherent DMA).
pub const GROUP_VM_INFO_COHERENT: u32 = 1 << 0;

wire_struct! {
    /// [`nr::DEVICE_GET_INFO`] (Linux `struct vfio_device_info`). Minimum size 16.
    pub struct DeviceInfo (24) {
        argsz: u32 = 0,
        flags: u32 = 4,
        num_regions: u32 = 8,
        num_irqs: u32 = 12,
        cap_offset: u32 = 16,
        _pad: u32 = 20,
    }
}

/// `DeviceInfo::flags`: a reset method exists.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// `DeviceInfo::flags`: a PCI device.
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;
/// Regions of a PCI device: BAR0–5, ROM, config, VGA.
pub const NUM_REGIONS: u32 = 9;
/// Interrupt indexes of a PCI device: INTx, MSI, MSI-X, ERR, REQ.
pub const NUM_IRQS: u32 = 5;
/// Region indexes.
pub const REGION_BAR0: u32 = 0;
pub const REGION_BAR5: u32 = 5;
pub const REGION_ROM: u32 = 6;
pub const REGION_CONFIG: u32 = 7;
pub const REGION_VGA: u32 = 8;
/// A region's `offset` is its index shifted by this (Linux vfio-pci's convention).
pub const REGION_OFFSET_SHIFT: u32 = 40;

wire_struct! {
    /// [`nr::DEVICE_GET_REGION_INFO`] (Linux `struct vfio_region_info`). Minimum size 32.
    pub struct RegionInfo (32) {
        argsz: u32 = 0,
        /// Out: [`REGION_INFO_FLAG_READ`], [`REGION_INFO_FLAG_WRITE`],
        /// [`REGION_INFO_FLAG_MMAP`].
        flags: u32 = 4,
        /// In: the region.
        index: u32 = 8,
        cap_offset: u32 = 12,
        /// Out: bytes (0: not implemented, e.g. the upper half of a 64-bit BAR).
        size: u64 = 16,
        /// Out: `index << 40`.
        offset: u64 = 24,
    }
}

pub const REGION_INFO_FLAG_READ: u32 = 1 << 0;
pub const REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// The region can be mapped into the guest ([`nr::DEVICE_MAP_REGION`]).
pub const REGION_INFO_FLAG_MMAP: u32 = 1 << 2;

wire_struct! {
    /// [`nr::DEVICE_MAP_REGION`]: map `[offset, offset + size)` of region `index` at
    /// guest-physical `gpa` (Linux: `mmap` of the device file). Minimum size 40.
    pub struct RegionMap (40) {
        argsz: u32 = 0,
        /// 0.
        flags: u32 = 4,
        index: u32 = 8,
        _pad: u32 = 12,
        /// Offset inside the region (page aligned).
        offset: u64 = 16,
        /// Bytes (page aligned, not 0).
        size: u64 = 24,
        /// Where the guest wants it (page aligned, outside its RAM).
        gpa: u64 = 32,
    }
}

wire_struct! {
    /// [`nr::DEVICE_REGION_READ`] / [`nr::DEVICE_REGION_WRITE`]: one access of `size`
    /// bytes at `offset` inside region `index` (Linux: `pread`/`pwrite` of the device
    /// file at `(index << 40) + offset`). Minimum size 32 (the whole structure).
    pub struct RegionAccess (32) {
        argsz: u32 = 0,
        /// 0.
        flags: u32 = 4,
        /// The region ([`REGION_BAR0`]..=[`REGION_BAR5`], [`REGION_ROM`] (read only),
        /// [`REGION_CONFIG`]).
        index: u32 = 8,
        /// Bytes: 1, 2, 4 or 8 (8: memory BARs only); `offset` must be a multiple of it.
        size: u32 = 12,
        /// Offset inside the region.
        offset: u64 = 16,
        /// Write: the value (low `size` bytes). Read: written back with the value read,
        /// zero-extended.
        data: u64 = 24,
    }
}

wire_struct! {
    /// [`nr::DEVICE_GET_IRQ_INFO`] (Linux `struct vfio_irq_info`). Minimum size 16 (the
    /// whole structure).
    pub struct IrqInfo (16) {
        argsz: u32 = 0,
        /// In: 0. Out: [`IRQ_INFO_EVENTFD`], [`IRQ_INFO_MASKABLE`],
        /// [`IRQ_INFO_AUTOMASKED`], [`IRQ_INFO_NORESIZE`].
        flags: u32 = 4,
        /// In: the index ([`IRQ_INDEX_INTX`] ..= [`IRQ_INDEX_REQ`]).
        index: u32 = 8,
        /// Out: how many interrupts the index has.
        count: u32 = 12,
    }
}

/// `IrqInfo::flags`: vectors can be bound ([`IRQ_SET_DATA_EVENTFD`]; Linux: eventfds).
pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// `IrqInfo::flags`: [`IRQ_SET_ACTION_MASK`] / [`IRQ_SET_ACTION_UNMASK`] work.
pub const IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// `IrqInfo::flags`: the interrupt masks itself when it fires (level-triggered INTx).
pub const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// `IrqInfo::flags`: the number of vectors is fixed once enabled.
pub const IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// Interrupt indexes of a PCI device (Linux `VFIO_PCI_*_IRQ_INDEX`).
pub const IRQ_INDEX_INTX: u32 = 0;
pub const IRQ_INDEX_MSI: u32 = 1;
pub const IRQ_INDEX_MSIX: u32 = 2;
pub const IRQ_INDEX_ERR: u32 = 3;
pub const IRQ_INDEX_REQ: u32 = 4;

wire_struct! {
    /// [`nr::DEVICE_SET_IRQS`] (Linux `struct vfio_irq_set`, with explicit padding):
    /// this header, then `count` data items from offset 24: none
    /// ([`IRQ_SET_DATA_NONE`]), `u8` ([`IRQ_SET_DATA_BOOL`]) or `i32` virtual vectors
    /// ([`IRQ_SET_DATA_EVENTFD`]). Minimum size 24; `argsz` covers the data.
    pub struct IrqSet (24) {
        argsz: u32 = 0,
        /// Exactly one `IRQ_SET_DATA_*` and one `IRQ_SET_ACTION_*` bit.
        flags: u32 = 4,
        index: u32 = 8,
        /// First subindex.
        start: u32 = 12,
        /// Subindexes `start..start + count`.
        count: u32 = 16,
        _pad: u32 = 20,
    }
}

/// `IrqSet::flags`: no data (the whole range).
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `IrqSet::flags`: one `u8` per subindex (non-zero: act on it).
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// `IrqSet::flags`: one `i32` per subindex: the virtual vector (32..=255) to inject, or
/// -1 to unbind (Linux: an eventfd).
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// `IrqSet::flags`: mask (hold) the interrupts.
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// `IrqSet::flags`: unmask them (a held one is injected).
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// `IrqSet::flags`: bind (EVENTFD), fire as a loopback (NONE/BOOL), or with NONE and
/// `count` 0 disable the index.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// All `IRQ_SET_DATA_*` bits.
pub const IRQ_SET_DATA_TYPE_MASK: u32 = 0x7;
/// All `IRQ_SET_ACTION_*` bits.
pub const IRQ_SET_ACTION_TYPE_MASK: u32 = 0x38;
/// The lowest virtual vector a guest may bind (0..=31 are exceptions).
pub const IRQ_VECTOR_MIN: i32 = 32;
/// Unbind a subindex ([`IRQ_SET_DATA_EVENTFD`]).
pub const IRQ_VECTOR_NONE: i32 = -1;

/// A decoded VFIO hypercall. Structure arguments are guest-physical addresses, still to
/// be validated against the caller's RAM; handles are still to be looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VfioCall {
    GetApiVersion,
    CheckExtension {
        extension: u64,
    },
    ContainerCreate,
    SetIommu {
        container: u64,
        iommu_type: u64,
    },
    IommuGetInfo {
        container: u64,
        info: u64,
    },
    MapDma {
        container: u64,
        map: u64,
    },
    UnmapDma {
        container: u64,
        unmap: u64,
    },
    GroupList {
        list: u64,
    },
    GroupOpen {
        group_id: u64,
    },
    GroupGetStatus {
        group: u64,
        status: u64,
    },
    GroupSetContainer {
        group: u64,
        container: u64,
    },
    GroupUnsetContainer {
        group: u64,
    },
    Close {
        handle: u64,
    },
    /// `name_len` is 1..=[`DEVICE_NAME_MAX`] (checked by [`decode`]).
    GroupGetDevice {
        group: u64,
        name: u64,
        name_len: u64,
    },
    DeviceGetInfo {
        device: u64,
        info: u64,
    },
    DeviceGetRegionInfo {
        device: u64,
        info: u64,
    },
    DeviceMapRegion {
        device: u64,
        map: u64,
    },
    ContainerDebug {
        container: u64,
        iova: u64,
    },
    GroupBindVm {
        group: u64,
    },
    GroupUnbindVm {
        group: u64,
    },
    GroupVmInfo {
        group: u64,
        info: u64,
    },
    DeviceGetIrqInfo {
        device: u64,
        info: u64,
    },
    DeviceSetIrqs {
        device: u64,
        set: u64,
    },
    DeviceReset {
        device: u64,
    },
    DeviceRegionRead {
        device: u64,
        access: u64,
    },
    DeviceRegionWrite {
        device: u64,
        access: u64,
    },
}

impl VfioCall {
    /// The hypercall number.
    pub const fn nr(&self) -> u64 {
        match self {
            Self::GetApiVersion => nr::GET_API_VERSION,
            Self::CheckExtension { .. } => nr::CHECK_EXTENSION,
            Self::ContainerCreate => nr::CONTAINER_CREATE,
            Self::SetIommu { .. } => nr::CONTAINER_SET_IOMMU,
            Self::IommuGetInfo { .. } => nr::IOMMU_GET_INFO,
            Self::MapDma { .. } => nr::MAP_DMA,
            Self::UnmapDma { .. } => nr::UNMAP_DMA,
            Self::GroupList { .. } => nr::GROUP_LIST,
            Self::GroupOpen { .. } => nr::GROUP_OPEN,
            Self::GroupGetStatus { .. } => nr::GROUP_GET_STATUS,
            Self::GroupSetContainer { .. } => nr::GROUP_SET_CONTAINER,
            Self::GroupUnsetContainer { .. } => nr::GROUP_UNSET_CONTAINER,
            Self::Close { .. } => nr::CLOSE,
            Self::GroupGetDevice { .. } => nr::GROUP_GET_DEVICE,
            Self::DeviceGetInfo { .. } => nr::DEVICE_GET_INFO,
            Self::DeviceGetRegionInfo { .. } => nr::DEVICE_GET_REGION_INFO,
            Self::DeviceMapRegion { .. } => nr::DEVICE_MAP_REGION,
            Self::ContainerDebug { .. } => nr::CONTAINER_DEBUG,
            Self::GroupBindVm { .. } => nr::GROUP_BIND_VM,
            Self::GroupUnbindVm { .. } => nr::GROUP_UNBIND_VM,
            Self::GroupVmInfo { .. } => nr::GROUP_VM_INFO,
            Self::DeviceGetIrqInfo { .. } => nr::DEVICE_GET_IRQ_INFO,
            Self::DeviceSetIrqs { .. } => nr::DEVICE_SET_IRQS,
            Self::DeviceReset { .. } => nr::DEVICE_RESET,
            Self::DeviceRegionRead { .. } => nr::DEVICE_REGION_READ,
            Self::DeviceRegionWrite { .. } => nr::DEVICE_REGION_WRITE,
        }
    }

    /// The registers that make this call: `(rax, [rdi, rsi, rdx, r10, r8, r9])`.
    pub const fn encode(&self) -> (u64, [u64; 6]) {
        let a = match *self {
            Self::GetApiVersion | Self::ContainerCreate => [0, 0, 0],
            Self::CheckExtension { extension } => [extension, 0, 0],
            Self::SetIommu {
                container,
                iommu_type,
            } => [container, iommu_type, 0],
            Self::IommuGetInfo { container, info } => [container, info, 0],
            Self::MapDma { container, map } => [container, map, 0],
            Self::UnmapDma { container, unmap } => [container, unmap, 0],
            Self::GroupList { list } => [list, 0, 0],
            Self::GroupOpen { group_id } => [group_id, 0, 0],
            Self::GroupGetStatus { group, status } => [group, status, 0],
            Self::GroupSetContainer { group, container } => [group, container, 0],
            Self::GroupUnsetContainer { group } => [group, 0, 0],
            Self::Close { handle } => [handle, 0, 0],
            Self::GroupGetDevice {
                group,
                name,
                name_len,
            } => [group, name, name_len],
            Self::DeviceGetInfo { device, info } => [device, info, 0],
            Self::DeviceGetRegionInfo { device, info } => [device, info, 0],
            Self::DeviceMapRegion { device, map } => [device, map, 0],
            Self::ContainerDebug { container, iova } => [container, iova, 0],
            Self::GroupBindVm { group } | Self::GroupUnbindVm { group } => [group, 0, 0],
            Self::GroupVmInfo { group, info } => [group, info, 0],
            Self::DeviceGetIrqInfo { device, info } => [device, info, 0],
            Self::DeviceSetIrqs { device, set } => [device, set, 0],
            Self::DeviceReset { device } => [device, 0, 0],
            Self::DeviceRegionRead { device, access }
            | Self::DeviceRegionWrite { device, access } => [device, access, 0],
        };
        (self.nr(), [a[0], a[1], a[2], 0, 0, 0])
    }
}

/// Decode a VFIO hypercall (`nr` in `VFIO_BASE..RESERVED_END`). Numbers not defined in
/// this version give [`Errno::ENOSYS`]; a device name length outside
/// `1..=DEVICE_NAME_MAX` gives [`Errno::EINVAL`].
pub const fn decode(nr: u64, a: [u64; 6]) -> Result<VfioCall, Errno> {
    Ok(match nr {
        nr::GET_API_VERSION => VfioCall::GetApiVersion,
        nr::CHECK_EXTENSION => VfioCall::CheckExtension { extension: a[0] },
        nr::CONTAINER_CREATE => VfioCall::ContainerCreate,
        nr::CONTAINER_SET_IOMMU => VfioCall::SetIommu {
            container: a[0],
            iommu_type: a[1],
        },
        nr::IOMMU_GET_INFO => VfioCall::IommuGetInfo {
            container: a[0],
            info: a[1],
        },
        nr::MAP_DMA => VfioCall::MapDma {
            container: a[0],
            map: a[1],
        },
        nr::UNMAP_DMA => VfioCall::UnmapDma {
            container: a[0],
            unmap: a[1],
        },
        nr::GROUP_LIST => VfioCall::GroupList { list: a[0] },
        nr::GROUP_OPEN => VfioCall::GroupOpen { group_id: a[0] },
        nr::GROUP_GET_STATUS => VfioCall::GroupGetStatus {
            group: a[0],
            status: a[1],
        },
        nr::GROUP_SET_CONTAINER => VfioCall::GroupSetContainer {
            group: a[0],
            container: a[1],
        },
        nr::GROUP_UNSET_CONTAINER => VfioCall::GroupUnsetContainer { group: a[0] },
        nr::CLOSE => VfioCall::Close { handle: a[0] },
        nr::GROUP_GET_DEVICE => {
            if a[2] == 0 || a[2] > DEVICE_NAME_MAX {
                return Err(Errno::EINVAL);
            }
            VfioCall::GroupGetDevice {
                group: a[0],
                name: a[1],
                name_len: a[2],
            }
        }
        nr::DEVICE_GET_INFO => VfioCall::DeviceGetInfo {
            device: a[0],
            info: a[1],
        },
        nr::DEVICE_GET_REGION_INFO => VfioCall::DeviceGetRegionInfo {
            device: a[0],
            info: a[1],
        },
        nr::DEVICE_MAP_REGION => VfioCall::DeviceMapRegion {
            device: a[0],
            map: a[1],
        },
        nr::CONTAINER_DEBUG => VfioCall::ContainerDebug {
            container: a[0],
            iova: a[1],
        },
        nr::GROUP_BIND_VM => VfioCall::GroupBindVm { group: a[0] },
        nr::GROUP_UNBIND_VM => VfioCall::GroupUnbindVm { group: a[0] },
        nr::GROUP_VM_INFO => VfioCall::GroupVmInfo {
            group: a[0],
            info: a[1],
        },
        nr::DEVICE_GET_IRQ_INFO => VfioCall::DeviceGetIrqInfo {
            device: a[0],
            info: a[1],
        },
        nr::DEVICE_SET_IRQS => VfioCall::DeviceSetIrqs {
            device: a[0],
            set: a[1],
        },
        nr::DEVICE_RESET => VfioCall::DeviceReset { device: a[0] },
        nr::DEVICE_REGION_READ => VfioCall::DeviceRegionRead {
            device: a[0],
            access: a[1],
        },
        nr::DEVICE_REGION_WRITE => VfioCall::DeviceRegionWrite {
            device: a[0],
            access: a[1],
        },
        _ => return Err(Errno::ENOSYS),
    })
}

/// Check an `argsz` read from a guest structure: at least `min` (else `EINVAL`), at most
/// [`MAX_ARGSZ`] (else `E2BIG`).
pub const fn check_argsz(argsz: u32, min: usize) -> Result<(), Errno> {
    if (argsz as usize) < min {
        Err(Errno::EINVAL)
    } else if argsz > MAX_ARGSZ {
        Err(Errno::E2BIG)
    } else {
        Ok(())
    }
}

/// Minimum `argsz` of each structure (the end of the last field the call reads).
pub mod min_size {
    pub const IOMMU_INFO: usize = 16;
    pub const DMA_MAP: usize = 32;
    pub const DMA_UNMAP: usize = 24;
    pub const GROUP_STATUS: usize = 8;
    pub const GROUP_LIST: usize = 16;
    pub const DEVICE_INFO: usize = 16;
    pub const REGION_INFO: usize = 32;
    pub const REGION_MAP: usize = 40;
    pub const GROUP_VM_INFO: usize = 16;
    pub const REGION_ACCESS: usize = 32;
    pub const IRQ_INFO: usize = 16;
    pub const IRQ_SET: usize = 24;
}

/// A PCI function's name as VFIO writes it: `SSSS:BB:DD.F`, lower-case hex.
pub fn format_device_name(segment: u16, bus: u8, devfn: u8) -> [u8; 12] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let h = |v: u32, shift: u32| HEX[((v >> shift) & 0xf) as usize];
    let s = segment as u32;
    let (b, d, f) = (bus as u32, (devfn >> 3) as u32, (devfn & 7) as u32);
    [
        h(s, 12),
        h(s, 8),
        h(s, 4),
        h(s, 0),
        b':',
        h(b, 4),
        h(b, 0),
        b':',
        h(d, 4),
        h(d, 0),
        b'.',
        HEX[f as usize],
    ]
}

/// Parse a device name `SSSS:BB:DD.F` (hex, either case) into `(segment, bus, devfn)`.
/// The short form `BB:DD.F` means segment 0. `None` for anything else.
pub fn parse_device_name(name: &[u8]) -> Option<(u16, u8, u8)> {
    let s = core::str::from_utf8(name).ok()?;
    let (seg, rest) = match s.len() {
        12 => (u16::from_str_radix(s.get(0..4)?, 16).ok()?, s.get(5..)?),
        7 => (0, s),
        _ => return None,
    };
    if s.len() == 12 && s.as_bytes()[4] != b':' {
        return None;
    }
    let b = rest.as_bytes();
    if b.len() != 7 || b[2] != b':' || b[5] != b'.' {
        return None;
    }
    let hex = |t: &str| {
        if t.bytes().all(|c| c.is_ascii_hexdigit()) {
            u8::from_str_radix(t, 16).ok()
        } else {
            None
        }
    };
    let bus = hex(rest.get(0..2)?)?;
    let dev = hex(rest.get(3..5)?)?;
    let func = hex(rest.get(6..7)?)?;
    if dev > 31 || func > 7 {
        return None;
    }
    if !s
        .get(0..4)
        .is_some_and(|t| t.bytes().all(|c| c.is_ascii_hexdigit()))
        && s.len() == 12
    {
        return None;
    }
    Some((seg, bus, dev << 3 | func))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_fixed() {
        assert_eq!(IommuType1Info::SIZE, 24);
        assert_eq!(DmaMap::SIZE, 32);
        assert_eq!(DmaUnmap::SIZE, 24);
        assert_eq!(GroupStatus::SIZE, 8);
        assert_eq!(GroupList::SIZE, 16);
        assert_eq!(GroupListEntry::SIZE, 24);
        assert_eq!(DeviceInfo::SIZE, 24);
        assert_eq!(RegionInfo::SIZE, 32);
        assert_eq!(RegionMap::SIZE, 40);
        assert_eq!(IovaRangeCap::SIZE, 16);
        assert_eq!(DmaAvailCap::SIZE, 16);
        assert_eq!(GroupVmInfo::SIZE, 16);
        assert_eq!(min_size::GROUP_VM_INFO, GroupVmInfo::SIZE);
    }

    #[test]
    fn external_user_numbers_follow_container_debug() {
        assert_eq!(nr::GROUP_BIND_VM, nr::CONTAINER_DEBUG + 1);
        assert_eq!(nr::GROUP_UNBIND_VM, nr::CONTAINER_DEBUG + 2);
        assert_eq!(nr::GROUP_VM_INFO, nr::CONTAINER_DEBUG + 3);
        const { assert!(nr::END > nr::GROUP_VM_INFO) };
        const { assert!(nr::END < nr::RESERVED_END) };
        assert_eq!(
            decode(nr::GROUP_VM_INFO, [7, 0x5000, 0, 0, 0, 0]),
            Ok(VfioCall::GroupVmInfo {
                group: 7,
                info: 0x5000
            })
        );
        assert_eq!(
            decode(nr::GROUP_BIND_VM, [7, 0, 0, 0, 0, 0]),
            Ok(VfioCall::GroupBindVm { group: 7 })
        );
    }

    #[test]
    fn reset_and_region_access_numbers() {
        assert_eq!(nr::DEVICE_RESET, crate::nr::VFIO_BASE + 0x17);
        assert_eq!(nr::DEVICE_REGION_READ, crate::nr::VFIO_BASE + 0x18);
        assert_eq!(nr::DEVICE_REGION_WRITE, crate::nr::VFIO_BASE + 0x19);
        assert_eq!(nr::END, crate::nr::VFIO_BASE + 0x1a);
        assert_eq!(RegionAccess::SIZE, 32);
        assert_eq!(min_size::REGION_ACCESS, RegionAccess::SIZE);
        assert_eq!(
            decode(nr::DEVICE_RESET, [9, 0, 0, 0, 0, 0]),
            Ok(VfioCall::DeviceReset { device: 9 })
        );
        assert_eq!(
            decode(nr::DEVICE_REGION_WRITE, [9, 0x4000, 0, 0, 0, 0]),
            Ok(VfioCall::DeviceRegionWrite {
                device: 9,
                access: 0x4000
            })
        );
        let a = RegionAccess {
            argsz: 32,
            flags: 0,
            index: 7,
            size: 4,
            offset: 0x10,
            data: 0xffff_ffff,
        };
        let b = a.to_bytes();
        assert_eq!(&b[8..12], &7u32.to_le_bytes());
        assert_eq!(&b[16..24], &0x10u64.to_le_bytes());
        assert_eq!(RegionAccess::from_bytes(&b), a);
    }

    #[test]
    fn irq_numbers_and_layouts() {
        assert_eq!(nr::DEVICE_GET_IRQ_INFO, crate::nr::VFIO_BASE + 0x15);
        assert_eq!(nr::DEVICE_SET_IRQS, crate::nr::VFIO_BASE + 0x16);
        assert_eq!(IrqInfo::SIZE, 16);
        assert_eq!(IrqSet::SIZE, 24);
        assert_eq!(min_size::IRQ_INFO, IrqInfo::SIZE);
        assert_eq!(min_size::IRQ_SET, IrqSet::SIZE);
        // Linux's bit values.
        assert_eq!(
            (IRQ_SET_DATA_NONE, IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD),
            (1, 2, 4)
        );
        assert_eq!(
            (
                IRQ_SET_ACTION_MASK,
                IRQ_SET_ACTION_UNMASK,
                IRQ_SET_ACTION_TRIGGER
            ),
            (8, 16, 32)
        );
        assert_eq!(IRQ_INDEX_REQ + 1, NUM_IRQS);
        assert_eq!(
            decode(nr::DEVICE_SET_IRQS, [3, 0x6000, 0, 0, 0, 0]),
            Ok(VfioCall::DeviceSetIrqs {
                device: 3,
                set: 0x6000
            })
        );
        assert_eq!(
            decode(nr::DEVICE_GET_IRQ_INFO, [3, 0x6000, 0, 0, 0, 0]),
            Ok(VfioCall::DeviceGetIrqInfo {
                device: 3,
                info: 0x6000
            })
        );
    }

    #[test]
    fn bytes_round_trip() {
        let m = DmaMap {
            argsz: 32,
            flags: 3,
            vaddr: 0x1122_3344_5566_7788,
            iova: 0x10_0000,
            size: 0x2000,
        };
        let b = m.to_bytes();
        assert_eq!(&b[0..4], &32u32.to_le_bytes());
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(DmaMap::from_bytes(&b), m);
        assert_eq!(DmaMap::from_prefix(&b[..8]).vaddr, 0);
        assert_eq!(DmaMap::from_prefix(&b[..8]).flags, 3);
        let e = GroupListEntry {
            group_id: 7,
            bus: 1,
            devfn: 0x18,
            vendor_id: 0x1234,
            device_id: 0x11e8,
            ..Default::default()
        };
        let b = e.to_bytes();
        assert_eq!(b[18], 1);
        assert_eq!(b[19], 0x18);
        assert_eq!(GroupListEntry::from_bytes(&b), e);
    }

    #[test]
    fn decode_all_and_unknown() {
        for nr in nr::GET_API_VERSION..nr::END {
            let args = [5, 6, 7, 0, 0, 0];
            let call = decode(nr, args).expect("defined");
            assert_eq!(call.nr(), nr);
            let (n, a) = call.encode();
            assert_eq!(n, nr);
            assert_eq!(decode(n, a), Ok(call));
        }
        for nr in [nr::END, nr::END + 1, nr::RESERVED_END - 1] {
            assert_eq!(decode(nr, [0; 6]), Err(Errno::ENOSYS));
        }
        assert_eq!(
            decode(nr::GROUP_GET_DEVICE, [1, 2, 0, 0, 0, 0]),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            decode(nr::GROUP_GET_DEVICE, [1, 2, DEVICE_NAME_MAX + 1, 0, 0, 0]),
            Err(Errno::EINVAL)
        );
        assert_eq!(check_argsz(7, 8), Err(Errno::EINVAL));
        assert_eq!(check_argsz(8, 8), Ok(()));
        assert_eq!(check_argsz(MAX_ARGSZ + 1, 8), Err(Errno::E2BIG));
    }

    #[test]
    fn device_names() {
        assert_eq!(&format_device_name(0, 0, 3 << 3), b"0000:00:03.0");
        assert_eq!(
            &format_device_name(0xabcd, 0xfe, 31 << 3 | 7),
            b"abcd:fe:1f.7"
        );
        assert_eq!(parse_device_name(b"0000:00:03.0"), Some((0, 0, 0x18)));
        assert_eq!(parse_device_name(b"00:1F.7"), Some((0, 0, 0xff)));
        assert_eq!(parse_device_name(b"0001:02:00.1"), Some((1, 2, 1)));
        for bad in [
            &b""[..],
            b"0000:00:20.0",
            b"0000:00:03.8",
            b"0000-00:03.0",
            b"000g:00:03.0",
            b"00:03:0",
            b"+0:03.0",
            b"0000:00:03.00",
            "0000:00:03.é".as_bytes(),
        ] {
            assert_eq!(parse_device_name(bad), None, "{bad:?}");
        }
    }
}
