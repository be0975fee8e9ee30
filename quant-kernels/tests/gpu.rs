//! GPU kernels against the CPU references, on whatever adapter the machine
//! has (in CI: Mesa's software Vulkan driver, llvmpipe). These tests never
//! skip: without an adapter they fail, naming the package to install.
//!
//! Sizes are kept to a few MB per kernel: llvmpipe runs the integer-exact
//! quantizers one to two orders of magnitude slower than the CPU path, and
//! compiling each quantizer takes it seconds, so every kernel is compiled
//! once for all tests (one device; the chunked handle shares it). On the
//! 2-core development VM under load the file runs in about 50 s.

#![cfg(feature = "gpu")]

use std::sync::OnceLock;

use half::{bf16, f16};
use quant_kernels::gpu::testing::{softfloat, SoftOp};
use quant_kernels::gpu::{Activations, Gpu, GpuError, GpuOptions};
use quant_kernels::mlx::{self, DequantPrecision, MlxInput, MlxParams, ScaleBuf};
use quant_kernels::{ggml, GgmlType, KernelError};

fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        match Gpu::new(&GpuOptions {
            allow_software: true,
            ..GpuOptions::default()
        }) {
            Ok(g) => {
                eprintln!("GPU tests on {}", g.adapter());
                g
            }
            Err(e) => panic!(
                "the GPU tests need a Vulkan (Linux), Metal (macOS) or DX12 (Windows) adapter; \
                 on Debian/Ubuntu CI install `mesa-vulkan-drivers` and `libvulkan1` \
                 (.ci/run does): {e}"
            ),
        }
    })
}

/// The same device with storage bindings capped small, so that every
/// kernel runs over several chunks (its kernels are compiled once, for
/// both handles).
fn chunked_gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| gpu().with_max_chunk_bytes(64 << 10))
}

/// xorshift64*: reproducible inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of uniforms).
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.unit()).sum::<f32>() - 2.0
    }
}

/// Test values block by block: ordinary weights at many magnitudes
/// (subnormal to 1e30), constant and all-zero blocks, blocks with exact
/// ties on the rounding grid, sparse blocks, sign-flipped outliers,
/// subnormals mixed into ordinary blocks.
fn weights(n: usize, block: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    let mut v = Vec::with_capacity(n);
    for b in 0..n.div_ceil(block) {
        let kind = r.u32() % 10;
        let scale = match r.u32() % 8 {
            0 => 1e-38,
            1 => 1e-30,
            2 => 1e-4,
            3 => 1e30,
            _ => 0.05,
        };
        for i in 0..block {
            let x = match kind {
                0 => 0.0,
                1 => 0.75 * scale,
                2 => ((r.u32() % 33) as f32 - 16.0) * 0.125,
                3 => {
                    if r.u32().is_multiple_of(8) {
                        r.normal() * scale
                    } else {
                        0.0
                    }
                }
                4 => {
                    if i == (b * 7) % block {
                        -40.0 * scale
                    } else {
                        r.normal() * scale
                    }
                }
                5 => f32::from_bits(r.u32() & 0x807f_ffff),
                // Subnormals among ordinary values (a GPU may flush them).
                6 if i % 3 == 0 => f32::from_bits(r.u32() & 0x807f_ffff),
                _ => r.normal() * scale,
            };
            v.push(x);
        }
    }
    v.truncate(n);
    v
}

fn same_bits(a: &[f32], b: &[f32]) -> Result<(), String> {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()) {
            return Err(format!(
                "index {i}: {x:e} ({:#x}) vs {y:e} ({:#x})",
                x.to_bits(),
                y.to_bits()
            ));
        }
    }
    Ok(())
}

// ------------------------------------------------------------ soft float

fn special_values() -> Vec<u32> {
    let mut v = vec![
        0,
        0x8000_0000,
        1,
        0x8000_0001,
        0x007f_ffff,
        0x0080_0000,
        0x0080_0001,
        0x3f80_0000,
        0xbf80_0000,
        0x3f7f_ffff,
        0x3f80_0001,
        0x4000_0000,
        0x7f7f_ffff,
        0xff7f_ffff,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0x3f00_0000,
        0x3fc0_0000,
        0x4b40_0000,
        0x4b00_0000,
        0x4f00_0000,
        0xcf00_0000,
        0x477f_f000,
        0x477f_efff,
        0x3380_0000,
        0x3300_0000,
        0x3300_0001,
        0x387f_c000,
        0x3880_0000,
    ];
    for e in [
        1u32, 20, 100, 103, 112, 113, 126, 127, 128, 142, 143, 150, 157, 158, 200, 254,
    ] {
        for m in [0u32, 1, 0x40_0000, 0x7f_ffff, 0x1000, 0x0fff] {
            v.push((e << 23) | m);
            v.push(0x8000_0000 | (e << 23) | m);
        }
    }
    v
}

fn pairs(n: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut r = Rng(seed);
    let sp = special_values();
    let mut a = Vec::with_capacity(n);
    let mut b = Vec::with_capacity(n);
    for &x in &sp {
        for &y in &sp {
            a.push(x);
            b.push(y);
        }
    }
    while a.len() < n {
        // Random patterns, and nearby exponents so that additions cancel.
        let x = r.u32();
        let y = match r.u32() % 3 {
            0 => r.u32(),
            1 => (x & 0xff80_0000) | (r.u32() & 0x007f_ffff),
            _ => x ^ 0x8000_0000 ^ (r.u32() & 0xff),
        };
        a.push(x);
        b.push(y);
    }
    (a, b)
}

fn check_op(op: SoftOp, cpu: impl Fn(u32, u32) -> u32, n: usize) {
    let (a, b) = pairs(n, 0x5eed ^ op as u64);
    let got = softfloat(gpu(), op, &a, &b).unwrap();
    let nan = |v: u32| (v & 0x7fff_ffff) > 0x7f80_0000;
    let mut bad = 0;
    for i in 0..a.len() {
        let want = cpu(a[i], b[i]);
        // x86 (where the references run) defines NaN bits too, and the
        // arithmetic reproduces them; elsewhere only NaN-ness is compared.
        let strict = cfg!(target_arch = "x86_64")
            && matches!(
                op,
                SoftOp::Add | SoftOp::Sub | SoftOp::Mul | SoftOp::Div | SoftOp::Sqrt
            );
        let float_result = !matches!(op, SoftOp::NearestInt | SoftOp::Cvtt | SoftOp::Lt);
        if got[i] != want && (strict || !(float_result && nan(got[i]) && nan(want))) {
            if bad < 5 {
                eprintln!(
                    "{op:?}({:#010x}, {:#010x}) = {:#010x}, CPU {:#010x}",
                    a[i], b[i], got[i], want
                );
            }
            bad += 1;
        }
    }
    assert_eq!(bad, 0, "{op:?}: {bad} of {} results differ", a.len());
}

fn f(x: u32) -> f32 {
    f32::from_bits(x)
}

#[test]
fn softfloat_arithmetic_is_ieee_exact() {
    let n = 1 << 18;
    check_op(SoftOp::Add, |a, b| (f(a) + f(b)).to_bits(), n);
    check_op(SoftOp::Sub, |a, b| (f(a) - f(b)).to_bits(), n);
    check_op(SoftOp::Mul, |a, b| (f(a) * f(b)).to_bits(), n);
    check_op(SoftOp::MulFast, |a, b| (f(a) * f(b)).to_bits(), n);
    check_op(SoftOp::DivFast, |a, b| (f(a) / f(b)).to_bits(), n);
    check_op(SoftOp::Div, |a, b| (f(a) / f(b)).to_bits(), n);
    check_op(SoftOp::Sqrt, |a, _| f(a).sqrt().to_bits(), n);
    check_op(SoftOp::Lt, |a, b| u32::from(f(a) < f(b)), n);
}

#[test]
fn softfloat_conversions_match_the_crate() {
    let n = 1 << 17;
    check_op(
        SoftOp::ToF16,
        |a, _| u32::from(f16::from_f32(f(a)).to_bits()),
        n,
    );
    check_op(
        SoftOp::ToBf16,
        |a, _| u32::from(quant_kernels::float::f32_to_bf16(f(a)).to_bits()),
        n,
    );
    check_op(SoftOp::RoundAway, |a, _| f(a).round().to_bits(), n);
    check_op(SoftOp::Rint, |a, _| f(a).round_ties_even().to_bits(), n);
    check_op(
        SoftOp::NearestInt,
        |a, _| (((f(a) + 12_582_912.0).to_bits() as i32 & 0x007f_ffff) - 0x0040_0000) as u32,
        n,
    );
    check_op(
        SoftOp::Cvtt,
        |a, _| {
            let x = f(a);
            (if (-2_147_483_648.0..2_147_483_648.0).contains(&x) {
                x as i32
            } else {
                i32::MIN
            }) as u32
        },
        n,
    );
    // Every f16 pattern widens exactly.
    let all: Vec<u32> = (0..=0xffffu32).collect();
    let got = softfloat(gpu(), SoftOp::FromF16, &all, &all).unwrap();
    for (h, g) in all.iter().zip(&got) {
        let want = f16::from_bits(*h as u16).to_f32().to_bits();
        let nan = f16::from_bits(*h as u16).is_nan();
        assert!(
            *g == want || nan && f32::from_bits(*g).is_nan(),
            "f16 {h:#06x}"
        );
    }
    let ints: Vec<u32> = (-70_000i32..70_000).map(|i| i as u32).collect();
    let got = softfloat(gpu(), SoftOp::FromI32, &ints, &ints).unwrap();
    for (i, g) in ints.iter().zip(&got) {
        assert_eq!(*g, (*i as i32 as f32).to_bits(), "{}", *i as i32);
    }
}

// ------------------------------------------------------------ GGML

const GGML_TYPES: [GgmlType; 5] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

fn n_values(ty: GgmlType) -> usize {
    // ~1 MB of f32 for the cheap kernels, 256 KB for the K-quant searches.
    match ty {
        GgmlType::Q4K | GgmlType::Q6K => 1 << 16,
        _ => 1 << 18,
    }
}

fn check_quantize(g: &Gpu, ty: GgmlType, n: usize, n_per_row: usize, seed: u64) {
    let x = weights(n, ty.block_size() as usize, seed);
    let size = ggml::row_size(ty, n).unwrap();
    let mut cpu = vec![0u8; size];
    ggml::quantize(ty, &x, n_per_row, None, &mut cpu).unwrap();
    let mut gpu_out = vec![0xa5u8; size];
    g.quantize(ty, &x, n_per_row, &mut gpu_out).unwrap();
    let bs = ty.type_size() as usize;
    if let Some(b) =
        (0..size / bs).find(|&b| cpu[b * bs..(b + 1) * bs] != gpu_out[b * bs..(b + 1) * bs])
    {
        let e = ty.block_size() as usize;
        panic!(
            "{ty}: block {b} differs\n cpu {:02x?}\n gpu {:02x?}\n input {:?}",
            &cpu[b * bs..(b + 1) * bs],
            &gpu_out[b * bs..(b + 1) * bs],
            &x[b * e..(b + 1) * e]
        );
    }
}

#[test]
fn ggml_quantize_is_bit_identical() {
    for ty in GGML_TYPES {
        let n = n_values(ty);
        check_quantize(gpu(), ty, n, 256 * 4, 11 + ty.id() as u64);
    }
}

#[test]
fn ggml_quantize_odd_block_counts_and_chunks() {
    // An odd number of blocks (the pair kernels' lone last block), and a
    // device cut into 64 KiB chunks.
    for ty in GGML_TYPES {
        let bs = ty.block_size() as usize;
        check_quantize(gpu(), ty, bs * 3, bs, 3);
        check_quantize(chunked_gpu(), ty, bs * 301, bs, 5);
    }
}

/// Values that probe the K-quant kernels' fast cases sub-block by
/// sub-block (`sub` values each): magnitudes on both sides of the fast
/// range's ends (2^-20 and 2^16 for Q6_K), tiny and subnormal values among
/// ordinary ones, small integers times powers of two (quotients on exact
/// half-integers, ties in the searches), all-zero and single-value
/// sub-blocks.
fn sub_block_probes(n: usize, sub: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    let mut v = Vec::with_capacity(n);
    let mags = [
        2f32.powi(-21),
        2f32.powi(-20),
        2f32.powi(-20) * 1.0001,
        2f32.powi(-19),
        2f32.powi(15),
        2f32.powi(16),
        2f32.powi(16) * 1.0001,
        2f32.powi(17),
        1e-3,
        0.02,
        1.0,
    ];
    for _ in 0..n.div_ceil(sub) {
        let kind = r.u32() % 8;
        let m = mags[(r.u32() % mags.len() as u32) as usize];
        let pow2 = 2f32.powi((r.u32() % 24) as i32 - 12);
        for i in 0..sub {
            let x = match kind {
                0 => 0.0,
                1 => {
                    if i == 3 {
                        m
                    } else {
                        0.0
                    }
                }
                // Small integers times a power of two.
                2 => ((r.u32() % 65) as f32 - 32.0) * pow2,
                3 => ((r.u32() % 9) as f32 - 4.0) * 0.5 * pow2,
                // Tiny and subnormal values among ordinary ones.
                4 => match i % 4 {
                    0 => f32::from_bits(r.u32() & 0x807f_ffff),
                    1 => r.normal() * 1e-36,
                    _ => r.normal() * m,
                },
                5 => r.normal() * m * if i % 5 == 0 { 1e-12 } else { 1.0 },
                _ => r.normal() * m,
            };
            v.push(x);
        }
    }
    v.truncate(n);
    v
}

fn check_quantize_values(g: &Gpu, ty: GgmlType, x: &[f32]) {
    let size = ggml::row_size(ty, x.len()).unwrap();
    let mut cpu = vec![0u8; size];
    ggml::quantize(ty, x, x.len(), None, &mut cpu).unwrap();
    let mut gpu_out = vec![0xa5u8; size];
    g.quantize(ty, x, x.len(), &mut gpu_out).unwrap();
    let bs = ty.type_size() as usize;
    let e = ty.block_size() as usize;
    if let Some(b) =
        (0..size / bs).find(|&b| cpu[b * bs..(b + 1) * bs] != gpu_out[b * bs..(b + 1) * bs])
    {
        panic!(
            "{ty}: block {b} differs\n cpu {:02x?}\n gpu {:02x?}\n input {:?}",
            &cpu[b * bs..(b + 1) * bs],
            &gpu_out[b * bs..(b + 1) * bs],
            &x[b * e..(b + 1) * e]
        );
    }
}

/// Q6_K blocks in which values of most sub-blocks are exact half-integer
/// multiples of their final step d = d_all * scale (x / d a tie for
/// nearest_int, which rounds it to even): the CPU reference's own d is
/// read back and the values moved onto (k + 1/2) d, a few rounds until d
/// settles (exact in f32: d_all has 11 significant bits, the scale at
/// most 8, 2k + 1 at most 5). Returns the values and how many of them lie
/// on a tie in the CPU's final quantization.
fn q6k_half_integer_quotients(blocks: usize, seed: u64) -> (Vec<f32>, usize) {
    let mut r = Rng(seed);
    let mut out = Vec::with_capacity(256 * blocks);
    let mut ties = 0;
    for _ in 0..blocks {
        let mut x: Vec<f32> = (0..256).map(|_| r.normal() * 0.05).collect();
        let mut q = vec![0u8; 210];
        for round in 0..5 {
            ggml::quantize(GgmlType::Q6K, &x, 256, None, &mut q).unwrap();
            if round == 4 {
                break;
            }
            let d_all = f16::from_le_bytes([q[208], q[209]]).to_f32();
            for j in 0..16 {
                let sc = q[192 + j] as i8;
                // The largest scale's sub-block sets d_all: left alone.
                if sc == 0 || sc == -128 {
                    continue;
                }
                let d = d_all * f32::from(sc);
                for i in [1, 6, 11] {
                    let k = (r.u32() % 31) as f32 - 15.0;
                    x[16 * j + i] = (k + 0.5) * d;
                }
            }
        }
        let d_all = f16::from_le_bytes([q[208], q[209]]).to_f32();
        for j in 0..16 {
            let d = d_all * f32::from(q[192 + j] as i8);
            if d != 0.0 {
                ties += x[16 * j..16 * j + 16]
                    .iter()
                    .filter(|&&v| (v / d).fract().abs() == 0.5)
                    .count();
            }
        }
        out.extend_from_slice(&x);
    }
    (out, ties)
}

#[test]
fn k_quant_fast_case_boundaries() {
    // Block counts that are not whole tiles (Q6_K: 4 blocks, Q4_K: 8), on
    // the plain and the chunked device.
    for (ty, sub) in [(GgmlType::Q6K, 16), (GgmlType::Q4K, 32)] {
        for (blocks, seed) in [(97, 1), (130, 2), (63, 3)] {
            let x = sub_block_probes(256 * blocks, sub, seed);
            check_quantize_values(gpu(), ty, &x);
            check_quantize_values(chunked_gpu(), ty, &x);
        }
        let x = weights(256 * 64, sub, 9);
        check_quantize_values(gpu(), ty, &x);
    }
    let (x, ties) = q6k_half_integer_quotients(64, 4);
    assert!(ties >= 500, "only {ties} exact ties in the Q6_K tie probes");
    check_quantize_values(gpu(), GgmlType::Q6K, &x);
    for seed in 1..4 {
        let x = q4k_probes(12, seed);
        check_quantize_values(gpu(), GgmlType::Q4K, &x);
    }
}

/// Q4_K sub-blocks at the float-unit search's boundaries
/// (ggml_quantize.wgsl, make_qkx2_q4k_fast): largest magnitudes around
/// 2^-16 and 2^16 (value 5 of each sub-block is the largest), smallest nonzero magnitudes around 2^-30, and
/// sub-blocks whose fit fails the run-time checks (values all equal, or
/// all negative and within a few units in the last place of each other,
/// where max - min is tiny and scales fall below 2^-30). A tile (8 blocks)
/// takes the fast kernel only when all its sub-blocks are in range, so
/// every other tile is built of in-range sub-blocks only, and of the rest
/// half have exactly one sub-block out of range.
fn q4k_probes(tiles: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed);
    let mut v = Vec::with_capacity(tiles * 2048);
    // In range first, then out of range.
    let big = [
        2f32.powi(-16),
        2f32.powi(-16) * 1.0001,
        1e-3,
        1.0,
        2f32.powi(16) * (1.0 - f32::EPSILON / 2.0),
        2f32.powi(16),
        2f32.powi(-17),
        2f32.powi(-16) * (1.0 - f32::EPSILON / 2.0),
        2f32.powi(16) * (1.0 + f32::EPSILON),
    ];
    let small = [
        2f32.powi(-30),
        2f32.powi(-30) * (1.0 + f32::EPSILON),
        2f32.powi(-29),
        1e-7,
        2f32.powi(-31),
        2f32.powi(-30) * (1.0 - f32::EPSILON / 2.0),
    ];
    for t in 0..tiles {
        let odd_one = (t % 4 == 1).then(|| (r.u32() % 64) as usize);
        for sb in 0..64 {
            let in_range = t % 4 != 3 && odd_one != Some(sb);
            let (nb, ns) = if in_range {
                (6, 4)
            } else {
                (big.len(), small.len())
            };
            let mut kind = r.u32() % 6;
            let mut m = big[(r.u32() % nb as u32) as usize];
            let mut tiny = small[(r.u32() % ns as u32) as usize];
            if odd_one == Some(sb) {
                // Surely out of range.
                kind = 1;
                m = 1.0;
                tiny = small[4 + (r.u32() % 2) as usize];
            }
            let sign = if r.u32().is_multiple_of(2) { 1.0 } else { -1.0 };
            for i in 0..32 {
                let x = match kind {
                    // The largest magnitude exactly m (in every kind).
                    3 if i == 5 => -m,
                    _ if i == 5 => sign * m,
                    0 => (r.normal() * m * 0.3).clamp(-m, m),
                    // A tiny value among ordinary ones.
                    1 => {
                        if i % 11 == 2 {
                            sign * tiny
                        } else {
                            (r.normal() * 0.3).clamp(-1.0, 1.0) * m
                        }
                    }
                    // All equal.
                    2 => sign * m,
                    // All negative, within a few ulps of each other.
                    3 => -f32::from_bits(m.to_bits() - r.u32() % 4),
                    // Small integers times m / 16 (exact fits, ties).
                    4 => ((r.u32() % 16) as f32 - 8.0 * (r.u32() % 2) as f32) * m / 16.0,
                    _ => (r.normal() * 0.3).clamp(-1.0, 1.0) * m,
                };
                v.push(x);
            }
        }
    }
    v
}

#[test]
fn ggml_dequantize_is_bit_identical() {
    for ty in GGML_TYPES {
        for g in [gpu(), chunked_gpu()] {
            let n = n_values(ty) + ty.block_size() as usize;
            // Real blocks from the quantizer, then random bytes with their
            // scales forced finite.
            let x = weights(n, ty.block_size() as usize, 99);
            let mut q = vec![0u8; ggml::row_size(ty, n).unwrap()];
            ggml::quantize(ty, &x, ty.block_size() as usize, None, &mut q).unwrap();
            let mut r = Rng(7 + ty.id() as u64);
            let half = q.len() / 2 / ty.type_size() as usize * ty.type_size() as usize;
            for b in q[half..].iter_mut() {
                *b = r.u32() as u8;
            }
            let mut cpu = vec![0f32; n];
            ggml::dequantize(ty, &q, &mut cpu).unwrap();
            let mut out = vec![f32::NAN; n];
            g.dequantize(ty, &q, &mut out).unwrap();
            if let Err(e) = same_bits(&cpu, &out) {
                panic!("{ty}: {e}");
            }
        }
    }
}

#[test]
fn ggml_errors_match_the_cpu() {
    let g = gpu();
    for ty in GGML_TYPES {
        let bs = ty.block_size() as usize;
        let mut x = weights(bs * 8, bs, 1);
        let mut out = vec![0u8; ggml::row_size(ty, x.len()).unwrap()];
        for (i, bad) in [(bs * 5 + 3, f32::NAN), (bs + 1, f32::NEG_INFINITY)] {
            x[i] = bad;
            let cpu = ggml::quantize(ty, &x, bs, None, &mut out.clone()).unwrap_err();
            let gpu_err = g.quantize(ty, &x, bs, &mut out).unwrap_err();
            match gpu_err {
                GpuError::Kernel(KernelError::NonFinite { index, .. }) => {
                    assert_eq!(index, i);
                    assert!(matches!(cpu, KernelError::NonFinite { index, .. } if index == i));
                }
                e => panic!("{ty}: {e}"),
            }
        }
        assert!(matches!(
            g.quantize(ty, &x[..bs + 1], bs, &mut out),
            Err(GpuError::Kernel(KernelError::BadLength(_)))
        ));
    }
    // Streamed over many chunks: the first bad value is the one reported,
    // whichever chunks are in flight around it, and the same handle goes on
    // to give the right bytes.
    let g = chunked_gpu();
    for ty in GGML_TYPES {
        let bs = ty.block_size() as usize;
        // 64 KiB chunks of 16 Ki values: `later` is in the chunk after
        // `first`'s, in flight when `first`'s is read back.
        let n = bs * (96usize << 10).div_ceil(bs);
        let mut x = weights(n, bs, 2);
        let mut out = vec![0u8; ggml::row_size(ty, n).unwrap()];
        let (first, later) = (n / 2 + 7, n / 2 + 7 + (20 << 10));
        x[later] = f32::NAN;
        x[first] = f32::INFINITY;
        match g.quantize(ty, &x, bs, &mut out) {
            Err(GpuError::Kernel(KernelError::NonFinite { index, .. })) => {
                assert_eq!(index, first, "{ty}")
            }
            r => panic!("{ty}: {r:?}"),
        }
        check_quantize(g, ty, n, bs, 6);
    }
    let mut out = vec![0u8; 22];
    assert!(matches!(
        g.quantize(GgmlType::Q5_0, &[0.0; 32], 32, &mut out),
        Err(GpuError::Kernel(KernelError::Unsupported(_)))
    ));
}

// ------------------------------------------------------------ MLX

fn mlx_input(dtype: u8, x: &[f32]) -> (Option<Vec<f16>>, Option<Vec<bf16>>) {
    match dtype {
        1 => (Some(x.iter().map(|&v| f16::from_f32(v)).collect()), None),
        2 => (None, Some(x.iter().map(|&v| bf16::from_f32(v)).collect())),
        _ => (None, None),
    }
}

#[test]
fn mlx_quantize_and_dequantize_are_bit_identical() {
    // Whole tiles of 64 rows of 32 values; a partial tile with an odd
    // number of groups; and a tensor that the chunked device cuts in two.
    for (rows, cols) in [(24, 512), (3, 384), (40, 512)] {
        mlx_bit_identical(rows, cols);
    }
}

fn mlx_bit_identical(rows: usize, cols: usize) {
    for bits in [2u32, 3, 4, 5, 6, 8] {
        for group in [32usize, 64, 128] {
            for dtype in 0u8..3 {
                let params = MlxParams::affine(bits, group);
                let mut x = weights(rows * cols, group, u64::from(bits) * 31 + group as u64);
                if dtype == 1 {
                    // f16 cannot hold 1e30: keep magnitudes in range.
                    for v in x.iter_mut() {
                        *v = v.clamp(-6e4, 6e4);
                    }
                }
                let (h, b) = mlx_input(dtype, &x);
                let input = match dtype {
                    1 => MlxInput::F16(h.as_ref().unwrap()),
                    2 => MlxInput::BF16(b.as_ref().unwrap()),
                    _ => MlxInput::F32(&x),
                };
                let cpu = mlx::quantize_ref(input, cols, &params).unwrap();
                for g in [gpu(), chunked_gpu()] {
                    let got = g.mlx_quantize(input, cols, &params).unwrap();
                    assert_eq!(
                        got.weight, cpu.weight,
                        "{bits} bits, group {group}, dtype {dtype}"
                    );
                    assert_eq!(
                        got.scales, cpu.scales,
                        "{bits} bits, group {group}, dtype {dtype}"
                    );
                    assert_eq!(
                        got.biases, cpu.biases,
                        "{bits} bits, group {group}, dtype {dtype}"
                    );
                    let biases = cpu.biases.as_ref().map(ScaleBuf::as_scales);
                    let want = mlx::dequantize_ref(
                        &cpu.weight,
                        cpu.scales.as_scales(),
                        biases,
                        cols,
                        &params,
                        DequantPrecision::F32,
                    )
                    .unwrap();
                    let back = g
                        .mlx_dequantize(&cpu.weight, cpu.scales.as_scales(), biases, cols, &params)
                        .unwrap();
                    if let Err(e) = same_bits(&want, &back) {
                        panic!("dequantize {bits} bits, group {group}, dtype {dtype}: {e}");
                    }
                }
            }
        }
    }
}

#[test]
fn mlx_non_finite_input_is_refused_like_the_cpu() {
    let mut x = weights(64 * 4, 64, 3);
    x[130] = f32::INFINITY;
    let params = MlxParams::affine(4, 64);
    let cpu = mlx::quantize(MlxInput::F32(&x), 64, &params).unwrap_err();
    let got = gpu()
        .mlx_quantize(MlxInput::F32(&x), 64, &params)
        .unwrap_err();
    assert!(matches!(got, GpuError::Kernel(ref k) if *k == cpu), "{got}");
}

// ------------------------------------------------------------ mat-vec

const U: f64 = 1.0 / (1u64 << 24) as f64;

/// (rows, cols) shapes: SmolLM2-like widths and a K-quant multiple.
const SHAPES: [(usize, usize); 3] = [(40, 576), (33, 1536), (9, 2048)];

fn dequantized_rows(ty: GgmlType, q: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let mut w = vec![0f32; rows * cols];
    ggml::dequantize(ty, q, &mut w).unwrap();
    w
}

#[test]
fn matvec_f32_is_within_its_bound_of_the_exact_product() {
    let g = gpu();
    for ty in GGML_TYPES {
        for &(rows, cols) in &SHAPES {
            if !cols.is_multiple_of(ty.block_size() as usize) {
                continue;
            }
            let n_tok = 2;
            let w = weights(rows * cols, 32, 5)
                .iter()
                .map(|v| v.clamp(-1e3, 1e3))
                .collect::<Vec<_>>();
            let mut q = vec![0u8; ggml::row_size(ty, w.len()).unwrap()];
            ggml::quantize(ty, &w, cols, None, &mut q).unwrap();
            let wd = dequantized_rows(ty, &q, rows, cols);
            let mut r = Rng(17);
            let x: Vec<f32> = (0..n_tok * cols).map(|_| r.normal()).collect();
            let m = g.upload_ggml(ty, &q, rows, cols).unwrap();
            let mut y = vec![f32::NAN; n_tok * rows];
            g.matvec(&m, &x, Activations::F32, &mut y).unwrap();
            for t in 0..n_tok {
                for i in 0..rows {
                    let (mut exact, mut abs) = (0f64, 0f64);
                    for c in 0..cols {
                        let p = f64::from(wd[i * cols + c]) * f64::from(x[t * cols + c]);
                        exact += p;
                        abs += p.abs();
                    }
                    let bound = (cols as f64 / 32.0 + 64.0) * U * abs;
                    let err = (f64::from(y[t * rows + i]) - exact).abs();
                    assert!(
                        err <= bound,
                        "{ty} {rows}x{cols} tok {t} row {i}: error {err:e} > {bound:e}"
                    );
                }
            }
        }
    }
}

/// An upper bound on T, the sum of |float terms| ggml's vec_dot and the
/// GPU form for one row: sum_i |w_scale(i) a_i| + |w_min(i) a_i|, where
/// w_scale is the weight with its min field zeroed and w_min the weight
/// with its scale zeroed (by the triangle inequality every block term is
/// at most that; Q4_1's stored activation sum is f16-rounded, hence the
/// small margin).
fn vec_dot_t(ty: GgmlType, row: &[u8], act: &[u8], cols: usize) -> f64 {
    let vdt = ggml::vec_dot_type(ty).unwrap();
    let mut a = vec![0f32; cols];
    ggml::dequantize(vdt, act, &mut a).unwrap();
    let (ts, d_field, m_field) = match ty {
        GgmlType::Q4_1 => (20, 0..2, 2..4),
        GgmlType::Q4K => (144, 0..2, 2..4),
        _ => (0, 0..0, 0..0),
    };
    let parts: Vec<Vec<u8>> = if ts == 0 {
        vec![row.to_vec()]
    } else {
        [m_field, d_field]
            .into_iter()
            .map(|zero| {
                let mut r = row.to_vec();
                for b in r.chunks_exact_mut(ts) {
                    b[zero.clone()].fill(0);
                }
                r
            })
            .collect()
    };
    let mut t = 0f64;
    for p in parts {
        let mut w = vec![0f32; cols];
        ggml::dequantize(ty, &p, &mut w).unwrap();
        t += w
            .iter()
            .zip(&a)
            .map(|(w, a)| (f64::from(*w) * f64::from(*a)).abs())
            .sum::<f64>();
    }
    t * 1.001
}

#[test]
fn matvec_ggml_activations_match_vec_dot() {
    let g = gpu();
    for ty in GGML_TYPES {
        for &(rows, cols) in &SHAPES {
            if !cols.is_multiple_of(256) && matches!(ty, GgmlType::Q4K | GgmlType::Q6K) {
                continue;
            }
            let w = weights(rows * cols, 32, 8)
                .iter()
                .map(|v| v.clamp(-1e3, 1e3))
                .collect::<Vec<_>>();
            let mut q = vec![0u8; ggml::row_size(ty, w.len()).unwrap()];
            ggml::quantize(ty, &w, cols, None, &mut q).unwrap();
            let mut r = Rng(23);
            let x: Vec<f32> = (0..cols).map(|_| r.normal()).collect();
            let vdt = ggml::vec_dot_type(ty).unwrap();
            let mut act = vec![0u8; ggml::row_size(vdt, cols).unwrap()];
            ggml::quantize_activations(vdt, &x, &mut act).unwrap();
            let m = g.upload_ggml(ty, &q, rows, cols).unwrap();
            let mut y = vec![f32::NAN; rows];
            g.matvec(&m, &x, Activations::Ggml, &mut y).unwrap();
            let rb = ggml::row_size(ty, cols).unwrap();
            for i in 0..rows {
                let cpu = ggml::vec_dot(ty, &q[i * rb..(i + 1) * rb], &act, cols).unwrap();
                let t = vec_dot_t(ty, &q[i * rb..(i + 1) * rb], &act, cols);
                let bound = (cols as f64 / 32.0 + 64.0) * U * t;
                let err = (f64::from(y[i]) - f64::from(cpu)).abs();
                assert!(
                    err <= bound,
                    "{ty} {rows}x{cols} row {i}: gpu {} cpu {cpu}: {err:e} > {bound:e}",
                    y[i]
                );
            }
        }
    }
}

#[test]
fn matvec_mlx_and_shared_inputs() {
    let g = gpu();
    let (rows, cols) = (48, 1024);
    let mut mats = Vec::new();
    let mut dense = Vec::new();
    for (bits, group, dtype) in [(4u32, 64usize, 1u8), (8, 32, 2), (3, 128, 0)] {
        let params = MlxParams::affine(bits, group);
        let x = weights(rows * cols, group, 9)
            .iter()
            .map(|v| v.clamp(-1e3, 1e3))
            .collect::<Vec<_>>();
        let (h, b) = mlx_input(dtype, &x);
        let input = match dtype {
            1 => MlxInput::F16(h.as_ref().unwrap()),
            2 => MlxInput::BF16(b.as_ref().unwrap()),
            _ => MlxInput::F32(&x),
        };
        let q = mlx::quantize(input, cols, &params).unwrap();
        let bias = q.biases.as_ref().unwrap().as_scales();
        dense.push(
            mlx::dequantize(
                &q.weight,
                q.scales.as_scales(),
                Some(bias),
                cols,
                &params,
                DequantPrecision::F32,
            )
            .unwrap(),
        );
        mats.push(
            g.upload_mlx(&q.weight, q.scales.as_scales(), bias, cols, &params)
                .unwrap(),
        );
    }
    let mut r = Rng(4);
    let x: Vec<f32> = (0..cols).map(|_| r.normal()).collect();
    let mut outs = vec![vec![f32::NAN; rows]; mats.len()];
    {
        let refs: Vec<_> = mats.iter().collect();
        let mut ys: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
        g.matvec_shared(&refs, &x, Activations::F32, &mut ys)
            .unwrap();
    }
    for (k, (y, w)) in outs.iter().zip(&dense).enumerate() {
        for i in 0..rows {
            let (mut exact, mut abs) = (0f64, 0f64);
            for c in 0..cols {
                let p = f64::from(w[i * cols + c]) * f64::from(x[c]);
                exact += p;
                abs += p.abs();
            }
            let bound = (cols as f64 / 32.0 + 64.0) * U * abs;
            let err = (f64::from(y[i]) - exact).abs();
            assert!(err <= bound, "matrix {k} row {i}: {err:e} > {bound:e}");
        }
    }
}

/// The GPU decoder quantizes activations exactly as ggml's CPU backend
/// (quant-kernels' `quantize_activations`): Q8_0 and Q8_1 over vectors of
/// odd and even block counts spanning several 256-value tiles, Q8_K over
/// several blocks; magnitudes from subnormal to 1e30, zero blocks, ties.
#[test]
fn decoder_activation_encodings_are_bit_identical() {
    let g = gpu();
    use quant_kernels::gpu::testing::decoder_activations;
    for (vdt, sizes) in [
        (GgmlType::Q8_0, &[32usize, 96, 576, 1536][..]),
        (GgmlType::Q8_1, &[64, 288, 576][..]),
        (GgmlType::Q8K, &[256, 768][..]),
    ] {
        for &n in sizes {
            for seed in 0..3u64 {
                let x: Vec<f32> = weights(n, 32, 40 + seed)
                    .iter()
                    .map(|v| if seed == 2 { v * 0.5 } else { *v })
                    .collect();
                let mut want = vec![0u8; ggml::row_size(vdt, n).unwrap()];
                ggml::quantize_activations(vdt, &x, &mut want).unwrap();
                let got = decoder_activations(g, vdt, &x).unwrap();
                if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
                    panic!(
                        "{vdt} n={n} seed={seed}: GPU encoding differs from byte {i}: \
                         GPU {:?}, CPU {:?}",
                        &got[i.saturating_sub(4)..(i + 8).min(got.len())],
                        &want[i.saturating_sub(4)..(i + 8).min(want.len())]
                    );
                }
            }
        }
    }
}
