//! Steps shared by the guests that take an edu over through the VFIO hypercalls
//! (`vfio-demo`, `vfio-edu`, `vfio-irq`, `vfio-killed`, `vfio-next`): each step is a
//! [`Checks`] line, a failed call reads `WHAT: ERRNO`, and the usual sequence (list the
//! groups, find an edu this guest may own, container with type1v2, the group bound to
//! the VM, BAR0 mapped in both page tables, waiting for an interrupt) is here once.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use sluice_abi::client::vfio::{self as client_vfio, Container, Device, Group};
use sluice_abi::vfio::{
    self, DEVICE_LIST_BRIDGE, DEVICE_LIST_HOST, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE,
    GROUP_LIST_BUSY, GROUP_LIST_OPEN, GROUP_LIST_OWNABLE, GROUP_LIST_VIABLE, GroupListEntry,
    REGION_INFO_FLAG_MMAP,
};

use crate::console::Console;
use crate::dma::DmaBuffer;
use crate::edu::{self, Edu};
use crate::{Checks, Errno, interrupts, paging, println};

/// How long [`wait_vector`] waits: spins with `pause`, then rounds of `sti; hlt`.
const WAIT_SPINS: u64 = 10_000;
const WAIT_HALTS: u64 = 1_000;

/// Runs one step as a check; `Some(value)` if it passed.
pub fn step<T>(
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

/// `WHAT: ERRNO` for a failed call.
pub fn call<T>(what: &str, r: Result<T, Errno>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Every PCI function in an IOMMU group, as this guest sees it (`GROUP_LIST`, grown
/// to the size the hypervisor asks for).
pub fn group_list() -> Result<Vec<GroupListEntry>, String> {
    let mut entries = vec![GroupListEntry::default(); 32];
    let total = call("GROUP_LIST", client_vfio::group_list(&mut entries))?;
    if total > entries.len() {
        entries.resize(total, GroupListEntry::default());
        let again = call("GROUP_LIST", client_vfio::group_list(&mut entries))?;
        if again != total {
            return Err(format!("GROUP_LIST said {total} functions, then {again}"));
        }
    }
    entries.truncate(total);
    Ok(entries)
}

/// Names of the set bits of `f` (`-` for none), comma-separated.
fn flag_names(f: u32, names: &[(u32, &str)]) -> String {
    let mut s = String::new();
    for (bit, name) in names {
        if f & bit != 0 {
            if !s.is_empty() {
                s.push(',');
            }
            s.push_str(name);
        }
    }
    if s.is_empty() { "-".into() } else { s }
}

/// Prints `GROUP_LIST`'s entries as a table (the `/sys/kernel/iommu_groups` of Sluice,
/// with the group's state for this guest).
pub fn print_group_list(entries: &[GroupListEntry]) {
    let group_flags = [
        (GROUP_LIST_OWNABLE, "ownable"),
        (GROUP_LIST_OPEN, "open"),
        (GROUP_LIST_BUSY, "busy"),
        (GROUP_LIST_VIABLE, "viable"),
    ];
    let device_flags = [(DEVICE_LIST_BRIDGE, "bridge"), (DEVICE_LIST_HOST, "host")];
    println!(
        "{} PCI functions in IOMMU groups (as this guest sees them):",
        entries.len()
    );
    println!("  group  device        id         class   device-flags  group-flags");
    for e in entries {
        println!(
            "  {:>5}  {}  {:04x}:{:04x}  {:06x}  {:<12}  {}",
            e.group_id,
            device_name(e),
            e.vendor_id,
            e.device_id,
            e.class_code,
            flag_names(e.device_flags, &device_flags),
            flag_names(e.group_flags, &group_flags)
        );
    }
}

/// The first edu (1234:11e8) whose group this guest may own.
pub fn find_ownable_edu(entries: &[GroupListEntry]) -> Result<GroupListEntry, String> {
    entries
        .iter()
        .find(|e| {
            e.vendor_id == edu::VENDOR_ID
                && e.device_id == edu::DEVICE_ID
                && e.group_flags & GROUP_LIST_OWNABLE != 0
        })
        .copied()
        .ok_or_else(|| {
            "no edu (1234:11e8) in a group this guest may own (groups= on the kernel command line)"
                .into()
        })
}

/// `SSSS:BB:DD.F` of a listed function.
pub fn device_name(e: &GroupListEntry) -> String {
    let name = vfio::format_device_name(e.segment, e.bus, e.devfn);
    String::from(core::str::from_utf8(&name).unwrap_or("?"))
}

/// A container with `group` in it and the type1v2 model set.
pub fn type1v2_container(group: &Group) -> Result<Container, String> {
    let ct = call("CONTAINER_CREATE", Container::new())?;
    call("GROUP_SET_CONTAINER", group.set_container(&ct))?;
    call(
        "CONTAINER_SET_IOMMU(TYPE1v2)",
        ct.set_iommu(vfio::extension::TYPE1V2_IOMMU),
    )?;
    Ok(ct)
}

/// `DEVICE_REGION_READ` of `size` bytes of config space at `offset`.
pub fn cfg_read(d: &Device, offset: u64, size: u32) -> Result<u64, String> {
    call(
        &format!("DEVICE_REGION_READ(config {offset:#x}, {size})"),
        d.region_read(vfio::REGION_CONFIG, offset, size),
    )
}

/// `DEVICE_REGION_WRITE` of `size` bytes of config space at `offset`.
pub fn cfg_write(d: &Device, offset: u64, size: u32, value: u64) -> Result<(), String> {
    call(
        &format!("DEVICE_REGION_WRITE(config {offset:#x}, {size}, {value:#x})"),
        d.region_write(vfio::REGION_CONFIG, offset, size, value),
    )
}

/// The config-space offset of `d`'s capability `id` (5: MSI), walking the list as the
/// hypervisor presents it (bounded: a looping list is an error).
pub fn find_capability(d: &Device, id: u8) -> Result<u64, String> {
    let mut pointer = cfg_read(d, 0x34, 1)? & 0xFC;
    for _ in 0..48 {
        if pointer < 0x40 {
            return Err(format!("no capability {id:#x}"));
        }
        if cfg_read(d, pointer, 1)? == u64::from(id) {
            return Ok(pointer);
        }
        pointer = cfg_read(d, pointer + 1, 1)? & 0xFC;
    }
    Err("the capability list loops".into())
}

/// A zeroed `size`-byte buffer from the heap, aligned to `size` (2 MiB: one superpage
/// entry where the unit has them), mapped read/write for the device at `iova`
/// (`MAP_DMA`).
pub fn map_dma_buffer(container: &Container, iova: u64, size: u64) -> Result<DmaBuffer, String> {
    let b = crate::dma::alloc(size as usize, size as usize)
        .ok_or_else(|| format!("no {size:#x}-aligned {size:#x}-byte buffer in the heap"))?;
    b.fill(0);
    call(
        "MAP_DMA",
        container.map_dma(b.addr(), iova, size, DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE),
    )?;
    Ok(b)
}

/// Waits (spinning, then halting with interrupts on: `sti; hlt`) until `vector` has
/// been delivered `n` times in all.
pub fn wait_vector(vector: u8, n: u64) -> Result<(), String> {
    if interrupts::wait_until(|| interrupts::count(vector) >= n, WAIT_SPINS, WAIT_HALTS) {
        Ok(())
    } else {
        Err(format!(
            "vector {vector:#x} delivered {} times, expected {n}",
            interrupts::count(vector)
        ))
    }
}

/// Waits as [`wait_vector`], then checks `vector` was delivered exactly `n` times in
/// all: an extra delivery would otherwise hide in a later wait.
pub fn wait_exactly(vector: u8, n: u64) -> Result<(), String> {
    wait_vector(vector, n)?;
    match interrupts::count(vector) {
        c if c == n => Ok(()),
        c => Err(format!(
            "vector {vector:#x} delivered {c} times, expected {n}"
        )),
    }
}

/// Spins while interrupts that must not come are given a chance to: small enough for a
/// guest's quantum budget under TCG (a host interrupt makes the guest exit at once, and
/// the hypervisor delivers at every exit).
pub const QUIET_SPINS: u64 = 200_000;

/// Give interrupts that must not come a chance to — [`QUIET_SPINS`] spins with
/// interrupts on, then hypercalls (every exit lets the hypervisor deliver) — and fail,
/// naming `what`, if `vector` arrived meanwhile.
pub fn quiet(vector: u8, what: &str) -> Result<(), String> {
    let before = interrupts::count(vector);
    interrupts::enable();
    for _ in 0..QUIET_SPINS {
        core::hint::spin_loop();
    }
    for _ in 0..100 {
        let _ = crate::client::null();
    }
    interrupts::disable();
    match interrupts::count(vector) - before {
        0 => Ok(()),
        n => Err(format!("{what}: {n} interrupts arrived")),
    }
}

/// BAR0 of `device` mapped at guest-physical `gpa` by the hypervisor
/// (`DEVICE_MAP_REGION`: the device's group must be bound to the VM first,
/// `GROUP_BIND_VM`) and in this guest's own page tables (uncached), checked to be an edu
/// (identification register).
pub fn map_edu_bar0(device: &Device, gpa: u64) -> Result<Edu, String> {
    let r = call(
        "DEVICE_GET_REGION_INFO(0)",
        device.region_info(vfio::REGION_BAR0),
    )?;
    if r.size != edu::BAR0_SIZE || r.flags & REGION_INFO_FLAG_MMAP == 0 {
        return Err(format!(
            "BAR0 size {:#x} flags {:#x}, expected {:#x} with MMAP",
            r.size,
            r.flags,
            edu::BAR0_SIZE
        ));
    }
    call(
        "DEVICE_MAP_REGION",
        device.map_region(vfio::REGION_BAR0, 0, r.size, gpa),
    )?;
    paging::map_mmio(gpa, r.size).map_err(|e| format!("map_mmio: {e}"))?;
    match paging::lookup_live(gpa) {
        Some(l) if l.pa == gpa && l.uncached() => {}
        other => return Err(format!("our tables map {gpa:#x} as {other:?}")),
    }
    // SAFETY: BAR0 of the edu is mapped at `gpa`, uncached, for its 1 MiB, by the
    // hypervisor and in our tables, until the device is closed (the caller keeps it).
    let e = unsafe { Edu::new(gpa) };
    let id = e.ident();
    if id & 0xff != 0xed || id == u32::MAX {
        return Err(format!(
            "identification {id:#010x} at {gpa:#x}, expected 0x......ed ({:#010x})",
            edu::ID_VALUE
        ));
    }
    println!("BAR0 mapped at guest-physical {gpa:#x} (uncached); edu identification {id:#010x}");
    Ok(e)
}
