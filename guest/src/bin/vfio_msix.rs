//! `vfio-msix`: an NVMe controller's MSI-X (QEMU's `nvme`: MSI-X only, its table in
//! BAR0), programmed by the hypervisor and delivered as the vector this guest chose.
//!
//! 1. its own IDT (`interrupts::init`), a handler on vector 0x70;
//! 2. the NVMe's group (1b36:0010, `vfio-nvme` topology: 00:05.0), a type1v2 container,
//!    a 2 MiB buffer at IOVA 0x200000, the VM binding, the device, BAR0 mapped;
//! 3. `DEVICE_GET_IRQ_INFO(MSIX)`: count = the table size, flags EVENTFD | MASKABLE |
//!    NORESIZE; MSI-X subindex 0 (the admin completion queue's vector) bound to 0x70
//!    *before* the controller is enabled (QEMU's nvme claims a vector when it creates
//!    the queue, only if MSI-X is on then); the table entry 0 the hypervisor wrote
//!    (read through the mapped BAR0) is unmasked with a message in the interrupt
//!    window; a `DEVICE_REGION_WRITE` into the table is dropped; MSI and INTx are
//!    refused while MSI-X is on (`EINVAL`);
//! 4. the controller enabled with its admin queues in the buffer; IDENTIFY submitted,
//!    the guest waits in `sti; hlt`: 0x70 arrives exactly once, the completion entry
//!    and the identify data (PCI vendor 0x1b36) are right;
//! 5. vector 0 masked (entry 0's mask bit set), another IDENTIFY: it completes but no
//!    interrupt comes; unmasked: the held interrupt arrives, once;
//! 6. a loopback trigger: 0x70 once more;
//! 7. MSI-X disabled (count 0): entry 0 masked with its message zeroed; a third
//!    IDENTIFY completes with no interrupt; masking or a loopback now is `EINVAL`;
//! 8. teardown. Exit status 0 only if every step passed.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use sluice_guest::abi::vfio::{
    self as abi_vfio, GROUP_LIST_OWNABLE, IRQ_INDEX_INTX, IRQ_INDEX_MSI, IRQ_INDEX_MSIX,
    IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE, REGION_INFO_FLAG_MMAP,
};
use sluice_guest::client::vfio::{Device, Group};
use sluice_guest::console::Console;
use sluice_guest::dma::DmaBuffer;
use sluice_guest::nvme;
use sluice_guest::passthrough::{
    call, cfg_read, device_name, find_capability, group_list, map_dma_buffer, quiet, step,
    type1v2_container, wait_exactly,
};
use sluice_guest::{Checks, Errno, GuestStartInfo, interrupts, paging, println};

sluice_guest::entry!(guest_main);

/// The guest's vector for MSI-X subindex 0.
const VECTOR: u8 = 0x70;
const IOVA: u64 = 0x20_0000;
const BUFFER_SIZE: u64 = 2 << 20;
/// Offsets in the buffer: admin submission and completion queues, identify data.
const ASQ_OFF: u64 = 0;
const ACQ_OFF: u64 = 0x1000;
const IDENTIFY_OFF: u64 = 0x2000;
/// The MSI-X capability's id.
const CAP_MSIX: u8 = 0x11;

fn on_vector() {}

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("vfio-msix: an NVMe controller's MSI-X, injected as vector {VECTOR:#x}");
    interrupts::init();
    interrupts::register(VECTOR, on_vector);
    let mut c = Checks::console();
    if run(&mut c).is_none() {
        println!("vfio-msix: stopped at the first failure (later steps depend on it)");
    }
    interrupts::disable();
    c.finish()
}

/// The 64-byte IDENTIFY (controller) command with id `cid` in submission slot `slot`,
/// its data to IOVA + IDENTIFY_OFF.
fn put_identify(buf: &DmaBuffer, slot: u64, cid: u16) {
    buf.write(
        (ASQ_OFF + slot * 64) as usize,
        &nvme::identify_command(cid, IOVA + IDENTIFY_OFF),
    );
}

/// The completion entry in `slot`: `(command id, status word)` once its phase tag is
/// `phase`, polling a while (the interrupt may come before or after the entry is seen).
fn completion(buf: &DmaBuffer, slot: u64, phase: u16) -> Result<(u16, u16), String> {
    let mut cqe = [0u8; 16];
    for _ in 0..1_000_000 {
        buf.read((ACQ_OFF + slot * 16) as usize, &mut cqe);
        let status = u16::from_le_bytes([cqe[14], cqe[15]]);
        if status & 1 == phase {
            return Ok((u16::from_le_bytes([cqe[12], cqe[13]]), status));
        }
        core::hint::spin_loop();
    }
    Err(format!(
        "no completion in slot {slot} (CSTS {:#x})",
        nvme::reg_read(nvme::CSTS)
    ))
}

/// Check the completion of IDENTIFY `cid` in `slot` and the data it wrote.
fn check_identify(buf: &DmaBuffer, slot: u64, phase: u16, cid: u16) -> Result<(), String> {
    let (got, status) = completion(buf, slot, phase)?;
    if got != cid || status >> 1 != 0 {
        return Err(format!("completion: command id {got}, status {status:#x}"));
    }
    let mut head = [0u8; 24];
    buf.read(IDENTIFY_OFF as usize, &mut head);
    let vid = u16::from_le_bytes([head[0], head[1]]);
    if vid != nvme::VENDOR {
        return Err(format!("IDENTIFY data names vendor {vid:#06x}"));
    }
    let serial = String::from_utf8_lossy(&head[4..24]);
    println!(
        "IDENTIFY {cid} completed (slot {slot}, status 0): vendor {vid:#06x}, serial {:?}",
        serial.trim_end()
    );
    Ok(())
}

/// Where the MSI-X table sits in BAR0 (the capability's Table BIR must be 0), and its
/// size, from config space as the hypervisor presents it.
fn msix_table(device: &Device) -> Result<(u64, u32), String> {
    let cap = find_capability(device, CAP_MSIX)?;
    let control = cfg_read(device, cap + 2, 2)?;
    let table = cfg_read(device, cap + 4, 4)?;
    if table & 7 != 0 {
        return Err(format!("MSI-X table in BAR{}, not BAR0", table & 7));
    }
    Ok((table & !7, (control as u32 & 0x7FF) + 1))
}

/// Table entry `i` through the mapped BAR0: (address, data, vector control).
fn entry(table: u64, i: u64) -> (u64, u32, u32) {
    let at = table + 16 * i;
    (
        u64::from(nvme::reg_read(at)) | u64::from(nvme::reg_read(at + 4)) << 32,
        nvme::reg_read(at + 8),
        nvme::reg_read(at + 12),
    )
}

fn expect_einval(what: &str, r: Result<(), Errno>) -> Result<(), String> {
    match r {
        Err(Errno::EINVAL) => Ok(()),
        other => Err(format!("{what}: {other:?}, expected EINVAL")),
    }
}

fn run(c: &mut Checks<Console>) -> Option<()> {
    let entry0 = step(c, "find-nvme", || {
        group_list()?
            .iter()
            .find(|e| {
                e.vendor_id == nvme::VENDOR
                    && e.device_id == nvme::DEVICE
                    && e.group_flags & GROUP_LIST_OWNABLE != 0
            })
            .copied()
            .ok_or(format!(
                "no ownable {:04x}:{:04x}",
                nvme::VENDOR,
                nvme::DEVICE
            ))
    })?;
    let group = step(c, "group-open", || {
        call("GROUP_OPEN", Group::open(entry0.group_id))
    })?;
    let container = step(c, "container", || type1v2_container(&group))?;
    let buf = step(c, "map-dma", || {
        let b = map_dma_buffer(&container, IOVA, BUFFER_SIZE)?;
        Ok(b)
    })?;
    step(c, "bind-vm", || call("GROUP_BIND_VM", group.bind_vm()))?;
    let name = device_name(&entry0);
    let device = step(c, "device-open", || {
        call("GROUP_GET_DEVICE", group.device(&name))
    })?;
    let stride = step(c, "map-bar0", || {
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
        println!("BAR0: {:#x} bytes at {:#x}", r.size, nvme::BAR0_GPA);
        Ok(4u64 << (nvme::reg_read(nvme::CAP + 4) & 0xF))
    })?;
    let (sq0_tail, cq0_head) = (nvme::DOORBELLS, nvme::DOORBELLS + stride);

    let table = step(c, "msix-bind", || {
        let info = call("DEVICE_GET_IRQ_INFO(MSIX)", device.irq_info(IRQ_INDEX_MSIX))?;
        let msi = call("DEVICE_GET_IRQ_INFO(MSI)", device.irq_info(IRQ_INDEX_MSI))?;
        let intx = call("DEVICE_GET_IRQ_INFO(INTX)", device.irq_info(IRQ_INDEX_INTX))?;
        let (table, size) = msix_table(&device)?;
        println!(
            "IRQ info: MSI-X count {} flags {:#x} (table: {size} entries at BAR0 + {table:#x}); MSI count {}; INTx count {}",
            info.count, info.flags, msi.count, intx.count
        );
        let flags = IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_NORESIZE;
        if info.count != size || info.flags != flags {
            return Err(format!(
                "MSI-X info count {} flags {:#x}, expected {size} and {flags:#x}",
                info.count, info.flags
            ));
        }
        call(
            "DEVICE_SET_IRQS(MSIX 0 -> 0x70)",
            device.set_irq_vectors(IRQ_INDEX_MSIX, 0, &[i32::from(VECTOR)]),
        )?;
        let (address, data, control) = entry(table, 0);
        println!(
            "MSI-X entry 0 as the hypervisor wrote it: address {address:#x} data {data:#x} vector control {control:#x}; entry 1: {:x?}",
            entry(table, 1)
        );
        if address >> 20 != 0xFEE || control & 1 != 0 || entry(table, 1).2 & 1 == 0 {
            return Err(
                "entry 0 not an unmasked interrupt-window message, or entry 1 unmasked".into(),
            );
        }
        // The table is the hypervisor's: a region write into it succeeds, writes nothing.
        call(
            "DEVICE_REGION_WRITE(table entry 0 data)",
            device.region_write(abi_vfio::REGION_BAR0, table + 8, 4, 0x1234),
        )?;
        if entry(table, 0).1 != data {
            return Err(format!("entry 0 data now {:#x}", entry(table, 0).1));
        }
        expect_einval(
            "MSI while MSI-X is on",
            device.set_irq_vectors(IRQ_INDEX_MSI, 0, &[0x71]),
        )?;
        expect_einval(
            "INTx while MSI-X is on",
            device.set_irq_vectors(IRQ_INDEX_INTX, 0, &[0x72]),
        )?;
        println!("region write into the table dropped; MSI and INTx refused (EINVAL)");
        Ok(table)
    })?;

    step(c, "nvme-enable", || {
        let (cc, csts) = (nvme::reg_read(nvme::CC), nvme::reg_read(nvme::CSTS));
        if cc & 1 != 0 || csts & 1 != 0 {
            nvme::reg_write(nvme::CC, cc & !1);
            if !(0..nvme::RDY_POLLS).any(|_| nvme::reg_read(nvme::CSTS) & 1 == 0) {
                return Err(format!(
                    "CSTS {:#x} after CC.EN = 0",
                    nvme::reg_read(nvme::CSTS)
                ));
            }
        }
        nvme::reg_write(
            nvme::AQA,
            (nvme::QUEUE_ENTRIES - 1) << 16 | (nvme::QUEUE_ENTRIES - 1),
        );
        nvme::reg_write(nvme::ASQ, (IOVA + ASQ_OFF) as u32);
        nvme::reg_write(nvme::ASQ + 4, 0);
        nvme::reg_write(nvme::ACQ, (IOVA + ACQ_OFF) as u32);
        nvme::reg_write(nvme::ACQ + 4, 0);
        nvme::reg_write(nvme::CC, nvme::CC_ENABLE);
        if (0..nvme::RDY_POLLS).any(|_| nvme::reg_read(nvme::CSTS) & 1 == 1) {
            Ok(())
        } else {
            Err(format!(
                "CSTS {:#x}: never ready",
                nvme::reg_read(nvme::CSTS)
            ))
        }
    })?;

    step(c, "identify-interrupt", || {
        put_identify(&buf, 0, 1);
        nvme::reg_write(sq0_tail, 1);
        wait_exactly(VECTOR, 1)?;
        check_identify(&buf, 0, 1, 1)?;
        nvme::reg_write(cq0_head, 1);
        println!("MSI-X vector 0 delivered as {VECTOR:#x} exactly once");
        Ok(())
    })?;

    step(c, "mask-holds", || {
        call(
            "DEVICE_SET_IRQS(MSIX, MASK 0)",
            device.mask_irq(IRQ_INDEX_MSIX, 0, 1),
        )?;
        if entry(table, 0).2 & 1 == 0 {
            return Err("entry 0's mask bit is clear after ACTION_MASK".into());
        }
        put_identify(&buf, 1, 2);
        nvme::reg_write(sq0_tail, 0);
        completion(&buf, 1, 1)?;
        quiet(VECTOR, "masked")?;
        check_identify(&buf, 1, 1, 2)?;
        call(
            "DEVICE_SET_IRQS(MSIX, UNMASK 0)",
            device.unmask_irq(IRQ_INDEX_MSIX, 0, 1),
        )?;
        wait_exactly(VECTOR, 2)?;
        quiet(VECTOR, "after the held interrupt")?;
        nvme::reg_write(cq0_head, 0);
        println!("masked: the completion's interrupt held; unmasked: delivered once (count 2)");
        Ok(())
    })?;

    step(c, "loopback", || {
        call(
            "DEVICE_SET_IRQS(MSIX, TRIGGER 0)",
            device.trigger_irq(IRQ_INDEX_MSIX, 0, 1),
        )?;
        wait_exactly(VECTOR, 3)?;
        println!("loopback: delivered (count 3)");
        Ok(())
    })?;

    step(c, "disable", || {
        call(
            "DEVICE_SET_IRQS(MSIX, count 0)",
            device.disable_irqs(IRQ_INDEX_MSIX),
        )?;
        let e = entry(table, 0);
        println!("MSI-X disabled: entry 0 {e:x?}");
        if e != (0, 0, e.2) || e.2 & 1 == 0 {
            return Err(format!("entry 0 {e:x?}: not masked and zeroed"));
        }
        // Third IDENTIFY: slot 0 again, phase 0 after the wrap.
        put_identify(&buf, 0, 3);
        nvme::reg_write(sq0_tail, 1);
        completion(&buf, 0, 0)?;
        quiet(VECTOR, "MSI-X disabled")?;
        check_identify(&buf, 0, 0, 3)?;
        nvme::reg_write(cq0_head, 1);
        expect_einval("mask while off", device.mask_irq(IRQ_INDEX_MSIX, 0, 1))?;
        expect_einval(
            "loopback while off",
            device.trigger_irq(IRQ_INDEX_MSIX, 0, 1),
        )?;
        expect_einval("disable while off", device.disable_irqs(IRQ_INDEX_MSIX))?;
        println!("disabled: the completion came without an interrupt; MASK/TRIGGER/disable EINVAL");
        Ok(())
    })?;

    step(c, "teardown", || {
        nvme::reg_write(nvme::CC, nvme::reg_read(nvme::CC) & !1);
        call("DEVICE close", device.close())?;
        call("UNMAP_DMA", container.unmap_dma(IOVA, BUFFER_SIZE))?;
        call("GROUP_UNBIND_VM", group.unbind_vm())?;
        call("GROUP_UNSET_CONTAINER", group.unset_container())?;
        call("GROUP close", group.close())?;
        call("CONTAINER close", container.close())?;
        Ok(())
    })?;
    Some(())
}
