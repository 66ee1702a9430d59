//! Memory the IOMMU reads (root/context/page tables, the invalidation queue), taken from
//! the frame allocator and reached through the identity map.
//!
//! VT-d units may be non-coherent (ECAP.C = 0, as QEMU's is): then a table write sits in
//! the CPU cache where the unit cannot see it, so writers call [`DmaMemory::flush`],
//! which `clflush`es the lines and fences.

use core::arch::x86_64::{_mm_clflush, _mm_mfence};

use sluice_vtd::hw::{DmaMemory, RegisterBlock};

use super::FRAMES;
use super::frame::PAGE_SIZE;
use crate::arch::paging::IDENTITY_MAP_LIMIT;
use crate::mmio::MmioRegion;

/// Frames from the global allocator, identity mapped, zeroed on allocation.
pub struct FrameDmaMemory;

impl FrameDmaMemory {
    fn ptr(paddr: u64) -> *mut u64 {
        assert!(
            paddr % 8 == 0 && paddr + 8 <= IDENTITY_MAP_LIMIT && paddr != 0,
            "DMA word {paddr:#x} outside the identity map"
        );
        paddr as usize as *mut u64
    }
}

impl DmaMemory for FrameDmaMemory {
    fn alloc_zeroed(&mut self, pages: usize, align: u64) -> Option<u64> {
        let base = FRAMES.lock().alloc(pages as u64, align)?;
        // SAFETY: the frames were just taken from the allocator (nothing else uses them)
        // and the allocator only holds identity-mapped RAM.
        unsafe { core::ptr::write_bytes(base as usize as *mut u8, 0, pages * PAGE_SIZE as usize) };
        Some(base)
    }

    fn free(&mut self, paddr: u64, pages: usize) {
        if let Err(e) = FRAMES.lock().free(paddr, pages as u64) {
            log::error!(target: "memory", "IOMMU memory free of {paddr:#x} ({pages} pages) refused: {e:?}");
        }
    }

    fn read_u64(&self, paddr: u64) -> u64 {
        // SAFETY: an aligned word of identity-mapped memory the IOMMU code owns (checked).
        unsafe { Self::ptr(paddr).read_volatile() }
    }

    fn write_u64(&mut self, paddr: u64, value: u64) {
        // SAFETY: as for read_u64.
        unsafe { Self::ptr(paddr).write_volatile(value) }
    }

    fn flush(&mut self, paddr: u64, len: usize) {
        let mut line = paddr & !63;
        while line < paddr + len.max(1) as u64 {
            // SAFETY: clflush of an identity-mapped address has no effect but writing the
            // line back to memory.
            unsafe { _mm_clflush(line as usize as *const u8) };
            line += 64;
        }
        // SAFETY: a fence has no memory-safety preconditions.
        unsafe { _mm_mfence() };
    }

    fn barrier(&self) {
        // SAFETY: a fence has no memory-safety preconditions.
        unsafe { _mm_mfence() };
    }
}

impl RegisterBlock for MmioRegion {
    fn read32(&self, offset: usize) -> u32 {
        MmioRegion::read32(self, offset as u64).unwrap_or(u32::MAX)
    }

    fn read64(&self, offset: usize) -> u64 {
        MmioRegion::read64(self, offset as u64).unwrap_or(u64::MAX)
    }

    fn write32(&mut self, offset: usize, value: u32) {
        if !MmioRegion::write32(self, offset as u64, value) {
            log::error!(target: "iommu", "register write at {offset:#x} outside the block ignored");
        }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        if !MmioRegion::write64(self, offset as u64, value) {
            log::error!(target: "iommu", "register write at {offset:#x} outside the block ignored");
        }
    }
}
