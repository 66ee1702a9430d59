//! Domain ids of one unit: tags of its cached context entries and translations.
//!
//! Ids come from `1 .. CAP.ND domains`: never 0 (reserved under caching mode, where the
//! unit tags cached not-present entries with it; never used at all here, which is
//! simpler and costs one id). Allocation is round-robin, so a freed id is the last to
//! come back, and an id is only freed after the caller has invalidated everything the
//! unit cached under it. The pool itself is the vendor-neutral [`IdPool`].

use sluice_iommu::domains::IdPool;

/// Makes the id pool of a VT-d unit.
#[derive(Debug)]
pub struct DomainIds;

impl DomainIds {
    /// Ids `1 .. domains` (`domains` from CAP.ND, at most 65536).
    #[allow(clippy::new_ret_no_self)]
    pub fn new(domains: u32) -> IdPool {
        IdPool::new(domains, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_zero_round_robin_bounded() {
        let mut ids = DomainIds::new(16);
        let all: alloc::vec::Vec<u16> = (0..15).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(all, (1..16).collect::<alloc::vec::Vec<u16>>());
        assert_eq!(ids.allocate(), None);
        ids.release(3);
        assert_eq!(ids.allocate(), Some(3));
        ids.release(3);
        ids.release(5);
        // Round-robin: continues after the last id handed out (3), so 5 comes first.
        assert_eq!(ids.allocate(), Some(5));
        assert_eq!(ids.allocate(), Some(3));
        let mut big = DomainIds::new(65536);
        assert_eq!(big.capacity(), 65535);
        for _ in 0..65535 {
            assert_ne!(big.allocate(), Some(0));
        }
        assert_eq!(big.allocate(), None);
    }
}
