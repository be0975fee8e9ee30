//! f32 vector primitives for inference (dot products, scaled sums),
//! compiled once per SIMD level like the block kernels and giving the same
//! bits at every level: each is a fixed sequence of roundings (no FMA
//! contraction, no reordering), which vectorizing lane-wise cannot change.

use crate::simd;

/// `a . b` with 16 independent accumulators: products summed into
/// accumulator `i % 16` in order, the accumulators folded pairwise
/// (`acc[i] += acc[i + 8]`, then 4, 2, 1), the leftover `len % 16`
/// products summed in order and added last. Panics if the lengths differ.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut out = 0.0;
    simd::dot_f32::run(simd::level(), a, b, &mut out);
    out
}

/// [`dot`] of every row of `w` with every row of `x` (rows of `cols`
/// values): `out[t * rows + r] = dot(w row r, x row t)`, `rows =
/// w.len() / cols`, bit for bit what [`dot`] gives, several products run
/// side by side. Panics if `out` is shorter than `rows * x.len() / cols`.
pub fn dot_tile(w: &[f32], x: &[f32], cols: usize, out: &mut [f32]) {
    simd::dot_tile_at(simd::level(), w, x, cols, out);
}

/// `y[i] += a * x[i]` (the product rounded, then the sum). Panics if the
/// lengths differ.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    simd::axpy_f32::run(simd::level(), a, x, y);
}

/// Softmax of `x` in place: `e^(x - max)` through a fixed polynomial
/// (within 2 ulp of `e^x`; 0 below `e^-86`), summed in f64 in an order
/// fixed by the length, each value then times the f32 reciprocal of the
/// sum. The same bits at every SIMD level.
pub fn softmax(x: &mut [f32]) {
    simd::softmax_f32::run(simd::level(), x);
}

/// `gate[i] = gate[i] / (1 + e^-gate[i]) * up[i]` (SiLU times the up
/// projection) with [`softmax`]'s exponential. Panics if the lengths
/// differ.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    simd::silu_mul_f32::run(simd::level(), gate, up);
}

/// [`dot`] of `q` with each of `out.len()` rows of `rows`, row `j`
/// starting at `j * stride` (attention scores of one query over a cache
/// of keys). Panics if a row runs past the end of `rows`.
pub fn dots(q: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    simd::dots_f32::run(simd::level(), q, rows, stride, out);
}

/// `out = sum_j p[j] * row_j`, row `j` of `rows` starting at
/// `j * stride`: `out` zeroed, then one [`axpy`] per row in order (an
/// attention output over a cache of values). Panics if a row runs past
/// the end of `rows`.
pub fn weighted_sum(p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    simd::weighted_sum_f32::run(simd::level(), p, rows, stride, out);
}

/// A small f32 matrix product: `out[i * ldo + j] = sum_d a[i * lda + d] *
/// b[d * ldb + j]` for `i < m`, `j < n`, `d < k`, each output an FMA chain
/// over `d` in order starting from zero (so blocking, SIMD level and the
/// other rows and columns do not change it). Attention's `Q K^T` (with
/// keys stored transposed) and `P V`. Panics if an index runs past a
/// slice.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
    ldo: usize,
) {
    simd::matmul_f32::run(simd::level(), a, lda, b, ldb, m, k, n, out, ldo);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{available_levels, axpy_f32, dot_f32, silu_mul_f32, softmax_f32};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 1e3
            })
            .collect()
    }

    /// The definition, spelled out scalar.
    fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
        let n16 = a.len() / 16 * 16;
        let mut acc = [0f32; 16];
        for k in 0..n16 {
            acc[k % 16] += a[k] * b[k];
        }
        let mut tail = 0f32;
        for k in n16..a.len() {
            tail += a[k] * b[k];
        }
        for w in [8, 4, 2, 1] {
            for i in 0..w {
                acc[i] += acc[i + w];
            }
        }
        acc[0] + tail
    }

    #[test]
    fn every_level_gives_the_definitions_bits() {
        for n in [0, 1, 15, 16, 17, 64, 100, 576, 1000] {
            let (a, b) = (values(n, 3), values(n, 7));
            let want = dot_scalar(&a, &b);
            let mut y0 = values(n, 11);
            for (y, x) in y0.iter_mut().zip(&a) {
                *y += 0.37 * x;
            }
            for level in available_levels() {
                let mut got = f32::NAN;
                dot_f32::run(level, &a, &b, &mut got);
                assert_eq!(got.to_bits(), want.to_bits(), "dot of {n} at {level:?}");
                let mut y = values(n, 11);
                axpy_f32::run(level, 0.37, &a, &mut y);
                assert!(
                    y.iter().zip(&y0).all(|(g, w)| g.to_bits() == w.to_bits()),
                    "axpy at {level:?}"
                );
            }
            assert_eq!(dot(&a, &b).to_bits(), want.to_bits());
        }
    }

    #[test]
    fn dot_tiles_are_dots_at_every_level() {
        for (rows, toks, cols) in [
            (1, 1, 16),
            (16, 64, 576),
            (5, 7, 100),
            (3, 9, 15),
            (2, 4, 0),
        ] {
            let w = values(rows * cols, 23);
            let x = values(toks * cols, 29);
            for level in available_levels() {
                let mut got = vec![f32::NAN; rows * toks];
                crate::simd::dot_tile_at(level, &w, &x, cols, &mut got);
                for t in 0..toks {
                    for r in 0..rows {
                        let want =
                            dot_scalar(&w[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                        assert_eq!(
                            got[t * rows + r].to_bits(),
                            want.to_bits(),
                            "{rows}x{toks}x{cols} ({r}, {t}) at {level:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_is_an_fma_chain_per_output_at_every_level() {
        for (m, k, n) in [
            (1, 64, 1),
            (3, 64, 77),
            (5, 13, 40),
            (9, 100, 64),
            (4, 1, 33),
        ] {
            let (lda, ldb, ldo) = (k + 3, n + 5, n + 2);
            let a = values(m * lda, 17);
            let b = values(k * ldb, 19);
            let mut want = vec![0f32; m * ldo];
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0f32;
                    for d in 0..k {
                        s = a[i * lda + d].mul_add(b[d * ldb + j], s);
                    }
                    want[i * ldo + j] = s;
                }
            }
            for level in available_levels() {
                let mut got = vec![0f32; m * ldo];
                crate::simd::matmul_f32::run(level, &a, lda, &b, ldb, m, k, n, &mut got, ldo);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(g, w)| g.to_bits() == w.to_bits()),
                    "{m}x{k}x{n} at {level:?}"
                );
            }
        }
    }

    #[test]
    fn batched_forms_equal_their_loops() {
        let (hd, stride, m) = (64, 192, 37);
        let q = values(hd, 5);
        let rows = values(stride * m, 9);
        let mut got = vec![0f32; m];
        dots(&q, &rows, stride, &mut got);
        for (j, g) in got.iter().enumerate() {
            assert_eq!(
                g.to_bits(),
                dot(&q, &rows[j * stride..j * stride + hd]).to_bits()
            );
        }
        let p = values(m, 13);
        let mut out = vec![f32::NAN; hd];
        weighted_sum(&p, &rows, stride, &mut out);
        let mut want = vec![0f32; hd];
        for (j, &pj) in p.iter().enumerate() {
            axpy(pj, &rows[j * stride..j * stride + hd], &mut want);
        }
        assert!(out
            .iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits()));
    }

    /// Distance in units in the last place between two finite f32 of the
    /// same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_and_saturates() {
        use crate::simd::portable::exp_f32;
        // Every 97th f32 of [-86, 88], both ends, the integers.
        let mut xs: Vec<f32> = (0..=4_000_000u32)
            .map(|i| -86.0 + 174.0 * (i as f32 / 4_000_000.0))
            .collect();
        xs.extend((-86..=88).map(|i| i as f32));
        xs.extend([0.0, -0.0, 1e-30, -1e-30, f32::MIN_POSITIVE]);
        for x in xs {
            let want = f64::from(x).exp() as f32;
            let got = exp_f32(x);
            assert!(ulps(got, want) <= 2, "exp({x}): {got} vs {want}");
        }
        assert_eq!(exp_f32(-86.5), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(88.5), f32::INFINITY);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_and_silu_match_f64_and_every_level() {
        for n in [1, 15, 16, 17, 100, 512, 4099] {
            let x: Vec<f32> = values(n, 31).iter().map(|v| v / 50.0).collect();
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = x.iter().map(|&v| f64::from(v - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            let mut got = x.clone();
            softmax(&mut got);
            for (g, w) in got.iter().zip(&e) {
                let w = (w / sum) as f32;
                assert!(ulps(*g, w) <= 4, "softmax of {n}: {g} vs {w}");
            }
            let up = values(n, 37);
            let mut silu = x.clone();
            silu_mul(&mut silu, &up);
            for ((g, &v), &u) in silu.iter().zip(&x).zip(&up) {
                let w = f64::from(v) / (1.0 + (-f64::from(v)).exp()) * f64::from(u);
                assert!(
                    (f64::from(*g) - w).abs() <= 1e-6 * w.abs().max(1e-30),
                    "silu {g} vs {w}"
                );
            }
            for level in available_levels() {
                let mut y = x.clone();
                softmax_f32::run(level, &mut y);
                assert!(
                    y.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{level:?}"
                );
                let mut s = x.clone();
                silu_mul_f32::run(level, &mut s, &up);
                assert!(
                    s.iter().zip(&silu).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{level:?}"
                );
            }
        }
        // A masked-out score (-inf) gets exactly 0.
        let mut x = [0.5, f32::NEG_INFINITY, -0.25];
        softmax(&mut x);
        assert_eq!(x[1], 0.0);
        assert!((x[0] + x[2] - 1.0).abs() < 1e-6);
    }
}
