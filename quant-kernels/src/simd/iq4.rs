//! IQ4_NL and IQ4_XS quantization (`quantize_iq4_nl` / `quantize_iq4_xs`,
//! the ntry = 7 search, with or without an imatrix) with the AVX2 search
//! across 8 groups of 32.

use super::x86::{iq4_levels_32, iq4_scales_8};
use crate::float::write_f16;
use crate::ggml::reference::{self, nearest_int};

/// Sub-block weights as `quantize_row_iq4_nl_impl` computes them,
/// transposed (value j of group k at `[j][k]`): `qw * sqrt(sigma2 + x^2)`
/// with an imatrix, `x^2` without.
#[inline(always)]
fn group_weights(
    x: &[f32],
    qw: Option<&[f32]>,
    sigma2: &[f32; 8],
) -> ([[f32; 8]; 32], [[f32; 8]; 32]) {
    let mut xt = [[0f32; 8]; 32];
    let mut wt = [[0f32; 8]; 32];
    for k in 0..8 {
        for j in 0..32 {
            let v = x[32 * k + j];
            xt[j][k] = v;
            wt[j][k] = match qw {
                Some(qw) => qw[32 * k + j] * (sigma2[k] + v * v).sqrt(),
                None => v * v,
            };
        }
    }
    (xt, wt)
}

/// `quantize_iq4_nl` for one row.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
pub(super) unsafe fn quantize_iq4_nl(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    let full = x.len() / 256 * 256;
    for (c, (xc, yc)) in x[..full]
        .chunks_exact(256)
        .zip(y.chunks_exact_mut(8 * 18))
        .enumerate()
    {
        let qwc = qw.map(|q| &q[256 * c..256 * c + 256]);
        let mut sigma2 = [0f32; 8];
        for (k, s) in sigma2.iter_mut().enumerate() {
            for v in &xc[32 * k..32 * k + 32] {
                *s += v * v;
            }
            *s *= 2.0 / 32.0;
        }
        let (xt, wt) = group_weights(xc, qwc, &sigma2);
        // SAFETY: AVX2 is enabled in this function.
        let scales = unsafe { iq4_scales_8(&xt, &wt, 7) };
        for (k, yb) in yc.chunks_exact_mut(18).enumerate() {
            write_f16(&mut yb[0..2], scales[k]);
            let id = if scales[k] != 0.0 {
                1.0 / scales[k]
            } else {
                0.0
            };
            // SAFETY: as above; 32 values in, 16 bytes out.
            unsafe { iq4_levels_32(&xc[32 * k..32 * k + 32], id, &mut yb[2..18]) };
        }
    }
    // The last blocks (fewer than 8) through the reference.
    let rest_blocks = (x.len() - full) / 32;
    if rest_blocks > 0 {
        reference::quantize_row_iq4_nl_impl(
            &x[full..],
            &mut y[full / 32 * 18..],
            qw.map(|q| &q[full..]),
        );
    }
}

/// `quantize_iq4_xs` for one row.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
pub(super) unsafe fn quantize_iq4_xs(x: &[f32], y: &mut [u8], qw: Option<&[f32]>) {
    for (ibl, (xs, yb)) in x.chunks_exact(256).zip(y.chunks_exact_mut(136)).enumerate() {
        let qws = qw.map(|q| &q[256 * ibl..256 * ibl + 256]);
        let mut s = 0f32;
        for v in xs {
            s += v * v;
        }
        let sigma2 = [s * (2.0 / 256.0); 8];
        let (xt, wt) = group_weights(xs, qws, &sigma2);
        // SAFETY: AVX2 is enabled in this function.
        let scales = unsafe { iq4_scales_8(&xt, &wt, 7) };
        let mut max_scale = 0f32;
        let mut amax_scale = 0f32;
        for &d in &scales {
            if d.abs() > amax_scale {
                amax_scale = d.abs();
                max_scale = d;
            }
        }
        let (head, qs) = yb.split_at_mut(8);
        head.fill(0);
        let d = -max_scale / 32.0;
        write_f16(&mut head[0..2], d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut scales_h = 0u16;
        for ib in 0..8 {
            let l = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * l as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            // SAFETY: AVX2 is enabled; 32 values in, 16 bytes out.
            unsafe {
                iq4_levels_32(
                    &xs[32 * ib..32 * ib + 32],
                    idl,
                    &mut qs[16 * ib..16 * ib + 16],
                )
            };
            let l = (l + 32) as u8;
            if ib % 2 == 0 {
                head[4 + ib / 2] = l & 0xF;
            } else {
                head[4 + ib / 2] |= (l & 0xF) << 4;
            }
            scales_h |= u16::from(l >> 4) << (2 * ib);
        }
        head[2..4].copy_from_slice(&scales_h.to_le_bytes());
    }
}
