//! Requantizing what is already quantized, keeping what the target can
//! hold.
//!
//! llama.cpp requantizes a quantized tensor by dequantizing it to f32 and
//! quantizing the values afresh: the new scales are derived from the
//! values' range, so the target's grid falls between the source's points
//! even where it could hold every one of them (Q4_1 into Q5_1 loses
//! values). Here, per tensor:
//!
//! - [`Requant::Nested`]: the target's grid contains the source's
//!   ([`nests`]): blocks are transcoded as integers, and the output
//!   dequantizes to the source's values bit for bit (the sign of a zero
//!   aside, see `nest`).
//! - [`Requant::Search`]: the grids do not nest: llama.cpp's quantizer
//!   runs on the dequantized values, and each block is then searched for
//!   scales aimed at the source's grid points (`search`); the searched
//!   block replaces llama.cpp's where its error against the source values
//!   is smaller. The result is never worse than llama.cpp's, block by
//!   block, by that error.
//! - [`Requant::Reference`]: no grid to aim at (a float source, an IQ4
//!   target): llama.cpp's quantizer, byte for byte.
//!
//! Errors are squared differences against the source's dequantized values,
//! weighted by the importance matrix when one is given.

mod blocks;
mod lattice;
mod nest;
mod search;

use rayon::prelude::*;

pub use nest::nests;

use self::blocks::{KAffine, KSym, QK_K};
use self::lattice::{has_lattice, row_lattice, Lattice, RowLattice};
use self::nest::{legacy_kind, transcode_block};
use super::{check_rows, dequantize_row_fast, imatrix_use, quantize_row_fast, ImatrixUse};
use crate::{GgmlType, KernelError};

/// How [`requantize`] makes one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Requant {
    /// Same type: the bytes as they are.
    Copy,
    /// The target holds every source value: block-by-block transcoding (or,
    /// into F32, the dequantized values).
    Nested,
    /// llama.cpp's blocks, replaced where a block aimed at the source's
    /// grid is closer to the source values.
    Search,
    /// llama.cpp's quantizer on the dequantized values.
    Reference,
}

/// The types the grid search can make.
fn searchable(to: GgmlType) -> bool {
    legacy_kind(to).is_some() || matches!(to, GgmlType::Q6K | GgmlType::Q4K | GgmlType::Q5K)
}

/// How `from` becomes `to` when requantizing keeps the source's grid.
pub fn strategy(from: GgmlType, to: GgmlType) -> Requant {
    if from == to {
        Requant::Copy
    } else if to == GgmlType::F32 || nests(from, to) {
        Requant::Nested
    } else if has_lattice(from) && searchable(to) {
        Requant::Search
    } else {
        Requant::Reference
    }
}

/// What requantizing a tensor did, measured against the source values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RequantStats {
    /// Values written.
    pub values: u64,
    /// Output blocks.
    pub blocks: u64,
    /// Output blocks that dequantize to exactly the source's values.
    pub exact_blocks: u64,
    /// Output blocks from the grid search (the rest are transcoded,
    /// copied, or llama.cpp's).
    pub searched_blocks: u64,
    /// Sum of squared differences from the source values.
    pub sum_sq: f64,
    /// Largest absolute difference.
    pub max_abs: f64,
    /// Sum of squared differences of llama.cpp's quantization of the same
    /// values (measured for [`Requant::Search`] and
    /// [`Requant::Reference`], where its blocks are made anyway).
    pub reference_sum_sq: Option<f64>,
}

impl RequantStats {
    /// Root mean square difference from the source values.
    pub fn rms(&self) -> f64 {
        (self.sum_sq / self.values.max(1) as f64).sqrt()
    }

    /// Root mean square difference of llama.cpp's quantization, when
    /// measured.
    pub fn reference_rms(&self) -> Option<f64> {
        self.reference_sum_sq
            .map(|s| (s / self.values.max(1) as f64).sqrt())
    }

    /// True when every value is the source's.
    pub fn is_exact(&self) -> bool {
        self.exact_blocks == self.blocks
    }

    /// Both tallies together.
    pub fn merge(self, o: RequantStats) -> RequantStats {
        RequantStats {
            values: self.values + o.values,
            blocks: self.blocks + o.blocks,
            exact_blocks: self.exact_blocks + o.exact_blocks,
            searched_blocks: self.searched_blocks + o.searched_blocks,
            sum_sq: self.sum_sq + o.sum_sq,
            max_abs: self.max_abs.max(o.max_abs),
            reference_sum_sq: match (self.reference_sum_sq, o.reference_sum_sq) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            },
        }
    }
}

/// Requantizes rows of `n_per_row` values from `src` (type `from`) into
/// `dst` (type `to`) by [`strategy`]`(from, to)`, with importance weights
/// `imatrix` (one per column) as [`crate::ggml::quantize`] takes them.
///
/// Rows run in parallel on the current rayon pool; the bytes do not depend
/// on the thread count. Non-finite source values are refused with
/// [`KernelError::NonFinite`] (the index of the first one).
pub fn requantize(
    from: GgmlType,
    to: GgmlType,
    src: &[u8],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<RequantStats, KernelError> {
    if !super::can_dequantize(from) {
        return Err(KernelError::Unsupported(format!("dequantizing {from}")));
    }
    if !super::can_quantize(to) {
        return Err(KernelError::Unsupported(format!("quantizing to {to}")));
    }
    let src_row = super::row_size(from, n_per_row)?;
    if n_per_row == 0 || src_row == 0 {
        return Ok(RequantStats::default());
    }
    if !src.len().is_multiple_of(src_row) {
        return Err(KernelError::BadLength(format!(
            "{} bytes are not whole rows of {n_per_row} {from} values",
            src.len()
        )));
    }
    let n_rows = src.len() / src_row;
    let dst_row = check_rows(to, n_rows * n_per_row, n_per_row, dst.len())?;
    if let Some(w) = imatrix {
        if w.len() != n_per_row {
            return Err(KernelError::BadLength(format!(
                "the importance matrix has {} entries, the rows {n_per_row} values",
                w.len()
            )));
        }
    }
    let imatrix = match imatrix_use(to) {
        ImatrixUse::Ignored => None,
        _ => imatrix,
    };
    let how = strategy(from, to);
    let rows_per_task = super::rows_per_task(n_per_row);
    src.par_chunks(src_row * rows_per_task)
        .zip(dst.par_chunks_mut(dst_row * rows_per_task))
        .enumerate()
        .map_init(RowWork::default, |work, (task, (s, d))| {
            let mut stats = RequantStats::default();
            for (r, (sr, dr)) in s
                .chunks_exact(src_row)
                .zip(d.chunks_exact_mut(dst_row))
                .enumerate()
            {
                let row = task * rows_per_task + r;
                let st = work
                    .row(how, from, to, sr, n_per_row, imatrix, dr)
                    .map_err(|e| match e {
                        KernelError::NonFinite { index, value } => KernelError::NonFinite {
                            index: row * n_per_row + index,
                            value,
                        },
                        e => e,
                    })?;
                stats = stats.merge(st);
            }
            Ok(stats)
        })
        .try_reduce(RequantStats::default, |a, b| Ok(a.merge(b)))
}

/// Buffers reused across the rows of one task.
#[derive(Default)]
struct RowWork {
    x: Vec<f32>,
    y: Vec<f32>,
    reference: Vec<u8>,
    lattice: RowLattice,
    steps: Vec<f32>,
}

impl RowWork {
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        how: Requant,
        from: GgmlType,
        to: GgmlType,
        src: &[u8],
        n: usize,
        imatrix: Option<&[f32]>,
        dst: &mut [u8],
    ) -> Result<RequantStats, KernelError> {
        self.x.resize(n, 0.0);
        dequantize_row_fast(from, src, &mut self.x);
        if let Some(i) = self.x.iter().position(|v| !v.is_finite()) {
            return Err(KernelError::NonFinite {
                index: i,
                value: self.x[i],
            });
        }
        let block = to.block_size() as usize;
        let block_bytes = to.type_size() as usize;
        let mut searched = 0u64;
        let mut reference_sum_sq = None;
        match how {
            Requant::Copy => dst.copy_from_slice(src),
            Requant::Nested if to == GgmlType::F32 => quantize_row_fast(to, &self.x, dst, None),
            Requant::Nested => {
                let fb = from.type_size() as usize;
                let mut failed = Vec::new();
                for (i, (s, d)) in src
                    .chunks_exact(fb)
                    .zip(dst.chunks_exact_mut(block_bytes))
                    .enumerate()
                {
                    if !transcode_block(from, to, s, d) {
                        failed.push(i);
                    }
                }
                if !failed.is_empty() {
                    // Blocks past f16's range: llama.cpp's blocks.
                    self.reference.resize(dst.len(), 0);
                    quantize_row_fast(to, &self.x, &mut self.reference, imatrix);
                    for i in failed {
                        let r = i * block_bytes..(i + 1) * block_bytes;
                        dst[r.clone()].copy_from_slice(&self.reference[r]);
                    }
                }
            }
            Requant::Reference => {
                quantize_row_fast(to, &self.x, dst, imatrix);
                reference_sum_sq = Some(0.0);
            }
            Requant::Search => {
                quantize_row_fast(to, &self.x, dst, imatrix);
                self.y.resize(n, 0.0);
                dequantize_row_fast(to, dst, &mut self.y);
                row_lattice(from, src, &mut self.lattice);
                let mut ref_sum = 0f64;
                for (b, d) in dst.chunks_exact_mut(block_bytes).enumerate() {
                    let r = b * block..(b + 1) * block;
                    let x = &self.x[r.clone()];
                    let w = imatrix.map(|w| &w[r.clone()]);
                    let llama_err = weighted(x, &self.y[r.clone()], w);
                    ref_sum += weighted(x, &self.y[r.clone()], None);
                    if let Some(e) = search_block(
                        &self.lattice,
                        &mut self.steps,
                        to,
                        x,
                        w,
                        r.start,
                        d,
                        llama_err,
                    ) {
                        debug_assert!(e < llama_err);
                        searched += 1;
                    }
                }
                reference_sum_sq = Some(ref_sum);
            }
        }
        // Measure the row as written.
        self.y.resize(n, 0.0);
        dequantize_row_fast(to, dst, &mut self.y);
        let mut stats = RequantStats {
            values: n as u64,
            blocks: (n / block) as u64,
            searched_blocks: searched,
            reference_sum_sq,
            ..RequantStats::default()
        };
        for (xb, yb) in self.x.chunks_exact(block).zip(self.y.chunks_exact(block)) {
            let mut exact = true;
            for (&a, &b) in xb.iter().zip(yb) {
                // +0.0 and -0.0 are the same value (see `nest`).
                exact &= a == b;
                let d = (f64::from(a) - f64::from(b)).abs();
                stats.sum_sq += d * d;
                stats.max_abs = stats.max_abs.max(d);
            }
            stats.exact_blocks += u64::from(exact);
        }
        if how == Requant::Reference {
            stats.reference_sum_sq = Some(stats.sum_sq);
        }
        Ok(stats)
    }
}

/// Searches one block of `to` for `x` (elements `start..` of the row whose
/// source grids are `lattice`) and writes it into `dst` when its error,
/// measured as for llama.cpp's block, is below `llama_err`; returns that
/// error.
#[allow(clippy::too_many_arguments)]
fn search_block(
    lattice: &RowLattice,
    steps: &mut Vec<f32>,
    to: GgmlType,
    x: &[f32],
    w: Option<&[f32]>,
    start: usize,
    dst: &mut [u8],
    llama_err: f64,
) -> Option<f64> {
    if llama_err == 0.0 {
        return None;
    }
    let mut cand = [0u8; 210];
    let cand = &mut cand[..dst.len()];
    let hints = |g: usize| -> Vec<Lattice> {
        let size = if to == GgmlType::Q6K { 16 } else { 32 };
        lattice.covering(start + g * size, size).to_vec()
    };
    if let Some(kind) = legacy_kind(to) {
        let hints = lattice.covering(start, x.len());
        let b = if kind.affine() {
            search::legacy_affine(kind, x, w, hints)
        } else {
            search::legacy_symmetric(kind, x, w, hints, steps)
        };
        b.write(kind, cand);
    } else {
        match to {
            GgmlType::Q6K => {
                let llama = KSym::read_q6_k(dst);
                let base = lattice.super_scale(start);
                search::q6_k(x, w, &hints, base, &llama, steps).write_q6_k(cand);
            }
            GgmlType::Q4K => {
                let llama = KAffine::read_q4_k(dst);
                search::k_affine(15, x, w, &hints, &llama).write_q4_k(cand);
            }
            GgmlType::Q5K => {
                let llama = KAffine::read_q5_k(dst);
                search::k_affine(31, x, w, &hints, &llama).write_q5_k(cand);
            }
            _ => return None,
        }
    }
    // The candidate's error exactly as llama.cpp's was measured: through
    // the type's own dequantizer.
    let mut y = [0f32; QK_K];
    let y = &mut y[..x.len()];
    dequantize_row_fast(to, cand, y);
    let e = weighted(x, y, w);
    if e < llama_err {
        dst.copy_from_slice(cand);
        Some(e)
    } else {
        None
    }
}

/// Weighted squared error of `y` against `x`.
fn weighted(x: &[f32], y: &[f32], w: Option<&[f32]>) -> f64 {
    let mut e = 0f64;
    for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
        let d = f64::from(a) - f64::from(b);
        e += w.map_or(1.0, |w| f64::from(w[i])) * d * d;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::{dequantize, quantize};

    /// A source row set: smooth values with outliers and a block of zeros,
    /// quantized to `ty`.
    fn source(ty: GgmlType, rows: usize, n: usize) -> (Vec<u8>, Vec<f32>) {
        let x: Vec<f32> = (0..rows * n)
            .map(|i| {
                let t = i as f32;
                let v = (t * 0.377).sin() * 0.03 + (t * 0.0131).cos() * 0.01;
                if i % 211 == 5 {
                    v * 9.0
                } else if (i / 32) % 17 == 3 {
                    0.0
                } else {
                    v
                }
            })
            .collect();
        let mut b = vec![0u8; ty.row_size(n as u64).unwrap() as usize * rows];
        quantize(ty, &x, n, None, &mut b).unwrap();
        let mut y = vec![0f32; rows * n];
        dequantize(ty, &b, &mut y).unwrap();
        (b, y)
    }

    fn block_errors(ty: GgmlType, bytes: &[u8], x: &[f32], w: Option<&[f32]>) -> Vec<f64> {
        let mut y = vec![0f32; x.len()];
        dequantize(ty, bytes, &mut y).unwrap();
        let bs = ty.block_size() as usize;
        let n = w.map_or(0, <[f32]>::len);
        x.chunks(bs)
            .zip(y.chunks(bs))
            .enumerate()
            .map(|(b, (a, c))| {
                let start = b * bs % n.max(1);
                weighted(a, c, w.map(|w| &w[start..start + bs]))
            })
            .collect()
    }

    #[test]
    fn nested_pairs_dequantize_to_the_source_values() {
        let n = 512;
        for (from, to) in [
            (GgmlType::Q4_0, GgmlType::Q8_0),
            (GgmlType::Q4_0, GgmlType::Q4_1),
            (GgmlType::Q5_0, GgmlType::Q5_1),
            (GgmlType::Q4_1, GgmlType::Q5_1),
            (GgmlType::Q4K, GgmlType::Q5K),
            (GgmlType::Q3K, GgmlType::Q6K),
            (GgmlType::Q2K, GgmlType::F32),
        ] {
            assert_eq!(strategy(from, to), Requant::Nested, "{from} -> {to}");
            let (src, x) = source(from, 3, n);
            let mut dst = vec![0u8; to.row_size(n as u64).unwrap() as usize * 3];
            let st = requantize(from, to, &src, n, None, &mut dst).unwrap();
            assert!(st.is_exact(), "{from} -> {to}: {st:?}");
            assert_eq!((st.sum_sq, st.values), (0.0, 3 * n as u64));
            let mut y = vec![0f32; x.len()];
            dequantize(to, &dst, &mut y).unwrap();
            assert!(x.iter().zip(&y).all(|(a, b)| a == b), "{from} -> {to}");
        }
    }

    #[test]
    fn the_search_is_never_worse_than_llama_cpp_block_by_block() {
        let n = 512;
        let imatrix: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32).collect();
        let pairs = [
            (GgmlType::Q4_1, GgmlType::Q8_0),
            (GgmlType::Q4_1, GgmlType::Q5_0),
            (GgmlType::Q4_1, GgmlType::Q4_0),
            (GgmlType::Q5_1, GgmlType::Q4_1),
            (GgmlType::Q8_0, GgmlType::Q5_1),
            (GgmlType::Q4K, GgmlType::Q6K),
            (GgmlType::Q5_0, GgmlType::Q4K),
            (GgmlType::Q4_1, GgmlType::Q5K),
            (GgmlType::Q2K, GgmlType::Q6K),
        ];
        for (from, to) in pairs {
            assert_eq!(strategy(from, to), Requant::Search, "{from} -> {to}");
            for w in [None, Some(imatrix.as_slice())] {
                let (src, x) = source(from, 4, n);
                let size = to.row_size(n as u64).unwrap() as usize * 4;
                let mut ours = vec![0u8; size];
                let st = requantize(from, to, &src, n, w, &mut ours).unwrap();
                let mut llama = vec![0u8; size];
                quantize(to, &x, n, w, &mut llama).unwrap();
                let (eo, el) = (
                    block_errors(to, &ours, &x, w),
                    block_errors(to, &llama, &x, w),
                );
                for (b, (o, l)) in eo.iter().zip(&el).enumerate() {
                    assert!(o <= l, "{from} -> {to} block {b}: {o} > llama's {l}");
                }
                let (so, sl) = (eo.iter().sum::<f64>(), el.iter().sum::<f64>());
                assert!(so < sl, "{from} -> {to}: no block improved ({so} vs {sl})");
                assert!(st.searched_blocks > 0);
                let unweighted = block_errors(to, &llama, &x, None).iter().sum::<f64>();
                let got = st.reference_sum_sq.unwrap();
                assert!((got - unweighted).abs() <= 1e-9 * unweighted.max(1e-30));
            }
        }
    }

    #[test]
    fn without_a_grid_it_is_llama_cpp() {
        let n = 256;
        for (from, to) in [
            (GgmlType::F16, GgmlType::Q4K),
            (GgmlType::Q4_1, GgmlType::IQ4NL),
            (GgmlType::IQ4NL, GgmlType::Q8_0),
        ] {
            assert_eq!(strategy(from, to), Requant::Reference, "{from} -> {to}");
            let (src, x) = source(from, 2, n);
            let size = to.row_size(n as u64).unwrap() as usize * 2;
            let (mut ours, mut llama) = (vec![0u8; size], vec![0u8; size]);
            let st = requantize(from, to, &src, n, None, &mut ours).unwrap();
            quantize(to, &x, n, None, &mut llama).unwrap();
            assert_eq!(ours, llama, "{from} -> {to}");
            assert_eq!(st.reference_sum_sq, Some(st.sum_sq));
        }
        assert_eq!(strategy(GgmlType::Q4K, GgmlType::Q4K), Requant::Copy);
    }

    #[test]
    fn bytes_do_not_depend_on_the_thread_count() {
        let n = 256;
        let (src, _) = source(GgmlType::Q4K, 40, n);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0u8; 210 * 40];
            let st = pool
                .install(|| requantize(GgmlType::Q4K, GgmlType::Q6K, &src, n, None, &mut out))
                .unwrap();
            (out, st)
        };
        let (a, sa) = run(1);
        let (b, sb) = run(3);
        assert_eq!(a, b);
        assert_eq!(sa.searched_blocks, sb.searched_blocks);
    }

    #[test]
    fn non_finite_sources_and_bad_lengths_are_refused() {
        let mut blk = vec![0u8; 34];
        blk[..2].copy_from_slice(&half::f16::INFINITY.to_bits().to_le_bytes());
        blk[2] = 1;
        let mut out = [0u8; 24];
        let e = requantize(
            GgmlType::Q8_0,
            GgmlType::Q5_1,
            &blk,
            32,
            None,
            &mut out[..24],
        );
        assert!(
            matches!(e, Err(KernelError::NonFinite { index: 0, .. })),
            "{e:?}"
        );
        let e = requantize(
            GgmlType::Q8_0,
            GgmlType::Q5_1,
            &blk[..30],
            32,
            None,
            &mut out[..24],
        );
        assert!(matches!(e, Err(KernelError::BadLength(_))), "{e:?}");
        let e = requantize(
            GgmlType::Q8_0,
            GgmlType::Q5_1,
            &blk,
            32,
            None,
            &mut out[..20],
        );
        assert!(matches!(e, Err(KernelError::BadLength(_))), "{e:?}");
    }
}
