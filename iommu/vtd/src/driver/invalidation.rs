//! Telling a unit to forget what it cached: queued invalidation (descriptors in memory,
//! completion confirmed by an invalidation-wait status write) or, on units without
//! ECAP.QI, the CCMD and IOTLB registers.
//!
//! The unit caches context entries (tagged by source id and domain id) and translations
//! (tagged by domain id and page). Changing a table in memory changes nothing the unit
//! already cached, so every change that removes or narrows access is followed by an
//! invalidation, and the change counts as done only once the unit confirms it. An
//! unconfirmed invalidation is a failure of the unit, never a success: a completion that
//! arrives late would be indistinguishable from the completion of a later request.
//!
//! QEMU 7.2 constraints honoured here (platform facts): an invalidation-wait descriptor
//! carries Status Write only (Status Write together with Interrupt Flag aborts QEMU);
//! register-based invalidation is never used once queued invalidation is enabled.

use alloc::vec::Vec;

use super::registers::{self, ccmd, fsts, gcmd, iotlb};
use crate::hw::{DmaMemory, RegisterBlock};
use crate::regs::{Capability, ExtendedCapability};

/// Descriptors in the queue: one 4 KiB page of 128-bit descriptors (IQA.QS = 0).
pub const QUEUE_ENTRIES: usize = 256;
/// Bytes per descriptor (legacy 128-bit format, IQA.DW = 0).
pub const DESCRIPTOR_BYTES: u64 = 16;

/// Descriptor type codes (bits 3:0 of the low quadword).
pub mod desc_type {
    pub const CONTEXT_CACHE: u64 = 0x1;
    pub const IOTLB: u64 = 0x2;
    pub const INTERRUPT_ENTRY_CACHE: u64 = 0x4;
    pub const INVALIDATION_WAIT: u64 = 0x5;
}

/// Invalidation-wait descriptor flags (low quadword).
pub mod wait {
    /// Interrupt Flag: raise the invalidation-completion event. Never used (see module docs).
    pub const IF: u64 = 1 << 4;
    /// Status Write: write the status data to the status address.
    pub const SW: u64 = 1 << 5;
    /// Fence: later descriptors wait for this one.
    pub const FN: u64 = 1 << 6;
    pub const STATUS_DATA_SHIFT: u32 = 32;
}

/// One invalidation request, independent of how it reaches the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Every cached context entry.
    ContextGlobal,
    /// Cached context entries tagged with `did`.
    ContextDomain { did: u16 },
    /// The cached context entry of `sid` (function bits masked by `fm`, 0 = none),
    /// tagged with `did`.
    ContextDevice { did: u16, sid: u16, fm: u8 },
    /// Every cached translation.
    IotlbGlobal,
    /// Cached translations of `did`.
    IotlbDomain { did: u16 },
    /// Cached translations of `did` for the naturally aligned block of 2^`am` pages at
    /// `addr`. `leaf_only` (IH) keeps the paging-structure caches: never set by this
    /// driver, since an unmap may free tables.
    IotlbPage {
        did: u16,
        addr: u64,
        am: u8,
        leaf_only: bool,
    },
    /// Every cached interrupt-remapping entry (queued invalidation only).
    InterruptEntriesGlobal,
    /// Interrupt-remapping entries `index .. index + 2^mask` (queued invalidation only).
    InterruptEntries { index: u16, mask: u8 },
}

impl Invalidation {
    /// The 128-bit queued-invalidation descriptor (low, high quadwords). `cap` decides the
    /// drain bits of IOTLB invalidations (CAP.DRD/DWD).
    pub fn descriptor(&self, cap: &Capability) -> (u64, u64) {
        const GLOBAL: u64 = 1 << 4;
        const DOMAIN: u64 = 2 << 4;
        const SELECTIVE: u64 = 3 << 4;
        let drain = if cap.drd { 1 << 7 } else { 0 } | if cap.dwd { 1 << 6 } else { 0 };
        let did = |did: u16| u64::from(did) << 16;
        match *self {
            Self::ContextGlobal => (desc_type::CONTEXT_CACHE | GLOBAL, 0),
            Self::ContextDomain { did: d } => (desc_type::CONTEXT_CACHE | DOMAIN | did(d), 0),
            Self::ContextDevice { did: d, sid, fm } => (
                desc_type::CONTEXT_CACHE
                    | SELECTIVE
                    | did(d)
                    | u64::from(sid) << 32
                    | u64::from(fm & 3) << 48,
                0,
            ),
            Self::IotlbGlobal => (desc_type::IOTLB | GLOBAL | drain, 0),
            Self::IotlbDomain { did: d } => (desc_type::IOTLB | DOMAIN | drain | did(d), 0),
            Self::IotlbPage {
                did: d,
                addr,
                am,
                leaf_only,
            } => (
                desc_type::IOTLB | SELECTIVE | drain | did(d),
                (addr & !0xfff) | u64::from(leaf_only) << 6 | u64::from(am & 0x3f),
            ),
            Self::InterruptEntriesGlobal => (desc_type::INTERRUPT_ENTRY_CACHE, 0),
            Self::InterruptEntries { index, mask } => (
                desc_type::INTERRUPT_ENTRY_CACHE
                    | 1 << 4
                    | u64::from(mask & 0x1f) << 27
                    | u64::from(index) << 32,
                0,
            ),
        }
    }
}

/// The invalidation-wait descriptor that writes `seq` to `status` (Status Write only).
pub fn wait_descriptor(status: u64, seq: u32) -> (u64, u64) {
    (
        desc_type::INVALIDATION_WAIT | wait::SW | u64::from(seq) << wait::STATUS_DATA_SHIFT,
        status & !3,
    )
}

/// Why a unit is no longer trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitFailure {
    /// An invalidation-wait status never arrived within the spin budget.
    WaitTimeout { seq: u32 },
    /// The unit reported an invalidation-queue error (FSTS.IQE, or ICE/ITE), with the
    /// fault status and queue head read at the time.
    QueueError { fsts: u32, head: u64 },
    /// A register-based invalidation (CCMD/IOTLB) was not completed, or was completed
    /// with actual granularity 0 (not performed).
    RegisterInvalidation { offset: usize, value: u64 },
    /// A GCMD command was not acknowledged in GSTS.
    Command { bit: u32 },
}

/// How a unit's invalidations are submitted.
#[derive(Debug)]
pub(crate) enum Invalidator {
    Queue(Queue),
    Registers,
}

/// The invalidation queue of one unit and its completion word.
#[derive(Debug)]
pub(crate) struct Queue {
    /// Physical address of the queue page.
    pub(crate) base: u64,
    /// Next free slot (the value last written to IQT, in descriptors).
    pub(crate) tail: usize,
    /// The 8-byte word invalidation waits write their status data to.
    pub(crate) status: u64,
    /// The last sequence number used (the next wait writes `seq + 1`).
    pub(crate) seq: u32,
}

/// What an invalidation needs from its unit.
pub(crate) struct Target<'a, R: RegisterBlock> {
    pub(crate) regs: &'a mut R,
    pub(crate) cap: &'a Capability,
    pub(crate) ecap: &'a ExtendedCapability,
    pub(crate) spin_budget: u64,
    pub(crate) register_budget: u64,
}

impl Queue {
    /// Writes `commands` and one invalidation wait to the queue, moves the tail and waits
    /// for the status write. Batches longer than the queue are split, each with its wait.
    pub(crate) fn run<R: RegisterBlock>(
        &mut self,
        target: &mut Target<'_, R>,
        mem: &mut dyn DmaMemory,
        commands: &[Invalidation],
    ) -> Result<(), UnitFailure> {
        // One slot stays free (a full queue has tail + 1 == head) and one is the wait.
        for chunk in commands.chunks(QUEUE_ENTRIES - 2) {
            for command in chunk {
                let (lo, hi) = command.descriptor(target.cap);
                self.push(mem, lo, hi);
            }
            self.seq = self.seq.wrapping_add(1);
            if self.seq == 0 {
                // 0 is the status word's initial value: never wait for it.
                self.seq = 1;
            }
            let (lo, hi) = wait_descriptor(self.status, self.seq);
            self.push(mem, lo, hi);
            // Descriptors (and the table writes before them) before the tail moves.
            mem.barrier();
            target
                .regs
                .write64(registers::IQT, (self.tail as u64) * DESCRIPTOR_BYTES);
            self.wait(target, mem)?;
        }
        Ok(())
    }

    fn push(&mut self, mem: &mut dyn DmaMemory, lo: u64, hi: u64) {
        let slot = self.base + self.tail as u64 * DESCRIPTOR_BYTES;
        mem.write_u64(slot, lo);
        mem.write_u64(slot + 8, hi);
        self.tail = (self.tail + 1) % QUEUE_ENTRIES;
    }

    /// Polls the status word (volatile reads through `mem`) until it holds `self.seq`.
    /// FSTS is checked every so often for a queue error, and once more before giving up.
    fn wait<R: RegisterBlock>(
        &self,
        target: &mut Target<'_, R>,
        mem: &mut dyn DmaMemory,
    ) -> Result<(), UnitFailure> {
        const CHECK_ERRORS_EVERY: u64 = 64;
        let budget = target.spin_budget.max(1);
        for poll in 0..budget {
            if mem.read_u64(self.status) as u32 == self.seq {
                return Ok(());
            }
            if poll % CHECK_ERRORS_EVERY == 0 {
                self.check_errors(target)?;
            }
        }
        self.check_errors(target)?;
        Err(UnitFailure::WaitTimeout { seq: self.seq })
    }

    fn check_errors<R: RegisterBlock>(&self, target: &Target<'_, R>) -> Result<(), UnitFailure> {
        let status = target.regs.read32(registers::FSTS);
        if status & (fsts::IQE | fsts::ICE | fsts::ITE) != 0 {
            return Err(UnitFailure::QueueError {
                fsts: status,
                head: target.regs.read64(registers::IQH),
            });
        }
        Ok(())
    }
}

/// Register-based invalidation, one request at a time, each polled to completion.
pub(crate) fn run_registers<R: RegisterBlock>(
    target: &mut Target<'_, R>,
    commands: &[Invalidation],
) -> Result<(), UnitFailure> {
    for command in commands {
        let (offset, value) = match *command {
            Invalidation::ContextGlobal => (registers::CCMD, ccmd::ICC | 1 << ccmd::CIRG_SHIFT),
            Invalidation::ContextDomain { did } => (
                registers::CCMD,
                ccmd::ICC | 2 << ccmd::CIRG_SHIFT | u64::from(did),
            ),
            Invalidation::ContextDevice { did, sid, fm } => (
                registers::CCMD,
                ccmd::ICC
                    | 3 << ccmd::CIRG_SHIFT
                    | u64::from(fm & 3) << ccmd::FM_SHIFT
                    | u64::from(sid) << ccmd::SID_SHIFT
                    | u64::from(did),
            ),
            Invalidation::IotlbGlobal => (iotlb_offset(target), iotlb_value(target.cap, 1, 0)),
            Invalidation::IotlbDomain { did } => {
                (iotlb_offset(target), iotlb_value(target.cap, 2, did))
            }
            Invalidation::IotlbPage {
                did,
                addr,
                am,
                leaf_only,
            } => {
                let iva = (addr & !0xfff) | u64::from(leaf_only) << 6 | u64::from(am & 0x3f);
                target.regs.write64(usize::from(target.ecap.iro), iva);
                (iotlb_offset(target), iotlb_value(target.cap, 3, did))
            }
            Invalidation::InterruptEntriesGlobal | Invalidation::InterruptEntries { .. } => {
                // Only the queue can invalidate the interrupt entry cache; callers check
                // for queued invalidation first. Refuse rather than pretend.
                return Err(UnitFailure::RegisterInvalidation {
                    offset: 0,
                    value: 0,
                });
            }
        };
        target.regs.write64(offset, value);
        let (busy_bit, actual_shift) = if offset == registers::CCMD {
            (ccmd::ICC, ccmd::CAIG_SHIFT)
        } else {
            (iotlb::IVT, iotlb::IAIG_SHIFT)
        };
        let (done, last) = registers::poll64(target.regs, offset, target.register_budget, |v| {
            v & busy_bit == 0
        });
        if !done || (last >> actual_shift) & 3 == 0 {
            return Err(UnitFailure::RegisterInvalidation {
                offset,
                value: last,
            });
        }
    }
    Ok(())
}

fn iotlb_offset<R: RegisterBlock>(target: &Target<'_, R>) -> usize {
    usize::from(target.ecap.iro) + 8
}

fn iotlb_value(cap: &Capability, granularity: u64, did: u16) -> u64 {
    let mut value = iotlb::IVT | granularity << iotlb::IIRG_SHIFT;
    if cap.drd {
        value |= iotlb::DR;
    }
    if cap.dwd {
        value |= iotlb::DW;
    }
    value | u64::from(did) << iotlb::DID_SHIFT
}

/// Flushes the unit's write buffer (GCMD.WBF, then GSTS.WBFS clears) when CAP.RWBF says
/// table writes may sit in it. A no-op otherwise.
pub(crate) fn flush_write_buffer<R: RegisterBlock>(
    target: &mut Target<'_, R>,
) -> Result<(), UnitFailure> {
    if !target.cap.rwbf {
        return Ok(());
    }
    let value = registers::gcmd_value(target.regs, gcmd::WBF, true);
    target.regs.write32(registers::GCMD, value);
    if registers::poll32(target.regs, registers::GSTS, target.register_budget, |s| {
        s & gcmd::WBF == 0
    }) {
        Ok(())
    } else {
        Err(UnitFailure::Command { bit: gcmd::WBF })
    }
}

/// The smallest naturally aligned block of 4 KiB pages covering `[start, end)`: its
/// address and address mask (log2 of its page count).
pub fn covering_block(start: u64, end: u64) -> (u64, u8) {
    let first = start >> 12;
    let last = (end.max(start + 1) - 1) >> 12;
    let mut am = 0u8;
    while am < 52 && first >> am != last >> am {
        am += 1;
    }
    ((first >> am) << am << 12, am)
}

/// IOTLB invalidations for the ranges `[start, end)` of domain `did`: page-selective
/// (one covering block per merged range) when the unit has PSI, the blocks fit MAMV and
/// there are at most `max_page_selective` of them; else one domain-selective.
pub fn iotlb_for_ranges(
    cap: &Capability,
    did: u16,
    ranges: &[(u64, u64)],
    max_page_selective: usize,
) -> Vec<Invalidation> {
    let merged = merge_ranges(ranges);
    if merged.is_empty() {
        return Vec::new();
    }
    let domain = alloc::vec![Invalidation::IotlbDomain { did }];
    if !cap.psi || merged.len() > max_page_selective {
        return domain;
    }
    let mut blocks: Vec<(u64, u8)> = Vec::with_capacity(merged.len());
    for &(start, end) in &merged {
        let (addr, am) = covering_block(start, end);
        if am > cap.mamv {
            return domain;
        }
        blocks.push((addr, am));
    }
    blocks.sort_unstable();
    blocks.dedup();
    // Drop blocks inside an earlier, larger block (covering blocks nest or are disjoint).
    let mut kept: Vec<(u64, u8)> = Vec::with_capacity(blocks.len());
    for (addr, am) in blocks {
        let inside = kept.iter().any(|&(outer, outer_am)| {
            outer_am >= am && addr >> 12 >> outer_am == outer >> 12 >> outer_am
        });
        if !inside {
            kept.retain(|&(inner, inner_am)| {
                !(am >= inner_am && inner >> 12 >> am == addr >> 12 >> am)
            });
            kept.push((addr, am));
        }
    }
    kept.into_iter()
        .map(|(addr, am)| Invalidation::IotlbPage {
            did,
            addr,
            am,
            leaf_only: false,
        })
        .collect()
}

/// Sorts and merges overlapping or touching `[start, end)` ranges.
pub use sluice_iommu::domains::merge_ranges;

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_CAP: u64 = 0x00d2_008c_2226_0206;

    #[test]
    fn covering_blocks() {
        assert_eq!(covering_block(0x20_0000, 0x40_0000), (0x20_0000, 9));
        assert_eq!(covering_block(0x1000, 0x2000), (0x1000, 0));
        // Three pages from 0x1000: pages 1..=3 share bits above 2.
        assert_eq!(covering_block(0x1000, 0x4000), (0, 2));
        // Straddling a 2 MiB boundary by one page each side.
        assert_eq!(covering_block(0x1f_f000, 0x20_1000), (0, 10));
    }

    #[test]
    fn ranges_merge_and_nest() {
        let cap = Capability::decode(QEMU_CAP);
        assert_eq!(
            merge_ranges(&[(0x3000, 0x4000), (0x1000, 0x2000), (0x2000, 0x3000)]),
            [(0x1000, 0x4000)]
        );
        let commands = iotlb_for_ranges(&cap, 7, &[(0x1000, 0x2000), (0x5000, 0x6000)], 16);
        assert_eq!(commands.len(), 2);
        // Page 1 lies inside the block covering pages 3..=4 (pages 0..=7): dropped.
        let commands = iotlb_for_ranges(&cap, 7, &[(0x1000, 0x2000), (0x3000, 0x5000)], 16);
        assert_eq!(
            commands,
            [Invalidation::IotlbPage {
                did: 7,
                addr: 0,
                am: 3,
                leaf_only: false
            }]
        );
        // More ranges than allowed, or no PSI: one domain-selective.
        let commands = iotlb_for_ranges(&cap, 7, &[(0x1000, 0x2000), (0x5000, 0x6000)], 1);
        assert_eq!(commands, [Invalidation::IotlbDomain { did: 7 }]);
        let no_psi = Capability::decode(QEMU_CAP & !(1 << 39));
        let commands = iotlb_for_ranges(&no_psi, 7, &[(0x1000, 0x2000)], 16);
        assert_eq!(commands, [Invalidation::IotlbDomain { did: 7 }]);
        // Beyond MAMV (18): a 1 GiB block needs AM 18, 2 GiB needs 19.
        let commands = iotlb_for_ranges(&cap, 7, &[(0, 0x8000_0000)], 16);
        assert_eq!(commands, [Invalidation::IotlbDomain { did: 7 }]);
    }

    #[test]
    fn wait_descriptor_is_status_write_only() {
        let (lo, hi) = wait_descriptor(0x1234_5008, 42);
        assert_eq!(lo & 0xf, 5);
        assert_ne!(lo & wait::SW, 0);
        assert_eq!(lo & wait::IF, 0);
        assert_eq!(lo >> 32, 42);
        assert_eq!(hi, 0x1234_5008);
    }
}
