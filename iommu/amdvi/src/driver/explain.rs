//! [`Iommu::explain`](sluice_iommu::Iommu::explain) for AMD-Vi: what a unit reads for one
//! DMA request, one line per structure it reads.
//!
//! Host translation (AMD I/O Virtualization Technology (IOMMU) Specification §2.2): the
//! DeviceID (requester id) indexes the device table → the 256-bit device table entry
//! (DTE) says whether the unit translates (V, TV), how deep the table is (Mode), where it
//! is (Page Table Root Pointer), what the device may do at all (IR, IW) and which tag its
//! cached translations carry (DomainID). Then 9 IOVA bits per level index the I/O page
//! tables: a PDE (NextLevel = the next table's level) leads down, a PTE (NextLevel = 0,
//! or 7 with the page size spelled in the address bits) ends the walk. The permissions
//! are the AND of the DTE's IR/IW and every entry's on the walk.
//!
//! Everything printed is read from memory as the unit reads it. The driver's bookkeeping
//! only annotates (which domain a DeviceID is attached to, the unit's blocking root) and
//! decides which root pointers are safe to follow: a pointer the driver never wrote is
//! named, not read. What the unit has cached is not shown: edits not yet committed may
//! not be what it uses.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use sluice_iommu::domains::Domain;
use sluice_iommu::hw::{DmaMemory, RegisterBlock};
use sluice_iommu::{Access, DeviceDma, DomainHandle};

use super::dte::{
    self, DeviceTableEntry, NEXT_LEVEL_SHIFT, PTE_ADDRESS, PTE_PRESENT, contiguous_page_size,
    entry_access,
};
use super::{AmdViIommu, Unit};
use crate::pagetable::AmdV1;

/// DeviceIDs explained per call (a device has one or two; a bound keeps the output
/// bounded whatever the caller passes).
pub const MAX_REQUESTER_IDS: usize = 8;

/// Deepest table a DTE's Mode can name (6 levels).
const MAX_LEVELS: u8 = 6;

impl<R: RegisterBlock, M: DmaMemory> AmdViIommu<R, M> {
    /// See [`sluice_iommu::Iommu::explain`] and the module docs.
    pub(super) fn explain_dma(
        &self,
        handle: DomainHandle,
        device: &DeviceDma,
        iova: u64,
    ) -> Vec<String> {
        let Ok(domain) = self.domains.get(handle) else {
            return vec![format!(
                "AMD-Vi: no domain {} (never created, or destroyed): nothing to explain",
                handle.0
            )];
        };
        let Some(unit) = self.unit(device.unit) else {
            return vec![format!(
                "AMD-Vi: {} is said to be behind unit {}, but this driver runs {} unit(s) \
                 (ivhd0..ivhd{}): nothing to explain",
                device.device,
                device.unit.0,
                self.units.len(),
                self.units.len().saturating_sub(1)
            )];
        };
        let name = format!("ivhd{}", unit.id.0);
        let did = match domain.dids.get(&unit.id) {
            Some(did) => format!("DomainID {did:#x} on {name}"),
            None => format!("no DomainID on {name} yet: none of its devices is attached there"),
        };
        let table = &domain.table;
        let mut lines = vec![format!(
            "{name} (unit {}, segment {:04x}): DMA by {} at IOVA {iova:#x} in domain {} ({did}); \
             domain table: {}-level AMD v1 host page table (Mode {}), {}-bit IOVA, root {:#x}; \
             unit: device table {:#x} (65536 DTEs of 256 bits), blocking root {:#x}{}",
            unit.id.0,
            unit.segment,
            device.device,
            handle.0,
            table.levels(),
            table.levels(),
            self.format.address_width,
            table.root(),
            unit.device_table,
            unit.blocking_root,
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
        // Own id first, then the device's aliases, then what the IVRS aliases them to
        // (the ids attach writes).
        let mut rids: Vec<(u16, String)> = Vec::new();
        for (index, &rid) in device.requester_ids.iter().enumerate() {
            if !rids.iter().any(|(known, _)| *known == rid) {
                let label = if index == 0 { "own" } else { "DMA alias" };
                rids.push((rid, String::from(label)));
            }
        }
        for &rid in &device.requester_ids {
            if let Some(alias) = unit.ivrs_alias(rid)
                && !rids.iter().any(|(known, _)| *known == alias)
            {
                rids.push((alias, format!("IVRS alias of {}", rid_name(rid))));
            }
        }
        if rids.is_empty() {
            lines.push(format!(
                "{name}: {} has no DeviceID: its DMA reaches no table",
                device.device
            ));
        }
        for (rid, label) in rids.iter().take(MAX_REQUESTER_IDS) {
            self.explain_requester(unit, &name, handle, domain, *rid, label, iova, &mut lines);
        }
        if rids.len() > MAX_REQUESTER_IDS {
            lines.push(format!(
                "{name}: {} more DeviceID(s) of {} not shown",
                rids.len() - MAX_REQUESTER_IDS,
                device.device
            ));
        }
        lines
    }

    /// Device table entry and page-table walk for one DeviceID (at most 11 lines).
    #[allow(clippy::too_many_arguments)]
    fn explain_requester(
        &self,
        unit: &Unit<R>,
        name: &str,
        handle: DomainHandle,
        domain: &Domain<AmdV1>,
        rid: u16,
        label: &str,
        iova: u64,
        out: &mut Vec<String>,
    ) {
        let mem: &dyn DmaMemory = &self.mem;
        let p = format!("{name} DeviceID {}", rid_name(rid));

        // The device table entry.
        let at = unit.device_table + u64::from(rid) * dte::DTE_BYTES;
        let entry = DeviceTableEntry::read(mem, unit.device_table, rid);
        let [q0, q1, q2, q3] = entry.0;
        out.push(format!(
            "{p} ({label}): DTE [{rid:#06x}] at {at:#x} = 0x{q3:016x}_{q2:016x}_{q1:016x}_{q0:016x} \
             (bits 255:0)"
        ));
        let mode = entry.mode();
        let mode_meaning = match mode {
            0 => String::from("translation disabled"),
            7 => String::from("reserved"),
            levels => format!("{levels}-level, {}-bit", width_of(levels)),
        };
        let root = entry.table_root();
        let access = entry.access();
        let blocking = if root == unit.blocking_root {
            " (the unit's blocking root: an empty table)"
        } else {
            ""
        };
        out.push(format!(
            "{p}: DTE V={} TV={} Mode={mode} ({mode_meaning}) Page Table Root Pointer={root:#x}{blocking} \
             IR={} IW={} DomainID={:#x} SysMgt={}",
            u8::from(entry.valid()),
            u8::from(entry.translation_valid()),
            u8::from(access.contains(Access::READ)),
            u8::from(access.contains(Access::WRITE)),
            entry.domain_id(),
            entry.sys_mgt()
        ));
        if !entry.valid() {
            out.push(format!(
                "{p}: V=0: the unit does not translate this DeviceID: DMA at IOVA {iova:#x} → \
                 host-physical {iova:#x} unchecked"
            ));
            return;
        }
        if !entry.translation_valid() {
            out.push(format!(
                "{p}: TV=0: the DTE carries no translation information: DMA here is aborted"
            ));
            return;
        }
        match mode {
            0 => {
                out.push(format!(
                    "{p}: Mode=0: no page table: DMA at IOVA {iova:#x} → host-physical {iova:#x} \
                     untranslated; {}",
                    access_text(access, "the DTE", "the DTE")
                ));
                return;
            }
            7 => {
                out.push(format!(
                    "{p}: Mode=7 is reserved: DMA here is refused (ILLEGAL_DEV_TABLE_ENTRY event)"
                ));
                return;
            }
            _ => {}
        }

        // Whose entry is it?
        let routed = self.routes.domain_of(unit.id, rid);
        if routed != Some(handle) {
            let whose = match routed {
                Some(other) => format!("attached to domain {}", other.0),
                None => String::from("attached to no domain: blocked"),
            };
            out.push(format!(
                "{p}: note: this DeviceID is not attached to domain {} ({whose}); below is what \
                 the unit does with the entry it finds",
                handle.0
            ));
        }

        let width = width_of(mode);
        if width < 64 && iova >> width != 0 {
            out.push(format!(
                "{p}: IOVA {iova:#x} has bits above bit {} (a Mode-{mode} table translates {width} \
                 bits): DMA here faults (IO_PAGE_FAULT event)",
                width - 1
            ));
            return;
        }
        let routed_root = routed.and_then(|other| self.domains.table_root(other));
        if root != domain.table.root() && root != unit.blocking_root && Some(root) != routed_root {
            out.push(format!(
                "{p}: Page Table Root Pointer {root:#x} is no table of domain {}, of the domain \
                 this DeviceID is attached to, or the blocking root: not followed",
                handle.0
            ));
            return;
        }

        // The page-table walk.
        let mut table = root;
        let mut level = mode;
        let mut rights = access;
        for _ in 0..MAX_LEVELS {
            let shift = 12 + 9 * u32::from(level - 1);
            let index = (iova >> shift) & 0x1ff;
            let at = table + index * 8;
            let raw = mem.read_u64(at);
            let next = ((raw >> NEXT_LEVEL_SHIFT) & 7) as u8;
            let present = raw & PTE_PRESENT != 0;
            let kind = if !present {
                "entry"
            } else if next == 0 || next == 7 {
                "PTE"
            } else {
                "PDE"
            };
            let entry_rights = entry_access(raw);
            let head = format!(
                "{p}: level {level} {kind}: table {table:#x} [index {index:#x} = IOVA bits {}:{shift}] \
                 at {at:#x} = {raw:#018x}: PR={} NextLevel={next} IR={} IW={}",
                (shift + 8).min(63),
                u8::from(present),
                u8::from(entry_rights.contains(Access::READ)),
                u8::from(entry_rights.contains(Access::WRITE)),
            );
            if !present {
                out.push(format!("{head} → not present"));
                let blocked = if table == unit.blocking_root {
                    " (the blocking root maps nothing)"
                } else {
                    ""
                };
                out.push(format!(
                    "{p}: not present at level {level}{blocked}: DMA here faults \
                     (IO_PAGE_FAULT event, PR=0)"
                ));
                return;
            }
            rights &= entry_rights;
            let page_size = match next {
                0 => Some(1u64 << shift),
                7 => Some(contiguous_page_size(raw)),
                _ => None,
            };
            if let Some(page_size) = page_size {
                let base = raw & PTE_ADDRESS & !(page_size - 1);
                let how = if next == 7 {
                    " (NextLevel 7: size from the address bits)"
                } else {
                    ""
                };
                out.push(format!(
                    "{head} → leaf: {} page at {base:#x}{how}",
                    size_name(page_size)
                ));
                let offset = iova & (page_size - 1);
                out.push(format!(
                    "{p}: → host-physical {:#x} ({} page {base:#x} + offset {offset:#x}) in \
                     DomainID {:#x}; {}",
                    base | offset,
                    size_name(page_size),
                    entry.domain_id(),
                    access_text(
                        rights,
                        "the DTE and every entry walked",
                        "the DTE or an entry walked",
                    )
                ));
                return;
            }
            if next >= level {
                out.push(format!("{head} → invalid"));
                out.push(format!(
                    "{p}: NextLevel {next} is not below level {level}: DMA here faults \
                     (IO_PAGE_FAULT event)"
                ));
                return;
            }
            let child = raw & PTE_ADDRESS;
            let skipped = if next + 1 < level {
                format!(" (skips level(s) {}..={})", next + 1, level - 1)
            } else {
                String::new()
            };
            out.push(format!(
                "{head} → level {next} table at {child:#x}{skipped}"
            ));
            // Skipped levels: their IOVA bits must be zero.
            let low = 12 + 9 * u32::from(next);
            let skipped_bits = (iova >> low) & ((1u64 << (shift - low)) - 1);
            if skipped_bits != 0 {
                out.push(format!(
                    "{p}: IOVA bits {}:{low} of the skipped levels are not zero: DMA here faults \
                     (IO_PAGE_FAULT event)",
                    shift - 1
                ));
                return;
            }
            if child == 0 {
                out.push(format!(
                    "{p}: the PDE points at physical 0, which is no table this driver wrote: \
                     not followed"
                ));
                return;
            }
            table = child;
            level = next;
        }
    }
}

/// IOVA bits a `levels`-deep table translates (64 from 6 levels on).
fn width_of(levels: u8) -> u32 {
    (12 + 9 * u32::from(levels)).min(64)
}

/// `bus:dev.fn` of a DeviceID.
fn rid_name(rid: u16) -> String {
    format!("{:02x}:{:02x}.{:x}", rid >> 8, (rid >> 3) & 0x1f, rid & 7)
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

/// What `access` lets a DMA do: the AND of IR/IW over `every` (`some` names where a
/// missing bit came from).
fn access_text(access: Access, every: &str, some: &str) -> String {
    let fault = "IO_PAGE_FAULT event, PE=1";
    match (
        access.contains(Access::READ),
        access.contains(Access::WRITE),
    ) {
        (true, true) => format!("reads and writes allowed (IR=1 IW=1 in {every})"),
        (true, false) => format!("reads allowed; writes fault ({fault}: IW=0 in {some})"),
        (false, true) => format!("writes allowed; reads fault ({fault}: IR=0 in {some})"),
        (false, false) => format!("reads and writes fault ({fault}: IR=0 IW=0 in {some})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(rid_name(0x0010), "00:02.0");
        assert_eq!(size_name(8 << 10), "8 KiB");
        assert_eq!(size_name(2 << 20), "2 MiB");
        assert_eq!(size_name(1 << 30), "1 GiB");
        assert_eq!(width_of(4), 48);
        assert_eq!(width_of(6), 64);
        assert!(access_text(Access::empty(), "x", "y").contains("PE=1: IR=0 IW=0 in y"));
    }
}
