//! Searched scales and offsets: for each group, the stored pair (scale and
//! bias, or scale alone) that minimizes the weighted squared error of the
//! values the format gives back, with the pair already rounded to the
//! dtype it is stored in.
//!
//! The format decides nothing about how its parameters were chosen:
//! mlx-lm dequantizes `scale*q + bias` whatever produced them. Round to
//! nearest (mlx's `quantize`, [`super::affine`]) derives them from the
//! group's min and max and pins the larger-magnitude extreme; a search
//! tries several scales around `(max-min)/nmax`, lets the codes follow,
//! fits scale and bias to those codes by weighted least squares, and keeps
//! the best. The idea is llama.cpp's `make_qkx2_quants`; two things
//! differ. The error is measured after the pair is rounded to its storage
//! dtype (bf16 keeps 8 significant bits, so the rounding moves a 4-bit
//! reconstruction noticeably), with the codes re-picked for the rounded
//! pair. And the caller's starting pair (round to nearest's) is always a
//! candidate, so the result is never worse than it by the objective.
//!
//! Everything is f32 except the 2x2 least-squares solves (f64). Loops run
//! in 8 lanes ([`F32x8`]: scalar arrays on the baseline, one AVX register
//! with AVX2 and AVX-512), each candidate's sums in one pass over the
//! group; the lane order is fixed, so the result depends on the inputs
//! alone.

use super::affine;
use super::numeric::round_to;
use super::MlxDtype;
pub(crate) use crate::simd::lanes::F32x8;

/// Lanes of the accumulation loops (groups are multiples of 8 values).
const LANES: usize = 8;

/// What a code means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `scale*q + bias`, q in `0..=nmax` (MLX affine, GGML Q4_1 and Q5_1).
    Affine,
    /// `(q - offset) * scale`, q in `0..=nmax`, no bias (GGML Q4_0, Q5_0).
    Symmetric {
        /// The code that means zero.
        offset: u32,
    },
}

/// The codes and storage of one group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    /// Largest code.
    pub nmax: u32,
    /// Meaning of a code.
    pub form: Form,
    /// Storage dtype of the scale and bias.
    pub dtype: MlxDtype,
}

/// Candidate scales tried around the min-max one: `nmax + RMIN + RDELTA*k`
/// steps over the range, k in `0..=NSTEP` (llama.cpp's Q4_K search uses
/// the same spread).
const RMIN: f32 = -1.0;
const RDELTA: f32 = 0.2;
const NSTEP: usize = 10;

/// Rounds of least squares on the best candidate's codes.
const REFINE: usize = 2;

/// One evaluated pair.
#[derive(Debug, Clone, Copy)]
struct Fit {
    scale: f32,
    bias: f32,
    err: f32,
}

/// The stored value of `v` in `dtype`, or `None` when it is not a finite
/// number.
#[inline]
fn stored(dtype: MlxDtype, v: f64) -> Option<f32> {
    let r = round_to(dtype, v as f32);
    r.is_finite().then_some(r)
}

/// A 16-bit dtype's bits of a value, and the value of bits.
type BitsOf = (fn(f32) -> u16, fn(u16) -> f32);

/// The neighbours of a stored value in its dtype (one step down, one up).
fn neighbours(dtype: MlxDtype, v: f32) -> [f32; 2] {
    // Bits of a 16-bit dtype, and back.
    let (to_bits, from_bits): BitsOf = match dtype {
        MlxDtype::F32 => return [v.next_down(), v.next_up()],
        MlxDtype::F16 => (
            |x| half::f16::from_f32(x).to_bits(),
            |b| half::f16::from_bits(b).to_f32(),
        ),
        MlxDtype::BF16 => (
            |x| (x.to_bits() >> 16) as u16,
            |b| f32::from_bits(u32::from(b) << 16),
        ),
    };
    if v == 0.0 {
        let tiny = from_bits(1);
        return [-tiny, tiny];
    }
    // Sign-magnitude: one step away from zero is bits+1, toward it bits-1.
    let b = to_bits(v);
    let (toward, away) = (from_bits(b - 1), from_bits(b + 1));
    if v > 0.0 {
        [toward, away]
    } else {
        [away, toward]
    }
}

/// The levels a code stands for: `q - offset` in `lo..=hi`, and whether
/// the bias is free (affine) or zero (symmetric). The reconstruction is
/// `level*scale + bias` either way: for the symmetric form ggml computes
/// `(q - offset)*scale`, the same number.
#[derive(Clone, Copy)]
struct Levels {
    lo: f32,
    hi: f32,
    offset: f32,
    free_bias: bool,
}

impl Levels {
    fn of(grid: &Grid) -> Levels {
        match grid.form {
            Form::Affine => Levels {
                lo: 0.0,
                hi: grid.nmax as f32,
                offset: 0.0,
                free_bias: true,
            },
            Form::Symmetric { offset } => Levels {
                lo: -(offset as f32),
                hi: grid.nmax as f32 - offset as f32,
                offset: offset as f32,
                free_bias: false,
            },
        }
    }
}

/// Re-picks the levels of `x` for a stored pair into `out` and returns the
/// weighted squared error of `level*scale + bias`, computed as the
/// format's f32 dequantization does.
#[inline(always)]
fn fit<V: F32x8>(x: &[f32], w: &[f32], lv: &Levels, scale: f32, bias: f32, out: &mut [f32]) -> f32 {
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let (vinv, vs, vb) = (V::splat(inv), V::splat(scale), V::splat(bias));
    let (lo, hi) = (V::splat(lv.lo), V::splat(lv.hi));
    // One pass: each level, then its term of [`levels_error`]'s sum.
    let mut acc = V::splat(0.0);
    for ((xc, wc), oc) in lanes(x).iter().zip(lanes(w)).zip(lanes_mut(out)) {
        let xv = V::load(xc);
        let l = rint_lanes(xv.sub(vb).mul(vinv).clamp(lo, hi));
        l.store(oc);
        let e = xv.sub(l.mul(vs).add(vb));
        acc = acc.add(V::load(wc).mul(e).mul(e));
    }
    acc.sum()
}

/// Round-to-nearest-even per lane of values in `(-2^22, 2^22)` through
/// the float magic number (what `rint` gives for such values).
#[inline(always)]
fn rint_lanes<V: F32x8>(y: V) -> V {
    let magic = V::splat(12_582_912.0);
    y.add(magic).sub(magic)
}

/// `x` in blocks of [`LANES`] (the callers' lengths are multiples of it).
#[inline(always)]
fn lanes(x: &[f32]) -> &[[f32; LANES]] {
    x.as_chunks::<LANES>().0
}

/// [`lanes`], mutable.
#[inline(always)]
fn lanes_mut(x: &mut [f32]) -> &mut [[f32; LANES]] {
    x.as_chunks_mut::<LANES>().0
}

/// The weighted squared error of given levels, in [`fit`]'s arithmetic.
#[inline(always)]
fn levels_error<V: F32x8>(x: &[f32], w: &[f32], scale: f32, bias: f32, levels: &[f32]) -> f32 {
    let (vs, vb) = (V::splat(scale), V::splat(bias));
    let mut acc = V::splat(0.0);
    for ((xc, wc), lc) in lanes(x).iter().zip(lanes(w)).zip(lanes(levels)) {
        let e = V::load(xc).sub(V::load(lc).mul(vs).add(vb));
        acc = acc.add(V::load(wc).mul(e).mul(e));
    }
    acc.sum()
}

/// `sum(x*x)` in 8 lanes (a row's mean square, group by group).
#[inline(always)]
pub(crate) fn sum_squares<V: F32x8>(x: &[f32]) -> f32 {
    let mut acc = V::splat(0.0);
    for xc in lanes(x) {
        let v = V::load(xc);
        acc = acc.add(v.mul(v));
    }
    acc.sum()
}

/// Weighted sums that do not depend on the levels: `[w, w*x, w*x*x]`;
/// `wx` receives `w*x`.
#[inline(always)]
fn value_sums<V: F32x8>(x: &[f32], w: &[f32], wx: &mut [f32]) -> [f64; 3] {
    let (mut s0, mut s1, mut s2) = (V::splat(0.0), V::splat(0.0), V::splat(0.0));
    for ((xc, wc), oc) in lanes(x).iter().zip(lanes(w)).zip(lanes_mut(wx)) {
        let (xv, wv) = (V::load(xc), V::load(wc));
        let p = wv.mul(xv);
        p.store(oc);
        s0 = s0.add(wv);
        s1 = s1.add(p);
        s2 = s2.add(p.mul(xv));
    }
    [s0.sum(), s1.sum(), s2.sum()].map(f64::from)
}

/// Weighted sums of a candidate's levels `l = rint(x*iscale - shift)`
/// (clamped), without storing them: [`level_sums`] of those levels.
#[inline(always)]
fn candidate_sums<V: F32x8>(
    x: &[f32],
    w: &[f32],
    wx: &[f32],
    lv: &Levels,
    iscale: f32,
    shift: f32,
) -> [f64; 3] {
    let (vi, vsh) = (V::splat(iscale), V::splat(shift));
    let (lo, hi) = (V::splat(lv.lo), V::splat(lv.hi));
    let (mut s0, mut s1, mut s2) = (V::splat(0.0), V::splat(0.0), V::splat(0.0));
    for ((xc, wc), pc) in lanes(x).iter().zip(lanes(w)).zip(lanes(wx)) {
        let l = rint_lanes(V::load(xc).mul(vi).sub(vsh).clamp(lo, hi));
        let wl = V::load(wc).mul(l);
        s0 = s0.add(wl);
        s1 = s1.add(wl.mul(l));
        s2 = s2.add(V::load(pc).mul(l));
    }
    [s0.sum(), s1.sum(), s2.sum()].map(f64::from)
}

/// Weighted sums of levels: `[w*l, w*l*l, w*l*x]` (each summed in
/// [`LANES`] lanes), with `wx = w*x`.
#[inline(always)]
fn level_sums<V: F32x8>(w: &[f32], wx: &[f32], levels: &[f32]) -> [f64; 3] {
    let (mut s0, mut s1, mut s2) = (V::splat(0.0), V::splat(0.0), V::splat(0.0));
    for ((wc, pc), lc) in lanes(w).iter().zip(lanes(wx)).zip(lanes(levels)) {
        let l = V::load(lc);
        let wl = V::load(wc).mul(l);
        s0 = s0.add(wl);
        s1 = s1.add(wl.mul(l));
        s2 = s2.add(V::load(pc).mul(l));
    }
    [s0.sum(), s1.sum(), s2.sum()].map(f64::from)
}

/// The least-squares pair for the sums, before rounding, and its weighted
/// squared error: `(scale, bias, sse)` (bias 0 when it is not free), or
/// `None` when the levels do not determine it.
fn solve(v: &[f64; 3], l: &[f64; 3], free_bias: bool) -> Option<(f64, f64, f64)> {
    let [sw, sx, sxx] = *v;
    let [sl, sll, slx] = *l;
    if free_bias {
        let det = sw * sll - sl * sl;
        if det.is_nan() || det <= 0.0 {
            return None;
        }
        let scale = (sw * slx - sl * sx) / det;
        let bias = (sll * sx - sl * slx) / det;
        Some((scale, bias, sxx - scale * slx - bias * sx))
    } else {
        if sll.is_nan() || sll <= 0.0 {
            return None;
        }
        let scale = slx / sll;
        Some((scale, 0.0, sxx - scale * slx))
    }
}

/// The best pair so far and its levels.
struct Best<'a> {
    fit: Fit,
    levels: &'a mut [f32],
}

impl Best<'_> {
    /// Evaluates a stored pair (levels re-picked into `scratch`); keeps it
    /// when it is better (ties keep the earlier one).
    #[inline(always)]
    fn consider<V: F32x8>(
        &mut self,
        x: &[f32],
        w: &[f32],
        lv: &Levels,
        scale: f32,
        bias: f32,
        scratch: &mut [f32],
    ) -> bool {
        if scale == 0.0 || !scale.is_finite() || !bias.is_finite() {
            return false;
        }
        let err = fit::<V>(x, w, lv, scale, bias, scratch);
        if err < self.fit.err {
            self.fit = Fit { scale, bias, err };
            self.levels.copy_from_slice(scratch);
            true
        } else {
            false
        }
    }
}

/// The largest group [`search_group`] takes.
pub(crate) const MAX_N: usize = 128;

/// Working memory of [`search_group`], reused across groups.
pub(crate) struct Scratch {
    best: [f32; MAX_N],
    cur: [f32; MAX_N],
    wx: [f32; MAX_N],
}

impl Scratch {
    pub(crate) fn new() -> Scratch {
        Scratch {
            best: [0.0; MAX_N],
            cur: [0.0; MAX_N],
            wx: [0.0; MAX_N],
        }
    }
}

/// Candidates kept from the cheap pass for the exact evaluation.
const KEEP: usize = 3;

/// Searches the stored pair of one group. `x` holds the values (a multiple
/// of 8, at most [`MAX_N`], finite), `w` their non-negative weights, `start` a
/// stored pair to beat with its codes in `q` (round to nearest's; its bias
/// is ignored for the symmetric form). Writes the codes into `q` and
/// returns the stored scale and bias (bias 0 for the symmetric form).
///
/// `inline(always)`, like everything it calls in its loops, so that the
/// SIMD levels of [`crate::simd`] compile it whole for their instruction
/// sets.
#[inline(always)]
pub(crate) fn search_group<V: F32x8>(
    x: &[f32],
    w: &[f32],
    grid: &Grid,
    start: (f32, f32),
    q: &mut [u8],
    work: &mut Scratch,
) -> (f32, f32) {
    let n = x.len();
    debug_assert!(n.is_multiple_of(LANES) && w.len() == n && q.len() >= n && n <= MAX_N);
    let q = &mut q[..n];
    let lv = Levels::of(grid);
    let dtype = grid.dtype;
    let Scratch {
        best: best_buf,
        cur: scratch_buf,
        wx: wx_buf,
    } = work;
    let scratch = &mut scratch_buf[..n];
    for (l, &c) in best_buf.iter_mut().zip(q.iter()) {
        *l = f32::from(c) - lv.offset;
    }
    let start_bias = if lv.free_bias { start.1 } else { 0.0 };
    // The start's own codes, then the same pair with the codes re-picked.
    let mut best = Best {
        fit: Fit {
            scale: start.0,
            bias: start_bias,
            err: levels_error::<V>(x, w, start.0, start_bias, &best_buf[..n]),
        },
        levels: &mut best_buf[..n],
    };
    best.consider::<V>(x, w, &lv, start.0, start_bias, scratch);

    let (mut lo, mut hi) = (x[0], x[0]);
    for &v in x {
        lo = if v < lo { v } else { lo };
        hi = if v > hi { v } else { hi };
    }
    if hi > lo && best.fit.err > 0.0 {
        let wx = &mut wx_buf[..n];
        let vsums = value_sums::<V>(x, w, wx);
        let wx = &*wx;
        // Candidate inverse scales: the range over `room + RMIN +
        // RDELTA*k` steps; affine levels count from the group minimum,
        // symmetric ones from zero with the larger-magnitude extreme at
        // the end of the level range on its side.
        let (span, room, anchor) = if lv.free_bias {
            (hi - lo, lv.hi, lo)
        } else {
            let ext = if lo.abs() > hi.abs() { lo } else { hi };
            let room = if ext < 0.0 { -lv.lo } else { lv.hi };
            (ext.abs(), room, 0.0)
        };
        // The cheap pass: each candidate's least-squares pair and error
        // before rounding; the best KEEP pairs go on to the exact
        // evaluation.
        let mut kept: [(f64, f64, f64); KEEP] = [(f64::INFINITY, 0.0, 0.0); KEEP];
        for k in 0..=NSTEP {
            let iscale = (room + RMIN + RDELTA * k as f32) / span;
            if !iscale.is_finite() || iscale <= 0.0 {
                continue;
            }
            let lsums = candidate_sums::<V>(x, w, wx, &lv, iscale, anchor * iscale);
            let Some((s, b, sse)) = solve(&vsums, &lsums, lv.free_bias) else {
                continue;
            };
            if sse < kept[KEEP - 1].0 {
                let mut i = KEEP - 1;
                while i > 0 && sse < kept[i - 1].0 {
                    kept[i] = kept[i - 1];
                    i -= 1;
                }
                kept[i] = (sse, s, b);
            }
        }
        for &(sse, s, b) in &kept {
            if !sse.is_finite() {
                break;
            }
            if let (Some(s), Some(b)) = (stored(dtype, s), stored(dtype, b)) {
                best.consider::<V>(x, w, &lv, s, b, scratch);
            }
        }
        // Refit the winner to its own levels until it stops improving.
        for _ in 0..REFINE {
            let lsums = level_sums::<V>(w, wx, best.levels);
            let Some((s, b, _)) = solve(&vsums, &lsums, lv.free_bias) else {
                break;
            };
            let (Some(s), Some(b)) = (stored(dtype, s), stored(dtype, b)) else {
                break;
            };
            if (s, b) == (best.fit.scale, best.fit.bias)
                || !best.consider::<V>(x, w, &lv, s, b, scratch)
            {
                break;
            }
        }
        // The scale's neighbours in the dtype, each with the bias refitted
        // to the current levels (the weighted mean of x - scale*level),
        // then the bias's neighbours.
        let lsums = level_sums::<V>(w, wx, best.levels);
        for s in neighbours(dtype, best.fit.scale) {
            let b = if lv.free_bias && vsums[0] > 0.0 {
                match stored(dtype, (vsums[1] - f64::from(s) * lsums[0]) / vsums[0]) {
                    Some(b) => b,
                    None => continue,
                }
            } else {
                best.fit.bias
            };
            best.consider::<V>(x, w, &lv, s, b, scratch);
        }
    }
    for (c, &l) in q.iter_mut().zip(best.levels.iter()) {
        *c = (l + lv.offset) as u8;
    }
    (best.fit.scale, best.fit.bias)
}

/// One row of MLX affine quantization with searched pairs, the row
/// widened to f32 (finite): for each group of `group` values, mlx's own
/// pair and codes ([`super::affine::quantize_group_fast`]), the weights
/// ([`value_weights`], with the row's mean square), then
/// [`search_group`]. Writes each value's code into `codes` and each
/// group's stored (scale, bias) into `pairs`. The definition of
/// [`super::quantize_search`]; [`crate::simd`] compiles it per level.
#[inline(always)]
pub(crate) fn search_row<V: F32x8>(
    x: &[f32],
    importance: Option<&[f32]>,
    group: usize,
    bits: u32,
    dtype: MlxDtype,
    codes: &mut [u8],
    pairs: &mut [(f32, f32)],
) {
    let mut sum2 = 0f64;
    for g in x.chunks_exact(group) {
        sum2 += f64::from(sum_squares::<V>(g));
    }
    let sigma2 = (sum2 / x.len() as f64) as f32;
    let grid = Grid {
        nmax: (1u32 << bits) - 1,
        form: Form::Affine,
        dtype,
    };
    let mut work = Scratch::new();
    let mut weights = [0f32; MAX_N];
    for (g, ((xg, q), pair)) in x
        .chunks_exact(group)
        .zip(codes.chunks_exact_mut(group))
        .zip(pairs.iter_mut())
        .enumerate()
    {
        let w = &mut weights[..group];
        let start = match bits {
            1 => affine::quantize_group_fast::<1>(xg, dtype, q),
            2 => affine::quantize_group_fast::<2>(xg, dtype, q),
            3 => affine::quantize_group_fast::<3>(xg, dtype, q),
            4 => affine::quantize_group_fast::<4>(xg, dtype, q),
            5 => affine::quantize_group_fast::<5>(xg, dtype, q),
            6 => affine::quantize_group_fast::<6>(xg, dtype, q),
            _ => affine::quantize_group_fast::<8>(xg, dtype, q),
        };
        value_weights(
            xg,
            sigma2,
            importance.map(|imp| &imp[g * group..(g + 1) * group]),
            w,
        );
        *pair = search_group::<V>(xg, w, &grid, start, q, &mut work);
    }
}

/// The weighted squared error of stored codes under a stored pair, as the
/// format's f32 dequantization reconstructs them (in f64: the tests'
/// yardstick).
#[cfg(test)]
pub(crate) fn group_error(
    x: &[f32],
    w: &[f32],
    grid: &Grid,
    scale: f32,
    bias: f32,
    q: &[u8],
) -> f64 {
    let mut e2 = 0f64;
    for ((&xi, &wi), &qi) in x.iter().zip(w).zip(q) {
        let l = f32::from(qi);
        let r = match grid.form {
            Form::Affine => l * scale + bias,
            Form::Symmetric { offset } => (l - offset as f32) * scale,
        };
        let e = f64::from(xi - r);
        e2 += f64::from(wi) * e * e;
    }
    e2
}

/// The weights of a group's values: `sqrt(sigma2 + x^2)` with `sigma2`
/// the mean square of the row (the weighting llama.cpp's legacy
/// quantizers apply to an imatrix), times the column's importance when
/// one is given. The `sqrt(sigma2 + x^2)` factor alone measured better
/// than plain squared error, `x^2` and `rms + |x|` on SmolLM2's KL
/// divergence; with an importance vector it also did better than the
/// importance alone at 3 bits.
#[inline(always)]
pub(crate) fn value_weights(x: &[f32], sigma2: f32, importance: Option<&[f32]>, w: &mut [f32]) {
    match importance {
        Some(imp) => {
            for ((wi, &xi), &h) in w.iter_mut().zip(x).zip(imp) {
                *wi = h * (sigma2 + xi * xi).sqrt();
            }
        }
        None => {
            for (wi, &xi) in w.iter_mut().zip(x) {
                *wi = (sigma2 + xi * xi).sqrt();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::affine;
    use super::super::MlxVariant;
    use super::*;
    use proptest::prelude::*;

    /// Normal-ish draws from a fixed xorshift stream.
    fn normals(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        (0..n)
            .map(|_| (next() + next() + next() + next() - 2.0) * 1.7)
            .collect()
    }

    fn stored_in(dtype: MlxDtype, v: f32) -> bool {
        round_to(dtype, v) == v
    }

    /// Searches one group from mlx's own pair; returns (search error, mlx
    /// error) by the weighted objective, checking the invariants.
    fn check_group(x: &[f32], w: &[f32], bits: u32, dtype: MlxDtype) -> (f64, f64) {
        let n = x.len();
        let xs: Vec<f32> = x.iter().map(|&v| round_to(dtype, v)).collect();
        let mut q = vec![0u8; n];
        let (s0, b0) = affine::quantize_group_ref(&xs, bits, MlxVariant::Cpu, dtype, &mut q);
        let grid = Grid {
            nmax: (1 << bits) - 1,
            form: Form::Affine,
            dtype,
        };
        let rtn = group_error(&xs, w, &grid, s0, b0, &q);
        let (s, b) = search_group::<[f32; 8]>(&xs, w, &grid, (s0, b0), &mut q, &mut Scratch::new());
        assert!(stored_in(dtype, s) && stored_in(dtype, b), "{s} {b}");
        assert!(q.iter().all(|&c| u32::from(c) <= grid.nmax));
        (group_error(&xs, w, &grid, s, b, &q), rtn)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// By the weighted objective, the search never loses to mlx's
        /// round to nearest on the same group (f32 sums against f64 ones
        /// differ in the last bits, hence the 1e-5).
        #[test]
        fn never_worse_than_round_to_nearest(
            seed in any::<u64>(),
            bits in prop::sample::select(vec![2u32, 3, 4, 5, 6, 8]),
            gs in prop::sample::select(vec![32usize, 64, 128]),
            dtype in prop::sample::select(vec![MlxDtype::F32, MlxDtype::F16, MlxDtype::BF16]),
            scale_exp in -12i32..4,
            weighted in any::<bool>(),
        ) {
            let scale = 2f32.powi(scale_exp);
            let x: Vec<f32> = normals(seed, gs).iter().map(|v| v * scale).collect();
            let w: Vec<f32> = if weighted {
                normals(seed ^ 0x5555, gs).iter().map(|v| v * v).collect()
            } else {
                vec![1.0; gs]
            };
            let (search, rtn) = check_group(&x, &w, bits, dtype);
            prop_assert!(search <= rtn * (1.0 + 1e-5) + 1e-30, "search {search} rtn {rtn}");
        }

        /// Constant, two-valued and zero groups stay exact where mlx's are.
        #[test]
        fn degenerate_groups_keep_their_values(
            v in -1000.0f32..1000.0,
            u in -1000.0f32..1000.0,
            bits in prop::sample::select(vec![2u32, 3, 4, 8]),
        ) {
            for x in [vec![v; 64], vec![0.0; 64], (0..64).map(|i| if i % 2 == 0 { v } else { u }).collect()] {
                let w = vec![1.0; 64];
                let (search, rtn) = check_group(&x, &w, bits, MlxDtype::F32);
                prop_assert!(search <= rtn * (1.0 + 1e-5) + 1e-30);
            }
        }
    }

    #[test]
    fn search_beats_round_to_nearest_on_normal_weights() {
        // Gaussian groups, the default weights: the search should cut the
        // weighted squared error well below mlx's at 3 and 4 bits.
        for (bits, want) in [(3u32, 0.8), (4, 0.85)] {
            let (mut s, mut r) = (0.0, 0.0);
            for g in 0..500 {
                let x = normals(g, 64);
                let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / 64.0;
                let mut w = vec![0f32; 64];
                value_weights(&x, sigma2, None, &mut w);
                let (a, b) = check_group(&x, &w, bits, MlxDtype::BF16);
                s += a;
                r += b;
            }
            eprintln!("{bits} bits: search/rtn error ratio {}", s / r);
            assert!(
                s / r < want,
                "{bits} bits: search/rtn error ratio {}",
                s / r
            );
        }
    }

    #[test]
    fn neighbours_are_adjacent_dtype_values() {
        for dtype in [MlxDtype::F16, MlxDtype::BF16, MlxDtype::F32] {
            for v in [1.0f32, -1.0, 0.0078125, -3.5, 0.0] {
                let [down, up] = neighbours(dtype, v);
                assert!(down < v && v < up, "{dtype:?} {v}: {down} {up}");
                assert!(stored_in(dtype, down) && stored_in(dtype, up));
                // Nothing representable in between.
                let mid_lo = round_to(dtype, (down + v) / 2.0);
                assert!(mid_lo == down || mid_lo == v);
            }
        }
    }

    use super::super::{quantize_search, quantize_search_ref, MlxInput, MlxParams};

    #[test]
    fn matrices_are_the_same_on_any_thread_count() {
        let (rows, cols) = (29, 256);
        let x = normals(11, rows * cols);
        let imp: Vec<f32> = normals(12, cols).iter().map(|v| v * v).collect();
        let h: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
        let b: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
        for input in [MlxInput::F32(&x), MlxInput::F16(&h), MlxInput::BF16(&b)] {
            for (bits, gs) in [(3, 64), (4, 32), (8, 128)] {
                let p = MlxParams::affine(bits, gs);
                for importance in [None, Some(imp.as_slice())] {
                    let want = quantize_search_ref(input, cols, &p, importance).unwrap();
                    for threads in [1, 2, 3] {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap();
                        let got = pool
                            .install(|| quantize_search(input, cols, &p, importance))
                            .unwrap();
                        assert_eq!(got, want, "{bits} bits, group {gs}, {threads} threads");
                    }
                }
            }
        }
    }

    #[test]
    fn importance_moves_the_error_to_columns_that_matter_less() {
        // Even columns weigh 100x the odd ones: their error must drop.
        let (rows, cols) = (64, 128);
        let x = normals(21, rows * cols);
        let imp: Vec<f32> = (0..cols)
            .map(|c| if c % 2 == 0 { 100.0 } else { 1.0 })
            .collect();
        let p = MlxParams::affine(3, 64);
        let err_even = |importance: Option<&[f32]>| {
            let q = quantize_search(MlxInput::F32(&x), cols, &p, importance).unwrap();
            let back = super::super::dequantize(
                &q.weight,
                q.scales.as_scales(),
                q.biases.as_ref().map(|b| b.as_scales()),
                cols,
                &p,
                super::super::DequantPrecision::F32,
            )
            .unwrap();
            x.iter()
                .zip(&back)
                .enumerate()
                .filter(|(i, _)| i % 2 == 0)
                .map(|(_, (a, b))| f64::from(a - b).powi(2))
                .sum::<f64>()
        };
        let (plain, steered) = (err_even(None), err_even(Some(&imp)));
        eprintln!("even-column error {steered} vs {plain}");
        assert!(
            steered < 0.95 * plain,
            "even-column error {steered} vs {plain}"
        );
    }

    #[test]
    fn refuses_what_it_cannot_search() {
        let x = vec![0.25f32; 64];
        let p = MlxParams::affine(4, 64);
        assert!(quantize_search(MlxInput::F32(&x), 64, &MlxParams::mxfp4(), None).is_err());
        assert!(quantize_search(MlxInput::F32(&x), 64, &p, Some(&[1.0; 63])).is_err());
        let mut neg = vec![1.0f32; 64];
        neg[3] = -1.0;
        assert!(quantize_search(MlxInput::F32(&x), 64, &p, Some(&neg)).is_err());
        let mut bad = x.clone();
        bad[9] = f32::INFINITY;
        match quantize_search(MlxInput::F32(&bad), 64, &p, None) {
            Err(crate::KernelError::NonFinite { index: 9, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_simd_level_gives_the_scalar_definitions_bits() {
        let x = normals(31, 8 * 256);
        let imp: Vec<f32> = normals(32, 256).iter().map(|v| v * v).collect();
        for (bits, group) in [(2, 32), (3, 64), (4, 128), (8, 64)] {
            for dtype in [MlxDtype::F32, MlxDtype::F16, MlxDtype::BF16] {
                for importance in [None, Some(imp.as_slice())] {
                    let row: Vec<f32> = x[..256].iter().map(|&v| round_to(dtype, v)).collect();
                    let (mut codes, mut pairs) = (vec![0u8; 256], vec![(0f32, 0f32); 256 / group]);
                    search_row::<[f32; 8]>(
                        &row, importance, group, bits, dtype, &mut codes, &mut pairs,
                    );
                    for level in crate::simd::available_levels() {
                        let (mut c, mut p) = (vec![0u8; 256], vec![(0f32, 0f32); 256 / group]);
                        crate::simd::mlx_search_row::run(
                            level, &row, importance, group, bits, dtype, &mut c, &mut p,
                        );
                        assert_eq!(c, codes, "{level:?} {bits} bits {dtype:?}");
                        let bits_of = |v: &[(f32, f32)]| {
                            v.iter()
                                .map(|(a, b)| (a.to_bits(), b.to_bits()))
                                .collect::<Vec<_>>()
                        };
                        assert_eq!(
                            bits_of(&p),
                            bits_of(&pairs),
                            "{level:?} {bits} bits {dtype:?}"
                        );
                    }
                }
            }
        }
    }
}
