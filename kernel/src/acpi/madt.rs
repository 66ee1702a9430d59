//! MADT ("APIC"): the CPUs (local APIC / x2APIC) and I/O APICs of the machine.

use alloc::vec::Vec;
use core::fmt;

use super::{SDT_HEADER_LEN, TableError};

const MADT_FIXED_LEN: usize = SDT_HEADER_LEN + 8;

/// Most I/O APIC entries kept. Real machines have a handful: one in a PC's chipset, one
/// per PCIe root complex or I/O hub on servers (Linux allows 128 on the largest). And the
/// GSIs they bring are only usable through host vectors, of which one CPU has ~200: 32
/// I/O APICs of 24 pins are already 768 GSIs. A table listing more is refused the rest
/// (see [`Madt::refused_io_apics`]), so nothing downstream ever handles an unbounded list.
pub const MAX_IO_APICS: usize = 32;

/// Refused I/O APIC entries kept in [`Madt::refused_io_apics`]; more are only counted.
pub const MAX_REFUSED_IO_APICS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub acpi_uid: u32,
    pub apic_id: u32,
    pub enabled: bool,
    pub online_capable: bool,
    pub x2apic: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    pub id: u8,
    pub address: u32,
    pub gsi_base: u32,
}

/// Why an I/O APIC entry was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoApicProblem {
    /// [`MAX_IO_APICS`] entries were kept already.
    TooMany,
    /// Its I/O APIC Address is that of the kept entry at `first_offset`: one I/O APIC
    /// listed twice, whose pins would each get two GSIs (two routes to one pin).
    DuplicateAddress { first_offset: usize },
    /// Its I/O APIC ID is that of the kept entry at `first_offset`: the DMAR and IVRS name
    /// I/O APICs by this id, so it must name one.
    DuplicateId { first_offset: usize },
}

/// An I/O APIC entry that was read but not kept, with where it is in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefusedIoApic {
    pub offset: usize,
    pub entry: IoApic,
    pub problem: IoApicProblem,
}

impl fmt::Display for RefusedIoApic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.entry;
        write!(
            f,
            "I/O APIC entry at offset {:#x} (I/O APIC ID {}, I/O APIC Address {:#x}, GSI base {}) refused: ",
            self.offset, e.id, e.address, e.gsi_base
        )?;
        match self.problem {
            IoApicProblem::TooMany => write!(f, "more than {MAX_IO_APICS} I/O APICs"),
            IoApicProblem::DuplicateAddress { first_offset } => write!(
                f,
                "I/O APIC Address {:#x} is already the entry's at offset {first_offset:#x}",
                e.address
            ),
            IoApicProblem::DuplicateId { first_offset } => write!(
                f,
                "I/O APIC ID {} is already the entry's at offset {first_offset:#x}",
                e.id
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptOverride {
    pub bus: u8,
    pub source_irq: u8,
    pub gsi: u32,
    pub flags: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Madt {
    pub local_apic_address: u64,
    /// The machine also has dual 8259 PICs (which the kernel masks).
    pub pcat_compat: bool,
    pub cpus: Vec<Cpu>,
    /// At most [`MAX_IO_APICS`], with distinct addresses and ids.
    pub io_apics: Vec<IoApic>,
    /// The first [`MAX_REFUSED_IO_APICS`] I/O APIC entries not kept, and why.
    pub refused_io_apics: Vec<RefusedIoApic>,
    /// How many I/O APIC entries were not kept in all.
    pub refused_io_apic_count: usize,
    pub overrides: Vec<InterruptOverride>,
    pub nmi_entries: usize,
    /// Entries of types this parser does not decode (skipped by their length).
    pub other_entries: usize,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Why `entry` cannot join `kept` (whose entries are at `offsets`), if it cannot. At most
/// [`MAX_IO_APICS`] are kept, so this is a bounded search.
fn io_apic_problem(kept: &[IoApic], offsets: &[usize], entry: &IoApic) -> Option<IoApicProblem> {
    let first = |same: &dyn Fn(&IoApic) -> bool| {
        let i = kept.iter().position(same)?;
        offsets.get(i).copied()
    };
    if let Some(first_offset) = first(&|k| k.address == entry.address) {
        return Some(IoApicProblem::DuplicateAddress { first_offset });
    }
    if let Some(first_offset) = first(&|k| k.id == entry.id) {
        return Some(IoApicProblem::DuplicateId { first_offset });
    }
    (kept.len() >= MAX_IO_APICS).then_some(IoApicProblem::TooMany)
}

/// Parse a whole MADT (header included; its checksum was verified when it was listed).
/// I/O APIC entries that repeat a kept one's address or id, or come after
/// [`MAX_IO_APICS`] kept ones, are not kept but listed in [`Madt::refused_io_apics`].
pub fn parse(table: &[u8]) -> Result<Madt, TableError> {
    if table.len() < MADT_FIXED_LEN {
        return Err(TableError::TooShort {
            length: table.len() as u32,
            minimum: MADT_FIXED_LEN as u32,
        });
    }
    let declared = u32_at(table, 4) as usize;
    if declared != table.len() {
        return Err(TableError::BadLength {
            length: declared as u32,
            rule: "differs from the bytes provided",
        });
    }
    let mut madt = Madt {
        local_apic_address: u32_at(table, 36) as u64,
        pcat_compat: u32_at(table, 40) & 1 != 0,
        ..Madt::default()
    };
    // Where each kept I/O APIC entry is, for naming the one a refused entry repeats.
    let mut io_apic_offsets = Vec::new();
    let mut off = MADT_FIXED_LEN;
    while off < table.len() {
        if off + 2 > table.len() {
            return Err(TableError::EntryOverrun {
                offset: off,
                entry_length: 2,
                table_length: table.len(),
            });
        }
        let kind = table[off];
        let len = table[off + 1] as usize;
        if len < 2 {
            return Err(TableError::ZeroLengthEntry { offset: off });
        }
        if off + len > table.len() {
            return Err(TableError::EntryOverrun {
                offset: off,
                entry_length: len,
                table_length: table.len(),
            });
        }
        let e = &table[off..off + len];
        let need = |n: usize| {
            if len < n {
                Err(TableError::EntryTooShort {
                    offset: off,
                    entry_type: kind,
                    length: len,
                    needed: n,
                })
            } else {
                Ok(())
            }
        };
        match kind {
            0 => {
                need(8)?;
                let flags = u32_at(e, 4);
                madt.cpus.push(Cpu {
                    acpi_uid: e[2] as u32,
                    apic_id: e[3] as u32,
                    enabled: flags & 1 != 0,
                    online_capable: flags & 2 != 0,
                    x2apic: false,
                });
            }
            1 => {
                need(12)?;
                let entry = IoApic {
                    id: e[2],
                    address: u32_at(e, 4),
                    gsi_base: u32_at(e, 8),
                };
                match io_apic_problem(&madt.io_apics, &io_apic_offsets, &entry) {
                    None => {
                        madt.io_apics.push(entry);
                        io_apic_offsets.push(off);
                    }
                    Some(problem) => {
                        madt.refused_io_apic_count += 1;
                        if madt.refused_io_apics.len() < MAX_REFUSED_IO_APICS {
                            madt.refused_io_apics.push(RefusedIoApic {
                                offset: off,
                                entry,
                                problem,
                            });
                        }
                    }
                }
            }
            2 => {
                need(10)?;
                madt.overrides.push(InterruptOverride {
                    bus: e[2],
                    source_irq: e[3],
                    gsi: u32_at(e, 4),
                    flags: u16_at(e, 8),
                });
            }
            4 | 0xA => madt.nmi_entries += 1,
            5 => {
                need(12)?;
                madt.local_apic_address =
                    u64::from_le_bytes([e[4], e[5], e[6], e[7], e[8], e[9], e[10], e[11]]);
            }
            9 => {
                need(16)?;
                let flags = u32_at(e, 8);
                madt.cpus.push(Cpu {
                    acpi_uid: u32_at(e, 12),
                    apic_id: u32_at(e, 4),
                    enabled: flags & 1 != 0,
                    online_capable: flags & 2 != 0,
                    x2apic: true,
                });
            }
            _ => madt.other_entries += 1,
        }
        off += len;
    }
    Ok(madt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::testutil::table;
    use alloc::string::ToString;
    use alloc::vec;

    fn body(entries: &[&[u8]]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0xFEE0_0000u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        for e in entries {
            b.extend_from_slice(e);
        }
        b
    }

    const LAPIC0: [u8; 8] = [0, 8, 0, 0, 1, 0, 0, 0];
    const LAPIC1_OFF: [u8; 8] = [0, 8, 1, 1, 0, 0, 0, 0];
    const IOAPIC: [u8; 12] = [1, 12, 0, 0, 0x00, 0x00, 0xC0, 0xFE, 0, 0, 0, 0];
    const ISO: [u8; 10] = [2, 10, 0, 0, 2, 0, 0, 0, 0, 0];

    #[test]
    fn parses_qemu_like_madt() {
        let t = table(
            b"APIC",
            1,
            &body(&[
                &LAPIC0,
                &LAPIC1_OFF,
                &IOAPIC,
                &ISO,
                &[4, 6, 0xFF, 0, 0, 1],
                &[0x7F, 3, 0],
            ]),
        );
        let m = parse(&t).unwrap();
        assert_eq!(m.local_apic_address, 0xFEE0_0000);
        assert!(m.pcat_compat);
        assert_eq!(m.cpus.len(), 2);
        assert!(m.cpus[0].enabled && !m.cpus[1].enabled);
        assert_eq!(
            m.io_apics,
            vec![IoApic {
                id: 0,
                address: 0xFEC0_0000,
                gsi_base: 0
            }]
        );
        assert_eq!(
            m.overrides[0],
            InterruptOverride {
                bus: 0,
                source_irq: 0,
                gsi: 2,
                flags: 0
            }
        );
        assert_eq!((m.nmi_entries, m.other_entries), (1, 1));
    }

    #[test]
    fn zero_length_entry_is_an_error_not_a_loop() {
        let t = table(b"APIC", 1, &body(&[&LAPIC0, &[0, 0, 0, 0]]));
        assert_eq!(parse(&t), Err(TableError::ZeroLengthEntry { offset: 52 }));
    }

    #[test]
    fn overrunning_and_short_entries_are_errors() {
        let t = table(b"APIC", 1, &body(&[&LAPIC0, &[1, 40, 0, 0]]));
        assert_eq!(
            parse(&t),
            Err(TableError::EntryOverrun {
                offset: 52,
                entry_length: 40,
                table_length: 56
            })
        );
        let t = table(b"APIC", 1, &body(&[&[1, 4, 0, 0]]));
        assert_eq!(
            parse(&t),
            Err(TableError::EntryTooShort {
                offset: 44,
                entry_type: 1,
                length: 4,
                needed: 12
            })
        );
        let t = table(b"APIC", 1, &body(&[&[9]]));
        assert_eq!(
            parse(&t),
            Err(TableError::EntryOverrun {
                offset: 44,
                entry_length: 2,
                table_length: 45
            })
        );
        assert!(matches!(parse(&t[..40]), Err(TableError::TooShort { .. })));
    }

    /// An I/O APIC entry.
    fn io_apic(id: u8, address: u32, gsi_base: u32) -> Vec<u8> {
        let mut e = vec![1, 12, id, 0];
        e.extend_from_slice(&address.to_le_bytes());
        e.extend_from_slice(&gsi_base.to_le_bytes());
        e
    }

    #[test]
    fn io_apics_are_capped() {
        // 100 distinct I/O APICs, 24 GSIs apart: the first MAX_IO_APICS are kept.
        let entries: Vec<Vec<u8>> = (0..100u32)
            .map(|i| io_apic(i as u8, 0xFEC0_0000 + (i << 12), 24 * i))
            .collect();
        let refs: Vec<&[u8]> = entries.iter().map(|e| e.as_slice()).collect();
        let m = parse(&table(b"APIC", 1, &body(&refs))).unwrap();
        assert_eq!(m.io_apics.len(), MAX_IO_APICS);
        assert_eq!(m.io_apics[31].id, 31);
        assert_eq!(m.refused_io_apic_count, 100 - MAX_IO_APICS);
        assert_eq!(m.refused_io_apics.len(), MAX_REFUSED_IO_APICS);
        let first = m.refused_io_apics[0];
        assert_eq!(
            (first.offset, first.entry.id, first.problem),
            (44 + 32 * 12, 32, IoApicProblem::TooMany)
        );
        assert_eq!(
            first.to_string(),
            "I/O APIC entry at offset 0x1ac (I/O APIC ID 32, I/O APIC Address 0xfec20000, \
             GSI base 768) refused: more than 32 I/O APICs"
        );
    }

    #[test]
    fn io_apics_with_the_address_or_id_of_another_are_refused() {
        let t = table(
            b"APIC",
            1,
            &body(&[
                &io_apic(0, 0xFEC0_0000, 0),
                &LAPIC0,
                // The same I/O APIC again, as GSIs 24..: its pins would have two GSIs.
                &io_apic(1, 0xFEC0_0000, 24),
                // Another I/O APIC with the first one's id.
                &io_apic(0, 0xFEC0_1000, 48),
                &io_apic(2, 0xFEC0_2000, 72),
            ]),
        );
        let m = parse(&t).unwrap();
        let kept: Vec<(u8, u32)> = m.io_apics.iter().map(|a| (a.id, a.address)).collect();
        assert_eq!(kept, [(0, 0xFEC0_0000), (2, 0xFEC0_2000)]);
        let refused: Vec<(usize, IoApicProblem)> = m
            .refused_io_apics
            .iter()
            .map(|r| (r.offset, r.problem))
            .collect();
        assert_eq!(
            refused,
            [
                (64, IoApicProblem::DuplicateAddress { first_offset: 44 }),
                (76, IoApicProblem::DuplicateId { first_offset: 44 }),
            ]
        );
        assert_eq!(m.refused_io_apic_count, 2);
        assert!(
            m.refused_io_apics[0].to_string().ends_with(
                "refused: I/O APIC Address 0xfec00000 is already the entry's at offset 0x2c"
            ),
            "{}",
            m.refused_io_apics[0]
        );
        assert!(
            m.refused_io_apics[1]
                .to_string()
                .ends_with("refused: I/O APIC ID 0 is already the entry's at offset 0x2c"),
            "{}",
            m.refused_io_apics[1]
        );
    }

    #[test]
    fn never_panics_on_random_bytes() {
        // Deterministic xorshift fuzz: any bytes after a valid header parse or fail cleanly.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..2000 {
            let n = (round % 90) as usize;
            let mut b = Vec::with_capacity(n);
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.push(x as u8);
            }
            let _ = parse(&table(b"APIC", 1, &b));
        }
    }
}
