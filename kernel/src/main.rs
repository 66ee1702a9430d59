//! The `sluice` kernel binary: PVH entry, bring-up in order, then the boot report.
//!
//! Order matters: the console first (so every later step can speak), traps next (so a
//! fault is reported, never a silent triple fault), then the firmware's view of memory
//! and ACPI before the frame allocator (which must avoid what they occupy), the heap,
//! and finally the tables and the PCI enumeration that need it.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::arch::global_asm;
use core::panic::PanicInfo;

use linked_list_allocator::LockedHeap;
use log::{LevelFilter, error, info, warn};
use sluice_boot::start_info::StartInfo;
use sluice_kernel::acpi::{self, AcpiTables, Signature, find_rsdp};
use sluice_kernel::arch::{cpu::CpuFeatures, gdt, idt, paging, pic, traps};
use sluice_kernel::cmdline::{Options, SELFTEST_FAULT_ADDR, SelfTest};
use sluice_kernel::exit::{ExitCode, exit_qemu};
use sluice_kernel::memory::{frame::FrameAllocator, heap};
use sluice_kernel::phys::IdentityMapped;
use sluice_kernel::serial;
use sluice_pci::{EcamRegion, enumerate};

global_asm!(include_str!("../../boot/src/entry.S"), options(att_syntax));
global_asm!(include_str!("asm/traps.S"), options(att_syntax));
global_asm!(include_str!("asm/mem.S"), options(att_syntax));

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
    static mut boot_pd: [u64; paging::BOOT_PD_ENTRIES];
    static isr_stubs: u8;
}

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Heap size: enough for device tables and parsed ACPI; IOMMU tables come from frames.
const HEAP_BYTES: u64 = 16 << 20;
/// Nothing below 1 MiB is handed out (real-mode IVT, BDA, EBDA, BIOS ROMs).
const LOW_MEMORY_END: u64 = 1 << 20;

#[unsafe(no_mangle)]
extern "C" fn sluice_trap_entry(frame: &traps::TrapFrame) -> ! {
    traps::handle_trap(frame)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    traps::handle_panic(info)
}

/// The prebuilt `core` was compiled with unwinding; with `panic = "abort"` this is never
/// called, but the linker wants the symbol.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[unsafe(no_mangle)]
extern "C" fn kernel_main(start_info_paddr: u64) -> ! {
    serial::init(LevelFilter::Info);
    info!(target: "boot", "Sluice {} starting (PVH entry, long mode, SSE on)", env!("CARGO_PKG_VERSION"));
    gdt::init();
    // SAFETY: isr_stubs is the stub table of asm/traps.S and the GDT/TSS are loaded.
    unsafe { idt::init(&raw const isr_stubs as u64) };
    pic::mask_all();
    info!(target: "arch", "GDT/TSS/IDT loaded: 256 vectors, each on an IST stack; 8259 PICs masked");

    let phys = IdentityMapped {
        limit: paging::IDENTITY_MAP_LIMIT,
    };
    let start_info = match StartInfo::parse(&phys, start_info_paddr) {
        Ok(s) => s,
        Err(e) => {
            error!(target: "boot", "{e}; cannot continue without a memory map");
            exit_qemu(ExitCode::BootFailed);
        }
    };
    let opts = Options::parse(start_info.cmdline());
    serial::set_level(opts.log_level);
    report_start_info(&start_info, &opts);
    info!(target: "cpu", "{}", CpuFeatures::read());

    // SAFETY: boot_pd is the page-directory array CR3 uses (entry.S); boot is single threaded.
    let uncached = unsafe {
        paging::apply_cache_policy((&raw mut boot_pd).cast::<u64>(), start_info.memory_map())
    };
    info!(target: "paging", "first {} GiB identity mapped in 2 MiB pages, {} of them uncached (no RAM)",
        paging::IDENTITY_MAP_LIMIT >> 30,
        uncached
    );

    let tables = discover_acpi(&phys, &start_info, opts.acpi_dump);

    let kernel_start = &raw const __kernel_start as u64;
    let kernel_end = &raw const __kernel_end as u64;
    let occupied = core::iter::once((kernel_start, kernel_end - kernel_start))
        .chain(start_info.occupied_ranges())
        .chain(tables.iter().flat_map(|t| t.occupied_ranges()));
    let (mut frames, lost) = FrameAllocator::from_memory_map(
        start_info.memory_map(),
        occupied,
        LOW_MEMORY_END,
        paging::IDENTITY_MAP_LIMIT,
    );
    if lost > 0 {
        warn!(target: "memory", "{lost:#x} bytes of RAM dropped (memory map too fragmented)");
    }
    let above_map: u64 = start_info
        .memory_map()
        .iter()
        .filter(|r| r.kind == sluice_boot::start_info::MemoryType::Ram)
        .map(|r| {
            r.end()
                .saturating_sub(r.base.max(paging::IDENTITY_MAP_LIMIT))
        })
        .sum();
    if above_map > 0 {
        warn!(target: "memory", "{} MiB of RAM above 4 GiB is not mapped yet and stays unused", above_map >> 20);
    }
    info!(target: "memory", "kernel image {kernel_start:#x}-{kernel_end:#x}, {} MiB free in {} ranges",
        frames.free_bytes() >> 20,
        frames.ranges().len()
    );
    let heap_bytes = HEAP_BYTES.min(frames.free_bytes() / 4);
    match heap::init(&HEAP, &mut frames, heap_bytes) {
        Some((base, size)) => info!(target: "memory", "heap {} KiB at {base:#x}", size >> 10),
        None => {
            error!(target: "memory", "no contiguous {heap_bytes:#x} bytes for the heap; cannot continue");
            exit_qemu(ExitCode::BootFailed);
        }
    }

    if let Some(tables) = &tables {
        report_madt(&phys, tables);
        let regions = read_mcfg(&phys, tables);
        enumerate_pci(regions);
    } else {
        warn!(target: "pci", "no ACPI, so no MCFG: PCI enumeration skipped");
    }

    match opts.selftest {
        Some(SelfTest::PageFault) => {
            info!(target: "selftest", "reading unmapped address {SELFTEST_FAULT_ADDR:#x}; expect #PF");
            // SAFETY: deliberately unsound: this read must fault, and the fault handler
            // ends the run. The address is canonical and outside the identity map.
            let v = unsafe { core::ptr::read_volatile(SELFTEST_FAULT_ADDR as *const u64) };
            error!(target: "selftest", "read of an unmapped address returned {v:#x} instead of faulting");
        }
        Some(SelfTest::InvalidOpcode) => {
            info!(target: "selftest", "executing ud2; expect #UD");
            // SAFETY: deliberately raises #UD; the trap handler ends the run.
            unsafe { core::arch::asm!("ud2") };
        }
        Some(SelfTest::Panic) => panic!("selftest: deliberate panic"),
        None => {}
    }

    if opts.hold {
        info!(target: "boot", "holding: send one byte on the serial port to finish");
        if serial::read_byte_blocking().is_none() {
            warn!(target: "hold", "no console to read from");
        }
    }
    info!(target: "boot", "boot complete");
    exit_qemu(ExitCode::Success)
}

fn report_start_info(si: &StartInfo, opts: &Options<'_>) {
    info!(target: "boot", "hvm_start_info v{} at {:#x}, command line \"{}\"", si.version, si.paddr, si.cmdline());
    let w = si.warnings;
    if w.memmap_unreadable || w.memmap_entries_dropped > 0 {
        warn!(target: "boot", "memory map at {:#x} ({} entries) only partly usable: {} kept, {} dropped",
            si.memmap_paddr,
            si.memmap_raw_entries,
            si.memory_map().len(),
            w.memmap_entries_dropped
        );
    }
    if w.cmdline_truncated || w.cmdline_not_utf8 || w.cmdline_unreadable {
        warn!(target: "boot", "command line truncated, unreadable or not UTF-8; using the readable prefix");
    }
    if w.modules_unreadable || w.modules_dropped > 0 {
        warn!(target: "boot", "module list only partly readable ({} kept)", si.modules().len());
    }
    for word in opts.unknown() {
        warn!(target: "boot", "unknown command-line option '{word}' ignored");
    }
    if opts.unknown_dropped > 0 {
        warn!(target: "boot", "{} more unknown options ignored", opts.unknown_dropped);
    }
    for r in si.memory_map() {
        info!(target: "boot", "memory {:#012x}-{:#012x} {}", r.base, r.end().wrapping_sub(1), r.kind.name());
    }
    for m in si.modules() {
        info!(target: "boot", "module at {:#x}, {} bytes", m.paddr, m.size);
    }
}

/// Find the RSDP and list every table. `None` when the machine has no usable ACPI.
fn discover_acpi(phys: &IdentityMapped, si: &StartInfo, dump: bool) -> Option<AcpiTables> {
    let (rsdp, hint_bad) = match find_rsdp(phys, si.rsdp_paddr) {
        Ok(r) => r,
        Err(e) => {
            error!(target: "acpi", "{e}; continuing without ACPI (no CPU list, no PCI)");
            return None;
        }
    };
    if hint_bad {
        warn!(target: "acpi", "start info RSDP {:#x?} invalid; found one by scanning the BIOS area", si.rsdp_paddr);
    }
    info!(target: "acpi", "{rsdp}");
    let tables = match AcpiTables::load(phys, rsdp) {
        Ok(t) => t,
        Err(e) => {
            error!(target: "acpi", "{e}; continuing without ACPI (no CPU list, no PCI)");
            return None;
        }
    };
    if let Some(e) = tables.xsdt_rejected {
        warn!(target: "acpi", "XSDT unusable ({e}); using the RSDT");
    }
    info!(target: "acpi", "{}", tables.root);
    for t in tables.entries() {
        if t.is_valid() {
            info!(target: "acpi", "{t}");
        } else {
            error!(target: "acpi", "{t}; table ignored");
        }
    }
    if dump {
        for t in tables.entries() {
            if let (Some(sig), Some((address, length))) = (t.signature(), t.range()) {
                let hex = acpi::HexDump {
                    mem: phys,
                    address,
                    length,
                };
                info!(target: "acpi", "dump {sig} {address:#x} {hex}");
            }
        }
    }
    if tables.trailing_bytes > 0 {
        warn!(target: "acpi", "{} ends with {} stray bytes (not a whole entry)", tables.root, tables.trailing_bytes);
    }
    if tables.dropped > 0 {
        warn!(target: "acpi", "{} more tables not examined (limit {})", tables.dropped, acpi::MAX_TABLES);
    }
    Some(tables)
}

/// Copy a valid table out of firmware memory.
fn copy_table(
    phys: &IdentityMapped,
    entry: &acpi::TableEntry,
) -> Result<Vec<u8>, acpi::TableError> {
    let len = entry.header.map_or(0, |h| h.length as usize);
    let mut bytes = vec![0u8; len];
    AcpiTables::copy_table(phys, entry, &mut bytes)?;
    Ok(bytes)
}

fn report_madt(phys: &IdentityMapped, tables: &AcpiTables) {
    let Some(entry) = tables.find(Signature::MADT) else {
        warn!(target: "acpi", "MADT (APIC) missing or invalid: CPU and I/O APIC list unknown");
        return;
    };
    match copy_table(phys, entry).and_then(|b| acpi::madt::parse(&b)) {
        Ok(m) => {
            let enabled = m.cpus.iter().filter(|c| c.enabled).count();
            info!(target: "cpus", "{} in MADT ({} enabled), local APIC at {:#x}{}",
                m.cpus.len(),
                enabled,
                m.local_apic_address,
                if m.pcat_compat { ", dual 8259 present" } else { "" }
            );
            for c in &m.cpus {
                info!(target: "cpus", "  {} uid {} APIC id {}{}",
                    if c.x2apic { "x2APIC" } else { "LAPIC" },
                    c.acpi_uid,
                    c.apic_id,
                    if c.enabled { "" } else if c.online_capable { " (online capable)" } else { " (disabled)" }
                );
            }
            for io in &m.io_apics {
                info!(target: "cpus", "  I/O APIC id {} at {:#x}, GSI base {}", io.id, io.address, io.gsi_base);
            }
            info!(target: "cpus", "  {} interrupt source overrides", m.overrides.len());
        }
        Err(e) => {
            error!(target: "acpi", "MADT at {:#x} is malformed: {e}; CPU list unknown", entry.address)
        }
    }
}

/// ECAM regions from the first MCFG that parses. Every MCFG is parsed, so a corrupt one
/// is reported by name even when a good one comes first; later good ones are duplicates.
fn read_mcfg(phys: &IdentityMapped, tables: &AcpiTables) -> Vec<EcamRegion> {
    let mut chosen: Option<Vec<EcamRegion>> = None;
    let mut seen = false;
    for entry in tables.find_all(Signature::MCFG) {
        seen = true;
        if let Err(e) = entry.status {
            error!(target: "acpi", "MCFG at {:#x} is invalid: {e}; ignored", entry.address);
            continue;
        }
        let mcfg = match copy_table(phys, entry).and_then(|b| acpi::mcfg::parse(&b)) {
            Ok(m) => m,
            Err(e) => {
                error!(target: "acpi", "MCFG at {:#x} is malformed: {e}; ignored", entry.address);
                continue;
            }
        };
        for (i, problem) in &mcfg.rejected {
            error!(target: "acpi", "MCFG at {:#x} entry {i} is invalid: {problem}; skipped", entry.address);
        }
        if mcfg.regions.is_empty() {
            error!(target: "acpi", "MCFG at {:#x} is invalid: no usable entry; ignored", entry.address);
        } else if chosen.is_some() {
            warn!(target: "acpi", "MCFG at {:#x} is a duplicate; the first valid MCFG is used", entry.address);
        } else {
            for r in &mcfg.regions {
                info!(
                    target: "acpi",
                    "MCFG segment {:04x} buses {:02x}-{:02x} ECAM at {:#x}",
                    r.segment, r.bus_start, r.bus_end, r.base
                );
            }
            chosen = Some(mcfg.regions);
        }
    }
    match chosen {
        Some(regions) => regions,
        None => {
            if seen {
                warn!(target: "acpi", "no usable MCFG: no ECAM, PCI enumeration skipped");
            } else {
                warn!(target: "acpi", "MCFG missing: no ECAM, PCI enumeration skipped");
            }
            Vec::new()
        }
    }
}

fn enumerate_pci(regions: Vec<EcamRegion>) {
    // ECAM must be inside the identity map (which is uncached there: no RAM).
    let (usable, unmapped): (Vec<EcamRegion>, Vec<EcamRegion>) =
        regions.into_iter().partition(|r| {
            let end = r.base.checked_add(((r.bus_end as u64) + 1) << 20);
            end.is_some_and(|e| e <= paging::IDENTITY_MAP_LIMIT)
        });
    for r in &unmapped {
        error!(target: "pci", "ECAM of segment {:04x} at {:#x} is above the identity map; segment skipped", r.segment, r.base);
    }
    if usable.is_empty() {
        info!(target: "pci", "enumerated 0 functions");
        return;
    }
    // SAFETY: every region lies in the identity map below 4 GiB, and the pages holding
    // no RAM (ECAM among them) were made uncached by apply_cache_policy.
    let ecam = unsafe { sluice_pci::Ecam::new(usable.clone()) };
    let table = enumerate(&ecam, &usable);
    for d in table.iter() {
        info!(target: "pci", "{d}");
        for b in &d.bars {
            info!(target: "pci", "    {b}");
        }
    }
    info!(target: "pci", "enumerated {} functions", table.iter().count());
}
