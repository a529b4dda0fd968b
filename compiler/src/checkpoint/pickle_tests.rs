//! Unit tests of the restricted unpickler and of state-dict selection, on hand-made pickles.

use std::path::Path;

use super::error::CheckpointError;
use super::pickle::unpickle;
use super::pickle_value::{Object, StorageRef, TensorMeta, Value};
use super::{select_state_dict, DType};

const P: &str = "t.pt";

/// BINUNICODE.
fn s(x: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend_from_slice(&(x.len() as u32).to_le_bytes());
    v.extend_from_slice(x.as_bytes());
    v
}

/// GLOBAL.
fn g(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `_rebuild_tensor_v2(('storage', torch.FloatStorage, key, 'cpu', numel), 0, (a, b), (b, 1), False, OrderedDict())`
fn tensor(key: &str, a: u8, b: u8) -> Vec<u8> {
    cat(&[
        &g("torch._utils", "_rebuild_tensor_v2"),
        b"((",
        &s("storage"),
        &g("torch", "FloatStorage"),
        &s(key),
        &s("cpu"),
        &[
            b'K',
            a * b,
            b't',
            b'Q',
            b'K',
            0,
            b'K',
            a,
            b'K',
            b,
            0x86,
            b'K',
            b,
            b'K',
            1,
            0x86,
            0x89,
        ],
        &g("collections", "OrderedDict"),
        b")Rt",
        b"R",
    ])
}

fn run(bytes: &[u8]) -> Result<super::pickle_value::Unpickled, CheckpointError> {
    unpickle(Path::new(P), bytes)
}

#[test]
fn os_system_is_forbidden_before_reduce() {
    // GLOBAL 'os system', 'echo pwned', TUPLE1, REDUCE, STOP
    let bytes = cat(&[b"\x80\x02", &g("os", "system"), &s("echo pwned"), b"\x85R."]);
    match run(&bytes) {
        Err(CheckpointError::ForbiddenGlobal { module, name, path }) => {
            assert_eq!((module.as_str(), name.as_str()), ("os", "system"));
            assert_eq!(path, Path::new(P));
        }
        other => panic!("{other:?}"),
    }
    // STACK_GLOBAL spelling (protocol 4).
    let bytes = cat(&[b"\x80\x04", b"\x8c\x08builtins\x8c\x04eval\x93", b")R."]);
    assert!(matches!(
        run(&bytes),
        Err(CheckpointError::ForbiddenGlobal { ref module, ref name, .. }) if module == "builtins" && name == "eval"
    ));
}

#[test]
fn parses_a_torch_style_state_dict() {
    let bytes = cat(&[
        b"\x80\x02}q\x00",
        &s("model"),
        &g("collections", "OrderedDict"),
        b")R(",
        &s("a.weight"),
        &tensor("0", 2, 3),
        &s("p"),
        &g("torch._utils", "_rebuild_parameter"),
        b"(",
        &tensor("1", 1, 1),
        b"\x88",
        &g("collections", "OrderedDict"),
        b")Rt",
        b"R",
        &s("step"),
        b"K\x07",
        b"u}",
        &s("_metadata"),
        b"}s",
        b"bs.",
    ]);
    let u = run(&bytes).unwrap();
    let sd = select_state_dict(Path::new(P), &u).unwrap();
    assert_eq!(sd.len(), 2, "the int entry is skipped");
    assert_eq!(sd[0].0, "a.weight");
    assert_eq!(
        sd[0].1,
        TensorMeta {
            storage: StorageRef {
                dtype: DType::F32,
                key: "0".into(),
                numel: 6
            },
            offset: 0,
            shape: vec![2, 3],
            strides: vec![3, 1],
        }
    );
    assert_eq!(sd[1].0, "p");
}

#[test]
fn scalars_memo_and_protocol4_framing() {
    // FRAME, SHORT_BINUNICODE + MEMOIZE, BINGET, LONG1 (-2), BINFLOAT 1.5, BININT, LONG_BINPUT/GET,
    // BINBYTES, NONE, EMPTY_SET + ADDITEMS, APPENDS, POP, DUP.
    let mut bytes = b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00]\x94(".to_vec();
    bytes.extend_from_slice(b"\x8c\x01a\x94h\x01\x8a\x01\xfeG\x3f\xf8\x00\x00\x00\x00\x00\x00");
    bytes.extend_from_slice(b"J\xff\xff\xff\xffr\x00\x01\x00\x00j\x00\x01\x00\x00C\x02hiN");
    bytes.extend_from_slice(b"\x8f(K\x01\x90K\x090\x88\x32e.");
    let u = run(&bytes).unwrap();
    let Some(Object::List(items)) = u.object(&u.root) else {
        panic!("{:?}", u.root)
    };
    assert_eq!(
        &items[..9],
        &[
            Value::Str("a".into()),
            Value::Str("a".into()),
            Value::Int(-2),
            Value::Float(1.5),
            Value::Int(-1),
            Value::Int(-1),
            Value::Bytes(b"hi".as_slice().into()),
            Value::None,
            items[8].clone(),
        ]
    );
    assert!(matches!(u.object(&items[8]), Some(Object::Set(v)) if v == &[Value::Int(1)]));
    assert_eq!(&items[9..], &[Value::Bool(true), Value::Bool(true)]);
}

#[test]
fn unsupported_opcode_names_opcode_and_offset() {
    match run(b"\x80\x02I1\n.") {
        Err(CheckpointError::UnsupportedPickleOpcode { opcode, offset, .. }) => {
            assert_eq!((opcode, offset), (b'I', 2))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_truncation_is_malformed() {
    let bytes = cat(&[
        b"\x80\x02}q\x00",
        &s("model"),
        &g("collections", "OrderedDict"),
        b")R(",
        &s("a.weight"),
        &tensor("0", 2, 3),
        b"us.",
    ]);
    assert!(run(&bytes).is_ok());
    for n in 0..bytes.len() {
        match run(&bytes[..n]) {
            Err(CheckpointError::Malformed { reason, .. }) => assert!(!reason.is_empty()),
            other => panic!("prefix {n}: {other:?}"),
        }
    }
}

#[test]
fn corrupted_pickles_never_panic() {
    let base = cat(&[
        b"\x80\x02}q\x00",
        &s("model"),
        &g("collections", "OrderedDict"),
        b")R(",
        &s("w"),
        &tensor("0", 4, 4),
        b"us.",
    ]);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        if let Ok(u) = run(&b) {
            let _ = select_state_dict(Path::new(P), &u);
        }
    }
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    // A 1 MiB string (popped again) first, so the million tuples fit the memory budget of the
    // pickle's size (`pickle::PICKLE_MEMORY_FACTOR`).
    let mut bytes = b"\x80\x02".to_vec();
    bytes.push(b'B');
    bytes.extend_from_slice(&(1u32 << 20).to_le_bytes());
    bytes.extend(std::iter::repeat_n(0u8, 1 << 20));
    bytes.push(b'0');
    bytes.push(b']');
    bytes.extend(std::iter::repeat_n(0x85u8, 1_000_000)); // TUPLE1 a million times
    bytes.push(b'.');
    let u = run(&bytes).unwrap();
    assert_eq!(u.objects.len(), 1_000_001);
    drop(u);
}

#[test]
fn stack_errors_are_malformed() {
    for bad in [
        &b"\x80\x02."[..],
        b"\x80\x02t.",
        b"\x80\x02h\x05.",
        b"\x80\x02K\x01K\x02s.",
        b"\x80\x02]K\x01K\x02s.",
        b"\x80\x09N.",
        b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.",
        b"\x80\x02X\x02\x00\x00\x00\xff\xfe.",
        b"\x80\x02K\x01)R.",
        b"\x80\x02ccollections\nOrderedDict\nK\x01\x85R.",
    ] {
        assert!(
            matches!(run(bad), Err(CheckpointError::Malformed { .. })),
            "{bad:?}: {:?}",
            run(bad)
        );
    }
}

#[test]
fn state_dict_selection() {
    let path = Path::new(P);
    let dict_with = |key: &str| {
        cat(&[
            b"\x80\x02}",
            &s("args"),
            &g("argparse", "Namespace"),
            b")\x81}",
            &s("lr"),
            b"G\x3f\x50\x62\x4d\xd2\xf1\xa9\xfcsbs",
            &s(key),
            b"}(",
            &s(&format!("{key}.w")),
            &tensor("0", 1, 2),
            b"us.",
        ])
    };
    for key in ["model", "module", "state_dict"] {
        let u = run(&dict_with(key)).unwrap();
        let sd = select_state_dict(path, &u).unwrap();
        assert_eq!(sd.len(), 1);
        assert_eq!(sd[0].0, format!("{key}.w"));
    }
    // "model" wins over "state_dict"; a non-dict "model" is passed over.
    let both = cat(&[
        b"\x80\x02}(",
        &s("state_dict"),
        b"}",
        &s("x"),
        &tensor("0", 1, 1),
        b"s",
        &s("model"),
        b"}",
        &s("y"),
        &tensor("1", 1, 1),
        b"su.",
    ]);
    let sd = select_state_dict(path, &run(&both).unwrap()).unwrap();
    assert_eq!(sd[0].0, "y");
    let non_dict_model = cat(&[b"\x80\x02}(", &s("model"), b"K\x01", &s("module"), b"}u."]);
    assert!(select_state_dict(path, &run(&non_dict_model).unwrap())
        .unwrap()
        .is_empty());
    // No wrapper and no tensors: NoStateDict lists the keys.
    let nothing = cat(&[b"\x80\x02}(", &s("steps"), b"K\x01", &s("args"), b"Nu."]);
    match select_state_dict(path, &run(&nothing).unwrap()) {
        Err(CheckpointError::NoStateDict { keys_found, .. }) => {
            assert_eq!(keys_found, vec!["steps".to_string(), "args".to_string()])
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        select_state_dict(path, &run(b"\x80\x02K\x01.").unwrap()),
        Err(CheckpointError::NoStateDict { .. })
    ));
}

#[test]
fn tensor_rank_is_bounded() {
    let mut size = b"(".to_vec();
    size.extend(std::iter::repeat_n(*b"K\x01", 65).flatten());
    size.push(b't');
    let bytes = cat(&[
        &g("torch._utils", "_rebuild_tensor_v2"),
        b"((",
        &s("storage"),
        &g("torch", "FloatStorage"),
        &s("0"),
        &s("cpu"),
        b"K\x01tQK\x00",
        &size,
        &size,
        b"\x89NtR.",
    ]);
    match run(&bytes) {
        Err(CheckpointError::Malformed { reason, .. }) => {
            assert!(reason.contains("65"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 11: each byte of `}` used to cost about 114 bytes of memory, unbounded. The VM now
/// charges what it allocates and refuses a pickle over its budget (64 bytes per input byte
/// plus 1 MiB) with a named error, long before memory grows.
#[test]
fn pickle_memory_is_bounded() {
    let mut bomb = vec![0x80, 2];
    bomb.extend(std::iter::repeat_n(b'}', 1 << 20));
    bomb.push(b'.');
    let e = match unpickle(Path::new(P), &bomb) {
        Err(e) => e,
        Ok(_) => panic!("a 1 MiB EMPTY_DICT bomb was accepted"),
    };
    assert!(
        matches!(e, CheckpointError::PickleMemory { limit, .. } if limit == super::pickle::memory_limit(bomb.len())),
        "{e}"
    );
}
