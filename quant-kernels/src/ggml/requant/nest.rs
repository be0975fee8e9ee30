//! Grids that nest: block types whose every value another type holds
//! exactly, and the block-by-block transcoders between them.
//!
//! Worked out from the dequantizers (see `blocks`):
//! - Q4_0 `(q-8)*d` -> Q5_0 `(q'-16)*d` with q' = q+8, and -> Q8_0 `q'*d`
//!   with q' = q-8: the same product of the same integer and f16, so the
//!   same f32, bit for bit (the sign of zero included).
//! - Q5_0 -> Q8_0: likewise, q' = q-16.
//! - Q4_0 -> Q4_1 / Q5_1 `q*d + m` with the same q codes, the same d and
//!   m = -8d; Q5_0 -> Q5_1 with m = -16d. Multiplying an f16 by 8 or 16
//!   only moves its exponent, so m is exact in f16 unless it overflows
//!   (|d| > 8188 for -8d, |d| > 4094 for -16d: blocks whose values exceed
//!   f16's range, which no f16-scaled model has). In f32, `q*d` is exact
//!   (at most 15 significant bits) and `q*d - 8d` is the exact result
//!   `(q-8)*d`, representable, so the subtraction does not round. One
//!   difference remains: for d < 0 the source's `0*d` is -0.0 and the
//!   target's `8d - 8d` is +0.0; they compare equal.
//! - Q4_1 -> Q5_1: the same d, m and codes, the same expression.
//! - Q4_K -> Q5_K: the same d, dmin, 6-bit scales and mins and codes
//!   (4-bit codes are 5-bit codes with the high bit clear), the same
//!   expression `(d*sc)*q - dmin*m`.
//! - Q3_K -> Q6_K: Q3_K's element is `(d*s)*q` with s = scale-32 in
//!   -32..=31 and q in -4..=3, per 16 elements; Q6_K's is `(d*s)*q` with s
//!   an i8 and q in -32..=31, per 16 elements: the same d, s and q.
//! - Anything -> F32: the dequantized values themselves.
//!
//! And what does not nest: the affine types (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K)
//! into symmetric ones (an offset m is rarely a multiple of the new step);
//! Q5_0/Q5_1 into 4-bit types (32 levels into 16); Q8_0 into anything
//! smaller; legacy blocks (one f16 scale per 32) into K-quants (scales
//! that are 6- or 8-bit multiples of one f16 per 256) and K-quants into
//! legacy types with sub-blocks of 16 and two scales per 32 (Q2_K, Q3_K,
//! Q6_K into Q8_0 need the two scales to share a factor); Q2_K (16
//! elements per scale and min) into Q4_K/Q5_K (32). For those, the grid
//! search in `search` looks for the scales that keep the source's points,
//! block by block.

use half::f16;

use super::blocks::{KAffine, KSym, Legacy, LegacyKind};
use crate::GgmlType;

/// The legacy layout of `ty`.
pub(crate) fn legacy_kind(ty: GgmlType) -> Option<LegacyKind> {
    Some(match ty {
        GgmlType::Q4_0 => LegacyKind::Q4_0,
        GgmlType::Q4_1 => LegacyKind::Q4_1,
        GgmlType::Q5_0 => LegacyKind::Q5_0,
        GgmlType::Q5_1 => LegacyKind::Q5_1,
        GgmlType::Q8_0 => LegacyKind::Q8_0,
        _ => return None,
    })
}

/// True when every block of `from` has an exact counterpart in `to`
/// (a few legacy blocks excepted where m = -8d or -16d overflows f16;
/// [`transcode_block`] reports those). Same-type pairs and float targets
/// are not included: they are copies and dequantizations.
pub fn nests(from: GgmlType, to: GgmlType) -> bool {
    use GgmlType as T;
    matches!(
        (from, to),
        (T::Q4_0, T::Q5_0 | T::Q8_0 | T::Q4_1 | T::Q5_1)
            | (T::Q5_0, T::Q8_0 | T::Q5_1)
            | (T::Q4_1, T::Q5_1)
            | (T::Q4K, T::Q5K)
            | (T::Q3K, T::Q6K)
    )
}

/// Transcodes one block of `from` (its bytes in `src`) into one block of
/// `to` (`dst`) for a pair that [`nests`]. Returns false when this block
/// cannot be held exactly (an f16 overflow of the new offset); `dst` then
/// holds the nearest block, which the caller replaces.
pub(crate) fn transcode_block(from: GgmlType, to: GgmlType, src: &[u8], dst: &mut [u8]) -> bool {
    match (legacy_kind(from), legacy_kind(to)) {
        (Some(kf), Some(kt)) => {
            let mut b = Legacy::read(kf, src);
            let mut exact = true;
            if kt.affine() && !kf.affine() {
                // Symmetric -> affine: codes shift to unsigned, m = -(shift)d.
                let shift = -kf.range().0;
                let m = -(shift as f32) * b.d.to_f32();
                let mh = f16::from_f32(m);
                exact = mh.to_f32() == m;
                b.m = mh;
                b.q.iter_mut().for_each(|q| *q += shift);
            }
            b.write(kt, dst);
            exact
        }
        _ => match (from, to) {
            (GgmlType::Q4K, GgmlType::Q5K) => {
                KAffine::read_q4_k(src).write_q5_k(dst);
                true
            }
            (GgmlType::Q3K, GgmlType::Q6K) => {
                KSym::read_q3_k(src).write_q6_k(dst);
                true
            }
            _ => unreachable!("{from} -> {to} does not nest"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::{dequantize, quantize};

    /// Values spread over many magnitudes, with exact zeros and a block of
    /// negatives, so every code and both signs of d occur.
    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f32;
                let v = (t * 0.917).sin()
                    * (1.0 + (t * 0.013).cos())
                    * 10f32.powi((i / 64 % 7) as i32 - 4);
                if i % 97 == 0 {
                    0.0
                } else if i / 32 % 5 == 3 {
                    -v.abs()
                } else {
                    v
                }
            })
            .collect()
    }

    fn same_values(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| x == y)
    }

    #[test]
    fn every_nesting_dequantizes_to_the_same_values() {
        let n = 256 * 16;
        let x = values(n);
        for from in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q4K,
            GgmlType::Q3K,
        ] {
            let mut src = vec![0u8; from.row_size(n as u64).unwrap() as usize];
            quantize(from, &x, n, None, &mut src).unwrap();
            let mut want = vec![0f32; n];
            dequantize(from, &src, &mut want).unwrap();
            for to in crate::ggml::QUANTIZABLE
                .iter()
                .copied()
                .filter(|&t| nests(from, t))
            {
                let (fb, tb) = (from.type_size() as usize, to.type_size() as usize);
                let mut dst = vec![0u8; to.row_size(n as u64).unwrap() as usize];
                for (s, d) in src.chunks_exact(fb).zip(dst.chunks_exact_mut(tb)) {
                    assert!(transcode_block(from, to, s, d), "{from} -> {to}");
                }
                let mut got = vec![0f32; n];
                dequantize(to, &dst, &mut got).unwrap();
                assert!(same_values(&want, &got), "{from} -> {to} changed a value");
            }
        }
    }

    #[test]
    fn offsets_that_overflow_f16_are_reported() {
        // d = 9000: -8d = -72000 is past f16's largest value.
        let mut blk = [0u8; 18];
        blk[..2].copy_from_slice(&f16::from_f32(9000.0).to_bits().to_le_bytes());
        let mut out = [0u8; 20];
        assert!(!transcode_block(
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            &blk,
            &mut out
        ));
        let mut out = [0u8; 34];
        assert!(transcode_block(
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            &blk,
            &mut out
        ));
        // d = 8188 is the largest whose -8d is exact.
        blk[..2].copy_from_slice(&f16::from_f32(8188.0).to_bits().to_le_bytes());
        let mut out = [0u8; 20];
        assert!(transcode_block(
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            &blk,
            &mut out
        ));
    }
}
