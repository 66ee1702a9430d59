//! Test material for the AMD-Vi driver tests (`driver.rs`, `driver_props.rs`): a fake
//! IOMMU, the memory it shares with the driver, an independent walker of the device
//! table and v1 page tables in that memory, command decoding, and topologies.
//!
//! The fake ([`FakeAmdViUnit`]) models what the driver relies on and checks what QEMU
//! checks, following hw/i386/amd_iommu.c where QEMU defines the behaviour:
//!
//! - registers: base registers (writes while the matching enable is on are violations),
//!   Control (CmdBufRun = IommuEn && CmdBufEn, EventLogRun = IommuEn && EventLogEn &&
//!   no overflow), Status (bits 0–2 write-1-to-clear, 3–4 read-only), EFR;
//! - the command buffer, processed synchronously when the tail is written and commands
//!   may run: COMPLETION_WAIT stores its data, the INVALIDATE_* commands drop cached
//!   state; reserved bits are checked as QEMU checks them; an unknown opcode stops the
//!   buffer (CmdBufRun clears) and logs ILLEGAL_COMMAND_ERROR, as hardware does;
//! - caches that make missing invalidations visible: a device-table-entry cache (dropped
//!   by INVALIDATE_DEVTAB_ENTRY) and QEMU's IOTLB, keyed by *requester id* and page and
//!   tagged with the domain id (dropped by INVALIDATE_IOMMU_PAGES of that domain id), so
//!   a detached device keeps its cached translations until its old domain is flushed;
//! - DMA ([`FakeAmdViUnit::dma`]): through the caches, walking memory on a miss with
//!   QEMU 7.2's DTE validation (its reserved-bit masks, DomainID bit 8 included, and a
//!   fourth quadword that must be zero), V = 0 untranslated, Mode 0 gated by IR/IW, IR/IW
//!   ANDed down the walk, faults logged as IO_PAGE_FAULT / ILLEGAL_DEV_TABLE_ENTRY in the
//!   specification's layout (or QEMU's bus-less, `I | access` one, as a knob);
//! - the event log: entries at the tail, overflow when full (logging stops until
//!   EventOverflow is cleared and EventLogEn toggled), injection of raw entries.
//!
//! Everything here decodes raw bits itself (nothing from `sluice_amdvi::driver`): the
//! tests compare the driver against this, not against itself.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use sluice_amdvi::driver::{AmdViIommu, DriverConfig};
use sluice_amdvi::{Ivrs, IvrsTopology};
use sluice_iommu::hw::{DmaMemory, RegisterBlock};
use sluice_iommu::{DeviceDma, UnitId};
use sluice_pci::fake::{FakeConfigSpace, FakeFunction};
use sluice_pci::{DeviceTable, EcamRegion, PciAddress, enumerate};

// Also a test target of its own (every file in tests/ is), so it brings the shared
// fixtures itself and hands them on.
#[path = "common/mod.rs"]
pub mod common;
pub use self::common::*;

/// QEMU's EFR (MMIO and IVHD image alike; 7.2 and 10.0): PreF, PPR, GT, IA, GA, HE,
/// HATS = GATS = 2.
pub const QEMU_EFR: u64 = 0x29d3;
/// EFR.IASup.
pub const IA_SUP: u64 = 1 << 6;

// ---------------------------------------------------------------------------------------
// Memory shared by the driver and the fake units.
// ---------------------------------------------------------------------------------------

/// What happened, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Write {
        addr: u64,
        value: u64,
    },
    Barrier,
    Flush {
        addr: u64,
        len: usize,
    },
    Alloc {
        addr: u64,
        pages: usize,
    },
    Free {
        addr: u64,
        pages: usize,
    },
    Reg {
        unit: usize,
        offset: usize,
        value: u64,
    },
    /// A command the fake processed.
    Command {
        unit: usize,
        lo: u64,
        hi: u64,
    },
}

#[derive(Default)]
pub struct TestMem {
    pub pages: BTreeMap<u64, Box<[u64; 512]>>,
    next: u64,
    pub allocated: usize,
    pub limit: Option<usize>,
    pub log: Vec<Event>,
    /// Memory writes are logged only while this is set (bring-up writes 65536 entries).
    pub log_writes: bool,
    /// Addresses the fake must never store to (a lost completion).
    pub frozen: Vec<u64>,
}

impl TestMem {
    pub fn new() -> Self {
        Self {
            next: 0x10_0000,
            log_writes: true,
            ..Self::default()
        }
    }

    pub fn read(&self, addr: u64) -> u64 {
        assert_eq!(addr % 8, 0, "unaligned read {addr:#x}");
        self.pages
            .get(&(addr & !0xfff))
            .unwrap_or_else(|| panic!("read of unallocated {addr:#x}"))
            [((addr & 0xfff) / 8) as usize]
    }

    pub fn write(&mut self, addr: u64, value: u64) {
        assert_eq!(addr % 8, 0, "unaligned write {addr:#x}");
        self.pages
            .get_mut(&(addr & !0xfff))
            .unwrap_or_else(|| panic!("write of unallocated {addr:#x}"))
            [((addr & 0xfff) / 8) as usize] = value;
    }

    pub fn is_allocated(&self, addr: u64) -> bool {
        self.pages.contains_key(&(addr & !0xfff))
    }

    /// The commands unit `unit` processed, decoded.
    pub fn commands(&self, unit: usize) -> Vec<Cmd> {
        self.log
            .iter()
            .filter_map(|event| match *event {
                Event::Command { unit: u, lo, hi } if u == unit => Some(Cmd::decode(lo, hi)),
                _ => None,
            })
            .collect()
    }
}

/// The driver's handle on the shared memory.
#[derive(Clone)]
pub struct SharedMem(pub Rc<RefCell<TestMem>>);

impl DmaMemory for SharedMem {
    fn alloc_zeroed(&mut self, pages: usize, align: u64) -> Option<u64> {
        let mut mem = self.0.borrow_mut();
        if pages == 0 || mem.limit.is_some_and(|l| mem.allocated + pages > l) {
            return None;
        }
        assert!(align.is_power_of_two() && align >= 4096);
        let base = mem.next.div_ceil(align) * align;
        for i in 0..pages as u64 {
            mem.pages.insert(base + i * 4096, Box::new([0; 512]));
        }
        mem.next = base + pages as u64 * 4096;
        mem.allocated += pages;
        mem.log.push(Event::Alloc { addr: base, pages });
        Some(base)
    }

    fn free(&mut self, paddr: u64, pages: usize) {
        let mut mem = self.0.borrow_mut();
        for i in 0..pages as u64 {
            assert!(
                mem.pages.remove(&(paddr + i * 4096)).is_some(),
                "double free of {paddr:#x}"
            );
        }
        mem.allocated -= pages;
        mem.log.push(Event::Free { addr: paddr, pages });
    }

    fn read_u64(&self, paddr: u64) -> u64 {
        self.0.borrow().read(paddr)
    }

    fn write_u64(&mut self, paddr: u64, value: u64) {
        let mut mem = self.0.borrow_mut();
        mem.write(paddr, value);
        if mem.log_writes {
            mem.log.push(Event::Write { addr: paddr, value });
        }
    }

    fn flush(&mut self, paddr: u64, len: usize) {
        let mut mem = self.0.borrow_mut();
        if mem.log_writes {
            mem.log.push(Event::Flush { addr: paddr, len });
        }
    }

    fn barrier(&self) {
        let mut mem = self.0.borrow_mut();
        if mem.log_writes {
            mem.log.push(Event::Barrier);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Commands, decoded independently.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Wait {
        store: bool,
        interrupt: bool,
        addr: u64,
        data: u64,
    },
    DevTab {
        devid: u16,
    },
    /// `block`: (first byte, bytes) or None for every page.
    Pages {
        domid: u16,
        block: Option<(u64, u64)>,
        pde: bool,
        pasid: u32,
        gn: bool,
    },
    All,
    Other {
        lo: u64,
        hi: u64,
    },
}

impl Cmd {
    pub fn decode(lo: u64, hi: u64) -> Self {
        match lo >> 60 {
            1 => Cmd::Wait {
                store: lo & 1 != 0,
                interrupt: lo & 2 != 0,
                addr: lo & 0x000f_ffff_ffff_fff8,
                data: hi,
            },
            2 => Cmd::DevTab { devid: lo as u16 },
            3 => Cmd::Pages {
                domid: (lo >> 32) as u16,
                block: block_of(hi & !0xfff, hi & 1 != 0),
                pde: hi & 2 != 0,
                pasid: (lo & 0xf_ffff) as u32,
                gn: hi & 4 != 0,
            },
            8 => Cmd::All,
            _ => Cmd::Other { lo, hi },
        }
    }

    pub fn is_wait(&self) -> bool {
        matches!(self, Cmd::Wait { .. })
    }
}

/// The bytes an INVALIDATE_IOMMU_PAGES address covers, as QEMU decodes it
/// (`amdvi_decode_invalidation_size`): one page without S; with S, the first zero bit
/// from bit 12 up gives the size; at bit 51 or above, everything.
pub fn block_of(addr: u64, s: bool) -> Option<(u64, u64)> {
    if !s {
        return Some((addr, 4096));
    }
    let fz = (addr | 0xfff).trailing_ones();
    if fz >= 51 {
        return None;
    }
    let size = 1u64 << (fz + 1);
    Some((addr & !(size - 1), size))
}

// ---------------------------------------------------------------------------------------
// The independent walker.
// ---------------------------------------------------------------------------------------

pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
pub const IR: u64 = 1 << 61;
pub const IW: u64 = 1 << 62;

/// The device table entry of `rid`.
pub fn dte_of(mem: &TestMem, table: u64, rid: u16) -> [u64; 4] {
    let at = table + u64::from(rid) * 32;
    [
        mem.read(at),
        mem.read(at + 8),
        mem.read(at + 16),
        mem.read(at + 24),
    ]
}

/// A leaf of a v1 table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Leaf {
    pub iova: u64,
    pub paddr: u64,
    pub size: u64,
    pub read: bool,
    pub write: bool,
}

/// Every leaf of the `levels`-level v1 table at `table`, in IOVA order (IR/IW ANDed
/// along the walk). Panics on encodings the engine must never write: a link whose
/// NextLevel is not one below its table, NextLevel 7, a misaligned leaf, a leaf above
/// level 3.
pub fn leaves(mem: &TestMem, table: u64, levels: u8) -> Vec<Leaf> {
    let mut out = Vec::new();
    collect(mem, table, levels, 0, true, true, &mut out);
    out
}

fn collect(
    mem: &TestMem,
    table: u64,
    level: u8,
    base: u64,
    read: bool,
    write: bool,
    out: &mut Vec<Leaf>,
) {
    let span = 1u64 << (12 + 9 * (u32::from(level) - 1));
    for index in 0..512u64 {
        let entry = mem.read(table + index * 8);
        if entry & 1 == 0 {
            assert_eq!(entry, 0, "non-present entry with bits set at level {level}");
            continue;
        }
        let (r, w) = (read && entry & IR != 0, write && entry & IW != 0);
        let iova = base + index * span;
        let next = (entry >> 9) & 7;
        assert_ne!(next, 7, "NextLevel 7 at {iova:#x}");
        assert_eq!(
            entry & 0x8ff0_0000_0000_01fe,
            0,
            "reserved/ignored bits set: {entry:#x}"
        );
        if next == 0 {
            assert!(level <= 3, "leaf at level {level}");
            assert_eq!(entry & ADDR & (span - 1), 0, "misaligned leaf at {iova:#x}");
            out.push(Leaf {
                iova,
                paddr: entry & ADDR,
                size: span,
                read: r,
                write: w,
            });
        } else {
            assert_eq!(
                next,
                u64::from(level) - 1,
                "link skipping levels at {iova:#x}"
            );
            assert_eq!(entry & (IR | IW), IR | IW, "table link must allow both");
            collect(mem, entry & ADDR, level - 1, iova, r, w, out);
        }
    }
}

/// Translates `iova` through the v1 table: (physical address, read, write).
pub fn walk_v1(mem: &TestMem, root: u64, levels: u8, iova: u64) -> Option<Walked> {
    let mut table = root;
    let mut level = levels;
    let (mut read, mut write) = (true, true);
    loop {
        let shift = 12 + 9 * (u32::from(level) - 1);
        let entry = mem.read(table + ((iova >> shift) & 0x1ff) * 8);
        if entry & 1 == 0 {
            return None;
        }
        read &= entry & IR != 0;
        write &= entry & IW != 0;
        let next = ((entry >> 9) & 7) as u8;
        if next == 0 || level == 1 {
            let mask = (1u64 << shift) - 1;
            return Some(((entry & ADDR & !mask) | (iova & mask), read, write));
        }
        if next >= level {
            return None;
        }
        table = entry & ADDR;
        level = next;
    }
}

/// A translation: (physical address, read, write).
pub type Walked = (u64, bool, bool);

// ---------------------------------------------------------------------------------------
// The fake unit.
// ---------------------------------------------------------------------------------------

pub mod reg {
    pub const DEVTAB: usize = 0x0000;
    pub const CMD_BASE: usize = 0x0008;
    pub const EVT_BASE: usize = 0x0010;
    pub const CONTROL: usize = 0x0018;
    pub const EXCL_BASE: usize = 0x0020;
    pub const EXCL_LIMIT: usize = 0x0028;
    pub const EFR: usize = 0x0030;
    pub const CMD_HEAD: usize = 0x2000;
    pub const CMD_TAIL: usize = 0x2008;
    pub const EVT_HEAD: usize = 0x2010;
    pub const EVT_TAIL: usize = 0x2018;
    pub const STATUS: usize = 0x2020;
}

pub const IOMMU_EN: u64 = 1 << 0;
pub const HT_TUN_EN: u64 = 1 << 1;
pub const EVENT_LOG_EN: u64 = 1 << 2;
pub const EVENT_INT_EN: u64 = 1 << 3;
pub const COM_WAIT_INT_EN: u64 = 1 << 4;
pub const COHERENT_EN: u64 = 1 << 10;
pub const CMD_BUF_EN: u64 = 1 << 12;

pub const EVT_OVERFLOW: u64 = 1 << 0;
pub const EVT_LOG_INT: u64 = 1 << 1;
pub const COMP_INT: u64 = 1 << 2;
pub const EVT_RUN: u64 = 1 << 3;
pub const CMD_RUN: u64 = 1 << 4;

/// A device table entry as the fake cached it.
pub type CachedDte = [u64; 4];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedTranslation {
    pub domid: u16,
    pub page: u64,
    pub read: bool,
    pub write: bool,
}

/// State of one fake unit (tests reach it through the `Rc`).
pub struct UnitState {
    pub index: usize,
    pub efr: u64,
    pub devtab: u64,
    pub cmd_base: u64,
    pub evt_base: u64,
    pub control: u64,
    pub excl_base: u64,
    pub excl_limit: u64,
    /// Byte offsets, as the registers hold them.
    pub cmd_head: u64,
    pub cmd_tail: u64,
    pub evt_head: u64,
    pub evt_tail: u64,
    pub status: u64,
    /// Control values written, in order.
    pub control_writes: Vec<u64>,
    /// IommuEn went 0 → 1 at least once since the fake was made.
    pub enabled_once: bool,
    /// Anything the driver did that hardware (or QEMU) would reject.
    pub violations: Vec<String>,
    // Knobs.
    /// Tail writes are recorded but nothing is processed (a hung unit).
    pub ignore_commands: bool,
    /// Status bits the unit never sets.
    pub withheld_status: u64,
    /// Log device ids and flags as QEMU does (devfn only; `I | access`).
    pub qemu_events: bool,
    // Counters.
    pub events_logged: u64,
    pub events_dropped: u64,
    // Caches.
    pub dte_cache: BTreeMap<u16, CachedDte>,
    /// (requester id, 4 KiB page) → translation, QEMU-style.
    pub iotlb: BTreeMap<(u16, u64), CachedTranslation>,
}

impl UnitState {
    fn cmd_entries(&self) -> u64 {
        1 << ((self.cmd_base >> 56) & 0xf)
    }

    fn evt_entries(&self) -> u64 {
        1 << ((self.evt_base >> 56) & 0xf)
    }

    fn cmd_running(&self) -> bool {
        self.status & CMD_RUN != 0
    }

    fn update_run_bits(&mut self) {
        let on = self.control & IOMMU_EN != 0;
        if on && self.control & CMD_BUF_EN != 0 && self.withheld_status & CMD_RUN == 0 {
            self.status |= CMD_RUN;
        } else if !(on && self.control & CMD_BUF_EN != 0) {
            self.status &= !CMD_RUN;
        }
        if on
            && self.control & EVENT_LOG_EN != 0
            && self.status & EVT_OVERFLOW == 0
            && self.withheld_status & EVT_RUN == 0
        {
            self.status |= EVT_RUN;
        } else {
            self.status &= !EVT_RUN;
        }
    }

    pub fn devtab_base(&self) -> u64 {
        self.devtab & ADDR
    }

    /// Logs an event in the specification's layout; dropped when logging does not run
    /// or the log is full (which sets EventOverflow and stops logging).
    pub fn log_event(&mut self, mem: &mut TestMem, raw: [u64; 2]) {
        if self.status & EVT_RUN == 0 {
            self.events_dropped += 1;
            return;
        }
        let size = self.evt_entries() * 16;
        let next = (self.evt_tail + 16) % size;
        if next == self.evt_head {
            self.status |= EVT_OVERFLOW;
            self.status &= !EVT_RUN;
            self.events_dropped += 1;
            return;
        }
        let at = (self.evt_base & ADDR) + self.evt_tail;
        mem.write(at, raw[0]);
        mem.write(at + 8, raw[1]);
        self.evt_tail = next;
        self.events_logged += 1;
    }

    /// A fault event for a DMA by `rid`.
    fn fault(
        &mut self,
        mem: &mut TestMem,
        code: u64,
        rid: u16,
        domid: u16,
        flags: u64,
        address: u64,
    ) {
        let (devid, flags) = if self.qemu_events {
            let access = if flags & (1 << 5) != 0 { 2 } else { 1 };
            (rid & 0xff, (1 << 3) | access)
        } else {
            (rid, flags)
        };
        let lo = u64::from(devid) | (u64::from(domid) << 32) | (flags << 48) | (code << 60);
        self.log_event(mem, [lo, address]);
    }
}

/// QEMU ≤ 10.0's reserved-bit masks of a DTE (`amdvi_validate_dte`), quadword 3 whole.
pub const QEMU72_DTE_RESERVED: [u64; 3] = [0x8030_0000_0000_00fc, 0x0100, 0x08f0_0000_0000_0000];

/// Is this DTE valid for QEMU 7.2?
pub fn qemu72_accepts(dte: &[u64; 4]) -> bool {
    dte[0] & QEMU72_DTE_RESERVED[0] == 0
        && dte[1] & QEMU72_DTE_RESERVED[1] == 0
        && dte[2] & QEMU72_DTE_RESERVED[2] == 0
        && dte[3] == 0
}

/// Why a DMA failed: the event code the unit logs (or would log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// IO_PAGE_FAULT.
    PageFault,
    /// ILLEGAL_DEV_TABLE_ENTRY.
    IllegalDte,
    /// V = 1, TV = 0, or a cached permission that does not allow the access.
    Aborted,
}

/// A fake unit: the driver's `RegisterBlock`.
pub struct FakeAmdViUnit {
    pub state: Rc<RefCell<UnitState>>,
    pub mem: Rc<RefCell<TestMem>>,
}

impl FakeAmdViUnit {
    pub fn new(index: usize, efr: u64, mem: Rc<RefCell<TestMem>>) -> Self {
        let state = UnitState {
            index,
            efr,
            devtab: 0,
            cmd_base: 0,
            evt_base: 0,
            control: 0,
            excl_base: 0,
            excl_limit: 0,
            cmd_head: 0,
            cmd_tail: 0,
            evt_head: 0,
            evt_tail: 0,
            status: 0,
            control_writes: Vec::new(),
            enabled_once: false,
            violations: Vec::new(),
            ignore_commands: false,
            withheld_status: 0,
            qemu_events: false,
            events_logged: 0,
            events_dropped: 0,
            dte_cache: BTreeMap::new(),
            iotlb: BTreeMap::new(),
        };
        Self {
            state: Rc::new(RefCell::new(state)),
            mem,
        }
    }

    /// Another handle on the same fake.
    pub fn handle(&self) -> Self {
        Self {
            state: self.state.clone(),
            mem: self.mem.clone(),
        }
    }

    fn process_commands(&self) {
        loop {
            let mut s = self.state.borrow_mut();
            if s.ignore_commands || !s.cmd_running() || s.cmd_head == s.cmd_tail {
                return;
            }
            let at = (s.cmd_base & ADDR) + s.cmd_head;
            let (lo, hi) = {
                let mem = self.mem.borrow();
                (mem.read(at), mem.read(at + 8))
            };
            let index = s.index;
            let mut mem = self.mem.borrow_mut();
            mem.log.push(Event::Command {
                unit: index,
                lo,
                hi,
            });
            let bits = |v: u64, lo: u32, len: u32| (v >> lo) & ((1u64 << len) - 1);
            let mut illegal = false;
            match lo >> 60 {
                1 => {
                    if bits(lo, 52, 8) != 0 {
                        s.violations
                            .push(format!("COMPLETION_WAIT reserved bits {lo:#x}"));
                    }
                    if lo & 2 != 0 {
                        s.violations.push("COMPLETION_WAIT with I = 1".into());
                    }
                    if lo & 1 != 0 {
                        let addr = lo & 0x000f_ffff_ffff_fff8;
                        if !mem.frozen.contains(&addr) {
                            mem.write(addr, hi);
                        }
                    }
                }
                2 => {
                    if bits(lo, 16, 44) != 0 || hi != 0 {
                        s.violations.push(format!(
                            "INVALIDATE_DEVTAB_ENTRY reserved bits {lo:#x} {hi:#x}"
                        ));
                    }
                    s.dte_cache.remove(&(lo as u16));
                }
                3 => {
                    if bits(lo, 20, 12) != 0 || bits(lo, 48, 12) != 0 || bits(hi, 3, 9) != 0 {
                        s.violations.push(format!(
                            "INVALIDATE_IOMMU_PAGES reserved bits {lo:#x} {hi:#x}"
                        ));
                    }
                    if bits(lo, 0, 20) != 0 || hi & 4 != 0 {
                        s.violations
                            .push("INVALIDATE_IOMMU_PAGES with a PASID".into());
                    }
                    let domid = (lo >> 32) as u16;
                    match block_of(hi & !0xfff, hi & 1 != 0) {
                        None => s.iotlb.retain(|_, t| t.domid != domid),
                        Some((first, size)) => s.iotlb.retain(|&(_, page), t| {
                            let addr = page << 12;
                            !(t.domid == domid && addr >= first && addr < first + size)
                        }),
                    }
                }
                5 => {
                    if bits(lo, 16, 44) != 0 || hi != 0 {
                        s.violations.push(format!(
                            "INVALIDATE_INTERRUPT_TABLE reserved bits {lo:#x} {hi:#x}"
                        ));
                    }
                }
                8 => {
                    if bits(lo, 0, 60) != 0 || hi != 0 {
                        s.violations.push(format!(
                            "INVALIDATE_IOMMU_ALL reserved bits {lo:#x} {hi:#x}"
                        ));
                    }
                    if s.efr & IA_SUP == 0 {
                        s.violations
                            .push("INVALIDATE_IOMMU_ALL without EFR.IASup".into());
                    }
                    s.dte_cache.clear();
                    s.iotlb.clear();
                }
                _ => illegal = true,
            }
            if illegal {
                // Hardware stops fetching and logs the command's address.
                s.violations
                    .push(format!("illegal command {lo:#x} {hi:#x}"));
                s.status &= !CMD_RUN;
                s.withheld_status |= CMD_RUN;
                s.log_event(&mut mem, [5 << 60, at]);
                return;
            }
            let size = s.cmd_entries() * 16;
            s.cmd_head = (s.cmd_head + 16) % size;
        }
    }

    fn control(&self, value: u64) {
        {
            let mut s = self.state.borrow_mut();
            s.control_writes.push(value);
            let was = s.control;
            if value & IOMMU_EN != 0 && was & IOMMU_EN == 0 {
                if s.devtab == 0 {
                    s.violations.push("IommuEn without a device table".into());
                }
                s.enabled_once = true;
            }
            if value & IOMMU_EN == 0 && was & IOMMU_EN != 0 && s.enabled_once {
                s.violations.push("translation disabled".into());
            }
            if value & (EVENT_INT_EN | COM_WAIT_INT_EN) != 0 {
                s.violations
                    .push("interrupts enabled (the driver polls)".into());
            }
            if value & EVENT_LOG_EN != 0 && was & EVENT_LOG_EN == 0 && s.status & EVT_OVERFLOW != 0
            {
                s.violations
                    .push("EventLogEn set while EventOverflow is pending".into());
            }
            s.control = value;
            s.update_run_bits();
        }
        self.process_commands();
    }

    /// A DMA by `rid` at `iova`: through the caches, walking memory on a miss, logging a
    /// fault on failure. Ok(physical address) or the reason it was blocked.
    pub fn dma(&self, rid: u16, iova: u64, write: bool) -> Result<u64, Blocked> {
        let mut mem = self.mem.borrow_mut();
        let mut s = self.state.borrow_mut();
        if s.control & IOMMU_EN == 0 {
            return Ok(iova);
        }
        let page = iova >> 12;
        if let Some(&cached) = s.iotlb.get(&(rid, page)) {
            let allowed = if write { cached.write } else { cached.read };
            return if allowed {
                Ok(cached.page << 12 | (iova & 0xfff))
            } else {
                Err(Blocked::Aborted)
            };
        }
        let dte = match s.dte_cache.get(&rid) {
            Some(&dte) => dte,
            None => {
                let dte = dte_of(&mem, s.devtab_base(), rid);
                s.dte_cache.insert(rid, dte);
                dte
            }
        };
        let flags_rw = if write { 1 << 5 } else { 0 };
        if !qemu72_accepts(&dte) {
            s.violations
                .push(format!("QEMU 7.2 rejects the DTE of {rid:#06x}: {dte:#x?}"));
            let at = s.devtab_base() + u64::from(rid) * 32;
            s.fault(&mut mem, 1, rid, 0, flags_rw, at);
            return Err(Blocked::IllegalDte);
        }
        if dte[0] & 1 == 0 {
            return Ok(iova);
        }
        if dte[0] & 2 == 0 {
            return Err(Blocked::Aborted);
        }
        let domid = dte[1] as u16;
        let mode = ((dte[0] >> 9) & 7) as u8;
        let dte_r = dte[0] & IR != 0;
        let dte_w = dte[0] & IW != 0;
        if mode == 0 {
            return if (write && dte_w) || (!write && dte_r) {
                Ok(iova)
            } else {
                Err(Blocked::Aborted)
            };
        }
        if mode == 7 {
            let at = s.devtab_base() + u64::from(rid) * 32;
            s.fault(&mut mem, 1, rid, domid, flags_rw, at);
            return Err(Blocked::IllegalDte);
        }
        let width = 12 + 9 * u32::from(mode);
        // The DTE's own permissions first (QEMU checks them before the first read).
        if iova >> width.min(63) != 0 || (write && !dte_w) || (!write && !dte_r) {
            let flags = flags_rw
                | if iova >> width.min(63) != 0 {
                    0
                } else {
                    (1 << 4) | (1 << 6)
                };
            s.fault(&mut mem, 2, rid, domid, flags, iova);
            return Err(Blocked::PageFault);
        }
        match walk_v1(&mem, dte[0] & ADDR, mode, iova & !0xfff) {
            None => {
                s.fault(&mut mem, 2, rid, domid, flags_rw, iova);
                Err(Blocked::PageFault)
            }
            Some((paddr, read, can_write)) => {
                let read = read && dte_r;
                let can_write = can_write && dte_w;
                if (write && !can_write) || (!write && !read) {
                    s.fault(
                        &mut mem,
                        2,
                        rid,
                        domid,
                        flags_rw | (1 << 4) | (1 << 6),
                        iova,
                    );
                    return Err(Blocked::PageFault);
                }
                s.iotlb.insert(
                    (rid, page),
                    CachedTranslation {
                        domid,
                        page: paddr >> 12,
                        read,
                        write: can_write,
                    },
                );
                Ok(paddr | (iova & 0xfff))
            }
        }
    }

    /// Puts a raw entry into the event log (as the unit would).
    pub fn inject_event(&self, raw: [u64; 2]) {
        let mut mem = self.mem.borrow_mut();
        self.state.borrow_mut().log_event(&mut mem, raw);
    }
}

impl RegisterBlock for FakeAmdViUnit {
    fn read32(&self, offset: usize) -> u32 {
        let value = self.read64(offset & !7);
        if offset % 8 == 4 {
            (value >> 32) as u32
        } else {
            value as u32
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        let s = self.state.borrow();
        match offset {
            reg::DEVTAB => s.devtab,
            reg::CMD_BASE => s.cmd_base,
            reg::EVT_BASE => s.evt_base,
            reg::CONTROL => s.control,
            reg::EXCL_BASE => s.excl_base,
            reg::EXCL_LIMIT => s.excl_limit,
            reg::EFR => s.efr,
            reg::CMD_HEAD => s.cmd_head,
            reg::CMD_TAIL => s.cmd_tail,
            reg::EVT_HEAD => s.evt_head,
            reg::EVT_TAIL => s.evt_tail,
            reg::STATUS => s.status,
            _ => panic!("read of unknown register {offset:#x}"),
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        self.state
            .borrow_mut()
            .violations
            .push(format!("32-bit write {value:#x} to {offset:#x}"));
    }

    fn write64(&mut self, offset: usize, value: u64) {
        let index = self.state.borrow().index;
        self.mem.borrow_mut().log.push(Event::Reg {
            unit: index,
            offset,
            value,
        });
        match offset {
            reg::CONTROL => return self.control(value),
            reg::CMD_TAIL => {
                {
                    let mut s = self.state.borrow_mut();
                    if value & !0x7fff0 != 0 || (value & 0x7fff0) >= s.cmd_entries() * 16 {
                        s.violations
                            .push(format!("command tail {value:#x} out of the ring"));
                    }
                    s.cmd_tail = value & 0x7fff0;
                }
                return self.process_commands();
            }
            _ => {}
        }
        let mut s = self.state.borrow_mut();
        match offset {
            reg::DEVTAB => {
                if s.control & IOMMU_EN != 0 {
                    s.violations
                        .push("device table base written while enabled".into());
                }
                s.devtab = value;
            }
            reg::CMD_BASE => {
                if s.control & CMD_BUF_EN != 0 {
                    s.violations
                        .push("command buffer base written while enabled".into());
                }
                if (value >> 56) & 0xf < 8 {
                    s.violations.push("command buffer below 256 entries".into());
                }
                s.cmd_base = value;
                s.cmd_head = 0;
                s.cmd_tail = 0;
            }
            reg::EVT_BASE => {
                if s.control & EVENT_LOG_EN != 0 {
                    s.violations
                        .push("event log base written while enabled".into());
                }
                if (value >> 56) & 0xf < 8 {
                    s.violations.push("event log below 256 entries".into());
                }
                s.evt_base = value;
            }
            reg::EXCL_BASE => s.excl_base = value,
            reg::EXCL_LIMIT => s.excl_limit = value,
            reg::CMD_HEAD => s.cmd_head = value & 0x7fff0,
            reg::EVT_HEAD => s.evt_head = value & 0x7fff0,
            reg::EVT_TAIL => s.evt_tail = value & 0x7fff0,
            reg::STATUS => s.status &= !(value & 0x7),
            reg::EFR => s.violations.push("EFR written".into()),
            _ => s
                .violations
                .push(format!("write {value:#x} to {offset:#x}")),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Topologies and a driver on fake units.
// ---------------------------------------------------------------------------------------

pub type Driver = AmdViIommu<FakeAmdViUnit, SharedMem>;

pub struct Rig {
    pub mem: Rc<RefCell<TestMem>>,
    pub units: Vec<Rc<RefCell<UnitState>>>,
    /// Handles on the fakes the driver owns (for DMA and event injection).
    pub fakes: Vec<FakeAmdViUnit>,
    pub topology: IvrsTopology,
}

impl Rig {
    pub fn unit(&self, index: usize) -> std::cell::RefMut<'_, UnitState> {
        self.units[index].borrow_mut()
    }

    pub fn commands(&self, unit: usize) -> Vec<Cmd> {
        self.mem.borrow().commands(unit)
    }

    /// Forget the log so far.
    pub fn clear_log(&self) {
        self.mem.borrow_mut().log.clear();
    }

    pub fn violations(&self) -> Vec<String> {
        self.units
            .iter()
            .flat_map(|u| u.borrow().violations.clone())
            .collect()
    }

    /// The DTE of `rid` on `unit`, read by the test from the device table the fake was
    /// given.
    pub fn dte(&self, unit: usize, rid: u16) -> [u64; 4] {
        let table = self.units[unit].borrow().devtab_base();
        dte_of(&self.mem.borrow(), table, rid)
    }
}

/// A rig on `ivrs` resolved against `pci`, one fake per unit with `efr`, before the
/// driver exists (knobs may be set on the returned fakes first).
pub fn make_rig(ivrs: &[u8], pci: &DeviceTable, efrs: &[u64]) -> (Rig, Vec<FakeAmdViUnit>) {
    let ivrs = Ivrs::parse(ivrs).expect("IVRS parses");
    let topology = IvrsTopology::new(&ivrs, pci).expect("topology builds");
    assert_eq!(topology.amd_units().len(), efrs.len());
    let mem = Rc::new(RefCell::new(TestMem::new()));
    let mut fakes = Vec::new();
    let mut handles = Vec::new();
    let mut units = Vec::new();
    for (index, &efr) in efrs.iter().enumerate() {
        let fake = FakeAmdViUnit::new(index, efr, mem.clone());
        units.push(fake.state.clone());
        handles.push(fake.handle());
        fakes.push(fake);
    }
    (
        Rig {
            mem,
            units,
            fakes: handles,
            topology,
        },
        fakes,
    )
}

/// The driver on a prepared rig (memory-write logging off during bring-up).
pub fn start(
    rig: &Rig,
    fakes: Vec<FakeAmdViUnit>,
    config: DriverConfig,
) -> Result<Driver, sluice_iommu::IommuError> {
    rig.mem.borrow_mut().log_writes = false;
    let driver = AmdViIommu::new(&rig.topology, fakes, SharedMem(rig.mem.clone()), config);
    rig.mem.borrow_mut().log_writes = true;
    driver
}

/// QEMU 7.2's `-device amd-iommu -device edu` machine: one unit.
pub fn qemu72() -> (Rig, Driver) {
    qemu72_with(DriverConfig::default())
}

pub fn qemu72_with(config: DriverConfig) -> (Rig, Driver) {
    let pci = qemu_default_machine(AMD_IOMMU_72);
    let (rig, fakes) = make_rig(QEMU72_DEFAULT, &pci, &[QEMU_EFR]);
    let driver = start(&rig, fakes, config).expect("driver init");
    (rig, driver)
}

fn ecam0() -> EcamRegion {
    EcamRegion {
        segment: 0,
        bus_start: 0,
        bus_end: 255,
        base: 0xb000_0000,
    }
}

/// Requester id of `bus:dev.fn`.
pub const fn rid(bus: u8, dev: u8, function: u8) -> u16 {
    (bus as u16) << 8 | (dev as u16) << 3 | function as u16
}

/// IVRS DTE setting of the select entry of 00:05.0 (NMIPass, SysMgt = 01b).
pub const SETTING_00_05: u8 = 0x14;
/// The IVMD of 00:04.0: unity, read/write, at 0x7000_0000, 16 KiB.
pub const IVMD_BASE: u64 = 0x7000_0000;
pub const IVMD_SIZE: u64 = 0x4000;

/// Two units on segment 0 (IVHD 10h, flags 0xd1):
/// - unit 0 (IOMMU 00:00.2): 00:03.0, 00:04.0, 01:00.0–01:1f.7, IOAPIC 00:14.0;
/// - unit 1 (IOMMU 00:00.3): 00:05.0 (setting 0x14: NMIPass, SysMgt 01b),
///   02:01.0 and 02:02.0 aliased to 03:00.0.
///
/// plus an IVMD (unity, IR, IW) for 00:04.0 at [`IVMD_BASE`].
pub fn two_unit_ivrs() -> Vec<u8> {
    IvrsBuilder::new(40 << 8)
        .ivhd10(
            rid(0, 0, 2),
            0xfed8_0000,
            0,
            &[
                select(rid(0, 3, 0)),
                select(rid(0, 4, 0)),
                range_start(rid(1, 0, 0)),
                range_end(rid(1, 0x1f, 7)),
                special(0, rid(0, 0x14, 0), 1),
            ],
        )
        .ivhd10(
            rid(0, 0, 3),
            0xfed9_0000,
            0,
            &[
                entry4(0x02, rid(0, 5, 0), SETTING_00_05),
                alias_select(rid(2, 1, 0), rid(3, 0, 0)),
                alias_select(rid(2, 2, 0), rid(3, 0, 0)),
            ],
        )
        .ivmd(0x21, 0x07, rid(0, 4, 0), 0, 0, IVMD_BASE, IVMD_SIZE)
        .build()
}

/// The functions of [`two_unit_ivrs`]'s machine.
pub fn two_unit_machine() -> DeviceTable {
    let cfg = FakeConfigSpace::new()
        .with(
            PciAddress::new(0, 0, 0, 0),
            FakeFunction::host_bridge(0x1022, 0x1480).multifunction(),
        )
        .with(
            PciAddress::new(0, 0, 0, 2),
            FakeFunction::endpoint(0x1022, 0x1481, 0x08_06_00),
        )
        .with(
            PciAddress::new(0, 0, 0, 3),
            FakeFunction::endpoint(0x1022, 0x1481, 0x08_06_00),
        )
        .with(
            PciAddress::new(0, 0, 3, 0),
            FakeFunction::pcie_endpoint(0x1234, 0x11e8),
        )
        .with(
            PciAddress::new(0, 0, 4, 0),
            FakeFunction::pcie_endpoint(0x1234, 0x11e8),
        )
        .with(
            PciAddress::new(0, 0, 5, 0),
            FakeFunction::pcie_endpoint(0x1234, 0x11e8),
        );
    enumerate(&cfg, &[ecam0()])
}

pub fn two_units_with(efrs: [u64; 2], config: DriverConfig) -> (Rig, Driver) {
    let (rig, fakes) = make_rig(&two_unit_ivrs(), &two_unit_machine(), &efrs);
    let driver = start(&rig, fakes, config).expect("driver init");
    (rig, driver)
}

pub fn two_units() -> (Rig, Driver) {
    two_units_with([QEMU_EFR, QEMU_EFR], DriverConfig::default())
}

/// A device at `bus:dev.fn` (segment 0) behind `unit`, with its own requester id and
/// the given aliases.
pub fn device(unit: u16, bus: u8, dev: u8, function: u8, aliases: &[u16]) -> DeviceDma {
    let mut requester_ids = vec![rid(bus, dev, function)];
    requester_ids.extend_from_slice(aliases);
    DeviceDma {
        device: PciAddress::new(0, bus, dev, function),
        unit: UnitId(unit),
        requester_ids,
    }
}

/// The edu of QEMU's default machine (00:02.0).
pub fn edu() -> DeviceDma {
    device(0, 0, 2, 0, &[])
}
