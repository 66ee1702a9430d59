//! The local APIC in xAPIC (MMIO) mode: enable it, a one-shot timer on [`TIMER_VECTOR`]
//! (the scheduler's quantum), EOI, and the host's short interrupt windows.
//!
//! # Interrupt discipline
//! Host Rust code always runs with RFLAGS.IF = 0 (the prebuilt `core` uses the red zone).
//! Interrupts are taken only
//! - inside [`take_pending_interrupts`] (`sti; nop; cli`),
//! - inside [`wait_for_interrupt`] (`sti; hlt; cli`: the scheduler, when every guest is
//!   halted waiting for a device interrupt), and
//! - as #VMEXIT(INTR) while a guest runs (the VMRUN routine sets IF only while GIF = 0 and
//!   clears it again before STGI; see `svm::vcpu`).
//!
//! Every vector ≥ 32 runs on the IST interrupt stack, so even the window never touches the
//! interrupted stack. A timer that fires while the host runs stays pending in the IRR and
//! is taken at the next window or makes the next VMRUN exit at once: never lost.
//!
//! # Device vectors
//! [`DEVICE_VECTOR_FIRST`]`..=`[`DEVICE_VECTOR_LAST`] belong to devices' MSIs and INTx
//! lines (the VFIO layer programs them): the handler sets the vector's bit in a pending
//! bitmap and EOIs; [`take_device_interrupts`] collects them for injection into the
//! owning guest. A vector that is a level-triggered I/O APIC line
//! ([`super::ioapic::register_level_vector`]) first has its pin masked, before the EOI:
//! the line stays asserted until the VFIO layer silences the device, and an unmasked pin
//! would deliver again the moment the EOI clears its Remote IRR.
//!
//! # Timer rate
//! Divide 16. QEMU's APIC timer counts virtual nanoseconds (one tick per ns before the
//! divider), so one count at divide 16 is 16 ns: [`DEFAULT_QUANTUM_COUNT`] = 312,500
//! counts ≈ 5 ms of virtual time (wall time under TCG without icount). Real hardware
//! counts at its bus clock instead; the count is fixed, not calibrated.

use core::sync::atomic::{AtomicU64, Ordering};

use sluice_boot::start_info::MemoryRegion;

use crate::mmio::{MmioError, MmioRegion};

/// Register offsets (xAPIC, 16-byte aligned 32-bit registers).
pub mod reg {
    pub const ID: u64 = 0x020;
    pub const VERSION: u64 = 0x030;
    pub const TPR: u64 = 0x080;
    pub const EOI: u64 = 0x0B0;
    /// Spurious-interrupt vector register: vector (7:0), APIC software enable (8).
    pub const SVR: u64 = 0x0F0;
    pub const ESR: u64 = 0x280;
    pub const LVT_TIMER: u64 = 0x320;
    pub const TIMER_INITIAL_COUNT: u64 = 0x380;
    pub const TIMER_CURRENT_COUNT: u64 = 0x390;
    pub const TIMER_DIVIDE: u64 = 0x3E0;
}

/// The register block is one page.
pub const REGION_SIZE: u64 = 0x1000;
/// The architectural default base (QEMU's MADT reports it too).
pub const DEFAULT_BASE: u64 = 0xFEE0_0000;

/// The scheduler's quantum timer.
pub const TIMER_VECTOR: u8 = 0xF0;
/// Spurious interrupts (no EOI for these).
pub const SPURIOUS_VECTOR: u8 = 0xFF;
/// Host vectors handed to devices' MSIs (the VFIO layer allocates them): an interrupt on
/// one is recorded as pending ([`take_device_interrupts`]) and EOIed, never fatal.
pub const DEVICE_VECTOR_FIRST: u8 = 0x40;
pub const DEVICE_VECTOR_LAST: u8 = 0xEF;

pub const SVR_ENABLE: u32 = 1 << 8;
/// LVT mask bit.
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT timer mode (bits 18:17): 00 one-shot, 01 periodic.
pub const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// Divide configuration value for divide-by-16 (bits 3, 1:0 = 0b0_11).
pub const DIVIDE_BY_16: u32 = 0b0011;
/// IA32_APIC_BASE MSR: global enable (11), x2APIC mode (10).
pub const APIC_BASE_MSR: u32 = 0x1B;
pub const APIC_BASE_ENABLE: u64 = 1 << 11;
pub const APIC_BASE_X2APIC: u64 = 1 << 10;

/// ≈ 5 ms at divide 16 on QEMU (16 ns per count; see the module docs).
pub const DEFAULT_QUANTUM_COUNT: u32 = 312_500;

/// SVR value: software enable, spurious vector `vector`.
pub const fn svr_value(vector: u8) -> u32 {
    SVR_ENABLE | vector as u32
}

/// LVT timer value: one-shot, unmasked, `vector`.
pub const fn lvt_timer_oneshot(vector: u8) -> u32 {
    vector as u32
}

/// Nanoseconds of QEMU virtual time one timer count lasts at `divide` (a DCR value).
pub const fn qemu_ns_per_count(divide: u32) -> u64 {
    // DCR bits 3,1:0 encode 2^((v + 1) & 7): 0b000 → 2, 0b011 → 16, 0b111 → 1.
    let v = ((divide >> 1) & 0b100) | (divide & 0b11);
    1 << ((v + 1) & 7)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LapicError {
    Mmio(MmioError),
    /// IA32_APIC_BASE says the APIC is globally disabled or in x2APIC mode.
    NotXapic(u64),
    AlreadyInitialised,
}

impl core::fmt::Display for LapicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Mmio(e) => write!(f, "local APIC registers: {e}"),
            Self::NotXapic(v) => write!(
                f,
                "local APIC not usable in xAPIC mode (IA32_APIC_BASE {v:#x})"
            ),
            Self::AlreadyInitialised => f.write_str("local APIC already initialised"),
        }
    }
}

/// The local APIC's registers.
pub struct Lapic {
    regs: MmioRegion,
}

// SAFETY: one CPU; every operation is a single 32-bit register access, and the interrupt
// handler only writes EOI, which no other path depends on being atomic with anything.
unsafe impl Sync for Lapic {}

impl Lapic {
    /// # Safety
    /// `regs` must be this CPU's local APIC register page, and nothing else may program it.
    pub unsafe fn new(regs: MmioRegion) -> Self {
        Self { regs }
    }

    pub fn read(&self, offset: u64) -> u32 {
        self.regs.read32(offset).unwrap_or(0)
    }

    pub fn write(&self, offset: u64, value: u32) {
        self.regs.write32(offset, value);
    }

    /// Software-enable with [`SPURIOUS_VECTOR`], TPR 0, timer masked and stopped.
    pub fn enable(&self) {
        self.write(reg::TPR, 0);
        self.write(reg::SVR, svr_value(SPURIOUS_VECTOR));
        self.stop_timer();
        self.write(reg::TIMER_DIVIDE, DIVIDE_BY_16);
        // Clear stale errors (write, then read).
        self.write(reg::ESR, 0);
    }

    /// Arm the one-shot timer: [`TIMER_VECTOR`] after `count` counts at divide 16.
    pub fn arm_oneshot(&self, count: u32) {
        self.write(reg::TIMER_DIVIDE, DIVIDE_BY_16);
        self.write(reg::LVT_TIMER, lvt_timer_oneshot(TIMER_VECTOR));
        self.write(reg::TIMER_INITIAL_COUNT, count.max(1));
    }

    /// Stop the timer (an interrupt already pending stays pending).
    pub fn stop_timer(&self) {
        self.write(reg::LVT_TIMER, LVT_MASKED | lvt_timer_oneshot(TIMER_VECTOR));
        self.write(reg::TIMER_INITIAL_COUNT, 0);
    }

    pub fn current_count(&self) -> u32 {
        self.read(reg::TIMER_CURRENT_COUNT)
    }

    pub fn eoi(&self) {
        self.write(reg::EOI, 0);
    }

    pub fn id(&self) -> u32 {
        self.read(reg::ID) >> 24
    }

    pub fn version(&self) -> u32 {
        self.read(reg::VERSION)
    }
}

static LAPIC: spin::Once<Lapic> = spin::Once::new();
/// Timer interrupts taken since boot.
static TICKS: AtomicU64 = AtomicU64::new(0);
/// Spurious interrupts taken since boot.
static SPURIOUS: AtomicU64 = AtomicU64::new(0);
/// Device vectors taken and not yet collected (bit n of word n / 64: vector n).
static DEVICE_PENDING: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// Device interrupts taken since boot.
static DEVICE_INTERRUPTS: AtomicU64 = AtomicU64::new(0);

/// Find and enable the local APIC at `base` (the MADT's local APIC address), timer
/// stopped. Call once, after the IDT is loaded and the 8259s are masked. Returns it.
pub fn init(base: u64, map: &[MemoryRegion]) -> Result<&'static Lapic, LapicError> {
    if LAPIC.is_completed() {
        return Err(LapicError::AlreadyInitialised);
    }
    // SAFETY: reading IA32_APIC_BASE has no side effects; the MSR exists on every x86-64.
    let msr = unsafe { x86_64::registers::model_specific::Msr::new(APIC_BASE_MSR).read() };
    if msr & APIC_BASE_ENABLE == 0 || msr & APIC_BASE_X2APIC != 0 {
        return Err(LapicError::NotXapic(msr));
    }
    // SAFETY: the caller passes the local APIC's address; check_range (inside `new`)
    // keeps it clear of RAM and inside the identity map, which maps it uncached.
    let regs = unsafe { MmioRegion::new(base, REGION_SIZE, map) }.map_err(LapicError::Mmio)?;
    // SAFETY: the local APIC page of this (only) CPU; nothing else programs it.
    let lapic = LAPIC.call_once(|| unsafe { Lapic::new(regs) });
    lapic.enable();
    Ok(lapic)
}

/// The local APIC, once [`init`] succeeded.
pub fn get() -> Option<&'static Lapic> {
    LAPIC.get()
}

/// Arm the quantum timer; `false` when there is no local APIC.
pub fn arm_oneshot(count: u32) -> bool {
    get().map(|l| l.arm_oneshot(count)).is_some()
}

pub fn stop_timer() {
    if let Some(l) = get() {
        l.stop_timer();
    }
}

/// Timer interrupts taken so far.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::SeqCst)
}

pub fn spurious_count() -> u64 {
    SPURIOUS.load(Ordering::SeqCst)
}

/// Is `vector` one of the interrupts [`handle_interrupt`] handles?
pub const fn is_host_interrupt(vector: u64) -> bool {
    vector == TIMER_VECTOR as u64 || vector == SPURIOUS_VECTOR as u64 || is_device_vector(vector)
}

/// Is `vector` one of the device (MSI) vectors?
pub const fn is_device_vector(vector: u64) -> bool {
    vector >= DEVICE_VECTOR_FIRST as u64 && vector <= DEVICE_VECTOR_LAST as u64
}

/// The device vectors taken since the last call (bit n of word n / 64: vector n),
/// cleared as they are read.
pub fn take_device_interrupts() -> [u64; 4] {
    core::array::from_fn(|i| DEVICE_PENDING[i].swap(0, Ordering::SeqCst))
}

/// Device interrupts taken since boot.
pub fn device_interrupt_count() -> u64 {
    DEVICE_INTERRUPTS.load(Ordering::SeqCst)
}

/// The body of the host's interrupt handler for [`is_host_interrupt`] vectors: count the
/// tick and EOI (spurious interrupts get no EOI).
pub fn handle_interrupt(vector: u64) {
    if vector == SPURIOUS_VECTOR as u64 {
        SPURIOUS.fetch_add(1, Ordering::SeqCst);
        return;
    }
    if is_device_vector(vector) {
        // A level-triggered INTx line: mask its I/O APIC pin before the EOI, or the
        // still-asserted line fires again at once (the VFIO layer unmasks it once the
        // device is silenced). Touching the I/O APIC here is safe: see `ioapic`'s module
        // docs (no host code is ever interrupted inside an I/O APIC register access).
        super::ioapic::mask_level_vector(vector as u8);
        // Record it for the VFIO layer (MSI or INTx alike), EOI at once.
        DEVICE_PENDING[(vector / 64) as usize].fetch_or(1 << (vector % 64), Ordering::SeqCst);
        DEVICE_INTERRUPTS.fetch_add(1, Ordering::SeqCst);
        if let Some(l) = get() {
            l.eoi();
        }
        return;
    }
    TICKS.fetch_add(1, Ordering::SeqCst);
    if let Some(l) = get() {
        l.eoi();
    }
}

/// Let pending host interrupts in: `sti; nop; cli`. The handlers run on the IST interrupt
/// stack; IF is 0 again on return. Call only with IF = 0 (the host's normal state).
pub fn take_pending_interrupts() {
    // SAFETY: every vector has an IST stack (idt.rs), so an interrupt taken here does not
    // touch this stack's red zone; the non-fatal handlers (timer, spurious, device
    // vectors) only count, record, mask a level-triggered vector's I/O APIC pin (no host
    // code is inside an I/O APIC access here: IF is 0 everywhere else) and EOI; any
    // other vector is fatal anyway. IF is cleared again before returning.
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nostack)) };
}

/// Wait for the next interrupt: `sti; hlt; cli` (an interrupt already pending ends the
/// wait at once: STI's shadow covers HLT). The caller arms the timer first if the wait
/// must be bounded. Call only with IF = 0.
pub fn wait_for_interrupt() {
    // SAFETY: as in take_pending_interrupts: every vector runs on an IST stack and the
    // non-fatal handlers only count, record, mask a level-triggered pin and EOI; IF is
    // cleared again before returning.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nostack)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_values() {
        assert_eq!(svr_value(0xFF), 0x1FF);
        assert_eq!(lvt_timer_oneshot(TIMER_VECTOR), 0xF0);
        assert_eq!(
            lvt_timer_oneshot(0x30) & (LVT_MASKED | LVT_TIMER_PERIODIC),
            0
        );
        assert_eq!(reg::EOI, 0xB0);
        assert_eq!(reg::LVT_TIMER, 0x320);
        assert_eq!(reg::TIMER_INITIAL_COUNT, 0x380);
        assert_eq!(reg::TIMER_CURRENT_COUNT, 0x390);
        assert_eq!(reg::TIMER_DIVIDE, 0x3E0);
        assert_eq!(reg::SVR, 0xF0);
    }

    #[test]
    fn divider_math() {
        assert_eq!(qemu_ns_per_count(DIVIDE_BY_16), 16);
        assert_eq!(qemu_ns_per_count(0b0000), 2);
        assert_eq!(qemu_ns_per_count(0b1011), 1);
        assert_eq!(qemu_ns_per_count(0b1010), 128);
        let ns = DEFAULT_QUANTUM_COUNT as u64 * qemu_ns_per_count(DIVIDE_BY_16);
        assert!((1_000_000..=10_000_000).contains(&ns), "{ns} ns");
    }

    #[test]
    fn host_interrupts() {
        assert!(is_host_interrupt(0xF0) && is_host_interrupt(0xFF));
        assert!(!is_host_interrupt(8) && !is_host_interrupt(32) && !is_host_interrupt(14));
        let before = ticks();
        handle_interrupt(TIMER_VECTOR as u64); // no LAPIC in tests: counts only
        assert!(ticks() > before);
        let s = spurious_count();
        handle_interrupt(SPURIOUS_VECTOR as u64);
        assert!(spurious_count() > s);
        assert!(is_host_interrupt(0x40) && is_host_interrupt(0xEF) && !is_host_interrupt(0x3F));
        handle_interrupt(0x41);
        handle_interrupt(0x80);
        let pending = take_device_interrupts();
        assert_ne!(pending[1] & 1 << 1, 0);
        assert_ne!(pending[2] & 1, 0);
        assert_eq!(take_device_interrupts()[1] & 1 << 1, 0, "taken once");
    }
}
