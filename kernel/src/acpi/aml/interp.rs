//! Evaluating: the values of Names, and small control methods.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cmp::Ordering;

use super::namespace::{Namespace, NodeKind};
use super::{
    AmlError, AmlPath, Cursor, ErrorKind, MAX_BUFFER_LEN, MAX_DEPTH, MAX_PACKAGE_ELEMENTS,
    MAX_STEPS, NameString, Value, op, starts_name,
};

/// Runs methods against a [`Namespace`].
///
/// Stores into named objects (as `_PIC` does to `PICF`) go to this interpreter's own
/// table of values, so later evaluations see them while the loaded AML stays untouched.
/// Store replaces the value outright (ACPI would convert it to the target's type; the
/// methods this reader is for store like into like).
pub struct Interpreter<'n, 'a> {
    ns: &'n Namespace<'a>,
    named: BTreeMap<AmlPath, Value>,
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
    fn new(scope: AmlPath) -> Self {
        Self {
            scope,
            args: Default::default(),
            locals: Default::default(),
        }
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
    /// with `args`. `Ok(None)` is a method that returned nothing. Each call may execute
    /// at most [`MAX_STEPS`] opcodes.
    pub fn evaluate(&mut self, path: &AmlPath, args: &[Value]) -> Result<Option<Value>, AmlError> {
        self.steps = 0;
        self.object(path, args.to_vec(), 0, 0)
    }

    fn step(&mut self, at: usize, cost: u32) -> Result<(), AmlError> {
        self.steps = self.steps.saturating_add(cost);
        if self.steps > MAX_STEPS {
            return Err(AmlError::at(at, ErrorKind::TooManySteps));
        }
        Ok(())
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
        let ones = self.ns.ones();
        let truth = |b: bool| Value::Integer(if b { ones } else { 0 });
        let v = match opcode {
            op::ZERO => Value::Integer(0),
            op::ONE => Value::Integer(1),
            op::ONES => Value::Integer(ones),
            op::BYTE_PREFIX => Value::Integer(c.uint(1)?),
            op::WORD_PREFIX => Value::Integer(c.uint(2)?),
            op::DWORD_PREFIX => Value::Integer(c.uint(4)?),
            op::QWORD_PREFIX => Value::Integer(c.uint(8)? & ones),
            op::STRING_PREFIX => string(c)?,
            op::BUFFER => self.buffer(c, f, depth)?,
            op::PACKAGE | op::VAR_PACKAGE => self.package(c, f, depth, opcode)?,
            op::LOCAL0..=op::LOCAL7 => {
                let index = opcode - op::LOCAL0;
                let v = f.locals[index as usize].clone();
                let what = "Local";
                let v =
                    v.ok_or_else(|| AmlError::at(at, ErrorKind::Uninitialized { what, index }))?;
                self.step(at, weight(&v))?;
                v
            }
            op::ARG0..=op::ARG6 => {
                let index = opcode - op::ARG0;
                let v = f.args[index as usize].clone();
                let what = "Arg";
                let v =
                    v.ok_or_else(|| AmlError::at(at, ErrorKind::Uninitialized { what, index }))?;
                self.step(at, weight(&v))?;
                v
            }
            op::STORE => {
                let v = self.eval(c, f, depth + 1)?;
                self.store(c, f, v.clone())?;
                v
            }
            op::LNOT => truth(self.integer(c, f, depth + 1)? == 0),
            op::LEQUAL | op::LGREATER | op::LLESS => {
                let a = self.eval(c, f, depth + 1)?;
                let b = self.eval(c, f, depth + 1)?;
                let order = compare(&a, &b).ok_or_else(|| {
                    let kind = ErrorKind::WrongType {
                        expected: a.type_name(),
                        found: b.type_name(),
                    };
                    AmlError::at(at, kind)
                })?;
                truth(match opcode {
                    op::LEQUAL => order == Ordering::Equal,
                    op::LGREATER => order == Ordering::Greater,
                    _ => order == Ordering::Less,
                })
            }
            b if starts_name(b) => {
                c.pos = at;
                let name = c.name_string()?;
                return self.named(c, f, &name, at, depth);
            }
            op::EXT_PREFIX => {
                let opcode = 0x5B00 | c.peek().unwrap_or(0) as u16;
                return Err(AmlError::at(at, ErrorKind::Unsupported { opcode }));
            }
            _ => {
                let opcode = opcode as u16;
                return Err(AmlError::at(at, ErrorKind::Unsupported { opcode }));
            }
        };
        Ok(Some(v))
    }

    /// A name used as a value: a Name object's value, or a method call (its arguments
    /// follow the name; how many is known only from the method's definition).
    fn named(
        &mut self,
        c: &mut Cursor<'_>,
        f: &mut Frame,
        name: &NameString,
        at: usize,
        depth: usize,
    ) -> Result<Option<Value>, AmlError> {
        let path = self.ns.resolve(name, &f.scope).ok_or_else(|| {
            let name = name.clone();
            AmlError::at(at, ErrorKind::NotFound { name })
        })?;
        let mut args = Vec::new();
        if let Some(NodeKind::Method { args: n, .. }) = self.ns.get(&path).map(|n| n.kind) {
            for _ in 0..n {
                args.push(self.eval(c, f, depth + 1)?);
            }
        }
        self.object(&path, args, depth + 1, at)
    }

    /// Store `v` into the SuperName at `c`.
    fn store(&mut self, c: &mut Cursor<'_>, f: &mut Frame, v: Value) -> Result<(), AmlError> {
        let at = c.pos;
        match c.byte()? {
            o @ op::LOCAL0..=op::LOCAL7 => f.locals[(o - op::LOCAL0) as usize] = Some(v),
            o @ op::ARG0..=op::ARG6 => f.args[(o - op::ARG0) as usize] = Some(v),
            op::ZERO => {} // NullName: the result is not stored
            op::EXT_PREFIX if c.peek() == Some(op::DEBUG) => c.pos += 1,
            b if starts_name(b) => {
                c.pos = at;
                let name = c.name_string()?;
                let path = self
                    .ns
                    .resolve(&name, &f.scope)
                    .ok_or_else(|| AmlError::at(at, ErrorKind::NotFound { name: name.clone() }))?;
                match self.ns.get(&path).map(|n| n.kind) {
                    Some(NodeKind::Name { .. }) => _ = self.named.insert(path, v),
                    _ => {
                        let what = "not a Name: storing into it is not emulated";
                        return Err(AmlError::at(at, ErrorKind::WrongObject { path, what }));
                    }
                }
            }
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
        let too_large = |size| {
            AmlError::at(
                at,
                ErrorKind::TooLarge {
                    what: "package",
                    size,
                },
            )
        };
        if declared > MAX_PACKAGE_ELEMENTS as u64 {
            return Err(too_large(declared));
        }
        let mut elements = Vec::new();
        while !body.at_end() {
            if elements.len() as u64 >= declared {
                // More elements than the package declares: the AML is inconsistent.
                return Err(too_large(elements.len() as u64 + 1));
            }
            let v = match body.peek() {
                Some(b) if starts_name(b) => {
                    self.step(body.pos, 1)?;
                    let name = body.name_string()?;
                    let scope = f.scope.clone();
                    Value::Reference { name, scope }
                }
                _ => self.eval(&mut body, f, depth + 1)?,
            };
            elements.push(v);
        }
        c.pos = end;
        Ok(Value::Package(elements))
    }
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
