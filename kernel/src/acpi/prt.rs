//! PCI INTx routing: which IOAPIC input (GSI) each PCI slot's INTA–INTD pin is wired to.
//!
//! A PCI function without MSI signals interrupts on one of four shared wires, INTA–INTD
//! (config register 0x3D says which). Where those wires land on the IOAPIC is board
//! wiring that no PCI register tells: only the firmware knows, and it answers through the
//! host bridge's `_PRT` method in the DSDT. The OS first calls `\_PIC(1)` ("I use the
//! IOAPIC"), because firmware like QEMU's returns a different table for the 8259 PICs.
//!
//! Each `_PRT` entry is `Package { (slot << 16) | 0xFFFF, pin 0–3, source, index }`:
//! `source` is either 0, and then `index` is the GSI itself, or the name of an interrupt
//! link device whose `_CRS` (current resources) holds one interrupt descriptor.
//!
//! Only the root bus's `_PRT` is read. Devices behind PCI-to-PCI bridges are routed with
//! the standard swizzle ([`PciIntxRouting::route_through_bridges`]), which is what Linux
//! does for a bridge without a `_PRT` of its own; bridges that do have one (rare, and not
//! the case on QEMU's q35) are not read.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use super::aml::{
    AmlError, AmlPath, ErrorKind, Interpreter, NameSeg, NameString, Namespace, Node, NodeKind,
    Value,
};

/// An INTx pin. Config register 0x3D (Interrupt Pin) holds 1–4 for INTA–INTD.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IntxPin {
    A,
    B,
    C,
    D,
}

impl IntxPin {
    const ALL: [IntxPin; 4] = [IntxPin::A, IntxPin::B, IntxPin::C, IntxPin::D];

    /// From the Interrupt Pin config register: 1–4, or `None` (0 = no INTx pin).
    pub fn from_config(value: u8) -> Option<Self> {
        Self::from_index(value.checked_sub(1)?)
    }

    /// From the `_PRT` numbering: 0–3.
    pub fn from_index(index: u8) -> Option<Self> {
        Self::ALL.get(index as usize).copied()
    }

    /// 0–3 for INTA–INTD.
    pub fn index(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for IntxPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "INT{}", (b'A' + self.index()) as char)
    }
}

/// The PCI-to-PCI bridge swizzle (PCI-to-PCI Bridge spec §9.1): a device in slot `s`
/// behind a bridge raises INTx pin `p` on the bridge's own pin `(p + s) mod 4`, so the
/// devices behind one bridge spread over its four wires.
pub fn swizzle(device_slot: u8, pin: IntxPin) -> IntxPin {
    IntxPin::ALL[((pin.index() as usize) + device_slot as usize) % 4]
}

/// Where one INTx pin ends up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GsiRoute {
    pub gsi: u32,
    pub level_triggered: bool,
    pub active_low: bool,
}

impl fmt::Display for GsiRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GSI {} {}", self.gsi, Flags(self))
    }
}

/// "level, active-high".
struct Flags<'a>(&'a GsiRoute);

impl fmt::Display for Flags<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trigger = if self.0.level_triggered {
            "level"
        } else {
            "edge"
        };
        let polarity = if self.0.active_low {
            "active-low"
        } else {
            "active-high"
        };
        write!(f, "{trigger}, {polarity}")
    }
}

/// One usable `_PRT` entry of the root bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrtEntry {
    pub slot: u8,
    pub pin: IntxPin,
    /// The interrupt link device, or `None` for a hardwired GSI.
    pub link: Option<AmlPath>,
    pub route: GsiRoute,
}

/// Why an interrupt link device gave no route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkProblem {
    NoCrs,
    Eval(AmlError),
    /// `_CRS` gave something other than a resource template buffer.
    NotABuffer {
        found: &'static str,
    },
    /// A resource descriptor runs past the end of the buffer.
    Truncated {
        offset: usize,
    },
    NoInterrupt,
    /// The interrupt descriptor lists `count` interrupts, not exactly one.
    InterruptCount {
        count: usize,
    },
}

impl fmt::Display for LinkProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCrs => write!(f, "has no _CRS"),
            Self::Eval(e) => write!(f, "{e}"),
            Self::NotABuffer { found } => write!(f, "_CRS gave {found}, not a buffer"),
            Self::Truncated { offset } => {
                write!(f, "_CRS descriptor at {offset:#x} runs past its end")
            }
            Self::NoInterrupt => write!(f, "_CRS has no interrupt descriptor"),
            Self::InterruptCount { count } => {
                write!(f, "_CRS lists {count} interrupts, expected exactly 1")
            }
        }
    }
}

/// Why one `_PRT` entry was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryProblem {
    /// Not `Package { Integer, Integer, name or 0, Integer }`.
    Shape,
    /// Not `(slot << 16) | 0xFFFF` with slot 0–31.
    Address(u64),
    Pin(u64),
    /// A hardwired GSI that does not fit 32 bits.
    Gsi(u64),
    LinkNotFound(NameString),
    /// A link device with a source index other than 0 (Linux rejects these too).
    LinkIndex(u64),
    Link {
        link: AmlPath,
        problem: LinkProblem,
    },
    /// The same slot and pin as an earlier entry (the first one counts).
    Duplicate,
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shape => write!(f, "not Package {{address, pin, source, index}}"),
            Self::Address(a) => write!(f, "address {a:#x} is not (slot << 16) | 0xFFFF"),
            Self::Pin(p) => write!(f, "pin {p} is not 0-3"),
            Self::Gsi(g) => write!(f, "GSI {g:#x} does not fit 32 bits"),
            Self::LinkNotFound(n) => write!(f, "link device {n} not found"),
            Self::LinkIndex(i) => write!(f, "source index {i} for a link device (must be 0)"),
            Self::Link { link, problem } => write!(f, "link {link}: {problem}"),
            Self::Duplicate => write!(f, "duplicate of an earlier entry"),
        }
    }
}

/// Why there is no routing at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrtError {
    /// A table's header is not that of a DSDT/SSDT.
    Table(AmlError),
    /// `\_PIC(1)` failed: `_PRT` might describe the 8259 wiring, so nothing is trusted.
    Pic(AmlError),
    /// No device with `_HID`/`_CID` PNP0A08 or PNP0A03.
    NoHostBridge,
    /// A host bridge, but none with a `_PRT`.
    NoPrt { bridge: AmlPath },
    /// Evaluating `_PRT` failed.
    Eval(AmlError),
    /// `_PRT` returned something other than a package.
    NotAPackage { prt: AmlPath, found: &'static str },
}

impl fmt::Display for PrtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Table(e) => write!(f, "unusable AML table: {e}"),
            Self::Pic(e) => write!(f, "\\_PIC(1) failed: {e}"),
            Self::NoHostBridge => {
                write!(f, "no PCI host bridge (PNP0A08/PNP0A03) in the namespace")
            }
            Self::NoPrt { bridge } => write!(f, "host bridge {bridge} has no _PRT"),
            Self::Eval(e) => write!(f, "{e}"),
            Self::NotAPackage { prt, found } => write!(f, "{prt} returned {found}, not a package"),
        }
    }
}

/// The INTx routing of the root PCI bus, as the firmware's `_PRT` gives it in APIC mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciIntxRouting {
    /// The `_PRT` that was evaluated, e.g. `\_SB.PCI0._PRT`.
    pub prt: AmlPath,
    /// `\_PIC(1)` existed and was run; without it `_PRT` is taken as it comes.
    pub pic_called: bool,
    entries: Vec<PrtEntry>,
    /// `(entry index, problem)` for every entry that was not used.
    pub rejected: Vec<(usize, EntryProblem)>,
    /// AML definition bodies the namespace walk had to abandon (see [`Namespace`]).
    pub aml_problems: Vec<AmlError>,
}

const fn seg(text: &[u8; 4]) -> NameSeg {
    NameSeg(*text)
}

/// EISA ids (`EisaId("PNP0A08")` in ASL) are compressed into a DWord: three letters of
/// five bits ('A' = 1) and four hex digits, stored big-endian in the four bytes.
const fn eisa_id(id: &[u8; 7]) -> u32 {
    const fn hex(c: u8) -> u32 {
        (if c >= b'A' { c - b'A' + 10 } else { c - b'0' }) as u32
    }
    let vendor =
        (((id[0] - b'@') as u32) << 10) | (((id[1] - b'@') as u32) << 5) | (id[2] - b'@') as u32;
    let product = (hex(id[3]) << 12) | (hex(id[4]) << 8) | (hex(id[5]) << 4) | hex(id[6]);
    u32::from_le_bytes([
        (vendor >> 8) as u8,
        vendor as u8,
        (product >> 8) as u8,
        product as u8,
    ])
}

/// PCI Express root complex, and plain PCI host bridge.
const PCI_ROOT_IDS: [(&str, u32); 2] = [
    ("PNP0A08", eisa_id(b"PNP0A08")),
    ("PNP0A03", eisa_id(b"PNP0A03")),
];

impl PciIntxRouting {
    /// Read the routing from a whole DSDT (header included).
    pub fn from_dsdt(dsdt: &[u8]) -> Result<Self, PrtError> {
        Self::from_tables(&[dsdt])
    }

    /// Read the routing from the DSDT followed by any SSDTs (whole tables, in the order
    /// the root table lists them; all are loaded into one namespace before evaluating).
    /// All the evaluations this takes share one budget of [`super::aml::MAX_STEPS`], so
    /// its cost is bounded whatever the tables hold.
    pub fn from_tables(tables: &[&[u8]]) -> Result<Self, PrtError> {
        let mut ns = Namespace::new();
        for t in tables {
            ns.load_table(t).map_err(PrtError::Table)?;
        }
        Self::from_namespace(&ns, &mut Interpreter::new(&ns))
    }

    /// The routing from a loaded namespace, every evaluation run by `interp`.
    fn from_namespace(
        ns: &Namespace<'_>,
        interp: &mut Interpreter<'_, '_>,
    ) -> Result<Self, PrtError> {
        // Tell the firmware we use the IOAPIC, as Linux does before reading any _PRT.
        let pic = AmlPath::root().child(seg(b"_PIC"));
        let pic_called = ns.get(&pic).is_some();
        if pic_called {
            interp
                .evaluate(&pic, &[Value::Integer(1)])
                .map_err(PrtError::Pic)?;
        }

        let bridge = find_host_bridge(ns, interp)?;
        let prt = bridge.child(seg(b"_PRT"));
        let table = match interp.evaluate(&prt, &[]).map_err(PrtError::Eval)? {
            Some(Value::Package(entries)) => entries,
            other => {
                let found = other.as_ref().map_or("nothing", Value::type_name);
                return Err(PrtError::NotAPackage { prt, found });
            }
        };

        let mut routing = Self {
            prt,
            pic_called,
            entries: Vec::new(),
            rejected: Vec::new(),
            aml_problems: ns.problems.clone(),
        };
        let mut links = BTreeMap::new();
        for (i, raw) in table.iter().enumerate() {
            match decode_entry(raw, ns, interp, &mut links) {
                Ok(e)
                    if routing
                        .entries
                        .iter()
                        .any(|x| (x.slot, x.pin) == (e.slot, e.pin)) =>
                {
                    routing.rejected.push((i, EntryProblem::Duplicate));
                }
                Ok(e) => routing.entries.push(e),
                Err(problem) => routing.rejected.push((i, problem)),
            }
        }
        Ok(routing)
    }

    /// The usable entries, in `_PRT` order.
    pub fn entries(&self) -> &[PrtEntry] {
        &self.entries
    }

    /// The route of `pin` of a device in `slot` on the root bus.
    pub fn root_route(&self, slot: u8, pin: IntxPin) -> Option<GsiRoute> {
        self.entries
            .iter()
            .find(|e| e.slot == slot && e.pin == pin)
            .map(|e| e.route)
    }

    /// The route of `pin` of a device below bridges. `path` lists device numbers from
    /// the root bus down: `path[0]` is the root-bus slot of the topmost bridge, the last
    /// element the device's own slot on its bus (a one-element path is a root-bus device).
    /// The pin is swizzled at every bridge on the way up.
    pub fn route_through_bridges(&self, path: &[u8], pin: IntxPin) -> Option<GsiRoute> {
        let (&root_slot, below) = path.split_first()?;
        let pin = below.iter().rev().fold(pin, |p, &slot| swizzle(slot, p));
        self.root_route(root_slot, pin)
    }

    /// Lowest and highest GSI used.
    pub fn gsi_range(&self) -> Option<(u32, u32)> {
        let gsis = self.entries.iter().map(|e| e.route.gsi);
        Some((gsis.clone().min()?, gsis.max()?))
    }

    /// One line for the boot log: `\_SB.PCI0._PRT (APIC mode): 128 entries, GSIs 16..=23`.
    pub fn summary(&self) -> Summary<'_> {
        Summary(self)
    }
}

/// See [`PciIntxRouting::summary`].
pub struct Summary<'a>(&'a PciIntxRouting);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        let mode = if r.pic_called {
            "APIC mode"
        } else {
            "no _PIC method"
        };
        write!(f, "{} ({mode}): {} entries", r.prt, r.entries.len())?;
        if let Some((lo, hi)) = r.gsi_range() {
            write!(f, ", GSIs {lo}..={hi}")?;
        }
        if !r.rejected.is_empty() {
            write!(f, ", {} unusable", r.rejected.len())?;
        }
        if !r.aml_problems.is_empty() {
            write!(f, ", {} AML bodies not fully read", r.aml_problems.len())?;
        }
        Ok(())
    }
}

impl fmt::Display for PciIntxRouting {
    /// One line per root-bus slot, e.g.
    /// `slot 03: INTA GSI 23, INTB GSI 20, INTC GSI 21, INTD GSI 22 (level, active-high)`,
    /// then one per unusable entry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for slot in 0..32u8 {
            let pins: Vec<&PrtEntry> = IntxPin::ALL
                .iter()
                .filter_map(|&p| self.entries.iter().find(|e| e.slot == slot && e.pin == p))
                .collect();
            let Some(first) = pins.first() else { continue };
            let uniform = pins.iter().all(|e| {
                (e.route.level_triggered, e.route.active_low)
                    == (first.route.level_triggered, first.route.active_low)
            });
            write!(f, "slot {slot:02x}:")?;
            for (i, e) in pins.iter().enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                write!(f, "{sep}{} GSI {}", e.pin, e.route.gsi)?;
                if !uniform {
                    write!(f, " ({})", Flags(&e.route))?;
                }
            }
            if uniform {
                write!(f, " ({})", Flags(&first.route))?;
            }
            writeln!(f)?;
        }
        for (i, problem) in &self.rejected {
            writeln!(f, "entry {i} unusable: {problem}")?;
        }
        Ok(())
    }
}

/// The first device whose `_HID` or `_CID` says PCI host bridge and that has a `_PRT`.
///
/// Only devices with a `_PRT` can be that bridge, so only their ids are evaluated at first
/// (a DSDT may define thousands of devices, whose ids may be methods). Only when none of
/// them is a host bridge are the other devices' ids evaluated, to tell "no host bridge"
/// from "a host bridge without `_PRT`". All of it runs on the interpreter's one step
/// budget; once that is spent, the error is returned, naming the id that spent it.
fn find_host_bridge(
    ns: &Namespace<'_>,
    interp: &mut Interpreter<'_, '_>,
) -> Result<AmlPath, PrtError> {
    let devices = || ns.nodes().iter().filter(|n| n.kind == NodeKind::Device);
    let has_prt = |node: &Node| ns.get(&node.path.child(seg(b"_PRT"))).is_some();
    for node in devices().filter(|n| has_prt(n)) {
        if is_host_bridge(ns, interp, node)? {
            return Ok(node.path.clone());
        }
    }
    for node in devices().filter(|n| !has_prt(n)) {
        if is_host_bridge(ns, interp, node)? {
            return Err(PrtError::NoPrt {
                bridge: node.path.clone(),
            });
        }
    }
    Err(PrtError::NoHostBridge)
}

/// Whether `device`'s `_HID` or `_CID` says PCI host bridge. An id that cannot be
/// evaluated simply does not make it one, unless the step budget is spent: that error
/// ends the search.
fn is_host_bridge(
    ns: &Namespace<'_>,
    interp: &mut Interpreter<'_, '_>,
    device: &Node,
) -> Result<bool, PrtError> {
    for id in [seg(b"_HID"), seg(b"_CID")] {
        let path = device.path.child(id);
        if ns.get(&path).is_none() {
            continue;
        }
        match interp.evaluate(&path, &[]) {
            Ok(Some(v)) if is_pci_root_id(&v) => return Ok(true),
            Err(e) if e.kind == ErrorKind::TooManySteps => return Err(PrtError::Eval(e)),
            _ => {}
        }
    }
    Ok(false)
}

/// An id value (`_HID`: EISA id integer or string; `_CID`: also a package of them).
fn is_pci_root_id(v: &Value) -> bool {
    let one = |v: &Value| match v {
        Value::Integer(i) => PCI_ROOT_IDS.iter().any(|&(_, id)| *i == id as u64),
        Value::String(s) => PCI_ROOT_IDS.iter().any(|&(text, _)| s == text),
        _ => false,
    };
    match v {
        Value::Package(ids) => ids.iter().any(one),
        v => one(v),
    }
}

fn decode_entry(
    raw: &Value,
    ns: &Namespace<'_>,
    interp: &mut Interpreter<'_, '_>,
    links: &mut BTreeMap<AmlPath, Result<GsiRoute, LinkProblem>>,
) -> Result<PrtEntry, EntryProblem> {
    let Value::Package(fields) = raw else {
        return Err(EntryProblem::Shape);
    };
    let [address, pin, source, index] = fields.as_slice() else {
        return Err(EntryProblem::Shape);
    };
    let (Some(address), Some(pin), Some(index)) =
        (address.as_integer(), pin.as_integer(), index.as_integer())
    else {
        return Err(EntryProblem::Shape);
    };
    let slot = address >> 16;
    if address & 0xFFFF != 0xFFFF || slot > 31 {
        return Err(EntryProblem::Address(address));
    }
    let slot = slot as u8;
    let pin = u8::try_from(pin)
        .ok()
        .and_then(IntxPin::from_index)
        .ok_or(EntryProblem::Pin(pin))?;
    match source {
        // Hardwired: the index is the GSI. PCI interrupts are level-triggered and
        // active-low by definition, which is what Linux assumes here too.
        Value::Integer(0) => {
            let gsi = u32::try_from(index).map_err(|_| EntryProblem::Gsi(index))?;
            let route = GsiRoute {
                gsi,
                level_triggered: true,
                active_low: true,
            };
            Ok(PrtEntry {
                slot,
                pin,
                link: None,
                route,
            })
        }
        Value::Reference { name, scope } => {
            let link = ns
                .resolve(name, scope)
                .ok_or_else(|| EntryProblem::LinkNotFound(name.clone()))?;
            if index != 0 {
                return Err(EntryProblem::LinkIndex(index));
            }
            let route = links
                .entry(link.clone())
                .or_insert_with(|| link_route(ns, interp, &link))
                .clone()
                .map_err(|problem| EntryProblem::Link {
                    link: link.clone(),
                    problem,
                })?;
            Ok(PrtEntry {
                slot,
                pin,
                link: Some(link),
                route,
            })
        }
        _ => Err(EntryProblem::Shape),
    }
}

/// An interrupt link device's current interrupt: the one in its `_CRS`.
fn link_route(
    ns: &Namespace<'_>,
    interp: &mut Interpreter<'_, '_>,
    link: &AmlPath,
) -> Result<GsiRoute, LinkProblem> {
    let crs = link.child(seg(b"_CRS"));
    if ns.get(&crs).is_none() {
        return Err(LinkProblem::NoCrs);
    }
    match interp.evaluate(&crs, &[]).map_err(LinkProblem::Eval)? {
        Some(Value::Buffer(bytes)) => interrupt_resource(&bytes),
        other => Err(LinkProblem::NotABuffer {
            found: other.as_ref().map_or("nothing", Value::type_name),
        }),
    }
}

/// The first interrupt descriptor of a resource template (ACPI §6.4).
///
/// * Extended Interrupt (large item 0x89): flags bit 1 = edge (else level), bit 2 =
///   active-low, bit 3 = shared; then a count and that many u32 interrupt numbers, which
///   in APIC mode are GSIs. A `_CRS` must list exactly one.
/// * IRQ (small item 0x22/0x23): a 16-bit mask of ISA IRQs (exactly one set in `_CRS`)
///   and, in the 3-byte form, flags: bit 0 = edge, bit 3 = active-low; without them the
///   ISA default, edge and active-high. The IRQ number is used as the GSI, as Linux does
///   for a link device (MADT interrupt source overrides are not applied here).
fn interrupt_resource(bytes: &[u8]) -> Result<GsiRoute, LinkProblem> {
    let mut at = 0;
    while at < bytes.len() {
        let tag = bytes[at];
        let (kind, body_at, len) = if tag & 0x80 == 0 {
            ((tag >> 3) & 0x0F, at + 1, (tag & 7) as usize)
        } else {
            let len = bytes
                .get(at + 1..at + 3)
                .map(|l| u16::from_le_bytes([l[0], l[1]]) as usize)
                .ok_or(LinkProblem::Truncated { offset: at })?;
            (tag, at + 3, len)
        };
        let body = bytes
            .get(body_at..body_at + len)
            .ok_or(LinkProblem::Truncated { offset: at })?;
        match kind {
            // Small IRQ descriptor.
            0x04 if len >= 2 => {
                let mask = u16::from_le_bytes([body[0], body[1]]);
                if mask.count_ones() != 1 {
                    return Err(LinkProblem::InterruptCount {
                        count: mask.count_ones() as usize,
                    });
                }
                let flags = body.get(2).copied().unwrap_or(0x01);
                return Ok(GsiRoute {
                    gsi: mask.trailing_zeros(),
                    level_triggered: flags & 0x01 == 0,
                    active_low: flags & 0x08 != 0,
                });
            }
            // Small End Tag.
            0x0F => break,
            // Large Extended Interrupt descriptor.
            0x89 if len >= 2 => {
                let (flags, count) = (body[0], body[1] as usize);
                if count != 1 {
                    return Err(LinkProblem::InterruptCount { count });
                }
                let gsi = body
                    .get(2..6)
                    .map(|g| u32::from_le_bytes([g[0], g[1], g[2], g[3]]))
                    .ok_or(LinkProblem::Truncated { offset: at })?;
                return Ok(GsiRoute {
                    gsi,
                    level_triggered: flags & 0x02 == 0,
                    active_low: flags & 0x04 != 0,
                });
            }
            _ => {}
        }
        at = body_at + len;
    }
    Err(LinkProblem::NoInterrupt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::aml::encode::*;
    use crate::acpi::aml::op;
    use alloc::string::ToString;
    use proptest::prelude::*;

    const QEMU72: &[u8] = include_bytes!("testdata/dsdt-q35-qemu72.aml");
    const QEMU10: &[u8] = include_bytes!("testdata/dsdt-q35-qemu10.aml");
    const QEMU10_AMDVI: &[u8] = include_bytes!("testdata/dsdt-q35-amdvi-qemu10.aml");

    fn level_high(gsi: u32) -> Option<GsiRoute> {
        Some(GsiRoute {
            gsi,
            level_triggered: true,
            active_low: false,
        })
    }

    /// What QEMU's q35 routing must give, worked out from `build_q35_routing_table` and
    /// `append_q35_prt_entry` (hw/i386/acpi-build.c) rather than from the table itself:
    /// in APIC mode slot S's pin P goes to link GSI<letter>, and GSIA–GSIH have fixed
    /// `_CRS` GSIs 0x10–0x17, level-triggered, active-high, shared (`build_gsi_link_dev`).
    /// * slots 0–0x17 start at GSIE + (S mod 4) and rotate within E–H:
    ///   GSI = 20 + (S + P) mod 4;
    /// * slot 0x18 and 0x1E (PCIe-to-PCI bridge) start at E: GSI = 20 + P;
    /// * slots 0x19–0x1D and 0x1F (the ICH9 functions) start at A: GSI = 16 + P.
    fn assert_qemu_q35_routing(r: &PciIntxRouting) {
        use IntxPin::*;
        // Slot 3: E + 3 = H → GSI 23; its INTB wraps around to E → 20.
        assert_eq!(r.root_route(3, A), level_high(23));
        assert_eq!(r.root_route(3, B), level_high(20));
        // Slot 4: E + 0 → 20; slot 5: E + 1 → 21; slot 0: E → 20.
        assert_eq!(r.root_route(4, A), level_high(20));
        assert_eq!(r.root_route(5, A), level_high(21));
        assert_eq!(r.root_route(0, A), level_high(20));
        assert_eq!(r.root_route(0x17, D), level_high(22)); // 20 + (23 + 3) mod 4
        assert_eq!(r.root_route(0x18, B), level_high(21));
        assert_eq!(r.root_route(0x19, D), level_high(19));
        assert_eq!(r.root_route(0x1E, C), level_high(22));
        // Slot 0x1f (LPC, SATA, SMBus): INTA → GSIA → 16.
        assert_eq!(r.root_route(0x1F, A), level_high(16));
        assert_eq!(r.entries().len(), 128);
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        assert_eq!(r.gsi_range(), Some((16, 23)));
        assert!(r.pic_called);
        assert_eq!(r.prt.to_string(), "\\_SB.PCI0._PRT");
        assert_eq!(
            r.entries()[12].link.as_ref().unwrap().to_string(),
            "\\_SB.GSIH"
        );
    }

    #[test]
    fn hand_built_qemu_shape_routes_like_qemu() {
        let r = PciIntxRouting::from_dsdt(&qemu_q35_dsdt()).unwrap();
        assert_qemu_q35_routing(&r);
        assert!(r.aml_problems.is_empty());
    }

    #[test]
    fn real_qemu_dsdts_route_like_qemu() {
        // Captured with the kernel's `acpidump` from `-machine q35 -nodefaults` with
        // intel-iommu (7.2 and 10.0) and amd-iommu (10.0), edus at 00:03.0 and 00:04.0
        // and an NVMe at 00:05.0.
        for (version, dsdt) in [
            ("7.2", QEMU72),
            ("10.0", QEMU10),
            ("10.0 amd-iommu", QEMU10_AMDVI),
        ] {
            let r = PciIntxRouting::from_dsdt(dsdt).unwrap_or_else(|e| panic!("{version}: {e}"));
            assert_qemu_q35_routing(&r);
            assert!(r.aml_problems.is_empty(), "{version}: {:?}", r.aml_problems);
            assert_eq!(
                r.summary().to_string(),
                "\\_SB.PCI0._PRT (APIC mode): 128 entries, GSIs 16..=23"
            );
        }
    }

    #[test]
    fn real_qemu_dsdt_namespace_is_walked_whole() {
        // Every definition body of QEMU's DSDT is readable by the walker, and the
        // objects _PRT needs are where QEMU puts them.
        for dsdt in [QEMU72, QEMU10, QEMU10_AMDVI] {
            let mut ns = Namespace::new();
            ns.load_table(dsdt).unwrap();
            assert!(ns.problems.is_empty(), "{:?}", ns.problems);
            for path in [
                "\\PICF",
                "\\_PIC",
                "\\_SB.PCI0.PRTA",
                "\\_SB.GSIH._CRS",
                "\\_SB.PRQA",
            ] {
                assert!(ns.get(&AmlPath::parse(path).unwrap()).is_some(), "{path}");
            }
        }
    }

    #[test]
    fn pic_mode_is_what_you_get_without_pic() {
        // The same DSDT with \_PIC renamed: PICF stays 0 and _PRT returns PRTP, whose
        // LNKx links read PIRQ registers (field units) that cannot be evaluated.
        let mut t = qemu_q35_dsdt();
        let at = t.windows(4).position(|w| w == b"_PIC").unwrap();
        t[at..at + 4].copy_from_slice(b"XPIC");
        reheader(&mut t);
        let r = PciIntxRouting::from_dsdt(&t).unwrap();
        assert!(!r.pic_called && r.entries().is_empty());
        assert_eq!(r.rejected.len(), 128);
        let msg = r.rejected[0].1.to_string();
        assert!(
            msg.starts_with("link \\_SB.LNKE: \\_SB.LNKE._CRS: \\_SB.PRQE is a field unit"),
            "{msg}"
        );
        assert!(
            r.summary()
                .to_string()
                .contains("(no _PIC method): 0 entries, 128 unusable")
        );
    }

    /// A DSDT with one host bridge whose _PRT is `prt_body` and link device LNK0.
    fn bridge_dsdt(prt_body: &[Aml], extra: &[Aml]) -> Aml {
        dsdt(&[scope(
            "\\_SB",
            &[
                device(
                    "PCI0",
                    &[name("_HID", string("PNP0A08")), method("_PRT", 0, prt_body)],
                ),
                cat(extra),
            ],
        )])
    }

    fn prt_entry(slot: u64, pin: u64, source: Aml, index: u64) -> Aml {
        package(&[int((slot << 16) | 0xFFFF), int(pin), source, int(index)])
    }

    #[test]
    fn hardwired_gsis_small_irq_links_and_bad_entries() {
        let t = bridge_dsdt(
            &[ret(package(&[
                prt_entry(1, 0, int(0), 40), // hardwired GSI 40
                prt_entry(2, 1, path("LNK0"), 0),
                prt_entry(1, 0, int(0), 41), // duplicate of the first
                int(5),
                prt_entry(2, 4, int(0), 1),
                package(&[int(0x0003_0000), int(0), int(0), int(1)]),
                prt_entry(3, 0, path("NONE"), 0),
                prt_entry(3, 1, path("LNK0"), 1),
                prt_entry(3, 2, path("LNK2"), 0),
                prt_entry(3, 3, int(0), 0x1_0000_0000),
                prt_entry(4, 0, path("LNK3"), 0),
            ]))],
            &[
                // IRQ (Level, ActiveLow, Shared) {11}
                device(
                    "LNK0",
                    &[name("_CRS", resource_template(&[irq(true, true, &[11])]))],
                ),
                device(
                    "LNK2",
                    &[method(
                        "_CRS",
                        0,
                        &[ret(resource_template(&[irq(true, true, &[5, 11])]))],
                    )],
                ),
                device("LNK3", &[]),
            ],
        );
        // A revision-2 table, so the 33-bit GSI above is not truncated.
        let mut t = t;
        t[8] = 2;
        reheader(&mut t);
        let r = PciIntxRouting::from_dsdt(&t).unwrap();
        assert_eq!(
            r.root_route(1, IntxPin::A),
            Some(GsiRoute {
                gsi: 40,
                level_triggered: true,
                active_low: true
            })
        );
        assert_eq!(
            r.root_route(2, IntxPin::B),
            Some(GsiRoute {
                gsi: 11,
                level_triggered: true,
                active_low: true
            })
        );
        let problems: Vec<(usize, String)> = r
            .rejected
            .iter()
            .map(|(i, p)| (*i, p.to_string()))
            .collect();
        assert_eq!(
            problems,
            [
                (2, "duplicate of an earlier entry".to_string()),
                (3, "not Package {address, pin, source, index}".to_string()),
                (4, "pin 4 is not 0-3".to_string()),
                (
                    5,
                    "address 0x30000 is not (slot << 16) | 0xFFFF".to_string()
                ),
                (6, "link device NONE not found".to_string()),
                (
                    7,
                    "source index 1 for a link device (must be 0)".to_string()
                ),
                (
                    8,
                    "link \\_SB.LNK2: _CRS lists 2 interrupts, expected exactly 1".to_string()
                ),
                (9, "GSI 0x100000000 does not fit 32 bits".to_string()),
                (10, "link \\_SB.LNK3: has no _CRS".to_string()),
            ]
        );
        let text = r.to_string();
        assert!(
            text.starts_with("slot 01: INTA GSI 40 (level, active-low)\nslot 02: INTB GSI 11"),
            "{text}"
        );
    }

    #[test]
    fn resource_templates_are_decoded_with_every_length_checked() {
        let route = |level, low, gsi| {
            Ok(GsiRoute {
                gsi,
                level_triggered: level,
                active_low: low,
            })
        };
        let rt = |d: &[Aml]| cat(&[cat(d), vec![0x79, 0]]);
        assert_eq!(
            interrupt_resource(&rt(&[ext_irq(true, false, true, &[23])])),
            route(true, false, 23)
        );
        assert_eq!(
            interrupt_resource(&rt(&[ext_irq(false, true, false, &[9])])),
            route(false, true, 9)
        );
        // The 2-byte IRQ form has no flags: ISA edge, active-high.
        assert_eq!(
            interrupt_resource(&rt(&[vec![0x22, 0x00, 0x02]])),
            route(false, false, 9)
        );
        // An I/O port descriptor first is skipped.
        let io = vec![0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01];
        assert_eq!(
            interrupt_resource(&rt(&[io, irq(false, false, &[1])])),
            route(false, false, 1)
        );
        assert_eq!(interrupt_resource(&rt(&[])), Err(LinkProblem::NoInterrupt));
        assert_eq!(
            interrupt_resource(&rt(&[ext_irq(true, false, true, &[])])),
            Err(LinkProblem::InterruptCount { count: 0 })
        );
        let whole = ext_irq(true, false, true, &[23]);
        for n in 0..whole.len() {
            assert!(interrupt_resource(&whole[..n]).is_err(), "cut at {n}");
        }
        // A descriptor that says it holds one interrupt but is too short for it.
        assert_eq!(
            interrupt_resource(&[0x89, 0x02, 0x00, 0x01, 0x01]),
            Err(LinkProblem::Truncated { offset: 0 })
        );
    }

    #[test]
    fn errors_when_there_is_no_prt() {
        let no_bridge = dsdt(&[scope(
            "\\_SB",
            &[device("PCI0", &[name("_HID", eisaid("PNP0C0F"))])],
        )]);
        assert_eq!(
            PciIntxRouting::from_dsdt(&no_bridge),
            Err(PrtError::NoHostBridge)
        );
        // A host bridge found by _CID alone, but without a _PRT.
        let no_prt = dsdt(&[scope(
            "\\_SB",
            &[device("PCI0", &[name("_CID", eisaid("PNP0A03"))])],
        )]);
        let e = PciIntxRouting::from_dsdt(&no_prt).unwrap_err();
        assert_eq!(e.to_string(), "host bridge \\_SB.PCI0 has no _PRT");
        // A _PRT returning an integer, or nothing.
        let t = bridge_dsdt(&[ret(int(3))], &[]);
        assert_eq!(
            PciIntxRouting::from_dsdt(&t).unwrap_err().to_string(),
            "\\_SB.PCI0._PRT returned Integer, not a package"
        );
        let t = bridge_dsdt(&[], &[]);
        assert!(matches!(
            PciIntxRouting::from_dsdt(&t),
            Err(PrtError::NotAPackage {
                found: "nothing",
                ..
            })
        ));
        // Not a DSDT at all.
        let mut t = bridge_dsdt(&[], &[]);
        t[0..4].copy_from_slice(b"FACP");
        assert!(matches!(
            PciIntxRouting::from_dsdt(&t),
            Err(PrtError::Table(_))
        ));
    }

    #[test]
    fn hostile_prt_methods_end_in_named_errors() {
        let kind_of = |body: &[Aml]| match PciIntxRouting::from_dsdt(&bridge_dsdt(body, &[])) {
            Err(PrtError::Eval(e)) => {
                assert_eq!(e.context.as_ref().unwrap().to_string(), "\\_SB.PCI0._PRT");
                e.kind
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(kind_of(&[while_(int(1), &[])]), ErrorKind::TooManySteps);
        assert_eq!(kind_of(&[ret(path("_PRT"))]), ErrorKind::TooDeep);
        assert_eq!(
            kind_of(&[ret(var_package(int(0xFFFF_FFFF), &[]))]),
            ErrorKind::TooLarge {
                what: "package",
                size: 0xFFFF_FFFF
            }
        );
        // Notify (\_SB.PCI0, 0)
        assert_eq!(
            kind_of(&[cat(&[vec![0x86], path("\\_SB.PCI0"), int(0)])]),
            ErrorKind::Unsupported { opcode: 0x86 }
        );
        // A _PIC that does something unsupported stops everything.
        let t = dsdt(&[method("_PIC", 1, &[cat(&[vec![0x5B, 0x22], int(10)])])]);
        let e = PciIntxRouting::from_dsdt(&t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "\\_PIC(1) failed: \\_PIC: unsupported opcode 0x5b22 (Sleep) at offset 0x2b"
        );
    }

    /// Read the routing from `tables` with one interpreter; also the steps it ran.
    fn read_counting(tables: &[&[u8]]) -> (Result<PciIntxRouting, PrtError>, u32) {
        let mut ns = Namespace::new();
        for t in tables {
            ns.load_table(t).unwrap();
        }
        let mut interp = Interpreter::new(&ns);
        let r = PciIntxRouting::from_namespace(&ns, &mut interp);
        (r, interp.steps())
    }

    /// `count` devices whose `_HID` method never returns, each with a `_PRT` or not.
    fn spinning_devices(count: usize, with_prt: bool) -> Aml {
        let devices: Vec<Aml> = (0..count)
            .map(|i| {
                let mut body = vec![method("_HID", 0, &[while_(int(1), &[])])];
                if with_prt {
                    body.push(method("_PRT", 0, &[ret(package(&[]))]));
                }
                device(&format!("D{i:03}"), &body)
            })
            .collect();
        cat(&devices)
    }

    #[test]
    fn one_step_budget_covers_the_whole_reading() {
        use crate::acpi::aml::MAX_STEPS;
        // QEMU's whole reading (\_PIC, the ids, _PRT, eight _CRS) is far inside it.
        for dsdt in [QEMU72, QEMU10, QEMU10_AMDVI] {
            let (r, steps) = read_counting(&[dsdt]);
            assert_qemu_q35_routing(&r.unwrap());
            assert!(steps < MAX_STEPS / 10, "{steps}");
        }
        let bridge = device(
            "PCI0",
            &[
                name("_HID", string("PNP0A08")),
                method("_PRT", 0, &[ret(package(&[prt_entry(1, 0, int(0), 40)]))]),
            ],
        );
        // 50 devices whose _HID spins, defined before the host bridge: without a _PRT
        // they cannot be the bridge wanted, so their ids are not even evaluated.
        let t = dsdt(&[scope(
            "\\_SB",
            &[spinning_devices(50, false), bridge.clone()],
        )]);
        let (r, steps) = read_counting(&[&t]);
        assert_eq!(
            r.unwrap().root_route(1, IntxPin::A).map(|g| g.gsi),
            Some(40)
        );
        assert!(steps < 100, "{steps}");
        // With a _PRT each, their ids must be evaluated: all share one budget, so the
        // first one ends the reading, at MAX_STEPS steps and not 50 times that.
        let t = dsdt(&[scope("\\_SB", &[spinning_devices(50, true), bridge])]);
        let (r, steps) = read_counting(&[&t]);
        match r {
            Err(PrtError::Eval(e)) => {
                assert_eq!(e.kind, ErrorKind::TooManySteps);
                assert_eq!(e.context.unwrap().to_string(), "\\_SB.D000._HID");
            }
            other => panic!("{other:?}"),
        }
        assert!(steps <= MAX_STEPS, "{steps}");
        // No host bridge at all: telling "no bridge" from "a bridge without _PRT" may
        // evaluate every id, and still within the one budget.
        let t = dsdt(&[scope("\\_SB", &[spinning_devices(50, false)])]);
        let (r, steps) = read_counting(&[&t]);
        assert!(
            matches!(&r, Err(PrtError::Eval(e)) if e.kind == ErrorKind::TooManySteps),
            "{r:?}"
        );
        assert!(steps <= MAX_STEPS, "{steps}");
    }

    #[test]
    fn ssdts_add_to_the_namespace() {
        // The DSDT names a link that only an SSDT defines.
        let dsdt_part = bridge_dsdt(
            &[ret(package(&[prt_entry(6, 0, path("\\_SB.LNKS"), 0)]))],
            &[],
        );
        let crs = resource_template(&[ext_irq(true, true, true, &[30])]);
        let ssdt = crate::acpi::testutil::table(
            b"SSDT",
            1,
            &scope("\\_SB", &[device("LNKS", &[name("_CRS", crs)])]),
        );
        let r = PciIntxRouting::from_tables(&[&dsdt_part, &ssdt]).unwrap();
        assert_eq!(r.root_route(6, IntxPin::A).map(|g| g.gsi), Some(30));
        let r = PciIntxRouting::from_dsdt(&dsdt_part).unwrap();
        assert_eq!(r.rejected.len(), 1);
    }

    #[test]
    fn pins_and_the_bridge_swizzle() {
        use IntxPin::*;
        assert_eq!(IntxPin::from_config(0), None);
        assert_eq!(IntxPin::from_config(1), Some(A));
        assert_eq!(IntxPin::from_config(4), Some(D));
        assert_eq!(IntxPin::from_config(5), None);
        assert_eq!(swizzle(0, B), B);
        assert_eq!(swizzle(1, A), B);
        assert_eq!(swizzle(2, D), B);
        assert_eq!(swizzle(255, D), C);
        assert_eq!(C.to_string(), "INTC");

        let r = PciIntxRouting::from_dsdt(QEMU10).unwrap();
        // A device in slot 0 behind a root port in slot 3: pin unchanged, so INTA → 23.
        assert_eq!(r.route_through_bridges(&[3, 0], A), level_high(23));
        // Slot 2 behind a bridge in slot 0x1e (QEMU's pcie-pci-bridge spot): INTA
        // becomes the bridge's INTC → 20 + 2 = 22.
        assert_eq!(r.route_through_bridges(&[0x1E, 2], A), level_high(22));
        // Two levels: slot 1 INTB → INTC at the lower bridge in slot 1 → INTD at the top
        // bridge, in root slot 4 → GSI 20 + (4 + 3) mod 4 = 23.
        assert_eq!(r.route_through_bridges(&[4, 1, 1], B), level_high(23));
        assert_eq!(r.route_through_bridges(&[5], A), r.root_route(5, A));
        assert_eq!(r.route_through_bridges(&[], A), None);
        assert_eq!(r.root_route(32, A), None);
    }

    #[test]
    fn display_has_one_line_per_slot() {
        let r = PciIntxRouting::from_dsdt(QEMU72).unwrap();
        let text = r.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 32);
        assert_eq!(
            lines[3],
            "slot 03: INTA GSI 23, INTB GSI 20, INTC GSI 21, INTD GSI 22 (level, active-high)"
        );
        assert_eq!(
            lines[31],
            "slot 1f: INTA GSI 16, INTB GSI 17, INTC GSI 18, INTD GSI 19 (level, active-high)"
        );
    }

    #[test]
    fn eisa_ids_compress_as_asl_does() {
        assert_eq!(eisa_id(b"PNP0A03"), 0x030A_D041);
        assert_eq!(eisa_id(b"PNP0A08"), 0x080A_D041);
    }

    /// The AML of `table` cut to `len` bytes, with a header that matches.
    fn cut(table: &[u8], len: usize) -> Aml {
        let mut t = table[..len].to_vec();
        reheader(&mut t);
        t
    }

    #[test]
    fn every_truncation_of_a_real_dsdt_is_handled() {
        for len in 36..QEMU10.len() {
            let _ = PciIntxRouting::from_dsdt(&cut(QEMU10, len));
            // And with the original, now lying, length field.
            assert!(matches!(
                PciIntxRouting::from_dsdt(&QEMU10[..len]),
                Err(PrtError::Table(_))
            ));
        }
        let small = qemu_q35_dsdt();
        for len in 36..small.len() {
            let _ = PciIntxRouting::from_dsdt(&cut(&small, len));
        }
    }

    #[test]
    fn lying_pkg_lengths_in_a_real_dsdt_are_handled() {
        // Every byte that could be a PkgLength lead byte, set to each interesting value.
        let mut t = QEMU72.to_vec();
        for at in 36..t.len() {
            if !matches!(
                t[at - 1],
                op::SCOPE | op::METHOD | op::PACKAGE | op::BUFFER | op::IF | 0x82
            ) {
                continue;
            }
            let original = t[at];
            for lie in [0x00, 0x01, 0x3F, 0x7F, 0xBF, 0xFF] {
                t[at] = lie;
                reheader(&mut t);
                let _ = PciIntxRouting::from_dsdt(&t);
            }
            t[at] = original;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_aml_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let t = crate::acpi::testutil::table(b"DSDT", 2, &body);
            let _ = PciIntxRouting::from_dsdt(&t);
        }

        #[test]
        fn mutated_real_dsdt_never_panics(
            edits in proptest::collection::vec((36usize..8283, any::<u8>()), 1..8)
        ) {
            let mut t = QEMU72.to_vec();
            for (at, b) in edits {
                t[at] = b;
            }
            reheader(&mut t);
            let _ = PciIntxRouting::from_dsdt(&t);
        }

        #[test]
        fn random_aml_after_a_valid_prefix_never_panics(
            tail in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            let mut t = qemu_q35_dsdt();
            t.extend(tail);
            reheader(&mut t);
            let _ = PciIntxRouting::from_dsdt(&t);
        }
    }
}
