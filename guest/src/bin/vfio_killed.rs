//! `vfio-killed`: takes an edu through the VFIO hypercalls and is killed by the
//! hypervisor while the edu is writing to its memory.
//!
//! 1. the group of an edu this guest may own (`GROUP_LIST`, `OWNABLE`): opened at once
//!    (this guest runs first; `vfio-next`, granted the same group, waits for it);
//! 2. a container with the type1v2 model, a 2 MiB buffer mapped at IOVA 0x200000;
//! 3. the device; the group bound to the VM (GROUP_BIND_VM, which mapping a BAR needs),
//!    BAR0 mapped at guest-physical 0xC0000000;
//! 4. one DMA round trip RAM → edu → RAM through the mapping, bytes compared;
//! 5. another edu → RAM DMA, to IOVA 0x203000, started and *not* waited for; then
//!    `out 0x80, al`, a port no guest may touch: the hypervisor terminates the guest
//!    mid-DMA and releases everything it held at once (the VM binding, then every
//!    handle: device closed, group out of its container, the container and its mapping
//!    gone).
//!
//! The scenario expects it terminated (`expect=vfio-killed:terminated`, port 0x80); a
//! failed step exits with status 1 instead (never reaching the port), and surviving the
//! port write exits with 99. What happened to the edu and its group afterwards is
//! `vfio-next`'s to show, and the harness's (the IOMMU's own tables at the end).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec;

use sluice_guest::client::vfio::Group;
use sluice_guest::console::Console;
use sluice_guest::dma;
use sluice_guest::passthrough::{
    call, device_name, find_ownable_edu, group_list, map_dma_buffer, map_edu_bar0, step,
    type1v2_container,
};
use sluice_guest::{Checks, GuestStartInfo, println, x86};

sluice_guest::entry!(guest_main);

/// Where the buffer is mapped for the device (below the edu's 28-bit DMA mask).
const IOVA: u64 = 0x20_0000;
const BUFFER_SIZE: u64 = 2 << 20;
/// Where BAR0 goes in guest-physical space.
const BAR0_GPA: u64 = 0xC000_0000;
/// Bytes per DMA transfer.
const XFER: u64 = 256;
/// Offsets in the buffer: source of RAM → edu, target of the verified edu → RAM, target
/// of the DMA in flight when the guest is killed.
const SRC_OFF: u64 = 0;
const DST_OFF: u64 = 0x1000;
const IN_FLIGHT_OFF: u64 = 0x3000;
/// The port the hypervisor forbids (POST codes, as `bad-port`).
const FORBIDDEN_PORT: u16 = 0x80;
/// Exit status if the port write returns.
const SURVIVED: i32 = 99;

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("vfio-killed: an edu through VFIO, then killed by the hypervisor mid-DMA");
    let mut c = Checks::console();
    match run(&mut c) {
        Some(()) => {
            println!(
                "vfio-killed: the port write to {FORBIDDEN_PORT:#x} returned: the hypervisor did not stop us"
            );
            SURVIVED
        }
        None => {
            println!("vfio-killed: stopped at the first failure (later steps depend on it)");
            c.finish()
        }
    }
}

fn run(c: &mut Checks<Console>) -> Option<()> {
    let entry = step(c, "find-edu", || {
        let e = find_ownable_edu(&group_list()?)?;
        println!(
            "edu {} is in group {}, which this guest may own",
            device_name(&e),
            e.group_id
        );
        Ok(e)
    })?;

    let group = step(c, "group-open", || {
        // This guest runs first: the group must be free (vfio-next waits for it).
        let g = call("GROUP_OPEN", Group::open(entry.group_id))?;
        println!(
            "GROUP_OPEN({}) -> handle {:#x}: ours until we are gone",
            g.id(),
            g.handle()
        );
        Ok(g)
    })?;

    let container = step(c, "container", || {
        let ct = type1v2_container(&group)?;
        println!(
            "container {:#x} with group {} in it, type1v2 set",
            ct.handle(),
            group.id()
        );
        Ok(ct)
    })?;

    let buf = step(c, "map-dma", || {
        let b = map_dma_buffer(&container, IOVA, BUFFER_SIZE)?;
        println!(
            "MAP_DMA: IOVA {IOVA:#x}..{:#x} -> guest-physical {:#x}, read+write",
            IOVA + BUFFER_SIZE,
            b.addr()
        );
        Ok(b)
    })?;

    let name = device_name(&entry);
    let device = step(c, "device-open", || {
        let d = call("GROUP_GET_DEVICE", group.device(&name))?;
        println!("GROUP_GET_DEVICE({name}) -> handle {:#x}", d.handle());
        Ok(d)
    })?;

    step(c, "bind-vm", || call("GROUP_BIND_VM", group.bind_vm()))?;
    let edu = step(c, "map-bar0", || map_edu_bar0(&device, BAR0_GPA))?;

    let seed = x86::rdtsc();
    let mut pattern = vec![0u8; XFER as usize];
    dma::pattern(seed, &mut pattern);
    step(c, "dma-round-trip", || {
        buf.write(SRC_OFF as usize, &pattern);
        edu.dma_from_ram(IOVA + SRC_OFF, 0, XFER)
            .map_err(|e| format!("edu DMA RAM -> edu: {e}"))?;
        edu.dma_to_ram(0, IOVA + DST_OFF, XFER)
            .map_err(|e| format!("edu DMA edu -> RAM: {e}"))?;
        if let Some((off, got, want)) = buf.first_difference(DST_OFF as usize, &pattern) {
            return Err(format!(
                "buffer at {off:#x} reads {got:#04x}, expected {want:#04x}: the bytes did not make the round trip RAM -> edu -> RAM"
            ));
        }
        println!("DMA RAM -> edu -> RAM through IOVA {IOVA:#x}: {XFER} bytes came back intact");
        Ok(())
    })?;

    step(c, "dma-in-flight", || {
        edu.start_dma_to_ram(0, IOVA + IN_FLIGHT_OFF, XFER)
            .map_err(|e| format!("starting edu DMA edu -> RAM: {e}"))?;
        if !edu.busy() {
            return Err("the edu is not busy right after the start: nothing in flight".into());
        }
        println!(
            "DMA edu -> RAM to IOVA {:#x} started, not waited for (the edu is busy)",
            IOVA + IN_FLIGHT_OFF
        );
        Ok(())
    })?;

    println!("out {FORBIDDEN_PORT:#x}: the hypervisor must terminate us now, DMA in flight");
    // SAFETY: deliberately forbidden: the hypervisor must stop us here. The buffer, the
    // group, the container and the device are still ours (alive below) when it does.
    unsafe { x86::outb(FORBIDDEN_PORT, 0x42) };
    // Only reached if the hypervisor let the port write through.
    drop((device, container, group));
    Some(())
}
