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
use sluice_guest::nvme;
use sluice_guest::passthrough::{
    call, cfg_read, cfg_write, device_name, find_capability, group_list, step, type1v2_container,
};
use sluice_guest::{Checks, Errno, GuestStartInfo, paging, println};

sluice_guest::entry!(guest_main);

const EDU_VENDOR: u16 = 0x1234;
const EDU_DEVICE: u16 = 0x11e8;

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
    let (_g, _ct, ctrl) = step(c, "nvme-open", || open(nvme::VENDOR, nvme::DEVICE))?;
    step(c, "nvme-reset-flag", || {
        let info = call("DEVICE_GET_INFO", ctrl.info())?;
        println!("DEVICE_GET_INFO flags {:#x}", info.flags);
        if info.flags & DEVICE_FLAGS_RESET == 0 {
            return Err(format!(
                "flags {:#x}: no DEVICE_FLAGS_RESET (the NVMe has FLR)",
                info.flags
            ));
        }
        let ids = cfg_read(&ctrl, 0, 4)?;
        if ids != u64::from(nvme::DEVICE) << 16 | u64::from(nvme::VENDOR) {
            return Err(format!("config ids {ids:#x}"));
        }
        Ok(())
    })?;
    let bar0 = step(c, "nvme-bar0", || {
        let r = call(
            "DEVICE_GET_REGION_INFO(0)",
            ctrl.region_info(abi_vfio::REGION_BAR0),
        )?;
        if r.flags & REGION_INFO_FLAG_MMAP == 0 {
            return Err(format!("BAR0 flags {:#x}: not mappable", r.flags));
        }
        call(
            "DEVICE_MAP_REGION",
            ctrl.map_region(abi_vfio::REGION_BAR0, 0, r.size, nvme::BAR0_GPA),
        )?;
        paging::map_mmio(nvme::BAR0_GPA, r.size).map_err(|e| format!("map_mmio: {e}"))?;
        let vs = nvme::reg_read(nvme::VS);
        println!(
            "BAR0 {:#x} bytes at {:#x}: NVMe version {vs:#x}",
            r.size,
            nvme::BAR0_GPA
        );
        if vs == 0 || vs == u32::MAX {
            return Err(format!("VS {vs:#x}"));
        }
        Ok((r.size, vs))
    })?;
    step(c, "config-bar-virtual", || {
        let original = cfg_read(&ctrl, 0x10, 4)?;
        cfg_write(&ctrl, 0x10, 4, 0xFFFF_FFFF)?;
        let sized = cfg_read(&ctrl, 0x10, 4)?;
        let expected = (!(bar0.0 - 1) as u32 & !0xF) as u64 | (original & 0xF);
        println!(
            "BAR0 register {original:#x}; all-ones written: reads {sized:#x} (size {:#x})",
            bar0.0
        );
        if sized != expected {
            return Err(format!("sizing read {sized:#x}, expected {expected:#x}"));
        }
        cfg_write(&ctrl, 0x10, 4, 0x1234_5000)?;
        let kept = cfg_read(&ctrl, 0x10, 4)?;
        let vs = nvme::reg_read(nvme::VS);
        println!(
            "0x12345000 written: reads {kept:#x}; the controller still answers at {:#x} (VS {vs:#x})",
            nvme::BAR0_GPA
        );
        if vs != bar0.1 {
            return Err(format!(
                "VS now {vs:#x}: the BAR write reached the hardware"
            ));
        }
        cfg_write(&ctrl, 0x10, 4, original)?;
        Ok(())
    })?;
    step(c, "config-command-filter", || {
        let before = cfg_read(&ctrl, 4, 2)?;
        cfg_write(&ctrl, 4, 2, before ^ 1)?;
        let after = cfg_read(&ctrl, 4, 2)?;
        println!("COMMAND {before:#x}; I/O space bit toggled in a write: reads {after:#x}");
        if after & 1 != before & 1 || after & 0x6 != 0x6 {
            return Err(format!(
                "COMMAND {after:#x}: the I/O bit passed or decoding was lost"
            ));
        }
        Ok(())
    })?;
    step(c, "nvme-enable", || {
        nvme::reg_write(nvme::AQA, 0x0001_0001);
        nvme::reg_write(nvme::ASQ, 0x10_0000);
        nvme::reg_write(nvme::ASQ + 4, 0);
        nvme::reg_write(nvme::ACQ, 0x10_1000);
        nvme::reg_write(nvme::ACQ + 4, 0);
        nvme::reg_write(nvme::CC, nvme::CC_ENABLE);
        for poll in 0..nvme::RDY_POLLS {
            if nvme::reg_read(nvme::CSTS) & 1 == 1 {
                println!(
                    "CC.EN = 1: CSTS.RDY = 1 after {poll} polls (CSTS {:#x})",
                    nvme::reg_read(nvme::CSTS)
                );
                return Ok(());
            }
        }
        Err(format!(
            "CSTS {:#x}: never ready",
            nvme::reg_read(nvme::CSTS)
        ))
    })?;
    step(c, "nvme-reset", || {
        call("DEVICE_RESET", ctrl.reset())?;
        let (cc, csts, vs) = (
            nvme::reg_read(nvme::CC),
            nvme::reg_read(nvme::CSTS),
            nvme::reg_read(nvme::VS),
        );
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
        let command = cfg_read(&ctrl, 4, 2)?;
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
