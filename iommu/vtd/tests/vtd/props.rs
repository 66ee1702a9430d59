//! Random input: the parser returns Ok or Err and never panics (or hangs); whatever
//! parses can be resolved, bound, and printed without panicking.

use std::sync::OnceLock;

use proptest::prelude::*;
use sluice_iommu::IommuTopology;
use sluice_pci::{DeviceTable, PciAddress};
use sluice_vtd::DmarTopology;
use sluice_vtd::dmar::{Dmar, HEADER_LEN};

use crate::common::*;

fn machines() -> &'static [DeviceTable; 2] {
    static MACHINES: OnceLock<[DeviceTable; 2]> = OnceLock::new();
    MACHINES.get_or_init(|| [flat_machine(), bridges_machine()])
}

/// Everything a user of a parsed table does with it.
fn exercise(bytes: &[u8], extra: PciAddress) {
    let Ok(dmar) = Dmar::parse(bytes) else {
        return;
    };
    // Every structure lies inside the table.
    for unit in &dmar.units {
        assert!(unit.offset >= HEADER_LEN && unit.offset < bytes.len());
        for scope in &unit.scopes {
            assert!(!scope.path.is_empty());
            assert!(scope.offset > unit.offset && scope.offset < bytes.len());
        }
    }
    for table in machines() {
        let topology = DmarTopology::new(dmar.clone(), table);
        assert_eq!(topology.units().len(), dmar.units.len());
        for device in table.iter().map(|device| device.address).chain([extra]) {
            if let Some(binding) = topology.binding(table, device) {
                let unit = topology
                    .unit(binding.unit)
                    .expect("bound to an existing unit");
                assert_eq!(unit.segment(), device.segment);
            }
            let _ = topology.rmrrs_for(table, device).count();
        }
        let _ = topology.uncovered(table);
        let _ = topology.interrupt_sources().count();
        let _ = topology.to_string();
        for warning in topology.warnings() {
            let _ = warning.to_string();
        }
    }
}

fn address() -> impl Strategy<Value = PciAddress> {
    (0u16..2, any::<u8>(), 0u8..32, 0u8..8).prop_map(|(s, b, d, f)| PciAddress::new(s, b, d, f))
}

/// A well-formed device scope: any type, short paths over the first buses (where
/// the fake machines have their devices), sometimes out-of-range device/function.
fn scope_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        0u8..7,
        any::<u8>(),
        prop_oneof![0u8..8, Just(0xff), any::<u8>()],
        proptest::collection::vec((0u8..33, 0u8..9), 1..5),
    )
        .prop_map(|(scope_type, id, bus, path)| scope(scope_type, id, bus, &path))
}

/// A well-formed remapping structure of any type.
fn structure_bytes() -> impl Strategy<Value = Vec<u8>> {
    let scopes = |max| proptest::collection::vec(scope_bytes(), 0..max);
    prop_oneof![
        4 => (any::<bool>(), 0u16..2, 0u64..4, scopes(8)).prop_map(|(all, segment, page, scopes)| {
            drhd(all, segment, 0xfed9_0000 + page * 0x1000, &scopes)
        }),
        1 => (0u16..2, any::<u64>(), any::<u64>(), scopes(4))
            .prop_map(|(segment, base, limit, scopes)| rmrr(segment, base, limit, &scopes)),
        1 => (any::<u8>(), 0u16..2, scopes(4))
            .prop_map(|(flags, segment, scopes)| atsr(flags, segment, &scopes)),
        1 => (any::<u64>(), any::<u32>()).prop_map(|(base, domain)| rhsa(base, domain)),
        1 => (any::<u8>(), "[ -~]{0,12}").prop_map(|(number, name)| andd(number, &name)),
        1 => (any::<u8>(), 0u16..2, scopes(4))
            .prop_map(|(flags, segment, scopes)| satc(flags, segment, &scopes)),
        1 => (6u16.., proptest::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(kind, body)| raw_structure(kind, &body)),
    ]
}

/// An edit of a fixture: overwrite bytes, then maybe cut or extend it.
#[derive(Clone, Debug)]
struct Mutation {
    fixture: usize,
    writes: Vec<(usize, u8)>,
    resize: Option<usize>,
    fix_length: bool,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        0..FIXTURES.len(),
        proptest::collection::vec((0usize..160, any::<u8>()), 1..8),
        proptest::option::of(0usize..200),
        proptest::bool::weighted(0.9),
    )
        .prop_map(|(fixture, writes, resize, fix_length)| Mutation {
            fixture,
            writes,
            resize,
            fix_length,
        })
}

impl Mutation {
    fn apply(&self) -> Vec<u8> {
        let mut bytes = FIXTURES[self.fixture].1.to_vec();
        if let Some(length) = self.resize {
            bytes.resize(length, 0);
        }
        let len = bytes.len();
        for &(at, value) in &self.writes {
            if at < len {
                bytes[at] = value;
            }
        }
        if self.fix_length {
            fix_up(&mut bytes);
        } else {
            fix_checksum(&mut bytes);
        }
        bytes
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), extra in address()) {
        exercise(&bytes, extra);
    }

    #[test]
    fn arbitrary_structures_behind_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..200),
        extra in address(),
    ) {
        // Past the header checks, straight into the structure walk.
        let mut bytes = QEMU72_DEFAULT[..HEADER_LEN].to_vec();
        bytes.extend_from_slice(&body);
        fix_up(&mut bytes);
        exercise(&bytes, extra);
    }

    #[test]
    fn well_formed_random_tables_parse_and_resolve(
        structures in proptest::collection::vec(structure_bytes(), 0..6),
        extra in address(),
    ) {
        let bytes = with_structures(QEMU72_DEFAULT, &structures);
        let dmar = Dmar::parse(&bytes);
        prop_assert!(dmar.is_ok(), "{:?}", dmar.err());
        let drhds = structures.iter().filter(|s| s[..2] == [0, 0]).count();
        prop_assert_eq!(dmar.map(|dmar| dmar.units.len()).ok(), Some(drhds));
        exercise(&bytes, extra);
    }

    #[test]
    fn mutated_random_tables_never_panic(
        structures in proptest::collection::vec(structure_bytes(), 1..6),
        writes in proptest::collection::vec((HEADER_LEN..400, any::<u8>()), 1..4),
        extra in address(),
    ) {
        let mut bytes = with_structures(QEMU72_DEFAULT, &structures);
        let len = bytes.len();
        for (at, value) in writes {
            if at < len {
                bytes[at] = value;
            }
        }
        fix_checksum(&mut bytes);
        exercise(&bytes, extra);
    }

    #[test]
    fn mutated_fixtures_never_panic(mutation in mutation(), extra in address()) {
        let bytes = mutation.apply();
        exercise(&bytes, extra);
    }

    #[test]
    fn fixtures_with_fixed_up_byte_edits_mostly_still_parse(fixture in 0..FIXTURES.len(), at in 10usize..36, value in any::<u8>()) {
        // Edits of the OEM fields are invisible to the parser.
        let bytes = edited(FIXTURES[fixture].1, |t| t[at] = value);
        prop_assert!(Dmar::parse(&bytes).is_ok());
    }
}
