//! The C header `abi/include/sluice.h` describes the same ABI as the Rust crate.
//!
//! The test generates a C program that includes the header and prints, for every
//! structure, `name size`, for every field `name.field offset size type`, and for every
//! constant `NAME value`; compiles it with the system C compiler (`$CC`, else `cc`);
//! runs it; and compares every line with the Rust definitions (`size_of`, `offset_of!`,
//! the Rust constants). It also checks that the header defines no structure or constant
//! the comparison does not cover, that every structure's fields tile it exactly (no
//! implicit padding, no field left out), and that the header compiles as strict C99.
//!
//! Without a working C compiler the test fails: a layout check that silently passes
//! would prove nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_abi::vfio::{self, extension, min_size};
use sluice_abi::{self as abi, Errno, GuestStartInfo};

const HEADER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include/sluice.h");

/// One field: name, offset, size and a type name in Rust spelling (`u32`, `[u8]`).
struct Field {
    name: &'static str,
    offset: usize,
    size: usize,
    ty: String,
}

/// One structure: its C tag, its Rust size and its fields.
struct Struct {
    c_name: &'static str,
    size: usize,
    fields: Vec<Field>,
}

/// Size and type name of the field a projection returns.
fn field_type<T, F>(_project: fn(&T) -> &F) -> (usize, String) {
    let name = std::any::type_name::<F>();
    // `[u8; 32]` -> `[u8]`: the element type; the size is compared separately.
    let ty = match name.split_once(';') {
        Some((elem, _)) if name.starts_with('[') => format!("{elem}]"),
        _ => name.to_string(),
    };
    (size_of::<F>(), ty)
}

macro_rules! layout {
    ($c:literal => $t:ty { $($f:ident),* $(,)? }) => {
        Struct {
            c_name: $c,
            size: size_of::<$t>(),
            fields: vec![$({
                let (size, ty) = field_type(|s: &$t| &s.$f);
                Field { name: stringify!($f), offset: offset_of!($t, $f), size, ty }
            }),*],
        }
    };
}

fn structs() -> Vec<Struct> {
    vec![
        layout!("sluice_guest_start_info" => GuestStartInfo {
            magic, abi_version, _pad, ram_base, ram_size, cmdline_gpa, cmdline_len,
            name_len, name,
        }),
        layout!("sluice_vfio_iommu_type1_info" => vfio::IommuType1Info {
            argsz, flags, iova_pgsizes, cap_offset, _pad,
        }),
        layout!("sluice_vfio_info_cap_header" => vfio::InfoCapHeader { id, version, next }),
        layout!("sluice_vfio_iommu_type1_info_cap_iova_range" => vfio::IovaRangeCap {
            id, version, next, nr_iovas, _reserved,
        }),
        layout!("sluice_vfio_iova_range" => vfio::IovaRangeEntry { start, end }),
        layout!("sluice_vfio_iommu_type1_info_dma_avail" => vfio::DmaAvailCap {
            id, version, next, avail, _pad,
        }),
        layout!("sluice_vfio_iommu_type1_dma_map" => vfio::DmaMap {
            argsz, flags, vaddr, iova, size,
        }),
        layout!("sluice_vfio_iommu_type1_dma_unmap" => vfio::DmaUnmap {
            argsz, flags, iova, size,
        }),
        layout!("sluice_vfio_group_status" => vfio::GroupStatus { argsz, flags }),
        layout!("sluice_vfio_group_list" => vfio::GroupList {
            argsz, flags, count, entry_size,
        }),
        layout!("sluice_vfio_group_list_entry" => vfio::GroupListEntry {
            group_id, group_flags, device_flags, class_code, segment, bus, devfn,
            vendor_id, device_id,
        }),
        layout!("sluice_vfio_group_vm_info" => vfio::GroupVmInfo {
            argsz, flags, group_id, unit,
        }),
        layout!("sluice_vfio_device_info" => vfio::DeviceInfo {
            argsz, flags, num_regions, num_irqs, cap_offset, _pad,
        }),
        layout!("sluice_vfio_region_info" => vfio::RegionInfo {
            argsz, flags, index, cap_offset, size, offset,
        }),
        layout!("sluice_vfio_region_map" => vfio::RegionMap {
            argsz, flags, index, _pad, offset, size, gpa,
        }),
        layout!("sluice_vfio_region_access" => vfio::RegionAccess {
            argsz, flags, index, size, offset, data,
        }),
        layout!("sluice_vfio_irq_info" => vfio::IrqInfo { argsz, flags, index, count }),
        layout!("sluice_vfio_irq_set" => vfio::IrqSet {
            argsz, flags, index, start, count, _pad,
        }),
    ]
}

/// Every numeric constant of the header with its Rust value.
fn constants() -> Vec<(&'static str, u128)> {
    macro_rules! consts {
        ($($c:literal = $v:expr),* $(,)?) => { vec![$(($c, u128::try_from($v).unwrap())),*] };
    }
    let [sig_ebx, sig_ecx, sig_edx] = abi::signature();
    consts![
        // Core.
        "SLUICE_ABI_VERSION" = abi::ABI_VERSION,
        "SLUICE_NR_VERSION" = abi::nr::VERSION,
        "SLUICE_NR_CONSOLE_WRITE" = abi::nr::CONSOLE_WRITE,
        "SLUICE_NR_EXIT" = abi::nr::EXIT,
        "SLUICE_NR_NULL" = abi::nr::NULL,
        "SLUICE_NR_SELF_INTERRUPT" = abi::nr::SELF_INTERRUPT,
        "SLUICE_NR_VFIO_BASE" = abi::nr::VFIO_BASE,
        "SLUICE_CONSOLE_WRITE_MAX" = abi::CONSOLE_WRITE_MAX,
        "SLUICE_EPERM" = Errno::EPERM.code(),
        "SLUICE_ENOENT" = Errno::ENOENT.code(),
        "SLUICE_E2BIG" = Errno::E2BIG.code(),
        "SLUICE_EBADF" = Errno::EBADF.code(),
        "SLUICE_ENOMEM" = Errno::ENOMEM.code(),
        "SLUICE_EFAULT" = Errno::EFAULT.code(),
        "SLUICE_EBUSY" = Errno::EBUSY.code(),
        "SLUICE_EEXIST" = Errno::EEXIST.code(),
        "SLUICE_ENODEV" = Errno::ENODEV.code(),
        "SLUICE_EINVAL" = Errno::EINVAL.code(),
        "SLUICE_ENOTTY" = Errno::ENOTTY.code(),
        "SLUICE_ENOSPC" = Errno::ENOSPC.code(),
        "SLUICE_ENOSYS" = Errno::ENOSYS.code(),
        "SLUICE_MAX_ERRNO" = abi::MAX_ERRNO,
        "SLUICE_CPUID_LEAF_SIGNATURE" = abi::CPUID_LEAF_SIGNATURE,
        "SLUICE_CPUID_LEAF_VERSION" = abi::CPUID_LEAF_VERSION,
        "SLUICE_CPUID_MAX_LEAF" = abi::CPUID_MAX_LEAF,
        "SLUICE_SIGNATURE_EBX" = sig_ebx,
        "SLUICE_SIGNATURE_ECX" = sig_ecx,
        "SLUICE_SIGNATURE_EDX" = sig_edx,
        "SLUICE_GUEST_RAM_BASE" = abi::GUEST_RAM_BASE,
        "SLUICE_GUEST_START_INFO_GPA" = abi::GUEST_START_INFO_GPA,
        "SLUICE_GUEST_CMDLINE_GPA" = abi::GUEST_CMDLINE_GPA,
        "SLUICE_GUEST_CMDLINE_MAX" = abi::GUEST_CMDLINE_MAX,
        "SLUICE_GUEST_STACK_TOP" = abi::GUEST_STACK_TOP,
        "SLUICE_GUEST_RESERVED_END" = abi::GUEST_RESERVED_END,
        "SLUICE_GUEST_START_MAGIC" = abi::GUEST_START_MAGIC,
        "SLUICE_GUEST_NAME_MAX" = abi::GUEST_NAME_MAX,
        "SLUICE_GUEST_START_INFO_SIZE" = abi::GUEST_START_INFO_SIZE,
        // VFIO: limits.
        "SLUICE_VFIO_API_VERSION" = vfio::API_VERSION,
        "SLUICE_VFIO_MAX_ARGSZ" = vfio::MAX_ARGSZ,
        "SLUICE_VFIO_DEVICE_NAME_MAX" = vfio::DEVICE_NAME_MAX,
        "SLUICE_VFIO_DMA_MAPPINGS_MAX" = vfio::DMA_MAPPINGS_MAX,
        // VFIO: numbers.
        "SLUICE_NR_VFIO_GET_API_VERSION" = vfio::nr::GET_API_VERSION,
        "SLUICE_NR_VFIO_CHECK_EXTENSION" = vfio::nr::CHECK_EXTENSION,
        "SLUICE_NR_VFIO_CONTAINER_CREATE" = vfio::nr::CONTAINER_CREATE,
        "SLUICE_NR_VFIO_CONTAINER_SET_IOMMU" = vfio::nr::CONTAINER_SET_IOMMU,
        "SLUICE_NR_VFIO_IOMMU_GET_INFO" = vfio::nr::IOMMU_GET_INFO,
        "SLUICE_NR_VFIO_MAP_DMA" = vfio::nr::MAP_DMA,
        "SLUICE_NR_VFIO_UNMAP_DMA" = vfio::nr::UNMAP_DMA,
        "SLUICE_NR_VFIO_GROUP_LIST" = vfio::nr::GROUP_LIST,
        "SLUICE_NR_VFIO_GROUP_OPEN" = vfio::nr::GROUP_OPEN,
        "SLUICE_NR_VFIO_GROUP_GET_STATUS" = vfio::nr::GROUP_GET_STATUS,
        "SLUICE_NR_VFIO_GROUP_SET_CONTAINER" = vfio::nr::GROUP_SET_CONTAINER,
        "SLUICE_NR_VFIO_GROUP_UNSET_CONTAINER" = vfio::nr::GROUP_UNSET_CONTAINER,
        "SLUICE_NR_VFIO_CLOSE" = vfio::nr::CLOSE,
        "SLUICE_NR_VFIO_GROUP_GET_DEVICE" = vfio::nr::GROUP_GET_DEVICE,
        "SLUICE_NR_VFIO_DEVICE_GET_INFO" = vfio::nr::DEVICE_GET_INFO,
        "SLUICE_NR_VFIO_DEVICE_GET_REGION_INFO" = vfio::nr::DEVICE_GET_REGION_INFO,
        "SLUICE_NR_VFIO_DEVICE_MAP_REGION" = vfio::nr::DEVICE_MAP_REGION,
        "SLUICE_NR_VFIO_CONTAINER_DEBUG" = vfio::nr::CONTAINER_DEBUG,
        "SLUICE_NR_VFIO_GROUP_BIND_VM" = vfio::nr::GROUP_BIND_VM,
        "SLUICE_NR_VFIO_GROUP_UNBIND_VM" = vfio::nr::GROUP_UNBIND_VM,
        "SLUICE_NR_VFIO_GROUP_VM_INFO" = vfio::nr::GROUP_VM_INFO,
        "SLUICE_NR_VFIO_DEVICE_GET_IRQ_INFO" = vfio::nr::DEVICE_GET_IRQ_INFO,
        "SLUICE_NR_VFIO_DEVICE_SET_IRQS" = vfio::nr::DEVICE_SET_IRQS,
        "SLUICE_NR_VFIO_DEVICE_RESET" = vfio::nr::DEVICE_RESET,
        "SLUICE_NR_VFIO_DEVICE_REGION_READ" = vfio::nr::DEVICE_REGION_READ,
        "SLUICE_NR_VFIO_DEVICE_REGION_WRITE" = vfio::nr::DEVICE_REGION_WRITE,
        "SLUICE_NR_VFIO_END" = vfio::nr::END,
        "SLUICE_NR_VFIO_RESERVED_END" = vfio::nr::RESERVED_END,
        // VFIO: extensions and models.
        "SLUICE_VFIO_TYPE1_IOMMU" = extension::TYPE1_IOMMU,
        "SLUICE_VFIO_TYPE1v2_IOMMU" = extension::TYPE1V2_IOMMU,
        "SLUICE_VFIO_UNMAP_ALL" = extension::UNMAP_ALL,
        // VFIO: minimum sizes.
        "SLUICE_VFIO_MIN_SIZE_IOMMU_INFO" = min_size::IOMMU_INFO,
        "SLUICE_VFIO_MIN_SIZE_DMA_MAP" = min_size::DMA_MAP,
        "SLUICE_VFIO_MIN_SIZE_DMA_UNMAP" = min_size::DMA_UNMAP,
        "SLUICE_VFIO_MIN_SIZE_GROUP_STATUS" = min_size::GROUP_STATUS,
        "SLUICE_VFIO_MIN_SIZE_GROUP_LIST" = min_size::GROUP_LIST,
        "SLUICE_VFIO_MIN_SIZE_DEVICE_INFO" = min_size::DEVICE_INFO,
        "SLUICE_VFIO_MIN_SIZE_REGION_INFO" = min_size::REGION_INFO,
        "SLUICE_VFIO_MIN_SIZE_REGION_MAP" = min_size::REGION_MAP,
        "SLUICE_VFIO_MIN_SIZE_GROUP_VM_INFO" = min_size::GROUP_VM_INFO,
        "SLUICE_VFIO_MIN_SIZE_REGION_ACCESS" = min_size::REGION_ACCESS,
        "SLUICE_VFIO_MIN_SIZE_IRQ_INFO" = min_size::IRQ_INFO,
        "SLUICE_VFIO_MIN_SIZE_IRQ_SET" = min_size::IRQ_SET,
        // VFIO: flags, capability ids, indexes.
        "SLUICE_VFIO_IOMMU_INFO_PGSIZES" = vfio::IOMMU_INFO_PGSIZES,
        "SLUICE_VFIO_IOMMU_INFO_CAPS" = vfio::IOMMU_INFO_CAPS,
        "SLUICE_VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE" = vfio::CAP_IOVA_RANGE,
        "SLUICE_VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL" = vfio::CAP_DMA_AVAIL,
        "SLUICE_VFIO_DMA_MAP_FLAG_READ" = vfio::DMA_MAP_FLAG_READ,
        "SLUICE_VFIO_DMA_MAP_FLAG_WRITE" = vfio::DMA_MAP_FLAG_WRITE,
        "SLUICE_VFIO_DMA_UNMAP_FLAG_ALL" = vfio::DMA_UNMAP_FLAG_ALL,
        "SLUICE_VFIO_GROUP_FLAGS_VIABLE" = vfio::GROUP_FLAGS_VIABLE,
        "SLUICE_VFIO_GROUP_FLAGS_CONTAINER_SET" = vfio::GROUP_FLAGS_CONTAINER_SET,
        "SLUICE_VFIO_GROUP_LIST_OWNABLE" = vfio::GROUP_LIST_OWNABLE,
        "SLUICE_VFIO_GROUP_LIST_OPEN" = vfio::GROUP_LIST_OPEN,
        "SLUICE_VFIO_GROUP_LIST_BUSY" = vfio::GROUP_LIST_BUSY,
        "SLUICE_VFIO_GROUP_LIST_VIABLE" = vfio::GROUP_LIST_VIABLE,
        "SLUICE_VFIO_DEVICE_LIST_BRIDGE" = vfio::DEVICE_LIST_BRIDGE,
        "SLUICE_VFIO_DEVICE_LIST_HOST" = vfio::DEVICE_LIST_HOST,
        "SLUICE_VFIO_GROUP_VM_INFO_COHERENT" = vfio::GROUP_VM_INFO_COHERENT,
        "SLUICE_VFIO_DEVICE_FLAGS_RESET" = vfio::DEVICE_FLAGS_RESET,
        "SLUICE_VFIO_DEVICE_FLAGS_PCI" = vfio::DEVICE_FLAGS_PCI,
        "SLUICE_VFIO_PCI_BAR0_REGION_INDEX" = vfio::REGION_BAR0,
        "SLUICE_VFIO_PCI_BAR1_REGION_INDEX" = vfio::REGION_BAR0 + 1,
        "SLUICE_VFIO_PCI_BAR2_REGION_INDEX" = vfio::REGION_BAR0 + 2,
        "SLUICE_VFIO_PCI_BAR3_REGION_INDEX" = vfio::REGION_BAR0 + 3,
        "SLUICE_VFIO_PCI_BAR4_REGION_INDEX" = vfio::REGION_BAR0 + 4,
        "SLUICE_VFIO_PCI_BAR5_REGION_INDEX" = vfio::REGION_BAR5,
        "SLUICE_VFIO_PCI_ROM_REGION_INDEX" = vfio::REGION_ROM,
        "SLUICE_VFIO_PCI_CONFIG_REGION_INDEX" = vfio::REGION_CONFIG,
        "SLUICE_VFIO_PCI_VGA_REGION_INDEX" = vfio::REGION_VGA,
        "SLUICE_VFIO_PCI_NUM_REGIONS" = vfio::NUM_REGIONS,
        "SLUICE_VFIO_PCI_NUM_IRQS" = vfio::NUM_IRQS,
        "SLUICE_VFIO_PCI_OFFSET_SHIFT" = vfio::REGION_OFFSET_SHIFT,
        "SLUICE_VFIO_REGION_INFO_FLAG_READ" = vfio::REGION_INFO_FLAG_READ,
        "SLUICE_VFIO_REGION_INFO_FLAG_WRITE" = vfio::REGION_INFO_FLAG_WRITE,
        "SLUICE_VFIO_REGION_INFO_FLAG_MMAP" = vfio::REGION_INFO_FLAG_MMAP,
        // VFIO: interrupts.
        "SLUICE_VFIO_IRQ_INFO_EVENTFD" = vfio::IRQ_INFO_EVENTFD,
        "SLUICE_VFIO_IRQ_INFO_MASKABLE" = vfio::IRQ_INFO_MASKABLE,
        "SLUICE_VFIO_IRQ_INFO_AUTOMASKED" = vfio::IRQ_INFO_AUTOMASKED,
        "SLUICE_VFIO_IRQ_INFO_NORESIZE" = vfio::IRQ_INFO_NORESIZE,
        "SLUICE_VFIO_PCI_INTX_IRQ_INDEX" = vfio::IRQ_INDEX_INTX,
        "SLUICE_VFIO_PCI_MSI_IRQ_INDEX" = vfio::IRQ_INDEX_MSI,
        "SLUICE_VFIO_PCI_MSIX_IRQ_INDEX" = vfio::IRQ_INDEX_MSIX,
        "SLUICE_VFIO_PCI_ERR_IRQ_INDEX" = vfio::IRQ_INDEX_ERR,
        "SLUICE_VFIO_PCI_REQ_IRQ_INDEX" = vfio::IRQ_INDEX_REQ,
        "SLUICE_VFIO_IRQ_SET_DATA_NONE" = vfio::IRQ_SET_DATA_NONE,
        "SLUICE_VFIO_IRQ_SET_DATA_BOOL" = vfio::IRQ_SET_DATA_BOOL,
        "SLUICE_VFIO_IRQ_SET_DATA_EVENTFD" = vfio::IRQ_SET_DATA_EVENTFD,
        "SLUICE_VFIO_IRQ_SET_ACTION_MASK" = vfio::IRQ_SET_ACTION_MASK,
        "SLUICE_VFIO_IRQ_SET_ACTION_UNMASK" = vfio::IRQ_SET_ACTION_UNMASK,
        "SLUICE_VFIO_IRQ_SET_ACTION_TRIGGER" = vfio::IRQ_SET_ACTION_TRIGGER,
        "SLUICE_VFIO_IRQ_SET_DATA_TYPE_MASK" = vfio::IRQ_SET_DATA_TYPE_MASK,
        "SLUICE_VFIO_IRQ_SET_ACTION_TYPE_MASK" = vfio::IRQ_SET_ACTION_TYPE_MASK,
        "SLUICE_VFIO_IRQ_VECTOR_MIN" = vfio::IRQ_VECTOR_MIN,
    ]
}

/// String constants of the header with their Rust values.
fn string_constants() -> Vec<(&'static str, String)> {
    vec![(
        "SLUICE_SIGNATURE",
        String::from_utf8(abi::SIGNATURE.to_vec()).unwrap(),
    )]
}

/// Object-like macros of the header that are not ABI values.
const NOT_ABI: &[&str] = &["SLUICE_H"];

/// The C program that prints every layout and constant.
fn dump_program() -> String {
    let mut c = String::from(
        "#include <stdio.h>\n\
         #include <stddef.h>\n\
         #include \"sluice.h\"\n\
         #define KIND(e) _Generic((e), \
             uint8_t: \"u8\", uint16_t: \"u16\", uint32_t: \"u32\", uint64_t: \"u64\", \
             int8_t: \"i8\", int16_t: \"i16\", int32_t: \"i32\", int64_t: \"i64\", \
             uint8_t *: \"[u8]\", uint16_t *: \"[u16]\", uint32_t *: \"[u32]\", \
             uint64_t *: \"[u64]\", default: \"?\")\n\
         int main(void) {\n",
    );
    for s in structs() {
        let t = format!("struct {}", s.c_name);
        writeln!(c, "printf(\"%s %zu\\n\", \"{}\", sizeof({t}));", s.c_name).unwrap();
        for f in &s.fields {
            let member = format!("((({t} *)0)->{})", f.name);
            writeln!(
                c,
                "printf(\"%s.%s %zu %zu %s\\n\", \"{}\", \"{}\", offsetof({t}, {}), \
                 sizeof {member}, KIND({member}));",
                s.c_name, f.name, f.name
            )
            .unwrap();
        }
    }
    for (name, _) in constants() {
        writeln!(
            c,
            "printf(\"%s %llu\\n\", \"{name}\", (unsigned long long)({name}));"
        )
        .unwrap();
    }
    for (name, _) in string_constants() {
        writeln!(c, "printf(\"%s %s\\n\", \"{name}\", {name});").unwrap();
    }
    c.push_str("return 0;\n}\n");
    c
}

/// A translation unit that must compile as strict C99 and emits `sluice_hypercall`.
const C99_PROGRAM: &str = "#include \"sluice.h\"\n\
    #if defined(__x86_64__)\n\
    int64_t sluice_test_call(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2,\n\
                             uint64_t a3, uint64_t a4, uint64_t a5);\n\
    int64_t sluice_test_call(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2,\n\
                             uint64_t a3, uint64_t a4, uint64_t a5) {\n\
        return sluice_hypercall(nr, a0, a1, a2, a3, a4, a5);\n\
    }\n\
    #endif\n\
    struct sluice_vfio_iommu_type1_dma_map sluice_test_map = {\n\
        sizeof(struct sluice_vfio_iommu_type1_dma_map),\n\
        SLUICE_VFIO_DMA_MAP_FLAG_READ | SLUICE_VFIO_DMA_MAP_FLAG_WRITE, 0, 0, 4096 };\n";

/// What the Rust side expects the dump program to print: line key -> rest of the line.
fn expected() -> BTreeMap<String, String> {
    let mut e = BTreeMap::new();
    for s in structs() {
        e.insert(s.c_name.to_string(), s.size.to_string());
        for f in &s.fields {
            e.insert(
                format!("{}.{}", s.c_name, f.name),
                format!("{} {} {}", f.offset, f.size, f.ty),
            );
        }
    }
    for (name, v) in constants() {
        assert!(
            e.insert(name.to_string(), v.to_string()).is_none(),
            "{name} twice"
        );
    }
    for (name, v) in string_constants() {
        assert!(e.insert(name.to_string(), v).is_none(), "{name} twice");
    }
    e
}

/// The C compiler: `$CC` (may carry arguments), else `cc`. Panics, with a message that
/// says what to do, when it does not run.
fn c_compiler() -> Vec<String> {
    let spec = std::env::var("CC")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "cc".to_string());
    let words: Vec<String> = spec.split_whitespace().map(str::to_string).collect();
    let probe = Command::new(&words[0])
        .args(&words[1..])
        .arg("--version")
        .output();
    match probe {
        Ok(o) if o.status.success() => words,
        Ok(o) => panic!(
            "the C compiler `{spec}` does not work (`{spec} --version` exited with {}): \
             {}\nThis test compares abi/include/sluice.h with the Rust ABI and needs a C \
             compiler: install one (e.g. `apt-get install gcc`) or set CC.",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(err) => panic!(
            "no C compiler: running `{spec} --version` failed: {err}.\nThis test \
             compares abi/include/sluice.h with the Rust ABI and needs a C compiler: \
             install one (e.g. `apt-get install gcc`) or set CC."
        ),
    }
}

/// A fresh directory for this run's files.
fn scratch_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("c_header-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn compile(cc: &[String], args: &[&str], what: &str) {
    let include = Path::new(HEADER).parent().unwrap();
    let out = Command::new(&cc[0])
        .args(&cc[1..])
        .arg("-I")
        .arg(include)
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cc:?} for {what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {cc:?} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `#define NAME` of object-like macros and `struct NAME {` definitions in the header.
fn header_names() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = std::fs::read_to_string(HEADER).unwrap();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let (mut macros, mut structs) = (BTreeSet::new(), BTreeSet::new());
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("#define ") {
            let rest = rest.trim_start();
            let name = ident(rest);
            // Function-like macros have `(` right after the name.
            if !rest[name.len()..].starts_with('(') {
                macros.insert(name);
            }
        } else if let Some(rest) = line.strip_prefix("struct ") {
            let name = ident(rest);
            if rest[name.len()..].trim() == "{" {
                structs.insert(name);
            }
        }
    }
    (macros, structs)
}

#[test]
fn c_header_matches_rust() {
    let cc = c_compiler();
    let dir = scratch_dir();

    // Strict C99: the header must not need C11 (the checks use __extension__ there).
    let c99 = dir.join("c99.c");
    std::fs::write(&c99, C99_PROGRAM).unwrap();
    let c99_obj = dir.join("c99.o");
    compile(
        &cc,
        &[
            "-std=c99",
            "-O2",
            "-c",
            c99.to_str().unwrap(),
            "-o",
            c99_obj.to_str().unwrap(),
        ],
        "the header as C99",
    );

    // The dump program (C11 for _Generic, which names each field's type).
    let src = dir.join("dump.c");
    std::fs::write(&src, dump_program()).unwrap();
    let exe = dir.join("dump");
    compile(
        &cc,
        &[
            "-std=c11",
            src.to_str().unwrap(),
            "-o",
            exe.to_str().unwrap(),
        ],
        "the layout dump program",
    );
    let out = Command::new(&exe)
        .output()
        .expect("running the dump program");
    assert!(
        out.status.success(),
        "the dump program failed: {}",
        out.status
    );
    let stdout = String::from_utf8(out.stdout).unwrap();

    let mut got = BTreeMap::new();
    for line in stdout.lines() {
        let (key, rest) = line.split_once(' ').expect("`key value` lines");
        assert!(
            got.insert(key.to_string(), rest.to_string()).is_none(),
            "{key} printed twice"
        );
    }
    let want = expected();
    let mut errors = Vec::new();
    for (key, w) in &want {
        match got.get(key) {
            Some(g) if g == w => {}
            Some(g) => errors.push(format!("{key}: C says `{g}`, Rust says `{w}`")),
            None => errors.push(format!("{key}: not printed by the C program")),
        }
    }
    for key in got.keys().filter(|k| !want.contains_key(*k)) {
        errors.push(format!("{key}: printed by C, unknown to Rust"));
    }

    // The fields, as C lays them out, tile each structure: no implicit padding and no
    // C field the list above leaves out.
    for s in structs() {
        let mut spans: Vec<(usize, usize)> = s
            .fields
            .iter()
            .filter_map(|f| {
                let g = got.get(&format!("{}.{}", s.c_name, f.name))?;
                let mut w = g.split(' ').map(|x| x.parse::<usize>().ok());
                Some((w.next()??, w.next()??))
            })
            .collect();
        spans.sort();
        let mut end = 0;
        for (off, size) in spans {
            if off != end {
                errors.push(format!("{}: gap or overlap at offset {end}", s.c_name));
            }
            end = off + size;
        }
        let c_size = got.get(s.c_name).and_then(|v| v.parse::<usize>().ok());
        if c_size != Some(end) {
            errors.push(format!(
                "{}: fields end at {end}, sizeof is {c_size:?} (implicit padding or a \
                 field missing from the test)",
                s.c_name
            ));
        }
    }

    // Everything the header defines is covered.
    let (macros, c_structs) = header_names();
    for m in &macros {
        if !want.contains_key(m) && !NOT_ABI.contains(&m.as_str()) {
            errors.push(format!(
                "#define {m}: not compared with Rust (add it to the test)"
            ));
        }
    }
    let listed: BTreeSet<String> = structs().iter().map(|s| s.c_name.to_string()).collect();
    for s in c_structs.difference(&listed) {
        errors.push(format!(
            "struct {s}: not compared with Rust (add it to the test)"
        ));
    }
    for s in listed.difference(&c_structs) {
        errors.push(format!("struct {s}: not defined by the header"));
    }

    assert!(
        errors.is_empty(),
        "abi/include/sluice.h disagrees with the Rust ABI:\n  {}",
        errors.join("\n  ")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn test_covers_every_rust_structure_size() {
    // The structure list in this test against the sizes the crate documents.
    let sizes: BTreeMap<&str, usize> = structs().iter().map(|s| (s.c_name, s.size)).collect();
    assert_eq!(sizes["sluice_guest_start_info"], abi::GUEST_START_INFO_SIZE);
    assert_eq!(
        sizes["sluice_vfio_iommu_type1_info"],
        vfio::IommuType1Info::SIZE
    );
    assert_eq!(
        sizes["sluice_vfio_info_cap_header"],
        vfio::InfoCapHeader::SIZE
    );
    assert_eq!(
        sizes["sluice_vfio_iommu_type1_info_cap_iova_range"],
        vfio::IovaRangeCap::SIZE
    );
    assert_eq!(sizes["sluice_vfio_iova_range"], vfio::IovaRangeEntry::SIZE);
    assert_eq!(
        sizes["sluice_vfio_iommu_type1_info_dma_avail"],
        vfio::DmaAvailCap::SIZE
    );
    assert_eq!(sizes["sluice_vfio_iommu_type1_dma_map"], vfio::DmaMap::SIZE);
    assert_eq!(
        sizes["sluice_vfio_iommu_type1_dma_unmap"],
        vfio::DmaUnmap::SIZE
    );
    assert_eq!(sizes["sluice_vfio_group_status"], vfio::GroupStatus::SIZE);
    assert_eq!(sizes["sluice_vfio_group_list"], vfio::GroupList::SIZE);
    assert_eq!(
        sizes["sluice_vfio_group_list_entry"],
        vfio::GroupListEntry::SIZE
    );
    assert_eq!(sizes["sluice_vfio_device_info"], vfio::DeviceInfo::SIZE);
    assert_eq!(sizes["sluice_vfio_region_info"], vfio::RegionInfo::SIZE);
    assert_eq!(sizes["sluice_vfio_region_map"], vfio::RegionMap::SIZE);
    assert_eq!(sizes["sluice_vfio_group_vm_info"], vfio::GroupVmInfo::SIZE);
    assert_eq!(sizes["sluice_vfio_region_access"], vfio::RegionAccess::SIZE);
    assert_eq!(sizes["sluice_vfio_irq_info"], vfio::IrqInfo::SIZE);
    assert_eq!(sizes["sluice_vfio_irq_set"], vfio::IrqSet::SIZE);
    assert_eq!(sizes.len(), 18);
}
