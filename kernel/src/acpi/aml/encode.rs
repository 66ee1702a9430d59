//! A tiny AML encoder for tests: ASL-shaped helpers that return bytes, so hand-written
//! tables read almost like the ASL they stand for.

use alloc::vec::Vec;

use super::op;
use crate::acpi::testutil::table;

pub type Aml = Vec<u8>;

pub fn cat(parts: &[Aml]) -> Aml {
    parts.concat()
}

/// One NameSeg, padded with '_' ("_SB" → `_SB_`).
pub fn seg(s: &str) -> Aml {
    let mut b = s.as_bytes().to_vec();
    assert!(!b.is_empty() && b.len() <= 4, "bad NameSeg {s}");
    b.resize(4, b'_');
    b
}

/// A NameString from ASL text: `\_SB.PCI0`, `^^FOO`, `PCI0.ISA`, `_PRT`, `\`.
pub fn path(text: &str) -> Aml {
    let mut out = Vec::new();
    let mut rest = text;
    if let Some(r) = rest.strip_prefix('\\') {
        out.push(op::ROOT_CHAR);
        rest = r;
    }
    while let Some(r) = rest.strip_prefix('^') {
        out.push(op::PARENT_PREFIX);
        rest = r;
    }
    let segs: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('.').collect()
    };
    match segs.len() {
        0 => out.push(0x00),
        1 => {}
        2 => out.push(op::DUAL_NAME_PREFIX),
        n => out.extend_from_slice(&[op::MULTI_NAME_PREFIX, n as u8]),
    }
    for s in segs {
        out.extend(seg(s));
    }
    out
}

/// PkgLength for a body of `body_len` bytes, using exactly `extra` follow-on bytes
/// (0–3). The length counts its own bytes.
pub fn pkg_len_with(body_len: usize, extra: usize) -> Aml {
    let total = body_len + 1 + extra;
    if extra == 0 {
        assert!(total <= 0x3F);
        return vec![total as u8];
    }
    let mut out = vec![((extra as u8) << 6) | (total & 0x0F) as u8];
    for i in 0..extra {
        out.push((total >> (4 + 8 * i)) as u8);
    }
    assert_eq!(
        total >> (4 + 8 * extra),
        0,
        "body too long for {extra} bytes"
    );
    out
}

/// The shortest PkgLength for a body of `body_len` bytes.
pub fn pkg_len(body_len: usize) -> Aml {
    let extra = match body_len + 1 {
        n if n <= 0x3F => 0,
        n if n + 1 < 1 << 12 => 1,
        n if n + 2 < 1 << 20 => 2,
        _ => 3,
    };
    pkg_len_with(body_len, extra)
}

/// `opcode PkgLength body`.
pub fn with_pkg(opcode: &[u8], body: &[u8]) -> Aml {
    cat(&[opcode.to_vec(), pkg_len(body.len()), body.to_vec()])
}

/// An integer constant in its shortest encoding, as iasl and QEMU emit it.
pub fn int(v: u64) -> Aml {
    match v {
        0 => vec![op::ZERO],
        1 => vec![op::ONE],
        v if v <= 0xFF => vec![op::BYTE_PREFIX, v as u8],
        v if v <= 0xFFFF => cat(&[vec![op::WORD_PREFIX], (v as u16).to_le_bytes().to_vec()]),
        v if v <= 0xFFFF_FFFF => cat(&[vec![op::DWORD_PREFIX], (v as u32).to_le_bytes().to_vec()]),
        v => cat(&[vec![op::QWORD_PREFIX], v.to_le_bytes().to_vec()]),
    }
}

pub fn string(s: &str) -> Aml {
    cat(&[vec![op::STRING_PREFIX], s.as_bytes().to_vec(), vec![0]])
}

/// `EisaId("PNP0A08")`, computed here independently of the reader's own constant.
pub fn eisaid(id: &str) -> Aml {
    let b = id.as_bytes();
    let l = |c: u8| (c - 0x40) as u16;
    let vendor = (l(b[0]) << 10) | (l(b[1]) << 5) | l(b[2]);
    let product = u16::from_str_radix(&id[3..], 16).unwrap();
    let mut v = vendor.to_be_bytes().to_vec();
    v.extend(product.to_be_bytes());
    cat(&[vec![op::DWORD_PREFIX], v])
}

pub fn scope(name: &str, body: &[Aml]) -> Aml {
    with_pkg(&[op::SCOPE], &cat(&[path(name), cat(body)]))
}

pub fn device(name: &str, body: &[Aml]) -> Aml {
    with_pkg(
        &[op::EXT_PREFIX, op::DEVICE],
        &cat(&[path(name), cat(body)]),
    )
}

pub fn method(name: &str, args: u8, body: &[Aml]) -> Aml {
    with_pkg(&[op::METHOD], &cat(&[path(name), vec![args], cat(body)]))
}

pub fn name(n: &str, data: Aml) -> Aml {
    cat(&[vec![op::NAME], path(n), data])
}

pub fn package(elements: &[Aml]) -> Aml {
    with_pkg(
        &[op::PACKAGE],
        &cat(&[vec![elements.len() as u8], cat(elements)]),
    )
}

pub fn var_package(count: Aml, elements: &[Aml]) -> Aml {
    with_pkg(&[op::VAR_PACKAGE], &cat(&[count, cat(elements)]))
}

pub fn buffer(bytes: &[u8]) -> Aml {
    with_pkg(
        &[op::BUFFER],
        &cat(&[int(bytes.len() as u64), bytes.to_vec()]),
    )
}

pub fn if_(predicate: Aml, body: &[Aml]) -> Aml {
    with_pkg(&[op::IF], &cat(&[predicate, cat(body)]))
}

pub fn else_(body: &[Aml]) -> Aml {
    with_pkg(&[op::ELSE], &cat(body))
}

pub fn while_(predicate: Aml, body: &[Aml]) -> Aml {
    with_pkg(&[op::WHILE], &cat(&[predicate, cat(body)]))
}

pub fn store(source: Aml, target: Aml) -> Aml {
    cat(&[vec![op::STORE], source, target])
}

pub fn ret(v: Aml) -> Aml {
    cat(&[vec![op::RETURN], v])
}

pub fn lequal(a: Aml, b: Aml) -> Aml {
    cat(&[vec![op::LEQUAL], a, b])
}

pub fn lnot(a: Aml) -> Aml {
    cat(&[vec![op::LNOT], a])
}

pub fn lless(a: Aml, b: Aml) -> Aml {
    cat(&[vec![op::LLESS], a, b])
}

pub fn arg(n: u8) -> Aml {
    vec![op::ARG0 + n]
}

pub fn local(n: u8) -> Aml {
    vec![op::LOCAL0 + n]
}

/// `Interrupt (ResourceConsumer, Level|Edge, ActiveHigh|ActiveLow, Shared|Exclusive) {gsis}`
pub fn ext_irq(level: bool, active_low: bool, shared: bool, gsis: &[u32]) -> Aml {
    let flags = 0x01 | (!level as u8) << 1 | (active_low as u8) << 2 | (shared as u8) << 3;
    let mut body = vec![flags, gsis.len() as u8];
    for g in gsis {
        body.extend(g.to_le_bytes());
    }
    cat(&[vec![0x89], (body.len() as u16).to_le_bytes().to_vec(), body])
}

/// `IRQ (Level|Edge, ActiveHigh|ActiveLow, Shared|Exclusive) {irqs}` (3-byte form).
pub fn irq(level: bool, active_low: bool, irqs: &[u8]) -> Aml {
    let mask: u16 = irqs.iter().fold(0, |m, &i| m | 1 << i);
    let flags = (!level as u8) | (active_low as u8) << 3;
    cat(&[vec![0x23], mask.to_le_bytes().to_vec(), vec![flags]])
}

/// `ResourceTemplate () { … }`: the descriptors plus an End Tag, as a Buffer.
pub fn resource_template(descriptors: &[Aml]) -> Aml {
    buffer(&cat(&[cat(descriptors), vec![0x79, 0x00]]))
}

/// A whole table (header, valid checksum) around `body`. Revision 1 like QEMU's DSDT,
/// which makes integers 32 bits wide.
pub fn dsdt(body: &[Aml]) -> Aml {
    table(b"DSDT", 1, &cat(body))
}

/// Recompute length and checksum after editing a table's AML in place.
pub fn reheader(t: &mut Aml) {
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    crate::acpi::testutil::checksum_fix(t, 9);
}

/// The link device `_PRT` names for `slot`/`pin` in QEMU's q35 routing table, written
/// from the rule in QEMU's `build_q35_routing_table`/`append_q35_prt_entry`: each slot
/// starts at a letter and the pins rotate through its group of four (A–D or E–H).
/// Slots 0–0x17 start at E + (slot mod 4); 0x18 and 0x1E (the PCIe-to-PCI bridge) at E;
/// 0x19–0x1D and 0x1F (the ICH9 functions) at A.
pub fn q35_link_letter(slot: u8, pin: u8) -> u8 {
    let (group, head) = match slot {
        0x00..=0x17 => (b'E', slot & 3),
        0x18 | 0x1E => (b'E', 0),
        _ => (b'A', 0),
    };
    group + (head + pin) % 4
}

/// QEMU's `Package (128) { Package (4) { (slot << 16) | 0xFFFF, pin, <prefix><letter>, 0 } … }`.
pub fn q35_routing_table(prefix: &str) -> Aml {
    let mut entries = Vec::new();
    for slot in 0..32u8 {
        for pin in 0..4u8 {
            let link = format!("{prefix}{}", q35_link_letter(slot, pin) as char);
            entries.push(package(&[
                int(((slot as u64) << 16) | 0xFFFF),
                int(pin as u64),
                path(&link),
                int(0),
            ]));
        }
    }
    package(&entries)
}

/// A hand-built DSDT in the shape of QEMU's q35 one (hw/i386/acpi-build.c:
/// `build_q35_pci0_int`, `build_link_dev`, `build_gsi_link_dev`): `\PICF`, `\_PIC`,
/// `PRTP`/`PRTA`/`_PRT` in `\_SB.PCI0`, PIC-mode links LNKA–LNKH whose `_CRS` reads PIRQ
/// registers (field units), and APIC-mode links GSIA–GSIH fixed to GSIs 16–23.
pub fn qemu_q35_dsdt() -> Aml {
    let sb = vec![device(
        "PCI0",
        &[
            name("_HID", eisaid("PNP0A08")),
            name("_CID", eisaid("PNP0A03")),
            name("_UID", int(0)),
        ],
    )];
    let pci0 = scope(
        "PCI0",
        &[
            name("PRTP", q35_routing_table("LNK")),
            name("PRTA", q35_routing_table("GSI")),
            method(
                "_PRT",
                0,
                &[
                    if_(lequal(path("PICF"), int(0)), &[ret(path("PRTP"))]),
                    else_(&[ret(path("PRTA"))]),
                ],
            ),
        ],
    );
    let mut after = vec![pci0];
    // Field (PCI0.ISA.PIRQ) { PRQA, 8, … }: the PIC-mode links' registers.
    let mut fields = vec![0x01]; // field flags: ByteAcc
    for l in b"ABCDEFGH" {
        fields.extend(seg(&format!("PRQ{}", *l as char)));
        fields.push(8);
    }
    after.push(with_pkg(
        &[op::EXT_PREFIX, op::FIELD],
        &cat(&[path("PCI0.ISA.PIRQ"), fields]),
    ));
    for (i, l) in b"ABCDEFGH".iter().enumerate() {
        let l = *l as char;
        after.push(device(
            &format!("LNK{l}"),
            &[
                name("_HID", eisaid("PNP0C0F")),
                name("_UID", int(i as u64)),
                name(
                    "_PRS",
                    resource_template(&[ext_irq(true, false, true, &[5, 10, 11])]),
                ),
                method("_CRS", 0, &[ret(path(&format!("PRQ{l}")))]),
            ],
        ));
    }
    for i in 0..8u32 {
        let crs = resource_template(&[ext_irq(true, false, true, &[0x10 + i])]);
        after.push(device(
            &format!("GSI{}", (b'A' + i as u8) as char),
            &[
                name("_HID", eisaid("PNP0C0F")),
                name("_UID", int(0x10 + i as u64)),
                name("_PRS", crs.clone()),
                name("_CRS", crs),
                method("_SRS", 1, &[]),
            ],
        ));
    }
    dsdt(&[
        scope("\\_SB", &sb),
        name("PICF", int(0)),
        method("_PIC", 1, &[store(arg(0), path("PICF"))]),
        scope("_SB", &after),
    ])
}
