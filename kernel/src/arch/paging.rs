//! Cache attributes for the boot identity map.
//!
//! `entry.S` maps the first 4 GiB with 2 MiB pages, all write-back. Device registers
//! (ECAM, IOMMU, APICs, BARs) must not be cached, so once the memory map is known every
//! 2 MiB page that holds no RAM is switched to uncached (PCD|PWT).

use sluice_boot::start_info::{MemoryRegion, MemoryType};

pub const LARGE_PAGE: u64 = 2 << 20;
/// Entries in the four boot page directories.
pub const BOOT_PD_ENTRIES: usize = 2048;
/// Everything below this is identity mapped by the boot page tables.
pub const IDENTITY_MAP_LIMIT: u64 = BOOT_PD_ENTRIES as u64 * LARGE_PAGE;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// Does `[start, start + LARGE_PAGE)` overlap any RAM region?
pub fn page_has_ram(map: &[MemoryRegion], start: u64) -> bool {
    let end = start + LARGE_PAGE;
    map.iter()
        .any(|r| r.kind == MemoryType::Ram && r.base < end && r.end() > start)
}

/// The identity-map PD entry for 2 MiB page `index`.
pub fn identity_entry(index: usize, uncached: bool) -> u64 {
    let mut e = (index as u64 * LARGE_PAGE) | PRESENT | WRITABLE | PAGE_SIZE_2M;
    if uncached {
        e |= CACHE_DISABLE | WRITE_THROUGH;
    }
    e
}

/// Rewrite the boot page directories: RAM pages write-back, the rest uncached.
/// Returns the number of uncached pages.
///
/// # Safety
/// `pd` must point to the four contiguous boot page directories ([`BOOT_PD_ENTRIES`]
/// entries) that CR3 currently uses, and nothing may rely on other mappings there.
pub unsafe fn apply_cache_policy(pd: *mut u64, map: &[MemoryRegion]) -> usize {
    let mut uncached = 0;
    for i in 0..BOOT_PD_ENTRIES {
        let uc = !page_has_ram(map, i as u64 * LARGE_PAGE);
        uncached += uc as usize;
        // SAFETY: i < BOOT_PD_ENTRIES, within the directories the caller vouched for; the
        // new entry maps the same frame, only its cache attributes change.
        unsafe { pd.add(i).write_volatile(identity_entry(i, uc)) };
    }
    // SAFETY: write back and invalidate caches so no line cached under the old write-back
    // attribute lingers for a now-uncached page; then drop stale TLB entries.
    unsafe { core::arch::asm!("wbinvd", options(nostack, preserves_flags)) };
    x86_64::instructions::tlb::flush_all();
    uncached
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_pages_cached_mmio_pages_not() {
        let map = [
            MemoryRegion {
                base: 0,
                size: 0x9fc00,
                kind: MemoryType::Ram,
            },
            MemoryRegion {
                base: 0x10_0000,
                size: 0x1fee_0000,
                kind: MemoryType::Ram,
            },
            MemoryRegion {
                base: 0xB000_0000,
                size: 0x1000_0000,
                kind: MemoryType::Reserved,
            },
        ];
        assert!(page_has_ram(&map, 0));
        assert!(page_has_ram(&map, 0x1FE0_0000)); // partly RAM: stays cached
        assert!(!page_has_ram(&map, 0x2000_0000));
        assert!(!page_has_ram(&map, 0xB000_0000));
        assert_eq!(identity_entry(0x580, true), 0xB000_0000 | 0x9B);
        assert_eq!(identity_entry(1, false), 0x20_0000 | 0x83);
    }
}
