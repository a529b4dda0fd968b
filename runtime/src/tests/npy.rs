//! Unit tests of `npy.rs`.

use super::*;

#[test]
fn header_dict_matches_numpy_spelling() {
    assert_eq!(
        header_dict("<i8", &[2, 16]),
        "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 16), }"
    );
    assert_eq!(
        header_dict("<f4", &[5]),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }"
    );
    assert_eq!(
        header_dict("<f4", &[]),
        "{'descr': '<f4', 'fortran_order': False, 'shape': (), }"
    );
}

#[test]
fn parser_accepts_spacing_quotes_and_order() {
    let h = br#"{"shape": ( 3L , 4 ), 'fortran_order':True,'descr':'<f4'}"#;
    let items = Parser { s: h, i: 0 }.dict().unwrap();
    assert_eq!(items.len(), 3);
    assert!(matches!(&items[0].1, Lit::Tuple(t) if t == &[3, 4]));
    assert!(matches!(&items[1].1, Lit::Bool(true)));
    assert!(matches!(&items[2].1, Lit::Str(s) if s == "<f4"));
}
