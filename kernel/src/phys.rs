//! Physical memory as the kernel sees it: identity mapped below
//! [`crate::arch::paging::IDENTITY_MAP_LIMIT`].

use sluice_boot::phys::PhysRead;

/// Reads through the boot identity map, refusing anything outside it (and address 0).
pub struct IdentityMapped {
    pub limit: u64,
}

impl PhysRead for IdentityMapped {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> bool {
        let Some(end) = paddr.checked_add(buf.len() as u64) else {
            return false;
        };
        if paddr == 0 || end > self.limit {
            return false;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: the whole range lies inside the identity map (checked above) and is
            // non-null; reading RAM or firmware ROM there has no side effects.
            *b = unsafe { core::ptr::read_volatile((paddr as usize + i) as *const u8) };
        }
        true
    }
}
