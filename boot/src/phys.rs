//! Reading physical memory through a small trait.
//!
//! Firmware structures (start info, ACPI tables) are found by physical address and may
//! lie about where they are or how long they are. Every reader goes through [`PhysRead`],
//! which refuses ranges it cannot serve instead of faulting, and which tests replace with
//! a byte buffer.

/// Read-only access to physical memory.
pub trait PhysRead {
    /// Copy `buf.len()` bytes starting at physical address `paddr` into `buf`.
    /// Returns `false` (and leaves `buf` unspecified) when any byte of the range is not
    /// readable, e.g. beyond the identity map or wrapping around the address space.
    fn read(&self, paddr: u64, buf: &mut [u8]) -> bool;

    fn read_u8(&self, paddr: u64) -> Option<u8> {
        let mut b = [0u8; 1];
        self.read(paddr, &mut b).then_some(b[0])
    }

    fn read_u16(&self, paddr: u64) -> Option<u16> {
        let mut b = [0u8; 2];
        self.read(paddr, &mut b).then(|| u16::from_le_bytes(b))
    }

    fn read_u32(&self, paddr: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(paddr, &mut b).then(|| u32::from_le_bytes(b))
    }

    fn read_u64(&self, paddr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(paddr, &mut b).then(|| u64::from_le_bytes(b))
    }
}

/// A fake physical memory for host tests: a sparse set of byte buffers at given addresses.
#[cfg(any(test, feature = "fake"))]
pub mod fake {
    extern crate alloc;
    use alloc::vec::Vec;

    use super::PhysRead;

    #[derive(Default)]
    pub struct FakePhys {
        chunks: Vec<(u64, Vec<u8>)>,
    }

    impl FakePhys {
        pub fn new() -> Self {
            Self::default()
        }

        /// Place `bytes` at physical address `paddr`.
        pub fn put(&mut self, paddr: u64, bytes: &[u8]) {
            self.chunks.push((paddr, bytes.to_vec()));
        }
    }

    impl PhysRead for FakePhys {
        fn read(&self, paddr: u64, buf: &mut [u8]) -> bool {
            let Some(end) = paddr.checked_add(buf.len() as u64) else {
                return false;
            };
            for (base, bytes) in self.chunks.iter().rev() {
                let chunk_end = base + bytes.len() as u64;
                if paddr >= *base && end <= chunk_end {
                    let off = (paddr - base) as usize;
                    buf.copy_from_slice(&bytes[off..off + buf.len()]);
                    return true;
                }
            }
            false
        }
    }
}
