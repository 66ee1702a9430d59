//! [`Iommu::explain`](sluice_iommu::Iommu::explain) for VT-d: what a unit reads for one
//! DMA request, one line per structure it reads.
//!
//! Legacy-mode translation (VT-d specification ch. 3.4–3.7 and 9.1–9.3, 9.8): the
//! requester id's bus indexes the root table (RTADDR) → the root entry's CTP names the
//! bus's context table; the devfn indexes that → the context entry gives the domain id
//! (DID), the depth (AW) and the second-level table (SLPTPTR); then 9 IOVA bits per level
//! index SL-PML5E/SL-PML4E/SL-PDPE/SL-PDE/SL-PTE tables down to a leaf (an SL-PTE, or an
//! SL-PDPE/SL-PDE with PS = 1). The permissions are the AND of R and W along the walk.
//!
//! Everything printed is read from memory as the unit reads it. The driver's bookkeeping
//! only annotates (which domain a requester id is attached to) and decides which table
//! pointers are safe to follow: a pointer the driver never wrote is named, not read (the
//! kernel's DMA memory refuses to read outside its identity map). What the unit has
//! cached is not shown: edits not yet committed may not be what it uses.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use sluice_iommu::domains::Domain;
use sluice_iommu::{DeviceDma, DomainHandle};

use super::entries::{ContextEntry, ENTRY_BYTES, RootEntry, translation_type};
use super::{Unit, VtdIommu};
use crate::hw::{DmaMemory, RegisterBlock};
use crate::pagetable::VtdSecondLevel;
use crate::regs::LargePages;

/// Requester ids explained per call (a device has one or two; a bound keeps the output
/// bounded whatever the caller passes).
pub const MAX_REQUESTER_IDS: usize = 8;

/// ADDR of root, context and second-level entries (bits 51:12).
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
const SL_READ: u64 = 1 << 0;
const SL_WRITE: u64 = 1 << 1;
const SL_PAGE_SIZE: u64 = 1 << 7;

impl<R: RegisterBlock, M: DmaMemory> VtdIommu<R, M> {
    /// See [`sluice_iommu::Iommu::explain`] and the module docs.
    pub(super) fn explain_dma(
        &self,
        handle: DomainHandle,
        device: &DeviceDma,
        iova: u64,
    ) -> Vec<String> {
        let Ok(domain) = self.domains.get(handle) else {
            return vec![format!(
                "VT-d: no domain {} (never created, or destroyed): nothing to explain",
                handle.0
            )];
        };
        let Some(unit) = self.units.iter().find(|u| u.id == device.unit) else {
            return vec![format!(
                "VT-d: {} is said to be behind unit {}, but this driver runs {} unit(s) \
                 (dmar0..dmar{}): nothing to explain",
                device.device,
                device.unit.0,
                self.units.len(),
                self.units.len().saturating_sub(1)
            )];
        };
        let name = format!("dmar{}", unit.id.0);
        let did = match domain.dids.get(&unit.id) {
            Some(did) => format!("DID {did:#x} on {name}"),
            None => format!("no DID on {name} yet: none of its devices is attached there"),
        };
        let table = &domain.table;
        let mut lines = vec![format!(
            "{name} (unit {}, segment {:04x}): DMA by {} at IOVA {iova:#x} in domain {} ({did}); \
             domain table: {}-level second-level, {}-bit IOVA, SLPTPTR {:#x}; unit: RTADDR {:#x}, \
             MGAW {}, superpages {}{}",
            unit.id.0,
            unit.segment,
            device.device,
            handle.0,
            table.levels(),
            self.format.address_width,
            table.root(),
            unit.root,
            unit.cap.mgaw,
            superpages(unit.cap.sllps),
            if unit.failure.is_some() {
                " (unit FAILED: it no longer confirms invalidations; what it caches is unknown)"
            } else {
                ""
            }
        )];
        if device.device.segment != unit.segment {
            lines.push(format!(
                "{name}: note: {} is on segment {:04x} but {name} translates segment {:04x}",
                device.device, device.device.segment, unit.segment
            ));
        }
        let mut rids: Vec<u16> = Vec::new();
        for &rid in &device.requester_ids {
            if !rids.contains(&rid) {
                rids.push(rid);
            }
        }
        if rids.is_empty() {
            lines.push(format!(
                "{name}: {} has no requester id: its DMA reaches no table",
                device.device
            ));
        }
        for (index, &rid) in rids.iter().take(MAX_REQUESTER_IDS).enumerate() {
            let label = if index == 0 { "own" } else { "DMA alias" };
            self.explain_requester(unit, &name, handle, domain, rid, label, iova, &mut lines);
        }
        if rids.len() > MAX_REQUESTER_IDS {
            lines.push(format!(
                "{name}: {} more requester id(s) of {} not shown",
                rids.len() - MAX_REQUESTER_IDS,
                device.device
            ));
        }
        lines
    }

    /// Root entry, context entry and second-level walk for one requester id (at most
    /// 10 lines).
    #[allow(clippy::too_many_arguments)]
    fn explain_requester(
        &self,
        unit: &Unit<R>,
        name: &str,
        handle: DomainHandle,
        domain: &Domain<VtdSecondLevel>,
        rid: u16,
        label: &str,
        iova: u64,
        out: &mut Vec<String>,
    ) {
        let mem: &dyn DmaMemory = &self.mem;
        let p = format!("{name} rid {}", rid_name(rid));
        let (bus, devfn) = ((rid >> 8) as u8, rid & 0xff);

        // Root entry.
        let root_at = unit.root + u64::from(bus) * ENTRY_BYTES;
        let root = RootEntry::read(mem, unit.root, bus);
        out.push(format!(
            "{p} ({label}): root entry [bus {bus:#04x}] at {root_at:#x} = {}: P={} CTP={:#x}",
            raw128(root.lo, root.hi),
            u8::from(root.present()),
            root.context_table()
        ));
        if !root.present() {
            out.push(format!(
                "{p}: root entry not present: DMA here faults (reason 0x1: root entry not \
                 present; no device on bus {bus:02x} was ever attached)"
            ));
            return;
        }
        let ctp = root.context_table();
        if unit.context_tables.get(&bus) != Some(&ctp) {
            out.push(format!(
                "{p}: CTP {ctp:#x} is not the context table this driver made for bus {bus:02x}: \
                 not followed (the unit would read its entry at {:#x})",
                ctp + u64::from(devfn) * ENTRY_BYTES
            ));
            return;
        }

        // Context entry.
        let ctx_at = ctp + u64::from(devfn) * ENTRY_BYTES;
        let ctx = ContextEntry {
            lo: mem.read_u64(ctx_at),
            hi: mem.read_u64(ctx_at + 8),
        };
        let levels = ctx.levels();
        let aw_meaning = if (3..=5).contains(&levels) {
            format!("{levels}-level, {}-bit", 12 + 9 * u32::from(levels))
        } else {
            String::from("reserved")
        };
        out.push(format!(
            "{p}: context entry [devfn {devfn:#04x}] at {ctx_at:#x} = {}: P={} FPD={} T={} ({}) \
             AW={} ({aw_meaning}) DID={:#x} SLPTPTR={:#x}",
            raw128(ctx.lo, ctx.hi),
            u8::from(ctx.present()),
            u8::from(ctx.fault_processing_disabled()),
            ctx.translation_type(),
            tt_meaning(ctx.translation_type()),
            ctx.address_width_code(),
            ctx.domain_id(),
            ctx.table()
        ));
        let unrecorded = if ctx.present() && ctx.fault_processing_disabled() {
            "; FPD=1: the unit does not record it"
        } else {
            ""
        };
        if !ctx.present() {
            out.push(format!(
                "{p}: context entry not present: DMA here faults (reason 0x2: context entry \
                 not present; the device is not attached to any domain)"
            ));
            return;
        }

        // Whose entry is it?
        let routed = self.routes.domain_of(unit.id, rid);
        if routed != Some(handle) {
            let whose = match routed {
                Some(other) => format!("attached to domain {}", other.0),
                None => String::from("attached to no domain"),
            };
            out.push(format!(
                "{p}: note: this requester id is not attached to domain {} ({whose}); below is \
                 what the unit does with the entry it finds",
                handle.0
            ));
        }

        // Translation type, depth, width.
        match ctx.translation_type() {
            translation_type::UNTRANSLATED_ONLY | translation_type::DEVICE_TLB => {}
            translation_type::PASS_THROUGH if unit.ecap.pt => {
                out.push(format!(
                    "{p}: T=2 (pass-through): no walk; DMA at IOVA {iova:#x} → host-physical \
                     {iova:#x} untranslated, reads and writes allowed"
                ));
                return;
            }
            tt => {
                out.push(format!(
                    "{p}: T={tt} is not valid on this unit (ECAP.PT={}): DMA here faults \
                     (reason 0x3: invalid context entry){unrecorded}",
                    u8::from(unit.ecap.pt)
                ));
                return;
            }
        }
        if !(3..=5).contains(&levels) || !unit.cap.supports_levels(levels) {
            out.push(format!(
                "{p}: AW={} ({levels} levels) is not a depth CAP.SAGAW offers: DMA here faults \
                 (reason 0x3: invalid context entry){unrecorded}",
                ctx.address_width_code()
            ));
            return;
        }
        let width = (12 + 9 * u32::from(levels)).min(u32::from(unit.cap.mgaw));
        if width < 64 && iova >> width != 0 {
            out.push(format!(
                "{p}: IOVA {iova:#x} has bits above bit {} (the smaller of AW's {} bits and \
                 MGAW {}): DMA here faults (reason 0x4: address beyond the address \
                 width){unrecorded}",
                width - 1,
                12 + 9 * u32::from(levels),
                unit.cap.mgaw
            ));
            return;
        }
        let slptptr = ctx.table();
        let routed_root = routed.and_then(|other| self.domains.table_root(other));
        if slptptr != domain.table.root() && Some(slptptr) != routed_root {
            out.push(format!(
                "{p}: SLPTPTR {slptptr:#x} is no table of domain {} or of the domain this \
                 requester id is attached to: not followed",
                handle.0
            ));
            return;
        }

        // The second-level walk.
        let mut table = slptptr;
        let mut rights = SL_READ | SL_WRITE;
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * u32::from(level - 1);
            let index = (iova >> shift) & 0x1ff;
            let at = table + index * 8;
            let entry = mem.read_u64(at);
            let head = format!(
                "{p}: level {level} {}: table {table:#x} [index {index:#x} = IOVA bits {}:{shift}] \
                 at {at:#x} = {entry:#018x}: R={} W={}",
                sl_name(level),
                shift + 8,
                entry & SL_READ,
                (entry & SL_WRITE) >> 1
            );
            if entry & (SL_READ | SL_WRITE) == 0 {
                out.push(format!("{head} → not present"));
                out.push(format!(
                    "{p}: not present at level {level}: DMA here faults (reason 0x6 for a read, \
                     0x5 for a write: the {} has neither R nor W){unrecorded}",
                    sl_name(level)
                ));
                return;
            }
            rights &= entry;
            let page_size = 1u64 << shift;
            let ps = entry & SL_PAGE_SIZE != 0;
            if level > 1 && ps {
                let offered = match level {
                    2 => unit.cap.sllps.contains(LargePages::SIZE_2M),
                    3 => unit.cap.sllps.contains(LargePages::SIZE_1G),
                    _ => false,
                };
                if !offered {
                    out.push(format!("{head} PS=1 → reserved here"));
                    out.push(format!(
                        "{p}: PS=1 in an {} where the unit has no {} pages (CAP.SLLPS): DMA here \
                         faults (reason 0xC: reserved bit set in a second-level entry){unrecorded}",
                        sl_name(level),
                        size_name(page_size)
                    ));
                    return;
                }
            }
            if level == 1 || ps {
                let base = entry & ADDRESS & !(page_size - 1);
                let ps_field = if level > 1 { " PS=1" } else { "" };
                out.push(format!(
                    "{head}{ps_field} → leaf: {} page at {base:#x}",
                    size_name(page_size)
                ));
                let offset = iova & (page_size - 1);
                out.push(format!(
                    "{p}: → host-physical {:#x} ({} page {base:#x} + offset {offset:#x}) in DID \
                     {:#x}; {}",
                    base | offset,
                    size_name(page_size),
                    ctx.domain_id(),
                    rights_text(rights)
                ));
                return;
            }
            let next = entry & ADDRESS;
            out.push(format!("{head} PS=0 → next table {next:#x}"));
            if next == 0 {
                out.push(format!(
                    "{p}: the {} points at physical 0, which is no table this driver wrote: not \
                     followed",
                    sl_name(level)
                ));
                return;
            }
            table = next;
        }
    }
}

/// `bus:dev.fn` of a requester id.
fn rid_name(rid: u16) -> String {
    format!("{:02x}:{:02x}.{:x}", rid >> 8, (rid >> 3) & 0x1f, rid & 7)
}

/// A 128-bit entry as the specification draws it: bits 127:64, then 63:0.
fn raw128(lo: u64, hi: u64) -> String {
    format!("0x{hi:016x}_{lo:016x}")
}

fn tt_meaning(tt: u8) -> &'static str {
    match tt {
        translation_type::UNTRANSLATED_ONLY => "untranslated requests only",
        translation_type::DEVICE_TLB => "untranslated, translated and ATS requests",
        translation_type::PASS_THROUGH => "pass-through",
        _ => "reserved",
    }
}

/// The specification's name of a second-level entry at `level`.
fn sl_name(level: u8) -> &'static str {
    match level {
        5 => "SL-PML5E",
        4 => "SL-PML4E",
        3 => "SL-PDPE",
        2 => "SL-PDE",
        _ => "SL-PTE",
    }
}

fn superpages(sllps: LargePages) -> String {
    let mut names = Vec::new();
    for (flag, name) in [(LargePages::SIZE_2M, "2M"), (LargePages::SIZE_1G, "1G")] {
        if sllps.contains(flag) {
            names.push(name);
        }
    }
    if names.is_empty() {
        String::from("none")
    } else {
        names.join("+")
    }
}

/// `4 KiB`, `2 MiB`, `1 GiB`, ...
fn size_name(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in UNITS {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// What R and W, ANDed along the walk, let a DMA do.
fn rights_text(rights: u64) -> &'static str {
    match (rights & SL_READ != 0, rights & SL_WRITE != 0) {
        (true, true) => "reads and writes allowed (R=1 W=1 at every level)",
        (true, false) => "reads allowed; writes fault (reason 0x5: no W on the walk)",
        (false, true) => "writes allowed; reads fault (reason 0x6: no R on the walk)",
        (false, false) => "nothing allowed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(rid_name(0x0018), "00:03.0");
        assert_eq!(rid_name(0x1ffa), "1f:1f.2");
        assert_eq!(size_name(4096), "4 KiB");
        assert_eq!(size_name(2 << 20), "2 MiB");
        assert_eq!(size_name(1 << 30), "1 GiB");
        assert_eq!(size_name(512 << 30), "512 GiB");
        assert_eq!(raw128(1, 2), "0x0000000000000002_0000000000000001");
        assert_eq!(
            superpages(LargePages::SIZE_2M | LargePages::SIZE_1G),
            "2M+1G"
        );
        assert_eq!(superpages(LargePages::empty()), "none");
        assert!(rights_text(SL_READ).starts_with("reads allowed"));
    }
}
