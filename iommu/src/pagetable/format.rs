//! What one vendor's page-table entry looks like: the only part of an I/O page table
//! that differs between VT-d second-level tables and AMD-Vi host (v1) tables.
//!
//! Both are the same radix tree (4 KiB tables of 512 64-bit entries, 9 IOVA bits per
//! level, the address of the next table or page in bits 51:12, 2 MiB and 1 GiB leaves
//! at levels 2 and 3), so the engine in the parent module does all the work and asks the
//! format only to encode and decode single entries. The differences it hides:
//!
//! | | VT-d second level | AMD-Vi v1 |
//! |---|---|---|
//! | present | R or W set (no present bit) | PR, bit 0 |
//! | table or leaf | PS, bit 7 (levels 2 and 3) | NextLevel, bits 11:9 (0: leaf) |
//! | permissions | R bit 0, W bit 1 | IR bit 61, IW bit 62 |
//! | depths | 3, 4, 5 (CAP.SAGAW) | 1 to 6 (DTE Mode, up to EFR.HATS) |

use core::ops::RangeInclusive;

use crate::Access;

/// One entry as the engine needs to see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The walk stops here with a fault.
    NotPresent,
    /// A link to the next table (one level down) at `addr`.
    Table { addr: u64 },
    /// A page of the entry's level (4 KiB at level 1, 2 MiB at 2, 1 GiB at 3) at `addr`.
    Leaf { addr: u64, access: Access },
}

/// A vendor's page-table entry encoding. The engine relies on these rules; each format's
/// tests check them against a walker written from that vendor's specification:
///
/// - the all-zero entry is not present at every level (fresh tables come zeroed from
///   [`DmaMemory::alloc_zeroed`](crate::hw::DmaMemory::alloc_zeroed), and the engine
///   clears an entry by writing 0);
/// - [`table_entry`](Self::table_entry) allows reads and writes: the hardware ANDs the
///   permissions of every entry on the walk, so only leaves restrict;
/// - `decode(encode(x)) == x` for every entry the engine writes, and a present entry at
///   level 1 always decodes as a leaf;
/// - addresses are 4 KiB aligned and below 2^52 (bits 51:12).
///
/// Every entry is written with a single 64-bit store, so an encoding must carry
/// everything (presence, address, permissions) in one word.
pub trait EntryFormat {
    /// For logs and debug output: `"VT-d second-level"`, `"AMD-Vi v1"`.
    const NAME: &'static str;

    /// A link from an entry at `child_level + 1` to the table at `child_table`.
    fn table_entry(child_table: u64, child_level: u8) -> u64;

    /// A leaf at `level` (1: 4 KiB, 2: 2 MiB, 3: 1 GiB) mapping `paddr` (aligned to the
    /// leaf size) with `access` (not empty).
    fn leaf_entry(paddr: u64, level: u8, access: Access) -> u64;

    /// Read the entry `raw` found in a table at `level`.
    fn decode(raw: u64, level: u8) -> Decoded;

    /// Table depths the format has (a unit may walk fewer; the driver picks one it
    /// walks and puts it in [`PageTableConfig::levels`](super::PageTableConfig::levels)).
    fn supported_levels() -> RangeInclusive<u8>;
}
