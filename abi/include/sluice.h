/*
 * sluice.h: the Sluice hypercall ABI for C guests.
 *
 * This header mirrors the Rust crate sluice-abi (abi/src/lib.rs, abi/src/vfio.rs), which
 * is the written specification: read it for the full semantics of every call. Layouts
 * and values here are checked against the Rust definitions by abi/tests/c_header.rs
 * (sizeof/offsetof of every structure and field, the value of every constant).
 *
 * Plain C99 with <stdint.h> and <stddef.h>; the only extensions used are GNU inline
 * assembly (in sluice_hypercall, x86-64 only) and, outside C11, __extension__ on the
 * _Static_assert checks. Usable from C++ as well.
 *
 * Calling convention (lib.rs, "Calling convention"): VMMCALL at CPL 0 with
 *   RAX = hypercall number, RDI, RSI, RDX, R10, R8, R9 = arguments 0..5
 * Result in RAX as a signed 64-bit value: >= 0 is success, -4095..-1 is -errno
 * (SLUICE_E*). Every other register, RFLAGS and the x87/SSE state are preserved. Pass 0
 * for unused arguments. Unknown numbers fail with -SLUICE_ENOSYS.
 *
 * Arguments larger than a register are passed by guest-physical address (a guest's
 * identity map makes that its pointer). All fields are little-endian; every structure
 * has explicit padding (fields named _pad / _reserved: write 0).
 */
#ifndef SLUICE_H
#define SLUICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__cplusplus)
#define SLUICE_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define SLUICE_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#elif defined(__GNUC__)
/* C99 with GCC or Clang: _Static_assert is an extension there. */
#define SLUICE_STATIC_ASSERT(cond, msg) __extension__ _Static_assert(cond, msg)
#else
#define SLUICE_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/* ===================================================================================== */
/* Core ABI (lib.rs)                                                                     */
/* ===================================================================================== */

/* The ABI version: returned by SLUICE_NR_VERSION and CPUID leaf SLUICE_CPUID_LEAF_VERSION,
 * stored in sluice_guest_start_info.abi_version. */
#define SLUICE_ABI_VERSION UINT32_C(1)

/* ---- Core hypercall numbers (RAX); lib.rs `nr` ---- */

/* () -> SLUICE_ABI_VERSION. */
#define SLUICE_NR_VERSION UINT64_C(0)
/* (RDI = GPA of bytes, RSI = length <= SLUICE_CONSOLE_WRITE_MAX) -> bytes written.
 * Longer: -E2BIG; buffer outside RAM: -EFAULT. Bytes need not be UTF-8. */
#define SLUICE_NR_CONSOLE_WRITE UINT64_C(1)
/* (RDI = exit status) -> never returns. */
#define SLUICE_NR_EXIT UINT64_C(2)
/* () -> 0. Does nothing: measures the hypercall round trip. */
#define SLUICE_NR_NULL UINT64_C(3)
/* (RDI = vector, 32..255) -> 0: the vector is injected into the caller once RFLAGS.IF = 1.
 * Other vectors: -EINVAL. */
#define SLUICE_NR_SELF_INTERRUPT UINT64_C(4)
/* The first VFIO number (SLUICE_NR_VFIO_*); 5..0xff are reserved for core calls. */
#define SLUICE_NR_VFIO_BASE UINT64_C(0x100)

/* The most bytes one SLUICE_NR_CONSOLE_WRITE accepts. */
#define SLUICE_CONSOLE_WRITE_MAX UINT64_C(4096)

/* ---- Errno values (positive; RAX carries the negation); lib.rs `Errno` ---- */

#define SLUICE_EPERM 1   /* operation not permitted */
#define SLUICE_ENOENT 2  /* no such entry */
#define SLUICE_E2BIG 7   /* a length above the call's maximum */
#define SLUICE_EBADF 9   /* bad handle: closed, forged or another guest's */
#define SLUICE_ENOMEM 12 /* out of memory */
#define SLUICE_EFAULT 14 /* guest-memory range outside the caller's RAM, or wrapping */
#define SLUICE_EBUSY 16  /* resource busy */
#define SLUICE_EEXIST 17 /* already exists */
#define SLUICE_ENODEV 19 /* no such device */
#define SLUICE_EINVAL 22 /* invalid argument */
#define SLUICE_ENOTTY 25 /* a handle of the wrong kind for the call */
#define SLUICE_ENOSPC 28 /* no space left */
#define SLUICE_ENOSYS 38 /* no such hypercall */
/* Results in -SLUICE_MAX_ERRNO..-1 are errors. */
#define SLUICE_MAX_ERRNO 4095

/* ---- CPUID discovery ---- */

/* EAX = SLUICE_CPUID_MAX_LEAF; EBX, ECX, EDX = "Slui", "ceSl", "uice". */
#define SLUICE_CPUID_LEAF_SIGNATURE UINT32_C(0x40000000)
/* EAX = SLUICE_ABI_VERSION; EBX = ECX = EDX = 0. */
#define SLUICE_CPUID_LEAF_VERSION UINT32_C(0x40000001)
#define SLUICE_CPUID_MAX_LEAF UINT32_C(0x40000001)
/* The 12 signature bytes, and the registers that carry them. */
#define SLUICE_SIGNATURE "SluiceSluice"
#define SLUICE_SIGNATURE_EBX UINT32_C(0x69756c53) /* "Slui" */
#define SLUICE_SIGNATURE_ECX UINT32_C(0x6c536563) /* "ceSl" */
#define SLUICE_SIGNATURE_EDX UINT32_C(0x65636975) /* "uice" */

/* ---- Guest memory layout and entry state ---- */

/* Guest RAM is [ram_base, ram_base + ram_size); the first SLUICE_GUEST_RESERVED_END bytes
 * belong to the hypervisor (no image segment may load there). */
#define SLUICE_GUEST_RAM_BASE UINT64_C(0)
/* Where the start info is; RDI holds this address at guest entry. */
#define SLUICE_GUEST_START_INFO_GPA UINT64_C(0x1000)
/* Where the command line is (not NUL-terminated). */
#define SLUICE_GUEST_CMDLINE_GPA UINT64_C(0x2000)
#define SLUICE_GUEST_CMDLINE_MAX UINT32_C(4096)
/* The initial RSP is at or below this (16-byte aligned). */
#define SLUICE_GUEST_STACK_TOP UINT64_C(0x100000)
#define SLUICE_GUEST_RESERVED_END UINT64_C(0x100000)
/* sluice_guest_start_info.magic: the bytes "SLCGUEST" as a little-endian uint64_t. */
#define SLUICE_GUEST_START_MAGIC UINT64_C(0x5453455547434c53)
#define SLUICE_GUEST_NAME_MAX 32
#define SLUICE_GUEST_START_INFO_SIZE 80

/* What the hypervisor tells a guest at entry (lib.rs `GuestStartInfo`). */
struct sluice_guest_start_info {
    uint64_t magic;       /* SLUICE_GUEST_START_MAGIC */
    uint32_t abi_version; /* SLUICE_ABI_VERSION */
    uint32_t _pad;        /* 0 */
    uint64_t ram_base;
    uint64_t ram_size;
    uint64_t cmdline_gpa;
    uint32_t cmdline_len; /* bytes, no NUL; 0 = no command line */
    uint32_t name_len;    /* <= SLUICE_GUEST_NAME_MAX */
    uint8_t name[SLUICE_GUEST_NAME_MAX]; /* UTF-8, NUL-padded */
};

/* ===================================================================================== */
/* VFIO (vfio.rs): containers, groups, devices; handles instead of file descriptors      */
/* ===================================================================================== */
/*
 * Handles are opaque values in 1..INT64_MAX, valid in the guest that received them until
 * SLUICE_NR_VFIO_CLOSE. A closed, forged or another guest's handle: -EBADF; a live handle
 * of the wrong kind: -ENOTTY (as GROUP_SET_CONTAINER's container argument: -EINVAL).
 *
 * Argument structures start with `argsz, flags`: argsz >= the structure's minimum size
 * (SLUICE_VFIO_MIN_SIZE_*) else -EINVAL, <= SLUICE_VFIO_MAX_ARGSZ else -E2BIG; the
 * hypervisor reads and writes at most argsz bytes. Unknown flags: -EINVAL. A failing call
 * changes nothing. Every call may also fail with -EBADF, -ENOTTY, -EFAULT, -E2BIG.
 *
 * c = container handle, g = group handle, d = device handle, gpa = address of the
 * structure. See vfio.rs ("The calls") for every error of every call.
 */

/* Returned by SLUICE_NR_VFIO_GET_API_VERSION (Linux VFIO_API_VERSION). */
#define SLUICE_VFIO_API_VERSION UINT64_C(0)
/* The most bytes any argument structure (with its chain or entries) may claim in argsz. */
#define SLUICE_VFIO_MAX_ARGSZ UINT32_C(65536)
/* The longest device name SLUICE_NR_VFIO_GROUP_GET_DEVICE accepts. */
#define SLUICE_VFIO_DEVICE_NAME_MAX UINT64_C(64)
/* The most DMA mappings one container holds. */
#define SLUICE_VFIO_DMA_MAPPINGS_MAX UINT32_C(65535)

/* ---- VFIO hypercall numbers (RAX); vfio.rs `nr` ---- */

/* () -> SLUICE_VFIO_API_VERSION. */
#define SLUICE_NR_VFIO_GET_API_VERSION UINT64_C(0x100)
/* (RDI = extension) -> 1 if supported (TYPE1v2_IOMMU, UNMAP_ALL), else 0. */
#define SLUICE_NR_VFIO_CHECK_EXTENSION UINT64_C(0x101)
/* () -> a container handle. -ENOSPC: handle table full; -ENOMEM. */
#define SLUICE_NR_VFIO_CONTAINER_CREATE UINT64_C(0x102)
/* (RDI = c, RSI = IOMMU type) -> 0. -EINVAL: no group in the container, model already
 * set; -ENODEV: type is not SLUICE_VFIO_TYPE1v2_IOMMU; -ENOSPC/-ENOMEM. */
#define SLUICE_NR_VFIO_CONTAINER_SET_IOMMU UINT64_C(0x103)
/* (RDI = c, RSI = gpa of sluice_vfio_iommu_type1_info) -> 0, fills it and the capability
 * chain (IOVA ranges, DMA avail) when argsz has room, else sets CAPS, cap_offset = 0 and
 * raises argsz to the size needed. -EINVAL: no model set, argsz, flags. */
#define SLUICE_NR_VFIO_IOMMU_GET_INFO UINT64_C(0x104)
/* (RDI = c, RSI = gpa of sluice_vfio_iommu_type1_dma_map) -> 0. -EINVAL: no model, bad
 * flags, size 0, misaligned, wraps, not inside one IOVA range; -EFAULT: [vaddr, +size)
 * is not the caller's RAM; -EEXIST: overlaps; -ENOSPC: too many mappings; -ENOMEM. */
#define SLUICE_NR_VFIO_MAP_DMA UINT64_C(0x105)
/* (RDI = c, RSI = gpa of sluice_vfio_iommu_type1_dma_unmap) -> 0, size = bytes unmapped.
 * -EINVAL: no model, flags, size 0, misaligned, wraps, would split a mapping; with
 * FLAG_ALL, iova or size != 0. */
#define SLUICE_NR_VFIO_UNMAP_DMA UINT64_C(0x106)
/* (RDI = gpa of sluice_vfio_group_list + entries) -> 0; count = entries that exist, as
 * many as fit are written, argsz raised when not all fit. -EINVAL: argsz, flags. */
#define SLUICE_NR_VFIO_GROUP_LIST UINT64_C(0x107)
/* (RDI = group id) -> a group handle. -ENOENT: no such group; -EPERM: not given to the
 * caller; -EBUSY: already open. */
#define SLUICE_NR_VFIO_GROUP_OPEN UINT64_C(0x108)
/* (RDI = g, RSI = gpa of sluice_vfio_group_status) -> 0, flags = GROUP_FLAGS_*. */
#define SLUICE_NR_VFIO_GROUP_GET_STATUS UINT64_C(0x109)
/* (RDI = g, RSI = c) -> 0. -EINVAL: already in a container, c not a container; -EPERM:
 * not viable; -ENOSPC/-ENOMEM. */
#define SLUICE_NR_VFIO_GROUP_SET_CONTAINER UINT64_C(0x10a)
/* (RDI = g) -> 0. -EINVAL: not in a container; -EBUSY: a device of the group is open, or
 * the group is bound to the VM (GROUP_BIND_VM). */
#define SLUICE_NR_VFIO_GROUP_UNSET_CONTAINER UINT64_C(0x10b)
/* (RDI = handle) -> 0. Objects live while referenced (like file descriptors). */
#define SLUICE_NR_VFIO_CLOSE UINT64_C(0x10c)
/* (RDI = g, RSI = gpa of the name "SSSS:BB:DD.F", RDX = length) -> a device handle.
 * -EINVAL: length 0 or > DEVICE_NAME_MAX, no container/model; -ENODEV; -EBUSY. */
#define SLUICE_NR_VFIO_GROUP_GET_DEVICE UINT64_C(0x10d)
/* (RDI = d, RSI = gpa of sluice_vfio_device_info) -> 0. */
#define SLUICE_NR_VFIO_DEVICE_GET_INFO UINT64_C(0x10e)
/* (RDI = d, RSI = gpa of sluice_vfio_region_info) -> 0. -EINVAL: index >= NUM_REGIONS. */
#define SLUICE_NR_VFIO_DEVICE_GET_REGION_INFO UINT64_C(0x10f)
/* (RDI = d, RSI = gpa of sluice_vfio_region_map) -> 0: region mapped at gpa, uncached,
 * until the device is closed. -EINVAL: not mappable, misaligned, outside the region,
 * gpa overlaps RAM or wraps, flags; -EPERM: the device's group is not bound to the VM
 * (GROUP_BIND_VM; mappings made while bound stay after unbinding); -EEXIST: overlaps an
 * earlier region mapping. */
#define SLUICE_NR_VFIO_DEVICE_MAP_REGION UINT64_C(0x110)
/* (RDI = c, RSI = iova) -> lines the hypervisor logged about the container's domains,
 * devices and the page walk for iova. -EINVAL: no model set. */
#define SLUICE_NR_VFIO_CONTAINER_DEBUG UINT64_C(0x111)
/* (RDI = g) -> 0: the group is bound to the caller's VM (its external user): UNSET_CONTAINER
 * is -EBUSY and the group stays open (even with its handle closed) until unbound or the
 * guest ends. -EINVAL: no container or no IOMMU model set; -EPERM: not viable; -EBUSY:
 * already bound. */
#define SLUICE_NR_VFIO_GROUP_BIND_VM UINT64_C(0x112)
/* (RDI = g) -> 0: binding dropped; the group's devices' MSIs disabled, their BAR mappings
 * kept (new ones -EPERM). -EINVAL: not bound. */
#define SLUICE_NR_VFIO_GROUP_UNBIND_VM UINT64_C(0x113)
/* (RDI = g, RSI = gpa of sluice_vfio_group_vm_info) -> 0: group id, unit, VM_INFO_COHERENT.
 * -EINVAL: not bound, argsz, flags. */
#define SLUICE_NR_VFIO_GROUP_VM_INFO UINT64_C(0x114)
/* (RDI = d, RSI = gpa of sluice_vfio_irq_info) -> 0: flags and count of interrupt index.
 * -EINVAL: index >= NUM_IRQS, argsz, flags. */
#define SLUICE_NR_VFIO_DEVICE_GET_IRQ_INFO UINT64_C(0x115)
/* (RDI = d, RSI = gpa of sluice_vfio_irq_set + data) -> 0: bind virtual vectors
 * (DATA_EVENTFD: i32 each, 32..255, -1 unbinds), fire a loopback, mask/unmask, or disable
 * (DATA_NONE | ACTION_TRIGGER, count 0). MSI only. -EINVAL: flags, index, range, short
 * data, vector, another index active. -EPERM: group not bound to the VM. -ENOSPC: no
 * host vectors. */
#define SLUICE_NR_VFIO_DEVICE_SET_IRQS UINT64_C(0x116)
/* (RDI = d) -> 0: the function was reset (FLR, else PM reset, else secondary bus reset)
 * and its config header restored. -EINVAL: no reset method (DEVICE_FLAGS_RESET clear). */
#define SLUICE_NR_VFIO_DEVICE_RESET UINT64_C(0x117)
/* (RDI = d, RSI = gpa of sluice_vfio_region_access) -> 0: size bytes at offset of region
 * index read into data. -EINVAL: flags, region not readable, size, misaligned, out of range. */
#define SLUICE_NR_VFIO_DEVICE_REGION_READ UINT64_C(0x118)
/* (RDI = d, RSI = gpa of sluice_vfio_region_access) -> 0: the low size bytes of data
 * written at offset of region index (config space mediated). Errors as REGION_READ. */
#define SLUICE_NR_VFIO_DEVICE_REGION_WRITE UINT64_C(0x119)
/* One past the last VFIO number of this version; one past the last reserved for VFIO. */
#define SLUICE_NR_VFIO_END UINT64_C(0x11a)
#define SLUICE_NR_VFIO_RESERVED_END UINT64_C(0x200)

/* ---- Extensions (CHECK_EXTENSION) and IOMMU models (CONTAINER_SET_IOMMU) ---- */

#define SLUICE_VFIO_TYPE1_IOMMU UINT64_C(1)   /* not offered: CHECK_EXTENSION gives 0 */
#define SLUICE_VFIO_TYPE1v2_IOMMU UINT64_C(3) /* the only model Sluice offers */
#define SLUICE_VFIO_UNMAP_ALL UINT64_C(9)     /* UNMAP_DMA with DMA_UNMAP_FLAG_ALL */

/* ---- Minimum argsz of each structure ---- */

#define SLUICE_VFIO_MIN_SIZE_IOMMU_INFO 16
#define SLUICE_VFIO_MIN_SIZE_DMA_MAP 32
#define SLUICE_VFIO_MIN_SIZE_DMA_UNMAP 24
#define SLUICE_VFIO_MIN_SIZE_GROUP_STATUS 8
#define SLUICE_VFIO_MIN_SIZE_GROUP_LIST 16
#define SLUICE_VFIO_MIN_SIZE_DEVICE_INFO 16
#define SLUICE_VFIO_MIN_SIZE_REGION_INFO 32
#define SLUICE_VFIO_MIN_SIZE_REGION_MAP 40
#define SLUICE_VFIO_MIN_SIZE_GROUP_VM_INFO 16
#define SLUICE_VFIO_MIN_SIZE_REGION_ACCESS 32
#define SLUICE_VFIO_MIN_SIZE_IRQ_INFO 16
#define SLUICE_VFIO_MIN_SIZE_IRQ_SET 24

/* ---- IOMMU_GET_INFO ---- */

/* Linux struct vfio_iommu_type1_info. */
struct sluice_vfio_iommu_type1_info {
    uint32_t argsz;
    uint32_t flags;        /* in: 0; out: IOMMU_INFO_PGSIZES | IOMMU_INFO_CAPS */
    uint64_t iova_pgsizes; /* bit n set: 2^n-byte pages supported */
    uint32_t cap_offset;   /* first capability, from the start of this struct; 0: none */
    uint32_t _pad;
};

#define SLUICE_VFIO_IOMMU_INFO_PGSIZES (UINT32_C(1) << 0) /* iova_pgsizes is valid */
#define SLUICE_VFIO_IOMMU_INFO_CAPS (UINT32_C(1) << 1)    /* a capability chain exists */

/* Header of each capability (Linux struct vfio_info_cap_header). */
struct sluice_vfio_info_cap_header {
    uint16_t id;
    uint16_t version;
    uint32_t next; /* next capability, from the start of the info struct; 0: last */
};

/* Capability ids. */
#define SLUICE_VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE UINT16_C(1)
#define SLUICE_VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL UINT16_C(3)

/* The usable IOVA ranges (Linux struct vfio_iommu_type1_info_cap_iova_range), followed by
 * nr_iovas x struct sluice_vfio_iova_range. */
struct sluice_vfio_iommu_type1_info_cap_iova_range {
    uint16_t id;
    uint16_t version;
    uint32_t next;
    uint32_t nr_iovas;
    uint32_t _reserved;
};

/* One usable IOVA range, inclusive (Linux struct vfio_iova_range). */
struct sluice_vfio_iova_range {
    uint64_t start;
    uint64_t end; /* the last usable byte */
};

/* How many more mappings the container accepts (Linux struct
 * vfio_iommu_type1_info_dma_avail, with explicit tail padding). */
struct sluice_vfio_iommu_type1_info_dma_avail {
    uint16_t id;
    uint16_t version;
    uint32_t next;
    uint32_t avail;
    uint32_t _pad;
};

/* ---- MAP_DMA / UNMAP_DMA ---- */

/* Linux struct vfio_iommu_type1_dma_map. */
struct sluice_vfio_iommu_type1_dma_map {
    uint32_t argsz;
    uint32_t flags; /* DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE, not empty */
    uint64_t vaddr; /* guest-physical address of the memory (Linux: process vaddr) */
    uint64_t iova;
    uint64_t size;
};

#define SLUICE_VFIO_DMA_MAP_FLAG_READ (UINT32_C(1) << 0)  /* device may read */
#define SLUICE_VFIO_DMA_MAP_FLAG_WRITE (UINT32_C(1) << 1) /* device may write */

/* Linux struct vfio_iommu_type1_dma_unmap without the dirty bitmap. */
struct sluice_vfio_iommu_type1_dma_unmap {
    uint32_t argsz;
    uint32_t flags; /* 0 or DMA_UNMAP_FLAG_ALL */
    uint64_t iova;
    uint64_t size; /* out: bytes unmapped */
};

/* Unmap everything in the container (iova = size = 0). */
#define SLUICE_VFIO_DMA_UNMAP_FLAG_ALL (UINT32_C(1) << 1)

/* ---- Groups ---- */

/* Linux struct vfio_group_status. */
struct sluice_vfio_group_status {
    uint32_t argsz;
    uint32_t flags; /* out: GROUP_FLAGS_* */
};

#define SLUICE_VFIO_GROUP_FLAGS_VIABLE (UINT32_C(1) << 0)
#define SLUICE_VFIO_GROUP_FLAGS_CONTAINER_SET (UINT32_C(1) << 1)

/* GROUP_LIST header, followed by entries of entry_size bytes each (no Linux equivalent:
 * Linux has /sys/kernel/iommu_groups). */
struct sluice_vfio_group_list {
    uint32_t argsz; /* in: bytes provided; out: raised to 16 + count * entry_size if short */
    uint32_t flags; /* 0 */
    uint32_t count; /* out: entries that exist */
    uint32_t entry_size; /* out: sizeof(struct sluice_vfio_group_list_entry) */
};

/* One PCI function in an IOMMU group, with the group's state for the caller. */
struct sluice_vfio_group_list_entry {
    uint32_t group_id;
    uint32_t group_flags;  /* GROUP_LIST_* */
    uint32_t device_flags; /* DEVICE_LIST_* */
    uint32_t class_code;   /* base class, subclass, prog-if (24 bits) */
    uint16_t segment;
    uint8_t bus;
    uint8_t devfn;
    uint16_t vendor_id;
    uint16_t device_id;
};

#define SLUICE_VFIO_GROUP_LIST_OWNABLE (UINT32_C(1) << 0) /* given to the caller */
#define SLUICE_VFIO_GROUP_LIST_OPEN (UINT32_C(1) << 1)    /* the caller has it open */
#define SLUICE_VFIO_GROUP_LIST_BUSY (UINT32_C(1) << 2)    /* another guest has it open */
#define SLUICE_VFIO_GROUP_LIST_VIABLE (UINT32_C(1) << 3)  /* would be viable for the caller */
#define SLUICE_VFIO_DEVICE_LIST_BRIDGE (UINT32_C(1) << 0) /* a bridge or port */
#define SLUICE_VFIO_DEVICE_LIST_HOST (UINT32_C(1) << 1)   /* used by the hypervisor */

/* GROUP_VM_INFO of a group bound to the VM (Linux: vfio_external_user_iommu_id and the
 * coherency KVM asks about). */
struct sluice_vfio_group_vm_info {
    uint32_t argsz;
    uint32_t flags;    /* in: 0; out: GROUP_VM_INFO_COHERENT */
    uint32_t group_id; /* out: the IOMMU group id */
    uint32_t unit;     /* out: remapping unit (DRHD/IVHD order; the lowest if several) */
};

/* DMA through the group's unit(s) is cache-coherent (VT-d ECAP.C, AMD-Vi IVHD Coherent).
 * No-snoop requests are not forced to snoop (SNP/FC clear). */
#define SLUICE_VFIO_GROUP_VM_INFO_COHERENT (UINT32_C(1) << 0)

/* ---- Devices ---- */

/* Linux struct vfio_device_info. */
struct sluice_vfio_device_info {
    uint32_t argsz;
    uint32_t flags; /* out: DEVICE_FLAGS_* */
    uint32_t num_regions;
    uint32_t num_irqs;
    uint32_t cap_offset;
    uint32_t _pad;
};

#define SLUICE_VFIO_DEVICE_FLAGS_RESET (UINT32_C(1) << 0)
#define SLUICE_VFIO_DEVICE_FLAGS_PCI (UINT32_C(1) << 1)

/* Region indexes of a PCI device (Linux VFIO_PCI_*_REGION_INDEX). */
#define SLUICE_VFIO_PCI_BAR0_REGION_INDEX UINT32_C(0)
#define SLUICE_VFIO_PCI_BAR1_REGION_INDEX UINT32_C(1)
#define SLUICE_VFIO_PCI_BAR2_REGION_INDEX UINT32_C(2)
#define SLUICE_VFIO_PCI_BAR3_REGION_INDEX UINT32_C(3)
#define SLUICE_VFIO_PCI_BAR4_REGION_INDEX UINT32_C(4)
#define SLUICE_VFIO_PCI_BAR5_REGION_INDEX UINT32_C(5)
#define SLUICE_VFIO_PCI_ROM_REGION_INDEX UINT32_C(6)
#define SLUICE_VFIO_PCI_CONFIG_REGION_INDEX UINT32_C(7)
#define SLUICE_VFIO_PCI_VGA_REGION_INDEX UINT32_C(8)
#define SLUICE_VFIO_PCI_NUM_REGIONS UINT32_C(9)
/* Interrupt indexes: INTx, MSI, MSI-X, ERR, REQ. */
#define SLUICE_VFIO_PCI_NUM_IRQS UINT32_C(5)
/* A region's offset is its index shifted by this. */
#define SLUICE_VFIO_PCI_OFFSET_SHIFT 40

/* Linux struct vfio_region_info. */
struct sluice_vfio_region_info {
    uint32_t argsz;
    uint32_t flags; /* out: REGION_INFO_FLAG_* */
    uint32_t index; /* in */
    uint32_t cap_offset;
    uint64_t size;   /* out: bytes (0: not implemented) */
    uint64_t offset; /* out: index << SLUICE_VFIO_PCI_OFFSET_SHIFT */
};

#define SLUICE_VFIO_REGION_INFO_FLAG_READ (UINT32_C(1) << 0)
#define SLUICE_VFIO_REGION_INFO_FLAG_WRITE (UINT32_C(1) << 1)
#define SLUICE_VFIO_REGION_INFO_FLAG_MMAP (UINT32_C(1) << 2) /* DEVICE_MAP_REGION works */

/* DEVICE_MAP_REGION: map [offset, offset + size) of region index at guest-physical gpa
 * (Linux: mmap of the device file). */
struct sluice_vfio_region_map {
    uint32_t argsz;
    uint32_t flags; /* 0 */
    uint32_t index;
    uint32_t _pad;
    uint64_t offset; /* inside the region, page aligned */
    uint64_t size;   /* page aligned, not 0 */
    uint64_t gpa;    /* page aligned, outside the caller's RAM */
};

/* DEVICE_REGION_READ / DEVICE_REGION_WRITE: one access inside region index (Linux: pread /
 * pwrite of the device file at (index << 40) + offset). */
struct sluice_vfio_region_access {
    uint32_t argsz;
    uint32_t flags;  /* 0 */
    uint32_t index;  /* BAR0..BAR5 (memory BARs), CONFIG */
    uint32_t size;   /* 1, 2, 4 or 8 (8: BARs only); offset a multiple of it */
    uint64_t offset; /* inside the region */
    uint64_t data;   /* write: the value; read: written back, zero-extended */
};

/* DEVICE_GET_IRQ_INFO (Linux struct vfio_irq_info). */
struct sluice_vfio_irq_info {
    uint32_t argsz;
    uint32_t flags; /* in: 0; out: IRQ_INFO_EVENTFD | MASKABLE | AUTOMASKED | NORESIZE */
    uint32_t index; /* in: PCI_INTX_IRQ_INDEX .. PCI_REQ_IRQ_INDEX */
    uint32_t count; /* out */
};

#define SLUICE_VFIO_IRQ_INFO_EVENTFD (UINT32_C(1) << 0)
#define SLUICE_VFIO_IRQ_INFO_MASKABLE (UINT32_C(1) << 1)
#define SLUICE_VFIO_IRQ_INFO_AUTOMASKED (UINT32_C(1) << 2)
#define SLUICE_VFIO_IRQ_INFO_NORESIZE (UINT32_C(1) << 3)

#define SLUICE_VFIO_PCI_INTX_IRQ_INDEX 0
#define SLUICE_VFIO_PCI_MSI_IRQ_INDEX 1
#define SLUICE_VFIO_PCI_MSIX_IRQ_INDEX 2
#define SLUICE_VFIO_PCI_ERR_IRQ_INDEX 3
#define SLUICE_VFIO_PCI_REQ_IRQ_INDEX 4

/* DEVICE_SET_IRQS (Linux struct vfio_irq_set with explicit padding); count data items
 * follow at offset 24: none, uint8_t (DATA_BOOL) or int32_t virtual vectors (DATA_EVENTFD). */
struct sluice_vfio_irq_set {
    uint32_t argsz; /* 24 + the data */
    uint32_t flags; /* one DATA_* and one ACTION_* bit */
    uint32_t index;
    uint32_t start;
    uint32_t count;
    uint32_t _pad;
};

#define SLUICE_VFIO_IRQ_SET_DATA_NONE (UINT32_C(1) << 0)
#define SLUICE_VFIO_IRQ_SET_DATA_BOOL (UINT32_C(1) << 1)
#define SLUICE_VFIO_IRQ_SET_DATA_EVENTFD (UINT32_C(1) << 2)
#define SLUICE_VFIO_IRQ_SET_ACTION_MASK (UINT32_C(1) << 3)
#define SLUICE_VFIO_IRQ_SET_ACTION_UNMASK (UINT32_C(1) << 4)
#define SLUICE_VFIO_IRQ_SET_ACTION_TRIGGER (UINT32_C(1) << 5)
#define SLUICE_VFIO_IRQ_SET_DATA_TYPE_MASK UINT32_C(0x7)
#define SLUICE_VFIO_IRQ_SET_ACTION_TYPE_MASK UINT32_C(0x38)
/* Virtual vectors: 32..255; -1 unbinds that subindex. */
#define SLUICE_VFIO_IRQ_VECTOR_MIN 32

/* ===================================================================================== */
/* Layout checks (the same as the Rust crate's)                                          */
/* ===================================================================================== */

#define SLUICE_CHECK_SIZE(type, size) \
    SLUICE_STATIC_ASSERT(sizeof(struct type) == (size), "sizeof(struct " #type ")")
#define SLUICE_CHECK_OFFSET(type, field, off) \
    SLUICE_STATIC_ASSERT(offsetof(struct type, field) == (off), #type "." #field)

SLUICE_CHECK_SIZE(sluice_guest_start_info, SLUICE_GUEST_START_INFO_SIZE);
SLUICE_CHECK_OFFSET(sluice_guest_start_info, abi_version, 8);
SLUICE_CHECK_OFFSET(sluice_guest_start_info, ram_base, 16);
SLUICE_CHECK_OFFSET(sluice_guest_start_info, cmdline_gpa, 32);
SLUICE_CHECK_OFFSET(sluice_guest_start_info, cmdline_len, 40);
SLUICE_CHECK_OFFSET(sluice_guest_start_info, name_len, 44);
SLUICE_CHECK_OFFSET(sluice_guest_start_info, name, 48);

SLUICE_CHECK_SIZE(sluice_vfio_iommu_type1_info, 24);
SLUICE_CHECK_OFFSET(sluice_vfio_iommu_type1_info, iova_pgsizes, 8);
SLUICE_CHECK_OFFSET(sluice_vfio_iommu_type1_info, cap_offset, 16);
SLUICE_CHECK_SIZE(sluice_vfio_info_cap_header, 8);
SLUICE_CHECK_SIZE(sluice_vfio_iommu_type1_info_cap_iova_range, 16);
SLUICE_CHECK_OFFSET(sluice_vfio_iommu_type1_info_cap_iova_range, nr_iovas, 8);
SLUICE_CHECK_SIZE(sluice_vfio_iova_range, 16);
SLUICE_CHECK_SIZE(sluice_vfio_iommu_type1_info_dma_avail, 16);
SLUICE_CHECK_OFFSET(sluice_vfio_iommu_type1_info_dma_avail, avail, 8);
SLUICE_CHECK_SIZE(sluice_vfio_iommu_type1_dma_map, 32);
SLUICE_CHECK_OFFSET(sluice_vfio_iommu_type1_dma_map, vaddr, 8);
SLUICE_CHECK_OFFSET(sluice_vfio_iommu_type1_dma_map, iova, 16);
SLUICE_CHECK_OFFSET(sluice_vfio_iommu_type1_dma_map, size, 24);
SLUICE_CHECK_SIZE(sluice_vfio_iommu_type1_dma_unmap, 24);
SLUICE_CHECK_OFFSET(sluice_vfio_iommu_type1_dma_unmap, iova, 8);
SLUICE_CHECK_OFFSET(sluice_vfio_iommu_type1_dma_unmap, size, 16);
SLUICE_CHECK_SIZE(sluice_vfio_group_status, 8);
SLUICE_CHECK_SIZE(sluice_vfio_group_list, 16);
SLUICE_CHECK_OFFSET(sluice_vfio_group_list, entry_size, 12);
SLUICE_CHECK_SIZE(sluice_vfio_group_list_entry, 24);
SLUICE_CHECK_OFFSET(sluice_vfio_group_list_entry, segment, 16);
SLUICE_CHECK_OFFSET(sluice_vfio_group_list_entry, bus, 18);
SLUICE_CHECK_OFFSET(sluice_vfio_group_list_entry, devfn, 19);
SLUICE_CHECK_OFFSET(sluice_vfio_group_list_entry, device_id, 22);
SLUICE_CHECK_SIZE(sluice_vfio_group_vm_info, 16);
SLUICE_CHECK_OFFSET(sluice_vfio_group_vm_info, group_id, 8);
SLUICE_CHECK_OFFSET(sluice_vfio_group_vm_info, unit, 12);
SLUICE_CHECK_SIZE(sluice_vfio_device_info, 24);
SLUICE_CHECK_OFFSET(sluice_vfio_device_info, cap_offset, 16);
SLUICE_CHECK_SIZE(sluice_vfio_region_info, 32);
SLUICE_CHECK_OFFSET(sluice_vfio_region_info, size, 16);
SLUICE_CHECK_OFFSET(sluice_vfio_region_info, offset, 24);
SLUICE_CHECK_SIZE(sluice_vfio_region_map, 40);
SLUICE_CHECK_OFFSET(sluice_vfio_region_map, offset, 16);
SLUICE_CHECK_OFFSET(sluice_vfio_region_map, gpa, 32);
SLUICE_CHECK_SIZE(sluice_vfio_region_access, 32);
SLUICE_CHECK_OFFSET(sluice_vfio_region_access, offset, 16);
SLUICE_CHECK_OFFSET(sluice_vfio_region_access, data, 24);
SLUICE_CHECK_SIZE(sluice_vfio_irq_info, 16);
SLUICE_CHECK_OFFSET(sluice_vfio_irq_info, count, 12);
SLUICE_CHECK_SIZE(sluice_vfio_irq_set, 24);
SLUICE_CHECK_OFFSET(sluice_vfio_irq_set, count, 16);

#undef SLUICE_CHECK_SIZE
#undef SLUICE_CHECK_OFFSET

/* ===================================================================================== */
/* The hypercall                                                                         */
/* ===================================================================================== */

#if defined(__x86_64__) && defined(__GNUC__)
/*
 * Make hypercall nr with arguments a0..a5 (RDI, RSI, RDX, R10, R8, R9); returns RAX:
 * >= 0 on success, -SLUICE_E* on failure. Only inside a Sluice guest at CPL 0 (elsewhere
 * VMMCALL raises #UD). The hypervisor may read and write the memory that structure
 * arguments point to, hence the "memory" clobber.
 */
static inline int64_t sluice_hypercall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2,
                                       uint64_t a3, uint64_t a4, uint64_t a5)
{
    register uint64_t r10 __asm__("r10") = a3;
    register uint64_t r8 __asm__("r8") = a4;
    register uint64_t r9 __asm__("r9") = a5;
    uint64_t rax = nr;
    __asm__ __volatile__("vmmcall"
                         : "+a"(rax)
                         : "D"(a0), "S"(a1), "d"(a2), "r"(r10), "r"(r8), "r"(r9)
                         : "memory");
    return (int64_t)rax;
}
#endif

#ifdef __cplusplus
}
#endif

#endif /* SLUICE_H */
