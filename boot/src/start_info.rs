//! `hvm_start_info`: what a PVH loader (QEMU) tells the kernel at entry.
//!
//! Layout from Xen's `arch-x86/hvm/start_info.h`. Everything is read through
//! [`PhysRead`] and copied into fixed-capacity, typed values, so the kernel can use it
//! before it has a heap, and nothing later points back into firmware-owned memory.

use crate::phys::PhysRead;

pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Size of the version-0 structure (through `rsdp_paddr`).
const START_INFO_V0_SIZE: usize = 40;
/// Size of the version-1 structure (adds the memory map).
pub const START_INFO_V1_SIZE: usize = 56;
const MEMMAP_ENTRY_SIZE: u64 = 24;
const MODLIST_ENTRY_SIZE: u64 = 32;

/// At most this many memory-map entries are kept; the rest are reported as dropped.
pub const MAX_MEMORY_REGIONS: usize = 128;
/// At most this many modules are kept.
pub const MAX_MODULES: usize = 8;
/// Command lines longer than this are truncated (and flagged).
pub const MAX_CMDLINE: usize = 512;

/// E820-style memory types as used by `hvm_memmap_table_entry.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryType {
    Ram,
    Reserved,
    AcpiReclaimable,
    AcpiNvs,
    Unusable,
    Disabled,
    Persistent,
    Other(u32),
}

impl MemoryType {
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Ram,
            2 => Self::Reserved,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Unusable,
            6 => Self::Disabled,
            7 => Self::Persistent,
            other => Self::Other(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ram => "RAM",
            Self::Reserved => "reserved",
            Self::AcpiReclaimable => "ACPI",
            Self::AcpiNvs => "ACPI NVS",
            Self::Unusable => "unusable",
            Self::Disabled => "disabled",
            Self::Persistent => "persistent",
            Self::Other(_) => "other",
        }
    }
}

/// One memory-map entry: `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub base: u64,
    pub size: u64,
    pub kind: MemoryType,
}

impl MemoryRegion {
    /// End address (exclusive), saturating instead of wrapping on a hostile size.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
}

/// A module (`-initrd` under QEMU) handed to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    pub paddr: u64,
    pub size: u64,
    pub cmdline_paddr: u64,
}

/// Why a start info could not be used at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    /// The structure itself is not readable at that address.
    Unreadable {
        paddr: u64,
    },
    BadMagic {
        found: u32,
    },
}

impl core::fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unreadable { paddr } => write!(f, "hvm_start_info at {paddr:#x} is not readable"),
            Self::BadMagic { found } => write!(
                f,
                "hvm_start_info magic is {found:#x}, expected {START_INFO_MAGIC:#x} (not a PVH boot?)"
            ),
        }
    }
}

/// Problems that do not stop the boot but must be reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartInfoWarnings {
    pub memmap_unreadable: bool,
    pub memmap_entries_dropped: u32,
    pub modules_unreadable: bool,
    pub modules_dropped: u32,
    pub cmdline_unreadable: bool,
    pub cmdline_truncated: bool,
    pub cmdline_not_utf8: bool,
}

/// The typed start info.
#[derive(Clone, Debug)]
pub struct StartInfo {
    pub paddr: u64,
    pub version: u32,
    pub flags: u32,
    pub rsdp_paddr: Option<u64>,
    pub cmdline_paddr: u64,
    /// Physical address and length of the memory-map array as the loader placed it.
    pub memmap_paddr: u64,
    pub memmap_raw_entries: u32,
    /// Physical address and count of the module list as the loader placed it.
    pub modlist_paddr: u64,
    pub modlist_raw_entries: u32,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    regions: [MemoryRegion; MAX_MEMORY_REGIONS],
    region_count: usize,
    modules: [Module; MAX_MODULES],
    module_count: usize,
    pub warnings: StartInfoWarnings,
}

impl StartInfo {
    /// Parse the start info at `paddr`. Only a missing or non-PVH structure is an error;
    /// a bad memory map, module list or command line is recorded in `warnings`.
    pub fn parse(mem: &dyn PhysRead, paddr: u64) -> Result<Self, StartInfoError> {
        let mut raw = [0u8; START_INFO_V1_SIZE];
        if !mem.read(paddr, &mut raw[..START_INFO_V0_SIZE]) {
            return Err(StartInfoError::Unreadable { paddr });
        }
        let u32_at = |o: usize| u32::from_le_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
        let u64_at = |raw: &[u8], o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let magic = u32_at(0);
        if magic != START_INFO_MAGIC {
            return Err(StartInfoError::BadMagic { found: magic });
        }
        let version = u32_at(4);
        let mut info = StartInfo {
            paddr,
            version,
            flags: u32_at(8),
            rsdp_paddr: None,
            cmdline_paddr: u64_at(&raw, 24),
            memmap_paddr: 0,
            memmap_raw_entries: 0,
            modlist_paddr: u64_at(&raw, 16),
            modlist_raw_entries: u32_at(12),
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            regions: [MemoryRegion {
                base: 0,
                size: 0,
                kind: MemoryType::Reserved,
            }; MAX_MEMORY_REGIONS],
            region_count: 0,
            modules: [Module {
                paddr: 0,
                size: 0,
                cmdline_paddr: 0,
            }; MAX_MODULES],
            module_count: 0,
            warnings: StartInfoWarnings::default(),
        };
        let rsdp = u64_at(&raw, 32);
        info.rsdp_paddr = (rsdp != 0).then_some(rsdp);

        if version >= 1 {
            if mem.read(
                paddr + START_INFO_V0_SIZE as u64,
                &mut raw[START_INFO_V0_SIZE..],
            ) {
                info.memmap_paddr = u64_at(&raw, 40);
                info.memmap_raw_entries = u32::from_le_bytes([raw[48], raw[49], raw[50], raw[51]]);
                info.read_memory_map(mem);
            } else {
                info.warnings.memmap_unreadable = true;
            }
        }
        info.read_modules(mem);
        info.read_cmdline(mem);
        Ok(info)
    }

    fn read_memory_map(&mut self, mem: &dyn PhysRead) {
        let count = self.memmap_raw_entries as u64;
        for i in 0..count {
            if self.region_count == MAX_MEMORY_REGIONS {
                self.warnings.memmap_entries_dropped = (count - i) as u32;
                return;
            }
            let mut e = [0u8; MEMMAP_ENTRY_SIZE as usize];
            let at = self.memmap_paddr.checked_add(i * MEMMAP_ENTRY_SIZE);
            if !at.is_some_and(|a| mem.read(a, &mut e)) {
                self.warnings.memmap_unreadable = true;
                return;
            }
            let base = u64::from_le_bytes(e[0..8].try_into().unwrap_or_default());
            let size = u64::from_le_bytes(e[8..16].try_into().unwrap_or_default());
            let kind =
                MemoryType::from_raw(u32::from_le_bytes(e[16..20].try_into().unwrap_or_default()));
            if size == 0 {
                continue;
            }
            self.regions[self.region_count] = MemoryRegion { base, size, kind };
            self.region_count += 1;
        }
    }

    fn read_modules(&mut self, mem: &dyn PhysRead) {
        let count = self.modlist_raw_entries as u64;
        if count == 0 {
            return;
        }
        for i in 0..count {
            if self.module_count == MAX_MODULES {
                self.warnings.modules_dropped = (count - i) as u32;
                return;
            }
            let mut e = [0u8; MODLIST_ENTRY_SIZE as usize];
            let at = self.modlist_paddr.checked_add(i * MODLIST_ENTRY_SIZE);
            if !at.is_some_and(|a| mem.read(a, &mut e)) {
                self.warnings.modules_unreadable = true;
                return;
            }
            let field = |o: usize| u64::from_le_bytes(e[o..o + 8].try_into().unwrap_or_default());
            self.modules[self.module_count] = Module {
                paddr: field(0),
                size: field(8),
                cmdline_paddr: field(16),
            };
            self.module_count += 1;
        }
    }

    fn read_cmdline(&mut self, mem: &dyn PhysRead) {
        if self.cmdline_paddr == 0 {
            return;
        }
        // Read byte by byte until NUL: the string has no length field to trust.
        let mut len = 0;
        loop {
            let Some(b) = self
                .cmdline_paddr
                .checked_add(len as u64)
                .and_then(|a| mem.read_u8(a))
            else {
                self.warnings.cmdline_unreadable = true;
                break;
            };
            if b == 0 {
                break;
            }
            if len == MAX_CMDLINE {
                self.warnings.cmdline_truncated = true;
                break;
            }
            self.cmdline[len] = b;
            len += 1;
        }
        // Keep only the longest valid UTF-8 prefix.
        self.cmdline_len = match core::str::from_utf8(&self.cmdline[..len]) {
            Ok(_) => len,
            Err(e) => {
                self.warnings.cmdline_not_utf8 = true;
                e.valid_up_to()
            }
        };
    }

    /// The kernel command line (`-append`), possibly empty.
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len]).unwrap_or("")
    }

    /// Memory-map entries with a non-zero size, in the loader's order.
    pub fn memory_map(&self) -> &[MemoryRegion] {
        &self.regions[..self.region_count]
    }

    pub fn modules(&self) -> &[Module] {
        &self.modules[..self.module_count]
    }

    /// Physical ranges the loader's own structures occupy (start info, memory map,
    /// module list, command line): the frame allocator must not hand these out.
    pub fn occupied_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let size = if self.version >= 1 {
            START_INFO_V1_SIZE
        } else {
            START_INFO_V0_SIZE
        } as u64;
        let memmap = self.memmap_raw_entries as u64 * MEMMAP_ENTRY_SIZE;
        let modlist = self.modlist_raw_entries as u64 * MODLIST_ENTRY_SIZE;
        let cmdline = (self.cmdline_len as u64 + 1).min(MAX_CMDLINE as u64 + 1);
        [
            (self.paddr, size),
            (self.memmap_paddr, memmap),
            (self.modlist_paddr, modlist),
            (self.cmdline_paddr, cmdline),
        ]
        .into_iter()
        .chain(self.modules().iter().map(|m| (m.paddr, m.size)))
        .filter(|&(base, len)| base != 0 && len != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::fake::FakePhys;

    fn start_info(version: u32, cmdline: u64, rsdp: u64, memmap: u64, entries: u32) -> [u8; 56] {
        let mut b = [0u8; 56];
        b[0..4].copy_from_slice(&START_INFO_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&version.to_le_bytes());
        b[24..32].copy_from_slice(&cmdline.to_le_bytes());
        b[32..40].copy_from_slice(&rsdp.to_le_bytes());
        b[40..48].copy_from_slice(&memmap.to_le_bytes());
        b[48..52].copy_from_slice(&entries.to_le_bytes());
        b
    }

    fn memmap_entry(base: u64, size: u64, kind: u32) -> [u8; 24] {
        let mut e = [0u8; 24];
        e[0..8].copy_from_slice(&base.to_le_bytes());
        e[8..16].copy_from_slice(&size.to_le_bytes());
        e[16..20].copy_from_slice(&kind.to_le_bytes());
        e
    }

    #[test]
    fn parses_qemu_like_start_info() {
        let mut mem = FakePhys::new();
        mem.put(0x6000, &start_info(1, 0x7000, 0xf5b60, 0x8000, 3));
        mem.put(0x7000, b"log=debug hold\0");
        let mut map = Vec::new();
        map.extend_from_slice(&memmap_entry(0, 0x9fc00, 1));
        map.extend_from_slice(&memmap_entry(0x100000, 0x1ff00000, 1));
        map.extend_from_slice(&memmap_entry(0xb0000000, 0x10000000, 2));
        mem.put(0x8000, &map);
        let info = StartInfo::parse(&mem, 0x6000).unwrap();
        assert_eq!(info.cmdline(), "log=debug hold");
        assert_eq!(info.rsdp_paddr, Some(0xf5b60));
        assert_eq!(info.memory_map().len(), 3);
        assert_eq!(
            info.memory_map()[1],
            MemoryRegion {
                base: 0x100000,
                size: 0x1ff00000,
                kind: MemoryType::Ram
            }
        );
        assert_eq!(info.memory_map()[2].kind, MemoryType::Reserved);
        assert_eq!(info.warnings, StartInfoWarnings::default());
        let occupied: Vec<_> = info.occupied_ranges().collect();
        assert!(occupied.contains(&(0x6000, 56)));
        assert!(occupied.contains(&(0x8000, 72)));
        assert!(occupied.contains(&(0x7000, 15)));
    }

    #[test]
    fn rejects_bad_magic_and_unreadable() {
        let mut mem = FakePhys::new();
        let mut b = start_info(1, 0, 0, 0, 0);
        b[0] ^= 1;
        mem.put(0x6000, &b);
        assert!(matches!(
            StartInfo::parse(&mem, 0x6000),
            Err(StartInfoError::BadMagic { .. })
        ));
        assert!(matches!(
            StartInfo::parse(&mem, 0x1_0000),
            Err(StartInfoError::Unreadable { paddr: 0x1_0000 })
        ));
    }

    #[test]
    fn hostile_counts_and_strings_are_bounded() {
        let mut mem = FakePhys::new();
        // 4 billion memory-map entries, only one readable: stops at the unreadable one.
        mem.put(0x6000, &start_info(1, 0x7000, 0, 0x8000, u32::MAX));
        mem.put(0x8000, &memmap_entry(0x100000, 0x100000, 1));
        // A command line with no NUL within MAX_CMDLINE bytes.
        mem.put(0x7000, &[b'a'; MAX_CMDLINE + 10]);
        let info = StartInfo::parse(&mem, 0x6000).unwrap();
        assert_eq!(info.memory_map().len(), 1);
        assert!(info.warnings.memmap_unreadable);
        assert!(info.warnings.cmdline_truncated);
        assert_eq!(info.cmdline().len(), MAX_CMDLINE);
    }

    #[test]
    fn too_many_regions_are_dropped_and_counted() {
        let mut mem = FakePhys::new();
        let n = MAX_MEMORY_REGIONS as u32 + 5;
        mem.put(0x6000, &start_info(1, 0, 0, 0x10000, n));
        let mut map = Vec::new();
        for i in 0..n as u64 {
            map.extend_from_slice(&memmap_entry(i << 20, 1 << 20, 1));
        }
        mem.put(0x10000, &map);
        let info = StartInfo::parse(&mem, 0x6000).unwrap();
        assert_eq!(info.memory_map().len(), MAX_MEMORY_REGIONS);
        assert_eq!(info.warnings.memmap_entries_dropped, 5);
    }

    #[test]
    fn version_zero_has_no_memory_map_and_bad_utf8_is_cut() {
        let mut mem = FakePhys::new();
        mem.put(0x6000, &start_info(0, 0x7000, 0, 0x8000, 3)[..40]);
        mem.put(0x7000, b"log=info \xff\xfe tail\0");
        let info = StartInfo::parse(&mem, 0x6000).unwrap();
        assert!(info.memory_map().is_empty());
        assert_eq!(info.cmdline(), "log=info ");
        assert!(info.warnings.cmdline_not_utf8);
    }

    #[test]
    fn wrapping_addresses_do_not_panic() {
        let mut mem = FakePhys::new();
        mem.put(0x6000, &start_info(1, u64::MAX - 2, 0, u64::MAX - 10, 5));
        let info = StartInfo::parse(&mem, 0x6000).unwrap();
        assert!(info.warnings.memmap_unreadable);
        assert!(info.warnings.cmdline_unreadable);
    }
}
