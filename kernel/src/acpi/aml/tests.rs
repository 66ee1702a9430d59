use super::encode::*;
use super::*;
use alloc::string::ToString;

fn p(text: &str) -> AmlPath {
    AmlPath::parse(text).unwrap()
}

fn load(table: &[u8]) -> Namespace<'_> {
    let mut ns = Namespace::new();
    ns.load_table(table).unwrap();
    ns
}

/// Load `table` and evaluate `path` with `args` in a fresh interpreter.
fn eval(table: &[u8], path: &str, args: &[Value]) -> Result<Option<Value>, AmlError> {
    let ns = load(table);
    Interpreter::new(&ns).evaluate(&p(path), args)
}

fn int_of(table: &[u8], path: &str) -> u64 {
    eval(table, path, &[])
        .unwrap()
        .unwrap()
        .as_integer()
        .unwrap()
}

#[test]
fn pkg_length_reads_all_four_encodings() {
    for (extra, body_len) in [(0, 10), (1, 300), (2, 70_000), (3, 1 << 20)] {
        let mut bytes = pkg_len_with(body_len, extra);
        assert_eq!(bytes.len(), 1 + extra);
        bytes.resize(1 + extra + body_len, 0);
        let mut c = Cursor::new(&bytes, 0, bytes.len());
        assert_eq!(c.pkg_length(), Ok(bytes.len()), "{extra} extra bytes");
        assert_eq!(c.pos, 1 + extra);
    }
}

#[test]
fn pkg_length_that_lies_is_an_error() {
    let bad = |bytes: &[u8], end: usize| Cursor::new(bytes, 0, end).pkg_length();
    let err = |kind| Err(AmlError::at(0, kind));
    // Zero, or shorter than its own two bytes.
    assert_eq!(bad(&[0x00, 0, 0], 3), err(ErrorKind::BadPkgLength));
    assert_eq!(bad(&[0x41, 0x00, 0], 3), err(ErrorKind::BadPkgLength));
    // Longer than the enclosing object (even if the table has the bytes).
    assert_eq!(bad(&[0x05, 0, 0, 0, 0, 0], 4), err(ErrorKind::BadPkgLength));
    // A 4-byte length claiming the maximum 256 MiB.
    assert_eq!(
        bad(&[0xCF, 0xFF, 0xFF, 0xFF], 4),
        err(ErrorKind::BadPkgLength)
    );
    // Follow-on bytes missing.
    assert_eq!(
        bad(&[0x80, 0x10], 2),
        Err(AmlError::at(1, ErrorKind::Truncated))
    );
}

#[test]
fn name_strings_in_every_form() {
    let read = |text: &str| {
        let b = path(text);
        Cursor::new(&b, 0, b.len())
            .name_string()
            .map(|n| n.to_string())
    };
    for text in ["\\_SB.PCI0", "^^FOO", "A.B.C", "_PRT", "\\", "\\A.B.C.D.E"] {
        assert_eq!(read(text).as_deref(), Ok(text));
    }
    let scope = p("\\_SB.PCI0");
    let name = |t: &str| {
        let b = path(t);
        Cursor::new(&b, 0, b.len()).name_string().unwrap()
    };
    assert_eq!(name("^FOO").in_scope(&scope), Ok(p("\\_SB.FOO")));
    assert_eq!(
        name("ISA.PIRQ").in_scope(&scope),
        Ok(p("\\_SB.PCI0.ISA.PIRQ"))
    );
    assert_eq!(
        name("^^^FOO").in_scope(&scope),
        Err(ErrorKind::BadName),
        "above the root"
    );
    assert!(name("FOO").searches_upward() && !name("^FOO").searches_upward());

    let raw = |b: &[u8]| Cursor::new(b, 0, b.len()).name_string();
    assert_eq!(raw(b"_sb_").unwrap_err().kind, ErrorKind::BadName);
    assert_eq!(raw(b"1ABC").unwrap_err().kind, ErrorKind::BadName);
    assert_eq!(raw(b"\\PCI").unwrap_err().kind, ErrorKind::Truncated);
    assert_eq!(
        raw(&[op::MULTI_NAME_PREFIX, 200]).unwrap_err().kind,
        ErrorKind::TooLarge {
            what: "name",
            size: 200
        }
    );
    assert_eq!(
        raw(&[b'^'; 40]).unwrap_err().kind,
        ErrorKind::BadName,
        "more parent prefixes than any path is deep"
    );
}

#[test]
fn namespace_has_full_paths_and_searches_upward() {
    let t = dsdt(&[
        scope(
            "\\_SB",
            &[device(
                "PCI0",
                &[name("_HID", eisaid("PNP0A08")), method("_PRT", 0, &[])],
            )],
        ),
        name("PICF", int(0)),
        scope("\\_SB.PCI0", &[name("FOO", int(1)), device("ISA", &[])]),
        scope("_SB", &[scope("PCI0", &[name("BAR", int(2))])]),
    ]);
    let ns = load(&t);
    let kinds: Vec<(String, NodeKind)> = ns
        .nodes()
        .iter()
        .map(|n| (n.path.to_string(), n.kind))
        .collect();
    let names: Vec<&str> = kinds.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "\\_SB.PCI0",
            "\\_SB.PCI0._HID",
            "\\_SB.PCI0._PRT",
            "\\PICF",
            "\\_SB.PCI0.FOO",
            "\\_SB.PCI0.ISA",
            "\\_SB.PCI0.BAR"
        ]
    );
    assert_eq!(kinds[0].1, NodeKind::Device);
    assert!(matches!(kinds[2].1, NodeKind::Method { args: 0, .. }));
    assert!(ns.problems.is_empty());

    let n = |t: &str| {
        let b = path(t);
        Cursor::new(&b, 0, b.len()).name_string().unwrap()
    };
    let prt = p("\\_SB.PCI0._PRT");
    assert_eq!(ns.resolve(&n("PICF"), &prt), Some(p("\\PICF")));
    assert_eq!(ns.resolve(&n("FOO"), &prt), Some(p("\\_SB.PCI0.FOO")));
    assert_eq!(
        ns.resolve(&n("ISA"), &p("\\_SB.PCI0.ISA")),
        Some(p("\\_SB.PCI0.ISA"))
    );
    // Only a lone NameSeg is searched for: `PCI0.FOO` from \_SB.PCI0 means \_SB.PCI0.PCI0.FOO.
    assert_eq!(ns.resolve(&n("PCI0.FOO"), &p("\\_SB.PCI0")), None);
    assert_eq!(
        ns.resolve(&n("PCI0.FOO"), &p("\\_SB")),
        Some(p("\\_SB.PCI0.FOO"))
    );
    assert_eq!(ns.resolve(&n("^BAR"), &prt), Some(p("\\_SB.PCI0.BAR")));
    assert_eq!(ns.resolve(&n("NONE"), &prt), None);
}

#[test]
fn unknown_opcode_ends_only_its_body() {
    let t = dsdt(&[
        device(
            "\\_SB.DEV",
            &[
                name("A", int(1)),
                vec![0x5B, 0xFE, 1, 2, 3],
                name("B", int(1)),
            ],
        ),
        name("C", int(1)),
        // A PkgLength that runs past its parent ends that parent's walk too.
        device("\\_SB.BAD", &[vec![op::SCOPE, 0x3F]]),
        name("D", int(1)),
    ]);
    let ns = load(&t);
    assert!(ns.get(&p("\\_SB.DEV.A")).is_some());
    assert!(ns.get(&p("\\_SB.DEV.B")).is_none());
    assert!(ns.get(&p("\\C")).is_some() && ns.get(&p("\\D")).is_some());
    let kinds: Vec<ErrorKind> = ns.problems.iter().map(|e| e.kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            ErrorKind::Unsupported { opcode: 0x5BFE },
            ErrorKind::BadPkgLength
        ]
    );
    assert_eq!(
        ns.problems[0].to_string(),
        "unsupported opcode 0x5bfe (unknown) at offset 0x37"
    );
}

#[test]
fn fixed_shape_terms_are_stepped_over_and_named() {
    let opregion = cat(&[
        vec![op::EXT_PREFIX, op::OP_REGION],
        seg("REG"),
        vec![0x01], // SystemIO
        int(0x402),
        int(1),
    ]);
    let field = with_pkg(
        &[op::EXT_PREFIX, op::FIELD],
        &cat(&[
            path("REG"),
            vec![0x01],
            seg("FLD1"),
            vec![8],
            vec![0x00, 0x48, 0x01], // Offset(): a reserved field 0x148 bits wide
            vec![0x01, 0x00, 0x00], // AccessAs
            seg("FLD2"),
            vec![8],
        ]),
    );
    let t = dsdt(&[
        opregion,
        field,
        cat(&[vec![op::EXT_PREFIX, op::MUTEX], seg("MTX"), vec![0]]),
        cat(&[vec![op::EXT_PREFIX, op::EVENT], seg("EVT")]),
        cat(&[vec![op::EXTERNAL], path("\\_SB.EXT"), vec![8, 0]]),
        name("BUF", buffer(&[0; 8])),
        cat(&[
            vec![op::CREATE_DWORD_FIELD],
            path("BUF"),
            int(4),
            seg("CDW1"),
        ]),
        with_pkg(
            &[op::EXT_PREFIX, op::PROCESSOR],
            &cat(&[seg("CPU0"), vec![0, 0, 0, 0, 0, 0], name("INCP", int(1))]),
        ),
        if_(int(1), &[name("INIF", int(1))]),
        cat(&[vec![op::ALIAS], path("BUF"), path("ALI")]),
        name("LAST", int(1)),
    ]);
    let ns = load(&t);
    assert!(ns.problems.is_empty(), "{:?}", ns.problems);
    let kind = |t: &str| ns.get(&p(t)).map(|n| n.kind);
    assert_eq!(kind("\\REG"), Some(NodeKind::Other { opcode: 0x5B80 }));
    assert_eq!(kind("\\FLD1"), Some(NodeKind::FieldUnit));
    assert_eq!(kind("\\FLD2"), Some(NodeKind::FieldUnit));
    assert_eq!(kind("\\MTX"), Some(NodeKind::Other { opcode: 0x5B01 }));
    assert_eq!(kind("\\EVT"), Some(NodeKind::Other { opcode: 0x5B02 }));
    assert_eq!(kind("\\CDW1"), Some(NodeKind::Other { opcode: 0x8A }));
    assert_eq!(kind("\\CPU0"), Some(NodeKind::Other { opcode: 0x5B83 }));
    assert_eq!(kind("\\_SB.EXT"), None, "External defines nothing");
    assert_eq!(kind("\\CPU0.INCP"), None, "Processor bodies are skipped");
    assert_eq!(kind("\\INIF"), None, "definitions under If are skipped");
    assert!(matches!(kind("\\LAST"), Some(NodeKind::Name { .. })));
}

#[test]
fn a_second_definition_is_ignored_and_counted() {
    let t = dsdt(&[name("X", int(1)), name("X", int(2))]);
    let ns = load(&t);
    assert_eq!(ns.duplicates, 1);
    assert_eq!(
        Interpreter::new(&ns).evaluate(&p("\\X"), &[]),
        Ok(Some(Value::Integer(1)))
    );
}

#[test]
fn bad_table_headers_are_errors() {
    let mut t = dsdt(&[name("X", int(1))]);
    let what = |r: Result<(), AmlError>| match r {
        Err(AmlError {
            kind: ErrorKind::BadTable { what },
            ..
        }) => what,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        what(Namespace::new().load_table(&t[..20])),
        "table shorter than its 36-byte header"
    );
    assert_eq!(
        what(Namespace::new().load_table(&t[..t.len() - 1])),
        "table length field differs from the bytes provided"
    );
    t[0..4].copy_from_slice(b"APIC");
    assert_eq!(
        what(Namespace::new().load_table(&t)),
        "signature is neither DSDT nor SSDT"
    );
}

#[test]
fn methods_store_branch_loop_and_call() {
    let t = dsdt(&[
        name("NV", int(7)),
        method("SET", 1, &[store(arg(0), path("NV"))]),
        method("SAME", 2, &[ret(lequal(arg(0), arg(1)))]),
        method("NEQ", 2, &[ret(lnot(lequal(arg(0), arg(1))))]),
        method(
            "PICK",
            1,
            &[
                if_(lequal(arg(0), int(1)), &[ret(string("one"))]),
                else_(&[if_(lless(arg(0), int(5)), &[ret(string("few"))])]),
                ret(string("many")),
            ],
        ),
        // Local0 = 0; While (One) { If (Local0 == 3) { Break } Local0 = NEXT(Local0) }
        method(
            "NEXT",
            1,
            &[
                if_(lequal(arg(0), int(0)), &[ret(int(1))]),
                if_(lequal(arg(0), int(1)), &[ret(int(2))]),
                ret(int(3)),
            ],
        ),
        method(
            "LOOP",
            0,
            &[
                store(int(0), local(0)),
                while_(
                    int(1),
                    &[
                        if_(lequal(local(0), int(3)), &[vec![op::BREAK]]),
                        store(cat(&[path("NEXT"), local(0)]), local(0)),
                    ],
                ),
                ret(local(0)),
            ],
        ),
        method("CALL", 0, &[ret(cat(&[path("SAME"), int(5), int(5)]))]),
        method("NONE", 0, &[vec![op::NOOP]]),
    ]);
    let ns = load(&t);
    let mut i = Interpreter::new(&ns);
    let mut run = |m: &str, args: &[Value]| i.evaluate(&p(m), args);
    let int = |v: u64| Ok(Some(Value::Integer(v)));
    let s = |v: &str| Ok(Some(Value::String(v.to_string())));
    assert_eq!(run("\\NV", &[]), int(7));
    assert_eq!(run("\\SET", &[Value::Integer(9)]), Ok(None));
    assert_eq!(
        run("\\NV", &[]),
        int(9),
        "the store is seen by later evaluations"
    );
    // A revision-1 table has 32-bit integers: logical true is 0xFFFFFFFF.
    assert_eq!(
        run("\\SAME", &[Value::Integer(2), Value::Integer(2)]),
        int(0xFFFF_FFFF)
    );
    assert_eq!(
        run("\\NEQ", &[Value::Integer(2), Value::Integer(2)]),
        int(0)
    );
    assert_eq!(run("\\PICK", &[Value::Integer(1)]), s("one"));
    assert_eq!(run("\\PICK", &[Value::Integer(3)]), s("few"));
    assert_eq!(run("\\PICK", &[Value::Integer(9)]), s("many"));
    assert_eq!(run("\\LOOP", &[]), int(3));
    assert_eq!(run("\\CALL", &[]), int(0xFFFF_FFFF));
    assert_eq!(run("\\NONE", &[]), Ok(None));
    assert_eq!(
        run("\\SAME", &[]).unwrap_err().kind,
        ErrorKind::ArgumentCount {
            expected: 2,
            given: 0
        }
    );
    // A fresh interpreter starts from the table's own values.
    assert_eq!(Interpreter::new(&ns).evaluate(&p("\\NV"), &[]), int(7));
}

#[test]
fn integer_width_follows_the_dsdt_revision() {
    let body = cat(&[
        name("ONES", vec![op::ONES]),
        name("BIG", int(0x1_2345_6789)),
        method("BIGM", 0, &[ret(int(0x1_2345_6789))]),
    ]);
    let rev1 = table_with_revision(1, &body);
    let rev2 = table_with_revision(2, &body);
    assert_eq!(int_of(&rev1, "\\ONES"), 0xFFFF_FFFF);
    assert_eq!(
        int_of(&rev1, "\\BIGM"),
        0x2345_6789,
        "QWord truncated to 32 bits"
    );
    assert_eq!(int_of(&rev2, "\\ONES"), u64::MAX);
    assert_eq!(int_of(&rev2, "\\BIG"), 0x1_2345_6789);
}

fn table_with_revision(revision: u8, body: &[u8]) -> Vec<u8> {
    crate::acpi::testutil::table(b"DSDT", revision, body)
}

#[test]
fn buffers_and_packages() {
    let t = dsdt(&[
        name("BUF", with_pkg(&[op::BUFFER], &cat(&[int(6), vec![1, 2]]))),
        name(
            "PKG",
            package(&[int(1), string("X"), path("^FOO"), package(&[])]),
        ),
        scope("\\_SB", &[name("INSB", package(&[path("GSIA")]))]),
        name("OVER", with_pkg(&[op::PACKAGE], &[1, op::ONE, op::ONE])),
        name("HUGE", var_package(int(0xFFFF_FFFF), &[])),
        name("HBUF", with_pkg(&[op::BUFFER], &int(0x1000_0000))),
        name(
            "STR",
            cat(&[vec![op::STRING_PREFIX], b"ok\xFF".to_vec(), vec![0]]),
        ),
    ]);
    let v = |path: &str| eval(&t, path, &[]);
    assert_eq!(v("\\BUF"), Ok(Some(Value::Buffer(vec![1, 2, 0, 0, 0, 0]))));
    let pkg = v("\\PKG").unwrap().unwrap();
    let Value::Package(items) = pkg else { panic!() };
    assert_eq!(items[0], Value::Integer(1));
    assert_eq!(items[1], Value::String("X".to_string()));
    match &items[2] {
        Value::Reference { name, scope } => {
            assert_eq!(
                (name.to_string(), scope.clone()),
                ("^FOO".to_string(), AmlPath::root())
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(items[3], Value::Package(vec![]));
    match v("\\_SB.INSB").unwrap().unwrap() {
        Value::Package(items) => assert!(matches!(
            &items[0],
            Value::Reference { scope, .. } if *scope == p("\\_SB")
        )),
        other => panic!("{other:?}"),
    }
    let kind = |path: &str| v(path).unwrap_err().kind;
    assert_eq!(
        kind("\\OVER"),
        ErrorKind::TooLarge {
            what: "package",
            size: 2
        }
    );
    assert_eq!(
        kind("\\HUGE"),
        ErrorKind::TooLarge {
            what: "package",
            size: 0xFFFF_FFFF
        }
    );
    assert_eq!(
        kind("\\HBUF"),
        ErrorKind::TooLarge {
            what: "buffer",
            size: 0x1000_0000
        }
    );
    assert!(matches!(kind("\\STR"), ErrorKind::WrongType { .. }));
}

#[test]
fn unsupported_opcodes_name_the_method_and_the_opcode() {
    let t = dsdt(&[
        cat(&[vec![op::EXT_PREFIX, op::MUTEX], seg("MTX"), vec![0]]),
        scope(
            "\\_SB",
            &[device(
                "PCI0",
                &[
                    // Acquire (MTX, 0xFFFF)
                    method(
                        "_PRT",
                        0,
                        &[cat(&[vec![0x5B, 0x23], path("^^MTX"), vec![0xFF, 0xFF]])],
                    ),
                    // Return (1 + 2)
                    method(
                        "ADD",
                        0,
                        &[ret(cat(&[vec![0x72], int(1), int(2), vec![0]]))],
                    ),
                    method("CALL", 0, &[ret(cat(&[path("ADD")]))]),
                    method("READ", 0, &[ret(path("\\MTX"))]),
                    method("MISS", 0, &[ret(path("NOPE"))]),
                ],
            )],
        ),
    ]);
    let msg = |m: &str| eval(&t, m, &[]).unwrap_err().to_string();
    assert_eq!(
        msg("\\_SB.PCI0._PRT"),
        "\\_SB.PCI0._PRT: unsupported opcode 0x5b23 (Acquire) at offset 0x42"
    );
    // The innermost method is named.
    assert!(msg("\\_SB.PCI0.CALL").starts_with("\\_SB.PCI0.ADD: unsupported opcode 0x72 (Add)"));
    assert!(msg("\\_SB.PCI0.READ").contains("\\MTX is an object this reader does not evaluate"));
    assert!(msg("\\_SB.PCI0.MISS").starts_with("\\_SB.PCI0.MISS: NOPE not found"));
    assert!(msg("\\_SB.PCI0").contains("a Device, which has no value"));
}

#[test]
fn loops_and_recursion_are_bounded() {
    let t = dsdt(&[
        method("SPIN", 0, &[while_(int(1), &[])]),
        method("REC", 0, &[ret(path("REC"))]),
        // Two methods calling each other with an argument.
        method("PING", 1, &[ret(cat(&[path("PONG"), arg(0)]))]),
        method("PONG", 1, &[ret(cat(&[path("PING"), arg(0)]))]),
        name("BIGP", package(&vec![int(0x1234_5678); 200])),
        // Copying a big package around in a loop costs what the copies cost.
        method(
            "COPY",
            0,
            &[while_(
                int(1),
                &[store(path("BIGP"), local(0)), store(local(0), local(1))],
            )],
        ),
    ]);
    let kind = |m: &str, args: &[Value]| {
        let e = eval(&t, m, args).unwrap_err();
        assert!(e.context.is_some(), "{e}");
        e.kind
    };
    assert_eq!(kind("\\SPIN", &[]), ErrorKind::TooManySteps);
    assert_eq!(kind("\\REC", &[]), ErrorKind::TooDeep);
    assert_eq!(kind("\\PING", &[Value::Integer(1)]), ErrorKind::TooDeep);
    assert_eq!(kind("\\COPY", &[]), ErrorKind::TooManySteps);
}

/// The stack hostile AML is run on: 64 KiB — half the kernel's 128 KiB boot stack, on
/// which the DSDT is read — when optimized as the kernel is (`cargo test --release`). An
/// unoptimized build's frames are ~11 times larger (`term`: over 4 KiB against 176 bytes;
/// the deepest chain of terms takes ~240 KiB), so it gets 512 KiB.
const SMALL_STACK: usize = if cfg!(debug_assertions) {
    512 << 10
} else {
    64 << 10
};

/// Runs `f` on a thread with [`SMALL_STACK`], so a recursion that is not bounded tightly
/// enough overflows here first.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // Each kind of nesting the interpreter recurses on, 5000 deep in one method (the
    // VarPackage count chain is the costliest a level), and methods calling themselves
    // while holding a value nested MAX_VALUE_DEPTH deep: each stops at MAX_DEPTH, on a
    // small stack. For the namespace walk, 3000 nested `Scope (\)` (which stay at the
    // root) and Devices: the former stop at MAX_DEPTH, the latter and 3000 nested
    // `Scope (S)` make a path too long first.
    let nest = |wrap: &dyn Fn(Aml) -> Aml, inner: Aml, levels: usize| {
        (0..levels).fold(inner, |e, _| wrap(e))
    };
    let chains = [
        ("LNOT", nest(&lnot, int(0), 5000)),
        ("PKG", nest(&|e| package(&[e]), int(0), 5000)),
        ("VPKG", nest(&|e| var_package(e, &[]), int(0), 5000)),
        ("BUF", nest(&|e| with_pkg(&[op::BUFFER], &e), int(0), 5000)),
        ("STOR", nest(&|e| store(e, local(0)), int(0), 5000)),
        ("LEQ", nest(&|e| lequal(int(0), e), int(0), 5000)),
        ("ARGS", nest(&|e| cat(&[path("ID"), e]), int(0), 5000)),
    ];
    let mut defs: Vec<Aml> = chains
        .iter()
        .map(|(m, body)| method(m, 0, &[ret(body.clone())]))
        .collect();
    defs.push(method("ID", 1, &[ret(arg(0))]));
    defs.push(method(
        "IFS",
        0,
        &[nest(&|e| if_(int(1), &[e]), ret(int(0)), 5000)],
    ));
    let deep = nest(&|e| package(&[e]), int(0), MAX_VALUE_DEPTH);
    defs.push(method(
        "REC",
        0,
        &[
            store(deep, local(0)),
            store(local(0), local(1)),
            ret(path("REC")),
        ],
    ));
    defs.push(name("NPKG", nest(&|e| package(&[e]), package(&[]), 5000)));
    defs.push(nest(&|e| scope("\\", &[e]), name("DEEP", int(1)), 3000));
    defs.push(nest(&|e| scope("S", &[e]), name("DEEP", int(1)), 3000));
    defs.push(nest(&|e| device("D", &[e]), name("DEEP", int(1)), 3000));
    let t = dsdt(&defs);
    let (kinds, problems) = on_small_stack(move || {
        let ns = load(&t);
        let kinds = [
            "\\LNOT", "\\PKG", "\\VPKG", "\\BUF", "\\STOR", "\\LEQ", "\\ARGS", "\\IFS", "\\REC",
            "\\NPKG",
        ]
        .map(|m| {
            let e = Interpreter::new(&ns).evaluate(&p(m), &[]).unwrap_err();
            (m, e.kind)
        });
        let problems: Vec<ErrorKind> = ns.problems.iter().map(|e| e.kind.clone()).collect();
        (kinds, problems)
    });
    for (m, kind) in kinds {
        assert_eq!(kind, ErrorKind::TooDeep, "{m}");
    }
    let too_long = ErrorKind::TooLarge {
        what: "path",
        size: MAX_PATH_SEGS as u64 + 1,
    };
    assert_eq!(problems, [ErrorKind::TooDeep, too_long.clone(), too_long]);
}

#[test]
fn field_units_are_not_read() {
    let t = dsdt(&[
        with_pkg(
            &[op::EXT_PREFIX, op::FIELD],
            &cat(&[path("REG"), vec![0x01], seg("PRQA"), vec![8]]),
        ),
        method("_CRS", 0, &[ret(path("PRQA"))]),
        method("SET", 0, &[store(int(1), path("PRQA"))]),
    ]);
    let e = eval(&t, "\\_CRS", &[]).unwrap_err();
    assert!(e.to_string().contains("\\PRQA is a field unit"), "{e}");
    let e = eval(&t, "\\SET", &[]).unwrap_err();
    assert!(
        e.to_string().contains("storing into it is not emulated"),
        "{e}"
    );
}

#[test]
fn values_nested_by_a_loop_are_refused_before_they_can_blow_the_stack() {
    // Local0 = Zero; While (One) { Local0 = Package () { Local0 } }: every turn wraps the
    // last value in one more package. Cloning, dropping and weighing such a value
    // recurse once per level, so it must stop at MAX_VALUE_DEPTH, not at the step
    // budget (~450 levels), and also when reached through a chain of 8 method calls.
    let nest = [
        store(int(0), local(0)),
        while_(int(1), &[store(package(&[local(0)]), local(0))]),
    ];
    let mut defs = vec![method("NEST", 0, &nest)];
    let mut callee = "NEST".to_string();
    for i in 1..=8 {
        let caller = format!("CH{i}");
        defs.push(method(&caller, 0, &[ret(path(&callee))]));
        callee = caller;
    }
    // The same into a Name (\DEEP), and a method that returns the value each turn.
    defs.push(name("DEEP", int(0)));
    // (A name written in a package is a reference, not its value: go through Local0.)
    defs.push(method(
        "NAMD",
        0,
        &[while_(
            int(1),
            &[
                store(path("DEEP"), local(0)),
                store(package(&[local(0)]), path("DEEP")),
            ],
        )],
    ));
    defs.push(method("WRAP", 1, &[ret(package(&[arg(0)]))]));
    defs.push(method(
        "RETD",
        0,
        &[
            store(int(0), local(0)),
            while_(int(1), &[store(cat(&[path("WRAP"), local(0)]), local(0))]),
        ],
    ));
    let t = dsdt(&defs);
    let kinds = on_small_stack(move || {
        let ns = load(&t);
        ["\\NEST", "\\NAMD", "\\RETD", "\\CH8"].map(|m| {
            let e = Interpreter::new(&ns).evaluate(&p(m), &[]).unwrap_err();
            (e.kind.clone(), e.to_string())
        })
    });
    for (kind, text) in kinds {
        assert_eq!(kind, ErrorKind::ValueTooDeep, "{text}");
        assert!(text.contains("packages nested deeper than 16"), "{text}");
    }
}

#[test]
fn package_nesting_is_limited_where_values_are_made() {
    // Literal packages: MAX_VALUE_DEPTH levels are fine, one more is not.
    let nested = |levels: usize| {
        let mut pkg = int(7);
        for _ in 0..levels {
            pkg = package(&[pkg]);
        }
        pkg
    };
    let t = dsdt(&[
        name("OK", nested(MAX_VALUE_DEPTH)),
        name("OVER", nested(MAX_VALUE_DEPTH + 1)),
        method("ARG", 1, &[ret(package(&[arg(0)]))]),
    ]);
    let ns = load(&t);
    let mut i = Interpreter::new(&ns);
    let ok = i.evaluate(&p("\\OK"), &[]).unwrap().unwrap();
    assert_eq!(ok.nesting(), MAX_VALUE_DEPTH);
    let e = i.evaluate(&p("\\OVER"), &[]).unwrap_err();
    assert_eq!(
        (e.kind, e.context),
        (ErrorKind::ValueTooDeep, Some(p("\\OVER")))
    );
    // One more level around a value already at the limit, inside a method.
    let e = i
        .evaluate(&p("\\ARG"), core::slice::from_ref(&ok))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::ValueTooDeep);
    // Arguments from the caller are held to the same limit.
    let over = Value::Package(vec![ok]);
    assert_eq!(over.nesting(), MAX_VALUE_DEPTH + 1);
    let e = i.evaluate(&p("\\ARG"), &[over]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ValueTooDeep);
}
