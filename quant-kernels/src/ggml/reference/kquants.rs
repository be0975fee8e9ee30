//! The 256-element super-block types: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the
//! activation type Q8_K.

use super::helpers::{
    get_scale_min_k4, make_q3_quants, make_qkx2_quants, make_qkx3_quants, make_qp_quants,
    make_qx_quants, nearest_int, put_scale_min_k4, MinSearch, GROUP_MAX_EPS,
};
use super::{check_lengths, check_weights};
use crate::float::{read_f16, write_f16};

const QK_K: usize = 256;

/// Packs 256 two-bit values as Q2_K/Q3_K do: byte `l` of each 32-byte group
/// holds elements l, l+32, l+64, l+96 of its 128-element half.
#[inline]
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] =
                l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

// ---------------------------------------------------------------- Q2_K
// block: scales[16] | qs[64] | d f16 | dmin f16  (84 bytes)

const Q2K: usize = 84;

/// `quantize_row_q2_K_ref`.
pub fn quantize_row_q2_k_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK_K, Q2K);
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut weights = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let q4scale = 15.0f32;
    let search = MinSearch {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: true,
    };
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(Q2K)) {
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            for k in 0..16 {
                weights[k] = xs[k].abs();
            }
            let (s, m) = make_qkx2_quants(
                3,
                xs,
                &weights,
                &mut l[16 * j..16 * j + 16],
                &mut laux,
                search,
            );
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let (sc, rest) = y.split_at_mut(16);
        let (qs, dd) = rest.split_at_mut(64);
        if max_scale > 0.0 {
            let iscale = q4scale / max_scale;
            for j in 0..16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            write_f16(&mut dd[0..2], max_scale / q4scale);
        } else {
            sc.fill(0);
            write_f16(&mut dd[0..2], 0.0);
        }
        if max_min > 0.0 {
            let iscale = q4scale / max_min;
            for j in 0..16 {
                let lm = nearest_int(iscale * mins[j]);
                sc[j] |= (lm << 4) as u8;
            }
            write_f16(&mut dd[2..4], max_min / q4scale);
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
                let q = nearest_int((x[16 * j + ii] + dm) / d);
                l[16 * j + ii] = q.clamp(0, 3) as u8;
            }
        }
        pack_2bit(&l, qs);
    }
}

/// `quantize_row_q2_K_impl` (with importance weights).
pub fn quantize_row_q2_k_impl(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    check_lengths(x.len(), y.len(), QK_K, Q2K);
    check_weights(x.len(), quant_weights.len());
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut mins = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let mut sw = [0.0f32; 16];
    let mut weight = [0.0f32; 16];
    let mut ls = [0u8; 16];
    let mut lm = [0u8; 16];
    let search = MinSearch {
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    for ((x, qw), y) in x
        .chunks_exact(QK_K)
        .zip(quant_weights.chunks_exact(QK_K))
        .zip(y.chunks_exact_mut(Q2K))
    {
        sw.fill(0.0);
        let mut sumx2 = 0.0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = sumx2 / QK_K as f32;
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let qws = &qw[16 * j..16 * j + 16];
            for k in 0..16 {
                weight[k] = qws[k] * (sigma2 + xs[k] * xs[k]).sqrt();
            }
            for &w in &weight {
                sw[j] += w;
            }
            let (s, m) = make_qkx3_quants(
                3,
                xs,
                &weight,
                &mut l[16 * j..16 * j + 16],
                &mut laux,
                search,
            );
            scales[j] = s;
            mins[j] = m;
        }
        let dm = make_qp_quants(15, &scales, &mut ls, &sw);
        let mm = make_qp_quants(15, &mins, &mut lm, &sw);
        let (sc, rest) = y.split_at_mut(16);
        let (qs, dd) = rest.split_at_mut(64);
        write_f16(&mut dd[0..2], dm);
        write_f16(&mut dd[2..4], mm);
        let dm = read_f16(&dd[0..2]);
        let mm = read_f16(&dd[2..4]);
        for j in 0..16 {
            sc[j] = ls[j] | (lm[j] << 4);
        }
        for j in 0..16 {
            let d = dm * f32::from(sc[j] & 0xF);
            if d == 0.0 {
                continue;
            }
            let m = mm * f32::from(sc[j] >> 4);
            for ii in 0..16 {
                let q = nearest_int((x[16 * j + ii] + m) / d);
                l[16 * j + ii] = q.clamp(0, 3) as u8;
            }
        }
        pack_2bit(&l, qs);
    }
}

/// `dequantize_row_q2_K`.
pub fn dequantize_row_q2_k(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, Q2K);
    for (xb, yb) in x.chunks_exact(Q2K).zip(y.chunks_exact_mut(QK_K)) {
        let sc = &xb[0..16];
        let d = read_f16(&xb[80..82]);
        let min = read_f16(&xb[82..84]);
        let mut out = 0;
        let mut is = 0;
        for n in 0..2 {
            let q = &xb[16 + 32 * n..16 + 32 * n + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let s = sc[is];
                    is += 1;
                    let dl = d * f32::from(s & 0xF);
                    let ml = min * f32::from(s >> 4);
                    for k in 0..16 {
                        let v = (q[16 * half + k] >> shift) & 3;
                        yb[out] = dl * f32::from(v) - ml;
                        out += 1;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- Q3_K
// block: hmask[32] | qs[64] | scales[12] | d f16  (110 bytes)

const Q3K: usize = 110;

/// Unpacks the j-th 6-bit signed scale of a Q3_K block (`-32..=31`).
#[inline]
fn q3k_scale(scales: &[u8], j: usize) -> i8 {
    let lo = if j < 8 {
        scales[j] & 0xF
    } else {
        scales[j - 8] >> 4
    };
    ((lo | (((scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i8).wrapping_sub(32)
}

/// Stores 6-bit scale codes `ls[j]` (0..=63) into the 12 packed bytes.
#[inline]
pub(crate) fn q3k_put_scale(scales: &mut [u8], j: usize, l: u8) {
    if j < 8 {
        scales[j] = l & 0xF;
    } else {
        scales[j - 8] |= (l & 0xF) << 4;
    }
    scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
}

/// The final Q3_K pass shared by both quantizers: requantize against the
/// stored scales, split off the high bit into `hmask`, pack the low bits.
fn q3k_finish(x: &[f32], l: &mut [i8; QK_K], y: &mut [u8]) {
    let d_all = read_f16(&y[108..110]);
    for j in 0..16 {
        let sc = q3k_scale(&y[96..108], j);
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
            l[16 * j + ii] = (q + 4) as i8;
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    hmask.fill(0);
    let mut m = 0;
    let mut hm = 1u8;
    for lj in l.iter_mut() {
        if *lj > 3 {
            hmask[m] |= hm;
            *lj -= 4;
        }
        m += 1;
        if m == QK_K / 8 {
            m = 0;
            hm = hm.wrapping_shl(1);
        }
    }
    let mut lu = [0u8; QK_K];
    for (u, &v) in lu.iter_mut().zip(l.iter()) {
        *u = v as u8;
    }
    pack_2bit(&lu, &mut rest[..64]);
}

/// `quantize_row_q3_K_ref`.
pub fn quantize_row_q3_k_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK_K, Q3K);
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(Q3K)) {
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..16 {
            scales[j] = make_q3_quants(
                4,
                &x[16 * j..16 * j + 16],
                &mut l[16 * j..16 * j + 16],
                true,
            );
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }
        y[96..108].fill(0);
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                let l8 = nearest_int(iscale * scales[j]) as i8;
                let code = (i32::from(l8).clamp(-32, 31) + 32) as u8;
                q3k_put_scale(&mut y[96..108], j, code);
            }
            write_f16(&mut y[108..110], 1.0 / iscale);
        } else {
            write_f16(&mut y[108..110], 0.0);
        }
        q3k_finish(x, &mut l, y);
    }
}

/// `quantize_row_q3_K_impl` (with importance weights; ggml runs it only
/// when an imatrix is given).
pub fn quantize_row_q3_k_impl(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    check_lengths(x.len(), y.len(), QK_K, Q3K);
    check_weights(x.len(), quant_weights.len());
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut weight = [0.0f32; 16];
    let mut sw = [0.0f32; 16];
    let mut ls = [0i8; 16];
    for ((x, qw), y) in x
        .chunks_exact(QK_K)
        .zip(quant_weights.chunks_exact(QK_K))
        .zip(y.chunks_exact_mut(Q3K))
    {
        let mut sumx2 = 0.0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let qws = &qw[16 * j..16 * j + 16];
            for k in 0..16 {
                weight[k] = qws[k] * (sigma2 + xs[k] * xs[k]).sqrt();
            }
            let mut sumw = 0.0f32;
            for &w in &weight {
                sumw += w;
            }
            sw[j] = sumw;
            scales[j] = make_qx_quants(4, xs, &mut l[16 * j..16 * j + 16], 1, Some(&weight));
        }
        y[96..108].fill(0);
        let d_block = make_qx_quants(32, &scales, &mut ls, 1, Some(&sw));
        for j in 0..16 {
            q3k_put_scale(&mut y[96..108], j, ls[j] as u8);
        }
        write_f16(&mut y[108..110], d_block);
        q3k_finish(x, &mut l, y);
    }
}

/// `dequantize_row_q3_K`.
pub fn dequantize_row_q3_k(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, Q3K);
    for (xb, yb) in x.chunks_exact(Q3K).zip(y.chunks_exact_mut(QK_K)) {
        let hm = &xb[0..32];
        let d_all = read_f16(&xb[108..110]);
        let mut out = 0;
        let mut is = 0;
        let mut m = 1u8;
        for n in 0..2 {
            let q = &xb[32 + 32 * n..32 + 32 * n + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let dl = d_all * f32::from(q3k_scale(&xb[96..108], is));
                    is += 1;
                    for k in 0..16 {
                        let lo = i32::from((q[16 * half + k] >> shift) & 3);
                        let hi = if hm[16 * half + k] & m != 0 { 0 } else { 4 };
                        yb[out] = dl * (lo - hi) as f32;
                        out += 1;
                    }
                }
                m = m.wrapping_shl(1);
            }
        }
    }
}

// ---------------------------------------------------------------- Q4_K / Q5_K
// Q4_K block: d f16 | dmin f16 | scales[12] | qs[128]             (144 bytes)
// Q5_K block: d f16 | dmin f16 | scales[12] | qh[32] | qs[128]    (176 bytes)

const Q4K: usize = 144;
const Q5K: usize = 176;

/// The `_ref` search shared by Q4_K and Q5_K: per 32 values, weights
/// `sqrt(mean x^2) + |x|` and `make_qkx2_quants`; then 6-bit scales and mins
/// against their maxima, then the values requantized against the stored
/// (f16) scales. Writes d, dmin and scales into `head` (16 bytes) and returns
/// the final levels in `l`.
fn qk_ref_levels(x: &[f32], nmax: i32, search: MinSearch, head: &mut [u8], l: &mut [u8; QK_K]) {
    let mut laux = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for k in 0..32 {
            weights[k] = av_x + xs[k].abs();
        }
        let (s, m) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut laux,
            search,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut head[4..16];
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        put_scale_min_k4(j, ls, lm, sc);
    }
    write_f16(&mut head[0..2], max_scale / 63.0);
    write_f16(&mut head[2..4], max_min / 63.0);
    qk_requantize(x, nmax, head, l);
}

/// Requantizes `x` against the stored d, dmin and 6-bit scales (both
/// quantizer paths of Q4_K and Q5_K end with this).
fn qk_requantize(x: &[f32], nmax: i32, head: &[u8], l: &mut [u8; QK_K]) {
    let d_all = read_f16(&head[0..2]);
    let dmin = read_f16(&head[2..4]);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &head[4..16]);
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = dmin * f32::from(m);
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d);
            l[32 * j + ii] = q.clamp(0, nmax) as u8;
        }
    }
}

/// The `_impl` search shared by Q4_K and Q5_K (importance-weighted).
fn qk_impl_levels(x: &[f32], qw: &[f32], nmax: i32, head: &mut [u8], l: &mut [u8; QK_K]) {
    let mut laux = [0u8; 32];
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let mut weights = [0.0f32; 32];
    let mut sw = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let search = MinSearch {
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let qws = &qw[32 * j..32 * j + 32];
        for k in 0..32 {
            weights[k] = qws[k] * (sigma2 + xs[k] * xs[k]).sqrt();
        }
        let mut sumw = 0.0f32;
        for &w in &weights {
            sumw += w;
        }
        sw[j] = sumw;
        let (s, m) = make_qkx3_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            &mut laux,
            search,
        );
        scales[j] = s;
        mins[j] = m;
    }
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    for j in 0..8 {
        // Q5_K clamps to 63 here, Q4_K does not; make_qp_quants never
        // returns more than nmax = 63, so both are the same.
        put_scale_min_k4(j, ls[j].min(63), lm[j].min(63), &mut head[4..16]);
    }
    write_f16(&mut head[0..2], d_block);
    write_f16(&mut head[2..4], m_block);
    qk_requantize(x, nmax, head, l);
}

fn pack_q4k(l: &[u8; QK_K], qs: &mut [u8]) {
    for (n, q) in qs.chunks_exact_mut(32).enumerate() {
        let j = 64 * n;
        for k in 0..32 {
            q[k] = l[j + k] | (l[j + k + 32] << 4);
        }
    }
}

fn pack_q5k(l: &[u8; QK_K], qh: &mut [u8], ql: &mut [u8]) {
    qh.fill(0);
    let mut m1 = 1u8;
    let mut m2 = 2u8;
    for (n, q) in ql.chunks_exact_mut(32).enumerate() {
        let base = 64 * n;
        for j in 0..32 {
            let mut l1 = l[base + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[base + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            q[j] = l1 | (l2 << 4);
        }
        m1 = m1.wrapping_shl(2);
        m2 = m2.wrapping_shl(2);
    }
}

/// `quantize_row_q4_K_ref`.
pub fn quantize_row_q4_k_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK_K, Q4K);
    let search = MinSearch {
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        use_mad: false,
    };
    let mut l = [0u8; QK_K];
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(Q4K)) {
        let (head, qs) = y.split_at_mut(16);
        qk_ref_levels(x, 15, search, head, &mut l);
        pack_q4k(&l, qs);
    }
}

/// `quantize_row_q4_K_impl` (with importance weights).
pub fn quantize_row_q4_k_impl(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    check_lengths(x.len(), y.len(), QK_K, Q4K);
    check_weights(x.len(), quant_weights.len());
    let mut l = [0u8; QK_K];
    for ((x, qw), y) in x
        .chunks_exact(QK_K)
        .zip(quant_weights.chunks_exact(QK_K))
        .zip(y.chunks_exact_mut(Q4K))
    {
        let (head, qs) = y.split_at_mut(16);
        head[4..16].fill(0);
        qk_impl_levels(x, qw, 15, head, &mut l);
        pack_q4k(&l, qs);
    }
}

/// `dequantize_row_q4_K`.
pub fn dequantize_row_q4_k(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, Q4K);
    for (xb, yb) in x.chunks_exact(Q4K).zip(y.chunks_exact_mut(QK_K)) {
        let d = read_f16(&xb[0..2]);
        let min = read_f16(&xb[2..4]);
        let scales = &xb[4..16];
        for n in 0..4 {
            let q = &xb[16 + 32 * n..16 + 32 * n + 32];
            let (sc1, m1) = get_scale_min_k4(2 * n, scales);
            let (sc2, m2) = get_scale_min_k4(2 * n + 1, scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let out = &mut yb[64 * n..64 * n + 64];
            for k in 0..32 {
                out[k] = d1 * f32::from(q[k] & 0xF) - m1;
                out[k + 32] = d2 * f32::from(q[k] >> 4) - m2;
            }
        }
    }
}

/// `quantize_row_q5_K_ref`.
pub fn quantize_row_q5_k_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK_K, Q5K);
    let search = MinSearch {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        use_mad: false,
    };
    let mut l = [0u8; QK_K];
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(Q5K)) {
        let (head, rest) = y.split_at_mut(16);
        qk_ref_levels(x, 31, search, head, &mut l);
        let (qh, ql) = rest.split_at_mut(32);
        pack_q5k(&l, qh, ql);
    }
}

/// `quantize_row_q5_K_impl` (with importance weights).
pub fn quantize_row_q5_k_impl(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    check_lengths(x.len(), y.len(), QK_K, Q5K);
    check_weights(x.len(), quant_weights.len());
    let mut l = [0u8; QK_K];
    for ((x, qw), y) in x
        .chunks_exact(QK_K)
        .zip(quant_weights.chunks_exact(QK_K))
        .zip(y.chunks_exact_mut(Q5K))
    {
        let (head, rest) = y.split_at_mut(16);
        head[4..16].fill(0);
        qk_impl_levels(x, qw, 31, head, &mut l);
        let (qh, ql) = rest.split_at_mut(32);
        pack_q5k(&l, qh, ql);
    }
}

/// `dequantize_row_q5_K`.
pub fn dequantize_row_q5_k(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, Q5K);
    for (xb, yb) in x.chunks_exact(Q5K).zip(y.chunks_exact_mut(QK_K)) {
        let d = read_f16(&xb[0..2]);
        let min = read_f16(&xb[2..4]);
        let scales = &xb[4..16];
        let qh = &xb[16..48];
        let mut u1 = 1u8;
        let mut u2 = 2u8;
        for n in 0..4 {
            let ql = &xb[48 + 32 * n..48 + 32 * n + 32];
            let (sc1, m1) = get_scale_min_k4(2 * n, scales);
            let (sc2, m2) = get_scale_min_k4(2 * n + 1, scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let out = &mut yb[64 * n..64 * n + 64];
            for k in 0..32 {
                let h1 = if qh[k] & u1 != 0 { 16 } else { 0 };
                let h2 = if qh[k] & u2 != 0 { 16 } else { 0 };
                out[k] = d1 * f32::from((ql[k] & 0xF) + h1) - m1;
                out[k + 32] = d2 * f32::from((ql[k] >> 4) + h2) - m2;
            }
            u1 = u1.wrapping_shl(2);
            u2 = u2.wrapping_shl(2);
        }
    }
}

// ---------------------------------------------------------------- Q6_K
// block: ql[128] | qh[64] | scales[16] i8 | d f16  (210 bytes)

const Q6K: usize = 210;

fn q6k_block(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..16 {
        let w = qw.map(|qw| &qw[16 * ib..16 * ib + 16]);
        let scale = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut l[16 * ib..16 * ib + 16],
            1,
            w,
        );
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
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
        for ii in 0..16 {
            let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }
    let (ql, rest) = y.split_at_mut(128);
    let qh = &mut rest[..64];
    for half in 0..2 {
        let j = 128 * half;
        let ql = &mut ql[64 * half..64 * half + 64];
        let qh = &mut qh[32 * half..32 * half + 32];
        for k in 0..32 {
            let l1 = l[j + k] as u8;
            let l2 = l[j + k + 32] as u8;
            let l3 = l[j + k + 64] as u8;
            let l4 = l[j + k + 96] as u8;
            ql[k] = (l1 & 0xF) | ((l3 & 0xF) << 4);
            ql[k + 32] = (l2 & 0xF) | ((l4 & 0xF) << 4);
            qh[k] = (l1 >> 4) | ((l2 >> 4) << 2) | ((l3 >> 4) << 4) | ((l4 >> 4) << 6);
        }
    }
}

/// `quantize_row_q6_K_ref`.
pub fn quantize_row_q6_k_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK_K, Q6K);
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(Q6K)) {
        q6k_block(x, y, None);
    }
}

/// `quantize_row_q6_K_impl` (with importance weights, used as is, without
/// the sigma2 factor the other K-quants apply).
pub fn quantize_row_q6_k_impl(x: &[f32], y: &mut [u8], quant_weights: &[f32]) {
    check_lengths(x.len(), y.len(), QK_K, Q6K);
    check_weights(x.len(), quant_weights.len());
    for ((x, qw), y) in x
        .chunks_exact(QK_K)
        .zip(quant_weights.chunks_exact(QK_K))
        .zip(y.chunks_exact_mut(Q6K))
    {
        q6k_block(x, y, Some(qw));
    }
}

/// `dequantize_row_q6_K`.
pub fn dequantize_row_q6_k(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, Q6K);
    for (xb, yb) in x.chunks_exact(Q6K).zip(y.chunks_exact_mut(QK_K)) {
        let d = read_f16(&xb[208..210]);
        for half in 0..2 {
            let ql = &xb[64 * half..64 * half + 64];
            let qh = &xb[128 + 32 * half..128 + 32 * half + 32];
            let sc = &xb[192 + 8 * half..192 + 8 * half + 8];
            let out = &mut yb[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                let s = |k: usize| f32::from(sc[is + k] as i8);
                out[l] = d * s(0) * q1 as f32;
                out[l + 32] = d * s(2) * q2 as f32;
                out[l + 64] = d * s(4) * q3 as f32;
                out[l + 96] = d * s(6) * q4 as f32;
            }
        }
    }
}

// ---------------------------------------------------------------- Q8_K
// block: d f32 | qs[256] i8 | bsums[16] i16  (292 bytes)

const Q8K: usize = 292;

/// `quantize_row_q8_K_ref` (also what ggml's x86 CPU backend runs to
/// quantize activations for K-quant dot products).
pub fn quantize_row_q8_k_ref(x: &[f32], y: &mut [u8]) {
    check_lengths(x.len(), y.len(), QK_K, Q8K);
    for (x, y) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(Q8K)) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            // ggml leaves bsums as they were; zero is what a fresh buffer holds.
            y.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for j in 0..QK_K {
            let v = nearest_int(iscale * x[j]);
            y[4 + j] = v.min(127) as u8;
        }
        for j in 0..16 {
            let mut sum = 0i32;
            for ii in 0..16 {
                sum += i32::from(y[4 + 16 * j + ii] as i8);
            }
            y[260 + 2 * j..262 + 2 * j].copy_from_slice(&(sum as i16).to_le_bytes());
        }
        y[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

/// `dequantize_row_q8_K`.
pub fn dequantize_row_q8_k(x: &[u8], y: &mut [f32]) {
    check_lengths(y.len(), x.len(), QK_K, Q8K);
    for (xb, yb) in x.chunks_exact(Q8K).zip(y.chunks_exact_mut(QK_K)) {
        let d = f32::from_le_bytes([xb[0], xb[1], xb[2], xb[3]]);
        for j in 0..QK_K {
            yb[j] = d * f32::from(xb[4 + j] as i8);
        }
    }
}
