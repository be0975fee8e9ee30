//! Tests of the decode-only types (IQ1_S, IQ1_M, TQ1_0, TQ2_0, MXFP4,
//! NVFP4) that stand without ggml: blocks built by hand whose values follow
//! from the format definitions, and dot products against the f64 sum of
//! the dequantized weights times the dequantized activations. The
//! bit-exact comparison with ggml is the interop suite's
//! (tests/interop/test_kernels_decode.py).

use super::*;
use crate::float::{f32_to_f16, read_f16, write_f16};

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
    /// Uniform in `lo..hi`.
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Q8_0 activations: random values in -127..=127 (no -128, whose sign
/// quirk the exact sum does not model) with scales near 0.01.
fn q8_0_row(rng: &mut Rng, n: usize) -> (Vec<u8>, Vec<f64>) {
    let mut bytes = vec![0u8; n / 32 * 34];
    let mut vals = Vec::with_capacity(n);
    for b in bytes.chunks_exact_mut(34) {
        write_f16(&mut b[0..2], rng.uniform(0.005, 0.02));
        let d = f64::from(read_f16(&b[0..2]));
        for q in &mut b[2..34] {
            let v = i32::from(rng.byte() % 255) - 127;
            *q = v as i8 as u8;
            vals.push(d * f64::from(v));
        }
    }
    (bytes, vals)
}

/// Q8_K activations as above, with the block sums stored as ggml stores
/// them.
fn q8_k_row(rng: &mut Rng, n: usize) -> (Vec<u8>, Vec<f64>) {
    let mut bytes = vec![0u8; n / 256 * 292];
    let mut vals = Vec::with_capacity(n);
    for b in bytes.chunks_exact_mut(292) {
        let d = rng.uniform(0.005, 0.02);
        b[0..4].copy_from_slice(&d.to_le_bytes());
        for g in 0..16 {
            let mut sum = 0i16;
            for j in 0..16 {
                let v = i32::from(rng.byte() % 255) - 127;
                b[4 + 16 * g + j] = v as i8 as u8;
                sum += v as i16;
                vals.push(f64::from(d) * f64::from(v));
            }
            b[260 + 2 * g..262 + 2 * g].copy_from_slice(&sum.to_le_bytes());
        }
    }
    (bytes, vals)
}

fn decode(ty: GgmlType, x: &[u8]) -> Vec<f32> {
    let n = x.len() / ty.type_size() as usize * ty.block_size() as usize;
    let mut y = vec![0f32; n];
    dequantize_row(ty, x, &mut y).unwrap();
    y
}

/// Checks `vec_dot` on random blocks (built by `block`) against the f64
/// dot product of the dequantized rows: the kernels sum integers exactly
/// and round only the per-block scale products and the float sums, so the
/// error stays within a few f32 ulps of `sum |w a|`.
fn check_dot_against_f64(ty: GgmlType, block: impl Fn(&mut Rng) -> Vec<u8>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ty.type_size());
    let per = ty.block_size() as usize;
    for nb in [1, 2, 3, 4, 7] {
        for _ in 0..20 {
            let w: Vec<u8> = (0..nb).flat_map(|_| block(&mut rng)).collect();
            let n = nb * per;
            let (a, av) = match vec_dot_type(ty).unwrap() {
                GgmlType::Q8_0 => q8_0_row(&mut rng, n),
                _ => q8_k_row(&mut rng, n),
            };
            let wv = decode(ty, &w);
            let exact: f64 = wv.iter().zip(&av).map(|(w, a)| f64::from(*w) * a).sum();
            let scale: f64 = wv
                .iter()
                .zip(&av)
                .map(|(w, a)| (f64::from(*w) * a).abs())
                .sum();
            let got = f64::from(vec_dot(ty, n, &w, &a).unwrap());
            assert!(
                (got - exact).abs() <= 1e-5 * scale,
                "{ty} n={n}: {got} vs exact {exact} (sum |w a| {scale})"
            );
        }
    }
}

/// A random block whose f16 scale (at `at`) is moderate.
fn block_with_f16(rng: &mut Rng, size: usize, at: usize) -> Vec<u8> {
    let mut b = rng.bytes(size);
    let d = rng.uniform(0.01, 0.1) * if rng.byte() & 1 == 0 { 1.0 } else { -1.0 };
    write_f16(&mut b[at..at + 2], d);
    b
}

#[test]
fn kvalues_fp4_are_doubled_e2m1() {
    assert_eq!(
        KVALUES_FP4,
        [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]
    );
}

#[test]
fn e8m0_half_is_half_a_power_of_two() {
    assert_eq!(e8m0_to_f32_half(127), 0.5);
    assert_eq!(e8m0_to_f32_half(128), 1.0);
    assert_eq!(e8m0_to_f32_half(255), 2f32.powi(127));
    assert_eq!(e8m0_to_f32_half(1), f32::from_bits(0x0040_0000)); // 2^-127
    assert_eq!(e8m0_to_f32_half(0), f32::from_bits(0x0020_0000)); // 2^-128
}

#[test]
fn ue4m3_is_half_the_e4m3_value() {
    assert_eq!(ue4m3_to_f32(0x38), 0.5); // 1.0
    assert_eq!(ue4m3_to_f32(0x40), 1.0); // 2.0
    assert_eq!(ue4m3_to_f32(0x3c), 0.75); // 1.5
    assert_eq!(ue4m3_to_f32(0x01), 2f32.powi(-10)); // subnormal 2^-9
    assert_eq!(ue4m3_to_f32(0x7e), 224.0); // 448, the largest
    assert_eq!(ue4m3_to_f32(0x7f), 0.0); // NaN reads as 0
    assert_eq!(ue4m3_to_f32(0x00), 0.0);
    assert_eq!(ue4m3_to_f32(0xb8), 0.5); // the sign bit is ignored
    assert_eq!(ue4m3_to_f32(0xff), 240.0);
}

#[test]
fn mul_sign_keeps_minus_128() {
    assert_eq!(fp4::mul_sign_i8(-1, -128), -128);
    assert_eq!(fp4::mul_sign_i8(-3, -128), -384);
    assert_eq!(fp4::mul_sign_i8(3, -128), -384);
    assert_eq!(fp4::mul_sign_i8(-3, 5), -15);
    assert_eq!(fp4::mul_sign_i8(0, -128), 0);
}

#[test]
fn mxfp4_hand_block() {
    let mut b = [0u8; 17];
    b[0] = 128; // scale 2^(128-127) = 2
    b[1] = 0x71; // value 0: code 1 (0.5), value 16: code 7 (6)
    b[2] = 0xfd; // value 1: code 0xd (-3), value 17: code 0xf (-6)
    let y = decode(GgmlType::MXFP4, &b);
    assert_eq!(
        (y[0], y[16], y[1], y[17], y[2]),
        (1.0, 12.0, -6.0, -12.0, 0.0)
    );
    b[0] = 0; // 2^-127, subnormal
    b[1] = 0x02; // 1.0
    assert_eq!(decode(GgmlType::MXFP4, &b)[0], f32::from_bits(0x0040_0000));
}

#[test]
fn nvfp4_hand_block() {
    let mut b = [0u8; 36];
    b[0..4].copy_from_slice(&[0x38, 0x40, 0x7f, 0x01]); // 1, 2, NaN->0, 2^-9
    b[4] = 0x97; // sub-block 0: value 0 code 7 (6), value 8 code 9 (-0.5)
    b[12 + 7] = 0x01; // sub-block 1: value 7 code 1 (0.5), value 15 code 0
    b[20] = 0x77; // sub-block 2, scale 0
    b[28 + 1] = 0x70; // sub-block 3: value 9 code 7 (6)
    let y = decode(GgmlType::NVFP4, &b);
    assert_eq!((y[0], y[8], y[1]), (6.0, -0.5, 0.0));
    assert_eq!((y[16 + 7], y[16 + 15]), (1.0, 0.0));
    assert_eq!((y[32], y[40]), (0.0, 0.0));
    assert_eq!(y[48 + 9], 6.0 * 2f32.powi(-9));
}

#[test]
fn iq1_grid_ends_are_all_minus_one_and_all_one() {
    assert_eq!(iq1_tables::IQ1S_GRID[0], u64::MAX);
    assert_eq!(iq1_tables::IQ1S_GRID[2047], 0x0101_0101_0101_0101);
}

#[test]
fn iq1_s_hand_block() {
    let mut b = [0u8; 50];
    write_f16(&mut b[0..2], 0.5);
    // Sub-block 0: scale 2*3+1 = 7, negative delta; groups 0 and 1 use grid
    // points 0 (all -1) and 2047 (all +1: low byte 0xff, high bits 7).
    b[2] = 0x00;
    b[3] = 0xff;
    let qh0: u16 = 0x8000 | (3 << 12) | (7 << 3);
    b[34..36].copy_from_slice(&qh0.to_le_bytes());
    // Sub-block 1: scale 1, positive delta, group 0 on grid point 2047.
    b[6] = 0xff;
    let qh1: u16 = 7;
    b[36..38].copy_from_slice(&qh1.to_le_bytes());
    let y = decode(GgmlType::IQ1S, &b);
    assert_eq!(y[0], 3.5 * (-1.0 - 0.125));
    assert_eq!(y[8], 3.5 * (1.0 - 0.125));
    assert_eq!(y[32], 0.5 * (1.0 + 0.125));
    assert_eq!(y[40], 0.5 * (-1.0 + 0.125)); // qs 0, high bits 0: point 0
}

#[test]
fn iq1_m_hand_block() {
    let mut b = [0u8; 56];
    // Super-block scale 0.5 = f16 0x3800, nibble k in the top of word k.
    let d_bits: u16 = 0x3800;
    let mut words = [0u16; 4];
    for (k, w) in words.iter_mut().enumerate() {
        *w = ((d_bits >> (4 * k)) & 0xf) << 12;
    }
    // Sub-block 0: scales 2*1+1 = 3 (values 0-15) and 2*5+1 = 11 (16-31).
    words[0] |= 1 | (5 << 3);
    for (k, w) in words.iter().enumerate() {
        b[48 + 2 * k..50 + 2 * k].copy_from_slice(&w.to_le_bytes());
    }
    // Groups 0 and 2 on point 0 (all -1), group 1 on point 2047 with a
    // negative delta (qh[0] bits 4-6 and 7), group 3 on point 2047.
    b[1] = 0xff;
    b[3] = 0xff;
    b[32] = 0xf0;
    b[33] = 0x70;
    let y = decode(GgmlType::IQ1M, &b);
    assert_eq!(y[0], 1.5 * (-1.0 + 0.125));
    assert_eq!(y[8], 1.5 * (1.0 - 0.125));
    assert_eq!(y[16], 5.5 * (-1.0 + 0.125));
    assert_eq!(y[24], 5.5 * (1.0 + 0.125));
}

#[test]
fn tq2_0_hand_block() {
    let mut b = [0u8; 66];
    write_f16(&mut b[64..66], 0.5);
    b[0] = 0b10_01_00_10; // values 0, 32, 64, 96: codes 2, 0, 1, 2
    b[32 + 5] = 0b00_00_00_01; // value 128 + 5: code 1
    let y = decode(GgmlType::TQ2_0, &b);
    assert_eq!((y[0], y[32], y[64], y[96]), (0.5, -0.5, 0.0, 0.5));
    assert_eq!((y[133], y[1]), (0.0, -0.5));
}

/// ggml's TQ1_0 packing of a base-3 number `v < 243` (its first trit the
/// most significant): `ceil(v * 256 / 243)`.
fn tq1_pack(v: u16) -> u8 {
    (v * 256).div_ceil(243) as u8
}

/// TQ1_0 packs trits `t0..t4` as `ceil(243-ary number * 256 / 243)` (ggml's
/// quantizer); every packing must decode to its trits.
#[test]
fn tq1_0_trits_round_trip() {
    for v in 0u16..243 {
        let trits: Vec<i32> = (0..5)
            .rev()
            .map(|k| i32::from(v / 3u16.pow(k) % 3))
            .collect();
        let byte = tq1_pack(v);
        let mut b = [0u8; 54];
        write_f16(&mut b[52..54], 1.0);
        b[0] = byte; // values 0, 32, 64, 96, 128
        b[32] = byte; // values 160, 176, 192, 208, 224
        let y = decode(GgmlType::TQ1_0, &b);
        for (n, &t) in trits.iter().enumerate() {
            assert_eq!(y[32 * n], (t - 1) as f32, "byte {byte:#x} trit {n}");
            assert_eq!(y[160 + 16 * n], (t - 1) as f32, "byte {byte:#x} trit {n}");
        }
    }
    // qh: 4 trits per byte (the fifth is padding), values 240 + 4n + j.
    let mut b = [0u8; 54];
    write_f16(&mut b[52..54], 1.0);
    let v: u16 = (2 * 27 + 9 + 2) * 3; // trits 2, 1, 0, 2, then padding 0
    b[48 + 3] = tq1_pack(v);
    let y = decode(GgmlType::TQ1_0, &b);
    assert_eq!([y[243], y[247], y[251], y[255]], [1.0, 0.0, -1.0, 1.0]);
}

#[test]
fn tq1_0_avx2_trit_extraction_matches_the_dequantizer() {
    for q in 0..=255u8 {
        assert_eq!(ternary::trit_avx2(q), ternary::trit_dequant(q), "byte {q}");
    }
}

#[test]
fn mxfp4_dot_matches_f64() {
    check_dot_against_f64(GgmlType::MXFP4, |rng| {
        let mut b = rng.bytes(17);
        b[0] = 118 + rng.byte() % 16;
        b
    });
}

#[test]
fn nvfp4_dot_matches_f64() {
    check_dot_against_f64(GgmlType::NVFP4, |rng| {
        let mut b = rng.bytes(36);
        for s in &mut b[0..4] {
            *s = 0x08 + rng.byte() % 0x70; // normal scales, never 0x7f
        }
        b
    });
}

#[test]
fn iq1_s_dot_matches_f64() {
    check_dot_against_f64(GgmlType::IQ1S, |rng| block_with_f16(rng, 50, 0));
}

#[test]
fn iq1_m_dot_matches_f64() {
    check_dot_against_f64(GgmlType::IQ1M, |rng| {
        let mut b = rng.bytes(56);
        let d = f32_to_f16(rng.uniform(0.01, 0.1)).to_bits();
        for k in 0..4 {
            let w = u16::from_le_bytes([b[48 + 2 * k], b[49 + 2 * k]]) & 0x0fff;
            let w = w | (((d >> (4 * k)) & 0xf) << 12);
            b[48 + 2 * k..50 + 2 * k].copy_from_slice(&w.to_le_bytes());
        }
        b
    });
}

#[test]
fn tq1_0_dot_matches_f64() {
    check_dot_against_f64(GgmlType::TQ1_0, |rng| {
        let mut b = block_with_f16(rng, 54, 52);
        for q in &mut b[0..52] {
            *q = tq1_pack(u16::from(*q % 243)); // valid packings
        }
        b
    });
}

#[test]
fn tq2_0_dot_matches_f64() {
    check_dot_against_f64(GgmlType::TQ2_0, |rng| block_with_f16(rng, 66, 64));
}
