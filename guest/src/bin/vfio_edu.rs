//! `vfio-edu`: drives QEMU's `edu` device from a guest through the VFIO hypercalls
//! (`sluice_abi::vfio`, client `sluice_abi::client::vfio`), the way a Linux VFIO user
//! drives a device through `/dev/vfio`, and prints every step:
//!
//! 1. the API version and extensions; the list of IOMMU groups (what the hypervisor
//!    lets this guest see and own);
//! 2. the group of an edu (1234:11e8) that this guest may own: open it (retrying while
//!    another guest holds it), check it is viable;
//! 3. a container (an IO address space), the group in it, the type1v2 IOMMU model; the
//!    group bound to this VM (GROUP_BIND_VM: the VM as the group's external user), its
//!    GROUP_VM_INFO (group id, unit, DMA coherency), UNSET_CONTAINER refused while bound;
//!    what the IOMMU offers (page sizes, IOVA ranges, how many mappings are left);
//! 4. a 2 MiB DMA buffer mapped at IOVA 0x200000 (the edu's DMA mask is 28 bits), and
//!    the hypervisor's explanation of that mapping (CONTAINER_DEBUG, on its log);
//! 5. the device: its BAR0 mapped at guest-physical 0xC0000000 by the hypervisor and
//!    in this guest's own page tables (uncached); identification and liveness;
//! 6. DMA RAM → edu → RAM through the IOMMU, bytes compared;
//! 7. the buffer unmapped (UNMAP_DMA reports 2 MiB), then a DMA to the old IOVA: the
//!    IOMMU must block it, the buffer stays as it was;
//! 8. teardown (unbind first), each result checked.
//!
//! Each step is a check (`check NAME: ok` / `FAILED: why`); the program stops at the
//! first failure. Exit status 0 only if every step passed.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;

use sluice_guest::abi::vfio::{
    self, DEVICE_FLAGS_PCI, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE, GROUP_FLAGS_CONTAINER_SET,
    GROUP_FLAGS_VIABLE, GROUP_VM_INFO_COHERENT, REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ,
    REGION_INFO_FLAG_WRITE, extension,
};
use sluice_guest::client::vfio::{Container, IommuInfo};
use sluice_guest::console::Console;
use sluice_guest::dma;
use sluice_guest::edu::{self, Edu};
use sluice_guest::passthrough::{
    call, device_name, find_ownable_edu, group_list, print_group_list, step,
};
use sluice_guest::{Checks, Errno, GuestStartInfo, client, paging, println, x86};

sluice_guest::entry!(guest_main);

/// Where the buffer is mapped for the device: below the edu's 28-bit DMA mask.
const IOVA: u64 = 0x20_0000;
const BUFFER_SIZE: u64 = 2 << 20;
/// Where BAR0 goes in guest-physical space (far above this guest's RAM).
const BAR0_GPA: u64 = 0xC000_0000;
/// Bytes per DMA transfer (edu's buffer is 4 KiB; QEMU 7.2 aborts on a transfer that
/// ends at its end).
const XFER: u64 = 256;
/// Offsets in the DMA buffer: the source of RAM → edu, the target of edu → RAM, the
/// target of the DMA that must be blocked.
const SRC_OFF: u64 = 0;
const DST_OFF: u64 = 0x1000;
const BLOCKED_OFF: u64 = 0x2000;
/// GROUP_OPEN attempts while another guest holds the group (EBUSY).
const OPEN_ATTEMPTS: u32 = 200;
/// NULL hypercalls between two attempts (letting time pass).
const OPEN_BACKOFF: u32 = 200;

fn guest_main(_info: &GuestStartInfo) -> i32 {
    println!("vfio-edu: an edu driven through the VFIO hypercalls, step by step");
    let mut c = Checks::console();
    if run(&mut c).is_none() {
        println!("vfio-edu: stopped at the first failure (later steps depend on it)");
    }
    c.finish()
}

fn page_sizes(mask: u64) -> String {
    let mut s = String::new();
    for bit in 0..64 {
        if mask & (1 << bit) != 0 {
            if !s.is_empty() {
                s.push(' ');
            }
            match bit {
                12 => s.push_str("4K"),
                21 => s.push_str("2M"),
                30 => s.push_str("1G"),
                b if b >= 30 => s.push_str(&format!("{}G", 1u64 << (b - 30))),
                b if b >= 20 => s.push_str(&format!("{}M", 1u64 << (b - 20))),
                b => s.push_str(&format!("{}K", (1u64 << b) / 1024)),
            }
        }
    }
    s
}

fn print_info(info: &IommuInfo) {
    println!(
        "  flags {:#x}, page sizes {:#x} = {}",
        info.flags,
        info.iova_pgsizes,
        page_sizes(info.iova_pgsizes)
    );
    for r in info.ranges() {
        println!("  usable IOVA range {:#014x}..={:#014x}", r.start, r.end);
    }
    match info.dma_avail {
        Some(n) => println!("  {n} more DMA mappings allowed"),
        None => println!("  (no DMA_AVAIL capability)"),
    }
}

fn run(c: &mut Checks<Console>) -> Option<()> {
    // ---- 1. What the hypervisor offers ----
    step(c, "api-version", || {
        let v = call("GET_API_VERSION", client::vfio::api_version())?;
        println!("VFIO API version {v} (Linux's VFIO_API_VERSION is 0 too)");
        if v != vfio::API_VERSION {
            return Err(format!("API version {v}, expected {}", vfio::API_VERSION));
        }
        for (ext, name, want) in [
            (extension::TYPE1V2_IOMMU, "TYPE1v2_IOMMU", true),
            (extension::UNMAP_ALL, "UNMAP_ALL", true),
            (extension::TYPE1_IOMMU, "TYPE1_IOMMU", false),
        ] {
            let has = call("CHECK_EXTENSION", client::vfio::check_extension(ext))?;
            println!(
                "  extension {ext} ({name}): {}",
                if has { "yes" } else { "no" }
            );
            if has != want {
                return Err(format!("CHECK_EXTENSION({name}) = {has}, expected {want}"));
            }
        }
        Ok(())
    })?;

    let entries = step(c, "group-list", || {
        let entries = group_list()?;
        print_group_list(&entries);
        Ok(entries)
    })?;

    // ---- 2. Our edu's group ----
    let edu_entry = step(c, "find-edu", || {
        let e = find_ownable_edu(&entries)?;
        println!(
            "edu {} is in group {}, which this guest may own",
            device_name(&e),
            e.group_id
        );
        Ok(e)
    })?;

    let group = step(c, "group-open", || {
        for attempt in 1..=OPEN_ATTEMPTS {
            match client::vfio::Group::open(edu_entry.group_id) {
                Ok(g) => {
                    println!(
                        "GROUP_OPEN({}) -> handle {:#x} (attempt {attempt}): the group is ours until closed",
                        g.id(),
                        g.handle()
                    );
                    return Ok(g);
                }
                Err(Errno::EBUSY) => {
                    if attempt == 1 {
                        println!(
                            "group {} is busy (open elsewhere): retrying",
                            edu_entry.group_id
                        );
                    }
                    for _ in 0..OPEN_BACKOFF {
                        let _ = client::null();
                    }
                }
                Err(e) => return Err(format!("GROUP_OPEN({}): {e}", edu_entry.group_id)),
            }
        }
        Err(format!(
            "GROUP_OPEN({}): still EBUSY after {OPEN_ATTEMPTS} attempts",
            edu_entry.group_id
        ))
    })?;

    step(c, "group-viable", || {
        let s = call("GROUP_GET_STATUS", group.status())?;
        println!(
            "group status {s:#x}: viable {}, in a container {}",
            s & GROUP_FLAGS_VIABLE != 0,
            s & GROUP_FLAGS_CONTAINER_SET != 0
        );
        if s & GROUP_FLAGS_VIABLE == 0 || !call("GROUP_GET_STATUS", group.is_viable())? {
            return Err(format!("status {s:#x}: not viable"));
        }
        if s & GROUP_FLAGS_CONTAINER_SET != 0 {
            return Err(format!("status {s:#x}: already in a container"));
        }
        Ok(())
    })?;

    // ---- 3. A container with the type1v2 model ----
    let container = step(c, "container-create", || {
        let ct = call("CONTAINER_CREATE", Container::new())?;
        println!(
            "CONTAINER_CREATE -> handle {:#x} (an empty IO address space)",
            ct.handle()
        );
        Ok(ct)
    })?;

    step(c, "set-container", || {
        call("GROUP_SET_CONTAINER", group.set_container(&container))?;
        let s = call("GROUP_GET_STATUS", group.status())?;
        println!(
            "GROUP_SET_CONTAINER: group {} is in the container (status {s:#x})",
            group.id()
        );
        if s & GROUP_FLAGS_CONTAINER_SET == 0 {
            return Err(format!("status {s:#x} lacks CONTAINER_SET"));
        }
        Ok(())
    })?;

    step(c, "set-iommu", || {
        call(
            "CONTAINER_SET_IOMMU(TYPE1v2)",
            container.set_iommu(extension::TYPE1V2_IOMMU),
        )?;
        println!(
            "CONTAINER_SET_IOMMU(type1v2): an IOMMU domain now backs the container; the edu can DMA only where we map"
        );
        Ok(())
    })?;

    step(c, "bind-vm", || {
        call("GROUP_BIND_VM", group.bind_vm())?;
        let info = call("GROUP_VM_INFO", group.vm_info())?;
        let coherent = info.flags & GROUP_VM_INFO_COHERENT != 0;
        println!(
            "GROUP_BIND_VM: this VM is the group's external user; GROUP_VM_INFO: group {} on unit {}, DMA {}",
            info.group_id,
            info.unit,
            if coherent {
                "cache-coherent"
            } else {
                "not cache-coherent (the unit does not snoop)"
            }
        );
        if info.group_id != group.id() {
            return Err(format!(
                "GROUP_VM_INFO says group {}, we bound group {}",
                info.group_id,
                group.id()
            ));
        }
        match group.unset_container() {
            Err(Errno::EBUSY) => {
                println!(
                    "GROUP_UNSET_CONTAINER while bound: EBUSY (the binding pins the container)"
                )
            }
            other => {
                return Err(format!(
                    "GROUP_UNSET_CONTAINER while bound: {other:?}, expected EBUSY"
                ));
            }
        }
        Ok(())
    })?;

    let info = step(c, "iommu-info", || {
        let info = call("IOMMU_GET_INFO", container.info())?;
        println!("IOMMU_GET_INFO:");
        print_info(&info);
        if info.iova_pgsizes & (1 << 12) == 0 {
            return Err(format!("page sizes {:#x} lack 4 KiB", info.iova_pgsizes));
        }
        let ranges = info.ranges();
        if !ranges
            .iter()
            .any(|r| r.start <= IOVA && IOVA + BUFFER_SIZE - 1 <= r.end)
        {
            return Err(format!(
                "IOVA {IOVA:#x}+{BUFFER_SIZE:#x} is in no usable range"
            ));
        }
        if info.dma_avail.is_none_or(|n| n == 0) {
            return Err(format!("dma_avail {:?}, expected some", info.dma_avail));
        }
        Ok(info)
    })?;

    // ---- 4. A DMA buffer, mapped ----
    let buf = step(c, "dma-buffer", || {
        let b = dma::alloc(BUFFER_SIZE as usize, BUFFER_SIZE as usize)
            .ok_or("no 2 MiB-aligned 2 MiB buffer in the heap")?;
        println!(
            "DMA buffer: {:#x} bytes at guest-physical {:#x} (2 MiB aligned, zeroed)",
            b.len(),
            b.addr()
        );
        Ok(b)
    })?;

    step(c, "map-dma", || {
        call(
            "MAP_DMA",
            container.map_dma(
                buf.addr(),
                IOVA,
                BUFFER_SIZE,
                DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE,
            ),
        )?;
        println!(
            "MAP_DMA: IOVA {IOVA:#x}..{:#x} -> guest-physical {:#x}, read+write",
            IOVA + BUFFER_SIZE,
            buf.addr()
        );
        let after = call("IOMMU_GET_INFO", container.info())?;
        let want = info.dma_avail.map(|n| n - 1);
        if after.dma_avail != want {
            return Err(format!(
                "dma_avail after one mapping {:?}, expected {want:?}",
                after.dma_avail
            ));
        }
        Ok(())
    })?;

    step(c, "container-debug", || {
        let n = call("CONTAINER_DEBUG", container.debug(IOVA))?;
        println!(
            "CONTAINER_DEBUG({IOVA:#x}): the hypervisor logged {n} lines (domains, context/device-table entry, page walk)"
        );
        if n == 0 {
            return Err("CONTAINER_DEBUG printed nothing".into());
        }
        Ok(())
    })?;

    // ---- 5. The device and its registers ----
    let name = device_name(&edu_entry);
    let device = step(c, "device-open", || {
        let d = call("GROUP_GET_DEVICE", group.device(&name))?;
        let di = call("DEVICE_GET_INFO", d.info())?;
        println!(
            "GROUP_GET_DEVICE({name}) -> handle {:#x}: flags {:#x}, {} regions, {} irq indexes (memory decoding and bus mastering on)",
            d.handle(),
            di.flags,
            di.num_regions,
            di.num_irqs
        );
        if di.flags & DEVICE_FLAGS_PCI == 0 || di.num_regions != vfio::NUM_REGIONS {
            return Err(format!(
                "DEVICE_GET_INFO: flags {:#x}, {} regions; expected PCI, {}",
                di.flags,
                di.num_regions,
                vfio::NUM_REGIONS
            ));
        }
        Ok(d)
    })?;

    let bar_size = step(c, "region-info", || {
        let r = call(
            "DEVICE_GET_REGION_INFO(0)",
            device.region_info(vfio::REGION_BAR0),
        )?;
        println!(
            "BAR0: {:#x} bytes, flags {:#x} (read {}, write {}, mmap {}), offset {:#x}",
            r.size,
            r.flags,
            r.flags & REGION_INFO_FLAG_READ != 0,
            r.flags & REGION_INFO_FLAG_WRITE != 0,
            r.flags & REGION_INFO_FLAG_MMAP != 0,
            r.offset
        );
        if r.size != edu::BAR0_SIZE || r.flags & REGION_INFO_FLAG_MMAP == 0 {
            return Err(format!(
                "BAR0 size {:#x} flags {:#x}, expected {:#x} with MMAP",
                r.size,
                r.flags,
                edu::BAR0_SIZE
            ));
        }
        Ok(r.size)
    })?;

    let edu = step(c, "map-bar0", || {
        call(
            "DEVICE_MAP_REGION",
            device.map_region(vfio::REGION_BAR0, 0, bar_size, BAR0_GPA),
        )?;
        println!(
            "DEVICE_MAP_REGION: BAR0 at guest-physical {BAR0_GPA:#x} (the hypervisor's nested page tables)"
        );
        let stats = paging::map_mmio(BAR0_GPA, bar_size).map_err(|e| format!("map_mmio: {e}"))?;
        println!("map_mmio: BAR0 in our own page tables, uncached: {stats}");
        match paging::lookup_live(BAR0_GPA) {
            Some(l) if l.pa == BAR0_GPA && l.uncached() => {}
            other => return Err(format!("our tables map {BAR0_GPA:#x} as {other:?}")),
        }
        // SAFETY: BAR0 of our edu is mapped at BAR0_GPA, uncached, for bar_size (1 MiB)
        // bytes, by the hypervisor and in our tables, until the device is closed.
        Ok(unsafe { Edu::new(BAR0_GPA) })
    })?;

    step(c, "edu-ident", || {
        let id = edu.ident();
        println!(
            "edu identification {id:#010x}: version {}.{}",
            id >> 24,
            (id >> 16) & 0xff
        );
        if id & 0xff != 0xed || id == u32::MAX {
            return Err(format!(
                "identification {id:#010x}, expected 0x......ed ({:#010x})",
                edu::ID_VALUE
            ));
        }
        Ok(())
    })?;

    let seed = x86::rdtsc();
    step(c, "edu-liveness", || {
        for x in [seed as u32, !(seed as u32) ^ 0x5a5a_5a5a] {
            let got = edu.liveness(x);
            println!("liveness: wrote {x:#010x}, read {got:#010x}");
            if got != !x {
                return Err(format!(
                    "liveness: wrote {x:#010x}, read {got:#010x}, expected {:#010x}",
                    !x
                ));
            }
        }
        Ok(())
    })?;

    // ---- 6. DMA both ways through the IOMMU ----
    let mut pattern = vec![0u8; XFER as usize];
    dma::pattern(seed, &mut pattern);
    step(c, "dma-ram-to-edu", || {
        buf.write(SRC_OFF as usize, &pattern);
        buf.fill_range(DST_OFF as usize, XFER as usize, 0x5a);
        let polls = edu
            .dma_from_ram(IOVA + SRC_OFF, 0, XFER)
            .map_err(|e| format!("edu DMA RAM -> edu: {e}"))?;
        println!(
            "DMA RAM -> edu: {XFER} bytes from IOVA {:#x} into the edu's buffer ({polls} polls)",
            IOVA + SRC_OFF
        );
        if let Some((off, got, want)) = buf.first_difference(SRC_OFF as usize, &pattern) {
            return Err(format!(
                "the device's read changed our buffer at {off:#x}: {got:#04x}, was {want:#04x}"
            ));
        }
        Ok(())
    })?;

    step(c, "dma-edu-to-ram", || {
        let polls = edu
            .dma_to_ram(0, IOVA + DST_OFF, XFER)
            .map_err(|e| format!("edu DMA edu -> RAM: {e}"))?;
        println!(
            "DMA edu -> RAM: {XFER} bytes from the edu's buffer to IOVA {:#x} ({polls} polls)",
            IOVA + DST_OFF
        );
        if let Some((off, got, want)) = buf.first_difference(DST_OFF as usize, &pattern) {
            return Err(format!(
                "buffer at {off:#x} reads {got:#04x}, expected {want:#04x}: the bytes did not make the round trip RAM -> edu -> RAM"
            ));
        }
        if let Some((off, got)) = buf.find_not((DST_OFF + XFER) as usize, 0x100, 0) {
            return Err(format!("DMA wrote past its end: {off:#x} = {got:#04x}"));
        }
        println!("the {XFER} bytes came back intact (pattern from seed {seed:#x})");
        Ok(())
    })?;

    // ---- 7. Unmapped: the IOMMU must block the device ----
    step(c, "unmap-dma", || {
        let n = call("UNMAP_DMA", container.unmap_dma(IOVA, BUFFER_SIZE))?;
        println!("UNMAP_DMA({IOVA:#x}, {BUFFER_SIZE:#x}): {n:#x} bytes unmapped");
        if n != BUFFER_SIZE {
            return Err(format!(
                "UNMAP_DMA unmapped {n:#x} bytes, expected {BUFFER_SIZE:#x}"
            ));
        }
        let after = call("IOMMU_GET_INFO", container.info())?;
        if after.dma_avail != info.dma_avail {
            return Err(format!(
                "dma_avail after the unmap {:?}, expected {:?}",
                after.dma_avail, info.dma_avail
            ));
        }
        Ok(())
    })?;

    step(c, "dma-blocked-after-unmap", || {
        let fill = dma::fill_byte(&pattern);
        buf.fill(fill);
        let polls = edu
            .dma_to_ram(0, IOVA + BLOCKED_OFF, XFER)
            .map_err(|e| format!("edu DMA edu -> RAM: {e}"))?;
        println!(
            "DMA edu -> RAM to the unmapped IOVA {:#x} ({polls} polls); buffer refilled with {fill:#04x} before",
            IOVA + BLOCKED_OFF
        );
        if let Some((off, got)) = buf.find_not(0, buf.len(), fill) {
            return Err(format!(
                "the DMA went through after UNMAP_DMA: buffer offset {off:#x} reads {got:#04x}, expected {fill:#04x}"
            ));
        }
        println!(
            "blocked: all {:#x} bytes of the buffer unchanged (the IOMMU recorded a fault for the edu)",
            buf.len()
        );
        let n = call("CONTAINER_DEBUG", container.debug(IOVA + BLOCKED_OFF))?;
        println!(
            "CONTAINER_DEBUG({:#x}): {n} lines (the walk finds nothing mapped)",
            IOVA + BLOCKED_OFF
        );
        Ok(())
    })?;

    step(c, "unmap-all", || {
        let n = call("UNMAP_DMA(ALL)", container.unmap_all())?;
        println!("UNMAP_DMA(ALL): {n:#x} bytes (nothing was left)");
        if n != 0 {
            return Err(format!("UNMAP_DMA(ALL) unmapped {n:#x} bytes, expected 0"));
        }
        Ok(())
    })?;

    // ---- 8. Teardown ----
    step(c, "unbind-vm", || {
        call("GROUP_UNBIND_VM", group.unbind_vm())?;
        println!("GROUP_UNBIND_VM: the VM no longer holds the group");
        Ok(())
    })?;
    step(c, "close-device", || {
        call("CLOSE(device)", device.close())?;
        println!("CLOSE(device): bus mastering off, BAR0 gone from our guest-physical space");
        Ok(())
    })?;
    step(c, "unset-container", || {
        call("GROUP_UNSET_CONTAINER", group.unset_container())?;
        let s = call("GROUP_GET_STATUS", group.status())?;
        println!("GROUP_UNSET_CONTAINER: the edu is blocked again (status {s:#x})");
        if s & GROUP_FLAGS_CONTAINER_SET != 0 {
            return Err(format!("status {s:#x} still has CONTAINER_SET"));
        }
        Ok(())
    })?;
    step(c, "close-group", || {
        call("CLOSE(group)", group.close())?;
        println!("CLOSE(group): released for the next owner");
        Ok(())
    })?;
    step(c, "close-container", || {
        call("CLOSE(container)", container.close())?;
        println!("CLOSE(container): done");
        Ok(())
    })?;
    Some(())
}
