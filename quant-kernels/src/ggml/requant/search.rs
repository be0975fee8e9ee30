//! The grid search: for a target type whose grid does not contain the
//! source's, choose per block the scales that put the target's points on
//! (or nearest to) the source's points, and measure the block against the
//! source's values.
//!
//! The candidates for a group's step come from the source's grid (its
//! step divided by a small integer k, so that every source point is a
//! target point up to one shift common to the group, the offset's
//! remainder), from the exact common divisor of the group's values (which
//! finds a step holding all of them when one exists), and from a least
//! squares refit of the best candidate. Errors are weighted squared
//! differences against the source values; the caller keeps llama.cpp's
//! block where it is at least as good.

use half::f16;

use super::blocks::{KAffine, KSym, Legacy, LegacyKind, QK_K};
use super::lattice::Lattice;

/// Round half to even by the float trick (x86-64's baseline has no
/// rounding instruction, and `round_ties_even` becomes a libm call): exact
/// for |v| < 2^22, and values past the levels are clamped anyway.
#[inline]
fn rint(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v.clamp(-4.0e6, 4.0e6) + MAGIC) - MAGIC
}

/// Squared error (f32, for ranking candidates) of `x` against the
/// symmetric grid `step*q`, q = the nearest level in `lo..=hi`: the value
/// the Q4_0/Q5_0/Q8_0/Q6_K dequantizers compute for a stored `step`.
#[inline]
fn sym_err(x: &[f32], w: Option<&[f32]>, step: f32, lo: f32, hi: f32) -> f32 {
    let inv = 1.0 / step;
    let e = |v: f32| {
        let q = rint(v * inv).clamp(lo, hi);
        let d = v - q * step;
        d * d
    };
    match w {
        None => x.iter().map(|&v| e(v)).sum(),
        Some(w) => x.iter().zip(w).map(|(&v, &wi)| wi * e(v)).sum(),
    }
}

/// Squared error (f32) of `x` against the affine grid `q*step + offset`,
/// q the nearest level in `0..=q_max` (Q4_1/Q5_1: offset m; Q4_K/Q5_K:
/// offset -dmin*m, which IEEE subtraction gives the same as adding).
#[inline]
fn aff_err(x: &[f32], w: Option<&[f32]>, step: f32, offset: f32, q_max: f32) -> f32 {
    let inv = if step == 0.0 { 0.0 } else { 1.0 / step };
    let e = |v: f32| {
        let q = rint((v - offset) * inv).clamp(0.0, q_max);
        let d = v - (q * step + offset);
        d * d
    };
    match w {
        None => x.iter().map(|&v| e(v)).sum(),
        Some(w) => x.iter().zip(w).map(|(&v, &wi)| wi * e(v)).sum(),
    }
}

/// The nearest level of `v` on a grid with `inv` = 1/step, in `lo..=hi`.
#[inline]
fn level(v: f32, inv: f32, lo: i32, hi: i32) -> i32 {
    let q = rint(v * inv).clamp(lo as f32, hi as f32);
    if q.is_nan() {
        0
    } else {
        q as i32
    }
}

/// Largest k for which the grid's step over k still spans `x` within
/// `levels` levels either side of zero (at least 1).
fn k_feasible(step: f32, amax: f32, levels: f32, cap: u32) -> u32 {
    if amax == 0.0 {
        return 1;
    }
    ((levels * step.abs() / amax).floor() as u32).clamp(1, cap)
}

/// `x = m * 2^e` with m odd (x nonzero and finite).
fn odd_parts(x: f32) -> (u64, i32) {
    let bits = x.abs().to_bits();
    let exp = (bits >> 23) as i32;
    let frac = bits & 0x7f_ffff;
    let (m, e) = if exp == 0 {
        (frac, -149)
    } else {
        (frac | 0x80_0000, exp - 150)
    };
    let tz = m.trailing_zeros();
    (u64::from(m >> tz), e + tz as i32)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The largest step g (a power of two times an integer) of which every
/// value of `x` is an integer multiple, when it is an f32 and no value is
/// more than `max_level` steps from zero; `None` for an all-zero group,
/// values too far apart in magnitude, or a step too fine for the levels.
pub(crate) fn common_step(x: &[f32], max_level: f32) -> Option<f32> {
    let mut e_min = i32::MAX;
    for &v in x {
        if v != 0.0 {
            if !v.is_finite() {
                return None;
            }
            e_min = e_min.min(odd_parts(v).1);
        }
    }
    if e_min == i32::MAX {
        return None;
    }
    let mut g = 0u64;
    let mut top = 0u64;
    for &v in x {
        if v != 0.0 {
            let (m, e) = odd_parts(v);
            let shift = (e - e_min) as u32;
            if shift > 38 {
                return None;
            }
            let big = m << shift;
            top = top.max(big);
            g = gcd(g, big);
            // The step only shrinks from here: give up once the largest
            // value needs more levels than the target has.
            if top as f64 > max_level as f64 * g as f64 {
                return None;
            }
        }
    }
    let step = g as f64 * 2f64.powi(e_min);
    let s = step as f32;
    (f64::from(s) == step).then_some(s)
}

/// Steps worth trying for a group on grids `hints` whose levels reach
/// `levels` either side of zero: each grid's step over k = 1.. as far as
/// the values still fit, and the exact common step of the values.
fn candidate_steps(x: &[f32], hints: &[Lattice], levels: f32, cap: u32, out: &mut Vec<f32>) {
    out.clear();
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    for h in hints {
        if h.step != 0.0 && h.step.is_finite() {
            for k in 1..=k_feasible(h.step, amax, levels, cap) {
                out.push(h.step.abs() / k as f32);
            }
        }
    }
    if let Some(g) = common_step(x, levels) {
        out.push(g);
    }
    if amax > 0.0 {
        out.push(amax / levels);
    }
}

/// The f16 values next to `d` (and `d`).
fn f16_neighbours(d: f16) -> [f16; 3] {
    let b = d.to_bits();
    [
        d,
        f16::from_bits(b.wrapping_add(1)),
        f16::from_bits(b.wrapping_sub(1)),
    ]
}

fn usable(d: f16) -> bool {
    d.is_finite() && d.to_f32() != 0.0
}

/// Best symmetric legacy block (Q4_0, Q5_0, Q8_0) for `x`: the level of
/// each value is its nearest, so a step decides the block.
pub(crate) fn legacy_symmetric(
    kind: LegacyKind,
    x: &[f32],
    w: Option<&[f32]>,
    hints: &[Lattice],
    steps: &mut Vec<f32>,
) -> Legacy {
    let (lo, hi) = match kind {
        // -128 is a valid code, but ggml's own quantizer never writes it
        // and some dot-product kernels negate codes: keep to -127.
        LegacyKind::Q8_0 => (-127, 127),
        k => k.range(),
    };
    let (lof, hif) = (lo as f32, hi as f32);
    candidate_steps(x, hints, hif + 0.5, 32, steps);
    let mut best: Option<(f16, f32)> = None;
    let mut consider = |d: f16| {
        if usable(d) {
            let e = sym_err(x, w, d.to_f32(), lof, hif);
            if best.is_none_or(|b| e < b.1) {
                best = Some((d, e));
            }
        }
    };
    for &s in steps.iter() {
        consider(f16::from_f32(s));
        // A signed grid is lopsided (Q4_0: -8..=7): try both signs.
        if kind != LegacyKind::Q8_0 {
            consider(f16::from_f32(-s));
        }
    }
    let Some((mut d, mut e)) = best else {
        return Legacy {
            d: f16::ZERO,
            m: f16::ZERO,
            q: [0; 32],
        };
    };
    // Refit the step to the chosen levels (least squares), then try its
    // f16 neighbours.
    for _ in 0..2 {
        if e == 0.0 {
            break;
        }
        let inv = 1.0 / d.to_f32();
        let (mut sxq, mut sqq) = (0f64, 0f64);
        for (i, &v) in x.iter().enumerate() {
            let wi = w.map_or(1.0, |w| f64::from(w[i]));
            let q = f64::from(level(v, inv, lo, hi));
            sxq += wi * f64::from(v) * q;
            sqq += wi * q * q;
        }
        let before = e;
        if sqq > 0.0 {
            let refit = f16::from_f64(sxq / sqq);
            for c in f16_neighbours(refit).into_iter().chain(f16_neighbours(d)) {
                if usable(c) {
                    let ec = sym_err(x, w, c.to_f32(), lof, hif);
                    if ec < e {
                        (d, e) = (c, ec);
                    }
                }
            }
        }
        if e >= before {
            break;
        }
    }
    let inv = 1.0 / d.to_f32();
    let mut b = Legacy {
        d,
        m: f16::ZERO,
        q: [0; 32],
    };
    for (q, &v) in b.q.iter_mut().zip(x) {
        *q = level(v, inv, lo, hi);
    }
    b
}

/// Best affine legacy block (Q4_1, Q5_1) for `x`.
pub(crate) fn legacy_affine(
    kind: LegacyKind,
    x: &[f32],
    w: Option<&[f32]>,
    hints: &[Lattice],
) -> Legacy {
    let (_, hi) = kind.range();
    let q_max = hi as f32;
    let (xmin, xmax) = x
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let mut best = (f16::ZERO, f16::ZERO, f32::INFINITY);
    let consider = |best: &mut (f16, f16, f32), d: f16, m: f16| {
        if d.is_finite() && m.is_finite() {
            let e = aff_err(x, w, d.to_f32(), m.to_f32(), q_max);
            if e < best.2 {
                *best = (d, m, e);
            }
        }
    };
    consider(
        &mut best,
        f16::from_f32((xmax - xmin) / q_max),
        f16::from_f32(xmin),
    );
    for h in hints {
        if h.step == 0.0 || !h.step.is_finite() {
            continue;
        }
        // Coarser steps (from a 5-bit source into 4 bits) and finer ones.
        for r in [1.0f32, 2.0, 0.5, 0.25] {
            let d = f16::from_f32(h.step.abs() * r);
            if !usable(d) {
                continue;
            }
            let df = d.to_f32();
            // The source point at or below the smallest value, so the
            // source's points are the target's up to rounding of m.
            let below = h.offset + ((xmin - h.offset) / df + 1e-3).floor() * df;
            consider(&mut best, d, f16::from_f32(below));
            consider(&mut best, d, f16::from_f32(xmin));
        }
    }
    for _ in 0..2 {
        let (d, m, e) = best;
        if e == 0.0 || d.to_f32() == 0.0 {
            break;
        }
        let (df, mf) = (d.to_f32(), m.to_f32());
        let inv = 1.0 / df;
        let (mut s11, mut s1q, mut sqq, mut sx, mut sxq) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for (i, &v) in x.iter().enumerate() {
            let wi = w.map_or(1.0, |w| f64::from(w[i]));
            let q = f64::from(level(v - mf, inv, 0, hi));
            s11 += wi;
            s1q += wi * q;
            sqq += wi * q * q;
            sx += wi * f64::from(v);
            sxq += wi * f64::from(v) * q;
        }
        let det = sqq * s11 - s1q * s1q;
        if det <= 0.0 {
            break;
        }
        let nd = f16::from_f64((sxq * s11 - sx * s1q) / det);
        let nm = f16::from_f64((sqq * sx - s1q * sxq) / det);
        for dd in f16_neighbours(nd) {
            for mm in f16_neighbours(nm) {
                consider(&mut best, dd, mm);
            }
        }
        if best.2 >= e {
            break;
        }
    }
    let (d, m, _) = best;
    let (df, mf) = (d.to_f32(), m.to_f32());
    let inv = if df == 0.0 { 0.0 } else { 1.0 / df };
    let mut b = Legacy { d, m, q: [0; 32] };
    for (q, &v) in b.q.iter_mut().zip(x) {
        *q = level(v - mf, inv, 0, hi);
    }
    b
}

/// The two best steps of one 16-element Q6_K group (unconstrained by the
/// super-block scale), best first.
fn group_steps(
    x: &[f32],
    w: Option<&[f32]>,
    hints: &[Lattice],
    extra: f32,
    steps: &mut Vec<f32>,
) -> [f32; 2] {
    candidate_steps(x, hints, 32.5, 16, steps);
    if extra != 0.0 && extra.is_finite() {
        steps.push(extra.abs());
    }
    let mut top = [(f32::INFINITY, 0f32); 2];
    for &st in steps.iter() {
        for s in [st, -st] {
            if s == 0.0 || !s.is_finite() {
                continue;
            }
            let e = sym_err(x, w, s, -32.0, 31.0);
            if e < top[0].0 {
                top = [(e, s), top[0]];
            } else if e < top[1].0 && s != top[0].1 {
                top[1] = (e, s);
            }
        }
    }
    [top[0].1, top[1].1]
}

/// Best Q6_K block for `x` (256 values). `base` is the source's
/// super-block scale, when it has one; `llama` is llama.cpp's block for
/// the same values (its scales are candidates too).
pub(crate) fn q6_k(
    x: &[f32],
    w: Option<&[f32]>,
    hints: &dyn Fn(usize) -> Vec<Lattice>,
    base: Option<f32>,
    llama: &KSym,
    steps: &mut Vec<f32>,
) -> KSym {
    debug_assert_eq!(x.len(), QK_K);
    let wg = |g: usize| w.map(|w| &w[16 * g..16 * g + 16]);
    let dl = llama.d.to_f32();
    let groups: Vec<[f32; 2]> = (0..16)
        .map(|g| {
            let own = dl * llama.s[g] as f32;
            group_steps(&x[16 * g..16 * g + 16], wg(g), &hints(g), own, steps)
        })
        .collect();
    // Super-block scales: llama.cpp's; the source's own over small powers
    // of two (a Q4_K source's d/4 makes every group's step/4 a whole
    // multiple); and, from the group with the largest step, that step over
    // large multipliers (the others then round their scale finely).
    let mut supers: Vec<f16> = vec![llama.d];
    if let Some(b) = base.filter(|b| *b != 0.0 && b.is_finite()) {
        for c in [1.0f32, 2.0, 4.0, 8.0, 16.0] {
            supers.push(f16::from_f32(b / c));
        }
    }
    let big = groups.iter().map(|g| g[0].abs()).fold(0f32, f32::max);
    if big > 0.0 {
        for s in [127.0f32, 125.0, 122.0, 118.0, 113.0, 107.0] {
            supers.push(f16::from_f32(big / s));
        }
    }
    let mut best: Option<(f16, [i32; 16], f32)> = None;
    for d in supers {
        if !usable(d) {
            continue;
        }
        let df = d.to_f32();
        let mut scales = [0i32; 16];
        let mut total = 0f32;
        for g in 0..16 {
            let xs = &x[16 * g..16 * g + 16];
            let mut g_best = (f32::INFINITY, 0i32);
            let mut try_s = |s: i32| {
                let step = df * s as f32;
                if step != 0.0 {
                    let e = sym_err(xs, wg(g), step, -32.0, 31.0);
                    if e < g_best.0 {
                        g_best = (e, s);
                    }
                }
            };
            if d == llama.d {
                try_s(llama.s[g]);
            }
            for st in groups[g] {
                let r = st / df;
                if r.is_finite() {
                    try_s((r.floor() as i32).clamp(-128, 127));
                    try_s((r.ceil() as i32).clamp(-128, 127));
                }
            }
            if g_best.0.is_infinite() {
                g_best = (sym_zero(xs, wg(g)), 0);
            }
            scales[g] = g_best.1;
            total += g_best.0;
            if best.as_ref().is_some_and(|b| total >= b.2) {
                break;
            }
        }
        if best.as_ref().is_none_or(|b| total < b.2) {
            best = Some((d, scales, total));
        }
    }
    let Some((d, s, _)) = best else {
        return *llama;
    };
    let df = d.to_f32();
    let mut block = KSym { d, s, q: [0; QK_K] };
    for g in 0..16 {
        let step = df * s[g] as f32;
        let inv = if step == 0.0 { 0.0 } else { 1.0 / step };
        for i in 0..16 {
            block.q[16 * g + i] = level(x[16 * g + i], inv, -32, 31);
        }
    }
    block
}

/// The error of storing all of `x` as zeros.
fn sym_zero(x: &[f32], w: Option<&[f32]>) -> f32 {
    match w {
        None => x.iter().map(|v| v * v).sum(),
        Some(w) => x.iter().zip(w).map(|(v, wi)| wi * v * v).sum(),
    }
}

/// Best Q4_K (`q_max` 15) or Q5_K (31) block for `x` (256 values, eight
/// groups of 32 with their own 6-bit scale and min).
pub(crate) fn k_affine(
    q_max: u8,
    x: &[f32],
    w: Option<&[f32]>,
    hints: &dyn Fn(usize) -> Vec<Lattice>,
    llama: &KAffine,
) -> KAffine {
    debug_assert_eq!(x.len(), QK_K);
    let wg = |g: usize| w.map(|w| &w[32 * g..32 * g + 32]);
    let qm = f32::from(q_max);
    // Per group, the (step, min) pairs to aim at: llama.cpp's own, and the
    // source grid's step (and twice and half of it) with its point at or
    // below the smallest value.
    let (d0, m0) = (llama.d.to_f32(), llama.dmin.to_f32());
    let mut wanted: Vec<Vec<(f32, f32)>> = Vec::with_capacity(8);
    for g in 0..8 {
        let xs = &x[32 * g..32 * g + 32];
        let xmin = xs.iter().fold(f32::MAX, |a, &v| a.min(v));
        let mut v = vec![(d0 * f32::from(llama.sc[g]), m0 * f32::from(llama.m[g]))];
        for h in hints(g) {
            if h.step == 0.0 || !h.step.is_finite() {
                continue;
            }
            for r in [1.0f32, 2.0, 0.5] {
                let st = h.step.abs() * r;
                let below = h.offset + ((xmin - h.offset) / st + 1e-3).floor() * st;
                v.push((st, -below.min(0.0)));
            }
        }
        wanted.push(v);
    }
    let max_step = wanted.iter().flatten().fold(0f32, |a, &(s, _)| a.max(s));
    let max_min = wanted.iter().flatten().fold(0f32, |a, &(_, m)| a.max(m));
    let ds = [llama.d, f16::from_f32(max_step / 63.0)];
    let dmins = [llama.dmin, f16::from_f32(max_min / 63.0)];
    // The best scales and mins so far (levels filled in at the end).
    let mut best: Option<(KAffine, f32)> = None;
    for d in ds {
        for dmin in dmins {
            if !d.is_finite() || !dmin.is_finite() || d.to_f32() <= 0.0 || dmin.to_f32() < 0.0 {
                continue;
            }
            let (df, dmf) = (d.to_f32(), dmin.to_f32());
            let mut block = KAffine {
                d,
                dmin,
                sc: [0; 16],
                m: [0; 16],
                q: [0; QK_K],
            };
            let mut total = 0f32;
            for g in 0..8 {
                let xs = &x[32 * g..32 * g + 32];
                let mut g_best = (f32::INFINITY, 0u8, 0u8);
                for &(st, mn) in &wanted[g] {
                    let rs = st / df;
                    let rm = if dmf > 0.0 { mn / dmf } else { 0.0 };
                    for sc in [rs.floor(), rs.ceil()] {
                        for m in [rm.floor(), rm.ceil()] {
                            let (sc, m) = (sc.clamp(0.0, 63.0) as u8, m.clamp(0.0, 63.0) as u8);
                            let step = df * f32::from(sc);
                            let off = -(dmf * f32::from(m));
                            let e = aff_err(xs, wg(g), step, off, qm);
                            if e < g_best.0 {
                                g_best = (e, sc, m);
                            }
                        }
                    }
                }
                (block.sc[g], block.m[g]) = (g_best.1, g_best.2);
                total += g_best.0;
                if best.as_ref().is_some_and(|b| total >= b.1) {
                    break;
                }
            }
            if best.as_ref().is_none_or(|b| total < b.1) {
                best = Some((block, total));
            }
        }
    }
    let Some((mut block, _)) = best else {
        return *llama;
    };
    let (df, dmf) = (block.d.to_f32(), block.dmin.to_f32());
    for g in 0..8 {
        let step = df * f32::from(block.sc[g]);
        let off = dmf * f32::from(block.m[g]);
        let inv = if step == 0.0 { 0.0 } else { 1.0 / step };
        for i in 0..32 {
            block.q[32 * g + i] = level(x[32 * g + i] + off, inv, 0, i32::from(q_max)) as u8;
        }
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_step_finds_the_largest_exact_divisor() {
        assert_eq!(common_step(&[0.75, -1.5, 0.0, 3.0], 127.0), Some(0.75));
        // 3.0 is 4 steps of 0.75: too many for 3 levels.
        assert_eq!(common_step(&[0.75, -1.5, 0.0, 3.0], 3.0), None);
        assert_eq!(
            common_step(&[0.1f32 * 3.0, 0.1f32 * 5.0], f32::MAX).map(|g| g > 0.0),
            Some(true)
        );
        assert_eq!(common_step(&[0.0, 0.0], 127.0), None);
        assert_eq!(common_step(&[1e-30, 1e30], f32::MAX), None);
        let g = common_step(&[0.375, 0.625, -0.125], 127.0).unwrap();
        assert_eq!(g, 0.125);
    }

    #[test]
    fn a_q4_1_grid_with_a_whole_offset_lands_in_q8_0_exactly() {
        // Q4_1 points m + q*d with m = -6d: every point is a multiple of d.
        let d = 0.013671875f32; // an f16
        let x: Vec<f32> = (0..32).map(|i| (i % 16) as f32 * d + -6.0 * d).collect();
        let hints = [Lattice {
            step: d,
            offset: -6.0 * d,
        }];
        let b = legacy_symmetric(LegacyKind::Q8_0, &x, None, &hints, &mut Vec::new());
        for (i, &v) in x.iter().enumerate() {
            assert_eq!(b.value(LegacyKind::Q8_0, i), v);
        }
    }
}
