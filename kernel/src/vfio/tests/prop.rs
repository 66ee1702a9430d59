//! Random call sequences from two guests, with real, stale, foreign and forged handles,
//! checked step by step against a small model of the semantics:
//!
//! - every result (value kind or errno) is the model's;
//! - the fake IOMMU holds exactly the model's mappings for exactly the functions of
//!   groups in active containers (and nothing else is attached);
//! - each guest's region mappings are the model's;
//! - a call by one guest never changes what the other guest sees (its attached
//!   functions' mappings, its region mappings, and what its handles answer).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;
use sluice_abi::Errno;
use sluice_abi::vfio::{DmaMap, DmaUnmap, RegionMap, VfioCall, extension};
use sluice_pci::PciAddress;

use super::fakes::{AttachedView, FakeRam};
use super::*;

/// Device names GET_DEVICE is tried with (members, bridges, other groups', garbage).
const NAMES: [&str; 8] = [
    "0000:00:02.0",
    "0000:01:00.0",
    "0000:00:1c.0",
    "0000:00:03.0",
    "0000:00:04.0",
    "0000:02:01.0",
    "0000:00:1f.2",
    "bogus",
];
/// `GetDevice` with this name index: the name of a non-bridge function of the group
/// the handle names (resolved by the harness), else the first name.
const MEMBER: usize = usize::MAX;
const REGION_BASE: u64 = 0x1_0000_0000;
const REGION_SIZE: u64 = 0x2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Container,
    Group,
    Device,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sel {
    /// One of the caller's live handles of this kind (the model knows which), counted
    /// from the most recent.
    Live(Kind, usize),
    /// Any handle the caller received, live or closed.
    AnyOwn(usize),
    /// One of the handles the other guest received.
    Other(usize),
    Forged(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Create,
    Open(u64),
    Set(Sel, Sel),
    Unset(Sel),
    SetIommu(Sel, u64),
    Close(Sel),
    GetDevice(Sel, usize),
    Map {
        c: Sel,
        iova_page: u64,
        pages: u64,
        vaddr_page: u64,
        flags: u32,
    },
    Unmap {
        c: Sel,
        iova_page: u64,
        pages: u64,
        all: bool,
    },
    MapRegion(Sel, u64),
    /// GROUP_BIND_VM, GROUP_UNBIND_VM, GROUP_VM_INFO.
    Bind(Sel),
    Unbind(Sel),
    VmInfo(Sel),
    /// The guest ends and is started again with the same grants.
    Restart,
}

/// A handle argument that should be of `kind` (mostly is).
fn sel(kind: Kind) -> impl Strategy<Value = Sel> {
    let recent = prop_oneof![4 => 0..2usize, 1 => 0..16usize];
    prop_oneof![
        12 => recent.prop_map(move |i| Sel::Live(kind, i)),
        1 => (0..16usize).prop_map(Sel::AnyOwn),
        1 => (0..16usize).prop_map(Sel::Other),
        1 => prop_oneof![
            Just(0u64),
            Just(1u64),
            Just(u64::MAX),
            any::<u64>(),
            (1..4u64, 1..8u64).prop_map(|(g, s)| g << 16 | s),
        ]
        .prop_map(Sel::Forged),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Create),
        6 => prop_oneof![4 => proptest::sample::select(vec![1u64, 2, 3, 5, 6]), 1 => 0..8u64].prop_map(Op::Open),
        8 => (sel(Kind::Group), sel(Kind::Container)).prop_map(|(g, c)| Op::Set(g, c)),
        1 => sel(Kind::Group).prop_map(Op::Unset),
        5 => (sel(Kind::Container), prop_oneof![4 => Just(3u64), 1 => Just(1u64)]).prop_map(|(c, t)| Op::SetIommu(c, t)),
        1 => sel(Kind::Container).prop_map(Op::Close),
        1 => sel(Kind::Group).prop_map(Op::Close),
        1 => sel(Kind::Device).prop_map(Op::Close),
        5 => (sel(Kind::Group), prop_oneof![3 => Just(MEMBER), 1 => 0..NAMES.len()]).prop_map(|(g, n)| Op::GetDevice(g, n)),
        10 => (sel(Kind::Container), 0..16u64, 1..4u64, 0..1030u64, prop_oneof![8 => 1..4u32, 1 => Just(0u32), 1 => Just(4u32)])
            .prop_map(|(c, iova_page, pages, vaddr_page, flags)| Op::Map { c, iova_page, pages, vaddr_page, flags }),
        5 => (sel(Kind::Container), 0..18u64, 1..6u64, prop_oneof![5 => Just(false), 1 => Just(true)])
            .prop_map(|(c, iova_page, pages, all)| Op::Unmap { c, iova_page, pages, all }),
        4 => (sel(Kind::Device), 0..4u64).prop_map(|(d, slot)| Op::MapRegion(d, slot)),
        3 => sel(Kind::Group).prop_map(Op::Bind),
        2 => sel(Kind::Group).prop_map(Op::Unbind),
        1 => sel(Kind::Group).prop_map(Op::VmInfo),
        1 => Just(Op::Restart),
    ]
}

// ---------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MObj {
    Container(u32),
    Group(u32),
    Device(u32),
}

#[derive(Clone, Debug)]
struct MFunction {
    address: PciAddress,
    bridge: bool,
    /// BAR0 `(address, size)` when mappable.
    bar0: Option<(u64, u64)>,
}

#[derive(Clone, Debug)]
struct MGroup {
    functions: Vec<MFunction>,
    viable: bool,
    owner: Option<MOwner>,
}

#[derive(Clone, Debug)]
struct MOwner {
    guest: GuestId,
    handle_open: bool,
    /// Bound to the VM (GROUP_BIND_VM).
    bound: bool,
    container: Option<u32>,
    open: BTreeSet<PciAddress>,
}

#[derive(Clone, Debug)]
struct MContainer {
    owner: GuestId,
    handle_open: bool,
    groups: BTreeSet<u32>,
    active: bool,
    /// iova → (size, vaddr).
    mappings: BTreeMap<u64, (u64, u64)>,
}

#[derive(Clone, Debug)]
struct MDevice {
    group: u32,
    address: PciAddress,
    /// (gpa, size, hpa).
    regions: Vec<(u64, u64, u64)>,
}

struct Model {
    groups: BTreeMap<u32, MGroup>,
    grants: BTreeMap<GuestId, BTreeSet<u32>>,
    containers: BTreeMap<u32, MContainer>,
    devices: BTreeMap<u32, MDevice>,
    handles: BTreeMap<GuestId, BTreeMap<u64, MObj>>,
    next: u32,
}

/// What the model says a call does: fails, succeeds with 0 or a count, or succeeds with
/// a new handle.
enum Outcome {
    Err(Errno),
    Ok,
    Handle,
}

fn initial_grants(guest: GuestId) -> BTreeSet<u32> {
    if guest == A {
        [1, 2, 3, 4, 6].into()
    } else {
        [2, 3, 5].into()
    }
}

impl Model {
    fn new() -> Self {
        let groups = super::groups()
            .into_iter()
            .map(|g| {
                let functions = g
                    .devices
                    .iter()
                    .map(|f| MFunction {
                        address: f.address,
                        bridge: f.bridge,
                        bar0: f
                            .bars
                            .iter()
                            .find(|b| b.index == 0)
                            .filter(|b| b.size >= 4096 && b.address != 0)
                            .map(|b| (b.address, b.size)),
                    })
                    .collect();
                let viable = !g.devices.iter().any(|f| f.host_owned && !f.bridge);
                (
                    g.id,
                    MGroup {
                        functions,
                        viable,
                        owner: None,
                    },
                )
            })
            .collect();
        Self {
            groups,
            grants: [(A, initial_grants(A)), (B, initial_grants(B))].into(),
            containers: BTreeMap::new(),
            devices: BTreeMap::new(),
            handles: [(A, BTreeMap::new()), (B, BTreeMap::new())].into(),
            next: 1,
        }
    }

    fn lookup(&self, guest: GuestId, h: u64) -> Result<MObj, Errno> {
        self.handles[&guest].get(&h).copied().ok_or(Errno::EBADF)
    }

    fn full(&self, guest: GuestId) -> bool {
        self.handles[&guest].len() >= crate::vfio::MAX_HANDLES
    }

    fn predict(&self, guest: GuestId, op: &Op, h: &dyn Fn(Sel) -> u64) -> Outcome {
        match self.predict_inner(guest, op, h) {
            Ok(o) => o,
            Err(e) => Outcome::Err(e),
        }
    }

    fn container(&self, guest: GuestId, s: u64) -> Result<u32, Errno> {
        match self.lookup(guest, s)? {
            MObj::Container(c) => Ok(c),
            _ => Err(Errno::ENOTTY),
        }
    }

    fn group(&self, guest: GuestId, s: u64) -> Result<u32, Errno> {
        match self.lookup(guest, s)? {
            MObj::Group(g) => Ok(g),
            _ => Err(Errno::ENOTTY),
        }
    }

    fn predict_inner(
        &self,
        guest: GuestId,
        op: &Op,
        h: &dyn Fn(Sel) -> u64,
    ) -> Result<Outcome, Errno> {
        Ok(match *op {
            Op::Create => {
                if self.full(guest) {
                    return Err(Errno::ENOSPC);
                }
                Outcome::Handle
            }
            Op::Open(id) => {
                let id32 = id as u32;
                let group = self.groups.get(&id32).ok_or(Errno::ENOENT)?;
                if !self.grants[&guest].contains(&id32) {
                    return Err(Errno::EPERM);
                }
                if group.owner.is_some() {
                    return Err(Errno::EBUSY);
                }
                if self.full(guest) {
                    return Err(Errno::ENOSPC);
                }
                Outcome::Handle
            }
            Op::Set(g, c) => {
                let g = self.group(guest, h(g))?;
                match self.lookup(guest, h(c))? {
                    MObj::Container(_) => {}
                    _ => return Err(Errno::EINVAL),
                }
                let group = &self.groups[&g];
                if group.owner.as_ref().unwrap().container.is_some() {
                    return Err(Errno::EINVAL);
                }
                if !group.viable {
                    return Err(Errno::EPERM);
                }
                Outcome::Ok
            }
            Op::Unset(g) => {
                let g = self.group(guest, h(g))?;
                let owner = self.groups[&g].owner.as_ref().unwrap();
                if owner.container.is_none() {
                    return Err(Errno::EINVAL);
                }
                if !owner.open.is_empty() || owner.bound {
                    return Err(Errno::EBUSY);
                }
                Outcome::Ok
            }
            Op::Bind(g) => {
                let g = self.group(guest, h(g))?;
                let group = &self.groups[&g];
                let owner = group.owner.as_ref().unwrap();
                if !owner.container.is_some_and(|c| self.containers[&c].active) {
                    return Err(Errno::EINVAL);
                }
                if !group.viable {
                    return Err(Errno::EPERM);
                }
                if owner.bound {
                    return Err(Errno::EBUSY);
                }
                Outcome::Ok
            }
            Op::Unbind(g) | Op::VmInfo(g) => {
                let g = self.group(guest, h(g))?;
                if !self.groups[&g].owner.as_ref().unwrap().bound {
                    return Err(Errno::EINVAL);
                }
                Outcome::Ok
            }
            Op::SetIommu(c, ty) => {
                let c = self.container(guest, h(c))?;
                let container = &self.containers[&c];
                if container.groups.is_empty() || container.active {
                    return Err(Errno::EINVAL);
                }
                if ty != extension::TYPE1V2_IOMMU {
                    return Err(Errno::ENODEV);
                }
                Outcome::Ok
            }
            Op::Close(s) => {
                self.lookup(guest, h(s))?;
                Outcome::Ok
            }
            Op::GetDevice(g, name) => {
                let g = self.group(guest, h(g))?;
                let group = &self.groups[&g];
                let address = sluice_abi::vfio::parse_device_name(NAMES[name].as_bytes())
                    .map(|(s, b, df)| PciAddress::new(s, b, df >> 3, df & 7))
                    .ok_or(Errno::ENODEV)?;
                group
                    .functions
                    .iter()
                    .find(|f| f.address == address && !f.bridge)
                    .ok_or(Errno::ENODEV)?;
                let owner = group.owner.as_ref().unwrap();
                let active = owner.container.is_some_and(|c| self.containers[&c].active);
                if !active {
                    return Err(Errno::EINVAL);
                }
                if owner.open.contains(&address) {
                    return Err(Errno::EBUSY);
                }
                if self.full(guest) {
                    return Err(Errno::ENOSPC);
                }
                Outcome::Handle
            }
            Op::Map {
                c,
                iova_page,
                pages,
                vaddr_page,
                flags,
            } => {
                let c = self.container(guest, h(c))?;
                let container = &self.containers[&c];
                if !container.active || flags == 0 || flags & !3 != 0 {
                    return Err(Errno::EINVAL);
                }
                let (iova, size, vaddr) = (iova_page * 4096, pages * 4096, vaddr_page * 4096);
                if vaddr + size > RAM_SIZE {
                    return Err(Errno::EFAULT);
                }
                if container
                    .mappings
                    .iter()
                    .any(|(&i, &(s, _))| i < iova + size && iova < i + s)
                {
                    return Err(Errno::EEXIST);
                }
                // The pinned-memory limit (never reached with these sizes, kept for
                // the model's completeness).
                let pinned: u64 = container.mappings.values().map(|&(s, _)| s).sum();
                if pinned + size > RAM_SIZE {
                    return Err(Errno::ENOMEM);
                }
                Outcome::Ok
            }
            Op::Unmap {
                c,
                iova_page,
                pages,
                all,
            } => {
                let c = self.container(guest, h(c))?;
                let container = &self.containers[&c];
                if !container.active {
                    return Err(Errno::EINVAL);
                }
                if !all {
                    let (iova, end) = (iova_page * 4096, (iova_page + pages) * 4096);
                    let cuts = container.mappings.iter().any(|(&i, &(s, _))| {
                        (i < iova && iova < i + s) || (i < end && end < i + s)
                    });
                    if cuts {
                        return Err(Errno::EINVAL);
                    }
                }
                Outcome::Ok
            }
            Op::MapRegion(d, slot) => {
                let d = match self.lookup(guest, h(d))? {
                    MObj::Device(d) => d,
                    _ => return Err(Errno::ENOTTY),
                };
                let device = &self.devices[&d];
                let function = self.groups[&device.group]
                    .functions
                    .iter()
                    .find(|f| f.address == device.address)
                    .unwrap();
                match function.bar0 {
                    Some((_, size)) if size >= REGION_SIZE => {}
                    _ => return Err(Errno::EINVAL),
                }
                // BARs into the VM need the binding; unbinding keeps what is mapped.
                if !self.groups[&device.group].owner.as_ref().unwrap().bound {
                    return Err(Errno::EPERM);
                }
                let gpa = REGION_BASE + slot * 4096;
                let taken = self
                    .guest_regions(guest)
                    .iter()
                    .any(|&(g, s, _)| g < gpa + REGION_SIZE && gpa < g + s);
                if taken {
                    return Err(Errno::EEXIST);
                }
                Outcome::Ok
            }
            Op::Restart => Outcome::Ok,
        })
    }

    fn guest_regions(&self, guest: GuestId) -> Vec<(u64, u64, u64)> {
        self.handles[&guest]
            .values()
            .filter_map(|o| match o {
                MObj::Device(d) => Some(self.devices[d].regions.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Apply a call the model predicted to succeed; `handle` is what the real call
    /// returned.
    fn apply(&mut self, guest: GuestId, op: &Op, h: &dyn Fn(Sel) -> u64, handle: u64) {
        match *op {
            Op::Create => {
                let c = self.next;
                self.next += 1;
                self.containers.insert(
                    c,
                    MContainer {
                        owner: guest,
                        handle_open: true,
                        groups: BTreeSet::new(),
                        active: false,
                        mappings: BTreeMap::new(),
                    },
                );
                self.handles
                    .get_mut(&guest)
                    .unwrap()
                    .insert(handle, MObj::Container(c));
            }
            Op::Open(id) => {
                let id = id as u32;
                self.groups.get_mut(&id).unwrap().owner = Some(MOwner {
                    guest,
                    handle_open: true,
                    bound: false,
                    container: None,
                    open: BTreeSet::new(),
                });
                self.handles
                    .get_mut(&guest)
                    .unwrap()
                    .insert(handle, MObj::Group(id));
            }
            Op::Set(g, c) => {
                let MObj::Group(g) = self.lookup(guest, h(g)).unwrap() else {
                    unreachable!()
                };
                let MObj::Container(c) = self.lookup(guest, h(c)).unwrap() else {
                    unreachable!()
                };
                self.groups
                    .get_mut(&g)
                    .unwrap()
                    .owner
                    .as_mut()
                    .unwrap()
                    .container = Some(c);
                self.containers.get_mut(&c).unwrap().groups.insert(g);
            }
            Op::Unset(g) => {
                let MObj::Group(g) = self.lookup(guest, h(g)).unwrap() else {
                    unreachable!()
                };
                self.leave(g);
            }
            Op::SetIommu(c, _) => {
                let MObj::Container(c) = self.lookup(guest, h(c)).unwrap() else {
                    unreachable!()
                };
                self.containers.get_mut(&c).unwrap().active = true;
            }
            Op::Close(s) => {
                let object = self.handles.get_mut(&guest).unwrap().remove(&h(s)).unwrap();
                self.close(object);
            }
            Op::GetDevice(g, name) => {
                let MObj::Group(g) = self.lookup(guest, h(g)).unwrap() else {
                    unreachable!()
                };
                let (s, b, df) =
                    sluice_abi::vfio::parse_device_name(NAMES[name].as_bytes()).unwrap();
                let address = PciAddress::new(s, b, df >> 3, df & 7);
                let d = self.next;
                self.next += 1;
                self.devices.insert(
                    d,
                    MDevice {
                        group: g,
                        address,
                        regions: vec![],
                    },
                );
                let owner = self.groups.get_mut(&g).unwrap().owner.as_mut().unwrap();
                owner.open.insert(address);
                self.handles
                    .get_mut(&guest)
                    .unwrap()
                    .insert(handle, MObj::Device(d));
            }
            Op::Map {
                c,
                iova_page,
                pages,
                vaddr_page,
                ..
            } => {
                let MObj::Container(c) = self.lookup(guest, h(c)).unwrap() else {
                    unreachable!()
                };
                let container = self.containers.get_mut(&c).unwrap();
                container
                    .mappings
                    .insert(iova_page * 4096, (pages * 4096, vaddr_page * 4096));
            }
            Op::Unmap {
                c,
                iova_page,
                pages,
                all,
            } => {
                let MObj::Container(c) = self.lookup(guest, h(c)).unwrap() else {
                    unreachable!()
                };
                let container = self.containers.get_mut(&c).unwrap();
                let (iova, end) = (iova_page * 4096, (iova_page + pages) * 4096);
                container
                    .mappings
                    .retain(|&i, &mut (s, _)| !(all || (iova <= i && i + s <= end)));
            }
            Op::MapRegion(d, slot) => {
                let MObj::Device(d) = self.lookup(guest, h(d)).unwrap() else {
                    unreachable!()
                };
                let device = &self.devices[&d];
                let function = self.groups[&device.group]
                    .functions
                    .iter()
                    .find(|f| f.address == device.address)
                    .unwrap();
                let (bar, _) = function.bar0.unwrap();
                let gpa = REGION_BASE + slot * 4096;
                self.devices
                    .get_mut(&d)
                    .unwrap()
                    .regions
                    .push((gpa, REGION_SIZE, bar));
            }
            Op::Bind(g) | Op::Unbind(g) => {
                let MObj::Group(g) = self.lookup(guest, h(g)).unwrap() else {
                    unreachable!()
                };
                let owner = self.groups.get_mut(&g).unwrap().owner.as_mut().unwrap();
                // Unbinding needs the group's handle: the group stays open.
                owner.bound = matches!(op, Op::Bind(_));
            }
            Op::VmInfo(_) => {}
            Op::Restart => {
                // Bindings first: a bound group whose handle is closed goes here.
                let owned: Vec<u32> = self
                    .groups
                    .iter()
                    .filter(|(_, g)| g.owner.as_ref().is_some_and(|o| o.guest == guest))
                    .map(|(&id, _)| id)
                    .collect();
                for g in owned {
                    let owner = self.groups.get_mut(&g).unwrap().owner.as_mut().unwrap();
                    owner.bound = false;
                    if !owner.handle_open && owner.open.is_empty() {
                        self.release(g);
                    }
                }
                let handles = core::mem::take(self.handles.get_mut(&guest).unwrap());
                for (_, object) in handles {
                    self.close(object);
                }
                self.grants.insert(guest, initial_grants(guest));
            }
        }
    }

    fn close(&mut self, object: MObj) {
        match object {
            MObj::Container(c) => {
                let container = self.containers.get_mut(&c).unwrap();
                container.handle_open = false;
                if container.groups.is_empty() {
                    self.containers.remove(&c);
                }
            }
            MObj::Group(g) => {
                let owner = self.groups.get_mut(&g).unwrap().owner.as_mut().unwrap();
                owner.handle_open = false;
                if owner.open.is_empty() && !owner.bound {
                    self.release(g);
                }
            }
            MObj::Device(d) => {
                let device = self.devices.remove(&d).unwrap();
                let owner = self
                    .groups
                    .get_mut(&device.group)
                    .unwrap()
                    .owner
                    .as_mut()
                    .unwrap();
                owner.open.remove(&device.address);
                if owner.open.is_empty() && !owner.handle_open && !owner.bound {
                    self.release(device.group);
                }
            }
        }
    }

    fn release(&mut self, g: u32) {
        self.leave(g);
        self.groups.get_mut(&g).unwrap().owner = None;
    }

    fn leave(&mut self, g: u32) {
        let owner = self.groups.get_mut(&g).unwrap().owner.as_mut().unwrap();
        let Some(c) = owner.container.take() else {
            return;
        };
        let container = self.containers.get_mut(&c).unwrap();
        container.groups.remove(&g);
        if container.groups.is_empty() {
            container.active = false;
            container.mappings.clear();
            if !container.handle_open {
                self.containers.remove(&c);
            }
        }
    }

    /// What the IOMMU must show: function → mappings `(iova, size, hpa)`.
    fn attached(&self) -> AttachedView {
        let mut out = BTreeMap::new();
        for container in self.containers.values().filter(|c| c.active) {
            let base = host_base(container.owner);
            let mappings: Vec<(u64, u64, u64)> = container
                .mappings
                .iter()
                .map(|(&i, &(s, v))| (i, s, base + v))
                .collect();
            for g in &container.groups {
                for f in &self.groups[g].functions {
                    out.insert(f.address, mappings.clone());
                }
            }
        }
        out.into_iter().collect()
    }
}

fn host_base(guest: GuestId) -> u64 {
    if guest == A { 0x4000_0000 } else { 0x8000_0000 }
}

// ---------------------------------------------------------------------------------------
// Running it
// ---------------------------------------------------------------------------------------

/// Every handle value each guest was given, with its kind, oldest first.
#[derive(Clone, Default)]
struct Received {
    a: Vec<(Kind, u64)>,
    b: Vec<(Kind, u64)>,
}

impl Received {
    fn of(&self, guest: GuestId) -> &Vec<(Kind, u64)> {
        if guest == A { &self.a } else { &self.b }
    }

    fn values(&self, guest: GuestId) -> Vec<u64> {
        self.of(guest).iter().map(|&(_, h)| h).collect()
    }

    fn push(&mut self, guest: GuestId, kind: Kind, handle: u64) {
        if guest == A {
            self.a.push((kind, handle))
        } else {
            self.b.push((kind, handle))
        }
    }

    fn resolve(&self, model: &Model, guest: GuestId, s: Sel, prefer: Prefer) -> u64 {
        let other = if guest == A { B } else { A };
        let pick = |v: Vec<u64>, i: usize| {
            if v.is_empty() {
                1
            } else {
                v[v.len() - 1 - i % v.len()]
            }
        };
        match s {
            Sel::Live(kind, i) => {
                let live: Vec<u64> = self
                    .of(guest)
                    .iter()
                    .filter(|&&(k, h)| k == kind && model.handles[&guest].contains_key(&h))
                    .map(|&(_, h)| h)
                    .collect();
                let preferred: Vec<u64> = live
                    .iter()
                    .copied()
                    .filter(|h| model.prefers(model.handles[&guest][h], prefer))
                    .collect();
                // Mostly a handle the call can succeed with, sometimes any live one.
                if i % 4 != 3 && !preferred.is_empty() {
                    pick(preferred, i)
                } else {
                    pick(live, i)
                }
            }
            Sel::AnyOwn(i) => pick(self.values(guest), i),
            Sel::Other(i) => pick(self.values(other), i),
            Sel::Forged(v) => v,
        }
    }
}

fn real_call(rig: &mut Rig, guest: GuestId, op: &Op, h: &dyn Fn(Sel) -> u64) -> Result<u64, Errno> {
    match *op {
        Op::Create => rig.call(guest, VfioCall::ContainerCreate),
        Op::Open(id) => rig.open(guest, id),
        Op::Set(g, c) => rig.set(guest, h(g), h(c)),
        Op::Unset(g) => rig.unset(guest, h(g)),
        Op::SetIommu(c, t) => rig.call(
            guest,
            VfioCall::SetIommu {
                container: h(c),
                iommu_type: t,
            },
        ),
        Op::Close(s) => rig.close(guest, h(s)),
        Op::GetDevice(g, name) => rig.get_device(guest, h(g), NAMES[name]),
        Op::Map {
            c,
            iova_page,
            pages,
            vaddr_page,
            flags,
        } => {
            let m = DmaMap {
                argsz: 32,
                flags,
                vaddr: vaddr_page * 4096,
                iova: iova_page * 4096,
                size: pages * 4096,
            };
            rig.ram(guest).put(ARGS, &m.to_bytes());
            rig.call(
                guest,
                VfioCall::MapDma {
                    container: h(c),
                    map: ARGS,
                },
            )
        }
        Op::Unmap {
            c,
            iova_page,
            pages,
            all,
        } => {
            let u = if all {
                DmaUnmap {
                    argsz: 24,
                    flags: sluice_abi::vfio::DMA_UNMAP_FLAG_ALL,
                    iova: 0,
                    size: 0,
                }
            } else {
                DmaUnmap {
                    argsz: 24,
                    flags: 0,
                    iova: iova_page * 4096,
                    size: pages * 4096,
                }
            };
            rig.ram(guest).put(ARGS, &u.to_bytes());
            rig.call(
                guest,
                VfioCall::UnmapDma {
                    container: h(c),
                    unmap: ARGS,
                },
            )
        }
        Op::MapRegion(d, slot) => {
            let m = RegionMap {
                argsz: 40,
                flags: 0,
                index: 0,
                _pad: 0,
                offset: 0,
                size: REGION_SIZE,
                gpa: REGION_BASE + slot * 4096,
            };
            rig.ram(guest).put(ARGS, &m.to_bytes());
            rig.call(
                guest,
                VfioCall::DeviceMapRegion {
                    device: h(d),
                    map: ARGS,
                },
            )
        }
        Op::Bind(g) => rig.call(guest, VfioCall::GroupBindVm { group: h(g) }),
        Op::Unbind(g) => rig.call(guest, VfioCall::GroupUnbindVm { group: h(g) }),
        Op::VmInfo(g) => rig.vm_info(guest, h(g)).map(|_| 0),
        Op::Restart => {
            rig.release(guest);
            *rig.ram(guest) = FakeRam::new(RAM_SIZE, host_base(guest));
            let grants: Vec<u32> = initial_grants(guest).into_iter().collect();
            rig.vfio.add_guest(guest, &grants);
            Ok(0)
        }
    }
}

/// The handle arguments of an op, in order.
fn sels(op: &Op) -> Vec<(Sel, Prefer)> {
    match *op {
        Op::Set(g, c) => vec![(g, Prefer::FreeGroup), (c, Prefer::Any)],
        Op::SetIommu(c, _) => vec![(c, Prefer::ReadyContainer)],
        Op::Map { c, .. } | Op::Unmap { c, .. } => vec![(c, Prefer::ActiveContainer)],
        Op::GetDevice(g, _) | Op::Bind(g) => vec![(g, Prefer::ActiveGroup)],
        Op::Unbind(g) | Op::VmInfo(g) => vec![(g, Prefer::BoundGroup)],
        Op::Unset(x) | Op::Close(x) | Op::MapRegion(x, _) => vec![(x, Prefer::Any)],
        Op::Create | Op::Open(_) | Op::Restart => vec![],
    }
}

/// Which live handles a `Sel::Live` argument favours: ones the call can succeed with.
#[derive(Clone, Copy, Debug)]
enum Prefer {
    Any,
    /// A group not in a container.
    FreeGroup,
    /// A container with groups and no model.
    ReadyContainer,
    ActiveContainer,
    /// A group in an active container.
    ActiveGroup,
    /// A group bound to the VM.
    BoundGroup,
}

impl Model {
    fn prefers(&self, object: MObj, prefer: Prefer) -> bool {
        let active = |c: &u32| self.containers[c].active;
        match (prefer, object) {
            (Prefer::Any, _) => true,
            (Prefer::FreeGroup, MObj::Group(g)) => self.groups[&g]
                .owner
                .as_ref()
                .is_some_and(|o| o.container.is_none()),
            (Prefer::ReadyContainer, MObj::Container(c)) => {
                !self.containers[&c].groups.is_empty() && !active(&c)
            }
            (Prefer::ActiveContainer, MObj::Container(c)) => active(&c),
            (Prefer::ActiveGroup, MObj::Group(g)) => self.groups[&g]
                .owner
                .as_ref()
                .and_then(|o| o.container.as_ref())
                .is_some_and(active),
            (Prefer::BoundGroup, MObj::Group(g)) => {
                self.groups[&g].owner.as_ref().is_some_and(|o| o.bound)
            }
            _ => false,
        }
    }
}

/// Replace a `MEMBER` name by a real name: some non-bridge function of the group
/// the handle names for the model (cycling through them), else the first name.
fn resolve_name(model: &Model, guest: GuestId, op: &Op, h: &dyn Fn(Sel) -> u64) -> Op {
    match *op {
        Op::GetDevice(g, MEMBER) => {
            let name = match model.handles[&guest].get(&h(g)) {
                Some(MObj::Group(id)) => {
                    let members: Vec<PciAddress> = model.groups[id]
                        .functions
                        .iter()
                        .filter(|f| !f.bridge)
                        .map(|f| f.address)
                        .collect();
                    let open = &model.groups[id].owner.as_ref().unwrap().open;
                    let pick = members
                        .iter()
                        .find(|a| !open.contains(a))
                        .or(members.first());
                    pick.and_then(|a| NAMES.iter().position(|n| *n == alloc::format!("{a}")))
                        .unwrap_or(0)
                }
                _ => 0,
            };
            Op::GetDevice(g, name)
        }
        ref other => other.clone(),
    }
}

/// What a guest can observe: its functions' mappings in the IOMMU, its region
/// mappings, and what each handle it was ever given answers to three read-only calls
/// (GROUP_GET_STATUS, CONTAINER_DEBUG and GROUP_VM_INFO).
#[derive(Debug, PartialEq)]
struct View {
    attached: AttachedView,
    regions: BTreeMap<u64, (u64, u64)>,
    probes: Vec<Probe>,
}

type Probe = (
    Result<u32, Errno>,
    Result<u64, Errno>,
    Result<sluice_abi::vfio::GroupVmInfo, Errno>,
);

fn view(rig: &mut Rig, guest: GuestId, received: &[u64]) -> View {
    let owned: BTreeSet<PciAddress> = super::groups()
        .iter()
        .filter(|g| rig.vfio.group_owner(g.id) == Some(guest))
        .flat_map(|g| g.devices.iter().map(|f| f.address))
        .collect();
    let attached = rig
        .attached()
        .into_iter()
        .filter(|(d, _)| owned.contains(d))
        .collect();
    let regions = rig.ram(guest).mmio.clone();
    let probes = received
        .iter()
        .map(|&h| {
            let status = rig.status(guest, h);
            let debug = rig.call(
                guest,
                VfioCall::ContainerDebug {
                    container: h,
                    iova: 0,
                },
            );
            let vm_info = rig.vm_info(guest, h);
            (status, debug, vm_info)
        })
        .collect();
    View {
        attached,
        regions,
        probes,
    }
}

/// A start that gets both guests to active containers with devices and mappings, so
/// that the random steps after it find things to break.
fn setup() -> Vec<(bool, Op)> {
    let live = |k| Sel::Live(k, 0);
    let map = |iova_page| Op::Map {
        c: live(Kind::Container),
        iova_page,
        pages: 2,
        vaddr_page: 0x100,
        flags: 3,
    };
    let mut steps = vec![];
    for (is_a, groups, name) in [(true, [1u64, 3], 0usize), (false, [5, 2], 4)] {
        steps.push((is_a, Op::Create));
        for g in groups {
            steps.push((is_a, Op::Open(g)));
            steps.push((is_a, Op::Set(live(Kind::Group), live(Kind::Container))));
            if g == groups[0] {
                steps.push((is_a, Op::SetIommu(live(Kind::Container), 3)));
                steps.push((is_a, map(0)));
                steps.push((is_a, Op::GetDevice(live(Kind::Group), name)));
                steps.push((is_a, map(4)));
            }
        }
    }
    steps
}

fn run(steps: Vec<(bool, Op)>) -> Result<(), TestCaseError> {
    let mut rig = Rig::new();
    let mut model = Model::new();
    let mut received = Received::default();
    for (step, (is_a, op)) in steps.iter().enumerate() {
        let (guest, other) = if *is_a { (A, B) } else { (B, A) };
        // Handles resolve against what the guests held before this step.
        let table: Vec<(Sel, u64)> = sels(op)
            .into_iter()
            .map(|(s, prefer)| (s, received.resolve(&model, guest, s, prefer)))
            .collect();
        let h = |s: Sel| table.iter().find(|(x, _)| *x == s).map_or(1, |&(_, v)| v);
        let op = &resolve_name(&model, guest, op, &h);
        let other_received = received.values(other);
        let before = view(&mut rig, other, &other_received);

        let predicted = model.predict(guest, op, &h);
        let real = real_call(&mut rig, guest, op, &h);
        match (predicted, real) {
            (Outcome::Err(e), r) => {
                prop_assert_eq!(r, Err(e), "step {} {:?} {:?}", step, guest, op)
            }
            (Outcome::Ok, Ok(_)) => model.apply(guest, op, &h, 0),
            (Outcome::Handle, Ok(handle)) => {
                prop_assert!(handle > 0 && handle <= i64::MAX as u64);
                let kind = match op {
                    Op::Create => Kind::Container,
                    Op::Open(_) => Kind::Group,
                    _ => Kind::Device,
                };
                received.push(guest, kind, handle);
                model.apply(guest, op, &h, handle);
            }
            (_, Err(e)) => prop_assert!(
                false,
                "step {} {:?} {:?}: model says success, got {:?}",
                step,
                guest,
                op,
                e
            ),
        }

        prop_assert_eq!(
            rig.attached(),
            model.attached(),
            "IOMMU after step {} {:?}",
            step,
            op
        );
        for g in [A, B] {
            let expected: BTreeMap<u64, (u64, u64)> = model
                .guest_regions(g)
                .into_iter()
                .map(|(gpa, size, hpa)| (gpa, (hpa, size)))
                .collect();
            prop_assert_eq!(&rig.ram(g).mmio, &expected, "regions of {:?}", g);
        }
        let after = view(&mut rig, other, &other_received);
        prop_assert_eq!(
            before,
            after,
            "step {} by {:?} changed {:?}'s view",
            step,
            guest,
            other
        );
    }
    // Both guests end: nothing may be left.
    rig.release(A);
    rig.release(B);
    prop_assert!(rig.iommu_is_clean());
    prop_assert_eq!(rig.vfio.container_count(), 0);
    prop_assert_eq!(rig.vfio.open_group_count(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_calls_from_two_guests_match_the_model(
        with_setup in prop_oneof![3 => Just(true), 1 => Just(false)],
        steps in proptest::collection::vec((any::<bool>(), op()), 1..120)
    ) {
        let mut all = if with_setup { setup() } else { vec![] };
        all.extend(steps);
        run(all)?;
    }
}
