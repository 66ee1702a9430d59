//! Vendor-neutral domain bookkeeping every driver shares: domain-id pools, the domains
//! themselves (a table in the vendor's [`EntryFormat`], the domain id per unit, the
//! attached devices, the edits not yet committed, the identity-mapped firmware regions),
//! requester-id routes with reference counts, and the merging of pending ranges into
//! invalidation batches.
//!
//! Nothing here touches registers or invalidates anything: the drivers decide what to
//! send and when. The invariants that matter stay theirs to keep (an id goes back to its
//! pool only after the unit confirmed an invalidation of it, retired tables are reclaimed
//! only after the invalidation of the commit completed); these types only make the
//! bookkeeping the same for every vendor.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use sluice_pci::PciAddress;

use crate::hw::DmaMemory;
use crate::pagetable::{
    EntryFormat, IoPageTable, PageSizes, PageTableConfig, Translation, Unmapped,
};
use crate::range::{check_map_args, subtract};
use crate::{Access, DeviceDma, DomainHandle, IommuError, IovaRange, UnitId};

/// The interrupt window: never DMA-translated, never in an IOVA range (both vendors).
pub const INTERRUPT_WINDOW: IovaRange = IovaRange {
    start: 0xFEE0_0000,
    last: 0xFEEF_FFFF,
};

/// The table format of every domain of a driver, chosen once for the whole machine from
/// what every unit offers (a domain's table may be used on any of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainFormat {
    /// Page-table levels.
    pub levels: u8,
    /// Aperture width in bits.
    pub address_width: u8,
    /// Leaf sizes used.
    pub page_sizes: PageSizes,
    /// Every unit snoops the CPU caches: table writes need no cache flush.
    pub coherent: bool,
}

impl DomainFormat {
    /// The page-table configuration of a domain's table.
    pub fn table_config(&self) -> PageTableConfig {
        PageTableConfig {
            levels: self.levels,
            superpages: self.page_sizes,
            coherent: self.coherent,
        }
    }

    /// One past the last IOVA: `2^address_width`.
    pub fn aperture_end(&self) -> u64 {
        1u64 << self.address_width
    }
}

/// A remapping unit as the domain bookkeeping sees it: its id and its domain-id pool.
pub trait DomainUnit {
    fn unit_id(&self) -> UnitId;
    fn domain_ids(&mut self) -> &mut IdPool;
}

/// The index of `unit` in `units`.
pub fn unit_index(units: &[impl DomainUnit], unit: UnitId) -> Option<usize> {
    units.iter().position(|u| u.unit_id() == unit)
}

/// The `Iommu` methods that are the same for every vendor, for a driver with the field
/// `domains: DomainSet<_>` and `mem`: `create_domain`, `page_sizes` and `unmap` (every
/// page mapped in `[iova, iova + size)`, clamped to the aperture, except identity maps,
/// which stay; superpages sticking out of the range are split by the table, so
/// `PartialUnmap` never happens here; `Misaligned`/`Wraps` on bad arguments).
#[macro_export]
macro_rules! domain_methods {
    () => {
        fn create_domain(&mut self) -> Result<$crate::DomainHandle, $crate::IommuError> {
            self.domains.create(&mut self.mem)
        }

        fn page_sizes(&self, domain: $crate::DomainHandle) -> Result<u64, $crate::IommuError> {
            self.domains.page_sizes(domain)
        }

        fn unmap(
            &mut self,
            handle: $crate::DomainHandle,
            iova: u64,
            size: u64,
        ) -> Result<u64, $crate::IommuError> {
            self.domains.unmap(&mut self.mem, handle, iova, size)
        }
    };
}

/// Implements [`DomainUnit`] for a driver's unit type from its id and id-pool fields:
/// `domain_unit!(Unit<R>, id, ids)`.
#[macro_export]
macro_rules! domain_unit {
    ($unit:ident < $r:ident >, $id:ident, $ids:ident) => {
        impl<$r> $crate::domains::DomainUnit for $unit<$r> {
            fn unit_id(&self) -> $crate::UnitId {
                self.$id
            }

            fn domain_ids(&mut self) -> &mut $crate::domains::IdPool {
                &mut self.$ids
            }
        }
    };
}

/// The domain ids of one unit: `1 .. limit` (0 is never handed out), optionally without
/// those whose bit 8 is set. Allocation is round-robin, so a freed id is the last to come
/// back; the caller releases an id only after the unit confirmed an invalidation of
/// everything it cached under it.
#[derive(Debug)]
pub struct IdPool {
    /// One past the largest id (at most 65536).
    limit: u32,
    next: u32,
    used: BTreeSet<u16>,
    skip_bit8: bool,
}

impl IdPool {
    /// Ids `1 .. limit` (`limit` clamped to 65536), without bit 8 set when `skip_bit8`.
    pub fn new(limit: u32, skip_bit8: bool) -> Self {
        Self {
            limit: limit.min(1 << 16),
            next: 1,
            used: BTreeSet::new(),
            skip_bit8,
        }
    }

    fn usable(&self, id: u32) -> bool {
        id != 0 && !(self.skip_bit8 && id & 0x100 != 0)
    }

    /// The next free id after the last one handed out, or `None` when all are in use.
    pub fn allocate(&mut self) -> Option<u16> {
        let span = self.limit.checked_sub(1)?;
        for step in 0..span {
            let candidate = 1 + (self.next - 1 + step) % span;
            if !self.usable(candidate) {
                continue;
            }
            let id = candidate as u16;
            if self.used.insert(id) {
                self.next = 1 + candidate % span;
                return Some(id);
            }
        }
        None
    }

    /// Returns `id` to the pool. Only after its cached state was invalidated.
    pub fn release(&mut self, id: u16) {
        self.used.remove(&id);
    }

    /// Ids in use.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    /// Ids available in total (0 excluded).
    pub fn capacity(&self) -> u32 {
        if !self.skip_bit8 {
            return self.limit.saturating_sub(1);
        }
        // Ids below `limit` with bit 8 clear, 0 among them.
        let clear = (self.limit >> 9) * 256 + (self.limit & 511).min(256);
        clear.saturating_sub(1)
    }
}

/// A requester id's route: its domain and how many attached devices use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub domain: DomainHandle,
    pub users: u32,
}

/// Which domain each `(unit, requester id)` is routed to. A requester id routes to at
/// most one domain; devices of one domain sharing it (DMA aliases) are counted.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: BTreeMap<(UnitId, u16), Route>,
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The domain `requester_id` of `unit` is routed to.
    pub fn domain_of(&self, unit: UnitId, requester_id: u16) -> Option<DomainHandle> {
        self.routes
            .get(&(unit, requester_id))
            .map(|route| route.domain)
    }

    pub fn get(&self, unit: UnitId, requester_id: u16) -> Option<Route> {
        self.routes.get(&(unit, requester_id)).copied()
    }

    pub fn is_routed(&self, unit: UnitId, requester_id: u16) -> bool {
        self.routes.contains_key(&(unit, requester_id))
    }

    /// Whether any of `requester_ids` of `unit` is routed to a domain other than `domain`.
    pub fn conflicts(&self, unit: UnitId, requester_ids: &[u16], domain: DomainHandle) -> bool {
        requester_ids.iter().any(|&rid| {
            self.domain_of(unit, rid)
                .is_some_and(|other| other != domain)
        })
    }

    /// One more user of each of `requester_ids` (routed to `domain` when new).
    pub fn add(&mut self, unit: UnitId, requester_ids: &[u16], domain: DomainHandle) {
        for &rid in requester_ids {
            self.routes
                .entry((unit, rid))
                .and_modify(|route| route.users += 1)
                .or_insert(Route { domain, users: 1 });
        }
    }

    /// One user less of `requester_id`; true when that was the last one (the route is
    /// gone and the caller blocks the requester id again). False when it was not routed.
    pub fn release(&mut self, unit: UnitId, requester_id: u16) -> bool {
        let key = (unit, requester_id);
        let Some(route) = self.routes.get_mut(&key) else {
            return false;
        };
        route.users -= 1;
        if route.users == 0 {
            self.routes.remove(&key);
            return true;
        }
        false
    }

    /// Those of `requester_ids` of `unit` not routed yet (their entries are new).
    pub fn unrouted(&self, unit: UnitId, requester_ids: &[u16]) -> Vec<u16> {
        requester_ids
            .iter()
            .copied()
            .filter(|&rid| !self.is_routed(unit, rid))
            .collect()
    }

    /// Every routed `(unit, requester id)`, in order.
    pub fn keys(&self) -> impl Iterator<Item = (UnitId, u16)> + '_ {
        self.routes.keys().copied()
    }
}

/// A `[start, end)` range whose cached translations must be invalidated; `pde` when the
/// cached non-leaf entries must go too (tables were unlinked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingRange {
    pub start: u64,
    pub end: u64,
    pub pde: bool,
}

/// Sorts and merges overlapping or touching pending ranges (`pde` if any merged one has
/// it).
pub fn merge_pending(mut pending: Vec<PendingRange>) -> Vec<PendingRange> {
    pending.sort_unstable_by_key(|p| p.start);
    let mut merged: Vec<PendingRange> = Vec::new();
    for p in pending {
        match merged.last_mut() {
            Some(last) if p.start <= last.end => {
                last.end = last.end.max(p.end);
                last.pde |= p.pde;
            }
            _ => merged.push(p),
        }
    }
    merged
}

/// Sorts and merges overlapping or touching `[start, end)` ranges (empty ones dropped).
pub fn merge_ranges(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut sorted: Vec<(u64, u64)> = ranges.iter().copied().filter(|r| r.1 > r.0).collect();
    sorted.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (start, end) in sorted {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// `device`'s requester ids (plus `extra` ones, e.g. firmware aliases), sorted and
/// deduplicated; `UnknownDevice` when there are none.
pub fn requester_ids(
    device: &DeviceDma,
    extra: impl IntoIterator<Item = u16>,
) -> Result<Vec<u16>, IommuError> {
    let mut rids = device.requester_ids.clone();
    rids.extend(extra);
    rids.sort_unstable();
    rids.dedup();
    if rids.is_empty() {
        return Err(IommuError::UnknownDevice);
    }
    Ok(rids)
}

/// Sorted `[start, end)` pieces as IOVA ranges.
pub fn iova_ranges(pieces: Vec<(u64, u64)>) -> Vec<IovaRange> {
    pieces
        .into_iter()
        .map(|(start, end)| IovaRange {
            start,
            last: end - 1,
        })
        .collect()
}

/// Whether the `[start, end)` ranges `a` and `b` overlap.
pub fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// What a firmware identity region (VT-d RMRR, AMD-Vi IVMD) looks like to the
/// bookkeeping: where it is, whom it is for, and how it is mapped.
pub trait FirmwareRegion {
    fn segment(&self) -> u16;
    fn devices(&self) -> &[PciAddress];
    /// `(base, size, access)` of the identity map (`access` empty: reserved only).
    fn identity(&self) -> (u64, u64, Access);
}

/// The identity maps `regions` ask for `device` on a unit of `segment`.
pub fn regions_of<T: FirmwareRegion>(
    regions: &[T],
    segment: u16,
    device: PciAddress,
) -> Vec<(u64, u64, Access)> {
    regions
        .iter()
        .filter(|region| region.segment() == segment && region.devices().contains(&device))
        .map(FirmwareRegion::identity)
        .collect()
}

/// An identity map of a domain, with the attached devices that need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IdentityMapping {
    base: u64,
    size: u64,
    users: u32,
}

/// An attached device: its DMA description and the requester ids it was routed under
/// (sorted, deduplicated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub dma: DeviceDma,
    pub rids: Vec<u16>,
}

/// What [`DomainSet::detach`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detached {
    pub attached: Attached,
    /// The index of the device's unit.
    pub index: usize,
    /// The domain's id on that unit (0 without one).
    pub did: u16,
    /// Requester ids no attached device uses any more.
    pub cleared: Vec<u16>,
}

/// What a commit has to make visible, taken from a domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingEdits {
    /// Ranges whose translations were removed or split.
    pub unmapped: Vec<PendingRange>,
    /// Ranges mapped (recorded only when a unit caches not-present entries).
    pub mapped: Vec<(u64, u64)>,
    /// Any table edit at all.
    pub dirty: bool,
}

impl PendingEdits {
    /// Unmapped and mapped ranges together, merged.
    pub fn merged(&self) -> Vec<PendingRange> {
        let mut all = self.unmapped.clone();
        all.extend(self.mapped.iter().map(|&(start, end)| PendingRange {
            start,
            end,
            pde: false,
        }));
        merge_pending(all)
    }

    /// The unmapped ranges, plus the mapped ones when `with_mapped`, as `[start, end)`.
    pub fn ranges(&self, with_mapped: bool) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = self.unmapped.iter().map(|p| (p.start, p.end)).collect();
        if with_mapped {
            ranges.extend_from_slice(&self.mapped);
        }
        ranges
    }
}

/// One domain: its table, its id per unit it was ever attached on (until destroyed), its
/// devices, its uncommitted edits and its identity maps.
pub struct Domain<F: EntryFormat> {
    pub table: IoPageTable<F>,
    pub dids: BTreeMap<UnitId, u16>,
    pub devices: BTreeMap<PciAddress, Attached>,
    pending: PendingEdits,
    identity: Vec<IdentityMapping>,
}

impl<F: EntryFormat> Domain<F> {
    fn new(table: IoPageTable<F>) -> Self {
        Self {
            table,
            dids: BTreeMap::new(),
            devices: BTreeMap::new(),
            pending: PendingEdits::default(),
            identity: Vec::new(),
        }
    }

    /// The identity-mapped ranges, `[start, end)`.
    pub fn identity_ranges(&self) -> Vec<(u64, u64)> {
        self.identity
            .iter()
            .map(|m| (m.base, m.base + m.size))
            .collect()
    }

    /// The domain's id on `unit`, allocated from `ids` on first use.
    pub fn domain_id_on(&mut self, unit: UnitId, ids: &mut IdPool) -> Option<u16> {
        if let Some(&did) = self.dids.get(&unit) {
            return Some(did);
        }
        let did = ids.allocate()?;
        self.dids.insert(unit, did);
        Some(did)
    }

    /// Takes the edits a commit must make visible.
    pub fn take_pending(&mut self) -> PendingEdits {
        core::mem::take(&mut self.pending)
    }

    /// Maps `[iova, iova + size)`; `record` when the map itself needs invalidating.
    pub fn map(
        &mut self,
        mem: &mut dyn DmaMemory,
        iova: u64,
        paddr: u64,
        size: u64,
        access: Access,
        record: bool,
    ) -> Result<(), IommuError> {
        self.table.map(mem, iova, paddr, size, access)?;
        self.pending.dirty = true;
        if record {
            self.pending.mapped.push((iova, iova + size));
        }
        Ok(())
    }

    fn record_unmap(&mut self, unmapped: &Unmapped) {
        if let Some(flush) = unmapped.flush {
            self.pending.unmapped.push(PendingRange {
                start: flush.iova,
                end: flush.iova + flush.size,
                pde: unmapped.freed_tables > 0,
            });
            self.pending.dirty = true;
        }
    }

    /// Unmaps `[iova, end)` except the identity maps, which stay. Returns the bytes that
    /// were mapped.
    pub fn unmap(
        &mut self,
        mem: &mut dyn DmaMemory,
        iova: u64,
        end: u64,
    ) -> Result<u64, IommuError> {
        let mut bytes = 0;
        for (start, stop) in subtract((iova, end), &self.identity_ranges()) {
            let unmapped = self.table.unmap(mem, start, stop - start)?;
            bytes += unmapped.bytes;
            self.record_unmap(&unmapped);
        }
        Ok(bytes)
    }

    /// Identity-maps `regions` (`(base, size, access)`), reference counted; an empty
    /// `access` only reserves. A new map must end within `aperture_end` and stay clear
    /// of the interrupt window (`OutOfRange`); `record` as for [`Self::map`]. Either all
    /// are added or none.
    pub fn add_identity(
        &mut self,
        mem: &mut dyn DmaMemory,
        regions: &[(u64, u64, Access)],
        aperture_end: u64,
        record: bool,
    ) -> Result<(), IommuError> {
        let window = (INTERRUPT_WINDOW.start, INTERRUPT_WINDOW.last + 1);
        let mut done: Vec<(u64, u64, Access)> = Vec::new();
        for &(base, size, access) in regions {
            if let Some(mapping) = self
                .identity
                .iter_mut()
                .find(|m| m.base == base && m.size == size)
            {
                mapping.users += 1;
                done.push((base, size, access));
                continue;
            }
            let end = base + size;
            let outcome = if access.is_empty() {
                Ok(())
            } else if end > aperture_end || overlaps((base, end), window) {
                Err(IommuError::OutOfRange)
            } else {
                self.map(mem, base, base, size, access, record)
            };
            if let Err(error) = outcome {
                self.remove_identity(mem, &done);
                return Err(error);
            }
            self.identity.push(IdentityMapping {
                base,
                size,
                users: 1,
            });
            done.push((base, size, access));
        }
        Ok(())
    }

    /// Drops one reference to each of `regions`; unmaps those nobody uses any more (the
    /// invalidation is left pending for the next commit).
    pub fn remove_identity(&mut self, mem: &mut dyn DmaMemory, regions: &[(u64, u64, Access)]) {
        for &(base, size, _) in regions {
            let Some(position) = self
                .identity
                .iter()
                .position(|m| m.base == base && m.size == size)
            else {
                continue;
            };
            self.identity[position].users -= 1;
            if self.identity[position].users == 0 {
                self.identity.remove(position);
                if let Ok(unmapped) = self.table.unmap(mem, base, size) {
                    self.record_unmap(&unmapped);
                    self.pending.dirty = true;
                }
            }
        }
    }

    /// Runs `invalidate` for every unit of `units` the domain has an id on (unknown ones
    /// skipped), all of them even when some fail; the first error.
    pub fn for_each_unit<U: DomainUnit>(
        &self,
        mem: &mut dyn DmaMemory,
        units: &mut [U],
        mut invalidate: impl FnMut(&mut U, &mut dyn DmaMemory, u16) -> Result<(), IommuError>,
    ) -> Result<(), IommuError> {
        let mut result = Ok(());
        for (&unit_id, &did) in &self.dids {
            let Some(unit) = units.iter_mut().find(|u| u.unit_id() == unit_id) else {
                continue;
            };
            if let Err(error) = invalidate(unit, mem, did) {
                result = result.and(Err(error));
            }
        }
        result
    }
}

/// Every domain of a driver, by handle, all with tables in format `F`.
pub struct DomainSet<F: EntryFormat> {
    format: DomainFormat,
    domains: BTreeMap<DomainHandle, Domain<F>>,
    next: u32,
}

impl<F: EntryFormat> DomainSet<F> {
    /// No domains yet; every one will have a table in `format`.
    pub fn new(format: DomainFormat) -> Self {
        Self {
            format,
            domains: BTreeMap::new(),
            next: 1,
        }
    }

    pub fn format(&self) -> DomainFormat {
        self.format
    }

    /// A new, empty domain. `NoDomainId` when handles ran out.
    pub fn create(&mut self, mem: &mut dyn DmaMemory) -> Result<DomainHandle, IommuError> {
        let handle = DomainHandle(self.next);
        let next = self.next.checked_add(1).ok_or(IommuError::NoDomainId)?;
        let table = IoPageTable::new(mem, self.format.table_config())?;
        self.next = next;
        self.domains.insert(handle, Domain::new(table));
        Ok(handle)
    }

    pub fn get(&self, handle: DomainHandle) -> Result<&Domain<F>, IommuError> {
        self.domains.get(&handle).ok_or(IommuError::UnknownDomain)
    }

    pub fn get_mut(&mut self, handle: DomainHandle) -> Result<&mut Domain<F>, IommuError> {
        self.domains
            .get_mut(&handle)
            .ok_or(IommuError::UnknownDomain)
    }

    /// Removes a domain without devices (`Busy` otherwise). The caller invalidates its
    /// ids and only then releases them and gives its table back ([`Self::dispose`]).
    pub fn remove_idle(&mut self, handle: DomainHandle) -> Result<Domain<F>, IommuError> {
        if !self.get(handle)?.devices.is_empty() {
            return Err(IommuError::Busy);
        }
        self.domains
            .remove(&handle)
            .ok_or(IommuError::UnknownDomain)
    }

    /// Frees a removed domain's tables. Only once every unit confirmed it forgot them.
    pub fn dispose(mut domain: Domain<F>, mem: &mut dyn DmaMemory) {
        domain.table.reclaim(mem);
        domain.table.destroy(mem);
    }

    /// `Iommu::destroy_domain` for every vendor: removes `handle` (`Busy` while devices
    /// are attached), runs `invalidate` (everything cached under the id) on every unit it
    /// has an id on, and gives each id back only once its unit confirmed. The tables are
    /// freed only when every unit confirmed; otherwise they and the unconfirmed ids are
    /// leaked (that unit may still use them) and the first error returned.
    pub fn destroy<U: DomainUnit>(
        &mut self,
        mem: &mut dyn DmaMemory,
        handle: DomainHandle,
        units: &mut [U],
        mut invalidate: impl FnMut(&mut U, &mut dyn DmaMemory, u16) -> Result<(), IommuError>,
    ) -> Result<(), IommuError> {
        let domain = self.remove_idle(handle)?;
        let result = domain.for_each_unit(mem, units, |unit, mem, did| {
            invalidate(unit, mem, did)?;
            unit.domain_ids().release(did);
            Ok(())
        });
        if result.is_ok() {
            Self::dispose(domain, mem);
        }
        result
    }

    /// `Iommu::commit` for every vendor: takes `handle`'s pending edits and runs
    /// `invalidate` with them on every unit it has an id on (all of them, the first error
    /// returned); the tables its unmaps retired are freed only when every unit confirmed.
    pub fn commit<U: DomainUnit>(
        &mut self,
        mem: &mut dyn DmaMemory,
        handle: DomainHandle,
        units: &mut [U],
        mut invalidate: impl FnMut(
            &mut U,
            &mut dyn DmaMemory,
            u16,
            &PendingEdits,
        ) -> Result<(), IommuError>,
    ) -> Result<(), IommuError> {
        let domain = self.get_mut(handle)?;
        let pending = domain.take_pending();
        let result = domain.for_each_unit(mem, units, |unit, mem, did| {
            invalidate(unit, mem, did, &pending)
        });
        if result.is_ok() {
            domain.table.reclaim(mem);
        }
        result
    }

    /// The attach checks every vendor shares, after the driver's own: `Ok(true)` when
    /// `device` is attached to `handle` already as it is (nothing to do but commit);
    /// `Busy` when it is attached differently, to another domain, or one of `rids` of
    /// its unit routes to another domain.
    pub fn check_attach(
        &self,
        handle: DomainHandle,
        device: &DeviceDma,
        rids: &[u16],
        routes: &RouteTable,
    ) -> Result<bool, IommuError> {
        if let Some(existing) = self.get(handle)?.devices.get(&device.device) {
            if existing.dma.unit == device.unit
                && existing.dma.requester_ids == device.requester_ids
            {
                return Ok(true);
            }
            return Err(IommuError::Busy);
        }
        if self
            .domains
            .iter()
            .any(|(&other, d)| other != handle && d.devices.contains_key(&device.device))
        {
            return Err(IommuError::Busy);
        }
        if routes.conflicts(device.unit, rids, handle) {
            return Err(IommuError::Busy);
        }
        Ok(false)
    }

    /// `device` as attached to `handle` (`UnknownDomain`, `UnknownDevice`).
    pub fn attached(
        &self,
        handle: DomainHandle,
        device: PciAddress,
    ) -> Result<Attached, IommuError> {
        self.get(handle)?
            .devices
            .get(&device)
            .cloned()
            .ok_or(IommuError::UnknownDevice)
    }

    /// `Iommu::map` for every vendor: `UnknownDomain`, then the argument checks
    /// (`Misaligned`, `Wraps`), then `OutOfRange` unless `[iova, iova + size)` lies in
    /// one of the `usable` pieces the driver gives for the domain, then the table's map;
    /// `record` as for [`Domain::map`].
    pub fn map_checked(
        &mut self,
        mem: &mut dyn DmaMemory,
        handle: DomainHandle,
        (iova, paddr, size): (u64, u64, u64),
        access: Access,
        usable: impl FnOnce(&Domain<F>) -> Vec<(u64, u64)>,
        record: bool,
    ) -> Result<(), IommuError> {
        let domain = self.get_mut(handle)?;
        let end = check_map_args(iova, paddr, size)?;
        if !usable(domain)
            .iter()
            .any(|&(start, stop)| start <= iova && end <= stop)
        {
            return Err(IommuError::OutOfRange);
        }
        domain.map(mem, iova, paddr, size, access, record)
    }

    /// `Iommu::page_sizes` for every vendor.
    pub fn page_sizes(&self, handle: DomainHandle) -> Result<u64, IommuError> {
        self.get(handle)?;
        Ok(self.format.page_sizes.bitmap())
    }

    /// `Iommu::unmap` for every vendor: `[iova, iova + size)` clamped to the aperture,
    /// identity maps kept. `UnknownDomain`, then `Misaligned`/`Wraps`.
    pub fn unmap(
        &mut self,
        mem: &mut dyn DmaMemory,
        handle: DomainHandle,
        iova: u64,
        size: u64,
    ) -> Result<u64, IommuError> {
        let aperture_end = self.format.aperture_end();
        let domain = self.get_mut(handle)?;
        let end = check_map_args(iova, 0, size)?.min(aperture_end);
        if iova >= end {
            return Ok(0);
        }
        domain.unmap(mem, iova, end)
    }

    /// The identity maps and the domain id on `unit` an attach needs: `regions` are
    /// added as [`Domain::add_identity`] does (within the aperture; `record` the maps),
    /// then the id comes from the unit's pool (`NoDomainId`, the identity maps dropped
    /// again).
    pub fn prepare_attach(
        &mut self,
        mem: &mut dyn DmaMemory,
        handle: DomainHandle,
        unit: &mut impl DomainUnit,
        regions: &[(u64, u64, Access)],
        record: bool,
    ) -> Result<u16, IommuError> {
        let aperture_end = self.format.aperture_end();
        let domain = self.get_mut(handle)?;
        domain.add_identity(mem, regions, aperture_end, record)?;
        match domain.domain_id_on(unit.unit_id(), unit.domain_ids()) {
            Some(did) => Ok(did),
            None => {
                domain.remove_identity(mem, regions);
                Err(IommuError::NoDomainId)
            }
        }
    }

    /// Records `device` as attached to `handle` under `rids` (routes counted).
    pub fn finish_attach(
        &mut self,
        handle: DomainHandle,
        device: &DeviceDma,
        rids: Vec<u16>,
        routes: &mut RouteTable,
    ) -> Result<(), IommuError> {
        routes.add(device.unit, &rids, handle);
        let attached = Attached {
            dma: device.clone(),
            rids,
        };
        self.get_mut(handle)?
            .devices
            .insert(device.device, attached);
        Ok(())
    }

    /// The index in `units` of the unit an attach to `handle` goes to: `UnknownDomain`,
    /// then `UnknownDevice` for a unit not among `units`.
    pub fn attach_unit(
        &self,
        handle: DomainHandle,
        unit: UnitId,
        units: &[impl DomainUnit],
    ) -> Result<usize, IommuError> {
        self.get(handle)?;
        unit_index(units, unit).ok_or(IommuError::UnknownDevice)
    }

    /// `device` leaves `handle`: `UnknownDomain`, `UnknownDevice` (not attached, or its
    /// unit not among `units`), else it is forgotten and its routes released.
    /// Returns how it was attached, its unit's index, the domain's id on that unit (0
    /// without one) and the requester ids nobody uses any more, which the driver blocks
    /// again.
    pub fn detach(
        &mut self,
        handle: DomainHandle,
        device: PciAddress,
        routes: &mut RouteTable,
        units: &[impl DomainUnit],
    ) -> Result<Detached, IommuError> {
        let attached = self.attached(handle, device)?;
        let index = unit_index(units, attached.dma.unit).ok_or(IommuError::UnknownDevice)?;
        let domain = self.get_mut(handle)?;
        domain.devices.remove(&device);
        let unit = attached.dma.unit;
        let did = domain.dids.get(&unit).copied().unwrap_or(0);
        let cleared = attached
            .rids
            .iter()
            .copied()
            .filter(|&rid| routes.release(unit, rid))
            .collect();
        Ok(Detached {
            attached,
            index,
            did,
            cleared,
        })
    }

    /// What `iova` translates to in `handle`'s table.
    pub fn translate(
        &self,
        mem: &dyn DmaMemory,
        handle: DomainHandle,
        iova: u64,
    ) -> Result<Option<Translation>, IommuError> {
        Ok(self.get(handle)?.table.translate(mem, iova))
    }

    /// `handle`'s id on `unit`, once a device on that unit was attached.
    pub fn domain_id(&self, handle: DomainHandle, unit: UnitId) -> Option<u16> {
        self.domains.get(&handle)?.dids.get(&unit).copied()
    }

    /// Page-table pages `handle` holds (root and retired tables included).
    pub fn table_pages(&self, handle: DomainHandle) -> Option<usize> {
        Some(self.domains.get(&handle)?.table.table_pages())
    }

    /// Physical address of `handle`'s top-level table.
    pub fn table_root(&self, handle: DomainHandle) -> Option<u64> {
        Some(self.domains.get(&handle)?.table.root())
    }
}

/// The debug accessors every driver offers on its domains, routes and memory (expects
/// the fields `domains: DomainSet<_>`, `routes: RouteTable` and `mem: $mem`).
#[macro_export]
macro_rules! domain_accessors {
    ($mem:ident) => {
        /// What `iova` translates to in `domain`'s table.
        pub fn translate(
            &self,
            domain: $crate::DomainHandle,
            iova: u64,
        ) -> Result<Option<$crate::pagetable::Translation>, $crate::IommuError> {
            self.domains.translate(&self.mem, domain, iova)
        }

        /// `domain`'s id on `unit`, once a device on that unit was attached.
        pub fn domain_id(&self, domain: $crate::DomainHandle, unit: $crate::UnitId) -> Option<u16> {
            self.domains.domain_id(domain, unit)
        }

        /// The domain `requester_id` of `unit` is routed to.
        pub fn domain_of(
            &self,
            unit: $crate::UnitId,
            requester_id: u16,
        ) -> Option<$crate::DomainHandle> {
            self.routes.domain_of(unit, requester_id)
        }

        /// Page-table pages `domain` holds (root and retired tables included).
        pub fn table_pages(&self, domain: $crate::DomainHandle) -> Option<usize> {
            self.domains.table_pages(domain)
        }

        /// Physical address of `domain`'s top-level table (what the context or device
        /// table entries point at).
        pub fn table_root(&self, domain: $crate::DomainHandle) -> Option<u64> {
            self.domains.table_root(domain)
        }

        /// The DMA memory the driver owns.
        pub fn memory(&self) -> &$mem {
            &self.mem
        }

        /// The DMA memory the driver owns, mutably (tests, diagnostics).
        pub fn memory_mut(&mut self) -> &mut $mem {
            &mut self.mem
        }
    };
}

#[cfg(test)]
mod tests {
    use core::ops::RangeInclusive;

    use super::*;
    use crate::hw::fake::FakeDmaMemory as FakeMemory;
    use crate::pagetable::{Decoded, PageSizes};

    /// A minimal entry format: P, R, W in bits 0..=2, a leaf above level 1 has bit 7.
    enum TestFormat {}

    impl EntryFormat for TestFormat {
        const NAME: &'static str = "test";

        fn table_entry(child_table: u64, _child_level: u8) -> u64 {
            child_table | 1
        }

        fn leaf_entry(paddr: u64, level: u8, access: Access) -> u64 {
            paddr | 1 | (u64::from(access.bits()) << 1) | if level > 1 { 1 << 7 } else { 0 }
        }

        fn decode(raw: u64, level: u8) -> Decoded {
            let addr = raw & 0x000f_ffff_ffff_f000;
            if raw & 1 == 0 {
                Decoded::NotPresent
            } else if level > 1 && raw & (1 << 7) == 0 {
                Decoded::Table { addr }
            } else {
                let access = Access::from_bits_truncate(((raw >> 1) & 3) as u8);
                Decoded::Leaf { addr, access }
            }
        }

        fn supported_levels() -> RangeInclusive<u8> {
            1..=6
        }
    }

    #[test]
    fn id_pool_round_robin_bounded_and_bit8() {
        // Ids 1..=4; a released id comes back only after the ones not yet handed out.
        let mut ids = IdPool::new(5, false);
        assert_eq!(ids.capacity(), 4);
        assert_eq!([ids.allocate(), ids.allocate()], [Some(1), Some(2)]);
        ids.release(1);
        assert_eq!([ids.allocate(), ids.allocate()], [Some(3), Some(4)]);
        assert_eq!([ids.allocate(), ids.allocate()], [Some(1), None]);
        ids.release(2);
        ids.release(4);
        assert_eq!(
            ids.allocate(),
            Some(2),
            "the next after 1, the last handed out"
        );
        assert_eq!(ids.in_use(), 3);
        let mut ids = IdPool::new(16, false);
        for _ in 0..15 {
            ids.allocate();
        }
        assert_eq!(ids.in_use(), 15);
        assert_eq!(IdPool::new(0, false).allocate(), None);
        assert_eq!(IdPool::new(1, false).allocate(), None);
        assert_eq!(IdPool::new(1 << 20, false).capacity(), 0xffff);

        let mut skip = IdPool::new(1 << 16, true);
        assert_eq!(skip.capacity(), 0x7fff);
        let mut count = 0;
        while let Some(id) = skip.allocate() {
            assert!(id != 0 && id & 0x100 == 0);
            count += 1;
        }
        assert_eq!(count, 0x7fff);
        assert_eq!(IdPool::new(0x180, true).capacity(), 0xff);
        assert_eq!(IdPool::new(0x300, true).capacity(), 0x1ff);
    }

    #[test]
    fn routes_are_reference_counted() {
        let (unit, a, b) = (UnitId(0), DomainHandle(1), DomainHandle(2));
        let mut routes = RouteTable::new();
        routes.add(unit, &[0x10, 0x11], a);
        routes.add(unit, &[0x11], a);
        assert_eq!(routes.domain_of(unit, 0x11), Some(a));
        assert_eq!(routes.get(unit, 0x11).map(|r| r.users), Some(2));
        assert!(routes.conflicts(unit, &[0x11], b));
        assert!(!routes.conflicts(unit, &[0x11, 0x12], a));
        assert!(!routes.conflicts(UnitId(1), &[0x11], b));
        assert!(!routes.release(unit, 0x11));
        assert!(routes.release(unit, 0x11));
        assert!(!routes.release(unit, 0x11), "not routed any more");
        assert!(!routes.is_routed(unit, 0x11));
        assert_eq!(routes.keys().collect::<Vec<_>>(), [(unit, 0x10)]);
    }

    #[test]
    fn ranges_merge() {
        let p = |start, end, pde| PendingRange { start, end, pde };
        assert_eq!(
            merge_pending(alloc::vec![
                p(0x3000, 0x4000, false),
                p(0x1000, 0x3000, true),
                p(0x8000, 0x9000, false)
            ]),
            [p(0x1000, 0x4000, true), p(0x8000, 0x9000, false)]
        );
        assert_eq!(
            merge_ranges(&[(0x3000, 0x4000), (0x5000, 0x5000), (0x1000, 0x3000)]),
            [(0x1000, 0x4000)]
        );
        assert!(overlaps((0, 2), (1, 3)));
        assert!(!overlaps((0, 1), (1, 3)));
        let edits = PendingEdits {
            unmapped: alloc::vec![p(0x2000, 0x3000, true)],
            mapped: alloc::vec![(0x1000, 0x2000)],
            dirty: true,
        };
        assert_eq!(edits.merged(), [p(0x1000, 0x3000, true)]);
        assert_eq!(edits.ranges(false), [(0x2000, 0x3000)]);
        assert_eq!(edits.ranges(true), [(0x2000, 0x3000), (0x1000, 0x2000)]);
    }

    struct Region(u16, Vec<PciAddress>, (u64, u64, Access));

    impl FirmwareRegion for Region {
        fn segment(&self) -> u16 {
            self.0
        }
        fn devices(&self) -> &[PciAddress] {
            &self.1
        }
        fn identity(&self) -> (u64, u64, Access) {
            self.2
        }
    }

    #[test]
    fn regions_select_segment_and_device() {
        let dev = PciAddress::new(0, 0, 3, 0);
        let other = PciAddress::new(0, 0, 4, 0);
        let rw = Access::READ | Access::WRITE;
        let regions = [
            Region(0, alloc::vec![dev], (0x1000, 0x1000, rw)),
            Region(1, alloc::vec![dev], (0x2000, 0x1000, rw)),
            Region(0, alloc::vec![other], (0x3000, 0x1000, rw)),
        ];
        assert_eq!(regions_of(&regions, 0, dev), [(0x1000, 0x1000, rw)]);
        assert_eq!(regions_of(&regions, 2, dev), []);
    }

    struct TestUnit<R> {
        id: UnitId,
        ids: IdPool,
        _r: core::marker::PhantomData<R>,
    }

    crate::domain_unit!(TestUnit<R>, id, ids);

    fn unit(id: u16, domains: u32) -> TestUnit<()> {
        TestUnit {
            id: UnitId(id),
            ids: IdPool::new(domains, false),
            _r: core::marker::PhantomData,
        }
    }

    #[test]
    fn commit_and_destroy_release_only_what_was_confirmed() {
        let mut mem = FakeMemory::new();
        let mut set: DomainSet<TestFormat> = DomainSet::new(format());
        let handle = set.create(&mut mem).unwrap();
        let mut units = [unit(0, 8), unit(1, 8)];
        for u in &mut units {
            set.prepare_attach(&mut mem, handle, u, &[], false).unwrap();
        }
        assert_eq!(units.iter().map(|u| u.ids.in_use()).sum::<usize>(), 2);
        let rw = Access::READ | Access::WRITE;
        let domain = set.get_mut(handle).unwrap();
        domain.map(&mut mem, 0, 0x5000, 0x1000, rw, true).unwrap();
        domain.unmap(&mut mem, 0, 0x1000).unwrap();
        let mut calls = Vec::new();
        let result = set.commit(&mut mem, handle, &mut units, |u, _, did, pending| {
            calls.push((u.id, did, pending.merged()));
            Ok(())
        });
        assert_eq!(result, Ok(()));
        let range = PendingRange {
            start: 0,
            end: 0x1000,
            pde: true,
        };
        assert_eq!(
            calls,
            [
                (UnitId(0), 1, alloc::vec![range]),
                (UnitId(1), 1, alloc::vec![range])
            ]
        );
        // Nothing pending any more.
        set.commit(&mut mem, handle, &mut units, |_, _, _, pending| {
            assert_eq!(*pending, PendingEdits::default());
            Ok(())
        })
        .unwrap();
        // Unit 1 does not confirm: its id stays taken, unit 0's comes back.
        let failed = IommuError::InvalidationTimeout { unit: UnitId(1) };
        let result = set.destroy(&mut mem, handle, &mut units, |u, _, _| {
            if u.id == UnitId(1) {
                Err(failed)
            } else {
                Ok(())
            }
        });
        assert_eq!(result, Err(failed));
        assert_eq!(units[0].ids.in_use(), 0);
        assert_eq!(units[1].ids.in_use(), 1);
        assert!(set.get(handle).is_err(), "the domain is gone all the same");
    }

    #[test]
    fn prepare_attach_rolls_back_without_an_id() {
        let mut mem = FakeMemory::new();
        let mut set: DomainSet<TestFormat> = DomainSet::new(format());
        let handle = set.create(&mut mem).unwrap();
        let mut full = unit(0, 1);
        let rw = Access::READ | Access::WRITE;
        let region = [(0x10_0000, 0x1000, rw)];
        assert_eq!(
            set.prepare_attach(&mut mem, handle, &mut full, &region, false),
            Err(IommuError::NoDomainId)
        );
        let domain = set.get(handle).unwrap();
        assert!(domain.identity_ranges().is_empty());
        assert_eq!(domain.table.translate(&mem, 0x10_0000), None);
    }

    fn format() -> DomainFormat {
        DomainFormat {
            levels: 3,
            address_width: 39,
            page_sizes: PageSizes::SIZE_4K,
            coherent: true,
        }
    }

    #[test]
    fn domains_identity_and_pending() {
        let mut mem = FakeMemory::new();
        let mut set: DomainSet<TestFormat> = DomainSet::new(format());
        let handle = set.create(&mut mem).unwrap();
        assert_eq!(handle, DomainHandle(1));
        let rw = Access::READ | Access::WRITE;
        let domain = set.get_mut(handle).unwrap();
        let region = [(0x10_0000, 0x2000, rw)];
        domain
            .add_identity(&mut mem, &region, 1 << 39, true)
            .unwrap();
        domain
            .add_identity(&mut mem, &region, 1 << 39, true)
            .unwrap();
        assert_eq!(domain.identity_ranges(), [(0x10_0000, 0x10_2000)]);
        let pending = domain.take_pending();
        assert_eq!(pending.mapped, [(0x10_0000, 0x10_2000)]);
        assert!(pending.dirty);
        // Beyond the aperture, or in the interrupt window: nothing is added.
        let bad = [(0x20_0000, 0x1000, rw), (0xFEE0_0000, 0x1000, rw)];
        assert_eq!(
            domain.add_identity(&mut mem, &bad, 1 << 39, false),
            Err(IommuError::OutOfRange)
        );
        assert_eq!(domain.identity_ranges(), [(0x10_0000, 0x10_2000)]);
        assert!(
            domain.take_pending().unmapped.len() == 1,
            "the rollback is pending"
        );
        // Reserved only: no map.
        domain
            .add_identity(
                &mut mem,
                &[(0x30_0000, 0x1000, Access::empty())],
                1 << 39,
                true,
            )
            .unwrap();
        assert_eq!(domain.table.translate(&mem, 0x30_0000), None);
        // Unmaps leave identity maps alone.
        domain
            .map(&mut mem, 0x40_0000, 0x5000, 0x20_0000, rw, false)
            .unwrap();
        assert_eq!(domain.unmap(&mut mem, 0, 1 << 39).unwrap(), 0x20_0000);
        let _ = domain;
        assert_eq!(set.page_sizes(handle), Ok(1 << 12));
        assert_eq!(set.unmap(&mut mem, handle, 0, 1 << 40), Ok(0), "clamped");
        assert_eq!(
            set.unmap(&mut mem, handle, 1 << 40, 0x1000),
            Ok(0),
            "beyond the aperture"
        );
        assert_eq!(
            set.unmap(&mut mem, handle, 1, 0x1000),
            Err(IommuError::Misaligned)
        );
        let domain = set.get_mut(handle).unwrap();
        assert!(domain.table.translate(&mem, 0x10_0000).is_some());
        assert_eq!(domain.take_pending().merged().len(), 1);
        domain.remove_identity(&mut mem, &region);
        assert!(
            domain.table.translate(&mem, 0x10_0000).is_some(),
            "one user left"
        );
        domain.remove_identity(&mut mem, &region);
        assert_eq!(domain.table.translate(&mem, 0x10_0000), None);
        assert_eq!(
            domain.take_pending().ranges(false),
            [(0x10_0000, 0x10_2000)]
        );

        let mut ids = IdPool::new(4, false);
        assert_eq!(domain.domain_id_on(UnitId(0), &mut ids), Some(1));
        assert_eq!(domain.domain_id_on(UnitId(0), &mut ids), Some(1));
        let mut units = [unit(1, 8), unit(5, 8)];
        assert_eq!(domain.domain_id_on(UnitId(1), &mut units[0].ids), Some(1));
        let mut seen = Vec::new();
        let result = domain.for_each_unit(&mut mem, &mut units, |u, _, did| {
            seen.push((u.id, did));
            Err(IommuError::InvalidationTimeout { unit: u.id })
        });
        assert_eq!(seen, [(UnitId(1), 1)]);
        assert_eq!(
            result,
            Err(IommuError::InvalidationTimeout { unit: UnitId(1) })
        );

        assert_eq!(set.domain_id(handle, UnitId(1)), Some(1));
        assert_eq!(
            set.table_pages(handle),
            Some(set.get(handle).unwrap().table.table_pages())
        );
        assert!(set.table_root(handle).is_some());
        assert_eq!(
            set.translate(&mem, DomainHandle(9), 0),
            Err(IommuError::UnknownDomain)
        );
    }

    #[test]
    fn attach_checks_and_removal() {
        let mut mem = FakeMemory::new();
        let mut set: DomainSet<TestFormat> = DomainSet::new(format());
        let a = set.create(&mut mem).unwrap();
        let b = set.create(&mut mem).unwrap();
        let mut routes = RouteTable::new();
        let dma = DeviceDma {
            device: PciAddress::new(0, 0, 3, 0),
            unit: UnitId(0),
            requester_ids: alloc::vec![0x18],
        };
        assert_eq!(set.check_attach(a, &dma, &[0x18], &routes), Ok(false));
        routes.add(dma.unit, &[0x18], a);
        set.get_mut(a).unwrap().devices.insert(
            dma.device,
            Attached {
                dma: dma.clone(),
                rids: alloc::vec![0x18],
            },
        );
        assert_eq!(set.check_attach(a, &dma, &[0x18], &routes), Ok(true));
        assert_eq!(
            set.check_attach(b, &dma, &[0x18], &routes),
            Err(IommuError::Busy)
        );
        let moved = DeviceDma {
            unit: UnitId(1),
            ..dma.clone()
        };
        assert_eq!(
            set.check_attach(a, &moved, &[0x18], &routes),
            Err(IommuError::Busy)
        );
        let alias = DeviceDma {
            device: PciAddress::new(0, 0, 4, 0),
            ..dma.clone()
        };
        assert_eq!(
            set.check_attach(b, &alias, &[0x18], &routes),
            Err(IommuError::Busy)
        );
        assert_eq!(
            set.attached(a, dma.device).map(|d| d.rids),
            Ok(alloc::vec![0x18])
        );
        assert_eq!(set.attached(b, dma.device), Err(IommuError::UnknownDevice));
        assert!(matches!(set.remove_idle(a), Err(IommuError::Busy)));
        routes.add(dma.unit, &[0x18, 0x19], a);
        let units = [unit(1, 8), unit(2, 8), unit(0, 8)];
        assert_eq!(
            set.detach(a, dma.device, &mut routes, &units[..2]),
            Err(IommuError::UnknownDevice)
        );
        assert_eq!(set.attach_unit(a, UnitId(0), &units), Ok(2));
        assert_eq!(
            set.attach_unit(a, UnitId(7), &units),
            Err(IommuError::UnknownDevice)
        );
        assert_eq!(
            set.attach_unit(DomainHandle(9), UnitId(0), &units),
            Err(IommuError::UnknownDomain)
        );
        let detached = set.detach(a, dma.device, &mut routes, &units).unwrap();
        assert_eq!((detached.index, detached.did), (2, 0));
        assert_eq!(detached.cleared, [] as [u16; 0], "0x18 has a second user");
        assert_eq!(routes.get(dma.unit, 0x18).map(|r| r.users), Some(1));
        assert!(set.remove_idle(a).is_ok());
        let domain = set.remove_idle(b).unwrap();
        DomainSet::dispose(domain, &mut mem);
        assert!(matches!(set.remove_idle(b), Err(IommuError::UnknownDomain)));
    }
}
