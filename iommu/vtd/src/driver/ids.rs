//! Domain ids of one unit: tags of its cached context entries and translations.
//!
//! Ids come from `1 .. CAP.ND domains`: never 0 (reserved under caching mode, where the
//! unit tags cached not-present entries with it; never used at all here, which is
//! simpler and costs one id). Allocation is round-robin, so a freed id is the last to
//! come back, and an id is only freed after the caller has invalidated everything the
//! unit cached under it.

use alloc::collections::BTreeSet;

#[derive(Debug)]
pub struct DomainIds {
    /// One past the largest id.
    limit: u32,
    next: u32,
    used: BTreeSet<u16>,
}

impl DomainIds {
    /// Ids `1 .. domains` (`domains` from CAP.ND, at most 65536).
    pub fn new(domains: u32) -> Self {
        Self {
            limit: domains.min(1 << 16),
            next: 1,
            used: BTreeSet::new(),
        }
    }

    pub fn allocate(&mut self) -> Option<u16> {
        let span = self.limit.checked_sub(1)?;
        for step in 0..span {
            let candidate = 1 + (self.next - 1 + step) % span;
            let id = candidate as u16;
            if !self.used.contains(&id) {
                self.used.insert(id);
                self.next = 1 + candidate % span;
                return Some(id);
            }
        }
        None
    }

    /// Returns `id` to the pool. Only after its cached state was invalidated.
    pub fn release(&mut self, id: u16) {
        self.used.remove(&id);
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    /// Ids available in total (excluding 0).
    pub fn capacity(&self) -> u32 {
        self.limit.saturating_sub(1)
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
