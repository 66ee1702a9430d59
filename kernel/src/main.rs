//! The `sluice` kernel binary: PVH entry, bring-up in order, then the boot report.
//!
//! Order matters: the console first (so every later step can speak), traps next (so a
//! fault is reported, never a silent triple fault), then the firmware's view of memory
//! and ACPI before the frame allocator (which must avoid what they occupy), the heap,
//! and finally the tables and the PCI enumeration that need it.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::arch::global_asm;
use core::panic::PanicInfo;

use linked_list_allocator::LockedHeap;
use log::{LevelFilter, error, info, warn};
use sluice_boot::start_info::MemoryRegion;
use sluice_boot::start_info::StartInfo;
use sluice_iommu::IommuTopology;
use sluice_kernel::acpi::{self, AcpiTables, Signature, find_rsdp};
use sluice_kernel::arch::{cpu::CpuFeatures, gdt, idt, paging, pic, traps};
use sluice_kernel::cmdline::{Options, SELFTEST_FAULT_ADDR, SelfTest};
use sluice_kernel::discovery::Discovery;
use sluice_kernel::dmatest::{self, DmaTestPlatform};
use sluice_kernel::edu::Edu;
use sluice_kernel::exit::{ExitCode, exit_qemu};
use sluice_kernel::memory::dma::FrameDmaMemory;
use sluice_kernel::memory::{frame::FrameAllocator, heap};
use sluice_kernel::mmio::{self, MmioRegion};
use sluice_kernel::phys::IdentityMapped;
use sluice_kernel::serial;
use sluice_pci::{DeviceTable, Ecam, EcamRegion, enumerate};

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
extern "C" fn sluice_trap_entry(frame: &traps::TrapFrame) {
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

/// The prebuilt `alloc` (e.g. `format!`) has unwinding landing pads that name this. With
/// `panic = "abort"` no unwind ever starts, so arriving here is a bug: fail the run.
#[unsafe(no_mangle)]
extern "C" fn _Unwind_Resume() -> ! {
    let _ = core::fmt::Write::write_str(
        &mut serial::EmergencyWriter,
        "\n!!! PANIC at unwind: _Unwind_Resume reached\n",
    );
    exit_qemu(ExitCode::Panic)
}

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

    match sluice_kernel::arch::lapic::init(
        sluice_kernel::arch::lapic::DEFAULT_BASE,
        start_info.memory_map(),
    ) {
        Ok(l) => {
            info!(target: "arch", "local APIC {} enabled (version {:#x}), timer vector {:#x}", l.id(), l.version(), sluice_kernel::arch::lapic::TIMER_VECTOR)
        }
        Err(e) => warn!(target: "arch", "{e}"),
    }
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
    // From here on, frames come from the global allocator (IOMMU tables, DMA buffers).
    *sluice_kernel::memory::FRAMES.lock() = frames;

    // The VFIO layer, once an IOMMU driver is up: it then owns the driver and config space.
    let mut vfio: Option<VfioSetup> = None;
    if let Some(tables) = &tables {
        report_madt(&phys, tables);
        // Device INTx: the I/O APICs (MADT) and where each slot's pins arrive (DSDT).
        let ioapics = init_ioapics(&phys, tables, start_info.memory_map());
        let intx_routing = read_pci_intx_routing(&phys, tables);
        let regions = read_mcfg(&phys, tables);
        if let Some((ecam, mut table)) = enumerate_pci(regions, start_info.memory_map()) {
            for change in sluice_pci::enable_acs(&ecam, &mut table) {
                if !change.write_stuck {
                    warn!(target: "pci", "{change}");
                } else if change.changed() {
                    info!(target: "pci", "{change}");
                }
            }
            if let Some(found) = discover_iommus(&phys, tables, &table, start_info.memory_map()) {
                let (topology, mut driver): (Box<dyn IommuTopology>, _) = match found {
                    Found::Vtd(t, regs) => {
                        let driver = bring_up_vtd(&t, regs).map(Driver::Vtd);
                        (Box::new(t), driver)
                    }
                    Found::AmdVi(t, regs) => {
                        let driver = bring_up_amdvi(&t, regs).map(Driver::AmdVi);
                        (Box::new(t), driver)
                    }
                };
                let discovery = Discovery::new(topology, &table);
                for line in discovery.report() {
                    info!(target: "iommu", "{line}");
                }
                if opts.dma_test {
                    let ran = match driver.as_mut() {
                        Some(driver) => {
                            run_dmatest(&ecam, &table, &discovery, driver, start_info.memory_map())
                        }
                        None => {
                            error!(target: "dmatest", "dmatest needs a working IOMMU driver; none is up");
                            false
                        }
                    };
                    if !ran {
                        exit_qemu(ExitCode::BootFailed);
                    }
                }
                if let Some(driver) = driver {
                    vfio = Some(build_vfio(
                        ecam,
                        &table,
                        &discovery,
                        driver,
                        start_info.memory_map(),
                        (ioapics, intx_routing.as_ref()),
                    ));
                }
            } else if opts.dma_test {
                error!(target: "dmatest", "dmatest needs an IOMMU; none found");
                exit_qemu(ExitCode::BootFailed);
            }
        }
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

    if opts.guests {
        let cmdline = start_info.cmdline();
        if !run_guests(&start_info, cmdline, &phys, vfio.as_mut()) {
            exit_qemu(ExitCode::BootFailed);
        }
    }

    if opts.hold {
        info!(target: "boot", "holding: send one byte on the serial port to finish");
        if serial::read_byte_blocking().is_none() {
            warn!(target: "hold", "no console to read from");
        }
    }
    // The fault records the IOMMU kept while guests ran (left in its registers until now,
    // so that they can be read from outside while the kernel holds): what DMA was
    // blocked, by whom, where.
    if let Some(setup) = vfio.as_mut() {
        for fault in setup.vfio.iommu_mut().take_faults() {
            info!(
                target: "iommu",
                "fault recorded on unit {}: {} by {:02x}:{:02x}.{} at IOVA {:#x}: reason {:#x} ({})",
                fault.unit.0,
                if fault.write { "write" } else { "read" },
                fault.requester_id >> 8,
                (fault.requester_id >> 3) & 0x1f,
                fault.requester_id & 7,
                fault.address,
                fault.reason,
                fault.reason_text
            );
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
            for refused in &m.refused_io_apics {
                warn!(target: "acpi", "MADT: {refused}");
            }
            if m.refused_io_apic_count > m.refused_io_apics.len() {
                warn!(target: "acpi", "MADT: {} more I/O APIC entries refused", m.refused_io_apic_count - m.refused_io_apics.len());
            }
            info!(target: "cpus", "  {} interrupt source overrides", m.overrides.len());
        }
        Err(e) => {
            error!(target: "acpi", "MADT at {:#x} is malformed: {e}; CPU list unknown", entry.address)
        }
    }
}

/// The I/O APICs from the MADT: registers mapped, ID and VERSION read, every pin masked
/// and reset (firmware may have left pins routed), one log line each. `None` (logged)
/// without a usable MADT or I/O APIC: device INTx lines then cannot be offered.
fn init_ioapics(
    phys: &IdentityMapped,
    tables: &AcpiTables,
    map: &[MemoryRegion],
) -> Option<&'static sluice_kernel::arch::ioapic::IoApics> {
    let madt = tables
        .find(Signature::MADT)
        .map(|entry| copy_table(phys, entry).and_then(|b| acpi::madt::parse(&b)));
    let madt = match madt {
        Some(Ok(madt)) => madt,
        Some(Err(e)) => {
            warn!(target: "arch", "MADT malformed ({e}): I/O APICs unknown, no INTx");
            return None;
        }
        None => {
            warn!(target: "arch", "no MADT: I/O APICs unknown, no INTx");
            return None;
        }
    };
    match sluice_kernel::arch::ioapic::init(&madt.io_apics, map) {
        Ok(apics) => {
            for unit in apics.units() {
                let version = unit.version();
                info!(target: "arch", "I/O APIC id {} at {:#x}: version {:#x}, {} pins, GSI {}..={}, all masked",
                    unit.id(),
                    unit.address(),
                    version.version,
                    unit.pins(),
                    unit.gsi_base(),
                    unit.gsi_last()
                );
                if unit.id_register().apic_id != unit.id() & 0xf {
                    warn!(target: "arch", "I/O APIC id {}: its ID register says {}", unit.id(), unit.id_register().apic_id);
                }
            }
            Some(apics)
        }
        Err(e) => {
            warn!(target: "arch", "{e}; no INTx");
            None
        }
    }
}

/// The INTx routing of the root PCI bus, from the DSDT's `_PRT` in APIC mode. The DSDT is
/// found through the FADT and was probed by `AcpiTables::load` at the same address (length
/// capped at `MAX_TABLE_LEN`, 4 MiB, far above QEMU's ~8 KiB; checksum verified), then
/// copied out like every other table and read by the AML reader. Logs one summary line
/// (each slot at debug level), or why there is no routing.
fn read_pci_intx_routing(
    phys: &IdentityMapped,
    tables: &AcpiTables,
) -> Option<acpi::prt::PciIntxRouting> {
    let Some(fadt_entry) = tables.find(Signature::FADT) else {
        warn!(target: "acpi", "FADT (FACP) missing or invalid: no DSDT, PCI INTx routing unknown");
        return None;
    };
    let fadt = match copy_table(phys, fadt_entry).and_then(|b| acpi::fadt::parse(&b)) {
        Ok(f) => f,
        Err(e) => {
            error!(target: "acpi", "FADT at {:#x} is malformed: {e}; PCI INTx routing unknown", fadt_entry.address);
            return None;
        }
    };
    if fadt.dsdt_fields_disagree() {
        warn!(target: "acpi", "FADT fields DSDT {:#x} and X_DSDT {:#x?} differ; X_DSDT is used", fadt.dsdt, fadt.x_dsdt);
    }
    let Some(address) = fadt.dsdt_address() else {
        error!(target: "acpi", "FADT fields DSDT and X_DSDT are both 0: no DSDT, PCI INTx routing unknown");
        return None;
    };
    let Some(entry) = tables
        .find_all(Signature::DSDT)
        .find(|e| e.address == address)
    else {
        error!(target: "acpi", "DSDT at {address:#x} (from the FADT) was not examined; PCI INTx routing unknown");
        return None;
    };
    let bytes = match copy_table(phys, entry) {
        Ok(b) => b,
        Err(e) => {
            error!(target: "acpi", "DSDT at {address:#x} is invalid: {e}; PCI INTx routing unknown");
            return None;
        }
    };
    match acpi::prt::PciIntxRouting::from_dsdt(&bytes) {
        Ok(routing) => {
            info!(target: "acpi", "PCI INTx routing from DSDT {}", routing.summary());
            log_lines("acpi", log::Level::Debug, &routing);
            for problem in &routing.aml_problems {
                warn!(target: "acpi", "DSDT: AML definitions not read past: {problem}");
            }
            Some(routing)
        }
        Err(e) => {
            error!(target: "acpi", "DSDT at {address:#x}: no PCI INTx routing: {e}");
            None
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

/// Log a multi-line report one line at a time (the harness reads lines).
fn log_lines(target: &str, level: log::Level, text: &dyn core::fmt::Display) {
    let text = alloc::format!("{text}");
    for line in text.lines() {
        log::log!(target: target, level, "{line}");
    }
}

/// Find the IOMMUs: parse the DMAR (Intel) or IVRS (AMD) against the live PCI topology
/// and describe each unit from its own registers. This is the one place in the kernel
/// that names a vendor; everything after it sees an [`IommuTopology`].
/// What firmware describes, before it is handed on as a vendor-neutral topology.
enum Found {
    /// The DMAR, and each unit's register block (None when it could not be used).
    Vtd(sluice_vtd::DmarTopology, Vec<Option<MmioRegion>>),
    /// The IVRS, and each unit's register block (None when it could not be used).
    AmdVi(sluice_amdvi::IvrsTopology, Vec<Option<MmioRegion>>),
}

/// The translation driver brought up at boot.
enum Driver {
    Vtd(VtdDriver),
    AmdVi(AmdViDriver),
}

fn discover_iommus(
    phys: &IdentityMapped,
    tables: &AcpiTables,
    table: &DeviceTable,
    map: &[MemoryRegion],
) -> Option<Found> {
    let dmar = tables.find(Signature::DMAR);
    let ivrs = tables.find(Signature::IVRS);
    if dmar.is_some() && ivrs.is_some() {
        warn!(target: "iommu", "both DMAR and IVRS present; using the DMAR");
    }
    for sig in [Signature::DMAR, Signature::IVRS] {
        let count = tables.find_all(sig).count();
        if count > 1 {
            warn!(target: "iommu", "{count} {sig} tables; only the first valid one is used");
        }
    }
    if let Some(entry) = dmar {
        let bytes = copy_table(phys, entry).ok()?;
        let topology = match sluice_vtd::DmarTopology::parse(&bytes, table) {
            Ok(t) => t,
            Err(e) => {
                error!(target: "iommu", "{e}; DMAR ignored: no IOMMU, no device can be assigned");
                return None;
            }
        };
        log_lines("iommu", log::Level::Info, &topology);
        for w in topology.warnings() {
            warn!(target: "iommu", "DMAR: {w}");
        }
        let regs = topology
            .units()
            .iter()
            .map(|u| describe_vtd_unit(u, map))
            .collect();
        return Some(Found::Vtd(topology, regs));
    }
    if let Some(entry) = ivrs {
        let bytes = copy_table(phys, entry).ok()?;
        return discover_amdvi(&bytes, table, map);
    }
    info!(target: "iommu", "no DMAR or IVRS: no IOMMU, so no device can be assigned");
    None
}

/// A VT-d unit's version and capabilities, read from its registers.
fn describe_vtd_unit(
    unit: &sluice_iommu::UnitDescription,
    map: &[MemoryRegion],
) -> Option<MmioRegion> {
    use sluice_vtd::regs::{Capability, ExtendedCapability, Version, offset};
    // SAFETY: read-only use of registers nothing else programs yet; MmioRegion::new checks
    // the firmware-supplied range (identity mapped, uncached, no RAM).
    let regs = match unsafe { MmioRegion::new(unit.register_base, unit.register_size, map) } {
        Ok(r) => r,
        Err(e) => {
            error!(target: "iommu", "{}: {e}; unit unusable", unit.name);
            return None;
        }
    };
    let (Some(ver), Some(cap), Some(ecap)) = (
        regs.read32(offset::VER as u64),
        regs.read64(offset::CAP as u64),
        regs.read64(offset::ECAP as u64),
    ) else {
        error!(target: "iommu", "{}: register block too small for VER/CAP/ECAP", unit.name);
        return None;
    };
    if cap == u64::MAX || ver == u32::MAX {
        error!(target: "iommu", "{}: registers read all-ones: no unit at {:#x}", unit.name, unit.register_base);
        return None;
    }
    info!(
        target: "iommu",
        "{}: VT-d {} at {:#x}: {}; {}",
        unit.name,
        Version::decode(ver),
        unit.register_base,
        Capability::decode(cap),
        ExtendedCapability::decode(ecap)
    );
    // The register set is as large as CAP/ECAP place the fault and IOTLB registers.
    let (cap, ecap) = (Capability::decode(cap), ExtendedCapability::decode(ecap));
    let size = unit
        .register_size
        .max(sluice_vtd::regs::register_set_size(&cap, &ecap));
    // SAFETY: as above; this region replaces the 4 KiB one and is handed to the driver.
    match unsafe { MmioRegion::new(unit.register_base, size, map) } {
        Ok(r) => Some(r),
        Err(e) => {
            error!(target: "iommu", "{}: {e}; unit unusable", unit.name);
            None
        }
    }
}

/// Parse the IVRS against the live topology and describe each unit from its registers.
fn discover_amdvi(bytes: &[u8], table: &DeviceTable, map: &[MemoryRegion]) -> Option<Found> {
    let ivrs = match sluice_amdvi::Ivrs::parse(bytes) {
        Ok(i) => i,
        Err(e) => {
            error!(target: "iommu", "{e}; IVRS ignored: no IOMMU, no device can be assigned");
            return None;
        }
    };
    let topology = match sluice_amdvi::IvrsTopology::new(&ivrs, table) {
        Ok(t) => t,
        Err(e) => {
            error!(target: "iommu", "IVRS: {e}; no IOMMU, no device can be assigned");
            return None;
        }
    };
    log_lines("iommu", log::Level::Info, &topology);
    for w in topology.warnings() {
        warn!(target: "iommu", "IVRS: {w}");
    }
    let regs = topology
        .amd_units()
        .iter()
        .map(|u| describe_amdvi_unit(u, map))
        .collect();
    Some(Found::AmdVi(topology, regs))
}

/// An AMD-Vi unit's Extended Feature Register, read from MMIO and checked against the
/// image firmware put in the IVHD.
fn describe_amdvi_unit(unit: &sluice_amdvi::AmdViUnit, map: &[MemoryRegion]) -> Option<MmioRegion> {
    /// MMIO offset of the Extended Feature Register.
    const EFR: u64 = 0x30;
    let d = &unit.description;
    // SAFETY: read-only use of registers nothing else programs yet; MmioRegion::new checks
    // the firmware-supplied range (identity mapped, uncached, no RAM).
    let regs = match unsafe { MmioRegion::new(d.register_base, d.register_size, map) } {
        Ok(r) => r,
        Err(e) => {
            error!(target: "iommu", "{}: {e}; unit unusable", d.name);
            return None;
        }
    };
    let Some(raw) = regs.read64(EFR) else {
        error!(target: "iommu", "{}: register block too small for the EFR", d.name);
        return None;
    };
    if raw == u64::MAX {
        error!(target: "iommu", "{}: registers read all-ones: no unit at {:#x}", d.name, d.register_base);
        return None;
    }
    let efr = sluice_amdvi::ExtendedFeatures::from_raw(raw);
    info!(
        target: "iommu",
        "{}: AMD-Vi at {:#x}, function {}: EFR {raw:#x}: {efr}",
        d.name,
        d.register_base,
        unit.iommu_function
    );
    if let Some(image) = unit.efr_image() {
        if image != efr {
            warn!(target: "iommu", "{}: EFR differs from the IVHD's image ({image})", d.name);
        }
    }
    Some(regs)
}

type VtdDriver = sluice_vtd::driver::VtdIommu<MmioRegion, FrameDmaMemory>;

/// Bring every VT-d unit up: root table with no context entry (every device's DMA is
/// blocked), queued invalidation, translation enabled. Devices are let through only by
/// attaching them to a domain.
fn bring_up_vtd(
    topology: &sluice_vtd::DmarTopology,
    regs: Vec<Option<MmioRegion>>,
) -> Option<VtdDriver> {
    let Some(regs) = regs.into_iter().collect::<Option<Vec<_>>>() else {
        error!(target: "iommu", "VT-d: a unit's registers are unusable; translation stays off");
        return None;
    };
    let config = sluice_vtd::driver::DriverConfig::default();
    match sluice_vtd::driver::VtdIommu::new(topology, regs, FrameDmaMemory, config) {
        Ok(mut driver) => {
            let f = driver.format();
            info!(
                target: "iommu",
                "VT-d: translation enabled on {} unit(s): {}-level {}-bit tables, default deny (no device attached)",
                topology.units().len(),
                f.levels,
                f.address_width
            );
            enable_vtd_interrupt_remapping(topology, &mut driver);
            Some(driver)
        }
        Err(e) => {
            error!(target: "iommu", "VT-d bring-up failed: {e}; no device can be assigned");
            None
        }
    }
}

/// Interrupt remapping where every unit offers it (ECAP.IR with queued invalidation):
/// empty tables (every device interrupt blocked until the VFIO layer writes its entries),
/// compatibility format blocked. Otherwise device MSIs stay in compatibility format, and
/// the log says so.
fn enable_vtd_interrupt_remapping(topology: &sluice_vtd::DmarTopology, driver: &mut VtdDriver) {
    let platform = if topology.interrupt_remapping() {
        "DMAR flags: interrupt-remapping"
    } else {
        "DMAR flags: none"
    };
    match driver.enable_interrupt_remapping() {
        Ok(true) => info!(
            target: "iommu",
            "VT-d: interrupt remapping enabled on {} unit(s) ({platform}): device MSIs use remappable format, compatibility format blocked",
            topology.units().len()
        ),
        Ok(false) => info!(
            target: "iommu",
            "VT-d: interrupt remapping not offered by every unit (ECAP.IR; {platform}): device MSIs use compatibility format"
        ),
        Err(e) => error!(
            target: "iommu",
            "VT-d: enabling interrupt remapping failed: {e}; device MSIs cannot be delivered"
        ),
    }
}

type AmdViDriver = sluice_amdvi::driver::AmdViIommu<MmioRegion, FrameDmaMemory>;

/// Bring every AMD-Vi unit up: a device table whose every entry blocks DMA (translation
/// on, no mappings), command buffer and event log, IOMMU enabled.
fn bring_up_amdvi(
    topology: &sluice_amdvi::IvrsTopology,
    regs: Vec<Option<MmioRegion>>,
) -> Option<AmdViDriver> {
    let Some(regs) = regs.into_iter().collect::<Option<Vec<_>>>() else {
        error!(target: "iommu", "AMD-Vi: a unit's registers are unusable; the IOMMU stays off");
        return None;
    };
    let config = sluice_amdvi::driver::DriverConfig::default();
    match sluice_amdvi::driver::AmdViIommu::new(topology, regs, FrameDmaMemory, config) {
        Ok(mut driver) => {
            let f = driver.format();
            info!(
                target: "iommu",
                "AMD-Vi: translation enabled on {} unit(s): {}-level v1 tables, every device blocked until attached",
                topology.amd_units().len(),
                f.levels
            );
            enable_amdvi_interrupt_remapping(topology, &mut driver);
            Some(driver)
        }
        Err(e) => {
            error!(target: "iommu", "AMD-Vi bring-up failed: {e}; no device can be assigned");
            None
        }
    }
}

/// Interrupt remapping where the firmware says the units do it (the IVRS names an
/// IOAPIC; QEMU: `amd-iommu,intremap=on`, the TCG default): every device attached gets
/// an empty interrupt remapping table (its MSIs blocked until the VFIO layer writes
/// entries). Otherwise device MSIs stay in compatibility format, and the log says so.
fn enable_amdvi_interrupt_remapping(
    topology: &sluice_amdvi::IvrsTopology,
    driver: &mut AmdViDriver,
) {
    match driver.enable_interrupt_remapping() {
        Ok(true) => info!(
            target: "iommu",
            "AMD-Vi: interrupt remapping enabled on {} unit(s) (IVRS names an IOAPIC): attached devices' MSIs go through their own table, blocked until mapped",
            topology.amd_units().len()
        ),
        Ok(false) => info!(
            target: "iommu",
            "AMD-Vi: interrupt remapping not offered (the IVRS names no IOAPIC): device MSIs use compatibility format"
        ),
        Err(e) => error!(
            target: "iommu",
            "AMD-Vi: enabling interrupt remapping failed: {e}; device MSIs use compatibility format"
        ),
    }
}

/// The AMD-Vi side of the DMA experiments: the last event-log entry and the leaf entry.
struct AmdViDmaTest<'a> {
    driver: &'a mut AmdViDriver,
}

impl DmaTestPlatform for AmdViDmaTest<'_> {
    fn iommu(&mut self) -> &mut dyn sluice_iommu::Iommu {
        self.driver
    }

    fn fault_evidence(&mut self) -> alloc::string::String {
        match self.driver.take_events().last() {
            Some(event) => {
                let (hi, lo) = event.quads();
                alloc::format!("event=0x{hi:016x}:0x{lo:016x}")
            }
            None => alloc::string::String::from("event=none"),
        }
    }

    fn leaf_entry(
        &mut self,
        domain: sluice_iommu::DomainHandle,
        iova: u64,
    ) -> Option<(u64, u8, u64)> {
        let leaf = self.driver.leaf(domain, iova).ok()??;
        Some((leaf.entry, leaf.level, leaf.page_size))
    }
}

/// The VT-d side of the DMA experiments: the raw fault record and a table descent.
struct VtdDmaTest<'a> {
    driver: &'a mut VtdDriver,
    /// The same unit's registers, mapped again for raw reads of the fault record.
    fault_regs: MmioRegion,
    fro: u64,
}

impl DmaTestPlatform for VtdDmaTest<'_> {
    fn iommu(&mut self) -> &mut dyn sluice_iommu::Iommu {
        self.driver
    }

    fn fault_evidence(&mut self) -> alloc::string::String {
        let lo = self.fault_regs.read64(self.fro).unwrap_or(u64::MAX);
        let hi = self.fault_regs.read64(self.fro + 8).unwrap_or(u64::MAX);
        alloc::format!("frcd=0x{hi:016x}:0x{lo:016x}")
    }

    /// Descend the domain's second-level tables as the hardware does, reading the
    /// entries from memory, to the leaf for `iova`.
    fn leaf_entry(
        &mut self,
        domain: sluice_iommu::DomainHandle,
        iova: u64,
    ) -> Option<(u64, u8, u64)> {
        use sluice_vtd::hw::DmaMemory;
        let mut table = self.driver.table_root(domain)?;
        let mem = self.driver.memory();
        for level in (1..=self.driver.format().levels).rev() {
            let shift = 12 + 9 * (level as u64 - 1);
            let entry = mem.read_u64(table + ((iova >> shift) & 0x1ff) * 8);
            if entry & 3 == 0 {
                return None;
            }
            if level == 1 || entry & (1 << 7) != 0 {
                return Some((entry, level, 1 << shift));
            }
            table = entry & 0x000f_ffff_ffff_f000;
        }
        None
    }
}

/// Find two edu devices, attach the first to a domain, and run the experiments.
fn run_dmatest(
    ecam: &Ecam,
    table: &DeviceTable,
    discovery: &Discovery,
    driver: &mut Driver,
    map: &[MemoryRegion],
) -> bool {
    let edus: Vec<&sluice_pci::PciDevice> = table
        .iter()
        .filter(|d| sluice_kernel::edu::is_edu(ecam, d.address))
        .collect();
    let [d1, d2, ..] = edus.as_slice() else {
        error!(target: "dmatest", "dmatest needs two edu devices, found {}", edus.len());
        return false;
    };
    let open = |d: &sluice_pci::PciDevice| -> Option<Edu<MmioRegion>> {
        let bar = d
            .bars
            .iter()
            .find(|b| b.index == 0 && b.kind != sluice_pci::BarKind::Io)?;
        // SAFETY: BAR0 of an edu, assigned by firmware, checked against RAM and the
        // identity map; only this driver touches it.
        let regs =
            unsafe { MmioRegion::new(bar.address, sluice_kernel::edu::BAR0_SIZE, map) }.ok()?;
        sluice_kernel::edu::enable_bus_master(ecam, d.address);
        Edu::new(regs).ok()
    };
    let (Some(e1), Some(e2)) = (open(d1), open(d2)) else {
        error!(target: "dmatest", "an edu's BAR0 is unusable or it failed its liveness check");
        return false;
    };
    let Some(route) = discovery.routes.get(&d1.address) else {
        error!(target: "dmatest", "{} is not translated by any unit", d1.address);
        return false;
    };
    let e1_dma = sluice_iommu::DeviceDma {
        device: d1.address,
        unit: route.unit,
        requester_ids: route.requester_ids.iter().map(|a| a.requester_id).collect(),
    };
    let e2_rid = d2.address.bdf();
    match driver {
        Driver::Vtd(driver) => {
            let Some(info) = driver.unit_info(route.unit) else {
                return false;
            };
            let unit = &discovery.topology.units()[route.unit.0 as usize];
            let fro = info.cap.fro as u64;
            // SAFETY: read-only access to the fault recording registers, whose only
            // writer is the driver's take_faults, called between the experiments' reads.
            let Ok(fault_regs) =
                (unsafe { MmioRegion::new(unit.register_base, 0x1000.max(fro + 16), map) })
            else {
                return false;
            };
            let mut platform = VtdDmaTest {
                driver,
                fault_regs,
                fro,
            };
            dmatest::run(&mut platform, &e1, &e1_dma, &e2, e2_rid)
        }
        Driver::AmdVi(driver) => {
            let mut platform = AmdViDmaTest { driver };
            dmatest::run(&mut platform, &e1, &e1_dma, &e2, e2_rid)
        }
    }
}

/// The VFIO layer and the index that resolves `groups=00:03.0` to group numbers.
struct VfioSetup {
    vfio: sluice_kernel::vfio::Vfio,
    group_of: alloc::collections::BTreeMap<sluice_pci::PciAddress, u32>,
    /// Host-physical ranges no BAR mapping may touch: IOMMU registers, ECAM.
    forbidden_mmio: Vec<(u64, u64)>,
}

/// Hand the IOMMU driver and config space to the VFIO layer, with every IOMMU group:
/// its functions, their DMA routes and BARs, which are bridges, and which the hypervisor
/// uses itself (the ISA/LPC bridge: COM1, our console, sits behind it).
fn build_vfio(
    ecam: Ecam,
    table: &DeviceTable,
    discovery: &Discovery,
    driver: Driver,
    memory_map: &[sluice_boot::start_info::MemoryRegion],
    (ioapics, intx_routing): (
        Option<&'static sluice_kernel::arch::ioapic::IoApics>,
        Option<&acpi::prt::PciIntxRouting>,
    ),
) -> VfioSetup {
    use sluice_kernel::vfio::{GroupDesc, GroupDevice, Vfio};
    use sluice_pci::DeviceKind;
    const CLASS_ISA_BRIDGE: u32 = 0x0601;
    let mut group_of = alloc::collections::BTreeMap::new();
    let mut groups = Vec::new();
    for group in discovery.groups.iter() {
        let mut devices = Vec::new();
        for &address in &group.devices {
            let (Some(d), Some(route)) = (table.get(address), discovery.routes.get(&address))
            else {
                warn!(target: "vfio", "group {}: {address} has no route or vanished; group left out", group.id.0);
                devices.clear();
                break;
            };
            // Used by the hypervisor (the LPC bridge: COM1), or bound by firmware to
            // reserved memory (RMRR / IVMD): never given to a guest.
            let reserved = discovery.topology.reserved_regions(table, address);
            if !reserved.is_empty() {
                warn!(target: "vfio", "{address}: firmware reserves memory for it ({reserved:x?}): its group is never viable");
            }
            let host_owned = d.class >> 8 == CLASS_ISA_BRIDGE || !reserved.is_empty();
            let bridge = d.header_type == 1
                || matches!(
                    d.kind,
                    DeviceKind::RootPort
                        | DeviceKind::UpstreamPort
                        | DeviceKind::DownstreamPort
                        | DeviceKind::PcieToPciBridge
                        | DeviceKind::PciToPcieBridge
                        | DeviceKind::PciBridge
                );
            devices.push(GroupDevice {
                address,
                vendor_id: d.vendor_id,
                device_id: d.device_id,
                class: d.class,
                bridge,
                host_owned,
                dma: sluice_iommu::DeviceDma {
                    device: address,
                    unit: route.unit,
                    requester_ids: route.requester_ids.iter().map(|a| a.requester_id).collect(),
                },
                bars: d.bars.clone(),
                interrupt_pin: d.interrupt_pin,
                intx_line: intx_line(table, d, intx_routing),
                // FLR, PM reset, or a bus reset when the whole bus is this group's.
                reset: if bridge {
                    None
                } else {
                    sluice_pci::reset_method(table, d, |a| group.devices.contains(&a))
                },
            });
        }
        if devices.is_empty() {
            continue;
        }
        for d in &devices {
            group_of.insert(d.address, group.id.0);
        }
        groups.push(GroupDesc {
            id: group.id.0,
            devices,
        });
    }
    let mut forbidden_mmio: Vec<(u64, u64)> = discovery
        .topology
        .units()
        .iter()
        .map(|u| {
            (
                u.register_base,
                u.register_base.saturating_add(u.register_size),
            )
        })
        .collect();
    forbidden_mmio.extend(ecam.regions().iter().map(|r| {
        let start = r.base + ((r.bus_start as u64) << 20);
        (
            start,
            start + (((r.bus_end - r.bus_start) as u64 + 1) << 20),
        )
    }));
    let iommu: Box<dyn sluice_iommu::Iommu> = match driver {
        Driver::Vtd(d) => Box::new(d),
        Driver::AmdVi(d) => Box::new(d),
    };
    info!(target: "vfio", "VFIO ready: {} IOMMU groups can be given to guests (`guest=NAME:SIZE:groups=...`)", groups.len());
    let mut vfio = Vfio::new(iommu, Box::new(ecam), groups);
    vfio.set_heap_guard(|| HEAP.lock().free());
    vfio.set_device_hw(Box::new(sluice_kernel::devhw::KernelDeviceHw {
        memory_map: memory_map.to_vec(),
        forbidden: forbidden_mmio.clone(),
    }));
    // Device MSIs go to this CPU's local APIC (xAPIC ids are 8 bits).
    if let Some(lapic) = sluice_kernel::arch::lapic::get() {
        vfio.set_interrupt_target(lapic.id() as u8);
    }
    // Device INTx, through the I/O APICs, when both they and the DSDT's routing are known.
    match (ioapics, intx_routing) {
        (Some(apics), Some(_)) => vfio.set_interrupt_lines(Box::new(IoApicLines(apics))),
        _ => {
            warn!(target: "vfio", "device INTx not offered (I/O APICs or the DSDT's PCI routing unknown)")
        }
    }
    VfioSetup {
        vfio,
        group_of,
        forbidden_mmio,
    }
}

/// Where `d`'s INTx pin arrives: its pin swizzled through the bridges above it to a slot
/// on root bus 0, looked up in the DSDT's `_PRT` (bridges' own `_PRT`s are not read).
/// `None` without a pin, a routing table, or for functions under another root bus.
fn intx_line(
    table: &DeviceTable,
    d: &sluice_pci::PciDevice,
    routing: Option<&acpi::prt::PciIntxRouting>,
) -> Option<sluice_kernel::vfio::IntxLine> {
    let routing = routing?;
    let pin = acpi::prt::IntxPin::from_config(d.interrupt_pin)?;
    let ancestors = table.ancestors(d.address);
    let top = ancestors.last().map_or(d.address, |b| b.address);
    if top.segment != 0 || top.bus != 0 {
        return None;
    }
    let mut path: Vec<u8> = ancestors.iter().rev().map(|b| b.address.device).collect();
    path.push(d.address.device);
    let route = routing.route_through_bridges(&path, pin)?;
    Some(sluice_kernel::vfio::IntxLine {
        gsi: route.gsi,
        level_triggered: route.level_triggered,
        active_low: route.active_low,
    })
}

/// The I/O APICs as the VFIO layer uses them for device INTx: a routed pin is written
/// masked and its vector registered as level-triggered (the interrupt handler masks the
/// pin before its EOI); the VFIO layer unmasks it once it has masked the asserting
/// device.
struct IoApicLines(&'static sluice_kernel::arch::ioapic::IoApics);

impl sluice_kernel::vfio::InterruptLines for IoApicLines {
    fn locate(&self, gsi: u32) -> Option<(u8, u8)> {
        self.0.locate(gsi)
    }

    fn route(&self, gsi: u32, vector: u8, rte: u64) -> Result<(), alloc::string::String> {
        use sluice_kernel::arch::ioapic;
        self.0
            .route(gsi, rte | ioapic::rte::MASKED)
            .map_err(|e| alloc::format!("{e}"))?;
        ioapic::register_level_vector(vector, gsi).map_err(|e| {
            let _ = self.0.mask(gsi);
            alloc::format!("{e}")
        })
    }

    fn set_masked(&self, gsi: u32, masked: bool) {
        let result = if masked {
            self.0.mask(gsi)
        } else {
            self.0.unmask(gsi)
        };
        if let Err(e) = result {
            error!(target: "vfio", "GSI {gsi}: {e}");
        }
    }

    fn release(&self, gsi: u32, vector: u8) {
        if let Err(e) = self.0.mask(gsi) {
            error!(target: "vfio", "GSI {gsi}: {e}");
        }
        sluice_kernel::arch::ioapic::unregister_level_vector(vector);
    }
}

/// Start the guests the command line names (`guest=NAME:SIZE`), one after another, from
/// the archive handed over as the PVH boot module. Returns whether every guest ended as
/// expected (exit status 0, or terminated where `expect=NAME:terminated` says so).
fn run_guests(
    si: &StartInfo,
    cmdline: &str,
    phys: &IdentityMapped,
    vfio: Option<&mut VfioSetup>,
) -> bool {
    use sluice_kernel::guest_image::{self, Archive};
    use sluice_kernel::vfio::GuestId;
    use sluice_kernel::virt::vfio_memory::VfioGuestMemory;
    use sluice_kernel::virt::{self, Action, Exit, GuestStatus, VirtualCpu, handle_common_exit};
    /// The hardware backend: the only place that names it.
    type Backend = sluice_kernel::svm::Vcpu;
    type Guest = virt::Guest<Backend>;

    let specs = match guest_image::parse_guests(cmdline) {
        Ok(s) => s,
        Err(e) => {
            error!(target: "guest", "guest command line: {e}");
            return false;
        }
    };
    let expect_terminated: Vec<&str> = cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("expect=")?.strip_suffix(":terminated"))
        .collect();
    let Some(module) = si.modules().first() else {
        error!(target: "guest", "guests requested but no boot module (-initrd) holds their archive");
        return false;
    };
    const MAX_ARCHIVE: u64 = 64 << 20;
    if module.size == 0 || module.size > MAX_ARCHIVE {
        error!(target: "guest", "boot module of {} bytes is not a plausible guest archive", module.size);
        return false;
    }
    let mut bytes = vec![0u8; module.size as usize];
    if !sluice_boot::phys::PhysRead::read(phys, module.paddr, &mut bytes) {
        error!(target: "guest", "boot module at {:#x} is not readable", module.paddr);
        return false;
    }
    let archive = match Archive::parse(&bytes) {
        Ok(a) => a,
        Err(e) => {
            error!(target: "guest", "{e}");
            return false;
        }
    };
    if let Err(e) = Backend::enable() {
        error!(target: "guest", "hardware virtualisation unavailable: {e}");
        return false;
    }
    let mut guests = Vec::new();
    for spec in &specs {
        match create_guest(&archive, spec) {
            Some(g) => guests.push(g),
            None => return false,
        }
    }
    // Guest ids for the VFIO layer: the position on the command line (names are unique).
    let ids: alloc::collections::BTreeMap<alloc::string::String, GuestId> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), GuestId(i as u32)))
        .collect();
    let mut vfio = vfio.map(|v| &mut *v);
    for (i, spec) in specs.iter().enumerate() {
        if spec.groups.is_empty() {
            continue;
        }
        let Some(setup) = vfio.as_deref_mut() else {
            error!(target: "guest", "{}: given IOMMU groups, but no IOMMU driver is up: it can open none", spec.name);
            continue;
        };
        let mut granted = Vec::new();
        for r in &spec.groups {
            let id = match *r {
                guest_image::GroupRef::Id(id) => Some(id),
                guest_image::GroupRef::Device(seg, bus, devfn) => {
                    let address = sluice_pci::PciAddress::new(seg, bus, devfn >> 3, devfn & 7);
                    setup.group_of.get(&address).copied()
                }
            };
            match id {
                Some(id) if !granted.contains(&id) => granted.push(id),
                Some(_) => {}
                None => {
                    warn!(target: "guest", "{}: groups={r}: no IOMMU group holds that function", spec.name)
                }
            }
        }
        info!(target: "guest", "{}: may own IOMMU groups {granted:?}", spec.name);
        setup.vfio.add_guest(GuestId(i as u32), &granted);
    }
    let memory_map = si.memory_map();
    let forbidden: Vec<(u64, u64)> = vfio
        .as_deref()
        .map(|v| v.forbidden_mmio.clone())
        .unwrap_or_default();
    let vfio = core::cell::RefCell::new(vfio);
    let mut lines: alloc::collections::BTreeMap<alloc::string::String, alloc::string::String> =
        Default::default();
    let mut handler = |g: &mut Guest, exit: Exit| match exit {
        Exit::Hypercall => {
            let r = *g.vcpu.regs_mut();
            let args = [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9];
            let line = lines.entry(g.name.clone()).or_default();
            let result = match sluice_abi::decode(g.vcpu.rax(), args) {
                Ok(sluice_abi::Hypercall::Exit { status }) => return Action::Exited(status),
                Ok(sluice_abi::Hypercall::Vfio(call)) => {
                    let id = ids.get(&g.name).copied();
                    match (vfio.borrow_mut().as_deref_mut(), id) {
                        (Some(setup), Some(id)) => {
                            let mut mem = VfioGuestMemory {
                                guest: &mut *g,
                                memory_map,
                                forbidden: &forbidden,
                            };
                            setup.vfio.call(id, &mut mem, call)
                        }
                        // No IOMMU driver: nothing can be assigned.
                        _ => Err(sluice_abi::Errno::ENODEV),
                    }
                }
                Ok(call) => hypercall(g, call, line),
                Err(e) => Err(e),
            };
            g.vcpu.set_rax(sluice_abi::encode_result(result));
            g.vcpu.skip_instruction();
            Action::Resume
        }
        other => handle_common_exit(g, other),
    };
    let ticks0 = sluice_kernel::arch::lapic::ticks();
    let quantum = virt::scheduler::Quantum {
        max_quanta_per_guest: 200,
        ..Default::default()
    };
    // A guest that ends (exits, is killed, runs out of time) loses every VFIO object at
    // once: its devices are blocked from DMA before anyone else runs.
    let mut ended = |g: &mut Guest, status: &GuestStatus| {
        if let (Some(setup), Some(&id)) = (vfio.borrow_mut().as_deref_mut(), ids.get(&g.name)) {
            setup.vfio.release_guest(id);
            info!(target: "vfio", "{} {status}: its VFIO handles are released", g.name);
        }
    };
    let interrupts = DeviceInterrupts {
        vfio: &vfio,
        ids: &ids,
        mailbox: Default::default(),
    };
    let results = virt::scheduler::run_all(guests, &mut handler, &mut ended, &interrupts, quantum);
    info!(target: "sched", "{} timer ticks, {} spurious", sluice_kernel::arch::lapic::ticks() - ticks0, sluice_kernel::arch::lapic::spurious_count());
    if let Some(setup) = vfio.borrow().as_deref() {
        let (injected, dropped) = setup.vfio.interrupt_counts();
        if injected + dropped > 0 {
            info!(target: "vfio", "device interrupts: {} taken by the host, {injected} injected, {dropped} dropped", sluice_kernel::arch::lapic::device_interrupt_count());
        }
    }
    let (mut passed, mut failed) = (0, 0);
    for (name, status) in results {
        let expect_terminate = expect_terminated.contains(&name.as_str());
        let ok = match status {
            GuestStatus::Exited(status) => {
                info!(target: "guest", "{}: exited with status {status}", name);
                status == 0 && !expect_terminate
            }
            GuestStatus::Terminated(reason) => {
                warn!(target: "guest", "{}: terminated: {reason}", name);
                expect_terminate
            }
            GuestStatus::Ready | GuestStatus::Running => false,
        };
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    info!(target: "guest", "guests: {} ran, {passed} passed, {failed} failed", specs.len());
    return failed == 0;

    /// Device interrupts for the scheduler: what the host took, routed by the VFIO layer
    /// to (guest, virtual vector), kept per guest until that guest is looked at.
    struct DeviceInterrupts<'a> {
        vfio: &'a core::cell::RefCell<Option<&'a mut VfioSetup>>,
        ids: &'a alloc::collections::BTreeMap<alloc::string::String, GuestId>,
        mailbox: core::cell::RefCell<alloc::collections::BTreeMap<GuestId, Vec<u8>>>,
    }

    impl virt::scheduler::Interrupts<Backend> for DeviceInterrupts<'_> {
        fn deliver(&self, guest: &mut Guest) {
            let host = sluice_kernel::arch::lapic::take_device_interrupts();
            let mut mailbox = self.mailbox.borrow_mut();
            if let Some(setup) = self.vfio.borrow_mut().as_deref_mut() {
                for (id, vector) in setup.vfio.take_interrupts(host) {
                    mailbox.entry(id).or_default().push(vector);
                }
            }
            let Some(id) = self.ids.get(&guest.name) else {
                return;
            };
            for vector in mailbox.remove(id).unwrap_or_default() {
                guest.queue_interrupt(vector);
            }
        }

        fn armed(&self) -> bool {
            self.vfio
                .borrow()
                .as_deref()
                .is_some_and(|setup| setup.vfio.interrupts_armed())
        }
    }

    /// Load one guest from the archive and run it to its end.
    fn create_guest(archive: &Archive<'_>, spec: &guest_image::GuestSpec) -> Option<Guest> {
        let Some(image) = archive.get(&spec.name) else {
            error!(target: "guest", "{}: not in the guest archive", spec.name);
            return None;
        };
        let ram_size = spec.ram_size;
        let top = ram_size - (2 << 20);
        let forbidden = [0..sluice_abi::GUEST_RESERVED_END, top..ram_size];
        let plan = match guest_image::plan(image, 0, ram_size, &forbidden) {
            Ok(p) => p,
            Err(e) => {
                error!(target: "guest", "{}: {e}", spec.name);
                return None;
            }
        };
        let name = spec.name.clone();
        let created = Guest::create(&spec.name, ram_size, |mem| {
            // Both callbacks write guest memory; the first failure is kept.
            let state = core::cell::RefCell::new((&mut *mem, None::<alloc::string::String>));
            let loaded = guest_image::load(
                &plan,
                image,
                &mut |gpa, data| {
                    let (mem, failure) = &mut *state.borrow_mut();
                    if let Err(e) = mem.write(gpa, data) {
                        failure.get_or_insert(alloc::format!("{e:?}"));
                    }
                },
                &mut |gpa, len| {
                    let (mem, failure) = &mut *state.borrow_mut();
                    if let Err(e) = mem.fill(gpa, len, 0) {
                        failure.get_or_insert(alloc::format!("{e:?}"));
                    }
                },
            );
            loaded.map_err(|e| alloc::format!("{e}"))?;
            if let (_, Some(f)) = state.into_inner() {
                return Err(f);
            }
            let info = sluice_abi::GuestStartInfo::new(&name, 0, ram_size, 0, 0);
            mem.write(sluice_abi::GUEST_START_INFO_GPA, &info.to_bytes())
                .map_err(|e| alloc::format!("{e:?}"))?;
            Ok(plan.entry)
        });
        let mut guest = match created {
            Ok(g) => g,
            Err(e) => {
                error!(target: "guest", "{}: {e}", spec.name);
                return None;
            }
        };
        guest.vcpu.regs_mut().rdi = sluice_abi::GUEST_START_INFO_GPA;
        info!(target: "guest", "{}: started, RAM {} MiB, entry {:#x}", spec.name, ram_size >> 20, plan.entry);
        Some(guest)
    }

    /// The hypercalls of the ABI transport (VFIO calls come with later issues).
    fn hypercall(
        g: &mut Guest,
        call: sluice_abi::Hypercall,
        line: &mut alloc::string::String,
    ) -> Result<u64, sluice_abi::Errno> {
        use sluice_abi::{CONSOLE_WRITE_MAX, Errno, Hypercall};
        match call {
            Hypercall::Version => Ok(sluice_abi::ABI_VERSION as u64),
            Hypercall::Null => Ok(0),
            Hypercall::ConsoleWrite { gpa, len } => {
                let (base, end) = g.memory.loadable();
                let ram = end - base;
                sluice_abi::validate_guest_range(gpa, len, base, ram, CONSOLE_WRITE_MAX)?;
                let mut buf = vec![0u8; len as usize];
                g.memory.read(gpa, &mut buf).map_err(|_| Errno::EFAULT)?;
                for c in alloc::string::String::from_utf8_lossy(&buf).chars() {
                    match c {
                        '\n' => {
                            info!(target: "guest", "[{}] {line}", g.name);
                            line.clear();
                        }
                        '\r' => {}
                        // Bounded: a guest that never ends a line still gets printed.
                        c if line.len() >= 512 => {
                            info!(target: "guest", "[{}] {line}", g.name);
                            line.clear();
                            line.push(c);
                        }
                        c => line.push(c),
                    }
                }
                Ok(len)
            }
            Hypercall::Exit { .. } => Err(Errno::EINVAL),
            Hypercall::SelfInterrupt { vector } => {
                g.queue_interrupt(vector);
                Ok(0)
            }
            Hypercall::Vfio(_) => Err(Errno::ENOSYS),
        }
    }
}

/// Enumerate every PCI function the usable ECAM regions reach. ECAM addresses come from
/// the MCFG, so each region must pass the same checks as any firmware register range:
/// inside the identity map and clear of RAM (BAR sizing writes there).
fn enumerate_pci(regions: Vec<EcamRegion>, map: &[MemoryRegion]) -> Option<(Ecam, DeviceTable)> {
    let usable: Vec<EcamRegion> = regions
        .into_iter()
        .filter(|r| {
            let start = r.base + ((r.bus_start as u64) << 20);
            let size = ((r.bus_end - r.bus_start) as u64 + 1) << 20;
            let checked = mmio::check_range(start, size, map);
            if let Err(e) = checked {
                error!(target: "pci", "ECAM of segment {:04x}: {e}; skipped", r.segment);
            }
            checked.is_ok()
        })
        .collect();
    if usable.is_empty() {
        info!(target: "pci", "enumerated 0 functions");
        return None;
    }
    // SAFETY: every region passed check_range: inside the identity map and holding no
    // RAM, so apply_cache_policy made it uncached; nothing else touches config space.
    let ecam = unsafe { Ecam::new(usable) };
    let table = enumerate(&ecam, ecam.regions());
    for d in table.iter() {
        info!(target: "pci", "{d}");
        for b in &d.bars {
            info!(target: "pci", "    {b}");
        }
    }
    info!(target: "pci", "enumerated {} functions", table.len());
    Some((ecam, table))
}
