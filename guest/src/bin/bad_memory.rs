//! `bad-memory`: maps a guest-physical address far outside its RAM into its own copy of
//! the page tables and writes to it. The hypervisor must stop the guest (a nested page fault:
//! `access outside its memory at GPA 0x400000000`); if the write returns, exit 99.
#![no_std]
#![no_main]

use core::cell::UnsafeCell;

use sluice_guest::{GuestStartInfo, println, x86};

sluice_guest::entry!(guest_main);

/// The guest-physical address written: 16 GiB, far above any test guest's RAM.
pub const TARGET: u64 = 0x4_0000_0000;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

#[repr(C, align(4096))]
struct Table(UnsafeCell<[u64; 512]>);

// SAFETY: only this single-threaded guest touches the tables.
unsafe impl Sync for Table {}

impl Table {
    fn addr(&self) -> u64 {
        self.0.get() as u64
    }

    /// Copies the 512 entries of the table at guest-physical `from`.
    ///
    /// # Safety
    ///
    /// `from` must be a page table in identity-mapped guest RAM.
    unsafe fn copy_from(&self, from: u64) {
        // SAFETY: the caller vouches for `from`; `self` is ours, 4 KiB, not in use.
        unsafe { (*self.0.get()).copy_from_slice(&*(from as *const [u64; 512])) };
    }

    fn entry(&self, index: u64) -> u64 {
        // SAFETY: index < 512; single-threaded.
        unsafe { (*self.0.get())[index as usize] }
    }

    fn set(&self, index: u64, value: u64) {
        // SAFETY: index < 512; single-threaded; the table is not yet (or is our own)
        // live page table, and a changed entry is flushed by the CR3 load.
        unsafe { (*self.0.get())[index as usize] = value };
    }
}

static PML4: Table = Table(UnsafeCell::new([0; 512]));
static PDPT: Table = Table(UnsafeCell::new([0; 512]));
static PD: Table = Table(UnsafeCell::new([0; 512]));

/// Switches to a copy of the hypervisor's page tables (only read, never written: they
/// live in its reserved window) in which `va` (2 MiB aligned) maps guest-physical `va`
/// with a 2 MiB page.
fn map_identity_2m(va: u64) {
    let (i4, i3, i2) = ((va >> 39) & 511, (va >> 30) & 511, (va >> 21) & 511);
    let old = x86::cr3_raw();
    // SAFETY: CR3 and the tables it leads to are page tables in our identity-mapped RAM.
    unsafe { PML4.copy_from(old & ADDR_MASK) };
    let e4 = PML4.entry(i4);
    if e4 & PRESENT != 0 {
        // SAFETY: as above.
        unsafe { PDPT.copy_from(e4 & ADDR_MASK) };
    }
    PML4.set(i4, PDPT.addr() | (e4 & 0xfff) | PRESENT | WRITABLE);
    let e3 = PDPT.entry(i3);
    if e3 & (PRESENT | HUGE) == PRESENT | HUGE {
        // Already inside an (identity) 1 GiB page.
    } else {
        if e3 & PRESENT != 0 {
            // SAFETY: as above.
            unsafe { PD.copy_from(e3 & ADDR_MASK) };
        }
        PDPT.set(i3, PD.addr() | (e3 & 0xfff) | PRESENT | WRITABLE);
        PD.set(i2, (va & !0x1f_ffff) | PRESENT | WRITABLE | HUGE);
    }
    // SAFETY: the new tables map everything the old ones did (copies), plus `va`.
    unsafe { x86::write_cr3(PML4.addr() | (old & 0xfff)) };
}

fn guest_main(info: &GuestStartInfo) -> i32 {
    println!(
        "bad-memory: RAM is {:#x}..{:#x}; writing to GPA {TARGET:#x}",
        info.ram_base,
        info.ram_base + info.ram_size
    );
    map_identity_2m(TARGET);
    // SAFETY: deliberately not safe for the hypervisor: the address is mapped in our page
    // tables but is not our RAM. The hypervisor must stop us here.
    unsafe { (TARGET as *mut u64).write_volatile(0x5a5a_5a5a_5a5a_5a5a) };
    println!("bad-memory: the write to GPA {TARGET:#x} returned: not isolated");
    99
}
