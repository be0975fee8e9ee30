//! Helpers shared by the CPU benchmarks (each bench includes this module).

#![allow(dead_code)]

use std::time::Instant;

/// `n` weight-like values: gaussian (Box-Muller over xorshift) with
/// standard deviation 0.02, every 997th value 20 times larger (outliers).
pub fn weight_values(n: usize) -> Vec<f32> {
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let g = (-2.0 * next().ln()).sqrt() * (std::f64::consts::TAU * next()).cos();
            let v = 0.02 * g;
            (if i % 997 == 0 { v * 20.0 } else { v }) as f32
        })
        .collect()
}

/// Best of `reps` runs after a warm-up: the machine these numbers come
/// from is shared, and the minimum is the least disturbed run.
pub fn best_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
