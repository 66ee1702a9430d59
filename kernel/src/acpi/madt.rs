//! MADT ("APIC"): the CPUs (local APIC / x2APIC) and I/O APICs of the machine.

use alloc::vec::Vec;

use super::{SDT_HEADER_LEN, TableError};

const MADT_FIXED_LEN: usize = SDT_HEADER_LEN + 8;

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
    pub io_apics: Vec<IoApic>,
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

/// Parse a whole MADT (header included; its checksum was verified when it was listed).
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
                madt.io_apics.push(IoApic {
                    id: e[2],
                    address: u32_at(e, 4),
                    gsi_base: u32_at(e, 8),
                });
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
