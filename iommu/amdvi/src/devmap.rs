//! The requester ids one IOMMU translates, expanded from its IVHD entries.
//!
//! Linux expands the entries into a table per segment with one slot per possible
//! requester id (64K entries of DTE flags, alias and owning IOMMU). Our kernel heap
//! is 16 MiB, and firmware almost always describes devices by a few ranges, so the
//! expansion here keeps ranges instead: a sorted list of disjoint requester-id
//! ranges, each with the settings its entry gave. Entries are applied in table order
//! and a later entry overrides an earlier one where they overlap (Linux writes its
//! tables in the same order, so the last writer wins there too). Lookups are a
//! binary search.
//!
//! What each covered id carries:
//! - the DTE setting byte (and the extended setting of 46h/47h entries);
//! - the alias: for ids named by alias entries (42h, 43h), the requester id their
//!   DMA actually carries. The alias target itself is covered too (Linux sets up a
//!   DTE for it), with no alias of its own.
//!
//! Special entries (48h: IOAPIC/HPET) name interrupt sources, not PCI functions;
//! they are listed separately (see [`crate::SpecialDevice`]), not expanded here.
//! ACPI-HID entries (F0h) are expanded for IVHD type 40h only, as Linux does.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::RangeInclusive;

use crate::ivrs::{DeviceEntryKind, DteSetting, ExtendedDteSetting, Ivhd, IvhdType};

/// Which kind of entry made an id covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coverage {
    /// A select, range or "all" entry (02h, 03h/04h, 46h, 47h/04h, 01h).
    Entry,
    /// An alias entry (42h, 43h/04h): the id's DMA carries [`DeviceSettings::alias`].
    Aliased,
    /// The target of an alias entry.
    AliasTarget,
    /// An ACPI-HID entry (F0h) of an IVHD type 40h.
    AcpiHid,
}

/// What the IVHD says about one covered requester id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceSettings {
    /// The DTE setting of the entry.
    pub dte: DteSetting,
    /// The extended DTE setting (0 unless the entry was 46h/47h).
    pub ext: ExtendedDteSetting,
    /// The requester id the device's DMA carries, when an alias entry says so.
    pub alias: Option<u16>,
    /// Which kind of entry covers the id.
    pub coverage: Coverage,
    /// Table offset of the entry that decided these settings (for a range: its
    /// start entry).
    pub entry_offset: usize,
}

/// A run of consecutive requester ids with the same settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceIdRange {
    /// First requester id of the run.
    pub first: u16,
    /// Last requester id of the run (inclusive).
    pub last: u16,
    /// The settings of every id in the run.
    pub settings: DeviceSettings,
}

impl DeviceIdRange {
    /// The ids of the run.
    pub fn ids(&self) -> RangeInclusive<u16> {
        self.first..=self.last
    }

    /// How many ids the run holds (1..=65536).
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Runs are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The requester ids of one segment that one IVHD covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceIdMap {
    segment: u16,
    /// Sorted by `first`, disjoint.
    ranges: Vec<DeviceIdRange>,
}

/// Builds the map: a map from first id to (last id, settings), disjoint.
#[derive(Default)]
struct Painter {
    runs: BTreeMap<u16, (u16, DeviceSettings)>,
}

impl Painter {
    /// Sets `first..=last` to `settings`, cutting away whatever was there.
    fn paint(&mut self, first: u16, last: u16, settings: DeviceSettings) {
        if last < first {
            return;
        }
        // A run starting before `first` may reach into the new one.
        if let Some((&start, &(end, old))) = self.runs.range(..first).next_back() {
            if end >= first {
                self.runs.insert(start, (first - 1, old));
                if end > last {
                    self.runs.insert(last + 1, (end, old));
                }
            }
        }
        // Runs starting inside the new one are replaced; a tail beyond it survives.
        let inside: Vec<u16> = self.runs.range(first..=last).map(|(&s, _)| s).collect();
        for start in inside {
            if let Some((end, old)) = self.runs.remove(&start) {
                if end > last {
                    self.runs.insert(last + 1, (end, old));
                }
            }
        }
        self.runs.insert(first, (last, settings));
    }
}

impl DeviceIdMap {
    /// Expands an IVHD's entries (as far as they were read; whoever uses an IVHD
    /// with an [`Ivhd::entry_error`] must know its list is incomplete).
    ///
    /// Unpaired or inverted ranges (only possible in an `Ivhd` built by hand: the
    /// parser rejects them) are ignored rather than trusted.
    pub fn from_ivhd(ivhd: &Ivhd) -> DeviceIdMap {
        let mut painter = Painter::default();
        // The open range: first id and settings.
        let mut open: Option<(u16, DeviceSettings)> = None;
        for entry in &ivhd.entries {
            let settings = DeviceSettings {
                dte: entry.dte,
                ext: ExtendedDteSetting(0),
                alias: None,
                coverage: Coverage::Entry,
                entry_offset: entry.offset,
            };
            let id = entry.device_id;
            match entry.kind {
                DeviceEntryKind::All => painter.paint(0, u16::MAX, settings),
                DeviceEntryKind::Select => painter.paint(id, id, settings),
                DeviceEntryKind::ExtendedSelect { ext } => {
                    painter.paint(id, id, DeviceSettings { ext, ..settings })
                }
                DeviceEntryKind::AliasSelect { alias } => {
                    let aliased = DeviceSettings {
                        alias: Some(alias),
                        coverage: Coverage::Aliased,
                        ..settings
                    };
                    painter.paint(id, id, aliased);
                    paint_alias_target(&mut painter, alias, settings);
                }
                DeviceEntryKind::RangeStart => open = Some((id, settings)),
                DeviceEntryKind::ExtendedRangeStart { ext } => {
                    open = Some((id, DeviceSettings { ext, ..settings }))
                }
                DeviceEntryKind::AliasRangeStart { alias } => {
                    let aliased = DeviceSettings {
                        alias: Some(alias),
                        coverage: Coverage::Aliased,
                        ..settings
                    };
                    open = Some((id, aliased));
                }
                DeviceEntryKind::RangeEnd => {
                    if let Some((first, range_settings)) = open.take() {
                        if first <= id {
                            painter.paint(first, id, range_settings);
                            if let Some(alias) = range_settings.alias {
                                let target = DeviceSettings {
                                    alias: None,
                                    ..range_settings
                                };
                                paint_alias_target(&mut painter, alias, target);
                            }
                        }
                    }
                }
                DeviceEntryKind::AcpiHid { .. } if ivhd.ivhd_type == IvhdType::Type40 => {
                    let hid = DeviceSettings {
                        coverage: Coverage::AcpiHid,
                        ..settings
                    };
                    painter.paint(id, id, hid);
                }
                DeviceEntryKind::AcpiHid { .. }
                | DeviceEntryKind::Pad
                | DeviceEntryKind::Special { .. }
                | DeviceEntryKind::Reserved => {}
            }
        }
        let ranges = painter
            .runs
            .into_iter()
            .map(|(first, (last, settings))| DeviceIdRange {
                first,
                last,
                settings,
            })
            .collect();
        DeviceIdMap {
            segment: ivhd.segment,
            ranges,
        }
    }

    /// The segment the ids belong to.
    pub fn segment(&self) -> u16 {
        self.segment
    }

    /// The runs, sorted and disjoint.
    pub fn ranges(&self) -> &[DeviceIdRange] {
        &self.ranges
    }

    /// The settings of requester id `id`, if the IVHD covers it.
    pub fn lookup(&self, id: u16) -> Option<&DeviceSettings> {
        let index = self.ranges.partition_point(|range| range.last < id);
        self.ranges
            .get(index)
            .filter(|range| range.first <= id)
            .map(|range| &range.settings)
    }

    /// How many requester ids are covered (0..=65536).
    pub fn covered_count(&self) -> u32 {
        self.ranges.iter().map(DeviceIdRange::len).sum()
    }

    /// The runs whose DMA carries another requester id, merged back into the
    /// ranges the alias entries named: `(ids, alias)`.
    pub fn aliases(&self) -> Vec<(RangeInclusive<u16>, u16)> {
        let mut merged: Vec<(RangeInclusive<u16>, u16, usize)> = Vec::new();
        for range in &self.ranges {
            let Some(alias) = range.settings.alias else {
                continue;
            };
            let offset = range.settings.entry_offset;
            match merged.last_mut() {
                Some((ids, last_alias, last_offset))
                    if *last_alias == alias
                        && *last_offset == offset
                        && u32::from(*ids.end()) + 1 == u32::from(range.first) =>
                {
                    *ids = *ids.start()..=range.last;
                }
                _ => merged.push((range.ids(), alias, offset)),
            }
        }
        merged
            .into_iter()
            .map(|(ids, alias, _)| (ids, alias))
            .collect()
    }
}

/// Covers an alias target, unless an alias entry already gave it settings of its
/// own (then it stays as that entry said).
fn paint_alias_target(painter: &mut Painter, target: u16, settings: DeviceSettings) {
    let target_settings = DeviceSettings {
        alias: None,
        coverage: Coverage::AliasTarget,
        ..settings
    };
    let covered_by_alias_entry = painter
        .runs
        .range(..=target)
        .next_back()
        .is_some_and(|(_, (end, old))| *end >= target && old.coverage == Coverage::Aliased);
    if !covered_by_alias_entry {
        painter.paint(target, target, target_settings);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ivrs::{DeviceEntry, IvhdFeatures};
    use crate::regs::{FeatureReporting, IommuInfo, IvhdFlags};
    use alloc::vec;

    fn entry(offset: usize, entry_type: u8, device_id: u16, kind: DeviceEntryKind) -> DeviceEntry {
        DeviceEntry {
            offset,
            entry_type,
            device_id,
            dte: DteSetting::empty(),
            kind,
        }
    }

    fn ivhd(entries: Vec<DeviceEntry>) -> Ivhd {
        Ivhd {
            offset: 48,
            ivhd_type: IvhdType::Type10,
            flags: IvhdFlags::empty(),
            length: 0,
            device_id: 0x0008,
            capability_offset: 0x40,
            base_address: 0xfed8_0000,
            segment: 0,
            info: IommuInfo::default(),
            features: IvhdFeatures::Reporting(FeatureReporting::default()),
            entries,
            entry_error: None,
        }
    }

    #[test]
    fn later_entries_override_earlier_ones() {
        let mut select = entry(4, 2, 0x0110, DeviceEntryKind::Select);
        select.dte = DteSetting::NMI_PASS;
        let map = DeviceIdMap::from_ivhd(&ivhd(vec![
            entry(0, 3, 0x0100, DeviceEntryKind::RangeStart),
            entry(8, 4, 0x01ff, DeviceEntryKind::RangeEnd),
            select,
        ]));
        assert_eq!(map.ranges().len(), 3);
        assert_eq!(map.covered_count(), 256);
        assert_eq!(
            map.lookup(0x0110).map(|s| s.dte),
            Some(DteSetting::NMI_PASS)
        );
        assert_eq!(map.lookup(0x0110).map(|s| s.entry_offset), Some(4));
        assert_eq!(map.lookup(0x010f).map(|s| s.entry_offset), Some(0));
        assert_eq!(map.lookup(0x0111).map(|s| s.entry_offset), Some(0));
        assert_eq!(map.lookup(0x00ff), None);
        assert_eq!(map.lookup(0x0200), None);
    }

    #[test]
    fn all_covers_every_id_and_a_later_select_splits_it() {
        let map = DeviceIdMap::from_ivhd(&ivhd(vec![
            entry(0, 1, 0, DeviceEntryKind::All),
            entry(4, 2, 0, DeviceEntryKind::Select),
            entry(8, 2, 0xffff, DeviceEntryKind::Select),
        ]));
        assert_eq!(map.covered_count(), 65536);
        assert_eq!(map.ranges().len(), 3);
        assert_eq!(map.lookup(0).map(|s| s.entry_offset), Some(4));
        assert_eq!(map.lookup(0xffff).map(|s| s.entry_offset), Some(8));
        assert_eq!(map.lookup(0x1234).map(|s| s.entry_offset), Some(0));
    }

    #[test]
    fn alias_range_covers_the_target_and_keeps_its_alias() {
        let map = DeviceIdMap::from_ivhd(&ivhd(vec![
            entry(
                0,
                0x43,
                0x0300,
                DeviceEntryKind::AliasRangeStart { alias: 0x0300 },
            ),
            entry(8, 4, 0x03ff, DeviceEntryKind::RangeEnd),
            entry(
                12,
                0x42,
                0x0510,
                DeviceEntryKind::AliasSelect { alias: 0x0500 },
            ),
        ]));
        // 03:00.0 is inside its own alias range: it stays an aliased id.
        assert_eq!(map.lookup(0x0300).and_then(|s| s.alias), Some(0x0300));
        assert_eq!(map.lookup(0x0308).and_then(|s| s.alias), Some(0x0300));
        let target = map.lookup(0x0500).copied();
        assert_eq!(target.map(|s| s.coverage), Some(Coverage::AliasTarget));
        assert_eq!(target.and_then(|s| s.alias), None);
        assert_eq!(map.covered_count(), 256 + 2);
        assert_eq!(
            map.aliases(),
            vec![(0x0300..=0x03ff, 0x0300), (0x0510..=0x0510, 0x0500)]
        );
    }

    #[test]
    fn broken_ranges_in_hand_built_ivhds_are_ignored() {
        let map = DeviceIdMap::from_ivhd(&ivhd(vec![
            entry(0, 4, 0x00ff, DeviceEntryKind::RangeEnd),
            entry(4, 3, 0x0200, DeviceEntryKind::RangeStart),
            entry(8, 4, 0x0100, DeviceEntryKind::RangeEnd),
            entry(12, 3, 0x0300, DeviceEntryKind::RangeStart),
        ]));
        assert_eq!(map.covered_count(), 0);
    }

    #[test]
    fn painting_random_runs_matches_a_flat_array() {
        // A small deterministic generator: no dependencies, reproducible.
        let mut state = 0x1234_5678_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let mut painter = Painter::default();
        let mut flat = vec![None; 512];
        for step in 0..300usize {
            let a = (next() % 512) as u16;
            let b = (next() % 512) as u16;
            let (first, last) = (a.min(b), a.max(b));
            let settings = DeviceSettings {
                dte: DteSetting::empty(),
                ext: ExtendedDteSetting(0),
                alias: None,
                coverage: Coverage::Entry,
                entry_offset: step,
            };
            painter.paint(first, last, settings);
            for slot in &mut flat[usize::from(first)..=usize::from(last)] {
                *slot = Some(step);
            }
        }
        let map = DeviceIdMap {
            segment: 0,
            ranges: painter
                .runs
                .into_iter()
                .map(|(first, (last, settings))| DeviceIdRange {
                    first,
                    last,
                    settings,
                })
                .collect(),
        };
        for window in map.ranges().windows(2) {
            assert!(window[0].last < window[1].first, "runs overlap");
        }
        for (id, expected) in flat.iter().enumerate() {
            let found = map.lookup(id as u16).map(|s| s.entry_offset);
            assert_eq!(found, *expected, "id {id:#x}");
        }
    }
}
