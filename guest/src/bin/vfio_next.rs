//! `vfio-next`: the next owner of the edu `vfio-killed` held when the hypervisor killed
//! it mid-DMA. It shows that a released group comes to the next owner blocked and
//! clean: nothing of the previous owner's IO address space survives.
//!
//! 1. the group of an edu this guest may own (the same as `vfio-killed`'s); wait until
//!    `GROUP_LIST` shows it busy (open by the other guest: the order this test needs),
//!    then `GROUP_OPEN` until it succeeds (`EBUSY` while `vfio-killed` holds it; a NULL
//!    hypercall back-off between attempts; the number of attempts is printed);
//! 2. the group is viable and in no container (the killed guest's container did not
//!    keep it); a fresh container with type1v2: `IOMMU_GET_INFO` says all 65535
//!    mappings are available (nothing inherited);
//! 3. our own 2 MiB buffer mapped at a different IOVA (0x800000); the device (not
//!    busy: the killed guest's handle is gone), the group bound to the VM, BAR0 at
//!    guest-physical 0xD0000000;
//! 4. whatever the edu still had running for the killed guest ends; none of it may
//!    land in our buffer;
//! 5. (a) edu → RAM at the killed guest's IOVA 0x205000: our container maps nothing
//!    there, so the IOMMU must block it — our buffer stays as it was (on VT-d the harness
//!    finds the write fault in the unit's fault record); (b) edu → RAM to our own
//!    mapping arrives, bytes compared;
//! 6. teardown, each result checked. Exit status 0 only if every step passed.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec;

use sluice_guest::abi::vfio::{
    DMA_MAPPINGS_MAX, GROUP_FLAGS_CONTAINER_SET, GROUP_FLAGS_VIABLE, GROUP_LIST_BUSY,
    GROUP_LIST_OPEN,
};
use sluice_guest::client::vfio::Group;
use sluice_guest::console::Console;
use sluice_guest::passthrough::{
    call, device_name, find_ownable_edu, group_list, map_dma_buffer, map_edu_bar0, step,
    type1v2_container,
};
use sluice_guest::{Checks, Errno, GuestStartInfo, client, dma, edu, println, x86};

sluice_guest::entry!(guest_main);

/// Our mapping: a different IOVA from the killed guest's 0x200000 (below the edu's
/// 28-bit DMA mask).
const IOVA: u64 = 0x80_0000;
const BUFFER_SIZE: u64 = 2 << 20;
/// The killed guest's IOVA and the offset this guest aims at inside it.
const KILLED_IOVA: u64 = 0x20_0000;
const KILLED_OFF: u64 = 0x5000;
/// Where BAR0 goes in our guest-physical space (not where vfio-killed had it).
const BAR0_GPA: u64 = 0xD000_0000;
/// Bytes per DMA transfer.
const XFER: u64 = 256;
/// Offsets in our buffer: source of RAM → edu, target of the edu → RAM that must arrive.
const SRC_OFF: u64 = 0;
const DST_OFF: u64 = 0x1000;
/// GROUP_LIST polls until the group shows busy, and GROUP_OPEN attempts until it is
/// ours; NULL hypercalls between two polls or attempts (letting the other guest run).
const BUSY_POLLS: u32 = 500;
const OPEN_ATTEMPTS: u32 = 250;
const BACKOFF: u32 = 100;

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("vfio-next: the edu's next owner after vfio-killed was killed mid-DMA");
    let mut c = Checks::console();
    if run(&mut c).is_none() {
        println!("vfio-next: stopped at the first failure (later steps depend on it)");
    }
    c.finish()
}

fn backoff() {
    for _ in 0..BACKOFF {
        let _ = client::null();
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
    let gid = entry.group_id;

    step(c, "wait-busy", || {
        for poll in 1..=BUSY_POLLS {
            let entries = group_list()?;
            let flags = entries
                .iter()
                .find(|e| e.group_id == gid)
                .map(|e| e.group_flags)
                .ok_or(format!("group {gid} left GROUP_LIST"))?;
            if flags & GROUP_LIST_OPEN != 0 {
                return Err(format!(
                    "group {gid} says we have it open (flags {flags:#x})"
                ));
            }
            if flags & GROUP_LIST_BUSY != 0 {
                println!(
                    "group {gid} is busy (open by another guest: vfio-killed) at GROUP_LIST poll {poll}"
                );
                return Ok(());
            }
            backoff();
        }
        Err(format!(
            "group {gid} never showed busy in {BUSY_POLLS} polls: vfio-killed did not hold it first, so this run cannot show its release"
        ))
    })?;

    let group = step(c, "group-open", || {
        let mut busy = 0u32;
        for attempt in 1..=OPEN_ATTEMPTS {
            match Group::open(gid) {
                Ok(g) => {
                    println!(
                        "GROUP_OPEN({gid}) -> handle {:#x} at attempt {attempt} ({busy} x EBUSY before: vfio-killed held it until it was killed)",
                        g.handle()
                    );
                    return Ok(g);
                }
                Err(Errno::EBUSY) => {
                    busy += 1;
                    backoff();
                }
                Err(e) => return Err(format!("GROUP_OPEN({gid}) attempt {attempt}: {e}")),
            }
        }
        Err(format!(
            "GROUP_OPEN({gid}): still EBUSY after {OPEN_ATTEMPTS} attempts: the killed guest's group was never released"
        ))
    })?;

    step(c, "group-clean", || {
        let s = call("GROUP_GET_STATUS", group.status())?;
        println!(
            "group status {s:#x}: viable {}, in a container {}",
            s & GROUP_FLAGS_VIABLE != 0,
            s & GROUP_FLAGS_CONTAINER_SET != 0
        );
        if s & GROUP_FLAGS_VIABLE == 0 {
            return Err(format!("status {s:#x}: not viable"));
        }
        if s & GROUP_FLAGS_CONTAINER_SET != 0 {
            return Err(format!(
                "status {s:#x}: still in a container (the killed guest's?)"
            ));
        }
        Ok(())
    })?;

    let container = step(c, "fresh-container", || {
        let ct = type1v2_container(&group)?;
        let info = call("IOMMU_GET_INFO", ct.info())?;
        println!(
            "container {:#x}, type1v2: {:?} DMA mappings available",
            ct.handle(),
            info.dma_avail
        );
        if info.dma_avail != Some(DMA_MAPPINGS_MAX) {
            return Err(format!(
                "dma_avail {:?}, expected {DMA_MAPPINGS_MAX}: a fresh container must inherit no mapping",
                info.dma_avail
            ));
        }
        Ok(ct)
    })?;

    let buf = step(c, "map-dma", || {
        let b = map_dma_buffer(&container, IOVA, BUFFER_SIZE)?;
        println!(
            "MAP_DMA: IOVA {IOVA:#x}..{:#x} -> guest-physical {:#x} (vfio-killed used IOVA {KILLED_IOVA:#x})",
            IOVA + BUFFER_SIZE,
            b.addr()
        );
        Ok(b)
    })?;

    let name = device_name(&entry);
    let device = step(c, "device-open", || {
        let d = call("GROUP_GET_DEVICE", group.device(&name))?;
        println!(
            "GROUP_GET_DEVICE({name}) -> handle {:#x} (the killed guest's device handle is gone)",
            d.handle()
        );
        Ok(d)
    })?;

    step(c, "bind-vm", || call("GROUP_BIND_VM", group.bind_vm()))?;
    let edu = step(c, "map-bar0", || map_edu_bar0(&device, BAR0_GPA))?;

    step(c, "stale-dma-done", || {
        let polls = edu
            .wait_idle(edu::POLL_BUDGET)
            .map_err(|e| format!("waiting for the edu to be idle: {e}"))?;
        println!(
            "edu idle after {polls} poll(s) (more than 1: vfio-killed's transfer was still running)"
        );
        if let Some((off, got)) = buf.find_not(0, buf.len(), 0) {
            return Err(format!(
                "our zeroed buffer has {got:#04x} at {off:#x}: the killed guest's DMA landed in our memory"
            ));
        }
        Ok(())
    })?;

    let seed = x86::rdtsc() ^ 0x6e65_7874;
    let mut pattern = vec![0u8; XFER as usize];
    dma::pattern(seed, &mut pattern);
    step(c, "dma-ram-to-edu", || {
        buf.write(SRC_OFF as usize, &pattern);
        edu.dma_from_ram(IOVA + SRC_OFF, 0, XFER)
            .map_err(|e| format!("edu DMA RAM -> edu: {e}"))?;
        println!(
            "DMA RAM -> edu: our {XFER}-byte pattern from IOVA {:#x} into the edu's buffer",
            IOVA + SRC_OFF
        );
        Ok(())
    })?;

    let target = KILLED_IOVA + KILLED_OFF;
    step(c, "dma-to-killed-iova-blocked", || {
        let fill = dma::fill_byte(&pattern);
        buf.fill(fill);
        edu.dma_to_ram(0, target, XFER)
            .map_err(|e| format!("edu DMA edu -> RAM: {e}"))?;
        println!(
            "DMA edu -> RAM to IOVA {target:#x} (vfio-killed's mapping, never ours); buffer filled with {fill:#04x} before"
        );
        if let Some((off, got)) = buf.find_not(0, buf.len(), fill) {
            return Err(format!(
                "the DMA to the killed guest's IOVA landed in our buffer at {off:#x} ({got:#04x}, expected {fill:#04x}): its mapping survived"
            ));
        }
        let n = call("CONTAINER_DEBUG", container.debug(target))?;
        println!(
            "blocked: our buffer unchanged; CONTAINER_DEBUG({target:#x}) logged {n} lines (nothing mapped there)"
        );
        Ok(())
    })?;

    step(c, "dma-own-mapping", || {
        let fill = dma::fill_byte(&pattern);
        edu.dma_to_ram(0, IOVA + DST_OFF, XFER)
            .map_err(|e| format!("edu DMA edu -> RAM: {e}"))?;
        if let Some((off, got, want)) = buf.first_difference(DST_OFF as usize, &pattern) {
            return Err(format!(
                "buffer at {off:#x} reads {got:#04x}, expected {want:#04x}: the DMA to our own mapping did not arrive"
            ));
        }
        let end = (DST_OFF + XFER) as usize;
        if let Some((off, got)) = buf
            .find_not(0, DST_OFF as usize, fill)
            .or_else(|| buf.find_not(end, buf.len() - end, fill))
        {
            return Err(format!(
                "byte {got:#04x} at {off:#x}, outside the transfer's target"
            ));
        }
        println!(
            "DMA edu -> RAM to IOVA {:#x}: our {XFER} bytes arrived intact (seed {seed:#x})",
            IOVA + DST_OFF
        );
        Ok(())
    })?;

    step(c, "teardown", || {
        let n = call("UNMAP_DMA", container.unmap_dma(IOVA, BUFFER_SIZE))?;
        if n != BUFFER_SIZE {
            return Err(format!(
                "UNMAP_DMA unmapped {n:#x} bytes, expected {BUFFER_SIZE:#x}"
            ));
        }
        call("GROUP_UNBIND_VM", group.unbind_vm())?;
        call("CLOSE(device)", device.close())?;
        call("GROUP_UNSET_CONTAINER", group.unset_container())?;
        call("CLOSE(group)", group.close())?;
        call("CLOSE(container)", container.close())?;
        println!("unmapped, unbound, device closed, group out of the container, all closed");
        Ok(())
    })?;
    Some(())
}
