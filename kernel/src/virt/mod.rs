//! Guests, independent of the CPU's virtualisation extension.
//!
//! Everything above the hardware talks to a guest's virtual CPU through the small
//! [`VirtualCpu`] trait and sees its exits as the vendor-neutral [`Exit`]. One backend
//! exists today, AMD SVM ([`crate::svm`]); `main.rs` names it in one place, where it
//! creates the guests (`Guest::<svm::Vcpu>::create`).
//!
//! - [`guest_memory`]: a guest's RAM, its nested page tables (in the backend's
//!   [`NestedFormat`]), and the guest's own first page tables;
//! - [`scheduler`]: several guests round-robin, preempted by the local APIC timer
//!   ([`scheduler::run_all`]);
//! - here: the [`VirtualCpu`] trait, [`Exit`], a [`Guest`] (name, memory, vCPU, console,
//!   status), the run loop [`run_guest`] driven by a handler, and [`handle_common_exit`]
//!   for everything but hypercalls (CPUID, HLT, COM1, and refusing the rest).
//!
//! Typical use (`main.rs`):
//!
//! ```ignore
//! svm::Vcpu::enable()?;
//! let mut guest = Guest::<svm::Vcpu>::create("hello", 16 << 20, |mem| {
//!     mem.write(0x20_0000, image)?;      // the ELF load plan
//!     Ok(0x20_0000)                       // entry point
//! })?;
//! let status = run_guest(&mut guest, &mut |g, exit| match exit {
//!     Exit::Hypercall => my_hypercall(g), // skip_instruction() when resuming
//!     other => handle_common_exit(g, other),
//! });
//! ```
//!
//! # What a backend implements
//!
//! A backend is a type implementing [`VirtualCpu`]: it creates a vCPU that starts at an
//! entry point in 64-bit mode over a [`GuestMemory`] whose nested tables are in its
//! [`VirtualCpu::Nested`] format, runs it until the next exit and maps the hardware's
//! exit reason to [`Exit`], and gives access to the registers. The SVM backend
//! ([`crate::svm::Vcpu`]) keeps its state in a VMCB, uses NPT entries
//! ([`crate::svm::npt::NptFormat`]) and decodes #VMEXIT codes.
//!
//! A VT-x backend would be a new `vmx` module next to `svm`, and nothing above would
//! change:
//!
//! - VMXON once (like `svm::cpu::enable`), then one VMCS per vCPU instead of the VMCB
//!   (VMPTRLD, VMWRITE of the guest state at the same 64-bit start, VMLAUNCH/VMRESUME
//!   instead of VMRUN); a VPID instead of the ASID;
//! - EPT instead of NPT: a second [`sluice_iommu::pagetable::EntryFormat`] (read, write,
//!   execute bits 0-2, memory type WB in bits 5:3, bit 7 for large pages) implementing
//!   [`NestedFormat`], so the generic page-table engine builds the EPT, and
//!   [`GuestMemory::nested_root`] goes into the EPT pointer;
//! - exit reasons mapped to [`Exit`]: VMCALL → [`Exit::Hypercall`], CPUID, HLT, I/O
//!   instruction (exit qualification) → [`Exit::Io`], RDMSR/WRMSR → [`Exit::Msr`], EPT
//!   violation (guest-physical address, qualification bits) →
//!   [`Exit::GuestPhysicalFault`], triple fault → [`Exit::Shutdown`], external
//!   interrupt → [`Exit::Interrupt`], VM-entry failure → [`Exit::Invalid`], MOV to CR0
//!   → [`Exit::Cr0Write`], the rest → [`Exit::Other`];
//! - [`VirtualCpu::skip_instruction`] from the VM-exit instruction length field;
//!   virtual interrupts through the VM-entry interruption field or interrupt-window
//!   exiting instead of V_IRQ.

pub mod guest_memory;
pub mod scheduler;
pub mod vfio_memory;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::arch::x86_64::CpuidResult;
use core::fmt;

use sluice_iommu::pagetable::{EntryFormat, PageTableConfig};

pub use self::guest_memory::{GuestMemory, GuestMemoryError};

/// The page-table entry format of a backend's nested paging (AMD NPT, Intel EPT), with
/// the configuration the generic engine builds the tables with.
pub trait NestedFormat: EntryFormat {
    /// Levels, superpage sizes, coherence of the nested tables.
    fn config() -> PageTableConfig;
}

/// A virtual CPU of some hardware backend (see the module docs for what one implements).
pub trait VirtualCpu: Sized {
    /// The entry format of the backend's nested page tables.
    type Nested: NestedFormat;

    /// Check for the extension and turn it on (idempotent; once before any guest runs).
    fn enable() -> Result<(), GuestError>;

    /// A vCPU for a guest in `memory`, starting at `entry` in 64-bit mode with paging on
    /// (the guest's own tables at [`GuestMemory::page_tables_gpa`]), RSP =
    /// [`GuestMemory::stack_top`], all other GPRs 0. Needs [`Self::enable`] first.
    fn create(memory: &GuestMemory<Self::Nested>, entry: u64) -> Result<Self, GuestError>;

    /// Run the guest until the next exit.
    fn run(&mut self) -> Exit;

    /// General-purpose registers other than RAX and RSP.
    fn regs(&self) -> &GuestRegs;
    fn regs_mut(&mut self) -> &mut GuestRegs;
    fn rax(&self) -> u64;
    fn set_rax(&mut self, value: u64);
    fn rip(&self) -> u64;
    fn set_rip(&mut self, rip: u64);

    /// Move RIP past the instruction that caused the last exit ([`Exit::Hypercall`],
    /// [`Exit::Cpuid`], [`Exit::Hlt`], [`Exit::Io`]); other exits leave RIP alone.
    fn skip_instruction(&mut self);

    /// Queue virtual interrupt `vector` (32..=255; others give `false`), delivered through
    /// the guest's IDT once its RFLAGS.IF is 1.
    fn queue_interrupt(&mut self, vector: u8) -> bool;

    /// Would a HLT be woken right away: a virtual interrupt is pending and the guest's
    /// RFLAGS.IF is 1?
    fn can_take_interrupt(&self) -> bool;

    /// Back to the boot state (registers, control state, no pending interrupts).
    fn reset(&mut self);

    /// Flush the guest's cached translations before it runs again (after a nested
    /// page-table entry was removed or weakened).
    fn flush_tlb(&mut self);
}

/// Guest general-purpose registers other than RAX and RSP (which the hardware keeps in
/// its guest-state area: [`VirtualCpu::rax`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// A port access (I/O exit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoAccess {
    pub port: u16,
    /// Operand size in bytes: 1, 2 or 4.
    pub size: u8,
    /// IN (true) or OUT.
    pub is_in: bool,
    /// INS/OUTS.
    pub string: bool,
    /// With a REP prefix.
    pub rep: bool,
}

/// Why the guest stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// A hypercall (VMMCALL on AMD, VMCALL on Intel).
    Hypercall,
    /// CPUID; leaf in guest RAX, subleaf in RCX.
    Cpuid,
    Hlt,
    Io(IoAccess),
    /// RDMSR / WRMSR of `msr` (guest ECX at the exit).
    Msr {
        msr: u32,
        write: bool,
    },
    /// A guest-physical access the nested page tables do not allow (NPF / EPT
    /// violation). `error_code` is the backend's raw fault information, for messages.
    GuestPhysicalFault {
        gpa: u64,
        write: bool,
        fetch: bool,
        /// During the guest's own page-table walk (not its data access).
        during_walk: bool,
        error_code: u64,
    },
    /// Triple fault (or similar): the guest is dead.
    Shutdown,
    /// A physical interrupt arrived while the guest ran; the host has already taken it.
    /// Nothing to emulate: resume, or treat as a scheduling point.
    Interrupt,
    /// The hardware refused the guest state (says what, e.g. "VMRUN refused the guest
    /// state (VMEXIT_INVALID)"); [`VirtualCpu::reset`] before running again.
    Invalid(&'static str),
    /// A write to CR0.
    Cr0Write,
    /// Anything else: the backend's name for it and its raw exit code and information.
    Other {
        name: &'static str,
        code: u64,
        info1: u64,
        info2: u64,
    },
}

/// Guest RAM starts at guest-physical 0.
pub const GUEST_RAM_BASE: u64 = 0;

/// Exits [`run_guest`] allows before it stops a guest on its own (the handler sees
/// every exit and can stop earlier; this only bounds a handler that never does).
pub const DEFAULT_EXIT_LIMIT: u64 = 50_000_000;

/// Version of the hypercall ABI reported in CPUID 0x4000_0001 EAX (the ABI crate's).
pub use sluice_abi::ABI_VERSION;
/// CPUID 0x4000_0000 EBX, ECX, EDX: "SluiceSluice" (the ABI crate's signature).
pub const CPUID_SIGNATURE: [u32; 3] = sluice_abi::signature();

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestStatus {
    /// Created, not run yet.
    Ready,
    Running,
    /// Stopped by the hypervisor, with the reason.
    Terminated(String),
    /// Exited on its own with a status (a hypercall).
    Exited(u64),
}

impl fmt::Display for GuestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready => f.write_str("ready"),
            Self::Running => f.write_str("running"),
            Self::Terminated(why) => write!(f, "terminated: {why}"),
            Self::Exited(code) => write!(f, "exited with status {code}"),
        }
    }
}

/// What the exit handler wants next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run the guest again (the handler has advanced RIP as needed).
    Resume,
    /// Stop the guest: it did something it must not.
    Terminate(String),
    /// Stop the guest: it asked to exit with this status.
    Exited(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestError {
    /// The backend cannot create vCPUs (not enabled, not supported), with why.
    Unavailable(String),
    Memory(GuestMemoryError),
    /// All address-space tags (ASIDs, VPIDs) are in use.
    NoAsid,
    /// No memory for the vCPU's pages.
    NoMemory,
    /// The loader refused.
    Load(String),
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => f.write_str(why),
            Self::Memory(e) => write!(f, "{e}"),
            Self::NoAsid => f.write_str("no free ASID (too many guests at once)"),
            Self::NoMemory => f.write_str("no memory for the vCPU"),
            Self::Load(why) => write!(f, "loading the guest image failed: {why}"),
        }
    }
}

impl From<GuestMemoryError> for GuestError {
    fn from(e: GuestMemoryError) -> Self {
        Self::Memory(e)
    }
}

/// Longest console line kept; longer lines are logged in pieces.
pub const CONSOLE_LINE_MAX: usize = 240;

pub const COM1_BASE: u16 = 0x3F8;
/// Line status register: THR empty, transmitter empty (always ready).
pub const COM1_LSR_READY: u8 = 0x60;

/// The guest's COM1 (0x3F8-0x3FF): a transmit-only UART that assembles lines.
#[derive(Clone, Debug, Default)]
pub struct Com1 {
    line: Vec<u8>,
}

impl Com1 {
    pub fn handles(port: u16) -> bool {
        (COM1_BASE..COM1_BASE + 8).contains(&port)
    }

    /// An OUT to a COM1 port; returns a completed line (without the newline).
    pub fn write(&mut self, port: u16, value: u8) -> Option<String> {
        if port != COM1_BASE {
            return None; // IER, FCR, LCR, MCR, scratch, divisor: accepted, ignored
        }
        match value {
            b'\n' => Some(self.take_line()),
            b'\r' => None,
            byte => {
                self.line.push(byte);
                (self.line.len() >= CONSOLE_LINE_MAX).then(|| self.take_line())
            }
        }
    }

    /// An IN from a COM1 port.
    pub fn read(&self, port: u16) -> u8 {
        if port == COM1_BASE + 5 {
            COM1_LSR_READY
        } else {
            0
        }
    }

    /// Whatever was written since the last newline (for a final flush).
    pub fn take_line(&mut self) -> String {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        line
    }

    pub fn pending(&self) -> bool {
        !self.line.is_empty()
    }
}

pub struct Guest<V: VirtualCpu> {
    pub name: String,
    pub memory: GuestMemory<V::Nested>,
    pub vcpu: V,
    pub status: GuestStatus,
    pub console: Com1,
    /// [`run_guest`] stops the guest after this many exits.
    pub exit_limit: u64,
    /// Exits handled so far.
    pub exits: u64,
}

impl<V: VirtualCpu + fmt::Debug> fmt::Debug for Guest<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guest")
            .field("name", &self.name)
            .field("status", &self.status)
            .field("memory", &self.memory)
            .field("vcpu", &self.vcpu)
            .finish()
    }
}

impl<V: VirtualCpu> Guest<V> {
    /// A guest with `ram_size` bytes of RAM at guest-physical 0 (a multiple of 2 MiB, at
    /// least 4 MiB; the top 2 MiB hold its first page tables and boot stack: see
    /// [`guest_memory`]). `load` writes the image into guest memory (through
    /// [`GuestMemory::write`], inside [`GuestMemory::loadable`]) and returns the entry
    /// point. The vCPU starts there in 64-bit mode, paging on (identity map of its RAM),
    /// RSP = top of RAM, all other GPRs 0. Needs [`VirtualCpu::enable`] first.
    pub fn create(
        name: &str,
        ram_size: u64,
        load: impl FnOnce(&mut GuestMemory<V::Nested>) -> Result<u64, String>,
    ) -> Result<Self, GuestError> {
        let mut memory = GuestMemory::new(GUEST_RAM_BASE, ram_size)?;
        let entry = load(&mut memory).map_err(GuestError::Load)?;
        let (start, end) = memory.loadable();
        if !(start..end).contains(&entry) {
            return Err(GuestError::Load(format!(
                "entry point {entry:#x} is outside the loadable guest RAM {start:#x}-{end:#x}"
            )));
        }
        if !memory.guest_page_tables_intact() {
            return Err(GuestError::Load(format!(
                "the image overwrote the reserved region at {end:#x} (guest page tables)"
            )));
        }
        let vcpu = V::create(&memory, entry)?;
        Ok(Self {
            name: name.into(),
            memory,
            vcpu,
            status: GuestStatus::Ready,
            console: Com1::default(),
            exit_limit: DEFAULT_EXIT_LIMIT,
            exits: 0,
        })
    }

    /// Queue virtual interrupt `vector` (32..=255) for this guest: delivered through its
    /// IDT once its RFLAGS.IF is 1. `false` for vectors below 32.
    pub fn queue_interrupt(&mut self, vector: u8) -> bool {
        self.vcpu.queue_interrupt(vector)
    }

    /// Would a HLT be woken right away: a virtual interrupt is pending and the guest's
    /// RFLAGS.IF is 1?
    pub fn can_wake(&self) -> bool {
        self.vcpu.can_take_interrupt()
    }

    /// Log the console's unfinished line, if any.
    pub fn flush_console(&mut self) {
        if self.console.pending() {
            let line = self.console.take_line();
            log::info!(target: "guest", "[guest {}] {}", self.name, line);
        }
    }
}

/// Run `guest` until `handler` stops it (or it has taken [`Guest::exit_limit`] exits).
/// Every exit goes to `handler`, which returns what to do; exits it does not handle
/// itself it can pass to [`handle_common_exit`]. Returns the final status (also left in
/// `guest.status`). A guest already stopped is not run again.
pub fn run_guest<V: VirtualCpu>(
    guest: &mut Guest<V>,
    handler: &mut dyn FnMut(&mut Guest<V>, Exit) -> Action,
) -> GuestStatus {
    if matches!(
        guest.status,
        GuestStatus::Terminated(_) | GuestStatus::Exited(_)
    ) {
        return guest.status.clone();
    }
    guest.status = GuestStatus::Running;
    let status = loop {
        if guest.exits >= guest.exit_limit {
            break GuestStatus::Terminated(format!(
                "exit limit of {} reached (exit storm?)",
                guest.exit_limit
            ));
        }
        let exit = guest.vcpu.run();
        guest.exits += 1;
        if exit == Exit::Interrupt {
            continue; // a host interrupt, already taken by the host
        }
        match handler(guest, exit) {
            Action::Resume => continue,
            Action::Terminate(why) => break GuestStatus::Terminated(why),
            Action::Exited(code) => break GuestStatus::Exited(code),
        }
    };
    guest.flush_console();
    guest.status = status.clone();
    status
}

/// The default handling of every exit but [`Exit::Hypercall`] (the caller's):
///
/// - CPUID: [`emulate_cpuid`], RIP past it;
/// - physical interrupt (already taken by the host): resume;
/// - HLT: with a virtual interrupt pending and the guest's IF = 1, RIP past it and resume
///   (the interrupt is delivered); otherwise terminate ("halted with nothing to wake
///   it": a lone guest has nobody else to wake it; [`scheduler::run_all`] blocks instead);
/// - port I/O to COM1 (0x3F8-0x3FF): emulated, lines logged as `[guest NAME] ...`
///   (target "guest"); any other port, and string I/O, terminates;
/// - MSR access, guest-physical fault, shutdown, invalid state, anything else: terminate
///   with a reason naming what happened.
pub fn handle_common_exit<V: VirtualCpu>(guest: &mut Guest<V>, exit: Exit) -> Action {
    match exit {
        Exit::Cpuid => {
            let v = &guest.vcpu;
            let leaf = v.rax() as u32;
            let subleaf = v.regs().rcx as u32;
            let r = emulate_cpuid(leaf, subleaf, |l, s| {
                core::arch::x86_64::__cpuid_count(l, s)
            });
            // CPUID writes the low 32 bits and clears the high ones.
            guest.vcpu.set_rax(r.eax.into());
            let regs = guest.vcpu.regs_mut();
            regs.rbx = r.ebx.into();
            regs.rcx = r.ecx.into();
            regs.rdx = r.edx.into();
            guest.vcpu.skip_instruction();
            Action::Resume
        }
        Exit::Interrupt => Action::Resume,
        Exit::Hlt if guest.can_wake() => {
            guest.vcpu.skip_instruction();
            Action::Resume
        }
        Exit::Hlt => Action::Terminate(format!(
            "halted with nothing to wake it (RIP {:#x})",
            guest.vcpu.rip()
        )),
        Exit::Shutdown => Action::Terminate(format!(
            "triple fault (shutdown) near RIP {:#x}",
            guest.vcpu.rip()
        )),
        Exit::GuestPhysicalFault {
            gpa,
            write,
            fetch,
            during_walk,
            error_code,
        } => Action::Terminate(format!(
            "access outside its memory at GPA {gpa:#x} ({} {}, error code {error_code:#x}, RIP {:#x})",
            if fetch {
                "instruction fetch"
            } else if write {
                "write"
            } else {
                "read"
            },
            if during_walk {
                "during its page-table walk"
            } else {
                "of data"
            },
            guest.vcpu.rip()
        )),
        Exit::Io(io) => handle_port_io(guest, io),
        Exit::Msr { msr, write } => Action::Terminate(format!(
            "MSR {msr:#x} {} not allowed (RIP {:#x})",
            if write { "write" } else { "read" },
            guest.vcpu.rip()
        )),
        Exit::Invalid(what) => Action::Terminate(format!("{what}; reset the vCPU before reuse")),
        Exit::Hypercall => Action::Terminate(format!(
            "hypercall at RIP {:#x} not handled",
            guest.vcpu.rip()
        )),
        Exit::Cr0Write => Action::Terminate(format!(
            "CR0 write not allowed (paging and protection stay as Sluice set them; RIP {:#x})",
            guest.vcpu.rip()
        )),
        Exit::Other {
            name,
            code,
            info1,
            info2,
        } => Action::Terminate(format!(
            "{name} not allowed (exit code {code:#x}, info {info1:#x}/{info2:#x}, RIP {:#x})",
            guest.vcpu.rip()
        )),
    }
}

fn handle_port_io<V: VirtualCpu>(guest: &mut Guest<V>, io: IoAccess) -> Action {
    if !Com1::handles(io.port) {
        return Action::Terminate(format!(
            "port I/O to {:#x} not allowed ({} {} bytes, RIP {:#x})",
            io.port,
            if io.is_in { "IN" } else { "OUT" },
            io.size,
            guest.vcpu.rip()
        ));
    }
    if io.string || io.rep {
        return Action::Terminate(format!(
            "string port I/O (INS/OUTS) to {:#x} not supported",
            io.port
        ));
    }
    if io.is_in {
        let value = u64::from(guest.console.read(io.port));
        let rax = guest.vcpu.rax();
        let merged = match io.size {
            1 => (rax & !0xff) | value,
            2 => (rax & !0xffff) | value,
            _ => value, // a 32-bit destination zero-extends
        };
        guest.vcpu.set_rax(merged);
    } else if let Some(line) = guest.console.write(io.port, guest.vcpu.rax() as u8) {
        log::info!(target: "guest", "[guest {}] {}", guest.name, line);
    }
    guest.vcpu.skip_instruction();
    Action::Resume
}

/// What a guest's CPUID returns, given the host's (`host(leaf, subleaf)`):
///
/// - 0x4000_0000: EAX = 0x4000_0001 (highest hypervisor leaf), EBX/ECX/EDX =
///   "SluiceSluice" ([`CPUID_SIGNATURE`]); 0x4000_0001: EAX = [`ABI_VERSION`], rest 0;
///   other 0x4000_00xx leaves: 0.
/// - leaf 1: ECX bit 31 (hypervisor present) set, so guests know to look at 0x4000_0000;
///   VMX (5), XSAVE (26), OSXSAVE (27) and AVX (28) cleared: Sluice switches only the
///   FXSAVE state and intercepts XSETBV.
/// - leaf 7: AVX2 and AVX-512 bits cleared (no XSAVE state for them); leaf 0xD: 0.
/// - 0x8000_0001: ECX bit 2 (SVM) cleared: no nested virtualization (VMRUN is
///   intercepted and refused); 0x8000_000A (SVM features): 0.
/// - everything else: the host's values.
pub fn emulate_cpuid(
    leaf: u32,
    subleaf: u32,
    host: impl Fn(u32, u32) -> CpuidResult,
) -> CpuidResult {
    let zero = CpuidResult {
        eax: 0,
        ebx: 0,
        ecx: 0,
        edx: 0,
    };
    match leaf {
        0x4000_0000 => CpuidResult {
            eax: 0x4000_0001,
            ebx: CPUID_SIGNATURE[0],
            ecx: CPUID_SIGNATURE[1],
            edx: CPUID_SIGNATURE[2],
        },
        0x4000_0001 => CpuidResult {
            eax: ABI_VERSION,
            ..zero
        },
        0x4000_0002..=0x4000_00FF => zero,
        0xD | 0x8000_000A => zero,
        _ => {
            let mut r = host(leaf, subleaf);
            match leaf {
                1 => {
                    r.ecx |= 1 << 31;
                    r.ecx &= !((1 << 5) | (1 << 26) | (1 << 27) | (1 << 28));
                }
                7 if subleaf == 0 => {
                    // AVX2 (EBX 5), AVX-512 F/DQ/IFMA/PF/ER/CD/BW/VL (16, 17, 21, 26-28, 30, 31).
                    r.ebx &= !((1 << 5)
                        | (1 << 16)
                        | (1 << 17)
                        | (1 << 21)
                        | (1 << 26)
                        | (1 << 27)
                        | (1 << 28)
                        | (1 << 30)
                        | (1 << 31));
                }
                0x8000_0001 => r.ecx &= !(1 << 2),
                _ => {}
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(leaf: u32, subleaf: u32) -> CpuidResult {
        CpuidResult {
            eax: leaf,
            ebx: 0xFFFF_FFFF,
            ecx: 0xFFFF_FFFF ^ (1 << 31),
            edx: subleaf,
        }
    }

    #[test]
    fn cpuid_hypervisor_leaves() {
        let r = emulate_cpuid(0x4000_0000, 0, fake_host);
        assert_eq!(r.eax, 0x4000_0001);
        let mut sig = Vec::new();
        for reg in [r.ebx, r.ecx, r.edx] {
            sig.extend_from_slice(&reg.to_le_bytes());
        }
        assert_eq!(&sig, b"SluiceSluice");
        let r = emulate_cpuid(0x4000_0001, 0, fake_host);
        assert_eq!((r.eax, r.ebx, r.ecx, r.edx), (1, 0, 0, 0));
        let r = emulate_cpuid(0x4000_0010, 0, fake_host);
        assert_eq!((r.eax, r.ebx, r.ecx, r.edx), (0, 0, 0, 0));
    }

    #[test]
    fn cpuid_host_leaves_filtered() {
        let r = emulate_cpuid(1, 0, fake_host);
        assert_ne!(r.ecx & (1 << 31), 0, "hypervisor present");
        assert_eq!(r.ecx & (1 << 26 | 1 << 27 | 1 << 28 | 1 << 5), 0);
        assert_eq!(r.ecx | (1 << 26 | 1 << 27 | 1 << 28 | 1 << 5), 0xFFFF_FFFF);
        let r = emulate_cpuid(0x8000_0001, 0, fake_host);
        assert_eq!(r.ecx & (1 << 2), 0, "no SVM for the guest");
        assert_eq!(r.ecx | (1 << 2), 0xFFFF_FFFF ^ (1 << 31));
        let r = emulate_cpuid(0x8000_000A, 0, fake_host);
        assert_eq!((r.eax, r.ebx, r.ecx, r.edx), (0, 0, 0, 0));
        let r = emulate_cpuid(7, 0, fake_host);
        assert_eq!(r.ebx & (1 << 5), 0);
        let r = emulate_cpuid(4, 2, fake_host);
        assert_eq!((r.eax, r.edx), (4, 2), "subleaf passed through");
        assert_eq!(r.ebx, 0xFFFF_FFFF);
    }

    #[test]
    fn com1_assembles_lines() {
        let mut c = Com1::default();
        let mut lines = Vec::new();
        for &b in b"hello\r\nworld\n" {
            lines.extend(c.write(0x3F8, b));
        }
        assert_eq!(lines, ["hello", "world"]);
        assert_eq!(c.write(0x3F9, b'\n'), None, "IER writes are ignored");
        assert_eq!(c.write(0x3FB, 0x80), None);
        assert!(!c.pending());
        assert_eq!(c.read(0x3FD), 0x60);
        assert_eq!(c.read(0x3F8), 0);
        assert_eq!(c.read(0x3FA), 0);
        c.write(0x3F8, b'x');
        assert!(c.pending());
        assert_eq!(c.take_line(), "x");
        assert!(Com1::handles(0x3F8) && Com1::handles(0x3FF));
        assert!(!Com1::handles(0x3F7) && !Com1::handles(0x400) && !Com1::handles(0x2F8));
    }

    #[test]
    fn com1_splits_overlong_lines() {
        let mut c = Com1::default();
        let mut lines = Vec::new();
        for _ in 0..CONSOLE_LINE_MAX + 3 {
            lines.extend(c.write(0x3F8, b'a'));
        }
        lines.extend(c.write(0x3F8, b'\n'));
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), CONSOLE_LINE_MAX);
        assert_eq!(lines[1], "aaa");
    }
}
