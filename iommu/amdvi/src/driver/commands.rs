//! The command buffer (spec §2.4): a ring of 128-bit commands in memory the unit reads
//! from its head to the tail software writes.
//!
//! The driver uses five commands, encoded as two quadwords (opcode in bits 63:60 of the
//! first):
//!
//! | opcode | command                 | fields                                             |
//! |--------|-------------------------|----------------------------------------------------|
//! | 01h    | COMPLETION_WAIT         | S (bit 0) = store `data` at `address` (51:3)       |
//! | 02h    | INVALIDATE_DEVTAB_ENTRY | DeviceID (15:0)                                     |
//! | 03h    | INVALIDATE_IOMMU_PAGES  | DomainID (47:32); S (64), PDE (65), address (127:76) |
//! | 05h    | INVALIDATE_INTERRUPT_TABLE | DeviceID (15:0)                                  |
//! | 08h    | INVALIDATE_IOMMU_ALL    | none (only with EFR.IASup)                          |
//!
//! Every batch ends with a COMPLETION_WAIT whose store writes a fresh 64-bit sequence
//! number into a status word; the driver polls that word (a bounded number of times) and
//! counts nothing done before it reads the number it asked for. Commands complete in
//! order, so the store proves every command before it has completed. The interrupt bit
//! (I) is never set: the driver polls.
//!
//! A page range is invalidated with the encoding Linux uses (`build_inv_address`): the
//! smallest naturally aligned power-of-two block holding the range, its size given by
//! the first zero address bit from bit 12 up (S = 1), or a single page (S = 0), or every
//! page of the domain (address `0x7FFF_FFFF_FFFF_F000`, S = 1) when the block would
//! reach bit 52.

use sluice_iommu::hw::{DmaMemory, RegisterBlock};

use super::registers::{self, offset, status};

/// The INVALIDATE_IOMMU_PAGES address meaning "every page of the domain" (with S = 1).
pub const ALL_PAGES_ADDRESS: u64 = 0x7fff_ffff_ffff_f000;

/// Opcodes (bits 63:60 of the first quadword).
pub mod opcode {
    /// COMPLETION_WAIT.
    pub const COMPLETION_WAIT: u64 = 0x1;
    /// INVALIDATE_DEVTAB_ENTRY.
    pub const INVALIDATE_DEVTAB_ENTRY: u64 = 0x2;
    /// INVALIDATE_IOMMU_PAGES.
    pub const INVALIDATE_IOMMU_PAGES: u64 = 0x3;
    /// INVALIDATE_INTERRUPT_TABLE.
    pub const INVALIDATE_INTERRUPT_TABLE: u64 = 0x5;
    /// INVALIDATE_IOMMU_ALL.
    pub const INVALIDATE_IOMMU_ALL: u64 = 0x8;
}

/// A command the driver sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Store `data` at `address` (8-byte aligned) once every earlier command completed.
    CompletionWait {
        /// Where the unit writes `data`.
        address: u64,
        /// The value written.
        data: u64,
    },
    /// Drop the unit's cached copy of one device table entry.
    InvalidateDevTabEntry {
        /// The requester id.
        device_id: u16,
    },
    /// Drop cached translations of a domain: the block `address` encodes (see the module
    /// docs), with the cached page-directory entries too when `pde`.
    InvalidateIommuPages {
        /// The DomainID.
        domain_id: u16,
        /// The encoded address (bits 63:12).
        address: u64,
        /// S: more than one page (the size is in the address).
        size: bool,
        /// PDE: also page-directory entries (needed once tables were unlinked).
        pde: bool,
    },
    /// Drop everything the unit caches (EFR.IASup).
    InvalidateIommuAll,
    /// Drop the unit's cached interrupt remapping entries of one requester id.
    InvalidateInterruptTable {
        /// The requester id.
        device_id: u16,
    },
}

impl Command {
    /// Invalidation of `[start, end)` (4 KiB aligned, not empty) in `domain_id`, as the
    /// smallest covering block (see the module docs).
    pub fn pages(domain_id: u16, start: u64, end: u64, pde: bool) -> Self {
        let (address, size) = covering_block(start, end);
        Command::InvalidateIommuPages {
            domain_id,
            address,
            size,
            pde,
        }
    }

    /// Invalidation of every page of `domain_id` (page-directory entries included).
    pub const fn all_pages(domain_id: u16) -> Self {
        Command::InvalidateIommuPages {
            domain_id,
            address: ALL_PAGES_ADDRESS,
            size: true,
            pde: true,
        }
    }

    /// The two quadwords as the unit reads them.
    pub fn encode(&self) -> [u64; 2] {
        match *self {
            Command::CompletionWait { address, data } => [
                (address & 0x000f_ffff_ffff_fff8) | 1 | opcode::COMPLETION_WAIT << 60,
                data,
            ],
            Command::InvalidateDevTabEntry { device_id } => [
                u64::from(device_id) | opcode::INVALIDATE_DEVTAB_ENTRY << 60,
                0,
            ],
            Command::InvalidateIommuPages {
                domain_id,
                address,
                size,
                pde,
            } => [
                u64::from(domain_id) << 32 | opcode::INVALIDATE_IOMMU_PAGES << 60,
                (address & !0xfff) | u64::from(size) | u64::from(pde) << 1,
            ],
            Command::InvalidateIommuAll => [opcode::INVALIDATE_IOMMU_ALL << 60, 0],
            Command::InvalidateInterruptTable { device_id } => [
                u64::from(device_id) | opcode::INVALIDATE_INTERRUPT_TABLE << 60,
                0,
            ],
        }
    }
}

/// The encoded address and S bit of the smallest naturally aligned block holding
/// `[start, end)`.
pub fn covering_block(start: u64, end: u64) -> (u64, bool) {
    let start = start & !0xfff;
    let last = end.max(start + 1) - 1;
    if last >> 12 == start >> 12 {
        return (start, false);
    }
    // The highest bit in which the first and last byte differ: the block is
    // 2^(msb + 1) bytes, aligned.
    let msb = 63 - (start ^ last).leading_zeros();
    if msb > 51 {
        return (ALL_PAGES_ADDRESS, true);
    }
    (
        ((start & !((1u64 << (msb + 1)) - 1)) | ((1u64 << msb) - 1)) & !0xfff,
        true,
    )
}

/// The bytes a (address, S) pair covers: `(first byte, size)`; `None` for all pages.
pub fn decoded_block(address: u64, size: bool) -> Option<(u64, u64)> {
    if !size {
        return Some((address & !0xfff, 4096));
    }
    let ones = ((address & !0xfff) >> 12).trailing_ones();
    if ones + 12 >= 51 {
        return None;
    }
    let bytes = 1u64 << (ones + 13);
    Some((address & !(bytes - 1), bytes))
}

/// Why a unit stopped being trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitFailure {
    /// A COMPLETION_WAIT's store did not arrive within the budget.
    CompletionTimeout {
        /// The sequence number that never arrived.
        sequence: u64,
    },
    /// The unit stopped fetching commands (Status.CmdBufRun cleared: an illegal command
    /// or a hardware error; the event log says which).
    CommandBufferStopped,
    /// The ring stayed full: the head did not move within the budget.
    CommandBufferFull,
    /// An enable was not acknowledged in Status (`bit`: the Status bit awaited).
    NotRunning {
        /// The Status bit that stayed clear.
        bit: u64,
    },
}

/// One unit's command ring and completion-wait word.
#[derive(Debug)]
pub struct CommandRing {
    /// Physical address of the ring.
    pub base: u64,
    /// Entries (a power of two, 256..=32768).
    pub entries: u32,
    /// Next slot software writes.
    pub tail: u32,
    /// Where the unit was last seen reading.
    pub head: u32,
    /// Physical address of the completion-wait status word.
    pub status_word: u64,
    /// The last sequence number asked for.
    pub sequence: u64,
    /// Commands written, completion waits included.
    pub issued: u64,
}

/// What [`CommandRing::run`] needs from the unit.
pub struct Target<'a, R> {
    /// The unit's registers.
    pub regs: &'a mut R,
    /// Whether the unit snoops CPU caches (no flushes needed).
    pub coherent: bool,
    /// Polls of the status word.
    pub spin_budget: u64,
    /// Reads of the head register while waiting for space.
    pub register_budget: u64,
}

impl CommandRing {
    /// Writes `commands` and a COMPLETION_WAIT, publishes the tail, and waits for the
    /// wait's store. Waits for ring space when full (with a bound).
    pub fn run<R: RegisterBlock>(
        &mut self,
        target: &mut Target<'_, R>,
        mem: &mut dyn DmaMemory,
        commands: &[Command],
    ) -> Result<(), UnitFailure> {
        self.sequence += 1;
        let wait = Command::CompletionWait {
            address: self.status_word,
            data: self.sequence,
        };
        for command in commands.iter().chain(core::iter::once(&wait)) {
            self.push(target, mem, command)?;
        }
        self.publish(target, mem);
        self.await_sequence(target, mem)
    }

    fn push<R: RegisterBlock>(
        &mut self,
        target: &mut Target<'_, R>,
        mem: &mut dyn DmaMemory,
        command: &Command,
    ) -> Result<(), UnitFailure> {
        let next = (self.tail + 1) % self.entries;
        if next == self.head {
            // Full (one slot always stays free: head == tail means empty). Let the unit
            // see what is written so far and wait for it to make room.
            self.publish(target, mem);
            let mut budget = target.register_budget.max(1);
            loop {
                self.head = registers::ring_index(target.regs, offset::COMMAND_HEAD, self.entries);
                if next != self.head {
                    break;
                }
                budget -= 1;
                if budget == 0 {
                    return Err(UnitFailure::CommandBufferFull);
                }
            }
        }
        let [lo, hi] = command.encode();
        let slot = self.base + u64::from(self.tail) * 16;
        mem.write_u64(slot, lo);
        mem.write_u64(slot + 8, hi);
        if !target.coherent {
            mem.flush(slot, 16);
        }
        self.tail = next;
        self.issued += 1;
        Ok(())
    }

    /// Orders the command writes before the tail write that hands them to the unit.
    fn publish<R: RegisterBlock>(&mut self, target: &mut Target<'_, R>, mem: &mut dyn DmaMemory) {
        mem.barrier();
        registers::set_ring_index(target.regs, offset::COMMAND_TAIL, self.tail);
    }

    fn await_sequence<R: RegisterBlock>(
        &mut self,
        target: &mut Target<'_, R>,
        mem: &mut dyn DmaMemory,
    ) -> Result<(), UnitFailure> {
        let budget = target.spin_budget.max(1);
        for poll in 0..budget {
            if mem.read_u64(self.status_word) == self.sequence {
                self.head = self.tail;
                return Ok(());
            }
            if poll % 64 == 63 && target.regs.read64(offset::STATUS) & status::CMD_BUF_RUN == 0 {
                return Err(UnitFailure::CommandBufferStopped);
            }
        }
        if target.regs.read64(offset::STATUS) & status::CMD_BUF_RUN == 0 {
            return Err(UnitFailure::CommandBufferStopped);
        }
        Err(UnitFailure::CompletionTimeout {
            sequence: self.sequence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_range() {
        assert_eq!(covering_block(0x1000, 0x2000), (0x1000, false));
        assert_eq!(covering_block(0x2000, 0x4000), (0x2000, true));
        assert_eq!(decoded_block(0x2000, true), Some((0x2000, 0x2000)));
        // 0x3000..0x5000 crosses an 8K and a 16K boundary: a 32K block at 0.
        let (address, size) = covering_block(0x3000, 0x5000);
        assert!(size);
        assert_eq!(decoded_block(address, size), Some((0, 0x8000)));
        // A 2 MiB page.
        let (address, size) = covering_block(0x4000_0000, 0x4020_0000);
        assert_eq!(address, 0x400f_f000);
        assert_eq!(decoded_block(address, size), Some((0x4000_0000, 0x20_0000)));
        assert_eq!(covering_block(0, 1 << 60), (ALL_PAGES_ADDRESS, true));
        assert_eq!(decoded_block(ALL_PAGES_ADDRESS, true), None);
        for (start, end) in [
            (0x7000, 0x9000),
            (0x1_0000, 0x11_0000),
            (0xfff_f000, 0x1000_1000),
        ] {
            let (address, size) = covering_block(start, end);
            let (first, bytes) = decoded_block(address, size).unwrap();
            assert!(
                first <= start && end <= first + bytes,
                "{start:#x}..{end:#x}"
            );
            assert_eq!(first % bytes, 0);
        }
    }

    #[test]
    fn encodings() {
        assert_eq!(
            Command::CompletionWait {
                address: 0x1234_5678,
                data: 7
            }
            .encode(),
            [0x1000_0000_1234_5679, 7]
        );
        assert_eq!(
            Command::InvalidateDevTabEntry { device_id: 0x0310 }.encode(),
            [0x2000_0000_0000_0310, 0]
        );
        assert_eq!(
            Command::all_pages(5).encode(),
            [0x3000_0005_0000_0000, ALL_PAGES_ADDRESS | 3]
        );
        assert_eq!(
            Command::InvalidateIommuAll.encode(),
            [0x8000_0000_0000_0000, 0]
        );
    }
}
