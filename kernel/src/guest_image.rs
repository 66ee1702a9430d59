//! Guest images: the guest archive, the ELF64 loader, and `guest=` command-line words.
//!
//! Everything here is pure (byte slices in, plans and values out), treats its input as
//! hostile, never panics on it, and is unit tested on the host.
//!
//! # The guest archive
//!
//! Guest images reach the hypervisor as the PVH boot module (QEMU `-initrd FILE`): one
//! file holding several guests. All integers are little-endian.
//!
//! ```text
//! offset            size  field
//! 0                 8     magic     = "SLCGARCH" (ASCII, no NUL)
//! 8                 4     count     number of entries, 0..=64
//! 12                4     reserved  must be 0
//! 16 + 48*i         48    entry i, for i in 0..count:
//!   +0              32      name    UTF-8, NUL-padded (see below)
//!   +32             8       offset  of the blob, in bytes from the start of the archive
//!   +40             8       size    of the blob, in bytes
//! 16 + 48*count     ...   blobs (the guests' ELF images)
//! ```
//!
//! Rules the parser ([`Archive::parse`]) enforces:
//!
//! * the header and the whole entry table lie inside the file;
//! * every blob lies inside the file and after the entry table
//!   (`16 + 48*count <= offset` and `offset + size <= file length`, without overflow);
//! * a name is 1..=32 bytes followed by NUL padding up to 32 bytes (once a NUL appears,
//!   all following bytes are NUL), valid UTF-8, without whitespace, control characters
//!   or `:` (names appear in `guest=NAME:SIZE` words), and unique in the archive.
//!
//! Blobs may appear in any order, be empty and share bytes. Trailing bytes after the
//! last blob are ignored. The writer ([`pack`]) puts the blobs in entry order right after
//! the table, each starting at a multiple of 16 bytes (zero padding); readers must not
//! rely on that.
//!
//! # Guest ELF images
//!
//! A guest is a static ELF64 executable (`ET_EXEC`, x86-64, little-endian) linked at its
//! guest-physical addresses: for every `PT_LOAD`, `p_vaddr == p_paddr`. [`plan`] checks
//! it against the guest's RAM and the ranges the hypervisor keeps for itself, and
//! produces a [`LoadPlan`]; [`load`] then copies and zeroes through callbacks.
//!
//! # `guest=` words
//!
//! On the kernel command line, each `guest=NAME:SIZE[:groups=G1,G2,...]` word starts one
//! guest from the archive entry `NAME` with `SIZE` bytes of RAM (`16M`, `512K`, `1G` or
//! a plain byte count; between [`GUEST_RAM_MIN`] and [`GUEST_RAM_MAX`], a multiple of
//! [`GUEST_RAM_ALIGN`]). `groups=` lists the IOMMU groups the guest may own, each by
//! number or by a PCI function in it (`00:03.0` or `0000:00:03.0`, see [`GroupRef`]).
//! See [`parse_guests`].

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use bitflags::bitflags;

// =======================================================================================
// Little-endian readers that never panic
// =======================================================================================

fn bytes_at<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    let end = off.checked_add(N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(b.get(off..end)?);
    Some(out)
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    bytes_at(b, off).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    bytes_at(b, off).map(u64::from_le_bytes)
}

/// Whether `name` may name a guest: 1..=32 bytes, no whitespace, control or `:`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ARCHIVE_NAME_MAX
        && name
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != ':')
}

// =======================================================================================
// The archive
// =======================================================================================

/// The archive's first 8 bytes.
pub const ARCHIVE_MAGIC: [u8; 8] = *b"SLCGARCH";
/// Size of the archive header (magic, count, reserved).
pub const ARCHIVE_HEADER_SIZE: usize = 16;
/// Size of one entry (name, offset, size).
pub const ARCHIVE_ENTRY_SIZE: usize = 48;
/// The most entries an archive may have.
pub const ARCHIVE_MAX_ENTRIES: u32 = 64;
/// Size of an entry's name field.
pub const ARCHIVE_NAME_MAX: usize = 32;
/// Alignment of the blobs [`pack`] writes (not required by the parser).
pub const ARCHIVE_BLOB_ALIGN: usize = 16;

/// One guest image in an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveEntry<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

/// A parsed guest archive, borrowing the archive's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archive<'a> {
    entries: Vec<ArchiveEntry<'a>>,
}

/// The raw 32-byte name field of an entry, for error messages (shown escaped, up to
/// the first NUL).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RawName(pub [u8; ARCHIVE_NAME_MAX]);

impl fmt::Display for RawName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(ARCHIVE_NAME_MAX);
        write!(f, "\"{}\"", self.0[..end].escape_ascii())
    }
}

impl fmt::Debug for RawName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Which field of an archive entry is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryField {
    Name,
    Offset,
    Size,
}

/// What is wrong with an archive entry's field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryProblem {
    /// The name is empty.
    Empty,
    /// A non-NUL byte follows a NUL in the name field.
    NotNulPadded,
    /// The name is not UTF-8.
    NotUtf8,
    /// The name has whitespace, a control character or `:`.
    ForbiddenChar,
    /// An earlier entry has the same name.
    Duplicate,
    /// The blob starts inside the header or entry table.
    InsideTable,
    /// `offset + size` overflows.
    Overflow,
    /// The blob extends past the end of the archive.
    OutsideArchive,
}

/// Why an archive was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveError {
    /// Shorter than the 16-byte header.
    TruncatedHeader { len: usize },
    /// The first 8 bytes are not `"SLCGARCH"`.
    BadMagic([u8; 8]),
    /// The reserved header field is not zero.
    ReservedNotZero(u32),
    /// More than [`ARCHIVE_MAX_ENTRIES`] entries.
    TooManyEntries(u32),
    /// The entry table extends past the end of the archive.
    TruncatedTable { count: u32, len: usize },
    /// Entry `index` (named `name`) has a bad `field`.
    Entry {
        index: usize,
        name: RawName,
        field: EntryField,
        problem: EntryProblem,
    },
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveError::TruncatedHeader { len } => {
                write!(
                    f,
                    "archive: {len} bytes, shorter than the {ARCHIVE_HEADER_SIZE}-byte header"
                )
            }
            ArchiveError::BadMagic(m) => write!(f, "archive: bad magic \"{}\"", m.escape_ascii()),
            ArchiveError::ReservedNotZero(v) => {
                write!(f, "archive: reserved field is {v:#x}, not 0")
            }
            ArchiveError::TooManyEntries(n) => {
                write!(f, "archive: {n} entries, more than {ARCHIVE_MAX_ENTRIES}")
            }
            ArchiveError::TruncatedTable { count, len } => {
                write!(
                    f,
                    "archive: table of {count} entries does not fit in {len} bytes"
                )
            }
            ArchiveError::Entry {
                index,
                name,
                field,
                problem,
            } => {
                write!(f, "archive: entry {index} ({name}): {field:?}: {problem:?}")
            }
        }
    }
}

impl<'a> Archive<'a> {
    /// Parse an archive (see the module docs for the format and the rules).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ArchiveError> {
        let len = bytes.len();
        let (Some(magic), Some(count), Some(reserved)) =
            (bytes_at::<8>(bytes, 0), u32_at(bytes, 8), u32_at(bytes, 12))
        else {
            return Err(ArchiveError::TruncatedHeader { len });
        };
        if magic != ARCHIVE_MAGIC {
            return Err(ArchiveError::BadMagic(magic));
        }
        if reserved != 0 {
            return Err(ArchiveError::ReservedNotZero(reserved));
        }
        if count > ARCHIVE_MAX_ENTRIES {
            return Err(ArchiveError::TooManyEntries(count));
        }
        // count <= 64: no overflow.
        let table_end = ARCHIVE_HEADER_SIZE + count as usize * ARCHIVE_ENTRY_SIZE;
        if table_end > len {
            return Err(ArchiveError::TruncatedTable { count, len });
        }

        let mut entries: Vec<ArchiveEntry<'a>> = Vec::with_capacity(count as usize);
        for index in 0..count as usize {
            let at = ARCHIVE_HEADER_SIZE + index * ARCHIVE_ENTRY_SIZE;
            let err = |name: RawName, field, problem| ArchiveError::Entry {
                index,
                name,
                field,
                problem,
            };
            // Inside the table, which was checked above; the fallbacks cannot be taken.
            let raw =
                RawName(bytes_at::<ARCHIVE_NAME_MAX>(bytes, at).unwrap_or([0; ARCHIVE_NAME_MAX]));
            let offset = u64_at(bytes, at + 32).unwrap_or(u64::MAX);
            let size = u64_at(bytes, at + 40).unwrap_or(u64::MAX);

            let Some(name_field) = bytes.get(at..at + ARCHIVE_NAME_MAX) else {
                return Err(ArchiveError::TruncatedTable { count, len });
            };
            let name_len = name_field
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(ARCHIVE_NAME_MAX);
            if name_len == 0 {
                return Err(err(raw, EntryField::Name, EntryProblem::Empty));
            }
            if name_field[name_len..].iter().any(|&b| b != 0) {
                return Err(err(raw, EntryField::Name, EntryProblem::NotNulPadded));
            }
            let Ok(name) = core::str::from_utf8(&name_field[..name_len]) else {
                return Err(err(raw, EntryField::Name, EntryProblem::NotUtf8));
            };
            if !is_valid_name(name) {
                return Err(err(raw, EntryField::Name, EntryProblem::ForbiddenChar));
            }
            if entries.iter().any(|e| e.name == name) {
                return Err(err(raw, EntryField::Name, EntryProblem::Duplicate));
            }

            if offset < table_end as u64 {
                return Err(err(raw, EntryField::Offset, EntryProblem::InsideTable));
            }
            if offset > len as u64 {
                return Err(err(raw, EntryField::Offset, EntryProblem::OutsideArchive));
            }
            let Some(end) = offset.checked_add(size) else {
                return Err(err(raw, EntryField::Size, EntryProblem::Overflow));
            };
            if end > len as u64 {
                return Err(err(raw, EntryField::Size, EntryProblem::OutsideArchive));
            }
            // Both bounds are <= len, so they fit in usize and `get` succeeds.
            let Some(data) = bytes.get(offset as usize..end as usize) else {
                return Err(err(raw, EntryField::Size, EntryProblem::OutsideArchive));
            };
            entries.push(ArchiveEntry { name, data });
        }
        Ok(Archive { entries })
    }

    /// The entries, in archive order.
    pub fn entries(&self) -> &[ArchiveEntry<'a>] {
        &self.entries
    }

    /// The image named `name`.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.entries.iter().find(|e| e.name == name).map(|e| e.data)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Write an archive holding `entries` (name, image) in that order (see the module docs).
///
/// # Panics
///
/// If there are more than [`ARCHIVE_MAX_ENTRIES`] entries, a name is not valid
/// ([`is_valid_name`]) or repeated. This is a tool for tests and host-side builders,
/// never given untrusted input.
pub fn pack(entries: &[(&str, &[u8])]) -> Vec<u8> {
    assert!(
        entries.len() <= ARCHIVE_MAX_ENTRIES as usize,
        "too many archive entries"
    );
    for (i, (name, _)) in entries.iter().enumerate() {
        assert!(is_valid_name(name), "invalid archive entry name {name:?}");
        assert!(
            !entries[..i].iter().any(|(n, _)| n == name),
            "duplicate archive entry name {name:?}"
        );
    }
    let align = |x: usize| x.div_ceil(ARCHIVE_BLOB_ALIGN) * ARCHIVE_BLOB_ALIGN;
    let table_end = ARCHIVE_HEADER_SIZE + entries.len() * ARCHIVE_ENTRY_SIZE;
    let mut out = Vec::with_capacity(
        align(table_end) + entries.iter().map(|(_, d)| align(d.len())).sum::<usize>(),
    );
    out.extend_from_slice(&ARCHIVE_MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut offset = align(table_end);
    for (name, data) in entries {
        let mut field = [0u8; ARCHIVE_NAME_MAX];
        field[..name.len()].copy_from_slice(name.as_bytes());
        out.extend_from_slice(&field);
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        offset = align(offset + data.len());
    }
    for (_, data) in entries {
        out.resize(align(out.len()), 0);
        out.extend_from_slice(data);
    }
    out
}

// =======================================================================================
// ELF64
// =======================================================================================

/// Size of the ELF64 file header.
pub const ELF_HEADER_SIZE: usize = 64;
/// Size of an ELF64 program header (`e_phentsize`).
pub const ELF_PHDR_SIZE: usize = 56;
/// The most program headers a guest image may have.
pub const ELF_MAX_PHDRS: u16 = 32;

const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;

bitflags! {
    /// ELF segment permissions (`p_flags`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SegmentFlags: u32 {
        const EXECUTE = 1;
        const WRITE = 2;
        const READ = 4;
    }
}

/// One `PT_LOAD` segment to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Where it goes (guest-physical).
    pub gpa: u64,
    /// The bytes to copy there, as a range of the image (length = `p_filesz`).
    pub file_range: Range<usize>,
    /// Bytes it occupies in memory (`p_memsz`); the part past the file bytes is zeroed.
    pub memsz: u64,
    pub flags: SegmentFlags,
}

impl Segment {
    /// `[gpa, gpa + memsz)`.
    pub fn gpa_range(&self) -> Range<u64> {
        self.gpa..self.gpa + self.memsz
    }
}

/// A checked ELF image, ready to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    /// The entry point (guest-physical).
    pub entry: u64,
    /// The segments with a non-zero `p_memsz`, sorted by address, not overlapping.
    pub segments: Vec<Segment>,
}

/// What is wrong with one program header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentProblem {
    /// `p_offset + p_filesz` is past the end of the image (or overflows).
    FileRangeOutsideImage,
    /// `p_filesz > p_memsz`.
    FileszExceedsMemsz,
    /// `p_vaddr != p_paddr`.
    VaddrNotPaddr,
    /// `p_vaddr + p_memsz` overflows.
    AddressOverflow,
    /// Not wholly inside the guest's RAM.
    OutsideRam,
    /// Intersects a range the hypervisor keeps for itself.
    Forbidden { start: u64, end: u64 },
    /// `PT_INTERP`: the image wants a dynamic loader.
    Interpreter,
}

/// Why an ELF image was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than the 64-byte ELF header.
    TooShort {
        len: usize,
    },
    BadMagic,
    /// `EI_CLASS` is not ELFCLASS64.
    NotElf64(u8),
    /// `EI_DATA` is not little-endian.
    NotLittleEndian(u8),
    /// `EI_VERSION` or `e_version` is not 1.
    BadVersion,
    /// `e_type` is not ET_EXEC.
    NotExecutable(u16),
    /// `e_machine` is not x86-64.
    WrongMachine(u16),
    /// `e_phentsize` is not 56.
    BadPhentsize(u16),
    /// More than [`ELF_MAX_PHDRS`] program headers.
    TooManyPhdrs(u16),
    /// The program header table is not inside the image.
    PhdrTableOutside {
        phoff: u64,
        phnum: u16,
    },
    /// No `PT_LOAD` with a non-zero size.
    NoLoadSegments,
    /// Program header `index` is bad.
    Segment {
        index: usize,
        problem: SegmentProblem,
    },
    /// Program headers `first` and `second` overlap in guest memory.
    SegmentsOverlap {
        first: usize,
        second: usize,
    },
    /// The entry point is not inside an executable segment.
    EntryNotExecutable(u64),
    /// The guest RAM description wraps around the address space.
    BadRam,
    /// [`load`] was given an image that does not match the plan.
    PlanMismatch,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Segment { index, problem } => {
                write!(f, "elf: program header {index}: {problem:?}")
            }
            ElfError::SegmentsOverlap { first, second } => {
                write!(f, "elf: program headers {first} and {second} overlap")
            }
            ElfError::EntryNotExecutable(e) => {
                write!(f, "elf: entry point {e:#x} is not in an executable segment")
            }
            other => write!(f, "elf: {other:?}"),
        }
    }
}

fn ranges_intersect(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < a.end && b.start < b.end && a.start < b.end && b.start < a.end
}

/// Check `image` and plan its loading into the guest RAM `[ram_base, ram_base +
/// ram_size)`, avoiding every range in `forbidden` (the hypervisor's reserved windows,
/// e.g. `[0, sluice_abi::GUEST_RESERVED_END)`; empty ranges are ignored).
///
/// Checks: ELF ident (64-bit, little-endian, version 1), `ET_EXEC`, x86-64; at most
/// [`ELF_MAX_PHDRS`] program headers of 56 bytes, table inside the image; for every
/// `PT_LOAD` with `p_memsz > 0`: file bytes inside the image, `p_filesz <= p_memsz`,
/// `p_vaddr == p_paddr`, no overflow, inside RAM and outside `forbidden`; `PT_LOAD`s
/// do not overlap; no `PT_INTERP`; the entry point is inside an executable `PT_LOAD`.
/// Other program header types are ignored.
pub fn plan(
    image: &[u8],
    ram_base: u64,
    ram_size: u64,
    forbidden: &[Range<u64>],
) -> Result<LoadPlan, ElfError> {
    let ram_end = ram_base.checked_add(ram_size).ok_or(ElfError::BadRam)?;
    let header: [u8; ELF_HEADER_SIZE] =
        bytes_at(image, 0).ok_or(ElfError::TooShort { len: image.len() })?;
    let h16 = |o: usize| u16::from_le_bytes([header[o], header[o + 1]]);
    let h32 =
        |o: usize| u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
    let h64 = |o: usize| u64_at(&header, o).unwrap_or(0);

    if header[0..4] != *b"\x7fELF" {
        return Err(ElfError::BadMagic);
    }
    if header[4] != ELFCLASS64 {
        return Err(ElfError::NotElf64(header[4]));
    }
    if header[5] != ELFDATA2LSB {
        return Err(ElfError::NotLittleEndian(header[5]));
    }
    if header[6] != EV_CURRENT || h32(20) != u32::from(EV_CURRENT) {
        return Err(ElfError::BadVersion);
    }
    let e_type = h16(16);
    if e_type != ET_EXEC {
        return Err(ElfError::NotExecutable(e_type));
    }
    let machine = h16(18);
    if machine != EM_X86_64 {
        return Err(ElfError::WrongMachine(machine));
    }
    let entry = h64(24);
    let phoff = h64(32);
    let phentsize = h16(54);
    let phnum = h16(56);
    if phnum > ELF_MAX_PHDRS {
        return Err(ElfError::TooManyPhdrs(phnum));
    }
    if phnum > 0 && usize::from(phentsize) != ELF_PHDR_SIZE {
        return Err(ElfError::BadPhentsize(phentsize));
    }
    let table_len = usize::from(phnum) * ELF_PHDR_SIZE;
    let table = usize::try_from(phoff)
        .ok()
        .and_then(|start| image.get(start..start.checked_add(table_len)?))
        .ok_or(ElfError::PhdrTableOutside { phoff, phnum })?;

    // (program header index, segment)
    let mut loads: Vec<(usize, Segment)> = Vec::new();
    for (index, ph) in table.chunks_exact(ELF_PHDR_SIZE).enumerate() {
        let bad = |problem| ElfError::Segment { index, problem };
        let field = |o: usize| u64_at(ph, o).unwrap_or(0);
        let p_type = u32_at(ph, 0).unwrap_or(0);
        if p_type == PT_INTERP {
            return Err(bad(SegmentProblem::Interpreter));
        }
        if p_type != PT_LOAD {
            continue;
        }
        let flags = SegmentFlags::from_bits_retain(u32_at(ph, 4).unwrap_or(0));
        let (offset, vaddr, paddr, filesz, memsz) =
            (field(8), field(16), field(24), field(32), field(40));

        let file_range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(filesz).ok())
            .and_then(|(o, n)| Some(o..o.checked_add(n)?))
            .filter(|r| r.end <= image.len())
            .ok_or(bad(SegmentProblem::FileRangeOutsideImage))?;
        if filesz > memsz {
            return Err(bad(SegmentProblem::FileszExceedsMemsz));
        }
        if vaddr != paddr {
            return Err(bad(SegmentProblem::VaddrNotPaddr));
        }
        if memsz == 0 {
            continue;
        }
        let end = vaddr
            .checked_add(memsz)
            .ok_or(bad(SegmentProblem::AddressOverflow))?;
        if vaddr < ram_base || end > ram_end {
            return Err(bad(SegmentProblem::OutsideRam));
        }
        let range = vaddr..end;
        if let Some(f) = forbidden.iter().find(|f| ranges_intersect(f, &range)) {
            return Err(bad(SegmentProblem::Forbidden {
                start: f.start,
                end: f.end,
            }));
        }
        loads.push((
            index,
            Segment {
                gpa: vaddr,
                file_range,
                memsz,
                flags,
            },
        ));
    }
    if loads.is_empty() {
        return Err(ElfError::NoLoadSegments);
    }
    loads.sort_by_key(|(_, s)| s.gpa);
    for pair in loads.windows(2) {
        let ((i, a), (j, b)) = (&pair[0], &pair[1]);
        if ranges_intersect(&a.gpa_range(), &b.gpa_range()) {
            let (first, second) = if i < j { (*i, *j) } else { (*j, *i) };
            return Err(ElfError::SegmentsOverlap { first, second });
        }
    }
    let segments: Vec<Segment> = loads.into_iter().map(|(_, s)| s).collect();
    if !segments
        .iter()
        .any(|s| s.flags.contains(SegmentFlags::EXECUTE) && s.gpa_range().contains(&entry))
    {
        return Err(ElfError::EntryNotExecutable(entry));
    }
    Ok(LoadPlan { entry, segments })
}

/// Load a planned image: for every segment, `write(gpa, file bytes)` then
/// `zero(gpa + filesz, memsz - filesz)` (the latter only when non-empty).
///
/// Every segment's file range is checked against `image` before anything is written, so
/// an image that does not match the plan ([`ElfError::PlanMismatch`]) loads nothing.
pub fn load(
    plan: &LoadPlan,
    image: &[u8],
    write: &mut dyn FnMut(u64, &[u8]),
    zero: &mut dyn FnMut(u64, u64),
) -> Result<(), ElfError> {
    let consistent = plan.segments.iter().all(|s| {
        let filesz = s.file_range.end.wrapping_sub(s.file_range.start) as u64;
        image.get(s.file_range.clone()).is_some()
            && filesz <= s.memsz
            && s.gpa.checked_add(s.memsz).is_some()
    });
    if !consistent {
        return Err(ElfError::PlanMismatch);
    }
    for s in &plan.segments {
        let bytes = &image[s.file_range.clone()];
        if !bytes.is_empty() {
            write(s.gpa, bytes);
        }
        let filesz = bytes.len() as u64;
        if s.memsz > filesz {
            zero(s.gpa + filesz, s.memsz - filesz);
        }
    }
    Ok(())
}

// =======================================================================================
// guest= words
// =======================================================================================

const MIB: u64 = 1 << 20;
/// The least RAM a guest may have.
pub const GUEST_RAM_MIN: u64 = 2 * MIB;
/// The most RAM a guest may have.
pub const GUEST_RAM_MAX: u64 = 256 * MIB;
/// Guest RAM sizes are multiples of this (one 2 MiB nested page).
pub const GUEST_RAM_ALIGN: u64 = 2 * MIB;
/// The most `guest=` words (SVM under TCG has 16 ASIDs; the host keeps ASID 0).
pub const MAX_GUESTS: usize = 15;
/// The most IOMMU groups one guest may list.
pub const MAX_GROUPS: usize = 16;

/// An IOMMU group named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupRef {
    /// By its number (as the boot log lists groups).
    Id(u32),
    /// The group holding this PCI function: `(segment, bus, devfn)`.
    Device(u16, u8, u8),
}

impl fmt::Display for GroupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            GroupRef::Id(id) => write!(f, "{id}"),
            GroupRef::Device(seg, bus, devfn) => {
                write!(f, "{seg:04x}:{bus:02x}:{:02x}.{}", devfn >> 3, devfn & 7)
            }
        }
    }
}

/// One guest to start, from `guest=NAME:SIZE[:groups=G,...]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSpec {
    /// The archive entry to run.
    pub name: String,
    /// Bytes of guest RAM.
    pub ram_size: u64,
    /// IOMMU groups the guest may own (no duplicate references, in the given order).
    pub groups: Vec<GroupRef>,
}

/// Why a `guest=` word was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    /// No `:SIZE` after the name.
    MissingSize(String),
    /// The name is empty, too long, or has whitespace, control characters or `:`.
    BadName(String),
    /// The size is not a number with an optional K/M/G suffix (or overflows).
    BadSize(String),
    /// The size is outside `GUEST_RAM_MIN..=GUEST_RAM_MAX`.
    SizeOutOfRange(u64),
    /// The size is not a multiple of `GUEST_RAM_ALIGN`.
    SizeNotAligned(u64),
    /// Something other than `groups=...` after the size, or `groups=` twice.
    BadOption(String),
    /// The group list is empty or not comma-separated `u32`s or PCI function names.
    BadGroups(String),
    DuplicateGroup(String),
    TooManyGroups(usize),
    /// Two `guest=` words with the same name.
    DuplicateGuest(String),
    /// More than [`MAX_GUESTS`] `guest=` words.
    TooManyGuests(usize),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::MissingSize(w) => write!(f, "guest={w}: missing :SIZE"),
            SpecError::BadName(n) => write!(f, "guest: bad name {n:?}"),
            SpecError::BadSize(s) => write!(f, "guest: bad size {s:?}"),
            SpecError::SizeOutOfRange(s) => write!(
                f,
                "guest: size {s:#x} outside {GUEST_RAM_MIN:#x}..={GUEST_RAM_MAX:#x}"
            ),
            SpecError::SizeNotAligned(s) => {
                write!(
                    f,
                    "guest: size {s:#x} is not a multiple of {GUEST_RAM_ALIGN:#x}"
                )
            }
            SpecError::BadOption(o) => write!(f, "guest: unknown or repeated option {o:?}"),
            SpecError::BadGroups(g) => write!(f, "guest: bad group list {g:?}"),
            SpecError::DuplicateGroup(g) => write!(f, "guest: group {g} listed twice"),
            SpecError::TooManyGroups(n) => write!(f, "guest: {n} groups, more than {MAX_GROUPS}"),
            SpecError::DuplicateGuest(n) => write!(f, "guest: {n:?} given twice"),
            SpecError::TooManyGuests(n) => write!(f, "guest: {n} guests, more than {MAX_GUESTS}"),
        }
    }
}

/// A size: decimal digits with an optional `K`, `M` or `G` suffix (either case, binary
/// multiples). `None` if malformed or overflowing `u64`.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

impl GuestSpec {
    /// Parse the value of a `guest=` word: `NAME:SIZE[:groups=G1,G2,...]`.
    pub fn parse(value: &str) -> Result<GuestSpec, SpecError> {
        // PCI function names in the group list contain ':', so the third field is
        // everything after the size.
        let mut parts = value.splitn(3, ':');
        let name = parts.next().unwrap_or("");
        if !is_valid_name(name) {
            return Err(SpecError::BadName(name.into()));
        }
        let size_str = parts
            .next()
            .ok_or_else(|| SpecError::MissingSize(value.into()))?;
        let ram_size = parse_size(size_str).ok_or_else(|| SpecError::BadSize(size_str.into()))?;
        if !(GUEST_RAM_MIN..=GUEST_RAM_MAX).contains(&ram_size) {
            return Err(SpecError::SizeOutOfRange(ram_size));
        }
        if ram_size % GUEST_RAM_ALIGN != 0 {
            return Err(SpecError::SizeNotAligned(ram_size));
        }
        let mut groups: Option<Vec<GroupRef>> = None;
        if let Some(opt) = parts.next() {
            let list = match opt.split_once('=') {
                Some(("groups", list)) => list,
                _ => return Err(SpecError::BadOption(opt.into())),
            };
            let mut parsed = Vec::new();
            for g in list.split(',') {
                let g = if g.contains(':') {
                    let (seg, bus, devfn) = sluice_abi::vfio::parse_device_name(g.as_bytes())
                        .ok_or_else(|| SpecError::BadGroups(list.into()))?;
                    GroupRef::Device(seg, bus, devfn)
                } else {
                    let ok = !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit());
                    GroupRef::Id(
                        g.parse()
                            .ok()
                            .filter(|_| ok)
                            .ok_or_else(|| SpecError::BadGroups(list.into()))?,
                    )
                };
                if parsed.contains(&g) {
                    return Err(SpecError::DuplicateGroup(alloc::format!("{g}")));
                }
                parsed.push(g);
                if parsed.len() > MAX_GROUPS {
                    return Err(SpecError::TooManyGroups(parsed.len()));
                }
            }
            groups = Some(parsed);
        }
        Ok(GuestSpec {
            name: name.into(),
            ram_size,
            groups: groups.unwrap_or_default(),
        })
    }
}

/// Every `guest=` word of a kernel command line, in order. Other words are ignored.
/// Fails on the first bad word, on a repeated name, or beyond [`MAX_GUESTS`] guests.
pub fn parse_guests(cmdline: &str) -> Result<Vec<GuestSpec>, SpecError> {
    let mut specs: Vec<GuestSpec> = Vec::new();
    for word in cmdline.split_ascii_whitespace() {
        let Some(value) = word.strip_prefix("guest=") else {
            continue;
        };
        let spec = GuestSpec::parse(value)?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(SpecError::DuplicateGuest(spec.name));
        }
        if specs.len() == MAX_GUESTS {
            return Err(SpecError::TooManyGuests(MAX_GUESTS + 1));
        }
        specs.push(spec);
    }
    Ok(specs)
}

// =======================================================================================
// Tests
// =======================================================================================

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    // ----- archive -----

    fn sample() -> Vec<u8> {
        pack(&[
            ("hello", b"HELLO-IMAGE"),
            ("empty", b""),
            ("ünï", &[7u8; 100]),
        ])
    }

    const ENTRY0: usize = ARCHIVE_HEADER_SIZE;
    const ENTRY1: usize = ARCHIVE_HEADER_SIZE + ARCHIVE_ENTRY_SIZE;

    fn entry_err(bytes: &[u8]) -> (usize, EntryField, EntryProblem) {
        match Archive::parse(bytes) {
            Err(ArchiveError::Entry {
                index,
                field,
                problem,
                ..
            }) => (index, field, problem),
            other => panic!("expected an entry error, got {other:?}"),
        }
    }

    #[test]
    fn archive_round_trip() {
        let bytes = sample();
        let a = Archive::parse(&bytes).unwrap();
        assert_eq!(a.len(), 3);
        let names: Vec<&str> = a.entries().iter().map(|e| e.name).collect();
        assert_eq!(names, ["hello", "empty", "ünï"]);
        assert_eq!(a.get("hello"), Some(&b"HELLO-IMAGE"[..]));
        assert_eq!(a.get("empty"), Some(&b""[..]));
        assert_eq!(a.get("ünï"), Some(&[7u8; 100][..]));
        assert_eq!(a.get("nope"), None);
        // Layout: header, table, 16-byte aligned blobs.
        assert_eq!(&bytes[..8], b"SLCGARCH");
        assert_eq!(u32_at(&bytes, 8), Some(3));
        assert_eq!(u64_at(&bytes, ENTRY0 + 32), Some(160)); // 16 + 3*48 = 160
        assert_eq!(u64_at(&bytes, ENTRY0 + 40), Some(11));
        assert_eq!(u64_at(&bytes, ENTRY1 + 32), Some(176));
        for e in a.entries() {
            let off = e.data.as_ptr() as usize - bytes.as_ptr() as usize;
            assert_eq!(off % ARCHIVE_BLOB_ALIGN, 0);
        }
        // An empty archive, and a 32-byte name.
        let empty = pack(&[]);
        assert_eq!(empty.len(), 16);
        assert!(Archive::parse(&empty).unwrap().is_empty());
        let long = "n".repeat(32);
        let one = pack(&[(&long, b"x")]);
        assert_eq!(Archive::parse(&one).unwrap().get(&long), Some(&b"x"[..]));
        // Trailing bytes are fine.
        let mut trailing = sample();
        trailing.extend_from_slice(&[0xAA; 9]);
        assert_eq!(Archive::parse(&trailing).unwrap().len(), 3);
    }

    #[test]
    fn archive_header_corruption() {
        let bytes = sample();
        for len in 0..16 {
            assert_eq!(
                Archive::parse(&bytes[..len]),
                Err(ArchiveError::TruncatedHeader { len })
            );
        }
        let mut b = bytes.clone();
        b[0] = b'X';
        assert!(matches!(Archive::parse(&b), Err(ArchiveError::BadMagic(_))));
        let mut b = bytes.clone();
        b[12] = 1;
        assert_eq!(Archive::parse(&b), Err(ArchiveError::ReservedNotZero(1)));
        let mut b = bytes.clone();
        b[8..12].copy_from_slice(&65u32.to_le_bytes());
        assert_eq!(Archive::parse(&b), Err(ArchiveError::TooManyEntries(65)));
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Archive::parse(&b),
            Err(ArchiveError::TooManyEntries(u32::MAX))
        );
        // The table cut short.
        let cut = &bytes[..ENTRY1 + 10];
        assert_eq!(
            Archive::parse(cut),
            Err(ArchiveError::TruncatedTable {
                count: 3,
                len: ENTRY1 + 10
            })
        );
        // A count within bounds but larger than the table present.
        let mut b = pack(&[("a", b"1")]);
        b[8..12].copy_from_slice(&64u32.to_le_bytes());
        assert!(matches!(
            Archive::parse(&b),
            Err(ArchiveError::TruncatedTable { count: 64, .. })
        ));
    }

    #[test]
    fn archive_entry_corruption() {
        let put64 =
            |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        let base = sample();
        let len = base.len() as u64;

        let mut b = base.clone();
        b[ENTRY1..ENTRY1 + 32].copy_from_slice(&base[ENTRY0..ENTRY0 + 32]);
        assert_eq!(
            entry_err(&b),
            (1, EntryField::Name, EntryProblem::Duplicate)
        );

        let mut b = base.clone();
        b[ENTRY0 + 1] = 0xFF;
        assert_eq!(entry_err(&b), (0, EntryField::Name, EntryProblem::NotUtf8));

        let mut b = base.clone();
        b[ENTRY0..ENTRY0 + 32].fill(0);
        assert_eq!(entry_err(&b), (0, EntryField::Name, EntryProblem::Empty));

        let mut b = base.clone();
        b[ENTRY0 + 20] = b'z';
        assert_eq!(
            entry_err(&b),
            (0, EntryField::Name, EntryProblem::NotNulPadded)
        );

        for c in [b' ', b':', b'\n', 0x7f] {
            let mut b = base.clone();
            b[ENTRY0 + 2] = c;
            assert_eq!(
                entry_err(&b),
                (0, EntryField::Name, EntryProblem::ForbiddenChar)
            );
        }

        let mut b = base.clone();
        put64(&mut b, ENTRY1 + 32, 8);
        assert_eq!(
            entry_err(&b),
            (1, EntryField::Offset, EntryProblem::InsideTable)
        );

        let mut b = base.clone();
        put64(&mut b, ENTRY1 + 32, len + 1);
        assert_eq!(
            entry_err(&b),
            (1, EntryField::Offset, EntryProblem::OutsideArchive)
        );

        let mut b = base.clone();
        put64(&mut b, ENTRY0 + 40, len);
        assert_eq!(
            entry_err(&b),
            (0, EntryField::Size, EntryProblem::OutsideArchive)
        );

        let mut b = base.clone();
        put64(&mut b, ENTRY0 + 40, u64::MAX);
        assert_eq!(entry_err(&b), (0, EntryField::Size, EntryProblem::Overflow));

        // Truncating the blob area cuts the last entry.
        let b = &base[..base.len() - 1];
        assert_eq!(
            entry_err(b),
            (2, EntryField::Size, EntryProblem::OutsideArchive)
        );

        // Errors name the entry.
        let mut b = base.clone();
        put64(&mut b, ENTRY0 + 40, len);
        let msg = Archive::parse(&b).unwrap_err().to_string();
        assert_eq!(msg, "archive: entry 0 (\"hello\"): Size: OutsideArchive");
    }

    #[test]
    #[should_panic(expected = "duplicate")]
    fn pack_refuses_duplicates() {
        pack(&[("a", b""), ("a", b"")]);
    }

    // ----- ELF -----

    const RAM: u64 = 16 * MIB;
    const LOW: Range<u64> = 0..0x10_0000;

    struct Ph {
        p_type: u32,
        flags: u32,
        vaddr: u64,
        paddr: u64,
        data: Vec<u8>,
        memsz: u64,
    }

    fn load_ph(flags: u32, addr: u64, data: &[u8], memsz: u64) -> Ph {
        Ph {
            p_type: PT_LOAD,
            flags,
            vaddr: addr,
            paddr: addr,
            data: data.to_vec(),
            memsz,
        }
    }

    /// A minimal ELF64 executable: header, program headers, then the segments' bytes.
    fn build_elf(entry: u64, phs: &[Ph]) -> Vec<u8> {
        let mut out = vec![0u8; ELF_HEADER_SIZE];
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = ELFCLASS64;
        out[5] = ELFDATA2LSB;
        out[6] = EV_CURRENT;
        out[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        out[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&(ELF_HEADER_SIZE as u64).to_le_bytes());
        out[52..54].copy_from_slice(&(ELF_HEADER_SIZE as u16).to_le_bytes());
        out[54..56].copy_from_slice(&(ELF_PHDR_SIZE as u16).to_le_bytes());
        out[56..58].copy_from_slice(&(phs.len() as u16).to_le_bytes());
        let mut data_off = ELF_HEADER_SIZE + phs.len() * ELF_PHDR_SIZE;
        for ph in phs {
            let mut h = [0u8; ELF_PHDR_SIZE];
            h[0..4].copy_from_slice(&ph.p_type.to_le_bytes());
            h[4..8].copy_from_slice(&ph.flags.to_le_bytes());
            h[8..16].copy_from_slice(&(data_off as u64).to_le_bytes());
            h[16..24].copy_from_slice(&ph.vaddr.to_le_bytes());
            h[24..32].copy_from_slice(&ph.paddr.to_le_bytes());
            h[32..40].copy_from_slice(&(ph.data.len() as u64).to_le_bytes());
            h[40..48].copy_from_slice(&ph.memsz.to_le_bytes());
            h[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
            out.extend_from_slice(&h);
            data_off += ph.data.len();
        }
        for ph in phs {
            out.extend_from_slice(&ph.data);
        }
        out
    }

    const RX: u32 = 5;
    const RW: u32 = 6;

    fn good_elf() -> Vec<u8> {
        build_elf(
            0x20_0010,
            &[
                load_ph(RX, 0x20_0000, &[0x90; 32], 32),
                load_ph(RW, 0x20_1000, b"data", 0x2000),
                Ph {
                    p_type: 0x6474_e551,
                    flags: RW,
                    vaddr: 0,
                    paddr: 0,
                    data: vec![],
                    memsz: 0,
                }, // GNU_STACK
            ],
        )
    }

    fn plan_of(image: &[u8]) -> Result<LoadPlan, ElfError> {
        plan(image, 0, RAM, &[LOW])
    }

    #[test]
    fn elf_minimal_loads() {
        let image = good_elf();
        let p = plan_of(&image).unwrap();
        assert_eq!(p.entry, 0x20_0010);
        assert_eq!(p.segments.len(), 2);
        assert_eq!(p.segments[0].gpa, 0x20_0000);
        assert_eq!(
            p.segments[0].flags,
            SegmentFlags::READ | SegmentFlags::EXECUTE
        );
        assert_eq!(p.segments[1].memsz, 0x2000);
        assert_eq!(&image[p.segments[1].file_range.clone()], b"data");

        let mut ram = vec![0xEEu8; 0x40_0000];
        let mut writes = Vec::new();
        let mut zeroes = Vec::new();
        {
            let ram = core::cell::RefCell::new(&mut ram);
            load(
                &p,
                &image,
                &mut |gpa, bytes| {
                    writes.push((gpa, bytes.len()));
                    ram.borrow_mut()[gpa as usize..gpa as usize + bytes.len()]
                        .copy_from_slice(bytes);
                },
                &mut |gpa, len| {
                    zeroes.push((gpa, len));
                    ram.borrow_mut()[gpa as usize..(gpa + len) as usize].fill(0);
                },
            )
            .unwrap();
        }
        assert_eq!(writes, [(0x20_0000, 32), (0x20_1000, 4)]);
        assert_eq!(zeroes, [(0x20_1004, 0x2000 - 4)]);
        assert_eq!(&ram[0x20_0000..0x20_0020], &[0x90; 32]);
        assert_eq!(&ram[0x20_1000..0x20_1004], b"data");
        assert!(ram[0x20_1004..0x20_3000].iter().all(|&b| b == 0));
        assert_eq!(ram[0x20_3000], 0xEE);

        // Segments are sorted by address whatever the header order; RAM need not start at 0.
        let image = build_elf(
            0x4020_0000,
            &[
                load_ph(RW, 0x4030_0000, b"d", 1),
                load_ph(RX, 0x4020_0000, b"c", 1),
            ],
        );
        let p = plan(&image, 0x4000_0000, RAM, &[]).unwrap();
        assert_eq!(p.segments[0].gpa, 0x4020_0000);

        // A plan and an image that do not match: nothing is written.
        let p = plan_of(&good_elf()).unwrap();
        let called = core::cell::Cell::new(false);
        let r = load(
            &p,
            &good_elf()[..100],
            &mut |_, _| called.set(true),
            &mut |_, _| called.set(true),
        );
        assert_eq!(r, Err(ElfError::PlanMismatch));
        assert!(!called.get());
    }

    fn with(image: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut b = image.to_vec();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    }

    #[test]
    fn elf_header_rejections() {
        let g = good_elf();
        assert_eq!(plan_of(&g[..63]), Err(ElfError::TooShort { len: 63 }));
        assert_eq!(plan_of(&with(&g, 1, b"X")), Err(ElfError::BadMagic));
        assert_eq!(plan_of(&with(&g, 4, &[1])), Err(ElfError::NotElf64(1)));
        assert_eq!(
            plan_of(&with(&g, 5, &[2])),
            Err(ElfError::NotLittleEndian(2))
        );
        assert_eq!(plan_of(&with(&g, 6, &[0])), Err(ElfError::BadVersion));
        assert_eq!(plan_of(&with(&g, 20, &[2])), Err(ElfError::BadVersion));
        assert_eq!(
            plan_of(&with(&g, 16, &3u16.to_le_bytes())),
            Err(ElfError::NotExecutable(3))
        );
        assert_eq!(
            plan_of(&with(&g, 18, &3u16.to_le_bytes())),
            Err(ElfError::WrongMachine(3))
        );
        assert_eq!(
            plan_of(&with(&g, 54, &64u16.to_le_bytes())),
            Err(ElfError::BadPhentsize(64))
        );
        assert_eq!(
            plan_of(&with(&g, 56, &33u16.to_le_bytes())),
            Err(ElfError::TooManyPhdrs(33))
        );
        assert_eq!(
            plan_of(&with(&g, 56, &0xffffu16.to_le_bytes())),
            Err(ElfError::TooManyPhdrs(0xffff))
        );
        assert_eq!(
            plan_of(&with(&g, 56, &0u16.to_le_bytes())),
            Err(ElfError::NoLoadSegments)
        );
        // The program header table outside the image, or wrapping.
        for phoff in [
            g.len() as u64,
            g.len() as u64 - 100,
            u64::MAX - 10,
            u64::MAX,
        ] {
            assert!(matches!(
                plan_of(&with(&g, 32, &phoff.to_le_bytes())),
                Err(ElfError::PhdrTableOutside { .. })
            ));
        }
        assert_eq!(plan(&g, u64::MAX, 2, &[]), Err(ElfError::BadRam));
    }

    fn seg_err(r: Result<LoadPlan, ElfError>) -> (usize, SegmentProblem) {
        match r {
            Err(ElfError::Segment { index, problem }) => (index, problem),
            other => panic!("expected a segment error, got {other:?}"),
        }
    }

    #[test]
    fn elf_segment_rejections() {
        let g = good_elf();
        let ph1 = ELF_HEADER_SIZE + ELF_PHDR_SIZE; // second program header
        let len = g.len() as u64;

        // File bytes outside the image: offset, size, overflow.
        for (off, size) in [(len, 1u64), (len - 2, 4), (8, u64::MAX), (u64::MAX, 1)] {
            let b = with(
                &with(&g, ph1 + 8, &off.to_le_bytes()),
                ph1 + 32,
                &size.to_le_bytes(),
            );
            let b = with(&b, ph1 + 40, &u64::MAX.to_le_bytes()); // memsz >= filesz
            assert_eq!(
                seg_err(plan_of(&b)),
                (1, SegmentProblem::FileRangeOutsideImage)
            );
        }
        // filesz > memsz.
        let b = with(&g, ph1 + 40, &3u64.to_le_bytes());
        assert_eq!(
            seg_err(plan_of(&b)),
            (1, SegmentProblem::FileszExceedsMemsz)
        );
        // vaddr != paddr.
        let b = with(&g, ph1 + 24, &0x30_0000u64.to_le_bytes());
        assert_eq!(seg_err(plan_of(&b)), (1, SegmentProblem::VaddrNotPaddr));
        // vaddr + memsz overflows.
        let top = (u64::MAX - 10).to_le_bytes();
        let b = with(&with(&g, ph1 + 16, &top), ph1 + 24, &top);
        assert_eq!(seg_err(plan_of(&b)), (1, SegmentProblem::AddressOverflow));
        // Outside RAM: past the end, straddling the end, below a non-zero base.
        for addr in [RAM, RAM - 0x1000] {
            let a = addr.to_le_bytes();
            let b = with(&with(&g, ph1 + 16, &a), ph1 + 24, &a);
            assert_eq!(seg_err(plan_of(&b)), (1, SegmentProblem::OutsideRam));
        }
        assert_eq!(
            seg_err(plan(&g, 0x20_1000, RAM, &[])),
            (0, SegmentProblem::OutsideRam)
        );
        // In a forbidden range (the low window, or one the caller adds).
        let a = 0xF_F000u64.to_le_bytes();
        let b = with(&with(&g, ph1 + 16, &a), ph1 + 24, &a);
        assert_eq!(
            seg_err(plan_of(&b)),
            (
                1,
                SegmentProblem::Forbidden {
                    start: 0,
                    end: 0x10_0000
                }
            )
        );
        let extra = 0x20_2fff..0x20_3000;
        assert_eq!(
            seg_err(plan(&g, 0, RAM, &[extra])),
            (
                1,
                SegmentProblem::Forbidden {
                    start: 0x20_2fff,
                    end: 0x20_3000
                }
            )
        );
        assert!(
            plan(&g, 0, RAM, &[0x20_3000..0x30_0000, 5..5]).is_ok(),
            "touching is fine"
        );
        // PT_INTERP.
        let b = with(&g, ph1 + ELF_PHDR_SIZE, &PT_INTERP.to_le_bytes());
        assert_eq!(seg_err(plan_of(&b)), (2, SegmentProblem::Interpreter));

        // Overlapping segments.
        let a = 0x20_0010u64.to_le_bytes();
        let b = with(&with(&g, ph1 + 16, &a), ph1 + 24, &a);
        assert_eq!(
            plan_of(&b),
            Err(ElfError::SegmentsOverlap {
                first: 0,
                second: 1
            })
        );
        // Adjacent is fine.
        let a = 0x20_0020u64.to_le_bytes();
        assert!(plan_of(&with(&with(&g, ph1 + 16, &a), ph1 + 24, &a)).is_ok());

        // Entry outside any segment, in a non-executable one, just past the code.
        for entry in [0u64, 0x20_1000, 0x20_0020, u64::MAX] {
            assert_eq!(
                plan_of(&with(&g, 24, &entry.to_le_bytes())),
                Err(ElfError::EntryNotExecutable(entry))
            );
        }
        // Only empty PT_LOADs.
        let b = build_elf(0x20_0000, &[load_ph(RX, 0x20_0000, b"", 0)]);
        assert_eq!(plan_of(&b), Err(ElfError::NoLoadSegments));
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Mutate a few bytes (often to boundary values), sometimes truncate.
    fn mutate(rng: &mut XorShift, base: &[u8], hot: usize) -> Vec<u8> {
        let mut b = base.to_vec();
        for _ in 0..1 + rng.next() % 6 {
            // Mostly hit the headers, where the checks are.
            let limit = if rng.next() % 4 == 0 {
                b.len()
            } else {
                hot.min(b.len())
            };
            if limit == 0 {
                break;
            }
            let at = (rng.next() % limit as u64) as usize;
            b[at] = match rng.next() % 4 {
                0 => 0,
                1 => 0xFF,
                _ => rng.next() as u8,
            };
        }
        if rng.next() % 8 == 0 {
            let keep = (rng.next() % (b.len() as u64 + 1)) as usize;
            b.truncate(keep);
        }
        b
    }

    #[test]
    fn mutated_inputs_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let elf = good_elf();
        let elf_hot = ELF_HEADER_SIZE + 3 * ELF_PHDR_SIZE;
        let mut accepted = 0;
        for _ in 0..20_000 {
            let image = mutate(&mut rng, &elf, elf_hot);
            if let Ok(p) = plan(&image, 0, RAM, &[LOW]) {
                accepted += 1;
                let mut prev_end = 0;
                for s in &p.segments {
                    assert!(s.file_range.end <= image.len());
                    assert!(s.gpa >= prev_end && s.gpa >= LOW.end);
                    prev_end = s.gpa + s.memsz;
                    assert!(prev_end <= RAM);
                    assert!((s.file_range.len() as u64) <= s.memsz);
                }
                let total = core::cell::Cell::new(0u64);
                load(
                    &p,
                    &image,
                    &mut |_, b| total.set(total.get() + b.len() as u64),
                    &mut |_, n| total.set(total.get() + n),
                )
                .unwrap();
                assert_eq!(total.get(), p.segments.iter().map(|s| s.memsz).sum::<u64>());
            }
        }
        assert!(accepted > 0, "some mutations are harmless");

        let archive = pack(&[("one", &elf), ("two", b"abc")]);
        let hot = ARCHIVE_HEADER_SIZE + 2 * ARCHIVE_ENTRY_SIZE;
        for _ in 0..20_000 {
            let bytes = mutate(&mut rng, &archive, hot);
            if let Ok(a) = Archive::parse(&bytes) {
                assert!(a.len() <= ARCHIVE_MAX_ENTRIES as usize);
                for e in a.entries() {
                    assert!(is_valid_name(e.name));
                    let _ = plan(e.data, 0, RAM, &[LOW]);
                }
            }
        }
    }

    // ----- guest= -----

    #[test]
    fn guest_specs() {
        assert_eq!(
            GuestSpec::parse("hello:16M"),
            Ok(GuestSpec {
                name: "hello".into(),
                ram_size: 16 * MIB,
                groups: vec![]
            })
        );
        assert_eq!(
            GuestSpec::parse("nic:2048K:groups=3,1,4"),
            Ok(GuestSpec {
                name: "nic".into(),
                ram_size: 2 * MIB,
                groups: vec![GroupRef::Id(3), GroupRef::Id(1), GroupRef::Id(4)]
            })
        );
        assert_eq!(GuestSpec::parse("a:256m").unwrap().ram_size, GUEST_RAM_MAX);
        assert_eq!(
            GuestSpec::parse("a:2097152").unwrap().ram_size,
            GUEST_RAM_MIN
        );

        use SpecError::*;
        let cases: &[(&str, SpecError)] = &[
            ("hello", MissingSize("hello".into())),
            (":16M", BadName("".into())),
            ("a,b:", BadSize("".into())),
            (&"n".repeat(33), BadName("n".repeat(33))),
            ("a:16X", BadSize("16X".into())),
            ("a:M", BadSize("M".into())),
            ("a:-2M", BadSize("-2M".into())),
            ("a:+2M", BadSize("+2M".into())),
            (
                "a:99999999999999999999G",
                BadSize("99999999999999999999G".into()),
            ),
            (
                "a:18446744073709551615G",
                BadSize("18446744073709551615G".into()),
            ),
            ("a:1G", SizeOutOfRange(1 << 30)),
            ("a:1M", SizeOutOfRange(MIB)),
            ("a:0", SizeOutOfRange(0)),
            ("a:3M", SizeNotAligned(3 * MIB)),
            ("a:16M:", BadOption("".into())),
            ("a:16M:group=1", BadOption("group=1".into())),
            ("a:16M:groups=1:groups=2", BadGroups("1:groups=2".into())),
            ("a:16M:devices=1", BadOption("devices=1".into())),
            ("a:16M:groups=00:03.8", BadGroups("00:03.8".into())),
            (
                "a:16M:groups=00:03.0,0000:00:03.0",
                DuplicateGroup("0000:00:03.0".into()),
            ),
            ("a:16M:groups=", BadGroups("".into())),
            ("a:16M:groups=1,,2", BadGroups("1,,2".into())),
            ("a:16M:groups=+1", BadGroups("+1".into())),
            ("a:16M:groups=4294967296", BadGroups("4294967296".into())),
            ("a:16M:groups=1,2,1", DuplicateGroup("1".into())),
        ];
        for (word, err) in cases {
            assert_eq!(GuestSpec::parse(word).as_ref(), Err(err), "{word}");
            let _ = err.to_string();
        }
        let many: Vec<String> = (0..17).map(|g| g.to_string()).collect();
        assert_eq!(
            GuestSpec::parse(&format!("a:16M:groups={}", many.join(","))),
            Err(TooManyGroups(17))
        );
    }

    #[test]
    fn guest_words_on_the_command_line() {
        let specs =
            parse_guests("log=debug guest=a:16M hold  guest=b:4M:groups=2,00:1f.0 guestx=1")
                .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(
            (specs[0].name.as_str(), specs[1].groups.as_slice()),
            ("a", &[GroupRef::Id(2), GroupRef::Device(0, 0, 0xf8)][..])
        );
        assert_eq!(specs[1].groups[1].to_string(), "0000:00:1f.0");
        assert_eq!(parse_guests(""), Ok(vec![]));
        assert_eq!(
            parse_guests("guest=a:16M guest=a:4M"),
            Err(SpecError::DuplicateGuest("a".into()))
        );
        assert_eq!(
            parse_guests("guest=a:16M guest=b:5M"),
            Err(SpecError::SizeNotAligned(5 * MIB))
        );
        let line: Vec<String> = (0..16).map(|i| format!("guest=g{i}:2M")).collect();
        assert_eq!(parse_guests(&line[..15].join(" ")).unwrap().len(), 15);
        assert_eq!(
            parse_guests(&line.join(" ")),
            Err(SpecError::TooManyGuests(16))
        );
    }
}
