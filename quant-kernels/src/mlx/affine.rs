//! Affine quantization of one group: the scalar reference (mlx's CPU
//! backend, `quantize` in `backend/cpu/quantized.cpp`), the Metal/CUDA
//! variant, bit packing, and the fast CPU path tested against the
//! reference.

use super::numeric::round_to;
use super::{DequantPrecision, MlxDtype, MlxVariant};

/// `float eps = 1e-7;` in mlx: the double literal narrowed to f32.
const EPS: f32 = 1e-7_f64 as f32;

/// Largest q of `bits`: `(1 << bits) - 1` as f32.
#[inline]
fn n_bins(bits: u32) -> f32 {
    ((1u32 << bits) - 1) as f32
}

/// `std::max(a, b)`: `(a < b) ? b : a`.
#[inline]
fn cpp_max(a: f32, b: f32) -> f32 {
    if a < b {
        b
    } else {
        a
    }
}

/// `std::min(a, b)`: `(b < a) ? b : a`.
#[inline]
fn cpp_min(a: f32, b: f32) -> f32 {
    if b < a {
        b
    } else {
        a
    }
}

/// Scale and bias of a group in f32, before they are stored in the dtype.
///
/// CPU (bits >= 2): min and max start at +inf and -inf;
/// `scale = max((max-min)/n_bins, 1e-7)`, negated unless |min| > |max|;
/// `edge` = min or max, whichever is larger in magnitude;
/// `q0 = rint(edge/scale)`; when q0 != 0 the scale becomes `edge/q0` and
/// the bias `edge` (so the edge value is exactly representable), else the
/// bias is 0. 1 bit (mlx 0.32.4, found by testing against it: the 0.32.4
/// source was not available): `scale = max(max-min, 1e-7)`, `bias = min`.
///
/// GPU: the running max starts at 0 and `q0` rounds half away from zero;
/// the rest is the same formula.
pub(crate) fn group_params(w: &[f32], bits: u32, variant: MlxVariant) -> (f32, f32) {
    let mut w_min = f32::INFINITY;
    let mut w_max = match variant {
        MlxVariant::Cpu => f32::NEG_INFINITY,
        MlxVariant::Gpu => 0.0,
    };
    for &x in w {
        w_max = cpp_max(w_max, x);
        w_min = cpp_min(w_min, x);
    }
    params_from_range(w_min, w_max, bits, variant)
}

/// The formula of [`group_params`] once min and max are known.
#[inline(always)]
fn params_from_range(w_min: f32, w_max: f32, bits: u32, variant: MlxVariant) -> (f32, f32) {
    if bits == 1 {
        return (cpp_max(w_max - w_min, EPS), w_min);
    }
    let nb = n_bins(bits);
    let mask = w_min.abs() > w_max.abs();
    let mut scale = cpp_max((w_max - w_min) / nb, EPS);
    if !mask {
        scale = -scale;
    }
    let edge = if mask { w_min } else { w_max };
    let q0 = match variant {
        MlxVariant::Cpu => (edge / scale).round_ties_even(),
        MlxVariant::Gpu => (edge / scale).round(),
    };
    if q0 != 0.0 {
        (edge / q0, edge)
    } else {
        (scale, 0.0)
    }
}

/// Min and max of a group (a multiple of 8 finite values) in 8 lanes, so
/// the scan vectorizes. The order of comparisons differs from mlx's loop,
/// which can only change the sign of a zero min or max; for bits >= 2
/// that sign never reaches the output (a zero edge gives q0 = 0, bias 0,
/// scale +-1e-7 decided by magnitudes alone). 1 bit stores the min as the
/// bias, so it keeps mlx's sequential scan.
#[inline(always)]
fn min_max_lanes(w: &[f32]) -> (f32, f32) {
    let mut lo = [f32::INFINITY; 8];
    let mut hi = [f32::NEG_INFINITY; 8];
    for c in w.chunks_exact(8) {
        for i in 0..8 {
            lo[i] = cpp_min(lo[i], c[i]);
            hi[i] = cpp_max(hi[i], c[i]);
        }
    }
    let lo = lo.iter().fold(f32::INFINITY, |a, &b| cpp_min(a, b));
    let hi = hi.iter().fold(f32::NEG_INFINITY, |a, &b| cpp_max(a, b));
    (lo, hi)
}

/// The reference: quantizes one group of f32 values (already widened from
/// the input dtype) into `q`, returning the stored scale and bias rounded
/// to `dtype`. The q values are computed from the f32 scale and bias, not
/// from the rounded ones, as mlx does.
pub(crate) fn quantize_group_ref(
    w: &[f32],
    bits: u32,
    variant: MlxVariant,
    dtype: MlxDtype,
    q: &mut [u8],
) -> (f32, f32) {
    let (scale, bias) = group_params(w, bits, variant);
    let nb = n_bins(bits);
    for (qi, &x) in q.iter_mut().zip(w) {
        let y = (x - bias) / scale;
        *qi = match variant {
            MlxVariant::Cpu => cpp_min(cpp_max(y.round_ties_even(), 0.0), nb) as u8,
            // `uint8_t(min(round(y), n_bins))`: Rust's saturating cast.
            MlxVariant::Gpu => cpp_min(y.round(), nb) as u8,
        };
    }
    (round_to(dtype, scale), round_to(dtype, bias))
}

/// Packs q values LSB first into words: element i occupies bits
/// `i*bits .. (i+1)*bits` of the little-endian bit stream. `q.len()*bits`
/// is a multiple of 32.
pub(crate) fn pack_ref(q: &[u8], bits: u32, out: &mut [u32]) {
    out.fill(0);
    for (i, &v) in q.iter().enumerate() {
        let pos = i * bits as usize;
        let (word, shift) = (pos / 32, pos % 32);
        let wide = u64::from(v) << shift;
        out[word] |= wide as u32;
        if shift + bits as usize > 32 {
            out[word + 1] |= (wide >> 32) as u32;
        }
    }
}

/// The inverse of [`pack_ref`].
pub(crate) fn unpack_ref(words: &[u32], bits: u32, q: &mut [u8]) {
    let mask = (1u64 << bits) - 1;
    for (i, qi) in q.iter_mut().enumerate() {
        let pos = i * bits as usize;
        let (word, shift) = (pos / 32, pos % 32);
        let mut wide = u64::from(words[word]);
        if shift + bits as usize > 32 {
            wide |= u64::from(words[word + 1]) << 32;
        }
        *qi = ((wide >> shift) & mask) as u8;
    }
}

/// The reference dequantization of one group from its q values.
/// `sdtype` is the dtype the scale and bias are stored in.
pub(crate) fn dequantize_group_ref(
    q: &[u8],
    scale: f32,
    bias: f32,
    sdtype: MlxDtype,
    precision: DequantPrecision,
    out: &mut [f32],
) {
    for (o, &qi) in out.iter_mut().zip(q) {
        let qf = f32::from(qi);
        *o = match precision {
            DequantPrecision::F32 => qf * scale + bias,
            DequantPrecision::Mlx(dst) => {
                let t = round_to(sdtype, qf * scale);
                round_to(dst, round_to(sdtype, t + bias))
            }
        };
    }
}

/// The fast CPU path: same bytes as [`quantize_group_ref`] with
/// [`MlxVariant::Cpu`], written so the loops vectorize.
///
/// `rint(y)` then clamping to `[0, n_bins]` equals clamping then rounding,
/// since both bounds are integers and rint is monotonic; for
/// `0 <= y <= 255`, `y + 2^23` lands where f32's spacing is 1, so the
/// addition itself rounds to nearest even and the low mantissa bits are
/// the integer. NaN cannot reach here (inputs are checked finite and
/// `x - bias` stays within the group's finite range).
#[inline(always)]
pub(crate) fn quantize_group_fast<const BITS: u32>(
    w: &[f32],
    dtype: MlxDtype,
    q: &mut [u8],
) -> (f32, f32) {
    const MAGIC: f32 = 8_388_608.0;
    let (scale, bias) = if BITS == 1 {
        group_params(w, BITS, MlxVariant::Cpu)
    } else {
        let (lo, hi) = min_max_lanes(w);
        params_from_range(lo, hi, BITS, MlxVariant::Cpu)
    };
    let nb = n_bins(BITS);
    for (qi, &x) in q.iter_mut().zip(w) {
        let y = cpp_min(cpp_max((x - bias) / scale, 0.0), nb);
        *qi = ((y + MAGIC).to_bits() - MAGIC.to_bits()) as u8;
    }
    (round_to(dtype, scale), round_to(dtype, bias))
}

/// Fast packing of one group (a multiple of 32 values) for `BITS`. Every
/// 8 values fill exactly `BITS` bytes, so each run of 8 is assembled in a
/// u64 with constant shifts and its low `BITS` bytes stored.
#[inline(always)]
pub(crate) fn pack_fast<const BITS: u32>(q: &[u8], out: &mut [u32]) {
    let b = BITS as usize;
    for (words, chunk) in out.chunks_exact_mut(b).zip(q.chunks_exact(32)) {
        let mut bytes = [0u8; 4 * 8 + 8];
        for (r, run) in chunk.chunks_exact(8).enumerate() {
            let mut v = 0u64;
            for (k, &x) in run.iter().enumerate() {
                v |= u64::from(x) << (k * b);
            }
            bytes[r * b..r * b + 8].copy_from_slice(&v.to_le_bytes());
        }
        for (j, w) in words.iter_mut().enumerate() {
            *w = u32::from_le_bytes([
                bytes[4 * j],
                bytes[4 * j + 1],
                bytes[4 * j + 2],
                bytes[4 * j + 3],
            ]);
        }
    }
}

/// Fast unpacking of one group for `BITS` (the inverse of [`pack_fast`]).
#[inline(always)]
pub(crate) fn unpack_fast<const BITS: u32>(words: &[u32], q: &mut [u8]) {
    let b = BITS as usize;
    if 32 % BITS == 0 {
        let per = (32 / BITS) as usize;
        let mask = (1u32 << BITS) - 1;
        for (&word, chunk) in words.iter().zip(q.chunks_exact_mut(per)) {
            for (k, v) in chunk.iter_mut().enumerate() {
                *v = ((word >> (k as u32 * BITS)) & mask) as u8;
            }
        }
        return;
    }
    let mask = (1u64 << BITS) - 1;
    for (ws, chunk) in words.chunks_exact(b).zip(q.chunks_exact_mut(32)) {
        let mut bytes = [0u8; 4 * 8 + 8];
        for (j, w) in ws.iter().enumerate() {
            bytes[4 * j..4 * j + 4].copy_from_slice(&w.to_le_bytes());
        }
        for (r, run) in chunk.chunks_exact_mut(8).enumerate() {
            let v = u64::from_le_bytes(bytes[r * b..r * b + 8].try_into().unwrap());
            for (k, x) in run.iter_mut().enumerate() {
                *x = ((v >> (k * b)) & mask) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_an_lsb_first_bit_stream() {
        // 3 bits: values 0..8 repeated; element 10 straddles words 0 and 1.
        let q: Vec<u8> = (0..32).map(|i| (i % 8) as u8).collect();
        let mut words = [0u32; 3];
        pack_ref(&q, 3, &mut words);
        let mut stream = 0u128;
        for (i, &v) in q.iter().enumerate() {
            stream |= u128::from(v) << (3 * i);
        }
        assert_eq!(words[0], stream as u32);
        assert_eq!(words[1], (stream >> 32) as u32);
        assert_eq!(words[2], (stream >> 64) as u32);
        let mut back = [0u8; 32];
        unpack_ref(&words, 3, &mut back);
        assert_eq!(&back[..], &q[..]);
    }

    fn check_pack<const BITS: u32>() {
        let mut seed = 0x9e37_79b9_u32;
        let q: Vec<u8> = (0..128)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed & ((1 << BITS) - 1)) as u8
            })
            .collect();
        let n = 128 * BITS as usize / 32;
        let (mut a, mut b) = (vec![0u32; n], vec![0u32; n]);
        pack_ref(&q, BITS, &mut a);
        pack_fast::<BITS>(&q, &mut b);
        assert_eq!(a, b, "{BITS} bits");
        let (mut qa, mut qb) = (vec![0u8; 128], vec![0u8; 128]);
        unpack_ref(&a, BITS, &mut qa);
        unpack_fast::<BITS>(&a, &mut qb);
        assert_eq!(qa, q);
        assert_eq!(qb, q);
    }

    #[test]
    fn fast_packing_equals_reference() {
        check_pack::<1>();
        check_pack::<2>();
        check_pack::<3>();
        check_pack::<4>();
        check_pack::<5>();
        check_pack::<6>();
        check_pack::<8>();
    }

    #[test]
    fn edge_value_is_exact_after_rescale() {
        // The larger-magnitude extreme is exactly representable: min = -1.
        let w: Vec<f32> = (0..32).map(|i| -1.0 + i as f32 * 0.05).collect();
        let mut q = [0u8; 32];
        let (s, b) = quantize_group_ref(&w, 4, MlxVariant::Cpu, MlxDtype::F32, &mut q);
        assert_eq!(b, -1.0);
        assert!(s > 0.0);
        assert_eq!(q[0], 0);
    }

    #[test]
    fn gpu_variant_differs_on_all_negative_groups() {
        let w: Vec<f32> = (0..32).map(|i| -1.0 - i as f32 * 0.01).collect();
        let cpu = group_params(&w, 4, MlxVariant::Cpu);
        let gpu = group_params(&w, 4, MlxVariant::Gpu);
        assert_ne!(cpu, gpu);
        // GPU: max starts at 0, so the range is [min, 0].
        assert_eq!(gpu.1, w[31]);
    }
}
