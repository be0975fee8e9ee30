//! Eight f32 lanes for kernels whose lane-wise source LLVM's vectorizer
//! splits the wrong way (the MLX scale search: with several accumulators
//! per loop it packs *different* sums into one register and works on two
//! lanes at a time). [`F32x8`] names the operations; `[f32; 8]` is the
//! definition (scalar, any target), [`Avx`] the same operations on one
//! 256-bit register. Each operation rounds once per lane exactly as the
//! scalar one does (no FMA, no reordering), so both give the same bits.

/// Eight f32 lanes and the lane-wise operations the searches use.
pub(crate) trait F32x8: Copy {
    /// Loads eight values.
    fn load(a: &[f32; 8]) -> Self;
    /// Stores the lanes.
    fn store(self, a: &mut [f32; 8]);
    /// Every lane `v`.
    fn splat(v: f32) -> Self;
    /// `self + o` per lane.
    fn add(self, o: Self) -> Self;
    /// `self - o` per lane.
    fn sub(self, o: Self) -> Self;
    /// `self * o` per lane.
    fn mul(self, o: Self) -> Self;
    /// Per lane `y = if self < lo { lo } else { self }`, then `if y > hi {
    /// hi } else { y }`.
    fn clamp(self, lo: Self, hi: Self) -> Self;
    /// `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`.
    fn sum(self) -> f32;
}

impl F32x8 for [f32; 8] {
    #[inline(always)]
    fn load(a: &[f32; 8]) -> Self {
        *a
    }
    #[inline(always)]
    fn store(self, a: &mut [f32; 8]) {
        *a = self;
    }
    #[inline(always)]
    fn splat(v: f32) -> Self {
        [v; 8]
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        std::array::from_fn(|i| self[i] + o[i])
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        std::array::from_fn(|i| self[i] - o[i])
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        std::array::from_fn(|i| self[i] * o[i])
    }
    #[inline(always)]
    fn clamp(self, lo: Self, hi: Self) -> Self {
        std::array::from_fn(|i| {
            let y = if self[i] < lo[i] { lo[i] } else { self[i] };
            if y > hi[i] {
                hi[i]
            } else {
                y
            }
        })
    }
    #[inline(always)]
    fn sum(self) -> f32 {
        let a = [
            self[0] + self[4],
            self[1] + self[5],
            self[2] + self[6],
            self[3] + self[7],
        ];
        (a[0] + a[2]) + (a[1] + a[3])
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx::Avx;

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::F32x8;
    use std::arch::x86_64::*;

    /// [`F32x8`] in one AVX register. Only the AVX2 and AVX-512 versions
    /// of a kernel use it (`simd::mlx_search_row`), where AVX is present;
    /// its operations are inlined into them.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx(__m256);

    // SAFETY (every block below): `Avx` values exist only inside kernels
    // compiled for, and dispatched to, CPUs with AVX2 (see the type's
    // doc), so the AVX instructions are present; loads and stores go
    // through references to exactly eight f32.
    impl F32x8 for Avx {
        #[inline(always)]
        fn load(a: &[f32; 8]) -> Self {
            unsafe { Avx(_mm256_loadu_ps(a.as_ptr())) }
        }
        #[inline(always)]
        fn store(self, a: &mut [f32; 8]) {
            unsafe { _mm256_storeu_ps(a.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            unsafe { Avx(_mm256_set1_ps(v)) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            unsafe { Avx(_mm256_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            unsafe { Avx(_mm256_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            unsafe { Avx(_mm256_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn clamp(self, lo: Self, hi: Self) -> Self {
            // maxps(a, b) is `a > b ? a : b` and minps(a, b) `a < b ? a :
            // b` (the second operand on NaN or equal values): `lo > y ? lo
            // : y` is `y < lo ? lo : y`, then `hi < y ? hi : y`.
            unsafe { Avx(_mm256_min_ps(hi.0, _mm256_max_ps(lo.0, self.0))) }
        }
        #[inline(always)]
        fn sum(self) -> f32 {
            unsafe {
                // [l0+l4, l1+l5, l2+l6, l3+l7], then (a0+a2, a1+a3), then
                // their sum.
                let a = _mm_add_ps(
                    _mm256_castps256_ps128(self.0),
                    _mm256_extractf128_ps::<1>(self.0),
                );
                let b = _mm_add_ps(a, _mm_movehl_ps(a, a));
                _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps::<1>(b, b)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx_lanes_give_the_arrays_bits() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        // SAFETY: AVX2 is present (checked above).
        unsafe { compare() }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn compare() {
        let specials = [
            0.0f32,
            -0.0,
            1.5,
            -2.25,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-40,
            3.0e38,
            7.0,
        ];
        let mut s = 7u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            if s.is_multiple_of(5) {
                specials[(s / 5 % 10) as usize]
            } else {
                (s as f32 / u32::MAX as f32 - 0.5) * 20.0
            }
        };
        let bits = |v: [f32; 8]| v.map(f32::to_bits);
        let via = |v: Avx| {
            let mut o = [0f32; 8];
            v.store(&mut o);
            o
        };
        for _ in 0..2000 {
            let a: [f32; 8] = std::array::from_fn(|_| next());
            let b: [f32; 8] = std::array::from_fn(|_| next());
            let c: [f32; 8] = std::array::from_fn(|_| next());
            let (x, y, z) = (Avx::load(&a), Avx::load(&b), Avx::load(&c));
            assert_eq!(bits(via(x.add(y))), bits(a.add(b)));
            assert_eq!(bits(via(x.sub(y))), bits(a.sub(b)));
            assert_eq!(bits(via(x.mul(y))), bits(a.mul(b)));
            assert_eq!(
                bits(via(x.clamp(y, z))),
                bits(a.clamp(b, c)),
                "{a:?} {b:?} {c:?}"
            );
            assert_eq!(bits(via(Avx::splat(a[3]))), bits(<[f32; 8]>::splat(a[3])));
            assert_eq!(x.sum().to_bits(), a.sum().to_bits(), "{a:?}");
        }
    }
}
