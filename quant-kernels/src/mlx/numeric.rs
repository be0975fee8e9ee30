//! The scalar conversions mlx's CPU backend uses, reproduced to the bit:
//! dtype rounding (`mlx/types/fp16.h`, `bf16.h`), E4M3 (`ToFP8`/`FromFP8`
//! in `backend/cpu/unary_ops.h`), E2M1 and E8M0.

use half::f16;

use super::MlxDtype;

/// `static_cast<T>(x)` for mlx's f16 and bf16 structs, widened back to f32.
///
/// f16: mlx converts with Maratyszcza's FP16 algorithm, round to nearest
/// even including subnormals, overflow to infinity — what `half` computes
/// (tested exhaustively around every rounding boundary below). bf16:
/// `(bits + 0x7fff + ((bits >> 16) & 1)) >> 16`, also nearest even. NaN
/// payloads differ from mlx's, which no caller observes.
#[inline]
pub(crate) fn round_to(dtype: MlxDtype, x: f32) -> f32 {
    match dtype {
        MlxDtype::F32 => x,
        MlxDtype::F16 => f16::from_f32(x).to_f32(),
        MlxDtype::BF16 => bf16_round(x),
    }
}

/// f32 -> bf16 -> f32 with mlx's rounding (nearest even on the bits).
#[inline]
pub(crate) fn bf16_round(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let u = x.to_bits();
    let r = u.wrapping_add(0x7fff + ((u >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(r)
}

/// mlx's `detail::ToFP8`: f32 -> E4M3 (bias 7, no infinities), round to
/// nearest even, magnitudes from 464 up (and NaN) saturate to 448 (0x7e).
#[inline]
pub(crate) fn to_fp8_e4m3(x: f32) -> u8 {
    const FP8_MAX: u32 = 543 << 21;
    const DENORM_MASK: u32 = 141 << 23;
    let bits = x.to_bits();
    let sign = bits & 0x8000_0000;
    let mag = bits ^ sign;
    let code = if mag >= FP8_MAX {
        0x7e
    } else if mag < (121 << 23) {
        // Below E4M3's smallest normal: let an f32 addition do the rounding.
        let low = (f32::from_bits(mag) + f32::from_bits(DENORM_MASK)).to_bits();
        low.wrapping_sub(DENORM_MASK) as u8
    } else {
        let mant_odd = (mag >> 20) & 1;
        let rebias = ((7i32 - 127) as u32) << 23;
        let high = mag
            .wrapping_add(rebias.wrapping_add(0x7ffff))
            .wrapping_add(mant_odd);
        (high >> 20) as u8
    };
    code | (sign >> 24) as u8
}

/// mlx's `detail::FromFP8`: E4M3 -> f32 through f16 bits (exact; 0x7f
/// decodes to 480, there is no NaN).
#[inline]
pub(crate) fn from_fp8_e4m3(code: u8) -> f32 {
    let v = f16::from_bits(u16::from(code & 127) << 7).to_f32() * 256.0;
    if code & 128 != 0 {
        -v
    } else {
        v
    }
}

/// E2M1 values by code, mlx's `FP4_LUT` (code 8 is -0).
pub(crate) const FP4_LUT: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// 2^n as f32: exact for -149 <= n <= 127, 0 below, infinity above
/// (what `powf(2, n)` returns).
#[inline]
pub(crate) fn pow2(n: i32) -> f32 {
    if n > 127 {
        f32::INFINITY
    } else if n >= -126 {
        f32::from_bits(((n + 127) as u32) << 23)
    } else if n >= -149 {
        f32::from_bits(1u32 << (n + 149))
    } else {
        0.0
    }
}

/// The exact `ceil(log2(s))` of a positive finite f32 (subnormals included).
#[inline]
pub(crate) fn ceil_log2(s: f32) -> i32 {
    let bits = s.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0 {
        let top = 31 - man.leading_zeros() as i32;
        let floor = top - 149;
        if man == 1 << top {
            floor
        } else {
            floor + 1
        }
    } else if man == 0 {
        exp - 127
    } else {
        exp - 126
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rounding_is_nearest_even_at_every_boundary() {
        // Every midpoint between adjacent f16 values (and its f32
        // neighbours) rounds the way nearest-even says, subnormals included.
        for h in 0u16..0x7bff {
            let lo = f16::from_bits(h).to_f32();
            let hi = f16::from_bits(h + 1).to_f32();
            let mid = ((f64::from(lo) + f64::from(hi)) / 2.0) as f32;
            let even = if h % 2 == 0 { lo } else { hi };
            assert_eq!(
                round_to(MlxDtype::F16, mid).to_bits(),
                even.to_bits(),
                "{h:#x}"
            );
            let below = f32::from_bits(mid.to_bits() - 1);
            let above = f32::from_bits(mid.to_bits() + 1);
            assert_eq!(round_to(MlxDtype::F16, below), lo);
            assert_eq!(round_to(MlxDtype::F16, above), hi);
        }
        assert_eq!(round_to(MlxDtype::F16, 65520.0), f32::INFINITY);
        assert_eq!(round_to(MlxDtype::F16, 65519.996), 65504.0);
    }

    #[test]
    fn bf16_rounding_matches_the_crate_conversion() {
        for x in [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5, 3.4e38, 1e-40] {
            assert_eq!(
                bf16_round(x),
                crate::float::bf16_to_f32(crate::float::f32_to_bf16(x))
            );
        }
    }

    #[test]
    fn e4m3_round_trips_and_saturates() {
        for code in 0u8..=255 {
            if code & 127 == 127 {
                continue;
            }
            assert_eq!(to_fp8_e4m3(from_fp8_e4m3(code)), code, "{code:#x}");
        }
        assert_eq!(to_fp8_e4m3(1e9), 0x7e);
        assert_eq!(to_fp8_e4m3(-1e9), 0xfe);
        assert_eq!(from_fp8_e4m3(0x7e), 448.0);
        assert_eq!(from_fp8_e4m3(0x01), 2f32.powi(-9));
        // 464 is the midpoint of 448 and (missing) 480: saturates.
        assert_eq!(to_fp8_e4m3(463.9), 0x7e);
        // Ties to even: 1 + 1/16 is halfway between 1 and 1.125.
        assert_eq!(to_fp8_e4m3(1.0625), to_fp8_e4m3(1.0));
        assert_eq!(to_fp8_e4m3(1.1875), to_fp8_e4m3(1.25));
    }

    #[test]
    fn ceil_log2_is_exact() {
        assert_eq!(ceil_log2(1.0), 0);
        assert_eq!(ceil_log2(f32::from_bits(1.0f32.to_bits() + 1)), 1);
        assert_eq!(ceil_log2(0.75), 0);
        assert_eq!(ceil_log2(f32::from_bits(1)), -149);
        assert_eq!(ceil_log2(f32::from_bits(3)), -147);
        assert_eq!(ceil_log2(f32::from_bits(4)), -147);
        assert_eq!(ceil_log2(f32::MAX), 128);
        for n in -149..=127 {
            assert_eq!(ceil_log2(pow2(n)), n);
        }
    }
}
