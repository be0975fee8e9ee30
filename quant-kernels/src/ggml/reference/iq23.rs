//! The lattice types IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S: super-blocks
//! of 256 weights in groups of 8 (IQ2) or 4 (IQ3) that each pick a point of
//! a fixed grid of small positive integers, with one sign bit per weight and
//! a 4-bit scale per 16 or 32 weights under an f16 super-block scale.
//!
//! Each type has one decoder that turns a block into the grid value, the
//! sign and the scale code of every weight ([`Lattice`]); the dequantizers
//! and the dot products both read that, each with its own arithmetic:
//!
//! - `dequantize_row_*` follow ggml-quants.c: `db = d * (0.5 + ls) * 0.25`
//!   (IQ2), `d * (0.5 + ls) * 0.5` (IQ3_XXS) or `d * (1 + 2*ls)` (IQ3_S),
//!   then `db * grid * (±1)`, every product rounded as written (libggml-base
//!   has no FMA).
//! - `vec_dot_*_q8_k` follow the AVX2 kernels of ggml-cpu/arch/x86/quants.c:
//!   the activation gets the weight's sign (`_mm256_sign_epi8`, or the
//!   `xor`/`sub` pair of IQ2_S and IQ3_S; both wrap, so -128 stays -128),
//!   `maddubs` multiplies it by the unsigned grid value (pair sums stay far
//!   below i16 saturation: at most 2 * 62 * 128), `madd` by the odd integer
//!   scale `2*ls + 1`, and weight `e` of each 32-weight chunk lands in 32-bit
//!   lane `(e % 32) / 4`. Per block `fma(d, lanes, acc)`; at the end
//!   `hsum_float_8` times 1/8 (IQ2), 1/4 (IQ3_XXS) or 1 (IQ3_S), the factor
//!   that turns `2*ls + 1` into the dequantizer's scale.

use super::check_lengths;
use super::dot::{fma_lanes, hsum8, Q8K};
use super::iq23_tables::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use crate::float::read_f16;

const QK_K: usize = 256;
const Q8K_BYTES: usize = 292;
const IQ2XXS: usize = 66;
const IQ2XS: usize = 74;
const IQ2S: usize = 82;
const IQ3XXS: usize = 98;
const IQ3S: usize = 110;

/// ggml's `ksigns_iq2xs[i]`: the 7 stored sign bits `i` and, as bit 7,
/// their parity (the encoder keeps an even number of minus signs per 8
/// weights, so the eighth sign is implied).
#[inline(always)]
pub(crate) const fn ksigns(i: u32) -> u8 {
    let i = (i & 127) as u8;
    i | (((i.count_ones() & 1) as u8) << 7)
}

/// One super-block decoded: for weight `e`, the grid value `mag[e]`, whether
/// it is negated, and the 4-bit scale code of its group of 16 (types with
/// one scale per 32 weights repeat it).
struct Lattice {
    d: f32,
    mag: [u8; QK_K],
    neg: [bool; QK_K],
    ls: [u8; QK_K / 16],
}

impl Lattice {
    fn new(d: &[u8]) -> Self {
        Lattice {
            d: read_f16(d),
            mag: [0; QK_K],
            neg: [false; QK_K],
            ls: [0; QK_K / 16],
        }
    }

    /// Weights `at..at + values.len()` from grid point bytes `values` and
    /// sign bits `signs` (bit `j` for weight `at + j`).
    #[inline(always)]
    fn put(&mut self, at: usize, values: &[u8], signs: u8) {
        for (j, &v) in values.iter().enumerate() {
            self.mag[at + j] = v;
            self.neg[at + j] = signs & (1 << j) != 0;
        }
    }

    /// `dequantize_row_*`: weight `e` is `db(ls) * grid * (±1)`.
    #[inline(always)]
    fn dequantize(&self, db: impl Fn(f32, u8) -> f32, y: &mut [f32]) {
        for (g, yg) in y.chunks_exact_mut(16).enumerate() {
            let db = db(self.d, self.ls[g]);
            for (j, v) in yg.iter_mut().enumerate() {
                let e = 16 * g + j;
                let sign = if self.neg[e] { -1.0f32 } else { 1.0 };
                *v = db * f32::from(self.mag[e]) * sign;
            }
        }
    }

    /// The eight 32-bit lanes of the AVX2 kernels: `grid * ±q8 * (2*ls + 1)`
    /// summed per lane (integers, exact in any order).
    #[inline(always)]
    fn lanes(&self, q8: &[u8]) -> [i32; 8] {
        let mut l = [0i32; 8];
        for e in 0..QK_K {
            let q = q8[e] as i8;
            let q = if self.neg[e] { q.wrapping_neg() } else { q };
            let sc = 2 * i32::from(self.ls[e / 16]) + 1;
            l[(e % 32) / 4] += i32::from(self.mag[e]) * i32::from(q) * sc;
        }
        l
    }
}

/// Grid point `i` of a table of u64 (8 values) or u32 (4 values).
#[inline(always)]
fn point8(grid: &[u64], i: usize) -> [u8; 8] {
    grid[i].to_le_bytes()
}

#[inline(always)]
fn point4(grid: &[u32], i: usize) -> [u8; 4] {
    grid[i].to_le_bytes()
}

#[inline(always)]
fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

#[inline(always)]
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// `block_iq2_xxs`: `d | qs[32] (u16)`. Each 32-weight chunk is two u32:
/// the first holds four 8-bit grid indices, the second four 7-bit sign
/// fields and (top 4 bits) the chunk's scale.
#[inline(always)]
fn decode_iq2_xxs(xb: &[u8]) -> Lattice {
    let mut b = Lattice::new(&xb[0..2]);
    for ib in 0..8 {
        let q = &xb[2 + 8 * ib..10 + 8 * ib];
        let aux1 = u32_at(q, 4);
        for l in 0..4 {
            let signs = ksigns(aux1 >> (7 * l));
            b.put(
                32 * ib + 8 * l,
                &point8(&IQ2XXS_GRID, usize::from(q[l])),
                signs,
            );
        }
        let ls = (aux1 >> 28) as u8;
        b.ls[2 * ib] = ls;
        b.ls[2 * ib + 1] = ls;
    }
    b
}

/// `block_iq2_xs`: `d | qs[32] (u16) | scales[8]`. Each u16 is a 9-bit grid
/// index and 7 sign bits; each scale byte holds the codes of two groups
/// of 16.
#[inline(always)]
fn decode_iq2_xs(xb: &[u8]) -> Lattice {
    let mut b = Lattice::new(&xb[0..2]);
    for k in 0..32 {
        let q = u16_at(xb, 2 + 2 * k);
        let signs = ksigns(u32::from(q >> 9));
        b.put(8 * k, &point8(&IQ2XS_GRID, usize::from(q & 511)), signs);
    }
    for (ib, &s) in xb[66..74].iter().enumerate() {
        b.ls[2 * ib] = s & 0xf;
        b.ls[2 * ib + 1] = s >> 4;
    }
    b
}

/// `block_iq2_s`: `d | qs[32] | signs[32] | qh[8] | scales[8]`. Grid indices
/// have 10 bits (2 high bits per index in `qh`, one byte per chunk); all 8
/// signs are stored.
#[inline(always)]
fn decode_iq2_s(xb: &[u8]) -> Lattice {
    let mut b = Lattice::new(&xb[0..2]);
    let (qs, signs, qh) = (&xb[2..34], &xb[34..66], &xb[66..74]);
    for ib in 0..8 {
        for l in 0..4 {
            let k = 4 * ib + l;
            let hi = (usize::from(qh[ib]) << (8 - 2 * l)) & 0x300;
            let idx = usize::from(qs[k]) | hi;
            b.put(8 * k, &point8(&IQ2S_GRID, idx), signs[k]);
        }
    }
    for (ib, &s) in xb[74..82].iter().enumerate() {
        b.ls[2 * ib] = s & 0xf;
        b.ls[2 * ib + 1] = s >> 4;
    }
    b
}

/// `block_iq3_xxs`: `d | qs[64] | scales_and_signs[8] (u32)`. Eight 8-bit
/// grid indices per chunk (4 weights each); the chunk's u32 holds four
/// 7-bit sign fields (one per 8 weights) and the scale in its top 4 bits.
#[inline(always)]
fn decode_iq3_xxs(xb: &[u8]) -> Lattice {
    let mut b = Lattice::new(&xb[0..2]);
    let qs = &xb[2..66];
    for ib in 0..8 {
        let aux = u32_at(xb, 66 + 4 * ib);
        for l in 0..4 {
            let signs = ksigns(aux >> (7 * l));
            let at = 32 * ib + 8 * l;
            let g1 = point4(&IQ3XXS_GRID, usize::from(qs[8 * ib + 2 * l]));
            let g2 = point4(&IQ3XXS_GRID, usize::from(qs[8 * ib + 2 * l + 1]));
            b.put(at, &g1, signs);
            b.put(at + 4, &g2, signs >> 4);
        }
        let ls = (aux >> 28) as u8;
        b.ls[2 * ib] = ls;
        b.ls[2 * ib + 1] = ls;
    }
    b
}

/// `block_iq3_s`: `d | qs[64] | qh[8] | signs[32] | scales[4]`. Grid
/// indices have 9 bits (the ninth in `qh`, one byte per chunk, bit `k` for
/// index `k`); each scale byte holds the codes of two chunks.
#[inline(always)]
fn decode_iq3_s(xb: &[u8]) -> Lattice {
    let mut b = Lattice::new(&xb[0..2]);
    let (qs, qh, signs, scales) = (&xb[2..66], &xb[66..74], &xb[74..106], &xb[106..110]);
    for ib in 0..8 {
        let h = usize::from(qh[ib]);
        for l in 0..4 {
            let i1 = usize::from(qs[8 * ib + 2 * l]) | ((h << (8 - 2 * l)) & 256);
            let i2 = usize::from(qs[8 * ib + 2 * l + 1]) | ((h << (7 - 2 * l)) & 256);
            let s = signs[4 * ib + l];
            let at = 32 * ib + 8 * l;
            b.put(at, &point4(&IQ3S_GRID, i1), s);
            b.put(at + 4, &point4(&IQ3S_GRID, i2), s >> 4);
        }
        let ls = (scales[ib / 2] >> (4 * (ib % 2))) & 0xf;
        b.ls[2 * ib] = ls;
        b.ls[2 * ib + 1] = ls;
    }
    b
}

/// The dequantizers' scale of the IQ2 types: `d * (0.5 + ls) * 0.25`.
#[inline(always)]
fn db_iq2(d: f32, ls: u8) -> f32 {
    d * (0.5 + f32::from(ls)) * 0.25
}

/// `dequantize_row_iq2_xxs`.
pub fn dequantize_row_iq2_xxs(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, IQ2XXS);
    for (xb, yb) in x.chunks_exact(IQ2XXS).zip(y.chunks_exact_mut(QK_K)) {
        decode_iq2_xxs(xb).dequantize(db_iq2, yb);
    }
}

/// `dequantize_row_iq2_xs`.
pub fn dequantize_row_iq2_xs(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, IQ2XS);
    for (xb, yb) in x.chunks_exact(IQ2XS).zip(y.chunks_exact_mut(QK_K)) {
        decode_iq2_xs(xb).dequantize(db_iq2, yb);
    }
}

/// `dequantize_row_iq2_s`.
pub fn dequantize_row_iq2_s(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, IQ2S);
    for (xb, yb) in x.chunks_exact(IQ2S).zip(y.chunks_exact_mut(QK_K)) {
        decode_iq2_s(xb).dequantize(db_iq2, yb);
    }
}

/// `dequantize_row_iq3_xxs`: `db = d * (0.5 + ls) * 0.5`.
pub fn dequantize_row_iq3_xxs(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, IQ3XXS);
    for (xb, yb) in x.chunks_exact(IQ3XXS).zip(y.chunks_exact_mut(QK_K)) {
        decode_iq3_xxs(xb).dequantize(|d, ls| d * (0.5 + f32::from(ls)) * 0.5, yb);
    }
}

/// `dequantize_row_iq3_s`: `db = d * (1 + 2*ls)` (the odd integer made in
/// `int`, then converted).
pub fn dequantize_row_iq3_s(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, IQ3S);
    for (xb, yb) in x.chunks_exact(IQ3S).zip(y.chunks_exact_mut(QK_K)) {
        decode_iq3_s(xb).dequantize(|d, ls| d * (1 + 2 * i32::from(ls)) as f32, yb);
    }
}

/// The shared shape of the five AVX2 kernels: per block `fma(dx * dy,
/// lanes, acc)`, then `hsum_float_8`.
#[inline(always)]
fn dot_lattice(
    n: usize,
    w: &[u8],
    block_bytes: usize,
    a: &[u8],
    decode: impl Fn(&[u8]) -> Lattice,
) -> f32 {
    let mut acc = [0f32; 8];
    for (xb, yb) in w
        .chunks_exact(block_bytes)
        .zip(a.chunks_exact(Q8K_BYTES))
        .take(n / QK_K)
    {
        let x = decode(xb);
        let y = Q8K(yb);
        fma_lanes(&mut acc, x.d * y.d(), &x.lanes(y.qs()));
    }
    hsum8(&acc)
}

/// `ggml_vec_dot_iq2_xxs_q8_K`.
#[inline(always)]
pub fn vec_dot_iq2_xxs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    0.125 * dot_lattice(n, w, IQ2XXS, a, decode_iq2_xxs)
}

/// `ggml_vec_dot_iq2_xs_q8_K`.
#[inline(always)]
pub fn vec_dot_iq2_xs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    0.125 * dot_lattice(n, w, IQ2XS, a, decode_iq2_xs)
}

/// `ggml_vec_dot_iq2_s_q8_K`.
#[inline(always)]
pub fn vec_dot_iq2_s_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    0.125 * dot_lattice(n, w, IQ2S, a, decode_iq2_s)
}

/// `ggml_vec_dot_iq3_xxs_q8_K`.
#[inline(always)]
pub fn vec_dot_iq3_xxs_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    0.25 * dot_lattice(n, w, IQ3XXS, a, decode_iq3_xxs)
}

/// `ggml_vec_dot_iq3_s_q8_K` (no final factor).
#[inline(always)]
pub fn vec_dot_iq3_s_q8_k(n: usize, w: &[u8], a: &[u8]) -> f32 {
    dot_lattice(n, w, IQ3S, a, decode_iq3_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::float::write_f16;
    use proptest::prelude::*;

    #[test]
    fn implied_sign_makes_an_even_count() {
        // ggml's ksigns_iq2xs starts 0, 129, 130, 3 and ends 255.
        assert_eq!(
            [ksigns(0), ksigns(1), ksigns(2), ksigns(3)],
            [0, 129, 130, 3]
        );
        assert_eq!(ksigns(127), 255);
        for i in 0..128 {
            assert_eq!(ksigns(i) & 127, i as u8);
            assert_eq!(ksigns(i).count_ones() % 2, 0, "ksigns({i})");
        }
    }

    /// Every grid value is one of the levels gguf-py packs them as: 8, 25,
    /// 43 for IQ2; 4 + 8k (and 62 for the top) for IQ3_XXS; odd 1..=15 for
    /// IQ3_S. Grid points are distinct.
    #[test]
    fn grids_hold_their_levels() {
        let iq2 = [8u8, 25, 43];
        let iq3xxs = [4u8, 12, 20, 28, 36, 44, 52, 62];
        for grid in [&IQ2XXS_GRID[..], &IQ2XS_GRID[..], &IQ2S_GRID[..]] {
            assert!(grid
                .iter()
                .all(|p| p.to_le_bytes().iter().all(|v| iq2.contains(v))));
            assert!(grid.windows(2).all(|w| w[0] < w[1]));
        }
        assert!(IQ3XXS_GRID
            .iter()
            .all(|p| p.to_le_bytes().iter().all(|v| iq3xxs.contains(v))));
        assert!(IQ3S_GRID
            .iter()
            .all(|p| p.to_le_bytes().iter().all(|v| v % 2 == 1 && *v <= 15)));
        assert!(IQ3XXS_GRID.windows(2).all(|w| w[0] < w[1]));
        assert!(IQ3S_GRID.windows(2).all(|w| w[0] < w[1]));
    }

    /// An IQ2_XXS block by hand: chunk 0 with scale code 3 (db = 1.0 *
    /// 3.5 * 0.25 = 0.875), grid points 0 (all 8) and 1 (43 then seven 8s),
    /// the first group's signs field 1 (weights 0 and, by parity, 7 negative).
    #[test]
    fn iq2_xxs_block_by_hand() {
        let mut x = [0u8; IQ2XXS];
        write_f16(&mut x[0..2], 1.0);
        x[2..6].copy_from_slice(&[0, 1, 0, 0]);
        x[6..10].copy_from_slice(&((3u32 << 28) | 1).to_le_bytes());
        let mut y = [0f32; QK_K];
        dequantize_row_iq2_xxs(&x, &mut y);
        assert_eq!(y[..8], [-7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, -7.0]);
        assert_eq!(y[8..16], [37.625, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0]);
        // Chunk 1 is all zero bytes: scale code 0, db = 0.125, value 8.
        assert!(y[32..64].iter().all(|&v| v == 1.0));
    }

    /// An IQ3_S block by hand: d = 0.5 and scale code 2 (db = 0.5 * 5),
    /// grid index 0 (four 1s) and, with the ninth bit from `qh`, index 256
    /// (ggml's `iq3s_grid[256]` is 0x05090507: 7, 5, 9, 5).
    #[test]
    fn iq3_s_block_by_hand() {
        let mut x = [0u8; IQ3S];
        write_f16(&mut x[0..2], 0.5);
        x[106] = 2; // scales[0], low nibble: chunk 0
        x[66] = 0b10; // qh[0]: ninth bit of index 1 of chunk 0
        x[74] = 0b0001_0001; // signs[0]: weights 0 and 4 negative
        let mut y = [0f32; QK_K];
        dequantize_row_iq3_s(&x, &mut y);
        assert_eq!(y[..8], [-2.5, 2.5, 2.5, 2.5, -17.5, 12.5, 22.5, 12.5]);
        // Chunk 1: scale code 0 (db = 0.5), index 0, no signs.
        assert!(y[32..64].iter().all(|&v| v == 0.5));
    }

    /// An IQ2_XS block by hand: 9-bit index 511 (ggml's `iq2xs_grid[511]`:
    /// eight 43s), scale codes 1 and 5 for the two halves of chunk 0 (db
    /// 0.375 and 1.375), signs field 1 on weights 16..24.
    #[test]
    fn iq2_xs_block_by_hand() {
        let mut x = [0u8; IQ2XS];
        write_f16(&mut x[0..2], 1.0);
        x[2..4].copy_from_slice(&511u16.to_le_bytes());
        x[6..8].copy_from_slice(&(511u16 | (1 << 9)).to_le_bytes());
        x[66] = 0x51;
        let mut y = [0f32; QK_K];
        dequantize_row_iq2_xs(&x, &mut y);
        assert!(y[..8].iter().all(|&v| v == 16.125));
        let s = 59.125;
        assert_eq!(y[16..24], [-s, s, s, s, s, s, s, -s]);
    }

    /// An IQ2_S block by hand: `qh[0] = 0b1000_0001` gives group 0 index 256
    /// (`iq2s_grid[256]`: 25 25 25 25 25 8 25 8) and group 3 index 512
    /// (25 25 43 8 25 8 8 25); scale code 0 (db 0.125); sign byte 3 = 0x80
    /// negates weight 31 alone (IQ2_S stores all eight signs).
    #[test]
    fn iq2_s_block_by_hand() {
        let mut x = [0u8; IQ2S];
        write_f16(&mut x[0..2], 1.0);
        x[66] = 0b1000_0001;
        x[34 + 3] = 0x80;
        let mut y = [0f32; QK_K];
        dequantize_row_iq2_s(&x, &mut y);
        assert_eq!(y[..8], [3.125, 3.125, 3.125, 3.125, 3.125, 1.0, 3.125, 1.0]);
        assert_eq!(
            y[24..32],
            [3.125, 3.125, 5.375, 1.0, 3.125, 1.0, 1.0, -3.125]
        );
    }

    /// An IQ3_XXS block by hand: scale code 1 (db = 1.5 * 0.5), indices 1
    /// (`iq3xxs_grid[1]`: 20 4 4 4) and 255 (4 28 52 62), signs field 3.
    #[test]
    fn iq3_xxs_block_by_hand() {
        let mut x = [0u8; IQ3XXS];
        write_f16(&mut x[0..2], 1.0);
        x[2] = 1;
        x[3] = 255;
        x[66..70].copy_from_slice(&((1u32 << 28) | 3).to_le_bytes());
        let mut y = [0f32; QK_K];
        dequantize_row_iq3_xxs(&x, &mut y);
        assert_eq!(y[..8], [-15.0, -3.0, 3.0, 3.0, 3.0, 21.0, 39.0, 46.5]);
    }

    /// ggml negates activations with `_mm256_sign_epi8` (or xor/sub), which
    /// leaves -128 as -128: a negative weight times -128 counts as if the
    /// weight were positive.
    #[test]
    fn negated_minus_128_stays_minus_128() {
        let mut x = [0u8; IQ3S];
        write_f16(&mut x[0..2], 1.0);
        x[74..106].fill(0xff); // every weight negative; index 0: all 1s
        let mut a = [0u8; Q8K_BYTES];
        a[0..4].copy_from_slice(&1.0f32.to_le_bytes());
        a[4..260].fill(0x80);
        // 256 weights of -1 (scale 2*0 + 1) against -128 read as -128.
        assert_eq!(vec_dot_iq3_s_q8_k(QK_K, &x, &a), -32768.0);
        let mut y = [0f32; QK_K];
        dequantize_row_iq3_s(&x, &mut y);
        assert!(y.iter().all(|&v| v == -1.0));
    }

    type Kernels = (usize, fn(&[u8], &mut [f32]), fn(usize, &[u8], &[u8]) -> f32);
    const KERNELS: [Kernels; 5] = [
        (IQ2XXS, dequantize_row_iq2_xxs, vec_dot_iq2_xxs_q8_k),
        (IQ2XS, dequantize_row_iq2_xs, vec_dot_iq2_xs_q8_k),
        (IQ2S, dequantize_row_iq2_s, vec_dot_iq2_s_q8_k),
        (IQ3XXS, dequantize_row_iq3_xxs, vec_dot_iq3_xxs_q8_k),
        (IQ3S, dequantize_row_iq3_s, vec_dot_iq3_s_q8_k),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// On random blocks (f16 scales in [2^-10, 1)) and activations
        /// without -128, each dot product is the f64 sum of dequantized
        /// weights times dequantized activations, within 4 blocks' FMA
        /// roundings and the final fold: 2^-20 of the sum of |terms|.
        #[test]
        fn dot_is_the_sum_of_dequantized_products(
            bytes in prop::collection::vec(any::<u8>(), 4 * IQ3S),
            q in prop::collection::vec(-127i8..=127, 4 * QK_K),
            dx in prop::collection::vec(1.0f32 / 1024.0..1.0, 4),
            dy in prop::collection::vec(1.0f32 / 1024.0..1.0, 4),
        ) {
            let n = 4 * QK_K;
            let mut a = vec![0u8; 4 * Q8K_BYTES];
            for (b, ab) in a.chunks_exact_mut(Q8K_BYTES).enumerate() {
                ab[0..4].copy_from_slice(&dy[b].to_le_bytes());
                for j in 0..QK_K {
                    ab[4 + j] = q[QK_K * b + j] as u8;
                }
            }
            for (bb, dequantize, dot) in KERNELS {
                let mut w = bytes[..4 * bb].to_vec();
                for (b, wb) in w.chunks_exact_mut(bb).enumerate() {
                    write_f16(&mut wb[0..2], dx[b]);
                }
                let mut y = vec![0f32; n];
                dequantize(&w, &mut y);
                let (mut sum, mut mag) = (0f64, 0f64);
                for i in 0..n {
                    let t = f64::from(y[i]) * f64::from(dy[i / QK_K]) * f64::from(q[i]);
                    sum += t;
                    mag += t.abs();
                }
                let got = f64::from(dot(n, &w, &a));
                prop_assert!((got - sum).abs() <= mag / f64::from(1u32 << 20),
                    "block of {bb} bytes: {got} vs {sum} (sum of |terms| {mag})");
            }
        }
    }
}
