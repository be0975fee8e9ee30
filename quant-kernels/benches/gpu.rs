//! GPU benchmark: each kernel's bandwidth on resident buffers next to the
//! device's copy bandwidth (both counting bytes read plus bytes written),
//! the CPU path's bandwidth on the same data in the same run, the GPU's
//! end-to-end rate with transfers (what `--device auto` weighs), and
//! mat-vec time per token for SmolLM2-135M's shapes, and the GPU decoder's
//! token steps at those shapes (random weights), with the time of each of
//! its kernels.
//!
//! `cargo bench -p quant-kernels --features gpu --bench gpu -- [--small]
//! [--software] [--decoder-only] [--ggml-only] [--e2e-only]`; BENCH-gpu.md has
//! the numbers and how they were taken.

use std::sync::Arc;
use std::time::Instant;

use quant_kernels::gpu::decoder::{
    Decoder, DecoderSpec, GatedActivation, LayerSpec, RopeSpec, WeightRef,
};
use quant_kernels::gpu::{Activations, Gpu, GpuOptions, GPU_TYPES};
use quant_kernels::mlx::{self, MlxInput, MlxParams};
use quant_kernels::{ggml, GgmlType};
use rayon::prelude::*;

struct Rng(u64);

impl Rng {
    fn normal(&mut self) -> f32 {
        let mut s = 0f32;
        for _ in 0..4 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
            s += (v >> 40) as f32 / (1u64 << 24) as f32;
        }
        (s - 2.0) * 0.05
    }
}

fn values(n: usize) -> Vec<f32> {
    // Filled in parallel from per-chunk seeds (deterministic).
    let mut v = vec![0f32; n];
    v.par_chunks_mut(1 << 16).enumerate().for_each(|(i, c)| {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
        for x in c {
            *x = r.normal();
        }
    });
    v
}

fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn gbs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let small = args.iter().any(|a| a == "--small");
    let software = args.iter().any(|a| a == "--software");
    let opened = Instant::now();
    let gpu = Arc::new(
        Gpu::new(&GpuOptions {
            allow_software: software,
            ..GpuOptions::default()
        })
        .unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1)
        }),
    );
    println!(
        "adapter: {} (opened in {:.0} ms)",
        gpu.adapter(),
        opened.elapsed().as_secs_f64() * 1e3
    );
    println!("CPU threads: {}", rayon::current_num_threads());
    if args.iter().any(|a| a == "--decoder-only") {
        decoder(&gpu, small);
        return;
    }
    // Values per kernel run: 32M (128 MB of f32), or 1M for a quick check.
    let n = if small { 1 << 20 } else { 1 << 25 };
    let (iters, reps) = if small { (2, 3) } else { (10, 5) };

    if args.iter().any(|a| a == "--e2e-only") {
        crossover(&gpu, &values(n), small);
        return;
    }
    let copy_bytes = 4 * n as u64;
    let copy = gpu.time_copy(copy_bytes, iters, reps).expect("copy");
    let copy_gbs = gbs(2 * copy_bytes, copy);
    println!(
        "\ndevice copy: {copy_bytes} B in {:.3} ms = {copy_gbs:.0} GB/s (read + write)",
        copy * 1e3
    );

    println!(
        "\n| kernel | values | GPU kernel GB/s | % of copy | CPU GB/s | GPU/CPU | GPU end-to-end GB/s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let x = values(n);
    let row = |name: String, n: usize, bytes: u64, gpu_s: f64, cpu_s: f64, e2e_s: f64| {
        let g = gbs(bytes, gpu_s);
        let c = gbs(bytes, cpu_s);
        println!(
            "| {name} | {n} | {g:.0} | {:.0}% | {c:.1} | {:.1}x | {:.1} |",
            100.0 * g / copy_gbs,
            g / c,
            gbs(bytes, e2e_s)
        );
    };
    for &ty in GPU_TYPES {
        let kquant = matches!(ty, GgmlType::Q4K | GgmlType::Q6K);
        // The K-quant searches are compute-bound: fewer values, fewer runs.
        let nk = if kquant && !small { n / 4 } else { n };
        let x = &x[..nk];
        let qbytes = ggml::row_size(ty, nk).unwrap();
        let bytes = (nk * 4 + qbytes) as u64;
        let mut q = vec![0u8; qbytes];
        let cpu_q = median_secs(3, || ggml::quantize(ty, x, 4096, None, &mut q).unwrap());
        let k = gpu.bench_ggml(ty, true, bytemuck_f32(x)).expect("kernel");
        let gpu_q = gpu
            .time_resident(&k, if kquant { 2 } else { iters }, reps)
            .expect("run");
        drop(k);
        let mut q2 = vec![0u8; qbytes];
        let e2e_q = median_secs(3, || gpu.quantize(ty, x, 4096, &mut q2).unwrap());
        assert_eq!(q, q2, "{ty}: GPU bytes differ from the CPU's");
        row(format!("quantize {ty}"), nk, bytes, gpu_q, cpu_q, e2e_q);

        let mut y = vec![0f32; nk];
        let cpu_d = median_secs(5, || ggml::dequantize(ty, &q, &mut y).unwrap());
        let k = gpu.bench_ggml(ty, false, &q).expect("kernel");
        let gpu_d = gpu.time_resident(&k, iters, reps).expect("run");
        drop(k);
        let mut y2 = vec![0f32; nk];
        let e2e_d = median_secs(3, || gpu.dequantize(ty, &q, &mut y2).unwrap());
        assert!(
            y.iter().zip(&y2).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{ty}"
        );
        row(format!("dequantize {ty}"), nk, bytes, gpu_d, cpu_d, e2e_d);
    }
    if args.iter().any(|a| a == "--ggml-only") {
        return;
    }
    for bits in [4u32, 8] {
        let group = 64usize;
        let params = MlxParams::affine(bits, group);
        let cols = 4096;
        let xh: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
        let packed = n * bits as usize / 8;
        let groups = n / group;
        let qbytes = (packed + groups * 4) as u64;
        let mut cpu_out = None;
        let cpu_q = median_secs(3, || {
            cpu_out = Some(mlx::quantize(MlxInput::F32(&x), cols, &params).unwrap())
        });
        let k = gpu
            .bench_mlx(bits, group as u32, true, bytemuck_f32(&x), n as u64)
            .expect("kernel");
        let gpu_q = gpu.time_resident(&k, iters, reps).expect("run");
        drop(k);
        let e2e_q = median_secs(3, || {
            let got = gpu.mlx_quantize(MlxInput::F32(&x), cols, &params).unwrap();
            assert_eq!(
                Some(got.weight.len()),
                cpu_out.as_ref().map(|q| q.weight.len())
            );
        });
        row(
            format!("MLX quantize {bits}-bit g{group} (f32 in)"),
            n,
            n as u64 * 4 + packed as u64 + groups as u64 * 8,
            gpu_q,
            cpu_q,
            e2e_q,
        );
        // Dequantize f16-scaled tensors (the common MLX checkpoint).
        let q = mlx::quantize(MlxInput::F16(&xh), cols, &params).unwrap();
        let (s, b) = (
            q.scales.to_le_bytes(),
            q.biases.as_ref().unwrap().to_le_bytes(),
        );
        let mut input: Vec<u8> = q.weight.iter().flat_map(|w| w.to_le_bytes()).collect();
        input.extend_from_slice(&s);
        input.resize(input.len().next_multiple_of(4), 0);
        input.extend_from_slice(&b);
        let bias = q.biases.as_ref().unwrap().as_scales();
        let mut out = vec![0f32; n];
        let cpu_d = median_secs(5, || {
            mlx::dequantize_into(
                &q.weight,
                q.scales.as_scales(),
                Some(bias),
                cols,
                &params,
                mlx::DequantPrecision::F32,
                &mut out,
            )
            .unwrap()
        });
        let k = gpu
            .bench_mlx(bits, group as u32, false, &input, n as u64)
            .expect("kernel");
        let gpu_d = gpu.time_resident(&k, iters, reps).expect("run");
        drop(k);
        let e2e_d = median_secs(3, || {
            let got = gpu
                .mlx_dequantize(&q.weight, q.scales.as_scales(), Some(bias), cols, &params)
                .unwrap();
            assert!(got
                .iter()
                .zip(&out)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        });
        row(
            format!("MLX dequantize {bits}-bit g{group} (f16 scales)"),
            n,
            qbytes + n as u64 * 4,
            gpu_d,
            cpu_d,
            e2e_d,
        );
    }
    crossover(&gpu, &x, small);
    generation(&gpu, small);
    decoder(&gpu, small);
}

fn w(ty: GgmlType, data: &[u8], rows: usize, cols: usize) -> WeightRef<'_> {
    WeightRef {
        name: "w",
        ty,
        data,
        rows,
        cols,
    }
}

/// The GPU decoder at SmolLM2-135M's shapes (30 layers, 576 wide, 9 query
/// and 3 key/value heads of 64, feed-forward 1536, vocabulary 49152, a
/// Q8_0 output matrix as in llama-quantize's Q4_0 and Q8_0 files), random
/// weights: prompt processing of 128 tokens (batched), generation of 64
/// tokens one at a time, and each kernel's share of a generation step.
fn decoder(gpu: &Arc<Gpu>, small: bool) {
    let layers = if small { 2 } else { 30 };
    let (d, kv, ff, vocab) = (576usize, 192usize, 1536usize, 49152usize);
    println!("\nGPU decoder, SmolLM2-135M shapes ({layers} layers), random weights:");
    println!("| weights | pp 128 tokens/s | tg tokens/s | ms/token |");
    println!("| --- | --- | --- | --- |");
    let mut profiles = Vec::new();
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
        let mk = |ty: GgmlType, rows: usize, cols: usize, seed: usize| {
            let w = values(rows * cols);
            let w: Vec<f32> = w.iter().map(|v| v * (1.0 + seed as f32 * 1e-3)).collect();
            let mut q = vec![0u8; ggml::row_size(ty, w.len()).unwrap()];
            ggml::quantize(ty, &w, cols, None, &mut q).unwrap();
            q
        };
        let shapes = [(d, d), (kv, d), (kv, d), (d, d), (ff, d), (ff, d), (d, ff)];
        let data: Vec<Vec<Vec<u8>>> = (0..layers)
            .map(|l| shapes.iter().map(|&(r, c)| mk(ty, r, c, l)).collect())
            .collect();
        let output = mk(GgmlType::Q8_0, vocab, d, 99);
        let spec = DecoderSpec {
            n_embd: d,
            n_ff: ff,
            n_head: 9,
            n_head_kv: 3,
            head_dim: 64,
            n_rot: 64,
            n_vocab: vocab,
            norm_eps: 1e-5,
            attn_scale: 0.125,
            attn_softcap: None,
            rope_neox: false,
            activation: GatedActivation::Silu,
            kv_f16: true,
            ropes: vec![RopeSpec {
                inv_freq: (0..32)
                    .map(|i| 1e5f64.powf(-(2 * i) as f64 / 64.0))
                    .collect(),
                position_scale: 1.0,
            }],
            layers: data
                .iter()
                .map(|m| LayerSpec {
                    attn_norm: vec![1.0; d],
                    q: w(ty, &m[0], d, d),
                    k: w(ty, &m[1], kv, d),
                    v: w(ty, &m[2], kv, d),
                    q_bias: None,
                    k_bias: None,
                    v_bias: None,
                    o: w(ty, &m[3], d, d),
                    ffn_norm: vec![1.0; d],
                    gate: w(ty, &m[4], ff, d),
                    up: w(ty, &m[5], ff, d),
                    down: w(ty, &m[6], d, ff),
                    sliding_window: None,
                    rope: 0,
                })
                .collect(),
            output_norm: vec![1.0; d],
            output: w(GgmlType::Q8_0, &output, vocab, d),
        };
        let dec = Decoder::new(gpu.clone(), &spec).unwrap();
        let mut cache = dec.new_cache(256).unwrap();
        let emb = values(128 * d);
        let pp = median_secs(5, || {
            cache.clear();
            dec.forward(&mut cache, &emb, 127).unwrap();
        });
        let tg = median_secs(3, || {
            cache.clear();
            for t in 0..64 {
                dec.forward(&mut cache, &emb[t * d..(t + 1) * d], 0)
                    .unwrap();
            }
        });
        println!(
            "| {ty} | {:.0} | {:.1} | {:.3} |",
            128.0 / pp,
            64.0 / tg,
            tg / 64.0 * 1e3
        );
        cache.clear();
        dec.forward(&mut cache, &emb[..64 * d], 63).unwrap();
        profiles.push((ty, dec.profile_step(&cache, 20).unwrap()));
    }
    for (ty, p) in profiles {
        println!("\n{ty}: one generation step at position 64, by kernel (each run 20 times in one submission):");
        println!("| kernel | dispatches | ms/step |");
        println!("| --- | --- | --- |");
        for (kind, n, secs) in p {
            println!("| {kind} | {n} | {:.3} |", secs * 1e3);
        }
    }
}

fn bytemuck_f32(x: &[f32]) -> &[u8] {
    bytemuck::cast_slice(x)
}

/// End-to-end (upload, kernel, download) against the CPU path by size:
/// where the GPU starts to pay for its transfers. The host's own memory
/// bandwidth (a parallel copy of the same bytes) is the baseline: the
/// host-to-host path reads the input and writes the output at least once.
fn crossover(gpu: &Gpu, x: &[f32], small: bool) {
    // Each kernel's first call compiles it (or finds it in the driver's
    // cache): the one-time cost a command pays before the first tensor.
    let mut first = Vec::new();
    for ty in [GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K] {
        let bs = ty.block_size() as usize;
        let mut q = vec![0u8; ggml::row_size(ty, bs).unwrap()];
        let t = Instant::now();
        gpu.quantize(ty, &x[..bs], bs, &mut q).unwrap();
        first.push(format!("{ty} {:.0} ms", t.elapsed().as_secs_f64() * 1e3));
    }
    println!(
        "first quantize call (kernel compile or cache): {}",
        first.join(", ")
    );
    let bytes: &[u8] = bytemuck::cast_slice(x);
    let mut dst = vec![0u8; bytes.len()];
    let one = median_secs(5, || dst.copy_from_slice(bytes));
    let par = median_secs(5, || {
        dst.par_chunks_mut(1 << 20)
            .zip(bytes.par_chunks(1 << 20))
            .for_each(|(d, s)| d.copy_from_slice(s))
    });
    println!(
        "\nhost memcpy of {} MiB: one thread {:.1} GB/s, all threads {:.1} GB/s (read + write)",
        bytes.len() >> 20,
        gbs(2 * bytes.len() as u64, one),
        gbs(2 * bytes.len() as u64, par)
    );
    drop(dst);
    println!("\nend to end, GPU vs CPU (ms), by input size (f32 bytes for quantize, f32 bytes out for dequantize):");
    println!("| op | 64 KiB | 1 MiB | 16 MiB | 128 MiB | GPU / CPU GB/s at the largest |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let sizes: Vec<usize> = [1 << 14, 1 << 18, 1 << 22, 1 << 25]
        .into_iter()
        .filter(|&s| s <= x.len() && (!small || s <= 1 << 20))
        .collect();
    let line = |name: String, cells: Vec<(f64, f64)>, bytes: u64| {
        let (g, c) = *cells.last().unwrap();
        let ms: Vec<String> = cells
            .iter()
            .map(|(g, c)| format!("{:.2} / {:.2}", g * 1e3, c * 1e3))
            .collect();
        println!(
            "| {name} | {} | {:.1} / {:.1} |",
            ms.join(" | "),
            gbs(bytes, g),
            gbs(bytes, c)
        );
    };
    for &ty in GPU_TYPES {
        let mut quant = Vec::new();
        let mut deq = Vec::new();
        for &s in &sizes {
            let xs = &x[..s];
            let mut q = vec![0u8; ggml::row_size(ty, s).unwrap()];
            let mut g = vec![0u8; q.len()];
            let c = median_secs(3, || {
                ggml::quantize(ty, xs, 4096.min(s), None, &mut q).unwrap()
            });
            let gq = median_secs(3, || gpu.quantize(ty, xs, 4096.min(s), &mut g).unwrap());
            assert!(g == q, "{ty}: GPU bytes differ from the CPU's");
            quant.push((gq, c));
            let mut out = vec![0f32; s];
            let mut gout = vec![0f32; s];
            let c = median_secs(3, || ggml::dequantize(ty, &q, &mut out).unwrap());
            let gd = median_secs(3, || gpu.dequantize(ty, &q, &mut gout).unwrap());
            assert!(out
                .iter()
                .zip(&gout)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            deq.push((gd, c));
        }
        let last = *sizes.last().unwrap();
        let total = (last * 4 + ggml::row_size(ty, last).unwrap()) as u64;
        line(format!("quantize {ty}"), quant, total);
        line(format!("dequantize {ty}"), deq, total);
    }
    for bits in [4u32, 8] {
        let params = MlxParams::affine(bits, 64);
        let mut cells = Vec::new();
        let mut total = 0;
        for &s in &sizes {
            let xs = &x[..s];
            let cols = 4096.min(s);
            let c = median_secs(3, || {
                mlx::quantize(MlxInput::F32(xs), cols, &params).unwrap();
            });
            let g = median_secs(3, || {
                gpu.mlx_quantize(MlxInput::F32(xs), cols, &params).unwrap();
            });
            cells.push((g, c));
            total = (s * 4 + s * bits as usize / 8 + s / 64 * 8) as u64;
        }
        line(format!("MLX quantize {bits}-bit g64"), cells, total);
    }
}

/// Mat-vec per token over SmolLM2-135M's matrices (30 layers of q, k, v,
/// o, gate, up, down and the 49152-row tied output), GPU vs CPU. The GPU
/// groups q/k/v and gate/up into one submission each.
fn generation(gpu: &Gpu, small: bool) {
    let layers = if small { 2 } else { 30 };
    let (d, kv, ff, vocab) = (576usize, 192usize, 1536usize, 49152usize);
    println!("\nmat-vec per token, SmolLM2-135M shapes ({layers} layers + output):");
    println!("| weights | activations | GPU ms/token | CPU ms/token | GPU/CPU |");
    println!("| --- | --- | --- | --- | --- |");
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
        let mk = |rows: usize, cols: usize, seed: usize| {
            let w = values(rows * cols);
            let w: Vec<f32> = w.iter().map(|v| v * (1.0 + seed as f32 * 1e-3)).collect();
            let mut q = vec![0u8; ggml::row_size(ty, w.len()).unwrap()];
            ggml::quantize(ty, &w, cols, None, &mut q).unwrap();
            (q, rows, cols)
        };
        let mut cpu_mats = Vec::new();
        for l in 0..layers {
            for (r, c) in [(d, d), (kv, d), (kv, d), (d, d), (ff, d), (ff, d), (d, ff)] {
                cpu_mats.push(mk(r, c, l));
            }
        }
        cpu_mats.push(mk(vocab, d, 99));
        let gpu_mats: Vec<_> = cpu_mats
            .iter()
            .map(|(q, r, c)| gpu.upload_ggml(ty, q, *r, *c).unwrap())
            .collect();
        let x576: Vec<f32> = values(d);
        let x1536: Vec<f32> = values(ff);
        for act in [Activations::Ggml, Activations::F32] {
            let gpu_s = median_secs(5, || {
                for l in 0..layers {
                    let m = &gpu_mats[7 * l..7 * l + 7];
                    let (mut q, mut k, mut v) = (vec![0f32; d], vec![0f32; kv], vec![0f32; kv]);
                    gpu.matvec_shared(
                        &[&m[0], &m[1], &m[2]],
                        &x576,
                        act,
                        &mut [&mut q, &mut k, &mut v],
                    )
                    .unwrap();
                    let mut o = vec![0f32; d];
                    gpu.matvec(&m[3], &x576, act, &mut o).unwrap();
                    let (mut g, mut u) = (vec![0f32; ff], vec![0f32; ff]);
                    gpu.matvec_shared(&[&m[4], &m[5]], &x576, act, &mut [&mut g, &mut u])
                        .unwrap();
                    let mut dn = vec![0f32; d];
                    gpu.matvec(&m[6], &x1536, act, &mut dn).unwrap();
                }
                let mut logits = vec![0f32; vocab];
                gpu.matvec(&gpu_mats[7 * layers], &x576, act, &mut logits)
                    .unwrap();
            });
            let cpu_s = median_secs(5, || {
                for (q, rows, cols) in &cpu_mats {
                    let x = if *cols == d { &x576 } else { &x1536 };
                    cpu_matvec(ty, q, *rows, *cols, x, act);
                }
            });
            println!(
                "| {ty} | {act:?} | {:.3} | {:.3} | {:.2}x |",
                gpu_s * 1e3,
                cpu_s * 1e3,
                cpu_s / gpu_s
            );
        }
    }
}

/// The CPU path the engine takes: rows in parallel, ggml's vec_dot on
/// quantized activations, or f32 dot products of dequantized rows.
fn cpu_matvec(
    ty: GgmlType,
    q: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    act: Activations,
) -> Vec<f32> {
    let rb = ggml::row_size(ty, cols).unwrap();
    let mut y = vec![0f32; rows];
    match act {
        Activations::Ggml => {
            let vdt = ggml::vec_dot_type(ty).unwrap();
            let mut a = vec![0u8; ggml::row_size(vdt, cols).unwrap()];
            ggml::quantize_activations(vdt, x, &mut a).unwrap();
            y.par_chunks_mut(64).enumerate().for_each(|(c, out)| {
                for (i, o) in out.iter_mut().enumerate() {
                    let r = c * 64 + i;
                    *o = ggml::vec_dot(ty, &q[r * rb..(r + 1) * rb], &a, cols).unwrap();
                }
            });
        }
        Activations::F32 => {
            y.par_chunks_mut(64).enumerate().for_each_init(
                || vec![0f32; cols],
                |w, (c, out)| {
                    for (i, o) in out.iter_mut().enumerate() {
                        let r = c * 64 + i;
                        ggml::dequantize(ty, &q[r * rb..(r + 1) * rb], w).unwrap();
                        *o = w.iter().zip(x).map(|(a, b)| a * b).sum();
                    }
                },
            );
        }
    }
    y
}
