//! The AMD SVM backend of [`crate::virt`]: guests on AMD-V with nested paging.
//!
//! - [`cpu`]: is SVM there, turn it on ([`cpu::enable`], once, before any guest runs);
//! - [`vmcb`]: the VMCB page with typed accessors at AMD's offsets;
//! - [`npt`]: nested page tables (the IOMMU crate's page-table engine, x86-64 entries:
//!   [`npt::NptFormat`], the backend's [`crate::virt::NestedFormat`]);
//! - [`vcpu`]: VMCB + registers + x87/SSE state, the VMRUN routine, #VMEXIT decoding
//!   into [`crate::virt::Exit`];
//! - here: [`Vcpu`] as a [`VirtualCpu`] (ASIDs from a pool, instruction lengths for
//!   skipping the exiting instruction).
//!
//! Guests, the run loop and the scheduler are vendor-neutral ([`crate::virt`]); pick
//! this backend with `Guest::<svm::Vcpu>::create` after `svm::Vcpu::enable()`
//! ([`cpu::enable`]).

pub mod cpu;
pub mod npt;
pub mod vcpu;
pub mod vmcb;

use core::sync::atomic::{AtomicU32, Ordering};

pub use self::vcpu::{BootState, Vcpu};
use crate::virt::{Exit, GuestError, GuestMemory, GuestRegs, VirtualCpu};

impl From<cpu::SvmError> for GuestError {
    fn from(e: cpu::SvmError) -> Self {
        Self::Unavailable(alloc::string::ToString::to_string(&e))
    }
}

/// ASIDs in use, bit n for ASID n (0 is the host's and never handed out).
static ASIDS_IN_USE: AtomicU32 = AtomicU32::new(1);

/// Take the lowest free ASID below `limit` (at most 32) from `in_use`.
fn take_asid(in_use: &AtomicU32, limit: u32) -> Option<u32> {
    let limit = limit.min(32);
    let mut current = in_use.load(Ordering::Relaxed);
    loop {
        let asid = (1..limit).find(|&a| current & (1 << a) == 0)?;
        match in_use.compare_exchange(
            current,
            current | (1 << asid),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Some(asid),
            Err(now) => current = now,
        }
    }
}

fn release_asid(in_use: &AtomicU32, asid: u32) {
    if (1..32).contains(&asid) {
        in_use.fetch_and(!(1 << asid), Ordering::AcqRel);
    }
}

impl VirtualCpu for Vcpu {
    type Nested = npt::NptFormat;

    /// Takes an ASID from the pool (given back when the vCPU is dropped).
    fn create(memory: &GuestMemory<npt::NptFormat>, entry: u64) -> Result<Self, GuestError> {
        if !cpu::enabled() {
            return Err(cpu::SvmError::NotEnabled.into());
        }
        let asid = take_asid(&ASIDS_IN_USE, cpu::asid_count()).ok_or(GuestError::NoAsid)?;
        let boot = BootState {
            rip: entry,
            rsp: memory.stack_top(),
            cr3: memory.page_tables_gpa(),
            n_cr3: memory.nested_root(),
            asid,
        };
        match Vcpu::new(boot) {
            Some(mut vcpu) => {
                vcpu.pooled_asid = Some(asid);
                Ok(vcpu)
            }
            None => {
                release_asid(&ASIDS_IN_USE, asid);
                Err(GuestError::NoMemory)
            }
        }
    }

    /// [`cpu::enable`].
    fn enable() -> Result<(), GuestError> {
        cpu::enable()?;
        Ok(())
    }

    fn run(&mut self) -> Exit {
        Vcpu::run(self)
    }

    fn regs(&self) -> &GuestRegs {
        Vcpu::regs(self)
    }

    fn regs_mut(&mut self) -> &mut GuestRegs {
        Vcpu::regs_mut(self)
    }

    fn rax(&self) -> u64 {
        Vcpu::rax(self)
    }

    fn set_rax(&mut self, value: u64) {
        Vcpu::set_rax(self, value);
    }

    fn rip(&self) -> u64 {
        Vcpu::rip(self)
    }

    fn set_rip(&mut self, rip: u64) {
        Vcpu::set_rip(self, rip);
    }

    /// No NRIP save on QEMU TCG: the length comes from the exit code (VMMCALL 3, CPUID 2,
    /// HLT 1); port I/O resumes at EXITINFO2 (the next RIP).
    fn skip_instruction(&mut self) {
        let v = self.vmcb();
        match v.exit_code() {
            vcpu::exit_code::VMMCALL => self.advance_rip(vcpu::VMMCALL_LEN),
            vcpu::exit_code::CPUID => self.advance_rip(vcpu::CPUID_LEN),
            vcpu::exit_code::HLT => self.advance_rip(vcpu::HLT_LEN),
            vcpu::exit_code::IOIO => {
                let next_rip = v.exit_info2();
                Vcpu::set_rip(self, next_rip);
            }
            _ => {}
        }
    }

    fn queue_interrupt(&mut self, vector: u8) -> bool {
        Vcpu::queue_interrupt(self, vector)
    }

    fn can_take_interrupt(&self) -> bool {
        self.interrupt_pending() && self.interrupts_enabled()
    }

    fn reset(&mut self) {
        Vcpu::reset(self);
    }

    /// TLB_CONTROL = flush all ASIDs on the next VMRUN (QEMU implements only that
    /// value; flushing one ASID would do on hardware with FlushByAsid).
    fn flush_tlb(&mut self) {
        self.vmcb_mut().set_tlb_control(vmcb::tlb::FLUSH_ALL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asid_allocation() {
        let pool = AtomicU32::new(1);
        assert_eq!(take_asid(&pool, 4), Some(1));
        assert_eq!(take_asid(&pool, 4), Some(2));
        assert_eq!(take_asid(&pool, 4), Some(3));
        assert_eq!(take_asid(&pool, 4), None);
        release_asid(&pool, 2);
        assert_eq!(take_asid(&pool, 4), Some(2));
        release_asid(&pool, 0);
        assert_eq!(
            pool.load(Ordering::Relaxed) & 1,
            1,
            "ASID 0 stays the host's"
        );
        assert_eq!(take_asid(&pool, 0), None);
        assert_eq!(take_asid(&pool, 100).unwrap(), 4);
    }
}
