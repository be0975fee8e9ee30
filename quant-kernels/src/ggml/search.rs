//! Searched scales for the legacy 32-element types Q4_0, Q4_1, Q5_0 and
//! Q5_1: the same blocks ggml reads, with each block's f16 scale (and
//! Q4_1/Q5_1's f16 minimum) chosen by the search of
//! [`crate::mlx`]'s affine quantizer instead of ggml's round to nearest.
//!
//! ggml quantizes these types by round to nearest from the block's extremes
//! unless an importance matrix is given (then `make_qx_quants` or
//! `make_qkx3_quants`). This search starts from whichever of those ggml
//! would run, so by its objective (squared error weighted by
//! `importance * sqrt(sigma2 + x^2)`, `sigma2` the row's mean square, as
//! ggml's weighted quantizers weigh it) each block is never worse than
//! ggml's. The result is not llama-quantize's bytes: it is opt-in
//! (`qforge quantize --method search`).

use rayon::prelude::*;

use super::reference::{
    quantize_row_q4_0_impl, quantize_row_q4_0_ref, quantize_row_q4_1_impl, quantize_row_q4_1_ref,
    quantize_row_q5_0_impl, quantize_row_q5_0_ref, quantize_row_q5_1_impl, quantize_row_q5_1_ref,
};
use crate::float::{read_f16, write_f16};
use crate::mlx::search::{search_group, Form, Grid, Scratch};
use crate::mlx::MlxDtype;
use crate::{GgmlType, KernelError};

const QK: usize = 32;

/// The types [`quantize_search`] handles.
pub const SEARCHABLE: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
];

/// Layout of one searchable type.
struct Legacy {
    grid: Grid,
    block_bytes: usize,
    /// Bytes before the codes (d, then m for the affine types).
    header: usize,
    five_bits: bool,
}

fn legacy(ty: GgmlType) -> Option<Legacy> {
    let (nmax, form, block_bytes, header, five_bits) = match ty {
        GgmlType::Q4_0 => (15, Form::Symmetric { offset: 8 }, 18, 2, false),
        GgmlType::Q4_1 => (15, Form::Affine, 20, 4, false),
        GgmlType::Q5_0 => (31, Form::Symmetric { offset: 16 }, 22, 2, true),
        GgmlType::Q5_1 => (31, Form::Affine, 24, 4, true),
        _ => return None,
    };
    Some(Legacy {
        grid: Grid {
            nmax,
            form,
            dtype: MlxDtype::F16,
        },
        block_bytes,
        header,
        five_bits,
    })
}

/// The codes of one block (`header` bytes in, then optional `qh`, then
/// nibbles: element j low, j+16 high).
fn unpack(l: &Legacy, block: &[u8], q: &mut [u8; QK]) {
    let (qh, qs) = if l.five_bits {
        let h = &block[l.header..l.header + 4];
        (
            u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            &block[l.header + 4..],
        )
    } else {
        (0, &block[l.header..])
    };
    for j in 0..QK / 2 {
        let hi0 = ((qh >> j) & 1) as u8;
        let hi1 = ((qh >> (j + 16)) & 1) as u8;
        q[j] = (qs[j] & 0x0F) | (hi0 << 4);
        q[j + 16] = (qs[j] >> 4) | (hi1 << 4);
    }
}

/// The inverse of [`unpack`] for the codes.
fn pack(l: &Legacy, q: &[u8; QK], block: &mut [u8]) {
    let mut qh = 0u32;
    let at = l.header + if l.five_bits { 4 } else { 0 };
    for j in 0..QK / 2 {
        block[at + j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
        qh |= u32::from(q[j] >> 4 & 1) << j;
        qh |= u32::from(q[j + 16] >> 4 & 1) << (j + 16);
    }
    if l.five_bits {
        block[l.header..l.header + 4].copy_from_slice(&qh.to_le_bytes());
    }
}

/// ggml's own quantization of one row: the `_impl` with importance
/// weights, the `_ref` without.
fn ggml_row(ty: GgmlType, x: &[f32], y: &mut [u8], importance: Option<&[f32]>) {
    match (ty, importance) {
        (GgmlType::Q4_0, Some(w)) => quantize_row_q4_0_impl(x, y, w),
        (GgmlType::Q4_0, None) => quantize_row_q4_0_ref(x, y),
        (GgmlType::Q4_1, Some(w)) => quantize_row_q4_1_impl(x, y, w),
        (GgmlType::Q4_1, None) => quantize_row_q4_1_ref(x, y),
        (GgmlType::Q5_0, Some(w)) => quantize_row_q5_0_impl(x, y, w),
        (GgmlType::Q5_0, None) => quantize_row_q5_0_ref(x, y),
        (GgmlType::Q5_1, Some(w)) => quantize_row_q5_1_impl(x, y, w),
        (GgmlType::Q5_1, None) => quantize_row_q5_1_ref(x, y),
        _ => unreachable!("checked by the caller"),
    }
}

/// The scalar definition: one row of `ty` (a multiple of 32 finite
/// values) searched block by block from ggml's own bytes for it.
pub fn quantize_row_search_ref(ty: GgmlType, x: &[f32], y: &mut [u8], importance: Option<&[f32]>) {
    let l = legacy(ty).expect("a searchable type");
    ggml_row(ty, x, y, importance);
    let sum_x2 = x.iter().fold(0f32, |acc, &v| acc + v * v);
    let sigma2 = sum_x2 / x.len() as f32;
    let mut q = [0u8; QK];
    let mut w = [0f32; QK];
    let mut work = Scratch::new();
    for (b, (xb, yb)) in x
        .chunks_exact(QK)
        .zip(y.chunks_exact_mut(l.block_bytes))
        .enumerate()
    {
        for (j, (wj, &xj)) in w.iter_mut().zip(xb).enumerate() {
            let base = (sigma2 + xj * xj).sqrt();
            *wj = match importance {
                Some(imp) => imp[b * QK + j] * base,
                None => base,
            };
        }
        unpack(&l, yb, &mut q);
        let d = read_f16(&yb[0..2]);
        let m = if l.header == 4 {
            read_f16(&yb[2..4])
        } else {
            0.0
        };
        let (d, m) = search_group::<[f32; 8]>(xb, &w, &l.grid, (d, m), &mut q, &mut work);
        write_f16(&mut yb[0..2], d);
        if l.header == 4 {
            write_f16(&mut yb[2..4], m);
        }
        pack(&l, &q, yb);
    }
}

/// Quantizes rows of `n_per_row` values to `ty` (Q4_0, Q4_1, Q5_0, Q5_1)
/// with searched block scales (see the module doc); `imatrix` is one
/// non-negative weight per column, as for [`super::quantize`]. Rows run in
/// parallel; the bytes do not depend on the thread count. The blocks are
/// ordinary blocks of `ty`: every reader of the type reads them.
pub fn quantize_search(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), KernelError> {
    let Some(l) = legacy(ty) else {
        return Err(KernelError::Unsupported(format!(
            "searched scales for {ty} (available for Q4_0, Q4_1, Q5_0 and Q5_1)"
        )));
    };
    let row_bytes = super::check_rows(ty, src.len(), n_per_row, dst.len())?;
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            return Err(KernelError::BadLength(format!(
                "the importance matrix has {} entries, the rows {n_per_row} values",
                w.len()
            )));
        }
        if let Some(i) = w.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(KernelError::BadLength(format!(
                "importance weight {i} is {}, not a finite non-negative number",
                w[i]
            )));
        }
    }
    if n_per_row == 0 {
        return Ok(());
    }
    debug_assert_eq!(row_bytes, n_per_row / QK * l.block_bytes);
    let bad = src
        .par_chunks(n_per_row)
        .zip(dst.par_chunks_mut(row_bytes))
        .enumerate()
        .filter_map(|(r, (x, y))| match x.iter().position(|v| !v.is_finite()) {
            Some(c) => Some(r * n_per_row + c),
            None => {
                quantize_row_search_ref(ty, x, y, imatrix);
                None
            }
        })
        .min();
    match bad {
        Some(index) => Err(KernelError::NonFinite {
            index,
            value: src[index],
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml;
    use proptest::prelude::*;

    fn normals(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        (0..n)
            .map(|_| (next() + next() + next() + next() - 2.0) * 1.7)
            .collect()
    }

    /// Per-block weighted squared errors of `bytes` (decoded by ggml)
    /// against `x`, with the search's weights.
    fn block_errors(ty: GgmlType, x: &[f32], bytes: &[u8], imp: Option<&[f32]>) -> Vec<f64> {
        let mut back = vec![0f32; x.len()];
        ggml::dequantize(ty, bytes, &mut back).unwrap();
        let sigma2 = x.iter().fold(0f32, |a, &v| a + v * v) / x.len() as f32;
        x.chunks(QK)
            .zip(back.chunks(QK))
            .enumerate()
            .map(|(b, (xb, rb))| {
                xb.iter()
                    .zip(rb)
                    .enumerate()
                    .map(|(j, (&xi, &ri))| {
                        let w = f64::from((sigma2 + xi * xi).sqrt())
                            * imp.map_or(1.0, |m| f64::from(m[b * QK + j]));
                        let e = f64::from(xi - ri);
                        w * e * e
                    })
                    .sum()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Block by block, never worse than ggml's own quantizer for the
        /// same inputs (its round to nearest, or with an importance matrix
        /// its weighted search), by the weighted objective.
        #[test]
        fn never_worse_than_ggml(
            seed in any::<u64>(),
            ty in prop::sample::select(SEARCHABLE.to_vec()),
            blocks in 1usize..5,
            scale_exp in -10i32..4,
            with_imatrix in any::<bool>(),
        ) {
            let n = blocks * QK;
            let x: Vec<f32> = normals(seed, n).iter().map(|v| v * 2f32.powi(scale_exp)).collect();
            let imp: Option<Vec<f32>> = with_imatrix
                .then(|| normals(seed ^ 7, n).iter().map(|v| v * v + 0.01).collect());
            let row = ggml::row_size(ty, n).unwrap();
            let (mut ours, mut theirs) = (vec![0u8; row], vec![0u8; row]);
            quantize_search(ty, &x, n, imp.as_deref(), &mut ours).unwrap();
            ggml::quantize(ty, &x, n, imp.as_deref(), &mut theirs).unwrap();
            let a = block_errors(ty, &x, &ours, imp.as_deref());
            let b = block_errors(ty, &x, &theirs, imp.as_deref());
            for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                prop_assert!(*a <= b * (1.0 + 1e-5) + 1e-30, "{ty} block {i}: ours {a}, ggml {b}");
            }
        }
    }

    #[test]
    fn search_cuts_the_error_of_round_to_nearest() {
        for (ty, want) in [
            (GgmlType::Q4_0, 0.95),
            (GgmlType::Q4_1, 0.9),
            (GgmlType::Q5_0, 0.95),
            (GgmlType::Q5_1, 0.9),
        ] {
            let n = 64 * QK;
            let x = normals(42, n);
            let row = ggml::row_size(ty, n).unwrap();
            let (mut ours, mut theirs) = (vec![0u8; row], vec![0u8; row]);
            quantize_search(ty, &x, n, None, &mut ours).unwrap();
            ggml::quantize(ty, &x, n, None, &mut theirs).unwrap();
            let a: f64 = block_errors(ty, &x, &ours, None).iter().sum();
            let b: f64 = block_errors(ty, &x, &theirs, None).iter().sum();
            eprintln!("{ty}: error ratio {}", a / b);
            assert!(a / b < want, "{ty}: error ratio {}", a / b);
        }
    }

    #[test]
    fn same_bytes_on_any_thread_count() {
        let (rows, cols) = (37, 256);
        let x = normals(3, rows * cols);
        let imp: Vec<f32> = normals(4, cols).iter().map(|v| v.abs()).collect();
        for ty in SEARCHABLE.iter().copied() {
            let row = ggml::row_size(ty, cols).unwrap();
            let mut want = vec![0u8; rows * row];
            for (xr, yr) in x.chunks(cols).zip(want.chunks_mut(row)) {
                quantize_row_search_ref(ty, xr, yr, Some(&imp));
            }
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut got = vec![0u8; rows * row];
                pool.install(|| quantize_search(ty, &x, cols, Some(&imp), &mut got))
                    .unwrap();
                assert_eq!(got, want, "{ty}, {threads} threads");
            }
        }
    }

    #[test]
    fn refuses_other_types_and_bad_inputs() {
        let x = vec![0.5f32; 32];
        let mut y = vec![0u8; 34];
        assert!(quantize_search(GgmlType::Q8_0, &x, 32, None, &mut y).is_err());
        let mut y = vec![0u8; 18];
        assert!(quantize_search(GgmlType::Q4_0, &x, 32, Some(&[1.0; 31]), &mut y).is_err());
        assert!(quantize_search(GgmlType::Q4_0, &x, 32, Some(&[-1.0; 32]), &mut y).is_err());
        let mut bad = x.clone();
        bad[5] = f32::NAN;
        match quantize_search(GgmlType::Q4_0, &bad, 32, None, &mut y) {
            Err(KernelError::NonFinite { index: 5, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
