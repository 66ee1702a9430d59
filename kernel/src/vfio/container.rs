//! Containers: one IO address space per guest-visible container, made of one IOMMU
//! domain per remapping unit its groups span, all holding the same mappings.
//!
//! Why one domain per unit: a domain's tables may be shared by several units in some
//! drivers, but the page sizes and usable IOVA ranges are per unit, and Linux type1 also
//! keeps a domain per IOMMU. The container's mappings are the truth; every domain holds
//! exactly them (a domain created for a late-joining unit gets every mapping replayed
//! before its first device is attached, so no device ever sees a partial space).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::vec::Vec;

use sluice_abi::Errno;
use sluice_abi::vfio::{
    CAP_DMA_AVAIL, CAP_IOVA_RANGE, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE, DMA_MAPPINGS_MAX,
    DMA_UNMAP_FLAG_ALL, DmaAvailCap, DmaMap, DmaUnmap, IOMMU_INFO_CAPS, IOMMU_INFO_PGSIZES,
    IommuType1Info, IovaRangeCap, IovaRangeEntry, extension, min_size,
};
use sluice_iommu::{Access, DeviceDma, DomainHandle, Iommu, IommuError, IovaRange, UnitId};

use super::args::{out_len, read_args};
use super::errors::iommu_errno;
use super::handles::{ContainerId, Object};
use super::state::{Container, Vfio};
use super::{GuestId, GuestRam};

/// Version of the capabilities we emit (Linux's current version of both).
const CAP_VERSION: u16 = 1;

/// One DMA mapping of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub iova: u64,
    pub size: u64,
    /// The guest-physical address the guest gave (Linux: the process's vaddr).
    pub vaddr: u64,
    /// Where that is in host memory (guest RAM is one contiguous host run).
    pub hpa: u64,
    pub access: Access,
}

impl Mapping {
    /// One past the last IOVA (no overflow: checked when mapped).
    pub fn end(&self) -> u64 {
        self.iova.saturating_add(self.size)
    }
}

/// A container's type1v2 IOMMU model: its domains and its mappings.
#[derive(Default)]
pub(super) struct Model {
    pub domains: BTreeMap<UnitId, DomainHandle>,
    /// By IOVA; never overlapping.
    pub mappings: BTreeMap<u64, Mapping>,
    /// The sum of the mappings' sizes (the pinned-memory limit's count).
    pub pinned: u64,
}

impl Model {
    /// Page sizes every domain supports (0 without domains).
    fn page_sizes(&self, iommu: &dyn Iommu) -> Result<u64, IommuError> {
        let mut sizes: Option<u64> = None;
        for &domain in self.domains.values() {
            let s = iommu.page_sizes(domain)?;
            sizes = Some(sizes.map_or(s, |acc| acc & s));
        }
        Ok(sizes.unwrap_or(0))
    }

    /// The smallest page size every domain supports: the alignment of every address
    /// and size. `EINVAL` if the domains share none.
    fn min_page(&self, iommu: &dyn Iommu) -> Result<u64, Errno> {
        let sizes = self.page_sizes(iommu).map_err(iommu_errno)?;
        if sizes == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(1u64 << sizes.trailing_zeros())
    }

    /// IOVA ranges usable in every domain (sorted, disjoint; empty without domains).
    fn usable_ranges(&self, iommu: &dyn Iommu) -> Result<Vec<IovaRange>, IommuError> {
        let mut usable: Option<Vec<IovaRange>> = None;
        for &domain in self.domains.values() {
            let ranges = normalize(iommu.iova_ranges(domain)?);
            usable = Some(match usable {
                None => ranges,
                Some(acc) => intersect(&acc, &ranges),
            });
        }
        Ok(usable.unwrap_or_default())
    }

    /// The mapping that contains `iova`.
    pub fn covering(&self, iova: u64) -> Option<&Mapping> {
        self.mappings
            .range(..=iova)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| iova < m.end())
    }

    /// Whether any mapping overlaps `[iova, end)`.
    fn overlaps(&self, iova: u64, end: u64) -> bool {
        self.mappings
            .range(..end)
            .next_back()
            .is_some_and(|(_, m)| m.end() > iova)
    }
}

/// Sort ranges and merge the ones that overlap; drop empty (inverted) ones.
fn normalize(mut ranges: Vec<IovaRange>) -> Vec<IovaRange> {
    ranges.retain(|r| r.start <= r.last);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<IovaRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(prev) if r.start <= prev.last => prev.last = prev.last.max(r.last),
            _ => out.push(r),
        }
    }
    out
}

/// The intersection of two sorted, disjoint range lists.
fn intersect(a: &[IovaRange], b: &[IovaRange]) -> Vec<IovaRange> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        let start = x.start.max(y.start);
        let last = x.last.min(y.last);
        if start <= last {
            out.push(IovaRange { start, last });
        }
        if x.last < y.last {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// A new domain holding every mapping of `mappings`, committed. Nothing is left
/// behind on failure.
fn new_domain_with(
    iommu: &mut dyn Iommu,
    mappings: &BTreeMap<u64, Mapping>,
) -> Result<DomainHandle, IommuError> {
    let domain = iommu.create_domain()?;
    let mut result = Ok(());
    for m in mappings.values() {
        result = iommu.map(domain, m.iova, m.hpa, m.size, m.access);
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() && !mappings.is_empty() {
        result = iommu.commit(domain);
    }
    if let Err(e) = result {
        // No device was ever attached: freeing the tables needs no invalidation.
        if let Err(e2) = iommu.destroy_domain(domain) {
            log::error!(target: "vfio", "domain {} leaked: {e2}", domain.0);
        }
        return Err(e);
    }
    if !mappings.is_empty() {
        log::info!(target: "vfio", "domain {}: {} mappings replayed", domain.0, mappings.len());
    }
    Ok(domain)
}

/// Attach `devices` to `model`: first a domain (with every mapping replayed and
/// committed) for each unit the model has none on, then every device attached to its
/// unit's domain. On failure everything this did is undone (devices detached again,
/// new domains destroyed) and the model is as before.
pub(super) fn join(
    iommu: &mut dyn Iommu,
    model: &mut Model,
    devices: &[DeviceDma],
) -> Result<(), IommuError> {
    let mut created: Vec<UnitId> = Vec::new();
    let mut attached: Vec<(DomainHandle, &DeviceDma)> = Vec::new();
    let mut result = Ok(());
    for device in devices {
        if model.domains.contains_key(&device.unit) {
            continue;
        }
        match new_domain_with(iommu, &model.mappings) {
            Ok(domain) => {
                log::info!(target: "vfio", "domain {} created on unit {}", domain.0, device.unit.0);
                model.domains.insert(device.unit, domain);
                created.push(device.unit);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        for device in devices {
            let Some(&domain) = model.domains.get(&device.unit) else {
                result = Err(IommuError::UnknownDomain);
                break;
            };
            match iommu.attach(domain, device) {
                Ok(()) => attached.push((domain, device)),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    if let Err(e) = result {
        for &(domain, device) in attached.iter().rev() {
            if let Err(e2) = iommu.detach(domain, device) {
                log::error!(target: "vfio", "undo: detaching {} failed: {e2}", device.device);
            }
        }
        for unit in created {
            if let Some(domain) = model.domains.remove(&unit) {
                if let Err(e2) = iommu.destroy_domain(domain) {
                    log::error!(target: "vfio", "undo: domain {} leaked: {e2}", domain.0);
                }
            }
        }
        log::info!(target: "vfio", "attach failed and was undone: {e}");
        return Err(e);
    }
    Ok(())
}

/// Detach `leaving` from `model`'s domains, then destroy the domains of units not in
/// `remaining` (their mappings go with their tables; no device walks them any more).
///
/// Cannot fail: a detach the hardware does not confirm is logged, and destroying that
/// domain then fails (`Busy`): the domain is leaked rather than its tables freed under
/// a device that may still use them.
pub(super) fn leave(
    iommu: &mut dyn Iommu,
    model: &mut Model,
    leaving: &[DeviceDma],
    remaining: &BTreeSet<UnitId>,
) {
    for device in leaving {
        if let Some(&domain) = model.domains.get(&device.unit) {
            if let Err(e) = iommu.detach(domain, device) {
                log::error!(target: "vfio", "detaching {} from domain {} failed: {e}", device.device, domain.0);
            }
        }
    }
    let gone: Vec<UnitId> = model
        .domains
        .keys()
        .filter(|unit| !remaining.contains(unit))
        .copied()
        .collect();
    for unit in gone {
        if let Some(domain) = model.domains.remove(&unit) {
            match iommu.destroy_domain(domain) {
                Ok(()) => {
                    log::info!(target: "vfio", "domain {} on unit {} destroyed", domain.0, unit.0)
                }
                Err(e) => {
                    log::error!(target: "vfio", "domain {} on unit {} leaked: {e}", domain.0, unit.0)
                }
            }
        }
    }
}

/// Map `m` in every domain, one commit per domain. On failure nothing stays mapped
/// (what was mapped is unmapped and committed).
fn map_everywhere(iommu: &mut dyn Iommu, model: &Model, m: &Mapping) -> Result<(), IommuError> {
    let domains: Vec<DomainHandle> = model.domains.values().copied().collect();
    let mut mapped: Vec<DomainHandle> = Vec::new();
    let mut result = Ok(());
    for &domain in &domains {
        result = iommu.map(domain, m.iova, m.hpa, m.size, m.access);
        if result.is_err() {
            break;
        }
        mapped.push(domain);
    }
    if result.is_ok() {
        for &domain in &domains {
            result = iommu.commit(domain);
            if result.is_err() {
                break;
            }
        }
    }
    if let Err(e) = result {
        for &domain in &mapped {
            if let Err(e2) = iommu.unmap(domain, m.iova, m.size) {
                log::error!(target: "vfio", "undo: unmap in domain {} failed: {e2}", domain.0);
            }
            if let Err(e2) = iommu.commit(domain) {
                log::error!(target: "vfio", "undo: commit of domain {} failed: {e2}", domain.0);
            }
        }
        return Err(e);
    }
    Ok(())
}

impl Vfio {
    /// The caller's container `handle` names, with its model (`EINVAL` without one).
    fn active(&mut self, guest: GuestId, handle: u64) -> Result<ContainerId, Errno> {
        let id = self.container_handle(guest, handle)?;
        match self.containers.get(&id) {
            Some(c) if c.model.is_some() => Ok(id),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::EBADF),
        }
    }

    /// `CONTAINER_CREATE`.
    pub(super) fn container_create(&mut self, guest: GuestId) -> Result<u64, Errno> {
        let id = ContainerId(self.next_container);
        let handle = self
            .guests
            .entry(guest)
            .or_default()
            .handles
            .insert(Object::Container(id), &mut self.generations)?;
        self.next_container = self.next_container.wrapping_add(1);
        self.containers.insert(
            id,
            Container {
                owner: guest,
                refs: 1,
                handle_open: true,
                groups: BTreeSet::new(),
                model: None,
            },
        );
        log::info!(target: "vfio", "guest {}: container {} created", guest.0, id.0);
        Ok(handle)
    }

    /// `CONTAINER_SET_IOMMU`: one domain per unit the groups span, every function of
    /// every group attached.
    pub(super) fn set_iommu(
        &mut self,
        guest: GuestId,
        handle: u64,
        iommu_type: u64,
    ) -> Result<u64, Errno> {
        let id = self.container_handle(guest, handle)?;
        let container = self.containers.get_mut(&id).ok_or(Errno::EBADF)?;
        if container.groups.is_empty() || container.model.is_some() {
            return Err(Errno::EINVAL);
        }
        if iommu_type != extension::TYPE1V2_IOMMU {
            return Err(Errno::ENODEV);
        }
        let devices: Vec<DeviceDma> = container
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g.0))
            .flat_map(|g| g.routes().cloned())
            .collect();
        let mut model = Model::default();
        join(&mut *self.iommu, &mut model, &devices).map_err(iommu_errno)?;
        log::info!(target: "vfio", "guest {}: container {} set to type1v2: {} domains, {} functions attached", guest.0, id.0, model.domains.len(), devices.len());
        container.model = Some(model);
        Ok(0)
    }

    /// `IOMMU_GET_INFO`: page sizes, then the capability chain (IOVA ranges, DMA
    /// mappings available) when `argsz` has room for it.
    pub(super) fn iommu_get_info(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        handle: u64,
        gpa: u64,
    ) -> Result<u64, Errno> {
        let id = self.active(guest, handle)?;
        let model = self
            .containers
            .get(&id)
            .and_then(|c| c.model.as_ref())
            .ok_or(Errno::EINVAL)?;
        let (argsz, bytes) =
            read_args::<{ IommuType1Info::SIZE }>(&*mem, gpa, min_size::IOMMU_INFO)?;
        let input = IommuType1Info::from_bytes(&bytes);
        if input.flags != 0 {
            return Err(Errno::EINVAL);
        }
        let iommu = &*self.iommu;
        let page_sizes = model.page_sizes(iommu).map_err(iommu_errno)?;
        let ranges = model.usable_ranges(iommu).map_err(iommu_errno)?;
        let avail = DMA_MAPPINGS_MAX.saturating_sub(model.mappings.len() as u32);

        let ranges_at = IommuType1Info::SIZE;
        let avail_at = ranges_at + IovaRangeCap::SIZE + ranges.len() * IovaRangeEntry::SIZE;
        let total = avail_at + DmaAvailCap::SIZE;
        let mut info = IommuType1Info {
            argsz,
            flags: IOMMU_INFO_PGSIZES | IOMMU_INFO_CAPS,
            iova_pgsizes: page_sizes,
            cap_offset: 0,
            _pad: 0,
        };
        let mut out = Vec::new();
        if argsz as usize >= total {
            info.cap_offset = ranges_at as u32;
            out.extend_from_slice(&info.to_bytes());
            let cap = IovaRangeCap {
                id: CAP_IOVA_RANGE,
                version: CAP_VERSION,
                next: avail_at as u32,
                nr_iovas: ranges.len() as u32,
                _reserved: 0,
            };
            out.extend_from_slice(&cap.to_bytes());
            for r in &ranges {
                let entry = IovaRangeEntry {
                    start: r.start,
                    end: r.last,
                };
                out.extend_from_slice(&entry.to_bytes());
            }
            let cap = DmaAvailCap {
                id: CAP_DMA_AVAIL,
                version: CAP_VERSION,
                next: 0,
                avail,
                _pad: 0,
            };
            out.extend_from_slice(&cap.to_bytes());
        } else {
            info.argsz = u32::try_from(total).unwrap_or(u32::MAX);
            let n = out_len(argsz, min_size::IOMMU_INFO, IommuType1Info::SIZE);
            out.extend_from_slice(info.to_bytes().get(..n).unwrap_or_default());
        }
        mem.write(gpa, &out)?;
        Ok(0)
    }

    /// `MAP_DMA`: check everything, then map in every domain (one commit each).
    pub(super) fn map_dma(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        handle: u64,
        gpa: u64,
    ) -> Result<u64, Errno> {
        let id = self.active(guest, handle)?;
        let model = self
            .containers
            .get_mut(&id)
            .and_then(|c| c.model.as_mut())
            .ok_or(Errno::EINVAL)?;
        let (_, bytes) = read_args::<{ DmaMap::SIZE }>(&*mem, gpa, min_size::DMA_MAP)?;
        let map = DmaMap::from_bytes(&bytes);
        let rw = DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE;
        if map.flags == 0 || map.flags & !rw != 0 {
            return Err(Errno::EINVAL);
        }
        let mut access = Access::empty();
        access.set(Access::READ, map.flags & DMA_MAP_FLAG_READ != 0);
        access.set(Access::WRITE, map.flags & DMA_MAP_FLAG_WRITE != 0);
        let page = model.min_page(&*self.iommu)?;
        if map.size == 0 || (map.vaddr | map.iova | map.size) & (page - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let end = map.iova.checked_add(map.size).ok_or(Errno::EINVAL)?;
        map.vaddr.checked_add(map.size).ok_or(Errno::EINVAL)?;
        let ranges = model.usable_ranges(&*self.iommu).map_err(iommu_errno)?;
        if !ranges
            .iter()
            .any(|r| r.start <= map.iova && end - 1 <= r.last)
        {
            return Err(Errno::EINVAL);
        }
        let hpa = mem.host_address(map.vaddr, map.size).ok_or(Errno::EFAULT)?;
        if model.overlaps(map.iova, end) {
            return Err(Errno::EEXIST);
        }
        if model.mappings.len() >= DMA_MAPPINGS_MAX as usize {
            return Err(Errno::ENOSPC);
        }
        // The pinned-memory limit (Linux: RLIMIT_MEMLOCK): a container maps at most as
        // many bytes as the guest has RAM, aliases counted each time. This bounds the
        // page-table memory a guest can make the hypervisor allocate (sparse 4 KiB
        // mappings cost at most three table pages each) in proportion to its own size.
        let (_, ram_size) = mem.ram();
        if model.pinned.saturating_add(map.size) > ram_size {
            return Err(Errno::ENOMEM);
        }
        if let Some(free) = self.heap_free {
            if free() < super::state::HEAP_RESERVE {
                log::warn!(target: "vfio", "hypervisor heap down to its reserve: MAP_DMA refused");
                return Err(Errno::ENOMEM);
            }
        }
        let mapping = Mapping {
            iova: map.iova,
            size: map.size,
            vaddr: map.vaddr,
            hpa,
            access,
        };
        map_everywhere(&mut *self.iommu, model, &mapping).map_err(iommu_errno)?;
        model.mappings.insert(mapping.iova, mapping);
        model.pinned = model.pinned.saturating_add(mapping.size);
        log::debug!(target: "vfio", "guest {}: container {} mapped iova {:#x}+{:#x} -> gpa {:#x} ({access:?}) in {} domains; {} mappings", guest.0, id.0, map.iova, map.size, map.vaddr, model.domains.len(), model.mappings.len());
        Ok(0)
    }

    /// `UNMAP_DMA` (type1v2): whole mappings only, one commit per domain, the bytes
    /// unmapped written back in `size`.
    ///
    /// If the hardware fails to confirm (a commit timeout), the tables are already
    /// edited: the bookkeeping follows the tables (the mappings are gone) and the error
    /// is returned. That is the one way a failing call changes state; the unit is not
    /// to be trusted after it anyway.
    pub(super) fn unmap_dma(
        &mut self,
        guest: GuestId,
        mem: &mut dyn GuestRam,
        handle: u64,
        gpa: u64,
    ) -> Result<u64, Errno> {
        let id = self.active(guest, handle)?;
        let model = self
            .containers
            .get_mut(&id)
            .and_then(|c| c.model.as_mut())
            .ok_or(Errno::EINVAL)?;
        let (_, bytes) = read_args::<{ DmaUnmap::SIZE }>(&*mem, gpa, min_size::DMA_UNMAP)?;
        let mut unmap = DmaUnmap::from_bytes(&bytes);
        if unmap.flags & !DMA_UNMAP_FLAG_ALL != 0 {
            return Err(Errno::EINVAL);
        }
        let victims: Vec<Mapping> = if unmap.flags & DMA_UNMAP_FLAG_ALL != 0 {
            if unmap.iova != 0 || unmap.size != 0 {
                return Err(Errno::EINVAL);
            }
            model.mappings.values().copied().collect()
        } else {
            let page = model.min_page(&*self.iommu)?;
            if unmap.size == 0 || (unmap.iova | unmap.size) & (page - 1) != 0 {
                return Err(Errno::EINVAL);
            }
            let end = unmap.iova.checked_add(unmap.size).ok_or(Errno::EINVAL)?;
            // Type1v2: a range that would cut a mapping at either end is refused.
            if model
                .covering(unmap.iova)
                .is_some_and(|m| m.iova != unmap.iova)
                || model.covering(end - 1).is_some_and(|m| m.end() != end)
            {
                return Err(Errno::EINVAL);
            }
            model
                .mappings
                .range(unmap.iova..end)
                .map(|(_, m)| *m)
                .collect()
        };
        // Disjoint ranges below 2^64 cannot add up past it; saturate anyway.
        let bytes_unmapped = victims.iter().fold(0u64, |n, m| n.saturating_add(m.size));
        let mut first_error = None;
        if !victims.is_empty() {
            for &domain in model.domains.values() {
                for m in &victims {
                    if let Err(e) = self.iommu.unmap(domain, m.iova, m.size) {
                        log::error!(target: "vfio", "unmap of {:#x} in domain {} failed: {e}", m.iova, domain.0);
                        first_error = first_error.or(Some(e));
                    }
                }
                if let Err(e) = self.iommu.commit(domain) {
                    first_error = first_error.or(Some(e));
                }
            }
            for m in &victims {
                if model.mappings.remove(&m.iova).is_some() {
                    model.pinned = model.pinned.saturating_sub(m.size);
                }
            }
        }
        log::debug!(target: "vfio", "guest {}: container {} unmapped {} mappings ({bytes_unmapped:#x} bytes); {} left", guest.0, id.0, victims.len(), model.mappings.len());
        if let Some(e) = first_error {
            return Err(iommu_errno(e));
        }
        unmap.size = bytes_unmapped;
        mem.write(gpa, &unmap.to_bytes())?;
        Ok(0)
    }

    /// `CONTAINER_DEBUG`: log what the hardware would read for a DMA at `iova` by each
    /// attached function; returns the number of lines logged.
    pub(super) fn container_debug(
        &mut self,
        guest: GuestId,
        handle: u64,
        iova: u64,
    ) -> Result<u64, Errno> {
        let id = self.active(guest, handle)?;
        let container = self.containers.get(&id).ok_or(Errno::EBADF)?;
        let model = container.model.as_ref().ok_or(Errno::EINVAL)?;
        let covering = match model.covering(iova) {
            Some(m) => format!(
                "in mapping iova {:#x}+{:#x} -> gpa {:#x} host {:#x} {:?}",
                m.iova, m.size, m.vaddr, m.hpa, m.access
            ),
            None => format!("not mapped ({} mappings)", model.mappings.len()),
        };
        let mut lines = 0u64;
        for (&unit, &domain) in &model.domains {
            log::info!(target: "vfio", "container {} (guest {}) unit {} domain {}: iova {iova:#x} {covering}", id.0, guest.0, unit.0, domain.0);
            lines += 1;
            let devices = container
                .groups
                .iter()
                .filter_map(|g| self.groups.get(g.0))
                .flat_map(|g| g.routes())
                .filter(|d| d.unit == unit);
            for device in devices {
                log::info!(target: "vfio", "  {} (requester ids {:04x?}):", device.device, device.requester_ids);
                lines += 1;
                for line in self.iommu.explain(domain, device, iova) {
                    log::info!(target: "vfio", "    {line}");
                    lines += 1;
                }
            }
        }
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, last: u64) -> IovaRange {
        IovaRange { start, last }
    }

    #[test]
    fn ranges_normalize_and_intersect() {
        assert_eq!(
            normalize(alloc::vec![r(10, 20), r(0, 5), r(15, 30), r(9, 1)]),
            [r(0, 5), r(10, 30)]
        );
        assert_eq!(
            intersect(&[r(0, 100), r(200, 300)], &[r(50, 250), r(290, 400)]),
            [r(50, 100), r(200, 250), r(290, 300)]
        );
        assert_eq!(intersect(&[r(0, 10)], &[]), []);
        assert_eq!(
            intersect(&[r(0, u64::MAX)], &[r(5, u64::MAX)]),
            [r(5, u64::MAX)]
        );
    }
}
