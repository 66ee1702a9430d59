//! The Sluice hypercall ABI, shared by the hypervisor and its guests.
//!
//! This crate is the written specification of the interface between a Sluice guest and
//! the hypervisor. Everything in it is plain data and pure functions, except the
//! guest-side [`client`], which executes `VMMCALL` (core calls, and the VFIO calls in
//! `client::vfio`).
//!
//! C guests have the same ABI in `abi/include/sluice.h` (numbers, errno values, CPUID
//! leaves, the guest start info, every VFIO structure and constant, and an inline
//! `sluice_hypercall`); the test `abi/tests/c_header.rs` compiles it with the system C
//! compiler and checks every size, offset and value against this crate.
//!
//! # Calling convention
//!
//! A guest makes a hypercall by executing `VMMCALL` (`0f 01 d9`, 3 bytes) at CPL 0 with:
//!
//! | register | meaning                                  |
//! |----------|------------------------------------------|
//! | RAX      | hypercall number (see [`nr`])            |
//! | RDI      | argument 0                               |
//! | RSI      | argument 1                               |
//! | RDX      | argument 2                               |
//! | R10      | argument 3                               |
//! | R8       | argument 4                               |
//! | R9       | argument 5                               |
//!
//! (the Linux system call order, with R10 in place of RCX.) Arguments a call does not use
//! are ignored today; guests should pass 0 so that they may be given a meaning later.
//!
//! On return, RAX holds the result, read as a signed 64-bit integer: a value `>= 0` is the
//! call's success value, a negative value is `-errno` with one of the [`Errno`] values
//! (for example `-22` = `-EINVAL`). [`encode_result`] and [`decode_result`] convert.
//! Every other general-purpose register, RFLAGS, and the x87/SSE state are preserved.
//!
//! The hypervisor advances the guest's RIP past the 3-byte `VMMCALL` (the SVM
//! implementation under QEMU TCG has no NRIP save, so it does this itself), so execution
//! continues with the next instruction. [`nr::EXIT`] never returns.
//!
//! Unknown hypercall numbers fail with [`Errno::ENOSYS`].
//!
//! # Arguments in guest memory
//!
//! Arguments larger than a register are passed by guest-physical address (GPA): a buffer
//! (as for [`nr::CONSOLE_WRITE`]) or a `repr(C)` structure with explicit padding,
//! little-endian fields and a size checked at compile time. The hypervisor validates
//! every such range with [`validate_guest_range`] before touching it: it must be wholly
//! inside the guest's RAM, must not wrap around the address space and is bounded by a
//! per-call maximum size. Violations fail with [`Errno::EFAULT`] (outside RAM, wrapping)
//! or [`Errno::E2BIG`] (too long); the hypervisor never faults on a guest's behalf.
//!
//! # Hypercall numbers
//!
//! | nr     | name                   | arguments                   | result                 |
//! |--------|------------------------|-----------------------------|------------------------|
//! | 0      | [`nr::VERSION`]        | —                           | [`ABI_VERSION`]        |
//! | 1      | [`nr::CONSOLE_WRITE`]  | RDI = GPA, RSI = length     | bytes written          |
//! | 2      | [`nr::EXIT`]           | RDI = status                | never returns          |
//! | 3      | [`nr::NULL`]           | —                           | 0                      |
//! | 4      | [`nr::SELF_INTERRUPT`] | RDI = vector (32..=255)     | 0 (`-EINVAL`: vector)  |
//! | 0x100… | VFIO calls ([`vfio`], from [`nr::VFIO_BASE`]) | see [`vfio`] | see [`vfio`] |
//!
//! `CONSOLE_WRITE` accepts at most [`CONSOLE_WRITE_MAX`] bytes per call (longer:
//! `-E2BIG`); the bytes need not be UTF-8. `NULL` does nothing and exists to measure the
//! round-trip cost of a hypercall.
//!
//! # Discovery: CPUID
//!
//! A Sluice guest sees the hypervisor-present bit (CPUID.1:ECX bit 31) and the
//! hypervisor leaves:
//!
//! * [`CPUID_LEAF_SIGNATURE`] (`0x4000_0000`): EAX = [`CPUID_MAX_LEAF`] (`0x4000_0001`),
//!   EBX, ECX, EDX = the 12 bytes [`SIGNATURE`] `"SluiceSluice"` (see [`signature`]).
//! * [`CPUID_LEAF_VERSION`] (`0x4000_0001`): EAX = [`ABI_VERSION`], EBX = ECX = EDX = 0.
//!
//! # Guest memory layout and entry state
//!
//! A guest's RAM is one contiguous guest-physical range `[ram_base, ram_base + ram_size)`
//! (today `ram_base` = [`GUEST_RAM_BASE`] = 0). The first [`GUEST_RESERVED_END`] bytes
//! (1 MiB) belong to the hypervisor and a guest image must not load anything there:
//!
//! | GPA                                     | contents                                 |
//! |-----------------------------------------|------------------------------------------|
//! | [`GUEST_START_INFO_GPA`] (`0x1000`)     | [`GuestStartInfo`]                       |
//! | [`GUEST_CMDLINE_GPA`] (`0x2000`)        | guest command line, ≤ [`GUEST_CMDLINE_MAX`] bytes, not NUL-terminated |
//! | `ram_end - 2 MiB .. ram_end`            | the guest's first page tables (CR3 = `ram_end - 2 MiB`), then the initial stack growing down from `ram_end` |
//!
//! Guest images are ELF64 executables linked at their guest-physical addresses
//! (`p_vaddr == p_paddr`), at or above [`GUEST_RESERVED_END`] and below `ram_end - 2 MiB`.
//! The guest is entered in 64-bit long mode at CPL 0 with paging on (RAM identity-mapped
//! with 2 MiB pages, nothing else mapped), interrupts off, RIP = the ELF entry point,
//! RDI = GPA of the [`GuestStartInfo`], and RSP = `ram_end` (16-byte aligned). The page
//! tables and stack belong to the guest from then on. ([`GUEST_STACK_TOP`] is kept for
//! the reserved low window's layout checks.)
#![cfg_attr(not(test), no_std)]

use core::fmt;

pub mod vfio;

/// The ABI version this crate describes; returned by [`nr::VERSION`] and CPUID
/// [`CPUID_LEAF_VERSION`], and stored in [`GuestStartInfo::abi_version`].
pub const ABI_VERSION: u32 = 1;

/// Hypercall numbers (RAX).
pub mod nr {
    /// Returns [`ABI_VERSION`](crate::ABI_VERSION).
    pub const VERSION: u64 = 0;
    /// RDI = GPA of the bytes, RSI = length (≤ [`CONSOLE_WRITE_MAX`](crate::CONSOLE_WRITE_MAX)).
    /// Returns the number of bytes written.
    pub const CONSOLE_WRITE: u64 = 1;
    /// RDI = exit status. Stops the guest; never returns.
    pub const EXIT: u64 = 2;
    /// Returns 0. For measuring the hypercall round trip.
    pub const NULL: u64 = 3;
    /// RDI = vector (32..=255): the hypervisor delivers that vector to the calling guest
    /// as a virtual interrupt once the guest can take it (RFLAGS.IF = 1). Returns 0.
    /// Exists so guests can test their interrupt path; device interrupts use the same
    /// injection later.
    pub const SELF_INTERRUPT: u64 = 4;
    /// The first VFIO hypercall number: see [`crate::vfio::nr`].
    /// Numbers `5..VFIO_BASE` are reserved for future core calls.
    pub const VFIO_BASE: u64 = 0x100;
}

/// The most bytes one [`nr::CONSOLE_WRITE`] accepts.
pub const CONSOLE_WRITE_MAX: u64 = 4096;

/// Where guest RAM starts (guest-physical).
pub const GUEST_RAM_BASE: u64 = 0;
/// Guest-physical address of the [`GuestStartInfo`]; RDI holds it at guest entry.
pub const GUEST_START_INFO_GPA: u64 = 0x1000;
/// Guest-physical address of the guest command line.
pub const GUEST_CMDLINE_GPA: u64 = 0x2000;
/// The longest guest command line, in bytes.
pub const GUEST_CMDLINE_MAX: u32 = 4096;
/// The initial stack pointer is at or below this address (the stack grows down inside
/// the hypervisor's reserved window).
pub const GUEST_STACK_TOP: u64 = 0x10_0000;
/// `[GUEST_RAM_BASE, GUEST_RESERVED_END)` belongs to the hypervisor: no image segment
/// may be loaded there.
pub const GUEST_RESERVED_END: u64 = 0x10_0000;

// The reserved window holds the start info, then the command line, then page tables and
// the stack; images load above it.
const _: () = assert!(GUEST_START_INFO_GPA + GUEST_START_INFO_SIZE as u64 <= GUEST_CMDLINE_GPA);
const _: () = assert!(GUEST_CMDLINE_GPA + GUEST_CMDLINE_MAX as u64 <= 0x1_0000);
const _: () = assert!(GUEST_STACK_TOP <= GUEST_RESERVED_END && GUEST_STACK_TOP % 16 == 0);
const _: () = assert!(GUEST_RESERVED_END % 4096 == 0);

// ---------------------------------------------------------------------------------------
// Errno
// ---------------------------------------------------------------------------------------

/// A hypercall failure: a positive Linux errno value. RAX carries its negation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Errno(i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// No such entry.
    pub const ENOENT: Errno = Errno(2);
    /// Argument (list) too long: a length above the call's maximum.
    pub const E2BIG: Errno = Errno(7);
    /// Bad handle: closed, forged, or another guest's (Linux: bad file descriptor).
    pub const EBADF: Errno = Errno(9);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno(12);
    /// Bad address: a guest-memory range outside the guest's RAM, or wrapping.
    pub const EFAULT: Errno = Errno(14);
    /// Resource busy.
    pub const EBUSY: Errno = Errno(16);
    /// Already exists.
    pub const EEXIST: Errno = Errno(17);
    /// No such device.
    pub const ENODEV: Errno = Errno(19);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(22);
    /// A handle of the wrong kind for the call (Linux: ioctl on the wrong file).
    pub const ENOTTY: Errno = Errno(25);
    /// No space left.
    pub const ENOSPC: Errno = Errno(28);
    /// No such hypercall.
    pub const ENOSYS: Errno = Errno(38);

    /// An errno from its positive value, or `None` unless `1 <= code <= 4095`.
    pub const fn new(code: i32) -> Option<Errno> {
        if code >= 1 && code <= MAX_ERRNO as i32 {
            Some(Errno(code))
        } else {
            None
        }
    }

    /// The positive errno value.
    pub const fn code(self) -> i32 {
        self.0
    }

    /// The RAX value that reports this error (`-code`).
    pub const fn to_ret(self) -> i64 {
        -(self.0 as i64)
    }

    /// The symbolic name, or `None` for a value this crate does not name.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "EPERM",
            2 => "ENOENT",
            7 => "E2BIG",
            9 => "EBADF",
            12 => "ENOMEM",
            14 => "EFAULT",
            16 => "EBUSY",
            17 => "EEXIST",
            19 => "ENODEV",
            22 => "EINVAL",
            25 => "ENOTTY",
            28 => "ENOSPC",
            38 => "ENOSYS",
            _ => return None,
        })
    }
}

/// Errno values are `1..=MAX_ERRNO`, so a result in `-MAX_ERRNO..=-1` is an error.
pub const MAX_ERRNO: u32 = 4095;

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.0),
            None => write!(f, "errno {}", self.0),
        }
    }
}

/// The RAX value for a hypercall result (hypervisor side).
///
/// Success values must be `<= i64::MAX`; a larger one (a hypervisor bug) is reported as
/// `-EINVAL` rather than being mistaken for an error by the guest.
pub const fn encode_result(result: Result<u64, Errno>) -> u64 {
    match result {
        Ok(v) if v <= i64::MAX as u64 => v,
        Ok(_) => Errno::EINVAL.to_ret() as u64,
        Err(e) => e.to_ret() as u64,
    }
}

/// Interpret a RAX value returned by a hypercall (guest side).
///
/// Negative values in `-4095..=-1` are errors. Other negative values cannot be produced
/// by a conforming hypervisor; they are reported as `EINVAL`.
pub const fn decode_result(rax: i64) -> Result<u64, Errno> {
    if rax >= 0 {
        Ok(rax as u64)
    } else if rax >= -(MAX_ERRNO as i64) {
        Err(Errno(-rax as i32))
    } else {
        Err(Errno::EINVAL)
    }
}

// ---------------------------------------------------------------------------------------
// CPUID
// ---------------------------------------------------------------------------------------

/// CPUID leaf with the maximum hypervisor leaf (EAX) and the signature (EBX, ECX, EDX).
pub const CPUID_LEAF_SIGNATURE: u32 = 0x4000_0000;
/// CPUID leaf whose EAX is [`ABI_VERSION`].
pub const CPUID_LEAF_VERSION: u32 = 0x4000_0001;
/// The highest hypervisor CPUID leaf (EAX of [`CPUID_LEAF_SIGNATURE`]).
pub const CPUID_MAX_LEAF: u32 = CPUID_LEAF_VERSION;
/// The hypervisor signature, as the 12 bytes of EBX, ECX, EDX (little-endian each).
pub const SIGNATURE: [u8; 12] = *b"SluiceSluice";

/// The signature as the register values `[ebx, ecx, edx]` of CPUID
/// [`CPUID_LEAF_SIGNATURE`] ("Slui", "ceSl", "uice").
pub const fn signature() -> [u32; 3] {
    let s = SIGNATURE;
    [
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
    ]
}

/// Whether `[ebx, ecx, edx]` from CPUID [`CPUID_LEAF_SIGNATURE`] is Sluice's.
pub const fn is_signature(ebx: u32, ecx: u32, edx: u32) -> bool {
    let s = signature();
    ebx == s[0] && ecx == s[1] && edx == s[2]
}

// ---------------------------------------------------------------------------------------
// Guest start info
// ---------------------------------------------------------------------------------------

/// [`GuestStartInfo::magic`]: the bytes `"SLCGUEST"` read as a little-endian `u64`.
pub const GUEST_START_MAGIC: u64 = u64::from_le_bytes(*b"SLCGUEST");
/// The longest guest name (bytes of [`GuestStartInfo::name`]).
pub const GUEST_NAME_MAX: usize = 32;

/// What the hypervisor tells a guest at entry; at [`GUEST_START_INFO_GPA`], whose
/// address RDI holds when the guest starts.
///
/// Layout (80 bytes, little-endian, no implicit padding):
///
/// | offset | size | field          |
/// |--------|------|----------------|
/// | 0      | 8    | `magic` = [`GUEST_START_MAGIC`] (`"SLCGUEST"`) |
/// | 8      | 4    | `abi_version` = [`ABI_VERSION`] |
/// | 12     | 4    | `_pad` = 0     |
/// | 16     | 8    | `ram_base`     |
/// | 24     | 8    | `ram_size`     |
/// | 32     | 8    | `cmdline_gpa`  |
/// | 40     | 4    | `cmdline_len` (bytes, no NUL; 0 = no command line) |
/// | 44     | 4    | `name_len` (≤ 32) |
/// | 48     | 32   | `name`: the guest's name, UTF-8, NUL-padded |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct GuestStartInfo {
    pub magic: u64,
    pub abi_version: u32,
    pub _pad: u32,
    pub ram_base: u64,
    pub ram_size: u64,
    pub cmdline_gpa: u64,
    pub cmdline_len: u32,
    pub name_len: u32,
    pub name: [u8; GUEST_NAME_MAX],
}

/// Size of [`GuestStartInfo`] in bytes.
pub const GUEST_START_INFO_SIZE: usize = 80;

const _: () = assert!(core::mem::size_of::<GuestStartInfo>() == GUEST_START_INFO_SIZE);
const _: () = assert!(core::mem::align_of::<GuestStartInfo>() == 8);
const _: () = assert!(core::mem::offset_of!(GuestStartInfo, abi_version) == 8);
const _: () = assert!(core::mem::offset_of!(GuestStartInfo, ram_base) == 16);
const _: () = assert!(core::mem::offset_of!(GuestStartInfo, cmdline_gpa) == 32);
const _: () = assert!(core::mem::offset_of!(GuestStartInfo, cmdline_len) == 40);
const _: () = assert!(core::mem::offset_of!(GuestStartInfo, name_len) == 44);
const _: () = assert!(core::mem::offset_of!(GuestStartInfo, name) == 48);

impl GuestStartInfo {
    /// A start info for the guest `name`; a name longer than [`GUEST_NAME_MAX`] bytes
    /// is cut at a character boundary.
    pub fn new(
        name: &str,
        ram_base: u64,
        ram_size: u64,
        cmdline_gpa: u64,
        cmdline_len: u32,
    ) -> Self {
        let mut end = name.len().min(GUEST_NAME_MAX);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0u8; GUEST_NAME_MAX];
        buf[..end].copy_from_slice(&name.as_bytes()[..end]);
        GuestStartInfo {
            magic: GUEST_START_MAGIC,
            abi_version: ABI_VERSION,
            _pad: 0,
            ram_base,
            ram_size,
            cmdline_gpa,
            cmdline_len,
            name_len: end as u32,
            name: buf,
        }
    }

    /// The name, if `name_len` is in bounds and the bytes are UTF-8.
    pub fn name(&self) -> Option<&str> {
        let bytes = self.name.get(..self.name_len as usize)?;
        core::str::from_utf8(bytes).ok()
    }

    /// Whether magic and version are the ones this crate writes.
    pub fn is_valid(&self) -> bool {
        self.magic == GUEST_START_MAGIC && self.abi_version == ABI_VERSION
    }

    /// The exact bytes of the structure in guest memory (for writing it without `unsafe`).
    pub fn to_bytes(&self) -> [u8; GUEST_START_INFO_SIZE] {
        let mut b = [0u8; GUEST_START_INFO_SIZE];
        b[0..8].copy_from_slice(&self.magic.to_le_bytes());
        b[8..12].copy_from_slice(&self.abi_version.to_le_bytes());
        b[12..16].copy_from_slice(&self._pad.to_le_bytes());
        b[16..24].copy_from_slice(&self.ram_base.to_le_bytes());
        b[24..32].copy_from_slice(&self.ram_size.to_le_bytes());
        b[32..40].copy_from_slice(&self.cmdline_gpa.to_le_bytes());
        b[40..44].copy_from_slice(&self.cmdline_len.to_le_bytes());
        b[44..48].copy_from_slice(&self.name_len.to_le_bytes());
        b[48..80].copy_from_slice(&self.name);
        b
    }

    /// The structure from its bytes in guest memory (no validation: see [`Self::is_valid`]).
    pub fn from_bytes(b: &[u8; GUEST_START_INFO_SIZE]) -> Self {
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let u32_at = |o: usize| {
            let mut x = [0u8; 4];
            x.copy_from_slice(&b[o..o + 4]);
            u32::from_le_bytes(x)
        };
        let mut name = [0u8; GUEST_NAME_MAX];
        name.copy_from_slice(&b[48..80]);
        GuestStartInfo {
            magic: u64_at(0),
            abi_version: u32_at(8),
            _pad: u32_at(12),
            ram_base: u64_at(16),
            ram_size: u64_at(24),
            cmdline_gpa: u64_at(32),
            cmdline_len: u32_at(40),
            name_len: u32_at(44),
            name,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hypervisor side: decoding and validation
// ---------------------------------------------------------------------------------------

/// A decoded hypercall with typed arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// [`nr::VERSION`].
    Version,
    /// [`nr::CONSOLE_WRITE`]: `len <= CONSOLE_WRITE_MAX`; the range is not yet checked
    /// against guest RAM (use [`validate_guest_range`]).
    ConsoleWrite { gpa: u64, len: u64 },
    /// [`nr::EXIT`].
    Exit { status: u64 },
    /// [`nr::NULL`].
    Null,
    /// [`nr::SELF_INTERRUPT`]: `vector` is 32..=255 (checked by [`decode`]).
    SelfInterrupt { vector: u8 },
    /// A VFIO call (numbers [`nr::VFIO_BASE`]`..`[`vfio::nr::RESERVED_END`]).
    Vfio(vfio::VfioCall),
}

impl Hypercall {
    /// The hypercall number.
    pub const fn nr(&self) -> u64 {
        match self {
            Hypercall::Version => nr::VERSION,
            Hypercall::ConsoleWrite { .. } => nr::CONSOLE_WRITE,
            Hypercall::Exit { .. } => nr::EXIT,
            Hypercall::Null => nr::NULL,
            Hypercall::SelfInterrupt { .. } => nr::SELF_INTERRUPT,
            Hypercall::Vfio(call) => call.nr(),
        }
    }

    /// The registers that make this call: `(rax, [rdi, rsi, rdx, r10, r8, r9])`.
    pub const fn encode(&self) -> (u64, [u64; 6]) {
        let args = match *self {
            Hypercall::Version | Hypercall::Null => [0; 6],
            Hypercall::ConsoleWrite { gpa, len } => [gpa, len, 0, 0, 0, 0],
            Hypercall::Exit { status } => [status, 0, 0, 0, 0, 0],
            Hypercall::SelfInterrupt { vector } => [vector as u64, 0, 0, 0, 0, 0],
            Hypercall::Vfio(call) => return call.encode(),
        };
        (self.nr(), args)
    }
}

/// Decode a hypercall from RAX (`nr`) and `args` = `[rdi, rsi, rdx, r10, r8, r9]`.
///
/// Unknown numbers give [`Errno::ENOSYS`]; VFIO numbers decode through
/// [`vfio::decode`]; a
/// `CONSOLE_WRITE` longer than [`CONSOLE_WRITE_MAX`] gives [`Errno::E2BIG`]; a
/// `SELF_INTERRUPT` vector outside 32..=255 gives [`Errno::EINVAL`]. Guest
/// memory ranges are *not* checked here: that needs the guest's RAM
/// ([`validate_guest_range`]).
pub const fn decode(nr: u64, args: [u64; 6]) -> Result<Hypercall, Errno> {
    match nr {
        nr::VERSION => Ok(Hypercall::Version),
        nr::CONSOLE_WRITE => {
            let (gpa, len) = (args[0], args[1]);
            if len > CONSOLE_WRITE_MAX {
                Err(Errno::E2BIG)
            } else {
                Ok(Hypercall::ConsoleWrite { gpa, len })
            }
        }
        nr::EXIT => Ok(Hypercall::Exit { status: args[0] }),
        nr::NULL => Ok(Hypercall::Null),
        nr::SELF_INTERRUPT => match args[0] {
            v @ 32..=255 => Ok(Hypercall::SelfInterrupt { vector: v as u8 }),
            _ => Err(Errno::EINVAL),
        },
        nr::VFIO_BASE..vfio::nr::RESERVED_END => match vfio::decode(nr, args) {
            Ok(call) => Ok(Hypercall::Vfio(call)),
            Err(e) => Err(e),
        },
        _ => Err(Errno::ENOSYS),
    }
}

/// Check that the guest-physical range `[gpa, gpa + len)` may be accessed: `len <=
/// max_len` (else [`Errno::E2BIG`]), the range does not wrap and lies wholly inside
/// `[ram_base, ram_base + ram_size)` (else [`Errno::EFAULT`]).
///
/// An empty range (`len == 0`) is accepted wherever it points: nothing is accessed.
/// A RAM description that itself wraps is treated as empty.
pub const fn validate_guest_range(
    gpa: u64,
    len: u64,
    ram_base: u64,
    ram_size: u64,
    max_len: u64,
) -> Result<(), Errno> {
    if len > max_len {
        return Err(Errno::E2BIG);
    }
    if len == 0 {
        return Ok(());
    }
    let Some(end) = gpa.checked_add(len) else {
        return Err(Errno::EFAULT);
    };
    let Some(ram_end) = ram_base.checked_add(ram_size) else {
        return Err(Errno::EFAULT);
    };
    if gpa < ram_base || end > ram_end {
        return Err(Errno::EFAULT);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Guest side: the client
// ---------------------------------------------------------------------------------------

/// The guest-side client: issue hypercalls with `VMMCALL`.
///
/// The core calls are functions here; the VFIO calls are in [`client::vfio`]
/// (containers, groups and devices as owned values that close their handles on drop).
///
/// Only meaningful inside a Sluice guest: elsewhere `VMMCALL` raises #UD.
#[cfg(target_arch = "x86_64")]
pub mod client {
    use crate::{CONSOLE_WRITE_MAX, Errno, decode_result, nr};
    use core::arch::asm;

    pub mod vfio;

    /// Make hypercall `nr` with arguments in RDI, RSI, RDX, R10, R8, R9; returns RAX.
    ///
    /// # Safety
    ///
    /// Must run at CPL 0 inside a Sluice guest (elsewhere `VMMCALL` is #UD). The
    /// arguments must satisfy the call's contract: in particular guest-memory arguments
    /// name memory the hypervisor may read (or write) for the duration of the call.
    pub unsafe fn hypercall(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
        let ret: i64;
        // SAFETY: the caller guarantees we are a Sluice guest and the arguments obey the
        // call's contract. VMMCALL preserves every register except RAX (the ABI), and
        // the hypervisor may read/write guest memory, so the default (memory-clobbering)
        // options are kept; it does not touch the stack.
        unsafe {
            asm!(
                "vmmcall",
                inlateout("rax") nr => ret,
                in("rdi") a0,
                in("rsi") a1,
                in("rdx") a2,
                in("r10") a3,
                in("r8") a4,
                in("r9") a5,
                options(nostack),
            );
        }
        ret
    }

    /// [`nr::VERSION`]: the hypervisor's ABI version.
    pub fn version() -> Result<u32, Errno> {
        // SAFETY: VERSION takes no arguments and touches no memory.
        let r = decode_result(unsafe { hypercall(nr::VERSION, 0, 0, 0, 0, 0, 0) })?;
        u32::try_from(r).map_err(|_| Errno::EINVAL)
    }

    /// [`nr::CONSOLE_WRITE`] for all of `bytes`, in chunks of at most
    /// [`CONSOLE_WRITE_MAX`]; returns the number of bytes written.
    ///
    /// Guest virtual addresses are assumed to equal guest-physical ones (the identity
    /// mapping the guest starts with).
    pub fn console_write(bytes: &[u8]) -> Result<usize, Errno> {
        let mut written = 0;
        for chunk in bytes.chunks(CONSOLE_WRITE_MAX as usize) {
            // SAFETY: `chunk` is readable for its length during the call, and the
            // hypervisor only reads it.
            let r = unsafe {
                hypercall(
                    nr::CONSOLE_WRITE,
                    chunk.as_ptr() as u64,
                    chunk.len() as u64,
                    0,
                    0,
                    0,
                    0,
                )
            };
            let n = decode_result(r)? as usize;
            written += n.min(chunk.len());
            if n < chunk.len() {
                break;
            }
        }
        Ok(written)
    }

    /// [`nr::EXIT`]: stop this guest with `status`. Never returns.
    pub fn exit(status: u64) -> ! {
        loop {
            // SAFETY: EXIT takes a plain value and touches no memory.
            unsafe { hypercall(nr::EXIT, status, 0, 0, 0, 0, 0) };
            // A conforming hypervisor never resumes us; if it does, ask again.
            core::hint::spin_loop();
        }
    }

    /// [`nr::NULL`]: does nothing; for measuring the hypercall round trip.
    pub fn null() -> Result<(), Errno> {
        // SAFETY: NULL takes no arguments and touches no memory.
        decode_result(unsafe { hypercall(nr::NULL, 0, 0, 0, 0, 0, 0) }).map(|_| ())
    }

    /// Whether we run under Sluice: the CPUID hypervisor bit is set and leaf
    /// [`CPUID_LEAF_SIGNATURE`](crate::CPUID_LEAF_SIGNATURE) carries the signature.
    /// Safe to call anywhere (CPUID never faults on x86_64).
    pub fn detect() -> bool {
        use core::arch::x86_64::__cpuid;
        let leaf1 = __cpuid(1);
        if leaf1.ecx & (1 << 31) == 0 {
            return false;
        }
        let hv = __cpuid(crate::CPUID_LEAF_SIGNATURE);
        hv.eax >= crate::CPUID_MAX_LEAF && crate::is_signature(hv.ebx, hv.ecx, hv.edx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn numbers_are_fixed() {
        assert_eq!(ABI_VERSION, 1);
        assert_eq!(
            (
                nr::VERSION,
                nr::CONSOLE_WRITE,
                nr::EXIT,
                nr::NULL,
                nr::VFIO_BASE
            ),
            (0, 1, 2, 3, 0x100)
        );
        let codes = [
            (Errno::EPERM, 1),
            (Errno::ENOENT, 2),
            (Errno::E2BIG, 7),
            (Errno::EBADF, 9),
            (Errno::ENOMEM, 12),
            (Errno::EFAULT, 14),
            (Errno::EBUSY, 16),
            (Errno::EEXIST, 17),
            (Errno::ENODEV, 19),
            (Errno::EINVAL, 22),
            (Errno::ENOTTY, 25),
            (Errno::ENOSPC, 28),
            (Errno::ENOSYS, 38),
        ];
        for (e, c) in codes {
            assert_eq!(e.code(), c);
            assert_eq!(e.to_ret(), -(c as i64));
            assert!(e.name().is_some());
            assert_eq!(Errno::new(c), Some(e));
        }
        assert_eq!(Errno::new(0), None);
        assert_eq!(Errno::new(4096), None);
        assert_eq!(format!("{:?}", Errno::EINVAL), "EINVAL");
        assert_eq!(Errno::EINVAL.to_string(), "EINVAL (22)");
        assert_eq!(Errno::new(99).unwrap().to_string(), "errno 99");
    }

    #[test]
    fn results_round_trip() {
        for v in [0u64, 1, 4096, i64::MAX as u64] {
            assert_eq!(decode_result(encode_result(Ok(v)) as i64), Ok(v));
        }
        for e in [Errno::EINVAL, Errno::ENOSYS, Errno::new(4095).unwrap()] {
            assert_eq!(decode_result(encode_result(Err(e)) as i64), Err(e));
        }
        assert_eq!(encode_result(Ok(u64::MAX)) as i64, -22);
        assert_eq!(decode_result(-22), Err(Errno::EINVAL));
        assert_eq!(decode_result(i64::MIN), Err(Errno::EINVAL));
        assert_eq!(decode_result(-4096), Err(Errno::EINVAL));
    }

    #[test]
    fn signature_registers() {
        let [ebx, ecx, edx] = signature();
        assert_eq!(ebx.to_le_bytes(), *b"Slui");
        assert_eq!(ecx.to_le_bytes(), *b"ceSl");
        assert_eq!(edx.to_le_bytes(), *b"uice");
        assert!(is_signature(ebx, ecx, edx));
        assert!(!is_signature(edx, ecx, ebx));
        assert_eq!(CPUID_MAX_LEAF, 0x4000_0001);
    }

    #[test]
    fn decode_known_and_unknown() {
        assert_eq!(decode(0, [9; 6]), Ok(Hypercall::Version));
        assert_eq!(decode(3, [0; 6]), Ok(Hypercall::Null));
        assert_eq!(
            decode(2, [7, 1, 1, 1, 1, 1]),
            Ok(Hypercall::Exit { status: 7 })
        );
        assert_eq!(
            decode(1, [0x20_0000, 4096, 0, 0, 0, 0]),
            Ok(Hypercall::ConsoleWrite {
                gpa: 0x20_0000,
                len: 4096
            })
        );
        assert_eq!(
            decode(1, [0x20_0000, 0, 0, 0, 0, 0]),
            Ok(Hypercall::ConsoleWrite {
                gpa: 0x20_0000,
                len: 0
            })
        );
        assert_eq!(decode(1, [0x20_0000, 4097, 0, 0, 0, 0]), Err(Errno::E2BIG));
        assert_eq!(decode(1, [0, u64::MAX, 0, 0, 0, 0]), Err(Errno::E2BIG));
        assert_eq!(
            decode(nr::VFIO_BASE, [0; 6]),
            Ok(Hypercall::Vfio(vfio::VfioCall::GetApiVersion))
        );
        for unknown in [5, 0xff, vfio::nr::END, vfio::nr::RESERVED_END, u64::MAX] {
            assert_eq!(decode(unknown, [0; 6]), Err(Errno::ENOSYS));
        }
        for call in [
            Hypercall::Version,
            Hypercall::Null,
            Hypercall::Exit { status: u64::MAX },
            Hypercall::SelfInterrupt { vector: 32 },
            Hypercall::SelfInterrupt { vector: 255 },
            Hypercall::ConsoleWrite {
                gpa: 0x12345,
                len: 17,
            },
        ] {
            let (n, a) = call.encode();
            assert_eq!(decode(n, a), Ok(call));
        }
    }

    #[test]
    fn decode_self_interrupt() {
        assert_eq!(nr::SELF_INTERRUPT, 4);
        assert_eq!(
            decode(4, [0x40, 9, 9, 9, 9, 9]),
            Ok(Hypercall::SelfInterrupt { vector: 0x40 })
        );
        assert_eq!(
            decode(4, [32, 0, 0, 0, 0, 0]),
            Ok(Hypercall::SelfInterrupt { vector: 32 })
        );
        assert_eq!(
            decode(4, [255, 0, 0, 0, 0, 0]),
            Ok(Hypercall::SelfInterrupt { vector: 255 })
        );
        for bad in [0, 8, 14, 31, 256, 0x1_0000_0040, u64::MAX] {
            assert_eq!(decode(4, [bad, 0, 0, 0, 0, 0]), Err(Errno::EINVAL), "{bad}");
        }
    }

    #[test]
    fn validation() {
        let (base, size) = (0, 16 * MB);
        let ok = |gpa, len| validate_guest_range(gpa, len, base, size, 4096);
        assert_eq!(ok(0, 1), Ok(()));
        assert_eq!(ok(16 * MB - 4096, 4096), Ok(()));
        assert_eq!(ok(16 * MB - 4095, 4096), Err(Errno::EFAULT), "past the end");
        assert_eq!(ok(16 * MB, 1), Err(Errno::EFAULT), "just outside");
        assert_eq!(ok(u64::MAX, 1), Err(Errno::EFAULT), "outside");
        assert_eq!(ok(u64::MAX - 10, 100), Err(Errno::EFAULT), "wraps");
        assert_eq!(ok(0, 4097), Err(Errno::E2BIG), "over max");
        assert_eq!(ok(0, u64::MAX), Err(Errno::E2BIG), "over max, would wrap");
        assert_eq!(ok(u64::MAX, 0), Ok(()), "empty is fine anywhere");
        assert_eq!(ok(16 * MB, 0), Ok(()));
        // RAM not at zero.
        let hi = |gpa, len| validate_guest_range(gpa, len, 32 * MB, 2 * MB, u64::MAX);
        assert_eq!(hi(32 * MB - 1, 2), Err(Errno::EFAULT), "below RAM");
        assert_eq!(hi(32 * MB, 2 * MB), Ok(()));
        assert_eq!(hi(32 * MB, 2 * MB + 1), Err(Errno::EFAULT));
        assert_eq!(hi(u64::MAX - 1, u64::MAX), Err(Errno::EFAULT), "overflow");
        // A RAM description that wraps accepts nothing.
        assert_eq!(
            validate_guest_range(u64::MAX - 5, 1, u64::MAX - 10, 100, 10),
            Err(Errno::EFAULT)
        );
    }

    #[test]
    fn start_info_layout() {
        assert_eq!(core::mem::size_of::<GuestStartInfo>(), 80);
        assert_eq!(GUEST_START_MAGIC.to_le_bytes(), *b"SLCGUEST");
        let info = GuestStartInfo::new("hello", 0, 64 * MB, GUEST_CMDLINE_GPA, 11);
        assert!(info.is_valid());
        assert_eq!(info.name(), Some("hello"));
        let b = info.to_bytes();
        assert_eq!(&b[0..8], b"SLCGUEST");
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(&b[12..16], &[0; 4]);
        assert_eq!(&b[24..32], &(64 * MB).to_le_bytes());
        assert_eq!(&b[32..40], &0x2000u64.to_le_bytes());
        assert_eq!(&b[40..44], &11u32.to_le_bytes());
        assert_eq!(&b[44..48], &5u32.to_le_bytes());
        assert_eq!(&b[48..53], b"hello");
        assert!(b[53..].iter().all(|&x| x == 0));
        assert_eq!(GuestStartInfo::from_bytes(&b), info);

        // Long names are cut at a character boundary.
        let long = "é".repeat(20); // 40 bytes
        let info = GuestStartInfo::new(&long, 0, 2 * MB, 0, 0);
        assert_eq!(info.name_len, 32);
        assert_eq!(info.name(), Some(&long[..32]));
        let long = format!("x{}", "é".repeat(20)); // boundary at 33
        let info = GuestStartInfo::new(&long, 0, 2 * MB, 0, 0);
        assert_eq!(info.name_len, 31);
        // A hostile name_len is not trusted.
        let mut bad = info;
        bad.name_len = 33;
        assert_eq!(bad.name(), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_build_host_is_not_a_sluice_guest() {
        assert!(!client::detect());
    }
}
