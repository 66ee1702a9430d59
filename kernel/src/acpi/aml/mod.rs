//! A small AML reader: just enough of ACPI's bytecode to find and run `_PRT`.
//!
//! The DSDT is not a table of fields like the MADT: it is a program, in ACPI Machine
//! Language, that *defines a namespace* (`\_SB.PCI0`, `\_SB.GSIA`, …) and *methods* the OS
//! calls to ask the firmware questions. Which IOAPIC input a PCI slot's INTx pin is wired
//! to is one such question: the answer is whatever the host bridge's `_PRT` returns.
//!
//! This is deliberately not a general interpreter (ACPICA is ~100k lines). It has two parts:
//!
//! * [`Namespace`] walks the *definitions* of one or more tables (Scope, Device, Method,
//!   Name, Field, OperationRegion, …) and records every object by its full path. It does
//!   not run anything. Bodies it cannot read (an unknown opcode, a length that lies) are
//!   abandoned where the problem is — the enclosing object's `PkgLength` tells where the
//!   next definition starts — and recorded in [`Namespace::problems`].
//! * [`Interpreter`] evaluates Names and small methods: Store, If/Else, While/Break,
//!   Return, LEqual/LNot/LLess/LGreater (so LNotEqual etc.), integer constants, strings,
//!   Buffer, Package, ArgN, LocalN, method calls, and references to Name objects. Anything
//!   else is an error that names the method and the opcode: a routing table must never be
//!   guessed.
//!
//! Firmware is input, not truth: every read is bounds checked, every length is checked
//! against its parent, and nesting, evaluation steps, package and buffer sizes, name
//! lengths and the number of objects all have limits, so hostile AML ends in an error,
//! never in a panic or an endless loop. The machine stack it needs is bounded too: the
//! namespace walk keeps the bodies it is in on the heap, and the interpreter, which
//! recurses, stops at [`MAX_DEPTH`] levels of terms and [`MAX_VALUE_DEPTH`] levels of
//! values, which together fit in well under a quarter of the kernel's 128 KiB boot stack
//! (measured: see [`MAX_DEPTH`]).

#[cfg(test)]
pub(crate) mod encode;
mod interp;
mod namespace;
#[cfg(test)]
mod tests;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub use interp::Interpreter;
pub use namespace::{Namespace, Node, NodeKind, Span};

/// Deepest nesting of definitions, expressions and method calls (real tables stay < 10).
///
/// The interpreter recurses at each level (a method call takes three: the call, its body,
/// the term in it). Worst case, measured in a release build (x86-64, rustc 1.95) by
/// painting the stack: ~650 bytes a level, for the costliest chain (term → package → eval,
/// a VarPackage whose count is a VarPackage …), so the `MAX_DEPTH + 1` levels an
/// evaluation can reach take 33 × 650 ≈ 21 KiB; with a value nested [`MAX_VALUE_DEPTH`]
/// deep cloned at the bottom (≤ 3.3 KiB), under 25 KiB, of the 128 KiB boot stack. (An
/// unoptimized build takes ~11 times as much.) The namespace walk keeps its open bodies
/// on the heap: its depth costs no stack.
pub const MAX_DEPTH: usize = 32;
/// Deepest nesting of values: packages inside packages (a `_PRT` nests 2 deep). Cloning,
/// dropping and weighing a value recurse once per level (cloning ~210 bytes a level in a
/// release build), so no value may be deeper: the Package that would be is an error.
pub const MAX_VALUE_DEPTH: usize = 16;
/// Opcodes one [`Interpreter`] may execute, over all its evaluations together: one
/// reading of the routing (`_PIC`, the ids of the devices with a `_PRT`, `_PRT`, every
/// link's `_CRS`) gets this many, however many devices the firmware defines. QEMU's whole
/// reading takes 669; at ~35 ns a step natively the whole budget costs ~3.5 ms (several
/// times that under TCG), once.
pub const MAX_STEPS: u32 = 100_000;
/// Longest path, in 4-character segments.
pub const MAX_PATH_SEGS: usize = 32;
/// Largest package (a root bus `_PRT` has at most 32 slots × 4 pins = 128 entries).
pub const MAX_PACKAGE_ELEMENTS: usize = 1024;
/// Largest buffer (resource templates are tens of bytes).
pub const MAX_BUFFER_LEN: usize = 64 * 1024;
/// Most objects in a namespace (QEMU's q35 DSDT defines ~400).
pub const MAX_NODES: usize = 16 * 1024;
/// Problems kept in [`Namespace::problems`]; more are only counted.
pub const MAX_PROBLEMS: usize = 16;

/// The opcodes this reader knows, named as in the ACPI specification (§20.3).
pub(crate) mod op {
    pub const ZERO: u8 = 0x00;
    pub const ONE: u8 = 0x01;
    pub const ALIAS: u8 = 0x06;
    pub const NAME: u8 = 0x08;
    pub const BYTE_PREFIX: u8 = 0x0A;
    pub const WORD_PREFIX: u8 = 0x0B;
    pub const DWORD_PREFIX: u8 = 0x0C;
    pub const STRING_PREFIX: u8 = 0x0D;
    pub const QWORD_PREFIX: u8 = 0x0E;
    pub const SCOPE: u8 = 0x10;
    pub const BUFFER: u8 = 0x11;
    pub const PACKAGE: u8 = 0x12;
    pub const VAR_PACKAGE: u8 = 0x13;
    pub const METHOD: u8 = 0x14;
    pub const EXTERNAL: u8 = 0x15;
    pub const DUAL_NAME_PREFIX: u8 = 0x2E;
    pub const MULTI_NAME_PREFIX: u8 = 0x2F;
    pub const EXT_PREFIX: u8 = 0x5B;
    pub const ROOT_CHAR: u8 = b'\\';
    pub const PARENT_PREFIX: u8 = b'^';
    pub const LOCAL0: u8 = 0x60;
    pub const LOCAL7: u8 = 0x67;
    pub const ARG0: u8 = 0x68;
    pub const ARG6: u8 = 0x6E;
    pub const STORE: u8 = 0x70;
    pub const CREATE_DWORD_FIELD: u8 = 0x8A;
    pub const CREATE_WORD_FIELD: u8 = 0x8B;
    pub const CREATE_BYTE_FIELD: u8 = 0x8C;
    pub const CREATE_BIT_FIELD: u8 = 0x8D;
    pub const CREATE_QWORD_FIELD: u8 = 0x8F;
    pub const LNOT: u8 = 0x92;
    pub const LEQUAL: u8 = 0x93;
    pub const LGREATER: u8 = 0x94;
    pub const LLESS: u8 = 0x95;
    pub const IF: u8 = 0xA0;
    pub const ELSE: u8 = 0xA1;
    pub const WHILE: u8 = 0xA2;
    pub const NOOP: u8 = 0xA3;
    pub const RETURN: u8 = 0xA4;
    pub const BREAK: u8 = 0xA5;
    pub const ONES: u8 = 0xFF;

    // After EXT_PREFIX (0x5B).
    pub const MUTEX: u8 = 0x01;
    pub const EVENT: u8 = 0x02;
    pub const CREATE_FIELD: u8 = 0x13;
    pub const REVISION: u8 = 0x30;
    pub const DEBUG: u8 = 0x31;
    pub const OP_REGION: u8 = 0x80;
    pub const FIELD: u8 = 0x81;
    pub const DEVICE: u8 = 0x82;
    pub const PROCESSOR: u8 = 0x83;
    pub const POWER_RES: u8 = 0x84;
    pub const THERMAL_ZONE: u8 = 0x85;
    pub const INDEX_FIELD: u8 = 0x86;
    pub const BANK_FIELD: u8 = 0x87;
    pub const DATA_REGION: u8 = 0x88;

    /// A name for error messages: the known opcodes, plus common ones this reader does
    /// not evaluate (so "unsupported opcode 0x5b23 (Acquire)" says what the firmware did).
    /// Two-byte opcodes are `0x5B00 | second byte`.
    pub fn name(opcode: u16) -> &'static str {
        match opcode {
            0x00 => "Zero",
            0x01 => "One",
            0x06 => "Alias",
            0x08 => "Name",
            0x0A..=0x0E => "constant",
            0x10 => "Scope",
            0x11 => "Buffer",
            0x12 => "Package",
            0x13 => "VarPackage",
            0x14 => "Method",
            0x15 => "External",
            0x60..=0x67 => "LocalN",
            0x68..=0x6E => "ArgN",
            0x70 => "Store",
            0x71 => "RefOf",
            0x72 => "Add",
            0x73 => "Concatenate",
            0x74 => "Subtract",
            0x75 => "Increment",
            0x76 => "Decrement",
            0x77 => "Multiply",
            0x78 => "Divide",
            0x79 => "ShiftLeft",
            0x7A => "ShiftRight",
            0x7B => "And",
            0x7D => "Or",
            0x7F => "Xor",
            0x83 => "DerefOf",
            0x86 => "Notify",
            0x87 => "SizeOf",
            0x88 => "Index",
            0x8A..=0x8D | 0x8F => "CreateXField",
            0x8E => "ObjectType",
            0x90 => "LAnd",
            0x91 => "LOr",
            0x92 => "LNot",
            0x93 => "LEqual",
            0x94 => "LGreater",
            0x95 => "LLess",
            0x96 => "ToBuffer",
            0x98 => "ToHexString",
            0x99 => "ToInteger",
            0xA0 => "If",
            0xA1 => "Else",
            0xA2 => "While",
            0xA3 => "Noop",
            0xA4 => "Return",
            0xA5 => "Break",
            0x9F => "Continue",
            0xFF => "Ones",
            0x5B01 => "Mutex",
            0x5B02 => "Event",
            0x5B12 => "CondRefOf",
            0x5B13 => "CreateField",
            0x5B21 => "Stall",
            0x5B22 => "Sleep",
            0x5B23 => "Acquire",
            0x5B27 => "Release",
            0x5B30 => "Revision",
            0x5B31 => "Debug",
            0x5B80 => "OperationRegion",
            0x5B81 => "Field",
            0x5B82 => "Device",
            0x5B83 => "Processor",
            0x5B84 => "PowerResource",
            0x5B85 => "ThermalZone",
            0x5B86 => "IndexField",
            0x5B87 => "BankField",
            0x5B88 => "DataRegion",
            _ => "unknown",
        }
    }
}

/// One 4-character name segment, such as `_SB_` or `PCI0`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NameSeg(pub [u8; 4]);

impl NameSeg {
    /// A segment from ASL text: "_SB" is padded to `_SB_` as ASL compilers do.
    pub fn new(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.is_empty() || b.len() > 4 {
            return None;
        }
        let mut seg = [b'_'; 4];
        seg[..b.len()].copy_from_slice(b);
        Self::from_bytes(seg)
    }

    /// Lead character `A-Z` or `_`, the rest also `0-9`.
    pub fn from_bytes(seg: [u8; 4]) -> Option<Self> {
        let lead_ok = seg[0].is_ascii_uppercase() || seg[0] == b'_';
        let rest_ok = seg[1..]
            .iter()
            .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_');
        (lead_ok && rest_ok).then_some(Self(seg))
    }
}

impl fmt::Display for NameSeg {
    /// Without the padding underscores, as iasl prints it: `_SB`, `PCI0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = 1 + self.0[1..]
            .iter()
            .rposition(|&c| c != b'_')
            .map_or(0, |i| i + 1);
        for &c in &self.0[..len] {
            write!(f, "{}", c as char)?;
        }
        Ok(())
    }
}

impl fmt::Debug for NameSeg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// An absolute path in the namespace, such as `\_SB.PCI0._PRT` (the root is empty).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AmlPath(Vec<NameSeg>);

impl AmlPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Parse `\_SB.PCI0._PRT` (absolute paths only; for tests and fixed names).
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix('\\')?;
        if rest.is_empty() {
            return Some(Self::root());
        }
        rest.split('.')
            .map(NameSeg::new)
            .collect::<Option<Vec<_>>>()
            .map(Self)
    }

    pub fn segments(&self) -> &[NameSeg] {
        &self.0
    }

    pub fn child(&self, seg: NameSeg) -> Self {
        let mut p = self.clone();
        p.0.push(seg);
        p
    }

    /// The enclosing scope; `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        let (_, up) = self.0.split_last()?;
        Some(Self(up.to_vec()))
    }

    pub fn last(&self) -> Option<NameSeg> {
        self.0.last().copied()
    }
}

impl fmt::Display for AmlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\\")?;
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for AmlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A name as written in AML: optional root (`\`) or parent (`^`) prefixes, then segments.
#[derive(Clone, PartialEq, Eq)]
pub struct NameString {
    pub root: bool,
    pub parents: u8,
    pub segs: Vec<NameSeg>,
}

impl NameString {
    /// ACPI §5.3: only a lone NameSeg with no prefix is searched for in the parent scopes;
    /// every other form names exactly one path.
    pub fn searches_upward(&self) -> bool {
        !self.root && self.parents == 0 && self.segs.len() == 1
    }

    /// The exact path this name means when used in `scope` (no upward search). An error
    /// when `^` climbs above the root or the path gets longer than [`MAX_PATH_SEGS`].
    pub fn in_scope(&self, scope: &AmlPath) -> Result<AmlPath, ErrorKind> {
        let mut segs = if self.root {
            Vec::new()
        } else {
            let keep = scope.0.len().checked_sub(self.parents as usize);
            scope.0[..keep.ok_or(ErrorKind::BadName)?].to_vec()
        };
        segs.extend_from_slice(&self.segs);
        if segs.len() > MAX_PATH_SEGS {
            let size = segs.len() as u64;
            return Err(ErrorKind::TooLarge { what: "path", size });
        }
        Ok(AmlPath(segs))
    }
}

impl fmt::Display for NameString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.root {
            f.write_str("\\")?;
        }
        for _ in 0..self.parents {
            f.write_str("^")?;
        }
        for (i, s) in self.segs.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NameString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// An AML value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Integer(u64),
    String(String),
    Buffer(Vec<u8>),
    /// The elements present in the AML. (A package declared longer than its element list
    /// has uninitialized tail elements in ACPI; they are simply not here.)
    Package(Vec<Value>),
    /// A name written inside a package (as `_PRT` names its link devices): kept as
    /// written, with the scope it is to be resolved from, because the object it names
    /// is only looked up when the consumer needs it.
    Reference {
        name: NameString,
        scope: AmlPath,
    },
}

impl Value {
    pub fn as_integer(&self) -> Option<u64> {
        match *self {
            Value::Integer(v) => Some(v),
            _ => None,
        }
    }

    /// How deeply packages nest in this value: 0 for anything but a package, 1 for a
    /// package of non-packages, … counted no further than `MAX_VALUE_DEPTH + 1`, so this
    /// recursion is bounded whatever the value.
    pub fn nesting(&self) -> usize {
        fn upto(v: &Value, limit: usize) -> usize {
            match v {
                Value::Package(p) if limit > 0 => {
                    1 + p.iter().map(|e| upto(e, limit - 1)).max().unwrap_or(0)
                }
                _ => 0,
            }
        }
        upto(self, MAX_VALUE_DEPTH + 1)
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Integer(_) => "Integer",
            Value::String(_) => "String",
            Value::Buffer(_) => "Buffer",
            Value::Package(_) => "Package",
            Value::Reference { .. } => "Reference",
        }
    }
}

/// What went wrong, and where: `offset` is a byte offset in the table (as in an iasl
/// listing), `context` the method or name being evaluated when there was one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmlError {
    pub offset: usize,
    pub context: Option<AmlPath>,
    pub kind: ErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// An object runs past the end of its enclosing object (or of the table).
    Truncated,
    /// A PkgLength shorter than its own encoding or running past its parent's end.
    BadPkgLength,
    /// Bytes that do not form a valid NameString.
    BadName,
    /// An opcode this reader does not evaluate (or, in a definition list, does not know).
    Unsupported { opcode: u16 },
    /// A name that resolves to nothing.
    NotFound { name: NameString },
    /// An object that exists but cannot be used this way (a Device read as a value …).
    WrongObject { path: AmlPath, what: &'static str },
    /// A value of the wrong type for the operation.
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    /// ArgN or LocalN read before it was set.
    Uninitialized { what: &'static str, index: u8 },
    /// A method called with a number of arguments other than it declares.
    ArgumentCount { expected: u8, given: usize },
    /// A method that ended without Return where a value was needed.
    NoValue,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Packages nested deeper than [`MAX_VALUE_DEPTH`].
    ValueTooDeep,
    /// The interpreter's budget of [`MAX_STEPS`] opcodes is spent: a loop that does not
    /// end, or close to it.
    TooManySteps,
    /// A package, buffer or namespace larger than its limit.
    TooLarge { what: &'static str, size: u64 },
    /// The table is not a DSDT/SSDT or its header is inconsistent.
    BadTable { what: &'static str },
}

impl AmlError {
    pub(crate) fn at(offset: usize, kind: ErrorKind) -> Self {
        Self {
            offset,
            context: None,
            kind,
        }
    }

    /// Name the method or object being evaluated, unless an inner one already is.
    pub(crate) fn within(mut self, path: &AmlPath) -> Self {
        if self.context.is_none() {
            self.context = Some(path.clone());
        }
        self
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "object runs past the end of its parent"),
            Self::BadPkgLength => write!(f, "invalid PkgLength"),
            Self::BadName => write!(f, "invalid name"),
            Self::Unsupported { opcode } => {
                write!(
                    f,
                    "unsupported opcode {opcode:#04x} ({})",
                    op::name(*opcode)
                )
            }
            Self::NotFound { name } => write!(f, "{name} not found"),
            Self::WrongObject { path, what } => write!(f, "{path} is {what}"),
            Self::WrongType { expected, found } => write!(f, "expected {expected}, found {found}"),
            Self::Uninitialized { what, index } => write!(f, "{what}{index} is not set"),
            Self::ArgumentCount { expected, given } => {
                write!(f, "takes {expected} arguments, given {given}")
            }
            Self::NoValue => write!(f, "returned no value"),
            Self::TooDeep => write!(f, "nested deeper than {MAX_DEPTH}"),
            Self::ValueTooDeep => {
                write!(f, "packages nested deeper than {MAX_VALUE_DEPTH} levels")
            }
            Self::TooManySteps => {
                write!(f, "did not finish within the budget of {MAX_STEPS} steps")
            }
            Self::TooLarge { what, size } => write!(f, "{what} of size {size} is over the limit"),
            Self::BadTable { what } => write!(f, "{what}"),
        }
    }
}

impl fmt::Display for AmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.context {
            Some(p) => write!(f, "{p}: {} at offset {:#x}", self.kind, self.offset),
            None => write!(f, "{} at offset {:#x}", self.kind, self.offset),
        }
    }
}

/// A read position inside one AML object: `pos` may never pass `end`, the end of the
/// innermost object being read (not just the end of the table).
#[derive(Clone, Copy)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pub pos: usize,
    pub end: usize,
}

impl<'a> Cursor<'a> {
    /// `end` is clamped to the bytes given, so a cursor can never index out of bounds.
    pub fn new(bytes: &'a [u8], pos: usize, end: usize) -> Self {
        let end = end.min(bytes.len());
        Self {
            bytes,
            pos: pos.min(end),
            end,
        }
    }

    /// A cursor over `pos..end` of the same bytes (`end` no further than this one's).
    pub fn sub(&self, pos: usize, end: usize) -> Self {
        Self::new(self.bytes, pos, end.min(self.end))
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    pub fn peek(&self) -> Option<u8> {
        (self.pos < self.end).then(|| self.bytes[self.pos])
    }

    pub fn byte(&mut self) -> Result<u8, AmlError> {
        let b = self
            .peek()
            .ok_or(AmlError::at(self.pos, ErrorKind::Truncated))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], AmlError> {
        if self.end - self.pos < n {
            return Err(AmlError::at(self.pos, ErrorKind::Truncated));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A little-endian unsigned integer of `n` ≤ 8 bytes.
    pub fn uint(&mut self, n: usize) -> Result<u64, AmlError> {
        Ok(self
            .take(n)?
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64))
    }

    /// Read a PkgLength (ACPI §20.2.4) and return the absolute end offset of the object
    /// it measures. The length counts its own 1–4 bytes, so it starts where they start.
    pub fn pkg_length(&mut self) -> Result<usize, AmlError> {
        let start = self.pos;
        let lead = self.byte()?;
        let extra = (lead >> 6) as usize;
        let len = if extra == 0 {
            (lead & 0x3F) as usize
        } else {
            let more = self.uint(extra)? as usize;
            (lead & 0x0F) as usize | (more << 4)
        };
        let bad = AmlError::at(start, ErrorKind::BadPkgLength);
        if len < 1 + extra {
            return Err(bad);
        }
        let end = start.checked_add(len).ok_or(bad.clone())?;
        if end > self.end {
            return Err(bad);
        }
        Ok(end)
    }

    /// Read a NameString (ACPI §20.2.2).
    pub fn name_string(&mut self) -> Result<NameString, AmlError> {
        let start = self.pos;
        let bad = || AmlError::at(start, ErrorKind::BadName);
        let mut name = NameString {
            root: false,
            parents: 0,
            segs: Vec::new(),
        };
        if self.peek() == Some(op::ROOT_CHAR) {
            self.pos += 1;
            name.root = true;
        } else {
            while self.peek() == Some(op::PARENT_PREFIX) {
                self.pos += 1;
                name.parents += 1;
                if name.parents as usize > MAX_PATH_SEGS {
                    return Err(bad());
                }
            }
        }
        let count = match self.peek().ok_or_else(bad)? {
            0x00 => {
                self.pos += 1;
                0
            }
            op::DUAL_NAME_PREFIX => {
                self.pos += 1;
                2
            }
            op::MULTI_NAME_PREFIX => {
                self.pos += 1;
                self.byte()? as usize
            }
            _ => 1,
        };
        if count > MAX_PATH_SEGS {
            return Err(AmlError::at(
                start,
                ErrorKind::TooLarge {
                    what: "name",
                    size: count as u64,
                },
            ));
        }
        for _ in 0..count {
            let b = self.take(4)?;
            let seg = NameSeg::from_bytes([b[0], b[1], b[2], b[3]]).ok_or_else(bad)?;
            name.segs.push(seg);
        }
        Ok(name)
    }
}

/// Whether `b` can start a NameString (a name reference or method call in a term list).
pub(crate) fn starts_name(b: u8) -> bool {
    b.is_ascii_uppercase()
        || matches!(
            b,
            b'_' | op::ROOT_CHAR | op::PARENT_PREFIX | op::DUAL_NAME_PREFIX | op::MULTI_NAME_PREFIX
        )
}
