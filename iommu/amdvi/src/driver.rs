//! The AMD-Vi translation driver: [`AmdViIommu`] implements [`sluice_iommu::Iommu`] on
//! the IOMMUs the IVRS describes.
//!
//! Why it is built the way it is (the VT-d driver, `sluice_vtd::driver`, follows the same
//! rules; what differs is the hardware):
//!
//! - **Default deny, for every requester id.** Each unit gets a full device table: 65536
//!   entries × 32 bytes = 2 MiB, contiguous, 4 KiB aligned. Linux sizes it for the
//!   highest id the IVRS names, but a smaller table leaves ids beyond it to whatever the
//!   hardware does with them (QEMU does not check the size at all and reads the memory
//!   after the table as device table entries, where a zero entry, V = 0, means
//!   *untranslated* DMA), and ids inside it but not covered by the IVRS with V = 0 would
//!   be untranslated too. So every entry is written, covered or not, as *blocked* (below)
//!   before the unit is enabled; the IVRS DTE settings of covered ids are applied as
//!   Linux applies them.
//! - **Blocked = translation on, nothing mapped.** V = 1, TV = 1, Mode = the domain depth,
//!   the page-table root pointing at a zeroed page the unit owns and never writes, IR =
//!   IW = 0, DomainID 0. Linux blocks with V = 1, TV = 1, Mode = 0, IR = IW = 0, which
//!   the specification defines as "translation disabled, access controlled by IR and IW"
//!   and QEMU implements as such (`amdvi_page_walk`: Mode 0 → `no_remap` with the DTE's
//!   permissions, none). We do not rely on that: with Mode = 0 the only thing standing
//!   between the device and all of memory is the IR/IW check of the untranslated path,
//!   and at least one emulator (OpenVMM's AMD IOMMU) passes Mode = 0 requests through
//!   without looking at IR/IW. With a real walk over an empty root, the DTE's IR/IW deny
//!   the request first (QEMU: `amdvi_page_walk` logs an IO_PAGE_FAULT when the DTE lacks
//!   the permission), and a walker that ignored them still finds no present entry.
//!   Erratum 63 (IVRS SysMgt = 01b forces IW = 1) therefore opens nothing either.
//! - **Entries written valid-last, through a blocking step.** A device table entry is
//!   256 bits but memory is written 64 bits at a time, and the hardware must never see a
//!   new DomainID with an old root (it would cache the old domain's translations under the
//!   new tag). So an entry that changes goes: quadword 0 to the blocking value, barrier,
//!   quadwords 1–3, barrier, quadword 0 with its final value, barrier; each state in
//!   between denies everything. Lines are flushed unless the IVHD says the unit is
//!   coherent (QEMU's does not: its flags byte lacks bit 5; flushing is cheap there).
//!   Control.Coherent is set regardless, as Linux does.
//! - **Nothing counts as done until the unit confirms it.** Every batch of commands ends
//!   with COMPLETION_WAIT storing a new 64-bit sequence number into a status word; it is
//!   polled a bounded number of times. A unit that does not confirm, stops fetching
//!   commands, or leaves the ring full is marked failed and refuses all later work: a late
//!   completion must never be taken for a later one.
//! - **No reuse before invalidation.** Domain ids return to their unit's pool only after
//!   an INVALIDATE_IOMMU_PAGES of all of the id's pages completed; page-table pages an
//!   unmap unlinked are freed only after the commit's invalidation completed; memory a
//!   failed unit might still read is leaked, never freed.
//! - **One batch per commit.** `map`/`unmap` only edit tables; `commit` sends one
//!   INVALIDATE_IOMMU_PAGES per range unmapped since the last commit (PDE set when tables
//!   were unlinked), or one for all pages of the domain past
//!   [`DriverConfig::max_page_selective`], and a single COMPLETION_WAIT per unit. Maps
//!   need no invalidation (AMD IOMMUs do not cache non-present entries) unless the
//!   IOMMU capability header's NpCache bit is set ([`DriverConfig::not_present_cached`]).
//!
//! # Bring-up
//!
//! First every unit's EFR is read and decoded once (HATS must allow the domain depth;
//! nothing is written before all units passed). Then for each unit, in
//! [`IvrsTopology::amd_units`] order: all its memory is allocated (device table, blocking
//! root, command buffer and event log of 256 entries each, completion-wait word; a unit
//! that cannot get it is left untouched) and every device table entry written blocked;
//! a previous owner's enables are cleared (Linux's `iommu_disable`: translation left on
//! by firmware or an earlier kernel is turned off while the unit is reprogrammed, because
//! the base registers may not change while it runs); stale Status bits are cleared (QEMU
//! 10.1+ ignores an event-log base write while EventLogInt is set); the exclusion range
//! is disabled (unless EFR.SNPSup, where those registers hold the completion-wait
//! write-back range); the device table, command buffer and event log bases are
//! programmed with head = tail = 0; Control is set from the IVHD flags (HtTunEn, PassPW,
//! ResPassPW, Isoc) plus Coherent, interrupts off (the driver polls); then CmdBufEn,
//! EventLogEn and IommuEn, in that order; Status.CmdBufRun and EventLogRun are awaited;
//! finally INVALIDATE_IOMMU_ALL (or, without EFR.IASup, INVALIDATE_DEVTAB_ENTRY for
//! every id and INVALIDATE_IOMMU_PAGES for every domain id, as Linux does) and a
//! COMPLETION_WAIT. Commands are only processed while IommuEn is set (QEMU:
//! `cmdbuf_enabled = enabled && CmdBufEn`), which is why the global invalidation comes
//! after the enable.
//!
//! # Domains
//!
//! A domain is one AMD v1 host page table ([`IoPageTableV1`]) plus, per unit it has
//! devices on, a domain id of that unit. Its depth is the smallest that covers the IOVA
//! width, `min(48, IVinfo.VAsize when stated)` bits: 4 levels on every IOMMU (HATS allows
//! at least 4). 2 MiB and 1 GiB leaves are used where aligned. The usable IOVA ranges are
//! `[0, 2^48)` minus the interrupt window `0xFEE0_0000..=0xFEEF_FFFF`, the HyperTransport
//! reserved range `0xFD_0000_0000..=0xFF_FFFF_FFFF` (Linux reserves it on every AMD
//! IOMMU) and every IVMD range (page-widened).
//!
//! Domain ids skip those with bit 8 set by default (see [`DriverConfig::skip_domain_id_bit8`]:
//! QEMU up to 10.0 rejects them).
//!
//! # Attach rules
//!
//! As for VT-d: a requester id routes to at most one domain (`Busy` otherwise); ids shared
//! by devices of one domain are reference counted. The ids written are the device's
//! [`DeviceDma::requester_ids`] plus, for each of them, the alias the IVRS names for it
//! (alias entries 42h/43h): the alias's entry mirrors the device's. Devices named by an
//! IVMD with the unity or exclusion flag get that range identity-mapped (with the IVMD's
//! permissions; read/write for exclusion ranges, as Linux does) while attached.
//!
//! # Events
//!
//! [`AmdViIommu::take_events`] drains each unit's event log (bounded per call), keeps
//! counters and the last few raw entries per unit, restarts logging after an overflow;
//! [`Iommu::take_faults`] builds on it. See [`events`] for the format and QEMU's
//! deviations (no events at all up to QEMU 10.0; bus-less device ids).
//!
//! # Interrupt remapping
//!
//! Not part of bring-up: [`AmdViIommu::enable_interrupt_remapping`] turns it on when the
//! firmware says the units remap interrupts (the IVRS names an IOAPIC; see
//! [`intremap`]). From then on every device attached gets its own interrupt remapping
//! table (256 legacy entries, all empty) shared by its requester ids and their IVRS
//! aliases, and its DTE IV = 1, IntCtl = 10b, IntTabLen = 8, IntTabRootPtr: every MSI
//! it sends is blocked until [`Iommu::map_msi`] writes entries (one aligned block per
//! MSI; the MSI data is the index, the address 0xFEE0_0000) and sends
//! INVALIDATE_INTERRUPT_TABLE for each of those ids plus COMPLETION_WAIT.
//! [`Iommu::unmap_msi`] clears the entries, invalidates, and only then frees them. The
//! table stays with the ids (detached entries keep it: the device stays blocked).
//! Devices never attached, the IOAPIC and the HPET keep IV = 0 (interrupts forwarded
//! unremapped) as before.
//!
//! I/O APIC pins therefore get compatibility-format redirection entries
//! ([`Iommu::map_ioapic_pin`]), remapping on or not: only the hypervisor programs the I/O
//! APIC, so no guest can make it send an interrupt the hypervisor did not route, which is
//! what remapping would guard against. (Remapping it would mean IV = 1 on the I/O APIC's
//! DTE, a table for it, the entry index in the redirection entry's vector field, and an
//! explicit EOI to the I/O APIC with that index: QEMU's legacy IRTE carries no trigger
//! mode, so the interrupt reaches the local APIC as edge and its EOI is never
//! broadcast.)

pub mod commands;
pub mod dte;
pub mod events;
mod explain;
mod ids;
pub mod intremap;
pub mod registers;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use sluice_iommu::domains::{
    DomainSet, FirmwareRegion, IdPool, RouteTable, iova_ranges, regions_of, requester_ids,
};
#[cfg(test)]
use sluice_iommu::domains::{PendingRange as Pending, merge_pending};
use sluice_iommu::hw::{DmaMemory, RegisterBlock};
use sluice_iommu::range::subtract;
use sluice_iommu::{
    Access, DeviceDma, DomainHandle, FaultRecord, IoApicPinRoute, Iommu, IommuError, IovaRange,
    RemappedMsi, UnitId, Vendor,
};
use sluice_pci::PciAddress;

use self::commands::{Command, CommandRing, Target};
use self::dte::DeviceTableEntry;
use self::events::{EventStats, RecentEvents};
use self::ids::DomainIds;
use self::intremap::{InterruptTable, Irte};
use self::registers::{control, offset, status};
use crate::devmap::DeviceIdMap;
use crate::ivrs::{DteSetting, IvmdFlags};
use crate::pagetable::AmdV1;
use crate::regs::{ExtendedFeatures, IvhdFlags};
use crate::topology::{AmdViUnit, IvrsTopology, MemoryDefinition};

pub use self::commands::UnitFailure;
pub use self::dte::{DeviceTranslation, Leaf, WalkFault};
pub use self::events::RawEvent;

/// The interrupt window: never DMA-translated, never in an IOVA range.
pub use sluice_iommu::domains::INTERRUPT_WINDOW;

/// The HyperTransport reserved range, which AMD platforms decode specially; Linux keeps
/// it out of every AMD domain.
pub const HT_RESERVED: IovaRange = IovaRange {
    start: 0xFD_0000_0000,
    last: 0xFF_FFFF_FFFF,
};

/// Entries of every unit's device table (one per possible requester id).
pub const DEVICE_TABLE_ENTRIES: u32 = 1 << 16;
/// 4 KiB pages of the device table (2 MiB).
pub const DEVICE_TABLE_PAGES: usize = (DEVICE_TABLE_ENTRIES as usize * 32) / 4096;
/// log2 of the command buffer's entries (256 entries: one page, the minimum).
pub const COMMAND_LOG2_ENTRIES: u32 = 8;
/// log2 of the event log's entries (256 entries: one page, the minimum).
pub const EVENT_LOG2_ENTRIES: u32 = 8;

const PAGE: u64 = 4096;
/// The widest IOVA space used: 48 bits (4 levels).
const MAX_ADDRESS_WIDTH: u8 = 48;

/// Tunables. The budgets are iteration counts (the driver has no clock): generous by
/// default, small in tests that simulate a dead unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    /// Polls of a COMPLETION_WAIT status word before the unit is declared failed.
    pub invalidation_spin_budget: u64,
    /// Reads of a register (Status after an enable, the command head while the ring is
    /// full) before giving up.
    pub register_spin_budget: u64,
    /// INVALIDATE_IOMMU_PAGES commands per commit and unit before falling back to one
    /// for all pages of the domain.
    pub max_page_selective: usize,
    /// Event-log entries read per unit and call of [`AmdViIommu::take_events`], so an
    /// event storm cannot stall the caller.
    pub max_events_per_call: usize,
    /// The IOMMU capability header (PCI config space) has NpCache (bit 26) set: the unit
    /// may cache non-present entries, so maps are invalidated at commit too.
    pub not_present_cached: bool,
    /// Never use domain ids with bit 8 set (QEMU up to 10.0 treats DTE bit 72 as
    /// reserved and fails every translation through such an entry).
    pub skip_domain_id_bit8: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            invalidation_spin_budget: 10_000_000,
            register_spin_budget: 10_000_000,
            max_page_selective: 16,
            max_events_per_call: 256,
            not_present_cached: false,
            skip_domain_id_bit8: true,
        }
    }
}

/// The table format of every domain (see the module docs): levels are the DTE Mode,
/// coherent means every unit's IVHD says so.
pub use sluice_iommu::domains::DomainFormat;

/// A range devices must reach at its own address (an IVMD with the unity or exclusion
/// flag), with the functions it applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityRegion {
    /// PCI segment of the devices.
    pub segment: u16,
    /// First byte (page aligned).
    pub base: u64,
    /// Last byte, inclusive (page aligned end - 1).
    pub limit: u64,
    /// What the devices may do there (empty: reserved, never mapped).
    pub access: Access,
    /// The functions.
    pub devices: Vec<PciAddress>,
}

impl IdentityRegion {
    /// From a resolved IVMD, widened to whole pages; `None` for an empty range.
    pub fn from_definition(definition: &MemoryDefinition) -> Option<Self> {
        let ivmd = &definition.ivmd;
        if ivmd.memory_length == 0 {
            return None;
        }
        let mut access = Access::empty();
        if ivmd.requires_unity_map() {
            let exclusion = ivmd.flags.contains(IvmdFlags::EXCLUSION_RANGE);
            access.set(
                Access::READ,
                exclusion || ivmd.flags.contains(IvmdFlags::IR),
            );
            access.set(
                Access::WRITE,
                exclusion || ivmd.flags.contains(IvmdFlags::IW),
            );
        }
        let last = ivmd.end_address().saturating_sub(1);
        Some(Self {
            segment: ivmd.segment,
            base: ivmd.start_address & !(PAGE - 1),
            limit: last | (PAGE - 1),
            access,
            devices: definition.devices.iter().map(|d| d.address).collect(),
        })
    }
}

impl FirmwareRegion for IdentityRegion {
    fn segment(&self) -> u16 {
        self.segment
    }

    fn devices(&self) -> &[PciAddress] {
        &self.devices
    }

    /// IVMD access as declared (empty for a range that is only reserved).
    fn identity(&self) -> (u64, u64, Access) {
        (self.base, self.limit - self.base + 1, self.access)
    }
}

/// What the driver knows about one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitInfo {
    /// The unit.
    pub id: UnitId,
    /// Its PCI segment.
    pub segment: u16,
    /// The EFR as read from MMIO.
    pub efr: ExtendedFeatures,
    /// The EFR image of the IVHD, when it differs from the register (Linux warns too).
    pub efr_image_mismatch: Option<ExtendedFeatures>,
    /// Host page-table levels HATS allows.
    pub max_levels: u8,
    /// IVHD flags say the unit's memory accesses are coherent (no flushes).
    pub coherent: bool,
    /// Translation was on when the driver took the unit over.
    pub was_enabled: bool,
    /// The Control register now.
    pub control: u64,
    /// The Status register now.
    pub status: u64,
    /// Physical address of the device table.
    pub device_table: u64,
    /// The zeroed root every blocked entry points at.
    pub blocking_root: u64,
    /// Physical address of the command buffer.
    pub command_buffer: u64,
    /// Physical address of the event log.
    pub event_log: u64,
    /// Commands written, COMPLETION_WAITs included.
    pub commands_issued: u64,
    /// COMPLETION_WAITs confirmed or not (the last sequence number).
    pub completion_waits: u64,
    /// Set once the unit failed to confirm something; it is never used again.
    pub failure: Option<UnitFailure>,
    /// Event-log counters.
    pub events: EventStats,
    /// Domain ids in use.
    pub domain_ids_in_use: usize,
    /// Domain ids available in total.
    pub domain_ids_capacity: u32,
}

struct EventLog {
    base: u64,
    entries: u32,
}

struct Unit<R> {
    id: UnitId,
    segment: u16,
    regs: R,
    efr: ExtendedFeatures,
    efr_image: Option<ExtendedFeatures>,
    ivhd_flags: IvhdFlags,
    coherent: bool,
    was_enabled: bool,
    device_map: DeviceIdMap,
    /// Interrupt sources (IOAPIC/HPET) and their DTE settings.
    specials: Vec<(u16, DteSetting)>,
    levels: u8,
    device_table: u64,
    blocking_root: u64,
    ring: CommandRing,
    event_log: EventLog,
    ids: IdPool,
    failure: Option<UnitFailure>,
    events: EventStats,
    recent: RecentEvents,
    /// Interrupt remapping tables of the devices given one (see [`intremap`]).
    interrupt_tables: Vec<InterruptTable>,
}

/// AMD-Vi behind the vendor-neutral [`Iommu`] interface. See the module docs.
pub struct AmdViIommu<R: RegisterBlock, M: DmaMemory> {
    mem: M,
    config: DriverConfig,
    units: Vec<Unit<R>>,
    format: DomainFormat,
    identity_regions: Vec<IdentityRegion>,
    /// Sorted `[start, end)` ranges no domain may map: interrupt window, HT range, IVMDs.
    reserved: Vec<(u64, u64)>,
    domains: DomainSet<AmdV1>,
    routes: RouteTable,
    /// The IVRS names an IOAPIC (see [`intremap`]).
    interrupt_remapping_offered: bool,
    /// [`AmdViIommu::enable_interrupt_remapping`] succeeded.
    interrupt_remapping: bool,
}

impl<R: RegisterBlock, M: DmaMemory> AmdViIommu<R, M> {
    /// Brings up every unit of `topology`. `registers[i]` is the register block of
    /// `topology.amd_units()[i]` (mapped over at least 16 KiB); the IVMDs become
    /// identity regions and reserved IOVA ranges.
    ///
    /// First every unit's EFR is read and checked (nothing written: a refused unit
    /// leaves the machine untouched); then each unit in turn is brought up (see the module
    /// docs).
    ///
    /// Errors: `Unsupported` (a register block missing, HATS reserved), `HardwareTimeout`
    /// (the command buffer or event log did not start), `InvalidationTimeout`,
    /// `NoMemory`. Units brought up before the failing one stay enabled and blocking
    /// (their memory is leaked: the hardware may still read it).
    pub fn new(
        topology: &IvrsTopology,
        registers: Vec<R>,
        mut mem: M,
        config: DriverConfig,
    ) -> Result<Self, IommuError> {
        let amd_units = topology.amd_units();
        if registers.len() != amd_units.len() {
            let missing = amd_units.len().min(registers.len());
            return Err(IommuError::Unsupported {
                unit: UnitId(missing as u16),
            });
        }
        let va_size = topology.iv_info().va_size;
        let mut address_width = MAX_ADDRESS_WIDTH;
        if va_size != 0 {
            address_width = address_width.min(va_size);
        }
        let levels = AmdV1::levels_for_width(address_width)
            .ok_or(IommuError::Unsupported { unit: UnitId(0) })?;

        let mut units = Vec::with_capacity(amd_units.len());
        for (unit, regs) in amd_units.iter().zip(registers) {
            let efr = ExtendedFeatures::from_raw(regs.read64(offset::EXTENDED_FEATURES));
            let unsupported = IommuError::Unsupported { unit: unit.id() };
            let max_levels = efr.host_page_table_levels().ok_or(unsupported)?;
            if max_levels < levels {
                return Err(unsupported);
            }
            let image = unit.efr_image().filter(|image| image.raw != efr.raw);
            if let Some(image) = image {
                log::warn!(
                    target: "amdvi",
                    "{}: EFR {:#x} differs from the IVHD's image {:#x}; using the register",
                    unit.description.name,
                    efr.raw,
                    image.raw
                );
            }
            units.push(Unit::new(
                unit,
                topology,
                regs,
                efr,
                image,
                levels,
                config.skip_domain_id_bit8,
            ));
        }
        let format = DomainFormat {
            levels,
            address_width,
            page_sizes: AmdV1::page_sizes(levels),
            coherent: units.iter().all(|unit| unit.coherent),
        };
        for unit in &mut units {
            unit.bring_up(&mut mem, &config)?;
        }
        let identity_regions = merge_regions(
            topology
                .memory_definitions()
                .iter()
                .filter_map(IdentityRegion::from_definition)
                .collect(),
        );
        let mut reserved: Vec<(u64, u64)> = identity_regions
            .iter()
            .map(|region| (region.base, region.limit.saturating_add(1)))
            .collect();
        for window in [INTERRUPT_WINDOW, HT_RESERVED] {
            reserved.push((window.start, window.last + 1));
        }
        reserved.sort_unstable();
        Ok(Self {
            mem,
            config,
            units,
            format,
            identity_regions,
            reserved,
            domains: DomainSet::new(format),
            routes: RouteTable::new(),
            interrupt_remapping_offered: topology
                .special_devices()
                .iter()
                .any(|special| special.variety == crate::SpecialVariety::IoApic),
            interrupt_remapping: false,
        })
    }

    /// Whether the firmware says the units remap interrupts: the IVRS names an IOAPIC
    /// (special device entry, variety IOAPIC), as Linux requires. QEMU writes that entry
    /// exactly when `amd-iommu` has `intremap=on`.
    pub fn interrupt_remapping_offered(&self) -> bool {
        self.interrupt_remapping_offered
    }

    /// Turns interrupt remapping on when offered ([`Self::interrupt_remapping_offered`]):
    /// `Ok(true)`, and from then on every device attached gets an empty interrupt
    /// remapping table (its MSIs blocked until [`Iommu::map_msi`]); `Ok(false)` (nothing
    /// changes) otherwise. Nothing is written to the units (AMD-Vi has no global enable
    /// for the legacy format). Call it before any device is attached: a device attached
    /// earlier gets its table only at its first `map_msi`.
    ///
    /// Errors: `InvalidationTimeout` when a unit failed.
    pub fn enable_interrupt_remapping(&mut self) -> Result<bool, IommuError> {
        if self.interrupt_remapping {
            return Ok(true);
        }
        if !self.interrupt_remapping_offered {
            return Ok(false);
        }
        if let Some(unit) = self.units.iter().find(|unit| unit.failure.is_some()) {
            return Err(IommuError::InvalidationTimeout { unit: unit.id });
        }
        self.interrupt_remapping = true;
        Ok(true)
    }

    /// Entry `index` of the interrupt remapping table `requester_id`'s device table entry
    /// names on `unit`, read from memory as the unit reads it. `None` for an unknown unit,
    /// an entry with IV = 0 or an index beyond the table.
    pub fn interrupt_entry(&self, unit: UnitId, requester_id: u16, index: u32) -> Option<Irte> {
        let unit = self.unit(unit)?;
        let entry = DeviceTableEntry::read(&self.mem, unit.device_table, requester_id);
        if !entry.interrupt_valid() || index >= 1 << entry.int_tab_len() {
            return None;
        }
        Some(intremap::read_irte(
            &self.mem,
            entry.interrupt_table(),
            index,
        ))
    }

    /// The table format every domain uses.
    pub fn format(&self) -> DomainFormat {
        self.format
    }

    /// The configuration.
    pub fn config(&self) -> DriverConfig {
        self.config
    }

    /// The IVMD ranges devices are identity-mapped to while attached.
    pub fn identity_regions(&self) -> &[IdentityRegion] {
        &self.identity_regions
    }

    /// The units, in table order.
    pub fn unit_ids(&self) -> impl Iterator<Item = UnitId> + '_ {
        self.units.iter().map(|unit| unit.id)
    }

    /// What the driver knows about `unit`.
    pub fn unit_info(&self, unit: UnitId) -> Option<UnitInfo> {
        let unit = self.unit(unit)?;
        Some(UnitInfo {
            id: unit.id,
            segment: unit.segment,
            efr: unit.efr,
            efr_image_mismatch: unit.efr_image,
            max_levels: unit.efr.host_page_table_levels().unwrap_or(0),
            coherent: unit.coherent,
            was_enabled: unit.was_enabled,
            control: unit.regs.read64(offset::CONTROL),
            status: unit.regs.read64(offset::STATUS),
            device_table: unit.device_table,
            blocking_root: unit.blocking_root,
            command_buffer: unit.ring.base,
            event_log: unit.event_log.base,
            commands_issued: unit.ring.issued,
            completion_waits: unit.ring.sequence,
            failure: unit.failure,
            events: unit.events,
            domain_ids_in_use: unit.ids.in_use(),
            domain_ids_capacity: unit.ids.capacity(),
        })
    }

    /// Whether `unit` failed and refuses work.
    pub fn unit_failed(&self, unit: UnitId) -> bool {
        self.unit(unit).is_some_and(|u| u.failure.is_some())
    }

    /// The device table entry of `requester_id` as the unit reads it from memory.
    pub fn dte(&self, unit: UnitId, requester_id: u16) -> Option<[u64; 4]> {
        let unit = self.unit(unit)?;
        Some(DeviceTableEntry::read(&self.mem, unit.device_table, requester_id).0)
    }

    /// Walks `unit`'s device table and page tables in memory for a DMA by `requester_id`
    /// at `iova`, as the hardware would (not the driver's bookkeeping). `None` for an
    /// unknown unit.
    pub fn walk(
        &self,
        unit: UnitId,
        requester_id: u16,
        iova: u64,
    ) -> Option<Result<DeviceTranslation, WalkFault>> {
        let unit = self.unit(unit)?;
        Some(dte::walk(&self.mem, unit.device_table, requester_id, iova))
    }

    /// The leaf entry translating `iova` in `domain`, read from memory: raw entry, level
    /// and page size (for the kernel's DMA proofs).
    pub fn leaf(&self, domain: DomainHandle, iova: u64) -> Result<Option<Leaf>, IommuError> {
        let domain = self.domains.get(domain)?;
        Ok(dte::walk_table(&self.mem, domain.table.root(), domain.table.levels(), iova).ok())
    }

    sluice_iommu::domain_accessors!(M);

    /// Reads every unit's event log (at most [`DriverConfig::max_events_per_call`]
    /// entries per unit), counts the entries, remembers the last ones per unit, clears
    /// them from the log, advances the head, and restarts logging after an overflow.
    /// Returns them in log order, unit by unit.
    pub fn take_events(&mut self) -> Vec<RawEvent> {
        let mut out = Vec::new();
        for unit in &mut self.units {
            unit.take_events(&mut self.mem, self.config.max_events_per_call, &mut out);
        }
        out
    }

    /// The last events read from `unit`'s log (oldest first, at most 32), whatever their
    /// kind: what [`Iommu::take_faults`] does not return is still here.
    pub fn recent_events(&self, unit: UnitId) -> Option<&[RawEvent]> {
        Some(self.unit(unit)?.recent.as_slice())
    }

    /// The last event read from `unit`'s log.
    pub fn last_event(&self, unit: UnitId) -> Option<RawEvent> {
        self.unit(unit)?.recent.as_slice().last().copied()
    }

    /// The requester ids an event's DeviceID may stand for. Hardware logs the full id;
    /// QEMU logs only the devfn (bus 0), so for an id on bus 0 the ids routed on `unit`
    /// with the same devfn are added. The id itself always comes first.
    pub fn event_requester_candidates(&self, unit: UnitId, device_id: u16) -> Vec<u16> {
        let mut candidates = vec![device_id];
        if device_id >> 8 == 0 {
            for (u, rid) in self.routes.keys() {
                if u == unit && rid & 0xff == device_id && rid != device_id {
                    candidates.push(rid);
                }
            }
        }
        candidates
    }

    fn unit(&self, unit: UnitId) -> Option<&Unit<R>> {
        self.units.iter().find(|u| u.id == unit)
    }

    /// The aperture minus the reserved ranges, as sorted `[start, end)` pieces.
    fn usable(&self) -> Vec<(u64, u64)> {
        subtract((0, self.aperture_end()), &self.reserved)
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
                let pending = pending.merged();
                let commands: Vec<Command> = if pending.len() > config.max_page_selective {
                    vec![Command::all_pages(did)]
                } else {
                    pending
                        .iter()
                        .map(|p| Command::pages(did, p.start, p.end, p.pde))
                        .collect()
                };
                if commands.is_empty() && unit.failure.is_none() {
                    return Ok(());
                }
                unit.run(mem, config, &commands)
            })
    }
}

sluice_iommu::domain_unit!(Unit<R>, id, ids);

impl<R: RegisterBlock> Unit<R> {
    fn new(
        unit: &AmdViUnit,
        topology: &IvrsTopology,
        regs: R,
        efr: ExtendedFeatures,
        efr_image: Option<ExtendedFeatures>,
        levels: u8,
        skip_bit8: bool,
    ) -> Self {
        let specials = topology
            .special_devices()
            .iter()
            .filter(|special| special.unit == unit.id())
            .map(|special| (special.source.bdf(), special.dte))
            .collect();
        Self {
            id: unit.id(),
            segment: unit.description.segment,
            regs,
            efr,
            efr_image,
            ivhd_flags: unit.flags,
            coherent: unit.flags.contains(IvhdFlags::COHERENT),
            was_enabled: false,
            device_map: unit.device_map.clone(),
            specials,
            levels,
            device_table: 0,
            blocking_root: 0,
            ring: CommandRing {
                base: 0,
                entries: 1 << COMMAND_LOG2_ENTRIES,
                tail: 0,
                head: 0,
                status_word: 0,
                sequence: 0,
                issued: 0,
            },
            event_log: EventLog {
                base: 0,
                entries: 1 << EVENT_LOG2_ENTRIES,
            },
            ids: DomainIds::new(skip_bit8),
            failure: None,
            events: EventStats::default(),
            recent: RecentEvents::default(),
            interrupt_tables: Vec::new(),
        }
    }

    /// The IVRS DTE setting of `rid` (device entries first, then IOAPIC/HPET sources).
    fn settings(&self, rid: u16) -> DteSetting {
        if let Some(settings) = self.device_map.lookup(rid) {
            return settings.dte;
        }
        self.specials
            .iter()
            .find(|(source, _)| *source == rid)
            .map(|(_, dte)| *dte)
            .unwrap_or(DteSetting::empty())
    }

    /// The requester id the IVRS says `rid`'s DMA carries, when it names another.
    fn ivrs_alias(&self, rid: u16) -> Option<u16> {
        self.device_map
            .lookup(rid)
            .and_then(|settings| settings.alias)
            .filter(|&alias| alias != rid)
    }

    fn blocked(&self, rid: u16) -> DeviceTableEntry {
        DeviceTableEntry::blocked(self.blocking_root, self.levels, self.settings(rid))
    }

    /// The index of the interrupt remapping table `rid`'s entry names.
    fn interrupt_table_of(&self, rid: u16) -> Option<usize> {
        self.interrupt_tables
            .iter()
            .position(|table| table.requester_ids.contains(&rid))
    }

    /// The interrupt remapping table of `rids` (one device's ids and aliases): the one
    /// some of them already use, else a new, empty one (zeroed and flushed before any
    /// entry names it). Returns its index and the ids newly given it, whose device table
    /// entries the caller must rewrite ([`Unit::write_dte`] adds the fields) and
    /// invalidate. `Busy` when the ids use two different tables.
    fn ensure_interrupt_table(
        &mut self,
        mem: &mut dyn DmaMemory,
        rids: &[u16],
    ) -> Result<(usize, Vec<u16>), IommuError> {
        let mut found: Option<usize> = None;
        for &rid in rids {
            if let Some(index) = self.interrupt_table_of(rid) {
                if found.is_some_and(|f| f != index) {
                    return Err(IommuError::Busy);
                }
                found = Some(index);
            }
        }
        let index = match found {
            Some(index) => index,
            None => {
                let base = mem.alloc_zeroed(1, PAGE).ok_or(IommuError::NoMemory)?;
                if !self.coherent {
                    mem.flush(base, PAGE as usize);
                }
                mem.barrier();
                self.interrupt_tables.push(InterruptTable::new(base));
                self.interrupt_tables.len() - 1
            }
        };
        let table = &mut self.interrupt_tables[index];
        let mut added = Vec::new();
        for &rid in rids {
            if !table.requester_ids.contains(&rid) {
                table.requester_ids.push(rid);
                added.push(rid);
            }
        }
        Ok((index, added))
    }

    /// `entry` with the interrupt remapping fields of `rid`'s table, when it has one.
    fn with_interrupts(&self, rid: u16, entry: DeviceTableEntry) -> DeviceTableEntry {
        match self.interrupt_table_of(rid) {
            Some(index) => {
                entry.with_interrupt_table(self.interrupt_tables[index].base, intremap::INT_TAB_LEN)
            }
            None => entry,
        }
    }

    /// See the module docs, "Bring-up".
    fn bring_up(
        &mut self,
        mem: &mut dyn DmaMemory,
        config: &DriverConfig,
    ) -> Result<(), IommuError> {
        let name = self.id.0;
        // Memory first: a unit that cannot get it is left as it was.
        let [device_table, blocking_root, ring, event_log, status_word] =
            alloc_all(mem, [DEVICE_TABLE_PAGES, 1, 1, 1, 1])?;
        self.device_table = device_table;
        self.blocking_root = blocking_root;
        self.ring.base = ring;
        self.ring.status_word = status_word;
        self.event_log.base = event_log;

        // Every entry blocked (the unit does not read this table yet: plain writes, the
        // valid quadword last).
        for rid in 0..=u16::MAX {
            let entry = self.blocked(rid);
            let at = device_table + u64::from(rid) * dte::DTE_BYTES;
            for quad in 1..4 {
                if entry.0[quad] != 0 {
                    mem.write_u64(at + 8 * quad as u64, entry.0[quad]);
                }
            }
            mem.write_u64(at, entry.0[0]);
        }
        if !self.coherent {
            mem.flush(device_table, DEVICE_TABLE_PAGES * PAGE as usize);
            mem.flush(blocking_root, PAGE as usize);
            mem.flush(ring, PAGE as usize);
            mem.flush(event_log, PAGE as usize);
            mem.flush(status_word, PAGE as usize);
        }
        mem.barrier();

        let left_on = self.regs.read64(offset::CONTROL);
        if left_on & control::PREVIOUS_OWNER != 0 {
            self.was_enabled = left_on & control::IOMMU_EN != 0;
            if self.was_enabled {
                log::warn!(
                    target: "amdvi",
                    "ivhd{name}: translation was left on (control {left_on:#x}); reprogramming"
                );
            }
            registers::update_control(&mut self.regs, 0, control::PREVIOUS_OWNER);
        }

        let regs = &mut self.regs;
        // Stale status first: QEMU (10.1+) ignores an event-log base write while
        // EventLogInt is set.
        regs.write64(offset::STATUS, status::STALE);
        if !self.efr.snp_sup {
            regs.write64(offset::EXCLUSION_BASE, 0);
            regs.write64(offset::EXCLUSION_LIMIT, 0);
        }
        regs.write64(
            offset::DEVICE_TABLE_BASE,
            registers::device_table_base(device_table, DEVICE_TABLE_PAGES as u64),
        );
        regs.write64(
            offset::COMMAND_BUFFER_BASE,
            registers::ring_base(ring, COMMAND_LOG2_ENTRIES),
        );
        regs.write64(offset::COMMAND_HEAD, 0);
        regs.write64(offset::COMMAND_TAIL, 0);
        regs.write64(
            offset::EVENT_LOG_BASE,
            registers::ring_base(event_log, EVENT_LOG2_ENTRIES),
        );
        regs.write64(offset::EVENT_HEAD, 0);
        regs.write64(offset::EVENT_TAIL, 0);

        let flags = self.ivhd_flags;
        let mut set = control::COHERENT;
        let mut clear = control::EVENT_INT_EN | control::COM_WAIT_INT_EN;
        for (flag, bit) in [
            (IvhdFlags::HT_TUN_EN, control::HT_TUN_EN),
            (IvhdFlags::PASS_PW, control::PASS_PW),
            (IvhdFlags::RES_PASS_PW, control::RES_PASS_PW),
            (IvhdFlags::ISOC, control::ISOC),
        ] {
            if flags.contains(flag) {
                set |= bit;
            } else {
                clear |= bit;
            }
        }
        registers::update_control(regs, set, clear);
        registers::update_control(regs, control::CMD_BUF_EN, 0);
        registers::update_control(regs, control::EVENT_LOG_EN, 0);
        registers::update_control(regs, control::IOMMU_EN, 0);
        for bit in [status::CMD_BUF_RUN, status::EVENT_LOG_RUN] {
            if !registers::poll_status(regs, config.register_spin_budget, |s| s & bit != 0) {
                self.failure = Some(UnitFailure::NotRunning { bit });
                log::error!(target: "amdvi", "ivhd{name}: status bit {bit:#x} never set");
                return Err(IommuError::HardwareTimeout { unit: self.id });
            }
        }

        if self.efr.ia_sup {
            self.run(mem, config, &[Command::InvalidateIommuAll])?;
        } else {
            // Linux's fallback: every device table entry, then every domain id.
            const CHUNK: u32 = 4096;
            for first in (0..DEVICE_TABLE_ENTRIES).step_by(CHUNK as usize) {
                let commands: Vec<Command> = (first..first + CHUNK)
                    .map(|id| Command::InvalidateDevTabEntry {
                        device_id: id as u16,
                    })
                    .collect();
                self.run(mem, config, &commands)?;
            }
            for first in (0..DEVICE_TABLE_ENTRIES).step_by(CHUNK as usize) {
                let commands: Vec<Command> = (first..first + CHUNK)
                    .map(|id| Command::all_pages(id as u16))
                    .collect();
                self.run(mem, config, &commands)?;
            }
        }
        log::info!(
            target: "amdvi",
            "ivhd{name}: translation enabled, {}-level domains, device table {device_table:#x} \
             (65536 entries, all blocked), command buffer {ring:#x}, event log {event_log:#x}, {}",
            self.levels,
            if self.coherent { "coherent" } else { "flushing table writes" }
        );
        Ok(())
    }

    /// Runs `commands` and a COMPLETION_WAIT. Any failure marks the unit failed.
    fn run(
        &mut self,
        mem: &mut dyn DmaMemory,
        config: &DriverConfig,
        commands: &[Command],
    ) -> Result<(), IommuError> {
        if self.failure.is_some() {
            return Err(IommuError::InvalidationTimeout { unit: self.id });
        }
        let mut target = Target {
            regs: &mut self.regs,
            coherent: self.coherent,
            spin_budget: config.invalidation_spin_budget,
            register_budget: config.register_spin_budget,
        };
        self.ring
            .run(&mut target, mem, commands)
            .map_err(|failure| {
                log::error!(
                    target: "amdvi",
                    "ivhd{}: {failure:?}; the unit is no longer trusted",
                    self.id.0
                );
                self.failure = Some(failure);
                IommuError::InvalidationTimeout { unit: self.id }
            })
    }

    /// Writes the device table entry of `rid` so that no intermediate state grants
    /// anything (see the module docs): blocking quadword 0 first when the entry grants
    /// access and its other quadwords change, then quadwords 1–3, then quadword 0.
    ///
    /// The interrupt remapping fields of `rid`'s table (when it has one) are added to
    /// `entry`; a change of quadword 2 alone (the interrupt fields) is one store and
    /// needs no blocking step.
    fn write_dte(&mut self, mem: &mut dyn DmaMemory, rid: u16, entry: DeviceTableEntry) {
        let entry = self.with_interrupts(rid, entry);
        let at = self.device_table + u64::from(rid) * dte::DTE_BYTES;
        let current = DeviceTableEntry::read(mem, self.device_table, rid);
        let interim = dte::V
            | dte::TV
            | u64::from(self.levels) << dte::MODE_SHIFT
            | (self.blocking_root & dte::ROOT_MASK);
        let grants =
            !current.valid() || current.mode() == 0 || current.table_root() != self.blocking_root;
        let others_change = current.0[1] != entry.0[1] || current.0[3] != entry.0[3];
        let only_interrupts = current.0[1..] != entry.0[1..]
            && !others_change
            && (current.0[2] ^ entry.0[2]) & !dte::INTERRUPT_FIELDS == 0;
        if grants && current.0[1..] != entry.0[1..] && !only_interrupts && current.0[0] != interim {
            self.store(mem, at, interim);
        }
        for quad in 1..4 {
            if current.0[quad] != entry.0[quad] {
                mem.write_u64(at + 8 * quad as u64, entry.0[quad]);
                if !self.coherent {
                    mem.flush(at + 8 * quad as u64, 8);
                }
            }
        }
        mem.barrier();
        self.store(mem, at, entry.0[0]);
    }

    /// One quadword, flushed when needed, ordered before what follows.
    fn store(&self, mem: &mut dyn DmaMemory, at: u64, value: u64) {
        mem.write_u64(at, value);
        if !self.coherent {
            mem.flush(at, 8);
        }
        mem.barrier();
    }

    /// See [`AmdViIommu::take_events`].
    fn take_events(&mut self, mem: &mut dyn DmaMemory, bound: usize, out: &mut Vec<RawEvent>) {
        let entries = self.event_log.entries;
        let mut head = registers::ring_index(&self.regs, offset::EVENT_HEAD, entries);
        let tail = registers::ring_index(&self.regs, offset::EVENT_TAIL, entries);
        let mut taken = 0;
        while head != tail && taken < bound {
            let slot = self.event_log.base + u64::from(head) * 16;
            let lo = mem.read_u64(slot);
            let hi = mem.read_u64(slot + 8);
            // Cleared, so an entry the unit has not (re)written reads as empty.
            mem.write_u64(slot, 0);
            mem.write_u64(slot + 8, 0);
            let event = RawEvent::from_quads(self.id, lo, hi);
            if event.to_fault().is_none() {
                log::warn!(target: "amdvi", "{event}");
            }
            self.events.count(&event);
            self.recent.push(event);
            out.push(event);
            head = (head + 1) % entries;
            taken += 1;
        }
        if taken > 0 {
            registers::set_ring_index(&mut self.regs, offset::EVENT_HEAD, head);
        }
        if head != tail {
            self.events.truncated_reads += 1;
        }
        let status = self.regs.read64(offset::STATUS);
        if status & status::EVENT_OVERFLOW != 0 {
            // Event log restart: logging stopped on the overflow; clear it and turn
            // logging off and on again (Linux's amd_iommu_restart_event_logging).
            self.events.overflows += 1;
            log::warn!(target: "amdvi", "ivhd{}: event log overflowed; restarting it", self.id.0);
            registers::update_control(&mut self.regs, 0, control::EVENT_LOG_EN);
            self.regs.write64(
                offset::STATUS,
                status::EVENT_OVERFLOW | status::EVENT_LOG_INT,
            );
            registers::update_control(&mut self.regs, control::EVENT_LOG_EN, 0);
        }
    }
}

/// Zeroed, 4 KiB aligned allocations of the given page counts: all of them, or none
/// (what was allocated is given back).
fn alloc_all<const N: usize>(
    mem: &mut dyn DmaMemory,
    sizes: [usize; N],
) -> Result<[u64; N], IommuError> {
    let mut out = [0; N];
    for (index, &pages) in sizes.iter().enumerate() {
        match mem.alloc_zeroed(pages, PAGE) {
            Some(base) => out[index] = base,
            None => {
                for (&base, &pages) in out[..index].iter().zip(&sizes) {
                    mem.free(base, pages);
                }
                return Err(IommuError::NoMemory);
            }
        }
    }
    Ok(out)
}

/// Sorts and merges overlapping regions of one segment (devices and permissions united).
fn merge_regions(mut regions: Vec<IdentityRegion>) -> Vec<IdentityRegion> {
    regions.sort_by_key(|region| (region.segment, region.base));
    let mut merged: Vec<IdentityRegion> = Vec::new();
    for region in regions {
        match merged.last_mut() {
            Some(last) if last.segment == region.segment && region.base <= last.limit => {
                last.limit = last.limit.max(region.limit);
                last.access |= region.access;
                for device in region.devices {
                    if !last.devices.contains(&device) {
                        last.devices.push(device);
                    }
                }
            }
            _ => merged.push(region),
        }
    }
    merged
}

/// Sorts pending ranges and merges those that overlap or touch.
impl<R: RegisterBlock, M: DmaMemory> Iommu for AmdViIommu<R, M> {
    sluice_iommu::domain_methods!();

    fn vendor(&self) -> Vendor {
        Vendor::AmdVi
    }

    /// Requires no device attached (`Busy`). On every unit the domain had an id on: an
    /// INVALIDATE_IOMMU_PAGES of all its pages and a wait, then the id goes back to the
    /// pool. When a unit fails to confirm, the domain is gone all the same but its id and
    /// tables are leaked (that unit may still use them) and the error returned.
    fn destroy_domain(&mut self, handle: DomainHandle) -> Result<(), IommuError> {
        let config = &self.config;
        let units = &mut self.units;
        self.domains
            .destroy(&mut self.mem, handle, units, |unit, mem, did| {
                unit.run(mem, config, &[Command::all_pages(did)])
            })
    }

    /// `[0, 2^48)` minus the interrupt window, the HyperTransport range and the IVMDs.
    fn iova_ranges(&self, domain: DomainHandle) -> Result<Vec<IovaRange>, IommuError> {
        self.domains.get(domain)?;
        Ok(iova_ranges(self.usable()))
    }

    /// Errors in order: `UnknownDomain`, `Misaligned`, `Wraps`, `OutOfRange` (not inside
    /// one usable range), then the table's `NoAccess`, `Overlap`, `NoMemory`.
    fn map(
        &mut self,
        handle: DomainHandle,
        iova: u64,
        paddr: u64,
        size: u64,
        access: Access,
    ) -> Result<(), IommuError> {
        let usable = subtract((0, self.aperture_end()), &self.reserved);
        let (args, record) = ((iova, paddr, size), self.config.not_present_cached);
        self.domains
            .map_checked(&mut self.mem, handle, args, access, |_| usable, record)
    }

    /// One batch per unit the domain has an id on: the ranges unmapped since the last
    /// commit (merged; plus the ranges mapped, with NpCache) as INVALIDATE_IOMMU_PAGES,
    /// PDE where tables were unlinked, or one for all pages past
    /// [`DriverConfig::max_page_selective`]; one COMPLETION_WAIT. Tables retired by
    /// unmaps are freed only when every unit confirmed. A domain on a failed unit never
    /// commits successfully again, even with nothing pending.
    fn commit(&mut self, handle: DomainHandle) -> Result<(), IommuError> {
        self.commit_domain(handle)
    }

    /// Writes the device table entry (root, Mode, IR = IW = 1, the unit's domain id, the
    /// IVRS settings) of every requester id of `device` and of the IVRS aliases of those,
    /// identity-maps the IVMDs naming the device, then sends INVALIDATE_DEVTAB_ENTRY for
    /// each id written and INVALIDATE_IOMMU_PAGES for the domain's id, and waits. Edits of
    /// the domain still pending are committed as well (on all its units).
    ///
    /// Errors: `UnknownDomain`; `UnknownDevice` (unknown unit, other segment, no
    /// requester id); `Busy` (device or an id attached to another domain); `NoDomainId`;
    /// `NoMemory`; IVMD mapping errors; `InvalidationTimeout` (the entries were written but
    /// are unconfirmed: the device counts as attached and the unit is failed).
    fn attach(&mut self, handle: DomainHandle, device: &DeviceDma) -> Result<(), IommuError> {
        let index = self.domains.attach_unit(handle, device.unit, &self.units)?;
        let unit = &self.units[index];
        if device.device.segment != unit.segment {
            return Err(IommuError::UnknownDevice);
        }
        let aliases = device
            .requester_ids
            .iter()
            .filter_map(|&rid| unit.ivrs_alias(rid));
        let rids = requester_ids(device, aliases)?;
        if self
            .domains
            .check_attach(handle, device, &rids, &self.routes)?
        {
            return self.commit_domain(handle);
        }
        if unit.failure.is_some() {
            return Err(IommuError::InvalidationTimeout { unit: unit.id });
        }

        // IVMD identity maps first (nothing points at them yet if they are new), then a
        // domain id on this unit.
        let regions = regions_of(&self.identity_regions, unit.segment, device.device);
        let record = self.config.not_present_cached;
        let unit = &mut self.units[index];
        let did = self
            .domains
            .prepare_attach(&mut self.mem, handle, unit, &regions, record)?;
        let domain = self.domains.get(handle)?;

        // With interrupt remapping: the device's (empty) interrupt table first.
        let mut interrupt_ids = Vec::new();
        if self.interrupt_remapping {
            let (table, _) = unit.ensure_interrupt_table(&mut self.mem, &rids)?;
            interrupt_ids = unit.interrupt_tables[table].requester_ids.clone();
        }

        // Entries for requester ids not yet routed.
        let (root, levels) = (domain.table.root(), domain.table.levels());
        let fresh = self.routes.unrouted(unit.id, &rids);
        for &rid in &fresh {
            let entry = DeviceTableEntry::translated(root, levels, did, unit.settings(rid));
            unit.write_dte(&mut self.mem, rid, entry);
        }
        self.domains
            .finish_attach(handle, device, rids, &mut self.routes)?;

        let mut commands: Vec<Command> = fresh
            .iter()
            .map(|&device_id| Command::InvalidateDevTabEntry { device_id })
            .collect();
        commands.extend(
            interrupt_ids
                .iter()
                .map(|&device_id| Command::InvalidateInterruptTable { device_id }),
        );
        commands.push(Command::all_pages(did));
        unit.run(&mut self.mem, &self.config, &commands)?;
        // Whatever else is pending in the domain becomes visible on all its units too.
        self.commit_domain(handle)
    }

    /// Writes the blocked entry back for every requester id of `device` (aliases
    /// included) no other attached device of the domain uses, removes IVMD identity maps
    /// no attached device needs any more, sends INVALIDATE_DEVTAB_ENTRY for those ids and
    /// INVALIDATE_IOMMU_PAGES for all pages of the domain's id (QEMU's IOTLB is keyed by
    /// device, not domain: without it the detached device keeps its cached
    /// translations), and waits. Edits of the domain still pending are committed as well.
    ///
    /// Errors: `UnknownDomain`; `UnknownDevice` (not attached to this domain);
    /// `InvalidationTimeout` (entries blocked in memory, unconfirmed: the unit is failed).
    fn detach(&mut self, handle: DomainHandle, device: &DeviceDma) -> Result<(), IommuError> {
        let detached = self
            .domains
            .detach(handle, device.device, &mut self.routes, &self.units)?;
        let (did, cleared) = (detached.did, &detached.cleared);
        let unit = &mut self.units[detached.index];
        for &rid in cleared {
            let entry = unit.blocked(rid);
            unit.write_dte(&mut self.mem, rid, entry);
        }
        let mut commands: Vec<Command> = cleared
            .iter()
            .map(|&device_id| Command::InvalidateDevTabEntry { device_id })
            .collect();
        commands.push(Command::all_pages(did));
        let result = unit.run(&mut self.mem, &self.config, &commands);
        let regions = regions_of(&self.identity_regions, unit.segment, device.device);
        self.domains
            .get_mut(handle)?
            .remove_identity(&mut self.mem, &regions);
        let committed = self.commit_domain(handle);
        result.and(committed)
    }

    /// The IO_PAGE_FAULT and ILLEGAL_DEV_TABLE_ENTRY events of every unit's log, read
    /// and cleared by [`AmdViIommu::take_events`] (the other events are counted in
    /// [`UnitInfo::events`] and kept in [`AmdViIommu::recent_events`]).
    fn take_faults(&mut self) -> Vec<FaultRecord> {
        self.take_events()
            .iter()
            .filter_map(RawEvent::to_fault)
            .collect()
    }

    /// See [`AmdViIommu::enable_interrupt_remapping`].
    fn interrupt_remapping(&self) -> bool {
        self.interrupt_remapping
    }

    /// Takes an aligned block of `count` entries in the interrupt remapping table of
    /// `device` (created, and its device table entries rewritten, if it has none yet),
    /// writes them (RemapEn, fixed, physical destination `dest_apic_id`, vectors
    /// `first_vector + i`), sends INVALIDATE_DEVTAB_ENTRY for the ids newly given the
    /// table, INVALIDATE_INTERRUPT_TABLE for every id using it and COMPLETION_WAIT. The
    /// device's MSI: address 0xFEE0_0000, data = the first index.
    ///
    /// Errors: `Unsupported` (remapping off, a destination above 255, a count that is
    /// not a power of two up to 32); `UnknownDevice`; `Busy` (its ids use two tables);
    /// `NoMemory`; `InvalidationTimeout` (the entries stay reserved).
    fn map_msi(
        &mut self,
        device: &DeviceDma,
        first_vector: u8,
        count: u32,
        dest_apic_id: u32,
    ) -> Result<RemappedMsi, IommuError> {
        let unsupported = IommuError::Unsupported { unit: device.unit };
        let index = self
            .units
            .iter()
            .position(|unit| unit.id == device.unit)
            .ok_or(IommuError::UnknownDevice)?;
        if !self.interrupt_remapping {
            return Err(unsupported);
        }
        let apic_id =
            sluice_iommu::check_msi_block(device.unit, first_vector, count, dest_apic_id)?;
        let unit = &mut self.units[index];
        if device.device.segment != unit.segment {
            return Err(IommuError::UnknownDevice);
        }
        if unit.failure.is_some() {
            return Err(IommuError::InvalidationTimeout { unit: unit.id });
        }
        let aliases = device
            .requester_ids
            .iter()
            .filter_map(|&rid| unit.ivrs_alias(rid));
        let rids = requester_ids(device, aliases)?;
        let (table, added) = unit.ensure_interrupt_table(&mut self.mem, &rids)?;
        let first = unit.interrupt_tables[table]
            .alloc(count)
            .ok_or(IommuError::NoMemory)?;
        let base = unit.interrupt_tables[table].base;
        for sub in 0..count {
            let entry = Irte::remapped(first_vector + sub as u8, apic_id);
            intremap::write_irte(&mut self.mem, base, first + sub, entry, unit.coherent);
        }
        for &rid in &added {
            let current = DeviceTableEntry::read(&self.mem, unit.device_table, rid);
            unit.write_dte(&mut self.mem, rid, current);
        }
        let mut commands: Vec<Command> = added
            .iter()
            .map(|&device_id| Command::InvalidateDevTabEntry { device_id })
            .collect();
        commands.extend(
            unit.interrupt_tables[table]
                .requester_ids
                .iter()
                .map(|&device_id| Command::InvalidateInterruptTable { device_id }),
        );
        unit.run(&mut self.mem, &self.config, &commands)?;
        Ok(RemappedMsi {
            unit: unit.id,
            first,
            count,
            address: intremap::MSI_ADDRESS,
            data: first,
        })
    }

    /// Clears the entries (RemapEn with the rest), sends INVALIDATE_INTERRUPT_TABLE for
    /// every id using the table and COMPLETION_WAIT, then frees them. After an error they
    /// stay reserved. `UnknownDevice` when `msi` is not a block of `device`'s table.
    fn unmap_msi(&mut self, device: &DeviceDma, msi: &RemappedMsi) -> Result<(), IommuError> {
        let index = self
            .units
            .iter()
            .position(|unit| unit.id == device.unit && unit.id == msi.unit)
            .ok_or(IommuError::UnknownDevice)?;
        let unit = &mut self.units[index];
        let rid = *device
            .requester_ids
            .first()
            .ok_or(IommuError::UnknownDevice)?;
        let table = unit
            .interrupt_table_of(rid)
            .ok_or(IommuError::UnknownDevice)?;
        if !unit.interrupt_tables[table].holds(msi.first, msi.count) {
            return Err(IommuError::UnknownDevice);
        }
        let base = unit.interrupt_tables[table].base;
        for sub in 0..msi.count {
            intremap::write_irte(
                &mut self.mem,
                base,
                msi.first + sub,
                Irte::default(),
                unit.coherent,
            );
        }
        let commands: Vec<Command> = unit.interrupt_tables[table]
            .requester_ids
            .iter()
            .map(|&device_id| Command::InvalidateInterruptTable { device_id })
            .collect();
        unit.run(&mut self.mem, &self.config, &commands)?;
        unit.interrupt_tables[table].free(msi.first, msi.count);
        Ok(())
    }

    /// The compatibility-format entry (fixed, physical, `dest_apic_id`, `vector`, the
    /// pin's trigger and polarity), with interrupt remapping on or off: the I/O APIC's
    /// device table entry keeps IV = 0, so its messages pass unremapped (see the module
    /// docs for why that is safe). `ioapic_id` and `pin` are not needed. `Unsupported`
    /// (the first unit) for an APIC id above 255.
    fn map_ioapic_pin(
        &mut self,
        ioapic_id: u8,
        pin: u8,
        vector: u8,
        dest_apic_id: u32,
        level_triggered: bool,
        active_low: bool,
    ) -> Result<IoApicPinRoute, IommuError> {
        let _ = (ioapic_id, pin);
        let first = self.units.first().map_or(UnitId(0), |unit| unit.id);
        IoApicPinRoute::compatibility(vector, dest_apic_id, level_triggered, active_low)
            .ok_or(IommuError::Unsupported { unit: first })
    }

    /// Compatibility-format routes hold nothing: `Ok`; anything else was not handed out
    /// here: `UnknownDevice`.
    fn unmap_ioapic_pin(&mut self, route: &IoApicPinRoute) -> Result<(), IommuError> {
        if route.is_compatibility() {
            Ok(())
        } else {
            Err(IommuError::UnknownDevice)
        }
    }

    /// The IVHD's Coherent flag (bit 5 of its flags byte: the unit's memory accesses
    /// snoop the CPU caches), as firmware states it; QEMU's IVHD leaves it clear. (Linux
    /// answers `IOMMU_CAP_CACHE_COHERENCY` with true on every AMD IOMMU, as it always
    /// sets Control.Coherent; this reports what the firmware says of the unit instead.)
    fn dma_coherent(&self, unit: UnitId) -> Option<bool> {
        self.unit(unit).map(|u| u.coherent)
    }

    /// Reads, for each DeviceID of `device` (own first, then its aliases, then the IVRS
    /// aliases of those: the ids attach writes), its device table entry from
    /// `device.unit`'s table, then the page-table entries the unit reads for `iova`, down
    /// to the leaf or the level where the walk stops; one line each (at most 11 per
    /// DeviceID, 8 DeviceIDs), with the event the unit would log. Memory as the unit reads
    /// it: the driver's bookkeeping only annotates. One line for an unknown domain or
    /// unit. See `driver/explain.rs`.
    fn explain(&self, domain: DomainHandle, device: &DeviceDma, iova: u64) -> Vec<String> {
        self.explain_dma(domain, device, iova)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_and_merge() {
        assert_eq!(
            subtract((0, 100), &[(10, 20), (15, 30), (90, 200)]),
            [(0, 10), (30, 90)]
        );
        let merged = merge_pending(alloc::vec![
            Pending {
                start: 0x3000,
                end: 0x4000,
                pde: false
            },
            Pending {
                start: 0x1000,
                end: 0x3000,
                pde: true
            },
            Pending {
                start: 0x8000,
                end: 0x9000,
                pde: false
            },
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(
            (merged[0].start, merged[0].end, merged[0].pde),
            (0x1000, 0x4000, true)
        );
    }
}
