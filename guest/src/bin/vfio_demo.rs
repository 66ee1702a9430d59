//! `vfio-demo`: the passthrough demo `./qemu-run.sh` boots. One edu (QEMU's teaching PCI
//! device) handed to this guest through the VFIO hypercalls, every step printed with what
//! the IOMMU does about it — a walk-through for newcomers, using only the ABI client
//! (`sluice_abi::client::vfio`, shared steps in `sluice_guest::passthrough`):
//!
//! 1. `GROUP_LIST`: the IOMMU groups this guest sees; the edu's group, which it may own;
//! 2. `GROUP_OPEN`: the group is ours (still blocked: the IOMMU lets it DMA nowhere);
//! 3. `CONTAINER_CREATE`, `GROUP_SET_CONTAINER`, `CONTAINER_SET_IOMMU(type1v2)`: an IO
//!    address space, backed by an IOMMU domain the edu is attached to;
//! 4. `MAP_DMA`: a 2 MiB buffer at IOVA 0x200000 (both 2 MiB aligned: one superpage
//!    where the unit has them); `CONTAINER_DEBUG` makes the hypervisor print the
//!    context / device-table entry and the page walk for that IOVA;
//! 5. `GROUP_GET_DEVICE`; `DEVICE_MAP_REGION` before the VM binding is `EPERM`;
//!    `GROUP_BIND_VM` (the VM becomes the group's user, as KVM's kvm-vfio) and
//!    `GROUP_VM_INFO`; BAR0 mapped at guest-physical 0xE0000000;
//! 6. `DEVICE_GET_IRQ_INFO(MSI)`, `DEVICE_SET_IRQS`: the edu's MSI delivered as vector
//!    0x50, which this guest chose;
//! 7. edu DMA RAM → edu and edu → RAM with "interrupt when done": the guest halts
//!    (`sti; hlt`) until each completion MSI arrives, acknowledges it in the edu, and
//!    compares the bytes;
//! 8. a DMA to an IOVA nothing maps (0x600000): the IOMMU blocks it, the buffer stays
//!    as it was (on VT-d the unit's fault record names the edu and the IOVA);
//! 9. teardown: MSI off, unbound, device closed, out of the container, all closed.
//!
//! Each step is a check (`check NAME: ok`); the demo stops at the first failure. Exit
//! status 0 only if every step passed.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use core::sync::atomic::{Ordering, fence};

use sluice_guest::abi::vfio::{
    self, GROUP_FLAGS_VIABLE, GROUP_VM_INFO_COHERENT, IRQ_INDEX_MSI, IRQ_INFO_EVENTFD, extension,
};
use sluice_guest::client::vfio::{Container, Group};
use sluice_guest::console::Console;
use sluice_guest::edu::{self, Edu};
use sluice_guest::passthrough::{
    call, device_name, find_ownable_edu, group_list, map_dma_buffer, map_edu_bar0,
    print_group_list, step, wait_vector,
};
use sluice_guest::{Checks, Errno, GuestStartInfo, dma, interrupts, println, x86};

sluice_guest::entry!(guest_main);

/// The vector this guest picks for the edu's MSI.
const VECTOR: u8 = 0x50;
/// Where the buffer is mapped for the device: 2 MiB aligned, below the edu's 28-bit
/// DMA mask.
const IOVA: u64 = 0x20_0000;
const BUFFER_SIZE: u64 = 2 << 20;
/// An IOVA nothing maps (beyond the buffer's mapping).
const UNMAPPED_IOVA: u64 = 0x60_0000;
/// Where BAR0 goes in this guest's physical address space (far above its RAM).
const BAR0_GPA: u64 = 0xE000_0000;
/// Bytes per transfer (QEMU 7.2 aborts on one that ends at the edu buffer's end).
const XFER: u64 = 256;
/// Offsets in the buffer: the source of RAM → edu, the target of edu → RAM.
const SRC_OFF: u64 = 0;
const DST_OFF: u64 = 0x1000;

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("vfio-demo: an edu device handed to this guest through the VFIO hypercalls");
    println!("  (the hypervisor's own log lines, prefixed [vfio]/[iommu], show what it programs)");
    interrupts::init();
    interrupts::register(VECTOR, || {});
    let mut c = Checks::console();
    if run(&mut c).is_none() {
        println!("vfio-demo: stopped at the first failure (later steps depend on it)");
    }
    interrupts::disable();
    c.finish()
}

/// Waits for the `n`th delivery of [`VECTOR`] (halting in between), then reads and
/// acknowledges the edu's interrupt status, which must say "DMA done".
fn completion(edu: &Edu, n: u64, what: &str) -> Result<(), String> {
    let t0 = x86::rdtsc();
    wait_vector(VECTOR, n)?;
    let status = edu.ack_irq();
    println!(
        "  {what}: MSI arrived as vector {VECTOR:#x} after {} TSC ticks (the guest was halted); edu status {status:#x} acknowledged",
        x86::rdtsc().wrapping_sub(t0)
    );
    if status & edu::IRQ_DMA == 0 {
        return Err(format!(
            "edu interrupt status {status:#x} lacks the DMA-done bit {:#x}",
            edu::IRQ_DMA
        ));
    }
    if edu.busy() {
        return Err("the interrupt came before the transfer ended".into());
    }
    fence(Ordering::SeqCst);
    Ok(())
}

fn run(c: &mut Checks<Console>) -> Option<()> {
    // ---- 1. Which groups are there? ----
    println!("\n[1] GROUP_LIST: the PCI functions in IOMMU groups, as this guest sees them");
    let entry = step(c, "group-list", || {
        let entries = group_list()?;
        print_group_list(&entries);
        let e = find_ownable_edu(&entries)?;
        println!(
            "  the edu {} is in group {}, which the kernel command line gives this guest",
            device_name(&e),
            e.group_id
        );
        Ok(e)
    })?;

    // ---- 2. Own the group ----
    println!("\n[2] GROUP_OPEN: take the group (the unit of isolation) for this guest");
    let group = step(c, "group-open", || {
        let g = call("GROUP_OPEN", Group::open(entry.group_id))?;
        let s = call("GROUP_GET_STATUS", g.status())?;
        println!(
            "  handle {:#x}; status {s:#x} (viable: no function of it is used elsewhere). The IOMMU still blocks all its DMA",
            g.handle()
        );
        if s & GROUP_FLAGS_VIABLE == 0 {
            return Err(format!("group status {s:#x}: not viable"));
        }
        Ok(g)
    })?;

    // ---- 3. An IO address space ----
    println!("\n[3] A container (an IO address space) with the group in it, type1v2 model");
    let container = step(c, "container", || {
        let ct = call("CONTAINER_CREATE", Container::new())?;
        println!("  CONTAINER_CREATE -> handle {:#x}", ct.handle());
        call("GROUP_SET_CONTAINER", group.set_container(&ct))?;
        println!("  GROUP_SET_CONTAINER: the group joins it");
        call(
            "CONTAINER_SET_IOMMU(TYPE1v2)",
            ct.set_iommu(extension::TYPE1V2_IOMMU),
        )?;
        println!(
            "  CONTAINER_SET_IOMMU(type1v2): the hypervisor made an IOMMU domain and pointed the edu's context / device-table entry at its (empty) page tables"
        );
        Ok(ct)
    })?;

    // ---- 4. Map memory for DMA ----
    println!("\n[4] MAP_DMA: let the edu reach one buffer of ours, at an IOVA we choose");
    let buf = step(c, "map-dma", || {
        let b = map_dma_buffer(&container, IOVA, BUFFER_SIZE)?;
        println!(
            "  IOVA {IOVA:#x}..{:#x} -> guest-physical {:#x}, read+write: both 2 MiB aligned, so one 2 MiB superpage entry where the unit has them",
            IOVA + BUFFER_SIZE,
            b.addr()
        );
        Ok(b)
    })?;
    step(c, "container-debug", || {
        let n = call("CONTAINER_DEBUG", container.debug(IOVA))?;
        println!(
            "  CONTAINER_DEBUG({IOVA:#x}): the hypervisor printed {n} lines above: the domain, the edu's entry, the page-table walk for this IOVA"
        );
        if n == 0 {
            return Err("CONTAINER_DEBUG printed nothing".into());
        }
        Ok(())
    })?;

    // ---- 5. The device, the VM binding, BAR0 ----
    println!("\n[5] The device: open it, bind its group to this VM, map its registers (BAR0)");
    let name = device_name(&entry);
    let device = step(c, "device-open", || {
        let d = call("GROUP_GET_DEVICE", group.device(&name))?;
        let info = call("DEVICE_GET_INFO", d.info())?;
        println!(
            "  GROUP_GET_DEVICE({name}) -> handle {:#x}: {} regions, {} interrupt indexes; memory decoding and bus mastering on",
            d.handle(),
            info.num_regions,
            info.num_irqs
        );
        Ok(d)
    })?;
    step(c, "bind-vm", || {
        match device.map_region(vfio::REGION_BAR0, 0, edu::BAR0_SIZE, BAR0_GPA) {
            Err(Errno::EPERM) => println!(
                "  DEVICE_MAP_REGION before GROUP_BIND_VM: EPERM (BARs and interrupts go into a VM only with the binding, as KVM needs kvm-vfio)"
            ),
            other => {
                return Err(format!(
                    "DEVICE_MAP_REGION unbound: {other:?}, expected EPERM"
                ));
            }
        }
        call("GROUP_BIND_VM", group.bind_vm())?;
        let info = call("GROUP_VM_INFO", group.vm_info())?;
        println!(
            "  GROUP_BIND_VM: this VM is the group's user; GROUP_VM_INFO: group {}, IOMMU unit {}, DMA {}",
            info.group_id,
            info.unit,
            if info.flags & GROUP_VM_INFO_COHERENT != 0 {
                "cache-coherent"
            } else {
                "not cache-coherent"
            }
        );
        Ok(())
    })?;
    let edu = step(c, "map-bar0", || {
        let e = map_edu_bar0(&device, BAR0_GPA)?;
        println!("  (the hypervisor's nested page tables now map the edu's real BAR there)");
        Ok(e)
    })?;

    // ---- 6. Interrupts ----
    println!("\n[6] Interrupts: route the edu's MSI to a vector of our choice");
    step(c, "set-irqs", || {
        let info = call("DEVICE_GET_IRQ_INFO(MSI)", device.irq_info(IRQ_INDEX_MSI))?;
        println!(
            "  DEVICE_GET_IRQ_INFO(MSI): {} vector(s), flags {:#x}",
            info.count, info.flags
        );
        if info.count < 1 || info.flags & IRQ_INFO_EVENTFD == 0 {
            return Err(format!("MSI count {} flags {:#x}", info.count, info.flags));
        }
        call(
            "DEVICE_SET_IRQS(MSI 0 -> 0x50)",
            device.set_irq_vectors(IRQ_INDEX_MSI, 0, &[i32::from(VECTOR)]),
        )?;
        println!(
            "  DEVICE_SET_IRQS: MSI 0 -> vector {VECTOR:#x}. The hypervisor programmed the edu's MSI with a host vector and injects it into us as {VECTOR:#x}"
        );
        Ok(())
    })?;

    // ---- 7. DMA both ways, each completion an interrupt ----
    println!("\n[7] DMA through the IOMMU, each completion signalled by the edu's MSI");
    let seed = x86::rdtsc() ^ 0x6465_6d6f;
    let mut pattern = vec![0u8; XFER as usize];
    dma::pattern(seed, &mut pattern);
    step(c, "dma-ram-to-edu", || {
        buf.write(SRC_OFF as usize, &pattern);
        edu.start_dma_from_ram_irq(IOVA + SRC_OFF, 0, XFER)
            .map_err(|e| format!("edu DMA RAM -> edu: {e}"))?;
        println!(
            "  RAM -> edu: {XFER} bytes from IOVA {:#x} (the IOMMU translates it to our buffer)",
            IOVA + SRC_OFF
        );
        completion(&edu, 1, "RAM -> edu done")
    })?;
    step(c, "dma-edu-to-ram", || {
        buf.fill_range(DST_OFF as usize, XFER as usize, 0);
        edu.start_dma_to_ram_irq(0, IOVA + DST_OFF, XFER)
            .map_err(|e| format!("edu DMA edu -> RAM: {e}"))?;
        println!("  edu -> RAM: {XFER} bytes to IOVA {:#x}", IOVA + DST_OFF);
        completion(&edu, 2, "edu -> RAM done")?;
        if let Some((off, got, want)) = buf.first_difference(DST_OFF as usize, &pattern) {
            return Err(format!(
                "buffer at {off:#x} reads {got:#04x}, expected {want:#04x}: the round trip failed"
            ));
        }
        println!("  the {XFER} bytes made the round trip RAM -> edu -> RAM intact");
        Ok(())
    })?;

    // ---- 8. Outside the mappings: blocked ----
    println!("\n[8] DMA outside our mappings: the IOMMU must block it");
    step(c, "dma-blocked", || {
        let fill = dma::fill_byte(&pattern);
        buf.fill(fill);
        let before = interrupts::count(VECTOR);
        edu.dma_to_ram(0, UNMAPPED_IOVA, XFER)
            .map_err(|e| format!("edu DMA edu -> RAM: {e}"))?;
        println!(
            "  edu -> RAM to IOVA {UNMAPPED_IOVA:#x}, which nothing maps (the buffer was filled with {fill:#04x} first)"
        );
        if let Some((off, got)) = buf.find_not(0, buf.len(), fill) {
            return Err(format!(
                "the DMA got through: buffer offset {off:#x} reads {got:#04x}, expected {fill:#04x}"
            ));
        }
        if interrupts::count(VECTOR) != before {
            return Err("an interrupt arrived for a transfer that asked for none".into());
        }
        let n = call("CONTAINER_DEBUG", container.debug(UNMAPPED_IOVA))?;
        println!(
            "  blocked: all {:#x} bytes of the buffer unchanged; the IOMMU recorded a fault; CONTAINER_DEBUG({UNMAPPED_IOVA:#x}): {n} lines (the walk finds nothing)",
            buf.len()
        );
        Ok(())
    })?;

    // ---- 9. Teardown ----
    println!("\n[9] Teardown, in VFIO's order");
    step(c, "teardown", || {
        call(
            "DEVICE_SET_IRQS(MSI, count 0)",
            device.disable_irqs(IRQ_INDEX_MSI),
        )?;
        println!("  DEVICE_SET_IRQS(count 0): MSI off, host vectors freed");
        call("GROUP_UNBIND_VM", group.unbind_vm())?;
        println!("  GROUP_UNBIND_VM: the VM no longer holds the group");
        call("CLOSE(device)", device.close())?;
        println!("  CLOSE(device): bus mastering off, BAR0 gone from our physical address space");
        call("GROUP_UNSET_CONTAINER", group.unset_container())?;
        println!(
            "  GROUP_UNSET_CONTAINER: the edu is blocked again; the last group out takes the domain and its mappings with it"
        );
        call("CLOSE(group)", group.close())?;
        call("CLOSE(container)", container.close())?;
        println!("  CLOSE(group), CLOSE(container): released for the next owner");
        Ok(())
    })?;
    println!("\nvfio-demo: done");
    Some(())
}
