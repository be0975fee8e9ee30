//! K-quant searches vectorized *across* sub-blocks: lane k runs the scalar
//! search of sub-block k, value by value in the reference's order, so every
//! lane computes exactly the reference's floats (sums keep their order;
//! `if` becomes a per-lane select). Safe code for the auto-vectorizer,
//! multiversioned like `portable`.

use crate::float::{read_f16, write_f16};
use crate::ggml::reference::{
    get_scale_min_k4, make_q3_quants, nearest_int, put_scale_min_k4, q3k_put_scale, MinSearch,
    GROUP_MAX_EPS,
};

const QK_K: usize = 256;

/// The two lane-parallel searches, over 8 sub-blocks at a time: the
/// portable version below, or explicit AVX2 (`x86`).
pub(crate) trait Search {
    /// `make_qkx2_quants` / `make_qkx3_quants` on 8 groups of N values.
    fn qkx8<const N: usize>(
        nmax: i32,
        x: &[[f32; 8]; N],
        w: &[[f32; 8]; N],
        lq: &mut [[u8; 8]; N],
        p: MinSearch,
        le_degenerate: bool,
    ) -> ([f32; 8], [f32; 8]);
    /// `make_qx_quants(.., rmse_type = 1, NULL)` on 8 groups of N values.
    fn qx8<const N: usize>(nmax: i32, x: &[[f32; 8]; N], lq: &mut [[i8; 8]; N]) -> [f32; 8];
    /// `make_q3_quants(16, 4, .., do_rmse = true)` on 8 groups of 16.
    fn q3x8(x: &[[f32; 8]; 16], lq: &mut [[i8; 8]; 16]) -> [f32; 8];
}

/// The searches as safe lane-wise Rust.
pub(crate) struct Portable;

impl Search for Portable {
    #[inline(always)]
    fn qkx8<const N: usize>(
        nmax: i32,
        x: &[[f32; 8]; N],
        w: &[[f32; 8]; N],
        lq: &mut [[u8; 8]; N],
        p: MinSearch,
        le_degenerate: bool,
    ) -> ([f32; 8], [f32; 8]) {
        make_qkx_lanes(nmax, x, w, lq, p, le_degenerate)
    }
    #[inline(always)]
    fn qx8<const N: usize>(nmax: i32, x: &[[f32; 8]; N], lq: &mut [[i8; 8]; N]) -> [f32; 8] {
        make_qx_lanes(nmax, x, lq, None)
    }
    #[inline(always)]
    fn q3x8(x: &[[f32; 8]; 16], lq: &mut [[i8; 8]; 16]) -> [f32; 8] {
        // The scalar search per group: its refinement passes branch on
        // every value, which lanes gain little from without AVX2's masks.
        let mut scales = [0f32; 8];
        for k in 0..8 {
            let xs: [f32; 16] = std::array::from_fn(|i| x[i][k]);
            let mut l = [0i8; 16];
            scales[k] = make_q3_quants(4, &xs, &mut l, true);
            for i in 0..16 {
                lq[i][k] = l[i];
            }
        }
        scales
    }
}

/// The searches in explicit AVX2; only constructed at `Level::Avx2` and
/// above (see `simd::quantize_at`).
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Search for Avx2 {
    #[inline(always)]
    fn qkx8<const N: usize>(
        nmax: i32,
        x: &[[f32; 8]; N],
        w: &[[f32; 8]; N],
        lq: &mut [[u8; 8]; N],
        p: MinSearch,
        le_degenerate: bool,
    ) -> ([f32; 8], [f32; 8]) {
        // SAFETY: `Avx2` kernels run only when `simd::level()` found AVX2
        // (`quantize_at` dispatches to them at `Level::Avx2` and above).
        unsafe { super::x86::make_qkx_8(nmax, x, w, lq, p, le_degenerate) }
    }
    #[inline(always)]
    fn qx8<const N: usize>(nmax: i32, x: &[[f32; 8]; N], lq: &mut [[i8; 8]; N]) -> [f32; 8] {
        // SAFETY: as above.
        unsafe { super::x86::make_qx_8(nmax, x, lq) }
    }
    #[inline(always)]
    fn q3x8(x: &[[f32; 8]; 16], lq: &mut [[i8; 8]; 16]) -> [f32; 8] {
        // SAFETY: as above.
        unsafe { super::x86::make_q3_8(x, lq) }
    }
}

/// `make_qkx2_quants` on L groups of N values at once (value i of group k
/// at `x[i][k]`); `le_degenerate` selects `make_qkx3_quants`' `max <= min`
/// test. Returns per group (scale, the_min).
#[inline(always)]
fn make_qkx_lanes<const N: usize, const L: usize>(
    nmax: i32,
    x: &[[f32; L]; N],
    w: &[[f32; L]; N],
    lq: &mut [[u8; L]; N],
    p: MinSearch,
    le_degenerate: bool,
) -> ([f32; L], [f32; L]) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = [0f32; L];
    for k in 0..L {
        sum_x[k] = sum_w[k] * x[0][k];
    }
    for i in 1..N {
        for k in 0..L {
            min[k] = if x[i][k] < min[k] { x[i][k] } else { min[k] };
            max[k] = if x[i][k] > max[k] { x[i][k] } else { max[k] };
            sum_w[k] += w[i][k];
            sum_x[k] += w[i][k] * x[i][k];
        }
    }
    let mut degenerate = [false; L];
    for k in 0..L {
        if min[k] > 0.0 {
            min[k] = 0.0;
        }
        degenerate[k] = if le_degenerate {
            max[k] <= min[k]
        } else {
            max[k] == min[k]
        };
    }
    let min0 = min;
    let nmaxf = nmax as f32;
    let mut iscale = [0f32; L];
    let mut scale = [0f32; L];
    let mut best = [0f32; L];
    for k in 0..L {
        iscale[k] = nmaxf / (max[k] - min[k]);
        scale[k] = 1.0 / iscale[k];
    }
    for i in 0..N {
        for k in 0..L {
            let l = nearest_int(iscale[k] * (x[i][k] - min[k])).clamp(0, nmax);
            lq[i][k] = l as u8;
            let d = scale[k] * l as f32 + min[k] - x[i][k];
            let d = if p.use_mad { d.abs() } else { d * d };
            best[k] += w[i][k] * d;
        }
    }
    if p.nstep >= 1 {
        let mut laux = [[0u8; L]; N];
        for is in 0..=p.nstep {
            let mut sum_l = [0f32; L];
            let mut sum_l2 = [0f32; L];
            let mut sum_xl = [0f32; L];
            for k in 0..L {
                iscale[k] = (p.rmin + p.rdelta * is as f32 + nmaxf) / (max[k] - min[k]);
            }
            for i in 0..N {
                for k in 0..L {
                    let l = nearest_int(iscale[k] * (x[i][k] - min[k])).clamp(0, nmax);
                    laux[i][k] = l as u8;
                    let lf = l as f32;
                    sum_l[k] += w[i][k] * lf;
                    sum_l2[k] += w[i][k] * lf * lf;
                    sum_xl[k] += w[i][k] * lf * x[i][k];
                }
            }
            let mut this_scale = [0f32; L];
            let mut this_min = [0f32; L];
            let mut det = [0f32; L];
            for k in 0..L {
                det[k] = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
                this_scale[k] = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / det[k];
                this_min[k] = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / det[k];
                if this_min[k] > 0.0 {
                    this_min[k] = 0.0;
                    this_scale[k] = sum_xl[k] / sum_l2[k];
                }
            }
            let mut err = [0f32; L];
            for i in 0..N {
                for k in 0..L {
                    let d = this_scale[k] * f32::from(laux[i][k]) + this_min[k] - x[i][k];
                    let d = if p.use_mad { d.abs() } else { d * d };
                    err[k] += w[i][k] * d;
                }
            }
            let mut take = [false; L];
            for k in 0..L {
                take[k] = det[k] > 0.0 && err[k] < best[k];
                if take[k] {
                    best[k] = err[k];
                    scale[k] = this_scale[k];
                    min[k] = this_min[k];
                }
            }
            for i in 0..N {
                for k in 0..L {
                    lq[i][k] = if take[k] { laux[i][k] } else { lq[i][k] };
                }
            }
        }
    }
    let mut the_min = [0f32; L];
    for k in 0..L {
        if degenerate[k] {
            scale[k] = 0.0;
            min[k] = min0[k];
        }
        the_min[k] = -min[k];
    }
    for row in lq.iter_mut() {
        for k in 0..L {
            row[k] = if degenerate[k] { 0 } else { row[k] };
        }
    }
    (scale, the_min)
}

/// `make_qx_quants(n, nmax, x, L, rmse_type = 1, qw)` on L groups at once;
/// `qw = None` weighs by x^2. Levels are stored offset by `nmax`.
#[inline(always)]
fn make_qx_lanes<const N: usize, const L: usize>(
    nmax: i32,
    x: &[[f32; L]; N],
    lq: &mut [[i8; L]; N],
    qw: Option<&[[f32; L]; N]>,
) -> [f32; L] {
    let mut max = [0f32; L];
    let mut amax = [0f32; L];
    for row in x {
        for k in 0..L {
            let ax = row[k].abs();
            if ax > amax[k] {
                amax[k] = ax;
                max[k] = row[k];
            }
        }
    }
    let w = |i: usize, k: usize| match qw {
        Some(qw) => qw[i][k],
        None => x[i][k] * x[i][k],
    };
    let mut iscale = [0f32; L];
    let mut sumlx = [0f32; L];
    let mut suml2 = [0f32; L];
    for k in 0..L {
        iscale[k] = (-nmax) as f32 / max[k];
    }
    for i in 0..N {
        for k in 0..L {
            let l = nearest_int(iscale[k] * x[i][k]).clamp(-nmax, nmax - 1);
            lq[i][k] = (l + nmax) as i8;
            let lf = l as f32;
            sumlx[k] += w(i, k) * x[i][k] * lf;
            suml2[k] += w(i, k) * lf * lf;
        }
    }
    let mut scale = [0f32; L];
    let mut best = [0f32; L];
    for k in 0..L {
        scale[k] = if suml2[k] != 0.0 {
            sumlx[k] / suml2[k]
        } else {
            0.0
        };
        best[k] = scale[k] * sumlx[k];
    }
    let mut cand = [[0i8; L]; N];
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        for k in 0..L {
            iscale[k] = -(nmax as f32 + 0.1 * is as f32) / max[k];
            sumlx[k] = 0.0;
            suml2[k] = 0.0;
        }
        for i in 0..N {
            for k in 0..L {
                let l = nearest_int(iscale[k] * x[i][k]).clamp(-nmax, nmax - 1);
                cand[i][k] = (l + nmax) as i8;
                let lf = l as f32;
                sumlx[k] += w(i, k) * x[i][k] * lf;
                suml2[k] += w(i, k) * lf * lf;
            }
        }
        let mut take = [false; L];
        for k in 0..L {
            take[k] = suml2[k] > 0.0 && sumlx[k] * sumlx[k] > best[k] * suml2[k];
            if take[k] {
                scale[k] = sumlx[k] / suml2[k];
                best[k] = scale[k] * sumlx[k];
            }
        }
        for i in 0..N {
            for k in 0..L {
                lq[i][k] = if take[k] { cand[i][k] } else { lq[i][k] };
            }
        }
    }
    for k in 0..L {
        if amax[k] < GROUP_MAX_EPS {
            scale[k] = 0.0;
        }
    }
    for row in lq.iter_mut() {
        for k in 0..L {
            row[k] = if amax[k] < GROUP_MAX_EPS { 0 } else { row[k] };
        }
    }
    scale
}

/// Value i of sub-block k of `x` at `[i][k]`.
#[inline(always)]
fn transpose<const N: usize, const L: usize>(x: &[f32]) -> [[f32; L]; N] {
    let mut t = [[0f32; L]; N];
    for k in 0..L {
        for i in 0..N {
            t[i][k] = x[N * k + i];
        }
    }
    t
}

/// The levels of `make_qkx_lanes`/`make_qx_lanes` back in value order.
#[inline(always)]
fn untranspose<T: Copy, const N: usize, const L: usize>(t: &[[T; L]; N], out: &mut [T]) {
    for k in 0..L {
        for i in 0..N {
            out[N * k + i] = t[i][k];
        }
    }
}

/// Q4_K (`nmax` 15) and Q5_K (31) without an imatrix: the search of
/// `quantize_row_q4_K_ref` / `quantize_row_q5_K_ref`, then the packing.
#[inline(always)]
fn qk_ref_superblock<S: Search>(
    x: &[f32],
    nmax: i32,
    p: MinSearch,
    head: &mut [u8],
    l: &mut [u8; QK_K],
) {
    let xt: [[f32; 8]; 32] = transpose(x);
    let mut w = [[0f32; 8]; 32];
    let mut sum_x2 = [0f32; 8];
    for row in &xt {
        for k in 0..8 {
            sum_x2[k] += row[k] * row[k];
        }
    }
    let mut av_x = [0f32; 8];
    for k in 0..8 {
        av_x[k] = (sum_x2[k] / 32.0).sqrt();
    }
    for i in 0..32 {
        for k in 0..8 {
            w[i][k] = av_x[k] + xt[i][k].abs();
        }
    }
    let mut lt = [[0u8; 8]; 32];
    let (scales, mins) = S::qkx8(nmax, &xt, &w, &mut lt, p, false);
    untranspose(&lt, l);
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        put_scale_min_k4(j, ls, lm, &mut head[4..16]);
    }
    write_f16(&mut head[0..2], max_scale / 63.0);
    write_f16(&mut head[2..4], max_min / 63.0);
    let d_all = read_f16(&head[0..2]);
    let dmin = read_f16(&head[2..4]);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &head[4..16]);
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = dmin * f32::from(m);
        let xs: &[f32; 32] = x[32 * j..32 * j + 32].try_into().unwrap();
        let ls: &mut [u8; 32] = (&mut l[32 * j..32 * j + 32]).try_into().unwrap();
        for i in 0..32 {
            ls[i] = nearest_int((xs[i] + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

#[inline(always)]
pub(crate) fn quantize_q4_k<S: Search>(x: &[f32], y: &mut [u8]) {
    let p = MinSearch {
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    let mut l = [0u8; QK_K];
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(144)) {
        let (head, qs) = y.split_at_mut(16);
        qk_ref_superblock::<S>(x, 15, p, head, &mut l);
        for (n, q) in qs.chunks_exact_mut(32).enumerate() {
            for k in 0..32 {
                q[k] = l[64 * n + k] | (l[64 * n + k + 32] << 4);
            }
        }
    }
}

#[inline(always)]
pub(crate) fn quantize_q5_k<S: Search>(x: &[f32], y: &mut [u8]) {
    let p = MinSearch {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    let mut l = [0u8; QK_K];
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(176)) {
        let (head, rest) = y.split_at_mut(16);
        qk_ref_superblock::<S>(x, 31, p, head, &mut l);
        let (qh, ql) = rest.split_at_mut(32);
        qh.fill(0);
        for (n, q) in ql.chunks_exact_mut(32).enumerate() {
            let (m1, m2) = (1u8 << (2 * n), 2u8 << (2 * n));
            for j in 0..32 {
                let mut l1 = l[64 * n + j];
                let mut l2 = l[64 * n + j + 32];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                q[j] = l1 | (l2 << 4);
            }
        }
    }
}

#[inline(always)]
pub(crate) fn quantize_q6_k<S: Search>(x: &[f32], y: &mut [u8]) {
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(210)) {
        let mut scales = [0f32; 16];
        let mut l = [0i8; QK_K];
        for half in 0..2 {
            let xt: [[f32; 8]; 16] = transpose(&x[128 * half..128 * half + 128]);
            let mut lt = [[0i8; 8]; 16];
            let s = S::qx8(32, &xt, &mut lt);
            scales[8 * half..8 * half + 8].copy_from_slice(&s);
            untranspose(&lt, &mut l[128 * half..128 * half + 128]);
        }
        let mut max_scale = 0f32;
        let mut max_abs_scale = 0f32;
        for &s in &scales {
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            y.fill(0);
            continue;
        }
        let iscale = -128.0 / max_scale;
        write_f16(&mut y[208..210], 1.0 / iscale);
        for ib in 0..16 {
            y[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as u8;
        }
        let d_all = read_f16(&y[208..210]);
        for j in 0..16 {
            let d = d_all * f32::from(y[192 + j] as i8);
            if d == 0.0 {
                continue;
            }
            let xs: &[f32; 16] = x[16 * j..16 * j + 16].try_into().unwrap();
            let ls: &mut [i8; 16] = (&mut l[16 * j..16 * j + 16]).try_into().unwrap();
            for i in 0..16 {
                ls[i] = (nearest_int(xs[i] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        let (ql, rest) = y.split_at_mut(128);
        for half in 0..2 {
            let j = 128 * half;
            for k in 0..32 {
                let l1 = l[j + k] as u8;
                let l2 = l[j + k + 32] as u8;
                let l3 = l[j + k + 64] as u8;
                let l4 = l[j + k + 96] as u8;
                ql[64 * half + k] = (l1 & 0xF) | ((l3 & 0xF) << 4);
                ql[64 * half + k + 32] = (l2 & 0xF) | ((l4 & 0xF) << 4);
                rest[32 * half + k] =
                    (l1 >> 4) | ((l2 >> 4) << 2) | ((l3 >> 4) << 4) | ((l4 >> 4) << 6);
            }
        }
    }
}

#[inline(always)]
pub(crate) fn quantize_q2_k<S: Search>(x: &[f32], y: &mut [u8]) {
    let p = MinSearch {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(84)) {
        let mut scales = [0f32; 16];
        let mut mins = [0f32; 16];
        let mut l = [0u8; QK_K];
        for half in 0..2 {
            let xt: [[f32; 8]; 16] = transpose(&x[128 * half..128 * half + 128]);
            let mut w = [[0f32; 8]; 16];
            for i in 0..16 {
                for k in 0..8 {
                    w[i][k] = xt[i][k].abs();
                }
            }
            let mut lt = [[0u8; 8]; 16];
            let (s, m) = S::qkx8(3, &xt, &w, &mut lt, p, false);
            scales[8 * half..8 * half + 8].copy_from_slice(&s);
            mins[8 * half..8 * half + 8].copy_from_slice(&m);
            untranspose(&lt, &mut l[128 * half..128 * half + 128]);
        }
        let mut max_scale = 0f32;
        let mut max_min = 0f32;
        for j in 0..16 {
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        let (sc, rest) = y.split_at_mut(16);
        let (qs, dd) = rest.split_at_mut(64);
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for j in 0..16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            write_f16(&mut dd[0..2], max_scale / 15.0);
        } else {
            sc.fill(0);
            write_f16(&mut dd[0..2], 0.0);
        }
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for j in 0..16 {
                sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            write_f16(&mut dd[2..4], max_min / 15.0);
        } else {
            write_f16(&mut dd[2..4], 0.0);
        }
        let d_all = read_f16(&dd[0..2]);
        let dmin = read_f16(&dd[2..4]);
        for j in 0..16 {
            let d = d_all * f32::from(sc[j] & 0xF);
            if d == 0.0 {
                continue;
            }
            let dm = dmin * f32::from(sc[j] >> 4);
            for ii in 0..16 {
                l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
            }
        }
        for j in (0..QK_K).step_by(128) {
            for k in 0..32 {
                qs[j / 4 + k] =
                    l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
            }
        }
    }
}

#[inline(always)]
pub(crate) fn quantize_q3_k<S: Search>(x: &[f32], y: &mut [u8]) {
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(110)) {
        let mut scales = [0f32; 16];
        let mut l = [0i8; QK_K];
        for half in 0..2 {
            let xt: [[f32; 8]; 16] = transpose(&x[128 * half..128 * half + 128]);
            let mut lt = [[0i8; 8]; 16];
            let s = S::q3x8(&xt, &mut lt);
            scales[8 * half..8 * half + 8].copy_from_slice(&s);
            untranspose(&lt, &mut l[128 * half..128 * half + 128]);
        }
        let mut max_scale = 0f32;
        let mut amax = 0f32;
        for &s in &scales {
            if s.abs() > amax {
                amax = s.abs();
                max_scale = s;
            }
        }
        y[96..108].fill(0);
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                let l8 = nearest_int(iscale * s) as i8;
                let code = (i32::from(l8).clamp(-32, 31) + 32) as u8;
                q3k_put_scale(&mut y[96..108], j, code);
            }
            write_f16(&mut y[108..110], 1.0 / iscale);
        } else {
            write_f16(&mut y[108..110], 0.0);
        }
        q3k_finish_lanes(x, &mut l, y);
    }
}

/// `q3k_finish` (requantize against the stored scales, high bits into
/// `hmask`, low bits packed) written for the vectorizer.
#[inline(always)]
fn q3k_finish_lanes(x: &[f32], l: &mut [i8; QK_K], y: &mut [u8]) {
    let d_all = read_f16(&y[108..110]);
    let s = &y[96..108];
    for j in 0..16 {
        let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let sc = ((lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8).wrapping_sub(32);
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let xs: &[f32; 16] = x[16 * j..16 * j + 16].try_into().unwrap();
        let ls: &mut [i8; 16] = (&mut l[16 * j..16 * j + 16]).try_into().unwrap();
        for i in 0..16 {
            ls[i] = (nearest_int(xs[i] / d).clamp(-4, 3) + 4) as i8;
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    let hmask: &mut [u8; 32] = hmask.try_into().unwrap();
    hmask.fill(0);
    for b in 0..8 {
        let lb: &mut [i8; 32] = (&mut l[32 * b..32 * b + 32]).try_into().unwrap();
        for m in 0..32 {
            let high = u8::from(lb[m] > 3);
            hmask[m] |= high << b;
            lb[m] -= 4 * high as i8;
        }
    }
    let qs: &mut [u8; 64] = (&mut rest[..64]).try_into().unwrap();
    for h in 0..2 {
        for k in 0..32 {
            let j = 128 * h;
            qs[32 * h + k] = (l[j + k] as u8)
                | ((l[j + k + 32] as u8) << 2)
                | ((l[j + k + 64] as u8) << 4)
                | ((l[j + k + 96] as u8) << 6);
        }
    }
}
