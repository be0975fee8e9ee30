//! Scalar float conversions with ggml's exact rounding.

use half::{bf16, f16};

/// f32 -> f16, round to nearest even (ggml's `GGML_FP32_TO_FP16`; F16C and
/// the scalar fallback agree with `half`).
#[inline]
pub fn f32_to_f16(x: f32) -> f16 {
    f16::from_f32(x)
}

/// f16 -> f32 (exact).
#[inline]
pub fn f16_to_f32(x: f16) -> f32 {
    x.to_f32()
}

/// f32 -> bf16 as ggml computes it (`ggml_compute_fp32_to_bf16`): round to
/// nearest even on the bit pattern, NaN made quiet by setting bit 6.
#[inline]
pub fn f32_to_bf16(x: f32) -> bf16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return bf16::from_bits(((u >> 16) | 64) as u16);
    }
    bf16::from_bits((u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16)
}

/// bf16 -> f32 (exact).
#[inline]
pub fn bf16_to_f32(x: bf16) -> f32 {
    f32::from_bits(u32::from(x.to_bits()) << 16)
}

/// Reads the little-endian f16 at `bytes[0..2]` as f32.
#[inline]
pub fn read_f16(bytes: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[0], bytes[1]])).to_f32()
}

/// Writes `x` as a little-endian f16 (round to nearest even) into `bytes[0..2]`.
#[inline]
pub fn write_f16(bytes: &mut [u8], x: f32) {
    bytes[..2].copy_from_slice(&f16::from_f32(x).to_bits().to_le_bytes());
}

/// Rounds every value to the nearest f16 (ties to even) and back, as
/// storing it in an f16 tensor does (overflow to infinity, NaN stays
/// NaN); F16C where the CPU has it.
pub fn round_to_f16(x: &mut [f32]) {
    crate::simd::round_to_f16(x);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_to_f16_matches_half() {
        let mut s: u32 = 0x1234_5678;
        let mut x: Vec<f32> = (0..4099)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                match i % 4 {
                    0 => f32::from_bits(s),
                    1 => (s as f32 / u32::MAX as f32 - 0.5) * 1e5,
                    2 => (s as f32 / u32::MAX as f32 - 0.5) * 1e-5,
                    _ => (s as f32 / u32::MAX as f32 - 0.5) * 2.0,
                }
            })
            .collect();
        x.extend([
            65504.0,
            65520.0,
            -65520.0,
            6e-8,
            3e-8,
            f32::INFINITY,
            f32::NAN,
            -0.0,
        ]);
        let want: Vec<f32> = x.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        round_to_f16(&mut x);
        for (g, w) in x.iter().zip(&want) {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{g} vs {w}"
            );
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to even (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0).to_bits(), 0x3f80);
        // 1 + 3*2^-8 is halfway: rounds up to the even mantissa 0x3f82.
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0).to_bits(), 0x3f82);
        let snan = f32::from_bits(0x7f80_0001);
        assert_eq!(f32_to_bf16(snan).to_bits(), 0x7fc0);
        assert_eq!(f32_to_bf16(f32::INFINITY).to_bits(), 0x7f80);
        assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
    }
}
