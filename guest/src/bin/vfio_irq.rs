//! `vfio-irq`: a device's MSI, delivered by the hypervisor as the vector this guest chose.
//!
//! 1. its own IDT (`interrupts::init`), a handler on vector 0x60;
//! 2. the edu's group, a type1v2 container, a 2 MiB buffer mapped at IOVA 0x200000, the
//!    device;
//! 3. `DEVICE_GET_IRQ_INFO(MSI)`: at least one vector, bindable; `DEVICE_SET_IRQS`
//!    before the VM binding is `EPERM`; then `GROUP_BIND_VM`, BAR0 (at guest-physical
//!    0xD0000000; mapping it needs the binding too) and MSI vector 0 → 0x60;
//! 4. a loopback trigger (`DATA_NONE | ACTION_TRIGGER`): the 0x60 handler runs;
//! 5. edu → RAM DMA with "raise an interrupt on completion" (cmd bit 2): the guest waits
//!    in `sti; hlt` until the 0x60 handler counted the completion MSI, then checks the
//!    edu's interrupt status (0x24 has the DMA bit 0x100), acknowledges it (0x64) and
//!    compares the bytes;
//! 6. a second edu interrupt through its raise register (0x60): delivered again;
//! 7. MSI disabled (count 0): a loopback is now `EINVAL` and a raised edu interrupt no
//!    longer arrives (INTx stays disabled);
//! 8. teardown. Exit status 0 only if every step passed.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec;
use core::sync::atomic::{Ordering, fence};

use sluice_guest::abi::vfio::{IRQ_INDEX_MSI, IRQ_INFO_EVENTFD};
use sluice_guest::client::vfio::Group;
use sluice_guest::console::Console;
use sluice_guest::edu;
use sluice_guest::passthrough::{
    call, device_name, find_ownable_edu, group_list, map_dma_buffer, map_edu_bar0, step,
    type1v2_container, wait_vector,
};
use sluice_guest::{Checks, Errno, GuestStartInfo, dma, interrupts, println, x86};

sluice_guest::entry!(guest_main);

/// The guest's vector for the edu's MSI.
const VECTOR: u8 = 0x60;
const IOVA: u64 = 0x20_0000;
const BUFFER_SIZE: u64 = 2 << 20;
const BAR0_GPA: u64 = 0xD000_0000;
const XFER: u64 = 256;
const DST_OFF: u64 = 0x1000;
/// Spins after a raise that must not arrive.
const QUIET_SPINS: u64 = 2_000_000;

fn on_vector() {}

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("vfio-irq: the edu's MSI, injected by the hypervisor as vector {VECTOR:#x}");
    interrupts::init();
    interrupts::register(VECTOR, on_vector);
    let mut c = Checks::console();
    if run(&mut c).is_none() {
        println!("vfio-irq: stopped at the first failure (later steps depend on it)");
    }
    interrupts::disable();
    c.finish()
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
        let info = call("DEVICE_GET_IRQ_INFO(MSI)", device.irq_info(IRQ_INDEX_MSI))?;
        println!(
            "DEVICE_GET_IRQ_INFO(MSI): count {}, flags {:#x}",
            info.count, info.flags
        );
        if info.count < 1 || info.flags & IRQ_INFO_EVENTFD == 0 {
            return Err(format!("MSI count {} flags {:#x}", info.count, info.flags));
        }
        Ok(())
    })?;

    step(c, "set-irqs-needs-bind", || {
        match device.set_irq_vectors(IRQ_INDEX_MSI, 0, &[i32::from(VECTOR)]) {
            Err(Errno::EPERM) => {
                println!("DEVICE_SET_IRQS before GROUP_BIND_VM: EPERM (as KVM needs kvm-vfio)");
                Ok(())
            }
            other => Err(format!(
                "DEVICE_SET_IRQS unbound: {other:?}, expected EPERM"
            )),
        }
    })?;

    step(c, "bind-vm", || call("GROUP_BIND_VM", group.bind_vm()))?;
    let edu = step(c, "map-bar0", || map_edu_bar0(&device, BAR0_GPA))?;

    step(c, "set-irqs", || {
        call(
            "DEVICE_SET_IRQS(MSI, 0 -> 0x60)",
            device.set_irq_vectors(IRQ_INDEX_MSI, 0, &[i32::from(VECTOR)]),
        )?;
        println!("MSI vector 0 bound to guest vector {VECTOR:#x}");
        Ok(())
    })?;

    step(c, "loopback", || {
        call(
            "DEVICE_SET_IRQS(loopback)",
            device.trigger_irq(IRQ_INDEX_MSI, 0, 1),
        )?;
        wait_vector(VECTOR, 1)?;
        println!("loopback trigger: handler for {VECTOR:#x} ran (count 1)");
        Ok(())
    })?;

    let seed = x86::rdtsc() ^ 0x6972_7121;
    let mut pattern = vec![0u8; XFER as usize];
    dma::pattern(seed, &mut pattern);
    step(c, "dma-completion-msi", || {
        buf.write(0, &pattern);
        edu.dma_from_ram(IOVA, 0, XFER)
            .map_err(|e| format!("edu DMA RAM -> edu: {e}"))?;
        buf.fill_range(DST_OFF as usize, XFER as usize, 0);
        edu.start_dma_to_ram_irq(0, IOVA + DST_OFF, XFER)
            .map_err(|e| format!("edu DMA edu -> RAM: {e}"))?;
        let t0 = x86::rdtsc();
        wait_vector(VECTOR, 2)?;
        let status = edu.ack_irq();
        println!(
            "edu -> RAM with the completion interrupt: MSI delivered as {VECTOR:#x} after {} TSC ticks; edu irq status {status:#x} acknowledged",
            x86::rdtsc().wrapping_sub(t0)
        );
        if status & edu::IRQ_DMA == 0 {
            return Err(format!(
                "edu irq status {status:#x} lacks the DMA bit {:#x}",
                edu::IRQ_DMA
            ));
        }
        if edu.busy() {
            return Err("the interrupt came before the transfer ended".into());
        }
        fence(Ordering::SeqCst);
        if let Some((off, got, want)) = buf.first_difference(DST_OFF as usize, &pattern) {
            return Err(format!("byte {off:#x}: {got:#04x}, expected {want:#04x}"));
        }
        println!("{XFER} bytes arrived and match");
        Ok(())
    })?;

    step(c, "raise-register", || {
        edu.raise_irq(1);
        wait_vector(VECTOR, 3)?;
        let status = edu.ack_irq();
        println!("edu raise register: delivered (count 3), status {status:#x} acknowledged");
        Ok(())
    })?;

    step(c, "disable", || {
        call(
            "DEVICE_SET_IRQS(MSI, count 0)",
            device.disable_irqs(IRQ_INDEX_MSI),
        )?;
        match device.trigger_irq(IRQ_INDEX_MSI, 0, 1) {
            Err(Errno::EINVAL) => {}
            other => {
                return Err(format!(
                    "loopback after disable: {other:?}, expected EINVAL"
                ));
            }
        }
        let before = interrupts::count(VECTOR);
        edu.raise_irq(2);
        interrupts::enable();
        for _ in 0..QUIET_SPINS {
            core::hint::spin_loop();
        }
        for _ in 0..100 {
            let _ = sluice_guest::client::null();
        }
        interrupts::disable();
        let after = interrupts::count(VECTOR);
        let status = edu.ack_irq();
        println!(
            "MSI disabled: an edu interrupt raised (status {status:#x}) delivered {} times",
            after - before
        );
        if after != before {
            return Err(format!("{} interrupts after disable", after - before));
        }
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
