//! DMA buffers: zeroed, aligned runs of guest RAM from the heap that a device may be
//! given through an IOMMU mapping (VFIO `MAP_DMA` takes the guest-physical address,
//! which in a Sluice guest is the virtual one: RAM is identity-mapped).
//!
//! A buffer is never freed: once its address has been handed to a device (or to the
//! hypervisor for a mapping) the heap must never reuse it, or a late or unexpected DMA
//! would land in whatever came next. Bytes are accessed with volatile operations,
//! because a device changes them behind the compiler's back.

use alloc::alloc::{Layout, alloc_zeroed};
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

/// A DMA buffer: `len` bytes at guest-physical (= virtual) `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaBuffer {
    addr: u64,
    len: usize,
}

/// A zeroed buffer of `len` bytes (rounded up to 4 KiB) aligned to `align` (a power of
/// two, at least 4 KiB: 2 MiB for a buffer the IOMMU may map with one large page), from
/// the heap, never freed. `None` when the heap cannot provide it.
pub fn alloc(len: usize, align: usize) -> Option<DmaBuffer> {
    let align = align.max(4096);
    let len = len.max(1).checked_next_multiple_of(4096)?;
    let layout = Layout::from_size_align(len, align).ok()?;
    // SAFETY: the layout has a non-zero size.
    let p = unsafe { alloc_zeroed(layout) };
    (!p.is_null()).then_some(DmaBuffer {
        addr: p as u64,
        len,
    })
}

impl DmaBuffer {
    /// Guest-physical (= virtual) address.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Bytes (a multiple of 4 KiB).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn ptr(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "DMA buffer access {offset:#x}+{len:#x} beyond {:#x}",
            self.len
        );
        (self.addr as usize + offset) as *mut u8
    }

    /// Copies `out.len()` bytes at `offset` out of the buffer.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        let p = self.ptr(offset, out.len());
        fence(Ordering::SeqCst);
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: inside the buffer (checked by `ptr`), which this guest owns.
            *b = unsafe { read_volatile(p.add(i)) };
        }
    }

    /// Copies `data` into the buffer at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) {
        let p = self.ptr(offset, data.len());
        for (i, b) in data.iter().enumerate() {
            // SAFETY: inside the buffer (checked by `ptr`), which this guest owns.
            unsafe { write_volatile(p.add(i), *b) };
        }
        fence(Ordering::SeqCst);
    }

    /// Fills the whole buffer with `byte`.
    pub fn fill(&self, byte: u8) {
        let word = u64::from_ne_bytes([byte; 8]);
        let p = self.ptr(0, self.len).cast::<u64>();
        for i in 0..self.len / 8 {
            // SAFETY: inside the buffer, 8-byte aligned (the buffer is 4 KiB aligned
            // and a multiple of 4 KiB long).
            unsafe { write_volatile(p.add(i), word) };
        }
        fence(Ordering::SeqCst);
    }

    /// Fills `[offset, offset + len)` with `byte`.
    pub fn fill_range(&self, offset: usize, len: usize, byte: u8) {
        let p = self.ptr(offset, len);
        for i in 0..len {
            // SAFETY: inside the buffer (checked by `ptr`), which this guest owns.
            unsafe { write_volatile(p.add(i), byte) };
        }
        fence(Ordering::SeqCst);
    }

    /// The first offset in `[offset, offset + len)` whose byte is not `byte`, with the
    /// byte found.
    pub fn find_not(&self, offset: usize, len: usize, byte: u8) -> Option<(usize, u8)> {
        let p = self.ptr(offset, len);
        fence(Ordering::SeqCst);
        (0..len).find_map(|i| {
            // SAFETY: inside the buffer (checked by `ptr`).
            let b = unsafe { read_volatile(p.add(i)) };
            (b != byte).then_some((offset + i, b))
        })
    }

    /// The first offset where the buffer at `offset` differs from `expected`, with the
    /// byte found and the byte expected.
    pub fn first_difference(&self, offset: usize, expected: &[u8]) -> Option<(usize, u8, u8)> {
        let p = self.ptr(offset, expected.len());
        fence(Ordering::SeqCst);
        expected.iter().enumerate().find_map(|(i, want)| {
            // SAFETY: inside the buffer (checked by `ptr`).
            let got = unsafe { read_volatile(p.add(i)) };
            (got != *want).then_some((offset + i, got, *want))
        })
    }
}

/// Fills `out` with a pseudo-random pattern from `seed` (xorshift64*; a seed of 0 is
/// replaced), so that each run and each transfer moves different bytes.
pub fn pattern(seed: u64, out: &mut [u8]) {
    let mut x = if seed == 0 {
        0x9e37_79b9_7f4a_7c15
    } else {
        seed
    };
    for chunk in out.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// A byte to fill a buffer with before a DMA that must be blocked: one that `pattern`
/// (the bytes the DMA would write) does not consist of only, so a write that got
/// through shows.
pub fn fill_byte(pattern: &[u8]) -> u8 {
    (0xc3u8..=0xff)
        .chain(0..0xc3)
        .find(|b| pattern.iter().any(|p| p != b))
        .unwrap_or(0xc3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_seed_and_are_reproducible() {
        let (mut a, mut b, mut c) = ([0u8; 37], [0u8; 37], [0u8; 37]);
        pattern(1, &mut a);
        pattern(1, &mut b);
        pattern(2, &mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut z = [0u8; 16];
        pattern(0, &mut z);
        assert_ne!(z, [0u8; 16]);
    }

    #[test]
    fn buffers_are_aligned_zeroed_and_bounded() {
        crate::heap::init();
        let b = alloc(100, 8192).expect("heap");
        assert_eq!(b.addr() % 8192, 0);
        assert_eq!(b.len(), 4096);
        assert_eq!(b.find_not(0, 4096, 0), None);
        b.write(10, &[1, 2, 3]);
        let mut out = [0u8; 4];
        b.read(9, &mut out);
        assert_eq!(out, [0, 1, 2, 3]);
        assert_eq!(b.first_difference(10, &[1, 2, 4]), Some((12, 3, 4)));
        assert_eq!(b.find_not(0, 4096, 0), Some((10, 1)));
        b.fill(0xa5);
        assert_eq!(b.find_not(0, 4096, 0xa5), None);
    }
}
