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

use sluice_guest::abi::vfio::{
    self as abi_vfio, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE, GROUP_LIST_OWNABLE,
    REGION_INFO_FLAG_MMAP,
};
use sluice_guest::client::vfio::Group;
use sluice_guest::console::Console;
use sluice_guest::dma::{self, DmaBuffer};
use sluice_guest::passthrough::{call, device_name, group_list, step, type1v2_container};
use sluice_guest::{Checks, GuestStartInfo, paging, println, x86};

sluice_guest::entry!(guest_main);

const NVME_VENDOR: u16 = 0x1b36;
const NVME_DEVICE: u16 = 0x0010;
/// Where the buffer is mapped for the device, and its size.
const IOVA: u64 = 0x20_0000;
const BUFFER_SIZE: u64 = 2 << 20;
/// Offsets in the buffer: admin submission queue, admin completion queue, the data of
/// the waited IDENTIFY, the data of the one in flight when the guest is killed.
const ASQ_OFF: u64 = 0;
const ACQ_OFF: u64 = 0x1000;
const IDENTIFY_OFF: u64 = 0x2000;
const IN_FLIGHT_OFF: u64 = 0x3000;
/// Where BAR0 goes in guest-physical space.
const BAR0_GPA: u64 = 0xD000_0000;
/// NVMe controller registers.
const NVME_CAP: u64 = 0x00;
const NVME_VS: u64 = 0x08;
const NVME_CC: u64 = 0x14;
const NVME_CSTS: u64 = 0x1C;
const NVME_AQA: u64 = 0x24;
const NVME_ASQ: u64 = 0x28;
const NVME_ACQ: u64 = 0x30;
const NVME_DOORBELLS: u64 = 0x1000;
/// Admin queue entries (each queue); AQA holds them minus one.
const QUEUE_ENTRIES: u32 = 2;
/// CC: EN, IOSQES = 6 (64-byte entries), IOCQES = 4 (16-byte entries).
const CC_ENABLE: u32 = 1 | (6 << 16) | (4 << 20);
const RDY_POLLS: u32 = 100_000;
const COMPLETION_POLLS: u32 = 1_000_000;
/// Admin opcode IDENTIFY, CNS 1 (the controller).
const OPC_IDENTIFY: u8 = 0x06;
const CNS_CONTROLLER: u32 = 1;
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

fn reg_read(offset: u64) -> u32 {
    // SAFETY: BAR0 is mapped uncached at BAR0_GPA (hypervisor and our tables) while the
    // device is open; offsets are controller registers inside it.
    unsafe { core::ptr::read_volatile((BAR0_GPA + offset) as *const u32) }
}

fn reg_write(offset: u64, value: u32) {
    // SAFETY: as in `reg_read`.
    unsafe { core::ptr::write_volatile((BAR0_GPA + offset) as *mut u32, value) }
}

/// Writes the 64-byte IDENTIFY (controller) command with id `cid` into submission slot
/// `slot`, its data to go to IOVA `data`.
fn put_identify(buf: &DmaBuffer, slot: u64, cid: u16, data: u64) {
    let mut cmd = [0u8; 64];
    cmd[0] = OPC_IDENTIFY;
    cmd[2..4].copy_from_slice(&cid.to_le_bytes());
    // PRP1 (the 4 KiB data buffer, page aligned: no PRP2 needed).
    cmd[24..32].copy_from_slice(&data.to_le_bytes());
    cmd[40..44].copy_from_slice(&CNS_CONTROLLER.to_le_bytes());
    buf.write((ASQ_OFF + slot * 64) as usize, &cmd);
}

fn run(c: &mut Checks<Console>) -> Option<()> {
    let entry = step(c, "find-nvme", || {
        let e = group_list()?
            .iter()
            .find(|e| {
                e.vendor_id == NVME_VENDOR
                    && e.device_id == NVME_DEVICE
                    && e.group_flags & GROUP_LIST_OWNABLE != 0
            })
            .copied()
            .ok_or(format!(
                "no {NVME_VENDOR:04x}:{NVME_DEVICE:04x} in a group this guest may own"
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
        let b = dma::alloc(BUFFER_SIZE as usize, BUFFER_SIZE as usize)
            .ok_or("no 2 MiB-aligned 2 MiB buffer in the heap")?;
        b.fill(0);
        call(
            "MAP_DMA",
            container.map_dma(
                b.addr(),
                IOVA,
                BUFFER_SIZE,
                DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
            ),
        )?;
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
            device.map_region(abi_vfio::REGION_BAR0, 0, r.size, BAR0_GPA),
        )?;
        paging::map_mmio(BAR0_GPA, r.size).map_err(|e| format!("map_mmio: {e}"))?;
        let vs = reg_read(NVME_VS);
        let cap_hi = reg_read(NVME_CAP + 4);
        println!(
            "BAR0 {:#x} bytes at {BAR0_GPA:#x}: NVMe version {vs:#x}, CAP.DSTRD {}",
            r.size,
            cap_hi & 0xF
        );
        if vs == 0 || vs == u32::MAX {
            return Err(format!("VS {vs:#x}"));
        }
        Ok(4u64 << (cap_hi & 0xF))
    })?;
    let sq0_tail = NVME_DOORBELLS;
    let cq0_head = NVME_DOORBELLS + doorbell_stride;

    step(c, "nvme-enable", || {
        // Firmware (SeaBIOS's NVMe driver) may have left it enabled: disable it first,
        // as a driver does, and wait for CSTS.RDY = 0.
        let (cc, csts) = (reg_read(NVME_CC), reg_read(NVME_CSTS));
        if cc & 1 != 0 || csts & 1 != 0 {
            reg_write(NVME_CC, cc & !1);
            let idle = (0..RDY_POLLS).any(|_| reg_read(NVME_CSTS) & 1 == 0);
            println!(
                "found enabled (CC {cc:#x}, CSTS {csts:#x}): CC.EN = 0 -> CSTS {:#x}",
                reg_read(NVME_CSTS)
            );
            if !idle {
                return Err(format!(
                    "CSTS {:#x}: still ready after CC.EN = 0",
                    reg_read(NVME_CSTS)
                ));
            }
        }
        let aqa = (QUEUE_ENTRIES - 1) << 16 | (QUEUE_ENTRIES - 1);
        reg_write(NVME_AQA, aqa);
        reg_write(NVME_ASQ, (IOVA + ASQ_OFF) as u32);
        reg_write(NVME_ASQ + 4, ((IOVA + ASQ_OFF) >> 32) as u32);
        reg_write(NVME_ACQ, (IOVA + ACQ_OFF) as u32);
        reg_write(NVME_ACQ + 4, ((IOVA + ACQ_OFF) >> 32) as u32);
        reg_write(NVME_CC, CC_ENABLE);
        for poll in 0..RDY_POLLS {
            if reg_read(NVME_CSTS) & 1 == 1 {
                println!(
                    "AQA {aqa:#x}, ASQ IOVA {:#x}, ACQ IOVA {:#x}; CC {:#x}: CSTS.RDY = 1 after {poll} polls",
                    IOVA + ASQ_OFF,
                    IOVA + ACQ_OFF,
                    reg_read(NVME_CC)
                );
                return Ok(());
            }
        }
        Err(format!("CSTS {:#x}: never ready", reg_read(NVME_CSTS)))
    })?;

    step(c, "identify", || {
        put_identify(&buf, 0, 1, IOVA + IDENTIFY_OFF);
        reg_write(sq0_tail, 1);
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
                reg_read(NVME_CSTS)
            ));
        }
        if status >> 1 != 0 || cid != 1 {
            return Err(format!("completion: command id {cid}, status {status:#x}"));
        }
        reg_write(cq0_head, 1);
        let mut head = [0u8; 24];
        buf.read(IDENTIFY_OFF as usize, &mut head);
        let vid = u16::from_le_bytes([head[0], head[1]]);
        let serial = String::from_utf8_lossy(&head[4..24]);
        println!(
            "IDENTIFY completed (id {cid}, status 0): the controller wrote through IOVA {:#x}: PCI vendor {vid:#06x}, serial {:?}",
            IOVA + IDENTIFY_OFF,
            serial.trim_end()
        );
        if vid != NVME_VENDOR {
            return Err(format!("IDENTIFY data names vendor {vid:#06x}"));
        }
        Ok(())
    })?;

    step(c, "identify-in-flight", || {
        put_identify(&buf, 1, 2, IOVA + IN_FLIGHT_OFF);
        reg_write(sq0_tail, 0);
        let csts = reg_read(NVME_CSTS);
        println!(
            "IDENTIFY (id 2) to IOVA {:#x} submitted, not waited for; CC {:#x} CSTS {csts:#x}",
            IOVA + IN_FLIGHT_OFF,
            reg_read(NVME_CC)
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
