//! Domain ids of one unit: the tags of its cached translations (DTE bits 79:64).
//!
//! Ids come from `1..=0xFFFF`: 0 is the tag of every blocked device table entry and is
//! never a domain's. Allocation is round-robin, so a freed id is the last to come back,
//! and an id is only freed after the caller has invalidated everything the unit cached
//! under it. The pool itself is the vendor-neutral [`IdPool`].
//!
//! With `skip_bit8` the ids whose bit 8 is set are never used: QEMU up to 10.0 validates
//! device table entries against a reserved-bit mask that wrongly includes DomainID bit 8
//! (`AMDVI_DTE_MIDDLE_QUAD_RESERVED = 0x100` applied to quadword 1), and fails every
//! translation through such an entry with ILLEGAL_DEV_TABLE_ENTRY. That leaves 32767 ids.

use sluice_iommu::domains::IdPool;

/// The id pool of one unit, as the driver makes it.
#[derive(Debug)]
pub struct DomainIds;

impl DomainIds {
    /// All ids but 0 (and, with `skip_bit8`, those with bit 8 set).
    #[allow(clippy::new_ret_no_self)]
    pub fn new(skip_bit8: bool) -> IdPool {
        IdPool::new(1 << 16, skip_bit8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_zero_round_robin_and_bit8_skipped() {
        let mut ids = DomainIds::new(true);
        let first: alloc::vec::Vec<u16> = (0..300).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(first[0], 1);
        assert_eq!(first[254], 255);
        assert_eq!(first[255], 0x200, "0x100..=0x1ff skipped");
        assert!(first.iter().all(|&id| id != 0 && id & 0x100 == 0));
        ids.release(3);
        // Round robin: 3 comes back only after the rest of the space.
        assert_ne!(ids.allocate(), Some(3));
        let mut all = DomainIds::new(true);
        for _ in 0..all.capacity() {
            assert!(all.allocate().is_some());
        }
        assert_eq!(all.allocate(), None);
        all.release(0x7e);
        assert_eq!(all.allocate(), Some(0x7e));
        let mut plain = DomainIds::new(false);
        assert_eq!(plain.capacity(), 0xffff);
        for _ in 0..0xffff {
            assert_ne!(plain.allocate(), Some(0));
        }
        assert_eq!(plain.allocate(), None);
    }
}
