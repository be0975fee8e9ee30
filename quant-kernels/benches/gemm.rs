//! Tile products (`ggml::gemm`) against one `ggml::vec_dot` per (row,
//! token) pair, the loop they replace, on the same rows in the same run,
//! single-threaded: the engine's prompt tasks (every row of a matrix times
//! 16 tokens) and single tokens (a matrix that stays in cache, and one the
//! size of SmolLM2's output matrix, streamed from memory).
//!
//! `cargo bench -p quant-kernels --bench gemm [-- TYPE,TYPE...]`
//!
//! Prints the rate of both in billions of multiply-adds per second and
//! their ratio (the machine may be shared: read the ratio). Batches of F16
//! and F32 also get a row for `ggml::gemm_batch`, llamafile's tinyBLAS
//! order, which ggml's `mul_mat` takes for them (against the same
//! `vec_dot` loop).

mod common;

use quant_kernels::ggml;
use quant_kernels::GgmlType;

const REPS: usize = 5;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect()
}

fn main() {
    let filter: Option<Vec<GgmlType>> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.split(',').filter_map(GgmlType::from_name).collect());
    let types = filter.unwrap_or_else(|| {
        use GgmlType as T;
        vec![
            T::F32,
            T::F16,
            T::BF16,
            T::Q4_0,
            T::Q4_1,
            T::Q5_0,
            T::Q5_1,
            T::Q8_0,
            T::Q2K,
            T::Q3K,
            T::Q4K,
            T::Q5K,
            T::Q6K,
            T::IQ4NL,
            T::IQ4XS,
        ]
    });
    println!("| type | cols | rows x tokens | gemm GMAC/s | vec_dot GMAC/s | ratio |");
    println!("|---|---|---|---|---|---|");
    for ty in types {
        let n = if ty.block_size() == 256 { 1536 } else { 576 };
        let vdt = ggml::vec_dot_type(ty).unwrap();
        for (rows, toks) in [(1536usize, 16usize), (1536, 1), (49152, 1)] {
            let mut w = vec![0u8; ggml::row_size(ty, n).unwrap() * rows];
            ggml::quantize(ty, &values(rows * n, 7), n, None, &mut w).unwrap();
            let mut a = vec![0u8; ggml::row_size(vdt, n).unwrap() * toks];
            let x = values(toks * n, 11);
            for (src, dst) in x
                .chunks(n)
                .zip(a.chunks_mut(ggml::row_size(vdt, n).unwrap()))
            {
                ggml::quantize_activations(vdt, src, dst).unwrap();
            }
            let mut out = vec![0f32; rows * toks];
            let tg = common::best_secs(REPS, || ggml::gemm(ty, n, &w, &a, &mut out).unwrap());
            let (wb, ab) = (w.len() / rows, a.len() / toks);
            let tv = common::best_secs(REPS, || {
                for (t, at) in a.chunks(ab).enumerate() {
                    for (r, wr) in w.chunks(wb).enumerate() {
                        out[t * rows + r] = ggml::vec_dot(ty, wr, at, n).unwrap();
                    }
                }
            });
            let macs = (rows * toks * n) as f64 / 1e9;
            println!(
                "| {ty} | {n} | {rows} x {toks} | {:.1} | {:.1} | {:.2}x |",
                macs / tg,
                macs / tv,
                tv / tg
            );
            if ggml::sgemm_applies(ty, n, rows, toks) {
                let tb = common::best_secs(REPS, || {
                    ggml::gemm_batch(ty, n, &w, &a, &mut out, rows, toks).unwrap()
                });
                println!(
                    "| {ty} (tinyBLAS order) | {n} | {rows} x {toks} | {:.1} | {:.1} | {:.2}x |",
                    macs / tb,
                    macs / tv,
                    tv / tb
                );
            }
        }
    }
}
