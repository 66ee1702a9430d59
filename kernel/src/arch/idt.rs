//! The IDT: all 256 vectors, each an interrupt gate to an assembly stub (`asm/traps.S`)
//! that saves every register into a [`super::traps::TrapFrame`] and calls Rust.
//!
//! Built by hand rather than with `x86_64::structures::idt`, whose handler functions need
//! the nightly-only `x86-interrupt` ABI.

use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;

use super::gdt;

/// Distance between consecutive stubs in `asm/traps.S` (`.balign 16`).
pub const STUB_STRIDE: u64 = 16;

/// One 16-byte gate descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    pub const fn missing() -> Self {
        Gate {
            offset_low: 0,
            selector: 0,
            ist: 0,
            attributes: 0,
            offset_mid: 0,
            offset_high: 0,
            reserved: 0,
        }
    }

    /// A present, DPL 0, 64-bit interrupt gate (IF cleared on entry).
    pub const fn interrupt(handler: u64, selector: u16, ist: u8) -> Self {
        Gate {
            offset_low: handler as u16,
            selector,
            ist: ist & 0x7,
            attributes: 0x8E,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }

    pub fn handler(&self) -> u64 {
        self.offset_low as u64 | (self.offset_mid as u64) << 16 | (self.offset_high as u64) << 32
    }
}

/// Which IST stack a vector runs on: NMI, double fault and machine check get their own
/// (they can strike while another handler runs), other exceptions share one, and
/// external interrupts another.
pub const fn ist_for_vector(vector: u8) -> u8 {
    match vector {
        2 => gdt::IST_NMI,
        8 => gdt::IST_DOUBLE_FAULT,
        18 => gdt::IST_MACHINE_CHECK,
        0..=31 => gdt::IST_EXCEPTION,
        _ => gdt::IST_INTERRUPT,
    }
}

#[repr(C, align(16))]
pub struct Idt(pub [Gate; 256]);

impl Idt {
    /// Fill every vector from the stub table starting at `stubs`.
    pub fn fill(&mut self, stubs: u64, selector: u16) {
        for (v, gate) in self.0.iter_mut().enumerate() {
            *gate = Gate::interrupt(
                stubs + v as u64 * STUB_STRIDE,
                selector,
                ist_for_vector(v as u8),
            );
        }
    }
}

static IDT: spin::Once<Idt> = spin::Once::new();

/// Build and load the IDT.
///
/// # Safety
/// `stubs` must be the address of the 256 trap stubs of `asm/traps.S`, and
/// [`gdt::init`] must have run (the gates use its code selector and IST stacks).
pub unsafe fn init(stubs: u64) {
    let idt = IDT.call_once(|| {
        let mut idt = Idt([Gate::missing(); 256]);
        idt.fill(stubs, gdt::code_selector());
        idt
    });
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: the table is static (never moved or freed) and every gate points at a stub
    // the caller vouched for.
    unsafe { lidt(&ptr) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_layout_matches_the_architecture() {
        assert_eq!(core::mem::size_of::<Gate>(), 16);
        let g = Gate::interrupt(0x1122_3344_5566_7788, 0x08, 2);
        // SAFETY: Gate is repr(C), 16 bytes of plain integers.
        let raw: [u8; 16] = unsafe { core::mem::transmute(g) };
        assert_eq!(
            raw,
            [
                0x88, 0x77, 0x08, 0x00, 0x02, 0x8E, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0, 0, 0, 0
            ]
        );
        assert_eq!(g.handler(), 0x1122_3344_5566_7788);
    }

    #[test]
    fn every_vector_gets_a_stub_and_an_ist_stack() {
        let mut idt = Idt([Gate::missing(); 256]);
        idt.fill(0x10_0000, 0x08);
        for (v, g) in idt.0.iter().enumerate() {
            assert_eq!(g.handler(), 0x10_0000 + 16 * v as u64);
            assert_ne!(
                g.ist, 0,
                "vector {v} would run on the interrupted stack (red zone)"
            );
        }
        assert_eq!(idt.0[8].ist, gdt::IST_DOUBLE_FAULT);
        assert_eq!(idt.0[14].ist, gdt::IST_EXCEPTION);
        assert_eq!(idt.0[200].ist, gdt::IST_INTERRUPT);
        // The LAPIC vectors taken in the host's interrupt windows (lapic.rs).
        assert_eq!(
            idt.0[super::super::lapic::TIMER_VECTOR as usize].ist,
            gdt::IST_INTERRUPT
        );
        assert_eq!(
            idt.0[super::super::lapic::SPURIOUS_VECTOR as usize].ist,
            gdt::IST_INTERRUPT
        );
    }
}
