//! `vfio-hostile`: a guest that abuses every VFIO hypercall and checks that the
//! hypervisor answers each abuse with exactly the errno `sluice_abi::vfio` documents,
//! and that nothing changed: not the hypervisor's state (handles, groups, mappings —
//! proven at the end by the container's DMA-available count, UNMAP_DMA(ALL)'s byte
//! count and the edu's real DMA), not the structure a failed call was given.
//!
//! It expects the `vfio-hostile-*` scenarios' command line: its own edu's group, the
//! ICH9 group (00:1f.0: never viable, the hypervisor uses the LPC bridge) and the group
//! of the edu that `vfio-edu` (started first) holds open. The two edu groups are told
//! apart by GROUP_LIST: the one another guest has open (`BUSY`) is vfio-edu's.
//!
//! Abuses, in order: forged handles (0, 1, 2, 0xffff, i64::MAX, 2^63, u64::MAX) on
//! every kind of call; the busy group (EBUSY), a group not granted (EPERM), unknown ids
//! (ENOENT, also ids above 32 bits that would alias a real one if truncated); the
//! non-viable LPC group (opens, not viable, SET_CONTAINER EPERM, a second open EBUSY); a
//! just-closed container handle (EBADF, also once its slot is reused); with its own edu
//! in a container: calls before SET_CONTAINER / SET_IOMMU (EINVAL), type1 (ENODEV),
//! handles of the wrong kind (ENOTTY; EINVAL as SET_CONTAINER's container);
//! IOMMU_GET_INFO / GROUP_LIST / GROUP_GET_STATUS / DEVICE_GET_INFO with short `argsz`,
//! unknown flags, structures outside its RAM (and short buffers: the call succeeds,
//! writes only `argsz` bytes and raises `argsz`); bad device names; DEVICE_MAP_REGION
//! over its RAM, unaligned, outside the region, twice; MAP_DMA overlapping, unaligned,
//! empty, wrapping, outside the IOVA ranges (the MSI window, beyond the aperture), with
//! no or unknown flags, of MMIO (its BAR, 0xFEBF0000, the local APIC) or memory beyond
//! its RAM, with a short `argsz` or a structure outside its RAM; UNMAP_DMA cutting its
//! mapping, ALL with an address, unknown flags; UNSET_CONTAINER with a device open.
//! GROUP_BIND_VM (the VM as the group's external user): without a container or model
//! (EINVAL), on the LPC group (EINVAL: a non-viable group is never in a container, and
//! the container is checked before viability), twice (EBUSY); UNSET_CONTAINER while
//! bound (EBUSY); UNBIND_VM when not bound (EINVAL); GROUP_VM_INFO on an unbound group
//! (EINVAL), with bad `argsz`/flags/placement; all three with forged, closed and
//! wrong-kind handles. DEVICE_MAP_REGION without the binding (EPERM, after every
//! EINVAL), and after GROUP_UNBIND_VM (EPERM; the mapping made while bound stays and is
//! used to the end). DEVICE_SET_IRQS unbound: bad index, start and count ranges, two
//! DATA or two ACTION flags, none, unknown bits, data shorter than `count` items, a
//! disable with MSI off (EINVAL), a good request (EPERM). Config writes to BAR0 and the
//! MSI address and data: read back virtually, while the edu still answers at its real
//! BAR and DMAs through the good mapping. The group's handle closed while its device is
//! open: the device still works and holds the group (OPEN, GROUP_OPEN EBUSY); closing
//! the device makes its handle EBADF and releases the group (not OPEN, in no container,
//! the container's model gone).
//!
//! Exit status 0 only if every check passed.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use sluice_guest::abi::vfio::{
    self, DEVICE_LIST_HOST, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE, DMA_UNMAP_FLAG_ALL, DeviceInfo,
    DmaMap, DmaUnmap, GROUP_FLAGS_CONTAINER_SET, GROUP_FLAGS_VIABLE, GROUP_LIST_BUSY,
    GROUP_LIST_OPEN, GROUP_LIST_OWNABLE, GROUP_LIST_VIABLE, GROUP_VM_INFO_COHERENT, GroupList,
    GroupListEntry, GroupStatus, GroupVmInfo, IOMMU_INFO_CAPS, IOMMU_INFO_PGSIZES, IRQ_INDEX_ERR,
    IRQ_INDEX_INTX, IRQ_INDEX_MSI, IRQ_INDEX_MSIX, IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER,
    IRQ_SET_ACTION_UNMASK, IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE,
    IommuType1Info, IrqSet, MAX_ARGSZ, REGION_INFO_FLAG_MMAP, RegionInfo, RegionMap, extension, nr,
};
use sluice_guest::check::{CheckResult, ensure, expect_eq};
use sluice_guest::client::vfio::{Container, Device, Group, raw};
use sluice_guest::console::Console;
use sluice_guest::dma::{self, DmaBuffer};
use sluice_guest::edu::{self, Edu};
use sluice_guest::passthrough::{cfg_read, cfg_write, find_capability};
use sluice_guest::{Checks, Errno, GuestStartInfo, abi, client, paging, println, x86};

sluice_guest::entry!(guest_main);

const E: fn(Errno) -> Result<u64, Errno> = Err;

/// Handle values nobody was given (checked while this guest holds no handle).
const FORGED: [u64; 7] = [0, 1, 2, 0xffff, i64::MAX as u64, 1 << 63, u64::MAX];
/// Where this guest puts its edu's BAR0 (guest-physical, above its RAM).
const BAR0_GPA: u64 = 0xC000_0000;
/// The one good mapping: 64 KiB at this IOVA.
const IOVA_GOOD: u64 = 0x10_0000;
const GOOD_SIZE: u64 = 0x1_0000;
/// A free IOVA that rejected MAP_DMA calls aim at (a DMA there must be blocked).
const IOVA_FREE: u64 = 0x40_0000;
/// The scratch buffer rejected MAP_DMA calls name as `vaddr`.
const SCRATCH_SIZE: u64 = 0x2_0000;
/// The x86 MSI window, which IOMMUs reserve (Linux: `IOAPIC_RANGE_START`).
const MSI_WINDOW: (u64, u64) = (0xFEE0_0000, 0xFEEF_FFFF);
/// An MMIO address below the MSI window (q35: where PCI BARs live).
const OTHER_MMIO: u64 = 0xFEBF_0000;
/// Far outside any test guest's RAM (16 GiB).
const FAR: u64 = 0x4_0000_0000;
/// Bytes the argument page is filled with before a call, to see what the hypervisor
/// wrote.
const POISON: u8 = 0xee;
/// GROUP_LIST polls while waiting for vfio-edu to open its group.
const BUSY_POLLS: u32 = 400;
/// NULL hypercalls between two polls.
const BACKOFF: u32 = 100;
/// Bytes per edu transfer.
const XFER: u64 = 256;

fn guest_main(info: &GuestStartInfo) -> i32 {
    println!(
        "vfio-hostile: every VFIO call abused, every errno checked (RAM {:#x}..{:#x})",
        info.ram_base,
        info.ram_base + info.ram_size
    );
    let mut c = Checks::console();
    let Some(arg) = dma::alloc(4096, 4096) else {
        println!("no heap for the argument page");
        return 1;
    };
    let h = Hostile {
        arg,
        ram_end: info.ram_base + info.ram_size,
    };
    if run(&mut c, &h).is_none() {
        println!("vfio-hostile: stopped: a step the rest depends on failed");
    }
    c.finish()
}

/// The argument page and what the checks need to know about this guest.
struct Hostile {
    /// One page for argument structures, [`POISON`]ed before each call.
    arg: DmaBuffer,
    ram_end: u64,
}

fn raw_call(nr: u64, args: [u64; 6]) -> Result<u64, Errno> {
    // SAFETY: every guest-memory address these checks pass is either the argument page
    // (a heap page this guest owns, not referenced by anything during the call, 4 KiB
    // long, and no argsz here exceeds 4 KiB unless it also exceeds MAX_ARGSZ, which the
    // hypervisor refuses untouched), a name string that stays borrowed, or an address
    // outside this guest's RAM, which the hypervisor refuses without access. MAP_DMA
    // calls that succeed name DMA buffers that are never freed.
    abi::decode_result(unsafe { raw::call_nr(nr, args) })
}

fn a2(a0: u64, a1: u64) -> [u64; 6] {
    [a0, a1, 0, 0, 0, 0]
}

impl Hostile {
    /// Loads `bytes` at the start of the poisoned argument page; returns its address.
    fn load(&self, bytes: &[u8]) -> u64 {
        self.arg.fill(POISON);
        self.arg.write(0, bytes);
        self.arg.addr()
    }

    /// The argument page still holds `bytes`, then poison.
    fn unchanged(&self, what: &str, bytes: &[u8]) -> CheckResult {
        if let Some((off, got, want)) = self.arg.first_difference(0, bytes) {
            return Err(format!(
                "{what}: the failed call changed its structure at {off:#x}: {got:#04x}, was {want:#04x}"
            ));
        }
        if let Some((off, got)) = self.arg.find_not(bytes.len(), 4096 - bytes.len(), POISON) {
            return Err(format!(
                "{what}: the call wrote beyond its structure, at {off:#x} ({got:#04x})"
            ));
        }
        Ok(())
    }

    /// A call with a structure that must fail with `want` and leave it untouched;
    /// `args(gpa)` places the structure's address.
    fn fails_with(
        &self,
        what: &str,
        nr: u64,
        bytes: &[u8],
        args: impl FnOnce(u64) -> [u64; 6],
        want: Errno,
    ) -> CheckResult {
        let gpa = self.load(bytes);
        expect_eq(what, raw_call(nr, args(gpa)), E(want))?;
        self.unchanged(what, bytes)
    }

    /// A call with a structure that must succeed; returns the page's first `N` bytes.
    fn succeeds_with<const N: usize>(
        &self,
        what: &str,
        nr: u64,
        bytes: &[u8],
        args: impl FnOnce(u64) -> [u64; 6],
    ) -> Result<(u64, [u8; N]), String> {
        let gpa = self.load(bytes);
        let r = raw_call(nr, args(gpa)).map_err(|e| format!("{what}: {e}"))?;
        let mut out = [0u8; N];
        self.arg.read(0, &mut out);
        Ok((r, out))
    }

    /// Writes `bytes` at guest-physical `gpa`, which must be RAM of this guest that
    /// nothing uses (the top of RAM above the heap: the boot stack, long abandoned).
    fn poke(&self, gpa: u64, bytes: &[u8]) {
        assert!(gpa >= self.ram_end - (1 << 20) && gpa + bytes.len() as u64 <= self.ram_end);
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: inside this guest's RAM, identity-mapped, in the reserved top
            // region whose boot stack `_start` left for its own stack (checked above).
            unsafe { core::ptr::write_volatile((gpa + i as u64) as *mut u8, *b) };
        }
    }

    /// `header` (`argsz`, `flags`) written in the last 8 bytes of RAM: a structure whose
    /// `argsz` is readable and valid, but that does not lie wholly in RAM. The call
    /// (`args(gpa)`) must fail with EFAULT and leave those 8 bytes as they were.
    fn straddling_ram_end(
        &self,
        what: &str,
        nr: u64,
        header: [u8; 8],
        args: impl FnOnce(u64) -> [u64; 6],
    ) -> CheckResult {
        let gpa = self.ram_end - 8;
        self.poke(gpa, &header);
        expect_eq(
            &format!("{what} with a structure straddling the end of RAM"),
            raw_call(nr, args(gpa)),
            E(Errno::EFAULT),
        )?;
        for (i, want) in header.iter().enumerate() {
            // SAFETY: the last 8 bytes of this guest's RAM, identity-mapped (poked above).
            let got = unsafe { core::ptr::read_volatile((gpa + i as u64) as *const u8) };
            if got != *want {
                return Err(format!(
                    "{what}: the failed call changed byte {i} of its structure"
                ));
            }
        }
        Ok(())
    }
}

/// A GROUP_VM_INFO structure as a guest passes it in.
fn vm_info_bytes(argsz: u32, flags: u32) -> [u8; GroupVmInfo::SIZE] {
    GroupVmInfo {
        argsz,
        flags,
        ..GroupVmInfo::default()
    }
    .to_bytes()
}

/// `argsz`, `flags` as the first 8 bytes of a structure.
fn header8(argsz: u32, flags: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&argsz.to_le_bytes());
    b[4..].copy_from_slice(&flags.to_le_bytes());
    b
}

fn map_bytes(flags: u32, vaddr: u64, iova: u64, size: u64) -> [u8; 32] {
    DmaMap {
        argsz: DmaMap::SIZE as u32,
        flags,
        vaddr,
        iova,
        size,
    }
    .to_bytes()
}

fn unmap_bytes(flags: u32, iova: u64, size: u64) -> [u8; 24] {
    DmaUnmap {
        argsz: DmaUnmap::SIZE as u32,
        flags,
        iova,
        size,
    }
    .to_bytes()
}

fn with_argsz<const N: usize>(mut b: [u8; N], argsz: u32) -> [u8; N] {
    b[..4].copy_from_slice(&argsz.to_le_bytes());
    b
}

fn with_flags<const N: usize>(mut b: [u8; N], flags: u32) -> [u8; N] {
    b[4..8].copy_from_slice(&flags.to_le_bytes());
    b
}

fn name_of(e: &GroupListEntry) -> [u8; 12] {
    vfio::format_device_name(e.segment, e.bus, e.devfn)
}

fn list_groups() -> Result<Vec<GroupListEntry>, String> {
    let mut entries = vec![GroupListEntry::default(); 64];
    let n = client::vfio::group_list(&mut entries).map_err(|e| format!("GROUP_LIST: {e}"))?;
    entries.truncate(n.min(64));
    Ok(entries)
}

fn group_of(entries: &[GroupListEntry], id: u32) -> Option<&GroupListEntry> {
    entries.iter().find(|e| e.group_id == id)
}

fn backoff() {
    for _ in 0..BACKOFF {
        let _ = client::null();
    }
}

/// Runs a check that yields a value; `Some` if it passed.
fn step<T>(
    c: &mut Checks<Console>,
    name: &str,
    f: impl FnOnce() -> Result<T, String>,
) -> Option<T> {
    let mut out = None;
    c.check(name, || {
        out = Some(f()?);
        Ok(())
    });
    out
}

/// Every kind of call on `handle` (as the object of the call), each expected to fail
/// with `want`, leaving its structure untouched.
fn every_call_fails(h: &Hostile, handle: u64, want: Errno, what: &str) -> CheckResult {
    let name = b"0000:00:04.0";
    let map = map_bytes(DMA_MAP_FLAG_READ, h.arg.addr(), IOVA_FREE, 0x1000);
    for (call, r) in [
        ("CLOSE", raw_call(nr::CLOSE, a2(handle, 0))),
        (
            "CONTAINER_SET_IOMMU",
            raw_call(
                nr::CONTAINER_SET_IOMMU,
                a2(handle, extension::TYPE1V2_IOMMU),
            ),
        ),
        (
            "CONTAINER_DEBUG",
            raw_call(nr::CONTAINER_DEBUG, a2(handle, 0)),
        ),
        (
            "GROUP_UNSET_CONTAINER",
            raw_call(nr::GROUP_UNSET_CONTAINER, a2(handle, 0)),
        ),
        (
            "GROUP_GET_DEVICE",
            raw_call(
                nr::GROUP_GET_DEVICE,
                [handle, name.as_ptr() as u64, name.len() as u64, 0, 0, 0],
            ),
        ),
        ("GROUP_BIND_VM", raw_call(nr::GROUP_BIND_VM, a2(handle, 0))),
        (
            "GROUP_UNBIND_VM",
            raw_call(nr::GROUP_UNBIND_VM, a2(handle, 0)),
        ),
    ] {
        expect_eq(&format!("{call}({what})"), r, E(want))?;
    }
    h.fails_with(
        &format!("GROUP_VM_INFO({what})"),
        nr::GROUP_VM_INFO,
        &vm_info_bytes(GroupVmInfo::SIZE as u32, 0),
        |g| a2(handle, g),
        want,
    )?;
    let status = GroupStatus {
        argsz: GroupStatus::SIZE as u32,
        flags: 0,
    }
    .to_bytes();
    h.fails_with(
        &format!("GROUP_GET_STATUS({what})"),
        nr::GROUP_GET_STATUS,
        &status,
        |g| a2(handle, g),
        want,
    )?;
    let info = with_argsz(DeviceInfo::default().to_bytes(), DeviceInfo::SIZE as u32);
    h.fails_with(
        &format!("DEVICE_GET_INFO({what})"),
        nr::DEVICE_GET_INFO,
        &info,
        |g| a2(handle, g),
        want,
    )?;
    let region = with_argsz(RegionInfo::default().to_bytes(), RegionInfo::SIZE as u32);
    h.fails_with(
        &format!("DEVICE_GET_REGION_INFO({what})"),
        nr::DEVICE_GET_REGION_INFO,
        &region,
        |g| a2(handle, g),
        want,
    )?;
    let iinfo = with_argsz(
        IommuType1Info::default().to_bytes(),
        IommuType1Info::SIZE as u32,
    );
    h.fails_with(
        &format!("IOMMU_GET_INFO({what})"),
        nr::IOMMU_GET_INFO,
        &iinfo,
        |g| a2(handle, g),
        want,
    )?;
    h.fails_with(
        &format!("MAP_DMA({what})"),
        nr::MAP_DMA,
        &map,
        |g| a2(handle, g),
        want,
    )?;
    let unmap = unmap_bytes(0, IOVA_FREE, 0x1000);
    h.fails_with(
        &format!("UNMAP_DMA({what})"),
        nr::UNMAP_DMA,
        &unmap,
        |g| a2(handle, g),
        want,
    )?;
    let rmap = RegionMap {
        argsz: RegionMap::SIZE as u32,
        size: 0x1000,
        gpa: BAR0_GPA + 0x100_0000,
        ..RegionMap::default()
    }
    .to_bytes();
    h.fails_with(
        &format!("DEVICE_MAP_REGION({what})"),
        nr::DEVICE_MAP_REGION,
        &rmap,
        |g| a2(handle, g),
        want,
    )
}

fn run(c: &mut Checks<Console>, h: &Hostile) -> Option<()> {
    // ---- Forged handles, while this guest holds none ----
    c.check("forged-handles", || {
        for f in FORGED {
            every_call_fails(h, f, Errno::EBADF, &format!("{f:#x}"))?;
            expect_eq(
                &format!("GROUP_SET_CONTAINER({f:#x}, {f:#x})"),
                raw_call(nr::GROUP_SET_CONTAINER, a2(f, f)),
                E(Errno::EBADF),
            )?;
        }
        Ok(())
    });

    // ---- Groups: who may open what ----
    let entries = step(c, "group-list", || {
        let entries = list_groups()?;
        println!("{} functions in IOMMU groups:", entries.len());
        for e in &entries {
            let n = name_of(e);
            println!(
                "  group {:>3} {} {:04x}:{:04x} class {:06x} group-flags {:#x} device-flags {:#x}",
                e.group_id,
                core::str::from_utf8(&n).unwrap_or("?"),
                e.vendor_id,
                e.device_id,
                e.class_code,
                e.group_flags,
                e.device_flags
            );
        }
        ensure(!entries.is_empty(), || "GROUP_LIST is empty".into())?;
        Ok(entries)
    })?;
    let edus: Vec<GroupListEntry> = entries
        .iter()
        .filter(|e| {
            e.vendor_id == edu::VENDOR_ID
                && e.device_id == edu::DEVICE_ID
                && e.group_flags & GROUP_LIST_OWNABLE != 0
        })
        .copied()
        .collect();
    let (busy_edu, own_edu) = step(c, "edu-groups", || {
        ensure(edus.len() == 2, || {
            format!(
                "{} edus in groups this guest may own, expected 2 (its own and vfio-edu's)",
                edus.len()
            )
        })?;
        ensure(edus[0].group_id != edus[1].group_id, || {
            "both edus in one group".into()
        })?;
        // Wait until vfio-edu has its group open: GROUP_LIST says BUSY.
        for _ in 0..BUSY_POLLS {
            let now = list_groups()?;
            let busy: Vec<&GroupListEntry> = edus
                .iter()
                .filter(|e| {
                    group_of(&now, e.group_id).is_some_and(|n| n.group_flags & GROUP_LIST_BUSY != 0)
                })
                .collect();
            match busy.as_slice() {
                [b] => {
                    let other = edus.iter().find(|e| e.group_id != b.group_id).copied();
                    let b = group_of(&now, b.group_id).copied().unwrap_or(**b);
                    println!(
                        "group {} (edu {}) is busy: vfio-edu has it; group {} is ours",
                        b.group_id,
                        core::str::from_utf8(&name_of(&b)).unwrap_or("?"),
                        other.map_or(0, |o| o.group_id)
                    );
                    ensure(b.group_flags & GROUP_LIST_OPEN == 0, || {
                        format!(
                            "group {} flags {:#x}: OPEN, but this guest never opened it",
                            b.group_id, b.group_flags
                        )
                    })?;
                    return Ok((b, other.ok_or("no second edu")?));
                }
                [] => backoff(),
                _ => return Err("both edu groups busy: ours is open elsewhere".into()),
            }
        }
        Err(format!(
            "no edu group became BUSY after {BUSY_POLLS} GROUP_LIST polls: vfio-edu never opened its group"
        ))
    })?;

    c.check("group-open-busy", || {
        for attempt in 1..=BUSY_POLLS {
            match Group::open(busy_edu.group_id) {
                Err(Errno::EBUSY) => {
                    println!(
                        "GROUP_OPEN({}) -> EBUSY (attempt {attempt})",
                        busy_edu.group_id
                    );
                    return Ok(());
                }
                Ok(g) => {
                    // vfio-edu had let go for a moment: give it back and try again.
                    println!(
                        "GROUP_OPEN({}) succeeded (vfio-edu not holding it): closing, retrying",
                        busy_edu.group_id
                    );
                    expect_eq("CLOSE(the busy group)", g.close(), Ok(()))?;
                    backoff();
                }
                Err(e) => {
                    return Err(format!(
                        "GROUP_OPEN({}) of a group another guest holds: {e}, expected EBUSY",
                        busy_edu.group_id
                    ));
                }
            }
        }
        Err(format!(
            "GROUP_OPEN({}) never said EBUSY",
            busy_edu.group_id
        ))
    });

    c.check("group-open-not-granted", || {
        let g = entries
            .iter()
            .find(|e| e.group_flags & GROUP_LIST_OWNABLE == 0)
            .ok_or("every group is granted: nothing to test")?;
        println!("group {} is not on our command line", g.group_id);
        expect_eq(
            &format!("GROUP_OPEN({}) not granted", g.group_id),
            raw_call(nr::GROUP_OPEN, a2(u64::from(g.group_id), 0)),
            E(Errno::EPERM),
        )
    });

    c.check("group-open-unknown", || {
        let max = entries.iter().map(|e| e.group_id).max().unwrap_or(0);
        for id in [
            u64::from(max) + 1,
            u64::from(max) + 1000,
            u64::from(u32::MAX),
            (1 << 32) | u64::from(own_edu.group_id),
            (1 << 63) | u64::from(own_edu.group_id),
            u64::MAX,
        ] {
            expect_eq(
                &format!("GROUP_OPEN({id:#x})"),
                raw_call(nr::GROUP_OPEN, a2(id, 0)),
                E(Errno::ENOENT),
            )?;
        }
        Ok(())
    });

    // ---- The LPC group: granted, but never viable ----
    c.check("lpc-group-not-viable", || {
        let lpc = entries
            .iter()
            .find(|e| e.class_code >> 8 == 0x0601)
            .ok_or("no ISA bridge (class 0601) in GROUP_LIST")?;
        println!(
            "ISA/LPC bridge {} is in group {}",
            core::str::from_utf8(&name_of(lpc)).unwrap_or("?"),
            lpc.group_id
        );
        ensure(lpc.device_flags & DEVICE_LIST_HOST != 0, || {
            format!(
                "device flags {:#x} lack HOST: the hypervisor uses COM1 behind it",
                lpc.device_flags
            )
        })?;
        ensure(lpc.group_flags & GROUP_LIST_OWNABLE != 0, || {
            format!(
                "group flags {:#x} lack OWNABLE (00:1f.0 is on our command line)",
                lpc.group_flags
            )
        })?;
        ensure(lpc.group_flags & GROUP_LIST_VIABLE == 0, || {
            format!("group flags {:#x}: VIABLE", lpc.group_flags)
        })?;
        let g = Group::open(lpc.group_id).map_err(|e| format!("GROUP_OPEN(LPC group): {e}"))?;
        let s = g.status().map_err(|e| format!("GROUP_GET_STATUS: {e}"))?;
        ensure(
            s & (GROUP_FLAGS_VIABLE | GROUP_FLAGS_CONTAINER_SET) == 0,
            || format!("LPC group status {s:#x}, expected neither VIABLE nor CONTAINER_SET"),
        )?;
        expect_eq(
            "second GROUP_OPEN(LPC group)",
            raw_call(nr::GROUP_OPEN, a2(u64::from(lpc.group_id), 0)),
            E(Errno::EBUSY),
        )?;
        let ct = Container::new().map_err(|e| format!("CONTAINER_CREATE: {e}"))?;
        expect_eq(
            "GROUP_SET_CONTAINER(LPC group)",
            g.set_container(&ct),
            Err(Errno::EPERM),
        )?;
        expect_eq("status after", g.status(), Ok(s))?;
        // Not viable, so never in a container: BIND_VM checks the container (EINVAL)
        // before viability (EPERM), and EINVAL is what a non-viable group gets.
        expect_eq(
            "GROUP_BIND_VM(LPC group)",
            raw_call(nr::GROUP_BIND_VM, a2(g.handle(), 0)),
            E(Errno::EINVAL),
        )?;
        expect_eq("status after BIND_VM", g.status(), Ok(s))?;
        expect_eq(
            "SET_IOMMU of the still empty container",
            ct.set_iommu(extension::TYPE1V2_IOMMU),
            Err(Errno::EINVAL),
        )?;
        let lpc_name = name_of(lpc);
        expect_eq(
            "GROUP_GET_DEVICE(the LPC bridge)",
            g.device(core::str::from_utf8(&lpc_name).unwrap_or(""))
                .map(|d| d.handle()),
            Err(Errno::EINVAL),
        )?;
        expect_eq("CLOSE(LPC group)", g.close(), Ok(()))?;
        expect_eq("CLOSE(container)", ct.close(), Ok(()))?;
        // Released: it opens again.
        let again = Group::open(lpc.group_id)
            .map_err(|e| format!("GROUP_OPEN(LPC group) after CLOSE: {e}"))?;
        expect_eq("CLOSE(LPC group) again", again.close(), Ok(()))
    });

    // ---- A just-closed handle stays dead, even when its slot is reused ----
    c.check("closed-container-handle", || {
        let ct = Container::new().map_err(|e| format!("CONTAINER_CREATE: {e}"))?;
        let old = ct.handle();
        expect_eq("CLOSE(container)", ct.close(), Ok(()))?;
        every_call_fails(h, old, Errno::EBADF, "closed container")?;
        let ct2 = Container::new().map_err(|e| format!("CONTAINER_CREATE: {e}"))?;
        ensure(ct2.handle() != old, || {
            format!("a new container got the closed handle {old:#x} back: the old value names it")
        })?;
        every_call_fails(h, old, Errno::EBADF, "closed container, slot reused")?;
        expect_eq(
            "SET_IOMMU(new container)",
            ct2.set_iommu(extension::TYPE1V2_IOMMU),
            Err(Errno::EINVAL),
        )?;
        expect_eq("CLOSE(new container)", ct2.close(), Ok(()))
    });

    // ---- Our own edu: every call in the wrong state, then set up ----
    let group = step(c, "own-group-open", || {
        let g = Group::open(own_edu.group_id)
            .map_err(|e| format!("GROUP_OPEN({}): {e}", own_edu.group_id))?;
        expect_eq("viable", g.is_viable(), Ok(true))?;
        Ok(g)
    })?;
    let container = step(c, "container-create", || {
        Container::new().map_err(|e| format!("CONTAINER_CREATE: {e}"))
    })?;
    let (good, scratch) = step(c, "dma-buffers", || {
        let good = dma::alloc(GOOD_SIZE as usize, 4096).ok_or("no heap for the DMA buffer")?;
        let scratch =
            dma::alloc(SCRATCH_SIZE as usize, 4096).ok_or("no heap for the scratch buffer")?;
        Ok((good, scratch))
    })?;
    let own_name_bytes = name_of(&own_edu);
    let own_name = core::str::from_utf8(&own_name_bytes).unwrap_or("?");

    c.check("before-set-container", || {
        expect_eq(
            "SET_IOMMU without a group",
            container.set_iommu(extension::TYPE1V2_IOMMU),
            Err(Errno::EINVAL),
        )?;
        model_not_set(h, &container, &good)?;
        expect_eq(
            "GROUP_UNSET_CONTAINER (in none)",
            group.unset_container(),
            Err(Errno::EINVAL),
        )?;
        expect_eq(
            "GROUP_BIND_VM (no container)",
            group.bind_vm(),
            Err(Errno::EINVAL),
        )?;
        expect_eq(
            "GROUP_UNBIND_VM (not bound)",
            group.unbind_vm(),
            Err(Errno::EINVAL),
        )?;
        h.fails_with(
            "GROUP_VM_INFO (not bound)",
            nr::GROUP_VM_INFO,
            &vm_info_bytes(GroupVmInfo::SIZE as u32, 0),
            |a| a2(group.handle(), a),
            Errno::EINVAL,
        )?;
        expect_eq(
            "GROUP_GET_DEVICE (no container)",
            group.device(own_name).map(|d| d.handle()),
            Err(Errno::EINVAL),
        )
    });

    c.check("set-container-wrong-handles", || {
        let (g, ct) = (group.handle(), container.handle());
        expect_eq(
            "GROUP_SET_CONTAINER(group, group)",
            raw_call(nr::GROUP_SET_CONTAINER, a2(g, g)),
            E(Errno::EINVAL),
        )?;
        expect_eq(
            "GROUP_SET_CONTAINER(container, container)",
            raw_call(nr::GROUP_SET_CONTAINER, a2(ct, ct)),
            E(Errno::ENOTTY),
        )?;
        for f in FORGED {
            expect_eq(
                &format!("GROUP_SET_CONTAINER(group, {f:#x})"),
                raw_call(nr::GROUP_SET_CONTAINER, a2(g, f)),
                E(Errno::EBADF),
            )?;
        }
        expect_eq("status", group.status(), Ok(GROUP_FLAGS_VIABLE))
    });

    step(c, "set-container", || {
        group
            .set_container(&container)
            .map_err(|e| format!("GROUP_SET_CONTAINER: {e}"))?;
        expect_eq(
            "GROUP_SET_CONTAINER again",
            group.set_container(&container),
            Err(Errno::EINVAL),
        )?;
        expect_eq(
            "status",
            group.status(),
            Ok(GROUP_FLAGS_VIABLE | GROUP_FLAGS_CONTAINER_SET),
        )
    })?;

    c.check("before-set-iommu", || {
        model_not_set(h, &container, &good)?;
        expect_eq(
            "GROUP_BIND_VM (no model)",
            group.bind_vm(),
            Err(Errno::EINVAL),
        )?;
        expect_eq(
            "GROUP_UNBIND_VM (no model, not bound)",
            group.unbind_vm(),
            Err(Errno::EINVAL),
        )?;
        expect_eq(
            "GROUP_GET_DEVICE (no model)",
            group.device(own_name).map(|d| d.handle()),
            Err(Errno::EINVAL),
        )
    });

    c.check("set-iommu-unknown-models", || {
        for t in [
            0,
            extension::TYPE1_IOMMU,
            2,
            4,
            extension::UNMAP_ALL,
            u64::MAX,
        ] {
            expect_eq(
                &format!("CONTAINER_SET_IOMMU({t})"),
                container.set_iommu(t),
                Err(Errno::ENODEV),
            )?;
        }
        Ok(())
    });

    step(c, "set-iommu", || {
        container
            .set_iommu(extension::TYPE1V2_IOMMU)
            .map_err(|e| format!("CONTAINER_SET_IOMMU(type1v2): {e}"))?;
        expect_eq(
            "CONTAINER_SET_IOMMU again",
            container.set_iommu(extension::TYPE1V2_IOMMU),
            Err(Errno::EINVAL),
        )
    })?;

    let info = step(c, "iommu-info", || {
        let i = container
            .info()
            .map_err(|e| format!("IOMMU_GET_INFO: {e}"))?;
        println!(
            "page sizes {:#x}, {} IOVA ranges, dma_avail {:?}",
            i.iova_pgsizes, i.nr_ranges, i.dma_avail
        );
        for r in i.ranges() {
            println!("  {:#x}..={:#x}", r.start, r.end);
        }
        ensure(i.min_page_size() == Some(4096), || {
            format!("smallest page {:?}, expected 4 KiB", i.min_page_size())
        })?;
        ensure(i.nr_ranges > 0, || "no IOVA ranges".into())?;
        expect_eq(
            "dma_avail of an empty container",
            i.dma_avail,
            Some(vfio::DMA_MAPPINGS_MAX),
        )?;
        Ok(i)
    })?;

    c.check("iommu-info-short-and-bad", || {
        iommu_info_abuse(h, &container)
    });
    c.check("group-list-short-and-bad", || {
        group_list_abuse(h, entries.len())
    });
    c.check("status-and-info-bad-argsz", || {
        let g = group.handle();
        for argsz in [0, 4, 7] {
            let b = with_argsz(GroupStatus::default().to_bytes(), argsz);
            h.fails_with(
                &format!("GROUP_GET_STATUS argsz {argsz}"),
                nr::GROUP_GET_STATUS,
                &b,
                |a| a2(g, a),
                Errno::EINVAL,
            )?;
        }
        let b = with_flags(with_argsz(GroupStatus::default().to_bytes(), 8), 1);
        h.fails_with(
            "GROUP_GET_STATUS flags 1",
            nr::GROUP_GET_STATUS,
            &b,
            |a| a2(g, a),
            Errno::EINVAL,
        )?;
        let b = with_argsz(GroupStatus::default().to_bytes(), MAX_ARGSZ + 1);
        h.fails_with(
            "GROUP_GET_STATUS argsz MAX+1",
            nr::GROUP_GET_STATUS,
            &b,
            |a| a2(g, a),
            Errno::E2BIG,
        )?;
        for gpa in [h.ram_end, FAR, u64::MAX - 3] {
            expect_eq(
                &format!("GROUP_GET_STATUS at {gpa:#x}"),
                raw_call(nr::GROUP_GET_STATUS, a2(g, gpa)),
                E(Errno::EFAULT),
            )?;
        }
        h.straddling_ram_end(
            "GROUP_GET_STATUS (argsz 16)",
            nr::GROUP_GET_STATUS,
            header8(16, 0),
            |a| a2(g, a),
        )
    });

    // ---- The device ----
    let device = step(c, "device-open", || {
        let d = group
            .device(own_name)
            .map_err(|e| format!("GROUP_GET_DEVICE({own_name}): {e}"))?;
        expect_eq(
            "GROUP_GET_DEVICE again",
            group.device(own_name).map(|d| d.handle()),
            Err(Errno::EBUSY),
        )?;
        let i = d.info().map_err(|e| format!("DEVICE_GET_INFO: {e}"))?;
        expect_eq("num_regions", i.num_regions, vfio::NUM_REGIONS)?;
        for argsz in [0, 15] {
            let b = with_argsz(DeviceInfo::default().to_bytes(), argsz);
            h.fails_with(
                &format!("DEVICE_GET_INFO argsz {argsz}"),
                nr::DEVICE_GET_INFO,
                &b,
                |a| a2(d.handle(), a),
                Errno::EINVAL,
            )?;
        }
        Ok(d)
    })?;

    c.check("device-names", || {
        let busy_name = name_of(&busy_edu);
        let mut names: Vec<(Vec<u8>, Errno)> = vec![
            (busy_name.to_vec(), Errno::ENODEV),
            (b"0000:00:00.0".to_vec(), Errno::ENODEV),
            (b"0000:00:1f.0".to_vec(), Errno::ENODEV),
            (b"0000:ff:1f.7".to_vec(), Errno::ENODEV),
            (b"garbage".to_vec(), Errno::ENODEV),
            (b"0000:00:04.0\0".to_vec(), Errno::ENODEV),
            (vec![b'x'; vfio::DEVICE_NAME_MAX as usize], Errno::ENODEV),
        ];
        let mut other_segment = own_name_bytes;
        other_segment[3] = b'1';
        names.push((other_segment.to_vec(), Errno::ENODEV));
        for (name, want) in &names {
            expect_eq(
                &format!("GROUP_GET_DEVICE({:?})", String::from_utf8_lossy(name)),
                raw_call(
                    nr::GROUP_GET_DEVICE,
                    [
                        group.handle(),
                        name.as_ptr() as u64,
                        name.len() as u64,
                        0,
                        0,
                        0,
                    ],
                ),
                E(*want),
            )?;
        }
        let n = own_name_bytes;
        for (len, want) in [
            (0, Errno::EINVAL),
            (vfio::DEVICE_NAME_MAX + 1, Errno::EINVAL),
            (u64::MAX, Errno::EINVAL),
        ] {
            expect_eq(
                &format!("GROUP_GET_DEVICE length {len:#x}"),
                raw_call(
                    nr::GROUP_GET_DEVICE,
                    [group.handle(), n.as_ptr() as u64, len, 0, 0, 0],
                ),
                E(want),
            )?;
        }
        for gpa in [h.ram_end - 4, FAR, u64::MAX - 3] {
            expect_eq(
                &format!("GROUP_GET_DEVICE name at {gpa:#x}"),
                raw_call(nr::GROUP_GET_DEVICE, [group.handle(), gpa, 12, 0, 0, 0]),
                E(Errno::EFAULT),
            )?;
        }
        Ok(())
    });

    let bar = step(c, "region-info", || {
        let r = device
            .region_info(vfio::REGION_BAR0)
            .map_err(|e| format!("DEVICE_GET_REGION_INFO(0): {e}"))?;
        ensure(
            r.size == edu::BAR0_SIZE && r.flags & REGION_INFO_FLAG_MMAP != 0,
            || format!("BAR0 size {:#x} flags {:#x}", r.size, r.flags),
        )?;
        for index in [vfio::NUM_REGIONS, 100, u32::MAX] {
            let b = RegionInfo {
                argsz: RegionInfo::SIZE as u32,
                index,
                ..RegionInfo::default()
            }
            .to_bytes();
            h.fails_with(
                &format!("DEVICE_GET_REGION_INFO({index})"),
                nr::DEVICE_GET_REGION_INFO,
                &b,
                |a| a2(device.handle(), a),
                Errno::EINVAL,
            )?;
        }
        let b = RegionInfo {
            argsz: 31,
            ..RegionInfo::default()
        }
        .to_bytes();
        h.fails_with(
            "DEVICE_GET_REGION_INFO argsz 31",
            nr::DEVICE_GET_REGION_INFO,
            &b,
            |a| a2(device.handle(), a),
            Errno::EINVAL,
        )?;
        Ok(r)
    })?;

    let edu = step(c, "map-region-abuse", || {
        map_region_abuse(h, &group, &device, &bar)
    })?;

    // ---- DMA mappings ----
    step(c, "map-dma-good", || {
        container
            .map_dma(
                good.addr(),
                IOVA_GOOD,
                GOOD_SIZE,
                DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
            )
            .map_err(|e| format!("MAP_DMA (the good one): {e}"))?;
        println!(
            "MAP_DMA: {:#x} bytes at IOVA {IOVA_GOOD:#x} -> {:#x}: the only mapping this guest makes",
            GOOD_SIZE,
            good.addr()
        );
        expect_eq(
            "dma_avail",
            container.info().map(|i| i.dma_avail),
            Ok(info.dma_avail.map(|n| n - 1)),
        )
    })?;

    let ct = container.handle();
    let map_fails = |what: &str, bytes: &[u8], want: Errno| {
        h.fails_with(what, nr::MAP_DMA, bytes, |a| a2(ct, a), want)
    };
    let rw = DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE;
    let s = scratch.addr();

    c.check("map-dma-overlap", || {
        for (iova, size) in [
            (IOVA_GOOD, GOOD_SIZE),
            (IOVA_GOOD, 0x1000),
            (IOVA_GOOD + 0x8000, GOOD_SIZE),
            (IOVA_GOOD + GOOD_SIZE - 0x1000, 0x2000),
            (IOVA_GOOD - 0x1000, 0x2000),
            (IOVA_GOOD - 0x1000, GOOD_SIZE + 0x2000),
        ] {
            map_fails(
                &format!("MAP_DMA over the mapping: {iova:#x}+{size:#x}"),
                &map_bytes(rw, s, iova, size),
                Errno::EEXIST,
            )?;
        }
        Ok(())
    });

    c.check("map-dma-unaligned-and-empty", || {
        for (what, b) in [
            ("vaddr + 1", map_bytes(rw, s + 1, IOVA_FREE, 0x1000)),
            ("vaddr + 0x800", map_bytes(rw, s + 0x800, IOVA_FREE, 0x1000)),
            ("iova + 0x800", map_bytes(rw, s, IOVA_FREE + 0x800, 0x1000)),
            ("iova + 1", map_bytes(rw, s, IOVA_FREE + 1, 0x1000)),
            ("size 0x1800", map_bytes(rw, s, IOVA_FREE, 0x1800)),
            ("size 0x800", map_bytes(rw, s, IOVA_FREE, 0x800)),
            ("size 1", map_bytes(rw, s, IOVA_FREE, 1)),
            ("size 0", map_bytes(rw, s, IOVA_FREE, 0)),
        ] {
            map_fails(&format!("MAP_DMA {what}"), &b, Errno::EINVAL)?;
        }
        Ok(())
    });

    c.check("map-dma-wrapping", || {
        let top = !0xfffu64;
        for (what, b) in [
            ("iova wraps", map_bytes(rw, s, top, 0x2000)),
            ("vaddr wraps", map_bytes(rw, top, IOVA_FREE, 0x2000)),
            ("size wraps both", map_bytes(rw, s, IOVA_FREE, top)),
        ] {
            map_fails(&format!("MAP_DMA {what}"), &b, Errno::EINVAL)?;
        }
        Ok(())
    });

    c.check("map-dma-outside-iova-ranges", || {
        let ranges = info.ranges();
        let inside = |a: u64| ranges.iter().any(|r| r.start <= a && a <= r.end);
        ensure(!inside(MSI_WINDOW.0) && !inside(MSI_WINDOW.1), || {
            format!(
                "the usable IOVA ranges include the MSI window {:#x}..={:#x}",
                MSI_WINDOW.0, MSI_WINDOW.1
            )
        })?;
        let last_end = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        let beyond = (last_end | 0xfff).wrapping_add(1);
        let mut cases = vec![
            (MSI_WINDOW.0, 0x1000),
            (MSI_WINDOW.0 + 0x8_0000, 0x1000),
            (MSI_WINDOW.0 - 0x1000, 0x2000),
            (MSI_WINDOW.1 + 1 - 0x1000, 0x2000),
        ];
        if beyond != 0 {
            cases.push((beyond, 0x1000));
            cases.push((beyond - 0x1000, 0x2000));
            cases.push((beyond.wrapping_mul(2) & !0xfff, 0x1000));
        }
        for (iova, size) in cases {
            if iova == 0 {
                continue;
            }
            map_fails(
                &format!("MAP_DMA at IOVA {iova:#x}+{size:#x}"),
                &map_bytes(rw, s, iova, size),
                Errno::EINVAL,
            )?;
        }
        Ok(())
    });

    c.check("map-dma-flags", || {
        for flags in [0, 4, rw | 4, 1 << 31, u32::MAX] {
            map_fails(
                &format!("MAP_DMA flags {flags:#x}"),
                &map_bytes(flags, s, IOVA_FREE, 0x1000),
                Errno::EINVAL,
            )?;
        }
        Ok(())
    });

    c.check("map-dma-not-ram", || {
        for (what, vaddr, size) in [
            ("its own BAR0", BAR0_GPA, 0x1000),
            ("its own BAR0, 2 MiB", BAR0_GPA, 0x20_0000),
            ("MMIO at 0xfebf0000", OTHER_MMIO, 0x1000),
            ("the local APIC", MSI_WINDOW.0, 0x1000),
            ("its RAM end", h.ram_end, 0x1000),
            ("straddling its RAM end", h.ram_end - 0x1000, 0x2000),
            (
                "right after its RAM (another guest's memory on the host)",
                h.ram_end + 0x10_0000,
                0x1000,
            ),
            ("4 GiB", 0x1_0000_0000, 0x1000),
            ("16 GiB", FAR, 0x1000),
        ] {
            map_fails(
                &format!("MAP_DMA of {what} ({vaddr:#x}+{size:#x})"),
                &map_bytes(rw, vaddr, IOVA_FREE, size),
                Errno::EFAULT,
            )?;
        }
        Ok(())
    });

    c.check("map-dma-argsz-and-placement", || {
        for argsz in [0, 8, 24, 31] {
            map_fails(
                &format!("MAP_DMA argsz {argsz}"),
                &with_argsz(map_bytes(rw, s, IOVA_FREE, 0x1000), argsz),
                Errno::EINVAL,
            )?;
        }
        map_fails(
            "MAP_DMA argsz MAX+1",
            &with_argsz(map_bytes(rw, s, IOVA_FREE, 0x1000), MAX_ARGSZ + 1),
            Errno::E2BIG,
        )?;
        // A good structure straddling the end of RAM (the hypervisor may read the first
        // bytes, but the structure is not wholly RAM).
        let b = map_bytes(rw, s, IOVA_FREE, 0x1000);
        let gpa = h.ram_end - 16;
        h.poke(gpa, &b[..16]);
        for gpa in [gpa, h.ram_end, FAR, u64::MAX - 15] {
            expect_eq(
                &format!("MAP_DMA structure at {gpa:#x}"),
                raw_call(nr::MAP_DMA, a2(ct, gpa)),
                E(Errno::EFAULT),
            )?;
        }
        Ok(())
    });

    c.check("unmap-dma-abuse", || {
        let un = |what: &str, b: &[u8], want: Errno| {
            h.fails_with(what, nr::UNMAP_DMA, b, |a| a2(ct, a), want)
        };
        for (iova, size) in [
            (IOVA_GOOD + 0x1000, 0x1000),
            (IOVA_GOOD, 0x8000),
            (IOVA_GOOD + 0x8000, GOOD_SIZE),
            (IOVA_GOOD - 0x1000, 0x2000),
        ] {
            un(
                &format!("UNMAP_DMA cutting the mapping: {iova:#x}+{size:#x}"),
                &unmap_bytes(0, iova, size),
                Errno::EINVAL,
            )?;
        }
        un(
            "UNMAP_DMA ALL with iova",
            &unmap_bytes(DMA_UNMAP_FLAG_ALL, IOVA_GOOD, 0),
            Errno::EINVAL,
        )?;
        un(
            "UNMAP_DMA ALL with size",
            &unmap_bytes(DMA_UNMAP_FLAG_ALL, 0, GOOD_SIZE),
            Errno::EINVAL,
        )?;
        for flags in [1, 4, 1 << 31] {
            un(
                &format!("UNMAP_DMA flags {flags:#x}"),
                &unmap_bytes(flags, IOVA_GOOD, GOOD_SIZE),
                Errno::EINVAL,
            )?;
        }
        un(
            "UNMAP_DMA size 0",
            &unmap_bytes(0, IOVA_GOOD, 0),
            Errno::EINVAL,
        )?;
        un(
            "UNMAP_DMA iova + 0x800",
            &unmap_bytes(0, IOVA_GOOD + 0x800, 0x1000),
            Errno::EINVAL,
        )?;
        un(
            "UNMAP_DMA size 0x800",
            &unmap_bytes(0, IOVA_FREE, 0x800),
            Errno::EINVAL,
        )?;
        un(
            "UNMAP_DMA wrapping",
            &unmap_bytes(0, !0xfff, 0x2000),
            Errno::EINVAL,
        )?;
        for argsz in [0, 16, 23] {
            un(
                &format!("UNMAP_DMA argsz {argsz}"),
                &with_argsz(unmap_bytes(0, IOVA_GOOD, GOOD_SIZE), argsz),
                Errno::EINVAL,
            )?;
        }
        // Nothing mapped there: success, 0 bytes.
        let (r, out) = h.succeeds_with::<24>(
            "UNMAP_DMA of a free range",
            nr::UNMAP_DMA,
            &unmap_bytes(0, IOVA_FREE, 0x1000),
            |a| a2(ct, a),
        )?;
        expect_eq("UNMAP_DMA of a free range", r, 0)?;
        expect_eq(
            "bytes unmapped (written back)",
            DmaUnmap::from_bytes(&out).size,
            0,
        )
    });

    c.check("wrong-kind-handles", || {
        let (g, ctr, d) = (group.handle(), container.handle(), device.handle());
        let name = own_name_bytes;
        for (what, r) in [
            (
                "CONTAINER_SET_IOMMU(group)",
                raw_call(nr::CONTAINER_SET_IOMMU, a2(g, extension::TYPE1V2_IOMMU)),
            ),
            (
                "CONTAINER_SET_IOMMU(device)",
                raw_call(nr::CONTAINER_SET_IOMMU, a2(d, extension::TYPE1V2_IOMMU)),
            ),
            (
                "CONTAINER_DEBUG(group)",
                raw_call(nr::CONTAINER_DEBUG, a2(g, IOVA_GOOD)),
            ),
            (
                "CONTAINER_DEBUG(device)",
                raw_call(nr::CONTAINER_DEBUG, a2(d, IOVA_GOOD)),
            ),
            (
                "GROUP_UNSET_CONTAINER(container)",
                raw_call(nr::GROUP_UNSET_CONTAINER, a2(ctr, 0)),
            ),
            (
                "GROUP_UNSET_CONTAINER(device)",
                raw_call(nr::GROUP_UNSET_CONTAINER, a2(d, 0)),
            ),
            (
                "GROUP_SET_CONTAINER(device, container)",
                raw_call(nr::GROUP_SET_CONTAINER, a2(d, ctr)),
            ),
            (
                "GROUP_SET_CONTAINER(group, device)",
                raw_call(nr::GROUP_SET_CONTAINER, a2(g, d)),
            ),
            (
                "GROUP_GET_DEVICE(container)",
                raw_call(
                    nr::GROUP_GET_DEVICE,
                    [ctr, name.as_ptr() as u64, 12, 0, 0, 0],
                ),
            ),
            (
                "GROUP_GET_DEVICE(device)",
                raw_call(nr::GROUP_GET_DEVICE, [d, name.as_ptr() as u64, 12, 0, 0, 0]),
            ),
            (
                "GROUP_BIND_VM(container)",
                raw_call(nr::GROUP_BIND_VM, a2(ctr, 0)),
            ),
            (
                "GROUP_BIND_VM(device)",
                raw_call(nr::GROUP_BIND_VM, a2(d, 0)),
            ),
            (
                "GROUP_UNBIND_VM(container)",
                raw_call(nr::GROUP_UNBIND_VM, a2(ctr, 0)),
            ),
            (
                "GROUP_UNBIND_VM(device)",
                raw_call(nr::GROUP_UNBIND_VM, a2(d, 0)),
            ),
        ] {
            let want = if what == "GROUP_SET_CONTAINER(group, device)" {
                Errno::EINVAL
            } else {
                Errno::ENOTTY
            };
            expect_eq(what, r, E(want))?;
        }
        let map = map_bytes(rw, s, IOVA_FREE, 0x1000);
        h.fails_with(
            "MAP_DMA(group)",
            nr::MAP_DMA,
            &map,
            |a| a2(g, a),
            Errno::ENOTTY,
        )?;
        h.fails_with(
            "MAP_DMA(device)",
            nr::MAP_DMA,
            &map,
            |a| a2(d, a),
            Errno::ENOTTY,
        )?;
        let unmap = unmap_bytes(DMA_UNMAP_FLAG_ALL, 0, 0);
        h.fails_with(
            "UNMAP_DMA(group)",
            nr::UNMAP_DMA,
            &unmap,
            |a| a2(g, a),
            Errno::ENOTTY,
        )?;
        h.fails_with(
            "UNMAP_DMA(device)",
            nr::UNMAP_DMA,
            &unmap,
            |a| a2(d, a),
            Errno::ENOTTY,
        )?;
        let st = with_argsz(GroupStatus::default().to_bytes(), GroupStatus::SIZE as u32);
        h.fails_with(
            "GROUP_GET_STATUS(container)",
            nr::GROUP_GET_STATUS,
            &st,
            |a| a2(ctr, a),
            Errno::ENOTTY,
        )?;
        h.fails_with(
            "GROUP_GET_STATUS(device)",
            nr::GROUP_GET_STATUS,
            &st,
            |a| a2(d, a),
            Errno::ENOTTY,
        )?;
        let di = with_argsz(DeviceInfo::default().to_bytes(), DeviceInfo::SIZE as u32);
        h.fails_with(
            "DEVICE_GET_INFO(group)",
            nr::DEVICE_GET_INFO,
            &di,
            |a| a2(g, a),
            Errno::ENOTTY,
        )?;
        h.fails_with(
            "DEVICE_GET_INFO(container)",
            nr::DEVICE_GET_INFO,
            &di,
            |a| a2(ctr, a),
            Errno::ENOTTY,
        )?;
        let ii = with_argsz(
            IommuType1Info::default().to_bytes(),
            IommuType1Info::SIZE as u32,
        );
        h.fails_with(
            "IOMMU_GET_INFO(group)",
            nr::IOMMU_GET_INFO,
            &ii,
            |a| a2(g, a),
            Errno::ENOTTY,
        )?;
        let rm = RegionMap {
            argsz: RegionMap::SIZE as u32,
            size: 0x1000,
            gpa: BAR0_GPA + 0x100_0000,
            ..RegionMap::default()
        }
        .to_bytes();
        h.fails_with(
            "DEVICE_MAP_REGION(container)",
            nr::DEVICE_MAP_REGION,
            &rm,
            |a| a2(ctr, a),
            Errno::ENOTTY,
        )?;
        h.fails_with(
            "DEVICE_MAP_REGION(group)",
            nr::DEVICE_MAP_REGION,
            &rm,
            |a| a2(g, a),
            Errno::ENOTTY,
        )?;
        // Forged values next to the live ones.
        let live = [g, ctr, d];
        let top = live.iter().copied().max().unwrap_or(0);
        for f in [top + 1, top + 2, top + 0x1_0000, FORGED[0], FORGED[6]] {
            if !live.contains(&f) {
                every_call_fails(h, f, Errno::EBADF, &format!("{f:#x} (not ours)"))?;
            }
        }
        expect_eq(
            "status after all that",
            group.status(),
            Ok(GROUP_FLAGS_VIABLE | GROUP_FLAGS_CONTAINER_SET),
        )
    });

    // ---- Interrupts: every malformed DEVICE_SET_IRQS, then the binding ----
    c.check("set-irqs-abuse", || set_irqs_abuse(h, &device));

    // ---- Config space: BAR and MSI writes stay virtual ----
    c.check("config-writes-virtual", || {
        config_writes_virtual(&device, &edu)
    });

    // ---- Proof by DMA: the good mapping works, rejected maps mapped nothing ----
    let seed = x86::rdtsc();
    c.check("dma-through-the-good-mapping", || {
        let mut p = vec![0u8; XFER as usize];
        dma::pattern(seed, &mut p);
        good.write(0, &p);
        edu.dma_from_ram(IOVA_GOOD, 0, XFER)
            .map_err(|e| format!("edu DMA RAM -> edu: {e}"))?;
        edu.dma_to_ram(0, IOVA_GOOD + 0x1000, XFER)
            .map_err(|e| format!("edu DMA edu -> RAM: {e}"))?;
        match good.first_difference(0x1000, &p) {
            None => Ok(()),
            Some((off, got, want)) => Err(format!(
                "good buffer at {off:#x}: {got:#04x}, expected {want:#04x}"
            )),
        }
    });

    c.check("rejected-maps-mapped-nothing", || {
        scratch.fill(0x77);
        edu.dma_to_ram(0, IOVA_FREE, XFER).map_err(|e| format!("edu DMA edu -> RAM: {e}"))?;
        edu.dma_to_ram(0, IOVA_GOOD - 0x1000, XFER).map_err(|e| format!("edu DMA edu -> RAM: {e}"))?;
        if let Some((off, got)) = scratch.find_not(0, scratch.len(), 0x77) {
            return Err(format!("a DMA to an IOVA only rejected MAP_DMA calls named reached the scratch buffer at {off:#x} ({got:#04x})"));
        }
        Ok(())
    });

    c.check("only-one-mapping", || {
        expect_eq(
            "dma_avail",
            container.info().map(|i| i.dma_avail),
            Ok(info.dma_avail.map(|n| n - 1)),
        )?;
        expect_eq("UNMAP_DMA(ALL) bytes", container.unmap_all(), Ok(GOOD_SIZE))?;
        expect_eq(
            "dma_avail after",
            container.info().map(|i| i.dma_avail),
            Ok(info.dma_avail),
        )?;
        expect_eq("UNMAP_DMA(ALL) again", container.unmap_all(), Ok(0))
    });

    // ---- Binding the group to the VM: once, and it pins the container ----
    c.check("bind-vm", || {
        let g = group.handle();
        for x in [container.handle(), device.handle()] {
            h.fails_with(
                &format!("GROUP_VM_INFO({x:#x}, not a group)"),
                nr::GROUP_VM_INFO,
                &vm_info_bytes(GroupVmInfo::SIZE as u32, 0),
                |a| a2(x, a),
                Errno::ENOTTY,
            )?;
        }
        expect_eq("GROUP_BIND_VM", group.bind_vm(), Ok(()))?;
        expect_eq("GROUP_BIND_VM again", group.bind_vm(), Err(Errno::EBUSY))?;
        expect_eq(
            "GROUP_UNSET_CONTAINER while bound",
            group.unset_container(),
            Err(Errno::EBUSY),
        )?;
        let info = group.vm_info().map_err(|e| format!("GROUP_VM_INFO: {e}"))?;
        println!(
            "GROUP_VM_INFO: group {} unit {} {}",
            info.group_id,
            info.unit,
            if info.flags & GROUP_VM_INFO_COHERENT != 0 {
                "coherent"
            } else {
                "not coherent"
            }
        );
        expect_eq("GROUP_VM_INFO group id", info.group_id, own_edu.group_id)?;
        ensure(info.flags & !GROUP_VM_INFO_COHERENT == 0, || {
            format!("GROUP_VM_INFO flags {:#x}: unknown bits", info.flags)
        })?;
        for argsz in [0, 8, GroupVmInfo::SIZE as u32 - 1] {
            h.fails_with(
                &format!("GROUP_VM_INFO argsz {argsz}"),
                nr::GROUP_VM_INFO,
                &vm_info_bytes(argsz, 0),
                |a| a2(g, a),
                Errno::EINVAL,
            )?;
        }
        h.fails_with(
            "GROUP_VM_INFO flags 1",
            nr::GROUP_VM_INFO,
            &vm_info_bytes(GroupVmInfo::SIZE as u32, 1),
            |a| a2(g, a),
            Errno::EINVAL,
        )?;
        h.fails_with(
            "GROUP_VM_INFO argsz above MAX_ARGSZ",
            nr::GROUP_VM_INFO,
            &vm_info_bytes(MAX_ARGSZ + 1, 0),
            |a| a2(g, a),
            Errno::E2BIG,
        )?;
        expect_eq(
            "GROUP_VM_INFO outside RAM",
            raw_call(nr::GROUP_VM_INFO, a2(g, FAR)),
            E(Errno::EFAULT),
        )?;
        h.straddling_ram_end(
            "GROUP_VM_INFO",
            nr::GROUP_VM_INFO,
            header8(GroupVmInfo::SIZE as u32, 0),
            |a| a2(g, a),
        )?;
        expect_eq("GROUP_UNBIND_VM", group.unbind_vm(), Ok(()))?;
        expect_eq(
            "GROUP_UNBIND_VM again",
            group.unbind_vm(),
            Err(Errno::EINVAL),
        )?;
        expect_eq(
            "GROUP_VM_INFO after unbind",
            group.vm_info().map(|i| i.group_id),
            Err(Errno::EINVAL),
        )?;
        expect_eq(
            "status after",
            group.status(),
            Ok(GROUP_FLAGS_VIABLE | GROUP_FLAGS_CONTAINER_SET),
        )
    });

    // ---- Teardown, abused too: the group's handle closed while its device is open ----
    c.check("teardown", || {
        let (g, ctr, d) = (group.handle(), container.handle(), device.handle());
        let gid = own_edu.group_id;
        let open_flags = |what: &str| -> Result<u32, String> {
            let entries = list_groups()?;
            group_of(&entries, gid)
                .map(|e| e.group_flags)
                .ok_or_else(|| format!("{what}: group {gid} not in GROUP_LIST"))
        };
        expect_eq(
            "GROUP_UNSET_CONTAINER with a device open",
            group.unset_container(),
            Err(Errno::EBUSY),
        )?;
        // Files semantics: the device holds its group, whose handle may go first.
        expect_eq("CLOSE(group), device open", raw_call(nr::CLOSE, a2(g, 0)), Ok(0))?;
        core::mem::forget(group);
        expect_eq(
            "GROUP_GET_STATUS(closed group handle)",
            raw_call(nr::GROUP_GET_STATUS, a2(g, h.load(&header8(8, 0)))),
            E(Errno::EBADF),
        )?;
        let flags = open_flags("device open")?;
        ensure(flags & GROUP_LIST_OPEN != 0, || {
            format!("group flags {flags:#x} with its device open: not OPEN (released too early)")
        })?;
        expect_eq(
            "GROUP_OPEN while its device holds it",
            client::vfio::Group::open(gid).map(|g| g.id()),
            Err(Errno::EBUSY),
        )?;
        let info = device
            .info()
            .map_err(|e| format!("DEVICE_GET_INFO, group handle closed: {e}"))?;
        ensure(info.num_regions == vfio::NUM_REGIONS, || {
            format!("DEVICE_GET_INFO: {} regions", info.num_regions)
        })?;
        let id = edu.ident();
        ensure(id & 0xff == 0xed && id != u32::MAX, || {
            format!("edu ident {id:#010x} with the group handle closed")
        })?;
        println!(
            "CLOSE(group) with the device open: the group handle is EBADF, the group stays OPEN, the device works (edu {id:#010x})"
        );
        expect_eq("CLOSE(device)", raw_call(nr::CLOSE, a2(d, 0)), Ok(0))?;
        expect_eq(
            "CLOSE(device) again",
            raw_call(nr::CLOSE, a2(d, 0)),
            E(Errno::EBADF),
        )?;
        expect_eq(
            "DEVICE_GET_INFO(closed device)",
            device.info().map(|i| i.flags),
            Err(Errno::EBADF),
        )?;
        core::mem::forget(device);
        // The last reference went with the device: the group is released (out of its
        // container, whose model goes with its last group) and free to open again.
        let flags = open_flags("device closed")?;
        ensure(flags & GROUP_LIST_OPEN == 0, || {
            format!("group flags {flags:#x} after its last reference closed: still OPEN")
        })?;
        expect_eq(
            "IOMMU_GET_INFO (model released)",
            container.info().map(|i| i.flags),
            Err(Errno::EINVAL),
        )?;
        let again = client::vfio::Group::open(gid)
            .map_err(|e| format!("GROUP_OPEN after the release: {e}"))?;
        expect_eq("GROUP_GET_STATUS after the release", again.status(), Ok(GROUP_FLAGS_VIABLE))?;
        expect_eq(
            "GROUP_UNSET_CONTAINER (in none)",
            again.unset_container(),
            Err(Errno::EINVAL),
        )?;
        let g2 = again.handle();
        expect_eq("CLOSE(group, reopened)", raw_call(nr::CLOSE, a2(g2, 0)), Ok(0))?;
        core::mem::forget(again);
        println!("CLOSE(device): its handle is EBADF, group {gid} released (not OPEN), reopened and closed");
        expect_eq("CLOSE(container)", raw_call(nr::CLOSE, a2(ctr, 0)), Ok(0))?;
        core::mem::forget(container);
        for x in [g, ctr, d, g2] {
            expect_eq(
                &format!("CLOSE({x:#x}) after teardown"),
                raw_call(nr::CLOSE, a2(x, 0)),
                E(Errno::EBADF),
            )?;
        }
        Ok(())
    });
    Some(())
}

/// DEVICE_SET_IRQS with the group not bound: every malformed request is EINVAL (the
/// structure is checked before the binding), a good one EPERM.
fn set_irqs_abuse(h: &Hostile, device: &Device) -> CheckResult {
    let d = device.handle();
    let msi = device
        .irq_info(IRQ_INDEX_MSI)
        .map_err(|e| format!("DEVICE_GET_IRQ_INFO(MSI): {e}"))?
        .count;
    ensure(msi >= 1, || format!("edu MSI count {msi}"))?;
    let set = |flags: u32, index: u32, start: u32, count: u32, data: &[u8]| {
        let mut b = IrqSet {
            argsz: (IrqSet::SIZE + data.len()) as u32,
            flags,
            index,
            start,
            count,
            ..IrqSet::default()
        }
        .to_bytes()
        .to_vec();
        b.extend_from_slice(data);
        b
    };
    let argsz = |mut b: Vec<u8>, argsz: u32| {
        b[..4].copy_from_slice(&argsz.to_le_bytes());
        b
    };
    let ev = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER;
    let vectors = |n: u32| -> Vec<u8> { (0..n).flat_map(|_| 0x60i32.to_le_bytes()).collect() };
    let one = vectors(1);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("index NUM_IRQS", set(ev, vfio::NUM_IRQS, 0, 1, &one)),
        ("index u32::MAX", set(ev, u32::MAX, 0, 1, &one)),
        ("start = MSI count", set(ev, IRQ_INDEX_MSI, msi, 1, &one)),
        (
            "start + count past the MSI count",
            set(ev, IRQ_INDEX_MSI, 0, msi + 1, &vectors(msi + 1)),
        ),
        (
            "start + count wrapping",
            set(ev, IRQ_INDEX_MSI, u32::MAX, 2, &vectors(2)),
        ),
        (
            "MSI-X (the edu has none)",
            set(ev, IRQ_INDEX_MSIX, 0, 1, &one),
        ),
        (
            "INTx start + count past its one interrupt",
            set(ev, IRQ_INDEX_INTX, 0, 2, &vectors(2)),
        ),
        ("INTx start 1", set(ev, IRQ_INDEX_INTX, 1, 1, &one)),
        ("ERR (count 0)", set(ev, IRQ_INDEX_ERR, 0, 1, &one)),
        (
            "two DATA flags",
            set(
                IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
                IRQ_INDEX_MSI,
                0,
                1,
                &[1, 0, 0, 0],
            ),
        ),
        (
            "two ACTION flags",
            set(
                IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK,
                IRQ_INDEX_MSI,
                0,
                1,
                &[],
            ),
        ),
        (
            "no DATA flag",
            set(IRQ_SET_ACTION_TRIGGER, IRQ_INDEX_MSI, 0, 1, &[]),
        ),
        (
            "no ACTION flag",
            set(IRQ_SET_DATA_NONE, IRQ_INDEX_MSI, 0, 1, &[]),
        ),
        (
            "unknown flag 1 << 6",
            set(ev | 1 << 6, IRQ_INDEX_MSI, 0, 1, &one),
        ),
        (
            "unknown flag 1 << 31",
            set(ev | 1 << 31, IRQ_INDEX_MSI, 0, 1, &one),
        ),
        (
            "short data (argsz 27 for one i32)",
            argsz(set(ev, IRQ_INDEX_MSI, 0, 1, &one), 27),
        ),
        (
            "short data (argsz 24 for one i32)",
            argsz(set(ev, IRQ_INDEX_MSI, 0, 1, &one), 24),
        ),
        (
            "short data (BOOL, no byte)",
            set(
                IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
                IRQ_INDEX_MSI,
                0,
                1,
                &[],
            ),
        ),
        ("argsz 23", argsz(set(ev, IRQ_INDEX_MSI, 0, 1, &one), 23)),
        (
            "disable (count 0) with MSI not enabled",
            set(
                IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER,
                IRQ_INDEX_MSI,
                0,
                0,
                &[],
            ),
        ),
    ];
    for (what, b) in &cases {
        h.fails_with(
            &format!("DEVICE_SET_IRQS {what}"),
            nr::DEVICE_SET_IRQS,
            b,
            |a| a2(d, a),
            Errno::EINVAL,
        )?;
    }
    h.fails_with(
        "DEVICE_SET_IRQS (MSI 0 -> 0x60) without GROUP_BIND_VM",
        nr::DEVICE_SET_IRQS,
        &set(ev, IRQ_INDEX_MSI, 0, 1, &one),
        |a| a2(d, a),
        Errno::EPERM,
    )?;
    println!(
        "DEVICE_SET_IRQS: {} malformed requests EINVAL (checked before the binding), a good one unbound EPERM",
        cases.len()
    );
    Ok(())
}

/// Config writes to BAR0 and to the MSI address and data read back what was written
/// (BAR0: sized like hardware) and never reach the device: the edu still answers at its
/// real BAR through the mapping made before.
fn config_writes_virtual(device: &Device, edu: &Edu) -> CheckResult {
    let bar0 = cfg_read(device, 0x10, 4)?;
    cfg_write(device, 0x10, 4, 0xFFFF_FFFF)?;
    let sized = (!(edu::BAR0_SIZE - 1) as u32 & !0xF) as u64 | (bar0 & 0xF);
    expect_eq(
        "BAR0 after all-ones (the size mask)",
        cfg_read(device, 0x10, 4)?,
        sized,
    )?;
    cfg_write(device, 0x10, 4, 0x1230_0000)?;
    expect_eq(
        "BAR0 after 0x12300000",
        cfg_read(device, 0x10, 4)?,
        0x1230_0000 | (bar0 & 0xF),
    )?;
    let msi = find_capability(device, 0x05)?;
    let control = cfg_read(device, msi + 2, 2)?;
    let data_at = if control & 0x80 != 0 {
        msi + 0xC
    } else {
        msi + 8
    };
    let (address, data) = (cfg_read(device, msi + 4, 4)?, cfg_read(device, data_at, 2)?);
    cfg_write(device, msi + 4, 4, 0xdead_0000)?;
    cfg_write(device, data_at, 2, 0x4321)?;
    expect_eq(
        "MSI address read back",
        cfg_read(device, msi + 4, 4)?,
        0xdead_0000,
    )?;
    expect_eq("MSI data read back", cfg_read(device, data_at, 2)?, 0x4321)?;
    let id = edu.ident();
    ensure(id & 0xff == 0xed && id != u32::MAX, || {
        format!("edu ident {id:#010x} at its real BAR after the config writes")
    })?;
    let x = x86::rdtsc() as u32 ^ 0x0bad_cafe;
    expect_eq("edu liveness after the config writes", edu.liveness(x), !x)?;
    println!(
        "config: BAR0 {bar0:#x} -> sized {sized:#x} -> 0x12300000, MSI at {msi:#x} address 0xdead0000 data 0x4321: all read back virtually; the edu still answers at {BAR0_GPA:#x} ({id:#010x})"
    );
    cfg_write(device, 0x10, 4, bar0)?;
    cfg_write(device, msi + 4, 4, address)?;
    cfg_write(device, data_at, 2, data)?;
    expect_eq("BAR0 restored", cfg_read(device, 0x10, 4)?, bar0)
}

/// What every container call says before a model is set: EINVAL.
fn model_not_set(h: &Hostile, container: &Container, good: &DmaBuffer) -> CheckResult {
    expect_eq(
        "IOMMU_GET_INFO",
        container.info().map(|i| i.flags),
        Err(Errno::EINVAL),
    )?;
    let ct = container.handle();
    let map = map_bytes(
        DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
        good.addr(),
        IOVA_GOOD,
        GOOD_SIZE,
    );
    h.fails_with("MAP_DMA", nr::MAP_DMA, &map, |a| a2(ct, a), Errno::EINVAL)?;
    h.fails_with(
        "UNMAP_DMA",
        nr::UNMAP_DMA,
        &unmap_bytes(0, IOVA_GOOD, GOOD_SIZE),
        |a| a2(ct, a),
        Errno::EINVAL,
    )?;
    h.fails_with(
        "UNMAP_DMA(ALL)",
        nr::UNMAP_DMA,
        &unmap_bytes(DMA_UNMAP_FLAG_ALL, 0, 0),
        |a| a2(ct, a),
        Errno::EINVAL,
    )?;
    expect_eq(
        "CONTAINER_DEBUG",
        container.debug(IOVA_GOOD),
        Err(Errno::EINVAL),
    )
}

fn iommu_info_abuse(h: &Hostile, container: &Container) -> CheckResult {
    let ct = container.handle();
    let call = |g| a2(ct, g);
    for argsz in [0, 8, 15] {
        let b = with_argsz(IommuType1Info::default().to_bytes(), argsz);
        h.fails_with(
            &format!("IOMMU_GET_INFO argsz {argsz}"),
            nr::IOMMU_GET_INFO,
            &b,
            call,
            Errno::EINVAL,
        )?;
    }
    for flags in [IOMMU_INFO_PGSIZES, IOMMU_INFO_CAPS, 1 << 31] {
        let b = with_flags(with_argsz(IommuType1Info::default().to_bytes(), 24), flags);
        h.fails_with(
            &format!("IOMMU_GET_INFO flags {flags:#x}"),
            nr::IOMMU_GET_INFO,
            &b,
            call,
            Errno::EINVAL,
        )?;
    }
    let b = with_argsz(IommuType1Info::default().to_bytes(), MAX_ARGSZ + 1);
    h.fails_with(
        "IOMMU_GET_INFO argsz MAX+1",
        nr::IOMMU_GET_INFO,
        &b,
        call,
        Errno::E2BIG,
    )?;
    h.straddling_ram_end(
        "IOMMU_GET_INFO",
        nr::IOMMU_GET_INFO,
        header8(IommuType1Info::SIZE as u32, 0),
        call,
    )?;
    for gpa in [h.ram_end, FAR, u64::MAX - 7] {
        expect_eq(
            &format!("IOMMU_GET_INFO at {gpa:#x}"),
            raw_call(nr::IOMMU_GET_INFO, a2(ct, gpa)),
            E(Errno::EFAULT),
        )?;
    }
    // Too short for the capability chain: success, CAPS set, cap_offset 0, argsz raised,
    // nothing written past argsz.
    for argsz in [16u32, 24] {
        let b = with_argsz(IommuType1Info::default().to_bytes(), argsz);
        let (r, out) = h.succeeds_with::<64>(
            &format!("IOMMU_GET_INFO argsz {argsz}"),
            nr::IOMMU_GET_INFO,
            &b[..argsz as usize],
            call,
        )?;
        expect_eq(&format!("IOMMU_GET_INFO argsz {argsz}"), r, 0)?;
        let mut fixed = [0u8; IommuType1Info::SIZE];
        fixed.copy_from_slice(&out[..IommuType1Info::SIZE]);
        let i = IommuType1Info::from_bytes(&fixed);
        ensure(i.flags == IOMMU_INFO_PGSIZES | IOMMU_INFO_CAPS, || {
            format!(
                "argsz {argsz}: flags {:#x}, expected PGSIZES|CAPS (a chain exists that did not fit)",
                i.flags
            )
        })?;
        ensure(i.argsz > 24, || {
            format!(
                "argsz {argsz}: argsz written back {}, expected raised to the chain's size",
                i.argsz
            )
        })?;
        ensure(i.iova_pgsizes & 0x1000 != 0, || {
            format!("argsz {argsz}: page sizes {:#x}", i.iova_pgsizes)
        })?;
        if argsz == 24 {
            expect_eq("cap_offset with no room for the chain", i.cap_offset, 0)?;
        }
        if let Some((off, got)) = out[argsz as usize..]
            .iter()
            .position(|b| *b != POISON)
            .map(|i| (i + argsz as usize, out[i + argsz as usize]))
        {
            return Err(format!(
                "IOMMU_GET_INFO argsz {argsz} wrote past argsz at {off:#x} ({got:#04x})"
            ));
        }
    }
    Ok(())
}

fn group_list_abuse(h: &Hostile, count: usize) -> CheckResult {
    let call = |g| a2(g, 0);
    let header = |argsz: u32| {
        GroupList {
            argsz,
            ..GroupList::default()
        }
        .to_bytes()
    };
    for argsz in [0, 8, 15] {
        h.fails_with(
            &format!("GROUP_LIST argsz {argsz}"),
            nr::GROUP_LIST,
            &header(argsz),
            call,
            Errno::EINVAL,
        )?;
    }
    for flags in [1, 1 << 31] {
        h.fails_with(
            &format!("GROUP_LIST flags {flags:#x}"),
            nr::GROUP_LIST,
            &with_flags(header(16), flags),
            call,
            Errno::EINVAL,
        )?;
    }
    h.fails_with(
        "GROUP_LIST argsz MAX+1",
        nr::GROUP_LIST,
        &header(MAX_ARGSZ + 1),
        call,
        Errno::E2BIG,
    )?;
    h.straddling_ram_end("GROUP_LIST", nr::GROUP_LIST, header8(64, 0), call)?;
    for gpa in [h.ram_end, FAR, u64::MAX - 7] {
        expect_eq(
            &format!("GROUP_LIST at {gpa:#x}"),
            raw_call(nr::GROUP_LIST, a2(gpa, 0)),
            E(Errno::EFAULT),
        )?;
    }
    let needed = (GroupList::SIZE + count * GroupListEntry::SIZE) as u32;
    // Header only, then one entry: the count, argsz raised, nothing past argsz.
    for room in [0usize, 1] {
        let argsz = (GroupList::SIZE + room * GroupListEntry::SIZE) as u32;
        let (r, out) = h.succeeds_with::<128>(
            &format!("GROUP_LIST argsz {argsz}"),
            nr::GROUP_LIST,
            &header(argsz),
            call,
        )?;
        expect_eq("result", r, 0)?;
        let mut hb = [0u8; GroupList::SIZE];
        hb.copy_from_slice(&out[..GroupList::SIZE]);
        let l = GroupList::from_bytes(&hb);
        expect_eq(
            &format!("GROUP_LIST argsz {argsz}: count"),
            l.count as usize,
            count,
        )?;
        expect_eq(
            &format!("GROUP_LIST argsz {argsz}: entry_size"),
            l.entry_size as usize,
            GroupListEntry::SIZE,
        )?;
        let want_argsz = if needed > argsz { needed } else { argsz };
        expect_eq(
            &format!("GROUP_LIST argsz {argsz}: argsz written back"),
            l.argsz,
            want_argsz,
        )?;
        if let Some(off) = out[argsz as usize..].iter().position(|b| *b != POISON) {
            return Err(format!(
                "GROUP_LIST argsz {argsz} wrote past argsz at {:#x}",
                off + argsz as usize
            ));
        }
    }
    Ok(())
}

/// DEVICE_MAP_REGION abuses (EINVAL first, then EPERM without the VM binding), then
/// BAR0 mapped at [`BAR0_GPA`] while bound (and in our tables), overlaps (EEXIST), the
/// group unbound again: the mapping stays, new ones are EPERM. The edu, identified and
/// alive through the mapping that outlived the binding.
fn map_region_abuse(
    h: &Hostile,
    group: &Group,
    device: &Device,
    bar: &RegionInfo,
) -> Result<Edu, String> {
    let d = device.handle();
    let size = bar.size;
    let rm = |index: u32, offset: u64, size: u64, gpa: u64| {
        RegionMap {
            argsz: RegionMap::SIZE as u32,
            index,
            offset,
            size,
            gpa,
            ..RegionMap::default()
        }
        .to_bytes()
    };
    let fails = |what: &str, b: &[u8], want: Errno| {
        h.fails_with(what, nr::DEVICE_MAP_REGION, b, |a| a2(d, a), want)
    };
    for (what, b) in [
        ("over its RAM (4 MiB)", rm(0, 0, size, 0x40_0000)),
        ("over its RAM (0)", rm(0, 0, 0x1000, 0)),
        (
            "straddling its RAM end",
            rm(0, 0, 0x2000, h.ram_end - 0x1000),
        ),
        ("unaligned gpa", rm(0, 0, 0x1000, BAR0_GPA + 0x800)),
        ("unaligned offset", rm(0, 0x800, 0x1000, BAR0_GPA)),
        ("unaligned size", rm(0, 0, 0x800, BAR0_GPA)),
        ("size 0", rm(0, 0, 0, BAR0_GPA)),
        ("beyond the region", rm(0, size, 0x1000, BAR0_GPA)),
        ("larger than the region", rm(0, 0, size * 2, BAR0_GPA)),
        ("offset + size wrapping", rm(0, !0xfff, 0x2000, BAR0_GPA)),
        ("gpa wrapping", rm(0, 0, 0x2000, !0xfff)),
        ("BAR1 (not implemented)", rm(1, 0, 0x1000, BAR0_GPA)),
        ("region 9", rm(vfio::NUM_REGIONS, 0, 0x1000, BAR0_GPA)),
        ("flags 1", with_flags(rm(0, 0, 0x1000, BAR0_GPA), 1)),
        ("argsz 39", with_argsz(rm(0, 0, 0x1000, BAR0_GPA), 39)),
    ] {
        fails(&format!("DEVICE_MAP_REGION {what}"), &b, Errno::EINVAL)?;
    }
    let config = device
        .region_info(vfio::REGION_CONFIG)
        .map_err(|e| format!("DEVICE_GET_REGION_INFO(config): {e}"))?;
    if config.flags & REGION_INFO_FLAG_MMAP == 0 {
        fails(
            "DEVICE_MAP_REGION config space",
            &rm(vfio::REGION_CONFIG, 0, 0x1000, BAR0_GPA),
            Errno::EINVAL,
        )?;
    }
    // Every EINVAL above was found without the binding; a good request needs it.
    fails(
        "DEVICE_MAP_REGION before GROUP_BIND_VM",
        &rm(0, 0, size, BAR0_GPA),
        Errno::EPERM,
    )?;
    expect_eq("GROUP_BIND_VM (for the BAR)", group.bind_vm(), Ok(()))?;
    device
        .map_region(vfio::REGION_BAR0, 0, size, BAR0_GPA)
        .map_err(|e| format!("DEVICE_MAP_REGION (good): {e}"))?;
    for (what, b) in [
        ("again", rm(0, 0, size, BAR0_GPA)),
        (
            "overlapping its end",
            rm(0, 0, 0x2000, BAR0_GPA + size - 0x1000),
        ),
        ("inside", rm(0, 0x1000, 0x1000, BAR0_GPA + 0x1000)),
    ] {
        fails(&format!("DEVICE_MAP_REGION {what}"), &b, Errno::EEXIST)?;
    }
    // Unbinding keeps what is mapped (as Linux keeps a process's mmaps when the group
    // leaves kvm-vfio) and refuses new mappings.
    expect_eq("GROUP_UNBIND_VM (BAR mapped)", group.unbind_vm(), Ok(()))?;
    fails(
        "DEVICE_MAP_REGION after GROUP_UNBIND_VM",
        &rm(0, 0, 0x1000, BAR0_GPA + size),
        Errno::EPERM,
    )?;
    paging::map_mmio(BAR0_GPA, size).map_err(|e| format!("map_mmio: {e}"))?;
    // SAFETY: BAR0 of our edu is mapped at BAR0_GPA for `size` (1 MiB) bytes, by the
    // hypervisor and, uncached, in our own tables, until the device is closed (at the
    // end, after the last access).
    let edu = unsafe { Edu::new(BAR0_GPA) };
    let id = edu.ident();
    ensure(id & 0xff == 0xed && id != u32::MAX, || {
        format!("edu ident {id:#010x}")
    })?;
    let x = x86::rdtsc() as u32;
    let got = edu.liveness(x);
    ensure(got == !x, || {
        format!("liveness: wrote {x:#x}, read {got:#x}")
    })?;
    println!("BAR0 mapped at {BAR0_GPA:#x} (kept after GROUP_UNBIND_VM): edu {id:#010x}, alive");
    Ok(edu)
}
