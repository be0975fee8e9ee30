//! MLX quantize/dequantize throughput, in GB/s of f32 values (input of
//! quantize, output of dequantize), on 1 and 2 threads, next to memcpy
//! (1 and 2 threads) measured in the same run and, when the oracle venv is there, next to
//! `mx.quantize`/`mx.dequantize` on mlx's CPU backend timed from Python in
//! the same run.
//!
//! ```text
//! cargo bench -p quant-kernels --bench mlx
//! QFORGE_BENCH_ROWS=1024 QFORGE_BENCH_COLS=4096 QFORGE_BENCH_REPS=5 cargo bench ...
//! QFORGE_ORACLE_PYTHON=/path/to/python (else read from tests/interop/oracles.env)
//! ```
//!
//! Each number is the best of `REPS` runs (the least disturbed by other
//! load on the machine). Dequantize writes into a reused buffer
//! (`dequantize_into`), as memcpy does; mlx allocates its output.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use half::bf16;
use quant_kernels::mlx::{self, DequantPrecision, MlxInput, MlxParams, ScaleBuf};
use rayon::prelude::*;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Best wall time of `reps` runs, in seconds.
fn best<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Normal-ish weights from a fixed xorshift stream (sum of 4 uniforms).
fn weights(n: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| (next() + next() + next() + next() - 2.0) * 0.05)
        .collect()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

fn oracle_python() -> Option<String> {
    if let Ok(p) = std::env::var("QFORGE_ORACLE_PYTHON") {
        return Some(p);
    }
    let env = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/oracles.env");
    std::fs::read_to_string(env).ok()?.lines().find_map(|l| {
        l.trim()
            .strip_prefix("export QFORGE_ORACLE_PYTHON=")
            .map(str::to_string)
    })
}

const MLX_SCRIPT: &str = r#"
import sys, time
import mlx.core as mx
rows, cols, reps = map(int, sys.argv[1:4])
settings = [s.split(":") for s in sys.argv[4:]]
w = (mx.random.normal((rows, cols), key=mx.random.key(0)) * 0.05).astype(mx.float32)
mx.eval(w)
def best(f):
    mx.eval(f())
    out = float("inf")
    for _ in range(reps):
        t = time.perf_counter(); mx.eval(f()); out = min(out, time.perf_counter() - t)
    return out
for dt, bits, group in settings:
    x = w.astype(getattr(mx, dt)); mx.eval(x)
    bits, group = int(bits), int(group)
    q = mx.quantize(x, group_size=group, bits=bits); mx.eval(q)
    tq = best(lambda: mx.quantize(x, group_size=group, bits=bits))
    td = best(lambda: mx.dequantize(*q, group_size=group, bits=bits, dtype=mx.float32))
    print(dt, bits, group, tq, td, flush=True)
"#;

/// `mx.quantize` and `mx.dequantize` seconds per (dtype, bits, group).
fn mlx_times(
    rows: usize,
    cols: usize,
    reps: usize,
    settings: &[(&str, u32, usize)],
) -> Option<Vec<(f64, f64)>> {
    let python = oracle_python()?;
    let mut cmd = Command::new(python);
    cmd.args(["-c", MLX_SCRIPT])
        .arg(rows.to_string())
        .arg(cols.to_string())
        .arg(reps.to_string());
    for (dt, bits, group) in settings {
        cmd.arg(format!("{dt}:{bits}:{group}"));
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        eprintln!(
            "mx.quantize timing failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[3].parse().unwrap(), f[4].parse().unwrap())
            })
            .collect(),
    )
}

fn main() {
    let rows = env_usize("QFORGE_BENCH_ROWS", 2048);
    let cols = env_usize("QFORGE_BENCH_COLS", 4096);
    let reps = env_usize("QFORGE_BENCH_REPS", 5);
    let n = rows * cols;
    let gb = (n * 4) as f64 / 1e9;
    let w = weights(n);
    let wb: Vec<bf16> = w.iter().map(|&x| bf16::from_f32(x)).collect();

    let mut dst = vec![0f32; n];
    let pools = [pool(1), pool(2)];
    // memcpy on each pool: rows copied in parallel like the kernels' rows.
    let [memcpy1, memcpy2] = [0, 1].map(|p| {
        gb / pools[p].install(|| {
            best(reps, || {
                dst.par_chunks_mut(cols)
                    .zip(w.par_chunks(cols))
                    .with_min_len(8)
                    .for_each(|(d, s)| d.copy_from_slice(black_box(s)));
                black_box(&dst);
            })
        })
    });
    println!(
        "MLX kernels, {rows} x {cols} matrix ({:.0} MiB of f32), best of {reps}",
        gb * 1e9 / (1 << 20) as f64
    );
    println!(
        "memcpy: {memcpy1:.2} GB/s on 1 thread, {memcpy2:.2} GB/s on 2 (f32 bytes copied per second)\n"
    );

    let settings: Vec<(&str, u32, usize)> = ["float32", "bfloat16"]
        .into_iter()
        .flat_map(|dt| {
            [2u32, 3, 4, 5, 6, 8]
                .into_iter()
                .flat_map(move |b| [32usize, 64, 128].into_iter().map(move |g| (dt, b, g)))
        })
        .collect();
    let mlx = mlx_times(rows, cols, reps, &settings);
    if mlx.is_none() {
        println!("(no oracle python: mx.quantize column left out)\n");
    }
    println!(
        "| input | bits | group | quant 1T | quant 2T | deq 1T | deq 2T | deq 1T / memcpy 1T | deq 2T / memcpy 2T | mx.quantize | mx.dequantize | quant 1T / mlx | deq 1T / mlx |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, &(dt, bits, group)) in settings.iter().enumerate() {
        let params = MlxParams::affine(bits, group);
        let input = if dt == "float32" {
            MlxInput::F32(&w)
        } else {
            MlxInput::BF16(&wb)
        };
        let q = mlx::quantize(input, cols, &params).unwrap();
        let biases = q.biases.as_ref().map(ScaleBuf::as_scales);
        let [quant1, quant2] = [0, 1].map(|p| {
            gb / pools[p].install(|| {
                best(reps, || {
                    black_box(mlx::quantize(black_box(input), cols, &params).unwrap());
                })
            })
        });
        let [deq1, deq2] = [0, 1].map(|p| {
            gb / pools[p].install(|| {
                best(reps, || {
                    mlx::dequantize_into(
                        &q.weight,
                        q.scales.as_scales(),
                        biases,
                        cols,
                        &params,
                        DequantPrecision::F32,
                        &mut dst,
                    )
                    .unwrap();
                    black_box(&dst);
                })
            })
        });
        let mlx_cols = match &mlx {
            Some(t) => {
                let (mq, md) = (gb / t[i].0, gb / t[i].1);
                format!(
                    "{mq:.2} | {md:.2} | {:.1}x | {:.1}x",
                    quant1 / mq,
                    deq1 / md
                )
            }
            None => "- | - | - | -".to_string(),
        };
        println!(
            "| {dt} | {bits} | {group} | {quant1:.2} | {quant2:.2} | {deq1:.2} | {deq2:.2} | {:.2} | {:.2} | {mlx_cols} |",
            deq1 / memcpy1,
            deq2 / memcpy2
        );
    }

    // The fp modes and the scalar reference, for scale (1 thread).
    println!("\n| setting (float32 in, 1 thread) | quant GB/s | deq GB/s |");
    println!("|---|---|---|");
    let one = &pools[0];
    for (name, params) in [
        ("mxfp4", MlxParams::mxfp4()),
        ("mxfp8", MlxParams::mxfp8()),
        ("nvfp4", MlxParams::nvfp4(None)),
    ] {
        let q = mlx::quantize(MlxInput::F32(&w), cols, &params).unwrap();
        let tq = one.install(|| {
            best(reps, || {
                black_box(mlx::quantize(MlxInput::F32(&w), cols, &params).unwrap());
            })
        });
        let td = one.install(|| {
            best(reps, || {
                mlx::dequantize_into(
                    &q.weight,
                    q.scales.as_scales(),
                    None,
                    cols,
                    &params,
                    DequantPrecision::F32,
                    &mut dst,
                )
                .unwrap();
                black_box(&dst);
            })
        });
        println!("| {name} | {:.2} | {:.2} |", gb / tq, gb / td);
    }
    let params = MlxParams::affine(4, 64);
    let tr = one.install(|| {
        best(reps, || {
            black_box(mlx::quantize_ref(MlxInput::F32(&w), cols, &params).unwrap());
        })
    });
    println!(
        "| affine 4-bit g64, scalar reference | {:.2} | - |",
        gb / tr
    );
}
