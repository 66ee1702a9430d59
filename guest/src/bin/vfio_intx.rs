//! `vfio-intx`: a device's legacy INTx, through the I/O APIC, delivered by the
//! hypervisor as the vector this guest chose — level-triggered and *automasked*.
//!
//! 1. its own IDT (`interrupts::init`), a handler on vector 0x61;
//! 2. the edu's group, a type1v2 container, a 2 MiB buffer mapped at IOVA 0x200000, the
//!    device;
//! 3. `DEVICE_GET_IRQ_INFO(INTX)`: count 1, flags EVENTFD | MASKABLE | AUTOMASKED (the
//!    firmware's `_PRT` names the edu's GSI); `DEVICE_SET_IRQS(INTX)` before the VM
//!    binding is `EPERM`; then `GROUP_BIND_VM`, BAR0 and INTx → 0x61; enabling MSI now
//!    is `EINVAL` (one interrupt type at a time);
//! 4. the edu raises its interrupt (raise register 0x60; MSI is off, so the edu asserts
//!    INTx): 0x61 arrives once. The guest does not acknowledge yet: the line is still
//!    asserted, but the hypervisor masked the device (automask), so nothing more comes.
//!    Acknowledge (0x64), `ACTION_UNMASK`: still nothing (the device deasserted);
//! 5. a loopback trigger: 0x61 again;
//! 6. edu → RAM DMA with "raise an interrupt on completion": the guest waits in
//!    `sti; hlt`, the interrupt's status has the DMA bit, the bytes match; unmask;
//! 7. `ACTION_MASK` by hand, the edu raises: nothing; `ACTION_UNMASK` with the device
//!    still asserting: it arrives at once; acknowledge, unmask;
//! 8. INTx disabled (count 0): a raised interrupt no longer arrives; MSI can now be
//!    enabled (loopback arrives), then disabled;
//! 9. teardown. Exit status 0 only if every step passed.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec;
use core::sync::atomic::{Ordering, fence};

use sluice_guest::abi::vfio::{
    IRQ_INDEX_INTX, IRQ_INDEX_MSI, IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE,
};
use sluice_guest::client::vfio::Group;
use sluice_guest::console::Console;
use sluice_guest::edu::{self, Edu};
use sluice_guest::passthrough::{
    call, device_name, find_ownable_edu, group_list, map_dma_buffer, map_edu_bar0, quiet, step,
    type1v2_container, wait_exactly,
};
use sluice_guest::{Checks, Errno, GuestStartInfo, dma, interrupts, println, x86};

sluice_guest::entry!(guest_main);

/// The guest's vector for the edu's INTx.
const VECTOR: u8 = 0x61;
/// The guest's vector for the MSI after INTx is disabled.
const MSI_VECTOR: u8 = 0x62;
const IOVA: u64 = 0x20_0000;
const BUFFER_SIZE: u64 = 2 << 20;
const BAR0_GPA: u64 = 0xD000_0000;
const XFER: u64 = 256;
const DST_OFF: u64 = 0x1000;

fn on_vector() {}

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("vfio-intx: the edu's INTx, through the I/O APIC, injected as vector {VECTOR:#x}");
    interrupts::init();
    interrupts::register(VECTOR, on_vector);
    interrupts::register(MSI_VECTOR, on_vector);
    let mut c = Checks::console();
    if run(&mut c).is_none() {
        println!("vfio-intx: stopped at the first failure (later steps depend on it)");
    }
    interrupts::disable();
    c.finish()
}

/// The edu's interrupt status, without acknowledging it.
fn status(edu: &Edu) -> u32 {
    edu.read32(edu::regs::IRQ_STATUS)
}

fn run(c: &mut Checks<Console>) -> Option<()> {
    let entry = step(c, "find-edu", || {
        let e = find_ownable_edu(&group_list()?)?;
        println!("edu {} in group {}", device_name(&e), e.group_id);
        Ok(e)
    })?;
    let group = step(c, "group-open", || {
        call("GROUP_OPEN", Group::open(entry.group_id))
    })?;
    let container = step(c, "container", || type1v2_container(&group))?;
    let buf = step(c, "map-dma", || {
        let b = map_dma_buffer(&container, IOVA, BUFFER_SIZE)?;
        Ok(b)
    })?;
    let name = device_name(&entry);
    let device = step(c, "device-open", || {
        call("GROUP_GET_DEVICE", group.device(&name))
    })?;
    step(c, "irq-info", || {
        let info = call("DEVICE_GET_IRQ_INFO(INTX)", device.irq_info(IRQ_INDEX_INTX))?;
        println!(
            "DEVICE_GET_IRQ_INFO(INTX): count {}, flags {:#x}",
            info.count, info.flags
        );
        let want = IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED;
        if info.count != 1 || info.flags != want {
            return Err(format!(
                "INTx count {} flags {:#x}, expected 1 and {want:#x}",
                info.count, info.flags
            ));
        }
        Ok(())
    })?;
    step(c, "set-irqs-needs-bind", || {
        match device.set_irq_vectors(IRQ_INDEX_INTX, 0, &[i32::from(VECTOR)]) {
            Err(Errno::EPERM) => Ok(()),
            other => Err(format!(
                "DEVICE_SET_IRQS unbound: {other:?}, expected EPERM"
            )),
        }
    })?;
    step(c, "bind-vm", || call("GROUP_BIND_VM", group.bind_vm()))?;
    let edu = step(c, "map-bar0", || map_edu_bar0(&device, BAR0_GPA))?;
    step(c, "set-irqs", || {
        call(
            "DEVICE_SET_IRQS(INTX -> 0x61)",
            device.set_irq_vectors(IRQ_INDEX_INTX, 0, &[i32::from(VECTOR)]),
        )?;
        println!("INTx bound to guest vector {VECTOR:#x}");
        match device.set_irq_vectors(IRQ_INDEX_MSI, 0, &[i32::from(MSI_VECTOR)]) {
            Err(Errno::EINVAL) => {
                println!("MSI while INTx is enabled: EINVAL (one interrupt type at a time)");
                Ok(())
            }
            other => Err(format!("MSI with INTx on: {other:?}, expected EINVAL")),
        }
    })?;

    step(c, "raise-automask", || {
        edu.raise_irq(1);
        wait_exactly(VECTOR, 1)?;
        println!("edu raised INTx: delivered as {VECTOR:#x} (count 1)");
        // Not acknowledged: the edu still asserts its pin, but the device is masked.
        quiet(VECTOR, "unacknowledged, automasked")?;
        if status(&edu) & 1 == 0 {
            return Err("edu interrupt status lost".into());
        }
        let s = edu.ack_irq();
        call(
            "DEVICE_SET_IRQS(INTX unmask)",
            device.unmask_irq(IRQ_INDEX_INTX, 0, 1),
        )?;
        quiet(VECTOR, "acknowledged, then unmasked")?;
        println!(
            "still asserted but automasked: no second interrupt; status {s:#x} acknowledged, unmasked: none"
        );
        Ok(())
    })?;

    step(c, "loopback", || {
        call(
            "DEVICE_SET_IRQS(INTX loopback)",
            device.trigger_irq(IRQ_INDEX_INTX, 0, 1),
        )?;
        wait_exactly(VECTOR, 2)?;
        println!("loopback trigger: delivered (count 2)");
        Ok(())
    })?;

    let seed = x86::rdtsc() ^ 0x696e_7478;
    let mut pattern = vec![0u8; XFER as usize];
    dma::pattern(seed, &mut pattern);
    step(c, "dma-completion-intx", || {
        buf.write(0, &pattern);
        edu.dma_from_ram(IOVA, 0, XFER)
            .map_err(|e| format!("edu DMA RAM -> edu: {e}"))?;
        buf.fill_range(DST_OFF as usize, XFER as usize, 0);
        edu.start_dma_to_ram_irq(0, IOVA + DST_OFF, XFER)
            .map_err(|e| format!("edu DMA edu -> RAM: {e}"))?;
        wait_exactly(VECTOR, 3)?;
        let s = edu.ack_irq();
        call(
            "DEVICE_SET_IRQS(INTX unmask)",
            device.unmask_irq(IRQ_INDEX_INTX, 0, 1),
        )?;
        if s & edu::IRQ_DMA == 0 {
            return Err(format!("edu irq status {s:#x} lacks the DMA bit"));
        }
        if edu.busy() {
            return Err("the interrupt came before the transfer ended".into());
        }
        fence(Ordering::SeqCst);
        if let Some((off, got, want)) = buf.first_difference(DST_OFF as usize, &pattern) {
            return Err(format!("byte {off:#x}: {got:#04x}, expected {want:#04x}"));
        }
        println!("edu -> RAM: completion INTx delivered (status {s:#x}), {XFER} bytes match");
        Ok(())
    })?;

    step(c, "mask-unmask", || {
        call(
            "DEVICE_SET_IRQS(INTX mask)",
            device.mask_irq(IRQ_INDEX_INTX, 0, 1),
        )?;
        edu.raise_irq(1);
        quiet(VECTOR, "masked by hand")?;
        call(
            "DEVICE_SET_IRQS(INTX unmask)",
            device.unmask_irq(IRQ_INDEX_INTX, 0, 1),
        )?;
        wait_exactly(VECTOR, 4)?;
        let s = edu.ack_irq();
        call(
            "DEVICE_SET_IRQS(INTX unmask)",
            device.unmask_irq(IRQ_INDEX_INTX, 0, 1),
        )?;
        println!("masked: held; unmasked while asserted: delivered (count 4), status {s:#x}");
        Ok(())
    })?;

    step(c, "disable", || {
        call(
            "DEVICE_SET_IRQS(INTX, count 0)",
            device.disable_irqs(IRQ_INDEX_INTX),
        )?;
        edu.raise_irq(1);
        quiet(VECTOR, "INTx disabled")?;
        edu.ack_irq();
        call(
            "DEVICE_SET_IRQS(MSI -> 0x62)",
            device.set_irq_vectors(IRQ_INDEX_MSI, 0, &[i32::from(MSI_VECTOR)]),
        )?;
        edu.raise_irq(1);
        wait_exactly(MSI_VECTOR, 1)?;
        edu.ack_irq();
        call(
            "DEVICE_SET_IRQS(MSI, count 0)",
            device.disable_irqs(IRQ_INDEX_MSI),
        )?;
        println!(
            "INTx disabled: nothing; MSI then enabled: the raised interrupt arrives as {MSI_VECTOR:#x}"
        );
        Ok(())
    })?;

    step(c, "teardown", || {
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
