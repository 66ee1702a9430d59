//! A virtual CPU: its VMCB, the I/O and MSR permission maps, the guest registers VMRUN
//! does not hold (all GPRs but RAX and RSP), and the guest's x87/SSE state.
//!
//! # One run (`sluice_svm_run`, below)
//!
//! 1. CLGI (no interrupt, NMI or SMI until the world is back to the host's);
//! 2. FXSAVE the host's x87/SSE state, FXRSTOR the guest's (VMRUN switches neither, and
//!    the host's Rust code uses SSE);
//! 3. VMSAVE the host's FS/GS/TR/LDTR/KernelGsBase/syscall MSRs, VMLOAD the guest's
//!    (VMRUN switches only ES/CS/SS/DS, control registers, EFER, RFLAGS/RIP/RSP/RAX);
//! 4. load the guest GPRs, VMRUN (RAX = VMCB physical address);
//! 5. after #VMEXIT (host RAX/RSP/RIP are back): store the guest GPRs, VMSAVE the guest's
//!    segment/MSR state, VMLOAD the host's, FXSAVE guest / FXRSTOR host, STGI.
//!
//! Host callee-saved registers are pushed and popped around it; the caller-saved ones
//! are declared clobbered by the `extern "C"` call.
//!
//! # Physical interrupts (preemption)
//! INTR is intercepted and V_INTR_MASKING is set, so physical interrupts are governed by
//! the host's RFLAGS.IF *as saved by VMRUN* (the guest's IF masks only virtual ones).
//! The routine therefore sets IF right after CLGI (GIF = 0 still holds every interrupt
//! off in the host) and clears it right after #VMEXIT, before STGI: a host interrupt
//! (the LAPIC quantum timer) that arrives while the guest runs causes #VMEXIT(INTR), and
//! host Rust code never runs with IF = 1. After an INTR exit, [`Vcpu::run`] opens a short
//! window ([`crate::arch::lapic::take_pending_interrupts`]) so the host's IDT handler
//! takes the interrupt (IST stack), and returns [`Exit::Interrupt`].
//!
//! # Virtual interrupts
//! [`Vcpu::queue_interrupt`] records vectors; before each VMRUN, if the VMCB holds no
//! undelivered V_IRQ, the highest queued vector is put there (V_IRQ, priority 0xF,
//! V_IGN_TPR). The CPU delivers it through the guest's IDT once the guest's RFLAGS.IF is
//! 1 and clears V_IRQ at the next #VMEXIT when it was taken.

use alloc::boxed::Box;
use core::fmt;
use core::mem::offset_of;

use super::cpu::{EFER_LMA, EFER_LME, EFER_SVME};
use super::vmcb::{Segment, Vmcb, misc1, misc2, off, tlb, vintr};
use crate::virt::guest_memory::HostMemory;
use crate::virt::{Exit, GuestRegs, IoAccess};

/// #VMEXIT codes Sluice decodes (APM vol. 2, appendix C).
pub mod exit_code {
    /// Write to CR0 (code 0x10 + n for CRn).
    pub const CR0_WRITE: u64 = 0x010;
    pub const EXCEPTION_BASE: u64 = 0x040;
    pub const INTR: u64 = 0x060;
    pub const NMI: u64 = 0x061;
    pub const CPUID: u64 = 0x072;
    pub const HLT: u64 = 0x078;
    pub const IOIO: u64 = 0x07B;
    pub const MSR: u64 = 0x07C;
    pub const SHUTDOWN: u64 = 0x07F;
    pub const VMRUN: u64 = 0x080;
    pub const VMMCALL: u64 = 0x081;
    pub const XSETBV: u64 = 0x08D;
    pub const NPF: u64 = 0x400;
    /// VMEXIT_INVALID (-1; QEMU writes it as the 32-bit 0xffff_ffff).
    pub const INVALID: u64 = u64::MAX;
}

/// Instruction lengths for advancing RIP (no NRIP save on QEMU TCG).
pub const VMMCALL_LEN: u64 = 3;
pub const CPUID_LEN: u64 = 2;
pub const HLT_LEN: u64 = 1;

/// Decode the VMCB's exit fields into the neutral [`Exit`]. `rcx`: guest RCX at the exit
/// (the MSR number).
pub fn decode_exit(code: u64, info1: u64, info2: u64, rcx: u64) -> Exit {
    match code {
        exit_code::VMMCALL => Exit::Hypercall,
        exit_code::CPUID => Exit::Cpuid,
        exit_code::HLT => Exit::Hlt,
        exit_code::IOIO => Exit::Io(IoAccess {
            port: (info1 >> 16) as u16,
            size: match (info1 >> 4) & 0b111 {
                0b001 => 1,
                0b010 => 2,
                _ => 4,
            },
            is_in: info1 & 1 != 0,
            string: info1 & (1 << 2) != 0,
            rep: info1 & (1 << 3) != 0,
        }),
        exit_code::MSR => Exit::Msr {
            msr: rcx as u32,
            write: info1 & 1 != 0,
        },
        // EXITINFO1: bit 0 present, bit 1 write, bit 2 user, bit 4 fetch, bit 32 final
        // translation, bit 33 during the guest's own table walk.
        exit_code::NPF => Exit::GuestPhysicalFault {
            gpa: info2,
            write: info1 & 2 != 0,
            fetch: info1 & (1 << 4) != 0,
            during_walk: info1 & (1 << 33) != 0,
            error_code: info1,
        },
        exit_code::SHUTDOWN => Exit::Shutdown,
        exit_code::INTR => Exit::Interrupt,
        // QEMU stores -1 as a 32-bit value; the APM says 64-bit -1.
        0xffff_ffff | exit_code::INVALID => {
            Exit::Invalid("VMRUN refused the guest state (VMEXIT_INVALID)")
        }
        exit_code::CR0_WRITE => Exit::Cr0Write,
        code => Exit::Other {
            name: exit_name(code),
            code,
            info1,
            info2,
        },
    }
}

/// What a raw exit code means, for messages.
pub fn exit_name(code: u64) -> &'static str {
    match code {
        0x000..=0x00F => "CR read",
        0x010..=0x01F => "CR write",
        0x020..=0x03F => "DR access",
        0x040..=0x05F => "exception",
        exit_code::INTR => "physical interrupt",
        exit_code::NMI => "NMI",
        exit_code::CPUID => "CPUID",
        exit_code::HLT => "HLT",
        exit_code::IOIO => "port I/O",
        exit_code::MSR => "MSR access",
        exit_code::SHUTDOWN => "shutdown",
        exit_code::VMRUN => "VMRUN",
        exit_code::VMMCALL => "VMMCALL",
        0x082 => "VMLOAD",
        0x083 => "VMSAVE",
        0x084 => "STGI",
        0x085 => "CLGI",
        0x086 => "SKINIT",
        exit_code::XSETBV => "XSETBV",
        exit_code::NPF => "nested page fault",
        0xffff_ffff | exit_code::INVALID => "VMEXIT_INVALID",
        _ => "unexpected exit",
    }
}

/// FXSAVE area: 512 bytes, 16-byte aligned.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct FxArea(pub [u8; 512]);

impl FxArea {
    /// The state after FNINIT with SSE exceptions masked: FCW 0x037F, all x87 registers
    /// empty (abridged tag 0), MXCSR 0x1F80.
    pub fn initial() -> Self {
        let mut a = [0u8; 512];
        a[0..2].copy_from_slice(&0x037Fu16.to_le_bytes());
        a[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
        Self(a)
    }
}

/// Everything `sluice_svm_run` touches besides the VMCB; offsets are fixed for the asm.
#[repr(C, align(64))]
pub struct RunContext {
    pub regs: GuestRegs,
    /// The host's VMSAVE area (physical).
    host_state_pa: u64,
    _pad: u64,
    pub guest_fx: FxArea,
    host_fx: FxArea,
}

const _: () = {
    assert!(offset_of!(RunContext, regs) == 0);
    assert!(offset_of!(GuestRegs, rbx) == 0);
    assert!(offset_of!(GuestRegs, rcx) == 8);
    assert!(offset_of!(GuestRegs, rdx) == 16);
    assert!(offset_of!(GuestRegs, rsi) == 24);
    assert!(offset_of!(GuestRegs, rdi) == 32);
    assert!(offset_of!(GuestRegs, rbp) == 40);
    assert!(offset_of!(GuestRegs, r8) == 48);
    assert!(offset_of!(GuestRegs, r15) == 104);
    assert!(offset_of!(RunContext, host_state_pa) == 112);
    assert!(offset_of!(RunContext, guest_fx) == 128);
    assert!(offset_of!(RunContext, host_fx) == 640);
};

core::arch::global_asm!(
    ".pushsection .text.sluice_svm_run,\"ax\",@progbits",
    ".global sluice_svm_run",
    ".type sluice_svm_run,@function",
    // extern "C" fn sluice_svm_run(vmcb_pa: u64 /* rdi */, ctx: *mut RunContext /* rsi */)
    "sluice_svm_run:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rsi",
    "clgi",
    // IF = 1 for VMRUN to save (V_INTR_MASKING: it governs physical interrupts in the
    // guest); GIF = 0 keeps them off in the host until after the exit.
    "sti",
    "fxsave64 [rsi + 640]",
    "fxrstor64 [rsi + 128]",
    "mov rax, [rsi + 112]",
    "vmsave rax",
    "mov rax, rdi",
    "vmload rax",
    "mov rbx, [rsi + 0]",
    "mov rcx, [rsi + 8]",
    "mov rdx, [rsi + 16]",
    "mov rdi, [rsi + 32]",
    "mov rbp, [rsi + 40]",
    "mov r8, [rsi + 48]",
    "mov r9, [rsi + 56]",
    "mov r10, [rsi + 64]",
    "mov r11, [rsi + 72]",
    "mov r12, [rsi + 80]",
    "mov r13, [rsi + 88]",
    "mov r14, [rsi + 96]",
    "mov r15, [rsi + 104]",
    "mov rsi, [rsi + 24]",
    "vmrun rax",
    // #VMEXIT: host RAX (the VMCB address), RSP and RIP are back; GIF is 0; RFLAGS is
    // the host's as saved by VMRUN (IF = 1): clear IF before STGI.
    "cli",
    "push rsi",
    "mov rsi, [rsp + 8]",
    "mov [rsi + 0], rbx",
    "mov [rsi + 8], rcx",
    "mov [rsi + 16], rdx",
    "mov [rsi + 32], rdi",
    "mov [rsi + 40], rbp",
    "mov [rsi + 48], r8",
    "mov [rsi + 56], r9",
    "mov [rsi + 64], r10",
    "mov [rsi + 72], r11",
    "mov [rsi + 80], r12",
    "mov [rsi + 88], r13",
    "mov [rsi + 96], r14",
    "mov [rsi + 104], r15",
    "pop rbx",
    "mov [rsi + 24], rbx",
    "vmsave rax",
    "mov rax, [rsi + 112]",
    "vmload rax",
    "fxsave64 [rsi + 128]",
    "fxrstor64 [rsi + 640]",
    "stgi",
    "pop rsi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size sluice_svm_run, . - sluice_svm_run",
    ".popsection",
);

unsafe extern "C" {
    /// Run the guest of the VMCB at physical `vmcb_pa` until the next #VMEXIT.
    fn sluice_svm_run(vmcb_pa: u64, ctx: *mut RunContext);
}

/// Where a vCPU starts (kept for [`Vcpu::reset`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootState {
    pub rip: u64,
    pub rsp: u64,
    /// Guest-physical PML4 of the guest's first page tables.
    pub cr3: u64,
    /// Host-physical nested PML4.
    pub n_cr3: u64,
    pub asid: u32,
}

/// Guest PAT: the reset value (WB, WT, UC-, UC, repeated).
pub const GUEST_PAT: u64 = 0x0007_0406_0007_0406;
pub const GUEST_CR0: u64 = 0x8000_0033; // PG | NE | ET | MP | PE
pub const GUEST_CR4: u64 = (1 << 5) | (1 << 9) | (1 << 10); // PAE | OSFXSR | OSXMMEXCPT
pub const GUEST_EFER: u64 = EFER_LME | EFER_LMA | EFER_SVME;
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;

/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;

/// The V_INTR word (VMCB 0x060) with a virtual interrupt requested: V_IRQ, priority 0xF,
/// V_IGN_TPR; V_TPR and V_INTR_MASKING as in `current`.
pub const fn v_intr_with_irq(current: u32) -> u32 {
    current | vintr::V_IRQ | (0xF << vintr::V_INTR_PRIO_SHIFT) | vintr::V_IGN_TPR
}

/// A set of interrupt vectors (bit n: vector n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingVectors([u64; 4]);

impl PendingVectors {
    pub fn set(&mut self, vector: u8) {
        self.0[vector as usize / 64] |= 1 << (vector % 64);
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// Remove and return the highest vector (the highest priority).
    pub fn take_highest(&mut self) -> Option<u8> {
        for i in (0..4).rev() {
            let w = self.0[i];
            if w != 0 {
                let bit = 63 - w.leading_zeros();
                self.0[i] &= !(1 << bit);
                return Some((i as u32 * 64 + bit) as u8);
            }
        }
        None
    }
}

/// Pages of the permission maps: IOPM 12 KiB, MSRPM 8 KiB.
const IOPM_PAGES: usize = 3;
const MSRPM_PAGES: usize = 2;

pub struct Vcpu {
    backing: Box<dyn HostMemory>,
    vmcb_pa: u64,
    iopm_pa: u64,
    msrpm_pa: u64,
    ctx: Box<RunContext>,
    boot: BootState,
    first_run: bool,
    runs: u64,
    /// Virtual interrupts queued and not yet put into the VMCB (bit n: vector n).
    pending: PendingVectors,
    /// The ASID [`crate::virt::VirtualCpu::create`] took from the pool, given back on drop.
    pub(super) pooled_asid: Option<u32>,
}

impl fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vcpu")
            .field("vmcb_pa", &format_args!("{:#x}", self.vmcb_pa))
            .field("boot", &self.boot)
            .field("runs", &self.runs)
            .finish()
    }
}

impl Vcpu {
    /// A vCPU whose pages (VMCB, IOPM, MSRPM) come from the kernel's frames.
    pub fn new(boot: BootState) -> Option<Self> {
        Self::with_backing(boot, Box::new(crate::memory::dma::FrameDmaMemory))
    }

    /// A vCPU in the initial state of [`Self::reset`], pages from `backing`. `None` when
    /// memory runs out.
    pub fn with_backing(boot: BootState, mut backing: Box<dyn HostMemory>) -> Option<Self> {
        let vmcb_pa = backing.alloc_zeroed(1, 4096)?;
        let Some(iopm_pa) = backing.alloc_zeroed(IOPM_PAGES, 4096) else {
            backing.free(vmcb_pa, 1);
            return None;
        };
        let Some(msrpm_pa) = backing.alloc_zeroed(MSRPM_PAGES, 4096) else {
            backing.free(vmcb_pa, 1);
            backing.free(iopm_pa, IOPM_PAGES);
            return None;
        };
        // Intercept every port and every MSR: a set bit intercepts.
        // SAFETY: both maps were just allocated from `backing`, whole, and are owned by
        // this vCPU; host_ptr gives their host addresses.
        unsafe {
            core::ptr::write_bytes(backing.host_ptr(iopm_pa), 0xff, IOPM_PAGES * 4096);
            core::ptr::write_bytes(backing.host_ptr(msrpm_pa), 0xff, MSRPM_PAGES * 4096);
        }
        let mut ctx = Box::new(RunContext {
            regs: GuestRegs::default(),
            host_state_pa: super::cpu::host_state_pa(),
            _pad: 0,
            guest_fx: FxArea::initial(),
            host_fx: FxArea([0; 512]),
        });
        ctx.regs = GuestRegs::default();
        let mut vcpu = Self {
            backing,
            vmcb_pa,
            iopm_pa,
            msrpm_pa,
            ctx,
            boot,
            first_run: true,
            runs: 0,
            pending: PendingVectors::default(),
            pooled_asid: None,
        };
        vcpu.reset();
        Some(vcpu)
    }

    /// Put the vCPU back in its boot state: the "minimal SVM guest" of
    /// `platform-facts.md` (64-bit mode, paging on with the guest's first tables, nested
    /// paging on), registers zeroed, fresh x87/SSE state, TLB flushed on the next run.
    ///
    /// Intercepts: INTR (physical interrupts: preemption), CPUID, HLT, port I/O (every
    /// port), MSRs (every MSR), SHUTDOWN,
    /// INVLPGA, VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT, XSETBV, and CR0
    /// writes: QEMU 7.2 bypasses nested paging when the guest clears CR0.PG, so a guest
    /// must not be able to turn paging off. Exceptions and physical interrupts are not
    /// intercepted (the guest's own IDT handles exceptions; a triple fault is SHUTDOWN).
    /// Queued virtual interrupts are dropped.
    pub fn reset(&mut self) {
        let boot = self.boot;
        let (iopm, msrpm) = (self.iopm_pa, self.msrpm_pa);
        let v = self.vmcb_mut();
        v.clear();
        v.set_intercept_cr(1 << 16); // CR0 writes
        v.set_intercept_exceptions(0);
        v.set_intercept_misc1(
            misc1::INTR
                | misc1::CPUID
                | misc1::HLT
                | misc1::INVLPGA
                | misc1::IOIO_PROT
                | misc1::MSR_PROT
                | misc1::SHUTDOWN,
        );
        v.set_intercept_misc2(
            misc2::VMRUN
                | misc2::VMMCALL
                | misc2::VMLOAD
                | misc2::VMSAVE
                | misc2::STGI
                | misc2::CLGI
                | misc2::SKINIT
                | misc2::XSETBV,
        );
        v.set_iopm_base(iopm);
        v.set_msrpm_base(msrpm);
        v.set_asid(boot.asid);
        v.set_tlb_control(tlb::FLUSH_ALL);
        v.set_v_intr(vintr::V_INTR_MASKING);
        v.set_np_enable(1);
        v.set_n_cr3(boot.n_cr3);

        let code = Segment {
            selector: CODE_SELECTOR,
            attrib: Segment::CODE64_ATTRIB,
            limit: 0xFFFF_FFFF,
            base: 0,
        };
        let data = Segment {
            selector: DATA_SELECTOR,
            attrib: Segment::DATA_ATTRIB,
            limit: 0xFFFF_FFFF,
            base: 0,
        };
        v.set_segment(off::CS, code);
        for seg in [off::ES, off::SS, off::DS, off::FS, off::GS] {
            v.set_segment(seg, data);
        }
        v.set_segment(off::GDTR, Segment::default());
        v.set_segment(off::IDTR, Segment::default());
        v.set_segment(
            off::LDTR,
            Segment {
                attrib: Segment::LDT_ATTRIB,
                ..Segment::default()
            },
        );
        v.set_segment(
            off::TR,
            Segment {
                attrib: Segment::TSS_ATTRIB,
                limit: 0x67,
                ..Segment::default()
            },
        );
        v.set_cpl(0);
        v.set_efer(GUEST_EFER);
        v.set_cr4(GUEST_CR4);
        v.set_cr3(boot.cr3);
        v.set_cr0(GUEST_CR0);
        v.set_dr7(0x400);
        v.set_dr6(0xFFFF_0FF0);
        v.set_rflags(2);
        v.set_rip(boot.rip);
        v.set_rsp(boot.rsp);
        v.set_rax(0);
        v.set_g_pat(GUEST_PAT);
        self.ctx.regs = GuestRegs::default();
        self.ctx.guest_fx = FxArea::initial();
        self.first_run = true;
        self.pending = PendingVectors::default();
    }

    /// Queue virtual interrupt `vector` (32..=255; others are ignored and give `false`).
    /// It is delivered through the guest's IDT once its RFLAGS.IF is 1. A vector already
    /// queued is not queued twice.
    pub fn queue_interrupt(&mut self, vector: u8) -> bool {
        if vector < 32 {
            return false;
        }
        self.pending.set(vector);
        true
    }

    /// A virtual interrupt is queued or waiting in the VMCB for the guest to take it.
    pub fn interrupt_pending(&self) -> bool {
        !self.pending.is_empty() || self.vmcb().v_intr() & vintr::V_IRQ != 0
    }

    /// The guest's RFLAGS.IF as of the last exit.
    pub fn interrupts_enabled(&self) -> bool {
        self.vmcb().rflags() & RFLAGS_IF != 0
    }

    /// Move the highest queued vector into the VMCB if no V_IRQ is outstanding there.
    fn inject_pending(&mut self) {
        if self.vmcb().v_intr() & vintr::V_IRQ != 0 {
            return; // not taken yet: it stays (QEMU clears V_IRQ once delivered)
        }
        let Some(vector) = self.pending.take_highest() else {
            return;
        };
        let v = self.vmcb_mut();
        let word = v_intr_with_irq(v.v_intr());
        v.set_v_intr(word);
        v.set_v_intr_vector(vector);
    }

    pub fn boot_state(&self) -> BootState {
        self.boot
    }

    /// Change where [`Self::reset`] starts the guest (and reset to it).
    pub fn set_boot_state(&mut self, boot: BootState) {
        self.boot = boot;
        self.reset();
    }

    pub fn vmcb_pa(&self) -> u64 {
        self.vmcb_pa
    }

    pub fn vmcb(&self) -> &Vmcb {
        // SAFETY: `vmcb_pa` is a page this vCPU allocated and owns; it is 4 KiB aligned
        // and every byte pattern is a valid `Vmcb`. The CPU writes it only during
        // `run`, which takes `&mut self`.
        unsafe { &*(self.backing.host_ptr(self.vmcb_pa) as *const Vmcb) }
    }

    pub fn vmcb_mut(&mut self) -> &mut Vmcb {
        // SAFETY: as for `vmcb`, and `&mut self` makes the reference unique.
        unsafe { &mut *(self.backing.host_ptr(self.vmcb_pa) as *mut Vmcb) }
    }

    pub fn regs(&self) -> &GuestRegs {
        &self.ctx.regs
    }

    pub fn regs_mut(&mut self) -> &mut GuestRegs {
        &mut self.ctx.regs
    }

    pub fn rax(&self) -> u64 {
        self.vmcb().rax()
    }

    pub fn set_rax(&mut self, value: u64) {
        self.vmcb_mut().set_rax(value);
    }

    pub fn rip(&self) -> u64 {
        self.vmcb().rip()
    }

    pub fn set_rip(&mut self, rip: u64) {
        self.vmcb_mut().set_rip(rip);
    }

    /// Skip the instruction that exited: no NRIP save on QEMU TCG, so the caller says
    /// how long it was ([`VMMCALL_LEN`], [`CPUID_LEN`], [`HLT_LEN`]).
    pub fn advance_rip(&mut self, len: u64) {
        let rip = self.rip().wrapping_add(len);
        self.set_rip(rip);
    }

    /// The guest's x87/SSE state as of the last exit.
    pub fn guest_fx(&self) -> &FxArea {
        &self.ctx.guest_fx
    }

    /// Completed VMRUNs.
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// The current exit, decoded from the VMCB.
    pub fn exit(&self) -> Exit {
        let v = self.vmcb();
        decode_exit(
            v.exit_code(),
            v.exit_info1(),
            v.exit_info2(),
            self.ctx.regs.rcx,
        )
    }

    /// Run the guest until the next #VMEXIT and decode it.
    ///
    /// # Panics
    /// When SVM is not enabled ([`super::cpu::enable`]).
    pub fn run(&mut self) -> Exit {
        assert!(
            super::cpu::enabled(),
            "svm::cpu::enable must succeed before guests run"
        );
        self.ctx.host_state_pa = super::cpu::host_state_pa();
        let vmcb_pa = self.vmcb_pa;
        self.inject_pending();
        let ctx: *mut RunContext = &mut *self.ctx;
        x86_64::instructions::interrupts::without_interrupts(|| {
            // SAFETY: SVM is enabled with a host save area; `vmcb_pa` is this vCPU's
            // VMCB, set up by `reset` (intercepts incl. VMRUN, ASID, NPT over memory the
            // guest owns, permission maps that intercept everything), so the guest can
            // reach only its own RAM. `ctx` is this vCPU's run context (exclusive via
            // `&mut self`) with the host VMSAVE area from `enable`. The routine
            // preserves all callee-saved registers and the host's x87/SSE state.
            unsafe { sluice_svm_run(vmcb_pa, ctx) }
        });
        self.runs += 1;
        self.first_run = false;
        if self.vmcb().tlb_control() != tlb::NOTHING {
            self.vmcb_mut().set_tlb_control(tlb::NOTHING);
        }
        if self.vmcb().exit_code() == exit_code::INTR {
            // The interrupt is pending in the local APIC: take it now (IST stack).
            crate::arch::lapic::take_pending_interrupts();
        }
        self.exit()
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        self.backing.free(self.vmcb_pa, 1);
        self.backing.free(self.iopm_pa, IOPM_PAGES);
        self.backing.free(self.msrpm_pa, MSRPM_PAGES);
        if let Some(asid) = self.pooled_asid {
            // A later guest reusing the ASID starts with TLB_CONTROL = flush all.
            super::release_asid(&super::ASIDS_IN_USE, asid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virt::guest_memory::test_support::Arena;

    fn boot() -> BootState {
        BootState {
            rip: 0x10_0000,
            rsp: 0x80_0000,
            cr3: 0x60_0000,
            n_cr3: 0xabc_d000,
            asid: 3,
        }
    }

    #[test]
    fn initial_vmcb_is_the_minimal_guest_of_platform_facts() {
        let vcpu = Vcpu::with_backing(boot(), Box::new(Arena::new(1 << 20))).unwrap();
        let v = vcpu.vmcb();
        let b = v.as_bytes();
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(0x010) & 0b11, 0b11, "VMRUN | VMMCALL");
        assert_ne!(u32_at(0x00C) & (1 << 24), 0, "HLT");
        assert_ne!(u32_at(0x00C) & (1 << 18), 0, "CPUID");
        assert_ne!(u32_at(0x00C) & (1 << 31), 0, "SHUTDOWN");
        assert_eq!(u32_at(0x00C) & 1, 1, "INTR (preemption)");
        assert_eq!(u32_at(0x060), 1 << 24, "V_INTR_MASKING, no V_IRQ");
        assert_eq!(u32_at(0x000), 1 << 16, "CR0 writes");
        assert_eq!(u32_at(0x058), 3);
        assert_eq!(b[0x05C], 1);
        assert_eq!(u64_at(0x090), 1);
        assert_eq!(u64_at(0x0B0), 0xabc_d000);
        assert_eq!(
            &b[0x410..0x420],
            &[
                8, 0, 0x9B, 0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(&b[0x420..0x424], &[0x10, 0, 0x93, 0x0C]);
        assert_eq!(&b[0x472..0x474], &[0x82, 0]);
        assert_eq!(&b[0x492..0x494], &[0x8B, 0]);
        assert_eq!(b[0x4CB], 0);
        assert_eq!(u64_at(0x4D0), 0x1500);
        assert_eq!(u64_at(0x548), 0x620);
        assert_eq!(u64_at(0x550), 0x60_0000);
        assert_eq!(u64_at(0x558), 0x8000_0033);
        assert_eq!(u64_at(0x560), 0x400);
        assert_eq!(u64_at(0x568), 0xFFFF_0FF0);
        assert_eq!(u64_at(0x570), 2);
        assert_eq!(u64_at(0x578), 0x10_0000);
        assert_eq!(u64_at(0x5D8), 0x80_0000);
        assert_eq!(u64_at(0x668), 0x0007_0406_0007_0406);
        // Permission maps: physical, aligned, all ones.
        let (iopm, msrpm) = (v.iopm_base(), v.msrpm_base());
        assert_eq!(iopm % 4096, 0);
        assert_eq!(msrpm % 4096, 0);
        // SAFETY: the arena is identity mapped; the maps are 12 and 8 KiB.
        let iopm_bytes = unsafe { core::slice::from_raw_parts(iopm as *const u8, 12288) };
        // SAFETY: as above.
        let msrpm_bytes = unsafe { core::slice::from_raw_parts(msrpm as *const u8, 8192) };
        assert!(iopm_bytes.iter().all(|&x| x == 0xff));
        assert!(msrpm_bytes.iter().all(|&x| x == 0xff));
        // Fresh FPU state.
        assert_eq!(&vcpu.guest_fx().0[0..2], &[0x7F, 0x03]);
        assert_eq!(&vcpu.guest_fx().0[24..28], &[0x80, 0x1F, 0, 0]);
    }

    #[test]
    fn reset_restores_after_junk() {
        let mut vcpu = Vcpu::with_backing(boot(), Box::new(Arena::new(1 << 20))).unwrap();
        let before = *vcpu.vmcb().as_bytes();
        vcpu.vmcb_mut().set_exit_code(exit_code::INVALID);
        vcpu.vmcb_mut().set_cr0(0);
        vcpu.regs_mut().r12 = 5;
        vcpu.advance_rip(VMMCALL_LEN);
        assert_eq!(vcpu.rip(), 0x10_0003);
        vcpu.reset();
        assert_eq!(vcpu.vmcb().as_bytes(), &before);
        assert_eq!(vcpu.regs(), &GuestRegs::default());
    }

    #[test]
    fn v_irq_encoding() {
        let w = v_intr_with_irq(vintr::V_INTR_MASKING);
        assert_eq!(w, (1 << 24) | (1 << 20) | (0xF << 16) | (1 << 8));
        assert_eq!(w & 0xFF, 0, "V_TPR untouched");
        assert_eq!(v_intr_with_irq(0x05) & 0xFF, 0x05);
    }

    #[test]
    fn pending_vectors_highest_first() {
        let mut p = PendingVectors::default();
        assert!(p.is_empty());
        assert_eq!(p.take_highest(), None);
        for v in [32, 255, 64, 63, 200, 64] {
            p.set(v);
        }
        let order: Vec<u8> = core::iter::from_fn(|| p.take_highest()).collect();
        assert_eq!(order, [255, 200, 64, 63, 32]);
        assert!(p.is_empty());
    }

    #[test]
    fn queue_interrupt_puts_one_vector_into_the_vmcb() {
        let mut vcpu = Vcpu::with_backing(boot(), Box::new(Arena::new(1 << 20))).unwrap();
        assert!(!vcpu.interrupt_pending());
        assert!(!vcpu.queue_interrupt(14), "exceptions are not interrupts");
        assert!(vcpu.queue_interrupt(0x40) && vcpu.queue_interrupt(0x41));
        assert!(vcpu.interrupt_pending());
        vcpu.inject_pending();
        let b = *vcpu.vmcb().as_bytes();
        assert_eq!(
            u32::from_le_bytes(b[0x60..0x64].try_into().unwrap()),
            (1 << 24) | (1 << 20) | (0xF << 16) | (1 << 8)
        );
        assert_eq!(b[0x64], 0x41);
        // Not taken yet (V_IRQ still set): the second vector waits.
        vcpu.inject_pending();
        assert_eq!(vcpu.vmcb().v_intr_vector(), 0x41);
        // The CPU took it (cleared V_IRQ): the next one goes in.
        let w = vcpu.vmcb().v_intr() & !vintr::V_IRQ;
        vcpu.vmcb_mut().set_v_intr(w);
        assert!(vcpu.interrupt_pending(), "0x40 still queued");
        vcpu.inject_pending();
        assert_eq!(vcpu.vmcb().v_intr_vector(), 0x40);
        vcpu.vmcb_mut().set_v_intr(w);
        assert!(!vcpu.interrupt_pending());
        assert!(!vcpu.interrupts_enabled());
        vcpu.vmcb_mut().set_rflags(0x202);
        assert!(vcpu.interrupts_enabled());
    }

    #[test]
    fn exit_decoding() {
        const INVALID: Exit = Exit::Invalid("VMRUN refused the guest state (VMEXIT_INVALID)");
        assert_eq!(decode_exit(0x81, 0, 0, 0), Exit::Hypercall);
        assert_eq!(decode_exit(0x72, 0, 0, 0), Exit::Cpuid);
        assert_eq!(decode_exit(0x78, 0, 0, 0), Exit::Hlt);
        assert_eq!(decode_exit(0x7F, 0, 0, 0), Exit::Shutdown);
        assert_eq!(decode_exit(0xffff_ffff, 0, 0, 0), INVALID);
        assert_eq!(decode_exit(u64::MAX, 0, 0, 0), INVALID);
        // OUT dx, al to 0x3F8: port 0x3F8, SZ8, address size 64 (bit 9), type OUT.
        let info1 = (0x3F8 << 16) | (1 << 9) | (1 << 4);
        assert_eq!(
            decode_exit(0x7B, info1, 0x1234, 0),
            Exit::Io(IoAccess {
                port: 0x3F8,
                size: 1,
                is_in: false,
                string: false,
                rep: false,
            })
        );
        // REP INSD from 0x3FD.
        let info1 = (0x3FD << 16) | (1 << 6) | (1 << 3) | (1 << 2) | 1;
        assert_eq!(
            decode_exit(0x7B, info1, 9, 0),
            Exit::Io(IoAccess {
                port: 0x3FD,
                size: 4,
                is_in: true,
                string: true,
                rep: true,
            })
        );
        // IN ax, dx.
        let Exit::Io(io) = decode_exit(0x7B, (0x60 << 16) | (1 << 5) | 1, 0, 0) else {
            panic!()
        };
        assert_eq!((io.port, io.size, io.is_in), (0x60, 2, true));
        assert_eq!(
            decode_exit(0x7C, 1, 0, 0xFFFF_FFFF_C000_0080),
            Exit::Msr {
                msr: 0xC000_0080,
                write: true
            }
        );
        assert_eq!(
            decode_exit(0x7C, 0, 0, 0x1B),
            Exit::Msr {
                msr: 0x1B,
                write: false
            }
        );
        assert_eq!(
            decode_exit(0x400, (1 << 32) | 0b110, 0x4000_0000, 0),
            Exit::GuestPhysicalFault {
                gpa: 0x4000_0000,
                write: true,
                fetch: false,
                during_walk: false,
                error_code: (1 << 32) | 0b110
            }
        );
        assert_eq!(decode_exit(0x10, 1, 2, 3), Exit::Cr0Write);
        assert_eq!(
            decode_exit(0x12, 1, 2, 3),
            Exit::Other {
                name: "CR write",
                code: 0x12,
                info1: 1,
                info2: 2
            }
        );
        assert_eq!(decode_exit(0x60, 0, 0, 0), Exit::Interrupt);
        assert_eq!(exit_name(0x10), "CR write");
        assert_eq!(exit_name(0x4E), "exception");
    }
}
