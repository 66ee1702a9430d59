//! The I/O APIC (Intel 82093AA, ICH9 IOxAPIC; QEMU's `ioapic`, version 0x20, 24 pins):
//! the interrupt controller that turns interrupt *lines* — a device's INTx pin, routed
//! by the platform to a GSI — into messages to the local APICs.
//!
//! # Registers
//! Two MMIO registers give indirect access to everything else: write the register's
//! index to IOREGSEL (offset 0x00), then read or write it through IOWIN (0x10). Index 0
//! is the ID (APIC id in bits 27:24), 1 the VERSION (version in 7:0, the highest
//! redirection entry in 23:16), and from 0x10 on one 64-bit redirection entry per pin,
//! as two 32-bit halves (low at `0x10 + 2 * pin`, high one above). Version 0x20 (the
//! ICH's IOxAPIC) adds an EOI register at 0x40. The layout of an entry is in
//! [`sluice_iommu::ioapic`], shared with the IOMMU drivers.
//!
//! Because a register access is two MMIO accesses (select, then window), an access
//! interrupted between the two by another access would read or write the wrong register.
//! Each I/O APIC's registers therefore sit behind a lock, held for every select/window
//! pair, and [`IoApicRegisters`] is the only way to them (a fake in host tests).
//!
//! # GSIs
//! The MADT gives each I/O APIC a GSI base: its pin `p` is GSI `base + p`. [`IoApics`]
//! addresses everything by GSI and refuses GSIs no I/O APIC has.
//!
//! # Level-triggered lines and the interrupt handler
//! A device's INTx line is level-triggered and stays asserted until the device is told to
//! stop. The I/O APIC delivers a level interrupt once and sets the entry's Remote IRR;
//! the local APIC's EOI (broadcast to the I/O APICs for level interrupts) clears it, and
//! if the line is still asserted and the pin unmasked the I/O APIC delivers again at
//! once — forever, since the host does not service the device, its guest does. So the
//! host's interrupt handler masks the pin *before* its EOI ([`mask_level_vector`], called
//! from `lapic::handle_interrupt` for the vectors registered with
//! [`register_level_vector`]); the VFIO layer then silences the device (PCI COMMAND
//! Interrupt Disable) and unmasks the pin.
//!
//! Touching IOREGSEL/IOWIN from the handler is safe because the handler can never
//! interrupt host code in the middle of a select/window pair: host Rust code runs with
//! IF = 0 except in the windows `lapic.rs` documents (`take_pending_interrupts`,
//! `wait_for_interrupt`, a running guest), and none of them is entered while an I/O APIC
//! lock is held — the lock is only ever held inside this module's functions, which open
//! no window. The handler takes the lock with `try_lock` all the same: if it ever found
//! it held, it would leave the registers alone (rather than deadlock or corrupt the
//! interrupted pair) and count a miss ([`missed_level_masks`]).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use sluice_boot::start_info::MemoryRegion;
/// `compat_rte(vector, dest_apic_id, level_triggered, active_low, masked)`: a
/// compatibility-format entry, fixed delivery, physical destination. The builder (and the
/// entry's bit layout) lives in `sluice_iommu`, which the IOMMU drivers share.
pub use sluice_iommu::ioapic::{RedirectionEntry, compat_rte, rte};

pub use crate::acpi::madt::MAX_IO_APICS;
use crate::mmio::{MmioError, MmioRegion};

/// Register offsets and indices.
pub mod reg {
    /// MMIO: index register.
    pub const IOREGSEL: u64 = 0x00;
    /// MMIO: data window.
    pub const IOWIN: u64 = 0x10;
    /// MMIO: EOI register (version ≥ 0x20): writing a vector clears Remote IRR of the
    /// level-triggered entries with that vector.
    pub const EOI: u64 = 0x40;
    /// Bytes of MMIO used (up to the end of EOI).
    pub const MMIO_BYTES: u64 = 0x44;

    /// Indirect: ID (APIC id in bits 27:24).
    pub const ID: u8 = 0x00;
    /// Indirect: VERSION (version 7:0, max redirection entry 23:16).
    pub const VERSION: u8 = 0x01;
    /// Indirect: the first redirection entry's low half.
    pub const REDIRECTION_TABLE: u8 = 0x10;
    /// Redirection entries an 8-bit IOREGSEL can address: `0x10 + 2 * 119 + 1 = 0xFF`.
    pub const MAX_PINS: u16 = 120;

    /// Index of `pin`'s low half; `None` beyond what IOREGSEL can address.
    pub const fn rte_low(pin: u8) -> Option<u8> {
        if (pin as u16) < MAX_PINS {
            Some(REDIRECTION_TABLE + 2 * pin)
        } else {
            None
        }
    }

    /// Index of `pin`'s high half.
    pub const fn rte_high(pin: u8) -> Option<u8> {
        match rte_low(pin) {
            Some(low) => Some(low + 1),
            None => None,
        }
    }
}

/// The ID register, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRegister {
    /// Bits 27:24: the APIC id the I/O APIC answers to (the MADT's id, normally).
    pub apic_id: u8,
}

impl IdRegister {
    pub const fn decode(raw: u32) -> Self {
        Self {
            apic_id: ((raw >> 24) & 0xf) as u8,
        }
    }
}

/// The VERSION register, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    /// Bits 7:0: 0x11 for the 82093AA, 0x20 for the ICH's IOxAPIC (with an EOI register).
    pub version: u8,
    /// Bits 23:16: the highest pin (pins = this + 1).
    pub max_redirection_entry: u8,
}

impl Version {
    pub const fn decode(raw: u32) -> Self {
        Self {
            version: raw as u8,
            max_redirection_entry: (raw >> 16) as u8,
        }
    }

    /// Pins, limited to what IOREGSEL can address ([`reg::MAX_PINS`]).
    pub const fn pins(&self) -> u16 {
        let pins = self.max_redirection_entry as u16 + 1;
        if pins > reg::MAX_PINS {
            reg::MAX_PINS
        } else {
            pins
        }
    }

    /// Version 0x20 and later have the EOI register.
    pub const fn has_eoi_register(&self) -> bool {
        self.version >= 0x20
    }
}

/// Access to one I/O APIC's registers: MMIO on the machine, a recording fake in tests.
/// Each call is one indirect access (select, then window); callers hold the unit's lock.
pub trait IoApicRegisters {
    /// Read indirect register `reg`: IOREGSEL = reg, then read IOWIN.
    fn read(&self, reg: u8) -> u32;
    /// Write indirect register `reg`: IOREGSEL = reg, then write IOWIN.
    fn write(&self, reg: u8, value: u32);
    /// Write the EOI register (only on version ≥ 0x20).
    fn eoi(&self, vector: u32);
}

/// An I/O APIC's registers in memory: the page holding them and their offset in it
/// (I/O APICs sit at 1 KiB granularity, e.g. 0xFEC00000, 0xFEC01000).
pub struct MmioIoApicRegisters {
    region: MmioRegion,
    offset: u64,
}

impl IoApicRegisters for MmioIoApicRegisters {
    fn read(&self, reg: u8) -> u32 {
        self.region
            .write32(self.offset + reg::IOREGSEL, u32::from(reg));
        self.region
            .read32(self.offset + reg::IOWIN)
            .unwrap_or(u32::MAX)
    }

    fn write(&self, reg: u8, value: u32) {
        self.region
            .write32(self.offset + reg::IOREGSEL, u32::from(reg));
        self.region.write32(self.offset + reg::IOWIN, value);
    }

    fn eoi(&self, vector: u32) {
        self.region.write32(self.offset + reg::EOI, vector);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoApicError {
    /// The MADT lists no I/O APIC.
    NoIoApics,
    /// Its registers cannot be mapped.
    Mmio {
        id: u8,
        error: MmioError,
    },
    /// Its registers would cross a page boundary.
    Misplaced {
        id: u8,
        address: u64,
    },
    /// VERSION reads all ones: nothing answers at that address.
    Absent {
        id: u8,
        address: u64,
    },
    /// More I/O APICs than [`MAX_IO_APICS`] (the MADT parser keeps no more).
    TooMany {
        count: usize,
    },
    /// Two I/O APICs (ids `first`, `second`) at one address: one I/O APIC listed twice,
    /// whose pins would each have two GSIs.
    DuplicateAddress {
        first: u8,
        second: u8,
        address: u64,
    },
    /// Two I/O APICs (at addresses `first`, `second`) with one id.
    DuplicateId {
        id: u8,
        first: u64,
        second: u64,
    },
    /// Two I/O APICs claim the same GSI.
    OverlappingGsis {
        first: u8,
        second: u8,
        gsi: u32,
    },
    /// No I/O APIC has this GSI.
    UnknownGsi(u32),
    /// The vector is already the level-triggered line of another GSI.
    VectorTaken {
        vector: u8,
        gsi: u32,
    },
    AlreadyInitialised,
    NotInitialised,
}

impl core::fmt::Display for IoApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::NoIoApics => f.write_str("the MADT lists no I/O APIC"),
            Self::Mmio { id, error } => write!(f, "I/O APIC {id} registers: {error}"),
            Self::Misplaced { id, address } => {
                write!(f, "I/O APIC {id} at {address:#x}: registers cross a page")
            }
            Self::Absent { id, address } => {
                write!(
                    f,
                    "I/O APIC {id} at {address:#x} does not answer (VERSION reads all ones)"
                )
            }
            Self::TooMany { count } => {
                write!(
                    f,
                    "{count} I/O APICs, more than the {MAX_IO_APICS} supported"
                )
            }
            Self::DuplicateAddress {
                first,
                second,
                address,
            } => write!(
                f,
                "I/O APICs {first} and {second} have the same MADT I/O APIC Address {address:#x}"
            ),
            Self::DuplicateId { id, first, second } => write!(
                f,
                "I/O APICs at {first:#x} and {second:#x} have the same MADT I/O APIC ID {id}"
            ),
            Self::OverlappingGsis { first, second, gsi } => {
                write!(f, "I/O APICs {first} and {second} both claim GSI {gsi}")
            }
            Self::UnknownGsi(gsi) => write!(f, "no I/O APIC has GSI {gsi}"),
            Self::VectorTaken { vector, gsi } => {
                write!(f, "vector {vector:#x} is already GSI {gsi}'s line")
            }
            Self::AlreadyInitialised => f.write_str("I/O APICs already initialised"),
            Self::NotInitialised => f.write_str("I/O APICs not initialised"),
        }
    }
}

/// One I/O APIC: who it is (from the MADT), what it is (ID and VERSION, read once) and
/// its registers behind their lock.
pub struct IoApic<R = MmioIoApicRegisters> {
    id: u8,
    address: u64,
    gsi_base: u32,
    id_register: IdRegister,
    version: Version,
    regs: spin::Mutex<R>,
}

impl<R: IoApicRegisters> IoApic<R> {
    /// The I/O APIC the MADT calls `id`, at `address`, with pins from `gsi_base` on.
    /// Reads ID and VERSION; `Absent` when VERSION reads all ones. Writes nothing.
    pub fn new(id: u8, address: u64, gsi_base: u32, regs: R) -> Result<Self, IoApicError> {
        let raw_version = regs.read(reg::VERSION);
        if raw_version == u32::MAX {
            return Err(IoApicError::Absent { id, address });
        }
        let id_register = IdRegister::decode(regs.read(reg::ID));
        Ok(Self {
            id,
            address,
            gsi_base,
            id_register,
            version: Version::decode(raw_version),
            regs: spin::Mutex::new(regs),
        })
    }

    /// The MADT's I/O APIC id (also the DMAR's and IVRS's enumeration id).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Physical address of its registers.
    pub fn address(&self) -> u64 {
        self.address
    }

    pub fn gsi_base(&self) -> u32 {
        self.gsi_base
    }

    /// The ID register as read at construction.
    pub fn id_register(&self) -> IdRegister {
        self.id_register
    }

    /// The VERSION register as read at construction.
    pub fn version(&self) -> Version {
        self.version
    }

    pub fn pins(&self) -> u16 {
        self.version.pins()
    }

    /// Its last GSI (inclusive).
    pub fn gsi_last(&self) -> u32 {
        self.gsi_base
            .saturating_add(u32::from(self.pins()).saturating_sub(1))
    }

    /// `gsi`'s pin, if it is one of this I/O APIC's.
    pub fn pin_of(&self, gsi: u32) -> Option<u8> {
        let pin = gsi.checked_sub(self.gsi_base)?;
        if pin < u32::from(self.pins()) {
            u8::try_from(pin).ok()
        } else {
            None
        }
    }

    /// Reads `pin`'s redirection entry (high half, then low half).
    fn read_rte(regs: &R, pin: u8) -> Option<u64> {
        let (low, high) = (reg::rte_low(pin)?, reg::rte_high(pin)?);
        let hi = regs.read(high);
        let lo = regs.read(low);
        Some(u64::from(hi) << 32 | u64::from(lo))
    }

    /// Writes `pin`'s entry while keeping it masked throughout: low half masked (and
    /// edge: see [`IoApics::route`]), high half, then the final low half.
    fn write_rte(regs: &R, pin: u8, entry: u64) {
        let (Some(low), Some(high)) = (reg::rte_low(pin), reg::rte_high(pin)) else {
            return;
        };
        let entry = entry & !rte::READ_ONLY;
        let masked_edge = (entry | rte::MASKED) & !rte::LEVEL;
        regs.write(low, masked_edge as u32);
        regs.write(high, (entry >> 32) as u32);
        regs.write(low, entry as u32);
    }

    /// Sets or clears `pin`'s mask bit (read, modify, write the low half).
    fn set_mask(regs: &R, pin: u8, masked: bool) {
        let Some(low) = reg::rte_low(pin) else {
            return;
        };
        let value = u64::from(regs.read(low)) & !rte::READ_ONLY;
        let value = if masked {
            value | rte::MASKED
        } else {
            value & !rte::MASKED
        };
        regs.write(low, value as u32);
    }

    /// Masks every pin and resets its entry to "masked, vector 0, edge": firmware may
    /// have left pins routed, and a level entry may carry a stale Remote IRR, which would
    /// keep the pin from ever delivering again. Masked first (with its own contents), so
    /// it stops at once; then, if Remote IRR is set, switched to edge while masked, which
    /// drops it (as Linux's `clear_IO_APIC_pin` does); then the reset entry.
    fn reset_all(&self) {
        let regs = self.regs.lock();
        for pin in 0..self.pins() {
            let pin = pin as u8;
            let Some(low) = reg::rte_low(pin) else {
                continue;
            };
            Self::set_mask(&regs, pin, true);
            let current = u64::from(regs.read(low));
            if current & rte::REMOTE_IRR != 0 {
                let edge = (current & !rte::READ_ONLY & !rte::LEVEL) | rte::MASKED;
                regs.write(low, edge as u32);
            }
            Self::write_rte(&regs, pin, rte::MASKED);
        }
    }
}

/// Every I/O APIC of the machine, addressed by GSI.
pub struct IoApics<R = MmioIoApicRegisters> {
    units: Vec<IoApic<R>>,
}

impl<R: IoApicRegisters> IoApics<R> {
    /// The set; `NoIoApics` when empty, `TooMany` beyond [`MAX_IO_APICS`],
    /// `DuplicateAddress`/`DuplicateId` when two share an address or an id,
    /// `OverlappingGsis` when two claim one GSI.
    pub fn new(units: Vec<IoApic<R>>) -> Result<Self, IoApicError> {
        if units.is_empty() {
            return Err(IoApicError::NoIoApics);
        }
        check_distinct(units.iter().map(|u| (u.id, u.address)), units.len())?;
        // At most MAX_IO_APICS, so comparing every pair is bounded.
        for (i, a) in units.iter().enumerate() {
            for b in &units[i + 1..] {
                let first = a.gsi_base.max(b.gsi_base);
                if first <= a.gsi_last().min(b.gsi_last()) {
                    return Err(IoApicError::OverlappingGsis {
                        first: a.id,
                        second: b.id,
                        gsi: first,
                    });
                }
            }
        }
        Ok(Self { units })
    }

    pub fn units(&self) -> &[IoApic<R>] {
        &self.units
    }

    fn unit_of(&self, gsi: u32) -> Option<(&IoApic<R>, u8)> {
        self.units
            .iter()
            .find_map(|unit| unit.pin_of(gsi).map(|pin| (unit, pin)))
    }

    /// `(I/O APIC id, pin)` of `gsi`, if some I/O APIC has it.
    pub fn locate(&self, gsi: u32) -> Option<(u8, u8)> {
        self.unit_of(gsi).map(|(unit, pin)| (unit.id, pin))
    }

    /// Programs `gsi`'s whole redirection entry with `entry` (see
    /// [`sluice_iommu::ioapic`]). The pin stays masked while the halves change: first the
    /// low half with the new contents but masked and *edge* — a masked edge entry cannot
    /// fire, and switching to edge drops a Remote IRR a previous level route left behind
    /// (else the pin would never deliver again) — then the high half, then the final low
    /// half. The read-only bits of `entry` are ignored. `UnknownGsi` when no I/O APIC has
    /// it.
    pub fn route(&self, gsi: u32, entry: u64) -> Result<(), IoApicError> {
        let (unit, pin) = self.unit_of(gsi).ok_or(IoApicError::UnknownGsi(gsi))?;
        IoApic::write_rte(&*unit.regs.lock(), pin, entry);
        Ok(())
    }

    /// Masks `gsi`'s pin: it is not delivered while masked (a level line still asserted
    /// is delivered when unmasked).
    pub fn mask(&self, gsi: u32) -> Result<(), IoApicError> {
        let (unit, pin) = self.unit_of(gsi).ok_or(IoApicError::UnknownGsi(gsi))?;
        IoApic::set_mask(&*unit.regs.lock(), pin, true);
        Ok(())
    }

    /// Unmasks `gsi`'s pin.
    pub fn unmask(&self, gsi: u32) -> Result<(), IoApicError> {
        let (unit, pin) = self.unit_of(gsi).ok_or(IoApicError::UnknownGsi(gsi))?;
        IoApic::set_mask(&*unit.regs.lock(), pin, false);
        Ok(())
    }

    /// Ends a level interrupt at the I/O APIC of `gsi`: clears Remote IRR of its
    /// level-triggered entries whose vector field is `vector` (the entry's vector field,
    /// which under VT-d remapping is the remapping entry's vector too). Not needed when
    /// the local APIC's EOI is broadcast (a level interrupt delivered as level); needed
    /// when it is not (e.g. a level pin delivered as edge through AMD-Vi remapping).
    ///
    /// Version ≥ 0x20: the EOI register. Older (the 82093AA, version 0x11, has none):
    /// the pin's entry is switched to edge while masked and then restored, which clears
    /// Remote IRR (what Linux does, and what QEMU models).
    pub fn eoi(&self, gsi: u32, vector: u8) -> Result<(), IoApicError> {
        let (unit, pin) = self.unit_of(gsi).ok_or(IoApicError::UnknownGsi(gsi))?;
        let regs = unit.regs.lock();
        if unit.version.has_eoi_register() {
            regs.eoi(u32::from(vector));
            return Ok(());
        }
        let Some(low) = reg::rte_low(pin) else {
            return Ok(());
        };
        let current = u64::from(regs.read(low)) & !rte::READ_ONLY;
        if current & rte::LEVEL != 0 && current as u8 == vector {
            regs.write(low, ((current | rte::MASKED) & !rte::LEVEL) as u32);
            regs.write(low, current as u32);
        }
        Ok(())
    }

    /// `gsi`'s redirection entry as the I/O APIC holds it (Remote IRR and delivery
    /// status included); `None` for an unknown GSI.
    pub fn read_rte(&self, gsi: u32) -> Option<u64> {
        let (unit, pin) = self.unit_of(gsi)?;
        IoApic::read_rte(&*unit.regs.lock(), pin)
    }

    /// Masks and resets every pin of every I/O APIC (see `IoApic::reset_all`).
    pub fn mask_all(&self) {
        for unit in &self.units {
            unit.reset_all();
        }
    }

    /// From the interrupt handler: mask the pin of `vector` if `vectors` says it is a
    /// level-triggered line. `false` when it is not one, its GSI is unknown, or the
    /// registers were busy (see the module docs; counted in [`missed_level_masks`]).
    pub fn mask_level_vector(&self, vectors: &LevelVectors, vector: u8) -> bool {
        let Some((unit, pin)) = vectors.gsi(vector).and_then(|gsi| self.unit_of(gsi)) else {
            return false;
        };
        let Some(regs) = unit.regs.try_lock() else {
            MISSED_LEVEL_MASKS.fetch_add(1, Ordering::SeqCst);
            return false;
        };
        IoApic::set_mask(&*regs, pin, true);
        LEVEL_MASKS.fetch_add(1, Ordering::SeqCst);
        true
    }
}

/// `TooMany` when `count` exceeds [`MAX_IO_APICS`]; else the first pair of `(id, address)`
/// that shares an address (`DuplicateAddress`) or an id (`DuplicateId`), if any. The cap
/// is checked first, so comparing every pair costs at most `MAX_IO_APICS²/2`.
fn check_distinct(
    units: impl Iterator<Item = (u8, u64)> + Clone,
    count: usize,
) -> Result<(), IoApicError> {
    if count > MAX_IO_APICS {
        return Err(IoApicError::TooMany { count });
    }
    for (i, (id, address)) in units.clone().enumerate() {
        for (first_id, first_address) in units.clone().take(i) {
            if first_address == address {
                return Err(IoApicError::DuplicateAddress {
                    first: first_id,
                    second: id,
                    address,
                });
            }
            if first_id == id {
                return Err(IoApicError::DuplicateId {
                    id,
                    first: first_address,
                    second: address,
                });
            }
        }
    }
    Ok(())
}

/// The checks of [`IoApics::new`] that need no registers (count, distinct addresses and
/// ids), on the MADT's entries: [`init`] runs them before mapping anything.
pub fn check_madt_entries(io_apics: &[crate::acpi::madt::IoApic]) -> Result<(), IoApicError> {
    let units = io_apics.iter().map(|e| (e.id, u64::from(e.address)));
    check_distinct(units, io_apics.len())
}

/// Which host vectors are level-triggered I/O APIC lines, and of which GSI: read by the
/// interrupt handler, so lock-free (one atomic per vector: 0, or `REGISTERED | gsi`).
pub struct LevelVectors {
    slots: [AtomicU64; 256],
}

impl Default for LevelVectors {
    fn default() -> Self {
        Self::new()
    }
}

impl LevelVectors {
    const REGISTERED: u64 = 1 << 32;

    pub const fn new() -> Self {
        Self {
            slots: [const { AtomicU64::new(0) }; 256],
        }
    }

    /// Makes `vector` `gsi`'s line. Registering the same pair again is fine;
    /// `VectorTaken` when the vector is another GSI's.
    pub fn register(&self, vector: u8, gsi: u32) -> Result<(), IoApicError> {
        let value = Self::REGISTERED | u64::from(gsi);
        match self.slots[usize::from(vector)].compare_exchange(
            0,
            value,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => Ok(()),
            Err(current) if current == value => Ok(()),
            Err(current) => Err(IoApicError::VectorTaken {
                vector,
                gsi: current as u32,
            }),
        }
    }

    /// `vector` is no line any more; returns the GSI it was.
    pub fn unregister(&self, vector: u8) -> Option<u32> {
        let old = self.slots[usize::from(vector)].swap(0, Ordering::SeqCst);
        (old & Self::REGISTERED != 0).then_some(old as u32)
    }

    /// The GSI whose line `vector` is.
    pub fn gsi(&self, vector: u8) -> Option<u32> {
        let value = self.slots[usize::from(vector)].load(Ordering::SeqCst);
        (value & Self::REGISTERED != 0).then_some(value as u32)
    }
}

static IO_APICS: spin::Once<IoApics> = spin::Once::new();
static LEVEL_VECTORS: LevelVectors = LevelVectors::new();
/// Pins masked by the interrupt handler since boot.
static LEVEL_MASKS: AtomicU64 = AtomicU64::new(0);
/// Times the handler found an I/O APIC's registers busy (never expected).
static MISSED_LEVEL_MASKS: AtomicU64 = AtomicU64::new(0);

/// Finds the MADT's I/O APICs (`io_apics`), reads ID and VERSION of each, checks their
/// GSI ranges, masks and resets every pin, and keeps them for [`get`]. Call once, after
/// the heap is up.
pub fn init(
    io_apics: &[crate::acpi::madt::IoApic],
    map: &[MemoryRegion],
) -> Result<&'static IoApics, IoApicError> {
    if IO_APICS.is_completed() {
        return Err(IoApicError::AlreadyInitialised);
    }
    check_madt_entries(io_apics)?;
    let mut units = Vec::with_capacity(io_apics.len());
    for entry in io_apics {
        let (id, address) = (entry.id, u64::from(entry.address));
        let page = address & !0xfff;
        let offset = address & 0xfff;
        if offset + reg::MMIO_BYTES > 0x1000 {
            return Err(IoApicError::Misplaced { id, address });
        }
        // SAFETY: the MADT's I/O APIC address; check_range (inside `new`) keeps the page
        // clear of RAM and inside the identity map, which maps it uncached. Nothing else
        // programs the I/O APIC: the kernel owns it from here on.
        let region = unsafe { MmioRegion::new(page, 0x1000, map) }
            .map_err(|error| IoApicError::Mmio { id, error })?;
        let regs = MmioIoApicRegisters { region, offset };
        units.push(IoApic::new(id, address, entry.gsi_base, regs)?);
    }
    let set = IoApics::new(units)?;
    set.mask_all();
    Ok(IO_APICS.call_once(|| set))
}

/// The I/O APICs, once [`init`] succeeded.
pub fn get() -> Option<&'static IoApics> {
    IO_APICS.get()
}

/// Makes host vector `vector` `gsi`'s level-triggered line: from now on the interrupt
/// handler masks `gsi`'s pin before its EOI. `NotInitialised` before [`init`],
/// `UnknownGsi`, `VectorTaken`.
pub fn register_level_vector(vector: u8, gsi: u32) -> Result<(), IoApicError> {
    let apics = get().ok_or(IoApicError::NotInitialised)?;
    apics.locate(gsi).ok_or(IoApicError::UnknownGsi(gsi))?;
    LEVEL_VECTORS.register(vector, gsi)
}

/// `vector` is no line any more (mask its pin first). Returns the GSI it was.
pub fn unregister_level_vector(vector: u8) -> Option<u32> {
    LEVEL_VECTORS.unregister(vector)
}

/// The GSI whose line `vector` is, if registered.
pub fn level_vector_gsi(vector: u8) -> Option<u32> {
    LEVEL_VECTORS.gsi(vector)
}

/// For the interrupt handler (`lapic::handle_interrupt`), before the EOI: masks the pin
/// of `vector` if it is a registered level-triggered line. `true` when it masked one.
pub fn mask_level_vector(vector: u8) -> bool {
    get().is_some_and(|apics| apics.mask_level_vector(&LEVEL_VECTORS, vector))
}

/// Pins the interrupt handler masked since boot.
pub fn level_masks() -> u64 {
    LEVEL_MASKS.load(Ordering::SeqCst)
}

/// Times the handler could not mask a line because its I/O APIC's registers were in use
/// (the interrupt discipline makes this impossible; a non-zero count is a bug).
pub fn missed_level_masks() -> u64 {
    MISSED_LEVEL_MASKS.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::rc::Rc;
    use alloc::string::ToString;
    use alloc::vec;
    use core::cell::RefCell;

    /// One indirect access, as the fake saw it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Access {
        Read(u8),
        Write(u8, u32),
        Eoi(u32),
    }

    /// An I/O APIC model: ID, VERSION, `pins` entries with read-only bits, Remote IRR
    /// cleared by an EOI of its vector (level entries) or by switching to edge, as QEMU's
    /// `ioapic.c` does; every access recorded.
    struct State {
        id: u8,
        version: u32,
        entries: Vec<u64>,
        log: Vec<Access>,
    }

    #[derive(Clone)]
    struct Fake(Rc<RefCell<State>>);

    impl Fake {
        fn new(id: u8, version: u8, pins: u8) -> Self {
            Self(Rc::new(RefCell::new(State {
                id,
                version: u32::from(version) | u32::from(pins - 1) << 16,
                // Reset state: masked.
                entries: vec![rte::MASKED; usize::from(pins)],
                log: Vec::new(),
            })))
        }

        fn log(&self) -> Vec<Access> {
            self.0.borrow().log.clone()
        }

        fn clear_log(&self) {
            self.0.borrow_mut().log.clear();
        }

        fn entry(&self, pin: usize) -> u64 {
            self.0.borrow().entries[pin]
        }

        fn set_entry(&self, pin: usize, value: u64) {
            self.0.borrow_mut().entries[pin] = value;
        }
    }

    impl IoApicRegisters for Fake {
        fn read(&self, reg: u8) -> u32 {
            let mut s = self.0.borrow_mut();
            s.log.push(Access::Read(reg));
            match reg {
                reg::ID => u32::from(s.id) << 24,
                reg::VERSION => s.version,
                r if r >= reg::REDIRECTION_TABLE => {
                    let index = usize::from((r - reg::REDIRECTION_TABLE) / 2);
                    let entry = s.entries.get(index).copied().unwrap_or(0);
                    if r % 2 == 1 {
                        (entry >> 32) as u32
                    } else {
                        entry as u32
                    }
                }
                _ => 0,
            }
        }

        fn write(&self, reg: u8, value: u32) {
            let mut s = self.0.borrow_mut();
            s.log.push(Access::Write(reg, value));
            if reg < reg::REDIRECTION_TABLE {
                return;
            }
            let index = usize::from((reg - reg::REDIRECTION_TABLE) / 2);
            let Some(entry) = s.entries.get_mut(index) else {
                return;
            };
            let ro = *entry & rte::READ_ONLY;
            let new = if reg % 2 == 1 {
                (*entry & 0xffff_ffff) | u64::from(value) << 32
            } else {
                (*entry & !0xffff_ffff) | u64::from(value)
            };
            let mut new = (new & !rte::READ_ONLY) | ro;
            if new & rte::LEVEL == 0 {
                new &= !rte::REMOTE_IRR;
            }
            *entry = new;
        }

        fn eoi(&self, vector: u32) {
            let mut s = self.0.borrow_mut();
            s.log.push(Access::Eoi(vector));
            for entry in &mut s.entries {
                if *entry & 0xff == u64::from(vector) && *entry & rte::LEVEL != 0 {
                    *entry &= !rte::REMOTE_IRR;
                }
            }
        }
    }

    /// Two I/O APICs as a two-controller machine has them: id 0 (24 pins, GSI 0..=23)
    /// and id 1 (version 0x11, 8 pins, GSI 24..=31).
    fn two() -> (IoApics<Fake>, Fake, Fake) {
        let (a, b) = (Fake::new(0, 0x20, 24), Fake::new(1, 0x11, 8));
        let units = vec![
            IoApic::new(0, 0xfec0_0000, 0, a.clone()).unwrap(),
            IoApic::new(1, 0xfec0_1000, 24, b.clone()).unwrap(),
        ];
        (IoApics::new(units).unwrap(), a, b)
    }

    #[test]
    fn registers_decode() {
        let v = Version::decode(0x0017_0020);
        assert_eq!(
            (v.version, v.max_redirection_entry, v.pins()),
            (0x20, 23, 24)
        );
        assert!(v.has_eoi_register());
        let old = Version::decode(0x0017_0011);
        assert!(!old.has_eoi_register());
        assert_eq!(
            Version::decode(0x00ff_0020).pins(),
            reg::MAX_PINS,
            "IOREGSEL limit"
        );
        assert_eq!(IdRegister::decode(0x0200_0000).apic_id, 2);
        assert_eq!(
            (reg::rte_low(0), reg::rte_high(0)),
            (Some(0x10), Some(0x11))
        );
        assert_eq!(
            (reg::rte_low(23), reg::rte_high(23)),
            (Some(0x3e), Some(0x3f))
        );
        assert_eq!(reg::rte_low(119), Some(0xfe));
        assert_eq!((reg::rte_low(120), reg::rte_high(200)), (None, None));
    }

    #[test]
    fn construction_reads_id_and_version_once() {
        let (apics, a, _) = two();
        let unit = &apics.units()[0];
        assert_eq!(
            (unit.id(), unit.address(), unit.gsi_base()),
            (0, 0xfec0_0000, 0)
        );
        assert_eq!((unit.pins(), unit.gsi_last()), (24, 23));
        assert_eq!(unit.id_register().apic_id, 0);
        assert_eq!(apics.units()[1].gsi_last(), 31);
        assert_eq!(a.log(), [Access::Read(reg::VERSION), Access::Read(reg::ID)]);
        // Nothing answers: refused by name.
        let absent = Fake::new(2, 0x20, 24);
        absent.0.borrow_mut().version = u32::MAX;
        assert_eq!(
            IoApic::new(2, 0xfec0_2000, 32, absent).err(),
            Some(IoApicError::Absent {
                id: 2,
                address: 0xfec0_2000
            })
        );
    }

    #[test]
    fn gsis_locate_pins_across_io_apics() {
        let (apics, _, _) = two();
        assert_eq!(apics.locate(0), Some((0, 0)));
        assert_eq!(apics.locate(23), Some((0, 23)));
        assert_eq!(apics.locate(24), Some((1, 0)));
        assert_eq!(apics.locate(31), Some((1, 7)));
        assert_eq!(apics.locate(32), None);
        assert_eq!(apics.locate(u32::MAX), None);
        // Out of range: errors, never a panic, nothing written.
        assert_eq!(apics.route(32, 0), Err(IoApicError::UnknownGsi(32)));
        assert_eq!(apics.mask(40), Err(IoApicError::UnknownGsi(40)));
        assert_eq!(
            apics.unmask(u32::MAX),
            Err(IoApicError::UnknownGsi(u32::MAX))
        );
        assert_eq!(apics.eoi(99, 0x41), Err(IoApicError::UnknownGsi(99)));
        assert_eq!(apics.read_rte(32), None);
        // A GSI base that is not 0 and a gap between I/O APICs.
        let c = Fake::new(4, 0x20, 16);
        let apics = IoApics::new(vec![IoApic::new(4, 0xfec1_0000, 48, c).unwrap()]).unwrap();
        assert_eq!(apics.locate(47), None);
        assert_eq!(apics.locate(48), Some((4, 0)));
        assert_eq!(apics.locate(63), Some((4, 15)));
        assert_eq!(apics.locate(64), None);
    }

    #[test]
    fn overlapping_or_missing_io_apics_are_refused() {
        let units = vec![
            IoApic::new(0, 0xfec0_0000, 0, Fake::new(0, 0x20, 24)).unwrap(),
            IoApic::new(1, 0xfec0_1000, 16, Fake::new(1, 0x20, 24)).unwrap(),
        ];
        assert_eq!(
            IoApics::new(units).err(),
            Some(IoApicError::OverlappingGsis {
                first: 0,
                second: 1,
                gsi: 16
            })
        );
        assert_eq!(
            IoApics::<Fake>::new(Vec::new()).err(),
            Some(IoApicError::NoIoApics)
        );
    }

    #[test]
    fn duplicate_or_too_many_io_apics_are_refused() {
        let unit = |id: u8, address: u64, gsi_base: u32| {
            IoApic::new(id, address, gsi_base, Fake::new(id, 0x20, 24)).unwrap()
        };
        // One I/O APIC listed twice with distinct GSI ranges: two GSIs per pin.
        assert_eq!(
            IoApics::new(vec![unit(0, 0xfec0_0000, 0), unit(1, 0xfec0_0000, 24)]).err(),
            Some(IoApicError::DuplicateAddress {
                first: 0,
                second: 1,
                address: 0xfec0_0000
            })
        );
        // Two I/O APICs with one id (the id the DMAR and IVRS name them by).
        assert_eq!(
            IoApics::new(vec![unit(3, 0xfec0_0000, 0), unit(3, 0xfec0_1000, 24)]).err(),
            Some(IoApicError::DuplicateId {
                id: 3,
                first: 0xfec0_0000,
                second: 0xfec0_1000
            })
        );
        let many = |n: u32| {
            (0..n)
                .map(|i| unit(i as u8, 0xfec0_0000 + u64::from(i) * 0x1000, 24 * i))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            IoApics::new(many(MAX_IO_APICS as u32 + 1)).err(),
            Some(IoApicError::TooMany {
                count: MAX_IO_APICS + 1
            })
        );
        let apics = IoApics::new(many(MAX_IO_APICS as u32)).unwrap();
        assert_eq!(apics.locate(24 * 31 + 5), Some((31, 5)));
        // The same checks on the MADT's entries, before anything is mapped.
        let entry = |id, address, gsi_base| crate::acpi::madt::IoApic {
            id,
            address,
            gsi_base,
        };
        assert_eq!(
            check_madt_entries(&[entry(0, 0xfec0_0000, 0), entry(1, 0xfec0_0000, 24)]),
            Err(IoApicError::DuplicateAddress {
                first: 0,
                second: 1,
                address: 0xfec0_0000
            })
        );
        assert_eq!(check_madt_entries(&[entry(0, 0xfec0_0000, 0)]), Ok(()));
        assert_eq!(
            IoApicError::DuplicateId {
                id: 3,
                first: 0xfec0_0000,
                second: 0xfec0_1000
            }
            .to_string(),
            "I/O APICs at 0xfec00000 and 0xfec01000 have the same MADT I/O APIC ID 3"
        );
    }

    #[test]
    fn route_keeps_the_pin_masked_while_the_halves_change() {
        let (apics, a, b) = two();
        a.clear_log();
        // GSI 23: vector 0x41, APIC 2, level, active high, unmasked.
        let entry = compat_rte(0x41, 2, true, false, false);
        assert_eq!(entry, 0x0200_0000_0000_8041);
        apics.route(23, entry).unwrap();
        assert_eq!(
            a.log(),
            [
                // Low half first: the new contents, masked and edge.
                Access::Write(0x3e, 0x0001_0041),
                Access::Write(0x3f, 0x0200_0000),
                Access::Write(0x3e, 0x0000_8041),
            ]
        );
        assert_eq!(apics.read_rte(23), Some(entry));
        assert!(b.log().len() == 2, "the other I/O APIC untouched");
        // The read-only bits of the argument are not written.
        a.clear_log();
        apics
            .route(23, entry | rte::REMOTE_IRR | rte::DELIVERY_PENDING)
            .unwrap();
        assert_eq!(a.log()[2], Access::Write(0x3e, 0x0000_8041));
        // On the second I/O APIC, pin 2 = GSI 26.
        apics
            .route(26, compat_rte(0x50, 0, true, true, true))
            .unwrap();
        assert_eq!(b.entry(2), 0x0001_a050);
    }

    #[test]
    fn a_stale_remote_irr_is_dropped_by_route() {
        let (apics, a, _) = two();
        // A level route whose interrupt was never EOIed.
        a.set_entry(5, compat_rte(0x41, 0, true, false, true) | rte::REMOTE_IRR);
        apics
            .route(5, compat_rte(0x41, 0, true, false, false))
            .unwrap();
        let entry = RedirectionEntry(apics.read_rte(5).unwrap());
        assert!(!entry.remote_irr() && !entry.masked() && entry.level_triggered());
    }

    #[test]
    fn mask_and_unmask_touch_only_the_mask_bit() {
        let (apics, a, _) = two();
        let entry = compat_rte(0x41, 0, true, true, false);
        apics.route(7, entry).unwrap();
        a.set_entry(7, entry | rte::REMOTE_IRR);
        a.clear_log();
        apics.mask(7).unwrap();
        // Read, then write with bit 16 set and the read-only bits not echoed.
        assert_eq!(
            a.log(),
            [Access::Read(0x1e), Access::Write(0x1e, 0x0001_a041)]
        );
        assert_eq!(a.entry(7), entry | rte::MASKED | rte::REMOTE_IRR);
        apics.unmask(7).unwrap();
        assert_eq!(a.entry(7), entry | rte::REMOTE_IRR);
        assert_eq!(a.log()[3], Access::Write(0x1e, 0x0000_a041));
    }

    #[test]
    fn eoi_uses_the_register_or_the_edge_toggle() {
        let (apics, a, b) = two();
        // Version 0x20: the EOI register, with the vector.
        let entry = compat_rte(0x41, 0, true, false, true);
        a.set_entry(3, entry | rte::REMOTE_IRR);
        a.clear_log();
        apics.eoi(3, 0x41).unwrap();
        assert_eq!(a.log(), [Access::Eoi(0x41)]);
        assert!(!RedirectionEntry(a.entry(3)).remote_irr());
        // Version 0x11: no EOI register; edge while masked, then the entry back.
        let entry = compat_rte(0x42, 0, true, false, false);
        b.set_entry(1, entry | rte::REMOTE_IRR);
        b.clear_log();
        apics.eoi(25, 0x42).unwrap();
        assert_eq!(
            b.log(),
            [
                Access::Read(0x12),
                Access::Write(0x12, 0x0001_0042),
                Access::Write(0x12, 0x0000_8042),
            ]
        );
        assert_eq!(b.entry(1), entry, "Remote IRR clear, the entry as it was");
        // Another vector or an edge entry: left alone.
        b.clear_log();
        apics.eoi(25, 0x43).unwrap();
        assert_eq!(b.log(), [Access::Read(0x12)]);
    }

    #[test]
    fn mask_all_resets_every_pin() {
        let (apics, a, b) = two();
        // Firmware left pin 2 routed (edge, unmasked) and pin 9 level with Remote IRR.
        a.set_entry(2, compat_rte(0x30, 0, false, false, false));
        a.set_entry(
            9,
            compat_rte(0x39, 0, true, true, false) | rte::REMOTE_IRR | 7 << 56,
        );
        apics.mask_all();
        for gsi in 0..32 {
            assert_eq!(apics.read_rte(gsi), Some(rte::MASKED), "GSI {gsi}");
        }
        // Pin 2: masked at once (its own contents), before being reset.
        let log = a.log();
        let first_write = log
            .iter()
            .find(|e| matches!(e, Access::Write(0x14, _)))
            .copied();
        assert_eq!(first_write, Some(Access::Write(0x14, 0x0001_0030)));
        assert_eq!(b.entry(7), rte::MASKED);
    }

    #[test]
    fn the_handler_masks_registered_level_vectors_only() {
        let (apics, a, b) = two();
        let vectors = LevelVectors::new();
        apics
            .route(23, compat_rte(0x41, 0, true, false, false))
            .unwrap();
        apics
            .route(30, compat_rte(0x42, 0, true, false, false))
            .unwrap();
        // Not registered: untouched.
        a.clear_log();
        assert!(!apics.mask_level_vector(&vectors, 0x41));
        assert!(a.log().is_empty());
        vectors.register(0x41, 23).unwrap();
        vectors.register(0x42, 30).unwrap();
        assert!(apics.mask_level_vector(&vectors, 0x41));
        assert!(RedirectionEntry(apics.read_rte(23).unwrap()).masked());
        assert!(apics.mask_level_vector(&vectors, 0x42));
        assert!(RedirectionEntry(b.entry(6)).masked());
        // A GSI no I/O APIC has: nothing to do.
        vectors.register(0x43, 99).unwrap();
        assert!(!apics.mask_level_vector(&vectors, 0x43));
        // Registers in use (never expected): left alone, counted.
        let missed = missed_level_masks();
        let held = apics.units()[0].regs.lock();
        assert!(!apics.mask_level_vector(&vectors, 0x41));
        drop(held);
        assert_eq!(missed_level_masks(), missed + 1);
    }

    #[test]
    fn level_vector_registry() {
        let vectors = LevelVectors::default();
        assert_eq!(vectors.gsi(0x41), None);
        vectors.register(0x41, 23).unwrap();
        vectors.register(0x41, 23).unwrap();
        assert_eq!(
            vectors.register(0x41, 22),
            Err(IoApicError::VectorTaken {
                vector: 0x41,
                gsi: 23
            })
        );
        assert_eq!(vectors.gsi(0x41), Some(23));
        // GSI 0 is a GSI like any other.
        vectors.register(0xef, 0).unwrap();
        assert_eq!(vectors.gsi(0xef), Some(0));
        assert_eq!(vectors.unregister(0x41), Some(23));
        assert_eq!(vectors.unregister(0x41), None);
        assert_eq!(vectors.gsi(0x41), None);
        vectors.register(0x41, 22).unwrap();
        // Before init the kernel-wide registry refuses, and the handler's hook is inert.
        assert_eq!(
            register_level_vector(0x41, 23),
            Err(IoApicError::NotInitialised)
        );
        assert!(!mask_level_vector(0x41));
        assert_eq!(get().map(|a| a.units().len()), None);
    }

    #[test]
    fn compat_entries_are_sluice_iommus() {
        assert_eq!(compat_rte(0x41, 0, true, false, false), 0x8041);
        assert_eq!(
            compat_rte(0x41, 1, false, true, true),
            sluice_iommu::ioapic::compat_rte(0x41, 1, false, true, true)
        );
    }
}
