//! The public MLX API: the fast parallel path equals the scalar reference
//! on random and adversarial matrices, for every setting and thread
//! count; bad input is refused with errors that say what is wrong.

use half::{bf16, f16};
use quant_kernels::mlx::{
    self, DequantPrecision, MlxDtype, MlxInput, MlxParams, MlxVariant, ScaleBuf, Scales,
};
use quant_kernels::KernelError;

/// xorshift64*: deterministic test data without dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Values of varied magnitude, sign and structure, row by row.
    fn matrix(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            // Magnitudes 1e-8 .. 1e2, outliers below f16's 65504.
            let scale = 10f32.powi((self.next() % 11) as i32 - 8);
            for c in 0..cols {
                let v = match r % 8 {
                    0 => 0.0,
                    1 => -scale,
                    2 => -(self.uniform() + 0.1) * scale,
                    3 => self.uniform() * scale,
                    4 if c % 37 == 0 => 500.0 * scale,
                    5 => ((self.next() % 33) as f32 - 16.0) / 2.0,
                    6 => (self.uniform() - 0.5) * 1e-38,
                    _ => (self.uniform() - 0.5) * scale,
                };
                out.push(v);
            }
        }
        out
    }
}

struct Typed {
    f32: Vec<f32>,
    f16: Vec<f16>,
    bf16: Vec<bf16>,
}

impl Typed {
    fn new(v: Vec<f32>) -> Typed {
        Typed {
            f16: v.iter().map(|&x| f16::from_f32(x)).collect(),
            bf16: v.iter().map(|&x| bf16::from_f32(x)).collect(),
            f32: v,
        }
    }

    fn inputs(&self) -> [MlxInput<'_>; 3] {
        [
            MlxInput::F32(&self.f32),
            MlxInput::F16(&self.f16),
            MlxInput::BF16(&self.bf16),
        ]
    }
}

fn all_params() -> Vec<MlxParams> {
    let mut out = Vec::new();
    for bits in [1, 2, 3, 4, 5, 6, 8] {
        for group in [32, 64, 128] {
            out.push(MlxParams::affine(bits, group));
            if bits > 1 {
                out.push(MlxParams::affine(bits, group).with_variant(MlxVariant::Gpu));
            }
        }
    }
    out.extend([
        MlxParams::mxfp4(),
        MlxParams::mxfp8(),
        MlxParams::nvfp4(None),
        MlxParams::nvfp4(Some(0.02)),
    ]);
    out
}

fn dequant_all(q: &mlx::MlxQuantized, cols: usize, p: &MlxParams, fast: bool) -> Vec<Vec<u32>> {
    let f = if fast {
        mlx::dequantize
    } else {
        mlx::dequantize_ref
    };
    [
        DequantPrecision::F32,
        DequantPrecision::Mlx(MlxDtype::F32),
        DequantPrecision::Mlx(MlxDtype::F16),
        DequantPrecision::Mlx(MlxDtype::BF16),
    ]
    .into_iter()
    .map(|prec| {
        f(
            &q.weight,
            q.scales.as_scales(),
            q.biases.as_ref().map(ScaleBuf::as_scales),
            cols,
            p,
            prec,
        )
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
    })
    .collect()
}

#[test]
fn fast_path_equals_reference_on_every_setting() {
    let (rows, cols) = (24, 256);
    let data = Typed::new(Rng(7).matrix(rows, cols));
    for p in all_params() {
        for input in data.inputs() {
            let r = mlx::quantize_ref(input, cols, &p).unwrap();
            let f = mlx::quantize(input, cols, &p).unwrap();
            assert_eq!(r, f, "{p:?} {:?}", input.dtype());
            assert_eq!(r.weight.len(), rows * cols * p.bits as usize / 32);
            assert_eq!(r.scales.len(), rows * cols / p.group_size);
            assert_eq!(
                dequant_all(&r, cols, &p, false),
                dequant_all(&r, cols, &p, true),
                "{p:?} {:?}",
                input.dtype()
            );
        }
    }
}

#[test]
fn output_does_not_depend_on_thread_count() {
    let (rows, cols) = (300, 384);
    let data = Typed::new(Rng(11).matrix(rows, cols));
    let p = MlxParams::affine(5, 64);
    let results: Vec<_> = [1, 2, 3, 8]
        .into_iter()
        .map(|threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let q = mlx::quantize(MlxInput::BF16(&data.bf16), cols, &p).unwrap();
                let d = dequant_all(&q, cols, &p, true);
                (q, d)
            })
        })
        .collect();
    for r in &results[1..] {
        assert_eq!(r, &results[0]);
    }
}

#[test]
fn first_non_finite_value_is_reported_whatever_the_threads() {
    let (rows, cols) = (2000, 64);
    let mut v = Rng(3).matrix(rows, cols);
    v[1500 * cols + 7] = f32::NAN;
    v[900 * cols + 63] = f32::INFINITY;
    v[1999 * cols] = f32::NEG_INFINITY;
    for p in [MlxParams::affine(4, 32), MlxParams::mxfp4()] {
        for f in [mlx::quantize, mlx::quantize_ref] {
            match f(MlxInput::F32(&v), cols, &p) {
                Err(KernelError::NonFinite { index, value }) => {
                    assert_eq!(index, 900 * cols + 63);
                    assert_eq!(value, f32::INFINITY);
                }
                other => panic!("expected NonFinite, got {other:?}"),
            }
        }
    }
    let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
    let err = mlx::quantize(MlxInput::F16(&h), cols, &MlxParams::affine(3, 64)).unwrap_err();
    assert!(matches!(err, KernelError::NonFinite { index, .. } if index == 900 * cols + 63));
}

#[test]
fn bad_shapes_and_settings_are_refused_clearly() {
    let v = vec![0.5f32; 4 * 96];
    let q = |cols, p: MlxParams| {
        mlx::quantize(MlxInput::F32(&v), cols, &p)
            .unwrap_err()
            .to_string()
    };
    assert!(q(96, MlxParams::affine(4, 64)).contains("multiple of the group size 64"));
    assert!(q(0, MlxParams::affine(4, 32)).contains("positive multiple"));
    assert!(q(160, MlxParams::affine(4, 32)).contains("not form rows of 160"));
    assert!(q(96, MlxParams::affine(7, 32)).contains("7 bits"));
    assert!(q(96, MlxParams::affine(4, 16)).contains("group size 16"));
    let mut p = MlxParams::mxfp4();
    p.group_size = 64;
    assert!(q(128, p).contains("requires 4 bits and group size 32"));
    assert!(q(96, MlxParams::mxfp8().with_variant(MlxVariant::Gpu)).contains("Metal/CUDA"));
    assert!(q(96, MlxParams::affine(1, 32).with_variant(MlxVariant::Gpu)).contains("1-bit"));
    let mut p = MlxParams::affine(4, 32);
    p.global_scale = Some(1.0);
    assert!(q(96, p).contains("only for nvfp4"));
    assert!(q(96, MlxParams::nvfp4(Some(f32::NAN))).contains("finite non-zero"));

    let good = mlx::quantize(MlxInput::F32(&v), 96, &MlxParams::affine(4, 32)).unwrap();
    let (s, b) = (
        good.scales.as_scales(),
        good.biases.as_ref().unwrap().as_scales(),
    );
    let p = MlxParams::affine(4, 32);
    let d = |w: &[u32], s, b, prec| {
        mlx::dequantize(w, s, b, 96, &p, prec)
            .unwrap_err()
            .to_string()
    };
    assert!(d(&good.weight[1..], s, Some(b), DequantPrecision::F32)
        .contains("needs 48 u32 words, got 47"));
    assert!(d(&good.weight, s, None, DequantPrecision::F32).contains("needs biases"));
    let half_biases = [f16::ZERO; 12];
    assert!(d(
        &good.weight,
        s,
        Some(Scales::F16(&half_biases)),
        DequantPrecision::F32
    )
    .contains("same float dtype"));
    let codes = [0u8; 12];
    assert!(d(
        &good.weight,
        Scales::U8(&codes),
        Some(b),
        DequantPrecision::F32
    )
    .contains("same float dtype"));
    let mut short = vec![0f32; 4 * 96 - 1];
    let e = mlx::dequantize_into(
        &good.weight,
        s,
        Some(b),
        96,
        &p,
        DequantPrecision::F32,
        &mut short,
    )
    .unwrap_err();
    assert!(e.to_string().contains("output holds 383 values"), "{e}");
    let mut out = vec![0f32; 4 * 96];
    mlx::dequantize_into(
        &good.weight,
        s,
        Some(b),
        96,
        &p,
        DequantPrecision::F32,
        &mut out,
    )
    .unwrap();
    assert_eq!(
        out,
        mlx::dequantize(&good.weight, s, Some(b), 96, &p, DequantPrecision::F32).unwrap()
    );
    let e = mlx::dequantize(
        &good.weight,
        s,
        Some(b),
        96,
        &MlxParams::mxfp4(),
        DequantPrecision::F32,
    )
    .unwrap_err();
    assert!(e.to_string().contains("biases with MLX mxfp4"), "{e}");
}

#[test]
fn empty_matrices_are_fine() {
    let q = mlx::quantize(MlxInput::F32(&[]), 64, &MlxParams::affine(3, 32)).unwrap();
    assert!(q.weight.is_empty() && q.scales.is_empty());
    let d = mlx::dequantize(
        &[],
        Scales::F32(&[]),
        Some(Scales::F32(&[])),
        64,
        &MlxParams::affine(3, 32),
        DequantPrecision::F32,
    )
    .unwrap();
    assert!(d.is_empty());
}

#[test]
fn gpu_variant_follows_the_metal_kernel() {
    // All-negative group: the Metal/CUDA running max starts at 0, so the
    // range is [min, 0] and min is the 15th step; on CPU it is [min, max]
    // and min lands on step -30 (rint(min / (range/15))).
    let w: Vec<f32> = (0..32).map(|i| -1.0 - i as f32 / 32.0).collect();
    let gpu = mlx::quantize(
        MlxInput::F32(&w),
        32,
        &MlxParams::affine(4, 32).with_variant(MlxVariant::Gpu),
    )
    .unwrap();
    let cpu = mlx::quantize(MlxInput::F32(&w), 32, &MlxParams::affine(4, 32)).unwrap();
    assert_eq!(gpu.biases, Some(ScaleBuf::F32(vec![w[31]])));
    assert_eq!(cpu.biases, Some(ScaleBuf::F32(vec![w[31]])));
    assert_eq!(gpu.scales, ScaleBuf::F32(vec![w[31] / -15.0]));
    assert_eq!(cpu.scales, ScaleBuf::F32(vec![w[31] / -30.0]));
    // q0 = edge/scale = -8.5: CPU rounds to even (-8), the GPU away (-9).
    let mut w = vec![0.0f32; 32];
    w[0] = -8.5;
    w[1] = 6.5;
    let gpu = mlx::quantize(
        MlxInput::F32(&w),
        32,
        &MlxParams::affine(4, 32).with_variant(MlxVariant::Gpu),
    )
    .unwrap();
    let cpu = mlx::quantize(MlxInput::F32(&w), 32, &MlxParams::affine(4, 32)).unwrap();
    assert_eq!(cpu.scales, ScaleBuf::F32(vec![-8.5 / -8.0]));
    assert_eq!(gpu.scales, ScaleBuf::F32(vec![-8.5 / -9.0]));
}

#[test]
fn dequantize_f32_is_scale_times_q_plus_bias() {
    let w = Rng(5).matrix(8, 128);
    for bits in [2, 3, 4, 5, 6, 8] {
        let p = MlxParams::affine(bits, 64);
        let q = mlx::quantize(MlxInput::F32(&w), 128, &p).unwrap();
        let d = mlx::dequantize(
            &q.weight,
            q.scales.as_scales(),
            q.biases.as_ref().map(ScaleBuf::as_scales),
            128,
            &p,
            DequantPrecision::F32,
        )
        .unwrap();
        let (ScaleBuf::F32(s), Some(ScaleBuf::F32(b))) = (&q.scales, &q.biases) else {
            panic!()
        };
        for (i, &x) in d.iter().enumerate() {
            let g = i / 64;
            // Recover q from the stream and check the formula.
            let pos = i * bits as usize;
            let wide = u64::from(q.weight[pos / 32])
                | u64::from(*q.weight.get(pos / 32 + 1).unwrap_or(&0)) << 32;
            let qi = ((wide >> (pos % 32)) & ((1 << bits) - 1)) as f32;
            assert_eq!(x.to_bits(), (qi * s[g] + b[g]).to_bits());
        }
    }
}
