//! The VT-d translation driver: [`VtdIommu`] implements [`sluice_iommu::Iommu`] on the
//! remapping units the DMAR describes.
//!
//! Why it is built the way it is:
//!
//! - **Default deny.** Each unit gets a fresh root table with no present entry before
//!   translation is enabled, so every requester id is blocked (fault reason 1 or 2) until
//!   [`Iommu::attach`] writes its context entry. Detach clears it again.
//! - **Capabilities decoded once.** VER/CAP/ECAP are read at construction into
//!   [`crate::regs`] types; table depth (CAP.SAGAW/MGAW), superpages (CAP.SLLPS), domain
//!   ids (CAP.ND), coherency (ECAP.C), invalidation interface (ECAP.QI), page-selective
//!   invalidation (CAP.PSI/MAMV), draining (CAP.DRD/DWD), write-buffer flushing
//!   (CAP.RWBF) and caching mode (CAP.CM) all come from there, never assumed.
//! - **Entries written present-bit last.** A root or context entry's other quadword is
//!   written first, then a barrier, then the quadword with P; clearing goes the other way.
//!   On a non-coherent unit (ECAP.C = 0, QEMU's) every written entry is flushed.
//! - **Nothing counts as done until the unit confirms it.** Invalidations end with an
//!   invalidation-wait whose status write is polled a bounded number of times; a unit that
//!   does not confirm (or reports a queue error) is marked failed and refuses all later
//!   work, because a late completion could be taken for a later one.
//! - **No reuse before invalidation.** Domain ids are returned to their unit's pool only
//!   after a domain-selective invalidation of that id completed; page-table pages an unmap
//!   unlinked are freed only after the commit's invalidation completed; memory a failed
//!   unit might still walk is leaked, never freed.
//! - **One batch per commit.** `map`/`unmap` only edit tables; `commit` sends the union of
//!   what changed as page-selective invalidations (or one domain-selective) and a single
//!   wait per unit. Maps need no invalidation unless the unit caches not-present entries
//!   (caching mode, as virtual IOMMUs do).
//!
//! # Domains and units
//!
//! A domain is one second-level table plus, per unit it has devices on, a domain id of
//! that unit. Its table format is fixed when it is created, so it is chosen for the whole
//! machine ([`DomainFormat`]): a depth every unit's SAGAW offers (the smallest one whose
//! width covers the smallest MGAW, else the deepest), the superpages every unit offers,
//! and flushing unless every unit is coherent. The aperture is
//! `[0, 2^min(table width, MGAW))`. Per unit, the same rule picks the unit's own preferred
//! depth (reported in [`UnitInfo`]); a unit whose SAGAW offers no 3-, 4- or 5-level
//! format, or whose CAP.ND is reserved, is refused (`Unsupported`). On QEMU 7.2 (SAGAW
//! 3-level, MGAW 39) that is 3 levels/39 bits; with `aw-bits=48` (SAGAW 3+4, MGAW 48),
//! 4 levels/48 bits.
//!
//! # Attach rules
//!
//! A requester id routes to at most one domain: attaching a device any of whose requester
//! ids is attached to another domain fails with `Busy` (VFIO: a group sits in one
//! container at a time; the caller detaches first). Requester ids shared by devices of one
//! domain (DMA aliases) are reference counted and cleared when the last device using them
//! detaches. Re-attaching a device to its own domain is a no-op. Devices named by an RMRR
//! get that range identity-mapped (read/write) in their domain while attached; the range
//! is then excluded from the domain's IOVA ranges and from user maps and unmaps.
//!
//! # Interrupt remapping
//!
//! Not part of bring-up: [`VtdIommu::enable_interrupt_remapping`] turns it on when every
//! unit offers it (ECAP.IR, and queued invalidation for the interrupt-entry cache). Each
//! unit gets an empty 256-entry table (xAPIC mode), so every remappable interrupt is
//! blocked, and compatibility format stays off (GSTS.CFIS clear), so un-remapped ones are
//! too. [`Iommu::map_msi`] then writes one aligned block of entries per device MSI
//! (present last, source-id validation naming the device's requester id) and invalidates
//! exactly those in the interrupt-entry cache; [`Iommu::unmap_msi`] clears them (P first),
//! invalidates, and only then frees them. See `driver/intremap.rs` for the entry layout.
//!
//! I/O APIC pins go the same way ([`Iommu::map_ioapic_pin`]): one entry per pin on the
//! unit whose DMAR scope lists the I/O APIC, source-id validation naming the I/O APIC's
//! requester id from that scope, the pin's trigger mode; the pin's redirection entry is
//! returned in remappable format. [`VtdIommu::new`] takes the I/O APICs from the DMAR;
//! with [`VtdIommu::with_units`], [`VtdIommu::add_io_apic`] names them.
//!
//! # Memory
//!
//! `VtdIommu` owns its [`DmaMemory`] (`M`, e.g. the kernel's frame-backed memory, or a
//! shared handle in tests) and one [`RegisterBlock`] per unit (`R`). No `unsafe`: the two
//! traits are the only way to the hardware.

mod entries;
mod explain;
mod faults;
mod ids;
pub mod intremap;
pub mod invalidation;
pub mod registers;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use sluice_iommu::domains::{
    Domain, DomainSet, FirmwareRegion, IdPool, RouteTable, iova_ranges, regions_of, requester_ids,
    unit_index,
};
use sluice_iommu::range::subtract;
use sluice_iommu::{
    Access, DeviceDma, DomainHandle, FaultRecord, IoApicPinRoute, Iommu, IommuError, IovaRange,
    RemappedMsi, UnitId, Vendor,
};
use sluice_pci::PciAddress;

use self::ids::DomainIds;
use self::intremap::{InterruptTable, Irte, Owner, SourceValidation};
use self::invalidation::{Invalidator, Queue, Target};
use self::registers::{fsts, gcmd};
use crate::hw::{DmaMemory, RegisterBlock};
use crate::pagetable::{PageSizes, VtdSecondLevel};
use crate::regs::{self, Capability, ExtendedCapability, TableFormat, Version};
use crate::topology::{DmarTopology, InterruptSourceKind, ResolvedRmrr};

pub use self::entries::{
    ContextEntry, DeviceTranslation, ENTRY_BYTES, RootEntry, TABLE_ENTRIES, WalkFault,
    translation_type,
};
pub use self::faults::{FaultStats, reason_text};
pub use self::invalidation::{Invalidation, UnitFailure, covering_block};

/// The interrupt window: never DMA-translated, never in an IOVA range.
pub use sluice_iommu::domains::INTERRUPT_WINDOW;

const PAGE: u64 = 4096;

/// Tunables. The budgets are iteration counts (the driver has no clock): generous by
/// default, small in tests that simulate a dead unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    /// Polls of an invalidation-wait status word before the unit is declared failed.
    pub invalidation_spin_budget: u64,
    /// Reads of a status register (GSTS, CCMD, IOTLB) before a command is declared
    /// unacknowledged.
    pub register_spin_budget: u64,
    /// Page-selective IOTLB invalidations per commit and unit before falling back to a
    /// single domain-selective one.
    pub max_page_selective: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            invalidation_spin_budget: 10_000_000,
            register_spin_budget: 10_000_000,
            max_page_selective: 16,
        }
    }
}

/// One unit to bring up: its id (DRHD order), PCI segment and register block.
#[derive(Debug)]
pub struct UnitSetup<R> {
    pub id: UnitId,
    pub segment: u16,
    pub registers: R,
}

/// A range devices must reach at its own address (an RMRR), with the functions it
/// applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRegion {
    pub segment: u16,
    /// First byte.
    pub base: u64,
    /// Last byte, inclusive.
    pub limit: u64,
    pub devices: Vec<PciAddress>,
}

impl IdentityRegion {
    /// From a resolved RMRR. A range that is not whole pages is widened to whole pages;
    /// an inverted one gives `None`.
    pub fn from_rmrr(rmrr: &ResolvedRmrr) -> Option<Self> {
        if rmrr.limit < rmrr.base {
            return None;
        }
        Some(Self {
            segment: rmrr.segment,
            base: rmrr.base & !(PAGE - 1),
            limit: rmrr.limit | (PAGE - 1),
            devices: rmrr.devices.clone(),
        })
    }
}

/// RMRRs are mapped read/write.
impl FirmwareRegion for IdentityRegion {
    fn segment(&self) -> u16 {
        self.segment
    }

    fn devices(&self) -> &[PciAddress] {
        &self.devices
    }

    fn identity(&self) -> (u64, u64, Access) {
        let size = self.limit - self.base + 1;
        (self.base, size, Access::READ | Access::WRITE)
    }
}

/// The table format of every domain (see the module docs).
pub use sluice_iommu::domains::DomainFormat;

/// What the driver knows about one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitInfo {
    pub id: UnitId,
    pub segment: u16,
    pub version: Version,
    pub cap: Capability,
    pub ecap: ExtendedCapability,
    /// The unit's own preferred table format (domains use [`DomainFormat`]).
    pub format: TableFormat,
    /// Queued (true) or register-based invalidation.
    pub queued_invalidation: bool,
    pub root_table: u64,
    /// Set once the unit failed to confirm something; it is never used again.
    pub failure: Option<UnitFailure>,
    pub faults: FaultStats,
    pub domain_ids_in_use: usize,
    /// Domain ids the unit has (CAP.ND, id 0 excluded).
    pub domain_ids_capacity: u32,
    /// The interrupt remapping table, once remapping is enabled.
    pub interrupt_table: Option<u64>,
    /// Interrupt remapping entries in use.
    pub interrupt_entries_in_use: u32,
}

struct Unit<R> {
    id: UnitId,
    segment: u16,
    regs: R,
    version: Version,
    cap: Capability,
    ecap: ExtendedCapability,
    format: TableFormat,
    ids: IdPool,
    root: u64,
    /// Context table per bus, allocated on first use, never freed.
    context_tables: BTreeMap<u8, u64>,
    invalidator: Invalidator,
    failure: Option<UnitFailure>,
    faults: FaultStats,
    /// Interrupt remapping, once enabled.
    irt: Option<InterruptTable>,
}

/// An I/O APIC whose interrupt messages a unit remaps (a DMAR device scope of type
/// IOAPIC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicSource {
    /// Its APIC id (the scope's enumeration id; the MADT's I/O APIC id).
    pub id: u8,
    /// The unit whose scope lists it.
    pub unit: UnitId,
    /// The requester id its messages carry (the scope's path resolved: QEMU `ff:00.0`).
    pub source_id: u16,
}

/// Intel VT-d behind the vendor-neutral [`Iommu`] interface. See the module docs.
pub struct VtdIommu<R: RegisterBlock, M: DmaMemory> {
    mem: M,
    config: DriverConfig,
    units: Vec<Unit<R>>,
    format: DomainFormat,
    identity_regions: Vec<IdentityRegion>,
    domains: DomainSet<VtdSecondLevel>,
    routes: RouteTable,
    caching_mode: bool,
    /// Every unit has interrupt remapping enabled ([`VtdIommu::enable_interrupt_remapping`]).
    interrupt_remapping: bool,
    /// The I/O APICs the units remap, in DMAR order.
    io_apics: Vec<IoApicSource>,
}

impl<R: RegisterBlock, M: DmaMemory> VtdIommu<R, M> {
    /// Brings up every unit of `topology`. `registers[i]` is the register block of
    /// `topology.vtd_units()[i]` (mapped over at least
    /// [`crate::regs::register_set_size`] bytes); the RMRRs become identity regions and
    /// the IOAPIC device scopes the I/O APICs [`Iommu::map_ioapic_pin`] knows.
    pub fn new(
        topology: &DmarTopology,
        registers: Vec<R>,
        mem: M,
        config: DriverConfig,
    ) -> Result<Self, IommuError> {
        let units = topology.vtd_units();
        if registers.len() != units.len() {
            let missing = units.len().min(registers.len());
            return Err(IommuError::Unsupported {
                unit: UnitId(missing as u16),
            });
        }
        let setups = units
            .iter()
            .zip(registers)
            .map(|(unit, registers)| UnitSetup {
                id: unit.id,
                segment: unit.segment(),
                registers,
            })
            .collect();
        let regions = topology
            .rmrrs()
            .iter()
            .filter_map(IdentityRegion::from_rmrr)
            .collect();
        let mut driver = Self::with_units(setups, regions, mem, config)?;
        for source in topology.interrupt_sources() {
            if source.kind != InterruptSourceKind::IoApic {
                continue;
            }
            if let Err(e) = driver.add_io_apic(source.unit, source.id, source.source_id) {
                log::warn!(
                    target: "vtd",
                    "DMAR: I/O APIC {} in dmar{}'s scope ignored: {e} (listed twice?)",
                    source.id,
                    source.unit.0
                );
            }
        }
        Ok(driver)
    }

    /// Brings up the given units. First every unit's VER/CAP/ECAP are read and checked
    /// (nothing written: a refused unit leaves the machine untouched); then each unit in
    /// turn gets its invalidation queue, an empty root table (default deny), global
    /// invalidations and translation enabled.
    ///
    /// Errors: `Unsupported` (no usable table depth, reserved ND), `HardwareTimeout` (a
    /// GCMD command not acknowledged), `InvalidationTimeout`, `NoMemory`. Units brought
    /// up before the failing one stay enabled and blocking (their memory is leaked: the
    /// hardware may still read it).
    pub fn with_units(
        setups: Vec<UnitSetup<R>>,
        identity_regions: Vec<IdentityRegion>,
        mut mem: M,
        config: DriverConfig,
    ) -> Result<Self, IommuError> {
        let mut units = Vec::with_capacity(setups.len());
        for setup in setups {
            let regs = setup.registers;
            let version = Version::decode(regs.read32(regs::offset::VER));
            let cap = Capability::decode(regs.read64(regs::offset::CAP));
            let ecap = ExtendedCapability::decode(regs.read64(regs::offset::ECAP));
            let unsupported = IommuError::Unsupported { unit: setup.id };
            let domains = cap.domains.ok_or(unsupported)?;
            let format = choose_format(usable_formats(&cap), cap.mgaw).ok_or(unsupported)?;
            units.push(Unit {
                id: setup.id,
                segment: setup.segment,
                regs,
                version,
                cap,
                ecap,
                format,
                ids: DomainIds::new(domains),
                root: 0,
                context_tables: BTreeMap::new(),
                invalidator: Invalidator::Registers,
                failure: None,
                faults: FaultStats::default(),
                irt: None,
            });
        }
        let format = domain_format(&units);
        for unit in &mut units {
            unit.bring_up(&mut mem, &config)?;
        }
        let caching_mode = units.iter().any(|unit| unit.cap.cm);
        Ok(Self {
            mem,
            config,
            units,
            format,
            identity_regions,
            domains: DomainSet::new(format),
            routes: RouteTable::new(),
            caching_mode,
            interrupt_remapping: false,
            io_apics: Vec::new(),
        })
    }

    /// Names an I/O APIC whose interrupts `unit` remaps: APIC id `id`, messages carrying
    /// requester id `source_id` (what a DMAR IOAPIC device scope says; [`Self::new`]
    /// calls this for each). `UnknownDevice` for an unknown unit, `Busy` when `id` is
    /// already named (the first naming stays).
    pub fn add_io_apic(&mut self, unit: UnitId, id: u8, source_id: u16) -> Result<(), IommuError> {
        unit_index(&self.units, unit).ok_or(IommuError::UnknownDevice)?;
        if self.io_apic(id).is_some() {
            return Err(IommuError::Busy);
        }
        self.io_apics.push(IoApicSource {
            id,
            unit,
            source_id,
        });
        Ok(())
    }

    /// The I/O APIC with APIC id `id`, if a unit remaps it.
    pub fn io_apic(&self, id: u8) -> Option<IoApicSource> {
        self.io_apics.iter().copied().find(|source| source.id == id)
    }

    /// The table format every domain uses.
    pub fn format(&self) -> DomainFormat {
        self.format
    }

    pub fn config(&self) -> DriverConfig {
        self.config
    }

    pub fn unit_ids(&self) -> impl Iterator<Item = UnitId> + '_ {
        self.units.iter().map(|unit| unit.id)
    }

    pub fn unit_info(&self, unit: UnitId) -> Option<UnitInfo> {
        let unit = self.units.iter().find(|u| u.id == unit)?;
        Some(UnitInfo {
            id: unit.id,
            segment: unit.segment,
            version: unit.version,
            cap: unit.cap,
            ecap: unit.ecap,
            format: unit.format,
            queued_invalidation: matches!(unit.invalidator, Invalidator::Queue(_)),
            root_table: unit.root,
            failure: unit.failure,
            faults: unit.faults,
            domain_ids_in_use: unit.ids.in_use(),
            domain_ids_capacity: unit.ids.capacity(),
            interrupt_table: unit.irt.as_ref().map(|t| t.base),
            interrupt_entries_in_use: unit.irt.as_ref().map_or(0, |t| t.in_use()),
        })
    }

    /// Whether `unit` failed and refuses work.
    pub fn unit_failed(&self, unit: UnitId) -> bool {
        self.units
            .iter()
            .any(|u| u.id == unit && u.failure.is_some())
    }

    /// The context entry of `requester_id` as the unit would read it from memory (the
    /// all-zero, not-present entry when the bus has no context table). `None` for an
    /// unknown unit.
    pub fn context_entry(&self, unit: UnitId, requester_id: u16) -> Option<ContextEntry> {
        let unit = self.units.iter().find(|u| u.id == unit)?;
        Some(ContextEntry::read(&self.mem, unit.root, requester_id))
    }

    /// Walks `unit`'s structures in memory for a DMA by `requester_id` at `iova`, as the
    /// hardware would (not the driver's bookkeeping). `None` for an unknown unit.
    pub fn walk(
        &self,
        unit: UnitId,
        requester_id: u16,
        iova: u64,
    ) -> Option<Result<DeviceTranslation, WalkFault>> {
        let unit = self.units.iter().find(|u| u.id == unit)?;
        Some(entries::walk(
            &self.mem,
            unit.root,
            unit.cap.mgaw,
            requester_id,
            iova,
        ))
    }

    sluice_iommu::domain_accessors!(M);

    /// Invalidates `unit`'s interrupt-entry cache: all of it (`None`) or the
    /// `2^mask` entries from `index`, and waits. For interrupt remapping, which shares
    /// the unit's invalidation queue. `Unsupported` without queued invalidation.
    pub fn invalidate_interrupt_entries(
        &mut self,
        unit: UnitId,
        entries: Option<(u16, u8)>,
    ) -> Result<(), IommuError> {
        let index = unit_index(&self.units, unit).ok_or(IommuError::UnknownDevice)?;
        let unit = &mut self.units[index];
        if !matches!(unit.invalidator, Invalidator::Queue(_)) {
            return Err(IommuError::Unsupported { unit: unit.id });
        }
        let command = match entries {
            None => Invalidation::InterruptEntriesGlobal,
            Some((index, mask)) => Invalidation::InterruptEntries { index, mask },
        };
        unit.run(&mut self.mem, &self.config, &[command], false)
    }

    /// Whether every unit offers interrupt remapping the way this driver uses it:
    /// ECAP.IR, and queued invalidation (the only way to invalidate the interrupt-entry
    /// cache). Nothing is written.
    pub fn interrupt_remapping_offered(&self) -> bool {
        !self.units.is_empty()
            && self
                .units
                .iter()
                .all(|unit| unit.ecap.ir && matches!(unit.invalidator, Invalidator::Queue(_)))
    }

    /// Enables interrupt remapping on every unit, when every unit offers it
    /// ([`Self::interrupt_remapping_offered`]); `Ok(false)` (nothing written) otherwise.
    /// Per unit: an empty table (every entry not present: every remappable interrupt is
    /// blocked until [`Iommu::map_msi`] writes its entry), IRTA (256 entries, xAPIC mode),
    /// SIRTP and wait for IRTPS, a global interrupt-entry-cache invalidation, then IRE
    /// (wait for IRES) with CFI left clear, so compatibility-format interrupts are blocked
    /// too. Calling it again once enabled does nothing.
    ///
    /// Errors: `HardwareTimeout` (a command not acknowledged), `InvalidationTimeout`,
    /// `NoMemory`; the failing unit is marked failed, units enabled before it stay
    /// enabled (blocking every interrupt) and remapping counts as not enabled.
    pub fn enable_interrupt_remapping(&mut self) -> Result<bool, IommuError> {
        if self.interrupt_remapping {
            return Ok(true);
        }
        if !self.interrupt_remapping_offered() {
            return Ok(false);
        }
        for unit in &mut self.units {
            if unit.failure.is_some() {
                return Err(IommuError::InvalidationTimeout { unit: unit.id });
            }
        }
        for unit in &mut self.units {
            unit.enable_interrupt_remapping(&mut self.mem, &self.config)?;
        }
        self.interrupt_remapping = true;
        Ok(true)
    }

    /// Entry `index` of `unit`'s interrupt remapping table, read from memory as the unit
    /// reads it. `None` for an unknown unit, a unit without remapping or an index beyond
    /// the table.
    pub fn interrupt_entry(&self, unit: UnitId, index: u32) -> Option<Irte> {
        let unit = self.units.iter().find(|u| u.id == unit)?;
        let table = unit.irt.as_ref()?;
        (index < intremap::IRT_ENTRIES).then(|| Irte::read(&self.mem, table.base, index))
    }

    fn aperture_end(&self) -> u64 {
        self.format.aperture_end()
    }

    /// Makes `handle`'s pending edits visible on every unit it has a domain id on, then
    /// frees the tables its unmaps retired. See [`Iommu::commit`].
    fn commit_domain(&mut self, handle: DomainHandle) -> Result<(), IommuError> {
        let config = &self.config;
        let units = &mut self.units;
        self.domains
            .commit(&mut self.mem, handle, units, |unit, mem, did, pending| {
                let ranges = pending.ranges(unit.cap.cm);
                let max = config.max_page_selective;
                let commands = invalidation::iotlb_for_ranges(&unit.cap, did, &ranges, max);
                let flush = pending.dirty && unit.cap.rwbf;
                if commands.is_empty() && !flush && unit.failure.is_none() {
                    return Ok(());
                }
                unit.run(mem, config, &commands, true)
            })
    }
}

impl<R: RegisterBlock> Unit<R> {
    /// Queue (when ECAP.QI), root table, SRTP, global invalidation, TE.
    ///
    /// Translation left enabled by firmware is not turned off first (that would let DMA
    /// through untranslated for a moment): the new root table replaces the old one and
    /// the global invalidations drop what was cached from it.
    fn bring_up(
        &mut self,
        mem: &mut dyn DmaMemory,
        config: &DriverConfig,
    ) -> Result<(), IommuError> {
        let timeout = IommuError::HardwareTimeout { unit: self.id };
        if self.ecap.qi {
            if self.regs.read32(registers::GSTS) & gcmd::QIE != 0 {
                // Queued invalidation left on (firmware, an earlier kernel): turn it off
                // to reprogram the queue (hardware requires an idle queue for that).
                self.command(config, gcmd::QIE, false)?;
            }
            let base = mem.alloc_zeroed(1, PAGE).ok_or(IommuError::NoMemory)?;
            let status = mem.alloc_zeroed(1, PAGE).ok_or(IommuError::NoMemory)?;
            self.regs.write64(registers::IQT, 0);
            // IQA: base | DW = 0 (128-bit descriptors) | QS = 0 (one page, 256 entries).
            self.regs.write64(registers::IQA, base);
            self.command(config, gcmd::QIE, true)?;
            self.invalidator = Invalidator::Queue(Queue {
                base,
                tail: 0,
                status,
                seq: 0,
            });
        }
        let root = mem.alloc_zeroed(1, PAGE).ok_or(IommuError::NoMemory)?;
        if !self.ecap.c {
            mem.flush(root, PAGE as usize);
        }
        mem.barrier();
        self.root = root;
        // RTADDR: root table address, TTM = 00 (legacy mode).
        self.regs.write64(registers::RTADDR, root);
        let value = registers::gcmd_value(&self.regs, gcmd::SRTP, true);
        self.regs.write32(registers::GCMD, value);
        if !registers::poll32(
            &self.regs,
            registers::GSTS,
            config.register_spin_budget,
            |s| s & gcmd::SRTP != 0,
        ) {
            self.failure = Some(UnitFailure::Command { bit: gcmd::SRTP });
            return Err(timeout);
        }
        self.run(
            mem,
            config,
            &[Invalidation::ContextGlobal, Invalidation::IotlbGlobal],
            true,
        )?;
        if self.regs.read32(registers::GSTS) & gcmd::TE == 0 {
            self.command(config, gcmd::TE, true)?;
        }
        log::info!(
            target: "vtd",
            "dmar{}: translation enabled, {}-level tables, {} invalidation, root table {:#x}",
            self.id.0,
            self.format.levels,
            if self.ecap.qi { "queued" } else { "register-based" },
            root
        );
        Ok(())
    }

    /// See [`VtdIommu::enable_interrupt_remapping`].
    fn enable_interrupt_remapping(
        &mut self,
        mem: &mut dyn DmaMemory,
        config: &DriverConfig,
    ) -> Result<(), IommuError> {
        if self.regs.read32(registers::GSTS) & gcmd::IRE != 0 {
            // Left on by firmware or an earlier kernel: off before the table changes.
            self.command(config, gcmd::IRE, false)?;
        }
        let table = mem.alloc_zeroed(1, PAGE).ok_or(IommuError::NoMemory)?;
        if !self.ecap.c {
            mem.flush(table, PAGE as usize);
        }
        mem.barrier();
        // IRTA: table | EIME = 0 (xAPIC) | S (2^(S+1) entries).
        self.regs
            .write64(registers::IRTA, table | intremap::IRTA_SIZE);
        let value = registers::gcmd_value(&self.regs, gcmd::SIRTP, true);
        self.regs.write32(registers::GCMD, value);
        if !registers::poll32(
            &self.regs,
            registers::GSTS,
            config.register_spin_budget,
            |s| s & gcmd::SIRTP != 0,
        ) {
            self.failure = Some(UnitFailure::Command { bit: gcmd::SIRTP });
            return Err(IommuError::HardwareTimeout { unit: self.id });
        }
        self.irt = Some(InterruptTable::new(table));
        self.run(mem, config, &[Invalidation::InterruptEntriesGlobal], true)?;
        if self.regs.read32(registers::GSTS) & gcmd::CFI != 0 {
            // Compatibility format must be blocked: it bypasses the table.
            self.command(config, gcmd::CFI, false)?;
        }
        self.command(config, gcmd::IRE, true)?;
        log::info!(
            target: "vtd",
            "dmar{}: interrupt remapping enabled: {}-entry table at {table:#x}, xAPIC mode, compatibility format blocked",
            self.id.0,
            intremap::IRT_ENTRIES
        );
        Ok(())
    }

    /// Writes IRTEs `first..first + entries.len()`: each high quadword, barrier, low
    /// quadword (P), flushed on a non-coherent unit; then invalidates them in the
    /// interrupt-entry cache and waits.
    fn write_interrupt_entries(
        &mut self,
        mem: &mut dyn DmaMemory,
        config: &DriverConfig,
        first: u32,
        entries: &[Irte],
    ) -> Result<(), IommuError> {
        let table = self.irt.as_ref().map_or(0, |t| t.base);
        for (i, entry) in entries.iter().enumerate() {
            let slot = table + (u64::from(first) + i as u64) * intremap::IRTE_BYTES;
            if entry.present() {
                self.write_pair(mem, slot, entry.hi, entry.lo);
            } else {
                mem.write_u64(slot, entry.lo);
                self.flush(mem, slot);
                mem.barrier();
                mem.write_u64(slot + 8, entry.hi);
                self.flush(mem, slot + 8);
                mem.barrier();
            }
        }
        let count = entries.len() as u32;
        let mask = count.next_power_of_two().trailing_zeros() as u8;
        let command = if mask <= self.ecap.mhmv && count.is_power_of_two() && first % count == 0 {
            Invalidation::InterruptEntries {
                index: first as u16,
                mask,
            }
        } else {
            Invalidation::InterruptEntriesGlobal
        };
        self.run(mem, config, &[command], true)
    }

    /// Sets or clears a persistent GCMD enable (keeping the others) and waits for GSTS.
    fn command(&mut self, config: &DriverConfig, bit: u32, on: bool) -> Result<(), IommuError> {
        let value = registers::gcmd_value(&self.regs, bit, on);
        self.regs.write32(registers::GCMD, value);
        if registers::poll32(
            &self.regs,
            registers::GSTS,
            config.register_spin_budget,
            |s| (s & bit != 0) == on,
        ) {
            Ok(())
        } else {
            self.failure = Some(UnitFailure::Command { bit });
            Err(IommuError::HardwareTimeout { unit: self.id })
        }
    }

    /// Runs `commands` (with a write-buffer flush first when `flush_writes` and
    /// CAP.RWBF) and waits for completion. Any failure marks the unit failed.
    fn run(
        &mut self,
        mem: &mut dyn DmaMemory,
        config: &DriverConfig,
        commands: &[Invalidation],
        flush_writes: bool,
    ) -> Result<(), IommuError> {
        if self.failure.is_some() {
            return Err(IommuError::InvalidationTimeout { unit: self.id });
        }
        let mut target = Target {
            regs: &mut self.regs,
            cap: &self.cap,
            ecap: &self.ecap,
            spin_budget: config.invalidation_spin_budget,
            register_budget: config.register_spin_budget,
        };
        let mut outcome = Ok(());
        if flush_writes {
            outcome = invalidation::flush_write_buffer(&mut target);
        }
        if outcome.is_ok() && !commands.is_empty() {
            outcome = match &mut self.invalidator {
                Invalidator::Queue(queue) => queue.run(&mut target, mem, commands),
                Invalidator::Registers => invalidation::run_registers(&mut target, commands),
            };
        }
        outcome.map_err(|failure| {
            log::error!(
                target: "vtd",
                "dmar{}: {failure:?}; the unit is no longer trusted",
                self.id.0
            );
            self.failure = Some(failure);
            match failure {
                UnitFailure::Command { .. } => IommuError::HardwareTimeout { unit: self.id },
                _ => IommuError::InvalidationTimeout { unit: self.id },
            }
        })
    }

    /// Writes the context entry of `rid` (allocating the bus's context table and linking
    /// it from the root table on first use): other quadword first, P last.
    fn write_context(
        &mut self,
        mem: &mut dyn DmaMemory,
        rid: u16,
        entry: ContextEntry,
    ) -> Result<(), IommuError> {
        let bus = (rid >> 8) as u8;
        let table = match self.context_tables.get(&bus) {
            Some(&table) => table,
            None => {
                let table = mem.alloc_zeroed(1, PAGE).ok_or(IommuError::NoMemory)?;
                if !self.ecap.c {
                    mem.flush(table, PAGE as usize);
                }
                mem.barrier();
                let slot = self.root + u64::from(bus) * ENTRY_BYTES;
                self.write_pair(mem, slot, 0, table | 1);
                self.context_tables.insert(bus, table);
                table
            }
        };
        let slot = table + u64::from(rid & 0xff) * ENTRY_BYTES;
        self.write_pair(mem, slot, entry.hi, entry.lo);
        Ok(())
    }

    /// Clears the context entry of `rid`: P first, then the rest.
    fn clear_context(&mut self, mem: &mut dyn DmaMemory, rid: u16) {
        let Some(&table) = self.context_tables.get(&((rid >> 8) as u8)) else {
            return;
        };
        let slot = table + u64::from(rid & 0xff) * ENTRY_BYTES;
        mem.write_u64(slot, 0);
        self.flush(mem, slot);
        mem.barrier();
        mem.write_u64(slot + 8, 0);
        self.flush(mem, slot + 8);
        mem.barrier();
    }

    /// Writes a 128-bit entry at `slot`: `hi` (no present bit), barrier, `lo` (P).
    fn write_pair(&self, mem: &mut dyn DmaMemory, slot: u64, hi: u64, lo: u64) {
        mem.write_u64(slot + 8, hi);
        self.flush(mem, slot + 8);
        mem.barrier();
        mem.write_u64(slot, lo);
        self.flush(mem, slot);
        mem.barrier();
    }

    fn flush(&self, mem: &mut dyn DmaMemory, at: u64) {
        if !self.ecap.c {
            mem.flush(at, 8);
        }
    }

    /// Reads and clears at most NFR fault records (from FSTS.FRI round the ring), and
    /// the overflow flag.
    fn take_faults(&mut self, out: &mut Vec<FaultRecord>) {
        let status = self.regs.read32(registers::FSTS);
        if status & (fsts::PPF | fsts::PFO) == 0 {
            return;
        }
        let records = usize::from(self.cap.nfr);
        let first = ((status >> fsts::FRI_SHIFT) & 0xff) as usize % records;
        for step in 0..records {
            let offset = usize::from(self.cap.fro) + 16 * ((first + step) % records);
            let hi = self.regs.read64(offset + 8);
            if hi >> 63 == 0 {
                continue;
            }
            let lo = self.regs.read64(offset);
            // Clear F (write 1 to bit 127, as the record's last dword).
            self.regs.write32(offset + 12, faults::F_DWORD);
            if let Some(record) = faults::decode(self.id, lo, hi) {
                out.push(record);
                self.faults.records += 1;
            }
        }
        if status & fsts::PFO != 0 {
            self.faults.overflows += 1;
        }
        // PFO is write-1-to-clear; PPF is read-only (it follows the F bits).
        self.regs
            .write32(registers::FSTS, status & (fsts::PFO | fsts::PPF));
    }
}

sluice_iommu::domain_unit!(Unit<R>, id, ids);

/// The aperture (`[0, aperture_end)`) minus the interrupt window and `domain`'s identity
/// regions, as sorted `[start, end)` pieces.
fn usable(domain: &Domain<VtdSecondLevel>, aperture_end: u64) -> Vec<(u64, u64)> {
    let mut reserved = domain.identity_ranges();
    reserved.push((INTERRUPT_WINDOW.start, INTERRUPT_WINDOW.last + 1));
    subtract((0, aperture_end), &reserved)
}

/// Table formats a unit can use: SAGAW's 3-, 4- and 5-level formats (2- and 6-level
/// are reserved), shallowest first.
fn usable_formats(cap: &Capability) -> Vec<TableFormat> {
    cap.table_formats()
        .filter(|format| (3..=5).contains(&format.levels))
        .collect()
}

/// The smallest format whose width covers `mgaw`; if none does, the deepest.
fn choose_format(formats: Vec<TableFormat>, mgaw: u8) -> Option<TableFormat> {
    formats
        .iter()
        .copied()
        .find(|format| format.address_width >= mgaw)
        .or_else(|| formats.last().copied())
}

/// The format of every domain: see the module docs. Without a depth common to all units,
/// the first unit's choice (attaching to a unit that lacks it fails with `Unsupported`).
fn domain_format<R>(units: &[Unit<R>]) -> DomainFormat {
    let Some(first) = units.first() else {
        return DomainFormat {
            levels: 3,
            address_width: 39,
            page_sizes: PageSizes::SIZE_4K,
            coherent: false,
        };
    };
    let common: Vec<TableFormat> = usable_formats(&first.cap)
        .into_iter()
        .filter(|format| {
            units
                .iter()
                .all(|unit| unit.cap.supports_levels(format.levels))
        })
        .collect();
    let mgaw = units.iter().map(|unit| unit.cap.mgaw).min().unwrap_or(39);
    let table = choose_format(common, mgaw).unwrap_or(first.format);
    let page_sizes = units.iter().fold(PageSizes::all(), |sizes, unit| {
        sizes & PageSizes::from(unit.cap.sllps)
    });
    DomainFormat {
        levels: table.levels,
        address_width: table.address_width.min(mgaw),
        page_sizes,
        coherent: units.iter().all(|unit| unit.ecap.c),
    }
}

impl<R: RegisterBlock, M: DmaMemory> Iommu for VtdIommu<R, M> {
    sluice_iommu::domain_methods!();

    fn vendor(&self) -> Vendor {
        Vendor::IntelVtd
    }

    /// Requires no device attached (`Busy`). On every unit the domain had an id on: a
    /// domain-selective context-cache and IOTLB invalidation, then the id goes back to
    /// the pool. When a unit fails to confirm, the domain is gone all the same but its
    /// id and tables are leaked (that unit may still use them) and the error returned.
    fn destroy_domain(&mut self, handle: DomainHandle) -> Result<(), IommuError> {
        let config = &self.config;
        let units = &mut self.units;
        self.domains
            .destroy(&mut self.mem, handle, units, |unit, mem, did| {
                let commands = [
                    Invalidation::ContextDomain { did },
                    Invalidation::IotlbDomain { did },
                ];
                unit.run(mem, config, &commands, true)
            })
    }

    fn iova_ranges(&self, domain: DomainHandle) -> Result<Vec<IovaRange>, IommuError> {
        let domain = self.domains.get(domain)?;
        Ok(iova_ranges(usable(domain, self.aperture_end())))
    }

    /// Errors in order: `UnknownDomain`, `Misaligned`, `Wraps`, `OutOfRange` (not inside
    /// one usable range: beyond the aperture, the interrupt window, an RMRR identity
    /// region), then the table's `NoAccess`, `Overlap`, `NoMemory`.
    fn map(
        &mut self,
        handle: DomainHandle,
        iova: u64,
        paddr: u64,
        size: u64,
        access: Access,
    ) -> Result<(), IommuError> {
        let aperture_end = self.aperture_end();
        let usable = |domain: &Domain<VtdSecondLevel>| usable(domain, aperture_end);
        let (args, record) = ((iova, paddr, size), self.caching_mode);
        self.domains
            .map_checked(&mut self.mem, handle, args, access, usable, record)
    }

    /// One batch per unit the domain has an id on: the union of ranges unmapped since
    /// the last commit (plus, on caching-mode units, the ranges mapped) as page-selective
    /// IOTLB invalidations, or one domain-selective; a write-buffer flush first on RWBF
    /// units; one invalidation wait. Tables retired by unmaps are freed only when every
    /// unit confirmed. Units failing are reported (the first error), the others still
    /// committed; a domain on a failed unit never commits successfully again, even with
    /// nothing pending (what that unit caches is unknown).
    fn commit(&mut self, handle: DomainHandle) -> Result<(), IommuError> {
        self.commit_domain(handle)
    }

    /// Writes a context entry (DID, table, AW; TT = 0) for every requester id of `device`
    /// on its unit, identity-maps the RMRRs naming it, then invalidates the unit's context
    /// cache for those source ids (device-selective; domain id 0 under caching mode,
    /// where not-present entries are cached under it) and the domain's IOTLB, and waits.
    /// Edits of the domain still pending are committed as well (on all its units).
    ///
    /// Errors: `UnknownDomain`; `UnknownDevice` (unknown unit, no requester id);
    /// `Busy` (device or a requester id attached to another domain);
    /// `Unsupported` (the unit cannot walk the domain's table format); `NoDomainId`;
    /// `NoMemory`; RMRR mapping errors (`Overlap` with a user mapping, `OutOfRange`);
    /// `InvalidationTimeout` (the entries were written but are unconfirmed: the device
    /// counts as attached and must be detached or the unit abandoned).
    fn attach(&mut self, handle: DomainHandle, device: &DeviceDma) -> Result<(), IommuError> {
        let index = self.domains.attach_unit(handle, device.unit, &self.units)?;
        let rids = requester_ids(device, [])?;
        if self
            .domains
            .check_attach(handle, device, &rids, &self.routes)?
        {
            return self.commit_domain(handle);
        }
        let unit = &self.units[index];
        if unit.failure.is_some() {
            return Err(IommuError::InvalidationTimeout { unit: unit.id });
        }
        if !unit.cap.supports_levels(self.format.levels) {
            return Err(IommuError::Unsupported { unit: unit.id });
        }

        // RMRR identity maps first (nothing points at them yet if they are new), then a
        // domain id on this unit.
        let regions = regions_of(&self.identity_regions, unit.segment, device.device);
        let record = self.caching_mode;
        let unit = &mut self.units[index];
        let did = self
            .domains
            .prepare_attach(&mut self.mem, handle, unit, &regions, record)?;
        let domain = self.domains.get_mut(handle)?;

        // Context entries for requester ids not yet routed.
        let entry = ContextEntry::new(domain.table.root(), domain.table.levels(), did);
        let fresh = self.routes.unrouted(unit.id, &rids);
        for (written, &rid) in fresh.iter().enumerate() {
            if let Err(error) = unit.write_context(&mut self.mem, rid, entry) {
                for &undo in &fresh[..written] {
                    unit.clear_context(&mut self.mem, undo);
                }
                domain.remove_identity(&mut self.mem, &regions);
                return Err(error);
            }
        }
        self.domains
            .finish_attach(handle, device, rids, &mut self.routes)?;

        let context_did = if unit.cap.cm { 0 } else { did };
        let mut commands: Vec<Invalidation> = fresh
            .iter()
            .map(|&sid| Invalidation::ContextDevice {
                did: context_did,
                sid,
                fm: 0,
            })
            .collect();
        commands.push(Invalidation::IotlbDomain { did });
        unit.run(&mut self.mem, &self.config, &commands, true)?;
        // Whatever else is pending in the domain (new identity maps under caching mode,
        // the caller's uncommitted edits) becomes visible on all its units too.
        self.commit_domain(handle)
    }

    /// Clears the context entries of `device`'s requester ids no other attached device
    /// of the domain uses (P first), removes RMRR identity maps no attached device needs
    /// any more, invalidates the unit's context cache for those source ids
    /// (device-selective, with the domain's id) and the domain's IOTLB, and waits. Edits
    /// of the domain still pending are committed as well (on all its units).
    ///
    /// Errors: `UnknownDomain`; `UnknownDevice` (not attached to this domain);
    /// `InvalidationTimeout` (entries cleared in memory, unconfirmed: the unit is failed).
    fn detach(&mut self, handle: DomainHandle, device: &DeviceDma) -> Result<(), IommuError> {
        let detached = self
            .domains
            .detach(handle, device.device, &mut self.routes, &self.units)?;
        let (did, cleared) = (detached.did, &detached.cleared);
        let unit = &mut self.units[detached.index];
        for &rid in cleared {
            unit.clear_context(&mut self.mem, rid);
        }

        let regions = regions_of(&self.identity_regions, unit.segment, device.device);
        let mut commands: Vec<Invalidation> = cleared
            .iter()
            .map(|&sid| Invalidation::ContextDevice { did, sid, fm: 0 })
            .collect();
        commands.push(Invalidation::IotlbDomain { did });
        let result = unit.run(&mut self.mem, &self.config, &commands, true);
        self.domains
            .get_mut(handle)?
            .remove_identity(&mut self.mem, &regions);
        let committed = self.commit_domain(handle);
        result.and(committed)
    }

    /// Reads and clears every unit's fault records: at most CAP.NFR records per unit
    /// and call, so a fault storm cannot stall the caller. Overflows (FSTS.PFO: faults
    /// the unit dropped) are counted in [`UnitInfo::faults`].
    fn take_faults(&mut self) -> Vec<FaultRecord> {
        let mut records = Vec::new();
        for unit in &mut self.units {
            unit.take_faults(&mut records);
        }
        records
    }

    /// True once [`VtdIommu::enable_interrupt_remapping`] enabled it on every unit.
    fn interrupt_remapping(&self) -> bool {
        self.interrupt_remapping
    }

    /// Takes an aligned block of `count` free IRTEs on `device.unit`, writes each
    /// (present last): fixed delivery of `first_vector + i` to `dest_apic_id`, physical,
    /// edge, source-id validation admitting only `device`'s requester ids (SVT = 01 with
    /// its own id; a bus range when it has aliases), invalidates them in the
    /// interrupt-entry cache (index-selective) and waits. The message: remappable format,
    /// SHV, the block's first handle; data 0 (the device adds the subindex).
    ///
    /// Errors: `Unsupported` (remapping off, `count` not a power of two in 1..=32, vectors
    /// past 255, an APIC id above 255: xAPIC mode), `UnknownDevice` (unknown unit, no
    /// requester id), `NoMemory` (no free block), `InvalidationTimeout` (entries written,
    /// unconfirmed: they stay reserved and the unit is failed).
    fn map_msi(
        &mut self,
        device: &DeviceDma,
        first_vector: u8,
        count: u32,
        dest_apic_id: u32,
    ) -> Result<RemappedMsi, IommuError> {
        let unsupported = IommuError::Unsupported { unit: device.unit };
        if !self.interrupt_remapping {
            return Err(unsupported);
        }
        let index = unit_index(&self.units, device.unit).ok_or(IommuError::UnknownDevice)?;
        let apic_id =
            sluice_iommu::check_msi_block(device.unit, first_vector, count, dest_apic_id)?;
        let source = SourceValidation::for_requester_ids(&device.requester_ids)
            .ok_or(IommuError::UnknownDevice)?;
        let unit = &mut self.units[index];
        if unit.failure.is_some() {
            return Err(IommuError::InvalidationTimeout { unit: unit.id });
        }
        let table = unit.irt.as_mut().ok_or(unsupported)?;
        let first = table
            .alloc(count, device.device)
            .ok_or(IommuError::NoMemory)?;
        let entries: Vec<Irte> = (0..count)
            .map(|i| Irte::remapped(first_vector + i as u8, apic_id, source))
            .collect();
        unit.write_interrupt_entries(&mut self.mem, &self.config, first, &entries)?;
        Ok(RemappedMsi {
            unit: unit.id,
            first,
            count,
            address: u64::from(intremap::msi_address(first as u16)),
            data: 0,
        })
    }

    /// Clears the block's IRTEs (P first), invalidates them in the interrupt-entry cache
    /// and waits; the entries are free again only once the unit confirmed.
    ///
    /// Errors: `Unsupported` (remapping off), `UnknownDevice` (not a block `map_msi`
    /// gave `device` on its unit), `InvalidationTimeout` (cleared, unconfirmed: the
    /// entries are never reused).
    fn unmap_msi(&mut self, device: &DeviceDma, msi: &RemappedMsi) -> Result<(), IommuError> {
        if !self.interrupt_remapping {
            return Err(IommuError::Unsupported { unit: device.unit });
        }
        if msi.unit != device.unit {
            return Err(IommuError::UnknownDevice);
        }
        let index = unit_index(&self.units, device.unit).ok_or(IommuError::UnknownDevice)?;
        let unit = &mut self.units[index];
        let owned = unit
            .irt
            .as_ref()
            .is_some_and(|t| t.owns(msi.first, msi.count, device.device));
        if !owned {
            return Err(IommuError::UnknownDevice);
        }
        let cleared = alloc::vec![Irte::default(); msi.count as usize];
        let result = unit.write_interrupt_entries(&mut self.mem, &self.config, msi.first, &cleared);
        if let Some(table) = unit.irt.as_mut() {
            if result.is_ok() {
                table.free(msi.first);
            } else {
                table.leak(msi.first);
            }
        }
        result
    }

    /// With interrupt remapping off: the compatibility-format entry (the I/O APIC's
    /// messages pass untranslated). With it on: a free IRTE on the unit whose DMAR scope
    /// lists I/O APIC `ioapic_id`, written present last — fixed delivery of `vector` to
    /// `dest_apic_id`, physical, TM = `level_triggered`, SVT = 01 / SQ = 00 with the I/O
    /// APIC's requester id — then invalidated in the interrupt-entry cache
    /// (index-selective) with a wait. The route's entry is the remappable-format
    /// redirection entry naming it, its vector field the IRTE's vector (see
    /// `driver/intremap.rs`). `pin` only identifies the route: one per pin.
    ///
    /// Errors: `UnknownDevice` (no unit remaps that I/O APIC), `Unsupported` (an APIC id
    /// above 255), `Busy` (the pin already has an entry), `NoMemory` (table full),
    /// `InvalidationTimeout` (the unit failed: the entry, written but unconfirmed, is
    /// never reused).
    fn map_ioapic_pin(
        &mut self,
        ioapic_id: u8,
        pin: u8,
        vector: u8,
        dest_apic_id: u32,
        level_triggered: bool,
        active_low: bool,
    ) -> Result<IoApicPinRoute, IommuError> {
        if !self.interrupt_remapping {
            let first = self.units.first().map_or(UnitId(0), |unit| unit.id);
            return IoApicPinRoute::compatibility(
                vector,
                dest_apic_id,
                level_triggered,
                active_low,
            )
            .ok_or(IommuError::Unsupported { unit: first });
        }
        let source = self.io_apic(ioapic_id).ok_or(IommuError::UnknownDevice)?;
        let index = unit_index(&self.units, source.unit).ok_or(IommuError::UnknownDevice)?;
        let unsupported = IommuError::Unsupported { unit: source.unit };
        let apic_id = u8::try_from(dest_apic_id).map_err(|_| unsupported)?;
        let unit = &mut self.units[index];
        if unit.failure.is_some() {
            return Err(IommuError::InvalidationTimeout { unit: unit.id });
        }
        let owner = Owner::IoApicPin { ioapic_id, pin };
        let table = unit.irt.as_mut().ok_or(unsupported)?;
        if table.block_of(owner).is_some() {
            return Err(IommuError::Busy);
        }
        let handle = table.alloc(1, owner).ok_or(IommuError::NoMemory)?;
        let entry = Irte::remapped(
            vector,
            apic_id,
            SourceValidation::RequesterId(source.source_id),
        )
        .with_trigger(level_triggered);
        if let Err(error) =
            unit.write_interrupt_entries(&mut self.mem, &self.config, handle, &[entry])
        {
            if let Some(table) = unit.irt.as_mut() {
                table.leak(handle);
            }
            return Err(error);
        }
        Ok(IoApicPinRoute {
            unit: Some(unit.id),
            index: Some(handle),
            rte: intremap::ioapic_rte(handle as u16, vector, level_triggered, active_low),
        })
    }

    /// A compatibility-format route holds nothing: `Ok`. Otherwise the pin's IRTE is
    /// cleared (P first), invalidated in the interrupt-entry cache with a wait, and freed
    /// once the unit confirmed. Mask the pin before: from here on its messages fault.
    ///
    /// Errors: `UnknownDevice` (not an entry `map_ioapic_pin` handed out), `Unsupported`
    /// (remapping off), `InvalidationTimeout` (cleared, unconfirmed: never reused).
    fn unmap_ioapic_pin(&mut self, route: &IoApicPinRoute) -> Result<(), IommuError> {
        let (unit, handle) = match (route.unit, route.index) {
            (None, None) => return Ok(()),
            (Some(unit), Some(handle)) => (unit, handle),
            _ => return Err(IommuError::UnknownDevice),
        };
        if !self.interrupt_remapping {
            return Err(IommuError::Unsupported { unit });
        }
        let index = unit_index(&self.units, unit).ok_or(IommuError::UnknownDevice)?;
        let unit = &mut self.units[index];
        let pin_entry = unit.irt.as_ref().and_then(|table| table.block(handle));
        if !matches!(pin_entry, Some((1, Owner::IoApicPin { .. }))) {
            return Err(IommuError::UnknownDevice);
        }
        let result =
            unit.write_interrupt_entries(&mut self.mem, &self.config, handle, &[Irte::default()]);
        if let Some(table) = unit.irt.as_mut() {
            if result.is_ok() {
                table.free(handle);
            } else {
                table.leak(handle);
            }
        }
        result
    }

    /// ECAP.C (page-walk coherency) of the unit, as read at bring-up.
    fn dma_coherent(&self, unit: UnitId) -> Option<bool> {
        self.units.iter().find(|u| u.id == unit).map(|u| u.ecap.c)
    }

    /// Reads, for each requester id of `device` (own first, then aliases), its root and
    /// context entries from `device.unit`'s tables, then the second-level entries the
    /// unit reads for `iova`, down to the leaf or the level where the walk stops; one
    /// line each (at most 10 per requester id, 8 requester ids), with the fault reason
    /// the unit would record. Memory as the unit reads it: the driver's bookkeeping only
    /// annotates. One line for an unknown domain or unit. See `driver/explain.rs`.
    fn explain(&self, domain: DomainHandle, device: &DeviceDma, iova: u64) -> Vec<String> {
        self.explain_dma(domain, device, iova)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_pieces() {
        assert_eq!(
            subtract((0, 100), &[(10, 20), (15, 30), (90, 200)]),
            [(0, 10), (30, 90)]
        );
        assert_eq!(subtract((0, 100), &[]), [(0, 100)]);
        assert_eq!(subtract((0, 100), &[(0, 100)]), []);
    }

    #[test]
    fn format_choice() {
        let three = TableFormat {
            levels: 3,
            address_width: 39,
        };
        let four = TableFormat {
            levels: 4,
            address_width: 48,
        };
        assert_eq!(choose_format(alloc::vec![three], 39), Some(three));
        assert_eq!(choose_format(alloc::vec![three, four], 48), Some(four));
        assert_eq!(choose_format(alloc::vec![three, four], 39), Some(three));
        // Nothing covers MGAW: the deepest (the aperture is the table's width).
        assert_eq!(choose_format(alloc::vec![three], 48), Some(three));
        // Wider than MGAW only: usable, the aperture is MGAW.
        assert_eq!(choose_format(alloc::vec![four], 39), Some(four));
        assert_eq!(choose_format(alloc::vec![], 39), None);
    }
}
