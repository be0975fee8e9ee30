//! Throughput of the GGML kernels next to memcpy and ggml itself.
//!
//! `cargo bench -p quant-kernels --bench ggml [-- TYPE,TYPE...]`
//!
//! Per type: quantize (no imatrix) and dequantize throughput in GB/s of
//! f32 data (the input of quantize, the output of dequantize) on 1 and 2
//! threads; memcpy bandwidth of the same f32 buffer measured in the same
//! run; and, when the oracle is available (`QFORGE_ORACLE_PYTHON` and
//! `QFORGE_LLAMA_BIN`, e.g. from tests/interop/oracles.env), ggml's
//! throughput on the same rows through benches/ggml_baseline.py, as a
//! ratio ours/ggml. ggml runs right after ours for each type, so both see
//! the same machine load. A plain `harness = false` bench: the numbers are
//! the best of a few runs over 32 MiB of rows, which is what the table
//! needs; criterion's statistics would not change a ratio of 2.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use quant_kernels::ggml;
use quant_kernels::GgmlType;

const N_PER_ROW: usize = 4096;
const N_ROWS: usize = 2048;
const REPS: usize = 5;

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// ggml's numbers for `t` from the Python baseline: (op, threads) -> GB/s.
fn ggml_baseline(rows: &Path, t: GgmlType) -> Option<HashMap<(String, usize), f64>> {
    let python = std::env::var("QFORGE_ORACLE_PYTHON").ok()?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python)
        .arg(dir.join("benches/ggml_baseline.py"))
        .arg(rows)
        .args(["--n-per-row", &N_PER_ROW.to_string()])
        .args(["--types", t.name()])
        .args(["--reps", &REPS.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "ggml baseline failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let mut map = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // {"type": "Q4_0", "op": "quantize", "threads": 1, "gbps": 1.23}
        let field = |key: &str| -> Option<&str> {
            let rest = &line[line.find(&format!("\"{key}\": "))? + key.len() + 4..];
            let end = rest.find([',', '}'])?;
            Some(rest[..end].trim().trim_matches('"'))
        };
        if let (Some(op), Some(th), Some(g)) = (field("op"), field("threads"), field("gbps")) {
            map.insert((op.to_string(), th.parse().ok()?), g.parse().ok()?);
        }
    }
    Some(map)
}

fn main() {
    let filter: Option<Vec<GgmlType>> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.split(',').filter_map(GgmlType::from_name).collect());
    let types: Vec<GgmlType> = filter.unwrap_or_else(|| ggml::QUANTIZABLE.to_vec());
    let x = common::weight_values(N_PER_ROW * N_ROWS);
    let gb = (x.len() * 4) as f64 / 1e9;

    let mut copy = vec![0f32; x.len()];
    let memcpy1 = gb / common::best_secs(REPS, || copy.copy_from_slice(&x));
    let memcpy2 = gb
        / pool(2).install(|| {
            common::best_secs(REPS, || {
                use rayon::prelude::*;
                copy.par_chunks_mut(1 << 20)
                    .zip(x.par_chunks(1 << 20))
                    .for_each(|(d, s)| d.copy_from_slice(s));
            })
        });

    println!(
        "rows: {N_ROWS} x {N_PER_ROW} f32 ({:.0} MiB); memcpy {memcpy1:.2} GB/s (1 thread), {memcpy2:.2} GB/s (2 threads)",
        gb * 1e9 / (1 << 20) as f64
    );
    println!("GB/s of f32 data; ggml column: ggml GB/s / ours-to-ggml ratio; deq/memcpy: dequantize over memcpy at the same thread count\n");
    println!(
        "| type | threads | quantize | ggml quantize | dequantize | ggml dequantize | deq/memcpy |"
    );
    println!("|---|---|---|---|---|---|---|");
    let rows_file = write_rows(&x);
    for &t in &types {
        let mut q = vec![0u8; ggml::row_size(t, N_PER_ROW).unwrap() * N_ROWS];
        let mut ours = Vec::new();
        let mut back = vec![0f32; x.len()];
        for th in [1usize, 2] {
            let p = pool(th);
            let tq = p.install(|| {
                common::best_secs(REPS, || {
                    ggml::quantize(t, &x, N_PER_ROW, None, &mut q).unwrap()
                })
            });
            let td = p.install(|| {
                common::best_secs(REPS, || ggml::dequantize(t, &q, &mut back).unwrap())
            });
            ours.push((th, gb / tq, gb / td));
        }
        let baseline = rows_file.as_ref().and_then(|f| ggml_baseline(f, t));
        let ratio = |op: &str, th: usize, v: f64| -> String {
            match baseline.as_ref().and_then(|b| b.get(&(op.to_string(), th))) {
                Some(g) => format!("{g:.2} / {:.2}x", v / g),
                None => "-".into(),
            }
        };
        for (th, qg, dg) in ours {
            let mc = if th == 1 { memcpy1 } else { memcpy2 };
            println!(
                "| {t} | {th} | {qg:.2} | {} | {dg:.2} | {} | {:.2} |",
                ratio("quantize", th, qg),
                ratio("dequantize", th, dg),
                dg / mc
            );
        }
    }
    if let Some(f) = rows_file {
        let _ = std::fs::remove_file(f);
    }
}

/// The rows as a file for the Python baseline, when the oracle is there.
fn write_rows(rows: &[f32]) -> Option<PathBuf> {
    std::env::var("QFORGE_ORACLE_PYTHON").ok()?;
    std::env::var("QFORGE_LLAMA_BIN").ok()?;
    let path = std::env::temp_dir().join(format!("qforge-bench-rows-{}.f32", std::process::id()));
    let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&path, bytes).ok()?;
    Some(path)
}
