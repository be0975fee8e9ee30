//! Requantizing with the source's grid kept (`ggml::requant`) next to
//! llama.cpp's way (dequantize, then `ggml::quantize`), on the same rows in
//! the same run.
//!
//! `cargo bench -p quant-kernels --bench requant [-- FROM:TO,FROM:TO...]`
//!
//! Per pair: the source is gaussian weight-like rows quantized to FROM;
//! both ways turn it into TO. Printed: the strategy, the time of each
//! (best of a few runs, 2 threads) and their ratio, the RMS error of each
//! against the source's values and their ratio, and the blocks kept
//! exactly.

mod common;

use quant_kernels::ggml::{self, requant};
use quant_kernels::GgmlType;

const N_PER_ROW: usize = 4096;
const N_ROWS: usize = 256;
const REPS: usize = 3;

fn rms(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    (s / a.len() as f64).sqrt()
}

const DEFAULT_PAIRS: &[(GgmlType, GgmlType)] = &[
    (GgmlType::Q4_0, GgmlType::Q8_0),
    (GgmlType::Q4_1, GgmlType::Q5_1),
    (GgmlType::Q4K, GgmlType::Q5K),
    (GgmlType::Q4_1, GgmlType::Q8_0),
    (GgmlType::Q4_1, GgmlType::Q5_0),
    (GgmlType::Q5_0, GgmlType::Q4_0),
    (GgmlType::Q4K, GgmlType::Q6K),
    (GgmlType::Q4_1, GgmlType::Q6K),
    (GgmlType::Q5_0, GgmlType::Q4K),
    (GgmlType::Q4_1, GgmlType::Q4K),
    (GgmlType::Q4_1, GgmlType::Q5K),
];

fn parse(arg: &str) -> Option<Vec<(GgmlType, GgmlType)>> {
    arg.split(',')
        .map(|p| {
            let (a, b) = p.split_once(':')?;
            Some((GgmlType::from_name(a)?, GgmlType::from_name(b)?))
        })
        .collect()
}

fn main() {
    let pairs = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| parse(&a))
        .unwrap_or_else(|| DEFAULT_PAIRS.to_vec());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a thread pool");
    let x0 = common::weight_values(N_PER_ROW * N_ROWS);
    let n = x0.len();
    println!(
        "{} rows of {N_PER_ROW}, 2 threads; time and RMS error against the source values",
        N_ROWS
    );
    println!(
        "{:<12} {:<10} {:>10} {:>10} {:>7} {:>11} {:>11} {:>7} {:>8}",
        "pair",
        "strategy",
        "llama s",
        "ours s",
        "time x",
        "llama rms",
        "ours rms",
        "rms x",
        "exact %"
    );
    for (from, to) in pairs {
        let row = |t: GgmlType| t.row_size(N_PER_ROW as u64).expect("whole blocks") as usize;
        let mut src = vec![0u8; row(from) * N_ROWS];
        ggml::quantize(from, &x0, N_PER_ROW, None, &mut src).expect("source");
        let mut x = vec![0f32; n];
        ggml::dequantize(from, &src, &mut x).expect("source values");
        let mut llama = vec![0u8; row(to) * N_ROWS];
        let mut ours = vec![0u8; row(to) * N_ROWS];
        let mut stats = None;
        let (t_llama, t_ours) = pool.install(|| {
            let t_llama = common::best_secs(REPS, || {
                let mut y = vec![0f32; n];
                ggml::dequantize(from, &src, &mut y).expect("dequantize");
                ggml::quantize(to, &y, N_PER_ROW, None, &mut llama).expect("quantize");
            });
            let t_ours = common::best_secs(REPS, || {
                stats = Some(
                    requant::requantize(from, to, &src, N_PER_ROW, None, &mut ours)
                        .expect("requantize"),
                );
            });
            (t_llama, t_ours)
        });
        let back = |b: &[u8]| {
            let mut y = vec![0f32; n];
            ggml::dequantize(to, b, &mut y).expect("dequantize");
            y
        };
        let (e_llama, e_ours) = (rms(&x, &back(&llama)), rms(&x, &back(&ours)));
        let st = stats.expect("measured");
        println!(
            "{:<12} {:<10} {:>10.4} {:>10.4} {:>7.2} {:>11.3e} {:>11.3e} {:>7.3} {:>8.1}",
            format!("{from}>{to}"),
            format!("{:?}", requant::strategy(from, to)),
            t_llama,
            t_ours,
            t_ours / t_llama,
            e_llama,
            e_ours,
            if e_llama > 0.0 { e_ours / e_llama } else { 1.0 },
            100.0 * st.exact_blocks as f64 / st.blocks.max(1) as f64,
        );
    }
}
