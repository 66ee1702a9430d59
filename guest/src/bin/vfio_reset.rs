//! `vfio-reset`: DEVICE_RESET and config-space mediation (DEVICE_REGION_READ / WRITE),
//! on an NVMe controller (which has FLR) and an edu (which has no reset method).
//!
//! 1. the NVMe controller's group (1b36:0010, `vfio-nvme` topology: 00:05.0): container,
//!    type1v2, bound to the VM (mapping a BAR needs it), device; DEVICE_GET_INFO has
//!    DEVICE_FLAGS_RESET; config reads show its ids;
//! 2. BAR0 mapped at 0xD0000000; config writes of all-ones to BAR0 read back the size
//!    mask, another value is kept virtually — and the controller still answers at its
//!    real address through the mapping (the write never reached the hardware);
//! 3. COMMAND written with the I/O space bit toggled: it does not reach the hardware;
//! 4. the controller enabled (AQA, ASQ, ACQ, CC.EN = 1): CSTS.RDY = 1;
//! 5. DEVICE_RESET: CSTS.RDY = 0 and CC = 0 (the FLR reset it), BAR0 still decodes at
//!    the same address (config restored), BAR0's virtual register back to the address;
//! 6. the edu's group (00:03.0): no reset method: no DEVICE_FLAGS_RESET, DEVICE_RESET is
//!    EINVAL; its MSI address written through config reads back virtually.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use sluice_guest::abi::vfio::{
    self as abi_vfio, DEVICE_FLAGS_RESET, GROUP_LIST_OWNABLE, REGION_INFO_FLAG_MMAP,
};
use sluice_guest::client::vfio::{Device, Group};
use sluice_guest::console::Console;
use sluice_guest::passthrough::{
    call, cfg_read, cfg_write, device_name, find_capability, group_list, step, type1v2_container,
};
use sluice_guest::{Checks, Errno, GuestStartInfo, paging, println};

sluice_guest::entry!(guest_main);

const NVME_VENDOR: u16 = 0x1b36;
const NVME_DEVICE: u16 = 0x0010;
const EDU_VENDOR: u16 = 0x1234;
const EDU_DEVICE: u16 = 0x11e8;
const BAR0_GPA: u64 = 0xD000_0000;
/// NVMe controller registers.
const NVME_VS: u64 = 0x08;
const NVME_CC: u64 = 0x14;
const NVME_CSTS: u64 = 0x1C;
const NVME_AQA: u64 = 0x24;
const NVME_ASQ: u64 = 0x28;
const NVME_ACQ: u64 = 0x30;
/// CC: EN, IOSQES = 6 (64-byte entries), IOCQES = 4 (16-byte entries).
const CC_ENABLE: u32 = 1 | (6 << 16) | (4 << 20);
const RDY_POLLS: u32 = 100_000;

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!(
        "vfio-reset: DEVICE_RESET and config-space mediation on an NVMe controller and an edu"
    );
    let mut c = Checks::console();
    if run(&mut c).is_none() {
        println!("vfio-reset: stopped at the first failure (later steps depend on it)");
    }
    c.finish()
}

fn reg_read(offset: u64) -> u32 {
    // SAFETY: BAR0 is mapped uncached at BAR0_GPA (hypervisor and our tables) while the
    // device is open; offsets are controller registers inside it.
    unsafe { core::ptr::read_volatile((BAR0_GPA + offset) as *const u32) }
}

fn reg_write(offset: u64, value: u32) {
    // SAFETY: as in `reg_read`.
    unsafe { core::ptr::write_volatile((BAR0_GPA + offset) as *mut u32, value) }
}

fn open(
    vendor: u16,
    device: u16,
) -> Result<(Group, sluice_guest::client::vfio::Container, Device), String> {
    let entries = group_list()?;
    let e = entries
        .iter()
        .find(|e| {
            e.vendor_id == vendor
                && e.device_id == device
                && e.group_flags & GROUP_LIST_OWNABLE != 0
        })
        .copied()
        .ok_or(format!(
            "no {vendor:04x}:{device:04x} in a group this guest may own"
        ))?;
    let name = device_name(&e);
    println!(
        "{vendor:04x}:{device:04x} is {name} in group {}",
        e.group_id
    );
    let g = call("GROUP_OPEN", Group::open(e.group_id))?;
    let ct = type1v2_container(&g)?;
    // Mapping a BAR into the VM needs the VM binding.
    call("GROUP_BIND_VM", g.bind_vm())?;
    let d = call("GROUP_GET_DEVICE", g.device(&name))?;
    Ok((g, ct, d))
}

fn run(c: &mut Checks<Console>) -> Option<()> {
    let (_g, _ct, nvme) = step(c, "nvme-open", || open(NVME_VENDOR, NVME_DEVICE))?;
    step(c, "nvme-reset-flag", || {
        let info = call("DEVICE_GET_INFO", nvme.info())?;
        println!("DEVICE_GET_INFO flags {:#x}", info.flags);
        if info.flags & DEVICE_FLAGS_RESET == 0 {
            return Err(format!(
                "flags {:#x}: no DEVICE_FLAGS_RESET (the NVMe has FLR)",
                info.flags
            ));
        }
        let ids = cfg_read(&nvme, 0, 4)?;
        if ids != u64::from(NVME_DEVICE) << 16 | u64::from(NVME_VENDOR) {
            return Err(format!("config ids {ids:#x}"));
        }
        Ok(())
    })?;
    let bar0 = step(c, "nvme-bar0", || {
        let r = call(
            "DEVICE_GET_REGION_INFO(0)",
            nvme.region_info(abi_vfio::REGION_BAR0),
        )?;
        if r.flags & REGION_INFO_FLAG_MMAP == 0 {
            return Err(format!("BAR0 flags {:#x}: not mappable", r.flags));
        }
        call(
            "DEVICE_MAP_REGION",
            nvme.map_region(abi_vfio::REGION_BAR0, 0, r.size, BAR0_GPA),
        )?;
        paging::map_mmio(BAR0_GPA, r.size).map_err(|e| format!("map_mmio: {e}"))?;
        let vs = reg_read(NVME_VS);
        println!(
            "BAR0 {:#x} bytes at {BAR0_GPA:#x}: NVMe version {vs:#x}",
            r.size
        );
        if vs == 0 || vs == u32::MAX {
            return Err(format!("VS {vs:#x}"));
        }
        Ok((r.size, vs))
    })?;
    step(c, "config-bar-virtual", || {
        let original = cfg_read(&nvme, 0x10, 4)?;
        cfg_write(&nvme, 0x10, 4, 0xFFFF_FFFF)?;
        let sized = cfg_read(&nvme, 0x10, 4)?;
        let expected = (!(bar0.0 - 1) as u32 & !0xF) as u64 | (original & 0xF);
        println!(
            "BAR0 register {original:#x}; all-ones written: reads {sized:#x} (size {:#x})",
            bar0.0
        );
        if sized != expected {
            return Err(format!("sizing read {sized:#x}, expected {expected:#x}"));
        }
        cfg_write(&nvme, 0x10, 4, 0x1234_5000)?;
        let kept = cfg_read(&nvme, 0x10, 4)?;
        let vs = reg_read(NVME_VS);
        println!(
            "0x12345000 written: reads {kept:#x}; the controller still answers at {BAR0_GPA:#x} (VS {vs:#x})"
        );
        if vs != bar0.1 {
            return Err(format!(
                "VS now {vs:#x}: the BAR write reached the hardware"
            ));
        }
        cfg_write(&nvme, 0x10, 4, original)?;
        Ok(())
    })?;
    step(c, "config-command-filter", || {
        let before = cfg_read(&nvme, 4, 2)?;
        cfg_write(&nvme, 4, 2, before ^ 1)?;
        let after = cfg_read(&nvme, 4, 2)?;
        println!("COMMAND {before:#x}; I/O space bit toggled in a write: reads {after:#x}");
        if after & 1 != before & 1 || after & 0x6 != 0x6 {
            return Err(format!(
                "COMMAND {after:#x}: the I/O bit passed or decoding was lost"
            ));
        }
        Ok(())
    })?;
    step(c, "nvme-enable", || {
        reg_write(NVME_AQA, 0x0001_0001);
        reg_write(NVME_ASQ, 0x10_0000);
        reg_write(NVME_ASQ + 4, 0);
        reg_write(NVME_ACQ, 0x10_1000);
        reg_write(NVME_ACQ + 4, 0);
        reg_write(NVME_CC, CC_ENABLE);
        for poll in 0..RDY_POLLS {
            if reg_read(NVME_CSTS) & 1 == 1 {
                println!(
                    "CC.EN = 1: CSTS.RDY = 1 after {poll} polls (CSTS {:#x})",
                    reg_read(NVME_CSTS)
                );
                return Ok(());
            }
        }
        Err(format!("CSTS {:#x}: never ready", reg_read(NVME_CSTS)))
    })?;
    step(c, "nvme-reset", || {
        call("DEVICE_RESET", nvme.reset())?;
        let (cc, csts, vs) = (reg_read(NVME_CC), reg_read(NVME_CSTS), reg_read(NVME_VS));
        println!("DEVICE_RESET -> 0: CC {cc:#x}, CSTS {csts:#x}, VS {vs:#x}");
        if csts & 1 != 0 || cc & 1 != 0 {
            return Err(format!(
                "CC {cc:#x} CSTS {csts:#x}: the controller was not reset"
            ));
        }
        if vs != bar0.1 {
            return Err(format!(
                "VS {vs:#x}: BAR0 no longer decodes at its address (config not restored)"
            ));
        }
        let command = cfg_read(&nvme, 4, 2)?;
        if command & 0x6 != 0x6 {
            return Err(format!(
                "COMMAND {command:#x} after the reset: decoding/bus master not restored"
            ));
        }
        Ok(())
    })?;
    let (_eg, _ect, edu) = step(c, "edu-open", || open(EDU_VENDOR, EDU_DEVICE))?;
    step(c, "edu-no-reset", || {
        let info = call("DEVICE_GET_INFO", edu.info())?;
        if info.flags & DEVICE_FLAGS_RESET != 0 {
            return Err(format!(
                "flags {:#x}: the edu has no reset method",
                info.flags
            ));
        }
        match edu.reset() {
            Err(Errno::EINVAL) => {
                println!(
                    "edu: no DEVICE_FLAGS_RESET (flags {:#x}); DEVICE_RESET -> EINVAL",
                    info.flags
                );
                Ok(())
            }
            other => Err(format!(
                "DEVICE_RESET on the edu: {other:?}, expected EINVAL"
            )),
        }
    })?;
    step(c, "edu-msi-virtual", || {
        let msi = find_capability(&edu, 0x05)?;
        cfg_write(&edu, msi + 4, 4, 0xdead_0000)?;
        let back = cfg_read(&edu, msi + 4, 4)?;
        println!("edu MSI at {msi:#x}: address 0xdead0000 written, reads {back:#x} (virtual)");
        if back != 0xdead_0000 {
            return Err(format!("MSI address reads {back:#x}"));
        }
        Ok(())
    })?;
    Some(())
}
