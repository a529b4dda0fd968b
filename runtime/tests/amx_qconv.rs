//! The AMX 3x3 convolution against a naive f64 convolution with the graph's Q/DQ semantics
//! (the input quantized and dequantized, int8 weights times their per-channel scales, the bias,
//! the output quantized and dequantized). Skips with a message where AMX is not available.
#![cfg(target_arch = "x86_64")]

use llamagen_runtime::amx;
use llamagen_runtime::amx::qconv::{QConv3x3, Quant};
use llamagen_test_support::tolerance::Tolerance;

struct Case {
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn reference(
    c: &Case,
    x: &[f32],
    w: &[i8],
    ws: &[f32],
    bias: &[f32],
    xq: Quant,
    yq: Quant,
) -> Vec<f32> {
    let dq: Vec<f64> = x
        .iter()
        .map(|&v| f64::from(xq.dequantize(xq.quantize(v))))
        .collect();
    let mut out = vec![0f32; c.n * c.cout * c.h * c.w];
    for img in 0..c.n {
        for co in 0..c.cout {
            for y in 0..c.h {
                for xx in 0..c.w {
                    let mut acc = f64::from(bias[co]);
                    for ci in 0..c.cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (y + ky, xx + kx);
                                if iy == 0 || ix == 0 || iy > c.h || ix > c.w {
                                    continue;
                                }
                                let v = dq[((img * c.cin + ci) * c.h + iy - 1) * c.w + ix - 1];
                                let k = f64::from(w[((co * c.cin + ci) * 3 + ky) * 3 + kx]);
                                acc += v * k * f64::from(ws[co]);
                            }
                        }
                    }
                    out[((img * c.cout + co) * c.h + y) * c.w + xx] =
                        yq.dequantize(yq.quantize(acc as f32));
                }
            }
        }
    }
    out
}

fn check(c: Case, threads: usize, seed: u64) {
    check_with(c, threads, seed, false);
}

/// [`check`], with a residual added to the output where `residual`.
fn check_with(c: Case, threads: usize, seed: u64, residual: bool) {
    let mut rng = Rng(seed);
    let x: Vec<f32> = (0..c.n * c.cin * c.h * c.w)
        .map(|_| rng.uniform() * 6.0 - 2.5)
        .collect();
    let w: Vec<i8> = (0..c.cout * c.cin * 9)
        .map(|_| ((rng.next() % 255) as i32 - 127) as i8)
        .collect();
    let ws: Vec<f32> = (0..c.cout).map(|_| 0.002 + 0.004 * rng.uniform()).collect();
    let bias: Vec<f32> = (0..c.cout).map(|_| rng.uniform() - 0.5).collect();
    // Zero points away from 0 and 255, so the border and the clamp both matter.
    let xq = Quant {
        scale: 6.0 / 255.0,
        zero_point: 107,
    };
    let yq = Quant {
        scale: 0.05,
        zero_point: 131,
    };
    let conv = QConv3x3::new(c.cin, c.cout, &w, &ws, Some(&bias), xq, yq).unwrap();
    let r: Vec<f32> = (0..c.n * c.cout * c.h * c.w)
        .map(|_| rng.uniform() * 4.0 - 2.0)
        .collect();
    let r = residual.then_some(&r[..]);
    // A guard past the output: a store of a padded channel (past cout) would land there.
    let len = c.n * c.cout * c.h * c.w;
    let mut out = vec![f32::NAN; len + 64 * c.h * c.w];
    let (got, guard) = out.split_at_mut(len);
    let threaded = |count: usize, f: &(dyn Fn(usize) + Sync)| {
        std::thread::scope(|s| {
            for i in 0..count {
                s.spawn(move || f(i));
            }
        })
    };
    // Garbage in the scratch must not matter.
    let mut scratch = vec![0xA5; conv.scratch_len(c.h, c.w)];
    conv.run(&x, r, c.n, c.h, c.w, got, &mut scratch, threads, &threaded)
        .unwrap();
    assert!(guard.iter().all(|v| v.is_nan()), "stored past the output");
    let got = got.to_vec();
    let mut expected = reference(&c, &x, &w, &ws, &bias, xq, yq);
    if let Some(r) = r {
        expected.iter_mut().zip(r).for_each(|(e, r)| *e += r);
    }
    let r_ptr = r.map(<[f32]>::as_ptr);
    if c.cin == c.cout {
        // In place (ONNX Runtime's buffer reuse): the same result.
        let mut buf = x.clone();
        let p = buf.as_mut_ptr();
        // SAFETY: `buf` holds n * cin * h * w = n * cout * h * w values.
        unsafe { conv.run_raw(p, r_ptr, c.n, c.h, c.w, p, &mut scratch, threads, &threaded) }
            .unwrap();
        assert_eq!(buf, got, "in place differs");
    }
    if let Some(r) = r {
        // The output in the residual's buffer: the same result.
        let mut buf = r.to_vec();
        let p = buf.as_mut_ptr();
        // SAFETY: `x` and `buf` do not overlap; `buf` is read as the residual value by value
        // before each output value is written there.
        unsafe {
            conv.run_raw(
                x.as_ptr(),
                Some(p),
                c.n,
                c.h,
                c.w,
                p,
                &mut scratch,
                threads,
                &threaded,
            )
        }
        .unwrap();
        assert_eq!(buf, got, "output over the residual differs");
    }
    // One output quantization step: the int32 sums are exact where the reference sums in f64,
    // so only a value within rounding of a step boundary may land one step away.
    let level = Tolerance::abs("one output quantization step", 0.0501);
    level
        .check("AMX conv vs reference", &got, &expected)
        .unwrap_or_else(|e| panic!("{e}"));
    let off = got.iter().zip(&expected).filter(|(g, e)| g != e).count();
    assert!(
        off * 1000 <= got.len(),
        "{off} of {} outputs one step away (more than 0.1%)",
        got.len()
    );
}

fn skip() -> bool {
    if !amx::available() {
        eprintln!("SKIP: AMX is not available on this CPU / kernel");
        return true;
    }
    false
}

#[test]
fn matches_reference_with_padded_channels_and_two_images() {
    if skip() {
        return;
    }
    // 70 input channels: two K chunks, the second mostly padding; 16-pixel rows pair across rows.
    check(
        Case {
            n: 2,
            cin: 70,
            cout: 64,
            h: 6,
            w: 16,
        },
        1,
        7,
    );
}

#[test]
fn matches_reference_on_several_threads() {
    if skip() {
        return;
    }
    check(
        Case {
            n: 1,
            cin: 160,
            cout: 96,
            h: 16,
            w: 32,
        },
        3,
        11,
    );
}

#[test]
fn matches_reference_on_partial_tiles() {
    if skip() {
        return;
    }
    // 5 x 9 maps: one partial tile a row, 5 tiles (the last paired with itself).
    check(
        Case {
            n: 2,
            cin: 24,
            cout: 32,
            h: 5,
            w: 9,
        },
        2,
        3,
    );
    // 1 x 20: a full and a partial tile in one row.
    check(
        Case {
            n: 1,
            cin: 64,
            cout: 64,
            h: 1,
            w: 20,
        },
        1,
        5,
    );
}

#[test]
fn matches_reference_with_outputs_not_a_multiple_of_32() {
    if skip() {
        return;
    }
    // The VQ decoder's image convolution (160 -> 3): one block, 29 padded channels not
    // stored; and 48 (a full block and a half one).
    check(
        Case {
            n: 2,
            cin: 160,
            cout: 3,
            h: 7,
            w: 18,
        },
        2,
        13,
    );
    check(
        Case {
            n: 2,
            cin: 40,
            cout: 48,
            h: 4,
            w: 16,
        },
        1,
        17,
    );
}

#[test]
fn adds_the_residual() {
    if skip() {
        return;
    }
    // In place (cin == cout) and not; partial tiles; padded output channels.
    check_with(
        Case {
            n: 2,
            cin: 64,
            cout: 64,
            h: 5,
            w: 20,
        },
        2,
        19,
        true,
    );
    check_with(
        Case {
            n: 1,
            cin: 70,
            cout: 48,
            h: 3,
            w: 17,
        },
        1,
        23,
        true,
    );
}

#[test]
fn refuses_bad_shapes() {
    let q = Quant {
        scale: 1.0,
        zero_point: 0,
    };
    assert!(!QConv3x3::fits(0), "no outputs");
    assert!(QConv3x3::fits(3) && QConv3x3::fits(32));
    let err = QConv3x3::new(4, 0, &[], &[1.0], None, q, q).err().unwrap();
    assert!(err.contains("at least 1"), "{err}");
    let err = QConv3x3::new(4, 32, &[0; 10], &[1.0], None, q, q)
        .err()
        .unwrap();
    assert!(err.contains("expected 32 x 4 x 3 x 3"), "{err}");
    let err = QConv3x3::new(4, 32, &[0; 32 * 4 * 9], &[1.0; 3], None, q, q)
        .err()
        .unwrap();
    assert!(err.contains("3 weight scales"), "{err}");
    if skip() {
        return;
    }
    let conv = QConv3x3::new(4, 32, &[0; 32 * 4 * 9], &[1.0], None, q, q).unwrap();
    let out = vec![0.0; 32 * 16 * 16];
    let seq = |count: usize, f: &(dyn Fn(usize) + Sync)| (0..count).for_each(f);
    let scratch_len = conv.scratch_len(16, 16);
    // The error of a 16 x 16 run on `x` (+ `r`) with `scratch` bytes of scratch.
    let refusal = |x: &[f32], r: Option<&[f32]>, scratch: usize| {
        let mut scratch = vec![0; scratch];
        conv.run(x, r, 1, 16, 16, &mut out.clone(), &mut scratch, 1, &seq)
            .err()
            .unwrap()
    };
    let err = refusal(&[0.0; 3 * 16 * 16], None, scratch_len);
    assert!(err.contains("input 768"), "{err}");
    let err = refusal(&[0.0; 4 * 16 * 16], None, 100);
    assert!(err.contains("100 bytes of scratch"), "{err}");
    let err = refusal(&[0.0; 4 * 16 * 16], Some(&[0.0; 31 * 16 * 16]), scratch_len);
    assert!(
        err.contains("residual of 7936 values, expected 8192"),
        "{err}"
    );
}

#[test]
fn quantizer_rounds_half_to_even_and_saturates() {
    let q = Quant {
        scale: 0.5,
        zero_point: 10,
    };
    // v / scale = 0.5, 1.5, 2.5, -0.5, -1.5: ties go to the even neighbour (ONNX).
    let got: Vec<u8> = [0.25f32, 0.75, 1.25, -0.25, -0.75]
        .iter()
        .map(|&v| q.quantize(v))
        .collect();
    assert_eq!(got, vec![10, 12, 12, 10, 8]);
    assert_eq!(q.quantize(1e30), 255);
    assert_eq!(q.quantize(-1e30), 0);
    assert_eq!(q.quantize(f32::INFINITY), 255);
    assert_eq!(q.quantize(f32::NAN), 0);
    assert_eq!(q.dequantize(12), 1.0);
}
