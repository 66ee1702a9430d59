//! `vfio-nvme-killed`: enables an NVMe controller through the VFIO hypercalls and is
//! killed by the hypervisor with the controller enabled and an admin command submitted.
//!
//! 1. the NVMe controller's group (1b36:0010, `vfio-nvme` topology: 00:05.0): opened,
//!    a container with the type1v2 model, a 2 MiB buffer mapped at IOVA 0x200000;
//! 2. the group bound to the VM (mapping a BAR needs it), the device, BAR0 mapped at
//!    guest-physical 0xD0000000;
//! 3. the controller disabled if firmware left it enabled (CC.EN = 0, CSTS.RDY = 0
//!    awaited), the admin queues in the buffer (submission queue at IOVA 0x200000,
//!    completion queue at 0x201000, AQA 2 entries each), CC.EN = 1, CSTS.RDY = 1 awaited;
//! 4. IDENTIFY (controller) submitted and its completion awaited: the data the
//!    controller wrote through the IOMMU names its PCI vendor (0x1b36);
//! 5. a second IDENTIFY submitted and *not* waited for; then `out 0x80, al`, a port no
//!    guest may touch: the hypervisor terminates the guest and releases what it held —
//!    the group leaves its container (its DMA blocked) and the controller is reset
//!    (FLR), so it is no longer enabled.
//!
//! The scenario expects it terminated (`expect=vfio-nvme-killed:terminated`, port 0x80);
//! a failed step exits with status 1 instead (never reaching the port), and surviving
//! the port write exits with 99. The harness reads CC and CSTS through QEMU's monitor
//! at the end (both EN and RDY must be 0) and the IOMMU's own tables (nv1 blocked).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use sluice_guest::abi::vfio::{self as abi_vfio, GROUP_LIST_OWNABLE, REGION_INFO_FLAG_MMAP};
use sluice_guest::client::vfio::Group;
use sluice_guest::console::Console;
use sluice_guest::dma::DmaBuffer;
use sluice_guest::nvme;
use sluice_guest::passthrough::{
    call, device_name, group_list, map_dma_buffer, step, type1v2_container,
};
use sluice_guest::{Checks, GuestStartInfo, paging, println, x86};

sluice_guest::entry!(guest_main);

/// Where the buffer is mapped for the device, and its size.
const IOVA: u64 = 0x20_0000;
const BUFFER_SIZE: u64 = 2 << 20;
/// Offsets in the buffer: admin submission queue, admin completion queue, the data of
/// the waited IDENTIFY, the data of the one in flight when the guest is killed.
const ASQ_OFF: u64 = 0;
const ACQ_OFF: u64 = 0x1000;
const IDENTIFY_OFF: u64 = 0x2000;
const IN_FLIGHT_OFF: u64 = 0x3000;
const COMPLETION_POLLS: u32 = 1_000_000;
/// The port the hypervisor forbids (POST codes, as `bad-port`).
const FORBIDDEN_PORT: u16 = 0x80;
/// Exit status if the port write returns.
const SURVIVED: i32 = 99;

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!(
        "vfio-nvme-killed: an NVMe controller enabled through VFIO, then killed by the hypervisor"
    );
    let mut c = Checks::console();
    match run(&mut c) {
        Some(()) => {
            println!(
                "vfio-nvme-killed: the port write to {FORBIDDEN_PORT:#x} returned: the hypervisor did not stop us"
            );
            SURVIVED
        }
        None => {
            println!("vfio-nvme-killed: stopped at the first failure (later steps depend on it)");
            c.finish()
        }
    }
}

/// Writes the 64-byte IDENTIFY (controller) command with id `cid` into submission slot
/// `slot`, its data to go to IOVA `data`.
fn put_identify(buf: &DmaBuffer, slot: u64, cid: u16, data: u64) {
    buf.write(
        (ASQ_OFF + slot * 64) as usize,
        &nvme::identify_command(cid, data),
    );
}

fn run(c: &mut Checks<Console>) -> Option<()> {
    let entry = step(c, "find-nvme", || {
        let e = group_list()?
            .iter()
            .find(|e| {
                e.vendor_id == nvme::VENDOR
                    && e.device_id == nvme::DEVICE
                    && e.group_flags & GROUP_LIST_OWNABLE != 0
            })
            .copied()
            .ok_or(format!(
                "no {:04x}:{:04x} in a group this guest may own",
                nvme::VENDOR,
                nvme::DEVICE
            ))?;
        println!(
            "NVMe {} is in group {}, which this guest may own",
            device_name(&e),
            e.group_id
        );
        Ok(e)
    })?;

    let group = step(c, "group-open", || {
        let g = call("GROUP_OPEN", Group::open(entry.group_id))?;
        println!("GROUP_OPEN({}) -> handle {:#x}", g.id(), g.handle());
        Ok(g)
    })?;
    let container = step(c, "container", || type1v2_container(&group))?;

    let buf = step(c, "map-dma", || {
        let b = map_dma_buffer(&container, IOVA, BUFFER_SIZE)?;
        println!(
            "MAP_DMA: IOVA {IOVA:#x}..{:#x} -> guest-physical {:#x}, read+write",
            IOVA + BUFFER_SIZE,
            b.addr()
        );
        Ok(b)
    })?;

    step(c, "bind-vm", || call("GROUP_BIND_VM", group.bind_vm()))?;
    let name = device_name(&entry);
    let device = step(c, "device-open", || {
        let d = call("GROUP_GET_DEVICE", group.device(&name))?;
        println!("GROUP_GET_DEVICE({name}) -> handle {:#x}", d.handle());
        Ok(d)
    })?;

    let doorbell_stride = step(c, "map-bar0", || {
        let r = call(
            "DEVICE_GET_REGION_INFO(0)",
            device.region_info(abi_vfio::REGION_BAR0),
        )?;
        if r.flags & REGION_INFO_FLAG_MMAP == 0 {
            return Err(format!("BAR0 flags {:#x}: not mappable", r.flags));
        }
        call(
            "DEVICE_MAP_REGION",
            device.map_region(abi_vfio::REGION_BAR0, 0, r.size, nvme::BAR0_GPA),
        )?;
        paging::map_mmio(nvme::BAR0_GPA, r.size).map_err(|e| format!("map_mmio: {e}"))?;
        let vs = nvme::reg_read(nvme::VS);
        let cap_hi = nvme::reg_read(nvme::CAP + 4);
        println!(
            "BAR0 {:#x} bytes at {:#x}: NVMe version {vs:#x}, CAP.DSTRD {}",
            r.size,
            nvme::BAR0_GPA,
            cap_hi & 0xF
        );
        if vs == 0 || vs == u32::MAX {
            return Err(format!("VS {vs:#x}"));
        }
        Ok(4u64 << (cap_hi & 0xF))
    })?;
    let sq0_tail = nvme::DOORBELLS;
    let cq0_head = nvme::DOORBELLS + doorbell_stride;

    step(c, "nvme-enable", || {
        // Firmware (SeaBIOS's NVMe driver) may have left it enabled: disable it first,
        // as a driver does, and wait for CSTS.RDY = 0.
        let (cc, csts) = (nvme::reg_read(nvme::CC), nvme::reg_read(nvme::CSTS));
        if cc & 1 != 0 || csts & 1 != 0 {
            nvme::reg_write(nvme::CC, cc & !1);
            let idle = (0..nvme::RDY_POLLS).any(|_| nvme::reg_read(nvme::CSTS) & 1 == 0);
            println!(
                "found enabled (CC {cc:#x}, CSTS {csts:#x}): CC.EN = 0 -> CSTS {:#x}",
                nvme::reg_read(nvme::CSTS)
            );
            if !idle {
                return Err(format!(
                    "CSTS {:#x}: still ready after CC.EN = 0",
                    nvme::reg_read(nvme::CSTS)
                ));
            }
        }
        let aqa = (nvme::QUEUE_ENTRIES - 1) << 16 | (nvme::QUEUE_ENTRIES - 1);
        nvme::reg_write(nvme::AQA, aqa);
        nvme::reg_write(nvme::ASQ, (IOVA + ASQ_OFF) as u32);
        nvme::reg_write(nvme::ASQ + 4, ((IOVA + ASQ_OFF) >> 32) as u32);
        nvme::reg_write(nvme::ACQ, (IOVA + ACQ_OFF) as u32);
        nvme::reg_write(nvme::ACQ + 4, ((IOVA + ACQ_OFF) >> 32) as u32);
        nvme::reg_write(nvme::CC, nvme::CC_ENABLE);
        for poll in 0..nvme::RDY_POLLS {
            if nvme::reg_read(nvme::CSTS) & 1 == 1 {
                println!(
                    "AQA {aqa:#x}, ASQ IOVA {:#x}, ACQ IOVA {:#x}; CC {:#x}: CSTS.RDY = 1 after {poll} polls",
                    IOVA + ASQ_OFF,
                    IOVA + ACQ_OFF,
                    nvme::reg_read(nvme::CC)
                );
                return Ok(());
            }
        }
        Err(format!(
            "CSTS {:#x}: never ready",
            nvme::reg_read(nvme::CSTS)
        ))
    })?;

    step(c, "identify", || {
        put_identify(&buf, 0, 1, IOVA + IDENTIFY_OFF);
        nvme::reg_write(sq0_tail, 1);
        let mut cqe = [0u8; 16];
        for _ in 0..COMPLETION_POLLS {
            buf.read(ACQ_OFF as usize, &mut cqe);
            // Phase tag (bit 0 of the status word) set: the entry was posted.
            if cqe[14] & 1 == 1 {
                break;
            }
            core::hint::spin_loop();
        }
        let status = u16::from_le_bytes([cqe[14], cqe[15]]);
        let cid = u16::from_le_bytes([cqe[12], cqe[13]]);
        if status & 1 == 0 {
            return Err(format!(
                "no completion posted at IOVA {:#x} (CSTS {:#x})",
                IOVA + ACQ_OFF,
                nvme::reg_read(nvme::CSTS)
            ));
        }
        if status >> 1 != 0 || cid != 1 {
            return Err(format!("completion: command id {cid}, status {status:#x}"));
        }
        nvme::reg_write(cq0_head, 1);
        let mut head = [0u8; 24];
        buf.read(IDENTIFY_OFF as usize, &mut head);
        let vid = u16::from_le_bytes([head[0], head[1]]);
        let serial = String::from_utf8_lossy(&head[4..24]);
        println!(
            "IDENTIFY completed (id {cid}, status 0): the controller wrote through IOVA {:#x}: PCI vendor {vid:#06x}, serial {:?}",
            IOVA + IDENTIFY_OFF,
            serial.trim_end()
        );
        if vid != nvme::VENDOR {
            return Err(format!("IDENTIFY data names vendor {vid:#06x}"));
        }
        Ok(())
    })?;

    step(c, "identify-in-flight", || {
        put_identify(&buf, 1, 2, IOVA + IN_FLIGHT_OFF);
        nvme::reg_write(sq0_tail, 0);
        let csts = nvme::reg_read(nvme::CSTS);
        println!(
            "IDENTIFY (id 2) to IOVA {:#x} submitted, not waited for; CC {:#x} CSTS {csts:#x}",
            IOVA + IN_FLIGHT_OFF,
            nvme::reg_read(nvme::CC)
        );
        if csts & 1 == 0 {
            return Err(format!("CSTS {csts:#x}: the controller is not ready"));
        }
        Ok(())
    })?;

    println!(
        "out {FORBIDDEN_PORT:#x}: the hypervisor must terminate us now, the controller enabled"
    );
    // SAFETY: deliberately forbidden: the hypervisor must stop us here. The buffer, the
    // group, the container and the device are still ours (alive below) when it does.
    unsafe { x86::outb(FORBIDDEN_PORT, 0x42) };
    // Only reached if the hypervisor let the port write through.
    drop((device, container, group, buf));
    Some(())
}
