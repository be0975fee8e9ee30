//! Dot products of the types qforge reads but does not write (IQ1/IQ2/IQ3,
//! ternary, FP4): `ggml::vec_dot` at the CPU's SIMD level against the
//! scalar reference `ggml::reference::vec_dot`, on the same rows in the
//! same run, single-threaded. Weights are random bytes (with finite
//! scales: there is no quantizer for these types), activations quantized
//! from random values.
//!
//! `cargo bench -p quant-kernels --bench decode_dot [-- TYPE,TYPE...]`
//!
//! Prints both rates in billions of multiply-adds per second and their
//! ratio (the machine may be shared: read the ratio). A second table
//! times a batch of tokens (prompt processing): `ggml::gemm` (the tile
//! kernels, where the type has one) against one `ggml::vec_dot` per
//! (row, token) pair, the same bits asserted.

mod common;

use quant_kernels::ggml;
use quant_kernels::GgmlType;

const REPS: usize = 5;
const COLS: usize = 1536;
const ROWS: usize = 512;
const TOKENS: usize = 16;

fn xorshift_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect()
}

/// Random blocks of `ty` with finite scales.
fn weights(ty: GgmlType, rows: usize) -> Vec<u8> {
    use GgmlType as T;
    let bb = ty.type_size() as usize;
    let mut w = xorshift_bytes(ggml::row_size(ty, COLS).unwrap() * rows, 7);
    // Byte offsets of the f16 scales' high bytes (bit 6 of which, cleared,
    // keeps the exponent finite).
    let f16_high: &[usize] = match ty {
        T::TQ1_0 => &[53],
        T::TQ2_0 => &[65],
        T::IQ1M => &[55],
        T::MXFP4 | T::NVFP4 => &[],
        _ => &[1],
    };
    for b in w.chunks_exact_mut(bb) {
        for &o in f16_high {
            b[o] &= !0x40;
        }
        if ty == T::MXFP4 {
            b[0] = 107 + b[0] % 41;
        }
    }
    w
}

fn main() {
    use GgmlType as T;
    let filter: Option<Vec<GgmlType>> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.split(',').filter_map(GgmlType::from_name).collect());
    let types = filter.unwrap_or_else(|| {
        vec![
            T::IQ3S,
            T::IQ2XXS,
            T::IQ2S,
            T::IQ3XXS,
            T::IQ2XS,
            T::MXFP4,
            T::IQ1M,
            T::IQ1S,
            T::TQ2_0,
            T::TQ1_0,
            T::NVFP4,
        ]
    });
    let x: Vec<f32> = xorshift_bytes(COLS, 11)
        .iter()
        .map(|&b| (f32::from(b) - 127.5) / 1024.0)
        .collect();
    println!("| type | cols x rows | reference GMAC/s | SIMD GMAC/s | ratio |");
    println!("|---|---|---|---|---|");
    for &ty in &types {
        let vdt = ggml::vec_dot_type(ty).unwrap();
        let w = weights(ty, ROWS);
        let mut a = vec![0u8; ggml::row_size(vdt, COLS).unwrap()];
        ggml::quantize_activations(vdt, &x, &mut a).unwrap();
        let wb = w.len() / ROWS;
        let mut out = vec![0f32; ROWS];
        let tr = common::best_secs(REPS, || {
            for (o, wr) in out.iter_mut().zip(w.chunks(wb)) {
                *o = ggml::reference::vec_dot(ty, COLS, wr, &a).unwrap();
            }
        });
        let want = out.clone();
        let tf = common::best_secs(REPS, || {
            for (o, wr) in out.iter_mut().zip(w.chunks(wb)) {
                *o = ggml::vec_dot(ty, wr, &a, COLS).unwrap();
            }
        });
        let same = out
            .iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()));
        assert!(
            same,
            "{ty}: the SIMD dot products differ from the reference"
        );
        let gmac = (COLS * ROWS) as f64 / 1e9;
        println!(
            "| {ty} | {COLS} x {ROWS} | {:.3} | {:.3} | {:.1}x |",
            gmac / tr,
            gmac / tf,
            tr / tf
        );
    }
    batch(&types);
}

/// `TOKENS` activation rows against `ROWS` weight rows: `ggml::gemm`
/// against a `ggml::vec_dot` per pair.
fn batch(types: &[GgmlType]) {
    let x: Vec<f32> = xorshift_bytes(COLS * TOKENS, 13)
        .iter()
        .map(|&b| (f32::from(b) - 127.5) / 1024.0)
        .collect();
    println!();
    println!("| type | cols x rows x tokens | vec_dot per pair GMAC/s | gemm GMAC/s | ratio |");
    println!("|---|---|---|---|---|");
    for &ty in types {
        let vdt = ggml::vec_dot_type(ty).unwrap();
        let w = weights(ty, ROWS);
        let ab = ggml::row_size(vdt, COLS).unwrap();
        let mut a = vec![0u8; ab * TOKENS];
        for (row, q) in x.chunks_exact(COLS).zip(a.chunks_exact_mut(ab)) {
            ggml::quantize_activations(vdt, row, q).unwrap();
        }
        let wb = w.len() / ROWS;
        let mut out = vec![0f32; ROWS * TOKENS];
        let tp = common::best_secs(REPS, || {
            for (t, ar) in a.chunks_exact(ab).enumerate() {
                for (r, wr) in w.chunks_exact(wb).enumerate() {
                    out[t * ROWS + r] = ggml::vec_dot(ty, wr, ar, COLS).unwrap();
                }
            }
        });
        let want = out.clone();
        let tg = common::best_secs(REPS, || ggml::gemm(ty, COLS, &w, &a, &mut out).unwrap());
        let same = out
            .iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()));
        assert!(same, "{ty}: gemm differs from vec_dot");
        let gmac = (COLS * ROWS * TOKENS) as f64 / 1e9;
        println!(
            "| {ty} | {COLS} x {ROWS} x {TOKENS} | {:.2} | {:.2} | {:.2}x |",
            gmac / tp,
            gmac / tg,
            tp / tg
        );
    }
}
