//! MCFG: where each PCI segment's ECAM (memory-mapped config space) lives.

use alloc::vec::Vec;
use core::fmt;

use sluice_pci::EcamRegion;

use super::{SDT_HEADER_LEN, TableError};

const MCFG_FIXED_LEN: usize = SDT_HEADER_LEN + 8;
const ENTRY_LEN: usize = 16;

/// Why one MCFG allocation entry was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryProblem {
    EndBeforeStart {
        start: u8,
        end: u8,
    },
    BaseZero,
    /// ECAM gives each bus 1 MiB: a base that is not 1 MiB aligned cannot be right.
    BaseMisaligned {
        base: u64,
    },
    /// The range wraps the 64-bit address space.
    Wraps,
    /// Some bus of this segment is already covered by an earlier entry.
    Overlaps {
        earlier: usize,
    },
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EndBeforeStart { start, end } => {
                write!(f, "end bus {end:#04x} is below start bus {start:#04x}")
            }
            Self::BaseZero => write!(f, "base address is 0"),
            Self::BaseMisaligned { base } => write!(f, "base {base:#x} is not 1 MiB aligned"),
            Self::Wraps => write!(f, "address range wraps"),
            Self::Overlaps { earlier } => write!(f, "buses overlap entry {earlier}"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mcfg {
    pub regions: Vec<EcamRegion>,
    /// (entry index, problem) for each allocation entry that was skipped.
    pub rejected: Vec<(usize, EntryProblem)>,
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

/// Parse a whole MCFG (header included). A table whose length is not `44 + 16·n` is
/// rejected whole: its entries cannot be trusted to line up.
pub fn parse(table: &[u8]) -> Result<Mcfg, TableError> {
    if table.len() < MCFG_FIXED_LEN {
        return Err(TableError::TooShort {
            length: table.len() as u32,
            minimum: MCFG_FIXED_LEN as u32,
        });
    }
    let declared = u32::from_le_bytes([table[4], table[5], table[6], table[7]]) as usize;
    if declared != table.len() {
        return Err(TableError::BadLength {
            length: declared as u32,
            rule: "differs from the bytes provided",
        });
    }
    if (table.len() - MCFG_FIXED_LEN) % ENTRY_LEN != 0 {
        return Err(TableError::BadLength {
            length: table.len() as u32,
            rule: "MCFG must be 44 + 16*n bytes",
        });
    }
    let mut mcfg = Mcfg::default();
    let mut accepted_index = Vec::new();
    for (i, e) in table[MCFG_FIXED_LEN..].chunks_exact(ENTRY_LEN).enumerate() {
        let region = EcamRegion {
            base: u64_at(e, 0),
            segment: u16::from_le_bytes([e[8], e[9]]),
            bus_start: e[10],
            bus_end: e[11],
        };
        let problem = if region.bus_end < region.bus_start {
            Some(EntryProblem::EndBeforeStart {
                start: region.bus_start,
                end: region.bus_end,
            })
        } else if region.base == 0 {
            Some(EntryProblem::BaseZero)
        } else if region.base % (1 << 20) != 0 {
            Some(EntryProblem::BaseMisaligned { base: region.base })
        } else if region
            .base
            .checked_add(((region.bus_end as u64) + 1) << 20)
            .is_none()
        {
            Some(EntryProblem::Wraps)
        } else {
            mcfg.regions
                .iter()
                .zip(&accepted_index)
                .find(|(r, _)| {
                    r.segment == region.segment
                        && r.bus_start <= region.bus_end
                        && region.bus_start <= r.bus_end
                })
                .map(|(_, &earlier)| EntryProblem::Overlaps { earlier })
        };
        match problem {
            Some(p) => mcfg.rejected.push((i, p)),
            None => {
                mcfg.regions.push(region);
                accepted_index.push(i);
            }
        }
    }
    Ok(mcfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::testutil::table;

    fn entry(base: u64, seg: u16, start: u8, end: u8) -> Vec<u8> {
        let mut e = base.to_le_bytes().to_vec();
        e.extend_from_slice(&seg.to_le_bytes());
        e.extend_from_slice(&[start, end, 0, 0, 0, 0]);
        e
    }

    fn mcfg(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0u8; 8];
        for e in entries {
            body.extend_from_slice(e);
        }
        table(b"MCFG", 1, &body)
    }

    #[test]
    fn parses_q35_mcfg() {
        let m = parse(&mcfg(&[entry(0xB000_0000, 0, 0, 0xFF)])).unwrap();
        assert_eq!(
            m.regions,
            vec![EcamRegion {
                segment: 0,
                bus_start: 0,
                bus_end: 0xFF,
                base: 0xB000_0000
            }]
        );
        assert!(m.rejected.is_empty());
    }

    #[test]
    fn bad_length_rejects_the_whole_table() {
        let mut t = mcfg(&[entry(0xB000_0000, 0, 0, 0xFF)]);
        t.extend_from_slice(&[0xEE; 7]);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            parse(&t),
            Err(TableError::BadLength {
                length: 67,
                rule: "MCFG must be 44 + 16*n bytes"
            })
        );
        assert!(matches!(parse(&t[..40]), Err(TableError::TooShort { .. })));
    }

    #[test]
    fn bad_entries_are_skipped_and_named() {
        let m = parse(&mcfg(&[
            entry(0xB000_0000, 0, 0, 0x7F),
            entry(0xC000_0000, 0, 0x40, 0xFF), // overlaps entry 0 on segment 0
            entry(0xE000_0000, 1, 0x10, 0x0F),
            entry(0, 2, 0, 0),
            entry(0xE000_1000, 3, 0, 0),
            entry(!0xF_FFFF, 4, 0, 0xFF),
            entry(0xD000_0000, 5, 0, 0x3F),
        ]))
        .unwrap();
        assert_eq!(m.regions.len(), 2);
        assert_eq!(m.regions[1].segment, 5);
        assert_eq!(
            m.rejected,
            vec![
                (1, EntryProblem::Overlaps { earlier: 0 }),
                (
                    2,
                    EntryProblem::EndBeforeStart {
                        start: 0x10,
                        end: 0x0F
                    }
                ),
                (3, EntryProblem::BaseZero),
                (4, EntryProblem::BaseMisaligned { base: 0xE000_1000 }),
                (5, EntryProblem::Wraps),
            ]
        );
    }
}
