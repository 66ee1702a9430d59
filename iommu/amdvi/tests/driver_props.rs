//! Property test of the AMD-Vi driver: random sequences of domain creation/destruction,
//! attach/detach, map/unmap/commit and device DMA against two fake IOMMUs, checked
//! against a page-granular model.
//!
//! After every operation, reading the device tables and v1 page tables in memory with the
//! test's own decoding (`driver_support.rs`) must give exactly the model: every attached
//! requester id (IVRS aliases included) has an entry naming its domain's id and table,
//! every other requester id is blocked (empty root, no read permission, domain 0), every
//! entry passes QEMU 7.2's validation, and every domain's table maps exactly the model's
//! pages (plus the IVMD identity map while its device is attached). After every commit
//! (and attach/detach, which commit), DMA through the fake's caches must agree with the
//! model too, for attached and for detached devices: a missing or mis-tagged invalidation
//! shows up as a stale translation.

mod driver_support;

use std::collections::{BTreeMap, BTreeSet};

use driver_support::*;
use proptest::prelude::*;
use sluice_amdvi::driver::DriverConfig;
use sluice_iommu::{Access, DomainHandle, Iommu, IommuError, UnitId};

const PAGE: u64 = 0x1000;
const SMALL_BASE: u64 = 0x10_0000;
const BIG_BASE: u64 = 0x4000_0000;
const TWO_MB: u64 = 0x20_0000;

/// (unit, bus, device, function, aliases given by the caller)
const DEVICES: [(u16, u8, u8, u8, &[u16]); 6] = [
    (0, 0, 3, 0, &[]),
    // The IVMD device: identity map at IVMD_BASE while attached.
    (0, 0, 4, 0, &[]),
    (0, 1, 0, 0, &[0x0108]),
    (1, 0, 5, 0, &[]),
    // Both aliased to 03:00.0 by the IVRS.
    (1, 2, 1, 0, &[]),
    (1, 2, 2, 0, &[]),
];

/// Requester ids never attached: always blocked.
const STRANGERS: [u16; 5] = [0x0000, 0x0019, 0x0110, 0x00a0, 0xff07];

#[derive(Clone, Debug)]
enum Op {
    Create,
    Destroy(usize),
    Attach(usize, usize),
    Detach(usize, usize),
    MapSmall {
        domain: usize,
        slot: u64,
        pages: u64,
        access: u8,
    },
    MapBig {
        domain: usize,
        block: u64,
        blocks: u64,
        access: u8,
    },
    UnmapSmall {
        domain: usize,
        slot: u64,
        pages: u64,
    },
    UnmapBig {
        domain: usize,
        block: u64,
        offset: u64,
        pages: u64,
    },
    UnmapAll(usize),
    Commit(usize),
    Dma {
        device: usize,
        page: u64,
        write: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let d = 0..8usize;
    prop_oneof![
        2 => Just(Op::Create),
        1 => d.clone().prop_map(Op::Destroy),
        3 => (d.clone(), 0..DEVICES.len()).prop_map(|(a, b)| Op::Attach(a, b)),
        2 => (d.clone(), 0..DEVICES.len()).prop_map(|(a, b)| Op::Detach(a, b)),
        4 => (d.clone(), 0..64u64, 1..9u64, 1..4u8).prop_map(|(domain, slot, pages, access)| Op::MapSmall { domain, slot, pages, access }),
        2 => (d.clone(), 0..4u64, 1..3u64, 1..4u8).prop_map(|(domain, block, blocks, access)| Op::MapBig { domain, block, blocks, access }),
        3 => (d.clone(), 0..64u64, 1..9u64).prop_map(|(domain, slot, pages)| Op::UnmapSmall { domain, slot, pages }),
        2 => (d.clone(), 0..4u64, 0..512u64, 1..600u64).prop_map(|(domain, block, offset, pages)| Op::UnmapBig { domain, block, offset, pages }),
        1 => d.clone().prop_map(Op::UnmapAll),
        4 => d.clone().prop_map(Op::Commit),
        3 => (0..DEVICES.len(), 0..80u64, any::<bool>()).prop_map(|(device, page, write)| Op::Dma { device, page, write }),
    ]
}

fn access(bits: u8) -> Access {
    Access::from_bits_truncate(bits)
}

#[derive(Default)]
struct DomainModel {
    /// 4 KiB page → (physical page, access).
    pages: BTreeMap<u64, (u64, Access)>,
    devices: BTreeSet<usize>,
    /// Pages unmapped since the last commit.
    unmapped: BTreeSet<u64>,
}

#[derive(Default)]
struct Model {
    handles: Vec<DomainHandle>,
    domains: BTreeMap<DomainHandle, DomainModel>,
    device_domain: BTreeMap<usize, DomainHandle>,
    /// (unit, rid) → (domain, users)
    routes: BTreeMap<(u16, u16), (DomainHandle, u32)>,
}

fn dev(index: usize) -> sluice_iommu::DeviceDma {
    let (unit, bus, d, f, aliases) = DEVICES[index];
    device(unit, bus, d, f, aliases)
}

/// Every requester id the driver must write for device `index`: its own, the caller's
/// aliases and the IVRS alias (03:00.0 for 02:01.0 and 02:02.0).
fn rids(index: usize) -> Vec<u16> {
    let mut rids = dev(index).requester_ids;
    if index == 4 || index == 5 {
        rids.push(rid(3, 0, 0));
    }
    rids.sort_unstable();
    rids.dedup();
    rids
}

fn identity_pages() -> impl Iterator<Item = (u64, (u64, Access))> {
    (0..IVMD_SIZE / PAGE).map(|i| {
        let page = IVMD_BASE + i * PAGE;
        (page, (page, Access::READ | Access::WRITE))
    })
}

struct Harness {
    rig: Rig,
    driver: Driver,
    model: Model,
    blocking_roots: Vec<u64>,
}

impl Harness {
    fn domain(&self, index: usize) -> Option<DomainHandle> {
        if self.model.handles.is_empty() {
            None
        } else {
            Some(self.model.handles[index % self.model.handles.len()])
        }
    }

    /// The model's pages of `handle`, the identity map included when its device is in.
    fn expected_pages(&self, handle: DomainHandle) -> BTreeMap<u64, (u64, Access)> {
        let model = &self.model.domains[&handle];
        let mut pages = model.pages.clone();
        if model.devices.contains(&1) {
            pages.extend(identity_pages());
        }
        pages
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Create => {
                let handle = self.driver.create_domain().unwrap();
                self.model.handles.push(handle);
                self.model.domains.insert(handle, DomainModel::default());
            }
            Op::Destroy(d) => {
                let Some(handle) = self.domain(d) else {
                    return Ok(());
                };
                let result = self.driver.destroy_domain(handle);
                match self.model.domains.get(&handle) {
                    None => prop_assert_eq!(result, Err(IommuError::UnknownDomain)),
                    Some(m) if !m.devices.is_empty() => {
                        prop_assert_eq!(result, Err(IommuError::Busy))
                    }
                    Some(_) => {
                        prop_assert_eq!(result, Ok(()));
                        self.model.domains.remove(&handle);
                    }
                }
            }
            Op::Attach(d, index) => {
                let Some(handle) = self.domain(d) else {
                    return Ok(());
                };
                let device = dev(index);
                let result = self.driver.attach(handle, &device);
                let expected = if !self.model.domains.contains_key(&handle) {
                    Err(IommuError::UnknownDomain)
                } else if let Some(&current) = self.model.device_domain.get(&index) {
                    if current == handle {
                        Ok(false)
                    } else {
                        Err(IommuError::Busy)
                    }
                } else if rids(index).iter().any(|&rid| {
                    self.model
                        .routes
                        .get(&(device.unit.0, rid))
                        .is_some_and(|&(domain, _)| domain != handle)
                }) {
                    Err(IommuError::Busy)
                } else {
                    Ok(true)
                };
                prop_assert_eq!(result, expected.map(|_| ()));
                if expected == Ok(true) {
                    self.model.device_domain.insert(index, handle);
                    let model = self.model.domains.get_mut(&handle).unwrap();
                    model.devices.insert(index);
                    for rid in rids(index) {
                        self.model
                            .routes
                            .entry((device.unit.0, rid))
                            .and_modify(|r| r.1 += 1)
                            .or_insert((handle, 1));
                    }
                }
                if result.is_ok() {
                    self.committed(handle)?;
                }
            }
            Op::Detach(d, index) => {
                let Some(handle) = self.domain(d) else {
                    return Ok(());
                };
                let device = dev(index);
                let result = self.driver.detach(handle, &device);
                if !self.model.domains.contains_key(&handle) {
                    prop_assert_eq!(result, Err(IommuError::UnknownDomain));
                } else if self.model.device_domain.get(&index) != Some(&handle) {
                    prop_assert_eq!(result, Err(IommuError::UnknownDevice));
                } else {
                    prop_assert_eq!(result, Ok(()));
                    self.model.device_domain.remove(&index);
                    let model = self.model.domains.get_mut(&handle).unwrap();
                    model.devices.remove(&index);
                    if index == 1 && !model.devices.contains(&1) {
                        // The identity map went: its pages count as unmapped.
                        model.unmapped.extend(identity_pages().map(|(p, _)| p));
                    }
                    let mut released = Vec::new();
                    for rid in rids(index) {
                        let key = (device.unit.0, rid);
                        let route = self.model.routes.get_mut(&key).unwrap();
                        route.1 -= 1;
                        if route.1 == 0 {
                            self.model.routes.remove(&key);
                            released.push(rid);
                        }
                    }
                    self.committed(handle)?;
                    self.detached(device.unit.0, &released)?;
                }
            }
            Op::MapSmall {
                domain,
                slot,
                pages,
                access: bits,
            } => {
                let iova = SMALL_BASE + slot * PAGE;
                let paddr = 0x5_0000_0000 + (slot << 16);
                self.map(domain, iova, paddr, pages * PAGE, access(bits))?;
            }
            Op::MapBig {
                domain,
                block,
                blocks,
                access: bits,
            } => {
                let iova = BIG_BASE + block * TWO_MB;
                let paddr = 0x6_0000_0000 + block * 0x1000_0000;
                self.map(domain, iova, paddr, blocks * TWO_MB, access(bits))?;
            }
            Op::UnmapSmall {
                domain,
                slot,
                pages,
            } => self.unmap(domain, SMALL_BASE + slot * PAGE, pages * PAGE)?,
            Op::UnmapBig {
                domain,
                block,
                offset,
                pages,
            } => self.unmap(
                domain,
                BIG_BASE + block * TWO_MB + offset * PAGE,
                pages * PAGE,
            )?,
            Op::UnmapAll(domain) => self.unmap(domain, 0, 1 << 48)?,
            Op::Commit(d) => {
                let Some(handle) = self.domain(d) else {
                    return Ok(());
                };
                let result = self.driver.commit(handle);
                if self.model.domains.contains_key(&handle) {
                    prop_assert_eq!(result, Ok(()));
                    self.committed(handle)?;
                } else {
                    prop_assert_eq!(result, Err(IommuError::UnknownDomain));
                }
            }
            Op::Dma {
                device,
                page,
                write,
            } => {
                // Fills the unit's caches (possibly with what a later commit must drop).
                let (unit, ..) = DEVICES[device];
                let iova = probe_iova(page);
                for rid in rids(device) {
                    let _ = self.rig.fakes[usize::from(unit)].dma(rid, iova, write);
                }
                let faults = self.driver.take_faults();
                prop_assert!(faults.len() <= 16, "bounded per unit and call");
            }
        }
        self.check_memory()
    }

    fn map(
        &mut self,
        d: usize,
        iova: u64,
        paddr: u64,
        size: u64,
        access: Access,
    ) -> Result<(), TestCaseError> {
        let Some(handle) = self.domain(d) else {
            return Ok(());
        };
        let result = self.driver.map(handle, iova, paddr, size, access);
        let Some(model) = self.model.domains.get_mut(&handle) else {
            prop_assert_eq!(result, Err(IommuError::UnknownDomain));
            return Ok(());
        };
        let pages: Vec<u64> = (0..size / PAGE).map(|i| iova + i * PAGE).collect();
        if let Some(&first) = pages.iter().find(|p| model.pages.contains_key(p)) {
            prop_assert_eq!(result, Err(IommuError::Overlap { iova: first }));
        } else {
            prop_assert_eq!(result, Ok(()));
            for (i, page) in pages.into_iter().enumerate() {
                model.pages.insert(page, (paddr + i as u64 * PAGE, access));
                model.unmapped.remove(&page);
            }
        }
        Ok(())
    }

    fn unmap(&mut self, d: usize, iova: u64, size: u64) -> Result<(), TestCaseError> {
        let Some(handle) = self.domain(d) else {
            return Ok(());
        };
        let result = self.driver.unmap(handle, iova, size);
        let Some(model) = self.model.domains.get_mut(&handle) else {
            prop_assert_eq!(result, Err(IommuError::UnknownDomain));
            return Ok(());
        };
        let gone: Vec<u64> = model
            .pages
            .range(iova..iova + size)
            .map(|(&p, _)| p)
            .collect();
        prop_assert_eq!(result, Ok(gone.len() as u64 * PAGE));
        for page in gone {
            model.pages.remove(&page);
            model.unmapped.insert(page);
        }
        Ok(())
    }

    /// Memory-level invariant, after every operation.
    fn check_memory(&self) -> Result<(), TestCaseError> {
        let mem = self.rig.mem.borrow();
        for (unit_index, unit) in self.rig.units.iter().enumerate() {
            let unit_id = unit_index as u16;
            let table = unit.borrow().devtab_base();
            let mut rids_of_unit: BTreeSet<u16> = STRANGERS.into_iter().collect();
            for (index, &(u, ..)) in DEVICES.iter().enumerate() {
                if u == unit_id {
                    rids_of_unit.extend(rids(index));
                }
            }
            for rid in rids_of_unit {
                let dte = dte_of(&mem, table, rid);
                prop_assert!(qemu72_accepts(&dte), "QEMU 7.2 rejects {:x?}", dte);
                prop_assert_eq!(dte[0] & 3, 3, "V and TV");
                prop_assert_eq!((dte[0] >> 9) & 7, 4, "Mode 4");
                prop_assert_eq!(dte[3], 0);
                match self.model.routes.get(&(unit_id, rid)) {
                    None => {
                        prop_assert_eq!(
                            dte[0] & ADDR,
                            self.blocking_roots[unit_index],
                            "unit {} rid {:#x} should be blocked: {:x?}",
                            unit_id,
                            rid,
                            dte
                        );
                        prop_assert_eq!(dte[0] & IR, 0);
                        prop_assert_eq!(dte[1] & 0xffff, 0);
                    }
                    Some(&(domain, _)) => {
                        prop_assert_eq!(dte[0] & ADDR, self.driver.table_root(domain).unwrap());
                        prop_assert_eq!(dte[0] & (IR | IW), IR | IW);
                        let did = self.driver.domain_id(domain, UnitId(unit_id)).unwrap();
                        prop_assert_ne!(did, 0);
                        prop_assert_eq!(did & 0x100, 0);
                        prop_assert_eq!(dte[1] & 0xffff, u64::from(did));
                    }
                }
            }
            // The blocking root stays empty.
            let root = self.blocking_roots[unit_index];
            prop_assert!((0..512).all(|i| mem.read(root + i * 8) == 0));
        }
        // Domain ids of live domains are distinct per unit.
        for unit in 0..self.rig.units.len() as u16 {
            let ids: Vec<u16> = self
                .model
                .domains
                .keys()
                .filter_map(|&d| self.driver.domain_id(d, UnitId(unit)))
                .collect();
            let distinct: BTreeSet<u16> = ids.iter().copied().collect();
            prop_assert_eq!(ids.len(), distinct.len());
        }
        for &handle in self.model.domains.keys() {
            let table = self.driver.table_root(handle).unwrap();
            let mut pages = BTreeMap::new();
            for leaf in leaves(&mem, table, 4) {
                let mut access = Access::empty();
                access.set(Access::READ, leaf.read);
                access.set(Access::WRITE, leaf.write);
                for i in 0..leaf.size / PAGE {
                    pages.insert(leaf.iova + i * PAGE, (leaf.paddr + i * PAGE, access));
                }
            }
            prop_assert!(
                pages == self.expected_pages(handle),
                "domain {:?}: table differs from model",
                handle
            );
        }
        Ok(())
    }

    /// After a commit of `handle`: DMA through the caches agrees with the model for every
    /// requester id of every device attached to it.
    fn committed(&mut self, handle: DomainHandle) -> Result<(), TestCaseError> {
        let model = self.model.domains.get_mut(&handle).unwrap();
        let unmapped = std::mem::take(&mut model.unmapped);
        let expected = self.expected_pages(handle);
        let model = &self.model.domains[&handle];
        let mut probes: Vec<u64> = expected
            .keys()
            .copied()
            .filter(|&p| {
                p < BIG_BASE || (p - BIG_BASE) % 0x8_1000 < PAGE || p % TWO_MB == TWO_MB - PAGE
            })
            .collect();
        probes.extend(unmapped.iter().copied().take(64));
        for &index in &model.devices {
            let (unit, ..) = DEVICES[index];
            let fake = &self.rig.fakes[usize::from(unit)];
            for rid in rids(index) {
                for &page in &probes {
                    for write in [false, true] {
                        let got = fake.dma(rid, page + 8, write).ok();
                        let wanted = if write { Access::WRITE } else { Access::READ };
                        let expected = match expected.get(&page) {
                            Some(&(paddr, access)) if access.contains(wanted) => Some(paddr + 8),
                            _ => None,
                        };
                        prop_assert_eq!(
                            got,
                            expected,
                            "rid {:#x} page {:#x} write {}",
                            rid,
                            page,
                            write
                        );
                    }
                }
            }
        }
        let _ = self.driver.take_faults();
        Ok(())
    }

    /// After a detach: the released requester ids reach nothing, cached or not.
    fn detached(&mut self, unit: u16, released: &[u16]) -> Result<(), TestCaseError> {
        let fake = &self.rig.fakes[usize::from(unit)];
        for &rid in released {
            for page in (0..80).map(probe_iova).chain([IVMD_BASE]) {
                for write in [false, true] {
                    prop_assert!(
                        fake.dma(rid, page, write).is_err(),
                        "detached rid {:#x} still reaches {:#x}",
                        rid,
                        page
                    );
                }
            }
        }
        let _ = self.driver.take_faults();
        Ok(())
    }

    /// Tear everything down: every table page comes back, every id too.
    fn finish(mut self, baseline: usize) -> Result<(), TestCaseError> {
        let attached: Vec<(usize, DomainHandle)> = self
            .model
            .device_domain
            .iter()
            .map(|(&i, &d)| (i, d))
            .collect();
        for (index, domain) in attached {
            prop_assert_eq!(self.driver.detach(domain, &dev(index)), Ok(()));
        }
        let live: Vec<DomainHandle> = self.model.domains.keys().copied().collect();
        for domain in live {
            prop_assert_eq!(self.driver.destroy_domain(domain), Ok(()));
        }
        self.model.domains.clear();
        self.model.routes.clear();
        self.check_memory()?;
        prop_assert_eq!(self.rig.mem.borrow().allocated, baseline, "no table leaked");
        for unit in 0..self.rig.units.len() as u16 {
            let info = self.driver.unit_info(UnitId(unit)).unwrap();
            prop_assert_eq!(info.domain_ids_in_use, 0);
            prop_assert_eq!(info.failure, None);
        }
        prop_assert!(
            self.rig.violations().is_empty(),
            "{:?}",
            self.rig.violations()
        );
        Ok(())
    }
}

fn probe_iova(page: u64) -> u64 {
    if page < 64 {
        SMALL_BASE + page * PAGE
    } else {
        BIG_BASE + (page - 64) * 0x8_1000
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tables_and_caches_follow_the_model(
        qemu_events in any::<bool>(),
        ops in prop::collection::vec(op(), 1..48),
    ) {
        let config = DriverConfig {
            max_page_selective: 4,
            max_events_per_call: 8,
            ..DriverConfig::default()
        };
        let (rig, driver) = two_units_with([QEMU_EFR, QEMU_EFR], config);
        for unit in &rig.units {
            unit.borrow_mut().qemu_events = qemu_events;
        }
        let blocking_roots = (0..2)
            .map(|u| driver.unit_info(UnitId(u)).unwrap().blocking_root)
            .collect();
        // Bring-up writes 65536 entries per unit: do not log memory writes here.
        rig.mem.borrow_mut().log_writes = false;
        let baseline = rig.mem.borrow().allocated;
        let mut harness = Harness { rig, driver, model: Model::default(), blocking_roots };
        harness.check_memory()?;
        for op in &ops {
            harness.run(op)?;
        }
        harness.finish(baseline)?;
    }
}
