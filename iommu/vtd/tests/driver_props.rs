//! Property test of the VT-d driver: random sequences of domain creation/destruction,
//! attach/detach, map/unmap/commit and device DMA against fake units, checked against a
//! page-granular model.
//!
//! After every operation, walking root → context → second-level tables in memory with
//! the test's own walker (`driver_support.rs`) must give exactly the model: every
//! attached requester id has a present context entry naming its domain's id and table,
//! every other requester id is blocked, and every domain's table maps exactly the
//! model's pages. After every commit (and attach/detach, which commit), DMA through the
//! fake unit's caches must agree with the model too: a missing or mis-tagged
//! invalidation shows up as a stale translation.

mod driver_support;

use std::collections::{BTreeMap, BTreeSet};

use driver_support::*;
use proptest::prelude::*;
use sluice_iommu::{Access, DomainHandle, Iommu, IommuError, UnitId};
use sluice_vtd::driver::DriverConfig;

const PAGE: u64 = 0x1000;
const SMALL_BASE: u64 = 0x10_0000;
const BIG_BASE: u64 = 0x4000_0000;
const TWO_MB: u64 = 0x20_0000;

/// (unit, bus, device, function, aliases)
const DEVICES: [(u16, u8, u8, u8, &[u16]); 6] = [
    (0, 0, 3, 0, &[]),
    (0, 0, 4, 0, &[]),
    (0, 1, 0, 0, &[]),
    (1, 0, 5, 0, &[]),
    (1, 2, 1, 0, &[0x0300]),
    (1, 2, 2, 0, &[0x0300]),
];

/// Requester ids never attached: always blocked.
const STRANGERS: [u16; 4] = [0x0000, 0x0019, 0x0108, 0xff07];

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
    /// (unit, bus) that ever got a context table.
    buses: BTreeSet<(u16, u8)>,
}

fn dev(index: usize) -> sluice_iommu::DeviceDma {
    let (unit, bus, d, f, aliases) = DEVICES[index];
    device(unit, bus, d, f, aliases)
}

fn rids(index: usize) -> Vec<u16> {
    let mut rids = dev(index).requester_ids;
    rids.sort_unstable();
    rids.dedup();
    rids
}

struct Harness {
    rig: Rig,
    driver: Driver,
    model: Model,
    levels: u8,
}

impl Harness {
    fn domain(&self, index: usize) -> Option<DomainHandle> {
        if self.model.handles.is_empty() {
            None
        } else {
            Some(self.model.handles[index % self.model.handles.len()])
        }
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
                    self.model
                        .domains
                        .get_mut(&handle)
                        .unwrap()
                        .devices
                        .insert(index);
                    for rid in rids(index) {
                        self.model.buses.insert((device.unit.0, (rid >> 8) as u8));
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
                    self.model
                        .domains
                        .get_mut(&handle)
                        .unwrap()
                        .devices
                        .remove(&index);
                    for rid in rids(index) {
                        let key = (device.unit.0, rid);
                        let route = self.model.routes.get_mut(&key).unwrap();
                        route.1 -= 1;
                        if route.1 == 0 {
                            self.model.routes.remove(&key);
                        }
                    }
                    self.committed(handle)?;
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
            Op::UnmapAll(domain) => self.unmap(domain, 0, 1 << 39)?,
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
                let iova = if page < 64 {
                    SMALL_BASE + page * PAGE
                } else {
                    BIG_BASE + (page - 64) * 0x8_1000
                };
                let _ = self.rig.fakes[usize::from(unit)].dma(rids(device)[0], iova, write);
                let faults = self.driver.take_faults();
                prop_assert!(faults.len() <= 2);
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
            let root = unit.borrow().root.unwrap();
            let mut rids_of_unit: BTreeSet<u16> = STRANGERS.into_iter().collect();
            for (index, &(u, ..)) in DEVICES.iter().enumerate() {
                if u == unit_id {
                    rids_of_unit.extend(rids(index));
                }
            }
            for rid in rids_of_unit {
                let entry = context_of(&mem, root, rid);
                match self.model.routes.get(&(unit_id, rid)) {
                    None => prop_assert!(
                        entry.is_none_or(|(lo, _)| lo & 1 == 0),
                        "unit {} rid {:#x} should be blocked: {:x?}",
                        unit_id,
                        rid,
                        entry
                    ),
                    Some(&(domain, _)) => {
                        let (lo, hi) = entry.unwrap();
                        prop_assert_eq!(lo & 0xfff, 1);
                        prop_assert_eq!(lo & !0xfff, self.driver.table_root(domain).unwrap());
                        prop_assert_eq!(hi & 7, u64::from(self.levels) - 2);
                        let did = self.driver.domain_id(domain, UnitId(unit_id)).unwrap();
                        prop_assert_ne!(did, 0);
                        prop_assert_eq!((hi >> 8) & 0xffff, u64::from(did));
                    }
                }
            }
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
        for (&handle, model) in &self.model.domains {
            let table = self.driver.table_root(handle).unwrap();
            let mut pages = BTreeMap::new();
            for leaf in leaves(&mem, table, self.levels) {
                let mut access = Access::empty();
                access.set(Access::READ, leaf.read);
                access.set(Access::WRITE, leaf.write);
                for i in 0..leaf.size / PAGE {
                    pages.insert(leaf.iova + i * PAGE, (leaf.paddr + i * PAGE, access));
                }
            }
            prop_assert!(
                pages == model.pages,
                "domain {:?}: table differs from model",
                handle
            );
        }
        Ok(())
    }

    /// After a commit of `handle`: DMA through the caches agrees with the model.
    fn committed(&mut self, handle: DomainHandle) -> Result<(), TestCaseError> {
        let model = self.model.domains.get_mut(&handle).unwrap();
        let unmapped = std::mem::take(&mut model.unmapped);
        let model = &self.model.domains[&handle];
        let mut probes: Vec<u64> = model
            .pages
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
                        let got = fake.dma(rid, page + 8, write);
                        let expected = match model.pages.get(&page) {
                            Some(&(paddr, access))
                                if access.contains(if write {
                                    Access::WRITE
                                } else {
                                    Access::READ
                                }) =>
                            {
                                Ok(paddr + 8)
                            }
                            _ => Err(if write { 5 } else { 6 }),
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
                let _ = self.driver.take_faults();
            }
        }
        Ok(())
    }

    /// Tear everything down: every table page comes back.
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
        prop_assert_eq!(
            self.rig.mem.borrow().allocated,
            baseline + self.model.buses.len(),
            "only the context tables remain"
        );
        for unit in 0..self.rig.units.len() as u16 {
            prop_assert_eq!(
                self.driver
                    .unit_info(UnitId(unit))
                    .unwrap()
                    .domain_ids_in_use,
                0
            );
        }
        prop_assert!(
            self.rig.violations().is_empty(),
            "{:?}",
            self.rig.violations()
        );
        Ok(())
    }
}

fn variants(which: usize) -> Vec<(u64, u64)> {
    match which {
        // QEMU 7.2 default next to a caching-mode unit.
        0 => vec![(QEMU_CAP, QEMU_ECAP), (caching_mode(QEMU_CAP), QEMU_ECAP)],
        // aw-bits=48, coherent, tight domain ids.
        1 => vec![
            (aw48(QEMU_CAP), coherent(QEMU_ECAP)),
            (nd(aw48(QEMU_CAP), 1), coherent(QEMU_ECAP)),
        ],
        // Register-based invalidation, write-buffer flushing, no PSI on one unit.
        _ => vec![
            (rwbf(QEMU_CAP), no_qi(QEMU_ECAP)),
            (no_psi(QEMU_CAP), QEMU_ECAP),
        ],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn tables_and_caches_follow_the_model(which in 0..3usize, ops in prop::collection::vec(op(), 1..48)) {
        let config = DriverConfig { max_page_selective: 4, ..DriverConfig::default() };
        let (rig, driver) = driver_with(&variants(which), Vec::new(), config);
        let levels = driver.format().levels;
        let baseline = rig.mem.borrow().allocated;
        let mut harness = Harness { rig, driver, model: Model::default(), levels };
        harness.check_memory()?;
        for op in &ops {
            harness.run(op)?;
        }
        harness.finish(baseline)?;
    }
}
