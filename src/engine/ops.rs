//! The element-wise pieces of the forward pass, in f32: dot products,
//! RMS norm, rope, softmax, activations.

use rayon::prelude::*;

use super::config::{Activation, Rope, RopeStyle};

/// Values per task of the element-wise steps run in parallel over a
/// batch (below it a step stays on the calling thread: single tokens).
const PAR_VALUES: usize = 16 * 1024;

/// Dot product with 16 independent accumulators (the summation order
/// depends on the length only; see `quant_kernels::vector::dot`), compiled
/// for the CPU's SIMD level.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    quant_kernels::vector::dot(a, b)
}

/// `y += a * x`, compiled for the CPU's SIMD level.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    quant_kernels::vector::axpy(a, x, y);
}

/// Rounds every value to f16 and back (what an f16 tensor stores).
pub fn round_f16(x: &mut [f32]) {
    quant_kernels::float::round_to_f16(x);
}

/// RMS norm of each `n`-value row of `x` in place, times `weight`; rows
/// in parallel for a batch (each row's arithmetic is the same either way).
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let n = weight.len();
    let norm = |row: &mut [f32]| {
        let sum: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let scale = 1.0 / ((sum / n as f64) as f32 + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = *v * scale * w;
        }
    };
    if x.len() >= 2 * PAR_VALUES {
        x.par_chunks_exact_mut(n)
            .with_min_len(PAR_VALUES.div_ceil(n))
            .for_each(norm);
    } else {
        x.chunks_exact_mut(n).for_each(norm);
    }
}

/// The rotation angles of one layer's rope: `cos`/`sin` of
/// `pos * position_scale * base^(-2i/n_rot) / factor_i`.
pub struct RopeTable {
    inv_freq: Vec<f64>,
    position_scale: f64,
}

impl RopeTable {
    /// Frequencies of `rope` over `n_rot` dimensions.
    pub fn new(rope: &Rope, n_rot: usize) -> RopeTable {
        let inv_freq = (0..n_rot / 2)
            .map(|i| {
                let f = 1.0 / rope.base.powf((2 * i) as f64 / n_rot as f64);
                match rope.freq_factors.get(i) {
                    Some(&d) => f / f64::from(d),
                    None => f,
                }
            })
            .collect();
        RopeTable {
            inv_freq,
            position_scale: rope.position_scale,
        }
    }

    /// Rotates the first `n_rot` values of each `head_dim` head in every
    /// slice of `xs` (a token's queries and keys, at position `pos`), the
    /// angles computed once.
    pub fn apply_all(&self, xs: &mut [&mut [f32]], head_dim: usize, pos: usize, style: RopeStyle) {
        let half = self.inv_freq.len();
        let p = pos as f64 * self.position_scale;
        let mut cs = [(0f32, 0f32); 512];
        let cs = &mut cs[..half.min(512)];
        for (c, f) in cs.iter_mut().zip(&self.inv_freq) {
            let a = p * f;
            *c = (a.cos() as f32, a.sin() as f32);
        }
        for x in xs.iter_mut() {
            for head in x.chunks_exact_mut(head_dim) {
                for (i, &(c, s)) in cs.iter().enumerate() {
                    let (a, b) = match style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c - x1 * s;
                    head[b] = x0 * s + x1 * c;
                }
            }
        }
    }
}

/// Softmax in place: max-subtracted, summed in f64 as ggml's soft_max,
/// with quant-kernels' vectorized exponential (`vector::softmax`).
pub fn softmax(x: &mut [f32]) {
    quant_kernels::vector::softmax(x);
}

/// `gate = act(gate) * up`, element-wise.
pub fn gated_activation(act: Activation, gate: &mut [f32], up: &[f32]) {
    match act {
        Activation::Silu if gate.len() >= 2 * PAR_VALUES => gate
            .par_chunks_mut(PAR_VALUES)
            .zip(up.par_chunks(PAR_VALUES))
            .for_each(|(g, u)| quant_kernels::vector::silu_mul(g, u)),
        Activation::Silu => quant_kernels::vector::silu_mul(gate, up),
        Activation::GeluTanh => {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            for (g, u) in gate.iter_mut().zip(up) {
                let x = *g;
                *g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh()) * u;
            }
        }
    }
}

/// `cap * tanh(x / cap)` in place.
pub fn softcap(x: &mut [f32], cap: f32) {
    for v in x {
        *v = cap * (*v / cap).tanh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.25).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
        assert!((f64::from(dot(&a, &b)) - naive).abs() < 1e-3);
    }

    #[test]
    fn rope_styles_agree_up_to_permutation() {
        let rope = Rope {
            base: 10000.0,
            position_scale: 1.0,
            freq_factors: Vec::new(),
        };
        let t = RopeTable::new(&rope, 8);
        let neox: Vec<f32> = (0..8).map(|i| i as f32 + 1.0).collect();
        // Interleaved layout of the same pairs: (0,4),(1,5),(2,6),(3,7).
        let mut inter: Vec<f32> = (0..4).flat_map(|i| [neox[i], neox[i + 4]]).collect();
        let mut n = neox.clone();
        t.apply_all(&mut [&mut n], 8, 7, RopeStyle::Neox);
        t.apply_all(&mut [&mut inter], 8, 7, RopeStyle::Interleaved);
        for i in 0..4 {
            assert_eq!(n[i], inter[2 * i]);
            assert_eq!(n[i + 4], inter[2 * i + 1]);
        }
    }
}
