//! GDT and TSS. The TSS exists for its Interrupt Stack Table: every IDT vector runs on an
//! IST stack, because the prebuilt `core` uses the red zone below RSP, which an interrupt
//! pushed onto the current stack would overwrite.

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slots (1-based, as the IDT gate names them).
pub const IST_EXCEPTION: u8 = 1;
pub const IST_DOUBLE_FAULT: u8 = 2;
pub const IST_NMI: u8 = 3;
pub const IST_MACHINE_CHECK: u8 = 4;
pub const IST_INTERRUPT: u8 = 5;
const IST_COUNT: usize = 5;
const IST_STACK_SIZE: usize = 32 * 1024;

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

static mut IST_STACKS: [IstStack; IST_COUNT] = [const { IstStack([0; IST_STACK_SIZE]) }; IST_COUNT];

pub struct Selectors {
    pub code: SegmentSelector,
    pub data: SegmentSelector,
    pub tss: SegmentSelector,
}

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

/// Load the kernel GDT and TSS (once).
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        // The TSS is packed: build the table aside and copy it in whole.
        let mut ist = tss.interrupt_stack_table;
        for (i, slot) in ist.iter_mut().take(IST_COUNT).enumerate() {
            // Only the address is taken; the stacks are used by the CPU, never by Rust code.
            let base = (&raw const IST_STACKS).cast::<IstStack>().wrapping_add(i) as u64;
            *slot = VirtAddr::new(base + IST_STACK_SIZE as u64);
        }
        tss.interrupt_stack_table = ist;
        tss
    });
    let (gdt, sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss = gdt.append(Descriptor::tss_segment(tss));
        (gdt, Selectors { code, data, tss })
    });
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, whose descriptors are a 64-bit
    // code segment, a data segment and an available TSS.
    unsafe {
        CS::set_reg(sel.code);
        SS::set_reg(sel.data);
        DS::set_reg(sel.data);
        ES::set_reg(sel.data);
        load_tss(sel.tss);
    }
}

/// The kernel code selector (for IDT gates).
pub fn code_selector() -> u16 {
    GDT.get().map_or(0x08, |(_, s)| s.code.0)
}
