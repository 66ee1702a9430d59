//! Evaluating: the values of Names, and small control methods.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cmp::Ordering;

use super::namespace::{Namespace, NodeKind};
use super::{
    AmlError, AmlPath, Cursor, ErrorKind, MAX_BUFFER_LEN, MAX_DEPTH, MAX_PACKAGE_ELEMENTS,
    MAX_STEPS, MAX_VALUE_DEPTH, NameString, Value, op, starts_name,
};

/// Runs methods against a [`Namespace`].
///
/// Stores into named objects (as `_PIC` does to `PICF`) go to this interpreter's own
/// table of values, so later evaluations see them while the loaded AML stays untouched.
/// Store replaces the value outright (ACPI would convert it to the target's type; the
/// methods this reader is for store like into like).
///
/// Every value it holds or returns nests at most [`MAX_VALUE_DEPTH`] packages deep, so
/// cloning, dropping and weighing one (each recursive, one call per level) stays shallow.
/// A value gains a level in exactly one place, a Package being built, which checks it;
/// the only values from outside, `evaluate`'s arguments, are checked on the way in. Store,
/// Return, ArgN/LocalN and Name reads only move values that passed those checks.
pub struct Interpreter<'n, 'a> {
    ns: &'n Namespace<'a>,
    named: BTreeMap<AmlPath, Value>,
    /// Steps executed so far, by all evaluations together: one budget of [`MAX_STEPS`].
    steps: u32,
}

/// One method invocation (or one Name being evaluated).
struct Frame {
    /// Where names used in the body are resolved from: the method itself, or the scope
    /// a Name is defined in.
    scope: AmlPath,
    args: [Option<Value>; 7],
    locals: [Option<Value>; 8],
}

impl Frame {
    /// On the heap: its 15 value slots (~900 bytes) would otherwise make `object` the
    /// largest stack frame of the recursion (see [`super::MAX_DEPTH`]).
    fn new(scope: AmlPath) -> Box<Self> {
        Box::new(Self {
            scope,
            args: Default::default(),
            locals: Default::default(),
        })
    }
}

/// How a term list ended.
enum Flow {
    Next,
    Break,
    Return(Value),
}

impl<'n, 'a> Interpreter<'n, 'a> {
    pub fn new(ns: &'n Namespace<'a>) -> Self {
        Self {
            ns,
            named: BTreeMap::new(),
            steps: 0,
        }
    }

    /// Evaluate the object at `path`: a Name gives its current value, a Method is run
    /// with `args`. `Ok(None)` is a method that returned nothing. All the evaluations of
    /// one interpreter share one budget of [`MAX_STEPS`] opcodes: once it is spent, every
    /// evaluation fails with [`ErrorKind::TooManySteps`].
    pub fn evaluate(&mut self, path: &AmlPath, args: &[Value]) -> Result<Option<Value>, AmlError> {
        if args.iter().any(|a| a.nesting() > MAX_VALUE_DEPTH) {
            return Err(AmlError::at(0, ErrorKind::ValueTooDeep).within(path));
        }
        self.object(path, args.to_vec(), 0, 0)
    }

    /// Steps executed so far, by all evaluations together (never more than [`MAX_STEPS`]).
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Charge `cost` steps; an error, and nothing charged, when the budget cannot pay.
    fn step(&mut self, at: usize, cost: u32) -> Result<(), AmlError> {
        match self.steps.checked_add(cost) {
            Some(steps) if steps <= MAX_STEPS => {
                self.steps = steps;
                Ok(())
            }
            _ => Err(AmlError::at(at, ErrorKind::TooManySteps)),
        }
    }

    /// The value of the object at `path` (a Name's, or a Method's result); `at` is where
    /// it is referenced, for errors about the object itself.
    fn object(
        &mut self,
        path: &AmlPath,
        args: Vec<Value>,
        depth: usize,
        at: usize,
    ) -> Result<Option<Value>, AmlError> {
        let not_found = || {
            let name = NameString {
                root: true,
                parents: 0,
                segs: path.segments().to_vec(),
            };
            AmlError::at(at, ErrorKind::NotFound { name })
        };
        let node = self.ns.get(path).ok_or_else(not_found)?;
        if depth > MAX_DEPTH {
            return Err(AmlError::at(at, ErrorKind::TooDeep).within(path));
        }
        match node.kind {
            NodeKind::Name { data } => {
                if let Some(v) = self.named.get(path) {
                    let v = v.clone();
                    self.step(data.start, weight(&v))?;
                    return Ok(Some(v));
                }
                let mut frame = Frame::new(path.parent().unwrap_or_default());
                let mut c = Cursor::new(self.ns.table(data.table), data.start, data.end);
                let v = self.eval(&mut c, &mut frame, depth + 1);
                v.map(Some).map_err(|e| e.within(path))
            }
            NodeKind::Method { args: n, body } => {
                if args.len() != n as usize {
                    let kind = ErrorKind::ArgumentCount {
                        expected: n,
                        given: args.len(),
                    };
                    return Err(AmlError::at(body.start, kind).within(path));
                }
                let mut frame = Frame::new(path.clone());
                for (slot, a) in frame.args.iter_mut().zip(args) {
                    *slot = Some(a);
                }
                let mut c = Cursor::new(self.ns.table(body.table), body.start, body.end);
                match self.run(&mut c, &mut frame, depth + 1) {
                    Ok(Flow::Return(v)) => Ok(Some(v)),
                    Ok(Flow::Next) => Ok(None),
                    Ok(Flow::Break) => {
                        let opcode = op::BREAK as u16;
                        Err(AmlError::at(c.pos, ErrorKind::Unsupported { opcode }).within(path))
                    }
                    Err(e) => Err(e.within(path)),
                }
            }
            kind => {
                let what = match kind {
                    NodeKind::Device => "a Device, which has no value",
                    NodeKind::FieldUnit => {
                        "a field unit (hardware register): reading it is not emulated"
                    }
                    _ => "an object this reader does not evaluate",
                };
                let path = path.clone();
                Err(AmlError::at(at, ErrorKind::WrongObject { path, what }))
            }
        }
    }

    /// Execute a TermList to its end, a Break, or a Return.
    fn run(&mut self, c: &mut Cursor<'_>, f: &mut Frame, depth: usize) -> Result<Flow, AmlError> {
        if depth > MAX_DEPTH {
            return Err(AmlError::at(c.pos, ErrorKind::TooDeep));
        }
        while !c.at_end() {
            let at = c.pos;
            self.step(at, 1)?;
            match c.peek() {
                Some(op::IF) => {
                    c.pos += 1;
                    let end = c.pkg_length()?;
                    let mut then = c.sub(c.pos, end);
                    let taken = self.integer(&mut then, f, depth + 1)? != 0;
                    c.pos = end;
                    let mut otherwise = None;
                    if c.peek() == Some(op::ELSE) {
                        c.pos += 1;
                        let end = c.pkg_length()?;
                        otherwise = Some(c.sub(c.pos, end));
                        c.pos = end;
                    }
                    if let Some(mut body) = if taken { Some(then) } else { otherwise } {
                        match self.run(&mut body, f, depth + 1)? {
                            Flow::Next => {}
                            flow => return Ok(flow),
                        }
                    }
                }
                Some(op::ELSE) => {
                    // An Else whose If was taken was skipped with it; a stray one is skipped.
                    c.pos += 1;
                    c.pos = c.pkg_length()?;
                }
                Some(op::WHILE) => {
                    c.pos += 1;
                    let end = c.pkg_length()?;
                    let predicate = c.pos;
                    loop {
                        let mut body = c.sub(predicate, end);
                        if self.integer(&mut body, f, depth + 1)? == 0 {
                            break;
                        }
                        match self.run(&mut body, f, depth + 1)? {
                            Flow::Next => {}
                            Flow::Break => break,
                            flow => return Ok(flow),
                        }
                    }
                    c.pos = end;
                }
                Some(op::RETURN) => {
                    c.pos += 1;
                    return Ok(Flow::Return(self.eval(c, f, depth + 1)?));
                }
                Some(op::BREAK) => return Ok(Flow::Break),
                Some(op::NOOP) => c.pos += 1,
                // An expression used as a statement: Store, a method call …
                _ => _ = self.term(c, f, depth + 1)?,
            }
        }
        Ok(Flow::Next)
    }

    fn integer(
        &mut self,
        c: &mut Cursor<'_>,
        f: &mut Frame,
        depth: usize,
    ) -> Result<u64, AmlError> {
        let at = c.pos;
        let v = self.eval(c, f, depth)?;
        v.as_integer().ok_or_else(|| {
            let kind = ErrorKind::WrongType {
                expected: "Integer",
                found: v.type_name(),
            };
            AmlError::at(at, kind)
        })
    }

    /// Evaluate a TermArg that must produce a value.
    fn eval(&mut self, c: &mut Cursor<'_>, f: &mut Frame, depth: usize) -> Result<Value, AmlError> {
        let at = c.pos;
        self.term(c, f, depth)?
            .ok_or_else(|| AmlError::at(at, ErrorKind::NoValue))
    }

    /// Evaluate one term; `None` only for a call of a method that returned nothing.
    ///
    /// Only dispatch happens here: each kind of term is evaluated by a function of its
    /// own, so that this frame, which every level of the recursion holds, stays small
    /// and a level holds only the temporaries of the one kind of term it is in.
    fn term(
        &mut self,
        c: &mut Cursor<'_>,
        f: &mut Frame,
        depth: usize,
    ) -> Result<Option<Value>, AmlError> {
        let at = c.pos;
        if depth > MAX_DEPTH {
            return Err(AmlError::at(at, ErrorKind::TooDeep));
        }
        self.step(at, 1)?;
        let opcode = c.byte()?;
        let v = match opcode {
            op::ZERO | op::ONE | op::ONES => self.constant(c, opcode)?,
            op::BYTE_PREFIX | op::WORD_PREFIX | op::DWORD_PREFIX | op::QWORD_PREFIX => {
                self.constant(c, opcode)?
            }
            op::STRING_PREFIX => string(c)?,
            op::BUFFER => self.buffer(c, f, depth)?,
            op::PACKAGE | op::VAR_PACKAGE => self.package(c, f, depth, opcode)?,
            op::LOCAL0..=op::ARG6 => self.slot(f, opcode, at)?,
            op::STORE => self.store_term(c, f, depth)?,
            op::LNOT => {
                let zero = self.integer(c, f, depth + 1)? == 0;
                self.truth(zero)
            }
            op::LEQUAL | op::LGREATER | op::LLESS => self.comparison(c, f, depth, opcode, at)?,
            b if starts_name(b) => {
                c.pos = at;
                return self.named(c, f, at, depth);
            }
            _ => return Err(unsupported(c, opcode, at)),
        };
        Ok(Some(v))
    }

    fn truth(&self, b: bool) -> Value {
        Value::Integer(if b { self.ns.ones() } else { 0 })
    }

    /// Zero, One, Ones and the ByteConst … QWordConst prefixes.
    #[inline(never)]
    fn constant(&self, c: &mut Cursor<'_>, opcode: u8) -> Result<Value, AmlError> {
        let v = match opcode {
            op::ZERO => 0,
            op::ONE => 1,
            op::ONES => self.ns.ones(),
            op::BYTE_PREFIX => c.uint(1)?,
            op::WORD_PREFIX => c.uint(2)?,
            op::DWORD_PREFIX => c.uint(4)?,
            _ => c.uint(8)? & self.ns.ones(),
        };
        Ok(Value::Integer(v))
    }

    /// LocalN or ArgN: a copy of its value, charged by its size.
    #[inline(never)]
    fn slot(&mut self, f: &Frame, opcode: u8, at: usize) -> Result<Value, AmlError> {
        let (what, index, v) = if opcode >= op::ARG0 {
            let index = opcode - op::ARG0;
            ("Arg", index, &f.args[index as usize])
        } else {
            let index = opcode - op::LOCAL0;
            ("Local", index, &f.locals[index as usize])
        };
        let v = v
            .as_ref()
            .ok_or_else(|| AmlError::at(at, ErrorKind::Uninitialized { what, index }))?;
        self.step(at, weight(v))?;
        Ok(v.clone())
    }

    /// Store (source, target): the value stored is also the term's value.
    #[inline(never)]
    fn store_term(
        &mut self,
        c: &mut Cursor<'_>,
        f: &mut Frame,
        depth: usize,
    ) -> Result<Value, AmlError> {
        let v = self.eval(c, f, depth + 1)?;
        self.store(c, f, v.clone())?;
        Ok(v)
    }

    /// LEqual, LGreater, LLess.
    #[inline(never)]
    fn comparison(
        &mut self,
        c: &mut Cursor<'_>,
        f: &mut Frame,
        depth: usize,
        opcode: u8,
        at: usize,
    ) -> Result<Value, AmlError> {
        let a = self.eval(c, f, depth + 1)?;
        let b = self.eval(c, f, depth + 1)?;
        let order = compare(&a, &b).ok_or_else(|| {
            let kind = ErrorKind::WrongType {
                expected: a.type_name(),
                found: b.type_name(),
            };
            AmlError::at(at, kind)
        })?;
        Ok(self.truth(match opcode {
            op::LEQUAL => order == Ordering::Equal,
            op::LGREATER => order == Ordering::Greater,
            _ => order == Ordering::Less,
        }))
    }

    /// A name used as a value: a Name object's value, or a method call (its arguments
    /// follow the name; how many is known only from the method's definition).
    fn named(
        &mut self,
        c: &mut Cursor<'_>,
        f: &mut Frame,
        at: usize,
        depth: usize,
    ) -> Result<Option<Value>, AmlError> {
        let path = self.resolve(c, f)?;
        let mut args = Vec::new();
        if let Some(NodeKind::Method { args: n, .. }) = self.ns.get(&path).map(|n| n.kind) {
            for _ in 0..n {
                args.push(self.eval(c, f, depth + 1)?);
            }
        }
        self.object(&path, args, depth + 1, at)
    }

    /// Read the NameString at `c` and find the object it names from `f`'s scope.
    #[inline(never)]
    fn resolve(&self, c: &mut Cursor<'_>, f: &Frame) -> Result<AmlPath, AmlError> {
        let at = c.pos;
        let name = c.name_string()?;
        self.ns
            .resolve(&name, &f.scope)
            .ok_or_else(|| AmlError::at(at, ErrorKind::NotFound { name }))
    }

    /// Store `v` into the SuperName at `c`.
    #[inline(never)]
    fn store(&mut self, c: &mut Cursor<'_>, f: &mut Frame, v: Value) -> Result<(), AmlError> {
        let at = c.pos;
        match c.byte()? {
            o @ op::LOCAL0..=op::LOCAL7 => f.locals[(o - op::LOCAL0) as usize] = Some(v),
            o @ op::ARG0..=op::ARG6 => f.args[(o - op::ARG0) as usize] = Some(v),
            op::ZERO => {} // NullName: the result is not stored
            op::EXT_PREFIX if c.peek() == Some(op::DEBUG) => c.pos += 1,
            b if starts_name(b) => {
                c.pos = at;
                let path = self.resolve(c, f)?;
                match self.ns.get(&path).map(|n| n.kind) {
                    Some(NodeKind::Name { .. }) => _ = self.named.insert(path, v),
                    _ => {
                        let what = "not a Name: storing into it is not emulated";
                        return Err(AmlError::at(at, ErrorKind::WrongObject { path, what }));
                    }
                }
            }
            b => return Err(unsupported(c, b, at)),
        }
        Ok(())
    }

    /// Buffer (ACPI §19.6.10): a size, then initial bytes; shorter initializers are
    /// zero-padded to the size.
    fn buffer(
        &mut self,
        c: &mut Cursor<'_>,
        f: &mut Frame,
        depth: usize,
    ) -> Result<Value, AmlError> {
        let at = c.pos - 1;
        let end = c.pkg_length()?;
        let mut body = c.sub(c.pos, end);
        let size = self.integer(&mut body, f, depth + 1)?;
        if size > MAX_BUFFER_LEN as u64 {
            let kind = ErrorKind::TooLarge {
                what: "buffer",
                size,
            };
            return Err(AmlError::at(at, kind));
        }
        let init = body.take(body.end - body.pos)?;
        let mut bytes = init.to_vec();
        if bytes.len() < size as usize {
            bytes.resize(size as usize, 0);
        }
        self.step(at, (bytes.len() / 256) as u32)?;
        c.pos = end;
        Ok(Value::Buffer(bytes))
    }

    /// Package / VarPackage: an element count, then elements; a name among them is kept
    /// as a [`Value::Reference`] to be resolved by whoever uses it.
    fn package(
        &mut self,
        c: &mut Cursor<'_>,
        f: &mut Frame,
        depth: usize,
        opcode: u8,
    ) -> Result<Value, AmlError> {
        let at = c.pos - 1;
        let end = c.pkg_length()?;
        let mut body = c.sub(c.pos, end);
        let declared = if opcode == op::PACKAGE {
            body.byte()? as u64
        } else {
            self.integer(&mut body, f, depth + 1)?
        };
        if declared > MAX_PACKAGE_ELEMENTS as u64 {
            return Err(too_large_package(at, declared));
        }
        let mut elements = Vec::new();
        while !body.at_end() {
            if elements.len() as u64 >= declared {
                // More elements than the package declares: the AML is inconsistent.
                return Err(too_large_package(at, elements.len() as u64 + 1));
            }
            let v = match body.peek() {
                Some(b) if starts_name(b) => self.reference(&mut body, f)?,
                _ => self.eval(&mut body, f, depth + 1)?,
            };
            // The one place a value gets deeper: refuse a level too many here, and no
            // value anywhere is deeper than MAX_VALUE_DEPTH.
            if v.nesting() >= MAX_VALUE_DEPTH {
                return Err(AmlError::at(at, ErrorKind::ValueTooDeep));
            }
            elements.push(v);
        }
        c.pos = end;
        Ok(Value::Package(elements))
    }

    /// A name written as a package element: kept as written, with the scope it is in.
    #[inline(never)]
    fn reference(&mut self, c: &mut Cursor<'_>, f: &Frame) -> Result<Value, AmlError> {
        self.step(c.pos, 1)?;
        let name = c.name_string()?;
        let scope = f.scope.clone();
        Ok(Value::Reference { name, scope })
    }
}

#[cold]
#[inline(never)]
fn too_large_package(at: usize, size: u64) -> AmlError {
    let what = "package";
    AmlError::at(at, ErrorKind::TooLarge { what, size })
}

/// An opcode a term cannot start with (here).
#[cold]
#[inline(never)]
fn unsupported(c: &Cursor<'_>, opcode: u8, at: usize) -> AmlError {
    let opcode = if opcode == op::EXT_PREFIX {
        0x5B00 | c.peek().unwrap_or(0) as u16
    } else {
        opcode as u16
    };
    AmlError::at(at, ErrorKind::Unsupported { opcode })
}

/// String (ACPI §20.2.3): ASCII 0x01–0x7F up to a NUL (bounded by the enclosing object).
fn string(c: &mut Cursor<'_>) -> Result<Value, AmlError> {
    let at = c.pos;
    let mut s = alloc::string::String::new();
    loop {
        match c.byte()? {
            0 => return Ok(Value::String(s)),
            b @ 0x01..=0x7F => s.push(b as char),
            _ => {
                let kind = ErrorKind::WrongType {
                    expected: "ASCII string",
                    found: "other bytes",
                };
                return Err(AmlError::at(at, kind));
            }
        }
    }
}

/// LEqual/LLess/LGreater order two values of the same type (no implicit conversion).
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => Some(x.cmp(y)),
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Buffer(x), Value::Buffer(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Steps charged for copying a value, so that a loop copying a big package around
/// costs as much as it takes.
fn weight(v: &Value) -> u32 {
    match v {
        Value::Package(p) => p.iter().fold(1u32, |w, e| w.saturating_add(weight(e))),
        Value::Buffer(b) => 1 + (b.len() / 256) as u32,
        Value::String(s) => 1 + (s.len() / 256) as u32,
        Value::Integer(_) | Value::Reference { .. } => 1,
    }
}
