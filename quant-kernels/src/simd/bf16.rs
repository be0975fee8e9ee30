//! When the BF16 tiles may run FMAs instead of the reference's emulation
//! of `vdpbf16ps` (`ggml::reference::vec_dot_bf16`), whose every addition
//! flushes a denormal result to zero and which treats denormal inputs as
//! zero. Where no product can be denormal and none overflows, those
//! flushes never fire and every product is exact, so `fma(w, a, c)`
//! rounds exactly as the reference's `c + w * a` does.
//!
//! The proof of the fast case: a nonzero bf16 value with exponent `e` is
//! an integer (below 2^8) times 2^(e - 7), so a product of a weight with
//! exponent at least [`BF16_W_MIN`] and an activation with exponent at
//! least [`BF16_A_MIN`] is an integer below 2^16 times a power of two of
//! at least 2^(BF16_W_MIN + BF16_A_MIN - 14) = 2^-123, exact in f32; every
//! sum of such products, rounded or not, stays a multiple of 2^-123 (a
//! result whose ulp is finer is below 2^-100 and exact), so a nonzero sum
//! is at least 2^-123 and never denormal. Exponents at most [`BF16_MAX`]
//! keep every product below 2^126: no product overflows (sums may, the
//! same in both).

/// Smallest exponent of a nonzero weight in the fast case.
pub(super) const BF16_W_MIN: i32 = -60;
/// Smallest exponent of a nonzero activation in the fast case.
pub(super) const BF16_A_MIN: i32 = -49;
/// Largest exponent of any value in the fast case.
pub(super) const BF16_MAX: i32 = 62;

/// Whether every bf16 value of `row` is zero or normal with an exponent
/// in `[min, BF16_MAX]` (no denormal, infinity or NaN). Inlined into the
/// SIMD callers, whose features vectorize the scan.
#[inline(always)]
pub(super) fn bf16_row_in_range(row: &[u8], min: i32) -> bool {
    // Magnitude bits (sign cleared): zero, or in [2^min, 2^(MAX + 1)).
    // m - 1 wraps for zero, which then passes both tests.
    let lo = ((min + 127) << 7) as u16;
    let hi = ((BF16_MAX + 128) << 7) as u16;
    let (mut least, mut most) = (u16::MAX, 0u16);
    let p = row.as_ptr() as *const u16;
    for i in 0..row.len() / 2 {
        // SAFETY: value i's two bytes are inside `row`; an unaligned read
        // (which, unlike byte-wise assembly, vectorizes to plain loads).
        let m = u16::from_le(unsafe { p.add(i).read_unaligned() }) & 0x7fff;
        least = least.min(m.wrapping_sub(1));
        most = most.max(m);
    }
    least >= lo - 1 && most < hi
}
