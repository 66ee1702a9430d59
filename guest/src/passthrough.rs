//! Steps shared by the guests that take an edu over through the VFIO hypercalls one
//! after another (`vfio-killed`, `vfio-next`): each step is a [`Checks`] line, a failed
//! call reads `WHAT: ERRNO`, and the usual sequence (find an edu this guest may own,
//! container with type1v2, BAR0 mapped in both page tables) is here once.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use sluice_abi::client::vfio::{self as client_vfio, Container, Device, Group};
use sluice_abi::vfio::{self, GROUP_LIST_OWNABLE, GroupListEntry, REGION_INFO_FLAG_MMAP};

use crate::console::Console;
use crate::edu::{self, Edu};
use crate::{Checks, Errno, paging, println};

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

/// BAR0 of `device` mapped at guest-physical `gpa` by the hypervisor
/// (`DEVICE_MAP_REGION`) and in this guest's own page tables (uncached), checked to be
/// an edu (identification register).
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
