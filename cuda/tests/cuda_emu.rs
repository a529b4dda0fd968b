//! The kernel emulator itself: its self-test kernels (runtime/emu/tests/emu_selftest.cu) against
//! CPU results, the errors it must raise (divergent barriers and shuffles, bad pointers, bad
//! arguments, writes past a buffer), its GEMM against naive loops, and capture/replay.
//! The GEMM and capture checks are generic and also run on a GPU with feature `cuda`.
//!
//! Tolerance levels (`llamagen_test_support::tolerance`):
//! - exact: integer results, data movement, f16 conversions (compared as bits) and the
//!   emulator's float intrinsics, which are the host's correctly rounded libm functions.
//! - `BLOCK_SUM` (this file): f32 sums of up to 5000 values in [-1, 1] in a different order than
//!   the f64 reference: each of the <= 5000 additions rounds by <= 2^-24 of a partial sum <= 5000,
//!   so atol 2e-3 (observed errors are ~1e-5).
//! - `GEMM_FP32_OUT`: f32 accumulation of k <= 300 products of f16 values in [-1, 1] (exact in
//!   f32) vs an f64 reference: atol 1e-4 + rtol 1e-5 of the magnitude of the terms
//!   (`|alpha| sum |a b| + |beta c|`, not of the result: cancellation leaves small results of
//!   large terms); on a GPU cuBLAS may split k, same bound.
//! - `GEMM_FP16_OUT`: the above plus one f16 ulp of the terms (rtol 2^-10 + 1e-5).
#![cfg(any(feature = "driver", feature = "emu"))]

use llamagen_test_support::device as cuda_common;
use llamagen_test_support::device_tests;

use cuda_common::{download_f16, download_f32, upload_f16, upload_f32, Rng};
use llamagen_cuda::device::{CaptureGuard, DType, Device, Gemm};
use llamagen_test_support::{Tolerance, GEMM_FP16_OUT, GEMM_FP32_OUT};

/// One GEMM problem of the checks, with everything that can vary.
#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    b_trans: bool,
    c_type: DType,
    alpha: f32,
    beta: f32,
    batch: usize,
    /// Extra elements per row beyond the logical width (leading dimension padding).
    pad: usize,
    /// Extra elements between batch problems beyond one problem's extent.
    gap: usize,
    /// Element offset of each matrix inside its buffer.
    offset: usize,
}

impl Case {
    fn dense(m: usize, n: usize, k: usize) -> Case {
        Case {
            m,
            n,
            k,
            b_trans: false,
            c_type: DType::F32,
            alpha: 1.0,
            beta: 0.0,
            batch: 1,
            pad: 0,
            gap: 0,
            offset: 0,
        }
    }
}

/// A GEMM case's buffers with their host copies (values already f16-rounded where stored f16).
struct Problem<D: Device> {
    gemm: Gemm,
    a: Vec<f32>,
    b: Vec<f32>,
    c0: Vec<f32>,
    a_buf: D::Buf,
    b_buf: D::Buf,
    c_buf: D::Buf,
}

fn problem<D: Device>(d: &D, c: &Case, rng: &mut Rng) -> Problem<D> {
    let (lda, ldc) = (c.k + c.pad, c.n + c.pad);
    let (b_rows, b_cols) = if c.b_trans { (c.n, c.k) } else { (c.k, c.n) };
    let ldb = b_cols + c.pad;
    let stride_a = c.m * lda + c.gap;
    let stride_b = b_rows * ldb + c.gap;
    let stride_c = c.m * ldc + c.gap;
    let a = rng.vec_f16(c.offset + c.batch * stride_a, -1.0, 1.0);
    let b = rng.vec_f16(c.offset + c.batch * stride_b, -1.0, 1.0);
    let c0 = rng.vec_f16(c.offset + c.batch * stride_c, -1.0, 1.0);
    let a_buf = upload_f16(d, &a);
    let b_buf = upload_f16(d, &b);
    let c_buf = match c.c_type {
        DType::F16 => upload_f16(d, &c0),
        DType::F32 => upload_f32(d, &c0),
    };
    let c_elem = if c.c_type == DType::F16 { 2 } else { 4 };
    let gemm = Gemm {
        m: c.m,
        n: c.n,
        k: c.k,
        a: d.addr(&a_buf) + 2 * c.offset as u64,
        lda,
        b: d.addr(&b_buf) + 2 * c.offset as u64,
        ldb,
        b_trans: c.b_trans,
        c: d.addr(&c_buf) + c_elem * c.offset as u64,
        ldc,
        c_type: c.c_type,
        alpha: c.alpha,
        beta: c.beta,
        batch: c.batch,
        stride_a,
        stride_b,
        stride_c,
    };
    Problem {
        gemm,
        a,
        b,
        c0,
        a_buf,
        b_buf,
        c_buf,
    }
}

/// The whole C buffer after GEMM `g` on host copies `a`, `b` and `c0` of its buffers (each
/// matrix starts `len - batch * stride` elements in), by naive f64 loops, and per element the
/// magnitude of the terms that made it, `|alpha| * sum |a b| + |beta c0|` (`None` outside the
/// problem, where elements keep their values).
fn reference(g: &Gemm, a: &[f32], b: &[f32], c0: &[f32]) -> (Vec<f32>, Vec<Option<f32>>) {
    let (ao, bo) = (
        a.len() - g.batch * g.stride_a,
        b.len() - g.batch * g.stride_b,
    );
    let co = c0.len() - g.batch * g.stride_c;
    let mut c = c0.to_vec();
    let mut mag = vec![None; c0.len()];
    for q in 0..g.batch {
        for i in 0..g.m {
            for j in 0..g.n {
                let (mut acc, mut abs) = (0f64, 0f64);
                for kk in 0..g.k {
                    let bi = if g.b_trans {
                        j * g.ldb + kk
                    } else {
                        kk * g.ldb + j
                    };
                    let t = a[ao + q * g.stride_a + i * g.lda + kk] as f64
                        * b[bo + q * g.stride_b + bi] as f64;
                    acc += t;
                    abs += t.abs();
                }
                let ci = co + q * g.stride_c + i * g.ldc + j;
                let old = g.beta as f64 * c[ci] as f64;
                c[ci] = (g.alpha as f64 * acc + old) as f32;
                mag[ci] = Some((g.alpha.abs() as f64 * abs + old.abs()) as f32);
            }
        }
    }
    (c, mag)
}

/// The level of a GEMM against the f64 reference, by output type (the figures are explained on
/// the levels; their relative term scales with the magnitude of the terms).
fn gemm_tolerance(c_type: DType) -> Tolerance {
    match c_type {
        DType::F32 => GEMM_FP32_OUT,
        DType::F16 => GEMM_FP16_OUT,
    }
}

fn check_gemm_case<D: Device>(d: &D, c: &Case, rng: &mut Rng) {
    let p = problem(d, c, rng);
    d.gemm(&p.gemm).expect("gemm");
    let (want, mag) = reference(&p.gemm, &p.a, &p.b, &p.c0);
    let got = match c.c_type {
        DType::F32 => download_f32(d, &p.c_buf, p.c0.len()),
        DType::F16 => download_f16(d, &p.c_buf, p.c0.len()),
    };
    let level = gemm_tolerance(c.c_type);
    for (i, ((&g, &w), m)) in got.iter().zip(&want).zip(&mag).enumerate() {
        match m {
            None => assert!(
                g.to_bits() == w.to_bits(),
                "{c:?}: element {i} outside the problem changed: {g} (was {w})"
            ),
            Some(m) => {
                let bound = level.bound(*m, 0.0);
                assert!(
                    (g - w).abs() <= bound,
                    "{c:?}: element {i}: got {g}, want {w}; terms of magnitude {m} allow {bound} \
                     ({level})"
                );
            }
        }
    }
    let _ = (&p.a_buf, &p.b_buf);
}

/// GEMMs of several shapes and layouts against naive loops.
fn check_gemm<D: Device>(d: &D) {
    let mut rng = Rng(11);
    let base = Case::dense(5, 7, 3);
    let cases = [
        base,
        Case::dense(1, 1, 1),
        Case::dense(33, 17, 300),
        Case::dense(64, 48, 64),
        Case {
            b_trans: true,
            ..Case::dense(9, 20, 31)
        },
        Case {
            c_type: DType::F16,
            ..Case::dense(12, 40, 70)
        },
        Case {
            c_type: DType::F16,
            b_trans: true,
            beta: 1.0,
            ..Case::dense(8, 8, 16)
        },
        Case {
            alpha: 0.5,
            beta: -2.0,
            ..Case::dense(6, 11, 13)
        },
        Case {
            alpha: 0.5,
            beta: 1.0,
            c_type: DType::F16,
            ..Case::dense(6, 11, 13)
        },
        Case {
            batch: 3,
            ..Case::dense(4, 6, 5)
        },
        Case {
            batch: 4,
            b_trans: true,
            pad: 3,
            gap: 5,
            offset: 7,
            ..Case::dense(7, 9, 10)
        },
        Case {
            batch: 2,
            pad: 2,
            offset: 1,
            beta: 1.0,
            c_type: DType::F16,
            ..Case::dense(3, 4, 5)
        },
        Case {
            pad: 16,
            offset: 8,
            ..Case::dense(16, 16, 16)
        },
    ];
    for c in &cases {
        check_gemm_case(d, c, &mut rng);
    }

    // beta = 0 must not read C: NaN there does not leak into the result (cuBLAS semantics).
    let a = upload_f16(d, &[1.0; 4]);
    for c_type in [DType::F32, DType::F16] {
        let c = match c_type {
            DType::F32 => upload_f32(d, &[f32::NAN; 4]),
            DType::F16 => upload_f16(d, &[f32::NAN; 4]),
        };
        let g = Gemm::dense(2, 2, 2, d.addr(&a), d.addr(&a), d.addr(&c), c_type);
        d.gemm(&g).expect("gemm");
        let got = match c_type {
            DType::F32 => download_f32(d, &c, 4),
            DType::F16 => download_f16(d, &c, 4),
        };
        assert_eq!(got, vec![2.0; 4], "beta = 0 with NaN in C ({c_type:?})");
    }
}

/// Captured GEMMs do not run until replayed; a replay reads what was uploaded since.
fn check_capture_replay_gemm<D: Device>(d: &D) {
    let mut rng = Rng(12);
    let case = Case {
        beta: 1.0,
        ..Case::dense(4, 5, 6)
    };
    let p = problem(d, &case, &mut rng);
    d.begin_capture().expect("begin_capture");
    d.gemm(&p.gemm).expect("captured gemm");
    let graph = d.end_capture().expect("end_capture");
    assert_eq!(
        download_f32(d, &p.c_buf, p.c0.len()),
        p.c0,
        "capture ran the GEMM"
    );

    // C += A B twice.
    d.replay(&graph).expect("replay");
    d.replay(&graph).expect("replay");
    let (once, _) = reference(&p.gemm, &p.a, &p.b, &p.c0);
    let (twice, _) = reference(&p.gemm, &p.a, &p.b, &once);
    let got = download_f32(d, &p.c_buf, p.c0.len());
    GEMM_FP32_OUT.assert_close("two replays", &got, &twice);

    // New A between replays (how per-request data reaches a captured graph).
    let a2 = rng.vec_f16(p.a.len(), -1.0, 1.0);
    let bytes: Vec<u8> = a2
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    d.upload(&p.a_buf, 0, &bytes).expect("upload");
    d.upload(&p.c_buf, 0, &vec![0u8; 4 * p.c0.len()])
        .expect("upload");
    d.replay(&graph).expect("replay");
    let (want, _) = reference(&p.gemm, &a2, &p.b, &vec![0.0; p.c0.len()]);
    GEMM_FP32_OUT.assert_close(
        "replay after upload",
        &download_f32(d, &p.c_buf, p.c0.len()),
        &want,
    );
    let _ = &p.b_buf;
}

/// A capture abandoned by a panic or an early return (its guard dropped before `end`) is ended:
/// the stream works normally afterwards, and a new capture can begin.
fn check_capture_guard_ends_an_abandoned_capture<D: Device>(d: &D) {
    let mut rng = Rng(13);
    let p = problem(d, &Case::dense(4, 5, 6), &mut rng);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _capture = CaptureGuard::begin(d).expect("begin_capture");
        d.gemm(&p.gemm).expect("captured gemm");
        panic!("a panic between begin and end");
    }));
    assert!(panicked.is_err());
    // Not capturing any more: synchronize, upload and download work, and nothing ran.
    d.synchronize()
        .expect("synchronize after the abandoned capture");
    assert_eq!(
        download_f32(d, &p.c_buf, p.c0.len()),
        p.c0,
        "the abandoned capture ran"
    );
    // An early return (error path) is the same.
    let early = || -> Result<(), llamagen_cuda::CudaError> {
        let _capture = CaptureGuard::begin(d)?;
        d.upload(&p.c_buf, 0, &[0; 4])?; // refused during a capture: returns early
        Ok(())
    };
    assert!(early().is_err(), "an upload during a capture must fail");
    d.synchronize().expect("synchronize after the early return");
    // And a guarded capture that ends normally records and replays.
    let capture = CaptureGuard::begin(d).expect("begin_capture");
    d.gemm(&p.gemm).expect("captured gemm");
    let graph = capture.end().expect("end_capture");
    d.replay(&graph).expect("replay");
    d.synchronize().expect("synchronize");
    let _ = (&p.a_buf, &p.b_buf);
}

/// Events time the stream: the span over a GEMM is finite and non-negative (values unchecked:
/// the emulator's are host clocks), an unrecorded event is an error, and recording is refused
/// during a capture (it would become part of the graph).
fn check_events_time_the_stream<D: Device>(d: &D) {
    let mut rng = Rng(14);
    let p = problem(d, &Case::dense(4, 5, 6), &mut rng);
    let (start, end, never) = (
        d.new_event().unwrap(),
        d.new_event().unwrap(),
        d.new_event().unwrap(),
    );
    d.record(&start).unwrap();
    d.gemm(&p.gemm).unwrap();
    d.record(&end).unwrap();
    let ms = d.elapsed_ms(&start, &end).unwrap();
    assert!(ms.is_finite() && ms >= 0.0, "{ms} ms");
    assert!(d.elapsed_ms(&start, &never).is_err(), "an unrecorded end");
    let capture = CaptureGuard::begin(d).unwrap();
    assert!(d.record(&start).is_err(), "recording during a capture");
    drop(capture);
    let _ = (&p.a_buf, &p.b_buf, &p.c_buf);
}

device_tests!(
    check_gemm,
    check_capture_replay_gemm,
    check_capture_guard_ends_an_abandoned_capture,
    check_events_time_the_stream
);

/// Tests of the emulator alone (its self-test kernels exist only there).
#[cfg(feature = "emu")]
mod emulator {
    use std::time::Instant;

    use half::f16;
    use llamagen_cuda::device::{DType, Device, Gemm, KArg, LaunchConfig};
    use llamagen_cuda::emu::EmuDevice;
    use llamagen_cuda::kernels::SOURCES;

    use llamagen_test_support::Tolerance;

    use crate::cuda_common::{
        download_bytes, download_f32, download_i32, upload_bytes, upload_f32, upload_i32, Rng,
    };

    /// f32 block sums of up to 5000 values in [-1, 1], summed in another order than the f64
    /// reference: <= 5000 roundings of <= 2^-24 x 5000 each, so 2e-3 absolute (observed ~1e-5).
    /// Only the emulator's self-test kernel sums this way, hence a level of this file. Identical
    /// non-finite values pass, as they always did here.
    const BLOCK_SUM: Tolerance =
        Tolerance::abs("f32 block sum of <= 5000 values (2e-3 abs)", 2e-3).nan_equal();

    fn dev() -> EmuDevice {
        EmuDevice::new().expect("emulator")
    }

    fn err_text<T>(r: Result<T, llamagen_cuda::CudaError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn expect_err<T>(r: Result<T, llamagen_cuda::CudaError>, needle: &str) {
        let msg = err_text(r);
        assert!(
            msg.contains(needle),
            "error {msg:?} does not mention {needle:?}"
        );
    }

    #[test]
    fn every_backend_kernel_is_registered() {
        let names = EmuDevice::kernel_names();
        for s in SOURCES {
            for k in s.functions() {
                assert!(names.iter().any(|n| n == k), "{k} of {} missing", s.file);
            }
        }
        // And the reverse: a kernel file in the directory but missing from SOURCES would run
        // here and be absent on a GPU.
        for n in names.iter().filter(|n| !n.starts_with("emu_test_")) {
            assert!(
                SOURCES.iter().any(|s| s.functions().contains(&n.as_str())),
                "{n} is compiled into the emulator but not in kernels::SOURCES"
            );
        }
        assert!(names.iter().any(|n| n == "emu_test_block_sum"));
        assert_eq!(dev().describe(), "CUDA emulator (host)");
    }

    #[test]
    fn block_sum_with_barriers_shared_memory_and_shuffles() {
        let d = dev();
        let mut rng = Rng(1);
        for &threads in &[32u32, 96, 256, 1024] {
            for &per_block in &[1usize, 31, 1000, 5000] {
                let blocks = 3;
                let x = rng.vec_f32(blocks * per_block, -1.0, 1.0);
                let xb = upload_f32(&d, &x);
                let out = d.alloc(4 * blocks).unwrap();
                d.launch(
                    "emu_test_block_sum",
                    &LaunchConfig::new([blocks as u32, 1, 1], [threads, 1, 1]),
                    &[
                        KArg::Ptr(d.addr(&xb)),
                        KArg::Ptr(d.addr(&out)),
                        KArg::I32(per_block as i32),
                    ],
                )
                .unwrap();
                let want: Vec<f32> = x
                    .chunks(per_block)
                    .map(|c| c.iter().map(|&v| v as f64).sum::<f64>() as f32)
                    .collect();
                let got = download_f32(&d, &out, blocks);
                BLOCK_SUM.assert_close(&format!("{threads} threads, {per_block}"), &got, &want);
            }
        }
    }

    #[test]
    fn shuffles_follow_cuda_lane_rules() {
        let d = dev();
        let threads = 64usize;
        for &arg in &[0i32, 1, 3, 5, 16, 31] {
            let out = d.alloc(4 * 6 * threads).unwrap();
            d.launch(
                "emu_test_shuffles",
                &LaunchConfig::new([1, 1, 1], [threads as u32, 1, 1]),
                &[KArg::Ptr(d.addr(&out)), KArg::I32(arg)],
            )
            .unwrap();
            let got = download_i32(&d, &out, 6 * threads);
            let a = arg as usize;
            for t in 0..threads {
                let (warp, lane) = (t / 32 * 32, t % 32);
                let v = |l: usize| (warp + l) as i32 * 10;
                let ballot = (0..32)
                    .filter(|l| (warp + l) % 3 == 0)
                    .fold(0u32, |m, l| m | 1 << l);
                let want = [
                    v(lane ^ a),
                    if lane + a < 32 { v(lane + a) } else { v(lane) },
                    if lane >= a { v(lane - a) } else { v(lane) },
                    v(a % 32),
                    v(lane / 8 * 8 + a % 8),
                    ballot as i32,
                ];
                assert_eq!(&got[6 * t..6 * t + 6], &want, "thread {t}, arg {arg}");
            }
        }
    }

    #[test]
    fn atomics() {
        let d = dev();
        let mut rng = Rng(2);
        let n = 1000;
        let x = rng.vec_i32(n, -5000, 5000);
        let xb = upload_i32(&d, &x);
        let counters = upload_i32(&d, &[0, i32::MIN, i32::MAX, 0, 0, 0]);
        let fsum = d.alloc(4).unwrap();
        d.launch(
            "emu_test_atomics",
            &LaunchConfig::new([4, 1, 1], [256, 1, 1]),
            &[
                KArg::Ptr(d.addr(&xb)),
                KArg::I32(n as i32),
                KArg::Ptr(d.addr(&counters)),
                KArg::Ptr(d.addr(&fsum)),
            ],
        )
        .unwrap();
        let c = download_i32(&d, &counters, 6);
        let sum: i32 = x.iter().sum();
        let want = [
            sum,
            *x.iter().max().unwrap(),
            *x.iter().min().unwrap(),
            n as i32,
            n as i32,
            7,
        ];
        assert_eq!(c, want);
        // Integers below 2^24 add exactly in f32 in any order.
        assert_eq!(download_f32(&d, &fsum, 1)[0], sum as f32);
    }

    #[test]
    fn dynamic_shared_memory() {
        let d = dev();
        let mut rng = Rng(3);
        let (blocks, threads) = (3usize, 128usize);
        let x = rng.vec_f32(blocks * threads, -1.0, 1.0);
        let xb = upload_f32(&d, &x);
        let y = d.alloc(4 * x.len()).unwrap();
        let args = [KArg::Ptr(d.addr(&xb)), KArg::Ptr(d.addr(&y))];
        d.launch(
            "emu_test_reverse_dyn",
            &LaunchConfig::new([3, 1, 1], [128, 1, 1]).with_shared(4 * 128),
            &args,
        )
        .unwrap();
        let want: Vec<f32> = x
            .chunks(threads)
            .flat_map(|c| c.iter().rev().copied())
            .collect();
        assert_eq!(download_f32(&d, &y, x.len()), want);
        expect_err(
            d.launch(
                "emu_test_reverse_dyn",
                &LaunchConfig::new([1, 1, 1], [32, 1, 1]).with_shared(64 * 1024),
                &args,
            ),
            "dynamic shared memory",
        );
    }

    #[test]
    fn a_missing_syncthreads_gives_a_wrong_result() {
        let d = dev();
        let mut rng = Rng(4);
        let (blocks, threads) = (2usize, 256usize);
        let x = rng.vec_f32(blocks * threads, 1.0, 2.0);
        let xb = upload_f32(&d, &x);
        let y = d.alloc(4 * x.len()).unwrap();
        let want: Vec<f32> = x
            .chunks(threads)
            .flat_map(|c| (0..threads).map(move |t| c[(t + 1) % threads]))
            .collect();
        for sync in [1, 0] {
            let args = [
                KArg::Ptr(d.addr(&xb)),
                KArg::Ptr(d.addr(&y)),
                KArg::I32(sync),
            ];
            d.launch(
                "emu_test_rotate_shared",
                &LaunchConfig::new([2, 1, 1], [256, 1, 1]),
                &args,
            )
            .unwrap();
            let got = download_f32(&d, &y, x.len());
            if sync == 1 {
                assert_eq!(got, want);
            } else {
                assert_ne!(got, want, "the race went unnoticed");
            }
        }
    }

    #[test]
    fn uninitialised_shared_memory_reads_as_nan_on_every_launch() {
        let d = dev();
        let out = d.alloc(4 * 2 * 64).unwrap();
        for _ in 0..2 {
            d.launch(
                "emu_test_uninit_shared",
                &LaunchConfig::new([2, 1, 1], [64, 1, 1]).with_shared(4 * 64),
                &[KArg::Ptr(d.addr(&out))],
            )
            .unwrap();
            let got = download_f32(&d, &out, 2 * 64);
            assert!(got.iter().all(|v| v.is_nan()), "{got:?}");
        }
    }

    #[test]
    fn f16_conversions_match_half() {
        let d = dev();
        // Every f16 bit pattern to f32.
        let out = d.alloc(4 * 65536).unwrap();
        d.launch(
            "emu_test_f16_all",
            &LaunchConfig::new([64, 1, 1], [1024, 1, 1]),
            &[KArg::Ptr(d.addr(&out))],
        )
        .unwrap();
        for (i, got) in download_f32(&d, &out, 65536).into_iter().enumerate() {
            let want = f16::from_bits(i as u16).to_f32();
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "f16 {i:#06x}: {got} vs {want}"
            );
        }
        // f32 to f16: random bit patterns, specials, and every rounding boundary region.
        let mut rng = Rng(5);
        let mut x: Vec<f32> = (0..400_000)
            .map(|_| f32::from_bits(rng.next_u64() as u32))
            .collect();
        x.extend([
            0.0,
            -0.0,
            65504.0,
            65519.99,
            65520.0,
            -65520.0,
            f32::INFINITY,
            f32::NAN,
        ]);
        x.extend([
            5.96e-8,
            2.98e-8,
            2.9802322e-8,
            2.9802326e-8,
            8.940697e-8,
            6.1e-5,
            6.103e-5,
        ]);
        for h in (0..0x7c00u16).step_by(7) {
            // The midpoint to the next f16 and its neighbours (ties go to even).
            let lo = f16::from_bits(h).to_f32() as f64;
            let hi = f16::from_bits(h + 1).to_f32() as f64;
            let mid = ((lo + hi) / 2.0) as f32;
            x.extend([
                mid,
                f32::from_bits(mid.to_bits() - 1),
                f32::from_bits(mid.to_bits() + 1),
            ]);
            x.push(-mid);
        }
        let n = x.len();
        let xb = upload_f32(&d, &x);
        let h = d.alloc(2 * n).unwrap();
        let back = d.alloc(4 * n).unwrap();
        d.launch(
            "emu_test_f16_roundtrip",
            &LaunchConfig::new([n.div_ceil(256) as u32, 1, 1], [256, 1, 1]),
            &[
                KArg::Ptr(d.addr(&xb)),
                KArg::Ptr(d.addr(&h)),
                KArg::Ptr(d.addr(&back)),
                KArg::I32(n as i32),
            ],
        )
        .unwrap();
        let hb = download_bytes(&d, &h, 2 * n);
        let bb = download_f32(&d, &back, n);
        for i in 0..n {
            let got = f16::from_le_bytes([hb[2 * i], hb[2 * i + 1]]);
            let want = f16::from_f32(x[i]);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "f32 {:e} ({:#010x}): f16 {:#06x} vs half {:#06x}",
                x[i],
                x[i].to_bits(),
                got.to_bits(),
                want.to_bits()
            );
            assert!(bb[i].to_bits() == want.to_f32().to_bits() || bb[i].is_nan());
        }
    }

    #[test]
    fn divergent_barriers_are_errors() {
        let d = dev();
        let x = d.alloc(4 * 128).unwrap();
        let p = KArg::Ptr(d.addr(&x));
        let msg = err_text(d.launch(
            "emu_test_divergent_barrier",
            &LaunchConfig::new([1, 1, 1], [128, 1, 1]),
            &[p, KArg::I32(40), KArg::I32(0)],
        ));
        assert!(msg.contains("divergent __syncthreads"), "{msg}");
        assert!(
            msg.contains("emu_selftest.cu:"),
            "names the source line: {msg}"
        );
        expect_err(
            d.launch(
                "emu_test_divergent_barrier",
                &LaunchConfig::new([1, 1, 1], [128, 1, 1]),
                &[p, KArg::I32(64), KArg::I32(1)],
            ),
            "exited without reaching it",
        );
        // Every thread on one side: no divergence, no error.
        d.launch(
            "emu_test_divergent_barrier",
            &LaunchConfig::new([1, 1, 1], [128, 1, 1]),
            &[p, KArg::I32(128), KArg::I32(1)],
        )
        .unwrap();
        expect_err(
            d.launch(
                "emu_test_divergent_shuffle",
                &LaunchConfig::new([1, 1, 1], [64, 1, 1]),
                &[p],
            ),
            "every lane of the warp must take part",
        );
        expect_err(
            d.launch(
                "emu_test_partial_mask",
                &LaunchConfig::new([1, 1, 1], [32, 1, 1]),
                &[p],
            ),
            "need mask 0xffffffff",
        );
        // The emulator is usable after a failed launch.
        d.launch(
            "emu_test_divergent_barrier",
            &LaunchConfig::new([1, 1, 1], [128, 1, 1]),
            &[p, KArg::I32(0), KArg::I32(0)],
        )
        .unwrap();
        assert_eq!(download_f32(&d, &x, 128), vec![2.0; 128]);
    }

    #[test]
    fn bad_pointers_and_arguments_are_errors() {
        let d = dev();
        let x = d.alloc(4 * 64).unwrap();
        let f = upload_f32(&d, &[2.0]);
        let (px, pf) = (d.addr(&x), d.addr(&f));
        let scale = |p: u64, args: &[KArg]| {
            let mut a = vec![KArg::Ptr(p), KArg::Ptr(pf)];
            a.extend_from_slice(args);
            d.launch(
                "emu_test_scale",
                &LaunchConfig::new([1, 1, 1], [64, 1, 1]),
                &a,
            )
        };
        scale(px, &[KArg::I32(64)]).unwrap();
        scale(px + 4 * 64, &[KArg::I32(0)]).unwrap(); // one past the end, nothing touched
        expect_err(
            scale(px + 4 * 64 + 4, &[KArg::I32(0)]),
            "not inside a live allocation",
        );
        expect_err(
            scale(12345, &[KArg::I32(0)]),
            "not inside a live allocation",
        );
        expect_err(scale(px, &[KArg::U32(64)]), "the kernel takes i32, got u32");
        expect_err(
            scale(px, &[KArg::F32(64.0)]),
            "the kernel takes i32, got f32",
        );
        expect_err(scale(px, &[]), "takes 3 arguments, got 2");
        expect_err(
            d.launch(
                "emu_test_scale",
                &LaunchConfig::new([1, 1, 1], [64, 1, 1]),
                &[KArg::I32(1); 3],
            ),
            "argument 0 of kernel `emu_test_scale`",
        );
        expect_err(
            d.launch(
                "no_such_kernel",
                &LaunchConfig::new([1, 1, 1], [32, 1, 1]),
                &[],
            ),
            "unknown kernel `no_such_kernel`",
        );
        for block in [[33, 1, 1], [2048, 1, 1], [0, 1, 1], [32, 0, 1]] {
            expect_err(
                d.launch(
                    "emu_test_scale",
                    &LaunchConfig::new([1, 1, 1], block),
                    &[KArg::Ptr(px), KArg::Ptr(pf), KArg::I32(0)],
                ),
                "threads",
            );
        }
        let freed = d.addr(&d.alloc(64).unwrap());
        let _keep = d.alloc(1).unwrap();
        if freed != d.addr(&_keep) {
            expect_err(
                scale(freed, &[KArg::I32(0)]),
                "not inside a live allocation",
            );
        }
        // Writing just past the end is caught by the guard zone, and the guard is repaired.
        expect_err(
            d.launch(
                "emu_test_write_at",
                &LaunchConfig::new([1, 1, 1], [32, 1, 1]),
                &[KArg::Ptr(px), KArg::I32(64), KArg::F32(1.0)],
            ),
            "wrote past the end of the 256-byte allocation",
        );
        d.launch(
            "emu_test_write_at",
            &LaunchConfig::new([1, 1, 1], [32, 1, 1]),
            &[KArg::Ptr(px), KArg::I32(63), KArg::F32(1.0)],
        )
        .unwrap();
        // Host copies are bounds-checked.
        expect_err(d.upload(&x, 250, &[0u8; 8]), "overrun the 256-byte buffer");
        expect_err(d.download(&x, usize::MAX, &mut [0u8; 2]), "overrun");
        // GEMM operands are bounds-checked.
        let a = d.alloc(2 * 16).unwrap();
        let c = d.alloc(4 * 16).unwrap();
        let g = Gemm::dense(4, 4, 4, d.addr(&a), d.addr(&a), d.addr(&c), DType::F32);
        d.gemm(&g).unwrap();
        expect_err(d.gemm(&Gemm { k: 5, lda: 5, ..g }), "GEMM, A");
        expect_err(
            d.gemm(&Gemm {
                b_trans: true,
                n: 5,
                ldb: 4,
                ldc: 5,
                ..g
            }),
            "GEMM, B",
        );
        expect_err(
            d.gemm(&Gemm {
                c_type: DType::F32,
                ldc: 5,
                ..g
            }),
            "GEMM, C",
        );
        expect_err(d.gemm(&Gemm { lda: 3, ..g }), "leading dimension");
        expect_err(
            d.gemm(&Gemm {
                batch: 2,
                stride_a: 16,
                ..g
            }),
            "GEMM, A",
        );
        expect_err(
            d.gemm(&Gemm {
                a: d.addr(&a) + 1,
                ..g
            }),
            "aligned",
        );
    }

    #[test]
    fn indices_in_3d_grids_and_blocks() {
        let d = dev();
        let (grid, block) = ([2u32, 3, 2], [8u32, 4, 2]);
        let n = (grid.iter().product::<u32>() * block.iter().product::<u32>()) as usize;
        let out = d.alloc(4 * n).unwrap();
        d.launch(
            "emu_test_indices",
            &LaunchConfig::new(grid, block),
            &[KArg::Ptr(d.addr(&out))],
        )
        .unwrap();
        let got = download_i32(&d, &out, n);
        let mut want = Vec::new();
        for bz in 0..grid[2] {
            for by in 0..grid[1] {
                for bx in 0..grid[0] {
                    for tz in 0..block[2] {
                        for ty in 0..block[1] {
                            for tx in 0..block[0] {
                                let code = tx | ty << 5 | tz << 10 | bx << 15 | by << 20 | bz << 25;
                                want.push(code as i32);
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(got, want);
    }

    #[test]
    fn math_intrinsics() {
        let d = dev();
        let mut rng = Rng(6);
        let x = rng.vec_f32(256, -10.0, 10.0);
        let xb = upload_f32(&d, &x);
        let out = d.alloc(4 * 16 * x.len()).unwrap();
        d.launch(
            "emu_test_math",
            &LaunchConfig::new([1, 1, 1], [256, 1, 1]),
            &[
                KArg::Ptr(d.addr(&xb)),
                KArg::Ptr(d.addr(&out)),
                KArg::I32(256),
            ],
        )
        .unwrap();
        let got = download_f32(&d, &out, 16 * x.len());
        for (i, &v) in x.iter().enumerate() {
            let umulhi = ((v.to_bits() as u64 * 0x9e37_79b9u64) >> 32) as u32;
            let want = [
                v.exp(),
                (v.abs() + 1.0).ln(),
                v.abs().sqrt(),
                1.0 / (v.abs() + 1.0).sqrt(),
                v.tanh(),
                v.max(0.5),
                v.min(0.5),
                v.floor(),
                v.ceil(),
                v.mul_add(3.0, 1.0),
                (v + 1.0) / (v * 2.0),
                -v,
                v,
                umulhi as f32,
                (i.min(3) as f32) + (i.max(3) as f32) * 100.0,
                f32::INFINITY,
            ];
            assert_eq!(&got[16 * i..16 * i + 16], &want, "x = {v}");
        }
    }

    #[test]
    fn vector_types() {
        let d = dev();
        let mut rng = Rng(7);
        let n4 = 96;
        let x = rng.vec_f32(4 * n4, -1.0, 1.0);
        let pairs = rng.vec_i32(2 * n4, 0, i32::MAX);
        let (xb, ab) = (upload_f32(&d, &x), upload_i32(&d, &pairs));
        let (y, b) = (d.alloc(16 * n4).unwrap(), d.alloc(8 * n4).unwrap());
        d.launch(
            "emu_test_vectors",
            &LaunchConfig::new([1, 1, 1], [128, 1, 1]),
            &[
                KArg::Ptr(d.addr(&xb)),
                KArg::Ptr(d.addr(&y)),
                KArg::Ptr(d.addr(&ab)),
                KArg::Ptr(d.addr(&b)),
                KArg::I32(n4 as i32),
            ],
        )
        .unwrap();
        let want: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
        assert_eq!(download_f32(&d, &y, 4 * n4), want);
        let swapped: Vec<i32> = pairs.chunks(2).flat_map(|p| [p[1], p[0]]).collect();
        assert_eq!(download_i32(&d, &b, 2 * n4), swapped);
    }

    #[test]
    fn capture_records_launches_and_replay_reads_new_uploads() {
        let d = dev();
        let x0 = [1.0f32, 2.0, 3.0, 4.0];
        let x = upload_f32(&d, &x0);
        let factor = upload_f32(&d, &[2.0]);
        let args = [
            KArg::Ptr(d.addr(&x)),
            KArg::Ptr(d.addr(&factor)),
            KArg::I32(4),
        ];
        expect_err(d.end_capture(), "not capturing");
        d.begin_capture().unwrap();
        expect_err(d.begin_capture(), "already capturing");
        d.launch(
            "emu_test_scale",
            &LaunchConfig::new([1, 1, 1], [32, 1, 1]),
            &args,
        )
        .unwrap();
        expect_err(d.alloc(16), "during graph capture");
        expect_err(d.upload(&factor, 0, &[0; 4]), "during graph capture");
        expect_err(d.download(&factor, 0, &mut [0; 4]), "during graph capture");
        let graph = d.end_capture().unwrap();
        assert_eq!(
            download_f32(&d, &x, 4),
            x0,
            "capture must not run the launch"
        );
        d.replay(&graph).unwrap();
        d.replay(&graph).unwrap();
        assert_eq!(download_f32(&d, &x, 4), vec![4.0, 8.0, 12.0, 16.0]);
        d.upload(&factor, 0, &0.5f32.to_le_bytes()).unwrap();
        d.replay(&graph).unwrap();
        assert_eq!(download_f32(&d, &x, 4), vec![2.0, 4.0, 6.0, 8.0]);
        d.synchronize().unwrap();
        // A graph whose buffers were freed fails cleanly.
        drop(factor);
        expect_err(d.replay(&graph), "not inside a live allocation");
    }

    #[test]
    fn bytes_round_trip_and_allocations_are_zeroed_and_aligned() {
        let d = dev();
        let data: Vec<u8> = (0..=255).collect();
        let b = upload_bytes(&d, &data);
        assert_eq!(download_bytes(&d, &b, 256), data);
        let z = d.alloc(1000).unwrap();
        assert_eq!(d.addr(&z) % 256, 0);
        assert!(download_bytes(&d, &z, 1000).iter().all(|&v| v == 0));
        let mut part = [0u8; 3];
        d.download(&b, 10, &mut part).unwrap();
        assert_eq!(part, [10, 11, 12]);
    }

    #[test]
    fn launches_from_many_threads() {
        let d = std::sync::Arc::new(dev());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let d = d.clone();
                std::thread::spawn(move || {
                    let x = upload_f32(&*d, &vec![t as f32; 512]);
                    let out = d.alloc(4).unwrap();
                    for _ in 0..20 {
                        d.launch(
                            "emu_test_block_sum",
                            &LaunchConfig::new([1, 1, 1], [128, 1, 1]),
                            &[
                                KArg::Ptr(d.addr(&x)),
                                KArg::Ptr(d.addr(&out)),
                                KArg::I32(512),
                            ],
                        )
                        .unwrap();
                        assert_eq!(download_f32(&*d, &out, 1)[0], 512.0 * t as f32);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    /// Prints the cost of 1024-thread blocks (for sizing tests of other kernels); asserts only
    /// a generous bound.
    #[test]
    fn timing_of_1024_thread_blocks() {
        let d = dev();
        let x = upload_f32(&d, &vec![1.0; 1024 * 64]);
        let y = d.alloc(4 * 1024 * 64).unwrap();
        let time = |name: &str, grid: u32, args: &[KArg]| {
            d.launch(name, &LaunchConfig::new([grid, 1, 1], [1024, 1, 1]), args)
                .unwrap();
            let reps = 20;
            let t = Instant::now();
            for _ in 0..reps {
                d.launch(name, &LaunchConfig::new([grid, 1, 1], [1024, 1, 1]), args)
                    .unwrap();
            }
            t.elapsed().as_secs_f64() / reps as f64
        };
        let sum = time(
            "emu_test_block_sum",
            1,
            &[
                KArg::Ptr(d.addr(&x)),
                KArg::Ptr(d.addr(&y)),
                KArg::I32(1024),
            ],
        );
        let sum64 = time(
            "emu_test_block_sum",
            64,
            &[
                KArg::Ptr(d.addr(&x)),
                KArg::Ptr(d.addr(&y)),
                KArg::I32(1024),
            ],
        );
        let rounds = time(
            "emu_test_barrier_rounds",
            1,
            &[KArg::Ptr(d.addr(&y)), KArg::I32(10)],
        );
        eprintln!(
            "emulator: 1024-thread block_sum launch {:.1} us (1 block), {:.1} us per block (64 \
             blocks); 21 barriers x 1024 threads {:.1} us",
            sum * 1e6,
            sum64 * 1e6 / 64.0,
            rounds * 1e6
        );
        assert!(sum < 0.1, "one 1024-thread block took {sum} s");
    }
}
