//! The few ggml block kernels conversions need before quant-kernels' ggml
//! module lands: Q8_0 both ways and Q4_0/Q4_1 dequantization, transcribed
//! from ggml-quants.c (`quantize_row_q8_0_ref`, `dequantize_row_q8_0`,
//! `dequantize_row_q4_0`, `dequantize_row_q4_1`). Delete this file and call
//! quant-kernels once it has them.

use quant_kernels::float::{read_f16, write_f16};
use quant_kernels::GgmlType;

const QK: usize = 32;

/// Types this file can dequantize.
pub fn can_dequantize(t: GgmlType) -> bool {
    matches!(t, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1)
}

/// Types this file can quantize.
pub fn can_quantize(t: GgmlType) -> bool {
    t == GgmlType::Q8_0
}

/// Dequantizes whole blocks of `t` from `x` into `y`.
pub fn dequantize(t: GgmlType, x: &[u8], y: &mut [f32]) {
    let bytes = t.type_size() as usize;
    for (block, out) in x.chunks_exact(bytes).zip(y.chunks_exact_mut(QK)) {
        let d = read_f16(&block[0..2]);
        match t {
            GgmlType::Q8_0 => {
                for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                    *o = f32::from(q as i8) * d;
                }
            }
            GgmlType::Q4_0 => {
                for j in 0..QK / 2 {
                    let b = block[2 + j];
                    out[j] = (i32::from(b & 0x0f) - 8) as f32 * d;
                    out[j + QK / 2] = (i32::from(b >> 4) - 8) as f32 * d;
                }
            }
            GgmlType::Q4_1 => {
                let m = read_f16(&block[2..4]);
                for j in 0..QK / 2 {
                    let b = block[4 + j];
                    out[j] = f32::from(b & 0x0f) * d + m;
                    out[j + QK / 2] = f32::from(b >> 4) * d + m;
                }
            }
            _ => unreachable!("checked by can_dequantize"),
        }
    }
}

/// `quantize_row_q8_0_ref`: per block of 32, `d = amax / 127`, `q =
/// roundf(x / d)` computed as `x * (1 / d)`, d stored as f16.
pub fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
    for (block, out) in x.chunks_exact(QK).zip(y.chunks_exact_mut(34)) {
        let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        write_f16(&mut out[0..2], d);
        for (o, &v) in out[2..].iter_mut().zip(block) {
            *o = (v * id).round() as i8 as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_round_trips_its_own_values() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut q = vec![0u8; 68];
        quantize_q8_0(&x, &mut q);
        let mut y = vec![0f32; 64];
        dequantize(GgmlType::Q8_0, &q, &mut y);
        let mut q2 = vec![0u8; 68];
        quantize_q8_0(&y, &mut q2);
        assert_eq!(q, q2);
        // Half-way values round away from zero (roundf), not to even.
        let mut one = [0f32; 32];
        one[0] = 127.0;
        one[1] = 2.5;
        one[2] = -2.5;
        quantize_q8_0(&one, &mut q);
        assert_eq!((q[3] as i8, q[4] as i8), (3, -3));
    }

    #[test]
    fn q4_nibbles_split_halves() {
        let mut block = [0u8; 20];
        write_f16(&mut block[0..2], 0.5);
        write_f16(&mut block[2..4], -1.0);
        block[4] = 0x21; // element 0 = 1, element 16 = 2
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_1, &block, &mut y);
        assert_eq!((y[0], y[16], y[1]), (-0.5, 0.0, -1.0));
    }
}
