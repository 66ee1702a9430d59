//! Loading: walking a table's definitions into a namespace of full paths.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::{
    AmlError, AmlPath, Cursor, ErrorKind, MAX_DEPTH, MAX_NODES, MAX_PROBLEMS, NameString, op,
    starts_name,
};
use crate::acpi::SDT_HEADER_LEN;

/// Where an object's AML lives: bytes `start..end` of loaded table number `table`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub table: usize,
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Device,
    /// A control method; its body is run only when evaluated.
    Method {
        args: u8,
        body: Span,
    },
    /// A named data object; its value is parsed only when evaluated (`data` is the
    /// DataRefObject after the name).
    Name {
        data: Span,
    },
    /// A field unit: a window onto hardware (an operation region). Never evaluated.
    FieldUnit,
    /// Anything else that has a name (OperationRegion, Mutex, Event, Processor, …,
    /// CreateXField buffer fields), by its opcode.
    Other {
        opcode: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub path: AmlPath,
    pub kind: NodeKind,
}

/// A definition body still to be walked: where it is, and the scope it defines into.
type Body<'a> = (Cursor<'a>, AmlPath);

/// Every object the loaded tables define, by full path, in definition order.
///
/// A definition the walker cannot read ends the walk of the body it is in (the Device,
/// Scope … whose PkgLength bounds it; at a table's top level, the rest of the table) and
/// is recorded in [`Self::problems`]; the enclosing bodies go on after it.
///
/// `Scope` creates nothing (it only says where the definitions inside it go), so the
/// predefined scopes `\_SB`, `\_GPE` … need no node. A second definition of a path is
/// ignored and counted (ACPI calls it an error; the first one is what an OS would keep).
/// Definitions inside `If`/`Else`/`While` at definition level (conditional definitions,
/// found in some SSDTs) and inside Processor/PowerResource/ThermalZone are skipped.
pub struct Namespace<'a> {
    tables: Vec<&'a [u8]>,
    nodes: Vec<Node>,
    index: BTreeMap<AmlPath, usize>,
    /// Definition bodies abandoned early, first [`super::MAX_PROBLEMS`] of them: the rest
    /// of each enclosing body was not read.
    pub problems: Vec<AmlError>,
    pub problems_dropped: usize,
    pub duplicates: usize,
    /// All ones in the DSDT's integer width: 32 bits for a DSDT of revision < 2.
    ones: u64,
}

impl Default for Namespace<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Namespace<'a> {
    pub fn new() -> Self {
        Self {
            tables: Vec::new(),
            nodes: Vec::new(),
            index: BTreeMap::new(),
            problems: Vec::new(),
            problems_dropped: 0,
            duplicates: 0,
            ones: u64::MAX,
        }
    }

    /// Load a whole DSDT or SSDT (header included). The first table loaded decides the
    /// integer width, as the DSDT does in ACPI. Fails only when the header is unusable;
    /// problems inside the AML are recorded in [`Self::problems`] and loading goes on.
    pub fn load_table(&mut self, table: &'a [u8]) -> Result<(), AmlError> {
        let bad = |what| Err(AmlError::at(0, ErrorKind::BadTable { what }));
        if table.len() < SDT_HEADER_LEN {
            return bad("table shorter than its 36-byte header");
        }
        let declared = u32::from_le_bytes([table[4], table[5], table[6], table[7]]) as usize;
        if declared != table.len() {
            return bad("table length field differs from the bytes provided");
        }
        if &table[0..4] != b"DSDT" && &table[0..4] != b"SSDT" {
            return bad("signature is neither DSDT nor SSDT");
        }
        if self.tables.is_empty() && table[8] < 2 {
            self.ones = u32::MAX as u64;
        }
        self.tables.push(table);
        let index = self.tables.len() - 1;
        self.walk(index);
        Ok(())
    }

    pub fn table(&self, index: usize) -> &'a [u8] {
        self.tables.get(index).copied().unwrap_or(&[])
    }

    /// The integer with all bits set, in this namespace's integer width.
    pub fn ones(&self) -> u64 {
        self.ones
    }

    /// Every object, in definition order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn get(&self, path: &AmlPath) -> Option<&Node> {
        self.index.get(path).map(|&i| &self.nodes[i])
    }

    /// The object `name` refers to when used in `scope`: a lone NameSeg is searched for
    /// in `scope`, then each enclosing scope up to the root (ACPI §5.3); every other
    /// form names one exact path.
    pub fn resolve(&self, name: &NameString, scope: &AmlPath) -> Option<AmlPath> {
        if !name.searches_upward() {
            return name
                .in_scope(scope)
                .ok()
                .filter(|p| self.index.contains_key(p));
        }
        let mut at = Some(scope.clone());
        while let Some(s) = at {
            let candidate = s.child(name.segs[0]);
            if self.index.contains_key(&candidate) {
                return Some(candidate);
            }
            at = s.parent();
        }
        None
    }

    fn problem(&mut self, e: AmlError) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(e);
        } else {
            self.problems_dropped += 1;
        }
    }

    /// Walk the definitions of a whole table. A Scope or Device body is walked when it
    /// is met, before the definitions after it, as if by recursion; but the bodies being
    /// walked are kept on a heap stack (at most [`MAX_DEPTH`] of them), so how deeply a
    /// table nests costs no machine stack. A problem ends the body it is in only.
    fn walk(&mut self, table: usize) {
        let bytes = self.tables[table];
        let mut open = Vec::new();
        open.push((
            Cursor::new(bytes, SDT_HEADER_LEN, bytes.len()),
            AmlPath::root(),
        ));
        while let Some((c, scope)) = open.last_mut() {
            if c.at_end() {
                open.pop();
                continue;
            }
            match self.definition(c, table, scope) {
                Ok(None) => {}
                Ok(Some(body)) if open.len() > MAX_DEPTH => {
                    self.problem(AmlError::at(body.0.pos, ErrorKind::TooDeep));
                }
                Ok(Some(body)) => open.push(body),
                Err(e) => {
                    self.problem(e);
                    open.pop();
                }
            }
        }
    }

    fn define(
        &mut self,
        at: usize,
        name: &NameString,
        scope: &AmlPath,
        kind: NodeKind,
    ) -> Result<AmlPath, AmlError> {
        // New names are always relative to the current scope: no upward search.
        let path = name.in_scope(scope).map_err(|k| AmlError::at(at, k))?;
        if path.last().is_none() {
            return Err(AmlError::at(at, ErrorKind::BadName)); // defining the root
        }
        if self.index.contains_key(&path) {
            self.duplicates += 1;
            return Ok(path);
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(AmlError::at(
                at,
                ErrorKind::TooLarge {
                    what: "namespace",
                    size: self.nodes.len() as u64,
                },
            ));
        }
        self.index.insert(path.clone(), self.nodes.len());
        self.nodes.push(Node {
            path: path.clone(),
            kind,
        });
        Ok(path)
    }

    /// Read one definition term and record what it names. A Scope or Device returns its
    /// body, for the caller to walk next, with `c` already past it.
    fn definition(
        &mut self,
        c: &mut Cursor<'a>,
        table: usize,
        scope: &AmlPath,
    ) -> Result<Option<Body<'a>>, AmlError> {
        let at = c.pos;
        let opcode = c.byte()?;
        match opcode {
            op::SCOPE => {
                let end = c.pkg_length()?;
                let name = c.name_string()?;
                // Scope names an existing object (searched for like any reference); a
                // scope nobody defined (\_SB, \_GPE …) is simply a path prefix.
                let target = match self.resolve(&name, scope) {
                    Some(existing) => existing,
                    None => name.in_scope(scope).map_err(|k| AmlError::at(at, k))?,
                };
                let body = c.sub(c.pos, end);
                c.pos = end;
                return Ok(Some((body, target)));
            }
            op::NAME => {
                let name = c.name_string()?;
                let start = c.pos;
                skip_data_object(c)?;
                let data = Span {
                    table,
                    start,
                    end: c.pos,
                };
                self.define(at, &name, scope, NodeKind::Name { data })?;
            }
            op::METHOD => {
                let end = c.pkg_length()?;
                let name = c.name_string()?;
                let flags = c.byte()?;
                let body = Span {
                    table,
                    start: c.pos,
                    end,
                };
                let args = flags & 7;
                self.define(at, &name, scope, NodeKind::Method { args, body })?;
                c.pos = end;
            }
            op::ALIAS => {
                // Aliases are not followed: `_PRT` tables do not need them.
                c.name_string()?;
                c.name_string()?;
            }
            op::EXTERNAL => {
                // A declaration that the name exists in another table: defines nothing.
                c.name_string()?;
                c.take(2)?;
            }
            op::BUFFER | op::PACKAGE | op::VAR_PACKAGE | op::IF | op::ELSE | op::WHILE => {
                c.pos = c.pkg_length()?;
            }
            op::CREATE_DWORD_FIELD
            | op::CREATE_WORD_FIELD
            | op::CREATE_BYTE_FIELD
            | op::CREATE_BIT_FIELD
            | op::CREATE_QWORD_FIELD => {
                self.skip_term_arg(c, scope)?;
                self.skip_term_arg(c, scope)?;
                let name = c.name_string()?;
                self.define(
                    at,
                    &name,
                    scope,
                    NodeKind::Other {
                        opcode: opcode as u16,
                    },
                )?;
            }
            op::EXT_PREFIX => return self.ext_definition(c, at, scope),
            _ => {
                return Err(AmlError::at(
                    at,
                    ErrorKind::Unsupported {
                        opcode: opcode as u16,
                    },
                ));
            }
        }
        Ok(None)
    }

    /// The definitions whose opcode starts with 0x5B (a Device returns its body).
    fn ext_definition(
        &mut self,
        c: &mut Cursor<'a>,
        at: usize,
        scope: &AmlPath,
    ) -> Result<Option<Body<'a>>, AmlError> {
        let second = c.byte()?;
        let opcode = 0x5B00 | second as u16;
        let other = NodeKind::Other { opcode };
        match second {
            op::DEVICE => {
                let end = c.pkg_length()?;
                let name = c.name_string()?;
                let path = self.define(at, &name, scope, NodeKind::Device)?;
                let body = c.sub(c.pos, end);
                c.pos = end;
                return Ok(Some((body, path)));
            }
            op::OP_REGION => {
                let name = c.name_string()?;
                c.byte()?; // region space
                self.skip_term_arg(c, scope)?; // offset
                self.skip_term_arg(c, scope)?; // length
                self.define(at, &name, scope, other)?;
            }
            op::FIELD | op::INDEX_FIELD | op::BANK_FIELD => {
                let end = c.pkg_length()?;
                c.name_string()?; // region (IndexField: index register)
                if second != op::FIELD {
                    c.name_string()?; // data register / bank register
                }
                if second == op::BANK_FIELD {
                    self.skip_term_arg(c, scope)?; // bank value
                }
                c.byte()?; // field flags
                self.field_list(c, at, end, scope)?;
                c.pos = end;
            }
            op::MUTEX => {
                let name = c.name_string()?;
                c.byte()?; // sync level
                self.define(at, &name, scope, other)?;
            }
            op::EVENT => {
                let name = c.name_string()?;
                self.define(at, &name, scope, other)?;
            }
            op::CREATE_FIELD => {
                for _ in 0..3 {
                    self.skip_term_arg(c, scope)?; // buffer, bit index, bit count
                }
                let name = c.name_string()?;
                self.define(at, &name, scope, other)?;
            }
            op::DATA_REGION => {
                let name = c.name_string()?;
                for _ in 0..3 {
                    self.skip_term_arg(c, scope)?; // signature, OEM id, OEM table id
                }
                self.define(at, &name, scope, other)?;
            }
            op::PROCESSOR | op::POWER_RES | op::THERMAL_ZONE => {
                let end = c.pkg_length()?;
                let name = c.name_string()?;
                self.define(at, &name, scope, other)?;
                c.pos = end;
            }
            _ => return Err(AmlError::at(at, ErrorKind::Unsupported { opcode })),
        }
        Ok(None)
    }

    /// A FieldList (ACPI §20.2.5.2): define each named field unit. The bit widths are
    /// encoded like PkgLength but measure bits, not bytes, so they are not bounds.
    fn field_list(
        &mut self,
        c: &mut Cursor<'_>,
        at: usize,
        end: usize,
        scope: &AmlPath,
    ) -> Result<(), AmlError> {
        let mut f = c.sub(c.pos, end);
        while !f.at_end() {
            match f.peek() {
                Some(0x00) => {
                    f.pos += 1; // ReservedField: bit width follows
                    bit_width(&mut f)?;
                }
                Some(0x01) => {
                    f.take(3)?; // AccessField: type, attribute
                }
                Some(0x03) => {
                    f.take(4)?; // ExtendedAccessField: type, attribute, length
                }
                Some(0x02) => {
                    // ConnectField names a GPIO/serial connection: not needed here.
                    return Err(AmlError::at(f.pos, ErrorKind::Unsupported { opcode: 0x02 }));
                }
                _ => {
                    let seg = f.take(4)?;
                    let name = NameString {
                        root: false,
                        parents: 0,
                        segs: super::NameSeg::from_bytes([seg[0], seg[1], seg[2], seg[3]])
                            .map(|s| alloc::vec![s])
                            .ok_or_else(|| AmlError::at(f.pos - 4, ErrorKind::BadName))?,
                    };
                    bit_width(&mut f)?;
                    self.define(at, &name, scope, NodeKind::FieldUnit)?;
                }
            }
        }
        Ok(())
    }
}

impl Namespace<'_> {
    /// Step over a TermArg that appears inside a definition (an OperationRegion's offset,
    /// a CreateField's index …): constants, ArgN/LocalN, a data object, or a name. An
    /// expression, or a call of a method that takes arguments, would need evaluating to
    /// know its length, so it ends the body.
    fn skip_term_arg(&self, c: &mut Cursor<'_>, scope: &AmlPath) -> Result<(), AmlError> {
        let at = c.pos;
        match c.peek() {
            Some(op::LOCAL0..=op::ARG6) => c.pos += 1,
            Some(b) if starts_name(b) => {
                let name = c.name_string()?;
                let target = self.resolve(&name, scope).and_then(|p| self.get(&p));
                if let Some(Node {
                    path,
                    kind: NodeKind::Method { args: 1.., .. },
                }) = target
                {
                    let what = "a method called with arguments here (not read)";
                    let path = path.clone();
                    return Err(AmlError::at(at, ErrorKind::WrongObject { path, what }));
                }
            }
            _ => skip_data_object(c)?,
        }
        Ok(())
    }
}

/// A field's width in bits: PkgLength's encoding without its meaning as a byte bound.
fn bit_width(c: &mut Cursor<'_>) -> Result<(), AmlError> {
    let lead = c.byte()?;
    c.take((lead >> 6) as usize)?;
    Ok(())
}

/// Step over a DataRefObject (the value of a Name) without evaluating it.
fn skip_data_object(c: &mut Cursor<'_>) -> Result<(), AmlError> {
    let at = c.pos;
    match c.byte()? {
        op::ZERO | op::ONE | op::ONES => {}
        op::BYTE_PREFIX => _ = c.take(1)?,
        op::WORD_PREFIX => _ = c.take(2)?,
        op::DWORD_PREFIX => _ = c.take(4)?,
        op::QWORD_PREFIX => _ = c.take(8)?,
        op::STRING_PREFIX => while c.byte()? != 0 {},
        op::BUFFER | op::PACKAGE | op::VAR_PACKAGE => c.pos = c.pkg_length()?,
        op::EXT_PREFIX if c.peek() == Some(op::REVISION) => c.pos += 1,
        b => {
            let opcode = if b == op::EXT_PREFIX {
                0x5B00 | c.peek().unwrap_or(0) as u16
            } else {
                b as u16
            };
            return Err(AmlError::at(at, ErrorKind::Unsupported { opcode }));
        }
    }
    Ok(())
}
